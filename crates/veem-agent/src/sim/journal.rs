//! The sim driver's record of its instances: one append-only file, `instances.journal`, with one
//! JSON line per change (`{"put": {...}}` or `{"remove": "vee-..."}`). A change costs one
//! `write` to a file that is already open, where a file per instance cost an inode allocation
//! or two per change, which dominated the profile of a 10,000-VEE scale test.
//!
//! Each line goes out in a single `write_all` and nothing is fsynced, so a kill of the process
//! leaves at most a torn last line, which replay ignores (its operation never returned `Ok`);
//! a crash of the machine may lose recent lines. The journal is compacted (the live instances
//! written to `instances.journal.tmp`, renamed over it) at every start and whenever it grows
//! past [`COMPACT_FACTOR`] times the live instances plus [`COMPACT_SLACK`] lines.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use veem_model::VeeId;

use super::SimInstance;
use crate::DriverError;

const JOURNAL_FILE: &str = "instances.journal";
const COMPACTION_FILE: &str = "instances.journal.tmp";
/// Compaction rewrites every live instance, so it waits until the journal holds several times
/// as many lines: its cost per change stays constant.
const COMPACT_FACTOR: usize = 4;
/// Spares a driver with few instances from compacting every few changes.
const COMPACT_SLACK: usize = 1000;

/// One change, as written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change<'a> {
    Put(&'a SimInstance),
    Remove(&'a VeeId),
}

/// One change, as read back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordedChange {
    Put(Box<SimInstance>),
    Remove(VeeId),
}

/// The open journal. Its owner serializes the calls and applies each change to its in-memory
/// map only after [`Journal::append`] returned `Ok`.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    /// Complete lines in the file.
    lines: usize,
    /// A write failed part-way, so the file may end in a fragment that the next line would
    /// glue onto: it is rewritten from memory before anything else is appended.
    damaged: bool,
    /// The VEEs the file has a line about, so that a purge knows whether it must be rewritten
    /// to hold nothing of a VEE any more.
    mentioned: HashSet<VeeId>,
}

impl Journal {
    /// Replays the journal in `state_dir` (none is an empty one) and compacts it. Synchronous:
    /// for start-up.
    ///
    /// Earlier builds kept one `<vee>.json` file per instance; no released version wrote them,
    /// so such files are ignored rather than migrated.
    pub(super) fn open(
        state_dir: &Path,
    ) -> Result<(Self, HashMap<VeeId, SimInstance>), DriverError> {
        let path = state_dir.join(JOURNAL_FILE);
        let instances = match std::fs::read(&path) {
            Ok(bytes) => replay(&bytes, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(DriverError::file(&path, e)),
        };
        let (file, lines) = write_compacted(&path, instances.values())?;
        let journal = Self {
            path,
            file,
            lines,
            damaged: false,
            mentioned: instances.keys().cloned().collect(),
        };
        Ok((journal, instances))
    }

    /// Appends one change. `Ok` means it is in the file and survives a kill of the process.
    pub(super) fn append(&mut self, change: &Change<'_>) -> Result<(), DriverError> {
        if self.damaged {
            return Err(DriverError::Failed {
                op: "record instance",
                reason: format!("{} needs compacting first", self.path.display()),
            });
        }
        let mut line = serde_json::to_vec(change).map_err(|e| DriverError::Failed {
            op: "record instance",
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let vee = match change {
            Change::Put(instance) => &instance.vee,
            Change::Remove(vee) => vee,
        };
        // Noted before the write: a line written in part mentions the VEE too.
        self.mentioned.insert(vee.clone());
        if let Err(e) = self.file.write_all(&line) {
            self.damaged = true;
            return Err(DriverError::file(&self.path, e));
        }
        self.lines += 1;
        Ok(())
    }

    /// Whether the file has a line about `vee`.
    pub(super) fn mentions(&self, vee: &VeeId) -> bool {
        self.mentioned.contains(vee)
    }

    /// The VEEs the file has a line about.
    pub(super) fn mentioned(&self) -> Vec<VeeId> {
        self.mentioned.iter().cloned().collect()
    }

    /// Whether the journal should be rewritten before (or after) the next change: it has
    /// grown well past what `live` instances need, or a write left it damaged.
    pub(super) fn wants_compaction(&self, live: usize) -> bool {
        self.damaged || self.lines > live.saturating_mul(COMPACT_FACTOR) + COMPACT_SLACK
    }

    /// Replaces the journal with one `put` per live instance. Synchronous; on failure the old
    /// journal stays in use.
    pub(super) fn compact<'a>(
        &mut self,
        live: impl Iterator<Item = &'a SimInstance> + Clone,
    ) -> Result<(), DriverError> {
        let (file, lines) = write_compacted(&self.path, live.clone())?;
        self.file = file;
        self.lines = lines;
        self.damaged = false;
        self.mentioned = live.map(|instance| instance.vee.clone()).collect();
        Ok(())
    }
}

/// Applies the complete lines of a journal in order. The bytes after the last newline are a
/// line whose write was cut short by a kill: ignored, as its operation never succeeded.
fn replay(bytes: &[u8], path: &Path) -> Result<HashMap<VeeId, SimInstance>, DriverError> {
    let mut instances = HashMap::new();
    let mut lines = bytes.split(|&b| b == b'\n');
    let torn = lines.next_back().unwrap_or_default();
    if !torn.is_empty() {
        tracing::warn!(
            path = %path.display(),
            bytes = torn.len(),
            "sim journal ends in a torn line; ignoring it"
        );
    }
    for (index, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let change: RecordedChange =
            serde_json::from_slice(line).map_err(|e| DriverError::CorruptState {
                path: path.to_owned(),
                reason: format!("line {}: {e}", index + 1),
            })?;
        match change {
            RecordedChange::Put(instance) => {
                instances.insert(instance.vee.clone(), *instance);
            }
            RecordedChange::Remove(vee) => {
                instances.remove(&vee);
            }
        }
    }
    Ok(instances)
}

/// Writes `live` to the compaction file and renames it over the journal at `path`; answers the
/// open file, positioned at its end, and its line count.
fn write_compacted<'a>(
    path: &Path,
    live: impl Iterator<Item = &'a SimInstance>,
) -> Result<(File, usize), DriverError> {
    let mut bytes = Vec::new();
    let mut lines = 0;
    for instance in live {
        serde_json::to_writer(&mut bytes, &Change::Put(instance)).map_err(|e| {
            DriverError::Failed {
                op: "compact the sim journal",
                reason: e.to_string(),
            }
        })?;
        bytes.push(b'\n');
        lines += 1;
    }
    let temp = path.with_file_name(COMPACTION_FILE);
    // Not opened in append mode, which cannot truncate a file left by an earlier attempt; the
    // handle is the only writer, so every later write still lands at the end.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| DriverError::file(&temp, e))?;
    file.write_all(&bytes)
        .map_err(|e| DriverError::file(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| DriverError::file(path, e))?;
    Ok((file, lines))
}

#[cfg(test)]
mod tests {
    use veem_api::agent::{DeploySpec, InstanceState};

    use super::*;

    fn instance(seq: u64, state: InstanceState) -> SimInstance {
        let spec = DeploySpec {
            vee: VeeId::from_seq(seq),
            name: format!("vee{seq}"),
            cpu: 1,
            cpu_max: 2,
            memory_mb: 256,
            memory_max_mb: 512,
            disks: vec![],
            nics: vec![],
            hypervisor: None,
            raw: String::new(),
            ovf_env: None,
            boot: None,
            vee_dir: format!("/shared/vees/vee-{seq}").into(),
            stale_own_dir: false,
        };
        SimInstance::new(&spec, state, Some(seq * 100), 1_000)
    }

    fn journal_text(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap()
    }

    #[test]
    fn changes_replay_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, adopted) = Journal::open(dir.path()).unwrap();
        assert!(adopted.is_empty());
        let one = instance(1, InstanceState::Running);
        let two = instance(2, InstanceState::Running);
        let paused_two = SimInstance {
            state: InstanceState::Paused,
            ..two.clone()
        };
        journal.append(&Change::Put(&one)).unwrap();
        journal.append(&Change::Put(&two)).unwrap();
        journal.append(&Change::Remove(&one.vee)).unwrap();
        journal.append(&Change::Put(&paused_two)).unwrap();
        // Removing what is not there is harmless.
        journal.append(&Change::Remove(&one.vee)).unwrap();
        drop(journal);

        let (journal, adopted) = Journal::open(dir.path()).unwrap();
        assert_eq!(adopted, HashMap::from([(two.vee.clone(), paused_two)]));
        // The reopen compacted the five changes to the one live instance.
        assert_eq!(journal.lines, 1);
        assert_eq!(journal_text(dir.path()).lines().count(), 1);
        assert!(!dir.path().join(COMPACTION_FILE).exists());
    }

    #[test]
    fn lines_are_the_documented_json() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        let one = instance(1, InstanceState::Running);
        journal.append(&Change::Put(&one)).unwrap();
        journal.append(&Change::Remove(&one.vee)).unwrap();
        let text = journal_text(dir.path());
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0]["put"]["vee"], "vee-00000001");
        assert_eq!(lines[0]["put"]["boot_id"], 100);
        assert_eq!(lines[1], serde_json::json!({"remove": "vee-00000001"}));
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_dropped_by_the_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        let one = instance(1, InstanceState::Running);
        let two = instance(2, InstanceState::Running);
        journal.append(&Change::Put(&one)).unwrap();
        drop(journal);
        // A kill in the middle of writing the next line.
        let whole = serde_json::to_string(&Change::Put(&two)).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        file.write_all(&whole.as_bytes()[..whole.len() / 2])
            .unwrap();
        drop(file);

        let (_, adopted) = Journal::open(dir.path()).unwrap();
        assert_eq!(adopted, HashMap::from([(one.vee.clone(), one)]));
        assert!(journal_text(dir.path()).ends_with('\n'));
    }

    #[test]
    fn a_corrupt_line_before_the_last_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let good =
            serde_json::to_string(&Change::Put(&instance(1, InstanceState::Running))).unwrap();
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            format!("{good}\n{{not json\n{good}\n"),
        )
        .unwrap();
        let err = Journal::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, DriverError::CorruptState { reason, .. } if reason.starts_with("line 2:")),
            "{err}"
        );
    }

    #[test]
    fn compaction_is_wanted_past_the_bound_or_after_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.lines = COMPACT_SLACK + 4 * 10;
        assert!(!journal.wants_compaction(10));
        journal.lines += 1;
        assert!(journal.wants_compaction(10));
        assert!(!journal.wants_compaction(11));

        let one = instance(1, InstanceState::Running);
        journal.damaged = true;
        assert!(journal.wants_compaction(1_000_000));
        assert!(matches!(
            journal.append(&Change::Put(&one)),
            Err(DriverError::Failed { .. })
        ));
        journal.compact([&one].into_iter()).unwrap();
        assert!(!journal.wants_compaction(1));
        journal.append(&Change::Remove(&one.vee)).unwrap();
        assert_eq!(journal.lines, 2);
        assert_eq!(journal_text(dir.path()).lines().count(), 2);
    }

    #[test]
    fn old_per_instance_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vee-00000001.json"), b"{not json").unwrap();
        let (_, adopted) = Journal::open(dir.path()).unwrap();
        assert!(adopted.is_empty());
    }
}
