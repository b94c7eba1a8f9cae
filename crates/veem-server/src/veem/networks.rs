//! Networks: the virtual LANs of the VMI, the addresses the VEEM hands out on them, and the
//! plan a host needs to plug a NIC in.
//!
//! Rules kept here:
//! - A network's name is unique among its owner's networks, and among public networks. A NIC's
//!   `network` names the caller's own network, else a public one; a name no such network has
//!   leaves the NIC unattached (a MAC address, no IP address), so an OVF envelope's logical
//!   networks ("VM Network") never fail an import.
//! - An address is taken at InitializeVEEs (in the same commit as the VEE), or when a NIC is
//!   added to a DEFINED VEE (`devices`), and given back at purge or when that NIC is removed;
//!   a network with addresses taken is `in_use`.
//! - The hosts' side of a LAN is named from the site's key and the network's id, never reused,
//!   so a stale bridge on a host that missed a delete never joins a new network.
//! - A private network extends to the sites where its VEEs run (the paper's VAN): the primary
//!   makes the owner's copy of it at the site (same range, the addresses the primary chose,
//!   `extends` with the network's VNI and the primary's hosts), and adds the site's hosts to
//!   its own LAN's flooding list; both sides' hosts join the LAN by VXLAN. A site takes such
//!   a copy only from the principals `[federation] lan_extension` lists, and only on a VNI
//!   none of its own LANs uses; its own new networks skip the VNIs others brought. The copy
//!   goes when no VEE of the network is there, none waits for a place there (a placement that
//!   keeps retrying keeps its copy) and no placement under way holds it ([`LanClaim`]).
//!   Extending a LAN to a site and releasing it there take turns per (network, site).
//! - TWOPHASE at a site takes the batch's addresses first, then extends its LANs with them,
//!   then reserves (see `Veem::define_at`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use veem_api::agent::{AgentRequest, AgentResponse, LanPlan};
use veem_api::{code, LanEndpoint, LanExtensionRequest, NetworkRequest};
use veem_model::{
    check_word, mac_address, AddressPool, DescriptorError, Ipv4Cidr, LanExtension, LanPeer,
    Network, NicAddress, Principal, SiteName, VeeDescriptor, VeeId, VeeRecord,
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
            for (id, ip) in held_addresses(&record.generated.nics) {
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
        let result = (|| {
            for vee in ids {
                let mut nics = Vec::with_capacity(descriptor.nics.len());
                for (index, nic) in descriptor.nics.iter().enumerate() {
                    let address = self.take_nic(owner, nic, index, index, vee, ids.len());
                    match address {
                        Ok(address) => nics.push(address),
                        Err(e) => {
                            // What this VEE took so far is given back with the others'.
                            chosen.push(nics);
                            return Err(e);
                        }
                    }
                }
                chosen.push(nics);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(chosen),
            Err(e) => {
                for nics in &chosen {
                    self.release_chosen(nics);
                }
                Err(e)
            }
        }
    }

    /// Chooses the MAC (from `mac_index`) and IP addresses of one NIC of `vee`, the
    /// descriptor's `nics[index]`, in a batch of `count`; the address is taken until given
    /// back.
    pub(super) fn take_nic(
        &mut self,
        owner: &Principal,
        nic: &veem_model::NicSpec,
        index: usize,
        mac_index: usize,
        vee: &VeeId,
        count: usize,
    ) -> Result<NicAddress, CoreError> {
        let target = nic.target.clone().unwrap_or_default();
        let mac = mac_address(vee, mac_index);
        let network_id = self.resolve(owner, &nic.network).map(|s| s.network.id);
        let Some(network_id) = network_id else {
            if nic.ip.is_some() {
                return Err(CoreError::MalformedDescriptor(DescriptorError::new(
                    format!("nics[{index}].ip"),
                    format!("no network named {:?} to take an address on", nic.network),
                )));
            }
            return Ok(NicAddress {
                target,
                network: nic.network.clone(),
                mac,
                ip: None,
                network_id: None,
            });
        };
        let slot = self
            .by_id
            .get_mut(&network_id)
            .expect("a network just resolved is there");
        let ip = take_address(slot, nic.ip, index, count)?;
        slot.holders.insert(ip, vee.clone());
        Ok(NicAddress {
            target,
            network: nic.network.clone(),
            mac,
            ip: Some(ip.to_string()),
            network_id: Some(network_id),
        })
    }

    /// Gives back every address `record` holds.
    pub(super) fn release(&mut self, record: &VeeRecord) {
        self.release_chosen(&record.generated.nics);
    }

    /// Gives back every address of `nics`.
    fn release_chosen(&mut self, nics: &[NicAddress]) {
        for (id, ip) in held_addresses(nics) {
            self.give_back(id, ip);
        }
    }

    /// Makes addresses chosen ahead of a batch's ids ([`NetworkTable::allocate`] with other
    /// ids) the batch's: each VEE of `ids` holds its part of `chosen`, with its own MACs.
    pub(super) fn adopt(
        &mut self,
        mut chosen: Vec<Vec<NicAddress>>,
        ids: &[VeeId],
    ) -> Vec<Vec<NicAddress>> {
        for (nics, vee) in chosen.iter_mut().zip(ids) {
            for (index, nic) in nics.iter_mut().enumerate() {
                nic.mac = mac_address(vee, index);
            }
            for (id, ip) in held_addresses(nics) {
                if let Some(slot) = self.by_id.get_mut(&id) {
                    slot.holders.insert(ip, vee.clone());
                }
            }
        }
        chosen
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

/// The (network id, address) pairs a VEE's NICs hold.
fn held_addresses(nics: &[NicAddress]) -> impl Iterator<Item = (u32, Ipv4Addr)> + '_ {
    nics.iter()
        .filter_map(|nic| Some((nic.network_id?, nic.ip.as_deref()?.parse().ok()?)))
}

/// What a caller sees of a network.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub network: Network,
    pub held: usize,
    pub free: u32,
}

/// How this site's LANs join other sites' (`[federation]` of the config).
#[derive(Debug, Clone, Default)]
pub struct LanFederation {
    /// This site's hosts' VXLAN endpoints, as other sites reach them; none: no LAN of this
    /// site extends to another, and no other site's LAN extends here.
    pub endpoints: Vec<LanEndpoint>,
    /// The principals (other sites' VEEMs) that may join this site's hosts to their LANs.
    pub extenders: Vec<Principal>,
}

/// How often the copies of LANs no VEE needs at a site any more are looked for.
const LAN_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The most VXLAN endpoints a LAN of another site may name.
const MAX_LAN_PEERS: usize = 64;

/// The networks part: the site's networks and the addresses VEEs hold on them. Its lock is
/// taken alone: no other part's lock is held while it is (see "The core's parts" in ARCHITECTURE.md).
pub struct Networks {
    table: Mutex<NetworkTable>,
    committer: Committer,
    /// Names this VEEM's LANs on hosts apart from another VEEM's ([`lan_key`]).
    lan_key: u32,
    /// Set once at start ([`Networks::set_federation`]); unset: none.
    federation: std::sync::OnceLock<LanFederation>,
    /// Changes to networks' extensions, one at a time (each reads, then commits, a network).
    extending: tokio::sync::Mutex<()>,
    /// One turn per (network, site): extending a LAN to a site and taking it away from there
    /// never interleave, so a placement that fails never deletes a copy another just made.
    lan_turns: Mutex<BTreeMap<LanAt, Arc<tokio::sync::Mutex<()>>>>,
    /// The placements under way that extended a LAN to a site and have no VEE recorded there
    /// yet (see [`LanClaim`]).
    claims: LanClaims,
}

/// How many placements under way hold each LAN at each site.
#[derive(Default, Clone)]
struct LanClaims(Arc<Mutex<BTreeMap<LanAt, usize>>>);

impl LanClaims {
    fn counts(&self) -> MutexGuard<'_, BTreeMap<LanAt, usize>> {
        self.0
            .lock()
            .expect("the LAN claims' lock is never held across a panic")
    }

    /// A hold on network `id`'s LAN at `site`, until dropped.
    fn claim(&self, id: u32, site: &SiteName) -> LanClaim {
        let key = (id, site.clone());
        *self.counts().entry(key.clone()).or_default() += 1;
        LanClaim {
            claims: Some(self.clone()),
            held: vec![key],
        }
    }

    /// Whether a placement under way holds network `id`'s LAN at `site`.
    fn claimed(&self, id: u32, site: &SiteName) -> bool {
        self.counts().contains_key(&(id, site.clone()))
    }
}

/// A private LAN at a site: (network id, site).
type LanAt = (u32, SiteName);

/// A placement's hold on the LANs it extended to a site, until the VEEs it places there are
/// recorded at that site (a TWOPHASE batch until it is defined): while it is held, those
/// LANs do not leave the site. Dropped, the hold ends.
#[derive(Default)]
pub(super) struct LanClaim {
    claims: Option<LanClaims>,
    held: Vec<LanAt>,
}

impl LanClaim {
    /// Holds what `other` holds too.
    pub(super) fn merge(&mut self, mut other: LanClaim) {
        if self.claims.is_none() {
            self.claims = other.claims.clone();
        }
        self.held.append(&mut other.held);
    }
}

impl Drop for LanClaim {
    fn drop(&mut self) {
        let Some(claims) = &self.claims else {
            return;
        };
        let mut claims = claims.counts();
        for key in self.held.drain(..) {
            if let Some(count) = claims.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    claims.remove(&key);
                }
            }
        }
    }
}

impl Networks {
    pub(super) fn new(table: NetworkTable, committer: Committer, lan_key: u32) -> Self {
        Self {
            table: Mutex::new(table),
            committer,
            lan_key,
            federation: std::sync::OnceLock::new(),
            extending: tokio::sync::Mutex::new(()),
            lan_turns: Mutex::new(BTreeMap::new()),
            claims: LanClaims::default(),
        }
    }

    /// The turn of network `id`'s LAN at `site` (see `lan_turns`).
    fn lan_turn(&self, id: u32, site: &SiteName) -> Arc<tokio::sync::Mutex<()>> {
        self.lan_turns
            .lock()
            .expect("the LAN turns' lock is never held across a panic")
            .entry((id, site.clone()))
            .or_default()
            .clone()
    }

    /// A hold on network `id`'s LAN at `site` (see [`LanClaim`]).
    fn claim(&self, id: u32, site: &SiteName) -> LanClaim {
        self.claims.claim(id, site)
    }

    /// Whether a placement under way holds network `id`'s LAN at `site`.
    fn claimed(&self, id: u32, site: &SiteName) -> bool {
        self.claims.claimed(id, site)
    }

    /// Gives back the addresses chosen for a batch that was not defined after all.
    pub(super) fn release_chosen(&self, chosen: &[Vec<NicAddress>]) {
        let mut table = self.table();
        for nics in chosen {
            table.release_chosen(nics);
        }
    }

    /// How this site's LANs join other sites' (the config's `[federation]`); set once, at start.
    pub fn set_federation(&self, federation: LanFederation) {
        if self.federation.set(federation).is_err() {
            tracing::warn!("the LAN federation settings are set once; kept the first");
        }
    }

    fn federation(&self) -> LanFederation {
        self.federation.get().cloned().unwrap_or_default()
    }

    /// This site's hosts' VXLAN endpoints, as other sites reach them.
    pub fn endpoints(&self) -> Vec<LanEndpoint> {
        self.federation().endpoints
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

    /// Chooses the addresses of one NIC added to `vee` (see [`NetworkTable::take_nic`]).
    pub(super) fn take_nic(
        &self,
        owner: &Principal,
        nic: &veem_model::NicSpec,
        index: usize,
        mac_index: usize,
        vee: &VeeId,
    ) -> Result<NicAddress, CoreError> {
        self.table().take_nic(owner, nic, index, mac_index, vee, 1)
    }

    /// Makes addresses chosen ahead of a batch's ids the batch's (see [`NetworkTable::adopt`]).
    pub(super) fn adopt(
        &self,
        chosen: Vec<Vec<NicAddress>>,
        ids: &[VeeId],
    ) -> Vec<Vec<NicAddress>> {
        self.table().adopt(chosen, ids)
    }

    /// Gives back every address the records hold.
    pub(super) fn release<'a>(&self, records: impl IntoIterator<Item = &'a VeeRecord>) {
        let mut table = self.table();
        for record in records {
            table.release(record);
        }
    }

    /// Creates a network of the caller's. Only admins make public ones. With `extends`, the
    /// network is this site's side of another site's LAN (see the module's rules).
    pub async fn create(
        &self,
        caller: &Caller,
        request: &NetworkRequest,
    ) -> Result<NetworkInfo, CoreError> {
        let (name, public) = (request.name.as_str(), request.public);
        check_word("name".into(), name).map_err(|e| CoreError::malformed(e.field, e.reason))?;
        let cidr = Ipv4Cidr::parse(&request.cidr)
            .map_err(|reason| CoreError::malformed("cidr", reason))?;
        if public && !caller.admin {
            return Err(CoreError::AccessDenied(
                "only an admin makes public networks".into(),
            ));
        }
        let extension = request
            .extends
            .as_ref()
            .map(|extends| self.check_extension(caller, public, extends))
            .transpose()?;
        let network = {
            let mut networks = self.table();
            if let Some(vni) = extension.as_ref().map(|e| e.vni) {
                if let Some(user) = networks.by_id.values().find(|s| s.network.vni() == vni) {
                    return Err(CoreError::Conflict(format!(
                        "VXLAN network identifier {vni} is taken at this site (network {} of {})",
                        user.network.name, user.network.owner
                    )));
                }
            }
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
            // An id is its LAN's VNI: one another site's LAN brought here is skipped.
            let mut id = networks.next_id;
            while networks
                .by_id
                .values()
                .any(|s| s.network.extension.as_ref().is_some_and(|e| e.vni == id))
            {
                id += 1;
            }
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
                extension,
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
        tracing::info!(network = %network.name, id = network.id, vni = network.vni(), cidr = %network.cidr, public, owner = %network.owner, "network created");
        Ok(NetworkInfo {
            free: network.cidr.vee_capacity(),
            network,
            held: 0,
        })
    }

    /// With `extends`, when the caller has a network of that name already: its copy of the same
    /// LAN (range and VNI), renewed with the peers asked for. Answers it, and whether its
    /// peers changed; `None` when the caller has no network of that name.
    async fn renew_copy(
        &self,
        caller: &Caller,
        request: &NetworkRequest,
    ) -> Result<Option<(NetworkInfo, bool)>, CoreError> {
        let Some(extends) = &request.extends else {
            return Ok(None);
        };
        let _one_at_a_time = self.extending.lock().await;
        let existing = self
            .table()
            .by_id
            .values()
            .find(|s| s.network.owner == caller.principal && s.network.name == request.name)
            .map(|s| s.network.clone());
        let Some(mut network) = existing else {
            return Ok(None);
        };
        let extension = self.check_extension(caller, request.public, extends)?;
        let same_lan = network.cidr.to_string() == request.cidr
            && network.extension.as_ref().map(|e| e.vni) == Some(extension.vni);
        if !same_lan {
            return Err(CoreError::Conflict(format!(
                "a network of {} is already named {}",
                caller.principal, request.name
            )));
        }
        let changed = network.extension.as_ref() != Some(&extension);
        if changed {
            network.extension = Some(extension);
            self.committer
                .commit(vec![Change::UpdateNetwork(network.clone())])
                .await?;
        }
        let mut table = self.table();
        let slot = table
            .by_id
            .get_mut(&network.id)
            .ok_or_else(|| CoreError::NotFound(format!("network {} was deleted", network.name)))?;
        slot.network = network;
        Ok(Some((info(slot), changed)))
    }

    /// Whether the caller may make a network this site's side of another site's LAN, and
    /// that LAN's extension as asked.
    fn check_extension(
        &self,
        caller: &Caller,
        public: bool,
        extends: &LanExtensionRequest,
    ) -> Result<LanExtension, CoreError> {
        let federation = self.federation();
        if !federation.extenders.contains(&caller.principal) || federation.endpoints.is_empty() {
            return Err(CoreError::AccessDenied(format!(
                "this site joins no LAN of {}'s to its hosts ([federation] lan_extension and lan_endpoints)",
                caller.principal
            )));
        }
        if public {
            return Err(CoreError::malformed(
                "extends",
                "a public network is the site's own: only a private one joins another site's LAN",
            ));
        }
        if extends.vni == 0 || extends.vni > MAX_NETWORK_ID {
            return Err(CoreError::malformed(
                "extends.vni",
                format!("must be between 1 and {MAX_NETWORK_ID}"),
            ));
        }
        if extends.peers.is_empty() || extends.peers.len() > MAX_LAN_PEERS {
            return Err(CoreError::malformed(
                "extends.peers",
                format!("between 1 and {MAX_LAN_PEERS} VXLAN endpoints"),
            ));
        }
        if let Some(bad) = extends
            .peers
            .iter()
            .find(|p| p.port == 0 || p.address.is_unspecified() || p.address.is_multicast())
        {
            return Err(CoreError::malformed(
                "extends.peers",
                format!("{}:{} is no unicast VXLAN endpoint", bad.address, bad.port),
            ));
        }
        let mut peers: Vec<LanPeer> = extends
            .peers
            .iter()
            .map(|p| LanPeer {
                address: p.address,
                port: p.port,
                site: None,
            })
            .collect();
        peers.sort();
        peers.dedup();
        Ok(LanExtension {
            vni: extends.vni,
            peers,
        })
    }

    /// Makes `site`'s hosts (`endpoints`) the flooding peers of network `id`'s LAN at that
    /// site, in its stored record: the network as it is now, and whether it changed.
    async fn set_site_peers(
        &self,
        id: u32,
        site: &SiteName,
        endpoints: &[LanEndpoint],
    ) -> Result<Option<Network>, CoreError> {
        let _one_at_a_time = self.extending.lock().await;
        let Some(mut network) = self.network(id) else {
            return Ok(None);
        };
        let before = network.extension.clone();
        let mut peers: Vec<LanPeer> = before
            .iter()
            .flat_map(|e| e.peers.iter())
            .filter(|p| p.site.as_deref() != Some(site.as_str()))
            .cloned()
            .collect();
        peers.extend(endpoints.iter().map(|e| LanPeer {
            address: e.address,
            port: e.port,
            site: Some(site.to_string()),
        }));
        peers.sort();
        peers.dedup();
        network.extension = (!peers.is_empty()).then(|| LanExtension {
            vni: network.vni(),
            peers,
        });
        if network.extension == before {
            return Ok(None);
        }
        self.committer
            .commit(vec![Change::UpdateNetwork(network.clone())])
            .await?;
        if let Some(slot) = self.table().by_id.get_mut(&id) {
            slot.network = network.clone();
        }
        Ok(Some(network))
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
            vni: network.vni(),
            host_address: network
                .public
                .then(|| format!("{}/{}", network.cidr.host_address(), network.cidr.prefix())),
            peers: network
                .extension
                .iter()
                .flat_map(|e| e.peers.iter())
                .map(|p| LanEndpoint {
                    address: p.address,
                    port: p.port,
                })
                .collect(),
        }
    }

    /// The network a NIC of `owner`'s named `name` attaches to: its own, else a public one.
    pub(super) fn resolve(&self, owner: &Principal, name: &str) -> Option<Network> {
        self.table().resolve(owner, name).map(|s| s.network.clone())
    }

    /// The private networks of this site whose LANs extend to other sites, and those sites.
    fn extended(&self) -> Vec<(u32, Vec<SiteName>)> {
        self.table()
            .by_id
            .values()
            .filter(|s| !s.network.public)
            .filter_map(|s| {
                let sites: BTreeSet<SiteName> = s
                    .network
                    .extension
                    .iter()
                    .flat_map(|e| e.peers.iter())
                    .filter_map(|p| SiteName::new(p.site.as_deref()?).ok())
                    .collect();
                (!sites.is_empty()).then(|| (s.network.id, sites.into_iter().collect()))
            })
            .collect()
    }

    /// The network a NIC's address is on, if it still exists.
    pub(super) fn network(&self, id: u32) -> Option<Network> {
        self.table().by_id.get(&id).map(|s| s.network.clone())
    }
}

impl Veem {
    /// `POST /networks`: creates a network of the caller's; with `extends`, a copy the caller
    /// already has of that LAN is renewed instead (its hosts then flood to the peers asked
    /// for). Answers it, and whether it was created.
    pub async fn create_network(
        &self,
        caller: &Caller,
        request: &NetworkRequest,
    ) -> Result<(NetworkInfo, bool), CoreError> {
        if let Some((info, changed)) = self.inner.networks.renew_copy(caller, request).await? {
            if changed {
                tracing::info!(network = %info.network.name, owner = %info.network.owner, "a lan's copy has new peers");
                let lan = self.inner.networks.lan_plan(&info.network);
                self.on_every_host(&info.network, || AgentRequest::RefreshLan {
                    lan: lan.clone(),
                })
                .await;
            }
            return Ok((info, false));
        }
        Ok((self.inner.networks.create(caller, request).await?, true))
    }

    /// Deletes one of the caller's networks (an admin: also a public one) once no VEE holds an
    /// address on it, and takes its LAN down on every host.
    pub async fn delete_network(&self, caller: &Caller, name: &str) -> Result<(), CoreError> {
        let network = self.inner.networks.delete(caller, name).await?;
        let lan = self.inner.networks.lan_plan(&network);
        self.on_every_host(&network, || AgentRequest::RemoveLan { lan: lan.clone() })
            .await;
        Ok(())
    }

    /// Sends `request` about `network`'s LAN to every host that is connected; a host that
    /// refuses is logged (one that is not connected builds the LAN anew when a NIC needs it).
    async fn on_every_host(&self, network: &Network, request: impl Fn() -> AgentRequest) {
        for (host, entry) in self.inner.hosts.all() {
            if entry.link.is_none() {
                continue;
            }
            let request = request();
            let op = request.op();
            if let AgentResponse::Error { error } = self.inner.hosts.call(&host, request).await {
                tracing::warn!(%host, network = %network.name, op, error = %error.message, "a host cannot change a lan");
            }
        }
    }

    /// Sees that the NICs of `owner`'s VEE (its `descriptor` and the `addresses` this VEEM
    /// chose) that are on one of the owner's private networks are on that LAN at `site` too:
    /// the site gets the owner's copy of the network (created there if it has none, see the
    /// module's rules) and this site's hosts flood to the site's. Rewrites the descriptor as it
    /// goes to the site: those NICs name the copy and have the addresses chosen here. Answers
    /// the placement's hold on those LANs at the site, to keep until the VEE is recorded there.
    /// Without `addresses` (none chosen yet), a VEE with such a NIC does not go to a site.
    pub(super) async fn extend_lans(
        &self,
        site: &SiteName,
        client: &veem_client::Client,
        owner: &Principal,
        descriptor: &mut VeeDescriptor,
        addresses: Option<&[NicAddress]>,
    ) -> Result<LanClaim, CoreError> {
        let networks = &self.inner.networks;
        let mut claim = LanClaim::default();
        for index in 0..descriptor.nics.len() {
            let network = match addresses {
                Some(chosen) => chosen
                    .get(index)
                    .and_then(|nic| nic.network_id)
                    .and_then(|id| networks.network(id)),
                None => networks.resolve(owner, &descriptor.nics[index].network),
            };
            let Some(network) = network.filter(|n| !n.public) else {
                continue;
            };
            let chosen = addresses
                .and_then(|chosen| chosen.get(index))
                .and_then(|nic| nic.ip.as_deref())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            let Some(ip) = chosen else {
                return Err(CoreError::InsufficientResources(format!(
                    "a VEE on private network {} goes to a site with the address chosen here, and none was",
                    network.name
                )));
            };
            let (copy, held) = self.extend_lan(site, client, &network).await?;
            claim.merge(held);
            let nic = &mut descriptor.nics[index];
            nic.network = copy;
            nic.ip = Some(ip);
        }
        Ok(claim)
    }

    /// Extends `network`'s LAN to `site` (see [`Veem::extend_lans`]), in the turn of that LAN
    /// at that site: the name of its copy there, and the hold on it.
    async fn extend_lan(
        &self,
        site: &SiteName,
        client: &veem_client::Client,
        network: &Network,
    ) -> Result<(String, LanClaim), CoreError> {
        let networks = &self.inner.networks;
        if networks.endpoints().is_empty() {
            return Err(CoreError::Conflict(format!(
                "network {} cannot extend to site {site}: this site's hosts join no LAN of another site ([federation] lan_endpoints)",
                network.name
            )));
        }
        let changed = {
            let turn = networks.lan_turn(network.id, site);
            let _turn = turn.lock().await;
            // As it is now: another turn may have changed the sites it extends to.
            let network = networks.network(network.id).ok_or_else(|| {
                CoreError::NotFound(format!("network {} was deleted", network.name))
            })?;
            let theirs = self.send_copy(site, client, &network).await?;
            let changed = networks.set_site_peers(network.id, site, &theirs).await?;
            if changed.is_some() {
                tracing::info!(network = %network.name, %site, vni = network.vni(), peers = theirs.len(), "the lan extends to a site");
            }
            // Held before the turn ends: a release that follows sees the placement under way.
            (changed, networks.claim(network.id, site))
        };
        let (changed, held) = changed;
        if let Some(changed) = changed {
            self.lan_sites_changed(&changed, site).await;
        }
        Ok((lan_copy_name(&network.owner, &network.name), held))
    }

    /// Makes (or renews) `network`'s copy at `site`, flooding to this site's hosts and to the
    /// other sites' the LAN extends to: answers the site's own hosts, as it says.
    async fn send_copy(
        &self,
        site: &SiteName,
        client: &veem_client::Client,
        network: &Network,
    ) -> Result<Vec<LanEndpoint>, CoreError> {
        let name = lan_copy_name(&network.owner, &network.name);
        let mut peers = self.inner.networks.endpoints();
        peers.extend(
            network
                .extension
                .iter()
                .flat_map(|e| e.peers.iter())
                .filter(|p| p.site.as_deref() != Some(site.as_str()))
                .map(|p| LanEndpoint {
                    address: p.address,
                    port: p.port,
                }),
        );
        let request = NetworkRequest {
            name: name.clone(),
            cidr: network.cidr.to_string(),
            public: false,
            extends: Some(LanExtensionRequest {
                vni: network.vni(),
                peers,
            }),
        };
        let refused = |reason: String| {
            CoreError::Conflict(format!("network {} at site {site}: {reason}", network.name))
        };
        let view = client
            .create_network_with(&request)
            .await
            .map_err(|e| refused(e.to_string()))?;
        match view.extends {
            Some(extends) if extends.vni == network.vni() && view.cidr == request.cidr => {
                Ok(extends.endpoints)
            }
            other => Err(refused(format!(
                "the site's network {name} is not this LAN's copy ({}, {other:?})",
                view.cidr
            ))),
        }
    }

    /// `network`'s LAN now extends to other sites than before (`changed` is `site`'s part):
    /// this site's hosts flood to the sites it extends to now, and so does each of those
    /// sites but `site` (its copy renewed), so every side floods to every other.
    async fn lan_sites_changed(&self, network: &Network, changed: &SiteName) {
        // As it is now: a later change may have been made since.
        let network = &self
            .inner
            .networks
            .network(network.id)
            .unwrap_or_else(|| network.clone());
        let lan = self.inner.networks.lan_plan(network);
        self.on_every_host(network, || AgentRequest::RefreshLan { lan: lan.clone() })
            .await;
        let others: BTreeSet<&str> = network
            .extension
            .iter()
            .flat_map(|e| e.peers.iter())
            .filter_map(|p| p.site.as_deref())
            .filter(|s| *s != changed.as_str())
            .collect();
        for other in others {
            let Ok(other) = SiteName::new(other) else {
                continue;
            };
            // In that site's turn, and only while the LAN still extends there (as it is now):
            // a copy renewed after it was taken away would stay.
            let turn = self.inner.networks.lan_turn(network.id, &other);
            let _turn = turn.lock().await;
            let Some(now) = self
                .inner
                .networks
                .network(network.id)
                .filter(|n| extends_to(n, &other))
            else {
                continue;
            };
            let sent = match self.inner.sites.client(&other) {
                Ok(client) => self.send_copy(&other, &client, &now).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(network = %network.name, site = %other, error = %e, "cannot renew a lan's copy at a site");
            }
        }
    }

    /// After `record`, which ran at a site, is purged there: its LANs leave the site unless
    /// another VEE there is on them (see [`Veem::release_lans_at`]).
    pub(super) async fn withdraw_lans(&self, record: &VeeRecord) {
        let (Some(site), Some(_)) = (&record.site, &record.remote) else {
            return;
        };
        self.release_lans_at(site, &network_ids(record), Some(&record.id))
            .await;
    }

    /// Each private network of `ids` that no VEE at `site` is on (but `leaving`, which is going),
    /// nor waits for that site, nor is being placed there, leaves the site: its copy there is
    /// deleted, and the other sides stop flooding to the site's hosts. Also after a VEE the LAN
    /// was extended for did not go there after all. Each in the turn of that LAN at that site.
    pub(super) async fn release_lans_at(
        &self,
        site: &SiteName,
        ids: &[u32],
        leaving: Option<&VeeId>,
    ) {
        let networks = &self.inner.networks;
        for &id in ids {
            let turn = networks.lan_turn(id, site);
            let changed = {
                let _turn = turn.lock().await;
                let Some(network) = networks.network(id).filter(|n| !n.public) else {
                    continue;
                };
                if !extends_to(&network, site) || self.lan_used_at(id, site, leaving) {
                    continue;
                }
                let name = lan_copy_name(&network.owner, &network.name);
                let gone = match self.inner.sites.client(site) {
                    Ok(client) => match client.delete_network(&name).await {
                        Ok(()) => true,
                        Err(e) if e.code() == Some(code::NOT_FOUND) => true,
                        // E.g. `in_use`: a VEE there (one arriving) is on it. Kept, and both
                        // sides go on flooding; the sweep tries again.
                        Err(e) => {
                            tracing::warn!(%site, network = %name, error = %e, "cannot delete a lan's copy at a site; kept");
                            false
                        }
                    },
                    // A site no longer registered has nothing of it to delete.
                    Err(CoreError::NotFound(_)) => true,
                    Err(e) => {
                        tracing::warn!(%site, network = %name, error = %e, "cannot delete a lan's copy at a site now; kept");
                        false
                    }
                };
                if !gone {
                    continue;
                }
                match networks.set_site_peers(id, site, &[]).await {
                    Ok(changed) => changed,
                    Err(e) => {
                        tracing::warn!(network = %network.name, %site, error = %e, "cannot record that a lan left a site");
                        None
                    }
                }
            };
            if let Some(changed) = changed {
                tracing::info!(network = %changed.name, %site, "the lan no longer extends to a site");
                self.lan_sites_changed(&changed, site).await;
            }
        }
    }

    /// Takes away, every [`LAN_SWEEP_INTERVAL`], the copies no VEE needs any more at the sites
    /// the LANs extend to: those kept for a VEE that stopped waiting without being purged (its
    /// ACTIVATE cancelled), or left by a placement cut short by a restart or by a migration.
    pub(super) async fn lan_sweep_loop(self) {
        let mut tick = tokio::time::interval(LAN_SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (id, sites) in self.inner.networks.extended() {
                for site in sites {
                    self.release_lans_at(&site, &[id], None).await;
                }
            }
        }
    }

    /// Whether network `id`'s LAN is needed at `site`: a VEE on it (but `leaving`) is at the
    /// site or waits for a place there (so a placement that keeps retrying keeps its copy
    /// there), or migrates (its destination is not in its record yet), or a placement under
    /// way holds it there.
    fn lan_used_at(&self, id: u32, site: &SiteName, leaving: Option<&VeeId>) -> bool {
        if self.inner.networks.claimed(id, site) {
            return true;
        }
        let wanted = Some(site.clone());
        !self
            .inner
            .records
            .ids_where(|r| {
                Some(&r.id) != leaving
                    && r.generated.nics.iter().any(|n| n.network_id == Some(id))
                    && (r.site.as_ref() == Some(site)
                        || r.phase == Some(veem_model::Phase::Migrating)
                        || (r.site.is_none()
                            && r.veem_state == veem_model::VeemState::Pending
                            && self.placement_order(r).contains(&wanted)))
            })
            .is_empty()
    }

    /// After `record` was placed elsewhere, or is purged, waiting no more: the LANs kept at
    /// the sites it waited for (but `placed_at`) leave them unless others need them there.
    pub(super) async fn release_lans_waited(
        &self,
        record: &VeeRecord,
        placed_at: Option<&SiteName>,
        leaving: Option<&VeeId>,
    ) {
        let ids = network_ids(record);
        if ids.is_empty() {
            return;
        }
        for site in self.placement_order(record).into_iter().flatten() {
            if Some(&site) != placed_at {
                self.release_lans_at(&site, &ids, leaving).await;
            }
        }
    }
}

/// The networks `record`'s NICs are on, by id (a NIC on no network has none).
pub(super) fn network_ids(record: &VeeRecord) -> Vec<u32> {
    record
        .generated
        .nics
        .iter()
        .filter_map(|n| n.network_id)
        .collect()
}

/// Whether `network`'s LAN floods to `site`'s hosts.
fn extends_to(network: &Network, site: &SiteName) -> bool {
    network
        .extension
        .iter()
        .flat_map(|e| e.peers.iter())
        .any(|p| p.site.as_deref() == Some(site.as_str()))
}

/// The name of `owner`'s network `name` at a site it extends to: marked with the owner, as its
/// tags are there (all of this VEEM's VEEs are one principal's at the site).
pub(super) fn lan_copy_name(owner: &Principal, name: &str) -> String {
    owned_tag(owner, name)
}

/// A tag of `owner`'s as it goes to a site: marked with the owner (a stable hash of its name),
/// within a tag's 64 characters.
pub(super) fn owned_tag(owner: &Principal, tag: &str) -> String {
    let mark = fnv1a(owner.as_str().as_bytes());
    let tagged = format!("{mark:08x}:{tag}");
    if tagged.len() <= 64 {
        tagged
    } else {
        format!("{mark:08x}:{:08x}", fnv1a(tag.as_bytes()))
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
            extension: None,
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
    fn a_lan_is_held_at_a_site_while_any_placement_under_way_holds_it() {
        let claims = LanClaims::default();
        let (east, north) = (
            SiteName::new("east").expect("valid"),
            SiteName::new("north").expect("valid"),
        );
        let first = claims.claim(1, &east);
        let mut second = claims.claim(1, &east);
        second.merge(claims.claim(2, &north));
        assert!(claims.claimed(1, &east) && claims.claimed(2, &north));
        assert!(!claims.claimed(1, &north) && !claims.claimed(2, &east));
        drop(first);
        assert!(
            claims.claimed(1, &east),
            "the second placement still holds it"
        );
        drop(second);
        assert!(!claims.claimed(1, &east) && !claims.claimed(2, &north));
        assert!(claims.counts().is_empty(), "nothing kept of ended holds");
        drop(LanClaim::default());
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
