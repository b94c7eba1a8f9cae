//! The whole scene: three front-ends on one PostgreSQL, two remote sim agents and one
//! qemu agent given all three. VEEs made through a follower run; under a stream of
//! InitializeVEEs and UpdateState calls the leader is killed (`kill -9`), then its successor is
//! stopped (`SIGSTOP`). Afterwards every acknowledged VEE and state is there, none is left in
//! the middle of an action, no VEE runs twice, the hosts are back, the stopped leader follows
//! on return; and an image uploaded through the first leader, whose machine is gone, deploys
//! on the qemu host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use veem_api::{InitializeRequest, Order, UpdateStateRequest};
use veem_client::Client;
use veem_model::{ControlAction, InitModel, VmiState};

use crate::front_ends::Site;
use crate::harness::{
    guest_image, processes_mentioning, sim_instances, small, veem_bin, RemoteAgent, TOKEN_OPS,
};
use crate::images_fetch::guest_of_tiny;

/// What the stream got acknowledged, per VEE: the states it may be in now, which is the
/// state its last acknowledged call left, and the target of a call after it that failed
/// without an answer to be sure of (cut at a failover: it may or may not have been done).
#[derive(Default)]
struct Acknowledged {
    states: BTreeMap<String, Vec<VmiState>>,
    calls: usize,
    refused: usize,
}

/// Through each of `clients` in turn until `until`: InitializeVEEs of one VEE, then ACTIVATE
/// it, and DESTROY every third. Calls refused or cut around a failover are not acknowledged.
async fn stream(clients: Vec<Client>, until: Instant) -> Acknowledged {
    let mut acked = Acknowledged::default();
    let mut turn = 0usize;
    while Instant::now() < until {
        turn += 1;
        let client = &clients[turn % clients.len()];
        acked.calls += 1;
        let request = InitializeRequest {
            model: InitModel::Besteffort,
            count: 1,
            descriptor: small("stream"),
        };
        let Ok(made) = client.initialize(&request).await else {
            acked.refused += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = made.vees[0].id.clone();
        acked.states.insert(id.clone(), vec![VmiState::Defined]);
        for (action, state) in [
            (ControlAction::Activate, VmiState::Active),
            (ControlAction::Destroy, VmiState::Destroyed),
        ] {
            if action == ControlAction::Destroy && !turn.is_multiple_of(3) {
                break;
            }
            acked.calls += 1;
            let answer = client
                .update_state(&UpdateStateRequest {
                    order: Order::List,
                    ids: vec![id.clone()],
                    action,
                    timeout_ms: Some(10_000),
                })
                .await;
            match answer {
                Ok(answer) if answer.failed.is_empty() => {
                    acked.states.insert(id.clone(), vec![state]);
                }
                _ => {
                    acked.refused += 1;
                    acked.states.entry(id.clone()).or_default().push(state);
                    break;
                }
            }
        }
    }
    acked
}

/// A `veem agent --driver qemu` given every front-end, keeping its VEEs in `vees_dir`.
fn qemu_agent(dir: &Path, servers: &str, vees_dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("agent-q1.log")).expect("the agent's log");
    Command::new(veem_bin())
        .args(["agent", "--server", servers, "--agent-token", TOKEN_OPS])
        .args([
            "--name",
            "q1",
            "--driver",
            "qemu",
            "--cpus",
            "4",
            "--memory-mb",
            "4096",
        ])
        .arg("--state-dir")
        .arg(dir.join("agent-q1"))
        .arg("--vees-dir")
        .arg(vees_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the agent starts")
}

/// The qemu agent, and the guests it started (which outlive an agent by design), ended when
/// the test ends.
struct Reaped(Child, PathBuf);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in processes_mentioning(&self.1) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_front_ends_lose_nothing_when_the_leader_is_killed_then_stopped_under_load() {
    // Fails under CI when QEMU or PostgreSQL is missing.
    let Some(image) = guest_image() else { return };
    // A lease of 2 s: TCG guests share the machine's two cores with three front-ends.
    let Some(mut site) = Site::start_with(3, 2_000).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let servers = site
        .front_ends
        .iter()
        .map(|f| f.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let own = |name: &str| Some(dir.path().join(format!("own-{name}")));
    let sims = [
        // Room for every VEE of the stream: one waiting for capacity would look unsettled.
        RemoteAgent::start_in(dir.path(), &servers, "s1", 1024, 1 << 30, own("s1")),
        RemoteAgent::start_in(dir.path(), &servers, "s2", 1024, 1 << 30, own("s2")),
    ];
    let q1_vees: PathBuf = dir.path().join("own-q1");
    let _q1 = Reaped(qemu_agent(dir.path(), &servers, &q1_vees), q1_vees.clone());
    let first = site.wait_for_leader(&[], Duration::from_secs(10)).await;
    for host in ["s1", "s2", "q1"] {
        site.by_name(&first)
            .wait_host_up(host, Duration::from_secs(30))
            .await;
    }
    // The guest's image, uploaded through the first leader: its bytes reach the database.
    site.by_name(&first)
        .ops
        .push_image("tiny", &image, None)
        .await
        .expect("the guest image uploads");
    site.by_name(&first)
        .ops
        .set_host_enabled("q1", false)
        .await
        .expect("q1 takes no sim VEE");

    // VEEs made through a follower run.
    let followers: Vec<String> = site
        .front_ends
        .iter()
        .filter(|f| f.name != first)
        .map(|f| f.name.clone())
        .collect();
    let through = site.by_name(&followers[0]).a.clone();
    let made = through
        .initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 4,
            descriptor: small("steady"),
        })
        .await
        .expect("InitializeVEEs through a follower");
    let steady: Vec<String> = made.vees.iter().map(|v| v.id.clone()).collect();
    let activated = through
        .update_state(&UpdateStateRequest {
            order: Order::Set,
            ids: steady.clone(),
            action: ControlAction::Activate,
            timeout_ms: Some(20_000),
        })
        .await
        .expect("UpdateState through a follower");
    assert!(activated.failed.is_empty(), "{:?}", activated.failed);
    let placed: BTreeMap<String, String> = {
        let mut placed = BTreeMap::new();
        for id in &steady {
            let vee = through.get_vee(id).await.expect("the VEE");
            assert_eq!(vee.state, VmiState::Active);
            placed.insert(id.clone(), vee.host.expect("a host").to_string());
        }
        placed
    };

    // The stream, through every front-end in turn (a dead one refuses), while the leader is
    // killed, and then its successor stopped.
    let clients: Vec<Client> = site.front_ends.iter().map(|f| f.a.clone()).collect();
    let streaming = tokio::spawn(stream(clients, Instant::now() + Duration::from_secs(16)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    site.by_name(&first).kill9();
    let second = site
        .wait_for_leader(&[&first], Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    site.by_name(&second).signal("STOP");
    let third = site
        .wait_for_leader(&[&first, &second], Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    site.by_name(&second).signal("CONT");
    site.by_name(&second)
        .wait_following(&third, Duration::from_secs(20))
        .await;
    let acked = streaming.await.expect("the stream");
    eprintln!(
        "{first} killed, {second} stopped, {third} leads; {} calls, {} refused, {} VEEs acknowledged",
        acked.calls,
        acked.refused,
        acked.states.len()
    );
    assert!(acked.states.len() >= 10, "the stream made progress");

    // The first leader's machine is gone: its data_dir with it.
    std::fs::remove_dir_all(site.by_name(&first).data_dir()).expect("its disk is gone");

    let leader = site.by_name(&third).a.clone();
    let ops = site.by_name(&third).ops.clone();
    // The hosts are back; q1 as the operator left it, disabled (stored, so kept across both
    // failovers).
    for host in ["s1", "s2"] {
        site.by_name(&third)
            .wait_host_up(host, Duration::from_secs(30))
            .await;
    }
    let q1 = ops.list_hosts().await.expect("hosts").hosts;
    let q1 = q1.iter().find(|h| h.id.as_str() == "q1").expect("q1");
    assert_eq!(q1.state, veem_api::HostState::Disabled, "{q1:?}");
    // Nothing is left in the middle of an action, once the hosts are back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = leader
            .list_all_vees(&Default::default())
            .await
            .expect("every VEE");
        let unsettled: Vec<_> = all
            .iter()
            .filter(|v| v.phase.is_some() || v.state == VmiState::Initial)
            .map(|v| {
                format!(
                    "{} {} {:?} pending: {:?} last error: {:?}",
                    v.id, v.state, v.phase, v.pending_reason, v.last_error
                )
            })
            .collect();
        if unsettled.is_empty() {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "left in the middle of an action: {unsettled:?}\n{}\n{}",
            site.logs(),
            unsettled
                .iter()
                .filter_map(|u| u.split(' ').next())
                .map(|id| site.grep_logs(id))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: BTreeMap<&str, &veem_api::VeeView> =
        all.iter().map(|v| (v.id.as_str(), v)).collect();
    for (id, states) in &acked.states {
        let vee = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged {id} is lost"));
        assert!(
            states.contains(&vee.state),
            "{id} is {}; what was acknowledged leaves it {states:?}",
            vee.state
        );
    }
    for (id, host) in &placed {
        let vee = by_id[id.as_str()];
        assert_eq!(
            (vee.state, vee.host.as_ref().map(|h| h.to_string())),
            (VmiState::Active, Some(host.clone())),
            "{id} kept running where it ran"
        );
    }

    // No VEE runs twice, and nothing runs that the VEEM does not know there.
    let running: Vec<BTreeSet<String>> = sims.iter().map(|a| sim_instances(&a.state_dir)).collect();
    assert!(
        running[0].is_disjoint(&running[1]),
        "on both hosts: {:?}",
        running[0].intersection(&running[1]).collect::<Vec<_>>()
    );
    for (agent, instances) in sims.iter().zip(&running) {
        let expected: BTreeSet<String> = all
            .iter()
            .filter(|v| v.state == VmiState::Active)
            .filter(|v| v.host.as_ref().is_some_and(|h| h.as_str() == agent.name))
            .map(|v| v.id.clone())
            .collect();
        assert_eq!(instances, &expected, "what {} runs", agent.name);
    }
    for (id, host) in &placed {
        let agent = sims.iter().find(|a| &a.name == host).expect("a sim host");
        let boots = crate::harness::sim_journal(&agent.state_dir)
            .iter()
            .filter(|(op, vee)| op == "put" && vee == id)
            .count();
        assert_eq!(boots, 1, "{id} was started once");
    }

    // The image uploaded through the first leader deploys on the qemu host.
    ops.set_host_enabled("q1", true).await.expect("enable q1");
    site.by_name(&third)
        .wait_host_up("q1", Duration::from_secs(30))
        .await;
    for h in ["s1", "s2"] {
        ops.set_host_enabled(h, false)
            .await
            .expect("disable a sim host");
    }
    let guest = leader
        .initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 1,
            descriptor: guest_of_tiny("guest"),
        })
        .await
        .expect("define the guest")
        .vees[0]
        .id
        .clone();
    let answer = leader
        .update_state(&UpdateStateRequest {
            order: Order::List,
            ids: vec![guest.clone()],
            action: ControlAction::Activate,
            timeout_ms: Some(60_000),
        })
        .await
        .expect("ACTIVATE answers");
    assert!(
        answer.failed.is_empty(),
        "{:?}\n{}",
        answer.failed,
        site.logs()
    );
    let console = q1_vees.join(&guest).join("console.log");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains(veem_guest::READY_MARKER) {
            break;
        }
        assert!(Instant::now() < deadline, "the guest did not boot: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = leader
        .update_state(&UpdateStateRequest {
            order: Order::List,
            ids: vec![guest],
            action: ControlAction::Destroy,
            timeout_ms: Some(30_000),
        })
        .await
        .expect("DESTROY answers");
    assert!(answer.failed.is_empty(), "{:?}", answer.failed);
}
