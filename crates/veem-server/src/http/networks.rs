//! Virtual networks: `GET|POST /networks` and `GET|DELETE /networks/{name}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use veem_api::{LanEndpoint, LanExtensionView, NetworkList, NetworkRequest, NetworkView};

use super::common::{parse_json, AppState};
use super::problem::ApiResult;
use crate::auth::Caller;
use crate::veem::NetworkInfo;

fn view(info: &NetworkInfo, endpoints: &[LanEndpoint]) -> NetworkView {
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
        extends: network.extension.as_ref().map(|e| LanExtensionView {
            vni: e.vni,
            peers: e
                .peers
                .iter()
                .map(|p| LanEndpoint {
                    address: p.address,
                    port: p.port,
                })
                .collect(),
            endpoints: endpoints.to_vec(),
        }),
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<NetworkView>)> {
    let request: NetworkRequest = parse_json(&body, false)?;
    // A copy of another site's LAN that the caller has already is renewed: 200, not 201.
    let (info, created) = state.veem.create_network(&caller, &request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let endpoints = state.veem.networks().endpoints();
    Ok((status, Json(view(&info, &endpoints))))
}

pub(super) async fn list(State(state): State<AppState>, caller: Caller) -> Json<NetworkList> {
    let networks = state.veem.networks();
    let endpoints = networks.endpoints();
    Json(NetworkList {
        networks: networks
            .list(&caller)
            .iter()
            .map(|info| view(info, &endpoints))
            .collect(),
    })
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<NetworkView>> {
    let networks = state.veem.networks();
    Ok(Json(view(
        &networks.get(&caller, &name)?,
        &networks.endpoints(),
    )))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.veem.delete_network(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
