//! The simulated hypervisor: instances are records, not processes, so one machine can play a
//! site of many hosts running thousands of VEEs, with configured latencies and injected faults.
//!
//! It is faithful where the VEEM can observe it: disks really appear in the VEE's directory on
//! the shared storage (a clone is a byte copy here, where the qemu driver makes a qcow2 overlay
//! with the source as backing file; a blank disk is a one-line file recording its size, where
//! qemu-img would create a sparse qcow2), suspend writes a memory file that restore needs, and
//! every change of an instance is appended to a journal in the state directory before the
//! operation returns `Ok`, so an agent restarted after a kill finds its instances again, as the
//! qemu driver will through its pid files. Nothing is fsynced: the record survives the death of
//! the process, not of the machine.
//!
//! It is also cheap, since scale tests run thousands of its instances on one machine: a change
//! is one small append to a file that is already open, and a deploy touches the VEE's
//! directory only to create its disks or its context file. The boot identity lives in the
//! journal; only a migration puts it in the VEE's directory, for the destination host to read.
//!
//! What no record can observe is made up, deterministically: CPU time from a fixed load, disk
//! and NIC figures from the CPU time, and a migration's figures from its configured latency.

mod config;
mod journal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use veem_api::agent::{
    DeploySpec, DiskCopy, DiskCounters, InstanceState, InstanceStatus, LanPlan, NicCounters,
};
use veem_layout::{context_document_path, disk_path, now_ms, source_note_path};
use veem_model::VeeId;

pub use config::{FaultSpec, LatencyConfig, SimConfig, FAULT_OPS};
use journal::{Change, Journal};

use crate::driver::{
    check_boot_files, check_copy_targets, check_disk_target, local_source, owned_disk_targets,
};
use crate::vee_locks::{VeeGuard, VeeLocks};
use crate::{fsutil, Driver, DriverError, Incoming, MigrationStats};

/// Share of its vCPUs a running simulated guest keeps busy, in percent.
const LOAD_PERCENT: u64 = 25;
/// A simulated guest's made-up I/O, per millisecond of the CPU time it used: on each disk one
/// block read, a block write every 4 ms and a flush every 64 ms; on each NIC a full-size frame
/// received every 2 ms and a small one sent every 4 ms. Tied to CPU time, the figures grow only
/// while the guest runs, follow its size, start from zero on each host like a real instance's,
/// and are the same for the same CPU time.
const SIM_BLOCK_BYTES: u64 = 4096;
const SIM_CPU_MS_PER_WRITE: u64 = 4;
const SIM_CPU_MS_PER_FLUSH: u64 = 64;
const SIM_RX_FRAME_BYTES: u64 = 1500;
const SIM_CPU_MS_PER_RX_FRAME: u64 = 2;
const SIM_TX_FRAME_BYTES: u64 = 400;
const SIM_CPU_MS_PER_TX_FRAME: u64 = 4;
/// The file in a VEE's directory that carries its boot identity to a migration's destination:
/// `migrate_out` writes it, `complete_incoming` reads and removes it.
const BOOT_ID_FILE: &str = "sim-boot-id";
const MEMORY_IMAGE_FORMAT: &str = "veem-sim-memory/1";
const URI_SCHEME: &str = "sim://";

/// One simulated instance, as recorded in the driver's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SimInstance {
    vee: VeeId,
    state: InstanceState,
    cpus: u32,
    memory_mb: u64,
    /// Stays the same across suspend/restore and migration; a fresh deploy draws a new one.
    /// Unknown (`None`) only while the instance is `Incoming`: it arrives with the migration.
    boot_id: Option<u64>,
    /// CPU time accounted up to `running_since_unix_ms`, or up to when the guest last stopped.
    cpu_time_ms: u64,
    running_since_unix_ms: Option<u64>,
    /// What the instance was deployed with, less its context document (written to the VEE's
    /// directory at deploy, never read from here): a site of 200,000 sim instances keeps one
    /// small copy each, behind a pointer so the map of instances and the clones taken for
    /// each operation stay small (see "Memory at scale" in BENCHMARKS.md).
    spec: Arc<DeploySpec>,
}

impl SimInstance {
    fn new(spec: &DeploySpec, state: InstanceState, boot_id: Option<u64>, now_ms: u64) -> Self {
        let mut instance = Self {
            vee: spec.vee.clone(),
            state,
            cpus: spec.cpu,
            memory_mb: spec.memory_mb,
            boot_id,
            cpu_time_ms: 0,
            running_since_unix_ms: None,
            spec: Arc::new(DeploySpec {
                ovf_env: None,
                ..spec.clone()
            }),
        };
        if state == InstanceState::Running {
            instance.start_clock(now_ms);
        }
        instance
    }

    fn cpu_time_at(&self, now_ms: u64) -> u64 {
        let running_ms = self
            .running_since_unix_ms
            .map_or(0, |since| now_ms.saturating_sub(since));
        self.cpu_time_ms
            .saturating_add(running_ms.saturating_mul(u64::from(self.cpus)) * LOAD_PERCENT / 100)
    }

    fn start_clock(&mut self, now_ms: u64) {
        if self.running_since_unix_ms.is_none() {
            self.running_since_unix_ms = Some(now_ms);
        }
    }

    fn stop_clock(&mut self, now_ms: u64) {
        self.cpu_time_ms = self.cpu_time_at(now_ms);
        self.running_since_unix_ms = None;
    }

    fn status_at(&self, now_ms: u64) -> InstanceStatus {
        let cpu_time_ms = self.cpu_time_at(now_ms);
        InstanceStatus {
            vee: self.vee.clone(),
            state: self.state,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            cpu_time_ms,
            disks: self.simulated_disks(cpu_time_ms),
            nics: self.simulated_nics(cpu_time_ms),
            // A simulated guest runs no agent.
            agent_reports: Vec::new(),
        }
    }

    /// Made-up disk figures (see [`SIM_BLOCK_BYTES`]) for each disk of the spec.
    fn simulated_disks(&self, cpu_time_ms: u64) -> Vec<DiskCounters> {
        let writes = cpu_time_ms / SIM_CPU_MS_PER_WRITE;
        self.spec
            .disks
            .iter()
            .map(|plan| DiskCounters {
                target: plan.target.clone(),
                read_bytes: cpu_time_ms.saturating_mul(SIM_BLOCK_BYTES),
                write_bytes: writes.saturating_mul(SIM_BLOCK_BYTES),
                read_ops: cpu_time_ms,
                write_ops: writes,
                flush_ops: cpu_time_ms / SIM_CPU_MS_PER_FLUSH,
            })
            .collect()
    }

    /// Made-up NIC figures (see [`SIM_BLOCK_BYTES`]) for each NIC of the spec.
    fn simulated_nics(&self, cpu_time_ms: u64) -> Vec<NicCounters> {
        let received = cpu_time_ms / SIM_CPU_MS_PER_RX_FRAME;
        let sent = cpu_time_ms / SIM_CPU_MS_PER_TX_FRAME;
        self.spec
            .nics
            .iter()
            .map(|plan| NicCounters {
                target: plan.target.clone(),
                rx_bytes: received.saturating_mul(SIM_RX_FRAME_BYTES),
                tx_bytes: sent.saturating_mul(SIM_TX_FRAME_BYTES),
                rx_packets: received,
                tx_packets: sent,
            })
            .collect()
    }

    /// The boot identity of an instance past `Incoming`, which always has one.
    fn known_boot_id(&self, op: &'static str) -> Result<u64, DriverError> {
        self.boot_id.ok_or_else(|| DriverError::WrongState {
            vee: self.vee.clone(),
            state: self.state,
            op,
        })
    }

    fn expect_state(&self, op: &'static str, allowed: &[InstanceState]) -> Result<(), DriverError> {
        if allowed.contains(&self.state) {
            Ok(())
        } else {
            Err(DriverError::WrongState {
                vee: self.vee.clone(),
                state: self.state,
                op,
            })
        }
    }
}

/// What `suspend` writes to the memory file and `restore` reads back.
#[derive(Debug, Serialize, Deserialize)]
struct MemoryImage {
    format: String,
    vee: VeeId,
    boot_id: u64,
    cpus: u32,
    memory_mb: u64,
}

/// The simulated driver. See the module documentation.
pub struct SimDriver {
    latency: LatencyConfig,
    faults: config::Faults,
    state_dir: PathBuf,
    /// Changed only while `journal` is held, so the journal and this map always agree.
    instances: Mutex<HashMap<VeeId, SimInstance>>,
    /// An asynchronous lock, so that a compaction can run on the blocking pool while changes
    /// wait for it. An append itself is written in place: one small write to the page cache
    /// costs less than a hop to the blocking pool.
    journal: Arc<tokio::sync::Mutex<Journal>>,
    /// One lock per VEE with an operation under way: operations on one VEE run one at a time
    /// (as QMP commands to one process do), those on different VEEs run concurrently.
    vee_locks: VeeLocks,
}

impl SimDriver {
    /// Opens (creating it if needed) the state directory and adopts the instances its journal
    /// records. This reads and rewrites the journal synchronously: call it at start-up.
    pub fn new(config: SimConfig, state_dir: PathBuf) -> Result<Self, DriverError> {
        let faults = config::Faults::new(&config.faults)?;
        std::fs::create_dir_all(&state_dir).map_err(|e| DriverError::file(&state_dir, e))?;
        let (journal, instances) = Journal::open(&state_dir)?;
        if !instances.is_empty() {
            tracing::info!(
                count = instances.len(),
                state_dir = %state_dir.display(),
                "sim driver adopted its instances"
            );
        }
        Ok(Self {
            latency: config.latency_ms,
            faults,
            state_dir,
            instances: Mutex::new(instances),
            journal: Arc::new(tokio::sync::Mutex::new(journal)),
            vee_locks: VeeLocks::default(),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The instance's boot identity, for tests: unchanged by suspend/restore and migration,
    /// new on every deploy.
    pub fn boot_id(&self, vee: &VeeId) -> Option<u64> {
        self.instance(vee).and_then(|instance| instance.boot_id)
    }

    /// Plays a guest that powers itself off: the instance stays, `PoweredOff`, until the VEEM
    /// destroys or shuts it down.
    pub async fn simulate_guest_poweroff(&self, vee: &VeeId) -> Result<(), DriverError> {
        self.simulate_guest_end(vee, InstanceState::PoweredOff)
            .await
    }

    /// Plays a guest that panics: the instance stays, `Crashed`, until the VEEM destroys it.
    pub async fn simulate_guest_panic(&self, vee: &VeeId) -> Result<(), DriverError> {
        self.simulate_guest_end(vee, InstanceState::Crashed).await
    }

    async fn simulate_guest_end(&self, vee: &VeeId, end: InstanceState) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        let mut instance = self.existing(vee)?;
        instance.stop_clock(now_ms());
        instance.state = end;
        self.commit(instance).await
    }

    fn instances(&self) -> MutexGuard<'_, HashMap<VeeId, SimInstance>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn instance(&self, vee: &VeeId) -> Option<SimInstance> {
        self.instances().get(vee).cloned()
    }

    fn existing(&self, vee: &VeeId) -> Result<SimInstance, DriverError> {
        self.instance(vee)
            .ok_or_else(|| DriverError::NoSuchInstance(vee.clone()))
    }

    fn refuse_existing(&self, vee: &VeeId) -> Result<(), DriverError> {
        if self.instances().contains_key(vee) {
            Err(DriverError::AlreadyExists(vee.clone()))
        } else {
            Ok(())
        }
    }

    /// Takes the journal for one change, compacting it first when it has grown too long.
    async fn journal_for_change(
        &self,
    ) -> Result<tokio::sync::OwnedMutexGuard<Journal>, DriverError> {
        let mut journal = Arc::clone(&self.journal).lock_owned().await;
        let live: Vec<SimInstance> = {
            let instances = self.instances();
            if !journal.wants_compaction(instances.len()) {
                return Ok(journal);
            }
            instances.values().cloned().collect()
        };
        let compacted = tokio::task::spawn_blocking(move || {
            let result = journal.compact(live.iter());
            result.map(|()| journal)
        })
        .await;
        compacted.map_err(|e| DriverError::Failed {
            op: "compact the sim journal",
            reason: e.to_string(),
        })?
    }

    /// Records the instance in the journal, then in memory: `Ok` means it survives a kill.
    async fn commit(&self, instance: SimInstance) -> Result<(), DriverError> {
        let mut journal = self.journal_for_change().await?;
        journal.append(&Change::Put(&instance))?;
        self.instances().insert(instance.vee.clone(), instance);
        Ok(())
    }

    /// Ends the instance's record, if there is one.
    async fn forget(&self, vee: &VeeId) -> Result<(), DriverError> {
        if !self.instances().contains_key(vee) {
            return Ok(());
        }
        let mut journal = self.journal_for_change().await?;
        journal.append(&Change::Remove(vee))?;
        self.instances().remove(vee);
        Ok(())
    }

    async fn lock_vee(&self, vee: &VeeId) -> VeeGuard<'_> {
        self.vee_locks.lock(vee).await
    }

    /// Starts an operation on one VEE: waits for its turn, takes the configured time and
    /// decides whether a fault is injected. `name` is the VEE's name when the request carries
    /// it; otherwise the recorded instance's is used.
    async fn enter(
        &self,
        op: &'static str,
        vee: &VeeId,
        name: Option<&str>,
        delay: Duration,
    ) -> Result<VeeGuard<'_>, DriverError> {
        let guard = self.lock_vee(vee).await;
        take(delay).await;
        let recorded_name = match name {
            Some(_) => None,
            None => self
                .instance(vee)
                .map(|instance| instance.spec.name.clone()),
        };
        self.faults.check(op, name.or(recorded_name.as_deref()))?;
        Ok(guard)
    }

    /// Fails unless every disk a started instance would open is there.
    async fn check_disks_present(&self, spec: &DeploySpec) -> Result<(), DriverError> {
        for plan in &spec.disks {
            check_disk_target(&plan.target)?;
            let needed = match (&plan.source, plan.clone) {
                (Some(source), false) => local_source(source)?.to_owned(),
                _ => disk_path(&spec.vee_dir, &plan.target),
            };
            if !fsutil::exists(&needed).await? {
                return Err(DriverError::MissingFile(needed));
            }
        }
        Ok(())
    }

    async fn create_disks(&self, spec: &DeploySpec) -> Result<(), DriverError> {
        // Check everything first so a refused deploy leaves no half-made disks behind.
        for plan in &spec.disks {
            check_disk_target(&plan.target)?;
            match &plan.source {
                // The VEE's own disk from an earlier run: its source is not read again.
                Some(_)
                    if plan.clone
                        && fsutil::exists(&disk_path(&spec.vee_dir, &plan.target)).await? => {}
                Some(source) => {
                    let source = local_source(source)?;
                    if !fsutil::exists(source).await? {
                        return Err(DriverError::MissingFile(source.to_owned()));
                    }
                    if !plan.clone && source.to_str().is_none() {
                        return Err(DriverError::Invalid {
                            what: "disk source",
                            reason: format!("{} is not UTF-8", source.display()),
                        });
                    }
                }
                None if plan.size_gb.is_none() => {
                    return Err(DriverError::Invalid {
                        what: "blank disk",
                        reason: format!("{} has no size", plan.target),
                    });
                }
                None => {}
            }
        }
        for plan in &spec.disks {
            let disk = disk_path(&spec.vee_dir, &plan.target);
            let source_note = source_note_path(&spec.vee_dir, &plan.target);
            match (&plan.source, plan.clone) {
                (Some(source), true) => {
                    fsutil::remove_if_present(&source_note).await?;
                    // An existing disk is the VEE's own, from an earlier run: keep it.
                    if !fsutil::exists(&disk).await? {
                        fsutil::copy_atomic(local_source(source)?, &disk).await?;
                    }
                }
                // A cdrom (never a clone) is read in place, as a disk used in place.
                (Some(source), false) => {
                    let text = local_source(source)?.to_str().unwrap_or_default();
                    fsutil::write_atomic(&source_note, text.as_bytes()).await?;
                }
                (None, _) => {
                    if !fsutil::exists(&disk).await? {
                        let size_gb = plan.size_gb.unwrap_or_default();
                        let header = format!("veem-sim blank disk size_gb={size_gb}\n");
                        fsutil::write_atomic(&disk, header.as_bytes()).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The directory a `sim://` disk copy names, once the copy asks for exactly the disks the VEE
/// owns (no disk left behind, none used in place overwritten).
fn copy_destination(copy: &DiskCopy, spec: &DeploySpec) -> Result<PathBuf, DriverError> {
    let dir = copy
        .address
        .strip_prefix(URI_SCHEME)
        .filter(|dir| Path::new(dir).is_absolute())
        .ok_or_else(|| DriverError::Invalid {
            what: "disk copy",
            reason: format!("{:?} is not {URI_SCHEME}<absolute directory>", copy.address),
        })?;
    check_copy_targets(spec, copy)?;
    Ok(PathBuf::from(dir))
}

/// Where a migration's source leaves the boot identity beside the destination's `sim://` URI.
fn uri_handover(uri: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}.{BOOT_ID_FILE}",
        uri.strip_prefix(URI_SCHEME).unwrap_or(uri)
    ))
}

/// Reads the boot identity a migration's source left in the VEE's directory.
async fn read_boot_id(path: &Path) -> Result<u64, DriverError> {
    let bytes = fsutil::read(path).await?;
    String::from_utf8_lossy(&bytes)
        .trim()
        .parse()
        .map_err(|e| DriverError::Failed {
            op: "read boot id",
            reason: format!("{}: {e}", path.display()),
        })
}

/// Plays an operation's configured duration. No latency means none at all: a timer, even of
/// zero, waits for the runtime's next millisecond tick, which would make every operation of a
/// scale test take a millisecond.
async fn take(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[async_trait::async_trait]
impl Driver for SimDriver {
    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn deploy(&self, spec: &DeploySpec) -> Result<(), DriverError> {
        let delay = self.latency.for_op("deploy");
        let _guard = self
            .enter("deploy", &spec.vee, Some(&spec.name), delay)
            .await?;
        self.refuse_existing(&spec.vee)?;
        check_boot_files(spec)?;
        self.create_disks(spec).await?;
        if let Some(ovf_env) = &spec.ovf_env {
            let path = context_document_path(&spec.vee_dir);
            fsutil::write_atomic(&path, ovf_env.as_bytes()).await?;
        }
        self.commit(SimInstance::new(
            spec,
            InstanceState::Running,
            Some(rand::random::<u64>()),
            now_ms(),
        ))
        .await
    }

    async fn pause(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self
            .enter("pause", vee, None, self.latency.for_op("pause"))
            .await?;
        let mut instance = self.existing(vee)?;
        instance.expect_state("pause", &[InstanceState::Running, InstanceState::Paused])?;
        if instance.state == InstanceState::Paused {
            return Ok(());
        }
        instance.stop_clock(now_ms());
        instance.state = InstanceState::Paused;
        self.commit(instance).await
    }

    async fn resume(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self
            .enter("resume", vee, None, self.latency.for_op("resume"))
            .await?;
        let mut instance = self.existing(vee)?;
        instance.expect_state("resume", &[InstanceState::Running, InstanceState::Paused])?;
        if instance.state == InstanceState::Running {
            return Ok(());
        }
        instance.start_clock(now_ms());
        instance.state = InstanceState::Running;
        self.commit(instance).await
    }

    async fn suspend(&self, vee: &VeeId, memory_file: &Path) -> Result<(), DriverError> {
        let _guard = self
            .enter("suspend", vee, None, self.latency.for_op("suspend"))
            .await?;
        let instance = self.existing(vee)?;
        instance.expect_state("suspend", &[InstanceState::Running, InstanceState::Paused])?;
        let image = MemoryImage {
            format: MEMORY_IMAGE_FORMAT.to_owned(),
            vee: instance.vee.clone(),
            boot_id: instance.known_boot_id("suspend")?,
            cpus: instance.cpus,
            memory_mb: instance.memory_mb,
        };
        let json = serde_json::to_vec_pretty(&image).map_err(|e| DriverError::Failed {
            op: "suspend",
            reason: e.to_string(),
        })?;
        fsutil::write_atomic(memory_file, &json).await?;
        self.forget(vee).await
    }

    async fn restore(&self, spec: &DeploySpec, memory_file: &Path) -> Result<(), DriverError> {
        let delay = self.latency.for_op("restore");
        let _guard = self
            .enter("restore", &spec.vee, Some(&spec.name), delay)
            .await?;
        self.refuse_existing(&spec.vee)?;
        let bytes = fsutil::read(memory_file).await?;
        let not_an_image = |reason: String| DriverError::Failed {
            op: "restore",
            reason: format!(
                "{} is not a sim memory image: {reason}",
                memory_file.display()
            ),
        };
        let image: MemoryImage =
            serde_json::from_slice(&bytes).map_err(|e| not_an_image(e.to_string()))?;
        if image.format != MEMORY_IMAGE_FORMAT {
            return Err(not_an_image(format!("format {:?}", image.format)));
        }
        if image.vee != spec.vee {
            return Err(not_an_image(format!("it holds {}", image.vee)));
        }
        self.check_disks_present(spec).await?;
        let mut instance =
            SimInstance::new(spec, InstanceState::Running, Some(image.boot_id), now_ms());
        // The saved machine comes back as it was, including a resize made before suspending.
        instance.cpus = image.cpus;
        instance.memory_mb = image.memory_mb;
        self.commit(instance).await
    }

    async fn shutdown(&self, vee: &VeeId, deadline: Duration) -> Result<(), DriverError> {
        // The guest takes its configured time to power off, unless forced at the deadline.
        let delay = self.latency.for_op("shutdown").min(deadline);
        let _guard = self.enter("shutdown", vee, None, delay).await?;
        self.existing(vee)?;
        self.forget(vee).await
    }

    async fn destroy(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self
            .enter("destroy", vee, None, self.latency.for_op("destroy"))
            .await?;
        self.forget(vee).await
    }

    async fn resize(&self, vee: &VeeId, cpu: u32, memory_mb: u64) -> Result<(), DriverError> {
        let _guard = self
            .enter("resize", vee, None, self.latency.for_op("resize"))
            .await?;
        let mut instance = self.existing(vee)?;
        instance.expect_state("resize", &[InstanceState::Running, InstanceState::Paused])?;
        // Like hotplug, a resize cannot go beyond the maxima the instance was started with.
        let cpu_max = instance.spec.cpu_max.max(instance.spec.cpu);
        let memory_max_mb = instance.spec.memory_max_mb.max(instance.spec.memory_mb);
        if cpu == 0 || cpu > cpu_max || memory_mb == 0 || memory_mb > memory_max_mb {
            return Err(DriverError::Invalid {
                what: "resize",
                reason: format!(
                    "{cpu} vCPUs and {memory_mb} MB are outside 1..={cpu_max} vCPUs and 1..={memory_max_mb} MB"
                ),
            });
        }
        let now = now_ms();
        let running = instance.running_since_unix_ms.is_some();
        // Close the accounting period at the old vCPU count before changing it.
        instance.stop_clock(now);
        instance.cpus = cpu;
        instance.memory_mb = memory_mb;
        if running {
            instance.start_clock(now);
        }
        self.commit(instance).await
    }

    async fn status(&self, vee: &VeeId) -> Result<InstanceStatus, DriverError> {
        let name = self
            .instance(vee)
            .map(|instance| instance.spec.name.clone());
        self.faults.check("status", name.as_deref())?;
        Ok(self.existing(vee)?.status_at(now_ms()))
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>, DriverError> {
        self.faults.check("list", None)?;
        let now = now_ms();
        let mut statuses: Vec<_> = self
            .instances()
            .values()
            .map(|instance| instance.status_at(now))
            .collect();
        statuses.sort_by(|a, b| a.vee.cmp(&b.vee));
        Ok(statuses)
    }

    async fn export_disk(
        &self,
        vee_dir: &Path,
        target: &str,
        out: &Path,
    ) -> Result<(), DriverError> {
        check_disk_target(target)?;
        take(self.latency.for_op("export_disk")).await;
        let name = self
            .instances()
            .values()
            .find(|instance| instance.spec.vee_dir == vee_dir)
            .map(|instance| instance.spec.name.clone());
        self.faults.check("export_disk", name.as_deref())?;
        let source_note = source_note_path(vee_dir, target);
        let disk = if fsutil::exists(&source_note).await? {
            let text = fsutil::read(&source_note).await?;
            PathBuf::from(String::from_utf8_lossy(&text).into_owned())
        } else {
            disk_path(vee_dir, target)
        };
        fsutil::copy_atomic(&disk, out).await
    }

    /// Like the qemu driver, it asks for the VEE's own disks when none of them is in the
    /// spec's directory (this host does not see the source's storage): the source copies the
    /// files into that directory, named in a `sim://` address.
    async fn prepare_incoming(&self, spec: &DeploySpec) -> Result<Incoming, DriverError> {
        let delay = self.latency.for_op("prepare_incoming");
        let _guard = self
            .enter("prepare_incoming", &spec.vee, Some(&spec.name), delay)
            .await?;
        self.refuse_existing(&spec.vee)?;
        let owned = owned_disk_targets(spec);
        let mut missing = Vec::new();
        for target in &owned {
            if !fsutil::exists(&disk_path(&spec.vee_dir, target)).await? {
                missing.push(target.clone());
            }
        }
        let disks = if !owned.is_empty() && missing.len() == owned.len() {
            Some(DiskCopy {
                address: format!("{URI_SCHEME}{}", spec.vee_dir.display()),
                targets: owned,
            })
        } else {
            // The boot identity is not known yet: the source writes it when it sends the VEE.
            self.check_disks_present(spec).await?;
            None
        };
        self.commit(SimInstance::new(
            spec,
            InstanceState::Incoming,
            None,
            now_ms(),
        ))
        .await?;
        let uri = format!("{URI_SCHEME}{}/{}", self.state_dir.display(), spec.vee);
        Ok(Incoming { uri, disks })
    }

    /// With `copy_disks_to`, the VEE's own disk files are copied into the destination's
    /// directory and the VEE's directory here is removed; the transfer time is the same.
    async fn migrate_out(
        &self,
        vee: &VeeId,
        uri: &str,
        copy_disks_to: Option<&DiskCopy>,
    ) -> Result<MigrationStats, DriverError> {
        let transfer = self.latency.for_op("migrate_out");
        let _guard = self.enter("migrate_out", vee, None, transfer).await?;
        if !uri.starts_with(URI_SCHEME) {
            return Err(DriverError::Invalid {
                what: "migration uri",
                reason: format!("{uri:?} does not start with {URI_SCHEME}"),
            });
        }
        let instance = self.existing(vee)?;
        instance.expect_state(
            "migrate_out",
            &[InstanceState::Running, InstanceState::Paused],
        )?;
        // The target is another driver, possibly on another machine: the sim cannot reach it,
        // so it trusts the VEEM to have prepared it, and hands over the boot identity through
        // the shared storage, before the instance here ends.
        let boot_id = instance.known_boot_id("migrate_out")?;
        let handover_dir = match copy_disks_to {
            Some(copy) => {
                let dir = copy_destination(copy, &instance.spec)?;
                for target in &copy.targets {
                    fsutil::copy_atomic(
                        &disk_path(&instance.spec.vee_dir, target),
                        &disk_path(&dir, target),
                    )
                    .await?;
                }
                dir
            }
            None => instance.spec.vee_dir.clone(),
        };
        let boot_id_file = handover_dir.join(BOOT_ID_FILE);
        fsutil::write_atomic(&boot_id_file, boot_id.to_string().as_bytes()).await?;
        // A destination on this machine that sees neither the VEE's directory nor its disks
        // here (another site's, a VEE owning no disk) finds it beside the URI it answered.
        let beside_uri = uri_handover(uri);
        if beside_uri.parent().is_some_and(Path::is_dir) {
            fsutil::write_atomic(&beside_uri, boot_id.to_string().as_bytes()).await?;
        }
        self.forget(vee).await?;
        if copy_disks_to.is_some() {
            // Its disks live at the destination now; nothing of the VEE stays here.
            fsutil::remove_dir_if_present(&instance.spec.vee_dir).await?;
        }
        // The configured transfer time is the whole migration; the sim has no stop-and-copy
        // phase, so no downtime.
        Ok(MigrationStats {
            total_ms: u64::try_from(transfer.as_millis()).unwrap_or(u64::MAX),
            downtime_ms: 0,
        })
    }

    async fn complete_incoming(&self, vee: &VeeId, paused: bool) -> Result<(), DriverError> {
        let delay = self.latency.for_op("complete_incoming");
        let _guard = self.enter("complete_incoming", vee, None, delay).await?;
        let mut instance = self.existing(vee)?;
        instance.expect_state(
            "complete_incoming",
            &[
                InstanceState::Incoming,
                InstanceState::Running,
                InstanceState::Paused,
            ],
        )?;
        if instance.state != InstanceState::Incoming {
            return Ok(());
        }
        let in_vee_dir = instance.spec.vee_dir.join(BOOT_ID_FILE);
        let beside_uri = uri_handover(&format!("{URI_SCHEME}{}/{}", self.state_dir.display(), vee));
        let boot_id_file =
            if !fsutil::exists(&in_vee_dir).await? && fsutil::exists(&beside_uri).await? {
                beside_uri.clone()
            } else {
                in_vee_dir
            };
        instance.boot_id = Some(read_boot_id(&boot_id_file).await?);
        // A paused guest's clock does not run.
        instance.state = if paused {
            InstanceState::Paused
        } else {
            instance.start_clock(now_ms());
            InstanceState::Running
        };
        self.commit(instance).await?;
        // Only tidiness: the next migration writes the file again before it is read.
        for used in [&boot_id_file, &beside_uri] {
            if let Err(e) = fsutil::remove_if_present(used).await {
                tracing::warn!(error = %e, "sim driver could not remove a used boot id file");
            }
        }
        Ok(())
    }

    /// Simulated hosts build no LANs: a sim NIC is plugged into nothing.
    async fn purge(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        self.forget(vee).await?;
        // The journal's lines about the VEE go too: it is rewritten without them.
        let journal = Arc::clone(&self.journal).lock_owned().await;
        if !journal.mentions(vee) {
            return Ok(());
        }
        let live: Vec<SimInstance> = self.instances().values().cloned().collect();
        let mut journal = journal;
        tokio::task::spawn_blocking(move || journal.compact(live.iter()))
            .await
            .map_err(|e| DriverError::Failed {
                op: "purge",
                reason: e.to_string(),
            })?
    }

    async fn traces(&self) -> Result<Vec<VeeId>, DriverError> {
        // Every instance has a line in the journal, so the journal's VEEs are all there is.
        let mut vees = self.journal.lock().await.mentioned();
        vees.sort();
        Ok(vees)
    }

    async fn remove_lan(&self, _lan: &LanPlan) -> Result<(), DriverError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cpu: u32) -> DeploySpec {
        DeploySpec {
            vee: VeeId::from_seq(1),
            name: "web".into(),
            cpu,
            cpu_max: cpu * 2,
            memory_mb: 512,
            memory_max_mb: 1024,
            disks: vec![],
            nics: vec![],
            hypervisor: None,
            raw: String::new(),
            ovf_env: None,
            boot: None,
            vee_dir: "/shared/vee-00000001".into(),
            stale_own_dir: false,
        }
    }

    #[test]
    fn cpu_time_grows_only_while_running_and_scales_with_vcpus() {
        let mut instance = SimInstance::new(&spec(2), InstanceState::Running, Some(9), 1_000);
        assert_eq!(instance.cpu_time_at(1_000), 0);
        // 2 vCPUs at 25% load for 4 s: 2 s of CPU.
        assert_eq!(instance.cpu_time_at(5_000), 2_000);
        instance.stop_clock(5_000);
        assert_eq!(instance.cpu_time_at(60_000), 2_000);
        instance.cpus = 4;
        instance.start_clock(60_000);
        assert_eq!(instance.cpu_time_at(61_000), 3_000);
        // A clock that went backwards does not make time negative.
        assert_eq!(instance.cpu_time_at(0), 2_000);
    }

    #[test]
    fn device_figures_follow_cpu_time_for_each_disk_and_nic() {
        let mut spec = spec(2);
        spec.disks = ["vda", "vdb"]
            .map(|target| veem_api::agent::DiskPlan {
                target: target.into(),
                source: None,
                source_format: None,
                size_gb: Some(1),
                clone: false,
                kind: veem_model::DiskKind::Disk,
            })
            .into();
        spec.nics = vec![veem_api::agent::NicPlan {
            target: "eth0".into(),
            network: "lan".into(),
            mac: None,
            lan: None,
        }];
        let mut instance = SimInstance::new(&spec, InstanceState::Running, Some(9), 1_000);
        let fresh = instance.status_at(1_000);
        assert!(fresh
            .disks
            .iter()
            .all(|d| d.read_bytes == 0 && d.write_ops == 0));
        // 2 vCPUs at 25% for 256 s: 128 s of CPU.
        let status = instance.status_at(257_000);
        assert_eq!(status.cpu_time_ms, 128_000);
        let targets: Vec<&str> = status.disks.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(targets, ["vda", "vdb"]);
        assert_eq!(
            status.disks[0],
            DiskCounters {
                target: "vda".into(),
                read_bytes: 128_000 * 4096,
                write_bytes: 32_000 * 4096,
                read_ops: 128_000,
                write_ops: 32_000,
                flush_ops: 2_000,
            }
        );
        assert_eq!(
            status.nics,
            [NicCounters {
                target: "eth0".into(),
                rx_bytes: 64_000 * 1500,
                tx_bytes: 32_000 * 400,
                rx_packets: 64_000,
                tx_packets: 32_000,
            }]
        );
        // A paused guest does no I/O.
        instance.stop_clock(257_000);
        assert_eq!(instance.status_at(900_000).disks, status.disks);
    }

    #[test]
    fn an_incoming_instance_uses_no_cpu() {
        let instance = SimInstance::new(&spec(2), InstanceState::Incoming, None, 1_000);
        assert_eq!(instance.cpu_time_at(100_000), 0);
    }

    #[tokio::test]
    async fn vee_locks_are_dropped_when_no_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let driver = SimDriver::new(SimConfig::default(), dir.path().into()).unwrap();
        let vee = VeeId::from_seq(3);
        let first = driver.lock_vee(&vee).await;
        let second = {
            let driver = &driver;
            let vee = vee.clone();
            async move { driver.lock_vee(&vee).await }
        };
        tokio::pin!(second);
        // The second caller waits behind the first and keeps the entry alive.
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut second)
            .await
            .is_err());
        drop(first);
        let second = second.await;
        assert_eq!(driver.vee_locks.len(), 1);
        drop(second);
        assert_eq!(driver.vee_locks.len(), 0);
    }
}
