//! The cluster: hosts, what is allocated on them, and the operations that change it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use veem_model::{HostId, VeeId};

use crate::affinity::AffinityIndex;
use crate::free_index::FreeIndex;
use crate::host::Host;
use crate::reason::{self, amount, count, unplaceable};
use crate::{Capacity, Demand, HostLoad, HostUsage, PlacementError, Policy, Unplaceable};

#[derive(Debug)]
struct Placed {
    slot: usize,
    demand: Demand,
}

/// The hosts of one site and the VEEs placed on them.
///
/// Finding a host is a range scan over the enabled hosts ordered by free memory and CPUs, and
/// anti-affinity is checked per candidate through per-host tag counts, so a placement costs
/// O(log hosts) plus the candidates it has to skip, not a look at every host.
#[derive(Debug)]
pub struct Cluster {
    policy: Policy,
    hosts: Vec<Host>,
    slots: HashMap<HostId, usize>,
    placements: HashMap<VeeId, Placed>,
    /// Enabled hosts only: disabled ones must not be found.
    free: FreeIndex,
    affinity: AffinityIndex,
}

impl Cluster {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            hosts: Vec::new(),
            slots: HashMap::new(),
            placements: HashMap::new(),
            free: FreeIndex::default(),
            affinity: AffinityIndex::default(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Adds a host, enabled, or changes the capacity of a known one. Its VEEs stay, even if it
    /// now holds less than they use: such a host just takes nothing new until they shrink or go.
    pub fn upsert_host(&mut self, host: HostId, capacity: Capacity) {
        if let Some(&slot) = self.slots.get(&host) {
            self.update_host(slot, |host| host.capacity = capacity);
            return;
        }
        let slot = self.hosts.len();
        let id = Arc::new(host.clone());
        self.free.insert(capacity, &id, slot);
        self.hosts.push(Host::new(id, capacity));
        self.slots.insert(host, slot);
    }

    /// A disabled (or down) host gets no new VEEs but keeps the ones it has.
    pub fn set_enabled(&mut self, host: &HostId, enabled: bool) -> Result<(), PlacementError> {
        let slot = self.slot(host)?;
        let host = &mut self.hosts[slot];
        if host.enabled == enabled {
            return Ok(());
        }
        if enabled {
            self.free.insert(host.free(), &host.id, slot);
        } else {
            self.free.remove(host.free(), &host.id, slot);
        }
        host.enabled = enabled;
        Ok(())
    }

    /// Chooses a host by the policy and allocates the demand there.
    pub fn place(&mut self, vee: &VeeId, demand: Demand) -> Result<HostId, PlacementError> {
        if self.placements.contains_key(vee) {
            return Err(PlacementError::AlreadyPlaced(vee.clone()));
        }
        let slot = self.choose(&demand, None)?;
        self.attach(slot, vee.clone(), demand);
        Ok(self.host_id(slot))
    }

    /// Places every VEE of the batch or none: on error nothing is allocated. VEEs of the batch
    /// constrain each other by anti-affinity like placed ones. The largest go first, which
    /// fits more batches than the given order; the hosts come back in the given order.
    pub fn place_all(
        &mut self,
        batch: Vec<(VeeId, Demand)>,
    ) -> Result<Vec<HostId>, PlacementError> {
        let mut seen = HashSet::new();
        for (vee, _) in &batch {
            if self.placements.contains_key(vee) || !seen.insert(vee) {
                return Err(PlacementError::AlreadyPlaced(vee.clone()));
            }
        }
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| {
            let demand = &batch[i].1;
            std::cmp::Reverse((demand.memory_mb, demand.cpu))
        });
        let others = batch.len().saturating_sub(1);
        let mut items: Vec<Option<(VeeId, Demand)>> = batch.into_iter().map(Some).collect();
        let mut chosen: Vec<Option<usize>> = vec![None; items.len()];
        let mut placed: Vec<VeeId> = Vec::with_capacity(items.len());
        for i in order {
            let (vee, demand) = items[i]
                .take()
                .expect("each index of the batch appears once in the order");
            match self.choose(&demand, None) {
                Ok(slot) => {
                    self.attach(slot, vee.clone(), demand);
                    placed.push(vee);
                    chosen[i] = Some(slot);
                }
                Err(why) => {
                    for vee in placed.iter().rev() {
                        self.detach(vee);
                    }
                    if others == 0 {
                        return Err(why.into());
                    }
                    return Err(unplaceable(format!(
                        "cannot place {vee} together with the other {} of its batch: {why}",
                        count(others, "VEE")
                    ))
                    .into());
                }
            }
        }
        Ok(chosen
            .into_iter()
            .map(|slot| self.host_id(slot.expect("every VEE of the batch was placed")))
            .collect())
    }

    /// Whether a VEE with this demand could be placed now; allocates nothing.
    pub fn check(&self, demand: &Demand) -> Result<(), Unplaceable> {
        self.choose(demand, None).map(|_| ())
    }

    /// Allocates on the named host, which must be enabled, fit the demand and not be excluded
    /// by anti-affinity.
    pub fn allocate(
        &mut self,
        host: &HostId,
        vee: &VeeId,
        demand: Demand,
    ) -> Result<(), PlacementError> {
        let slot = self.slot(host)?;
        if self.placements.contains_key(vee) {
            return Err(PlacementError::AlreadyPlaced(vee.clone()));
        }
        self.admit(slot, &demand)?;
        self.attach(slot, vee.clone(), demand);
        Ok(())
    }

    /// Records a placement made before a restart, without any check: what runs on a host is a
    /// fact, even if the host shrank or was disabled meanwhile.
    pub fn restore(
        &mut self,
        host: &HostId,
        vee: &VeeId,
        demand: Demand,
    ) -> Result<(), PlacementError> {
        let slot = self.slot(host)?;
        if self.placements.contains_key(vee) {
            return Err(PlacementError::AlreadyPlaced(vee.clone()));
        }
        self.attach(slot, vee.clone(), demand);
        Ok(())
    }

    /// Moves a VEE to the named host, or to one chosen by the policy, never to the one it is
    /// on. Its own allocation does not count against it. On error nothing changes.
    pub fn relocate(&mut self, vee: &VeeId, to: Option<&HostId>) -> Result<HostId, PlacementError> {
        let from = self
            .placements
            .get(vee)
            .ok_or_else(|| PlacementError::UnknownVee(vee.clone()))?
            .slot;
        let target = to.map(|host| self.slot(host)).transpose()?;
        if target == Some(from) {
            return Err(
                unplaceable(format!("{vee} already runs on {}", self.hosts[from].id)).into(),
            );
        }
        let placed = self.detach(vee).expect("the VEE was found placed above");
        let chosen = match target {
            Some(slot) => self.admit(slot, &placed.demand).map(|()| slot),
            None => self.choose(&placed.demand, Some(from)),
        };
        match chosen {
            Ok(slot) => {
                self.attach(slot, vee.clone(), placed.demand);
                Ok(self.host_id(slot))
            }
            Err(why) => {
                self.attach(from, vee.clone(), placed.demand);
                Err(why.into())
            }
        }
    }

    /// Frees what the VEE holds; the host it was on, if it was placed.
    pub fn release(&mut self, vee: &VeeId) -> Option<HostId> {
        self.detach(vee).map(|placed| self.host_id(placed.slot))
    }

    /// Changes what a VEE holds on its host. Growing must fit what the host has free besides
    /// the VEE's own share; if it does not, nothing changes. Shrinking always succeeds.
    pub fn resize(&mut self, vee: &VeeId, cpu: u32, memory_mb: u64) -> Result<(), PlacementError> {
        let placed = self
            .placements
            .get(vee)
            .ok_or_else(|| PlacementError::UnknownVee(vee.clone()))?;
        let slot = placed.slot;
        let old = placed.demand.need();
        let host = &self.hosts[slot];
        let free = host.free();
        // What the VEE could have here: the host's free share plus its own. On an overbooked
        // host the free share is zero, so a VEE there may shrink but not grow past what it has.
        let available = Capacity {
            cpus: free.cpus.saturating_add(old.cpus),
            memory_mb: free.memory_mb.saturating_add(old.memory_mb),
        };
        let grows_too_much = (cpu > old.cpus && cpu > available.cpus)
            || (memory_mb > old.memory_mb && memory_mb > available.memory_mb);
        if grows_too_much {
            let wanted = Capacity {
                cpus: cpu,
                memory_mb,
            };
            return Err(unplaceable(format!(
                "{vee} cannot grow to {} on {}: only {} are available to it there",
                amount(wanted),
                host.id,
                amount(available)
            ))
            .into());
        }
        let new = Capacity {
            cpus: cpu,
            memory_mb,
        };
        self.update_host(slot, |host| host.rebook(old, new));
        let placed = self
            .placements
            .get_mut(vee)
            .expect("the VEE was found placed above");
        placed.demand.cpu = cpu;
        placed.demand.memory_mb = memory_mb;
        Ok(())
    }

    pub fn host_of(&self, vee: &VeeId) -> Option<&HostId> {
        self.placements
            .get(vee)
            .map(|placed| &*self.hosts[placed.slot].id)
    }

    /// What a placed VEE holds, as last placed or resized.
    pub fn demand_of(&self, vee: &VeeId) -> Option<&Demand> {
        self.placements.get(vee).map(|placed| &placed.demand)
    }

    pub fn usage(&self, host: &HostId) -> Option<HostUsage> {
        Some(self.hosts[*self.slots.get(host)?].usage())
    }

    /// Every known host's figures, in no order: what it costs is one line per host, whatever
    /// the VEEs on it.
    pub fn loads(&self) -> Vec<(Arc<HostId>, HostLoad)> {
        self.hosts
            .iter()
            .map(|host| (host.id.clone(), host.load()))
            .collect()
    }

    /// Every known host, sorted.
    pub fn hosts(&self) -> Vec<HostId> {
        let mut hosts: Vec<HostId> = self.hosts.iter().map(|host| (*host.id).clone()).collect();
        hosts.sort();
        hosts
    }

    fn slot(&self, host: &HostId) -> Result<usize, PlacementError> {
        self.slots
            .get(host)
            .copied()
            .ok_or_else(|| PlacementError::UnknownHost(host.clone()))
    }

    fn host_id(&self, slot: usize) -> HostId {
        (*self.hosts[slot].id).clone()
    }

    /// The host the policy picks for the demand, leaving out `current` (a migrating VEE's own).
    fn choose(&self, demand: &Demand, current: Option<usize>) -> Result<usize, Unplaceable> {
        let conflicts = self.affinity.conflicts(demand);
        let accept = |slot| Some(slot) != current && !conflicts.excludes(slot);
        let found = match self.policy {
            Policy::Pack => self.free.find_pack(demand.need(), accept),
            Policy::Spread => self.free.find_spread(demand.need(), accept),
        };
        found.ok_or_else(|| reason::no_host(&self.hosts, demand, &conflicts, current))
    }

    /// Whether the named host may take the demand, and if not, why.
    fn admit(&self, slot: usize, demand: &Demand) -> Result<(), Unplaceable> {
        let host = &self.hosts[slot];
        if !host.enabled {
            return Err(unplaceable(format!("host {} is disabled", host.id)));
        }
        if let Some(tag) = self.affinity.conflicts(demand).tag_excluding(slot) {
            return Err(unplaceable(format!(
                "host {} is excluded by anti-affinity on tag {tag}",
                host.id
            )));
        }
        if !host.fits(demand.need()) {
            return Err(unplaceable(format!(
                "host {} has {} free, not {}",
                host.id,
                amount(host.free()),
                amount(demand.need())
            )));
        }
        Ok(())
    }

    fn attach(&mut self, slot: usize, vee: VeeId, demand: Demand) {
        let need = demand.need();
        let entry = vee.clone();
        self.update_host(slot, |host| host.take(entry, need));
        self.affinity.add(slot, &demand);
        self.placements.insert(vee, Placed { slot, demand });
    }

    fn detach(&mut self, vee: &VeeId) -> Option<Placed> {
        let placed = self.placements.remove(vee)?;
        let need = placed.demand.need();
        self.update_host(placed.slot, |host| host.give_back(vee, need));
        self.affinity.remove(placed.slot, &placed.demand);
        Some(placed)
    }

    /// Applies a change to a host and keeps the free index in step with it.
    fn update_host(&mut self, slot: usize, change: impl FnOnce(&mut Host)) {
        let host = &mut self.hosts[slot];
        if host.enabled {
            self.free.remove(host.free(), &host.id, slot);
        }
        change(host);
        if host.enabled {
            self.free.insert(host.free(), &host.id, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use veem_model::Principal;

    use super::*;

    fn host(name: &str) -> HostId {
        HostId::new(name).expect("test host names are valid")
    }

    fn vee(seq: u64) -> VeeId {
        VeeId::from_seq(seq)
    }

    fn gib(cpus: u32, memory_gib: u64) -> Capacity {
        Capacity {
            cpus,
            memory_mb: memory_gib * 1024,
        }
    }

    fn demand(owner: &str, cpu: u32, memory_mb: u64) -> Demand {
        Demand {
            owner: Principal::new(owner).expect("test principals are valid"),
            cpu,
            memory_mb,
            tags: Vec::new(),
            anti_affinity: Vec::new(),
        }
    }

    fn tagged(owner: &str, tags: &[&str], anti_affinity: &[&str]) -> Demand {
        Demand {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            anti_affinity: anti_affinity.iter().map(|t| t.to_string()).collect(),
            ..demand(owner, 1, 1024)
        }
    }

    fn cluster(policy: Policy, hosts: &[(&str, Capacity)]) -> Cluster {
        let mut cluster = Cluster::new(policy);
        for (name, capacity) in hosts {
            cluster.upsert_host(host(name), *capacity);
        }
        cluster
    }

    fn reason(result: Result<HostId, PlacementError>) -> String {
        match result {
            Err(PlacementError::Unplaceable(why)) => why.reason,
            other => panic!("expected unplaceable, got {other:?}"),
        }
    }

    fn used(cluster: &Cluster, name: &str) -> Capacity {
        cluster.usage(&host(name)).expect("known host").used
    }

    #[test]
    fn pack_and_spread_choose_by_free_memory_then_cpus_then_id() {
        // free after setup: a 8 GiB/8, b 16 GiB/2, c 16 GiB/8, d 16 GiB/8, e 64 GiB/16
        let hosts = [
            ("e", gib(16, 64)),
            ("d", gib(8, 16)),
            ("c", gib(8, 16)),
            ("b", gib(2, 16)),
            ("a", gib(8, 8)),
        ];
        let table: [(Policy, Demand, &str); 8] = [
            (Policy::Pack, demand("o", 1, 1024), "a"),
            (Policy::Pack, demand("o", 1, 9 * 1024), "b"),
            (Policy::Pack, demand("o", 3, 9 * 1024), "c"),
            (Policy::Pack, demand("o", 3, 8 * 1024), "a"),
            (Policy::Pack, demand("o", 9, 1024), "e"),
            (Policy::Spread, demand("o", 1, 1024), "e"),
            (Policy::Spread, demand("o", 1, 64 * 1024), "e"),
            (Policy::Spread, demand("o", 17, 1024), "none"),
        ];
        for (policy, wanted, expected) in table {
            let mut cluster = cluster(policy, &hosts);
            let got = cluster.place(&vee(1), wanted.clone());
            match expected {
                "none" => assert!(got.is_err(), "{policy} {wanted:?}: {got:?}"),
                name => assert_eq!(got, Ok(host(name)), "{policy} {wanted:?}"),
            }
        }
    }

    #[test]
    fn spread_ties_go_to_the_lowest_host_id_and_then_balance() {
        let mut cluster = cluster(
            Policy::Spread,
            &[("h3", gib(4, 8)), ("h1", gib(4, 8)), ("h2", gib(4, 8))],
        );
        let placed: Vec<HostId> = (1..=4)
            .map(|seq| {
                cluster
                    .place(&vee(seq), demand("o", 1, 1024))
                    .expect("room")
            })
            .collect();
        assert_eq!(placed, [host("h1"), host("h2"), host("h3"), host("h1")]);
    }

    #[test]
    fn pack_fills_one_host_before_the_next() {
        let mut cluster = cluster(Policy::Pack, &[("h2", gib(4, 4)), ("h1", gib(4, 4))]);
        let placed: Vec<HostId> = (1..=5)
            .map(|seq| {
                cluster
                    .place(&vee(seq), demand("o", 1, 1024))
                    .expect("room")
            })
            .collect();
        assert_eq!(
            placed,
            [host("h1"), host("h1"), host("h1"), host("h1"), host("h2")]
        );
        cluster.set_policy(Policy::Spread);
        assert_eq!(cluster.policy(), Policy::Spread);
        assert_eq!(cluster.place(&vee(6), demand("o", 1, 1024)), Ok(host("h2")));
    }

    #[test]
    fn anti_affinity_binds_both_ways_within_one_owner_only() {
        // Each case: what is on h1 already, what comes next, whether it may join h1.
        let table: [(Demand, Demand, bool); 7] = [
            (
                tagged("alice", &["db"], &["db"]),
                tagged("alice", &["db"], &["db"]),
                false,
            ),
            (
                tagged("alice", &["db"], &[]),
                tagged("alice", &[], &["db"]),
                false,
            ),
            (
                tagged("alice", &[], &["db"]),
                tagged("alice", &["db"], &[]),
                false,
            ),
            (
                tagged("alice", &["db"], &["db"]),
                tagged("bob", &["db"], &["db"]),
                true,
            ),
            (
                tagged("alice", &["db"], &[]),
                tagged("alice", &["db"], &[]),
                true,
            ),
            (
                tagged("alice", &[], &["db"]),
                tagged("alice", &[], &["db"]),
                true,
            ),
            (
                tagged("alice", &["web"], &["db"]),
                tagged("alice", &["db"], &["web"]),
                false,
            ),
        ];
        for (first, next, joins) in table {
            let mut cluster = cluster(Policy::Pack, &[("h1", gib(8, 8)), ("h2", gib(8, 64))]);
            cluster
                .allocate(&host("h1"), &vee(1), first.clone())
                .expect("h1 is empty");
            let expected = if joins { host("h1") } else { host("h2") };
            assert_eq!(
                cluster.place(&vee(2), next.clone()),
                Ok(expected),
                "{first:?} then {next:?}"
            );
        }
    }

    #[test]
    fn disabled_hosts_get_nothing_new_but_keep_their_vees() {
        let mut cluster = cluster(Policy::Pack, &[("h1", gib(4, 4)), ("h2", gib(8, 8))]);
        cluster
            .place(&vee(1), demand("o", 1, 1024))
            .expect("room on h1");
        cluster
            .set_enabled(&host("h1"), false)
            .expect("h1 is known");
        assert_eq!(cluster.place(&vee(2), demand("o", 1, 1024)), Ok(host("h2")));
        assert_eq!(cluster.host_of(&vee(1)), Some(&host("h1")));
        assert!(!cluster.usage(&host("h1")).expect("known").enabled);
        assert_eq!(
            cluster.allocate(&host("h1"), &vee(3), demand("o", 1, 1024)),
            Err(unplaceable("host h1 is disabled".into()).into())
        );
        assert_eq!(
            cluster.set_enabled(&host("nope"), true),
            Err(PlacementError::UnknownHost(host("nope")))
        );
        cluster
            .set_enabled(&host("h2"), false)
            .expect("h2 is known");
        assert_eq!(
            reason(cluster.place(&vee(4), demand("o", 1, 1024))),
            "2 hosts disabled"
        );
        cluster.set_enabled(&host("h1"), true).expect("known");
        assert_eq!(cluster.place(&vee(4), demand("o", 1, 1024)), Ok(host("h1")));
    }

    #[test]
    fn reasons_count_why_each_host_was_excluded() {
        let mut cluster = cluster(
            Policy::Pack,
            &[
                ("h1", gib(16, 16)),
                ("h2", gib(16, 8)),
                ("h3", gib(16, 16)),
                ("h4", gib(16, 64)),
                ("h5", gib(16, 64)),
            ],
        );
        for (seq, name) in [(1, "h4"), (2, "h5")] {
            cluster
                .allocate(&host(name), &vee(seq), tagged("alice", &["database"], &[]))
                .expect("empty host");
        }
        cluster.set_enabled(&host("h3"), false).expect("known");
        cluster
            .allocate(&host("h1"), &vee(3), demand("bob", 1, 10 * 1024))
            .expect("room");
        let db = Demand {
            cpu: 2,
            memory_mb: 12000,
            ..tagged("alice", &[], &["database"])
        };
        let expected = "no host has 12000 MB and 2 CPUs free (largest free: 8192 MB on h2); \
                        2 hosts excluded by anti-affinity on tag database; 1 host disabled";
        assert_eq!(reason(cluster.place(&vee(4), db.clone())), expected);
        assert_eq!(cluster.check(&db), Err(unplaceable(expected.to_owned())));
        assert!(cluster.usage(&host("h2")).expect("known").vees.is_empty());
    }

    #[test]
    fn reasons_name_cpus_when_memory_is_there_but_cpus_are_not() {
        let cluster = cluster(
            Policy::Spread,
            &[("h1", gib(1, 32)), ("h2", gib(3, 32)), ("h3", gib(8, 4))],
        );
        assert_eq!(
            cluster.check(&demand("o", 4, 16 * 1024)),
            Err(unplaceable(
                "no host has 16384 MB and 4 CPUs free \
                 (hosts with 16384 MB free have at most 3 CPUs free: h2)"
                    .into()
            ))
        );
        assert_eq!(
            Cluster::new(Policy::Pack).check(&demand("o", 1, 1)),
            Err(unplaceable("no host is registered".into()))
        );
    }

    #[test]
    fn reasons_count_hosts_per_tag() {
        let mut cluster = cluster(
            Policy::Pack,
            &[("h1", gib(4, 4)), ("h2", gib(4, 4)), ("h3", gib(4, 4))],
        );
        let placements = [
            ("h1", tagged("alice", &["web", "db"], &[])),
            ("h2", tagged("alice", &["web"], &[])),
            ("h3", tagged("alice", &[], &["cache"])),
        ];
        for (seq, (name, demand)) in (1..).zip(placements) {
            cluster
                .allocate(&host(name), &vee(seq), demand)
                .expect("empty host");
        }
        assert_eq!(
            cluster.check(&tagged("alice", &["cache"], &["web", "db"])),
            Err(unplaceable(
                "1 host excluded by anti-affinity on tag cache; \
                 1 host excluded by anti-affinity on tag db; \
                 1 host excluded by anti-affinity on tag web"
                    .into()
            ))
        );
    }

    #[test]
    fn allocate_checks_the_named_host() {
        let mut cluster = cluster(Policy::Pack, &[("h1", gib(2, 4)), ("h2", gib(2, 4))]);
        cluster
            .allocate(&host("h1"), &vee(1), tagged("alice", &["db"], &["db"]))
            .expect("empty host");
        let table: [(&str, u64, Demand, PlacementError); 4] = [
            (
                "h9",
                2,
                demand("o", 1, 1),
                PlacementError::UnknownHost(host("h9")),
            ),
            (
                "h2",
                1,
                demand("o", 1, 1),
                PlacementError::AlreadyPlaced(vee(1)),
            ),
            (
                "h1",
                2,
                demand("o", 2, 1024),
                unplaceable("host h1 has 3072 MB and 1 CPU free, not 1024 MB and 2 CPUs".into())
                    .into(),
            ),
            (
                "h1",
                2,
                tagged("alice", &["db"], &[]),
                unplaceable("host h1 is excluded by anti-affinity on tag db".into()).into(),
            ),
        ];
        for (name, seq, wanted, error) in table {
            assert_eq!(cluster.allocate(&host(name), &vee(seq), wanted), Err(error));
        }
        assert_eq!(used(&cluster, "h1"), gib(1, 1));
        assert_eq!(used(&cluster, "h2"), gib(0, 0));
    }

    #[test]
    fn place_all_is_all_or_nothing_and_separates_replicas() {
        let mut cluster = cluster(
            Policy::Pack,
            &[("h1", gib(8, 16)), ("h2", gib(8, 16)), ("h3", gib(8, 16))],
        );
        let replica = || Demand {
            memory_mb: 2048,
            ..tagged("alice", &["db"], &["db"])
        };
        let hosts = cluster
            .place_all(vec![(vee(1), replica()), (vee(2), replica())])
            .expect("two hosts are free");
        assert_ne!(hosts[0], hosts[1]);
        assert_eq!(cluster.host_of(&vee(1)), Some(&hosts[0]));
        assert_eq!(cluster.host_of(&vee(2)), Some(&hosts[1]));

        let before: Vec<HostUsage> = cluster
            .hosts()
            .iter()
            .map(|h| cluster.usage(h).expect("known"))
            .collect();
        let too_many = vec![
            (vee(3), demand("bob", 1, 1024)),
            (vee(4), replica()),
            (vee(5), replica()),
        ];
        assert_eq!(
            reason(cluster.place_all(too_many).map(|_| host("unused"))),
            "cannot place vee-00000005 together with the other 2 VEEs of its batch: \
             3 hosts excluded by anti-affinity on tag db"
        );
        let after: Vec<HostUsage> = cluster
            .hosts()
            .iter()
            .map(|h| cluster.usage(h).expect("known"))
            .collect();
        assert_eq!(before, after);
        assert_eq!(cluster.host_of(&vee(3)), None);
        assert_eq!(cluster.host_of(&vee(4)), None);

        assert_eq!(
            cluster.place_all(vec![
                (vee(6), demand("o", 1, 1)),
                (vee(6), demand("o", 1, 1))
            ]),
            Err(PlacementError::AlreadyPlaced(vee(6)))
        );
        assert_eq!(
            cluster.place_all(vec![
                (vee(7), demand("o", 1, 1)),
                (vee(1), demand("o", 1, 1))
            ]),
            Err(PlacementError::AlreadyPlaced(vee(1)))
        );
        assert_eq!(cluster.host_of(&vee(7)), None);
    }

    #[test]
    fn place_all_puts_the_largest_first_and_answers_in_the_given_order() {
        // Given order, pack would put the small VEE on h1 and leave no host for the large one.
        let mut cluster = cluster(Policy::Pack, &[("h1", gib(4, 8)), ("h2", gib(4, 6))]);
        let hosts = cluster
            .place_all(vec![
                (vee(1), demand("o", 1, 2 * 1024)),
                (vee(2), demand("o", 1, 8 * 1024)),
            ])
            .expect("largest first fits");
        assert_eq!(hosts, [host("h2"), host("h1")]);
    }

    #[test]
    fn relocate_never_stays_and_ignores_its_own_anti_affinity() {
        let mut cluster = cluster(
            Policy::Pack,
            &[("h1", gib(4, 4)), ("h2", gib(4, 8)), ("h3", gib(4, 16))],
        );
        let replica = tagged("alice", &["db"], &["db"]);
        cluster
            .allocate(&host("h1"), &vee(1), replica.clone())
            .expect("empty");
        cluster
            .allocate(&host("h2"), &vee(2), replica.clone())
            .expect("empty");
        // Pack would pick h1 if the VEE's own allocation were not left out.
        assert_eq!(cluster.relocate(&vee(1), None), Ok(host("h3")));
        assert_eq!(used(&cluster, "h1"), gib(0, 0));
        assert_eq!(cluster.relocate(&vee(1), Some(&host("h1"))), Ok(host("h1")));

        let table: [(u64, Option<&str>, PlacementError); 4] = [
            (9, None, PlacementError::UnknownVee(vee(9))),
            (1, Some("h9"), PlacementError::UnknownHost(host("h9"))),
            (
                1,
                Some("h1"),
                unplaceable("vee-00000001 already runs on h1".into()).into(),
            ),
            (
                1,
                Some("h2"),
                unplaceable("host h2 is excluded by anti-affinity on tag db".into()).into(),
            ),
        ];
        for (seq, to, error) in table {
            let to = to.map(host);
            assert_eq!(cluster.relocate(&vee(seq), to.as_ref()), Err(error));
        }
        cluster.set_enabled(&host("h3"), false).expect("known");
        assert_eq!(
            reason(cluster.relocate(&vee(1), None)),
            "h1 is its current host; 1 host excluded by anti-affinity on tag db; 1 host disabled"
        );
        assert_eq!(cluster.host_of(&vee(1)), Some(&host("h1")));
        assert_eq!(used(&cluster, "h1"), gib(1, 1));
        assert_eq!(cluster.usage(&host("h1")).expect("known").vees, [vee(1)]);
    }

    #[test]
    fn resize_grows_only_within_the_host() {
        let mut cluster = cluster(Policy::Pack, &[("h1", gib(4, 8))]);
        cluster.place(&vee(1), demand("o", 1, 2048)).expect("room");
        cluster.place(&vee(2), demand("o", 1, 2048)).expect("room");
        cluster.resize(&vee(1), 3, 6144).expect("exactly fits");
        assert_eq!(used(&cluster, "h1"), gib(4, 8));
        assert_eq!(
            cluster.resize(&vee(1), 3, 6145),
            Err(unplaceable(
                "vee-00000001 cannot grow to 6145 MB and 3 CPUs on h1: \
                 only 6144 MB and 3 CPUs are available to it there"
                    .into()
            )
            .into())
        );
        assert_eq!(cluster.demand_of(&vee(1)).map(|d| d.memory_mb), Some(6144));
        cluster.resize(&vee(1), 1, 1024).expect("shrinking fits");
        assert_eq!(used(&cluster, "h1"), gib(2, 3));
        assert_eq!(
            cluster.resize(&vee(9), 1, 1),
            Err(PlacementError::UnknownVee(vee(9)))
        );
    }

    #[test]
    fn restore_records_overbooking_and_the_host_takes_nothing_new() {
        let mut cluster = cluster(Policy::Pack, &[("h1", gib(4, 8)), ("h2", gib(4, 8))]);
        cluster.upsert_host(host("h1"), gib(1, 1));
        cluster
            .restore(&host("h1"), &vee(1), demand("o", 2, 4096))
            .expect("restore records anything");
        cluster
            .restore(&host("h1"), &vee(2), tagged("alice", &["db"], &["db"]))
            .expect("restore ignores anti-affinity and capacity");
        assert_eq!(used(&cluster, "h1"), gib(3, 5));
        assert_eq!(
            cluster.restore(&host("h9"), &vee(3), demand("o", 1, 1)),
            Err(PlacementError::UnknownHost(host("h9")))
        );
        assert_eq!(
            cluster.restore(&host("h2"), &vee(1), demand("o", 1, 1)),
            Err(PlacementError::AlreadyPlaced(vee(1)))
        );
        assert_eq!(cluster.place(&vee(3), demand("o", 1, 1)), Ok(host("h2")));
        // On the overbooked host a VEE may shrink but not grow.
        assert!(cluster.resize(&vee(1), 3, 4096).is_err());
        cluster
            .resize(&vee(1), 1, 512)
            .expect("shrinking is allowed");
        assert_eq!(cluster.release(&vee(1)), Some(host("h1")));
        assert_eq!(cluster.release(&vee(1)), None);
        cluster.upsert_host(host("h1"), gib(4, 8));
        assert_eq!(
            cluster.usage(&host("h1")),
            Some(HostUsage {
                capacity: gib(4, 8),
                used: gib(1, 1),
                enabled: true,
                vees: vec![vee(2)],
            })
        );
        assert_eq!(cluster.hosts(), [host("h1"), host("h2")]);
        assert_eq!(cluster.free.len(), 2);
    }
}
