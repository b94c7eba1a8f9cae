//! Network addresses: each NIC on a network gets an address of its range (the lowest free; the
//! first is the hosts'), never one another VEE holds, taken with the VEE (all of a batch or
//! none) and given back only at purge.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use veem_model::{ControlAction as A, InitModel, VeeRecord};
use veem_server::error::CoreError;

use crate::support::*;

fn ips(record: &VeeRecord) -> Vec<Option<&str>> {
    record
        .generated
        .nics
        .iter()
        .map(|n| n.ip.as_deref())
        .collect()
}

#[tokio::test]
async fn addresses_come_from_the_networks_range_lowest_first_and_never_twice() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    let private = site
        .network(&sm_a(), "private", "10.10.0.0/24", false)
        .await;
    site.network(&ops(), "public", "10.77.0.0/24", true).await;
    let vees = site
        .define(
            &sm_a(),
            InitModel::Besteffort,
            3,
            with_nics("web", &[("public", None), ("private", None), ("nat", None)]),
        )
        .await;
    assert_eq!(
        ips(&vees[0]),
        [Some("10.77.0.2"), Some("10.10.0.2"), None],
        "the lowest free address of each network; a name no network has gets none"
    );
    assert_eq!(ips(&vees[2])[1], Some("10.10.0.4"));
    let nics: Vec<_> = vees.iter().flat_map(|v| v.generated.nics.clone()).collect();
    let macs: BTreeSet<_> = nics.iter().map(|n| n.mac.clone()).collect();
    assert_eq!(macs.len(), 9, "a MAC address of its own for every NIC");
    assert_eq!(
        nics.iter()
            .filter(|n| n.network == "private")
            .map(|n| n.network_id)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([Some(private.network.id)])
    );
    let info = site.veem.networks().get(&sm_a(), "private").expect("shown");
    assert_eq!((info.held, info.free), (3, 250));

    // Initializations side by side never share an address.
    let calls = (0..8).map(|_| {
        let veem = site.veem.clone();
        tokio::spawn(async move {
            veem.initialize(
                &sm_a(),
                InitModel::Besteffort,
                10,
                with_nics("many", &[("private", None)]),
            )
            .await
            .expect("initialize")
        })
    });
    let mut taken = BTreeSet::new();
    for call in futures::future::join_all(calls).await {
        for record in call.expect("the call ran") {
            let ip: Ipv4Addr = ips(&record)[0]
                .expect("an address")
                .parse()
                .expect("an IPv4 address");
            assert!(private.network.cidr.holds_vee_address(ip), "{ip}");
            assert!(taken.insert(ip), "{ip} given twice");
        }
    }
    assert_eq!(taken.len(), 80);
    for record in &vees {
        let ip = ips(record)[1].expect("an address").parse().expect("IPv4");
        assert!(!taken.contains(&ip), "{ip} given twice");
    }
    let info = site.veem.networks().get(&sm_a(), "private").expect("shown");
    assert_eq!(info.held, 83);

    // Another principal's network of the same name is another range of addresses.
    site.network(&sm_b(), "private", "10.10.0.0/24", false)
        .await;
    let theirs = site
        .define(
            &sm_b(),
            InitModel::Besteffort,
            1,
            with_nics("other", &[("private", None)]),
        )
        .await;
    assert_eq!(ips(&theirs[0]), [Some("10.10.0.2")]);
}

#[tokio::test]
async fn a_network_without_room_for_the_whole_batch_refuses_it_and_takes_nothing() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    // A /29 has five addresses for VEEs.
    site.network(&sm_a(), "tiny", "192.168.213.0/29", false)
        .await;
    let d = with_nics("w", &[("tiny", None)]);
    let refused = site
        .veem
        .initialize(&sm_a(), InitModel::Besteffort, 6, d.clone())
        .await
        .expect_err("six do not fit");
    match &refused {
        CoreError::InsufficientResources(why) => assert!(why.contains("tiny"), "{why}"),
        other => panic!("expected insufficient_resources, got {other:?}"),
    }
    assert!(site.all().is_empty());
    assert_eq!(
        site.veem
            .networks()
            .get(&sm_a(), "tiny")
            .expect("shown")
            .held,
        0
    );
    let five = site
        .define(&sm_a(), InitModel::Besteffort, 5, d.clone())
        .await;
    let all: BTreeSet<_> = five.iter().map(|v| ips(v)[0]).collect();
    assert_eq!(all.len(), 5);
    assert!(matches!(
        site.veem
            .initialize(&sm_a(), InitModel::Besteffort, 1, d)
            .await,
        Err(CoreError::InsufficientResources(_))
    ));
}

#[tokio::test]
async fn destroy_keeps_an_address_and_purge_gives_it_back() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    site.network(&sm_a(), "tiny", "192.168.213.0/29", false)
        .await;
    let d = with_nics("w", &[("tiny", None)]);
    let vees = site
        .define(&sm_a(), InitModel::Besteffort, 5, d.clone())
        .await;
    let first = vees[0].id.clone();
    site.act_ok(A::Activate, std::slice::from_ref(&first)).await;
    site.act_ok(A::Destroy, std::slice::from_ref(&first)).await;
    // DESTROYED, its disks are kept, and its address with them.
    match site.veem.delete_network(&sm_a(), "tiny").await {
        Err(CoreError::InUse(why)) => assert!(why.contains(first.as_str()), "{why}"),
        other => panic!("expected in_use, got {other:?}"),
    }
    assert_eq!(
        site.veem
            .networks()
            .get(&sm_a(), "tiny")
            .expect("shown")
            .held,
        5
    );

    site.veem.purge(&sm_a(), &first).await.expect("purged");
    assert_eq!(
        site.veem
            .networks()
            .get(&sm_a(), "tiny")
            .expect("shown")
            .held,
        4
    );
    let again = site.define(&sm_a(), InitModel::Besteffort, 1, d).await;
    assert_eq!(
        again[0].generated.nics[0].ip, vees[0].generated.nics[0].ip,
        "the purged VEE's address is free again"
    );
    for v in vees.iter().skip(1).chain(&again) {
        site.veem.purge(&sm_a(), &v.id).await.expect("purged");
    }
    site.veem
        .delete_network(&sm_a(), "tiny")
        .await
        .expect("no VEE holds an address");
}

#[tokio::test]
async fn a_chosen_address_is_given_once_and_refused_by_name_otherwise() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    site.network(&sm_a(), "private", "10.10.0.0/24", false)
        .await;
    let db = site
        .define(
            &sm_a(),
            InitModel::Besteffort,
            1,
            with_nics("db", &[("private", Some("10.10.0.50"))]),
        )
        .await;
    assert_eq!(ips(&db[0]), [Some("10.10.0.50")]);
    let cases = [
        ("10.10.0.50", "private", 1, "in_use"),
        ("10.10.1.9", "private", 1, "malformed_descriptor"),
        ("10.10.0.1", "private", 1, "malformed_descriptor"),
        ("10.10.0.0", "private", 1, "malformed_descriptor"),
        ("10.10.0.255", "private", 1, "malformed_descriptor"),
        ("10.10.0.51", "private", 2, "malformed_descriptor"),
        ("10.10.0.51", "nat", 1, "malformed_descriptor"),
    ];
    for (ip, network, count, code) in cases {
        let refused = site
            .veem
            .initialize(
                &sm_a(),
                InitModel::Besteffort,
                count,
                with_nics("x", &[(network, Some(ip))]),
            )
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            code,
            "{ip} on {network} for {count}: {refused}"
        );
    }
    assert_eq!(
        site.veem
            .networks()
            .get(&sm_a(), "private")
            .expect("shown")
            .held,
        1,
        "nothing else was taken"
    );
    assert_eq!(site.all().len(), 1);
}

/// `POST /networks` with `extends`: another site's LAN, here on its VNI.
fn extension(name: &str, vni: u32) -> veem_api::NetworkRequest {
    veem_api::NetworkRequest {
        name: name.to_owned(),
        cidr: "10.10.0.0/24".to_owned(),
        public: false,
        extends: Some(veem_api::LanExtensionRequest {
            vni,
            peers: vec![veem_api::LanEndpoint {
                address: "192.0.2.9".parse().expect("an address"),
                port: 4789,
            }],
        }),
    }
}

#[tokio::test]
async fn another_sites_lan_keeps_its_vni_and_the_sites_own_networks_go_around_it() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    let networks = site.veem.networks();
    // Before the site lets anyone join its hosts to other sites' LANs, nobody may.
    let refused = networks.create(&sm_b(), &extension("early", 2)).await;
    assert!(
        matches!(refused, Err(CoreError::AccessDenied(_))),
        "{refused:?}"
    );
    networks.set_federation(veem_server::veem::LanFederation {
        endpoints: vec![veem_api::LanEndpoint {
            address: "192.0.2.1".parse().expect("an address"),
            port: 4789,
        }],
        extenders: vec![sm_b().principal],
    });
    let copy = networks
        .create(&sm_b(), &extension("copy", 2))
        .await
        .expect("sm-b may extend its LAN here");
    assert_eq!((copy.network.id, copy.network.vni()), (1, 2));
    let refused = networks.create(&sm_a(), &extension("mine", 9)).await;
    assert!(
        matches!(refused, Err(CoreError::AccessDenied(_))),
        "sm-a is not listed: {refused:?}"
    );
    // The site's own next network would be id 2, the VNI sm-b's LAN brought: it is 3.
    let own = site.network(&sm_a(), "own", "10.20.0.0/24", false).await;
    assert_eq!((own.network.id, own.network.vni()), (3, 3));
    for vni in [2, 3] {
        let refused = networks.create(&sm_b(), &extension("clash", vni)).await;
        assert!(
            matches!(refused, Err(CoreError::Conflict(_))),
            "VNI {vni} is taken: {refused:?}"
        );
    }
    // A VEE on the copy has the address it names (the one the other site chose).
    let d = {
        let mut d = veem_model::VeeDescriptor::minimal(1, 64);
        d.nics = vec![veem_model::NicSpec {
            network: "copy".into(),
            target: None,
            ip: Some(Ipv4Addr::new(10, 10, 0, 9)),
        }];
        d
    };
    let vee = site.define(&sm_b(), InitModel::Besteffort, 1, d).await;
    assert_eq!(ips(&vee[0]), [Some("10.10.0.9")]);
}
