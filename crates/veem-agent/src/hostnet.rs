//! The host's side of a VEE's NICs and of the virtual LANs they are on. The only code in veem
//! that changes the host's network configuration; it runs iproute2's `ip` (and `bridge` for
//! VXLAN flooding entries), as an operator would, so what it does can be read (and undone) with
//! the same tools.
//!
//! - A NIC is a tap device that QEMU creates itself (`-netdev tap,ifname=...,script=no`) and
//!   removes when it ends, so a tap never outlives its VEE's process; [`HostNet::plug`] turns
//!   IPv6 off on it, joins it to its LAN's bridge and brings it up. A NIC on no LAN is only
//!   brought up: it is plugged into nothing.
//! - A virtual LAN is a Linux bridge of the name the VEEM gives ([`LanPlan::bridge`], the same
//!   on every host), with STP off and no forwarding delay, so a port forwards as soon as it
//!   joins. [`HostNet::ensure_lan`] builds it when a NIC needs it and leaves it afterwards: the
//!   VEEM removes it ([`HostNet::remove_lan`]) when its network is deleted. Every host agent of
//!   one machine shares the kernel and so the bridge: building is idempotent and safe against
//!   another agent building the same LAN at the same moment.
//! - The host's IPv6 is off on bridges, VXLAN devices and taps (`disable_ipv6`), so the host has
//!   no link-local address on a VEE's LAN and never speaks there on its own. The VEEs' own IPv6
//!   crosses the bridge untouched. A kernel without IPv6 has nothing to turn off.
//! - On a public LAN the host has [`LanPlan::host_address`] on the bridge, so it reaches the
//!   LAN's VEEs; a private LAN's bridge has no address at all: the host is only a switch there.
//! - Across machines, a LAN's bridges are joined by a VXLAN device (VNI [`LanPlan::vni`],
//!   configured by [`VxlanConfig`]) that floods broadcasts either to a multicast group or, by
//!   head-end replication, to every peer machine, and learns where each MAC address lives.
//!   Hosts on one machine need none of it: they share the bridge.
//! - Across sites (federation, the paper's VAN), a LAN's plan may name other sites' hosts
//!   ([`LanPlan::peers`], each with its own UDP port): the same VXLAN device floods to them
//!   too, so the LAN is one layer-2 segment across the sites. Both sides use one VNI, which
//!   the sites agreed on. Two sites on one machine (tests) tell their devices apart by port;
//!   there MAC learning must be off ([`VxlanConfig::learning`]), because a learned entry
//!   takes the device's own port, not the sender's.
//! - MTU: VXLAN wraps each frame in 50 bytes of headers (70 over IPv6), so a VXLAN device's MTU
//!   is the underlay's less that, and the bridge and every tap on it take the same MTU
//!   ([`LanLink::mtu`]); the qemu driver also tells the guest (virtio-net's `host_mtu`) so it
//!   does not send frames the LAN would drop. A LAN without VXLAN keeps Ethernet's 1500.
//!
//! Limits: changing links needs `CAP_NET_ADMIN` (root). A host firewall that filters bridged
//! frames (`br_netfilter` with a `FORWARD` policy of `DROP`, as Docker sets) blocks the LANs'
//! traffic. Public LANs of overlapping address ranges on one machine conflict in its routing
//! table, and a host that forwards IPv4 routes between its public LANs. Joined by VXLAN, every
//! machine has a public LAN's one host address: the VEEs reach whichever answers first. The
//! VXLAN underlay is neither encrypted nor authenticated: it belongs on a trusted network.
//!
//! [`HostNet`] can also act inside a network namespace, which is how the tests emulate
//! several machines on one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use veem_api::agent::LanPlan;
use veem_model::VeeId;

use crate::{command, fsutil, DriverError};

/// Where the host kernel lists its interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// Linux's longest interface name (`IFNAMSIZ` less its terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;
/// Ethernet's MTU, which a LAN without VXLAN keeps.
pub const ETHERNET_MTU: u32 = 1500;
/// The smallest MTU IPv4 works over.
const MIN_IPV4_MTU: u32 = 68;
/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 0xff_ffff;
/// Where the kernel keeps each interface's IPv6 settings; absent when IPv6 is off.
const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";
/// The MAC address of a VXLAN device's flooding entries: broadcasts and unknown destinations.
const FLOOD_MAC: &str = "00:00:00:00:00:00";

/// A fresh name for the tap of NIC `index` of `vee`: `vt`, the VEE's number (hex), the NIC's
/// index and a random part. Random because the two ends of a live migration on one machine
/// each need their own tap at the same time; the name is kept in the instance's record.
pub fn tap_name(vee: &VeeId, index: usize) -> String {
    let name = format!(
        "vt{:x}{:x}{:05x}",
        vee.seq(),
        index,
        rand::random::<u32>() & 0xf_ffff
    );
    // VEE numbers beyond 2^24 give longer names: keep the unique random part and the index.
    if name.len() <= MAX_INTERFACE_NAME {
        name
    } else {
        let cut = name.len() - MAX_INTERFACE_NAME;
        format!("vt{}", &name[2 + cut..])
    }
}

/// The VXLAN device that joins a LAN's bridge to the other machines' (`vx` for `vb`).
pub fn vxlan_name(lan: &LanPlan) -> String {
    match lan.bridge.strip_prefix("vb") {
        Some(rest) => format!("vx{rest}"),
        None => format!("vx{:x}", lan.vni),
    }
}

/// How this machine's LAN bridges reach the other machines of the site
/// (`[host.qemu.vxlan]`). Needed only on a site of several machines: hosts on one machine
/// share the bridges. Every machine lists the others, and all use the same `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanConfig {
    /// This machine's address on the underlay network, the source of its VXLAN packets.
    pub local: String,
    /// The underlay interface; by default the one that holds `local`. Needed with `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// A multicast group that carries the LANs' broadcasts to every machine; without it they
    /// are sent to each of `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The other machines' underlay addresses (unicast flooding, when there is no `group`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// The UDP port of VXLAN on every machine.
    #[serde(default = "vxlan_port")]
    pub port: u16,
    /// Whether the VXLAN devices learn where each MAC address lives (default); off, they
    /// flood every frame for a remote VEE to every peer. Off where two sites share a machine
    /// and tell their devices apart by port (tests): a learned entry takes the device's own
    /// port, so it would send to itself.
    #[serde(default = "learning")]
    pub learning: bool,
}

fn learning() -> bool {
    true
}

fn vxlan_port() -> u16 {
    VXLAN_PORT
}

impl VxlanConfig {
    /// Refuses what `ip` would refuse later, or misread: addresses that are not addresses, a
    /// group that is not multicast, families that differ, both a group and peers.
    pub fn check(&self) -> Result<(), DriverError> {
        let invalid = |reason: String| DriverError::Invalid {
            what: "vxlan config",
            reason,
        };
        let local = parse_ip("local", &self.local).map_err(invalid)?;
        if let Some(dev) = &self.dev {
            check_interface_name("vxlan dev", dev)?;
        }
        if let Some(group) = &self.group {
            let group = parse_ip("group", group).map_err(invalid)?;
            if !group.is_multicast() || group.is_ipv4() != local.is_ipv4() {
                return Err(invalid(format!(
                    "group {group} is not a multicast address of local's family"
                )));
            }
            if !self.peers.is_empty() {
                return Err(invalid("both a group and peers: choose one".to_owned()));
            }
        }
        for peer in &self.peers {
            let peer = parse_ip("peer", peer).map_err(invalid)?;
            if peer.is_multicast() || peer.is_ipv4() != local.is_ipv4() {
                return Err(invalid(format!(
                    "peer {peer} is not a unicast address of local's family"
                )));
            }
        }
        Ok(())
    }

    /// The bytes VXLAN adds to each frame: outer IP, UDP, VXLAN headers and the inner
    /// Ethernet header.
    fn overhead(&self) -> u32 {
        match self.local.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => 70,
            _ => 50,
        }
    }
}

/// A LAN as [`HostNet::ensure_lan`] left it on this host: what a NIC needs to join it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanLink {
    pub bridge: String,
    /// The MTU of the bridge, which every port on it takes.
    pub mtu: u32,
}

/// The network configuration of this host (or, for tests and for emulating several machines
/// on one, of a network namespace of it). See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    ip: PathBuf,
    netns: Option<String>,
}

impl HostNet {
    /// The host's own network, changed with the `ip` program at `ip` (and the `bridge`
    /// program beside it).
    pub fn new(ip: impl Into<PathBuf>) -> Self {
        Self {
            ip: ip.into(),
            netns: None,
        }
    }

    /// The named network namespace (`ip netns add`) instead of the host's own network.
    pub fn in_netns(ip: impl Into<PathBuf>, netns: impl Into<String>) -> Self {
        Self {
            ip: ip.into(),
            netns: Some(netns.into()),
        }
    }

    /// Builds the LAN on this host, or checks that it is built: its bridge, up, with IPv6 off,
    /// the host's address on it for a public LAN and none for a private one; with `vxlan`, the
    /// VXLAN device that joins it to the other machines. Safe to run again, and at the same
    /// time as another agent building the same LAN.
    pub async fn ensure_lan(
        &self,
        lan: &LanPlan,
        vxlan: Option<&VxlanConfig>,
    ) -> Result<LanLink, DriverError> {
        check_interface_name("bridge", &lan.bridge)?;
        if lan.vni > MAX_VNI {
            return Err(DriverError::Invalid {
                what: "lan",
                reason: format!("vni {} is beyond 24 bits", lan.vni),
            });
        }
        if let Some(vxlan) = vxlan {
            vxlan.check()?;
        } else if !lan.peers.is_empty() {
            return Err(DriverError::Invalid {
                what: "lan",
                reason: format!(
                    "{} is joined with other sites' hosts, and this host has no vxlan config ([host.qemu.vxlan])",
                    lan.bridge
                ),
            });
        }
        let host_address = lan
            .host_address
            .as_deref()
            .map(check_host_address)
            .transpose()?;
        let bridge = lan.bridge.as_str();
        // Created with its options in one request: a bridge never forwards with a delay.
        self.create_link(
            bridge,
            "bridge",
            &["type", "bridge", "stp_state", "0", "forward_delay", "0"],
        )
        .await?;
        // Before the bridge is up: the kernel gives an interface its link-local address then.
        self.disable_ipv6(bridge).await?;
        match host_address {
            Some(address) => {
                self.ip(
                    "address a lan",
                    &["addr", "replace", address, "dev", bridge],
                )
                .await?
            }
            None => {
                self.ip("clear a lan", &["addr", "flush", "dev", bridge])
                    .await?
            }
        };
        if let Some(vxlan) = vxlan {
            let mtu = self.ensure_vxlan(lan, vxlan).await?;
            self.ip(
                "set a lan's mtu",
                &["link", "set", "dev", bridge, "mtu", &mtu.to_string()],
            )
            .await?;
        }
        self.ip("bring a lan up", &["link", "set", "dev", bridge, "up"])
            .await?;
        let link = self.existing_link(bridge).await?;
        Ok(LanLink {
            bridge: bridge.to_owned(),
            mtu: link.mtu,
        })
    }

    /// Readies a NIC's tap, which QEMU created down: IPv6 off, then (on a LAN) joined to the
    /// LAN's bridge with its MTU, then up. A NIC on no LAN is plugged into nothing.
    pub async fn plug(&self, tap: &str, lan: Option<&LanLink>) -> Result<(), DriverError> {
        check_interface_name("tap", tap)?;
        self.disable_ipv6(tap).await?;
        match lan {
            Some(lan) => {
                check_interface_name("bridge", &lan.bridge)?;
                let mtu = lan.mtu.to_string();
                self.ip(
                    "plug a tap",
                    &[
                        "link",
                        "set",
                        "dev",
                        tap,
                        "mtu",
                        &mtu,
                        "master",
                        &lan.bridge,
                        "up",
                    ],
                )
                .await?
            }
            None => {
                self.ip("bring a tap up", &["link", "set", "dev", tap, "up"])
                    .await?
            }
        };
        Ok(())
    }

    /// Whether this host has the LAN's bridge.
    pub async fn has_lan(&self, lan: &LanPlan) -> Result<bool, DriverError> {
        check_interface_name("bridge", &lan.bridge)?;
        Ok(self.link(&lan.bridge).await?.is_some())
    }

    /// Removes a LAN's VXLAN device and bridge from this host; `Ok` when it has (or, by the
    /// time this runs, another agent left) none. An interface of that name that is not what
    /// veem makes is refused, not removed.
    pub async fn remove_lan(&self, lan: &LanPlan) -> Result<(), DriverError> {
        check_interface_name("bridge", &lan.bridge)?;
        for (name, kind) in [(vxlan_name(lan), "vxlan"), (lan.bridge.clone(), "bridge")] {
            let Some(link) = self.link(&name).await? else {
                continue;
            };
            if link.kind() != Some(kind) {
                return Err(DriverError::Failed {
                    op: "remove a lan",
                    reason: format!("{name} is not a {kind}: left alone"),
                });
            }
            match self
                .ip("remove a lan", &["link", "del", "dev", &name])
                .await
            {
                Ok(_) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Turns the host's IPv6 off on `interface`; nothing to do where the kernel has no IPv6.
    pub async fn disable_ipv6(&self, interface: &str) -> Result<(), DriverError> {
        check_interface_name("interface", interface)?;
        match &self.netns {
            None => {
                if !fsutil::exists(Path::new(IPV6_CONF)).await? {
                    return Ok(());
                }
                let path = Path::new(IPV6_CONF).join(interface).join("disable_ipv6");
                tokio::fs::write(&path, "1")
                    .await
                    .map_err(|e| DriverError::file(&path, e))
            }
            // /proc/sys/net shows the network namespace of the process that reads it.
            Some(netns) => {
                let mut command = tokio::process::Command::new(&self.ip);
                command.args(["netns", "exec", netns, "sh", "-c"]);
                command.arg(format!(
                    "test -d {IPV6_CONF} || exit 0; echo 1 > {IPV6_CONF}/\"$1\"/disable_ipv6"
                ));
                command.args(["sh", interface]);
                command::output("turn ipv6 off", command).await.map(drop)
            }
        }
    }

    /// The VXLAN device of `lan`, created if needed, joined to the bridge and up; answers its
    /// MTU.
    async fn ensure_vxlan(&self, lan: &LanPlan, vxlan: &VxlanConfig) -> Result<u32, DriverError> {
        let name = vxlan_name(lan);
        check_interface_name("vxlan", &name)?;
        let underlay_mtu = self.underlay_mtu(vxlan).await?;
        let mtu_value = underlay_mtu
            .checked_sub(vxlan.overhead())
            .filter(|mtu| *mtu >= MIN_IPV4_MTU)
            .ok_or_else(|| DriverError::Invalid {
                what: "vxlan config",
                reason: format!("an underlay mtu of {underlay_mtu} leaves no room for vxlan"),
            })?;
        let mtu = mtu_value.to_string();
        let vni = lan.vni.to_string();
        let port = vxlan.port.to_string();
        let mut args = vec![
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "local",
            &vxlan.local,
        ];
        if let Some(dev) = &vxlan.dev {
            args.extend(["dev", dev]);
        }
        if let Some(group) = &vxlan.group {
            args.extend(["group", group]);
        }
        if !vxlan.learning {
            args.push("nolearning");
        }
        let link = self.create_link(&name, "vxlan", &args).await?;
        let existing_vni = link.info_data("id").and_then(serde_json::Value::as_u64);
        if existing_vni != Some(u64::from(lan.vni)) {
            return Err(DriverError::Failed {
                op: "create a lan",
                reason: format!("{name} exists with vni {existing_vni:?}, not {}", lan.vni),
            });
        }
        self.disable_ipv6(&name).await?;
        self.ip(
            "join a lan to its vxlan",
            &[
                "link",
                "set",
                "dev",
                &name,
                "mtu",
                &mtu,
                "master",
                &lan.bridge,
            ],
        )
        .await?;
        // The machine's own peers (on the device's port), and other sites' hosts of this LAN.
        let mut peers: Vec<(IpAddr, Option<u16>)> = Vec::new();
        if vxlan.group.is_none() {
            peers.extend(
                vxlan
                    .peers
                    .iter()
                    .filter_map(|p| Some((p.parse().ok()?, None))),
            );
        }
        peers.extend(
            lan.peers
                .iter()
                .map(|p| (p.address, (p.port != vxlan.port).then_some(p.port))),
        );
        self.ensure_flooding(&name, &peers).await?;
        self.ip("bring a vxlan up", &["link", "set", "dev", &name, "up"])
            .await?;
        Ok(mtu_value)
    }

    /// Makes the VXLAN device `name` flood to exactly `wanted` (address, and port when not the
    /// device's own): entries for new peers are added, those of peers no longer listed removed.
    async fn ensure_flooding(
        &self,
        name: &str,
        wanted: &[(IpAddr, Option<u16>)],
    ) -> Result<(), DriverError> {
        let shown = self
            .bridge_tool("read a vxlan's peers", &["-j", "fdb", "show", "dev", name])
            .await?;
        let entries: Vec<FdbEntry> = parse_json("bridge fdb", &shown)?;
        let present: Vec<(IpAddr, Option<u16>)> = entries
            .iter()
            .filter(|entry| entry.mac == FLOOD_MAC)
            .filter_map(|entry| Some((entry.dst.as_deref()?.parse().ok()?, entry.port)))
            .collect();
        let fdb_args = |(address, port): &(IpAddr, Option<u16>)| {
            let mut args = vec!["dst".to_owned(), address.to_string()];
            if let Some(port) = port {
                args.extend(["port".to_owned(), port.to_string()]);
            }
            args
        };
        for peer in wanted.iter().filter(|peer| !present.contains(peer)) {
            // `append` adds a destination to the flooding list; an existing one is no error.
            let mut args = vec!["fdb", "append", FLOOD_MAC, "dev", name];
            let dst = fdb_args(peer);
            args.extend(dst.iter().map(String::as_str));
            self.bridge_tool("add a vxlan peer", &args).await?;
        }
        for gone in present.iter().filter(|dst| !wanted.contains(dst)) {
            let mut args = vec!["fdb", "del", FLOOD_MAC, "dev", name];
            let dst = fdb_args(gone);
            args.extend(dst.iter().map(String::as_str));
            match self.bridge_tool("remove a vxlan peer", &args).await {
                Ok(_) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The MTU of the underlay: of `dev`, or of the interface that holds `local`.
    async fn underlay_mtu(&self, vxlan: &VxlanConfig) -> Result<u32, DriverError> {
        if let Some(dev) = &vxlan.dev {
            return Ok(self.existing_link(dev).await?.mtu);
        }
        let shown = self
            .ip(
                "find the vxlan underlay",
                &["-j", "addr", "show", "to", &vxlan.local],
            )
            .await?;
        let holders: Vec<AddressHolder> = parse_json("ip addr", &shown)?;
        holders
            .into_iter()
            .find(|holder| !holder.addr_info.is_empty())
            .map(|holder| holder.mtu)
            .ok_or_else(|| DriverError::Invalid {
                what: "vxlan config",
                reason: format!("local {} is no address of this host", vxlan.local),
            })
    }

    /// Creates the link `name` of `kind` with `args` (after `ip link add name <name>`); an
    /// existing link of that kind is fine (another agent may have just made it), one of
    /// another kind an error.
    async fn create_link(
        &self,
        name: &str,
        kind: &str,
        args: &[&str],
    ) -> Result<Link, DriverError> {
        let mut add = vec!["link", "add", "name", name];
        add.extend_from_slice(args);
        match self.ip("create a lan", &add).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) => return Err(e),
        }
        let link = self.existing_link(name).await?;
        if link.kind() != Some(kind) {
            return Err(DriverError::Failed {
                op: "create a lan",
                reason: format!("{name} exists and is not a {kind}"),
            });
        }
        Ok(link)
    }

    async fn existing_link(&self, name: &str) -> Result<Link, DriverError> {
        self.link(name).await?.ok_or_else(|| DriverError::Failed {
            op: "inspect an interface",
            reason: format!("{name} does not exist"),
        })
    }

    /// The interface `name`, if this host (namespace) has it.
    async fn link(&self, name: &str) -> Result<Option<Link>, DriverError> {
        match self
            .ip(
                "inspect an interface",
                &["-j", "-d", "link", "show", "dev", name],
            )
            .await
        {
            Ok(shown) => Ok(parse_json::<Vec<Link>>("ip link", &shown)?
                .into_iter()
                .next()),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs `ip` (in the namespace, if any) with `args`; answers its standard output.
    async fn ip(&self, op: &'static str, args: &[&str]) -> Result<String, DriverError> {
        let mut command = tokio::process::Command::new(&self.ip);
        if let Some(netns) = &self.netns {
            command.args(["-n", netns]);
        }
        command.args(args);
        command::output(op, command).await
    }

    /// Runs iproute2's `bridge`, the program beside `ip`, like [`Self::ip`].
    async fn bridge_tool(&self, op: &'static str, args: &[&str]) -> Result<String, DriverError> {
        let mut command = tokio::process::Command::new(self.ip.with_file_name("bridge"));
        if let Some(netns) = &self.netns {
            command.args(["-n", netns]);
        }
        command.args(args);
        command::output(op, command).await
    }
}

/// What `ip -j -d link show` says of an interface, as far as veem reads it.
#[derive(Debug, Deserialize)]
struct Link {
    mtu: u32,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
    #[serde(default)]
    info_data: Option<serde_json::Value>,
}

impl Link {
    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    fn info_data(&self, key: &str) -> Option<&serde_json::Value> {
        self.linkinfo.as_ref()?.info_data.as_ref()?.get(key)
    }
}

/// An interface in `ip -j addr show`.
#[derive(Debug, Deserialize)]
struct AddressHolder {
    mtu: u32,
    #[serde(default)]
    addr_info: Vec<serde_json::Value>,
}

/// An entry of `bridge -j fdb show`.
#[derive(Debug, Deserialize)]
struct FdbEntry {
    mac: String,
    #[serde(default)]
    dst: Option<String>,
    /// Shown only when not the device's own port.
    #[serde(default)]
    port: Option<u16>,
}

fn parse_json<T: serde::de::DeserializeOwned>(source: &str, text: &str) -> Result<T, DriverError> {
    serde_json::from_str(text).map_err(|e| DriverError::Failed {
        op: "read the host's network",
        reason: format!("{source} printed what veem cannot read: {e}"),
    })
}

/// Whether `ip` failed because the interface (or entry) is not there.
fn is_missing(error: &DriverError) -> bool {
    let text = error.to_string();
    [
        "does not exist",
        "Cannot find device",
        "No such device",
        "No such file or directory",
    ]
    .iter()
    .any(|missing| text.contains(missing))
}

/// Refuses names Linux would not take and names of the kernel's IPv6 settings (`all` and
/// `default` would turn IPv6 off for the whole host). Names are passed to `ip` as single
/// arguments, never through a shell.
fn check_interface_name(what: &'static str, name: &str) -> Result<(), DriverError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
        && !["all", "default", "lo"].contains(&name);
    if valid {
        Ok(())
    } else {
        Err(DriverError::Invalid {
            what,
            reason: format!(
                "{name:?} is not an interface name veem uses (1 to {MAX_INTERFACE_NAME} letters, \
                 digits, - or _)"
            ),
        })
    }
}

/// A host address is an IPv4 address with a prefix length (`10.77.0.1/24`).
fn check_host_address(address: &str) -> Result<&str, DriverError> {
    let valid = address.split_once('/').is_some_and(|(ip, prefix)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
    });
    if valid {
        Ok(address)
    } else {
        Err(DriverError::Invalid {
            what: "lan host address",
            reason: format!("{address:?} is not an IPv4 address with a prefix length"),
        })
    }
}

fn parse_ip(what: &str, text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_linux_and_differ_per_launch() {
        for seq in [1, 0xff_ffff, 99_999_999] {
            let vee = VeeId::from_seq(seq);
            let names: std::collections::HashSet<String> =
                (0..50).map(|_| tap_name(&vee, 3)).collect();
            for name in &names {
                assert!(name.len() <= MAX_INTERFACE_NAME, "{name}");
                assert!(name.starts_with("vt"), "{name}");
                assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
                assert!(check_interface_name("tap", name).is_ok(), "{name}");
            }
            assert!(names.len() > 1, "launches get names of their own");
        }
        assert!(tap_name(&VeeId::from_seq(0x2a), 1).starts_with("vt2a1"));
    }

    fn lan(bridge: &str, vni: u32) -> LanPlan {
        LanPlan {
            bridge: bridge.to_owned(),
            vni,
            host_address: None,
            peers: vec![],
        }
    }

    #[test]
    fn a_lan_vxlan_device_is_named_after_its_bridge() {
        assert_eq!(vxlan_name(&lan("vb1a2b3c4", 7)), "vx1a2b3c4");
        assert_eq!(vxlan_name(&lan("br0", 255)), "vxff");
    }

    #[test]
    fn only_plain_interface_names_are_passed_on() {
        for good in [
            "vb1a2b3c4",
            "vt2a1f00ba",
            "eth0",
            "veth-a_1",
            "abcdefghijklmno",
        ] {
            assert!(check_interface_name("x", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            "-n",
            "all",
            "default",
            "lo",
            "a b",
            "a/b",
            "a.b",
            "../x",
        ] {
            assert!(check_interface_name("x", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_addresses_are_ipv4_with_a_prefix() {
        assert!(check_host_address("10.77.0.1/24").is_ok());
        for bad in [
            "10.77.0.1",
            "10.77.0.1/33",
            "fe80::1/64",
            "x/24",
            "10.77.0.1/24 dev",
        ] {
            assert!(check_host_address(bad).is_err(), "{bad}");
        }
    }

    fn vxlan(local: &str) -> VxlanConfig {
        VxlanConfig {
            local: local.to_owned(),
            dev: None,
            group: None,
            peers: vec![],
            port: VXLAN_PORT,
            learning: true,
        }
    }

    #[test]
    fn vxlan_configs_are_checked_before_use() {
        let unicast = VxlanConfig {
            peers: vec!["192.168.1.2".into(), "192.168.1.3".into()],
            ..vxlan("192.168.1.1")
        };
        assert!(unicast.check().is_ok());
        let multicast = VxlanConfig {
            dev: Some("eth0".into()),
            group: Some("239.1.1.1".into()),
            ..vxlan("192.168.1.1")
        };
        assert!(multicast.check().is_ok());
        let bad = [
            vxlan("eth0"),
            VxlanConfig {
                group: Some("192.168.1.9".into()),
                ..vxlan("192.168.1.1")
            },
            VxlanConfig {
                group: Some("239.1.1.1".into()),
                peers: vec!["192.168.1.2".into()],
                ..vxlan("192.168.1.1")
            },
            VxlanConfig {
                peers: vec!["fd00::2".into()],
                ..vxlan("192.168.1.1")
            },
            VxlanConfig {
                peers: vec!["not-an-ip".into()],
                ..vxlan("192.168.1.1")
            },
            VxlanConfig {
                dev: Some("all".into()),
                ..vxlan("192.168.1.1")
            },
        ];
        for config in bad {
            assert!(config.check().is_err(), "{config:?}");
        }
    }

    #[test]
    fn vxlan_costs_50_bytes_over_ipv4_and_70_over_ipv6() {
        assert_eq!(vxlan("192.168.1.1").overhead(), 50);
        assert_eq!(vxlan("fd00::1").overhead(), 70);
    }

    #[test]
    fn a_vxlan_table_needs_only_local_and_takes_the_iana_port() {
        let config: VxlanConfig = serde_json::from_str(r#"{"local": "10.0.0.1"}"#).unwrap();
        assert_eq!(config, vxlan("10.0.0.1"));
        let config: VxlanConfig =
            serde_json::from_str(r#"{"local": "10.0.0.1", "peers": ["10.0.0.2"], "port": 8472}"#)
                .unwrap();
        assert_eq!((config.peers.len(), config.port), (1, 8472));
        assert!(serde_json::from_str::<VxlanConfig>(r#"{"local": "10.0.0.1", "ttl": 3}"#).is_err());
    }

    #[test]
    fn missing_interfaces_are_told_from_other_failures() {
        let failed = |reason: &str| DriverError::Failed {
            op: "x",
            reason: reason.to_owned(),
        };
        assert!(is_missing(&failed(
            "ip exit status: 1: Device \"vb1\" does not exist."
        )));
        assert!(is_missing(&failed(
            "ip exit status: 1: Cannot find device \"vb1\""
        )));
        assert!(!is_missing(&failed(
            "ip exit status: 2: RTNETLINK answers: Operation not permitted"
        )));
    }
}
