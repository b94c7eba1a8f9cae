//! State changes (Table 2.1 and section 2.5.4 of the paper): each UpdateState action moves a
//! VEE through the states the paper names, each change a stored event and a STATE event;
//! undefined pairs are refused with `wrong_state` and change nothing; `list` goes in order,
//! `set` side by side; a failed deployment leaves the VEE DEFINED.

use std::collections::BTreeMap;

use veem_api::Order;
use veem_model::{
    apply, ControlAction as A, EventType, InitModel, MeasurementValue, VeeId, VeemState, VmiState,
};
use veem_server::error::CoreError;

use crate::support::*;

use VmiState::{Active, Defined, Destroyed, Initial, Paused, Suspended};

/// One stored event: (from, to, the VEEM state after).
type Move = (VmiState, VmiState, VeemState);

#[tokio::test]
async fn each_action_moves_the_vee_through_the_papers_states_with_an_event_per_change() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let mut stream = site.veem.monitoring_stream();
    let id = site.define_one(small("cycle")).await;
    let created = site.events(&id);
    assert_eq!(moves(&created), vec![(None, Defined)]);

    let steps: [(A, &[Move]); 12] = [
        (
            A::Activate,
            &[
                (Defined, Initial, VeemState::Hold),
                (Initial, Active, VeemState::Active),
            ],
        ),
        (A::Pause, &[(Active, Paused, VeemState::Hold)]),
        (A::Activate, &[(Paused, Active, VeemState::Active)]),
        (A::Suspend, &[(Active, Suspended, VeemState::Suspended)]),
        (
            A::Activate,
            // Placed again (an event: its host changes), then restored.
            &[
                (Suspended, Suspended, VeemState::Suspended),
                (Suspended, Active, VeemState::Active),
            ],
        ),
        (A::Pause, &[(Active, Paused, VeemState::Hold)]),
        (A::Suspend, &[(Paused, Suspended, VeemState::Suspended)]),
        (A::Shutdown, &[(Suspended, Defined, VeemState::Stopped)]),
        (
            A::Activate,
            &[
                (Defined, Initial, VeemState::Hold),
                (Initial, Active, VeemState::Active),
            ],
        ),
        (A::Shutdown, &[(Active, Defined, VeemState::Stopped)]),
        (
            A::Activate,
            &[
                (Defined, Initial, VeemState::Hold),
                (Initial, Active, VeemState::Active),
            ],
        ),
        (A::Destroy, &[(Active, Destroyed, VeemState::Done)]),
    ];
    let mut seen = created.len();
    for (action, expected) in steps {
        site.act_ok(action, std::slice::from_ref(&id)).await;
        let record = site.get(&id);
        let target = action.target();
        let last = expected.last().expect("a move").2;
        assert_eq!(
            (record.state, record.veem_state),
            (target, last),
            "after {action}"
        );
        assert_eq!(
            record.host.is_some(),
            matches!(target, Active | Paused),
            "only an ACTIVE or PAUSED VEE holds a host, after {action}"
        );
        assert_eq!(
            site.instances_on("h1").await.contains(&record.id),
            matches!(target, Active | Paused),
            "the host runs it exactly when it holds the host, after {action}"
        );
        let stored = site
            .store
            .load()
            .expect("loads")
            .vees
            .into_iter()
            .find(|r| r.id == record.id)
            .expect("stored");
        assert_eq!(
            stored, record,
            "acknowledged only once stored, after {action}"
        );
        let events = site.events(&id);
        let new: Vec<_> = events[seen..]
            .iter()
            .map(|e| (e.from.expect("a change has a from"), e.to, e.veem_state))
            .collect();
        assert_eq!(new, expected, "the events of {action}");
        seen = events.len();

        // The target reached, the same action again succeeds and changes nothing.
        site.act_ok(action, std::slice::from_ref(&id)).await;
        let again = site.get(&id);
        assert_eq!(
            (again.generation, again.state),
            (record.generation, record.state),
            "a retried {action}"
        );
        assert_eq!(site.events(&id).len(), seen, "a retried {action}");
    }
    let events = site.events(&id);
    assert!(
        events.windows(2).all(|w| w[0].t_ms <= w[1].t_ms),
        "events in time order"
    );

    // Every change of state (not a change of host alone) was a STATE event, in order.
    let changes: Vec<String> = events
        .iter()
        .filter(|e| e.from != Some(e.to))
        .map(|e| e.to.as_str().to_owned())
        .collect();
    let mut published = Vec::new();
    while let Ok(routed) = stream.try_recv() {
        let event = &routed.event;
        if event.kind == EventType::State && event.vee.as_ref() == Some(&id) {
            assert_eq!(event.measurements.len(), 1);
            match &event.measurements[0].value {
                MeasurementValue::Text(state) => published.push(state.clone()),
                other => panic!("a STATE event names the state: {other:?}"),
            }
        }
    }
    assert_eq!(published, changes);
}

/// Brings a fresh VEE of sm-a's into `state`.
async fn vee_in(site: &Site, state: VmiState) -> VeeId {
    if state == Initial {
        // More CPUs than any host has: it waits for placement.
        let id = site.define_one(sized("too-big", 64, 512)).await;
        let submitted = site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
        assert!(submitted.failed.is_empty(), "{:?}", submitted.failed);
        return id;
    }
    let id = site.define_one(small("subject")).await;
    let path: &[A] = match state {
        Defined | Initial => &[],
        Active => &[A::Activate],
        Paused => &[A::Activate, A::Pause],
        Suspended => &[A::Activate, A::Suspend],
        Destroyed => &[A::Destroy],
    };
    for action in path {
        site.act_ok(*action, std::slice::from_ref(&id)).await;
    }
    assert_eq!(site.get(&id).state, state);
    id
}

#[tokio::test]
async fn every_undefined_transition_is_refused_with_wrong_state_and_changes_nothing() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    let mut checked = 0;
    for state in VmiState::ALL {
        let id = vee_in(&site, state).await;
        for action in A::ALL {
            if apply(state, action).is_ok() {
                continue;
            }
            let before = site.get(&id);
            let events_before = site.events(&id).len();
            let outcome = site.act(&sm_a(), action, std::slice::from_ref(&id)).await;
            match only_failure(&outcome) {
                CoreError::WrongState(detail) => assert!(
                    detail.contains(state.as_str()) && detail.contains(action.as_str()),
                    "{action} on {state}: {detail}"
                ),
                other => panic!("{action} on {state}: expected wrong_state, got {other:?}"),
            }
            let after = site.get(&id);
            assert_eq!(
                (after.state, after.veem_state, after.generation, after.host),
                (
                    before.state,
                    before.veem_state,
                    before.generation,
                    before.host
                ),
                "{action} on {state} changed it"
            );
            assert_eq!(site.events(&id).len(), events_before, "{action} on {state}");
            checked += 1;
        }
    }
    assert_eq!(checked, 10, "the ten undefined pairs of the table");
}

#[tokio::test]
async fn a_list_goes_in_order_and_one_failure_stops_none_of_the_others() {
    // Deployments take 200 ms: long enough to see whether they overlap.
    let site = Site::open(vec![host("h1", 8, 16384).deploy_latency(200)]).await;
    let ids = ids_of(
        &site
            .define(&sm_a(), InitModel::Besteffort, 3, small("ordered"))
            .await,
    );
    // The second cannot be activated: DESTROYED first.
    site.act_ok(A::Destroy, &ids[1..2]).await;
    let outcome = site
        .veem
        .update_state(&sm_a(), Order::List, &ids, A::Activate, ACTION_TIMEOUT)
        .await;
    assert_eq!(outcome.ok, vec![ids[0].clone(), ids[2].clone()]);
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].0, ids[1]);
    assert!(matches!(outcome.failed[0].1, CoreError::WrongState(_)));
    // The third started (was placed) only once the first was ACTIVE.
    let first_active = time_of(&site, &ids[0], Initial, Active);
    let third_placed = time_of(&site, &ids[2], Defined, Initial);
    assert!(
        third_placed >= first_active,
        "placed at {third_placed}, before the first was ACTIVE at {first_active}"
    );
}

#[tokio::test]
async fn a_set_deploys_its_vees_side_by_side() {
    let site = Site::open(vec![host("h1", 8, 16384).deploy_latency(300)]).await;
    let ids = ids_of(
        &site
            .define(&sm_a(), InitModel::Besteffort, 3, small("together"))
            .await,
    );
    let outcome = site
        .veem
        .update_state(&sm_a(), Order::Set, &ids, A::Activate, ACTION_TIMEOUT)
        .await;
    assert_eq!(outcome.ok.len(), 3, "{:?}", outcome.failed);
    // Every deployment started before any ended.
    let last_placed = ids
        .iter()
        .map(|id| time_of(&site, id, Defined, Initial))
        .max();
    let first_active = ids
        .iter()
        .map(|id| time_of(&site, id, Initial, Active))
        .min();
    assert!(
        last_placed <= first_active,
        "the last started at {last_placed:?}, after one ended at {first_active:?}"
    );
}

/// When a VEE's stored history first moved `from` → `to`.
fn time_of(site: &Site, id: &VeeId, from: VmiState, to: VmiState) -> u64 {
    site.events(id)
        .iter()
        .find(|e| e.from == Some(from) && e.to == to)
        .unwrap_or_else(|| panic!("{id} never went from {from} to {to}"))
        .t_ms
}

#[tokio::test]
async fn a_failed_deployment_leaves_the_vee_defined_with_its_cause_and_frees_the_host() {
    let site = Site::open(vec![host("h1", 4, 8192).failing("deploy", "doomed")]).await;
    let id = site.define_one(sized("doomed", 4, 1024)).await;
    let outcome = site
        .act(&sm_a(), A::Activate, std::slice::from_ref(&id))
        .await;
    match only_failure(&outcome) {
        CoreError::DeploymentFailed(cause) => assert!(cause.to_string().contains("h1"), "{cause}"),
        other => panic!("expected deployment_failed, got {other:?}"),
    }
    let record = site.get(&id);
    assert_eq!(
        (record.state, record.veem_state, record.host.clone()),
        (Defined, VeemState::Stopped, None)
    );
    let cause = record.last_error.expect("the cause is kept");
    let events = site.events(&id);
    assert_eq!(
        moves(&events),
        vec![
            (None, Defined),
            (Some(Defined), Initial),
            (Some(Initial), Defined)
        ]
    );
    assert_eq!(events[2].detail.as_deref(), Some(cause.as_str()));
    assert_eq!(site.cpus_used("h1"), 0, "the host is freed");
    assert!(site.instances_on("h1").await.is_empty());

    // The room is there for another VEE at once.
    let next = site.define_one(sized("fine", 4, 1024)).await;
    site.act_ok(A::Activate, std::slice::from_ref(&next)).await;
}

#[tokio::test]
async fn purge_removes_the_vee_and_its_history_and_its_id_is_never_given_again() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let id = site.define_one(small("gone")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    site.veem.purge(&sm_a(), &id).await.expect("purged");
    assert!(matches!(
        site.veem.get(&sm_a(), &id),
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        site.veem.events(&sm_a(), &id),
        Err(CoreError::NotFound(_))
    ));
    assert!(site.instances_on("h1").await.is_empty());
    assert_eq!(site.cpus_used("h1"), 0);
    let next = site.define_one(small("next")).await;
    assert!(next.seq() > id.seq(), "{next} after {id}");
    let stored: BTreeMap<_, _> = site
        .store
        .load()
        .expect("loads")
        .vees
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert_eq!(stored, BTreeMap::from([(next, Defined)]));
}

#[tokio::test]
async fn another_principals_vee_is_refused_and_left_alone() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let theirs = site
        .define(&sm_b(), InitModel::Besteffort, 1, small("theirs"))
        .await;
    let theirs = theirs[0].id.clone();
    let mine = site.define_one(small("mine")).await;
    let before = site.get(&theirs);
    let outcome = site
        .act(
            &sm_a(),
            A::Activate,
            &[theirs.clone(), VeeId::from_seq(99_999_999), mine.clone()],
        )
        .await;
    assert_eq!(outcome.ok, vec![mine]);
    let failed: BTreeMap<_, _> = outcome
        .failed
        .iter()
        .map(|(id, e)| (id.clone(), e.code()))
        .collect();
    assert_eq!(
        failed,
        BTreeMap::from([
            (theirs.clone(), "access_denied"),
            (VeeId::from_seq(99_999_999), "not_found")
        ])
    );
    let after = site.get(&theirs);
    assert_eq!(
        (after.state, after.generation),
        (Defined, before.generation),
        "another's VEE is untouched"
    );
    assert_eq!(site.get(&outcome.ok[0]).state, Active);
}

#[tokio::test]
async fn a_crashed_guest_boots_again_while_its_restarts_allow_then_is_failed() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let mut d = small("fragile");
    d.restart_attempts = 1;
    let id = site.define_one(d).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    let vee = site.get(&id).id;
    let sim = site.sims["h1"].clone();
    let first_boot = sim.boot_id(&vee).expect("running");

    // The health check sees the crash and boots it again from its disks.
    sim.simulate_guest_panic(&vee).await.expect("crashed");
    let again = wait_until("the restart", || {
        let r = site.get(&id);
        (r.state == Active && r.restarts == 1).then_some(r)
    })
    .await;
    assert_ne!(sim.boot_id(&vee), Some(first_boot), "a new boot");
    let note = again.last_error.expect("why it restarted");
    assert!(
        note.contains("its guest crashed on h1") && note.contains("restart 1 of 1"),
        "{note}"
    );
    let tail: Vec<_> = site.events(&id)[..]
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|e| (e.from, e.to, e.veem_state))
        .collect();
    assert_eq!(
        tail,
        vec![
            (Some(Active), Initial, VeemState::Pending),
            (Some(Initial), Initial, VeemState::Hold),
            (Some(Initial), Active, VeemState::Active),
        ],
        "down, placed again, running again"
    );

    // No restart left: FAILED, with the cause, its host freed.
    sim.simulate_guest_panic(&vee).await.expect("crashed");
    let failed = site.wait_state(&id, Destroyed).await;
    assert_eq!(
        (failed.veem_state, failed.host.clone()),
        (VeemState::Failed, None)
    );
    let cause = failed.last_error.expect("the cause");
    assert!(cause.contains("after 1 restarts"), "{cause}");
    assert_eq!(site.cpus_used("h1"), 0);
    assert!(
        site.instances_on("h1").await.is_empty(),
        "the crashed instance was ended before the VEE was recorded FAILED"
    );
}

#[tokio::test]
async fn a_guest_that_powers_itself_off_becomes_defined_not_failed() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    let id = site.define_one(small("quitter")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    let vee = site.get(&id).id;
    site.sims["h1"]
        .simulate_guest_poweroff(&vee)
        .await
        .expect("powered off");
    let stopped = site.wait_state(&id, Defined).await;
    assert_eq!(
        (stopped.veem_state, stopped.host.clone(), stopped.last_error),
        (VeemState::Stopped, None, None)
    );
    let last = site.events(&id).pop().expect("events");
    assert_eq!(
        (last.from, last.to, last.detail.as_deref()),
        (Some(Active), Defined, Some("the guest powered itself off"))
    );
    assert_eq!(site.cpus_used("h1"), 0);
    assert!(site.instances_on("h1").await.is_empty());
    // It can be activated again.
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
}

#[tokio::test]
async fn a_purge_while_the_host_is_away_is_finished_when_it_connects_again() {
    let mut site = Site::open(vec![host("h1", 4, 8192)]).await;
    let id = site.define_one(small("left-behind")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    let vee = site.get(&id).id;
    let link = site
        .veem
        .hosts()
        .get(&host_id("h1"))
        .and_then(|entry| entry.link)
        .expect("connected");
    site.veem.disconnect_host(&host_id("h1"), &link);

    // DESTROY is immediate: the purge does not wait for the host.
    site.veem.purge(&sm_a(), &id).await.expect("purged");
    assert!(matches!(
        site.veem.get(&sm_a(), &id),
        Err(CoreError::NotFound(_))
    ));
    assert_eq!(
        site.instances_on("h1").await,
        vec![vee.clone()],
        "the host, away, still runs it"
    );

    // Back, the host ends the instance and forgets the VEE before it takes anything new.
    site.connect(host("h1", 4, 8192)).await;
    assert!(site.instances_on("h1").await.is_empty());
    assert!(
        site.traces_on("h1").await.is_empty(),
        "nothing of the purged VEE is left on the host"
    );
    assert_eq!(site.cpus_used("h1"), 0);
}

#[tokio::test]
async fn a_failed_restore_leaves_the_vee_suspended_with_its_saved_memory() {
    let site = Site::open(vec![host("h1", 4, 8192).failing("restore", "saved")]).await;
    let id = site.define_one(small("saved")).await;
    site.act_ok(A::Activate, std::slice::from_ref(&id)).await;
    site.act_ok(A::Suspend, std::slice::from_ref(&id)).await;
    let suspended = site.get(&id);
    assert!(suspended.has_saved_memory);

    let outcome = site
        .act(&sm_a(), A::Activate, std::slice::from_ref(&id))
        .await;
    let error = only_failure(&outcome);
    assert_eq!(error.code(), "host_failed", "{error:?}");
    let after = site.get(&id);
    assert_eq!(
        (
            after.state,
            after.veem_state,
            after.host.clone(),
            after.has_saved_memory
        ),
        (Suspended, VeemState::Suspended, None, true),
        "nothing is lost"
    );
    assert!(after.last_error.is_some());
    assert_eq!(site.cpus_used("h1"), 0, "the host is freed");
    // SHUTDOWN still ends it cleanly, dropping the saved memory.
    site.act_ok(A::Shutdown, std::slice::from_ref(&id)).await;
    let defined = site.get(&id);
    assert_eq!((defined.state, defined.has_saved_memory), (Defined, false));
}
