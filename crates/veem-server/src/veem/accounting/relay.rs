//! Relayed accounting: the listeners at this VEEM (the primary) of VEEs that run at other sites.
//!
//! The primary has no host figures of a remote VEE, so its scheduler makes no record of one.
//! Instead this VEEM is itself the listener of each such VEE at its site (as its principal
//! there), with the callback `…/sites/{name}/inbox/{secret}/accounting`; what the site sends
//! is made a record of the VEE here (its id here, no host: the site's hosts are the site's),
//! stored with one outbox entry per listener here, as the scheduler's records are, and pushed.
//!
//! One interval per (principal, VEE) at a site, several listeners here (an owner and admins):
//! the site is registered with the greatest common divisor of their intervals (the smallest of
//! them when that divisor is below the least interval the VMI takes), see [`site_interval`];
//! each listener here gets the site's records gathered into one per its own interval, see
//! [`gather`]. With one listener, or several of one interval, the site's records go through
//! one for one, on the grid of the registration at the site.
//!
//! Nothing lost, nothing twice: the site stores its records before it sends them, and its
//! outbox sends them again until this VEEM answered, which it does only once the relayed
//! records are durable here (a partition in either direction only delays them). A site's
//! records of one VEE come in order (one grid, one queue per callback), so a record that
//! starts before the end of the last one relayed is a copy and is dropped; after a restart that
//! end is read from the store. A registration is made again at every start of this VEEM and
//! whenever the site answers after a silence; a site keeps a registration made again with the
//! same interval and callback as it was, grid included (see [`Veem::listen`]), so that costs
//! nothing. A DESTROY at the site sends its listeners a last record and removes them there;
//! relayed, it removes the listeners here too, as a local DESTROY does; but not the DESTROY
//! that ends a VEE's stay at a site it migrates away from (its phase here is `migrating`): that
//! last record is relayed in the state the VEE has here, and its listeners follow it.
//!
//! Limits: what a listener whose interval is coarser than the site's has gathered and not yet
//! been sent is kept in memory; a restart of this VEEM loses that part of its next record. A
//! change of the interval registered at the site (a listener here added or removed with another
//! interval) starts the site's grid again, as any registration with a new interval does: the
//! part of the interval under way there is in no record.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use veem_client::ClientError;
use veem_model::{
    AccountingListener, AccountingRecord, Phase, Principal, SiteName, VeeId, VeeRecord, VmiState,
    MAX_ACCOUNTING_INTERVAL_MS, MIN_ACCOUNTING_INTERVAL_MS,
};
use veem_store::Change;

use super::{storing, Registration};
use crate::error::CoreError;
use crate::veem::{federation::site_error, now_ms, Veem};

/// How long a call to a site about a registration may take: a site that is stopped takes
/// connections and answers nothing.
const SITE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The interval this VEEM registers at a site for a VEE whose listeners here have `intervals`:
/// their greatest common divisor, so that each listener's interval is a whole number of the
/// site's records; the smallest of them when that divisor is below the least interval the VMI
/// takes (each listener then gets its records at the first whole number of the site's records
/// that covers its interval). `None` without listeners.
pub(super) fn site_interval(intervals: impl IntoIterator<Item = u64>) -> Option<u64> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let intervals: Vec<u64> = intervals.into_iter().collect();
    let smallest = intervals.iter().copied().min()?;
    let divisor = intervals.iter().copied().fold(0, gcd);
    Some(if divisor >= MIN_ACCOUNTING_INTERVAL_MS {
        divisor
    } else {
        smallest
    })
}

/// Adds a site's `record` to what a listener of `interval_ms` has gathered; answers the record
/// to send once it covers the interval (or the VEE was destroyed: its last record). The record
/// sent starts where the first gathered one starts and ends where the last ends; it sums their
/// CPU time and ACTIVE time, and shows the state, host, CPUs and memory of the last.
pub(super) fn gather(
    gathered: &mut Option<AccountingRecord>,
    record: AccountingRecord,
    interval_ms: u64,
) -> Option<AccountingRecord> {
    let whole = match gathered.take() {
        None => record,
        Some(before) => AccountingRecord {
            dt: (record.t0 + record.dt).saturating_sub(before.t0),
            t0: before.t0,
            cpu_time_ms: before.cpu_time_ms.saturating_add(record.cpu_time_ms),
            active_ms: before.active_ms.saturating_add(record.active_ms),
            ..record
        },
    };
    if whole.dt >= interval_ms || whole.state == VmiState::Destroyed {
        Some(whole)
    } else {
        *gathered = Some(whole);
        None
    }
}

/// Checks a record a site sent: the store keeps times and amounts as signed 64-bit integers.
pub(super) fn check_relayed(record: &AccountingRecord) -> Result<(), (&'static str, String)> {
    let fits = |value: u64| i64::try_from(value).is_ok();
    if record.dt > MAX_ACCOUNTING_INTERVAL_MS {
        return Err((
            "dt",
            format!("{} ms is longer than any interval", record.dt),
        ));
    }
    for (field, value) in [
        ("t0", record.t0.saturating_add(record.dt)),
        ("cpu_time_ms", record.cpu_time_ms),
        ("active_ms", record.active_ms),
        ("memory_mb", record.memory_mb),
    ] {
        if !fits(value) {
            return Err((field, format!("{value} is out of range")));
        }
    }
    Ok(())
}

/// This VEEM's listener at a VEE's site, as registered there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtSite {
    site: SiteName,
    /// The VEE's id at the site.
    remote: VeeId,
    interval_ms: u64,
}

/// A listener here of a remote VEE, and what it has gathered of its next record.
#[derive(Debug, Clone)]
struct Relayed {
    listener: AccountingListener,
    gathered: Option<AccountingRecord>,
}

/// The relay of one remote VEE's records.
#[derive(Default)]
struct Relay {
    /// Its listeners here, one per principal.
    listeners: BTreeMap<Principal, Relayed>,
    /// This VEEM's listener at the VEE's site, once the site took it.
    at_site: Option<AtSite>,
    /// Where the last record relayed ended (the site's clock); `None` until read from the store.
    relayed_until: Option<u64>,
    /// Held while the registration at the site is changed: one change at a time per VEE.
    sync: Arc<tokio::sync::Mutex<()>>,
}

impl Relay {
    /// This VEEM's listener at the site of `record` that its listeners here need.
    fn wanted(&self, record: Option<&VeeRecord>) -> Option<AtSite> {
        let record = record?;
        let (site, remote) = (record.site.as_ref()?, record.remote.as_ref()?);
        let interval_ms = site_interval(self.listeners.values().map(|r| r.listener.interval_ms))?;
        Some(AtSite {
            site: site.clone(),
            remote: remote.clone(),
            interval_ms,
        })
    }
}

/// What a batch of a site's records makes: the records for the listeners here, and each
/// relay's state once they are durable.
struct Relaying {
    /// (listener's principal, its callback, the record).
    out: Vec<(Principal, String, AccountingRecord)>,
    after: Vec<RelayAfter>,
}

/// A relay's state once a batch of its site's records is durable here.
struct RelayAfter {
    seq: u64,
    /// Where the last record relayed ends.
    end: u64,
    /// What each listener has gathered of its next record.
    gathered: Vec<(Principal, Option<AccountingRecord>)>,
    /// Whether the VEE was destroyed: its listeners are removed.
    destroyed: bool,
}

/// The relays of the remote VEEs with listeners here.
pub(super) struct Relays {
    vees: Mutex<HashMap<u64, Relay>>,
    /// One batch of a site's records at a time: each is stored before the next is looked at.
    turn: tokio::sync::Mutex<()>,
    /// Whether the site loop's pass over the registrations is under way.
    syncing: AtomicBool,
}

impl Relays {
    pub(super) fn new(listeners: Vec<AccountingListener>) -> Self {
        let relays = Self {
            vees: Mutex::new(HashMap::new()),
            turn: tokio::sync::Mutex::new(()),
            syncing: AtomicBool::new(false),
        };
        for listener in listeners {
            relays.insert(listener);
        }
        relays
    }

    fn vees(&self) -> MutexGuard<'_, HashMap<u64, Relay>> {
        self.vees
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds (or replaces) a listener of a remote VEE.
    pub(super) fn insert(&self, listener: AccountingListener) {
        self.vees()
            .entry(listener.vee.seq())
            .or_default()
            .listeners
            .insert(
                listener.owner.clone(),
                Relayed {
                    listener,
                    gathered: None,
                },
            );
    }

    /// Takes over a listener the scheduler had, for a VEE that runs at a site now, unless its
    /// principal registered anew meanwhile (the newer registration stands).
    pub(super) fn adopt(&self, listener: AccountingListener) {
        self.vees()
            .entry(listener.vee.seq())
            // Nothing was relayed of it yet: the records the scheduler made here before (the
            // last may end a little after the site's first starts) are not the site's copies.
            .or_insert_with(|| Relay {
                relayed_until: Some(0),
                ..Relay::default()
            })
            .listeners
            .entry(listener.owner.clone())
            .or_insert(Relayed {
                listener,
                gathered: None,
            });
    }

    /// Whether `listener`'s principal listens to its VEE here, as `same` says of that listener.
    pub(super) fn has(
        &self,
        listener: &AccountingListener,
        same: impl Fn(&AccountingListener) -> bool,
    ) -> bool {
        self.vees()
            .get(&listener.vee.seq())
            .and_then(|relay| relay.listeners.get(&listener.owner))
            .is_some_and(|relayed| same(&relayed.listener))
    }

    /// Removes `owner`'s listener of VEE `seq`; whether it had one.
    pub(super) fn remove(&self, owner: &Principal, seq: u64) -> bool {
        self.vees()
            .get_mut(&seq)
            .is_some_and(|relay| relay.listeners.remove(owner).is_some())
    }

    /// Takes every listener of VEE `seq` (which runs here now); the registration at its old
    /// site is ended by [`Veem::relay_sync`].
    fn take_listeners(&self, seq: u64) -> Vec<AccountingListener> {
        self.vees().get_mut(&seq).map_or_else(Vec::new, |relay| {
            std::mem::take(&mut relay.listeners)
                .into_values()
                .map(|r| r.listener)
                .collect()
        })
    }

    /// Forgets a purged VEE (its registration at its site went with it there).
    pub(super) fn forget(&self, seq: u64) {
        self.vees().remove(&seq);
    }

    fn seqs(&self) -> Vec<u64> {
        self.vees().keys().copied().collect()
    }

    fn sync_lock(&self, seq: u64) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.vees().get(&seq).map(|relay| relay.sync.clone())
    }

    /// (what is registered at the site, what is wanted) for VEE `seq`, as it is now `record`.
    fn plan(
        &self,
        seq: u64,
        record: Option<&VeeRecord>,
    ) -> Option<(Option<AtSite>, Option<AtSite>)> {
        let vees = self.vees();
        let relay = vees.get(&seq)?;
        Some((relay.at_site.clone(), relay.wanted(record)))
    }

    /// Notes what the site has now; a relay with neither listeners nor a registration is
    /// dropped.
    fn registered(&self, seq: u64, at_site: Option<AtSite>) {
        let mut vees = self.vees();
        if let Some(relay) = vees.get_mut(&seq) {
            relay.at_site = at_site;
            if relay.at_site.is_none() && relay.listeners.is_empty() {
                vees.remove(&seq);
            }
        }
    }

    /// VEEs of `batches` whose last relayed end is not known yet (after a start).
    fn unknown_ends(&self, seqs: impl Iterator<Item = u64>) -> Vec<u64> {
        let vees = self.vees();
        seqs.filter(|seq| vees.get(seq).is_some_and(|r| r.relayed_until.is_none()))
            .collect()
    }

    fn set_end(&self, seq: u64, end: u64) {
        if let Some(relay) = self.vees().get_mut(&seq) {
            relay.relayed_until.get_or_insert(end);
        }
    }

    /// What the site's `batches` (records of one VEE each, already with the VEE's id here, in
    /// the order sent) make for the listeners here; nothing changes until [`Relays::apply`].
    fn relaying(&self, batches: Vec<(u64, Vec<AccountingRecord>)>) -> Relaying {
        let vees = self.vees();
        let mut relaying = Relaying {
            out: Vec::new(),
            after: Vec::new(),
        };
        for (seq, records) in batches {
            let Some(relay) = vees.get(&seq) else {
                continue;
            };
            let mut end = relay.relayed_until.unwrap_or(0);
            let mut listeners: Vec<(Principal, Relayed)> = relay
                .listeners
                .iter()
                .map(|(owner, r)| (owner.clone(), r.clone()))
                .collect();
            let mut destroyed = false;
            for record in records {
                // A copy of one relayed already (the site sends again what it did not hear
                // acknowledged), or one after the VEE's last.
                if record.t0 < end || destroyed {
                    continue;
                }
                end = record.t0 + record.dt;
                destroyed = record.state == VmiState::Destroyed;
                for (owner, relayed) in &mut listeners {
                    let interval = relayed.listener.interval_ms;
                    if let Some(whole) = gather(&mut relayed.gathered, record.clone(), interval) {
                        relaying.out.push((
                            owner.clone(),
                            relayed.listener.callback.clone(),
                            whole,
                        ));
                    }
                }
            }
            relaying.after.push(RelayAfter {
                seq,
                end,
                gathered: listeners
                    .into_iter()
                    .map(|(owner, r)| (owner, r.gathered))
                    .collect(),
                destroyed,
            });
        }
        relaying
    }

    /// Makes the state [`Relays::relaying`] computed the relays' own, once durable.
    fn apply(&self, after: Vec<RelayAfter>) {
        let mut vees = self.vees();
        for RelayAfter {
            seq,
            end,
            gathered,
            destroyed,
        } in after
        {
            let Some(relay) = vees.get_mut(&seq) else {
                continue;
            };
            relay.relayed_until = Some(end);
            if destroyed {
                // The site removed this VEEM's listener with its last record.
                relay.listeners.clear();
                relay.at_site = None;
                vees.remove(&seq);
                continue;
            }
            for (owner, gathered_now) in gathered {
                if let Some(relayed) = relay.listeners.get_mut(&owner) {
                    relayed.gathered = gathered_now;
                }
            }
        }
    }
}

/// A call to a site about this VEEM's listener there, bounded in time.
async fn at_site<T>(
    site: &SiteName,
    call: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, CoreError> {
    match tokio::time::timeout(SITE_CALL_TIMEOUT, call).await {
        Ok(answer) => answer.map_err(|e| site_error(site, e)),
        Err(_) => Err(CoreError::SiteUnreachable(format!(
            "site {site} did not answer in {} s",
            SITE_CALL_TIMEOUT.as_secs()
        ))),
    }
}

impl Veem {
    /// Puts VEE `seq`'s listeners where its records are made, as it runs now: the scheduler's
    /// book for a VEE on this site's hosts, the relays for one at another site.
    pub(in crate::veem) fn place_listeners(&self, seq: u64) {
        let Some(remote) = self.inner.records.get(seq).map(|r| r.site.is_some()) else {
            return;
        };
        let accounting = &self.inner.accounting;
        if remote {
            let moved = accounting.book().remove_vee(seq);
            for (_, registration) in moved {
                accounting.relays.adopt(registration.listener);
            }
            return;
        }
        let listeners = accounting.relays.take_listeners(seq);
        if listeners.is_empty() {
            return;
        }
        let cpu_time_ms = accounting.cpu_time_ms(seq);
        let (now, now_ms) = (Instant::now(), now_ms());
        {
            let mut book = accounting.book();
            for listener in listeners {
                let key = (listener.owner.clone(), seq);
                // On the grid of its registration, counting CPU time from now on.
                let mut registration = Registration::new(listener, now, now_ms);
                registration.last_cpu_time_ms = cpu_time_ms;
                book.insert(key, registration);
            }
        }
        accounting.wake.notify_one();
    }

    /// Makes the accounting listeners of VEE `id` follow it after it changed site (migration):
    /// at its new site this VEEM registers as their listener and relays what the site sends;
    /// back on this site's hosts, the scheduler makes their records again. The registration
    /// at the site it left is ended where that site answers (the VEE purged there took it
    /// anyway). Call it once the VEE's new place is committed; it takes no lock of the VEE's
    /// (its action lock may be held), only the relays' own.
    pub async fn relay_follow(&self, id: &VeeId) {
        let seq = id.seq();
        self.place_listeners(seq);
        self.relay_sync(seq).await;
    }

    /// Makes this VEEM's listener at VEE `seq`'s site what its listeners here need: made with
    /// the interval they need, moved with the VEE, ended when none is left or the VEE runs
    /// here. A site that does not answer is tried again by the site loop.
    pub(in crate::veem) async fn relay_sync(&self, seq: u64) {
        let relays = &self.inner.accounting.relays;
        let Some(lock) = relays.sync_lock(seq) else {
            return;
        };
        let _turn = lock.lock().await;
        let record = self.inner.records.get(seq);
        let Some((registered, wanted)) = relays.plan(seq, record.as_ref()) else {
            return;
        };
        if registered == wanted {
            relays.registered(seq, registered);
            return;
        }
        let sites = &self.inner.sites;
        // Registered again where it is, a listener changes its interval there; elsewhere, or
        // with no listener left here, the old registration ends.
        let stays = |old: &AtSite| {
            wanted
                .as_ref()
                .is_some_and(|w| (&w.site, &w.remote) == (&old.site, &old.remote))
        };
        if let Some(old) = registered.as_ref().filter(|old| !stays(old)) {
            let moved = wanted.is_some();
            let ended = match sites.client(&old.site) {
                Ok(client) => at_site(&old.site, client.unlisten(&[old.remote.as_str()])).await,
                Err(e) => Err(e),
            };
            match ended {
                Ok(()) => relays.registered(seq, None),
                // Gone there with the VEE.
                Err(CoreError::NotFound(_)) => relays.registered(seq, None),
                // The VEE left that site: its purge there ends the registration anyway.
                Err(e) if moved => {
                    tracing::debug!(vee = %VeeId::from_seq(seq), site = %old.site, error = %e, "cannot end this VEEM's listener at the site a VEE left");
                    relays.registered(seq, None);
                }
                Err(e @ CoreError::SiteUnreachable(_)) => {
                    tracing::debug!(vee = %VeeId::from_seq(seq), site = %old.site, error = %e, "cannot end this VEEM's accounting listener at a site; trying again");
                    return;
                }
                Err(e) => {
                    tracing::warn!(vee = %VeeId::from_seq(seq), site = %old.site, error = %e, "cannot end this VEEM's accounting listener at a site; trying again");
                    return;
                }
            }
        }
        let Some(wanted) = wanted else {
            return;
        };
        let Some(callback) = sites.accounting_inbox(&wanted.site) else {
            return;
        };
        let made = match sites.client(&wanted.site) {
            Ok(client) => {
                at_site(
                    &wanted.site,
                    client.listen(&[wanted.remote.as_str()], wanted.interval_ms, &callback),
                )
                .await
            }
            Err(e) => Err(e),
        };
        match made {
            Ok(()) => {
                tracing::debug!(vee = %VeeId::from_seq(seq), site = %wanted.site, interval_ms = wanted.interval_ms, "accounting relayed from a site");
                relays.registered(seq, Some(wanted));
            }
            // Said once, when the site became unreachable.
            Err(e @ CoreError::SiteUnreachable(_)) => {
                tracing::debug!(vee = %VeeId::from_seq(seq), site = %wanted.site, error = %e, "cannot register this VEEM's accounting listener at a site; trying again");
            }
            Err(e) => {
                tracing::warn!(vee = %VeeId::from_seq(seq), site = %wanted.site, error = %e, "cannot register this VEEM's accounting listener at a site; trying again");
            }
        }
    }

    /// The site loop's pass over the relays: each follows its VEE and is registered where the
    /// site answers (after a start of this VEEM, every registration is made again). One pass
    /// at a time; a pass under way makes the next one skip.
    pub(in crate::veem) fn relay_sync_all(&self) {
        let relays = &self.inner.accounting.relays;
        if relays.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let veem = self.clone();
        tokio::spawn(async move {
            let relays = &veem.inner.accounting.relays;
            let seqs = relays.seqs();
            let passes = seqs.into_iter().map(|seq| {
                let veem = veem.clone();
                async move {
                    // Back on this site's hosts (a VEE placed at a site moves to the relays
                    // at the scheduler's next tick of it).
                    if veem
                        .inner
                        .records
                        .get(seq)
                        .is_some_and(|r| r.site.is_none())
                    {
                        veem.place_listeners(seq);
                    }
                    veem.relay_sync(seq).await;
                }
            });
            futures::future::join_all(passes).await;
            relays.syncing.store(false, Ordering::Release);
        });
    }

    /// What site `site` sent this VEEM's listener there: its records of this VEEM's VEEs
    /// there, relayed to their listeners here with the VEEs' ids here (see the module's
    /// comment). Answers once what it made is durable: only then may the site settle them.
    /// Records of VEEs this VEEM does not place at that site, or no longer listens to, are
    /// ignored.
    pub async fn relay_accounting(
        &self,
        site: &SiteName,
        records: Vec<AccountingRecord>,
    ) -> Result<(), CoreError> {
        let many = records.len() > 1;
        for (i, record) in records.iter().enumerate() {
            check_relayed(record).map_err(|(field, reason)| {
                let field = if many {
                    format!("[{i}].{field}")
                } else {
                    field.to_owned()
                };
                CoreError::malformed(field, reason)
            })?;
        }
        let accounting = &self.inner.accounting;
        let relays = &accounting.relays;
        let _turn = relays.turn.lock().await;
        // Each record as one of the VEE here, per VEE in the order sent.
        let mut batches: BTreeMap<u64, (VeeId, Vec<AccountingRecord>)> = BTreeMap::new();
        for mut record in records {
            let Some(local) = self.inner.records.at_site(site, &record.vee) else {
                continue;
            };
            record.vee = local.id.clone();
            record.host = None;
            if local.phase == Some(Phase::Migrating) && record.state == VmiState::Destroyed {
                // The last record of a VEE that left this site for another: it lives on there,
                // and so do its listeners here.
                record.state = local.state;
            }
            batches
                .entry(local.id.seq())
                .or_insert_with(|| (local.id.clone(), Vec::new()))
                .1
                .push(record);
        }
        for seq in relays.unknown_ends(batches.keys().copied()) {
            let Some((id, records)) = batches.get(&seq) else {
                continue;
            };
            let first = records.iter().map(|r| r.t0).min().unwrap_or(0);
            let stored = self.inner.store.accounting(
                id,
                first.saturating_sub(MAX_ACCOUNTING_INTERVAL_MS),
                u64::MAX,
            )?;
            let end = stored.iter().map(|(_, r)| r.t0 + r.dt).max().unwrap_or(0);
            relays.set_end(seq, end);
        }
        let Relaying { out, after } = relays.relaying(
            batches
                .into_iter()
                .map(|(seq, (_, records))| (seq, records))
                .collect(),
        );
        let entries: Vec<_> = out
            .into_iter()
            .map(|(owner, callback, record)| accounting.entry(&owner, &callback, record))
            .collect();
        let mut changes = Vec::new();
        if !entries.is_empty() {
            changes.extend(storing(&entries));
        }
        for relay in after.iter().filter(|relay| relay.destroyed) {
            changes.extend(
                relay
                    .gathered
                    .iter()
                    .map(|(owner, _)| Change::RemoveListener {
                        owner: owner.clone(),
                        vee: VeeId::from_seq(relay.seq),
                    }),
            );
        }
        if !changes.is_empty() {
            self.inner.committer.commit(changes).await?;
        }
        relays.apply(after);
        accounting.push(entries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(t0: u64, dt: u64, cpu_time_ms: u64, state: VmiState) -> AccountingRecord {
        AccountingRecord {
            vee: VeeId::from_seq(1),
            t0,
            dt,
            state,
            host: None,
            cpu: 1,
            memory_mb: 256,
            cpu_time_ms,
            active_ms: dt,
        }
    }

    #[test]
    fn a_site_is_registered_with_an_interval_every_listener_here_is_a_multiple_of() {
        assert_eq!(site_interval([]), None);
        assert_eq!(site_interval([500]), Some(500));
        assert_eq!(site_interval([1_000, 1_500]), Some(500));
        assert_eq!(site_interval([300, 300, 900]), Some(300));
        // 1,000 and 1,001 have 1 ms in common: below what the VMI takes, so the smallest.
        assert_eq!(site_interval([1_001, 1_000]), Some(1_000));
    }

    #[test]
    fn records_go_through_one_for_one_at_the_sites_interval() {
        let mut gathered = None;
        let r = record(1_000, 500, 7, VmiState::Active);
        assert_eq!(gather(&mut gathered, r.clone(), 500), Some(r));
        assert!(gathered.is_none());
    }

    #[test]
    fn a_coarser_listener_gets_the_sites_records_gathered_into_its_interval() {
        let mut gathered = None;
        assert_eq!(
            gather(
                &mut gathered,
                record(1_000, 500, 7, VmiState::Active),
                1_500
            ),
            None
        );
        assert_eq!(
            gather(
                &mut gathered,
                record(1_500, 500, 3, VmiState::Active),
                1_500
            ),
            None
        );
        let mut paused = record(2_000, 500, 1, VmiState::Paused);
        paused.active_ms = 100;
        let whole = gather(&mut gathered, paused, 1_500).expect("a whole interval");
        assert_eq!(
            (
                whole.t0,
                whole.dt,
                whole.cpu_time_ms,
                whole.active_ms,
                whole.state
            ),
            (1_000, 1_500, 11, 1_100, VmiState::Paused)
        );
        assert!(gathered.is_none(), "the next one starts afresh");
        // A destroyed VEE's last record ends what was gathered, however short.
        gather(
            &mut gathered,
            record(2_500, 500, 2, VmiState::Active),
            1_500,
        );
        let last = gather(
            &mut gathered,
            record(3_000, 120, 0, VmiState::Destroyed),
            1_500,
        )
        .expect("the last record");
        assert_eq!(
            (last.t0, last.dt, last.state),
            (2_500, 620, VmiState::Destroyed)
        );
    }

    #[test]
    fn a_record_sent_again_is_relayed_once() {
        let owner = Principal::new("sm").expect("a name");
        let listener = AccountingListener {
            owner: owner.clone(),
            vee: VeeId::from_seq(1),
            callback: "http://127.0.0.1:1/cb".into(),
            interval_ms: 500,
            registered_ms: 0,
        };
        let relays = Relays::new(vec![listener]);
        relays.set_end(1, 0);
        let first = relays.relaying(vec![(
            1,
            vec![
                record(1_000, 500, 1, VmiState::Active),
                record(1_500, 500, 1, VmiState::Active),
            ],
        )]);
        assert_eq!(first.out.len(), 2);
        relays.apply(first.after);
        // The site did not hear the answer and sends both again, then the next.
        let again = relays.relaying(vec![(
            1,
            vec![
                record(1_000, 500, 1, VmiState::Active),
                record(1_500, 500, 1, VmiState::Active),
                record(2_000, 500, 1, VmiState::Active),
            ],
        )]);
        let t0s: Vec<u64> = again.out.iter().map(|(_, _, r)| r.t0).collect();
        assert_eq!(t0s, [2_000]);
        relays.apply(again.after);
        // Its last record removes the listeners, as a DESTROY here does.
        let last = relays.relaying(vec![(1, vec![record(2_500, 80, 0, VmiState::Destroyed)])]);
        assert_eq!(last.out.len(), 1);
        assert!(last.after[0].destroyed);
        relays.apply(last.after);
        assert!(relays.seqs().is_empty(), "nothing left to relay");
        assert!(!relays.remove(&owner, 1));
    }

    #[test]
    fn a_listener_the_scheduler_hands_over_does_not_replace_a_newer_one() {
        let listener = |interval_ms| AccountingListener {
            owner: Principal::new("sm").expect("a name"),
            vee: VeeId::from_seq(1),
            callback: "http://127.0.0.1:1/cb".into(),
            interval_ms,
            registered_ms: 0,
        };
        let relays = Relays::new(vec![]);
        relays.insert(listener(900));
        relays.adopt(listener(300));
        assert!(relays.has(&listener(900), |l| l.interval_ms == 900));
        relays.insert(listener(600));
        assert!(relays.has(&listener(600), |l| l.interval_ms == 600));
    }

    #[test]
    fn a_record_out_of_range_is_refused_by_its_field() {
        let mut r = record(1_000, 500, 1, VmiState::Active);
        assert!(check_relayed(&r).is_ok());
        r.cpu_time_ms = u64::MAX;
        assert_eq!(check_relayed(&r).map_err(|e| e.0), Err("cpu_time_ms"));
        let mut long = record(1_000, MAX_ACCOUNTING_INTERVAL_MS + 1, 1, VmiState::Active);
        assert_eq!(check_relayed(&long).map_err(|e| e.0), Err("dt"));
        long.dt = 1;
        long.t0 = u64::MAX - 1;
        assert_eq!(check_relayed(&long).map_err(|e| e.0), Err("t0"));
    }
}
