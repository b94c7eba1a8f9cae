//! OCCI 1.2 (OGF GFD.221 core, GFD.222 HTTP protocol, GFD.223 text rendering, GFD.224
//! infrastructure, GFD.226 JSON rendering) over the same core as the VMI, at the root of a
//! listener of its own (`[occi] listen`). The one place of veem that knows OCCI.
//!
//! - `compute` is a VEE (`/compute/{vee id}`): created BESTEFFORT, one, and left `inactive`
//!   (DEFINED) as the OCCI state model says, until `start`; DELETE purges it.
//! - `storage` is an image of the caller's (`/storage/{name}`); `network` a network
//!   (`/network/{name}`, created with the `ipnetwork` mixin's `occi.network.address`).
//! - `storagelink` and `networkinterface` are a VEE's disks from images and its NICs
//!   (`/storagelink/{vee}_{n}`, `/networkinterface/{vee}_{n}`, `n` the disk's or NIC's index in
//!   the descriptor), shown with the compute; they are made with the compute (links in its
//!   creation request), by `POST /storagelink/` or `/networkinterface/` (`occi.core.source` the
//!   compute, `occi.core.target` the storage or network), or by a `Link` POSTed to the compute,
//!   and deleted by `DELETE` of their location, while the compute holds no host (DEFINED);
//!   removing one renumbers the compute's later links of its kind.
//! - `os_tpl` mixins are the images the caller sees; `resource_tpl` mixins the sizes of
//!   [`model::SIZES`].
//!
//! Every request is authenticated first (Bearer token, or HTTP Basic with the principal's
//! name and its token), then its `Accept` is matched (406), its rendering read by
//! `Content-Type` (415, 400), and only then is anything looked up or changed.

mod json;
mod model;
mod request;
mod text;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use tower::ServiceExt as _;
use veem_api::{NetworkRequest, Order};
use veem_model::{
    ControlAction, DiskKind, DiskSource, DiskSpec, ImageName, InitModel, NicSpec, VeeDescriptor,
    VeeId, VeeRecord, VmiState,
};

use self::model::{
    Category, CategoryRef, Class, Entity, Value, COMPUTE_ACTION, INFRA, NETIF_MIXIN,
    NETWORK_ACTION, NETWORK_MIXIN, OS_TPL, RESOURCE_TPL, SIZES, STORAGE_ACTION,
};
use self::request::OcciRequest;
use super::common::AppState;
use super::problem::status_of;
use crate::auth::Caller;
use crate::error::CoreError;

/// How long an action waits for the VEE to reach its state before answering.
const ACTION_TIMEOUT: Duration = Duration::from_secs(120);
/// What a follower of a cluster tells OCCI clients to wait before calling again.
const RETRY_AFTER_SECONDS: &str = "5";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What the OCCI handlers are given: the VMI's state, and the scheme the listener serves.
#[derive(Clone)]
struct Occi {
    app: AppState,
    scheme: &'static str,
}

/// The OCCI routes of a VEEM serving `app`; `https` when the listener speaks TLS (locations
/// are written with it).
pub fn router(app: AppState, https: bool) -> Router {
    let state = Occi {
        app,
        scheme: if https { "https" } else { "http" },
    };
    Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(
            veem_api::MAX_REQUEST_BODY_BYTES,
        ))
        .layer(axum::middleware::map_response(with_server_header))
        .with_state(state)
}

/// The OCCI routes of a front-end among several: served from the core while this front-end
/// leads; elsewhere `503` with `Retry-After` (OCCI calls are not forwarded to the leader).
pub(crate) fn cluster_router(
    cluster: Arc<crate::cluster::Cluster>,
    config: &crate::Config,
    https: bool,
) -> Router {
    let leading: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let config = Arc::new(config.clone());
    Router::new()
        .fallback(move |request: Request| {
            let cluster = cluster.clone();
            let leading = leading.clone();
            let config = config.clone();
            async move {
                match cluster.role() {
                    crate::cluster::Role::Leading(veem) if cluster.holds_lease() => {
                        let app = leading
                            .get_or_init(|| router(AppState::new(veem, &config), https))
                            .clone();
                        match app.oneshot(request).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    }
                    _ => {
                        let mut response = OcciError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this front-end does not lead its site; OCCI is answered by the leader's \
                         OCCI listener only (see GET /vmi/v1/cluster)",
                    )
                    .into_response();
                        response.headers_mut().insert(
                            header::RETRY_AFTER,
                            HeaderValue::from_static(RETRY_AFTER_SECONDS),
                        );
                        response
                    }
                }
            }
        })
        .layer(axum::middleware::map_response(with_server_header))
}

/// What every OCCI answer says it comes from: GFD.222 has a server name its OCCI version.
const SERVER: &str = concat!("veem/", env!("CARGO_PKG_VERSION"), " OCCI/1.2");

async fn with_server_header(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(SERVER));
    response
}

// ---- errors ----

/// An OCCI error answer: a status and a message a person can read.
#[derive(Debug)]
struct OcciError {
    status: StatusCode,
    message: String,
    /// For `405`: the methods the location takes.
    allow: Option<&'static str>,
}

impl OcciError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(location: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("nothing at {location}"))
    }

    fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, message)
    }

    fn method(method: &Method, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here; allowed: {allow}"),
            )
        }
    }
}

impl From<CoreError> for OcciError {
    fn from(e: CoreError) -> Self {
        if matches!(e, CoreError::Internal { .. }) {
            tracing::error!(error = %e, "internal error answering OCCI");
        }
        Self::new(status_of(&e), e.to_string())
    }
}

impl From<text::TextError> for OcciError {
    fn from(e: text::TextError) -> Self {
        Self::bad(format!("malformed text rendering: {e}"))
    }
}

impl From<json::JsonError> for OcciError {
    fn from(e: json::JsonError) -> Self {
        Self::bad(format!("malformed JSON rendering: {e}"))
    }
}

impl IntoResponse for OcciError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let headers = response.headers_mut();
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"veem OCCI\""),
            );
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"veem OCCI\""),
            );
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

type OcciResult<T> = Result<T, OcciError>;

// ---- authentication ----

/// The caller of a Bearer token, or of HTTP Basic with a principal's name and its token.
fn authenticate(state: &Occi, headers: &HeaderMap) -> OcciResult<Caller> {
    let unauthorized = |m: &str| OcciError::new(StatusCode::UNAUTHORIZED, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("no Authorization header: send 'Bearer <token>' or HTTP Basic (principal name, token)"))?
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let (scheme, credentials) = value.trim().split_once(' ').ok_or_else(|| {
        unauthorized("the Authorization header must be 'Bearer <token>' or 'Basic <base64>'")
    })?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return state
            .app
            .auth
            .authenticate(credentials)
            .ok_or_else(|| unauthorized("unknown token"));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| unauthorized("HTTP Basic credentials are not base64 of 'name:token'"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("HTTP Basic credentials are not 'name:token'"))?;
        // The token is checked first and in full, whatever the name: the time taken does not
        // tell whether the name exists.
        let caller = state.app.auth.authenticate(password);
        return caller
            .filter(|c| c.principal.as_str() == user)
            .ok_or_else(|| unauthorized("wrong principal name or token"));
    }
    Err(unauthorized(
        "the Authorization scheme must be Bearer or Basic",
    ))
}

// ---- content negotiation ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    Occi,
    UriList,
    Json,
}

impl Format {
    fn media_type(self) -> &'static str {
        match self {
            Format::Plain => "text/plain; charset=utf-8",
            Format::Occi => "text/occi",
            Format::UriList => "text/uri-list",
            Format::Json => "application/occi+json",
        }
    }
}

/// The rendering an `Accept` asks for, by its q-values (absent or `*/*`: `text/plain`); `None`
/// when it accepts none veem writes. `text/uri-list` only where `collection`.
fn negotiate(accept: Option<&str>, collection: bool) -> Option<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Format::Plain);
    };
    let mut best: Option<(f32, usize, Format)> = None;
    for (position, range) in accept.split(',').enumerate() {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").map(str::to_owned))
            .next()
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let format = match media.as_str() {
            "text/plain" | "text/*" | "*/*" => Format::Plain,
            "text/occi" => Format::Occi,
            "text/uri-list" if collection => Format::UriList,
            "application/occi+json" | "application/json" | "application/*" => Format::Json,
            _ => continue,
        };
        // Among equal q-values the first listed wins.
        if best.is_none_or(|(bq, _, _)| q > bq) {
            best = Some((q, position, format));
        }
    }
    best.map(|(_, _, f)| f)
}

/// The request's rendering, read by its `Content-Type`.
fn parse_request(headers: &HeaderMap, body: &[u8]) -> OcciResult<OcciRequest> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let mut request = OcciRequest::default();
    let from_headers = |request: &mut OcciRequest| -> OcciResult<()> {
        for (name, value) in headers {
            // Only OCCI's own headers are read; others may hold anything.
            if !text::FIELDS.contains(&name.as_str()) {
                continue;
            }
            let value = value
                .to_str()
                .map_err(|_| OcciError::bad(format!("the {name} header is not text")))?;
            text::add_field(request, name.as_str(), value)?;
        }
        Ok(())
    };
    match content_type.as_str() {
        "application/occi+json" | "application/json" => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                request = json::parse(body)?;
            }
        }
        "text/occi" => from_headers(&mut request)?,
        // text/plain, or none given (curl's -d sends application/x-www-form-urlencoded, read
        // the same): the body's lines, and OCCI headers too.
        "text/plain" | "" | "application/x-www-form-urlencoded" => {
            from_headers(&mut request)?;
            let body = std::str::from_utf8(body)
                .map_err(|_| OcciError::bad("the text/plain body is not UTF-8"))?;
            text::parse_plain(body, &mut request)?;
        }
        "text/uri-list" => {
            let body = std::str::from_utf8(body)
                .map_err(|_| OcciError::bad("the text/uri-list body is not UTF-8"))?;
            request.locations = body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
        }
        other => {
            return Err(OcciError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {other:?} is not an OCCI rendering veem reads (text/plain, \
                     text/occi, application/occi+json, text/uri-list)"
                ),
            ))
        }
    }
    Ok(request)
}

// ---- dispatch ----

/// Where a path points.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    QueryInterface,
    /// `/`: every entity of the caller's.
    Everything,
    /// A kind's or a mixin's collection: the category's identifier.
    Collection(String),
    /// One entity: its kind's term and its id.
    Entity(&'static str, String),
}

const KINDS: [&str; 5] = [
    "compute",
    "storage",
    "network",
    "storagelink",
    "networkinterface",
];

fn target_of(path: &str) -> Option<Target> {
    if path == "/-/"
        || path == "/-"
        || path == "/.well-known/org/ogf/occi/-/"
        || path == "/.well-known/org/ogf/occi/-"
    {
        return Some(Target::QueryInterface);
    }
    if path == "/" {
        return Some(Target::Everything);
    }
    let trimmed = path.strip_prefix('/')?;
    let segments: Vec<&str> = trimmed.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        [kind] => KINDS
            .iter()
            .find(|k| *k == kind)
            .map(|k| Target::Collection(model::id(INFRA, k))),
        ["mixin", "os_tpl"] => Some(Target::Collection(model::id(INFRA, "os_tpl"))),
        ["mixin", "resource_tpl"] => Some(Target::Collection(model::id(INFRA, "resource_tpl"))),
        ["mixin", "ipnetwork"] => Some(Target::Collection(model::id(NETWORK_MIXIN, "ipnetwork"))),
        ["mixin", "ipnetworkinterface"] => Some(Target::Collection(model::id(
            NETIF_MIXIN,
            "ipnetworkinterface",
        ))),
        ["mixin", "os_tpl", name] => Some(Target::Collection(model::id(OS_TPL, name))),
        ["mixin", "resource_tpl", name] => Some(Target::Collection(model::id(RESOURCE_TPL, name))),
        [kind, id] => {
            let kind = KINDS.iter().find(|k| *k == kind)?;
            if path.ends_with('/') || id.is_empty() {
                return None;
            }
            Some(Target::Entity(kind, (*id).to_owned()))
        }
        _ => None,
    }
}

/// The action named by `?action=`, if the query names one; other query parameters are refused.
fn action_of(query: Option<&str>) -> OcciResult<Option<String>> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let mut action = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("action", term)) if !term.is_empty() => action = Some(term.to_owned()),
            _ => {
                return Err(OcciError::bad(format!(
                    "query {pair:?}: the only query parameter is action=<term>"
                )))
            }
        }
    }
    Ok(action)
}

/// Runs each request to its end in a task of its own, as the VMI does: a caller that goes
/// away must not cut an operation between the store and the core's books.
async fn handle(State(state): State<Occi>, request: Request) -> Response {
    let task = tokio::spawn(async move {
        match serve(&state, request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    });
    match task.await {
        Ok(response) => response,
        Err(e) => OcciError::from(CoreError::internal("an OCCI request's task", e)).into_response(),
    }
}

async fn serve(state: &Occi, request: Request) -> OcciResult<Response> {
    let (parts, body) = request.into_parts();
    let caller = authenticate(state, &parts.headers)?;
    let path = parts.uri.path().to_owned();
    let target = target_of(&path).ok_or_else(|| OcciError::not_found(&path))?;
    let collection = !matches!(target, Target::Entity(..));
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = negotiate(accept, collection).ok_or_else(|| {
        OcciError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Accept {:?} names no rendering veem writes here (text/plain, text/occi, \
                 application/occi+json{})",
                accept.unwrap_or_default(),
                if collection { ", text/uri-list" } else { "" }
            ),
        )
    })?;
    let body = axum::body::to_bytes(body, veem_api::MAX_REQUEST_BODY_BYTES)
        .await
        .map_err(|_| {
            OcciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            )
        })?;
    let occi = parse_request(&parts.headers, &body)?;
    let action = action_of(parts.uri.query())?;
    let out = Out {
        format,
        base: base_url(state, &parts.headers),
    };
    let ctx = Ctx {
        state,
        caller: &caller,
    };
    let method = parts.method;
    match (target, action) {
        (Target::QueryInterface, None) => match method {
            Method::GET | Method::HEAD => Ok(out.categories(&ctx.query_interface(&occi)?)),
            Method::POST | Method::PUT | Method::DELETE => Err(OcciError::not_implemented(
                "user-defined mixins are not supported by veem",
            )),
            _ => Err(OcciError::method(&method, "GET, HEAD, POST, PUT, DELETE")),
        },
        (Target::Everything, None) => match method {
            Method::GET | Method::HEAD => {
                let all = ctx.everything().await?;
                Ok(out.collection(&filter(all, &occi, &ctx)?, false))
            }
            _ => Err(OcciError::method(&method, "GET, HEAD")),
        },
        (Target::Collection(id), None) => match method {
            // The computes' locations alone need no entity built (the common listing).
            Method::GET | Method::HEAD
                if out.format != Format::Json
                    && occi.categories.is_empty()
                    && occi.attributes.is_empty()
                    && occi.links.is_empty()
                    && id == model::id(INFRA, "compute") =>
            {
                let urls: Vec<String> = ctx
                    .all_vees()
                    .iter()
                    .map(|r| out.absolute(&format!("/compute/{}", r.id)))
                    .collect();
                Ok(out.locations(&urls))
            }
            Method::GET | Method::HEAD => {
                let all = ctx.collection(&id).await?;
                let links = id == model::id(INFRA, "storagelink")
                    || id == model::id(INFRA, "networkinterface");
                Ok(out.collection(&filter(all, &occi, &ctx)?, links))
            }
            Method::POST if id == model::id(INFRA, "compute") => {
                let created = ctx.create_compute(&occi).await?;
                Ok(out.created(&created))
            }
            Method::POST if id == model::id(INFRA, "network") => {
                let created = ctx.create_network(&occi).await?;
                Ok(out.created(&created))
            }
            Method::POST if id == model::id(INFRA, "storage") => {
                let created = ctx.create_storage(&occi).await?;
                Ok(out.created(&created))
            }
            Method::POST if id == model::id(INFRA, "storagelink") => {
                let created = ctx.create_link("storagelink", &occi).await?;
                Ok(out.created(&created))
            }
            Method::POST if id == model::id(INFRA, "networkinterface") => {
                let created = ctx.create_link("networkinterface", &occi).await?;
                Ok(out.created(&created))
            }
            Method::DELETE if id == model::id(INFRA, "compute") => {
                let all = filter(ctx.collection(&id).await?, &occi, &ctx)?;
                for compute in &all {
                    ctx.delete_compute(&entity_id(compute)).await?;
                }
                Ok(out.empty(StatusCode::OK))
            }
            Method::POST | Method::PUT | Method::DELETE => Err(OcciError::not_implemented(
                "veem does not change this collection (mixins are given at creation)",
            )),
            _ => Err(OcciError::method(&method, "GET, HEAD, POST, PUT, DELETE")),
        },
        (Target::Collection(id), Some(action)) => {
            if method != Method::POST {
                return Err(OcciError::method(&method, "POST"));
            }
            if id != model::id(INFRA, "compute") {
                return Err(action_on_other_kind(&id, &action));
            }
            // The request's Category and attributes are the action's: every member acts.
            let all = ctx.collection(&id).await?;
            let ids: Vec<VeeId> = all
                .iter()
                .filter_map(|e| VeeId::parse(&entity_id(e)).ok())
                .collect();
            ctx.compute_action(&ids, &action, &occi).await?;
            Ok(out.empty(StatusCode::OK))
        }
        (Target::Entity(kind, id), None) => match (kind, method) {
            (_, Method::GET | Method::HEAD) => {
                Ok(out.entity(StatusCode::OK, &ctx.entity(kind, &id).await?))
            }
            ("compute", Method::PUT) if !ctx.exists("compute", &id).await => {
                Err(OcciError::not_implemented(
                    "veem chooses a compute's location: create it with POST /compute/",
                ))
            }
            ("compute", method @ (Method::PUT | Method::POST)) => {
                let updated = ctx
                    .update_compute(&id, &occi, method == Method::POST)
                    .await?;
                Ok(out.entity(StatusCode::OK, &updated))
            }
            ("compute", Method::DELETE) => {
                ctx.delete_compute(&id).await?;
                Ok(out.empty(StatusCode::OK))
            }
            ("network", Method::DELETE) => {
                ctx.entity(kind, &id).await?;
                ctx.state.app.veem.delete_network(ctx.caller, &id).await?;
                Ok(out.empty(StatusCode::OK))
            }
            ("storagelink" | "networkinterface", Method::DELETE) => {
                ctx.delete_link(kind, &id).await?;
                Ok(out.empty(StatusCode::OK))
            }
            ("storage", Method::DELETE) => {
                ctx.entity(kind, &id).await?;
                let name = ImageName::new(&id).map_err(|_| OcciError::not_found(&path))?;
                ctx.state.app.veem.delete_image(ctx.caller, &name).await?;
                Ok(out.empty(StatusCode::OK))
            }
            (_, Method::PUT | Method::POST | Method::DELETE) => {
                ctx.entity(kind, &id).await?;
                Err(OcciError::not_implemented(format!(
                    "veem does not change a {kind} through OCCI this way"
                )))
            }
            (_, method) => Err(OcciError::method(&method, "GET, HEAD, PUT, POST, DELETE")),
        },
        (Target::Entity(kind, id), Some(action)) => {
            if method != Method::POST {
                return Err(OcciError::method(&method, "POST"));
            }
            ctx.entity(kind, &id).await?;
            if kind != "compute" {
                return Err(action_on_other_kind(&model::id(INFRA, kind), &action));
            }
            let vee = parse_vee(&id)?;
            ctx.compute_action(&[vee], &action, &occi).await?;
            Ok(out.entity(StatusCode::OK, &ctx.entity(kind, &id).await?))
        }
        (_, Some(_)) => Err(OcciError::bad(
            "actions are invoked on a resource or a kind's collection",
        )),
    }
}

/// An action on storage or network: known ones are not implemented, others are no actions.
fn action_on_other_kind(kind: &str, action: &str) -> OcciError {
    let scheme = if kind.ends_with("#storage") {
        STORAGE_ACTION
    } else if kind.ends_with("#network") {
        NETWORK_ACTION
    } else {
        return OcciError::bad(format!("{kind} has no actions"));
    };
    let known = model::static_categories()
        .iter()
        .any(|c| c.class == Class::Action && c.scheme == scheme && c.term == action);
    if known {
        OcciError::not_implemented(format!("veem does not carry out {scheme}{action}"))
    } else {
        OcciError::bad(format!("{action:?} is not an action of {kind}"))
    }
}

fn parse_vee(id: &str) -> OcciResult<VeeId> {
    VeeId::parse(id).map_err(|_| OcciError::not_found(&format!("/compute/{id}")))
}

fn entity_id(e: &Entity) -> String {
    match e.attribute("occi.core.id") {
        Some(Value::String(id)) => id.clone(),
        _ => String::new(),
    }
}

fn base_url(state: &Occi, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(|host| format!("{}://{host}", state.scheme))
        .unwrap_or_default()
}

/// Keeps the entities the request's categories and attributes select (GFD.222 filtering):
/// each category named must be the entity's kind or one of its mixins, and each attribute
/// given must have that value.
fn filter(entities: Vec<Entity>, request: &OcciRequest, ctx: &Ctx<'_>) -> OcciResult<Vec<Entity>> {
    if !request.links.is_empty() {
        return Err(OcciError::bad("a Link cannot filter a collection"));
    }
    let known = ctx.categories();
    let mut ids = Vec::new();
    for c in &request.categories {
        let id = c.id();
        if !known.iter().any(|k| k.id() == id) {
            return Err(OcciError::bad(format!(
                "{id} is no category of this server"
            )));
        }
        ids.push(id);
    }
    Ok(entities
        .into_iter()
        .filter(|e| {
            ids.iter().all(|id| e.has_category(id))
                && request.attributes.iter().all(|(name, value)| {
                    e.attribute(name)
                        .is_some_and(|v| v.as_text() == value.as_text())
                })
        })
        .collect())
}

// ---- answers ----

/// How answers are written: the rendering, and the absolute base of locations.
struct Out {
    format: Format,
    base: String,
}

impl Out {
    fn fields(
        &self,
        status: StatusCode,
        fields: text::Fields,
        extra: Option<(header::HeaderName, String)>,
    ) -> Response {
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, self.format.media_type());
        if let Some((name, value)) = extra {
            builder = builder.header(name, value);
        }
        let body = match self.format {
            Format::Occi => {
                for (name, value) in text::occi_headers(&fields) {
                    builder = builder.header(name, value);
                }
                String::new()
            }
            _ => text::plain_body(&fields),
        };
        builder.body(Body::from(body)).unwrap_or_else(|e| {
            OcciError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the answer: {e}"),
            )
            .into_response()
        })
    }

    fn json(
        &self,
        status: StatusCode,
        json: serde_json::Value,
        extra: Option<(header::HeaderName, String)>,
    ) -> Response {
        let mut response = (
            status,
            [(header::CONTENT_TYPE, Format::Json.media_type())],
            json.to_string(),
        )
            .into_response();
        if let Some((name, value)) = extra {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }

    fn categories(&self, categories: &[Category]) -> Response {
        match self.format {
            Format::Json => self.json(StatusCode::OK, json::categories(categories), None),
            _ => self.fields(StatusCode::OK, text::categories(categories), None),
        }
    }

    fn absolute(&self, location: &str) -> String {
        format!("{}{location}", self.base)
    }

    fn collection(&self, entities: &[Entity], of_links: bool) -> Response {
        if self.format == Format::Json {
            return self.json(StatusCode::OK, json::collection(entities, of_links), None);
        }
        let urls: Vec<String> = entities
            .iter()
            .map(|e| self.absolute(&e.location))
            .collect();
        self.locations(&urls)
    }

    /// A collection as its members' locations (`text/uri-list`, or `X-OCCI-Location`s).
    fn locations(&self, urls: &[String]) -> Response {
        match self.format {
            Format::UriList => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, Format::UriList.media_type())],
                text::uri_list(urls),
            )
                .into_response(),
            _ => self.fields(StatusCode::OK, text::locations(urls), None),
        }
    }

    fn entity(&self, status: StatusCode, entity: &Entity) -> Response {
        match self.format {
            Format::Json => self.json(status, json::entity(entity), None),
            _ => self.fields(status, text::entity(entity), None),
        }
    }

    /// `201 Created` with the new entity's `Location` (and `X-OCCI-Location`) and its rendering.
    fn created(&self, entity: &Entity) -> Response {
        let location = self.absolute(&entity.location);
        let mut response = match self.format {
            Format::Json => self.json(StatusCode::CREATED, json::entity(entity), None),
            _ => {
                let mut fields = text::entity(entity);
                fields.push(("X-OCCI-Location", location.clone()));
                self.fields(StatusCode::CREATED, fields, None)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }

    fn empty(&self, status: StatusCode) -> Response {
        match self.format {
            Format::Json => self.json(status, serde_json::json!({}), None),
            _ => (
                status,
                [(header::CONTENT_TYPE, self.format.media_type())],
                "OK\n",
            )
                .into_response(),
        }
    }
}

// ---- the entities, from the core ----

struct Ctx<'a> {
    state: &'a Occi,
    caller: &'a Caller,
}

/// The model's category of `term` (one of its own kinds and mixins).
fn category(term: &str) -> &'static Category {
    model::static_categories()
        .iter()
        .find(|c| c.term == term)
        .expect("only the model's own terms are asked for")
}

fn vmi_state_of_compute(state: VmiState) -> &'static str {
    match state {
        VmiState::Active => "active",
        VmiState::Initial | VmiState::Defined | VmiState::Destroyed => "inactive",
        VmiState::Paused | VmiState::Suspended => "suspended",
    }
}

/// The actions a compute in `state` takes now.
fn compute_actions(state: VmiState) -> Vec<String> {
    let terms: &[&str] = match state {
        VmiState::Defined => &["start"],
        VmiState::Active => &["stop", "restart", "suspend"],
        VmiState::Paused => &["start", "stop", "suspend"],
        VmiState::Suspended => &["start", "stop"],
        VmiState::Initial | VmiState::Destroyed => &[],
    };
    terms.iter().map(|t| model::id(COMPUTE_ACTION, t)).collect()
}

fn size_of(cores: u32, memory_mb: u64) -> Option<&'static str> {
    SIZES
        .iter()
        .find(|(_, c, m)| *c == cores && (m * 1024.0) as u64 == memory_mb)
        .map(|(term, _, _)| *term)
}

fn string(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

impl Ctx<'_> {
    fn veem(&self) -> &crate::Veem {
        &self.state.app.veem
    }

    /// Every category: the model's, the caller's images as `os_tpl`, the sizes as
    /// `resource_tpl`.
    fn categories(&self) -> Vec<Category> {
        let mut all = model::static_categories().to_vec();
        all.extend(SIZES.iter().map(|(t, c, m)| model::size_mixin(t, *c, *m)));
        let mut images: Vec<String> = self
            .veem()
            .images()
            .list(self.caller)
            .into_iter()
            .map(|i| i.name.to_string())
            .collect();
        images.sort();
        images.dedup();
        all.extend(images.iter().map(|n| model::image_mixin(n)));
        all
    }

    /// The query interface, filtered by the request's categories (GFD.222: only those named).
    fn query_interface(&self, request: &OcciRequest) -> OcciResult<Vec<Category>> {
        let all = self.categories();
        if !request.attributes.is_empty() || !request.links.is_empty() {
            return Err(OcciError::bad(
                "the query interface is filtered by Category only",
            ));
        }
        if request.categories.is_empty() {
            return Ok(all);
        }
        let mut out = Vec::new();
        for c in &request.categories {
            let id = c.id();
            match all.iter().find(|k| k.id() == id) {
                Some(found) => out.push(found.clone()),
                None => return Err(OcciError::not_found(&format!("category {id}"))),
            }
        }
        Ok(out)
    }

    fn all_vees(&self) -> Vec<VeeRecord> {
        let mut filter = crate::veem::ListFilter {
            limit: 1000,
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let (page, next) = self.veem().list(self.caller, &filter);
            out.extend(page);
            match next {
                Some(next) => filter.after = Some(next),
                None => return out,
            }
        }
    }

    fn compute(&self, record: &VeeRecord) -> Entity {
        let d = &record.descriptor;
        let location = format!("/compute/{}", record.id);
        let mut mixins = Vec::new();
        let first_image = d.disks.iter().find_map(|disk| match &disk.source {
            Some(DiskSource::Image(name)) if disk.kind == DiskKind::Disk => Some(name.to_string()),
            _ => None,
        });
        if let Some(image) = &first_image {
            mixins.push(CategoryRef::of(&model::image_mixin(image)));
        }
        if let Some((term, cores, memory)) =
            size_of(d.cpu, d.memory_mb).and_then(|t| SIZES.iter().find(|s| s.0 == t))
        {
            mixins.push(CategoryRef::of(&model::size_mixin(term, *cores, *memory)));
        }
        let mut message = record.state.to_string();
        if let Some(reason) = record
            .pending_reason
            .as_ref()
            .or(record.last_error.as_ref())
        {
            message.push_str(&format!(": {reason}"));
        }
        let attributes = vec![
            ("occi.core.id".into(), string(record.id.to_string())),
            ("occi.core.title".into(), string(record.name().to_owned())),
            ("occi.compute.architecture".into(), string("x64")),
            ("occi.compute.cores".into(), Value::Number(f64::from(d.cpu))),
            (
                "occi.compute.hostname".into(),
                string(record.name().to_owned()),
            ),
            (
                "occi.compute.memory".into(),
                Value::Number(d.memory_mb as f64 / 1024.0),
            ),
            (
                "occi.compute.state".into(),
                string(vmi_state_of_compute(record.state)),
            ),
            ("occi.compute.state.message".into(), string(message)),
        ];
        let link_state = if record.state == VmiState::Active {
            "active"
        } else {
            "inactive"
        };
        let compute_kind = model::id(INFRA, "compute");
        let mut links = Vec::new();
        for (n, disk) in d.disks.iter().enumerate() {
            let Some(DiskSource::Image(image)) = &disk.source else {
                continue;
            };
            let device = disk.target.clone().unwrap_or_else(|| format!("disk{n}"));
            let id = format!("{}_{n}", record.id);
            links.push(Entity {
                kind: CategoryRef::of(category("storagelink")),
                mixins: Vec::new(),
                attributes: vec![
                    ("occi.core.id".into(), string(id.clone())),
                    ("occi.core.source".into(), string(location.clone())),
                    (
                        "occi.core.target".into(),
                        string(format!("/storage/{image}")),
                    ),
                    ("occi.storagelink.deviceid".into(), string(device)),
                    ("occi.storagelink.state".into(), string(link_state)),
                ],
                actions: Vec::new(),
                location: format!("/storagelink/{id}"),
                links: Vec::new(),
                source: Some((location.clone(), compute_kind.clone())),
                target: Some((format!("/storage/{image}"), model::id(INFRA, "storage"))),
            });
        }
        for (n, nic) in d.nics.iter().enumerate() {
            let id = format!("{}_{n}", record.id);
            let generated = record.generated.nics.get(n);
            let mut attributes = vec![
                ("occi.core.id".into(), string(id.clone())),
                ("occi.core.source".into(), string(location.clone())),
                (
                    "occi.core.target".into(),
                    string(format!("/network/{}", nic.network)),
                ),
                (
                    "occi.networkinterface.interface".into(),
                    string(generated.map_or_else(
                        || nic.target.clone().unwrap_or_else(|| format!("nic{n}")),
                        |g| g.target.clone(),
                    )),
                ),
            ];
            if let Some(g) = generated {
                attributes.push(("occi.networkinterface.mac".into(), string(g.mac.clone())));
            }
            attributes.push(("occi.networkinterface.state".into(), string(link_state)));
            let mut mixins = Vec::new();
            if let Some(ip) = generated.and_then(|g| g.ip.clone()) {
                mixins.push(CategoryRef::of(category("ipnetworkinterface")));
                attributes.push(("occi.networkinterface.address".into(), string(ip)));
                attributes.push((
                    "occi.networkinterface.allocation".into(),
                    string(if nic.ip.is_some() {
                        "static"
                    } else {
                        "dynamic"
                    }),
                ));
            }
            links.push(Entity {
                kind: CategoryRef::of(category("networkinterface")),
                mixins,
                attributes,
                actions: Vec::new(),
                location: format!("/networkinterface/{id}"),
                links: Vec::new(),
                source: Some((location.clone(), compute_kind.clone())),
                target: Some((
                    format!("/network/{}", nic.network),
                    model::id(INFRA, "network"),
                )),
            });
        }
        Entity {
            kind: CategoryRef::of(category("compute")),
            mixins,
            attributes,
            actions: compute_actions(record.state),
            location,
            links,
            source: None,
            target: None,
        }
    }

    async fn storages(&self) -> Vec<Entity> {
        let mut images = self.veem().images().list(self.caller);
        images.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        let mut out = Vec::with_capacity(images.len());
        for image in &images {
            let size = self.virtual_size(image).await;
            out.push(Entity {
                kind: CategoryRef::of(category("storage")),
                mixins: Vec::new(),
                attributes: vec![
                    ("occi.core.id".into(), string(image.name.to_string())),
                    ("occi.core.title".into(), string(image.name.to_string())),
                    ("occi.storage.size".into(), Value::Number(size as f64 / GIB)),
                    ("occi.storage.state".into(), string("online")),
                ],
                actions: Vec::new(),
                location: format!("/storage/{}", image.name),
                links: Vec::new(),
                source: None,
                target: None,
            });
        }
        out
    }

    /// The size of the disk an image gives: a qcow2's virtual size (its header's), a raw
    /// image's bytes; the bytes when the header cannot be read here.
    async fn virtual_size(&self, image: &veem_model::ImageRecord) -> u64 {
        if image.format != veem_model::ImageFormat::Qcow2 {
            return image.size_bytes;
        }
        use tokio::io::AsyncReadExt as _;
        let path = self.veem().images().blob_path(&image.sha256);
        let mut header = [0u8; 32];
        let read = async {
            let mut file = tokio::fs::File::open(&path).await?;
            file.read_exact(&mut header).await?;
            Ok::<_, std::io::Error>(())
        };
        match read.await {
            // The virtual size is the header's big-endian u64 at byte 24.
            Ok(()) => u64::from_be_bytes(header[24..32].try_into().unwrap_or([0; 8])),
            Err(_) => image.size_bytes,
        }
    }

    fn networks(&self) -> Vec<Entity> {
        let mut networks = self.veem().networks().list(self.caller);
        networks.sort_by(|a, b| a.network.name.cmp(&b.network.name));
        networks
            .iter()
            .map(|info| {
                let n = &info.network;
                Entity {
                    kind: CategoryRef::of(category("network")),
                    mixins: vec![CategoryRef::of(category("ipnetwork"))],
                    attributes: vec![
                        ("occi.core.id".into(), string(n.name.clone())),
                        ("occi.core.title".into(), string(n.name.clone())),
                        ("occi.network.label".into(), string(n.name.clone())),
                        ("occi.network.state".into(), string("active")),
                        ("occi.network.address".into(), string(n.cidr.to_string())),
                        ("occi.network.allocation".into(), string("dynamic")),
                    ],
                    actions: Vec::new(),
                    location: format!("/network/{}", n.name),
                    links: Vec::new(),
                    source: None,
                    target: None,
                }
            })
            .collect()
    }

    fn computes(&self) -> Vec<Entity> {
        self.all_vees().iter().map(|r| self.compute(r)).collect()
    }

    async fn everything(&self) -> OcciResult<Vec<Entity>> {
        let computes = self.computes();
        let links: Vec<Entity> = computes.iter().flat_map(|c| c.links.clone()).collect();
        let mut all = computes;
        all.extend(self.storages().await);
        all.extend(self.networks());
        all.extend(links);
        Ok(all)
    }

    /// The members of a kind's or a mixin's collection.
    async fn collection(&self, id: &str) -> OcciResult<Vec<Entity>> {
        let term = |t: &str| model::id(INFRA, t);
        if id == term("compute") {
            return Ok(self.computes());
        }
        if id == term("storage") {
            return Ok(self.storages().await);
        }
        if id == term("network") {
            return Ok(self.networks());
        }
        if id == term("storagelink") || id == term("networkinterface") {
            let kind = id.to_owned();
            return Ok(self
                .computes()
                .into_iter()
                .flat_map(|c| c.links)
                .filter(|l| l.kind.id() == kind)
                .collect());
        }
        if !self
            .categories()
            .iter()
            .any(|c| c.id() == id && c.class == Class::Mixin)
        {
            return Err(OcciError::not_found(id));
        }
        let all = self.everything().await?;
        // A mixin's collection: the entities it is applied to, or for the template mixins
        // themselves, those applied any mixin that depends on them.
        let dependents: Vec<String> = self
            .categories()
            .into_iter()
            .filter(|c| c.depends.iter().any(|d| d == id))
            .map(|c| c.id())
            .collect();
        Ok(all
            .into_iter()
            .filter(|e| e.has_category(id) || dependents.iter().any(|d| e.has_category(d)))
            .collect())
    }

    /// Whether `/{kind}/{id}` names an entity the caller sees.
    async fn exists(&self, kind: &str, id: &str) -> bool {
        self.entity(kind, id).await.is_ok()
    }

    async fn entity(&self, kind: &str, id: &str) -> OcciResult<Entity> {
        let location = format!("/{kind}/{id}");
        let found = match kind {
            "compute" => {
                let vee = parse_vee(id)?;
                let record = self.veem().get(self.caller, &vee)?;
                Some(self.compute(&record))
            }
            "storage" => self
                .storages()
                .await
                .into_iter()
                .find(|e| e.location == location),
            "network" => self.networks().into_iter().find(|e| e.location == location),
            _ => {
                // A link: `<vee id>_<n>`, found among its compute's links.
                let (vee, _) = id
                    .rsplit_once('_')
                    .ok_or_else(|| OcciError::not_found(&location))?;
                let vee = parse_vee(vee).map_err(|_| OcciError::not_found(&location))?;
                let record = self
                    .veem()
                    .get(self.caller, &vee)
                    .map_err(|_| OcciError::not_found(&location))?;
                self.compute(&record)
                    .links
                    .into_iter()
                    .find(|l| l.location == location)
            }
        };
        found.ok_or_else(|| OcciError::not_found(&location))
    }

    /// Checks that `request` names the kind `term` (when it names a kind at all) and only
    /// mixins of this server, and answers those mixins.
    fn mixins_of(
        &self,
        request: &OcciRequest,
        term: &str,
        kind_required: bool,
    ) -> OcciResult<Vec<Category>> {
        let all = self.categories();
        let mut mixins = Vec::new();
        let mut kind_seen = false;
        for c in &request.categories {
            let id = c.id();
            let found = all
                .iter()
                .find(|k| k.id() == id)
                .ok_or_else(|| OcciError::bad(format!("{id} is no category of this server")))?;
            match found.class {
                Class::Kind if found.term == term && found.scheme == INFRA => kind_seen = true,
                Class::Kind => {
                    return Err(OcciError::bad(format!(
                        "{id} is not the kind of {term} (/{term}/)"
                    )))
                }
                Class::Mixin => {
                    if !found.applies.iter().any(|a| *a == model::id(INFRA, term))
                        && !found.depends.iter().any(|d| {
                            all.iter().any(|m| {
                                m.id() == *d
                                    && m.applies.iter().any(|a| *a == model::id(INFRA, term))
                            })
                        })
                    {
                        return Err(OcciError::bad(format!(
                            "mixin {id} does not apply to {term}"
                        )));
                    }
                    mixins.push(found.clone());
                }
                Class::Action => {
                    return Err(OcciError::bad(format!(
                        "{id} is an action: invoke it with ?action="
                    )))
                }
            }
        }
        if kind_required && !kind_seen {
            return Err(OcciError::bad(format!(
                "the request must name the kind {INFRA}{term} in a Category"
            )));
        }
        Ok(mixins)
    }

    /// Checks every attribute against the definitions of `categories`: known, of its type,
    /// one of its values, and mutable unless `allowed_immutable` lets it through.
    fn check_attributes(
        &self,
        request: &OcciRequest,
        categories: &[Category],
        allowed_immutable: &[&str],
    ) -> OcciResult<()> {
        let mut defs: Vec<&model::AttributeDef> = Vec::new();
        let all = self.categories();
        for c in categories {
            defs.extend(c.attributes.iter());
            // Kinds inherit from their parents (compute from resource, from entity).
            let mut parent = c.parent.clone();
            while let Some(p) = parent {
                let Some(pc) = all.iter().find(|k| k.id() == p) else {
                    break;
                };
                defs.extend(pc.attributes.iter());
                parent = pc.parent.clone();
            }
        }
        for (name, value) in &request.attributes {
            let def = defs.iter().find(|d| d.name == name).ok_or_else(|| {
                OcciError::bad(format!(
                    "{name} is not an attribute of the request's categories"
                ))
            })?;
            let type_ok = matches!(
                (def.kind, value),
                (model::AttrType::String, Value::String(_))
                    | (model::AttrType::Number, Value::Number(_))
            );
            if !type_ok {
                return Err(OcciError::bad(format!(
                    "{name} must be a {}",
                    def.kind.as_str()
                )));
            }
            if let Value::String(s) = value {
                if !def.values.is_empty() && !def.values.contains(&s.as_str()) {
                    return Err(OcciError::bad(format!(
                        "{name} must be one of {:?}",
                        def.values
                    )));
                }
            }
            if !def.mutable && !allowed_immutable.contains(&def.name) {
                return Err(OcciError::bad(format!("{name} is not mutable")));
            }
        }
        Ok(())
    }

    async fn create_compute(&self, request: &OcciRequest) -> OcciResult<Entity> {
        let mixins = self.mixins_of(request, "compute", true)?;
        let compute = category("compute").clone();
        let mut defs = vec![compute];
        defs.extend(mixins.iter().cloned());
        self.check_attributes(request, &defs, &["occi.core.id"])?;
        let mut cores = None;
        let mut memory_mb = None;
        let mut disks = Vec::new();
        for mixin in &mixins {
            if mixin.scheme == RESOURCE_TPL {
                let (_, c, m) = SIZES
                    .iter()
                    .find(|s| s.0 == mixin.term)
                    .ok_or_else(|| OcciError::bad(format!("no size {}", mixin.term)))?;
                cores = Some(*c);
                memory_mb = Some((m * 1024.0) as u64);
            } else if mixin.scheme == OS_TPL {
                disks.push(image_disk(&mixin.term)?);
            }
        }
        if let Some(v) = request.attribute("occi.compute.cores") {
            cores = Some(whole(v, "occi.compute.cores", 1.0, 1024.0)? as u32);
        }
        if let Some(Value::Number(gib)) = request.attribute("occi.compute.memory") {
            if !(*gib > 0.0 && *gib <= 16384.0) {
                return Err(OcciError::bad(
                    "occi.compute.memory must be more than 0 and at most 16384 (GiB)",
                ));
            }
            memory_mb = Some(((gib * 1024.0).round() as u64).max(1));
        }
        if let Some(Value::String(arch)) = request.attribute("occi.compute.architecture") {
            if arch != "x64" {
                return Err(OcciError::not_implemented(
                    "veem's hosts run x64 guests only",
                ));
            }
        }
        for unsupported in ["occi.compute.speed", "occi.compute.share"] {
            if request.attribute(unsupported).is_some() {
                return Err(OcciError::not_implemented(format!(
                    "veem does not set {unsupported}"
                )));
            }
        }
        let name = match request
            .attribute("occi.compute.hostname")
            .or(request.attribute("occi.core.title"))
        {
            Some(Value::String(name)) => name.clone(),
            _ => "occi".to_owned(),
        };
        let mut nics = Vec::new();
        for link in &request.links {
            match self.device_of_link(link)? {
                Device::Disk(disk) => disks.push(disk),
                Device::Nic(nic) => nics.push(nic),
            }
        }
        let mut descriptor = VeeDescriptor::minimal(cores.unwrap_or(1), memory_mb.unwrap_or(1024));
        descriptor.name = name;
        // The size it is made with stays its ceiling: shrunk, it can grow back (the VMI's
        // resize never goes above the ceiling fixed at definition).
        descriptor.cpu_max = Some(descriptor.cpu);
        descriptor.memory_max_mb = Some(descriptor.memory_mb);
        descriptor.disks = disks;
        descriptor.nics = nics;
        let mut records = self
            .veem()
            .initialize(self.caller, InitModel::Besteffort, 1, descriptor)
            .await?;
        let record = records
            .pop()
            .ok_or_else(|| CoreError::broken("InitializeVEEs of one VEE made none"))?;
        Ok(self.compute(&record))
    }

    /// PUT (`partial` false) or POST (`partial`: a partial update, whose Links are added to
    /// the compute) of a compute.
    async fn update_compute(
        &self,
        id: &str,
        request: &OcciRequest,
        partial: bool,
    ) -> OcciResult<Entity> {
        let current = self.entity("compute", id).await?;
        let mixins = self.mixins_of(request, "compute", false)?;
        if mixins.iter().any(|m| !current.has_category(&m.id())) {
            return Err(OcciError::not_implemented(
                "veem does not add mixins to a compute once made",
            ));
        }
        if !request.links.is_empty() && !partial {
            return Err(OcciError::not_implemented(
                "links are added to a compute by POST (to it, or to /storagelink/ or \
                 /networkinterface/), not by PUT",
            ));
        }
        // Every link is checked before anything changes.
        let devices = request
            .links
            .iter()
            .map(|link| self.device_of_link(link))
            .collect::<OcciResult<Vec<_>>>()?;
        // The compute's own values may come back as they are (a client PUTs what it read).
        let readonly = [
            "occi.core.id",
            "occi.compute.state",
            "occi.compute.state.message",
        ];
        self.check_attributes(request, &[category("compute").clone()], &readonly)?;
        let mut cpu = None;
        let mut memory_mb = None;
        for (name, value) in &request.attributes {
            match name.as_str() {
                "occi.compute.cores" => cpu = Some(whole(value, name, 1.0, 1024.0)? as u32),
                "occi.compute.memory" => {
                    let Value::Number(gib) = value else { continue };
                    if !(*gib > 0.0 && *gib <= 16384.0) {
                        return Err(OcciError::bad(
                            "occi.compute.memory must be more than 0 and at most 16384 (GiB)",
                        ));
                    }
                    memory_mb = Some(((gib * 1024.0).round() as u64).max(1));
                }
                _ => {
                    if current.attribute(name) != Some(value) {
                        return Err(OcciError::not_implemented(format!(
                            "veem does not change {name} of a compute"
                        )));
                    }
                }
            }
        }
        if !devices.is_empty() {
            let vee = parse_vee(id)?;
            for device in devices {
                self.add_device(&vee, device).await?;
            }
        }
        if cpu.is_some() || memory_mb.is_some() {
            let vee = parse_vee(id)?;
            let (record, _) = self.veem().patch(self.caller, &vee, cpu, memory_mb).await?;
            return Ok(self.compute(&record));
        }
        if request.links.is_empty() {
            return Ok(current);
        }
        self.entity("compute", id).await
    }

    /// The disk or NIC a Link of a compute's request makes: a `/storage/{image}` or a
    /// `/network/{name}` target, and the link's attributes.
    fn device_of_link(&self, link: &request::LinkRequest) -> OcciResult<Device> {
        let target = local_path(&link.target);
        let string_attribute = |name: &str| -> OcciResult<Option<String>> {
            match link.attributes.iter().find(|(n, _)| n == name) {
                Some((_, Value::String(s))) => Ok(Some(s.clone())),
                Some(_) => Err(OcciError::bad(format!("{name} must be a string"))),
                None => Ok(None),
            }
        };
        if let Some(image) = target.strip_prefix("/storage/") {
            if string_attribute("occi.storagelink.mountpoint")?.is_some() {
                return Err(OcciError::not_implemented(
                    "veem does not mount disks in the guest: occi.storagelink.mountpoint",
                ));
            }
            let mut disk = image_disk(image)?;
            disk.target = string_attribute("occi.storagelink.deviceid")?;
            return Ok(Device::Disk(disk));
        }
        if let Some(network) = target.strip_prefix("/network/") {
            self.veem().networks().get(self.caller, network)?;
            if string_attribute("occi.networkinterface.mac")?.is_some() {
                return Err(OcciError::not_implemented(
                    "veem chooses a NIC's MAC address itself: occi.networkinterface.mac",
                ));
            }
            let ip = match string_attribute("occi.networkinterface.address")? {
                Some(ip) => Some(ip.parse().map_err(|_| {
                    OcciError::bad(format!(
                        "occi.networkinterface.address {ip:?} is not an IPv4 address"
                    ))
                })?),
                None => None,
            };
            return Ok(Device::Nic(NicSpec {
                network: network.to_owned(),
                target: string_attribute("occi.networkinterface.interface")?,
                ip,
            }));
        }
        Err(OcciError::bad(format!(
            "a compute links to /storage/{{name}} or /network/{{name}}, not {}",
            link.target
        )))
    }

    /// Adds a disk or a NIC to a compute; answers the new link's location.
    async fn add_device(&self, vee: &VeeId, device: Device) -> OcciResult<String> {
        Ok(match device {
            Device::Disk(disk) => {
                let (_, n) = self.veem().add_disk(self.caller, vee, disk).await?;
                format!("/storagelink/{vee}_{n}")
            }
            Device::Nic(nic) => {
                let (_, n) = self.veem().add_nic(self.caller, vee, nic).await?;
                format!("/networkinterface/{vee}_{n}")
            }
        })
    }

    /// `POST /storagelink/` or `POST /networkinterface/`: a disk or NIC added to the compute
    /// `occi.core.source`, from the storage or network `occi.core.target` (GFD.222: a link
    /// is created in its kind's collection).
    async fn create_link(&self, term: &'static str, request: &OcciRequest) -> OcciResult<Entity> {
        let mixins = self.mixins_of(request, term, false)?;
        let mut defs = vec![category(term).clone()];
        defs.extend(mixins.iter().cloned());
        self.check_attributes(
            request,
            &defs,
            &[
                "occi.core.id",
                "occi.core.source",
                "occi.core.target",
                "occi.networkinterface.interface",
            ],
        )?;
        if !request.links.is_empty() {
            return Err(OcciError::bad("a link has no links of its own"));
        }
        let end = |name: &str| match request.attribute(name) {
            Some(Value::String(location)) => Ok(local_path(location).to_owned()),
            _ => Err(OcciError::bad(format!(
                "a {term} needs {name}: the location of its {}",
                if name.ends_with("source") {
                    "compute (/compute/{id})"
                } else if term == "storagelink" {
                    "storage (/storage/{name})"
                } else {
                    "network (/network/{name})"
                }
            ))),
        };
        let source = end("occi.core.source")?;
        let target = end("occi.core.target")?;
        let vee = source
            .strip_prefix("/compute/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| {
                OcciError::bad(format!(
                    "occi.core.source {source:?} is not a compute's location (/compute/{{id}})"
                ))
            })?;
        let expected = if term == "storagelink" {
            "/storage/"
        } else {
            "/network/"
        };
        if !target.starts_with(expected) {
            return Err(OcciError::bad(format!(
                "the occi.core.target of a {term} is a {expected}{{name}}, not {target:?}"
            )));
        }
        // The compute first: another principal's is 403, an unknown one 404.
        let vee = parse_vee(vee)?;
        self.veem().get(self.caller, &vee)?;
        if term == "storagelink" {
            self.entity("storage", &target["/storage/".len()..]).await?;
        }
        let link = request::LinkRequest {
            target,
            rel: None,
            categories: Vec::new(),
            attributes: request.attributes.clone(),
        };
        let device = self.device_of_link(&link)?;
        let location = self.add_device(&vee, device).await?;
        let (kind, id) = location
            .trim_start_matches('/')
            .split_once('/')
            .ok_or_else(|| CoreError::broken("a link's location is /kind/id"))?;
        let kind = if kind == "storagelink" {
            "storagelink"
        } else {
            "networkinterface"
        };
        self.entity(kind, id).await
    }

    /// `DELETE /storagelink/{vee}_{n}` or `/networkinterface/{vee}_{n}`: the disk or NIC
    /// removed from its compute.
    async fn delete_link(&self, kind: &str, id: &str) -> OcciResult<()> {
        let location = format!("/{kind}/{id}");
        let (vee, n) = id
            .rsplit_once('_')
            .ok_or_else(|| OcciError::not_found(&location))?;
        let vee = parse_vee(vee).map_err(|_| OcciError::not_found(&location))?;
        // Another principal's compute is 403; a link it does not have 404.
        self.veem().get(self.caller, &vee)?;
        self.entity(kind, id).await?;
        let n: usize = n.parse().map_err(|_| OcciError::not_found(&location))?;
        if kind == "storagelink" {
            self.veem().remove_disk(self.caller, &vee, n).await?;
        } else {
            self.veem().remove_nic(self.caller, &vee, n).await?;
        }
        Ok(())
    }

    async fn delete_compute(&self, id: &str) -> OcciResult<()> {
        let vee = parse_vee(id)?;
        self.veem().purge(self.caller, &vee).await?;
        Ok(())
    }

    async fn create_network(&self, request: &OcciRequest) -> OcciResult<Entity> {
        let mixins = self.mixins_of(request, "network", true)?;
        let mut defs = vec![category("network").clone()];
        defs.extend(mixins.iter().cloned());
        self.check_attributes(request, &defs, &["occi.core.id"])?;
        let cidr = match request.attribute("occi.network.address") {
            Some(Value::String(cidr)) => cidr.clone(),
            _ => {
                return Err(OcciError::bad(
                    "a network needs the ipnetwork mixin and occi.network.address (e.g. \"10.1.0.0/24\")",
                ))
            }
        };
        let name = match request
            .attribute("occi.core.title")
            .or(request.attribute("occi.network.label"))
        {
            Some(Value::String(name)) => name.clone(),
            _ => return Err(OcciError::bad("a network needs a name: occi.core.title")),
        };
        for unsupported in ["occi.network.vlan", "occi.network.gateway"] {
            if request.attribute(unsupported).is_some() {
                return Err(OcciError::not_implemented(format!(
                    "veem chooses {unsupported} itself"
                )));
            }
        }
        let network_request = NetworkRequest {
            name: name.clone(),
            cidr,
            public: false,
            extends: None,
        };
        let (info, created) = self
            .veem()
            .create_network(self.caller, &network_request)
            .await?;
        if !created {
            return Err(OcciError::new(
                StatusCode::CONFLICT,
                format!("network {name} exists"),
            ));
        }
        self.entity("network", &info.network.name).await
    }

    /// A blank image of `occi.storage.size` GiB named `occi.core.title` (an empty qcow2).
    async fn create_storage(&self, request: &OcciRequest) -> OcciResult<Entity> {
        let mixins = self.mixins_of(request, "storage", true)?;
        let mut defs = vec![category("storage").clone()];
        defs.extend(mixins.iter().cloned());
        self.check_attributes(request, &defs, &["occi.core.id"])?;
        let Some(Value::Number(gib)) = request.attribute("occi.storage.size") else {
            return Err(OcciError::bad("a storage needs occi.storage.size (GiB)"));
        };
        let Some(Value::String(name)) = request.attribute("occi.core.title") else {
            return Err(OcciError::bad("a storage needs a name: occi.core.title"));
        };
        let bytes = gib * GIB;
        if !(bytes >= 1.0 && bytes <= crate::images::MAX_BLANK_IMAGE_BYTES as f64) {
            return Err(OcciError::bad(format!(
                "occi.storage.size must be more than 0 and at most {} GiB",
                crate::images::MAX_BLANK_IMAGE_BYTES >> 30
            )));
        }
        let image =
            ImageName::new(name).map_err(|e| OcciError::bad(format!("occi.core.title: {e}")))?;
        if self
            .veem()
            .images()
            .list(self.caller)
            .iter()
            .any(|i| i.name == image && i.owner == self.caller.principal)
        {
            return Err(OcciError::new(
                StatusCode::CONFLICT,
                format!("storage {name} exists"),
            ));
        }
        crate::images::put_blank_image(self.veem(), self.caller, name, bytes.ceil() as u64).await?;
        self.entity("storage", name).await
    }

    /// Carries out a compute action on `ids`, after checking the request names it.
    async fn compute_action(
        &self,
        ids: &[VeeId],
        term: &str,
        request: &OcciRequest,
    ) -> OcciResult<()> {
        let action_id = model::id(COMPUTE_ACTION, term);
        let definition = model::static_categories()
            .iter()
            .find(|c| c.class == Class::Action && c.id() == action_id)
            .cloned()
            .ok_or_else(|| OcciError::bad(format!("{term:?} is not an action of compute")))?;
        match request.categories.as_slice() {
            [only] if only.id() == action_id => {}
            [] => {
                return Err(OcciError::bad(format!(
                    "the request must carry the action's Category: {term}; scheme=\"{COMPUTE_ACTION}\"; class=\"action\""
                )))
            }
            _ => {
                return Err(OcciError::bad(format!(
                    "the request's Category must be the action {action_id} and nothing else"
                )))
            }
        }
        self.check_attributes(request, &[definition], &[])?;
        let method = match request.attribute("method") {
            Some(Value::String(m)) => Some(m.as_str()),
            _ => None,
        };
        let steps: Vec<ControlAction> = match (term, method) {
            ("start", _) => vec![ControlAction::Activate],
            ("stop", _) => vec![ControlAction::Shutdown],
            ("restart", _) => vec![ControlAction::Shutdown, ControlAction::Activate],
            ("suspend", Some("hibernate")) => vec![ControlAction::Suspend],
            ("suspend", _) => vec![ControlAction::Pause],
            _ => {
                return Err(OcciError::not_implemented(format!(
                    "veem does not carry out {action_id}"
                )))
            }
        };
        for step in steps {
            let outcome = self
                .veem()
                .update_state(self.caller, Order::Set, ids, step, ACTION_TIMEOUT)
                .await;
            if let Some((id, e)) = outcome.failed.into_iter().next() {
                let mut error = OcciError::from(e);
                error.message = format!("{id}: {}", error.message);
                return Err(error);
            }
        }
        Ok(())
    }
}

/// A whole number attribute between `min` and `max`.
fn whole(value: &Value, name: &str, min: f64, max: f64) -> OcciResult<f64> {
    match value {
        Value::Number(n) if n.fract() == 0.0 && *n >= min && *n <= max => Ok(*n),
        _ => Err(OcciError::bad(format!(
            "{name} must be a whole number from {min} to {max}"
        ))),
    }
}

/// A disk copied from the image `name`.
fn image_disk(name: &str) -> OcciResult<DiskSpec> {
    let image = ImageName::new(name).map_err(|e| OcciError::bad(format!("image {name:?}: {e}")))?;
    Ok(DiskSpec {
        source: Some(DiskSource::Image(image)),
        size_gb: None,
        target: None,
        clone: true,
        kind: DiskKind::Disk,
    })
}

/// A device a link of a compute makes.
enum Device {
    Disk(DiskSpec),
    Nic(NicSpec),
}

/// The path of a location given absolute (`http://host/compute/x`) or as a path.
fn local_path(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_rendering_by_q_value() {
        assert_eq!(negotiate(None, false), Some(Format::Plain));
        assert_eq!(negotiate(Some("*/*"), false), Some(Format::Plain));
        assert_eq!(negotiate(Some("text/occi"), false), Some(Format::Occi));
        assert_eq!(
            negotiate(Some("application/json"), false),
            Some(Format::Json)
        );
        assert_eq!(
            negotiate(Some("text/plain;q=0.5, application/occi+json"), false),
            Some(Format::Json)
        );
        assert_eq!(
            negotiate(Some("text/uri-list"), true),
            Some(Format::UriList)
        );
        assert_eq!(negotiate(Some("text/uri-list"), false), None);
        assert_eq!(negotiate(Some("image/png"), false), None);
        assert_eq!(negotiate(Some("text/plain;q=0"), false), None);
    }

    #[test]
    fn paths_name_the_query_interface_collections_and_entities() {
        assert_eq!(target_of("/-/"), Some(Target::QueryInterface));
        assert_eq!(
            target_of("/.well-known/org/ogf/occi/-/"),
            Some(Target::QueryInterface)
        );
        assert_eq!(
            target_of("/compute/"),
            Some(Target::Collection(model::id(INFRA, "compute")))
        );
        assert_eq!(
            target_of("/compute/vee-1"),
            Some(Target::Entity("compute", "vee-1".into()))
        );
        assert_eq!(
            target_of("/mixin/os_tpl/tiny/"),
            Some(Target::Collection(model::id(OS_TPL, "tiny")))
        );
        assert_eq!(target_of("/nothing/"), None);
        assert_eq!(target_of("/compute/a/b"), None);
    }

    #[test]
    fn the_query_names_only_an_action() {
        assert_eq!(
            action_of(Some("action=start")).expect("valid"),
            Some("start".into())
        );
        assert_eq!(action_of(None).expect("valid"), None);
        assert!(action_of(Some("foo=bar")).is_err());
        assert!(action_of(Some("action=")).is_err());
    }

    #[test]
    fn vmi_states_map_to_compute_states() {
        assert_eq!(vmi_state_of_compute(VmiState::Active), "active");
        assert_eq!(vmi_state_of_compute(VmiState::Defined), "inactive");
        assert_eq!(vmi_state_of_compute(VmiState::Initial), "inactive");
        assert_eq!(vmi_state_of_compute(VmiState::Paused), "suspended");
        assert_eq!(vmi_state_of_compute(VmiState::Suspended), "suspended");
        assert_eq!(vmi_state_of_compute(VmiState::Destroyed), "inactive");
        assert_eq!(size_of(2, 4096), Some("medium"));
        assert_eq!(size_of(2, 4000), None);
    }
}
