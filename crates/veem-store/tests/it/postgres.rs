//! The PostgreSQL store held to the conformance suite and to what several front-ends on one
//! database need. One throwaway server per test process (`scripts/pg`, which stops it once this
//! process is gone); each store gets a database of its own. Without PostgreSQL the tests skip
//! with a message, unless `CI` is set: then they fail.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use veem_store::conformance::{self, image, plain_record};
pub(crate) use veem_store::test_postgres::{fresh_database, psql, server, PSQL};
use veem_store::{Change, PgStore, Store, StoreError, FIRST_VEE_SEQ, PG_SCHEMA_VERSION};

#[test]
fn postgresql_passes_the_conformance_suite() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    conformance::run_all(&|| {
        Box::new(PgStore::open(&fresh_database(server)).expect("open a PostgreSQL store"))
    });
    eprintln!(
        "{} conformance properties on PostgreSQL in {:?}",
        conformance::PROPERTIES.len(),
        started.elapsed()
    );
}

#[test]
fn two_front_ends_on_one_database_share_counters_and_commits() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let first = PgStore::open(&url).expect("open the first store");
    let second = PgStore::open(&url).expect("open the second store");
    assert_eq!(first.backend(), "postgresql");
    let record = plain_record(FIRST_VEE_SEQ);
    first
        .commit(&[Change::InsertVee(record.clone())])
        .expect("commit");
    assert_eq!(second.load().expect("load").vees, vec![record]);
    let err = second
        .commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ))])
        .expect_err("the id was taken through the other store");
    assert!(matches!(err, StoreError::IdReused(_)), "{err:?}");
}

/// Many threads of two stores insert VEEs at once, each taking the id after the counter it
/// loaded: every id is handed out once, and every insert that was refused left nothing.
#[test]
fn racing_inserts_through_two_stores_never_hand_out_an_id_twice() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(PgStore::open(&url).expect("open")),
        Arc::new(PgStore::open(&url).expect("open")),
    ];
    let threads: Vec<_> = (0..6)
        .map(|thread| {
            let store = Arc::clone(&stores[thread % 2]);
            std::thread::spawn(move || {
                let mut won = 0;
                for _ in 0..20 {
                    let next = store.load().expect("load").next_vee_seq;
                    match store.commit(&[Change::InsertVee(plain_record(next))]) {
                        Ok(()) => won += 1,
                        Err(StoreError::IdReused(_)) => {}
                        Err(err) => panic!("insert: {err:?}"),
                    }
                }
                won
            })
        })
        .collect();
    let won: usize = threads
        .into_iter()
        .map(|thread| thread.join().expect("thread"))
        .sum();
    let snapshot = stores[0].load().expect("load");
    assert_eq!(snapshot.vees.len(), won);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + won as u64);
    assert!(won >= 20, "only {won} inserts succeeded");
}

#[test]
fn a_pg_store_is_shared_between_threads() {
    let Some(server) = server() else { return };
    let store: Arc<dyn Store> = Arc::new(PgStore::open(&fresh_database(server)).expect("open"));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let store = Arc::clone(&store);
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

/// The store is called from inside a tokio runtime too (the server's async tasks), and is
/// dropped there: neither may panic.
#[test]
fn a_pg_store_works_and_drops_inside_a_tokio_runtime() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let store = PgStore::open(&url).expect("open inside a runtime");
        store
            .commit(&[Change::PutImage(image("alice", "tiny", 1))])
            .expect("commit inside a runtime");
        assert_eq!(store.load().expect("load").images.len(), 1);
        drop(store);
    });
}

#[test]
fn reopening_keeps_the_schema_and_a_newer_schema_is_refused() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let record = plain_record(FIRST_VEE_SEQ);
    PgStore::open(&url)
        .expect("create")
        .commit(&[Change::InsertVee(record.clone())])
        .expect("commit");
    let store = PgStore::open(&url).expect("reopen");
    assert_eq!(store.load().expect("load").vees, vec![record]);
    drop(store);

    let newer = PG_SCHEMA_VERSION + 1;
    psql(
        &url,
        &format!("UPDATE schema_version SET version = {newer}"),
    );
    let err = PgStore::open(&url).expect_err("a newer schema must be refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, known } if found == newer && known == PG_SCHEMA_VERSION),
        "{err:?}"
    );
}

#[test]
fn a_failing_migration_step_leaves_the_database_as_it_was() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    // A table the first step creates already exists, so that step fails.
    psql(&url, "CREATE TABLE vees (x INTEGER)");
    let err = PgStore::open(&url).expect_err("the clash must fail migration");
    assert!(
        matches!(err, StoreError::Migration { version: 1, .. }),
        "{err:?}"
    );
    // Neither the step's other tables nor a schema version were left behind.
    psql(
        &url,
        "DO $$ BEGIN
           IF to_regclass('meta') IS NOT NULL OR to_regclass('schema_version') IS NOT NULL THEN
             RAISE EXCEPTION 'the failed migration left tables';
           END IF;
         END $$",
    );
}

/// The measurement quoted in the report: the time is printed, not asserted.
#[test]
fn ten_thousand_inserts_in_batches_of_one_hundred_on_postgresql() {
    const BATCHES: u64 = 100;
    const PER_BATCH: u64 = 100;
    let Some(server) = server() else { return };
    let store = PgStore::open(&fresh_database(server)).expect("open");
    let started = Instant::now();
    for batch in 0..BATCHES {
        let changes: Vec<Change> = (0..PER_BATCH)
            .map(|i| {
                Change::InsertVee(conformance::rich_record(
                    FIRST_VEE_SEQ + batch * PER_BATCH + i,
                ))
            })
            .collect();
        store.commit(&changes).expect("commit a batch");
    }
    eprintln!(
        "committed {} inserts in {BATCHES} batches on PostgreSQL in {:?}",
        BATCHES * PER_BATCH,
        started.elapsed()
    );
    let snapshot = store.load().expect("load");
    assert_eq!(snapshot.vees.len() as u64, BATCHES * PER_BATCH);
}

/// Runs `pg_ctl` on a server's data folder as the user the server runs as (see `scripts/pg`).
fn pg_ctl(data_dir: &str, args: &[&str]) {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    let pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl";
    let mut command = if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        let mut command = Command::new("runuser");
        command.args(["-u", "veem-pg", "--", pg_ctl]);
        command
    } else {
        Command::new(pg_ctl)
    };
    let out = command
        .args(["-D", data_dir, "-w"])
        .args(args)
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server crash (an immediate stop: no checkpoint, as after kill -9) loses no acknowledged
/// commit, and the store's pool drops its dead connections and reconnects by itself.
#[test]
fn acknowledged_commits_survive_a_server_crash_and_the_store_reconnects() {
    // A server of its own: this test takes it down.
    let Some(_) = server() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg");
    let out = Command::new(script)
        .args(["start", "--watch", &std::process::id().to_string()])
        .output()
        .expect("run scripts/pg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own_server = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let data_dir = {
        let out = Command::new(PSQL)
            .args([&own_server, "-qtAc", "SHOW data_directory"])
            .output()
            .expect("run psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let url = fresh_database(&own_server);
    let store = PgStore::open(&url).expect("open");
    let records: Vec<_> = (0..50).map(|i| plain_record(FIRST_VEE_SEQ + i)).collect();
    for record in &records {
        store
            .commit(&[Change::InsertVee(record.clone())])
            .expect("commit");
    }
    pg_ctl(&data_dir, &["-m", "immediate", "stop"]);
    assert!(
        store.load().is_err(),
        "a store whose server is down reports it"
    );
    // `restart` of a stopped server starts it again with the options `scripts/pg` gave it.
    pg_ctl(
        &data_dir,
        &["-l", &format!("{data_dir}/../server.log"), "restart"],
    );
    let snapshot = store
        .load()
        .expect("load after the restart, on a new connection");
    assert_eq!(snapshot.vees, records);
    store
        .commit(&[Change::InsertVee(plain_record(FIRST_VEE_SEQ + 50))])
        .expect("commit after the restart");
}
