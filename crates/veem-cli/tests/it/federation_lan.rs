//! Federation: a private network of the primary that extends to the sites where its VEEs run
//! (the paper's VAN). The primary makes the owner's copy of the network at the site (same
//! range, its VNI, the primary's hosts as VXLAN peers) and the VEE keeps the address the
//! primary chose; the hosts of both sites join the LAN by VXLAN. On one machine the two sites'
//! VXLAN devices are told apart by UDP port.

use veem_api::{LanEndpoint, LanExtensionRequest, NetworkRequest, VeeView};
use veem_client::Client;
use veem_model::{ControlAction as A, VeeDescriptor, VmiState};

use crate::federation::{at, named, peer_token, register, site_setup, waits_when_activated};
use crate::harness::*;
use crate::qemu_networks::{guest_on, probe_log, the_host_reaches_only_the_public_address};

/// A site named `name` whose hosts are joined to other sites' LANs at `port` (VXLAN over
/// loopback): its `[federation]` lets the peers' VEEMs extend their LANs here, and its qemu
/// hosts' VXLAN devices use that port (MAC learning off: a learned entry would take the
/// device's own port, see the agent's hostnet).
pub(crate) fn lan_site(name: &str, port: u16, driver: Hypervisor) -> Setup {
    let base = site_setup(name);
    let hosts = match driver {
        Hypervisor::Sim => vec![("h1", 8, 16384, "")],
        // Two hosts, as an export of a guest's disk needs one that is up and well while the
        // other may be busy. Leaked once per site: a host's extra TOML is a `&'static str`.
        Hypervisor::Qemu => {
            let vxlan: &'static str = Box::leak(
                format!("vxlan = {{ local = \"127.0.0.1\", port = {port}, learning = false }}")
                    .into_boxed_str(),
            );
            vec![("h1", 8, 16384, vxlan), ("h2", 8, 16384, vxlan)]
        }
    };
    Setup {
        driver,
        hosts,
        extra_config: format!(
            "{}\n[federation]\nlan_endpoints = [\"127.0.0.1:{port}\"]\nlan_extension = [\"peer\"]\n",
            base.extra_config
        ),
        ..base
    }
}

/// The first of three UDP ports for the sites' VXLAN devices, apart from any other test's.
pub(crate) fn vxlan_ports() -> u16 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let pick = u16::try_from((clock ^ std::process::id()) % 10_000).expect("below 10000");
    20_000 + pick * 3
}

fn endpoint(port: u16) -> LanEndpoint {
    LanEndpoint {
        address: "127.0.0.1".parse().expect("an address"),
        port,
    }
}

/// `POST /networks` with `extends`.
fn extension(name: &str, cidr: &str, vni: u32, peers: Vec<LanEndpoint>) -> NetworkRequest {
    NetworkRequest {
        name: name.to_owned(),
        cidr: cidr.to_owned(),
        public: false,
        extends: Some(LanExtensionRequest { vni, peers }),
    }
}

pub(crate) fn on_private_at(name: &str, sites: &[&str], ip: Option<&str>) -> VeeDescriptor {
    let mut d = small(name);
    d.nics = nics(&[("private", ip)]);
    d.sites = at(sites);
    d
}

/// The refusal's status and code.
fn refused<T: std::fmt::Debug>(result: Result<T, veem_client::ClientError>) -> (u16, String) {
    let e = result.expect_err("refused");
    (
        e.status().expect("an answer"),
        e.code().unwrap_or_default().to_owned(),
    )
}

/// The VEE's one NIC's (network, address).
pub(crate) fn nic_of(view: &VeeView) -> (String, Option<String>) {
    let nic = &view.generated.nics[0];
    (nic.network.clone(), nic.ip.clone())
}

/// The copy of west's LAN at the site `name` (`site`), as the peer principal there sees it.
pub(crate) async fn copy_at(site: &Server, name: &str) -> Option<veem_api::NetworkView> {
    let peer = Client::new(&site.url, &peer_token(name)).expect("a client");
    let mut copies = peer.list_networks().await.expect("listed").networks;
    assert!(copies.len() <= 1, "one copy of the LAN: {copies:?}");
    copies.pop()
}

/// The VXLAN endpoints a network's LAN floods to, and its site's own.
fn flooding(view: &veem_api::NetworkView) -> (Vec<u16>, Vec<u16>) {
    let extends = view.extends.as_ref().expect("extended");
    (
        extends.peers.iter().map(|p| p.port).collect(),
        extends.endpoints.iter().map(|p| p.port).collect(),
    )
}

#[tokio::test]
async fn a_private_lan_extends_to_the_sites_of_its_vees_and_leaves_with_the_last() {
    let port = vxlan_ports();
    let (west_port, east_port, north_port) = (port, port + 1, port + 2);
    let west = Server::start_with(lan_site("west", west_port, Hypervisor::Sim)).await;
    let east = Server::start_with(lan_site("east", east_port, Hypervisor::Sim)).await;
    let north = Server::start_with(lan_site("north", north_port, Hypervisor::Sim)).await;
    register(&west, &east, "east").await;
    register(&west, &north, "north").await;
    let cidr = "10.215.7.0/24";
    west.a
        .create_network("private", cidr, false)
        .await
        .expect("sm-a's LAN at west");

    // Two VEEs at east and one at north on west's LAN, each with the address west chose (one
    // asked for it).
    let db = init_one(&west.a, on_private_at("db", &["east"], None)).await;
    let cache = init_one(
        &west.a,
        on_private_at("cache", &["east"], Some("10.215.7.40")),
    )
    .await;
    let log = init_one(&west.a, on_private_at("log", &["north"], None)).await;
    let chosen = [
        get(&west.a, &db).await.generated.nics[0].ip.clone(),
        Some("10.215.7.40".to_owned()),
        get(&west.a, &log).await.generated.nics[0].ip.clone(),
    ];
    assert_eq!(chosen[0].as_deref(), Some("10.215.7.2"), "west chose");
    ctl_ok(&west.a, A::Activate, &[&db, &cache, &log]).await;
    for vee in [&db, &cache, &log] {
        wait_state(&west.a, vee, VmiState::Active).await;
    }

    let copy = copy_at(&east, "east")
        .await
        .expect("west's LAN has a copy at east");
    assert!(
        copy.name.ends_with(":private"),
        "owner-marked: {}",
        copy.name
    );
    assert_eq!((copy.owner.as_str(), copy.cidr.as_str()), ("peer", cidr));
    let west_lan = west.a.get_network("private").await.expect("shown");
    let vni = west_lan.extends.as_ref().expect("west's LAN extends").vni;
    let north_copy = copy_at(&north, "north").await.expect("and one at north");
    for view in [&copy, &north_copy] {
        assert_eq!(view.extends.as_ref().map(|e| e.vni), Some(vni), "one VNI");
    }
    // Every side floods to every other side's hosts.
    assert_eq!(
        flooding(&west_lan),
        (vec![east_port, north_port], vec![west_port])
    );
    assert_eq!(
        flooding(&copy),
        (vec![west_port, north_port], vec![east_port])
    );
    assert_eq!(
        flooding(&north_copy),
        (vec![west_port, east_port], vec![north_port])
    );
    for (site, name, ip) in [
        (&east, "db", &chosen[0]),
        (&east, "cache", &chosen[1]),
        (&north, "log", &chosen[2]),
    ] {
        let there = named(site, name).await.expect("it runs there");
        let copy = copy_at(site, &there.site).await.expect("a copy");
        assert_eq!(
            nic_of(&there),
            (copy.name.clone(), ip.clone()),
            "{name} has west's address on the copy"
        );
    }
    assert_eq!(copy.addresses_used, 2);
    // At west, the VEE's NIC is on west's own LAN, as it was described.
    let at_west = get(&west.a, &db).await;
    assert_eq!(
        (
            at_west.descriptor.nics[0].network.as_str(),
            nic_of(&at_west)
        ),
        ("private", ("private".to_owned(), chosen[0].clone()))
    );
    // At west, the addresses are held by the VEEs at the sites: nothing else takes them.
    assert_eq!(west_lan.addresses_used, 3);
    assert_eq!(
        refused(
            west.a
                .initialize(&veem_api::InitializeRequest {
                    model: veem_model::InitModel::Besteffort,
                    count: 1,
                    descriptor: on_private_at("twin", &["west"], Some("10.215.7.40")),
                })
                .await
        ),
        (409, "in_use".to_owned()),
        "west's address at east is not free at west"
    );

    // Who may extend a LAN to east, and on which VNI.
    let peer_at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    let other = || vec![endpoint(west_port)];
    assert_eq!(
        refused(
            east.a
                .create_network_with(&extension("mine", cidr, vni + 100, other()))
                .await
        ),
        (403, "access_denied".to_owned()),
        "a principal that [federation] lan_extension does not list"
    );
    assert_eq!(
        refused(
            peer_at_east
                .create_network_with(&extension("again", cidr, vni, other()))
                .await
        ),
        (409, "conflict".to_owned()),
        "a VNI east uses"
    );
    assert_eq!(
        refused(
            peer_at_east
                .create_network_with(&extension(&copy.name, "10.215.9.0/24", vni, other()))
                .await
        ),
        (409, "conflict".to_owned()),
        "the copy's name for another range"
    );
    for (request, why) in [
        (extension("zero", cidr, 0, other()), "VNI 0"),
        (extension("wide", cidr, 1 << 24, other()), "beyond 24 bits"),
        (extension("alone", cidr, vni + 100, vec![]), "no peer"),
        (
            extension("port", cidr, vni + 100, vec![endpoint(0)]),
            "port 0",
        ),
    ] {
        assert_eq!(
            refused(peer_at_east.create_network_with(&request).await),
            (400, "malformed_request".to_owned()),
            "{why}"
        );
    }
    // East's own networks are made as before.
    let own = east
        .a
        .create_network("own", "10.215.8.0/24", false)
        .await
        .expect("east's own LAN");
    assert_eq!(own.extends, None);
    assert_eq!(
        copy_at(&east, "east").await.as_ref().map(flooding),
        Some((vec![west_port, north_port], vec![east_port])),
        "nothing refused changed the copy"
    );

    // A copy stays while a VEE at its site is on it, and goes with the last; the other sides
    // stop flooding to that site.
    west.a.purge_vee(&db).await.expect("purged");
    assert_eq!(
        copy_at(&east, "east").await.map(|c| c.addresses_used),
        Some(1),
        "cache is still on it"
    );
    west.a.purge_vee(&log).await.expect("purged");
    assert!(
        copy_at(&north, "north").await.is_none(),
        "the copy left north"
    );
    assert_eq!(
        copy_at(&east, "east").await.as_ref().map(flooding),
        Some((vec![west_port], vec![east_port])),
        "east no longer floods to north"
    );
    assert_eq!(
        flooding(&west.a.get_network("private").await.expect("shown")),
        (vec![east_port], vec![west_port])
    );
    west.a.purge_vee(&cache).await.expect("purged");
    assert!(copy_at(&east, "east").await.is_none(), "the copy left east");
    let west_lan = west.a.get_network("private").await.expect("shown");
    assert_eq!(
        (west_lan.extends, west_lan.addresses_used),
        (None, 0),
        "west's LAN no longer floods anywhere, and its addresses are free"
    );
    assert!(named(&east, "cache").await.is_none());

    // A VEE that east cannot take waits for it: the copy made for it stays while it waits,
    // the same one across the tries (every 5 s), not made and deleted at each; it goes when
    // the VEE no longer waits.
    let mut huge = on_private_at("huge", &["east"], None);
    huge.cpu = 64;
    let huge = init_one(&west.a, huge).await;
    waits_when_activated(&west.a, &huge).await;
    let kept = copy_at(&east, "east")
        .await
        .expect("the copy stays while huge waits for east");
    let extends = west.a.get_network("private").await.expect("shown").extends;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let waiting = get(&west.a, &huge).await;
    assert!(
        waiting
            .pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("site east")),
        "tried at east: {:?}",
        waiting.pending_reason
    );
    let again = copy_at(&east, "east").await.expect("still there");
    assert_eq!(
        (again.created_ms, again.extends),
        (kept.created_ms, kept.extends),
        "the same copy across the tries"
    );
    assert_eq!(
        west.a.get_network("private").await.expect("shown").extends,
        extends,
        "west's side unchanged across the tries"
    );
    // Cancelled (DESTROY), it waits no more: the copy is swept from east within the sweep's
    // interval (10 s), without a purge.
    ctl_ok(&west.a, A::Destroy, &[&huge]).await;
    let swept = std::time::Instant::now() + std::time::Duration::from_secs(25);
    while copy_at(&east, "east").await.is_some() {
        assert!(
            std::time::Instant::now() < swept,
            "the copy for a VEE that no longer waits is swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        west.a.get_network("private").await.expect("shown").extends,
        None
    );
    west.a.purge_vee(&huge).await.expect("purged");
}

/// The VEEs of a site's list and their one NIC's (network, address), sorted by address.
async fn nics_at(site: &Server) -> Vec<(String, Option<String>)> {
    let mut nics: Vec<_> = site
        .ops
        .list_all_vees(&veem_client::ListQuery::default())
        .await
        .expect("listed")
        .iter()
        .map(nic_of)
        .collect();
    nics.sort_by(|a, b| a.1.cmp(&b.1));
    nics
}

#[tokio::test]
async fn twophase_across_sites_takes_the_lan_with_the_addresses_chosen_first_all_or_nothing() {
    let port = vxlan_ports();
    let west = Server::start_with(lan_site("west", port, Hypervisor::Sim)).await;
    let east = Server::start_with(lan_site("east", port + 1, Hypervisor::Sim)).await;
    register(&west, &east, "east").await;
    west.a
        .create_network("private", "10.215.17.0/24", false)
        .await
        .expect("sm-a's LAN at west");
    let twophase = |count: u32| {
        let mut d = on_private_at("batch", &["east"], None);
        d.cpu = 3;
        veem_api::InitializeRequest {
            model: veem_model::InitModel::Twophase,
            count,
            descriptor: d,
        }
    };

    // East's host has 8 CPUs: two VEEs of 3 are reserved there, the third is refused, and
    // the two are purged again with the LAN's copy made for them.
    let e = west.a.initialize(&twophase(3)).await.expect_err("refused");
    assert_eq!(e.code(), Some("insufficient_resources"), "{e}");
    assert!(e.to_string().contains("site east"), "{e}");
    assert!(nics_at(&east).await.is_empty(), "no VEE left at east");
    assert!(
        copy_at(&east, "east").await.is_none(),
        "no copy left at east"
    );
    let west_lan = west.a.get_network("private").await.expect("shown");
    assert_eq!(
        (west_lan.addresses_used, west_lan.extends),
        (0, None),
        "no address taken at west, and west's LAN floods nowhere"
    );
    assert!(west
        .a
        .list_all_vees(&veem_client::ListQuery::default())
        .await
        .expect("listed")
        .is_empty());

    // Two fit: reserved at east with west's addresses (the first ones: none stayed taken).
    let made = west.a.initialize(&twophase(2)).await.expect("reserved");
    let ids: Vec<String> = made.vees.iter().map(|v| v.id.clone()).collect();
    let mut views = Vec::new();
    for id in &ids {
        views.push(get(&west.a, id).await);
    }
    let chosen: Vec<Option<String>> = views.iter().map(|v| nic_of(v).1).collect();
    assert_eq!(
        chosen,
        [
            Some("10.215.17.2".to_owned()),
            Some("10.215.17.3".to_owned())
        ]
    );
    for v in &views {
        assert_eq!(v.site, "east");
    }
    let copy = copy_at(&east, "east")
        .await
        .expect("the LAN's copy at east");
    assert_eq!(copy.addresses_used, 2);
    assert_eq!(
        nics_at(&east).await,
        chosen
            .iter()
            .map(|ip| (copy.name.clone(), ip.clone()))
            .collect::<Vec<_>>(),
        "at east both have west's addresses on the copy"
    );
    let macs: std::collections::BTreeSet<String> = views
        .iter()
        .map(|v| v.generated.nics[0].mac.clone())
        .collect();
    assert_eq!(macs.len(), 2, "each its own MAC");

    // Reserved, they run at east when submitted; purged, they take the copy with them.
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&west.a, A::Activate, &refs).await;
    for id in &refs {
        wait_state(&west.a, id, VmiState::Active).await;
    }
    for id in &refs {
        west.a.purge_vee(id).await.expect("purged");
    }
    assert!(copy_at(&east, "east").await.is_none(), "the copy left east");
    assert_eq!(
        west.a
            .get_network("private")
            .await
            .expect("shown")
            .addresses_used,
        0
    );
}

/// Whether a VXLAN device of this machine floods to 127.0.0.1 at `port` (another site's
/// hosts: one site's devices use their own port, and name another's only as a peer).
fn floods_to(port: u16) -> bool {
    let out = std::process::Command::new("bridge")
        .args(["fdb", "show"])
        .output()
        .expect("bridge runs");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        l.starts_with("00:00:00:00:00:00") && l.contains(&format!("dst 127.0.0.1 port {port} "))
    })
}

/// Ranges no machine of ours uses (nor the single-site 2.2.2 test).
const PUBLIC_CIDR: &str = "10.217.7.0/24";
const PRIVATE_CIDR: &str = "10.218.7.0/24";

#[tokio::test]
async fn uc_2_2_2_across_two_sites_the_database_is_reachable_only_from_the_web_tier() {
    let port = vxlan_ports();
    let (west_port, east_port) = (port, port + 1);
    let Some(west) = Server::start_with_guest(lan_site("west", west_port, Hypervisor::Qemu)).await
    else {
        return;
    };
    let Some(east) = Server::start_with_guest(lan_site("east", east_port, Hypervisor::Qemu)).await
    else {
        return;
    };
    register(&west, &east, "east").await;
    west.ops
        .create_network("public", PUBLIC_CIDR, true)
        .await
        .expect("west's public network");
    west.a
        .create_network("private", PRIVATE_CIDR, false)
        .await
        .expect("sm-a's LAN");
    west.b
        .create_network("private", PRIVATE_CIDR, false)
        .await
        .expect("sm-b's LAN of the same name and range: another LAN");

    // The database at east, on west's LAN.
    let mut d = guest_on("db", &[("private", None)], &[]);
    d.sites = at(&["east"]);
    let db = init_one(&west.a, d).await;
    let db_ip = get(&west.a, &db).await.generated.nics[0]
        .ip
        .clone()
        .expect("an address");
    ctl_ok(&west.a, A::Activate, &[&db]).await;
    let db_there = named(&east, "db").await.expect("db runs at east");
    assert_eq!(
        db_there.generated.nics[0].ip.as_deref(),
        Some(db_ip.as_str()),
        "at east db has the address west chose"
    );
    wait_guest_ready(&east, Hypervisor::Qemu, &db_there.id).await;

    // At east, a tenant of east's own, on its own LAN of the same range, beside db's copy.
    east.a
        .create_network("private", PRIVATE_CIDR, false)
        .await
        .expect("east's own LAN of that range: another LAN");
    let outsider = init_one(
        &east.a,
        guest_on(
            "outsider",
            &[("private", Some("10.218.7.60"))],
            &[format!("{db_ip}:7")],
        ),
    )
    .await;
    ctl_ok(&east.a, A::Activate, &[&outsider]).await;
    wait_guest_ready(&east, Hypervisor::Qemu, &outsider).await;

    // The web tier at west, on the public network and the LAN.
    let mut d = guest_on(
        "web",
        &[("public", None), ("private", None)],
        &[format!("{db_ip}:7")],
    );
    d.sites = at(&["west"]);
    let web = init_one(&west.a, d).await;
    let web_view = get(&west.a, &web).await;
    let web_public = web_view.generated.nics[0].ip.clone().expect("an address");
    let web_private = web_view.generated.nics[1].ip.clone().expect("an address");
    ctl_ok(&west.a, A::Activate, &[&web]).await;
    wait_guest_ready(&west, Hypervisor::Qemu, &web).await;
    assert_eq!(
        (get(&west.a, &web).await.site, get(&west.a, &db).await.site),
        ("west".to_owned(), "east".to_owned())
    );

    // sm-b's VEE at west, on its own "private" of the same range, tries both of sm-a's.
    let mut d = guest_on(
        "other",
        &[("private", Some("10.218.7.50"))],
        &[format!("{db_ip}:7"), format!("{web_private}:7")],
    );
    d.tags.clear();
    d.anti_affinity.clear();
    let other = init_one(&west.b, d).await;
    ctl_ok(&west.b, A::Activate, &[&other]).await;
    wait_guest_ready(&west, Hypervisor::Qemu, &other).await;

    the_host_reaches_only_the_public_address(&web_public, &db_ip, &web_private);

    // Purged, db leaves east and takes the LAN's copy with it: west's hosts stop flooding there.
    assert!(
        floods_to(east_port),
        "west's host floods the LAN to east's port"
    );
    west.a.purge_vee(&db).await.expect("purged");
    let peer_at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    assert!(peer_at_east
        .list_networks()
        .await
        .expect("listed")
        .networks
        .is_empty());
    assert!(
        !floods_to(east_port),
        "west's host no longer floods to east"
    );

    // A replica placed at east while web runs: west's host, whose LAN is built already, is
    // told to flood to east again, and the replica reaches web.
    let mut d = guest_on(
        "replica",
        &[("private", None)],
        &[format!("{web_private}:7")],
    );
    d.sites = at(&["east"]);
    let replica = init_one(&west.a, d).await;
    ctl_ok(&west.a, A::Activate, &[&replica]).await;
    assert!(floods_to(east_port), "west's host floods to east again");
    let replica_there = named(&east, "replica")
        .await
        .expect("the replica runs at east");
    wait_guest_ready(&east, Hypervisor::Qemu, &replica_there.id).await;

    let web_log = probe_log(&west, &west.a, &web).await;
    assert!(
        web_log.contains(&format!("{db_ip}:7 ok")),
        "web at west reaches db at east: {web_log:?}"
    );
    let other_log = probe_log(&west, &west.b, &other).await;
    assert!(
        other_log.contains(&format!("{db_ip}:7 fail"))
            && other_log.contains(&format!("{web_private}:7 fail")),
        "another principal's LAN reaches neither: {other_log:?}"
    );
    let outsider_log = probe_log(&east, &east.a, &outsider).await;
    assert!(
        outsider_log.contains(&format!("{db_ip}:7 fail")),
        "a LAN at east of the same range does not reach db: {outsider_log:?}"
    );
    let replica_log = probe_log(&west, &west.a, &replica).await;
    assert!(
        replica_log.contains(&format!("{web_private}:7 ok")),
        "the replica at east reaches web at west: {replica_log:?}"
    );

    west.a.purge_vee(&replica).await.expect("purged");
    east.a.purge_vee(&outsider).await.expect("purged");
    east.a
        .delete_network("private")
        .await
        .expect("east's LAN deleted");
    // The LANs leave the machine's hosts: a VXLAN device holds its UDP port while it exists.
    west.a.purge_vee(&web).await.expect("purged");
    west.b.purge_vee(&other).await.expect("purged");
    for (client, name) in [
        (&west.a, "private"),
        (&west.b, "private"),
        (&west.ops, "public"),
    ] {
        client.delete_network(name).await.expect("deleted");
    }
}

#[tokio::test]
async fn a_placement_refused_at_a_site_never_takes_the_lan_from_one_racing_it_there() {
    let port = vxlan_ports();
    let west = Server::start_with(lan_site("west", port, Hypervisor::Sim)).await;
    let east = Server::start_with(lan_site("east", port + 1, Hypervisor::Sim)).await;
    register(&west, &east, "east").await;
    west.a
        .create_network("private", "10.215.27.0/24", false)
        .await
        .expect("sm-a's LAN at west");
    let twophase = |name: &str, cpu: u32| {
        let mut d = on_private_at(name, &["east"], None);
        d.cpu = cpu;
        veem_api::InitializeRequest {
            model: veem_model::InitModel::Twophase,
            count: 1,
            descriptor: d,
        }
    };
    // Each round, one batch that east takes and one it refuses extend the LAN there at once:
    // the refused one's release waits for its turn and leaves the copy the other needs.
    let mut placed = Vec::new();
    for round in 0..6u64 {
        let (fits, huge) = (twophase("fits", 1), twophase("huge", 64));
        let (fits, refused) = tokio::join!(west.a.initialize(&fits), west.a.initialize(&huge));
        let e = refused.expect_err("east has no room for 64 CPUs");
        assert_eq!(e.code(), Some("insufficient_resources"), "{e}");
        placed.push(fits.expect("east takes one CPU").vees.remove(0).id);
        let copy = copy_at(&east, "east")
            .await
            .unwrap_or_else(|| panic!("round {round}: the copy stays for the VEEs placed"));
        assert_eq!(copy.addresses_used, round + 1, "round {round}");
        assert!(
            west.a
                .get_network("private")
                .await
                .expect("shown")
                .extends
                .is_some(),
            "round {round}: west's LAN still floods to east"
        );
    }
    assert_eq!(nics_at(&east).await.len(), placed.len());
    for id in &placed {
        west.a.purge_vee(id).await.expect("purged");
    }
    assert!(copy_at(&east, "east").await.is_none(), "the copy left east");

    // A VEE waiting for east keeps a copy there; purged, it takes the copy along at once.
    let mut waits = on_private_at("waits", &["east"], None);
    waits.cpu = 64;
    let waits = init_one(&west.a, waits).await;
    waits_when_activated(&west.a, &waits).await;
    assert!(
        copy_at(&east, "east").await.is_some(),
        "kept while it waits"
    );
    west.a.purge_vee(&waits).await.expect("purged");
    assert!(
        copy_at(&east, "east").await.is_none(),
        "the copy left east with the purge"
    );
}
