//! The qemu driver: one QEMU process per active or paused VEE, driven over QMP.
//!
//! Each VEE's QEMU is started with `-daemonize`, so it outlives the agent and the server; its
//! command line carries `-name <vee id>`, so `ps` shows which VEE a process runs. Everything
//! needed to find the VEEs again lives in the state directory: `<vee>.json` (the spec and the
//! machine shape), `<vee>.pid`, `<vee>.qmp` and `<vee>.agent` written by QEMU, and `<vee>.log`
//! with what QEMU said (kept after the process ends, for a post-mortem, until the VEE is
//! purged). A new driver on the same directory re-adopts every live process it finds there and
//! forgets those that died. The serial console is appended to `<vee_dir>/console.log`.
//!
//! This is the only code in veem that speaks QMP ([`qmp`]). It never deletes a disk, and never
//! passes anything from a descriptor to QEMU but the typed settings of its [`DeploySpec`].
//!
//! Choices worth knowing:
//! - Memory is resized live with virtio-balloon: QEMU boots with `memory_max_mb` of RAM and the
//!   balloon takes the guest down to `memory_mb` right away; a resize moves the balloon's
//!   target. The guest needs its `virtio_balloon` driver to follow (until it loads, the target
//!   waits); [`InstanceStatus::memory_mb`] is the target, `query-balloon` what the guest did.
//! - vCPUs are resized live by hotplug: `-smp cpu,maxcpus=cpu_max` at boot, `device_add` of
//!   the next free slot to raise, `device_del` to lower (the guest must release the vCPU within
//!   `cpu_unplug_timeout_ms`). vCPUs present at boot cannot be removed.
//! - Suspend stops the guest and migrates it to a file (QEMU ≥ 8.2), restore starts the same
//!   machine with `-incoming defer` and reads it back. The machine's shape (boot vCPUs, plugged
//!   vCPUs, memory) travels in `<vee_dir>/qemu-machine.json`, since a migration needs the same
//!   devices on both ends.
//! - `spec.raw` is never passed to QEMU (it would let a descriptor run anything as the
//!   agent); it is only logged.
//! - Every NIC is a virtio NIC on a tap device QEMU makes (named per launch, kept in the
//!   instance's record); QEMU removes it when it ends. A NIC on a virtual LAN has the LAN built
//!   (or checked) on this host before QEMU starts and its tap plugged into the LAN's bridge
//!   right after ([`crate::hostnet`]); a NIC on no LAN is only brought up. A restore and an
//!   incoming migration launch the same way, so the new taps join the same bridges; a live
//!   migration's end needs nothing more, since QEMU announces the guest's MAC addresses
//!   from the destination when it resumes there. On a LAN joined by VXLAN the guest is told
//!   the LAN's smaller MTU (`host_mtu`).
//! - CPU time is the QEMU process's user + system time, TCG's translation work included.
//! - Disk figures are QEMU's block statistics of each disk, taken with the run state (one
//!   `query-blockstats` per instance, sent alongside `query-status`); the context disk is not
//!   reported. NIC figures are the host kernel's counters of each NIC's tap, seen from the
//!   guest ([`read_tap_counters`]).
//! - Every VEE has a virtio-serial port named [`AGENT_PORT_NAME`] for the guest's own agent,
//!   served on the host as the socket `<vee>.agent`. A task per instance reads the guest's KPI
//!   lines from it ([`parse_kpi_line`]) and keeps them until a status takes them
//!   ([`InstanceStatus::agent_reports`]); it reconnects whenever the socket closes while QEMU
//!   lives, and stops when the instance ends. A guest without an agent sends nothing.

mod config;
mod counters;
mod disks;
mod guest_agent;
mod machine;
mod process;
pub mod qmp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use veem_api::agent::{
    DeploySpec, DiskCounters, InstanceState, InstanceStatus, LanPlan, NicCounters,
};
use veem_model::VeeId;

pub use config::{detect_accel, resolve_accel, Accel, AccelChoice, QemuConfig};
pub use counters::read_tap_counters;
pub use disks::{context_image_path, CONTEXT_LABEL};
pub use guest_agent::{
    parse_kpi_line, AGENT_PORT_NAME, KPI_LINE_PREFIX, MAX_LINE_BYTES, MAX_PENDING_REPORTS,
};
pub use machine::CONTEXT_TARGET;
pub use machine::{console_path, shape_path, MachineShape, PluggedCpu};

use guest_agent::{PendingReports, ReportReader};
use machine::{Drive, InstancePaths, Launch, NicTap};
use qmp::{QmpClient, QmpError};

use crate::driver::{check_boot_files, check_disk_target};
use crate::hostnet::{HostNet, LanLink};
use crate::vee_locks::{VeeGuard, VeeLocks};
use crate::{fsutil, hostnet, Driver, DriverError, MigrationStats};

const MIB: u64 = 1 << 20;
/// How long QEMU gets to end after `quit` before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// How often a migration's progress is looked at: often, since it is what a suspend or a
/// live migration waits for.
const MIGRATION_POLL: Duration = Duration::from_millis(5);
/// The longest path a Unix socket can have (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// QMP ids of the vCPUs a resize plugs start with this.
const PLUGGED_CPU_PREFIX: &str = "vcpu";

/// What the state directory records of one instance, in `<vee>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceRecord {
    spec: DeploySpec,
    shape: MachineShape,
    /// The NICs as this process has them: each one's tap is named at launch.
    #[serde(default)]
    nics: Vec<NicTap>,
}

/// One QEMU process this driver runs or adopted.
struct Instance {
    vee: VeeId,
    pid: u32,
    paths: InstancePaths,
    record: Mutex<InstanceRecord>,
    /// Connected on first use: an adopted instance may never need it.
    qmp: tokio::sync::Mutex<Option<Arc<QmpClient>>>,
    /// What the guest's agent reported that no status has carried yet.
    reports: Arc<PendingReports>,
    /// Fills `reports` from the agent socket; started once QEMU runs, or when first needed
    /// for an instance adopted outside a tokio runtime.
    reader: Mutex<Reader>,
}

/// Where an instance's report reader is in its life.
enum Reader {
    NotStarted,
    Running(ReportReader),
    /// The instance ended: a status observed at the same time must not start another.
    Stopped,
}

impl Instance {
    fn new(vee: VeeId, pid: u32, paths: InstancePaths, record: InstanceRecord) -> Self {
        Self {
            reports: Arc::new(PendingReports::new(vee.clone())),
            vee,
            pid,
            paths,
            record: Mutex::new(record),
            qmp: tokio::sync::Mutex::new(None),
            reader: Mutex::new(Reader::NotStarted),
        }
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts reading the guest agent's reports unless a reader runs already or the instance
    /// ended; does nothing outside a tokio runtime (the next status starts it).
    fn read_reports(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut reader = self.reader();
        match &*reader {
            Reader::Running(running) if !running.is_finished() => return,
            Reader::Stopped => return,
            Reader::NotStarted | Reader::Running(_) => {}
        }
        let (pid, vee) = (self.pid, self.vee.clone());
        *reader = Reader::Running(ReportReader::spawn(
            self.paths.agent.clone(),
            Arc::clone(&self.reports),
            move || process::is_qemu_of(pid, vee.as_str()),
        ));
    }

    /// Stops the reader for good, closing its connection: the instance ends.
    fn stop_reading_reports(&self) {
        *self.reader() = Reader::Stopped;
    }

    fn record(&self) -> MutexGuard<'_, InstanceRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shape(&self) -> MachineShape {
        self.record().shape.clone()
    }

    fn is_alive(&self) -> bool {
        process::is_qemu_of(self.pid, self.vee.as_str())
    }
}

/// The qemu driver. See the module documentation.
pub struct QemuDriver {
    config: QemuConfig,
    hostnet: HostNet,
    accel: Accel,
    cpu_model: String,
    state_dir: PathBuf,
    clock_ticks: u64,
    instances: Mutex<HashMap<VeeId, Arc<Instance>>>,
    /// One lock per VEE with an operation under way: operations on one VEE run one at a time.
    vee_locks: VeeLocks,
    migrations: Mutex<HashMap<VeeId, MigrationStats>>,
}

impl QemuDriver {
    /// Opens (creating it if needed) the state directory, decides the accelerator and adopts
    /// the QEMU processes the directory records that still run; the files of those that died
    /// are removed. This reads files synchronously: call it at start-up.
    pub fn new(config: QemuConfig, state_dir: PathBuf) -> Result<Self, DriverError> {
        std::fs::create_dir_all(&state_dir).map_err(|e| DriverError::file(&state_dir, e))?;
        let accel = resolve_accel(config.accel);
        let cpu_model = match config.cpu_model.clone() {
            Some(model) if model == "host" && accel == Accel::Tcg => {
                tracing::warn!("cpu model host needs kvm; using max under tcg");
                Accel::Tcg.default_cpu_model().to_owned()
            }
            Some(model) => model,
            None => accel.default_cpu_model().to_owned(),
        };
        let driver = Self {
            hostnet: HostNet::new(&config.ip),
            config,
            accel,
            cpu_model,
            clock_ticks: process::clock_ticks(),
            instances: Mutex::new(HashMap::new()),
            vee_locks: VeeLocks::default(),
            migrations: Mutex::new(HashMap::new()),
            state_dir,
        };
        driver.adopt_all()?;
        tracing::info!(
            accel = accel.as_str(),
            cpu = %driver.cpu_model,
            adopted = driver.instances().len(),
            state_dir = %driver.state_dir.display(),
            "qemu driver ready"
        );
        Ok(driver)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The accelerator this driver starts QEMU with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The pid of the VEE's QEMU, if this driver runs one.
    pub fn pid(&self, vee: &VeeId) -> Option<u32> {
        self.instance(vee).map(|instance| instance.pid)
    }

    /// The QMP connection to the VEE's QEMU, shared with the driver (QEMU serves one client
    /// per socket). For observation and tests: commands sent here bypass the driver's records.
    pub async fn qmp(&self, vee: &VeeId) -> Result<Arc<QmpClient>, DriverError> {
        let instance = self.existing(vee)?;
        self.connect(&instance).await
    }

    /// The last live migration `migrate_out` sent from this driver for the VEE.
    pub fn last_migration(&self, vee: &VeeId) -> Option<MigrationStats> {
        self.migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vee)
            .copied()
    }

    fn paths(&self, vee: &VeeId, vee_dir: &Path) -> InstancePaths {
        InstancePaths::new(&self.state_dir, vee.as_str(), vee_dir)
    }

    fn instances(&self) -> MutexGuard<'_, HashMap<VeeId, Arc<Instance>>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn instance(&self, vee: &VeeId) -> Option<Arc<Instance>> {
        self.instances().get(vee).cloned()
    }

    fn existing(&self, vee: &VeeId) -> Result<Arc<Instance>, DriverError> {
        self.instance(vee)
            .ok_or_else(|| DriverError::NoSuchInstance(vee.clone()))
    }

    /// Reads every `<vee>.json` of the state directory: a live QEMU is adopted, the files of a
    /// dead one are removed.
    fn adopt_all(&self) -> Result<(), DriverError> {
        let entries = std::fs::read_dir(&self.state_dir)
            .map_err(|e| DriverError::file(&self.state_dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| DriverError::file(&self.state_dir, e))?
                .path();
            let Some(vee) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".json"))
                .and_then(|stem| VeeId::parse(stem).ok())
            else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|e| DriverError::file(&path, e))?;
            let record: InstanceRecord =
                serde_json::from_slice(&bytes).map_err(|e| DriverError::CorruptState {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let paths = self.paths(&vee, &record.spec.vee_dir);
            let pid = process::read_pid(&paths.pid)?;
            match pid.filter(|pid| process::is_qemu_of(*pid, vee.as_str())) {
                Some(pid) => {
                    tracing::info!(%vee, pid, "qemu driver adopted a running vee");
                    let instance = Arc::new(Instance::new(vee.clone(), pid, paths, record));
                    instance.read_reports();
                    self.instances().insert(vee, instance);
                }
                None => {
                    tracing::warn!(%vee, "the qemu of a vee died while no driver watched it");
                    remove_instance_files(&paths)?;
                }
            }
        }
        Ok(())
    }

    async fn lock_vee(&self, vee: &VeeId) -> VeeGuard<'_> {
        self.vee_locks.lock(vee).await
    }

    /// The VEE's lock if no operation holds it now.
    fn try_lock_vee(&self, vee: &VeeId) -> Option<VeeGuard<'_>> {
        self.vee_locks.try_lock(vee)
    }

    /// Fails if the VEE runs here; forgets a recorded instance whose process died. Called with
    /// the VEE's lock held.
    async fn refuse_existing(&self, vee: &VeeId) -> Result<(), DriverError> {
        if let Some(instance) = self.instance(vee) {
            if instance.is_alive() {
                return Err(DriverError::AlreadyExists(vee.clone()));
            }
            self.forget(&instance).await?;
        }
        Ok(())
    }

    /// Removes the instance from the table and its files from the state directory.
    async fn forget(&self, instance: &Instance) -> Result<(), DriverError> {
        self.instances().remove(&instance.vee);
        instance.stop_reading_reports();
        *instance.qmp.lock().await = None;
        remove_instance_files(&instance.paths)
    }

    /// The instance's QMP connection, connecting (again) if there is none or it closed.
    async fn connect(&self, instance: &Instance) -> Result<Arc<QmpClient>, DriverError> {
        let mut slot = instance.qmp.lock().await;
        if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let client = QmpClient::connect(&instance.paths.qmp, self.qmp_timeout())
            .await
            .map_err(|e| qmp_failed("connect to qemu", e))?;
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    fn qmp_timeout(&self) -> Duration {
        Duration::from_millis(self.config.qmp_timeout_ms)
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.config.shutdown_poll_ms.max(1))
    }

    /// The instance's state as QEMU reports it; a process that died is an error naming it.
    async fn live_state(&self, instance: &Instance) -> Result<InstanceState, DriverError> {
        if !instance.is_alive() {
            return Err(DriverError::Failed {
                op: "query qemu",
                reason: format!(
                    "the qemu of {} (pid {}) is gone",
                    instance.vee, instance.pid
                ),
            });
        }
        let qmp = self.connect(instance).await?;
        let status = qmp
            .execute(&qmp::QueryStatus)
            .await
            .map_err(|e| qmp_failed("query qemu", e))?;
        Ok(instance_state(&status.status))
    }

    async fn expect_state(
        &self,
        instance: &Instance,
        op: &'static str,
        allowed: &[InstanceState],
    ) -> Result<InstanceState, DriverError> {
        let state = self.live_state(instance).await?;
        if allowed.contains(&state) {
            Ok(state)
        } else {
            Err(DriverError::WrongState {
                vee: instance.vee.clone(),
                state,
                op,
            })
        }
    }

    /// Writes the record, starts QEMU and connects to it. On failure nothing of the instance
    /// is left running or recorded.
    async fn launch(
        &self,
        spec: &DeploySpec,
        shape: MachineShape,
        drives: &[Drive],
        incoming: Option<&str>,
    ) -> Result<Arc<Instance>, DriverError> {
        let paths = self.paths(&spec.vee, &spec.vee_dir);
        for (what, socket) in [("qmp", &paths.qmp), ("agent", &paths.agent)] {
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(DriverError::Invalid {
                    what: "state directory",
                    reason: format!(
                        "the {what} socket {} is longer than a unix socket path may be",
                        socket.display()
                    ),
                });
            }
        }
        let lans = self.ensure_lans(spec).await?;
        fsutil::create_parent(&paths.console).await?;
        // Leftovers of a process that was killed: QEMU would refuse an existing socket path
        // only sometimes, and a stale pid file would name a stranger.
        fsutil::remove_if_present(&paths.pid).await?;
        fsutil::remove_if_present(&paths.qmp).await?;
        fsutil::remove_if_present(&paths.agent).await?;
        let nics = spec
            .nics
            .iter()
            .zip(&lans)
            .enumerate()
            .map(|(index, (nic, lan))| NicTap {
                target: nic.target.clone(),
                mac: nic.mac.clone(),
                tap: hostnet::tap_name(&spec.vee, index),
                mtu: lan
                    .as_ref()
                    .map(|lan| lan.mtu)
                    .filter(|mtu| *mtu != hostnet::ETHERNET_MTU),
            })
            .collect();
        let record = InstanceRecord {
            spec: spec.clone(),
            shape,
            nics,
        };
        write_json(&paths.record, &record).await?;
        let args = machine::command_line(&Launch {
            vee: spec.vee.as_str(),
            shape: &record.shape,
            accel: self.accel,
            machine: &self.config.machine,
            cpu_model: &self.cpu_model,
            drives,
            nics: &record.nics,
            paths: &paths,
            incoming,
            boot: record.spec.boot.as_deref(),
        });
        tracing::debug!(vee = %spec.vee, ?args, "starting qemu");
        let started =
            process::start_daemon(&self.config.binary, &args, &paths.pid, &paths.log).await;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                remove_instance_files(&paths)?;
                return Err(e);
            }
        };
        let instance = Arc::new(Instance::new(spec.vee.clone(), pid, paths, record));
        if let Err(e) = self.connect_and_plug(&instance, &lans).await {
            self.end_process(&instance).await;
            remove_instance_files(&instance.paths)?;
            return Err(e);
        }
        instance.read_reports();
        tracing::info!(vee = %spec.vee, pid, incoming, "qemu started");
        self.instances()
            .insert(spec.vee.clone(), Arc::clone(&instance));
        Ok(instance)
    }

    /// Builds (or checks) the LAN of each of the spec's NICs on this host; answers, NIC by
    /// NIC, the LAN it joins (`None`: a NIC on no LAN). Each LAN is ensured once.
    async fn ensure_lans(&self, spec: &DeploySpec) -> Result<Vec<Option<LanLink>>, DriverError> {
        let mut ensured: Vec<LanLink> = Vec::new();
        let mut lans = Vec::with_capacity(spec.nics.len());
        for nic in &spec.nics {
            let Some(plan) = &nic.lan else {
                lans.push(None);
                continue;
            };
            let lan = match ensured.iter().find(|lan| lan.bridge == plan.bridge) {
                Some(lan) => lan.clone(),
                None => {
                    let lan = self
                        .hostnet
                        .ensure_lan(plan, self.config.vxlan.as_ref())
                        .await?;
                    ensured.push(lan.clone());
                    lan
                }
            };
            lans.push(Some(lan));
        }
        Ok(lans)
    }

    /// Connects to a QEMU just started and plugs its NICs' taps into their LANs (`lans`, NIC
    /// by NIC, as [`Self::ensure_lans`] answered).
    async fn connect_and_plug(
        &self,
        instance: &Instance,
        lans: &[Option<LanLink>],
    ) -> Result<(), DriverError> {
        self.connect(instance).await?;
        let taps: Vec<String> = instance
            .record()
            .nics
            .iter()
            .map(|n| n.tap.clone())
            .collect();
        for (tap, lan) in taps.iter().zip(lans) {
            self.hostnet.plug(tap, lan.as_ref()).await?;
        }
        Ok(())
    }

    /// Like [`Self::launch`], then runs `setup` on the new instance; if that fails the
    /// instance is ended and forgotten.
    async fn launch_and<F, Fut>(
        &self,
        spec: &DeploySpec,
        shape: MachineShape,
        drives: &[Drive],
        incoming: Option<&str>,
        setup: F,
    ) -> Result<Arc<Instance>, DriverError>
    where
        F: FnOnce(Arc<Instance>) -> Fut,
        Fut: std::future::Future<Output = Result<(), DriverError>>,
    {
        let instance = self.launch(spec, shape, drives, incoming).await?;
        if let Err(e) = setup(Arc::clone(&instance)).await {
            self.end_process(&instance).await;
            self.forget(&instance).await?;
            return Err(e);
        }
        Ok(instance)
    }

    /// Ends the process: `quit`, then SIGKILL if it is still there after a grace period.
    async fn end_process(&self, instance: &Instance) {
        instance.stop_reading_reports();
        if !instance.is_alive() {
            return;
        }
        let quit = match self.connect(instance).await {
            Ok(qmp) => qmp.execute(&qmp::Quit).await.map(drop),
            Err(e) => Err(QmpError::Protocol(e.to_string())),
        };
        let vee = instance.vee.as_str();
        if let Err(e) = &quit {
            // A QEMU that quits may close the connection before it answers.
            tracing::debug!(%vee, error = %e, "qmp quit got no answer");
        }
        if process::wait_gone(instance.pid, vee, QUIT_GRACE, self.poll()).await {
            return;
        }
        tracing::warn!(%vee, pid = instance.pid, "qemu did not quit; killing it");
        if let Err(e) = process::kill(instance.pid).await {
            tracing::warn!(%vee, error = %e, "could not kill qemu");
        }
        process::wait_gone(instance.pid, vee, QUIT_GRACE, self.poll()).await;
    }

    /// Updates the instance's shape in its record and in the VEE's directory.
    async fn save_shape(
        &self,
        instance: &Instance,
        shape: MachineShape,
    ) -> Result<(), DriverError> {
        let record = {
            let mut record = instance.record();
            record.shape = shape;
            record.clone()
        };
        write_json(&instance.paths.record, &record).await?;
        write_json(&shape_path(&record.spec.vee_dir), &record.shape).await
    }

    /// The shape a restore or an incoming migration of `spec` starts: the one the VEE's last
    /// run left in its directory, or a fresh boot's.
    async fn shape_for_resume(&self, spec: &DeploySpec) -> Result<MachineShape, DriverError> {
        let path = shape_path(&spec.vee_dir);
        match fsutil::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DriverError::CorruptState {
                path,
                reason: e.to_string(),
            }),
            Err(DriverError::MissingFile(_)) => Ok(MachineShape::for_boot(spec)),
            Err(e) => Err(e),
        }
    }

    /// Waits for the migration the instance sends or receives to end; answers QEMU's figures
    /// when it completed.
    async fn wait_migration(
        &self,
        instance: &Instance,
        op: &'static str,
    ) -> Result<qmp::MigrationInfo, DriverError> {
        let qmp = self.connect(instance).await?;
        let deadline = Instant::now() + Duration::from_millis(self.config.migration_timeout_ms);
        let log_start = process::log_len(&instance.paths.log);
        loop {
            let info = match qmp.execute(&qmp::QueryMigrate).await {
                Ok(info) => info,
                Err(e) => {
                    // An incoming QEMU exits when it cannot load the stream: its log says why.
                    tokio::time::sleep(self.poll()).await;
                    let reason = if instance.is_alive() {
                        e.to_string()
                    } else {
                        format!(
                            "qemu exited: {}",
                            process::log_since(&instance.paths.log, log_start)
                        )
                    };
                    return Err(DriverError::Failed { op, reason });
                }
            };
            match info.status.as_deref() {
                Some("completed") => return Ok(info),
                Some(status @ ("failed" | "cancelled")) => {
                    let reason = info
                        .error_desc
                        .unwrap_or_else(|| format!("the migration {status}"));
                    return Err(DriverError::Failed { op, reason });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Failed {
                    op,
                    reason: format!(
                        "the migration did not complete within {} ms",
                        self.config.migration_timeout_ms
                    ),
                });
            }
            tokio::time::sleep(MIGRATION_POLL).await;
        }
    }

    /// Starts an instance from `spec` that waits for a migration at `incoming`.
    async fn launch_incoming(
        &self,
        spec: &DeploySpec,
        incoming: &str,
    ) -> Result<Arc<Instance>, DriverError> {
        let drives = disks::existing(spec).await?;
        let shape = self.shape_for_resume(spec).await?;
        self.launch(spec, shape, &drives, Some(incoming)).await
    }

    /// The vCPUs plugged into the instance, as QEMU reports them, in slot order.
    async fn plugged_cpus(&self, qmp: &QmpClient) -> Result<Vec<PluggedCpu>, DriverError> {
        let slots = qmp
            .execute(&qmp::QueryHotpluggableCpus)
            .await
            .map_err(|e| qmp_failed("query vcpus", e))?;
        let mut plugged: Vec<PluggedCpu> = slots
            .into_iter()
            .filter_map(|slot| {
                let id = slot
                    .qom_path?
                    .strip_prefix("/machine/peripheral/")?
                    .to_owned();
                Some(PluggedCpu {
                    id,
                    driver: slot.driver,
                    props: slot.props,
                })
            })
            .collect();
        plugged.sort_by_key(|cpu| slot_order(&cpu.props));
        Ok(plugged)
    }

    /// Plugs or unplugs vCPUs until the instance has `cpu` of them; answers the new shape.
    async fn resize_cpus(
        &self,
        instance: &Instance,
        qmp: &QmpClient,
        mut shape: MachineShape,
        cpu: u32,
    ) -> Result<MachineShape, DriverError> {
        shape.plugged_cpus = self.plugged_cpus(qmp).await?;
        if cpu < shape.boot_cpus {
            return Err(DriverError::Unsupported("remove a vcpu present at boot"));
        }
        while shape.cpus() < cpu {
            let slots = qmp
                .execute(&qmp::QueryHotpluggableCpus)
                .await
                .map_err(|e| qmp_failed("resize", e))?;
            let free = slots
                .into_iter()
                .filter(|slot| slot.qom_path.is_none())
                .min_by_key(|slot| slot_order(&slot.props))
                .ok_or_else(|| DriverError::Failed {
                    op: "resize",
                    reason: "qemu has no free vcpu slot".to_owned(),
                })?;
            let id = (shape.cpus()..)
                .map(|n| format!("{PLUGGED_CPU_PREFIX}{n}"))
                .find(|id| shape.plugged_cpus.iter().all(|cpu| &cpu.id != id))
                .expect("an unbounded range always has an unused number");
            let props = free
                .props
                .iter()
                .map(|(key, value)| (key.clone(), serde_json::Value::from(*value)))
                .collect();
            qmp.execute(&qmp::DeviceAdd {
                driver: free.driver.clone(),
                id: id.clone(),
                props,
            })
            .await
            .map_err(|e| qmp_failed("resize", e))?;
            shape.plugged_cpus.push(PluggedCpu {
                id,
                driver: free.driver,
                props: free.props,
            });
        }
        while shape.cpus() > cpu {
            let Some(last) = shape.plugged_cpus.last().cloned() else {
                break;
            };
            let mut events = qmp.events();
            qmp.execute(&qmp::DeviceDel {
                id: last.id.clone(),
            })
            .await
            .map_err(|e| qmp_failed("resize", e))?;
            let timeout = Duration::from_millis(self.config.cpu_unplug_timeout_ms);
            let released = tokio::time::timeout(timeout, async {
                while let Ok(event) = events.recv().await {
                    if event.event == "DEVICE_DELETED"
                        && event.data.get("device").and_then(|d| d.as_str()) == Some(&last.id)
                    {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if !released {
                // The request stays pending in QEMU; record what is plugged now.
                shape.plugged_cpus = self.plugged_cpus(qmp).await?;
                self.save_shape(instance, shape).await?;
                return Err(DriverError::Failed {
                    op: "resize",
                    reason: format!(
                        "the guest did not release vcpu {} within {} ms",
                        last.id, self.config.cpu_unplug_timeout_ms
                    ),
                });
            }
            shape.plugged_cpus.pop();
        }
        Ok(shape)
    }

    /// Waits until the guest has powered off (or its process is gone) or `deadline` has
    /// passed; answers whether it did.
    async fn wait_powered_off(&self, instance: &Instance, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            match self.live_state(instance).await {
                Ok(InstanceState::PoweredOff) => return true,
                Ok(_) => {}
                Err(_) if !instance.is_alive() => return true,
                Err(e) => tracing::debug!(vee = %instance.vee, error = %e, "polling a power-off"),
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    fn status_of(
        &self,
        instance: &Instance,
        state: InstanceState,
        disks: Vec<DiskCounters>,
    ) -> InstanceStatus {
        let shape = instance.shape();
        InstanceStatus {
            vee: instance.vee.clone(),
            state,
            cpus: shape.cpus(),
            memory_mb: shape.memory_mb,
            cpu_time_ms: process::cpu_time_ms(instance.pid, self.clock_ticks).unwrap_or(0),
            disks,
            nics: self.nic_counters(instance),
            agent_reports: instance.reports.take(),
        }
    }

    /// The counters of the instance's NICs, from their taps. A tap that cannot be read is left
    /// out, as a disk is in [`Self::disk_counters`].
    fn nic_counters(&self, instance: &Instance) -> Vec<NicCounters> {
        instance
            .record()
            .nics
            .iter()
            .filter_map(|nic| {
                read_tap_counters(Path::new(hostnet::SYS_CLASS_NET), &nic.tap, &nic.target)
                    .inspect_err(|e| {
                        tracing::warn!(vee = %instance.vee, error = %e, "no nic figures for a vee")
                    })
                    .ok()
            })
            .collect()
    }

    /// The counters of the instance's disks. A failure leaves them out rather than failing the
    /// status: the VEEM's view of the instance matters more than one round of figures.
    async fn disk_counters(&self, instance: &Instance) -> Vec<DiskCounters> {
        let stats = match self.connect(instance).await {
            Ok(qmp) => qmp
                .execute(&qmp::QueryBlockstats)
                .await
                .map_err(|e| qmp_failed("query disk statistics", e)),
            Err(e) => Err(e),
        };
        match stats {
            Ok(stats) => counters::disk_counters(&stats),
            Err(e) => {
                tracing::warn!(vee = %instance.vee, error = %e, "no disk figures for a vee");
                Vec::new()
            }
        }
    }

    /// The status of an instance, or `None` when its process died (then, unless an operation
    /// on it is under way, it is forgotten).
    async fn observe(&self, instance: &Instance) -> Result<Option<InstanceStatus>, DriverError> {
        if !instance.is_alive() {
            if let Some(_guard) = self.try_lock_vee(&instance.vee) {
                // Checked again under the lock: the operation that held it may have replaced
                // the instance.
                let current = self.instance(&instance.vee);
                if current.is_some_and(|current| current.pid == instance.pid) {
                    tracing::warn!(vee = %instance.vee, pid = instance.pid, "the qemu of a vee is gone");
                    self.forget(instance).await?;
                }
            }
            return Ok(None);
        }
        // An instance adopted outside a runtime starts reading here.
        instance.read_reports();
        // Both queries go out at once on the one connection: a list costs no extra round trip.
        let (state, disks) = tokio::join!(self.live_state(instance), self.disk_counters(instance));
        Ok(Some(self.status_of(instance, state?, disks)))
    }
}

/// QEMU's run state as the protocol's instance state.
fn instance_state(run_state: &str) -> InstanceState {
    match run_state {
        "running" => InstanceState::Running,
        "inmigrate" => InstanceState::Incoming,
        "shutdown" => InstanceState::PoweredOff,
        "guest-panicked" | "internal-error" => InstanceState::Crashed,
        // paused, postmigrate, finish-migrate, prelaunch, suspended, io-error, save-vm...:
        // the guest does not run and the process holds its memory.
        _ => InstanceState::Paused,
    }
}

/// Sort key of a vCPU slot: its place in the topology.
fn slot_order(props: &std::collections::BTreeMap<String, i64>) -> [i64; 5] {
    let prop = |key: &str| props.get(key).copied().unwrap_or(0);
    [
        prop("socket-id"),
        prop("die-id"),
        prop("cluster-id"),
        prop("core-id"),
        prop("thread-id"),
    ]
}

fn qmp_failed(op: &'static str, error: QmpError) -> DriverError {
    let mut reason = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(source) = cause {
        reason.push_str(": ");
        reason.push_str(&source.to_string());
        cause = source.source();
    }
    DriverError::Failed { op, reason }
}

/// The VEE a state directory's file belongs to: `<vee>.<extension>`.
fn vee_of_file(name: &std::ffi::OsStr) -> Option<VeeId> {
    let (stem, _) = name.to_str()?.split_once('.')?;
    VeeId::parse(stem).ok()
}

/// Removes every file of `vee` from the state directory.
fn remove_files_of(state_dir: &Path, vee: &VeeId) -> Result<(), DriverError> {
    let entries = std::fs::read_dir(state_dir).map_err(|e| DriverError::file(state_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DriverError::file(state_dir, e))?;
        if vee_of_file(&entry.file_name()).as_ref() != Some(vee) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::file(&path, e)),
        }
    }
    Ok(())
}

/// The VEEs the state directory has files of.
fn vees_with_files(state_dir: &Path) -> Result<Vec<VeeId>, DriverError> {
    let entries = std::fs::read_dir(state_dir).map_err(|e| DriverError::file(state_dir, e))?;
    let mut vees = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DriverError::file(state_dir, e))?;
        vees.extend(vee_of_file(&entry.file_name()));
    }
    Ok(vees)
}

fn remove_instance_files(paths: &InstancePaths) -> Result<(), DriverError> {
    for path in [&paths.record, &paths.pid, &paths.qmp, &paths.agent] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::file(path, e)),
        }
    }
    Ok(())
}

async fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DriverError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| DriverError::Failed {
        op: "encode state",
        reason: e.to_string(),
    })?;
    fsutil::write_atomic(path, &json).await
}

/// A migration target QEMU can reach; a file is for suspend, not for `migrate_out`.
fn check_migration_uri(uri: &str) -> Result<(), DriverError> {
    if uri.starts_with("tcp:") || uri.starts_with("unix:") {
        Ok(())
    } else {
        Err(DriverError::Invalid {
            what: "migration uri",
            reason: format!("{uri:?} is neither tcp: nor unix:"),
        })
    }
}

/// `file:<path>` for QEMU, which reads `,offset=` after a file name: a comma is refused.
fn file_uri(path: &Path) -> Result<String, DriverError> {
    let text = path.to_str().ok_or_else(|| DriverError::Invalid {
        what: "memory file",
        reason: format!("{} is not UTF-8", path.display()),
    })?;
    if text.contains(',') {
        return Err(DriverError::Invalid {
            what: "memory file",
            reason: format!("{text} contains a comma"),
        });
    }
    Ok(format!("file:{text}"))
}

fn check_spec(spec: &DeploySpec) -> Result<(), DriverError> {
    if spec.cpu == 0 || spec.memory_mb == 0 {
        return Err(DriverError::Invalid {
            what: "deploy spec",
            reason: format!(
                "{} vCPUs and {} MB: a VEE needs at least one of each",
                spec.cpu, spec.memory_mb
            ),
        });
    }
    for disk in &spec.disks {
        check_disk_target(&disk.target)?;
    }
    check_boot_files(spec)?;
    if !spec.raw.is_empty() {
        tracing::info!(vee = %spec.vee, raw = %spec.raw, "the qemu driver ignores raw hypervisor settings");
    }
    Ok(())
}

#[async_trait::async_trait]
impl Driver for QemuDriver {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    async fn deploy(&self, spec: &DeploySpec) -> Result<(), DriverError> {
        let _guard = self.lock_vee(&spec.vee).await;
        self.refuse_existing(&spec.vee).await?;
        check_spec(spec)?;
        let drives = disks::prepare(&self.config.qemu_img, spec).await?;
        let shape = MachineShape::for_boot(spec);
        write_json(&shape_path(&spec.vee_dir), &shape).await?;
        let balloon_target = shape.memory_mb;
        let balloon_needed = shape.memory_mb < shape.memory_max_mb;
        self.launch_and(spec, shape, &drives, None, |instance| async move {
            if balloon_needed {
                let qmp = self.connect(&instance).await?;
                qmp.execute(&qmp::Balloon {
                    value: balloon_target * MIB,
                })
                .await
                .map_err(|e| qmp_failed("deploy", e))?;
            }
            Ok(())
        })
        .await
        .map(drop)
    }

    async fn pause(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        if self.expect_state(&instance, "pause", &running).await? == InstanceState::Paused {
            return Ok(());
        }
        let qmp = self.connect(&instance).await?;
        qmp.execute(&qmp::Stop)
            .await
            .map_err(|e| qmp_failed("pause", e))?;
        Ok(())
    }

    async fn resume(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        if self.expect_state(&instance, "resume", &running).await? == InstanceState::Running {
            return Ok(());
        }
        let qmp = self.connect(&instance).await?;
        qmp.execute(&qmp::Cont)
            .await
            .map_err(|e| qmp_failed("resume", e))?;
        Ok(())
    }

    async fn suspend(&self, vee: &VeeId, memory_file: &Path) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        let state = self.expect_state(&instance, "suspend", &running).await?;
        let qmp = self.connect(&instance).await?;
        // A stopped guest is saved in one pass, and the restored one starts paused, so it
        // runs again only when restore says so.
        if state == InstanceState::Running {
            qmp.execute(&qmp::Stop)
                .await
                .map_err(|e| qmp_failed("suspend", e))?;
        }
        let mut shape = instance.shape();
        shape.plugged_cpus = self.plugged_cpus(&qmp).await?;
        self.save_shape(&instance, shape).await?;
        fsutil::create_parent(memory_file).await?;
        let partial = memory_file.with_file_name(format!(
            ".{}.partial",
            memory_file
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let uri = file_uri(&partial)?;
        let started = Instant::now();
        let saved = match qmp.execute(&qmp::Migrate { uri }).await {
            Ok(_) => self.wait_migration(&instance, "suspend").await.map(drop),
            Err(e) => Err(qmp_failed("suspend", e)),
        };
        if let Err(e) = saved {
            let _ = tokio::fs::remove_file(&partial).await;
            if state == InstanceState::Running {
                if let Err(cont) = qmp.execute(&qmp::Cont).await {
                    tracing::warn!(%vee, error = %cont, "could not resume after a failed suspend");
                }
            }
            return Err(e);
        }
        tokio::fs::rename(&partial, memory_file)
            .await
            .map_err(|e| DriverError::file(memory_file, e))?;
        self.end_process(&instance).await;
        self.forget(&instance).await?;
        tracing::info!(%vee, elapsed_ms = started.elapsed().as_millis(), "vee suspended");
        Ok(())
    }

    async fn restore(&self, spec: &DeploySpec, memory_file: &Path) -> Result<(), DriverError> {
        let _guard = self.lock_vee(&spec.vee).await;
        self.refuse_existing(&spec.vee).await?;
        check_spec(spec)?;
        if !fsutil::exists(memory_file).await? {
            return Err(DriverError::MissingFile(memory_file.to_owned()));
        }
        let uri = file_uri(memory_file)?;
        let drives = disks::existing(spec).await?;
        let shape = self.shape_for_resume(spec).await?;
        self.launch_and(spec, shape, &drives, Some("defer"), |instance| async move {
            let qmp = self.connect(&instance).await?;
            qmp.execute(&qmp::MigrateIncoming { uri })
                .await
                .map_err(|e| qmp_failed("restore", e))?;
            self.wait_migration(&instance, "restore").await?;
            qmp.execute(&qmp::Cont)
                .await
                .map_err(|e| qmp_failed("restore", e))?;
            Ok(())
        })
        .await
        .map(drop)
    }

    async fn shutdown(&self, vee: &VeeId, deadline: Duration) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let instance = self.existing(vee)?;
        let asked = match self.connect(&instance).await {
            Ok(qmp) => qmp
                .execute(&qmp::SystemPowerdown)
                .await
                .map_err(|e| qmp_failed("shutdown", e)),
            Err(e) => Err(e),
        };
        let powered_off = match asked {
            Ok(_) => self.wait_powered_off(&instance, deadline).await,
            Err(e) => {
                tracing::warn!(%vee, error = %e, "could not ask the guest to power off");
                false
            }
        };
        if !powered_off {
            tracing::info!(%vee, ?deadline, "the guest did not power off in time; forcing it");
        }
        // A guest that powered off leaves its process waiting (`-action shutdown=pause`).
        self.end_process(&instance).await;
        self.forget(&instance).await
    }

    async fn destroy(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let Some(instance) = self.instance(vee) else {
            return Ok(());
        };
        self.end_process(&instance).await;
        self.forget(&instance).await
    }

    async fn resize(&self, vee: &VeeId, cpu: u32, memory_mb: u64) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        self.expect_state(&instance, "resize", &running).await?;
        let mut shape = instance.shape();
        if cpu == 0 || cpu > shape.max_cpus || memory_mb == 0 || memory_mb > shape.memory_max_mb {
            return Err(DriverError::Invalid {
                what: "resize",
                reason: format!(
                    "{cpu} vCPUs and {memory_mb} MB are outside 1..={} vCPUs and 1..={} MB",
                    shape.max_cpus, shape.memory_max_mb
                ),
            });
        }
        let qmp = self.connect(&instance).await?;
        if memory_mb != shape.memory_mb {
            qmp.execute(&qmp::Balloon {
                value: memory_mb * MIB,
            })
            .await
            .map_err(|e| qmp_failed("resize", e))?;
            shape.memory_mb = memory_mb;
            self.save_shape(&instance, shape.clone()).await?;
        }
        if cpu != shape.cpus() {
            shape = self.resize_cpus(&instance, &qmp, shape, cpu).await?;
            self.save_shape(&instance, shape).await?;
        }
        Ok(())
    }

    async fn status(&self, vee: &VeeId) -> Result<InstanceStatus, DriverError> {
        let instance = self.existing(vee)?;
        self.observe(&instance)
            .await?
            .ok_or_else(|| DriverError::NoSuchInstance(vee.clone()))
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>, DriverError> {
        let instances: Vec<Arc<Instance>> = self.instances().values().cloned().collect();
        let observed =
            futures::future::join_all(instances.iter().map(|instance| self.observe(instance)))
                .await;
        let mut statuses = Vec::with_capacity(observed.len());
        for status in observed {
            statuses.extend(status?);
        }
        statuses.sort_by(|a, b| a.vee.cmp(&b.vee));
        Ok(statuses)
    }

    async fn export_disk(
        &self,
        vee_dir: &Path,
        target: &str,
        out: &Path,
    ) -> Result<(), DriverError> {
        disks::export(&self.config.qemu_img, vee_dir, target, out).await
    }

    async fn prepare_incoming(&self, spec: &DeploySpec) -> Result<String, DriverError> {
        let _guard = self.lock_vee(&spec.vee).await;
        self.refuse_existing(&spec.vee).await?;
        check_spec(spec)?;
        let address = &self.config.migration_listen_address;
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.clone()
        };
        // The free port can be taken by someone else before QEMU binds it: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            let uri = format!("tcp:{host}:{}", process::free_port(address)?);
            match self.launch_incoming(spec, &uri).await {
                Ok(_) => return Ok(uri),
                Err(e) if e.to_string().contains("Address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(DriverError::Failed {
            op: "prepare_incoming",
            reason: "no free port".to_owned(),
        }))
    }

    async fn migrate_out(&self, vee: &VeeId, uri: &str) -> Result<MigrationStats, DriverError> {
        let _guard = self.lock_vee(vee).await;
        check_migration_uri(uri)?;
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        self.expect_state(&instance, "migrate_out", &running)
            .await?;
        let qmp = self.connect(&instance).await?;
        qmp.execute(&qmp::MigrateSetParameters {
            downtime_limit: Some(self.config.migration_downtime_limit_ms),
            max_bandwidth: Some(
                self.config
                    .migration_max_bandwidth_mib_s
                    .saturating_mul(MIB),
            ),
        })
        .await
        .map_err(|e| qmp_failed("migrate_out", e))?;
        qmp.execute(&qmp::Migrate {
            uri: uri.to_owned(),
        })
        .await
        .map_err(|e| qmp_failed("migrate_out", e))?;
        // On failure QEMU keeps the guest here, running as it was.
        let info = self.wait_migration(&instance, "migrate_out").await?;
        let stats = MigrationStats {
            total_ms: info.total_time.unwrap_or(0),
            downtime_ms: info.downtime.unwrap_or(0),
        };
        tracing::info!(%vee, uri, total_ms = stats.total_ms, downtime_ms = stats.downtime_ms, "vee migrated out");
        self.migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vee.clone(), stats);
        self.end_process(&instance).await;
        self.forget(&instance).await?;
        Ok(stats)
    }

    async fn complete_incoming(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let instance = self.existing(vee)?;
        let qmp = self.connect(&instance).await?;
        // The source reports completion a moment before this end has loaded the last state.
        let deadline = Instant::now() + Duration::from_millis(self.config.migration_timeout_ms);
        loop {
            match self.live_state(&instance).await? {
                InstanceState::Running => return Ok(()),
                InstanceState::Paused => {
                    qmp.execute(&qmp::Cont)
                        .await
                        .map_err(|e| qmp_failed("complete_incoming", e))?;
                    return Ok(());
                }
                state @ (InstanceState::PoweredOff | InstanceState::Crashed) => {
                    return Err(DriverError::WrongState {
                        vee: vee.clone(),
                        state,
                        op: "complete_incoming",
                    });
                }
                InstanceState::Incoming => {
                    let info = qmp
                        .execute(&qmp::QueryMigrate)
                        .await
                        .map_err(|e| qmp_failed("complete_incoming", e))?;
                    match info.status.as_deref() {
                        // Still listening (`setup`): nothing has arrived to complete.
                        None | Some("none" | "setup") => {
                            return Err(DriverError::WrongState {
                                vee: vee.clone(),
                                state: InstanceState::Incoming,
                                op: "complete_incoming",
                            });
                        }
                        Some("failed" | "cancelled") => {
                            return Err(DriverError::Failed {
                                op: "complete_incoming",
                                reason: info
                                    .error_desc
                                    .unwrap_or_else(|| "the incoming migration failed".into()),
                            });
                        }
                        _ => {}
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Failed {
                    op: "complete_incoming",
                    reason: "the incoming migration did not complete in time".into(),
                });
            }
            tokio::time::sleep(MIGRATION_POLL).await;
        }
    }

    async fn purge(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        if let Some(instance) = self.instance(vee) {
            self.end_process(&instance).await;
            self.forget(&instance).await?;
        }
        self.migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(vee);
        // Every `<vee>.<anything>` of the state directory: the log that outlives the process,
        // and whatever a killed agent left.
        let state_dir = self.state_dir.clone();
        let vee = vee.clone();
        tokio::task::spawn_blocking(move || remove_files_of(&state_dir, &vee))
            .await
            .map_err(|e| DriverError::Failed {
                op: "purge",
                reason: e.to_string(),
            })?
    }

    async fn traces(&self) -> Result<Vec<VeeId>, DriverError> {
        let state_dir = self.state_dir.clone();
        let mut vees = tokio::task::spawn_blocking(move || vees_with_files(&state_dir))
            .await
            .map_err(|e| DriverError::Failed {
                op: "list traces",
                reason: e.to_string(),
            })??;
        vees.extend(self.instances().keys().cloned());
        vees.sort();
        vees.dedup();
        Ok(vees)
    }

    async fn remove_lan(&self, lan: &LanPlan) -> Result<(), DriverError> {
        self.hostnet.remove_lan(lan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_removes_every_file_of_its_vee_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "vee-00000001.json",
            "vee-00000001.pid",
            "vee-00000001.qmp",
            "vee-00000001.agent",
            "vee-00000001.log",
            "vee-00000002.log",
            "vee-00000012.log",
            "vee-00000001-old.log",
            "notes.txt",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mut found = vees_with_files(dir.path()).unwrap();
        found.sort();
        found.dedup();
        assert_eq!(
            found,
            vec![VeeId::from_seq(1), VeeId::from_seq(2), VeeId::from_seq(12)]
        );
        remove_files_of(dir.path(), &VeeId::from_seq(1)).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "vee-00000001-old.log",
                "vee-00000002.log",
                "vee-00000012.log"
            ]
        );
        // Nothing left of it: no error.
        remove_files_of(dir.path(), &VeeId::from_seq(1)).unwrap();
    }

    #[test]
    fn run_states_map_to_instance_states() {
        let cases = [
            ("running", InstanceState::Running),
            ("paused", InstanceState::Paused),
            ("postmigrate", InstanceState::Paused),
            ("prelaunch", InstanceState::Paused),
            ("inmigrate", InstanceState::Incoming),
            ("shutdown", InstanceState::PoweredOff),
            ("guest-panicked", InstanceState::Crashed),
            ("internal-error", InstanceState::Crashed),
        ];
        for (run_state, expected) in cases {
            assert_eq!(instance_state(run_state), expected, "{run_state}");
        }
    }

    #[test]
    fn only_network_uris_are_migration_targets() {
        assert!(check_migration_uri("tcp:127.0.0.1:4444").is_ok());
        assert!(check_migration_uri("unix:/run/m.sock").is_ok());
        assert!(check_migration_uri("file:/tmp/m").is_err());
        assert!(check_migration_uri("exec:rm -rf /").is_err());
    }

    #[test]
    fn memory_files_with_commas_are_refused() {
        assert_eq!(
            file_uri(Path::new("/srv/vees/vee-1/memory")).unwrap(),
            "file:/srv/vees/vee-1/memory"
        );
        assert!(file_uri(Path::new("/srv/a,offset=9")).is_err());
    }

    #[test]
    fn vcpu_slots_sort_by_topology() {
        let slot = |socket, core| {
            std::collections::BTreeMap::from([
                ("socket-id".to_owned(), socket),
                ("core-id".to_owned(), core),
                ("thread-id".to_owned(), 0),
            ])
        };
        let mut slots = [slot(1, 0), slot(0, 2), slot(0, 1)];
        slots.sort_by_key(slot_order);
        assert_eq!(slots, [slot(0, 1), slot(0, 2), slot(1, 0)]);
    }
}
