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
//!
//! Each verb here runs with the VEE's lock held by its caller (the `Driver` impl).

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use veem_api::agent::{DeploySpec, InstanceState};
use veem_model::VeeId;

use super::disks;
use super::instances::{qmp_failed, Instance, QemuDriver, MIB};
use super::launch::check_spec;
use super::machine::{shape_path, MachineShape};
use super::process;
use super::qmp;
use crate::{fsutil, DriverError, MigrationStats};

/// How often a migration's progress is looked at: often, since it is what a suspend or a
/// live migration waits for.
const MIGRATION_POLL: Duration = Duration::from_millis(5);

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

    /// Starts `spec` waiting for a live migration; answers the URI the source sends to.
    pub(super) async fn receive_migration(&self, spec: &DeploySpec) -> Result<String, DriverError> {
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

    /// Sends the running VEE to `uri` and, once it arrived, ends its process here.
    pub(super) async fn send_migration(
        &self,
        vee: &VeeId,
        uri: &str,
    ) -> Result<MigrationStats, DriverError> {
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

    /// Runs the guest a live migration brought here, once all of it has arrived.
    pub(super) async fn complete_migration(&self, vee: &VeeId) -> Result<(), DriverError> {
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
    fn memory_files_with_commas_are_refused() {
        assert_eq!(
            file_uri(Path::new("/srv/vees/vee-1/memory")).unwrap(),
            "file:/srv/vees/vee-1/memory"
        );
        assert!(file_uri(Path::new("/srv/a,offset=9")).is_err());
    }
}
