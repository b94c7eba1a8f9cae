//! Accounting (sections 2.5.1 and 2.7.3 of the paper): a listener registered with an interval
//! gets a record at every multiple of the interval from its registration, whether or not
//! anything changed; each record is stored before it is sent; DESTROY sends a last one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use veem_model::{AccountingRecord, ControlAction as A, InitModel, VeeId, VmiState};
use veem_server::error::CoreError;
use veem_server::veem::now_ms;

use crate::support::*;

/// An HTTP listener on loopback that keeps every record it acknowledged, with the wall-clock
/// time it arrived.
pub struct Listener {
    pub url: String,
    got: Arc<Mutex<Vec<(u64, AccountingRecord)>>>,
}

impl Listener {
    pub async fn start() -> Self {
        let got: Arc<Mutex<Vec<(u64, AccountingRecord)>>> = Arc::default();
        let sink = got.clone();
        let app = axum::Router::new().route(
            "/accounting",
            post(move |body: bytes::Bytes| {
                let sink = sink.clone();
                async move {
                    let arrived = now_ms();
                    let records: Vec<AccountingRecord> =
                        serde_json::from_slice(&body).expect("a JSON array of records");
                    sink.lock()
                        .expect("not poisoned")
                        .extend(records.into_iter().map(|r| (arrived, r)));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}/accounting", socket.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(socket, app).await });
        Self { url, got }
    }

    /// The records of one VEE received so far, in the order they came.
    pub fn records(&self, id: &VeeId) -> Vec<(u64, AccountingRecord)> {
        self.got
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, r)| r.vee == *id)
            .cloned()
            .collect()
    }

    pub async fn wait_for(&self, id: &VeeId, count: usize) -> Vec<(u64, AccountingRecord)> {
        wait_until(&format!("{count} records of {id}"), || {
            let records = self.records(id);
            (records.len() >= count).then_some(records)
        })
        .await
    }
}

fn stored(site: &Site, id: &VeeId) -> Vec<AccountingRecord> {
    site.veem
        .accounting_records(&sm_a(), id, 0, u64::MAX)
        .expect("readable")
}

#[tokio::test]
async fn records_come_at_exact_multiples_of_the_interval_from_the_registration() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let listener = Listener::start().await;
    let id = site.define_one(small("idle")).await;
    let before = now_ms();
    site.veem
        .listen(&sm_a(), std::slice::from_ref(&id), 200, &listener.url)
        .await
        .expect("registered");
    let registered_by = now_ms();
    let received = listener.wait_for(&id, 4).await;

    let first_t0 = received[0].1.t0;
    assert!(
        (before..=registered_by).contains(&first_t0),
        "the first interval starts at the registration: {first_t0} not in [{before}, {registered_by}]"
    );
    for (k, (arrived, record)) in received.iter().enumerate() {
        assert_eq!(
            record.t0,
            first_t0 + 200 * k as u64,
            "on the grid: {record:?}"
        );
        assert_eq!(record.dt, 200);
        // Ticks are kept on the monotonic clock, t0 on the wall clock: they may differ by a ms.
        assert!(
            *arrived + 2 >= record.t0 + record.dt,
            "not sent before its interval ends: arrived {arrived}, {record:?}"
        );
        assert_eq!(
            (
                record.state,
                record.host.clone(),
                record.cpu,
                record.memory_mb
            ),
            (VmiState::Defined, None, 1, 512),
            "nothing changed, still a record"
        );
        assert_eq!((record.cpu_time_ms, record.active_ms), (0, 0));
    }
    // What a listener was sent was stored first.
    let stored = stored(&site, &id);
    for (_, record) in &received {
        assert!(stored.contains(record), "{record:?} is not stored");
    }
}

#[tokio::test]
async fn an_active_vee_is_counted_active_on_its_host_for_the_whole_interval() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let listener = Listener::start().await;
    let id = site.define_one(small("web")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    site.veem
        .listen(&sm_a(), std::slice::from_ref(&id), 200, &listener.url)
        .await
        .expect("registered");
    for (_, record) in listener.wait_for(&id, 2).await {
        assert_eq!(
            (record.state, record.host.clone(), record.active_ms),
            (VmiState::Active, Some(host_id("h1")), 200),
            "{record:?}"
        );
    }
}

#[tokio::test]
async fn destroy_sends_a_last_record_up_to_the_destroy_and_purge_removes_them_all() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let listener = Listener::start().await;
    let id = site.define_one(small("db")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    site.veem
        .listen(&sm_a(), std::slice::from_ref(&id), 60_000, &listener.url)
        .await
        .expect("registered");
    site.act_ok(A::Destroy, std::slice::from_ref(&id)).await;
    let destroyed_at = site.events(&id).pop().expect("events").t_ms;
    let received = listener.wait_for(&id, 1).await;
    let last = &received[0].1;
    assert_eq!((last.state, last.host.clone()), (VmiState::Destroyed, None));
    assert_eq!(
        last.t0 + last.dt,
        destroyed_at,
        "it ends at the DESTROY: {last:?}"
    );
    assert_eq!(stored(&site, &id), vec![last.clone()]);
    assert!(
        site.store.load().expect("loads").listeners.is_empty(),
        "the listener goes with the VEE"
    );

    site.veem.purge(&sm_a(), &id).await.expect("purged");
    assert!(matches!(
        site.veem.accounting_records(&sm_a(), &id, 0, u64::MAX),
        Err(CoreError::NotFound(_))
    ));
    let vee = id.clone();
    assert!(site
        .store
        .accounting(&vee, 0, u64::MAX)
        .expect("readable")
        .is_empty());
}

#[tokio::test]
async fn a_refused_registration_registers_nothing_and_removal_stops_the_records() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let listener = Listener::start().await;
    let mine = site.define_one(small("mine")).await;
    let theirs = site
        .define(&sm_b(), InitModel::Besteffort, 1, small("theirs"))
        .await[0]
        .id
        .clone();
    let cases: [(Vec<VeeId>, u64, &str, &str); 4] = [
        (
            vec![mine.clone(), theirs],
            200,
            &listener.url,
            "access_denied",
        ),
        (
            vec![mine.clone(), VeeId::from_seq(99_999_999)],
            200,
            &listener.url,
            "not_found",
        ),
        (vec![mine.clone()], 10, &listener.url, "malformed_request"),
        (
            vec![mine.clone()],
            200,
            "ftp://example.org/x",
            "malformed_request",
        ),
    ];
    for (ids, interval, callback, code) in cases {
        let refused = site
            .veem
            .listen(&sm_a(), &ids, interval, callback)
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{ids:?} {interval} {callback}");
    }
    assert!(
        site.store.load().expect("loads").listeners.is_empty(),
        "nothing registered"
    );

    site.veem
        .listen(&sm_a(), std::slice::from_ref(&mine), 100, &listener.url)
        .await
        .expect("registered");
    listener.wait_for(&mine, 2).await;
    site.veem
        .unlisten(&sm_a(), std::slice::from_ref(&mine))
        .await
        .expect("removed");
    let removed_at = now_ms();
    assert!(site.store.load().expect("loads").listeners.is_empty());
    // Four intervals later, no record was made after the removal (one built just before it,
    // at most a few ms ahead of its tick, may still arrive).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late: Vec<_> = stored(&site, &mine)
        .into_iter()
        .filter(|r| r.t0 + r.dt > removed_at + 50)
        .collect();
    assert!(late.is_empty(), "records after the removal: {late:?}");
}

#[tokio::test]
async fn a_record_counts_the_active_time_within_its_interval_to_the_ms() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let listener = Listener::start().await;
    let id = site.define_one(small("short")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    site.veem
        .listen(&sm_a(), std::slice::from_ref(&id), 500, &listener.url)
        .await
        .expect("registered");
    site.act_ok(A::Pause, std::slice::from_ref(&id)).await;
    let paused_at = site
        .events(&id)
        .iter()
        .find(|e| e.to == VmiState::Paused)
        .expect("paused")
        .t_ms;
    let received = listener.wait_for(&id, 2).await;
    let (first, second) = (&received[0].1, &received[1].1);
    assert!(first.t0 <= paused_at && paused_at < first.t0 + first.dt);
    assert_eq!(
        (first.state, first.host.clone(), first.active_ms),
        (VmiState::Paused, Some(host_id("h1")), paused_at - first.t0),
        "ACTIVE from the interval's start until the PAUSE: {first:?}"
    );
    assert_eq!(
        (second.state, second.active_ms),
        (VmiState::Paused, 0),
        "PAUSED all along: {second:?}"
    );
}

#[tokio::test]
async fn a_reserved_vee_is_accounted_with_no_host_as_the_vmi_shows_it() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let listener = Listener::start().await;
    let reserved = site
        .define(&sm_a(), InitModel::Twophase, 1, small("reserved"))
        .await;
    let id = reserved[0].id.clone();
    site.veem
        .listen(&sm_a(), std::slice::from_ref(&id), 200, &listener.url)
        .await
        .expect("registered");
    let (_, record) = listener.wait_for(&id, 1).await.remove(0);
    assert_eq!(
        (record.state, record.host.clone(), record.active_ms),
        (VmiState::Defined, None, 0),
        "{record:?}"
    );
}
