//! Host loss: a host whose agent does not answer for `host_dead_after_ms` is down, its VEEs run
//! again elsewhere per their `restart_attempts`, and never twice: the agent that comes back
//! ends what was moved away before the VEEM takes anything it says as truth. The hosts are
//! remote `veem agent` processes with the sim driver, killed with `kill -9` or stopped with
//! SIGSTOP; what each one holds is read from its driver's journal while the test runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veem_api::HostState;
use veem_model::{ControlAction as A, VeemState, VmiState};

use crate::harness::*;

const DEAD_AFTER_MS: u64 = 3_000;
/// How much later than `host_dead_after_ms` a lost host's VEEs may be ACTIVE elsewhere: a
/// health tick to notice, a deployment each.
const MARGIN: Duration = Duration::from_secs(5);

/// A server with no host of its own and three remote sim agents, h1 to h3, all up.
async fn site(dead_after_ms: u64) -> (Server, Vec<RemoteAgent>) {
    let s = Server::start_with(Setup {
        hosts: vec![],
        host_dead_after_ms: dead_after_ms,
        ..Setup::default()
    })
    .await;
    let agents: Vec<RemoteAgent> = ["h1", "h2", "h3"]
        .iter()
        .map(|name| RemoteAgent::start(&s, name, 8, 16384))
        .collect();
    for agent in &agents {
        wait_host(&s, &agent.name, HostState::Up, Duration::from_secs(20)).await;
    }
    (s, agents)
}

/// Activates `ids` with only `host` taking new VEEs, so they land there.
async fn activate_on(s: &Server, host: &str, ids: &[&str]) {
    for h in ["h1", "h2", "h3"] {
        s.ops
            .set_host_enabled(h, h == host)
            .await
            .expect("patch host");
    }
    ctl_ok(&s.a, A::Activate, ids).await;
    for h in ["h1", "h2", "h3"] {
        s.ops.set_host_enabled(h, true).await.expect("patch host");
    }
    for id in ids {
        assert_eq!(host_of(s, id).await.as_deref(), Some(host), "{id}");
    }
}

async fn host_of(s: &Server, id: &str) -> Option<String> {
    get(&s.a, id).await.host.map(|h| h.to_string())
}

fn with(name: &str, restart_attempts: u32, database: bool) -> veem_model::VeeDescriptor {
    let mut d = small(name);
    d.restart_attempts = restart_attempts;
    if database {
        d.tags = vec!["database".into()];
        d.anti_affinity = vec!["database".into()];
    }
    d
}

/// The VEEs of one scenario: the original database on h1; on h2 its replica, three web
/// servers (two restarts allowed) and two fragile ones (none); a bystander on h3.
struct Fleet {
    db: String,
    replica: String,
    webs: Vec<String>,
    fragile: Vec<String>,
    bystander: String,
}

impl Fleet {
    async fn place(s: &Server) -> Self {
        let db = init_one(&s.a, with("db", 1, true)).await;
        let replica = init_one(&s.a, with("db-replica", 1, true)).await;
        let mut webs = Vec::new();
        for _ in 0..3 {
            webs.push(init_one(&s.a, with("web", 2, false)).await);
        }
        let fragile = vec![
            init_one(&s.a, with("fragile", 0, false)).await,
            init_one(&s.a, with("fragile", 0, false)).await,
        ];
        let bystander = init_one(&s.a, with("bystander", 0, false)).await;
        activate_on(s, "h1", &[&db]).await;
        let on_h2: Vec<&str> = std::iter::once(replica.as_str())
            .chain(webs.iter().map(String::as_str))
            .chain(fragile.iter().map(String::as_str))
            .collect();
        activate_on(s, "h2", &on_h2).await;
        activate_on(s, "h3", &[&bystander]).await;
        Self {
            db,
            replica,
            webs,
            fragile,
            bystander,
        }
    }

    /// The VEEs of h2 that may restart.
    fn movable(&self) -> Vec<String> {
        std::iter::once(self.replica.clone())
            .chain(self.webs.iter().cloned())
            .collect()
    }

    fn on_h2(&self) -> BTreeSet<String> {
        self.movable()
            .into_iter()
            .chain(self.fragile.iter().cloned())
            .collect()
    }
}

/// Watches the site every 25 ms while a test runs and writes down every breach of "never
/// twice": a VEE in two hosts' lists of the VEEM; a VEE of h2 back in h2's list once it was
/// listed on another host; h2 `up`, after it was lost, while its agent's journal still holds a
/// VEE moved away from it (the fence runs before the host counts as up); and any VEE of
/// `never_on_h2` in h2's journal.
struct Watch {
    stop: Arc<AtomicBool>,
    breaches: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(
        s: &Server,
        h2_state_dir: PathBuf,
        moved: BTreeSet<String>,
        never_on_h2: BTreeSet<String>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let breaches: Arc<Mutex<Vec<String>>> = Arc::default();
        let ops = s.ops.clone();
        let (stop2, breaches2) = (stop.clone(), breaches.clone());
        let task = tokio::spawn(async move {
            let mut lost_seen = false;
            let mut left_h2: BTreeSet<String> = BTreeSet::new();
            while !stop2.load(Ordering::SeqCst) {
                let mut found = Vec::new();
                if let Ok(hosts) = ops.list_hosts().await {
                    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                    for h in &hosts.hosts {
                        for v in &h.vees {
                            holders.entry(v.as_str()).or_default().push(h.id.as_str());
                        }
                    }
                    for (vee, on) in &holders {
                        if on.len() > 1 {
                            found.push(format!("{vee} listed on {on:?}"));
                        }
                        if on.iter().any(|h| *h != "h2") && moved.contains(*vee) {
                            left_h2.insert((*vee).to_owned());
                        }
                    }
                    let h2 = hosts.hosts.iter().find(|h| h.id.as_str() == "h2");
                    if let Some(h2) = h2 {
                        if h2
                            .reason
                            .as_deref()
                            .is_some_and(|r| r.contains("no answer for"))
                        {
                            lost_seen = true;
                        }
                        for v in &h2.vees {
                            if left_h2.contains(v) {
                                found.push(format!("{v} is listed on h2 again after it moved"));
                            }
                        }
                        // Read after the view: h2 was up before this journal was read.
                        let held = sim_instances(&h2_state_dir);
                        if lost_seen && h2.state == HostState::Up {
                            for v in held.intersection(&moved) {
                                found.push(format!(
                                    "h2 is up while its journal holds {v}, moved away"
                                ));
                            }
                        }
                        for v in held.intersection(&never_on_h2) {
                            found.push(format!("h2's journal holds {v}"));
                        }
                    }
                }
                breaches2.lock().expect("not poisoned").extend(found);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Self {
            stop,
            breaches,
            task,
        }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the watch ran");
        let mut breaches = self.breaches.lock().expect("not poisoned").clone();
        breaches.dedup();
        breaches
    }
}

/// Waits until every movable VEE of h2 is ACTIVE on another host and every fragile one is
/// DESTROYED; answers how long that took from `since`.
async fn wait_moved(s: &Server, fleet: &Fleet, since: Instant, limit: Duration) -> Duration {
    loop {
        let mut done = true;
        for id in fleet.movable() {
            let v = get(&s.a, &id).await;
            let away = v.host.as_ref().is_some_and(|h| h.as_str() != "h2");
            done &= v.state == VmiState::Active && v.phase.is_none() && away;
        }
        for id in &fleet.fragile {
            done &= state_of(&s.a, id).await == VmiState::Destroyed;
        }
        if done {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "h2's VEEs were not moved within {limit:?}: {:?}",
            s.a.list_all_vees(&Default::default()).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What must hold once h2's VEEs moved: where each went, why, and what h2 looks like.
async fn check_moved(s: &Server, fleet: &Fleet, lost_after_ms: u64) {
    let db_host = host_of(s, &fleet.db).await;
    assert_eq!(db_host.as_deref(), Some("h1"), "the original stays");
    let replica = get(&s.a, &fleet.replica).await;
    let replica_host = replica.host.as_ref().map(|h| h.to_string());
    assert_ne!(
        replica_host, db_host,
        "anti-affinity: never on its original's host"
    );
    assert_eq!(replica.restarts, 1);
    let cause = format!("host h2 lost (no answer for {} s)", lost_after_ms / 1000);
    for id in &fleet.webs {
        let v = get(&s.a, id).await;
        assert_eq!(v.restarts, 1, "{id}");
        let to = v.host.as_ref().expect("placed").to_string();
        let events = s.a.vee_events(id).await.expect("events").events;
        let expected = format!("{cause}; restarted on {to}, restart 1 of 2");
        assert!(
            events
                .iter()
                .any(|e| e.detail.as_deref() == Some(expected.as_str())),
            "{id}: no event {expected:?} in {events:?}"
        );
    }
    for id in &fleet.fragile {
        let v = get(&s.a, id).await;
        assert_eq!(
            (v.veem_state, v.host.as_ref()),
            (VeemState::Failed, None),
            "{id}"
        );
        let error = v.last_error.unwrap_or_default();
        assert_eq!(error, format!("{cause}; disks kept"), "{id}");
    }
    let bystander = get(&s.a, &fleet.bystander).await;
    assert_eq!(
        (
            bystander.state,
            bystander.host.map(|h| h.to_string()),
            bystander.restarts
        ),
        (VmiState::Active, Some("h3".to_owned()), 0),
        "a VEE of a healthy host is left alone"
    );
    let h2 = wait_host(s, "h2", HostState::Down, Duration::from_secs(1)).await;
    assert!(
        h2.reason
            .as_deref()
            .is_some_and(|r| r.contains("no answer for")),
        "{h2:?}"
    );
    assert!(h2.since_ms.is_some() && h2.vees.is_empty(), "{h2:?}");
}

/// h2 is up again and takes a new VEE; the VEEM's books and every agent's journal agree.
async fn check_back(s: &Server, agents: &[RemoteAgent], fleet: &Fleet) -> String {
    let newcomer = init_one(&s.a, with("newcomer", 0, false)).await;
    activate_on(s, "h2", &[&newcomer]).await;
    let journal = agents[1].journal();
    let put_newcomer = journal
        .iter()
        .position(|(op, v)| op == "put" && v == &newcomer)
        .expect("the newcomer is in h2's journal");
    for v in fleet.on_h2() {
        if let Some(removed) = journal.iter().position(|(op, x)| op == "remove" && x == &v) {
            assert!(
                removed < put_newcomer,
                "{v} was ended before h2 took anything new"
            );
        }
    }
    let hosts = s.ops.list_hosts().await.expect("hosts");
    for (agent, view) in agents.iter().zip(&hosts.hosts) {
        let books: BTreeSet<String> = view.vees.iter().cloned().collect();
        assert_eq!(
            agent.instances(),
            books,
            "{} runs what the VEEM places there",
            agent.name
        );
    }
    newcomer
}

#[tokio::test]
async fn kill_9_of_an_agent_moves_its_vees_elsewhere_and_the_agent_back_ends_them_first() {
    let (s, mut agents) = site(DEAD_AFTER_MS).await;
    let fleet = Fleet::place(&s).await;
    let watch = Watch::start(
        &s,
        agents[1].state_dir.clone(),
        fleet.on_h2(),
        BTreeSet::new(),
    );

    let killed = Instant::now();
    agents[1].kill9();
    // Disconnected is not lost: the VEEs stay while the agent may come back.
    wait_host(&s, "h2", HostState::Down, Duration::from_secs(2)).await;
    tokio::time::sleep(
        Duration::from_millis(DEAD_AFTER_MS - 1000).saturating_sub(killed.elapsed()),
    )
    .await;
    assert_eq!(host_of(&s, &fleet.replica).await.as_deref(), Some("h2"));
    assert_eq!(state_of(&s.a, &fleet.fragile[0]).await, VmiState::Active);

    let took = wait_moved(
        &s,
        &fleet,
        killed,
        Duration::from_millis(DEAD_AFTER_MS) + MARGIN,
    )
    .await;
    // Counted from the last word heard, a little before the kill.
    assert!(
        took >= Duration::from_millis(DEAD_AFTER_MS - 500),
        "moved after {took:?}"
    );
    check_moved(&s, &fleet, DEAD_AFTER_MS).await;

    // The agent comes back on the same state: its journal still holds every VEE it ran.
    assert_eq!(agents[1].instances(), fleet.on_h2());
    agents[1].spawn();
    wait_host(&s, "h2", HostState::Up, Duration::from_secs(20)).await;
    assert!(
        agents[1].instances().is_empty(),
        "{:?}",
        agents[1].instances()
    );
    check_back(&s, &agents, &fleet).await;
    let breaches = watch.finish().await;
    assert!(breaches.is_empty(), "{breaches:#?}");
}

#[tokio::test]
async fn a_stopped_agent_is_fenced_when_continued_and_acts_on_nothing_sent_while_it_slept() {
    let (s, agents) = site(DEAD_AFTER_MS).await;
    let fleet = Fleet::place(&s).await;
    let latecomer = init_one(&s.a, with("latecomer", 0, false)).await;
    let watch = Watch::start(
        &s,
        agents[1].state_dir.clone(),
        fleet.on_h2(),
        BTreeSet::from([latecomer.clone()]),
    );

    let stopped = Instant::now();
    agents[1].signal("STOP");
    // While h2 sleeps, unnoticed yet, the VEEM sends it a deployment: it waits in the socket.
    for h in ["h1", "h3"] {
        s.ops.set_host_enabled(h, false).await.expect("patch host");
    }
    let r =
        s.a.update_state(&veem_api::UpdateStateRequest {
            order: veem_api::Order::List,
            ids: vec![latecomer.clone()],
            action: A::Activate,
            timeout_ms: Some(300),
        })
        .await
        .expect("answers");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(host_of(&s, &latecomer).await.as_deref(), Some("h2"));
    for h in ["h1", "h3"] {
        s.ops.set_host_enabled(h, true).await.expect("patch host");
    }

    let took = wait_moved(
        &s,
        &fleet,
        stopped,
        Duration::from_millis(DEAD_AFTER_MS) + MARGIN,
    )
    .await;
    // Counted from the last word heard, a little before the kill.
    assert!(
        took >= Duration::from_millis(DEAD_AFTER_MS - 500),
        "moved after {took:?}"
    );
    check_moved(&s, &fleet, DEAD_AFTER_MS).await;
    // The deployment sent to the sleeping host was cut short when the host was lost: the VEE
    // is placed again elsewhere, counting no restart (it never ran).
    let v = wait_state(&s.a, &latecomer, VmiState::Active).await;
    assert_ne!(v.host.as_ref().map(|h| h.as_str()), Some("h2"), "{v:?}");
    assert_eq!(v.restarts, 0);
    let events = s.a.vee_events(&latecomer).await.expect("events").events;
    assert!(
        events.iter().any(|e| e
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("host h2 lost") && d.contains("placed again on"))),
        "{events:?}"
    );

    // Continued after longer than host_dead_after_ms: the frames it slept through are stale.
    tokio::time::sleep(
        Duration::from_millis(DEAD_AFTER_MS + 1000).saturating_sub(stopped.elapsed()),
    )
    .await;
    assert_eq!(
        agents[1].instances(),
        fleet.on_h2(),
        "a stopped agent changes nothing"
    );
    agents[1].signal("CONT");
    wait_host(&s, "h2", HostState::Up, Duration::from_secs(20)).await;
    assert!(
        agents[1].instances().is_empty(),
        "{:?}",
        agents[1].instances()
    );
    assert!(
        agents[1].journal().iter().all(|(_, v)| v != &latecomer),
        "the deployment sent while h2 slept was never carried out"
    );
    assert!(
        agents[1].log().contains("may be stale"),
        "{}",
        agents[1].log()
    );
    check_back(&s, &agents, &fleet).await;
    let breaches = watch.finish().await;
    assert!(breaches.is_empty(), "{breaches:#?}");
}

#[tokio::test]
async fn a_restart_of_the_veem_loses_no_host_that_comes_back_and_moves_the_vees_of_one_that_does_not(
) {
    let dead_after_ms = 5_000;
    let (mut s, mut agents) = site(dead_after_ms).await;
    let fleet = Fleet::place(&s).await;
    agents[1].kill9();
    s.restart().await;
    let restarted = Instant::now();
    // h1 and h3 reconnect well within host_dead_after_ms; h2 never does.
    wait_host(&s, "h1", HostState::Up, Duration::from_secs(10)).await;
    wait_host(&s, "h3", HostState::Up, Duration::from_secs(10)).await;
    tokio::time::sleep(
        Duration::from_millis(dead_after_ms - 1500).saturating_sub(restarted.elapsed()),
    )
    .await;
    assert_eq!(
        host_of(&s, &fleet.replica).await.as_deref(),
        Some("h2"),
        "not lost yet"
    );
    wait_moved(
        &s,
        &fleet,
        restarted,
        Duration::from_millis(dead_after_ms) + MARGIN,
    )
    .await;
    check_moved(&s, &fleet, dead_after_ms).await;
    let hosts = s.ops.list_hosts().await.expect("hosts");
    let h2 = hosts
        .hosts
        .iter()
        .find(|h| h.id.as_str() == "h2")
        .expect("h2 is listed");
    assert_eq!(h2.state, HostState::Down);
}
