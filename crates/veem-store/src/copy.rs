//! `veem store copy`: a site's books moved from one store into another, empty one (SQLite in a
//! `data_dir` into PostgreSQL, typically), then checked.
//!
//! What is copied is what a [`Store`] holds: every VEE with its generation, its events and its
//! accounting records, images (their records: the bytes stay in the `data_dir`), networks,
//! accounting listeners, monitoring subscriptions, sites, the accounting outbox, and both id
//! counters (so an id handed out and purged at the source is never handed out again). It is
//! written in batches (one transaction each, not one for the whole copy: a site's accounting
//! may be millions of rows), so an interrupted copy leaves a partial destination, which a new
//! copy refuses like any other non-empty one. The source is only read. After the last batch
//! both stores are read back and compared, whole.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use veem_model::{Principal, VeeId};

use crate::{Change, Snapshot, SqliteStore, Store, StoreError, FIRST_NETWORK_ID, FIRST_VEE_SEQ};

/// Rows (VEEs, events, accounting records, ...) written per transaction.
pub const BATCH_ROWS: usize = 5_000;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot read the source")]
    Source(#[source] StoreError),
    #[error("cannot open the source {path} read-only")]
    SourceFile {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0} is not a veem database (no schema version)")]
    NotVeem(String),
    #[error("cannot write the destination")]
    Destination(#[source] StoreError),
    #[error("the destination is not empty (it holds {0}): copy into a new, empty database")]
    NotEmpty(String),
    #[error("the copy differs from its source: {0}")]
    Mismatch(String),
}

/// What was copied (and found the same in the destination).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub vees: u64,
    pub events: u64,
    pub accounting_records: u64,
    pub images: u64,
    pub networks: u64,
    pub listeners: u64,
    pub subscriptions: u64,
    pub sites: u64,
    pub outbox_entries: u64,
    pub next_vee_seq: u64,
    pub next_network_id: u32,
}

/// How far a copy is, for a progress line: VEEs done of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    pub vees_done: u64,
    pub vees_total: u64,
    /// Checking the copy, not writing it any more.
    pub checking: bool,
}

/// Opens a consistent copy of the SQLite database `source` (a `veem.db`), made at `scratch`
/// (a file that must not exist; the caller removes it): the source is opened read-only and
/// never written, not even migrated; the copy is migrated to this veem's schema.
pub fn open_sqlite_snapshot(source: &Path, scratch: &Path) -> Result<SqliteStore, CopyError> {
    let file_error = |source_error| CopyError::SourceFile {
        path: source.display().to_string(),
        source: source_error,
    };
    let connection = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(file_error)?;
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(file_error)?;
    if version == 0 {
        return Err(CopyError::NotVeem(source.display().to_string()));
    }
    let scratch_text = scratch.to_str().ok_or_else(|| CopyError::SourceFile {
        path: scratch.display().to_string(),
        source: rusqlite::Error::InvalidPath(scratch.to_owned()),
    })?;
    // A consistent snapshot (with what the write-ahead log holds), written elsewhere.
    connection
        .execute("VACUUM INTO ?1", [scratch_text])
        .map_err(file_error)?;
    drop(connection);
    SqliteStore::open(scratch).map_err(CopyError::Source)
}

/// What a non-empty store holds, in words; `None` for an empty one.
fn contents(snapshot: &Snapshot, outbox: usize) -> Option<String> {
    let mut held = Vec::new();
    for (count, what) in [
        (snapshot.vees.len(), "VEEs"),
        (snapshot.images.len(), "images"),
        (snapshot.networks.len(), "networks"),
        (snapshot.listeners.len(), "accounting listeners"),
        (snapshot.subscriptions.len(), "subscriptions"),
        (snapshot.sites.len(), "sites"),
        (outbox, "accounting outbox entries"),
    ] {
        if count > 0 {
            held.push(format!("{count} {what}"));
        }
    }
    if snapshot.next_vee_seq != FIRST_VEE_SEQ {
        held.push(format!("a VEE id counter at {}", snapshot.next_vee_seq));
    }
    if snapshot.next_network_id != FIRST_NETWORK_ID {
        held.push(format!(
            "a network id counter at {}",
            snapshot.next_network_id
        ));
    }
    (!held.is_empty()).then(|| held.join(", "))
}

/// Changes gathered for the destination, committed every [`BATCH_ROWS`] rows.
struct Batches<'a> {
    to: &'a dyn Store,
    changes: Vec<Change>,
    rows: usize,
}

impl Batches<'_> {
    fn push(&mut self, change: Change, rows: usize) -> Result<(), CopyError> {
        self.changes.push(change);
        self.rows += rows;
        if self.rows >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CopyError> {
        self.to
            .commit(&self.changes)
            .map_err(CopyError::Destination)?;
        self.changes.clear();
        self.rows = 0;
        Ok(())
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Copies everything `from` holds into `to`, which must be empty, then checks the copy;
/// `progress` hears how far it is after each batch of VEEs. Only reads `from`.
pub fn copy_store(
    from: &dyn Store,
    to: &dyn Store,
    progress: &mut dyn FnMut(CopyProgress),
) -> Result<CopyReport, CopyError> {
    let destination = to.load().map_err(CopyError::Destination)?;
    let destination_outbox = to.accounting_outbox().map_err(CopyError::Destination)?;
    if let Some(held) = contents(&destination, destination_outbox.len()) {
        return Err(CopyError::NotEmpty(held));
    }
    let snapshot = from.load().map_err(CopyError::Source)?;
    let outbox = from.accounting_outbox().map_err(CopyError::Source)?;
    let mut report = CopyReport {
        vees: count(snapshot.vees.len()),
        images: count(snapshot.images.len()),
        networks: count(snapshot.networks.len()),
        listeners: count(snapshot.listeners.len()),
        subscriptions: count(snapshot.subscriptions.len()),
        sites: count(snapshot.sites.len()),
        outbox_entries: count(outbox.len()),
        next_vee_seq: snapshot.next_vee_seq,
        next_network_id: snapshot.next_network_id,
        ..CopyReport::default()
    };
    let mut batches = Batches {
        to,
        changes: Vec::new(),
        rows: 0,
    };
    // Networks in id order, as their counter wants them.
    for network in &snapshot.networks {
        batches.push(Change::InsertNetwork(network.clone()), 1)?;
    }
    for image in &snapshot.images {
        batches.push(Change::PutImage(image.clone()), 1)?;
    }
    for site in &snapshot.sites {
        batches.push(Change::InsertSite(site.clone()), 1)?;
    }
    for host in &snapshot.disabled_hosts {
        let disabled = Change::SetHostDisabled {
            host: host.clone(),
            disabled: true,
        };
        batches.push(disabled, 1)?;
    }
    let vees_total = report.vees;
    for (done, vee) in snapshot.vees.iter().enumerate() {
        batches.push(Change::CopyVee(vee.clone()), 1)?;
        let events = from.events(&vee.id).map_err(CopyError::Source)?;
        report.events += count(events.len());
        for event in events {
            batches.push(Change::AppendEvent(event), 1)?;
        }
        let accounting = all_accounting(from, &vee.id).map_err(CopyError::Source)?;
        report.accounting_records += count(accounting.len());
        for chunk in accounting.chunks(BATCH_ROWS) {
            batches.push(Change::AppendAccounting(chunk.to_vec()), chunk.len())?;
        }
        if batches.changes.is_empty() || done + 1 == snapshot.vees.len() {
            progress(CopyProgress {
                vees_done: count(done + 1),
                vees_total,
                checking: false,
            });
        }
    }
    for listener in &snapshot.listeners {
        batches.push(Change::PutListener(listener.clone()), 1)?;
    }
    for subscription in &snapshot.subscriptions {
        batches.push(Change::PutSubscription(subscription.clone()), 1)?;
    }
    for chunk in outbox.chunks(BATCH_ROWS) {
        batches.push(Change::QueueAccounting(chunk.to_vec()), chunk.len())?;
    }
    batches.push(
        Change::RaiseCounters {
            next_vee_seq: snapshot.next_vee_seq,
            next_network_id: snapshot.next_network_id,
        },
        1,
    )?;
    batches.flush()?;

    progress(CopyProgress {
        vees_done: vees_total,
        vees_total,
        checking: true,
    });
    check(from, to, &snapshot, &outbox)?;
    Ok(report)
}

fn all_accounting(
    store: &dyn Store,
    vee: &VeeId,
) -> Result<Vec<(Principal, veem_model::AccountingRecord)>, StoreError> {
    store.accounting(vee, 0, u64::MAX)
}

/// Reads the destination back and compares it with the source, whole.
fn check(
    from: &dyn Store,
    to: &dyn Store,
    snapshot: &Snapshot,
    outbox: &[crate::OutboxEntry],
) -> Result<(), CopyError> {
    let copied = to.load().map_err(CopyError::Destination)?;
    let mismatch = |what: &str| Err(CopyError::Mismatch(what.to_owned()));
    let Snapshot {
        vees,
        images,
        next_vee_seq,
        networks,
        next_network_id,
        listeners,
        subscriptions,
        sites,
        disabled_hosts,
    } = &copied;
    if vees != &snapshot.vees {
        return mismatch("the VEEs");
    }
    if images != &snapshot.images {
        return mismatch("the images");
    }
    if (*next_vee_seq, *next_network_id) != (snapshot.next_vee_seq, snapshot.next_network_id) {
        return mismatch("the id counters");
    }
    if networks != &snapshot.networks {
        return mismatch("the networks");
    }
    if listeners != &snapshot.listeners {
        return mismatch("the accounting listeners");
    }
    if subscriptions != &snapshot.subscriptions {
        return mismatch("the subscriptions");
    }
    if sites != &snapshot.sites {
        return mismatch("the sites");
    }
    if disabled_hosts != &snapshot.disabled_hosts {
        return mismatch("the disabled hosts");
    }
    if to.accounting_outbox().map_err(CopyError::Destination)? != outbox {
        return mismatch("the accounting outbox");
    }
    for vee in &snapshot.vees {
        let source_events = from.events(&vee.id).map_err(CopyError::Source)?;
        if to.events(&vee.id).map_err(CopyError::Destination)? != source_events {
            return Err(CopyError::Mismatch(format!("the events of {}", vee.id)));
        }
        let source_accounting = all_accounting(from, &vee.id).map_err(CopyError::Source)?;
        if all_accounting(to, &vee.id).map_err(CopyError::Destination)? != source_accounting {
            return Err(CopyError::Mismatch(format!(
                "the accounting records of {}",
                vee.id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{image, registered_site, sample_books};

    #[test]
    fn a_copy_holds_the_same_books_and_counters() {
        let from = SqliteStore::open_in_memory().expect("open");
        let to = SqliteStore::open_in_memory().expect("open");
        sample_books(&from);
        let before = from.load().expect("load");
        let mut heard = Vec::new();
        let report = copy_store(&from, &to, &mut |p| heard.push(p)).expect("copied");
        assert_eq!(
            report,
            CopyReport {
                vees: 3,
                events: 2,
                accounting_records: 12,
                images: 1,
                networks: 1,
                listeners: 1,
                subscriptions: 1,
                sites: 1,
                outbox_entries: 2,
                next_vee_seq: 5,
                next_network_id: 3,
            }
        );
        assert_eq!(to.load().expect("load"), before);
        assert_eq!(
            from.load().expect("load"),
            before,
            "the source is unchanged"
        );
        assert_eq!(heard.last().map(|p| p.checking), Some(true));
        assert!(heard.iter().any(|p| !p.checking && p.vees_done == 3));
    }

    #[test]
    fn a_destination_that_holds_anything_is_refused_and_left_as_it_was() {
        let from = SqliteStore::open_in_memory().expect("open");
        sample_books(&from);
        for held in [
            Change::PutImage(image("sm-b", "other", 1)),
            Change::RaiseCounters {
                next_vee_seq: 2,
                next_network_id: FIRST_NETWORK_ID,
            },
            Change::InsertSite(registered_site("elsewhere")),
        ] {
            let to = SqliteStore::open_in_memory().expect("open");
            to.commit(&[held]).expect("commit");
            let before = to.load().expect("load");
            let err = copy_store(&from, &to, &mut |_| {}).expect_err("refused");
            assert!(matches!(err, CopyError::NotEmpty(_)), "{err:?}");
            assert_eq!(to.load().expect("load"), before);
        }
    }

    #[test]
    fn a_sqlite_snapshot_reads_the_source_without_writing_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("veem.db");
        {
            let source = SqliteStore::open(&path).expect("open");
            sample_books(&source);
        }
        let before = std::fs::read(&path).expect("read");
        let snapshot = open_sqlite_snapshot(&path, &dir.path().join("copy.db")).expect("snapshot");
        assert_eq!(snapshot.load().expect("load").vees.len(), 3);
        assert_eq!(std::fs::read(&path).expect("read"), before);

        let missing = open_sqlite_snapshot(&dir.path().join("none.db"), &dir.path().join("c2.db"));
        assert!(
            matches!(missing, Err(CopyError::SourceFile { .. })),
            "{missing:?}"
        );
        let empty = dir.path().join("empty.db");
        Connection::open(&empty).expect("an empty database");
        let not_veem = open_sqlite_snapshot(&empty, &dir.path().join("c3.db"));
        assert!(
            matches!(not_veem, Err(CopyError::NotVeem(_))),
            "{not_veem:?}"
        );
    }
}
