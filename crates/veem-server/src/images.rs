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

/// The largest blank image [`put_blank_image`] makes: 64 TiB.
pub const MAX_BLANK_IMAGE_BYTES: u64 = 64 << 40;

/// Records a blank image of `size_bytes` (an empty qcow2 disk: it takes a few clusters whatever
/// its size) in the caller's image store as `name`, like an upload of those bytes.
pub async fn put_blank_image(
    veem: &Veem,
    caller: &Caller,
    name: &str,
    size_bytes: u64,
) -> Result<ImageRecord, CoreError> {
    if size_bytes == 0 || size_bytes > MAX_BLANK_IMAGE_BYTES {
        return Err(CoreError::malformed(
            "size",
            format!("a blank image is more than 0 and at most {MAX_BLANK_IMAGE_BYTES} bytes"),
        ));
    }
    let bytes = Bytes::from(blank_qcow2(size_bytes));
    let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
    put_image(veem, caller, name, body).await
}

/// An empty qcow2 (version 2, 64 KiB clusters, 16-bit refcounts) of `size_bytes` virtual
/// bytes, as `qemu-img create -f qcow2` makes one: the header, one refcount table cluster, one
/// refcount block, and the L1 table, every L1 entry empty. The size is rounded up to whole
/// 512-byte sectors, which is all QEMU reads of it.
pub fn blank_qcow2(size_bytes: u64) -> Vec<u8> {
    let size_bytes = size_bytes.next_multiple_of(512);
    const CLUSTER_BITS: u32 = 16;
    const CLUSTER: u64 = 1 << CLUSTER_BITS;
    // An L2 table of 8-byte entries maps this many bytes.
    const PER_L1_ENTRY: u64 = (CLUSTER / 8) * CLUSTER;
    let l1_entries = size_bytes.div_ceil(PER_L1_ENTRY).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    let (refcount_table, refcount_block, l1_table) = (CLUSTER, 2 * CLUSTER, 3 * CLUSTER);
    let clusters = 3 + l1_clusters;
    let mut image = vec![0u8; (clusters * CLUSTER) as usize];
    let mut header = Vec::with_capacity(72);
    header.extend_from_slice(b"QFI\xfb");
    header.extend_from_slice(&2u32.to_be_bytes()); // version
    header.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    header.extend_from_slice(&0u32.to_be_bytes()); // backing file name size
    header.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    header.extend_from_slice(&size_bytes.to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    header.extend_from_slice(&(l1_entries as u32).to_be_bytes());
    header.extend_from_slice(&l1_table.to_be_bytes());
    header.extend_from_slice(&refcount_table.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
    header.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    header.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    image[..header.len()].copy_from_slice(&header);
    let at = refcount_table as usize;
    image[at..at + 8].copy_from_slice(&refcount_block.to_be_bytes());
    // Every cluster of the file is used once.
    for cluster in 0..clusters as usize {
        let at = refcount_block as usize + 2 * cluster;
        image[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qemu-img` (installed with QEMU) reads the blank image as a clean qcow2 of its size.
    #[test]
    fn a_blank_qcow2_is_one_qemu_img_reads_and_checks() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "qemu-img is needed under CI"
            );
            eprintln!("skipped: no qemu-img");
            return;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        for size in [1u64 << 20, 10 << 30, (3 << 40) + 12345] {
            let path = dir.path().join(format!("blank-{size}.qcow2"));
            std::fs::write(&path, blank_qcow2(size)).expect("written");
            let check = std::process::Command::new("qemu-img")
                .args(["check", "-f", "qcow2"])
                .arg(&path)
                .output()
                .expect("qemu-img runs");
            assert!(
                check.status.success(),
                "{size}: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let info = std::process::Command::new("qemu-img")
                .args(["info", "--output=json", "-f", "qcow2"])
                .arg(&path)
                .output()
                .expect("qemu-img runs");
            let info: serde_json::Value =
                serde_json::from_slice(&info.stdout).expect("qemu-img info answers JSON");
            assert_eq!(info["virtual-size"], size.next_multiple_of(512), "{info}");
            assert_eq!(info["format"], "qcow2");
        }
        assert_eq!(
            blank_qcow2(1 << 30).len(),
            4 << 16,
            "a few clusters, whatever the size"
        );
    }
}
