//! What OCCI costs next to the VMI: one `veem serve` on sim hosts with `[occi] listen`, 1,000
//! VEEs of sm-a, listed through the VMI (`GET /vmi/v1/vees`, paged: the default 100 a page,
//! and 1,000 in one page) and through OCCI (`GET /compute/` as `text/uri-list`, `text/plain`
//! and `application/occi+json`, which renders every resource whole), in the same run, over one
//! kept-alive connection each, the whole body read. Ratios are OCCI over the VMI's one-page list.
//!
//! Run: `cargo bench -p veem-cli --bench occi` (well under a minute). Prints a Markdown table
//! for BENCHMARKS.md. `VEEM_BENCH_VEES` (default 1000) and `VEEM_BENCH_LISTS` (default 30)
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
use harness::{free_port, init, small, Server, Setup, TOKEN_A};
use veem_model::InitModel;

/// One way of listing: how many requests it takes and what it asks.
struct Listing {
    name: &'static str,
    /// The path of the first request; `None` for the VMI's pages, followed by `next`.
    occi_accept: Option<&'static str>,
    vmi_limit: usize,
}

/// Lists everything once; answers how many VEEs it saw and the bytes it read.
async fn list_once(
    http: &reqwest::Client,
    vmi: &str,
    occi: &str,
    listing: &Listing,
) -> anyhow::Result<(usize, usize)> {
    let auth = format!("Bearer {TOKEN_A}");
    if let Some(accept) = listing.occi_accept {
        let body = http
            .get(format!("{occi}/compute/"))
            .header("Authorization", &auth)
            .header("Accept", accept)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let text = String::from_utf8_lossy(&body);
        return Ok((text.matches("/compute/vee-").count(), body.len()));
    }
    let (mut seen, mut bytes, mut after) = (0, 0, None::<String>);
    loop {
        let mut url = format!("{vmi}/vmi/v1/vees?limit={}", listing.vmi_limit);
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let body = http
            .get(url)
            .header("Authorization", &auth)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        bytes += body.len();
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        seen += page["vees"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok((seen, bytes)),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (vees, lists) = (
        env_or("VEEM_BENCH_VEES", 1000usize),
        env_or("VEEM_BENCH_LISTS", 30usize),
    );
    let port = free_port();
    let server = Server::start_with(Setup {
        extra_config: format!("\n[occi]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Setup::default()
    })
    .await;
    let occi = format!("http://127.0.0.1:{port}");
    let ids = init(
        &server.a,
        InitModel::Besteffort,
        vees as u32,
        small("bench"),
    )
    .await;
    ensure!(ids.len() == vees, "made {} VEEs", ids.len());
    let http = reqwest::Client::new();
    let listings = [
        Listing {
            name: "VMI `GET /vmi/v1/vees`, 100 a page",
            occi_accept: None,
            vmi_limit: 100,
        },
        Listing {
            name: "VMI `GET /vmi/v1/vees`, 1,000 a page",
            occi_accept: None,
            vmi_limit: 1000,
        },
        Listing {
            name: "OCCI `GET /compute/`, text/uri-list",
            occi_accept: Some("text/uri-list"),
            vmi_limit: 0,
        },
        Listing {
            name: "OCCI `GET /compute/`, text/plain",
            occi_accept: Some("text/plain"),
            vmi_limit: 0,
        },
        Listing {
            name: "OCCI `GET /compute/`, application/occi+json",
            occi_accept: Some("application/occi+json"),
            vmi_limit: 0,
        },
    ];
    let mut results: Vec<(Duration, Duration, usize)> = Vec::new();
    for listing in &listings {
        // Warm-up: the connection is open and the code paths are hot.
        for _ in 0..3 {
            list_once(&http, &server.url, &occi, listing).await?;
        }
        let mut times = Vec::with_capacity(lists);
        let mut bytes = 0;
        for _ in 0..lists {
            let t = Instant::now();
            let (seen, read) = list_once(&http, &server.url, &occi, listing).await?;
            times.push(t.elapsed());
            ensure!(seen == vees, "{}: saw {seen} of {vees}", listing.name);
            bytes = read;
        }
        times.sort();
        results.push((percentile(&times, 0.5), percentile(&times, 0.99), bytes));
    }
    let base = results[1].0.as_secs_f64();
    println!(
        "{vees} compute resources (VEEs), {lists} listings each, p50/p99 of a whole listing:\n"
    );
    println!("| listing | p50 | p99 | bytes | p50 / VMI one page |");
    println!("|---|---|---|---|---|");
    for (listing, (p50, p99, bytes)) in listings.iter().zip(&results) {
        println!(
            "| {} | {} | {} | {bytes} | {:.2} |",
            listing.name,
            ms(*p50),
            ms(*p99),
            p50.as_secs_f64() / base
        );
    }
    Ok(())
}
