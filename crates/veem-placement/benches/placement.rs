//! How fast placement is at site scale: 10,000 hosts of mixed sizes, 100,000 VEEs of mixed
//! sizes with about 10% under anti-affinity, for both policies; and place+release churn on the
//! loaded cluster. The target is at least 20,000 placements per second on one core.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use veem_model::{HostId, Principal, VeeId};
use veem_placement::{Capacity, Cluster, Demand, Policy};

const HOSTS: usize = 10_000;
const VEES: usize = 100_000;

fn hosts(rng: &mut StdRng) -> Vec<(HostId, Capacity)> {
    (0..HOSTS)
        .map(|i| {
            let id = HostId::new(format!("host-{i:05}")).expect("generated host names are valid");
            let cpus = [32, 48, 64, 96, 128][rng.gen_range(0..5)];
            let memory_gib: u64 = [128, 192, 256, 384, 512][rng.gen_range(0..5)];
            (
                id,
                Capacity {
                    cpus,
                    memory_mb: memory_gib * 1024,
                },
            )
        })
        .collect()
}

fn demands(rng: &mut StdRng) -> Vec<(VeeId, Demand)> {
    let tenants: Vec<Principal> = (0..50)
        .map(|i| Principal::new(format!("tenant-{i}")).expect("generated principals are valid"))
        .collect();
    (0..VEES)
        .map(|i| {
            let cpu = [1, 2, 4, 8][rng.gen_range(0..4)];
            let memory_gib: u64 = [2, 4, 8, 16, 32][rng.gen_range(0..5)];
            // About 10% are replicas of 20 services of 5 tenants, each kept apart from its
            // siblings: 100 replicas per (tenant, service), all on different hosts.
            let (owner, tags) = if rng.gen_range(0..10) == 0 {
                let service = vec![format!("db-{}", rng.gen_range(0..20))];
                (tenants[rng.gen_range(0..5)].clone(), service)
            } else {
                (tenants[rng.gen_range(0..50)].clone(), Vec::new())
            };
            let demand = Demand {
                owner,
                cpu,
                memory_mb: memory_gib * 1024,
                anti_affinity: tags.clone(),
                tags,
            };
            (VeeId::from_seq(i as u64 + 1), demand)
        })
        .collect()
}

fn empty_cluster(policy: Policy, hosts: &[(HostId, Capacity)]) -> Cluster {
    let mut cluster = Cluster::new(policy);
    for (id, capacity) in hosts {
        cluster.upsert_host(id.clone(), *capacity);
    }
    cluster
}

fn place_everything(cluster: &mut Cluster, vees: Vec<(VeeId, Demand)>) {
    for (vee, demand) in vees {
        if let Err(err) = cluster.place(&vee, demand) {
            panic!("the benchmark cluster is sized to hold every VEE, but {vee}: {err}");
        }
    }
}

fn bench_placement(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2009);
    let hosts = hosts(&mut rng);
    let vees = demands(&mut rng);

    let mut group = c.benchmark_group("place_100k_vees_on_10k_hosts");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(VEES as u64));
    for policy in [Policy::Pack, Policy::Spread] {
        group.bench_function(policy.as_str(), |b| {
            b.iter_batched(
                || (empty_cluster(policy, &hosts), vees.clone()),
                |(mut cluster, vees)| {
                    place_everything(&mut cluster, vees);
                    cluster
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();

    // One release and one placement of a VEE of the same size per iteration, on the cluster
    // loaded with all 100,000 VEEs: the steady state of a busy site.
    let mut group = c.benchmark_group("churn_release_and_place_on_loaded_cluster");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for policy in [Policy::Pack, Policy::Spread] {
        let mut cluster = empty_cluster(policy, &hosts);
        place_everything(&mut cluster, vees.clone());
        let mut next = 0usize;
        group.bench_function(policy.as_str(), |b| {
            b.iter(|| {
                let (vee, demand) = &vees[next % VEES];
                next += 1;
                cluster.release(vee);
                if let Err(err) = cluster.place(vee, demand.clone()) {
                    panic!("{vee} fits back where it came from at least: {err}");
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_placement);
criterion_main!(benches);
