//! The sim driver through the `Driver` trait, as the agent uses it.

use std::time::{Duration, Instant};

use veem_agent::sim::{FaultSpec, LatencyConfig, SimConfig, SimDriver};
use veem_agent::{Driver, DriverError};
use veem_api::agent::{DiskPlan, InstanceState};
use veem_layout::disk_path;

use crate::common::{blank, clone_of, host, image, in_place, spec, vee};

fn fault(op: &str) -> FaultSpec {
    FaultSpec {
        op: op.to_owned(),
        vee_name: None,
        every: None,
        probability: None,
    }
}

fn state_dir_names(driver: &SimDriver) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(driver.state_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn state_of(driver: &SimDriver, seq: u64) -> InstanceState {
    driver.status(&vee(seq)).await.unwrap().state
}

#[tokio::test]
async fn deploy_creates_the_disks_and_context_and_runs() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"QFI\xfbbase image bytes");
    let data = image(shared.path(), "data.raw", b"shared data");
    let driver = host(shared.path(), "h1", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![
        DiskPlan {
            size_gb: Some(20),
            ..clone_of("vda", &base)
        },
        in_place("vdb", &data),
        blank("vdc", 10),
    ];
    web.ovf_env = Some("<Environment/>".into());

    driver.deploy(&web).await.unwrap();

    let status = driver.status(&web.vee).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!((status.cpus, status.memory_mb), (2, 1024));
    assert_eq!(driver.list().await.unwrap(), vec![status]);
    let clone = std::fs::read(disk_path(&web.vee_dir, "vda")).unwrap();
    assert_eq!(
        clone, b"QFI\xfbbase image bytes",
        "a sized clone is not inflated"
    );
    assert!(
        !disk_path(&web.vee_dir, "vdb").exists(),
        "no copy for clone=false"
    );
    assert_eq!(
        std::fs::read_to_string(web.vee_dir.join("disks/vdb.source")).unwrap(),
        data.to_str().unwrap()
    );
    let blank_disk = std::fs::read_to_string(disk_path(&web.vee_dir, "vdc")).unwrap();
    assert!(blank_disk.contains("size_gb=10"), "{blank_disk}");
    assert_eq!(
        std::fs::read_to_string(web.vee_dir.join("context/ovf-env.xml")).unwrap(),
        "<Environment/>"
    );
    assert!(driver.boot_id(&web.vee).is_some());
}

#[tokio::test]
async fn every_operation_changes_status_and_list_as_documented() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let web = spec(1, "web", shared.path());
    let db = spec(2, "db", shared.path());
    driver.deploy(&web).await.unwrap();
    driver.deploy(&db).await.unwrap();
    assert!(matches!(
        driver.deploy(&web).await,
        Err(DriverError::AlreadyExists(v)) if v == web.vee
    ));

    driver.pause(&web.vee).await.unwrap();
    assert_eq!(state_of(&driver, 1).await, InstanceState::Paused);
    driver.pause(&web.vee).await.unwrap();
    assert_eq!(state_of(&driver, 1).await, InstanceState::Paused);
    driver.resume(&web.vee).await.unwrap();
    assert_eq!(state_of(&driver, 1).await, InstanceState::Running);
    driver.resume(&web.vee).await.unwrap();

    driver.resize(&web.vee, 4, 2048).await.unwrap();
    let resized = driver.status(&web.vee).await.unwrap();
    assert_eq!((resized.cpus, resized.memory_mb), (4, 2048));
    for (cpu, memory_mb) in [(5, 1024), (2, 8192), (0, 1024), (2, 0)] {
        assert!(
            matches!(
                driver.resize(&web.vee, cpu, memory_mb).await,
                Err(DriverError::Invalid { .. })
            ),
            "{cpu} {memory_mb}"
        );
    }
    assert_eq!(driver.status(&web.vee).await.unwrap().cpus, 4);

    let listed: Vec<_> = driver
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.vee)
        .collect();
    assert_eq!(listed, vec![web.vee.clone(), db.vee.clone()]);

    driver
        .shutdown(&web.vee, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(
        driver.status(&web.vee).await,
        Err(DriverError::NoSuchInstance(v)) if v == web.vee
    ));
    assert!(matches!(
        driver.shutdown(&web.vee, Duration::from_secs(30)).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    for absent_op in [
        driver.pause(&web.vee).await,
        driver.resume(&web.vee).await,
        driver.resize(&web.vee, 1, 512).await,
        driver.complete_incoming(&web.vee, false).await,
    ] {
        assert!(matches!(absent_op, Err(DriverError::NoSuchInstance(_))));
    }

    driver.destroy(&db.vee).await.unwrap();
    driver.destroy(&db.vee).await.unwrap();
    assert!(driver.list().await.unwrap().is_empty());
    assert_eq!(state_dir_names(&driver), ["instances.journal"]);
    let restarted = SimDriver::new(SimConfig::default(), driver.state_dir().into()).unwrap();
    assert!(restarted.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_vee_without_disks_or_context_leaves_its_directory_alone() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let web = spec(1, "web", shared.path());
    driver.deploy(&web).await.unwrap();
    driver.pause(&web.vee).await.unwrap();
    driver.resume(&web.vee).await.unwrap();
    driver.resize(&web.vee, 3, 2048).await.unwrap();
    driver.destroy(&web.vee).await.unwrap();
    driver.deploy(&web).await.unwrap();
    assert!(!web.vee_dir.exists());
    assert_eq!(state_dir_names(&driver), ["instances.journal"]);
}

#[tokio::test]
async fn shutdown_and_destroy_keep_the_disks_and_a_redeploy_reuses_them() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"pristine");
    let driver = host(shared.path(), "h1", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base), blank("vdb", 1)];
    driver.deploy(&web).await.unwrap();
    let first_boot = driver.boot_id(&web.vee).unwrap();
    // The guest writes to its disk.
    std::fs::write(disk_path(&web.vee_dir, "vda"), b"guest data").unwrap();

    driver
        .shutdown(&web.vee, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(disk_path(&web.vee_dir, "vda")).unwrap(),
        b"guest data"
    );
    driver.deploy(&web).await.unwrap();
    assert_eq!(
        std::fs::read(disk_path(&web.vee_dir, "vda")).unwrap(),
        b"guest data",
        "a redeploy boots from the VEE's own disk"
    );
    assert_ne!(driver.boot_id(&web.vee), Some(first_boot));

    driver.destroy(&web.vee).await.unwrap();
    assert!(disk_path(&web.vee_dir, "vda").exists());
    assert!(disk_path(&web.vee_dir, "vdb").exists());
}

#[tokio::test]
async fn cpu_time_accrues_while_running_only() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let web = spec(1, "web", shared.path());
    driver.deploy(&web).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    driver.pause(&web.vee).await.unwrap();
    let at_pause = driver.status(&web.vee).await.unwrap().cpu_time_ms;
    assert!(at_pause > 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(driver.status(&web.vee).await.unwrap().cpu_time_ms, at_pause);
    driver.resume(&web.vee).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(driver.status(&web.vee).await.unwrap().cpu_time_ms > at_pause);
}

#[tokio::test]
async fn a_new_driver_on_the_same_state_dir_adopts_the_instances() {
    let shared = tempfile::tempdir().unwrap();
    let state_dir = shared.path().join("hosts/h1");
    let driver = SimDriver::new(SimConfig::default(), state_dir.clone()).unwrap();
    let web = spec(1, "web", shared.path());
    let db = spec(2, "db", shared.path());
    driver.deploy(&web).await.unwrap();
    driver.deploy(&db).await.unwrap();
    driver.pause(&db.vee).await.unwrap();
    driver.resize(&web.vee, 3, 1500).await.unwrap();
    let boot_ids = (driver.boot_id(&web.vee), driver.boot_id(&db.vee));
    let before = driver.list().await.unwrap();
    drop(driver);

    let restarted = SimDriver::new(SimConfig::default(), state_dir).unwrap();
    let after = restarted.list().await.unwrap();
    let summary = |list: &[veem_api::agent::InstanceStatus]| {
        list.iter()
            .map(|s| (s.vee.clone(), s.state, s.cpus, s.memory_mb))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&after), summary(&before));
    assert_eq!(
        (restarted.boot_id(&web.vee), restarted.boot_id(&db.vee)),
        boot_ids
    );
    // The adopted instances are fully operable.
    restarted.resume(&db.vee).await.unwrap();
    restarted.destroy(&web.vee).await.unwrap();
    assert_eq!(restarted.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn suspend_and_restore_keep_the_boot_identity_and_a_fresh_deploy_changes_it() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base");
    let driver = host(shared.path(), "h1", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base)];
    driver.deploy(&web).await.unwrap();
    driver.resize(&web.vee, 3, 2048).await.unwrap();
    let boot_id = driver.boot_id(&web.vee).unwrap();
    let memory_file = web.vee_dir.join("memory.sav");

    driver.suspend(&web.vee, &memory_file).await.unwrap();
    assert!(memory_file.exists());
    assert!(driver.list().await.unwrap().is_empty());
    assert_eq!(driver.boot_id(&web.vee), None);

    driver.restore(&web, &memory_file).await.unwrap();
    let status = driver.status(&web.vee).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!((status.cpus, status.memory_mb), (3, 2048));
    assert_eq!(driver.boot_id(&web.vee), Some(boot_id));

    // A suspended VEE may come back on another host of the site.
    driver.suspend(&web.vee, &memory_file).await.unwrap();
    let other = host(shared.path(), "h2", SimConfig::default());
    other.restore(&web, &memory_file).await.unwrap();
    assert_eq!(other.boot_id(&web.vee), Some(boot_id));

    other.destroy(&web.vee).await.unwrap();
    other.deploy(&web).await.unwrap();
    assert_ne!(other.boot_id(&web.vee), Some(boot_id));
}

#[tokio::test]
async fn missing_files_are_reported_by_path() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let present = image(shared.path(), "present.qcow2", b"here");
    let missing = shared.path().join("images/missing.qcow2");
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &present), clone_of("vdb", &missing)];

    let err = driver.deploy(&web).await.unwrap_err();
    assert!(
        matches!(&err, DriverError::MissingFile(path) if *path == missing),
        "{err}"
    );
    assert!(driver.list().await.unwrap().is_empty());
    assert!(
        !disk_path(&web.vee_dir, "vda").exists(),
        "a refused deploy makes no disks"
    );

    web.disks = vec![in_place("vda", &missing)];
    assert!(matches!(
        driver.deploy(&web).await,
        Err(DriverError::MissingFile(path)) if path == missing
    ));

    web.disks = vec![];
    let memory_file = shared.path().join("nowhere.sav");
    assert!(matches!(
        driver.restore(&web, &memory_file).await,
        Err(DriverError::MissingFile(path)) if path == memory_file
    ));
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn restore_refuses_another_vees_memory_and_missing_disks() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base");
    let driver = host(shared.path(), "h1", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base)];
    driver.deploy(&web).await.unwrap();
    let memory_file = shared.path().join("web.sav");
    driver.suspend(&web.vee, &memory_file).await.unwrap();

    let db = spec(2, "db", shared.path());
    assert!(matches!(
        driver.restore(&db, &memory_file).await,
        Err(DriverError::Failed { op: "restore", .. })
    ));
    std::fs::remove_file(disk_path(&web.vee_dir, "vda")).unwrap();
    assert!(matches!(
        driver.restore(&web, &memory_file).await,
        Err(DriverError::MissingFile(path)) if path == disk_path(&web.vee_dir, "vda")
    ));
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn export_disk_writes_the_clone_or_the_source_in_use() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base bytes");
    let data = image(shared.path(), "data.raw", b"in-place bytes");
    let driver = host(shared.path(), "h1", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base), in_place("vdb", &data)];
    driver.deploy(&web).await.unwrap();
    std::fs::write(
        disk_path(&web.vee_dir, "vda"),
        b"the clone, written by the guest",
    )
    .unwrap();
    let out = shared.path().join("exports");

    driver
        .export_disk(&web.vee_dir, "vda", &out.join("vda.qcow2"))
        .await
        .unwrap();
    driver
        .export_disk(&web.vee_dir, "vdb", &out.join("vdb.qcow2"))
        .await
        .unwrap();

    assert_eq!(
        std::fs::read(out.join("vda.qcow2")).unwrap(),
        b"the clone, written by the guest"
    );
    assert_eq!(
        std::fs::read(out.join("vdb.qcow2")).unwrap(),
        b"in-place bytes"
    );
    assert!(matches!(
        driver.export_disk(&web.vee_dir, "vdz", &out.join("vdz.qcow2")).await,
        Err(DriverError::MissingFile(path)) if path == disk_path(&web.vee_dir, "vdz")
    ));
    assert!(matches!(
        driver
            .export_disk(&web.vee_dir, "../vda", &out.join("x"))
            .await,
        Err(DriverError::Invalid { .. })
    ));
}

#[tokio::test]
async fn without_shared_storage_a_migration_copies_the_disks_and_the_source_keeps_nothing() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base");
    let source = host(shared.path(), "h1", SimConfig::default());
    let target = host(shared.path(), "h2", SimConfig::default());
    // Each host sees only its own directory of the VEE.
    let mut on_source = spec(1, "web", &shared.path().join("own-h1"));
    on_source.disks = vec![clone_of("vda", &base), blank("vdb", 1)];
    let mut on_target = on_source.clone();
    on_target.vee_dir = shared.path().join("own-h2").join(on_source.vee.as_str());
    source.deploy(&on_source).await.unwrap();
    let boot_id = source.boot_id(&on_source.vee).unwrap();

    let incoming = target.prepare_incoming(&on_target).await.unwrap();
    let copy = incoming.disks.expect("the target sees no disk: a copy");
    assert_eq!(copy.targets, ["vda", "vdb"]);
    let partial = veem_api::agent::DiskCopy {
        targets: vec!["vda".into()],
        ..copy.clone()
    };
    assert!(matches!(
        source
            .migrate_out(&on_source.vee, &incoming.uri, Some(&partial))
            .await,
        Err(DriverError::Invalid { .. })
    ));
    source
        .migrate_out(&on_source.vee, &incoming.uri, Some(&copy))
        .await
        .unwrap();
    assert!(!on_source.vee_dir.exists(), "the source keeps nothing");
    for target_disk in ["vda", "vdb"] {
        assert!(disk_path(&on_target.vee_dir, target_disk).exists());
    }
    target
        .complete_incoming(&on_target.vee, false)
        .await
        .unwrap();
    assert_eq!(target.boot_id(&on_target.vee), Some(boot_id));

    // Back to a host that sees them: no copy.
    let back = host(shared.path(), "h3", SimConfig::default());
    let incoming = back.prepare_incoming(&on_target).await.unwrap();
    assert_eq!(incoming.disks, None);
}

#[tokio::test]
async fn migration_moves_the_instance_and_keeps_its_boot_identity() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base");
    let source = host(shared.path(), "h1", SimConfig::default());
    let target = host(shared.path(), "h2", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base)];
    source.deploy(&web).await.unwrap();
    let boot_id = source.boot_id(&web.vee).unwrap();

    let uri = target.prepare_incoming(&web).await.unwrap().uri;
    assert!(uri.starts_with("sim://"), "{uri}");
    assert_eq!(
        target.status(&web.vee).await.unwrap().state,
        InstanceState::Incoming
    );
    assert!(matches!(
        target.pause(&web.vee).await,
        Err(DriverError::WrongState {
            state: InstanceState::Incoming,
            ..
        })
    ));
    assert!(matches!(
        source
            .migrate_out(&web.vee, "tcp:10.0.0.2:4444", None)
            .await,
        Err(DriverError::Invalid { .. })
    ));

    source.migrate_out(&web.vee, &uri, None).await.unwrap();
    assert!(source.list().await.unwrap().is_empty());
    target.complete_incoming(&web.vee, false).await.unwrap();
    assert_eq!(
        target.status(&web.vee).await.unwrap().state,
        InstanceState::Running
    );
    assert_eq!(target.boot_id(&web.vee), Some(boot_id));
    assert!(
        !web.vee_dir.join("sim-boot-id").exists(),
        "the hand-over file is consumed"
    );
    // Repeating the completion is harmless.
    target.complete_incoming(&web.vee, false).await.unwrap();
}

#[tokio::test]
async fn prepare_incoming_needs_the_vee_dirs_disks_and_completion_needs_the_transfer() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base");
    let target = host(shared.path(), "h2", SimConfig::default());
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base), blank("vdb", 1)];
    // None of its own disks here: this host does not see them, and asks for a copy.
    let incoming = target.prepare_incoming(&web).await.unwrap();
    assert_eq!(
        incoming.disks.map(|copy| copy.targets),
        Some(vec!["vda".to_owned(), "vdb".to_owned()])
    );
    target.destroy(&web.vee).await.unwrap();
    // Some of them only: neither shared storage nor a host without them.
    std::fs::create_dir_all(disk_path(&web.vee_dir, "vdb").parent().unwrap()).unwrap();
    std::fs::write(disk_path(&web.vee_dir, "vdb"), b"blank").unwrap();
    assert!(matches!(
        target.prepare_incoming(&web).await,
        Err(DriverError::MissingFile(path)) if path == disk_path(&web.vee_dir, "vda")
    ));
    assert!(target.list().await.unwrap().is_empty());

    // Without disks there is nothing to check; the boot identity comes with the transfer, so
    // completing before any transfer fails and leaves the instance waiting.
    web.disks = vec![];
    target.prepare_incoming(&web).await.unwrap();
    assert_eq!(target.boot_id(&web.vee), None);
    assert!(matches!(
        target.complete_incoming(&web.vee, false).await,
        Err(DriverError::MissingFile(path)) if path == web.vee_dir.join("sim-boot-id")
    ));
    assert_eq!(state_of(&target, 1).await, InstanceState::Incoming);
}

#[tokio::test]
async fn a_migration_survives_a_restart_of_its_destination() {
    let shared = tempfile::tempdir().unwrap();
    let source = host(shared.path(), "h1", SimConfig::default());
    let target = host(shared.path(), "h2", SimConfig::default());
    let web = spec(1, "web", shared.path());
    source.deploy(&web).await.unwrap();
    let boot_id = source.boot_id(&web.vee).unwrap();
    let uri = target.prepare_incoming(&web).await.unwrap().uri;
    drop(target);

    let target = host(shared.path(), "h2", SimConfig::default());
    assert_eq!(state_of(&target, 1).await, InstanceState::Incoming);
    source.migrate_out(&web.vee, &uri, None).await.unwrap();
    target.complete_incoming(&web.vee, false).await.unwrap();
    assert_eq!(target.boot_id(&web.vee), Some(boot_id));
    assert!(
        !web.vee_dir.join("sim-boot-id").exists(),
        "the destination consumed the hand-over file"
    );
}

#[tokio::test]
async fn a_torn_last_journal_line_is_ignored_at_restart() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let (web, db) = (spec(1, "web", shared.path()), spec(2, "db", shared.path()));
    driver.deploy(&web).await.unwrap();
    driver.deploy(&db).await.unwrap();
    let journal = driver.state_dir().join("instances.journal");
    drop(driver);
    // A kill in the middle of writing the line of a third deploy.
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(br#"{"put":{"vee":"vee-00000003","state":"Runn"#);
    std::fs::write(&journal, &bytes).unwrap();

    let restarted = host(shared.path(), "h1", SimConfig::default());
    let adopted: Vec<_> = restarted
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.vee)
        .collect();
    assert_eq!(adopted, [vee(1), vee(2)]);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 2, "the restart compacted the journal");
    assert!(text.ends_with('\n'));
}

#[test]
fn a_corrupt_journal_stops_the_start() {
    let shared = tempfile::tempdir().unwrap();
    let state_dir = shared.path().join("hosts/h1");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(state_dir.join("instances.journal"), b"{not json\n{}\n").unwrap();
    let err = SimDriver::new(SimConfig::default(), state_dir)
        .err()
        .unwrap();
    assert!(matches!(err, DriverError::CorruptState { .. }), "{err}");
}

#[tokio::test]
async fn the_journal_stays_bounded_by_the_live_instances() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let (web, db) = (spec(1, "web", shared.path()), spec(2, "db", shared.path()));
    driver.deploy(&db).await.unwrap();
    let journal = driver.state_dir().join("instances.journal");
    let mut longest = 0;
    for _ in 0..1_500 {
        driver.deploy(&web).await.unwrap();
        driver.pause(&web.vee).await.unwrap();
        driver.destroy(&web.vee).await.unwrap();
        longest = longest.max(std::fs::read_to_string(&journal).unwrap().lines().count());
    }
    // 4,501 changes in all; compaction keeps the file near 4 x live + 1,000 lines.
    assert!((1_000..=1_010).contains(&longest), "{longest} lines");

    let restarted = host(shared.path(), "h1", SimConfig::default());
    let adopted: Vec<_> = restarted
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.vee)
        .collect();
    assert_eq!(adopted, [db.vee]);
}

#[tokio::test]
async fn a_guest_that_powers_off_is_powered_off_until_destroyed() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let web = spec(1, "web", shared.path());
    driver.deploy(&web).await.unwrap();
    driver.simulate_guest_poweroff(&web.vee).await.unwrap();
    assert_eq!(state_of(&driver, 1).await, InstanceState::PoweredOff);
    assert!(matches!(
        driver.resume(&web.vee).await,
        Err(DriverError::WrongState {
            state: InstanceState::PoweredOff,
            op: "resume",
            ..
        })
    ));
    driver.destroy(&web.vee).await.unwrap();
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn faults_fail_the_chosen_op_without_changing_state() {
    let shared = tempfile::tempdir().unwrap();
    let base = image(shared.path(), "base.qcow2", b"base");
    let config = SimConfig {
        faults: vec![fault("deploy"), fault("status")],
        ..SimConfig::default()
    };
    let driver = host(shared.path(), "h1", config);
    let mut web = spec(1, "web", shared.path());
    web.disks = vec![clone_of("vda", &base)];

    assert!(matches!(
        driver.deploy(&web).await,
        Err(DriverError::Injected { op: "deploy" })
    ));
    assert!(matches!(
        driver.status(&web.vee).await,
        Err(DriverError::Injected { op: "status" })
    ));
    assert!(driver.list().await.unwrap().is_empty());
    assert!(!web.vee_dir.exists(), "a failed deploy touches nothing");
}

#[tokio::test]
async fn faults_can_target_one_vee_by_name() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        faults: vec![FaultSpec {
            vee_name: Some("db".into()),
            ..fault("pause")
        }],
        ..SimConfig::default()
    };
    let driver = host(shared.path(), "h1", config);
    let web = spec(1, "web", shared.path());
    let db = spec(2, "db", shared.path());
    driver.deploy(&web).await.unwrap();
    driver.deploy(&db).await.unwrap();

    driver.pause(&web.vee).await.unwrap();
    assert!(matches!(
        driver.pause(&db.vee).await,
        Err(DriverError::Injected { op: "pause" })
    ));
    assert_eq!(state_of(&driver, 1).await, InstanceState::Paused);
    assert_eq!(state_of(&driver, 2).await, InstanceState::Running);
}

#[tokio::test]
async fn faults_can_hit_every_nth_call() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        faults: vec![FaultSpec {
            every: Some(2),
            ..fault("deploy")
        }],
        ..SimConfig::default()
    };
    let driver = host(shared.path(), "h1", config);
    let mut outcomes = vec![];
    for seq in 1..=4 {
        outcomes.push(
            driver
                .deploy(&spec(seq, "web", shared.path()))
                .await
                .is_ok(),
        );
    }
    assert_eq!(outcomes, [true, false, true, false]);
    let running: Vec<_> = driver
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.vee)
        .collect();
    assert_eq!(running, vec![vee(1), vee(3)]);
}

#[test]
fn an_unknown_fault_op_is_refused_at_start() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        faults: vec![fault("reboot")],
        ..SimConfig::default()
    };
    assert!(matches!(
        SimDriver::new(config, shared.path().into()),
        Err(DriverError::Invalid { .. })
    ));
}

#[tokio::test]
async fn latency_delays_each_operation() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        latency_ms: LatencyConfig {
            deploy: 120,
            pause: 80,
            migrate: 60,
            ..LatencyConfig::default()
        },
        ..SimConfig::default()
    };
    let driver = host(shared.path(), "h1", config);
    let target = host(shared.path(), "h2", SimConfig::default());
    let web = spec(1, "web", shared.path());

    let started = Instant::now();
    driver.deploy(&web).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(120));

    let started = Instant::now();
    driver.pause(&web.vee).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(80));

    let uri = target.prepare_incoming(&web).await.unwrap().uri;
    let started = Instant::now();
    driver.migrate_out(&web.vee, &uri, None).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn a_shutdown_deadline_cuts_a_slow_guest_short() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        latency_ms: LatencyConfig {
            shutdown: 60_000,
            ..LatencyConfig::default()
        },
        ..SimConfig::default()
    };
    let driver = host(shared.path(), "h1", config);
    let web = spec(1, "web", shared.path());
    driver.deploy(&web).await.unwrap();
    let started = Instant::now();
    let forced = driver.shutdown(&web.vee, Duration::from_millis(50));
    tokio::time::timeout(Duration::from_secs(30), forced)
        .await
        .expect("the deadline forces the power-off long before the guest's own minute")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn operations_on_different_vees_overlap() {
    let shared = tempfile::tempdir().unwrap();
    let config = SimConfig {
        latency_ms: LatencyConfig {
            deploy: 1500,
            ..LatencyConfig::default()
        },
        ..SimConfig::default()
    };
    let driver = std::sync::Arc::new(host(shared.path(), "h1", config));
    let slow = {
        let driver = driver.clone();
        let web = spec(1, "web", shared.path());
        tokio::spawn(async move { driver.deploy(&web).await })
    };
    // While the first deploy is still under way, a second VEE's operations go through.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let db = spec(2, "db", shared.path());
    driver.destroy(&db.vee).await.unwrap();
    assert!(
        !slow.is_finished(),
        "destroying db did not wait for web's deploy"
    );
    slow.await.unwrap().unwrap();
}

/// The sim driver is for scale tests, so its per-operation file-system cost matters. This
/// prints what 5,000 deploys and destroys cost (`--nocapture` shows it) and asserts only that
/// the state is right, also across a restart halfway through.
#[tokio::test]
async fn thousands_of_deploys_and_destroys_stay_cheap_and_survive_a_restart() {
    const COUNT: u64 = 5_000;
    let shared = tempfile::tempdir().unwrap();
    let state_dir = shared.path().join("hosts/h1");
    let driver = SimDriver::new(SimConfig::default(), state_dir.clone()).unwrap();
    let specs: Vec<_> = (1..=COUNT)
        .map(|seq| spec(seq, "web", shared.path()))
        .collect();

    let started = Instant::now();
    for spec in &specs {
        driver.deploy(spec).await.unwrap();
    }
    let deploys = started.elapsed();
    let half = specs.len() / 2;
    let started = Instant::now();
    for spec in &specs[..half] {
        driver.destroy(&spec.vee).await.unwrap();
    }
    let first_destroys = started.elapsed();
    drop(driver);

    let started = Instant::now();
    let restarted = SimDriver::new(SimConfig::default(), state_dir).unwrap();
    let restart = started.elapsed();
    let adopted: Vec<_> = restarted
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|status| status.vee)
        .collect();
    let left: Vec<_> = specs[half..].iter().map(|spec| spec.vee.clone()).collect();
    assert_eq!(adopted, left);

    let started = Instant::now();
    for spec in &specs[half..] {
        restarted.destroy(&spec.vee).await.unwrap();
    }
    let last_destroys = started.elapsed();
    assert!(restarted.list().await.unwrap().is_empty());

    let per_op = |total: Duration, ops: usize| total.as_micros() / ops.max(1) as u128;
    println!(
        "sim driver, {COUNT} VEEs: deploy {deploys:?} ({} µs each), destroy {:?} ({} µs each), \
         restart adopting {} in {restart:?}",
        per_op(deploys, specs.len()),
        first_destroys + last_destroys,
        per_op(first_destroys + last_destroys, specs.len()),
        left.len(),
    );
}

#[tokio::test]
async fn purge_ends_the_instance_and_leaves_no_byte_of_it_in_the_state_directory() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    let doomed = spec(1, "doomed", shared.path());
    let kept = spec(2, "kept", shared.path());
    driver.deploy(&doomed).await.unwrap();
    driver.deploy(&kept).await.unwrap();
    driver.pause(&doomed.vee).await.unwrap();
    assert_eq!(driver.traces().await.unwrap(), vec![vee(1), vee(2)]);

    driver.purge(&doomed.vee).await.unwrap();
    assert!(matches!(
        driver.status(&doomed.vee).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    assert_eq!(driver.traces().await.unwrap(), vec![vee(2)]);
    assert_eq!(state_dir_names(&driver), vec!["instances.journal"]);
    let journal = std::fs::read_to_string(driver.state_dir().join("instances.journal")).unwrap();
    assert!(!journal.contains(vee(1).as_str()), "{journal}");
    assert!(journal.contains(vee(2).as_str()), "{journal}");
    // Again, and of a VEE it never had: nothing to do, no error.
    driver.purge(&doomed.vee).await.unwrap();
    driver.purge(&vee(3)).await.unwrap();

    // A VEE destroyed earlier is still a trace until purged; the other runs on.
    driver.destroy(&kept.vee).await.unwrap();
    assert_eq!(driver.traces().await.unwrap(), vec![vee(2)]);
    driver.purge(&kept.vee).await.unwrap();
    assert_eq!(driver.traces().await.unwrap(), vec![]);
    let journal = std::fs::read_to_string(driver.state_dir().join("instances.journal")).unwrap();
    assert_eq!(journal, "");
}

#[tokio::test]
async fn a_restarted_driver_keeps_traces_of_live_instances_only() {
    let shared = tempfile::tempdir().unwrap();
    let driver = host(shared.path(), "h1", SimConfig::default());
    driver
        .deploy(&spec(1, "gone", shared.path()))
        .await
        .unwrap();
    driver
        .deploy(&spec(2, "live", shared.path()))
        .await
        .unwrap();
    driver.destroy(&vee(1)).await.unwrap();
    drop(driver);
    // Opening compacts the journal: the destroyed VEE's lines are gone with it.
    let driver = host(shared.path(), "h1", SimConfig::default());
    assert_eq!(driver.traces().await.unwrap(), vec![vee(2)]);
}
