//! Requests as an attacker would send them: too large, too many, too deep, with tokens that are
//! missing, cut short or of the wrong scheme, reaching for files through names. Each gets a
//! clear 4xx problem document before any work is done, nothing changes, and no answer is a 5xx.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

/// Sends `body` as `content_type` with `token` and answers the status and the problem's code.
async fn send(
    s: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Option<String>) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}/vmi/v1{path}", s.url))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    assert!(!status.is_server_error(), "{path}: a 5xx: {status}");
    let problem = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_client_error() {
        assert!(
            problem,
            "{path}: {status} is not a problem document: {body}"
        );
    }
    (status, body["code"].as_str().map(str::to_owned))
}

/// POSTs `body` as `content_type` with sm-a's token.
async fn post_as_a(
    s: &Server,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Option<String>) {
    let token = format!("Bearer {TOKEN_A}");
    send(s, Method::POST, path, Some(&token), content_type, body).await
}

async fn post_json(
    s: &Server,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, Option<String>) {
    let bytes = serde_json::to_vec(&body).expect("json");
    post_as_a(s, path, "application/json", bytes).await
}

async fn nothing_defined(s: &Server) {
    let vees = s
        .ops
        .list_all_vees(&Default::default())
        .await
        .expect("list");
    assert!(vees.is_empty(), "nothing may be defined: {vees:?}");
}

fn descriptor() -> serde_json::Value {
    json!({"name": "x", "cpu": 1, "memory_mb": 64})
}

#[tokio::test]
async fn an_oversize_body_is_413_and_defines_nothing() {
    let s = Server::start().await;
    let mut d = descriptor();
    d["raw"] = json!("r".repeat(veem_api::MAX_REQUEST_BODY_BYTES + 1));
    let (status, code) = post_json(
        &s,
        "/vees/initialize",
        json!({"model": "BESTEFFORT", "descriptor": d}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code.as_deref(), Some("payload_too_large"));
    let envelope = format!(
        "<Envelope>{}</Envelope>",
        " ".repeat(veem_api::MAX_REQUEST_BODY_BYTES)
    );
    let (status, _) = post_as_a(
        &s,
        "/vees/initialize",
        "application/ovf+xml",
        envelope.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    nothing_defined(&s).await;
}

#[tokio::test]
async fn batches_over_the_limit_are_refused_before_any_work() {
    let s = Server::start().await;
    let mine = init_one(&s.a, small("mine")).await;
    // One more id than allowed, every one of them the caller's own VEE: a batch that would
    // otherwise be accepted.
    let ids = vec![mine.clone(); veem_api::MAX_IDS_PER_CALL + 1];
    let cases = [
        ("/vees/submit", json!({"ids": ids})),
        (
            "/vees/update-state",
            json!({"order": "set", "ids": ids, "action": "ACTIVATE"}),
        ),
        (
            "/accounting/listeners",
            json!({"ids": ids, "interval_ms": 1000, "callback": "http://127.0.0.1:9/"}),
        ),
        ("/accounting/listeners/remove", json!({"ids": ids})),
    ];
    for (path, body) in cases {
        let (status, code) = post_json(&s, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(code.as_deref(), Some("malformed_request"), "{path}");
    }
    assert_eq!(state_of(&s.a, &mine).await, veem_model::VmiState::Defined);
    // The limit itself is fine, and an id named more than once is one VEE submitted once (it
    // used to wait forever for its own lock).
    let ids = vec![mine.clone(); veem_api::MAX_IDS_PER_CALL];
    let answer = s.a.submit(&ids).await.expect("a batch at the limit");
    assert_eq!(answer.submitted, vec![mine.clone()]);
    assert!(answer.failed.is_empty(), "{:?}", answer.failed);
    wait_state(&s.a, &mine, veem_model::VmiState::Active).await;
}

#[tokio::test]
async fn absurd_counts_are_400_and_define_nothing() {
    let s = Server::start().await;
    for count in [
        json!(0),
        json!(10_001),
        json!(u32::MAX),
        json!(u64::MAX),
        json!(-1),
    ] {
        let body = json!({"model": "BESTEFFORT", "count": count, "descriptor": descriptor()});
        let (status, _) = post_json(&s, "/vees/initialize", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "count {count}");
    }
    for count in ["0", "10001", "4294967296", "-1", "1e9", "many"] {
        let envelope = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/testdata/ovf/govmomi/ttylinux.ovf"),
        )
        .expect("a testdata envelope");
        let (status, _) = post_as_a(
            &s,
            &format!("/vees/initialize?count={count}"),
            "application/ovf+xml",
            envelope,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "OVF count {count}");
    }
    nothing_defined(&s).await;
}

#[tokio::test]
async fn deep_json_and_xml_are_400() {
    let s = Server::start().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // A measurement's value may be a number or a string: the one place where the parser looks
    // into a value before it knows its type, so the depth limit is what stops it.
    let body = format!(
        r#"[{{"type":"PROBE","t0":1,"dt":0,"measurements":[{{"fqn":"a.b","value":{deep}}}]}}]"#
    );
    let (status, _) = post_as_a(&s, "/monitoring", "application/json", body.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = format!(
        r#"{{"model":"BESTEFFORT","descriptor":{{"name":"x","cpu":1,"memory_mb":64,"context":{deep}}}}}"#
    );
    let (status, code) = post_as_a(
        &s,
        "/vees/initialize",
        "application/json",
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code.as_deref(), Some("malformed_descriptor"));
    let body = format!(r#"{{"ids":{deep}}}"#);
    let (status, _) = post_as_a(&s, "/vees/submit", "application/json", body.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let xml = format!(
        "<Envelope>{}{}</Envelope>",
        "<a>".repeat(50_000),
        "</a>".repeat(50_000)
    );
    let (status, code) = post_as_a(
        &s,
        "/vees/initialize",
        "application/ovf+xml",
        xml.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code.as_deref(), Some("malformed_descriptor"));
    let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><Envelope>&lol2;</Envelope>"#;
    let (status, _) = post_as_a(
        &s,
        "/vees/initialize",
        "application/ovf+xml",
        billion_laughs.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    nothing_defined(&s).await;
}

#[tokio::test]
async fn oversize_headers_are_431() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Server::start().await;
    let address = s.url.trim_start_matches("http://").to_owned();
    let one_huge = format!("x-padding: {}\r\n", "p".repeat(1024 * 1024));
    let very_many: String = (0..500).map(|i| format!("x-h{i}: 1\r\n")).collect();
    for headers in [one_huge, very_many] {
        let mut socket = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connects");
        let request = format!(
            "GET /vmi/v1/vees HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN_A}\r\n{headers}\r\n"
        );
        // The server may answer and close before it has read all of it.
        let _ = socket.write_all(request.as_bytes()).await;
        let mut answer = vec![0u8; 64];
        let read = socket.read(&mut answer).await.expect("an answer");
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "headers of {} bytes: {answer}",
            headers.len()
        );
    }
    // The server is still there.
    assert!(s.a.list_all_vees(&Default::default()).await.is_ok());
}

#[tokio::test]
async fn tokens_missing_cut_short_or_of_another_scheme_are_401() {
    let s = Server::start().await;
    let basic = format!(
        "Basic {}",
        // "sm-a:<token>" in base64, by hand: no engine needed for a test this small.
        base64(format!("sm-a:{TOKEN_A}").as_bytes())
    );
    let cut = &TOKEN_A[..TOKEN_A.len() - 1];
    let refused = [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {cut}")),
        Some(format!("Bearer {TOKEN_A}x")),
        Some(format!("Bearer{TOKEN_A}")),
        Some(format!("Token {TOKEN_A}")),
        Some(TOKEN_A.to_owned()),
        Some(basic),
        Some(format!("Bearer {}", TOKEN_A.to_uppercase())),
    ];
    for token in refused {
        let (status, code) = send(
            &s,
            Method::GET,
            "/vees",
            token.as_deref(),
            "application/json",
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(code.as_deref(), Some("unauthenticated"), "{token:?}");
    }
    // The scheme's name is case-insensitive (RFC 9110); the token is not.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let token = format!("{scheme} {TOKEN_A}");
        let (status, _) = send(
            &s,
            Method::GET,
            "/vees",
            Some(&token),
            "application/json",
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}");
    }
}

#[tokio::test]
async fn names_never_reach_files_outside_their_store() {
    let s = Server::start().await;
    let mine = init_one(&s.a, small("mine")).await;
    let token = format!("Bearer {TOKEN_A}");
    let data_dir = s.data_dir();
    assert!(
        data_dir.join("veem.db").is_file(),
        "the store is there to be reached for"
    );
    let images = [
        "..%2F..%2Fveem.db",
        "..",
        "%2e%2e",
        ".hidden",
        "a%2Fb",
        "a%00b",
        "a%5Cb",
    ];
    for name in images {
        for (method, path) in [
            (Method::PUT, format!("/images/{name}")),
            (Method::GET, format!("/images/{name}")),
            (Method::GET, format!("/images/{name}/data")),
            (Method::DELETE, format!("/images/{name}")),
        ] {
            let (status, _) = send(
                &s,
                method.clone(),
                &path,
                Some(&token),
                "application/octet-stream",
                b"x".to_vec(),
            )
            .await;
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
                "{method} {path}: {status}"
            );
        }
    }
    for target in ["..%2F..%2F..%2Fveem.db", "..", "%2e%2e%2fveem.db", "vda%00"] {
        let response = reqwest::Client::new()
            .get(format!("{}/vmi/v1/vees/{mine}/disks/{target}", s.url))
            .header("authorization", &token)
            .send()
            .await
            .expect("answers");
        let status = response.status();
        assert!(status.is_client_error(), "disk {target}: {status}");
        let body = response.bytes().await.expect("body");
        assert!(
            !body.windows(15).any(|w| w == b"SQLite format 3"),
            "disk {target}: the answer holds bytes of the store"
        );
    }
    let (status, _) = post_json(
        &s,
        "/vees/initialize",
        json!({"model": "BESTEFFORT", "descriptor": {
            "name": "x", "cpu": 1, "memory_mb": 64,
            "disks": [{"source": "image:tiny", "target": "../../veem.db"}]}}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a disk target is a device name"
    );
}

/// Standard base64 with padding, enough to write a Basic credential.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
