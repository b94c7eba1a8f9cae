//! The client against a stand-in VEEM: what goes on the wire, and what comes back.

// A failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod fake;

use std::sync::Mutex;

use axum::http::Method;
use fake::Fake;
use serde_json::json;
use veem_api::{
    InitializeRequest, MigrateRequest, Order, PatchApplied, PatchRequest, UpdateStateRequest,
};
use veem_client::{Client, ClientError, ListQuery, OvfQuery};
use veem_model::{ControlAction, InitModel, VeeDescriptor, VmiState};

const TOKEN: &str = "secret-token";

fn vee_json(id: &str, state: &str) -> serde_json::Value {
    json!({
        "id": id, "name": "db", "owner": "sm-a", "state": state, "veem_state": "ACTIVE",
        "host": "h1", "site": "local", "descriptor": {"name": "db", "cpu": 2, "memory_mb": 1024},
        "generated": {"nics": []}, "tags": ["database"], "created_ms": 1, "updated_ms": 2
    })
}

fn problem_json(status: u16, code: &str, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "about:blank", "title": "Refused", "status": status, "detail": detail, "code": code
    }))
    .unwrap()
}

/// Bytes that are not all alike, so a reordering or a lost chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 2_463_534_242;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn setup() -> (Fake, Client) {
    let (fake, base) = Fake::start().await;
    let client = Client::new(&base, TOKEN).unwrap();
    (fake, client)
}

#[tokio::test]
async fn initialize_posts_the_request_as_json_with_the_bearer_token() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::POST,
        "/vmi/v1/vees/initialize",
        201,
        json!({"vees": [{"id": "vee-00000001", "state": "DEFINED", "generated": {"nics": []}}]}),
    );
    let req = InitializeRequest {
        model: InitModel::Twophase,
        count: 1,
        descriptor: VeeDescriptor::minimal(2, 1024),
    };
    let answer = client.initialize(&req).await.unwrap();
    assert_eq!(answer.vees.len(), 1);
    assert_eq!(answer.vees[0].id, "vee-00000001");
    assert_eq!(answer.vees[0].state, VmiState::Defined);

    let seen = fake.one();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.header("authorization"), Some("Bearer secret-token"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let body = seen.json();
    assert_eq!(body["model"], "TWOPHASE");
    assert_eq!(body["count"], 1);
    assert_eq!(body["descriptor"]["cpu"], 2);
    assert_eq!(body["descriptor"]["memory_mb"], 1024);
}

#[tokio::test]
async fn initialize_ovf_sends_the_envelope_and_its_query() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::POST,
        "/vmi/v1/vees/initialize",
        201,
        json!({"vees": [
            {"id": "vee-00000001", "state": "DEFINED", "generated": {"nics": []}},
            {"id": "vee-00000002", "state": "DEFINED", "generated": {"nics": []}}
        ]}),
    );
    let envelope = "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">é</Envelope>";
    let q = OvfQuery {
        model: InitModel::Twophase,
        count: 2,
        tags: vec!["web".into(), "front".into()],
        anti_affinity: vec!["web".into()],
        configuration: Some("big one".into()),
    };
    let answer = client
        .initialize_ovf(envelope.to_owned(), &q)
        .await
        .unwrap();
    assert_eq!(answer.vees.len(), 2);

    let seen = fake.one();
    assert_eq!(seen.path, "/vmi/v1/vees/initialize");
    assert_eq!(seen.header("content-type"), Some("application/ovf+xml"));
    assert_eq!(
        seen.query.as_deref(),
        Some("model=TWOPHASE&count=2&tags=web%2Cfront&anti_affinity=web&configuration=big+one")
    );
    assert_eq!(seen.body, envelope.as_bytes());
}

#[tokio::test]
async fn a_problem_answer_becomes_an_api_error_with_code_and_status() {
    let (fake, client) = setup().await;
    fake.answer(
        Method::POST,
        "/vmi/v1/vees/initialize",
        409,
        "application/problem+json",
        problem_json(409, "insufficient_resources", "no host has 12000 MB free"),
    );
    let req = InitializeRequest {
        model: InitModel::Twophase,
        count: 3,
        descriptor: VeeDescriptor::minimal(1, 12000),
    };
    let error = client.initialize(&req).await.unwrap_err();
    assert_eq!(error.code(), Some("insufficient_resources"));
    assert_eq!(error.status(), Some(409));
    match &error {
        ClientError::Api(problem) => assert_eq!(problem.detail, "no host has 12000 MB free"),
        other => panic!("expected an api error, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "Refused (insufficient_resources): no host has 12000 MB free"
    );
}

#[tokio::test]
async fn an_answer_without_a_problem_becomes_an_http_error() {
    let (fake, client) = setup().await;
    fake.answer(
        Method::GET,
        "/vmi/v1/hosts",
        502,
        "text/html",
        b"<h1>bad gateway</h1>".to_vec(),
    );
    let error = client.list_hosts().await.unwrap_err();
    match &error {
        ClientError::Http { status, body } => {
            assert_eq!(*status, 502);
            assert_eq!(body, "<h1>bad gateway</h1>");
        }
        other => panic!("expected an http error, got {other:?}"),
    }
    assert_eq!(error.code(), None);
    assert_eq!(error.status(), Some(502));
}

#[tokio::test]
async fn a_2xx_answer_that_is_not_the_promised_shape_is_a_decode_error() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::GET,
        "/vmi/v1/vees/vee-00000001",
        200,
        json!({"id": 3}),
    );
    let error = client.get_vee("vee-00000001").await.unwrap_err();
    assert!(matches!(error, ClientError::Decode(_)), "{error:?}");
    assert!(
        error.to_string().contains("/vmi/v1/vees/vee-00000001"),
        "{error}"
    );
}

#[tokio::test]
async fn submit_and_update_state_carry_their_batches() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::POST,
        "/vmi/v1/vees/submit",
        200,
        json!({"submitted": ["vee-00000001"],
               "failed": [{"id": "vee-00000002", "error": "wrong_state", "detail": "ACTIVE"}]}),
    );
    fake.answer_json(
        Method::POST,
        "/vmi/v1/vees/update-state",
        200,
        json!({"applied": ["vee-00000002", "vee-00000001"], "failed": []}),
    );
    let ids = vec!["vee-00000001".to_owned(), "vee-00000002".to_owned()];
    let submitted = client.submit(&ids).await.unwrap();
    assert_eq!(submitted.submitted, vec!["vee-00000001"]);
    assert_eq!(submitted.failed[0].id, "vee-00000002");
    assert_eq!(submitted.failed[0].error, "wrong_state");

    let req = UpdateStateRequest {
        order: Order::Set,
        ids: ids.iter().rev().cloned().collect(),
        action: ControlAction::Suspend,
        timeout_ms: Some(1500),
    };
    let applied = client.update_state(&req).await.unwrap();
    assert_eq!(applied.applied, vec!["vee-00000002", "vee-00000001"]);

    let seen = fake.seen();
    assert_eq!(
        seen[0].json(),
        json!({"ids": ["vee-00000001", "vee-00000002"]})
    );
    assert_eq!(
        seen[1].json(),
        json!({"order": "set", "ids": ["vee-00000002", "vee-00000001"],
               "action": "SUSPEND", "timeout_ms": 1500})
    );
}

#[tokio::test]
async fn list_all_vees_follows_next_with_the_same_filters() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::GET,
        "/vmi/v1/vees?state=ACTIVE&tag=database&limit=2",
        200,
        json!({"vees": [vee_json("vee-00000001", "ACTIVE"), vee_json("vee-00000002", "ACTIVE")],
               "next": "vee-00000002"}),
    );
    fake.answer_json(
        Method::GET,
        "/vmi/v1/vees?state=ACTIVE&tag=database&limit=2&after=vee-00000002",
        200,
        json!({"vees": [vee_json("vee-00000003", "ACTIVE")], "next": null}),
    );
    let q = ListQuery {
        state: Some(VmiState::Active),
        tag: Some("database".into()),
        limit: Some(2),
        after: None,
    };
    let vees = client.list_all_vees(&q).await.unwrap();
    let ids: Vec<_> = vees.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["vee-00000001", "vee-00000002", "vee-00000003"]);
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn a_page_that_does_not_advance_ends_the_listing_with_an_error() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::GET,
        "/vmi/v1/vees",
        200,
        json!({"vees": [], "next": "vee-00000001"}),
    );
    let error = client
        .list_all_vees(&ListQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Decode(_)), "{error:?}");
    assert_eq!(
        fake.seen().len(),
        2,
        "one page, and the one that repeated it"
    );
    assert_eq!(fake.seen()[0].query, None, "no filters, no query");
}

#[tokio::test]
async fn single_vee_routes_use_their_methods_and_encode_ids() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::GET,
        "/vmi/v1/vees/a%2Fb",
        200,
        vee_json("a/b", "ACTIVE"),
    );
    fake.answer_json(
        Method::PATCH,
        "/vmi/v1/vees/vee-00000001",
        200,
        json!({"vee": vee_json("vee-00000001", "ACTIVE"), "applied": "live"}),
    );
    fake.answer_json(
        Method::POST,
        "/vmi/v1/vees/vee-00000001/migrate",
        200,
        vee_json("vee-00000001", "ACTIVE"),
    );
    fake.answer(
        Method::DELETE,
        "/vmi/v1/vees/vee-00000001",
        204,
        "text/plain",
        vec![],
    );
    fake.answer_json(
        Method::GET,
        "/vmi/v1/vees/vee-00000001/events",
        200,
        json!({"events": [{"vee": "vee-00000001", "t_ms": 5, "from": "DEFINED", "to": "ACTIVE",
                           "veem_state": "ACTIVE", "host": "h1"}]}),
    );

    assert_eq!(client.get_vee("a/b").await.unwrap().id, "a/b");
    let patched = client
        .patch_vee(
            "vee-00000001",
            &PatchRequest {
                memory_mb: Some(8192),
                cpu: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.applied, PatchApplied::Live);
    let migrated = client
        .migrate_vee(
            "vee-00000001",
            &MigrateRequest {
                host: Some("h2".into()),
                live: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(migrated.id, "vee-00000001");
    client.purge_vee("vee-00000001").await.unwrap();
    let events = client.vee_events("vee-00000001").await.unwrap();
    assert_eq!(events.events[0].to, VmiState::Active);

    let seen = fake.seen();
    let calls: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET", "/vmi/v1/vees/a%2Fb"),
            ("PATCH", "/vmi/v1/vees/vee-00000001"),
            ("POST", "/vmi/v1/vees/vee-00000001/migrate"),
            ("DELETE", "/vmi/v1/vees/vee-00000001"),
            ("GET", "/vmi/v1/vees/vee-00000001/events"),
        ]
    );
    assert_eq!(seen[1].json(), json!({"memory_mb": 8192}));
    assert_eq!(seen[2].json(), json!({"host": "h2", "live": true}));
    assert!(seen
        .iter()
        .all(|s| s.header("authorization") == Some("Bearer secret-token")));
}

#[tokio::test]
async fn push_image_streams_the_exact_bytes_of_the_file_with_a_length() {
    let (fake, client) = setup().await;
    fake.answer_json(
        Method::PUT,
        "/vmi/v1/images/tiny",
        201,
        json!({"name": "tiny", "format": "raw", "size_bytes": 3_000_001, "owner": "sm-a",
               "created_ms": 7}),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.img");
    let bytes = pattern(3_000_001);
    std::fs::write(&path, &bytes).unwrap();

    let reports = Mutex::new(Vec::new());
    let progress = |sent: u64, total: u64| reports.lock().unwrap().push((sent, total));
    let image = client
        .push_image("tiny", &path, Some(&progress))
        .await
        .unwrap();
    assert_eq!(image.name, "tiny");
    assert_eq!(image.size_bytes, 3_000_001);

    let seen = fake.one();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.header("content-length"), Some("3000001"));
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_eq!(
        seen.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(seen.header("authorization"), Some("Bearer secret-token"));
    assert!(
        seen.body == bytes,
        "the server received other bytes than the file's"
    );

    let reports = reports.into_inner().unwrap();
    assert!(
        reports.len() > 1,
        "a 3 MB upload reports more than once: {reports:?}"
    );
    assert!(
        reports.windows(2).all(|w| w[0].0 < w[1].0),
        "progress only grows"
    );
    assert!(reports.iter().all(|&(_, total)| total == 3_000_001));
    assert_eq!(reports.last(), Some(&(3_000_001, 3_000_001)));
}

#[tokio::test]
async fn push_image_of_a_missing_file_is_an_io_error_and_sends_nothing() {
    let (fake, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let error = client
        .push_image("tiny", &dir.path().join("absent"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Io(_)), "{error:?}");
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn image_routes_carry_names_and_bytes() {
    let (fake, client) = setup().await;
    let image = json!({"name": "tiny", "format": "qcow2", "size_bytes": 4, "owner": "admin",
                       "created_ms": 7});
    fake.answer_json(Method::PUT, "/vmi/v1/images/tiny", 201, image.clone());
    fake.answer_json(
        Method::GET,
        "/vmi/v1/images",
        200,
        json!({"images": [image.clone()]}),
    );
    fake.answer_json(Method::GET, "/vmi/v1/images/tiny", 200, image);
    fake.answer(
        Method::DELETE,
        "/vmi/v1/images/tiny",
        409,
        "application/problem+json",
        problem_json(409, "in_use", "vee-00000001 depends on it"),
    );

    let pushed = client
        .push_image_bytes("tiny", b"QFI\xfb".to_vec())
        .await
        .unwrap();
    assert_eq!(pushed.format, "qcow2");
    assert_eq!(client.list_images().await.unwrap().images.len(), 1);
    assert_eq!(client.get_image("tiny").await.unwrap().owner, "admin");
    let error = client.delete_image("tiny").await.unwrap_err();
    assert_eq!(error.code(), Some("in_use"));
    assert_eq!(fake.seen()[0].body, b"QFI\xfb");
}

#[tokio::test]
async fn download_disk_writes_the_exact_bytes() {
    let (fake, client) = setup().await;
    let disk = pattern(5_000_003);
    fake.answer(
        Method::GET,
        "/vmi/v1/vees/vee-00000001/disks/vda",
        200,
        "application/octet-stream",
        disk.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vda.qcow2");
    let written = client
        .download_disk("vee-00000001", "vda", &out)
        .await
        .unwrap();
    assert_eq!(written, 5_000_003);
    assert!(
        std::fs::read(&out).unwrap() == disk,
        "the file differs from the disk"
    );
}

#[tokio::test]
async fn a_refused_download_leaves_no_file() {
    let (fake, client) = setup().await;
    fake.answer(
        Method::GET,
        "/vmi/v1/images/tiny/data",
        404,
        "application/problem+json",
        problem_json(404, "not_found", "no image tiny"),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.img");
    let error = client.image_data("tiny", &out).await.unwrap_err();
    assert_eq!(error.code(), Some("not_found"));
    assert_eq!(error.status(), Some(404));
    assert!(!out.exists());
}

#[tokio::test]
async fn hosts_are_listed_and_disabled() {
    let (fake, client) = setup().await;
    let host = json!({"id": "h1", "state": "DISABLED", "driver": "sim", "agent": "in-process",
                      "capacity": {"cpus": 8, "memory_mb": 16384},
                      "used": {"cpus": 2, "memory_mb": 1024},
                      "vees": ["vee-00000001"], "last_seen_ms": 9});
    fake.answer_json(
        Method::GET,
        "/vmi/v1/hosts",
        200,
        json!({"hosts": [host.clone()]}),
    );
    fake.answer_json(Method::PATCH, "/vmi/v1/hosts/h1", 200, host);
    assert_eq!(client.list_hosts().await.unwrap().hosts[0].capacity.cpus, 8);
    let disabled = client.set_host_enabled("h1", false).await.unwrap();
    assert_eq!(disabled.vees, vec!["vee-00000001"]);
    assert_eq!(fake.seen()[1].json(), json!({"enabled": false}));
}

#[tokio::test]
async fn raw_request_returns_the_answer_uninterpreted() {
    let (fake, client) = setup().await;
    let problem = problem_json(400, "malformed_descriptor", "cpu: missing");
    fake.answer(
        Method::POST,
        "/vmi/v1/vees/initialize",
        400,
        "application/problem+json",
        problem.clone(),
    );
    let (status, content_type, body) = client
        .raw_request(
            Method::POST,
            "/vmi/v1/vees/initialize?model=BESTEFFORT",
            Some("application/json"),
            b"{\"model\": ".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body, problem);
    let seen = fake.one();
    assert_eq!(seen.query.as_deref(), Some("model=BESTEFFORT"));
    assert_eq!(seen.body, b"{\"model\": ");
    assert_eq!(seen.header("authorization"), Some("Bearer secret-token"));
}

#[tokio::test]
async fn an_empty_token_sends_no_authorization() {
    let (fake, base) = Fake::start().await;
    let client = Client::new(&base, "").unwrap();
    fake.answer(
        Method::GET,
        "/vmi/v1/images",
        401,
        "application/problem+json",
        problem_json(401, "unauthenticated", "no bearer token"),
    );
    let error = client.list_images().await.unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert_eq!(fake.one().header("authorization"), None);
}

#[tokio::test]
async fn an_unreachable_veem_is_named_in_the_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new(&base, TOKEN).unwrap();
    let error = client.list_hosts().await.unwrap_err();
    assert!(matches!(error, ClientError::Transport(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("cannot reach veem at {base}: connection refused")
    );
    assert_eq!(error.code(), None);
    assert_eq!(error.status(), None);
}
