//! Virtual LANs on the real kernel: bridges, taps and VXLAN built by `hostnet`, checked with
//! what the kernel reports. Changing the host's links needs root: each test skips, loudly,
//! without it. Names are random per run and every link or namespace a test makes is removed
//! by a guard, also when the test fails. Two machines are emulated by two network namespaces
//! joined by a veth pair; a VEE's NIC by a veth pair whose far end is in a namespace of its own.

use std::path::Path;
use std::process::{Command, Output};

use veem_agent::hostnet::{vxlan_name, HostNet, LanLink, VxlanConfig, VXLAN_PORT};
use veem_api::agent::LanPlan;

/// Whether this process may change the host's links; says loudly why not.
pub fn can_change_network() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    });
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|output| output.status.success());
    veem_guest::testing::require(
        root && ip,
        "changing the host's network needs root and iproute2",
    )
}

/// Returns from the test where it cannot change the host's network.
macro_rules! require_root {
    () => {
        if !can_change_network() {
            return;
        }
    };
}

/// A random lowercase hex string of `len` digits, for names unique to one run.
pub fn random_hex(len: usize) -> String {
    let text = format!("{:016x}", rand::random::<u64>());
    text[..len].to_owned()
}

/// A private LAN of a random bridge name (`vbt` and 8 hex digits) and VNI.
pub fn private_lan() -> LanPlan {
    LanPlan {
        bridge: format!("vbt{}", random_hex(8)),
        vni: rand::random::<u32>() & 0xff_ffff,
        host_address: None,
        peers: vec![],
    }
}

/// Removes the named links of the host (and a LAN's VXLAN device) when dropped.
pub struct Links(pub Vec<String>);

impl Links {
    pub fn of_lan(lan: &LanPlan) -> Self {
        Self(vec![vxlan_name(lan), lan.bridge.clone()])
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for name in &self.0 {
            if Path::new("/sys/class/net").join(name).exists() {
                let _ = Command::new("ip")
                    .args(["link", "del", "dev", name])
                    .status();
            }
        }
    }
}

/// Network namespaces, made at once and removed (with every link in them) when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(names: &[&str]) -> Self {
        let mut made = Self(Vec::new());
        for name in names {
            run("ip", &["netns", "add", name]);
            made.0.push((*name).to_owned());
        }
        made
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn run(program: &str, args: &[&str]) -> String {
    let output = output(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sys(interface: &str, file: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(interface).join(file))
        .unwrap_or_else(|e| panic!("{interface}/{file}: {e}"))
        .trim()
        .to_owned()
}

fn exists(interface: &str) -> bool {
    Path::new("/sys/class/net").join(interface).exists()
}

/// Whether the interface is administratively up (`IFF_UP`).
fn is_up(interface: &str) -> bool {
    let flags = sys(interface, "flags");
    u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap() & 1 == 1
}

pub fn ipv6_disabled(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6"))
        .is_ok_and(|value| value.trim() == "1")
}

/// The bridge an interface is a port of.
pub fn master_of(interface: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(interface).join("master"))
        .ok()
        .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned()))
}

/// The addresses of an interface (`ip addr show`), in CIDR form; `netns` or the host's.
fn addresses(netns: Option<&str>, interface: &str) -> Vec<String> {
    let mut args = vec![];
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "addr", "show", "dev", interface]);
    let shown: serde_json::Value = serde_json::from_str(&run("ip", &args)).unwrap();
    shown[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// What `ip -j -d link show` says of an interface in a namespace.
fn link_in(netns: &str, interface: &str) -> serde_json::Value {
    let shown = run(
        "ip",
        &["-n", netns, "-j", "-d", "link", "show", "dev", interface],
    );
    serde_json::from_str::<serde_json::Value>(&shown).unwrap()[0].clone()
}

#[tokio::test]
async fn racing_agents_build_one_private_lan_and_removing_it_twice_is_fine() {
    require_root!();
    let lan = private_lan();
    let _links = Links::of_lan(&lan);
    let bridge = lan.bridge.as_str();
    let (first, second) = (HostNet::new("ip"), HostNet::new("ip"));

    let (a, b) = tokio::join!(first.ensure_lan(&lan, None), second.ensure_lan(&lan, None));
    let expected = LanLink {
        bridge: bridge.to_owned(),
        mtu: 1500,
    };
    assert_eq!(a.unwrap(), expected);
    assert_eq!(b.unwrap(), expected);
    assert!(
        Path::new("/sys/class/net")
            .join(bridge)
            .join("bridge")
            .is_dir(),
        "a bridge"
    );
    assert!(is_up(bridge));
    assert_eq!(sys(bridge, "bridge/stp_state"), "0");
    assert_eq!(sys(bridge, "bridge/forward_delay"), "0");
    if Path::new("/proc/sys/net/ipv6").exists() {
        assert!(
            ipv6_disabled(bridge),
            "no link-local address in a private lan"
        );
    }
    assert_eq!(addresses(None, bridge), Vec::<String>::new(), "private");
    assert!(!exists(&vxlan_name(&lan)), "no vxlan on one machine");
    // Again: nothing changes.
    assert_eq!(first.ensure_lan(&lan, None).await.unwrap(), expected);

    let (a, b) = tokio::join!(first.remove_lan(&lan), second.remove_lan(&lan));
    a.unwrap();
    b.unwrap();
    assert!(!exists(bridge));
    first.remove_lan(&lan).await.unwrap();
}

#[tokio::test]
async fn a_public_lan_gives_the_host_its_address_once() {
    require_root!();
    let octet = rand::random::<u8>();
    let lan = LanPlan {
        host_address: Some(format!("10.213.{octet}.1/24")),
        ..private_lan()
    };
    let _links = Links::of_lan(&lan);
    let host = HostNet::new("ip");
    let (a, b) = tokio::join!(host.ensure_lan(&lan, None), host.ensure_lan(&lan, None));
    a.unwrap();
    b.unwrap();
    assert_eq!(
        addresses(None, &lan.bridge),
        [format!("10.213.{octet}.1/24")],
        "the host's address, once, and no IPv6 link-local one"
    );
    assert!(is_up(&lan.bridge));

    // The same bridge made private again loses its address.
    let private = LanPlan {
        host_address: None,
        ..lan.clone()
    };
    host.ensure_lan(&private, None).await.unwrap();
    assert!(addresses(None, &lan.bridge).is_empty());
    host.remove_lan(&lan).await.unwrap();
    assert!(!exists(&lan.bridge));
}

#[tokio::test]
async fn a_plugged_tap_joins_its_bridge_and_a_tap_on_no_lan_joins_nothing() {
    require_root!();
    let lan = private_lan();
    let suffix = random_hex(8);
    let (on_lan, alone) = (format!("vtt{suffix}a"), format!("vtt{suffix}b"));
    let mut links = Links::of_lan(&lan);
    links.0.extend([on_lan.clone(), alone.clone()]);
    // What QEMU does for a NIC: a tap, down.
    for tap in [&on_lan, &alone] {
        run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"]);
        assert!(!is_up(tap));
    }
    let host = HostNet::new("ip");
    let link = host.ensure_lan(&lan, None).await.unwrap();

    host.plug(&on_lan, Some(&link)).await.unwrap();
    host.plug(&alone, None).await.unwrap();
    assert_eq!(master_of(&on_lan).as_deref(), Some(lan.bridge.as_str()));
    assert_eq!(master_of(&alone), None);
    for tap in [&on_lan, &alone] {
        assert!(is_up(tap), "{tap}");
        if Path::new("/proc/sys/net/ipv6").exists() {
            assert!(ipv6_disabled(tap), "{tap}");
        }
    }
    // Plugging again is harmless.
    host.plug(&on_lan, Some(&link)).await.unwrap();
    assert_eq!(master_of(&on_lan).as_deref(), Some(lan.bridge.as_str()));

    // A LAN whose bridge name is taken by another kind of interface is refused, and its
    // removal leaves that interface alone.
    let squatted = LanPlan {
        bridge: alone.clone(),
        ..private_lan()
    };
    let refused = host.ensure_lan(&squatted, None).await.unwrap_err();
    assert!(refused.to_string().contains("not a bridge"), "{refused}");
    assert!(host.remove_lan(&squatted).await.is_err());
    assert!(exists(&alone));
    // Names that are not interface names never reach `ip`.
    let hostile = LanPlan {
        bridge: "all".into(),
        ..private_lan()
    };
    assert!(host.ensure_lan(&hostile, None).await.is_err());
    assert!(host.plug("-n", None).await.is_err());

    host.remove_lan(&lan).await.unwrap();
    assert!(!exists(&lan.bridge));
    assert!(
        exists(&on_lan),
        "a port outlives its bridge: qemu removes it"
    );
    assert_eq!(master_of(&on_lan), None);
}

/// A VEE's NIC stand-in: a veth pair whose host end `port` is plugged into `lan` on the
/// machine `machine`, and whose other end is `eth0` at `address` in the namespace `vee`.
async fn vee_on(
    host: &HostNet,
    machine: &str,
    vee: &str,
    port: &str,
    lan: &LanLink,
    address: &str,
) {
    run(
        "ip",
        &[
            "-n", machine, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            vee,
        ],
    );
    host.plug(port, Some(lan)).await.unwrap();
    let mtu = lan.mtu.to_string();
    run("ip", &["-n", vee, "addr", "add", address, "dev", "eth0"]);
    run(
        "ip",
        &["-n", vee, "link", "set", "dev", "eth0", "mtu", &mtu, "up"],
    );
}

/// Whether `ping` from the namespace `from` reaches `to`, with `size` bytes of payload that
/// must not be fragmented.
fn pings(from: &str, to: &str, size: u32, wait_s: u32) -> bool {
    let size = size.to_string();
    let wait = wait_s.to_string();
    output(
        "ip",
        &[
            "netns", "exec", from, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", &wait, "-M",
            "do", "-s", &size, to,
        ],
    )
    .status
    .success()
}

/// Whether `ping` is here (iputils-ping); where `CI` is set, its absence fails the test.
fn has_ping() -> bool {
    let here = Command::new("ping")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    veem_guest::testing::require(here, "ping is not installed (iputils-ping)")
}

#[tokio::test]
async fn vxlan_joins_a_lan_across_machines_and_keeps_lans_apart() {
    require_root!();
    if !has_ping() {
        return;
    }
    let id = random_hex(6);
    let name = |part: &str| format!("veemt{id}{part}");
    let (m1, m2) = (name("m1"), name("m2"));
    let (a1, a2, b1, b2) = (name("a1"), name("a2"), name("b1"), name("b2"));
    let _namespaces = Namespaces::new(&[&m1, &m2, &a1, &a2, &b1, &b2]);
    // The underlay: one wire between the two machines.
    run(
        "ip",
        &[
            "-n", &m1, "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", &m2,
        ],
    );
    for (machine, dev, address) in [
        (&m1, "u1", "192.168.213.1/24"),
        (&m2, "u2", "192.168.213.2/24"),
    ] {
        run("ip", &["-n", machine, "addr", "add", address, "dev", dev]);
        run("ip", &["-n", machine, "link", "set", "dev", dev, "up"]);
    }
    let vxlan = |local: &str, peer: &str| VxlanConfig {
        local: local.to_owned(),
        dev: None,
        group: None,
        peers: vec![peer.to_owned()],
        port: VXLAN_PORT,
        learning: true,
    };
    let (vx1, vx2) = (
        vxlan("192.168.213.1", "192.168.213.2"),
        vxlan("192.168.213.2", "192.168.213.1"),
    );
    let (h1, h2) = (HostNet::in_netns("ip", &m1), HostNet::in_netns("ip", &m2));
    let lan_a = LanPlan {
        vni: 2130,
        ..private_lan()
    };
    let lan_b = LanPlan {
        vni: 2131,
        ..private_lan()
    };

    // Two agents of machine 1 race to build LAN A.
    let (a, b) = tokio::join!(
        h1.ensure_lan(&lan_a, Some(&vx1)),
        h1.ensure_lan(&lan_a, Some(&vx1))
    );
    let a_on_1 = a.unwrap();
    assert_eq!(b.unwrap(), a_on_1);
    assert_eq!(a_on_1.mtu, 1450, "the underlay's 1500 less vxlan's 50");
    let a_on_2 = h2.ensure_lan(&lan_a, Some(&vx2)).await.unwrap();
    let b_on_1 = h1.ensure_lan(&lan_b, Some(&vx1)).await.unwrap();
    let b_on_2 = h2.ensure_lan(&lan_b, Some(&vx2)).await.unwrap();

    let vx_a = vxlan_name(&lan_a);
    let device = link_in(&m1, &vx_a);
    assert_eq!(device["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(device["linkinfo"]["info_data"]["id"], 2130);
    assert_eq!(device["master"], lan_a.bridge.as_str());
    assert_eq!(device["mtu"], 1450);
    assert!(device["flags"].as_array().unwrap().contains(&"UP".into()));
    assert_eq!(link_in(&m1, &lan_a.bridge)["mtu"], 1450);
    let flooding: serde_json::Value = serde_json::from_str(&run(
        "bridge",
        &["-n", &m1, "-j", "fdb", "show", "dev", &vx_a],
    ))
    .unwrap();
    let peers: Vec<&serde_json::Value> = flooding
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["mac"] == "00:00:00:00:00:00")
        .map(|entry| &entry["dst"])
        .collect();
    assert_eq!(peers, ["192.168.213.2"], "one flooding entry per peer");
    let disabled = run(
        "ip",
        &[
            "netns",
            "exec",
            &m1,
            "cat",
            &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", lan_a.bridge),
            &format!("/proc/sys/net/ipv6/conf/{vx_a}/disable_ipv6"),
        ],
    );
    assert_eq!(disabled.split_whitespace().collect::<Vec<_>>(), ["1", "1"]);
    assert!(addresses(Some(&m1), &lan_a.bridge).is_empty(), "private");

    // LAN A: 10.214.0.2 on machine 1, 10.214.0.3 on machine 2. LAN B, the same range:
    // 10.214.0.2 on machine 1, 10.214.0.4 on machine 2.
    vee_on(&h1, &m1, &a1, "pa1", &a_on_1, "10.214.0.2/24").await;
    vee_on(&h2, &m2, &a2, "pa2", &a_on_2, "10.214.0.3/24").await;
    vee_on(&h1, &m1, &b1, "pb1", &b_on_1, "10.214.0.2/24").await;
    vee_on(&h2, &m2, &b2, "pb2", &b_on_2, "10.214.0.4/24").await;
    assert_eq!(link_in(&m1, "pa1")["master"], lan_a.bridge.as_str());
    assert_eq!(link_in(&m1, "pa1")["mtu"], 1450);

    assert!(pings(&a1, "10.214.0.3", 56, 2), "lan a spans the machines");
    assert!(
        pings(&a1, "10.214.0.3", 1450 - 28, 2),
        "a full frame of the lan's mtu crosses unfragmented"
    );
    assert!(pings(&b1, "10.214.0.4", 56, 2), "lan b spans the machines");
    assert!(
        !pings(&b1, "10.214.0.3", 56, 1),
        "10.214.0.3 is on lan a: lan b does not reach it"
    );

    // A peer no longer configured loses its flooding entry.
    let alone = VxlanConfig {
        peers: vec![],
        ..vx1.clone()
    };
    h1.ensure_lan(&lan_a, Some(&alone)).await.unwrap();
    let flooding = run("bridge", &["-n", &m1, "fdb", "show", "dev", &vx_a]);
    assert!(
        !flooding.contains("00:00:00:00:00:00"),
        "no flooding entry left: {flooding}"
    );

    h1.remove_lan(&lan_a).await.unwrap();
    for gone in [&vx_a, &lan_a.bridge] {
        let shown = output("ip", &["-n", &m1, "link", "show", "dev", gone]);
        assert!(!shown.status.success(), "{gone} is gone");
    }
    h1.remove_lan(&lan_a).await.unwrap();
    assert_eq!(
        link_in(&m2, &lan_a.bridge)["linkinfo"]["info_kind"],
        "bridge"
    );
}

#[tokio::test]
async fn a_lan_joins_another_sites_lan_by_its_vni_and_their_hosts_ports() {
    require_root!();
    if !has_ping() {
        return;
    }
    let id = random_hex(6);
    let name = |part: &str| format!("veemt{id}{part}");
    // One machine with two sites' hosts on it, as the federation tests have: each site's LAN
    // has its own bridge and VXLAN port, and the same VNI.
    let (machine, west_vee, east_vee) = (name("m"), name("w"), name("e"));
    let _namespaces = Namespaces::new(&[&machine, &west_vee, &east_vee]);
    run("ip", &["-n", &machine, "link", "set", "dev", "lo", "up"]);
    let (west_port, east_port) = (4801, 4802);
    let config = |port| VxlanConfig {
        local: "127.0.0.1".into(),
        dev: None,
        group: None,
        peers: vec![],
        port,
        learning: false,
    };
    let endpoint = |port| veem_api::LanEndpoint {
        address: "127.0.0.1".parse().unwrap(),
        port,
    };
    let host = HostNet::in_netns("ip", &machine);
    let west = LanPlan {
        vni: 2140,
        peers: vec![endpoint(east_port)],
        ..private_lan()
    };
    let east = LanPlan {
        vni: 2140,
        peers: vec![endpoint(west_port)],
        ..private_lan()
    };
    let on_west = host
        .ensure_lan(&west, Some(&config(west_port)))
        .await
        .unwrap();
    let on_east = host
        .ensure_lan(&east, Some(&config(east_port)))
        .await
        .unwrap();
    let device = link_in(&machine, &vxlan_name(&west));
    assert_eq!(device["linkinfo"]["info_data"]["port"], west_port);
    assert_eq!(device["linkinfo"]["info_data"]["learning"], false);
    let flooding: serde_json::Value = serde_json::from_str(&run(
        "bridge",
        &[
            "-n",
            &machine,
            "-j",
            "fdb",
            "show",
            "dev",
            &vxlan_name(&west),
        ],
    ))
    .unwrap();
    let floods: Vec<(&serde_json::Value, &serde_json::Value)> = flooding
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["mac"] == "00:00:00:00:00:00")
        .map(|entry| (&entry["dst"], &entry["port"]))
        .collect();
    assert_eq!(
        floods,
        [(&"127.0.0.1".into(), &east_port.into())],
        "west floods to east's port"
    );
    vee_on(&host, &machine, &west_vee, "pw", &on_west, "10.219.0.2/24").await;
    vee_on(&host, &machine, &east_vee, "pe", &on_east, "10.219.0.3/24").await;
    assert!(
        pings(&west_vee, "10.219.0.3", 56, 2),
        "one LAN across the two sites' bridges"
    );

    // East's hosts leave the LAN: west no longer floods to them.
    let alone = LanPlan {
        peers: vec![],
        ..west.clone()
    };
    host.ensure_lan(&alone, Some(&config(west_port)))
        .await
        .unwrap();
    let flooding = run(
        "bridge",
        &["-n", &machine, "fdb", "show", "dev", &vxlan_name(&west)],
    );
    assert!(
        !flooding.contains("00:00:00:00:00:00"),
        "no flooding entry left: {flooding}"
    );
    // A LAN joined with other sites' hosts needs a VXLAN config.
    let refused = host.ensure_lan(&west, None).await.unwrap_err();
    assert!(refused.to_string().contains("vxlan"), "{refused}");
}
