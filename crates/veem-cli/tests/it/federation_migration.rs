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
    let defined = init_one(&west.a, with_disk("resting")).await;
    ctl_ok(&west.a, ControlAction::Activate, &[&defined]).await;
    ctl_ok(&west.a, ControlAction::Shutdown, &[&defined]).await;
    assert_eq!(
        refused(
            west.ops
                .migrate_vee_to_site(&defined, &to_site("east", false))
                .await
        ),
        (409, "wrong_state".to_owned()),
        "a DEFINED VEE"
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
    let e = east.a.complete_incoming(&mine).await.expect_err("refused");
    assert_eq!((e.status(), e.code()), (Some(409), Some("wrong_state")));
    // An incoming VEE is the caller's own, defined from a valid descriptor.
    let mut bad = small("bad");
    bad.cpu = 0;
    let e = east
        .a
        .receive_vee(&IncomingRequest { descriptor: bad })
        .await
        .expect_err("refused");
    assert_eq!(e.status(), Some(400));
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
