//! Federation: the VEEs this VEEM runs at other sites, as their primary (the paper, sections 1
//! and 2.1). Toward a site this VEEM is an SM: it places a VEE there with TWOPHASE (so a site
//! without room says so at once), forwards every action on it, and takes the site's word for
//! its state, read again whenever the site pushes a change of it (the monitoring subscription
//! this VEEM holds there, see [`Sites`](super::Sites)).
//!
//! Rules kept here:
//! - A VEE is placed in its descriptor's `sites` order (this site's name meaning its local
//!   hosts), else local hosts first and the registered sites in order; one that none takes
//!   waits, its `pending_reason` naming each place tried and why it refused.
//! - Every change of a remote VEE at the primary is the site's: read from it after a push or
//!   after an action forwarded there, never made up here.
//! - An action on a VEE whose site does not answer fails with `site_unreachable`.

use std::collections::BTreeSet;
use std::time::Instant;

use tokio::sync::OwnedMutexGuard;
use veem_api::{
    code, InitializeRequest, ItemFailure, Order, PatchApplied, PatchRequest, UpdateStateRequest,
};
use veem_client::ClientError;
use veem_model::{
    AccountingRecord, ControlAction, DescriptorError, DiskSource, EventType, ImageName, InitModel,
    MonitoringEvent, Phase, Principal, SiteName, VeeDescriptor, VeeId, VeeRecord, VeemState,
};

use super::networks::{owned_tag, LanClaim};
use super::{Routed, Veem};
use crate::auth::Caller;
use crate::error::CoreError;

/// Where a VEE may be placed: the local hosts (`None`) or a registered site.
pub(super) type Target = Option<SiteName>;

/// A site's refusal in the core's words: its problem's code kept, so the caller hears what the
/// site said.
pub(super) fn site_error(site: &SiteName, e: ClientError) -> CoreError {
    let detail = format!("site {site}: {e}");
    match e.code() {
        Some(code::INSUFFICIENT_RESOURCES) => CoreError::InsufficientResources(detail),
        Some(code::WRONG_STATE) => CoreError::WrongState(detail),
        Some(code::NOT_FOUND) => CoreError::NotFound(detail),
        Some(code::PENDING) => CoreError::Pending(detail),
        Some(code::TIMEOUT) => CoreError::Timeout(detail),
        Some(code::IN_USE) => CoreError::InUse(detail),
        Some(code::CONFLICT) => CoreError::Conflict(detail),
        Some(code::MALFORMED_DESCRIPTOR) => {
            CoreError::MalformedDescriptor(DescriptorError::new("descriptor", detail))
        }
        Some(_) => CoreError::host_failed(detail),
        // No problem document: the site did not answer as a VEEM.
        None => CoreError::SiteUnreachable(detail),
    }
}

/// One failed item of a batch call at a site, in the core's words.
fn item_error(site: &SiteName, failure: &ItemFailure) -> CoreError {
    let detail = format!("site {site}: {}", failure.detail);
    match failure.error.as_str() {
        code::INSUFFICIENT_RESOURCES => CoreError::InsufficientResources(detail),
        code::WRONG_STATE => CoreError::WrongState(detail),
        code::NOT_FOUND => CoreError::NotFound(detail),
        code::PENDING => CoreError::Pending(detail),
        code::TIMEOUT => CoreError::Timeout(detail),
        _ => CoreError::host_failed(detail),
    }
}

impl Veem {
    /// Where `record` may be placed, in order of preference.
    pub(super) fn placement_order(&self, record: &VeeRecord) -> Vec<Target> {
        if record.holder.is_some() {
            // Its disks are on one of this site's hosts, which no other site sees.
            return vec![None];
        }
        self.placement_order_of(&record.descriptor)
    }

    /// Where a VEE of `descriptor` may be placed, in order of preference.
    pub(super) fn placement_order_of(&self, descriptor: &VeeDescriptor) -> Vec<Target> {
        let sites = &self.inner.sites;
        if descriptor.sites.is_empty() {
            std::iter::once(None)
                .chain(sites.names().into_iter().map(Some))
                .collect()
        } else {
            descriptor
                .sites
                .iter()
                .map(|s| (s != sites.this()).then(|| s.clone()))
                .collect()
        }
    }

    /// Places a VEE waiting for placement at the first of `order` that takes it (its action
    /// lock held throughout): on a local host it is deployed, at a site reserved there and
    /// submitted. When none takes it, it keeps waiting, saying where it was tried.
    pub(super) async fn place_in_order(
        &self,
        seq: u64,
        guard: OwnedMutexGuard<()>,
        order: Vec<Target>,
    ) {
        let Some(record) = self.inner.records.get(seq) else {
            return;
        };
        if record.veem_state != VeemState::Pending {
            return;
        }
        let mut refusals = Vec::new();
        for target in order {
            match target {
                None => match self.inner.placer.place_vee(&record) {
                    Ok(host) => {
                        let h = host.clone();
                        let placed = self
                            .update(seq, Some(format!("placed on {h}")), |r| {
                                r.veem_state = VeemState::Hold;
                                r.phase = Some(Phase::Booting);
                                r.host = Some(h);
                                r.pending_reason = None;
                            })
                            .await;
                        if let Err(e) = placed {
                            self.inner.placer.release(&record.id);
                            tracing::error!(vee = %record.id, error = %e, "cannot record a placement");
                            return;
                        }
                        self.inner.placer.dequeue(seq);
                        let _ = self.deploy(seq, host, guard, None).await;
                        self.release_lans_waited(&record, None, None).await;
                        return;
                    }
                    Err(e) => refusals.push(format!("local hosts: {e}")),
                },
                Some(site) => match self.deploy_at(&record, &site).await {
                    Ok(remote) => {
                        self.placed_at(seq, &site, remote).await;
                        self.release_lans_waited(&record, Some(&site), None).await;
                        return;
                    }
                    Err(e) => {
                        // A site's own refusal already names it (see `site_error`).
                        let why = e.to_string();
                        let named = format!("site {site}");
                        refusals.push(if why.starts_with(&named) {
                            why
                        } else {
                            format!("{named}: {why}")
                        });
                    }
                },
            }
        }
        let why = refusals.join("; ");
        if record.pending_reason.as_deref() != Some(why.as_str()) {
            if let Err(e) = self
                .update(seq, None, |r| r.pending_reason = Some(why))
                .await
            {
                tracing::warn!(vee = %record.id, error = %e, "cannot record why a VEE waits");
            }
        }
    }

    /// Reserves a host for the VEE at `site` (TWOPHASE there: a site without room refuses at
    /// once) and submits it: its id there. The LANs extended there for it stay while it waits
    /// for that site (see [`Veem::release_lans_at`]): a placement that keeps retrying does not
    /// make and delete their copies at each try.
    async fn deploy_at(&self, record: &VeeRecord, site: &SiteName) -> Result<VeeId, CoreError> {
        let client = self.inner.sites.client(site)?;
        let (mut remote, _held) = self
            .reserve_at(
                site,
                &record.owner,
                &record.descriptor,
                std::slice::from_ref(&record.generated.nics),
            )
            .await?;
        let remote = remote.remove(0);
        let made_id = remote.to_string();
        let submitted = client
            .submit(std::slice::from_ref(&made_id))
            .await
            .map_err(|e| site_error(site, e));
        let refused = match submitted {
            Ok(answer) => answer.failed.first().map(|f| item_error(site, f)),
            Err(e) => Some(e),
        };
        if let Some(e) = refused {
            // Nothing of it stays there.
            if let Err(left) = client.purge_vee(&made_id).await {
                tracing::warn!(%site, vee = %remote, error = %left, "cannot purge a VEE a site did not run");
            }
            return Err(e);
        }
        Ok(remote)
    }

    /// Sends `site` the images the VEE's descriptor names that this VEEM has and the site has
    /// not (streamed from the image store): an `image:` source is resolved at the site.
    pub(super) async fn send_images(
        &self,
        owner: &Principal,
        d: &VeeDescriptor,
        site: &SiteName,
        client: &veem_client::Client,
    ) -> Result<(), CoreError> {
        let mut named: Vec<ImageName> = Vec::new();
        let sources = d.disks.iter().filter_map(|disk| disk.source.as_ref());
        let boot = d
            .boot
            .iter()
            .flat_map(|b| std::iter::once(&b.kernel).chain(&b.initrd));
        for source in sources.chain(boot) {
            if let DiskSource::Image(name) = source {
                if !named.contains(name) {
                    named.push(name.clone());
                }
            }
        }
        for name in &named {
            match client.get_image(name.as_str()).await {
                Ok(_) => continue,
                Err(e) if e.code() == Some(code::NOT_FOUND) => {}
                Err(e) => return Err(site_error(site, e)),
            }
            let images = &self.inner.images;
            // One the VEE's owner cannot use here is the site's to refuse.
            let Some(image) = images.resolve(owner, name) else {
                continue;
            };
            let path = images.local_blob(&image.sha256).await?;
            tracing::info!(%site, image = %name, "sending an image a VEE needs there");
            client
                .push_image(name.as_str(), &path, None)
                .await
                .map_err(|e| site_error(site, e))?;
        }
        Ok(())
    }

    /// Reserves hosts at `site` for VEEs of `owner`'s `descriptor`, one per entry of
    /// `addresses` (the addresses this VEEM chose for each one's NICs), all or none (TWOPHASE
    /// there), once the site has the images it names: their ids there, and the hold on the
    /// private LANs extended there for them (see [`Veem::extend_lans`]), to keep until they
    /// are recorded there. A batch with a NIC on such a LAN is reserved one VEE at a time
    /// (an address fits one VEE), those made purged again if one is refused; on a refusal
    /// the LANs extended for them leave the site unless others need them there.
    pub(super) async fn reserve_at(
        &self,
        site: &SiteName,
        owner: &Principal,
        descriptor: &VeeDescriptor,
        addresses: &[Vec<veem_model::NicAddress>],
    ) -> Result<(Vec<VeeId>, LanClaim), CoreError> {
        let client = self.inner.sites.client(site)?;
        self.send_images(owner, descriptor, site, &client).await?;
        let descriptor = self.descriptor_for_site(owner, descriptor);
        let networks = &self.inner.networks;
        let lans: Vec<u32> = addresses
            .iter()
            .flatten()
            .filter_map(|n| n.network_id)
            .filter(|id| networks.network(*id).is_some_and(|n| !n.public))
            .collect();
        let count = u32::try_from(addresses.len())
            .map_err(|_| CoreError::malformed("count", "too many VEEs for one batch"))?;
        let batches: Vec<(u32, &[veem_model::NicAddress])> = if lans.is_empty() {
            let first = addresses.first().map_or(&[][..], Vec::as_slice);
            vec![(count, first)]
        } else {
            addresses.iter().map(|a| (1, a.as_slice())).collect()
        };
        let mut held = LanClaim::default();
        let mut made: Vec<VeeId> = Vec::with_capacity(addresses.len());
        let reserved: Result<(), CoreError> = async {
            for (count, chosen) in batches {
                let mut descriptor = descriptor.clone();
                held.merge(
                    self.extend_lans(site, &client, owner, &mut descriptor, Some(chosen))
                        .await?,
                );
                self.initialize_at(site, &client, count, descriptor, &mut made)
                    .await?;
            }
            Ok(())
        }
        .await;
        match reserved {
            Ok(()) => Ok((made, held)),
            Err(e) => {
                self.release_at(site, &made).await;
                // Held no more: the LANs extended for these VEEs leave, unless others need them.
                drop(held);
                self.release_lans_at(site, &lans, None).await;
                Err(e)
            }
        }
    }

    /// Whether `site` would take a TWOPHASE batch of `count` VEEs of `owner`'s `descriptor`
    /// now, by its own placement plan (`POST /vees/plan`, asked as an SM would): `Ok` if it
    /// would, else its refusal (`InsufficientResources` with its reason).
    pub(super) async fn plan_at(
        &self,
        site: &SiteName,
        owner: &Principal,
        descriptor: &VeeDescriptor,
        count: u32,
    ) -> Result<(), CoreError> {
        let client = self.inner.sites.client(site)?;
        let plan = client
            .plan(&InitializeRequest {
                model: InitModel::Twophase,
                count,
                descriptor: self.descriptor_for_site(owner, descriptor),
            })
            .await
            .map_err(|e| site_error(site, e))?;
        if plan.feasible {
            return Ok(());
        }
        let why = plan
            .placements
            .into_iter()
            .find_map(|p| p.reason)
            .unwrap_or_else(|| "its plan says the batch does not fit".to_owned());
        Err(CoreError::InsufficientResources(why))
    }

    /// InitializeVEEs TWOPHASE of `count` VEEs of `descriptor` at `site`: adds their ids there
    /// to `made` (also those of an answer that is not whole, so the caller purges them).
    async fn initialize_at(
        &self,
        site: &SiteName,
        client: &veem_client::Client,
        count: u32,
        descriptor: VeeDescriptor,
        made: &mut Vec<VeeId>,
    ) -> Result<(), CoreError> {
        let answer = client
            .initialize(&InitializeRequest {
                model: InitModel::Twophase,
                count,
                descriptor,
            })
            .await
            .map_err(|e| site_error(site, e))?;
        let before = made.len();
        made.extend(answer.vees.iter().filter_map(|v| VeeId::parse(&v.id).ok()));
        if made.len() - before == count as usize && answer.vees.len() == count as usize {
            Ok(())
        } else {
            Err(CoreError::host_failed(format!(
                "site {site} answered InitializeVEEs of {count} with {} VEE(s)",
                answer.vees.len()
            )))
        }
    }

    /// `owner`'s descriptor as it goes to a site: no preference of sites (the site places it
    /// on its own hosts), and its tags marked with its owner.
    pub(super) fn descriptor_for_site(
        &self,
        owner: &Principal,
        descriptor: &VeeDescriptor,
    ) -> VeeDescriptor {
        let mut descriptor = descriptor.clone();
        descriptor.sites.clear();
        // At the site every VEE of this VEEM is the one principal's: its tags are the owner's
        // own there, so one tenant's anti-affinity never binds another's VEEs.
        for tag in descriptor
            .tags
            .iter_mut()
            .chain(descriptor.anti_affinity.iter_mut())
        {
            *tag = owned_tag(owner, tag);
        }
        descriptor
    }

    /// Purges VEEs a site reserved for a batch that failed: nothing of it stays there.
    pub(super) async fn release_at(&self, site: &SiteName, remote: &[VeeId]) {
        let Ok(client) = self.inner.sites.client(site) else {
            tracing::warn!(%site, vees = remote.len(), "cannot release reservations at a site that does not answer");
            return;
        };
        for vee in remote {
            if let Err(e) = client.purge_vee(vee.as_str()).await {
                tracing::warn!(%site, %vee, error = %e, "cannot release a reservation at a site");
            }
        }
    }

    /// Records that VEE `seq` runs at `site` as `remote`, and takes its state there.
    async fn placed_at(&self, seq: u64, site: &SiteName, remote: VeeId) {
        let (s, r) = (site.clone(), remote.clone());
        let placed = self
            .update(
                seq,
                Some(format!("placed at site {site} as {remote}")),
                |record| {
                    record.site = Some(s);
                    record.remote = Some(r);
                    record.host = None;
                    record.veem_state = VeemState::Hold;
                    record.phase = Some(Phase::Booting);
                    record.pending_reason = None;
                },
            )
            .await;
        match placed {
            Ok(_) => {
                self.inner.placer.dequeue(seq);
                // Its accounting listeners here are now served from the site.
                self.place_listeners(seq);
                let veem = self.clone();
                tokio::spawn(async move { veem.relay_sync(seq).await });
                if let Err(e) = self.read_remote(seq).await {
                    tracing::warn!(%site, vee = %remote, error = %e, "cannot read a VEE placed at a site");
                }
            }
            Err(e) => {
                tracing::error!(%site, vee = %remote, error = %e, "cannot record a placement at a site; purging it there");
                if let Ok(client) = self.inner.sites.client(site) {
                    let _ = client.purge_vee(remote.as_str()).await;
                }
            }
        }
    }

    /// Reads a remote VEE's state at its site and makes it the primary's, the VEE's action lock
    /// held by the caller.
    pub(super) async fn read_remote(&self, seq: u64) -> Result<(), CoreError> {
        let Some(record) = self.inner.records.get(seq) else {
            return Ok(());
        };
        let (Some(site), Some(remote)) = (&record.site, &record.remote) else {
            return Ok(());
        };
        if record.migration.is_some() {
            // Leaving that site: where it is, the migration's settling says
            // (`settle_migrations`), not what the site it leaves shows.
            return Ok(());
        }
        let client = self.inner.sites.client(site)?;
        let mut view = client
            .get_vee(remote.as_str())
            .await
            .map_err(|e| site_error(site, e))?;
        if record.phase == Some(Phase::Migrating)
            && view.state == veem_model::VmiState::Defined
            && view.phase == Some(Phase::Migrating)
        {
            // A migration sent there that the site could not be told to complete (it did not
            // answer then): it runs there now if the whole VEE arrived, and only then.
            // The state it had is not known here: left paused if its record says so (a cold
            // move of an ACTIVE VEE then comes back PAUSED: nothing runs that was not asked to).
            view = client
                .complete_incoming(
                    remote.as_str(),
                    record.state == veem_model::VmiState::Paused,
                )
                .await
                .map_err(|e| site_error(site, e))?;
        }
        // The site's descriptor, but for the preference of sites, the tags and the NICs, which
        // are the primary's (the site holds them marked with their owner).
        let mut descriptor = view.descriptor;
        descriptor.sites = record.descriptor.sites.clone();
        descriptor.tags = record.descriptor.tags.clone();
        descriptor.anti_affinity = record.descriptor.anti_affinity.clone();
        // Its NICs too: at the site they name the copies of its owner's LANs (networks.rs).
        descriptor.nics = record.descriptor.nics.clone();
        let same = (
            view.state,
            view.veem_state,
            view.phase,
            &view.pending_reason,
            &view.last_error,
            &descriptor,
        ) == (
            record.state,
            record.veem_state,
            record.phase,
            &record.pending_reason,
            &record.last_error,
            &*record.descriptor,
        );
        if same {
            return Ok(());
        }
        self.update(seq, Some(format!("at site {site}")), |r| {
            r.state = view.state;
            r.veem_state = view.veem_state;
            r.phase = view.phase;
            r.pending_reason = view.pending_reason;
            r.last_error = view.last_error;
            if *r.descriptor != descriptor {
                r.descriptor = std::sync::Arc::new(descriptor);
            }
        })
        .await
        .map(drop)
    }

    /// Reads a remote VEE again once the action on it, if any, is over.
    pub(super) async fn refresh_remote(&self, seq: u64) -> Result<(), CoreError> {
        let Some(lock) = self.inner.records.op_lock(seq) else {
            return Ok(());
        };
        let _guard = lock.lock_owned().await;
        self.read_remote(seq).await
    }

    /// What a site pushed about this VEEM's VEEs there: each VEE a STATE event names is read
    /// again from the site (its STATE events here are this VEEM's own, made as its record
    /// changes); the other events are relayed to this VEEM's subscribers and stream as events
    /// of its VEE: its id here, and FQNs under its prefix here.
    pub fn site_pushed(&self, site: &SiteName, events: Vec<MonitoringEvent>) {
        let mut changed = BTreeSet::new();
        let mut relayed = Vec::new();
        for mut event in events {
            let Some(remote) = event.vee.clone() else {
                continue;
            };
            let Some(record) = self.inner.records.at_site(site, &remote) else {
                continue;
            };
            let local = record.id.clone();
            if event.kind == EventType::State {
                changed.insert(local);
                continue;
            }
            // Without a prefix of its own a VEE's FQNs start with its id: the site's id there.
            if record.descriptor.fqn_prefix.is_none() {
                let (there, here) = (format!("{remote}."), format!("{local}."));
                for m in &mut event.measurements {
                    if let Some(rest) = m.fqn.strip_prefix(&there) {
                        m.fqn = format!("{here}{rest}");
                    }
                }
            }
            event.vee = Some(local);
            relayed.push(Routed {
                owner: record.owner.clone(),
                event,
            });
        }
        self.publish(relayed);
        for id in changed {
            let veem = self.clone();
            tokio::spawn(async move {
                if let Err(e) = veem.refresh_remote(id.seq()).await {
                    tracing::warn!(vee = %id, error = %e, "cannot read a VEE its site changed");
                }
            });
        }
    }

    /// Reads every VEE this VEEM runs at `site` again (once the site answers after a silence).
    pub(super) fn read_all_at(&self, site: &SiteName) {
        for id in self
            .inner
            .records
            .ids_where(|r| r.site.as_ref() == Some(site))
        {
            let veem = self.clone();
            tokio::spawn(async move {
                if let Err(e) = veem.refresh_remote(id.seq()).await {
                    tracing::warn!(vee = %id, error = %e, "cannot read a VEE of a site that answers again");
                }
            });
        }
    }

    /// Whether `secret` opens site `name`'s inbox.
    pub fn is_site_inbox(&self, name: &SiteName, secret: &str) -> bool {
        self.inner.sites.is_inbox(name, secret)
    }

    /// An action on a VEE that runs at another site, forwarded there (its action lock held by
    /// the caller); the VEE's state is the site's afterwards, whatever the answer.
    pub(super) async fn control_remote(
        &self,
        seq: u64,
        record: &VeeRecord,
        action: ControlAction,
        deadline: Instant,
    ) -> Result<(), CoreError> {
        let (site, remote) = Self::remote_of(record)?;
        let client = self.inner.sites.client(site)?;
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1) as u64;
        let answer = client
            .update_state(&UpdateStateRequest {
                order: Order::List,
                ids: vec![remote.to_string()],
                action,
                timeout_ms: Some(timeout_ms),
            })
            .await
            .map_err(|e| site_error(site, e));
        let result = match answer {
            Ok(answer) => answer
                .failed
                .first()
                .map_or(Ok(()), |f| Err(item_error(site, f))),
            Err(e) => Err(e),
        };
        if let Err(e) = self.read_remote(seq).await {
            tracing::warn!(vee = %record.id, error = %e, "cannot read a VEE after an action at its site");
        }
        result
    }

    /// A resize of a VEE that runs at another site, forwarded there (its action lock held by
    /// the caller): the site's answer, and its record as the site has it afterwards.
    pub(super) async fn patch_remote(
        &self,
        seq: u64,
        record: &VeeRecord,
        cpu: Option<u32>,
        memory_mb: Option<u64>,
    ) -> Result<(VeeRecord, PatchApplied), CoreError> {
        let (site, remote) = Self::remote_of(record)?;
        let client = self.inner.sites.client(site)?;
        let answer = client
            .patch_vee(remote.as_str(), &PatchRequest { cpu, memory_mb })
            .await
            .map_err(|e| site_error(site, e))?;
        self.read_remote(seq).await?;
        let now = self
            .inner
            .records
            .get(seq)
            .ok_or_else(|| CoreError::NotFound(format!("VEE {} was purged", record.id)))?;
        Ok((now, answer.applied))
    }

    /// `GET /vees/{id}/accounting`: a VEE's records with `t0` in `[from_ms, to_ms)`, kept here,
    /// or, for a VEE that runs at another site, kept there (with this VEEM's id); while that
    /// site does not answer, those relayed to listeners here (kept here too).
    pub async fn accounting(
        &self,
        caller: &Caller,
        id: &VeeId,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<AccountingRecord>, CoreError> {
        let record = self.inner.records.lookup(caller, id)?;
        if record.site.is_some() {
            match self.accounting_remote(&record, from_ms, to_ms).await {
                Err(CoreError::SiteUnreachable(why)) => {
                    tracing::debug!(vee = %id, why, "accounting read from the relayed records kept here");
                }
                answer => return answer,
            }
        }
        self.accounting_records(caller, id, from_ms, to_ms)
    }

    /// A remote VEE's accounting records, as its site keeps them (with this VEEM's id).
    async fn accounting_remote(
        &self,
        record: &VeeRecord,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<AccountingRecord>, CoreError> {
        let (site, remote) = Self::remote_of(record)?;
        let client = self.inner.sites.client(site)?;
        let there = client
            .vee_accounting(remote.as_str(), Some(from_ms), Some(to_ms))
            .await
            .map_err(|e| site_error(site, e))?;
        Ok(there
            .records
            .into_iter()
            .map(|mut r| {
                // As relayed: the site's hosts are the site's.
                r.vee = record.id.clone();
                r.host = None;
                r
            })
            .collect())
    }

    /// Fetches a disk of a remote VEE from its site into a file of `data_dir/exports` (named as
    /// a local export is, so a crash's leftovers go the same way): its path.
    pub(super) async fn export_remote_disk(
        &self,
        record: &VeeRecord,
        target: &str,
    ) -> Result<std::path::PathBuf, CoreError> {
        let (site, remote) = Self::remote_of(record)?;
        let client = self.inner.sites.client(site)?;
        let exports = self.inner.config.data_dir.join("exports");
        tokio::fs::create_dir_all(&exports)
            .await
            .map_err(|e| CoreError::internal("creating the export directory", e))?;
        let out = exports.join(format!("{}-{target}-{}.qcow2", record.id, super::now_ms()));
        if let Err(e) = client.download_disk(remote.as_str(), target, &out).await {
            // A partial file is nobody's.
            let _ = tokio::fs::remove_file(&out).await;
            return Err(site_error(site, e));
        }
        Ok(out)
    }

    /// Where a remote VEE runs, and its id there.
    pub(super) fn remote_of(record: &VeeRecord) -> Result<(&SiteName, &VeeId), CoreError> {
        match (&record.site, &record.remote) {
            (Some(site), Some(remote)) => Ok((site, remote)),
            _ => Err(CoreError::broken(format!(
                "VEE {} has no site to forward to",
                record.id
            ))),
        }
    }

    /// Purges a remote VEE at its site: nothing of it stays there.
    pub(super) async fn purge_remote(&self, record: &VeeRecord) -> Result<(), CoreError> {
        let (Some(site), Some(remote)) = (&record.site, &record.remote) else {
            // One that waited for other sites leaves them the LANs kept there for it.
            self.release_lans_waited(record, None, Some(&record.id))
                .await;
            return Ok(());
        };
        let client = self.inner.sites.client(site)?;
        match client.purge_vee(remote.as_str()).await {
            // Gone there already (a purge cut short here): nothing is left to remove.
            Ok(()) => {}
            Err(e) if e.code() == Some(code::NOT_FOUND) => {}
            Err(e) => return Err(site_error(site, e)),
        }
        self.withdraw_lans(record).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Principal {
        Principal::new(name).expect("a valid name")
    }

    #[test]
    fn a_tag_goes_to_a_site_marked_with_its_owner_and_fits_a_tag() {
        let (alice, bob) = (principal("alice"), principal("bob"));
        let db = owned_tag(&alice, "db");
        assert!(db.ends_with(":db"), "{db}");
        assert_ne!(db, owned_tag(&bob, "db"), "two owners, two tags");
        assert_eq!(db, owned_tag(&alice, "db"), "stable");
        // The longest owner and tag still make a tag of at most 64 characters, one per tag.
        let long_owner = principal(&"o".repeat(64));
        let (long, other) = ("t".repeat(64), "u".repeat(64));
        let marked = owned_tag(&long_owner, &long);
        assert!(marked.len() <= 64, "{marked}");
        assert_ne!(marked, owned_tag(&long_owner, &other));
        for tag in [db, marked] {
            veem_model::check_word("tags[0]".into(), &tag).expect("a valid tag");
        }
    }
}
