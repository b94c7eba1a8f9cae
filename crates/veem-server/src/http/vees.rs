//! The VEEs: `POST /vees/initialize` (a JSON descriptor or an OVF envelope), `POST /vees/plan`
//! (the same body: where it would land, changing nothing), `POST /vees/submit`,
//! `POST /vees/update-state`, `GET /vees` (paged), `GET|PATCH|DELETE /vees/{id}`,
//! `GET /vees/{id}/events`, `POST /vees/{id}/migrate` and `GET /vees/{id}/disks/{target}`; for
//! migration between sites, `POST /vees/incoming`, `POST /vees/{id}/incoming/complete` and
//! `POST /vees/{id}/send`.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use veem_api::{
    CompleteIncomingRequest, EventList, IncomingRequest, IncomingView, InitializeRequest,
    InitializeResponse, InitializedVee, PatchRequest, PatchResponse, PlanResponse,
    PlannedPlacement, SendRequest, SentView, SiteState, SubmitRequest, SubmitResponse,
    UpdateStateRequest, UpdateStateResponse, VeeList, VeeView,
};
use veem_model::{
    DescriptorError, HostId, InitModel, SiteName, VeeDescriptor, VeeId, VeeRecord, VmiState,
};

use super::common::{page_limit, parse_json, query_number, stream_file, vee_id, AppState, Batch};
use super::problem::ApiResult;
use crate::auth::Caller;
use crate::error::CoreError;
use crate::veem::{ListFilter, Veem};

const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// A longer wait would outlive any sensible HTTP client; ask again instead.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// A VEE as the VMI shows it: where it runs (this site, or the site that runs it for this
/// VEEM) and whether that site answers.
fn view(record: &VeeRecord, veem: &Veem) -> VeeView {
    let sites = veem.sites();
    let (site, site_state) = match &record.site {
        Some(site) => (
            site.to_string(),
            sites
                .get(site)
                .map_or(SiteState::Unreachable, |info| info.state),
        ),
        None => (sites.this().to_string(), SiteState::Up),
    };
    VeeView {
        id: record.id.to_string(),
        name: record.name().to_owned(),
        owner: record.owner.to_string(),
        state: record.state,
        veem_state: record.veem_state,
        phase: record.phase,
        // A reservation is not a host the VEE holds: the contract shows `null` until deployed.
        host: if record.reserved {
            None
        } else {
            record.host.clone()
        },
        site,
        site_state,
        descriptor: VeeDescriptor::clone(&record.descriptor),
        generated: record.generated.clone(),
        tags: record.descriptor.tags.clone(),
        pending_reason: record.pending_reason.clone(),
        last_error: record.last_error.clone(),
        restarts: record.restarts,
        created_ms: record.created_ms,
        updated_ms: record.updated_ms,
    }
}

pub(super) async fn initialize(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<InitializeResponse>)> {
    let (model, count, descriptor) = initialize_request(&query, &headers, &body)?;
    let records = state
        .veem
        .initialize(&caller, model, count, descriptor)
        .await?;
    let vees = records
        .iter()
        .map(|r| InitializedVee {
            id: r.id.to_string(),
            state: r.state,
            generated: r.generated.clone(),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(InitializeResponse { vees })))
}

/// `POST /vees/plan`: the body of InitializeVEEs (its model aside: a plan is TWOPHASE's), and
/// where the batch would land now.
pub(super) async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<PlanResponse>> {
    let (_model, count, descriptor) = initialize_request(&query, &headers, &body)?;
    let plan = state.veem.plan(&caller, count, descriptor).await?;
    let placements = plan
        .placements
        .into_iter()
        .map(|p| PlannedPlacement {
            index: p.index,
            name: p.name,
            site: p.site.to_string(),
            host: p.host.map(|h| h.to_string()),
            reason: p.reason,
        })
        .collect();
    Ok(Json(PlanResponse {
        feasible: plan.feasible,
        placements,
    }))
}

/// The body of InitializeVEEs: a JSON request, or an OVF envelope with its query.
fn initialize_request(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(InitModel, u32, VeeDescriptor), CoreError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    if content_type.starts_with("application/ovf+xml")
        || content_type.starts_with("application/xml")
        || content_type.starts_with("text/xml")
    {
        ovf_request(query, body)
    } else if content_type.starts_with("application/json") {
        // The query is the OVF form's; silently ignoring it would let `?count=0` or
        // `?model=TWOPHASE` look accepted while the body's values are used.
        if let Some(key) = query.keys().next() {
            return Err(CoreError::malformed(
                key.clone(),
                "query parameters go with an OVF envelope; a JSON body carries model and count itself",
            ));
        }
        let request: InitializeRequest = parse_json(body, true)?;
        Ok((request.model, request.count, request.descriptor))
    } else {
        Err(CoreError::malformed(
            "Content-Type",
            format!("{content_type:?} is neither application/json nor application/ovf+xml"),
        ))
    }
}

/// An OVF envelope with its query: `?model=&count=&tags=&anti_affinity=&configuration=`.
fn ovf_request(
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(InitModel, u32, VeeDescriptor), CoreError> {
    for key in query.keys() {
        if !["model", "count", "tags", "anti_affinity", "configuration"].contains(&key.as_str()) {
            return Err(CoreError::malformed(
                key.clone(),
                "unknown query parameter (model, count, tags, anti_affinity, configuration)",
            ));
        }
    }
    let model = match query.get("model").map(|m| m.to_ascii_uppercase()) {
        None => InitModel::Besteffort,
        Some(m) if m == "BESTEFFORT" => InitModel::Besteffort,
        Some(m) if m == "TWOPHASE" => InitModel::Twophase,
        Some(m) => {
            return Err(CoreError::malformed(
                "model",
                format!("{m:?} is neither BESTEFFORT nor TWOPHASE"),
            ))
        }
    };
    let count = match query.get("count") {
        None => 1,
        Some(c) => c
            .parse()
            .map_err(|_| CoreError::malformed("count", format!("{c:?} is not a number")))?,
    };
    let xml = std::str::from_utf8(body).map_err(|_| {
        CoreError::MalformedDescriptor(DescriptorError::new(
            "Envelope",
            "the envelope is not UTF-8",
        ))
    })?;
    let options = veem_ovf::ParseOptions {
        configuration: query.get("configuration").cloned(),
    };
    let mut descriptor = veem_ovf::parse_envelope(xml, &options).map_err(|e| {
        CoreError::MalformedDescriptor(DescriptorError::new(e.element(), e.to_string()))
    })?;
    let split = |key: &str| -> Vec<String> {
        query
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for tag in split("tags") {
        if !descriptor.tags.contains(&tag) {
            descriptor.tags.push(tag);
        }
    }
    for tag in split("anti_affinity") {
        if !descriptor.anti_affinity.contains(&tag) {
            descriptor.anti_affinity.push(tag);
        }
    }
    Ok((model, count, descriptor))
}

pub(super) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<SubmitResponse>> {
    let request: SubmitRequest = parse_json(&body, false)?;
    let batch = Batch::parse(&request.ids)?;
    let outcome = state.veem.submit(&caller, &batch.ids).await;
    let (submitted, failed) = batch.answer(outcome);
    Ok(Json(SubmitResponse { submitted, failed }))
}

pub(super) async fn update_state(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<UpdateStateResponse>> {
    let request: UpdateStateRequest = parse_json(&body, false)?;
    let batch = Batch::parse(&request.ids)?;
    let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms > MAX_TIMEOUT_MS {
        return Err(CoreError::malformed(
            "timeout_ms",
            format!("must be at most {MAX_TIMEOUT_MS}"),
        )
        .into());
    }
    let outcome = state
        .veem
        .update_state(
            &caller,
            request.order,
            &batch.ids,
            request.action,
            Duration::from_millis(timeout_ms),
        )
        .await;
    let (applied, failed) = batch.answer(outcome);
    Ok(Json(UpdateStateResponse { applied, failed }))
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<VeeView>> {
    let record = state.veem.get(&caller, &vee_id(&id)?)?;
    Ok(Json(view(&record, &state.veem)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<VeeList>> {
    let mut filter = ListFilter {
        limit: 100,
        ..ListFilter::default()
    };
    for (key, value) in &query {
        match key.as_str() {
            "state" => {
                filter.state =
                    Some(VmiState::parse(&value.to_ascii_uppercase()).ok_or_else(|| {
                        CoreError::malformed("state", format!("{value:?} is not a VMI state"))
                    })?)
            }
            "tag" => filter.tag = Some(value.clone()),
            "limit" => filter.limit = page_limit(value)?,
            "after" => {
                filter.after = Some(
                    VeeId::parse(value)
                        .map_err(|e| CoreError::malformed("after", e.to_string()))?,
                )
            }
            other => {
                return Err(CoreError::malformed(
                    other,
                    "unknown query parameter (state, tag, limit, after)",
                )
                .into())
            }
        }
    }
    let (records, next) = state.veem.list(&caller, &filter);
    Ok(Json(VeeList {
        vees: records.iter().map(|r| view(r, &state.veem)).collect(),
        next: next.map(|n| n.to_string()),
    }))
}

pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<EventList>> {
    let events = state.veem.events(&caller, &vee_id(&id)?)?;
    Ok(Json(EventList { events }))
}

pub(super) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PatchResponse>> {
    let request: PatchRequest = parse_json(&body, false)?;
    if request.cpu.is_none() && request.memory_mb.is_none() {
        return Err(CoreError::malformed("body", "give memory_mb, cpu or both").into());
    }
    let (record, applied) = state
        .veem
        .patch(&caller, &vee_id(&id)?, request.cpu, request.memory_mb)
        .await?;
    Ok(Json(PatchResponse {
        vee: view(&record, &state.veem),
        applied,
    }))
}

/// The body of `POST /vees/{id}/migrate`: to a host of this site (`host`; `live` unless
/// `"live": false`), or to a site (`site`; cold unless `"live": true`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    live: Option<bool>,
}

pub(super) async fn migrate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<VeeView>> {
    let request: MigrateBody = if body.is_empty() {
        MigrateBody::default()
    } else {
        parse_json(&body, false)?
    };
    if let Some(site) = &request.site {
        if request.host.is_some() {
            return Err(CoreError::malformed(
                "host",
                "give a site or a host: a site places the VEE on its own hosts",
            )
            .into());
        }
        let site = SiteName::new(site).map_err(|e| CoreError::malformed("site", e.to_string()))?;
        let record = state
            .veem
            .migrate_to_site(&caller, &vee_id(&id)?, &site, request.live.unwrap_or(false))
            .await?;
        return Ok(Json(view(&record, &state.veem)));
    }
    let to = request
        .host
        .as_deref()
        .map(|h| HostId::new(h).map_err(|e| CoreError::malformed("host", e.to_string())))
        .transpose()?;
    // Between hosts, live unless said otherwise (as it always was).
    let record = state
        .veem
        .migrate(
            &caller,
            &vee_id(&id)?,
            to.as_ref(),
            request.live.unwrap_or(true),
        )
        .await?;
    Ok(Json(view(&record, &state.veem)))
}

/// `POST /vees/incoming` (migration between sites): a VEE of the caller's waits on a host
/// here for its migration; `201` with where to send it.
pub(super) async fn incoming(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<IncomingView>)> {
    may_migrate(&state, &caller)?;
    let request: IncomingRequest = parse_json(&body, true)?;
    let (record, uri, disks) = state
        .veem
        .receive_incoming(&caller, request.descriptor)
        .await?;
    let vee = view(&record, &state.veem);
    Ok((StatusCode::CREATED, Json(IncomingView { vee, uri, disks })))
}

/// `POST /vees/{id}/incoming/complete`: the VEE whose migration arrived runs (or rests
/// paused, with `{"state": "PAUSED"}`).
pub(super) async fn complete_incoming(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<VeeView>> {
    let request: CompleteIncomingRequest = if body.is_empty() {
        CompleteIncomingRequest::default()
    } else {
        parse_json(&body, false)?
    };
    let paused = match request.state {
        None | Some(VmiState::Active) => false,
        Some(VmiState::Paused) => true,
        Some(other) => {
            return Err(CoreError::malformed(
                "state",
                format!("a VEE that arrived is left ACTIVE or PAUSED, not {other}"),
            )
            .into())
        }
    };
    let record = state
        .veem
        .complete_incoming(&caller, &vee_id(&id)?, paused)
        .await?;
    Ok(Json(view(&record, &state.veem)))
}

/// Migration between sites makes hosts listen for, and connect out to, addresses a caller
/// names: only principals whose config says `migrate_vees` (a peer site's VEEM) may ask it.
fn may_migrate(state: &AppState, caller: &Caller) -> Result<(), CoreError> {
    if state.auth.may_migrate_vees(caller) {
        return Ok(());
    }
    Err(CoreError::AccessDenied(format!(
        "principal {} may not move VEEs between sites (migrate_vees is not set for it)",
        caller.principal
    )))
}

/// `POST /vees/{id}/send`: the caller's VEE goes to what a `POST /vees/incoming` answered at
/// another site.
pub(super) async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<SentView>> {
    may_migrate(&state, &caller)?;
    let request: SendRequest = parse_json(&body, false)?;
    let sent = state
        .veem
        .send_out(&caller, &vee_id(&id)?, request.uri, request.disks)
        .await?;
    Ok(Json(sent))
}

pub(super) async fn purge(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.veem.purge(&caller, &vee_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn download_disk(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, target)): Path<(String, String)>,
) -> ApiResult<Response> {
    let path = state
        .veem
        .export_disk(&caller, &vee_id(&id)?, &target)
        .await?;
    stream_file(&path, true).await
}

/// `PUT /vees/{id}/disks/{target}`: the contents of a disk of the caller's DEFINED or
/// DESTROYED VEE, streamed (a qcow2 naming no other file, as `GET` gives it).
pub(super) async fn upload_disk(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, target)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    let stream = body.into_data_stream();
    crate::images::put_disk(&state.veem, &caller, &vee_id(&id)?, &target, stream).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tail of a VEE's serial console (`?bytes=N`, at most 1 MiB), as text.
pub(super) async fn console(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let bytes = query_number(
        &query,
        "bytes",
        veem_api::CONSOLE_TAIL_DEFAULT_BYTES,
        "a number of bytes",
    )?;
    if !(1..=veem_api::CONSOLE_TAIL_MAX_BYTES).contains(&bytes) {
        return Err(CoreError::malformed(
            "bytes",
            format!("must be between 1 and {}", veem_api::CONSOLE_TAIL_MAX_BYTES),
        )
        .into());
    }
    let tail = state
        .veem
        .console_tail(&caller, &vee_id(&id)?, bytes)
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], tail).into_response())
}
