//! The uplink against a WebSocket server made in the test with axum: the server side of each
//! connection is handed to the test, which plays the VEEM frame by frame.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::{mpsc, oneshot, Barrier};
use veem_agent::uplink::{self, UplinkError};
use veem_agent::{Agent, Driver, DriverError, Incoming, MigrationStats};
use veem_api::agent::{
    AgentErrorKind, AgentFrame, AgentRequest, AgentResponse, DeploySpec, DiskCopy, InstanceState,
    InstanceStatus,
};
use veem_model::{HostId, VeeId};

use crate::common::vee;

const TOKEN: &str = "agent-secret";
const PATIENCE: Duration = Duration::from_secs(20);

/// A driver whose `status` returns only once two calls are in flight at the same time, so a
/// test that gets answers to two status requests proves they were handled concurrently.
struct PairedDriver {
    barrier: Barrier,
}

#[async_trait::async_trait]
impl Driver for PairedDriver {
    fn kind(&self) -> &'static str {
        "paired"
    }
    async fn deploy(&self, _: &DeploySpec) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("deploy"))
    }
    async fn pause(&self, _: &VeeId) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("pause"))
    }
    async fn resume(&self, _: &VeeId) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("resume"))
    }
    async fn suspend(&self, _: &VeeId, _: &Path) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("suspend"))
    }
    async fn restore(&self, _: &DeploySpec, _: &Path) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("restore"))
    }
    async fn shutdown(&self, _: &VeeId, _: Duration) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("shutdown"))
    }
    async fn destroy(&self, _: &VeeId) -> Result<(), DriverError> {
        Ok(())
    }
    async fn resize(&self, _: &VeeId, _: u32, _: u64) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("resize"))
    }
    async fn status(&self, vee: &VeeId) -> Result<InstanceStatus, DriverError> {
        self.barrier.wait().await;
        Ok(InstanceStatus {
            vee: vee.clone(),
            state: InstanceState::Running,
            cpus: 1,
            memory_mb: 256,
            cpu_time_ms: 0,
            disks: vec![],
            nics: vec![],
            agent_reports: vec![],
        })
    }
    async fn list(&self) -> Result<Vec<InstanceStatus>, DriverError> {
        Ok(vec![])
    }
    async fn export_disk(&self, _: &Path, _: &str, _: &Path) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("export_disk"))
    }
    async fn prepare_incoming(&self, _: &DeploySpec) -> Result<Incoming, DriverError> {
        Err(DriverError::Unsupported("prepare_incoming"))
    }
    async fn migrate_out(
        &self,
        _: &VeeId,
        _: &str,
        _: Option<&DiskCopy>,
    ) -> Result<MigrationStats, DriverError> {
        Err(DriverError::Unsupported("migrate_out"))
    }
    async fn complete_incoming(&self, _: &VeeId, _: bool) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("complete_incoming"))
    }
    async fn remove_lan(&self, _: &veem_api::agent::LanPlan) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("remove_lan"))
    }
    async fn purge(&self, _: &VeeId) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("purge"))
    }
    async fn traces(&self) -> Result<Vec<VeeId>, DriverError> {
        Err(DriverError::Unsupported("traces"))
    }
}

fn agent() -> Arc<Agent> {
    let driver = Arc::new(PairedDriver {
        barrier: Barrier::new(2),
    });
    Arc::new(Agent::new(HostId::new("h7").unwrap(), driver, 4, 8192))
}

/// The test's VEEM: accepts agents at the real route and hands each upgraded socket over.
struct TestServer {
    url: String,
    sockets: mpsc::Receiver<WebSocket>,
}

#[derive(Clone)]
struct ServerState {
    sockets: mpsc::Sender<WebSocket>,
    token: &'static str,
}

async fn connect(
    State(state): State<ServerState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let expected = format!("Bearer {}", state.token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    upgrade.on_upgrade(move |socket| async move {
        let _ = state.sockets.send(socket).await;
    })
}

async fn start_server(token: &'static str) -> TestServer {
    let (sockets, receiver) = mpsc::channel(8);
    let app = Router::new()
        .route("/vmi/v1/agents/connect", get(connect))
        .with_state(ServerState { sockets, token });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    TestServer {
        url: format!("http://{addr}"),
        sockets: receiver,
    }
}

impl TestServer {
    async fn next_agent(&mut self) -> WebSocket {
        tokio::time::timeout(PATIENCE, self.sockets.recv())
            .await
            .expect("an agent connects in time")
            .expect("the server keeps running")
    }
}

async fn next_frame(socket: &mut WebSocket) -> AgentFrame {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.recv())
            .await
            .expect("the agent sends a frame in time")
            .expect("the agent keeps the connection")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send(socket: &mut WebSocket, frame: &AgentFrame) {
    let json = serde_json::to_string(frame).unwrap();
    socket.send(Message::Text(json.into())).await.unwrap();
}

async fn expect_hello(socket: &mut WebSocket) {
    match next_frame(socket).await {
        AgentFrame::Hello { hello } => {
            assert_eq!(hello.name.as_str(), "h7");
            assert_eq!(hello.driver, "paired");
            assert_eq!((hello.cpus, hello.memory_mb), (4, 8192));
        }
        other => panic!("expected hello first, got {other:?}"),
    }
}

/// Runs the uplink in a task; dropping the sender (or sending) shuts it down.
fn spawn_uplink(
    url: String,
    token: &'static str,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), UplinkError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        uplink::run(&url, token, agent(), async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, task)
}

#[tokio::test]
async fn the_agent_says_hello_and_answers_requests_concurrently() {
    let mut server = start_server(TOKEN).await;
    let (stop, task) = spawn_uplink(server.url.clone(), TOKEN);
    let mut socket = server.next_agent().await;
    expect_hello(&mut socket).await;

    for (id, seq) in [(41, 1), (42, 2)] {
        let request = AgentRequest::Status { vee: vee(seq) };
        send(&mut socket, &AgentFrame::Request { id, request }).await;
    }
    let mut answered = BTreeMap::new();
    while answered.len() < 2 {
        match next_frame(&mut socket).await {
            AgentFrame::Response {
                id,
                response: AgentResponse::Status { status },
            } => {
                answered.insert(id, status.vee);
            }
            other => panic!("expected a status response, got {other:?}"),
        }
    }
    assert_eq!(answered, BTreeMap::from([(41, vee(1)), (42, vee(2))]));

    stop.send(()).unwrap();
    let result = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn driver_errors_and_unknown_requests_are_answered_with_their_id() {
    let mut server = start_server(TOKEN).await;
    let (_stop, _task) = spawn_uplink(server.url.clone(), TOKEN);
    let mut socket = server.next_agent().await;
    expect_hello(&mut socket).await;

    let request = AgentRequest::Pause { vee: vee(1) };
    send(&mut socket, &AgentFrame::Request { id: 7, request }).await;
    match next_frame(&mut socket).await {
        AgentFrame::Response {
            id: 7,
            response: AgentResponse::Error { error },
        } => assert_eq!(error.kind, AgentErrorKind::Unsupported),
        other => panic!("expected an error for request 7, got {other:?}"),
    }

    let from_the_future =
        r#"{"frame":"request","id":8,"request":{"op":"reboot","vee":"vee-00000001"}}"#;
    socket
        .send(Message::Text(from_the_future.into()))
        .await
        .unwrap();
    match next_frame(&mut socket).await {
        AgentFrame::Response {
            id: 8,
            response: AgentResponse::Error { error },
        } => assert_eq!(error.kind, AgentErrorKind::Unsupported),
        other => panic!("expected an error for request 8, got {other:?}"),
    }
}

#[tokio::test]
async fn the_agent_reconnects_after_the_server_drops_it() {
    let mut server = start_server(TOKEN).await;
    let (stop, task) = spawn_uplink(server.url.clone(), TOKEN);
    let mut first = server.next_agent().await;
    expect_hello(&mut first).await;
    drop(first);

    let mut second = server.next_agent().await;
    expect_hello(&mut second).await;
    let request = AgentRequest::Destroy { vee: vee(3) };
    send(&mut second, &AgentFrame::Request { id: 1, request }).await;
    assert_eq!(
        next_frame(&mut second).await,
        AgentFrame::Response {
            id: 1,
            response: AgentResponse::Done
        }
    );
    assert!(!task.is_finished());

    stop.send(()).unwrap();
    let result = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
    // A clean shutdown closes the connection.
    let closed = tokio::time::timeout(PATIENCE, second.recv()).await.unwrap();
    assert!(
        matches!(closed, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{closed:?}"
    );
}

#[tokio::test]
async fn frames_after_a_silence_past_the_lease_are_not_acted_on_and_the_agent_redials() {
    let mut server = start_server(TOKEN).await;
    let (_stop, _task) = spawn_uplink(server.url.clone(), TOKEN);
    let mut first = server.next_agent().await;
    expect_hello(&mut first).await;
    send(&mut first, &AgentFrame::Welcome { lease_ms: 300 }).await;
    // Within the lease: answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = AgentRequest::Destroy { vee: vee(1) };
    send(&mut first, &AgentFrame::Request { id: 1, request }).await;
    assert_eq!(
        next_frame(&mut first).await,
        AgentFrame::Response {
            id: 1,
            response: AgentResponse::Done
        }
    );
    // Silent past the lease (as when the agent was stopped, or the network cut off), then a
    // request: it may have waited through a loss of this host, so it is not carried out.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let request = AgentRequest::Destroy { vee: vee(2) };
    send(&mut first, &AgentFrame::Request { id: 2, request }).await;
    loop {
        match tokio::time::timeout(PATIENCE, first.recv()).await.unwrap() {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => {
                panic!("the agent acted on a stale frame: {}", text.as_str())
            }
            Some(Ok(_)) => continue,
        }
    }
    let mut second = server.next_agent().await;
    expect_hello(&mut second).await;
}

#[tokio::test]
async fn a_rejected_token_is_fatal() {
    let server = start_server(TOKEN).await;
    let (_stop, task) = spawn_uplink(server.url.clone(), "wrong-token");
    let result = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(UplinkError::Rejected { status: 401 })),
        "{result:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_the_retries_of_an_unreachable_server() {
    // A port that was just free: connections are refused, and the agent keeps retrying.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let (stop, task) = spawn_uplink(url, TOKEN);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "a refused connection is retried");
    stop.send(()).unwrap();
    let result = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn an_unusable_address_is_fatal() {
    let (_stop, task) = spawn_uplink("ftp://veem.example".into(), TOKEN);
    let result = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(UplinkError::InvalidServer { .. })),
        "{result:?}"
    );
}
