//! Migration between two hosts of one site, cold and live, of an ACTIVE, PAUSED or SUSPENDED
//! VEE (sim hosts that share no storage: each keeps its VEEs' directories).

use veem_api::{MigrateRequest, VeeView};
use veem_model::{ControlAction as A, VmiState};

use crate::federation::{stdout_of, veem};
use crate::harness::*;

/// Two sim hosts that share no storage, whose migrations take 40 ms.
async fn two_hosts() -> Server {
    let migrate = "latency_ms = { migrate = 40 }";
    Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, migrate), ("h2", 8, 16384, migrate)],
        own_vees_dirs: vec!["h1", "h2"],
        ..Setup::default()
    })
    .await
}

fn other(host: &str) -> &'static str {
    if host == "h1" {
        "h2"
    } else {
        "h1"
    }
}

/// Moves `id` to `host` (placement chooses when `None`), `live` or cold, and answers it.
async fn migrate_to(s: &Server, id: &str, host: Option<&str>, live: bool) -> VeeView {
    s.ops
        .migrate_vee(
            id,
            &MigrateRequest {
                host: host.map(str::to_owned),
                live: Some(live),
            },
        )
        .await
        .expect("migrated")
}

/// The states the VEE went through, and its notes, in order.
async fn history(s: &Server, id: &str) -> Vec<(VmiState, String)> {
    s.ops
        .vee_events(id)
        .await
        .expect("events")
        .events
        .into_iter()
        .map(|e| (e.to, e.detail.unwrap_or_default()))
        .collect()
}

fn host_of(v: &VeeView) -> String {
    v.host.as_ref().expect("placed").to_string()
}

#[tokio::test]
async fn a_cold_migration_between_hosts_pauses_an_active_vee_and_resumes_it_there() {
    let s = two_hosts().await;
    let id = init_one(&s.a, small("cold")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let from = host_of(&get(&s.a, &id).await);
    let seen = history(&s, &id).await.len();
    // With the CLI: `--cold`.
    let out = veem(
        &s,
        TOKEN_OPS,
        &["vee", "migrate", &id, "--host", other(&from), "--cold"],
    );
    let table = stdout_of(&out);
    assert!(
        table.contains(&id) && table.contains(other(&from)),
        "{table}"
    );
    let moved = get(&s.a, &id).await;
    assert_eq!(moved.state, VmiState::Active);
    assert_eq!(host_of(&moved), other(&from));
    // Paused for the move, then running again there, the move's note in between.
    let events = history(&s, &id).await.split_off(seen);
    let states: Vec<VmiState> = events.iter().map(|(state, _)| *state).collect();
    assert_eq!(
        states,
        vec![VmiState::Paused, VmiState::Active],
        "{events:?}"
    );
    let expected = format!(
        "migrated from {from} to {} in 40 ms (downtime 0 ms)",
        other(&from)
    );
    assert_eq!(events[1].1, expected, "{events:?}");
    ctl_ok(&s.a, A::Pause, &[&id]).await;
}

#[tokio::test]
async fn a_paused_vee_moves_between_hosts_live_or_cold_and_stays_paused() {
    let s = two_hosts().await;
    let id = init_one(&s.a, small("resting")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    ctl_ok(&s.a, A::Pause, &[&id]).await;
    for live in [true, false] {
        let from = host_of(&get(&s.a, &id).await);
        let seen = history(&s, &id).await.len();
        let moved = migrate_to(&s, &id, Some(other(&from)), live).await;
        assert_eq!(
            (moved.state, host_of(&moved).as_str()),
            (VmiState::Paused, other(&from)),
            "live: {live}"
        );
        // It ran at no moment: its only event is the move, PAUSED.
        let events = history(&s, &id).await.split_off(seen);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, VmiState::Paused);
        assert!(
            events[0]
                .1
                .starts_with(&format!("migrated from {from} to {}", other(&from))),
            "{events:?}"
        );
    }
    ctl_ok(&s.a, A::Activate, &[&id]).await;
}

#[tokio::test]
async fn a_suspended_vee_moves_between_hosts_and_is_suspended_again() {
    let s = two_hosts().await;
    let id = init_one(&s.a, small("sleeper")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    ctl_ok(&s.a, A::Suspend, &[&id]).await;
    let seen = history(&s, &id).await.len();
    // Placement chooses: another host than the one it is restored on.
    let moved = migrate_to(&s, &id, None, false).await;
    assert_eq!((moved.state, moved.host), (VmiState::Suspended, None));
    let events = history(&s, &id).await.split_off(seen);
    let states: Vec<VmiState> = events.iter().map(|(state, _)| *state).collect();
    // Restored, paused, moved paused, suspended again: never running at its destination.
    assert_eq!(
        states[states.len() - 2..],
        [VmiState::Paused, VmiState::Suspended],
        "{events:?}"
    );
    let note = &events[events.len() - 2].1;
    assert!(
        note == "migrated from h1 to h2 in 40 ms (downtime 0 ms)"
            || note == "migrated from h2 to h1 in 40 ms (downtime 0 ms)",
        "{events:?}"
    );
    // To a host named: restored there or elsewhere, it ends SUSPENDED all the same.
    for host in ["h1", "h2"] {
        let moved = migrate_to(&s, &id, Some(host), false).await;
        assert_eq!((moved.state, moved.host), (VmiState::Suspended, None));
    }
    // It wakes where it went, from its saved memory.
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert_eq!(get(&s.a, &id).await.state, VmiState::Active);
}

#[tokio::test]
async fn only_a_vee_a_host_holds_moves_between_hosts() {
    let s = two_hosts().await;
    let defined = init_one(&s.a, small("defined")).await;
    let mut huge = small("huge");
    huge.cpu = 64;
    let waiting = init_one(&s.a, huge).await;
    s.a.submit(std::slice::from_ref(&waiting))
        .await
        .expect("submit");
    assert_eq!(get(&s.a, &waiting).await.state, VmiState::Initial);
    for (id, state) in [(&defined, VmiState::Defined), (&waiting, VmiState::Initial)] {
        for live in [true, false] {
            let err = s
                .ops
                .migrate_vee(
                    id,
                    &MigrateRequest {
                        host: Some("h2".into()),
                        live: Some(live),
                    },
                )
                .await
                .expect_err("no host holds it");
            assert_eq!(
                (err.status(), err.code()),
                (Some(409), Some("wrong_state")),
                "{state}"
            );
            let v = get(&s.a, id).await;
            assert_eq!((v.state, v.host), (state, None));
        }
    }
    // Cold or live, an admin's only.
    let running = init_one(&s.a, small("running")).await;
    ctl_ok(&s.a, A::Activate, &[&running]).await;
    let err =
        s.a.migrate_vee(
            &running,
            &MigrateRequest {
                host: None,
                live: Some(false),
            },
        )
        .await
        .expect_err("admins only");
    assert_eq!(err.status(), Some(403));
}
