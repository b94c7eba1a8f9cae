//! The SQLite store held to the conformance suite, in memory and on disk, and to durability:
//! across a clean reopen and across a writer killed with SIGKILL; and the PostgreSQL store to the
//! same suite (`postgres`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use veem_model::{EventType, VmiState};
use veem_store::conformance::{
    self, accounted, accounting_record, event, image, listener, network, plain_record,
    public_network, rich_record, subscription,
};
use veem_store::{Change, SqliteStore, Store, FIRST_NETWORK_ID, FIRST_VEE_SEQ};

mod blobs;
#[cfg(unix)]
mod copy;
mod crash;
mod lease;
mod postgres;

#[test]
fn in_memory_sqlite_passes_the_conformance_suite() {
    conformance::run_all(&|| {
        Box::new(SqliteStore::open_in_memory().expect("open an in-memory store"))
    });
}

#[test]
fn file_backed_sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let made = AtomicUsize::new(0);
    conformance::run_all(&|| {
        let n = made.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("store-{n}.db"));
        Box::new(SqliteStore::open(&path).expect("open a file store"))
    });
    assert_eq!(made.load(Ordering::Relaxed), conformance::PROPERTIES.len());
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("veem.db");
    (dir, path)
}

#[test]
fn everything_committed_is_there_after_reopening() {
    let (_dir, path) = temp_db();
    let rich = rich_record(FIRST_VEE_SEQ);
    let purged = plain_record(FIRST_VEE_SEQ + 1);
    let plain = plain_record(FIRST_VEE_SEQ + 2);
    let (updated, update) = conformance::update(&plain, |r| r.state = VmiState::Active);
    let events = vec![
        event(&rich.id, 1, VmiState::Initial),
        event(&rich.id, 2, VmiState::Active),
    ];
    let lan = public_network(FIRST_NETWORK_ID, "alice", "lan");
    let deleted_lan = network(FIRST_NETWORK_ID + 1, "bob", "lan");
    let kept_lan = network(FIRST_NETWORK_ID + 2, "bob", "kept");
    let accounting = vec![
        accounted("bob", accounting_record(&rich.id, 1_000)),
        accounted("alice", accounting_record(&rich.id, 2_000)),
    ];
    let watching = subscription("sub-1", "alice", &[EventType::Probe]);
    {
        let store = SqliteStore::open(&path).expect("open");
        store
            .commit(&[
                Change::InsertVee(rich.clone()),
                Change::InsertVee(purged.clone()),
                Change::InsertVee(plain.clone()),
                Change::AppendEvent(events[0].clone()),
                Change::PutImage(image("alice", "tiny", 10)),
                Change::InsertNetwork(lan.clone()),
                Change::InsertNetwork(deleted_lan.clone()),
                Change::PutListener(listener("alice", &rich.id, 1_000)),
                Change::PutListener(listener("bob", &rich.id, 1_000)),
                Change::PutListener(listener("alice", &purged.id, 1_000)),
                Change::AppendAccounting(vec![
                    accounting[1].clone(),
                    accounted("alice", accounting_record(&purged.id, 1_000)),
                ]),
                Change::PutSubscription(watching.clone()),
                Change::PutSubscription(subscription("sub-2", "bob", &[])),
            ])
            .expect("first batch");
        store
            .commit(&[
                update,
                Change::PurgeVee(purged.id.clone()),
                Change::AppendEvent(events[1].clone()),
                Change::InsertNetwork(kept_lan.clone()),
                Change::DeleteNetwork { id: deleted_lan.id },
                Change::PutListener(listener("alice", &rich.id, 60_000)),
                Change::RemoveListener {
                    owner: veem_model::Principal::new("bob").expect("a valid principal"),
                    vee: rich.id.clone(),
                },
                Change::AppendAccounting(vec![accounting[0].clone()]),
                Change::RemoveSubscription {
                    id: "sub-2".to_owned(),
                },
            ])
            .expect("second batch");
    }

    let store = SqliteStore::open(&path).expect("reopen");
    let snapshot = store.load().expect("load");
    assert_eq!(snapshot.vees, vec![rich.clone(), updated]);
    assert_eq!(snapshot.images, vec![image("alice", "tiny", 10)]);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 3);
    assert_eq!(snapshot.networks, vec![lan, kept_lan]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 3);
    assert_eq!(store.events(&rich.id).expect("events"), events);
    assert_eq!(
        snapshot.listeners,
        vec![listener("alice", &rich.id, 60_000)]
    );
    assert_eq!(snapshot.subscriptions, vec![watching]);
    assert_eq!(
        store.accounting(&rich.id, 0, u64::MAX).expect("accounting"),
        accounting
    );
    assert_eq!(
        store
            .accounting(&purged.id, 0, u64::MAX)
            .expect("accounting"),
        vec![]
    );
}

#[test]
fn the_network_counter_never_goes_down_across_reopening() {
    let (_dir, path) = temp_db();
    let newest = network(FIRST_NETWORK_ID + 6, "alice", "newest");
    {
        let store = SqliteStore::open(&path).expect("open");
        store
            .commit(&[Change::InsertNetwork(newest.clone())])
            .expect("insert");
        // Deleting the only, newest network leaves no row that remembers its id.
        store
            .commit(&[Change::DeleteNetwork { id: newest.id }])
            .expect("delete");
    }

    let store = SqliteStore::open(&path).expect("reopen");
    let snapshot = store.load().expect("load");
    assert_eq!(snapshot.networks, vec![]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 7);
    let err = store
        .commit(&[Change::InsertNetwork(newest.clone())])
        .expect_err("a deleted id stays used after reopening");
    assert!(
        matches!(err, veem_store::StoreError::NetworkIdReused(id) if id == newest.id),
        "{err:?}"
    );
}

/// Also the measurement quoted in the crate's report: the time is printed, not asserted.
#[test]
fn ten_thousand_inserts_in_batches_of_one_hundred() {
    const BATCHES: u64 = 100;
    const PER_BATCH: u64 = 100;
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    let started = Instant::now();
    for batch in 0..BATCHES {
        let changes: Vec<Change> = (0..PER_BATCH)
            .map(|i| Change::InsertVee(rich_record(FIRST_VEE_SEQ + batch * PER_BATCH + i)))
            .collect();
        store.commit(&changes).expect("commit a batch");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "committed {} inserts in {BATCHES} batches in {elapsed:?}",
        BATCHES * PER_BATCH
    );

    let snapshot = store.load().expect("load");
    assert_eq!(snapshot.vees.len() as u64, BATCHES * PER_BATCH);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + BATCHES * PER_BATCH);
    assert!(snapshot
        .vees
        .iter()
        .zip(FIRST_VEE_SEQ..)
        .all(|(vee, seq)| vee.id.seq() == seq && *vee == rich_record(seq)));
}

/// The accounting writer's shape: one change of many records, on a durable file store. The time
/// is printed, not asserted (`cargo bench -p veem-store` measures it properly).
#[test]
fn ten_thousand_accounting_records_in_one_change() {
    const VEES: u64 = 100;
    const RECORDS: u64 = 10_000;
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    let vees: Vec<_> = (0..VEES).map(|i| plain_record(FIRST_VEE_SEQ + i)).collect();
    store
        .commit(
            &vees
                .iter()
                .map(|vee| Change::InsertVee(vee.clone()))
                .collect::<Vec<_>>(),
        )
        .expect("insert the VEEs");
    // As the ticks come: every VEE's record of one interval, then the next interval.
    let records: Vec<_> = (0..RECORDS)
        .map(|i| {
            let vee = &vees[(i % VEES) as usize].id;
            accounted("alice", accounting_record(vee, 1_000 * (i / VEES)))
        })
        .collect();
    let change = [Change::AppendAccounting(records.clone())];

    let started = Instant::now();
    store.commit(&change).expect("append");
    let elapsed = started.elapsed();
    eprintln!("appended {RECORDS} accounting records in one change in {elapsed:?}");

    let per_vee = RECORDS / VEES;
    for (i, vee) in (0..).zip(&vees) {
        let stored = store.accounting(&vee.id, 0, u64::MAX).expect("accounting");
        let expected: Vec<_> = records
            .iter()
            .skip(i)
            .step_by(VEES as usize)
            .cloned()
            .collect();
        assert_eq!(stored.len() as u64, per_vee);
        assert_eq!(stored, expected);
    }
}

#[test]
fn one_batch_of_a_thousand_changes_is_all_or_nothing() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    let mut changes: Vec<Change> = (0..1_000)
        .map(|i| Change::InsertVee(plain_record(FIRST_VEE_SEQ + i)))
        .collect();
    // The last change reuses the first id: the 999 before it must go too.
    changes.push(Change::InsertVee(plain_record(FIRST_VEE_SEQ)));
    store.commit(&changes).expect_err("the last change fails");
    assert_eq!(store.load().expect("load").vees.len(), 0);

    changes.pop();
    store.commit(&changes).expect("commit 1000 changes");
    let snapshot = store.load().expect("load");
    assert_eq!(snapshot.vees.len(), 1_000);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 1_000);
}

#[test]
fn two_stores_on_one_file_see_each_others_commits() {
    let (_dir, path) = temp_db();
    let writer = SqliteStore::open(&path).expect("open writer");
    let reader = SqliteStore::open(&path).expect("open reader");
    let record = plain_record(FIRST_VEE_SEQ);
    writer
        .commit(&[Change::InsertVee(record.clone())])
        .expect("commit");
    assert_eq!(reader.load().expect("load").vees, vec![record]);
    // The reader's insert must honour the counter the writer advanced.
    let err = reader
        .commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ))])
        .expect_err("id taken by the other store");
    assert!(
        matches!(err, veem_store::StoreError::IdReused(_)),
        "{err:?}"
    );
}

#[test]
fn a_store_is_shared_between_threads() {
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(SqliteStore::open_in_memory().expect("open"));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let name = format!("image-{thread}-{i}");
                    store
                        .commit(&[Change::PutImage(image("alice", &name, i))])
                        .expect("commit from a thread");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    assert_eq!(store.load().expect("load").images.len(), 100);
}
