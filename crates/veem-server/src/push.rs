//! Delivery of accounting records and monitoring events to the HTTP callbacks that clients
//! registered: `POST <callback>` with a JSON array body, in order, batched, retried with backoff
//! until the listener answers 2xx (at-least-once).
//!
//! It must never block the VEEM: [`Pusher::push`] only appends to a bounded in-memory queue per
//! callback, and one worker task per callback does the HTTP, so a slow or dead listener delays
//! nobody but itself. It never persists anything and never looks inside the items it carries:
//! what is queued is lost on restart, unless the owner keeps it and is told through
//! [`Receipts`] which items were acknowledged or dropped (the accounting outbox does).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often, at most, a callback that loses items to its queue bound is logged.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// How much of a listener's answer is read so that its connection can be reused; the rest is
/// dropped with the connection.
const MAX_ANSWER_READ: usize = 64 * 1024;

/// Tuning of a [`Pusher`]; the defaults suit a VEEM in production.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Most items sent in one POST.
    pub max_batch: usize,
    /// Most items waiting per callback; beyond it the oldest are dropped.
    pub max_queue: usize,
    /// Deadline of one POST, from connecting to reading the answer.
    pub timeout: Duration,
    /// First delay before retrying a failed POST; it doubles on each further failure.
    pub backoff_min: Duration,
    /// Longest delay between retries.
    pub backoff_max: Duration,
    /// A callback's worker whose queue stayed empty this long ends (its stats go with it).
    pub idle_ttl: Duration,
    /// How `https://` callbacks are verified (the system's roots plus `[tls] ca_file`);
    /// `None`: the system's roots alone.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_batch: 1000,
            max_queue: 100_000,
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            idle_ttl: Duration::from_secs(600),
            tls: None,
        }
    }
}

/// What happened so far to the items pushed to one callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Items waiting, including the batch being sent.
    pub queued: usize,
    /// Items a listener acknowledged with a 2xx.
    pub delivered: u64,
    /// Items lost to the queue bound (or that could not be serialized, or were forgotten).
    pub dropped: u64,
    /// POSTs that failed: non-2xx, connection error or timeout.
    pub failures: u64,
    /// The most recent failure, kept after later successes.
    pub last_error: Option<String>,
}

/// What a [`Pusher`] holds and lost, over all its callbacks: what a metrics scrape reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushTotals {
    /// Items waiting now, including the batches being sent.
    pub queued: u64,
    /// Items dropped since the pusher was made (queue bound, unserializable, forgotten),
    /// counted also for callbacks whose worker has gone idle since.
    pub dropped: u64,
}

/// Checks that `url` can be a callback: an absolute `http` or `https` URL with a host.
pub fn check_callback(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid callback url: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "callback scheme must be http or https, not {}",
            parsed.scheme()
        ));
    }
    // The URL standard reads `http:///x` and `http:host` as `http://x/` and `http://host/`;
    // a callback must spell out its authority rather than have one guessed for it.
    let written_authority = url
        .split_once(':')
        .and_then(|(_, rest)| rest.strip_prefix("//"))
        .is_some_and(|authority| !authority.is_empty() && !authority.starts_with('/'));
    match parsed.host_str() {
        Some(host) if !host.is_empty() && written_authority => Ok(()),
        _ => Err("callback url has no host".to_owned()),
    }
}

/// What a [`Pusher`] tells its owner of the items it took, for an owner that keeps them
/// durably until they are settled. Each item is settled once: delivered or dropped.
pub trait Receipts<T>: Send + Sync + 'static {
    /// A listener acknowledged `items` with a 2xx. The next POST to the callback goes out at
    /// once, the one after it waits for the returned future: one record is made while the next
    /// POST is under way, and after a crash only the items of the last two POSTs (the one in
    /// flight, the one acknowledged just before) can reach the listener twice.
    fn delivered(&self, callback: &str, items: Vec<Arc<T>>) -> BoxFuture<'static, ()>;

    /// `items` left the queue undelivered: the queue bound dropped them, they could not be
    /// serialized, or [`Pusher::forget`] discarded them. They are counted in
    /// [`PushStats::dropped`]. Called from [`Pusher::push`], which never waits: it must return
    /// at once.
    fn dropped(&self, callback: &str, items: Vec<Arc<T>>);
}

/// Sends items to HTTP callbacks without ever making the caller wait. Clones share the queues.
pub struct Pusher<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Pusher<T> {
    fn clone(&self) -> Self {
        Pusher {
            inner: self.inner.clone(),
        }
    }
}

type Registry<T> = Arc<Mutex<HashMap<String, Arc<Callback<T>>>>>;

struct Inner<T> {
    config: PushConfig,
    client: reqwest::Client,
    callbacks: Registry<T>,
    receipts: Option<Arc<dyn Receipts<T>>>,
    /// Cancelled when the last `Pusher` goes, so that its workers do not outlive it.
    shutdown: CancellationToken,
    /// Every item dropped so far, by any callback ([`PushTotals::dropped`]).
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One callback: its queue and the means to wake or stop its worker.
struct Callback<T> {
    queue: Mutex<Queue<T>>,
    wake: Notify,
    stop: CancellationToken,
}

impl<T: Serialize + Send + Sync + 'static> Pusher<T> {
    pub fn new(config: PushConfig) -> Self {
        let tls = match &config.tls {
            Some(tls) => rustls::ClientConfig::clone(tls),
            None => veem_tls::client_config(None, None)
                .expect("a client configuration without a CA file or certificate cannot fail"),
        };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .no_proxy()
            .http1_only()
            // A redirected POST turns into a GET; a listener that moved is a failure to see.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect(
                "a client without proxies or custom resolver, whose TLS configuration is a \
                 rustls one, has nothing that can fail to build",
            );
        Pusher {
            inner: Arc::new(Inner {
                config,
                client,
                callbacks: Arc::new(Mutex::new(HashMap::new())),
                receipts: None,
                shutdown: CancellationToken::new(),
                dropped: Arc::default(),
            }),
        }
    }

    /// A pusher that reports every item's fate to `receipts`.
    pub fn with_receipts(config: PushConfig, receipts: Arc<dyn Receipts<T>>) -> Self {
        let mut pusher = Self::new(config);
        Arc::get_mut(&mut pusher.inner)
            .expect("a pusher just made is not shared yet")
            .receipts = Some(receipts);
        pusher
    }

    /// Queues `items` for `callback` and returns at once; they are sent in order, in one POST
    /// when they fit in `max_batch`. Call it from within the tokio runtime that should run the
    /// callback's worker (outside one, items wait until a later call starts the worker).
    pub fn push(&self, callback: &str, items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        let config = &self.inner.config;
        let mut callbacks = lock(&self.inner.callbacks);
        let entry = callbacks
            .entry(callback.to_owned())
            .or_insert_with(|| {
                Arc::new(Callback {
                    queue: Mutex::new(Queue::new()),
                    wake: Notify::new(),
                    stop: self.inner.shutdown.child_token(),
                })
            })
            .clone();
        let mut queue = lock(&entry.queue);
        let dropped = queue.append(items, config.max_queue.max(1));
        let drop_warning = if dropped.is_empty() {
            None
        } else {
            queue.note_drops(dropped.len(), Instant::now())
        };
        if !queue.has_worker {
            queue.has_worker = self.spawn_worker(callback, &entry);
        }
        drop(queue);
        // Held until the items are in: a worker retiring for idleness checks under this lock
        // that its queue is still empty.
        drop(callbacks);
        entry.wake.notify_one();
        self.report_dropped(callback, dropped);
        if let Some(unreported) = drop_warning {
            tracing::warn!(
                callback,
                dropped = unreported,
                max_queue = config.max_queue,
                "push queue full: the oldest items were dropped"
            );
        }
    }

    /// Discards what is queued for `callback` and stops its worker (after the POST in flight, if
    /// any). For when nothing is registered with this callback any more; a later `push` starts
    /// afresh. Returns how many items were discarded.
    pub fn forget(&self, callback: &str) -> usize {
        let Some(entry) = lock(&self.inner.callbacks).remove(callback) else {
            return 0;
        };
        entry.stop.cancel();
        let discarded = {
            let mut queue = lock(&entry.queue);
            let count = queue.items.len();
            queue.drop_front(count)
        };
        let count = discarded.len();
        self.report_dropped(callback, discarded);
        count
    }

    fn report_dropped(&self, callback: &str, items: Vec<Arc<T>>) {
        count_dropped(&self.inner.dropped, items.len());
        if let (Some(receipts), false) = (&self.inner.receipts, items.is_empty()) {
            receipts.dropped(callback, items);
        }
    }

    /// What waits in every callback's queue, and every item dropped so far.
    pub fn totals(&self) -> PushTotals {
        let callbacks: Vec<Arc<Callback<T>>> =
            lock(&self.inner.callbacks).values().cloned().collect();
        let queued = callbacks
            .iter()
            .map(|callback| lock(&callback.queue).items.len() as u64)
            .sum();
        PushTotals {
            queued,
            dropped: self
                .inner
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The counters of `callback`, or `None` if nothing was pushed to it since its worker last
    /// went idle.
    pub fn stats(&self, callback: &str) -> Option<PushStats> {
        let entry = lock(&self.inner.callbacks).get(callback)?.clone();
        let queue = lock(&entry.queue);
        Some(PushStats {
            queued: queue.items.len(),
            delivered: queue.delivered,
            dropped: queue.dropped,
            failures: queue.failures,
            last_error: queue.last_error.clone(),
        })
    }

    fn spawn_worker(&self, url: &str, callback: &Arc<Callback<T>>) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                callback = url,
                "push outside a tokio runtime: items wait for a push from within one"
            );
            return false;
        };
        let worker = Worker {
            url: url.to_owned(),
            callback: callback.clone(),
            callbacks: self.inner.callbacks.clone(),
            client: self.inner.client.clone(),
            config: self.inner.config.clone(),
            receipts: self.inner.receipts.clone(),
            dropped: self.inner.dropped.clone(),
        };
        runtime.spawn(worker.run());
        true
    }
}

struct Worker<T> {
    url: String,
    callback: Arc<Callback<T>>,
    callbacks: Registry<T>,
    client: reqwest::Client,
    config: PushConfig,
    receipts: Option<Arc<dyn Receipts<T>>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl<T: Serialize + Send + Sync + 'static> Worker<T> {
    async fn run(self) {
        let stop = self.callback.stop.clone();
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        // The record of the last acknowledged POST, still being made.
        let mut recording: Option<BoxFuture<'static, ()>> = None;
        while let Some(batch) = self.next_batch().await {
            let mut encoded = encode(&batch.items);
            if let Some(error) = &encoded.first_error {
                tracing::error!(
                    callback = self.url,
                    unserializable = encoded.unserializable.len(),
                    %error,
                    "items that cannot be serialized are dropped"
                );
            }
            if encoded.sent == 0 {
                let settled = lock(&self.callback.queue).delivered(&batch, &encoded);
                if !self.report(settled, &mut recording, &stop).await {
                    return;
                }
                continue;
            }
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = post(&self.client, &self.url, std::mem::take(&mut encoded.json)) => outcome,
            };
            match outcome {
                Ok(()) => {
                    let settled = lock(&self.callback.queue).delivered(&batch, &encoded);
                    backoff.reset();
                    if !self.report(settled, &mut recording, &stop).await {
                        return;
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(callback = self.url, %error, ?delay, "push failed, will retry");
                    lock(&self.callback.queue).failed(error);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Tells the receipts what became of a batch; when it was delivered, waits until the
    /// delivery before it is recorded (see [`Receipts::delivered`]). `false` if the worker was
    /// stopped meanwhile.
    async fn report(
        &self,
        settled: Settled<T>,
        recording: &mut Option<BoxFuture<'static, ()>>,
        stop: &CancellationToken,
    ) -> bool {
        count_dropped(&self.dropped, settled.dropped.len());
        let Some(receipts) = &self.receipts else {
            return true;
        };
        if !settled.dropped.is_empty() {
            receipts.dropped(&self.url, settled.dropped);
        }
        if settled.delivered.is_empty() {
            return true;
        }
        let recorded = receipts.delivered(&self.url, settled.delivered);
        let Some(before) = recording.replace(recorded) else {
            return true;
        };
        tokio::select! {
            () = stop.cancelled() => false,
            () = before => true,
        }
    }

    /// Waits for items; `None` when the worker should end (stopped, or idle too long).
    async fn next_batch(&self) -> Option<Batch<T>> {
        let max_batch = self.config.max_batch.max(1);
        loop {
            if let Some(batch) = lock(&self.callback.queue).batch(max_batch) {
                return Some(batch);
            }
            tokio::select! {
                () = self.callback.stop.cancelled() => return None,
                () = self.callback.wake.notified() => {}
                () = tokio::time::sleep(self.config.idle_ttl) => {
                    if self.retire() {
                        return None;
                    }
                }
            }
        }
    }

    /// Removes this callback if its queue is still empty; the registry lock orders this against
    /// a concurrent `push`, which then creates a fresh callback and worker.
    fn retire(&self) -> bool {
        let mut callbacks = lock(&self.callbacks);
        if !lock(&self.callback.queue).items.is_empty() {
            return false;
        }
        if callbacks
            .get(&self.url)
            .is_some_and(|current| Arc::ptr_eq(current, &self.callback))
        {
            callbacks.remove(&self.url);
        }
        true
    }
}

fn count_dropped(total: &std::sync::atomic::AtomicU64, items: usize) {
    total.fetch_add(items as u64, std::sync::atomic::Ordering::Relaxed);
}

/// The items of a callback, with the bookkeeping that keeps each push's items together.
struct Queue<T> {
    /// Shared with the worker's batch in flight, which stays here until acknowledged.
    items: VecDeque<Arc<T>>,
    /// Sequence number of `items.front()`; sequence numbers follow the items across drops.
    head_seq: u64,
    /// Where each push after the front one begins, ascending, all above `head_seq`.
    push_starts: VecDeque<u64>,
    has_worker: bool,
    delivered: u64,
    dropped: u64,
    failures: u64,
    last_error: Option<String>,
    unreported_drops: u64,
    last_drop_warning: Option<Instant>,
}

/// What became of a batch's items once its POST ended.
struct Settled<T> {
    delivered: Vec<Arc<T>>,
    dropped: Vec<Arc<T>>,
}

/// The front of a queue, being sent.
struct Batch<T> {
    items: Vec<Arc<T>>,
    /// Sequence number just after the batch's last item.
    end_seq: u64,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue {
            items: VecDeque::new(),
            head_seq: 0,
            push_starts: VecDeque::new(),
            has_worker: false,
            delivered: 0,
            dropped: 0,
            failures: 0,
            last_error: None,
            unreported_drops: 0,
            last_drop_warning: None,
        }
    }

    fn end_seq(&self) -> u64 {
        self.head_seq + self.items.len() as u64
    }

    /// Appends one push and drops the oldest items beyond `max_queue`; answers them.
    fn append(&mut self, items: Vec<T>, max_queue: usize) -> Vec<Arc<T>> {
        if !self.items.is_empty() {
            self.push_starts.push_back(self.end_seq());
        }
        self.items.extend(items.into_iter().map(Arc::new));
        let excess = self.items.len().saturating_sub(max_queue);
        self.drop_front(excess)
    }

    /// Removes the `count` oldest items, counting them as dropped; answers them.
    fn drop_front(&mut self, count: usize) -> Vec<Arc<T>> {
        let dropped = self.remove_front(count);
        self.dropped += dropped.len() as u64;
        dropped
    }

    fn remove_front(&mut self, count: usize) -> Vec<Arc<T>> {
        let count = count.min(self.items.len());
        let removed = self.items.drain(..count).collect();
        self.head_seq += count as u64;
        while self
            .push_starts
            .front()
            .is_some_and(|&start| start <= self.head_seq)
        {
            self.push_starts.pop_front();
        }
        removed
    }

    /// Counts drops and says how many to log now, if the last warning is old enough.
    fn note_drops(&mut self, dropped: usize, now: Instant) -> Option<u64> {
        self.unreported_drops += dropped as u64;
        let due = self
            .last_drop_warning
            .is_none_or(|last| now.duration_since(last) >= DROP_WARNING_INTERVAL);
        if !due {
            return None;
        }
        self.last_drop_warning = Some(now);
        Some(std::mem::take(&mut self.unreported_drops))
    }

    /// The front of the queue, up to `max_batch` items, ending at a push boundary unless the
    /// first push alone is larger than a batch.
    fn batch(&self, max_batch: usize) -> Option<Batch<T>> {
        if self.items.is_empty() {
            return None;
        }
        let limit = self.head_seq + max_batch as u64;
        let end_seq = if self.end_seq() <= limit {
            self.end_seq()
        } else {
            self.push_starts
                .iter()
                .copied()
                .take_while(|&start| start <= limit)
                .last()
                .unwrap_or(limit)
        };
        let len = usize::try_from(end_seq - self.head_seq)
            .expect("a batch is at most max_batch items, which is a usize");
        Some(Batch {
            items: self.items.iter().take(len).cloned().collect(),
            end_seq,
        })
    }

    /// The listener acknowledged `batch`: its items leave the queue (those the bound did not
    /// already drop while it was in flight); answers those it took, the items that could not
    /// be serialized apart.
    fn delivered(&mut self, batch: &Batch<T>, encoded: &Encoded) -> Settled<T> {
        let still_queued = batch.end_seq.saturating_sub(self.head_seq);
        let taken = self.remove_front(usize::try_from(still_queued).unwrap_or(usize::MAX));
        self.delivered += encoded.sent as u64;
        self.dropped += encoded.unserializable.len() as u64;
        // The batch's items still queued are its last ones.
        let first = batch.items.len() - taken.len();
        let mut settled = Settled {
            delivered: Vec::with_capacity(taken.len()),
            dropped: Vec::new(),
        };
        for (index, item) in (first..).zip(taken) {
            if encoded.unserializable.binary_search(&index).is_ok() {
                settled.dropped.push(item);
            } else {
                settled.delivered.push(item);
            }
        }
        settled
    }

    fn failed(&mut self, error: String) {
        self.failures += 1;
        self.last_error = Some(error);
    }
}

struct Encoded {
    json: Vec<u8>,
    sent: usize,
    /// The indices of the items that could not be serialized, ascending.
    unserializable: Vec<usize>,
    first_error: Option<serde_json::Error>,
}

/// The JSON array of the items that serialize; one that does not is left out rather than
/// holding back the whole queue forever.
fn encode<T: Serialize>(items: &[Arc<T>]) -> Encoded {
    let mut encoded = Encoded {
        json: Vec::with_capacity(2 + items.len() * 64),
        sent: 0,
        unserializable: Vec::new(),
        first_error: None,
    };
    encoded.json.push(b'[');
    for (index, item) in items.iter().enumerate() {
        let mark = encoded.json.len();
        if encoded.sent > 0 {
            encoded.json.push(b',');
        }
        match serde_json::to_writer(&mut encoded.json, &**item) {
            Ok(()) => encoded.sent += 1,
            Err(error) => {
                encoded.json.truncate(mark);
                encoded.unserializable.push(index);
                encoded.first_error.get_or_insert(error);
            }
        }
    }
    encoded.json.push(b']');
    encoded
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let mut answer = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = answer.status();
    let mut read = 0;
    while read <= MAX_ANSWER_READ {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            // The status is what counts; an unreadable answer only costs the connection.
            Ok(None) | Err(_) => break,
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the listener answered {status}"))
    }
}

/// The error with its causes, which say what actually went wrong (refused, timed out, ...).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Exponential backoff; each delay is shortened by up to a fifth at random so that callbacks
/// failing together do not retry in lockstep, and never exceeds the maximum.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        let random = RandomState::new().build_hasher().finish();
        let fraction = (random % 1000) as f64 / 1000.0;
        base.mul_f64(1.0 - 0.2 * fraction)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Counters and queues stay usable after a panic elsewhere: every update under these locks
/// leaves them consistent, and delivery must go on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use bytes::Bytes;

    use super::*;

    /// A listener that records the bodies it acknowledged, one `Vec` per POST.
    #[derive(Default)]
    struct Listener {
        posts: Mutex<Vec<Vec<u32>>>,
        content_types: Mutex<Vec<String>>,
        requests: AtomicUsize,
        /// Answer 500 to this many requests first.
        fail_first: usize,
        /// Take this long before answering.
        delay: Duration,
    }

    impl Listener {
        fn posts(&self) -> Vec<Vec<u32>> {
            self.posts.lock().unwrap().clone()
        }

        fn received(&self) -> Vec<u32> {
            self.posts().concat()
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    async fn receive(
        State(listener): State<Arc<Listener>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let n = listener.requests.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(listener.delay).await;
        if n < listener.fail_first {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        let items: Vec<u32> = serde_json::from_slice(&body).unwrap();
        listener.posts.lock().unwrap().push(items);
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        listener.content_types.lock().unwrap().push(content_type);
        StatusCode::NO_CONTENT
    }

    async fn serve_on(socket: tokio::net::TcpListener, listener: Arc<Listener>) -> String {
        let url = format!("http://{}/cb", socket.local_addr().unwrap());
        let app = Router::new()
            .route("/cb", post(receive))
            .with_state(listener);
        tokio::spawn(async move { axum::serve(socket, app).await });
        url
    }

    async fn serve(listener: Arc<Listener>) -> String {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        serve_on(socket, listener).await
    }

    /// An address nothing listens on, until a test binds it again.
    fn closed_port() -> SocketAddr {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    fn fast() -> PushConfig {
        PushConfig {
            timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            ..PushConfig::default()
        }
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn delivered(pusher: &Pusher<u32>, url: &str) -> u64 {
        pusher.stats(url).map_or(0, |s| s.delivered)
    }

    #[tokio::test]
    async fn one_push_arrives_as_one_post_in_order() {
        let listener = Arc::new(Listener::default());
        let url = serve(listener.clone()).await;
        let pusher = Pusher::new(fast());
        pusher.push(&url, (0..50).collect());
        wait_until("delivery", || delivered(&pusher, &url) == 50).await;
        assert_eq!(listener.posts(), vec![(0..50).collect::<Vec<u32>>()]);
        assert_eq!(
            *listener.content_types.lock().unwrap(),
            vec!["application/json".to_owned()]
        );
        let stats = pusher.stats(&url).unwrap();
        assert_eq!(
            stats,
            PushStats {
                queued: 0,
                delivered: 50,
                dropped: 0,
                failures: 0,
                last_error: None
            }
        );
    }

    #[tokio::test]
    async fn failing_listener_gets_everything_in_order_after_retries() {
        let listener = Arc::new(Listener {
            fail_first: 3,
            ..Listener::default()
        });
        let url = serve(listener.clone()).await;
        let pusher = Pusher::new(fast());
        pusher.push(&url, (0..10).collect());
        pusher.push(&url, (10..15).collect());
        pusher.push(&url, (15..20).collect());
        wait_until("delivery", || delivered(&pusher, &url) == 20).await;
        assert_eq!(listener.received(), (0..20).collect::<Vec<u32>>());
        let stats = pusher.stats(&url).unwrap();
        assert_eq!(stats.failures, 3);
        assert_eq!(stats.queued, 0);
        assert_eq!(stats.dropped, 0);
        let error = stats.last_error.unwrap();
        assert!(error.contains("500"), "{error}");
    }

    #[tokio::test]
    async fn listener_that_comes_back_receives_the_backlog_in_one_post() {
        let address = closed_port();
        let url = format!("http://{address}/cb");
        let pusher = Pusher::new(fast());
        pusher.push(&url, (0..10).collect());
        pusher.push(&url, (10..20).collect());
        pusher.push(&url, (20..30).collect());
        wait_until("failures", || pusher.stats(&url).unwrap().failures >= 3).await;
        let stats = pusher.stats(&url).unwrap();
        assert_eq!(stats.queued, 30);
        assert_eq!(stats.delivered, 0);
        let error = stats.last_error.unwrap();
        assert!(error.to_lowercase().contains("connect"), "{error}");

        let listener = Arc::new(Listener::default());
        let socket = tokio::net::TcpListener::bind(address).await.unwrap();
        serve_on(socket, listener.clone()).await;
        wait_until("delivery", || delivered(&pusher, &url) == 30).await;
        assert_eq!(listener.posts(), vec![(0..30).collect::<Vec<u32>>()]);
        assert_eq!(pusher.stats(&url).unwrap().queued, 0);
    }

    #[tokio::test]
    async fn queue_bound_drops_the_oldest() {
        let address = closed_port();
        let url = format!("http://{address}/cb");
        let pusher = Pusher::new(PushConfig {
            max_queue: 10,
            ..fast()
        });
        pusher.push(&url, (0..5).collect());
        pusher.push(&url, (5..20).collect());
        pusher.push(&url, (20..25).collect());
        let stats = pusher.stats(&url).unwrap();
        assert_eq!((stats.queued, stats.dropped), (10, 15));
        let other = format!("http://{address}/other");
        pusher.push(&other, (0..12).collect());
        assert_eq!(
            pusher.totals(),
            PushTotals {
                queued: 20,
                dropped: 17
            },
            "summed over callbacks"
        );
        assert_eq!(pusher.forget(&other), 10);
        assert_eq!(
            pusher.totals().dropped,
            27,
            "forgotten items count as dropped"
        );

        let listener = Arc::new(Listener::default());
        let socket = tokio::net::TcpListener::bind(address).await.unwrap();
        serve_on(socket, listener.clone()).await;
        wait_until("delivery", || delivered(&pusher, &url) == 10).await;
        assert_eq!(listener.received(), (15..25).collect::<Vec<u32>>());
        assert_eq!(pusher.stats(&url).unwrap().dropped, 15);
    }

    #[tokio::test]
    async fn push_returns_at_once_while_the_listener_hangs() {
        let listener = Arc::new(Listener {
            delay: Duration::from_secs(30),
            ..Listener::default()
        });
        let url = serve(listener.clone()).await;
        let pusher = Pusher::new(PushConfig {
            timeout: Duration::from_secs(60),
            ..fast()
        });
        pusher.push(&url, vec![0]);
        wait_until("the listener to hang", || listener.requests() == 1).await;
        let started = Instant::now();
        for round in 0..1000 {
            pusher.push(&url, (round * 10..round * 10 + 10).collect());
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(500),
            "push took {elapsed:?}"
        );
        let stats = pusher.stats(&url).unwrap();
        assert_eq!((stats.queued, stats.delivered), (10_001, 0));
    }

    #[tokio::test]
    async fn callbacks_are_independent() {
        let hanging = Arc::new(Listener {
            delay: Duration::from_secs(30),
            ..Listener::default()
        });
        let hanging_url = serve(hanging.clone()).await;
        let dead_url = format!("http://{}/cb", closed_port());
        let healthy = Arc::new(Listener::default());
        let healthy_url = serve(healthy.clone()).await;
        let pusher = Pusher::new(PushConfig {
            timeout: Duration::from_secs(60),
            ..fast()
        });

        pusher.push(&hanging_url, vec![1]);
        pusher.push(&dead_url, vec![2]);
        wait_until("the hanging listener", || hanging.requests() == 1).await;
        let started = Instant::now();
        pusher.push(&healthy_url, vec![3]);
        wait_until("delivery", || delivered(&pusher, &healthy_url) == 1).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(healthy.posts(), vec![vec![3]]);
        assert_eq!(delivered(&pusher, &hanging_url), 0);
        assert_eq!(delivered(&pusher, &dead_url), 0);
    }

    #[tokio::test]
    async fn idle_worker_ends_and_a_later_push_starts_another() {
        let listener = Arc::new(Listener::default());
        let url = serve(listener.clone()).await;
        let pusher = Pusher::new(PushConfig {
            idle_ttl: Duration::from_millis(50),
            ..fast()
        });
        pusher.push(&url, vec![1, 2]);
        wait_until("delivery", || delivered(&pusher, &url) == 2).await;
        wait_until("the worker to retire", || pusher.stats(&url).is_none()).await;
        pusher.push(&url, vec![3]);
        wait_until("delivery", || delivered(&pusher, &url) == 1).await;
        assert_eq!(listener.posts(), vec![vec![1, 2], vec![3]]);
    }

    #[tokio::test]
    async fn forget_discards_the_queue_and_stops_the_worker() {
        let address = closed_port();
        let url = format!("http://{address}/cb");
        let pusher = Pusher::new(fast());
        pusher.push(&url, vec![1, 2, 3]);
        wait_until("a failure", || pusher.stats(&url).unwrap().failures >= 1).await;
        assert_eq!(pusher.forget(&url), 3);
        assert!(pusher.stats(&url).is_none());
        assert_eq!(pusher.forget(&url), 0);

        let listener = Arc::new(Listener::default());
        let socket = tokio::net::TcpListener::bind(address).await.unwrap();
        serve_on(socket, listener.clone()).await;
        // Longer than the backoff: a worker still running would deliver the forgotten items.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(listener.requests(), 0);
        pusher.push(&url, vec![4]);
        wait_until("delivery", || delivered(&pusher, &url) == 1).await;
        assert_eq!(listener.posts(), vec![vec![4]]);
    }

    /// An item whose serialization fails, like a map with non-string keys would.
    enum Item {
        Good(u32),
        Bad,
    }

    impl Item {
        /// The value sent, 0 for an item that cannot be.
        fn value(&self) -> u32 {
            match self {
                Item::Good(n) => *n,
                Item::Bad => 0,
            }
        }
    }

    impl Serialize for Item {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self {
                Item::Good(n) => serializer.serialize_u32(*n),
                Item::Bad => Err(serde::ser::Error::custom("cannot serialize this")),
            }
        }
    }

    #[tokio::test]
    async fn an_unserializable_item_is_dropped_alone() {
        let listener = Arc::new(Listener::default());
        let url = serve(listener.clone()).await;
        let pusher = Pusher::new(fast());
        pusher.push(
            &url,
            vec![Item::Bad, Item::Good(1), Item::Bad, Item::Good(2)],
        );
        wait_until("delivery", || {
            pusher.stats(&url).is_some_and(|s| s.delivered == 2)
        })
        .await;
        assert_eq!(listener.posts(), vec![vec![1, 2]]);
        let stats = pusher.stats(&url).unwrap();
        assert_eq!((stats.dropped, stats.queued), (2, 0));
    }

    /// Receipts that note what was settled; while `open` is false, a delivery's record waits.
    struct Noted {
        delivered: Mutex<Vec<Vec<u32>>>,
        dropped: Mutex<Vec<u32>>,
        open: tokio::sync::watch::Sender<bool>,
    }

    impl Noted {
        fn new(open: bool) -> Arc<Self> {
            Arc::new(Noted {
                delivered: Mutex::default(),
                dropped: Mutex::default(),
                open: tokio::sync::watch::Sender::new(open),
            })
        }

        fn seen_delivered(&self) -> Vec<Vec<u32>> {
            self.delivered.lock().unwrap().clone()
        }

        fn seen_dropped(&self) -> Vec<u32> {
            self.dropped.lock().unwrap().clone()
        }
    }

    impl Receipts<u32> for Noted {
        fn delivered(&self, _: &str, items: Vec<Arc<u32>>) -> BoxFuture<'static, ()> {
            self.delivered
                .lock()
                .unwrap()
                .push(items.iter().map(|i| **i).collect());
            let mut open = self.open.subscribe();
            Box::pin(async move {
                let _ = open.wait_for(|open| *open).await;
            })
        }

        fn dropped(&self, _: &str, items: Vec<Arc<u32>>) {
            self.dropped
                .lock()
                .unwrap()
                .extend(items.iter().map(|i| **i));
        }
    }

    #[tokio::test]
    async fn the_post_after_next_waits_until_a_delivery_is_recorded() {
        let listener = Arc::new(Listener::default());
        let url = serve(listener.clone()).await;
        let noted = Noted::new(false);
        let pusher = Pusher::with_receipts(fast(), noted.clone());
        pusher.push(&url, vec![0, 1, 2]);
        wait_until("the first receipt", || noted.seen_delivered().len() == 1).await;
        // The next POST goes out while the first is being recorded...
        pusher.push(&url, vec![3, 4]);
        wait_until("the second receipt", || noted.seen_delivered().len() == 2).await;
        // ...the one after waits for that record.
        pusher.push(&url, vec![5]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(listener.posts(), vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(pusher.stats(&url).unwrap().queued, 1);

        noted.open.send_replace(true);
        wait_until("the third receipt", || noted.seen_delivered().len() == 3).await;
        assert_eq!(listener.posts(), vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
        assert_eq!(
            noted.seen_delivered(),
            vec![vec![0, 1, 2], vec![3, 4], vec![5]]
        );
        assert_eq!(noted.seen_dropped(), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn failed_posts_are_no_receipt_and_retries_are_reported_once() {
        let listener = Arc::new(Listener {
            fail_first: 2,
            ..Listener::default()
        });
        let url = serve(listener.clone()).await;
        let noted = Noted::new(true);
        let pusher = Pusher::with_receipts(fast(), noted.clone());
        pusher.push(&url, (0..5).collect());
        pusher.push(&url, (5..8).collect());
        wait_until("delivery", || delivered(&pusher, &url) == 8).await;
        wait_until("the receipt", || noted.seen_delivered().concat().len() == 8).await;
        assert_eq!(
            noted.seen_delivered().concat(),
            (0..8).collect::<Vec<u32>>()
        );
        assert_eq!(pusher.stats(&url).unwrap().failures, 2);
    }

    #[tokio::test]
    async fn drops_at_the_bound_and_forgotten_items_are_reported_as_dropped() {
        let url = format!("http://{}/cb", closed_port());
        let noted = Noted::new(true);
        let pusher = Pusher::with_receipts(
            PushConfig {
                max_queue: 10,
                ..fast()
            },
            noted.clone(),
        );
        pusher.push(&url, (0..5).collect());
        pusher.push(&url, (5..20).collect());
        assert_eq!(noted.seen_dropped(), (0..10).collect::<Vec<u32>>());
        pusher.push(&url, (20..25).collect());
        assert_eq!(noted.seen_dropped(), (0..15).collect::<Vec<u32>>());
        assert_eq!(pusher.stats(&url).unwrap().dropped, 15);
        assert_eq!(pusher.forget(&url), 10);
        assert_eq!(noted.seen_dropped(), (0..25).collect::<Vec<u32>>());
        assert!(noted.seen_delivered().is_empty());
    }

    #[tokio::test]
    async fn an_unserializable_item_is_reported_dropped_and_the_rest_delivered() {
        struct Either(Noted);
        impl Receipts<Item> for Either {
            fn delivered(&self, url: &str, items: Vec<Arc<Item>>) -> BoxFuture<'static, ()> {
                self.0
                    .delivered(url, items.iter().map(|i| Arc::new(i.value())).collect())
            }
            fn dropped(&self, url: &str, items: Vec<Arc<Item>>) {
                self.0
                    .dropped(url, items.iter().map(|i| Arc::new(i.value())).collect());
            }
        }
        let listener = Arc::new(Listener::default());
        let url = serve(listener.clone()).await;
        let noted = Arc::new(Either(Arc::into_inner(Noted::new(true)).unwrap()));
        let pusher = Pusher::with_receipts(fast(), noted.clone());
        pusher.push(
            &url,
            vec![Item::Good(1), Item::Bad, Item::Good(2), Item::Bad],
        );
        wait_until("the receipt", || !noted.0.seen_delivered().is_empty()).await;
        assert_eq!(noted.0.seen_delivered(), vec![vec![1, 2]]);
        assert_eq!(noted.0.seen_dropped(), vec![0, 0]);
    }

    #[test]
    fn batches_end_at_push_boundaries_when_they_can() {
        let mut queue = Queue::new();
        queue.append(vec![0, 1, 2], 100);
        queue.append(vec![3, 4, 5], 100);
        queue.append(vec![6; 12], 100);
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let batch = queue.batch(5)?;
            let sent = batch.items.len();
            let encoded = encode(&batch.items);
            queue.delivered(&batch, &encoded);
            Some(sent)
        })
        .collect();
        // Two whole pushes do not fit in 5; a push larger than a batch is split.
        assert_eq!(sizes, vec![3, 3, 5, 5, 2]);
        assert_eq!(queue.delivered, 18);

        let mut queue = Queue::new();
        for push in [vec![0, 1], vec![2, 3], vec![4]] {
            queue.append(push, 100);
        }
        let batch = queue.batch(4).unwrap();
        let values: Vec<u32> = batch.items.iter().map(|i| **i).collect();
        assert_eq!(values, vec![0, 1, 2, 3]);
    }

    #[test]
    fn dropping_past_a_boundary_keeps_the_later_pushes_together() {
        let mut queue = Queue::new();
        queue.append(vec![0, 1, 2], 4);
        assert_eq!(queue.append(vec![3, 4, 5], 4).len(), 2);
        let values: Vec<u32> = queue.items.iter().map(|i| **i).collect();
        assert_eq!(values, vec![2, 3, 4, 5]);
        // What is left of the first push, then the second push whole.
        assert_eq!(queue.batch(3).unwrap().items.len(), 1);
        assert_eq!(queue.batch(4).unwrap().items.len(), 4);
    }

    #[test]
    fn drop_warnings_are_at_most_once_a_minute() {
        let mut queue = Queue::<u32>::new();
        let start = Instant::now();
        assert_eq!(queue.note_drops(5, start), Some(5));
        assert_eq!(queue.note_drops(2, start + Duration::from_secs(30)), None);
        assert_eq!(queue.note_drops(1, start + Duration::from_secs(59)), None);
        assert_eq!(
            queue.note_drops(4, start + Duration::from_secs(60)),
            Some(7)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(min, max);
        let expected = [100, 200, 400, 800, 1000, 1000];
        for base in expected {
            let delay = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                delay <= base && delay >= base.mul_f64(0.8),
                "{delay:?} for {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn callbacks_must_be_absolute_http_urls_with_a_host() {
        for good in [
            "http://127.0.0.1:8080/cb",
            "https://sm.example.org/accounting?site=a",
            "http://[::1]/x",
            "HTTP://Example.org",
        ] {
            assert_eq!(check_callback(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/relative/path",
            "example.org/cb",
            "file:///etc/passwd",
            "ftp://example.org/",
            "http://",
            "http:///path",
            "http:example.org/cb",
            "http:\\\\example.org/cb",
            "unix:/run/socket",
            "data:text/plain,hi",
        ] {
            assert!(check_callback(bad).is_err(), "{bad}");
        }
    }
}
