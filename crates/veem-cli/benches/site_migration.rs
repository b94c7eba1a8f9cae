//! Live migration between sites next to live migration between two hosts of one site, the same
//! guest in the same run: QEMU's downtime and total of each move (from the VEE's event notes at
//! the primary), their medians' ratio and difference, and how long after the send the guest
//! ran at its destination site.
//!
//! Two `veem serve` processes on loopback: `west` with two qemu hosts that share no storage
//! (each keeps its VEEs' directories, `vees_dir`), so a move between them copies the disks, and
//! `east` with one qemu host, registered at west. veem's test guest runs at west; each round
//! moves it live to west's other host, then to east and back (its disks copied each time), and
//! waits for a heartbeat of the guest after every move.
//!
//! Run: `cargo bench -p veem-cli --bench site_migration` (release build; a few minutes).
//! `VEEM_BENCH_ROUNDS` (default 5) sets the rounds. Prints a Markdown table for BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code)] // each bench uses some of them
#[path = "support/figures.rs"]
mod figures;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use figures::env_or;
use harness::{
    ctl_ok, get, init_one, migration_figures, own_vee_dir, peer_site_setup, register_site,
    Hypervisor, Server, Setup,
};
use veem_api::{MigrateRequest, SiteMigrateRequest};
use veem_model::{ControlAction, VeeDescriptor, VmiState};

/// Where the guest's console is now: in the directory of its host at west, or at east.
async fn console_path(west: &Server, east: &Server, id: &str) -> anyhow::Result<PathBuf> {
    let view = get(&west.a, id).await;
    if view.site == "east" {
        let there = east
            .ops
            .list_all_vees(&veem_client::ListQuery::default())
            .await?
            .into_iter()
            .find(|v| v.name == view.name)
            .context("east runs the guest")?;
        return Ok(east
            .data_dir()
            .join("vees")
            .join(there.id)
            .join("console.log"));
    }
    let host = view.host.context("a VEE at west has a host")?;
    Ok(own_vee_dir(west, host.as_str(), id).join("console.log"))
}

/// Waits for a heartbeat the guest had not printed yet: it runs where it went.
async fn wait_heartbeat(west: &Server, east: &Server, id: &str) -> anyhow::Result<()> {
    let console = console_path(west, east, id).await?;
    let beats = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(veem_guest::HEARTBEAT_MARKER))
            .count()
    };
    let before = beats();
    let deadline = Instant::now() + Duration::from_secs(60);
    while beats() <= before {
        ensure!(
            Instant::now() < deadline,
            "{id} printed no heartbeat in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The figures of the newest migration note of `id` at the primary.
async fn last_move(west: &Server, id: &str) -> anyhow::Result<(String, harness::MigrationFigures)> {
    let note = west
        .a
        .vee_events(id)
        .await?
        .events
        .into_iter()
        .rev()
        .filter_map(|e| e.detail)
        .find(|d| d.starts_with("migrated from"))
        .context("a migration note")?;
    let figures = migration_figures(&note).with_context(|| format!("figures in {note:?}"))?;
    Ok((note, figures))
}

fn median(values: &[u64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0,
    }
}

fn spread(values: &[u64]) -> String {
    let (min, max) = (
        values.iter().min().copied().unwrap_or_default(),
        values.iter().max().copied().unwrap_or_default(),
    );
    format!("{min} / {} / {max} ms", median(values))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = env_or("VEEM_BENCH_ROUNDS", 5).max(1);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Some(west) = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 8, 16384, ""), ("h2", 8, 16384, "")],
        own_vees_dirs: vec!["h1", "h2"],
        health_interval_ms: harness::VEEM_HEALTH_INTERVAL_MS,
        monitoring_interval_ms: 10_000,
        ..peer_site_setup("west")
    })
    .await
    else {
        println!("SKIPPED: qemu-system-x86_64 is not installed; run scripts/install-deps");
        return Ok(());
    };
    let east = Server::start_with(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 8, 16384, "")],
        health_interval_ms: harness::VEEM_HEALTH_INTERVAL_MS,
        monitoring_interval_ms: 10_000,
        ..peer_site_setup("east")
    })
    .await;
    register_site(&west, &east, "east").await;

    let mut d = VeeDescriptor::minimal(1, 512);
    d.name = "wanderer".into();
    d.disks.push(harness::tiny_disk());
    let id = init_one(&west.a, d).await;
    ctl_ok(&west.a, ControlAction::Activate, &[&id]).await;
    wait_heartbeat(&west, &east, &id).await?;

    let (mut intra_down, mut intra_total) = (Vec::new(), Vec::new());
    let (mut cross_down, mut cross_total, mut running_after) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let here = get(&west.a, &id).await.host.context("on a host of west")?;
        let to = if here.as_str() == "h1" { "h2" } else { "h1" };
        west.ops
            .migrate_vee(
                &id,
                &MigrateRequest {
                    host: Some(to.into()),
                    live: Some(true),
                },
            )
            .await?;
        let (note, figures) = last_move(&west, &id).await?;
        eprintln!("  within west: {note}");
        intra_down.push(figures.downtime_ms);
        intra_total.push(figures.total_ms);
        wait_heartbeat(&west, &east, &id).await?;
        for site in ["east", "west"] {
            let moved = west
                .ops
                .migrate_vee_to_site(
                    &id,
                    &SiteMigrateRequest {
                        site: site.into(),
                        live: Some(true),
                    },
                )
                .await?;
            ensure!(
                (moved.site.as_str(), moved.state) == (site, VmiState::Active),
                "after the move to {site}: {} at {}",
                moved.state,
                moved.site
            );
            let (note, figures) = last_move(&west, &id).await?;
            eprintln!("  between sites: {note}");
            cross_down.push(figures.downtime_ms);
            cross_total.push(figures.total_ms);
            running_after.extend(figures.running_after_ms);
            wait_heartbeat(&west, &east, &id).await?;
        }
    }

    let (intra, cross) = (median(&intra_down), median(&cross_down));
    println!("| live migration, disks copied (QEMU's figures) | moves | total min / median / max | downtime min / median / max |");
    println!("|---|---|---|---|");
    println!(
        "| between two hosts of west | {} | {} | {} |",
        intra_down.len(),
        spread(&intra_total),
        spread(&intra_down)
    );
    println!(
        "| between west and east, both ways | {} | {} | {} |",
        cross_down.len(),
        spread(&cross_total),
        spread(&cross_down)
    );
    println!(
        "| ratio of the medians | | {:.2}× | {:.2}× (target ≤ 2×: {}); difference {:+.1} ms (target ≤ +5 ms: {}) |",
        median(&cross_total) / median(&intra_total),
        cross / intra,
        if cross <= 2.0 * intra { "met" } else { "**not met**" },
        cross - intra,
        if cross - intra <= 5.0 { "met" } else { "**not met**" },
    );
    println!();
    println!(
        "between sites the guest ran at its destination {} after the send answered",
        spread(&running_after)
    );
    println!(
        "load average before: {}; after: {}",
        load_before.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
