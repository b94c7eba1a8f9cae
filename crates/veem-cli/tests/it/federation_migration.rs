//! Federation: VEEs moved between sites, cold and live, both ways.
//! End-to-end tests: a `veem` server process on loopback with sim hosts, driven only through
//! `veem-client` (and the `veem` CLI), as a Service Manager would.

use std::path::PathBuf;

use veem_api::{IncomingRequest, SendRequest, SiteMigrateRequest, VeeView};
use veem_client::ClientError;
use veem_model::{ControlAction, DiskKind, DiskSpec, VeeDescriptor, VmiState};

use crate::federation::{named, register, site, site_setup, stdout_of, veem};
use crate::harness::*;

/// A small VEE with a blank disk of its own, which must move with it.
fn with_disk(name: &str) -> VeeDescriptor {
    let mut d = small(name);
    d.disks.push(DiskSpec {
        source: None,
        size_gb: Some(1),
        target: Some("vdb".into()),
        clone: true,
        kind: DiskKind::Disk,
    });
    d
}

/// Where a site keeps disk `vdb` of its VEE `id`.
fn disk_at(server: &Server, id: &str) -> PathBuf {
    server
        .data_dir()
        .join("vees")
        .join(id)
        .join("disks")
        .join("vdb.qcow2")
}

fn to_site(site: &str, live: bool) -> SiteMigrateRequest {
    SiteMigrateRequest {
        site: site.to_owned(),
        live: Some(live),
    }
}

async fn migrate(primary: &Server, id: &str, site: &str, live: bool) -> VeeView {
    primary
        .ops
        .migrate_vee_to_site(id, &to_site(site, live))
        .await
        .unwrap_or_else(|e| panic!("{id} migrated to {site}: {e}"))
}

fn refused(result: Result<VeeView, ClientError>) -> (u16, String) {
    let e = result.expect_err("refused");
    (
        e.status().expect("an answer"),
        e.code().unwrap_or_default().to_owned(),
    )
}

/// An ACTIVE VEE named `name` of `sm-a`'s at `primary`, placed at `sites` (in order).
async fn running(primary: &Server, name: &str, sites: &[&str]) -> String {
    let mut d = with_disk(name);
    d.sites = crate::federation::at(sites);
    let id = init_one(&primary.a, d).await;
    ctl_ok(&primary.a, ControlAction::Activate, &[&id]).await;
    id
}

#[tokio::test]
async fn a_vee_moves_cold_to_a_site_and_back_in_the_state_it_had_and_nothing_stays_behind() {
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let active = running(&west, "mv-active", &[]).await;
    let paused = running(&west, "mv-paused", &[]).await;
    ctl_ok(&west.a, ControlAction::Pause, &[&paused]).await;
    let suspended = running(&west, "mv-suspended", &[]).await;
    ctl_ok(&west.a, ControlAction::Suspend, &[&suspended]).await;
    let cases = [
        (&active, "mv-active", VmiState::Active),
        (&paused, "mv-paused", VmiState::Paused),
        (&suspended, "mv-suspended", VmiState::Suspended),
    ];

    for (id, name, state) in cases {
        assert!(disk_at(&west, id).exists(), "{name} has its disk at west");
        let moved = migrate(&west, id, "east", false).await;
        assert_eq!(
            (
                moved.id.as_str(),
                moved.site.as_str(),
                moved.state,
                moved.host.as_ref().map(|h| h.as_str())
            ),
            (id.as_str(), "east", state, None),
            "{name} keeps its id and its state, at east"
        );
        let there = named(&east, name).await.expect("east runs it");
        assert_eq!(there.state, state, "{name} at east");
        if state != VmiState::Active {
            let events = east.ops.vee_events(&there.id).await.expect("events").events;
            assert!(
                events.iter().all(|e| e.to != VmiState::Active),
                "{name} never ran at east: {events:?}"
            );
        }
        assert!(
            disk_at(&east, &there.id).exists(),
            "{name}'s disk went to east"
        );
        assert!(
            !west.data_dir().join("vees").join(id).exists(),
            "nothing of {name} stays at west"
        );
        assert_eq!(
            get(&west.a, id).await.state,
            state,
            "{name} as its owner sees it"
        );
    }
    // Actions on it are forwarded to where it went.
    ctl_ok(&west.a, ControlAction::Activate, &[&paused]).await;
    ctl_ok(&west.a, ControlAction::Pause, &[&paused]).await;

    for (id, name, state) in cases {
        let back = migrate(&west, id, "west", false).await;
        assert_eq!(
            (back.site.as_str(), back.state),
            ("west", state),
            "{name} back at west"
        );
        if state != VmiState::Suspended {
            assert!(back.host.is_some(), "{name} runs on a host of west");
        }
        assert!(disk_at(&west, id).exists(), "{name}'s disk came back");
        assert!(
            named(&east, name).await.is_none(),
            "nothing of {name} stays at east"
        );
    }
    assert!(
        std::fs::read_dir(east.data_dir().join("vees"))
            .map(|dir| dir.count())
            .unwrap_or(0)
            == 0,
        "east keeps no VEE directory"
    );
    // It still works where it is: the VEE that was SUSPENDED is restored at west.
    ctl_ok(&west.a, ControlAction::Activate, &[&suspended]).await;
    assert_eq!(state_of(&west.a, &suspended).await, VmiState::Active);
}

#[tokio::test]
async fn a_vee_moves_live_from_one_site_to_another_by_the_cli() {
    let (west, east, north) = (site("west").await, site("east").await, site("north").await);
    register(&west, &east, "east").await;
    register(&west, &north, "north").await;
    let id = running(&west, "roamer", &["east"]).await;
    assert_eq!(get(&west.a, &id).await.site, "east");

    let out = veem(
        &west,
        TOKEN_OPS,
        &["vee", "migrate", &id, "--site", "north", "--live"],
    );
    let table = stdout_of(&out);
    assert!(table.contains(&id) && table.contains("north"), "{table}");
    let moved = get(&west.a, &id).await;
    assert_eq!(
        (moved.site.as_str(), moved.state),
        ("north", VmiState::Active)
    );
    let there = named(&north, "roamer").await.expect("north runs it");
    assert_eq!(there.state, VmiState::Active);
    assert!(
        disk_at(&north, &there.id).exists(),
        "its disk went to north"
    );
    assert!(
        named(&east, "roamer").await.is_none(),
        "nothing stays at east"
    );
    let events = west.a.vee_events(&id).await.expect("events").events;
    assert!(
        events.iter().any(|e| e
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("migrated from site east to site north"))),
        "{events:?}"
    );
    // A migration to where it is already changes nothing.
    let same = migrate(&west, &id, "north", true).await;
    assert_eq!(same.site, "north");

    // A VEE with no disk of its own moves too (only its memory goes).
    let bare = init_one(&west.a, small("bare")).await;
    ctl_ok(&west.a, ControlAction::Activate, &[&bare]).await;
    for (site, live) in [("east", true), ("west", false), ("north", false)] {
        let moved = migrate(&west, &bare, site, live).await;
        assert_eq!((moved.site.as_str(), moved.state), (site, VmiState::Active));
    }
    assert!(
        named(&east, "bare").await.is_none(),
        "nothing stays at east"
    );
}

#[tokio::test]
async fn a_migration_is_an_admins_to_a_known_site_of_a_vee_with_a_place() {
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let id = running(&west, "stay", &[]).await;
    assert_eq!(
        refused(
            west.a
                .migrate_vee_to_site(&id, &to_site("east", false))
                .await
        ),
        (403, "access_denied".to_owned()),
        "a tenant does not move VEEs"
    );
    assert_eq!(
        refused(
            west.ops
                .migrate_vee_to_site(&id, &to_site("north", false))
                .await
        ),
        (404, "not_found".to_owned()),
        "no site north"
    );
    assert_eq!(
        refused(
            west.ops
                .migrate_vee_to_site(&id, &to_site("no such", false))
                .await
        )
        .0,
        400,
        "not a site's name"
    );
    let waiting = {
        let mut d = small("waiting");
        d.cpu = 64;
        init_one(&west.a, d).await
    };
    crate::federation::waits_when_activated(&west.a, &waiting).await;
    assert_eq!(
        refused(
            west.ops
                .migrate_vee_to_site(&waiting, &to_site("east", false))
                .await
        ),
        (409, "wrong_state".to_owned()),
        "an INITIAL VEE"
    );
    let view = get(&west.a, &id).await;
    assert_eq!((view.site.as_str(), view.state), ("west", VmiState::Active));
    assert!(named(&east, "stay").await.is_none(), "nothing went to east");

    // At a site, `send` makes a host connect out: only a principal configured for it asks.
    let mine = init_one(&east.a, small("tenant")).await;
    ctl_ok(&east.a, ControlAction::Activate, &[&mine]).await;
    let send = SendRequest {
        uri: "tcp:127.0.0.1:9".into(),
        disks: None,
    };
    let e = east.a.send_vee(&mine, &send).await.expect_err("refused");
    assert_eq!((e.status(), e.code()), (Some(403), Some("access_denied")));
    assert_eq!(state_of(&east.a, &mine).await, VmiState::Active);
    // `incoming/complete` only runs a VEE that waits for its migration.
    let e = east
        .a
        .complete_incoming(&mine, false)
        .await
        .expect_err("refused");
    assert_eq!((e.status(), e.code()), (Some(409), Some("wrong_state")));
    // A tenant opens no listener on a host either.
    let incoming = |name: &str| IncomingRequest {
        descriptor: small(name),
    };
    let e = east
        .a
        .receive_vee(&incoming("mine"))
        .await
        .expect_err("refused");
    assert_eq!((e.status(), e.code()), (Some(403), Some("access_denied")));
    assert!(named(&east, "mine").await.is_none(), "nothing defined");
    // The peer's VEEM may, with a valid descriptor, and sends only over the network.
    let peer = veem_client::Client::new(&east.url, &crate::federation::peer_token("east"))
        .expect("a client");
    let mut bad = small("bad");
    bad.cpu = 0;
    let e = peer
        .receive_vee(&IncomingRequest { descriptor: bad })
        .await
        .expect_err("refused");
    assert_eq!(e.status(), Some(400), "{e}");
    let waiting = peer
        .receive_vee(&incoming("arriving"))
        .await
        .expect("ready");
    assert!(waiting.uri.starts_with("sim://"), "{}", waiting.uri);
    assert_eq!(waiting.vee.state, VmiState::Defined);
    let theirs = init_one(&peer, small("theirs")).await;
    ctl_ok(&peer, ControlAction::Activate, &[&theirs]).await;
    let to_socket = SendRequest {
        uri: "unix:/run/veem/some.sock".into(),
        disks: None,
    };
    let e = peer
        .send_vee(&theirs, &to_socket)
        .await
        .expect_err("refused");
    assert_eq!(
        (e.status(), e.code()),
        (Some(400), Some("malformed_request"))
    );
    assert_eq!(state_of(&peer, &theirs).await, VmiState::Active);
    // A destination without room refuses at once (it reserves as TWOPHASE does): the VEE
    // runs on where it was. East has 6 CPUs free now, west 7.
    let wide = {
        let mut d = small("wide");
        d.cpu = 7;
        init_one(&west.a, d).await
    };
    ctl_ok(&west.a, ControlAction::Activate, &[&wide]).await;
    assert_eq!(
        refused(
            west.ops
                .migrate_vee_to_site(&wide, &to_site("east", true))
                .await
        ),
        (409, "insufficient_resources".to_owned()),
        "no room at east"
    );
    let view = get(&west.a, &wide).await;
    assert_eq!((view.site.as_str(), view.state), ("west", VmiState::Active));
    assert!(
        named(&east, "wide").await.is_none(),
        "nothing of it at east"
    );
    // A VEE that never got its migration is dropped with a purge, and leaves nothing.
    peer.purge_vee(&waiting.vee.id).await.expect("purged");
    assert!(named(&east, "arriving").await.is_none());
}

#[tokio::test]
async fn a_resting_vee_moves_with_its_disks_and_rests_there_in_its_state() {
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let shut = running(&west, "shut", &[]).await;
    ctl_ok(&west.a, ControlAction::Shutdown, &[&shut]).await;
    let destroyed = running(&west, "destroyed", &[]).await;
    ctl_ok(&west.a, ControlAction::Destroy, &[&destroyed]).await;
    let fresh = init_one(&west.a, with_disk("fresh")).await;
    let cases = [
        (&shut, "shut", VmiState::Defined, true),
        (&destroyed, "destroyed", VmiState::Destroyed, true),
        (&fresh, "fresh", VmiState::Defined, false),
    ];
    for (id, name, state, has_disk) in cases {
        assert_eq!(disk_at(&west, id).exists(), has_disk, "{name} at west");
        let moved = migrate(&west, id, "east", false).await;
        assert_eq!(
            (moved.site.as_str(), moved.state),
            ("east", state),
            "{name} rests at east"
        );
        let there = named(&east, name).await.expect("east keeps it");
        assert_eq!(there.state, state);
        assert_eq!(
            disk_at(&east, &there.id).exists(),
            has_disk,
            "{name}'s disk at east"
        );
        assert!(
            !west.data_dir().join("vees").join(id).exists(),
            "nothing of {name} stays at west"
        );
    }
    // Each works where it went: the one never deployed boots at east, the shut one comes back
    // and boots on its own disk at west.
    ctl_ok(&west.a, ControlAction::Activate, &[&fresh]).await;
    assert_eq!(get(&west.a, &fresh).await.site, "east");
    let back = migrate(&west, &shut, "west", false).await;
    assert_eq!(
        (back.site.as_str(), back.state),
        ("west", VmiState::Defined)
    );
    assert!(disk_at(&west, &shut).exists(), "its disk came back");
    assert!(
        named(&east, "shut").await.is_none(),
        "nothing stays at east"
    );
    ctl_ok(&west.a, ControlAction::Activate, &[&shut]).await;
    assert_eq!(get(&west.a, &shut).await.site, "west");

    // A disk is put only into a resting VEE's own disk, and names no other file.
    let resting = init_one(&west.a, with_disk("resting")).await;
    let file = |name: &str, bytes: &[u8]| write_file(west.dir.path(), name, bytes);
    let mut backed = vec![0u8; 104];
    backed[..4].copy_from_slice(b"QFI\xfb");
    backed[4..8].copy_from_slice(&3u32.to_be_bytes());
    backed[8..16].copy_from_slice(&512u64.to_be_bytes());
    let status = |r: Result<(), ClientError>| {
        let e = r.expect_err("refused");
        (e.status(), e.code().map(str::to_owned))
    };
    assert_eq!(
        status(
            west.a
                .upload_disk(&resting, "vdb", &file("backed.qcow2", &backed))
                .await
        ),
        (Some(400), Some("malformed_request".into())),
        "a qcow2 with a backing file"
    );
    assert_eq!(
        status(
            west.a
                .upload_disk(&shut, "vdb", &file("ok.img", b"contents"))
                .await
        ),
        (Some(409), Some("wrong_state".into())),
        "an ACTIVE VEE"
    );
    assert_eq!(
        status(
            west.b
                .upload_disk(&resting, "vdb", &file("ok.img", b"contents"))
                .await
        )
        .0,
        Some(403),
        "another's VEE"
    );
    assert!(!disk_at(&west, &resting).exists(), "nothing was put");
    west.a
        .upload_disk(&resting, "vdb", &file("ok.img", b"contents"))
        .await
        .expect("its own disk");
    assert_eq!(
        std::fs::read(disk_at(&west, &resting)).expect("put"),
        b"contents"
    );
}

#[tokio::test]
async fn a_migration_whose_send_fails_leaves_the_vee_running_where_it_was_and_nothing_there() {
    let west = Server::start_with(Setup {
        hosts: vec![(
            "h1",
            8,
            16384,
            "faults = [{ op = \"migrate_out\", vee_name = \"fragile\" }]",
        )],
        ..site_setup("west")
    })
    .await;
    let east = site("east").await;
    register(&west, &east, "east").await;
    let id = running(&west, "fragile", &[]).await;
    for live in [false, true] {
        let e = west
            .ops
            .migrate_vee_to_site(&id, &to_site("east", live))
            .await
            .expect_err("the send fails");
        assert!(e.status().is_some_and(|s| s >= 500 || s == 409), "{e}");
        let view = get(&west.a, &id).await;
        assert_eq!(
            (
                view.site.as_str(),
                view.state,
                view.host.as_ref().map(|h| h.as_str())
            ),
            ("west", VmiState::Active, Some("h1")),
            "it runs where it was (live: {live})"
        );
        assert!(disk_at(&west, &id).exists(), "its disk stays");
        assert!(named(&east, "fragile").await.is_none(), "nothing at east");
    }
    // It still answers to its owner.
    ctl_ok(&west.a, ControlAction::Pause, &[&id]).await;
}

/// The console of the guest `id` of `primary` wherever it runs now: on a host of `west` (each
/// with its own directory), or at `east` as the VEE east knows.
async fn console_of(west: &Server, east: &Server, id: &str, name: &str) -> PathBuf {
    let view = get(&west.a, id).await;
    if view.site == "east" {
        let there = named(east, name).await.expect("east runs it");
        east.data_dir()
            .join("vees")
            .join(there.id)
            .join("console.log")
    } else {
        let host = view.host.expect("on a host of west").to_string();
        own_vee_dir(west, &host, id).join("console.log")
    }
}

/// The newest migration note of `id` at the primary, which carries QEMU's figures.
async fn last_move(west: &Server, id: &str) -> String {
    let events = west.a.vee_events(id).await.expect("events").events;
    let note = events
        .iter()
        .rev()
        .filter_map(|e| e.detail.clone())
        .find(|d| d.starts_with("migrated from"))
        .expect("a migration note");
    assert!(migration_figures(&note).is_some(), "figures in {note}");
    note
}

/// A real guest that keeps writing moves between two hosts of west that share no storage,
/// live to east and back, then cold to east and back, then PAUSED both ways: it never
/// reboots, its heartbeat (its numbered writes) goes on at each place, it writes nothing while
/// paused, and every write is on its disk at the end, in order. (How long each move stops the
/// guest is the `site_migration` bench's.)
#[tokio::test]
async fn a_real_guest_moves_live_and_cold_between_sites_writing_on() {
    let Some(west) = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 8, 16384, ""), ("h2", 8, 16384, "")],
        own_vees_dirs: vec!["h1", "h2"],
        ..site_setup("west")
    })
    .await
    else {
        return;
    };
    let east = Server::start_with(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 8, 16384, "")],
        ..site_setup("east")
    })
    .await;
    register(&west, &east, "east").await;
    let name = "wanderer";
    let mut d = crate::qemu_guests::guest(name);
    d.context
        .properties
        .insert(veem_guest::WRITE_EVERY_PROPERTY.into(), "0.05".into());
    let id = init_one(&west.a, d).await;
    ctl_ok(&west.a, ControlAction::Activate, &[&id]).await;
    let mut written =
        crate::qemu_guests::wait_write(&console_of(&west, &east, &id, name).await, 3).await;

    let step = |what: &str, note: &str| eprintln!("{what}: {note}");
    // Between two hosts of west, disks copied.
    let here = get(&west.a, &id).await.host.expect("on a host").to_string();
    let to = if here == "h1" { "h2" } else { "h1" };
    west.ops
        .migrate_vee(
            &id,
            &veem_api::MigrateRequest {
                host: Some(to.into()),
                live: Some(true),
            },
        )
        .await
        .expect("moved within west");
    step("within west", &last_move(&west, &id).await);
    written =
        crate::qemu_guests::wait_write(&console_of(&west, &east, &id, name).await, written + 3)
            .await;
    // To east and back, live.
    for site in ["east", "west"] {
        let moved = migrate(&west, &id, site, true).await;
        assert_eq!((moved.site.as_str(), moved.state), (site, VmiState::Active));
        step("between sites, live", &last_move(&west, &id).await);
        written =
            crate::qemu_guests::wait_write(&console_of(&west, &east, &id, name).await, written + 3)
                .await;
    }
    assert!(named(&east, name).await.is_none(), "nothing stays at east");
    // Cold: paused while it moves, running again there.
    for site in ["east", "west"] {
        let moved = migrate(&west, &id, site, false).await;
        assert_eq!((moved.site.as_str(), moved.state), (site, VmiState::Active));
        step("between sites, cold", &last_move(&west, &id).await);
        written =
            crate::qemu_guests::wait_write(&console_of(&west, &east, &id, name).await, written + 3)
                .await;
    }
    assert!(named(&east, name).await.is_none(), "nothing stays at east");
    // PAUSED: it moves, to east and back, and runs at no moment until it is activated.
    ctl_ok(&west.a, ControlAction::Pause, &[&id]).await;
    let console = console_of(&west, &east, &id, name).await;
    let paused_at =
        crate::qemu_guests::last_write(&std::fs::read_to_string(&console).unwrap_or_default());
    for (site, live) in [("east", false), ("west", true)] {
        let moved = migrate(&west, &id, site, live).await;
        assert_eq!((moved.site.as_str(), moved.state), (site, VmiState::Paused));
        step("between sites, paused", &last_move(&west, &id).await);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let console = console_of(&west, &east, &id, name).await;
        let now =
            crate::qemu_guests::last_write(&std::fs::read_to_string(&console).unwrap_or_default());
        assert!(
            now <= paused_at,
            "it wrote while paused at {site}: {now:?} after {paused_at:?}"
        );
    }
    ctl_ok(&west.a, ControlAction::Activate, &[&id]).await;
    written =
        crate::qemu_guests::wait_write(&console_of(&west, &east, &id, name).await, written + 3)
            .await;
    let host = get(&west.a, &id).await.host.expect("on a host").to_string();
    let other = if host == "h1" { "h2" } else { "h1" };
    assert!(
        !own_vee_dir(&west, other, &id).exists(),
        "{other} keeps nothing of the VEE"
    );

    ctl_ok(&west.a, ControlAction::Shutdown, &[&id]).await;
    let disk = own_vee_dir(&west, &host, &id)
        .join("disks")
        .join("vda.qcow2");
    let console = std::fs::read_to_string(own_vee_dir(&west, &host, &id).join("console.log"))
        .unwrap_or_default();
    crate::qemu_guests::assert_every_write_kept_without_reboot(&disk, written, &console);
}

/// The destination dies while the VEE is being sent to it (kill -9): the primary cannot tell
/// it to run the VEE, which then runs nowhere; once the destination is back, the primary asks
/// again and it runs there, once, and nothing of it is at the source.
#[tokio::test]
async fn a_migration_cut_after_the_send_runs_the_vee_at_its_destination_once_it_is_back() {
    let west = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "latency_ms = { migrate = 2500 }")],
        ..site_setup("west")
    })
    .await;
    let mut east = site("east").await;
    register(&west, &east, "east").await;
    let id = running(&west, "cut", &[]).await;
    let moving = {
        let ops = west.ops.clone();
        let id = id.clone();
        tokio::spawn(async move { ops.migrate_vee_to_site(&id, &to_site("east", true)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    east.kill9();
    let e = moving
        .await
        .expect("the call ends")
        .expect_err("east cannot be told to run it");
    assert_eq!(e.code(), Some("site_unreachable"), "{e}");
    let view = get(&west.a, &id).await;
    assert_eq!(view.site, "east", "it went to east: it is nowhere else");
    assert!(!disk_at(&west, &id).exists(), "nothing of it stays at west");

    east.start_again().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let view = get(&west.a, &id).await;
        if view.state == VmiState::Active && view.phase.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never completed at east: {view:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let there = named(&east, "cut").await.expect("east runs it");
    assert_eq!(there.state, VmiState::Active);
    assert!(disk_at(&east, &there.id).exists(), "with its disk");
    ctl_ok(&west.a, ControlAction::Pause, &[&id]).await;
    assert_eq!(state_of(&west.a, &id).await, VmiState::Paused);
}

/// The source site dies while it is asked to send the VEE (kill -9, before it sent anything):
/// whether the VEE left it is the source's to say, so the destination keeps it waiting, never
/// running; once the source is back and says it still runs the VEE, the destination is dropped.
#[tokio::test]
async fn a_migration_whose_source_dies_before_sending_leaves_the_vee_at_the_source() {
    let west = site("west").await;
    let mut east = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "latency_ms = { migrate = 2500 }")],
        ..site_setup("east")
    })
    .await;
    register(&west, &east, "east").await;
    let id = running(&west, "doubt", &["east"]).await;
    let moving = {
        let ops = west.ops.clone();
        let id = id.clone();
        tokio::spawn(async move { ops.migrate_vee_to_site(&id, &to_site("west", true)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    east.kill9();
    let e = moving
        .await
        .expect("the call ends")
        .expect_err("east does not answer");
    assert_eq!(e.code(), Some("site_unreachable"), "{e}");
    let view = get(&west.a, &id).await;
    assert_eq!(
        view.site, "east",
        "its source is east until east says otherwise"
    );

    east.start_again().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let view = get(&west.a, &id).await;
        if view.phase.is_none() && view.state == VmiState::Active {
            assert_eq!(view.site, "east");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never settled: {view:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        named(&east, "doubt").await.map(|v| v.state),
        Some(VmiState::Active),
        "it runs at east"
    );
    // Nothing waits for it at west any more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while west.data_dir().join("vees").join(&id).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "west keeps its directory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ctl_ok(&west.a, ControlAction::Pause, &[&id]).await;
}

#[tokio::test]
async fn a_migrating_vee_takes_its_lan_address_and_its_accounting_listener_along() {
    use crate::federation_lan::{copy_at, lan_site, nic_of, on_private_at, vxlan_ports};
    use std::time::Duration;
    let port = vxlan_ports();
    let west = Server::start_with(lan_site("west", port, Hypervisor::Sim)).await;
    let east = Server::start_with(lan_site("east", port + 1, Hypervisor::Sim)).await;
    register(&west, &east, "east").await;
    west.a
        .create_network("private", "10.216.3.0/24", false)
        .await
        .expect("sm-a's LAN at west");
    let id = init_one(&west.a, on_private_at("mover", &[], None)).await;
    ctl_ok(&west.a, ControlAction::Activate, &[&id]).await;
    let here = wait_state(&west.a, &id, VmiState::Active).await;
    let (network, ip) = nic_of(&here);
    assert_eq!(network, "private");
    let ip = ip.expect("an address on the LAN");
    let listener = Listener::start().await;
    west.a
        .listen(&[&id], 300, &listener.url)
        .await
        .expect("registered");
    // Records come on after each move (the site's DESTROY that ends its stay there is not the
    // VEE's end), always with the primary's id.
    let records_after = |since: u64| {
        let id = id.clone();
        move |items: &[(u64, serde_json::Value)]| {
            items
                .iter()
                .filter(|(_, r)| r["vee"] == id.as_str() && r["t0"].as_u64() >= Some(since))
                .count()
                >= 2
        }
    };

    let moved_at = wall_ms();
    let moved = migrate(&west, &id, "east", false).await;
    assert_eq!(
        (moved.site.as_str(), moved.state),
        ("east", VmiState::Active)
    );
    assert_eq!(nic_of(&moved), ("private".to_owned(), Some(ip.clone())));
    let there = named(&east, "mover").await.expect("east runs it");
    let copy = copy_at(&east, "east")
        .await
        .expect("the LAN extends to east");
    assert_eq!(copy.cidr, "10.216.3.0/24");
    assert_eq!(
        there.generated.nics[0].ip.as_deref(),
        Some(ip.as_str()),
        "the address west chose, at east"
    );
    listener
        .wait_for(
            "records relayed from east",
            Duration::from_secs(15),
            records_after(moved_at),
        )
        .await;

    let back_at = wall_ms();
    let back = migrate(&west, &id, "west", false).await;
    assert_eq!((back.site.as_str(), back.state), ("west", VmiState::Active));
    assert_eq!(nic_of(&back), ("private".to_owned(), Some(ip)));
    assert!(
        named(&east, "mover").await.is_none(),
        "nothing stays at east"
    );
    assert!(
        copy_at(&east, "east").await.is_none(),
        "the LAN left east with its last VEE"
    );
    let items = listener
        .wait_for(
            "records made here again",
            Duration::from_secs(15),
            records_after(back_at),
        )
        .await;
    assert!(
        items.iter().all(|(_, r)| r["vee"] == id.as_str()),
        "only the primary's id: {items:?}"
    );
    assert!(
        items.iter().all(|(_, r)| r["state"] != "DESTROYED"),
        "no move ended the VEE for its listener: {items:?}"
    );
}

/// The primary killed (kill -9) in the middle of a migration between two other sites: after
/// the send, while the destination (stopped, SIGSTOP) cannot be told to complete it. Started
/// again, it settles the migration from what its books noted before the send: the source
/// says the VEE left, so it runs at its destination, and only there, and the primary's
/// record says so.
#[tokio::test]
async fn a_primary_killed_in_the_middle_of_a_migration_settles_it_when_it_starts_again() {
    let mut west = site("west").await;
    // The source's send takes 3 s: time to stop the destination once it is ready.
    let east = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "latency_ms = { migrate = 3000 }")],
        ..site_setup("east")
    })
    .await;
    let north = site("north").await;
    register(&west, &east, "east").await;
    register(&west, &north, "north").await;
    let id = running(&west, "mv-cut", &["east"]).await;
    let at_east = named(&east, "mv-cut").await.expect("east runs it");

    let ops = west.ops.clone();
    let (vee, request) = (id.clone(), to_site("north", true));
    let migration = tokio::spawn(async move { ops.migrate_vee_to_site(&vee, &request).await });
    // North is ready and its VEE noted at west: north stops before it is told to complete.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(&west.ops, &id).await.phase != Some(veem_model::Phase::Migrating) {
        assert!(std::time::Instant::now() < deadline, "no migration");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    crate::federation_accounting::signal(&north, "-STOP");
    // East sent it (DESTROYED there): west waits for north, and dies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while east.ops.get_vee(&at_east.id).await.expect("at east").state != VmiState::Destroyed {
        assert!(std::time::Instant::now() < deadline, "east never sent it");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    west.kill9();
    assert!(
        migration.await.expect("joined").is_err(),
        "the primary died before it answered"
    );
    crate::federation_accounting::signal(&north, "-CONT");

    west.start_again().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let settled = loop {
        let v = get(&west.ops, &id).await;
        if v.site == "north" && v.state == VmiState::Active && v.phase.is_none() {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {v:?}\n{}",
            west.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // It runs at north, only there: east keeps nothing of it.
    let there = named(&north, "mv-cut").await.expect("north runs it");
    assert_eq!(there.state, VmiState::Active);
    assert_eq!(
        east.ops.get_vee(&at_east.id).await.map(|v| v.state).ok(),
        None,
        "purged at east"
    );
    let events = west.ops.vee_events(&id).await.expect("events").events;
    assert!(
        events.iter().any(|e| e.detail.as_deref()
            == Some(&format!(
                "migrated from site east to site north as {}",
                there.id
            ))),
        "{settled:?} {events:?}"
    );
}
