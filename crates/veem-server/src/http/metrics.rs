//! `GET /metrics` (Prometheus, outside the VMI's `/vmi/v1`) and the layer that counts and
//! times every request by the route template it matched. The series are `crate::metrics`'s.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest as _, Sha256};

use super::common::AppState;
use super::problem::ApiError;
use crate::metrics::{self, Format};
use crate::veem::CoreFigures;

/// The path Prometheus scrapes.
pub(crate) const PATH: &str = "/metrics";

/// The label of requests that matched no route (they are answered 404 or 405).
const UNMATCHED: &str = "unmatched";

/// `GET /metrics` of a VEEM that leads its books.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route(PATH, get(scrape))
}

async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = check_token(&headers, state.metrics_token.as_deref()) {
        return refused.into_response();
    }
    let figures = state.veem.figures();
    exposition(&headers, Some(figures))
}

/// The exposition, in the format `headers` ask for (OpenMetrics when they accept it, else the
/// Prometheus text format); `figures` when this front-end leads.
pub(crate) fn exposition(headers: &HeaderMap, figures: Option<CoreFigures>) -> Response {
    let format = if accepts_open_metrics(headers) {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        metrics::render(figures, format),
    )
        .into_response()
}

fn accepts_open_metrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"))
}

/// With a `metrics_token` in the config, the scrape must bear it.
pub(crate) fn check_token(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "no Authorization header; this VEEM's metrics_token is set: send \
                 'Authorization: Bearer <metrics_token>'",
            )
        })?
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be 'Bearer <metrics_token>'")
        })?;
    // Digests compared, so the time taken says nothing of how much of the token matched.
    if Sha256::digest(given.as_bytes()) == Sha256::digest(token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthenticated("wrong metrics token"))
    }
}

/// Marks a response already counted, so that a front door wrapping the VMI's router (a
/// front-end among several, `http/cluster.rs`) does not count it twice.
#[derive(Debug, Clone, Copy)]
struct Measured;

/// Counts and times each request of the VMI's router by the route template it matched.
pub(super) async fn measure(request: Request, next: Next) -> Response {
    measure_as(request, next, UNMATCHED).await
}

/// As [`measure`], for the front door of a front-end among several: what no route of its own
/// matched and the VMI's router did not count (a call forwarded to the leader, or refused
/// `not_leader`) counts as `forwarded`.
pub(super) async fn measure_front_door(request: Request, next: Next) -> Response {
    measure_as(request, next, "forwarded").await
}

/// Methods outside these are one label, `other`, so that callers cannot make series at will.
const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

async fn measure_as(request: Request, next: Next, unmatched: &'static str) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(unmatched.to_owned(), |path| path.as_str().to_owned());
    // Methods outside HTTP's own are one label, so that callers cannot make series at will.
    let method = KNOWN_METHODS
        .into_iter()
        .find(|known| *known == request.method().as_str())
        .unwrap_or("other");
    let mut response = next.run(request).await;
    if response.extensions().get::<Measured>().is_none() {
        metrics::instruments::http_request(
            &route,
            method,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response.extensions_mut().insert(Measured);
    }
    response
}
