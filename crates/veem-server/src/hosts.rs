//! The VEEM's links to its hosts (VEEHs). A host agent runs in this process or as its own
//! process (`veem agent`) connected over a WebSocket; both answer the same `AgentRequest`s, so
//! the core never knows which kind it talks to.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use veem_agent::Agent;
use veem_api::agent::{
    AgentError, AgentErrorKind, AgentFrame, AgentRequest, AgentResponse, HostHello,
};
use veem_api::HostState;
use veem_model::HostId;

#[async_trait]
pub trait HostLink: Send + Sync + 'static {
    async fn call(&self, request: AgentRequest) -> AgentResponse;
    /// `in-process` or `remote`.
    fn kind(&self) -> &'static str;
}

pub struct InProcessLink(pub Arc<Agent>);

#[async_trait]
impl HostLink for InProcessLink {
    async fn call(&self, request: AgentRequest) -> AgentResponse {
        self.0.handle(request).await
    }
    fn kind(&self) -> &'static str {
        "in-process"
    }
}

/// A remote agent's WebSocket, seen from the server: requests go out as frames, answers come
/// back matched by id.
pub struct RemoteLink {
    out: mpsc::Sender<AgentFrame>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<AgentResponse>>>,
    next_id: AtomicU64,
}

impl RemoteLink {
    pub fn new(out: mpsc::Sender<AgentFrame>) -> Self {
        Self {
            out,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Hands an answer that arrived on the socket to the request waiting for it.
    pub fn deliver(&self, id: u64, response: AgentResponse) {
        let waiter = self.waiting.lock().expect("poisoned").remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(response);
        }
    }

    /// Fails every request still waiting: the socket closed.
    pub fn close(&self) {
        self.waiting.lock().expect("poisoned").clear();
    }
}

fn unreachable(message: impl Into<String>) -> AgentResponse {
    AgentResponse::Error {
        error: AgentError {
            kind: AgentErrorKind::Unreachable,
            message: message.into(),
        },
    }
}

#[async_trait]
impl HostLink for RemoteLink {
    async fn call(&self, request: AgentRequest) -> AgentResponse {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("poisoned").insert(id, tx);
        if self
            .out
            .send(AgentFrame::Request { id, request })
            .await
            .is_err()
        {
            self.waiting.lock().expect("poisoned").remove(&id);
            return unreachable("the agent's connection is closed");
        }
        rx.await
            .unwrap_or_else(|_| unreachable("the agent disconnected before answering"))
    }
    fn kind(&self) -> &'static str {
        "remote"
    }
}

/// One host as the VEEM knows it.
#[derive(Clone)]
pub struct HostEntry {
    pub hello: HostHello,
    pub link: Option<Arc<dyn HostLink>>,
    /// Set by an operator: takes no new VEEs.
    pub disabled: bool,
    /// The last health check (or call) failed.
    pub error: Option<String>,
    pub last_seen_ms: u64,
}

impl HostEntry {
    pub fn state(&self) -> HostState {
        if self.link.is_none() || self.error.is_some() {
            HostState::Down
        } else if self.disabled {
            HostState::Disabled
        } else {
            HostState::Up
        }
    }

    /// Whether placement may put new VEEs here.
    pub fn accepts_vees(&self) -> bool {
        self.state() == HostState::Up
    }
}

/// All hosts, by id.
pub struct Hosts {
    entries: RwLock<BTreeMap<HostId, HostEntry>>,
    timeout: Duration,
}

impl Hosts {
    pub fn new(timeout: Duration) -> Self {
        Self {
            entries: RwLock::new(BTreeMap::new()),
            timeout,
        }
    }

    /// Adds a host or replaces its link (an agent that reconnected). Returns the entry.
    pub fn connect(&self, hello: HostHello, link: Arc<dyn HostLink>, now_ms: u64) -> HostEntry {
        let mut entries = self.entries.write().expect("poisoned");
        let disabled = entries.get(&hello.name).is_some_and(|e| e.disabled);
        let entry = HostEntry {
            hello: hello.clone(),
            link: Some(link),
            disabled,
            error: None,
            last_seen_ms: now_ms,
        };
        entries.insert(hello.name, entry.clone());
        entry
    }

    /// Forgets a host's link if it is still `link` (a newer connection may have replaced it).
    pub fn disconnect(&self, host: &HostId, link: &Arc<dyn HostLink>) -> bool {
        let mut entries = self.entries.write().expect("poisoned");
        match entries.get_mut(host) {
            Some(entry) if entry.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) => {
                entry.link = None;
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, host: &HostId) -> Option<HostEntry> {
        self.entries.read().expect("poisoned").get(host).cloned()
    }

    pub fn all(&self) -> Vec<(HostId, HostEntry)> {
        self.entries
            .read()
            .expect("poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Updates a host after a health check; returns whether it may take VEEs now.
    pub fn record_health(&self, host: &HostId, error: Option<String>, now_ms: u64) -> bool {
        let mut entries = self.entries.write().expect("poisoned");
        match entries.get_mut(host) {
            Some(entry) => {
                if error.is_none() {
                    entry.last_seen_ms = now_ms;
                }
                entry.error = error;
                entry.accepts_vees()
            }
            None => false,
        }
    }

    pub fn set_disabled(&self, host: &HostId, disabled: bool) -> Option<HostEntry> {
        let mut entries = self.entries.write().expect("poisoned");
        let entry = entries.get_mut(host)?;
        entry.disabled = disabled;
        Some(entry.clone())
    }

    /// Sends a request to a host, with the configured timeout.
    pub async fn call(&self, host: &HostId, request: AgentRequest) -> AgentResponse {
        let link = self.get(host).and_then(|e| e.link);
        let Some(link) = link else {
            return unreachable(format!("host {host} is not connected"));
        };
        let op = request.op();
        match tokio::time::timeout(self.timeout, link.call(request)).await {
            Ok(response) => response,
            Err(_) => unreachable(format!(
                "host {host} did not answer {op} within {} ms",
                self.timeout.as_millis()
            )),
        }
    }
}
