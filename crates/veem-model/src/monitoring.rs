//! Accounting and monitoring (sections 2.5.1, 2.5.5, 2.7.3 and 2.7.4 of the paper): what a VEE
//! used in an interval, the listeners that are sent it, and monitoring events with their
//! fully qualified measurement names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{HostId, Principal, VeeId};
use crate::state::VmiState;

/// Shortest interval a listener may ask for.
pub const MIN_ACCOUNTING_INTERVAL_MS: u64 = 100;
/// Longest: a day.
pub const MAX_ACCOUNTING_INTERVAL_MS: u64 = 86_400_000;

/// A principal's wish to be sent a VEE's accounting every `interval_ms` (one per principal and
/// VEE: registering again replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountingListener {
    pub owner: Principal,
    pub vee: VeeId,
    pub callback: String,
    pub interval_ms: u64,
    /// When it was registered (wall clock); ticks fall at `registered_ms + k * interval_ms`.
    pub registered_ms: u64,
}

/// What a VEE used in `[t0, t0 + dt)`, as sent to a listener (ReceiveAccountingInformation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountingRecord {
    pub vee: VeeId,
    pub t0: u64,
    pub dt: u64,
    pub state: VmiState,
    pub host: Option<HostId>,
    /// CPUs and memory allotted at the end of the interval.
    pub cpu: u32,
    pub memory_mb: u64,
    /// CPU time the VEE used in the interval.
    pub cpu_time_ms: u64,
    /// Time the VEE was ACTIVE in the interval.
    pub active_ms: u64,
}

/// The kinds of monitoring events. `STATE` events are the VEEM's own (a VEE's state changes);
/// the others may also be put by SMs, probes and agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Hardware,
    Probe,
    Agent,
    State,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Hardware,
        EventType::Probe,
        EventType::Agent,
        EventType::State,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Hardware => "HARDWARE",
            EventType::Probe => "PROBE",
            EventType::Agent => "AGENT",
            EventType::State => "STATE",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A principal's subscription to monitoring events, pushed to `callback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitoringSubscription {
    pub id: String,
    pub owner: Principal,
    pub callback: String,
    /// The event types it wants; all when empty.
    pub types: Vec<EventType>,
    pub created_ms: u64,
}

/// A measurement's value: a number or a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MeasurementValue {
    Number(f64),
    Text(String),
}

/// One named figure: `fqn` is `<prefix>.<metric>`, e.g. `vee-00000001.mem.free`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub fqn: String,
    pub value: MeasurementValue,
}

impl Measurement {
    pub fn number(fqn: impl Into<String>, value: f64) -> Self {
        Self {
            fqn: fqn.into(),
            value: MeasurementValue::Number(value),
        }
    }

    pub fn text(fqn: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            fqn: fqn.into(),
            value: MeasurementValue::Text(value.into()),
        }
    }
}

/// A monitoring event: measurements taken over `[t0, t0 + dt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub t0: u64,
    pub dt: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vee: Option<VeeId>,
    pub measurements: Vec<Measurement>,
}

/// Most measurements one event may carry, and the longest FQN and text value.
pub const MAX_MEASUREMENTS: usize = 1_000;
pub const MAX_FQN_LEN: usize = 512;
pub const MAX_TEXT_VALUE_LEN: usize = 4_096;

/// Why an event was refused; `field` names the part, as `measurements[2].fqn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl MonitoringEvent {
    /// Checks what serde cannot: an event put from outside is not `STATE`, has measurements
    /// with valid FQNs and finite numbers, and a `t0 + dt` that fits.
    pub fn validate_put(&self) -> Result<(), EventError> {
        let error = |field: String, reason: &str| EventError {
            field,
            reason: reason.to_owned(),
        };
        if self.kind == EventType::State {
            return Err(error(
                "type".into(),
                "STATE events are the VEEM's own; put HARDWARE, PROBE or AGENT",
            ));
        }
        if self.t0.checked_add(self.dt).is_none() {
            return Err(error("dt".into(), "t0 + dt overflows"));
        }
        if self.measurements.is_empty() {
            return Err(error("measurements".into(), "an event needs a measurement"));
        }
        if self.measurements.len() > MAX_MEASUREMENTS {
            return Err(error(
                "measurements".into(),
                &format!("at most {MAX_MEASUREMENTS} per event"),
            ));
        }
        for (i, m) in self.measurements.iter().enumerate() {
            check_fqn(&m.fqn).map_err(|reason| error(format!("measurements[{i}].fqn"), &reason))?;
            match &m.value {
                MeasurementValue::Number(n) if !n.is_finite() => {
                    return Err(error(
                        format!("measurements[{i}].value"),
                        "must be a finite number",
                    ))
                }
                MeasurementValue::Text(t) if t.len() > MAX_TEXT_VALUE_LEN => {
                    return Err(error(
                        format!("measurements[{i}].value"),
                        &format!("at most {MAX_TEXT_VALUE_LEN} bytes"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A fully qualified name: dot-separated segments of letters, digits, `_` and `-`, none empty.
pub fn check_fqn(fqn: &str) -> Result<(), String> {
    if fqn.is_empty() || fqn.len() > MAX_FQN_LEN {
        return Err(format!("must be 1 to {MAX_FQN_LEN} characters"));
    }
    for segment in fqn.split('.') {
        if segment.is_empty() {
            return Err(format!("{fqn:?} has an empty segment"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(format!(
                "{fqn:?}: segments are letters, digits, '_' and '-', separated by '.'"
            ));
        }
    }
    Ok(())
}

/// The time in `[from, to)` that falls in the ACTIVE periods `periods` (each `(start, end)`,
/// `end` `None` while still ACTIVE).
pub fn active_ms_within(periods: &[(u64, Option<u64>)], from: u64, to: u64) -> u64 {
    periods
        .iter()
        .map(|&(start, end)| {
            let start = start.max(from);
            let end = end.unwrap_or(u64::MAX).min(to);
            end.saturating_sub(start)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Result<MonitoringEvent, String> {
        let e: MonitoringEvent = serde_json::from_str(json).map_err(|e| e.to_string())?;
        e.validate_put().map_err(|e| e.field)?;
        Ok(e)
    }

    #[test]
    fn the_contract_shape_parses() {
        let e = event(
            r#"{"type":"PROBE","t0":1000,"dt":50,"vee":"vee-00000001",
               "measurements":[{"fqn":"tid.web.latency_ms","value":12.5},{"fqn":"tid.web.status","value":"ok"}]}"#,
        )
        .expect("valid");
        assert_eq!(e.kind, EventType::Probe);
        assert_eq!(e.measurements[1].value, MeasurementValue::Text("ok".into()));
        let back = serde_json::to_value(&e).expect("serializes");
        assert_eq!(back["type"], "PROBE");
        assert_eq!(back["measurements"][0]["value"], 12.5);
    }

    #[test]
    fn bad_events_name_the_field() {
        for (json, field) in [
            (
                r#"{"type":"STATE","t0":1,"dt":0,"measurements":[{"fqn":"a","value":1}]}"#,
                "type",
            ),
            (
                r#"{"type":"PROBE","t0":1,"dt":0,"measurements":[]}"#,
                "measurements",
            ),
            (
                r#"{"type":"PROBE","t0":1,"dt":0,"measurements":[{"fqn":"a..b","value":1}]}"#,
                "measurements[0].fqn",
            ),
            (
                r#"{"type":"PROBE","t0":1,"dt":0,"measurements":[{"fqn":"a b","value":1}]}"#,
                "measurements[0].fqn",
            ),
            (
                r#"{"type":"PROBE","t0":18446744073709551615,"dt":1,"measurements":[{"fqn":"a","value":1}]}"#,
                "dt",
            ),
        ] {
            assert_eq!(event(json).expect_err(json), field, "{json}");
        }
        for json in [
            r#"{"type":"OTHER","t0":1,"dt":0,"measurements":[]}"#,
            r#"{"type":"PROBE","t0":-1,"dt":0,"measurements":[]}"#,
            r#"{"type":"PROBE","t0":1,"dt":0,"measurements":[{"fqn":"a","value":true}]}"#,
            r#"{"type":"PROBE","t0":1,"dt":0,"measurements":[],"extra":1}"#,
        ] {
            assert!(event(json).is_err(), "{json}");
        }
    }

    #[test]
    fn active_time_is_the_overlap_with_active_periods() {
        let periods = [(100, Some(200)), (300, None)];
        assert_eq!(active_ms_within(&periods, 0, 1000), 100 + 700);
        assert_eq!(active_ms_within(&periods, 150, 350), 50 + 50);
        assert_eq!(active_ms_within(&periods, 200, 300), 0);
        assert_eq!(active_ms_within(&[], 0, 10), 0);
    }
}
