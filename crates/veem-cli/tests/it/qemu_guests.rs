//! What only real guests can show: their own writes, their boots, their processes.

use std::path::Path;

use veem_api::{MigrateRequest, VeeView};
use veem_model::{
    ControlAction as A, DiskSource, ImageName, KernelBoot, VeeDescriptor, VeemState, VmiState,
};

use crate::harness::*;

pub(crate) fn guest(name: &str) -> VeeDescriptor {
    let mut d = small(name);
    d.disks.push(tiny_disk());
    d
}

/// Shuts the VEE down, downloads its first disk and reads a file the guest wrote there.
pub(crate) async fn read_after_shutdown(s: &Server, id: &str, path: &str) -> String {
    ctl_ok(&s.a, A::Shutdown, &[id]).await;
    read_from_disk(s, id, path).await
}

/// Downloads the first disk of a VEE that holds no host and reads a file the guest wrote there.
pub(crate) async fn read_from_disk(s: &Server, id: &str, path: &str) -> String {
    let out = s.dir.path().join(format!("{id}.qcow2"));
    s.a.download_disk(id, "vda", &out)
        .await
        .expect("the disk downloads");
    read_guest_file(&out, path)
}

/// The command line of a QEMU process.
pub(crate) fn qemu_args(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Waits until the VEE's view satisfies `done`.
pub(crate) async fn wait_until(
    s: &Server,
    id: &str,
    what: &str,
    done: impl Fn(&VeeView) -> bool,
) -> VeeView {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = get(&s.a, id).await;
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never {what}: {v:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub(crate) fn kill_9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}

/// The QEMU process running a VEE of this server: its command line carries `-name <vee id>`
/// (ids repeat across the tests' servers, so the server's data directory must appear too).
pub(crate) fn qemu_pid(s: &Server, id: &str) -> Option<u32> {
    let data_dir = s.data_dir().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline =
                std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let named = args
                .windows(2)
                .any(|w| w[0] == b"-name" && w[1] == id.as_bytes());
            let ours = args
                .iter()
                .any(|a| String::from_utf8_lossy(a).contains(&data_dir));
            (named && ours).then_some(pid)
        })
}

#[tokio::test]
async fn context_properties_reach_the_guest_and_its_console_its_owner() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let mut d = guest("db");
    d.context
        .properties
        .insert("db_host".into(), "10.0.0.2".into());
    d.context
        .properties
        .insert("motto".into(), "<quoted & escaped>".into());
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let console =
        s.a.console_tail(&id, 1 << 20)
            .await
            .expect("the owner reads the console");
    let console = String::from_utf8_lossy(&console);
    assert!(
        console.contains("VEEM-GUEST-READY"),
        "what the guest wrote to its serial console: {console}"
    );
    let last = s.a.console_tail(&id, 64).await.expect("its tail");
    assert!(last.len() <= 64 && !last.is_empty(), "{last:?}");
    assert_eq!(
        s.b.console_tail(&id, 64)
            .await
            .expect_err("not sm-b's")
            .status(),
        Some(403)
    );
    let env = read_after_shutdown(&s, &id, "/veem/ovf-env.xml").await;
    assert!(env.contains(&id), "the VEE's own id: {env}");
    assert!(env.contains("db_host") && env.contains("10.0.0.2"), "{env}");
    assert!(env.contains("&lt;quoted &amp; escaped&gt;"), "{env}");
}

#[tokio::test]
async fn suspend_frees_the_host_and_activate_resumes_the_same_guest() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let id = init_one(&s.a, guest("sleeper")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let pid = qemu_pid(&s, &id).expect("a QEMU runs the VEE");
    ctl_ok(&s.a, A::Suspend, &[&id]).await;
    assert_eq!(get(&s.a, &id).await.host, None);
    assert!(
        qemu_pid(&s, &id).is_none(),
        "no process while SUSPENDED (was {pid})"
    );
    let hosts = s.ops.list_hosts().await.expect("hosts");
    assert!(
        hosts.hosts.iter().all(|h| h.used.cpus == 0),
        "the host is freed"
    );
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert!(qemu_pid(&s, &id).is_some());
    let log = read_after_shutdown(&s, &id, "/veem/boot.log").await;
    assert_eq!(
        log.lines().count(),
        1,
        "restored, not booted again: {log:?}"
    );
}

#[tokio::test]
async fn live_migration_moves_a_running_guest_without_a_reboot() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let id = init_one(&s.a, guest("traveller")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let before = get(&s.a, &id).await;
    let old_pid = qemu_pid(&s, &id).expect("running");
    let moved = s
        .ops
        .migrate_vee(
            &id,
            &MigrateRequest {
                host: None,
                live: Some(true),
            },
        )
        .await
        .expect("migrated");
    assert_eq!(moved.state, VmiState::Active);
    assert_ne!(moved.host, before.host);
    let new_pid = qemu_pid(&s, &id).expect("running on its new host");
    assert_ne!(new_pid, old_pid, "a new process on the new host");
    let log = read_after_shutdown(&s, &id, "/veem/boot.log").await;
    assert_eq!(
        log.lines().count(),
        1,
        "moved while running, never rebooted: {log:?}"
    );
}

/// The number of the last write a guest reported on this console ([`veem_guest::WROTE_MARKER`]).
pub(crate) fn last_write(console: &str) -> Option<u64> {
    console.lines().rev().find_map(|line| {
        line.strip_prefix(veem_guest::WROTE_MARKER)?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until the guest whose console is at `path` reported a write numbered `at_least`
/// or more; answers the last.
pub(crate) async fn wait_write(path: &Path, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(n) = last_write(&text).filter(|n| *n >= at_least) {
            return n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no write {at_least} in {}: {text}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn live_migration_without_shared_storage_copies_the_disks_of_a_guest_that_keeps_writing() {
    let Some((s, id, from, to)) = writing_guest_on_hosts_of_their_own("scribe").await else {
        return;
    };
    let console_on = |host: &str| own_vee_dir(&s, host, &id).join("console.log");
    let before = wait_write(&console_on(&from), 3).await;
    assert!(
        !s.data_dir().join("vees").join(&id).join("disks").exists(),
        "the VEE's disks are its host's own, not on shared storage"
    );
    let took = move_between_own_hosts(&s, &id, &from, to, true, VmiState::Active).await;
    // It writes on at its new host, counting on from what it wrote before and during the move.
    let after = wait_write(&console_on(to), before + 5).await;
    let events = s.a.vee_events(&id).await.expect("events").events;
    let note = events
        .iter()
        .filter_map(|e| e.detail.as_deref())
        .find(|d| d.starts_with(&format!("migrated from {from} to {to} in ")))
        .unwrap_or_else(|| panic!("no migration note: {events:?}"));
    assert!(note.contains("(downtime "), "{note}");
    eprintln!("live migration with its disks copied: {note}; the request took {took:?}");

    let log_before_shutdown = std::fs::read_to_string(console_on(to)).unwrap_or_default();
    ctl_ok(&s.a, A::Shutdown, &[&id]).await;
    let disk = own_vee_dir(&s, to, &id).join("disks").join("vda.qcow2");
    assert_every_write_kept_without_reboot(&disk, after, &log_before_shutdown);
}

/// The disk of a guest that was shut down holds every write it numbered, in order, at least
/// up to `after` (which it reported on its console), and it booted once.
pub(crate) fn assert_every_write_kept_without_reboot(disk: &Path, after: u64, console: &str) {
    let writes = read_guest_file(disk, &format!("/{}", veem_guest::WRITES_LOG_PATH));
    let numbers: Vec<u64> = writes
        .lines()
        .map(|l| {
            l.strip_prefix("write ")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("not a write line: {l:?}"))
        })
        .collect();
    let last = *numbers.last().expect("writes on the disk");
    assert_eq!(
        numbers,
        (1..=last).collect::<Vec<_>>(),
        "every write, before, during and after the move, in order, none lost"
    );
    assert!(
        last >= after,
        "the disk holds write {after}, which the guest reported: {last} {console}"
    );
    let boots = read_guest_file(disk, "/veem/boot.log");
    assert_eq!(boots.lines().count(), 1, "never rebooted: {boots:?}");
}

/// A site of two QEMU hosts, h1 and h2, that share no storage (each keeps its VEEs'
/// directories), and an ACTIVE guest there that writes to its disk every 50 ms: the server,
/// the VEE, its host and the other host (`None` when QEMU is missing outside CI).
pub(crate) async fn writing_guest_on_hosts_of_their_own(
    name: &str,
) -> Option<(Server, String, String, &'static str)> {
    let s = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 8, 16384, ""), ("h2", 8, 16384, "")],
        own_vees_dirs: vec!["h1", "h2"],
        ..Setup::default()
    })
    .await?;
    let mut d = guest(name);
    d.context
        .properties
        .insert(veem_guest::WRITE_EVERY_PROPERTY.into(), "0.05".into());
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let from = get(&s.a, &id).await.host.expect("placed").to_string();
    let to = if from == "h1" { "h2" } else { "h1" };
    Some((s, id, from, to))
}

/// Moves the VEE `id` from `from` to `to`, two hosts that share no storage, `live` or cold:
/// it arrives in `state`, in another QEMU process, and `from` keeps nothing of it. Answers how
/// long the request took.
pub(crate) async fn move_between_own_hosts(
    s: &Server,
    id: &str,
    from: &str,
    to: &str,
    live: bool,
    state: VmiState,
) -> std::time::Duration {
    assert!(
        !own_vee_dir(s, to, id).exists(),
        "{to} has nothing of the VEE before it moves"
    );
    let old_pid = qemu_pid(s, id).expect("running");
    let started = std::time::Instant::now();
    let moved = s
        .ops
        .migrate_vee(
            id,
            &MigrateRequest {
                host: Some(to.to_owned()),
                live: Some(live),
            },
        )
        .await
        .expect("migrated with its disks");
    let took = started.elapsed();
    assert_eq!(moved.state, state);
    assert_eq!(moved.host.map(|h| h.to_string()).as_deref(), Some(to));
    let new_pid = qemu_pid(s, id).expect("running on its new host");
    assert_ne!(new_pid, old_pid);
    assert!(
        processes_mentioning(&own_vee_dir(s, from, id)).is_empty(),
        "no process on {from} uses the VEE's old directory"
    );
    assert!(
        !own_vee_dir(s, from, id).exists(),
        "{from} keeps nothing of the VEE"
    );
    took
}

/// The console of a VEE on `host`: in its own directory for a host of `own`, else on the
/// shared storage.
pub(crate) fn console_path_on(
    s: &Server,
    own: &[&str],
    host: &str,
    id: &str,
) -> std::path::PathBuf {
    let dir = if own.contains(&host) {
        own_vee_dir(s, host, id)
    } else {
        s.data_dir().join("vees").join(id)
    };
    dir.join("console.log")
}

/// Moves a writing guest around h1 → h2 → h3 → h1...: h1 and h2 share its directory, h3 keeps
/// its own. Each move is timed, and the disk holds every write at the end. Prints the figures
/// BENCHMARKS.md gives: with the disks copied and with shared storage, same guest, same run.
#[tokio::test]
async fn live_migration_copies_the_disks_only_where_storage_is_not_shared() {
    let own = ["h3"];
    let Some(s) = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        own_vees_dirs: own.to_vec(),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let rounds: usize = std::env::var("VEEM_TEST_MIGRATION_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let mut d = guest("rover");
    d.context
        .properties
        .insert(veem_guest::WRITE_EVERY_PROPERTY.into(), "0.05".into());
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let mut here = get(&s.a, &id).await.host.expect("placed").to_string();
    assert_eq!(here, "h1", "packed onto the first host");
    let mut written = wait_write(&console_path_on(&s, &own, &here, &id), 3).await;
    let mut figures: Vec<(bool, std::time::Duration, String)> = Vec::new();
    for _ in 0..rounds {
        for to in ["h2", "h3", "h1"] {
            let copied = own.contains(&to) || own.contains(&here.as_str());
            let started = std::time::Instant::now();
            let moved = s
                .ops
                .migrate_vee(
                    &id,
                    &MigrateRequest {
                        host: Some(to.to_owned()),
                        live: Some(true),
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{here} to {to}: {e}"));
            let took = started.elapsed();
            assert_eq!(moved.host.map(|h| h.to_string()).as_deref(), Some(to));
            let events = s.a.vee_events(&id).await.expect("events").events;
            let note = events
                .iter()
                .rev()
                .filter_map(|e| e.detail.clone())
                .find(|d| d.starts_with("migrated from"))
                .expect("a migration note");
            assert!(
                note.starts_with(&format!("migrated from {here} to {to} in ")),
                "{note}"
            );
            figures.push((copied, took, note));
            written = wait_write(&console_path_on(&s, &own, to, &id), written + 3).await;
            here = to.to_owned();
        }
        assert!(
            !own_vee_dir(&s, "h3", &id).exists(),
            "h3 keeps nothing of the VEE once it left"
        );
    }
    for (copied, took, note) in &figures {
        let how = if *copied {
            "disks copied"
        } else {
            "shared storage"
        };
        eprintln!("live migration, {how}: {note}; the migrate call took {took:?}");
    }
    // Back on h1, which shares: its disk holds every write of the whole trip.
    ctl_ok(&s.a, A::Shutdown, &[&id]).await;
    let writes = read_from_disk(&s, &id, &format!("/{}", veem_guest::WRITES_LOG_PATH)).await;
    let numbers: Vec<u64> = writes
        .lines()
        .filter_map(|l| l.strip_prefix("write ")?.trim().parse().ok())
        .collect();
    assert_eq!(numbers.len(), writes.lines().count(), "{writes}");
    let last = *numbers.last().expect("writes");
    assert_eq!(numbers, (1..=last).collect::<Vec<_>>(), "no write lost");
    assert!(last >= written, "{last} < {written}");
}

#[tokio::test]
async fn kill_9_of_the_server_leaves_guests_running_and_readopted() {
    let Some(mut s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let running = init_one(&s.a, guest("runner")).await;
    let paused = init_one(&s.a, guest("napper")).await;
    ctl_ok(&s.a, A::Activate, &[&running, &paused]).await;
    ctl_ok(&s.a, A::Pause, &[&paused]).await;
    let pids = (
        qemu_pid(&s, &running).expect("running"),
        qemu_pid(&s, &paused).expect("running"),
    );
    s.kill9();
    assert_eq!(
        (qemu_pid(&s, &running), qemu_pid(&s, &paused)),
        (Some(pids.0), Some(pids.1)),
        "guests outlive the VEEM"
    );
    s.restart().await;
    assert_eq!(state_of(&s.a, &running).await, VmiState::Active);
    assert_eq!(state_of(&s.a, &paused).await, VmiState::Paused);
    ctl_ok(&s.a, A::Activate, &[&paused]).await;
    ctl_ok(&s.a, A::Pause, &[&paused]).await;
    assert_eq!(
        (qemu_pid(&s, &running), qemu_pid(&s, &paused)),
        (Some(pids.0), Some(pids.1)),
        "the same processes, re-adopted"
    );
    // A guest whose process died while the VEEM was down is reported, never silently lost.
    s.kill9();
    kill_9(pids.0);
    s.restart().await;
    let v = get(&s.a, &running).await;
    assert_eq!(
        (v.state, v.veem_state),
        (VmiState::Destroyed, veem_model::VeemState::Failed)
    );
    assert!(v.last_error.is_some_and(|e| e.contains("gone")));
    ctl_ok(&s.a, A::Destroy, &[&paused]).await;
}

#[tokio::test]
async fn a_guest_that_powers_itself_off_becomes_defined_and_boots_again() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let mut d = guest("quitter");
    // The guest's own user shuts it down a moment after it is up, at every boot.
    d.context
        .properties
        .insert(veem_guest::POWEROFF_AFTER_PROPERTY.into(), "0.5".into());
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let v = wait_until(&s, &id, "became DEFINED", |v| v.state == VmiState::Defined).await;
    assert_eq!((v.veem_state, v.host), (VeemState::Stopped, None));
    assert_eq!(v.last_error, None, "a clean power-off is no failure");
    assert!(
        console(&s, &id).contains(veem_guest::POWEROFF_MARKER),
        "the guest powered off cleanly"
    );
    assert!(qemu_pid(&s, &id).is_none(), "its process is ended");
    let hosts = s.ops.list_hosts().await.expect("hosts");
    assert!(
        hosts.hosts.iter().all(|h| h.used.cpus == 0),
        "the host is freed"
    );
    let events = s.a.vee_events(&id).await.expect("events").events;
    assert!(
        events
            .iter()
            .any(|e| e.detail.as_deref() == Some("the guest powered itself off")),
        "{events:?}"
    );
    // ACTIVATE boots it again from its own disk (and it powers itself off again).
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_until(&s, &id, "became DEFINED again", |v| {
        v.state == VmiState::Defined
    })
    .await;
    let log = read_from_disk(&s, &id, "/veem/boot.log").await;
    assert_eq!(log.lines().count(), 2, "two boots of its own disk: {log:?}");
}

#[tokio::test]
async fn a_dead_guest_boots_again_from_its_disks_as_often_as_its_policy_allows() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let mut d = guest("phoenix");
    d.restart_attempts = 1;
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let first = qemu_pid(&s, &id).expect("running");
    kill_9(first);
    let v = wait_until(&s, &id, "was restarted", |v| {
        v.restarts == 1 && v.state == VmiState::Active
    })
    .await;
    assert!(
        v.last_error
            .as_deref()
            .is_some_and(|e| e.contains("its process is gone") && e.contains("restart 1 of 1")),
        "{v:?}"
    );
    let second = qemu_pid(&s, &id).expect("running again");
    assert_ne!(second, first);
    // Its own disk, booted again: the guest counts this boot as its second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !console(&s, &id).contains(&format!("{} boot=2", veem_guest::BOOT_MARKER)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot: {}",
            console(&s, &id)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The restart budget is spent: the next death is a failure, with the disks kept.
    kill_9(second);
    let v = wait_until(&s, &id, "FAILED", |v| v.state == VmiState::Destroyed).await;
    assert_eq!(v.veem_state, VeemState::Failed);
    assert!(
        v.last_error
            .as_deref()
            .is_some_and(|e| e.contains("after 1 restarts")),
        "{v:?}"
    );
    // The disks are kept.
    let log = read_from_disk(&s, &id, "/veem/boot.log").await;
    assert_eq!(
        log.lines().count(),
        2,
        "two boots of the same disk: {log:?}"
    );
}

#[tokio::test]
async fn a_descriptor_may_boot_a_kernel_directly() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let (kernel, initrd) = guest_boot_files().expect("built with the guest");
    let kernel =
        s.a.push_image("guest-kernel", &kernel, None)
            .await
            .expect("kernel uploads");
    let initrd =
        s.a.push_image("guest-initrd", &initrd, None)
            .await
            .expect("initrd uploads");
    let mut d = guest("direct");
    d.boot = Some(KernelBoot {
        kernel: DiskSource::Image(ImageName::new("guest-kernel").expect("valid")),
        initrd: Some(DiskSource::Image(
            ImageName::new("guest-initrd").expect("valid"),
        )),
        cmdline: veem_guest::KERNEL_COMMAND_LINE.to_owned(),
    });
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let args = qemu_args(qemu_pid(&s, &id).expect("running"));
    let after = |flag: &str| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .unwrap_or_default()
    };
    // The images' bytes, by digest (content-addressed).
    let digest = |view: &veem_api::ImageView| view.sha256.clone().expect("a digest");
    assert!(after("-kernel").ends_with(&digest(&kernel)), "{args:?}");
    assert!(after("-initrd").ends_with(&digest(&initrd)), "{args:?}");
    assert_eq!(after("-append"), veem_guest::KERNEL_COMMAND_LINE);
    let log = read_after_shutdown(&s, &id, "/veem/boot.log").await;
    assert_eq!(
        log.lines().count(),
        1,
        "it booted and recorded it on its disk: {log:?}"
    );

    // A kernel image that is not there fails that deployment by name; nothing is lost.
    let mut d = guest("no-kernel");
    d.boot = Some(KernelBoot {
        kernel: DiskSource::Image(ImageName::new("missing-kernel").expect("valid")),
        initrd: None,
        cmdline: String::new(),
    });
    let id = init_one(&s.a, d).await;
    let answer = ctl(&s.a, A::Activate, &[&id]).await;
    let v = wait_until(&s, &id, "was refused", |v| v.state == VmiState::Defined).await;
    assert!(
        v.last_error
            .as_deref()
            .is_some_and(|e| e.contains("missing-kernel") && e.contains("boot kernel")),
        "{answer:?} {v:?}"
    );
}

/// The `MemTotal` (kB) of the guest's newest heartbeat, once there is one.
pub(crate) async fn heartbeat_mem_kb(s: &Server, id: &str) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = console(s, id);
        let last = text
            .lines()
            .rev()
            .find(|l| l.starts_with(veem_guest::HEARTBEAT_MARKER));
        if let Some(kb) = last
            .and_then(|l| l.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
        {
            return kb;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat from {id}: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pause_really_stops_the_guests_cpus() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let id = init_one(&s.a, guest("ticker")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    heartbeat_mem_kb(&s, &id).await;
    ctl_ok(&s.a, A::Pause, &[&id]).await;
    let paused_at = console(&s, &id).len();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        console(&s, &id).len(),
        paused_at,
        "no heartbeat while PAUSED"
    );
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while console(&s, &id).len() == paused_at {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never ran again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_live_memory_raise_is_seen_by_the_guest_in_the_same_process() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let mut d = guest("grower");
    d.memory_mb = 256;
    d.memory_max_mb = Some(1024);
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let pid = qemu_pid(&s, &id).expect("running");
    // The guest boots with its 1024 MB ceiling; the balloon takes it down to 256 MB (MemTotal a
    // little less). Wait until the guest sees that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let kb = heartbeat_mem_kb(&s, &id).await;
        if kb < 300 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest still sees {kb} kB, not about 256 MB"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let patched =
        s.a.patch_vee(
            &id,
            &veem_api::PatchRequest {
                memory_mb: Some(768),
                cpu: None,
            },
        )
        .await
        .expect("raised live");
    assert_eq!(patched.applied, veem_api::PatchApplied::Live);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let kb = heartbeat_mem_kb(&s, &id).await;
        if kb > 600 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest still sees {kb} kB after the raise"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        qemu_pid(&s, &id),
        Some(pid),
        "the same QEMU process: no restart"
    );
}

#[tokio::test]
async fn the_guests_own_agent_reaches_the_sm_as_agent_events() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let listener = Listener::start().await;
    s.a.subscribe(&listener.url, &[veem_model::EventType::Agent])
        .await
        .expect("subscribed");
    let id = init_one(&s.a, guest("reporter")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let fqn = format!("{id}.agent.uptime_s");
    let items = listener
        .wait_for(
            "two AGENT events",
            std::time::Duration::from_secs(60),
            |items| {
                items
                    .iter()
                    .filter(|(_, e)| {
                        e["measurements"]
                            .as_array()
                            .is_some_and(|ms| ms.iter().any(|m| m["fqn"] == fqn.as_str()))
                    })
                    .count()
                    >= 2
            },
        )
        .await;
    let uptimes: Vec<f64> = items
        .iter()
        .filter(|(_, e)| e["vee"] == id.as_str() && e["type"] == "AGENT")
        .filter_map(|(_, e)| {
            e["measurements"]
                .as_array()?
                .iter()
                .find(|m| m["fqn"] == fqn.as_str())?["value"]
                .as_f64()
        })
        .collect();
    assert!(
        uptimes.windows(2).all(|w| w[1] > w[0]),
        "the guest's uptime, rising: {uptimes:?}"
    );
}
