//! Operator endpoints, migration, listing, and a host agent running as its own process.

use std::time::Duration;

use veem_api::{HostState, MigrateRequest};
use veem_client::ListQuery;
use veem_model::{ControlAction as A, DiskSpec, InitModel, VmiState};

use crate::harness::*;

#[tokio::test]
async fn hosts_show_capacity_use_and_vees_and_a_disabled_host_takes_no_new_vees() {
    let s = Server::start().await;
    let hosts = s.ops.list_hosts().await.expect("hosts");
    assert_eq!(hosts.hosts.len(), 3);
    for h in &hosts.hosts {
        assert_eq!(
            (
                h.state,
                h.capacity.cpus,
                h.capacity.memory_mb,
                h.driver.as_str()
            ),
            (HostState::Up, 8, 16384, "sim")
        );
    }
    s.ops.set_host_enabled("h1", false).await.expect("disable");
    s.ops.set_host_enabled("h2", false).await.expect("disable");
    let ids = init(&s.a, InitModel::Besteffort, 2, small("x")).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    for id in &ids {
        assert_eq!(
            get(&s.a, id).await.host.map(|h| h.to_string()).as_deref(),
            Some("h3")
        );
    }
    s.ops.set_host_enabled("h3", false).await.expect("disable");
    let waiting = init_one(&s.a, small("waits")).await;
    s.a.submit(std::slice::from_ref(&waiting))
        .await
        .expect("submit");
    let reason = get(&s.a, &waiting).await.pending_reason.expect("says why");
    assert!(reason.contains("disabled"), "{reason}");
    let hosts = s.ops.list_hosts().await.expect("hosts");
    let h3 = hosts
        .hosts
        .iter()
        .find(|h| h.id.as_str() == "h3")
        .expect("h3");
    assert_eq!(
        (h3.state, h3.used.cpus, h3.vees.len()),
        (HostState::Disabled, 2, 2)
    );
    s.ops.set_host_enabled("h1", true).await.expect("enable");
    let v = wait_state(&s.a, &waiting, VmiState::Active).await;
    assert_eq!(v.host.map(|h| h.to_string()).as_deref(), Some("h1"));
    assert_eq!(
        s.a.set_host_enabled("h1", false)
            .await
            .expect_err("admin only")
            .status(),
        Some(403)
    );
}

#[tokio::test]
async fn an_admin_migrates_a_running_vee_live_within_the_rules() {
    let migrate = "latency_ms = { migrate = 40 }";
    let s = Server::start_with(Setup {
        hosts: vec![
            ("h1", 8, 16384, migrate),
            ("h2", 8, 16384, migrate),
            ("h3", 8, 16384, migrate),
        ],
        ..Setup::default()
    })
    .await;
    let mut d = small("db");
    d.tags = vec!["database".into()];
    d.anti_affinity = vec!["database".into()];
    let ids = init(&s.a, InitModel::Besteffort, 2, d).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    let first = get(&s.a, &ids[0]).await;
    let second = get(&s.a, &ids[1]).await;
    let err =
        s.a.migrate_vee(&ids[0], &MigrateRequest::default())
            .await
            .expect_err("admins only");
    assert_eq!(err.status(), Some(403));
    // Onto its replica's host: anti-affinity forbids it, nothing changes.
    let to = second.host.clone().expect("placed").to_string();
    let err = s
        .ops
        .migrate_vee(
            &ids[0],
            &MigrateRequest {
                host: Some(to),
                live: Some(true),
            },
        )
        .await
        .expect_err("anti-affinity");
    assert_eq!(err.code(), Some("insufficient_resources"));
    assert_eq!(get(&s.a, &ids[0]).await.host, first.host);
    // Chosen by placement: a third host, and the VEE stays ACTIVE throughout.
    let moved = s
        .ops
        .migrate_vee(&ids[0], &MigrateRequest::default())
        .await
        .expect("migrated");
    assert_eq!(moved.state, VmiState::Active);
    assert_ne!(moved.host, first.host);
    assert_ne!(moved.host, second.host);
    let hosts = s.ops.list_hosts().await.expect("hosts");
    let old = hosts
        .hosts
        .iter()
        .find(|h| Some(&h.id) == first.host.as_ref())
        .expect("listed");
    assert!(!old.vees.contains(&ids[0]), "the old host is freed");
    // The VEE's history says where it went and what the move cost, as the source measured it
    // (the sim's transfer is its configured latency, with no downtime).
    let events = s.a.vee_events(&ids[0]).await.expect("events");
    let notes: Vec<&str> = events
        .events
        .iter()
        .filter_map(|e| e.detail.as_deref())
        .collect();
    let expected = format!(
        "migrated from {} to {} in 40 ms (downtime 0 ms)",
        first.host.as_ref().expect("placed"),
        moved.host.as_ref().expect("placed")
    );
    assert!(notes.contains(&expected.as_str()), "{notes:?}");
    ctl_ok(&s.a, A::Pause, &[&ids[0]]).await;
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let s = Server::start().await;
    let mut tagged = small("t");
    tagged.tags = vec!["database".into()];
    let dbs = init(&s.a, InitModel::Besteffort, 3, tagged).await;
    let others = init(&s.a, InitModel::Besteffort, 4, small("o")).await;
    ctl_ok(&s.a, A::Activate, &[&dbs[0], &others[0]]).await;
    let page =
        s.a.list_vees(&ListQuery {
            limit: Some(3),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.vees.len(), 3);
    let next = page.next.clone().expect("more to come");
    let rest =
        s.a.list_vees(&ListQuery {
            after: Some(next),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(rest.vees.len(), 4);
    assert_eq!(rest.next, None);
    let mut all: Vec<String> = page
        .vees
        .iter()
        .chain(&rest.vees)
        .map(|v| v.id.clone())
        .collect();
    let sorted = {
        let mut s = all.clone();
        s.sort();
        s
    };
    assert_eq!(all, sorted, "in id order");
    all.dedup();
    assert_eq!(all.len(), 7);
    let db_list =
        s.a.list_all_vees(&ListQuery {
            tag: Some("database".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        db_list.iter().map(|v| v.id.clone()).collect::<Vec<_>>(),
        dbs
    );
    let active =
        s.a.list_all_vees(&ListQuery {
            state: Some(VmiState::Active),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(active.len(), 2);
    let (status, _, body) =
        s.a.raw_request(
            reqwest::Method::GET,
            "/vmi/v1/vees?state=RUNNING",
            None,
            vec![],
        )
        .await
        .expect("answers");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("state"));
}

#[tokio::test]
async fn a_host_agent_runs_as_its_own_process_and_reconnects() {
    let s = Server::start_with(Setup {
        hosts: vec![],
        ..Setup::default()
    })
    .await;
    let limit = Duration::from_secs(20);
    let mut agent = RemoteAgent::start(&s, "h9", 4, 8192);
    let h9 = wait_host(&s, "h9", HostState::Up, limit).await;
    assert_eq!((h9.agent.as_str(), h9.capacity.cpus), ("remote", 4));
    let id = init_one(&s.a, small("remote")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert_eq!(
        get(&s.a, &id).await.host.map(|h| h.to_string()).as_deref(),
        Some("h9")
    );
    ctl_ok(&s.a, A::Pause, &[&id]).await;

    // The agent dies and comes back: its VEE is found again, still paused.
    agent.kill9();
    wait_host(&s, "h9", HostState::Down, limit).await;
    agent.spawn();
    wait_host(&s, "h9", HostState::Up, limit).await;
    assert_eq!(state_of(&s.a, &id).await, VmiState::Paused);
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    agent.kill9();
}

/// The contract's `GET /hosts?limit=N&after=<host id>` pages like the VEE list; without a
/// limit every host comes back, as the CLI expects.
#[tokio::test]
async fn hosts_page_by_id_with_limit_and_after() {
    let s = Server::start().await;
    let page = |query: &'static str| {
        let ops = &s.ops;
        async move {
            let (status, _, body) = ops
                .raw_request(
                    reqwest::Method::GET,
                    &format!("/vmi/v1/hosts{query}"),
                    None,
                    vec![],
                )
                .await
                .expect("answers");
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).expect("JSON"),
            )
        }
    };
    let ids = |list: &serde_json::Value| -> Vec<String> {
        list["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| h["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    let (status, all) = page("").await;
    assert_eq!(
        (status, ids(&all)),
        (200, vec!["h1".into(), "h2".into(), "h3".into()])
    );
    assert!(all["next"].is_null());
    let (_, first) = page("?limit=2").await;
    assert_eq!(ids(&first), ["h1", "h2"]);
    assert_eq!(first["next"], "h2");
    let (_, second) = page("?limit=2&after=h2").await;
    assert_eq!(ids(&second), ["h3"]);
    assert!(second["next"].is_null());
    for bad in ["?limit=0", "?limit=1001", "?after=..", "?colour=red"] {
        let (status, problem) = page(bad).await;
        assert_eq!(
            (status, &problem["code"]),
            (400, &serde_json::json!("malformed_request")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_stopped_veem_started_again_finds_every_vee_where_it_was() {
    let mut s = Server::start().await;
    let ids = init(&s.a, InitModel::Besteffort, 12, small("kept")).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    let before: Vec<_> =
        s.a.list_all_vees(&ListQuery::default())
            .await
            .expect("listed")
            .into_iter()
            .map(|v| (v.id, v.state, v.host))
            .collect();
    assert!(s.pid().is_some());
    // SIGTERM, as an operator stops it: it exits, the sim instances outlive it.
    s.stop();
    assert_eq!(s.pid(), None);
    assert!(
        s.ops.list_hosts().await.is_err(),
        "nothing answers while it is stopped"
    );
    s.start_again().await;
    let after: Vec<_> =
        s.a.list_all_vees(&ListQuery::default())
            .await
            .expect("listed")
            .into_iter()
            .map(|v| (v.id, v.state, v.host))
            .collect();
    assert_eq!(after, before, "same VEEs, same states, same hosts");
    assert!(after.iter().all(|(_, state, _)| *state == VmiState::Active));
}

#[tokio::test]
async fn a_vee_moves_live_to_and_from_a_remote_host_that_keeps_its_own_storage() {
    let s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        ..Setup::default()
    })
    .await;
    let own = s.dir.path().join("h4-vees");
    let _h4 = RemoteAgent::start_with(&s, "h4", 8, 16384, Some(own.clone()));
    wait_host(&s, "h4", HostState::Up, Duration::from_secs(20)).await;
    let mut d = small("nomad");
    d.disks = vec![DiskSpec {
        source: None,
        size_gb: Some(1),
        target: Some("vda".into()),
        clone: true,
        kind: veem_model::DiskKind::Disk,
    }];
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert_eq!(
        get(&s.a, &id).await.host.map(|h| h.to_string()).as_deref(),
        Some("h1")
    );
    let shared = veem_layout::disk_path(&s.data_dir().join("vees").join(&id), "vda");
    let on_h4 = veem_layout::disk_path(&own.join(&id), "vda");
    assert!(shared.exists());

    let to = |host: &str| MigrateRequest {
        host: Some(host.to_owned()),
        live: Some(true),
    };
    let moved = s.ops.migrate_vee(&id, &to("h4")).await.expect("to h4");
    assert_eq!(moved.host.map(|h| h.to_string()).as_deref(), Some("h4"));
    assert!(on_h4.exists(), "copied into h4's own directory");
    assert!(!shared.exists(), "h1 keeps nothing of it");
    let moved = s.ops.migrate_vee(&id, &to("h1")).await.expect("back to h1");
    assert_eq!(moved.state, VmiState::Active);
    assert!(shared.exists(), "copied back to the shared storage");
    assert!(!own.join(&id).exists(), "h4 keeps nothing of it");
}
