//! The SQLite backend: one connection behind a mutex, WAL with `synchronous=FULL`, and a schema
//! that keeps each record whole as JSON (the source of truth) beside the columns worth querying.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{ffi, params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use veem_model::{
    AccountingListener, AccountingRecord, HostId, ImageName, ImageRecord, MonitoringSubscription,
    Network, Principal, Site, SiteName, VeeEvent, VeeId, VeeRecord, VmiState,
};

use crate::{Change, OutboxEntry, Snapshot, Store, StoreError, NETWORK_ID_LIMIT};

/// The schema, one step per version: step `i` takes a database from `user_version` i to i+1.
/// Steps are only ever appended; a released step is never edited.
const MIGRATIONS: &[&str] = &[
    // Version 1. STRICT tables make SQLite refuse a value of the wrong type instead of storing it.
    // Events use the rowid as their order: a new row always gets a rowid above every row that
    // exists, which is all the order of one VEE's events needs (AUTOINCREMENT would only add a
    // table write per insert).
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value ANY NOT NULL
    ) STRICT;
    CREATE TABLE vees (
        id         TEXT PRIMARY KEY NOT NULL,
        seq        INTEGER NOT NULL UNIQUE,
        owner      TEXT NOT NULL,
        state      TEXT NOT NULL,
        host       TEXT,
        generation INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        record     TEXT NOT NULL
    ) STRICT;
    CREATE TABLE vee_events (
        seq   INTEGER PRIMARY KEY,
        vee   TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        t_ms  INTEGER NOT NULL,
        event TEXT NOT NULL
    ) STRICT;
    CREATE INDEX vee_events_by_vee ON vee_events (vee, seq);
    CREATE TABLE images (
        owner  TEXT NOT NULL,
        name   TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (owner, name)
    ) STRICT;
    INSERT INTO meta (key, value) VALUES ('next_vee_seq', 1); -- FIRST_VEE_SEQ",
    // Version 2: virtual LANs. The id is the rowid (a network's id is a small integer); the
    // UNIQUE constraint is what refuses a second network of one name for one owner.
    "CREATE TABLE networks (
        id     INTEGER PRIMARY KEY NOT NULL,
        owner  TEXT NOT NULL,
        name   TEXT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (owner, name)
    ) STRICT;
    INSERT INTO meta (key, value) VALUES ('next_network_id', 1); -- FIRST_NETWORK_ID",
    // Version 3: accounting and monitoring. Listeners and accounting records belong to a VEE and
    // go with it (the cascades). Accounting records are the one table that grows without bound,
    // a row per listener per interval, so they are plain columns instead of JSON: a third of the
    // size and nothing to encode on the hot path. Their index serves the range query by
    // (vee, t0) and carries the owner (and, implicitly, the rowid) so that reading it in order
    // is the query's order and needs no sort. It comes last so that a failing step is easy to
    // provoke in tests.
    "CREATE TABLE accounting_listeners (
        vee    TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        owner  TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (vee, owner)
    ) STRICT;
    CREATE TABLE monitoring_subscriptions (
        id     TEXT PRIMARY KEY NOT NULL,
        owner  TEXT NOT NULL,
        record TEXT NOT NULL
    ) STRICT;
    CREATE TABLE accounting_records (
        vee         TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        t0          INTEGER NOT NULL,
        owner       TEXT NOT NULL,
        dt          INTEGER NOT NULL,
        state       TEXT NOT NULL,
        host        TEXT,
        cpu         INTEGER NOT NULL,
        memory_mb   INTEGER NOT NULL,
        cpu_time_ms INTEGER NOT NULL,
        active_ms   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX accounting_records_by_vee ON accounting_records (vee, t0, owner);",
    // Version 4: the accounting outbox, the records still to be pushed to listeners. Each row
    // is a whole record beside its callback, so that resuming the pushes reads one table; the
    // id (the rowid) is the VEEM's and gives the order. The index on `vee` keeps a purge's
    // cascade from scanning the table.
    "CREATE TABLE accounting_outbox (
        id          INTEGER PRIMARY KEY NOT NULL,
        vee         TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        callback    TEXT NOT NULL,
        owner       TEXT NOT NULL,
        t0          INTEGER NOT NULL,
        dt          INTEGER NOT NULL,
        state       TEXT NOT NULL,
        host        TEXT,
        cpu         INTEGER NOT NULL,
        memory_mb   INTEGER NOT NULL,
        cpu_time_ms INTEGER NOT NULL,
        active_ms   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX accounting_outbox_by_vee ON accounting_outbox (vee);",
    // Version 5: the sites of the federation, by name.
    "CREATE TABLE sites (
        name   TEXT PRIMARY KEY NOT NULL,
        record TEXT NOT NULL
    ) STRICT;",
    // Version 6: the hosts an operator disabled.
    "CREATE TABLE disabled_hosts (
        host TEXT PRIMARY KEY NOT NULL
    ) STRICT;",
];

/// The schema version this code writes: the number of migration steps.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub(crate) const NEXT_VEE_SEQ_KEY: &str = "next_vee_seq";
pub(crate) const NEXT_NETWORK_ID_KEY: &str = "next_network_id";

/// A VEE's accounting records with `t0` in an inclusive range, in the order `accounting`
/// promises (the rowid is the order of appending).
const ACCOUNTING_RANGE_QUERY: &str =
    "SELECT owner, t0, dt, state, host, cpu, memory_mb, cpu_time_ms, active_ms
     FROM accounting_records
     WHERE vee = ?1 AND t0 BETWEEN ?2 AND ?3
     ORDER BY t0, owner, rowid";

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] in one SQLite database file (or in memory, for tests).
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if absent) the database at `path` and migrates it to
    /// [`SCHEMA_VERSION`]. The folder must exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(backend)?;
        let journal_mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(backend)?;
        // WAL lets `load` read while a commit writes, and commits with one fsync of the log.
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(
                format!(
                    "{} cannot use write-ahead logging (journal mode stays {journal_mode:?})",
                    path.display()
                )
                .into(),
            ));
        }
        Self::configure(connection)
    }

    /// A private database that vanishes with the store.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::configure(Connection::open_in_memory().map_err(backend)?)
    }

    fn configure(mut connection: Connection) -> Result<Self, StoreError> {
        // FULL, not WAL's usual NORMAL: NORMAL may lose the last commits on power loss, and the
        // VEEM acknowledges a change as soon as `commit` returns.
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        connection.set_prepared_statement_cache_capacity(32);
        migrate(&mut connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A thread that panicked while holding the lock dropped its `Transaction` on the way
        // out, which rolled it back: the connection is consistent, so the poison can be ignored.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction. The write lock is taken before
/// `user_version` is read, so two processes opening one file do not both run a step.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let stored: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    let found = u32::try_from(stored)
        .map_err(|_| StoreError::Corrupt(format!("schema version {stored} is negative")))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    for (version, step) in (1..).zip(MIGRATIONS).skip(found as usize) {
        tx.execute_batch(step)
            .map_err(|source| StoreError::Migration {
                version,
                source: Box::new(source),
            })?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut connection = self.connection();
        // One read transaction, so the reads see the same commit.
        let tx = connection.transaction().map_err(backend)?;
        let three = |row: &rusqlite::Row<'_>| -> rusqlite::Result<(String, String, String)> {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        };
        let vees = load_all(
            &tx,
            "SELECT id, generation, record FROM vees ORDER BY seq",
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
            |(id, generation, json)| decode_vee(&id, generation, &json),
        )?;
        let images = load_all(
            &tx,
            "SELECT owner, name, record FROM images ORDER BY owner, name",
            three,
            |(owner, name, json)| decode_image(&owner, &name, &json),
        )?;
        let networks = load_all(
            &tx,
            "SELECT id, owner, name, record FROM networks ORDER BY id",
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            },
            |(id, owner, name, json)| decode_network(id, &owner, &name, &json),
        )?;
        // By the VEE's sequence, not its id: ids of more than eight digits sort wrong as text.
        // The join is LEFT so that no row is left out, whatever the VEE table holds.
        let listeners = load_all(
            &tx,
            "SELECT listener.vee, listener.owner, listener.record
             FROM accounting_listeners AS listener
             LEFT JOIN vees ON vees.id = listener.vee
             ORDER BY vees.seq, listener.owner",
            three,
            |(vee, owner, json)| decode_listener(&vee, &owner, &json),
        )?;
        let subscriptions = load_all(
            &tx,
            "SELECT id, owner, record FROM monitoring_subscriptions ORDER BY id",
            three,
            |(id, owner, json)| decode_subscription(&id, &owner, &json),
        )?;
        let sites = load_all(
            &tx,
            "SELECT name, record FROM sites ORDER BY name",
            |row| -> rusqlite::Result<(String, String)> { Ok((row.get(0)?, row.get(1)?)) },
            |(name, json)| decode_site(&name, &json),
        )?;
        let disabled_hosts = load_all(
            &tx,
            "SELECT host FROM disabled_hosts ORDER BY host",
            |row| row.get::<_, String>(0),
            Ok,
        )?;
        let next_vee_seq = read_next_vee_seq(&tx)?;
        let next_network_id = read_next_network_id(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(Snapshot {
            vees,
            images,
            next_vee_seq,
            networks,
            next_network_id,
            listeners,
            subscriptions,
            sites,
            disabled_hosts,
        })
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection();
        // IMMEDIATE takes the write lock now, so a busy database shows up here (and waits out
        // the busy timeout) rather than halfway through the batch.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut counters = Counters::default();
        for change in changes {
            apply(&tx, &mut counters, change)?;
        }
        counters.save(&tx)?;
        // An error return drops `tx`, which rolls the whole batch back.
        tx.commit().map_err(backend)
    }

    fn events(&self, vee: &VeeId) -> Result<Vec<VeeEvent>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached("SELECT event FROM vee_events WHERE vee = ?1 ORDER BY seq")
            .map_err(backend)?;
        let rows = statement
            .query_map([vee.as_str()], |row| row.get::<_, String>(0))
            .map_err(backend)?;
        rows.map(|row| {
            let json = row.map_err(read_error)?;
            decode_event(vee, &json)
        })
        .collect()
    }

    fn accounting(
        &self,
        vee: &VeeId,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(Principal, AccountingRecord)>, StoreError> {
        // Stored times fit an i64, so a range reaching beyond one is cut at i64::MAX, and the
        // query takes the inclusive bound `to_ms - 1` so that `to_ms = u64::MAX` still finds a
        // record at i64::MAX.
        let (Ok(first), Some(last)) = (i64::try_from(from_ms), to_ms.checked_sub(1)) else {
            return Ok(Vec::new());
        };
        let last = i64::try_from(last).unwrap_or(i64::MAX);
        if first > last {
            return Ok(Vec::new());
        }
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached(ACCOUNTING_RANGE_QUERY)
            .map_err(backend)?;
        let rows = statement
            .query_map(params![vee.as_str(), first, last], |row| {
                Ok(AccountingRow {
                    owner: row.get(0)?,
                    t0: row.get(1)?,
                    dt: row.get(2)?,
                    state: row.get(3)?,
                    host: row.get(4)?,
                    cpu: row.get(5)?,
                    memory_mb: row.get(6)?,
                    cpu_time_ms: row.get(7)?,
                    active_ms: row.get(8)?,
                })
            })
            .map_err(backend)?;
        rows.map(|row| row.map_err(read_error)?.decode(vee))
            .collect()
    }

    fn accounting_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached(
                "SELECT id, vee, callback, owner, t0, dt, state, host, cpu, memory_mb,
                        cpu_time_ms, active_ms
                 FROM accounting_outbox ORDER BY id",
            )
            .map_err(backend)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    AccountingRow {
                        owner: row.get(3)?,
                        t0: row.get(4)?,
                        dt: row.get(5)?,
                        state: row.get(6)?,
                        host: row.get(7)?,
                        cpu: row.get(8)?,
                        memory_mb: row.get(9)?,
                        cpu_time_ms: row.get(10)?,
                        active_ms: row.get(11)?,
                    },
                ))
            })
            .map_err(backend)?;
        rows.map(|row| {
            let (id, vee, callback, row) = row.map_err(read_error)?;
            let id = u64::try_from(id)
                .map_err(|_| StoreError::Corrupt(format!("accounting outbox id {id}")))?;
            let vee = VeeId::parse(&vee).map_err(|err| {
                StoreError::Corrupt(format!("accounting outbox entry {id} names {vee:?}: {err}"))
            })?;
            let (owner, record) = row.decode(&vee)?;
            Ok(OutboxEntry {
                id,
                callback,
                owner,
                record,
            })
        })
        .collect()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// The id counters during one commit.
struct Counters {
    vee_seq: Counter,
    network_id: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            vee_seq: Counter::new(NEXT_VEE_SEQ_KEY, read_next_vee_seq),
            network_id: Counter::new(NEXT_NETWORK_ID_KEY, |tx| {
                read_next_network_id(tx).map(u64::from)
            }),
        }
    }
}

impl Counters {
    fn save(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        self.vee_seq.save(tx)?;
        self.network_id.save(tx)
    }
}

/// One counter of `meta` during one commit: read on the first insert, written once at the end.
struct Counter {
    key: &'static str,
    read: fn(&Transaction<'_>) -> Result<u64, StoreError>,
    loaded: Option<u64>,
    changed: bool,
}

impl Counter {
    fn new(key: &'static str, read: fn(&Transaction<'_>) -> Result<u64, StoreError>) -> Self {
        Self {
            key,
            read,
            loaded: None,
            changed: false,
        }
    }

    fn get(&mut self, tx: &Transaction<'_>) -> Result<u64, StoreError> {
        match self.loaded {
            Some(next) => Ok(next),
            None => {
                let next = (self.read)(tx)?;
                self.loaded = Some(next);
                Ok(next)
            }
        }
    }

    fn set(&mut self, next: u64) {
        self.loaded = Some(next);
        self.changed = true;
    }

    fn save(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let (Some(next), true) = (self.loaded, self.changed) else {
            return Ok(());
        };
        let next = to_sql_int(self.key, next)?;
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = ?2")
            .and_then(|mut statement| statement.execute(params![next, self.key]))
            .map_err(backend)?;
        Ok(())
    }
}

fn read_counter(tx: &Transaction<'_>, key: &str, what: &str) -> Result<i64, StoreError> {
    let stored: Option<i64> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut statement| statement.query_row([key], |row| row.get(0)).optional())
        .map_err(read_error)?;
    stored.ok_or_else(|| StoreError::Corrupt(format!("the {what} is missing")))
}

fn read_next_vee_seq(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let stored = read_counter(tx, NEXT_VEE_SEQ_KEY, "id counter")?;
    u64::try_from(stored)
        .map_err(|_| StoreError::Corrupt(format!("the id counter is negative: {stored}")))
}

fn read_next_network_id(tx: &Transaction<'_>) -> Result<u32, StoreError> {
    let stored = read_counter(tx, NEXT_NETWORK_ID_KEY, "network id counter")?;
    u32::try_from(stored)
        .ok()
        .filter(|&next| next <= NETWORK_ID_LIMIT)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the network id counter {stored} is outside 0..={NETWORK_ID_LIMIT}"
            ))
        })
}

fn apply(tx: &Transaction<'_>, counters: &mut Counters, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::InsertVee(record) => insert_vee(tx, &mut counters.vee_seq, record, false),
        Change::CopyVee(record) => insert_vee(tx, &mut counters.vee_seq, record, true),
        Change::RaiseCounters {
            next_vee_seq,
            next_network_id,
        } => {
            check_raised_counters(*next_vee_seq, *next_network_id)?;
            if *next_vee_seq > counters.vee_seq.get(tx)? {
                counters.vee_seq.set(*next_vee_seq);
            }
            if u64::from(*next_network_id) > counters.network_id.get(tx)? {
                counters.network_id.set(u64::from(*next_network_id));
            }
            Ok(())
        }
        Change::UpdateVee {
            record,
            expected_generation,
        } => update_vee(tx, record, *expected_generation),
        Change::PurgeVee(id) => purge_vee(tx, id),
        Change::AppendEvent(event) => append_event(tx, event),
        Change::PutImage(image) => put_image(tx, image),
        Change::DeleteImage { owner, name } => delete_image(tx, owner, name),
        Change::InsertNetwork(network) => insert_network(tx, &mut counters.network_id, network),
        Change::UpdateNetwork(network) => update_network(tx, network),
        Change::DeleteNetwork { id } => delete_network(tx, *id),
        Change::PutListener(listener) => put_listener(tx, listener),
        Change::RemoveListener { owner, vee } => remove_listener(tx, owner, vee),
        Change::AppendAccounting(records) => append_accounting(tx, records),
        Change::QueueAccounting(entries) => queue_accounting(tx, entries),
        Change::SettleAccounting(ids) => settle_accounting(tx, ids),
        Change::PutSubscription(subscription) => put_subscription(tx, subscription),
        Change::RemoveSubscription { id } => remove_subscription(tx, id),
        Change::InsertSite(site) => insert_site(tx, site),
        Change::RemoveSite(name) => remove_site(tx, name),
        Change::SetHostDisabled { host, disabled } => set_host_disabled(tx, host, *disabled),
    }
}

/// The counters a [`Change::RaiseCounters`] may set: each within what the store keeps.
pub(crate) fn check_raised_counters(
    next_vee_seq: u64,
    next_network_id: u32,
) -> Result<(), StoreError> {
    if next_vee_seq > i64::MAX as u64 {
        return Err(StoreError::InvalidChange(format!(
            "the id counter {next_vee_seq} is beyond the largest sequence this store keeps"
        )));
    }
    if next_network_id > NETWORK_ID_LIMIT {
        return Err(StoreError::InvalidChange(format!(
            "the network id counter {next_network_id} is beyond {NETWORK_ID_LIMIT}"
        )));
    }
    Ok(())
}

/// The generation an inserted VEE must have: 1 when new, any from 1 on when `copied` from
/// another store.
pub(crate) fn check_inserted_generation(
    record: &VeeRecord,
    copied: bool,
) -> Result<(), StoreError> {
    let fits = if copied {
        record.generation >= 1
    } else {
        record.generation == 1
    };
    if fits {
        return Ok(());
    }
    Err(StoreError::InvalidChange(format!(
        "{} VEE {} has generation {}, not {}",
        if copied { "copied" } else { "new" },
        record.id,
        record.generation,
        if copied { "at least 1" } else { "1" }
    )))
}

fn insert_vee(
    tx: &Transaction<'_>,
    counter: &mut Counter,
    record: &VeeRecord,
    copied: bool,
) -> Result<(), StoreError> {
    check_inserted_generation(record, copied)?;
    let seq = record.id.seq();
    // The counter is stored as a signed integer and becomes seq+1.
    if seq >= i64::MAX as u64 {
        return Err(StoreError::InvalidChange(format!(
            "VEE id {} is beyond the largest sequence this store keeps",
            record.id
        )));
    }
    if seq < counter.get(tx)? {
        return Err(StoreError::IdReused(record.id.clone()));
    }
    let columns = VeeColumns::of(record)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO vees (id, seq, owner, state, host, generation, created_ms, updated_ms, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT DO NOTHING",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                record.id.as_str(),
                seq as i64,
                record.owner.as_str(),
                record.state.as_str(),
                record.host.as_ref().map(|host| host.as_str()),
                columns.generation,
                columns.created_ms,
                columns.updated_ms,
                columns.json,
            ])
        })
        .map_err(backend)?;
    if inserted == 0 {
        // Only a counter that fell behind its rows (a database edited by hand) gets here.
        return Err(StoreError::IdReused(record.id.clone()));
    }
    counter.set(seq + 1);
    Ok(())
}

fn update_vee(
    tx: &Transaction<'_>,
    record: &VeeRecord,
    expected_generation: u64,
) -> Result<(), StoreError> {
    if expected_generation.checked_add(1) != Some(record.generation) {
        return Err(StoreError::InvalidChange(format!(
            "update of VEE {} to generation {} must follow generation {}",
            record.id,
            record.generation,
            record.generation.saturating_sub(1)
        )));
    }
    let columns = VeeColumns::of(record)?;
    let expected = to_sql_int("generation", expected_generation)?;
    let updated = tx
        .prepare_cached(
            "UPDATE vees SET owner = ?2, state = ?3, host = ?4, generation = ?5,
                 created_ms = ?6, updated_ms = ?7, record = ?8
             WHERE id = ?1 AND generation = ?9",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                record.id.as_str(),
                record.owner.as_str(),
                record.state.as_str(),
                record.host.as_ref().map(|host| host.as_str()),
                columns.generation,
                columns.created_ms,
                columns.updated_ms,
                columns.json,
                expected,
            ])
        })
        .map_err(backend)?;
    if updated == 1 {
        return Ok(());
    }
    let found: Option<i64> = tx
        .prepare_cached("SELECT generation FROM vees WHERE id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([record.id.as_str()], |row| row.get(0))
                .optional()
        })
        .map_err(read_error)?;
    let found = found
        .map(|stored| {
            u64::try_from(stored).map_err(|_| {
                StoreError::Corrupt(format!("VEE {} has generation {stored}", record.id))
            })
        })
        .transpose()?;
    Err(StoreError::Conflict {
        id: record.id.clone(),
        expected: expected_generation,
        found,
    })
}

fn purge_vee(tx: &Transaction<'_>, id: &VeeId) -> Result<(), StoreError> {
    // Its events, listeners and accounting go with it: their `vee` columns cascade on delete.
    let deleted = tx
        .prepare_cached("DELETE FROM vees WHERE id = ?1")
        .and_then(|mut statement| statement.execute([id.as_str()]))
        .map_err(backend)?;
    if deleted == 0 {
        return Err(StoreError::NotFound(format!("VEE {id}")));
    }
    Ok(())
}

fn append_event(tx: &Transaction<'_>, event: &VeeEvent) -> Result<(), StoreError> {
    let t_ms = to_sql_int("event time", event.t_ms)?;
    let json = to_json(event)?;
    let result = tx
        .prepare_cached("INSERT INTO vee_events (vee, t_ms, event) VALUES (?1, ?2, ?3)")
        .and_then(|mut statement| statement.execute(params![event.vee.as_str(), t_ms, json]));
    result.map(drop).map_err(|err| missing_vee(err, &event.vee))
}

/// A row that names a VEE the store does not hold fails its foreign key.
fn missing_vee(err: rusqlite::Error, vee: &VeeId) -> StoreError {
    match err {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::NotFound(format!("VEE {vee}"))
        }
        other => backend(other),
    }
}

fn put_image(tx: &Transaction<'_>, image: &ImageRecord) -> Result<(), StoreError> {
    let json = to_json(image)?;
    tx.prepare_cached(
        "INSERT INTO images (owner, name, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (owner, name) DO UPDATE SET record = excluded.record",
    )
    .and_then(|mut statement| {
        statement.execute(params![image.owner.as_str(), image.name.as_str(), json])
    })
    .map_err(backend)?;
    Ok(())
}

fn delete_image(
    tx: &Transaction<'_>,
    owner: &Principal,
    name: &ImageName,
) -> Result<(), StoreError> {
    let deleted = tx
        .prepare_cached("DELETE FROM images WHERE owner = ?1 AND name = ?2")
        .and_then(|mut statement| statement.execute([owner.as_str(), name.as_str()]))
        .map_err(backend)?;
    if deleted == 0 {
        return Err(StoreError::NotFound(format!("image {name} of {owner}")));
    }
    Ok(())
}

fn insert_network(
    tx: &Transaction<'_>,
    counter: &mut Counter,
    network: &Network,
) -> Result<(), StoreError> {
    if network.id >= NETWORK_ID_LIMIT {
        return Err(StoreError::InvalidChange(format!(
            "network id {} is not below {NETWORK_ID_LIMIT}, the VXLAN identifiers",
            network.id
        )));
    }
    if u64::from(network.id) < counter.get(tx)? {
        return Err(StoreError::NetworkIdReused(network.id));
    }
    let json = to_json(network)?;
    let result = tx
        .prepare_cached("INSERT INTO networks (id, owner, name, record) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut statement| {
            statement.execute(params![
                network.id,
                network.owner.as_str(),
                network.name,
                json
            ])
        });
    match result {
        Ok(_) => {}
        // Only a counter that fell behind its rows (a database edited by hand) gets here.
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            return Err(StoreError::NetworkIdReused(network.id));
        }
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            return Err(StoreError::NetworkNameTaken {
                owner: network.owner.clone(),
                name: network.name.clone(),
            });
        }
        Err(err) => return Err(backend(err)),
    }
    counter.set(u64::from(network.id) + 1);
    Ok(())
}

fn update_network(tx: &Transaction<'_>, network: &Network) -> Result<(), StoreError> {
    let json = to_json(network)?;
    let updated = tx
        .prepare_cached(
            "UPDATE networks SET record = ?1 WHERE id = ?2 AND owner = ?3 AND name = ?4",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                json,
                network.id,
                network.owner.as_str(),
                network.name
            ])
        })
        .map_err(backend)?;
    if updated == 0 {
        return Err(StoreError::NotFound(format!(
            "network {} ({} of {})",
            network.id, network.name, network.owner
        )));
    }
    Ok(())
}

fn delete_network(tx: &Transaction<'_>, id: u32) -> Result<(), StoreError> {
    let deleted = tx
        .prepare_cached("DELETE FROM networks WHERE id = ?1")
        .and_then(|mut statement| statement.execute([id]))
        .map_err(backend)?;
    if deleted == 0 {
        return Err(StoreError::NotFound(format!("network {id}")));
    }
    Ok(())
}

fn put_listener(tx: &Transaction<'_>, listener: &AccountingListener) -> Result<(), StoreError> {
    let json = to_json(listener)?;
    tx.prepare_cached(
        "INSERT INTO accounting_listeners (vee, owner, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (vee, owner) DO UPDATE SET record = excluded.record",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            listener.vee.as_str(),
            listener.owner.as_str(),
            json
        ])
    })
    .map(drop)
    .map_err(|err| missing_vee(err, &listener.vee))
}

fn remove_listener(tx: &Transaction<'_>, owner: &Principal, vee: &VeeId) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM accounting_listeners WHERE vee = ?1 AND owner = ?2")
        .and_then(|mut statement| statement.execute([vee.as_str(), owner.as_str()]))
        .map_err(backend)?;
    Ok(())
}

/// One statement for the whole batch: thousands of rows cost thousands of executions of a
/// compiled statement, not thousands of compilations.
fn append_accounting(
    tx: &Transaction<'_>,
    records: &[(Principal, AccountingRecord)],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut statement = tx
        .prepare_cached(
            "INSERT INTO accounting_records
                 (vee, t0, owner, dt, state, host, cpu, memory_mb, cpu_time_ms, active_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(backend)?;
    for (owner, record) in records {
        // The message is made only on failure: this loop is the hot path.
        let int = |what: &str, value: u64| {
            i64::try_from(value).map_err(|_| {
                StoreError::InvalidChange(format!(
                    "accounting {what} {value} of VEE {} is too large to store",
                    record.vee
                ))
            })
        };
        statement
            .execute(params![
                record.vee.as_str(),
                int("t0", record.t0)?,
                owner.as_str(),
                int("dt", record.dt)?,
                record.state.as_str(),
                record.host.as_ref().map(|host| host.as_str()),
                record.cpu,
                int("memory_mb", record.memory_mb)?,
                int("cpu_time_ms", record.cpu_time_ms)?,
                int("active_ms", record.active_ms)?,
            ])
            .map_err(|err| missing_vee(err, &record.vee))?;
    }
    Ok(())
}

/// One statement for the whole batch, as [`append_accounting`]: the outbox is as hot.
fn queue_accounting(tx: &Transaction<'_>, entries: &[OutboxEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut statement = tx
        .prepare_cached(
            "INSERT INTO accounting_outbox
                 (id, vee, callback, owner, t0, dt, state, host, cpu, memory_mb, cpu_time_ms,
                  active_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .map_err(backend)?;
    for entry in entries {
        let record = &entry.record;
        let int = |what: &str, value: u64| {
            i64::try_from(value).map_err(|_| {
                StoreError::InvalidChange(format!(
                    "accounting outbox {what} {value} of VEE {} is too large to store",
                    record.vee
                ))
            })
        };
        let result = statement.execute(params![
            int("id", entry.id)?,
            record.vee.as_str(),
            entry.callback,
            entry.owner.as_str(),
            int("t0", record.t0)?,
            int("dt", record.dt)?,
            record.state.as_str(),
            record.host.as_ref().map(|host| host.as_str()),
            record.cpu,
            int("memory_mb", record.memory_mb)?,
            int("cpu_time_ms", record.cpu_time_ms)?,
            int("active_ms", record.active_ms)?,
        ]);
        match result {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if failure.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return Err(StoreError::InvalidChange(format!(
                    "accounting outbox entry {} is queued already",
                    entry.id
                )));
            }
            Err(err) => return Err(missing_vee(err, &record.vee)),
        }
    }
    Ok(())
}

fn settle_accounting(tx: &Transaction<'_>, ids: &[u64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut statement = tx
        .prepare_cached("DELETE FROM accounting_outbox WHERE id = ?1")
        .map_err(backend)?;
    for &id in ids {
        // An id beyond SQLite's integers was never stored: nothing to settle.
        let Ok(id) = i64::try_from(id) else {
            continue;
        };
        statement.execute([id]).map_err(backend)?;
    }
    Ok(())
}

fn put_subscription(
    tx: &Transaction<'_>,
    subscription: &MonitoringSubscription,
) -> Result<(), StoreError> {
    let json = to_json(subscription)?;
    tx.prepare_cached(
        "INSERT INTO monitoring_subscriptions (id, owner, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, record = excluded.record",
    )
    .and_then(|mut statement| {
        statement.execute(params![subscription.id, subscription.owner.as_str(), json])
    })
    .map_err(backend)?;
    Ok(())
}

fn remove_subscription(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM monitoring_subscriptions WHERE id = ?1")
        .and_then(|mut statement| statement.execute([id]))
        .map_err(backend)?;
    Ok(())
}

fn insert_site(tx: &Transaction<'_>, site: &Site) -> Result<(), StoreError> {
    let json = to_json(site)?;
    let inserted = tx
        .prepare_cached("INSERT INTO sites (name, record) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .and_then(|mut statement| statement.execute(params![site.name.as_str(), json]))
        .map_err(backend)?;
    if inserted == 0 {
        return Err(StoreError::SiteNameTaken(site.name.clone()));
    }
    Ok(())
}

fn set_host_disabled(tx: &Transaction<'_>, host: &str, disabled: bool) -> Result<(), StoreError> {
    let sql = if disabled {
        "INSERT INTO disabled_hosts (host) VALUES (?1) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM disabled_hosts WHERE host = ?1"
    };
    tx.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([host]))
        .map_err(backend)?;
    Ok(())
}

fn remove_site(tx: &Transaction<'_>, name: &SiteName) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM sites WHERE name = ?1")
        .and_then(|mut statement| statement.execute([name.as_str()]))
        .map_err(backend)?;
    Ok(())
}

/// An `accounting_records` row as SQLite returns it, before its values are checked.
pub(crate) struct AccountingRow {
    pub(crate) owner: String,
    pub(crate) t0: i64,
    pub(crate) dt: i64,
    pub(crate) state: String,
    pub(crate) host: Option<String>,
    pub(crate) cpu: i64,
    pub(crate) memory_mb: i64,
    pub(crate) cpu_time_ms: i64,
    pub(crate) active_ms: i64,
}

impl AccountingRow {
    pub(crate) fn decode(self, vee: &VeeId) -> Result<(Principal, AccountingRecord), StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!(
                "an accounting record of VEE {vee} at {} has {what}",
                self.t0
            ))
        };
        let number = |what: &str, value: i64| {
            u64::try_from(value).map_err(|_| corrupt(&format!("{what} {value}")))
        };
        let owner = Principal::new(self.owner.as_str())
            .map_err(|err| corrupt(&format!("an invalid owner: {err}")))?;
        let host = self
            .host
            .as_deref()
            .map(HostId::new)
            .transpose()
            .map_err(|err| corrupt(&format!("an invalid host: {err}")))?;
        let state = VmiState::parse(&self.state)
            .ok_or_else(|| corrupt(&format!("the unknown state {:?}", self.state)))?;
        let record = AccountingRecord {
            vee: vee.clone(),
            t0: number("t0", self.t0)?,
            dt: number("dt", self.dt)?,
            state,
            host,
            cpu: u32::try_from(self.cpu).map_err(|_| corrupt(&format!("cpu {}", self.cpu)))?,
            memory_mb: number("memory_mb", self.memory_mb)?,
            cpu_time_ms: number("cpu_time_ms", self.cpu_time_ms)?,
            active_ms: number("active_ms", self.active_ms)?,
        };
        Ok((owner, record))
    }
}

/// The values of a VEE row that need converting before SQLite takes them.
struct VeeColumns {
    generation: i64,
    created_ms: i64,
    updated_ms: i64,
    json: String,
}

impl VeeColumns {
    fn of(record: &VeeRecord) -> Result<Self, StoreError> {
        Ok(Self {
            generation: to_sql_int("generation", record.generation)?,
            created_ms: to_sql_int("created_ms", record.created_ms)?,
            updated_ms: to_sql_int("updated_ms", record.updated_ms)?,
            json: to_json(record)?,
        })
    }
}

/// SQLite integers are signed 64-bit; a larger `u64` cannot be a column value.
pub(crate) fn to_sql_int(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::InvalidChange(format!("{what} {value} is too large to store")))
}

pub(crate) fn to_json(value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|err| StoreError::InvalidChange(format!("cannot encode as JSON: {err}")))
}

pub(crate) fn decode_vee(id: &str, generation: i64, json: &str) -> Result<VeeRecord, StoreError> {
    let record: VeeRecord = serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("VEE row {id}: {err}")))?;
    if record.id.as_str() != id {
        return Err(StoreError::Corrupt(format!(
            "VEE row {id} holds the record of {}",
            record.id
        )));
    }
    // The column is what compare-and-swap checks; it must agree with the record it guards.
    if i64::try_from(record.generation).ok() != Some(generation) {
        return Err(StoreError::Corrupt(format!(
            "VEE row {id} has generation {generation} but its record says {}",
            record.generation
        )));
    }
    Ok(record)
}

pub(crate) fn decode_image(owner: &str, name: &str, json: &str) -> Result<ImageRecord, StoreError> {
    let image: ImageRecord = serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("image row {owner}/{name}: {err}")))?;
    if image.owner.as_str() != owner || image.name.as_str() != name {
        return Err(StoreError::Corrupt(format!(
            "image row {owner}/{name} holds the record of {}/{}",
            image.owner, image.name
        )));
    }
    Ok(image)
}

pub(crate) fn decode_network(
    id: i64,
    owner: &str,
    name: &str,
    json: &str,
) -> Result<Network, StoreError> {
    let network: Network = serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("network row {id}: {err}")))?;
    // The columns are what the unique constraints check; they must agree with the record.
    if i64::from(network.id) != id || network.owner.as_str() != owner || network.name != name {
        return Err(StoreError::Corrupt(format!(
            "network row {id} ({owner}/{name}) holds the record of network {} ({}/{})",
            network.id, network.owner, network.name
        )));
    }
    if network.id >= NETWORK_ID_LIMIT {
        return Err(StoreError::Corrupt(format!(
            "network row {id} has an id beyond the VXLAN identifiers"
        )));
    }
    Ok(network)
}

pub(crate) fn decode_listener(
    vee: &str,
    owner: &str,
    json: &str,
) -> Result<AccountingListener, StoreError> {
    let listener: AccountingListener = serde_json::from_str(json).map_err(|err| {
        StoreError::Corrupt(format!("accounting listener row {vee}/{owner}: {err}"))
    })?;
    // The columns are the key that replaces and removes; they must agree with the record.
    if listener.vee.as_str() != vee || listener.owner.as_str() != owner {
        return Err(StoreError::Corrupt(format!(
            "accounting listener row {vee}/{owner} holds the listener of {}/{}",
            listener.vee, listener.owner
        )));
    }
    Ok(listener)
}

pub(crate) fn decode_subscription(
    id: &str,
    owner: &str,
    json: &str,
) -> Result<MonitoringSubscription, StoreError> {
    let subscription: MonitoringSubscription = serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("subscription row {id:?}: {err}")))?;
    if subscription.id != id || subscription.owner.as_str() != owner {
        return Err(StoreError::Corrupt(format!(
            "subscription row {id:?} of {owner} holds subscription {:?} of {}",
            subscription.id, subscription.owner
        )));
    }
    Ok(subscription)
}

pub(crate) fn decode_site(name: &str, json: &str) -> Result<Site, StoreError> {
    let site: Site = serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("site row {name:?}: {err}")))?;
    if site.name.as_str() != name {
        return Err(StoreError::Corrupt(format!(
            "site row {name:?} holds site {}",
            site.name
        )));
    }
    Ok(site)
}

pub(crate) fn decode_event(vee: &VeeId, json: &str) -> Result<VeeEvent, StoreError> {
    let event: VeeEvent = serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("event of VEE {vee}: {err}")))?;
    if &event.vee != vee {
        return Err(StoreError::Corrupt(format!(
            "an event filed under VEE {vee} is about {}",
            event.vee
        )));
    }
    Ok(event)
}

/// Runs a query without parameters and decodes each row: `read` takes its columns out,
/// `decode` makes the stored value of them.
fn load_all<R, T>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    mut decode: impl FnMut(R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = tx.prepare_cached(sql).map_err(backend)?;
    let rows = statement.query_map([], read).map_err(backend)?;
    rows.map(|row| decode(row.map_err(read_error)?)).collect()
}

fn backend(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(err))
}

/// A value of the wrong type in a column is bad data, not a failing database.
fn read_error(err: rusqlite::Error) -> StoreError {
    match err {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(err.to_string()),
        other => backend(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conformance, FIRST_NETWORK_ID, FIRST_VEE_SEQ};

    fn store_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("veem.db");
        (dir, path)
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .expect("open raw")
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("read user_version")
    }

    #[test]
    fn a_file_store_is_durable_and_checks_foreign_keys() {
        let (_dir, path) = store_file();
        let store = SqliteStore::open(&path).expect("open");
        let connection = store.connection();
        let pragma = |name: &str| -> String {
            connection
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|value| match value {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(text) => text,
                    other => format!("{other:?}"),
                })
                .expect("read pragma")
        };
        assert_eq!(pragma("journal_mode"), "wal");
        // 2 is FULL.
        assert_eq!(pragma("synchronous"), "2");
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(pragma("busy_timeout"), "5000");
    }

    #[test]
    fn a_fresh_database_is_migrated_once_and_reopening_changes_nothing() {
        let (_dir, path) = store_file();
        let store = SqliteStore::open(&path).expect("first open");
        let record = conformance::rich_record(FIRST_VEE_SEQ);
        store
            .commit(&[Change::InsertVee(record.clone())])
            .expect("insert");
        drop(store);
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));

        for _ in 0..2 {
            let store = SqliteStore::open(&path).expect("reopen");
            let snapshot = store.load().expect("load");
            assert_eq!(snapshot.vees, vec![record.clone()]);
            assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 1);
        }
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    }

    /// A database as veem wrote it before networks: schema version 1, holding a VEE with
    /// events, an image, and a VEE counter ahead of the VEE.
    fn write_version_1_database(path: &Path) -> (VeeRecord, VeeEvent, ImageRecord) {
        let record = conformance::rich_record(FIRST_VEE_SEQ + 2);
        let event = conformance::event(&record.id, 9, veem_model::VmiState::Defined);
        let image = conformance::image("alice", "tiny", 1);
        let connection = Connection::open(path).expect("open raw");
        connection
            .execute_batch(MIGRATIONS[0])
            .expect("the version 1 schema");
        connection
            .pragma_update(None, "user_version", 1)
            .expect("set user_version");
        connection
            .execute_batch("UPDATE meta SET value = 40 WHERE key = 'next_vee_seq'")
            .expect("advance the counter");
        connection
            .execute(
                "INSERT INTO vees (id, seq, owner, state, host, generation, created_ms, updated_ms, record)
                 VALUES (?1, ?2, 'alice', 'initial', 'host-1', 1, 0, 0, ?3)",
                params![record.id.as_str(), record.id.seq() as i64, to_json(&record).expect("json")],
            )
            .expect("a version 1 VEE");
        connection
            .execute(
                "INSERT INTO vee_events (vee, t_ms, event) VALUES (?1, 9, ?2)",
                params![record.id.as_str(), to_json(&event).expect("json")],
            )
            .expect("a version 1 event");
        connection
            .execute(
                "INSERT INTO images (owner, name, record) VALUES ('alice', 'tiny', ?1)",
                [to_json(&image).expect("json")],
            )
            .expect("a version 1 image");
        (record, event, image)
    }

    #[test]
    fn a_version_1_database_migrates_and_keeps_its_data() {
        let (_dir, path) = store_file();
        let (record, event, image) = write_version_1_database(&path);

        let store = SqliteStore::open(&path).expect("open migrates");
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
        let snapshot = store.load().expect("load");
        assert_eq!(snapshot.vees, vec![record.clone()]);
        assert_eq!(snapshot.images, vec![image]);
        assert_eq!(snapshot.next_vee_seq, 40);
        assert_eq!(snapshot.networks, vec![]);
        assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID);
        assert_eq!(store.events(&record.id).expect("events"), vec![event]);

        let lan = conformance::network(FIRST_NETWORK_ID, "alice", "lan");
        store
            .commit(&[Change::InsertNetwork(lan.clone())])
            .expect("the migrated database takes networks");
        drop(store);
        let snapshot = SqliteStore::open(&path)
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(snapshot.networks, vec![lan]);
        assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 1);
        assert_eq!(snapshot.vees, vec![record]);
    }

    #[test]
    fn a_failing_second_step_leaves_a_version_1_database_as_it_was() {
        let (_dir, path) = store_file();
        let (record, _, _) = write_version_1_database(&path);
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("CREATE TABLE networks (x INTEGER)")
            .expect("create clashing table");

        let err = SqliteStore::open(&path).expect_err("the clash must fail migration");
        assert!(
            matches!(err, StoreError::Migration { version: 2, .. }),
            "{err:?}"
        );
        assert_eq!(user_version(&path), 1);
        let connection = Connection::open(&path).expect("open raw");
        let network_counters: i64 = connection
            .query_row(
                "SELECT count(*) FROM meta WHERE key = 'next_network_id'",
                [],
                |row| row.get(0),
            )
            .expect("query meta");
        assert_eq!(network_counters, 0, "the failed step is rolled back whole");
        let vees: i64 = connection
            .query_row(
                "SELECT count(*) FROM vees WHERE id = ?1",
                [record.id.as_str()],
                |row| row.get(0),
            )
            .expect("query vees");
        assert_eq!(vees, 1);
    }

    /// A database as veem wrote it before accounting and monitoring: schema version 2, holding
    /// a VEE with an event, an image, a network, and both counters ahead of their rows.
    fn write_version_2_database(path: &Path) -> (VeeRecord, VeeEvent, ImageRecord, Network) {
        let record = conformance::rich_record(FIRST_VEE_SEQ + 2);
        let event = conformance::event(&record.id, 9, VmiState::Defined);
        let image = conformance::image("alice", "tiny", 1);
        let lan = conformance::public_network(FIRST_NETWORK_ID + 3, "alice", "lan");
        let connection = Connection::open(path).expect("open raw");
        for step in &MIGRATIONS[..2] {
            connection
                .execute_batch(step)
                .expect("the version 2 schema");
        }
        connection
            .pragma_update(None, "user_version", 2)
            .expect("set user_version");
        connection
            .execute_batch(
                "UPDATE meta SET value = 40 WHERE key = 'next_vee_seq';
                 UPDATE meta SET value = 9 WHERE key = 'next_network_id';",
            )
            .expect("advance the counters");
        connection
            .execute(
                "INSERT INTO vees (id, seq, owner, state, host, generation, created_ms, updated_ms, record)
                 VALUES (?1, ?2, 'alice', 'initial', 'host-1', 1, 0, 0, ?3)",
                params![record.id.as_str(), record.id.seq() as i64, to_json(&record).expect("json")],
            )
            .expect("a version 2 VEE");
        connection
            .execute(
                "INSERT INTO vee_events (vee, t_ms, event) VALUES (?1, 9, ?2)",
                params![record.id.as_str(), to_json(&event).expect("json")],
            )
            .expect("a version 2 event");
        connection
            .execute(
                "INSERT INTO images (owner, name, record) VALUES ('alice', 'tiny', ?1)",
                [to_json(&image).expect("json")],
            )
            .expect("a version 2 image");
        connection
            .execute(
                "INSERT INTO networks (id, owner, name, record) VALUES (?1, 'alice', 'lan', ?2)",
                params![lan.id, to_json(&lan).expect("json")],
            )
            .expect("a version 2 network");
        (record, event, image, lan)
    }

    #[test]
    fn a_version_2_database_migrates_and_keeps_its_data() {
        let (_dir, path) = store_file();
        let (record, event, image, lan) = write_version_2_database(&path);

        let store = SqliteStore::open(&path).expect("open migrates");
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
        let snapshot = store.load().expect("load");
        let kept = Snapshot {
            vees: vec![record.clone()],
            images: vec![image],
            next_vee_seq: 40,
            networks: vec![lan],
            next_network_id: 9,
            listeners: vec![],
            subscriptions: vec![],
            sites: vec![],
            disabled_hosts: vec![],
        };
        assert_eq!(snapshot, kept);
        assert_eq!(store.events(&record.id).expect("events"), vec![event]);
        assert_eq!(
            store
                .accounting(&record.id, 0, u64::MAX)
                .expect("accounting"),
            vec![]
        );

        let listener = conformance::listener("bob", &record.id, 1_000);
        let accounted =
            conformance::accounted("bob", conformance::accounting_record(&record.id, 7));
        let subscription = conformance::subscription("sub-1", "bob", &[]);
        store
            .commit(&[
                Change::PutListener(listener.clone()),
                Change::AppendAccounting(vec![accounted.clone()]),
                Change::PutSubscription(subscription.clone()),
            ])
            .expect("the migrated database takes accounting and monitoring");
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            store.load().expect("load"),
            Snapshot {
                listeners: vec![listener],
                subscriptions: vec![subscription],
                ..kept
            }
        );
        assert_eq!(
            store
                .accounting(&record.id, 0, u64::MAX)
                .expect("accounting"),
            vec![accounted]
        );
        // The new tables' foreign keys are enforced on the old VEE table: purge cascades.
        store
            .commit(&[Change::PurgeVee(record.id.clone())])
            .expect("purge");
        assert_eq!(store.load().expect("load").listeners, vec![]);
        assert_eq!(
            store
                .accounting(&record.id, 0, u64::MAX)
                .expect("accounting"),
            vec![]
        );
    }

    #[test]
    fn a_failing_third_step_leaves_a_version_2_database_as_it_was() {
        let (_dir, path) = store_file();
        let (record, ..) = write_version_2_database(&path);
        // The step's last table clashes, so its earlier tables must be rolled back.
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("CREATE TABLE accounting_records (x INTEGER)")
            .expect("create clashing table");

        let err = SqliteStore::open(&path).expect_err("the clash must fail migration");
        assert!(
            matches!(err, StoreError::Migration { version: 3, .. }),
            "{err:?}"
        );
        assert_eq!(user_version(&path), 2);
        let connection = Connection::open(&path).expect("open raw");
        let step_3_tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_schema
                 WHERE name IN ('accounting_listeners', 'monitoring_subscriptions')",
                [],
                |row| row.get(0),
            )
            .expect("query schema");
        assert_eq!(step_3_tables, 0, "the failed step is rolled back whole");
        let vees: i64 = connection
            .query_row(
                "SELECT count(*) FROM vees WHERE id = ?1",
                [record.id.as_str()],
                |row| row.get(0),
            )
            .expect("query vees");
        assert_eq!(vees, 1);
    }

    /// A database as veem wrote it before the accounting outbox: schema version 3, holding a
    /// VEE with a listener and an accounting record.
    fn write_version_3_database(path: &Path) -> (VeeRecord, (Principal, AccountingRecord)) {
        let (record, ..) = write_version_2_database(path);
        let connection = Connection::open(path).expect("open raw");
        connection
            .execute_batch(MIGRATIONS[2])
            .expect("the version 3 schema");
        connection
            .pragma_update(None, "user_version", 3)
            .expect("set user_version");
        let accounted =
            conformance::accounted("bob", conformance::accounting_record(&record.id, 7));
        connection
            .execute(
                "INSERT INTO accounting_records
                     (vee, t0, owner, dt, state, host, cpu, memory_mb, cpu_time_ms, active_ms)
                 VALUES (?1, 7, 'bob', 1000, 'ACTIVE', 'host-1', 2, 1024, 7, 1000)",
                [record.id.as_str()],
            )
            .expect("a version 3 accounting record");
        (record, accounted)
    }

    #[test]
    fn a_version_3_database_migrates_and_keeps_its_data() {
        let (_dir, path) = store_file();
        let (record, accounted) = write_version_3_database(&path);
        let store = SqliteStore::open(&path).expect("open migrates");
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
        assert_eq!(
            store
                .accounting(&record.id, 0, u64::MAX)
                .expect("accounting"),
            vec![accounted.clone()]
        );
        assert_eq!(store.accounting_outbox().expect("outbox"), vec![]);
        let entry = conformance::outbox_entry(1, "bob", accounted.1);
        store
            .commit(&[Change::QueueAccounting(vec![entry.clone()])])
            .expect("the migrated database takes outbox entries");
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.accounting_outbox().expect("outbox"), vec![entry]);
        // The new table's foreign key is enforced on the old VEE table: purge cascades.
        store
            .commit(&[Change::PurgeVee(record.id.clone())])
            .expect("purge");
        assert_eq!(store.accounting_outbox().expect("outbox"), vec![]);
    }

    #[test]
    fn a_failing_fourth_step_leaves_a_version_3_database_as_it_was() {
        let (_dir, path) = store_file();
        let (record, accounted) = write_version_3_database(&path);
        // The step's index clashes, so its table must be rolled back.
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("CREATE TABLE accounting_outbox_by_vee (x INTEGER)")
            .expect("create clashing table");
        let err = SqliteStore::open(&path).expect_err("the clash must fail migration");
        assert!(
            matches!(err, StoreError::Migration { version: 4, .. }),
            "{err:?}"
        );
        assert_eq!(user_version(&path), 3);
        let connection = Connection::open(&path).expect("open raw");
        let outbox_tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'accounting_outbox'",
                [],
                |row| row.get(0),
            )
            .expect("query schema");
        assert_eq!(outbox_tables, 0, "the failed step is rolled back whole");
        let kept: i64 = connection
            .query_row(
                "SELECT count(*) FROM accounting_records WHERE vee = ?1 AND t0 = ?2",
                params![record.id.as_str(), accounted.1.t0 as i64],
                |row| row.get(0),
            )
            .expect("query accounting");
        assert_eq!(kept, 1);
    }

    #[test]
    fn outbox_rows_that_do_not_decode_are_reported_as_corrupt() {
        for sql in [
            "UPDATE accounting_outbox SET id = -1",
            "UPDATE accounting_outbox SET vee = 'not a vee'",
            "UPDATE accounting_outbox SET owner = 'not a principal'",
            "UPDATE accounting_outbox SET state = 'RUNNING'",
            "UPDATE accounting_outbox SET cpu_time_ms = -5",
        ] {
            let (_dir, path) = store_file();
            let store = SqliteStore::open(&path).expect("open");
            let record = conformance::plain_record(FIRST_VEE_SEQ);
            store
                .commit(&[
                    Change::InsertVee(record.clone()),
                    Change::QueueAccounting(vec![conformance::outbox_entry(
                        1,
                        "alice",
                        conformance::accounting_record(&record.id, 5),
                    )]),
                ])
                .expect("commit");
            let connection = Connection::open(&path).expect("open raw");
            connection
                .pragma_update(None, "foreign_keys", "OFF")
                .expect("foreign keys off");
            connection.execute_batch(sql).expect(sql);
            let err = store.accounting_outbox().expect_err(sql);
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
        }
    }

    #[test]
    fn a_database_from_a_newer_veem_is_refused_untouched() {
        let (_dir, path) = store_file();
        drop(SqliteStore::open(&path).expect("create"));
        let newer = i64::from(SCHEMA_VERSION) + 1;
        Connection::open(&path)
            .expect("open raw")
            .pragma_update(None, "user_version", newer)
            .expect("set user_version");

        let err = SqliteStore::open(&path).expect_err("a newer schema must be refused");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, known } if i64::from(found) == newer && known == SCHEMA_VERSION),
            "{err:?}"
        );
        assert_eq!(user_version(&path), newer);
    }

    #[test]
    fn a_failing_migration_step_leaves_the_database_as_it_was() {
        let (_dir, path) = store_file();
        // A table the first step creates already exists, so that step fails.
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("CREATE TABLE vees (x INTEGER)")
            .expect("create clashing table");

        let err = SqliteStore::open(&path).expect_err("the clash must fail migration");
        assert!(
            matches!(err, StoreError::Migration { version: 1, .. }),
            "{err:?}"
        );
        assert_eq!(user_version(&path), 0);
        let meta_exists: bool = Connection::open(&path)
            .expect("open raw")
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'meta'",
                [],
                |row| row.get(0),
            )
            .expect("query schema");
        assert!(
            !meta_exists,
            "the failed step's other tables must be rolled back"
        );
    }

    #[test]
    fn rows_that_do_not_decode_are_reported_as_corrupt() {
        let cases = [
            "UPDATE vees SET record = '{\"not\": \"a record\"}'",
            "UPDATE vees SET generation = 7",
            "UPDATE vees SET id = 'vee-00000099' WHERE seq = 1",
            "UPDATE images SET record = 'garbage'",
            "UPDATE meta SET value = -1 WHERE key = 'next_vee_seq'",
            "DELETE FROM meta",
            "UPDATE networks SET record = 'garbage'",
            "UPDATE networks SET id = 99",
            "UPDATE networks SET owner = 'bob'",
            "UPDATE networks SET name = 'other'",
            "UPDATE networks SET record = replace(record, '172.16.128.0/17', '172.16.128.1/17')",
            "UPDATE meta SET value = 16777217 WHERE key = 'next_network_id'",
            "UPDATE meta SET value = -1 WHERE key = 'next_network_id'",
            "DELETE FROM meta WHERE key = 'next_network_id'",
            "UPDATE accounting_listeners SET record = 'garbage'",
            "UPDATE accounting_listeners SET owner = 'bob'",
            "UPDATE monitoring_subscriptions SET record = '{}'",
            "UPDATE monitoring_subscriptions SET id = 'sub-2'",
            "UPDATE monitoring_subscriptions SET owner = 'bob'",
        ];
        for sql in cases {
            let store = SqliteStore::open_in_memory().expect("open");
            store
                .commit(&[
                    Change::InsertVee(conformance::rich_record(FIRST_VEE_SEQ)),
                    Change::PutImage(conformance::image("alice", "tiny", 1)),
                    Change::InsertNetwork(conformance::public_network(
                        FIRST_NETWORK_ID,
                        "alice",
                        "lan",
                    )),
                    // On a VEE of its own: the first one's id is damaged, and the key cascades.
                    Change::InsertVee(conformance::plain_record(FIRST_VEE_SEQ + 1)),
                    Change::PutListener(conformance::listener(
                        "alice",
                        &VeeId::from_seq(FIRST_VEE_SEQ + 1),
                        1_000,
                    )),
                    Change::PutSubscription(conformance::subscription("sub-1", "alice", &[])),
                ])
                .expect("seed");
            store.connection().execute_batch(sql).expect(sql);
            let err = store.load().expect_err(sql);
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
        }
    }

    #[test]
    fn a_network_counter_behind_its_rows_still_refuses_a_taken_id() {
        let store = SqliteStore::open_in_memory().expect("open");
        let lan = conformance::network(FIRST_NETWORK_ID + 4, "alice", "lan");
        store
            .commit(&[Change::InsertNetwork(lan.clone())])
            .expect("seed");
        store
            .connection()
            .execute_batch("UPDATE meta SET value = 1 WHERE key = 'next_network_id'")
            .expect("set the counter back by hand");
        let err = store
            .commit(&[Change::InsertNetwork(conformance::network(
                lan.id, "bob", "other",
            ))])
            .expect_err("the id is in use");
        assert!(
            matches!(err, StoreError::NetworkIdReused(id) if id == lan.id),
            "{err:?}"
        );
        assert_eq!(store.load().expect("load").networks, vec![lan]);
    }

    #[test]
    fn an_event_that_does_not_decode_is_reported_as_corrupt() {
        let store = SqliteStore::open_in_memory().expect("open");
        let record = conformance::rich_record(FIRST_VEE_SEQ);
        store
            .commit(&[
                Change::InsertVee(record.clone()),
                Change::AppendEvent(conformance::event(
                    &record.id,
                    5,
                    veem_model::VmiState::Defined,
                )),
            ])
            .expect("seed");
        store
            .connection()
            .execute_batch("UPDATE vee_events SET event = '[]'")
            .expect("damage");
        let err = store.events(&record.id).expect_err("damaged event");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn accounting_rows_that_do_not_decode_are_reported_as_corrupt() {
        let cases = [
            "UPDATE accounting_records SET owner = 'not a principal'",
            "UPDATE accounting_records SET state = 'RUNNING'",
            "UPDATE accounting_records SET host = '.hidden'",
            "UPDATE accounting_records SET dt = -1",
            "UPDATE accounting_records SET cpu = 4294967296",
            "UPDATE accounting_records SET cpu_time_ms = -5",
            "UPDATE accounting_records SET active_ms = -5",
        ];
        let record = conformance::plain_record(FIRST_VEE_SEQ);
        for sql in cases {
            let store = SqliteStore::open_in_memory().expect("open");
            store
                .commit(&[
                    Change::InsertVee(record.clone()),
                    Change::AppendAccounting(vec![conformance::accounted(
                        "alice",
                        conformance::accounting_record(&record.id, 5),
                    )]),
                ])
                .expect("seed");
            store.connection().execute_batch(sql).expect(sql);
            let err = store.accounting(&record.id, 0, u64::MAX).expect_err(sql);
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
        }
    }

    /// The range query reads the index in its own order: no table scan, no sort, however many
    /// records there are.
    #[test]
    fn the_accounting_range_query_reads_the_index_in_order() {
        let store = SqliteStore::open_in_memory().expect("open");
        let connection = store.connection();
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {ACCOUNTING_RANGE_QUERY}"))
            .expect("prepare");
        let plan: Vec<String> = statement
            .query_map(params!["vee-00000001", 0, 10], |row| row.get(3))
            .expect("explain")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING INDEX accounting_records_by_vee (vee=? AND t0>? AND t0<?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn numbers_beyond_sqlite_integers_are_refused_without_a_trace() {
        let store = SqliteStore::open_in_memory().expect("open");
        let mut late = conformance::rich_record(FIRST_VEE_SEQ);
        late.updated_ms = u64::MAX;
        let huge_id = VeeId::parse("vee-9999999999999999999").expect("valid id");
        let mut huge = conformance::rich_record(FIRST_VEE_SEQ);
        huge.id = huge_id;
        for record in [late, huge] {
            let err = store
                .commit(&[Change::InsertVee(record.clone())])
                .expect_err("out of range");
            assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
        }
        assert_eq!(store.load().expect("load").vees, vec![]);

        let vee = conformance::plain_record(FIRST_VEE_SEQ);
        store
            .commit(&[Change::InsertVee(vee.clone())])
            .expect("insert");
        let record = conformance::accounting_record(&vee.id, 1);
        for huge in [
            AccountingRecord {
                dt: u64::MAX,
                ..record.clone()
            },
            AccountingRecord {
                memory_mb: u64::MAX,
                ..record.clone()
            },
            AccountingRecord {
                cpu_time_ms: u64::MAX,
                ..record.clone()
            },
            AccountingRecord {
                active_ms: u64::MAX,
                ..record.clone()
            },
        ] {
            let err = store
                .commit(&[Change::AppendAccounting(vec![
                    conformance::accounted("alice", record.clone()),
                    conformance::accounted("alice", huge),
                ])])
                .expect_err("out of range");
            assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
        }
        assert_eq!(
            store.accounting(&vee.id, 0, u64::MAX).expect("accounting"),
            vec![]
        );
    }

    #[test]
    fn the_store_reports_its_backend() {
        let store = SqliteStore::open_in_memory().expect("open");
        assert_eq!(store.backend(), "sqlite");
    }
}
