//! Networks through the VMI: their resource, who sees and uses which, and the addresses the VEEM
//! hands out at InitializeVEEs. (That the LANs really connect and isolate guests is in
//! `qemu_networks`.)

use std::collections::HashSet;

use veem_api::{InitializeRequest, InitializedVee};
use veem_client::Client;
use veem_model::{ControlAction as A, InitModel, VeeDescriptor};

use crate::harness::*;

fn with_nics(name: &str, on: &[(&str, Option<&str>)]) -> VeeDescriptor {
    let mut d = small(name);
    d.nics = nics(on);
    d
}

async fn define(client: &Client, count: u32, d: VeeDescriptor) -> Vec<InitializedVee> {
    client
        .initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count,
            descriptor: d,
        })
        .await
        .expect("initialized")
        .vees
}

#[tokio::test]
async fn networks_are_made_listed_shown_and_deleted_by_their_owner() {
    let s = Server::start().await;
    let made =
        s.a.create_network("private", "10.10.0.0/24", false)
            .await
            .expect("created");
    assert_eq!(
        (made.owner.as_str(), made.cidr.as_str(), made.public),
        ("sm-a", "10.10.0.0/24", false)
    );
    assert_eq!((made.addresses_used, made.addresses_free), (0, 253));
    assert_eq!(
        made.host_address, None,
        "nothing outside reaches a private LAN"
    );
    // Another principal's network of the same name is another LAN.
    s.b.create_network("private", "10.10.0.0/24", false)
        .await
        .expect("sm-b has its own");
    let public = s
        .ops
        .create_network("public", "10.77.0.0/24", true)
        .await
        .expect("an admin makes public networks");
    assert_eq!(public.host_address.as_deref(), Some("10.77.0.1"));

    let names = |list: veem_api::NetworkList| -> Vec<(String, String)> {
        list.networks
            .into_iter()
            .map(|n| (n.owner, n.name))
            .collect()
    };
    assert_eq!(
        names(s.a.list_networks().await.expect("listed")),
        [
            ("sm-a".to_owned(), "private".to_owned()),
            ("ops".to_owned(), "public".to_owned())
        ],
        "its own and the public ones, not sm-b's"
    );
    assert_eq!(
        s.b.get_network("private").await.expect("shown").owner,
        "sm-b"
    );
    assert_eq!(
        s.a.get_network("public").await.expect("public").owner,
        "ops"
    );

    s.a.delete_network("private").await.expect("deleted");
    assert_eq!(
        s.a.get_network("private").await.expect_err("gone").code(),
        Some("not_found")
    );
    assert_eq!(
        s.b.get_network("private").await.expect("kept").owner,
        "sm-b"
    );
    assert_eq!(
        s.a.delete_network("public")
            .await
            .expect_err("not its own")
            .code(),
        Some("access_denied")
    );
}

#[tokio::test]
async fn bad_network_requests_get_specific_errors_and_change_nothing() {
    let s = Server::start().await;
    s.a.create_network("private", "10.10.0.0/24", false)
        .await
        .expect("created");
    let cases = [
        (&s.a, "private", "10.20.0.0/24", false, "conflict"),
        (&s.a, "lan", "10.20.0.5/24", false, "malformed_request"),
        (&s.a, "lan", "10.20.0.0/30", false, "malformed_request"),
        (&s.a, "lan", "not a cidr", false, "malformed_request"),
        (&s.a, "a lan", "10.20.0.0/24", false, "malformed_request"),
        (&s.a, "lan", "10.20.0.0/24", true, "access_denied"),
    ];
    for (client, name, cidr, public, code) in cases {
        let error = client
            .create_network(name, cidr, public)
            .await
            .expect_err("refused");
        assert_eq!(error.code(), Some(code), "{name} {cidr} {public}: {error}");
    }
    assert_eq!(s.a.list_networks().await.expect("listed").networks.len(), 1);
    assert_eq!(
        s.a.delete_network("nowhere")
            .await
            .expect_err("unknown")
            .code(),
        Some("not_found")
    );
}

#[tokio::test]
async fn every_nic_gets_its_own_mac_and_an_address_from_its_networks_range() {
    let s = Server::start().await;
    s.a.create_network("private", "10.10.0.0/24", false)
        .await
        .expect("created");
    s.ops
        .create_network("public", "10.77.0.0/24", true)
        .await
        .expect("created");
    let vees = define(
        &s.a,
        3,
        with_nics("web", &[("public", None), ("private", None), ("nat", None)]),
    )
    .await;
    let nics: Vec<_> = vees.iter().flat_map(|v| v.generated.nics.clone()).collect();
    let macs: HashSet<&str> = nics.iter().map(|n| n.mac.as_str()).collect();
    assert_eq!(macs.len(), 9, "unique MACs: {nics:?}");
    let ips: Vec<Option<&str>> = vees[0]
        .generated
        .nics
        .iter()
        .map(|n| n.ip.as_deref())
        .collect();
    assert_eq!(ips, [Some("10.77.0.2"), Some("10.10.0.2"), None]);
    assert_eq!(vees[2].generated.nics[1].ip.as_deref(), Some("10.10.0.4"));
    assert_eq!(
        (
            vees[0].generated.nics[0].target.as_str(),
            vees[0].generated.nics[0].network.as_str()
        ),
        ("eth0", "public")
    );
    let all_ips: HashSet<&str> = nics.iter().filter_map(|n| n.ip.as_deref()).collect();
    assert_eq!(all_ips.len(), 6, "no address twice");
    // The view of the VEE and of the network agree.
    let view = get(&s.a, &vees[1].id).await;
    assert_eq!(view.generated, vees[1].generated);
    let private = s.a.get_network("private").await.expect("shown");
    assert_eq!((private.addresses_used, private.addresses_free), (3, 250));
    // sm-b's own "private" is another range of addresses: it starts again at .2.
    s.b.create_network("private", "10.10.0.0/24", false)
        .await
        .expect("created");
    let theirs = define(&s.b, 1, with_nics("other", &[("private", None)])).await;
    assert_eq!(theirs[0].generated.nics[0].ip.as_deref(), Some("10.10.0.2"));
}

#[tokio::test]
async fn a_full_network_refuses_the_whole_batch_and_purge_gives_addresses_back() {
    let s = Server::start().await;
    // A /29 has five addresses for VEEs.
    s.a.create_network("tiny", "192.168.213.0/29", false)
        .await
        .expect("created");
    let d = with_nics("w", &[("tiny", None)]);
    let error =
        s.a.initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 6,
            descriptor: d.clone(),
        })
        .await
        .expect_err("six do not fit");
    assert_eq!(error.code(), Some("insufficient_resources"), "{error}");
    assert!(error.to_string().contains("tiny"), "{error}");
    assert!(s
        .a
        .list_vees(&Default::default())
        .await
        .expect("listed")
        .vees
        .is_empty());
    let vees = define(&s.a, 5, d.clone()).await;
    let error =
        s.a.initialize(&InitializeRequest {
            model: InitModel::Besteffort,
            count: 1,
            descriptor: d.clone(),
        })
        .await
        .expect_err("full");
    assert_eq!(error.code(), Some("insufficient_resources"));

    // In use: DESTROYED VEEs still hold their addresses until purged.
    ctl_ok(&s.a, A::Activate, &[&vees[0].id]).await;
    ctl_ok(&s.a, A::Destroy, &[&vees[0].id]).await;
    let error = s.a.delete_network("tiny").await.expect_err("in use");
    assert_eq!(error.code(), Some("in_use"));
    assert!(error.to_string().contains(&vees[0].id), "{error}");
    s.a.purge_vee(&vees[0].id).await.expect("purged");
    let again = define(&s.a, 1, d).await;
    assert_eq!(
        again[0].generated.nics[0].ip, vees[0].generated.nics[0].ip,
        "the purged VEE's address is free again"
    );
    for v in vees.iter().skip(1).chain(&again) {
        s.a.purge_vee(&v.id).await.expect("purged");
    }
    s.a.delete_network("tiny")
        .await
        .expect("no VEE holds an address");
}

#[tokio::test]
async fn a_chosen_address_is_given_or_refused_by_name() {
    let s = Server::start().await;
    s.a.create_network("private", "10.10.0.0/24", false)
        .await
        .expect("created");
    let db = define(&s.a, 1, with_nics("db", &[("private", Some("10.10.0.50"))])).await;
    assert_eq!(db[0].generated.nics[0].ip.as_deref(), Some("10.10.0.50"));
    let cases = [
        (
            with_nics("x", &[("private", Some("10.10.0.50"))]),
            1,
            "in_use",
        ),
        (
            with_nics("x", &[("private", Some("10.10.1.9"))]),
            1,
            "malformed_descriptor",
        ),
        (
            with_nics("x", &[("private", Some("10.10.0.51"))]),
            2,
            "malformed_descriptor",
        ),
        (
            with_nics("x", &[("nat", Some("10.10.0.51"))]),
            1,
            "malformed_descriptor",
        ),
    ];
    for (d, count, code) in cases {
        let error =
            s.a.initialize(&InitializeRequest {
                model: InitModel::Besteffort,
                count,
                descriptor: d,
            })
            .await
            .expect_err("refused");
        assert_eq!(error.code(), Some(code), "{error}");
    }
    let network = s.a.get_network("private").await.expect("shown");
    assert_eq!(network.addresses_used, 1, "nothing else was taken");
}

#[tokio::test]
async fn addresses_and_networks_survive_a_restart() {
    let mut s = Server::start().await;
    s.a.create_network("private", "10.10.0.0/24", false)
        .await
        .expect("created");
    let first = define(&s.a, 2, with_nics("db", &[("private", None)])).await;
    s.kill9();
    s.restart().await;
    let network = s.a.get_network("private").await.expect("kept");
    assert_eq!(network.addresses_used, 2);
    let next = define(&s.a, 1, with_nics("db", &[("private", None)])).await;
    assert_eq!(next[0].generated.nics[0].ip.as_deref(), Some("10.10.0.4"));
    assert_eq!(get(&s.a, &first[1].id).await.generated, first[1].generated);
}
