//! A veem server started as a process on loopback with three sim hosts, and clients for its
//! principals: `sm-a` and `sm-b` (two SMs) and `ops` (an admin).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veem_api::{InitializeRequest, UpdateStateRequest, UpdateStateResponse, VeeView};
use veem_client::Client;
use veem_model::{
    ControlAction, DiskSource, DiskSpec, ImageName, InitModel, NicSpec, VeeDescriptor, VmiState,
};

pub const TOKEN_A: &str = "token-sm-a";
pub const TOKEN_B: &str = "token-sm-b";
pub const TOKEN_OPS: &str = "token-ops";

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// The site's CA, when the server speaks HTTPS (`Setup::tls`).
    pub ca: Option<PathBuf>,
    pub a: Client,
    pub b: Client,
    pub ops: Client,
    child: Option<Child>,
    config: PathBuf,
    /// The in-process hosts of its config.
    hosts: Vec<String>,
    /// How long a start may take until the VMI answers, and until its hosts are up.
    pub start_deadline: Duration,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn veem_bin() -> &'static str {
    env!("CARGO_BIN_EXE_veem")
}

/// Options of a test server.
pub struct Setup {
    pub placement: &'static str,
    pub driver: Hypervisor,
    /// Each host: (name, cpus, memory_mb, extra TOML lines for its `[host.sim]` or `[host.qemu]`).
    pub hosts: Vec<(&'static str, u32, u64, &'static str)>,
    /// How often the server checks its hosts: short in tests, so what a host reports (a dead
    /// guest) is seen soon.
    pub health_interval_ms: u64,
    /// How often the server makes HARDWARE events: short in tests, so they show soon.
    pub monitoring_interval_ms: u64,
    /// `Some(agents)`: HTTPS with the certificates `veem tls init` makes in `<dir>/tls`
    /// (`ca_file` and the agents' client CA: its `ca.pem`), with client certificates for these
    /// agents; `None`: plain HTTP.
    pub tls: Option<Vec<&'static str>>,
    /// More TOML appended to the config after its principals: tables only (another
    /// `[[principal]]`, say).
    pub extra_config: String,
    /// More top-level lines of the config, each ending in a newline (e.g.
    /// `file_sources = [...]\n`).
    pub top_level_config: String,
    /// How long a host may be silent before it is lost and its VEEs move (veem's default).
    pub host_dead_after_ms: u64,
    /// The hosts that keep their VEEs' directories as their own storage,
    /// `<data_dir>/own/<host>` (their `vees_dir`), which no other host sees; the others share
    /// `<data_dir>/vees`.
    pub own_vees_dirs: Vec<&'static str>,
}

/// The hypervisor driver of a test server's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    Sim,
    Qemu,
}

impl Hypervisor {
    pub fn name(self) -> &'static str {
        match self {
            Hypervisor::Sim => "sim",
            Hypervisor::Qemu => "qemu",
        }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            placement: "pack",
            driver: Hypervisor::Sim,
            health_interval_ms: 200,
            monitoring_interval_ms: 300,
            top_level_config: String::new(),
            host_dead_after_ms: 10_000,
            hosts: vec![
                ("h1", 8, 16384, ""),
                ("h2", 8, 16384, ""),
                ("h3", 8, 16384, ""),
            ],
            tls: None,
            extra_config: String::new(),
            own_vees_dirs: Vec::new(),
        }
    }
}

/// The site's certificates, made by the binary as an operator would: `veem tls init DIR`.
pub fn tls_init(dir: &Path, agents: &[&str]) -> PathBuf {
    let mut command = Command::new(veem_bin());
    command.args(["tls", "init"]).arg(dir);
    for agent in agents {
        command.args(["--agent", agent]);
    }
    let out = command.output().expect("veem tls init runs");
    assert!(
        out.status.success(),
        "veem tls init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_owned()
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    /// A server whose three hosts run `driver`, with the bootable test guest uploaded by the
    /// admin as the shared image `tiny`. `None` (said loudly) where QEMU is not installed.
    pub async fn start_on(driver: Hypervisor) -> Option<Self> {
        Self::start_with_guest(Setup {
            driver,
            ..Setup::default()
        })
        .await
    }

    /// [`Server::start_on`] with more to choose.
    pub async fn start_with_guest(setup: Setup) -> Option<Self> {
        let driver = setup.driver;
        let server = Self::start_with(setup).await;
        let image = match driver {
            Hypervisor::Sim => write_file(
                server.dir.path(),
                "tiny.img",
                b"a sim image stands in for the guest",
            ),
            Hypervisor::Qemu => guest_image()?,
        };
        server
            .ops
            .push_image("tiny", &image, None)
            .await
            .expect("the guest image uploads");
        Some(server)
    }

    pub async fn start_with(setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nplacement = \"{}\"\nshutdown_deadline_ms = 2000\nhealth_interval_ms = {}\nmonitoring_interval_ms = {}\nhost_dead_after_ms = {}\n\n\
             [[principal]]\nname = \"sm-a\"\ntoken = \"{TOKEN_A}\"\n\n\
             [[principal]]\nname = \"sm-b\"\ntoken = \"{TOKEN_B}\"\n\n\
             [[principal]]\nname = \"ops\"\ntoken = \"{TOKEN_OPS}\"\nadmin = true\n",
            setup.placement,
            setup.health_interval_ms,
            setup.monitoring_interval_ms,
            setup.host_dead_after_ms
        );
        config.push_str(&setup.extra_config);
        let mut ca = None;
        if let Some(agents) = &setup.tls {
            let tls = tls_init(&dir.path().join("tls"), agents);
            config.push_str(&format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca_file = \"{}\"\n",
                tls.join("server.pem").display(),
                tls.join("server.key").display(),
                tls.join("ca.pem").display()
            ));
            ca = Some(tls.join("ca.pem"));
        }
        // Top-level keys go before the first table.
        config.insert_str(0, &setup.top_level_config);
        for (name, cpus, memory_mb, sim) in &setup.hosts {
            let driver = setup.driver.name();
            config.push_str(&format!(
                "\n[[host]]\nname = \"{name}\"\ndriver = \"{driver}\"\ncpus = {cpus}\nmemory_mb = {memory_mb}\n"
            ));
            if setup.own_vees_dirs.contains(name) {
                config.push_str(&format!("vees_dir = \"own/{name}\"\n"));
            }
            if !sim.is_empty() {
                config.push_str(&format!("[host.{driver}]\n{sim}\n"));
            }
        }
        let config_path = dir.path().join("veem.toml");
        std::fs::write(&config_path, config).expect("config written");
        let scheme = if ca.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let client = |token| Client::with_ca(&url, token, ca.as_deref()).expect("client");
        let mut server = Self {
            a: client(TOKEN_A),
            b: client(TOKEN_B),
            ops: client(TOKEN_OPS),
            url,
            ca,
            dir,
            child: None,
            config: config_path,
            hosts: setup.hosts.iter().map(|h| h.0.to_owned()).collect(),
            start_deadline: Duration::from_secs(30),
        };
        server.spawn().await;
        server.wait_hosts_up().await;
        server
    }

    /// Waits until every host of the config is UP: they connect behind a VEEM that answers.
    pub async fn wait_hosts_up(&self) {
        let deadline = Instant::now() + self.start_deadline;
        loop {
            let hosts = self.ops.list_hosts().await.expect("hosts");
            let up = |name: &String| {
                hosts
                    .hosts
                    .iter()
                    .any(|h| h.id.as_str() == name && h.state == veem_api::HostState::Up)
            };
            if self.hosts.iter().all(up) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the hosts did not come up: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("veem.log"))
            .expect("log file");
        // Started in its directory with a relative data_dir, as an operator might.
        let child = Command::new(veem_bin())
            .current_dir(self.dir.path())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("veem starts");
        self.child = Some(child);
        let deadline = Instant::now() + self.start_deadline;
        loop {
            if self.ops.list_vees(&Default::default()).await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("veem exited at start ({status}): {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "veem did not start: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("veem.log")).unwrap_or_default()
    }

    /// The last 40 lines of the log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
        self.wait_hosts_up().await;
    }

    /// SIGTERM, as an operator stops it, and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            child.wait().expect("reaped");
        }
    }

    /// Starts it again on its data directory after [`Server::stop`] or [`Server::kill9`];
    /// returns once the VMI answers (its hosts may still be connecting).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
        self.spawn().await;
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Guests outlive the VEEM by design; a finished test ends its own.
        for pid in processes_mentioning(&self.data_dir()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        // So do the LANs on the host: this server's bridges and VXLAN devices (their names
        // carry its key).
        if let Ok(data_dir) = std::fs::canonicalize(self.data_dir()) {
            let key = format!("{:06x}", veem_server::veem::lan_key(&data_dir));
            let ours = |name: &str| {
                (name.starts_with("vb") || name.starts_with("vx")) && name[2..].starts_with(&key)
            };
            for entry in std::fs::read_dir("/sys/class/net")
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if ours(&name) {
                    let _ = Command::new("ip")
                        .args(["link", "del", "dev", &name])
                        .status();
                }
            }
        }
    }
}

/// Processes whose command line mentions `path` (the QEMUs of one test server).
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

/// Whether QEMU is here; where it is not, a test fails in CI and skips loudly elsewhere.
pub fn qemu_available() -> bool {
    let found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    veem_guest::testing::require(
        found,
        "qemu-system-x86_64 is not installed; run scripts/install-deps",
    )
}

/// The test guest's kernel and initramfs, for direct kernel boot: built with [`guest_image`].
pub fn guest_boot_files() -> Option<(PathBuf, PathBuf)> {
    let image = guest_image()?;
    let dir = image.with_extension("boot");
    Some((
        dir.join(veem_guest::KERNEL_FILE),
        dir.join(veem_guest::INITRD_FILE),
    ))
}

/// The bootable test guest, built once (by `veem guest build`) and shared by every test process;
/// its kernel and initramfs are beside it, in `<image>.boot/`.
pub fn guest_image() -> Option<PathBuf> {
    if !qemu_available() {
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Keyed by the veem binary that builds it: a rebuilt veem may build a different guest.
    let built = std::fs::metadata(veem_bin())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let image = dir.join(format!("veem-test-guest-{built}.qcow2"));
    let lock = dir.join(format!("veem-test-guest-{built}.lock"));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if image.exists() {
            return Some(image);
        }
        // One process builds; the others wait for the image to appear.
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            let tmp = dir.join(format!("veem-test-guest.{}.qcow2", std::process::id()));
            let out = Command::new(veem_bin())
                .args(["guest", "build", "--out"])
                .arg(&tmp)
                .arg("--boot-files")
                .arg(image.with_extension("boot"))
                .output()
                .expect("veem guest build runs");
            if !out.status.success() {
                let _ = std::fs::remove_file(&lock);
                panic!(
                    "veem guest build failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::fs::rename(&tmp, &image).expect("the guest image moves into place");
            let _ = std::fs::remove_file(&lock);
            return Some(image);
        }
        assert!(
            Instant::now() < deadline,
            "waited 10 minutes for another test to build the guest"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The directory of the VEE `id` on `host`, when the hosts keep their own
/// ([`Setup::own_vees_dirs`]).
pub fn own_vee_dir(s: &Server, host: &str, id: &str) -> PathBuf {
    s.data_dir().join("own").join(host).join(id)
}

/// The serial console of the guest of `id` so far (the qemu driver keeps it in the VEE's
/// directory, across boots).
pub fn console(s: &Server, id: &str) -> String {
    std::fs::read_to_string(s.data_dir().join("vees").join(id).join("console.log"))
        .unwrap_or_default()
}

/// On QEMU, waits until the guest of `id` printed its ready marker on its serial console;
/// on sim there is no guest to wait for.
pub async fn wait_guest_ready(s: &Server, driver: Hypervisor, id: &str) {
    if driver == Hypervisor::Sim {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = console(s, id);
        if text.contains(veem_guest::READY_MARKER) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} did not boot: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP listener of the test's own, standing for an SM's ReceiveAccountingInformation or
/// monitoring callback: it keeps every POST body it acknowledged with the time it came, and
/// answers 503 while told to be down. While told to hold, it keeps what comes apart
/// ([`Listener::held`]) and answers nothing until released, so its sender never sees those
/// acknowledged.
pub struct Listener {
    pub url: String,
    received: Arc<Mutex<Vec<(u64, serde_json::Value)>>>,
    down: Arc<AtomicBool>,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<Mutex<Vec<(u64, serde_json::Value)>>>,
}

impl Listener {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A listener that speaks HTTPS with this certificate and key (a `veem tls init` site's
    /// `server.pem`, which names 127.0.0.1), through the VEEM's own accept loop.
    #[allow(dead_code)] // the tests', not the benches'
    pub async fn start_https(cert: &Path, key: &Path) -> Self {
        let identity = veem_tls::Identity::load(cert, key).expect("the listener's certificate");
        let config = veem_tls::server_config(&identity, None).expect("a TLS configuration");
        Self::start_with(Some(veem_tls::Acceptor::new(config))).await
    }

    async fn start_with(tls: Option<veem_tls::Acceptor>) -> Self {
        let received: Arc<Mutex<Vec<(u64, serde_json::Value)>>> = Arc::default();
        let held: Arc<Mutex<Vec<(u64, serde_json::Value)>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(tokio::sync::watch::Sender::new(false));
        let (r, d, h, k) = (received.clone(), down.clone(), hold.clone(), held.clone());
        let app = axum::Router::new().route(
            "/push",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (r, d, h, k) = (r.clone(), d.clone(), h.clone(), k.clone());
                async move {
                    if d.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let mut holding = h.subscribe();
                    if *holding.borrow_and_update() {
                        k.lock().expect("not poisoned").push((wall_ms(), value));
                        let _ = holding.wait_for(|hold| !*hold).await;
                        return axum::http::StatusCode::NO_CONTENT;
                    }
                    r.lock().expect("not poisoned").push((wall_ms(), value));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/push", socket.local_addr().expect("bound"));
        tokio::spawn(veem_server::http::listen::serve(
            socket,
            app,
            tls,
            std::future::pending(),
        ));
        Self {
            url,
            received,
            down,
            hold,
            held,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Holds every POST that comes from now on unanswered (`true`), or answers them (`false`).
    pub fn set_hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// The items of the POSTs that came while holding, each with its arrival time.
    pub fn held(&self) -> Vec<(u64, serde_json::Value)> {
        items_of(self.held.lock().expect("not poisoned").clone())
    }

    /// Every POST so far: (when it came, in ms since the epoch; its JSON body).
    pub fn posts(&self) -> Vec<(u64, serde_json::Value)> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// The items of every POST acknowledged so far, in the order they came, each with its
    /// arrival time.
    pub fn items(&self) -> Vec<(u64, serde_json::Value)> {
        items_of(self.posts())
    }

    /// Waits until `done` holds for the items, or fails after `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[(u64, serde_json::Value)]) -> bool,
    ) -> Vec<(u64, serde_json::Value)> {
        let deadline = Instant::now() + limit;
        loop {
            let items = self.items();
            if done(&items) {
                return items;
            }
            assert!(Instant::now() < deadline, "never {what}: {items:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn items_of(posts: Vec<(u64, serde_json::Value)>) -> Vec<(u64, serde_json::Value)> {
    posts
        .into_iter()
        .flat_map(|(at, body)| match body {
            serde_json::Value::Array(items) => items.into_iter().map(|i| (at, i)).collect(),
            other => vec![(at, other)],
        })
        .collect()
}

/// The wall clock in unix milliseconds, as the VEEM and its hosts read it.
pub use veem_layout::now_ms as wall_ms;

/// veem's own default health interval, for measurements of a setup as an operator runs it.
#[allow(dead_code)] // the benches' (they include this file)
pub const VEEM_HEALTH_INTERVAL_MS: u64 = 1_000;

impl Server {
    /// Three qemu hosts with the test guest uploaded, checked as often as veem's default
    /// (the tests check more often, which costs a little CPU a measurement should not pay).
    #[allow(dead_code)] // the benches' (they include this file)
    pub async fn start_for_bench() -> Option<Self> {
        Self::start_with_guest(Setup {
            driver: Hypervisor::Qemu,
            health_interval_ms: VEEM_HEALTH_INTERVAL_MS,
            monitoring_interval_ms: 10_000,
            ..Setup::default()
        })
        .await
    }
}

/// The VEE's first disk: a copy-on-write clone of the shared test guest `tiny`.
pub fn tiny_disk() -> DiskSpec {
    DiskSpec {
        source: Some(DiskSource::Image(
            ImageName::new("tiny").expect("a constant valid image name"),
        )),
        size_gb: None,
        target: Some("vda".into()),
        clone: true,
        kind: veem_model::DiskKind::Disk,
    }
}

/// NICs on these networks, each with the address it asks for, if any.
pub fn nics(on: &[(&str, Option<&str>)]) -> Vec<NicSpec> {
    on.iter()
        .map(|(network, ip)| NicSpec {
            network: (*network).to_owned(),
            target: None,
            ip: ip.map(|ip| ip.parse().expect("an IPv4 address")),
        })
        .collect()
}

/// Reads a file out of a guest disk image (qcow2, FAT), without mounting it.
pub fn read_guest_file(image: &Path, path: &str) -> String {
    let raw = image.with_extension("raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .status()
        .expect("qemu-img runs");
    assert!(status.success(), "qemu-img convert {}", image.display());
    let out = Command::new("mtype")
        .arg("-i")
        .arg(&raw)
        .arg(format!("::{path}"))
        .output()
        .expect("mtype runs");
    let _ = std::fs::remove_file(&raw);
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn small(name: &str) -> VeeDescriptor {
    let mut d = VeeDescriptor::minimal(1, 512);
    d.name = name.to_owned();
    d
}

pub async fn init(client: &Client, model: InitModel, count: u32, d: VeeDescriptor) -> Vec<String> {
    let response = client
        .initialize(&InitializeRequest {
            model,
            count,
            descriptor: d,
        })
        .await
        .expect("initialize");
    response.vees.into_iter().map(|v| v.id).collect()
}

pub async fn init_one(client: &Client, d: VeeDescriptor) -> String {
    init(client, InitModel::Besteffort, 1, d).await.remove(0)
}

pub async fn ctl(client: &Client, action: ControlAction, ids: &[&str]) -> UpdateStateResponse {
    client
        .update_state(&UpdateStateRequest {
            order: veem_api::Order::List,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            action,
            timeout_ms: Some(20_000),
        })
        .await
        .expect("update-state answers")
}

/// Applies an action that must succeed for every id.
pub async fn ctl_ok(client: &Client, action: ControlAction, ids: &[&str]) {
    let r = ctl(client, action, ids).await;
    assert!(r.failed.is_empty(), "{action} failed: {:?}", r.failed);
    assert_eq!(r.applied.len(), ids.len());
}

pub async fn get(client: &Client, id: &str) -> VeeView {
    client.get_vee(id).await.expect("the VEE is readable")
}

pub async fn state_of(client: &Client, id: &str) -> VmiState {
    get(client, id).await.state
}

/// Polls until the VEE is in `state`, for at most 20 s.
pub async fn wait_state(client: &Client, id: &str, state: VmiState) -> VeeView {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(client, id).await;
        if v.state == state && v.phase.is_none() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stayed {} ({:?}), not {state}",
            v.state,
            v.pending_reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("file written");
    path
}

/// A host agent as its own process (`veem agent --driver sim`), connected to a test server
/// with the admin's token; its state directory (the sim driver's journal) is kept across
/// restarts, as a machine's disk would be.
pub struct RemoteAgent {
    pub name: String,
    pub state_dir: PathBuf,
    server_url: String,
    cpus: u32,
    memory_mb: u64,
    log: PathBuf,
    child: Option<Child>,
    /// Its `--vees-dir`, if it keeps its VEEs' directories as its own storage.
    pub vees_dir: Option<PathBuf>,
}

impl RemoteAgent {
    pub fn start(server: &Server, name: &str, cpus: u32, memory_mb: u64) -> Self {
        Self::start_with(server, name, cpus, memory_mb, None)
    }

    /// [`RemoteAgent::start`], keeping its VEEs' directories in `vees_dir` when given.
    pub fn start_with(
        server: &Server,
        name: &str,
        cpus: u32,
        memory_mb: u64,
        vees_dir: Option<PathBuf>,
    ) -> Self {
        Self::start_in(
            server.dir.path(),
            &server.url,
            name,
            cpus,
            memory_mb,
            vees_dir,
        )
    }

    /// An agent of `--server server_url` (one URL, or several separated by commas), with its
    /// state directory and log in `dir`.
    pub fn start_in(
        dir: &Path,
        server_url: &str,
        name: &str,
        cpus: u32,
        memory_mb: u64,
        vees_dir: Option<PathBuf>,
    ) -> Self {
        let mut agent = Self {
            name: name.to_owned(),
            state_dir: dir.join(format!("agent-{name}")),
            server_url: server_url.to_owned(),
            cpus,
            memory_mb,
            log: dir.join(format!("agent-{name}.log")),
            child: None,
            vees_dir,
        };
        agent.spawn();
        agent
    }

    /// Starts the agent (again), on the same state directory.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log file");
        let mut command = Command::new(veem_bin());
        command
            .args([
                "agent",
                "--server",
                &self.server_url,
                "--agent-token",
                TOKEN_OPS,
            ])
            .args(["--name", &self.name, "--driver", "sim"])
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--memory-mb", &self.memory_mb.to_string()])
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(dir) = &self.vees_dir {
            command.arg("--vees-dir").arg(dir);
        }
        let child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the agent starts");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent runs").id()
    }

    /// SIGKILL: the agent ends at once; what its driver recorded stays in its state directory.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`) to the agent process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sim driver's journal: see [`sim_journal`].
    pub fn journal(&self) -> Vec<(String, String)> {
        sim_journal(&self.state_dir)
    }

    /// The instances the agent's sim driver holds (runs, or keeps paused) by its journal.
    pub fn instances(&self) -> std::collections::BTreeSet<String> {
        sim_instances(&self.state_dir)
    }
}

/// A sim driver's journal in `state_dir`, line by line: `("put", vee)` or `("remove", vee)`, in
/// the order written (a torn last line left out, as the driver itself does).
pub fn sim_journal(state_dir: &Path) -> Vec<(String, String)> {
    let bytes = std::fs::read(state_dir.join("instances.journal")).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let complete = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if let Some(vee) = value["put"]["vee"].as_str() {
                Some(("put".to_owned(), vee.to_owned()))
            } else {
                Some(("remove".to_owned(), value["remove"].as_str()?.to_owned()))
            }
        })
        .collect()
}

/// The instances a sim driver holds (runs, or keeps paused) by its journal in `state_dir`.
pub fn sim_instances(state_dir: &Path) -> std::collections::BTreeSet<String> {
    let mut live = std::collections::BTreeSet::new();
    for (op, vee) in sim_journal(state_dir) {
        if op == "put" {
            live.insert(vee);
        } else {
            live.remove(&vee);
        }
    }
    live
}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls the server until `host` is in `state` (for at most `limit`); answers the host's view.
pub async fn wait_host(
    s: &Server,
    host: &str,
    state: veem_api::HostState,
    limit: Duration,
) -> veem_api::HostView {
    let deadline = Instant::now() + limit;
    loop {
        let hosts = s.ops.list_hosts().await.expect("hosts");
        if let Some(h) = hosts
            .hosts
            .iter()
            .find(|h| h.id.as_str() == host && h.state == state)
        {
            return h.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{host} never became {state:?}: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The token the site named `of` gives the VEEMs of other sites (its principal `peer`).
pub fn peer_token(of: &str) -> String {
    format!("token-peer-of-{of}")
}

/// The setup of a site named `name` whose principals include `peer`, the principal its peers'
/// VEEMs present (no admin; it may move VEEs in and out, `migrate_vees`).
pub fn peer_site_setup(name: &str) -> Setup {
    Setup {
        top_level_config: format!("site = \"{name}\"\n"),
        extra_config: format!(
            "\n[[principal]]\nname = \"peer\"\ntoken = \"{}\"\nmigrate_vees = true\n",
            peer_token(name)
        ),
        ..Setup::default()
    }
}

/// `primary` registers `remote` (a [`peer_site_setup`] site) as the site `name`.
pub async fn register_site(primary: &Server, remote: &Server, name: &str) {
    primary
        .ops
        .add_site(&veem_api::SiteRequest {
            name: name.to_owned(),
            url: remote.url.clone(),
            token: peer_token(name),
            ca_pem: None,
            client_cert_pem: None,
            client_key_pem: None,
        })
        .await
        .expect("registered");
}

/// What a VEE's migration note (`migrated from … in {total} ms (downtime {downtime} ms; …
/// {after} ms after)`) says QEMU measured: its total and downtime, and, between sites, how
/// long after the send the guest ran at its destination. `None` without figures.
pub fn migration_figures(note: &str) -> Option<MigrationFigures> {
    let number_after = |word: &str| -> Option<u64> {
        let (_, rest) = note.rsplit_once(word)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    Some(MigrationFigures {
        total_ms: number_after(" in ")?,
        downtime_ms: number_after("(downtime ")?,
        running_after_ms: number_after("running there "),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationFigures {
    pub total_ms: u64,
    pub downtime_ms: u64,
    pub running_after_ms: Option<u64>,
}
