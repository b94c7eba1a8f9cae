//! `GET /vmi/v1/agents/blobs/{sha256}`: an image's bytes by digest, for remote host agents,
//! which fetch what their VEEs boot from (`SourcePlan::Image`) from whichever front-end
//! answers. Agents' credentials only: an admin's bearer token, or a client certificate the
//! TLS handshake verified (as for `agents/connect`). A digest no image names is `404`.

use axum::extract::{Path, State};
use axum::response::Response;

use super::agents::AgentCredential;
use super::common::{stream_file, AppState};
use super::problem::ApiResult;

pub(super) async fn get(
    State(state): State<AppState>,
    _agent: AgentCredential,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    // Checked (64 lowercase hex digits, named by an image) before it becomes a path.
    let path = state.veem.images().local_blob(&sha256).await?;
    stream_file(&path, false).await
}
