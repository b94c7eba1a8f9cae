//! The instances: one QEMU process per active or paused VEE, in the driver's table.
//!
//! This owns the [`QemuDriver`] and its table of instances, and the verbs every operation on
//! a VEE's process needs: adopting the processes a former agent left running, finding an
//! instance, connecting to QMP, asking QEMU's run state, keeping the instance's record,
//! ending the process and forgetting it. Launching, migration, hotplug and the figures of a
//! status build on these verbs in their own modules; nothing here knows them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use veem_api::agent::{DeploySpec, InstanceState};
use veem_model::VeeId;

use super::config::{resolve_accel, Accel, QemuConfig};
use super::guest_agent::{PendingReports, ReportReader};
use super::machine::{shape_path, InstancePaths, MachineShape, NicTap};
use super::process;
use super::qmp::{self, QmpClient, QmpError};
use super::state_files::{remove_instance_files, write_json};
use crate::hostnet::HostNet;
use crate::vee_locks::{VeeGuard, VeeLocks};
use crate::{DriverError, MigrationStats};

/// A mebibyte: QEMU counts memory and bandwidth in bytes.
pub(super) const MIB: u64 = 1 << 20;
/// How long QEMU gets to end after `quit` before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// What the state directory records of one instance, in `<vee>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InstanceRecord {
    pub(super) spec: DeploySpec,
    pub(super) shape: MachineShape,
    /// The NICs as this process has them: each one's tap is named at launch.
    #[serde(default)]
    pub(super) nics: Vec<NicTap>,
}

/// One QEMU process this driver runs or adopted.
pub(super) struct Instance {
    pub(super) vee: VeeId,
    pub(super) pid: u32,
    pub(super) paths: InstancePaths,
    record: Mutex<InstanceRecord>,
    /// Connected on first use: an adopted instance may never need it.
    qmp: tokio::sync::Mutex<Option<Arc<QmpClient>>>,
    /// What the guest's agent reported that no status has carried yet.
    pub(super) reports: Arc<PendingReports>,
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
    pub(super) fn new(vee: VeeId, pid: u32, paths: InstancePaths, record: InstanceRecord) -> Self {
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
    pub(super) fn read_reports(&self) {
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

    pub(super) fn record(&self) -> MutexGuard<'_, InstanceRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn shape(&self) -> MachineShape {
        self.record().shape.clone()
    }

    pub(super) fn is_alive(&self) -> bool {
        process::is_qemu_of(self.pid, self.vee.as_str())
    }
}

/// The qemu driver. See the module documentation.
pub struct QemuDriver {
    pub(super) config: QemuConfig,
    pub(super) hostnet: HostNet,
    pub(super) accel: Accel,
    pub(super) cpu_model: String,
    state_dir: PathBuf,
    pub(super) clock_ticks: u64,
    instances: Mutex<HashMap<VeeId, Arc<Instance>>>,
    /// One lock per VEE with an operation under way: operations on one VEE run one at a time.
    vee_locks: VeeLocks,
    pub(super) migrations: Mutex<HashMap<VeeId, MigrationStats>>,
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

    pub(super) fn paths(&self, vee: &VeeId, vee_dir: &Path) -> InstancePaths {
        InstancePaths::new(&self.state_dir, vee.as_str(), vee_dir)
    }

    pub(super) fn instances(&self) -> MutexGuard<'_, HashMap<VeeId, Arc<Instance>>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn instance(&self, vee: &VeeId) -> Option<Arc<Instance>> {
        self.instances().get(vee).cloned()
    }

    pub(super) fn existing(&self, vee: &VeeId) -> Result<Arc<Instance>, DriverError> {
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

    pub(super) async fn lock_vee(&self, vee: &VeeId) -> VeeGuard<'_> {
        self.vee_locks.lock(vee).await
    }

    /// The VEE's lock if no operation holds it now.
    pub(super) fn try_lock_vee(&self, vee: &VeeId) -> Option<VeeGuard<'_>> {
        self.vee_locks.try_lock(vee)
    }

    /// Fails if the VEE runs here; forgets a recorded instance whose process died. Called with
    /// the VEE's lock held.
    pub(super) async fn refuse_existing(&self, vee: &VeeId) -> Result<(), DriverError> {
        if let Some(instance) = self.instance(vee) {
            if instance.is_alive() {
                return Err(DriverError::AlreadyExists(vee.clone()));
            }
            self.forget(&instance).await?;
        }
        Ok(())
    }

    /// Removes the instance from the table and its files from the state directory.
    pub(super) async fn forget(&self, instance: &Instance) -> Result<(), DriverError> {
        self.instances().remove(&instance.vee);
        instance.stop_reading_reports();
        *instance.qmp.lock().await = None;
        remove_instance_files(&instance.paths)
    }

    /// The instance's QMP connection, connecting (again) if there is none or it closed.
    pub(super) async fn connect(&self, instance: &Instance) -> Result<Arc<QmpClient>, DriverError> {
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

    pub(super) fn poll(&self) -> Duration {
        Duration::from_millis(self.config.shutdown_poll_ms.max(1))
    }

    /// The instance's state as QEMU reports it; a process that died is an error naming it.
    pub(super) async fn live_state(
        &self,
        instance: &Instance,
    ) -> Result<InstanceState, DriverError> {
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

    pub(super) async fn expect_state(
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

    /// Ends the process: `quit`, then SIGKILL if it is still there after a grace period.
    pub(super) async fn end_process(&self, instance: &Instance) {
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
    pub(super) async fn save_shape(
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

    /// Waits until the guest has powered off (or its process is gone) or `deadline` has
    /// passed; answers whether it did.
    pub(super) async fn wait_powered_off(&self, instance: &Instance, deadline: Duration) -> bool {
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

/// A QMP failure as the driver's error, its causes spelled out in the reason.
pub(super) fn qmp_failed(op: &'static str, error: QmpError) -> DriverError {
    let mut reason = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(source) = cause {
        reason.push_str(": ");
        reason.push_str(&source.to_string());
        cause = source.source();
    }
    DriverError::Failed { op, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
