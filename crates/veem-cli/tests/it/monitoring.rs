//! Monitoring through the VMI: events put by SMs and by a VEE's own probes, the VEEM's STATE and
//! HARDWARE events, pushed to subscriptions (a real HTTP listener of the test's) and streamed.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use veem_model::{ControlAction as A, EventType, Measurement, MonitoringEvent, VeeId};

use crate::harness::*;

fn probe(vee: Option<&str>, fqn: &str, value: f64) -> MonitoringEvent {
    MonitoringEvent {
        kind: EventType::Probe,
        t0: wall_ms(),
        dt: 10,
        vee: vee.map(|v| VeeId::parse(v).expect("an id")),
        measurements: vec![Measurement::number(fqn, value)],
    }
}

fn has_measurement(item: &Value, kind: &str, fqn: &str) -> bool {
    item["type"] == kind
        && item["measurements"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["fqn"] == fqn))
}

#[tokio::test]
async fn state_hardware_and_put_events_reach_the_owners_subscription_and_no_other() {
    let s = Server::start().await;
    let a_listener = Listener::start().await;
    let b_listener = Listener::start().await;
    s.a.subscribe(&a_listener.url, &[])
        .await
        .expect("subscribed");
    s.b.subscribe(&b_listener.url, &[])
        .await
        .expect("subscribed");
    let mut d = small("db");
    d.fqn_prefix =
        Some("tid.customers.EasyJet.services.Web.serviceComponents.DBServer.replicas.1".into());
    let id = init_one(&s.a, d).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let prefix = "tid.customers.EasyJet.services.Web.serviceComponents.DBServer.replicas.1";
    s.a.put_monitoring(&[probe(Some(&id), &format!("{prefix}.http.latency_ms"), 12.5)])
        .await
        .expect("accepted");
    let items = a_listener
        .wait_for(
            "STATE, HARDWARE and PROBE events",
            Duration::from_secs(10),
            |items| {
                let states: Vec<&Value> = items
                    .iter()
                    .filter(|(_, e)| has_measurement(e, "STATE", &format!("{prefix}.state")))
                    .map(|(_, e)| &e["measurements"][0]["value"])
                    .collect();
                states.contains(&&Value::from("ACTIVE"))
                    && items.iter().any(|(_, e)| {
                        has_measurement(e, "HARDWARE", &format!("{prefix}.cpu.usage"))
                    })
                    && items.iter().any(|(_, e)| {
                        has_measurement(e, "PROBE", &format!("{prefix}.http.latency_ms"))
                    })
            },
        )
        .await;
    let hardware = items
        .iter()
        .find(|(_, e)| e["type"] == "HARDWARE")
        .map(|(_, e)| e.clone())
        .expect("a HARDWARE event");
    assert_eq!(
        hardware["vee"],
        id.as_str(),
        "the VEEM's events carry the VEE"
    );
    assert!(hardware["dt"].as_u64().is_some_and(|dt| dt > 0));
    let states: Vec<&str> = items
        .iter()
        .filter(|(_, e)| e["type"] == "STATE")
        .filter_map(|(_, e)| e["measurements"][0]["value"].as_str())
        .collect();
    assert_eq!(
        &states[..3],
        ["DEFINED", "INITIAL", "ACTIVE"],
        "every change, in order"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b_listener.items().is_empty(),
        "sm-b sees nothing of sm-a's VEE: {:?}",
        b_listener.items()
    );
}

#[tokio::test]
async fn subscriptions_filter_by_type_and_can_be_removed() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let sub =
        s.a.subscribe(&listener.url, &[EventType::Probe])
            .await
            .expect("subscribed");
    let id = init_one(&s.a, small("db")).await;
    s.a.put_monitoring(&[probe(Some(&id), "app.hits", 1.0)])
        .await
        .expect("accepted");
    let items = listener
        .wait_for("the probe", Duration::from_secs(10), |items| {
            !items.is_empty()
        })
        .await;
    assert!(items.iter().all(|(_, e)| e["type"] == "PROBE"), "{items:?}");
    assert_eq!(
        s.b.unsubscribe(&sub.id)
            .await
            .expect_err("not sm-b's")
            .code(),
        Some("access_denied")
    );
    s.a.unsubscribe(&sub.id).await.expect("removed");
    let count = listener.items().len();
    s.a.put_monitoring(&[probe(Some(&id), "app.hits", 2.0)])
        .await
        .expect("accepted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(listener.items().len(), count, "removed: nothing more");
    assert_eq!(
        s.a.unsubscribe(&sub.id).await.expect_err("gone").code(),
        Some("not_found")
    );
}

#[tokio::test]
async fn the_stream_carries_the_callers_events_live() {
    let s = Server::start().await;
    let stream = s.a.monitoring_stream().await.expect("streaming");
    futures::pin_mut!(stream);
    let theirs = init_one(&s.b, small("theirs")).await;
    let id = init_one(&s.a, small("db")).await;
    s.a.put_monitoring(&[probe(None, "site.sm-a.heartbeat", 1.0)])
        .await
        .expect("accepted");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("an event");
        assert_ne!(
            event.vee.as_ref().map(|v| v.as_str()),
            Some(theirs.as_str()),
            "not sm-b's"
        );
        seen.push(event);
    }
    assert_eq!(seen[0].kind, EventType::State);
    assert_eq!(
        seen[0].vee.as_ref().map(|v| v.to_string()),
        Some(id.clone())
    );
    assert_eq!(seen[1].kind, EventType::Probe);
    assert_eq!(
        seen[1].vee, None,
        "an event about no VEE goes to who put it"
    );
}

#[tokio::test]
async fn bad_events_are_refused_with_the_field_named_and_change_nothing() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    s.a.subscribe(&listener.url, &[]).await.expect("subscribed");
    let mine = init_one(&s.a, small("mine")).await;
    let theirs = init_one(&s.b, small("theirs")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = listener.items().len();
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            r#"{"type":"PROBE","t0":1,"dt":1,"measurements":[{"fqn":"a..b","value":1}]}"#,
            "malformed_request",
            "measurements[0].fqn",
        ),
        (
            r#"{"type":"STATE","t0":1,"dt":1,"measurements":[{"fqn":"a","value":"ACTIVE"}]}"#,
            "malformed_request",
            "type",
        ),
        (
            r#"{"type":"OTHER","t0":1,"dt":1,"measurements":[]}"#,
            "malformed_request",
            "type",
        ),
        (
            r#"[{"type":"PROBE","t0":1,"dt":1,"measurements":[{"fqn":"a","value":1}]},{"type":"PROBE","t0":-5,"dt":1,"measurements":[]}]"#,
            "malformed_request",
            "[1].t0",
        ),
        (
            r#"{"type":"PROBE","t0":1,"dt":1,"vee":"vee-99999999","measurements":[{"fqn":"a","value":1}]}"#,
            "not_found",
            "vee-99999999",
        ),
    ];
    for (body, code, named) in cases {
        let (status, _, answer) =
            s.a.raw_request(
                reqwest::Method::POST,
                "/vmi/v1/monitoring",
                Some("application/json"),
                body.as_bytes().to_vec(),
            )
            .await
            .expect("answers");
        let problem: Value = serde_json::from_slice(&answer).expect("a problem");
        assert_eq!(problem["code"], code, "{body}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(named)),
            "{body}: {problem}"
        );
        assert!(status == 400 || status == 404, "{status}");
    }
    let error =
        s.a.put_monitoring(&[probe(Some(&theirs), "a", 1.0), probe(Some(&mine), "a", 1.0)])
            .await
            .expect_err("another's VEE");
    assert_eq!(error.code(), Some("access_denied"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        listener.items().len(),
        before,
        "nothing of a refused call went out"
    );
}

#[tokio::test]
async fn a_probe_inside_a_vee_puts_events_with_the_vees_token_about_that_vee_only() {
    let s = Server::start_on(Hypervisor::Sim).await.expect("sim");
    let listener = Listener::start().await;
    s.a.subscribe(&listener.url, &[EventType::Probe])
        .await
        .expect("subscribed");
    let mut d = small("web");
    d.disks.push(tiny_disk());
    let id = init_one(&s.a, d).await;
    let other = init_one(&s.a, small("other")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    // The token reaches the guest in its context (the sim host keeps the document).
    let env = std::fs::read_to_string(
        s.data_dir()
            .join("vees")
            .join(&id)
            .join("context")
            .join("ovf-env.xml"),
    )
    .expect("the VEE's context");
    let token = env
        .split("veem.monitoring.token\" ovfenv:value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a monitoring token in the context")
        .to_owned();
    let probe_client = veem_client::Client::new(&s.url, &token).expect("a client");
    probe_client
        .put_monitoring(&[probe(None, "web.requests", 42.0)])
        .await
        .expect("accepted with the VEE's token");
    let items = listener
        .wait_for("the probe's event", Duration::from_secs(10), |items| {
            !items.is_empty()
        })
        .await;
    assert_eq!(items[0].1["vee"], id.as_str(), "about its VEE");
    let error = probe_client
        .put_monitoring(&[probe(Some(&other), "web.requests", 1.0)])
        .await
        .expect_err("not its VEE");
    assert_eq!(error.code(), Some("access_denied"));
    assert_eq!(
        probe_client
            .list_vees(&Default::default())
            .await
            .expect_err("no principal")
            .code(),
        Some("unauthenticated"),
        "the token does nothing else"
    );
}

#[tokio::test]
async fn the_events_about_a_vee_are_kept_for_its_owner_oldest_first() {
    let s = Server::start().await;
    let id = init_one(&s.a, small("db")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    s.a.put_monitoring(&[probe(Some(&id), &format!("{id}.http.latency_ms"), 12.5)])
        .await
        .expect("accepted");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let hardware = loop {
        let kept =
            s.a.vee_monitoring(&id, Some(EventType::Hardware), None)
                .await;
        let kept = kept.expect("the owner reads them").events;
        if kept.len() >= 2 {
            break kept;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no HARDWARE events kept: {kept:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(hardware
        .iter()
        .all(|e| e.kind == EventType::Hardware && e.vee.as_ref().map(|v| v.as_str()) == Some(&id)));
    assert!(
        hardware.windows(2).all(|w| w[0].t0 <= w[1].t0),
        "oldest first"
    );
    let first_end = hardware[0].t0 + hardware[0].dt;
    let since =
        s.a.vee_monitoring(&id, Some(EventType::Hardware), Some(first_end + 1));
    let since = since.await.expect("kept").events;
    assert!(
        !since.contains(&hardware[0]) && since.contains(&hardware[1]),
        "`from` leaves out what ended before it"
    );
    let states: Vec<Value> =
        s.a.vee_monitoring(&id, Some(EventType::State), None)
            .await
            .expect("kept")
            .events
            .iter()
            .map(|e| serde_json::to_value(&e.measurements[0].value).expect("a value"))
            .collect();
    assert_eq!(states, ["DEFINED", "INITIAL", "ACTIVE"]);
    let all =
        s.a.vee_monitoring(&id, None, None)
            .await
            .expect("kept")
            .events;
    assert!(
        all.iter().any(|e| e.kind == EventType::Probe),
        "what the SM put about it too"
    );

    assert_eq!(
        s.b.vee_monitoring(&id, None, None)
            .await
            .expect_err("not sm-b's")
            .status(),
        Some(403)
    );
    let path = format!("/vmi/v1/vees/{id}/monitoring?type=CPU");
    let (status, _, body) =
        s.a.raw_request(reqwest::Method::GET, &path, None, Vec::new())
            .await
            .expect("answered");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("type"),
        "the parameter is named"
    );
}

#[tokio::test]
async fn a_vees_console_is_its_owners_to_read_within_bounds() {
    let s = Server::start().await;
    let id = init_one(&s.a, small("db")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    // The sim driver keeps no console: there is nothing to read, and that is no error.
    let tail =
        s.a.console_tail(&id, 1024)
            .await
            .expect("the owner reads it");
    assert!(tail.is_empty(), "{tail:?}");
    assert_eq!(
        s.b.console_tail(&id, 1024)
            .await
            .expect_err("not sm-b's")
            .status(),
        Some(403)
    );
    for bad in ["0", "1048577", "-1", "lots"] {
        let path = format!("/vmi/v1/vees/{id}/console?bytes={bad}");
        let (status, _, body) =
            s.a.raw_request(reqwest::Method::GET, &path, None, Vec::new())
                .await
                .expect("answered");
        assert_eq!(
            status,
            400,
            "bytes={bad}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            String::from_utf8_lossy(&body).contains("bytes"),
            "the parameter is named"
        );
    }
}
