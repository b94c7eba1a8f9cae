//! The properties every [`Store`] backend must have, as plain functions that panic on a
//! violation.
//!
//! A backend's tests call [`run_all`] with a function that makes a fresh, empty store, e.g.
//! `run_all(&|| Box::new(SqliteStore::open_in_memory().expect("open")))`, or call the
//! properties of [`PROPERTIES`] one by one. Each property gets its own fresh store. The module is
//! public under the feature `conformance` (it needs nothing beyond the crate's own dependencies)
//! so that stores in other crates can be held to the same contract; it is test support, which is
//! why it asserts, and why it is off by default.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use veem_model::{
    AccountingListener, AccountingRecord, Context, DiskSource, DiskSpec, EventType, Generated,
    HostId, ImageFormat, ImageName, ImageRecord, InitModel, Ipv4Cidr, KernelBoot, MigrationNote,
    MigrationTarget, MonitoringSubscription, Network, NicAddress, NicSpec, Phase, Principal, Site,
    SiteName, VeeDescriptor, VeeEvent, VeeId, VeeRecord, VeemState, VmiState,
};

use crate::{
    Change, OutboxEntry, Snapshot, Store, StoreError, FIRST_NETWORK_ID, FIRST_VEE_SEQ,
    NETWORK_ID_LIMIT,
};

/// One property: panics if `store` (fresh and empty) breaks it.
pub type Property = fn(&dyn Store);

/// Every property, by name.
pub const PROPERTIES: &[(&str, Property)] = &[
    ("a_fresh_store_is_empty", a_fresh_store_is_empty),
    ("rich_records_round_trip", rich_records_round_trip),
    ("load_orders_vees_by_sequence", load_orders_vees_by_sequence),
    (
        "an_update_with_the_stored_generation_replaces_the_record",
        an_update_with_the_stored_generation_replaces_the_record,
    ),
    (
        "an_update_with_a_stale_generation_conflicts_and_changes_nothing",
        an_update_with_a_stale_generation_conflicts_and_changes_nothing,
    ),
    (
        "an_update_of_a_missing_vee_conflicts",
        an_update_of_a_missing_vee_conflicts,
    ),
    (
        "wrong_new_generations_are_refused",
        wrong_new_generations_are_refused,
    ),
    (
        "a_failing_change_rolls_back_the_whole_batch",
        a_failing_change_rolls_back_the_whole_batch,
    ),
    (
        "the_id_counter_only_grows_and_ids_are_never_reused",
        the_id_counter_only_grows_and_ids_are_never_reused,
    ),
    (
        "a_duplicate_insert_is_an_id_reuse",
        a_duplicate_insert_is_an_id_reuse,
    ),
    (
        "purge_removes_the_vee_and_its_events",
        purge_removes_the_vee_and_its_events,
    ),
    (
        "events_come_back_in_the_order_they_were_appended",
        events_come_back_in_the_order_they_were_appended,
    ),
    (
        "images_are_put_replaced_deleted_and_listed",
        images_are_put_replaced_deleted_and_listed,
    ),
    (
        "networks_round_trip_in_id_order",
        networks_round_trip_in_id_order,
    ),
    (
        "a_taken_network_name_fails_the_whole_batch",
        a_taken_network_name_fails_the_whole_batch,
    ),
    (
        "networks_are_deleted_and_their_ids_never_reused",
        networks_are_deleted_and_their_ids_never_reused,
    ),
    (
        "network_ids_stay_below_the_vxlan_limit",
        network_ids_stay_below_the_vxlan_limit,
    ),
    (
        "a_network_is_updated_in_place_and_only_if_it_exists",
        a_network_is_updated_in_place_and_only_if_it_exists,
    ),
    (
        "listeners_are_put_replaced_removed_and_listed",
        listeners_are_put_replaced_removed_and_listed,
    ),
    (
        "accounting_comes_back_by_time_then_owner",
        accounting_comes_back_by_time_then_owner,
    ),
    (
        "accounting_ranges_include_from_and_exclude_to",
        accounting_ranges_include_from_and_exclude_to,
    ),
    (
        "listeners_and_accounting_need_their_vee",
        listeners_and_accounting_need_their_vee,
    ),
    (
        "purge_removes_the_vees_listeners_and_accounting",
        purge_removes_the_vees_listeners_and_accounting,
    ),
    (
        "subscriptions_are_put_replaced_removed_and_listed",
        subscriptions_are_put_replaced_removed_and_listed,
    ),
    (
        "sites_are_registered_once_listed_by_name_and_removed",
        sites_are_registered_once_listed_by_name_and_removed,
    ),
    (
        "a_disabled_host_stays_disabled_until_enabled",
        a_disabled_host_stays_disabled_until_enabled,
    ),
    (
        "the_outbox_comes_back_in_id_order_until_settled",
        the_outbox_comes_back_in_id_order_until_settled,
    ),
    (
        "outbox_entries_are_committed_with_their_records_or_not_at_all",
        outbox_entries_are_committed_with_their_records_or_not_at_all,
    ),
    (
        "outbox_entries_need_their_vee_and_a_free_id",
        outbox_entries_need_their_vee_and_a_free_id,
    ),
    (
        "purge_removes_the_vees_outbox_entries",
        purge_removes_the_vees_outbox_entries,
    ),
    (
        "a_copied_vee_keeps_its_generation",
        a_copied_vee_keeps_its_generation,
    ),
    (
        "counters_are_raised_never_lowered",
        counters_are_raised_never_lowered,
    ),
];

/// Runs every property, each on a store from `make`, and panics naming the ones that failed
/// (each failure's own message is printed as it happens).
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    let mut failed = Vec::new();
    let mut backend = "store";
    for (name, property) in PROPERTIES {
        let store = make();
        backend = store.backend();
        if catch_unwind(AssertUnwindSafe(|| property(store.as_ref()))).is_err() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "the {backend} store breaks {} of {} conformance properties: {failed:?}",
        failed.len(),
        PROPERTIES.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Test data.

fn principal(name: &str) -> Principal {
    Principal::new(name).expect("test principals are valid names")
}

fn site(name: &str) -> SiteName {
    SiteName::new(name).expect("test sites are valid names")
}

fn host(name: &str) -> HostId {
    HostId::new(name).expect("test hosts are valid names")
}

/// A VEE with every optional part of the record and descriptor filled in.
pub fn rich_record(seq: u64) -> VeeRecord {
    let descriptor = VeeDescriptor {
        name: "db \"primary\" — ünïcode".to_owned(),
        cpu: 2,
        cpu_max: Some(8),
        memory_mb: 1024,
        memory_max_mb: Some(8192),
        disks: vec![
            DiskSpec {
                source: Some(DiskSource::Image(
                    ImageName::new("debian-12.qcow2").expect("valid image name"),
                )),
                size_gb: Some(20),
                target: Some("vda".to_owned()),
                clone: true,
                kind: veem_model::DiskKind::Disk,
            },
            DiskSpec {
                source: Some(DiskSource::Url(
                    "https://images.example/data.raw?x=1&y=2".to_owned(),
                )),
                size_gb: None,
                target: Some("vdb".to_owned()),
                clone: false,
                kind: veem_model::DiskKind::Disk,
            },
            DiskSpec {
                source: None,
                size_gb: Some(1),
                target: Some("vdc".to_owned()),
                clone: true,
                kind: veem_model::DiskKind::Disk,
            },
        ],
        nics: vec![
            NicSpec {
                network: "public".to_owned(),
                target: Some("eth0".to_owned()),
                ip: Some(std::net::Ipv4Addr::new(10, 77, 0, 9)),
            },
            NicSpec {
                network: "private".to_owned(),
                target: Some("eth1".to_owned()),
                ip: None,
            },
        ],
        hypervisor: Some("kvm".to_owned()),
        tags: vec!["database".to_owned(), "tier:gold".to_owned()],
        anti_affinity: vec!["database".to_owned()],
        raw: "<cpu mode='host-passthrough'/>\n".to_owned(),
        context: Context {
            properties: BTreeMap::from([
                ("db_host".to_owned(), "10.0.0.2".to_owned()),
                ("motd".to_owned(), "line one\nline \"two\"".to_owned()),
            ]),
            ovf_env: None,
        },
        fqn_prefix: Some("tid.customers.EasyJet.services.Web.replicas.1".to_owned()),
        restart_attempts: 3,
        boot: Some(KernelBoot {
            kernel: DiskSource::Image(ImageName::new("vmlinuz").expect("valid image name")),
            initrd: Some(DiskSource::Url("file:///srv/initrd.img".to_owned())),
            cmdline: "console=ttyS0 root=/dev/vda1 quiet=\"yes\"".to_owned(),
        }),
        sites: vec![site("east"), site("west")],
    };
    VeeRecord {
        id: VeeId::from_seq(seq),
        owner: principal("alice"),
        descriptor: descriptor.into(),
        model: InitModel::Twophase,
        state: VmiState::Initial,
        veem_state: VeemState::Hold,
        phase: Some(Phase::Booting),
        host: Some(host("host-1")),
        holder: Some(host("host-1")),
        reserved: true,
        pending_reason: Some("waiting for 2 cpus".to_owned()),
        last_error: Some("boot of host-0 failed: no disk".to_owned()),
        has_saved_memory: true,
        restarts: 2,
        monitoring_token: Some("0123456789abcdef0123456789abcdef".to_owned()),
        generated: Generated {
            // A replica's name is kept with the record (its JSON): no column of its own.
            name: Some("db-2".to_owned()),
            nics: vec![
                NicAddress {
                    target: "eth0".to_owned(),
                    network: "public".to_owned(),
                    mac: "52:54:00:12:34:56".to_owned(),
                    ip: Some("192.0.2.10".to_owned()),
                    network_id: Some(7),
                },
                NicAddress {
                    target: "eth1".to_owned(),
                    network: "private".to_owned(),
                    mac: "52:54:00:12:34:57".to_owned(),
                    ip: None,
                    network_id: None,
                },
            ],
        },
        site: Some(site("east")),
        remote: Some(VeeId::from_seq(seq + 1_000)),
        // A migration noted before its send is what a restarted primary settles: kept whole.
        migration: Some(MigrationNote {
            to: MigrationTarget::Site(site("west"), VeeId::from_seq(seq + 2_000)),
            paused_for_move: true,
            was: VmiState::Suspended,
        }),
        created_ms: 1_700_000_000_123,
        updated_ms: 1_700_000_000_456,
        generation: 1,
    }
}

/// A VEE with a whole OVF environment as its context instead of properties.
pub fn ovf_env_record(seq: u64) -> VeeRecord {
    let mut record = plain_record(seq);
    record.owner = principal("bob");
    std::sync::Arc::make_mut(&mut record.descriptor)
        .context
        .ovf_env = Some("<?xml version=\"1.0\"?>\n<Environment>&amp;</Environment>".to_owned());
    record
}

/// A VEE as InitializeVEEs first defines it, with a minimal descriptor.
pub fn plain_record(seq: u64) -> VeeRecord {
    VeeRecord::defined(
        VeeId::from_seq(seq),
        principal("alice"),
        VeeDescriptor::minimal(1, 64),
        InitModel::Besteffort,
        1_000,
    )
}

pub fn event(vee: &VeeId, t_ms: u64, to: VmiState) -> VeeEvent {
    VeeEvent {
        vee: vee.clone(),
        t_ms,
        from: None,
        to,
        veem_state: VeemState::Stopped,
        host: None,
        detail: None,
    }
}

pub fn image(owner: &str, name: &str, size_bytes: u64) -> ImageRecord {
    ImageRecord {
        owner: principal(owner),
        name: ImageName::new(name).expect("test images are valid names"),
        format: ImageFormat::Qcow2,
        size_bytes,
        created_ms: 42,
        // Not the digest of any bytes: the store keeps it as it is given.
        sha256: format!("{size_bytes:064x}"),
    }
}

/// A private network of `owner` on 10.10.0.0/24, made at time 7.
pub fn network(id: u32, owner: &str, name: &str) -> Network {
    Network {
        id,
        owner: principal(owner),
        name: name.to_owned(),
        cidr: Ipv4Cidr::parse("10.10.0.0/24").expect("a valid test range"),
        public: false,
        created_ms: 7,
        extension: None,
    }
}

/// A public network with every field away from [`network`]'s.
pub fn public_network(id: u32, owner: &str, name: &str) -> Network {
    Network {
        cidr: Ipv4Cidr::parse("172.16.128.0/17").expect("a valid test range"),
        public: true,
        created_ms: 1_700_000_000_789,
        ..network(id, owner, name)
    }
}

/// A listener of `owner` on `vee`, every `interval_ms`, registered at time 5.
pub fn listener(owner: &str, vee: &VeeId, interval_ms: u64) -> AccountingListener {
    AccountingListener {
        owner: principal(owner),
        vee: vee.clone(),
        callback: format!("https://{owner}.example/accounting?vee={vee}&q=\"ü\""),
        interval_ms,
        registered_ms: 5,
    }
}

/// What `vee` used in `[t0, t0 + 1000)`: ACTIVE on host-1 the whole time.
pub fn accounting_record(vee: &VeeId, t0: u64) -> AccountingRecord {
    AccountingRecord {
        vee: vee.clone(),
        t0,
        dt: 1_000,
        state: VmiState::Active,
        host: Some(host("host-1")),
        cpu: 2,
        memory_mb: 1_024,
        cpu_time_ms: t0 % 977,
        active_ms: 1_000,
    }
}

/// `record`, as stored for (sent to) `owner`.
pub fn accounted(owner: &str, record: AccountingRecord) -> (Principal, AccountingRecord) {
    (principal(owner), record)
}

/// The outbox entry `id`: `record` still to be pushed to `owner`'s callback.
pub fn outbox_entry(id: u64, owner: &str, record: AccountingRecord) -> OutboxEntry {
    OutboxEntry {
        id,
        callback: format!("https://{owner}.example/accounting?q=\"ü\""),
        owner: principal(owner),
        record,
    }
}

/// A subscription of `owner` to `types`, made at time 11.
pub fn subscription(id: &str, owner: &str, types: &[EventType]) -> MonitoringSubscription {
    MonitoringSubscription {
        id: id.to_owned(),
        owner: principal(owner),
        callback: format!("https://{owner}.example/events/{id}"),
        types: types.to_vec(),
        created_ms: 11,
    }
}

/// The CAS update of `record` to its next generation, after `edit`.
pub fn update(record: &VeeRecord, edit: impl FnOnce(&mut VeeRecord)) -> (VeeRecord, Change) {
    let mut next = record.clone();
    edit(&mut next);
    next.generation = record.generation + 1;
    let change = Change::UpdateVee {
        record: next.clone(),
        expected_generation: record.generation,
    };
    (next, change)
}

/// Books holding one of everything a store keeps, a purged VEE and a deleted network
/// (so its counters are ahead of its rows), and a VEE updated past generation 1.
pub fn sample_books(store: &dyn Store) {
    let rich = rich_record(1);
    let plain = plain_record(2);
    let purged = plain_record(3);
    let accounted_vee = rich_record(4);
    let mut changes = vec![
        Change::InsertNetwork(network(1, "sm-a", "lan")),
        Change::InsertNetwork(network(2, "sm-a", "gone")),
        Change::PutImage(image("sm-a", "tiny", 1024)),
        Change::InsertSite(registered_site("remote")),
        Change::SetHostDisabled {
            host: "host-2".to_owned(),
            disabled: true,
        },
        Change::InsertVee(rich.clone()),
        Change::InsertVee(plain.clone()),
        Change::InsertVee(purged.clone()),
        Change::InsertVee(accounted_vee.clone()),
        Change::AppendEvent(event(&rich.id, 10, VmiState::Active)),
        Change::AppendEvent(event(&rich.id, 20, VmiState::Suspended)),
        Change::AppendEvent(event(&purged.id, 30, VmiState::Active)),
        Change::PutListener(listener("sm-a", &accounted_vee.id, 1000)),
        Change::AppendAccounting(
            (0..12)
                .map(|i| accounted("sm-a", accounting_record(&accounted_vee.id, i * 100)))
                .collect(),
        ),
        Change::QueueAccounting(vec![
            outbox_entry(5, "sm-a", accounting_record(&accounted_vee.id, 1100)),
            outbox_entry(9, "sm-a", accounting_record(&rich.id, 1200)),
        ]),
        Change::PutSubscription(subscription("sub-1", "sm-a", &[EventType::State])),
    ];
    let (_, update) = update(&rich, |r| r.state = VmiState::Active);
    changes.push(update);
    store.commit(&changes).expect("the sample books");
    store
        .commit(&[
            Change::PurgeVee(purged.id.clone()),
            Change::DeleteNetwork { id: 2 },
        ])
        .expect("purge and delete");
}

// ---------------------------------------------------------------------------------------------
// Helpers that name the step that failed.

fn commit(store: &dyn Store, changes: &[Change]) {
    if let Err(err) = store.commit(changes) {
        panic!("commit of {changes:#?} failed: {err:?}");
    }
}

fn commit_err(store: &dyn Store, changes: &[Change]) -> StoreError {
    match store.commit(changes) {
        Ok(()) => panic!("commit of {changes:#?} succeeded but must fail"),
        Err(err) => err,
    }
}

fn load(store: &dyn Store) -> Snapshot {
    store.load().expect("load")
}

fn events(store: &dyn Store, vee: &VeeId) -> Vec<VeeEvent> {
    store.events(vee).expect("events")
}

fn accounting(store: &dyn Store, vee: &VeeId, from_ms: u64, to_ms: u64) -> Vec<AccountingRecord> {
    store
        .accounting(vee, from_ms, to_ms)
        .unwrap_or_else(|err| panic!("accounting of {vee} in [{from_ms}, {to_ms}): {err:?}"))
        .into_iter()
        .map(|(_, record)| record)
        .collect()
}

/// All the accounting of `vee`, with owners.
fn all_accounting(store: &dyn Store, vee: &VeeId) -> Vec<(Principal, AccountingRecord)> {
    store
        .accounting(vee, 0, u64::MAX)
        .unwrap_or_else(|err| panic!("accounting of {vee}: {err:?}"))
}

fn outbox(store: &dyn Store) -> Vec<OutboxEntry> {
    store.accounting_outbox().expect("the accounting outbox")
}

fn seqs(snapshot: &Snapshot) -> Vec<u64> {
    snapshot.vees.iter().map(|vee| vee.id.seq()).collect()
}

// ---------------------------------------------------------------------------------------------
// The properties.

pub fn a_fresh_store_is_empty(store: &dyn Store) {
    let empty = Snapshot {
        vees: vec![],
        images: vec![],
        next_vee_seq: FIRST_VEE_SEQ,
        networks: vec![],
        next_network_id: FIRST_NETWORK_ID,
        listeners: vec![],
        subscriptions: vec![],
        sites: vec![],
        disabled_hosts: vec![],
    };
    assert_eq!(load(store), empty);
    assert_eq!(outbox(store), vec![]);
    assert_eq!(events(store, &VeeId::from_seq(FIRST_VEE_SEQ)), vec![]);
    assert_eq!(
        all_accounting(store, &VeeId::from_seq(FIRST_VEE_SEQ)),
        vec![]
    );
    commit(store, &[]);
    assert_eq!(load(store), empty, "an empty commit changes nothing");
}

pub fn rich_records_round_trip(store: &dyn Store) {
    let first = rich_record(FIRST_VEE_SEQ);
    let second = ovf_env_record(FIRST_VEE_SEQ + 1);
    let third = plain_record(FIRST_VEE_SEQ + 2);
    commit(
        store,
        &[
            Change::InsertVee(first.clone()),
            Change::InsertVee(second.clone()),
        ],
    );
    commit(store, &[Change::InsertVee(third.clone())]);
    let snapshot = load(store);
    assert_eq!(snapshot.vees, vec![first, second, third]);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 3);
    assert_eq!(snapshot.images, vec![]);
}

pub fn load_orders_vees_by_sequence(store: &dyn Store) {
    // 100000000 sorts before 99999999 as text: the order must come from the number.
    let ids = [9, 10, 99_999_999, 100_000_000];
    let records: Vec<VeeRecord> = ids.iter().map(|&seq| plain_record(seq)).collect();
    commit(
        store,
        &[
            Change::InsertVee(records[0].clone()),
            Change::InsertVee(records[1].clone()),
        ],
    );
    commit(
        store,
        &[
            Change::InsertVee(records[2].clone()),
            Change::InsertVee(records[3].clone()),
        ],
    );
    // Rewriting the oldest row must not move it to the end.
    let (updated, change) = update(&records[0], |r| r.state = VmiState::Active);
    commit(store, &[change]);

    let snapshot = load(store);
    assert_eq!(seqs(&snapshot), ids.to_vec());
    assert_eq!(snapshot.vees[0], updated);
    assert_eq!(snapshot.next_vee_seq, 100_000_001);
}

pub fn an_update_with_the_stored_generation_replaces_the_record(store: &dyn Store) {
    let record = plain_record(FIRST_VEE_SEQ);
    commit(store, &[Change::InsertVee(record.clone())]);

    let (placed, change) = update(&record, |r| {
        r.state = VmiState::Initial;
        r.veem_state = VeemState::Hold;
        r.phase = Some(Phase::Booting);
        r.host = Some(host("host-7"));
        r.updated_ms = 2_000;
    });
    commit(store, &[change]);
    assert_eq!(load(store).vees, vec![placed.clone()]);

    let (running, change) = update(&placed, |r| {
        r.state = VmiState::Active;
        r.veem_state = VeemState::Active;
        r.phase = None;
        std::sync::Arc::make_mut(&mut r.descriptor).memory_mb = 2048;
        r.updated_ms = 3_000;
    });
    commit(store, &[change]);
    let snapshot = load(store);
    assert_eq!(snapshot.vees, vec![running]);
    assert_eq!(snapshot.vees[0].generation, 3);
    assert_eq!(
        snapshot.next_vee_seq,
        FIRST_VEE_SEQ + 1,
        "updates leave the counter alone"
    );
}

pub fn an_update_with_a_stale_generation_conflicts_and_changes_nothing(store: &dyn Store) {
    let record = rich_record(FIRST_VEE_SEQ);
    commit(store, &[Change::InsertVee(record.clone())]);
    let (_, first_writer) = update(&record, |r| r.state = VmiState::Active);
    commit(store, &[first_writer]);
    let before = load(store);

    // A second writer that read generation 1 too.
    let (_, second_writer) = update(&record, |r| r.state = VmiState::Destroyed);
    let err = commit_err(store, &[second_writer]);
    assert!(
        matches!(&err, StoreError::Conflict { id, expected: 1, found: Some(2) } if *id == record.id),
        "{err:?}"
    );
    assert_eq!(load(store), before);
}

pub fn an_update_of_a_missing_vee_conflicts(store: &dyn Store) {
    let never_inserted = plain_record(FIRST_VEE_SEQ + 5);
    let (_, change) = update(&never_inserted, |_| {});
    let err = commit_err(store, &[change]);
    assert!(
        matches!(&err, StoreError::Conflict { id, expected: 1, found: None } if *id == never_inserted.id),
        "{err:?}"
    );

    let purged = plain_record(FIRST_VEE_SEQ + 10);
    commit(store, &[Change::InsertVee(purged.clone())]);
    commit(store, &[Change::PurgeVee(purged.id.clone())]);
    let (_, change) = update(&purged, |_| {});
    let err = commit_err(store, &[change]);
    assert!(
        matches!(&err, StoreError::Conflict { found: None, .. }),
        "{err:?}"
    );
    assert_eq!(load(store).vees, vec![]);
}

pub fn wrong_new_generations_are_refused(store: &dyn Store) {
    let mut not_new = plain_record(FIRST_VEE_SEQ);
    not_new.generation = 2;
    let err = commit_err(store, &[Change::InsertVee(not_new)]);
    assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
    assert_eq!(load(store).next_vee_seq, FIRST_VEE_SEQ);

    let record = plain_record(FIRST_VEE_SEQ);
    commit(store, &[Change::InsertVee(record.clone())]);
    for skipped_to in [1, 3] {
        let mut next = record.clone();
        next.generation = skipped_to;
        let err = commit_err(
            store,
            &[Change::UpdateVee {
                record: next,
                expected_generation: 1,
            }],
        );
        assert!(
            matches!(err, StoreError::InvalidChange(_)),
            "generation 1 -> {skipped_to}: {err:?}"
        );
    }
    assert_eq!(load(store).vees, vec![record]);
}

pub fn a_failing_change_rolls_back_the_whole_batch(store: &dyn Store) {
    let existing = rich_record(FIRST_VEE_SEQ);
    commit(
        store,
        &[
            Change::InsertVee(existing.clone()),
            Change::AppendEvent(event(&existing.id, 10, VmiState::Defined)),
            Change::PutImage(image("alice", "tiny", 100)),
            Change::PutImage(image("alice", "doomed", 100)),
            Change::InsertNetwork(network(FIRST_NETWORK_ID, "alice", "lan")),
            Change::InsertNetwork(network(FIRST_NETWORK_ID + 1, "alice", "doomed")),
            Change::PutListener(listener("alice", &existing.id, 1_000)),
            Change::AppendAccounting(vec![accounted(
                "alice",
                accounting_record(&existing.id, 10),
            )]),
            Change::PutSubscription(subscription("sub-old", "alice", &[])),
        ],
    );
    let snapshot_before = load(store);
    let events_before = events(store, &existing.id);
    let accounting_before = all_accounting(store, &existing.id);

    let newcomer = plain_record(FIRST_VEE_SEQ + 3);
    let (_, good_update) = update(&existing, |r| r.state = VmiState::Active);
    let good_changes = vec![
        Change::InsertVee(newcomer.clone()),
        Change::AppendEvent(event(&newcomer.id, 20, VmiState::Defined)),
        good_update,
        Change::AppendEvent(event(&existing.id, 30, VmiState::Active)),
        Change::PutImage(image("alice", "tiny", 200)),
        Change::PutImage(image("bob", "new", 1)),
        Change::DeleteImage {
            owner: principal("alice"),
            name: ImageName::new("doomed").expect("valid name"),
        },
        Change::InsertNetwork(public_network(FIRST_NETWORK_ID + 5, "bob", "lan")),
        Change::DeleteNetwork {
            id: FIRST_NETWORK_ID + 1,
        },
        Change::PutListener(listener("bob", &existing.id, 2_000)),
        Change::PutListener(listener("bob", &newcomer.id, 3_000)),
        Change::RemoveListener {
            owner: principal("alice"),
            vee: existing.id.clone(),
        },
        Change::AppendAccounting(vec![
            accounted("alice", accounting_record(&existing.id, 50)),
            accounted("bob", accounting_record(&newcomer.id, 60)),
        ]),
        Change::PutSubscription(subscription("sub-new", "bob", &[EventType::State])),
        Change::RemoveSubscription {
            id: "sub-old".to_owned(),
        },
    ];
    let (_, stale_update) = update(&existing, |r| r.state = VmiState::Paused);
    let failing_tails: Vec<(&str, Change)> = vec![
        ("a stale update", stale_update),
        (
            "a purge of a missing VEE",
            Change::PurgeVee(VeeId::from_seq(FIRST_VEE_SEQ + 50)),
        ),
        (
            "a delete of a missing image",
            Change::DeleteImage {
                owner: principal("bob"),
                name: ImageName::new("absent").expect("valid name"),
            },
        ),
        (
            "a reused id",
            Change::InsertVee(plain_record(FIRST_VEE_SEQ + 1)),
        ),
        (
            "an event of a missing VEE",
            Change::AppendEvent(event(
                &VeeId::from_seq(FIRST_VEE_SEQ + 60),
                1,
                VmiState::Active,
            )),
        ),
        (
            "a taken network name",
            Change::InsertNetwork(network(FIRST_NETWORK_ID + 9, "alice", "lan")),
        ),
        (
            "a reused network id",
            Change::InsertNetwork(network(FIRST_NETWORK_ID + 5, "carol", "lan")),
        ),
        (
            "a delete of a missing network",
            Change::DeleteNetwork {
                id: FIRST_NETWORK_ID + 50,
            },
        ),
        (
            "a listener of a missing VEE",
            Change::PutListener(listener("bob", &VeeId::from_seq(FIRST_VEE_SEQ + 70), 1_000)),
        ),
        (
            "accounting of a missing VEE",
            Change::AppendAccounting(vec![
                accounted("carol", accounting_record(&existing.id, 70)),
                accounted(
                    "carol",
                    accounting_record(&VeeId::from_seq(FIRST_VEE_SEQ + 80), 70),
                ),
            ]),
        ),
        (
            "an accounting time beyond a signed 64-bit integer",
            Change::AppendAccounting(vec![accounted(
                "carol",
                accounting_record(&existing.id, u64::MAX),
            )]),
        ),
    ];
    for (what, tail) in failing_tails {
        let mut batch = good_changes.clone();
        batch.push(tail);
        let err = commit_err(store, &batch);
        assert!(
            !matches!(err, StoreError::Backend(_)),
            "{what} is the caller's mistake, not the database's: {err:?}"
        );
        assert_eq!(
            load(store),
            snapshot_before,
            "after a batch ending in {what}"
        );
        assert_eq!(events(store, &existing.id), events_before, "after {what}");
        assert_eq!(events(store, &newcomer.id), vec![], "after {what}");
        assert_eq!(
            all_accounting(store, &existing.id),
            accounting_before,
            "after {what}"
        );
    }

    // The same batch without the failing change is valid: it was the tail that undid it.
    commit(store, &good_changes);
    let snapshot = load(store);
    assert_eq!(seqs(&snapshot), vec![FIRST_VEE_SEQ, FIRST_VEE_SEQ + 3]);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 4);
    assert_eq!(
        snapshot.images,
        vec![image("alice", "tiny", 200), image("bob", "new", 1)]
    );
    assert_eq!(
        snapshot.networks,
        vec![
            network(FIRST_NETWORK_ID, "alice", "lan"),
            public_network(FIRST_NETWORK_ID + 5, "bob", "lan")
        ]
    );
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 6);
    assert_eq!(events(store, &existing.id).len(), 2);
    assert_eq!(
        snapshot.listeners,
        vec![
            listener("bob", &existing.id, 2_000),
            listener("bob", &newcomer.id, 3_000)
        ]
    );
    assert_eq!(
        snapshot.subscriptions,
        vec![subscription("sub-new", "bob", &[EventType::State])]
    );
    assert_eq!(
        all_accounting(store, &existing.id),
        vec![
            accounted("alice", accounting_record(&existing.id, 10)),
            accounted("alice", accounting_record(&existing.id, 50))
        ]
    );
    assert_eq!(
        all_accounting(store, &newcomer.id),
        vec![accounted("bob", accounting_record(&newcomer.id, 60))]
    );
}

pub fn the_id_counter_only_grows_and_ids_are_never_reused(store: &dyn Store) {
    let first = plain_record(FIRST_VEE_SEQ);
    commit(store, &[Change::InsertVee(first.clone())]);
    assert_eq!(load(store).next_vee_seq, FIRST_VEE_SEQ + 1);

    commit(store, &[Change::PurgeVee(first.id.clone())]);
    assert_eq!(
        load(store).next_vee_seq,
        FIRST_VEE_SEQ + 1,
        "purge leaves the counter alone"
    );
    let err = commit_err(store, &[Change::InsertVee(first.clone())]);
    assert!(
        matches!(&err, StoreError::IdReused(id) if *id == first.id),
        "a purged id is not handed out again: {err:?}"
    );

    // Skipping ahead is allowed; the ids skipped over are gone for good.
    let ahead = plain_record(FIRST_VEE_SEQ + 10);
    commit(store, &[Change::InsertVee(ahead.clone())]);
    assert_eq!(load(store).next_vee_seq, FIRST_VEE_SEQ + 11);
    let skipped = plain_record(FIRST_VEE_SEQ + 5);
    let err = commit_err(store, &[Change::InsertVee(skipped)]);
    assert!(matches!(err, StoreError::IdReused(_)), "{err:?}");

    // Within one batch, each insert raises the counter for the next.
    let a = plain_record(FIRST_VEE_SEQ + 20);
    let b = plain_record(FIRST_VEE_SEQ + 21);
    let err = commit_err(
        store,
        &[Change::InsertVee(b.clone()), Change::InsertVee(a.clone())],
    );
    assert!(
        matches!(&err, StoreError::IdReused(id) if *id == a.id),
        "{err:?}"
    );
    assert_eq!(load(store).next_vee_seq, FIRST_VEE_SEQ + 11);

    // Insert and purge in one batch still consume the id.
    commit(
        store,
        &[Change::InsertVee(a.clone()), Change::PurgeVee(a.id.clone())],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 21);
    assert_eq!(seqs(&snapshot), vec![FIRST_VEE_SEQ + 10]);
}

pub fn a_duplicate_insert_is_an_id_reuse(store: &dyn Store) {
    let record = plain_record(FIRST_VEE_SEQ);
    let err = commit_err(
        store,
        &[
            Change::InsertVee(record.clone()),
            Change::InsertVee(record.clone()),
        ],
    );
    assert!(
        matches!(&err, StoreError::IdReused(id) if *id == record.id),
        "{err:?}"
    );
    assert_eq!(
        load(store).vees,
        vec![],
        "the first insert was rolled back too"
    );

    commit(store, &[Change::InsertVee(record.clone())]);
    let mut twin = rich_record(FIRST_VEE_SEQ);
    twin.owner = principal("mallory");
    let err = commit_err(store, &[Change::InsertVee(twin)]);
    assert!(matches!(err, StoreError::IdReused(_)), "{err:?}");
    assert_eq!(load(store).vees, vec![record]);
}

pub fn purge_removes_the_vee_and_its_events(store: &dyn Store) {
    let doomed = rich_record(FIRST_VEE_SEQ);
    let survivor = plain_record(FIRST_VEE_SEQ + 1);
    commit(
        store,
        &[
            Change::InsertVee(doomed.clone()),
            Change::InsertVee(survivor.clone()),
            Change::AppendEvent(event(&doomed.id, 1, VmiState::Defined)),
            Change::AppendEvent(event(&survivor.id, 2, VmiState::Defined)),
            Change::AppendEvent(event(&doomed.id, 3, VmiState::Destroyed)),
        ],
    );
    commit(store, &[Change::PurgeVee(doomed.id.clone())]);

    let snapshot = load(store);
    assert_eq!(snapshot.vees, vec![survivor.clone()]);
    assert_eq!(events(store, &doomed.id), vec![]);
    assert_eq!(
        events(store, &survivor.id),
        vec![event(&survivor.id, 2, VmiState::Defined)]
    );

    let err = commit_err(store, &[Change::PurgeVee(doomed.id.clone())]);
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = commit_err(
        store,
        &[Change::AppendEvent(event(&doomed.id, 4, VmiState::Active))],
    );
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "a purged VEE takes no events: {err:?}"
    );
    assert_eq!(events(store, &doomed.id), vec![]);
}

pub fn events_come_back_in_the_order_they_were_appended(store: &dyn Store) {
    let a = plain_record(FIRST_VEE_SEQ);
    let b = plain_record(FIRST_VEE_SEQ + 1);
    commit(
        store,
        &[Change::InsertVee(a.clone()), Change::InsertVee(b.clone())],
    );
    let full = VeeEvent {
        vee: a.id.clone(),
        t_ms: 30,
        from: Some(VmiState::Defined),
        to: VmiState::Active,
        veem_state: VeemState::Active,
        host: Some(host("host-2")),
        detail: Some("deployed on host-2 \u{2713}".to_owned()),
    };
    // Times out of order: the order is the order of appending, not of t_ms.
    let a_events = vec![
        full,
        event(&a.id, 10, VmiState::Paused),
        event(&a.id, 20, VmiState::Active),
        event(&a.id, 20, VmiState::Destroyed),
    ];
    commit(
        store,
        &[
            Change::AppendEvent(a_events[0].clone()),
            Change::AppendEvent(event(&b.id, 5, VmiState::Defined)),
            Change::AppendEvent(a_events[1].clone()),
        ],
    );
    commit(store, &[Change::AppendEvent(a_events[2].clone())]);
    commit(
        store,
        &[
            Change::AppendEvent(event(&b.id, 6, VmiState::Active)),
            Change::AppendEvent(a_events[3].clone()),
        ],
    );

    assert_eq!(events(store, &a.id), a_events);
    assert_eq!(
        events(store, &b.id),
        vec![
            event(&b.id, 5, VmiState::Defined),
            event(&b.id, 6, VmiState::Active)
        ]
    );
    assert_eq!(events(store, &VeeId::from_seq(FIRST_VEE_SEQ + 99)), vec![]);
    let err = commit_err(
        store,
        &[Change::AppendEvent(event(
            &VeeId::from_seq(FIRST_VEE_SEQ + 99),
            1,
            VmiState::Active,
        ))],
    );
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub fn images_are_put_replaced_deleted_and_listed(store: &dyn Store) {
    commit(
        store,
        &[
            Change::PutImage(image("bob", "tiny", 1)),
            Change::PutImage(image("alice", "tiny", 2)),
        ],
    );
    commit(store, &[Change::PutImage(image("alice", "big", 3))]);
    assert_eq!(
        load(store).images,
        vec![
            image("alice", "big", 3),
            image("alice", "tiny", 2),
            image("bob", "tiny", 1)
        ],
        "images are listed by owner, then name"
    );

    let mut replacement = image("alice", "tiny", 4096);
    replacement.format = ImageFormat::Raw;
    replacement.created_ms = 99;
    commit(store, &[Change::PutImage(replacement.clone())]);
    assert_eq!(
        load(store).images,
        vec![
            image("alice", "big", 3),
            replacement.clone(),
            image("bob", "tiny", 1)
        ]
    );

    let delete_bobs = Change::DeleteImage {
        owner: principal("bob"),
        name: ImageName::new("tiny").expect("valid name"),
    };
    commit(store, std::slice::from_ref(&delete_bobs));
    assert_eq!(
        load(store).images,
        vec![image("alice", "big", 3), replacement]
    );
    let err = commit_err(store, &[delete_bobs]);
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    let snapshot = load(store);
    assert_eq!(snapshot.vees, vec![]);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ);
    assert_eq!(snapshot.networks, vec![]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID);
}

pub fn networks_round_trip_in_id_order(store: &dyn Store) {
    // Owners and names sort the other way round from ids: the order must come from the id.
    let first = public_network(FIRST_NETWORK_ID, "zoe", "z-lan \"quoted\" — ünïcode");
    let second = network(FIRST_NETWORK_ID + 1, "bob", "b-lan");
    let third = network(FIRST_NETWORK_ID + 2, "alice", "a-lan");
    // The same name for another owner is another network.
    let fourth = public_network(FIRST_NETWORK_ID + 3, "alice", "b-lan");
    commit(
        store,
        &[
            Change::InsertNetwork(first.clone()),
            Change::InsertNetwork(second.clone()),
        ],
    );
    commit(
        store,
        &[
            Change::InsertNetwork(third.clone()),
            Change::InsertNetwork(fourth.clone()),
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.networks, vec![first, second, third, fourth]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 4);
    assert_eq!(
        (snapshot.vees, snapshot.images, snapshot.next_vee_seq),
        (vec![], vec![], FIRST_VEE_SEQ),
        "networks leave VEEs, images and the VEE counter alone"
    );
}

pub fn a_taken_network_name_fails_the_whole_batch(store: &dyn Store) {
    let lan = network(FIRST_NETWORK_ID, "alice", "lan");
    commit(store, &[Change::InsertNetwork(lan.clone())]);
    let before = load(store);

    let twin = public_network(FIRST_NETWORK_ID + 1, "alice", "lan");
    let err = commit_err(
        store,
        &[
            Change::InsertVee(plain_record(FIRST_VEE_SEQ)),
            Change::PutImage(image("alice", "tiny", 1)),
            Change::InsertNetwork(network(FIRST_NETWORK_ID + 1, "bob", "lan")),
            Change::InsertNetwork(network(FIRST_NETWORK_ID + 2, "alice", "lan")),
        ],
    );
    assert!(
        matches!(&err, StoreError::NetworkNameTaken { owner, name } if owner.as_str() == "alice" && name == "lan"),
        "{err:?}"
    );
    assert_eq!(load(store), before, "nothing of the batch is stored");

    // Two networks of one name in one batch collide too.
    let err = commit_err(
        store,
        &[
            Change::InsertNetwork(network(FIRST_NETWORK_ID + 1, "bob", "lan")),
            Change::InsertNetwork(public_network(FIRST_NETWORK_ID + 2, "bob", "lan")),
        ],
    );
    assert!(
        matches!(&err, StoreError::NetworkNameTaken { owner, .. } if owner.as_str() == "bob"),
        "{err:?}"
    );
    assert_eq!(load(store), before);

    // Once deleted, the name is free again (under a new id).
    commit(
        store,
        &[
            Change::DeleteNetwork { id: lan.id },
            Change::InsertNetwork(twin.clone()),
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.networks, vec![twin]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 2);
}

pub fn networks_are_deleted_and_their_ids_never_reused(store: &dyn Store) {
    let a = network(FIRST_NETWORK_ID, "alice", "a");
    let b = public_network(FIRST_NETWORK_ID + 1, "alice", "b");
    let c = network(FIRST_NETWORK_ID + 2, "bob", "c");
    commit(
        store,
        &[
            Change::InsertNetwork(a.clone()),
            Change::InsertNetwork(b.clone()),
            Change::InsertNetwork(c.clone()),
        ],
    );
    commit(store, &[Change::DeleteNetwork { id: c.id }]);
    let snapshot = load(store);
    assert_eq!(snapshot.networks, vec![a.clone(), b.clone()]);
    assert_eq!(
        snapshot.next_network_id,
        FIRST_NETWORK_ID + 3,
        "deleting the newest network leaves the counter alone"
    );

    let err = commit_err(store, &[Change::DeleteNetwork { id: c.id }]);
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = commit_err(store, &[Change::InsertNetwork(c.clone())]);
    assert!(
        matches!(err, StoreError::NetworkIdReused(id) if id == c.id),
        "a deleted id is not handed out again: {err:?}"
    );
    let err = commit_err(
        store,
        &[Change::InsertNetwork(network(a.id, "carol", "fresh"))],
    );
    assert!(
        matches!(err, StoreError::NetworkIdReused(id) if id == a.id),
        "an id in use: {err:?}"
    );
    let err = commit_err(store, &[Change::InsertNetwork(network(0, "carol", "zero"))]);
    assert!(
        matches!(err, StoreError::NetworkIdReused(0)),
        "ids start at {FIRST_NETWORK_ID}: {err:?}"
    );

    // Skipping ahead is allowed; within one batch each insert raises the counter for the next.
    let ahead = network(FIRST_NETWORK_ID + 10, "carol", "ahead");
    let behind = network(FIRST_NETWORK_ID + 9, "carol", "behind");
    let err = commit_err(
        store,
        &[
            Change::InsertNetwork(ahead.clone()),
            Change::InsertNetwork(behind),
        ],
    );
    assert!(matches!(err, StoreError::NetworkIdReused(_)), "{err:?}");
    assert_eq!(load(store).next_network_id, FIRST_NETWORK_ID + 3);

    // Insert and delete in one batch still consume the id; deletes leave VEE ids alone.
    commit(
        store,
        &[
            Change::InsertNetwork(ahead.clone()),
            Change::DeleteNetwork { id: ahead.id },
            Change::DeleteNetwork { id: a.id },
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.networks, vec![b]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 11);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ);
}

pub fn network_ids_stay_below_the_vxlan_limit(store: &dyn Store) {
    for beyond in [NETWORK_ID_LIMIT, u32::MAX] {
        let err = commit_err(
            store,
            &[Change::InsertNetwork(network(beyond, "alice", "far"))],
        );
        assert!(
            matches!(err, StoreError::InvalidChange(_)),
            "id {beyond}: {err:?}"
        );
    }
    assert_eq!(load(store).next_network_id, FIRST_NETWORK_ID);

    let last = network(NETWORK_ID_LIMIT - 1, "alice", "last");
    commit(store, &[Change::InsertNetwork(last.clone())]);
    let snapshot = load(store);
    assert_eq!(snapshot.networks, vec![last]);
    assert_eq!(
        snapshot.next_network_id, NETWORK_ID_LIMIT,
        "every id is handed out"
    );
}

pub fn a_network_is_updated_in_place_and_only_if_it_exists(store: &dyn Store) {
    let lan = network(FIRST_NETWORK_ID, "alice", "lan");
    commit(store, &[Change::InsertNetwork(lan.clone())]);
    let extended = Network {
        extension: Some(veem_model::LanExtension {
            vni: 77,
            peers: vec![veem_model::LanPeer {
                address: "192.0.2.7".parse().expect("an address"),
                port: 4790,
                site: Some("east".to_owned()),
            }],
        }),
        ..lan.clone()
    };
    commit(store, &[Change::UpdateNetwork(extended.clone())]);
    let snapshot = load(store);
    assert_eq!(snapshot.networks, vec![extended.clone()]);
    assert_eq!(snapshot.next_network_id, FIRST_NETWORK_ID + 1, "no new id");
    for (what, missing) in [
        ("another id", network(FIRST_NETWORK_ID + 1, "alice", "lan")),
        ("another owner", network(FIRST_NETWORK_ID, "bob", "lan")),
        ("another name", network(FIRST_NETWORK_ID, "alice", "other")),
    ] {
        let err = commit_err(store, &[Change::UpdateNetwork(missing)]);
        assert!(matches!(err, StoreError::NotFound(_)), "{what}: {err:?}");
    }
    assert_eq!(load(store).networks, vec![extended]);
}

pub fn listeners_are_put_replaced_removed_and_listed(store: &dyn Store) {
    // 100000000 sorts before 99999999 as text: the order must come from the VEE's sequence.
    let [nine, big, bigger] = [9, 99_999_999, 100_000_000].map(plain_record);
    commit(
        store,
        &[
            Change::InsertVee(nine.clone()),
            Change::InsertVee(big.clone()),
            Change::InsertVee(bigger.clone()),
            Change::PutListener(listener("bob", &bigger.id, 1_000)),
            Change::PutListener(listener("alice", &big.id, 1_000)),
        ],
    );
    commit(
        store,
        &[
            Change::PutListener(listener("carol", &nine.id, 100)),
            Change::PutListener(listener("alice", &bigger.id, 200)),
            Change::PutListener(listener("bob", &nine.id, 300)),
        ],
    );
    assert_eq!(
        load(store).listeners,
        vec![
            listener("bob", &nine.id, 300),
            listener("carol", &nine.id, 100),
            listener("alice", &big.id, 1_000),
            listener("alice", &bigger.id, 200),
            listener("bob", &bigger.id, 1_000),
        ],
        "listeners are listed by VEE sequence, then owner"
    );

    // Registering again replaces, in place: one listener per principal and VEE.
    let replacement = AccountingListener {
        callback: "http://other.example/".to_owned(),
        interval_ms: 86_400_000,
        registered_ms: 1_700_000_000_000,
        ..listener("bob", &nine.id, 0)
    };
    commit(store, &[Change::PutListener(replacement.clone())]);
    let remove_carols = Change::RemoveListener {
        owner: principal("carol"),
        vee: nine.id.clone(),
    };
    commit(store, std::slice::from_ref(&remove_carols));
    let expected = vec![
        replacement,
        listener("alice", &big.id, 1_000),
        listener("alice", &bigger.id, 200),
        listener("bob", &bigger.id, 1_000),
    ];
    assert_eq!(load(store).listeners, expected);

    // Removing what is not there is no error: a listener gone already, a principal that never
    // listened, a VEE that never existed.
    commit(
        store,
        &[
            remove_carols,
            Change::RemoveListener {
                owner: principal("alice"),
                vee: nine.id.clone(),
            },
            Change::RemoveListener {
                owner: principal("alice"),
                vee: VeeId::from_seq(FIRST_VEE_SEQ + 1),
            },
        ],
    );
    assert_eq!(load(store).listeners, expected);

    // Remove then put in one batch: the put wins, as the changes apply in order.
    commit(
        store,
        &[
            Change::RemoveListener {
                owner: principal("alice"),
                vee: big.id.clone(),
            },
            Change::PutListener(listener("alice", &big.id, 5_000)),
            Change::RemoveListener {
                owner: principal("bob"),
                vee: bigger.id.clone(),
            },
        ],
    );
    let snapshot = load(store);
    assert_eq!(
        snapshot.listeners,
        vec![
            expected[0].clone(),
            listener("alice", &big.id, 5_000),
            listener("alice", &bigger.id, 200),
        ]
    );
    assert_eq!(
        snapshot.vees,
        vec![nine, big, bigger],
        "listeners leave VEEs alone"
    );
}

pub fn accounting_comes_back_by_time_then_owner(store: &dyn Store) {
    let a = plain_record(FIRST_VEE_SEQ);
    let b = plain_record(FIRST_VEE_SEQ + 1);
    commit(
        store,
        &[Change::InsertVee(a.clone()), Change::InsertVee(b.clone())],
    );
    let at = |t0| accounting_record(&a.id, t0);
    // Two records of one owner and time: they keep the order they were appended in.
    let half = AccountingRecord {
        dt: 500,
        state: VmiState::Paused,
        host: None,
        cpu: 4,
        memory_mb: 4_096,
        cpu_time_ms: 123,
        active_ms: 0,
        ..at(2_000)
    };
    let quarter = AccountingRecord {
        dt: 250,
        ..at(2_000)
    };
    commit(
        store,
        &[
            Change::AppendAccounting(vec![
                accounted("bob", at(3_000)),
                accounted("alice", at(1_000)),
                accounted("bob", accounting_record(&b.id, 1_000)),
            ]),
            Change::AppendAccounting(vec![accounted("alice", half.clone())]),
        ],
    );
    commit(
        store,
        &[
            Change::AppendAccounting(vec![]),
            Change::AppendAccounting(vec![
                accounted("carol", at(2_000)),
                accounted("alice", at(3_000)),
                accounted("bob", at(1_000)),
                accounted("alice", quarter.clone()),
            ]),
        ],
    );
    assert_eq!(
        all_accounting(store, &a.id),
        vec![
            accounted("alice", at(1_000)),
            accounted("bob", at(1_000)),
            accounted("alice", half),
            accounted("alice", quarter),
            accounted("carol", at(2_000)),
            accounted("alice", at(3_000)),
            accounted("bob", at(3_000)),
        ]
    );
    assert_eq!(
        all_accounting(store, &b.id),
        vec![accounted("bob", accounting_record(&b.id, 1_000))]
    );
    assert_eq!(
        all_accounting(store, &VeeId::from_seq(FIRST_VEE_SEQ + 2)),
        vec![]
    );
    let snapshot = load(store);
    assert_eq!(
        (snapshot.vees, snapshot.listeners),
        (vec![a, b], vec![]),
        "accounting leaves VEEs and listeners alone"
    );
}

pub fn accounting_ranges_include_from_and_exclude_to(store: &dyn Store) {
    let a = plain_record(FIRST_VEE_SEQ);
    let b = plain_record(FIRST_VEE_SEQ + 1);
    // The latest time a store must keep, with every other number at its edge too.
    let last = AccountingRecord {
        vee: a.id.clone(),
        t0: i64::MAX as u64,
        dt: 0,
        state: VmiState::Suspended,
        host: None,
        cpu: u32::MAX,
        memory_mb: i64::MAX as u64,
        cpu_time_ms: i64::MAX as u64,
        active_ms: 0,
    };
    let times = [0, 999, 1_000, 1_001, 1_999, 2_000];
    let mut records: Vec<_> = times
        .iter()
        .map(|&t0| accounted("alice", accounting_record(&a.id, t0)))
        .collect();
    records.push(accounted("alice", last.clone()));
    records.push(accounted("alice", accounting_record(&b.id, 1_000)));
    commit(
        store,
        &[
            Change::InsertVee(a.clone()),
            Change::InsertVee(b.clone()),
            Change::AppendAccounting(records),
        ],
    );
    let t0s = |from, to| -> Vec<u64> {
        accounting(store, &a.id, from, to)
            .iter()
            .map(|record| record.t0)
            .collect()
    };
    let top = i64::MAX as u64;
    let none: Vec<u64> = vec![];
    assert_eq!(t0s(1_000, 2_000), vec![1_000, 1_001, 1_999]);
    assert_eq!(t0s(999, 1_001), vec![999, 1_000]);
    assert_eq!(t0s(0, 1), vec![0]);
    assert_eq!(t0s(1_000, 1_000), none, "an empty range");
    assert_eq!(t0s(2_000, 1_000), none, "a backward range");
    assert_eq!(t0s(0, 0), none);
    assert_eq!(
        t0s(0, u64::MAX),
        vec![0, 999, 1_000, 1_001, 1_999, 2_000, top]
    );
    assert_eq!(t0s(2_000, u64::MAX), vec![2_000, top]);
    assert_eq!(t0s(2_001, top), none);
    assert_eq!(t0s(top, top + 1), vec![top]);
    assert_eq!(t0s(top + 1, u64::MAX), none);
    assert_eq!(t0s(u64::MAX, u64::MAX), none);
    assert_eq!(
        accounting(store, &a.id, top, u64::MAX),
        vec![last],
        "numbers at the edge come back whole"
    );
    assert_eq!(
        accounting(store, &b.id, 0, u64::MAX),
        vec![accounting_record(&b.id, 1_000)],
        "a VEE's range holds only its own records"
    );
}

pub fn listeners_and_accounting_need_their_vee(store: &dyn Store) {
    let present = plain_record(FIRST_VEE_SEQ);
    let purged = plain_record(FIRST_VEE_SEQ + 1);
    let never = VeeId::from_seq(FIRST_VEE_SEQ + 2);
    commit(
        store,
        &[
            Change::InsertVee(present.clone()),
            Change::InsertVee(purged.clone()),
            Change::PurgeVee(purged.id.clone()),
        ],
    );
    for missing in [&purged.id, &never] {
        let err = commit_err(
            store,
            &[
                Change::PutListener(listener("alice", &present.id, 1_000)),
                Change::PutListener(listener("alice", missing, 1_000)),
            ],
        );
        assert!(
            matches!(&err, StoreError::NotFound(what) if what.contains(missing.as_str())),
            "a listener of {missing}: {err:?}"
        );
        let err = commit_err(
            store,
            &[Change::AppendAccounting(vec![
                accounted("alice", accounting_record(&present.id, 1)),
                accounted("alice", accounting_record(missing, 2)),
                accounted("alice", accounting_record(&present.id, 3)),
            ])],
        );
        assert!(
            matches!(&err, StoreError::NotFound(what) if what.contains(missing.as_str())),
            "accounting of {missing}: {err:?}"
        );
        assert_eq!(all_accounting(store, missing), vec![]);
    }
    assert_eq!(
        load(store).listeners,
        vec![],
        "the failed batches left nothing"
    );
    assert_eq!(all_accounting(store, &present.id), vec![]);
}

pub fn purge_removes_the_vees_listeners_and_accounting(store: &dyn Store) {
    let doomed = rich_record(FIRST_VEE_SEQ);
    let survivor = plain_record(FIRST_VEE_SEQ + 1);
    let records = |vee: &VeeId| {
        vec![
            accounted("alice", accounting_record(vee, 1_000)),
            accounted("bob", accounting_record(vee, 1_000)),
            accounted("alice", accounting_record(vee, 2_000)),
        ]
    };
    commit(
        store,
        &[
            Change::InsertVee(doomed.clone()),
            Change::InsertVee(survivor.clone()),
            Change::PutListener(listener("alice", &doomed.id, 1_000)),
            Change::PutListener(listener("bob", &doomed.id, 1_000)),
            Change::PutListener(listener("alice", &survivor.id, 1_000)),
            Change::AppendAccounting(records(&doomed.id)),
            Change::AppendAccounting(records(&survivor.id)),
            Change::PutSubscription(subscription("sub-1", "alice", &[EventType::State])),
        ],
    );
    commit(store, &[Change::PurgeVee(doomed.id.clone())]);

    let snapshot = load(store);
    assert_eq!(snapshot.vees, vec![survivor.clone()]);
    assert_eq!(
        snapshot.listeners,
        vec![listener("alice", &survivor.id, 1_000)]
    );
    assert_eq!(
        snapshot.subscriptions,
        vec![subscription("sub-1", "alice", &[EventType::State])],
        "subscriptions belong to principals, not VEEs"
    );
    assert_eq!(all_accounting(store, &doomed.id), vec![]);
    assert_eq!(all_accounting(store, &survivor.id), records(&survivor.id));

    // A VEE made and purged in one batch leaves nothing behind either.
    let brief = plain_record(FIRST_VEE_SEQ + 2);
    commit(
        store,
        &[
            Change::InsertVee(brief.clone()),
            Change::PutListener(listener("carol", &brief.id, 100)),
            Change::AppendAccounting(records(&brief.id)),
            Change::PurgeVee(brief.id.clone()),
        ],
    );
    assert_eq!(
        load(store).listeners,
        vec![listener("alice", &survivor.id, 1_000)]
    );
    assert_eq!(all_accounting(store, &brief.id), vec![]);
}

pub fn subscriptions_are_put_replaced_removed_and_listed(store: &dyn Store) {
    let probes = subscription("sub-b", "alice", &[EventType::Probe, EventType::Hardware]);
    let everything = subscription("sub-a", "bob", &[]);
    let all_types = subscription("sub-c \"ü\"", "alice", &EventType::ALL);
    commit(
        store,
        &[
            Change::PutSubscription(probes.clone()),
            Change::PutSubscription(everything.clone()),
        ],
    );
    commit(store, &[Change::PutSubscription(all_types.clone())]);
    assert_eq!(
        load(store).subscriptions,
        vec![everything.clone(), probes, all_types.clone()],
        "subscriptions are listed by id"
    );

    let replacement = MonitoringSubscription {
        owner: principal("carol"),
        callback: "http://carol.example/".to_owned(),
        types: vec![EventType::State],
        created_ms: 1_700_000_000_000,
        ..subscription("sub-b", "alice", &[])
    };
    commit(store, &[Change::PutSubscription(replacement.clone())]);
    assert_eq!(
        load(store).subscriptions,
        vec![everything, replacement.clone(), all_types.clone()]
    );

    let remove_a = Change::RemoveSubscription {
        id: "sub-a".to_owned(),
    };
    commit(store, std::slice::from_ref(&remove_a));
    // Removing what is not there is no error.
    commit(
        store,
        &[
            remove_a,
            Change::RemoveSubscription {
                id: "never".to_owned(),
            },
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.subscriptions, vec![replacement, all_types]);
    assert_eq!(
        (snapshot.vees, snapshot.listeners, snapshot.next_vee_seq),
        (vec![], vec![], FIRST_VEE_SEQ),
        "subscriptions leave VEEs and listeners alone"
    );
}

pub fn registered_site(name: &str) -> Site {
    Site {
        name: site(name),
        url: format!("https://{name}.example:7070"),
        token: format!("token of {name} \"ü\""),
        ca_pem: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned()),
        client_cert_pem: None,
        client_key_pem: None,
        inbox: format!("inbox-of-{name}"),
        subscription: Some(format!("sub-at-{name}")),
        created_ms: 1_700_000_000_000,
    }
}

pub fn sites_are_registered_once_listed_by_name_and_removed(store: &dyn Store) {
    let (west, east) = (registered_site("west"), registered_site("east"));
    commit(
        store,
        &[
            Change::InsertSite(west.clone()),
            Change::InsertSite(east.clone()),
        ],
    );
    assert_eq!(
        load(store).sites,
        vec![east.clone(), west.clone()],
        "by name"
    );

    let again = Site {
        url: "https://elsewhere.example".to_owned(),
        ..east.clone()
    };
    let err = commit_err(
        store,
        &[Change::RemoveSite(site("west")), Change::InsertSite(again)],
    );
    assert!(
        matches!(&err, StoreError::SiteNameTaken(name) if *name == east.name),
        "{err:?}"
    );
    assert_eq!(
        load(store).sites,
        vec![east.clone(), west],
        "the failed batch removed nothing"
    );

    commit(
        store,
        &[
            Change::RemoveSite(site("west")),
            Change::RemoveSite(site("never")),
        ],
    );
    let snapshot = load(store);
    assert_eq!(snapshot.sites, vec![east]);
    assert_eq!(
        (snapshot.vees, snapshot.subscriptions),
        (vec![], vec![]),
        "sites leave the rest alone"
    );
}

pub fn a_disabled_host_stays_disabled_until_enabled(store: &dyn Store) {
    let set = |host: &str, disabled| Change::SetHostDisabled {
        host: host.to_owned(),
        disabled,
    };
    commit(store, &[set("h2", true), set("h1", true), set("h1", true)]);
    assert_eq!(
        load(store).disabled_hosts,
        ["h1", "h2"],
        "by name, once each"
    );
    commit(store, &[set("h1", false), set("never", false)]);
    assert_eq!(load(store).disabled_hosts, ["h2"]);
    let err = commit_err(
        store,
        &[
            set("h3", true),
            Change::PurgeVee(VeeId::from_seq(FIRST_VEE_SEQ)),
        ],
    );
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        load(store).disabled_hosts,
        ["h2"],
        "the failed batch changed nothing"
    );
}

pub fn the_outbox_comes_back_in_id_order_until_settled(store: &dyn Store) {
    let a = rich_record(FIRST_VEE_SEQ);
    let b = plain_record(FIRST_VEE_SEQ + 1);
    // Queued out of id order, over two commits, with numbers at the edge of what is stored.
    let top = i64::MAX as u64;
    let edge = AccountingRecord {
        dt: top,
        host: None,
        state: VmiState::Destroyed,
        cpu: u32::MAX,
        memory_mb: top,
        cpu_time_ms: top,
        active_ms: 0,
        ..accounting_record(&a.id, top)
    };
    let entries = [
        outbox_entry(7, "bob", accounting_record(&b.id, 1_000)),
        outbox_entry(3, "alice", accounting_record(&a.id, 1_000)),
        outbox_entry(top, "alice", edge),
        outbox_entry(5, "alice", accounting_record(&a.id, 2_000)),
    ];
    commit(
        store,
        &[
            Change::InsertVee(a.clone()),
            Change::InsertVee(b.clone()),
            Change::QueueAccounting(entries[..2].to_vec()),
        ],
    );
    commit(store, &[Change::QueueAccounting(entries[2..].to_vec())]);
    let by_id = |ids: &[u64]| -> Vec<OutboxEntry> {
        ids.iter()
            .map(|id| {
                entries
                    .iter()
                    .find(|e| e.id == *id)
                    .expect("a queued id")
                    .clone()
            })
            .collect()
    };
    assert_eq!(outbox(store), by_id(&[3, 5, 7, top]));
    assert_eq!(
        all_accounting(store, &a.id),
        vec![],
        "the outbox is not the accounting history"
    );

    // Settling removes those entries only; ids with no entry are ignored, and so are ids
    // beyond what can be stored.
    commit(store, &[Change::SettleAccounting(vec![5, 4, 3, u64::MAX])]);
    assert_eq!(outbox(store), by_id(&[7, top]));
    commit(store, &[Change::SettleAccounting(vec![5, 3])]);
    assert_eq!(
        outbox(store),
        by_id(&[7, top]),
        "settling again is no error"
    );
    commit(store, &[Change::SettleAccounting(vec![])]);
    // A settled id is free again.
    let again = outbox_entry(3, "carol", accounting_record(&b.id, 3_000));
    commit(store, &[Change::QueueAccounting(vec![again.clone()])]);
    let mut expected = vec![again];
    expected.extend(by_id(&[7, top]));
    assert_eq!(outbox(store), expected);
    commit(store, &[Change::SettleAccounting(vec![3, 7, top])]);
    assert_eq!(outbox(store), vec![]);
    assert_eq!(
        load(store).vees,
        vec![a, b],
        "settling touches nothing else"
    );
}

pub fn outbox_entries_are_committed_with_their_records_or_not_at_all(store: &dyn Store) {
    let vee = plain_record(FIRST_VEE_SEQ);
    commit(store, &[Change::InsertVee(vee.clone())]);
    let record = accounting_record(&vee.id, 1_000);
    let (destroyed, destroy) = update(&vee, |r| r.state = VmiState::Destroyed);
    // A DESTROY's last record goes with the state change: one transaction.
    commit(
        store,
        &[
            destroy,
            Change::AppendAccounting(vec![accounted("alice", record.clone())]),
            Change::QueueAccounting(vec![outbox_entry(1, "alice", record.clone())]),
        ],
    );
    assert_eq!(load(store).vees, vec![destroyed.clone()]);
    assert_eq!(
        all_accounting(store, &vee.id),
        vec![accounted("alice", record.clone())]
    );
    assert_eq!(
        outbox(store),
        vec![outbox_entry(1, "alice", record.clone())]
    );

    // A batch that fails after its outbox entries leaves none of them.
    let later = accounting_record(&vee.id, 2_000);
    let err = commit_err(
        store,
        &[
            Change::AppendAccounting(vec![accounted("alice", later.clone())]),
            Change::QueueAccounting(vec![outbox_entry(2, "alice", later.clone())]),
            Change::SettleAccounting(vec![1]),
            Change::UpdateVee {
                record: destroyed.clone(),
                expected_generation: vee.generation,
            },
        ],
    );
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        all_accounting(store, &vee.id),
        vec![accounted("alice", record.clone())]
    );
    assert_eq!(
        outbox(store),
        vec![outbox_entry(1, "alice", record)],
        "neither the new entry nor the settlement"
    );
}

pub fn outbox_entries_need_their_vee_and_a_free_id(store: &dyn Store) {
    let present = plain_record(FIRST_VEE_SEQ);
    let purged = plain_record(FIRST_VEE_SEQ + 1);
    let never = VeeId::from_seq(FIRST_VEE_SEQ + 2);
    commit(
        store,
        &[
            Change::InsertVee(present.clone()),
            Change::InsertVee(purged.clone()),
            Change::PurgeVee(purged.id.clone()),
            Change::QueueAccounting(vec![outbox_entry(
                1,
                "alice",
                accounting_record(&present.id, 1),
            )]),
        ],
    );
    let kept = outbox(store);
    for missing in [&purged.id, &never] {
        let err = commit_err(
            store,
            &[Change::QueueAccounting(vec![
                outbox_entry(2, "alice", accounting_record(&present.id, 2)),
                outbox_entry(3, "alice", accounting_record(missing, 3)),
            ])],
        );
        assert!(
            matches!(&err, StoreError::NotFound(what) if what.contains(missing.as_str())),
            "an outbox entry of {missing}: {err:?}"
        );
    }
    let err = commit_err(
        store,
        &[Change::QueueAccounting(vec![
            outbox_entry(2, "alice", accounting_record(&present.id, 2)),
            outbox_entry(1, "bob", accounting_record(&present.id, 3)),
        ])],
    );
    assert!(
        matches!(&err, StoreError::InvalidChange(what) if what.contains('1')),
        "a taken id: {err:?}"
    );
    let err = commit_err(
        store,
        &[Change::QueueAccounting(vec![outbox_entry(
            u64::MAX,
            "alice",
            accounting_record(&present.id, 4),
        )])],
    );
    assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
    assert_eq!(outbox(store), kept, "the failed batches left nothing");
}

pub fn purge_removes_the_vees_outbox_entries(store: &dyn Store) {
    let doomed = rich_record(FIRST_VEE_SEQ);
    let survivor = plain_record(FIRST_VEE_SEQ + 1);
    commit(
        store,
        &[
            Change::InsertVee(doomed.clone()),
            Change::InsertVee(survivor.clone()),
            Change::QueueAccounting(vec![
                outbox_entry(1, "alice", accounting_record(&doomed.id, 1_000)),
                outbox_entry(2, "alice", accounting_record(&survivor.id, 1_000)),
                outbox_entry(3, "bob", accounting_record(&doomed.id, 1_000)),
            ]),
        ],
    );
    commit(store, &[Change::PurgeVee(doomed.id.clone())]);
    assert_eq!(
        outbox(store),
        vec![outbox_entry(
            2,
            "alice",
            accounting_record(&survivor.id, 1_000)
        )]
    );
    // Settling what went with the purge is no error.
    commit(store, &[Change::SettleAccounting(vec![1, 3])]);
}

pub fn a_copied_vee_keeps_its_generation(store: &dyn Store) {
    let mut copied = rich_record(FIRST_VEE_SEQ + 4);
    copied.generation = 7;
    let mut zero = plain_record(FIRST_VEE_SEQ + 5);
    zero.generation = 0;
    let err = commit_err(store, &[Change::CopyVee(zero)]);
    assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
    commit(store, &[Change::CopyVee(copied.clone())]);
    let snapshot = load(store);
    assert_eq!(snapshot.vees, vec![copied.clone()]);
    assert_eq!(snapshot.next_vee_seq, FIRST_VEE_SEQ + 5);
    // It is updated from the generation it came with, as any other.
    let (updated, change) = update(&copied, |r| r.state = VmiState::Active);
    assert_eq!(updated.generation, 8);
    commit(store, &[change]);
    assert_eq!(load(store).vees, vec![updated]);
    // Below the counter, or taken: as for an insert.
    let mut below = plain_record(FIRST_VEE_SEQ);
    below.generation = 3;
    let err = commit_err(store, &[Change::CopyVee(below)]);
    assert!(matches!(err, StoreError::IdReused(_)), "{err:?}");
    let err = commit_err(store, &[Change::CopyVee(copied)]);
    assert!(matches!(err, StoreError::IdReused(_)), "{err:?}");
    // A new VEE still needs generation 1.
    let mut not_new = plain_record(FIRST_VEE_SEQ + 9);
    not_new.generation = 2;
    let err = commit_err(store, &[Change::InsertVee(not_new)]);
    assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
}

pub fn counters_are_raised_never_lowered(store: &dyn Store) {
    let raise = |next_vee_seq, next_network_id| Change::RaiseCounters {
        next_vee_seq,
        next_network_id,
    };
    commit(store, &[raise(40, 9)]);
    let snapshot = load(store);
    assert_eq!(
        (snapshot.next_vee_seq, snapshot.next_network_id),
        (40, 9),
        "raised"
    );
    commit(store, &[raise(3, 2)]);
    let snapshot = load(store);
    assert_eq!(
        (snapshot.next_vee_seq, snapshot.next_network_id),
        (40, 9),
        "never lowered"
    );
    // The ids below stay handed out.
    let err = commit_err(store, &[Change::InsertVee(plain_record(39))]);
    assert!(matches!(err, StoreError::IdReused(_)), "{err:?}");
    let err = commit_err(store, &[Change::InsertNetwork(network(8, "sm-a", "lan"))]);
    assert!(matches!(err, StoreError::NetworkIdReused(8)), "{err:?}");
    commit(
        store,
        &[
            Change::InsertVee(plain_record(40)),
            Change::InsertNetwork(network(9, "sm-a", "lan")),
        ],
    );
    // One raise in the same batch as inserts: the higher of the two wins.
    commit(
        store,
        &[
            Change::InsertVee(plain_record(41)),
            raise(41, 10),
            Change::InsertVee(plain_record(60)),
        ],
    );
    assert_eq!(load(store).next_vee_seq, 61);
    for (vee_seq, network_id) in [(i64::MAX as u64 + 1, 10), (61, NETWORK_ID_LIMIT + 1)] {
        let err = commit_err(store, &[raise(100, 100), raise(vee_seq, network_id)]);
        assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
    }
    let snapshot = load(store);
    assert_eq!(
        (snapshot.next_vee_seq, snapshot.next_network_id),
        (61, 10),
        "a refused batch raises nothing"
    );
    commit(store, &[raise(61, NETWORK_ID_LIMIT)]);
    assert_eq!(load(store).next_network_id, NETWORK_ID_LIMIT);
}
