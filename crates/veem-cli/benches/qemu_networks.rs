//! TCP throughput and latency between two real guests on one virtual LAN: both on one host, and
//! on two hosts of the site.
//!
//! Run: `cargo bench -p veem-cli --bench qemu_networks` (release build; a few minutes). It drives
//! a `veem serve` process with three qemu hosts, started by the end-to-end tests' harness,
//! through `veem-client` only. A receiver guest serves its discard port; a sender guest, told by
//! its context (`veem.bench.send`, `veem.bench.ping`), sends `VEEM_BENCH_MB` MiB (default 64) of
//! zeros to it over TCP and pings it 20 times, and writes the results on its own disk, which
//! the bench reads after shutting it down. Prints a Markdown table for BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{get, init_one, read_guest_file, wait_guest_ready, Hypervisor, Server};
use veem_guest::BenchResult;
use veem_model::{ControlAction, VeeDescriptor};

const BENCH_LIMIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let megabytes: u64 = std::env::var("VEEM_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let Some(server) = Server::start_for_bench().await else {
        println!("SKIPPED: qemu-system-x86_64 is not installed; run scripts/install-deps");
        return Ok(());
    };
    server
        .a
        .create_network("bench", "10.215.0.0/24", false)
        .await?;

    let mut rows = Vec::new();
    for (label, same_host) in [("one host", true), ("two hosts", false)] {
        eprintln!("{label}: {megabytes} MiB and 20 pings");
        let (send, ping) = measure(&server, megabytes, same_host).await?;
        rows.push((label, send, ping));
    }
    println!("| guests on | TCP throughput | bytes | time | ping min / avg / max |");
    println!("|---|---|---|---|---|");
    for (label, (bytes, millis), (min, avg, max)) in rows {
        let mbit_s = bytes as f64 * 8.0 / 1e6 / (millis as f64 / 1000.0);
        println!(
            "| {label} | {mbit_s:.0} Mbit/s | {bytes} | {millis} ms | {min:.2} / {avg:.2} / {max:.2} ms |"
        );
    }
    Ok(())
}

fn guest(name: &str, tags: &[&str], anti_affinity: &[&str]) -> VeeDescriptor {
    let mut d = VeeDescriptor::minimal(1, 256);
    d.name = name.to_owned();
    d.disks.push(harness::tiny_disk());
    d.nics = harness::nics(&[("bench", None)]);
    d.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    d.anti_affinity = anti_affinity.iter().map(|t| (*t).to_owned()).collect();
    d
}

/// Boots a receiver and a sender (on its host or away from it), lets the sender measure, and
/// answers ((bytes, ms), (min, avg, max ping ms)).
async fn measure(
    server: &Server,
    megabytes: u64,
    same_host: bool,
) -> anyhow::Result<((u64, u64), (f64, f64, f64))> {
    let a = &server.a;
    let apart: &[&str] = if same_host { &[] } else { &["pair"] };
    let receiver = init_one(a, guest("receiver", &["pair"], apart)).await;
    harness::ctl_ok(a, ControlAction::Activate, &[&receiver]).await;
    wait_guest_ready(server, Hypervisor::Qemu, &receiver).await;
    let receiver_view = get(a, &receiver).await;
    let ip = receiver_view.generated.nics[0]
        .ip
        .clone()
        .context("the receiver has an address")?;

    let mut d = guest("sender", &["pair"], apart);
    d.context.properties.insert(
        veem_guest::BENCH_SEND_PROPERTY.into(),
        format!("{ip}:{}:{megabytes}", veem_guest::DISCARD_PORT),
    );
    d.context
        .properties
        .insert(veem_guest::BENCH_PING_PROPERTY.into(), ip.clone());
    if same_host {
        // Pack placement puts it beside the receiver; check rather than trust.
        d.anti_affinity.clear();
    }
    let sender = init_one(a, d).await;
    harness::ctl_ok(a, ControlAction::Activate, &[&sender]).await;
    let sender_view = get(a, &sender).await;
    let together = sender_view.host == receiver_view.host;
    if together != same_host {
        bail!(
            "wanted the guests {}, got {:?} and {:?}",
            if same_host { "together" } else { "apart" },
            sender_view.host,
            receiver_view.host
        );
    }
    let console = server
        .data_dir()
        .join("vees")
        .join(&sender)
        .join("console.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains(veem_guest::BENCH_DONE_MARKER)
    {
        if start.elapsed() > BENCH_LIMIT {
            bail!("the sender did not finish in {BENCH_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    harness::ctl_ok(a, ControlAction::Shutdown, &[&sender]).await;
    let out = server.dir.path().join(format!("{sender}.qcow2"));
    a.download_disk(&sender, "vda", &out).await?;
    let log = read_guest_file(&out, &format!("/{}", veem_guest::BENCH_LOG_PATH));
    let mut send = None;
    let mut ping = None;
    for result in veem_guest::bench_results(&log) {
        match result {
            BenchResult::Send { bytes, millis, .. } => send = Some((bytes, millis)),
            BenchResult::Ping {
                min_ms,
                avg_ms,
                max_ms,
                ..
            } => ping = Some((min_ms, avg_ms, max_ms)),
            BenchResult::Failed { kind, target } => bail!("{kind} to {target} failed: {log}"),
        }
    }
    for id in [&sender, &receiver] {
        harness::ctl_ok(a, ControlAction::Destroy, &[id]).await;
        a.purge_vee(id).await?;
    }
    Ok((
        send.context("the sender recorded its send")?,
        ping.context("the sender recorded its pings")?,
    ))
}
