//! Federation: VEEM processes on loopback, each with its own store and hosts, that know each
//! other as sites (`/vmi/v1/sites`). Toward a remote the VEEM is one more principal there.

use std::time::{Duration, Instant};

use veem_api::{SiteRequest, SiteState, SiteView};
use veem_client::{Client, ClientError};

use crate::harness::*;
// The sites of these tests, shared with the benches (in the harness).
pub(crate) use crate::harness::{
    peer_site_setup as site_setup, peer_token, register_site as register,
};

/// A site named `name` with one sim host, whose principals include `peer`, the principal its
/// peers' VEEMs present (no admin).
pub(crate) async fn site(name: &str) -> Server {
    site_of(name, 8).await
}

/// [`site`] with a host of `cpus` CPUs.
pub(crate) async fn site_of(name: &str, cpus: u32) -> Server {
    Server::start_with(Setup {
        hosts: vec![("h1", cpus, 16384, "")],
        ..site_setup(name)
    })
    .await
}

/// The VEE named `name` at `server`, as its admin sees it: also a replica of a batch of
/// `name` (named `name-1`, ...), so that "none named so" means none of the batch either.
pub(crate) async fn named(server: &Server, name: &str) -> Option<veem_api::VeeView> {
    server
        .ops
        .list_all_vees(&veem_client::ListQuery::default())
        .await
        .expect("listed")
        .into_iter()
        .find(|v| v.name == name || v.descriptor.name == name)
}

/// ACTIVATE of a VEE no place can take now: answered `pending` once a short timeout ran out.
pub(crate) async fn waits_when_activated(client: &Client, id: &str) {
    let answer = client
        .update_state(&veem_api::UpdateStateRequest {
            order: veem_api::Order::List,
            ids: vec![id.to_owned()],
            action: veem_model::ControlAction::Activate,
            timeout_ms: Some(1_500),
        })
        .await
        .expect("answered");
    assert_eq!(
        answer.failed.first().map(|f| f.error.as_str()),
        Some("pending"),
        "{answer:?}"
    );
}

pub(crate) fn at(sites: &[&str]) -> Vec<veem_model::SiteName> {
    sites
        .iter()
        .map(|s| veem_model::SiteName::new(*s).expect("a site name"))
        .collect()
}

pub(crate) fn request(name: &str, url: &str, token: &str) -> SiteRequest {
    SiteRequest {
        name: name.to_owned(),
        url: url.to_owned(),
        token: token.to_owned(),
        ca_pem: None,
        client_cert_pem: None,
        client_key_pem: None,
    }
}

pub(crate) fn refusal(result: Result<SiteView, ClientError>) -> (u16, String) {
    let e = result.expect_err("refused");
    (
        e.status().expect("an answer"),
        e.code().unwrap_or_default().to_owned(),
    )
}

/// Waits until `client` sees `site` in `state`.
pub(crate) async fn wait_site(
    client: &Client,
    site: &str,
    state: SiteState,
    within: Duration,
) -> SiteView {
    let deadline = Instant::now() + within;
    loop {
        let view = client.get_site(site).await.expect("the site is registered");
        if view.state == state {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "site {site} still {:?} after {within:?}",
            view.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_site_is_registered_only_once_it_answers_with_the_token_given() {
    let (west, east) = (site("west").await, site("east").await);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        format!("http://{}", listener.local_addr().expect("an address"))
    };
    assert_eq!(
        refusal(
            west.ops
                .add_site(&request("east", &east.url, "wrong"))
                .await
        ),
        (400, "unauthenticated".to_owned()),
        "a wrong token"
    );
    assert_eq!(
        refusal(
            west.ops
                .add_site(&request("east", &closed, &peer_token("east")))
                .await
        ),
        (400, "site_unreachable".to_owned()),
        "nothing listens there"
    );
    assert_eq!(
        refusal(
            west.ops
                .add_site(&request("west", &east.url, &peer_token("east")))
                .await
        ),
        (400, "malformed_request".to_owned()),
        "this site's own name"
    );
    assert_eq!(
        refusal(
            west.a
                .add_site(&request("east", &east.url, &peer_token("east")))
                .await
        ),
        (403, "access_denied".to_owned()),
        "sites are an admin's"
    );
    assert!(
        west.ops
            .list_sites()
            .await
            .expect("listed")
            .sites
            .is_empty(),
        "nothing refused was registered"
    );

    let added = west
        .ops
        .add_site(&request("east", &east.url, &peer_token("east")))
        .await
        .expect("registered");
    assert_eq!(
        (added.name.as_str(), added.state, added.vees),
        ("east", SiteState::Up, Some(0))
    );
    assert_eq!(added.url.as_deref(), Some(east.url.as_str()));
    assert_eq!(
        refusal(
            west.ops
                .add_site(&request("east", &east.url, &peer_token("east")))
                .await
        ),
        (409, "conflict".to_owned()),
        "one site of a name"
    );
    // A tenant sees a site's name and state, not where it is.
    let seen = west.a.list_sites().await.expect("listed").sites;
    assert_eq!(
        seen,
        vec![SiteView {
            name: "east".into(),
            url: None,
            state: SiteState::Up,
            since_ms: None,
            vees: None,
        }]
    );

    // A site that stops answering (its process stopped, SIGSTOP) is unreachable after 10 s,
    // and up again once it answers (SIGCONT).
    let pid = east.pid().expect("east runs").to_string();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    wait_site(
        &west.ops,
        "east",
        SiteState::Unreachable,
        Duration::from_secs(20),
    )
    .await;
    signal("-CONT");
    wait_site(&west.ops, "east", SiteState::Up, Duration::from_secs(10)).await;

    west.ops.delete_site("east").await.expect("removed");
    assert_eq!(
        west.ops.get_site("east").await.expect_err("gone").status(),
        Some(404)
    );
}

#[tokio::test]
async fn registered_sites_are_kept_across_a_restart_and_named_in_descriptors() {
    let (mut west, east) = (site("west").await, site("east").await);
    west.ops
        .add_site(&request("east", &east.url, &peer_token("east")))
        .await
        .expect("registered");
    west.restart().await;
    let sites = west.ops.list_sites().await.expect("listed").sites;
    assert_eq!(
        sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["east"]
    );

    // A descriptor may prefer registered sites and this one, and nothing else.
    let mut d = small("picky");
    d.sites = vec![veem_model::SiteName::new("north").expect("a name")];
    let refused = west
        .a
        .initialize(&veem_api::InitializeRequest {
            model: veem_model::InitModel::Besteffort,
            count: 1,
            descriptor: d,
        })
        .await
        .expect_err("no such site");
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(400), Some("malformed_descriptor"))
    );
    let mut d = small("local-first");
    d.sites = ["west", "east"]
        .iter()
        .map(|s| veem_model::SiteName::new(*s).expect("a name"))
        .collect();
    init_one(&west.a, d).await;
}

#[tokio::test]
async fn vees_run_at_the_site_they_are_placed_and_are_controlled_through_their_primary() {
    use veem_model::{ControlAction as A, VmiState};
    let (mut west, mut east) = (site_of("west", 2).await, site("east").await);
    register(&west, &east, "east").await;

    // Forced: the descriptor names the site. Its image is sent there, as the primary has it.
    let image = b"the bytes of a tiny image".to_vec();
    west.a
        .push_image_bytes("tiny", image.clone())
        .await
        .expect("uploaded");
    let mut d = small("forced");
    d.disks = vec![tiny_disk()];
    d.sites = at(&["east"]);
    let forced = init_one(&west.a, d).await;
    ctl_ok(&west.a, A::Activate, &[&forced]).await;
    let view = wait_state(&west.a, &forced, VmiState::Active).await;
    assert_eq!(
        (view.site.as_str(), view.host.as_ref(), view.site_state),
        ("east", None, SiteState::Up)
    );
    assert_eq!(view.id, forced, "it keeps its primary's id");
    let there = named(&east, "forced").await.expect("it runs at east");
    assert_eq!(
        (there.owner.as_str(), there.state, there.site.as_str()),
        ("peer", VmiState::Active, "east"),
        "at east it is a VEE of the peer principal"
    );
    assert!(there.host.is_some());
    // Its site's HARDWARE events reach the primary's subscribers, as events of the primary's VEE.
    let listener = Listener::start().await;
    west.a
        .subscribe(&listener.url, &[veem_model::EventType::Hardware])
        .await
        .expect("subscribed");
    let relayed = listener
        .wait_for(
            "a HARDWARE event of the VEE at east",
            Duration::from_secs(10),
            |items| items.iter().any(|(_, e)| e["vee"] == forced.as_str()),
        )
        .await;
    let event = &relayed
        .iter()
        .find(|(_, e)| e["vee"] == forced.as_str())
        .expect("found")
        .1;
    let fqns: Vec<&str> = event["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .filter_map(|m| m["fqn"].as_str())
        .collect();
    assert!(
        !fqns.is_empty() && fqns.iter().all(|f| f.starts_with(&format!("{forced}."))),
        "FQNs under the primary's id: {fqns:?}"
    );
    let peer_at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    let sent = peer_at_east.list_images().await.expect("listed").images;
    assert_eq!(
        sent.iter()
            .map(|i| (i.name.as_str(), i.owner.as_str(), i.size_bytes))
            .collect::<Vec<_>>(),
        [("tiny", "peer", image.len() as u64)],
        "the image went to east as the peer's"
    );

    // Spill-over: more CPUs than any local host has.
    let mut big = small("big");
    big.cpu = 4;
    let big = init_one(&west.a, big).await;
    ctl_ok(&west.a, A::Activate, &[&big]).await;
    assert_eq!(
        wait_state(&west.a, &big, VmiState::Active).await.site,
        "east"
    );
    // Local first when it fits.
    let local = init_one(&west.a, small("local")).await;
    ctl_ok(&west.a, A::Activate, &[&local]).await;
    let view = wait_state(&west.a, &local, VmiState::Active).await;
    assert_eq!((view.site.as_str(), view.host.is_some()), ("west", true));
    assert!(named(&east, "local").await.is_none());
    // Nowhere: a VEE no site can take waits, saying where it was tried.
    let mut huge = small("huge");
    huge.cpu = 64;
    let huge = init_one(&west.a, huge).await;
    waits_when_activated(&west.a, &huge).await;
    let waiting = get(&west.a, &huge).await;
    let why = waiting.pending_reason.unwrap_or_default();
    assert!(
        why.contains("local hosts") && why.contains("site east"),
        "{why}"
    );

    // Actions go to the VEE's site through its primary.
    ctl_ok(&west.a, A::Pause, &[&forced]).await;
    assert_eq!(get(&west.a, &forced).await.state, VmiState::Paused);
    assert_eq!(
        get(&east.ops, &there.id).await.state,
        VmiState::Paused,
        "paused at its site"
    );
    ctl_ok(&west.a, A::Activate, &[&forced]).await;
    assert_eq!(get(&east.ops, &there.id).await.state, VmiState::Active);

    // A resize goes to its site too; the primary shows the site's descriptor.
    let patched = west
        .a
        .patch_vee(
            &forced,
            &veem_api::PatchRequest {
                cpu: None,
                memory_mb: Some(256),
            },
        )
        .await
        .expect("resized at east");
    assert_eq!(patched.vee.descriptor.memory_mb, 256);
    assert_eq!(get(&east.ops, &there.id).await.descriptor.memory_mb, 256);

    // Its accounting is read where it is kept: at its site, under the primary's id.
    let counter = Listener::start().await;
    peer_at_east
        .listen(&[there.id.as_str()], 200, &counter.url)
        .await
        .expect("a listener at east");
    counter
        .wait_for("two records at east", Duration::from_secs(10), |items| {
            items.len() >= 2
        })
        .await;
    let kept = west
        .a
        .vee_accounting(&forced, None, None)
        .await
        .expect("read through the primary")
        .records;
    assert!(kept.len() >= 2, "{kept:?}");
    assert!(kept.iter().all(|r| r.vee.as_str() == forced), "{kept:?}");

    // A change the site makes by itself reaches the primary, pushed.
    ctl_ok(&east.ops, A::Destroy, &[&there.id]).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(&west.a, &forced).await.state != VmiState::Destroyed {
        assert!(
            Instant::now() < deadline,
            "the primary did not hear of the destroy within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = west.a.vee_events(&forced).await.expect("events").events;
    assert!(
        events
            .iter()
            .any(|e| e.detail.as_deref() == Some("at site east")),
        "{events:?}"
    );

    // Its disk is downloaded through its primary, from its site.
    let out = west.dir.path().join("forced-vda.qcow2");
    let via_west = west
        .a
        .download_disk(&forced, "vda", &out)
        .await
        .expect("downloaded from east");
    let direct = east.dir.path().join("direct-vda.qcow2");
    let at_east = peer_at_east
        .download_disk(&there.id, "vda", &direct)
        .await
        .expect("downloaded at east");
    assert!(
        via_west > 0 && via_west == at_east,
        "{via_west} vs {at_east} bytes"
    );

    // Purge at the primary leaves nothing at the site.
    west.a.purge_vee(&forced).await.expect("purged");
    assert!(named(&east, "forced").await.is_none(), "gone at east too");
    let east_view = west.ops.get_site("east").await.expect("registered");
    assert_eq!(east_view.vees, Some(1), "big still lives there");
    assert_eq!(
        west.ops
            .delete_site("east")
            .await
            .expect_err("in use")
            .code(),
        Some("in_use")
    );

    // A site that does not answer (killed, kill -9): its VEEs show so, and actions on them fail.
    east.kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&west.a, &big).await.site_state != SiteState::Unreachable {
        assert!(Instant::now() < deadline, "east never became unreachable");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&west.a, &big).await.state,
        VmiState::Active,
        "its last known state"
    );
    let refused = ctl(&west.a, A::Pause, &[&big]).await;
    assert_eq!(
        refused.failed.first().map(|f| f.error.as_str()),
        Some("site_unreachable")
    );
    east.start_again().await;
    wait_site(&west.ops, "east", SiteState::Up, Duration::from_secs(10)).await;
    ctl_ok(&west.a, A::Pause, &[&big]).await;

    // A change made at the site while the primary is down is read when it is back.
    let big_there = named(&east, "big").await.expect("big runs at east");
    west.stop();
    ctl_ok(&east.ops, A::Activate, &[&big_there.id]).await;
    west.start_again().await;
    wait_state(&west.a, &big, VmiState::Active).await;
}

/// `veem` as a process against `server`, as `token`.
pub(crate) fn veem(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(veem_bin())
        .args(args)
        .env("VEEM_URL", &server.url)
        .env("VEEM_TOKEN", token)
        .output()
        .expect("the CLI runs")
}

pub(crate) fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_registers_sites_and_places_vees_there() {
    let (west, east) = (site("west").await, site("east").await);
    let token = peer_token("east");
    let added = stdout_of(&veem(
        &west,
        TOKEN_OPS,
        &[
            "site",
            "add",
            "east",
            &east.url,
            "--site-token",
            &token,
            "-o",
            "json",
        ],
    ));
    let added: serde_json::Value = serde_json::from_str(&added).expect("JSON");
    assert_eq!(
        (added["name"].as_str(), added["state"].as_str()),
        (Some("east"), Some("up"))
    );
    let listed = stdout_of(&veem(&west, TOKEN_A, &["site", "ls"]));
    assert!(listed.contains("east") && listed.contains("up"), "{listed}");
    let refused = veem(
        &west,
        TOKEN_OPS,
        &["site", "add", "north", &east.url, "--site-token", "wrong"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let made = stdout_of(&veem(
        &west,
        TOKEN_A,
        &[
            "vee",
            "init",
            "--name",
            "away",
            "--cpu",
            "1",
            "--memory-mb",
            "256",
            "--site",
            "east",
            "-o",
            "json",
        ],
    ));
    let made: serde_json::Value = serde_json::from_str(&made).expect("JSON");
    let id = made["vees"][0]["id"].as_str().expect("an id").to_owned();
    ctl_ok(&west.a, veem_model::ControlAction::Activate, &[&id]).await;
    let table = stdout_of(&veem(&west, TOKEN_A, &["vee", "ls"]));
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("ACTIVE") && row.contains(" east "), "{row}");
}

#[tokio::test]
async fn twophase_is_all_or_nothing_across_sites() {
    use veem_model::{ControlAction as A, InitModel, VmiState};
    let (west, east) = (site_of("west", 2).await, site("east").await);
    register(&west, &east, "east").await;

    // Three of one CPU do not fit west's two: all three are reserved at east.
    let ids = init(&west.a, InitModel::Twophase, 3, small("trio")).await;
    for id in &ids {
        let view = get(&west.a, id).await;
        assert_eq!(
            (view.state, view.site.as_str(), view.host.as_ref()),
            (VmiState::Defined, "east", None),
            "{id}"
        );
    }
    let reserved = east
        .ops
        .list_all_vees(&veem_client::ListQuery::default())
        .await
        .expect("listed");
    assert_eq!(reserved.len(), 3, "reserved at east");
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&west.a, A::Activate, &refs).await;
    for id in &ids {
        assert_eq!(get(&west.a, id).await.state, VmiState::Active);
    }

    // Twenty fit nowhere: refused, naming each place, and nothing is left at either site.
    let refused = west
        .a
        .initialize(&veem_api::InitializeRequest {
            model: InitModel::Twophase,
            count: 20,
            descriptor: small("crowd"),
        })
        .await
        .expect_err("no site has room");
    assert_eq!(refused.code(), Some("insufficient_resources"));
    let said = refused.to_string();
    assert!(
        said.contains("local hosts") && said.contains("site east"),
        "{said}"
    );
    assert!(
        named(&east, "crowd").await.is_none(),
        "nothing reserved at east"
    );
    assert!(
        named(&west, "crowd").await.is_none(),
        "nothing defined at west"
    );
}

/// A site named `name` with no host of its own and one remote sim agent of `cpus` CPUs, lost
/// after `dead_after_ms` of silence.
pub(crate) async fn site_with_agent(
    name: &str,
    cpus: u32,
    dead_after_ms: u64,
) -> (Server, RemoteAgent) {
    let server = Server::start_with(Setup {
        hosts: vec![],
        host_dead_after_ms: dead_after_ms,
        ..site_setup(name)
    })
    .await;
    let agent = RemoteAgent::start(&server, "r1", cpus, 16384);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server
        .ops
        .list_hosts()
        .await
        .expect("hosts")
        .hosts
        .iter()
        .all(|h| h.state != veem_api::HostState::Up)
    {
        assert!(Instant::now() < deadline, "the agent never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, agent)
}

#[tokio::test]
async fn three_sites_spill_over_in_order_and_a_lost_hosts_vee_restarts_at_another_site() {
    use veem_model::{ControlAction as A, VmiState};
    let (west, mut agent) = site_with_agent("west", 2, 2_000).await;
    let (east, north) = (site_of("east", 2).await, site("north").await);
    register(&west, &east, "east").await;
    register(&west, &north, "north").await;

    // Four CPUs: not west's two, not east's two, north's eight.
    let mut wide = small("wide");
    wide.cpu = 4;
    let wide = init_one(&west.a, wide).await;
    ctl_ok(&west.a, A::Activate, &[&wide]).await;
    assert_eq!(
        wait_state(&west.a, &wide, VmiState::Active).await.site,
        "north"
    );
    assert!(
        named(&east, "wide").await.is_none(),
        "east was tried and refused"
    );

    // The paper's 2.2.8 across sites: the host of a running replica is lost and no local host
    // is left; the replica boots again at the first site with room.
    let mut replica = small("replica");
    replica.restart_attempts = 1;
    let replica = init_one(&west.a, replica).await;
    ctl_ok(&west.a, A::Activate, &[&replica]).await;
    let here = wait_state(&west.a, &replica, VmiState::Active).await;
    assert_eq!((here.site.as_str(), here.host.is_some()), ("west", true));
    agent.kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = get(&west.a, &replica).await;
        if view.state == VmiState::Active && view.site == "east" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not restart at east: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let there = named(&east, "replica").await.expect("it runs at east");
    assert_eq!(there.state, VmiState::Active);
}

#[tokio::test]
async fn tags_travel_with_a_vee_and_bind_only_its_owners_vees_at_the_site() {
    use veem_model::{ControlAction as A, VmiState};
    // East has one host: two VEEs of one owner that must not share a host cannot both run
    // there; two of different owners can.
    let (west, east) = (site("west").await, site_of("east", 8).await);
    register(&west, &east, "east").await;
    let db = |name: &str| {
        let mut d = small(name);
        d.sites = at(&["east"]);
        d.tags = vec!["db".into()];
        d.anti_affinity = vec!["db".into()];
        d
    };
    let a1 = init_one(&west.a, db("a1")).await;
    let b1 = init_one(&west.b, db("b1")).await;
    ctl_ok(&west.a, A::Activate, &[&a1]).await;
    ctl_ok(&west.b, A::Activate, &[&b1]).await;
    for (client, id) in [(&west.a, &a1), (&west.b, &b1)] {
        let view = wait_state(client, id, VmiState::Active).await;
        assert_eq!(view.site, "east");
        assert_eq!(
            view.descriptor.tags,
            vec!["db"],
            "the primary shows its own tags"
        );
    }
    // The owner's second "db" finds no host of east without one: it waits, saying why.
    let a2 = init_one(&west.a, db("a2")).await;
    waits_when_activated(&west.a, &a2).await;
    let why = get(&west.a, &a2).await.pending_reason.unwrap_or_default();
    assert_eq!(why.matches("site east").count(), 1, "named once: {why}");
}

#[tokio::test]
async fn a_site_over_https_is_verified_with_the_ca_given_at_registration() {
    let west = site("west").await;
    let east = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        tls: Some(vec![]),
        ..site_setup("east")
    })
    .await;
    assert!(east.url.starts_with("https://"));
    // Its certificate is signed by its own CA, which the system's roots do not know.
    assert_eq!(
        refusal(
            west.ops
                .add_site(&request("east", &east.url, &peer_token("east")))
                .await
        ),
        (400, "site_unreachable".to_owned())
    );
    let ca = std::fs::read_to_string(east.ca.as_ref().expect("east's CA")).expect("readable");
    let not_pem = SiteRequest {
        ca_pem: Some("not a certificate".into()),
        ..request("east", &east.url, &peer_token("east"))
    };
    assert_eq!(
        refusal(west.ops.add_site(&not_pem).await),
        (400, "malformed_request".to_owned())
    );
    let with_ca = SiteRequest {
        ca_pem: Some(ca),
        ..request("east", &east.url, &peer_token("east"))
    };
    let added = west
        .ops
        .add_site(&with_ca)
        .await
        .expect("verified with its CA");
    assert_eq!(added.state, SiteState::Up);
    let mut d = small("secure");
    d.sites = at(&["east"]);
    let id = init_one(&west.a, d).await;
    ctl_ok(&west.a, veem_model::ControlAction::Activate, &[&id]).await;
    let view = wait_state(&west.a, &id, veem_model::VmiState::Active).await;
    assert_eq!(view.site, "east", "placed and pushed back over https");
}

#[tokio::test]
async fn uc_2_2_3_a_replica_no_local_host_may_take_runs_at_another_site_from_the_same_image() {
    use veem_model::{ControlAction as A, VmiState};
    // West has one host: the database's replica may not share it with the original
    // (anti-affinity), so it spills over to east, which gets west's master image.
    let (west, east) = (site("west").await, site("east").await);
    register(&west, &east, "east").await;
    let image = b"db-v1: the master image".to_vec();
    west.a
        .push_image_bytes("db-v1", image.clone())
        .await
        .expect("uploaded");
    let original = init_one(&west.a, crate::use_cases::db("db", "db-v1")).await;
    ctl_ok(&west.a, A::Activate, &[&original]).await;
    let replica = init_one(&west.a, crate::use_cases::db("db-replica", "db-v1")).await;
    ctl_ok(&west.a, A::Activate, &[&replica]).await;
    let (o, r) = (
        wait_state(&west.a, &original, VmiState::Active).await,
        wait_state(&west.a, &replica, VmiState::Active).await,
    );
    assert_eq!((o.site.as_str(), r.site.as_str()), ("west", "east"));
    assert!(o.host.is_some() && r.host.is_none(), "{o:?} {r:?}");
    assert_eq!(
        o.descriptor.disks[0].source, r.descriptor.disks[0].source,
        "the same master image, as the primary shows it"
    );
    let there = named(&east, "db-replica").await.expect("it runs at east");
    assert_eq!(there.state, VmiState::Active);
    let peer_at_east = Client::new(&east.url, &peer_token("east")).expect("a client");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sent = dir.path().join("db-v1");
    peer_at_east
        .image_data("db-v1", &sent)
        .await
        .expect("east holds the master image west sent");
    assert_eq!(std::fs::read(&sent).expect("read"), image, "byte for byte");
}

#[tokio::test]
async fn a_site_that_asks_for_a_client_certificate_gets_the_one_given_at_registration() {
    // East speaks HTTPS and asks its callers for a certificate of its CA (its `client_ca`, here
    // its `ca_file`); its operator made one for west (`veem tls init --agent west`).
    let west = site("west").await;
    let east = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        tls: Some(vec!["west"]),
        ..site_setup("east")
    })
    .await;
    let ca_path = east.ca.clone().expect("east's CA");
    let east_tls = ca_path.parent().expect("east's TLS directory");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).expect("readable");
    let with_identity = |dir: &std::path::Path| SiteRequest {
        ca_pem: Some(read(&ca_path)),
        client_cert_pem: Some(read(&dir.join("agent-west.pem"))),
        client_key_pem: Some(read(&dir.join("agent-west.key"))),
        ..request("east", &east.url, &peer_token("east"))
    };
    // A certificate of another CA fails east's handshake: west presented it.
    let elsewhere = tempfile::tempdir().expect("a temporary directory");
    let other_ca = tls_init(&elsewhere.path().join("tls"), &["west"]);
    assert_eq!(
        refusal(west.ops.add_site(&with_identity(&other_ca)).await),
        (400, "site_unreachable".to_owned())
    );
    assert!(west
        .ops
        .list_sites()
        .await
        .expect("listed")
        .sites
        .is_empty());
    // East's own certificate for west is taken, and the site is used over it.
    let added = west
        .ops
        .add_site(&with_identity(east_tls))
        .await
        .expect("the handshake passes with east's certificate");
    assert_eq!(added.state, SiteState::Up);
    let mut d = small("mutual");
    d.sites = at(&["east"]);
    let id = init_one(&west.a, d).await;
    ctl_ok(&west.a, veem_model::ControlAction::Activate, &[&id]).await;
    let view = wait_state(&west.a, &id, veem_model::VmiState::Active).await;
    assert_eq!(view.site, "east", "placed and pushed back over mTLS");
}
