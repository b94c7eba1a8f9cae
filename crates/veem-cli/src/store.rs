//! `veem store`: a site's books themselves, offline. `copy` moves them from SQLite (a
//! `data_dir`) into a new PostgreSQL database, for several front-ends to share.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;
use veem_store::copy::{copy_store, open_sqlite_snapshot, CopyProgress, CopyReport};

use crate::output::{emit, pairs, to_json, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a site's books from SQLite into a new, empty PostgreSQL database, and check the copy
    ///
    /// Copies every VEE (with its generation, events and accounting records), the images'
    /// records, networks, accounting listeners and outbox, monitoring subscriptions, sites and
    /// the id counters. Image bytes are not in the books: they stay in the data_dir (its
    /// `images/`), which every front-end of the site must reach. Stop the `veem serve` of the
    /// data_dir first; the source is only read. A destination that holds anything is refused:
    /// create a new database for the copy (an interrupted copy is started again into a new one).
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The SQLite books: a data_dir (its veem.db), or the veem.db file itself
    #[arg(long)]
    pub from: PathBuf,
    /// The PostgreSQL database to copy into, e.g. postgresql://veem@127.0.0.1:5432/veem; it
    /// must exist and be empty
    #[arg(long)]
    pub to: String,
}

/// What `-o json` prints.
#[derive(Debug, Serialize)]
struct CopyOutput {
    from: String,
    to: String,
    #[serde(flatten)]
    copied: CopyReport,
}

pub async fn run_store(format: OutputFormat, command: StoreCommand) -> anyhow::Result<()> {
    let StoreCommand::Copy(args) = command;
    if !args.to.starts_with("postgresql://") && !args.to.starts_with("postgres://") {
        anyhow::bail!(
            "--to must be a PostgreSQL URL (postgresql://user@host:port/database), not {:?}",
            args.to
        );
    }
    let source = if args.from.is_dir() {
        args.from.join("veem.db")
    } else {
        args.from.clone()
    };
    if !source.is_file() {
        anyhow::bail!(
            "--from {}: no veem.db there (give a data_dir or its veem.db)",
            args.from.display()
        );
    }
    let to = args.to.clone();
    let source_for_copy = source.clone();
    let copied = tokio::task::spawn_blocking(move || copy(&source_for_copy, &to))
        .await
        .context("the copy stopped")??;
    let output = CopyOutput {
        from: source.display().to_string(),
        to: without_password(&args.to),
        copied,
    };
    match format {
        OutputFormat::Json => emit(&to_json(&output)?),
        OutputFormat::Table => {
            let c = &output.copied;
            emit(&format!(
                "copied and checked:\n{}image bytes stay in the data_dir: every front-end must reach its images/\n",
                pairs(&[
                    ("from", output.from.clone()),
                    ("to", output.to.clone()),
                    ("vees", c.vees.to_string()),
                    ("events", c.events.to_string()),
                    ("accounting records", c.accounting_records.to_string()),
                    ("images", c.images.to_string()),
                    ("networks", c.networks.to_string()),
                    ("accounting listeners", c.listeners.to_string()),
                    ("accounting outbox", c.outbox_entries.to_string()),
                    ("subscriptions", c.subscriptions.to_string()),
                    ("sites", c.sites.to_string()),
                    ("next vee id", c.next_vee_seq.to_string()),
                    ("next network id", c.next_network_id.to_string()),
                ])
            ))
        }
    }
}

/// The copy itself, blocking: a snapshot of the source in a scratch directory (removed after),
/// copied into the destination.
fn copy(source: &Path, to: &str) -> anyhow::Result<CopyReport> {
    let scratch = std::env::temp_dir().join(format!(
        "veem-store-copy-{}-{}",
        std::process::id(),
        veem_layout::now_ms()
    ));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot make the scratch directory {}", scratch.display()))?;
    let copied = (|| {
        let from = open_sqlite_snapshot(source, &scratch.join("veem.db"))
            .with_context(|| format!("cannot read {}", source.display()))?;
        let destination = veem_store::PgStore::open(to)
            .with_context(|| format!("cannot open {}", without_password(to)))?;
        let mut last_said = Instant::now();
        let mut progress = |p: CopyProgress| {
            let mut stderr = std::io::stderr().lock();
            if p.checking {
                let _ = writeln!(stderr, "copied {} VEEs; checking the copy", p.vees_total);
            } else if last_said.elapsed() >= Duration::from_secs(1) || p.vees_done == p.vees_total {
                last_said = Instant::now();
                let _ = writeln!(stderr, "copied {}/{} VEEs", p.vees_done, p.vees_total);
            }
        };
        copy_store(&from, &destination, &mut progress).context("the copy failed")
    })();
    // Best effort: a scratch copy left behind is harmless.
    let _ = std::fs::remove_dir_all(&scratch);
    copied
}

/// `url` with its password, if any, masked, for output and messages.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            without_password("postgresql://veem:secret@db:5432/veem"),
            "postgresql://veem:***@db:5432/veem"
        );
        assert_eq!(
            without_password("postgresql://veem@db/veem"),
            "postgresql://veem@db/veem"
        );
        assert_eq!(
            without_password("postgresql://db/veem"),
            "postgresql://db/veem"
        );
    }
}
