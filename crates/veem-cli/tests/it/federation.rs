//! Federation: VEEM processes on loopback, each with its own store and hosts, that know each
//! other as sites (`/vmi/v1/sites`). Toward a remote the VEEM is one more principal there.

use std::time::{Duration, Instant};

use veem_api::{SiteRequest, SiteState, SiteView};
use veem_client::{Client, ClientError};

use crate::harness::*;

/// The token the site named `of` gives the VEEM of another site.
fn peer_token(of: &str) -> String {
    format!("token-peer-of-{of}")
}

/// A site named `name` with one sim host, whose principals include `peer`, the principal its
/// peers' VEEMs present (no admin).
async fn site(name: &str) -> Server {
    Server::start_with(Setup {
        top_level_config: format!("site = \"{name}\"\n"),
        extra_config: format!(
            "\n[[principal]]\nname = \"peer\"\ntoken = \"{}\"\n",
            peer_token(name)
        ),
        hosts: vec![("h1", 8, 16384, "")],
        ..Setup::default()
    })
    .await
}

fn request(name: &str, url: &str, token: &str) -> SiteRequest {
    SiteRequest {
        name: name.to_owned(),
        url: url.to_owned(),
        token: token.to_owned(),
        ca_pem: None,
        client_cert_pem: None,
        client_key_pem: None,
    }
}

fn refusal(result: Result<SiteView, ClientError>) -> (u16, String) {
    let e = result.expect_err("refused");
    (
        e.status().expect("an answer"),
        e.code().unwrap_or_default().to_owned(),
    )
}

/// Waits until `client` sees `site` in `state`.
async fn wait_site(client: &Client, site: &str, state: SiteState, within: Duration) -> SiteView {
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
    let (west, mut east) = (site("west").await, site("east").await);
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

    // A site that stops answering is unreachable after 10 s, and up again once it answers.
    east.stop();
    wait_site(
        &west.ops,
        "east",
        SiteState::Unreachable,
        Duration::from_secs(20),
    )
    .await;
    east.start_again().await;
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
