//! What the VEEM stores about each VEE and image, and the events of a VEE's life.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::descriptor::VeeDescriptor;
use crate::ids::{HostId, ImageName, Principal, SiteName, VeeId};
use crate::state::{InitModel, VeemState, VmiState};

/// A finer step inside a state, shown as `phase` while an action is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Placing,
    Booting,
    Pausing,
    Resuming,
    Suspending,
    Restoring,
    ShuttingDown,
    Destroying,
    Resizing,
    Migrating,
}

/// A migration the primary drives, noted on the VEE's record before anything is sent (with
/// phase `Migrating`), so that a primary that restarts settles it as it would have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationNote {
    /// Where the VEE goes, waiting there until it is told to run.
    pub to: MigrationTarget,
    /// A cold migration paused it for the move: it runs again wherever it stays.
    #[serde(default)]
    pub paused_for_move: bool,
    /// The state it comes back in.
    pub was: VmiState,
}

/// Where a migration goes: a host of this site, or the VEE a site defined for it (its id there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationTarget {
    Host(HostId),
    Site(SiteName, VeeId),
}

impl std::fmt::Display for MigrationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationTarget::Host(host) => write!(f, "host {host}"),
            MigrationTarget::Site(site, vee) => write!(f, "site {site} as {vee}"),
        }
    }
}

/// The address a NIC was given (filled by the network issue; empty until then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAddress {
    pub target: String,
    pub network: String,
    pub mac: String,
    /// The NIC's address on its network; `None` for a NIC on no network the VEEM knows, which
    /// is plugged into nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The id of the network the address is on (names may be reused after a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<u32>,
}

/// What the VEEM chose for a VEE at initialization: the paper's "VEE initialization values".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generated {
    /// The name of one replica of a batch of more than one (the paper's Table 2.2: the
    /// descriptor's name suffixed by the replica's position, `db-1`, `db-2`, ...); absent for
    /// a batch of one, which keeps the descriptor's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub nics: Vec<NicAddress>,
}

/// The name VEE number `position` (from 1) of a batch of `count` gets from the descriptor's
/// `name`: `name-position` when the batch has more than one VEE and the name is not empty
/// (Table 2.2 of the paper), else none of its own.
pub fn replica_name(name: &str, position: u64, count: u64) -> Option<String> {
    (count > 1 && !name.is_empty()).then(|| format!("{name}-{position}"))
}

/// One VEE as the VEEM keeps it. `generation` grows by one at every stored change; the store
/// refuses an update whose expected generation is not the stored one (compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeRecord {
    pub id: VeeId,
    pub owner: Principal,
    /// Shared by the VEEs of one InitializeVEEs call (up to 10,000 of one descriptor) until
    /// one of them changes (a resize: `Arc::make_mut`). Stored and shown as the descriptor.
    pub descriptor: Arc<VeeDescriptor>,
    pub model: InitModel,
    pub state: VmiState,
    pub veem_state: VeemState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The host whose resources the VEE holds: while ACTIVE or PAUSED, while being deployed, and
    /// while DEFINED with a TWOPHASE reservation (`reserved` is then true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostId>,
    /// The host that holds the VEE's directory (its disks, saved memory) on storage of its own
    /// (`vees_dir`), which no other host sees: set when the VEE last ran on such a host and
    /// kept while it rests, so the VEE boots or is restored there only (`None`: its directory is
    /// on the site's shared storage). A live migration moves it with the VEE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HostId>,
    /// A TWOPHASE reservation not yet used by a deployment.
    #[serde(default)]
    pub reserved: bool,
    /// Whether the VEE waits in the placement queue (INITIAL/PENDING), and why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// What went wrong last (a failed deployment, a lost process), for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Whether saved memory exists for a SUSPENDED VEE to be restored from.
    #[serde(default)]
    pub has_saved_memory: bool,
    /// Restarts after a dead instance since the last ACTIVATE from DEFINED (see
    /// `VeeDescriptor::restart_attempts`).
    #[serde(default)]
    pub restarts: u32,
    /// The token a probe or agent inside the VEE puts monitoring events with (it reaches the
    /// guest in its context); never shown in the VEE's view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring_token: Option<String>,
    /// What the VEEM chose at initialization (MACs, addresses).
    #[serde(default)]
    pub generated: Generated,
    /// The registered site the VEE runs at, when not here: this VEEM is its primary, and the
    /// VEE is `remote` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteName>,
    /// The VEE's id at `site`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<VeeId>,
    /// The migration under way that this VEEM drives, from its send on until the books say
    /// where the VEE is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationNote>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub generation: u64,
}

impl VeeRecord {
    /// The VEE's name: its replica's name in a batch, else the descriptor's.
    pub fn name(&self) -> &str {
        self.generated
            .name
            .as_deref()
            .unwrap_or(&self.descriptor.name)
    }

    /// A VEE just defined by InitializeVEEs.
    pub fn defined(
        id: VeeId,
        owner: Principal,
        descriptor: impl Into<Arc<VeeDescriptor>>,
        model: InitModel,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            owner,
            descriptor: descriptor.into(),
            model,
            state: VmiState::Defined,
            veem_state: VeemState::Stopped,
            phase: None,
            host: None,
            holder: None,
            reserved: false,
            pending_reason: None,
            last_error: None,
            has_saved_memory: false,
            restarts: 0,
            monitoring_token: None,
            generated: Generated::default(),
            site: None,
            remote: None,
            migration: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            generation: 1,
        }
    }

    /// Puts the VEE at rest in a state: no action under way.
    pub fn settle(&mut self, state: VmiState, veem_state: VeemState) {
        self.state = state;
        self.veem_state = veem_state;
        self.phase = None;
    }
}

/// One change of a VEE's state, with its time: the history an operator reads, and the STATE
/// monitoring event of the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeEvent {
    pub vee: VeeId,
    pub t_ms: u64,
    pub from: Option<VmiState>,
    pub to: VmiState,
    pub veem_state: VeemState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// Recognizes an image by its first bytes: qcow2 starts with `QFI\xfb`; anything else is raw.
    pub fn sniff(first_bytes: &[u8]) -> Self {
        if first_bytes.starts_with(b"QFI\xfb") {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// An image of the image store. Its bytes are content-addressed: they live once per digest,
/// however many images name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub owner: Principal,
    pub name: ImageName,
    pub format: ImageFormat,
    pub size_bytes: u64,
    pub created_ms: u64,
    /// The SHA-256 of its bytes, 64 lowercase hex digits. Empty in a record stored before
    /// images were content-addressed, until the VEEM hashes its bytes at start.
    #[serde(default)]
    pub sha256: String,
}

#[cfg(test)]
mod replica_tests {
    use super::*;
    use crate::{InitModel, Principal, VeeDescriptor};

    #[test]
    fn replicas_of_a_batch_are_named_by_their_position_and_a_batch_of_one_keeps_its_name() {
        assert_eq!(replica_name("db", 1, 3).as_deref(), Some("db-1"));
        assert_eq!(replica_name("db", 3, 3).as_deref(), Some("db-3"));
        assert_eq!(replica_name("db", 1, 1), None);
        assert_eq!(replica_name("", 2, 3), None, "no name, nothing to suffix");
        let mut descriptor = VeeDescriptor::minimal(1, 128);
        descriptor.name = "db".to_owned();
        let mut record = VeeRecord::defined(
            crate::VeeId::from_seq(1),
            Principal::new("alice").expect("a valid name"),
            descriptor,
            InitModel::Besteffort,
            0,
        );
        assert_eq!(record.name(), "db");
        record.generated.name = replica_name("db", 2, 3);
        assert_eq!(record.name(), "db-2");
        // Stored with the record (its JSON), read back the same; a record stored before
        // replicas had names reads back without one.
        let json = serde_json::to_string(&record).expect("serializes");
        let back: VeeRecord = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.name(), "db-2");
        let old: Generated = serde_json::from_str(r#"{"nics": []}"#).expect("old form");
        assert_eq!(old.name, None);
    }
}
