//! Accounting (sections 2.5.1 and 2.7.3 of the paper): listeners registered per (principal,
//! VEE), sent what the VEE used at exactly their interval, and the figures that go into it.
//!
//! Timing: a listener's ticks fall at `registered + k * interval` on a monotonic clock, whether
//! or not anything changed (both clocks are read together at registration); one scheduler
//! task wakes a lead before the earliest tick, builds the records of that tick (and of those
//! within [`SEND_GROUPING`] after it) and starts storing them; they wait for their tick and
//! each callback gets its records of that moment in one push (a JSON array). The lead is what
//! storing takes (measured per record, [`STORE_COST_MARGIN`] times that allowed for) for every
//! record due within [`MAX_STORE_LEAD`], as the commits of close ticks queue one behind the
//! other, plus [`SEND_GROUPING`]; at most [`MAX_STORE_LEAD`] plus that, which bounds how old
//! a record's state can be. A late tick is still sent, never skipped; after a restart of the
//! VEEM the ticks go on on the same grid (those that fell while it was down are not sent).
//!
//! Durability (the accounting outbox): a record is stored before any listener can see it. The
//! records of a tick are committed (through the committer, as every change) together with one
//! outbox entry each, and handed to the pusher only once that is durable; a DESTROY's last
//! records are committed in the DESTROY's own transaction. So whatever a listener received is
//! readable with `GET /vees/{id}/accounting`, also after a kill -9. The pusher reports each
//! POST a listener acknowledged, and those entries are settled (removed) while the next POST
//! is under way, before the one after it goes out (ahead of the records waiting to be
//! committed, so that the pusher does not wait behind them); after a restart the entries left
//! are pushed again, in order. Delivery is at least once: the records of the last two POSTs to
//! a callback before a crash (the one in flight, the one acknowledged just before whose
//! settlement was not yet durable) can arrive twice, and a listener tells them apart by their
//! (vee, t0). A record the push queue's bound drops is settled too (it is counted in the
//! pusher's `dropped` and logged), so a dead listener does not grow the outbox without bound;
//! it stays readable with GET like every record.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use veem_api::agent::InstanceStatus;
use veem_model::{
    active_ms_within, AccountingListener, AccountingRecord, Principal, VeeId, VeeRecord, VmiState,
    MAX_ACCOUNTING_INTERVAL_MS, MIN_ACCOUNTING_INTERVAL_MS,
};
use veem_store::{Change, OutboxEntry};

use super::monitoring::{self, hardware_event, Routed};
use super::{now_ms, Veem};
use crate::auth::Caller;
use crate::committer::Committer;
use crate::error::CoreError;
use crate::push::{check_callback, PushConfig, Pusher, Receipts};

mod relay;

/// Ticks this close together go out in one push, at the later one. It is also the least lead
/// with which records are built before their tick.
const SEND_GROUPING: Duration = Duration::from_millis(3);
/// The most by which records are built ahead of their tick, however slow storing them is: the
/// state a record shows is the state this long before its tick, at worst.
const MAX_STORE_LEAD: Duration = Duration::from_millis(30);
/// What storing one record (with its outbox entry) is taken to cost until it was measured, ns.
const FIRST_STORE_NS_PER_RECORD: u64 = 5_000;
/// How many times the measured cost of storing a record the lead allows for: from one commit
/// to the next, on a machine shared with other work, the cost varies by about that much.
const STORE_COST_MARGIN: u64 = 2;
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

/// An accounting record on its way to a listener. Only the record is sent; the id of its
/// outbox entry comes back with the pusher's receipt.
struct Outgoing {
    id: u64,
    record: AccountingRecord,
}

impl Serialize for Outgoing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.record.serialize(serializer)
    }
}

fn ids(items: &[Arc<Outgoing>]) -> Vec<u64> {
    items.iter().map(|item| item.id).collect()
}

/// Settles the outbox entries of what the pusher delivered or dropped.
struct OutboxReceipts {
    committer: Committer,
}

impl Receipts<Outgoing> for OutboxReceipts {
    fn delivered(&self, callback: &str, items: Vec<Arc<Outgoing>>) -> BoxFuture<'static, ()> {
        let settled = self
            .committer
            .enqueue_ahead(vec![Change::SettleAccounting(ids(&items))]);
        let callback = callback.to_owned();
        Box::pin(async move {
            if let Err(e) = settled.await {
                // Left in the outbox, they are sent again after a restart: at least once.
                tracing::error!(callback, error = %e, "cannot settle delivered accounting records");
            }
        })
    }

    fn dropped(&self, callback: &str, items: Vec<Arc<Outgoing>>) {
        let settled = self
            .committer
            .enqueue_ahead(vec![Change::SettleAccounting(ids(&items))]);
        let callback = callback.to_owned();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = settled.await {
                    tracing::error!(callback, error = %e, "cannot settle dropped accounting records");
                }
            });
        }
    }
}

/// Records on their way: stored first, then pushed, in the order made.
struct Delivery {
    segments: Vec<Segment>,
    /// Resolves once every segment's records are durable (with their outbox entries).
    durable: BoxFuture<'static, Result<(), CoreError>>,
    /// Whether `durable` is a commit of these records alone, which can be tried again without
    /// the VEEs purged meanwhile; a DESTROY's records share the DESTROY's commit instead.
    own_commit: bool,
}

/// Records pushed together: the ticks within [`SEND_GROUPING`] of each other.
struct Segment {
    /// Not sent before this: the last of their ticks.
    not_before: Option<Instant>,
    entries: Vec<OutboxEntry>,
}

/// The next estimate of a cost after `before`, when it cost `took`: a higher cost is taken at
/// once; a lower one lowers the estimate by an eighth per measure, at most down to it.
fn decaying_max(before: u64, took: u64) -> u64 {
    took.max(before - before / 8)
}

/// How long before the first of the ticks `due` its records are built, when storing a record
/// costs `ns_per_record` ([`STORE_COST_MARGIN`] times that is allowed for): long enough for every record due in the next [`MAX_STORE_LEAD`] to
/// be stored by its tick when they are stored one tick after another (the commits of records
/// are queued in order; with ticks close together, a tick's records wait for those of the
/// ticks before it), plus [`SEND_GROUPING`]. At most [`MAX_STORE_LEAD`] plus that.
fn build_lead(due: &BTreeSet<(Instant, Key)>, ns_per_record: u64) -> Duration {
    let Some(&(first, _)) = due.first() else {
        return SEND_GROUPING;
    };
    let mut needed = Duration::ZERO;
    for (records, (tick, _)) in (1u64..).zip(due) {
        let after_first = tick.saturating_duration_since(first);
        if after_first > MAX_STORE_LEAD {
            break;
        }
        // Stored by `tick` if storing starts this long before the first tick.
        let storing = Duration::from_nanos(
            records
                .saturating_mul(ns_per_record)
                .saturating_mul(STORE_COST_MARGIN),
        );
        needed = needed.max(storing.saturating_sub(after_first));
    }
    SEND_GROUPING + needed.min(MAX_STORE_LEAD)
}

/// Every entry of `segments`, in order.
fn entries_of(segments: &[Segment]) -> Vec<OutboxEntry> {
    segments
        .iter()
        .flat_map(|s| s.entries.iter().cloned())
        .collect()
}

/// The changes that store `entries` and queue them in the outbox.
fn storing(entries: &[OutboxEntry]) -> Vec<Change> {
    vec![
        Change::AppendAccounting(
            entries
                .iter()
                .map(|e| (e.owner.clone(), e.record.clone()))
                .collect(),
        ),
        Change::QueueAccounting(entries.to_vec()),
    ]
}

/// A DESTROY's last records, made before its commit: the records and the listeners' removal go
/// into the commit, and the records are pushed once it is durable.
pub(super) struct Closing {
    pub(super) changes: Vec<Change>,
    /// The listeners taken out of the schedule, put back if the commit fails.
    removed: Vec<(Key, Registration)>,
    durable: oneshot::Sender<Result<(), CoreError>>,
}

/// Listeners, their schedule, and the figures records are made of.
pub(super) struct Accounting {
    book: Mutex<Book>,
    wake: Notify,
    pusher: Pusher<Outgoing>,
    /// The id of the next outbox entry.
    next_entry: AtomicU64,
    /// Records to store and push, in the order they were made; the delivery task takes the
    /// receiving end when the background tasks start.
    deliveries: mpsc::UnboundedSender<Delivery>,
    pending_deliveries: Mutex<Option<mpsc::UnboundedReceiver<Delivery>>>,
    /// What the outbox held at start, to push again first.
    backlog: Mutex<Vec<OutboxEntry>>,
    /// How long storing a record (with its outbox entry) took lately, in ns: a decaying
    /// maximum of what the commits of records cost, divided by their records.
    store_ns_per_record: AtomicU64,
    /// When the last commit of records became durable: a commit queued behind it started then.
    last_durable: Mutex<Option<Instant>>,
    /// What hosts last reported of each VEE.
    observed: Mutex<HashMap<u64, InstanceStatus>>,
    /// Each VEE's ACTIVE periods, `(start, end)`, newest last.
    activity: Mutex<HashMap<u64, Periods>>,
    /// The listeners of VEEs that run at other sites, whose records come from there.
    relays: relay::Relays,
}

impl Accounting {
    /// What the listeners' pusher holds and lost.
    pub(super) fn push_totals(&self) -> crate::push::PushTotals {
        self.pusher.totals()
    }

    pub(super) fn new(
        listeners: Vec<AccountingListener>,
        records: &[VeeRecord],
        push: PushConfig,
        outbox: Vec<OutboxEntry>,
        committer: Committer,
    ) -> Self {
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut book = Book::default();
        // A remote VEE's records come from its site (see `relay.rs`).
        let remote: HashSet<u64> = records
            .iter()
            .filter(|r| r.site.is_some())
            .map(|r| r.id.seq())
            .collect();
        let mut relayed = Vec::new();
        for listener in listeners {
            if listener.interval_ms == 0 {
                continue;
            }
            if remote.contains(&listener.vee.seq()) {
                relayed.push(listener);
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
        let next_entry = outbox.iter().map(|e| e.id + 1).max().unwrap_or(1);
        let (deliveries, pending_deliveries) = mpsc::unbounded_channel();
        Self {
            book: Mutex::new(book),
            wake: Notify::new(),
            pusher: Pusher::with_receipts(push, Arc::new(OutboxReceipts { committer })),
            next_entry: AtomicU64::new(next_entry),
            deliveries,
            pending_deliveries: Mutex::new(Some(pending_deliveries)),
            backlog: Mutex::new(outbox),
            store_ns_per_record: AtomicU64::new(FIRST_STORE_NS_PER_RECORD),
            last_durable: Mutex::new(None),
            observed: Mutex::new(HashMap::new()),
            activity: Mutex::new(activity),
            relays: relay::Relays::new(relayed),
        }
    }

    /// Whether `listener` is registered already, with the same interval and callback: then
    /// it is kept as it is, its grid included, so that registering again (a retry, or a
    /// primary making its registrations again after a restart) loses no part of an interval.
    fn registered_as(&self, listener: &AccountingListener) -> bool {
        let same = |l: &AccountingListener| {
            (l.interval_ms, l.callback.as_str())
                == (listener.interval_ms, listener.callback.as_str())
        };
        let key = (listener.owner.clone(), listener.vee.seq());
        let in_book = self
            .book()
            .registrations
            .get(&key)
            .is_some_and(|r| same(&r.listener));
        in_book || self.relays.has(listener, same)
    }

    /// The outbox entry of `record`, made for `owner`'s listener at `callback`.
    fn entry(&self, owner: &Principal, callback: &str, record: AccountingRecord) -> OutboxEntry {
        OutboxEntry {
            id: self.next_entry.fetch_add(1, Ordering::Relaxed),
            callback: callback.to_owned(),
            owner: owner.clone(),
            record,
        }
    }

    /// How long before the first tick of `book` its records are built: see [`build_lead`].
    fn build_lead(&self, book: &Book) -> Duration {
        build_lead(&book.due, self.store_ns_per_record.load(Ordering::Relaxed))
    }

    /// Notes that a commit of `records` records, asked for at `asked`, is durable now. What it
    /// cost is counted from when it could start: when it was asked, or when the commit of
    /// records before it was durable. The estimate follows a slower commit at once and a
    /// faster one slowly.
    fn note_stored(&self, records: usize, asked: Instant) {
        let now = Instant::now();
        let started = {
            let mut last = self
                .last_durable
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let started = last.map_or(asked, |last| last.max(asked));
            *last = Some(now);
            started
        };
        let Ok(records) = u64::try_from(records.max(1)) else {
            return;
        };
        let took =
            u64::try_from(now.saturating_duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        let before = self.store_ns_per_record.load(Ordering::Relaxed);
        self.store_ns_per_record
            .store(decaying_max(before, took / records), Ordering::Relaxed);
    }

    /// Hands records to the pusher, one push per callback, in the order given.
    fn push(&self, entries: Vec<OutboxEntry>) {
        let mut per_callback: HashMap<String, Vec<Outgoing>> = HashMap::new();
        for entry in entries {
            per_callback
                .entry(entry.callback)
                .or_default()
                .push(Outgoing {
                    id: entry.id,
                    record: entry.record,
                });
        }
        for (callback, items) in per_callback {
            self.pusher.push(&callback, items);
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
        self.relays.forget(seq);
    }

    /// The VEE's CPU time so far on its current instance, if a host reported it.
    fn cpu_time_ms(&self, seq: u64) -> Option<u64> {
        self.observed().get(&seq).map(|status| status.cpu_time_ms)
    }
}

/// Tokio's timer fires on whole milliseconds, rounding up, and a timer task wakes a little
/// after that: up to a millisecond and more late, most of what the VEEM adds to a record's
/// lateness on a quiet machine.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// Sleeps until `due`: by tokio's timer until [`TIMER_RESOLUTION`] before, then the rest in a
/// thread of the blocking pool, whose sleep the OS ends within tens of µs (spinning instead
/// would take a core from the commits, which are busiest right then).
async fn sleep_until_precisely(due: Instant) {
    if let Some(early) = due.checked_sub(TIMER_RESOLUTION) {
        tokio::time::sleep_until(early.into()).await;
    }
    let rest = due.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        // A failed join (the runtime shutting down) only means sending a little early.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
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
        // A TWOPHASE reservation is not a host the VEE holds: the VMI shows none, and so does
        // its accounting.
        host: if record.reserved {
            None
        } else {
            record.host.clone()
        },
        cpu: record.descriptor.cpu,
        memory_mb: record.descriptor.memory_mb,
        cpu_time_ms,
        active_ms: active_ms_within(periods, t0, t0 + dt),
    }
}

impl Veem {
    /// Registers the caller as the accounting listener of `ids` at `interval_ms`: all or
    /// nothing (an unknown id is `not_found`, another's VEE `access_denied`). A listener
    /// registered again with the same interval and callback is kept as it was, on its grid.
    /// The records of a VEE that runs at another site come from there (see `relay.rs`): this
    /// VEEM registers as its listener there before it answers (where the site answers; else
    /// the site loop does once it does).
    pub async fn listen(
        &self,
        caller: &Caller,
        ids: &[VeeId],
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
        let accounting = &self.inner.accounting;
        let listeners: Vec<AccountingListener> = vees
            .into_iter()
            .map(|vee| AccountingListener {
                owner: caller.principal.clone(),
                vee,
                callback: callback.to_owned(),
                interval_ms,
                registered_ms,
            })
            .filter(|listener| !accounting.registered_as(listener))
            .collect();
        if listeners.is_empty() {
            return Ok(());
        }
        self.inner
            .committer
            .commit(listeners.iter().cloned().map(Change::PutListener).collect())
            .await?;
        let remote: Vec<u64> = {
            let state = self.inner.records.read();
            listeners
                .iter()
                .map(|l| l.vee.seq())
                .filter(|seq| state.get(*seq).is_some_and(|r| r.site.is_some()))
                .collect()
        };
        let (listeners, relayed): (Vec<_>, Vec<_>) = listeners
            .into_iter()
            .partition(|l| !remote.contains(&l.vee.seq()));
        for listener in relayed {
            // One registration per caller and VEE: one the scheduler still had goes.
            accounting
                .book()
                .remove(&(listener.owner.clone(), listener.vee.seq()));
            accounting.relays.insert(listener);
        }
        // One registration per caller and VEE: one the relays still had goes (the site loop
        // ends its registration at the site).
        for listener in &listeners {
            accounting
                .relays
                .remove(&listener.owner, listener.vee.seq());
        }
        {
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
        self.relay_sync_each(remote).await;
        Ok(())
    }

    /// [`Veem::relay_sync`] of each of `seqs`, at once.
    async fn relay_sync_each(&self, seqs: Vec<u64>) {
        futures::future::join_all(seqs.into_iter().map(|seq| self.relay_sync(seq))).await;
    }

    /// Removes the caller's listeners of `ids` (those it has; the others are ignored), all or
    /// nothing as [`Veem::listen`].
    pub async fn unlisten(&self, caller: &Caller, ids: &[VeeId]) -> Result<(), CoreError> {
        let vees = self.lookup_all(caller, ids)?;
        let changes = vees
            .iter()
            .map(|vee| Change::RemoveListener {
                owner: caller.principal.clone(),
                vee: vee.clone(),
            })
            .collect();
        self.inner.committer.commit(changes).await?;
        let accounting = &self.inner.accounting;
        {
            let mut book = accounting.book();
            for vee in &vees {
                book.remove(&(caller.principal.clone(), vee.seq()));
            }
        }
        // A remote VEE's last listener here ends this VEEM's registration at its site.
        let relayed: Vec<u64> = vees
            .iter()
            .filter(|vee| accounting.relays.remove(&caller.principal, vee.seq()))
            .map(VeeId::seq)
            .collect();
        self.relay_sync_each(relayed).await;
        Ok(())
    }

    /// Resolves every id or fails with the first that cannot be: nothing is done for any.
    fn lookup_all(&self, caller: &Caller, ids: &[VeeId]) -> Result<Vec<VeeId>, CoreError> {
        if ids.is_empty() {
            return Err(CoreError::malformed("ids", "name at least one VEE"));
        }
        ids.iter()
            .map(|id| {
                self.inner
                    .records
                    .lookup(caller, id)
                    .map(|record| record.id)
            })
            .collect()
    }

    /// A VEE's accounting records with `t0` in `[from_ms, to_ms)`, sent or not.
    pub fn accounting_records(
        &self,
        caller: &Caller,
        id: &VeeId,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<AccountingRecord>, CoreError> {
        let record = self.inner.records.lookup(caller, id)?;
        let records = self.inner.store.accounting(&record.id, from_ms, to_ms)?;
        Ok(records
            .into_iter()
            .filter(|(owner, _)| {
                caller.admin || owner == &caller.principal || record.owner == caller.principal
            })
            .map(|(_, r)| r)
            .collect())
    }

    /// The scheduler: sends every listener's records at its ticks. It also starts the delivery
    /// task, which pushes what the outbox held at start first.
    pub(super) async fn accounting_loop(self) {
        let accounting = &self.inner.accounting;
        let deliveries = accounting
            .pending_deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(deliveries) = deliveries {
            let backlog = std::mem::take(
                &mut *accounting
                    .backlog
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if !backlog.is_empty() {
                tracing::info!(
                    records = backlog.len(),
                    "pushing the accounting outbox again"
                );
            }
            accounting.push(backlog);
            let veem = self.clone();
            tokio::spawn(async move { veem.delivery_loop(deliveries).await });
        }
        loop {
            let (next, lead) = {
                let book = accounting.book();
                let next = book.due.first().map(|(due, _)| *due);
                (next, accounting.build_lead(&book))
            };
            match next {
                Some(due) => {
                    // Woken early, the records are ready (and stored) when their tick comes.
                    let wake_at = due.checked_sub(lead).unwrap_or(due);
                    if wake_at <= Instant::now() {
                        // Due already: built at once (one group of ticks per turn).
                    } else {
                        tokio::select! {
                            () = tokio::time::sleep_until(wake_at.into()) => {}
                            () = accounting.wake.notified() => continue,
                        }
                    }
                }
                None => {
                    accounting.wake.notified().await;
                    continue;
                }
            }
            let woke = Instant::now();
            let made = self.make_due_records(woke + lead);
            tracing::debug!(
                records = made,
                built_us = woke.elapsed().as_micros() as u64,
                lead_us = lead.as_micros() as u64,
                "accounting records made"
            );
        }
    }

    /// Makes the records of the first group of ticks (those within [`SEND_GROUPING`] of the
    /// first) due by `horizon`, starts their commit and queues them for delivery at their
    /// tick; answers how many it made. One group at a time, each in a commit of its own: a
    /// tick's records are durable as soon as they and those before them are stored, not once
    /// those of later ticks are too, as [`Accounting::build_lead`] counts on.
    fn make_due_records(&self, horizon: Instant) -> usize {
        let accounting = &self.inner.accounting;
        // Each segment with its first tick.
        let mut segments: Vec<(Instant, Segment)> = Vec::new();
        // Listeners of VEEs that run at other sites now (placed there since they registered).
        let mut to_relay: Vec<AccountingListener> = Vec::new();
        let state = self.inner.records.read();
        let observed = accounting.observed();
        let activity = accounting.activity();
        let mut book = accounting.book();
        while let Some((due, key)) = book.due.first().cloned() {
            let next_group = segments
                .first()
                .is_some_and(|(first, _)| due > *first + SEND_GROUPING);
            if due > horizon || next_group {
                break;
            }
            book.due.pop_first();
            let Some(record) = state.get(key.1) else {
                book.registrations.remove(&key);
                continue;
            };
            // This VEEM has no figures of a VEE at another site: its records come from there.
            if record.site.is_some() {
                if let Some(registration) = book.registrations.remove(&key) {
                    to_relay.push(registration.listener);
                }
                continue;
            }
            let Some(registration) = book.registrations.get_mut(&key) else {
                continue;
            };
            let t0 = registration.t0();
            let cpu_now = observed.get(&key.1).map(|status| status.cpu_time_ms);
            let periods = activity.get(&key.1).map_or(&[][..], Vec::as_slice);
            let record = record_of(
                record,
                t0,
                registration.listener.interval_ms,
                cpu_now,
                &mut registration.last_cpu_time_ms,
                periods,
            );
            let entry = accounting.entry(&key.0, &registration.listener.callback, record);
            match segments.last_mut() {
                Some((first, segment)) if due <= *first + SEND_GROUPING => {
                    segment.not_before = Some(due);
                    segment.entries.push(entry);
                }
                _ => segments.push((
                    due,
                    Segment {
                        not_before: Some(due),
                        entries: vec![entry],
                    },
                )),
            }
            registration.advance();
            let next = registration.due;
            book.due.insert((next, key));
        }
        let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();
        let made = segments.iter().map(|s| s.entries.len()).sum();
        if made > 0 {
            // Queued under the book's lock, so that deliveries are in the order records were
            // made (a DESTROY's last records are queued under it too).
            let commit = self
                .inner
                .committer
                .enqueue(storing(&entries_of(&segments)));
            // Timed as soon as it is durable, whatever the delivery task is waiting for then.
            let (asked, veem) = (Instant::now(), self.clone());
            let durable = tokio::spawn(async move {
                let outcome = commit.await;
                if outcome.is_ok() {
                    veem.inner.accounting.note_stored(made, asked);
                }
                outcome
            });
            let _ = accounting.deliveries.send(Delivery {
                segments,
                durable: Box::pin(async move {
                    durable.await.unwrap_or_else(|e| {
                        Err(CoreError::internal("storing accounting records", e))
                    })
                }),
                own_commit: true,
            });
        }
        drop((book, activity, observed, state));
        if !to_relay.is_empty() {
            let seqs: Vec<u64> = to_relay.iter().map(|l| l.vee.seq()).collect();
            for listener in to_relay {
                accounting.relays.adopt(listener);
            }
            let veem = self.clone();
            tokio::spawn(async move { veem.relay_sync_each(seqs).await });
        }
        made
    }

    /// Pushes each delivery's records once they are durable and their tick has come, in order.
    async fn delivery_loop(self, mut deliveries: mpsc::UnboundedReceiver<Delivery>) {
        let accounting = &self.inner.accounting;
        while let Some(delivery) = deliveries.recv().await {
            let Delivery {
                mut segments,
                durable,
                own_commit,
            } = delivery;
            let stored = match (durable.await, own_commit) {
                (Ok(()), _) => true,
                // A purge may land between a tick and its commit (the store refuses records of
                // a VEE it no longer holds): once more without the purged VEEs.
                (Err(e), true) => {
                    tracing::debug!(error = %e, "storing accounting records again without purged VEEs");
                    {
                        let state = self.inner.records.read();
                        for segment in &mut segments {
                            segment
                                .entries
                                .retain(|e| state.contains(e.record.vee.seq()));
                        }
                    }
                    let entries = entries_of(&segments);
                    match self.inner.committer.commit(storing(&entries)).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::error!(error = %e, records = entries.len(), "cannot store accounting records; they are not sent");
                            false
                        }
                    }
                }
                // The DESTROY failed, and its records with it.
                (Err(_), false) => false,
            };
            if !stored {
                continue;
            }
            for segment in segments {
                if let Some(due) = segment.not_before {
                    sleep_until_precisely(due).await;
                    let late = Instant::now().saturating_duration_since(due);
                    tracing::debug!(late_us = late.as_micros() as u64, "accounting tick sent");
                }
                accounting.push(segment.entries);
            }
        }
    }

    /// DESTROY ends a VEE's accounting: each listener gets a last record, up to `t_ms`, and is
    /// removed. Made before the DESTROY is committed, whose transaction stores them; `record`
    /// is the VEE as the DESTROY leaves it. `None` when the VEE has no listener.
    pub(super) fn close_accounting(&self, record: &VeeRecord, t_ms: u64) -> Option<Closing> {
        let accounting = &self.inner.accounting;
        let seq = record.id.seq();
        let cpu_now = accounting.cpu_time_ms(seq);
        let activity = accounting.activity();
        let periods = activity.get(&seq).map_or(&[][..], Vec::as_slice);
        let mut book = accounting.book();
        let removed = book.remove_vee(seq);
        if removed.is_empty() {
            return None;
        }
        let mut entries = Vec::with_capacity(removed.len());
        let mut changes = Vec::with_capacity(removed.len() + 2);
        for (key, registration) in &removed {
            let t0 = registration.t0();
            // A copy: the registration goes back unchanged if the DESTROY fails.
            let mut last_cpu = registration.last_cpu_time_ms;
            let last = record_of(
                record,
                t0,
                t_ms.saturating_sub(t0),
                cpu_now,
                &mut last_cpu,
                periods,
            );
            entries.push(accounting.entry(&key.0, &registration.listener.callback, last));
            changes.push(Change::RemoveListener {
                owner: key.0.clone(),
                vee: record.id.clone(),
            });
        }
        changes.extend(storing(&entries));
        let (durable, outcome) = oneshot::channel();
        let _ = accounting.deliveries.send(Delivery {
            segments: vec![Segment {
                not_before: None,
                entries,
            }],
            durable: Box::pin(async move {
                outcome.await.unwrap_or_else(|_| {
                    Err(CoreError::broken("the DESTROY's commit was abandoned"))
                })
            }),
            own_commit: false,
        });
        Some(Closing {
            changes,
            removed,
            durable,
        })
    }

    /// The DESTROY that made `closing` was committed (`Ok`) or not: its records are sent, or its
    /// listeners go back on the schedule.
    pub(super) fn closed_accounting(&self, closing: Closing, outcome: Result<(), CoreError>) {
        let Closing {
            removed, durable, ..
        } = closing;
        if outcome.is_err() {
            let accounting = &self.inner.accounting;
            let mut book = accounting.book();
            for (key, registration) in removed {
                book.insert(key, registration);
            }
            drop(book);
            accounting.wake.notify_one();
        }
        let _ = durable.send(outcome);
    }

    /// Keeps what hosts report of their VEEs (for accounting and HARDWARE events) and publishes
    /// what the guests' agents reported.
    pub(super) fn observe_instances(&self, instances: &[InstanceStatus]) {
        let mut agent = Vec::new();
        {
            let state = self.inner.records.read();
            let mut observed = self.inner.accounting.observed();
            for status in instances {
                let seq = status.vee.seq();
                let Some(record) = state.find(&status.vee) else {
                    continue;
                };
                if !status.agent_reports.is_empty() {
                    agent.extend(monitoring::agent_events(record, status));
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
                let state = self.inner.records.read();
                let observed = self.inner.accounting.observed();
                last.retain(|seq, _| state.contains(*seq));
                for (seq, seen) in observed.iter() {
                    let Some(record) = state.get(*seq) else {
                        continue;
                    };
                    if record.state != VmiState::Active {
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
                        record,
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use axum::routing::post;
    use veem_store::conformance::{accounting_record, plain_record};
    use veem_store::{SqliteStore, Store, FIRST_VEE_SEQ};

    use super::*;
    use crate::veem::CoreConfig;

    fn config(data_dir: &std::path::Path) -> CoreConfig {
        CoreConfig {
            site: "test".into(),
            public_url: "http://127.0.0.1:1".into(),
            data_dir: data_dir.to_owned(),
            policy: veem_placement::Policy::Pack,
            shutdown_deadline: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(60),
            lan_key: 0,
            monitoring_interval: Duration::from_secs(60),
            admins: vec![],
            host_dead_after: Duration::from_secs(10),
            callback_tls: None,
            file_sources: crate::sources::FileSources::new(&[], data_dir).expect("no sources"),
        }
    }

    /// A listener on loopback that keeps the t0 of every record it acknowledged, in order.
    async fn listener() -> (String, Arc<StdMutex<Vec<u64>>>) {
        let got: Arc<StdMutex<Vec<u64>>> = Arc::default();
        let sink = got.clone();
        let app = axum::Router::new().route(
            "/cb",
            post(move |body: bytes::Bytes| {
                let sink = sink.clone();
                async move {
                    let records: Vec<AccountingRecord> = serde_json::from_slice(&body).unwrap();
                    sink.lock().unwrap().extend(records.iter().map(|r| r.t0));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", socket.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(socket, app).await });
        (url, got)
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn the_store_estimate_follows_a_slow_commit_at_once_and_a_fast_one_slowly() {
        assert_eq!(decaying_max(5_000, 20_000), 20_000);
        assert_eq!(decaying_max(20_000, 1_000), 17_500);
        let mut estimate = 20_000;
        for _ in 0..40 {
            estimate = decaying_max(estimate, 1_000);
        }
        assert_eq!(estimate, 1_000, "it comes down to what commits take");
        assert_eq!(decaying_max(0, 0), 0);
    }

    #[test]
    fn the_lead_covers_the_records_of_the_ticks_queued_behind_the_first() {
        let owner = Principal::new("sm").expect("a valid name");
        let start = Instant::now();
        // Ten ticks of 1,000 records each, 3.5 ms apart: ten blocks of listeners registered
        // one after another, as in the monitoring bench.
        let mut due = BTreeSet::new();
        for tick in 0..10u64 {
            for vee in 0..1_000 {
                let at = start + Duration::from_micros(tick * 3_500);
                due.insert((at, (owner.clone(), tick * 1_000 + vee)));
            }
        }
        let ms = Duration::from_millis;
        // At 1.5 µs a record (3 ms a tick with the margin) each tick is stored before the
        // next one comes: the lead is what the first tick takes.
        assert_eq!(build_lead(&due, 1_500), SEND_GROUPING + ms(3));
        // At 2 µs (4 ms a tick) they fall behind by 0.5 ms a tick: the ninth tick (28 ms after
        // the first, the last within MAX_STORE_LEAD) needs storing to start 36 - 28 = 8 ms
        // early.
        assert_eq!(build_lead(&due, 2_000), SEND_GROUPING + ms(8));
        // However slow storing is, records are built at most MAX_STORE_LEAD early.
        assert_eq!(build_lead(&due, 1_000_000), SEND_GROUPING + MAX_STORE_LEAD);
        assert_eq!(build_lead(&BTreeSet::new(), 4_000), SEND_GROUPING);
    }

    #[tokio::test]
    async fn what_the_outbox_held_is_pushed_at_start_in_order_and_settled_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("veem.db")).unwrap());
        let (url, got) = listener().await;
        let vee = plain_record(FIRST_VEE_SEQ);
        let owner = vee.owner.clone();
        // As a VEEM killed before it could push them left them.
        let entries: Vec<OutboxEntry> = [(4, 1_000), (5, 2_000), (9, 3_000)]
            .into_iter()
            .map(|(id, t0)| OutboxEntry {
                id,
                callback: url.clone(),
                owner: owner.clone(),
                record: accounting_record(&vee.id, t0),
            })
            .collect();
        let mut changes = vec![Change::InsertVee(vee.clone())];
        changes.extend(storing(&entries));
        store.commit(&changes).unwrap();

        let veem = Veem::open(config(dir.path()), store.clone()).unwrap();
        assert_eq!(
            veem.inner.accounting.next_entry.load(Ordering::Relaxed),
            10,
            "new entries take ids after the stored ones"
        );
        veem.start_background();
        wait_until("the backlog", || got.lock().unwrap().len() >= 3).await;
        assert_eq!(*got.lock().unwrap(), vec![1_000, 2_000, 3_000]);
        wait_until("the outbox to be settled", || {
            store.accounting_outbox().unwrap().is_empty()
        })
        .await;
        // Records stay readable: the outbox is only what is still to send.
        assert_eq!(store.accounting(&vee.id, 0, u64::MAX).unwrap().len(), 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(got.lock().unwrap().len(), 3, "each sent once");
    }
}
