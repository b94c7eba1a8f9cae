//! Federation: accounting listeners and monitoring subscriptions at the primary that cover
//! VEEs running at other sites, relayed with the primary's ids.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use veem_client::Client;
use veem_model::{ControlAction as A, EventType, Measurement, MonitoringEvent, VeeId, VmiState};

use crate::accounting::{field, records_of};
use crate::federation::*;
use crate::harness::*;

/// A VEE of sm-a's at west, forced to run at east, ACTIVE: (its id at west, its id at east).
async fn running_at_east(west: &Server, east: &Server, name: &str) -> (String, String) {
    running_at_east_as(west, east, small(name)).await
}

async fn running_at_east_as(
    west: &Server,
    east: &Server,
    mut d: veem_model::VeeDescriptor,
) -> (String, String) {
    let name = d.name.clone();
    d.sites = at(&["east"]);
    let id = init_one(&west.a, d).await;
    ctl_ok(&west.a, A::Activate, &[&id]).await;
    let view = wait_state(&west.a, &id, VmiState::Active).await;
    assert_eq!(view.site, "east");
    let there = named(east, &name).await.expect("it runs at east").id;
    (id, there)
}

/// The t0 of each record, in the order they came.
fn t0s(records: &[(u64, Value)]) -> Vec<u64> {
    records.iter().map(|(_, r)| field(r, "t0")).collect()
}

/// Asserts that `t0s` step by exactly `interval_ms`, none twice.
fn assert_on_grid(t0s: &[u64], interval_ms: u64) {
    for pair in t0s.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            interval_ms,
            "t0s step by the interval, none twice, none missing: {t0s:?}"
        );
    }
}

/// `kill -<signal>` of a VEEM process.
pub(crate) fn signal(server: &Server, name: &str) {
    let pid = server.pid().expect("the VEEM runs").to_string();
    let sent = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {name} {pid}");
}

#[tokio::test]
async fn a_listener_at_the_primary_gets_a_remote_vees_records_from_its_site() {
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let (id, there) = running_at_east(&west, &east, "away").await;

    let listener = Listener::start().await;
    let registered = wall_ms();
    west.a
        .listen(&[&id], 300, &listener.url)
        .await
        .expect("registered at the primary");
    // East's admin listens there too, directly: how late its records come is the yardstick.
    let direct = Listener::start().await;
    east.ops
        .listen(&[&there], 300, &direct.url)
        .await
        .expect("registered at east");
    let items = listener
        .wait_for("four records", Duration::from_secs(15), |items| {
            records_of(items, &id).len() >= 4
        })
        .await;
    let got = records_of(&items, &id);
    assert_eq!(got.len(), items.len(), "only the primary's id: {items:?}");
    for (_, record) in &got {
        assert_eq!(
            (
                field(record, "dt"),
                record["state"].as_str(),
                &record["host"]
            ),
            (300, Some("ACTIVE"), &Value::Null),
            "on its interval, the site's state, no host of the primary's: {record}"
        );
        assert_eq!(
            field(record, "active_ms"),
            300,
            "ACTIVE throughout: {record}"
        );
    }
    let first = t0s(&got);
    assert_on_grid(&first, 300);
    // How late a relayed record comes after its interval ended (the site's tick, its push to
    // the primary, stored there, pushed on), and one sent directly by east: one machine's clock.
    let lateness = |records: &[(u64, Value)]| {
        let mut late: Vec<u64> = records
            .iter()
            .map(|(at, r)| at.saturating_sub(field(r, "t0") + field(r, "dt")))
            .collect();
        late.sort_unstable();
        late
    };
    let late = lateness(&got);
    let direct_late = lateness(&records_of(&direct.items(), &there));
    for (what, late) in [("relayed", &late), ("direct", &direct_late)] {
        if let (Some(median), Some(most)) = (late.get(late.len() / 2), late.last()) {
            eprintln!(
                "{what} records: {} late by {median} ms (median) to {most} ms (most)",
                late.len()
            );
        }
    }
    assert!(late[late.len() - 1] < 2_000, "{late:?}");
    east.ops.unlisten(&[&there]).await.expect("removed at east");
    assert!(
        first[0] >= registered && first[0] < registered + 1_000,
        "the first interval starts at the registration ({registered}): {first:?}"
    );
    // The site keeps them for the primary's principal; read through the primary, with its id.
    let kept = west
        .a
        .vee_accounting(&id, None, None)
        .await
        .expect("read through the primary")
        .records;
    let kept_t0s: BTreeSet<u64> = kept.iter().map(|r| r.t0).collect();
    assert!(kept.iter().all(|r| r.vee.as_str() == id), "{kept:?}");
    assert!(
        first.iter().all(|t0| kept_t0s.contains(t0)),
        "{first:?} in {kept_t0s:?}"
    );
    assert!(
        named(&east, "away").await.is_some_and(|v| v.id == there),
        "the VEE stays at east"
    );
    // The inbox opens to its secret only: anyone else finds no such route.
    let forged = serde_json::to_vec(&serde_json::json!({
        "vee": there, "t0": 1, "dt": 300, "state": "ACTIVE", "host": null, "cpu": 1,
        "memory_mb": 256, "cpu_time_ms": 0, "active_ms": 300
    }))
    .expect("JSON");
    let (status, _, _) = west
        .a
        .raw_request(
            reqwest::Method::POST,
            "/vmi/v1/sites/east/inbox/0123456789abcdef0123456789abcdef/accounting",
            Some("application/json"),
            forged,
        )
        .await
        .expect("answered");
    assert_eq!(status, 404);

    // An admin's listener of 900 ms beside it: the site sends every 300 ms (their greatest
    // common divisor), the admin gets three of them at a time, and sm-a's go on unchanged.
    let coarse = Listener::start().await;
    west.ops
        .listen(&[&id], 900, &coarse.url)
        .await
        .expect("the admin's listener");
    let items = coarse
        .wait_for("two coarse records", Duration::from_secs(15), |items| {
            records_of(items, &id).len() >= 2
        })
        .await;
    let coarse_got = records_of(&items, &id);
    for (_, record) in &coarse_got {
        assert_eq!(field(record, "dt"), 900, "{record}");
        assert_eq!(field(record, "active_ms"), 900, "{record}");
    }
    assert_on_grid(&t0s(&coarse_got), 900);
    let fine = records_of(&listener.items(), &id);
    assert_on_grid(&t0s(&fine), 300);
    assert!(
        fine.iter().all(|(_, r)| field(r, "dt") == 300),
        "sm-a's interval is its own"
    );

    // Removal at the primary stops them.
    west.a.unlisten(&[&id]).await.expect("removed");
    west.ops.unlisten(&[&id]).await.expect("removed");
    let removed_at = wall_ms();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let late = |l: &Listener| {
        records_of(&l.items(), &id)
            .into_iter()
            .filter(|(at, _)| *at > removed_at + 500)
            .count()
    };
    assert_eq!(
        (late(&listener), late(&coarse)),
        (0, 0),
        "no record after removal"
    );
    // And ends the primary's listener at the site: the site makes no more records.
    let at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    let count = || async {
        at_east
            .vee_accounting(&there, None, None)
            .await
            .expect("read at east")
            .records
            .len()
    };
    let before = count().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        count().await,
        before,
        "east no longer makes records for west"
    );

    // The primary's own scheduler never makes up records of a remote VEE: a listener
    // registered while the VEE waits here follows it to the site it is placed at.
    let follows = Listener::start().await;
    let mut d = small("later");
    d.sites = at(&["east"]);
    let later = init_one(&west.a, d).await;
    west.a
        .listen(&[&later], 300, &follows.url)
        .await
        .expect("registered");
    ctl_ok(&west.a, A::Activate, &[&later]).await;
    wait_state(&west.a, &later, VmiState::Active).await;
    let placed_at = wall_ms();
    let items = follows
        .wait_for(
            "records from east after the placement",
            Duration::from_secs(15),
            |items| {
                records_of(items, &later)
                    .iter()
                    .filter(|(_, r)| field(r, "t0") > placed_at)
                    .count()
                    >= 3
            },
        )
        .await;
    let after: Vec<(u64, Value)> = records_of(&items, &later)
        .into_iter()
        .filter(|(_, r)| field(r, "t0") > placed_at)
        .collect();
    assert!(
        after
            .iter()
            .all(|(_, r)| r["state"] == "ACTIVE" && r["host"].is_null()),
        "{after:?}"
    );
    assert_on_grid(&t0s(&after), 300);
    assert!(
        after.iter().all(|(_, r)| field(r, "active_ms") == 300),
        "made at east, which saw it ACTIVE: {after:?}"
    );

    // DESTROY at its site ends its accounting, as here: a last record, then none.
    ctl_ok(&west.a, A::Destroy, &[&later]).await;
    let items = follows
        .wait_for("the last record", Duration::from_secs(15), |items| {
            records_of(items, &later)
                .iter()
                .any(|(_, r)| r["state"] == "DESTROYED")
        })
        .await;
    let last_at = records_of(&items, &later)
        .iter()
        .find(|(_, r)| r["state"] == "DESTROYED")
        .map(|(at, r)| {
            assert!(field(r, "dt") <= 300, "{r}");
            *at
        })
        .expect("found");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let after_last = records_of(&follows.items(), &later)
        .into_iter()
        .filter(|(at, _)| *at > last_at)
        .count();
    assert_eq!(after_last, 0, "nothing after the last record");
}

#[tokio::test]
async fn a_subscription_at_the_primary_gets_a_remote_vees_events_with_the_primarys_id() {
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let subscriber = Listener::start().await;
    west.a
        .subscribe(&subscriber.url, &[])
        .await
        .expect("subscribed");
    let stream = west.a.monitoring_stream().await.expect("streaming");
    // Two VEEs that stay here first, so that the ids here and at east differ.
    for name in ["here-1", "here-2"] {
        init_one(&west.a, small(name)).await;
    }
    let (plain, plain_there) = running_at_east(&west, &east, "plain").await;
    let mut named_d = small("shop");
    named_d.fqn_prefix = Some("shop.web".into());
    let (prefixed, prefixed_there) = running_at_east_as(&west, &east, named_d).await;

    // A probe at east (as one inside the VEE would, with the prefix it has there).
    let at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    let probe = |vee: &str, fqn: String| MonitoringEvent {
        kind: EventType::Probe,
        t0: wall_ms(),
        dt: 10,
        vee: Some(VeeId::parse(vee).expect("an id")),
        measurements: vec![Measurement::number(fqn, 1.0)],
    };
    at_east
        .put_monitoring(&[
            probe(&plain_there, format!("{plain_there}.probe.latency")),
            probe(&prefixed_there, "shop.web.probe.latency".into()),
        ])
        .await
        .expect("put at east");

    let has = |items: &[(u64, Value)], kind: &str, vee: &str, fqn: &str| {
        items.iter().any(|(_, e)| {
            e["type"] == kind
                && e["vee"] == vee
                && e["measurements"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["fqn"] == fqn))
        })
    };
    let wanted = |items: &[(u64, Value)]| {
        has(items, "STATE", &plain, &format!("{plain}.state"))
            && has(items, "STATE", &prefixed, "shop.web.state")
            && has(items, "HARDWARE", &plain, &format!("{plain}.cpu.count"))
            && has(items, "HARDWARE", &prefixed, "shop.web.cpu.count")
            && has(items, "PROBE", &plain, &format!("{plain}.probe.latency"))
            && has(items, "PROBE", &prefixed, "shop.web.probe.latency")
    };
    let items = subscriber
        .wait_for(
            "STATE, HARDWARE and PROBE events of both",
            Duration::from_secs(15),
            wanted,
        )
        .await;
    // Nothing about them names a VEE by its id at east, nor an FQN under it.
    let about_them = items
        .iter()
        .filter(|(_, e)| e["vee"] == plain.as_str() || e["vee"] == prefixed.as_str());
    for (_, event) in about_them {
        let text = event.to_string();
        for there in [&plain_there, &prefixed_there] {
            assert!(
                !text.contains(&format!("\"{there}\"")) && !text.contains(&format!("{there}.")),
                "{event}"
            );
        }
    }
    // The stream says the same.
    futures::pin_mut!(stream);
    let mut streamed: Vec<(u64, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !wanted(&streamed) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("never all on the stream: {streamed:?}"))
            .expect("the stream goes on")
            .expect("an event");
        streamed.push((0, serde_json::to_value(event).expect("JSON")));
    }
}

#[tokio::test]
async fn records_of_a_partition_are_delivered_when_it_heals_none_twice() {
    let (mut west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let (id, _) = running_at_east(&west, &east, "steady").await;
    let listener = Listener::start().await;
    west.a
        .listen(&[&id], 300, &listener.url)
        .await
        .expect("registered");
    let count = |l: &Listener| records_of(&l.items(), &id).len();
    listener
        .wait_for("three records", Duration::from_secs(15), |items| {
            records_of(items, &id).len() >= 3
        })
        .await;

    // The site stops (SIGSTOP): nothing comes; once it goes on, the records of the gap come.
    signal(&east, "-STOP");
    let stopped_at = wall_ms();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let during = count(&listener);
    signal(&east, "-CONT");
    let continued_at = wall_ms();
    listener
        .wait_for("records past the gap", Duration::from_secs(20), |items| {
            records_of(items, &id)
                .iter()
                .any(|(_, r)| field(r, "t0") > continued_at + 300)
        })
        .await;

    // The primary stops (SIGSTOP): the site keeps its records and sends them afterwards.
    signal(&west, "-STOP");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    signal(&west, "-CONT");
    let west_continued_at = wall_ms();
    listener
        .wait_for(
            "records past the primary's gap",
            Duration::from_secs(40),
            |items| {
                records_of(items, &id)
                    .iter()
                    .any(|(_, r)| field(r, "t0") > west_continued_at + 300)
            },
        )
        .await;
    let got = t0s(&records_of(&listener.items(), &id));
    assert_on_grid(&got, 300);
    assert!(
        got.iter()
            .any(|t0| (stopped_at + 300..continued_at - 300).contains(t0)),
        "the site's gap is covered: {got:?}"
    );
    assert!(during <= got.len(), "{during} then {}", got.len());

    // The primary killed (kill -9) and started again: the relay is made again, the site's
    // registration (and its grid) kept; what the site made meanwhile comes, each record once
    // more at most (the primary's outbox: its last POSTs before the kill may come again).
    west.kill9();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    west.start_again().await;
    let restarted_at = wall_ms();
    listener
        .wait_for(
            "records after the restart",
            Duration::from_secs(40),
            |items| {
                records_of(items, &id)
                    .iter()
                    .any(|(_, r)| field(r, "t0") > restarted_at + 600)
            },
        )
        .await;
    let all = t0s(&records_of(&listener.items(), &id));
    let unique: Vec<u64> = all
        .iter()
        .copied()
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    assert_on_grid(&unique, 300);
    assert!(
        all.len() - unique.len() <= 4,
        "at most the last POSTs before the kill come again: {all:?}"
    );
}

#[tokio::test]
async fn a_listener_registered_while_its_site_is_stopped_is_relayed_once_it_answers() {
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let (id, _) = running_at_east(&west, &east, "asleep").await;
    signal(&east, "-STOP");
    // Taken here at once; the registration at east waits for east, within bounds.
    let listener = Listener::start().await;
    let asked = Instant::now();
    west.a
        .listen(&[&id], 300, &listener.url)
        .await
        .expect("registered at the primary");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "the primary did not wait on a stopped site for long: {:?}",
        asked.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&east, "-CONT");
    let continued_at = wall_ms();
    let items = listener
        .wait_for(
            "records once east answers",
            Duration::from_secs(20),
            |items| {
                records_of(items, &id)
                    .iter()
                    .filter(|(_, r)| field(r, "t0") >= continued_at)
                    .count()
                    >= 3
            },
        )
        .await;
    let got = records_of(&items, &id);
    assert_on_grid(&t0s(&got), 300);
    assert!(got.iter().all(|(_, r)| field(r, "dt") == 300), "{got:?}");
}

#[tokio::test]
async fn after_a_restart_the_primary_registers_its_listeners_at_the_sites_again() {
    let (mut west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let (id, there) = running_at_east(&west, &east, "kept").await;
    let listener = Listener::start().await;
    west.a
        .listen(&[&id], 300, &listener.url)
        .await
        .expect("registered");
    listener
        .wait_for("a record", Duration::from_secs(15), |items| {
            !records_of(items, &id).is_empty()
        })
        .await;
    // While west is down, east loses west's registration (as the peer itself removes it).
    west.kill9();
    let at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    at_east.unlisten(&[&there]).await.expect("removed at east");
    west.start_again().await;
    let restarted_at = wall_ms();
    let items = listener
        .wait_for(
            "records from the registration made again",
            Duration::from_secs(20),
            |items| {
                records_of(items, &id)
                    .iter()
                    .filter(|(_, r)| field(r, "t0") >= restarted_at)
                    .count()
                    >= 2
            },
        )
        .await;
    let again: Vec<(u64, Value)> = records_of(&items, &id)
        .into_iter()
        .filter(|(_, r)| field(r, "t0") >= restarted_at)
        .collect();
    assert_on_grid(&t0s(&again), 300);
}

/// A stand-in for a peer VEEM that answers a site's registration (a page of no VEEs, a
/// subscription) and keeps the callback it was given: the primary's inbox, secret included.
async fn stand_in_site() -> (String, std::sync::Arc<std::sync::Mutex<Option<String>>>) {
    use axum::routing::{get, post};
    let inbox: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let kept = inbox.clone();
    let app = axum::Router::new()
        .route(
            "/vmi/v1/vees",
            get(|| async { axum::Json(serde_json::json!({"vees": [], "next": null})) }),
        )
        .route(
            "/vmi/v1/monitoring/subscriptions",
            post(move |axum::Json(body): axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    *kept.lock().expect("not poisoned") =
                        body["callback"].as_str().map(str::to_owned);
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(serde_json::json!({"id": "sub-1"})),
                    )
                }
            }),
        );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}", socket.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(socket, app).await });
    (url, inbox)
}

#[tokio::test]
async fn the_accounting_inbox_takes_a_sites_records_only_well_formed_and_only_of_its_vees() {
    let west = site("west").await;
    let (url, inbox) = stand_in_site().await;
    west.ops
        .add_site(&request("east", &url, "any"))
        .await
        .expect("registered");
    let inbox = inbox
        .lock()
        .expect("not poisoned")
        .clone()
        .expect("west subscribed at the stand-in");
    let path = inbox
        .split_once("/vmi/v1/")
        .map(|(_, rest)| format!("/vmi/v1/{rest}/accounting"))
        .expect("an inbox under /vmi/v1");
    let post = |body: Value| {
        let (client, path) = (west.a.clone(), path.clone());
        async move {
            let (status, _, answer) = client
                .raw_request(
                    reqwest::Method::POST,
                    &path,
                    Some("application/json"),
                    serde_json::to_vec(&body).expect("JSON"),
                )
                .await
                .expect("answered");
            let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            (
                status,
                answer["code"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let record = |vee: &str, t0: u64| {
        serde_json::json!({
            "vee": vee, "t0": t0, "dt": 300, "state": "ACTIVE", "host": "e1", "cpu": 1,
            "memory_mb": 256, "cpu_time_ms": 10, "active_ms": 300
        })
    };
    // Records of VEEs this VEEM has not placed there are ignored; one record or an array.
    assert_eq!(
        post(record("vee-00000042", 1_000)).await,
        (204, String::new())
    );
    assert_eq!(
        post(serde_json::json!([record("vee-00000042", 1_300)])).await,
        (204, String::new())
    );
    // Malformed: refused naming the field, never a 5xx.
    let mut far = record("vee-00000042", 1_000);
    far["cpu_time_ms"] = serde_json::json!(u64::MAX);
    assert_eq!(post(far).await, (400, "malformed_request".to_owned()));
    let mut bad = record("vee-00000042", 1_000);
    bad["state"] = serde_json::json!("RUNNING");
    assert_eq!(post(bad).await, (400, "malformed_request".to_owned()));
    assert_eq!(
        post(serde_json::json!({"not": "a record"})).await,
        (400, "malformed_request".to_owned())
    );
}
