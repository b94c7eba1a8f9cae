//! The sim driver's configuration: how slow each operation is and which calls fail.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::DriverError;

/// How the simulated hypervisor behaves. Everything defaults to instant and reliable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub latency_ms: LatencyConfig,
    pub faults: Vec<FaultSpec>,
}

/// Milliseconds each operation takes before it completes. `migrate` is the transfer
/// (`migrate_out`); `shutdown` is how long the guest takes to power off, cut short by the
/// request's deadline as a forced power-off would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    pub deploy: u64,
    pub pause: u64,
    pub resume: u64,
    pub suspend: u64,
    pub restore: u64,
    pub shutdown: u64,
    pub destroy: u64,
    pub resize: u64,
    pub migrate: u64,
    pub prepare_incoming: u64,
    pub complete_incoming: u64,
    pub export_disk: u64,
}

impl LatencyConfig {
    /// The configured delay of an operation (by its protocol name); status and list are instant.
    pub fn for_op(&self, op: &str) -> Duration {
        let ms = match op {
            "deploy" => self.deploy,
            "pause" => self.pause,
            "resume" => self.resume,
            "suspend" => self.suspend,
            "restore" => self.restore,
            "shutdown" => self.shutdown,
            "destroy" => self.destroy,
            "resize" => self.resize,
            "migrate_out" => self.migrate,
            "prepare_incoming" => self.prepare_incoming,
            "complete_incoming" => self.complete_incoming,
            "export_disk" => self.export_disk,
            _ => 0,
        };
        Duration::from_millis(ms)
    }
}

/// A failure to inject. A call fails when its operation is `op`, its VEE is named `vee_name`
/// (if given), and both the `every` and the `probability` conditions hold (each one that is
/// given); a spec with neither fails every matching call.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The operation's protocol name: `deploy`, `pause`, `migrate_out`, ...
    pub op: String,
    /// Only VEEs whose `DeploySpec.name` is this.
    #[serde(default)]
    pub vee_name: Option<String>,
    /// Fail the n-th, 2n-th, ... matching call.
    #[serde(default)]
    pub every: Option<u32>,
    /// Fail a matching call with this probability, in `[0, 1]`.
    #[serde(default)]
    pub probability: Option<f64>,
}

/// The operations a fault can name: those of the host-agent protocol.
pub const FAULT_OPS: &[&str] = &[
    "deploy",
    "pause",
    "resume",
    "suspend",
    "restore",
    "shutdown",
    "destroy",
    "resize",
    "status",
    "list",
    "export_disk",
    "prepare_incoming",
    "migrate_out",
    "complete_incoming",
];

/// The fault specs with their call counters.
#[derive(Debug)]
pub(crate) struct Faults {
    rules: Vec<(FaultSpec, AtomicU32)>,
}

impl Faults {
    pub(crate) fn new(specs: &[FaultSpec]) -> Result<Self, DriverError> {
        for spec in specs {
            let invalid = |reason: String| DriverError::Invalid {
                what: "sim fault",
                reason,
            };
            if !FAULT_OPS.contains(&spec.op.as_str()) {
                return Err(invalid(format!(
                    "unknown op {:?}, expected one of {}",
                    spec.op,
                    FAULT_OPS.join(", ")
                )));
            }
            if spec.every == Some(0) {
                return Err(invalid(format!("{}: every must be at least 1", spec.op)));
            }
            if let Some(p) = spec.probability {
                if !(0.0..=1.0).contains(&p) {
                    return Err(invalid(format!(
                        "{}: probability {p} is not within [0, 1]",
                        spec.op
                    )));
                }
            }
        }
        Ok(Self {
            rules: specs
                .iter()
                .map(|spec| (spec.clone(), AtomicU32::new(0)))
                .collect(),
        })
    }

    /// Decides whether this call of `op` fails. Every matching rule counts the call, even when
    /// an earlier one already decided to fail it, so each rule's `every` stays exact.
    pub(crate) fn check(
        &self,
        op: &'static str,
        vee_name: Option<&str>,
    ) -> Result<(), DriverError> {
        let mut fail = false;
        for (spec, calls) in &self.rules {
            if spec.op != op {
                continue;
            }
            if let Some(wanted) = &spec.vee_name {
                if vee_name != Some(wanted.as_str()) {
                    continue;
                }
            }
            let call = calls.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let every_holds = spec.every.is_none_or(|n| call % n == 0);
            let chance_holds = spec.probability.is_none_or(|p| rand::random::<f64>() < p);
            fail |= every_holds && chance_holds;
        }
        if fail {
            tracing::info!(op, vee_name, "sim driver injects a fault");
            Err(DriverError::Injected { op })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(op: &str) -> FaultSpec {
        FaultSpec {
            op: op.to_owned(),
            vee_name: None,
            every: None,
            probability: None,
        }
    }

    fn outcomes(faults: &Faults, op: &'static str, name: Option<&str>, calls: usize) -> Vec<bool> {
        (0..calls)
            .map(|_| faults.check(op, name).is_err())
            .collect()
    }

    #[test]
    fn a_bare_fault_fails_every_call_of_its_op_only() {
        let faults = Faults::new(&[fault("pause")]).unwrap();
        assert_eq!(outcomes(&faults, "pause", None, 3), [true, true, true]);
        assert_eq!(outcomes(&faults, "resume", None, 2), [false, false]);
        assert!(matches!(
            faults.check("pause", Some("web")),
            Err(DriverError::Injected { op: "pause" })
        ));
    }

    #[test]
    fn every_fails_each_nth_matching_call() {
        let faults = Faults::new(&[FaultSpec {
            every: Some(3),
            ..fault("deploy")
        }])
        .unwrap();
        assert_eq!(
            outcomes(&faults, "deploy", None, 7),
            [false, false, true, false, false, true, false]
        );
    }

    #[test]
    fn vee_name_limits_the_fault_and_its_count() {
        let faults = Faults::new(&[FaultSpec {
            vee_name: Some("db".into()),
            every: Some(2),
            ..fault("deploy")
        }])
        .unwrap();
        assert_eq!(outcomes(&faults, "deploy", Some("web"), 3), [false; 3]);
        assert_eq!(outcomes(&faults, "deploy", None, 3), [false; 3]);
        assert_eq!(
            outcomes(&faults, "deploy", Some("db"), 4),
            [false, true, false, true]
        );
    }

    #[test]
    fn probability_zero_never_fails_and_one_always_fails() {
        let never = Faults::new(&[FaultSpec {
            probability: Some(0.0),
            ..fault("status")
        }])
        .unwrap();
        assert_eq!(outcomes(&never, "status", None, 50), [false; 50]);
        let always = Faults::new(&[FaultSpec {
            probability: Some(1.0),
            ..fault("status")
        }])
        .unwrap();
        assert_eq!(outcomes(&always, "status", None, 50), [true; 50]);
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            fault("reboot"),
            FaultSpec {
                every: Some(0),
                ..fault("pause")
            },
            FaultSpec {
                probability: Some(1.5),
                ..fault("pause")
            },
            FaultSpec {
                probability: Some(f64::NAN),
                ..fault("pause")
            },
        ] {
            assert!(
                matches!(
                    Faults::new(std::slice::from_ref(&bad)),
                    Err(DriverError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn config_reads_from_json_and_refuses_unknown_fields() {
        let config: SimConfig = serde_json::from_str(
            r#"{"latency_ms": {"deploy": 20, "migrate": 5},
                "faults": [{"op": "deploy", "vee_name": "db", "every": 2}]}"#,
        )
        .unwrap();
        assert_eq!(
            config.latency_ms.for_op("deploy"),
            Duration::from_millis(20)
        );
        assert_eq!(
            config.latency_ms.for_op("migrate_out"),
            Duration::from_millis(5)
        );
        assert_eq!(config.latency_ms.for_op("pause"), Duration::ZERO);
        assert_eq!(config.faults[0].every, Some(2));
        assert_eq!(
            serde_json::from_str::<SimConfig>("{}").unwrap(),
            SimConfig::default()
        );
        assert!(serde_json::from_str::<SimConfig>(r#"{"latency": {}}"#).is_err());
        assert!(serde_json::from_str::<SimConfig>(r#"{"latency_ms": {"boot": 1}}"#).is_err());
    }
}
