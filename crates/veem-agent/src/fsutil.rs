//! File helpers shared by the drivers. Files are written beside their final name and renamed
//! into place, so a reader (or an agent restarted after a kill) sees either the old or the
//! whole new content, never a torn one.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::DriverError;

/// A name in the same directory as `path`, unique to this write.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    path.with_file_name(name)
}

pub(crate) async fn create_parent(path: &Path) -> Result<(), DriverError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| DriverError::file(parent, e))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically, creating its directory if needed.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    create_parent(path).await?;
    let temp = temp_path(path);
    if let Err(e) = tokio::fs::write(&temp, bytes).await {
        return Err(DriverError::file(&temp, e));
    }
    rename_into_place(&temp, path).await
}

/// Copies `source` to `destination` atomically, creating the destination's directory.
pub(crate) async fn copy_atomic(source: &Path, destination: &Path) -> Result<(), DriverError> {
    if !exists(source).await? {
        return Err(DriverError::MissingFile(source.to_owned()));
    }
    create_parent(destination).await?;
    let temp = temp_path(destination);
    if let Err(e) = tokio::fs::copy(source, &temp).await {
        // Best effort: the copy failed, the partial temp file is useless either way.
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(DriverError::Failed {
            op: "copy",
            reason: format!("{} to {}: {e}", source.display(), destination.display()),
        });
    }
    rename_into_place(&temp, destination).await
}

async fn rename_into_place(temp: &Path, path: &Path) -> Result<(), DriverError> {
    if let Err(e) = tokio::fs::rename(temp, path).await {
        let _ = tokio::fs::remove_file(temp).await;
        return Err(DriverError::file(path, e));
    }
    Ok(())
}

pub(crate) async fn exists(path: &Path) -> Result<bool, DriverError> {
    tokio::fs::try_exists(path)
        .await
        .map_err(|e| DriverError::file(path, e))
}

/// Reads a file, telling a missing one apart from one that cannot be read.
pub(crate) async fn read(path: &Path) -> Result<Vec<u8>, DriverError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(DriverError::MissingFile(path.to_owned()))
        }
        Err(e) => Err(DriverError::file(path, e)),
    }
}

/// The last `at_most` bytes of a file; nothing when there is no such file (a log not yet
/// written).
pub(crate) async fn read_tail(path: &Path, at_most: u64) -> Result<Vec<u8>, DriverError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DriverError::file(path, e)),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| DriverError::file(path, e))?
        .len();
    file.seek(io::SeekFrom::Start(size.saturating_sub(at_most)))
        .await
        .map_err(|e| DriverError::file(path, e))?;
    let mut bytes = Vec::new();
    // A log still being written: read what was there when asked, not what came since.
    (&mut file)
        .take(at_most.min(size))
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| DriverError::file(path, e))?;
    Ok(bytes)
}

/// Removes a file; a file that is already gone is fine.
pub(crate) async fn remove_if_present(path: &Path) -> Result<(), DriverError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::file(path, e)),
    }
}

/// Removes a directory and everything in it; a directory that is already gone is fine.
pub(crate) async fn remove_dir_if_present(path: &Path) -> Result<(), DriverError> {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::file(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn atomic_writes_replace_whole_files_and_leave_no_temp_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.json");
        write_atomic(&path, b"first").await.unwrap();
        write_atomic(&path, b"second").await.unwrap();
        assert_eq!(tokio::fs::read(&path).await.unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
    }

    #[tokio::test]
    async fn copying_a_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = copy_atomic(&missing, &dir.path().join("out"))
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::MissingFile(path) if path == missing));
        assert!(!dir.path().join("out").exists());
    }
}
