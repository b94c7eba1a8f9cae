//! Control: UpdateState and its actions, PATCH, live migration, purge and disk export.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;
use veem_api::agent::{AgentRequest, AgentResponse};
use veem_api::{Order, PatchApplied};
use veem_model::{
    apply, ControlAction, DiskKind, HostId, Phase, Transition, VeeId, VeeRecord, VeemState,
    VmiState,
};
use veem_placement::PlacementError;
use veem_store::Change;

use super::records::Watched;
use super::{agent_result, now_ms, placement_error, remove_file_if_present, BatchOutcome, Veem};
use crate::auth::Caller;
use crate::error::CoreError;

impl Veem {
    /// UpdateState: applies `action` to each VEE, in order (`list`) or concurrently (`set`),
    /// and returns when each reached its target state, failed, or `timeout` ran out.
    pub async fn update_state(
        &self,
        caller: &Caller,
        order: Order,
        ids: &[VeeId],
        action: ControlAction,
        timeout: Duration,
    ) -> BatchOutcome {
        let deadline = Instant::now() + timeout;
        let results: Vec<(VeeId, Result<(), CoreError>)> = match order {
            Order::List => {
                let mut results = Vec::with_capacity(ids.len());
                for id in ids {
                    let r = self.control(caller, id, action, deadline).await;
                    results.push((id.clone(), r));
                }
                results
            }
            Order::Set => {
                let calls = ids.iter().map(|id| {
                    let veem = self.clone();
                    let caller = caller.clone();
                    let id = id.clone();
                    async move {
                        // A task of its own, so one VEE's action does not wait on another's.
                        let handle = tokio::spawn({
                            let id = id.clone();
                            async move { veem.control(&caller, &id, action, deadline).await }
                        });
                        let r = handle
                            .await
                            .unwrap_or_else(|e| Err(CoreError::internal("the action failed", e)));
                        (id, r)
                    }
                });
                futures::future::join_all(calls).await
            }
        };
        let mut outcome = BatchOutcome::default();
        for (id, r) in results {
            match r {
                Ok(()) => outcome.ok.push(id),
                Err(e) => outcome.failed.push((id, e)),
            }
        }
        outcome
    }

    /// One control action on one VEE.
    pub(super) async fn control(
        &self,
        caller: &Caller,
        id: &VeeId,
        action: ControlAction,
        deadline: Instant,
    ) -> Result<(), CoreError> {
        let seq = self.inner.records.lookup(caller, id)?.id.seq();
        let lock = self
            .inner
            .records
            .op_lock(seq)
            .ok_or_else(|| CoreError::NotFound(format!("no VEE {id}")))?;
        let guard = match tokio::time::timeout_at(deadline.into(), lock.lock_owned()).await {
            Ok(g) => g,
            Err(_) => {
                return Err(CoreError::Timeout(format!(
                    "VEE {id} was busy with another action until the timeout"
                )))
            }
        };
        // Read the state under the VEE's lock: nothing else changes it now.
        let record = self
            .inner
            .records
            .get(seq)
            .ok_or_else(|| CoreError::NotFound(format!("no VEE {id}")))?;
        if record.site.is_some() {
            let outcome = self.control_remote(seq, &record, action, deadline).await;
            drop(guard);
            return outcome;
        }
        let step = apply(record.state, action)?;
        match step.transition {
            Transition::Unchanged => Ok(()),
            Transition::Deploy => {
                let mut started = self.start_deploys(vec![(id.clone(), guard)]).await;
                started.pop().map_or(Ok(()), |(_, r)| r)?;
                self.wait_for_activation(seq, deadline).await
            }
            Transition::AwaitDeployment => {
                drop(guard);
                self.wake_placer();
                self.wait_for_activation(seq, deadline).await
            }
            Transition::Resume => self.pause_or_resume(seq, &record, false).await,
            Transition::Pause => self.pause_or_resume(seq, &record, true).await,
            Transition::Restore => {
                let host = self
                    .inner
                    .placer
                    .place_vee(&record)
                    .map_err(placement_error)?;
                let h = host.clone();
                let staged = self
                    .update(seq, Some(format!("restoring on {h}")), |r| {
                        r.phase = Some(Phase::Restoring);
                        r.host = Some(h);
                    })
                    .await;
                if let Err(e) = staged {
                    self.inner.placer.release(&record.id);
                    return Err(e);
                }
                let memory_file = self.memory_file(&record.id);
                let task = tokio::spawn({
                    let veem = self.clone();
                    async move { veem.deploy(seq, host, guard, Some(memory_file)).await }
                });
                match tokio::time::timeout_at(deadline.into(), task).await {
                    Ok(joined) => joined
                        .map_err(|e| CoreError::internal("the restore failed", e))?
                        .map(|_| ()),
                    Err(_) => Err(CoreError::Timeout(format!(
                        "VEE {id} is still being restored; it goes on"
                    ))),
                }
            }
            Transition::Suspend => self.suspend(seq, &record).await,
            Transition::Shutdown => self.shutdown(seq, &record).await,
            Transition::Destroy => self.destroy(seq, &record).await,
        }
    }

    /// Takes a VEE's action lock (waiting for the action under way, if any) and reads the
    /// record under it, so nothing else changes it until the guard drops.
    pub(super) async fn lock_vee(
        &self,
        caller: &Caller,
        id: &VeeId,
    ) -> Result<(u64, OwnedMutexGuard<()>, VeeRecord), CoreError> {
        let seq = self.inner.records.lookup(caller, id)?.id.seq();
        let gone = || CoreError::NotFound(format!("no VEE {id}"));
        let records = &self.inner.records;
        let guard = records.op_lock(seq).ok_or_else(gone)?.lock_owned().await;
        let record = records.get(seq).ok_or_else(gone)?;
        Ok((seq, guard, record))
    }

    fn memory_file(&self, id: &VeeId) -> PathBuf {
        veem_layout::memory_file(&self.vee_dir(id))
    }

    /// Waits until a VEE on its way to ACTIVE gets there or stops trying.
    async fn wait_for_activation(&self, seq: u64, deadline: Instant) -> Result<(), CoreError> {
        loop {
            let Watched {
                mut changed,
                record,
                last_failure: failure,
            } = self.inner.records.watch(seq).ok_or_else(|| {
                CoreError::NotFound(format!("VEE {} was purged", VeeId::from_seq(seq)))
            })?;
            match record.state {
                VmiState::Active => return Ok(()),
                VmiState::Initial => {}
                other => {
                    return Err(failure.unwrap_or_else(|| {
                        CoreError::WrongState(format!(
                            "VEE {} became {other} while waiting to become ACTIVE",
                            record.id
                        ))
                    }))
                }
            }
            if tokio::time::timeout_at(deadline.into(), changed.changed())
                .await
                .is_err()
            {
                return Err(match record.veem_state {
                    VeemState::Pending => CoreError::Pending(
                        record
                            .pending_reason
                            .unwrap_or_else(|| "waiting for placement".into()),
                    ),
                    _ => CoreError::Timeout(format!(
                        "VEE {} is still being deployed on {}; it goes on",
                        record.id,
                        record.host.map(|h| h.to_string()).unwrap_or_default()
                    )),
                });
            }
        }
    }

    pub(super) fn host_of(record: &VeeRecord) -> Result<HostId, CoreError> {
        record
            .host
            .clone()
            .ok_or_else(|| CoreError::broken(format!("VEE {} has no host", record.id)))
    }

    pub(super) async fn pause_or_resume(
        &self,
        seq: u64,
        record: &VeeRecord,
        pause: bool,
    ) -> Result<(), CoreError> {
        let host = Self::host_of(record)?;
        let vee = record.id.clone();
        let request = if pause {
            AgentRequest::Pause { vee }
        } else {
            AgentRequest::Resume { vee }
        };
        agent_result(&host, self.inner.hosts.call(&host, request).await)?;
        let (state, veem_state) = if pause {
            (VmiState::Paused, VeemState::Hold)
        } else {
            (VmiState::Active, VeemState::Active)
        };
        self.update(seq, None, |r| r.settle(state, veem_state))
            .await
            .map(|_| ())
    }

    pub(super) async fn suspend(&self, seq: u64, record: &VeeRecord) -> Result<(), CoreError> {
        let host = Self::host_of(record)?;
        let memory_file = self.memory_file(&record.id);
        let request = AgentRequest::Suspend {
            vee: record.id.clone(),
            memory_file,
        };
        agent_result(&host, self.inner.hosts.call(&host, request).await)?;
        self.inner.placer.release(&record.id);
        self.update(seq, Some(format!("memory saved, {host} freed")), |r| {
            r.settle(VmiState::Suspended, VeemState::Suspended);
            r.host = None;
            r.has_saved_memory = true;
        })
        .await?;
        self.wake_placer();
        Ok(())
    }

    async fn shutdown(&self, seq: u64, record: &VeeRecord) -> Result<(), CoreError> {
        if record.state != VmiState::Suspended {
            let host = Self::host_of(record)?;
            let request = AgentRequest::Shutdown {
                vee: record.id.clone(),
                deadline_ms: self.inner.config.shutdown_deadline.as_millis() as u64,
            };
            agent_result(&host, self.inner.hosts.call(&host, request).await)?;
            self.inner.placer.release(&record.id);
        }
        let memory_file = self.memory_file(&record.id);
        if record.has_saved_memory {
            remove_file_if_present(&memory_file).await?;
        }
        self.update(seq, None, |r| {
            r.settle(VmiState::Defined, VeemState::Stopped);
            r.host = None;
            r.has_saved_memory = false;
        })
        .await?;
        self.wake_placer();
        Ok(())
    }

    async fn destroy(&self, seq: u64, record: &VeeRecord) -> Result<(), CoreError> {
        if let (Some(host), false) = (&record.host, record.reserved) {
            let request = AgentRequest::Destroy {
                vee: record.id.clone(),
            };
            // DESTROY is immediate: a host that cannot be reached does not keep the VEE alive in
            // the VEEM's books; the reconciler ends the orphan when the host returns.
            if let Err(e) = agent_result(host, self.inner.hosts.call(host, request).await) {
                tracing::warn!(vee = %record.id, error = %e, "destroy on the host failed; recorded as destroyed");
            }
        }
        self.inner.placer.forget(seq, &record.id);
        self.update(seq, None, |r| {
            r.settle(VmiState::Destroyed, VeemState::Done);
            r.host = None;
            r.reserved = false;
            r.pending_reason = None;
        })
        .await?;
        self.wake_placer();
        Ok(())
    }

    // ----- patch, migrate, purge ----------------------------------------------------------------

    pub async fn patch(
        &self,
        caller: &Caller,
        id: &VeeId,
        cpu: Option<u32>,
        memory_mb: Option<u64>,
    ) -> Result<(VeeRecord, PatchApplied), CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        if record.site.is_some() {
            return self.patch_remote(seq, &record, cpu, memory_mb).await;
        }
        let d = &record.descriptor;
        let new_cpu = cpu.unwrap_or(d.cpu);
        let new_memory = memory_mb.unwrap_or(d.memory_mb);
        if new_cpu == 0 || new_cpu > d.cpu_ceiling() {
            return Err(CoreError::malformed(
                "cpu",
                format!(
                    "must be between 1 and cpu_max ({}) fixed at definition, not {new_cpu}",
                    d.cpu_ceiling()
                ),
            ));
        }
        if new_memory == 0 || new_memory > d.memory_ceiling_mb() {
            return Err(CoreError::malformed(
                "memory_mb",
                format!(
                    "must be between 1 and memory_max_mb ({}) fixed at definition, not {new_memory}",
                    d.memory_ceiling_mb()
                ),
            ));
        }
        let applied = match record.state {
            VmiState::Active | VmiState::Paused => {
                {
                    self.inner
                        .placer
                        .resize(&record.id, new_cpu, new_memory)
                        .map_err(|e| match e {
                            PlacementError::Unplaceable(u) => {
                                CoreError::InsufficientResources(format!(
                                    "host {} cannot hold the new size: {}",
                                    record
                                        .host
                                        .clone()
                                        .map(|h| h.to_string())
                                        .unwrap_or_default(),
                                    u.reason
                                ))
                            }
                            other => placement_error(other),
                        })?;
                }
                let host = Self::host_of(&record)?;
                let request = AgentRequest::Resize {
                    vee: record.id.clone(),
                    cpu: new_cpu,
                    memory_mb: new_memory,
                };
                if let Err(e) = agent_result(&host, self.inner.hosts.call(&host, request).await) {
                    // Back to the size the host still has.
                    let _ = self.inner.placer.resize(&record.id, d.cpu, d.memory_mb);
                    return Err(e);
                }
                PatchApplied::Live
            }
            VmiState::Defined => {
                if record.reserved {
                    self.inner
                        .placer
                        .resize(&record.id, new_cpu, new_memory)
                        .map_err(placement_error)?;
                }
                PatchApplied::NextActivation
            }
            VmiState::Initial | VmiState::Suspended | VmiState::Destroyed => {
                return Err(CoreError::WrongState(format!(
                    "VEE {id} is {}; its size can change when ACTIVE, PAUSED or DEFINED",
                    record.state
                )))
            }
        };
        let detail = format!("resized to {new_cpu} CPUs, {new_memory} MB");
        let updated = self
            .update(seq, Some(detail), |r| {
                let descriptor = std::sync::Arc::make_mut(&mut r.descriptor);
                descriptor.cpu = new_cpu;
                descriptor.memory_mb = new_memory;
            })
            .await?;
        self.wake_placer();
        Ok((updated, applied))
    }

    /// `POST /vees/{id}/migrate` with a host (admin): moves an ACTIVE, PAUSED or SUSPENDED
    /// VEE to `to` (placement chooses when `None`), `live` (an ACTIVE VEE keeps running) or
    /// cold (paused while it moves); it comes back in the state it had. Its disks are copied
    /// when the destination does not see them.
    pub async fn migrate(
        &self,
        caller: &Caller,
        id: &VeeId,
        to: Option<&HostId>,
        live: bool,
    ) -> Result<VeeRecord, CoreError> {
        self.migrate_keeping_state(
            caller,
            id,
            super::migration::Destination::Host(to.cloned()),
            live,
        )
        .await
    }

    /// The move between two hosts of this site, the VEE's action lock held: it is ACTIVE or
    /// PAUSED; `paused_for_move` when a cold migration paused it (resumed at its destination,
    /// by its caller when the move fails); `stays_paused` when it was not ACTIVE: completed
    /// paused there, it runs at no moment.
    pub(super) async fn move_between_hosts(
        &self,
        seq: u64,
        record: &VeeRecord,
        to: Option<&HostId>,
        paused_for_move: bool,
        stays_paused: bool,
    ) -> Result<VeeRecord, CoreError> {
        let from = Self::host_of(record)?;
        let dest = self
            .inner
            .placer
            .relocate(&record.id, to)
            .map_err(placement_error)?;
        let undo = |veem: &Self| {
            let _ = veem.inner.placer.relocate(&record.id, Some(&from));
        };
        let sent = async {
            // The destination says whether it sees the VEE's disks; when it does not, the
            // source copies them to it (while the VEE runs, in a live migration).
            let (uri, copy_disks_to) = self.prepare_incoming_on(&dest, record).await?;
            match self
                .migrate_out_from(&from, &record.id, uri, copy_disks_to)
                .await
            {
                Ok(moved) => Ok(moved),
                Err(e) => {
                    self.end_instance(&dest, &record.id).await;
                    Err(e)
                }
            }
        };
        let moved = match sent.await {
            Ok(moved) => moved,
            Err(e) => {
                // Still at its source, as it was.
                undo(self);
                return Err(e);
            }
        };
        if let Err(e) = self
            .complete_incoming_on(&dest, &record.id, stays_paused)
            .await
        {
            undo(self);
            return Err(e);
        }
        // Tools parse this note: keep its words and their order.
        let note = match moved {
            Some(sent) => format!(
                "migrated from {from} to {dest} in {} ms (downtime {} ms)",
                sent.total_ms, sent.downtime_ms
            ),
            // An agent that predates migration figures answers `Done`.
            None => format!("migrated from {from} to {dest}"),
        };
        let d = dest.clone();
        let holder = self.holder_at(&dest);
        let updated = self
            .update(seq, Some(note), |r| {
                r.host = Some(d);
                r.holder = holder;
                if paused_for_move && !stays_paused {
                    r.settle(VmiState::Active, VeemState::Active);
                }
            })
            .await?;
        self.wake_placer();
        Ok(updated)
    }

    /// Purge: destroys the VEE if needed and removes every byte stored for it: its directory,
    /// its records in the store, and what every host keeps of it (asked of each host that is
    /// up now; a host that is not is cleaned when it connects again, see
    /// [`Veem::sweep_purged`]). Its id is never reused: the id counter does not go back.
    pub async fn purge(&self, caller: &Caller, id: &VeeId) -> Result<(), CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        // At its site first: a site that does not answer keeps the VEE here too.
        self.purge_remote(&record).await?;
        if record.state != VmiState::Destroyed && record.site.is_none() {
            self.destroy(seq, &record).await?;
        }
        let dir = self.vee_dir(&record.id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::internal("removing the VEE's files", e)),
        }
        self.remove_exports_of(&record.id).await?;
        self.inner
            .committer
            .commit(vec![Change::PurgeVee(record.id.clone())])
            .await?;
        self.inner.records.remove(seq);
        self.inner.placer.forget(seq, &record.id);
        self.inner.networks.release([&record]);
        self.inner.accounting.forget(seq);
        self.inner.hub.forget(&record.id);
        self.purge_on_hosts(&record.id).await;
        Ok(())
    }

    /// Removes the VEE's disk exports left in `data_dir/exports` (`<id>-<target>-<ms>.qcow2`):
    /// one is unlinked as soon as its download starts, so only a crash leaves one behind.
    async fn remove_exports_of(&self, vee: &VeeId) -> Result<(), CoreError> {
        let exports = self.inner.config.data_dir.join("exports");
        let mut entries = match tokio::fs::read_dir(&exports).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CoreError::internal("listing the disk exports", e)),
        };
        let prefix = format!("{vee}-");
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| CoreError::internal("listing the disk exports", e))?
        {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_file_if_present(&entry.path()).await?;
            }
        }
        Ok(())
    }

    /// Asks every connected host, at once, to remove what it keeps of a purged VEE. A host that
    /// fails keeps its traces until [`Veem::sweep_purged`] finds them.
    async fn purge_on_hosts(&self, vee: &VeeId) {
        let hosts: Vec<HostId> = self
            .inner
            .hosts
            .all()
            .into_iter()
            .filter(|(_, entry)| entry.link.is_some())
            .map(|(host, _)| host)
            .collect();
        let calls = hosts.into_iter().map(|host| async move {
            let request = AgentRequest::Purge { vee: vee.clone() };
            if let AgentResponse::Error { error } = self.inner.hosts.call(&host, request).await {
                tracing::warn!(%vee, %host, error = %error.message, "cannot purge the VEE on a host; it is cleaned when the host connects again");
            }
        });
        futures::future::join_all(calls).await;
    }

    /// Removes from `host` what it keeps of VEEs purged while it was away (or whose purge it
    /// failed): a VEE the store no longer holds and whose id was handed out is purged. The
    /// store's books are the durable record of what was purged, so nothing else is kept.
    pub(super) async fn sweep_purged(&self, host: &HostId) {
        let vees = match self.inner.hosts.call(host, AgentRequest::Traces).await {
            AgentResponse::Traces { vees } => vees,
            other => {
                tracing::warn!(%host, answer = ?other, "cannot list what the host keeps of VEEs");
                return;
            }
        };
        let next_seq = self.inner.records.next_seq();
        let purged: Vec<VeeId> = {
            let records = self.inner.records.read();
            vees.into_iter()
                .filter(|vee| vee.seq() < next_seq && records.find(vee).is_none())
                .collect()
        };
        for vee in purged {
            tracing::info!(%vee, %host, "removing what the host kept of a purged VEE");
            let request = AgentRequest::Purge { vee: vee.clone() };
            if let AgentResponse::Error { error } = self.inner.hosts.call(host, request).await {
                tracing::warn!(%vee, %host, error = %error.message, "cannot purge the VEE on the host");
            }
        }
    }

    /// Writes a standalone copy of a DEFINED or DESTROYED VEE's disk to a temporary file and
    /// returns its path; the caller streams and then removes it.
    pub async fn export_disk(
        &self,
        caller: &Caller,
        id: &VeeId,
        target: &str,
    ) -> Result<PathBuf, CoreError> {
        let record = self.inner.records.lookup(caller, id)?;
        if record.site.is_some() {
            // Its disks are at its site, which says whether they can be had now.
            return self.export_remote_disk(&record, target).await;
        }
        self.export_local_disk(&record, target).await
    }

    /// [`Veem::export_disk`] of a VEE of this site's.
    pub(super) async fn export_local_disk(
        &self,
        record: &VeeRecord,
        target: &str,
    ) -> Result<PathBuf, CoreError> {
        let id = &record.id;
        if !matches!(record.state, VmiState::Defined | VmiState::Destroyed) {
            return Err(CoreError::WrongState(format!(
                "VEE {id} is {}; its disks can be downloaded in DEFINED or DESTROYED",
                record.state
            )));
        }
        let Some(spec) = record
            .descriptor
            .disks
            .iter()
            .find(|d| d.target.as_deref() == Some(target))
        else {
            return Err(CoreError::NotFound(format!(
                "VEE {id} has no disk {target}"
            )));
        };
        if spec.kind == DiskKind::Cdrom {
            // A CD-ROM is never written: it holds its medium as it is, nothing of the VEE's.
            return Err(CoreError::malformed(
                "target",
                format!(
                    "disk {target} of VEE {id} is a cdrom, never written; its medium is {}",
                    spec.source
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            ));
        }
        if let (Some(source), false) = (&spec.source, spec.clone) {
            // A disk used in place is its source: the download is the file itself, so the
            // file-source rules hold here as at deployment (a VEE defined before them, a file
            // swapped for a symlink since).
            let owner_is_admin = self.inner.config.admins.contains(&record.owner);
            self.inner.config.file_sources.resolve(
                owner_is_admin,
                source,
                &format!("disk {target}"),
            )?;
        }
        let vee_dir = self.vee_dir(&record.id);
        let disk = veem_layout::disk_path(&vee_dir, target);
        let source_note = veem_layout::source_note_path(&vee_dir, target);
        let up = |e: &crate::hosts::HostEntry| e.link.is_some() && e.error.is_none();
        let host = match &record.holder {
            // Its disks are on that host's own storage: only it can read them.
            Some(holder) => {
                if !self.inner.hosts.get(holder).is_some_and(|e| up(&e)) {
                    return Err(CoreError::host_failed(format!(
                        "host {holder}, which holds the disks of VEE {id}, is not up"
                    )));
                }
                holder.clone()
            }
            None => {
                if !disk.exists() && !source_note.exists() {
                    return Err(CoreError::NotFound(format!(
                        "disk {target} of VEE {id} has no contents yet: the VEE was never deployed"
                    )));
                }
                self.inner
                    .hosts
                    .all()
                    .into_iter()
                    .find(|(_, e)| up(e))
                    .map(|(h, _)| h)
                    .ok_or_else(|| CoreError::host_failed("no host is up to export the disk"))?
            }
        };
        let exports = self.inner.config.data_dir.join("exports");
        tokio::fs::create_dir_all(&exports)
            .await
            .map_err(|e| CoreError::internal("creating the export directory", e))?;
        let out = exports.join(format!("{}-{target}-{}.qcow2", record.id, now_ms()));
        let request = AgentRequest::ExportDisk {
            vee_dir,
            target: target.to_owned(),
            out: out.clone(),
        };
        agent_result(&host, self.inner.hosts.call(&host, request).await)?;
        if record.holder.is_some() {
            // The holder wrote it on its own storage: it comes over the host's link.
            if let Err(e) = self.fetch_export(&host, id, &out).await {
                remove_file_if_present(&out).await?;
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Copies an export `host` made on its own storage to `out`, chunk by chunk over its link
    /// (the host removes its copy once read whole).
    async fn fetch_export(&self, host: &HostId, vee: &VeeId, out: &Path) -> Result<(), CoreError> {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| CoreError::internal("creating a disk export", e))?;
        let mut offset = 0u64;
        loop {
            let request = AgentRequest::ReadExport {
                vee: vee.clone(),
                out: out.to_owned(),
                offset,
            };
            let (data, eof) = match self.inner.hosts.call(host, request).await {
                AgentResponse::Chunk { data, eof } => (data, eof),
                other => {
                    agent_result(host, other)?;
                    return Err(CoreError::host_failed(format!(
                        "host {host} answered a read of a disk export with no bytes"
                    )));
                }
            };
            let bytes = AgentResponse::chunk_bytes(&data).map_err(|e| {
                CoreError::host_failed(format!("host {host} sent a disk export garbled: {e}"))
            })?;
            file.write_all(&bytes)
                .await
                .map_err(|e| CoreError::internal("writing a disk export", e))?;
            offset += bytes.len() as u64;
            if eof {
                break;
            }
        }
        file.flush()
            .await
            .map_err(|e| CoreError::internal("writing a disk export", e))
    }
}
