//! The control interface: the action cycle, every undefined transition, batches, placement waits.

use std::time::Duration;

use veem_api::{Order, UpdateStateRequest};
use veem_model::{apply, ControlAction as A, InitModel, VmiState};

use crate::harness::*;

#[tokio::test]
async fn the_full_control_action_cycle() {
    let s = Server::start().await;
    let id = init_one(&s.a, small("cycle")).await;
    let steps = [
        (A::Activate, VmiState::Active),
        (A::Pause, VmiState::Paused),
        (A::Activate, VmiState::Active),
        (A::Suspend, VmiState::Suspended),
        (A::Activate, VmiState::Active),
        (A::Pause, VmiState::Paused),
        (A::Suspend, VmiState::Suspended),
        (A::Shutdown, VmiState::Defined),
        (A::Activate, VmiState::Active),
        (A::Shutdown, VmiState::Defined),
        (A::Activate, VmiState::Active),
        (A::Destroy, VmiState::Destroyed),
    ];
    for (action, expected) in steps {
        ctl_ok(&s.a, action, &[&id]).await;
        let v = get(&s.a, &id).await;
        assert_eq!(v.state, expected, "after {action}");
        assert_eq!(
            v.host.is_some(),
            matches!(expected, VmiState::Active | VmiState::Paused),
            "host after {action}"
        );
        // Retrying an action whose target is reached succeeds and changes nothing.
        let before = get(&s.a, &id).await;
        ctl_ok(&s.a, action, &[&id]).await;
        let after = get(&s.a, &id).await;
        assert_eq!(
            (after.state, after.host, after.updated_ms),
            (before.state, before.host, before.updated_ms),
            "retry of {action}"
        );
    }
    let events = s.a.vee_events(&id).await.expect("events");
    let states: Vec<VmiState> = events.events.iter().map(|e| e.to).collect();
    assert_eq!(states.first(), Some(&VmiState::Defined));
    assert_eq!(states.last(), Some(&VmiState::Destroyed));
    assert!(
        events.events.windows(2).all(|w| w[0].t_ms <= w[1].t_ms),
        "times in order"
    );
}

/// Brings a fresh VEE into `state` through the API.
async fn vee_in(s: &Server, state: VmiState) -> String {
    if state == VmiState::Initial {
        // More CPUs than any host has: it waits for placement, INITIAL/PENDING.
        let mut d = small("too-big");
        d.cpu = 64;
        let id = init_one(&s.a, d).await;
        s.a.submit(std::slice::from_ref(&id)).await.expect("submit");
        return id;
    }
    let id = init_one(&s.a, small("subject")).await;
    let path: &[A] = match state {
        VmiState::Defined | VmiState::Initial => &[],
        VmiState::Active => &[A::Activate],
        VmiState::Paused => &[A::Activate, A::Pause],
        VmiState::Suspended => &[A::Activate, A::Suspend],
        VmiState::Destroyed => &[A::Destroy],
    };
    for action in path {
        ctl_ok(&s.a, *action, &[&id]).await;
    }
    assert_eq!(state_of(&s.a, &id).await, state);
    id
}

#[tokio::test]
async fn every_undefined_transition_fails_with_wrong_state_and_changes_nothing() {
    let s = Server::start().await;
    let mut checked = 0;
    for state in VmiState::ALL {
        for action in A::ALL {
            if apply(state, action).is_ok() {
                continue;
            }
            let id = vee_in(&s, state).await;
            let before = get(&s.a, &id).await;
            let r = ctl(&s.a, action, &[&id]).await;
            assert!(r.applied.is_empty(), "{action} on {state}");
            assert_eq!(r.failed.len(), 1);
            assert_eq!(
                r.failed[0].error, "wrong_state",
                "{action} on {state}: {:?}",
                r.failed
            );
            assert!(
                r.failed[0].detail.contains(state.as_str()),
                "{}",
                r.failed[0].detail
            );
            let after = get(&s.a, &id).await;
            assert_eq!(
                (after.state, after.updated_ms),
                (before.state, before.updated_ms),
                "{action} on {state} changed it"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 10, "the ten undefined pairs of the table");
}

#[tokio::test]
async fn a_mixed_batch_reports_each_id_and_does_the_rest() {
    let s = Server::start().await;
    let mine = init_one(&s.a, small("mine")).await;
    let also_mine = init_one(&s.a, small("mine-too")).await;
    let theirs = init_one(&s.b, small("theirs")).await;
    let ids = vec![
        mine.clone(),
        "vee-99999999".to_owned(),
        "not-an-id".to_owned(),
        theirs.clone(),
        also_mine.clone(),
    ];
    let r =
        s.a.update_state(&UpdateStateRequest {
            order: Order::Set,
            ids,
            action: A::Activate,
            timeout_ms: Some(20_000),
        })
        .await
        .expect("answers");
    let mut applied = r.applied.clone();
    applied.sort();
    assert_eq!(applied, vec![mine.clone(), also_mine.clone()]);
    let code = |id: &str| {
        r.failed
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.error.clone())
    };
    assert_eq!(code("vee-99999999").as_deref(), Some("not_found"));
    assert_eq!(code("not-an-id").as_deref(), Some("not_found"));
    assert_eq!(code(&theirs).as_deref(), Some("access_denied"));
    assert_eq!(
        state_of(&s.b, &theirs).await,
        VmiState::Defined,
        "another's VEE is untouched"
    );
}

#[tokio::test]
async fn twophase_over_capacity_defines_nothing() {
    let s = Server::start().await;
    let mut d = small("big");
    d.cpu = 6;
    // Three hosts of 8 CPUs hold three VEEs of 6 CPUs, not four.
    let err =
        s.a.initialize(&veem_api::InitializeRequest {
            model: InitModel::Twophase,
            count: 4,
            descriptor: d.clone(),
        })
        .await
        .expect_err("over capacity");
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some("insufficient_resources"));
    let all = s.a.list_all_vees(&Default::default()).await.expect("list");
    assert!(all.is_empty(), "nothing left defined: {all:?}");

    // Three fit, and are reserved: a later BESTEFFORT VEE cannot take their room.
    let reserved = init(&s.a, InitModel::Twophase, 3, d.clone()).await;
    for id in &reserved {
        let v = get(&s.a, id).await;
        assert_eq!((v.state, v.host), (VmiState::Defined, None));
    }
    let intruder = init_one(&s.b, d.clone()).await;
    s.b.submit(std::slice::from_ref(&intruder))
        .await
        .expect("submit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = get(&s.b, &intruder).await;
    assert_eq!(
        (v.state, v.veem_state),
        (VmiState::Initial, veem_model::VeemState::Pending)
    );
    assert!(v.pending_reason.is_some());
    // The reservations are used by their own submission.
    let refs: Vec<&str> = reserved.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    assert_eq!(state_of(&s.b, &intruder).await, VmiState::Initial);
}

#[tokio::test]
async fn besteffort_waits_with_a_reason_then_runs_when_room_frees() {
    let s = Server::start().await;
    let mut d = small("half");
    d.cpu = 5;
    let running = init(&s.a, InitModel::Besteffort, 3, d.clone()).await;
    let refs: Vec<&str> = running.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;

    let waiting = init_one(&s.a, d.clone()).await;
    let r =
        s.a.update_state(&UpdateStateRequest {
            order: Order::List,
            ids: vec![waiting.clone()],
            action: A::Activate,
            timeout_ms: Some(300),
        })
        .await
        .expect("answers");
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].error, "pending");
    let v = get(&s.a, &waiting).await;
    assert_eq!(
        (v.state, v.veem_state),
        (VmiState::Initial, veem_model::VeemState::Pending)
    );
    let reason = v
        .pending_reason
        .expect("a VEE never waits without saying why");
    assert!(reason.contains("CPU"), "{reason}");

    // Room frees: the background placement runs it without being asked again.
    ctl_ok(&s.a, A::Destroy, &[&running[0]]).await;
    let v = wait_state(&s.a, &waiting, VmiState::Active).await;
    assert!(v.pending_reason.is_none());
    // Retrying ACTIVATE on a VEE that became ACTIVE is fine.
    ctl_ok(&s.a, A::Activate, &[&waiting]).await;
}

#[tokio::test]
async fn list_order_is_sequential_and_set_is_concurrent() {
    let s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "latency_ms = { deploy = 300 }")],
        ..Setup::default()
    })
    .await;
    let active_times = |s: &Server, ids: Vec<String>| {
        let client = s.a.clone();
        async move {
            let mut times = Vec::new();
            for id in &ids {
                let e = client.vee_events(id).await.expect("events");
                times.push(
                    e.events
                        .iter()
                        .find(|e| e.to == VmiState::Active)
                        .expect("active")
                        .t_ms,
                );
            }
            times
        }
    };
    let ids = init(&s.a, InitModel::Besteffort, 3, small("slow")).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    let times = active_times(&s, ids.clone()).await;
    assert!(
        times.windows(2).all(|w| w[1] >= w[0] + 250),
        "each waits for the one before: {times:?}"
    );

    let more = init(&s.a, InitModel::Besteffort, 3, small("slow")).await;
    let r =
        s.a.update_state(&UpdateStateRequest {
            order: Order::Set,
            ids: more.clone(),
            action: A::Activate,
            timeout_ms: Some(20_000),
        })
        .await
        .expect("answers");
    assert_eq!(r.applied.len(), 3, "{:?}", r.failed);
    let times = active_times(&s, more).await;
    let spread = times.iter().max().expect("three") - times.iter().min().expect("three");
    assert!(
        spread < 250,
        "a set deploys its VEEs side by side: {times:?}"
    );
}

#[tokio::test]
async fn concurrent_initializations_all_succeed_with_unique_ids() {
    // Ids are taken in one order and committed by concurrent requests: they must reach the store
    // in the order taken, or it would refuse them as possible reuse.
    let s = Server::start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let calls = (0..16).map(|_| {
            let client = s.a.clone();
            tokio::spawn(
                async move { init(&client, InitModel::Besteffort, 200, small("many")).await },
            )
        });
        for call in futures::future::join_all(calls).await {
            ids.extend(call.expect("every initialization succeeds"));
        }
    }
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), total), (16_000, 16_000), "distinct ids");
    assert_eq!(
        s.a.list_all_vees(&Default::default())
            .await
            .expect("list")
            .len(),
        16_000
    );
}

/// A caller that gives up on an action (its connection closed while the host still works)
/// does not cut the action short: it completes, its change is recorded, and the VEE's next
/// action is taken as usual (the core's books and the store never part).
#[tokio::test]
async fn an_action_whose_caller_went_away_completes_and_the_next_one_is_taken() {
    let s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "latency_ms = { pause = 1500 }")],
        ..Setup::default()
    })
    .await;
    let id = init_one(&s.a, small("patient")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_state(&s.a, &id, VmiState::Active).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        s.a.update_state(&UpdateStateRequest {
            order: Order::List,
            ids: vec![id.clone()],
            action: A::Pause,
            timeout_ms: None,
        }),
    )
    .await;
    assert!(gave_up.is_err(), "the caller left before the host answered");
    let paused = wait_state(&s.a, &id, VmiState::Paused).await;
    assert_eq!(paused.state, VmiState::Paused, "the PAUSE completed");
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert_eq!(get(&s.a, &id).await.state, VmiState::Active);
}
