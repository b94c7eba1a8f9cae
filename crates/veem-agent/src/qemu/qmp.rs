//! A small typed client of the QEMU Machine Protocol over a Unix socket: the only code in veem
//! that speaks QMP.
//!
//! One connection carries any number of concurrent commands: each gets an `id` that QEMU echoes
//! in its answer, and a reader task hands answers to their callers and events to a broadcast
//! channel. QEMU serves one client per QMP socket at a time, so a process has exactly one
//! [`QmpClient`], shared by whoever needs it; a second connection waits until the first closes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// Events kept for a subscriber that lags; older ones are dropped for it.
const EVENT_BUFFER: usize = 256;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the qmp socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qmp i/o failed")]
    Io(#[from] io::Error),
    #[error("qmp protocol violated: {0}")]
    Protocol(String),
    /// QEMU refused the command; `desc` is its own explanation.
    #[error("qmp command {command} failed: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("the qmp connection closed")]
    Disconnected,
    #[error("qmp {what} got no answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

/// An asynchronous event from QEMU (`STOP`, `RESUME`, `SHUTDOWN`, `DEVICE_DELETED`...).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QmpEvent {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

/// What QEMU says of itself when a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// A QMP command with typed arguments (its serialized form; a unit struct has none) and a
/// typed answer.
pub trait Command: Serialize {
    const NAME: &'static str;
    type Returns: DeserializeOwned;
}

type Answer = Result<Value, QmpError>;

#[derive(Default)]
struct Waiters {
    by_id: HashMap<u64, oneshot::Sender<Answer>>,
    closed: bool,
}

/// One QMP connection. Dropping it closes the connection.
pub struct QmpClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Arc<Mutex<Waiters>>,
    events: broadcast::Sender<QmpEvent>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    version: QemuVersion,
    timeout: Duration,
}

impl QmpClient {
    /// Connects, reads QEMU's greeting and leaves capabilities negotiation, so commands can
    /// be sent. `timeout` bounds the greeting and every later command.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read_half, write_half) = stream.into_split();
        let mut lines = BufReader::new(read_half);
        let greeting = within(timeout, "greeting", read_message(&mut lines)).await??;
        let version = parse_greeting(&greeting)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let reader = tokio::spawn(read_loop(lines, Arc::clone(&waiters), events.clone()));
        let client = Self {
            writer: tokio::sync::Mutex::new(write_half),
            waiters,
            events,
            next_id: AtomicU64::new(1),
            reader,
            version,
            timeout,
        };
        client.execute(&QmpCapabilities).await?;
        Ok(client)
    }

    pub fn version(&self) -> &QemuVersion {
        &self.version
    }

    /// Events from now on. Subscribe before the command whose event you wait for.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Whether the connection has ended (QEMU exited or closed it).
    pub fn is_closed(&self) -> bool {
        self.lock_waiters().closed
    }

    /// Runs one typed command.
    pub async fn execute<C: Command>(&self, command: &C) -> Result<C::Returns, QmpError> {
        let arguments = serde_json::to_value(command).map_err(|e| {
            QmpError::Protocol(format!("cannot encode the arguments of {}: {e}", C::NAME))
        })?;
        let answer = self.execute_value(C::NAME, arguments).await?;
        serde_json::from_value(answer)
            .map_err(|e| QmpError::Protocol(format!("unexpected answer to {}: {e}", C::NAME)))
    }

    /// Runs any command with JSON arguments (`Null` or `{}` for none) and answers its raw
    /// `return` value: the way to reach a command this module has no type for.
    pub async fn execute_value(&self, command: &str, arguments: Value) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = serde_json::json!({ "execute": command, "id": id });
        let has_arguments = match &arguments {
            Value::Null => false,
            Value::Object(map) => !map.is_empty(),
            _ => true,
        };
        if has_arguments {
            message["arguments"] = arguments;
        }
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiters = self.lock_waiters();
            if waiters.closed {
                return Err(QmpError::Disconnected);
            }
            waiters.by_id.insert(id, sender);
        }
        let mut line = message.to_string();
        line.push('\n');
        let sent = {
            let mut writer = self.writer.lock().await;
            writer.write_all(line.as_bytes()).await
        };
        if let Err(e) = sent {
            self.lock_waiters().by_id.remove(&id);
            return Err(QmpError::Io(e));
        }
        let answer = tokio::time::timeout(self.timeout, receiver).await;
        match answer {
            Ok(Ok(result)) => result.map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: command.to_owned(),
                    class,
                    desc,
                },
                other => other,
            }),
            // The reader ended without answering: the connection is gone.
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                self.lock_waiters().by_id.remove(&id);
                Err(QmpError::Timeout {
                    what: command.to_owned(),
                    timeout: self.timeout,
                })
            }
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        // The read half lives in the reader task: ending it lets the socket close.
        self.reader.abort();
    }
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, QmpError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| QmpError::Timeout {
            what: what.to_owned(),
            timeout,
        })
}

/// Reads one JSON message (QMP sends one per line).
async fn read_message(lines: &mut BufReader<OwnedReadHalf>) -> Result<Value, QmpError> {
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Err(QmpError::Disconnected);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    serde_json::from_str(&line)
        .map_err(|e| QmpError::Protocol(format!("not json: {e}: {}", line.trim_end())))
}

fn parse_greeting(greeting: &Value) -> Result<QemuVersion, QmpError> {
    let version = greeting
        .pointer("/QMP/version/qemu")
        .ok_or_else(|| QmpError::Protocol(format!("no greeting: {greeting}")))?;
    serde_json::from_value(version.clone())
        .map_err(|e| QmpError::Protocol(format!("bad greeting {greeting}: {e}")))
}

async fn read_loop(
    mut lines: BufReader<OwnedReadHalf>,
    waiters: Arc<Mutex<Waiters>>,
    events: broadcast::Sender<QmpEvent>,
) {
    loop {
        let message = match read_message(&mut lines).await {
            Ok(message) => message,
            Err(QmpError::Protocol(reason)) => {
                tracing::warn!(%reason, "ignoring a qmp message");
                continue;
            }
            Err(_) => break,
        };
        if message.get("event").is_some() {
            match serde_json::from_value::<QmpEvent>(message) {
                // Nobody listening is fine: events are only for those who wait for one.
                Ok(event) => drop(events.send(event)),
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed qmp event"),
            }
            continue;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            tracing::warn!(%message, "ignoring a qmp answer without our id");
            continue;
        };
        let answer = answer_of(&message);
        let waiter = waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .remove(&id);
        if let Some(waiter) = waiter {
            // The caller may have timed out and gone: then the answer has no taker.
            drop(waiter.send(answer));
        }
    }
    let mut waiters = waiters.lock().unwrap_or_else(PoisonError::into_inner);
    waiters.closed = true;
    for (_, waiter) in waiters.by_id.drain() {
        drop(waiter.send(Err(QmpError::Disconnected)));
    }
}

fn answer_of(message: &Value) -> Answer {
    if let Some(value) = message.get("return") {
        return Ok(value.clone());
    }
    if let Some(error) = message.get("error") {
        let text = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        return Err(QmpError::Command {
            command: String::new(),
            class: text("class"),
            desc: text("desc"),
        });
    }
    Err(QmpError::Protocol(format!(
        "neither return nor error: {message}"
    )))
}

/// The answer of commands that return nothing (`{}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Empty {}

macro_rules! command {
    ($type:ident, $name:literal, $returns:ty) => {
        impl Command for $type {
            const NAME: &'static str = $name;
            type Returns = $returns;
        }
    };
}

/// Leaves capabilities negotiation; [`QmpClient::connect`] sends it.
#[derive(Debug, Serialize)]
pub struct QmpCapabilities;
command!(QmpCapabilities, "qmp_capabilities", Empty);

#[derive(Debug, Serialize)]
pub struct QueryStatus;
command!(QueryStatus, "query-status", StatusInfo);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// QEMU's run state: `running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`...
    pub status: String,
    pub running: bool,
}

/// Stops the vCPUs.
#[derive(Debug, Serialize)]
pub struct Stop;
command!(Stop, "stop", Empty);

/// Lets the vCPUs run.
#[derive(Debug, Serialize)]
pub struct Cont;
command!(Cont, "cont", Empty);

/// Ends QEMU at once.
#[derive(Debug, Serialize)]
pub struct Quit;
command!(Quit, "quit", Empty);

/// Presses the ACPI power button.
#[derive(Debug, Serialize)]
pub struct SystemPowerdown;
command!(SystemPowerdown, "system_powerdown", Empty);

/// Starts an outgoing migration to `uri` (`tcp:host:port`, `file:/path`...).
#[derive(Debug, Serialize)]
pub struct Migrate {
    pub uri: String,
}
command!(Migrate, "migrate", Empty);

/// Starts receiving a migration in a process started with `-incoming defer`.
#[derive(Debug, Serialize)]
pub struct MigrateIncoming {
    pub uri: String,
}
command!(MigrateIncoming, "migrate-incoming", Empty);

#[derive(Debug, Serialize)]
pub struct QueryMigrate;
command!(QueryMigrate, "query-migrate", MigrationInfo);

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, `cancelled`...; absent before any migration.
    pub status: Option<String>,
    pub total_time: Option<u64>,
    pub downtime: Option<u64>,
    pub error_desc: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrateSetParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
}
command!(MigrateSetParameters, "migrate-set-parameters", Empty);

/// The block backends (every `-drive`) and the node each one's medium is.
#[derive(Debug, Serialize)]
pub struct QueryBlock;
command!(QueryBlock, "query-block", Vec<BlockInfo>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockInfo {
    /// The backend's name: the `id` of its `-drive`.
    pub device: String,
    /// Its medium; absent for an empty drive.
    pub inserted: Option<BlockInserted>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockInserted {
    /// The top node of the medium, which an export names.
    pub node_name: String,
}

/// Starts QEMU's NBD server, which serves the exports [`BlockExportAdd`] makes: the receiving
/// end of a disk copy.
#[derive(Debug, Serialize)]
pub struct NbdServerStart {
    pub addr: SocketAddressLegacy,
}
command!(NbdServerStart, "nbd-server-start", Empty);

/// `{"type": "inet", "data": {"host": .., "port": ..}}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum SocketAddressLegacy {
    Inet { host: String, port: String },
}

/// Stops the NBD server and removes its exports.
#[derive(Debug, Serialize)]
pub struct NbdServerStop;
command!(NbdServerStop, "nbd-server-stop", Empty);

/// Exports a node over the NBD server (`type: nbd`) under `name`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportAdd {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub node_name: String,
    pub name: String,
    pub writable: bool,
}
command!(BlockExportAdd, "block-export-add", Empty);

/// Mirrors a drive to an existing target (here an NBD export) as a block job `job_id`; the
/// job becomes ready (`BLOCK_JOB_READY`) once both hold the same bytes, and keeps them so
/// until it is cancelled, which then leaves the target a copy as of that moment.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriveMirror {
    pub job_id: String,
    pub device: String,
    /// The target's file name (`nbd://host:port/export`).
    pub target: String,
    /// `raw`: the NBD server serves the disk's contents, whatever its own format.
    pub format: &'static str,
    /// `existing`: the target is opened, never created.
    pub mode: &'static str,
    /// `full`: the whole disk, backing chain included.
    pub sync: &'static str,
    /// `write-blocking`: once ready, each guest write reaches the target before it completes,
    /// so the copy never falls behind a busy guest.
    pub copy_mode: &'static str,
}
command!(DriveMirror, "drive-mirror", Empty);

#[derive(Debug, Serialize)]
pub struct QueryBlockJobs;
command!(QueryBlockJobs, "query-block-jobs", Vec<BlockJobInfo>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockJobInfo {
    /// The job's id.
    pub device: String,
    pub ready: bool,
    pub len: u64,
    pub offset: u64,
}

/// Ends a block job. A ready mirror ends cleanly (`BLOCK_JOB_COMPLETED`) once its target holds
/// what the source holds; `force` ends any job at once.
#[derive(Debug, Serialize)]
pub struct BlockJobCancel {
    pub device: String,
    pub force: bool,
}
command!(BlockJobCancel, "block-job-cancel", Empty);

/// The I/O statistics of every block backend (every `-drive`), counted since QEMU started.
#[derive(Debug, Serialize)]
pub struct QueryBlockstats;
command!(QueryBlockstats, "query-blockstats", Vec<BlockStats>);

/// One block backend's statistics; QEMU also reports its nodes (`parent`, `backing`), which
/// count the same requests again lower in the stack and are left unread.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockStats {
    /// The backend's name: the `id` of its `-drive`; empty or absent for an unnamed one.
    pub device: Option<String>,
    /// The QOM path of the device the backend feeds (`/machine/peripheral/<id>/...`).
    pub qdev: Option<String>,
    pub node_name: Option<String>,
    pub stats: BlockDeviceStats,
}

/// The counters of one block backend that veem reports (QEMU has many more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BlockDeviceStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
}

/// Sets the balloon's target: the guest's memory size, in bytes.
#[derive(Debug, Serialize)]
pub struct Balloon {
    pub value: u64,
}
command!(Balloon, "balloon", Empty);

#[derive(Debug, Serialize)]
pub struct QueryBalloon;
command!(QueryBalloon, "query-balloon", BalloonInfo);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BalloonInfo {
    /// The memory the guest has, in bytes, as its balloon driver last reported.
    pub actual: u64,
}

#[derive(Debug, Serialize)]
pub struct QueryHotpluggableCpus;
command!(
    QueryHotpluggableCpus,
    "query-hotpluggable-cpus",
    Vec<HotpluggableCpu>
);

/// A vCPU slot of the machine, plugged (it has a `qom-path`) or free.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HotpluggableCpu {
    /// The device type to plug into this slot.
    #[serde(rename = "type")]
    pub driver: String,
    pub vcpus_count: u32,
    /// Where the slot is: `socket-id`, `core-id`, `thread-id`...
    pub props: BTreeMap<String, i64>,
    pub qom_path: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct QueryCpusFast;
command!(QueryCpusFast, "query-cpus-fast", Vec<CpuInfoFast>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    pub cpu_index: u32,
    pub qom_path: String,
}

/// Plugs a device; `props` are its properties besides driver and id.
#[derive(Debug, Serialize)]
pub struct DeviceAdd {
    pub driver: String,
    pub id: String,
    #[serde(flatten)]
    pub props: BTreeMap<String, Value>,
}
command!(DeviceAdd, "device_add", Empty);

/// Asks for a device to be unplugged; the guest must agree, and `DEVICE_DELETED` says it did.
#[derive(Debug, Serialize)]
pub struct DeviceDel {
    pub id: String,
}
command!(DeviceDel, "device_del", Empty);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, then answers each command with what `respond` gives.
    async fn fake_qemu(
        dir: &Path,
        respond: impl Fn(&Value) -> Option<Vec<Value>> + Send + 'static,
    ) -> PathBuf {
        let path = dir.join("fake.qmp");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read_half, mut write_half) = stream.into_split();
            let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;
            write_half
                .write_all(format!("{greeting}\r\n").as_bytes())
                .await
                .unwrap();
            let mut lines = BufReader::new(read_half).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let request: Value = serde_json::from_str(&line).unwrap();
                // `None` plays a QEMU that exits: the connection closes unanswered.
                let Some(replies) = respond(&request) else {
                    return;
                };
                for reply in replies {
                    let text = format!("{reply}\r\n");
                    if write_half.write_all(text.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
        path
    }

    fn ok(request: &Value, value: Value) -> Value {
        serde_json::json!({ "return": value, "id": request["id"] })
    }

    #[tokio::test]
    async fn commands_get_typed_answers_and_events_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_qemu(dir.path(), |request| {
            Some(match request["execute"].as_str() {
                Some("query-status") => vec![
                    serde_json::json!({"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}),
                    ok(request, serde_json::json!({"status": "paused", "running": false})),
                ],
                Some("balloon") => {
                    assert_eq!(request["arguments"]["value"], 64 << 20);
                    vec![ok(request, serde_json::json!({}))]
                }
                Some("stop") => {
                    assert!(request.get("arguments").is_none(), "no arguments for a unit command");
                    vec![ok(request, serde_json::json!({}))]
                }
                _ => vec![ok(request, serde_json::json!({}))],
            })
        })
        .await;
        let client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(client.version().major, 10);
        let mut events = client.events();
        let status = client.execute(&QueryStatus).await.unwrap();
        assert_eq!(status.status, "paused");
        assert!(!status.running);
        assert_eq!(events.recv().await.unwrap().event, "STOP");
        client.execute(&Balloon { value: 64 << 20 }).await.unwrap();
        client.execute(&Stop).await.unwrap();
    }

    #[test]
    fn disk_copy_commands_have_qemus_argument_names() {
        let start = NbdServerStart {
            addr: SocketAddressLegacy::Inet {
                host: "127.0.0.1".into(),
                port: "10809".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&start).unwrap(),
            serde_json::json!({"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "10809"}}})
        );
        let export = BlockExportAdd {
            kind: "nbd",
            id: "copy-vda".into(),
            node_name: "#block123".into(),
            name: "vda".into(),
            writable: true,
        };
        assert_eq!(
            serde_json::to_value(&export).unwrap(),
            serde_json::json!({"type": "nbd", "id": "copy-vda", "node-name": "#block123", "name": "vda", "writable": true})
        );
        let mirror = DriveMirror {
            job_id: "copy-vda".into(),
            device: "drive-vda".into(),
            target: "nbd://127.0.0.1:10809/vda".into(),
            format: "raw",
            mode: "existing",
            sync: "full",
            copy_mode: "write-blocking",
        };
        let value = serde_json::to_value(&mirror).unwrap();
        assert_eq!(value["job-id"], "copy-vda");
        assert_eq!(value["copy-mode"], "write-blocking");
        let blocks: Vec<BlockInfo> = serde_json::from_value(serde_json::json!([
            {"device": "drive-vda", "inserted": {"node-name": "#block123", "ro": false}, "locked": false},
            {"device": "drive-empty", "locked": false}
        ]))
        .unwrap();
        assert_eq!(blocks[0].inserted.as_ref().unwrap().node_name, "#block123");
        assert!(blocks[1].inserted.is_none());
    }

    #[tokio::test]
    async fn a_refused_command_carries_qemus_description() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_qemu(dir.path(), |request| {
            if request["execute"] == "qmp_capabilities" {
                return Some(vec![ok(request, serde_json::json!({}))]);
            }
            Some(vec![serde_json::json!({
                "error": {"class": "GenericError", "desc": "No balloon device has been activated"},
                "id": request["id"],
            })])
        })
        .await;
        let client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let error = client.execute(&Balloon { value: 1 }).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "qmp command balloon failed: No balloon device has been activated (GenericError)"
        );
    }

    #[tokio::test]
    async fn answers_find_their_callers_when_they_come_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Arc::new(Mutex::new(Vec::<Value>::new()));
        let path = fake_qemu(dir.path(), move |request| {
            let mut pending = pending.lock().unwrap();
            Some(match request["execute"].as_str() {
                Some("qmp_capabilities") => vec![ok(request, serde_json::json!({}))],
                // Hold the first answer back and send it after the second.
                Some("query-balloon") => {
                    pending.push(ok(request, serde_json::json!({"actual": 1})));
                    vec![]
                }
                _ => {
                    let mut replies = vec![ok(
                        request,
                        serde_json::json!({"status": "running", "running": true}),
                    )];
                    replies.append(&mut pending);
                    replies
                }
            })
        })
        .await;
        let client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let balloon = client.execute(&QueryBalloon);
        let status = async {
            // Let the balloon query go out first.
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.execute(&QueryStatus).await
        };
        let (balloon, status) = tokio::join!(balloon, status);
        assert_eq!(balloon.unwrap().actual, 1);
        assert!(status.unwrap().running);
    }

    #[tokio::test]
    async fn a_closed_connection_fails_commands_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_qemu(dir.path(), |request| {
            (request["execute"] == "qmp_capabilities")
                .then(|| vec![ok(request, serde_json::json!({}))])
        })
        .await;
        let client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let error = client.execute(&Quit).await.unwrap_err();
        assert!(matches!(error, QmpError::Disconnected), "{error}");
        assert!(client.is_closed());
    }
}
