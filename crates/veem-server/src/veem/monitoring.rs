//! Monitoring (sections 2.5.5 and 2.7.4 of the paper): events put by SMs, probes and agents,
//! the VEEM's own STATE and HARDWARE events, and their way out to subscriptions (pushed) and to
//! the live stream (server-sent events).
//!
//! Who sees an event: one about a VEE goes to its owner's subscriptions and to admins'; one put
//! without a VEE goes to the putter's and to admins'. Publishing never waits on a subscriber:
//! pushes go through [`Pusher`] queues, the stream through a broadcast channel whose slow
//! readers lose the oldest events (and are told how many).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;
use veem_api::agent::InstanceStatus;
use veem_model::{
    EventType, Measurement, MeasurementValue, MonitoringEvent, MonitoringSubscription, Principal,
    VeeId, VeeRecord, VmiState,
};
use veem_store::Change;

use super::{now_ms, Veem};
use crate::auth::Caller;
use crate::error::CoreError;
use crate::push::{check_callback, PushConfig, Pusher};

/// Events the live stream keeps for a reader that lags.
const STREAM_BACKLOG: usize = 65_536;

/// How many events about VEEs [`History`] keeps in all, shared among the VEEs it has events
/// of: memory stays bounded however many VEEs there are (each event is a few hundred bytes).
const HISTORY_BUDGET: usize = 131_072;
/// What one VEE keeps at most: an hour of HARDWARE events at the default interval (10 s),
/// with the STATE events between them.
const HISTORY_MAX_PER_VEE: usize = 400;
/// What one VEE keeps at least, when very many share the budget: enough for a trend.
const HISTORY_MIN_PER_VEE: usize = 2;

/// An event and the principal whose it is (the VEE's owner, or who put it).
#[derive(Debug, Clone)]
pub struct Routed {
    pub owner: Principal,
    pub event: MonitoringEvent,
}

/// Subscriptions, the pusher that serves them and the live stream.
pub(super) struct Hub {
    subscriptions: RwLock<BTreeMap<String, MonitoringSubscription>>,
    pusher: Pusher<MonitoringEvent>,
    stream: broadcast::Sender<Arc<Routed>>,
    admins: Vec<Principal>,
    history: Mutex<History>,
}

/// The recent events about each VEE (`GET /vees/{id}/monitoring`: what a dashboard plots when
/// it opens a VEE), in memory only: after a restart a VEE's history starts again. Each VEE
/// keeps its share of [`HISTORY_BUDGET`], its oldest events dropped first.
#[derive(Default)]
struct History {
    per_vee: HashMap<VeeId, VecDeque<MonitoringEvent>>,
}

impl History {
    fn record(&mut self, vee: &VeeId, event: &MonitoringEvent) {
        let share = (HISTORY_BUDGET / (self.per_vee.len() + 1))
            .clamp(HISTORY_MIN_PER_VEE, HISTORY_MAX_PER_VEE);
        let events = self.per_vee.entry(vee.clone()).or_default();
        events.push_back(event.clone());
        // A VEE over its share (more VEEs came since it filled it) gives back its oldest.
        while events.len() > share {
            events.pop_front();
        }
    }

    fn of(&self, vee: &VeeId, kind: Option<EventType>, from_ms: u64) -> Vec<MonitoringEvent> {
        self.per_vee
            .get(vee)
            .into_iter()
            .flatten()
            .filter(|e| kind.is_none_or(|k| e.kind == k) && e.t0 + e.dt >= from_ms)
            .cloned()
            .collect()
    }
}

impl Hub {
    /// What the subscriptions' pusher holds and lost.
    pub(super) fn push_totals(&self) -> crate::push::PushTotals {
        self.pusher.totals()
    }

    pub(super) fn new(
        subscriptions: Vec<MonitoringSubscription>,
        admins: Vec<Principal>,
        push: PushConfig,
    ) -> Self {
        let (stream, _) = broadcast::channel(STREAM_BACKLOG);
        Self {
            subscriptions: RwLock::new(
                subscriptions
                    .into_iter()
                    .map(|s| (s.id.clone(), s))
                    .collect(),
            ),
            pusher: Pusher::new(push),
            stream,
            admins,
            history: Mutex::default(),
        }
    }

    fn sees(&self, viewer: &Principal, owner: &Principal) -> bool {
        viewer == owner || self.admins.contains(viewer)
    }

    /// Sends events to the subscriptions that see them (one push per subscription) and to the
    /// stream.
    pub(super) fn publish(&self, events: Vec<Routed>) {
        if events.is_empty() {
            return;
        }
        let mut per_subscription: HashMap<String, Vec<MonitoringEvent>> = HashMap::new();
        {
            let subscriptions = self
                .subscriptions
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for routed in &events {
                for s in subscriptions.values() {
                    let wanted = s.types.is_empty() || s.types.contains(&routed.event.kind);
                    if wanted && self.sees(&s.owner, &routed.owner) {
                        per_subscription
                            .entry(s.callback.clone())
                            .or_default()
                            .push(routed.event.clone());
                    }
                }
            }
        }
        for (callback, batch) in per_subscription {
            self.pusher.push(&callback, batch);
        }
        {
            let mut history = self
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for routed in &events {
                if let Some(vee) = &routed.event.vee {
                    history.record(vee, &routed.event);
                }
            }
        }
        for routed in events {
            // No reader is no error: the stream is for whoever listens now.
            let _ = self.stream.send(Arc::new(routed));
        }
    }

    /// A receiver of every event from now on; [`Hub::visible`] filters it for a caller.
    pub(super) fn listen(&self) -> broadcast::Receiver<Arc<Routed>> {
        self.stream.subscribe()
    }

    pub(super) fn visible(&self, viewer: &Caller, routed: &Routed) -> bool {
        viewer.admin || viewer.principal == routed.owner
    }

    /// The events kept about `vee` ([`History`]), oldest first.
    fn history(&self, vee: &VeeId, kind: Option<EventType>, from_ms: u64) -> Vec<MonitoringEvent> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .of(vee, kind, from_ms)
    }

    /// A purged VEE's history goes with it.
    pub(super) fn forget(&self, vee: &VeeId) {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .per_vee
            .remove(vee);
    }
}

/// The name prefix of a VEE's measurements: its `fqn_prefix`, else its id.
pub(super) fn fqn_prefix(record: &VeeRecord) -> String {
    record
        .descriptor
        .fqn_prefix
        .clone()
        .unwrap_or_else(|| record.id.to_string())
}

/// The STATE event of a change of a VEE's state at `t_ms`.
pub(super) fn state_event(record: &VeeRecord, state: VmiState, t_ms: u64) -> Routed {
    Routed {
        owner: record.owner.clone(),
        event: MonitoringEvent {
            kind: EventType::State,
            t0: t_ms,
            dt: 0,
            vee: Some(record.id.clone()),
            measurements: vec![Measurement::text(
                format!("{}.state", fqn_prefix(record)),
                state.as_str(),
            )],
        },
    }
}

/// The HARDWARE event of a VEE over `[t0, t0 + dt]`, from what its host reported at the end
/// and `cpu_time_ms` used in the interval.
pub(super) fn hardware_event(
    record: &VeeRecord,
    status: &InstanceStatus,
    t0: u64,
    dt: u64,
    cpu_time_ms: u64,
) -> Routed {
    let p = fqn_prefix(record);
    let mut m = vec![
        Measurement::number(format!("{p}.cpu.count"), f64::from(status.cpus)),
        Measurement::number(format!("{p}.cpu.time_ms"), cpu_time_ms as f64),
        Measurement::number(
            format!("{p}.cpu.usage"),
            if dt == 0 || status.cpus == 0 {
                0.0
            } else {
                cpu_time_ms as f64 / (dt as f64 * f64::from(status.cpus))
            },
        ),
        Measurement::number(format!("{p}.mem.allotted_mb"), status.memory_mb as f64),
    ];
    let mut counters = |device: &str, target: &str, figures: [(&str, u64); 4]| {
        for (name, value) in figures {
            m.push(Measurement::number(
                format!("{p}.{device}.{target}.{name}"),
                value as f64,
            ));
        }
    };
    for d in &status.disks {
        counters(
            "disk",
            &d.target,
            [
                ("read_bytes", d.read_bytes),
                ("write_bytes", d.write_bytes),
                ("read_ops", d.read_ops),
                ("write_ops", d.write_ops),
            ],
        );
    }
    for n in &status.nics {
        counters(
            "net",
            &n.target,
            [
                ("rx_bytes", n.rx_bytes),
                ("tx_bytes", n.tx_bytes),
                ("rx_packets", n.rx_packets),
                ("tx_packets", n.tx_packets),
            ],
        );
    }
    Routed {
        owner: record.owner.clone(),
        event: MonitoringEvent {
            kind: EventType::Hardware,
            t0,
            dt,
            vee: Some(record.id.clone()),
            measurements: m,
        },
    }
}

/// The AGENT events of what a guest's agent reported.
pub(super) fn agent_events(record: &VeeRecord, status: &InstanceStatus) -> Vec<Routed> {
    let p = fqn_prefix(record);
    status
        .agent_reports
        .iter()
        .filter_map(|report| {
            let measurements: Vec<Measurement> = report
                .measurements
                .iter()
                .filter(|(name, _)| veem_model::check_fqn(name).is_ok())
                .map(|(name, value)| Measurement {
                    fqn: format!("{p}.agent.{name}"),
                    value: match value.parse::<f64>() {
                        Ok(n) if n.is_finite() => MeasurementValue::Number(n),
                        _ => MeasurementValue::Text(value.clone()),
                    },
                })
                .collect();
            (!measurements.is_empty()).then(|| Routed {
                owner: record.owner.clone(),
                event: MonitoringEvent {
                    kind: EventType::Agent,
                    t0: report.t_ms,
                    dt: 0,
                    vee: Some(record.id.clone()),
                    measurements,
                },
            })
        })
        .collect()
}

/// Who puts an event: a principal, or a probe or agent inside a VEE with that VEE's token.
#[derive(Debug, Clone)]
pub enum Putter {
    Principal(Caller),
    Vee { owner: Principal, vee: VeeId },
}

impl Veem {
    /// PutMonitoringInformation: checks every event (the first bad one fails the call, naming
    /// it as `[i].field`), then that each is about one of the putter's VEEs, then publishes them.
    pub fn put_monitoring(
        &self,
        putter: &Putter,
        mut events: Vec<MonitoringEvent>,
    ) -> Result<usize, CoreError> {
        let mut routed = Vec::with_capacity(events.len());
        let many = events.len() > 1;
        let at = |i: usize, field: &str| {
            if many {
                format!("[{i}].{field}")
            } else {
                field.to_owned()
            }
        };
        // Checked before the core's state is locked: a big array takes a while, and the lock
        // is everyone's.
        for (i, event) in events.iter().enumerate() {
            event
                .validate_put()
                .map_err(|e| CoreError::malformed(at(i, &e.field), e.reason))?;
        }
        {
            let state = self.inner.records.read();
            for (i, event) in events.iter_mut().enumerate() {
                let owner = match (putter, &event.vee) {
                    (Putter::Vee { owner, vee }, None) => {
                        event.vee = Some(vee.clone());
                        owner.clone()
                    }
                    (Putter::Vee { owner, vee }, Some(about)) => {
                        if about != vee {
                            return Err(CoreError::AccessDenied(format!(
                                "{}: the token of {vee} puts events about {vee} only, not {about}",
                                at(i, "vee")
                            )));
                        }
                        owner.clone()
                    }
                    (Putter::Principal(caller), None) => caller.principal.clone(),
                    (Putter::Principal(caller), Some(about)) => {
                        let record = state.find(about).ok_or_else(|| {
                            CoreError::NotFound(format!("{}: no VEE {about}", at(i, "vee")))
                        })?;
                        if record.owner != caller.principal && !caller.admin {
                            return Err(CoreError::AccessDenied(format!(
                                "{}: VEE {about} belongs to another principal",
                                at(i, "vee")
                            )));
                        }
                        record.owner.clone()
                    }
                };
                routed.push(owner);
            }
        }
        let count: usize = events.iter().map(|e| e.measurements.len()).sum();
        let routed = events
            .into_iter()
            .zip(routed)
            .map(|(event, owner)| Routed { owner, event })
            .collect();
        self.inner.hub.publish(routed);
        Ok(count)
    }

    /// The putter a VEE's monitoring token names, if any.
    pub fn putter_of_token(&self, token: &str) -> Option<Putter> {
        let record = self.inner.records.of_token(token)?;
        Some(Putter::Vee {
            owner: record.owner.clone(),
            vee: record.id.clone(),
        })
    }

    pub async fn subscribe(
        &self,
        caller: &Caller,
        callback: &str,
        types: Vec<EventType>,
    ) -> Result<MonitoringSubscription, CoreError> {
        check_callback(callback).map_err(|reason| CoreError::malformed("callback", reason))?;
        let subscription = MonitoringSubscription {
            id: format!("sub-{:016x}", rand::random::<u64>()),
            owner: caller.principal.clone(),
            callback: callback.to_owned(),
            types,
            created_ms: now_ms(),
        };
        self.inner
            .committer
            .commit(vec![Change::PutSubscription(subscription.clone())])
            .await?;
        self.inner
            .hub
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(subscription.id.clone(), subscription.clone());
        Ok(subscription)
    }

    pub async fn unsubscribe(&self, caller: &Caller, id: &str) -> Result<(), CoreError> {
        let owner = self
            .inner
            .hub
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .map(|s| s.owner.clone())
            .ok_or_else(|| CoreError::NotFound(format!("no subscription {id}")))?;
        if owner != caller.principal && !caller.admin {
            return Err(CoreError::AccessDenied(format!(
                "subscription {id} belongs to another principal"
            )));
        }
        self.inner
            .committer
            .commit(vec![Change::RemoveSubscription { id: id.to_owned() }])
            .await?;
        self.inner
            .hub
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        Ok(())
    }

    /// The live stream of events, and whether a caller sees an event of it.
    pub fn monitoring_stream(&self) -> broadcast::Receiver<Arc<Routed>> {
        self.inner.hub.listen()
    }

    pub fn sees_event(&self, caller: &Caller, routed: &Routed) -> bool {
        self.inner.hub.visible(caller, routed)
    }

    /// The monitoring events about a VEE the caller sees that the VEEM still keeps (of `kind`
    /// if given, ending at `from_ms` or later), oldest first; see [`History`].
    pub fn monitoring_history(
        &self,
        caller: &Caller,
        id: &VeeId,
        kind: Option<EventType>,
        from_ms: u64,
    ) -> Result<Vec<MonitoringEvent>, CoreError> {
        self.inner.records.lookup(caller, id)?;
        Ok(self.inner.hub.history(id, kind, from_ms))
    }

    /// Publishes events the VEEM produced.
    pub(super) fn publish(&self, events: Vec<Routed>) {
        self.inner.hub.publish(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(vee: &VeeId, t0: u64) -> MonitoringEvent {
        MonitoringEvent {
            kind: EventType::Hardware,
            t0,
            dt: 10,
            vee: Some(vee.clone()),
            measurements: vec![Measurement::number("cpu.usage", 0.5)],
        }
    }

    #[test]
    fn a_vee_keeps_its_latest_events_and_many_vees_share_the_budget() {
        let mut history = History::default();
        let one = VeeId::from_seq(1);
        for t0 in 0..1_000 {
            history.record(&one, &event(&one, t0));
        }
        let kept = history.of(&one, None, 0);
        assert_eq!(kept.len(), HISTORY_MAX_PER_VEE);
        assert_eq!(
            kept[0].t0,
            1_000 - HISTORY_MAX_PER_VEE as u64,
            "the oldest went first"
        );
        assert_eq!(
            history.of(&one, None, 1_005).len(),
            5,
            "those ending (t0 + dt) at 1005 or later"
        );
        assert!(history.of(&one, Some(EventType::State), 0).is_empty());

        // So many VEEs that each gets the least share: memory stays within the budget.
        let many = HISTORY_BUDGET / HISTORY_MIN_PER_VEE;
        for seq in 2..=many as u64 {
            let vee = VeeId::from_seq(seq);
            for t0 in 0..3 {
                history.record(&vee, &event(&vee, t0));
            }
        }
        let last = VeeId::from_seq(many as u64);
        assert_eq!(history.of(&last, None, 0).len(), HISTORY_MIN_PER_VEE);
        // A VEE gives back its surplus when it records again, as every ACTIVE VEE does each
        // monitoring interval: after one round, memory is within the budget.
        for seq in 1..=many as u64 {
            let vee = VeeId::from_seq(seq);
            history.record(&vee, &event(&vee, 2_000));
        }
        assert_eq!(history.of(&one, None, 0).len(), HISTORY_MIN_PER_VEE);
        let kept: usize = history.per_vee.values().map(VecDeque::len).sum();
        assert!(kept <= HISTORY_BUDGET, "{kept} events kept");
    }
}
