//! `veem store copy`'s core, from SQLite (a `veem.db` file, read through a snapshot) into
//! PostgreSQL: the same books come back, the source is not written, and a PostgreSQL database
//! that holds anything is refused.

use veem_store::conformance::{image, plain_record, sample_books};
use veem_store::copy::{copy_store, open_sqlite_snapshot, CopyError};
use veem_store::{Change, PgStore, SqliteStore, Store};

use crate::postgres::{fresh_database, server};

#[test]
fn sqlite_books_copy_into_postgresql_whole() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("veem.db");
    {
        let source = SqliteStore::open(&path).expect("open the source");
        sample_books(&source);
    }
    let before = std::fs::read(&path).expect("read the source");
    let from = open_sqlite_snapshot(&path, &dir.path().join("snapshot.db")).expect("snapshot");
    let url = fresh_database(server);
    let to = PgStore::open(&url).expect("open the destination");
    let report = copy_store(&from, &to, &mut |_| {}).expect("copied");
    assert_eq!(
        (report.vees, report.events, report.accounting_records),
        (3, 2, 12)
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "source untouched"
    );

    // Read back through a store of its own, as a front-end would.
    let copied = PgStore::open(&url).expect("reopen");
    let snapshot = from.load().expect("load");
    assert_eq!(copied.load().expect("load"), snapshot);
    assert_eq!(
        copied.accounting_outbox().expect("outbox"),
        from.accounting_outbox().expect("outbox")
    );
    for vee in &snapshot.vees {
        assert_eq!(
            copied.events(&vee.id).unwrap(),
            from.events(&vee.id).unwrap()
        );
        assert_eq!(
            copied.accounting(&vee.id, 0, u64::MAX).unwrap(),
            from.accounting(&vee.id, 0, u64::MAX).unwrap()
        );
    }
    // The counters came along: the next VEE gets the id after the purged one.
    copied
        .commit(&[Change::InsertVee(plain_record(snapshot.next_vee_seq))])
        .expect("the next id");
    let err = copied
        .commit(&[Change::InsertVee(plain_record(snapshot.next_vee_seq - 1))])
        .expect_err("the purged VEE's id stays handed out");
    assert!(
        matches!(err, veem_store::StoreError::IdReused(_)),
        "{err:?}"
    );

    // Into the same database again: refused, nothing written.
    let again = copy_store(&from, &copied, &mut |_| {}).expect_err("not empty");
    assert!(matches!(again, CopyError::NotEmpty(_)), "{again:?}");
    let other = PgStore::open(&fresh_database(server)).expect("open");
    other
        .commit(&[Change::PutImage(image("sm-b", "x", 1))])
        .expect("commit");
    let err = copy_store(&from, &other, &mut |_| {}).expect_err("not empty");
    assert!(
        err.to_string().contains("1 images"),
        "says what it holds: {err}"
    );
}
