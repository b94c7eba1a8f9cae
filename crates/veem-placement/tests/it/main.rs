//! Random operation sequences on random clusters, checked after every step against a brute-force
//! reading of the rules that shares no code with the engine: capacity is never overbooked,
//! anti-affinity is never broken, disabled hosts get nothing new, failed operations change
//! nothing, and `place` finds a host exactly when one exists, the one its policy prefers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use veem_model::{HostId, Principal, VeeId};
use veem_placement::{Capacity, Cluster, Demand, HostUsage, PlacementError, Policy};

const OWNERS: [&str; 2] = ["alice", "bob"];
const TAGS: [&str; 3] = ["db", "web", "cache"];
const VEE_IDS: u64 = 14;

#[derive(Debug, Clone)]
enum Op {
    Place(u64, Demand),
    PlaceAll(Vec<(u64, Demand)>),
    Allocate(usize, u64, Demand),
    Release(u64),
    Resize(u64, u32, u64),
    Relocate(u64, Option<usize>),
    SetEnabled(usize, bool),
    SetPolicy(Policy),
    Check(Demand),
}

fn host_name(index: usize) -> HostId {
    HostId::new(format!("h{index}")).expect("generated host names are valid")
}

fn tags() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(TAGS.to_vec(), 0..=2)
        .prop_map(|tags| tags.into_iter().map(str::to_owned).collect())
}

fn demand() -> impl Strategy<Value = Demand> {
    // Small value sets so that ties between hosts, and hosts just too small, are common.
    (0..OWNERS.len(), 0u32..=4, 0u64..=4, tags(), tags()).prop_map(
        |(owner, cpu, memory_units, tags, anti_affinity)| Demand {
            owner: Principal::new(OWNERS[owner]).expect("fixed principals are valid"),
            cpu,
            memory_mb: memory_units * 512,
            tags,
            anti_affinity,
        },
    )
}

fn op(hosts: usize) -> impl Strategy<Value = Op> {
    let vee = 0..VEE_IDS;
    prop_oneof![
        6 => (vee.clone(), demand()).prop_map(|(vee, demand)| Op::Place(vee, demand)),
        2 => proptest::collection::vec((vee.clone(), demand()), 1..4).prop_map(Op::PlaceAll),
        2 => (0..hosts, vee.clone(), demand())
            .prop_map(|(host, vee, demand)| Op::Allocate(host, vee, demand)),
        3 => vee.clone().prop_map(Op::Release),
        2 => (vee.clone(), 0u32..=5, 0u64..=5)
            .prop_map(|(vee, cpu, units)| Op::Resize(vee, cpu, units * 512)),
        2 => (vee, proptest::option::of(0..hosts))
            .prop_map(|(vee, to)| Op::Relocate(vee, to)),
        1 => (0..hosts, any::<bool>()).prop_map(|(host, on)| Op::SetEnabled(host, on)),
        1 => prop_oneof![Just(Policy::Pack), Just(Policy::Spread)].prop_map(Op::SetPolicy),
        1 => demand().prop_map(Op::Check),
    ]
}

fn scenario() -> impl Strategy<Value = (Policy, Vec<(u32, u64, bool)>, Vec<Op>)> {
    (1usize..=7).prop_flat_map(|hosts| {
        (
            prop_oneof![Just(Policy::Pack), Just(Policy::Spread)],
            proptest::collection::vec((0u32..=8, 0u64..=8, proptest::bool::weighted(0.85)), hosts),
            proptest::collection::vec(op(hosts), 1..40),
        )
    })
}

/// Everything observable about the cluster, read only through its public API.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    hosts: BTreeMap<HostId, HostUsage>,
    demands: BTreeMap<VeeId, Demand>,
}

fn snapshot(cluster: &Cluster) -> Snapshot {
    let hosts: BTreeMap<HostId, HostUsage> = cluster
        .hosts()
        .into_iter()
        .map(|host| {
            let usage = cluster.usage(&host).expect("listed hosts are known");
            (host, usage)
        })
        .collect();
    let demands = hosts
        .iter()
        .flat_map(|(host, usage)| {
            usage.vees.iter().map(move |vee| {
                assert_eq!(cluster.host_of(vee), Some(host), "{vee} listed on {host}");
                let demand = cluster.demand_of(vee).expect("a listed VEE has a demand");
                (vee.clone(), demand.clone())
            })
        })
        .collect();
    Snapshot { hosts, demands }
}

/// Whether two VEEs of the rules may share a host.
fn compatible(a: &Demand, b: &Demand) -> bool {
    a.owner != b.owner
        || !(a.anti_affinity.iter().any(|t| b.tags.contains(t))
            || b.anti_affinity.iter().any(|t| a.tags.contains(t)))
}

fn free(usage: &HostUsage) -> Capacity {
    Capacity {
        cpus: usage.capacity.cpus.saturating_sub(usage.used.cpus),
        memory_mb: usage
            .capacity
            .memory_mb
            .saturating_sub(usage.used.memory_mb),
    }
}

/// Whether the host could take the demand, by the rules, looking at every VEE on it.
fn feasible(state: &Snapshot, host: &HostId, demand: &Demand) -> bool {
    let usage = &state.hosts[host];
    let free = free(usage);
    usage.enabled
        && free.cpus >= demand.cpu
        && free.memory_mb >= demand.memory_mb
        && usage
            .vees
            .iter()
            .all(|vee| compatible(&state.demands[vee], demand))
}

/// The host rule 4 picks among all feasible ones, found by looking at every host.
fn best_host(
    state: &Snapshot,
    policy: Policy,
    demand: &Demand,
    leave_out: Option<&HostId>,
) -> Option<HostId> {
    let candidates = state
        .hosts
        .keys()
        .filter(|host| Some(*host) != leave_out && feasible(state, host, demand));
    match policy {
        Policy::Pack => candidates.min_by_key(|host| {
            let free = free(&state.hosts[*host]);
            (free.memory_mb, free.cpus, (*host).clone())
        }),
        Policy::Spread => candidates.min_by_key(|host| {
            let free = free(&state.hosts[*host]);
            (Reverse(free.memory_mb), Reverse(free.cpus), (*host).clone())
        }),
    }
    .cloned()
}

/// Rules 1 and 2, and that what the cluster reports adds up.
fn check_invariants(state: &Snapshot) -> Result<(), TestCaseError> {
    for (host, usage) in &state.hosts {
        let demands: Vec<&Demand> = usage.vees.iter().map(|vee| &state.demands[vee]).collect();
        let cpus: u32 = demands.iter().map(|d| d.cpu).sum();
        let memory_mb: u64 = demands.iter().map(|d| d.memory_mb).sum();
        prop_assert_eq!(usage.used, Capacity { cpus, memory_mb }, "{} adds up", host);
        prop_assert!(cpus <= usage.capacity.cpus, "{} CPUs overbooked", host);
        prop_assert!(
            memory_mb <= usage.capacity.memory_mb,
            "{} memory overbooked",
            host
        );
        for (i, a) in demands.iter().enumerate() {
            for b in &demands[i + 1..] {
                prop_assert!(compatible(a, b), "{} holds {:?} and {:?}", host, a, b);
            }
        }
    }
    Ok(())
}

/// Rule 3: no VEE appeared on a host that was disabled before the step.
fn check_disabled_got_nothing(before: &Snapshot, after: &Snapshot) -> Result<(), TestCaseError> {
    for (host, old) in &before.hosts {
        if !old.enabled {
            let old_vees: BTreeSet<&VeeId> = old.vees.iter().collect();
            for vee in &after.hosts[host].vees {
                prop_assert!(
                    old_vees.contains(vee),
                    "{} appeared on disabled {}",
                    vee,
                    host
                );
            }
        }
    }
    Ok(())
}

fn run(policy: Policy, hosts: &[(u32, u64, bool)], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::new(policy);
    for (index, (cpus, memory_units, enabled)) in hosts.iter().enumerate() {
        let host = host_name(index);
        cluster.upsert_host(
            host.clone(),
            Capacity {
                cpus: *cpus,
                memory_mb: memory_units * 512,
            },
        );
        cluster
            .set_enabled(&host, *enabled)
            .expect("the host was just added");
    }
    for op in ops {
        let before = snapshot(&cluster);
        let unchanged = match op.clone() {
            Op::Place(seq, demand) => {
                let vee = VeeId::from_seq(seq);
                let expected = best_host(&before, cluster.policy(), &demand, None);
                let result = cluster.place(&vee, demand);
                if before.demands.contains_key(&vee) {
                    prop_assert_eq!(&result, &Err(PlacementError::AlreadyPlaced(vee)));
                } else {
                    match (&expected, &result) {
                        (Some(host), Ok(placed)) => prop_assert_eq!(host, placed),
                        (None, Err(PlacementError::Unplaceable(why))) => {
                            prop_assert!(!why.reason.is_empty())
                        }
                        _ => prop_assert!(false, "brute force {:?}, engine {:?}", expected, result),
                    }
                }
                result.is_err()
            }
            Op::Check(demand) => {
                let expected = best_host(&before, cluster.policy(), &demand, None);
                prop_assert_eq!(cluster.check(&demand).is_ok(), expected.is_some());
                true
            }
            Op::PlaceAll(batch) => {
                let ids: Vec<VeeId> = batch.iter().map(|(seq, _)| VeeId::from_seq(*seq)).collect();
                let single = match batch.as_slice() {
                    [(_, demand)] => Some(best_host(&before, cluster.policy(), demand, None)),
                    _ => None,
                };
                let batch = ids
                    .iter()
                    .cloned()
                    .zip(batch.into_iter().map(|(_, d)| d))
                    .collect();
                let result = cluster.place_all(batch);
                match &result {
                    Ok(placed) => {
                        prop_assert_eq!(placed.len(), ids.len());
                        for (vee, host) in ids.iter().zip(placed) {
                            prop_assert!(!before.demands.contains_key(vee));
                            prop_assert_eq!(cluster.host_of(vee), Some(host));
                        }
                    }
                    Err(PlacementError::AlreadyPlaced(vee)) => {
                        let repeated = ids.iter().filter(|id| *id == vee).count() > 1;
                        prop_assert!(repeated || before.demands.contains_key(vee));
                    }
                    Err(PlacementError::Unplaceable(_)) => {}
                    Err(other) => prop_assert!(false, "place_all: {:?}", other),
                }
                if let (Some(expected), false) =
                    (single, ids.iter().any(|v| before.demands.contains_key(v)))
                {
                    prop_assert_eq!(expected.is_some(), result.is_ok());
                }
                result.is_err()
            }
            Op::Allocate(index, seq, demand) => {
                let host = host_name(index);
                let vee = VeeId::from_seq(seq);
                let fits = feasible(&before, &host, &demand);
                let result = cluster.allocate(&host, &vee, demand);
                if before.demands.contains_key(&vee) {
                    prop_assert_eq!(&result, &Err(PlacementError::AlreadyPlaced(vee)));
                } else {
                    prop_assert_eq!(result.is_ok(), fits, "{:?}", result);
                }
                result.is_err()
            }
            Op::Release(seq) => {
                let vee = VeeId::from_seq(seq);
                let released = cluster.release(&vee);
                prop_assert_eq!(&released, &cluster_host(&before, &vee));
                prop_assert_eq!(cluster.host_of(&vee), None);
                released.is_none()
            }
            Op::Resize(seq, cpu, memory_mb) => {
                let vee = VeeId::from_seq(seq);
                let result = cluster.resize(&vee, cpu, memory_mb);
                match (before.demands.get(&vee), &result) {
                    (None, _) => {
                        prop_assert_eq!(&result, &Err(PlacementError::UnknownVee(vee)))
                    }
                    (Some(old), _) => {
                        let host = cluster_host(&before, &vee).expect("a placed VEE has a host");
                        let room = free(&before.hosts[&host]);
                        let fits = cpu <= room.cpus + old.cpu
                            && memory_mb <= room.memory_mb + old.memory_mb;
                        prop_assert_eq!(result.is_ok(), fits, "{:?}", result);
                        if result.is_ok() {
                            let now = cluster.demand_of(&vee).expect("still placed");
                            prop_assert_eq!((now.cpu, now.memory_mb), (cpu, memory_mb));
                            prop_assert_eq!(cluster.host_of(&vee), Some(&host));
                        }
                    }
                }
                result.is_err()
            }
            Op::Relocate(seq, to) => {
                let vee = VeeId::from_seq(seq);
                let to = to.map(host_name);
                let result = cluster.relocate(&vee, to.as_ref());
                match cluster_host(&before, &vee) {
                    None => prop_assert_eq!(&result, &Err(PlacementError::UnknownVee(vee))),
                    Some(from) => {
                        // The VEE's own allocation does not count: judge without it.
                        let mut without = before.clone();
                        let demand = without.demands.remove(&vee).expect("placed");
                        let usage = without.hosts.get_mut(&from).expect("known host");
                        usage.vees.retain(|v| *v != vee);
                        usage.used.cpus -= demand.cpu;
                        usage.used.memory_mb -= demand.memory_mb;
                        let expected = match &to {
                            Some(to) if *to == from => None,
                            Some(to) => feasible(&without, to, &demand).then(|| to.clone()),
                            None => best_host(&without, cluster.policy(), &demand, Some(&from)),
                        };
                        match (&expected, &result) {
                            (Some(host), Ok(moved)) => prop_assert_eq!(host, moved),
                            (None, Err(PlacementError::Unplaceable(_))) => {}
                            _ => prop_assert!(
                                false,
                                "brute force {:?}, engine {:?}",
                                expected,
                                result
                            ),
                        }
                        if let Ok(moved) = &result {
                            prop_assert_ne!(moved, &from);
                            prop_assert_eq!(cluster.host_of(&vee), Some(moved));
                        }
                    }
                }
                result.is_err()
            }
            Op::SetEnabled(index, enabled) => {
                let host = host_name(index);
                cluster.set_enabled(&host, enabled).expect("known host");
                prop_assert_eq!(cluster.usage(&host).map(|u| u.enabled), Some(enabled));
                false
            }
            Op::SetPolicy(policy) => {
                cluster.set_policy(policy);
                prop_assert_eq!(cluster.policy(), policy);
                false
            }
        };
        let after = snapshot(&cluster);
        if unchanged {
            prop_assert_eq!(&before, &after, "a failed {:?} changed the cluster", op);
        }
        check_invariants(&after)?;
        check_disabled_got_nothing(&before, &after)?;
    }
    Ok(())
}

fn cluster_host(state: &Snapshot, vee: &VeeId) -> Option<HostId> {
    state
        .hosts
        .iter()
        .find(|(_, usage)| usage.vees.contains(vee))
        .map(|(host, _)| host.clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_keep_every_rule((policy, hosts, ops) in scenario()) {
        run(policy, &hosts, &ops)?;
    }
}

/// The index must not miss a feasible host when many hosts have the memory but too few CPUs,
/// the case pack jumps over.
#[test]
fn pack_and_spread_find_the_one_host_with_enough_cpus_among_many() {
    for policy in [Policy::Pack, Policy::Spread] {
        let mut cluster = Cluster::new(policy);
        for i in 0..200u64 {
            cluster.upsert_host(
                host_name(i as usize),
                Capacity {
                    cpus: 1 + (i % 3) as u32,
                    memory_mb: 1024 * (1 + i % 7),
                },
            );
        }
        cluster.upsert_host(
            host_name(999),
            Capacity {
                cpus: 4,
                memory_mb: 2048,
            },
        );
        let demand = Demand {
            owner: Principal::new("alice").expect("valid"),
            cpu: 4,
            memory_mb: 2048,
            tags: Vec::new(),
            anti_affinity: Vec::new(),
        };
        assert_eq!(
            cluster.place(&VeeId::from_seq(1), demand),
            Ok(host_name(999)),
            "{policy}"
        );
    }
}
