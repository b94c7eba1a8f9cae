//! A throwaway PostgreSQL for the tests of the PostgreSQL store and of several front-ends: one
//! server per test process (`scripts/pg`, initdb into a temporary folder as an unprivileged
//! user; it stops once the process is gone), a fresh database per store. Without PostgreSQL the
//! tests skip with a message, unless `CI` is set: then they fail. Test support, like the
//! conformance suite, and compiled with it.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

/// The server's URL (its `postgres` database), started on first use; None when there is no
/// PostgreSQL and `CI` is unset.
pub fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg");
            let outcome = Command::new(script)
                .args(["start", "--watch", &std::process::id().to_string()])
                .output();
            let failure = match outcome {
                Ok(out) if out.status.success() => {
                    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    return Some(url);
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

/// Runs one SQL command on the server as its superuser.
pub fn psql(url: &str, sql: &str) {
    let out = Command::new(PSQL)
        .args([url, "-v", "ON_ERROR_STOP=1", "-qtAc", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new, empty database on the server, by URL.
pub fn fresh_database(server: &str) -> String {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "veem_test_{}_{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    psql(server, &format!("CREATE DATABASE {name}"));
    let base = server
        .strip_suffix("/postgres")
        .expect("scripts/pg prints the URL of the postgres database");
    format!("{base}/{name}")
}
