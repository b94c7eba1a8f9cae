//! Where a site's files lie, defined once for the VEEM and its host agents.
//!
//! The VEEM names a VEE's directory (`<data_dir>/vees/<id>/`, on the site's shared storage) in
//! every deploy; the drivers create what lies inside it, and the VEEM reads some of it back
//! (a disk to export, the saved memory of a suspended VEE). Both sides join paths here, so
//! neither keeps its own copy of the other's layout. Nothing here touches the file system.
//!
//! ```text
//! <data_dir>/
//!   vees/<id>/                  a VEE's directory (removed at purge)
//!     disks/<target>.qcow2      a disk the VEE owns (overlay, copy or blank)
//!     disks/<target>.source     the source of a disk used in place
//!     memory.state              the saved memory of a suspended VEE
//!     context.img               the context disk (qemu driver)
//!     context/ovf-env.xml       the context document (sim driver)
//!     console.log               the serial console (qemu driver)
//!   blobs/sha256/<hex>          an image's bytes, once per digest (content-addressed)
//!   hosts/<host>/               an in-process host's state directory
//!     cache/                    its cache of fetched http(s) sources
//!     cache/sha256/<hex>        its cache of images fetched from the VEEM, by digest
//! ```

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use veem_model::{HostId, VeeId};

/// A VEE's directory: `<data_dir>/vees/<id>`.
pub fn vee_dir(data_dir: &Path, id: &VeeId) -> PathBuf {
    data_dir.join("vees").join(id.as_str())
}

/// A disk the VEE owns: `<vee_dir>/disks/<target>.qcow2`.
pub fn disk_path(vee_dir: &Path, target: &str) -> PathBuf {
    disks_dir(vee_dir).join(format!("{target}.qcow2"))
}

/// Where a disk used in place records its source, so that an export finds it from the VEE's
/// directory alone: `<vee_dir>/disks/<target>.source`.
pub fn source_note_path(vee_dir: &Path, target: &str) -> PathBuf {
    disks_dir(vee_dir).join(format!("{target}.source"))
}

fn disks_dir(vee_dir: &Path) -> PathBuf {
    vee_dir.join("disks")
}

/// The saved memory of a suspended VEE: `<vee_dir>/memory.state`.
pub fn memory_file(vee_dir: &Path) -> PathBuf {
    vee_dir.join("memory.state")
}

/// The qemu driver's context disk (a small FAT image): `<vee_dir>/context.img`.
pub fn context_image_path(vee_dir: &Path) -> PathBuf {
    vee_dir.join("context.img")
}

/// The sim driver's context document: `<vee_dir>/context/ovf-env.xml`.
pub fn context_document_path(vee_dir: &Path) -> PathBuf {
    vee_dir.join("context").join("ovf-env.xml")
}

/// The qemu driver's serial console, appended across boots and restores: `<vee_dir>/console.log`.
pub fn console_path(vee_dir: &Path) -> PathBuf {
    vee_dir.join("console.log")
}

/// The state directory of a host run in the VEEM's process: `<data_dir>/hosts/<host>`.
pub fn host_state_dir(data_dir: &Path, host: &HostId) -> PathBuf {
    data_dir.join("hosts").join(host.as_str())
}

/// A host's cache of fetched `http(s)://` sources, in its state directory: `<state_dir>/cache`.
pub fn fetch_cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache")
}

/// Where a front-end keeps the bytes of images whose SHA-256 is `sha256` (64 lowercase hex
/// digits, see [`is_sha256_hex`]): `<data_dir>/blobs/sha256/<hex>`.
pub fn blob_path(data_dir: &Path, sha256: &str) -> PathBuf {
    blobs_dir(data_dir).join(sha256)
}

/// The directory of [`blob_path`]'s files, where uploads stream in beside them:
/// `<data_dir>/blobs/sha256`.
pub fn blobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("blobs").join("sha256")
}

/// Where a host's cache keeps the image bytes of digest `sha256` fetched from the VEEM:
/// `<cache_dir>/sha256/<hex>` (apart from fetched URLs, named by the hash of the URL).
pub fn cached_blob_path(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join("sha256").join(sha256)
}

/// Whether `text` is a SHA-256 digest as veem writes one: 64 lowercase hex digits (so it is
/// a plain file name too).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The wall clock in milliseconds since the Unix epoch: the time base of every `*_ms` that the
/// VEEM and its hosts write (0 before the epoch, saturated far after it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vees_files_lie_in_its_directory() {
        let id = VeeId::from_seq(1);
        let dir = vee_dir(Path::new("/data"), &id);
        assert_eq!(dir, Path::new("/data/vees/vee-00000001"));
        let cases = [
            (disk_path(&dir, "vda"), "disks/vda.qcow2"),
            (source_note_path(&dir, "vdb"), "disks/vdb.source"),
            (memory_file(&dir), "memory.state"),
            (context_image_path(&dir), "context.img"),
            (context_document_path(&dir), "context/ovf-env.xml"),
            (console_path(&dir), "console.log"),
        ];
        for (path, below) in cases {
            assert_eq!(path, dir.join(below));
        }
    }

    #[test]
    fn a_hosts_files_lie_in_its_state_directory() {
        let host = HostId::new("h1").expect("a valid host name");
        let state = host_state_dir(Path::new("/data"), &host);
        assert_eq!(state, Path::new("/data/hosts/h1"));
        assert_eq!(fetch_cache_dir(&state), Path::new("/data/hosts/h1/cache"));
    }

    #[test]
    fn image_bytes_lie_by_digest() {
        let digest = "ab".repeat(32);
        assert!(is_sha256_hex(&digest));
        assert_eq!(
            blob_path(Path::new("/data"), &digest),
            Path::new("/data/blobs/sha256").join(&digest)
        );
        assert_eq!(
            cached_blob_path(Path::new("/state/cache"), &digest),
            Path::new("/state/cache/sha256").join(&digest)
        );
        for bad in [
            "",
            "AB",
            &"AB".repeat(32),
            &"ab".repeat(31),
            "../../etc/passwd",
        ] {
            assert!(!is_sha256_hex(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_clock_is_past_2020() {
        // 2020-01-01 in unix milliseconds: a clock read as seconds or as 0 fails this.
        assert!(now_ms() > 1_577_836_800_000);
    }
}
