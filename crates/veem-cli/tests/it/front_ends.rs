//! Several front-ends on one PostgreSQL database, for tests and benches: a throwaway
//! PostgreSQL (one server per test process, started by `scripts/pg`, which stops it once this
//! process is gone; a fresh database per site), and `veem serve` processes on it. Without
//! PostgreSQL the tests skip with a message, unless `CI` is set: then they fail.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use veem_client::Client;

use crate::harness::{veem_bin, TOKEN_A, TOKEN_OPS};

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

/// The server's URL (its `postgres` database), started on first use.
fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg");
            let outcome = Command::new(script)
                .args(["start", "--watch", &std::process::id().to_string()])
                .output();
            let failure = match outcome {
                Ok(out) if out.status.success() => {
                    return Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
                }
                Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
                Err(err) => err.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set and PostgreSQL cannot be started by scripts/pg: {failure}"
            );
            eprintln!("SKIPPED: PostgreSQL cannot be started by scripts/pg ({failure})");
            None
        })
        .as_deref()
}

/// The URL of a new, empty database; `None` when there is no PostgreSQL (and `CI` is unset).
pub fn fresh_database() -> Option<String> {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let server = server()?;
    let name = format!(
        "veem_it_{}_{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    let out = Command::new(PSQL)
        .args([server, "-v", "ON_ERROR_STOP=1", "-qtAc"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = server
        .strip_suffix("/postgres")
        .expect("scripts/pg prints the URL of the postgres database");
    Some(format!("{base}/{name}"))
}

/// Short, so that a failover takes a few seconds in a test.
const LEASE_TTL_MS: u64 = 1_000;

/// One front-end, as its own process.
pub struct FrontEnd {
    pub name: String,
    pub url: String,
    pub a: Client,
    pub ops: Client,
    config: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    /// Stopped by SIGSTOP: it would not answer a call until SIGCONT.
    stopped: bool,
}

impl FrontEnd {
    /// Starts it (again), on the same folder.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the front-end runs").id()
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

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        self.kill9();
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
        let mut front_ends = Vec::new();
        for n in 1..=count {
            let name = format!("fe{n}");
            let port = crate::harness::free_port();
            let url = format!("http://127.0.0.1:{port}");
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home).expect("front-end folder");
            let config = home.join("veem.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nname = \"{name}\"\n\
                     advertise_url = \"{url}\"\nlease_ttl_ms = {lease_ttl_ms}\n\
                     health_interval_ms = 200\nshutdown_deadline_ms = 2000\n\n\
                     [store]\nurl = \"{database}\"\n\n\
                     [[principal]]\nname = \"sm-a\"\ntoken = \"{TOKEN_A}\"\n\n\
                     [[principal]]\nname = \"ops\"\ntoken = \"{TOKEN_OPS}\"\nadmin = true\n"
                ),
            )
            .expect("config written");
            let mut front_end = FrontEnd {
                a: Client::new(&url, TOKEN_A).expect("client"),
                ops: Client::new(&url, TOKEN_OPS).expect("client"),
                name,
                url,
                log: home.join("veem.log"),
                config,
                dir: home,
                child: None,
                stopped: false,
            };
            front_end.spawn();
            front_ends.push(front_end);
        }
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
        for front_end in self
            .front_ends
            .iter()
            .filter(|f| f.child.is_some() && !f.stopped)
        {
            let view = front_end.ops.cluster().await.ok()?;
            let leader = view.leader?;
            if agreed.get_or_insert_with(|| leader.clone()) != &leader {
                return None;
            }
            front_end.ops.list_hosts().await.ok()?;
        }
        agreed
    }

    pub fn logs(&self) -> String {
        self.front_ends
            .iter()
            .map(|f| {
                let log = f.log();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} ---\n{}",
                    f.name,
                    lines[lines.len().saturating_sub(25)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
