//! The qemu driver on real QEMU. Most tests need no guest OS: a VM without a bootable disk
//! still runs its firmware and answers QMP, so pause, suspend, restore and live migration all
//! work on it. What needs a guest (its own agent's reports) boots veem's test guest, built
//! once per test binary. Each test skips, loudly, where `qemu-system-x86_64` is not installed
//! (CI installs it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use veem_agent::qemu::qmp::{QueryBalloon, QueryCpusFast, QueryStatus};
use veem_agent::qemu::{Accel, QemuConfig, QemuDriver};
use veem_agent::{Driver, DriverError};
use veem_api::agent::{AgentReport, DeploySpec, DiskPlan, InstanceState, NicPlan};
use veem_layout::{console_path, context_image_path, disk_path};
use veem_model::VeeId;

use crate::common::{blank, clone_of, vee};
use crate::hostnet::{can_change_network, ipv6_disabled, master_of, private_lan, Links};

fn qemu_installed() -> bool {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Returns from the test, saying so loudly, where QEMU is not installed.
macro_rules! require_qemu {
    () => {
        if !veem_guest::testing::require(
            qemu_installed(),
            "qemu-system-x86_64 is not installed; run scripts/install-deps",
        ) {
            return;
        }
    };
}

/// A test's shared storage and hosts. Dropping it kills every QEMU its hosts still record, so
/// a failed test leaves no guest behind.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let Ok(hosts) = std::fs::read_dir(self.dir.path().join("hosts")) else {
            return;
        };
        for host in hosts.flatten() {
            for entry in std::fs::read_dir(host.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "pid") {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = pid.trim();
                    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|cmdline| cmdline.windows(6).any(|w| w == b"-name\0"));
                    if ours {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", pid])
                            .status();
                    }
                }
            }
        }
    }
}

fn config() -> QemuConfig {
    QemuConfig {
        cpu_unplug_timeout_ms: 300,
        ..QemuConfig::default()
    }
}

fn host(root: &Path, name: &str) -> QemuDriver {
    QemuDriver::new(config(), root.join("hosts").join(name)).unwrap()
}

/// A tiny VEE: 1 of 2 vCPUs, 64 of 128 MB, one blank disk.
fn tiny(seq: u64, shared: &Path) -> DeploySpec {
    let vee = vee(seq);
    DeploySpec {
        vee_dir: shared.join("vees").join(vee.as_str()),
        stale_own_dir: false,
        vee,
        name: format!("tiny{seq}"),
        cpu: 1,
        cpu_max: 2,
        memory_mb: 64,
        memory_max_mb: 128,
        disks: vec![blank("vda", 1)],
        nics: vec![],
        hypervisor: None,
        raw: String::new(),
        ovf_env: None,
        boot: None,
    }
}

fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !matches!(stat_field(&stat, 0).as_deref(), Some("Z" | "X")))
}

/// Field `index` after the command name of /proc/<pid>/stat (0 is the state).
fn stat_field(stat: &str, index: usize) -> Option<String> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(index).map(str::to_owned)
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.windows(2)
        .find(|pair| pair[0] == flag)
        .map(|pair| pair[1].clone())
}

async fn run_status(driver: &QemuDriver, vee: &VeeId) -> String {
    let qmp = driver.qmp(vee).await.unwrap();
    qmp.execute(&QueryStatus).await.unwrap().status
}

async fn state_of(driver: &QemuDriver, vee: &VeeId) -> InstanceState {
    driver.status(vee).await.unwrap().state
}

fn qemu_img_info(path: &Path) -> Value {
    let output = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs one qemu-io command on a qcow2 file; a `read -P` whose pattern does not match fails
/// (qemu-io itself exits 0 then and only says so).
fn qemu_io(path: &Path, command: &str) -> bool {
    let output = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(path)
        .output()
        .unwrap();
    output.status.success()
        && !String::from_utf8_lossy(&output.stdout).contains("Pattern verification failed")
}

fn state_files(driver: &QemuDriver) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(driver.state_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_deployed_vee_is_a_named_daemon_that_pauses_and_resumes() {
    require_qemu!();
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let spec = tiny(1, shared.path());

    let started = Instant::now();
    driver.deploy(&spec).await.unwrap();
    let deploy_ms = started.elapsed().as_millis();

    let status = driver.status(&spec.vee).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!((status.cpus, status.memory_mb), (1, 64));
    let pid = driver.pid(&spec.vee).unwrap();
    let args = cmdline(pid);
    assert_eq!(arg_after(&args, "-name").as_deref(), Some("vee-00000001"));
    assert_eq!(arg_after(&args, "-m").as_deref(), Some("128M"));
    assert_eq!(arg_after(&args, "-smp").as_deref(), Some("1,maxcpus=2"));
    if driver.accel() == Accel::Tcg {
        assert_eq!(arg_after(&args, "-accel").as_deref(), Some("tcg"));
        assert_eq!(arg_after(&args, "-cpu").as_deref(), Some("max"));
    }
    let ps = std::process::Command::new("ps")
        .args(["-o", "args=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("-name vee-00000001"),
        "ps shows {:?}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // Daemonized: neither our child nor in our session, so it outlives the agent's process
    // and a signal to the agent's terminal.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let own = std::fs::read_to_string("/proc/self/stat").unwrap();
    assert_ne!(
        stat_field(&stat, 1).unwrap(),
        std::process::id().to_string()
    );
    assert_ne!(stat_field(&stat, 3), stat_field(&own, 3), "session");
    assert_ne!(stat_field(&stat, 2), stat_field(&own, 2), "process group");
    assert!(console_path(&spec.vee_dir).exists());
    assert_eq!(
        qemu_img_info(&disk_path(&spec.vee_dir, "vda"))["virtual-size"],
        1 << 30
    );
    // The firmware's boot costs CPU time, counted in clock ticks of 10 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver.status(&spec.vee).await.unwrap().cpu_time_ms == 0 {
        assert!(Instant::now() < deadline, "the guest never used CPU time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    driver.pause(&spec.vee).await.unwrap();
    let pause_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(state_of(&driver, &spec.vee).await, InstanceState::Paused);
    assert_eq!(run_status(&driver, &spec.vee).await, "paused");
    // Paused is where pause leaves it; a second pause changes nothing.
    driver.pause(&spec.vee).await.unwrap();
    let started = Instant::now();
    driver.resume(&spec.vee).await.unwrap();
    let resume_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(state_of(&driver, &spec.vee).await, InstanceState::Running);
    assert_eq!(run_status(&driver, &spec.vee).await, "running");
    eprintln!("qemu: deploy {deploy_ms} ms, pause {pause_ms:.1} ms, resume {resume_ms:.1} ms");

    assert!(matches!(
        driver.deploy(&spec).await,
        Err(DriverError::AlreadyExists(_))
    ));
    driver.destroy(&spec.vee).await.unwrap();
    assert!(!proc_alive(pid));
    driver.destroy(&spec.vee).await.unwrap();
    assert!(matches!(
        driver.status(&spec.vee).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    assert!(driver.list().await.unwrap().is_empty());
    assert!(
        state_files(&driver).is_empty(),
        "{:?}",
        state_files(&driver)
    );
    assert!(disk_path(&spec.vee_dir, "vda").exists(), "disks are kept");
}

#[tokio::test]
async fn suspend_frees_the_host_and_restore_brings_the_same_machine_back() {
    require_qemu!();
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let spec = tiny(2, shared.path());
    driver.deploy(&spec).await.unwrap();
    // A plugged vCPU and a balloon target must survive the trip through the file.
    driver.resize(&spec.vee, 2, 96).await.unwrap();
    let old_pid = driver.pid(&spec.vee).unwrap();
    let memory_file = spec.vee_dir.join("memory");

    let started = Instant::now();
    driver.suspend(&spec.vee, &memory_file).await.unwrap();
    let suspend_ms = started.elapsed().as_millis();
    assert!(!proc_alive(old_pid), "suspend ends the process");
    assert!(std::fs::metadata(&memory_file).unwrap().len() > 0);
    assert!(driver.list().await.unwrap().is_empty());
    assert!(
        state_files(&driver).is_empty(),
        "{:?}",
        state_files(&driver)
    );

    let started = Instant::now();
    driver.restore(&spec, &memory_file).await.unwrap();
    let restore_ms = started.elapsed().as_millis();
    let new_pid = driver.pid(&spec.vee).unwrap();
    assert_ne!(new_pid, old_pid);
    let status = driver.status(&spec.vee).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!((status.cpus, status.memory_mb), (2, 96));
    assert_eq!(run_status(&driver, &spec.vee).await, "running");
    let qmp = driver.qmp(&spec.vee).await.unwrap();
    assert_eq!(qmp.execute(&QueryCpusFast).await.unwrap().len(), 2);
    eprintln!("qemu: suspend {suspend_ms} ms, restore {restore_ms} ms (128 MB idle guest)");

    // A suspend of a paused VEE works too, and the restored one runs.
    driver.pause(&spec.vee).await.unwrap();
    driver.suspend(&spec.vee, &memory_file).await.unwrap();
    driver.restore(&spec, &memory_file).await.unwrap();
    assert_eq!(state_of(&driver, &spec.vee).await, InstanceState::Running);
    driver.destroy(&spec.vee).await.unwrap();

    let missing = shared.path().join("no-such-memory");
    assert!(matches!(
        driver.restore(&spec, &missing).await,
        Err(DriverError::MissingFile(path)) if path == missing
    ));
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_forces_a_guest_that_ignores_acpi_after_the_deadline() {
    require_qemu!();
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let spec = tiny(3, shared.path());
    driver.deploy(&spec).await.unwrap();
    let pid = driver.pid(&spec.vee).unwrap();

    let deadline = Duration::from_millis(400);
    let started = Instant::now();
    driver.shutdown(&spec.vee, deadline).await.unwrap();
    // Firmware alone does not power off on ACPI: the driver waited, then forced it.
    assert!(started.elapsed() >= deadline);
    assert!(!proc_alive(pid));
    assert!(matches!(
        driver.status(&spec.vee).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    assert!(matches!(
        driver.shutdown(&spec.vee, deadline).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    assert!(disk_path(&spec.vee_dir, "vda").exists());
    // The VEE boots again from its own disk.
    let started = Instant::now();
    driver.deploy(&spec).await.unwrap();
    eprintln!(
        "qemu: deploy with its disk already there (start, QMP ready, balloon) {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(state_of(&driver, &spec.vee).await, InstanceState::Running);
    driver.destroy(&spec.vee).await.unwrap();
}

#[tokio::test]
async fn resize_moves_the_balloon_and_plugs_vcpus_live() {
    require_qemu!();
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let spec = tiny(4, shared.path());
    driver.deploy(&spec).await.unwrap();
    let pid = driver.pid(&spec.vee).unwrap();
    let qmp = driver.qmp(&spec.vee).await.unwrap();
    // QEMU has the maximum; the guest's balloon driver gives back the rest (no guest here,
    // so `actual` stays where the firmware left it).
    assert_eq!(qmp.execute(&QueryBalloon).await.unwrap().actual, 128 << 20);

    driver.resize(&spec.vee, 2, 128).await.unwrap();
    let status = driver.status(&spec.vee).await.unwrap();
    assert_eq!((status.cpus, status.memory_mb), (2, 128));
    assert_eq!(qmp.execute(&QueryCpusFast).await.unwrap().len(), 2);
    assert_eq!(driver.pid(&spec.vee), Some(pid), "the same process");
    driver.resize(&spec.vee, 2, 48).await.unwrap();
    assert_eq!(driver.status(&spec.vee).await.unwrap().memory_mb, 48);

    for (cpu, memory_mb) in [(3, 64), (0, 64), (1, 129), (1, 0)] {
        assert!(
            matches!(
                driver.resize(&spec.vee, cpu, memory_mb).await,
                Err(DriverError::Invalid { .. })
            ),
            "{cpu} vCPUs, {memory_mb} MB"
        );
    }
    // Unplugging needs a guest that takes part in ACPI CPU hotplug; firmware alone does not.
    assert!(matches!(
        driver.resize(&spec.vee, 1, 48).await,
        Err(DriverError::Failed { op: "resize", .. })
    ));
    assert_eq!(driver.status(&spec.vee).await.unwrap().cpus, 2);
    driver.destroy(&spec.vee).await.unwrap();

    let mut two = tiny(5, shared.path());
    two.cpu = 2;
    driver.deploy(&two).await.unwrap();
    assert!(matches!(
        driver.resize(&two.vee, 1, 64).await,
        Err(DriverError::Unsupported(_))
    ));
    driver.destroy(&two.vee).await.unwrap();
}

#[tokio::test]
async fn clones_keep_the_guests_writes_and_export_flattens_them() {
    require_qemu!();
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let images = shared.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let base = images.join("base.qcow2");
    let created = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status()
        .unwrap();
    assert!(created.success());
    assert!(qemu_io(&base, "write -P 0x11 0 64k"));
    let mut spec = tiny(6, shared.path());
    spec.disks = vec![DiskPlan {
        size_gb: Some(1),
        ..clone_of("vda", &base)
    }];
    spec.ovf_env = Some("<Environment ve:vee=\"vee-00000006\"/>".into());

    driver.deploy(&spec).await.unwrap();
    let disk = disk_path(&spec.vee_dir, "vda");
    let info = qemu_img_info(&disk);
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
    assert_eq!(info["virtual-size"], 1 << 30, "size_gb grows the clone");
    // The context disk is the last drive, read-only, and holds the document.
    let qmp = driver.qmp(&spec.vee).await.unwrap();
    let block = qmp.execute_value("query-block", Value::Null).await.unwrap();
    let drives: Vec<&str> = block
        .as_array()
        .unwrap()
        .iter()
        .map(|drive| drive["device"].as_str().unwrap())
        .collect();
    assert_eq!(drives, ["drive-vda", "drive-context"]);
    assert_eq!(block[1]["inserted"]["ro"], true);
    let document = std::process::Command::new("mtype")
        .arg("-i")
        .arg(context_image_path(&spec.vee_dir))
        .arg("::/ovf-env.xml")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&document.stdout),
        spec.ovf_env.clone().unwrap()
    );
    // A running VEE's disk is locked by its QEMU.
    let out = shared.path().join("exports").join("vda.qcow2");
    assert!(driver
        .export_disk(&spec.vee_dir, "vda", &out)
        .await
        .is_err());
    driver.destroy(&spec.vee).await.unwrap();

    // The guest writes to its clone; a redeploy keeps the clone, not a fresh copy.
    assert!(qemu_io(&disk, "write -P 0x22 64k 64k"));
    driver.deploy(&spec).await.unwrap();
    driver.shutdown(&spec.vee, Duration::ZERO).await.unwrap();
    assert!(qemu_io(&disk, "read -P 0x22 64k 64k"));

    driver
        .export_disk(&spec.vee_dir, "vda", &out)
        .await
        .unwrap();
    let exported = qemu_img_info(&out);
    assert!(exported.get("backing-filename").is_none(), "{exported}");
    assert!(qemu_io(&out, "read -P 0x11 0 64k"), "the image's data");
    assert!(qemu_io(&out, "read -P 0x22 64k 64k"), "the guest's data");
    assert!(matches!(
        driver.export_disk(&spec.vee_dir, "vdz", &out).await,
        Err(DriverError::MissingFile(_))
    ));
}

/// Runs qemu-io on a running VEE's disk `target`, through its QEMU (the file is locked).
async fn qemu_io_live(driver: &QemuDriver, vee: &VeeId, target: &str, command: &str) {
    let qmp = driver.qmp(vee).await.unwrap();
    let line = format!("qemu-io drive-{target} \"{command}\"");
    let answer = qmp
        .execute_value(
            "human-monitor-command",
            serde_json::json!({ "command-line": line }),
        )
        .await
        .unwrap();
    assert!(
        !answer.as_str().unwrap_or_default().contains("error"),
        "{line}: {answer}"
    );
}

#[tokio::test]
async fn without_shared_storage_a_live_migration_copies_the_disks_and_an_unfinished_copy_goes() {
    require_qemu!();
    let scene = Scene::new();
    let source = host(scene.path(), "h1");
    let target = host(scene.path(), "h2");
    // Each host sees only its own directory of the VEE.
    let on_source = tiny(11, &scene.path().join("own-h1"));
    let on_target = tiny(11, &scene.path().join("own-h2"));
    source.deploy(&on_source).await.unwrap();
    qemu_io_live(&source, &on_source.vee, "vda", "write -P 0x5a 1M 64k").await;

    // A copy given up leaves nothing that could pass for the VEE's disk.
    let incoming = target.prepare_incoming(&on_target).await.unwrap();
    let copy = incoming
        .disks
        .expect("the target does not see the disk: a copy");
    assert_eq!(copy.targets, ["vda"]);
    assert!(copy.address.starts_with("nbd://127.0.0.1:"), "{copy:?}");
    assert!(disk_path(&on_target.vee_dir, "vda").exists());
    target.destroy(&on_target.vee).await.unwrap();
    assert!(!disk_path(&on_target.vee_dir, "vda").exists());

    let incoming = target.prepare_incoming(&on_target).await.unwrap();
    let copy = incoming.disks.expect("a copy again");
    // A copy that cannot reach its target fails and leaves the VEE running at the source,
    // with no block job behind.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = veem_api::agent::DiskCopy {
        address: format!("nbd://127.0.0.1:{nowhere}"),
        ..copy.clone()
    };
    assert!(matches!(
        source
            .migrate_out(&on_source.vee, &incoming.uri, Some(&unreachable))
            .await,
        Err(DriverError::Failed { .. })
    ));
    assert_eq!(
        state_of(&source, &on_source.vee).await,
        InstanceState::Running
    );
    let jobs = source
        .qmp(&on_source.vee)
        .await
        .unwrap()
        .execute_value("query-block-jobs", Value::Null)
        .await
        .unwrap();
    assert_eq!(jobs, serde_json::json!([]));
    // The source refuses a copy that would leave a disk behind.
    let partial = veem_api::agent::DiskCopy {
        targets: vec![],
        ..copy.clone()
    };
    assert!(matches!(
        source
            .migrate_out(&on_source.vee, &incoming.uri, Some(&partial))
            .await,
        Err(DriverError::Invalid { .. })
    ));
    let stats = source
        .migrate_out(&on_source.vee, &incoming.uri, Some(&copy))
        .await
        .unwrap();
    assert!(source.list().await.unwrap().is_empty());
    assert!(
        !on_source.vee_dir.exists(),
        "the source keeps nothing of the VEE"
    );
    // Arrived, but paused until the target has closed its exports.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut arrived = state_of(&target, &on_target.vee).await;
    while arrived == InstanceState::Incoming && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        arrived = state_of(&target, &on_target.vee).await;
    }
    assert_eq!(arrived, InstanceState::Paused);
    target
        .complete_incoming(&on_target.vee, false)
        .await
        .unwrap();
    assert_eq!(
        state_of(&target, &on_target.vee).await,
        InstanceState::Running
    );
    // Written at the destination too: its disk is its own now.
    qemu_io_live(&target, &on_target.vee, "vda", "write -P 0x6b 2M 64k").await;
    eprintln!("qemu: live migration with a 1 GiB disk copied: {stats:?}");
    target.destroy(&on_target.vee).await.unwrap();
    let disk = disk_path(&on_target.vee_dir, "vda");
    assert!(
        qemu_io(&disk, "read -P 0x5a 1M 64k"),
        "written at the source"
    );
    assert!(
        qemu_io(&disk, "read -P 0x6b 2M 64k"),
        "written at the target"
    );
    assert!(qemu_io(&disk, "read -P 0 0 1M"), "the rest as it was");
}

#[tokio::test]
async fn live_migration_moves_a_running_vee_to_another_driver() {
    require_qemu!();
    let shared = Scene::new();
    let source = host(shared.path(), "h1");
    let target = host(shared.path(), "h2");
    let spec = tiny(7, shared.path());
    source.deploy(&spec).await.unwrap();
    source.resize(&spec.vee, 2, 80).await.unwrap();
    let source_pid = source.pid(&spec.vee).unwrap();

    let uri = target.prepare_incoming(&spec).await.unwrap().uri;
    assert!(uri.starts_with("tcp:127.0.0.1:"), "{uri}");
    assert_eq!(state_of(&target, &spec.vee).await, InstanceState::Incoming);
    // Nothing has arrived yet: there is nothing to complete.
    assert!(matches!(
        target.complete_incoming(&spec.vee, false).await,
        Err(DriverError::WrongState { .. })
    ));

    let started = Instant::now();
    let stats = source.migrate_out(&spec.vee, &uri, None).await.unwrap();
    let migrate_ms = started.elapsed().as_millis();
    assert!(!proc_alive(source_pid));
    assert!(source.list().await.unwrap().is_empty());
    assert_eq!(source.last_migration(&spec.vee), Some(stats));
    assert!(stats.total_ms > 0, "{stats:?}");
    assert!(stats.total_ms >= stats.downtime_ms, "{stats:?}");
    assert!(
        u128::from(stats.total_ms) <= migrate_ms + 1,
        "{stats:?} in {migrate_ms} ms"
    );

    target.complete_incoming(&spec.vee, false).await.unwrap();
    let status = target.status(&spec.vee).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!((status.cpus, status.memory_mb), (2, 80));
    assert_ne!(target.pid(&spec.vee), Some(source_pid));
    let qmp = target.qmp(&spec.vee).await.unwrap();
    assert_eq!(qmp.execute(&QueryCpusFast).await.unwrap().len(), 2);
    eprintln!(
        "qemu: live migration of a 128 MB idle guest: {} ms total, {} ms downtime \
         (migrate_out took {migrate_ms} ms)",
        stats.total_ms, stats.downtime_ms
    );
    assert!(matches!(
        source.migrate_out(&spec.vee, &uri, None).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    assert!(matches!(
        target.migrate_out(&spec.vee, "file:/tmp/x", None).await,
        Err(DriverError::Invalid { .. })
    ));
    target.destroy(&spec.vee).await.unwrap();
}

/// The tap of the VEE's first NIC: the interface whose name QEMU's command line gives.
fn tap_of(driver: &QemuDriver, vee: &VeeId) -> String {
    let pid = driver.pid(vee).expect("running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .find_map(|arg| {
            arg.strip_prefix("tap,")
                .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("ifname=")))
                .map(str::to_owned)
        })
        .expect("a tap netdev")
}

fn run_ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {args:?}");
}

#[tokio::test]
async fn status_counts_the_io_of_each_disk_and_nic_of_the_vee() {
    require_qemu!();
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let mut spec = tiny(11, shared.path());
    spec.disks.push(blank("vdb", 1));
    spec.nics = vec![NicPlan {
        target: "eth0".into(),
        network: "lan".into(),
        mac: None,
        lan: None,
    }];
    spec.ovf_env = Some("<Environment/>".into());
    driver.deploy(&spec).await.unwrap();

    // SeaBIOS reads the first disk's boot sector soon after the start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = driver.status(&spec.vee).await.unwrap();
        if status.disks.first().is_some_and(|vda| vda.read_bytes > 0) || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let targets: Vec<&str> = status.disks.iter().map(|d| d.target.as_str()).collect();
    assert_eq!(targets, ["vda", "vdb"], "the context disk is not the vee's");
    let vda = &status.disks[0];
    assert!(vda.read_bytes >= 512, "the boot sector was read: {vda:?}");
    assert!(vda.read_ops >= 1, "{vda:?}");
    // The NIC is a tap on the host: what the host sends into it, the guest receives. An
    // address on the tap and a datagram to its peer make the kernel ask for the peer's MAC
    // address on the tap (ARP).
    let tap = tap_of(&driver, &spec.vee);
    let host_ip = format!("10.254.{}.1", 11);
    run_ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &tap]);
    let socket = std::net::UdpSocket::bind(format!("{host_ip}:0")).unwrap();
    let _ = socket.send_to(b"hello", "10.254.11.2:9");
    let deadline = Instant::now() + Duration::from_secs(10);
    let eth0 = loop {
        let status = driver.status(&spec.vee).await.unwrap();
        let eth0 = status.nics.iter().find(|n| n.target == "eth0").cloned();
        if eth0.as_ref().is_some_and(|n| n.rx_packets > 0) || Instant::now() > deadline {
            break eth0.expect("the nic's tap is counted");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        eth0.rx_packets >= 1 && eth0.rx_bytes >= 42,
        "the ARP request arrived: {eth0:?}"
    );
    let listed = driver.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let listed_targets: Vec<&str> = listed[0].disks.iter().map(|d| d.target.as_str()).collect();
    assert_eq!(listed_targets, targets);
    assert!(
        listed[0].disks[0].read_bytes >= vda.read_bytes,
        "counters only grow"
    );
    driver.destroy(&spec.vee).await.unwrap();
}

#[tokio::test]
async fn a_new_driver_adopts_the_running_vees_and_forgets_dead_ones() {
    require_qemu!();
    let shared = Scene::new();
    let first = host(shared.path(), "h1");
    let alive = tiny(8, shared.path());
    let doomed = tiny(9, shared.path());
    first.deploy(&alive).await.unwrap();
    first.deploy(&doomed).await.unwrap();
    let pid = first.pid(&alive.vee).unwrap();
    let doomed_pid = first.pid(&doomed.vee).unwrap();
    drop(first);
    // One process dies while no driver watches.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &doomed_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while proc_alive(doomed_pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let second = host(shared.path(), "h1");
    let listed = second.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].vee, alive.vee);
    assert_eq!(listed[0].state, InstanceState::Running);
    assert_eq!(second.pid(&alive.vee), Some(pid));
    assert!(matches!(
        second.status(&doomed.vee).await,
        Err(DriverError::NoSuchInstance(_))
    ));
    second.pause(&alive.vee).await.unwrap();
    assert_eq!(run_status(&second, &alive.vee).await, "paused");
    second.resume(&alive.vee).await.unwrap();
    assert_eq!(state_of(&second, &alive.vee).await, InstanceState::Running);
    assert_eq!(second.pid(&alive.vee), Some(pid), "the same process");

    // A process that dies under a running driver is reported gone, and its files go.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while proc_alive(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(second.list().await.unwrap().is_empty());
    assert!(
        state_files(&second).is_empty(),
        "{:?}",
        state_files(&second)
    );
    second.destroy(&alive.vee).await.unwrap();
}

#[tokio::test]
async fn a_deploy_with_a_missing_image_fails_before_starting_anything() {
    // No QEMU needed: the driver checks sources before it starts a process.
    let shared = Scene::new();
    let driver = host(shared.path(), "h1");
    let missing: PathBuf = shared.path().join("images").join("missing.qcow2");
    let mut spec = tiny(10, shared.path());
    spec.disks = vec![blank("vdb", 1), clone_of("vda", &missing)];
    assert!(matches!(
        driver.deploy(&spec).await,
        Err(DriverError::MissingFile(path)) if path == missing
    ));
    assert!(driver.list().await.unwrap().is_empty());
    assert!(
        !disk_path(&spec.vee_dir, "vdb").exists(),
        "nothing half made"
    );
    assert!(state_files(&driver).is_empty());
    assert!(matches!(
        driver.prepare_incoming(&spec).await,
        Err(DriverError::MissingFile(_))
    ));
}

#[tokio::test]
async fn nics_on_a_lan_are_plugged_into_its_bridge_on_every_host_of_the_machine() {
    require_qemu!();
    if !can_change_network() {
        return;
    }
    let shared = Scene::new();
    let lan = private_lan();
    let _links = Links::of_lan(&lan);
    let bridge = lan.bridge.as_str();
    let on_lan = |target: &str| NicPlan {
        target: target.into(),
        network: "db".into(),
        mac: None,
        lan: Some(lan.clone()),
    };
    let h1 = host(shared.path(), "h1");
    let h2 = host(shared.path(), "h2");
    let mut web = tiny(12, shared.path());
    web.nics = vec![on_lan("eth0")];
    let mut db = tiny(13, shared.path());
    db.nics = vec![
        NicPlan {
            target: "eth0".into(),
            network: "outside".into(),
            mac: None,
            lan: None,
        },
        on_lan("eth1"),
    ];
    // Two host agents of one machine deploy onto the same LAN at once: one bridge.
    let (a, b) = tokio::join!(h1.deploy(&web), h2.deploy(&db));
    a.unwrap();
    b.unwrap();

    let web_tap = tap_of(&h1, &web.vee);
    let db_taps = taps_of(&h2, &db.vee);
    assert_eq!(db_taps.len(), 2);
    for tap in [&web_tap, &db_taps[1]] {
        assert_eq!(master_of(tap).as_deref(), Some(bridge), "{tap}");
    }
    assert_eq!(
        master_of(&db_taps[0]),
        None,
        "a nic on no lan is plugged into nothing"
    );
    for tap in [&web_tap, &db_taps[0], &db_taps[1]] {
        assert!(tap_is_up(tap), "{tap}");
        if Path::new("/proc/sys/net/ipv6").exists() {
            assert!(ipv6_disabled(tap), "the host does not speak on {tap}");
        }
    }
    if Path::new("/proc/sys/net/ipv6").exists() {
        assert!(ipv6_disabled(bridge));
    }
    let no_address = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "dev", bridge])
        .output()
        .unwrap();
    assert!(
        no_address.stdout.is_empty(),
        "a private lan's bridge has no address"
    );

    // A live migration's destination plugs its own tap into the same bridge.
    let uri = h1.prepare_incoming(&db).await.unwrap().uri;
    let incoming_taps = taps_of(&h1, &db.vee);
    assert_ne!(incoming_taps, db_taps);
    assert_eq!(master_of(&incoming_taps[1]).as_deref(), Some(bridge));
    assert_eq!(master_of(&incoming_taps[0]), None);
    h2.migrate_out(&db.vee, &uri, None).await.unwrap();
    h1.complete_incoming(&db.vee, false).await.unwrap();
    assert!(
        !Path::new("/sys/class/net").join(&db_taps[1]).exists(),
        "the source's tap went with its qemu"
    );
    let mut ports: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ports.sort();
    let mut expected = vec![web_tap.clone(), incoming_taps[1].clone()];
    expected.sort();
    assert_eq!(ports, expected);

    h1.destroy(&web.vee).await.unwrap();
    h1.destroy(&db.vee).await.unwrap();
    for tap in [&web_tap, &incoming_taps[0], &incoming_taps[1]] {
        assert!(!Path::new("/sys/class/net").join(tap).exists(), "{tap}");
    }
    assert!(
        Path::new("/sys/class/net").join(bridge).exists(),
        "a lan outlives its vees until the veem removes it"
    );
    h1.remove_lan(&lan).await.unwrap();
    assert!(!Path::new("/sys/class/net").join(bridge).exists());
    h2.remove_lan(&lan).await.unwrap();
}

/// The taps of all the VEE's NICs, in order, as QEMU's command line names them.
fn taps_of(driver: &QemuDriver, vee: &VeeId) -> Vec<String> {
    let pid = driver.pid(vee).expect("running");
    cmdline(pid)
        .iter()
        .filter_map(|arg| {
            arg.strip_prefix("tap,")
                .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("ifname=")))
                .map(str::to_owned)
        })
        .collect()
}

fn tap_is_up(tap: &str) -> bool {
    let flags = std::fs::read_to_string(format!("/sys/class/net/{tap}/flags")).unwrap();
    u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap() & 1 == 1
}

/// veem's test guest (`veem_guest::build`), built on first use and kept for the test binary.
fn test_guest() -> &'static Path {
    static GUEST: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_dir, image) = GUEST.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let options = veem_guest::BuildOptions::new(dir.path().join("guest.qcow2"));
        let image = veem_guest::build(&options)
            .unwrap_or_else(|error| panic!("the test guest builds: {error}"));
        (dir, image.path)
    });
    image
}

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// The guest's uptime in a report, after checking the report is a whole KPI line.
fn uptime_of(report: &AgentReport) -> f64 {
    let keys: Vec<&str> = report
        .measurements
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(keys, veem_guest::KPI_KEYS, "{report:?}");
    report.measurements[0].1.parse().unwrap()
}

/// Takes the reports of the VEE's statuses (from `list` when `listed`, else from `status`)
/// until `count` have come; checks each came once, in order, stamped while it was waited for.
async fn take_reports(
    driver: &QemuDriver,
    spec: &DeploySpec,
    count: usize,
    listed: bool,
) -> Vec<AgentReport> {
    let since_ms = unix_ms();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut reports: Vec<AgentReport> = Vec::new();
    while reports.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {reports:?} came; console:\n{}",
            std::fs::read_to_string(console_path(&spec.vee_dir)).unwrap_or_default()
        );
        let status = if listed {
            let mut listed = driver.list().await.unwrap();
            assert_eq!(listed.len(), 1);
            listed.remove(0)
        } else {
            driver.status(&spec.vee).await.unwrap()
        };
        reports.extend(status.agent_reports);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let uptimes: Vec<f64> = reports.iter().map(uptime_of).collect();
    assert!(
        uptimes.windows(2).all(|pair| pair[0] < pair[1]),
        "each report once, oldest first: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .all(|report| since_ms <= report.t_ms && report.t_ms <= unix_ms()),
        "{reports:?}"
    );
    reports
}

#[tokio::test]
async fn the_guest_agents_reports_come_once_each_across_an_adoption_and_a_live_migration() {
    require_qemu!();
    let image = test_guest();
    let shared = Scene::new();
    let first = host(shared.path(), "h1");
    let mut spec = tiny(14, shared.path());
    spec.memory_mb = 128;
    spec.disks = vec![clone_of("vda", image)];
    first.deploy(&spec).await.unwrap();
    let socket = first.state_dir().join("vee-00000014.agent");
    assert!(
        socket.exists(),
        "qemu serves the agent's port at {}",
        socket.display()
    );

    let booted = take_reports(&first, &spec, 2, false).await;
    let last_uptime = uptime_of(booted.last().unwrap());
    // A list takes them too; what a status took is not given again.
    let listed = take_reports(&first, &spec, 1, true).await;
    assert!(
        uptime_of(&listed[0]) > last_uptime,
        "{booted:?} then {listed:?}"
    );

    // A new driver on the same state directory reads the same guest again.
    drop(first);
    let adopted = host(shared.path(), "h1");
    let readopted = take_reports(&adopted, &spec, 2, true).await;
    let last_uptime = uptime_of(readopted.last().unwrap());

    // After a live migration the guest, the same one, reports through the destination's
    // own socket; the source's reader went with its instance.
    let target = host(shared.path(), "h2");
    let uri = target.prepare_incoming(&spec).await.unwrap().uri;
    adopted.migrate_out(&spec.vee, &uri, None).await.unwrap();
    target.complete_incoming(&spec.vee, false).await.unwrap();
    let migrated = take_reports(&target, &spec, 2, false).await;
    assert!(
        uptime_of(&migrated[0]) > last_uptime,
        "no reboot: {readopted:?} then {migrated:?}"
    );
    assert!(!socket.exists(), "the source's socket went with its qemu");

    target.destroy(&spec.vee).await.unwrap();
    assert!(
        state_files(&target).is_empty(),
        "{:?}",
        state_files(&target)
    );
}

/// The health loop lists a host's instances at any moment, also while an operation ends one
/// (a shutdown's `quit`, a destroy): an instance on its way out is no failure of the host, so
/// such a list never fails. (It did: the QMP query of the ending process failed the whole
/// list, the VEEM took the host for down until its next check, and refused to read a disk it
/// holds.)
#[tokio::test]
async fn a_list_while_an_instance_ends_does_not_fail() {
    require_qemu!();
    let shared = Scene::new();
    let driver = Arc::new(host(shared.path(), "h1"));
    for round in 0..3 {
        let spec = tiny(40 + round, shared.path());
        driver.deploy(&spec).await.unwrap();
        let ending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lister = {
            let (driver, ending) = (driver.clone(), ending.clone());
            tokio::spawn(async move {
                let mut lists = 0;
                while !ending.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(e) = driver.list().await {
                        return Err(format!("list {lists} failed: {e}"));
                    }
                    lists += 1;
                    // Once the instance is gone a list has nothing to wait for: let the
                    // destroy (on this test's one thread) go on.
                    tokio::task::yield_now().await;
                }
                Ok(lists)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        driver.destroy(&spec.vee).await.unwrap();
        ending.store(true, std::sync::atomic::Ordering::SeqCst);
        let lists = lister
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(lists > 0, "round {round}: listed while it ended");
        assert!(driver.list().await.unwrap().is_empty());
    }
}
