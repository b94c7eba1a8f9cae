//! Per-host counts of the tags that anti-affinity looks at, so that checking a host costs a few
//! hash look-ups whatever the number of VEEs.

use std::collections::HashMap;

use veem_model::Principal;

use crate::Demand;

/// owner -> tag -> host slot -> how many of that owner's VEEs on that host. A host appears only
/// while its count is above zero, so presence alone means "occupied".
type Counts = HashMap<Principal, HashMap<String, HashMap<usize, u32>>>;

#[derive(Debug, Default)]
pub(crate) struct AffinityIndex {
    /// VEEs counted by the tags they carry (`Demand::tags`).
    carrying: Counts,
    /// VEEs counted by the tags they keep away from (`Demand::anti_affinity`).
    shunning: Counts,
}

impl AffinityIndex {
    pub(crate) fn add(&mut self, slot: usize, demand: &Demand) {
        add_all(&mut self.carrying, &demand.owner, &demand.tags, slot);
        add_all(
            &mut self.shunning,
            &demand.owner,
            &demand.anti_affinity,
            slot,
        );
    }

    pub(crate) fn remove(&mut self, slot: usize, demand: &Demand) {
        remove_all(&mut self.carrying, &demand.owner, &demand.tags, slot);
        remove_all(
            &mut self.shunning,
            &demand.owner,
            &demand.anti_affinity,
            slot,
        );
    }

    /// The hosts that a VEE with this demand may not join: those with a VEE of the same owner
    /// that carries a tag it shuns, or that shuns a tag it carries.
    pub(crate) fn conflicts<'a>(&'a self, demand: &'a Demand) -> Conflicts<'a> {
        let mut by_tag = Vec::new();
        let mut collect = |counts: &'a Counts, tags: &'a [String]| {
            if tags.is_empty() {
                return;
            }
            if let Some(owned) = counts.get(&demand.owner) {
                for tag in tags {
                    if let Some(hosts) = owned.get(tag) {
                        by_tag.push((tag.as_str(), hosts));
                    }
                }
            }
        };
        collect(&self.carrying, &demand.anti_affinity);
        collect(&self.shunning, &demand.tags);
        Conflicts { by_tag }
    }
}

/// What keeps one demand off some hosts, found once per placement and then asked per host.
#[derive(Debug)]
pub(crate) struct Conflicts<'a> {
    by_tag: Vec<(&'a str, &'a HashMap<usize, u32>)>,
}

impl Conflicts<'_> {
    pub(crate) fn excludes(&self, slot: usize) -> bool {
        self.by_tag
            .iter()
            .any(|(_, hosts)| hosts.contains_key(&slot))
    }

    /// The tag that keeps the demand off this host, the alphabetically first if several do, so
    /// that reasons read the same on every run.
    pub(crate) fn tag_excluding(&self, slot: usize) -> Option<&str> {
        self.by_tag
            .iter()
            .filter(|(_, hosts)| hosts.contains_key(&slot))
            .map(|(tag, _)| *tag)
            .min()
    }
}

fn add_all(counts: &mut Counts, owner: &Principal, tags: &[String], slot: usize) {
    if tags.is_empty() {
        return;
    }
    let owned = counts.entry(owner.clone()).or_default();
    for tag in tags {
        let hosts = match owned.get_mut(tag) {
            Some(hosts) => hosts,
            None => owned.entry(tag.clone()).or_default(),
        };
        *hosts.entry(slot).or_default() += 1;
    }
}

fn remove_all(counts: &mut Counts, owner: &Principal, tags: &[String], slot: usize) {
    if tags.is_empty() {
        return;
    }
    let Some(owned) = counts.get_mut(owner) else {
        debug_assert!(false, "removing tags of an owner that was never counted");
        return;
    };
    for tag in tags {
        let Some(hosts) = owned.get_mut(tag) else {
            debug_assert!(false, "removing tag {tag} that was never counted");
            continue;
        };
        if let Some(count) = hosts.get_mut(&slot) {
            *count -= 1;
            if *count == 0 {
                hosts.remove(&slot);
            }
        }
        if hosts.is_empty() {
            owned.remove(tag);
        }
    }
    if owned.is_empty() {
        counts.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(owner: &str, tags: &[&str], anti_affinity: &[&str]) -> Demand {
        Demand {
            owner: Principal::new(owner).expect("test principals are valid"),
            cpu: 1,
            memory_mb: 1,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            anti_affinity: anti_affinity.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn conflicts_bind_both_ways_and_only_within_one_owner() {
        let mut index = AffinityIndex::default();
        index.add(0, &demand("alice", &["db"], &[]));
        index.add(1, &demand("alice", &[], &["web"]));

        let shuns_db = demand("alice", &[], &["db"]);
        assert!(index.conflicts(&shuns_db).excludes(0));
        assert!(!index.conflicts(&shuns_db).excludes(1));

        let carries_web = demand("alice", &["web"], &[]);
        assert!(index.conflicts(&carries_web).excludes(1));
        assert!(!index.conflicts(&carries_web).excludes(0));

        let bob_shuns_db = demand("bob", &[], &["db"]);
        assert!(!index.conflicts(&bob_shuns_db).excludes(0));
    }

    #[test]
    fn counts_drop_to_nothing_after_the_last_removal() {
        let mut index = AffinityIndex::default();
        let replica = demand("alice", &["db", "db"], &["db"]);
        index.add(3, &replica);
        index.add(3, &replica);
        index.remove(3, &replica);
        assert!(index.conflicts(&replica).excludes(3));
        index.remove(3, &replica);
        assert!(!index.conflicts(&replica).excludes(3));
        assert!(index.carrying.is_empty() && index.shunning.is_empty());
    }

    #[test]
    fn the_first_tag_names_the_exclusion() {
        let mut index = AffinityIndex::default();
        index.add(0, &demand("alice", &["web", "db"], &[]));
        let shuns_both = demand("alice", &[], &["web", "db"]);
        assert_eq!(index.conflicts(&shuns_both).tag_excluding(0), Some("db"));
        assert_eq!(index.conflicts(&shuns_both).tag_excluding(1), None);
    }
}
