//! Hosts that keep their VEEs' directories on storage of their own (`vees_dir`): the VEEM
//! records which host holds a VEE's directory, brings a stopped VEE back to that host only,
//! never lets another host take a stale directory for a VEE's disks, moves the holder with a
//! live migration, and boots a VEE whose holder was lost from its sources.

use std::time::Duration;

use veem_model::{ControlAction, HostId, VeeId, VeemState, VmiState};
use veem_placement::Policy;

use crate::support::*;

fn other_than(host: &HostId) -> HostId {
    if host == &host_id("h1") {
        host_id("h2")
    } else {
        host_id("h1")
    }
}

/// Activates a VEE and waits until it runs; answers its host.
async fn run(site: &Site, id: &VeeId) -> HostId {
    site.act_ok(ControlAction::Activate, std::slice::from_ref(id))
        .await;
    let running = site.wait_state(id, VmiState::Active).await;
    running.host.expect("a running VEE has a host")
}

#[tokio::test]
async fn a_stopped_vee_of_a_host_with_its_own_storage_boots_and_is_restored_on_that_host_only() {
    let site = Site::open(vec![
        host("h1", 4, 8192).own_storage(),
        host("h2", 4, 8192).own_storage(),
    ])
    .await;
    let id = site.define_one(small("keeper")).await;
    let holder = run(&site, &id).await;
    assert_eq!(site.get(&id).holder, Some(holder.clone()));
    let other = other_than(&holder);

    site.act_ok(ControlAction::Shutdown, std::slice::from_ref(&id))
        .await;
    let defined = site.get(&id);
    assert_eq!(defined.state, VmiState::Defined);
    assert_eq!(defined.host, None);
    assert_eq!(defined.holder, Some(holder.clone()), "kept while it rests");

    // Its holder takes nothing now: it waits for it, though the other host has room.
    site.veem
        .set_host_disabled(&holder, true)
        .await
        .expect("the host is known");
    let outcome = site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    site.veem.place_pending().await;
    let waiting = site.get(&id);
    assert_eq!(waiting.veem_state, VeemState::Pending);
    let reason = waiting.pending_reason.expect("it says why it waits");
    assert!(
        reason.contains(&format!("its disks are on host {holder}'s own storage")),
        "{reason}"
    );
    assert!(site.vees_on(other.as_str()).is_empty(), "never on {other}");
    site.veem
        .set_host_disabled(&holder, false)
        .await
        .expect("the host is known");
    let active = site.wait_state(&id, VmiState::Active).await;
    assert_eq!(active.host, Some(holder.clone()));

    // Suspended: restored where its memory is, and only there.
    site.act_ok(ControlAction::Suspend, std::slice::from_ref(&id))
        .await;
    assert_eq!(site.get(&id).holder, Some(holder.clone()));
    site.veem
        .set_host_disabled(&holder, true)
        .await
        .expect("the host is known");
    let refused = site
        .act(&sm_a(), ControlAction::Activate, std::slice::from_ref(&id))
        .await;
    let why = only_failure(&refused).to_string();
    assert!(
        why.contains(&format!("host {holder}'s own storage")),
        "{why}"
    );
    assert_eq!(site.get(&id).state, VmiState::Suspended, "nothing changed");
    site.veem
        .set_host_disabled(&holder, false)
        .await
        .expect("the host is known");
    assert_eq!(run(&site, &id).await, holder);
}

#[tokio::test]
async fn a_vee_deployed_on_a_host_that_does_not_hold_it_never_takes_a_stale_directory_there() {
    let site = Site::open(vec![
        host("h1", 4, 8192).own_storage(),
        host("h2", 4, 8192).own_storage(),
    ])
    .await;
    let id = site.define_one(small("fresh")).await;
    // Disks left on both hosts' own storage from an earlier stay of the VEE.
    let stale = |host: &str| site.own_dir(host).join(id.as_str()).join("stale-disk");
    for host in ["h1", "h2"] {
        std::fs::create_dir_all(stale(host).parent().expect("a directory")).expect("mkdir");
        std::fs::write(stale(host), b"old").expect("write");
    }
    let first = run(&site, &id).await;
    assert!(
        !stale(first.as_str()).exists(),
        "the stale directory on {first} was removed before the deployment"
    );

    // A live migration makes the destination the holder, and never takes its stale disks.
    let to = other_than(&first);
    let moved = site
        .veem
        .migrate(&ops(), &id, Some(&to), true)
        .await
        .expect("the VEE migrates");
    assert_eq!(
        (moved.host.as_ref(), moved.holder.as_ref()),
        (Some(&to), Some(&to))
    );
    assert!(!stale(to.as_str()).exists(), "stale disks on {to} removed");

    // Back from DEFINED on the new holder, even with the other host emptier.
    site.act_ok(ControlAction::Shutdown, std::slice::from_ref(&id))
        .await;
    assert_eq!(run(&site, &id).await, to);
}

#[tokio::test]
async fn the_vees_of_a_lost_host_with_its_own_storage_boot_from_their_sources_elsewhere() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut site = Site::open_losing_hosts_after(
        dir,
        Policy::Pack,
        vec![host("h1", 4, 8192).own_storage()],
        Duration::from_millis(500),
    )
    .await;
    let mut runner = small("runner");
    runner.restart_attempts = 1;
    let running = site.define_one(runner).await;
    let resting = site.define_one(small("resting")).await;
    assert_eq!(run(&site, &running).await, host_id("h1"));
    assert_eq!(run(&site, &resting).await, host_id("h1"));
    site.act_ok(ControlAction::Suspend, std::slice::from_ref(&resting))
        .await;
    site.connect(host("h2", 4, 8192).own_storage()).await;

    let link = site
        .veem
        .hosts()
        .get(&host_id("h1"))
        .and_then(|entry| entry.link)
        .expect("h1 is connected");
    site.veem.disconnect_host(&host_id("h1"), &link);

    // The running one restarts on h2 from its sources, per its restart policy, and says so.
    let moved = wait_until("the running VEE restarted on h2", || {
        let r = site.get(&running);
        (r.state == VmiState::Active && r.host == Some(host_id("h2"))).then_some(r)
    })
    .await;
    assert_eq!(moved.holder, Some(host_id("h2")));
    assert_eq!(moved.restarts, 1);
    assert!(
        site.events(&running).iter().any(|e| e
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("with the disks it held; it boots from its sources"))),
        "{:?}",
        site.events(&running)
    );

    // The suspended one lost its memory and disks with h1: DEFINED, held by no host, and it
    // boots on h2 from its sources.
    let forgotten = wait_until("the resting VEE forgot its lost holder", || {
        let r = site.get(&resting);
        r.holder.is_none().then_some(r)
    })
    .await;
    assert_eq!(forgotten.state, VmiState::Defined);
    assert!(!forgotten.has_saved_memory);
    assert!(
        forgotten
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("the disks and saved memory it held are lost")),
        "{:?}",
        forgotten.last_error
    );
    assert_eq!(run(&site, &resting).await, host_id("h2"));
}

#[tokio::test]
async fn a_disk_of_a_vee_held_by_a_host_is_exported_there_and_read_over_its_link() {
    let site = Site::open(vec![host("h1", 4, 8192).own_storage()]).await;
    let mut descriptor = small("exported");
    descriptor.disks.push(veem_model::DiskSpec {
        source: None,
        size_gb: Some(1),
        target: Some("vda".to_owned()),
        clone: true,
        kind: veem_model::DiskKind::Disk,
    });
    let id = site.define_one(descriptor).await;
    assert_eq!(run(&site, &id).await, host_id("h1"));
    site.act_ok(ControlAction::Shutdown, std::slice::from_ref(&id))
        .await;
    // What the VEE wrote, on h1's own storage only; bigger than one chunk of the link.
    let written: Vec<u8> = (0..3 * veem_api::agent::EXPORT_CHUNK_BYTES + 17)
        .map(|i| (i % 251) as u8)
        .collect();
    let disk = veem_layout::disk_path(&site.own_dir("h1").join(id.as_str()), "vda");
    std::fs::create_dir_all(disk.parent().expect("a directory")).expect("mkdir");
    std::fs::write(&disk, &written).expect("write");
    assert!(
        !site.veem.vee_dir(&id).exists(),
        "nothing on shared storage"
    );

    let out = site
        .veem
        .export_disk(&sm_a(), &id, "vda")
        .await
        .expect("the holder exports the disk");
    assert_eq!(std::fs::read(&out).expect("the export"), written);
    let left = site.own_dir("h1").join(id.as_str()).join("exports");
    assert_eq!(
        std::fs::read_dir(&left)
            .expect("the host's exports")
            .count(),
        0,
        "the host removed its copy once read"
    );

    // A disk put on shared storage would be ignored: refused, clearly.
    let refused = site
        .veem
        .disk_to_import(&sm_a(), &id, "vda")
        .expect_err("refused");
    assert!(refused.to_string().contains("own storage"), "{refused}");
}
