//! Nothing acknowledged is lost: kill -9 of the server, then a restart.

use veem_model::{ControlAction as A, InitModel, VeemState, VmiState};

use crate::harness::*;

#[tokio::test]
async fn kill_9_and_restart_keeps_every_acknowledged_vee_and_state() {
    let mut s = Server::start().await;
    s.a.push_image_bytes("img", b"image".to_vec())
        .await
        .expect("upload");
    let defined = init_one(&s.a, small("defined")).await;
    let active = init_one(&s.a, small("active")).await;
    let paused = init_one(&s.a, small("paused")).await;
    let suspended = init_one(&s.a, small("suspended")).await;
    let destroyed = init_one(&s.b, small("destroyed")).await;
    let reserved = init(&s.a, InitModel::Twophase, 1, small("reserved"))
        .await
        .remove(0);
    let mut huge = small("pending");
    huge.cpu = 64;
    let pending = init_one(&s.a, huge).await;
    s.a.submit(std::slice::from_ref(&pending))
        .await
        .expect("submit");
    ctl_ok(&s.a, A::Activate, &[&active, &paused, &suspended]).await;
    ctl_ok(&s.a, A::Pause, &[&paused]).await;
    ctl_ok(&s.a, A::Suspend, &[&suspended]).await;
    ctl_ok(&s.b, A::Destroy, &[&destroyed]).await;

    let mut before = Vec::new();
    for (client, id) in [
        (&s.a, &defined),
        (&s.a, &active),
        (&s.a, &paused),
        (&s.a, &suspended),
        (&s.b, &destroyed),
        (&s.a, &reserved),
        (&s.a, &pending),
    ] {
        before.push(get(client, id).await);
    }
    let hosts_before = s.ops.list_hosts().await.expect("hosts");

    s.restart().await;

    for v in &before {
        let client = if v.owner == "sm-b" { &s.b } else { &s.a };
        let after = get(client, &v.id).await;
        assert_eq!(
            (
                after.state,
                after.veem_state,
                &after.host,
                &after.descriptor
            ),
            (v.state, v.veem_state, &v.host, &v.descriptor),
            "{}",
            v.id
        );
    }
    let pending_after = get(&s.a, &pending).await;
    assert_eq!(pending_after.veem_state, VeemState::Pending);
    assert!(pending_after.pending_reason.is_some());
    // The hosts' books are rebuilt: the same VEEs hold the same room (the reservation included).
    let hosts_after = s.ops.list_hosts().await.expect("hosts");
    for (b, a) in hosts_before.hosts.iter().zip(&hosts_after.hosts) {
        assert_eq!((&b.id, &b.used, &b.vees), (&a.id, &a.used, &a.vees));
    }
    // The re-adopted VEEs still obey control actions.
    ctl_ok(&s.a, A::Activate, &[&paused, &suspended]).await;
    ctl_ok(&s.a, A::Pause, &[&active]).await;
    assert_eq!(state_of(&s.a, &suspended).await, VmiState::Active);
    // A new id is newer than any before the crash.
    let next = init_one(&s.a, small("after")).await;
    assert!(before.iter().all(|v| next > v.id));
}

#[tokio::test]
async fn an_acknowledged_burst_survives_kill_9() {
    let mut s = Server::start().await;
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        acknowledged.extend(init(&s.a, InitModel::Besteffort, 5, small("burst")).await);
    }
    let r = s.a.submit(&acknowledged[..20]).await.expect("submit");
    assert_eq!(r.submitted.len(), 20);
    s.kill9();
    s.restart().await;
    let all = s.a.list_all_vees(&Default::default()).await.expect("list");
    for id in &acknowledged {
        assert!(
            all.iter().any(|v| &v.id == id),
            "{id} was acknowledged and must survive"
        );
    }
    // Submitted ones are on their way to ACTIVE or there; none fell back silently.
    for id in &acknowledged[..20] {
        let v = get(&s.a, id).await;
        assert!(
            matches!(v.state, VmiState::Initial | VmiState::Active),
            "{id} is {}",
            v.state
        );
    }
    for id in &acknowledged[..20] {
        wait_state(&s.a, id, VmiState::Active).await;
    }
}

#[tokio::test]
async fn a_restore_cut_short_by_kill_9_leaves_the_vee_suspended_and_restorable() {
    let mut s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "latency_ms = { restore = 1500 }")],
        ..Setup::default()
    })
    .await;
    let id = init_one(&s.a, small("sleeper")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    ctl_ok(&s.a, A::Suspend, &[&id]).await;
    let r =
        s.a.update_state(&veem_api::UpdateStateRequest {
            order: veem_api::Order::List,
            ids: vec![id.clone()],
            action: A::Activate,
            timeout_ms: Some(200),
        })
        .await
        .expect("answers");
    assert_eq!(
        r.failed[0].error, "timeout",
        "the restore goes on: {:?}",
        r.failed
    );
    assert_eq!(
        get(&s.a, &id).await.phase,
        Some(veem_model::Phase::Restoring)
    );
    s.restart().await;
    let v = get(&s.a, &id).await;
    assert_eq!(
        (v.state, v.host, v.phase),
        (VmiState::Suspended, None, None),
        "nothing lost, nothing half-done"
    );
    let hosts = s.ops.list_hosts().await.expect("hosts");
    assert_eq!(
        hosts.hosts[0].used.cpus, 0,
        "the interrupted restore holds no room"
    );
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    assert_eq!(state_of(&s.a, &id).await, VmiState::Active);
}
