//! The VMI over HTTP: the one place of veem that knows routes, headers and status codes.
//! Handlers parse and check a request, call one method of the core, and map its result.
//! `router` lists every route; the handlers live in one module per resource, and what they
//! share (the state, who calls, body and page parsing) in `common.rs`.

mod accounting;
mod agents;
mod blobs;
pub(crate) mod cluster;
mod common;
mod hosts;
mod images;
pub mod listen;
pub(crate) mod metrics;
mod monitoring;
mod networks;
pub mod occi;
#[cfg(test)]
mod openapi_doc;
pub mod problem;
mod sites;
mod ui;
mod vees;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch, post};
use axum::Router;

pub use common::AppState;
use problem::ApiError;

use crate::error::CoreError;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/vees/initialize", post(vees::initialize))
        .route("/vees/plan", post(vees::plan))
        .route("/vees/submit", post(vees::submit))
        .route("/vees/update-state", post(vees::update_state))
        .route("/vees", get(vees::list))
        .route(
            "/vees/{id}",
            get(vees::get).patch(vees::patch).delete(vees::purge),
        )
        .route("/vees/{id}/events", get(vees::events))
        .route("/vees/{id}/console", get(vees::console))
        .route("/vees/{id}/monitoring", get(monitoring::history))
        .route("/vees/{id}/migrate", post(vees::migrate))
        .route("/vees/incoming", post(vees::incoming))
        .route(
            "/vees/{id}/incoming/complete",
            post(vees::complete_incoming),
        )
        .route("/vees/{id}/send", post(vees::send))
        .route(
            "/vees/{id}/disks/{target}",
            get(vees::download_disk).put(vees::upload_disk),
        )
        .route("/images", get(images::list))
        .route(
            "/images/{name}",
            get(images::get).put(images::put).delete(images::delete),
        )
        .route("/images/{name}/data", get(images::data))
        .route("/networks", get(networks::list).post(networks::create))
        .route(
            "/networks/{name}",
            get(networks::get).delete(networks::delete),
        )
        .route("/vees/{id}/accounting", get(accounting::records))
        .route("/accounting/listeners", post(accounting::listen))
        .route("/accounting/listeners/remove", post(accounting::unlisten))
        .route("/monitoring", post(monitoring::put))
        .route("/monitoring/subscriptions", post(monitoring::subscribe))
        .route(
            "/monitoring/subscriptions/{id}",
            delete(monitoring::unsubscribe),
        )
        .route("/monitoring/stream", get(monitoring::stream))
        .route("/sites", get(sites::list).post(sites::create))
        .route("/sites/{name}", get(sites::get).delete(sites::delete))
        .route("/sites/{name}/inbox/{secret}", post(sites::inbox))
        .route(
            "/sites/{name}/inbox/{secret}/accounting",
            post(sites::inbox_accounting),
        )
        .route("/cluster", get(cluster::alone))
        .route("/hosts", get(hosts::list))
        .route("/hosts/{id}", patch(hosts::patch))
        .route("/agents/connect", get(agents::connect))
        .route("/agents/blobs/{sha256}", get(blobs::get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest(veem_api::BASE_PATH, api)
        .merge(ui::routes())
        .fallback(not_found)
        // Beside the VMI, not in its OpenAPI document.
        .merge(metrics::routes())
        .layer(axum::middleware::from_fn(run_to_completion))
        // Descriptors, envelopes and id lists; images are streamed and not bound by it.
        .layer(DefaultBodyLimit::max(veem_api::MAX_REQUEST_BODY_BYTES))
        .layer(axum::middleware::map_response(problem::for_rejections))
        .layer(axum::middleware::from_fn(metrics::measure))
        .with_state(state)
}

/// Runs each request to its end in a task of its own. A caller that goes away (its connection
/// closed) drops the request's future; cut there, an operation could have committed a change
/// to the store and not yet to the core's books, which would then lag the store for good (a
/// later change of that VEE refused as concurrent), or acted on a host and recorded nothing.
async fn run_to_completion(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => ApiError::from(CoreError::internal("a request's task", e)).into_response(),
    }
}

/// The OpenAPI document of the routes above.
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}

async fn not_found() -> ApiError {
    CoreError::NotFound("no such route; see GET /vmi/v1/openapi.json".into()).into()
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: veem_api::code::METHOD_NOT_ALLOWED,
        detail: "this route does not take that method; see GET /vmi/v1/openapi.json".into(),
    }
}
