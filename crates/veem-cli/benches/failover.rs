//! Failover of the leader among several front-ends on one PostgreSQL database: from `kill -9`
//! of the leader to the first write acknowledged by its successor, median and max over rounds.
//!
//! Three `veem serve` front-ends on a throwaway PostgreSQL (`scripts/pg`). Each round: kill -9
//! the leader, then call InitializeVEEs through one of the others every 10 ms until one is
//! acknowledged (it is forwarded to the new leader once there is one); start the killed one
//! again and wait until it follows. With veem's default lease (4 s) and with 1 s.
//!
//! Run: `cargo bench -p veem-cli --bench failover`. `VEEM_BENCH_ROUNDS` (default 10) sets the
//! rounds per lease. Prints a Markdown table for BENCHMARKS.md.

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

use anyhow::{bail, Context as _};
use figures::{env_or, percentile};
use front_ends::Site;
use veem_api::{ClusterRole, InitializeRequest};
use veem_model::InitModel;

/// The target: another front-end leads within 10 s.
const TARGET: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = env_or("VEEM_BENCH_ROUNDS", 10);
    let mut table = Vec::new();
    for lease_ttl_ms in [4_000, 1_000] {
        let Some(mut site) = Site::start_with(3, lease_ttl_ms).await else {
            bail!("PostgreSQL cannot be started by scripts/pg");
        };
        let mut took = Vec::new();
        for round in 0..rounds {
            let one = failover(&mut site)
                .await
                .with_context(|| format!("round {round}"))?;
            eprintln!(
                "lease {lease_ttl_ms} ms, round {}: {:.2} s",
                round + 1,
                one.as_secs_f64()
            );
            took.push(one);
        }
        took.sort();
        table.push((
            lease_ttl_ms,
            percentile(&took, 0.5),
            took[took.len() - 1],
            took[0],
        ));
    }
    println!("| lease_ttl_ms | rounds | median | max | min | target |");
    println!("|---|---|---|---|---|---|");
    for (ttl, median, max, min) in &table {
        println!(
            "| {ttl} | {rounds} | {:.2} s | {:.2} s | {:.2} s | <= {} s |",
            median.as_secs_f64(),
            max.as_secs_f64(),
            min.as_secs_f64(),
            TARGET.as_secs()
        );
    }
    if let Some((_, _, worst, _)) = table.iter().find(|(_, _, max, _)| *max > TARGET) {
        bail!("the slowest failover took {worst:?}, over the target of {TARGET:?}");
    }
    Ok(())
}

/// Kills the leader; returns the time to the first acknowledged write after it.
async fn failover(site: &mut Site) -> anyhow::Result<Duration> {
    let leader = site.wait_for_leader(&[], Duration::from_secs(30)).await;
    let through = site
        .front_ends
        .iter()
        .find(|f| f.name != leader)
        .context("a follower")?
        .a
        .clone();
    let killed = Instant::now();
    site.by_name(&leader).kill9();
    let request = InitializeRequest {
        model: InitModel::Besteffort,
        count: 1,
        descriptor: harness::small("failover"),
    };
    let took = loop {
        if through.initialize(&request).await.is_ok() {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no write acknowledged within 60 s:\n{}", site.logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The killed one comes back and follows before the next round.
    site.by_name(&leader).spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = site.by_name(&leader).ops.cluster().await;
        let follows = view.is_ok_and(|v| {
            v.members
                .iter()
                .any(|m| m.name == leader && m.role == ClusterRole::Follower)
        });
        if follows {
            return Ok(took);
        }
        if Instant::now() > deadline {
            bail!("{leader} did not come back as a follower:\n{}", site.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
