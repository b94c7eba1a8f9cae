//! veem's placement engine: it decides on which physical host (VEEH) each VEE runs.
//!
//! A [`Cluster`] holds the hosts, what each one has and what is allocated on it, and places VEEs
//! by a [`Policy`] (pack or spread) under two constraints that no operation except
//! [`Cluster::restore`] ever breaks: a host's CPUs and memory are never overbooked, and a VEE never
//! shares a host with another VEE of the same owner that carries a tag it keeps away from
//! (anti-affinity). When a VEE cannot be placed, the error says why in a sentence an operator can
//! act on. This crate is pure: it never does I/O, never reads a clock and never touches tokio; the
//! server persists placements and feeds them back through [`Cluster::restore`] at startup.

mod affinity;
mod cluster;
mod free_index;
mod host;
mod reason;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use veem_model::{HostId, Principal, VeeId};

pub use cluster::Cluster;

/// How to choose among the hosts that can take a VEE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Fill the fullest host that still fits, keeping whole hosts free for large VEEs (and for
    /// being powered down).
    #[default]
    Pack,
    /// Use the emptiest host, spreading load and failure impact.
    Spread,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Pack => "pack",
            Policy::Spread => "spread",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is neither `pack` nor `spread`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement policy {0:?}: expected \"pack\" or \"spread\"")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Self, UnknownPolicy> {
        match text {
            "pack" => Ok(Policy::Pack),
            "spread" => Ok(Policy::Spread),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

/// CPUs and memory: what a host has, or has in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mb: u64,
}

/// What one VEE needs from its host, and the tags anti-affinity reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Anti-affinity binds only VEEs of the same owner.
    pub owner: Principal,
    pub cpu: u32,
    pub memory_mb: u64,
    /// Marks other VEEs' anti-affinity refers to.
    pub tags: Vec<String>,
    /// For each tag here, never share a host with another VEE of the same owner carrying it.
    pub anti_affinity: Vec<String>,
}

impl Demand {
    fn need(&self) -> Capacity {
        Capacity {
            cpus: self.cpu,
            memory_mb: self.memory_mb,
        }
    }
}

/// Why no host can take a VEE, as a sentence an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unplaceable {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    #[error("{0} is not placed on any host")]
    UnknownVee(VeeId),
    #[error("{0} is already placed")]
    AlreadyPlaced(VeeId),
    #[error(transparent)]
    Unplaceable(#[from] Unplaceable),
}

/// One host as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUsage {
    pub capacity: Capacity,
    /// May exceed `capacity` only after a host shrank under VEEs restored onto it.
    pub used: Capacity,
    pub enabled: bool,
    /// Sorted.
    pub vees: Vec<VeeId>,
}

/// One host's figures without its VEEs' ids: what a metrics scrape reads of every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLoad {
    pub capacity: Capacity,
    pub used: Capacity,
    pub enabled: bool,
    /// How many VEEs hold an allocation there.
    pub vees: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_print_and_serialize_in_lowercase() {
        for policy in [Policy::Pack, Policy::Spread] {
            assert_eq!(policy.as_str().parse::<Policy>(), Ok(policy));
            assert_eq!(policy.to_string(), policy.as_str());
            let json = serde_json::to_string(&policy).expect("a policy serializes");
            assert_eq!(json, format!("\"{policy}\""));
            let back: Policy = serde_json::from_str(&json).expect("a policy deserializes");
            assert_eq!(back, policy);
        }
        assert_eq!(Policy::default(), Policy::Pack);
        let err = "Pack".parse::<Policy>().expect_err("names are lowercase");
        assert_eq!(
            err.to_string(),
            "unknown placement policy \"Pack\": expected \"pack\" or \"spread\""
        );
    }
}
