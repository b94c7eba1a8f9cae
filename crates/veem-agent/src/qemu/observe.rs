//! What a status of an instance carries: QEMU's run state, the machine's shape, and the
//! figures of the process, its disks, its NICs and its guest's agent.
//!
//! Kept apart from the instances because a status is read by the health loop for every
//! instance at once, and a failure of one figure must not fail the status: the VEEM's view of
//! the instance matters more than one round of figures.
//!
//! - CPU time is the QEMU process's user + system time, TCG's translation work included.
//! - Disk figures are QEMU's block statistics of each disk, taken with the run state (one
//!   `query-blockstats` per instance, sent alongside `query-status`); the context disk is not
//!   reported. NIC figures are the host kernel's counters of each NIC's tap, seen from the
//!   guest ([`read_tap_counters`]).
//! - The guest agent's KPI lines are kept until a status takes them
//!   ([`InstanceStatus::agent_reports`]).

use std::path::Path;

use veem_api::agent::{DiskCounters, InstanceState, InstanceStatus, NicCounters};

use super::counters::{self, read_tap_counters};
use super::instances::{qmp_failed, Instance, QemuDriver};
use super::process;
use super::qmp;
use crate::{hostnet, DriverError};

impl QemuDriver {
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
    pub(super) async fn observe(
        &self,
        instance: &Instance,
    ) -> Result<Option<InstanceStatus>, DriverError> {
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
        match state {
            Ok(state) => Ok(Some(self.status_of(instance, state, disks))),
            // Asked while an operation ended it (a shutdown's `quit`, a destroy): the process
            // is on its way out, and its status is that of one gone, not a failure of the
            // host (which would have the VEEM take the whole host for down).
            Err(_) if ended_soon(instance).await => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether the instance's process ends within a moment: QEMU closes its QMP socket first and
/// exits just after.
async fn ended_soon(instance: &Instance) -> bool {
    for _ in 0..ENDING_CHECKS {
        if !instance.is_alive() {
            return true;
        }
        tokio::time::sleep(ENDING_CHECK_EVERY).await;
    }
    !instance.is_alive()
}

/// How long [`ended_soon`] waits for a process whose QMP went away: 1 s in all.
const ENDING_CHECKS: u32 = 20;
const ENDING_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
