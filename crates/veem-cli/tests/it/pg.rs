//! A throwaway PostgreSQL for the tests of several front-ends: one server per test process
//! (`scripts/pg`, which stops it once this process is gone), a fresh database per test.
//! Without PostgreSQL the tests skip with a message, unless `CI` is set: then they fail.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

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
