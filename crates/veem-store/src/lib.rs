//! veem's persistence: the [`Store`] trait, its SQLite backend ([`SqliteStore`]), and, under the
//! cargo feature `conformance`, the `conformance` suite that every backend must pass.
//! Under the cargo feature `postgres`, a PostgreSQL backend too (`PgStore`, for several
//! front-ends on one database); SQLite stays the default and needs no server.
//! [`copy`] moves a site's books from one store into another, empty one (`veem store copy`).
//!
//! The VEEM keeps its whole state in memory and writes every change through a `Store` before it
//! acknowledges it, so a `Store` is small: load everything at start, commit a batch of changes
//! atomically and durably, read a VEE's history and its accounting. It is synchronous; the server
//! calls it from `spawn_blocking`. This is the only crate of veem that knows SQL: nothing outside
//! it builds a query, and nothing inside it decides what a change means (that is the VEEM's job;
//! the store checks only the invariants it owns: generations, id reuse, existence, a network's
//! name being unique per owner, one accounting listener per principal and VEE, and one
//! accounting outbox entry per id).
//!
//! The conformance suite is test support, so it is compiled only for this crate's own tests and
//! where the feature `conformance` asks for it: a backend living in another crate, or a test that
//! borrows its sample records, enables the feature in its `[dev-dependencies]`, and release builds
//! of the server do not carry it.

use veem_model::{
    AccountingListener, AccountingRecord, ImageName, ImageRecord, MonitoringSubscription, Network,
    Principal, Site, SiteName, VeeEvent, VeeId, VeeRecord,
};

mod blobs;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod copy;
#[cfg(feature = "postgres")]
mod lease;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
#[cfg(any(test, feature = "conformance"))]
pub mod test_postgres;

pub use blobs::{BlobStore, BLOB_CHUNK_BYTES};
#[cfg(feature = "postgres")]
pub use lease::{Campaign, LeaderView, LeaseView, Member, MemberView};
#[cfg(feature = "postgres")]
pub use postgres::{Fence, PgStore, PG_SCHEMA_VERSION};
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

/// The sequence number of the first VEE id a fresh store hands out (`vee-00000001`).
pub const FIRST_VEE_SEQ: u64 = 1;

/// The id of the first network a fresh store hands out.
pub const FIRST_NETWORK_ID: u32 = 1;

/// Network ids stay below this: a network's id is its VXLAN network identifier, 24 bits wide.
/// A store whose network counter reached it has no id left to hand out.
pub const NETWORK_ID_LIMIT: u32 = 1 << 24;

/// veem's persistence, as the VEEM needs it. Implementations are shared between threads.
pub trait Store: Send + Sync + 'static {
    /// Everything the VEEM needs at start: all VEEs (not purged) ordered by id sequence, all
    /// images ordered by owner then name, all networks ordered by id, the id counters, the
    /// accounting listeners and the monitoring subscriptions. Not the accounting records: they
    /// are history, read with [`Store::accounting`].
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Applies the changes in ONE transaction, all or nothing, in order; durable on disk when it
    /// returns `Ok` (the VEEM acknowledges only after). On `Err` nothing of the batch is stored.
    fn commit(&self, changes: &[Change]) -> Result<(), StoreError>;

    /// A VEE's recorded state changes, oldest (first appended) first; empty for a VEE the store
    /// does not know (never created, or purged).
    fn events(&self, vee: &VeeId) -> Result<Vec<VeeEvent>, StoreError>;

    /// The accounting records of `vee` whose `t0` is in `[from_ms, to_ms)`, each with the
    /// principal it was for, ordered by `t0`, then principal, then the order of appending;
    /// empty for a VEE the store does not know.
    fn accounting(
        &self,
        vee: &VeeId,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(Principal, AccountingRecord)>, StoreError>;

    /// Every accounting outbox entry (records made for a listener and not yet settled: neither
    /// acknowledged by it nor dropped), ordered by id, which is the order they were queued in.
    /// Read once at start, to resume the pushes.
    fn accounting_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;

    /// A short name for logs: "sqlite", "postgresql".
    fn backend(&self) -> &'static str;
}

/// One accounting record still to be pushed to a listener's callback: the accounting outbox.
/// The VEEM queues it in the same transaction as the record itself ([`Change::AppendAccounting`]
/// and [`Change::QueueAccounting`] in one commit), and settles it once the listener
/// acknowledged it ([`Change::SettleAccounting`]); what is left after a crash is pushed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Chosen by the VEEM, ascending in the order entries are queued; unique among the entries
    /// stored (an id may be used again once its entry is settled).
    pub id: u64,
    /// Where the record goes: the listener's callback when the record was made.
    pub callback: String,
    /// The listener's principal.
    pub owner: Principal,
    pub record: AccountingRecord,
}

/// What [`Store::load`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every VEE not purged, ordered by `id.seq()`.
    pub vees: Vec<VeeRecord>,
    /// Every image, ordered by owner, then name.
    pub images: Vec<ImageRecord>,
    /// The sequence number the next new VEE id must have at least.
    pub next_vee_seq: u64,
    /// Every network, ordered by id.
    pub networks: Vec<Network>,
    /// The id the next new network must have at least; [`NETWORK_ID_LIMIT`] when none is left.
    pub next_network_id: u32,
    /// Every accounting listener, ordered by its VEE's `id.seq()`, then owner.
    pub listeners: Vec<AccountingListener>,
    /// Every monitoring subscription, ordered by id.
    pub subscriptions: Vec<MonitoringSubscription>,
    /// Every registered site, ordered by name.
    pub sites: Vec<Site>,
    /// The hosts an operator disabled (they take no new VEE), by name, ordered: kept so that
    /// a restart or a new leader does not enable them behind the operator's back.
    pub disabled_hosts: Vec<String>,
}

/// One change of a [`Store::commit`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new VEE (generation must be 1). Its id's sequence (`id.seq()`) must be >= the stored
    /// counter; the counter becomes seq+1. Ids are never reused, also after purge.
    InsertVee(VeeRecord),
    /// A VEE copied from another store (`veem store copy`): inserted as by
    /// [`Change::InsertVee`], but with the generation it has there (at least 1), so that the
    /// copy is the same record.
    CopyVee(VeeRecord),
    /// The id counters become at least these (copied from another store, whose purged VEEs
    /// and deleted networks took ids that must never be handed out again); never lowered.
    /// `next_network_id` at most [`NETWORK_ID_LIMIT`].
    RaiseCounters {
        next_vee_seq: u64,
        next_network_id: u32,
    },
    /// Compare-and-swap: succeeds only if the stored generation == `expected_generation`; the
    /// stored record becomes `record`, whose generation must be `expected_generation + 1`.
    UpdateVee {
        record: VeeRecord,
        expected_generation: u64,
    },
    /// Removes the VEE with all its events, accounting listeners, accounting records and
    /// accounting outbox entries; the id counter is untouched.
    PurgeVee(VeeId),
    /// Records a state change of an existing VEE.
    AppendEvent(VeeEvent),
    /// Inserts or replaces the image (owner, name).
    PutImage(ImageRecord),
    DeleteImage {
        owner: Principal,
        name: ImageName,
    },
    /// A new network. Its id must be >= the stored network counter and below
    /// [`NETWORK_ID_LIMIT`]; the counter becomes id+1. Ids are never reused, also after delete.
    /// Its (owner, name) must be free: uniqueness among public networks is the VEEM's to check.
    InsertNetwork(Network),
    /// Replaces an existing network's record (its id, owner and name unchanged): how it is
    /// joined with other sites' LANs changed.
    UpdateNetwork(Network),
    /// Removes the network; the network counter is untouched.
    DeleteNetwork {
        id: u32,
    },
    /// Inserts or replaces the listener of (`owner`, `vee`); the VEE must exist.
    PutListener(AccountingListener),
    /// Removes the listener of (`owner`, `vee`); nothing if there is none.
    RemoveListener {
        owner: Principal,
        vee: VeeId,
    },
    /// Appends accounting records, each with the principal it was for (the listener's owner);
    /// every record's VEE must exist, and its times and amounts must fit a signed 64-bit
    /// integer. Meant for large batches: the server writes thousands of records a second.
    AppendAccounting(Vec<(Principal, AccountingRecord)>),
    /// Queues accounting outbox entries: each id must be free, each record's VEE must exist,
    /// and its times and amounts must fit a signed 64-bit integer. As hot as `AppendAccounting`,
    /// which it goes with.
    QueueAccounting(Vec<OutboxEntry>),
    /// Removes the outbox entries with these ids: their records were acknowledged or dropped.
    /// An id with no entry (settled already, or gone with its VEE's purge) is ignored.
    SettleAccounting(Vec<u64>),
    /// Inserts or replaces the subscription with this id.
    PutSubscription(MonitoringSubscription),
    /// Removes the subscription with this id; nothing if there is none.
    RemoveSubscription {
        id: String,
    },
    /// Registers a site; a site of that name must not be registered.
    InsertSite(Site),
    /// Forgets a registered site; nothing if there is none.
    RemoveSite(SiteName),
    /// Notes a host as disabled by an operator, or no longer; idempotent.
    SetHostDisabled {
        host: String,
        disabled: bool,
    },
}

/// Why a store operation failed. Every error of `commit` leaves the store as it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// CAS failure: the stored generation differs (`found` is None if the VEE does not exist).
    #[error("VEE {id} changed concurrently: expected generation {expected}, found {}", describe_found(.found))]
    Conflict {
        id: VeeId,
        expected: u64,
        found: Option<u64>,
    },
    /// An insert whose id's sequence is below the counter, or whose id exists.
    #[error("VEE id {0} was already handed out")]
    IdReused(VeeId),
    /// A network insert whose id is below the network counter, or whose id exists.
    #[error("network id {0} was already handed out")]
    NetworkIdReused(u32),
    /// A network insert whose owner already has a network of that name.
    #[error("{owner} already has a network named {name:?}")]
    NetworkNameTaken { owner: Principal, name: String },
    /// A site insert of a name already registered.
    #[error("a site named {0} is already registered")]
    SiteNameTaken(SiteName),
    /// A purge, delete, event, listener, accounting record or outbox entry of something the
    /// store does not hold.
    #[error("{0} not found")]
    NotFound(String),
    /// A change the store refuses on its face: a wrong generation, a number out of range.
    #[error("invalid change: {0}")]
    InvalidChange(String),
    /// A stored row cannot be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was written by a newer veem; opening it could lose data.
    #[error("database schema version {found} is newer than the {known} this veem knows")]
    SchemaTooNew { found: u32, known: u32 },
    /// A schema migration step failed; the database is left at the version before it.
    #[error("schema migration to version {version} failed")]
    Migration {
        version: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Bytes given for a blob do not hash to its name; nothing was stored.
    #[error("the bytes given for blob {expected} hash to {found}")]
    DigestMismatch { expected: String, found: String },
    /// A commit carried a leader lease that is no longer the leader's (another front-end took
    /// it, or it expired): nothing of the batch is stored, and the front-end must stop acting.
    #[error("this front-end's leader lease (generation {generation}) is no longer held")]
    Fenced { generation: u64 },
    /// The database failed.
    #[error("the database failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn describe_found(found: &Option<u64>) -> String {
    match found {
        Some(generation) => generation.to_string(),
        None => "no such VEE".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_message_tells_a_missing_vee_from_a_stale_generation() {
        let id = VeeId::from_seq(7);
        let stale = StoreError::Conflict {
            id: id.clone(),
            expected: 1,
            found: Some(3),
        };
        let missing = StoreError::Conflict {
            id,
            expected: 1,
            found: None,
        };
        assert_eq!(
            stale.to_string(),
            "VEE vee-00000007 changed concurrently: expected generation 1, found 3"
        );
        assert_eq!(
            missing.to_string(),
            "VEE vee-00000007 changed concurrently: expected generation 1, found no such VEE"
        );
    }
}
