//! Accounting through the VMI: listeners, records pushed to a real HTTP listener of the test's
//! own at their interval, and the records read back.

use std::time::Duration;

use serde_json::Value;
use veem_model::{ControlAction as A, VmiState};

use crate::harness::*;

/// The records of one VEE among a listener's items, in the order they came.
pub(crate) fn records_of(items: &[(u64, Value)], id: &str) -> Vec<(u64, Value)> {
    items
        .iter()
        .filter(|(_, r)| r["vee"] == id)
        .cloned()
        .collect()
}

pub(crate) fn field(record: &Value, name: &str) -> u64 {
    record[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {record}"))
}

#[tokio::test]
async fn records_come_at_exactly_the_interval_also_when_nothing_changes() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let idle = init_one(&s.a, small("idle")).await;
    let before = wall_ms();
    s.a.listen(&[&idle], 200, &listener.url)
        .await
        .expect("registered");
    let items = listener
        .wait_for("four records", Duration::from_secs(10), |items| {
            records_of(items, &idle).len() >= 4
        })
        .await;
    let records = records_of(&items, &idle);
    let first_t0 = field(&records[0].1, "t0");
    assert!(
        (before..=wall_ms()).contains(&first_t0),
        "the first interval starts at the registration"
    );
    for (k, (arrived, record)) in records.iter().enumerate() {
        let t0 = field(record, "t0");
        assert_eq!(t0, first_t0 + 200 * k as u64, "on the grid: {record}");
        assert_eq!(field(record, "dt"), 200);
        assert!(
            *arrived + 5 >= t0 + 200,
            "not before its interval ends (wall clocks may differ by a ms or so)"
        );
        assert_eq!(record["state"], "DEFINED");
        assert_eq!(record["host"], Value::Null);
        assert_eq!(
            (field(record, "cpu_time_ms"), field(record, "active_ms")),
            (0, 0)
        );
        assert_eq!((field(record, "cpu"), field(record, "memory_mb")), (1, 512));
    }
}

#[tokio::test]
async fn an_active_vee_is_counted_active_on_its_host() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let web = init_one(&s.a, small("web")).await;
    ctl_ok(&s.a, A::Activate, &[&web]).await;
    let host = get(&s.a, &web).await.host.expect("placed");
    // It ran before the registration, and a health check saw it; that CPU time is no
    // interval's.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.a.listen(&[&web], 300, &listener.url)
        .await
        .expect("registered");
    let items = listener
        .wait_for("two records", Duration::from_secs(10), |items| {
            records_of(items, &web).len() >= 2
        })
        .await;
    for (_, record) in records_of(&items, &web) {
        assert_eq!(record["state"], "ACTIVE");
        assert_eq!(record["host"], host.as_str());
        assert_eq!(
            field(&record, "active_ms"),
            300,
            "ACTIVE all along: {record}"
        );
        // A sim VEE uses 25% of its vCPU; the figures are up to one health check (200 ms) old,
        // so an interval counts at most (300 + 200) ms of running.
        assert!(
            field(&record, "cpu_time_ms") <= (300 + 200) * 25 / 100,
            "the CPU time of the interval only: {record}"
        );
    }
}

#[tokio::test]
async fn registering_again_changes_the_interval_and_removal_stops_the_records() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let id = init_one(&s.a, small("db")).await;
    s.a.listen(&[&id], 150, &listener.url)
        .await
        .expect("registered");
    listener
        .wait_for("a record", Duration::from_secs(10), |items| {
            !records_of(items, &id).is_empty()
        })
        .await;
    s.a.listen(&[&id], 400, &listener.url)
        .await
        .expect("registered again");
    let changed_at = wall_ms();
    let items = listener
        .wait_for(
            "two records at the new interval",
            Duration::from_secs(10),
            |items| {
                records_of(items, &id)
                    .iter()
                    .filter(|(_, r)| field(r, "dt") == 400)
                    .count()
                    >= 2
            },
        )
        .await;
    let late_short = records_of(&items, &id)
        .iter()
        .filter(|(at, r)| *at > changed_at + 100 && field(r, "dt") == 150)
        .count();
    assert_eq!(late_short, 0, "one interval per caller and VEE");

    s.a.unlisten(&[&id]).await.expect("removed");
    let removed_at = wall_ms();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after: Vec<_> = records_of(&listener.items(), &id)
        .into_iter()
        .filter(|(at, _)| *at > removed_at + 100)
        .collect();
    assert!(after.is_empty(), "no record after removal: {after:?}");
    // Removing what one does not listen to is no error.
    s.a.unlisten(&[&id]).await.expect("ignored");
}

#[tokio::test]
async fn unknown_ids_and_another_principals_vee_fail_the_whole_call() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let mine = init_one(&s.a, small("mine")).await;
    let theirs = init_one(&s.b, small("theirs")).await;
    let cases = [
        (vec![mine.as_str(), "vee-99999999"], "not_found"),
        (vec![mine.as_str(), theirs.as_str()], "access_denied"),
    ];
    for (ids, code) in cases {
        let error =
            s.a.listen(&ids, 200, &listener.url)
                .await
                .expect_err("refused");
        assert_eq!(error.code(), Some(code), "{ids:?}");
        let error = s.a.unlisten(&ids).await.expect_err("refused");
        assert_eq!(error.code(), Some(code), "{ids:?}");
    }
    for (interval, callback, field) in [
        (10, listener.url.as_str(), "interval_ms"),
        (200, "ftp://example.org/x", "callback"),
    ] {
        let error =
            s.a.listen(&[&mine], interval, callback)
                .await
                .expect_err("refused");
        assert_eq!(error.code(), Some("malformed_request"));
        assert!(error.to_string().contains(field), "{error}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(listener.items().is_empty(), "nothing was registered");
}

#[tokio::test]
async fn a_listener_that_was_down_gets_the_backlog_and_records_can_be_read_back() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let id = init_one(&s.a, small("db")).await;
    listener.set_down(true);
    s.a.listen(&[&id], 150, &listener.url)
        .await
        .expect("registered");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(listener.items().is_empty(), "it was down");
    // Everything is kept meanwhile, and can be read.
    let stored =
        s.a.vee_accounting(&id, None, None)
            .await
            .expect("readable")
            .records;
    assert!(stored.len() >= 5, "{stored:?}");
    listener.set_down(false);
    let items = listener
        .wait_for("the backlog", Duration::from_secs(30), |items| {
            records_of(items, &id).len() > stored.len()
        })
        .await;
    let t0s: Vec<u64> = records_of(&items, &id)
        .iter()
        .map(|(_, r)| field(r, "t0"))
        .collect();
    let first = t0s[0];
    assert_eq!(first, stored[0].t0, "from the first record on");
    for (k, t0) in t0s.iter().enumerate() {
        assert_eq!(
            *t0,
            first + 150 * k as u64,
            "in order, none missing: {t0s:?}"
        );
    }
    // A time range reads part of them.
    let some =
        s.a.vee_accounting(&id, Some(stored[1].t0), Some(stored[3].t0))
            .await
            .expect("readable")
            .records;
    assert_eq!(
        some.iter().map(|r| r.t0).collect::<Vec<_>>(),
        [stored[1].t0, stored[2].t0]
    );
    assert_eq!(
        s.b.vee_accounting(&id, None, None)
            .await
            .expect_err("not sm-b's")
            .code(),
        Some("access_denied")
    );
}

#[tokio::test]
async fn registrations_survive_a_restart_of_the_veem() {
    let mut s = Server::start().await;
    let listener = Listener::start().await;
    let id = init_one(&s.a, small("db")).await;
    s.a.listen(&[&id], 200, &listener.url)
        .await
        .expect("registered");
    let before = listener
        .wait_for("a record", Duration::from_secs(10), |items| {
            !records_of(items, &id).is_empty()
        })
        .await;
    let grid = field(&records_of(&before, &id)[0].1, "t0") % 200;
    s.kill9();
    s.restart().await;
    let restarted_at = wall_ms();
    let items = listener
        .wait_for(
            "records after the restart",
            Duration::from_secs(10),
            |items| {
                records_of(items, &id)
                    .iter()
                    .filter(|(at, _)| *at > restarted_at)
                    .count()
                    >= 2
            },
        )
        .await;
    for (_, record) in records_of(&items, &id) {
        assert_eq!(field(&record, "t0") % 200, grid, "the same grid: {record}");
    }
}

#[tokio::test]
async fn destroy_sends_a_last_record_and_purge_removes_them_all() {
    let s = Server::start().await;
    let listener = Listener::start().await;
    let id = init_one(&s.a, small("db")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    s.a.listen(&[&id], 60_000, &listener.url)
        .await
        .expect("registered");
    ctl_ok(&s.a, A::Destroy, &[&id]).await;
    let items = listener
        .wait_for("the last record", Duration::from_secs(10), |items| {
            !records_of(items, &id).is_empty()
        })
        .await;
    let last = &records_of(&items, &id)[0].1;
    assert_eq!(last["state"], "DESTROYED");
    assert!(field(last, "dt") < 60_000, "up to the DESTROY: {last}");
    assert_eq!(state_of(&s.a, &id).await, VmiState::Destroyed);
    assert_eq!(
        s.a.vee_accounting(&id, None, None)
            .await
            .expect("readable")
            .records
            .len(),
        1
    );
    s.a.purge_vee(&id).await.expect("purged");
    assert_eq!(
        s.a.vee_accounting(&id, None, None)
            .await
            .expect_err("gone")
            .code(),
        Some("not_found")
    );
}

/// The (vee, t0) of each item: a record's idempotency key for one listener.
fn keys(items: &[(u64, Value)]) -> Vec<(String, u64)> {
    items
        .iter()
        .map(|(_, r)| {
            (
                r["vee"].as_str().unwrap_or_default().to_owned(),
                field(r, "t0"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_kill_9_during_pushes_loses_no_record_a_listener_saw_and_repeats_none_it_acknowledged() {
    let mut s = Server::start().await;
    let listener = Listener::start().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(init_one(&s.a, small(&format!("acct-{n}"))).await);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.a.listen(&id_refs, 150, &listener.url)
        .await
        .expect("registered");
    listener
        .wait_for("a few records of each", Duration::from_secs(10), |items| {
            ids.iter().all(|id| records_of(items, id).len() >= 3)
        })
        .await;

    // The next POST is held unanswered. A POST goes out once the acknowledgement of the POST
    // before the last is recorded, and the last one's is being recorded meanwhile (a commit:
    // milliseconds; a second is plenty). Then everything acknowledged is settled, and the kill
    // lands with one POST's records sent and not acknowledged.
    listener.set_hold(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listener.held().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no POST came to hold");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.kill9();
    let acknowledged = listener.items();
    let unacknowledged = listener.held();
    listener.set_hold(false);

    // Everything the listener saw, acknowledged or not, was stored before it was sent.
    let seen: Vec<(String, u64)> = keys(&acknowledged)
        .into_iter()
        .chain(keys(&unacknowledged))
        .collect();
    s.restart().await;
    for id in &ids {
        let stored: Vec<u64> =
            s.a.vee_accounting(id, None, None)
                .await
                .expect("readable")
                .records
                .iter()
                .map(|r| r.t0)
                .collect();
        for (vee, t0) in seen.iter().filter(|(vee, _)| vee == id) {
            assert!(
                stored.contains(t0),
                "{vee} at {t0} reached the listener but is not stored: {stored:?}"
            );
        }
    }

    // The outbox resumes: the records the listener did not acknowledge come again, and new
    // ones follow, on the same grid.
    let restarted_at = wall_ms();
    let after = listener
        .wait_for(
            "the unacknowledged records again, and new ones",
            Duration::from_secs(20),
            |items| {
                let again = keys(&items[acknowledged.len()..]);
                keys(&unacknowledged).iter().all(|k| again.contains(k))
                    && ids.iter().all(|id| {
                        records_of(&items[acknowledged.len()..], id)
                            .iter()
                            .any(|(at, _)| *at > restarted_at + 300)
                    })
            },
        )
        .await;
    assert_eq!(
        keys(&after[..acknowledged.len()]),
        keys(&acknowledged),
        "what came before the kill is as it was"
    );
    let later = keys(&after[acknowledged.len()..]);
    for key in keys(&acknowledged) {
        assert!(
            !later.contains(&key),
            "{key:?} was acknowledged before the kill and came again"
        );
    }
    let mut unique = later.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), later.len(), "nothing twice after the restart");
}
