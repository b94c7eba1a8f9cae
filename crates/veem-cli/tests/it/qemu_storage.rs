//! A site whose hosts keep their VEEs' directories on storage of their own (`vees_dir`), no
//! NFS for `data_dir/vees`: a stopped guest boots again where its disks are, with its writes;
//! a disk download reads them from the host that holds them; a live migration moves them
//! with the guest, and the guest boots again on its new host afterwards.

use std::time::{Duration, Instant};

use veem_api::MigrateRequest;
use veem_model::ControlAction as A;

use crate::harness::*;
use crate::qemu_guests::{guest, read_from_disk};

/// Waits until the console of the guest on `host` (in that host's own directory of it, kept
/// across boots) says it is ready for the `boots`-th time.
async fn wait_ready_on(s: &Server, host: &str, id: &str, boots: usize) {
    let console = own_vee_dir(s, host, id).join("console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.matches(veem_guest::READY_MARKER).count() >= boots {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not boot {boots} time(s) on {host}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Activates the VEE and waits until its guest booted for the `boots`-th time; answers its host.
async fn boot(s: &Server, id: &str, boots: usize) -> String {
    ctl_ok(&s.a, A::Activate, &[id]).await;
    let host = get(&s.a, id).await.host.expect("placed").to_string();
    wait_ready_on(s, &host, id, boots).await;
    host
}

/// Shuts the guest down and reads its boot log from a download of its disk.
async fn boots_on_disk(s: &Server, id: &str) -> usize {
    ctl_ok(&s.a, A::Shutdown, &[id]).await;
    let log = read_from_disk(s, id, &format!("/{}", veem_guest::BOOT_LOG_PATH)).await;
    veem_guest::boot_count(&log)
}

#[tokio::test]
async fn a_guest_of_hosts_with_their_own_storage_boots_again_where_its_disks_are_with_its_writes() {
    let Some(s) = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 8, 16384, ""), ("h2", 8, 16384, "")],
        own_vees_dirs: vec!["h1", "h2"],
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let id = init_one(&s.a, guest("homebody")).await;
    let first = boot(&s, &id, 1).await;
    let other = if first == "h1" { "h2" } else { "h1" };
    // Downloaded from its holder: the boot it wrote on its disk, nothing on shared storage.
    assert_eq!(boots_on_disk(&s, &id).await, 1);
    assert!(
        !s.data_dir().join("vees").join(&id).join("disks").exists(),
        "its disks are {first}'s own"
    );

    // DEFINED, then ACTIVE again: on the host holding its disks, whose first boot it keeps.
    assert_eq!(boot(&s, &id, 2).await, first, "back where its disks are");
    assert!(
        !own_vee_dir(&s, other, &id).exists(),
        "{other} never saw the VEE"
    );
    assert_eq!(boots_on_disk(&s, &id).await, 2, "booted from its own disk");

    // Suspended: its memory is saved on its holder's storage, and restored there.
    assert_eq!(boot(&s, &id, 3).await, first);
    ctl_ok(&s.a, A::Suspend, &[&id]).await;
    assert!(
        veem_layout::memory_file(&own_vee_dir(&s, &first, &id)).exists(),
        "its memory is {first}'s own"
    );
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let restored = get(&s.a, &id).await;
    assert_eq!(
        restored.host.map(|h| h.to_string()).as_deref(),
        Some(first.as_str())
    );

    // Moved live to the other host: its disks go along, and it boots there afterwards.
    let moved = s
        .ops
        .migrate_vee(
            &id,
            &MigrateRequest {
                host: Some(other.to_owned()),
                live: Some(true),
            },
        )
        .await
        .expect("migrated with its disks");
    assert_eq!(moved.host.map(|h| h.to_string()).as_deref(), Some(other));
    assert!(
        !own_vee_dir(&s, &first, &id).exists(),
        "{first} keeps nothing of the VEE"
    );
    ctl_ok(&s.a, A::Shutdown, &[&id]).await;
    // The console on the new host starts with the migrated guest: it has seen no boot yet.
    assert_eq!(boot(&s, &id, 1).await, other, "its new holder");
    assert_eq!(
        boots_on_disk(&s, &id).await,
        4,
        "every boot, before and after the move, on the disk it boots from"
    );
}

/// The download of a disk held by a remote agent (`veem agent --vees-dir`, sim driver: the
/// bytes are the test's own) comes over the agent's WebSocket, in chunks, whole.
#[tokio::test]
async fn a_disk_held_by_a_remote_agent_downloads_over_its_link_whole() {
    let s = Server::start_with_guest(Setup {
        hosts: vec![],
        ..Setup::default()
    })
    .await
    .expect("the sim driver needs no guest image");
    let own = s.dir.path().join("r1-own");
    let _agent = RemoteAgent::start_with(&s, "r1", 8, 16384, Some(own.clone()));
    wait_host(&s, "r1", veem_api::HostState::Up, Duration::from_secs(20)).await;
    let id = init_one(&s.a, guest("faraway")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    ctl_ok(&s.a, A::Shutdown, &[&id]).await;
    // What the VEE wrote, on r1's own storage only: several chunks' worth.
    let written: Vec<u8> = (0..2 * veem_api::agent::EXPORT_CHUNK_BYTES + 4321)
        .map(|i| (i % 253) as u8)
        .collect();
    let disk = veem_layout::disk_path(&own.join(&id), "vda");
    std::fs::create_dir_all(disk.parent().expect("a directory")).expect("mkdir");
    std::fs::write(&disk, &written).expect("write");
    assert!(!s.data_dir().join("vees").join(&id).exists());

    let out = s.dir.path().join("faraway-vda.qcow2");
    s.a.download_disk(&id, "vda", &out)
        .await
        .expect("the disk downloads from its holder");
    assert!(std::fs::read(&out).expect("the download") == written);
}

/// A resting VEE whose disks a host of west keeps on its own storage moves at rest to east
/// (sim hosts): its disk is read from that host, lands at east whole, and nothing of it stays
/// on the host's storage.
#[tokio::test]
async fn a_resting_vee_held_by_a_host_moves_to_another_site_and_leaves_nothing_there() {
    let west = Server::start_with_guest(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        own_vees_dirs: vec!["h1"],
        ..crate::federation::site_setup("west")
    })
    .await
    .expect("the sim driver needs no guest image");
    let east = Server::start_with(crate::federation::site_setup("east")).await;
    crate::federation::register(&west, &east, "east").await;
    let id = init_one(&west.a, guest("rester")).await;
    ctl_ok(&west.a, A::Activate, &[&id]).await;
    ctl_ok(&west.a, A::Shutdown, &[&id]).await;
    let held = veem_layout::disk_path(&own_vee_dir(&west, "h1", &id), "vda");
    let written = b"what the VEE wrote at west".to_vec();
    std::fs::write(&held, &written).expect("the VEE's disk on h1's own storage");

    let moved = west
        .ops
        .migrate_vee_to_site(
            &id,
            &veem_api::SiteMigrateRequest {
                site: "east".to_owned(),
                live: Some(false),
            },
        )
        .await
        .expect("moved at rest");
    assert_eq!(moved.site.as_str(), "east");
    let there = crate::federation::named(&east, "rester")
        .await
        .expect("east keeps it");
    let at_east = veem_layout::disk_path(&east.data_dir().join("vees").join(&there.id), "vda");
    assert_eq!(std::fs::read(&at_east).expect("its disk at east"), written);
    assert!(
        !own_vee_dir(&west, "h1", &id).exists(),
        "h1 keeps nothing of the VEE that left"
    );
}
