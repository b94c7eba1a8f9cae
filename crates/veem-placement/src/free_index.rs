//! The enabled hosts ordered by what they have free, so that a placement finds its host by a
//! range scan instead of looking at every host.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use veem_model::HostId;

use crate::Capacity;

/// Where a host sits among the hosts with the same free memory and CPUs: ordered by host id so
/// that ties break the same way on every run. `Lowest` sorts before every host and only serves
/// as the start of a range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Lowest,
    Host(Arc<HostId>, usize),
}

/// (free memory in MB, free CPUs, host): the order in which pack looks at hosts; spread walks it
/// backwards.
type Key = (u64, u32, Slot);

#[derive(Debug, Default)]
pub(crate) struct FreeIndex {
    keys: BTreeSet<Key>,
}

impl FreeIndex {
    pub(crate) fn insert(&mut self, free: Capacity, id: &Arc<HostId>, slot: usize) {
        let inserted = self.keys.insert(key(free, id, slot));
        debug_assert!(inserted, "a host is indexed at most once");
    }

    pub(crate) fn remove(&mut self, free: Capacity, id: &Arc<HostId>, slot: usize) {
        let removed = self.keys.remove(&key(free, id, slot));
        debug_assert!(
            removed,
            "only an indexed host is removed, with the key it was indexed by"
        );
    }

    /// The host with the least free memory (then least free CPUs, then lowest id) that has
    /// `need` free and that `accept` takes.
    pub(crate) fn find_pack(
        &self,
        need: Capacity,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut from: Key = (need.memory_mb, need.cpus, Slot::Lowest);
        'seek: loop {
            for (memory_mb, cpus, slot) in self.keys.range(from.clone()..) {
                if *cpus < need.cpus {
                    // Every later host with this much free memory but too few CPUs would be
                    // skipped one by one: jump past them all.
                    from = (*memory_mb, need.cpus, Slot::Lowest);
                    continue 'seek;
                }
                if let Slot::Host(_, index) = slot {
                    if accept(*index) {
                        return Some(*index);
                    }
                }
            }
            return None;
        }
    }

    /// The host with the most free memory (then most free CPUs, then lowest id) that has `need`
    /// free and that `accept` takes.
    pub(crate) fn find_spread(
        &self,
        need: Capacity,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut below: Bound<Key> = Bound::Unbounded;
        'seek: loop {
            for (memory_mb, cpus, slot) in self.keys.range((Bound::Unbounded, below.clone())).rev()
            {
                if *memory_mb < need.memory_mb {
                    return None;
                }
                if *cpus < need.cpus {
                    // The rest of this memory group has even fewer CPUs free: go to the next.
                    below = Bound::Excluded((*memory_mb, 0, Slot::Lowest));
                    continue 'seek;
                }
                let Slot::Host(_, index) = slot else {
                    continue;
                };
                if accept(*index) {
                    // Walking backwards met the highest id of its (memory, CPUs) group first;
                    // the tie goes to the lowest accepted id.
                    let group =
                        (*memory_mb, *cpus, Slot::Lowest)..=(*memory_mb, *cpus, slot.clone());
                    return self
                        .keys
                        .range(group)
                        .filter_map(|(_, _, slot)| match slot {
                            Slot::Host(_, index) => Some(*index),
                            Slot::Lowest => None,
                        })
                        .find(|index| accept(*index));
                }
            }
            return None;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

fn key(free: Capacity, id: &Arc<HostId>, slot: usize) -> Key {
    (free.memory_mb, free.cpus, Slot::Host(Arc::clone(id), slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(hosts: &[(&str, u32, u64)]) -> FreeIndex {
        let mut index = FreeIndex::default();
        for (slot, (name, cpus, memory_mb)) in hosts.iter().enumerate() {
            let id = Arc::new(HostId::new(*name).expect("test host names are valid"));
            index.insert(
                Capacity {
                    cpus: *cpus,
                    memory_mb: *memory_mb,
                },
                &id,
                slot,
            );
        }
        index
    }

    const NEED: Capacity = Capacity {
        cpus: 2,
        memory_mb: 1000,
    };

    #[test]
    fn pack_takes_the_tightest_host_and_skips_those_short_of_cpus() {
        let hosts = index(&[
            ("a", 1, 1000),
            ("b", 1, 1500),
            ("c", 2, 1500),
            ("d", 8, 4000),
            ("e", 2, 900),
        ]);
        assert_eq!(hosts.find_pack(NEED, |_| true), Some(2));
        assert_eq!(hosts.find_pack(NEED, |slot| slot != 2), Some(3));
        assert_eq!(hosts.find_pack(NEED, |slot| slot < 2), None);
    }

    #[test]
    fn spread_takes_the_emptiest_host_and_breaks_ties_by_lowest_id() {
        let hosts = index(&[
            ("d", 4, 4000),
            ("b", 4, 4000),
            ("c", 4, 4000),
            ("a", 1, 9000),
            ("e", 2, 900),
        ]);
        assert_eq!(hosts.find_spread(NEED, |_| true), Some(1));
        assert_eq!(hosts.find_spread(NEED, |slot| slot != 1), Some(2));
        assert_eq!(hosts.find_spread(NEED, |slot| slot == 0), Some(0));
        assert_eq!(hosts.find_spread(NEED, |slot| slot >= 3), None);
    }

    #[test]
    fn removed_hosts_are_not_found() {
        let mut hosts = index(&[("a", 4, 4000)]);
        let id = Arc::new(HostId::new("a").expect("valid"));
        hosts.remove(
            Capacity {
                cpus: 4,
                memory_mb: 4000,
            },
            &id,
            0,
        );
        assert_eq!(hosts.len(), 0);
        assert_eq!(hosts.find_pack(NEED, |_| true), None);
        assert_eq!(hosts.find_spread(NEED, |_| true), None);
    }
}
