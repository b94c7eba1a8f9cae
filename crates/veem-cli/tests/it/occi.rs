//! OCCI 1.2 end to end, written from the specifications (GFD.221 core, GFD.222 HTTP protocol,
//! GFD.223 text rendering, GFD.224 infrastructure, GFD.226 JSON): the real `veem serve` with
//! `[occi] listen`, sim hosts, spoken to over raw HTTP; what OCCI does is checked in the VMI.

use reqwest::header::HeaderMap;
use veem_model::{InitModel, VmiState};

use crate::harness::*;

const INFRA: &str = "http://schemas.ogf.org/occi/infrastructure#";
const ACTION: &str = "http://schemas.ogf.org/occi/infrastructure/compute/action#";
const RESOURCE_TPL: &str = "http://schemas.veem.dev/occi/resource_tpl#";
const OS_TPL: &str = "http://schemas.veem.dev/occi/os_tpl#";

struct Occi {
    server: Server,
    url: String,
    http: reqwest::Client,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `X-OCCI-Attribute` value of `name` in a text/plain body.
    fn attribute(&self, name: &str) -> Option<String> {
        let prefix = format!("X-OCCI-Attribute: {name}=");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim_matches('"').to_owned())
    }

    fn locations(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("X-OCCI-Location: "))
            .map(str::to_owned)
            .collect()
    }
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

fn basic(user: &str, password: &str) -> (&'static str, String) {
    let encoded = base64(format!("{user}:{password}").as_bytes());
    ("Authorization", format!("Basic {encoded}"))
}

/// Standard base64 with padding (RFC 4648), as HTTP Basic sends credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn kind(term: &str) -> String {
    format!("Category: {term}; scheme=\"{INFRA}\"; class=\"kind\"\n")
}

fn action(term: &str) -> String {
    format!("Category: {term}; scheme=\"{ACTION}\"; class=\"action\"\n")
}

impl Occi {
    /// A server with sim hosts, the shared image `tiny`, and OCCI on a port of its own.
    async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    /// [`Occi::start`] with `setup`; with `tls`, OCCI is HTTPS too, and so is the client.
    async fn start_with(setup: Setup) -> Self {
        let port = free_port();
        let server = Server::start_with_guest(Setup {
            extra_config: format!("\n[occi]\nlisten = \"127.0.0.1:{port}\"\n"),
            ..setup
        })
        .await
        .expect("sim servers always start");
        let (scheme, http) = match &server.ca {
            Some(ca) => {
                let tls = veem_tls::client_config(Some(ca), None).expect("the site's CA loads");
                let http = reqwest::Client::builder()
                    .use_preconfigured_tls(tls)
                    .build()
                    .expect("an https client");
                ("https", http)
            }
            None => ("http", reqwest::Client::new()),
        };
        Self {
            server,
            url: format!("{scheme}://127.0.0.1:{port}"),
            http,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("the OCCI listener answers");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("a body"),
        }
    }

    /// `text/plain` as sm-a.
    async fn plain(&self, method: &str, path: &str, body: &str) -> Answer {
        self.call(
            method,
            path,
            &[
                bearer(TOKEN_A),
                ("Content-Type", "text/plain".into()),
                ("Accept", "text/plain".into()),
            ],
            body,
        )
        .await
    }

    /// Creates a compute as sm-a from a text/plain body; answers its path.
    async fn create(&self, body: &str) -> String {
        let answer = self.plain("POST", "/compute/", body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        let location = answer.header("location");
        let path = location
            .strip_prefix(&self.url)
            .unwrap_or_else(|| panic!("an absolute location on this server: {location}"))
            .to_owned();
        assert!(path.starts_with("/compute/vee-"), "{path}");
        path
    }

    async fn vmi_state(&self, path: &str) -> VmiState {
        let id = path.rsplit('/').next().expect("an id");
        state_of(&self.server.a, id).await
    }

    async fn act(&self, path: &str, term: &str, extra: &str) -> Answer {
        self.plain(
            "POST",
            &format!("{path}?action={term}"),
            &format!("{}{extra}", action(term)),
        )
        .await
    }
}

#[tokio::test]
async fn occi_query_interface_on_both_paths_filtered_by_category() {
    let o = Occi::start().await;
    for path in ["/-/", "/.well-known/org/ogf/occi/-/"] {
        let answer = o.plain("GET", path, "").await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(answer.header("content-type").starts_with("text/plain"));
        for term in [
            "compute",
            "storage",
            "network",
            "storagelink",
            "networkinterface",
        ] {
            assert!(
                answer.body.contains(&format!(
                    "Category: {term}; scheme=\"{INFRA}\"; class=\"kind\""
                )),
                "{term} missing from {path}"
            );
        }
        for term in ["entity", "resource", "link"] {
            assert!(answer.body.contains(&format!(
                "Category: {term}; scheme=\"http://schemas.ogf.org/occi/core#\"; class=\"kind\""
            )));
        }
        for term in ["start", "stop", "restart", "suspend"] {
            assert!(answer.body.contains(&format!(
                "Category: {term}; scheme=\"{ACTION}\"; class=\"action\""
            )));
        }
        // The caller's images are os_tpl mixins that depend on os_tpl; sizes are resource_tpl.
        let tiny = answer
            .body
            .lines()
            .find(|l| l.starts_with(&format!("Category: tiny; scheme=\"{OS_TPL}\"")))
            .expect("the image tiny is an os_tpl mixin");
        assert!(tiny.contains(&format!("rel=\"{INFRA}os_tpl\"")), "{tiny}");
        assert!(tiny.contains("location=\"/mixin/os_tpl/tiny/\""), "{tiny}");
        let small = answer
            .body
            .lines()
            .find(|l| l.starts_with(&format!("Category: small; scheme=\"{RESOURCE_TPL}\"")))
            .expect("small is a resource_tpl mixin");
        assert!(
            small.contains(&format!("rel=\"{INFRA}resource_tpl\"")),
            "{small}"
        );
    }
    // Filtered by a Category in the request (text/occi: in the headers).
    let filtered = o
        .call(
            "GET",
            "/-/",
            &[
                bearer(TOKEN_A),
                ("Content-Type", "text/occi".into()),
                ("Accept", "text/occi".into()),
                (
                    "Category",
                    format!("compute; scheme=\"{INFRA}\"; class=\"kind\""),
                ),
            ],
            "",
        )
        .await;
    assert_eq!(filtered.status, 200, "{}", filtered.body);
    let categories = filtered.header("category");
    assert!(categories.starts_with("compute;"), "{categories}");
    assert!(categories.contains("location=\"/compute/\""));
    assert!(categories.contains("occi.compute.cores"));
    assert!(!categories.contains("storage;"), "{categories}");
    // JSON (GFD.226): kinds, mixins, actions.
    let json = o
        .call(
            "GET",
            "/-/",
            &[bearer(TOKEN_A), ("Accept", "application/occi+json".into())],
            "",
        )
        .await;
    assert_eq!(json.status, 200);
    assert_eq!(json.header("content-type"), "application/occi+json");
    let json = json.json();
    let compute = json["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .find(|k| k["term"] == "compute")
        .expect("compute")
        .clone();
    assert_eq!(
        compute["attributes"]["occi.compute.memory"]["type"],
        "number"
    );
    assert!(compute["actions"]
        .as_array()
        .expect("actions")
        .contains(&serde_json::json!(format!("{ACTION}start"))));
    assert!(json["mixins"]
        .as_array()
        .expect("mixins")
        .iter()
        .any(|m| m["term"] == "tiny"));
    // A category this server does not have.
    let unknown = o
        .plain(
            "GET",
            "/-/",
            "Category: nothing; scheme=\"http://example.org/x#\"; class=\"kind\"\n",
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
}

#[tokio::test]
async fn occi_compute_crud_and_actions_reach_the_vmi_states() {
    let o = Occi::start().await;
    let path = o
        .create(&format!(
            "{}Category: small; scheme=\"{RESOURCE_TPL}\"; class=\"mixin\"\n\
             Category: tiny; scheme=\"{OS_TPL}\"; class=\"mixin\"\n\
             X-OCCI-Attribute: occi.compute.hostname=\"web\"\n",
            kind("compute")
        ))
        .await;
    let id = path.rsplit('/').next().expect("id").to_owned();
    // Made as the VEE the spec's state model says: inactive (DEFINED) until start.
    let vee = get(&o.server.a, &id).await;
    assert_eq!(vee.state, VmiState::Defined);
    assert_eq!(vee.name, "web");
    assert_eq!((vee.descriptor.cpu, vee.descriptor.memory_mb), (1, 1024));
    assert_eq!(
        vee.descriptor.disks.len(),
        1,
        "os_tpl gives a disk of the image"
    );
    let read = o.plain("GET", &path, "").await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(read.body.starts_with(&format!(
        "Category: compute; scheme=\"{INFRA}\"; class=\"kind\""
    )));
    assert_eq!(read.attribute("occi.core.id").as_deref(), Some(id.as_str()));
    assert_eq!(
        read.attribute("occi.compute.state").as_deref(),
        Some("inactive")
    );
    assert_eq!(read.attribute("occi.compute.cores").as_deref(), Some("1"));
    assert_eq!(read.attribute("occi.compute.memory").as_deref(), Some("1"));
    assert!(read.body.contains(&format!(
        "Link: <{path}?action=start>; rel=\"{ACTION}start\""
    )));
    assert!(
        read.body.contains(&format!("rel=\"{INFRA}storage\"")),
        "its disk is a storagelink: {}",
        read.body
    );

    // Each action, and the state really reached in the VMI.
    let started = o.act(&path, "start", "").await;
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(o.vmi_state(&path).await, VmiState::Active);
    assert_eq!(
        started.attribute("occi.compute.state").as_deref(),
        Some("active")
    );
    assert_eq!(o.act(&path, "suspend", "").await.status, 200);
    assert_eq!(o.vmi_state(&path).await, VmiState::Paused);
    assert_eq!(
        o.plain("GET", &path, "")
            .await
            .attribute("occi.compute.state")
            .as_deref(),
        Some("suspended")
    );
    assert_eq!(o.act(&path, "start", "").await.status, 200);
    assert_eq!(o.vmi_state(&path).await, VmiState::Active);
    let hibernate = o
        .act(&path, "suspend", "X-OCCI-Attribute: method=\"hibernate\"\n")
        .await;
    assert_eq!(hibernate.status, 200, "{}", hibernate.body);
    assert_eq!(o.vmi_state(&path).await, VmiState::Suspended);
    assert_eq!(o.act(&path, "start", "").await.status, 200);
    let before = get(&o.server.a, &id).await.updated_ms;
    let restart = o.act(&path, "restart", "").await;
    assert_eq!(restart.status, 200, "{}", restart.body);
    let after = get(&o.server.a, &id).await;
    assert_eq!(after.state, VmiState::Active);
    assert!(
        after.updated_ms > before,
        "restart went through SHUTDOWN and ACTIVATE"
    );
    let stopped = o
        .act(&path, "stop", "X-OCCI-Attribute: method=\"graceful\"\n")
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert_eq!(o.vmi_state(&path).await, VmiState::Defined);
    // An action the state does not allow: 409, nothing changes.
    let refused = o.act(&path, "suspend", "").await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(o.vmi_state(&path).await, VmiState::Defined);

    // Update: cores and memory through the VMI's resize (down to what it was made with).
    let bigger = o
        .create(&format!(
            "{}X-OCCI-Attribute: occi.compute.cores=2\nX-OCCI-Attribute: occi.compute.memory=2\n",
            kind("compute")
        ))
        .await;
    let bigger_id = bigger.rsplit('/').next().expect("id").to_owned();
    assert!(
        get(&o.server.a, &bigger_id)
            .await
            .descriptor
            .disks
            .is_empty(),
        "no os_tpl, no disk"
    );
    let updated = o
        .plain(
            "PUT",
            &bigger,
            &format!("{}X-OCCI-Attribute: occi.compute.cores=1\nX-OCCI-Attribute: occi.compute.memory=0.5\n", kind("compute")),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let resized = get(&o.server.a, &bigger_id).await.descriptor;
    assert_eq!((resized.cpu, resized.memory_mb), (1, 512));
    assert_eq!(
        updated.attribute("occi.compute.memory").as_deref(),
        Some("0.5")
    );
    let partial = o
        .plain("POST", &bigger, "X-OCCI-Attribute: occi.compute.cores=2\n")
        .await;
    assert_eq!(partial.status, 200, "{}", partial.body);
    assert_eq!(get(&o.server.a, &bigger_id).await.descriptor.cpu, 2);

    // An action on the collection: every compute of the caller's.
    let all = o.act("/compute/", "start", "").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(o.vmi_state(&path).await, VmiState::Active);
    assert_eq!(o.vmi_state(&bigger).await, VmiState::Active);

    // Delete: the VMI's purge, also of an ACTIVE VEE.
    let deleted = o.plain("DELETE", &path, "").await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(o.server.a.get_vee(&id).await.is_err(), "purged");
    assert_eq!(o.plain("GET", &path, "").await.status, 404);
    let listed = o.plain("GET", "/compute/", "").await;
    assert_eq!(listed.locations(), vec![format!("{}{bigger}", o.url)]);
}

#[tokio::test]
async fn occi_renderings_text_occi_uri_list_and_json() {
    let o = Occi::start().await;
    // Created from JSON (GFD.226), answered in JSON.
    let created = o
        .call(
            "POST",
            "/compute/",
            &[
                bearer(TOKEN_A),
                ("Content-Type", "application/occi+json".into()),
                ("Accept", "application/occi+json".into()),
            ],
            &serde_json::json!({
                "kind": format!("{INFRA}compute"),
                "mixins": [format!("{RESOURCE_TPL}medium")],
                "attributes": {"occi.core.title": "db"}
            })
            .to_string(),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let json = created.json();
    assert_eq!(json["kind"], format!("{INFRA}compute"));
    assert_eq!(json["attributes"]["occi.compute.cores"], 2);
    assert_eq!(json["attributes"]["occi.compute.memory"], 4);
    assert_eq!(json["attributes"]["occi.compute.state"], "inactive");
    assert!(json["mixins"]
        .as_array()
        .expect("mixins")
        .contains(&serde_json::json!(format!("{RESOURCE_TPL}medium"))));
    let path = json["location"].as_str().expect("location").to_owned();
    assert_eq!(created.header("location"), format!("{}{path}", o.url));
    // An action invoked in JSON.
    let started = o
        .call(
            "POST",
            &format!("{path}?action=start"),
            &[
                bearer(TOKEN_A),
                ("Content-Type", "application/json".into()),
                ("Accept", "application/json".into()),
            ],
            &serde_json::json!({"action": format!("{ACTION}start")}).to_string(),
        )
        .await;
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(started.json()["attributes"]["occi.compute.state"], "active");
    assert_eq!(o.vmi_state(&path).await, VmiState::Active);
    // text/occi: the same in headers.
    let headers = o
        .call(
            "GET",
            &path,
            &[bearer(TOKEN_A), ("Accept", "text/occi".into())],
            "",
        )
        .await;
    assert_eq!(headers.status, 200);
    assert_eq!(headers.header("content-type"), "text/occi");
    assert!(headers.header("category").starts_with("compute;"));
    let attributes = headers.header("x-occi-attribute");
    assert!(
        attributes.contains("occi.compute.state=\"active\""),
        "{attributes}"
    );
    assert!(attributes.contains("occi.compute.cores=2"), "{attributes}");
    assert!(headers
        .header("link")
        .contains(&format!("rel=\"{ACTION}stop\"")));
    // Collections: text/uri-list, text/plain, text/occi, JSON.
    let uris = o
        .call(
            "GET",
            "/compute/",
            &[bearer(TOKEN_A), ("Accept", "text/uri-list".into())],
            "",
        )
        .await;
    assert_eq!(uris.status, 200);
    assert_eq!(uris.header("content-type"), "text/uri-list");
    assert_eq!(uris.body.trim(), format!("{}{path}", o.url));
    let listed = o
        .call(
            "GET",
            "/compute/",
            &[bearer(TOKEN_A), ("Accept", "text/occi".into())],
            "",
        )
        .await;
    assert_eq!(listed.header("x-occi-location"), format!("{}{path}", o.url));
    let listed = o
        .call(
            "GET",
            "/compute/",
            &[bearer(TOKEN_A), ("Accept", "application/occi+json".into())],
            "",
        )
        .await
        .json();
    assert_eq!(listed["resources"][0]["location"], path.as_str());
    // Created from text/occi headers.
    let from_headers = o
        .call(
            "POST",
            "/compute/",
            &[
                bearer(TOKEN_A),
                ("Content-Type", "text/occi".into()),
                (
                    "Category",
                    format!("compute; scheme=\"{INFRA}\"; class=\"kind\""),
                ),
                (
                    "X-OCCI-Attribute",
                    "occi.compute.cores=1, occi.compute.hostname=\"cache\"".into(),
                ),
            ],
            "",
        )
        .await;
    assert_eq!(from_headers.status, 201, "{}", from_headers.body);
    assert!(from_headers.header("location").contains("/compute/vee-"));
}

#[tokio::test]
async fn occi_filters_collections_by_category_and_attribute() {
    let o = Occi::start().await;
    let small = o
        .create(&format!(
            "{}Category: small; scheme=\"{RESOURCE_TPL}\"; class=\"mixin\"\n",
            kind("compute")
        ))
        .await;
    let medium = o
        .create(&format!(
            "{}Category: medium; scheme=\"{RESOURCE_TPL}\"; class=\"mixin\"\n",
            kind("compute")
        ))
        .await;
    let url = |p: &str| format!("{}{p}", o.url);
    let all = o.plain("GET", "/compute/", "").await.locations();
    assert_eq!(all, vec![url(&small), url(&medium)]);
    let by_mixin = o
        .plain(
            "GET",
            "/compute/",
            &format!("Category: medium; scheme=\"{RESOURCE_TPL}\"; class=\"mixin\"\n"),
        )
        .await;
    assert_eq!(by_mixin.status, 200, "{}", by_mixin.body);
    assert_eq!(by_mixin.locations(), vec![url(&medium)]);
    let by_attribute = o
        .plain(
            "GET",
            "/compute/",
            "X-OCCI-Attribute: occi.compute.cores=1\n",
        )
        .await;
    assert_eq!(by_attribute.locations(), vec![url(&small)]);
    let none = o
        .plain(
            "GET",
            "/compute/",
            "X-OCCI-Attribute: occi.compute.hostname=\"nobody\"\n",
        )
        .await;
    assert_eq!(none.status, 200);
    assert!(none.locations().is_empty());
    // A mixin's location lists what it is applied to.
    let at_mixin = o.plain("GET", "/mixin/resource_tpl/small/", "").await;
    assert_eq!(at_mixin.locations(), vec![url(&small)]);
    // The root lists every entity, filterable by kind.
    let root = o.plain("GET", "/", &kind("compute")).await;
    assert_eq!(root.locations(), vec![url(&small), url(&medium)]);
    let storage = o.plain("GET", "/", &kind("storage")).await;
    assert_eq!(storage.locations(), vec![url("/storage/tiny")]);
    // DELETE on the collection purges its members the request selects (GFD.222), here the
    // small one only.
    let deleted = o
        .plain(
            "DELETE",
            "/compute/",
            &format!("Category: small; scheme=\"{RESOURCE_TPL}\"; class=\"mixin\"\n"),
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(
        o.plain("GET", "/compute/", "").await.locations(),
        vec![url(&medium)]
    );
    let vees = o
        .server
        .a
        .list_vees(&Default::default())
        .await
        .expect("list");
    assert_eq!(vees.vees.len(), 1, "the small one is purged in the VMI too");
}

#[tokio::test]
async fn occi_authenticates_bearer_and_basic_and_shows_only_the_callers_own() {
    let o = Occi::start().await;
    let path = o.create(&kind("compute")).await;
    let none = o.call("GET", "/compute/", &[], "").await;
    assert_eq!(none.status, 401);
    let challenges = none.header("www-authenticate");
    assert!(
        challenges.contains("Basic") && challenges.contains("Bearer"),
        "{challenges}"
    );
    assert!(!none.body.trim().is_empty(), "a message a person can read");
    let with_basic = o.call("GET", &path, &[basic("sm-a", TOKEN_A)], "").await;
    assert_eq!(with_basic.status, 200, "{}", with_basic.body);
    for wrong in [
        basic("sm-a", TOKEN_B),
        basic("sm-b", TOKEN_A),
        basic("nobody", TOKEN_A),
        bearer("not-a-token"),
        ("Authorization", "Digest whatever".to_owned()),
        ("Authorization", "Basic !!!".to_owned()),
    ] {
        let answer = o.call("GET", &path, std::slice::from_ref(&wrong), "").await;
        assert_eq!(answer.status, 401, "{wrong:?}: {}", answer.body);
    }
    // Another principal sees nothing of sm-a's (its VEE is forbidden, as in the VMI); the
    // admin sees it.
    let other = o.call("GET", &path, &[basic("sm-b", TOKEN_B)], "").await;
    assert_eq!(other.status, 403, "{}", other.body);
    let theirs = o.call("GET", "/compute/", &[bearer(TOKEN_B)], "").await;
    assert!(theirs.locations().is_empty(), "{}", theirs.body);
    let admin = o.call("GET", "/compute/", &[bearer(TOKEN_OPS)], "").await;
    assert_eq!(admin.locations(), vec![format!("{}{path}", o.url)]);
    let deleted = o.call("DELETE", &path, &[bearer(TOKEN_B)], "").await;
    assert_eq!(deleted.status, 403);
    assert_eq!(
        o.server
            .a
            .list_vees(&Default::default())
            .await
            .expect("list")
            .vees
            .len(),
        1
    );
    assert_eq!(base64(b"sm-a:x"), "c20tYTp4");
    assert_eq!(base64(b"ab"), "YWI=");
}

/// A bad request: method, path, headers, body, and the status it must get.
type Case = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    String,
    u16,
);

#[tokio::test]
async fn occi_errors_have_the_specified_codes_and_change_nothing() {
    let o = Occi::start().await;
    let path = o.create(&kind("compute")).await;
    let count = || async {
        o.server
            .a
            .list_vees(&Default::default())
            .await
            .expect("list")
            .vees
            .len()
    };
    let cases: Vec<Case> = vec![
        ("GET", "/compute/".into(), vec![("Accept", "image/png".into())], String::new(), 406),
        ("GET", path.clone(), vec![("Accept", "text/uri-list".into())], String::new(), 406),
        ("POST", "/compute/".into(), vec![("Content-Type", "application/xml".into())], "<x/>".into(), 415),
        ("POST", "/compute/".into(), vec![], "Category: compute\n".into(), 400),
        ("POST", "/compute/".into(), vec![], "X-OCCI-Attribute: occi.compute.cores=2\n".into(), 400),
        ("POST", "/compute/".into(), vec![], format!("{}X-OCCI-Attribute: occi.compute.colour=\"red\"\n", kind("compute")), 400),
        ("POST", "/compute/".into(), vec![], format!("{}X-OCCI-Attribute: occi.compute.cores=\"two\"\n", kind("compute")), 400),
        ("POST", "/compute/".into(), vec![], format!("{}X-OCCI-Attribute: occi.compute.cores=0\n", kind("compute")), 400),
        ("POST", "/compute/".into(), vec![], format!("{}X-OCCI-Attribute: occi.compute.state=\"active\"\n", kind("compute")), 400),
        ("POST", "/compute/".into(), vec![], kind("storage"), 400),
        ("POST", "/compute/".into(), vec![], format!("{}Category: nope; scheme=\"{OS_TPL}\"; class=\"mixin\"\n", kind("compute")), 400),
        ("POST", "/compute/".into(), vec![("Content-Type", "application/occi+json".into())], "{\"kind\": 1}".into(), 400),
        ("POST", "/compute/".into(), vec![("Content-Type", "application/occi+json".into())], "{".into(), 400),
        ("POST", "/compute/".into(), vec![], format!("{}X-OCCI-Attribute: occi.compute.speed=2\n", kind("compute")), 501),
        ("GET", "/compute/vee-99999999".into(), vec![], String::new(), 404),
        ("GET", "/compute/not-an-id".into(), vec![], String::new(), 404),
        ("GET", "/nothing/".into(), vec![], String::new(), 404),
        ("PATCH", path.clone(), vec![], String::new(), 405),
        ("POST", format!("{path}?action=start"), vec![], String::new(), 400),
        ("POST", format!("{path}?action=fly"), vec![], action("fly"), 400),
        ("POST", format!("{path}?action=save"), vec![], action("save"), 501),
        ("POST", format!("{path}?colour=red"), vec![], String::new(), 400),
        ("POST", "/storage/".into(), vec![], format!("{}X-OCCI-Attribute: occi.storage.size=1\n", kind("storage")), 400),
        ("POST", "/storage/tiny?action=backup".into(), vec![], "Category: backup; scheme=\"http://schemas.ogf.org/occi/infrastructure/storage/action#\"; class=\"action\"\n".into(), 501),
        ("PUT", path.clone(), vec![], format!("{}X-OCCI-Attribute: occi.compute.hostname=\"renamed\"\n", kind("compute")), 501),
        ("PUT", path.clone(), vec![], format!("{}X-OCCI-Attribute: occi.compute.cores=64\n", kind("compute")), 400),
        ("DELETE", "/compute/vee-99999999".into(), vec![], String::new(), 404),
        ("PUT", "/compute/vee-99999999".into(), vec![], kind("compute"), 501),
    ];
    for (method, target, mut headers, body, status) in cases {
        headers.push(bearer(TOKEN_A));
        if !headers.iter().any(|(n, _)| *n == "Content-Type") {
            headers.push(("Content-Type", "text/plain".into()));
        }
        let answer = o.call(method, &target, &headers, &body).await;
        assert_eq!(
            answer.status, status,
            "{method} {target} {body:?}: {}",
            answer.body
        );
        assert!(
            !answer.body.trim().is_empty(),
            "{method} {target}: no message"
        );
        assert!(
            answer.header("server").contains("OCCI/1.2"),
            "{method} {target}: no Server header naming OCCI/1.2"
        );
        if status == 405 {
            assert!(!answer.header("allow").is_empty());
        }
    }
    assert_eq!(count().await, 1, "no bad request made or removed a VEE");
    let unchanged = o.plain("GET", &path, "").await;
    assert_eq!(
        unchanged.attribute("occi.compute.cores").as_deref(),
        Some("1")
    );
    assert_eq!(
        unchanged.attribute("occi.compute.hostname").as_deref(),
        Some("occi")
    );
}

#[tokio::test]
async fn occi_networks_storage_and_links_of_a_compute() {
    let o = Occi::start().await;
    let network = o
        .plain(
            "POST",
            "/network/",
            &format!(
                "{}Category: ipnetwork; scheme=\"http://schemas.ogf.org/occi/infrastructure/network#\"; class=\"mixin\"\n\
                 X-OCCI-Attribute: occi.core.title=\"lan\"\n\
                 X-OCCI-Attribute: occi.network.address=\"10.77.0.0/24\"\n",
                kind("network")
            ),
        )
        .await;
    assert_eq!(network.status, 201, "{}", network.body);
    assert_eq!(network.header("location"), format!("{}/network/lan", o.url));
    let vmi = o.server.a.list_networks().await.expect("networks");
    assert!(
        vmi.networks
            .iter()
            .any(|n| n.name == "lan" && n.cidr == "10.77.0.0/24"),
        "{vmi:?}"
    );
    let again = o
        .plain(
            "POST",
            "/network/",
            &format!(
                "{}Category: ipnetwork; scheme=\"http://schemas.ogf.org/occi/infrastructure/network#\"; class=\"mixin\"\nX-OCCI-Attribute: occi.core.title=\"lan\"\nX-OCCI-Attribute: occi.network.address=\"10.78.0.0/24\"\n",
                kind("network")
            ),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    // A blank storage of 2 GiB: an image of the caller's.
    let blank = o
        .plain(
            "POST",
            "/storage/",
            &format!(
                "{}X-OCCI-Attribute: occi.core.title=\"data\"\nX-OCCI-Attribute: occi.storage.size=2\n",
                kind("storage")
            ),
        )
        .await;
    assert_eq!(blank.status, 201, "{}", blank.body);
    assert_eq!(blank.header("location"), format!("{}/storage/data", o.url));
    assert_eq!(
        blank.attribute("occi.storage.size").as_deref(),
        Some("2"),
        "its virtual size"
    );
    let images = o.server.a.list_images().await.expect("images");
    assert!(
        images
            .images
            .iter()
            .any(|i| i.name == "data" && i.format == "qcow2"),
        "{images:?}"
    );
    let twice = o
        .plain(
            "POST",
            "/storage/",
            &format!("{}X-OCCI-Attribute: occi.core.title=\"data\"\nX-OCCI-Attribute: occi.storage.size=1\n", kind("storage")),
        )
        .await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    let storage = o.plain("GET", "/storage/tiny", "").await;
    assert_eq!(storage.status, 200, "{}", storage.body);
    assert_eq!(
        storage.attribute("occi.storage.state").as_deref(),
        Some("online")
    );

    let path = o
        .create(&format!(
            "{}Link: </network/lan>; rel=\"{INFRA}network\"; category=\"{INFRA}networkinterface\"\n\
             Link: </storage/tiny>; rel=\"{INFRA}storage\"; category=\"{INFRA}storagelink\"\n",
            kind("compute")
        ))
        .await;
    let id = path.rsplit('/').next().expect("id").to_owned();
    let vee = get(&o.server.a, &id).await;
    assert_eq!(vee.descriptor.nics.len(), 1);
    assert_eq!(vee.descriptor.nics[0].network, "lan");
    assert_eq!(vee.descriptor.disks.len(), 1);
    let compute = o.plain("GET", &path, "").await;
    let nic_self = format!("/networkinterface/{id}_0");
    assert!(
        compute.body.contains(&format!(
            "Link: </network/lan>; rel=\"{INFRA}network\"; self=\"{nic_self}\""
        )),
        "{}",
        compute.body
    );
    let nic = o.plain("GET", &nic_self, "").await;
    assert_eq!(nic.status, 200, "{}", nic.body);
    assert_eq!(
        nic.attribute("occi.core.source").as_deref(),
        Some(path.as_str())
    );
    assert_eq!(
        nic.attribute("occi.core.target").as_deref(),
        Some("/network/lan")
    );
    assert!(
        nic.attribute("occi.networkinterface.address")
            .is_some_and(|ip| ip.starts_with("10.77.0.")),
        "{}",
        nic.body
    );
    let links = o.plain("GET", "/networkinterface/", "").await;
    assert_eq!(links.locations(), vec![format!("{}{nic_self}", o.url)]);
    let disk = o.plain("GET", &format!("/storagelink/{id}_0"), "").await;
    assert_eq!(disk.status, 200, "{}", disk.body);
    assert_eq!(
        disk.attribute("occi.core.target").as_deref(),
        Some("/storage/tiny")
    );
    let json = o
        .call(
            "GET",
            "/storagelink/",
            &[bearer(TOKEN_A), ("Accept", "application/occi+json".into())],
            "",
        )
        .await
        .json();
    assert_eq!(json["links"][0]["source"]["location"], path.as_str());
    assert_eq!(
        json["links"][0]["target"]["kind"],
        format!("{INFRA}storage")
    );

    // A network in use is not deleted.
    let in_use = o.plain("DELETE", "/network/lan", "").await;
    assert_eq!(in_use.status, 409, "{}", in_use.body);
    assert_eq!(o.plain("DELETE", &path, "").await.status, 200);
    let deleted = o.plain("DELETE", "/network/lan", "").await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(o
        .server
        .a
        .list_networks()
        .await
        .expect("networks")
        .networks
        .iter()
        .all(|n| n.name != "lan"));
}

/// Links made and deleted on an existing compute (GFD.222: a link is created in its kind's
/// collection with `occi.core.source` and `occi.core.target`, or POSTed to its resource),
/// only while it holds no host; what they change is the VEE's descriptor in the VMI.
#[tokio::test]
async fn occi_links_are_made_and_deleted_on_an_inactive_compute() {
    let o = Occi::start().await;
    let network = o
        .plain(
            "POST",
            "/network/",
            &format!(
                "{}Category: ipnetwork; scheme=\"http://schemas.ogf.org/occi/infrastructure/network#\"; class=\"mixin\"\n\
                 X-OCCI-Attribute: occi.core.title=\"lan2\"\n\
                 X-OCCI-Attribute: occi.network.address=\"10.88.0.0/24\"\n",
                kind("network")
            ),
        )
        .await;
    assert_eq!(network.status, 201, "{}", network.body);
    let path = o.create(&kind("compute")).await;
    let id = path.rsplit('/').next().expect("id").to_owned();
    assert!(get(&o.server.a, &id).await.descriptor.disks.is_empty());

    // A storagelink in text/plain, absolute source as a client may send it.
    let storagelink = |target: &str, source: &str| {
        format!(
            "{}X-OCCI-Attribute: occi.core.source=\"{source}\"\n\
             X-OCCI-Attribute: occi.core.target=\"{target}\"\n\
             X-OCCI-Attribute: occi.storagelink.deviceid=\"vdb\"\n",
            kind("storagelink")
        )
    };
    let made = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/storage/tiny", &format!("{}{path}", o.url)),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let disk_link = format!("/storagelink/{id}_0");
    assert_eq!(made.header("location"), format!("{}{disk_link}", o.url));
    assert_eq!(
        made.attribute("occi.core.target").as_deref(),
        Some("/storage/tiny")
    );
    assert_eq!(
        made.attribute("occi.storagelink.deviceid").as_deref(),
        Some("vdb")
    );
    // A networkinterface in JSON, with the address wanted.
    let json_link = serde_json::json!({
        "kind": format!("{INFRA}networkinterface"),
        "mixins": ["http://schemas.ogf.org/occi/infrastructure/networkinterface#ipnetworkinterface"],
        "source": {"location": path, "kind": format!("{INFRA}compute")},
        "target": {"location": "/network/lan2", "kind": format!("{INFRA}network")},
        "attributes": {"occi.networkinterface.address": "10.88.0.7"}
    });
    let made = o
        .call(
            "POST",
            "/networkinterface/",
            &[
                bearer(TOKEN_A),
                ("Content-Type", "application/occi+json".into()),
                ("Accept", "application/occi+json".into()),
            ],
            &json_link.to_string(),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let nic_link = format!("/networkinterface/{id}_0");
    assert_eq!(made.header("location"), format!("{}{nic_link}", o.url));
    assert_eq!(
        made.json()["attributes"]["occi.networkinterface.address"],
        "10.88.0.7"
    );
    // A Link POSTed to the compute itself adds a second disk.
    let posted = o
        .plain(
            "POST",
            &path,
            &format!(
                "{}Link: </storage/tiny>; rel=\"{INFRA}storage\"; category=\"{INFRA}storagelink\"\n",
                kind("compute")
            ),
        )
        .await;
    assert_eq!(posted.status, 200, "{}", posted.body);

    // Seen in the compute, the listings and the VMI's descriptor and generated values.
    let compute = o.plain("GET", &path, "").await;
    for link in [&disk_link, &nic_link, &format!("/storagelink/{id}_1")] {
        assert!(
            compute.body.contains(&format!("self=\"{link}\"")),
            "{link} in {}",
            compute.body
        );
    }
    assert_eq!(
        o.plain("GET", "/networkinterface/", "").await.locations(),
        vec![format!("{}{nic_link}", o.url)]
    );
    assert_eq!(
        o.plain("GET", "/storagelink/", "").await.locations().len(),
        2
    );
    let vee = get(&o.server.a, &id).await;
    let disks: Vec<_> = vee
        .descriptor
        .disks
        .iter()
        .map(|d| d.target.clone().unwrap_or_default())
        .collect();
    assert_eq!(disks, ["vdb", "vda"]);
    assert_eq!(vee.descriptor.nics.len(), 1);
    assert_eq!(vee.descriptor.nics[0].network, "lan2");
    assert_eq!(vee.generated.nics.len(), 1);
    assert_eq!(vee.generated.nics[0].ip.as_deref(), Some("10.88.0.7"));

    // Bad source or target 400, unknown ones 404, another principal's compute 403; nothing
    // changes.
    let wrong_kind = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/network/lan2", &path),
        )
        .await;
    assert_eq!(wrong_kind.status, 400, "{}", wrong_kind.body);
    let no_source = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/storage/tiny", "/storage/tiny"),
        )
        .await;
    assert_eq!(no_source.status, 400, "{}", no_source.body);
    let unknown_storage = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/storage/nope", &path),
        )
        .await;
    assert_eq!(unknown_storage.status, 404, "{}", unknown_storage.body);
    let unknown_compute = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/storage/tiny", "/compute/vee-99999999"),
        )
        .await;
    assert_eq!(unknown_compute.status, 404, "{}", unknown_compute.body);
    let taken_target = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/storage/tiny", &path),
        )
        .await;
    assert_eq!(
        taken_target.status, 400,
        "vdb is taken: {}",
        taken_target.body
    );
    let others = o
        .call(
            "POST",
            "/storagelink/",
            &[bearer(TOKEN_B), ("Content-Type", "text/plain".into())],
            &storagelink("/storage/tiny", &path),
        )
        .await;
    assert_eq!(others.status, 403, "{}", others.body);
    let others_delete = o.call("DELETE", &disk_link, &[bearer(TOKEN_B)], "").await;
    assert_eq!(others_delete.status, 403, "{}", others_delete.body);
    assert_eq!(get(&o.server.a, &id).await.descriptor, vee.descriptor);

    // Started, it holds a host: its links stay as they are.
    let started = o.act(&path, "start", "").await;
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(o.vmi_state(&path).await, VmiState::Active);
    let busy = o
        .plain(
            "POST",
            "/storagelink/",
            &storagelink("/storage/tiny", &path).replace("vdb", "vdc"),
        )
        .await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    let busy = o.plain("DELETE", &nic_link, "").await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert_eq!(o.act(&path, "stop", "").await.status, 200);
    assert_eq!(o.vmi_state(&path).await, VmiState::Defined);

    // Stopped, its links are deleted, and the network's address is free again.
    for link in [&format!("/storagelink/{id}_1"), &disk_link, &nic_link] {
        let deleted = o.plain("DELETE", link, "").await;
        assert_eq!(deleted.status, 200, "{link}: {}", deleted.body);
    }
    for link in [&disk_link, &nic_link] {
        assert_eq!(o.plain("GET", link, "").await.status, 404, "{link}");
    }
    let vee = get(&o.server.a, &id).await;
    assert!(vee.descriptor.disks.is_empty(), "{:?}", vee.descriptor);
    assert!(vee.descriptor.nics.is_empty());
    assert!(vee.generated.nics.is_empty());
    assert!(o
        .plain("GET", "/storagelink/", "")
        .await
        .locations()
        .is_empty());
    // text/occi: the link in headers.
    let made = o
        .call(
            "POST",
            "/networkinterface/",
            &[
                bearer(TOKEN_A),
                ("Content-Type", "text/occi".into()),
                (
                    "Category",
                    format!("networkinterface; scheme=\"{INFRA}\"; class=\"kind\""),
                ),
                (
                    "X-OCCI-Attribute",
                    format!("occi.core.source=\"{path}\", occi.core.target=\"/network/lan2\""),
                ),
            ],
            "",
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let vee = get(&o.server.a, &id).await;
    assert_eq!(vee.generated.nics.len(), 1);
    assert_eq!(vee.generated.nics[0].ip.as_deref(), Some("10.88.0.2"));
    assert_eq!(o.plain("DELETE", &nic_link, "").await.status, 200);
    let deleted = o.plain("DELETE", "/network/lan2", "").await;
    assert_eq!(deleted.status, 200, "no address is held: {}", deleted.body);
}

/// The `sh` blocks of README.md's "OCCI" section, run as written against a server (its port
/// and sm-a's token put in), each `curl` failing the script on an error status.
#[tokio::test]
async fn occi_readme_curl_examples_work_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md is readable");
    let section = readme
        .split("\n## OCCI\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a section OCCI");
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert!(!blocks.is_empty(), "the OCCI section has sh examples");
    let o = Occi::start().await;
    let script = blocks
        .join("\n")
        .replace("http://127.0.0.1:7072", &o.url)
        .replace("sm-a-secret", TOKEN_A)
        .replace("curl ", "curl --fail-with-body ");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash and curl run (both are installed by the project's scripts)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README's OCCI examples failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Category: compute;"), "{stdout}");
    assert!(
        stdout.contains("X-OCCI-Attribute: occi.compute.state=\"active\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"occi.compute.state\":\"active\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("X-OCCI-Attribute: occi.compute.state=\"inactive\""),
        "{stdout}"
    );
    let vees = o
        .server
        .a
        .list_vees(&Default::default())
        .await
        .expect("list");
    assert!(
        vees.vees.is_empty(),
        "the example deleted what it made: {vees:?}"
    );
}

/// With `[tls]` cert and key the OCCI listener is HTTPS (and only HTTPS), like the VMI's.
#[tokio::test]
async fn occi_listener_is_https_with_tls() {
    let o = Occi::start_with(Setup {
        tls: Some(vec![]),
        ..Setup::default()
    })
    .await;
    assert!(o.url.starts_with("https://"));
    let query = o.call("GET", "/-/", &[basic("sm-a", TOKEN_A)], "").await;
    assert_eq!(query.status, 200, "{}", query.body);
    let path = o.create(&kind("compute")).await;
    assert!(o.create(&kind("compute")).await != path);
    let plain = reqwest::Client::new()
        .get(o.url.replace("https://", "http://") + "/-/")
        .header("Authorization", format!("Bearer {TOKEN_A}"))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP is not answered on an HTTPS OCCI listener"
    );
}

#[tokio::test]
async fn occi_names_the_replicas_of_a_batch_as_the_vmi_does() {
    let o = Occi::start().await;
    let ids = init(&o.server.a, InitModel::Besteffort, 2, small("db")).await;
    for (id, name) in ids.iter().zip(["db-1", "db-2"]) {
        let answer = o
            .call(
                "GET",
                &format!("/compute/{id}"),
                &[bearer(TOKEN_A), ("Accept", "application/occi+json".into())],
                "",
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let attributes = &answer.json()["attributes"];
        assert_eq!(attributes["occi.core.title"], name, "{attributes}");
        assert_eq!(attributes["occi.compute.hostname"], name);
    }
}
