//! Several front-ends on one PostgreSQL database, for tests and benches: `veem serve` processes
//! on a fresh database of the test process's throwaway PostgreSQL (`veem_store::test_postgres`).
//! Without PostgreSQL the tests skip with a message, unless `CI` is set: then they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use veem_api::{ClusterView, HostState};
use veem_client::Client;

use crate::harness::{free_port, veem_bin, TOKEN_A, TOKEN_OPS};

/// Short, so that a failover takes a few seconds in a test.
const LEASE_TTL_MS: u64 = 1_000;

/// The URL of a new, empty database on this test process's throwaway PostgreSQL; `None` when
/// there is no PostgreSQL (and `CI` is unset: then it fails).
pub fn fresh_database() -> Option<String> {
    let server = veem_store::test_postgres::server()?;
    Some(veem_store::test_postgres::fresh_database(server))
}

/// One `veem serve` of a site whose books are in PostgreSQL, with no host of its own and the
/// principals of the harness.
pub struct FrontEnd {
    pub name: String,
    pub url: String,
    pub ops: Client,
    pub a: Client,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// Stopped by SIGSTOP: it would not answer a call until SIGCONT.
    stopped: bool,
}

impl FrontEnd {
    /// Starts `name` in `dir/<name>` (its data_dir there) on the database `store_url`, with a
    /// lease of 1 s and health checks every 200 ms; it may follow.
    pub fn start(dir: &Path, name: &str, store_url: &str) -> Self {
        Self::start_with(
            dir,
            name,
            store_url,
            "lease_ttl_ms = 1000\nhealth_interval_ms = 200\n",
        )
    }

    /// [`FrontEnd::start`] with these top-level lines of config (each ending in a newline)
    /// instead of the test's lease and health interval.
    pub fn start_with(dir: &Path, name: &str, store_url: &str, top_level: &str) -> Self {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("front-end directory");
        let config = format!(
            "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nadvertise_url = \"{url}\"\n\
             data_dir = \"data\"\nplacement = \"pack\"\nshutdown_deadline_ms = 2000\n{top_level}\n\
             [store]\nurl = \"{store_url}\"\n\n\
             [[principal]]\nname = \"sm-a\"\ntoken = \"{TOKEN_A}\"\n\n\
             [[principal]]\nname = \"ops\"\ntoken = \"{TOKEN_OPS}\"\nadmin = true\n"
        );
        let config_path = dir.join("veem.toml");
        std::fs::write(&config_path, config).expect("config written");
        let client = |token| Client::new(&url, token).expect("client");
        let mut front_end = Self {
            name: name.to_owned(),
            ops: client(TOKEN_OPS),
            a: client(TOKEN_A),
            url,
            dir,
            config: config_path,
            child: None,
            stopped: false,
        };
        front_end.spawn();
        front_end
    }

    /// Starts it again after [`FrontEnd::kill9`], on the same config and data_dir.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} still runs", self.name);
        self.spawn();
    }

    /// Starts it (again), on the same folder.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("veem.log"))
            .expect("log file");
        let child = Command::new(veem_bin())
            .current_dir(&self.dir)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("veem starts");
        self.child = Some(child);
    }

    /// `GET /vmi/v1/cluster`, or why not.
    pub async fn cluster(&self) -> Result<ClusterView, String> {
        self.ops.cluster().await.map_err(|e| e.to_string())
    }

    /// Waits until this front-end's `GET /cluster` names `leader` as the leader and the VMI
    /// answers through it.
    pub async fn wait_leader(&self, leader: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let view = self.cluster().await;
            if matches!(&view, Ok(v) if v.leader.as_deref() == Some(leader))
                && self.ops.list_hosts().await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never showed {leader} leading: {view:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `GET /cluster` through this front-end names `leader` and lists this one as
    /// a follower: it started and follows.
    pub async fn wait_following(&self, leader: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let view = self.cluster().await;
            if let Ok(view) = &view {
                let following = view
                    .members
                    .iter()
                    .any(|m| m.name == self.name && m.role == veem_api::ClusterRole::Follower);
                if following && view.leader.as_deref() == Some(leader) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never followed {leader}: {view:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `host` is `up` as this front-end answers.
    pub async fn wait_host_up(&self, host: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let hosts = self.ops.list_hosts().await;
            if let Ok(hosts) = &hosts {
                if hosts
                    .hosts
                    .iter()
                    .any(|h| h.id.as_str() == host && h.state == HostState::Up)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{host} never up through {}: {hosts:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("veem.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL: the machine is gone, as far as the others can tell.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl FrontEnd {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the front-end runs").id()
    }

    /// Whether its process runs and is not stopped.
    pub fn answers(&self) -> bool {
        self.child.is_some() && !self.stopped
    }

    /// SIGTERM, as an operator stops it, and waits until it has exited.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            child.wait().expect("reaped");
        }
    }

    /// Sends `STOP` or `CONT`.
    pub fn signal(&mut self, signal: &str) {
        self.stopped = signal == "STOP";
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Its data_dir, as a machine's disk that can be lost.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// `count` front-ends `fe1`.. on one fresh database, each answering its VMI.
pub struct Site {
    pub front_ends: Vec<FrontEnd>,
    _dir: tempfile::TempDir,
}

impl Site {
    /// `None` when there is no PostgreSQL (and `CI` is unset: then it fails).
    pub async fn start(count: usize) -> Option<Self> {
        Self::start_with(count, LEASE_TTL_MS).await
    }

    /// [`Site::start`] with leases of `lease_ttl_ms`.
    pub async fn start_with(count: usize, lease_ttl_ms: u64) -> Option<Self> {
        let database = fresh_database()?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let top_level = format!("lease_ttl_ms = {lease_ttl_ms}\nhealth_interval_ms = 200\n");
        let front_ends = (1..=count)
            .map(|n| FrontEnd::start_with(dir.path(), &format!("fe{n}"), &database, &top_level))
            .collect();
        let site = Self {
            front_ends,
            _dir: dir,
        };
        site.wait_for_leader(&[], Duration::from_secs(30)).await;
        Some(site)
    }

    pub fn by_name(&mut self, name: &str) -> &mut FrontEnd {
        self.front_ends
            .iter_mut()
            .find(|f| f.name == name)
            .expect("a front-end of that name")
    }

    /// Waits until a front-end not in `not` leads and its VMI answers through every running
    /// front-end; returns its name.
    pub async fn wait_for_leader(&self, not: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                if !not.contains(&leader.as_str()) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new leader within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader every running front-end names, once the VMI answers through each.
    async fn agreed_leader(&self) -> Option<String> {
        let mut agreed: Option<String> = None;
        for front_end in self.front_ends.iter().filter(|f| f.answers()) {
            let view = front_end.ops.cluster().await.ok()?;
            let leader = view.leader?;
            if agreed.get_or_insert_with(|| leader.clone()) != &leader {
                return None;
            }
            front_end.ops.list_hosts().await.ok()?;
        }
        agreed
    }

    /// Every front-end's log lines that mention `needle`.
    pub fn grep_logs(&self, needle: &str) -> String {
        self.front_ends
            .iter()
            .flat_map(|f| {
                let log = std::fs::read_to_string(f.dir.join("veem.log")).unwrap_or_default();
                log.lines()
                    .filter(|l| l.contains(needle))
                    .map(|l| format!("{}: {l}", f.name))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn logs(&self) -> String {
        self.front_ends
            .iter()
            .map(|f| format!("--- {} ---\n{}", f.name, f.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
