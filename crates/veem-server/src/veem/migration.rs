//! Migration between sites: a VEE moves, with its disks and its memory, from where it runs
//! (this site's hosts or a registered site) to another place, and keeps its id here, its
//! primary. The VMI is the only channel between VEEMs: the destination answers
//! `POST /vees/incoming` with where to send the VEE, the source is asked
//! `POST /vees/{id}/send` there, and `POST /vees/{id}/incoming/complete` lets it run. The same
//! agent steps as a migration between two hosts of this site ([`Veem::migrate`]) do the work
//! on each host, whichever VEEM owns it.
//!
//! Rules kept here:
//! - Nothing runs at two places: the destination runs the VEE only when told to, and is told
//!   only once the source let it go (its send answered, or, when that answer was lost, the
//!   source site says it no longer has the VEE). A source that kept it drops the destination.
//! - Nothing of it stays at the place it left: the source's VEE is purged there once it is
//!   at its destination; a destination that did not get it is purged (or freed, here).
//! - A VEE comes back in the state it had: a cold (`live: false`) migration pauses an ACTIVE
//!   VEE for the move and resumes it there; a PAUSED one is paused again there; a SUSPENDED
//!   one is restored at its site, paused, moved, and suspended there. A PAUSED one is completed
//!   paused: it runs at no moment at its destination.

use std::time::{Duration, Instant};

use veem_api::agent::{AgentRequest, AgentResponse, DiskCopy};
use veem_api::{code, IncomingRequest, SendRequest, SentView};
use veem_model::{
    ControlAction, HostId, InitModel, MigrationNote, MigrationTarget as Receiver, Phase, SiteName,
    VeeDescriptor, VeeId, VeeRecord, VeemState, VmiState,
};

use super::networks::{network_ids, LanClaim};
use super::placer::demand_of;
use super::{agent_result, placement_error, Veem};
use crate::auth::Caller;
use crate::error::CoreError;

/// How often, and how many times, a migration sent to a site that could not be told to
/// complete it is completed again.
const COMPLETE_RETRY: Duration = Duration::from_secs(2);
const COMPLETE_ATTEMPTS: u32 = 300;

/// Where `send` sends a VEE and copies its disks: a destination's listener (the sim driver's
/// `sim://` stands for one on a machine's own file system).
const SEND_SCHEMES: [&str; 2] = ["tcp:", "sim://"];
const COPY_SCHEMES: [&str; 2] = ["nbd://", "sim://"];

/// How long each control action a migration makes (a pause, a restore) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `POST /vees/{id}/migrate` moves a VEE: a host of this site (placement chooses when
/// none is named), or a site (`None`: this site's hosts).
pub(super) enum Destination {
    Host(Option<HostId>),
    Site(Option<SiteName>),
}

impl Veem {
    // ----- the agent steps, shared with the migration between two hosts of this site -------

    /// Starts an instance of `record` on `host` that waits for its migration: the URI to send
    /// it to, and where its disks go when the host does not see them.
    pub(super) async fn prepare_incoming_on(
        &self,
        host: &HostId,
        record: &VeeRecord,
    ) -> Result<(String, Option<DiskCopy>), CoreError> {
        let spec = self.deploy_spec_for(record, host).await?;
        let request = AgentRequest::PrepareIncoming { spec };
        match agent_result(host, self.inner.hosts.call(host, request).await)? {
            AgentResponse::Incoming { uri, disks } => Ok((uri, disks)),
            other => Err(CoreError::host_failed(format!(
                "host {host} answered prepare_incoming with {other:?}"
            ))),
        }
    }

    /// Sends a VEE from `host` to what a destination's prepare answered: the migration's
    /// figures (`None` from an agent that predates them). The instance on `host` is gone when
    /// this is `Ok`.
    pub(super) async fn migrate_out_from(
        &self,
        host: &HostId,
        vee: &VeeId,
        uri: String,
        copy_disks_to: Option<DiskCopy>,
    ) -> Result<Option<SentView>, CoreError> {
        let request = AgentRequest::MigrateOut {
            vee: vee.clone(),
            uri,
            copy_disks_to,
        };
        Ok(
            match agent_result(host, self.inner.hosts.call(host, request).await)? {
                AgentResponse::Migrated {
                    total_ms,
                    downtime_ms,
                } => Some(SentView {
                    total_ms,
                    downtime_ms,
                }),
                _ => None,
            },
        )
    }

    /// Lets the instance on `host` that received its migration run, or leaves it `paused`.
    pub(super) async fn complete_incoming_on(
        &self,
        host: &HostId,
        vee: &VeeId,
        paused: bool,
    ) -> Result<(), CoreError> {
        let request = AgentRequest::CompleteIncoming {
            vee: vee.clone(),
            paused,
        };
        agent_result(host, self.inner.hosts.call(host, request).await).map(drop)
    }

    // ----- this site as the other end of a migration (the VMI extensions) -----------------

    /// `POST /vees/incoming`: defines a VEE of the caller's from `descriptor` on a host of
    /// this site (placement and anti-affinity as for TWOPHASE) and starts it waiting for its
    /// migration: the VEE, and where its sender sends it. Nothing stays when it fails.
    pub async fn receive_incoming(
        &self,
        caller: &Caller,
        mut descriptor: VeeDescriptor,
    ) -> Result<(VeeRecord, String, Option<DiskCopy>), CoreError> {
        // On this site's own hosts: a VEE sent here is never passed on to a further site.
        descriptor.sites = vec![self.inner.sites.this().clone()];
        let defined = self
            .initialize(caller, InitModel::Twophase, 1, descriptor)
            .await?
            .remove(0);
        let (seq, guard, record) = self.lock_vee(caller, &defined.id).await?;
        let host = Self::host_of(&record)?;
        let waiting = async {
            let record = self
                .update(seq, Some(format!("receiving a migration on {host}")), |r| {
                    r.phase = Some(Phase::Migrating);
                })
                .await?;
            let (uri, disks) = self.prepare_incoming_on(&host, &record).await?;
            Ok((record, uri, disks))
        };
        match waiting.await {
            Ok(ready) => Ok(ready),
            Err(e) => {
                drop(guard);
                if let Err(left) = self.purge(caller, &defined.id).await {
                    tracing::warn!(vee = %defined.id, error = %left, "cannot purge a VEE that could not receive its migration");
                }
                Err(e)
            }
        }
    }

    /// `POST /vees/{id}/incoming/complete`: runs a VEE whose migration arrived (ACTIVE), or
    /// leaves it `paused` (PAUSED).
    pub async fn complete_incoming(
        &self,
        caller: &Caller,
        id: &VeeId,
        paused: bool,
    ) -> Result<VeeRecord, CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        let waiting = record.state == VmiState::Defined
            && record.reserved
            && record.phase == Some(Phase::Migrating);
        if !waiting {
            return Err(CoreError::WrongState(format!(
                "VEE {id} is {} and waits for no migration",
                record.state
            )));
        }
        let host = Self::host_of(&record)?;
        self.complete_incoming_on(&host, &record.id, paused).await?;
        let h = host.clone();
        let holder = self.holder_at(&host);
        let (state, veem_state, how) = if paused {
            (VmiState::Paused, VeemState::Hold, "paused")
        } else {
            (VmiState::Active, VeemState::Active, "running")
        };
        self.update(seq, Some(format!("migrated in, {how} on {host}")), |r| {
            r.settle(state, veem_state);
            r.host = Some(h);
            r.holder = holder;
            r.reserved = false;
        })
        .await
    }

    /// `POST /vees/{id}/send`: sends the caller's ACTIVE or PAUSED VEE to what a
    /// `POST /vees/incoming` answered at another site. Once it arrived nothing of it runs
    /// here: it is DESTROYED, its disks gone with it, and waits for its purge.
    pub async fn send_out(
        &self,
        caller: &Caller,
        id: &VeeId,
        uri: String,
        disks: Option<DiskCopy>,
    ) -> Result<SentView, CoreError> {
        // Over the network to a destination's listener, never to a socket of this host's.
        if !SEND_SCHEMES.iter().any(|s| uri.starts_with(s)) {
            return Err(CoreError::malformed(
                "uri",
                format!("{uri:?} is not tcp:host:port (what POST /vees/incoming answers)"),
            ));
        }
        if let Some(copy) = &disks {
            if !COPY_SCHEMES.iter().any(|s| copy.address.starts_with(s)) {
                return Err(CoreError::malformed(
                    "disks.address",
                    format!("{:?} is not nbd://host:port", copy.address),
                ));
            }
        }
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        if let Some(site) = &record.site {
            return Err(CoreError::WrongState(format!(
                "VEE {id} runs at site {site}; this VEEM's migration moves it from there"
            )));
        }
        if !matches!(record.state, VmiState::Active | VmiState::Paused) {
            return Err(CoreError::WrongState(format!(
                "VEE {id} is {}; only an ACTIVE or PAUSED VEE is sent",
                record.state
            )));
        }
        let host = Self::host_of(&record)?;
        let sent = self
            .migrate_out_from(&host, &record.id, uri, disks)
            .await?
            .unwrap_or(SentView {
                total_ms: 0,
                downtime_ms: 0,
            });
        self.inner.placer.forget(seq, &record.id);
        let note = format!(
            "sent from {host} to another site in {} ms (downtime {} ms)",
            sent.total_ms, sent.downtime_ms
        );
        self.update(seq, Some(note), |r| {
            r.settle(VmiState::Destroyed, VeemState::Done);
            r.host = None;
        })
        .await?;
        self.wake_placer();
        Ok(sent)
    }

    // ----- the primary: a VEE moved between sites -------------------------------------------

    /// `POST /vees/{id}/migrate` with a site (admin): moves the VEE to `site` (this site's own
    /// name: to its hosts), `live` or paused; it comes back in the state it had. Answers once
    /// it runs (or rests) there.
    pub async fn migrate_to_site(
        &self,
        caller: &Caller,
        id: &VeeId,
        site: &SiteName,
        live: bool,
    ) -> Result<VeeRecord, CoreError> {
        let to = (site != self.inner.sites.this()).then(|| site.clone());
        self.migrate_keeping_state(caller, id, Destination::Site(to), live)
            .await
    }

    /// A migration to `to` (admin) of a VEE that comes back in the state it had: an ACTIVE
    /// or PAUSED VEE moves with its memory, a SUSPENDED one is restored paused where it is,
    /// moved, and suspended again; a DEFINED or DESTROYED one moves only between sites (a
    /// host holds nothing of it).
    pub(super) async fn migrate_keeping_state(
        &self,
        caller: &Caller,
        id: &VeeId,
        to: Destination,
        live: bool,
    ) -> Result<VeeRecord, CoreError> {
        if !caller.admin {
            return Err(CoreError::AccessDenied("migration is for admins".into()));
        }
        match &to {
            Destination::Site(Some(site)) => {
                // Registered and answering, or said at once.
                self.inner.sites.client(site)?;
            }
            Destination::Host(Some(host))
                if !self.inner.hosts.get(host).is_some_and(|e| e.accepts_vees()) =>
            {
                return Err(CoreError::InsufficientResources(format!(
                    "host {host} is not up or takes no new VEEs"
                )));
            }
            _ => {}
        }
        let record = self.inner.records.lookup(caller, id)?;
        match (&to, &record.site) {
            (Destination::Site(to), _) if record.site == *to => return Ok(record),
            (Destination::Host(_), Some(site)) => {
                return Err(CoreError::WrongState(format!(
                    "VEE {id} runs at site {site}; move it between sites (`site`), that site places it on its hosts"
                )))
            }
            _ => {}
        }
        let was = record.state;
        match was {
            VmiState::Active | VmiState::Paused => {}
            VmiState::Suspended => {
                // Its memory is in a file at its site: restored there, paused, it moves as a
                // PAUSED VEE does, and is suspended again at its destination.
                let deadline = Instant::now() + STEP_TIMEOUT;
                self.control(caller, id, ControlAction::Activate, deadline)
                    .await?;
                self.control(
                    caller,
                    id,
                    ControlAction::Pause,
                    Instant::now() + STEP_TIMEOUT,
                )
                .await?;
            }
            VmiState::Defined | VmiState::Destroyed => {
                let Destination::Site(to) = to else {
                    return Err(CoreError::WrongState(format!(
                        "VEE {id} is {was}; no host holds it (it is placed when it is activated)"
                    )));
                };
                let (seq, _guard, record) = self.lock_vee(caller, id).await?;
                return self.move_at_rest(seq, &record, to).await;
            }
            VmiState::Initial => {
                return Err(CoreError::WrongState(format!(
                    "VEE {id} is INITIAL; it moves once it runs or rests"
                )))
            }
        }
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        let outcome = match self.pause_for_move(seq, &record, live).await {
            Ok(paused_for_move) => match to {
                Destination::Site(to) => {
                    self.move_held(seq, &record, to, paused_for_move, was).await
                }
                Destination::Host(to) => {
                    self.move_to_host(seq, &record, to.as_ref(), paused_for_move, was)
                        .await
                }
            },
            Err(e) => Err(e),
        };
        if outcome.is_err() && was == VmiState::Suspended {
            // Back as it was, where it still is.
            if let Some(now) = self.inner.records.get(seq) {
                if now.state == VmiState::Paused {
                    if let Err(e) = self.act_held(seq, ControlAction::Suspend).await {
                        tracing::warn!(vee = %id, error = %e, "cannot suspend again a VEE whose migration failed");
                    }
                }
            }
        }
        outcome
    }

    /// Checks that the VEE (its action lock held) still runs or rests paused, and pauses it
    /// when it is ACTIVE and the move is not `live`: whether it did.
    async fn pause_for_move(
        &self,
        seq: u64,
        record: &VeeRecord,
        live: bool,
    ) -> Result<bool, CoreError> {
        if !matches!(record.state, VmiState::Active | VmiState::Paused) {
            return Err(CoreError::WrongState(format!(
                "VEE {} became {} before its migration",
                record.id, record.state
            )));
        }
        let paused_for_move = !live && record.state == VmiState::Active;
        if paused_for_move {
            self.act_held(seq, ControlAction::Pause).await?;
        }
        Ok(paused_for_move)
    }

    /// A migration between two hosts of this site, the VEE's action lock held: the same agent
    /// steps as between sites, without a destination to keep in the books (the VEE never
    /// leaves this VEEM's hosts: a restart of this VEEM reconciles it where it runs).
    async fn move_to_host(
        &self,
        seq: u64,
        record: &VeeRecord,
        to: Option<&HostId>,
        paused_for_move: bool,
        was: VmiState,
    ) -> Result<VeeRecord, CoreError> {
        let stays_paused = was != VmiState::Active;
        // A SUSPENDED VEE restored on the host it was to go to is there already.
        let there_already =
            was == VmiState::Suspended && to.is_some() && record.host.as_ref() == to;
        if !there_already {
            if let Err(e) = self
                .move_between_hosts(seq, record, to, paused_for_move, stays_paused)
                .await
            {
                self.resume_after_failure(seq, paused_for_move).await;
                return Err(e);
            }
        }
        self.back_as_it_was(seq, was).await
    }

    /// The migration itself, the VEE's action lock held (`paused_for_move` when a cold
    /// migration paused it); `was` is the state it comes back in.
    async fn move_held(
        &self,
        seq: u64,
        record: &VeeRecord,
        to: Option<SiteName>,
        paused_for_move: bool,
        was: VmiState,
    ) -> Result<VeeRecord, CoreError> {
        let (receiver, uri, disks, lans) = match self.receive_at(record, to.as_ref()).await {
            Ok(ready) => ready,
            Err(e) => {
                self.resume_after_failure(seq, paused_for_move).await;
                return Err(e);
            }
        };
        // Where it goes is on record before anything is sent: a restart of this VEEM
        // settles it from there (`settle_migrations`).
        let note = MigrationNote {
            to: receiver.clone(),
            paused_for_move,
            was,
        };
        let noted = self
            .update(seq, Some(format!("migrating to {receiver}")), |r| {
                r.phase = Some(Phase::Migrating);
                r.migration = Some(note);
            })
            .await;
        // From here its phase keeps its LANs at the destination (see `lan_used_at`).
        drop(lans);
        if let Err(e) = noted {
            self.abort_at(&receiver, &record.id).await;
            self.resume_after_failure(seq, paused_for_move).await;
            return Err(e);
        }
        let sent = match self.send_from(record, uri, disks).await {
            Ok(sent) => sent,
            Err(e) => {
                // A source that answered said the VEE stays there; a source site whose answer
                // was lost is asked what it kept: only its word says whether the VEE left it.
                let unanswered = record.site.is_some()
                    && matches!(e, CoreError::SiteUnreachable(_) | CoreError::Timeout(_));
                let kept = if unanswered {
                    self.source_kept(record).await
                } else {
                    Ok(true)
                };
                match kept {
                    Ok(false) => None,
                    Ok(true) => {
                        self.drop_migration(seq, &receiver, paused_for_move).await;
                        return Err(e);
                    }
                    Err(unknown) => {
                        tracing::warn!(vee = %record.id, error = %unknown, %receiver, "whether a VEE left its site is not known yet; its destination waits");
                        self.resolve_later(seq);
                        return Err(e);
                    }
                }
            }
        };
        self.arrive(seq, record, &receiver, sent, was).await
    }

    /// The VEE left its source whole: it runs (or rests paused) at its destination at once,
    /// the books say where it is, and nothing of it is left at the source.
    async fn arrive(
        &self,
        seq: u64,
        record: &VeeRecord,
        receiver: &Receiver,
        sent: Option<SentView>,
        was: VmiState,
    ) -> Result<VeeRecord, CoreError> {
        // A PAUSED (or SUSPENDED) VEE is left paused there: it runs at no moment.
        let paused = matches!(was, VmiState::Paused | VmiState::Suspended);
        let from = match &record.site {
            Some(site) => format!("site {site}"),
            None => format!(
                "host {}",
                record
                    .host
                    .clone()
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            ),
        };
        // It runs there at once: the guest waits for nothing the books do.
        let sent_at = Instant::now();
        let completed = self.complete_at(receiver, &record.id, paused).await;
        let resumed_ms = sent_at.elapsed().as_millis();
        // Tools parse this note: keep its words and their order.
        let note = match sent {
            Some(s) => format!(
                "migrated from {from} to {receiver} in {} ms (downtime {} ms; {} there {resumed_ms} ms after)",
                s.total_ms,
                s.downtime_ms,
                if paused { "paused" } else { "running" }
            ),
            None => format!("migrated from {from} to {receiver}"),
        };
        let running = completed.is_ok();
        let holder = match &receiver {
            Receiver::Host(host) => self.holder_at(host),
            Receiver::Site(..) => None,
        };
        let moved = self
            .update(seq, Some(note), |r| {
                r.migration = None;
                match receiver {
                    Receiver::Host(host) => {
                        r.site = None;
                        r.remote = None;
                        r.host = Some(host.clone());
                        r.holder = holder.clone();
                        match (running, paused) {
                            (true, false) => r.settle(VmiState::Active, VeemState::Active),
                            (true, true) => r.settle(VmiState::Paused, VeemState::Hold),
                            (false, _) => {}
                        }
                    }
                    Receiver::Site(site, remote) => {
                        r.site = Some(site.clone());
                        r.remote = Some(remote.clone());
                        r.host = None;
                        r.holder = None;
                    }
                }
            })
            .await;
        let moved = match moved {
            Ok(moved) => moved,
            Err(e) => {
                // The books cannot say where it is: it runs where it went.
                tracing::error!(vee = %record.id, error = %e, %receiver, "cannot record where a migrated VEE went");
                return Err(e);
            }
        };
        if let Receiver::Host(host) = receiver {
            // Placed there when the migration began; after a restart of this VEEM, again.
            self.inner
                .placer
                .restore(host, std::slice::from_ref(&moved));
        }
        self.leave(seq, record).await;
        match (receiver, completed) {
            (Receiver::Host(_), Ok(())) => {}
            (Receiver::Site(..), Ok(())) => self.read_remote(seq).await?,
            (receiver, Err(e)) => {
                if let Receiver::Site(..) = receiver {
                    self.complete_later(seq);
                }
                // It waits there, whole, for a completion (the destination's word decides).
                let detail =
                    format!("the migration to {receiver} was sent but not completed there: {e}");
                self.update(seq, Some(detail), |r| r.last_error = Some(e.to_string()))
                    .await?;
                return Err(e);
            }
        }
        self.back_as_it_was(seq, was).await
    }

    /// Whether the source still has the VEE (its site holds it running or paused, its host
    /// here an instance of it: the send did not take it), or not (it was sent: DESTROYED or
    /// gone there); an error when the source does not say.
    async fn source_kept(&self, record: &VeeRecord) -> Result<bool, CoreError> {
        if record.site.is_none() {
            // A host of this site: the instance is still there, or it was sent.
            let host = Self::host_of(record)?;
            let request = AgentRequest::Status {
                vee: record.id.clone(),
            };
            return match self.inner.hosts.call(&host, request).await {
                AgentResponse::Error { error }
                    if error.kind == veem_api::agent::AgentErrorKind::NoSuchInstance =>
                {
                    Ok(false)
                }
                answer => agent_result(&host, answer).map(|_| true),
            };
        }
        let (site, remote) = Self::remote_of(record)?;
        let client = self.inner.sites.client(site)?;
        match client.get_vee(remote.as_str()).await {
            Ok(view) => Ok(matches!(view.state, VmiState::Active | VmiState::Paused)),
            Err(e) if e.code() == Some(code::NOT_FOUND) => Ok(false),
            Err(e) => Err(super::federation::site_error(site, e)),
        }
    }

    /// Ends a migration that did not take the VEE from its source: nothing stays at the
    /// destination, and a VEE paused for the move runs again.
    async fn drop_migration(&self, seq: u64, receiver: &Receiver, paused_for_move: bool) {
        self.abort_at(receiver, &VeeId::from_seq(seq)).await;
        let dropped = self
            .update(seq, None, |r| {
                r.phase = None;
                r.migration = None;
            })
            .await;
        if let Err(left) = dropped {
            tracing::warn!(vee = %VeeId::from_seq(seq), error = %left, "cannot record a failed migration");
        }
        self.resume_after_failure(seq, paused_for_move).await;
    }

    /// Settles, once its source answers again, a migration whose send got no answer (or
    /// that a restart of this VEEM cut): tried every [`COMPLETE_RETRY`] for a while, then
    /// again whenever a site answers after a silence (`settle_migrations`). Meanwhile the
    /// destination keeps the VEE waiting, never running (it runs only once told).
    fn resolve_later(&self, seq: u64) {
        let veem = self.clone();
        tokio::spawn(async move {
            for _ in 0..COMPLETE_ATTEMPTS {
                tokio::time::sleep(COMPLETE_RETRY).await;
                if veem.settle_migration(seq).await {
                    return;
                }
            }
        });
    }

    /// Settles every migration the books say is under way (noted before its send): at start
    /// (`retry`: until its source answers, as [`Veem::resolve_later`]), and once more when a
    /// site answers again.
    pub(super) fn settle_migrations(&self, retry: bool) {
        let noted = self.inner.records.ids_where(|r| r.migration.is_some());
        for seq in noted.iter().map(VeeId::seq) {
            if retry {
                self.resolve_later(seq);
            } else {
                let veem = self.clone();
                tokio::spawn(async move { veem.settle_migration(seq).await });
            }
        }
    }

    /// One attempt at settling the migration noted on VEE `seq`, as its send would have: the
    /// source is asked whether it kept the VEE; kept, the destination is dropped (and a VEE
    /// paused for the move runs again); gone, it arrives at its destination. `false` while
    /// the source does not say.
    async fn settle_migration(&self, seq: u64) -> bool {
        let Some(lock) = self.inner.records.op_lock(seq) else {
            return true;
        };
        let _guard = lock.lock_owned().await;
        let Some(record) = self.inner.records.get(seq) else {
            return true;
        };
        // Settled meanwhile (by its own send, or another attempt).
        let Some(note) = record.migration.clone() else {
            return true;
        };
        let settled = match self.source_kept(&record).await {
            Ok(false) => self
                .arrive(seq, &record, &note.to, None, note.was)
                .await
                .map(drop),
            Ok(true) => {
                self.drop_migration(seq, &note.to, note.paused_for_move)
                    .await;
                Ok(())
            }
            Err(e) => {
                tracing::debug!(vee = %record.id, error = %e, "the source of a migration does not answer yet");
                return false;
            }
        };
        if let Err(e) = settled {
            tracing::warn!(vee = %record.id, error = %e, "a migration settled with an error");
        }
        true
    }

    /// Moves a DEFINED or DESTROYED VEE (its action lock held): no memory, only its disks,
    /// each fetched from where it rests (a disk never written, of a VEE never deployed, has no
    /// contents to move) and put at its destination, where it rests in the same state.
    async fn move_at_rest(
        &self,
        seq: u64,
        record: &VeeRecord,
        to: Option<SiteName>,
    ) -> Result<VeeRecord, CoreError> {
        if !matches!(record.state, VmiState::Defined | VmiState::Destroyed) {
            return Err(CoreError::WrongState(format!(
                "VEE {} became {} before its migration",
                record.id, record.state
            )));
        }
        let mut fetched: Vec<(String, std::path::PathBuf)> = Vec::new();
        let moved = async {
            for target in owned_disks(&record.descriptor) {
                let got = match &record.site {
                    Some(_) => self.export_remote_disk(record, target).await,
                    None => self.export_local_disk(record, target).await,
                };
                match got {
                    Ok(path) => fetched.push((target.to_owned(), path)),
                    // Never written: nothing to move.
                    Err(CoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.rest_at(record, to.as_ref(), &fetched).await
        }
        .await;
        for (_, path) in &fetched {
            if let Err(e) = super::remove_file_if_present(path).await {
                tracing::warn!(vee = %record.id, error = %e, "cannot remove a fetched disk");
            }
        }
        let (remote, lans) = moved?;
        let this = self.inner.sites.this();
        let from = match &record.site {
            Some(site) => format!("site {site}"),
            None => format!("site {this}"),
        };
        let dest = match (&to, &remote) {
            (Some(site), Some(remote)) => format!("site {site} as {remote}"),
            _ => format!("site {this}"),
        };
        let note = format!(
            "migrated from {from} to {dest} at rest with {} disk(s)",
            fetched.len()
        );
        let updated = self
            .update(seq, Some(note), |r| {
                r.site = to.clone();
                r.remote = remote.clone();
                r.host = None;
                // Its disks rest at `to`, or on this site's shared storage (`rest_at`).
                r.holder = None;
                r.reserved = false;
            })
            .await;
        // From here its record keeps its LANs at the destination.
        drop(lans);
        if let Err(e) = updated {
            if let (Some(site), Some(remote)) = (&to, &remote) {
                self.release_at(site, std::slice::from_ref(remote)).await;
                self.release_lans_of(site, record).await;
            }
            return Err(e);
        }
        self.leave(seq, record).await;
        if to.is_some() {
            self.read_remote(seq).await?;
        }
        self.inner
            .records
            .get(seq)
            .ok_or_else(|| CoreError::NotFound(format!("VEE {} was purged", record.id)))
    }

    /// Puts a resting VEE's fetched disks at its destination: this site's directory of it, or
    /// a VEE of this VEEM's defined at `site` (DESTROYED there too when it was): its id there.
    /// Nothing stays there when it fails.
    async fn rest_at(
        &self,
        record: &VeeRecord,
        site: Option<&SiteName>,
        disks: &[(String, std::path::PathBuf)],
    ) -> Result<(Option<VeeId>, LanClaim), CoreError> {
        let Some(site) = site else {
            let dir = self.vee_dir(&record.id);
            for (target, path) in disks {
                let disk = veem_layout::disk_path(&dir, target);
                if let Some(parent) = disk.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| CoreError::internal("creating the disk directory", e))?;
                }
                tokio::fs::rename(path, &disk)
                    .await
                    .map_err(|e| CoreError::internal("moving a disk into place", e))?;
            }
            return Ok((None, LanClaim::default()));
        };
        let client = self.inner.sites.client(site)?;
        let (descriptor, lans) = self.descriptor_going_to(site, &client, record).await?;
        let made = match client
            .initialize(&veem_api::InitializeRequest {
                model: InitModel::Besteffort,
                count: 1,
                descriptor,
            })
            .await
        {
            Ok(made) => made,
            Err(e) => {
                drop(lans);
                self.release_lans_of(site, record).await;
                return Err(super::federation::site_error(site, e));
            }
        };
        // A site that answers without the VEE leaves the LAN's copy to the sweep.
        let remote = made
            .vees
            .first()
            .and_then(|v| VeeId::parse(&v.id).ok())
            .ok_or_else(|| {
                CoreError::host_failed(format!("site {site} defined no VEE: {:?}", made.vees))
            })?;
        let filled = async {
            for (target, path) in disks {
                client
                    .upload_disk(remote.as_str(), target, path)
                    .await
                    .map_err(|e| super::federation::site_error(site, e))?;
            }
            if record.state == VmiState::Destroyed {
                let answer = client
                    .update_state(&veem_api::UpdateStateRequest {
                        order: veem_api::Order::List,
                        ids: vec![remote.to_string()],
                        action: ControlAction::Destroy,
                        timeout_ms: None,
                    })
                    .await
                    .map_err(|e| super::federation::site_error(site, e))?;
                if let Some(failed) = answer.failed.first() {
                    return Err(CoreError::host_failed(format!(
                        "site {site}: {}",
                        failed.detail
                    )));
                }
            }
            Ok(())
        };
        match filled.await {
            Ok(()) => Ok((Some(remote), lans)),
            Err(e) => {
                self.release_at(site, std::slice::from_ref(&remote)).await;
                drop(lans);
                self.release_lans_of(site, record).await;
                Err(e)
            }
        }
    }

    /// `record`'s descriptor as it goes to `site` (see [`Veem::descriptor_for_site`]), once the
    /// site has the images it names and its private LANs extend there (on the addresses chosen
    /// here), with the hold that keeps those LANs there until the VEE is on record as going
    /// there (dropped before a failure releases them).
    async fn descriptor_going_to(
        &self,
        site: &SiteName,
        client: &veem_client::Client,
        record: &VeeRecord,
    ) -> Result<(VeeDescriptor, LanClaim), CoreError> {
        let mut descriptor = self.descriptor_for_site(&record.owner, &record.descriptor);
        self.send_images(&record.owner, &descriptor, site, client)
            .await?;
        let lans = self
            .extend_lans(
                site,
                client,
                &record.owner,
                &mut descriptor,
                Some(&record.generated.nics),
            )
            .await?;
        Ok((descriptor, lans))
    }

    /// The LANs extended to `site` for `record`, which did not go there after all, leave it
    /// again unless other VEEs there are on them.
    async fn release_lans_of(&self, site: &SiteName, record: &VeeRecord) {
        self.release_lans_at(site, &network_ids(record), Some(&record.id))
            .await;
    }

    /// `PUT /vees/{id}/disks/{target}`: where the contents of a disk of the caller's DEFINED or
    /// DESTROYED VEE go, once it is one the VEE owns (not a disk used in place, nor a cdrom).
    pub fn disk_to_import(
        &self,
        caller: &Caller,
        id: &VeeId,
        target: &str,
    ) -> Result<std::path::PathBuf, CoreError> {
        let record = self.inner.records.lookup(caller, id)?;
        if let Some(site) = &record.site {
            return Err(CoreError::WrongState(format!(
                "VEE {id} rests at site {site}; its disks are put there"
            )));
        }
        if !matches!(record.state, VmiState::Defined | VmiState::Destroyed) {
            return Err(CoreError::WrongState(format!(
                "VEE {id} is {}; a disk is put in DEFINED or DESTROYED",
                record.state
            )));
        }
        if !owned_disks(&record.descriptor).any(|t| t == target) {
            return Err(CoreError::NotFound(format!(
                "VEE {id} has no disk {target} of its own (a disk used in place and a cdrom are their sources')"
            )));
        }
        if let Some(holder) = &record.holder {
            // It boots from its disks there; one put on the shared storage would be ignored.
            return Err(CoreError::WrongState(format!(
                "VEE {id}'s disks are on host {holder}'s own storage; a disk is put only while they are on the site's shared storage"
            )));
        }
        Ok(veem_layout::disk_path(&self.vee_dir(&record.id), target))
    }

    /// Makes the destination wait for the VEE: a host placed here, or a VEE of this VEEM's at
    /// `site` (sent the images it needs first); with where to send the VEE.
    async fn receive_at(
        &self,
        record: &VeeRecord,
        site: Option<&SiteName>,
    ) -> Result<(Receiver, String, Option<DiskCopy>, LanClaim), CoreError> {
        match site {
            None => {
                let host = self
                    .inner
                    .placer
                    .place(&record.id, demand_of(record))
                    .map_err(placement_error)?;
                match self.prepare_incoming_on(&host, record).await {
                    Ok((uri, disks)) => Ok((Receiver::Host(host), uri, disks, LanClaim::default())),
                    Err(e) => {
                        self.inner.placer.forget(record.id.seq(), &record.id);
                        Err(e)
                    }
                }
            }
            Some(site) => {
                let client = self.inner.sites.client(site)?;
                let (descriptor, lans) = self.descriptor_going_to(site, &client, record).await?;
                let answer = match client.receive_vee(&IncomingRequest { descriptor }).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        drop(lans);
                        self.release_lans_of(site, record).await;
                        return Err(super::federation::site_error(site, e));
                    }
                };
                let remote = VeeId::parse(&answer.vee.id).map_err(|e| {
                    CoreError::host_failed(format!(
                        "site {site} named its incoming VEE {:?}: {e}",
                        answer.vee.id
                    ))
                })?;
                Ok((
                    Receiver::Site(site.clone(), remote),
                    answer.uri,
                    answer.disks,
                    lans,
                ))
            }
        }
    }

    /// Sends the VEE from where it is now.
    async fn send_from(
        &self,
        record: &VeeRecord,
        uri: String,
        disks: Option<DiskCopy>,
    ) -> Result<Option<SentView>, CoreError> {
        match (&record.site, &record.remote) {
            (Some(site), Some(remote)) => {
                let client = self.inner.sites.client(site)?;
                client
                    .send_vee(remote.as_str(), &SendRequest { uri, disks })
                    .await
                    .map(Some)
                    .map_err(|e| super::federation::site_error(site, e))
            }
            _ => {
                let host = Self::host_of(record)?;
                self.migrate_out_from(&host, &record.id, uri, disks).await
            }
        }
    }

    /// Lets the VEE run at its destination once it arrived, or leaves it `paused` there.
    async fn complete_at(
        &self,
        receiver: &Receiver,
        vee: &VeeId,
        paused: bool,
    ) -> Result<(), CoreError> {
        match receiver {
            Receiver::Host(host) => self.complete_incoming_on(host, vee, paused).await,
            Receiver::Site(site, remote) => {
                let client = self.inner.sites.client(site)?;
                client
                    .complete_incoming(remote.as_str(), paused)
                    .await
                    .map(drop)
                    .map_err(|e| super::federation::site_error(site, e))
            }
        }
    }

    /// Undoes a destination that did not get the VEE: nothing of it stays there.
    async fn abort_at(&self, receiver: &Receiver, vee: &VeeId) {
        match receiver {
            Receiver::Host(host) => {
                // It came from another site: all this site has of it is what the move made.
                let request = AgentRequest::Purge { vee: vee.clone() };
                if let Err(e) = agent_result(host, self.inner.hosts.call(host, request).await) {
                    tracing::warn!(%vee, %host, error = %e, "cannot drop a migration's destination on its host");
                }
                self.inner.placer.forget(vee.seq(), vee);
                if let Err(e) = tokio::fs::remove_dir_all(self.vee_dir(vee)).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(%vee, error = %e, "cannot remove a migration's unfinished copy");
                    }
                }
            }
            Receiver::Site(site, remote) => {
                self.release_at(site, std::slice::from_ref(remote)).await;
                if let Some(record) = self.inner.records.get(vee.seq()) {
                    self.release_lans_of(site, &record).await;
                }
            }
        }
    }

    /// Removes what is left of a VEE at the place it left (its record now says where it went),
    /// the LANs extended there for it included.
    async fn leave(&self, seq: u64, left: &VeeRecord) {
        match (&left.site, &left.remote) {
            (Some(site), Some(remote)) => {
                let purged = match self.inner.sites.client(site) {
                    Ok(client) => match client.purge_vee(remote.as_str()).await {
                        Err(e) if e.code() != Some(code::NOT_FOUND) => Err(e.to_string()),
                        _ => Ok(()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = purged {
                    tracing::warn!(vee = %left.id, %site, %remote, error = %e, "cannot purge a migrated VEE at the site it left");
                }
                self.withdraw_lans(left).await;
            }
            _ => {
                self.inner.placer.forget(seq, &left.id);
                // Its disks went with it (the host removed its directory); a memory file or
                // an export may be left.
                let dir = self.vee_dir(&left.id);
                if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(vee = %left.id, error = %e, "cannot remove the directory of a VEE that left");
                    }
                }
                if let (Some(holder), None) = (&left.holder, &left.host) {
                    // It left at rest: its disks were copied from its holder, whose own
                    // storage still has them (a host it ran on removes them itself).
                    let request = AgentRequest::Purge {
                        vee: left.id.clone(),
                    };
                    if let Err(e) =
                        agent_result(holder, self.inner.hosts.call(holder, request).await)
                    {
                        tracing::warn!(vee = %left.id, %holder, error = %e, "cannot remove the disks a VEE that left kept on its holder; they go when it is purged");
                    }
                }
                self.wake_placer();
            }
        }
        // Its accounting listeners here follow it: served by the scheduler here, or relayed
        // from the site it went to.
        self.relay_follow(&left.id).await;
    }

    /// Asks the destination site again, every [`COMPLETE_RETRY`] for a while, to complete a
    /// migration sent there that it could not be told to complete (see `read_remote`); after
    /// that, the site's return after a silence asks it again.
    fn complete_later(&self, seq: u64) {
        let veem = self.clone();
        tokio::spawn(async move {
            for _ in 0..COMPLETE_ATTEMPTS {
                tokio::time::sleep(COMPLETE_RETRY).await;
                let waiting = veem
                    .inner
                    .records
                    .get(seq)
                    .is_some_and(|r| r.phase == Some(Phase::Migrating) && r.site.is_some());
                if !waiting {
                    return;
                }
                if let Err(e) = veem.refresh_remote(seq).await {
                    tracing::debug!(vee = %VeeId::from_seq(seq), error = %e, "a migration still waits for its completion");
                }
            }
        });
    }

    /// A moved VEE, in the state it had: suspended again when it was SUSPENDED.
    async fn back_as_it_was(&self, seq: u64, was: VmiState) -> Result<VeeRecord, CoreError> {
        if was == VmiState::Suspended {
            self.act_held(seq, ControlAction::Suspend).await?;
        }
        self.inner
            .records
            .get(seq)
            .ok_or_else(|| CoreError::NotFound(format!("VEE {} was purged", VeeId::from_seq(seq))))
    }

    /// Resumes at its source a VEE a cold migration paused, when the migration failed.
    async fn resume_after_failure(&self, seq: u64, paused_for_move: bool) {
        if paused_for_move {
            if let Err(e) = self.act_held(seq, ControlAction::Activate).await {
                tracing::warn!(vee = %VeeId::from_seq(seq), error = %e, "cannot resume a VEE whose migration failed");
            }
        }
    }

    /// A control action on a VEE whose action lock the caller holds, here or at its site.
    async fn act_held(&self, seq: u64, action: ControlAction) -> Result<(), CoreError> {
        let record = self.inner.records.get(seq).ok_or_else(|| {
            CoreError::NotFound(format!("VEE {} was purged", VeeId::from_seq(seq)))
        })?;
        if record.site.is_some() {
            return self
                .control_remote(seq, &record, action, Instant::now() + STEP_TIMEOUT)
                .await;
        }
        match action {
            ControlAction::Pause => self.pause_or_resume(seq, &record, true).await,
            // Only a VEE it paused: ACTIVATE resumes it.
            ControlAction::Activate if record.state == VmiState::Paused => {
                self.pause_or_resume(seq, &record, false).await
            }
            ControlAction::Suspend => self.suspend(seq, &record).await,
            other => Err(CoreError::broken(format!(
                "a migration does not {other:?} a VEE"
            ))),
        }
    }
}

/// The targets of the disks a VEE owns (blank ones and clones, in its directory): those a
/// migration moves.
fn owned_disks(descriptor: &VeeDescriptor) -> impl Iterator<Item = &str> {
    descriptor
        .disks
        .iter()
        .filter(|d| d.kind == veem_model::DiskKind::Disk && (d.clone || d.source.is_none()))
        .filter_map(|d| d.target.as_deref())
}
