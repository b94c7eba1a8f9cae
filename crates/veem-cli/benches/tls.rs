//! What TLS costs: two `veem serve` processes on sim hosts in one run, one over HTTP and one
//! over HTTPS (certificates from `veem tls init`), measured alike through `veem-client`:
//! GetVEE on a kept-alive connection (p50/p99), GetVEE on a fresh connection (the handshake
//! included), and InitializeVEEs throughput in batches.
//!
//! Run: `cargo bench -p veem-cli --bench tls` (well under a minute). Prints a Markdown table for
//! BENCHMARKS.md. `VEEM_BENCH_GETS` (default 2000), `VEEM_BENCH_FRESH` (default 200),
//! `VEEM_BENCH_BATCHES` (default 20) and `VEEM_BENCH_BATCH` (VEEs per batch, default 100)
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
use harness::{init, init_one, small, Server, Setup, TOKEN_A};
use veem_client::Client;
use veem_model::InitModel;

struct Figures {
    get_p50: Duration,
    get_p99: Duration,
    fresh_p50: Duration,
    fresh_p99: Duration,
    vees_per_s: f64,
    batch_p50: Duration,
}

async fn measure(server: &Server) -> anyhow::Result<Figures> {
    let (gets, fresh, batches, batch) = (
        env_or("VEEM_BENCH_GETS", 2000),
        env_or("VEEM_BENCH_FRESH", 200),
        env_or("VEEM_BENCH_BATCHES", 20),
        env_or("VEEM_BENCH_BATCH", 100),
    );
    let client = &server.a;
    let id = init_one(client, small("probe")).await;
    // Warm-up: the connection is open and the server's code paths are hot.
    for _ in 0..50 {
        client.get_vee(&id).await?;
    }
    let mut times = Vec::with_capacity(gets);
    for _ in 0..gets {
        let t = Instant::now();
        client.get_vee(&id).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let (get_p50, get_p99) = (percentile(&times, 0.5), percentile(&times, 0.99));

    // A new client each time: a new TCP connection and, over HTTPS, a full handshake. The
    // clients are made beforehand: building one is the client's cost, not the protocol's.
    let clients = (0..fresh)
        .map(|_| Client::with_ca(&server.url, TOKEN_A, server.ca.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut times = Vec::with_capacity(fresh);
    for fresh_client in &clients {
        let t = Instant::now();
        fresh_client.get_vee(&id).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let (fresh_p50, fresh_p99) = (percentile(&times, 0.5), percentile(&times, 0.99));

    let mut batch_times = Vec::with_capacity(batches);
    let started = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        let ids = init(client, InitModel::Besteffort, batch as u32, small("bench")).await;
        ensure!(ids.len() == batch, "a batch made {} VEEs", ids.len());
        batch_times.push(t.elapsed());
    }
    let vees_per_s = (batches * batch) as f64 / started.elapsed().as_secs_f64();
    batch_times.sort();
    Ok(Figures {
        get_p50,
        get_p99,
        fresh_p50,
        fresh_p99,
        vees_per_s,
        batch_p50: percentile(&batch_times, 0.5),
    })
}

fn ratio(https: Duration, http: Duration) -> String {
    format!("{:.2}", https.as_secs_f64() / http.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let http = Server::start_with(Setup::default()).await;
    let https = Server::start_with(Setup {
        tls: Some(vec![]),
        ..Setup::default()
    })
    .await;
    ensure!(
        https.url.starts_with("https://"),
        "the second server is HTTPS"
    );
    // A first round of each warms the machine (and both processes) up; the second counts, so
    // neither server pays for going first.
    measure(&http).await?;
    measure(&https).await?;
    let plain = measure(&http).await?;
    let secure = measure(&https).await?;
    println!("| measure | HTTP | HTTPS | HTTPS/HTTP |");
    println!("|---|---|---|---|");
    for (name, a, b) in [
        (
            "GetVEE p50 (kept-alive connection)",
            plain.get_p50,
            secure.get_p50,
        ),
        (
            "GetVEE p99 (kept-alive connection)",
            plain.get_p99,
            secure.get_p99,
        ),
        (
            "GetVEE p50 (new connection)",
            plain.fresh_p50,
            secure.fresh_p50,
        ),
        (
            "GetVEE p99 (new connection)",
            plain.fresh_p99,
            secure.fresh_p99,
        ),
        (
            "InitializeVEEs batch p50",
            plain.batch_p50,
            secure.batch_p50,
        ),
    ] {
        println!("| {name} | {} | {} | {} |", ms(a), ms(b), ratio(b, a));
    }
    println!(
        "| InitializeVEEs throughput | {:.0} VEEs/s | {:.0} VEEs/s | {:.2} |",
        plain.vees_per_s,
        secure.vees_per_s,
        secure.vees_per_s / plain.vees_per_s
    );
    Ok(())
}
