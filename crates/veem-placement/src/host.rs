//! One physical host as placement keeps it: what it has, what its VEEs hold, and whether it
//! takes new ones. Both the cluster (which changes hosts) and the refusal reasons (which read
//! them) use it, so it stands below both.

use std::collections::BTreeSet;
use std::sync::Arc;

use veem_model::{HostId, VeeId};

use crate::{Capacity, HostLoad, HostUsage};

/// One physical host. Its slot (index in `Cluster::hosts`) never changes: hosts are never
/// removed, only disabled.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) id: Arc<HostId>,
    pub(crate) capacity: Capacity,
    /// Sums of the demands placed here; wider than `Capacity` so restored overbooking cannot
    /// overflow.
    used_cpus: u64,
    used_memory_mb: u64,
    pub(crate) enabled: bool,
    vees: BTreeSet<VeeId>,
}

impl Host {
    /// A host that is enabled and holds nothing yet.
    pub(crate) fn new(id: Arc<HostId>, capacity: Capacity) -> Host {
        Host {
            id,
            capacity,
            used_cpus: 0,
            used_memory_mb: 0,
            enabled: true,
            vees: BTreeSet::new(),
        }
    }

    /// What is left; zero, not negative, on a host overbooked by `restore`.
    pub(crate) fn free(&self) -> Capacity {
        let cpus = u64::from(self.capacity.cpus).saturating_sub(self.used_cpus);
        Capacity {
            cpus: u32::try_from(cpus).expect("free CPUs never exceed the capacity, a u32"),
            memory_mb: self.capacity.memory_mb.saturating_sub(self.used_memory_mb),
        }
    }

    pub(crate) fn fits(&self, need: Capacity) -> bool {
        let free = self.free();
        free.memory_mb >= need.memory_mb && free.cpus >= need.cpus
    }

    /// Books `need` for `vee` here, whether or not it fits (the cluster checked, or restores).
    pub(crate) fn take(&mut self, vee: VeeId, need: Capacity) {
        self.used_cpus += u64::from(need.cpus);
        self.used_memory_mb = self.used_memory_mb.saturating_add(need.memory_mb);
        self.vees.insert(vee);
    }

    /// Gives back what `take` booked for `vee`.
    pub(crate) fn give_back(&mut self, vee: &VeeId, need: Capacity) {
        self.used_cpus -= u64::from(need.cpus);
        self.used_memory_mb = self.used_memory_mb.saturating_sub(need.memory_mb);
        self.vees.remove(vee);
    }

    /// Changes one VEE's booking from `old` to `new`.
    pub(crate) fn rebook(&mut self, old: Capacity, new: Capacity) {
        self.used_cpus = (self.used_cpus - u64::from(old.cpus)) + u64::from(new.cpus);
        self.used_memory_mb = self
            .used_memory_mb
            .saturating_sub(old.memory_mb)
            .saturating_add(new.memory_mb);
    }

    pub(crate) fn usage(&self) -> HostUsage {
        HostUsage {
            capacity: self.capacity,
            used: Capacity {
                cpus: u32::try_from(self.used_cpus).unwrap_or(u32::MAX),
                memory_mb: self.used_memory_mb,
            },
            enabled: self.enabled,
            vees: self.vees.iter().cloned().collect(),
        }
    }

    pub(crate) fn load(&self) -> HostLoad {
        HostLoad {
            capacity: self.capacity,
            used: Capacity {
                cpus: u32::try_from(self.used_cpus).unwrap_or(u32::MAX),
                memory_mb: self.used_memory_mb,
            },
            enabled: self.enabled,
            vees: self.vees.len(),
        }
    }
}
