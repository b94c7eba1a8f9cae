//! The cost of a Prometheus scrape (`GET /metrics`) of a site at scale, beside its peers in the
//! same run: a `veem serve` process with `VEEM_BENCH_HOSTS` in-process sim hosts (default
//! 10,000, 32 vCPUs and 32 GB each), driven over HTTP as `site_scale` drives it.
//!
//! 1. 1,000 VEEs made ACTIVE: p50/p99 of `VEEM_BENCH_SAMPLES` scrapes (default 200), and of as
//!    many `GET /vmi/v1/vees?limit=1000` (the VMI's largest page);
//! 2. then up to `VEEM_BENCH_VEES` (default 200,000) VEEs ACTIVE, in batches of 1,000: the same
//!    two figures again. A scrape that walked the records would grow 200-fold; the counts by
//!    state are kept as records change, so what remains is one line per host and figure.
//!
//! Each scrape is checked: `veem_vees{state="ACTIVE"}` is the number of VEEs made.
//!
//! Run: `cargo bench -p veem-cli --bench metrics` (release build; add `--profile dev` for a
//! debug one). Prints a Markdown table for BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code)] // each bench uses some of them
#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use figures::{env_or, ms, percentile};
use harness::{small, Server, Setup};
use veem_api::InitializeRequest;
use veem_client::ListQuery;
use veem_model::{InitModel, VmiState};
use veem_server::metrics::{parse_samples, series};

/// p50 and p99 of `samples` runs of `sample`.
async fn latencies<F, Fut>(samples: usize, mut sample: F) -> anyhow::Result<(Duration, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        sample().await?;
        took.push(start.elapsed());
    }
    took.sort();
    Ok((percentile(&took, 0.5), percentile(&took, 0.99)))
}

/// One scrape, whole body read and checked: `veem_vees{state="ACTIVE"}` is `active`. Answers
/// the body.
async fn scrape(http: &reqwest::Client, url: &str, active: usize) -> anyhow::Result<String> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let expected = format!(
        "\n{} {active}\n",
        series("veem_vees", &[("state", "ACTIVE")])
    );
    ensure!(
        text.contains(&expected),
        "the scrape does not show {active} ACTIVE VEEs"
    );
    Ok(text)
}

/// The VMI's largest page of VEEs, as bytes (not decoded: the scrape is not parsed either).
async fn page(http: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let body = http
        .get(format!("{url}/vmi/v1/vees?limit=1000"))
        .bearer_auth(harness::TOKEN_A)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok(body.len())
}

async fn active_count(server: &Server) -> anyhow::Result<usize> {
    let query = ListQuery {
        state: Some(VmiState::Active),
        limit: Some(1000),
        ..ListQuery::default()
    };
    Ok(server.a.list_all_vees(&query).await?.len())
}

/// Makes VEEs until `total` exist, in batches of 1,000, and waits until all are ACTIVE.
async fn grow_to(server: &Server, made: &mut usize, total: usize) -> anyhow::Result<()> {
    while *made < total {
        let count = 1_000.min(total - *made);
        let answer = server
            .a
            .initialize(&InitializeRequest {
                model: InitModel::Besteffort,
                count: u32::try_from(count)?,
                descriptor: small("scrape"),
            })
            .await?;
        let ids: Vec<String> = answer.vees.into_iter().map(|v| v.id).collect();
        let submitted = server.a.submit(&ids).await?;
        if !submitted.failed.is_empty() {
            bail!("submit failed: {:?}", &submitted.failed[..1]);
        }
        *made += count;
    }
    let start = Instant::now();
    while active_count(server).await? < total {
        if start.elapsed() > Duration::from_secs(3600) {
            bail!("not all {total} VEEs ACTIVE after an hour");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Scrape and page figures at the site's present size.
struct Figures {
    scrape: (Duration, Duration),
    scrape_bytes: usize,
    page: (Duration, Duration),
}

async fn measure(server: &Server, active: usize, samples: usize) -> anyhow::Result<Figures> {
    let http = reqwest::Client::new();
    let url = server.url.clone();
    // Checked in full once; the timed scrapes check the ACTIVE count only.
    let text = scrape(&http, &url, active).await?;
    let shown = parse_samples(&text);
    ensure!(shown.get(&series("veem_pending_vees", &[])) == Some(&0.0));
    let scrape_bytes = text.len();
    let scrape_times = latencies(samples, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            scrape(&http, &url, active).await?;
            Ok(())
        }
    })
    .await?;
    let page = latencies(samples, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            ensure!(page(&http, &url).await? > 0);
            Ok(())
        }
    })
    .await?;
    Ok(Figures {
        scrape: scrape_times,
        scrape_bytes,
        page,
    })
}

/// p50 and p99 of the exposition alone, in this process (no HTTP, no locks): figures as the
/// server's at `hosts` hosts, each up and holding 20 VEEs.
fn render_alone(hosts: &[&'static str], vees: usize, samples: usize) -> (Duration, Duration) {
    use std::sync::Arc;
    use veem_server::metrics::{render, Capacity, Format, HostLoad};
    use veem_server::veem::CoreFigures;
    let mut counts = veem_server::veem::VeeCounts::default();
    counts.0[2] = vees as u64;
    let ids: Vec<veem_model::HostId> = hosts
        .iter()
        .map(|h| veem_model::HostId::new(*h).expect("a valid host name"))
        .collect();
    let figures = CoreFigures {
        vees: counts,
        pending: 0,
        host_states: ids
            .iter()
            .map(|h| (h.clone(), veem_api::HostState::Up))
            .collect(),
        loads: ids
            .iter()
            .map(|h| {
                let load = HostLoad {
                    capacity: Capacity {
                        cpus: 32,
                        memory_mb: 32_768,
                    },
                    used: Capacity {
                        cpus: 20,
                        memory_mb: 10_240,
                    },
                    enabled: true,
                    vees: 20,
                };
                (Arc::new(h.clone()), load)
            })
            .collect(),
        accounting_push: Default::default(),
        monitoring_push: Default::default(),
    };
    let mut took: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            let text = render(Some(figures.clone()), Format::PrometheusText);
            std::hint::black_box(text);
            start.elapsed()
        })
        .collect();
    took.sort();
    (percentile(&took, 0.5), percentile(&took, 0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hosts = env_or("VEEM_BENCH_HOSTS", 10_000);
    let vees = env_or("VEEM_BENCH_VEES", 200_000);
    let samples = env_or("VEEM_BENCH_SAMPLES", 200);
    ensure!(
        vees <= hosts * 32,
        "{vees} VEEs of 1 vCPU do not fit on {hosts} hosts of 32"
    );
    let names: Vec<&'static str> = (1..=hosts)
        .map(|i| &*Box::leak(format!("h{i:05}").into_boxed_str()))
        .collect();
    let started = Instant::now();
    let mut server = Server::start_with(Setup {
        hosts: names.iter().map(|n| (*n, 32, 32_768, "")).collect(),
        monitoring_interval_ms: 60_000,
        ..Setup::default()
    })
    .await;
    server.start_deadline = Duration::from_secs(900);
    println!("{hosts} sim hosts up after {:?}", started.elapsed());

    let mut made = 0;
    let small_site = 1_000.min(vees);
    grow_to(&server, &mut made, small_site).await?;
    let small = measure(&server, small_site, samples).await?;
    println!(
        "{small_site} VEEs: scrape p50 {} p99 {} ({} bytes); page of 1,000 p50 {} p99 {}",
        ms(small.scrape.0),
        ms(small.scrape.1),
        small.scrape_bytes,
        ms(small.page.0),
        ms(small.page.1)
    );
    let grown = Instant::now();
    grow_to(&server, &mut made, vees).await?;
    println!("{vees} VEEs ACTIVE after {:?} more", grown.elapsed());
    let large = measure(&server, vees, samples).await?;
    println!(
        "{vees} VEEs: scrape p50 {} p99 {} ({} bytes); page of 1,000 p50 {} p99 {}",
        ms(large.scrape.0),
        ms(large.scrape.1),
        large.scrape_bytes,
        ms(large.page.0),
        ms(large.page.1)
    );

    server.stop();
    // After the server stopped, so that it competes with nothing.
    let alone = render_alone(&names, vees, samples);
    println!(
        "the exposition alone (this process, {hosts} hosts): p50 {} p99 {}",
        ms(alone.0),
        ms(alone.1)
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!();
    println!("| figure ({hosts} sim hosts, {samples} samples each) | p50 | p99 |");
    println!("|---|---|---|");
    for (what, figures) in [(small_site, &small), (vees, &large)] {
        println!(
            "| `GET /metrics` at {what} VEEs ({} KB) | {} | {} |",
            figures.scrape_bytes / 1024,
            ms(figures.scrape.0),
            ms(figures.scrape.1)
        );
        println!(
            "| `GET /vmi/v1/vees?limit=1000` at {what} VEEs | {} | {} |",
            ms(figures.page.0),
            ms(figures.page.1)
        );
    }
    println!(
        "| the exposition alone, in the bench's process (no HTTP, no locks), {hosts} hosts | {} | {} |",
        ms(alone.0),
        ms(alone.1)
    );
    println!(
        "| scrape at {vees} / at {small_site} VEEs | {:.2} | {:.2} |",
        ratio(large.scrape.0, small.scrape.0),
        ratio(large.scrape.1, small.scrape.1)
    );
    println!(
        "| scrape / page of 1,000, at {vees} VEEs | {:.2} | {:.2} |",
        ratio(large.scrape.0, large.page.0),
        ratio(large.scrape.1, large.page.1)
    );
    Ok(())
}
