//! What federation costs: two `veem serve` processes on sim hosts, `west` with `east`
//! registered, measured in one run through `veem-client` as an SM calls west:
//! - GetVEE and UpdateState(PAUSE, then ACTIVATE) of a VEE that runs at west, and of one that
//!   runs at east through west (forwarded), p50/p99, and their ratio;
//! - the time from east's death (kill -9) to west showing it `unreachable`, and from its start
//!   again to `up`.
//!
//! Run: `cargo bench -p veem-cli --bench federation` (under a minute). Prints a Markdown table
//! for BENCHMARKS.md. `VEEM_BENCH_GETS` (default 1000) and `VEEM_BENCH_ACTIONS` (default 200)
//! change the sizes.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code)] // each bench uses some of them
#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use anyhow::ensure;
use figures::{env_or, ms, percentile};
use harness::{ctl_ok, init_one, peer_site_setup, register_site, small, Server, Setup};
use veem_api::SiteState;
use veem_client::Client;
use veem_model::{ControlAction as A, SiteName};

async fn site(name: &str) -> Server {
    Server::start_with(Setup {
        hosts: vec![("h1", 64, 262_144, "")],
        health_interval_ms: 1_000,
        ..peer_site_setup(name)
    })
    .await
}

/// p50 and p99 of `runs` calls of `call`.
async fn timed<F, Fut>(runs: usize, mut call: F) -> anyhow::Result<(Duration, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        call().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// GetVEE, and a PAUSE followed by an ACTIVATE (each timed), of `id`.
async fn measure(
    client: &Client,
    id: &str,
    gets: usize,
    actions: usize,
) -> anyhow::Result<[(Duration, Duration); 2]> {
    for _ in 0..50 {
        client.get_vee(id).await?;
    }
    let get = timed(gets, || async {
        client.get_vee(id).await?;
        Ok(())
    })
    .await?;
    let mut paused = false;
    let act = timed(actions * 2, || {
        paused = !paused;
        let action = if paused { A::Pause } else { A::Activate };
        async move {
            ctl_ok(client, action, &[id]).await;
            Ok(())
        }
    })
    .await?;
    Ok([get, act])
}

/// How long until west sees east in `state`.
async fn until_site(west: &Server, state: SiteState) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        if west.ops.get_site("east").await?.state == state {
            return Ok(t.elapsed());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "east never {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (gets, actions) = (
        env_or("VEEM_BENCH_GETS", 1000),
        env_or("VEEM_BENCH_ACTIONS", 200),
    );
    let (west, mut east) = (site("west").await, site("east").await);
    register_site(&west, &east, "east").await;
    let local = init_one(&west.a, small("local")).await;
    let mut away = small("away");
    away.sites = vec![SiteName::new("east")?];
    let away = init_one(&west.a, away).await;
    ctl_ok(&west.a, A::Activate, &[&local, &away]).await;
    ensure!(
        west.a.get_vee(&away).await?.site == "east",
        "away runs at east"
    );

    let [local_get, local_act] = measure(&west.a, &local, gets, actions).await?;
    let [away_get, away_act] = measure(&west.a, &away, gets, actions).await?;

    east.kill9();
    let to_unreachable = until_site(&west, SiteState::Unreachable).await?;
    east.start_again().await;
    let to_up = until_site(&west, SiteState::Up).await?;

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("| figure (sim hosts, loopback) | local VEE | VEE at east, through west | ratio |");
    println!("|---|---|---|---|");
    for (what, l, r) in [
        ("GetVEE p50 / p99", local_get, away_get),
        (
            "UpdateState PAUSE or ACTIVATE p50 / p99",
            local_act,
            away_act,
        ),
    ] {
        println!(
            "| {what} | {} / {} | {} / {} | {:.1} / {:.1} |",
            ms(l.0),
            ms(l.1),
            ms(r.0),
            ms(r.1),
            ratio(r.0, l.0),
            ratio(r.1, l.1)
        );
    }
    println!(
        "\neast killed (kill -9) to `unreachable` at west: {:.1} s; started again to `up`: {:.1} s",
        to_unreachable.as_secs_f64(),
        to_up.as_secs_f64()
    );
    Ok(())
}
