//! The SQLite store held to the conformance suite, in memory and on disk, and to durability:
//! across a clean reopen and across a writer killed with SIGKILL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use veem_model::VmiState;
use veem_store::conformance::{
    self, event, image, network, plain_record, public_network, rich_record,
};
use veem_store::{Change, SqliteStore, Store, FIRST_NETWORK_ID, FIRST_VEE_SEQ};

#[cfg(unix)]
mod crash;

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
            ])
            .expect("first batch");
        store
            .commit(&[
                update,
                Change::PurgeVee(purged.id.clone()),
                Change::AppendEvent(events[1].clone()),
                Change::InsertNetwork(kept_lan.clone()),
                Change::DeleteNetwork { id: deleted_lan.id },
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
