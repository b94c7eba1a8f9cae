//! Virtual LANs (use case 2.2.2): a network's IPv4 range, the addresses the VEEM hands out in
//! it, and the MAC addresses of NICs. Pure: how a LAN is built on a host is the agent's.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::{Principal, VeeId};

/// The widest network veem hands addresses in (a /8), and the narrowest: a /29 keeps, besides
/// the network and broadcast addresses and the host's address, five for VEEs.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 29;

/// An IPv4 network in CIDR form, `10.10.0.0/24`: its host bits are zero.
///
/// Of its addresses, the first (`.0` of a /24) and the last are the network's and the
/// broadcast address; the second ([`Ipv4Cidr::host_address`]) is kept for the hosts' side (on
/// a public network the hosts hold it, so they reach its VEEs); VEEs get the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not in CIDR form, e.g. 10.10.0.0/24"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "a network's prefix must be between /{MIN_PREFIX} and /{MAX_PREFIX}, not /{prefix}"
            ));
        }
        let cidr = Self {
            network: u32::from(address) & mask(prefix),
            prefix,
        };
        if cidr.network != u32::from(address) {
            return Err(format!("{text} has host bits set; the network is {cidr}"));
        }
        Ok(cidr)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The hosts' own address on the network.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The first and last address a VEE may get.
    fn vee_range(&self) -> (u32, u32) {
        let broadcast = self.network | !mask(self.prefix);
        (self.network + 2, broadcast - 1)
    }

    /// How many VEE addresses the network has.
    pub fn vee_capacity(&self) -> u32 {
        let (first, last) = self.vee_range();
        last - first + 1
    }

    /// Whether a VEE may have this address on the network.
    pub fn holds_vee_address(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.vee_range();
        (first..=last).contains(&u32::from(ip))
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix))
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

/// A virtual LAN. `id` is unique in the site and never reused (it names the LAN on the hosts
/// and is its VXLAN network identifier, unless the LAN is joined with another site's: see
/// [`LanExtension`]); `name` is unique per owner, and among public networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: u32,
    pub owner: Principal,
    pub name: String,
    pub cidr: Ipv4Cidr,
    /// Every principal may attach to it, and the hosts reach its VEEs.
    pub public: bool,
    pub created_ms: u64,
    /// The LAN is joined at layer 2 with LANs of other sites (federation, the paper's VAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<LanExtension>,
}

impl Network {
    /// The VXLAN network identifier of its LAN: the one agreed with the other sites when it
    /// is joined with theirs, else its id.
    pub fn vni(&self) -> u32 {
        self.extension.as_ref().map_or(self.id, |e| e.vni)
    }
}

/// How a LAN is joined with LANs of other sites: one VXLAN network identifier on every side,
/// and the other sides' hosts, to which this site's hosts flood the LAN's broadcasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanExtension {
    pub vni: u32,
    #[serde(default)]
    pub peers: Vec<LanPeer>,
}

/// A VXLAN endpoint of another site's host: its underlay address and UDP port; `site` names
/// the site it belongs to at the primary (a site's copy of the LAN has the primary's hosts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LanPeer {
    pub address: std::net::IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// The addresses of one network that VEEs hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    cidr: Ipv4Cidr,
    held: BTreeSet<u32>,
}

impl AddressPool {
    pub fn new(cidr: Ipv4Cidr) -> Self {
        Self {
            cidr,
            held: BTreeSet::new(),
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn free(&self) -> u32 {
        self.cidr.vee_capacity() - u32::try_from(self.held.len()).unwrap_or(u32::MAX)
    }

    pub fn is_held(&self, ip: Ipv4Addr) -> bool {
        self.held.contains(&u32::from(ip))
    }

    /// Takes the lowest free address, or `None` when all are held.
    pub fn take_lowest(&mut self) -> Option<Ipv4Addr> {
        let (first, last) = self.cidr.vee_range();
        // Held addresses are dense from the bottom in the usual case: walk them in order and
        // stop at the first gap.
        let mut candidate = first;
        for &held in self.held.range(first..=last) {
            if held != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate > last {
            return None;
        }
        self.held.insert(candidate);
        Some(Ipv4Addr::from(candidate))
    }

    /// Takes a chosen address; `false` if it is held or not a VEE address of the network.
    pub fn take(&mut self, ip: Ipv4Addr) -> bool {
        self.cidr.holds_vee_address(ip) && self.held.insert(u32::from(ip))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.held.remove(&u32::from(ip));
    }
}

/// Most NICs a VEE may have (an OVF envelope may describe up to this many).
pub const MAX_NICS: usize = 64;

/// The MAC address of NIC `index` (below [`MAX_NICS`]) of `vee`: locally administered unicast
/// (`02:`), then 34 bits of the VEE's number and 6 of the NIC's index, so it is unique in the
/// site for as long as VEE numbers stay below 2^34.
pub fn mac_address(vee: &VeeId, index: usize) -> String {
    let low = ((vee.seq() & ((1 << 34) - 1)) << 6) | (index as u64 & 0x3f);
    let bytes = (0x02 << 40 | low).to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(text).expect("valid cidr")
    }

    #[test]
    fn cidrs_parse_and_say_why_not() {
        let c = cidr("10.10.0.0/24");
        assert_eq!(c.to_string(), "10.10.0.0/24");
        assert_eq!(c.host_address(), Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(c.vee_capacity(), 253);
        assert!(c.holds_vee_address(Ipv4Addr::new(10, 10, 0, 2)));
        assert!(c.holds_vee_address(Ipv4Addr::new(10, 10, 0, 254)));
        for outside in [
            [10, 10, 0, 0],
            [10, 10, 0, 1],
            [10, 10, 0, 255],
            [10, 10, 1, 2],
        ] {
            assert!(!c.holds_vee_address(Ipv4Addr::from(outside)), "{outside:?}");
        }
        for (bad, why) in [
            ("10.10.0.0", "CIDR form"),
            ("10.10.0/24", "not an IPv4 address"),
            ("10.10.0.0/x", "prefix length"),
            ("10.10.0.0/30", "between /8 and /29"),
            ("10.0.0.0/7", "between /8 and /29"),
            ("10.10.0.5/24", "host bits set; the network is 10.10.0.0/24"),
        ] {
            let error = Ipv4Cidr::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_never_twice_and_come_back() {
        let mut pool = AddressPool::new(cidr("192.168.5.0/29"));
        assert_eq!(pool.free(), 5);
        let taken: Vec<Ipv4Addr> = (0..5).map(|_| pool.take_lowest().expect("free")).collect();
        assert_eq!(taken[0], Ipv4Addr::new(192, 168, 5, 2));
        assert_eq!(taken[4], Ipv4Addr::new(192, 168, 5, 6));
        assert_eq!(pool.take_lowest(), None, "exhausted");
        pool.release(taken[2]);
        assert_eq!(
            pool.take_lowest(),
            Some(taken[2]),
            "a released address is reused"
        );
        assert!(!pool.take(taken[0]), "held");
        assert!(
            !pool.take(Ipv4Addr::new(192, 168, 5, 1)),
            "the hosts' address"
        );
        pool.release(taken[0]);
        assert!(pool.take(taken[0]));
        assert_eq!(pool.held(), 5);
    }

    #[test]
    fn a_chosen_address_leaves_a_gap_that_the_next_fills() {
        let mut pool = AddressPool::new(cidr("10.0.0.0/24"));
        assert!(pool.take(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(pool.take_lowest(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(pool.take_lowest(), Some(Ipv4Addr::new(10, 0, 0, 4)));
    }

    #[test]
    fn macs_are_local_unicast_and_differ_per_vee_and_nic() {
        let a = mac_address(&VeeId::from_seq(1), 0);
        assert_eq!(a, "02:00:00:00:00:40");
        assert_eq!(mac_address(&VeeId::from_seq(1), 1), "02:00:00:00:00:41");
        assert_eq!(mac_address(&VeeId::from_seq(2), 63), "02:00:00:00:00:bf");
        assert_eq!(
            mac_address(&VeeId::from_seq(99_999_999), 0),
            "02:01:7d:78:3f:c0"
        );
        let first = u8::from_str_radix(&a[..2], 16).expect("hex");
        assert_eq!(first & 0b11, 0b10, "locally administered, unicast");
    }
}
