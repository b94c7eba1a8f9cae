//! The VEEM core: the VMI's submission and control operations on VEEs, the placement queue,
//! deployment, and reconciliation with what hosts report.
//!
//! Rules kept here:
//! - A change is acknowledged only after the store has it (`Committer::commit`). In-memory
//!   records change only after their commit succeeded; placement allocations made before a commit
//!   are undone if it fails.
//! - One action at a time per VEE (`Slot::lock`); the placement loop only takes VEEs whose lock
//!   is free.
//! - A VEE never waits for placement without a `pending_reason`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use veem_api::agent::{AgentErrorKind, AgentResponse};
use veem_model::{HostId, Principal, VeeEvent, VeeId, VeeRecord, VmiState};
use veem_placement::{PlacementError, Policy};
use veem_store::{Change, Store};

use crate::auth::Caller;
use crate::committer::Committer;
use crate::error::CoreError;
use crate::hosts::Hosts;

mod accounting;
mod console;
mod control;
mod devices;
mod federation;
mod figures;
mod hosts;
pub(crate) mod images;
mod migration;
mod monitoring;
mod networks;
mod placer;
mod records;
mod sites;
mod submission;

pub use figures::{CoreFigures, HostLoads};
pub use images::Images;
pub use monitoring::{Putter, Routed};
pub use networks::{lan_key, LanFederation, NetworkInfo, Networks};
pub use records::{ListFilter, VeeCounts};
pub use sites::{SiteInfo, Sites};
pub use submission::{Plan, PlannedVee};

use placer::Placer;
use records::{Records, Staged};

pub use veem_layout::now_ms;

/// Settings the core needs from the config file.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub site: String,
    /// Where peer sites reach this VEEM's VMI (`url` in the config).
    pub public_url: String,
    pub data_dir: PathBuf,
    pub policy: Policy,
    pub shutdown_deadline: Duration,
    pub agent_timeout: Duration,
    pub health_interval: Duration,
    /// A host silent this long is lost: its VEEs are moved (see "Host loss" in ARCHITECTURE.md).
    pub host_dead_after: Duration,
    /// Names this VEEM's LANs on hosts apart from another VEEM's ([`lan_key`]).
    pub lan_key: u32,
    /// How often the VEEM produces HARDWARE events of its ACTIVE VEEs.
    pub monitoring_interval: Duration,
    /// Principals with the admin role: their images are shared with all.
    pub admins: Vec<Principal>,
    /// How accounting and monitoring pushes verify `https://` callbacks (`[tls] ca_file`
    /// added to the system's roots); `None`: the system's roots alone.
    pub callback_tls: Option<Arc<rustls::ClientConfig>>,
    /// Which `file:` sources admins may name (the config's `file_sources`).
    pub file_sources: crate::sources::FileSources,
}

/// Outcome of a batch call: the VEEs it succeeded for and each failure.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub ok: Vec<VeeId>,
    pub failed: Vec<(VeeId, CoreError)>,
}

/// The core's parts (see "The core's parts" in ARCHITECTURE.md). Each owns its state behind its own lock;
/// the operations that span parts are [`Veem`]'s, and hold no part's lock while they call
/// another part.
struct Inner {
    config: CoreConfig,
    store: Arc<dyn Store>,
    committer: Committer,
    records: Records,
    placer: Placer,
    networks: Networks,
    images: Images,
    sites: Sites,
    hosts: Hosts,
    accounting: accounting::Accounting,
    hub: monitoring::Hub,
}

/// The VEEM. Cheap to clone; every clone is the same VEEM.
#[derive(Clone)]
pub struct Veem {
    inner: Arc<Inner>,
}

fn placement_error(e: PlacementError) -> CoreError {
    match e {
        PlacementError::Unplaceable(u) => CoreError::InsufficientResources(u.reason),
        PlacementError::UnknownHost(h) => CoreError::NotFound(format!("host {h} is not known")),
        other => CoreError::internal("placement", other),
    }
}

fn agent_result(host: &HostId, response: AgentResponse) -> Result<AgentResponse, CoreError> {
    match response {
        AgentResponse::Error { error } => Err(match error.kind {
            AgentErrorKind::MissingFile => {
                CoreError::NotFound(format!("host {host}: {}", error.message))
            }
            AgentErrorKind::NoSuchInstance
            | AgentErrorKind::Failed
            | AgentErrorKind::Unsupported
            | AgentErrorKind::Unreachable => CoreError::HostFailed {
                message: format!("host {host}: {}", error.message),
                source: Some(error),
            },
        }),
        other => Ok(other),
    }
}

impl Veem {
    /// Loads everything from the store and starts the committer. Hosts are added with
    /// [`Veem::connect_host`]; [`Veem::start_background`] starts the placement and health loops.
    pub fn open(config: CoreConfig, store: Arc<dyn Store>) -> Result<Self, CoreError> {
        Self::open_with_blobs(config, store, None)
    }

    /// [`Veem::open`] for one of several front-ends on one database: `shared_blobs` (the same
    /// database, e.g. a `PgStore`) holds image bytes for all of them (see `veem/images.rs`).
    pub fn open_with_blobs(
        config: CoreConfig,
        store: Arc<dyn Store>,
        shared_blobs: Option<Arc<dyn veem_store::BlobStore>>,
    ) -> Result<Self, CoreError> {
        let snapshot = store.load()?;
        let table = networks::NetworkTable::load(
            snapshot.networks,
            snapshot.next_network_id,
            &snapshot.vees,
        );
        let push = crate::push::PushConfig {
            tls: config.callback_tls.clone(),
            ..crate::push::PushConfig::default()
        };
        let committer = Committer::start(store.clone());
        let images = Images::new(
            snapshot.images,
            committer.clone(),
            config.admins.clone(),
            &config.data_dir,
            &*store,
            shared_blobs,
        )?;
        let accounting = accounting::Accounting::new(
            snapshot.listeners,
            &snapshot.vees,
            push.clone(),
            store.accounting_outbox()?,
            committer.clone(),
        );
        let hub = monitoring::Hub::new(snapshot.subscriptions, config.admins.clone(), push);
        let loaded = Records::load(snapshot.vees, snapshot.next_vee_seq);
        let this_site = veem_model::SiteName::new(config.site.as_str())
            .map_err(|e| CoreError::malformed("site", e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                records: loaded.records,
                placer: Placer::new(config.policy, loaded.pending, loaded.by_host),
                networks: networks::Networks::new(table, committer.clone(), config.lan_key),
                images,
                sites: Sites::load(
                    snapshot.sites,
                    this_site,
                    config.public_url.clone(),
                    committer.clone(),
                ),
                hosts: {
                    let hosts = Hosts::new(config.agent_timeout, config.host_dead_after);
                    hosts.disabled_in_books(
                        snapshot
                            .disabled_hosts
                            .iter()
                            .filter_map(|name| HostId::new(name).ok()),
                    );
                    hosts
                },
                config,
                store,
                committer,
                accounting,
                hub,
            }),
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn hosts(&self) -> &Hosts {
        &self.inner.hosts
    }

    pub fn images(&self) -> &Images {
        &self.inner.images
    }

    pub fn networks(&self) -> &Networks {
        &self.inner.networks
    }

    pub fn sites(&self) -> &Sites {
        &self.inner.sites
    }

    pub fn vee_dir(&self, id: &VeeId) -> PathBuf {
        veem_layout::vee_dir(&self.inner.config.data_dir, id)
    }

    // ----- committing -------------------------------------------------------------------------

    /// Commits staged changes in one transaction and, once durable, makes them the truth in
    /// memory and wakes whoever waits on those VEEs.
    async fn commit(&self, staged: Vec<Staged>) -> Result<Vec<VeeRecord>, CoreError> {
        let mut changes: Vec<Change> = staged
            .iter()
            .flat_map(|s| s.changes.iter().cloned())
            .collect();
        // A DESTROY's last accounting records are stored with it.
        let closings: Vec<accounting::Closing> = staged
            .iter()
            .filter_map(|s| {
                let event = s.event()?;
                let destroyed =
                    event.to == VmiState::Destroyed && event.from != Some(VmiState::Destroyed);
                destroyed
                    .then(|| self.close_accounting(&s.record, event.t_ms))
                    .flatten()
            })
            .collect();
        for closing in &closings {
            changes.extend(closing.changes.iter().cloned());
        }
        let outcome = self.inner.committer.commit(changes).await;
        for closing in closings {
            self.closed_accounting(closing, outcome.clone());
        }
        outcome?;
        self.inner.records.apply(&staged);
        let moved = staged
            .iter()
            .filter_map(|s| Some((s.seq, &s.record, s.event()?)));
        self.state_changed(moved);
        Ok(staged.into_iter().map(|s| s.record).collect())
    }

    /// What follows a VEE's change of state once it is durable: its ACTIVE time and its STATE
    /// event.
    fn state_changed<'a>(&self, moved: impl Iterator<Item = (u64, &'a VeeRecord, &'a VeeEvent)>) {
        let mut events = Vec::new();
        for (seq, record, event) in moved {
            if event.from == Some(event.to) {
                continue;
            }
            self.inner
                .accounting
                .state_changed(seq, event.to, event.t_ms);
            events.push(monitoring::state_event(record, event.to, event.t_ms));
        }
        self.publish(events);
    }

    /// Stages and commits one VEE's change.
    async fn update(
        &self,
        seq: u64,
        detail: Option<String>,
        mutate: impl FnOnce(&mut VeeRecord),
    ) -> Result<VeeRecord, CoreError> {
        let staged = self
            .inner
            .records
            .stage(seq, detail, mutate)
            .ok_or_else(|| {
                CoreError::NotFound(format!("VEE {} was purged", VeeId::from_seq(seq)))
            })?;
        let mut records = self.commit(vec![staged]).await?;
        Ok(records.remove(0))
    }

    // ----- access -----------------------------------------------------------------------------

    pub fn get(&self, caller: &Caller, id: &VeeId) -> Result<VeeRecord, CoreError> {
        self.inner.records.lookup(caller, id)
    }

    pub fn list(&self, caller: &Caller, filter: &ListFilter) -> (Vec<VeeRecord>, Option<VeeId>) {
        self.inner.records.list(caller, filter)
    }

    pub fn events(&self, caller: &Caller, id: &VeeId) -> Result<Vec<VeeEvent>, CoreError> {
        let record = self.inner.records.lookup(caller, id)?;
        Ok(self.inner.store.events(&record.id)?)
    }
}

async fn remove_file_if_present(path: &Path) -> Result<(), CoreError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::internal("removing a file", e)),
    }
}
