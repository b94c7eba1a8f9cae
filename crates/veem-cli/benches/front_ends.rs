//! PostgreSQL vs SQLite, same run, same machine, and the failover time of several front-ends.
//!
//! 1. End to end: a `veem serve` on SQLite (its `data_dir`), then one on a fresh PostgreSQL
//!    database (`scripts/pg`), each with the same four remote `veem agent --driver sim` hosts
//!    (1,024 vCPUs and 2 TiB each), the same config (health checks every second, `pack`). Through
//!    `veem-client`: InitializeVEEs of `VEEM_BENCH_BATCH` VEEs (default 100) then UpdateState
//!    ACTIVATE of them, batch after batch, `VEEM_BENCH_VEES` in all (default 2,000), timed
//!    until every one is listed ACTIVE: VEEs/s. Then `VEEM_BENCH_SAMPLES` (default 1,000)
//!    GET of one VEE: p50 and p99.
//! 2. Failover: two front-ends on one database (`lease_ttl_ms` `VEEM_BENCH_LEASE_TTL_MS`,
//!    default veem's 4,000); the leader gets `kill -9`, and the other is sent an
//!    InitializeVEEs every 10 ms until one is acknowledged: the time from the kill. The killed
//!    one starts again (and follows), and the next failover kills the new leader;
//!    `VEEM_BENCH_FAILOVERS` times (default 10). Median and max.
//!
//! Run: `cargo bench -p veem-cli --bench front_ends` (add `--profile dev` for a debug build).
//! Prints Markdown rows for BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../tests/it/front_ends.rs"]
mod front_ends;

#[allow(dead_code)] // each bench uses some of them
#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use figures::{env_or, ms, percentile};
use front_ends::{fresh_database, FrontEnd};
use harness::{init, RemoteAgent, Server, Setup, VEEM_HEALTH_INTERVAL_MS};
use veem_api::{HostState, Order, UpdateStateRequest};
use veem_client::{Client, ListQuery};
use veem_model::{ControlAction, InitModel, VmiState};

const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];

struct EndToEnd {
    vees_per_s: f64,
    get_p50: Duration,
    get_p99: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vees = env_or("VEEM_BENCH_VEES", 2_000u32);
    let batch = env_or("VEEM_BENCH_BATCH", 100u32);
    let samples = env_or("VEEM_BENCH_SAMPLES", 1_000usize);
    let failovers = env_or("VEEM_BENCH_FAILOVERS", 10usize);
    let lease_ttl_ms = env_or("VEEM_BENCH_LEASE_TTL_MS", 4_000u64);
    let Some(database) = fresh_database() else {
        bail!("PostgreSQL cannot be started by scripts/pg");
    };

    // SQLite: the harness's server, remote hosts only.
    let sqlite = Server::start_with(Setup {
        hosts: vec![],
        health_interval_ms: VEEM_HEALTH_INTERVAL_MS,
        monitoring_interval_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let agents: Vec<RemoteAgent> = HOSTS
        .iter()
        .map(|h| RemoteAgent::start(&sqlite, h, 1024, 1 << 21))
        .collect();
    for h in HOSTS {
        harness::wait_host(&sqlite, h, HostState::Up, Duration::from_secs(30)).await;
    }
    let on_sqlite = end_to_end(&sqlite.a, &sqlite.ops, vees, batch, samples).await?;
    drop(agents);
    drop(sqlite);

    // PostgreSQL: one front-end, the same hosts and figures.
    let dir = tempfile::tempdir()?;
    let top_level =
        format!("health_interval_ms = {VEEM_HEALTH_INTERVAL_MS}\nmonitoring_interval_ms = 10000\n");
    let fe = FrontEnd::start_with(dir.path(), "fe1", &database, &top_level);
    fe.wait_leader("fe1", Duration::from_secs(30)).await;
    let agents: Vec<RemoteAgent> = HOSTS
        .iter()
        .map(|h| RemoteAgent::start_in(dir.path(), &fe.url, h, 1024, 1 << 21, None))
        .collect();
    for h in HOSTS {
        fe.wait_host_up(h, Duration::from_secs(30)).await;
    }
    let on_pg = end_to_end(&fe.a, &fe.ops, vees, batch, samples).await?;
    drop(agents);
    drop(fe);

    println!();
    println!("| figure | SQLite | PostgreSQL | PG/SQLite |");
    println!("|---|---|---|---|");
    println!(
        "| initialize + activate {vees} VEEs (batches of {batch}) until all ACTIVE | {:.0} VEEs/s | {:.0} VEEs/s | {:.2} |",
        on_sqlite.vees_per_s,
        on_pg.vees_per_s,
        on_pg.vees_per_s / on_sqlite.vees_per_s
    );
    for (what, a, b) in [
        ("GET one VEE, p50", on_sqlite.get_p50, on_pg.get_p50),
        ("GET one VEE, p99", on_sqlite.get_p99, on_pg.get_p99),
    ] {
        println!(
            "| {what} ({samples} calls) | {} | {} | {:.2} |",
            ms(a),
            ms(b),
            b.as_secs_f64() / a.as_secs_f64()
        );
    }

    // Failover.
    let Some(database) = fresh_database() else {
        bail!("PostgreSQL cannot be started by scripts/pg");
    };
    let top_level = format!("lease_ttl_ms = {lease_ttl_ms}\n{top_level}");
    // One after the other, so that the first leads.
    let first = FrontEnd::start_with(dir.path(), "fo1", &database, &top_level);
    first.wait_leader("fo1", Duration::from_secs(30)).await;
    let second = FrontEnd::start_with(dir.path(), "fo2", &database, &top_level);
    second.wait_following("fo1", Duration::from_secs(30)).await;
    let mut front_ends = [first, second];
    let mut leader = 0;
    let mut times = Vec::new();
    for run in 1..=failovers {
        let other = 1 - leader;
        front_ends[leader].kill9();
        let killed = Instant::now();
        let survivor = &front_ends[other];
        loop {
            let acknowledged = survivor
                .a
                .initialize(&veem_api::InitializeRequest {
                    model: InitModel::Besteffort,
                    count: 1,
                    descriptor: harness::small("probe"),
                })
                .await
                .is_ok();
            if acknowledged {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no write acknowledged 60 s after the leader was killed");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = killed.elapsed();
        println!(
            "failover {run}: first write acknowledged at the new leader {took:?} after kill -9"
        );
        times.push(took);
        front_ends[leader].start_again();
        let new_leader = front_ends[other].name.clone();
        front_ends[leader]
            .wait_following(&new_leader, Duration::from_secs(30))
            .await;
        leader = other;
    }
    times.sort();
    println!();
    println!(
        "| failover: kill -9 of the leader to the first acknowledged InitializeVEEs at the new one, lease_ttl_ms {lease_ttl_ms}, {failovers} failovers | median {} | max {} |",
        ms(percentile(&times, 0.5)),
        ms(*times.last().context("no failover")?)
    );
    Ok(())
}

async fn end_to_end(
    sm: &Client,
    ops: &Client,
    vees: u32,
    batch: u32,
    samples: usize,
) -> anyhow::Result<EndToEnd> {
    let started = Instant::now();
    let mut made = Vec::new();
    for _ in 0..vees.div_ceil(batch) {
        let ids = init(sm, InitModel::Besteffort, batch, harness::small("bench")).await;
        let answer = sm
            .update_state(&UpdateStateRequest {
                order: Order::List,
                ids: ids.clone(),
                action: ControlAction::Activate,
                timeout_ms: Some(60_000),
            })
            .await?;
        if !answer.failed.is_empty() {
            bail!("ACTIVATE failed: {:?}", answer.failed);
        }
        made.extend(ids);
    }
    loop {
        let active = sm
            .list_all_vees(&ListQuery {
                state: Some(VmiState::Active),
                ..ListQuery::default()
            })
            .await?
            .len();
        if active >= made.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {active} of {} ACTIVE after 600 s", made.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let vees_per_s = made.len() as f64 / took.as_secs_f64();
    println!(
        "{} VEEs ACTIVE in {took:?}: {vees_per_s:.0} VEEs/s",
        made.len()
    );
    let one = &made[made.len() / 2];
    let mut gets = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        sm.get_vee(one).await?;
        gets.push(t.elapsed());
    }
    gets.sort();
    // The hosts stay up throughout.
    let hosts = ops.list_hosts().await?;
    if hosts.hosts.iter().any(|h| h.state != HostState::Up) {
        bail!("a host went down during the run: {hosts:?}");
    }
    Ok(EndToEnd {
        vees_per_s,
        get_p50: percentile(&gets, 0.5),
        get_p99: percentile(&gets, 0.99),
    })
}
