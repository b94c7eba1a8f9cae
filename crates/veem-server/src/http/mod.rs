//! The VMI over HTTP: the one place of veem that knows routes, headers and status codes.
//! Handlers parse and check a request, call one method of the core, and map its result.

mod agents;
pub mod listen;
#[cfg(test)]
mod openapi_doc;
pub mod problem;
mod routes;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{Authenticator, Caller};
use crate::veem::{Putter, Veem};
use problem::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub veem: Veem,
    pub auth: Arc<Authenticator>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(routes::openapi))
        .route("/vees/initialize", post(routes::initialize))
        .route("/vees/submit", post(routes::submit))
        .route("/vees/update-state", post(routes::update_state))
        .route("/vees", get(routes::list_vees))
        .route(
            "/vees/{id}",
            get(routes::get_vee)
                .patch(routes::patch_vee)
                .delete(routes::purge_vee),
        )
        .route("/vees/{id}/events", get(routes::vee_events))
        .route("/vees/{id}/migrate", post(routes::migrate_vee))
        .route("/vees/{id}/disks/{target}", get(routes::download_disk))
        .route("/images", get(routes::list_images))
        .route(
            "/images/{name}",
            get(routes::get_image)
                .put(routes::put_image)
                .delete(routes::delete_image),
        )
        .route("/images/{name}/data", get(routes::image_data))
        .route(
            "/networks",
            get(routes::list_networks).post(routes::create_network),
        )
        .route(
            "/networks/{name}",
            get(routes::get_network).delete(routes::delete_network),
        )
        .route("/vees/{id}/accounting", get(routes::vee_accounting))
        .route("/accounting/listeners", post(routes::listen))
        .route("/accounting/listeners/remove", post(routes::unlisten))
        .route("/monitoring", post(routes::put_monitoring))
        .route("/monitoring/subscriptions", post(routes::subscribe))
        .route(
            "/monitoring/subscriptions/{id}",
            axum::routing::delete(routes::unsubscribe),
        )
        .route("/monitoring/stream", get(routes::monitoring_stream))
        .route("/hosts", get(routes::list_hosts))
        .route("/hosts/{id}", axum::routing::patch(routes::patch_host))
        .route("/agents/connect", get(agents::connect))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed);
    Router::new()
        .nest(veem_api::BASE_PATH, api)
        .fallback(routes::not_found)
        // Descriptors, envelopes and id lists; images are streamed and not bound by it.
        .layer(DefaultBodyLimit::max(veem_api::MAX_REQUEST_BODY_BYTES))
        .layer(axum::middleware::map_response(problem::for_rejections))
        .with_state(state)
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated("no Authorization header; send 'Authorization: Bearer <token>'")
    })?;
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be 'Bearer <token>'")
        })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .authenticate(bearer(parts)?)
            .ok_or_else(|| ApiError::unauthenticated("unknown token"))
    }
}

/// Who may put monitoring events: a principal, or a probe or agent with a VEE's monitoring
/// token (`veem.monitoring.token` in the VEE's context).
impl FromRequestParts<AppState> for Putter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if let Some(caller) = state.auth.authenticate(token) {
            return Ok(Putter::Principal(caller));
        }
        state
            .veem
            .putter_of_token(token)
            .ok_or_else(|| ApiError::unauthenticated("unknown token"))
    }
}

/// A caller with the admin role.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.admin {
            Ok(Admin(caller))
        } else {
            Err(ApiError::forbidden(&format!(
                "{} is not an admin; this is an operator endpoint",
                caller.principal
            )))
        }
    }
}
