//! The agent's dispatch of protocol requests to its driver.

use std::sync::Arc;

use veem_agent::sim::{FaultSpec, LatencyConfig, SimConfig};
use veem_agent::Agent;
use veem_api::agent::{AgentErrorKind, AgentFrame, AgentRequest, AgentResponse, InstanceState};
use veem_model::HostId;

use crate::common::{blank, clone_of, host, spec, vee};

fn agent_on(root: &std::path::Path, config: SimConfig) -> Agent {
    let driver = Arc::new(host(root, "h1", config));
    Agent::new(HostId::new("h1").unwrap(), driver, 8, 16384)
}

fn error_kind(response: &AgentResponse) -> Option<AgentErrorKind> {
    match response {
        AgentResponse::Error { error } => Some(error.kind),
        _ => None,
    }
}

#[test]
fn hello_names_the_host_its_driver_and_capacity() {
    let shared = tempfile::tempdir().unwrap();
    let hello = agent_on(shared.path(), SimConfig::default()).hello();
    assert_eq!(hello.name.as_str(), "h1");
    assert_eq!(hello.driver, "sim");
    assert_eq!((hello.cpus, hello.memory_mb), (8, 16384));
}

#[tokio::test]
async fn requests_reach_the_driver_and_answer_in_kind() {
    let shared = tempfile::tempdir().unwrap();
    let migrate_ms = 20;
    let config = SimConfig {
        latency_ms: LatencyConfig {
            migrate: migrate_ms,
            ..LatencyConfig::default()
        },
        ..SimConfig::default()
    };
    let agent = agent_on(shared.path(), config);
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![blank("vda", 4)];

    let deployed = agent
        .handle(AgentRequest::Deploy { spec: web.clone() })
        .await;
    assert_eq!(deployed, AgentResponse::Done);
    let paused = agent.handle(AgentRequest::Pause { vee: vee(1) }).await;
    assert_eq!(paused, AgentResponse::Done);
    match agent.handle(AgentRequest::Status { vee: vee(1) }).await {
        AgentResponse::Status { status } => {
            assert_eq!(status.vee, vee(1));
            assert_eq!(status.state, InstanceState::Paused);
            let targets: Vec<&str> = status.disks.iter().map(|d| d.target.as_str()).collect();
            assert_eq!(targets, ["vda"]);
        }
        other => panic!("expected a status, got {other:?}"),
    }
    match agent.handle(AgentRequest::List).await {
        AgentResponse::List { instances } => assert_eq!(instances.len(), 1),
        other => panic!("expected a list, got {other:?}"),
    }
    let out = shared.path().join("export.qcow2");
    let exported = agent
        .handle(AgentRequest::ExportDisk {
            vee_dir: web.vee_dir.clone(),
            target: "vda".into(),
            out: out.clone(),
        })
        .await;
    assert_eq!(exported, AgentResponse::Done);
    assert!(out.exists());

    let target = Agent::new(
        HostId::new("h2").unwrap(),
        Arc::new(host(shared.path(), "h2", SimConfig::default())),
        8,
        16384,
    );
    let uri = match target
        .handle(AgentRequest::PrepareIncoming { spec: web.clone() })
        .await
    {
        AgentResponse::Incoming { uri, disks: None } => uri,
        other => panic!("expected an incoming uri, got {other:?}"),
    };
    let moved = agent
        .handle(AgentRequest::MigrateOut {
            vee: vee(1),
            uri,
            copy_disks_to: None,
        })
        .await;
    assert_eq!(
        moved,
        AgentResponse::Migrated {
            total_ms: migrate_ms,
            downtime_ms: 0
        }
    );
    let completed = target
        .handle(AgentRequest::CompleteIncoming {
            vee: vee(1),
            paused: false,
        })
        .await;
    assert_eq!(completed, AgentResponse::Done);
    let shut = target
        .handle(AgentRequest::Shutdown {
            vee: vee(1),
            deadline_ms: 1000,
        })
        .await;
    assert_eq!(shut, AgentResponse::Done);
    assert_eq!(
        target.handle(AgentRequest::List).await,
        AgentResponse::List { instances: vec![] }
    );
}

#[tokio::test]
async fn driver_errors_become_error_responses_of_the_right_kind() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        faults: vec![FaultSpec {
            op: "resume".into(),
            vee_name: None,
            every: None,
            probability: None,
        }],
        ..SimConfig::default()
    };
    let agent = agent_on(shared.path(), config);
    let mut web = spec(1, "web", shared.path());

    let missing_instance = agent.handle(AgentRequest::Status { vee: vee(9) }).await;
    assert_eq!(
        error_kind(&missing_instance),
        Some(AgentErrorKind::NoSuchInstance)
    );

    let missing_memory = agent
        .handle(AgentRequest::Restore {
            spec: web.clone(),
            memory_file: shared.path().join("none.sav"),
        })
        .await;
    assert_eq!(
        error_kind(&missing_memory),
        Some(AgentErrorKind::MissingFile)
    );

    web.disks = vec![clone_of("vda", &shared.path().join("images/none.qcow2"))];
    let missing_image = agent
        .handle(AgentRequest::Deploy { spec: web.clone() })
        .await;
    match &missing_image {
        AgentResponse::Error { error } => {
            assert_eq!(error.kind, AgentErrorKind::MissingFile);
            assert!(error.message.contains("none.qcow2"), "{}", error.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }

    web.disks = vec![];
    assert_eq!(
        agent
            .handle(AgentRequest::Deploy { spec: web.clone() })
            .await,
        AgentResponse::Done
    );
    let injected = agent.handle(AgentRequest::Resume { vee: vee(1) }).await;
    assert_eq!(error_kind(&injected), Some(AgentErrorKind::Failed));
    let too_big = agent
        .handle(AgentRequest::Resize {
            vee: vee(1),
            cpu: 64,
            memory_mb: 1024,
        })
        .await;
    assert_eq!(error_kind(&too_big), Some(AgentErrorKind::Failed));
    let twice = agent.handle(AgentRequest::Deploy { spec: web }).await;
    assert_eq!(error_kind(&twice), Some(AgentErrorKind::Failed));
    assert_eq!(
        agent.handle(AgentRequest::Destroy { vee: vee(5) }).await,
        AgentResponse::Done,
        "destroy is idempotent"
    );
}

#[test]
fn a_status_from_an_agent_without_device_figures_still_parses() {
    let frame = r#"{"frame": "response", "id": 4, "response": {"result": "list", "instances": [
        {"vee": "vee-00000001", "state": "running", "cpus": 1, "memory_mb": 64, "cpu_time_ms": 5}
    ]}}"#;
    match serde_json::from_str::<AgentFrame>(frame).unwrap() {
        AgentFrame::Response {
            response: AgentResponse::List { instances },
            ..
        } => {
            assert_eq!(instances.len(), 1);
            assert_eq!(instances[0].cpu_time_ms, 5);
            assert!(instances[0].disks.is_empty() && instances[0].nics.is_empty());
        }
        other => panic!("expected a list, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_with_its_own_vees_dir_keeps_its_vees_there_and_purge_removes_them() {
    let shared = tempfile::tempdir().unwrap();
    let own = shared.path().join("own-h1");
    let agent = agent_on(shared.path(), SimConfig::default()).with_vees_dir(own.clone());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![blank("vda", 4)];
    let named = web.vee_dir.clone();
    let deployed = agent.handle(AgentRequest::Deploy { spec: web }).await;
    assert_eq!(deployed, AgentResponse::Done);
    let mine = own.join(vee(1).as_str());
    assert!(
        veem_layout::disk_path(&mine, "vda").exists(),
        "its disk is the host's own"
    );
    assert!(
        !veem_layout::disk_path(&named, "vda").exists(),
        "nothing where the VEEM named the directory"
    );
    let out = shared.path().join("export.qcow2");
    let exported = agent
        .handle(AgentRequest::ExportDisk {
            vee_dir: named,
            target: "vda".into(),
            out: out.clone(),
        })
        .await;
    assert_eq!(
        exported,
        AgentResponse::Done,
        "the host exports its own copy"
    );
    assert!(
        !out.exists(),
        "written on the host's own storage, not where the VEEM named it"
    );
    // The VEEM reads it over the host's link, whole, and the host removes its copy then.
    let mut read = Vec::new();
    loop {
        let answer = agent
            .handle(AgentRequest::ReadExport {
                vee: vee(1),
                out: out.clone(),
                offset: read.len() as u64,
            })
            .await;
        let AgentResponse::Chunk { data, eof } = answer else {
            panic!("not a chunk: {answer:?}");
        };
        read.extend(AgentResponse::chunk_bytes(&data).expect("base64"));
        if eof {
            break;
        }
    }
    assert_eq!(
        read,
        std::fs::read(veem_layout::disk_path(&mine, "vda")).expect("the disk"),
        "the sim's export is a copy of the disk"
    );
    assert!(
        !mine.join("exports").join("export.qcow2").exists(),
        "removed once read"
    );
    assert_eq!(
        agent.handle(AgentRequest::Traces).await,
        AgentResponse::Traces { vees: vec![vee(1)] }
    );
    let destroyed = agent.handle(AgentRequest::Destroy { vee: vee(1) }).await;
    assert_eq!(destroyed, AgentResponse::Done);
    assert!(mine.exists(), "a destroyed VEE keeps its disks");
    // Deployed again where it is not held: the old directory is stale and goes first.
    let stale = mine.join("stale-note");
    std::fs::write(&stale, b"old").expect("write");
    let mut again = spec(1, "web", shared.path());
    again.disks = vec![blank("vda", 4)];
    again.stale_own_dir = true;
    assert_eq!(
        agent.handle(AgentRequest::Deploy { spec: again }).await,
        AgentResponse::Done
    );
    assert!(!stale.exists(), "nothing stale is taken for the VEE's");
    // Memory saved there before a shutdown is stale at the next deployment, even on its holder.
    let destroyed = agent.handle(AgentRequest::Destroy { vee: vee(1) }).await;
    assert_eq!(destroyed, AgentResponse::Done);
    let memory = veem_layout::memory_file(&mine);
    std::fs::write(&memory, b"old memory").expect("write");
    let mut held = spec(1, "web", shared.path());
    held.disks = vec![blank("vda", 4)];
    assert_eq!(
        agent.handle(AgentRequest::Deploy { spec: held }).await,
        AgentResponse::Done
    );
    assert!(!memory.exists(), "a deployment boots afresh");
    assert!(
        veem_layout::disk_path(&mine, "vda").exists(),
        "its holder keeps its disks"
    );
    let purged = agent.handle(AgentRequest::Purge { vee: vee(1) }).await;
    assert_eq!(purged, AgentResponse::Done);
    assert!(!mine.exists(), "purge removes the host's own directory");
    assert_eq!(
        agent.handle(AgentRequest::Traces).await,
        AgentResponse::Traces { vees: vec![] }
    );
}

#[tokio::test]
async fn the_console_tail_is_the_last_bytes_of_the_vees_console_log() {
    let shared = tempfile::tempdir().unwrap();
    let agent = agent_on(shared.path(), SimConfig::default());
    let dir = shared.path().join("vees").join(vee(1).as_str());
    let tail = |bytes: u64| {
        agent.handle(AgentRequest::ConsoleTail {
            vee: vee(1),
            vee_dir: dir.clone(),
            bytes,
        })
    };
    let read = |answer: AgentResponse| match answer {
        AgentResponse::Chunk { data, eof: true } => {
            AgentResponse::chunk_bytes(&data).expect("base64")
        }
        other => panic!("not one whole chunk: {other:?}"),
    };
    assert!(
        read(tail(100).await).is_empty(),
        "no console yet: nothing, and no error"
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        veem_layout::console_path(&dir),
        b"booting\nVEEM-GUEST-READY\n",
    )
    .unwrap();
    assert_eq!(read(tail(17).await), b"VEEM-GUEST-READY\n");
    assert_eq!(
        read(tail(1 << 30).await),
        b"booting\nVEEM-GUEST-READY\n",
        "never more than there is"
    );
}
