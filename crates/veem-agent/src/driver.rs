//! The interface every hypervisor driver implements, its error type and the disk layout that
//! drivers and the server share.

use std::error::Error as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use veem_api::agent::{
    AgentError, AgentErrorKind, DeploySpec, DiskCopy, InstanceState, InstanceStatus, LanPlan,
    SourcePlan,
};
use veem_model::{DiskKind, VeeId};

/// A hypervisor as the agent sees it: one instance per VEE, driven by the host-agent protocol.
///
/// The shape follows what QEMU offers, so the QMP driver maps one call to one process or
/// command: `deploy` starts one QEMU process per VEE with its disks as qcow2 overlays on the
/// shared storage, `pause`/`resume` are QMP `stop`/`cont`, `suspend` is a migration to a file and
/// `restore` a start with `-incoming` from it, `shutdown` is an ACPI power-down with a deadline
/// before the process is killed, `resize` is vCPU hotplug plus balloon/DIMM, and live migration
/// is `prepare_incoming` (a process started with `-incoming`) + `migrate_out` +
/// `complete_incoming`.
///
/// Every call is made concurrently with others (for other VEEs, and possibly for the same one);
/// a driver serializes what must be serialized. A call that returns `Ok` has taken effect and
/// is recorded so that a restarted agent finds the instance again through [`Driver::list`].
/// Disks are never deleted by a driver; what it keeps of a VEE in its own state directory goes
/// at [`Driver::purge`].
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name as announced to the server: `"sim"`, `"qemu"`.
    fn kind(&self) -> &'static str;

    /// Creates the VEE's disks in `spec.vee_dir` (a clone as an overlay or copy of its source,
    /// a blank disk of `size_gb`; disks that already exist are reused, never overwritten, so a
    /// VEE that was shut down boots again from its own disks) and boots it. The instance is
    /// `Running` when this returns `Ok`.
    async fn deploy(&self, spec: &DeploySpec) -> Result<(), DriverError>;

    /// Stops the VEE's vCPUs; memory stays on the host.
    async fn pause(&self, vee: &VeeId) -> Result<(), DriverError>;

    /// Lets a paused VEE run again.
    async fn resume(&self, vee: &VeeId) -> Result<(), DriverError>;

    /// Saves the VEE's memory to `memory_file` and ends the instance, freeing the host.
    async fn suspend(&self, vee: &VeeId, memory_file: &Path) -> Result<(), DriverError>;

    /// Starts the VEE from a memory file written by [`Driver::suspend`]; its disks already
    /// exist. The instance is `Running` when this returns `Ok`.
    async fn restore(&self, spec: &DeploySpec, memory_file: &Path) -> Result<(), DriverError>;

    /// Asks the guest to power off and forces it after `deadline`. The instance is gone when
    /// this returns `Ok`; its disks are kept.
    async fn shutdown(&self, vee: &VeeId, deadline: Duration) -> Result<(), DriverError>;

    /// Ends the instance at once; its disks are kept. `Ok` also when there is no such instance,
    /// so the VEEM can repeat it safely.
    async fn destroy(&self, vee: &VeeId) -> Result<(), DriverError>;

    /// Changes a running or paused VEE's vCPUs and memory, within the spec's maxima.
    async fn resize(&self, vee: &VeeId, cpu: u32, memory_mb: u64) -> Result<(), DriverError>;

    /// What the hypervisor observes of one VEE.
    async fn status(&self, vee: &VeeId) -> Result<InstanceStatus, DriverError>;

    /// Every instance this host runs, so a restarted agent (or server) can re-adopt them.
    async fn list(&self) -> Result<Vec<InstanceStatus>, DriverError>;

    /// Writes a standalone copy of the VEE's disk `target` (no backing file) to `out`.
    async fn export_disk(
        &self,
        vee_dir: &Path,
        target: &str,
        out: &Path,
    ) -> Result<(), DriverError>;

    /// Starts an instance that waits for an incoming migration; answers the URI that
    /// [`Driver::migrate_out`] on the source host sends to, and, when this host does not see
    /// the VEE's disks at the paths of `spec` (no shared storage), where it receives them.
    async fn prepare_incoming(&self, spec: &DeploySpec) -> Result<Incoming, DriverError>;

    /// Sends a running or paused VEE to `uri`, with its disks to `copy_disks_to` when the
    /// destination asked for them; the instance here ends when this returns `Ok`, with the
    /// migration's figures.
    async fn migrate_out(
        &self,
        vee: &VeeId,
        uri: &str,
        copy_disks_to: Option<&DiskCopy>,
    ) -> Result<MigrationStats, DriverError>;

    /// Lets an instance that received its migration run, or, `paused`, leaves it paused.
    async fn complete_incoming(&self, vee: &VeeId, paused: bool) -> Result<(), DriverError>;

    /// Takes a virtual LAN down on this host (its bridge and VXLAN device); `Ok` also when the
    /// host never had it. The VEEM asks only once no VEE is on the LAN.
    async fn remove_lan(&self, lan: &LanPlan) -> Result<(), DriverError>;

    /// Builds a LAN again as `lan` plans it (other sites' hosts joined it or left) where this
    /// host has it; nothing where it has not (it is built when a NIC needs it). Drivers that
    /// build no LANs have nothing to do.
    async fn refresh_lan(&self, _lan: &LanPlan) -> Result<(), DriverError> {
        Ok(())
    }

    /// Forgets a purged VEE: ends its instance if there is one and removes every byte this
    /// driver keeps of it in its state directory (records, pid files, sockets, logs). `Ok`
    /// also when there is nothing, so the VEEM can repeat it safely.
    async fn purge(&self, vee: &VeeId) -> Result<(), DriverError>;

    /// The VEEs this driver keeps anything of (an instance, or a file in its state directory),
    /// ordered by id.
    async fn traces(&self) -> Result<Vec<VeeId>, DriverError>;
}

/// A destination waiting for a live migration, as [`Driver::prepare_incoming`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Where the source sends the VEE's memory and devices.
    pub uri: String,
    /// Where the source copies the VEE's disks; `None` when this host sees them already.
    pub disks: Option<DiskCopy>,
}

impl Incoming {
    /// A destination that sees the VEE's disks (shared storage).
    pub fn shared(uri: String) -> Self {
        Self { uri, disks: None }
    }
}

/// A live migration sent from this host, as its hypervisor measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// From the start of the migration to its completion; with its disks copied, from the
    /// start of the copy until the copies were complete.
    pub total_ms: u64,
    /// How long the guest was stopped at the end, while its last state was copied (and, with
    /// its disks copied, while the copies took their last writes).
    pub downtime_ms: u64,
}

/// Why a driver could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("no instance of {0} on this host")]
    NoSuchInstance(VeeId),
    #[error("an instance of {0} already runs on this host")]
    AlreadyExists(VeeId),
    #[error("cannot {op} {vee}: its instance is {state:?}")]
    WrongState {
        vee: VeeId,
        state: InstanceState,
        op: &'static str,
    },
    #[error("file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{op} failed: {reason}")]
    Failed { op: &'static str, reason: String },
    #[error("this driver cannot {0}")]
    Unsupported(&'static str),
    /// A failure the sim driver was configured to inject.
    #[error("injected fault in {op}")]
    Injected { op: &'static str },
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error("cannot access {path}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("i/o failed")]
    Io(#[from] io::Error),
    /// An `http(s)://` source could not be fetched into the host's cache.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
}

impl DriverError {
    /// Wraps an I/O error with the path it concerns.
    pub fn file(path: &Path, source: io::Error) -> Self {
        DriverError::File {
            path: path.to_owned(),
            source,
        }
    }

    /// The protocol's form of this error; the message carries the whole chain of causes.
    pub fn to_wire(&self) -> AgentError {
        let kind = match self {
            DriverError::NoSuchInstance(_) => AgentErrorKind::NoSuchInstance,
            DriverError::MissingFile(_) => AgentErrorKind::MissingFile,
            DriverError::File { source, .. } | DriverError::Io(source)
                if source.kind() == io::ErrorKind::NotFound =>
            {
                AgentErrorKind::MissingFile
            }
            DriverError::Unsupported(_) => AgentErrorKind::Unsupported,
            DriverError::AlreadyExists(_)
            | DriverError::WrongState { .. }
            | DriverError::Invalid { .. }
            | DriverError::Failed { .. }
            | DriverError::Injected { .. }
            | DriverError::CorruptState { .. }
            | DriverError::File { .. }
            | DriverError::Io(_)
            | DriverError::Fetch(_) => AgentErrorKind::Failed,
        };
        let mut message = self.to_string();
        let mut cause = self.source();
        while let Some(source) = cause {
            message.push_str(": ");
            message.push_str(&source.to_string());
            cause = source.source();
        }
        AgentError { kind, message }
    }
}

/// The disks the VEE owns, by target: those in its directory (a clone or a blank disk), which
/// a live migration without shared storage copies. A disk used in place and a cdrom are their
/// source's, which the destination must see itself.
pub(crate) fn owned_disk_targets(spec: &DeploySpec) -> Vec<String> {
    spec.disks
        .iter()
        .filter(|plan| plan.kind == DiskKind::Disk && (plan.clone || plan.source.is_none()))
        .map(|plan| plan.target.clone())
        .collect()
}

/// Refuses a disk copy that does not ask for exactly the disks the VEE of `spec` owns: a copy
/// must leave no disk behind and write to no disk used in place.
pub(crate) fn check_copy_targets(
    spec: &DeploySpec,
    copy: &veem_api::agent::DiskCopy,
) -> Result<(), DriverError> {
    let mut owned = owned_disk_targets(spec);
    let mut asked = copy.targets.clone();
    owned.sort();
    asked.sort();
    if owned != asked {
        return Err(DriverError::Invalid {
            what: "disk copy",
            reason: format!(
                "the destination asks for disks {asked:?}; {} owns {owned:?}",
                spec.vee
            ),
        });
    }
    Ok(())
}

/// Checks that the kernel and initrd of a direct kernel boot are there, so a missing file is
/// named rather than left to the hypervisor's own message.
pub fn check_boot_files(spec: &DeploySpec) -> Result<(), DriverError> {
    let Some(boot) = &spec.boot else {
        return Ok(());
    };
    for source in std::iter::once(&boot.kernel).chain(&boot.initrd) {
        let file = local_source(source)?;
        if !file.is_file() {
            return Err(DriverError::MissingFile(file.to_owned()));
        }
    }
    Ok(())
}

/// The local file of a source: a resolved file, or a fetched URL's cached copy. A URL the
/// agent did not fetch is a mistake of the caller, named as such.
pub fn local_source(source: &SourcePlan) -> Result<&Path, DriverError> {
    source.local_path().ok_or_else(|| DriverError::Invalid {
        what: "source",
        reason: format!("{} was not fetched to this host", source.describe()),
    })
}

/// Checks that a disk target is a plain name, so [`veem_layout::disk_path`] stays inside the
/// VEE's directory.
pub fn check_disk_target(target: &str) -> Result<(), DriverError> {
    let plain = !target.is_empty()
        && target.len() <= 64
        && !target.starts_with('.')
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        Ok(())
    } else {
        Err(DriverError::Invalid {
            what: "disk target",
            reason: format!("{target:?} must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_targets_cannot_escape_the_vee_dir() {
        for good in ["vda", "hd0", "disk-1.data", "a_b"] {
            assert!(check_disk_target(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "sp ace",
            &"x".repeat(65),
        ] {
            assert!(check_disk_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_kinds_follow_the_cause() {
        let vee = VeeId::from_seq(7);
        let cases = [
            (
                DriverError::NoSuchInstance(vee.clone()),
                AgentErrorKind::NoSuchInstance,
            ),
            (
                DriverError::MissingFile("/x".into()),
                AgentErrorKind::MissingFile,
            ),
            (
                DriverError::file(Path::new("/x"), io::ErrorKind::NotFound.into()),
                AgentErrorKind::MissingFile,
            ),
            (
                DriverError::file(Path::new("/x"), io::ErrorKind::PermissionDenied.into()),
                AgentErrorKind::Failed,
            ),
            (
                DriverError::Io(io::ErrorKind::Other.into()),
                AgentErrorKind::Failed,
            ),
            (
                DriverError::Unsupported("resize"),
                AgentErrorKind::Unsupported,
            ),
            (
                DriverError::Injected { op: "pause" },
                AgentErrorKind::Failed,
            ),
            (
                DriverError::Failed {
                    op: "deploy",
                    reason: "qemu exited".into(),
                },
                AgentErrorKind::Failed,
            ),
            (
                DriverError::AlreadyExists(vee.clone()),
                AgentErrorKind::Failed,
            ),
            (
                DriverError::WrongState {
                    vee,
                    state: InstanceState::Incoming,
                    op: "pause",
                },
                AgentErrorKind::Failed,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.to_wire().kind, kind, "{error}");
        }
    }

    #[test]
    fn wire_messages_carry_the_causes() {
        let error = DriverError::file(
            Path::new("/images/base.qcow2"),
            io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"),
        );
        assert_eq!(
            error.to_wire().message,
            "cannot access /images/base.qcow2: permission denied"
        );
    }
}
