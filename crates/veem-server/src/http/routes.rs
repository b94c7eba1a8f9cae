//! The handlers of the VMI routes.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use tokio_util::io::ReaderStream;
use veem_api::{
    AccountingList, EventList, HostList, HostView, ImageList, ImageView, InitializeRequest,
    InitializeResponse, InitializedVee, ItemFailure, ListenRequest, MigrateRequest, NetworkList,
    NetworkRequest, NetworkView, PatchRequest, PatchResponse, PutMonitoringResponse, Resources,
    SubmitRequest, SubmitResponse, SubscribeRequest, SubscribeResponse, UnlistenRequest,
    UpdateStateRequest, UpdateStateResponse, VeeList, VeeView,
};
use veem_model::{
    DescriptorError, ImageRecord, InitModel, MonitoringEvent, VeeId, VeeRecord, VmiState,
};

use super::problem::ApiError;
use super::{Admin, AppState};
use crate::auth::Caller;
use crate::error::CoreError;
use crate::veem::{BatchOutcome, ListFilter, NetworkInfo, Putter};

type ApiResult<T> = Result<T, ApiError>;

const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// A longer wait would outlive any sensible HTTP client; ask again instead.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Parses a JSON body, naming the offending field when it does not fit.
fn parse_json<T: DeserializeOwned>(body: &[u8], descriptor: bool) -> Result<T, CoreError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        let reason = e.into_inner().to_string();
        if descriptor {
            CoreError::MalformedDescriptor(DescriptorError::new(field, reason))
        } else {
            CoreError::malformed(field, reason)
        }
    })
}

/// Refuses a batch larger than [`veem_api::MAX_IDS_PER_CALL`] before any of it is looked at.
fn check_batch(ids: &[String]) -> Result<(), CoreError> {
    if ids.len() > veem_api::MAX_IDS_PER_CALL {
        return Err(CoreError::malformed(
            "ids",
            format!(
                "{} ids in one call; at most {} (split the batch)",
                ids.len(),
                veem_api::MAX_IDS_PER_CALL
            ),
        ));
    }
    Ok(())
}

fn view(record: &VeeRecord, site: &str) -> VeeView {
    VeeView {
        id: record.id.to_string(),
        name: record.descriptor.name.clone(),
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
        site: site.to_owned(),
        descriptor: record.descriptor.clone(),
        generated: record.generated.clone(),
        tags: record.descriptor.tags.clone(),
        pending_reason: record.pending_reason.clone(),
        last_error: record.last_error.clone(),
        restarts: record.restarts,
        created_ms: record.created_ms,
        updated_ms: record.updated_ms,
    }
}

fn image_view(image: &ImageRecord) -> ImageView {
    ImageView {
        name: image.name.to_string(),
        format: image.format.as_str().to_owned(),
        size_bytes: image.size_bytes,
        owner: image.owner.to_string(),
        created_ms: image.created_ms,
    }
}

fn failures(outcome: BatchOutcome) -> (Vec<String>, Vec<ItemFailure>) {
    let failed = outcome
        .failed
        .into_iter()
        .map(|(id, e)| ItemFailure {
            id,
            error: e.code().to_owned(),
            detail: e.to_string(),
        })
        .collect();
    (outcome.ok, failed)
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}

pub async fn not_found() -> ApiError {
    CoreError::NotFound("no such route; see GET /vmi/v1/openapi.json".into()).into()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: veem_api::code::METHOD_NOT_ALLOWED,
        detail: "this route does not take that method; see GET /vmi/v1/openapi.json".into(),
    }
}

pub async fn initialize(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<InitializeResponse>)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let (model, count, descriptor) = if content_type.starts_with("application/ovf+xml")
        || content_type.starts_with("application/xml")
        || content_type.starts_with("text/xml")
    {
        ovf_request(&query, &body)?
    } else if content_type.starts_with("application/json") {
        // The query is the OVF form's; silently ignoring it would let `?count=0` or
        // `?model=TWOPHASE` look accepted while the body's values are used.
        if let Some(key) = query.keys().next() {
            return Err(CoreError::malformed(
                key.clone(),
                "query parameters go with an OVF envelope; a JSON body carries model and count itself",
            )
            .into());
        }
        let request: InitializeRequest = parse_json(&body, true)?;
        (request.model, request.count, request.descriptor)
    } else {
        return Err(CoreError::malformed(
            "Content-Type",
            format!("{content_type:?} is neither application/json nor application/ovf+xml"),
        )
        .into());
    };
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

/// An OVF envelope with its query: `?model=&count=&tags=&anti_affinity=&configuration=`.
fn ovf_request(
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(InitModel, u32, veem_model::VeeDescriptor), CoreError> {
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

pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<SubmitResponse>> {
    let request: SubmitRequest = parse_json(&body, false)?;
    check_batch(&request.ids)?;
    let outcome = state.veem.submit(&caller, &request.ids).await;
    let (submitted, failed) = failures(outcome);
    Ok(Json(SubmitResponse { submitted, failed }))
}

pub async fn update_state(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<UpdateStateResponse>> {
    let request: UpdateStateRequest = parse_json(&body, false)?;
    check_batch(&request.ids)?;
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
            &request.ids,
            request.action,
            Duration::from_millis(timeout_ms),
        )
        .await;
    let (applied, failed) = failures(outcome);
    Ok(Json(UpdateStateResponse { applied, failed }))
}

pub async fn get_vee(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<VeeView>> {
    let record = state.veem.get(&caller, &id)?;
    Ok(Json(view(&record, &state.veem.config().site)))
}

/// A list's `limit`: 1 to 1000.
fn page_limit(value: &str) -> Result<usize, CoreError> {
    value
        .parse()
        .ok()
        .filter(|l| (1..=1000).contains(l))
        .ok_or_else(|| CoreError::malformed("limit", "must be a number from 1 to 1000"))
}

pub async fn list_vees(
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
    let site = &state.veem.config().site;
    Ok(Json(VeeList {
        vees: records.iter().map(|r| view(r, site)).collect(),
        next: next.map(|n| n.to_string()),
    }))
}

pub async fn vee_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<EventList>> {
    let events = state.veem.events(&caller, &id)?;
    Ok(Json(EventList { events }))
}

pub async fn vee_accounting(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<AccountingList>> {
    let bound = |name: &str, default: u64| -> Result<u64, CoreError> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| CoreError::malformed(name, format!("{text:?} is not milliseconds"))),
        }
    };
    let from = bound("from", 0)?;
    let to = bound("to", u64::MAX)?;
    let records = state.veem.accounting_records(&caller, &id, from, to)?;
    Ok(Json(AccountingList { records }))
}

pub async fn listen(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: ListenRequest = parse_json(&body, false)?;
    check_batch(&request.ids)?;
    state
        .veem
        .listen(
            &caller,
            &request.ids,
            request.interval_ms,
            &request.callback,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unlisten(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: UnlistenRequest = parse_json(&body, false)?;
    check_batch(&request.ids)?;
    state.veem.unlisten(&caller, &request.ids).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// PutMonitoringInformation: one event or a JSON array of events.
pub async fn put_monitoring(
    State(state): State<AppState>,
    putter: Putter,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PutMonitoringResponse>)> {
    let many = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let events: Vec<MonitoringEvent> = if many {
        parse_json(&body, false)?
    } else {
        vec![parse_json(&body, false)?]
    };
    let count = events.len();
    let measurements = state.veem.put_monitoring(&putter, events)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PutMonitoringResponse {
            events: count,
            measurements,
        }),
    ))
}

pub async fn subscribe(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<SubscribeResponse>)> {
    let request: SubscribeRequest = parse_json(&body, false)?;
    let subscription = state
        .veem
        .subscribe(&caller, &request.callback, request.types)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SubscribeResponse {
            id: subscription.id,
        }),
    ))
}

pub async fn unsubscribe(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.veem.unsubscribe(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The live stream of the events the caller sees, as server-sent events: each event's `event:`
/// is its type and its `data:` the event's JSON. A reader that falls behind is told how many it
/// missed (`event: lagged`).
pub async fn monitoring_stream(
    State(state): State<AppState>,
    caller: Caller,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let receiver = state.veem.monitoring_stream();
    let stream = futures::stream::unfold(
        (receiver, state.veem.clone(), caller),
        |(mut receiver, veem, caller)| async move {
            loop {
                let event = match receiver.recv().await {
                    Ok(routed) => {
                        if !veem.sees_event(&caller, &routed) {
                            continue;
                        }
                        let data = serde_json::to_string(&routed.event).unwrap_or_default();
                        SseEvent::default()
                            .event(routed.event.kind.as_str())
                            .data(data)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        SseEvent::default().event("lagged").data(missed.to_string())
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, veem, caller)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn patch_vee(
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
        .patch(&caller, &id, request.cpu, request.memory_mb)
        .await?;
    Ok(Json(PatchResponse {
        vee: view(&record, &state.veem.config().site),
        applied,
    }))
}

pub async fn migrate_vee(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<VeeView>> {
    let request: MigrateRequest = if body.is_empty() {
        MigrateRequest::default()
    } else {
        parse_json(&body, false)?
    };
    if request.live == Some(false) {
        return Err(CoreError::malformed(
            "live",
            "only live migration is offered; SUSPEND and ACTIVATE move a VEE with a pause",
        )
        .into());
    }
    let record = state
        .veem
        .migrate(&caller, &id, request.host.as_deref())
        .await?;
    Ok(Json(view(&record, &state.veem.config().site)))
}

pub async fn purge_vee(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.veem.purge(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams a file; it is unlinked once open, so it goes away when the stream ends.
async fn stream_file(path: &std::path::Path, unlink: bool) -> ApiResult<Response> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CoreError::internal("opening the file to send", e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| CoreError::internal("reading the file's size", e))?
        .len();
    if unlink {
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024)),
    )
        .into_response())
}

pub async fn download_disk(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, target)): Path<(String, String)>,
) -> ApiResult<Response> {
    let path = state.veem.export_disk(&caller, &id, &target).await?;
    stream_file(&path, true).await
}

pub async fn list_images(State(state): State<AppState>, caller: Caller) -> Json<ImageList> {
    let images = state.veem.list_images(&caller);
    Json(ImageList {
        images: images.iter().map(image_view).collect(),
    })
}

pub async fn get_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ImageView>> {
    Ok(Json(image_view(&state.veem.get_image(&caller, &name)?)))
}

pub async fn image_data(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let image = state.veem.get_image(&caller, &name)?;
    stream_file(&state.veem.image_path(&image.owner, &image.name), false).await
}

pub async fn put_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    let stream = body.into_data_stream();
    let record = crate::images::put_image(&state.veem, &caller, &name, stream).await?;
    Ok((StatusCode::CREATED, Json(image_view(&record))))
}

pub async fn delete_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.veem.delete_image(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn network_view(info: &NetworkInfo) -> NetworkView {
    let network = &info.network;
    NetworkView {
        name: network.name.clone(),
        owner: network.owner.to_string(),
        cidr: network.cidr.to_string(),
        public: network.public,
        host_address: network
            .public
            .then(|| network.cidr.host_address().to_string()),
        addresses_used: info.held as u64,
        addresses_free: u64::from(info.free),
        created_ms: network.created_ms,
    }
}

pub async fn create_network(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<NetworkView>)> {
    let request: NetworkRequest = parse_json(&body, false)?;
    let info = state
        .veem
        .create_network(&caller, &request.name, &request.cidr, request.public)
        .await?;
    Ok((StatusCode::CREATED, Json(network_view(&info))))
}

pub async fn list_networks(State(state): State<AppState>, caller: Caller) -> Json<NetworkList> {
    Json(NetworkList {
        networks: state
            .veem
            .list_networks(&caller)
            .iter()
            .map(network_view)
            .collect(),
    })
}

pub async fn get_network(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<NetworkView>> {
    Ok(Json(network_view(&state.veem.get_network(&caller, &name)?)))
}

pub async fn delete_network(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.veem.delete_network(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn host_view(
    state: &AppState,
    id: &veem_model::HostId,
    entry: &crate::hosts::HostEntry,
) -> HostView {
    let usage = state.veem.host_usage(id);
    let used = usage.as_ref().map_or(
        Resources {
            cpus: 0,
            memory_mb: 0,
        },
        |u| Resources {
            cpus: u.used.cpus,
            memory_mb: u.used.memory_mb,
        },
    );
    HostView {
        id: id.clone(),
        state: entry.state(),
        driver: entry.hello.driver.clone(),
        agent: entry
            .link
            .as_ref()
            .map_or("disconnected", |l| l.kind())
            .to_owned(),
        capacity: Resources {
            cpus: entry.hello.cpus,
            memory_mb: entry.hello.memory_mb,
        },
        used,
        vees: usage
            .map(|u| u.vees.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default(),
        last_seen_ms: entry.last_seen_ms,
        error: entry.error.clone(),
        since_ms: Some(entry.since_ms),
        reason: entry.reason(),
    }
}

/// Every host by id; with `?limit=N&after=<host id>` a page of them, as the VEE list pages.
pub async fn list_hosts(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<HostList>> {
    let mut limit = None;
    let mut after = None;
    for (key, value) in &query {
        match key.as_str() {
            "limit" => limit = Some(page_limit(value)?),
            "after" => {
                after = Some(
                    veem_model::HostId::new(value.as_str())
                        .map_err(|e| CoreError::malformed("after", e.to_string()))?,
                )
            }
            other => {
                return Err(
                    CoreError::malformed(other, "unknown query parameter (limit, after)").into(),
                )
            }
        }
    }
    // `all` is in id order (a BTreeMap).
    let mut hosts: Vec<_> = state
        .veem
        .hosts()
        .all()
        .into_iter()
        .filter(|(id, _)| after.as_ref().is_none_or(|a| id > a))
        .collect();
    let mut next = None;
    if let Some(limit) = limit {
        if hosts.len() > limit {
            hosts.truncate(limit);
            next = hosts.last().map(|(id, _)| id.to_string());
        }
    }
    Ok(Json(HostList {
        hosts: hosts
            .iter()
            .map(|(id, entry)| host_view(&state, id, entry))
            .collect(),
        next,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPatch {
    enabled: bool,
}

pub async fn patch_host(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<HostView>> {
    let patch: HostPatch = parse_json(&body, false)?;
    let entry = state.veem.set_host_disabled(&id, !patch.enabled)?;
    Ok(Json(host_view(&state, &entry.hello.name, &entry)))
}
