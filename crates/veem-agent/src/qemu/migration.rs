//! Migration: a VEE's running machine moved to another QEMU, live over the network or
//! through a file.
//!
//! - Suspend stops the guest and migrates it to a file (QEMU ≥ 8.2), restore starts the same
//!   machine with `-incoming defer` and reads it back. The machine's shape (boot vCPUs, plugged
//!   vCPUs, memory) travels in `<vee_dir>/qemu-machine.json`, since a migration needs the same
//!   devices on both ends.
//! - A live migration launches the destination with `-incoming tcp:` ([`QemuDriver::receive_migration`]),
//!   sends from the source ([`QemuDriver::send_migration`]) and resumes the guest at the
//!   destination ([`QemuDriver::complete_migration`]). Its end needs nothing of the network,
//!   since QEMU announces the guest's MAC addresses from the destination when it resumes there.
//! - Without shared storage (the destination does not find the VEE's own disks at the spec's
//!   paths), the disks are copied while the guest runs, as libvirt does it: the destination
//!   creates them afresh (as a deploy would, so each has the same virtual size), starts with
//!   `-incoming` and exports them, writable, over QEMU's NBD server; the source mirrors each
//!   to its export (`drive-mirror`, `sync: full`, writes blocking once in sync), waits until
//!   every mirror is ready, migrates the memory, and, once that completed (the guest stopped
//!   there for good), cancels the ready mirrors, which leaves each export an exact copy; the
//!   destination stops its NBD server before the guest runs there. The source then removes
//!   the VEE's directory: it keeps nothing of it. An unfinished copy is marked
//!   ([`INCOMING_COPY_MARKER`]) so that it is never taken for the VEE's disks.
//!
//! Each verb here runs with the VEE's lock held by its caller (the `Driver` impl).

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::TryRecvError;
use veem_api::agent::{DeploySpec, DiskCopy, InstanceState};
use veem_layout::{context_image_path, disk_path};
use veem_model::VeeId;

use super::disks;
use super::instances::{qmp_failed, Instance, QemuDriver, MIB};
use super::launch::check_spec;
use super::machine::{drive_id, shape_path, MachineShape};
use super::process;
use super::qmp;
use crate::driver::{check_copy_targets, owned_disk_targets};
use crate::{check_disk_target, fsutil, DriverError, Incoming, MigrationStats};

/// How often a migration's progress is looked at: often, since it is what a suspend or a
/// live migration waits for.
const MIGRATION_POLL: Duration = Duration::from_millis(5);

/// In a VEE's directory while the disks there are a copy being received: such disks are
/// never the VEE's until the copy completed, and are removed when it does not.
pub const INCOMING_COPY_MARKER: &str = "incoming-copy";

/// How the block jobs of a disk copy are waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobsUntil {
    /// Every mirror holds what its disk holds, and keeps it so.
    Ready,
    /// Every mirror ended cleanly, its target a complete copy.
    Ended,
}

impl QemuDriver {
    /// The last live migration `migrate_out` sent from this driver for the VEE.
    pub fn last_migration(&self, vee: &VeeId) -> Option<MigrationStats> {
        self.migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vee)
            .copied()
    }

    /// Forgets the figures of the VEE's last live migration: it is purged.
    pub(super) fn forget_migration(&self, vee: &VeeId) {
        self.migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(vee);
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

    /// Starts an instance from `spec` that waits for a migration at `incoming`; with
    /// `copy_into` (the disks to receive, an NBD port), it creates those disks afresh and
    /// exports them over NBD on that port, for the source to copy them into.
    async fn launch_incoming(
        &self,
        spec: &DeploySpec,
        incoming: &str,
        copy_into: Option<(&[String], u16)>,
    ) -> Result<Arc<Instance>, DriverError> {
        let shape = self.shape_for_resume(spec).await?;
        let Some((targets, nbd_port)) = copy_into else {
            let drives = disks::existing(spec).await?;
            return self.launch(spec, shape, &drives, Some(incoming)).await;
        };
        let drives = disks::prepare(&self.config.qemu_img, spec).await?;
        self.launch_and(
            spec,
            shape,
            &drives,
            Some(incoming),
            |instance| async move { self.export_disks(&instance, targets, nbd_port).await },
        )
        .await
    }

    /// Whether the disks `spec` owns must be copied here: none of them is at its path (this
    /// host does not see the source's storage). All of them there is shared storage; some of
    /// them is refused, as neither. A copy left unfinished is removed first.
    async fn disks_to_receive(
        &self,
        spec: &DeploySpec,
    ) -> Result<Option<Vec<String>>, DriverError> {
        discard_unfinished_copy(spec).await?;
        let owned = owned_disk_targets(spec);
        let mut present = Vec::new();
        for target in &owned {
            if fsutil::exists(&disk_path(&spec.vee_dir, target)).await? {
                present.push(target.as_str());
            }
        }
        if present.len() == owned.len() {
            return Ok(None);
        }
        if !present.is_empty() {
            return Err(DriverError::Failed {
                op: "prepare_incoming",
                reason: format!(
                    "only some of the disks of {} are in {} ({}): neither shared storage nor a \
                     host without them",
                    spec.vee,
                    spec.vee_dir.display(),
                    present.join(", ")
                ),
            });
        }
        Ok(Some(owned))
    }

    /// Starts the NBD server of an incoming instance on `port` and exports `targets` there,
    /// writable, each under its own name.
    async fn export_disks(
        &self,
        instance: &Instance,
        targets: &[String],
        port: u16,
    ) -> Result<(), DriverError> {
        let op = "prepare_incoming";
        let qmp = self.connect(instance).await?;
        // `stop` while incoming keeps the guest paused once the memory has arrived (QEMU would
        // run it at once otherwise): it must not run here before the source has finished the
        // copy and this end has closed its exports, which `complete_incoming` does before `cont`.
        qmp.execute(&qmp::Stop)
            .await
            .map_err(|e| qmp_failed(op, e))?;
        qmp.execute(&qmp::NbdServerStart {
            addr: qmp::SocketAddressLegacy::Inet {
                host: self.config.migration_listen_address.clone(),
                port: port.to_string(),
            },
        })
        .await
        .map_err(|e| qmp_failed(op, e))?;
        let blocks = qmp
            .execute(&qmp::QueryBlock)
            .await
            .map_err(|e| qmp_failed(op, e))?;
        for target in targets {
            let device = drive_id(target);
            let node_name = blocks
                .iter()
                .find(|block| block.device == device)
                .and_then(|block| block.inserted.as_ref())
                .map(|inserted| inserted.node_name.clone())
                .ok_or_else(|| DriverError::Failed {
                    op,
                    reason: format!("qemu has no medium in {device}"),
                })?;
            qmp.execute(&qmp::BlockExportAdd {
                kind: "nbd",
                id: format!("copy-{target}"),
                node_name,
                name: target.clone(),
                writable: true,
            })
            .await
            .map_err(|e| qmp_failed(op, e))?;
        }
        Ok(())
    }

    /// Stops the guest, saves its machine to `memory_file` and ends its process.
    pub(super) async fn save_to_file(
        &self,
        vee: &VeeId,
        memory_file: &Path,
    ) -> Result<(), DriverError> {
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

    /// Starts the machine `save_to_file` saved and runs it from where it stopped.
    pub(super) async fn restore_from_file(
        &self,
        spec: &DeploySpec,
        memory_file: &Path,
    ) -> Result<(), DriverError> {
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

    /// Starts `spec` waiting for a live migration; answers the URI the source sends to, and,
    /// when this host does not see the VEE's disks, where the source copies them.
    pub(super) async fn receive_migration(
        &self,
        spec: &DeploySpec,
    ) -> Result<Incoming, DriverError> {
        self.refuse_existing(&spec.vee).await?;
        check_spec(spec)?;
        let copy = self.disks_to_receive(spec).await?;
        if copy.is_some() {
            fsutil::write_atomic(&spec.vee_dir.join(INCOMING_COPY_MARKER), b"").await?;
        }
        let received = self.launch_receiver(spec, copy.as_deref()).await;
        if received.is_err() && copy.is_some() {
            discard_unfinished_copy(spec).await?;
        }
        received
    }

    /// [`Self::receive_migration`] once the copy is decided: `copy` names the disks to
    /// receive.
    async fn launch_receiver(
        &self,
        spec: &DeploySpec,
        copy: Option<&[String]>,
    ) -> Result<Incoming, DriverError> {
        let address = &self.config.migration_listen_address;
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.clone()
        };
        // A free port can be taken by someone else before QEMU binds it: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            let uri = format!("tcp:{host}:{}", process::free_port(address)?);
            let nbd_port = match copy {
                Some(_) => Some(process::free_port(address)?),
                None => None,
            };
            let copy_into = copy.zip(nbd_port);
            match self.launch_incoming(spec, &uri, copy_into).await {
                Ok(_) => {
                    let disks = copy_into.map(|(targets, port)| DiskCopy {
                        address: format!("nbd://{host}:{port}"),
                        targets: targets.to_vec(),
                    });
                    return Ok(Incoming { uri, disks });
                }
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

    /// Sends the running VEE to `uri` (its disks to `copy_disks_to`, when the destination
    /// asked for them) and, once it arrived, ends its process here.
    pub(super) async fn send_migration(
        &self,
        vee: &VeeId,
        uri: &str,
        copy_disks_to: Option<&DiskCopy>,
    ) -> Result<MigrationStats, DriverError> {
        check_migration_uri(uri)?;
        if let Some(copy) = copy_disks_to {
            check_disk_copy(copy)?;
        }
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        self.expect_state(&instance, "migrate_out", &running)
            .await?;
        if let Some(copy) = copy_disks_to {
            check_copy_matches(&instance, copy)?;
        }
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
        let started = Instant::now();
        let jobs = match copy_disks_to {
            Some(copy) => self.mirror_disks(&qmp, copy).await?,
            None => Vec::new(),
        };
        let migrated = match qmp
            .execute(&qmp::Migrate {
                uri: uri.to_owned(),
            })
            .await
        {
            Ok(_) => self.wait_migration(&instance, "migrate_out").await,
            Err(e) => Err(qmp_failed("migrate_out", e)),
        };
        // On failure QEMU keeps the guest here, running as it was; the copy is dropped.
        let info = match migrated {
            Ok(info) => info,
            Err(e) => {
                cancel_jobs(&qmp, &jobs).await;
                return Err(e);
            }
        };
        let stats = if jobs.is_empty() {
            MigrationStats {
                total_ms: info.total_time.unwrap_or(0),
                downtime_ms: info.downtime.unwrap_or(0),
            }
        } else {
            // The guest stays stopped here while the mirrors finish: that is downtime too.
            let finishing = Instant::now();
            if let Err(e) = self.finish_mirrors(&qmp, &jobs).await {
                // The destination's disks are not a whole copy: the guest runs on here.
                cancel_jobs(&qmp, &jobs).await;
                if let Err(cont) = qmp.execute(&qmp::Cont).await {
                    tracing::warn!(%vee, error = %cont, "could not resume after a failed disk copy");
                }
                return Err(e);
            }
            MigrationStats {
                total_ms: millis(started.elapsed()),
                downtime_ms: info
                    .downtime
                    .unwrap_or(0)
                    .saturating_add(millis(finishing.elapsed())),
            }
        };
        tracing::info!(%vee, uri, total_ms = stats.total_ms, downtime_ms = stats.downtime_ms, "vee migrated out");
        self.migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vee.clone(), stats);
        self.end_process(&instance).await;
        self.forget(&instance).await?;
        if copy_disks_to.is_some() {
            // Its disks live at the destination now; nothing of the VEE stays here.
            let vee_dir = instance.record().spec.vee_dir.clone();
            fsutil::remove_dir_if_present(&vee_dir).await?;
        }
        Ok(stats)
    }

    /// Ends the ready mirrors once the memory has moved (the guest stopped for good here):
    /// what they still hold goes to the destination, and each copy is complete when its job
    /// ended cleanly.
    async fn finish_mirrors(
        &self,
        qmp: &qmp::QmpClient,
        jobs: &[String],
    ) -> Result<(), DriverError> {
        let mut events = qmp.events();
        for job in jobs {
            qmp.execute(&qmp::BlockJobCancel {
                device: job.clone(),
                force: false,
            })
            .await
            .map_err(|e| qmp_failed("migrate_out", e))?;
        }
        self.wait_jobs(qmp, &mut events, jobs, JobsUntil::Ended)
            .await
    }

    /// Starts mirroring each disk of `copy` to its export and waits until every mirror is
    /// ready; answers the jobs' ids. On failure no job is left running.
    async fn mirror_disks(
        &self,
        qmp: &qmp::QmpClient,
        copy: &DiskCopy,
    ) -> Result<Vec<String>, DriverError> {
        let mut events = qmp.events();
        let mut jobs = Vec::with_capacity(copy.targets.len());
        for target in &copy.targets {
            let job = format!("copy-{target}");
            let started = qmp
                .execute(&qmp::DriveMirror {
                    job_id: job.clone(),
                    device: drive_id(target),
                    target: format!("{}/{target}", copy.address),
                    format: "raw",
                    mode: "existing",
                    sync: "full",
                    copy_mode: "write-blocking",
                })
                .await;
            if let Err(e) = started {
                cancel_jobs(qmp, &jobs).await;
                return Err(qmp_failed("migrate_out", e));
            }
            jobs.push(job);
        }
        if let Err(e) = self
            .wait_jobs(qmp, &mut events, &jobs, JobsUntil::Ready)
            .await
        {
            cancel_jobs(qmp, &jobs).await;
            return Err(e);
        }
        Ok(jobs)
    }

    /// Waits until every job of `jobs` is ready or has ended cleanly. A job that fails, or
    /// ends before it was ready, fails the wait with QEMU's reason.
    async fn wait_jobs(
        &self,
        qmp: &qmp::QmpClient,
        events: &mut tokio::sync::broadcast::Receiver<qmp::QmpEvent>,
        jobs: &[String],
        until: JobsUntil,
    ) -> Result<(), DriverError> {
        let op = "migrate_out";
        let deadline = Instant::now() + Duration::from_millis(self.config.migration_timeout_ms);
        let mut ended: Vec<&str> = Vec::new();
        loop {
            let listed = qmp
                .execute(&qmp::QueryBlockJobs)
                .await
                .map_err(|e| qmp_failed(op, e))?;
            // QEMU sends a job's last event before it answers a later command: what ended
            // before this answer has been heard.
            loop {
                let event = match events.try_recv() {
                    Ok(event) => event,
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                };
                let Some(job) = event
                    .data
                    .get("device")
                    .and_then(|d| d.as_str())
                    .and_then(|d| jobs.iter().find(|job| *job == d))
                else {
                    continue;
                };
                let error = event.data.get("error").and_then(|e| e.as_str());
                match (event.event.as_str(), error) {
                    ("BLOCK_JOB_COMPLETED", None) if until == JobsUntil::Ended => {
                        ended.push(job);
                    }
                    ("BLOCK_JOB_COMPLETED", Some(error)) => {
                        return Err(DriverError::Failed {
                            op,
                            reason: format!("the copy {job} failed: {error}"),
                        });
                    }
                    ("BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED", _) => {
                        return Err(DriverError::Failed {
                            op,
                            reason: format!("the copy {job} ended before it was complete"),
                        });
                    }
                    _ => {}
                }
            }
            let done = match until {
                JobsUntil::Ready => jobs
                    .iter()
                    .all(|job| listed.iter().any(|l| &l.device == job && l.ready)),
                JobsUntil::Ended => jobs.iter().all(|job| ended.contains(&job.as_str())),
            };
            if done {
                return Ok(());
            }
            if let Some(gone) = jobs.iter().find(|job| {
                !ended.contains(&job.as_str()) && !listed.iter().any(|l| &l.device == *job)
            }) {
                return Err(DriverError::Failed {
                    op,
                    reason: format!("the copy {gone} ended without a word from qemu"),
                });
            }
            if Instant::now() >= deadline {
                let progress: Vec<String> = listed
                    .iter()
                    .map(|l| format!("{} {}/{} bytes", l.device, l.offset, l.len))
                    .collect();
                return Err(DriverError::Failed {
                    op,
                    reason: format!(
                        "the disk copy did not finish within {} ms ({})",
                        self.config.migration_timeout_ms,
                        progress.join(", ")
                    ),
                });
            }
            tokio::time::sleep(MIGRATION_POLL).await;
        }
    }

    /// Runs the guest a live migration brought here, once all of it has arrived; `paused`
    /// leaves it paused (stopped again at once if QEMU started it by itself).
    pub(super) async fn complete_migration(
        &self,
        vee: &VeeId,
        paused: bool,
    ) -> Result<(), DriverError> {
        let instance = self.existing(vee)?;
        let qmp = self.connect(&instance).await?;
        // A copy of the disks was received: the source completed it before it asked for this.
        // The NBD server goes before the guest runs, so nothing else can write to its disks.
        let marker = {
            let record = instance.record();
            record.spec.vee_dir.join(INCOMING_COPY_MARKER)
        };
        if fsutil::exists(&marker).await? {
            match qmp.execute(&qmp::NbdServerStop).await {
                Ok(_) => {}
                // Stopped by an earlier completion that ended before it removed the mark.
                Err(qmp::QmpError::Command { desc, .. }) if desc.contains("not running") => {}
                Err(e) => return Err(qmp_failed("complete_incoming", e)),
            }
            fsutil::remove_if_present(&marker).await?;
        }
        // The source reports completion a moment before this end has loaded the last state.
        let deadline = Instant::now() + Duration::from_millis(self.config.migration_timeout_ms);
        loop {
            match self.live_state(&instance).await? {
                InstanceState::Running if paused => {
                    qmp.execute(&qmp::Stop)
                        .await
                        .map_err(|e| qmp_failed("complete_incoming", e))?;
                    return Ok(());
                }
                InstanceState::Running => return Ok(()),
                InstanceState::Paused if paused => return Ok(()),
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

/// Whole milliseconds, saturated.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Removes the disks a copy left unfinished in the VEE's directory (with its context disk and
/// the marker); nothing when there was no copy.
pub(super) async fn discard_unfinished_copy(spec: &DeploySpec) -> Result<(), DriverError> {
    let marker = spec.vee_dir.join(INCOMING_COPY_MARKER);
    if !fsutil::exists(&marker).await? {
        return Ok(());
    }
    tracing::info!(vee = %spec.vee, dir = %spec.vee_dir.display(), "removing an unfinished disk copy");
    for target in owned_disk_targets(spec) {
        fsutil::remove_if_present(&disk_path(&spec.vee_dir, &target)).await?;
    }
    fsutil::remove_if_present(&context_image_path(&spec.vee_dir)).await?;
    fsutil::remove_if_present(&marker).await
}

/// Ends the jobs at once, whatever they copied: for a failure, which leaves the guest here.
async fn cancel_jobs(qmp: &qmp::QmpClient, jobs: &[String]) {
    for job in jobs {
        let cancel = qmp::BlockJobCancel {
            device: job.clone(),
            force: true,
        };
        if let Err(e) = qmp.execute(&cancel).await {
            tracing::warn!(job, error = %e, "could not cancel a disk copy");
        }
    }
}

/// A disk copy's target QEMU can reach: an NBD server, and disk targets.
fn check_disk_copy(copy: &DiskCopy) -> Result<(), DriverError> {
    let valid = copy
        .address
        .strip_prefix("nbd://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', ',', '?']));
    if !valid {
        return Err(DriverError::Invalid {
            what: "disk copy",
            reason: format!("{:?} is not nbd://host:port", copy.address),
        });
    }
    for target in &copy.targets {
        check_disk_target(target)?;
    }
    Ok(())
}

/// The destination asks for exactly the disks this instance owns, and starts the same
/// machine: a copy must leave no disk behind and write to no disk used in place.
fn check_copy_matches(instance: &Instance, copy: &DiskCopy) -> Result<(), DriverError> {
    let record = instance.record();
    check_copy_targets(&record.spec, copy)?;
    if !record.shape.plugged_cpus.is_empty() {
        // The destination starts the spec's machine: its vCPUs all at boot, not plugged.
        return Err(DriverError::Failed {
            op: "migrate_out",
            reason: format!(
                "{} has vCPUs plugged while it runs; it moves without shared storage only \
                 after a reboot",
                instance.vee
            ),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_uris_are_migration_targets() {
        assert!(check_migration_uri("tcp:127.0.0.1:4444").is_ok());
        assert!(check_migration_uri("unix:/run/m.sock").is_ok());
        assert!(check_migration_uri("file:/tmp/m").is_err());
        assert!(check_migration_uri("exec:rm -rf /").is_err());
    }

    #[test]
    fn a_disk_copy_goes_to_an_nbd_server_and_names_disks() {
        let copy = |nbd: &str, target: &str| DiskCopy {
            address: nbd.into(),
            targets: vec![target.into()],
        };
        assert!(check_disk_copy(&copy("nbd://127.0.0.1:10809", "vda")).is_ok());
        assert!(check_disk_copy(&copy("nbd://[::1]:10809", "vdb")).is_ok());
        assert!(check_disk_copy(&copy("tcp:127.0.0.1:10809", "vda")).is_err());
        assert!(check_disk_copy(&copy("nbd://", "vda")).is_err());
        assert!(check_disk_copy(&copy("nbd://h:1/x", "vda")).is_err());
        assert!(check_disk_copy(&copy("nbd://h:1", "../etc")).is_err());
    }

    #[test]
    fn memory_files_with_commas_are_refused() {
        assert_eq!(
            file_uri(Path::new("/srv/vees/vee-1/memory")).unwrap(),
            "file:/srv/vees/vee-1/memory"
        );
        assert!(file_uri(Path::new("/srv/a,offset=9")).is_err());
    }
}
