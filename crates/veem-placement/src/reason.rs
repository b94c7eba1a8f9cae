//! The sentences that tell an operator why a VEE cannot be placed. Built only when placement
//! fails, so they may look at every host.

use std::collections::BTreeMap;

use crate::affinity::Conflicts;
use crate::host::Host;
use crate::{Capacity, Demand, Unplaceable};

/// Why no host can take `demand`: each host is counted under the first reason that excludes it
/// (its being the VEE's current host, disabled, anti-affinity, too little free).
pub(crate) fn no_host(
    hosts: &[Host],
    demand: &Demand,
    conflicts: &Conflicts<'_>,
    current: Option<usize>,
) -> Unplaceable {
    if hosts.is_empty() {
        return unplaceable("no host is registered".to_owned());
    }
    let need = demand.need();
    let mut disabled = 0usize;
    let mut by_tag: BTreeMap<&str, usize> = BTreeMap::new();
    let mut short = 0usize;
    // The host with the most free memory, and among hosts with the memory but too few CPUs the
    // one with the most CPUs: (free, host) with ties to the lowest host id.
    let mut most_memory: Option<(Capacity, &Host)> = None;
    let mut most_cpus_with_memory: Option<(u32, &Host)> = None;
    for (slot, host) in hosts.iter().enumerate() {
        if Some(slot) == current {
            continue;
        }
        if !host.enabled {
            disabled += 1;
            continue;
        }
        if let Some(tag) = conflicts.tag_excluding(slot) {
            *by_tag.entry(tag).or_default() += 1;
            continue;
        }
        let free = host.free();
        if free.memory_mb >= need.memory_mb && free.cpus >= need.cpus {
            // Only reached if the index missed a fitting host, which the tests rule out.
            continue;
        }
        short += 1;
        let more_memory = most_memory.is_none_or(|(best, best_host)| {
            (free.memory_mb, free.cpus, std::cmp::Reverse(&*host.id))
                > (best.memory_mb, best.cpus, std::cmp::Reverse(&*best_host.id))
        });
        if more_memory {
            most_memory = Some((free, host));
        }
        if free.memory_mb >= need.memory_mb {
            let more_cpus = most_cpus_with_memory.is_none_or(|(best, best_host)| {
                free.cpus > best || (free.cpus == best && host.id < best_host.id)
            });
            if more_cpus {
                most_cpus_with_memory = Some((free.cpus, host));
            }
        }
    }

    let mut parts = Vec::new();
    if let Some(current) = current.and_then(|slot| hosts.get(slot)) {
        parts.push(format!("{} is its current host", current.id));
    }
    if short > 0 {
        let wanted = amount(need);
        parts.push(match (most_cpus_with_memory, most_memory) {
            (Some((cpus, host)), _) => format!(
                "no host has {wanted} free (hosts with {} MB free have at most {} free: {})",
                need.memory_mb,
                count(cpus as usize, "CPU"),
                host.id
            ),
            (None, Some((free, host))) => format!(
                "no host has {wanted} free (largest free: {} MB on {})",
                free.memory_mb, host.id
            ),
            (None, None) => format!("no host has {wanted} free"),
        });
    }
    for (tag, hosts) in by_tag {
        parts.push(format!(
            "{} excluded by anti-affinity on tag {tag}",
            count(hosts, "host")
        ));
    }
    if disabled > 0 {
        parts.push(format!("{} disabled", count(disabled, "host")));
    }
    if parts.is_empty() {
        parts.push(format!("no host can take {}", amount(need)));
    }
    unplaceable(parts.join("; "))
}

pub(crate) fn unplaceable(reason: String) -> Unplaceable {
    Unplaceable { reason }
}

/// "12000 MB and 2 CPUs"
pub(crate) fn amount(capacity: Capacity) -> String {
    format!(
        "{} MB and {}",
        capacity.memory_mb,
        count(capacity.cpus as usize, "CPU")
    )
}

/// "1 host", "2 hosts"
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_counts_agree_in_number() {
        let one = Capacity {
            cpus: 1,
            memory_mb: 512,
        };
        assert_eq!(amount(one), "512 MB and 1 CPU");
        let two = Capacity {
            cpus: 2,
            memory_mb: 12000,
        };
        assert_eq!(amount(two), "12000 MB and 2 CPUs");
        assert_eq!(count(0, "host"), "0 hosts");
        assert_eq!(count(1, "host"), "1 host");
        assert_eq!(count(3, "host"), "3 hosts");
    }
}
