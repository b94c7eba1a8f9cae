//! `GET /metrics` of a real `veem serve` with sim hosts: the figures Prometheus scrapes are
//! those the VMI shows (VEEs by state, hosts' capacity and use), the request counters grow
//! with the calls made and are labelled by route template, and `metrics_token` is enforced.

use std::collections::HashMap;
use std::time::Duration;

use veem_client::ListQuery;
use veem_model::{ControlAction as A, InitModel, VmiState};
use veem_server::metrics::{parse_samples, series};

use crate::harness::*;

const METRICS_TOKEN: &str = "scrape-token";

/// Scrapes `/metrics` with `token` (if any); answers its status, content type and body.
async fn scrape_with(s: &Server, token: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", s.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.expect("the server answers");
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, answer.text().await.expect("a body"))
}

async fn scrape(s: &Server) -> HashMap<String, f64> {
    let (status, content_type, text) = scrape_with(s, Some(METRICS_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse_samples(&text)
}

fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = series(name, labels);
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no {key} among {:?}", samples.keys()))
}

#[tokio::test]
async fn a_scrape_shows_what_the_vmi_shows_and_counts_requests_by_route() {
    let s = Server::start_with(Setup {
        top_level_config: format!("metrics_token = \"{METRICS_TOKEN}\"\n"),
        ..Setup::default()
    })
    .await;

    // The token is asked for, as a problem+json 401, and nothing else is shown.
    for token in [None, Some("wrong")] {
        let (status, content_type, body) = scrape_with(&s, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(content_type, "application/problem+json");
        assert!(!body.contains("veem_"), "{body}");
    }

    // VEEs in every state: two DEFINED, one each ACTIVE, PAUSED, SUSPENDED and DESTROYED,
    // and one INITIAL that no host can take (more CPUs than any has).
    let ids = init(&s.a, InitModel::Besteffort, 6, small("m")).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs[..4]).await;
    ctl_ok(&s.a, A::Pause, &refs[1..2]).await;
    ctl_ok(&s.a, A::Suspend, &refs[2..3]).await;
    ctl_ok(&s.a, A::Destroy, &refs[3..4]).await;
    let mut huge = small("huge");
    huge.cpu = 64;
    let waiting = init_one(&s.a, huge).await;
    s.a.submit(std::slice::from_ref(&waiting))
        .await
        .expect("submit");
    assert_eq!(state_of(&s.a, &waiting).await, VmiState::Initial);

    let samples = scrape(&s).await;
    let mut total = 0;
    for state in VmiState::ALL {
        let listed = s
            .ops
            .list_all_vees(&ListQuery {
                state: Some(state),
                ..ListQuery::default()
            })
            .await
            .expect("list")
            .len();
        assert_eq!(
            value(&samples, "veem_vees", &[("state", state.as_str())]),
            listed as f64,
            "{state}"
        );
        total += listed;
    }
    assert_eq!(total, 7, "every VEE made is in one state");
    assert_eq!(value(&samples, "veem_pending_vees", &[]), 1.0);
    assert_eq!(value(&samples, "veem_leader", &[]), 1.0);

    let hosts = s.ops.list_hosts().await.expect("hosts").hosts;
    assert_eq!(hosts.len(), 3);
    let mut used_cpus = 0;
    for host in &hosts {
        let id = [("host", host.id.as_str())];
        let figures = [
            ("veem_host_cpus", u64::from(host.capacity.cpus)),
            ("veem_host_memory_mb", host.capacity.memory_mb),
            ("veem_host_used_cpus", u64::from(host.used.cpus)),
            ("veem_host_used_memory_mb", host.used.memory_mb),
            ("veem_host_vees", host.vees.len() as u64),
        ];
        for (name, expected) in figures {
            assert_eq!(value(&samples, name, &id), expected as f64, "{name} {id:?}");
        }
        assert_eq!(
            value(
                &samples,
                "veem_host_state",
                &[("host", host.id.as_str()), ("state", "up")]
            ),
            1.0
        );
        used_cpus += host.used.cpus;
    }
    // ACTIVE and PAUSED hold a host; SUSPENDED, DESTROYED and DEFINED do not.
    assert_eq!(used_cpus, 2);
    assert_eq!(value(&samples, "veem_site_used_cpus", &[]), 2.0);
    assert_eq!(value(&samples, "veem_hosts", &[("state", "up")]), 3.0);
    assert!(value(&samples, "veem_store_commit_duration_seconds_count", &[]) > 0.0);
    assert!(value(&samples, "veem_placement_duration_seconds_count", &[]) > 0.0);
    for push in ["accounting", "monitoring"] {
        value(&samples, "veem_push_queued_items", &[("push", push)]);
        value(&samples, "veem_push_dropped_items_total", &[("push", push)]);
    }

    // Request counters grow with the calls made, labelled by the route's template.
    let get_vee = [
        ("route", "/vmi/v1/vees/{id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    let not_found = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    let count = |samples: &HashMap<String, f64>, labels: &[(&str, &str)]| {
        samples
            .get(&series("veem_http_requests_total", labels))
            .copied()
            .unwrap_or(0.0)
    };
    let before = scrape(&s).await;
    for id in &refs[..3] {
        get(&s.a, id).await;
    }
    let answer = reqwest::get(format!("{}/no/such/route", s.url))
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 404);
    let after = scrape(&s).await;
    assert_eq!(count(&after, &get_vee) - count(&before, &get_vee), 3.0);
    assert_eq!(count(&after, &not_found) - count(&before, &not_found), 1.0);
    let scrapes = [("route", "/metrics"), ("method", "GET"), ("status", "200")];
    assert!(count(&after, &scrapes) >= 1.0, "scrapes are counted too");
    let unauthorized = [("route", "/metrics"), ("method", "GET"), ("status", "401")];
    assert_eq!(count(&after, &unauthorized), 2.0);
    for key in after.keys().filter(|k| k.contains("route=")) {
        assert!(
            !ids.iter().any(|id| key.contains(id.as_str())),
            "an id in a label: {key}"
        );
    }
    assert!(
        after.keys().any(
            |k| k.starts_with("veem_http_request_duration_seconds_bucket{")
                && k.contains("route=\"/vmi/v1/vees/{id}\"")
        ),
        "a latency histogram per route"
    );

    // Prometheus may ask for OpenMetrics.
    let answer = reqwest::Client::new()
        .get(format!("{}/metrics", s.url))
        .bearer_auth(METRICS_TOKEN)
        .header(
            reqwest::header::ACCEPT,
            "application/openmetrics-text; version=1.0.0",
        )
        .send()
        .await
        .expect("an answer");
    assert!(answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(answer.text().await.expect("a body").ends_with("# EOF\n"));
}

/// Several front-ends on PostgreSQL: the leader answers from its books; a follower, which has
/// none, answers for its own process (`veem_leader 0`, its HTTP requests, those it forwarded)
/// and does not forward the scrape.
#[tokio::test]
async fn a_follower_shows_its_own_process_and_the_leader_its_books() {
    let Some(site) = crate::front_ends::Site::start(2).await else {
        return;
    };
    let leader = site.wait_for_leader(&[], Duration::from_secs(30)).await;
    let (leading, following): (Vec<_>, Vec<_>) =
        site.front_ends.iter().partition(|f| f.name == leader);
    let (leading, following) = (leading[0], following[0]);
    // A VEE made through the follower (forwarded), then listed through it.
    init_one(&following.a, small("through-the-follower")).await;
    following
        .a
        .list_vees(&ListQuery::default())
        .await
        .expect("a forwarded list");
    let scrape_of = |url: String| async move {
        let answer = reqwest::get(format!("{url}/metrics"))
            .await
            .expect("an answer");
        assert_eq!(answer.status().as_u16(), 200);
        parse_samples(&answer.text().await.expect("a body"))
    };
    let led = scrape_of(leading.url.clone()).await;
    assert_eq!(value(&led, "veem_leader", &[]), 1.0);
    assert_eq!(value(&led, "veem_vees", &[("state", "DEFINED")]), 1.0);
    let followed = scrape_of(following.url.clone()).await;
    assert_eq!(value(&followed, "veem_leader", &[]), 0.0);
    assert!(
        !followed.keys().any(|k| k.starts_with("veem_vees")),
        "a follower has no books to show: {:?}",
        followed.keys()
    );
    let forwarded = |method: &str, status: &str| {
        followed
            .get(&series(
                "veem_http_requests_total",
                &[
                    ("route", "forwarded"),
                    ("method", method),
                    ("status", status),
                ],
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert!(forwarded("POST", "201") >= 1.0, "{followed:?}");
    assert!(forwarded("GET", "200") >= 1.0, "{followed:?}");
    // The leader counted the forwarded calls by their route.
    let initialized = series(
        "veem_http_requests_total",
        &[
            ("route", "/vmi/v1/vees/initialize"),
            ("method", "POST"),
            ("status", "201"),
        ],
    );
    assert!(led.get(&initialized).copied().unwrap_or(0.0) >= 1.0);
}
