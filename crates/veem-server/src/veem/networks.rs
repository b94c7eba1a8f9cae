//! Networks: the virtual LANs of the VMI, the addresses the VEEM hands out on them, and the
//! plan a host needs to plug a NIC in.
//!
//! Rules kept here:
//! - A network's name is unique among its owner's networks, and among public networks. A NIC's
//!   `network` names the caller's own network, else a public one; a name no such network has
//!   leaves the NIC unattached (a MAC address, no IP address), so an OVF envelope's logical
//!   networks ("VM Network") never fail an import.
//! - An address is taken at InitializeVEEs (in the same commit as the VEE) and given back at
//!   purge; a network with addresses taken is `in_use`.
//! - The hosts' side of a LAN is named from the site's key and the network's id, never reused,
//!   so a stale bridge on a host that missed a delete never joins a new network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use veem_api::agent::{AgentRequest, AgentResponse, LanPlan};
use veem_model::{
    check_word, mac_address, AddressPool, DescriptorError, Ipv4Cidr, Network, NicAddress,
    Principal, VeeDescriptor, VeeId, VeeRecord,
};
use veem_store::Change;

use super::{now_ms, Veem};
use crate::auth::Caller;
use crate::committer::Committer;
use crate::error::CoreError;

/// Network ids are VXLAN network identifiers: 24 bits.
const MAX_NETWORK_ID: u32 = veem_store::NETWORK_ID_LIMIT - 1;

/// One network in memory, with the addresses VEEs hold on it.
pub(super) struct NetworkSlot {
    pub(super) network: Network,
    pub(super) pool: AddressPool,
    /// Who holds each address, to say so when a delete is refused.
    pub(super) holders: BTreeMap<Ipv4Addr, VeeId>,
}

impl NetworkSlot {
    fn new(network: Network) -> Self {
        Self {
            pool: AddressPool::new(network.cidr),
            network,
            holders: BTreeMap::new(),
        }
    }
}

/// The networks of the site, by id.
#[derive(Default)]
pub(super) struct NetworkTable {
    pub(super) by_id: BTreeMap<u32, NetworkSlot>,
    pub(super) next_id: u32,
}

impl NetworkTable {
    /// Loads the stored networks and takes the addresses the stored VEEs hold.
    pub(super) fn load(networks: Vec<Network>, next_id: u32, records: &[VeeRecord]) -> Self {
        let mut by_id: BTreeMap<u32, NetworkSlot> = networks
            .into_iter()
            .map(|n| (n.id, NetworkSlot::new(n)))
            .collect();
        for record in records {
            for (id, ip) in held_addresses(record) {
                if let Some(slot) = by_id.get_mut(&id) {
                    slot.pool.take(ip);
                    slot.holders.insert(ip, record.id.clone());
                }
            }
        }
        Self {
            by_id,
            next_id: next_id.max(1),
        }
    }

    /// The network a NIC of `owner` names: its own of that name, else a public one.
    fn resolve(&self, owner: &Principal, name: &str) -> Option<&NetworkSlot> {
        let named = |slot: &&NetworkSlot| slot.network.name == name;
        self.by_id
            .values()
            .filter(named)
            .find(|s| &s.network.owner == owner)
            .or_else(|| self.by_id.values().filter(named).find(|s| s.network.public))
    }

    /// Chooses MAC and IP addresses for the NICs of `ids`, all or none: on an error nothing
    /// is taken. The addresses are taken until [`NetworkTable::release`] gives them back.
    pub(super) fn allocate(
        &mut self,
        owner: &Principal,
        descriptor: &VeeDescriptor,
        ids: &[VeeId],
    ) -> Result<Vec<Vec<NicAddress>>, CoreError> {
        let mut chosen: Vec<Vec<NicAddress>> = Vec::with_capacity(ids.len());
        let mut taken: Vec<(u32, Ipv4Addr)> = Vec::new();
        let result = (|| {
            for vee in ids {
                let mut nics = Vec::with_capacity(descriptor.nics.len());
                for (index, nic) in descriptor.nics.iter().enumerate() {
                    let target = nic.target.clone().unwrap_or_default();
                    let mac = mac_address(vee, index);
                    let network_id = self.resolve(owner, &nic.network).map(|s| s.network.id);
                    let Some(network_id) = network_id else {
                        if nic.ip.is_some() {
                            return Err(CoreError::MalformedDescriptor(DescriptorError::new(
                                format!("nics[{index}].ip"),
                                format!("no network named {:?} to take an address on", nic.network),
                            )));
                        }
                        nics.push(NicAddress {
                            target,
                            network: nic.network.clone(),
                            mac,
                            ip: None,
                            network_id: None,
                        });
                        continue;
                    };
                    let slot = self
                        .by_id
                        .get_mut(&network_id)
                        .expect("a network just resolved is there");
                    let ip = take_address(slot, nic.ip, index, ids.len())?;
                    slot.holders.insert(ip, vee.clone());
                    taken.push((network_id, ip));
                    nics.push(NicAddress {
                        target,
                        network: nic.network.clone(),
                        mac,
                        ip: Some(ip.to_string()),
                        network_id: Some(network_id),
                    });
                }
                chosen.push(nics);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(chosen),
            Err(e) => {
                for (id, ip) in taken {
                    self.give_back(id, ip);
                }
                Err(e)
            }
        }
    }

    /// Gives back every address `record` holds.
    pub(super) fn release(&mut self, record: &VeeRecord) {
        for (id, ip) in held_addresses(record) {
            self.give_back(id, ip);
        }
    }

    fn give_back(&mut self, id: u32, ip: Ipv4Addr) {
        if let Some(slot) = self.by_id.get_mut(&id) {
            slot.pool.release(ip);
            slot.holders.remove(&ip);
        }
    }
}

/// Takes `wanted`, or the lowest free address, on a network.
fn take_address(
    slot: &mut NetworkSlot,
    wanted: Option<Ipv4Addr>,
    index: usize,
    count: usize,
) -> Result<Ipv4Addr, CoreError> {
    let network = &slot.network;
    match wanted {
        Some(_) if count > 1 => Err(CoreError::MalformedDescriptor(DescriptorError::new(
            format!("nics[{index}].ip"),
            format!("a chosen address fits one VEE, not {count}"),
        ))),
        Some(ip) if !network.cidr.holds_vee_address(ip) => {
            Err(CoreError::MalformedDescriptor(DescriptorError::new(
                format!("nics[{index}].ip"),
                format!(
                    "{ip} is not a VEE address of {} ({}; the first address is the hosts')",
                    network.name, network.cidr
                ),
            )))
        }
        Some(ip) => {
            if slot.pool.take(ip) {
                Ok(ip)
            } else {
                let holder = slot
                    .holders
                    .get(&ip)
                    .map_or_else(String::new, |v| format!(" by {v}"));
                Err(CoreError::InUse(format!(
                    "{ip} on network {} is held{holder}",
                    network.name
                )))
            }
        }
        None => slot.pool.take_lowest().ok_or_else(|| {
            CoreError::InsufficientResources(format!(
                "network {} ({}) has no free address left for {count} VEE(s): its {} addresses are held",
                network.name,
                network.cidr,
                slot.pool.held()
            ))
        }),
    }
}

/// The (network id, address) pairs a record holds.
fn held_addresses(record: &VeeRecord) -> impl Iterator<Item = (u32, Ipv4Addr)> + '_ {
    record
        .generated
        .nics
        .iter()
        .filter_map(|nic| Some((nic.network_id?, nic.ip.as_deref()?.parse().ok()?)))
}

/// What a caller sees of a network.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub network: Network,
    pub held: usize,
    pub free: u32,
}

/// The networks part: the site's networks and the addresses VEEs hold on them. Its lock is
/// taken alone: no other part's lock is held while it is (see "The core's parts" in ARCHITECTURE.md).
pub struct Networks {
    table: Mutex<NetworkTable>,
    committer: Committer,
    /// Names this VEEM's LANs on hosts apart from another VEEM's ([`lan_key`]).
    lan_key: u32,
}

impl Networks {
    pub(super) fn new(table: NetworkTable, committer: Committer, lan_key: u32) -> Self {
        Self {
            table: Mutex::new(table),
            committer,
            lan_key,
        }
    }

    fn table(&self) -> MutexGuard<'_, NetworkTable> {
        self.table
            .lock()
            .expect("the networks' lock is never held across a panic")
    }

    /// Chooses MAC and IP addresses for the NICs of `ids`, all or none (see
    /// [`NetworkTable::allocate`]).
    pub(super) fn allocate(
        &self,
        owner: &Principal,
        descriptor: &VeeDescriptor,
        ids: &[VeeId],
    ) -> Result<Vec<Vec<NicAddress>>, CoreError> {
        self.table().allocate(owner, descriptor, ids)
    }

    /// Gives back every address the records hold.
    pub(super) fn release<'a>(&self, records: impl IntoIterator<Item = &'a VeeRecord>) {
        let mut table = self.table();
        for record in records {
            table.release(record);
        }
    }

    /// Creates a network of the caller's. Only admins make public ones.
    pub async fn create(
        &self,
        caller: &Caller,
        name: &str,
        cidr: &str,
        public: bool,
    ) -> Result<NetworkInfo, CoreError> {
        check_word("name".into(), name).map_err(|e| CoreError::malformed(e.field, e.reason))?;
        let cidr = Ipv4Cidr::parse(cidr).map_err(|reason| CoreError::malformed("cidr", reason))?;
        if public && !caller.admin {
            return Err(CoreError::AccessDenied(
                "only an admin makes public networks".into(),
            ));
        }
        let network = {
            let mut networks = self.table();
            let clash = networks.by_id.values().find(|s| {
                s.network.name == name
                    && (s.network.owner == caller.principal || (public && s.network.public))
            });
            if let Some(clash) = clash {
                let whose = if clash.network.public {
                    "a public network".to_owned()
                } else {
                    format!("a network of {}", clash.network.owner)
                };
                return Err(CoreError::Conflict(format!(
                    "{whose} is already named {name}"
                )));
            }
            let id = networks.next_id;
            if id > MAX_NETWORK_ID {
                return Err(CoreError::InsufficientResources(format!(
                    "the site has made {MAX_NETWORK_ID} networks, as many as VXLAN can tell apart"
                )));
            }
            networks.next_id = id + 1;
            let network = Network {
                id,
                owner: caller.principal.clone(),
                name: name.to_owned(),
                cidr,
                public,
                created_ms: now_ms(),
            };
            // Held (not yet visible) so a concurrent create of the same name clashes with it.
            networks.by_id.insert(id, NetworkSlot::new(network.clone()));
            network
        };
        if let Err(e) = self
            .committer
            .commit(vec![Change::InsertNetwork(network.clone())])
            .await
        {
            self.table().by_id.remove(&network.id);
            return Err(e);
        }
        tracing::info!(network = %network.name, id = network.id, cidr = %network.cidr, public, owner = %network.owner, "network created");
        Ok(NetworkInfo {
            free: network.cidr.vee_capacity(),
            network,
            held: 0,
        })
    }

    /// The networks the caller may attach to: its own and the public ones (an admin sees all).
    pub fn list(&self, caller: &Caller) -> Vec<NetworkInfo> {
        self.table()
            .by_id
            .values()
            .filter(|s| visible(caller, &s.network))
            .map(info)
            .collect()
    }

    /// The network a NIC of the caller's would attach to by this name.
    pub fn get(&self, caller: &Caller, name: &str) -> Result<NetworkInfo, CoreError> {
        self.table()
            .resolve(&caller.principal, name)
            .map(info)
            .ok_or_else(|| no_network(caller, name))
    }

    /// Deletes one of the caller's networks (an admin: also a public one) once no VEE holds an
    /// address on it, and answers it.
    pub(super) async fn delete(&self, caller: &Caller, name: &str) -> Result<Network, CoreError> {
        let network = {
            let table = self.table();
            let slot = table
                .resolve(&caller.principal, name)
                .ok_or_else(|| no_network(caller, name))?;
            if slot.network.owner != caller.principal && !caller.admin {
                return Err(CoreError::AccessDenied(format!(
                    "the public network {name} belongs to {}",
                    slot.network.owner
                )));
            }
            if !slot.holders.is_empty() {
                let holders: Vec<String> = slot
                    .holders
                    .values()
                    .take(5)
                    .map(|v| v.to_string())
                    .collect();
                return Err(CoreError::InUse(format!(
                    "network {name} has {} address(es) held by {}{}; purge those VEEs first",
                    slot.holders.len(),
                    holders.join(", "),
                    if slot.holders.len() > 5 { ", ..." } else { "" }
                )));
            }
            slot.network.clone()
        };
        self.committer
            .commit(vec![Change::DeleteNetwork { id: network.id }])
            .await?;
        self.table().by_id.remove(&network.id);
        tracing::info!(network = %network.name, id = network.id, "network deleted");
        Ok(network)
    }

    /// How hosts build a network's LAN.
    pub(super) fn lan_plan(&self, network: &Network) -> LanPlan {
        LanPlan {
            bridge: format!("vb{:06x}{:x}", self.lan_key, network.id),
            vni: network.id,
            host_address: network
                .public
                .then(|| format!("{}/{}", network.cidr.host_address(), network.cidr.prefix())),
        }
    }

    /// The network a NIC's address is on, if it still exists.
    pub(super) fn network(&self, id: u32) -> Option<Network> {
        self.table().by_id.get(&id).map(|s| s.network.clone())
    }
}

impl Veem {
    /// Deletes one of the caller's networks (an admin: also a public one) once no VEE holds an
    /// address on it, and takes its LAN down on every host.
    pub async fn delete_network(&self, caller: &Caller, name: &str) -> Result<(), CoreError> {
        let network = self.inner.networks.delete(caller, name).await?;
        let lan = self.inner.networks.lan_plan(&network);
        for (host, entry) in self.inner.hosts.all() {
            if entry.link.is_none() {
                continue;
            }
            let request = AgentRequest::RemoveLan { lan: lan.clone() };
            if let AgentResponse::Error { error } = self.inner.hosts.call(&host, request).await {
                tracing::warn!(%host, network = %network.name, error = %error.message, "cannot take the lan down");
            }
        }
        Ok(())
    }
}

fn visible(caller: &Caller, network: &Network) -> bool {
    caller.admin || network.public || network.owner == caller.principal
}

fn info(slot: &NetworkSlot) -> NetworkInfo {
    NetworkInfo {
        network: slot.network.clone(),
        held: slot.pool.held(),
        free: slot.pool.free(),
    }
}

fn no_network(caller: &Caller, name: &str) -> CoreError {
    CoreError::NotFound(format!(
        "no network named {name} of {} nor a public one",
        caller.principal
    ))
}

/// A key of this VEEM's own, for the names of its LANs on hosts: two VEEMs on one machine (or
/// a VEEM started again on another data directory) never share a bridge.
pub fn lan_key(data_dir: &std::path::Path) -> u32 {
    fnv1a(data_dir.as_os_str().as_encoded_bytes()) & 0x00ff_ffff
}

/// FNV-1a of `bytes`: stable across runs and Rust versions, unlike the std hasher.
pub(super) fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use veem_model::NicSpec;

    fn principal(name: &str) -> Principal {
        Principal::new(name).expect("valid")
    }

    fn network(id: u32, owner: &str, name: &str, cidr: &str, public: bool) -> Network {
        Network {
            id,
            owner: principal(owner),
            name: name.into(),
            cidr: Ipv4Cidr::parse(cidr).expect("valid"),
            public,
            created_ms: 0,
        }
    }

    fn descriptor(nics: &[(&str, Option<Ipv4Addr>)]) -> VeeDescriptor {
        let mut d = VeeDescriptor::minimal(1, 64);
        d.nics = nics
            .iter()
            .map(|(network, ip)| NicSpec {
                network: (*network).into(),
                target: None,
                ip: *ip,
            })
            .collect();
        d.validate().expect("valid");
        d
    }

    fn ids(n: u64) -> Vec<VeeId> {
        (1..=n).map(VeeId::from_seq).collect()
    }

    fn site() -> NetworkTable {
        NetworkTable::load(
            vec![
                network(1, "sm-a", "private", "10.10.0.0/29", false),
                network(2, "sm-b", "private", "10.10.0.0/29", false),
                network(3, "ops", "public", "10.77.0.0/24", true),
                network(4, "ops", "private", "10.99.0.0/24", true),
            ],
            5,
            &[],
        )
    }

    #[test]
    fn a_name_means_the_callers_own_network_else_a_public_one() {
        let site = site();
        let a = principal("sm-a");
        let c = principal("sm-c");
        assert_eq!(site.resolve(&a, "private").map(|s| s.network.id), Some(1));
        assert_eq!(
            site.resolve(&principal("sm-b"), "private")
                .map(|s| s.network.id),
            Some(2)
        );
        assert_eq!(
            site.resolve(&c, "private").map(|s| s.network.id),
            Some(4),
            "public"
        );
        assert_eq!(site.resolve(&a, "public").map(|s| s.network.id), Some(3));
        assert!(site.resolve(&a, "nat").is_none());
    }

    #[test]
    fn addresses_are_all_or_nothing_and_come_back_at_release() {
        let mut site = site();
        let a = principal("sm-a");
        let d = descriptor(&[("private", None), ("public", None), ("nat", None)]);
        // A /29 has five VEE addresses: six VEEs do not fit, and nothing is taken.
        let error = site.allocate(&a, &d, &ids(6)).expect_err("exhausted");
        assert!(
            matches!(error, CoreError::InsufficientResources(_)),
            "{error}"
        );
        assert_eq!(site.by_id[&1].pool.held(), 0);
        assert_eq!(
            site.by_id[&3].pool.held(),
            0,
            "the public addresses went back too"
        );

        let chosen = site.allocate(&a, &d, &ids(2)).expect("fits");
        let first = &chosen[0];
        assert_eq!(first[0].ip.as_deref(), Some("10.10.0.2"));
        assert_eq!(first[0].network_id, Some(1));
        assert_eq!(first[1].ip.as_deref(), Some("10.77.0.2"));
        assert_eq!(first[2].ip, None, "no network named nat: unattached");
        assert_eq!(first[2].mac, mac_address(&VeeId::from_seq(1), 2));
        assert_eq!(chosen[1][0].ip.as_deref(), Some("10.10.0.3"));
        let macs: std::collections::HashSet<&str> =
            chosen.iter().flatten().map(|n| n.mac.as_str()).collect();
        assert_eq!(macs.len(), 6, "every NIC its own MAC");

        let mut record = VeeRecord::defined(
            VeeId::from_seq(1),
            a.clone(),
            d,
            veem_model::InitModel::Besteffort,
            0,
        );
        record.generated.nics = chosen[0].clone();
        site.release(&record);
        assert_eq!(site.by_id[&1].pool.held(), 1);
        assert!(!site.by_id[&1].holders.values().any(|v| v == &record.id));
    }

    #[test]
    fn a_chosen_address_is_checked() {
        let mut site = site();
        let a = principal("sm-a");
        let ip = |last| Some(Ipv4Addr::new(10, 10, 0, last));
        assert!(site
            .allocate(&a, &descriptor(&[("private", ip(5))]), &ids(1))
            .is_ok());
        let cases = [
            (descriptor(&[("private", ip(5))]), 1, "in_use"),
            (descriptor(&[("private", ip(1))]), 1, "malformed_descriptor"),
            (descriptor(&[("private", ip(6))]), 2, "malformed_descriptor"),
            (descriptor(&[("nat", ip(6))]), 1, "malformed_descriptor"),
        ];
        for (d, count, code) in cases {
            let error = site.allocate(&a, &d, &ids(count)).expect_err("refused");
            assert_eq!(error.code(), code, "{error}");
        }
        assert_eq!(site.by_id[&1].pool.held(), 1);
    }

    #[test]
    fn loading_takes_the_addresses_records_hold() {
        let a = principal("sm-a");
        let mut record = VeeRecord::defined(
            VeeId::from_seq(9),
            a,
            descriptor(&[("private", None)]),
            veem_model::InitModel::Besteffort,
            0,
        );
        record.generated.nics = vec![NicAddress {
            target: "eth0".into(),
            network: "private".into(),
            mac: mac_address(&record.id, 0),
            ip: Some("10.10.0.4".into()),
            network_id: Some(1),
        }];
        let site = NetworkTable::load(
            vec![network(1, "sm-a", "private", "10.10.0.0/29", false)],
            2,
            &[record.clone()],
        );
        assert!(site.by_id[&1].pool.is_held(Ipv4Addr::new(10, 10, 0, 4)));
        assert_eq!(
            site.by_id[&1].holders.get(&Ipv4Addr::new(10, 10, 0, 4)),
            Some(&record.id)
        );
    }

    #[test]
    fn lan_keys_differ_per_data_dir_and_fit_six_hex_digits() {
        let a = lan_key(std::path::Path::new("/var/lib/veem"));
        let b = lan_key(std::path::Path::new("/var/lib/veem2"));
        assert_ne!(a, b);
        assert!(a <= 0xff_ffff && b <= 0xff_ffff);
        assert_eq!(a, lan_key(std::path::Path::new("/var/lib/veem")), "stable");
    }
}
