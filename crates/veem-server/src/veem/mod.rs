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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use veem_api::agent::{AgentErrorKind, AgentResponse};
use veem_model::{
    HostId, ImageName, ImageRecord, Principal, VeeEvent, VeeId, VeeRecord, VeemState, VmiState,
};
use veem_placement::{Cluster, Demand, PlacementError, Policy};
use veem_store::{Change, Store};

use crate::auth::Caller;
use crate::committer::Committer;
use crate::error::CoreError;
use crate::hosts::Hosts;

mod accounting;
mod control;
mod hosts;
mod images;
mod monitoring;
mod networks;
mod submission;

pub use monitoring::{Putter, Routed};
pub use networks::{lan_key, NetworkInfo};

pub use veem_layout::now_ms;

/// Settings the core needs from the config file.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub site: String,
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

/// One VEE in memory.
struct Slot {
    record: VeeRecord,
    /// Held for the whole of an action on this VEE.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Bumped after every committed change, for callers waiting on the VEE: made by the first
    /// caller that waits and dropped once nobody does, since a channel costs about 400 bytes
    /// and most of 200,000 VEEs are never waited on.
    changed: Option<watch::Sender<u64>>,
    /// Why the last deployment failed, for the caller waiting on it.
    last_failure: Option<CoreError>,
}

impl Slot {
    fn new(record: VeeRecord) -> Box<Self> {
        Box::new(Self {
            record,
            lock: Arc::new(tokio::sync::Mutex::new(())),
            changed: None,
            last_failure: None,
        })
    }

    /// Watches the VEE's generation from now on.
    fn subscribe(&mut self) -> watch::Receiver<u64> {
        let generation = self.record.generation;
        self.changed
            .get_or_insert_with(|| watch::channel(generation).0)
            .subscribe()
    }

    /// Makes `record` the VEE's and wakes whoever watches it.
    fn set(&mut self, record: VeeRecord) {
        self.record = record;
        if let Some(changed) = &self.changed {
            if changed.receiver_count() == 0 {
                self.changed = None;
            } else {
                changed.send_replace(self.record.generation);
            }
        }
    }
}

struct State {
    /// Boxed: a B-tree node holds eleven entries and is about half full when keys only grow,
    /// so an unboxed slot would cost twice its size.
    vees: BTreeMap<u64, Box<Slot>>,
    next_seq: u64,
    cluster: Cluster,
    images: BTreeMap<(Principal, ImageName), ImageRecord>,
    /// VEEs waiting for placement, oldest first.
    pending: BTreeSet<u64>,
    networks: networks::Networks,
    /// Each VEE's monitoring token (`veem.monitoring.token` in its context), to its number.
    monitoring_tokens: std::collections::HashMap<String, u64>,
    /// The VEEs the store places on each host, from the records loaded at start, until that
    /// host first connects and their allocations are restored: so a connecting host looks at
    /// its own VEEs, not at every record (10,000 hosts times 200,000 records at start).
    awaiting_host: std::collections::HashMap<HostId, Vec<u64>>,
}

/// A staged change of one VEE: the record as it will be, and what to store.
struct Staged {
    seq: u64,
    record: VeeRecord,
    changes: Vec<Change>,
}

/// Outcome of a batch call: the ids that succeeded and each failure.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub ok: Vec<String>,
    pub failed: Vec<(String, CoreError)>,
}

/// Filters of `GET /vees`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub state: Option<VmiState>,
    pub tag: Option<String>,
    pub limit: usize,
    pub after: Option<VeeId>,
}

struct Inner {
    config: CoreConfig,
    store: Arc<dyn Store>,
    committer: Committer,
    state: Mutex<State>,
    hosts: Hosts,
    wake_placer: Notify,
    accounting: accounting::Accounting,
    hub: monitoring::Hub,
}

/// The VEEM. Cheap to clone; every clone is the same VEEM.
#[derive(Clone)]
pub struct Veem {
    inner: Arc<Inner>,
}

/// Makes `value` the copy `known` holds of it, or adds it there: equal names loaded from the
/// store share one string.
fn share<T: Clone + Eq + std::hash::Hash>(known: &mut std::collections::HashSet<T>, value: &mut T) {
    match known.get(value) {
        Some(copy) => *value = copy.clone(),
        None => {
            known.insert(value.clone());
        }
    }
}

fn demand_of(record: &VeeRecord) -> Demand {
    Demand {
        owner: record.owner.clone(),
        cpu: record.descriptor.cpu,
        memory_mb: record.descriptor.memory_mb,
        tags: record.descriptor.tags.clone(),
        anti_affinity: record.descriptor.anti_affinity.clone(),
    }
}

fn placement_error(e: PlacementError) -> CoreError {
    match e {
        PlacementError::Unplaceable(u) => CoreError::InsufficientResources(u.reason),
        PlacementError::UnknownHost(h) => CoreError::NotFound(format!("host {h} is not known")),
        other => CoreError::Internal(format!("placement: {other}")),
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
            | AgentErrorKind::Unreachable => {
                CoreError::HostFailed(format!("host {host}: {}", error.message))
            }
        }),
        other => Ok(other),
    }
}

impl Veem {
    /// Loads everything from the store and starts the committer. Hosts are added with
    /// [`Veem::connect_host`]; [`Veem::start_background`] starts the placement and health loops.
    pub fn open(config: CoreConfig, store: Arc<dyn Store>) -> Result<Self, CoreError> {
        let snapshot = store.load()?;
        let networks =
            networks::Networks::load(snapshot.networks, snapshot.next_network_id, &snapshot.vees);
        let push = crate::push::PushConfig {
            tls: config.callback_tls.clone(),
            ..crate::push::PushConfig::default()
        };
        let committer = Committer::start(store.clone());
        let accounting = accounting::Accounting::new(
            snapshot.listeners,
            &snapshot.vees,
            push.clone(),
            store.accounting_outbox()?,
            committer.clone(),
        );
        let hub = monitoring::Hub::new(snapshot.subscriptions, config.admins.clone(), push);
        let monitoring_tokens = snapshot
            .vees
            .iter()
            .filter_map(|r| Some((r.monitoring_token.clone()?, r.id.seq())))
            .collect();
        let mut vees = BTreeMap::new();
        let mut pending = BTreeSet::new();
        // The VEEs of one InitializeVEEs call are loaded one after the other with equal
        // descriptors: they share one again, as they did before the restart.
        let mut previous: Option<Arc<veem_model::VeeDescriptor>> = None;
        // Owners and hosts are few: each record shares the one copy of its names.
        let mut owners = std::collections::HashSet::new();
        let mut host_names = std::collections::HashSet::new();
        for mut record in snapshot.vees {
            share(&mut owners, &mut record.owner);
            if let Some(host) = &mut record.host {
                share(&mut host_names, host);
            }
            match &previous {
                Some(shared) if **shared == *record.descriptor => {
                    record.descriptor = shared.clone();
                }
                _ => previous = Some(record.descriptor.clone()),
            }
            let seq = record.id.seq();
            if record.veem_state == VeemState::Pending {
                pending.insert(seq);
            }
            vees.insert(seq, Slot::new(record));
        }
        let images = snapshot
            .images
            .into_iter()
            .map(|i| ((i.owner.clone(), i.name.clone()), i))
            .collect();
        let hosts = Hosts::new(config.agent_timeout, config.host_dead_after);
        let mut awaiting_host: std::collections::HashMap<HostId, Vec<u64>> =
            std::collections::HashMap::new();
        for (seq, slot) in &vees {
            if let Some(host) = &slot.record.host {
                awaiting_host.entry(host.clone()).or_default().push(*seq);
            }
        }
        let state = State {
            vees,
            next_seq: snapshot.next_vee_seq.max(1),
            cluster: Cluster::new(config.policy),
            images,
            pending,
            networks,
            monitoring_tokens,
            awaiting_host,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                committer,
                state: Mutex::new(state),
                hosts,
                wake_placer: Notify::new(),
                accounting,
                hub,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .expect("the state lock is never held across a panic")
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn hosts(&self) -> &Hosts {
        &self.inner.hosts
    }

    pub fn vee_dir(&self, id: &VeeId) -> PathBuf {
        veem_layout::vee_dir(&self.inner.config.data_dir, id)
    }

    pub fn image_path(&self, owner: &Principal, name: &ImageName) -> PathBuf {
        self.inner
            .config
            .data_dir
            .join("images")
            .join(owner.as_str())
            .join(name.as_str())
    }

    // ----- staging and committing -------------------------------------------------------------

    /// Prepares a change of one VEE: `mutate` edits a copy; a state change also records an event.
    fn stage(
        state: &State,
        seq: u64,
        detail: Option<String>,
        mutate: impl FnOnce(&mut VeeRecord),
    ) -> Option<Staged> {
        let slot = state.vees.get(&seq)?;
        let old = &slot.record;
        let mut record = old.clone();
        mutate(&mut record);
        let now = now_ms();
        record.generation = old.generation + 1;
        record.updated_ms = now;
        let mut changes = vec![Change::UpdateVee {
            record: record.clone(),
            expected_generation: old.generation,
        }];
        // A move between hosts (a migration) is history too, with the same state at both ends.
        if record.state != old.state
            || record.veem_state != old.veem_state
            || record.host != old.host
        {
            changes.push(Change::AppendEvent(VeeEvent {
                vee: record.id.clone(),
                t_ms: now,
                from: Some(old.state),
                to: record.state,
                veem_state: record.veem_state,
                host: record.host.clone(),
                detail,
            }));
        }
        Some(Staged {
            seq,
            record,
            changes,
        })
    }

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
                let t_ms = s.changes.iter().find_map(|change| match change {
                    Change::AppendEvent(e)
                        if e.to == VmiState::Destroyed && e.from != Some(VmiState::Destroyed) =>
                    {
                        Some(e.t_ms)
                    }
                    _ => None,
                })?;
                self.close_accounting(&s.record, t_ms)
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
        let mut records = Vec::with_capacity(staged.len());
        let mut moved = Vec::new();
        {
            let mut state = self.state();
            for s in &staged {
                if let Some(slot) = state.vees.get_mut(&s.seq) {
                    slot.set(s.record.clone());
                }
                records.push(s.record.clone());
                for change in &s.changes {
                    if let Change::AppendEvent(event) = change {
                        moved.push((s.seq, s.record.clone(), event.clone()));
                    }
                }
            }
        }
        self.state_changed(moved);
        Ok(records)
    }

    /// What follows a VEE's change of state once it is durable: its ACTIVE time and its STATE
    /// event.
    fn state_changed(&self, moved: Vec<(u64, VeeRecord, VeeEvent)>) {
        let mut events = Vec::new();
        for (seq, record, event) in moved {
            if event.from == Some(event.to) {
                continue;
            }
            self.inner
                .accounting
                .state_changed(seq, event.to, event.t_ms);
            events.push(monitoring::state_event(&record, event.to, event.t_ms));
        }
        self.publish(events);
    }

    /// Commits changes that are no VEE's (networks, images) in one transaction.
    async fn commit_changes(&self, changes: Vec<Change>) -> Result<(), CoreError> {
        self.inner.committer.commit(changes).await?;
        Ok(())
    }

    /// Stages and commits one VEE's change.
    async fn update(
        &self,
        seq: u64,
        detail: Option<String>,
        mutate: impl FnOnce(&mut VeeRecord),
    ) -> Result<VeeRecord, CoreError> {
        let staged = {
            let state = self.state();
            Self::stage(&state, seq, detail, mutate).ok_or_else(|| {
                CoreError::NotFound(format!("VEE {} was purged", VeeId::from_seq(seq)))
            })?
        };
        let mut records = self.commit(vec![staged]).await?;
        Ok(records.remove(0))
    }

    // ----- access -----------------------------------------------------------------------------

    /// Resolves an id the caller named: unknown, malformed and foreign ids fail here.
    fn lookup(&self, caller: &Caller, id: &str) -> Result<(u64, VeeRecord), CoreError> {
        let parsed = VeeId::parse(id).map_err(|_| CoreError::NotFound(format!("no VEE {id:?}")))?;
        let seq = parsed.seq();
        let state = self.state();
        let slot = state
            .vees
            .get(&seq)
            .filter(|s| s.record.id == parsed)
            .ok_or_else(|| CoreError::NotFound(format!("no VEE {id}")))?;
        if slot.record.owner != caller.principal && !caller.admin {
            return Err(CoreError::AccessDenied(format!(
                "VEE {id} belongs to another principal"
            )));
        }
        Ok((seq, slot.record.clone()))
    }

    fn op_lock(&self, seq: u64) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.state().vees.get(&seq).map(|s| s.lock.clone())
    }

    pub fn get(&self, caller: &Caller, id: &str) -> Result<VeeRecord, CoreError> {
        self.lookup(caller, id).map(|(_, r)| r)
    }

    pub fn list(&self, caller: &Caller, filter: &ListFilter) -> (Vec<VeeRecord>, Option<VeeId>) {
        let state = self.state();
        let start = filter.after.as_ref().map_or(0, |a| a.seq() + 1);
        let limit = filter.limit.clamp(1, 1000);
        let mut out = Vec::new();
        let mut next = None;
        for slot in state.vees.range(start..).map(|(_, s)| s) {
            let r = &slot.record;
            if r.owner != caller.principal && !caller.admin {
                continue;
            }
            if filter.state.is_some_and(|s| s != r.state) {
                continue;
            }
            if let Some(tag) = &filter.tag {
                if !r.descriptor.tags.contains(tag) {
                    continue;
                }
            }
            if out.len() == limit {
                next = out.last().map(|r: &VeeRecord| r.id.clone());
                break;
            }
            out.push(r.clone());
        }
        (out, next)
    }

    pub fn events(&self, caller: &Caller, id: &str) -> Result<Vec<VeeEvent>, CoreError> {
        let (_, record) = self.lookup(caller, id)?;
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

#[cfg(test)]
mod tests {
    use veem_model::{InitModel, VeeDescriptor};

    use super::*;

    fn record() -> VeeRecord {
        VeeRecord::defined(
            VeeId::from_seq(1),
            Principal::new("alice").expect("a valid name"),
            VeeDescriptor::minimal(1, 64),
            InitModel::Besteffort,
            0,
        )
    }

    #[tokio::test]
    async fn a_slot_wakes_its_watchers_and_keeps_no_channel_without_them() {
        let mut slot = Slot::new(record());
        assert!(slot.changed.is_none(), "no channel before anyone waits");
        let mut watcher = slot.subscribe();
        let mut next = slot.record.clone();
        next.generation = 2;
        slot.set(next.clone());
        tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("the watcher is woken")
            .expect("the channel is open");
        assert_eq!(*watcher.borrow(), 2);
        drop(watcher);
        next.generation = 3;
        slot.set(next);
        assert!(
            slot.changed.is_none(),
            "the channel goes with its last watcher"
        );
        assert_eq!(slot.record.generation, 3);
        // A later watcher starts from the generation of the moment it subscribes.
        let watcher = slot.subscribe();
        assert_eq!(*watcher.borrow(), 3);
    }
}
