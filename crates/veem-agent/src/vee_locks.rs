//! One operation at a time per VEE on a host, shared by the drivers: a lock per VEE, whose entry
//! is forgotten once nobody holds or waits for it, so the map does not grow with every VEE ever
//! seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;
use veem_model::VeeId;

#[derive(Default)]
pub(crate) struct VeeLocks {
    map: Mutex<HashMap<VeeId, Arc<tokio::sync::Mutex<()>>>>,
}

impl VeeLocks {
    fn entry(&self, vee: &VeeId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(vee.clone()).or_default())
    }

    /// Waits for the VEE's turn.
    pub(crate) async fn lock(&self, vee: &VeeId) -> VeeGuard<'_> {
        let held = self.entry(vee).lock_owned().await;
        VeeGuard {
            locks: self,
            vee: vee.clone(),
            _held: held,
        }
    }

    /// The VEE's lock if no operation holds it now.
    pub(crate) fn try_lock(&self, vee: &VeeId) -> Option<VeeGuard<'_>> {
        let held = self.entry(vee).try_lock_owned().ok()?;
        Some(VeeGuard {
            locks: self,
            vee: vee.clone(),
            _held: held,
        })
    }

    /// How many VEEs have a lock entry now (held or waited for).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Holds one VEE's lock; forgets the VEE's entry when nobody else waits for it.
pub(crate) struct VeeGuard<'a> {
    locks: &'a VeeLocks,
    vee: VeeId,
    _held: OwnedMutexGuard<()>,
}

impl Drop for VeeGuard<'_> {
    fn drop(&mut self) {
        let mut map = self
            .locks
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two owners: the map and the guard being dropped. More means someone is waiting.
        if map
            .get(&self.vee)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            map.remove(&self.vee);
        }
    }
}
