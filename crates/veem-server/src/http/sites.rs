//! Sites of the federation: `GET|POST /sites` and `GET|DELETE /sites/{name}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use veem_api::{SiteList, SiteRequest, SiteView};
use veem_model::SiteName;

use super::common::{parse_json, Admin, AppState};
use super::problem::ApiResult;
use crate::auth::Caller;
use crate::error::CoreError;
use crate::veem::SiteInfo;

/// What `caller` sees of a site: an admin all of it, others its name and state.
fn view(state: &AppState, caller: &Caller, info: &SiteInfo) -> SiteView {
    let site = &info.site;
    let admin = caller.admin;
    SiteView {
        name: site.name.to_string(),
        url: admin.then(|| site.url.clone()),
        state: info.state,
        since_ms: admin.then_some(info.since_ms),
        vees: admin.then(|| state.veem.vees_at(&site.name)),
    }
}

/// A site name the caller wrote: text that cannot be a name names no site.
fn site_name(text: &str) -> Result<SiteName, CoreError> {
    SiteName::new(text).map_err(|_| CoreError::NotFound(format!("no site {text:?} is registered")))
}

pub(super) async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<SiteView>)> {
    let request: SiteRequest = parse_json(&body, false)?;
    let info = state.veem.register_site(request).await?;
    tracing::info!(site = %info.site.name, url = %info.site.url, "site registered");
    Ok((StatusCode::CREATED, Json(view(&state, &caller, &info))))
}

pub(super) async fn list(State(state): State<AppState>, caller: Caller) -> Json<SiteList> {
    let sites = state.veem.sites().list();
    Json(SiteList {
        sites: sites
            .iter()
            .map(|info| view(&state, &caller, info))
            .collect(),
    })
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<SiteView>> {
    let name = site_name(&name)?;
    let info = state
        .veem
        .sites()
        .get(&name)
        .ok_or_else(|| CoreError::NotFound(format!("no site {name} is registered")))?;
    Ok(Json(view(&state, &caller, &info)))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = site_name(&name)?;
    state.veem.remove_site(&name).await?;
    tracing::info!(site = %name, "site removed");
    Ok(StatusCode::NO_CONTENT)
}
