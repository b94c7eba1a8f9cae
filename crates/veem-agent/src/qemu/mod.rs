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
//! passes anything from a descriptor to QEMU but the typed settings of its [`DeploySpec`]
//! (`spec.raw` is never passed to QEMU: it would let a descriptor run anything as the agent;
//! it is only logged).
//!
//! Where each concern lives:
//! - `instances`: the [`QemuDriver`] and its instances: adopting the processes a former
//!   agent left, finding and querying an instance, its record, ending it.
//! - `launch`: a spec checked and started as a QEMU process, its NICs on their LANs.
//! - `state_files`: the files of each VEE in the state directory, and their removal.
//! - `observe`: what a status carries (run state, CPU time, disk and NIC figures, the guest
//!   agent's reports).
//! - `migration`: live migration, and suspend and restore through a file.
//! - `hotplug`: vCPU hotplug and memory resize with the balloon.
//! - `machine` (QEMU's command line and the machine's shape), `disks`, `process`, `counters`,
//!   `guest_agent`, `config`, and [`qmp`], the protocol itself.
//!
//! The [`Driver`] impl below is the thin layer over them: it takes the VEE's lock (operations
//! on one VEE run one at a time) and calls the verb of the concern.
//!
//! Every VEE has a virtio-serial port named [`AGENT_PORT_NAME`] for the guest's own agent,
//! served on the host as the socket `<vee>.agent`. A task per instance reads the guest's KPI
//! lines from it ([`parse_kpi_line`]) and keeps them until a status takes them; it reconnects
//! whenever the socket closes while QEMU lives, and stops when the instance ends. A guest
//! without an agent sends nothing.

mod config;
mod counters;
mod disks;
mod guest_agent;
mod hotplug;
mod instances;
mod launch;
mod machine;
mod migration;
mod observe;
mod process;
pub mod qmp;
mod state_files;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use veem_api::agent::{DeploySpec, DiskCopy, InstanceState, InstanceStatus, LanPlan};
use veem_model::VeeId;

pub use config::{detect_accel, resolve_accel, Accel, AccelChoice, QemuConfig};
pub use counters::read_tap_counters;
pub use disks::CONTEXT_LABEL;
pub use guest_agent::{
    parse_kpi_line, AGENT_PORT_NAME, KPI_LINE_PREFIX, MAX_LINE_BYTES, MAX_PENDING_REPORTS,
};
pub use instances::QemuDriver;
pub use machine::CONTEXT_TARGET;
pub use machine::{shape_path, MachineShape, PluggedCpu};

use crate::{Driver, DriverError, Incoming, MigrationStats};
use instances::{qmp_failed, Instance, MIB};
use launch::check_spec;
use migration::discard_unfinished_copy;
use state_files::{remove_files_of, vees_with_files, write_json};

#[async_trait::async_trait]
impl Driver for QemuDriver {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    async fn deploy(&self, spec: &DeploySpec) -> Result<(), DriverError> {
        let _guard = self.lock_vee(&spec.vee).await;
        self.refuse_existing(&spec.vee).await?;
        check_spec(spec)?;
        // A copy a crash left unfinished is not the VEE's disks.
        discard_unfinished_copy(spec).await?;
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
        self.save_to_file(vee, memory_file).await
    }

    async fn restore(&self, spec: &DeploySpec, memory_file: &Path) -> Result<(), DriverError> {
        let _guard = self.lock_vee(&spec.vee).await;
        self.restore_from_file(spec, memory_file).await
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
        self.forget(&instance).await?;
        // An incoming migration given up: the disks it was copying are not the VEE's.
        let spec = instance.record().spec.clone();
        discard_unfinished_copy(&spec).await
    }

    async fn resize(&self, vee: &VeeId, cpu: u32, memory_mb: u64) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        self.resize_live(vee, cpu, memory_mb).await
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

    async fn prepare_incoming(&self, spec: &DeploySpec) -> Result<Incoming, DriverError> {
        let _guard = self.lock_vee(&spec.vee).await;
        self.receive_migration(spec).await
    }

    async fn migrate_out(
        &self,
        vee: &VeeId,
        uri: &str,
        copy_disks_to: Option<&DiskCopy>,
    ) -> Result<MigrationStats, DriverError> {
        let _guard = self.lock_vee(vee).await;
        self.send_migration(vee, uri, copy_disks_to).await
    }

    async fn complete_incoming(&self, vee: &VeeId, paused: bool) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        self.complete_migration(vee, paused).await
    }

    async fn purge(&self, vee: &VeeId) -> Result<(), DriverError> {
        let _guard = self.lock_vee(vee).await;
        if let Some(instance) = self.instance(vee) {
            self.end_process(&instance).await;
            self.forget(&instance).await?;
        }
        self.forget_migration(vee);
        // Every `<vee>.<anything>` of the state directory: the log that outlives the process,
        // and whatever a killed agent left.
        let state_dir = self.state_dir().to_owned();
        let vee = vee.clone();
        tokio::task::spawn_blocking(move || remove_files_of(&state_dir, &vee))
            .await
            .map_err(|e| DriverError::Failed {
                op: "purge",
                reason: e.to_string(),
            })?
    }

    async fn traces(&self) -> Result<Vec<VeeId>, DriverError> {
        let state_dir = self.state_dir().to_owned();
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

    async fn refresh_lan(&self, lan: &LanPlan) -> Result<(), DriverError> {
        if self.hostnet.has_lan(lan).await? {
            self.hostnet
                .ensure_lan(lan, self.config.vxlan.as_ref())
                .await?;
        }
        Ok(())
    }
}
