//! Sites of the federation: `GET|POST /sites`, `GET|DELETE /sites/{name}`, and the inbox where
//! a site pushes to this VEEM: `POST /sites/{name}/inbox/{secret}` (events) and
//! `POST /sites/{name}/inbox/{secret}/accounting` (accounting records).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use veem_api::{SiteList, SiteRequest, SiteView};
use veem_model::{AccountingRecord, MonitoringEvent, SiteName};

use super::common::{parse_json, parse_json_items, Admin, AppState};
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

/// `POST /sites/{name}/inbox/{secret}`: a site pushes the changes of this VEEM's VEEs there
/// (the STATE events of the subscription this VEEM holds at it). No token: the secret in the
/// path, made at registration, is the site's credential; a wrong one is answered as a route
/// that does not exist.
pub(super) async fn inbox(
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = inbox_of(&state, name, &secret)?;
    let events: Vec<MonitoringEvent> = parse_json(&body, false)?;
    state.veem.site_pushed(&name, events);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sites/{name}/inbox/{secret}/accounting`: a site sends the accounting records of the
/// listener this VEEM holds there for its VEEs (one record or an array, as any listener gets
/// them), relayed to the listeners here. Answered once they are durable here, so that the
/// site may settle them; records of VEEs this VEEM has not there are ignored.
pub(super) async fn inbox_accounting(
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = inbox_of(&state, name, &secret)?;
    let records: Vec<AccountingRecord> = parse_json_items(&body)?;
    state.veem.relay_accounting(&name, records).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The site whose inbox `secret` opens: a wrong one is answered as a route that does not exist.
fn inbox_of(state: &AppState, name: String, secret: &str) -> Result<SiteName, CoreError> {
    let no_inbox = || CoreError::NotFound("no such route; see GET /vmi/v1/openapi.json".into());
    let name = SiteName::new(name).map_err(|_| no_inbox())?;
    if !state.veem.is_site_inbox(&name, secret) {
        return Err(no_inbox());
    }
    Ok(name)
}
