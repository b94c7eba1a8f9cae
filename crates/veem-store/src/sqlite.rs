//! The SQLite backend: one connection behind a mutex, WAL with `synchronous=FULL`, and a schema
//! that keeps each record whole as JSON (the source of truth) beside the columns worth querying.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{ffi, params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use veem_model::{ImageName, ImageRecord, Network, Principal, VeeEvent, VeeId, VeeRecord};

use crate::{Change, Snapshot, Store, StoreError, NETWORK_ID_LIMIT};

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
];

/// The schema version this code writes: the number of migration steps.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const NEXT_VEE_SEQ_KEY: &str = "next_vee_seq";
const NEXT_NETWORK_ID_KEY: &str = "next_network_id";

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
        let vees = {
            let mut statement = tx
                .prepare_cached("SELECT id, generation, record FROM vees ORDER BY seq")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (id, generation, json) = row.map_err(read_error)?;
                decode_vee(&id, generation, &json)
            })
            .collect::<Result<Vec<_>, _>>()?
        };
        let images = {
            let mut statement = tx
                .prepare_cached("SELECT owner, name, record FROM images ORDER BY owner, name")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (owner, name, json) = row.map_err(read_error)?;
                decode_image(&owner, &name, &json)
            })
            .collect::<Result<Vec<_>, _>>()?
        };
        let networks = {
            let mut statement = tx
                .prepare_cached("SELECT id, owner, name, record FROM networks ORDER BY id")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (id, owner, name, json) = row.map_err(read_error)?;
                decode_network(id, &owner, &name, &json)
            })
            .collect::<Result<Vec<_>, _>>()?
        };
        let next_vee_seq = read_next_vee_seq(&tx)?;
        let next_network_id = read_next_network_id(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(Snapshot {
            vees,
            images,
            next_vee_seq,
            networks,
            next_network_id,
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
        Change::InsertVee(record) => insert_vee(tx, &mut counters.vee_seq, record),
        Change::UpdateVee {
            record,
            expected_generation,
        } => update_vee(tx, record, *expected_generation),
        Change::PurgeVee(id) => purge_vee(tx, id),
        Change::AppendEvent(event) => append_event(tx, event),
        Change::PutImage(image) => put_image(tx, image),
        Change::DeleteImage { owner, name } => delete_image(tx, owner, name),
        Change::InsertNetwork(network) => insert_network(tx, &mut counters.network_id, network),
        Change::DeleteNetwork { id } => delete_network(tx, *id),
    }
}

fn insert_vee(
    tx: &Transaction<'_>,
    counter: &mut Counter,
    record: &VeeRecord,
) -> Result<(), StoreError> {
    if record.generation != 1 {
        return Err(StoreError::InvalidChange(format!(
            "new VEE {} has generation {}, not 1",
            record.id, record.generation
        )));
    }
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
    // Its events go with it: `vee_events.vee` cascades on delete.
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
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.extended_code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            Err(StoreError::NotFound(format!("VEE {}", event.vee)))
        }
        Err(err) => Err(backend(err)),
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
fn to_sql_int(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::InvalidChange(format!("{what} {value} is too large to store")))
}

fn to_json(value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|err| StoreError::InvalidChange(format!("cannot encode as JSON: {err}")))
}

fn decode_vee(id: &str, generation: i64, json: &str) -> Result<VeeRecord, StoreError> {
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

fn decode_image(owner: &str, name: &str, json: &str) -> Result<ImageRecord, StoreError> {
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

fn decode_network(id: i64, owner: &str, name: &str, json: &str) -> Result<Network, StoreError> {
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

fn decode_event(vee: &VeeId, json: &str) -> Result<VeeEvent, StoreError> {
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
            "UPDATE vees SET id = 'vee-00000099'",
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
    }

    #[test]
    fn the_store_reports_its_backend() {
        let store = SqliteStore::open_in_memory().expect("open");
        assert_eq!(store.backend(), "sqlite");
    }
}
