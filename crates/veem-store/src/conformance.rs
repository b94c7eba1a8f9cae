//! The properties every [`Store`] backend must have, as plain functions that panic on a
//! violation.
//!
//! A backend's tests call [`run_all`] with a function that makes a fresh, empty store, e.g.
//! `run_all(&|| Box::new(SqliteStore::open_in_memory().expect("open")))`, or call the
//! properties of [`PROPERTIES`] one by one. Each property gets its own fresh store. The module is
//! always compiled (it needs nothing beyond the crate's own dependencies) so that stores in other
//! crates can be held to the same contract; it is test support, which is why it asserts.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use veem_model::{
    Context, DiskSource, DiskSpec, Generated, HostId, ImageFormat, ImageName, ImageRecord,
    InitModel, Ipv4Cidr, KernelBoot, Network, NicAddress, NicSpec, Phase, Principal, VeeDescriptor,
    VeeEvent, VeeId, VeeRecord, VeemState, VmiState,
};

use crate::{
    Change, Snapshot, Store, StoreError, FIRST_NETWORK_ID, FIRST_VEE_SEQ, NETWORK_ID_LIMIT,
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
            },
            DiskSpec {
                source: Some(DiskSource::Url(
                    "https://images.example/data.raw?x=1&y=2".to_owned(),
                )),
                size_gb: None,
                target: Some("vdb".to_owned()),
                clone: false,
            },
            DiskSpec {
                source: None,
                size_gb: Some(1),
                target: Some("vdc".to_owned()),
                clone: true,
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
    };
    VeeRecord {
        id: VeeId::from_seq(seq),
        owner: principal("alice"),
        descriptor,
        model: InitModel::Twophase,
        state: VmiState::Initial,
        veem_state: VeemState::Hold,
        phase: Some(Phase::Booting),
        host: Some(host("host-1")),
        reserved: true,
        pending_reason: Some("waiting for 2 cpus".to_owned()),
        last_error: Some("boot of host-0 failed: no disk".to_owned()),
        has_saved_memory: true,
        restarts: 2,
        generated: Generated {
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
        created_ms: 1_700_000_000_123,
        updated_ms: 1_700_000_000_456,
        generation: 1,
    }
}

/// A VEE with a whole OVF environment as its context instead of properties.
pub fn ovf_env_record(seq: u64) -> VeeRecord {
    let mut record = plain_record(seq);
    record.owner = principal("bob");
    record.descriptor.context.ovf_env =
        Some("<?xml version=\"1.0\"?>\n<Environment>&amp;</Environment>".to_owned());
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
    };
    assert_eq!(load(store), empty);
    assert_eq!(events(store, &VeeId::from_seq(FIRST_VEE_SEQ)), vec![]);
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
        r.descriptor.memory_mb = 2048;
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
        ],
    );
    let snapshot_before = load(store);
    let events_before = events(store, &existing.id);

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
