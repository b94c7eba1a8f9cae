//! The leader lease on PostgreSQL: one leader at a time, an expired lease taken with the next
//! generation, and every commit fenced by the lease it carries.

use std::time::Duration;

use veem_store::conformance::plain_record;
use veem_store::{Campaign, Change, Member, PgStore, Store, StoreError, FIRST_VEE_SEQ};

use crate::postgres::{fresh_database, server};

fn member(name: &str, incarnation: u64) -> Member {
    Member {
        name: name.to_owned(),
        url: format!("http://{name}.example:7070"),
        incarnation,
    }
}

fn leading(campaign: &Campaign) -> Option<(u64, bool)> {
    match campaign {
        Campaign::Leading { fence, newly } => Some((fence.generation, *newly)),
        Campaign::Following { .. } => None,
    }
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn one_front_end_leads_and_the_others_follow_it() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let (a, b) = (
        PgStore::open(&url).expect("a"),
        PgStore::open(&url).expect("b"),
    );
    let (fe1, fe2) = (member("fe1", 1), member("fe2", 2));

    assert_eq!(
        leading(&a.campaign(&fe1, LONG).expect("a")),
        Some((1, true))
    );
    match b.campaign(&fe2, LONG).expect("b") {
        Campaign::Following {
            leader: Some(leader),
        } => {
            assert_eq!((leader.name.as_str(), leader.generation), ("fe1", 1));
            assert_eq!(leader.url, fe1.url);
        }
        other => panic!("fe2 should follow fe1: {other:?}"),
    }
    // Renewing keeps the generation.
    assert_eq!(
        leading(&a.campaign(&fe1, LONG).expect("a")),
        Some((1, false))
    );
    // A restarted fe1 (another incarnation) does not take its former self's live lease.
    let again = PgStore::open(&url).expect("fe1 restarted");
    assert_eq!(
        leading(&again.campaign(&member("fe1", 3), LONG).expect("c")),
        None
    );

    let view = b.lease_view(LONG).expect("view");
    assert_eq!(view.leader.as_ref().map(|l| l.name.as_str()), Some("fe1"));
    let roles: Vec<_> = view
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.leading))
        .collect();
    assert_eq!(roles, [("fe1", true), ("fe2", false)]);
}

#[test]
fn an_expired_lease_is_taken_with_the_next_generation_and_fences_the_old_leader() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let (old, new) = (
        PgStore::open(&url).expect("old"),
        PgStore::open(&url).expect("new"),
    );
    let short = Duration::from_millis(300);
    assert_eq!(
        leading(&old.campaign(&member("fe1", 1), short).expect("old")),
        Some((1, true))
    );
    let first = plain_record(FIRST_VEE_SEQ);
    old.commit(&[Change::InsertVee(first.clone())])
        .expect("the leader commits");

    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        leading(&new.campaign(&member("fe2", 2), LONG).expect("new")),
        Some((2, true))
    );

    // The old leader, unaware, commits: refused whole, and it learns it is fenced out.
    assert!(!old.fenced_out());
    let err = old
        .commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ + 1))])
        .expect_err("a stale generation's commit");
    assert!(
        matches!(err, StoreError::Fenced { generation: 1 }),
        "{err:?}"
    );
    assert!(old.fenced_out());
    // It cannot take the lease back while the new one lives.
    assert_eq!(
        leading(&old.campaign(&member("fe1", 1), LONG).expect("old")),
        None
    );

    new.commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ + 2))])
        .expect("the new leader commits");
    let ids: Vec<u64> = new
        .load()
        .expect("load")
        .vees
        .iter()
        .map(|v| v.id.seq())
        .collect();
    assert_eq!(ids, [FIRST_VEE_SEQ, FIRST_VEE_SEQ + 2]);
}

#[test]
fn a_follower_never_commits_and_a_resigned_lease_is_taken_at_once() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let (a, b) = (
        PgStore::open(&url).expect("a"),
        PgStore::open(&url).expect("b"),
    );
    let (fe1, fe2) = (member("fe1", 1), member("fe2", 2));
    assert!(leading(&a.campaign(&fe1, LONG).expect("a")).is_some());
    assert_eq!(leading(&b.campaign(&fe2, LONG).expect("b")), None);
    let err = b
        .commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ))])
        .expect_err("a follower's commit");
    assert!(
        matches!(err, StoreError::Fenced { generation: 0 }),
        "{err:?}"
    );

    a.resign(&fe1).expect("resign");
    assert_eq!(
        leading(&b.campaign(&fe2, LONG).expect("b")),
        Some((2, true))
    );
    b.commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ))])
        .expect("the new leader commits");
    let view = b.lease_view(LONG).expect("view");
    let names: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["fe2"], "a resigned member leaves the list");
}
