//! Accounting (sections 2.5.1 and 2.7.3 of the paper): listeners registered per (principal,
//! VEE), sent what the VEE used at exactly their interval, and the figures that go into it.
//!
//! Timing: a listener's ticks fall at `registered + k * interval` on a monotonic clock, whether
//! or not anything changed (both clocks are read together at registration); one scheduler
//! task wakes [`BUILD_LEAD`] before the earliest tick, builds the records of every tick then
//! due, waits for the tick and hands each callback its records of that moment in one push (a
//! JSON array). A late tick is still sent, never skipped; after a restart of the
//! VEEM the ticks go on on the same grid (those that fell while it was down are not sent).
//! Every record is also stored, so `GET /vees/{id}/accounting` reads what a listener could not
//! be sent.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use veem_api::agent::InstanceStatus;
use veem_model::{
    active_ms_within, AccountingListener, AccountingRecord, Principal, VeeId, VeeRecord, VmiState,
    MAX_ACCOUNTING_INTERVAL_MS, MIN_ACCOUNTING_INTERVAL_MS,
};
use veem_store::Change;

use super::monitoring::{hardware_event, Routed};
use super::*;
use crate::push::{check_callback, PushConfig, Pusher};

/// How long before a tick its records are built, so that they go out at the tick itself. A
/// state change within this lead shows in the next record.
const BUILD_LEAD: Duration = Duration::from_millis(3);
/// ACTIVE periods kept per VEE: enough for the longest interval.
const ACTIVITY_KEPT_MS: u64 = MAX_ACCOUNTING_INTERVAL_MS + 60_000;

/// A VEE's ACTIVE periods, `(start, end)` (`end` `None` while ACTIVE), oldest first.
type Periods = Vec<(u64, Option<u64>)>;

struct Registration {
    listener: AccountingListener,
    /// The monotonic instant of `listener.registered_ms`.
    anchor: Instant,
    /// The tick to send next: it ends the interval `[k - 1, k)`.
    next_k: u64,
    due: Instant,
    /// The VEE's CPU time as last sent (its instance's count), to send the difference.
    last_cpu_time_ms: Option<u64>,
}

impl Registration {
    fn new(listener: AccountingListener, now: Instant, now_ms: u64) -> Self {
        let interval = listener.interval_ms;
        let since = now_ms.saturating_sub(listener.registered_ms);
        let anchor = now.checked_sub(Duration::from_millis(since)).unwrap_or(now);
        // The first tick still to come (after a restart: not those that fell while down).
        let next_k = since / interval + 1;
        Self {
            due: anchor + Duration::from_millis(next_k * interval),
            listener,
            anchor,
            next_k,
            last_cpu_time_ms: None,
        }
    }

    fn t0(&self) -> u64 {
        self.listener.registered_ms + (self.next_k - 1) * self.listener.interval_ms
    }

    fn advance(&mut self) {
        self.next_k += 1;
        self.due = self.anchor + Duration::from_millis(self.next_k * self.listener.interval_ms);
    }
}

type Key = (Principal, u64);

#[derive(Default)]
struct Book {
    registrations: HashMap<Key, Registration>,
    due: BTreeSet<(Instant, Key)>,
}

impl Book {
    fn insert(&mut self, key: Key, registration: Registration) {
        if let Some(old) = self.registrations.remove(&key) {
            self.due.remove(&(old.due, key.clone()));
        }
        self.due.insert((registration.due, key.clone()));
        self.registrations.insert(key, registration);
    }

    fn remove(&mut self, key: &Key) -> Option<Registration> {
        let old = self.registrations.remove(key)?;
        self.due.remove(&(old.due, key.clone()));
        Some(old)
    }

    /// Removes every registration of one VEE; answers them.
    fn remove_vee(&mut self, seq: u64) -> Vec<(Key, Registration)> {
        let keys: Vec<Key> = self
            .registrations
            .keys()
            .filter(|(_, s)| *s == seq)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| Some((key.clone(), self.remove(&key)?)))
            .collect()
    }
}

/// Listeners, their schedule, and the figures records are made of.
pub(super) struct Accounting {
    book: Mutex<Book>,
    wake: Notify,
    pusher: Pusher<AccountingRecord>,
    /// What hosts last reported of each VEE.
    observed: Mutex<HashMap<u64, InstanceStatus>>,
    /// Each VEE's ACTIVE periods, `(start, end)`, newest last.
    activity: Mutex<HashMap<u64, Periods>>,
}

impl Accounting {
    pub(super) fn new(
        listeners: Vec<AccountingListener>,
        records: &[VeeRecord],
        push: PushConfig,
    ) -> Self {
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut book = Book::default();
        for listener in listeners {
            if listener.interval_ms == 0 {
                continue;
            }
            let key = (listener.owner.clone(), listener.vee.seq());
            book.insert(key, Registration::new(listener, now, now_ms));
        }
        // A VEE found ACTIVE is counted ACTIVE from its last change on.
        let activity = records
            .iter()
            .filter(|r| r.state == VmiState::Active)
            .map(|r| (r.id.seq(), vec![(r.updated_ms, None)]))
            .collect();
        Self {
            book: Mutex::new(book),
            wake: Notify::new(),
            pusher: Pusher::new(push),
            observed: Mutex::new(HashMap::new()),
            activity: Mutex::new(activity),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn observed(&self) -> MutexGuard<'_, HashMap<u64, InstanceStatus>> {
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn activity(&self) -> MutexGuard<'_, HashMap<u64, Periods>> {
        self.activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a VEE's change of state at `t_ms` for its ACTIVE time.
    pub(super) fn state_changed(&self, seq: u64, state: VmiState, t_ms: u64) {
        let mut activity = self.activity();
        let periods = activity.entry(seq).or_default();
        let open = periods.last().is_some_and(|(_, end)| end.is_none());
        match (state == VmiState::Active, open) {
            (true, false) => periods.push((t_ms, None)),
            (false, true) => {
                if let Some(last) = periods.last_mut() {
                    last.1 = Some(t_ms);
                }
            }
            _ => {}
        }
        let horizon = t_ms.saturating_sub(ACTIVITY_KEPT_MS);
        periods.retain(|(_, end)| end.is_none_or(|end| end >= horizon));
    }

    pub(super) fn forget(&self, seq: u64) {
        self.activity().remove(&seq);
        self.observed().remove(&seq);
        self.book().remove_vee(seq);
    }

    /// The VEE's CPU time so far on its current instance, if a host reported it.
    fn cpu_time_ms(&self, seq: u64) -> Option<u64> {
        self.observed().get(&seq).map(|status| status.cpu_time_ms)
    }
}

/// The record of one VEE over `[t0, t0 + dt)`; `last_cpu` is the CPU time sent last.
fn record_of(
    record: &VeeRecord,
    t0: u64,
    dt: u64,
    cpu_now: Option<u64>,
    last_cpu: &mut Option<u64>,
    periods: &[(u64, Option<u64>)],
) -> AccountingRecord {
    let holds_host = matches!(record.state, VmiState::Active | VmiState::Paused);
    let cpu_time_ms = match (holds_host, cpu_now, *last_cpu) {
        (true, Some(now), Some(before)) if now >= before => now - before,
        // A new instance (a restart, a migration): its count starts again.
        (true, Some(now), _) => now,
        _ => 0,
    };
    *last_cpu = if holds_host { cpu_now } else { None };
    AccountingRecord {
        vee: record.id.clone(),
        t0,
        dt,
        state: record.state,
        host: record.host.clone(),
        cpu: record.descriptor.cpu,
        memory_mb: record.descriptor.memory_mb,
        cpu_time_ms,
        active_ms: active_ms_within(periods, t0, t0 + dt),
    }
}

/// The records of one moment: per callback to push, and all of them to store.
#[derive(Default)]
struct Outbox {
    per_callback: HashMap<String, Vec<AccountingRecord>>,
    stored: Vec<(Principal, AccountingRecord)>,
}

impl Outbox {
    fn add(&mut self, owner: &Principal, callback: &str, record: AccountingRecord) {
        self.per_callback
            .entry(callback.to_owned())
            .or_default()
            .push(record.clone());
        self.stored.push((owner.clone(), record));
    }
}

impl Veem {
    /// Registers the caller as the accounting listener of `ids` at `interval_ms`: all or
    /// nothing (an unknown id is `not_found`, another's VEE `access_denied`).
    pub async fn listen(
        &self,
        caller: &Caller,
        ids: &[String],
        interval_ms: u64,
        callback: &str,
    ) -> Result<(), CoreError> {
        check_callback(callback).map_err(|reason| CoreError::malformed("callback", reason))?;
        if !(MIN_ACCOUNTING_INTERVAL_MS..=MAX_ACCOUNTING_INTERVAL_MS).contains(&interval_ms) {
            return Err(CoreError::malformed(
                "interval_ms",
                format!(
                    "must be between {MIN_ACCOUNTING_INTERVAL_MS} and {MAX_ACCOUNTING_INTERVAL_MS}, not {interval_ms}"
                ),
            ));
        }
        let vees = self.lookup_all(caller, ids)?;
        // Both clocks are read at the same moment, before the commit (an fsync): the ticks fall
        // on the registration's grid, as its `registered_ms` says, not a commit later.
        let (now, registered_ms) = (Instant::now(), now_ms());
        let listeners: Vec<AccountingListener> = vees
            .into_iter()
            .map(|vee| AccountingListener {
                owner: caller.principal.clone(),
                vee,
                callback: callback.to_owned(),
                interval_ms,
                registered_ms,
            })
            .collect();
        self.commit_changes(listeners.iter().cloned().map(Change::PutListener).collect())
            .await?;
        {
            let accounting = &self.inner.accounting;
            // Read before the book is taken: the scheduler takes the figures, then the book.
            let cpu_times: Vec<Option<u64>> = listeners
                .iter()
                .map(|l| accounting.cpu_time_ms(l.vee.seq()))
                .collect();
            let mut book = accounting.book();
            for (listener, cpu_time_ms) in listeners.into_iter().zip(cpu_times) {
                let key = (listener.owner.clone(), listener.vee.seq());
                // Read at `registered_ms`, its first tick is one interval away; it counts the
                // CPU time used from now on, not since the instance started.
                let mut registration = Registration::new(listener, now, registered_ms);
                registration.last_cpu_time_ms = cpu_time_ms;
                book.insert(key, registration);
            }
        }
        self.inner.accounting.wake.notify_one();
        Ok(())
    }

    /// Removes the caller's listeners of `ids` (those it has; the others are ignored), all or
    /// nothing as [`Veem::listen`].
    pub async fn unlisten(&self, caller: &Caller, ids: &[String]) -> Result<(), CoreError> {
        let vees = self.lookup_all(caller, ids)?;
        let changes = vees
            .iter()
            .map(|vee| Change::RemoveListener {
                owner: caller.principal.clone(),
                vee: vee.clone(),
            })
            .collect();
        self.commit_changes(changes).await?;
        let mut book = self.inner.accounting.book();
        for vee in vees {
            book.remove(&(caller.principal.clone(), vee.seq()));
        }
        Ok(())
    }

    /// Resolves every id or fails with the first that cannot be: nothing is done for any.
    fn lookup_all(&self, caller: &Caller, ids: &[String]) -> Result<Vec<VeeId>, CoreError> {
        if ids.is_empty() {
            return Err(CoreError::malformed("ids", "name at least one VEE"));
        }
        ids.iter()
            .map(|id| self.lookup(caller, id).map(|(_, record)| record.id))
            .collect()
    }

    /// A VEE's accounting records with `t0` in `[from_ms, to_ms)`, sent or not.
    pub fn accounting_records(
        &self,
        caller: &Caller,
        id: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<AccountingRecord>, CoreError> {
        let (_, record) = self.lookup(caller, id)?;
        let records = self.inner.store.accounting(&record.id, from_ms, to_ms)?;
        Ok(records
            .into_iter()
            .filter(|(owner, _)| {
                caller.admin || owner == &caller.principal || record.owner == caller.principal
            })
            .map(|(_, r)| r)
            .collect())
    }

    /// The scheduler: sends every listener's records at its ticks.
    pub(super) async fn accounting_loop(self) {
        let accounting = &self.inner.accounting;
        loop {
            let next = accounting.book().due.first().map(|(due, _)| *due);
            match next {
                Some(due) => {
                    // Woken a little early, the records are ready when their tick comes.
                    let wake_at = due.checked_sub(BUILD_LEAD).unwrap_or(due);
                    tokio::select! {
                        () = tokio::time::sleep_until(wake_at.into()) => {}
                        () = accounting.wake.notified() => continue,
                    }
                }
                None => {
                    accounting.wake.notified().await;
                    continue;
                }
            }
            let woke = Instant::now();
            let (outbox, last_due) = self.due_records(woke + BUILD_LEAD);
            let built = woke.elapsed();
            if let Some(last_due) = last_due {
                tokio::time::sleep_until(last_due.into()).await;
            }
            let late = last_due.map_or(Duration::ZERO, |due| {
                Instant::now().saturating_duration_since(due)
            });
            self.deliver(outbox);
            tracing::debug!(
                built_us = built.as_micros() as u64,
                late_us = late.as_micros() as u64,
                "accounting tick sent"
            );
        }
    }

    /// Builds the records of every tick due by `horizon`; answers them and the latest of
    /// those ticks, which they are not to be sent before.
    fn due_records(&self, horizon: Instant) -> (Outbox, Option<Instant>) {
        let mut last_due = None;
        let accounting = &self.inner.accounting;
        let mut outbox = Outbox::default();
        {
            let state = self.state();
            let observed = accounting.observed();
            let activity = accounting.activity();
            let mut book = accounting.book();
            while let Some((due, key)) = book.due.first().cloned() {
                if due > horizon {
                    break;
                }
                book.due.pop_first();
                last_due = Some(due);
                let Some(slot) = state.vees.get(&key.1) else {
                    book.registrations.remove(&key);
                    continue;
                };
                let Some(registration) = book.registrations.get_mut(&key) else {
                    continue;
                };
                let t0 = registration.t0();
                let cpu_now = observed.get(&key.1).map(|status| status.cpu_time_ms);
                let periods = activity.get(&key.1).map_or(&[][..], Vec::as_slice);
                let record = record_of(
                    &slot.record,
                    t0,
                    registration.listener.interval_ms,
                    cpu_now,
                    &mut registration.last_cpu_time_ms,
                    periods,
                );
                outbox.add(&key.0, &registration.listener.callback, record);
                registration.advance();
                let next = registration.due;
                book.due.insert((next, key));
            }
        }
        (outbox, last_due)
    }

    /// Pushes each callback its records (one push each) and stores them all.
    fn deliver(&self, outbox: Outbox) {
        let Outbox {
            per_callback,
            stored,
        } = outbox;
        for (callback, records) in per_callback {
            self.inner.accounting.pusher.push(&callback, records);
        }
        if !stored.is_empty() {
            let veem = self.clone();
            tokio::spawn(async move { veem.store_accounting(stored).await });
        }
    }

    /// Stores records, leaving out those of VEEs purged meanwhile (the store refuses records of
    /// a VEE it no longer holds, and a purge may land between a tick and its write).
    async fn store_accounting(&self, mut records: Vec<(Principal, AccountingRecord)>) {
        for attempt in 1..=2 {
            {
                let state = self.state();
                records.retain(|(_, r)| state.vees.contains_key(&r.vee.seq()));
            }
            if records.is_empty() {
                return;
            }
            match self
                .commit_changes(vec![Change::AppendAccounting(records.clone())])
                .await
            {
                Ok(()) => return,
                Err(e) if attempt == 1 => {
                    tracing::debug!(error = %e, "storing accounting records again without purged VEEs")
                }
                Err(e) => tracing::error!(error = %e, "cannot store accounting records"),
            }
        }
    }

    /// DESTROY ends a VEE's accounting: each listener gets a last record, up to now, and is
    /// removed.
    pub(super) fn final_accounting(&self, seq: u64, t_ms: u64) {
        let accounting = &self.inner.accounting;
        let mut outbox = Outbox::default();
        let mut removed = Vec::new();
        {
            let state = self.state();
            let Some(slot) = state.vees.get(&seq) else {
                return;
            };
            let cpu_now = accounting.cpu_time_ms(seq);
            let activity = accounting.activity();
            let periods = activity.get(&seq).map_or(&[][..], Vec::as_slice);
            let registrations = accounting.book().remove_vee(seq);
            for (key, mut registration) in registrations {
                let t0 = registration.t0();
                let record = record_of(
                    &slot.record,
                    t0,
                    t_ms.saturating_sub(t0),
                    cpu_now,
                    &mut registration.last_cpu_time_ms,
                    periods,
                );
                outbox.add(&key.0, &registration.listener.callback, record);
                removed.push(Change::RemoveListener {
                    owner: key.0,
                    vee: slot.record.id.clone(),
                });
            }
        }
        self.deliver(outbox);
        if !removed.is_empty() {
            let veem = self.clone();
            tokio::spawn(async move {
                if let Err(e) = veem.commit_changes(removed).await {
                    tracing::error!(error = %e, "cannot remove the listeners of a destroyed VEE");
                }
            });
        }
    }

    /// Keeps what hosts report of their VEEs (for accounting and HARDWARE events) and publishes
    /// what the guests' agents reported.
    pub(super) fn observe_instances(&self, instances: &[InstanceStatus]) {
        let mut agent = Vec::new();
        {
            let state = self.state();
            let mut observed = self.inner.accounting.observed();
            for status in instances {
                let seq = status.vee.seq();
                let Some(slot) = state.vees.get(&seq).filter(|s| s.record.id == status.vee) else {
                    continue;
                };
                if !status.agent_reports.is_empty() {
                    agent.extend(monitoring::agent_events(&slot.record, status));
                }
                observed.insert(seq, status.clone());
            }
        }
        self.publish(agent);
    }

    /// The VEEM's HARDWARE events: every `interval`, one per ACTIVE VEE a host reported.
    pub(super) async fn hardware_loop(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // (time of the last sample, CPU time then) per VEE.
        let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = now_ms();
            let mut events: Vec<Routed> = Vec::new();
            {
                let state = self.state();
                let observed = self.inner.accounting.observed();
                last.retain(|seq, _| state.vees.contains_key(seq));
                for (seq, seen) in observed.iter() {
                    let Some(slot) = state.vees.get(seq) else {
                        continue;
                    };
                    if slot.record.state != VmiState::Active {
                        last.remove(seq);
                        continue;
                    }
                    let cpu = seen.cpu_time_ms;
                    let (t0, cpu_before) = last
                        .get(seq)
                        .copied()
                        .unwrap_or((now.saturating_sub(interval.as_millis() as u64), cpu));
                    let used = if cpu >= cpu_before {
                        cpu - cpu_before
                    } else {
                        cpu
                    };
                    events.push(hardware_event(
                        &slot.record,
                        seen,
                        t0,
                        now.saturating_sub(t0),
                        used,
                    ));
                    last.insert(*seq, (now, cpu));
                }
            }
            self.publish(events);
        }
    }
}
