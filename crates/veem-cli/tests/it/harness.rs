//! A veem server started as a process on loopback with three sim hosts, and clients for its
//! principals: `sm-a` and `sm-b` (two SMs) and `ops` (an admin).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use veem_api::{InitializeRequest, UpdateStateRequest, UpdateStateResponse, VeeView};
use veem_client::Client;
use veem_model::{ControlAction, InitModel, VeeDescriptor, VmiState};

pub const TOKEN_A: &str = "token-sm-a";
pub const TOKEN_B: &str = "token-sm-b";
pub const TOKEN_OPS: &str = "token-ops";

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub a: Client,
    pub b: Client,
    pub ops: Client,
    child: Option<Child>,
    config: PathBuf,
}

fn free_port() -> u16 {
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
    /// Each host: (name, cpus, memory_mb, extra TOML lines for its `[host.sim]`).
    pub hosts: Vec<(&'static str, u32, u64, &'static str)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            placement: "pack",
            hosts: vec![
                ("h1", 8, 16384, ""),
                ("h2", 8, 16384, ""),
                ("h3", 8, 16384, ""),
            ],
        }
    }
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nplacement = \"{}\"\nshutdown_deadline_ms = 2000\nhealth_interval_ms = 200\n\n\
             [[principal]]\nname = \"sm-a\"\ntoken = \"{TOKEN_A}\"\n\n\
             [[principal]]\nname = \"sm-b\"\ntoken = \"{TOKEN_B}\"\n\n\
             [[principal]]\nname = \"ops\"\ntoken = \"{TOKEN_OPS}\"\nadmin = true\n",
            dir.path().join("data").display(),
            setup.placement
        );
        for (name, cpus, memory_mb, sim) in &setup.hosts {
            config.push_str(&format!(
                "\n[[host]]\nname = \"{name}\"\ndriver = \"sim\"\ncpus = {cpus}\nmemory_mb = {memory_mb}\n"
            ));
            if !sim.is_empty() {
                config.push_str(&format!("[host.sim]\n{sim}\n"));
            }
        }
        let config_path = dir.path().join("veem.toml");
        std::fs::write(&config_path, config).expect("config written");
        let url = format!("http://127.0.0.1:{port}");
        let mut server = Self {
            a: Client::new(&url, TOKEN_A).expect("client"),
            b: Client::new(&url, TOKEN_B).expect("client"),
            ops: Client::new(&url, TOKEN_OPS).expect("client"),
            url,
            dir,
            child: None,
            config: config_path,
        };
        server.spawn().await;
        server
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
        let child = Command::new(veem_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("veem starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ops.list_hosts().await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("veem exited at start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "veem did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("veem.log")).unwrap_or_default()
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
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
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
