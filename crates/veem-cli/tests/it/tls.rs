//! TLS end to end, with real handshakes: the CLI over HTTPS with the certificates `veem tls
//! init` made, a remote agent over `wss://` with its client certificate (and one of another CA
//! refused), an `https://` callback delivered, and a principal known by its token's hash.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use veem_api::HostState;
use veem_client::Client;
use veem_model::{ControlAction as A, VmiState};

use crate::cli::json;
use crate::harness::*;

fn veem(s: &Server, ca: Option<&std::path::Path>, args: &[&str]) -> Output {
    let mut command = Command::new(veem_bin());
    command
        .args(args)
        .env("VEEM_URL", &s.url)
        .env("VEEM_TOKEN", TOKEN_A)
        .env_remove("VEEM_CA");
    if let Some(ca) = ca {
        command.env("VEEM_CA", ca);
    }
    command.output().expect("the CLI runs")
}

async fn https_server(agents: Vec<&'static str>, hosts: bool) -> Server {
    let mut setup = Setup {
        tls: Some(agents),
        ..Setup::default()
    };
    if !hosts {
        setup.hosts.clear();
    }
    Server::start_with(setup).await
}

#[tokio::test]
async fn the_cli_works_over_https_with_the_site_ca() {
    let s = https_server(vec![], true).await;
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let ca = s.ca.clone().expect("an https server has a CA");

    // --ca on the command line, and VEEM_CA in the environment.
    let out = veem(
        &s,
        None,
        &[
            "-o",
            "json",
            "--ca",
            ca.to_str().expect("utf-8"),
            "vee",
            "init",
            "--name",
            "secure",
            "--cpu",
            "1",
            "--memory-mb",
            "256",
        ],
    );
    let id = json(&out)["vees"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    json(&veem(
        &s,
        Some(&ca),
        &["-o", "json", "vee", "ctl", "activate", &id],
    ));
    let listed = json(&veem(&s, Some(&ca), &["-o", "json", "vee", "ls"]));
    assert_eq!(listed["vees"][0]["state"], "ACTIVE", "{listed}");

    // The server speaks nothing but TLS: a plain-HTTP client gets no answer from it.
    let plain = Client::new(&s.url.replace("https://", "http://"), TOKEN_A).expect("a client");
    assert!(plain.list_hosts().await.is_err());
}

#[tokio::test]
async fn the_cli_refuses_a_server_its_ca_did_not_sign() {
    let s = https_server(vec![], true).await;
    let other = tls_init(&s.dir.path().join("other-site"), &[]);
    for ca in [Some(other.join("ca.pem")), None] {
        let out = veem(&s, ca.as_deref(), &["vee", "ls"]);
        assert_eq!(out.status.code(), Some(1), "refused with {ca:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("certificate"), "{stderr}");
        assert!(stderr.contains("--ca"), "the hint names --ca: {stderr}");
    }
    // A CA file that is not one is named.
    let out = veem(&s, Some(&s.dir.path().join("veem.toml")), &["vee", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("veem.toml"));
}

pub(crate) fn spawn_agent(
    s: &Server,
    name: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Child {
    let ca = s.ca.as_deref().expect("an https server");
    let log = std::fs::File::create(s.dir.path().join(format!("agent-{name}.log"))).expect("log");
    Command::new(veem_bin())
        .args(["agent", "--server", &s.url, "--name", name])
        .args(["--cpus", "4", "--memory-mb", "8192", "--state-dir"])
        .arg(s.dir.path().join(format!("state-{name}")))
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .env_remove("VEEM_AGENT_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the agent starts")
}

async fn host_state(s: &Server, name: &str) -> Option<HostState> {
    let hosts = s.ops.list_hosts().await.expect("hosts");
    hosts
        .hosts
        .iter()
        .find(|h| h.id.as_str() == name)
        .map(|h| h.state)
}

#[tokio::test]
async fn a_remote_agent_connects_over_wss_with_its_client_certificate_and_no_other_does() {
    let s = https_server(vec!["h8"], false).await;
    let tls = s.dir.path().join("tls");
    let mut agent = spawn_agent(
        &s,
        "h8",
        &tls.join("agent-h8.pem"),
        &tls.join("agent-h8.key"),
    );
    // An agent whose certificate another CA signed, with no token to fall back on.
    let other = tls_init(&s.dir.path().join("other-site"), &["h9"]);
    let mut stranger = spawn_agent(
        &s,
        "h9",
        &other.join("agent-h9.pem"),
        &other.join("agent-h9.key"),
    );
    // An agent of this site that claims to be another host: h8's certificate, as h7.
    let mut impostor = spawn_agent(
        &s,
        "h7",
        &tls.join("agent-h8.pem"),
        &tls.join("agent-h8.key"),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while host_state(&s, "h8").await != Some(HostState::Up) {
        assert!(
            Instant::now() < deadline,
            "h8 never came up: {}",
            std::fs::read_to_string(s.dir.path().join("agent-h8.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = init_one(&s.a, small("over-mtls")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let vee = wait_state(&s.a, &id, VmiState::Active).await;
    assert_eq!(vee.host.map(|h| h.to_string()).as_deref(), Some("h8"));

    // By now the stranger has tried again and again (its backoff starts at 100 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(host_state(&s, "h9").await, None, "h9 never appears");
    assert_eq!(host_state(&s, "h7").await, None, "h7 never appears");
    assert!(
        impostor.try_wait().expect("status").is_none(),
        "the impostor is refused, not crashed"
    );
    assert!(
        stranger.try_wait().expect("status").is_none(),
        "the refused agent keeps trying rather than dying"
    );
    let log = std::fs::read_to_string(s.dir.path().join("agent-h9.log")).unwrap_or_default();
    assert!(log.contains("cannot connect"), "{log}");
    for child in [&mut agent, &mut stranger, &mut impostor] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn an_https_callback_is_delivered_verified_by_the_ca_file() {
    let s = https_server(vec![], true).await;
    // The listener's certificate comes from the same site, whose CA is the server's ca_file.
    let tls = s.dir.path().join("tls");
    let listener = Listener::start_https(&tls.join("server.pem"), &tls.join("server.key")).await;
    assert!(listener.url.starts_with("https://"), "{}", listener.url);
    let id = init_one(&s.a, small("billed")).await;
    s.a.listen(&[&id], 200, &listener.url)
        .await
        .expect("registered");
    let items = listener
        .wait_for("records over https", Duration::from_secs(10), |items| {
            items
                .iter()
                .filter(|(_, r)| r["vee"] == id.as_str())
                .count()
                >= 2
        })
        .await;
    assert!(items.iter().all(|(_, r)| r["state"] == "DEFINED"));
}

#[tokio::test]
async fn a_principal_with_token_sha256_authenticates_and_a_wrong_token_does_not() {
    let out = Command::new(veem_bin())
        .args(["token", "new", "-o", "json"])
        .output()
        .expect("veem token new runs");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let token = made["token"].as_str().expect("a token").to_owned();
    let sha = made["token_sha256"].as_str().expect("its hash").to_owned();
    assert!(token.len() >= 43, "at least 32 random bytes: {token}");
    assert_eq!(sha.len(), 64);

    let s = Server::start_with(Setup {
        extra_config: format!("\n[[principal]]\nname = \"sm-h\"\ntoken_sha256 = \"{sha}\"\n"),
        ..Setup::default()
    })
    .await;
    let hashed = Client::new(&s.url, &token).expect("a client");
    let id = init_one(&hashed, small("mine")).await;
    assert_eq!(get(&hashed, &id).await.id, id);
    for wrong in [&token[..token.len() - 1], sha.as_str(), "token-sm-x"] {
        let client = Client::new(&s.url, wrong).expect("a client");
        let error = client.get_vee(&id).await.expect_err("refused");
        assert_eq!(error.status(), Some(401), "{wrong}");
    }
    // The clear-text form keeps working beside it.
    assert_eq!(
        s.a.list_vees(&Default::default())
            .await
            .expect("sm-a")
            .vees
            .len(),
        0
    );
}
