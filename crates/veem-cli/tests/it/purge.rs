//! Purge removes every byte of a VEE on every host it ever ran on, also on a host that was away
//! when it was purged: the whole data directory is listed before the VEE is made and after it is
//! purged.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use veem_api::{HostState, MigrateRequest};
use veem_model::{ControlAction as A, VmiState};

use crate::harness::*;

/// Every file and directory under `root`, relative to it.
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            out.insert(relative);
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The store's own files, which a purge writes to (and which then hold no trace of the VEE that
/// SQLite would not overwrite; what they hold is read through the API instead).
fn is_the_stores(path: &str) -> bool {
    path.starts_with("veem.db")
}

/// Asserts that nothing of `id` is left under `root`: no name holds it, no file but the store's
/// holds its bytes, and nothing is new since `before` but the store's files and the (empty)
/// folders of all VEEs and of disk exports.
fn assert_nothing_left_of(root: &Path, before: &BTreeSet<String>, id: &str) {
    let after = listing(root);
    let named: Vec<&String> = after.iter().filter(|p| p.contains(id)).collect();
    assert!(named.is_empty(), "{id} is still named in {named:?}");
    let new: Vec<&String> = after
        .difference(before)
        .filter(|p| !is_the_stores(p) && !["vees", "exports"].contains(&p.as_str()))
        .collect();
    assert!(new.is_empty(), "new since before {id} was made: {new:?}");
    for path in after.iter().filter(|p| !is_the_stores(p)) {
        let full = root.join(path);
        if !full.is_file() {
            continue;
        }
        let bytes = std::fs::read(&full).unwrap_or_default();
        assert!(
            !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
            "{path} still holds {id}"
        );
    }
}

/// Which hosts keep a file naming `id` in their state directories.
fn hosts_with_files_of(s: &Server, id: &str) -> Vec<String> {
    let hosts = s.data_dir().join("hosts");
    let mut found: Vec<String> = listing(&hosts)
        .into_iter()
        .filter(|p| p.contains(id))
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    found.sort();
    found.dedup();
    found
}

on_every_driver!(purge_leaves_nothing_on_any_host_the_vee_ran_on);

async fn purge_leaves_nothing_on_any_host_the_vee_ran_on(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the QEMU tests: install QEMU"
        );
        return;
    };
    let data = s.data_dir();
    let before = listing(&data);
    let mut d = small("doomed");
    d.disks.push(tiny_disk());
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, driver, &id).await;
    let first = get(&s.a, &id).await.host.expect("placed").to_string();
    let second = if first == "h1" { "h2" } else { "h1" };
    let moved = s
        .ops
        .migrate_vee(
            &id,
            &MigrateRequest {
                host: Some(second.to_owned()),
                live: Some(true),
            },
        )
        .await
        .expect("migrated");
    assert_eq!(moved.host.map(|h| h.to_string()).as_deref(), Some(second));
    // Suspended and restored: its saved memory comes and goes too.
    ctl_ok(&s.a, A::Suspend, &[&id]).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert_eq!(state_of(&s.a, &id).await, VmiState::Active);
    if driver == Hypervisor::Qemu {
        // The test would see what a purge used to leave: each host's log of the VEE's QEMU.
        let hosts = hosts_with_files_of(&s, &id);
        assert!(
            hosts.contains(&first) && hosts.contains(&second.to_owned()),
            "both hosts keep files of {id}: {hosts:?}"
        );
    }

    // What a crash in the middle of a disk download leaves (the export is unlinked as soon as
    // its download starts): the VEE's too.
    let exports = data.join("exports");
    std::fs::create_dir_all(&exports).expect("exports folder");
    let leftover = exports.join(format!("{id}-vda-1.qcow2"));
    std::fs::write(&leftover, id.as_bytes()).expect("a leftover export");

    s.a.purge_vee(&id).await.expect("purged");
    assert!(!leftover.exists(), "the leftover export is gone");
    assert!(
        processes_mentioning(&data.join("vees").join(&id)).is_empty(),
        "no process of {id} is left"
    );
    assert_nothing_left_of(&data, &before, &id);
}

/// A remote agent away (killed) while its VEE is purged is cleaned when it connects again.
#[tokio::test]
async fn a_host_away_at_purge_is_cleaned_when_it_connects_again() {
    let s = Server::start_with(Setup {
        hosts: vec![],
        ..Setup::default()
    })
    .await;
    let limit = Duration::from_secs(20);
    let mut agent = RemoteAgent::start(&s, "h9", 4, 8192);
    let state_dir = agent.state_dir.clone();
    wait_host(&s, "h9", HostState::Up, limit).await;
    let before = listing(&state_dir);
    let id = init_one(&s.a, small("away")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let journal_mentions = |id: &str| {
        listing(&state_dir).iter().any(|p| {
            std::fs::read(state_dir.join(p))
                .unwrap_or_default()
                .windows(id.len())
                .any(|w| w == id.as_bytes())
        })
    };
    assert!(journal_mentions(&id), "h9 records its instance of {id}");

    agent.kill9();
    wait_host(&s, "h9", HostState::Down, limit).await;
    s.a.purge_vee(&id).await.expect("purged while h9 is away");
    assert!(journal_mentions(&id), "h9 was away: it still has it");

    agent.spawn();
    wait_host(&s, "h9", HostState::Up, limit).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while journal_mentions(&id) {
        assert!(
            Instant::now() < deadline,
            "h9 still holds {id} after it connected again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = listing(&state_dir);
    assert_eq!(after, before, "nothing new on h9");
    agent.kill9();
}
