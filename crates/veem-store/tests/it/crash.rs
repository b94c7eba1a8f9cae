//! A writer process killed with SIGKILL in the middle of its work loses nothing it acknowledged.
//!
//! The test binary runs itself again as the writer, selecting the writer "test" by name; the
//! environment variable below tells that copy it is the child and where the database is.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use veem_model::{VeeId, VmiState};
use veem_store::conformance::{
    accounted, accounting_record, event, listener, network, rich_record,
};
use veem_store::{Change, SqliteStore, Store, FIRST_NETWORK_ID, FIRST_VEE_SEQ};

const CHILD_DB_VAR: &str = "VEEM_STORE_CRASH_CHILD_DB";
const CHILD_TEST: &str = "crash::writer_child_commits_until_killed";
const VEES_PER_BATCH: u64 = 5;
/// The writer stops by itself after this many batches, should the parent never kill it.
const MAX_BATCHES: u64 = 20_000;
/// The parent kills the writer once it has seen this many acknowledgements.
const KILL_AFTER_ACKS: usize = 200;

fn batch_vee(batch: u64, i: u64) -> VeeId {
    VeeId::from_seq(FIRST_VEE_SEQ + batch * VEES_PER_BATCH + i)
}

/// Each batch also makes one network.
fn batch_network(batch: u64) -> veem_model::Network {
    let id = FIRST_NETWORK_ID + u32::try_from(batch).expect("batches stay below MAX_BATCHES");
    network(id, "alice", &format!("lan-{batch}"))
}

/// Each batch also records some accounting of its VEEs, as the accounting writer would.
fn batch_accounting(batch: u64) -> Vec<(veem_model::Principal, veem_model::AccountingRecord)> {
    (0..VEES_PER_BATCH)
        .map(|i| accounted("alice", accounting_record(&batch_vee(batch, i), batch)))
        .collect()
}

fn batch_changes(batch: u64) -> Vec<Change> {
    (0..VEES_PER_BATCH)
        .flat_map(|i| {
            let mut record = rich_record(batch_vee(batch, i).seq());
            record.created_ms = batch;
            [
                Change::InsertVee(record),
                Change::AppendEvent(event(&batch_vee(batch, i), batch, VmiState::Defined)),
                Change::PutListener(listener("alice", &batch_vee(batch, i), 1_000)),
            ]
        })
        .chain([
            Change::InsertNetwork(batch_network(batch)),
            Change::AppendAccounting(batch_accounting(batch)),
        ])
        .collect()
}

/// The child half of `acknowledged_batches_survive_sigkill`; a no-op in an ordinary test run.
#[test]
fn writer_child_commits_until_killed() {
    let Some(path) = std::env::var_os(CHILD_DB_VAR) else {
        return;
    };
    let store = SqliteStore::open(path.as_ref()).expect("child opens the store");
    let mut stdout = std::io::stdout().lock();
    for batch in 0..MAX_BATCHES {
        store.commit(&batch_changes(batch)).expect("child commits");
        // Only now is the batch acknowledged, as the VEEM acknowledges after `commit` returns.
        writeln!(stdout, "acked {batch}").expect("child reports an ack");
        stdout.flush().expect("child flushes the ack");
    }
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB_VAR, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("stdout is piped");

    let mut acked: Vec<u64> = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the writer's output");
        // libtest may have begun the line ("test <name> ... ") before the first ack.
        let Some((_, batch)) = line.rsplit_once("acked ") else {
            continue;
        };
        acked.push(batch.trim().parse().expect("an ack names its batch"));
        if acked.len() == KILL_AFTER_ACKS && !killed {
            child.kill().expect("SIGKILL the writer");
            killed = true;
        }
        // Lines already in the pipe when it died were acknowledged too: read on until EOF.
    }
    let status = child.wait().expect("reap the writer");
    assert!(
        killed,
        "the writer exited ({status}) after only {} acks",
        acked.len()
    );
    assert_eq!(status.signal(), Some(9), "the writer died of SIGKILL");
    assert_eq!(
        acked,
        (0..acked.len() as u64).collect::<Vec<_>>(),
        "acks come in batch order"
    );
    let last_acked = *acked.last().expect("at least one ack");
    assert!(
        last_acked + 1 < MAX_BATCHES,
        "the kill came before the writer finished"
    );

    let store = SqliteStore::open(&path).expect("reopen after the crash");
    let snapshot = store.load().expect("load after the crash");
    let stored = snapshot.vees.len() as u64;
    assert_eq!(
        stored % VEES_PER_BATCH,
        0,
        "batches are whole: {stored} VEEs stored"
    );
    let stored_batches = stored / VEES_PER_BATCH;
    eprintln!(
        "writer killed after {} acks; {stored_batches} batches stored",
        acked.len()
    );
    assert!(
        stored_batches > last_acked,
        "acknowledged batch {last_acked} lost: only {stored_batches} batches stored"
    );
    // At most one batch can be committed without its ack having been written.
    assert!(
        stored_batches <= last_acked + 2,
        "{stored_batches} batches stored"
    );
    assert_eq!(
        snapshot.next_vee_seq,
        FIRST_VEE_SEQ + stored,
        "the counter matches the stored VEEs"
    );
    assert_eq!(
        snapshot.networks,
        (0..stored_batches).map(batch_network).collect::<Vec<_>>(),
        "each stored batch's network, and no other"
    );
    assert_eq!(
        u64::from(snapshot.next_network_id),
        u64::from(FIRST_NETWORK_ID) + stored_batches,
        "the network counter matches the stored networks"
    );
    for (batch, vees) in (0..).zip(snapshot.vees.chunks(VEES_PER_BATCH as usize)) {
        for (i, vee) in (0..).zip(vees) {
            let mut expected = rich_record(batch_vee(batch, i).seq());
            expected.created_ms = batch;
            assert_eq!(*vee, expected);
            assert_eq!(
                store.events(&vee.id).expect("events"),
                vec![event(&vee.id, batch, VmiState::Defined)]
            );
            assert_eq!(
                store.accounting(&vee.id, 0, u64::MAX).expect("accounting"),
                vec![accounted("alice", accounting_record(&vee.id, batch))]
            );
        }
    }
    assert_eq!(
        snapshot.listeners,
        snapshot
            .vees
            .iter()
            .map(|vee| listener("alice", &vee.id, 1_000))
            .collect::<Vec<_>>(),
        "each stored VEE's listener, and no other"
    );
}
