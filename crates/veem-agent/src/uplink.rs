//! The remote agent's link to its VEEM: the agent dials the server (so hosts need no open port),
//! introduces itself and then answers the server's requests over one WebSocket, redialing for
//! as long as it runs.
//!
//! A request whose connection drops while it runs still runs to its end: a half-done deploy or
//! migration is worse than an unanswered one, and the VEEM learns the outcome from `status` or
//! `list` after the agent reconnects.
//!
//! The server's `Welcome` gives the agent a lease: once the agent has heard nothing from the
//! server for longer (it was stopped, or the network cut it off), the server may have declared
//! the host lost and restarted its VEEs elsewhere, so frames still queued on that connection
//! may be stale (a deploy or a resume of a VEE that now runs on another host). The agent acts on
//! none of them: it drops the connection and dials again, and the server ends what this host
//! must no longer run before it trusts anything the host reports.
//!
//! A site of several front-ends on one database (`--server URL1,URL2,...`) has one leader, which
//! holds the agents' sockets; the others answer the agents' route with a redirect to it. The
//! agent tries the listed servers in order and follows a redirect only to the agents' route of
//! a server of its list (its token never goes where the operator did not send it); when its
//! connection ends (the leader died, or stopped answering), it starts over through the list, so
//! it finds the new leader after a failover.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Request};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use veem_api::agent::{AgentError, AgentErrorKind, AgentFrame, AgentResponse};

use crate::Agent;

/// The server's route for agents, below the VMI's base path.
pub const CONNECT_PATH: &str = "/agents/connect";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pings let a write fail, and so a dead connection be noticed, even when the server is quiet.
const PING_EVERY: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Responses waiting to be written; request tasks wait when it is full.
const OUTBOX: usize = 64;

/// Why the uplink gave up. Everything else (refused connections, drops, server errors) is
/// retried.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("invalid server address {server:?}: {reason}")]
    InvalidServer { server: String, reason: String },
    #[error("the token cannot be sent in an http header")]
    InvalidToken,
    #[error("the server refused this agent (http status {status})")]
    Rejected { status: u16 },
    #[error("cannot make the TLS configuration")]
    Tls(#[source] veem_tls::TlsError),
}

/// How an agent proves itself to its VEEM: an admin's token, a client certificate (over
/// `wss://`), or both.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// For `https://`/`wss://` servers: the roots that verify the server, and the client
    /// certificate presented to it; `None`: the system's roots and no certificate.
    pub tls: Option<Arc<veem_tls::rustls::ClientConfig>>,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs a remote agent: connects to `server` (e.g. `http://127.0.0.1:7070`) at
/// `GET /vmi/v1/agents/connect`, upgraded to a WebSocket with `Authorization: Bearer <token>`,
/// sends `AgentFrame::Hello`, then answers every `AgentFrame::Request` with an
/// `AgentFrame::Response` of the same id, each request in its own task. Reconnects with
/// exponential backoff (capped at 5 s) when the connection drops. Returns `Ok` when `shutdown`
/// resolves, and an error only when retrying cannot help (the server rejects the token, or the
/// address is unusable).
pub async fn run(
    server: &str,
    token: &str,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UplinkError> {
    let credentials = Credentials {
        token: Some(token.to_owned()),
        tls: None,
    };
    run_with(server, &credentials, agent, shutdown).await
}

/// [`run`] with a choice of credentials: over `https://` (`wss://`) the server is verified and
/// a client certificate may stand in for the token. `servers` is one server's address or
/// several, separated by commas (see [`parse_servers`]).
pub async fn run_with(
    servers: &str,
    credentials: &Credentials,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UplinkError> {
    let endpoints = endpoints(servers, credentials)?;
    let authorization = credentials
        .token
        .as_ref()
        .map(|token| {
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| UplinkError::InvalidToken)
        })
        .transpose()?;
    let mut shutdown = pin!(shutdown);
    let mut backoff = FIRST_BACKOFF;
    loop {
        // One round through the list, in order, following redirects within it.
        'round: for first in 0..endpoints.len() {
            let mut index = first;
            let mut redirects = 0;
            loop {
                let endpoint = &endpoints[index];
                let connected = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    connected = dial(endpoint, authorization.as_ref()) => connected?,
                };
                match connected {
                    Ok(socket) => {
                        tracing::info!(server = %endpoint.url, host = %agent.name(), "agent connected");
                        let since = Instant::now();
                        match serve(socket, &agent, shutdown.as_mut()).await {
                            Ended::Shutdown => return Ok(()),
                            Ended::Dropped(reason) => {
                                tracing::warn!(server = %endpoint.url, %reason, "agent connection dropped");
                            }
                        }
                        // A connection that held for a while was a real one: redial quickly.
                        // One that dropped at once may be a server in trouble: keep backing off.
                        if since.elapsed() >= MAX_BACKOFF {
                            backoff = FIRST_BACKOFF;
                        }
                        break 'round;
                    }
                    Err(tungstenite::Error::Http(response))
                        if matches!(response.status().as_u16(), 401 | 403) =>
                    {
                        return Err(UplinkError::Rejected {
                            status: response.status().as_u16(),
                        });
                    }
                    Err(tungstenite::Error::Http(response))
                        if matches!(response.status().as_u16(), 307 | 308) =>
                    {
                        let location = response
                            .headers()
                            .get(header::LOCATION)
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default();
                        match redirect_target(location, index, &endpoints) {
                            Some(target) if redirects < endpoints.len() => {
                                tracing::info!(server = %endpoint.url, to = %endpoints[target].url, "agent sent on to another server of its list");
                                index = target;
                                redirects += 1;
                                continue;
                            }
                            Some(_) => {
                                tracing::warn!(server = %endpoint.url, %location, "agent redirected round in circles: trying the next server");
                            }
                            None => {
                                tracing::warn!(server = %endpoint.url, %location, "agent redirected to a server not in its --server list: not followed");
                            }
                        }
                    }
                    Err(tungstenite::Error::Url(e)) => {
                        return Err(UplinkError::InvalidServer {
                            server: endpoint.server.clone(),
                            reason: e.to_string(),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(server = %endpoint.url, error = %e, "agent cannot connect");
                    }
                }
                // The next server of the list.
                break;
            }
        }
        // Jitter keeps a site's agents from redialing a restarted server all at once.
        let pause = backoff.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        tracing::debug!(retry_in_ms = pause.as_millis(), "agent dials again");
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One server the agent may connect to.
struct Endpoint {
    /// As the operator wrote it.
    server: String,
    /// Its agents' route, `ws://` or `wss://`.
    url: String,
    /// The same route, as a redirect is compared with it.
    route: Route,
    connector: Connector,
}

/// Splits `--server`'s value: one server's address, or several separated by commas (the
/// front-ends of one site), in the order the agent tries them. Spaces around each are ignored;
/// an empty list, an empty entry, or the same server twice is an error.
pub fn parse_servers(servers: &str) -> Result<Vec<String>, UplinkError> {
    let invalid = |reason: &str| UplinkError::InvalidServer {
        server: servers.to_owned(),
        reason: reason.to_owned(),
    };
    let listed: Vec<String> = servers.split(',').map(|s| s.trim().to_owned()).collect();
    if listed.iter().any(String::is_empty) {
        return Err(invalid(
            "expected one address or several separated by commas, none of them empty",
        ));
    }
    let mut routes = Vec::with_capacity(listed.len());
    for server in &listed {
        let route =
            Route::parse(&connect_url(server)?).ok_or_else(|| invalid("unusable address"))?;
        if routes.contains(&route) {
            return Err(invalid(&format!("{server} is listed twice")));
        }
        routes.push(route);
    }
    Ok(listed)
}

fn endpoints(servers: &str, credentials: &Credentials) -> Result<Vec<Endpoint>, UplinkError> {
    let mut tls = None;
    parse_servers(servers)?
        .into_iter()
        .map(|server| {
            let url = connect_url(&server)?;
            let route = Route::parse(&url).ok_or_else(|| UplinkError::InvalidServer {
                server: server.clone(),
                reason: "unusable address".to_owned(),
            })?;
            let connector = if route.secure {
                let config = match (&credentials.tls, &tls) {
                    (Some(config), _) | (None, Some(config)) => Arc::clone(config),
                    (None, None) => {
                        let config = Arc::new(
                            veem_tls::client_config(None, None).map_err(UplinkError::Tls)?,
                        );
                        tls = Some(Arc::clone(&config));
                        config
                    }
                };
                Connector::Rustls(config)
            } else {
                Connector::Plain
            };
            Ok(Endpoint {
                server,
                url,
                route,
                connector,
            })
        })
        .collect()
}

/// An agents' route as a redirect is compared with it: scheme (`http` and `ws` alike), host,
/// port (the scheme's default when none is written) and path.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    secure: bool,
    host: String,
    port: u16,
    path: String,
}

impl Route {
    fn parse(url: &str) -> Option<Self> {
        let uri: tungstenite::http::Uri = url.parse().ok()?;
        let secure = match uri.scheme_str()? {
            "http" | "ws" => false,
            "https" | "wss" => true,
            _ => return None,
        };
        if uri.query().is_some() {
            return None;
        }
        Some(Self {
            secure,
            host: uri.host()?.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(if secure { 443 } else { 80 }),
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// The listed server a redirect from `endpoints[answered]` sends the agent to: the one whose
/// agents' route `location` is (a path alone is on the server that answered). `None` for a
/// location outside the list, which the agent must not follow: it would hand its token to a
/// server the operator did not name.
fn redirect_target(location: &str, answered: usize, endpoints: &[Endpoint]) -> Option<usize> {
    let location = if location.starts_with('/') {
        let here = &endpoints.get(answered)?.route;
        let scheme = if here.secure { "wss" } else { "ws" };
        format!("{scheme}://{}:{}{location}", here.host, here.port)
    } else {
        location.to_owned()
    };
    let route = Route::parse(&location)?;
    endpoints
        .iter()
        .position(|endpoint| endpoint.route == route)
}

/// One attempt at `endpoint`, bounded by [`CONNECT_TIMEOUT`]; the outer error is one no retry
/// can help.
async fn dial(
    endpoint: &Endpoint,
    authorization: Option<&HeaderValue>,
) -> Result<Result<Socket, tungstenite::Error>, UplinkError> {
    let request = connect_request(&endpoint.server, &endpoint.url, authorization)?;
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(endpoint.connector.clone()),
    );
    Ok(match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(connected) => connected.map(|(socket, _response)| socket),
        Err(_elapsed) => Err(tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into())),
    })
}

/// The WebSocket URL of the agent route on `server`.
fn connect_url(server: &str) -> Result<String, UplinkError> {
    let invalid = |reason: &str| UplinkError::InvalidServer {
        server: server.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = server
        .split_once("://")
        .ok_or_else(|| invalid("expected http://host:port"))?;
    let ws_scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(invalid("the scheme must be http or https")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(invalid("no host"));
    }
    Ok(format!(
        "{ws_scheme}://{rest}{}{CONNECT_PATH}",
        veem_api::BASE_PATH
    ))
}

fn connect_request(
    server: &str,
    url: &str,
    authorization: Option<&HeaderValue>,
) -> Result<Request<()>, UplinkError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| UplinkError::InvalidServer {
            server: server.to_owned(),
            reason: e.to_string(),
        })?;
    if let Some(authorization) = authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization.clone());
    }
    Ok(request)
}

enum Ended {
    Shutdown,
    Dropped(String),
}

/// Serves one connection until it drops or the agent shuts down.
async fn serve<S: Future<Output = ()>>(
    socket: Socket,
    agent: &Arc<Agent>,
    mut shutdown: Pin<&mut S>,
) -> Ended {
    let (mut sink, mut stream) = socket.split();
    let hello = AgentFrame::Hello {
        hello: agent.hello(),
    };
    if let Err(e) = sink.send(frame_message(&hello)).await {
        return Ended::Dropped(format!("cannot send hello: {e}"));
    }
    let (outbox, mut responses) = mpsc::channel::<AgentFrame>(OUTBOX);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    // Until the server's `Welcome`, no lease (a server that predates leases sends none).
    let mut lease: Option<Duration> = None;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let close = sink.send(Message::Close(None));
                // Best effort: the server notices a vanished agent anyway.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                return Ended::Shutdown;
            }
            Some(response) = responses.recv() => {
                if let Err(e) = sink.send(frame_message(&response)).await {
                    return Ended::Dropped(format!("cannot send a response: {e}"));
                }
            }
            _ = ping.tick() => {
                if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                    return Ended::Dropped(format!("cannot ping: {e}"));
                }
            }
            message = stream.next() => {
                if let Some(stale) = lease_expired(lease, last_heard.elapsed()) {
                    return Ended::Dropped(stale);
                }
                last_heard = Instant::now();
                match message {
                    None => return Ended::Dropped("the server closed the stream".to_owned()),
                    Some(Err(e)) => return Ended::Dropped(e.to_string()),
                    Some(Ok(Message::Close(_))) => {
                        return Ended::Dropped("the server closed the connection".to_owned());
                    }
                    Some(Ok(Message::Text(text))) => {
                        lease = dispatch(text.as_bytes(), agent, &outbox).or(lease);
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        lease = dispatch(&bytes, agent, &outbox).or(lease);
                    }
                    // Pongs to the server's pings are sent by the WebSocket layer itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                }
            }
        }
    }
}

fn frame_message(frame: &AgentFrame) -> Message {
    let json = serde_json::to_string(frame).expect("agent frames always serialize to JSON");
    Message::text(json)
}

/// Why the connection must be dropped unread: the agent heard nothing from the server for
/// longer than its lease, so what arrives now may have waited through a loss of this host.
fn lease_expired(lease: Option<Duration>, silence: Duration) -> Option<String> {
    let lease = lease?;
    (silence > lease).then(|| {
        format!(
            "heard nothing from the server for {} ms, past the lease of {} ms: frames on this connection may be stale",
            silence.as_millis(),
            lease.as_millis()
        )
    })
}

/// Starts the task that answers one frame from the server; answers the lease a `Welcome`
/// gives.
fn dispatch(
    bytes: &[u8],
    agent: &Arc<Agent>,
    outbox: &mpsc::Sender<AgentFrame>,
) -> Option<Duration> {
    let (id, request) = match serde_json::from_slice::<AgentFrame>(bytes) {
        Ok(AgentFrame::Request { id, request }) => (id, Ok(request)),
        Ok(AgentFrame::Welcome { lease_ms }) => {
            tracing::debug!(lease_ms, "the server set this agent's lease");
            return Some(Duration::from_millis(lease_ms));
        }
        Ok(other) => {
            tracing::warn!(frame = ?other, "agent ignores a frame that is not a request");
            return None;
        }
        Err(e) => match unreadable_request_id(bytes) {
            // A request this agent cannot read (say, an operation it does not know) still gets
            // an answer, so the server does not wait for one in vain.
            Some(id) => (id, Err(e)),
            None => {
                tracing::warn!(error = %e, "agent ignores an unreadable frame");
                return None;
            }
        },
    };
    let agent = Arc::clone(agent);
    let outbox = outbox.clone();
    tokio::spawn(async move {
        let response = match request {
            Ok(request) => agent.handle(request).await,
            Err(e) => AgentResponse::Error {
                error: AgentError {
                    kind: AgentErrorKind::Unsupported,
                    message: format!("cannot read the request: {e}"),
                },
            },
        };
        if outbox
            .send(AgentFrame::Response { id, response })
            .await
            .is_err()
        {
            tracing::info!(id, "response dropped: its connection is gone");
        }
    });
    None
}

fn unreadable_request_id(bytes: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if value.get("frame")?.as_str()? != "request" {
        return None;
    }
    value.get("id")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_become_the_agent_route() {
        for (server, url) in [
            (
                "http://127.0.0.1:7070",
                "ws://127.0.0.1:7070/vmi/v1/agents/connect",
            ),
            (
                "http://veem.example:7070/",
                "ws://veem.example:7070/vmi/v1/agents/connect",
            ),
            (
                "ws://10.0.0.1:80/prefix",
                "ws://10.0.0.1:80/prefix/vmi/v1/agents/connect",
            ),
            (
                "https://veem.example:7443",
                "wss://veem.example:7443/vmi/v1/agents/connect",
            ),
        ] {
            assert_eq!(connect_url(server).unwrap(), url);
        }
        for bad in ["127.0.0.1:7070", "ftp://x", "http://", "https://"] {
            assert!(
                matches!(connect_url(bad), Err(UplinkError::InvalidServer { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_server_list_is_split_on_commas_in_order() {
        assert_eq!(
            parse_servers("http://127.0.0.1:7070").unwrap(),
            ["http://127.0.0.1:7070"]
        );
        assert_eq!(
            parse_servers("http://fe2:7071, https://fe1:7443/ ,http://fe3:7073").unwrap(),
            ["http://fe2:7071", "https://fe1:7443/", "http://fe3:7073"]
        );
        for bad in [
            "",
            "http://fe1:7071,",
            ",http://fe1:7071",
            "http://fe1:7071,,http://fe2:7072",
            "http://fe1:7071,fe2:7072",
            "http://fe1:7071,ftp://fe2:7072",
            // The same server twice, written two ways.
            "http://fe1:7071,ws://FE1:7071/",
            "http://fe1:80,http://fe1",
        ] {
            assert!(
                matches!(parse_servers(bad), Err(UplinkError::InvalidServer { .. })),
                "{bad:?}"
            );
        }
    }

    fn listed(servers: &str) -> Vec<Endpoint> {
        endpoints(servers, &Credentials::default()).expect("valid servers")
    }

    #[test]
    fn a_redirect_is_followed_only_to_the_agents_route_of_a_listed_server() {
        let list = listed("http://127.0.0.1:7072,http://127.0.0.1:7071,https://fe3.example");
        let route = "/vmi/v1/agents/connect";
        for (location, target) in [
            // The leader's advertise_url, as a follower sends it.
            (format!("http://127.0.0.1:7071{route}"), Some(1)),
            (format!("ws://127.0.0.1:7071{route}/"), Some(1)),
            (format!("https://FE3.example:443{route}"), Some(2)),
            (format!("wss://fe3.example{route}"), Some(2)),
            // A path alone is on the server that answered.
            (route.to_owned(), Some(0)),
            // Another port, host or scheme is another server: never sent the token.
            (format!("http://127.0.0.1:7079{route}"), None),
            (format!("http://localhost:7071{route}"), None),
            (format!("https://127.0.0.1:7071{route}"), None),
            (format!("http://fe3.example{route}"), None),
            (format!("http://evil.example{route}"), None),
            // A listed server, but not its agents' route.
            ("http://127.0.0.1:7071/elsewhere".to_owned(), None),
            (format!("http://127.0.0.1:7071{route}?to=evil"), None),
            (String::new(), None),
            ("not a url".to_owned(), None),
        ] {
            assert_eq!(redirect_target(&location, 0, &list), target, "{location:?}");
        }
        let prefixed = listed("http://10.0.0.1:80/prefix,http://10.0.0.2/prefix");
        assert_eq!(
            redirect_target("http://10.0.0.2/prefix/vmi/v1/agents/connect", 0, &prefixed),
            Some(1)
        );
        assert_eq!(
            redirect_target("http://10.0.0.2/vmi/v1/agents/connect", 0, &prefixed),
            None
        );
    }

    #[test]
    fn a_silence_past_the_lease_makes_the_connection_stale() {
        let lease = Some(Duration::from_millis(5_000));
        assert_eq!(lease_expired(None, Duration::from_secs(3600)), None);
        assert_eq!(lease_expired(lease, Duration::from_millis(5_000)), None);
        let stale = lease_expired(lease, Duration::from_millis(12_000)).expect("stale");
        assert!(
            stale.contains("12000 ms") && stale.contains("5000 ms"),
            "{stale}"
        );
    }

    #[test]
    fn unreadable_requests_keep_their_id() {
        let unknown_op = br#"{"frame":"request","id":12,"request":{"op":"reboot"}}"#;
        assert!(serde_json::from_slice::<AgentFrame>(unknown_op).is_err());
        assert_eq!(unreadable_request_id(unknown_op), Some(12));
        assert_eq!(
            unreadable_request_id(br#"{"frame":"response","id":12}"#),
            None
        );
        assert_eq!(unreadable_request_id(b"not json"), None);
    }
}
