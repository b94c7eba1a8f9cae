//! Hosts: connecting, reconciling the books with what hosts run, the placement and health loops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veem_api::agent::{AgentRequest, AgentResponse, InstanceState, InstanceStatus};
use veem_model::{HostId, Phase, VeeId, VeeRecord, VeemState, VmiState};
use veem_placement::PlacementError;

use super::{now_ms, Veem};
use crate::error::CoreError;
use crate::hosts::{HostEntry, HostLink};

impl Veem {
    pub fn wake_placer(&self) {
        self.inner.placer.wake();
    }

    /// The holder to record for a VEE that now runs on `host` ([`VeeRecord::holder`]): the
    /// host itself when it keeps its VEEs' directories on storage of its own, else none (the
    /// directory is on the site's shared storage).
    pub(super) fn holder_at(&self, host: &HostId) -> Option<HostId> {
        self.inner
            .hosts
            .get(host)
            .is_some_and(|entry| entry.hello.own_storage)
            .then(|| host.clone())
    }

    /// Adds a host (or a reconnected agent), makes its capacity placeable and reconciles the
    /// VEEs the store places on it with what it really runs.
    pub async fn connect_host(
        &self,
        hello: veem_api::agent::HostHello,
        link: Arc<dyn HostLink>,
    ) -> Result<(), CoreError> {
        let host = hello.name.clone();
        let entry = self
            .inner
            .hosts
            .connect(hello.clone(), link.clone(), now_ms());
        // No new VEEs until the books agree with what the host runs; the host's VEEs are
        // placed again in the books before anything new can land there.
        let capacity = veem_placement::Capacity {
            cpus: hello.cpus,
            memory_mb: hello.memory_mb,
        };
        let waiting = self.inner.placer.host_connected(&host, capacity);
        let on_host: Vec<VeeRecord> = {
            let records = self.inner.records.read();
            waiting
                .iter()
                .filter_map(|seq| records.get(*seq))
                .filter(|r| r.host.as_ref() == Some(&host))
                .cloned()
                .collect()
        };
        self.inner.placer.restore(&host, &on_host);
        tracing::info!(%host, driver = %hello.driver, cpus = hello.cpus, memory_mb = hello.memory_mb, "host connected");
        let fencing = match entry.lost {
            Some(_) => Some(self.inner.hosts.moves(&host).lock_owned().await),
            None => None,
        };
        let reconciled = self.reconcile_host(&host).await;
        if fencing.is_some() {
            // A lost host is fenced until now: it has ended every instance the VEEM moved away
            // (reconciliation ends those before it takes anything the host says as truth).
            if reconciled {
                if self.inner.hosts.clear_lost(&host, &link, now_ms()) {
                    tracing::info!(%host, "lost host is back; the instances moved away from it are ended");
                }
            } else {
                // Not fenced: it stays lost, and its next connection tries again.
                tracing::warn!(%host, "cannot fence a lost host that came back; dropping its connection");
                link.cut();
                self.disconnect_host(&host, &link);
            }
        }
        drop(fencing);
        self.sweep_purged(&host).await;
        self.inner.hosts.reconciled(&host, &link, now_ms());
        let accepts = self
            .inner
            .hosts
            .get(&host)
            .is_some_and(|e| e.accepts_vees());
        self.inner.placer.set_enabled(&host, accepts);
        self.wake_placer();
        Ok(())
    }

    pub fn disconnect_host(&self, host: &HostId, link: &Arc<dyn HostLink>) {
        if self.inner.hosts.disconnect(host, link, now_ms()) {
            self.inner.placer.set_enabled(host, false);
            tracing::warn!(%host, "host disconnected");
        }
    }

    /// Disables a host (it takes no new VEE) or enables it again; stored before it is
    /// answered, so a restart or a new leader keeps it.
    pub async fn set_host_disabled(
        &self,
        host: &HostId,
        disabled: bool,
    ) -> Result<HostEntry, CoreError> {
        if self.inner.hosts.get(host).is_none() {
            return Err(CoreError::NotFound(format!("no host {host}")));
        }
        self.inner
            .committer
            .commit(vec![veem_store::Change::SetHostDisabled {
                host: host.to_string(),
                disabled,
            }])
            .await?;
        let entry = self
            .inner
            .hosts
            .set_disabled(host, disabled, now_ms())
            .ok_or_else(|| CoreError::NotFound(format!("no host {host}")))?;
        self.inner.placer.set_enabled(host, entry.accepts_vees());
        self.wake_placer();
        Ok(entry)
    }

    /// Each host's capacity and use as placement sees it.
    pub fn host_usage(&self, host: &HostId) -> Option<veem_placement::HostUsage> {
        self.inner.placer.usage(host)
    }

    /// Makes the books agree with what a host runs: instances the VEEM does not place on that
    /// host (moved away while it was lost, or never placed there) are ended first; then the
    /// instances it reports set the state of their VEEs, and VEEs it should run but does not
    /// are restarted or FAILED (never silently lost). Answers whether the host could be
    /// listed.
    pub async fn reconcile_host(&self, host: &HostId) -> bool {
        let listed_ms = now_ms();
        let instances = match self.inner.hosts.call(host, AgentRequest::List).await {
            AgentResponse::List { instances } => instances,
            other => {
                tracing::warn!(%host, answer = ?other, "cannot list the host's instances");
                return false;
            }
        };
        self.apply_observed(host, &instances, listed_ms, true).await
    }

    /// `listed_ms` is when the host was asked: a record changed since then may be newer than
    /// what the host said, and is left alone. With `end_orphans`, the instances the VEEM does
    /// not place on `host` are ended before anything else: the fencing of a host that was lost
    /// (see "Host loss" in ARCHITECTURE.md). Answers whether every such instance was ended.
    async fn apply_observed(
        &self,
        host: &HostId,
        instances: &[InstanceStatus],
        listed_ms: u64,
        end_orphans: bool,
    ) -> bool {
        // Placement knows each host's VEEs: no need to look through every record.
        let on_host = self
            .inner
            .placer
            .usage(host)
            .map(|u| u.vees)
            .unwrap_or_default();
        let (expected, orphans) = {
            let records = self.inner.records.read();
            let expected: Vec<(u64, VeeRecord)> = on_host
                .iter()
                .filter_map(|id| records.get(id.seq()))
                .filter(|r| r.host.as_ref() == Some(host) && !r.reserved)
                .map(|r| (r.id.seq(), r.clone()))
                .collect();
            let orphans: Vec<VeeId> = instances
                .iter()
                .filter(|i| !expected.iter().any(|(_, r)| r.id == i.vee))
                .filter(|i| {
                    records.get(i.vee.seq()).is_none_or(|r| {
                        // One waiting here for its migration from another site is the
                        // migration's to run or drop (see `migration.rs`).
                        let incoming = (r.reserved
                            && r.phase == Some(Phase::Migrating)
                            && r.host.as_ref() == Some(host))
                            || r.migration.as_ref().is_some_and(|m| {
                                m.to == veem_model::MigrationTarget::Host(host.clone())
                            });
                        r.updated_ms < listed_ms && !incoming
                    })
                })
                .map(|i| i.vee.clone())
                .collect();
            (expected, orphans)
        };
        let mut fenced = true;
        if end_orphans {
            for vee in orphans {
                tracing::warn!(%vee, %host, "ending an instance the VEEM does not place on this host");
                let answer = self
                    .inner
                    .hosts
                    .call(host, AgentRequest::Destroy { vee: vee.clone() })
                    .await;
                if let AgentResponse::Error { error } = answer {
                    if error.kind != veem_api::agent::AgentErrorKind::NoSuchInstance {
                        tracing::warn!(%vee, %host, error = %error.message, "cannot end the instance");
                        fenced = false;
                    }
                }
            }
        }
        // Only what the books place here is taken as truth: an instance moved away says
        // nothing about its VEE.
        let placed_here: Vec<InstanceStatus> = instances
            .iter()
            .filter(|i| expected.iter().any(|(_, r)| r.id == i.vee))
            .cloned()
            .collect();
        self.observe_instances(&placed_here);
        for (seq, record) in expected {
            let Some(lock) = self.inner.records.op_lock(seq) else {
                continue;
            };
            // A VEE with an action under way is that action's business; one whose migration
            // a restart cut, the migration's (`settle_migrations`): it may have left.
            let Ok(_guard) = lock.try_lock_owned() else {
                continue;
            };
            if record.migration.is_some() {
                continue;
            }
            if !self
                .inner
                .records
                .unchanged_since(seq, listed_ms, record.generation)
            {
                continue;
            }
            let observed = instances
                .iter()
                .find(|i| i.vee == record.id)
                .map(|i| i.state);
            let result = match (record.state, observed) {
                (VmiState::Active, Some(InstanceState::Running))
                | (VmiState::Paused, Some(InstanceState::Paused)) => continue,
                // A SUSPENDED VEE with a host was being restored when the VEEM stopped.
                (
                    VmiState::Active | VmiState::Initial | VmiState::Suspended,
                    Some(InstanceState::Paused),
                ) => {
                    self.update(seq, Some("found paused on its host".into()), |r| {
                        r.settle(VmiState::Paused, VeemState::Hold);
                        r.has_saved_memory = false;
                    })
                    .await
                }
                (
                    VmiState::Paused | VmiState::Initial | VmiState::Suspended,
                    Some(InstanceState::Running),
                ) => {
                    self.update(seq, Some("found running on its host".into()), |r| {
                        r.settle(VmiState::Active, VeemState::Active);
                        r.has_saved_memory = false;
                    })
                    .await
                }
                (VmiState::Suspended, None) => {
                    let note = "restore interrupted; still suspended".to_owned();
                    self.restore_interrupted(seq, &record.id, note).await
                }
                (VmiState::Initial, None) if end_orphans => {
                    // Deployment was cut short (a restart): deploy again.
                    drop(_guard);
                    if let Some(lock) = self.inner.records.op_lock(seq) {
                        let guard = lock.lock_owned().await;
                        let veem = self.clone();
                        let host = host.clone();
                        tokio::spawn(async move { veem.deploy(seq, host, guard, None).await });
                    }
                    continue;
                }
                (VmiState::Initial, _) => continue,
                (_, Some(InstanceState::Incoming)) => continue,
                (VmiState::Active | VmiState::Paused, Some(InstanceState::PoweredOff)) => {
                    // Not a failure: the guest's own power-off ends the VEE as SHUTDOWN would.
                    self.end_instance(host, &record.id).await;
                    self.inner.placer.release(&record.id);
                    self.update(seq, Some("the guest powered itself off".into()), |r| {
                        r.settle(VmiState::Defined, VeemState::Stopped);
                        r.host = None;
                    })
                    .await
                }
                _ => self.instance_died(seq, &record, host, observed).await,
            };
            if let Err(e) = result {
                tracing::error!(vee = %record.id, error = %e, "cannot record what the host reports");
            }
        }
        fenced
    }

    /// A VEE that should run on `host` has no live instance there: its process is gone or its
    /// guest crashed. It boots again from its own disks while its descriptor allows restarts,
    /// else it is FAILED, never silently lost.
    async fn instance_died(
        &self,
        seq: u64,
        record: &VeeRecord,
        host: &HostId,
        observed: Option<InstanceState>,
    ) -> Result<VeeRecord, CoreError> {
        let cause = match observed {
            None => "its process is gone".to_owned(),
            Some(InstanceState::Crashed) => "its guest crashed".to_owned(),
            Some(other) => format!("its instance is {other:?}").to_lowercase(),
        };
        if observed.is_some() {
            self.end_instance(host, &record.id).await;
        }
        self.inner.placer.release(&record.id);
        let allowed = record.descriptor.restart_attempts;
        if record.restarts < allowed {
            let attempt = record.restarts + 1;
            let note = format!(
                "{cause} on {host}; booting it again from its disks (restart {attempt} of {allowed})"
            );
            tracing::warn!(vee = %record.id, %host, "{note}");
            let updated = self
                .update(seq, Some(note.clone()), |r| {
                    r.state = VmiState::Initial;
                    r.veem_state = VeemState::Pending;
                    r.phase = Some(Phase::Placing);
                    r.host = None;
                    r.restarts = attempt;
                    r.has_saved_memory = false;
                    r.last_error = Some(note);
                })
                .await?;
            self.inner.placer.enqueue(seq);
            self.wake_placer();
            return Ok(updated);
        }
        self.fail_keeping_disks(seq, record, host, &format!("{cause} on {host}"))
            .await
    }

    /// A VEE that may not boot again (its restarts used up, or none allowed) is FAILED with
    /// the cause; its disks are kept for the SM to look at.
    async fn fail_keeping_disks(
        &self,
        seq: u64,
        record: &VeeRecord,
        host: &HostId,
        cause: &str,
    ) -> Result<VeeRecord, CoreError> {
        self.inner.placer.release(&record.id);
        let allowed = record.descriptor.restart_attempts;
        let note = if allowed == 0 {
            format!("{cause}; disks kept")
        } else {
            format!("{cause} after {allowed} restarts; disks kept")
        };
        tracing::warn!(vee = %record.id, %host, "{note}");
        self.update(seq, Some(note.clone()), |r| {
            r.settle(VmiState::Destroyed, VeemState::Failed);
            r.host = None;
            r.last_error = Some(note);
        })
        .await
    }

    /// A resting (or waiting) VEE whose directory was on a lost host's own storage: its disks
    /// and saved memory are gone with that host, so it holds nothing any more and boots from
    /// its sources at its next deployment (a SUSPENDED one is DEFINED: nothing is left to
    /// restore). What the site's shared storage kept of it is from before it moved to that
    /// host, stale, and removed.
    async fn forget_lost_holder(
        &self,
        seq: u64,
        record: &VeeRecord,
        cause: &str,
    ) -> Result<VeeRecord, CoreError> {
        self.remove_stale_shared_dir(&record.id).await?;
        let suspended = record.state == VmiState::Suspended;
        let note = if suspended {
            format!("{cause}; the disks and saved memory it held are lost: DEFINED, it boots from its sources")
        } else {
            format!("{cause}; the disks it held are lost: the VEE boots from its sources")
        };
        tracing::warn!(vee = %record.id, "{note}");
        let updated = self
            .update(seq, Some(note.clone()), |r| {
                r.holder = None;
                r.last_error = Some(note);
                if suspended {
                    r.settle(VmiState::Defined, VeemState::Stopped);
                    r.has_saved_memory = false;
                }
            })
            .await;
        // One waiting for that host may go anywhere now.
        self.wake_placer();
        updated
    }

    /// Removes the VEE's directory on the site's shared storage, if any: called when the VEE's
    /// current disks were on a host's own storage, so what is there is from an earlier stay.
    async fn remove_stale_shared_dir(&self, vee: &VeeId) -> Result<(), CoreError> {
        match tokio::fs::remove_dir_all(self.vee_dir(vee)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::internal("removing a stale VEE directory", e)),
        }
    }

    /// A restore cut short (its host gone, or the VEEM stopped): the VEE stays SUSPENDED with
    /// its saved memory, and holds no host.
    async fn restore_interrupted(
        &self,
        seq: u64,
        id: &VeeId,
        note: String,
    ) -> Result<VeeRecord, CoreError> {
        self.inner.placer.release(id);
        self.update(seq, Some(note), |r| {
            r.settle(VmiState::Suspended, VeemState::Suspended);
            r.host = None;
        })
        .await
    }

    /// Ends what is left of an instance on its host; a host that cannot is told again by the
    /// next reconciliation, which ends instances the VEEM does not place there.
    pub(super) async fn end_instance(&self, host: &HostId, vee: &VeeId) {
        let answer = self
            .inner
            .hosts
            .call(host, AgentRequest::Destroy { vee: vee.clone() })
            .await;
        if let AgentResponse::Error { error } = answer {
            tracing::warn!(%vee, %host, error = %error.message, "cannot end the instance");
        }
    }

    /// Starts the background loops: placement of pending VEEs, host health, host loss, the
    /// accounting scheduler and the HARDWARE events.
    pub fn start_background(&self) {
        let veem = self.clone();
        tokio::spawn(async move { veem.placement_loop().await });
        let veem = self.clone();
        tokio::spawn(async move { veem.health_loop().await });
        let veem = self.clone();
        tokio::spawn(async move { veem.loss_loop().await });
        let veem = self.clone();
        tokio::spawn(async move { veem.accounting_loop().await });
        let veem = self.clone();
        tokio::spawn(async move { veem.site_loop().await });
        let veem = self.clone();
        let interval = self.inner.config.monitoring_interval;
        tokio::spawn(async move { veem.hardware_loop(interval).await });
    }

    async fn placement_loop(self) {
        loop {
            self.inner
                .placer
                .woken(self.inner.config.health_interval)
                .await;
            self.place_pending().await;
        }
    }

    /// One round of the placement engine over the queue, oldest first. A VEE whose action
    /// lock is taken is left for the next round; holding it keeps the VEE as read until its
    /// placement is committed.
    pub async fn place_pending(&self) {
        let inner = &self.inner;
        let mut placed = Vec::new();
        let mut staged = Vec::new();
        for seq in inner.placer.queue() {
            let Some(lock) = inner.records.op_lock(seq) else {
                inner.placer.dequeue(seq);
                continue;
            };
            let Ok(guard) = lock.try_lock_owned() else {
                continue;
            };
            let Some(record) = inner.records.get(seq) else {
                inner.placer.dequeue(seq);
                continue;
            };
            if record.veem_state != VeemState::Pending {
                inner.placer.dequeue(seq);
                continue;
            }
            let order = self.placement_order(&record);
            if order.iter().any(Option::is_some) {
                // Other sites may take it: trying them takes calls, in a task of its own, and
                // not at every round.
                if !inner.placer.may_offer(seq, std::time::Instant::now()) {
                    continue;
                }
                let veem = self.clone();
                tokio::spawn(async move { veem.place_in_order(seq, guard, order).await });
                continue;
            }
            match inner.placer.place_vee(&record) {
                Ok(host) => {
                    let h = host.clone();
                    if let Some(s) = inner
                        .records
                        .stage(seq, Some(format!("placed on {h}")), |r| {
                            r.veem_state = VeemState::Hold;
                            r.phase = Some(Phase::Booting);
                            r.host = Some(h);
                            r.pending_reason = None;
                        })
                    {
                        staged.push(s);
                        placed.push((seq, host, guard, record.id.clone()));
                        inner.placer.dequeue(seq);
                    }
                }
                Err(PlacementError::Unplaceable(u)) => {
                    if record.pending_reason.as_deref() != Some(u.reason.as_str()) {
                        if let Some(s) = inner
                            .records
                            .stage(seq, None, |r| r.pending_reason = Some(u.reason))
                        {
                            staged.push(s);
                        }
                    }
                }
                Err(e) => tracing::error!(vee = %record.id, error = %e, "placement failed"),
            }
        }
        if staged.is_empty() {
            return;
        }
        if let Err(e) = self.commit(staged).await {
            tracing::error!(error = %e, "cannot record placements; they are undone and retried");
            let undone: Vec<(u64, VeeId)> = placed
                .into_iter()
                .map(|(seq, _, _, id)| (seq, id))
                .collect();
            inner.placer.requeue(&undone);
            return;
        }
        for (seq, host, guard, _) in placed {
            let veem = self.clone();
            tokio::spawn(async move { veem.deploy(seq, host, guard, None).await });
        }
    }

    async fn health_loop(self) {
        let mut tick = tokio::time::interval(self.inner.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Concurrently: a silent host must not delay the others' checks.
            let checks = self
                .inner
                .hosts
                .all()
                .into_iter()
                // A host that (re)connected is being reconciled by its connection.
                .filter(|(_, entry)| {
                    entry.link.is_some() && entry.lost.is_none() && !entry.reconciling
                })
                .map(|(host, entry)| self.check_host(host, entry));
            futures::future::join_all(checks).await;
        }
    }

    /// One health check: lists the host's instances and applies what it says.
    async fn check_host(&self, host: HostId, entry: HostEntry) {
        let was_up = entry.error.is_none();
        let listed_ms = now_ms();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.hosts.call(&host, AgentRequest::List),
        )
        .await;
        let (error, instances) = match answer {
            Ok(AgentResponse::List { instances }) => (None, Some(instances)),
            Ok(AgentResponse::Error { error }) => (Some(error.message), None),
            Ok(other) => (Some(format!("unexpected answer {other:?}")), None),
            Err(_) => (Some("did not answer a health check in 5 s".into()), None),
        };
        let accepts = self
            .inner
            .hosts
            .record_health(&host, error.clone(), now_ms());
        self.inner.placer.set_enabled(&host, accepts);
        if let Some(e) = &error {
            if was_up {
                tracing::warn!(%host, error = %e, "host is down");
            }
        }
        if let Some(instances) = instances {
            if !was_up {
                tracing::info!(%host, "host is up again");
                self.reconcile_host(&host).await;
                self.wake_placer();
            } else {
                self.apply_observed(&host, &instances, listed_ms, false)
                    .await;
            }
        }
    }

    /// Watches for lost hosts at every health interval, on its own: it waits on no host, so a
    /// host that does not answer its health check cannot delay it.
    async fn loss_loop(self) {
        let mut tick = tokio::time::interval(self.inner.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.handle_host_loss().await;
        }
    }

    /// Declares lost every host silent for `host_dead_after` (its link is cut, so nothing more
    /// reaches it until it reconnects and is fenced), then moves the VEEs of lost hosts away.
    /// Runs at every health tick: a VEE busy with an action when its host was lost is moved
    /// once that action ends.
    pub(super) async fn handle_host_loss(&self) {
        let in_books = self.inner.records.hosts_in_books();
        let now = now_ms();
        for (host, silence) in self.inner.hosts.newly_silent(in_books, Instant::now()) {
            let reason = format!("no answer for {} s", silence.as_secs());
            tracing::warn!(%host, %reason, "host lost; its VEEs move to other hosts");
            if let Some(link) = self.inner.hosts.declare_lost(&host, reason, now) {
                link.cut();
            }
            self.inner.placer.set_enabled(&host, false);
        }
        for (host, lost) in self.inner.hosts.lost_unlinked() {
            // A fence of that host under way finishes first; its moves wait for a later tick.
            let Ok(_moving) = self.inner.hosts.moves(&host).try_lock_owned() else {
                continue;
            };
            self.evacuate(&host, &lost.reason).await;
        }
    }

    /// Moves every VEE the books place on a lost host: a running (or paused, or booting) one
    /// boots again elsewhere from its own disks while its descriptor allows restarts, else it
    /// is FAILED; a reservation is released; a restore cut short leaves it SUSPENDED. A VEE with
    /// an action under way is left to that action (its calls to the host fail now) and moved
    /// at a later tick. The host's own storage is lost with it: a VEE it held the directory of
    /// boots from its sources from then on ([`Veem::forget_lost_holder`]).
    async fn evacuate(&self, host: &HostId, reason: &str) {
        let on_host = self
            .inner
            .records
            .ids_where(|r| r.host.as_ref() == Some(host) || r.holder.as_ref() == Some(host));
        for seq in on_host.iter().map(VeeId::seq) {
            let Some(lock) = self.inner.records.op_lock(seq) else {
                continue;
            };
            let Ok(guard) = lock.try_lock_owned() else {
                continue;
            };
            let Some(record) = self.inner.records.get(seq) else {
                continue;
            };
            let cause = format!("host {host} lost ({reason})");
            if record.host.as_ref() != Some(host) {
                if record.holder.as_ref() == Some(host) {
                    if let Err(e) = self.forget_lost_holder(seq, &record, &cause).await {
                        tracing::error!(vee = %record.id, %host, error = %e, "cannot forget a lost holder");
                    }
                }
                continue;
            }
            let result = match (record.state, record.reserved) {
                (VmiState::Defined, true) => {
                    self.inner.placer.release(&record.id);
                    let note = format!("{cause}; its reservation there is released");
                    self.update(seq, Some(note), |r| {
                        r.host = None;
                        r.reserved = false;
                    })
                    .await
                }
                (VmiState::Suspended, _) => {
                    let note = format!("{cause}; restore interrupted, still suspended");
                    self.restore_interrupted(seq, &record.id, note).await
                }
                (VmiState::Initial | VmiState::Active | VmiState::Paused, _) => {
                    self.restart_elsewhere(seq, &record, host, &cause, guard)
                        .await
                }
                (VmiState::Defined | VmiState::Destroyed, _) => continue,
            };
            if let Err(e) = result {
                tracing::error!(vee = %record.id, %host, error = %e, "cannot move a VEE off a lost host");
            }
        }
    }

    /// A VEE whose host was lost boots again from its own disks on another host, placed at
    /// once (its event says where) or queued, while its descriptor allows restarts (one that
    /// was still booting there never ran, so it counts none); else it is FAILED with the cause.
    async fn restart_elsewhere(
        &self,
        seq: u64,
        record: &VeeRecord,
        lost: &HostId,
        cause: &str,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<VeeRecord, CoreError> {
        let never_ran = record.state == VmiState::Initial;
        let allowed = record.descriptor.restart_attempts;
        if !never_ran && record.restarts >= allowed {
            return self.fail_keeping_disks(seq, record, lost, cause).await;
        }
        // Its disks on the lost host's own storage are gone with it: it boots from its sources.
        let disks_lost = record.holder.as_ref() == Some(lost);
        let cause = if disks_lost {
            self.remove_stale_shared_dir(&record.id).await?;
            format!("{cause} with the disks it held; it boots from its sources")
        } else {
            cause.to_owned()
        };
        let mut placing = record.clone();
        if disks_lost {
            placing.holder = None;
        }
        let attempt = if never_ran {
            record.restarts
        } else {
            record.restarts + 1
        };
        let placed_note = |to: &HostId| {
            if never_ran {
                format!("{cause} before it finished booting; placed again on {to}")
            } else {
                format!("{cause}; restarted on {to}, restart {attempt} of {allowed}")
            }
        };
        let waiting_note = if never_ran {
            format!("{cause} before it finished booting; waiting for another host")
        } else {
            format!("{cause}; waiting for another host, restart {attempt} of {allowed}")
        };
        let (staged, placed) = {
            let records = &self.inner.records;
            self.inner.placer.release(&record.id);
            match self.inner.placer.place_vee(&placing) {
                Ok(to) => {
                    let note = placed_note(&to);
                    let h = to.clone();
                    let staged = records.stage(seq, Some(note.clone()), |r| {
                        r.state = VmiState::Initial;
                        r.veem_state = VeemState::Hold;
                        r.phase = Some(Phase::Booting);
                        r.host = Some(h);
                        r.holder = placing.holder.clone();
                        r.restarts = attempt;
                        r.has_saved_memory = false;
                        r.pending_reason = None;
                        r.last_error = Some(note);
                    });
                    (staged, Some(to))
                }
                Err(e) => {
                    let why = match e {
                        PlacementError::Unplaceable(u) => u.reason,
                        other => other.to_string(),
                    };
                    let note = waiting_note;
                    let staged = records.stage(seq, Some(note.clone()), |r| {
                        r.state = VmiState::Initial;
                        r.veem_state = VeemState::Pending;
                        r.phase = Some(Phase::Placing);
                        r.host = None;
                        r.holder = placing.holder.clone();
                        r.restarts = attempt;
                        r.has_saved_memory = false;
                        r.pending_reason = Some(why);
                        r.last_error = Some(note);
                    });
                    (staged, None)
                }
            }
        };
        let staged = staged.ok_or_else(|| {
            CoreError::NotFound(format!("VEE {} was purged", VeeId::from_seq(seq)))
        })?;
        tracing::warn!(vee = %record.id, %lost, to = ?placed, "moving a VEE off a lost host");
        let committed = self.commit(vec![staged]).await;
        let updated = match committed {
            Ok(mut records) => records.remove(0),
            Err(e) => {
                // Nothing changed: the VEE is still on the lost host, moved at the next tick.
                if placed.is_some() {
                    self.inner.placer.release(&record.id);
                }
                return Err(e);
            }
        };
        match placed {
            Some(to) => {
                let veem = self.clone();
                tokio::spawn(async move { veem.deploy(seq, to, guard, None).await });
            }
            None => {
                self.inner.placer.enqueue(seq);
                drop(guard);
                self.wake_placer();
            }
        }
        Ok(updated)
    }
}
