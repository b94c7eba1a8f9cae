//! What the books say of the site as a whole, read at once and cheaply at any size: the
//! figures `GET /metrics` shows of the leader's books (`metrics/` writes them out).

use std::sync::Arc;

use veem_api::HostState;
use veem_model::HostId;
use veem_placement::HostLoad;

use super::{VeeCounts, Veem};
use crate::push::PushTotals;

/// Each host's figures as placement keeps them, by host.
pub type HostLoads = Vec<(Arc<HostId>, HostLoad)>;

/// What a scrape reads of the leader's books (see [`Veem::figures`]).
#[derive(Debug, Clone)]
pub struct CoreFigures {
    /// VEEs by VMI state, as `GET /vees?state=` counts them.
    pub vees: VeeCounts,
    /// VEEs waiting for a host.
    pub pending: usize,
    /// Every host the VEEM knows, by id, and its state as `GET /hosts` shows it.
    pub host_states: Vec<(HostId, HostState)>,
    /// What placement knows of each host it was told of: capacity, use and VEEs.
    pub loads: HostLoads,
    pub accounting_push: PushTotals,
    pub monitoring_push: PushTotals,
}

impl Veem {
    /// What `GET /metrics` shows of the books. Cheap at any size: the counts by state are
    /// kept as records change, and the rest is one line per host.
    pub fn figures(&self) -> CoreFigures {
        let (pending, loads) = self.inner.placer.loads();
        CoreFigures {
            vees: self.inner.records.read().counts(),
            pending,
            host_states: self.inner.hosts.states(),
            loads,
            accounting_push: self.inner.accounting.push_totals(),
            monitoring_push: self.inner.hub.push_totals(),
        }
    }
}
