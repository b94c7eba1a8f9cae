//! Placement: a VEE no host can take waits in INITIAL/PENDING saying why, and is placed by the
//! background loop once capacity appears; anti-affinity; disabled hosts; pack and spread.

use std::collections::BTreeSet;
use std::time::Duration;

use veem_api::HostState;
use veem_api::Order;
use veem_model::{ControlAction as A, InitModel, VeemState, VmiState};
use veem_placement::Policy;
use veem_server::error::CoreError;

use crate::support::*;

#[tokio::test]
async fn a_vee_no_host_fits_waits_with_a_reason_until_a_host_with_room_connects() {
    let mut site = Site::open(vec![host("h1", 2, 4096)]).await;
    let id = site.define_one(sized("big", 4, 1024)).await;

    let submitted = site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
    assert_eq!(submitted.ok, vec![id.clone()], "{:?}", submitted.failed);
    let waiting = site.get(&id);
    assert_eq!(
        (waiting.state, waiting.veem_state, waiting.host.clone()),
        (VmiState::Initial, VeemState::Pending, None)
    );
    let reason = waiting
        .pending_reason
        .clone()
        .expect("a VEE never waits without a reason");
    assert!(
        reason.contains("4 CPUs") && reason.contains("h1"),
        "the reason names what is missing and where: {reason}"
    );
    let last = site.events(&id).pop().expect("events");
    assert_eq!(
        (last.from, last.to, last.veem_state, last.detail.as_deref()),
        (
            Some(VmiState::Defined),
            VmiState::Initial,
            VeemState::Pending,
            Some(reason.as_str())
        ),
        "the move to INITIAL/PENDING is an event that says why"
    );

    // ACTIVATE waits for it, and answers `pending` with the reason when its time runs out.
    let outcome = site
        .veem
        .update_state(
            &sm_a(),
            Order::List,
            std::slice::from_ref(&id),
            A::Activate,
            Duration::from_millis(200),
        )
        .await;
    match only_failure(&outcome) {
        CoreError::Pending(why) => assert_eq!(why, &reason),
        other => panic!("expected pending, got {other:?}"),
    }
    // Another round of placement changes nothing while no host fits.
    site.veem.place_pending().await;
    let still = site.get(&id);
    assert_eq!(
        (still.state, still.veem_state, still.generation),
        (VmiState::Initial, VeemState::Pending, waiting.generation)
    );

    // Capacity appears: the background placement deploys it unasked.
    site.connect(host("h2", 8, 16384)).await;
    let active = site.wait_state(&id, VmiState::Active).await;
    assert_eq!(active.host, Some(host_id("h2")));
    assert_eq!(active.veem_state, VeemState::Active);
    assert_eq!(active.pending_reason, None);
    assert_eq!(site.instances_on("h2").await, vec![active.id.clone()]);
    assert!(site.instances_on("h1").await.is_empty());
}

#[tokio::test]
async fn a_waiting_vee_is_placed_when_a_running_one_frees_its_room() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let first = site.define_one(sized("first", 3, 1024)).await;
    let second = site.define_one(sized("second", 3, 1024)).await;
    site.act_ok(A::Activate, std::slice::from_ref(&first)).await;
    let submitted = site
        .veem
        .submit(&sm_a(), std::slice::from_ref(&second))
        .await;
    assert!(submitted.failed.is_empty(), "{:?}", submitted.failed);
    let waiting = site.get(&second);
    assert_eq!(waiting.veem_state, VeemState::Pending);
    assert!(waiting.pending_reason.is_some());
    assert_eq!(site.cpus_used("h1"), 3, "the waiting VEE holds nothing");

    site.act_ok(A::Destroy, std::slice::from_ref(&first)).await;
    let placed = site.wait_state(&second, VmiState::Active).await;
    assert_eq!(placed.host, Some(host_id("h1")));
    assert_eq!(site.cpus_used("h1"), 3);
    assert_eq!(site.vees_on("h1"), vec![placed.id]);
}

#[tokio::test]
async fn anti_affinity_keeps_a_principals_tagged_vees_on_different_hosts() {
    let site = Site::open(vec![host("h1", 8, 16384), host("h2", 8, 16384)]).await;
    let mut db = small("db");
    db.tags = vec!["db".into()];
    db.anti_affinity = vec!["db".into()];
    let ids = ids_of(
        &site
            .define(&sm_a(), InitModel::Besteffort, 3, db.clone())
            .await,
    );
    let submitted = site.veem.submit(&sm_a(), &ids).await;
    assert_eq!(submitted.ok.len(), 3, "{:?}", submitted.failed);
    for id in &ids[..2] {
        site.wait_state(id, VmiState::Active).await;
    }
    let hosts: BTreeSet<_> = ids[..2].iter().map(|id| site.get(id).host).collect();
    assert_eq!(hosts.len(), 2, "never two on one host: {hosts:?}");
    let third = site.get(&ids[2]);
    assert_eq!(
        (third.state, third.veem_state),
        (VmiState::Initial, VeemState::Pending),
        "there is room, but not away from the others"
    );
    let reason = third.pending_reason.expect("a reason");
    assert!(
        reason.contains("2 hosts excluded by anti-affinity on tag db"),
        "{reason}"
    );

    // Another principal's tags are no concern of sm-a's VEEs.
    let theirs = site
        .define(&sm_b(), InitModel::Besteffort, 1, db.clone())
        .await;
    let outcome = site.act(&sm_b(), A::Activate, &ids_of(&theirs)).await;
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);

    // One of sm-a's goes: the third takes its host.
    let freed = site.get(&ids[0]).host.expect("placed");
    site.act_ok(A::Destroy, &ids[..1]).await;
    let moved_in = site.wait_state(&ids[2], VmiState::Active).await;
    assert_eq!(moved_in.host, Some(freed));
}

#[tokio::test]
async fn a_disabled_host_takes_no_new_vee_and_keeps_those_it_runs() {
    let site = Site::open(vec![host("h1", 4, 8192), host("h2", 4, 8192)]).await;
    let resident = site.define_one(small("resident")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&resident))
        .await;
    let home = site.get(&resident).host.expect("placed");
    let other = if home == host_id("h1") {
        host_id("h2")
    } else {
        host_id("h1")
    };

    let entry = site
        .veem
        .set_host_disabled(&home, true)
        .await
        .expect("a known host");
    assert_eq!(entry.state(), HostState::Disabled);
    let newcomers = ids_of(
        &site
            .define(&sm_a(), InitModel::Besteffort, 3, small("newcomer"))
            .await,
    );
    site.act_ok(A::Activate, &newcomers).await;
    for id in &newcomers {
        assert_eq!(site.get(id).host, Some(other.clone()), "{id}");
    }
    let kept = site.get(&resident);
    assert_eq!(
        (kept.state, kept.host.clone()),
        (VmiState::Active, Some(home.clone())),
        "what a disabled host runs stays"
    );
    assert_eq!(
        site.instances_on(home.as_str()).await,
        vec![kept.id.clone()]
    );

    // Both disabled: a new VEE waits, saying so; enabling one places it there.
    site.veem
        .set_host_disabled(&other, true)
        .await
        .expect("a known host");
    let late = site.define_one(small("late")).await;
    let submitted = site.veem.submit(&sm_a(), std::slice::from_ref(&late)).await;
    assert!(submitted.failed.is_empty(), "{:?}", submitted.failed);
    let waiting = site.get(&late);
    assert_eq!(waiting.veem_state, VeemState::Pending);
    let reason = waiting.pending_reason.expect("a reason");
    assert!(reason.contains("2 hosts disabled"), "{reason}");
    site.veem
        .set_host_disabled(&home, false)
        .await
        .expect("a known host");
    let placed = site.wait_state(&late, VmiState::Active).await;
    assert_eq!(placed.host, Some(home));
}

#[tokio::test]
async fn pack_fills_one_host_before_another_and_spread_takes_the_emptiest() {
    let hosts = || vec![host("h1", 8, 16384), host("h2", 8, 16384)];
    let packed = Site::open_with(Policy::Pack, hosts()).await;
    let ids = ids_of(
        &packed
            .define(&sm_a(), InitModel::Besteffort, 3, small("p"))
            .await,
    );
    packed.act_ok(A::Activate, &ids).await;
    let used: BTreeSet<_> = ids.iter().map(|id| packed.get(id).host).collect();
    assert_eq!(used.len(), 1, "pack: one host holds all three: {used:?}");

    let spread = Site::open_with(Policy::Spread, hosts()).await;
    let ids = ids_of(
        &spread
            .define(&sm_a(), InitModel::Besteffort, 2, small("s"))
            .await,
    );
    spread.act_ok(A::Activate, &ids).await;
    let used: BTreeSet<_> = ids.iter().map(|id| spread.get(id).host).collect();
    assert_eq!(used.len(), 2, "spread: one on each host: {used:?}");
}

#[tokio::test]
async fn a_live_migration_moves_the_vee_and_its_capacity_and_keeps_anti_affinity() {
    let site = Site::open(vec![host("h1", 4, 8192), host("h2", 4, 8192)]).await;
    let mut db = sized("db", 2, 1024);
    db.tags = vec!["db".into()];
    db.anti_affinity = vec!["db".into()];
    let ids = ids_of(&site.define(&sm_a(), InitModel::Besteffort, 2, db).await);
    site.act_ok(A::Activate, &ids).await;
    let (a, b) = (site.get(&ids[0]), site.get(&ids[1]));
    let (from, to) = (
        a.host.clone().expect("placed"),
        b.host.clone().expect("placed"),
    );
    assert_ne!(from, to);

    // Onto its twin's host: anti-affinity refuses, nothing moves.
    let refused = site
        .veem
        .migrate(&ops(), &ids[0], Some(&to), true)
        .await
        .expect_err("anti-affinity");
    assert!(
        matches!(refused, CoreError::InsufficientResources(_)),
        "{refused:?}"
    );
    assert_eq!(site.get(&ids[0]).host, Some(from.clone()));
    assert!(matches!(
        site.veem.migrate(&sm_a(), &ids[0], None, true).await,
        Err(CoreError::AccessDenied(_))
    ));

    // Its twin gone, it moves there live, and its capacity with it.
    site.act_ok(A::Destroy, &ids[1..]).await;
    let sim_from = site.sims[from.as_str()].clone();
    let boot = sim_from.boot_id(&a.id).expect("running");
    let moved = site
        .veem
        .migrate(&ops(), &ids[0], Some(&to), true)
        .await
        .expect("migrated");
    assert_eq!(
        (moved.state, moved.host.clone()),
        (VmiState::Active, Some(to.clone()))
    );
    assert_eq!(
        (site.cpus_used(from.as_str()), site.cpus_used(to.as_str())),
        (0, 2)
    );
    assert!(site.instances_on(from.as_str()).await.is_empty());
    assert_eq!(site.instances_on(to.as_str()).await, vec![a.id.clone()]);
    assert_eq!(
        site.sims[to.as_str()].boot_id(&a.id),
        Some(boot),
        "the same boot, not a restart"
    );
    let last = site.events(&ids[0]).pop().expect("events");
    assert_eq!(
        (last.from, last.to),
        (Some(VmiState::Active), VmiState::Active)
    );
    let note = last.detail.expect("a note");
    assert!(
        note.starts_with(&format!("migrated from {from} to {to}")),
        "{note}"
    );
}

#[tokio::test]
async fn a_live_resize_the_host_cannot_hold_is_refused_not_overbooked() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let mut d = sized("grow", 1, 1024);
    d.cpu_max = Some(8);
    let id = site.define_one(d).await;
    let neighbour = site.define_one(sized("neighbour", 2, 1024)).await;
    site.act_ok(A::Activate, &[id.clone(), neighbour]).await;
    let (record, applied) = site
        .veem
        .patch(&sm_a(), &id, Some(2), None)
        .await
        .expect("2 CPUs fit");
    assert_eq!(applied, veem_api::PatchApplied::Live);
    assert_eq!((record.descriptor.cpu, site.cpus_used("h1")), (2, 4));
    let refused = site
        .veem
        .patch(&sm_a(), &id, Some(3), None)
        .await
        .expect_err("h1 has 4 CPUs");
    assert!(
        matches!(refused, CoreError::InsufficientResources(_)),
        "{refused:?}"
    );
    assert_eq!(
        (site.get(&id).descriptor.cpu, site.cpus_used("h1")),
        (2, 4),
        "unchanged"
    );
}

#[tokio::test]
async fn a_disconnected_host_takes_nothing_until_it_connects_again() {
    let mut site = Site::open(vec![host("h1", 4, 8192)]).await;
    let entry = site.veem.hosts().get(&host_id("h1")).expect("known");
    let link = entry.link.expect("connected");
    site.veem.disconnect_host(&host_id("h1"), &link);
    let entry = site.veem.hosts().get(&host_id("h1")).expect("still known");
    assert_eq!(entry.state(), HostState::Down);
    let id = site.define_one(small("patient")).await;
    site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
    site.veem.place_pending().await;
    let waiting = site.get(&id);
    assert_eq!(waiting.veem_state, VeemState::Pending);
    assert!(waiting.pending_reason.is_some());

    site.connect(host("h1", 4, 8192)).await;
    let active = site.wait_state(&id, VmiState::Active).await;
    assert_eq!(active.host, Some(host_id("h1")));
}

#[tokio::test]
async fn a_waiting_vee_destroyed_leaves_the_queue_and_is_never_placed() {
    let mut site = Site::open(vec![host("h1", 1, 1024)]).await;
    let id = site.define_one(sized("big", 2, 1024)).await;
    site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
    assert_eq!(site.get(&id).veem_state, VeemState::Pending);
    site.act_ok(A::Destroy, std::slice::from_ref(&id)).await;
    let destroyed = site.get(&id);
    assert_eq!(
        (
            destroyed.state,
            destroyed.veem_state,
            destroyed.pending_reason.clone()
        ),
        (VmiState::Destroyed, VeemState::Done, None)
    );
    let last = site.events(&id).pop().expect("events");
    assert_eq!(
        (last.from, last.to),
        (Some(VmiState::Initial), VmiState::Destroyed)
    );

    site.connect(host("h2", 8, 16384)).await;
    site.veem.place_pending().await;
    assert_eq!(site.get(&id).generation, destroyed.generation);
    assert_eq!(site.cpus_used("h2"), 0);
    assert!(site.instances_on("h2").await.is_empty());
}

#[tokio::test]
async fn a_waiting_vees_reason_follows_what_the_hosts_offer_now() {
    let mut site = Site::open(vec![host("h1", 2, 4096)]).await;
    let id = site.define_one(sized("big", 4, 1024)).await;
    site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
    let first = site.get(&id).pending_reason.expect("a reason");
    assert!(first.contains("at most 2 CPUs free: h1"), "{first}");

    // A larger host, still too small: the reason says so, with no new event.
    let events = site.events(&id).len();
    site.connect(host("h2", 3, 4096)).await;
    let now = wait_until("the reason to name h2", || {
        let reason = site.get(&id).pending_reason.expect("a reason");
        reason.contains("h2").then_some(reason)
    })
    .await;
    assert!(now.contains("at most 3 CPUs free: h2"), "{now}");
    let waiting = site.get(&id);
    assert_eq!(
        (waiting.state, waiting.veem_state),
        (VmiState::Initial, VeemState::Pending)
    );
    assert_eq!(
        site.events(&id).len(),
        events,
        "a reason is no change of state"
    );
}
