//! A site at scale, measured from outside as issue 12's table says: a `veem serve` process with
//! `VEEM_BENCH_HOSTS` in-process sim hosts (default 10,000) and `VEEM_BENCH_VEES` VEEs (default
//! 200,000; 1 vCPU and 512 MB each), driven through `veem-client` over HTTP:
//!
//! 1. initialize in batches of `VEEM_BENCH_BATCH` (1,000) and submit each batch, until every VEE
//!    is ACTIVE: VEEs per second;
//! 2. the server's resident memory (VmRSS) with all of them (again after step 4's restart);
//! 3. a page of 100 VEEs (p50/p99 of `VEEM_BENCH_SAMPLES` pages at random offsets, default
//!    1,000); a page of 100 hosts (the same); GET one VEE (the same);
//! 4. restart: SIGTERM, start again, until the VMI answers; and until every VEE is listed
//!    ACTIVE again.
//!
//! `VEEM_BENCH_HEALTH_MS` sets the health checks' interval (veem's default, 1 s).
//!
//! Run: `cargo bench -p veem-cli --bench site_scale` (release build). Prints a Markdown table
//! for BENCHMARKS.md, each figure beside its target.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code)] // each bench uses some of them
#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use figures::{env_or, ms, percentile};
use harness::{small, Server, Setup, VEEM_HEALTH_INTERVAL_MS};
use veem_api::InitializeRequest;
use veem_client::ListQuery;
use veem_model::{InitModel, VmiState};

/// p50 and p99 of what `sample` takes, `samples` times.
async fn latencies<F, Fut>(samples: usize, mut sample: F) -> anyhow::Result<(Duration, Duration)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        sample(i).await?;
        took.push(start.elapsed());
    }
    took.sort();
    Ok((percentile(&took, 0.5), percentile(&took, 0.99)))
}

/// The server's resident memory, in MB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// How many of the VEEs are ACTIVE, counted over every page.
async fn active_count(server: &Server) -> anyhow::Result<usize> {
    let query = ListQuery {
        state: Some(VmiState::Active),
        limit: Some(1000),
        ..ListQuery::default()
    };
    Ok(server.a.list_all_vees(&query).await?.len())
}

async fn wait_all_active(server: &Server, vees: usize, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let active = active_count(server).await?;
        if active == vees {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("only {active} of {vees} VEEs ACTIVE after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hosts = env_or("VEEM_BENCH_HOSTS", 10_000);
    let vees = env_or("VEEM_BENCH_VEES", 200_000);
    let batch = env_or("VEEM_BENCH_BATCH", 1_000);
    let samples = env_or("VEEM_BENCH_SAMPLES", 1_000);
    // Room for every VEE, spread or packed: 32 vCPUs and 32 GB a host.
    let names: Vec<&'static str> = (1..=hosts)
        .map(|i| &*Box::leak(format!("h{i:05}").into_boxed_str()))
        .collect();
    let mut server = Server::start_with(Setup {
        hosts: names.iter().map(|n| (*n, 32, 32_768, "")).collect(),
        // veem's default unless told (VEEM_BENCH_HEALTH_MS), to see what the checks cost.
        health_interval_ms: env_or("VEEM_BENCH_HEALTH_MS", VEEM_HEALTH_INTERVAL_MS as usize) as u64,
        monitoring_interval_ms: 60_000,
        ..Setup::default()
    })
    .await;
    println!("{hosts} sim hosts up; initializing {vees} VEEs in batches of {batch}");

    // 1. initialize + submit until all ACTIVE.
    let start = Instant::now();
    let mut ids: Vec<String> = Vec::with_capacity(vees);
    while ids.len() < vees {
        let count = batch.min(vees - ids.len());
        let made = server
            .a
            .initialize(&InitializeRequest {
                model: InitModel::Besteffort,
                count: u32::try_from(count)?,
                descriptor: small("scale"),
            })
            .await?;
        let batch_ids: Vec<String> = made.vees.into_iter().map(|v| v.id).collect();
        let answer = server.a.submit(&batch_ids).await?;
        if !answer.failed.is_empty() {
            bail!("submit failed: {:?}", &answer.failed[..1]);
        }
        ids.extend(batch_ids);
    }
    let submitted = start.elapsed();
    wait_all_active(&server, vees, Duration::from_secs(1800)).await?;
    let all_active = start.elapsed();
    let vees_per_s = vees as f64 / all_active.as_secs_f64();
    println!("all ACTIVE after {all_active:?} (all submitted after {submitted:?}): {vees_per_s:.0} VEEs/s");

    // 2. memory.
    let pid = server.pid().context("the server runs")?;
    let rss = rss_mb(pid)?;
    println!("RSS {rss:.0} MB");

    // 3. reads.
    let step = (ids.len() / samples.max(1)).max(1);
    let (page_p50, page_p99) = latencies(samples, |i| {
        let after = ids[(i * step) % ids.len()].clone();
        let client = server.a.clone();
        async move {
            let query = ListQuery {
                limit: Some(100),
                after: Some(after),
                ..ListQuery::default()
            };
            let page = client.list_vees(&query).await?;
            anyhow::ensure!(!page.vees.is_empty() || page.next.is_none());
            Ok(())
        }
    })
    .await?;
    let host_step = (names.len() / samples.max(1)).max(1);
    let (hosts_p50, hosts_p99) = latencies(samples, |i| {
        let after = names[(i * host_step) % names.len()];
        let client = server.ops.clone();
        async move {
            client.list_hosts_page(100, Some(after)).await?;
            Ok(())
        }
    })
    .await?;
    let (get_p50, get_p99) = latencies(samples, |i| {
        let id = ids[(i * step) % ids.len()].clone();
        let client = server.a.clone();
        async move {
            client.get_vee(&id).await?;
            Ok(())
        }
    })
    .await?;
    println!("page of 100 VEEs p50 {} p99 {}; page of 100 hosts p50 {} p99 {}; GET one VEE p50 {} p99 {}",
        ms(page_p50), ms(page_p99), ms(hosts_p50), ms(hosts_p99), ms(get_p50), ms(get_p99));

    // 4. restart.
    server.stop();
    server.start_deadline = Duration::from_secs(900);
    let restart = Instant::now();
    server.start_again().await;
    let answering = restart.elapsed();
    wait_all_active(&server, vees, Duration::from_secs(600)).await?;
    let listed_active = restart.elapsed();
    server.wait_hosts_up().await;
    let hosts_up = restart.elapsed();
    wait_all_active(&server, vees, Duration::from_secs(600)).await?;
    println!("restart: the VMI answers after {answering:?}, every VEE listed ACTIVE after {listed_active:?}, every host up (reconciled) after {hosts_up:?}");
    // The books as loaded from the store, with every host reconciled.
    let rss_restarted = rss_mb(server.pid().context("the server runs again")?)?;
    println!("RSS after the restart {rss_restarted:.0} MB");

    println!();
    println!("| figure ({hosts} sim hosts, {vees} VEEs) | measured | target |");
    println!("|---|---|---|");
    println!(
        "| restart: SIGTERM, start, until the VMI answers / every VEE listed ACTIVE / every host reconciled | {:.1} s / {:.1} s / {:.1} s | ≤ 5 s |",
        answering.as_secs_f64(),
        listed_active.as_secs_f64(),
        hosts_up.as_secs_f64()
    );
    println!("| the server's RSS with {vees} VEEs: all made through the VMI / after the restart | {rss:.0} MB / {rss_restarted:.0} MB | ≤ 600 MB |");
    println!("| initialize (batches of {batch}) + submit until all ACTIVE | {vees_per_s:.0} VEEs/s | ≥ 10,000 VEEs/s |");
    println!(
        "| a page of 100 VEEs, p50 / p99 | {} / {} | p99 ≤ 5 ms |",
        ms(page_p50),
        ms(page_p99)
    );
    println!(
        "| a page of 100 hosts, p50 / p99 | {} / {} | p99 ≤ 20 ms |",
        ms(hosts_p50),
        ms(hosts_p99)
    );
    println!(
        "| GET one VEE, p50 / p99 | {} / {} | p99 ≤ 0.71 ms (keep) |",
        ms(get_p50),
        ms(get_p99)
    );
    Ok(())
}
