//! Launching: what is checked and done to start one VEE's QEMU, up to a connected instance
//! in the driver's table.
//!
//! Kept apart from the instances' table because a launch is the one place that turns a
//! [`DeploySpec`] into a process: the spec is checked ([`check_spec`]), the record written, the
//! LANs built, the command line made, the process started and its NICs plugged; a launch that
//! fails leaves nothing running or recorded. A deploy, a restore and an incoming migration all
//! launch here.
//!
//! Every NIC is a virtio NIC on a tap device QEMU makes (named per launch, kept in the
//! instance's record); QEMU removes it when it ends. A NIC on a virtual LAN has the LAN built
//! (or checked) on this host before QEMU starts and its tap plugged into the LAN's bridge right
//! after ([`crate::hostnet`]); a NIC on no LAN is only brought up. A restore and an incoming
//! migration launch the same way, so the new taps join the same bridges. On a LAN joined by
//! VXLAN the guest is told the LAN's smaller MTU (`host_mtu`).

use std::sync::Arc;

use veem_api::agent::DeploySpec;

use super::instances::{Instance, InstanceRecord, QemuDriver};
use super::machine::{self, Drive, Launch, MachineShape, NicTap};
use super::process;
use super::state_files::{remove_instance_files, write_json};
use crate::driver::{check_boot_files, check_disk_target};
use crate::hostnet::{self, LanLink};
use crate::{fsutil, DriverError};

/// The longest path a Unix socket can have (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl QemuDriver {
    /// Writes the record, starts QEMU and connects to it. On failure nothing of the instance
    /// is left running or recorded.
    pub(super) async fn launch(
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
    pub(super) async fn launch_and<F, Fut>(
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
}

/// Refuses a spec QEMU cannot be started from; `spec.raw` is only logged.
pub(super) fn check_spec(spec: &DeploySpec) -> Result<(), DriverError> {
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
