//! The placement part: the site's cluster as placement sees it (each host's capacity and the
//! VEEs allocated there), the queue of VEEs waiting for a host, and the allocations the store
//! holds for hosts that have not connected yet.
//!
//! Rules kept here:
//! - An allocation is made before the change that records it is committed, and undone
//!   ([`Placer::release`]) when that commit fails.
//! - A host's stored allocations are restored when it first connects, before anything new can
//!   land there ([`Placer::host_connected`]).
//! - Its lock is taken alone: no other part's lock is held while it is (see "The core's
//!   parts" in ARCHITECTURE.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use veem_model::{HostId, Principal, VeeDescriptor, VeeId, VeeRecord};
use veem_placement::{Capacity, Cluster, Demand, HostUsage, PlacementError, Policy, Unplaceable};

/// What a VEE asks of a host.
pub(super) fn demand_of(record: &VeeRecord) -> Demand {
    demand_for(&record.owner, &record.descriptor)
}

/// What a VEE of `owner`'s `descriptor` would ask of a host.
pub(super) fn demand_for(owner: &Principal, descriptor: &VeeDescriptor) -> Demand {
    Demand {
        owner: owner.clone(),
        cpu: descriptor.cpu,
        memory_mb: descriptor.memory_mb,
        tags: descriptor.tags.clone(),
        anti_affinity: descriptor.anti_affinity.clone(),
    }
}

struct PlacerState {
    cluster: Cluster,
    /// VEEs waiting for placement, oldest first.
    pending: BTreeSet<u64>,
    /// The VEEs the store places on each host, from the records loaded at start, until that
    /// host first connects and their allocations are restored: so a connecting host looks at
    /// its own VEEs, not at every record (10,000 hosts times 200,000 records at start).
    awaiting_host: HashMap<HostId, Vec<u64>>,
    /// When each waiting VEE was last offered to other sites: calls, so not at every round.
    offered: HashMap<u64, Instant>,
}

/// How long a waiting VEE waits before it is offered to other sites again.
const OFFER_AGAIN_AFTER: Duration = Duration::from_secs(5);

pub(super) struct Placer {
    state: Mutex<PlacerState>,
    /// Wakes the placement loop.
    wake: Notify,
}

impl Placer {
    pub(super) fn new(
        policy: Policy,
        pending: BTreeSet<u64>,
        awaiting_host: HashMap<HostId, Vec<u64>>,
    ) -> Self {
        Self {
            state: Mutex::new(PlacerState {
                cluster: Cluster::new(policy),
                pending,
                awaiting_host,
                offered: HashMap::new(),
            }),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PlacerState> {
        self.state
            .lock()
            .expect("the placement lock is never held across a panic")
    }

    /// Asks for a placement round soon.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until woken, or `at_most`.
    pub(super) async fn woken(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake.notified()).await;
    }

    /// Allocates a host to one VEE.
    pub(super) fn place(&self, id: &VeeId, demand: Demand) -> Result<HostId, PlacementError> {
        let _timed = crate::metrics::instruments::placement_timer();
        self.state().cluster.place(id, demand)
    }

    /// Allocates a host to a VEE that may have run before: one whose directory a host holds
    /// on its own storage ([`VeeRecord::holder`]) boots or is restored there only, so it waits,
    /// saying why, while that host is full, closed or not connected; any other is placed by
    /// the policy.
    pub(super) fn place_vee(&self, record: &VeeRecord) -> Result<HostId, PlacementError> {
        let Some(holder) = &record.holder else {
            return self.place(&record.id, demand_of(record));
        };
        let held_there = |why: String| {
            PlacementError::Unplaceable(Unplaceable {
                reason: format!("its disks are on host {holder}'s own storage, and {why}"),
            })
        };
        match self
            .state()
            .cluster
            .allocate(holder, &record.id, demand_of(record))
        {
            Ok(()) => Ok(holder.clone()),
            Err(PlacementError::UnknownHost(_)) => {
                Err(held_there(format!("{holder} is not connected")))
            }
            Err(PlacementError::Unplaceable(u)) => Err(held_there(u.reason)),
            Err(e) => Err(e),
        }
    }

    /// Allocates hosts to a whole batch, or to none of it.
    pub(super) fn place_all(
        &self,
        batch: Vec<(VeeId, Demand)>,
    ) -> Result<Vec<HostId>, PlacementError> {
        let _timed = crate::metrics::instruments::placement_timer();
        self.state().cluster.place_all(batch)
    }

    /// Where [`Placer::place_all`] would put a batch of `demands` now, allocating nothing: the
    /// same placement, made and undone under one hold of the lock, so no other placement sees
    /// it. The batch's VEEs go by the ids from number `first` on that hold no place (those
    /// TWOPHASE would most likely give them: a refusal names them).
    pub(super) fn plan_all(
        &self,
        first: u64,
        demands: Vec<Demand>,
    ) -> Result<Vec<HostId>, PlacementError> {
        let mut state = self.state();
        let mut seq = first;
        let mut batch = Vec::with_capacity(demands.len());
        for demand in demands {
            while state.cluster.host_of(&VeeId::from_seq(seq)).is_some() {
                seq += 1;
            }
            batch.push((VeeId::from_seq(seq), demand));
            seq += 1;
        }
        let ids: Vec<VeeId> = batch.iter().map(|(id, _)| id.clone()).collect();
        let planned = state.cluster.place_all(batch);
        if planned.is_ok() {
            for id in &ids {
                state.cluster.release(id);
            }
        }
        planned
    }

    /// Frees what a VEE holds of its host, if anything.
    pub(super) fn release(&self, id: &VeeId) {
        self.state().cluster.release(id);
    }

    /// Frees what each of `ids` holds.
    pub(super) fn release_all<'a>(&self, ids: impl IntoIterator<Item = &'a VeeId>) {
        let mut state = self.state();
        for id in ids {
            state.cluster.release(id);
        }
    }

    /// Changes a VEE's allocation to a new size on the same host.
    pub(super) fn resize(
        &self,
        id: &VeeId,
        cpu: u32,
        memory_mb: u64,
    ) -> Result<(), PlacementError> {
        self.state().cluster.resize(id, cpu, memory_mb)
    }

    /// Moves a VEE's allocation to `to`, or to the best other host.
    pub(super) fn relocate(
        &self,
        id: &VeeId,
        to: Option<&HostId>,
    ) -> Result<HostId, PlacementError> {
        self.state().cluster.relocate(id, to)
    }

    /// Whether new VEEs may land on `host`.
    pub(super) fn set_enabled(&self, host: &HostId, enabled: bool) {
        // A host placement does not know yet has nothing to enable.
        let _ = self.state().cluster.set_enabled(host, enabled);
    }

    /// A host's capacity and use.
    pub(super) fn usage(&self, host: &HostId) -> Option<HostUsage> {
        self.state().cluster.usage(host)
    }

    /// Makes a connecting host's capacity known, closed to new VEEs until it is reconciled,
    /// and answers the VEEs the store places on it that are still to restore (at its first
    /// connection only: after that, placement keeps its allocations).
    pub(super) fn host_connected(&self, host: &HostId, capacity: Capacity) -> Vec<u64> {
        let mut state = self.state();
        state.cluster.upsert_host(host.clone(), capacity);
        let _ = state.cluster.set_enabled(host, false);
        state.awaiting_host.remove(host).unwrap_or_default()
    }

    /// Restores the allocations of VEEs the store places on `host`.
    pub(super) fn restore(&self, host: &HostId, records: &[VeeRecord]) {
        let mut state = self.state();
        for r in records {
            if state.cluster.host_of(&r.id).is_none() {
                if let Err(e) = state.cluster.restore(host, &r.id, demand_of(r)) {
                    tracing::error!(vee = %r.id, %host, error = %e, "cannot restore an allocation");
                }
            }
        }
    }

    /// Queues a VEE for placement.
    pub(super) fn enqueue(&self, seq: u64) {
        self.state().pending.insert(seq);
    }

    /// Queues VEEs for placement again, freeing what they were given.
    pub(super) fn requeue(&self, placed: &[(u64, VeeId)]) {
        let mut state = self.state();
        for (seq, id) in placed {
            state.cluster.release(id);
            state.pending.insert(*seq);
        }
    }

    /// Takes a VEE out of the queue.
    pub(super) fn dequeue(&self, seq: u64) {
        let mut state = self.state();
        state.pending.remove(&seq);
        state.offered.remove(&seq);
    }

    /// Whether a waiting VEE may be offered to other sites now (at most every
    /// [`OFFER_AGAIN_AFTER`]); if so, notes that it is.
    pub(super) fn may_offer(&self, seq: u64, now: Instant) -> bool {
        let mut state = self.state();
        match state.offered.get(&seq) {
            Some(last) if now.duration_since(*last) < OFFER_AGAIN_AFTER => false,
            _ => {
                state.offered.insert(seq, now);
                true
            }
        }
    }

    /// Frees a VEE's host and takes it out of the queue: it needs neither any more.
    pub(super) fn forget(&self, seq: u64, id: &VeeId) {
        let mut state = self.state();
        state.cluster.release(id);
        state.pending.remove(&seq);
        state.offered.remove(&seq);
    }

    /// How many VEEs wait for placement, and every host's figures (for metrics).
    pub(super) fn loads(&self) -> (usize, super::figures::HostLoads) {
        let state = self.state();
        (state.pending.len(), state.cluster.loads())
    }

    /// The VEEs waiting for placement, oldest first.
    pub(super) fn queue(&self) -> Vec<u64> {
        self.state().pending.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use veem_model::{InitModel, Principal, VeeDescriptor};

    use super::*;

    fn host(name: &str) -> HostId {
        HostId::new(name).expect("a valid name")
    }

    fn on(seq: u64, host_name: Option<&str>) -> VeeRecord {
        let mut record = VeeRecord::defined(
            VeeId::from_seq(seq),
            Principal::new("alice").expect("a valid name"),
            VeeDescriptor::minimal(2, 1024),
            InitModel::Besteffort,
            0,
        );
        record.host = host_name.map(host);
        record
    }

    fn four_cpus() -> Capacity {
        Capacity {
            cpus: 4,
            memory_mb: 8192,
        }
    }

    #[test]
    fn a_connecting_host_gets_its_stored_vees_back_once_and_takes_nothing_new_until_enabled() {
        let stored = on(1, Some("h1"));
        let placer = Placer::new(
            Policy::default(),
            BTreeSet::new(),
            HashMap::from([(host("h1"), vec![1])]),
        );
        assert_eq!(placer.host_connected(&host("h1"), four_cpus()), vec![1]);
        placer.restore(&host("h1"), std::slice::from_ref(&stored));
        let usage = placer.usage(&host("h1")).expect("known");
        assert_eq!((usage.used.cpus, usage.enabled), (2, false));
        assert_eq!(usage.vees, vec![stored.id.clone()]);
        let newcomer = on(2, None);
        assert!(
            placer.place(&newcomer.id, demand_of(&newcomer)).is_err(),
            "nothing new lands on a host still being reconciled"
        );
        placer.set_enabled(&host("h1"), true);
        assert_eq!(
            placer
                .place(&newcomer.id, demand_of(&newcomer))
                .expect("room"),
            host("h1")
        );
        // A reconnection restores nothing again: placement kept the allocations.
        assert!(placer.host_connected(&host("h1"), four_cpus()).is_empty());
        assert_eq!(placer.usage(&host("h1")).expect("known").used.cpus, 4);
    }

    #[test]
    fn a_plan_is_the_placement_place_all_then_makes_and_allocates_nothing() {
        let placer = Placer::new(Policy::default(), BTreeSet::new(), HashMap::new());
        for name in ["h1", "h2"] {
            placer.host_connected(&host(name), four_cpus());
            placer.set_enabled(&host(name), true);
        }
        // VEE 1 already holds 2 CPUs of h1: the plan's ids step over it.
        let placed = on(1, None);
        let first = placer.place(&placed.id, demand_of(&placed)).expect("room");
        let batch = vec![demand_of(&on(0, None)); 3];
        let planned = placer.plan_all(1, batch.clone()).expect("6 CPUs are free");
        let used = |name| placer.usage(&host(name)).expect("known").used.cpus;
        assert_eq!(used("h1") + used("h2"), 2, "the plan allocated nothing");
        let ids: Vec<VeeId> = (2..5).map(VeeId::from_seq).collect();
        let made = placer
            .place_all(ids.into_iter().zip(batch.clone()).collect())
            .expect("the same room");
        assert_eq!(planned, made, "the plan is where place_all puts the batch");
        assert_eq!(first, host("h1"));
        let refused = placer.plan_all(5, batch).expect_err("no room left");
        assert!(
            matches!(refused, PlacementError::Unplaceable(_)),
            "{refused:?}"
        );
        assert_eq!(used("h1") + used("h2"), 8);
    }

    #[test]
    fn a_waiting_vee_is_offered_to_other_sites_at_most_every_few_seconds() {
        let placer = Placer::new(Policy::default(), BTreeSet::from([7]), HashMap::new());
        let now = Instant::now();
        assert!(placer.may_offer(7, now));
        assert!(!placer.may_offer(7, now + Duration::from_secs(1)));
        assert!(placer.may_offer(7, now + OFFER_AGAIN_AFTER));
        // Placed, then waiting again: offered at once.
        placer.dequeue(7);
        placer.enqueue(7);
        assert!(placer.may_offer(7, now + OFFER_AGAIN_AFTER));
    }

    #[test]
    fn placements_undone_go_back_to_the_queue_oldest_first_with_their_host_freed() {
        let placer = Placer::new(Policy::default(), BTreeSet::from([5]), HashMap::new());
        placer.host_connected(&host("h1"), four_cpus());
        placer.set_enabled(&host("h1"), true);
        let (a, b) = (on(3, None), on(4, None));
        for vee in [&a, &b] {
            placer.place(&vee.id, demand_of(vee)).expect("room");
        }
        assert_eq!(placer.usage(&host("h1")).expect("known").used.cpus, 4);
        placer.requeue(&[(4, b.id.clone()), (3, a.id.clone())]);
        assert_eq!(placer.queue(), vec![3, 4, 5]);
        assert_eq!(placer.usage(&host("h1")).expect("known").used.cpus, 0);
        placer.forget(4, &b.id);
        placer.dequeue(5);
        assert_eq!(placer.queue(), vec![3]);
    }
}
