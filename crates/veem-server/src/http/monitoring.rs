//! Monitoring: `POST /monitoring` (PutMonitoringInformation), `POST /monitoring/subscriptions`,
//! `DELETE /monitoring/subscriptions/{id}`, `GET /monitoring/stream` (server-sent events) and
//! `GET /vees/{id}/monitoring` (the events kept about a VEE).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use tokio::sync::broadcast::error::RecvError;
use veem_api::{MonitoringHistory, PutMonitoringResponse, SubscribeRequest, SubscribeResponse};
use veem_model::{EventType, MonitoringEvent};

use super::common::{parse_json, parse_json_items, query_number, vee_id, AppState};
use super::problem::ApiResult;
use crate::auth::Caller;
use crate::error::CoreError;
use crate::veem::Putter;

/// PutMonitoringInformation: one event or a JSON array of events.
pub(super) async fn put(
    State(state): State<AppState>,
    putter: Putter,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PutMonitoringResponse>)> {
    let events: Vec<MonitoringEvent> = parse_json_items(&body)?;
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

/// The events about a VEE that the VEEM keeps (`?type=HARDWARE&from=<ms>`), oldest first.
pub(super) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<MonitoringHistory>> {
    let kind = match query.get("type") {
        None => None,
        Some(text) => Some(
            EventType::ALL
                .into_iter()
                .find(|k| k.as_str() == text)
                .ok_or_else(|| {
                    CoreError::malformed(
                        "type",
                        format!("{text:?} is not an event type (HARDWARE, PROBE, AGENT, STATE)"),
                    )
                })?,
        ),
    };
    let from = query_number(&query, "from", 0, "milliseconds")?;
    let events = state
        .veem
        .monitoring_history(&caller, &vee_id(&id)?, kind, from)?;
    Ok(Json(MonitoringHistory { events }))
}

pub(super) async fn subscribe(
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

pub(super) async fn unsubscribe(
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
pub(super) async fn stream(
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
                    Err(RecvError::Lagged(missed)) => {
                        SseEvent::default().event("lagged").data(missed.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, veem, caller)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
