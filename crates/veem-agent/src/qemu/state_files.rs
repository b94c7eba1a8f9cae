//! The state directory's files of each VEE: `<vee>.json`, `.pid`, `.qmp`, `.agent` and `.log`.
//!
//! Kept apart because the files outlive the instances: adopting at start-up reads them,
//! ending an instance removes its own (the log stays, for a post-mortem), and purging a VEE
//! removes every `<vee>.<anything>`, also those of a VEE no instance of this driver ran.

use std::path::Path;

use serde::Serialize;
use veem_model::VeeId;

use super::machine::InstancePaths;
use crate::{fsutil, DriverError};

/// The VEE a state directory's file belongs to: `<vee>.<extension>`.
fn vee_of_file(name: &std::ffi::OsStr) -> Option<VeeId> {
    let (stem, _) = name.to_str()?.split_once('.')?;
    VeeId::parse(stem).ok()
}

/// Removes every file of `vee` from the state directory.
pub(super) fn remove_files_of(state_dir: &Path, vee: &VeeId) -> Result<(), DriverError> {
    let entries = std::fs::read_dir(state_dir).map_err(|e| DriverError::file(state_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DriverError::file(state_dir, e))?;
        if vee_of_file(&entry.file_name()).as_ref() != Some(vee) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::file(&path, e)),
        }
    }
    Ok(())
}

/// The VEEs the state directory has files of.
pub(super) fn vees_with_files(state_dir: &Path) -> Result<Vec<VeeId>, DriverError> {
    let entries = std::fs::read_dir(state_dir).map_err(|e| DriverError::file(state_dir, e))?;
    let mut vees = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DriverError::file(state_dir, e))?;
        vees.extend(vee_of_file(&entry.file_name()));
    }
    Ok(vees)
}

/// Removes what the state directory holds of a running instance; its log stays.
pub(super) fn remove_instance_files(paths: &InstancePaths) -> Result<(), DriverError> {
    for path in [&paths.record, &paths.pid, &paths.qmp, &paths.agent] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::file(path, e)),
        }
    }
    Ok(())
}

/// Writes `value` as JSON to `path`, whole or not at all.
pub(super) async fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DriverError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| DriverError::Failed {
        op: "encode state",
        reason: e.to_string(),
    })?;
    fsutil::write_atomic(path, &json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_removes_every_file_of_its_vee_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "vee-00000001.json",
            "vee-00000001.pid",
            "vee-00000001.qmp",
            "vee-00000001.agent",
            "vee-00000001.log",
            "vee-00000002.log",
            "vee-00000012.log",
            "vee-00000001-old.log",
            "notes.txt",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mut found = vees_with_files(dir.path()).unwrap();
        found.sort();
        found.dedup();
        assert_eq!(
            found,
            vec![VeeId::from_seq(1), VeeId::from_seq(2), VeeId::from_seq(12)]
        );
        remove_files_of(dir.path(), &VeeId::from_seq(1)).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "vee-00000001-old.log",
                "vee-00000002.log",
                "vee-00000012.log"
            ]
        );
        // Nothing left of it: no error.
        remove_files_of(dir.path(), &VeeId::from_seq(1)).unwrap();
    }
}
