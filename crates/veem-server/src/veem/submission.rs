//! Submission: InitializeVEEs and SubmitVEEs, and the deployment they start.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;
use veem_api::agent::{AgentRequest, BootPlan, DeploySpec, DiskPlan, NicPlan, SourcePlan};
use veem_model::{
    replica_name, ControlAction, DiskSource, HostId, ImageFormat, InitModel, NicAddress, Phase,
    SiteName, VeeDescriptor, VeeEvent, VeeId, VeeRecord, VeemState, VmiState,
};
use veem_placement::{PlacementError, Unplaceable};
use veem_store::Change;

use super::placer::{demand_for, demand_of};
use super::{agent_result, monitoring, now_ms, placement_error, BatchOutcome, Veem};
use crate::auth::Caller;
use crate::error::CoreError;

/// Where a batch of InitializeVEEs is defined: here, or reserved at a site as these VEEs
/// with the addresses chosen for them before (see [`Veem::define_at`]).
enum Where {
    Here,
    At(SiteName, Vec<VeeId>, Vec<Vec<NicAddress>>),
}

/// Where a batch would be reserved now, or why it could not be: see [`Veem::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Whether a TWOPHASE InitializeVEEs of the batch would succeed now.
    pub feasible: bool,
    /// One per VEE of the batch, in its order.
    pub placements: Vec<PlannedVee>,
}

/// Where one VEE of a planned batch would land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVee {
    /// Its position in the batch, from 0.
    pub index: u32,
    /// The name it would get (see [`replica_name`]).
    pub name: String,
    /// This site for local hosts, else the site that would run it; where the batch does not
    /// fit, the first place of its order.
    pub site: SiteName,
    /// The local host; none at a site (its hosts are its own) or where the batch does not fit.
    pub host: Option<HostId>,
    /// Why the batch does not fit, naming each place tried.
    pub reason: Option<String>,
}

/// A place's refusal as a plan tells it: the sentence, without the kind of error.
fn refusal_of(e: CoreError) -> String {
    match e {
        CoreError::InsufficientResources(why) => why,
        other => other.to_string(),
    }
}

/// How long SubmitVEEs waits for a site to activate one of its VEEs there.
const REMOTE_ACTIVATION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The context property that carries a VEE's monitoring token.
pub const MONITORING_TOKEN_PROPERTY: &str = "veem.monitoring.token";

impl Veem {
    /// InitializeVEEs: defines `count` VEEs of `descriptor`. TWOPHASE also reserves a feasible
    /// placement for all of them, or defines nothing.
    pub async fn initialize(
        &self,
        caller: &Caller,
        model: InitModel,
        count: u32,
        mut descriptor: VeeDescriptor,
    ) -> Result<Vec<VeeRecord>, CoreError> {
        self.check_batch(caller, count, &mut descriptor)?;
        // One descriptor for the whole batch, shared by its records.
        let descriptor = Arc::new(descriptor);
        if model == InitModel::Besteffort {
            return self
                .define(caller, model, count, descriptor, Where::Here)
                .await;
        }
        // TWOPHASE: the whole batch reserved at the first place of its order that has room.
        let order = self.placement_order_of(&descriptor);
        if order == [None] {
            return self
                .define(caller, model, count, descriptor, Where::Here)
                .await;
        }
        let mut refusals = Vec::new();
        for target in order {
            let tried = match &target {
                None => {
                    self.define(caller, model, count, descriptor.clone(), Where::Here)
                        .await
                }
                Some(site) => {
                    self.define_at(caller, model, count, descriptor.clone(), site)
                        .await
                }
            };
            match tried {
                Err(CoreError::InsufficientResources(why)) => {
                    let place =
                        target.map_or_else(|| "local hosts".to_owned(), |s| format!("site {s}"));
                    refusals.push(format!("{place}: {why}"));
                }
                other => return other,
            }
        }
        Err(CoreError::InsufficientResources(refusals.join("; ")))
    }

    /// What InitializeVEEs checks of a batch before anything is placed or defined.
    fn check_batch(
        &self,
        caller: &Caller,
        count: u32,
        descriptor: &mut VeeDescriptor,
    ) -> Result<(), CoreError> {
        if count == 0 || count > 10_000 {
            return Err(CoreError::malformed("count", "must be between 1 and 10000"));
        }
        descriptor
            .validate()
            .map_err(CoreError::MalformedDescriptor)?;
        self.inner.sites.check_preference(&descriptor.sites)?;
        // A file: source is refused here, before anything is defined (see `sources`).
        self.inner
            .config
            .file_sources
            .check_descriptor(caller.admin, descriptor)
    }

    /// A placement plan: where a TWOPHASE InitializeVEEs of `count` VEEs of `descriptor` would
    /// reserve them now, all together, or why it could not; changes nothing. The same checks
    /// and the same order of places as [`Veem::initialize`]: local hosts by the placer's own
    /// placement, undone at once ([`Placer::plan_all`](super::placer::Placer::plan_all)); a
    /// site by its own plan, asked as an SM would ([`Veem::plan_at`]). Addresses and images
    /// are not planned: only hosts.
    pub async fn plan(
        &self,
        caller: &Caller,
        count: u32,
        mut descriptor: VeeDescriptor,
    ) -> Result<Plan, CoreError> {
        self.check_batch(caller, count, &mut descriptor)?;
        let this = self.inner.sites.this().clone();
        let name_of = |i: u32| replica_name(&descriptor.name, u64::from(i) + 1, u64::from(count));
        let placements = |site: &SiteName, hosts: Vec<Option<HostId>>, reason: Option<String>| {
            hosts
                .into_iter()
                .zip(0..)
                .map(|(host, index)| PlannedVee {
                    index,
                    name: name_of(index).unwrap_or_else(|| descriptor.name.clone()),
                    site: site.clone(),
                    host,
                    reason: reason.clone(),
                })
                .collect()
        };
        let order = self.placement_order_of(&descriptor);
        let mut refusals = Vec::new();
        for target in &order {
            let tried = match target {
                None => self
                    .plan_here(caller, &descriptor, count)
                    .map(|hosts| placements(&this, hosts.into_iter().map(Some).collect(), None)),
                Some(site) => self
                    .plan_at(site, &caller.principal, &descriptor, count)
                    .await
                    .map(|()| placements(site, vec![None; count as usize], None)),
            };
            match tried {
                Ok(placements) => {
                    return Ok(Plan {
                        feasible: true,
                        placements,
                    })
                }
                // Any refusal of a place is the plan's answer, not the call's: TWOPHASE would
                // go on to the next place.
                Err(why) => {
                    let place = target
                        .as_ref()
                        .map_or_else(|| "local hosts".to_owned(), |s| format!("site {s}"));
                    refusals.push(format!("{place}: {}", refusal_of(why)));
                }
            }
        }
        let first = order.first().cloned().flatten().unwrap_or(this);
        Ok(Plan {
            feasible: false,
            placements: placements(
                &first,
                vec![None; count as usize],
                Some(refusals.join("; ")),
            ),
        })
    }

    /// Where the local hosts would take a batch now, by the placer's dry run, or why they
    /// would not (the VEE that does not fit named by its name in the batch).
    fn plan_here(
        &self,
        caller: &Caller,
        descriptor: &VeeDescriptor,
        count: u32,
    ) -> Result<Vec<HostId>, CoreError> {
        let demands = vec![demand_for(&caller.principal, descriptor); count as usize];
        let first = self.inner.records.next_seq();
        match self
            .inner
            .placer
            .plan_all(first, demands)
            .map_err(placement_error)
        {
            // The refusal names a VEE by the id it would most likely get; the plan's reader
            // knows it by its name.
            Err(CoreError::InsufficientResources(mut why)) => {
                for i in (0..count).rev() {
                    let guessed = VeeId::from_seq(first + u64::from(i));
                    let known = replica_name(&descriptor.name, u64::from(i) + 1, u64::from(count))
                        .unwrap_or_else(|| format!("VEE {i} of the batch"));
                    why = why.replace(guessed.as_str(), &known);
                }
                Err(CoreError::InsufficientResources(why))
            }
            other => other,
        }
    }

    /// TWOPHASE of `count` VEEs of `descriptor` at `site`, all or nothing: their addresses are
    /// chosen first (a private LAN extends to the site with them), then the site reserves
    /// them, then they are defined here. On any failure nothing is left at the site (VEEs,
    /// LAN copies no other VEE needs) and no address stays taken.
    async fn define_at(
        &self,
        caller: &Caller,
        model: InitModel,
        count: u32,
        descriptor: Arc<VeeDescriptor>,
        site: &SiteName,
    ) -> Result<Vec<VeeRecord>, CoreError> {
        let inner = &self.inner;
        // The ids the batch will most likely get: only their MACs' guess, adopted at definition.
        let next = inner.records.next_seq();
        let guessed: Vec<VeeId> = (0..u64::from(count))
            .map(|i| VeeId::from_seq(next + i))
            .collect();
        let chosen = inner
            .networks
            .allocate(&caller.principal, &descriptor, &guessed)?;
        let (remote, held) = match self
            .reserve_at(site, &caller.principal, &descriptor, &chosen)
            .await
        {
            Ok(reserved) => reserved,
            Err(e) => {
                inner.networks.release_chosen(&chosen);
                return Err(e);
            }
        };
        let lans: Vec<u32> = chosen
            .iter()
            .flatten()
            .filter_map(|n| n.network_id)
            .collect();
        // From here the addresses are `define`'s: given back by it if it fails.
        let at = Where::At(site.clone(), remote.clone(), chosen);
        let defined = self.define(caller, model, count, descriptor, at).await;
        // Defined, the VEEs are recorded at the site: the hold on its LANs ends either way.
        drop(held);
        if defined.is_err() {
            self.release_at(site, &remote).await;
            self.release_lans_at(site, &lans, None).await;
        }
        defined
    }

    /// Defines `count` VEEs of `descriptor`: TWOPHASE here reserves their hosts, or defines
    /// nothing; `Where::At` records the VEEs a site reserved for them, with their addresses.
    async fn define(
        &self,
        caller: &Caller,
        model: InitModel,
        count: u32,
        descriptor: Arc<VeeDescriptor>,
        place: Where,
    ) -> Result<Vec<VeeRecord>, CoreError> {
        let now = now_ms();
        let inner = &self.inner;
        let (records, reserved, committed) =
            inner.records.with_new_ids(u64::from(count), |first| {
                let mut records: Vec<VeeRecord> = (0..u64::from(count))
                    .map(|i| {
                        let mut record = VeeRecord::defined(
                            VeeId::from_seq(first + i),
                            caller.principal.clone(),
                            descriptor.clone(),
                            model,
                            now,
                        );
                        record.generated.name =
                            replica_name(&descriptor.name, i + 1, u64::from(count));
                        record
                    })
                    .collect();
                let ids: Vec<VeeId> = records.iter().map(|r| r.id.clone()).collect();
                let addresses = match &place {
                    Where::At(_, _, chosen) => inner.networks.adopt(chosen.clone(), &ids),
                    Where::Here => inner
                        .networks
                        .allocate(&caller.principal, &descriptor, &ids)?,
                };
                for (record, nics) in records.iter_mut().zip(addresses) {
                    record.generated.nics = nics;
                    record.monitoring_token = Some(format!(
                        "{:016x}{:016x}",
                        rand::random::<u64>(),
                        rand::random::<u64>()
                    ));
                }
                let mut reserved = Vec::new();
                match (&place, model) {
                    (Where::At(site, remote, _), _) => {
                        for (record, remote) in records.iter_mut().zip(remote) {
                            record.site = Some(site.clone());
                            record.remote = Some(remote.clone());
                        }
                    }
                    (Where::Here, InitModel::Twophase) => {
                        let batch = records
                            .iter()
                            .map(|r| (r.id.clone(), demand_of(r)))
                            .collect();
                        let hosts = match inner.placer.place_all(batch) {
                            Ok(hosts) => hosts,
                            Err(e) => {
                                inner.networks.release(&records);
                                return Err(placement_error(e));
                            }
                        };
                        for (record, host) in records.iter_mut().zip(hosts) {
                            record.host = Some(host);
                            record.reserved = true;
                            reserved.push(record.id.clone());
                        }
                    }
                    (Where::Here, InitModel::Besteffort) => {}
                }
                let detail = match (&place, model) {
                    (Where::Here, InitModel::Besteffort) => "initialized (BESTEFFORT)".to_owned(),
                    (Where::Here, InitModel::Twophase) => "initialized (TWOPHASE)".to_owned(),
                    (Where::At(site, _, _), _) => format!("initialized (TWOPHASE at site {site})"),
                };
                let mut changes = Vec::with_capacity(records.len() * 2);
                for r in &records {
                    changes.push(Change::InsertVee(r.clone()));
                    changes.push(Change::AppendEvent(VeeEvent {
                        vee: r.id.clone(),
                        t_ms: now,
                        from: None,
                        to: VmiState::Defined,
                        veem_state: VeemState::Stopped,
                        host: None,
                        detail: Some(detail.clone()),
                    }));
                }
                // Queued while the ids are held: ids reach the store in the order taken. From
                // here on the ids are used up, even if the commit fails: an id is never handed
                // out twice.
                let committed = inner.committer.enqueue(changes);
                Ok((records, reserved, committed))
            })?;
        if let Err(e) = committed.await {
            inner.placer.release_all(&reserved);
            inner.networks.release(&records);
            return Err(e);
        }
        inner.records.insert(&records);
        let events = records
            .iter()
            .map(|r| monitoring::state_event(r, VmiState::Defined, now))
            .collect();
        self.publish(events);
        Ok(records)
    }

    /// SubmitVEEs: each DEFINED VEE is deployed now if placeable, else queued for placement.
    /// The ids are a set: an id named twice is submitted once (and answered once).
    pub async fn submit(&self, caller: &Caller, ids: &[VeeId]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let mut held = Vec::with_capacity(ids.len());
        let mut seen = BTreeSet::new();
        for id in ids {
            let locked = match self.inner.records.lookup(caller, id) {
                // Its lock is already held by this call: taking it again would wait forever.
                Ok(_) if !seen.insert(id.seq()) => continue,
                Ok(_) => match self.inner.records.op_lock(id.seq()) {
                    Some(lock) => Ok(lock.lock_owned().await),
                    None => Err(CoreError::NotFound(format!("no VEE {id}"))),
                },
                Err(e) => Err(e),
            };
            match locked {
                Ok(guard) => held.push((id.clone(), guard)),
                Err(e) => outcome.failed.push((id.clone(), e)),
            }
        }
        for (id, result) in self.start_deploys(held).await {
            match result {
                Ok(()) => outcome.ok.push(id),
                Err(e) => outcome.failed.push((id, e)),
            }
        }
        outcome
    }

    /// Moves DEFINED VEEs, whose action locks the caller holds, to INITIAL: each is placed and
    /// deployed (in a task of its own, which outlives the caller's request) or queued for
    /// placement. All of them are recorded in one transaction.
    pub(super) async fn start_deploys(
        &self,
        held: Vec<(VeeId, OwnedMutexGuard<()>)>,
    ) -> Vec<(VeeId, Result<(), CoreError>)> {
        let inner = &self.inner;
        let mut results = Vec::with_capacity(held.len());
        let mut staged = Vec::new();
        // (id, guard, host if placed, whether placement was reserved, where else it may go)
        let mut started = Vec::new();
        for (id, guard) in held {
            let seq = id.seq();
            let Some(record) = inner.records.get(seq) else {
                results.push((id.clone(), Err(CoreError::NotFound(format!("no VEE {id}")))));
                continue;
            };
            if record.site.is_some() {
                // It lives at another site: ACTIVATE is that site's to do.
                let deadline = std::time::Instant::now() + REMOTE_ACTIVATION_WAIT;
                let forwarded = self
                    .control_remote(seq, &record, ControlAction::Activate, deadline)
                    .await;
                results.push((id, forwarded));
                continue;
            }
            if record.state != VmiState::Defined {
                results.push((
                    id.clone(),
                    Err(CoreError::WrongState(format!(
                        "VEE {id} is {}, not DEFINED",
                        record.state
                    ))),
                ));
                continue;
            }
            let order = self.placement_order(&record);
            let placed = if record.reserved {
                Ok(record
                    .host
                    .clone()
                    .expect("a reserved VEE records its host"))
            } else if order.first() == Some(&None) {
                inner.placer.place_vee(&record)
            } else {
                Err(PlacementError::Unplaceable(Unplaceable {
                    reason: "its sites come before the local hosts".to_owned(),
                }))
            };
            // Where it goes when the local hosts cannot take it now.
            let elsewhere =
                (!record.reserved && order.iter().any(Option::is_some)).then_some(order);
            let (change, host) = match placed {
                Ok(host) => {
                    let h = host.clone();
                    let change = inner
                        .records
                        .stage(seq, Some(format!("placed on {h}")), |r| {
                            r.state = VmiState::Initial;
                            r.veem_state = VeemState::Hold;
                            r.phase = Some(Phase::Booting);
                            r.host = Some(h);
                            r.reserved = false;
                            r.pending_reason = None;
                            r.last_error = None;
                            r.restarts = 0;
                        });
                    (change, Some(host))
                }
                Err(PlacementError::Unplaceable(u)) => {
                    let change = inner.records.stage(seq, Some(u.reason.clone()), |r| {
                        r.state = VmiState::Initial;
                        r.veem_state = VeemState::Pending;
                        r.phase = Some(Phase::Placing);
                        r.pending_reason = Some(u.reason);
                        r.last_error = None;
                        r.restarts = 0;
                    });
                    (change, None)
                }
                Err(e) => {
                    results.push((id, Err(placement_error(e))));
                    continue;
                }
            };
            if let Some(change) = change {
                staged.push(change);
                started.push((id, guard, host, record.reserved, elsewhere));
            }
        }
        if started.is_empty() {
            return results;
        }
        if let Err(e) = self.commit(staged).await {
            for (id, _, host, reserved, _) in started {
                if host.is_some() && !reserved {
                    inner.placer.release(&id);
                }
                results.push((id, Err(e.clone())));
            }
            return results;
        }
        let mut queued = false;
        for (id, guard, host, _, elsewhere) in started {
            let seq = id.seq();
            match (host, elsewhere) {
                (Some(host), _) => {
                    inner.records.set_last_failure(seq, None);
                    let veem = self.clone();
                    tokio::spawn(async move { veem.deploy(seq, host, guard, None).await });
                }
                (None, Some(order)) => {
                    inner.placer.enqueue(seq);
                    let veem = self.clone();
                    tokio::spawn(async move { veem.place_in_order(seq, guard, order).await });
                }
                (None, None) => {
                    inner.placer.enqueue(seq);
                    drop(guard);
                    queued = true;
                }
            }
            results.push((id, Ok(())));
        }
        if queued {
            self.wake_placer();
        }
        results
    }

    /// Deploys (or, with `memory_file`, restores) a placed VEE on `host`, then records ACTIVE; on
    /// failure frees the host and records the failure (DEFINED for a deployment, SUSPENDED for a
    /// restore: nothing is lost).
    pub(super) async fn deploy(
        &self,
        seq: u64,
        host: HostId,
        _guard: OwnedMutexGuard<()>,
        memory_file: Option<PathBuf>,
    ) -> Result<VeeRecord, CoreError> {
        let record = match self.inner.records.get(seq) {
            Some(record) => record,
            None => {
                return Err(CoreError::NotFound(format!(
                    "VEE {} was purged",
                    VeeId::from_seq(seq)
                )))
            }
        };
        let result = match self.deploy_spec_for(&record, &host).await {
            Ok(mut spec) => {
                spec.stale_own_dir = record.holder.as_ref() != Some(&host);
                let request = match &memory_file {
                    Some(f) => AgentRequest::Restore {
                        spec,
                        memory_file: f.clone(),
                    },
                    None => AgentRequest::Deploy { spec },
                };
                let response = self.inner.hosts.call(&host, request).await;
                agent_result(&host, response).map(|_| ())
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                let h = host.clone();
                let holder = self.holder_at(&host);
                self.update(seq, Some(format!("running on {h}")), |r| {
                    r.settle(VmiState::Active, VeemState::Active);
                    r.host = Some(h);
                    r.holder = holder;
                    r.has_saved_memory = false;
                })
                .await
            }
            Err(e)
                if self
                    .inner
                    .hosts
                    .get(&host)
                    .is_some_and(|h| h.lost.is_some()) =>
            {
                // The host was lost during the call: whether the instance started there is
                // unknown. The VEE stays on that host in the books, so the host-loss loop places
                // it again elsewhere (a restore stays SUSPENDED), and the fence ends whatever
                // the host made of it if it comes back.
                tracing::warn!(vee = %record.id, %host, error = %e, "host lost during the deployment; it is placed again");
                Err(e)
            }
            Err(e) => {
                let failure = match (&e, &memory_file) {
                    (CoreError::NotFound(_), _) | (_, Some(_)) => e.clone(),
                    _ => CoreError::deployment_failed(e.clone()),
                };
                tracing::warn!(vee = %record.id, %host, error = %failure, "deployment failed");
                self.inner.placer.release(&record.id);
                let message = failure.to_string();
                // Nothing is lost: a failed restore is still SUSPENDED, a failed deployment DEFINED.
                let (state, veem_state) = if memory_file.is_some() {
                    (VmiState::Suspended, VeemState::Suspended)
                } else {
                    (VmiState::Defined, VeemState::Stopped)
                };
                let updated = self
                    .update(seq, Some(message.clone()), |r| {
                        r.settle(state, veem_state);
                        r.host = None;
                        r.last_error = Some(message);
                    })
                    .await;
                self.inner
                    .records
                    .set_last_failure(seq, Some(failure.clone()));
                self.wake_placer();
                updated.and(Err(failure))
            }
        }
    }

    /// Resolves a VEE's disks and context into what a host needs.
    pub(super) fn deploy_spec(&self, record: &VeeRecord) -> Result<DeploySpec, CoreError> {
        let d = &record.descriptor;
        let mut disks = Vec::with_capacity(d.disks.len());
        for disk in &d.disks {
            let target = disk.target.clone().unwrap_or_default();
            let (source, source_format) = match &disk.source {
                None => (None, None),
                Some(source) => {
                    let (path, format) =
                        self.resolve_source(record, source, &format!("disk {target}"))?;
                    (Some(path), format)
                }
            };
            disks.push(DiskPlan {
                target,
                source,
                source_format,
                size_gb: disk.size_gb,
                clone: disk.clone,
                kind: disk.kind,
            });
        }
        let mut properties = d.context.properties.clone();
        // A probe or agent in the guest puts monitoring events about this VEE with it.
        if let Some(token) = &record.monitoring_token {
            properties.insert(MONITORING_TOKEN_PROPERTY.to_owned(), token.clone());
        }
        let mut nics = Vec::with_capacity(d.nics.len());
        for n in &d.nics {
            let target = n.target.clone().unwrap_or_default();
            let chosen = record.generated.nics.iter().find(|g| g.target == target);
            let network = chosen
                .and_then(|g| g.network_id)
                .and_then(|id| self.inner.networks.network(id));
            if let (Some(chosen), Some(network)) = (chosen, &network) {
                // The guest learns its addresses from its context (see the veem-guest crate).
                let key = |what: &str| format!("veem.nic.{target}.{what}");
                properties.insert(key("mac"), chosen.mac.clone());
                if let Some(ip) = &chosen.ip {
                    properties.insert(key("ip"), ip.clone());
                    properties.insert(key("prefix"), network.cidr.prefix().to_string());
                }
            }
            nics.push(NicPlan {
                target,
                network: n.network.clone(),
                mac: chosen.map(|g| g.mac.clone()),
                lan: network
                    .as_ref()
                    .map(|network| self.inner.networks.lan_plan(network)),
            });
        }
        let ovf_env = match (&d.context.ovf_env, properties.is_empty()) {
            (Some(doc), _) => Some(doc.clone()),
            (None, false) => Some(veem_ovf::write_ovf_env(record.id.as_str(), &properties)),
            (None, true) => None,
        };
        let boot = match &d.boot {
            None => None,
            Some(boot) => Some(Box::new(BootPlan {
                kernel: self.resolve_source(record, &boot.kernel, "boot kernel")?.0,
                initrd: match &boot.initrd {
                    Some(initrd) => Some(self.resolve_source(record, initrd, "boot initrd")?.0),
                    None => None,
                },
                cmdline: boot.cmdline.clone(),
            })),
        };
        Ok(DeploySpec {
            vee: record.id.clone(),
            name: record.name().to_owned(),
            cpu: d.cpu,
            cpu_max: d.cpu_ceiling(),
            memory_mb: d.memory_mb,
            memory_max_mb: d.memory_ceiling_mb(),
            disks,
            nics,
            hypervisor: d.hypervisor.clone(),
            raw: d.raw.clone(),
            ovf_env,
            vee_dir: self.vee_dir(&record.id),
            // Set per host by `deploy`, which knows where it goes.
            stale_own_dir: false,
            boot,
        })
    }

    /// [`Veem::deploy_spec`] as `host` reads it: an in-process host reads an image's bytes
    /// from this front-end's file of their digest (made from the shared store first if need
    /// be); a remote host fetches them over HTTP, by digest (`SourcePlan::Image`).
    pub(super) async fn deploy_spec_for(
        &self,
        record: &VeeRecord,
        host: &HostId,
    ) -> Result<DeploySpec, CoreError> {
        let mut spec = self.deploy_spec(record)?;
        let remote = self
            .inner
            .hosts
            .get(host)
            .and_then(|entry| entry.link)
            .is_some_and(|link| link.kind() == "remote");
        if remote {
            return Ok(spec);
        }
        let mut sources: Vec<&mut SourcePlan> = Vec::new();
        for disk in &mut spec.disks {
            if let (Some(SourcePlan::Image { .. }), false, veem_model::DiskKind::Disk) =
                (&disk.source, disk.clone, disk.kind)
            {
                // A record from before images were shared by digest (descriptors refuse it
                // since): the digest's file is never written in place.
                return Err(CoreError::malformed(
                    format!("disk {}", disk.target),
                    "an image's bytes are shared by digest and never written in place; clone must be true",
                ));
            }
            sources.extend(disk.source.as_mut());
        }
        if let Some(boot) = spec.boot.as_deref_mut() {
            sources.push(&mut boot.kernel);
            sources.extend(boot.initrd.as_mut());
        }
        for source in sources {
            if let SourcePlan::Image { sha256, .. } = source {
                *source = SourcePlan::file(self.inner.images.local_blob(sha256).await?);
            }
        }
        Ok(spec)
    }

    /// Where the bytes of an image or URL the VEE's descriptor names for `what` (e.g. `disk
    /// vda`) come from, and their format when the image store knows it. A `file:` source is
    /// judged again here, for the VEE's owner (see `sources`): the file may have changed since
    /// the VEE was initialized.
    fn resolve_source(
        &self,
        record: &VeeRecord,
        source: &DiskSource,
        what: &str,
    ) -> Result<(SourcePlan, Option<ImageFormat>), CoreError> {
        match source {
            DiskSource::Image(name) => {
                let images = &self.inner.images;
                let image = images.resolve(&record.owner, name).ok_or_else(|| {
                    CoreError::NotFound(format!(
                        "image {name} ({what}) is not in {}'s image store nor among the shared images",
                        record.owner
                    ))
                })?;
                if image.sha256.is_empty() {
                    return Err(CoreError::NotFound(format!(
                        "image {name} ({what}) has lost its bytes; upload it again"
                    )));
                }
                // Where each host reads it is decided per host (`sources_for`).
                Ok((
                    SourcePlan::Image {
                        sha256: image.sha256,
                        size_bytes: image.size_bytes,
                        cached: None,
                    },
                    Some(image.format),
                ))
            }
            DiskSource::Url(url) => {
                let owner_is_admin = self.inner.config.admins.contains(&record.owner);
                match self
                    .inner
                    .config
                    .file_sources
                    .resolve(owner_is_admin, source, what)?
                {
                    Some(path) => Ok((SourcePlan::file(path), None)),
                    None => Ok((
                        SourcePlan::Fetch {
                            url: url.clone(),
                            cached: None,
                        },
                        None,
                    )),
                }
            }
        }
    }
}
