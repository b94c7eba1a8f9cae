//! The VEEs' records part: every VEE in memory (its record, its action lock, who waits on it),
//! the monitoring tokens that name VEEs, and the order in which ids are handed out.
//!
//! Rules kept here:
//! - A record in memory is what the store holds: it changes only through [`Records::apply`],
//!   called once a staged change is durable.
//! - Ids are handed out in order and never twice: [`Records::with_new_ids`] holds the id
//!   counter while the batch's commit is queued, so ids reach the store in the order taken.
//! - Its lock is taken alone: no other part's lock is held while it is (see "The core's
//!   parts" in ARCHITECTURE.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use veem_model::{HostId, Principal, SiteName, VeeEvent, VeeId, VeeRecord, VeemState, VmiState};
use veem_store::Change;

use crate::auth::Caller;
use crate::error::CoreError;
use veem_layout::now_ms;

/// One VEE in memory.
pub(super) struct Slot {
    pub(super) record: VeeRecord,
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

/// A staged change of one VEE: the record as it will be, and what to store.
pub(super) struct Staged {
    pub(super) seq: u64,
    pub(super) record: VeeRecord,
    pub(super) changes: Vec<Change>,
}

impl Staged {
    /// The state change this stages, if any (a move between hosts counts: it is history too).
    pub(super) fn event(&self) -> Option<&VeeEvent> {
        self.changes.iter().find_map(|change| match change {
            Change::AppendEvent(event) => Some(event),
            _ => None,
        })
    }
}

/// Filters of `GET /vees`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub state: Option<VmiState>,
    pub tag: Option<String>,
    pub limit: usize,
    pub after: Option<VeeId>,
}

/// What a caller waiting on a VEE sees: its record now, why its last deployment failed, and
/// a channel that wakes at its next change.
pub(super) struct Watched {
    pub(super) changed: watch::Receiver<u64>,
    pub(super) record: VeeRecord,
    pub(super) last_failure: Option<CoreError>,
}

/// The records of every VEE, read by the parts that need them (accounting, monitoring).
pub(super) struct RecordsState {
    /// Boxed: a B-tree node holds eleven entries and is about half full when keys only grow,
    /// so an unboxed slot would cost twice its size.
    vees: BTreeMap<u64, Box<Slot>>,
    /// Each VEE's monitoring token (`veem.monitoring.token` in its context), to its number.
    monitoring_tokens: HashMap<String, u64>,
    /// Each VEE that runs at another site, by (site, its id there), to its number: what a
    /// site pushes names its own ids.
    remotes: HashMap<(SiteName, VeeId), u64>,
    /// How many VEEs are in each VMI state, kept as records come, change and go, so that a
    /// metrics scrape does not walk 200,000 records.
    by_state: VeeCounts,
}

/// How many VEEs are in each VMI state, in the order of [`VmiState::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VeeCounts(pub [u64; VmiState::ALL.len()]);

impl VeeCounts {
    fn slot(state: VmiState) -> usize {
        VmiState::ALL
            .iter()
            .position(|s| *s == state)
            .expect("ALL lists every state")
    }

    fn add(&mut self, state: VmiState) {
        self.0[Self::slot(state)] += 1;
    }

    fn remove(&mut self, state: VmiState) {
        let count = &mut self.0[Self::slot(state)];
        *count = count.saturating_sub(1);
    }

    /// The VEEs in `state`.
    pub fn of(&self, state: VmiState) -> u64 {
        self.0[Self::slot(state)]
    }
}

/// The key of a VEE that runs at another site.
fn remote_key(record: &VeeRecord) -> Option<(SiteName, VeeId)> {
    Some((record.site.clone()?, record.remote.clone()?))
}

impl RecordsState {
    /// The record of VEE number `seq`.
    pub(super) fn get(&self, seq: u64) -> Option<&VeeRecord> {
        self.vees.get(&seq).map(|s| &s.record)
    }

    /// The record of exactly `id` (not another VEE's of the same number written otherwise).
    pub(super) fn find(&self, id: &VeeId) -> Option<&VeeRecord> {
        self.get(id.seq()).filter(|r| r.id == *id)
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        self.vees.contains_key(&seq)
    }

    /// How many VEEs are in each VMI state.
    pub(super) fn counts(&self) -> VeeCounts {
        self.by_state
    }
}

/// What loading the books found, for the parts that keep their own view of it.
pub(super) struct Loaded {
    pub(super) records: Records,
    /// VEEs waiting for placement, oldest first.
    pub(super) pending: BTreeSet<u64>,
    /// The VEEs the store places on each host.
    pub(super) by_host: HashMap<HostId, Vec<u64>>,
}

pub(super) struct Records {
    state: Mutex<RecordsState>,
    /// The next VEE's number; held while a batch's ids are taken and its commit queued.
    next_seq: Mutex<u64>,
}

/// Makes `value` the copy `known` holds of it, or adds it there: equal names loaded from the
/// store share one string.
fn share<T: Clone + Eq + std::hash::Hash>(known: &mut HashSet<T>, value: &mut T) {
    match known.get(value) {
        Some(copy) => *value = copy.clone(),
        None => {
            known.insert(value.clone());
        }
    }
}

impl Records {
    /// Takes the stored records in, sharing what equal records share.
    pub(super) fn load(records: Vec<VeeRecord>, next_seq: u64) -> Loaded {
        let mut vees = BTreeMap::new();
        let mut monitoring_tokens = HashMap::new();
        let mut remotes = HashMap::new();
        let mut pending = BTreeSet::new();
        let mut by_host: HashMap<HostId, Vec<u64>> = HashMap::new();
        // The VEEs of one InitializeVEEs call are loaded one after the other with equal
        // descriptors: they share one again, as they did before the restart.
        let mut previous: Option<Arc<veem_model::VeeDescriptor>> = None;
        // Owners and hosts are few: each record shares the one copy of its names.
        let mut owners = HashSet::new();
        let mut host_names = HashSet::new();
        let mut by_state = VeeCounts::default();
        for mut record in records {
            by_state.add(record.state);
            share(&mut owners, &mut record.owner);
            let seq = record.id.seq();
            if let Some(host) = &mut record.host {
                share(&mut host_names, host);
                by_host.entry(host.clone()).or_default().push(seq);
            }
            match &previous {
                Some(shared) if **shared == *record.descriptor => {
                    record.descriptor = shared.clone();
                }
                _ => previous = Some(record.descriptor.clone()),
            }
            if record.veem_state == VeemState::Pending {
                pending.insert(seq);
            }
            if let Some(token) = &record.monitoring_token {
                monitoring_tokens.insert(token.clone(), seq);
            }
            if let Some(key) = remote_key(&record) {
                remotes.insert(key, seq);
            }
            vees.insert(seq, Slot::new(record));
        }
        Loaded {
            records: Self {
                state: Mutex::new(RecordsState {
                    vees,
                    monitoring_tokens,
                    remotes,
                    by_state,
                }),
                next_seq: Mutex::new(next_seq.max(1)),
            },
            pending,
            by_host,
        }
    }

    /// The records, locked: for a reader that looks at many at once. Hold it briefly.
    pub(super) fn read(&self) -> MutexGuard<'_, RecordsState> {
        self.state
            .lock()
            .expect("the records' lock is never held across a panic")
    }

    /// Runs `define` with the first of the next ids (`define` takes as many as it needs, up to
    /// `count`, and queues their commit before it returns). The ids are used up only if it
    /// succeeds; while it runs no other batch takes ids, so ids reach the store in order.
    pub(super) fn with_new_ids<R>(
        &self,
        count: u64,
        define: impl FnOnce(u64) -> Result<R, CoreError>,
    ) -> Result<R, CoreError> {
        let mut next_seq = self
            .next_seq
            .lock()
            .expect("the id counter's lock is never held across a panic");
        let defined = define(*next_seq)?;
        *next_seq += count;
        Ok(defined)
    }

    /// The number the next VEE will get: every lower one was handed out.
    pub(super) fn next_seq(&self) -> u64 {
        *self
            .next_seq
            .lock()
            .expect("the id counter's lock is never held across a panic")
    }

    /// The record of VEE number `seq`.
    pub(super) fn get(&self, seq: u64) -> Option<VeeRecord> {
        self.read().get(seq).cloned()
    }

    /// Resolves a VEE the caller named: unknown and foreign VEEs fail here.
    pub(super) fn lookup(&self, caller: &Caller, id: &VeeId) -> Result<VeeRecord, CoreError> {
        let state = self.read();
        let record = state
            .find(id)
            .ok_or_else(|| CoreError::NotFound(format!("no VEE {id}")))?;
        if record.owner != caller.principal && !caller.admin {
            return Err(CoreError::AccessDenied(format!(
                "VEE {id} belongs to another principal"
            )));
        }
        Ok(record.clone())
    }

    /// The lock held for the whole of an action on VEE number `seq`.
    pub(super) fn op_lock(&self, seq: u64) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.read().vees.get(&seq).map(|s| s.lock.clone())
    }

    /// Prepares a change of one VEE: `mutate` edits a copy; a state change (or a move between
    /// hosts or sites) also records an event.
    pub(super) fn stage(
        &self,
        seq: u64,
        detail: Option<String>,
        mutate: impl FnOnce(&mut VeeRecord),
    ) -> Option<Staged> {
        let mut record = self.get(seq)?;
        let old = (record.state, record.veem_state, record.host.clone());
        let old_site = record.site.clone();
        let old_generation = record.generation;
        mutate(&mut record);
        let now = now_ms();
        record.generation = old_generation + 1;
        record.updated_ms = now;
        let mut changes = vec![Change::UpdateVee {
            record: record.clone(),
            expected_generation: old_generation,
        }];
        if (record.state, record.veem_state, &record.host) != (old.0, old.1, &old.2)
            || record.site != old_site
        {
            changes.push(Change::AppendEvent(VeeEvent {
                vee: record.id.clone(),
                t_ms: now,
                from: Some(old.0),
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

    /// Makes durable changes the truth in memory and wakes whoever waits on those VEEs.
    pub(super) fn apply(&self, staged: &[Staged]) {
        let mut state = self.read();
        for s in staged {
            let Some(slot) = state.vees.get_mut(&s.seq) else {
                continue;
            };
            let (before, after) = (remote_key(&slot.record), remote_key(&s.record));
            let (was, is) = (slot.record.state, s.record.state);
            slot.set(s.record.clone());
            state.by_state.remove(was);
            state.by_state.add(is);
            if before != after {
                if let Some(key) = before {
                    state.remotes.remove(&key);
                }
                if let Some(key) = after {
                    state.remotes.insert(key, s.seq);
                }
            }
        }
    }

    /// Adds VEEs the store now holds.
    pub(super) fn insert(&self, records: &[VeeRecord]) {
        let mut state = self.read();
        for r in records {
            if let Some(old) = state.vees.insert(r.id.seq(), Slot::new(r.clone())) {
                state.by_state.remove(old.record.state);
            }
            state.by_state.add(r.state);
            if let Some(token) = &r.monitoring_token {
                state.monitoring_tokens.insert(token.clone(), r.id.seq());
            }
            if let Some(key) = remote_key(r) {
                state.remotes.insert(key, r.id.seq());
            }
        }
    }

    /// Forgets a VEE the store no longer holds.
    pub(super) fn remove(&self, seq: u64) {
        let mut state = self.read();
        if let Some(slot) = state.vees.remove(&seq) {
            state.by_state.remove(slot.record.state);
            if let Some(token) = &slot.record.monitoring_token {
                state.monitoring_tokens.remove(token);
            }
            if let Some(key) = remote_key(&slot.record) {
                state.remotes.remove(&key);
            }
        }
    }

    /// Watches a VEE from now on.
    pub(super) fn watch(&self, seq: u64) -> Option<Watched> {
        let mut state = self.read();
        let slot = state.vees.get_mut(&seq)?;
        Some(Watched {
            changed: slot.subscribe(),
            record: slot.record.clone(),
            last_failure: slot.last_failure.clone(),
        })
    }

    /// Notes why the VEE's last deployment failed (or that it did not), for whoever waits on it.
    pub(super) fn set_last_failure(&self, seq: u64, failure: Option<CoreError>) {
        if let Some(slot) = self.read().vees.get_mut(&seq) {
            slot.last_failure = failure;
        }
    }

    /// The VEE a monitoring token names.
    pub(super) fn of_token(&self, token: &str) -> Option<VeeRecord> {
        let state = self.read();
        let seq = state.monitoring_tokens.get(token)?;
        state.get(*seq).cloned()
    }

    /// The VEE that runs at `site` as `remote` there.
    pub(super) fn at_site(&self, site: &SiteName, remote: &VeeId) -> Option<VeeRecord> {
        let state = self.read();
        let seq = state.remotes.get(&(site.clone(), remote.clone()))?;
        state.get(*seq).cloned()
    }

    /// Whether VEE number `seq` is still at `generation` and unchanged since `since_ms`.
    pub(super) fn unchanged_since(&self, seq: u64, since_ms: u64, generation: u64) -> bool {
        self.read()
            .get(seq)
            .is_some_and(|r| r.updated_ms < since_ms && r.generation == generation)
    }

    /// The VEEs of `caller` (an admin: of all) that pass `filter`, one page, and the id to
    /// continue after when there are more.
    pub(super) fn list(
        &self,
        caller: &Caller,
        filter: &ListFilter,
    ) -> (Vec<VeeRecord>, Option<VeeId>) {
        let state = self.read();
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

    /// The VEEs whose records pass `wanted`, by id.
    pub(super) fn ids_where(&self, wanted: impl Fn(&VeeRecord) -> bool) -> Vec<VeeId> {
        self.read()
            .vees
            .values()
            .map(|s| &s.record)
            .filter(|r| wanted(r))
            .map(|r| r.id.clone())
            .collect()
    }

    /// The hosts the books place VEEs on.
    pub(super) fn hosts_in_books(&self) -> BTreeSet<HostId> {
        self.read()
            .vees
            .values()
            .filter_map(|s| s.record.host.clone())
            .collect()
    }

    /// The owners of VEEs whose records pass `wanted`, each once.
    pub(super) fn owners_where(&self, wanted: impl Fn(&VeeRecord) -> bool) -> Vec<Principal> {
        let owners: BTreeSet<Principal> = self
            .read()
            .vees
            .values()
            .map(|s| &s.record)
            .filter(|r| wanted(r))
            .map(|r| r.owner.clone())
            .collect();
        owners.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn a_vee_at_another_site_is_found_by_its_id_there_until_it_leaves() {
        let records = Records::load(vec![record()], 2).records;
        let (east, there) = (SiteName::new("east").expect("a name"), VeeId::from_seq(77));
        assert!(records.at_site(&east, &there).is_none());
        let placed = records
            .stage(1, None, |r| {
                r.site = Some(east.clone());
                r.remote = Some(there.clone());
            })
            .expect("known");
        records.apply(&[placed]);
        assert_eq!(
            records.at_site(&east, &there).map(|r| r.id),
            Some(VeeId::from_seq(1))
        );
        records.remove(1);
        assert!(
            records.at_site(&east, &there).is_none(),
            "gone with its VEE"
        );
    }

    #[test]
    fn the_counts_by_state_follow_records_as_they_come_change_and_go() {
        let records = Records::load(vec![record()], 2).records;
        let counts = || records.read().counts();
        assert_eq!(counts().of(VmiState::Defined), 1);
        let mut second = record();
        second.id = VeeId::from_seq(2);
        second.state = VmiState::Active;
        records.insert(std::slice::from_ref(&second));
        let active = records
            .stage(1, None, |r| r.state = VmiState::Active)
            .expect("known");
        records.apply(&[active]);
        assert_eq!(counts().of(VmiState::Defined), 0);
        assert_eq!(counts().of(VmiState::Active), 2);
        records.remove(2);
        let all: u64 = counts().0.iter().sum();
        assert_eq!((counts().of(VmiState::Active), all), (1, 1));
        let listed = records.list(
            &Caller {
                principal: Principal::new("alice").expect("a valid name"),
                admin: true,
            },
            &ListFilter {
                state: Some(VmiState::Active),
                limit: 1000,
                ..ListFilter::default()
            },
        );
        assert_eq!(listed.0.len() as u64, counts().of(VmiState::Active));
    }

    #[test]
    fn ids_are_used_up_only_by_a_batch_that_is_defined() {
        let records = Records::load(Vec::new(), 7).records;
        let refused: Result<(), CoreError> =
            records.with_new_ids(3, |_| Err(CoreError::InsufficientResources("full".into())));
        assert!(refused.is_err());
        assert_eq!(records.next_seq(), 7, "a refused batch takes no ids");
        let first = records.with_new_ids(3, Ok).expect("defined");
        assert_eq!(first, 7);
        assert_eq!(records.next_seq(), 10);
    }

    #[test]
    fn staging_changes_nothing_until_applied_and_a_state_change_is_an_event() {
        let records = Records::load(vec![record()], 2).records;
        let staged = records
            .stage(1, Some("why".into()), |r| r.state = VmiState::Initial)
            .expect("the VEE is known");
        assert_eq!(records.get(1).expect("known").state, VmiState::Defined);
        let event = staged.event().expect("a state change is history");
        assert_eq!(
            (event.from, event.to, event.detail.as_deref()),
            (Some(VmiState::Defined), VmiState::Initial, Some("why"))
        );
        records.apply(&[staged]);
        let now = records.get(1).expect("known");
        assert_eq!((now.state, now.generation), (VmiState::Initial, 2));
        let quiet = records.stage(1, None, |r| r.restarts = 1).expect("known");
        assert!(quiet.event().is_none(), "no event without a state change");
    }
}
