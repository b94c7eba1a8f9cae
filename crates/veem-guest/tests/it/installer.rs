//! The guest as an installer ISO, booted from a CD on virtio-scsi the way veem's qemu driver
//! attaches a `cdrom` disk: SeaBIOS boots isolinux from it (El Torito), isolinux the same
//! kernel and initramfs as the disk. With no disk of its own the guest records no boot and
//! does the rest as ever.

use std::path::{Path, PathBuf};

use veem_guest::BOOT_MARKER;

use crate::qemu::{scsi_cd, virtio_disk, Vm};
use crate::{guest, power_down_when_ready, vfat_context, OVF_ENV};

/// The installer ISO of the built guest, written into `dir`; `None`, after a loud message,
/// where QEMU, xorriso or isolinux is missing.
fn installer_iso(dir: &Path) -> Option<PathBuf> {
    let built = guest()?;
    if !veem_guest::testing::require(
        veem_guest::installer_iso_tools_installed(),
        "xorriso or isolinux is not installed; run scripts/install-deps",
    ) {
        return None;
    }
    let (kernel, initrd) = built
        .image
        .boot_files
        .as_ref()
        .expect("the guest is built with its boot files");
    let iso = dir.join("installer.iso");
    let started = std::time::Instant::now();
    veem_guest::write_installer_iso(kernel, initrd, &iso)
        .unwrap_or_else(|error| panic!("the installer ISO is written: {error}"));
    eprintln!(
        "wrote {} ({} bytes) in {:.1?}",
        iso.display(),
        std::fs::metadata(&iso).expect("the ISO").len(),
        started.elapsed()
    );
    Some(iso)
}

/// [`scsi_cd`] first in the firmware's boot order, as veem's qemu driver puts a VEE's first
/// disk when it is a CD: else SeaBIOS would try a hard disk first (the context disk).
fn boot_cd(iso: &Path) -> Vec<String> {
    let mut devices = scsi_cd(iso);
    devices
        .last_mut()
        .expect("the CD's device is last")
        .push_str(",bootindex=1");
    devices
}

#[test]
fn the_installer_iso_boots_from_a_cd_alone_and_records_no_boot() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let Some(iso) = installer_iso(dir.path()) else {
        return;
    };
    let serial = power_down_when_ready(Vm::boot_devices(&boot_cd(&iso), dir.path()));
    assert!(
        serial.contains(&format!("{BOOT_MARKER} boot=0")),
        "{serial}"
    );
    assert!(
        serial.contains("veem-guest: no disk of its own to write: this boot is not recorded"),
        "{serial}"
    );
    assert!(
        !serial.contains("veem-guest: context from"),
        "the installer CD is no context: {serial}"
    );
}

#[test]
fn booted_from_a_cd_the_guest_finds_its_context_on_its_first_disk_read_only() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let Some(iso) = installer_iso(dir.path()) else {
        return;
    };
    // As veem's qemu driver gives a VEE whose only disk is a CD: the CD, then the context
    // disk (read-only virtio), the first virtio disk the guest sees.
    let context = vfat_context(dir.path(), OVF_ENV);
    let mut devices = boot_cd(&iso);
    devices.extend(virtio_disk(&context));
    let serial = power_down_when_ready(Vm::boot_devices(&devices, dir.path()));
    assert!(
        serial.contains(&format!("{BOOT_MARKER} boot=0")),
        "the read-only context disk is not the guest's own: {serial}"
    );
    assert!(
        serial.contains("veem-guest: context from /dev/vda"),
        "{serial}"
    );
}
