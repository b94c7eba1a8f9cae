//! Devices: a DEFINED VEE's disks and NICs added and removed after InitializeVEEs (what OCCI's
//! storagelink and networkinterface do), stored before the books change, refused in any
//! other state, and checked as InitializeVEEs checks a descriptor.

use veem_model::{
    ControlAction as A, DiskKind, DiskSource, DiskSpec, ImageName, NicSpec, VeeId, VmiState,
};
use veem_placement::Policy;
use veem_server::error::CoreError;

use crate::support::*;

fn blank(target: Option<&str>) -> DiskSpec {
    DiskSpec {
        source: None,
        size_gb: Some(1),
        target: target.map(str::to_owned),
        clone: true,
        kind: DiskKind::Disk,
    }
}

fn nic(network: &str, ip: Option<&str>) -> NicSpec {
    NicSpec {
        network: network.to_owned(),
        target: None,
        ip: ip.map(|ip| ip.parse().expect("a valid address")),
    }
}

fn targets(site: &Site, id: &VeeId) -> (Vec<String>, Vec<String>) {
    let record = site.get(id);
    (
        record
            .descriptor
            .disks
            .iter()
            .map(|d| d.target.clone().unwrap_or_default())
            .collect(),
        record
            .descriptor
            .nics
            .iter()
            .map(|n| n.target.clone().unwrap_or_default())
            .collect(),
    )
}

/// A runtime of its own for each life of the core: dropping it ends every task of that core.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn disks_and_nics_added_and_removed_while_defined_are_stored_and_found_after_a_restart() {
    let hosts = || vec![host("h1", 4, 8192)];
    let first_life = runtime();
    let (dir, id, before) = first_life.block_on(async {
        let site = Site::open(hosts()).await;
        site.network(&sm_a(), "private", "10.30.0.0/24", false)
            .await;
        let id = site.define_one(small("grows")).await;
        let (record, n) = site
            .veem
            .add_disk(&sm_a(), &id, blank(None))
            .await
            .expect("a disk is added");
        assert_eq!(n, 0);
        assert_eq!(record.descriptor.disks[0].target.as_deref(), Some("vda"));
        let (_, n) = site
            .veem
            .add_disk(&sm_a(), &id, blank(None))
            .await
            .expect("a second disk is added");
        assert_eq!(n, 1);
        let (record, n) = site
            .veem
            .add_nic(&sm_a(), &id, nic("private", None))
            .await
            .expect("a NIC is added");
        assert_eq!(n, 0);
        let address = &record.generated.nics[0];
        assert_eq!(address.ip.as_deref(), Some("10.30.0.2"));
        assert_eq!(address.target, "eth0");
        assert_eq!(
            site.veem
                .networks()
                .get(&sm_a(), "private")
                .expect("the network")
                .held,
            1
        );
        // What an earlier deployment left of vda must not become a later vda's contents.
        let old_disk = veem_layout::disk_path(&site.veem.vee_dir(&id), "vda");
        std::fs::create_dir_all(old_disk.parent().expect("a parent")).expect("the disks dir");
        std::fs::write(&old_disk, b"old contents").expect("a file of an earlier deployment");
        site.veem
            .remove_disk(&sm_a(), &id, 0)
            .await
            .expect("the first disk is removed");
        assert!(!old_disk.exists(), "the removed disk's file is gone");
        assert_eq!(targets(&site, &id).0, ["vdb"]);
        let (record, n) = site
            .veem
            .add_disk(&sm_a(), &id, blank(None))
            .await
            .expect("a disk is added where the first was");
        assert_eq!(
            (n, record.descriptor.disks[1].target.as_deref()),
            (1, Some("vda"))
        );
        let (record, _) = site
            .veem
            .add_nic(&sm_a(), &id, nic("private", None))
            .await
            .expect("a second NIC is added");
        assert_eq!(record.generated.nics[1].ip.as_deref(), Some("10.30.0.3"));
        assert_ne!(record.generated.nics[0].mac, record.generated.nics[1].mac);
        let stored = site
            .store
            .load()
            .expect("the store loads")
            .vees
            .into_iter()
            .find(|r| r.id == id)
            .expect("the VEE is stored");
        assert_eq!(stored, site.get(&id), "the store has what the books have");
        // It runs with its devices, and stops again.
        site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
        site.act_ok(A::Shutdown, std::slice::from_ref(&id)).await;
        let before = site.get(&id);
        (site.close(), id, before)
    });
    drop(first_life);

    let second_life = runtime();
    second_life.block_on(async {
        let site = Site::open_in(dir, Policy::Pack, hosts()).await;
        let record = site.get(&id);
        assert_eq!(record.descriptor, before.descriptor);
        assert_eq!(record.generated, before.generated);
        assert_eq!(
            targets(&site, &id),
            (
                vec!["vdb".into(), "vda".into()],
                vec!["eth0".into(), "eth1".into()]
            )
        );
        // The addresses are held again after the restart: the next VEE gets the next one.
        let other = site
            .define_one(with_nics("other", &[("private", None)]))
            .await;
        assert_eq!(
            site.get(&other).generated.nics[0].ip.as_deref(),
            Some("10.30.0.4")
        );
        site.veem
            .remove_nic(&sm_a(), &id, 0)
            .await
            .expect("the first NIC is removed");
        let record = site.get(&id);
        assert_eq!(record.generated.nics.len(), 1);
        assert_eq!(record.generated.nics[0].ip.as_deref(), Some("10.30.0.3"));
        assert_eq!(targets(&site, &id).1, ["eth1"]);
    });
}

#[tokio::test]
async fn devices_change_only_while_defined() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let id = site.define_one(small("busy")).await;
    let refused = |state: &'static str| {
        move |result: Result<(), CoreError>| match result {
            Err(CoreError::WrongState(why)) => {
                assert!(why.contains("DEFINED"), "{state}: {why}")
            }
            other => panic!("{state}: a change of devices is refused, not {other:?}"),
        }
    };
    let try_all = |state: &'static str| {
        let site = &site;
        let id = id.clone();
        async move {
            let check = refused(state);
            check(
                site.veem
                    .add_disk(&sm_a(), &id, blank(None))
                    .await
                    .map(|_| ()),
            );
            check(
                site.veem
                    .add_nic(&sm_a(), &id, nic("nat", None))
                    .await
                    .map(|_| ()),
            );
            check(site.veem.remove_disk(&sm_a(), &id, 0).await.map(|_| ()));
            check(site.veem.remove_nic(&sm_a(), &id, 0).await.map(|_| ()));
            assert_eq!(
                site.get(&id).descriptor.disks.len(),
                1,
                "{state}: nothing changed"
            );
        }
    };
    site.veem
        .add_disk(&sm_a(), &id, blank(None))
        .await
        .expect("DEFINED: a disk is added");
    site.veem
        .add_nic(&sm_a(), &id, nic("nat", None))
        .await
        .expect("DEFINED: a NIC is added");
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    try_all("ACTIVE").await;
    site.act_ok(A::Pause, std::slice::from_ref(&id)).await;
    try_all("PAUSED").await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    site.act_ok(A::Suspend, std::slice::from_ref(&id)).await;
    assert_eq!(site.get(&id).state, VmiState::Suspended);
    try_all("SUSPENDED").await;
    site.act_ok(A::Destroy, std::slice::from_ref(&id)).await;
    try_all("DESTROYED").await;
}

#[tokio::test]
async fn bad_device_input_changes_nothing() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    site.network(&sm_a(), "small", "10.40.0.0/24", false).await;
    let id = site.define_one(small("kept")).await;
    site.veem
        .add_disk(&sm_a(), &id, blank(Some("vdc")))
        .await
        .expect("a disk is added");
    let before = site.get(&id);
    let no_size = DiskSpec {
        size_gb: None,
        ..blank(None)
    };
    let unknown_image = DiskSpec {
        source: Some(DiskSource::Image(ImageName::new("nope").expect("a name"))),
        size_gb: None,
        ..blank(None)
    };
    let cases: Vec<(&str, Result<(), CoreError>)> = vec![
        (
            "a blank disk without a size",
            site.veem.add_disk(&sm_a(), &id, no_size).await.map(|_| ()),
        ),
        (
            "a target another disk has",
            site.veem
                .add_disk(&sm_a(), &id, blank(Some("vdc")))
                .await
                .map(|_| ()),
        ),
        (
            "a target that is no word",
            site.veem
                .add_disk(&sm_a(), &id, blank(Some("../x")))
                .await
                .map(|_| ()),
        ),
        (
            "an image nobody has",
            site.veem
                .add_disk(&sm_a(), &id, unknown_image)
                .await
                .map(|_| ()),
        ),
        (
            "an address outside the network",
            site.veem
                .add_nic(&sm_a(), &id, nic("small", Some("10.99.0.5")))
                .await
                .map(|_| ()),
        ),
        (
            "a network name that is no word",
            site.veem
                .add_nic(&sm_a(), &id, nic("a b", None))
                .await
                .map(|_| ()),
        ),
        (
            "a disk it does not have",
            site.veem.remove_disk(&sm_a(), &id, 5).await.map(|_| ()),
        ),
        (
            "a NIC it does not have",
            site.veem.remove_nic(&sm_a(), &id, 0).await.map(|_| ()),
        ),
        (
            "another principal's VEE",
            site.veem
                .add_disk(&sm_b(), &id, blank(None))
                .await
                .map(|_| ()),
        ),
    ];
    for (case, result) in cases {
        let e = result.expect_err(case);
        assert!(
            matches!(
                e,
                CoreError::MalformedDescriptor(_)
                    | CoreError::MalformedRequest { .. }
                    | CoreError::NotFound(_)
                    | CoreError::AccessDenied(_)
            ),
            "{case}: a 4xx error, not {e:?}"
        );
        assert_eq!(site.get(&id), before, "{case}: nothing changed");
    }
    assert_eq!(
        site.veem
            .networks()
            .get(&sm_a(), "small")
            .expect("the network")
            .held,
        0,
        "no address stays taken"
    );
}

#[tokio::test]
async fn the_address_of_a_removed_nic_can_be_given_again() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    site.network(&sm_a(), "lan", "10.50.0.0/24", false).await;
    let first = site.define_one(small("first")).await;
    let second = site.define_one(small("second")).await;
    site.veem
        .add_nic(&sm_a(), &first, nic("lan", Some("10.50.0.9")))
        .await
        .expect("the first VEE takes the address");
    let taken = site
        .veem
        .add_nic(&sm_a(), &second, nic("lan", Some("10.50.0.9")))
        .await
        .expect_err("an address is held once");
    assert!(matches!(taken, CoreError::InUse(_)), "{taken:?}");
    assert!(site.get(&second).descriptor.nics.is_empty());
    site.veem
        .remove_nic(&sm_a(), &first, 0)
        .await
        .expect("the NIC is removed");
    let (record, _) = site
        .veem
        .add_nic(&sm_a(), &second, nic("lan", Some("10.50.0.9")))
        .await
        .expect("the address is free again");
    assert_eq!(record.generated.nics[0].ip.as_deref(), Some("10.50.0.9"));
}
