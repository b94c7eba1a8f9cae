//! The image store's bytes: uploads are streamed to a temporary file beside their final place,
//! made durable, then renamed, so an image is either whole or absent, and never held in memory.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use veem_model::{ImageFormat, ImageName, ImageRecord, VeeId};

use crate::auth::Caller;
use crate::error::CoreError;
use crate::veem::{now_ms, Veem};

/// Streams an upload into the image store and records it: hashed while it streams, whole or
/// absent, never held in memory (see [`Images::put`](crate::veem::images::Images::put)).
pub async fn put_image<S, E>(
    veem: &Veem,
    caller: &Caller,
    name: &str,
    mut body: S,
) -> Result<ImageRecord, CoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let name = ImageName::new(name).map_err(|e| CoreError::malformed("name", e.to_string()))?;
    veem.check_image_replaceable(&caller.principal, &name)?;
    let dir = veem.images().upload_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| CoreError::internal("creating the image directory", e))?;
    let tmp = dir.join(format!(
        ".upload-{}-{}-{:08x}",
        name,
        now_ms(),
        rand::random::<u32>()
    ));
    let received = receive_upload(&mut body, &tmp, 4, "an image").await?;
    let format = ImageFormat::sniff(&received.head);
    // Checked again: a VEE may have started to use the name while the bytes streamed in.
    if let Err(e) = veem.check_image_replaceable(&caller.principal, &name) {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let record = ImageRecord {
        owner: caller.principal.clone(),
        name,
        format,
        size_bytes: received.size,
        created_ms: now_ms(),
        sha256: received.sha256,
    };
    veem.images().put(record.clone(), &tmp).await?;
    Ok(record)
}

/// `PUT /vees/{id}/disks/{target}`: streams the contents of a disk of the caller's DEFINED or
/// DESTROYED VEE into place (migration between sites brings a resting VEE's disks so).
pub async fn put_disk<S, E>(
    veem: &Veem,
    caller: &Caller,
    id: &VeeId,
    target: &str,
    mut body: S,
) -> Result<(), CoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let path = veem.disk_to_import(caller, id, target)?;
    let dir = path
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| CoreError::broken("a disk path has a parent"))?;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| CoreError::internal("creating the disk directory", e))?;
    let tmp = dir.join(format!(".upload-{target}-{}", now_ms()));
    let received = receive_upload(&mut body, &tmp, QCOW2_V3_HEADER_BYTES, "a disk").await?;
    // Checked again: the VEE may have been activated while the bytes streamed in.
    let checked =
        check_uploaded_disk(&received.head).and_then(|()| veem.disk_to_import(caller, id, target));
    if let Err(e) = checked {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| CoreError::internal("moving the disk into place", e))
}

/// The bytes of a qcow2 version 3 header up to its incompatible features.
const QCOW2_V3_HEADER_BYTES: usize = 80;

/// What [`receive_upload`] received.
pub(crate) struct Received {
    pub size: u64,
    /// Its first bytes (at most the `head_len` asked for).
    pub head: Vec<u8>,
    /// The SHA-256 of every byte, as 64 lowercase hex digits.
    pub sha256: String,
}

/// Streams an upload into `tmp` (synced), hashing it as it passes. Nothing stays at `tmp`
/// when it fails; an empty upload is refused.
pub(crate) async fn receive_upload<S, E>(
    body: &mut S,
    tmp: &Path,
    head_len: usize,
    what: &str,
) -> Result<Received, CoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let result = async {
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| CoreError::internal("creating an upload's file", e))?;
        let mut size: u64 = 0;
        let mut head = Vec::with_capacity(head_len);
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                CoreError::malformed("body", format!("the upload was cut short: {e}"))
            })?;
            if head.len() < head_len {
                let take = (head_len - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            size += chunk.len() as u64;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| CoreError::internal("writing an upload", e))?;
        }
        if size == 0 {
            return Err(CoreError::malformed(
                "body",
                format!("{what} cannot be empty"),
            ));
        }
        file.sync_all()
            .await
            .map_err(|e| CoreError::internal("syncing an upload", e))?;
        Ok(Received {
            size,
            head,
            sha256: crate::veem::images::hex(&hasher.finalize()),
        })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    result
}

/// Refuses a disk upload a host must not open: a qcow2 image that names another file (a
/// backing file, an external data file) would let its uploader read that file through a VEE.
/// `head` is the upload's first bytes (at least the 80 of a qcow2 version 3 header when it is
/// one); anything that is not qcow2 is opened as qcow2 by the hosts and fails to, harmlessly.
pub(crate) fn check_uploaded_disk(head: &[u8]) -> Result<(), CoreError> {
    if !head.starts_with(b"QFI\xfb") {
        return Ok(());
    }
    let be_u64 = |at: usize| -> Option<u64> {
        head.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    let refuse = |why: &str| Err(CoreError::malformed("body", format!("the disk {why}")));
    let version = head
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes);
    match (version, be_u64(8)) {
        (Some(2 | 3), Some(0)) => {}
        (Some(2 | 3), Some(_)) => return refuse("names a backing file; send a standalone qcow2"),
        _ => return refuse("is not a qcow2 image of version 2 or 3"),
    }
    // Version 3: incompatible feature bit 2 is an external data file.
    if version == Some(3) {
        match be_u64(72) {
            Some(features) if features & 0b100 == 0 => {}
            Some(_) => return refuse("names an external data file"),
            None => return refuse("has a cut qcow2 header"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod upload_tests {
    use super::check_uploaded_disk;

    fn header(version: u32, backing_offset: u64, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing_offset.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn an_uploaded_disk_names_no_other_file() {
        assert!(check_uploaded_disk(&header(3, 0, 0)).is_ok());
        assert!(check_uploaded_disk(&header(2, 0, 0)).is_ok());
        assert!(
            check_uploaded_disk(b"veem-sim blank disk").is_ok(),
            "not qcow2"
        );
        assert!(
            check_uploaded_disk(&header(3, 4096, 0)).is_err(),
            "a backing file"
        );
        assert!(
            check_uploaded_disk(&header(2, 4096, 0)).is_err(),
            "a backing file"
        );
        assert!(
            check_uploaded_disk(&header(3, 0, 0b100)).is_err(),
            "a data file"
        );
        assert!(
            check_uploaded_disk(&header(3, 0, 0)[..40]).is_err(),
            "cut short"
        );
        assert!(check_uploaded_disk(&header(1, 0, 0)).is_err(), "version 1");
    }
}
