//! The PostgreSQL backend: the schema of the SQLite backend in PostgreSQL's dialect (each record
//! whole as JSON text beside the columns worth querying), a `schema_version` table for its
//! migrations, and a small pool of connections.
//!
//! The [`Store`] trait is synchronous and the server calls it from `spawn_blocking` threads
//! (and, for a few reads, straight from async tasks). So the store owns a private tokio runtime
//! on a thread of its own, which drives the connections' sockets; a call waits for its queries
//! with `futures::executor::block_on`, which may be used on any thread, inside a runtime or not.
//! (The sync `postgres` crate would call `Runtime::block_on`, which panics inside a runtime, and
//! its clients panic when dropped from async code.)
//!
//! Pool: the committer is a single writer, but reads (`events`, `accounting`) run beside it, so
//! idle connections are kept in a `Mutex<Vec<Client>>` (at most [`MAX_IDLE`]) and a call takes
//! one or opens a new one. Two stores on one database stay correct: a commit locks the counter
//! rows it advances (`SELECT ... FOR UPDATE`), and migrations take an advisory lock.
//!
//! Durability: `commit` returns after PostgreSQL's COMMIT, durable under its default
//! `synchronous_commit = on`.

use std::sync::{Mutex, PoisonError};

use futures::executor::block_on;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Transaction};
use veem_model::{
    AccountingListener, AccountingRecord, ImageName, ImageRecord, MonitoringSubscription, Network,
    Principal, Site, SiteName, VeeEvent, VeeId, VeeRecord,
};

use crate::sqlite::{
    check_inserted_generation, check_raised_counters, decode_event, decode_image, decode_listener,
    decode_network, decode_site, decode_subscription, decode_vee, to_json, to_sql_int,
    AccountingRow, NEXT_NETWORK_ID_KEY, NEXT_VEE_SEQ_KEY,
};
use crate::{
    BlobStore, Change, OutboxEntry, Snapshot, Store, StoreError, BLOB_CHUNK_BYTES, NETWORK_ID_LIMIT,
};

/// The schema, one step per version, as in the SQLite backend (same versions, same tables).
/// Steps are only ever appended; a released step is never edited. Text is compared and sorted
/// with `COLLATE "C"` in queries, so that the order is bytewise as in SQLite whatever the
/// database's locale.
const MIGRATIONS: &[&str] = &[
    // Version 1. Events are ordered by an identity column, as SQLite orders them by rowid.
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    CREATE TABLE vees (
        id         TEXT PRIMARY KEY,
        seq        BIGINT NOT NULL UNIQUE,
        owner      TEXT NOT NULL,
        state      TEXT NOT NULL,
        host       TEXT,
        generation BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        record     TEXT NOT NULL
    );
    CREATE TABLE vee_events (
        seq   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        vee   TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        t_ms  BIGINT NOT NULL,
        event TEXT NOT NULL
    );
    CREATE INDEX vee_events_by_vee ON vee_events (vee, seq);
    CREATE TABLE images (
        owner  TEXT NOT NULL,
        name   TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (owner, name)
    );
    INSERT INTO meta (key, value) VALUES ('next_vee_seq', 1); -- FIRST_VEE_SEQ",
    // Version 2: virtual LANs.
    "CREATE TABLE networks (
        id     BIGINT PRIMARY KEY,
        owner  TEXT NOT NULL,
        name   TEXT NOT NULL,
        record TEXT NOT NULL,
        CONSTRAINT networks_owner_name UNIQUE (owner, name)
    );
    INSERT INTO meta (key, value) VALUES ('next_network_id', 1); -- FIRST_NETWORK_ID",
    // Version 3: accounting and monitoring. `seq` is the order of appending (SQLite's rowid).
    "CREATE TABLE accounting_listeners (
        vee    TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        owner  TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (vee, owner)
    );
    CREATE TABLE monitoring_subscriptions (
        id     TEXT PRIMARY KEY,
        owner  TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE accounting_records (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY,
        vee         TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        t0          BIGINT NOT NULL,
        owner       TEXT NOT NULL,
        dt          BIGINT NOT NULL,
        state       TEXT NOT NULL,
        host        TEXT,
        cpu         BIGINT NOT NULL,
        memory_mb   BIGINT NOT NULL,
        cpu_time_ms BIGINT NOT NULL,
        active_ms   BIGINT NOT NULL
    );
    CREATE INDEX accounting_records_by_vee ON accounting_records (vee, t0);",
    // Version 4: the accounting outbox.
    "CREATE TABLE accounting_outbox (
        id          BIGINT PRIMARY KEY,
        vee         TEXT NOT NULL REFERENCES vees (id) ON DELETE CASCADE,
        callback    TEXT NOT NULL,
        owner       TEXT NOT NULL,
        t0          BIGINT NOT NULL,
        dt          BIGINT NOT NULL,
        state       TEXT NOT NULL,
        host        TEXT,
        cpu         BIGINT NOT NULL,
        memory_mb   BIGINT NOT NULL,
        cpu_time_ms BIGINT NOT NULL,
        active_ms   BIGINT NOT NULL
    );
    CREATE INDEX accounting_outbox_by_vee ON accounting_outbox (vee);",
    // Version 5: the sites of the federation, by name.
    "CREATE TABLE sites (
        name   TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );",
    // Version 6 (PostgreSQL only: a SQLite site has one front-end): the leader lease, one row,
    // and the front-ends that share the database (see `lease.rs`).
    "CREATE TABLE cluster_lease (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        leader      TEXT NOT NULL,
        url         TEXT NOT NULL,
        incarnation BIGINT NOT NULL,
        generation  BIGINT NOT NULL,
        since       TIMESTAMPTZ NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE cluster_members (
        name    TEXT PRIMARY KEY,
        url     TEXT NOT NULL,
        is_leader BOOLEAN NOT NULL,
        since   TIMESTAMPTZ NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL
    );",
    // Version 7 (PostgreSQL only: a SQLite site has one front-end, which keeps image bytes
    // in its data_dir): image bytes by digest, in chunks of BLOB_CHUNK_BYTES.
    "CREATE TABLE image_blobs (
        sha256   TEXT NOT NULL,
        chunk_no BIGINT NOT NULL,
        bytes    BYTEA NOT NULL,
        PRIMARY KEY (sha256, chunk_no)
    );",
    // Version 8: the hosts an operator disabled (SQLite's version 6).
    "CREATE TABLE disabled_hosts (
        host TEXT PRIMARY KEY
    );",
];

/// The schema version this code writes. Versions 1 to 5 are the SQLite backend's, table for
/// table; then PostgreSQL's own (6: the leader lease, 7: image blobs), and 8: SQLite's 6.
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a session may sit in a transaction without sending anything (see `open`).
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "-c idle_in_transaction_session_timeout=3000";

/// Idle connections kept for the next call; more may be open while calls run at once.
const MAX_IDLE: usize = 4;

/// The key of the advisory lock that serializes migrations of one database ("veem" in ASCII).
const MIGRATION_LOCK: i64 = 0x7665_656d;

/// A [`Store`] in one PostgreSQL database.
pub struct PgStore {
    config: tokio_postgres::Config,
    runtime: tokio::runtime::Handle,
    idle: Mutex<Vec<Client>>,
    /// The leader lease this front-end holds, checked by every commit once set (see
    /// `lease.rs`); `None`: commits are not fenced (a single writer, or tests).
    pub(crate) fence: Mutex<Option<Fence>>,
    /// Set when a commit was refused because the lease it carried is no longer the leader's.
    pub(crate) fenced_out: std::sync::atomic::AtomicBool,
    /// Dropped with the store, which ends the runtime's thread (and the connections with it).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgresql://user@host:port/db`, without TLS: the
    /// database is expected on the machine or a trusted network) and migrates it to
    /// [`PG_SCHEMA_VERSION`]. The database must exist.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(backend)?;
        if config.get_options().is_none() {
            // A front-end stopped (SIGSTOP, a frozen VM) in the middle of a commit would hold
            // the lease row's lock, and so the leadership, for as long as it is stopped: the
            // server ends such a session, which rolls its transaction back.
            config.options(IDLE_IN_TRANSACTION_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| StoreError::Backend(Box::new(err)))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("veem-store-pg".to_owned())
            .spawn(move || {
                // Runs the connections until the store is dropped; the runtime is dropped here,
                // outside any async context.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|err| StoreError::Backend(Box::new(err)))?;
        let store = Self {
            config,
            runtime: handle,
            idle: Mutex::new(Vec::new()),
            fence: Mutex::new(None),
            fenced_out: std::sync::atomic::AtomicBool::new(false),
            _stop: stop,
        };
        let mut client = store.client()?;
        let migrated = block_on(migrate(&mut client));
        store.give_back(client);
        migrated?;
        Ok(store)
    }

    /// An idle connection, or a new one.
    fn client(&self) -> Result<Client, StoreError> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some(client) = idle.pop() {
                if !client.is_closed() {
                    return Ok(client);
                }
            }
        }
        let config = self.config.clone();
        let connecting = self.runtime.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            // The connection ends by itself when its client is dropped or the server goes.
            tokio::spawn(connection);
            Ok::<_, tokio_postgres::Error>(client)
        });
        block_on(connecting)
            .map_err(|err| StoreError::Backend(Box::new(err)))?
            .map_err(backend)
    }

    fn give_back(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }

    /// Runs `work` on a pooled connection.
    pub(crate) fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client()?;
        let result = block_on(work(&mut client));
        self.give_back(client);
        result
    }
}

/// The first key of the advisory locks that make a put and a delete of one blob take turns
/// ("blob" in ASCII; the second key is a hash of the digest). Two-key locks never meet the
/// one-key migration lock.
const BLOB_LOCK: i32 = 0x626c_6f62;

impl BlobStore for PgStore {
    fn put_blob(&self, sha256: &str, reader: &mut dyn std::io::Read) -> Result<u64, StoreError> {
        use sha2::{Digest, Sha256};
        self.with_client(async |client: &mut Client| {
            let tx = client.transaction().await.map_err(backend)?;
            lock_blob(&tx, sha256).await?;
            let stored: Option<i64> = tx
                .query_one(
                    "SELECT sum(length(bytes))::BIGINT FROM image_blobs WHERE sha256 = $1",
                    &[&sha256],
                )
                .await
                .map_err(backend)?
                .try_get(0)
                .map_err(read_error)?;
            if let Some(size) = stored {
                return u64::try_from(size)
                    .map_err(|_| StoreError::Corrupt(format!("blob {sha256} has size {size}")));
            }
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            let mut chunk = vec![0u8; BLOB_CHUNK_BYTES];
            for chunk_no in 0i64.. {
                let filled =
                    fill(reader, &mut chunk).map_err(|err| StoreError::Backend(Box::new(err)))?;
                if filled == 0 {
                    break;
                }
                let bytes = &chunk[..filled];
                hasher.update(bytes);
                size += filled as u64;
                tx.execute(
                    "INSERT INTO image_blobs (sha256, chunk_no, bytes) VALUES ($1, $2, $3)",
                    &[&sha256, &chunk_no, &bytes],
                )
                .await
                .map_err(backend)?;
            }
            let found: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if found != sha256 {
                // Dropping the transaction rolls it back: nothing of the blob is stored.
                return Err(StoreError::DigestMismatch {
                    expected: sha256.to_owned(),
                    found,
                });
            }
            if size == 0 {
                return Err(StoreError::InvalidChange(
                    "a blob holds at least one byte".to_owned(),
                ));
            }
            tx.commit().await.map_err(backend)?;
            Ok(size)
        })
    }

    fn has_blob(&self, sha256: &str) -> Result<bool, StoreError> {
        self.with_client(async |client: &mut Client| {
            client
                .query_opt(
                    "SELECT 1 FROM image_blobs WHERE sha256 = $1 AND chunk_no = 0",
                    &[&sha256],
                )
                .await
                .map(|row| row.is_some())
                .map_err(backend)
        })
    }

    fn read_blob(&self, sha256: &str, out: &mut dyn std::io::Write) -> Result<bool, StoreError> {
        self.with_client(async |client: &mut Client| {
            let statement = client
                .prepare("SELECT bytes FROM image_blobs WHERE sha256 = $1 AND chunk_no = $2")
                .await
                .map_err(backend)?;
            let mut chunk_no: i64 = 0;
            while let Some(row) = client
                .query_opt(&statement, &[&sha256, &chunk_no])
                .await
                .map_err(backend)?
            {
                let bytes: &[u8] = row.try_get(0).map_err(read_error)?;
                out.write_all(bytes)
                    .map_err(|err| StoreError::Backend(Box::new(err)))?;
                chunk_no += 1;
            }
            Ok(chunk_no > 0)
        })
    }

    fn delete_blob_if_unnamed(&self, sha256: &str) -> Result<bool, StoreError> {
        self.with_client(async |client: &mut Client| {
            let tx = client.transaction().await.map_err(backend)?;
            lock_blob(&tx, sha256).await?;
            let deleted = tx
                .execute(
                    "DELETE FROM image_blobs WHERE sha256 = $1 AND NOT EXISTS
                       (SELECT 1 FROM images WHERE (record::jsonb) ->> 'sha256' = $1)",
                    &[&sha256],
                )
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(deleted > 0)
        })
    }
}

/// Takes the blob's advisory lock until the transaction ends.
async fn lock_blob(tx: &Transaction<'_>, sha256: &str) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&BLOB_LOCK, &sha256],
    )
    .await
    .map(|_| ())
    .map_err(backend)
}

/// Reads into `buf` until it is full or the reader ends: how many bytes it holds.
fn fill(reader: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Brings the schema to [`PG_SCHEMA_VERSION`] in one transaction (PostgreSQL's DDL is
/// transactional), under an advisory lock so that two front-ends starting at once do not both
/// run a step.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(backend)?;
    let stored: Option<i32> = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(backend)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(read_error)?;
    let found = u32::try_from(stored.unwrap_or(0))
        .map_err(|_| StoreError::Corrupt(format!("schema version {stored:?} is negative")))?;
    if found > PG_SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: PG_SCHEMA_VERSION,
        });
    }
    if found == PG_SCHEMA_VERSION {
        return tx.commit().await.map_err(backend);
    }
    for (version, step) in (1..).zip(MIGRATIONS).skip(found as usize) {
        tx.batch_execute(step)
            .await
            .map_err(|source| StoreError::Migration {
                version,
                source: Box::new(source),
            })?;
    }
    let version = PG_SCHEMA_VERSION as i32;
    if stored.is_some() {
        tx.execute("UPDATE schema_version SET version = $1", &[&version])
            .await
    } else {
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
    }
    .map_err(backend)?;
    tx.commit().await.map_err(backend)
}

impl Store for PgStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.with_client(async |client: &mut Client| {
            // One snapshot for all the reads.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(backend)?;
            let vees = query(
                &tx,
                "SELECT id, generation, record FROM vees ORDER BY seq",
                &[],
            )
            .await?
            .iter()
            .map(|row| decode_vee(&text(row, 0)?, int(row, 1)?, &text(row, 2)?))
            .collect::<Result<_, _>>()?;
            let images = query(
                &tx,
                r#"SELECT owner, name, record FROM images
                   ORDER BY owner COLLATE "C", name COLLATE "C""#,
                &[],
            )
            .await?
            .iter()
            .map(|row| decode_image(&text(row, 0)?, &text(row, 1)?, &text(row, 2)?))
            .collect::<Result<_, _>>()?;
            let networks = query(
                &tx,
                "SELECT id, owner, name, record FROM networks ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|row| decode_network(int(row, 0)?, &text(row, 1)?, &text(row, 2)?, &text(row, 3)?))
            .collect::<Result<_, _>>()?;
            let listeners = query(
                &tx,
                r#"SELECT listener.vee, listener.owner, listener.record
                   FROM accounting_listeners AS listener
                   LEFT JOIN vees ON vees.id = listener.vee
                   ORDER BY vees.seq, listener.owner COLLATE "C""#,
                &[],
            )
            .await?
            .iter()
            .map(|row| decode_listener(&text(row, 0)?, &text(row, 1)?, &text(row, 2)?))
            .collect::<Result<_, _>>()?;
            let subscriptions = query(
                &tx,
                r#"SELECT id, owner, record FROM monitoring_subscriptions ORDER BY id COLLATE "C""#,
                &[],
            )
            .await?
            .iter()
            .map(|row| decode_subscription(&text(row, 0)?, &text(row, 1)?, &text(row, 2)?))
            .collect::<Result<_, _>>()?;
            let sites = query(
                &tx,
                r#"SELECT name, record FROM sites ORDER BY name COLLATE "C""#,
                &[],
            )
            .await?
            .iter()
            .map(|row| decode_site(&text(row, 0)?, &text(row, 1)?))
            .collect::<Result<_, _>>()?;
            let disabled_hosts = query(
                &tx,
                r#"SELECT host FROM disabled_hosts ORDER BY host COLLATE "C""#,
                &[],
            )
            .await?
            .iter()
            .map(|row| text(row, 0))
            .collect::<Result<_, _>>()?;
            let next_vee_seq = read_next_vee_seq(&tx, false).await?;
            let next_network_id = read_next_network_id(&tx, false).await?;
            tx.commit().await.map_err(backend)?;
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
        })
    }

    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let fence = *self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        self.with_client(async |client: &mut Client| {
            let tx = client.transaction().await.map_err(backend)?;
            if let Some(fence) = fence {
                if let Err(e) = check_fence(&tx, fence).await {
                    if matches!(e, StoreError::Fenced { .. }) {
                        self.fenced_out
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    return Err(e);
                }
            }
            let mut counters = Counters::default();
            for change in changes {
                apply(&tx, &mut counters, change).await?;
            }
            counters.save(&tx).await?;
            // An error return drops `tx`, which rolls the whole batch back.
            tx.commit().await.map_err(backend)
        })
    }

    fn events(&self, vee: &VeeId) -> Result<Vec<VeeEvent>, StoreError> {
        self.with_client(async |client: &mut Client| {
            client
                .query(
                    "SELECT event FROM vee_events WHERE vee = $1 ORDER BY seq",
                    &[&vee.as_str()],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(|row| decode_event(vee, &text(row, 0)?))
                .collect()
        })
    }

    fn accounting(
        &self,
        vee: &VeeId,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(Principal, AccountingRecord)>, StoreError> {
        // As in SQLite: stored times fit an i64, so the range is cut at i64::MAX.
        let (Ok(first), Some(last)) = (i64::try_from(from_ms), to_ms.checked_sub(1)) else {
            return Ok(Vec::new());
        };
        let last = i64::try_from(last).unwrap_or(i64::MAX);
        if first > last {
            return Ok(Vec::new());
        }
        self.with_client(async |client: &mut Client| {
            client
                .query(
                    r#"SELECT owner, t0, dt, state, host, cpu, memory_mb, cpu_time_ms, active_ms
                       FROM accounting_records
                       WHERE vee = $1 AND t0 BETWEEN $2 AND $3
                       ORDER BY t0, owner COLLATE "C", seq"#,
                    &[&vee.as_str(), &first, &last],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(|row| accounting_row(row, 0)?.decode(vee))
                .collect()
        })
    }

    fn accounting_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_client(async |client: &mut Client| {
            client
                .query(
                    "SELECT id, vee, callback, owner, t0, dt, state, host, cpu, memory_mb,
                            cpu_time_ms, active_ms
                     FROM accounting_outbox ORDER BY id",
                    &[],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(|row| {
                    let id = int(row, 0)?;
                    let id = u64::try_from(id)
                        .map_err(|_| StoreError::Corrupt(format!("accounting outbox id {id}")))?;
                    let vee = text(row, 1)?;
                    let vee = VeeId::parse(&vee).map_err(|err| {
                        StoreError::Corrupt(format!(
                            "accounting outbox entry {id} names {vee:?}: {err}"
                        ))
                    })?;
                    let (owner, record) = accounting_row(row, 3)?.decode(&vee)?;
                    Ok(OutboxEntry {
                        id,
                        callback: text(row, 2)?,
                        owner,
                        record,
                    })
                })
                .collect()
        })
    }

    fn backend(&self) -> &'static str {
        "postgresql"
    }
}

/// The columns of an accounting row from `first` on: owner, t0, dt, state, host, cpu,
/// memory_mb, cpu_time_ms, active_ms.
fn accounting_row(row: &Row, first: usize) -> Result<AccountingRow, StoreError> {
    Ok(AccountingRow {
        owner: text(row, first)?,
        t0: int(row, first + 1)?,
        dt: int(row, first + 2)?,
        state: text(row, first + 3)?,
        host: row.try_get(first + 4).map_err(read_error)?,
        cpu: int(row, first + 5)?,
        memory_mb: int(row, first + 6)?,
        cpu_time_ms: int(row, first + 7)?,
        active_ms: int(row, first + 8)?,
    })
}

fn text(row: &Row, column: usize) -> Result<String, StoreError> {
    row.try_get(column).map_err(read_error)
}

fn int(row: &Row, column: usize) -> Result<i64, StoreError> {
    row.try_get(column).map_err(read_error)
}

async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    tx.query(sql, params).await.map_err(backend)
}

/// The id counters during one commit: read (and row-locked) on the first insert, written once
/// at the end.
#[derive(Default)]
struct Counters {
    vee_seq: Option<u64>,
    vee_seq_changed: bool,
    network_id: Option<u64>,
    network_id_changed: bool,
}

impl Counters {
    async fn vee_seq(&mut self, tx: &Transaction<'_>) -> Result<u64, StoreError> {
        match self.vee_seq {
            Some(next) => Ok(next),
            None => {
                let next = read_next_vee_seq(tx, true).await?;
                self.vee_seq = Some(next);
                Ok(next)
            }
        }
    }

    async fn network_id(&mut self, tx: &Transaction<'_>) -> Result<u64, StoreError> {
        match self.network_id {
            Some(next) => Ok(next),
            None => {
                let next = u64::from(read_next_network_id(tx, true).await?);
                self.network_id = Some(next);
                Ok(next)
            }
        }
    }

    async fn save(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        for (key, next, changed) in [
            (NEXT_VEE_SEQ_KEY, self.vee_seq, self.vee_seq_changed),
            (
                NEXT_NETWORK_ID_KEY,
                self.network_id,
                self.network_id_changed,
            ),
        ] {
            let (Some(next), true) = (next, changed) else {
                continue;
            };
            let next = to_sql_int(key, next)?;
            tx.execute("UPDATE meta SET value = $1 WHERE key = $2", &[&next, &key])
                .await
                .map_err(backend)?;
        }
        Ok(())
    }
}

/// A counter of `meta`; `for_update` locks its row until the transaction ends, so that two
/// front-ends committing at once do not both hand out one id.
async fn read_counter(
    tx: &Transaction<'_>,
    key: &str,
    what: &str,
    for_update: bool,
) -> Result<i64, StoreError> {
    let sql = if for_update {
        "SELECT value FROM meta WHERE key = $1 FOR UPDATE"
    } else {
        "SELECT value FROM meta WHERE key = $1"
    };
    let row = tx.query_opt(sql, &[&key]).await.map_err(backend)?;
    let row = row.ok_or_else(|| StoreError::Corrupt(format!("the {what} is missing")))?;
    int(&row, 0)
}

async fn read_next_vee_seq(tx: &Transaction<'_>, for_update: bool) -> Result<u64, StoreError> {
    let stored = read_counter(tx, NEXT_VEE_SEQ_KEY, "id counter", for_update).await?;
    u64::try_from(stored)
        .map_err(|_| StoreError::Corrupt(format!("the id counter is negative: {stored}")))
}

async fn read_next_network_id(tx: &Transaction<'_>, for_update: bool) -> Result<u32, StoreError> {
    let stored = read_counter(tx, NEXT_NETWORK_ID_KEY, "network id counter", for_update).await?;
    u32::try_from(stored)
        .ok()
        .filter(|&next| next <= NETWORK_ID_LIMIT)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the network id counter {stored} is outside 0..={NETWORK_ID_LIMIT}"
            ))
        })
}

async fn apply(
    tx: &Transaction<'_>,
    counters: &mut Counters,
    change: &Change,
) -> Result<(), StoreError> {
    match change {
        Change::InsertVee(record) => insert_vee(tx, counters, record, false).await,
        Change::CopyVee(record) => insert_vee(tx, counters, record, true).await,
        Change::RaiseCounters {
            next_vee_seq,
            next_network_id,
        } => {
            check_raised_counters(*next_vee_seq, *next_network_id)?;
            if *next_vee_seq > counters.vee_seq(tx).await? {
                counters.vee_seq = Some(*next_vee_seq);
                counters.vee_seq_changed = true;
            }
            if u64::from(*next_network_id) > counters.network_id(tx).await? {
                counters.network_id = Some(u64::from(*next_network_id));
                counters.network_id_changed = true;
            }
            Ok(())
        }
        Change::UpdateVee {
            record,
            expected_generation,
        } => update_vee(tx, record, *expected_generation).await,
        Change::PurgeVee(id) => {
            let deleted = execute(tx, "DELETE FROM vees WHERE id = $1", &[&id.as_str()]).await?;
            if deleted == 0 {
                return Err(StoreError::NotFound(format!("VEE {id}")));
            }
            Ok(())
        }
        Change::AppendEvent(event) => append_event(tx, event).await,
        Change::PutImage(image) => put_image(tx, image).await,
        Change::DeleteImage { owner, name } => delete_image(tx, owner, name).await,
        Change::InsertNetwork(network) => insert_network(tx, counters, network).await,
        Change::UpdateNetwork(network) => update_network(tx, network).await,
        Change::DeleteNetwork { id } => {
            let deleted =
                execute(tx, "DELETE FROM networks WHERE id = $1", &[&i64::from(*id)]).await?;
            if deleted == 0 {
                return Err(StoreError::NotFound(format!("network {id}")));
            }
            Ok(())
        }
        Change::PutListener(listener) => put_listener(tx, listener).await,
        Change::RemoveListener { owner, vee } => execute(
            tx,
            "DELETE FROM accounting_listeners WHERE vee = $1 AND owner = $2",
            &[&vee.as_str(), &owner.as_str()],
        )
        .await
        .map(drop),
        Change::AppendAccounting(records) => append_accounting(tx, records).await,
        Change::QueueAccounting(entries) => queue_accounting(tx, entries).await,
        Change::SettleAccounting(ids) => {
            // An id beyond the stored integers was never stored: nothing to settle.
            let ids: Vec<i64> = ids
                .iter()
                .filter_map(|&id| i64::try_from(id).ok())
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            execute(
                tx,
                "DELETE FROM accounting_outbox WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map(drop)
        }
        Change::PutSubscription(subscription) => put_subscription(tx, subscription).await,
        Change::RemoveSubscription { id } => execute(
            tx,
            "DELETE FROM monitoring_subscriptions WHERE id = $1",
            &[id],
        )
        .await
        .map(drop),
        Change::InsertSite(site) => insert_site(tx, site).await,
        Change::RemoveSite(name) => remove_site(tx, name).await,
        Change::SetHostDisabled { host, disabled } => {
            let sql = if *disabled {
                "INSERT INTO disabled_hosts (host) VALUES ($1) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM disabled_hosts WHERE host = $1"
            };
            execute(tx, sql, &[host]).await.map(drop)
        }
    }
}

async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    tx.execute(sql, params).await.map_err(backend)
}

async fn insert_vee(
    tx: &Transaction<'_>,
    counters: &mut Counters,
    record: &VeeRecord,
    copied: bool,
) -> Result<(), StoreError> {
    check_inserted_generation(record, copied)?;
    let seq = record.id.seq();
    if seq >= i64::MAX as u64 {
        return Err(StoreError::InvalidChange(format!(
            "VEE id {} is beyond the largest sequence this store keeps",
            record.id
        )));
    }
    if seq < counters.vee_seq(tx).await? {
        return Err(StoreError::IdReused(record.id.clone()));
    }
    let generation = to_sql_int("generation", record.generation)?;
    let created_ms = to_sql_int("created_ms", record.created_ms)?;
    let updated_ms = to_sql_int("updated_ms", record.updated_ms)?;
    let json = to_json(record)?;
    let inserted = execute(
        tx,
        "INSERT INTO vees (id, seq, owner, state, host, generation, created_ms, updated_ms, record)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT DO NOTHING",
        &[
            &record.id.as_str(),
            &(seq as i64),
            &record.owner.as_str(),
            &record.state.as_str(),
            &record.host.as_ref().map(|host| host.as_str()),
            &generation,
            &created_ms,
            &updated_ms,
            &json,
        ],
    )
    .await?;
    if inserted == 0 {
        // Only a counter that fell behind its rows (a database edited by hand) gets here.
        return Err(StoreError::IdReused(record.id.clone()));
    }
    counters.vee_seq = Some(seq + 1);
    counters.vee_seq_changed = true;
    Ok(())
}

async fn update_vee(
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
    let generation = to_sql_int("generation", record.generation)?;
    let created_ms = to_sql_int("created_ms", record.created_ms)?;
    let updated_ms = to_sql_int("updated_ms", record.updated_ms)?;
    let json = to_json(record)?;
    let expected = to_sql_int("generation", expected_generation)?;
    let updated = execute(
        tx,
        "UPDATE vees SET owner = $2, state = $3, host = $4, generation = $5,
             created_ms = $6, updated_ms = $7, record = $8
         WHERE id = $1 AND generation = $9",
        &[
            &record.id.as_str(),
            &record.owner.as_str(),
            &record.state.as_str(),
            &record.host.as_ref().map(|host| host.as_str()),
            &generation,
            &created_ms,
            &updated_ms,
            &json,
            &expected,
        ],
    )
    .await?;
    if updated == 1 {
        return Ok(());
    }
    let found = tx
        .query_opt(
            "SELECT generation FROM vees WHERE id = $1",
            &[&record.id.as_str()],
        )
        .await
        .map_err(backend)?
        .map(|row| {
            let stored = int(&row, 0)?;
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

async fn append_event(tx: &Transaction<'_>, event: &VeeEvent) -> Result<(), StoreError> {
    let t_ms = to_sql_int("event time", event.t_ms)?;
    let json = to_json(event)?;
    tx.execute(
        "INSERT INTO vee_events (vee, t_ms, event) VALUES ($1, $2, $3)",
        &[&event.vee.as_str(), &t_ms, &json],
    )
    .await
    .map(drop)
    .map_err(|err| missing_vee(err, event.vee.as_str()))
}

/// A row that names a VEE the store does not hold fails its foreign key; `vee` is the VEE named
/// (for a batch, PostgreSQL's message says which row failed).
fn missing_vee(err: tokio_postgres::Error, vee: &str) -> StoreError {
    if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
        let named = err
            .as_db_error()
            .and_then(|db| db.detail())
            .and_then(|detail| key_value(detail))
            .unwrap_or(vee);
        return StoreError::NotFound(format!("VEE {named}"));
    }
    backend(err)
}

/// The value of a constraint error's detail, "Key (vee)=(vee-00000002) is not present ...".
fn key_value(detail: &str) -> Option<&str> {
    let (_, rest) = detail.split_once(")=(")?;
    rest.split_once(')').map(|(value, _)| value)
}

async fn put_image(tx: &Transaction<'_>, image: &ImageRecord) -> Result<(), StoreError> {
    let json = to_json(image)?;
    execute(
        tx,
        "INSERT INTO images (owner, name, record) VALUES ($1, $2, $3)
         ON CONFLICT (owner, name) DO UPDATE SET record = excluded.record",
        &[&image.owner.as_str(), &image.name.as_str(), &json],
    )
    .await
    .map(drop)
}

async fn delete_image(
    tx: &Transaction<'_>,
    owner: &Principal,
    name: &ImageName,
) -> Result<(), StoreError> {
    let deleted = execute(
        tx,
        "DELETE FROM images WHERE owner = $1 AND name = $2",
        &[&owner.as_str(), &name.as_str()],
    )
    .await?;
    if deleted == 0 {
        return Err(StoreError::NotFound(format!("image {name} of {owner}")));
    }
    Ok(())
}

async fn insert_network(
    tx: &Transaction<'_>,
    counters: &mut Counters,
    network: &Network,
) -> Result<(), StoreError> {
    if network.id >= NETWORK_ID_LIMIT {
        return Err(StoreError::InvalidChange(format!(
            "network id {} is not below {NETWORK_ID_LIMIT}, the VXLAN identifiers",
            network.id
        )));
    }
    if u64::from(network.id) < counters.network_id(tx).await? {
        return Err(StoreError::NetworkIdReused(network.id));
    }
    let json = to_json(network)?;
    let result = tx
        .execute(
            "INSERT INTO networks (id, owner, name, record) VALUES ($1, $2, $3, $4)",
            &[
                &i64::from(network.id),
                &network.owner.as_str(),
                &network.name,
                &json,
            ],
        )
        .await;
    if let Err(err) = result {
        if err.code() != Some(&SqlState::UNIQUE_VIOLATION) {
            return Err(backend(err));
        }
        let constraint = err.as_db_error().and_then(|db| db.constraint());
        return Err(if constraint == Some("networks_owner_name") {
            StoreError::NetworkNameTaken {
                owner: network.owner.clone(),
                name: network.name.clone(),
            }
        } else {
            // Only a counter that fell behind its rows (a database edited by hand) gets here.
            StoreError::NetworkIdReused(network.id)
        });
    }
    counters.network_id = Some(u64::from(network.id) + 1);
    counters.network_id_changed = true;
    Ok(())
}

async fn update_network(tx: &Transaction<'_>, network: &Network) -> Result<(), StoreError> {
    let json = to_json(network)?;
    let updated = execute(
        tx,
        "UPDATE networks SET record = $1 WHERE id = $2 AND owner = $3 AND name = $4",
        &[
            &json,
            &i64::from(network.id),
            &network.owner.as_str(),
            &network.name,
        ],
    )
    .await?;
    if updated == 0 {
        return Err(StoreError::NotFound(format!(
            "network {} ({} of {})",
            network.id, network.name, network.owner
        )));
    }
    Ok(())
}

async fn put_listener(
    tx: &Transaction<'_>,
    listener: &AccountingListener,
) -> Result<(), StoreError> {
    let json = to_json(listener)?;
    tx.execute(
        "INSERT INTO accounting_listeners (vee, owner, record) VALUES ($1, $2, $3)
         ON CONFLICT (vee, owner) DO UPDATE SET record = excluded.record",
        &[&listener.vee.as_str(), &listener.owner.as_str(), &json],
    )
    .await
    .map(drop)
    .map_err(|err| missing_vee(err, listener.vee.as_str()))
}

/// An accounting batch as columns, for one `INSERT ... SELECT FROM unnest(...)`: one statement
/// and one round trip for thousands of records.
#[derive(Default)]
struct AccountingColumns {
    vee: Vec<String>,
    t0: Vec<i64>,
    owner: Vec<String>,
    dt: Vec<i64>,
    state: Vec<String>,
    host: Vec<Option<String>>,
    cpu: Vec<i64>,
    memory_mb: Vec<i64>,
    cpu_time_ms: Vec<i64>,
    active_ms: Vec<i64>,
}

impl AccountingColumns {
    fn push(
        &mut self,
        what: &str,
        owner: &Principal,
        record: &AccountingRecord,
    ) -> Result<(), StoreError> {
        let int = |field: &str, value: u64| {
            i64::try_from(value).map_err(|_| {
                StoreError::InvalidChange(format!(
                    "{what} {field} {value} of VEE {} is too large to store",
                    record.vee
                ))
            })
        };
        self.vee.push(record.vee.as_str().to_owned());
        self.t0.push(int("t0", record.t0)?);
        self.owner.push(owner.as_str().to_owned());
        self.dt.push(int("dt", record.dt)?);
        self.state.push(record.state.as_str().to_owned());
        self.host
            .push(record.host.as_ref().map(|host| host.as_str().to_owned()));
        self.cpu.push(i64::from(record.cpu));
        self.memory_mb.push(int("memory_mb", record.memory_mb)?);
        self.cpu_time_ms
            .push(int("cpu_time_ms", record.cpu_time_ms)?);
        self.active_ms.push(int("active_ms", record.active_ms)?);
        Ok(())
    }
}

async fn append_accounting(
    tx: &Transaction<'_>,
    records: &[(Principal, AccountingRecord)],
) -> Result<(), StoreError> {
    let Some((_, first)) = records.first() else {
        return Ok(());
    };
    let mut columns = AccountingColumns::default();
    for (owner, record) in records {
        columns.push("accounting", owner, record)?;
    }
    let c = &columns;
    // `WITH ORDINALITY ... ORDER BY` keeps the order of appending in the identity column.
    tx.execute(
        "INSERT INTO accounting_records
             (vee, t0, owner, dt, state, host, cpu, memory_mb, cpu_time_ms, active_ms)
         SELECT vee, t0, owner, dt, state, host, cpu, memory_mb, cpu_time_ms, active_ms
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                     $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
              WITH ORDINALITY
              AS batch (vee, t0, owner, dt, state, host, cpu, memory_mb, cpu_time_ms,
                        active_ms, n)
         ORDER BY n",
        &[
            &c.vee,
            &c.t0,
            &c.owner,
            &c.dt,
            &c.state,
            &c.host,
            &c.cpu,
            &c.memory_mb,
            &c.cpu_time_ms,
            &c.active_ms,
        ],
    )
    .await
    .map(drop)
    .map_err(|err| missing_vee(err, first.vee.as_str()))
}

async fn queue_accounting(tx: &Transaction<'_>, entries: &[OutboxEntry]) -> Result<(), StoreError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let mut columns = AccountingColumns::default();
    let mut ids = Vec::with_capacity(entries.len());
    let mut callbacks = Vec::with_capacity(entries.len());
    for entry in entries {
        ids.push(i64::try_from(entry.id).map_err(|_| {
            StoreError::InvalidChange(format!(
                "accounting outbox id {} of VEE {} is too large to store",
                entry.id, entry.record.vee
            ))
        })?);
        callbacks.push(entry.callback.as_str());
        columns.push("accounting outbox", &entry.owner, &entry.record)?;
    }
    let c = &columns;
    let result = tx
        .execute(
            "INSERT INTO accounting_outbox
                 (id, vee, callback, owner, t0, dt, state, host, cpu, memory_mb, cpu_time_ms,
                  active_ms)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                  $5::bigint[], $6::bigint[], $7::text[], $8::text[],
                                  $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])",
            &[
                &ids,
                &c.vee,
                &callbacks,
                &c.owner,
                &c.t0,
                &c.dt,
                &c.state,
                &c.host,
                &c.cpu,
                &c.memory_mb,
                &c.cpu_time_ms,
                &c.active_ms,
            ],
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let id = err
                .as_db_error()
                .and_then(|db| db.detail())
                .and_then(key_value)
                .unwrap_or("of this batch")
                .to_owned();
            Err(StoreError::InvalidChange(format!(
                "accounting outbox entry {id} is queued already"
            )))
        }
        Err(err) => Err(missing_vee(err, first.record.vee.as_str())),
    }
}

async fn put_subscription(
    tx: &Transaction<'_>,
    subscription: &MonitoringSubscription,
) -> Result<(), StoreError> {
    let json = to_json(subscription)?;
    execute(
        tx,
        "INSERT INTO monitoring_subscriptions (id, owner, record) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, record = excluded.record",
        &[&subscription.id, &subscription.owner.as_str(), &json],
    )
    .await
    .map(drop)
}

async fn insert_site(tx: &Transaction<'_>, site: &Site) -> Result<(), StoreError> {
    let json = to_json(site)?;
    let inserted = execute(
        tx,
        "INSERT INTO sites (name, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&site.name.as_str(), &json],
    )
    .await?;
    if inserted == 0 {
        return Err(StoreError::SiteNameTaken(site.name.clone()));
    }
    Ok(())
}

async fn remove_site(tx: &Transaction<'_>, name: &SiteName) -> Result<(), StoreError> {
    execute(tx, "DELETE FROM sites WHERE name = $1", &[&name.as_str()])
        .await
        .map(drop)
}

pub(crate) fn backend(err: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(Box::new(err))
}

/// A value of the wrong type in a column is bad data, not a failing database.
pub(crate) fn read_error(err: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// The lease a commit carries: only the live generation's commits are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub generation: u64,
}

/// The first statement of a fenced commit: the lease `fence` names must be the live one. The
/// row stays share-locked to the commit's end, so a front-end taking the lease waits for it.
async fn check_fence(tx: &Transaction<'_>, fence: Fence) -> Result<(), StoreError> {
    let live = tx
        .query_opt(
            "SELECT 1 FROM cluster_lease
             WHERE id = 1 AND generation = $1 AND expires_at > now() FOR SHARE",
            &[&(fence.generation as i64)],
        )
        .await
        .map_err(backend)?;
    match live {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced {
            generation: fence.generation,
        }),
    }
}
