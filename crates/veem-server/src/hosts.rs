//! The VEEM's links to its hosts (VEEHs). A host agent runs in this process or as its own
//! process (`veem agent`) connected over a WebSocket; both answer the same `AgentRequest`s, so
//! the core never knows which kind it talks to.
//!
//! Each host's liveness is what the VEEM last *heard* from it (a monotonic instant): a host silent
//! for `host_dead_after` is *lost*; see "Host loss" in ARCHITECTURE.md for what follows.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
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
    /// When the VEEM last heard anything from the host over this link.
    fn last_heard(&self) -> Instant;
    /// Ends the link for good: the host was declared lost. Waiting calls fail at once and the
    /// connection is closed, so nothing more reaches the host through it.
    fn cut(&self) {}
}

/// A remote agent's WebSocket, seen from the server: requests go out as frames, answers come
/// back matched by id.
pub struct RemoteLink {
    out: mpsc::Sender<AgentFrame>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<AgentResponse>>>,
    next_id: AtomicU64,
    heard: Mutex<Instant>,
    /// Turns `true` when the link is cut; the connection's tasks watch it.
    cut: watch::Sender<bool>,
}

impl RemoteLink {
    pub fn new(out: mpsc::Sender<AgentFrame>) -> Self {
        Self {
            out,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            heard: Mutex::new(Instant::now()),
            cut: watch::channel(false).0,
        }
    }

    /// Something (a frame, a pong) arrived from the agent.
    pub fn heard(&self) {
        *self.heard.lock().expect("poisoned") = Instant::now();
    }

    /// Resolves once the link is cut (at once if it already is).
    pub async fn cut_notified(&self) {
        let mut cut = self.cut.subscribe();
        // The sender lives in `self`, so `wait_for` can only end by seeing `true`.
        let _ = cut.wait_for(|cut| *cut).await;
    }

    /// Hands an answer that arrived on the socket to the request waiting for it.
    pub fn deliver(&self, id: u64, response: AgentResponse) {
        self.heard();
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
    fn last_heard(&self) -> Instant {
        *self.heard.lock().expect("poisoned")
    }
    fn cut(&self) {
        self.cut.send_replace(true);
        self.close();
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
    /// When the VEEM last heard from the host while it had no link (its link's own clock
    /// counts while it has one).
    heard: Instant,
    /// The host was silent for `host_dead_after`: its VEEs were moved away, and it stays down
    /// until, back, it has ended what it must no longer run.
    pub lost: Option<Lost>,
    /// Since when the host is in its current state (ms since the epoch).
    pub since_ms: u64,
    /// Connected, and its books not yet reconciled with what it runs: it takes no VEEs and
    /// the health loop leaves it to its connection.
    pub reconciling: bool,
}

/// Why and since when a host is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub since_ms: u64,
    pub reason: String,
}

impl HostEntry {
    /// The entry of a host the VEEM has not heard from since it started (its VEEs are in the
    /// books from before a restart), known only by name.
    fn unheard(name: HostId, started: Instant, now_ms: u64) -> Self {
        Self {
            hello: HostHello {
                name,
                driver: "unknown".to_owned(),
                cpus: 0,
                memory_mb: 0,
                own_storage: false,
            },
            link: None,
            disabled: false,
            error: None,
            last_seen_ms: 0,
            heard: started,
            lost: None,
            since_ms: now_ms,
            reconciling: false,
        }
    }

    pub fn state(&self) -> HostState {
        if self.lost.is_some() || self.link.is_none() || self.error.is_some() || self.reconciling {
            HostState::Down
        } else if self.disabled {
            HostState::Disabled
        } else {
            HostState::Up
        }
    }

    /// Why a host is down; `None` when it is not.
    pub fn reason(&self) -> Option<String> {
        if let Some(lost) = &self.lost {
            Some(lost.reason.clone())
        } else if self.link.is_none() {
            Some("disconnected; its VEEs are kept while it may come back".to_owned())
        } else if self.reconciling {
            Some("connecting: the books are being reconciled with what it runs".to_owned())
        } else {
            self.error.clone()
        }
    }

    /// Whether placement may put new VEEs here.
    pub fn accepts_vees(&self) -> bool {
        self.state() == HostState::Up
    }

    /// When the VEEM last heard from the host.
    pub fn last_heard(&self) -> Instant {
        self.link.as_ref().map_or(self.heard, |l| l.last_heard())
    }

    /// Applies `change`, and restarts `since_ms` when the state changed.
    fn change(&mut self, now_ms: u64, change: impl FnOnce(&mut Self)) {
        let before = self.state();
        change(self);
        if self.state() != before {
            self.since_ms = now_ms;
        }
    }
}

/// All hosts, by id.
pub struct Hosts {
    entries: RwLock<BTreeMap<HostId, HostEntry>>,
    timeout: Duration,
    /// A host silent this long is lost.
    dead_after: Duration,
    /// The earliest this VEEM process could have heard from any host (when it started
    /// listening for agents): the silence of a host not heard since is counted from here, so a
    /// restart of the VEEM makes no host look dead.
    started: RwLock<Instant>,
    /// One lock per host, held while the VEEs of that lost host are moved and while it is
    /// fenced when it comes back, so the two never interleave: a fence lists the host after
    /// every move it must undo was recorded.
    moves: Mutex<BTreeMap<HostId, Arc<tokio::sync::Mutex<()>>>>,
    /// The hosts an operator disabled, as the books say: a host connecting is disabled if
    /// named here (a restart or a new leader keeps the operator's word).
    disabled: RwLock<std::collections::BTreeSet<HostId>>,
}

impl Hosts {
    pub fn new(timeout: Duration, dead_after: Duration) -> Self {
        Self {
            entries: RwLock::new(BTreeMap::new()),
            timeout,
            dead_after,
            started: RwLock::new(Instant::now()),
            moves: Mutex::new(BTreeMap::new()),
            disabled: RwLock::new(std::collections::BTreeSet::new()),
        }
    }

    /// The hosts the books say are disabled, before any connects.
    pub fn disabled_in_books(&self, hosts: impl IntoIterator<Item = HostId>) {
        self.disabled.write().expect("poisoned").extend(hosts);
    }

    /// Whether the operator disabled `host` (known or not yet connected).
    pub fn is_disabled(&self, host: &HostId) -> bool {
        self.disabled.read().expect("poisoned").contains(host)
    }

    /// The lock of `host` taken by the moves off it while lost and by its fence when back.
    pub fn moves(&self, host: &HostId) -> Arc<tokio::sync::Mutex<()>> {
        self.moves
            .lock()
            .expect("poisoned")
            .entry(host.clone())
            .or_default()
            .clone()
    }

    /// Agents can reach this VEEM from now on: the silence of hosts not heard from since this
    /// process started counts from here.
    pub fn listening_from(&self, now: Instant) {
        *self.started.write().expect("poisoned") = now;
    }

    fn started(&self) -> Instant {
        *self.started.read().expect("poisoned")
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Adds a host or replaces its link (an agent that reconnected). A lost host stays lost
    /// (and down) until [`Hosts::clear_lost`]. Returns the entry.
    pub fn connect(&self, hello: HostHello, link: Arc<dyn HostLink>, now_ms: u64) -> HostEntry {
        let mut entries = self.entries.write().expect("poisoned");
        let disabled = self.is_disabled(&hello.name);
        let entry = entries.entry(hello.name.clone()).or_insert_with(|| {
            let mut entry = HostEntry::unheard(hello.name.clone(), self.started(), now_ms);
            entry.disabled = disabled;
            entry
        });
        entry.change(now_ms, |e| {
            e.hello = hello;
            e.link = Some(link);
            e.error = None;
            e.last_seen_ms = now_ms;
            e.reconciling = true;
        });
        entry.clone()
    }

    /// The connection `link` of `host` has reconciled it: it may be up.
    pub fn reconciled(&self, host: &HostId, link: &Arc<dyn HostLink>, now_ms: u64) {
        let mut entries = self.entries.write().expect("poisoned");
        if let Some(entry) = entries.get_mut(host) {
            if entry.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
                entry.change(now_ms, |e| e.reconciling = false);
            }
        }
    }

    /// Forgets a host's link if it is still `link` (a newer connection may have replaced it).
    pub fn disconnect(&self, host: &HostId, link: &Arc<dyn HostLink>, now_ms: u64) -> bool {
        let mut entries = self.entries.write().expect("poisoned");
        match entries.get_mut(host) {
            Some(entry) if entry.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) => {
                entry.change(now_ms, |e| {
                    e.heard = link.last_heard();
                    e.link = None;
                });
                true
            }
            _ => false,
        }
    }

    /// The hosts that are not lost yet but have been silent for `dead_after` at `now`: known
    /// hosts by what the VEEM last heard from them, and `in_books` (hosts the VEEs' records
    /// name) never heard from since this process started.
    pub fn newly_silent(
        &self,
        in_books: impl IntoIterator<Item = HostId>,
        now: Instant,
    ) -> Vec<(HostId, Duration)> {
        let started = self.started();
        let entries = self.entries.read().expect("poisoned");
        let mut silent: BTreeMap<HostId, Duration> = BTreeMap::new();
        for host in in_books {
            if !entries.contains_key(&host) {
                silent.insert(host, now.saturating_duration_since(started));
            }
        }
        for (host, entry) in entries.iter().filter(|(_, e)| e.lost.is_none()) {
            silent.insert(
                host.clone(),
                now.saturating_duration_since(entry.last_heard()),
            );
        }
        silent
            .into_iter()
            .filter(|(_, silence)| *silence >= self.dead_after)
            .collect()
    }

    /// Marks a host lost (adding it if the VEEM never heard from it) and takes its link away,
    /// returning it so the caller cuts it.
    pub fn declare_lost(
        &self,
        host: &HostId,
        reason: String,
        now_ms: u64,
    ) -> Option<Arc<dyn HostLink>> {
        let mut entries = self.entries.write().expect("poisoned");
        let entry = entries
            .entry(host.clone())
            .or_insert_with(|| HostEntry::unheard(host.clone(), self.started(), now_ms));
        let mut link = None;
        entry.change(now_ms, |e| {
            e.heard = e.last_heard();
            link = e.link.take();
            e.lost = Some(Lost {
                since_ms: now_ms,
                reason,
            });
        });
        link
    }

    /// Lost hosts with no link: nothing of theirs is being reconciled, so their VEEs can be
    /// moved.
    pub fn lost_unlinked(&self) -> Vec<(HostId, Lost)> {
        self.entries
            .read()
            .expect("poisoned")
            .iter()
            .filter(|(_, e)| e.link.is_none())
            .filter_map(|(h, e)| Some((h.clone(), e.lost.clone()?)))
            .collect()
    }

    /// A lost host came back over `link` and has ended what it must no longer run: it is no
    /// longer lost. Nothing changes if `link` is not its link any more.
    pub fn clear_lost(&self, host: &HostId, link: &Arc<dyn HostLink>, now_ms: u64) -> bool {
        let mut entries = self.entries.write().expect("poisoned");
        match entries.get_mut(host) {
            Some(entry) if entry.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) => {
                entry.change(now_ms, |e| e.lost = None);
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, host: &HostId) -> Option<HostEntry> {
        self.entries.read().expect("poisoned").get(host).cloned()
    }

    /// Up to `limit` hosts in id order after `after` (all of them without a limit), and
    /// whether more follow: a page costs what it holds, not what the site holds.
    pub fn page(
        &self,
        after: Option<&HostId>,
        limit: Option<usize>,
    ) -> (Vec<(HostId, HostEntry)>, bool) {
        use std::ops::Bound;
        let entries = self.entries.read().expect("poisoned");
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut hosts: Vec<(HostId, HostEntry)> = entries
            .range::<HostId, _>((start, Bound::Unbounded))
            .take(limit.map_or(usize::MAX, |l| l.saturating_add(1)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = limit.is_some_and(|l| hosts.len() > l);
        if let Some(limit) = limit {
            hosts.truncate(limit);
        }
        (hosts, more)
    }

    /// Every host's state, by id: what a metrics scrape reads.
    pub fn states(&self) -> Vec<(HostId, HostState)> {
        self.entries
            .read()
            .expect("poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.state()))
            .collect()
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
                entry.change(now_ms, |e| {
                    if error.is_none() {
                        e.last_seen_ms = now_ms;
                    }
                    e.error = error;
                });
                entry.accepts_vees()
            }
            None => false,
        }
    }

    pub fn set_disabled(&self, host: &HostId, disabled: bool, now_ms: u64) -> Option<HostEntry> {
        let mut entries = self.entries.write().expect("poisoned");
        let entry = entries.get_mut(host)?;
        entry.change(now_ms, |e| e.disabled = disabled);
        let mut books = self.disabled.write().expect("poisoned");
        if disabled {
            books.insert(host.clone());
        } else {
            books.remove(host);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose last word from the host the test sets.
    struct QuietLink(Mutex<Instant>);

    #[async_trait]
    impl HostLink for QuietLink {
        async fn call(&self, _request: AgentRequest) -> AgentResponse {
            unreachable("a quiet link answers nothing")
        }
        fn kind(&self) -> &'static str {
            "remote"
        }
        fn last_heard(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn hello(name: &str) -> HostHello {
        HostHello {
            name: HostId::new(name).unwrap(),
            driver: "sim".into(),
            cpus: 4,
            memory_mb: 4096,
            own_storage: false,
        }
    }

    fn id(name: &str) -> HostId {
        HostId::new(name).unwrap()
    }

    #[test]
    fn a_host_is_lost_only_after_dead_after_of_silence() {
        let hosts = Hosts::new(Duration::from_secs(1), Duration::from_secs(10));
        let t0 = hosts.started();
        let link = Arc::new(QuietLink(Mutex::new(t0)));
        hosts.connect(hello("h1"), link.clone(), 1);
        assert!(hosts
            .newly_silent([], t0 + Duration::from_secs(9))
            .is_empty());
        assert_eq!(
            hosts.newly_silent([], t0 + Duration::from_secs(10)),
            vec![(id("h1"), Duration::from_secs(10))]
        );
        // A word from the host starts the clock again.
        *link.0.lock().unwrap() = t0 + Duration::from_secs(8);
        assert!(hosts
            .newly_silent([], t0 + Duration::from_secs(17))
            .is_empty());
    }

    #[test]
    fn a_disconnected_host_keeps_the_time_it_was_last_heard() {
        let hosts = Hosts::new(Duration::from_secs(1), Duration::from_secs(10));
        let t0 = hosts.started();
        let heard = t0 + Duration::from_secs(3);
        let link: Arc<dyn HostLink> = Arc::new(QuietLink(Mutex::new(heard)));
        hosts.connect(hello("h1"), link.clone(), 1);
        assert!(hosts.disconnect(&id("h1"), &link, 2));
        let entry = hosts.get(&id("h1")).unwrap();
        assert_eq!(entry.state(), HostState::Down);
        assert!(entry.lost.is_none(), "disconnected is not lost yet");
        assert!(entry.reason().unwrap().contains("disconnected"));
        assert!(hosts
            .newly_silent([], t0 + Duration::from_secs(12))
            .is_empty());
        assert_eq!(
            hosts.newly_silent([], t0 + Duration::from_secs(13)).len(),
            1
        );
    }

    #[test]
    fn hosts_in_the_books_but_never_heard_count_from_the_start_of_this_process() {
        let hosts = Hosts::new(Duration::from_secs(1), Duration::from_secs(10));
        let t0 = hosts.started();
        assert!(hosts
            .newly_silent([id("h2")], t0 + Duration::from_secs(9))
            .is_empty());
        assert_eq!(
            hosts.newly_silent([id("h2")], t0 + Duration::from_secs(10)),
            vec![(id("h2"), Duration::from_secs(10))]
        );
        // Declared lost, it is known by name and down, with its reason.
        assert!(hosts
            .declare_lost(&id("h2"), "no answer".into(), 5)
            .is_none());
        let entry = hosts.get(&id("h2")).unwrap();
        assert_eq!(
            (entry.state(), entry.reason().as_deref(), entry.since_ms),
            (HostState::Down, Some("no answer"), 5)
        );
        // Lost hosts are not reported again.
        assert!(hosts
            .newly_silent([id("h2")], t0 + Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn the_clock_of_unheard_hosts_starts_when_agents_can_connect() {
        let hosts = Hosts::new(Duration::from_secs(1), Duration::from_secs(10));
        let listening = hosts.started() + Duration::from_secs(30);
        hosts.listening_from(listening);
        assert!(hosts
            .newly_silent([id("h2")], listening + Duration::from_secs(9))
            .is_empty());
        assert_eq!(
            hosts
                .newly_silent([id("h2")], listening + Duration::from_secs(10))
                .len(),
            1
        );
    }

    #[test]
    fn a_lost_host_stays_down_when_it_reconnects_until_cleared_by_its_current_link() {
        let hosts = Hosts::new(Duration::from_secs(1), Duration::from_secs(10));
        let old: Arc<dyn HostLink> = Arc::new(QuietLink(Mutex::new(hosts.started())));
        hosts.connect(hello("h1"), old.clone(), 1);
        let taken = hosts.declare_lost(&id("h1"), "no answer for 10 s".into(), 20);
        assert!(taken.is_some_and(|l| Arc::ptr_eq(&l, &old)));
        assert_eq!(hosts.lost_unlinked().len(), 1);
        let new: Arc<dyn HostLink> = Arc::new(QuietLink(Mutex::new(Instant::now())));
        let entry = hosts.connect(hello("h1"), new.clone(), 30);
        assert_eq!(entry.state(), HostState::Down);
        assert!(!entry.accepts_vees());
        assert!(hosts.lost_unlinked().is_empty(), "being reconciled");
        // The old connection's end changes nothing, nor can it clear the loss.
        assert!(!hosts.disconnect(&id("h1"), &old, 31));
        assert!(!hosts.clear_lost(&id("h1"), &old, 31));
        assert!(hosts.clear_lost(&id("h1"), &new, 32));
        // Not lost any more, but up only once its connection has reconciled it.
        let entry = hosts.get(&id("h1")).unwrap();
        assert_eq!(entry.state(), HostState::Down);
        assert!(entry.reason().is_some_and(|r| r.contains("reconciled")));
        hosts.reconciled(&id("h1"), &old, 33);
        assert_eq!(hosts.get(&id("h1")).unwrap().state(), HostState::Down);
        hosts.reconciled(&id("h1"), &new, 34);
        let entry = hosts.get(&id("h1")).unwrap();
        assert_eq!((entry.state(), entry.since_ms), (HostState::Up, 34));
        assert!(entry.accepts_vees());
    }
}
