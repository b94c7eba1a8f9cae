//! The site's hosts, for operators only: `GET /hosts` (paged by `?limit=&after=`) and
//! `PATCH /hosts/{id}` (enable or disable a host).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use veem_api::{HostList, HostView, Resources};
use veem_model::HostId;

use super::common::{page_limit, parse_json, Admin, AppState};
use super::problem::ApiResult;
use crate::error::CoreError;
use crate::hosts::HostEntry;

fn view(state: &AppState, id: &HostId, entry: &HostEntry) -> HostView {
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
pub(super) async fn list(
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
                    HostId::new(value.as_str())
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
    let (hosts, more) = state.veem.hosts().page(after.as_ref(), limit);
    let next = more
        .then(|| hosts.last().map(|(id, _)| id.to_string()))
        .flatten();
    Ok(Json(HostList {
        hosts: hosts
            .iter()
            .map(|(id, entry)| view(&state, id, entry))
            .collect(),
        next,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPatch {
    enabled: bool,
}

pub(super) async fn patch(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<HostView>> {
    let patch: HostPatch = parse_json(&body, false)?;
    let id =
        HostId::new(id.as_str()).map_err(|_| CoreError::NotFound(format!("no host {id:?}")))?;
    let entry = state.veem.set_host_disabled(&id, !patch.enabled).await?;
    Ok(Json(view(&state, &entry.hello.name, &entry)))
}
