//! What the CLI crate's bench binaries share: sizes from the environment and how figures are
//! read and written. Each bench includes it with `#[path = "support/figures.rs"] mod figures;`.

use std::str::FromStr;
use std::time::Duration;

/// The environment variable `name` read as a number, or `default` when unset or unreadable.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0 to 1) of durations sorted ascending, by the nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A duration in milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
