//! Reservations (TWOPHASE, section 2.5.3 of the paper): InitializeVEEs places every VEE of the
//! batch or defines none; the placement is held, DEFINED, until ACTIVATE uses it; DESTROY gives
//! it back.

use veem_model::{ControlAction as A, InitModel, VeemState, VmiState};
use veem_server::error::CoreError;

use crate::support::*;

#[tokio::test]
async fn twophase_holds_the_capacity_from_initialize_until_activate_uses_it() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let reserved = site
        .define(&sm_a(), InitModel::Twophase, 2, sized("r", 2, 1024))
        .await;
    for r in &reserved {
        assert_eq!(
            (r.state, r.veem_state, r.reserved, r.host.clone()),
            (
                VmiState::Defined,
                VeemState::Stopped,
                true,
                Some(host_id("h1"))
            ),
            "DEFINED, holding its place"
        );
    }
    assert_eq!(site.cpus_used("h1"), 4, "both reservations are counted");
    assert!(
        site.instances_on("h1").await.is_empty(),
        "a reservation runs nothing"
    );

    // A BESTEFFORT VEE cannot take the reserved room.
    let intruder = site.define_one(small("intruder")).await;
    let submitted = site
        .veem
        .submit(&sm_a(), std::slice::from_ref(&intruder))
        .await;
    assert!(submitted.failed.is_empty(), "{:?}", submitted.failed);
    site.veem.place_pending().await;
    assert_eq!(site.get(&intruder).veem_state, VeemState::Pending);

    // ACTIVATE deploys each where it was reserved.
    let ids = ids_of(&reserved);
    site.act_ok(A::Activate, &ids).await;
    for id in &ids {
        let r = site.get(id);
        assert_eq!(
            (r.state, r.reserved, r.host),
            (VmiState::Active, false, Some(host_id("h1")))
        );
        let placed = &site.events(id)[1];
        assert_eq!(placed.detail.as_deref(), Some("placed on h1"), "{placed:?}");
    }
    assert_eq!(site.cpus_used("h1"), 4, "used, not counted twice");
    assert_eq!(site.get(&intruder).veem_state, VeemState::Pending);
}

#[tokio::test]
async fn twophase_that_cannot_place_the_whole_batch_defines_nothing() {
    let site = Site::open(vec![host("h1", 4, 8192), host("h2", 4, 8192)]).await;
    // Two hosts of 4 CPUs hold two VEEs of 3 CPUs, not three.
    let refused = site
        .veem
        .initialize(&sm_a(), InitModel::Twophase, 3, sized("big", 3, 1024))
        .await
        .expect_err("over capacity");
    assert!(
        matches!(refused, CoreError::InsufficientResources(_)),
        "{refused:?}"
    );
    assert!(site.all().is_empty(), "nothing defined");
    assert_eq!(
        (site.cpus_used("h1"), site.cpus_used("h2")),
        (0, 0),
        "nothing held"
    );
    assert!(site.store.load().expect("loads").vees.is_empty());

    // Two fit, one on each host.
    let placed = site
        .define(&sm_a(), InitModel::Twophase, 2, sized("big", 3, 1024))
        .await;
    assert_eq!((site.cpus_used("h1"), site.cpus_used("h2")), (3, 3));
    assert_ne!(placed[0].host, placed[1].host);
}

#[tokio::test]
async fn destroy_of_a_reserved_vee_gives_its_room_to_a_waiting_one() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let reserved = site
        .define(&sm_a(), InitModel::Twophase, 1, sized("r", 4, 1024))
        .await;
    let reserved = reserved[0].id.clone();
    let waiting = site.define_one(sized("waiting", 4, 1024)).await;
    site.veem
        .submit(&sm_a(), std::slice::from_ref(&waiting))
        .await;
    assert_eq!(site.get(&waiting).veem_state, VeemState::Pending);

    // SHUTDOWN of a DEFINED VEE changes nothing, its reservation included.
    let before = site.get(&reserved);
    site.act_ok(A::Shutdown, std::slice::from_ref(&reserved))
        .await;
    let after = site.get(&reserved);
    assert_eq!(
        (after.generation, after.reserved, site.cpus_used("h1")),
        (before.generation, true, 4)
    );

    site.act_ok(A::Destroy, std::slice::from_ref(&reserved))
        .await;
    let destroyed = site.get(&reserved);
    assert_eq!(
        (
            destroyed.state,
            destroyed.veem_state,
            destroyed.reserved,
            destroyed.host
        ),
        (VmiState::Destroyed, VeemState::Done, false, None)
    );
    let last = site.events(&reserved).pop().expect("events");
    assert_eq!(
        (last.from, last.to),
        (Some(VmiState::Defined), VmiState::Destroyed)
    );
    let active = site.wait_state(&waiting, VmiState::Active).await;
    assert_eq!(active.host, Some(host_id("h1")));
    assert_eq!(site.vees_on("h1"), vec![active.id]);
}

#[tokio::test]
async fn a_reserved_vee_resized_while_defined_keeps_a_reservation_of_its_new_size() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let mut d = sized("r", 1, 1024);
    d.cpu_max = Some(8);
    let reserved = site.define(&sm_a(), InitModel::Twophase, 1, d).await;
    let id = reserved[0].id.clone();
    assert_eq!(site.cpus_used("h1"), 1);

    let (record, _) = site
        .veem
        .patch(&sm_a(), &id, Some(3), None)
        .await
        .expect("3 CPUs fit on h1");
    assert_eq!((record.descriptor.cpu, record.reserved), (3, true));
    assert_eq!(site.cpus_used("h1"), 3, "the reservation grew with it");

    let refused = site
        .veem
        .patch(&sm_a(), &id, Some(6), None)
        .await
        .expect_err("h1 has 4 CPUs");
    assert!(
        matches!(refused, CoreError::InsufficientResources(_)),
        "{refused:?}"
    );
    assert_eq!(site.get(&id).descriptor.cpu, 3, "unchanged");
    assert_eq!(site.cpus_used("h1"), 3, "unchanged");
}

#[tokio::test]
async fn submit_deploys_a_reserved_vee_where_it_was_reserved() {
    let site = Site::open_with(
        veem_placement::Policy::Spread,
        vec![host("h1", 4, 8192), host("h2", 4, 8192)],
    )
    .await;
    let reserved = site
        .define(&sm_a(), InitModel::Twophase, 1, sized("r", 2, 1024))
        .await;
    let home = reserved[0].host.clone().expect("reserved on a host");
    let id = reserved[0].id.clone();
    // Spread would now pick the other host for anything new.
    let submitted = site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
    assert_eq!(submitted.ok, vec![id.clone()], "{:?}", submitted.failed);
    let active = site.wait_state(&id, VmiState::Active).await;
    assert_eq!((active.host, active.reserved), (Some(home.clone()), false));
    assert_eq!(site.cpus_used(home.as_str()), 2, "counted once");
}

#[tokio::test]
async fn a_refused_twophase_batch_takes_no_network_address() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    site.network(&sm_a(), "private", "10.10.0.0/24", false)
        .await;
    let mut d = with_nics("r", &[("private", None)]);
    d.cpu = 3;
    let refused = site
        .veem
        .initialize(&sm_a(), InitModel::Twophase, 2, d.clone())
        .await
        .expect_err("one host of 4 CPUs holds one");
    assert!(
        matches!(refused, CoreError::InsufficientResources(_)),
        "{refused:?}"
    );
    assert_eq!(
        site.veem
            .networks()
            .get(&sm_a(), "private")
            .expect("shown")
            .held,
        0
    );
    let one = site.define(&sm_a(), InitModel::Twophase, 1, d).await;
    assert_eq!(
        one[0].generated.nics[0].ip.as_deref(),
        Some("10.10.0.2"),
        "the lowest address was not kept by the refused batch"
    );
}
