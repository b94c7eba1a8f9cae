//! The bootable disk: a "superfloppy" (one FAT file system over the whole disk, no partition
//! table) whose boot sector is syslinux's, which SeaBIOS boots like any hard disk. Made with
//! mtools and syslinux's mtools-based installer: no loop mount, no root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::tools::{MCOPY, MFORMAT, MMD, QEMU_IMG, SYSLINUX};
use crate::{io_error, GuestError, INITRD_FILE, KERNEL_COMMAND_LINE, KERNEL_FILE};

const SECTOR: u64 = 512;
/// A geometry for mformat that divides every whole number of MiB: 64 heads × 32 sectors.
const HEADS: u64 = 64;
const SECTORS_PER_TRACK: u64 = 32;
/// The volume's serial number, fixed so the same packages make the same image.
const VOLUME_SERIAL: &str = "7665656d";
const VOLUME_LABEL: &str = "VEEM-TINY";

/// syslinux boots the one entry at once: no prompt, no wait.
pub(crate) fn syslinux_config() -> String {
    format!(
        "# veem's test guest, written by the veem-guest crate.\n\
         DEFAULT veem\n\
         PROMPT 0\n\
         TIMEOUT 1\n\
         LABEL veem\n\
         \x20 KERNEL {KERNEL_FILE}\n\
         \x20 INITRD {INITRD_FILE}\n\
         \x20 APPEND {KERNEL_COMMAND_LINE}\n"
    )
}

/// Writes the raw bootable disk at `raw`: a FAT file system of `size_mb` MiB holding
/// syslinux, the kernel, the initramfs, its config and an empty `veem/` directory.
pub(crate) fn write_raw(
    raw: &Path,
    size_mb: u32,
    vmlinuz: &Path,
    initrd: &Path,
    work_dir: &Path,
) -> Result<(), GuestError> {
    let bytes = u64::from(size_mb) * 1024 * 1024;
    let file = fs::File::create(raw).map_err(io_error("create", raw))?;
    file.set_len(bytes).map_err(io_error("size", raw))?;
    drop(file);

    let image = raw.as_os_str();
    let sectors = (bytes / SECTOR).to_string();
    let heads = HEADS.to_string();
    let sectors_per_track = SECTORS_PER_TRACK.to_string();
    MFORMAT.run(
        [
            "-i".as_ref(),
            image,
            "-T".as_ref(),
            sectors.as_ref(),
            "-h".as_ref(),
            heads.as_ref(),
            "-s".as_ref(),
            sectors_per_track.as_ref(),
            "-N".as_ref(),
            VOLUME_SERIAL.as_ref(),
            "-v".as_ref(),
            VOLUME_LABEL.as_ref(),
            "::".as_ref(),
        ],
        None,
    )?;
    SYSLINUX.run(["--install".as_ref(), image], None)?;

    let config = work_dir.join("syslinux.cfg");
    fs::write(&config, syslinux_config()).map_err(io_error("write", &config))?;
    for (source, name) in [
        (vmlinuz, KERNEL_FILE),
        (initrd, INITRD_FILE),
        (config.as_path(), "syslinux.cfg"),
    ] {
        let target = format!("::/{name}");
        MCOPY.run(
            ["-i".as_ref(), image, source.as_os_str(), target.as_ref()],
            None,
        )?;
    }
    MMD.run(["-i".as_ref(), image, "::/veem".as_ref()], None)?;
    Ok(())
}

/// Converts the raw disk to qcow2 at `out`.
pub(crate) fn convert_to_qcow2(raw: &Path, out: &Path) -> Result<(), GuestError> {
    write_into_place(out, |partial| {
        QEMU_IMG.run(
            [
                "convert".as_ref(),
                "-f".as_ref(),
                "raw".as_ref(),
                "-O".as_ref(),
                "qcow2".as_ref(),
                raw.as_os_str(),
                partial.as_os_str(),
            ],
            None,
        )?;
        Ok(())
    })
}

/// Has `write` make an image in a file beside `out`, then renames it into place, so `out` is
/// never a half-written image.
pub(crate) fn write_into_place(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<(), GuestError>,
) -> Result<(), GuestError> {
    let dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if out.file_name().is_none() {
        return Err(GuestError::InvalidOut {
            out: out.to_path_buf(),
        });
    }
    let partial = tempfile::Builder::new()
        .prefix(".veem-guest-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io_error("write in", dir))?;
    write(partial.path())?;
    // A temporary file is private to its owner; an image is for everyone to read.
    fs::set_permissions(partial.path(), fs::Permissions::from_mode(0o644))
        .map_err(io_error("set the mode of", partial.path()))?;
    partial.persist(out).map_err(|error| GuestError::Io {
        action: "write",
        path: out.to_path_buf(),
        source: error.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslinux_boots_the_kernel_and_initramfs_at_once_with_the_guest_command_line() {
        let config = syslinux_config();
        let lines: Vec<&str> = config.lines().map(str::trim).collect();
        assert!(lines.contains(&"DEFAULT veem"));
        assert!(lines.contains(&"PROMPT 0"));
        assert!(lines.contains(&"KERNEL vmlinuz"));
        assert!(lines.contains(&"INITRD initrd.img"));
        assert!(lines.contains(&format!("APPEND {KERNEL_COMMAND_LINE}").as_str()));
    }
}
