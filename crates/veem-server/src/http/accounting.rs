//! Accounting: `GET /vees/{id}/accounting` (a VEE's records, `?from=&to=` in ms),
//! `POST /accounting/listeners` and `POST /accounting/listeners/remove`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use veem_api::{AccountingList, ListenRequest, UnlistenRequest};

use super::common::{parse_json, query_number, vee_id, AppState, Batch};
use super::problem::ApiResult;
use crate::auth::Caller;

pub(super) async fn records(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<AccountingList>> {
    let from = query_number(&query, "from", 0, "milliseconds")?;
    let to = query_number(&query, "to", u64::MAX, "milliseconds")?;
    let records = state
        .veem
        .accounting(&caller, &vee_id(&id)?, from, to)
        .await?;
    Ok(Json(AccountingList { records }))
}

pub(super) async fn listen(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: ListenRequest = parse_json(&body, false)?;
    let batch = Batch::parse(&request.ids)?;
    state
        .veem
        .listen(
            &caller,
            batch.all()?,
            request.interval_ms,
            &request.callback,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn unlisten(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: UnlistenRequest = parse_json(&body, false)?;
    let batch = Batch::parse(&request.ids)?;
    state.veem.unlisten(&caller, batch.all()?).await?;
    Ok(StatusCode::NO_CONTENT)
}
