//! The `veem` CLI, run as a process against a server, as an operator would.

use std::process::{Command, Output};

use crate::harness::*;

/// Runs the `veem` CLI against `s` with `token`, as an operator would.
pub(crate) fn veem(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(veem_bin())
        .args(args)
        .env("VEEM_URL", &s.url)
        .env("VEEM_TOKEN", token)
        .output()
        .expect("the CLI runs")
}

/// What a CLI run printed with `-o json`; its stderr when it failed.
pub(crate) fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--output json prints JSON")
}

#[tokio::test]
async fn the_cli_walks_a_vee_through_its_life() {
    let s = Server::start().await;
    let image = write_file(s.dir.path(), "tiny.img", b"tiny image");
    json(&veem(
        &s,
        TOKEN_A,
        &[
            "--output",
            "json",
            "image",
            "push",
            "tiny",
            image.to_str().expect("utf-8"),
        ],
    ));
    let init = json(&veem(
        &s,
        TOKEN_A,
        &[
            "-o",
            "json",
            "vee",
            "init",
            "--name",
            "web",
            "--cpu",
            "1",
            "--memory-mb",
            "256",
            "--disk",
            "image:tiny",
        ],
    ));
    let id = init["vees"][0]["id"].as_str().expect("an id").to_owned();
    json(&veem(
        &s,
        TOKEN_A,
        &["-o", "json", "vee", "ctl", "activate", &id],
    ));
    let got = json(&veem(&s, TOKEN_A, &["-o", "json", "vee", "get", &id]));
    assert_eq!(got["state"], "ACTIVE");
    let table = veem(&s, TOKEN_A, &["vee", "ls"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&id) && text.contains("ACTIVE"), "{text}");
    let hosts = json(&veem(&s, TOKEN_OPS, &["-o", "json", "host", "ls"]));
    assert_eq!(hosts["hosts"].as_array().expect("hosts").len(), 3);

    // A failed item: exit 1, the id and the code on stderr, no panic.
    let out = veem(&s, TOKEN_A, &["vee", "ctl", "suspend", &id, "vee-99999999"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vee-99999999") && err.contains("not_found"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A bad token: a helpful error.
    let out = veem(&s, "nope", &["vee", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let out = Command::new(veem_bin())
        .args(["vee", "ls"])
        .env("VEEM_URL", "http://127.0.0.1:1")
        .env("VEEM_TOKEN", "x")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn serve_with_a_bad_config_says_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\nplacement = \"random\"\n",
    )
    .expect("written");
    let out = Command::new(veem_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("placement") && !err.contains("panicked"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cli_makes_lists_and_removes_networks() {
    let s = Server::start().await;
    let made = json(&veem(
        &s,
        TOKEN_A,
        &[
            "-o",
            "json",
            "net",
            "create",
            "private",
            "--cidr",
            "10.10.0.0/24",
        ],
    ));
    assert_eq!(made["cidr"], "10.10.0.0/24");
    let init = json(&veem(
        &s,
        TOKEN_A,
        &[
            "-o",
            "json",
            "vee",
            "init",
            "--cpu",
            "1",
            "--memory-mb",
            "64",
            "--nic",
            "private",
        ],
    ));
    assert_eq!(init["vees"][0]["generated"]["nics"][0]["ip"], "10.10.0.2");
    let table = veem(&s, TOKEN_A, &["net", "ls"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("private") && text.contains("10.10.0.0/24"),
        "{text}"
    );
    let refused = veem(&s, TOKEN_A, &["net", "rm", "private"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in_use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let public = veem(
        &s,
        TOKEN_A,
        &[
            "net",
            "create",
            "public",
            "--cidr",
            "10.77.0.0/24",
            "--public",
        ],
    );
    assert!(!public.status.success(), "public networks are admin-only");
}

#[tokio::test]
async fn veem_events_follow_prints_events_as_they_come() {
    use std::io::BufRead;
    let s = Server::start().await;
    let mut follower = Command::new(veem_bin())
        .args(["-o", "json", "events", "--follow", "--type", "state"])
        .env("VEEM_URL", &s.url)
        .env("VEEM_TOKEN", TOKEN_A)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the CLI runs");
    let stdout = follower.stdout.take().expect("piped");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // The stream is open once the CLI has connected; a VEE made before that is not shown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let line = loop {
        let id = init_one(&s.a, small("followed")).await;
        if let Ok(line) = lines_rx.recv_timeout(std::time::Duration::from_millis(500)) {
            break (id, line);
        }
        assert!(std::time::Instant::now() < deadline, "no event printed");
    };
    let _ = follower.kill();
    let _ = follower.wait();
    let event: serde_json::Value = serde_json::from_str(&line.1).expect("a JSON line");
    assert_eq!(event["type"], "STATE");
    assert_eq!(event["measurements"][0]["value"], "DEFINED");
    assert!(event["vee"].as_str().is_some_and(|v| v.starts_with("vee-")));
}
