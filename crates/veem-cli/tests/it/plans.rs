//! Placement plans (`POST /vmi/v1/vees/plan`, `veem vee plan`), the names of a batch's
//! replicas, and the CLI's habits (completions, `vee ls --watch`), through the real binary
//! against a server with sim hosts: this is placement, not VM behaviour.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use veem_model::{ControlAction as A, InitModel, VmiState};

use crate::cli::{json, veem};
use crate::federation::{named, register, site, site_of};
use crate::harness::*;

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `veem -o json vee plan -f <file> --count <count>`.
fn plan(s: &Server, file: &std::path::Path, count: u32) -> serde_json::Value {
    json(&veem(
        s,
        TOKEN_A,
        &[
            "-o",
            "json",
            "vee",
            "plan",
            "-f",
            file.to_str().expect("utf-8"),
            "--count",
            &count.to_string(),
        ],
    ))
}

fn hosts_of(plan: &serde_json::Value) -> Vec<String> {
    plan["placements"]
        .as_array()
        .expect("placements")
        .iter()
        .map(|p| p["host"].as_str().expect("a host").to_owned())
        .collect()
}

#[tokio::test]
async fn a_plan_says_where_twophase_then_reserves_the_batch_and_changes_nothing() {
    let s = Server::start().await;
    // Three hosts of 8 CPUs; anti-affinity puts each replica on a host of its own.
    let descriptor = write_file(
        s.dir.path(),
        "db.json",
        br#"{"name": "db", "cpu": 4, "memory_mb": 1024, "tags": ["db"], "anti_affinity": ["db"]}"#,
    );
    let planned = plan(&s, &descriptor, 3);
    assert_eq!(planned["feasible"], true, "{planned}");
    let hosts = hosts_of(&planned);
    let mut distinct = hosts.clone();
    distinct.sort();
    assert_eq!(distinct, ["h1", "h2", "h3"], "{planned}");
    for (i, p) in planned["placements"]
        .as_array()
        .expect("list")
        .iter()
        .enumerate()
    {
        assert_eq!(p["index"], i);
        assert_eq!(p["name"], format!("db-{}", i + 1));
        assert_eq!(p["site"], "local");
        assert_eq!(p["reason"], serde_json::Value::Null);
    }
    let table = text(&veem(
        &s,
        TOKEN_A,
        &[
            "vee",
            "plan",
            "-f",
            descriptor.to_str().expect("utf-8"),
            "--count",
            "3",
        ],
    ));
    assert!(
        table.contains("INDEX") && table.contains("db-2") && table.starts_with("INDEX"),
        "{table}"
    );
    assert!(table.contains("\nfeasible: "), "{table}");
    // The plan changed nothing: no VEE, no host in use.
    assert!(s
        .a
        .list_all_vees(&Default::default())
        .await
        .expect("list")
        .is_empty());
    let used: u32 = s
        .ops
        .list_hosts()
        .await
        .expect("hosts")
        .hosts
        .iter()
        .map(|h| h.used.cpus)
        .sum();
    assert_eq!(used, 0);

    // TWOPHASE of the same batch: reserved, named db-1..db-3, and (activated) where planned.
    let d: veem_model::VeeDescriptor =
        serde_json::from_slice(&std::fs::read(&descriptor).expect("read")).expect("a descriptor");
    let ids = init(&s.a, InitModel::Twophase, 3, d.clone()).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    for (i, id) in ids.iter().enumerate() {
        let view = get(&s.a, id).await;
        assert_eq!(
            view.name,
            format!("db-{}", i + 1),
            "the VMI view names the replica"
        );
        assert_eq!(view.generated.name.as_deref(), Some(view.name.as_str()));
        assert_eq!(view.descriptor.name, "db");
        assert_eq!(
            view.host.as_ref().map(|h| h.to_string()),
            Some(hosts[i].clone())
        );
    }
    let ls = text(&veem(&s, TOKEN_A, &["vee", "ls"]));
    assert!(ls.contains("db-1") && ls.contains("db-3"), "{ls}");

    // A fourth with anti-affinity on db has no host: the plan says why, TWOPHASE is refused.
    let refused = plan(&s, &descriptor, 1);
    assert_eq!(refused["feasible"], false, "{refused}");
    let p = &refused["placements"][0];
    assert_eq!(
        (p["host"].is_null(), p["name"].as_str()),
        (true, Some("db"))
    );
    let reason = p["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("local hosts") && reason.contains("anti-affinity"),
        "{reason}"
    );
    let table = text(&veem(
        &s,
        TOKEN_A,
        &["vee", "plan", "-f", descriptor.to_str().expect("utf-8")],
    ));
    assert!(table.contains("not feasible"), "{table}");
    let err =
        s.a.initialize(&veem_api::InitializeRequest {
            model: InitModel::Twophase,
            count: 1,
            descriptor: d,
        })
        .await
        .expect_err("the plan said it does not fit");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("insufficient_resources"))
    );

    // Bad input: 400 with the code InitializeVEEs gives, nothing changed.
    for (content_type, body, code) in [
        (
            "application/json",
            r#"{"model": "TWOPHASE", "descriptor": {"cpu": 0, "memory_mb": 1}}"#,
            "malformed_descriptor",
        ),
        (
            "application/json",
            r#"{"model": "TWOPHASE", "count": 0, "descriptor": {"cpu": 1, "memory_mb": 64}}"#,
            "malformed_request",
        ),
        ("application/ovf+xml", "<Envelope", "malformed_descriptor"),
        ("text/plain", "hello", "malformed_request"),
    ] {
        let (status, _, answer) =
            s.a.raw_request(
                Method::POST,
                "/vmi/v1/vees/plan",
                Some(content_type),
                body.as_bytes().to_vec(),
            )
            .await
            .expect("answered");
        let problem: serde_json::Value = serde_json::from_slice(&answer).expect("a problem");
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{body}: {problem}"
        );
    }
    let out = veem(
        &s,
        TOKEN_A,
        &["vee", "plan", "--cpu", "0", "--memory-mb", "64"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.a.list_all_vees(&Default::default())
            .await
            .expect("list")
            .len(),
        3
    );
}

#[tokio::test]
async fn an_ovf_envelope_is_planned_as_initialize_reads_it() {
    let s = Server::start().await;
    let envelope = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/ovf/govmomi/ttylinux.ovf");
    let planned = json(&veem(
        &s,
        TOKEN_A,
        &[
            "-o",
            "json",
            "vee",
            "plan",
            "--ovf",
            envelope.to_str().expect("utf-8"),
            "--count",
            "2",
        ],
    ));
    assert_eq!(planned["feasible"], true, "{planned}");
    assert_eq!(planned["placements"].as_array().expect("list").len(), 2);
    assert!(s
        .a
        .list_all_vees(&Default::default())
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test]
async fn a_plan_asks_the_next_site_for_its_own_plan_and_names_are_kept_there() {
    let (west, east) = (site_of("west", 2).await, site("east").await);
    register(&west, &east, "east").await;
    // Three of one CPU do not fit west's two: east's plan takes them.
    let planned = west
        .a
        .plan(&veem_api::InitializeRequest {
            model: InitModel::Twophase,
            count: 3,
            descriptor: small("trio"),
        })
        .await
        .expect("a plan");
    assert!(planned.feasible, "{planned:?}");
    for p in &planned.placements {
        assert_eq!(
            (p.site.as_str(), p.host.as_ref()),
            ("east", None),
            "{planned:?}"
        );
    }
    assert!(
        named(&east, "trio").await.is_none(),
        "the plan made nothing at east"
    );
    let ids = init(&west.a, InitModel::Twophase, 3, small("trio")).await;
    for (i, id) in ids.iter().enumerate() {
        let view = get(&west.a, id).await;
        assert_eq!(
            (view.site.as_str(), view.name.clone()),
            ("east", format!("trio-{}", i + 1))
        );
    }
    for i in 1..=3 {
        assert!(
            named(&east, &format!("trio-{i}")).await.is_some(),
            "trio-{i} at east"
        );
    }

    // Twenty fit nowhere: the reason names each place, and nothing is made anywhere.
    let crowd = west
        .a
        .plan(&veem_api::InitializeRequest {
            model: InitModel::Twophase,
            count: 20,
            descriptor: small("crowd"),
        })
        .await
        .expect("a plan");
    assert!(!crowd.feasible);
    let reason = crowd.placements[0].reason.as_deref().expect("a reason");
    assert!(
        reason.contains("local hosts") && reason.contains("site east"),
        "{reason}"
    );
    assert_eq!(crowd.placements[0].site, "west");
    assert!(named(&east, "crowd").await.is_none());
    assert!(named(&west, "crowd").await.is_none());
}

#[tokio::test]
async fn completion_scripts_are_printed_for_each_shell_and_bash_loads_them() {
    let bash = Command::new(veem_bin())
        .args(["completions", "bash"])
        .output()
        .expect("runs");
    let script = text(&bash);
    assert!(
        script.contains("complete") && script.contains("veem"),
        "{script}"
    );
    let dir = tempfile::tempdir().expect("a directory");
    let path = write_file(dir.path(), "veem.bash", script.as_bytes());
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash runs");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // Sourced, it registers a completion for `veem`.
    let sourced = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p veem", path.display()))
        .output()
        .expect("bash runs");
    assert!(
        String::from_utf8_lossy(&sourced.stdout).contains("veem"),
        "{}",
        String::from_utf8_lossy(&sourced.stderr)
    );
    for (shell, mark) in [("zsh", "#compdef veem"), ("fish", "complete -c veem")] {
        let script = text(
            &Command::new(veem_bin())
                .args(["completions", shell])
                .output()
                .expect("runs"),
        );
        assert!(script.contains(mark), "{shell}: {script}");
    }
}

#[tokio::test]
async fn vee_ls_watch_shows_the_list_again_when_a_state_changes() {
    let s = Server::start().await;
    let id = init_one(&s.a, small("watched")).await;
    let mut child = Command::new(veem_bin())
        .args(["vee", "ls", "--watch", "--watch-count", "50"])
        .env("VEEM_URL", &s.url)
        .env("VEEM_TOKEN", TOKEN_A)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI runs");
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .expect("not poisoned")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if seen.lock().expect("not poisoned").contains(what) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never showed {what}: {}",
                seen.lock().expect("not poisoned")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("DEFINED");
    let started = Instant::now();
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_for("ACTIVE");
    let shown_after = started.elapsed();
    child.kill().expect("killed");
    child.wait().expect("ended");
    reader.join().expect("the reader ends with the process");
    let out = seen.lock().expect("not poisoned").clone();
    let (before, _) = out.split_at(out.find("ACTIVE").expect("shown"));
    assert!(before.contains(&id) && before.contains("DEFINED"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&id) && l.contains(" ACTIVE ")),
        "{out}"
    );
    assert!(
        out.matches("ID  ").count() >= 2,
        "the table shown again: {out}"
    );
    // Shown at the STATE event, not only at the next 2 s tick (a margin for slow machines).
    assert!(shown_after < Duration::from_secs(10), "{shown_after:?}");

    // -o json: one list a line, and it stops after --watch-count lists.
    let out = Command::new(veem_bin())
        .args(["-o", "json", "vee", "ls", "--watch", "--watch-count", "2"])
        .env("VEEM_URL", &s.url)
        .env("VEEM_TOKEN", TOKEN_A)
        .output()
        .expect("the CLI runs");
    let lines: Vec<serde_json::Value> = text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON list a line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["vees"][0]["state"], "ACTIVE");
    assert_eq!(state_of(&s.a, &id).await, VmiState::Active);
}

#[tokio::test]
async fn progress_bars_stay_off_standard_error_when_no_person_watches() {
    let s = Server::start().await;
    let image = write_file(s.dir.path(), "tiny.img", &vec![7u8; 3 << 20]);
    for args in [&["image", "push"][..], &["-o", "json", "image", "push"][..]] {
        let mut all = args.to_vec();
        all.extend(["tiny", image.to_str().expect("utf-8")]);
        let out = veem(&s, TOKEN_A, &all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = s.a.delete_image("tiny").await;
    }
}
