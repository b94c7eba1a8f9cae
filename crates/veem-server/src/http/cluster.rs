//! `GET /cluster`, and the front door of a front-end among several (`[store] url`): the
//! leader serves the VMI itself; a follower forwards each call to the leader and answers what
//! the leader answered, or `503 not_leader` when it knows of none or cannot reach it. It never
//! acknowledges a change on its own. Agents are sent on to the leader (`307` to its agents'
//! route), since their WebSocket is held by the leader itself.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower::ServiceExt as _;

use super::common::{authenticated_admin, AppState};
use super::problem::{ApiError, ApiResult};
use crate::auth::Authenticator;
use crate::cluster::{Cluster, Role};
use crate::error::CoreError;

/// Marks a call a follower forwarded: the front-end it reaches answers it itself or not at
/// all, so two front-ends that each believe the other leads cannot bounce a call forever.
const FORWARDED_BY: &str = "x-veem-forwarded-by";
/// How long a follower waits to connect to the leader before answering `not_leader`.
const LEADER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the front door is given.
#[derive(Clone)]
pub(crate) struct FrontDoor {
    cluster: Arc<Cluster>,
    auth: Arc<Authenticator>,
    /// The VMI's routes once this front-end leads (made once: it leads at most once per
    /// process, see `cluster.rs`).
    leading: Arc<OnceLock<Router>>,
    forwarder: reqwest::Client,
    config: Arc<crate::Config>,
}

/// The routes of a front-end among several.
pub(crate) fn router(
    cluster: Arc<Cluster>,
    auth: Arc<Authenticator>,
    config: &crate::Config,
) -> anyhow::Result<Router> {
    let ca_file = config.tls.as_ref().and_then(|tls| tls.ca_file.as_deref());
    let tls = veem_tls::client_config(ca_file, None)?;
    let forwarder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(LEADER_CONNECT_TIMEOUT)
        .no_proxy()
        // The leader's redirects are the caller's to follow.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let door = FrontDoor {
        cluster,
        auth,
        leading: Arc::new(OnceLock::new()),
        forwarder,
        config: Arc::new(config.clone()),
    };
    Ok(Router::new()
        .route(super::metrics::PATH, get(metrics))
        .route(&format!("{}/cluster", veem_api::BASE_PATH), get(view))
        // The dashboard's files are the same at every front-end: served here, never forwarded.
        .merge(super::ui::routes())
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(
            super::metrics::measure_front_door,
        ))
        .with_state(door))
}

/// `GET /cluster` (admin), from the database: every front-end answers the same.
async fn view(
    State(door): State<FrontDoor>,
    headers: HeaderMap,
) -> ApiResult<Json<veem_api::ClusterView>> {
    authenticated_admin(&headers, &door.auth)?;
    Ok(Json(door.cluster.view().await?))
}

/// `GET /cluster` of a VEEM alone on its store: it leads, since it started.
pub(super) async fn alone(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<veem_api::ClusterView>> {
    authenticated_admin(&headers, &state.auth)?;
    let me = state.front_end.as_ref();
    Ok(Json(veem_api::ClusterView {
        leader: Some(me.name.clone()),
        members: vec![me.clone()],
    }))
}

/// `GET /metrics` of a front-end among several. The leader answers from its books; any other
/// front-end has none, and shows its own process's series (its HTTP requests, `veem_leader 0`)
/// rather than forwarding: Prometheus scrapes every front-end, and each answers for itself.
async fn metrics(State(door): State<FrontDoor>, request: Request) -> Response {
    let token = door.config.metrics_token.as_deref();
    if let Err(refused) = super::metrics::check_token(request.headers(), token) {
        return refused.into_response();
    }
    match door.cluster.role() {
        Role::Leading(_) if door.cluster.holds_lease() => dispatch(State(door), request).await,
        _ => super::metrics::exposition(request.headers(), None),
    }
}

async fn dispatch(State(door): State<FrontDoor>, request: Request) -> Response {
    match door.cluster.role() {
        Role::Leading(_) if !door.cluster.holds_lease() => {
            not_leader("this front-end's leader lease ran out; it no longer answers for the site")
        }
        Role::Leading(veem) => {
            let app = door
                .leading
                .get_or_init(|| super::router(AppState::new(veem, &door.config)));
            match app.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
        Role::Starting => not_leader("this front-end leads and is loading its books; call again"),
        Role::Following(None) => not_leader(
            "no front-end of this site holds the leader lease now; call again in a few seconds",
        ),
        Role::Following(Some(leader)) => {
            if request.headers().contains_key(FORWARDED_BY) {
                return not_leader(&format!(
                    "a call forwarded here, to a follower; the leader is {} ({})",
                    leader.name, leader.url
                ));
            }
            let agents = format!("{}/agents/connect", veem_api::BASE_PATH);
            if request.uri().path() == agents {
                // Agents keep their socket with the leader itself.
                return (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("{}{agents}", leader.url))],
                )
                    .into_response();
            }
            forward(&door, &leader, request).await
        }
    }
}

fn not_leader(detail: &str) -> Response {
    let mut response = ApiError::from(CoreError::NotLeader(detail.to_owned())).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// Headers that belong to one connection (RFC 9110, section 7.6.1), not to the call.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Sends `request` to the leader and streams its answer back, both bodies streamed (an image
/// upload, a disk download, the event stream).
async fn forward(door: &FrontDoor, leader: &veem_store::LeaderView, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = format!("{}{path}", leader.url);
    let mut outgoing = door
        .forwarder
        .request(parts.method.clone(), &url)
        .header(FORWARDED_BY, &door.cluster.me.name)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    // A leader that stopped (SIGSTOP, a frozen machine) accepts connections and answers
    // nothing: the call is given up once another front-end holds the lease.
    let answer = tokio::select! {
        answer = outgoing.send() => answer,
        () = door.cluster.leader_changed(leader) => {
            return not_leader(&format!(
                "the leader {} stopped answering and another front-end took over while this \
                 call was under way: it may or may not have been done; read before calling again",
                leader.name
            ));
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(leader = %leader.name, %url, error = %e, "cannot forward a call to the leader");
            return not_leader(&format!(
                "the leader {} ({}) cannot be reached from this front-end: {e}",
                leader.name, leader.url
            ));
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|e| {
            ApiError::from(CoreError::internal("relaying the leader's answer", e)).into_response()
        })
}
