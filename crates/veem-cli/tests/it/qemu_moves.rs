//! A real guest moved between two hosts of one site that share no storage while it is not
//! running: cold (an ACTIVE guest paused for the move) and PAUSED (it stays paused).

use veem_model::{ControlAction as A, VmiState};

use crate::harness::*;
use crate::qemu_guests::{
    assert_every_write_kept_without_reboot, last_write, move_between_own_hosts, wait_write,
    writing_guest_on_hosts_of_their_own,
};

/// A guest writing to its disk moves cold from its host to the other (which sees none of
/// its disks): paused for the move, running again there, its writes kept; then, PAUSED, back
/// live: still paused there until it is activated. It never reboots.
#[tokio::test]
async fn a_writing_guest_moves_cold_and_paused_between_hosts_without_shared_storage() {
    let Some((s, id, from, to)) = writing_guest_on_hosts_of_their_own("mover").await else {
        return;
    };
    let console_on = |host: &str| own_vee_dir(&s, host, &id).join("console.log");
    let before = wait_write(&console_on(&from), 3).await;
    let seen = s.a.vee_events(&id).await.expect("events").events.len();
    let took = move_between_own_hosts(&s, &id, &from, to, false, VmiState::Active).await;
    // Paused for the move, running again at its destination once it arrived.
    let events = s.a.vee_events(&id).await.expect("events").events;
    let moves: Vec<(VmiState, &str)> = events[seen..]
        .iter()
        .map(|e| (e.to, e.detail.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(moves.len(), 2, "{moves:?}");
    assert_eq!(moves[0].0, VmiState::Paused, "{moves:?}");
    assert_eq!(moves[1].0, VmiState::Active, "{moves:?}");
    assert!(
        moves[1]
            .1
            .starts_with(&format!("migrated from {from} to {to} in ")),
        "{moves:?}"
    );
    eprintln!(
        "cold migration with its disks copied: {}; the request took {took:?}",
        moves[1].1
    );
    let after_cold = wait_write(&console_on(to), before + 5).await;

    // PAUSED, it moves back (live: a paused guest has nothing to keep running) and stays so.
    ctl_ok(&s.a, A::Pause, &[&id]).await;
    let written =
        |host: &str| last_write(&std::fs::read_to_string(console_on(host)).unwrap_or_default());
    let paused_at = written(to).expect("it wrote before its pause");
    move_between_own_hosts(&s, &id, to, &from, true, VmiState::Paused).await;
    // It writes every 50 ms when it runs: in a second, nothing.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let since = written(&from);
    assert!(
        since.is_none_or(|n| n <= paused_at),
        "it ran at no moment while PAUSED: write {since:?} after {paused_at}"
    );
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let after = wait_write(&console_on(&from), after_cold + 5).await;

    let console = std::fs::read_to_string(console_on(&from)).unwrap_or_default();
    ctl_ok(&s.a, A::Shutdown, &[&id]).await;
    let disk = own_vee_dir(&s, &from, &id).join("disks").join("vda.qcow2");
    assert_every_write_kept_without_reboot(&disk, after, &console);
}
