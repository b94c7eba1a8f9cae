//! Several front-ends on one PostgreSQL database, as processes: a remote agent given all of
//! them (`veem agent --server URL1,URL2`) is sent on to the leader, and after the leader is
//! killed it finds the new one, which adopts what the agent runs without starting it again.
//! PostgreSQL is a throwaway server of `scripts/pg` per test process; without it the tests skip
//! loudly, unless `CI` is set: then they fail.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use veem_model::{ControlAction as A, VmiState};

use crate::front_ends::{fresh_database, FrontEnd};
use crate::harness::*;

/// The boot identities a sim driver's journal in `state_dir` recorded for `vee`, one per
/// line that puts it: a fresh deploy draws a new one, so more than one means it started twice.
fn boot_ids(state_dir: &Path, vee: &str) -> Vec<u64> {
    let journal = std::fs::read_to_string(state_dir.join("instances.journal")).unwrap_or_default();
    journal
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["put"]["vee"] == vee)
        .filter_map(|line| line["put"]["boot_id"].as_u64())
        .collect()
}

/// Two front-ends on one database and one agent that lists the follower first: it is sent on
/// to the leader, its VEE runs; the leader is killed, the other leads within 10 s, the agent
/// reaches it, and the VEE is still ACTIVE there, never deployed a second time.
#[tokio::test]
async fn agents_follow_the_leader_across_a_failover() {
    let Some(database) = fresh_database() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut fe1 = FrontEnd::start(dir.path(), "fe1", &database);
    fe1.wait_leader("fe1", Duration::from_secs(30)).await;
    let fe2 = FrontEnd::start(dir.path(), "fe2", &database);
    fe2.wait_leader("fe1", Duration::from_secs(30)).await;

    // The follower first: it must send the agent on to the leader.
    let agent = RemoteAgent::start_in(
        dir.path(),
        &format!("{},{}", fe2.url, fe1.url),
        "h1",
        8,
        16384,
        None,
    );
    fe2.wait_host_up("h1", Duration::from_secs(20)).await;
    fe1.wait_host_up("h1", Duration::from_secs(5)).await;
    assert!(
        agent
            .log()
            .contains("sent on to another server of its list"),
        "the follower did not redirect the agent: {}",
        agent.log()
    );

    // A VEE made and started through the follower, which forwards to the leader.
    let vee = init_one(&fe2.a, small("web")).await;
    ctl_ok(&fe2.a, A::Activate, &[&vee]).await;
    let view = wait_state(&fe2.a, &vee, VmiState::Active).await;
    assert_eq!(view.host.as_ref().map(|h| h.as_str()), Some("h1"));
    let booted = boot_ids(&agent.state_dir, &vee);
    assert_eq!(booted.len(), 1, "deployed once: {booted:?}");

    fe1.kill9();
    let killed = Instant::now();
    fe2.wait_leader("fe2", Duration::from_secs(10)).await;
    let led_after = killed.elapsed();
    fe2.wait_host_up("h1", Duration::from_secs(10)).await;
    let host_after = killed.elapsed();
    eprintln!("fe2 led {led_after:?} after fe1 was killed; h1 up there after {host_after:?}");
    assert!(
        agent.log().contains(&format!(
            "agent connected server={}",
            fe2.url.replace("http", "ws")
        )),
        "the agent never connected to fe2: {}",
        agent.log()
    );

    // Give the new leader a few health checks to reconcile what h1 runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = wait_state(&fe2.a, &vee, VmiState::Active).await;
    assert_eq!(view.host.as_ref().map(|h| h.as_str()), Some("h1"));
    assert!(agent.instances().contains(&vee), "{:?}", agent.journal());
    let after = boot_ids(&agent.state_dir, &vee);
    assert!(
        after.iter().all(|id| *id == booted[0]),
        "{vee} was started again after the failover: boot ids {after:?}"
    );
    // The new leader takes new work on the host.
    let second = init_one(&fe2.a, small("second")).await;
    ctl_ok(&fe2.a, A::Activate, &[&second]).await;
    wait_state(&fe2.a, &second, VmiState::Active).await;
    assert!(agent.instances().contains(&second));

    // The old leader, back, follows; the agent stays with the leader.
    fe1.start_again();
    fe1.wait_following("fe2", Duration::from_secs(30)).await;
    fe1.wait_host_up("h1", Duration::from_secs(5)).await;
    assert_eq!(
        boot_ids(&agent.state_dir, &vee).len(),
        after.len(),
        "nothing of {vee} changed on h1"
    );
}

/// `veem store copy`: a site run on SQLite moves to PostgreSQL. Its VEEs (ids, states), its
/// networks and its images' records are there when a front-end starts on the database, and a
/// new VEE gets the id after the last one handed out (a purged one: the counter came along).
#[tokio::test]
async fn store_copy_moves_a_sqlite_site_to_postgresql() {
    let Some(database) = fresh_database() else {
        return;
    };
    let mut s = Server::start_with_guest(Setup::default())
        .await
        .expect("sim hosts need no QEMU");
    let running = init_one(&s.a, small("running")).await;
    ctl_ok(&s.a, A::Activate, &[&running]).await;
    wait_state(&s.a, &running, VmiState::Active).await;
    let paused = init_one(&s.a, small("paused")).await;
    ctl_ok(&s.a, A::Activate, &[&paused]).await;
    ctl_ok(&s.a, A::Pause, &[&paused]).await;
    let _waiting = init_one(&s.a, small("waiting")).await;
    s.a.create_network("lan", "10.9.0.0/24", false)
        .await
        .expect("network");
    let purged = init_one(&s.a, small("purged")).await;
    s.a.purge_vee(&purged).await.expect("purged");
    let vees = |list: Vec<veem_api::VeeView>| -> Vec<(String, VmiState)> {
        list.into_iter().map(|v| (v.id, v.state)).collect()
    };
    let before = vees(s.a.list_all_vees(&Default::default()).await.expect("list"));
    assert_eq!(before.len(), 3);
    let networks = s.a.list_networks().await.expect("networks");
    let images = s.ops.list_images().await.expect("images");
    s.stop();

    let copy = |format: &str| {
        Command::new(veem_bin())
            .args(["store", "copy", "--from"])
            .arg(s.data_dir())
            .args(["--to", &database, "-o", format])
            .output()
            .expect("veem store copy runs")
    };
    let out = copy("json");
    assert!(
        out.status.success(),
        "veem store copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["vees"], 3, "{report}");
    assert_eq!(report["networks"], 1, "{report}");
    assert_eq!(report["images"], images.images.len(), "{report}");
    assert!(report["events"].as_u64().unwrap_or(0) >= 3, "{report}");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("copied 3/3 VEEs"), "{progress}");
    // A second copy into the same database is refused, and says why.
    let again = copy("table");
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("not empty"), "{said}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let fe = FrontEnd::start(dir.path(), "fe1", &database);
    fe.wait_leader("fe1", Duration::from_secs(30)).await;
    let after = vees(fe.a.list_all_vees(&Default::default()).await.expect("list"));
    assert_eq!(after, before);
    assert_eq!(fe.a.list_networks().await.expect("networks"), networks);
    assert_eq!(fe.ops.list_images().await.expect("images"), images);
    let next = init_one(&fe.a, small("next")).await;
    let seq = |id: &str| id.trim_start_matches("vee-").parse::<u64>().expect("an id");
    assert_eq!(seq(&next), seq(&purged) + 1, "{next} after {purged}");
}
