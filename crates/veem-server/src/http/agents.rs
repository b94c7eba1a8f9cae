//! `GET /vmi/v1/agents/connect`: where a remote host agent (`veem agent`) opens its WebSocket.
//! The agent's first frame says who it is; then the VEEM sends requests and the agent answers.
//! An agent proves it may connect with a client certificate of the site's client CA (verified
//! in the TLS handshake, see `listen.rs`) or with an admin's bearer token.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use veem_api::agent::AgentFrame;

use super::common::{Admin, AppState};
use super::problem::ApiError;
use crate::hosts::{HostLink, RemoteLink};

/// What lets a host agent in.
pub(super) enum AgentCredential {
    /// A client certificate the TLS handshake verified against the site's client CA.
    Certificate(veem_tls::ClientCertificate),
    /// An admin principal's bearer token.
    Admin(crate::auth::Caller),
}

impl FromRequestParts<AppState> for AgentCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(certificate) = parts.extensions.get::<veem_tls::ClientCertificate>() {
            return Ok(AgentCredential::Certificate(certificate.clone()));
        }
        let Admin(caller) = Admin::from_request_parts(parts, state).await?;
        Ok(AgentCredential::Admin(caller))
    }
}

pub(super) async fn connect(
    State(state): State<AppState>,
    credential: AgentCredential,
    upgrade: WebSocketUpgrade,
) -> Response {
    match &credential {
        AgentCredential::Certificate(certificate) => {
            tracing::debug!(
                fingerprint = certificate.fingerprint(),
                "agent connecting with a client certificate"
            );
        }
        AgentCredential::Admin(caller) => {
            tracing::debug!(principal = %caller.principal, "agent connecting with a token");
        }
    }
    upgrade.on_upgrade(move |socket| serve_agent(state, socket, credential))
}

async fn serve_agent(state: AppState, socket: WebSocket, credential: AgentCredential) {
    let (mut sink, mut stream) = socket.split();
    let hello = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<AgentFrame>(&text) {
                Ok(AgentFrame::Hello { hello }) => break hello,
                Ok(other) => {
                    tracing::warn!(frame = ?other, "an agent must say hello first");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an agent sent an unreadable frame");
                    return;
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    // A certificate is one host's: it may not connect under another host's name (an admin's
    // token may, as the admin may do anything).
    if let AgentCredential::Certificate(certificate) = &credential {
        if !certificate.is_for(hello.name.as_str()) {
            tracing::warn!(
                host = %hello.name,
                fingerprint = certificate.fingerprint(),
                "refused an agent whose client certificate is not made for the host it claims to be"
            );
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel::<AgentFrame>(1024);
    let remote = Arc::new(RemoteLink::new(out_tx));
    let link: Arc<dyn HostLink> = remote.clone();
    let host = hello.name.clone();
    // The agent's lease: half the silence after which this VEEM declares a host lost, so an
    // agent cut off that long has noticed before its VEEs run elsewhere. Pings keep a healthy
    // connection well within it.
    let lease = state.veem.hosts().dead_after() / 2;
    let welcome = AgentFrame::Welcome {
        lease_ms: lease.as_millis() as u64,
    };
    let writer = {
        let remote = remote.clone();
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(lease / 4);
            // Before any request: the agent learns its lease first.
            if let Ok(text) = serde_json::to_string(&welcome) {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            loop {
                let message = tokio::select! {
                    frame = out_rx.recv() => match frame.map(|f| serde_json::to_string(&f)) {
                        Some(Ok(text)) => Message::Text(text.into()),
                        Some(Err(_)) => continue,
                        None => break,
                    },
                    _ = ping.tick() => Message::Ping(Default::default()),
                    () = remote.cut_notified() => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        })
    };
    let reader = {
        let remote = remote.clone();
        async move {
            loop {
                let message = tokio::select! {
                    message = stream.next() => message,
                    // A lost host's connection ends here: nothing it says counts any more.
                    () = remote.cut_notified() => break,
                };
                let Some(Ok(message)) = message else {
                    break;
                };
                remote.heard();
                let Message::Text(text) = message else {
                    continue;
                };
                match serde_json::from_str::<AgentFrame>(&text) {
                    Ok(AgentFrame::Response { id, response }) => remote.deliver(id, response),
                    Ok(other) => tracing::warn!(frame = ?other, "unexpected frame from an agent"),
                    Err(e) => tracing::warn!(error = %e, "an agent sent an unreadable frame"),
                }
            }
        }
    };
    // Read answers while the host is being reconciled: reconciliation asks the agent things.
    let reading = tokio::spawn(reader);
    if let Err(e) = state.veem.connect_host(hello, link.clone()).await {
        tracing::error!(%host, error = %e, "cannot add the host");
    }
    let _ = reading.await;
    remote.close();
    state.veem.disconnect_host(&host, &link);
    writer.abort();
}
