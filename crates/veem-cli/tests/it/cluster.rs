//! Several `veem serve` front-ends on one PostgreSQL database: one leads, the others forward
//! to it, and a leader killed (`kill -9`) or stopped (`SIGSTOP`) under a stream of calls is
//! replaced with nothing acknowledged lost and nothing acknowledged by a former leader.

use std::process::Command;
use std::time::{Duration, Instant};

use veem_api::{ClusterRole, ClusterView, InitializeRequest, Order, UpdateStateRequest};
use veem_client::Client;
use veem_model::{ControlAction, InitModel, VmiState};

use crate::front_ends::Site;
use crate::harness::{small, veem_bin, TOKEN_OPS};

fn roles(view: &ClusterView) -> Vec<(String, ClusterRole)> {
    view.members
        .iter()
        .map(|m| (m.name.clone(), m.role))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_front_ends_agree_on_one_leader_and_followers_forward_to_it() {
    let Some(mut site) = Site::start(3).await else {
        return;
    };
    let leader = site.wait_for_leader(&[], Duration::from_secs(10)).await;
    let view = site.front_ends[0].ops.cluster().await.expect("cluster");
    assert_eq!(view.leader.as_deref(), Some(leader.as_str()));
    let expected: Vec<_> = ["fe1", "fe2", "fe3"]
        .iter()
        .map(|n| {
            let role = if *n == leader {
                ClusterRole::Leader
            } else {
                ClusterRole::Follower
            };
            (n.to_string(), role)
        })
        .collect();
    assert_eq!(roles(&view), expected);
    for member in &view.members {
        let front_end = site.by_name(&member.name);
        assert_eq!(member.url, front_end.url);
    }
    // The CLI shows the same, in JSON and as a table with the leader first.
    let cli = |format: &str| {
        let out = Command::new(veem_bin())
            .args(["cluster", "-o", format])
            .env("VEEM_URL", &site.front_ends[2].url)
            .env("VEEM_TOKEN", TOKEN_OPS)
            .output()
            .expect("the CLI runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let shown: ClusterView = serde_json::from_str(&cli("json")).expect("JSON");
    assert_eq!(shown.leader, view.leader);
    let table = cli("table");
    let first_row = table.lines().nth(1).expect("a row");
    assert!(
        first_row.starts_with(&leader) && first_row.contains("leader"),
        "{table}"
    );

    // A VEE made through a follower is the leader's, seen the same through every front-end.
    let follower = view
        .members
        .iter()
        .find(|m| m.role == ClusterRole::Follower)
        .expect("a follower")
        .name
        .clone();
    let made = site
        .by_name(&follower)
        .a
        .initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 2,
            descriptor: small("web"),
        })
        .await
        .expect("InitializeVEEs through a follower");
    let ids: Vec<String> = made.vees.iter().map(|v| v.id.clone()).collect();
    for front_end in &site.front_ends {
        for (i, id) in ids.iter().enumerate() {
            let vee = front_end.a.get_vee(id).await.expect("the VEE, through any");
            // The replicas of a batch are named by their place in it (Table 2.2).
            assert_eq!(vee.name, format!("web-{}", i + 1));
        }
    }
    // The leader's errors come back whole through a follower.
    let missing = site
        .by_name(&follower)
        .a
        .get_vee("vee-99999999")
        .await
        .expect_err("no such VEE");
    assert_eq!(
        (missing.status(), missing.code()),
        (Some(404), Some("not_found"))
    );
    // `GET /cluster` is for admins, at every front-end.
    let denied = site
        .by_name(&follower)
        .a
        .cluster()
        .await
        .expect_err("an SM");
    assert_eq!(denied.status(), Some(403));

    // A leader stopped cleanly gives its lease up: another leads well before it would expire.
    let stopped = Instant::now();
    site.by_name(&leader).terminate();
    let next = site
        .wait_for_leader(&[&leader], Duration::from_secs(10))
        .await;
    eprintln!(
        "a clean stop handed over to {next} in {:?}",
        stopped.elapsed()
    );
    let view = site.by_name(&next).ops.cluster().await.expect("cluster");
    assert!(
        view.members.iter().all(|m| m.name != leader),
        "a front-end stopped cleanly leaves the list: {view:?}"
    );
    for id in &ids {
        site.by_name(&next).a.get_vee(id).await.expect("kept");
    }
}

/// What a stream of calls got acknowledged: VEEs made, and those destroyed.
#[derive(Default)]
struct Acknowledged {
    made: Vec<String>,
    destroyed: Vec<String>,
}

/// Calls InitializeVEEs and, for every other VEE, DESTROY, through each front-end in turn,
/// until `until`; notes what was acknowledged. Failures (no leader for a moment) are expected.
async fn stream_of_calls(clients: Vec<Client>, until: Instant) -> (Acknowledged, usize) {
    let mut acked = Acknowledged::default();
    let mut refused = 0;
    let mut turn = 0usize;
    while Instant::now() < until {
        turn += 1;
        let client = &clients[turn % clients.len()];
        let made = client
            .initialize(&InitializeRequest {
                model: InitModel::Besteffort,
                count: 1,
                descriptor: small("stream"),
            })
            .await;
        let Ok(made) = made else {
            refused += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let id = made.vees[0].id.clone();
        acked.made.push(id.clone());
        if turn.is_multiple_of(2) {
            let destroyed = client
                .update_state(&UpdateStateRequest {
                    order: Order::List,
                    ids: vec![id.clone()],
                    action: ControlAction::Destroy,
                    timeout_ms: Some(5_000),
                })
                .await;
            match destroyed {
                Ok(answer) if answer.failed.is_empty() => acked.destroyed.push(id),
                _ => refused += 1,
            }
        }
    }
    (acked, refused)
}

async fn check_kept(client: &Client, acked: &Acknowledged) {
    for id in &acked.made {
        let vee = client
            .get_vee(id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} is lost: {e}"));
        if acked.destroyed.contains(id) {
            assert_eq!(
                vee.state,
                VmiState::Destroyed,
                "{id}: its DESTROY was acknowledged"
            );
        }
    }
    // Ids are never handed out twice, across leaders.
    let mut ids = acked.made.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), acked.made.len(), "an id was handed out twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_under_a_stream_of_calls_is_replaced_and_nothing_acknowledged_is_lost() {
    let Some(mut site) = Site::start(3).await else {
        return;
    };
    let leader = site.wait_for_leader(&[], Duration::from_secs(10)).await;
    let clients: Vec<Client> = site
        .front_ends
        .iter()
        .filter(|f| f.name != leader)
        .map(|f| f.a.clone())
        .collect();
    let streaming = tokio::spawn(stream_of_calls(
        clients,
        Instant::now() + Duration::from_secs(8),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    site.by_name(&leader).kill9();
    let next = site
        .wait_for_leader(&[&leader], Duration::from_secs(10))
        .await;
    eprintln!(
        "{next} leads {:?} after {leader} was killed",
        killed.elapsed()
    );
    let (acked, refused) = streaming.await.expect("the stream");
    eprintln!(
        "{} VEEs acknowledged, {} destroyed, {refused} calls refused or lost around the failover",
        acked.made.len(),
        acked.destroyed.len()
    );
    assert!(acked.made.len() > 10, "the stream made progress");
    check_kept(&site.by_name(&next).a, &acked).await;

    // The old leader comes back and follows.
    site.by_name(&leader).spawn();
    site.by_name(&leader)
        .wait_following(&next, Duration::from_secs(20))
        .await;
    check_kept(&site.by_name(&leader).a, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_acknowledges_nothing_and_follows_when_it_resumes() {
    let Some(mut site) = Site::start(2).await else {
        return;
    };
    let leader = site.wait_for_leader(&[], Duration::from_secs(10)).await;
    let old_pid = site.by_name(&leader).pid();
    let before = site
        .by_name(&leader)
        .a
        .initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 1,
            descriptor: small("before"),
        })
        .await
        .expect("made by the leader")
        .vees[0]
        .id
        .clone();

    site.by_name(&leader).signal("STOP");
    // A call sent to the stopped leader waits in its socket's queue.
    let stuck = {
        let client = site.by_name(&leader).a.clone();
        tokio::spawn(async move {
            client
                .initialize(&InitializeRequest {
                    model: InitModel::Besteffort,
                    count: 1,
                    descriptor: small("during-stop"),
                })
                .await
        })
    };
    let next = site
        .wait_for_leader(&[&leader], Duration::from_secs(10))
        .await;
    let after = site
        .by_name(&next)
        .a
        .initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 1,
            descriptor: small("after"),
        })
        .await
        .expect("made by the new leader")
        .vees[0]
        .id
        .clone();

    site.by_name(&leader).signal("CONT");
    // Whatever the resumed process does first, the call it held is not acknowledged: its lease
    // is gone, its commit is fenced, and it starts again as a follower.
    match stuck.await.expect("the call's task") {
        Ok(answer) => panic!(
            "a stopped leader acknowledged {:?} after losing its lease:\n{}",
            answer.vees,
            site.logs()
        ),
        Err(e) => eprintln!("the call held by the stopped leader: {e}"),
    }
    site.by_name(&leader)
        .wait_following(&next, Duration::from_secs(20))
        .await;
    assert_eq!(
        site.by_name(&leader).pid(),
        old_pid,
        "the same process, started again"
    );
    // `GET /cluster` reads the lease; the resumed process answers nothing until it has
    // started again as a follower, a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        match site
            .by_name(&leader)
            .a
            .list_all_vees(&Default::default())
            .await
        {
            Ok(listed) => break listed,
            Err(e) if e.code() == Some("not_leader") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("through the old leader, now forwarding: {e}"),
        }
    };
    let all: Vec<String> = listed
        .into_iter()
        .map(|v| format!("{}:{}", v.id, v.name))
        .collect();
    assert_eq!(all, [format!("{before}:before"), format!("{after}:after")]);
}
