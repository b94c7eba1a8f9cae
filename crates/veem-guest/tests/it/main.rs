//! Builds the test guest once per test binary and boots it under QEMU with TCG, the way
//! veem's hosts run it: through SeaBIOS and syslinux from a virtio disk, stopped by the ACPI
//! power button over QMP. What the guest did is read back from its disk, without mounting.

mod agent;
mod installer;
mod iso;
mod network;
mod qemu;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;
use veem_guest::{BuildOptions, GuestImage, BOOT_MARKER, POWEROFF_MARKER, READY_MARKER};

use crate::qemu::{qemu_is_installed, scsi_cd, virtio_disk, Vm};

/// The serial console must show each marker within this.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// After `system_powerdown`, QEMU must have exited by itself within this.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);

struct Built {
    dir: TempDir,
    image: GuestImage,
}

/// The image every test boots (through its own overlay), built on first use; `None`, after a
/// loud message, where QEMU is not installed.
fn guest() -> Option<&'static Built> {
    static BUILT: OnceLock<Built> = OnceLock::new();
    if !veem_guest::testing::require(
        qemu_is_installed(),
        "qemu-system-x86_64 is not installed; run scripts/install-deps",
    ) {
        return None;
    }
    Some(BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let started = std::time::Instant::now();
        let image = veem_guest::build(&BuildOptions {
            // For the installer ISO's tests: they make it from these.
            boot_files_dir: Some(dir.path().join("boot")),
            ..BuildOptions::new(dir.path().join("tiny.qcow2"))
        })
        .unwrap_or_else(|error| panic!("the guest builds: {error}"));
        eprintln!(
            "built {} (kernel {}, {} bytes) in {:.1?}",
            image.path.display(),
            image.kernel_version,
            image.size_bytes,
            started.elapsed()
        );
        Built { dir, image }
    }))
}

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|error| panic!("{program} runs: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are utf-8")
}

/// A copy-on-write overlay on the built image, as veem makes for a VEE (`clone: true`).
fn overlay(built: &Built, dir: &Path) -> PathBuf {
    let disk = dir.join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            path_str(&built.image.path),
            path_str(&disk),
        ],
    );
    disk
}

/// A raw copy of a (stopped) guest's disk, to read with mtools.
fn raw_copy(disk: &Path) -> PathBuf {
    let raw = disk.with_extension("raw");
    run(
        "qemu-img",
        &["convert", "-O", "raw", path_str(disk), path_str(&raw)],
    );
    raw
}

fn boot_log(disk: &Path) -> String {
    disk_file(disk, veem_guest::BOOT_LOG_PATH)
}

/// A text file on a (stopped) guest's disk, `path` from its root.
fn disk_file(disk: &Path, path: &str) -> String {
    let raw = raw_copy(disk);
    let text = run("mtype", &["-i", path_str(&raw), &format!("::/{path}")]);
    String::from_utf8(text).unwrap_or_else(|_| panic!("{path} is text"))
}

/// A small vfat context disk holding `ovf_env` as `ovf-env.xml`, as veem makes for a VEE.
fn vfat_context(dir: &Path, ovf_env: &str) -> PathBuf {
    let source = dir.join("ovf-env.xml");
    fs::write(&source, ovf_env).expect("write ovf-env.xml");
    let context = dir.join("context.img");
    run(
        "mformat",
        &[
            "-C",
            "-f",
            "1440",
            "-v",
            "CONTEXT",
            "-i",
            path_str(&context),
            "::",
        ],
    );
    run(
        "mcopy",
        &[
            "-i",
            path_str(&context),
            path_str(&source),
            "::/ovf-env.xml",
        ],
    );
    context
}

/// What a guest's console must never say: a missing program, a step of `/init` that failed,
/// a panic.
fn assert_no_complaints(serial: &str) {
    for complaint in ["not found", "veem-guest: cannot", "can't", "Kernel panic"] {
        assert!(
            !serial.contains(complaint),
            "the guest complained ({complaint}):\n{serial}"
        );
    }
}

/// Boots the disk (and any other devices), waits for both markers, then presses the power
/// button and waits for QEMU to end by itself. Gives the serial console's text.
fn boot_and_power_down(disk: &Path, devices: &[String], dir: &Path) -> String {
    power_down_when_ready(Vm::boot(disk, devices, dir))
}

/// [`boot_and_power_down`] for a machine already started.
fn power_down_when_ready(mut vm: Vm) -> String {
    let booted = vm.wait_for(BOOT_MARKER, BOOT_TIMEOUT);
    let ready = vm.wait_for(READY_MARKER, BOOT_TIMEOUT);
    eprintln!("boot under TCG: {BOOT_MARKER} after {booted:.2?}, {READY_MARKER} after {ready:.2?}");
    let stopped = vm.power_down(POWEROFF_TIMEOUT);
    eprintln!("power button to QEMU's exit: {stopped:.2?}");
    let serial = vm.serial();
    assert!(
        serial.contains(POWEROFF_MARKER),
        "the guest's handler ran:\n{serial}"
    );
    assert_no_complaints(&serial);
    serial
}

#[test]
fn the_image_is_a_qcow2_of_the_asked_size_holding_syslinux_the_kernel_and_the_initramfs() {
    let Some(built) = guest() else { return };
    assert!(
        built.image.kernel_version.ends_with("-cloud-amd64"),
        "{}",
        built.image.kernel_version
    );
    let names: Vec<&str> = built
        .image
        .packages
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            format!("linux-image-{}", built.image.kernel_version).as_str(),
            "busybox-static"
        ]
    );
    assert_eq!(
        built.image.size_bytes,
        fs::metadata(&built.image.path).expect("the image").len()
    );
    let info: serde_json::Value = serde_json::from_slice(&run(
        "qemu-img",
        &["info", "--output=json", path_str(&built.image.path)],
    ))
    .expect("qemu-img info gives JSON");
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 128 * 1024 * 1024);

    let scratch = tempfile::tempdir().expect("a temp dir");
    let copy = scratch.path().join("tiny.qcow2");
    fs::copy(&built.image.path, &copy).expect("copy the image");
    let raw = raw_copy(&copy);
    let listing = String::from_utf8(run("mdir", &["-a", "-b", "-i", path_str(&raw), "::/"]))
        .expect("names are text");
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "::/initrd.img",
            "::/ldlinux.c32",
            "::/ldlinux.sys",
            "::/syslinux.cfg",
            "::/veem/",
            "::/vmlinuz",
        ]
    );
    let veem_dir = run("mdir", &["-b", "-i", path_str(&raw), "::/veem"]);
    assert!(veem_dir.is_empty(), "veem/ starts empty");
}

#[test]
fn every_boot_is_recorded_on_the_disk_and_the_power_button_powers_off() {
    let Some(built) = guest() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let disk = overlay(built, dir.path());

    let serial = boot_and_power_down(&disk, &[], dir.path());
    assert!(
        serial.contains(&format!("{BOOT_MARKER} boot=1")),
        "{serial}"
    );
    let log = boot_log(&disk);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert!(
        matches!(fields.as_slice(), ["boot", "1", time, "uptime", uptime]
            if time.ends_with('Z') && time.len() == 20 && uptime.parse::<f64>().is_ok()),
        "{log}"
    );

    let serial = boot_and_power_down(&disk, &[], dir.path());
    assert!(
        serial.contains(&format!("{BOOT_MARKER} boot=2")),
        "{serial}"
    );
    let log = boot_log(&disk);
    assert_eq!(veem_guest::boot_count(&log), 2, "{log}");
    assert!(
        log.lines()
            .nth(1)
            .is_some_and(|line| line.starts_with("boot 2 ")),
        "{log}"
    );
}

const OVF_ENV: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
    xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" oe:id=\"vee-42\">\n\
    <PropertySection>\n\
    <Property oe:key=\"greeting\" oe:value=\"grüß dich\"/>\n\
    </PropertySection>\n\
    </Environment>\n";

/// Boots with the context device, then checks the guest copied its ovf-env.xml byte for
/// byte onto its own disk and recorded one boot.
fn assert_context_is_copied(devices: &[String], device_name: &str, dir: &Path, disk: &Path) {
    let serial = boot_and_power_down(disk, devices, dir);
    assert!(
        serial.contains(&format!("veem-guest: context from {device_name}")),
        "{serial}"
    );
    let raw = raw_copy(disk);
    let copied = dir.join("copied.xml");
    run(
        "mcopy",
        &[
            "-i",
            path_str(&raw),
            "::/veem/ovf-env.xml",
            path_str(&copied),
        ],
    );
    assert_eq!(
        fs::read(&copied).expect("the copy"),
        OVF_ENV.as_bytes(),
        "the same bytes"
    );
    assert_eq!(veem_guest::boot_count(&boot_log(disk)), 1);
}

#[test]
fn the_ovf_env_of_a_vfat_context_disk_is_copied_onto_the_guest_disk() {
    let Some(built) = guest() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let disk = overlay(built, dir.path());
    let context = vfat_context(dir.path(), OVF_ENV);
    assert_context_is_copied(&virtio_disk(&context), "/dev/vdb", dir.path(), &disk);
}

#[test]
fn the_ovf_env_of_an_iso9660_context_cd_on_virtio_scsi_is_copied_onto_the_guest_disk() {
    let Some(built) = guest() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let disk = overlay(built, dir.path());
    let context = dir.path().join("context.iso");
    fs::write(
        &context,
        iso::single_file_iso("OVF-ENV.XML", OVF_ENV.as_bytes()),
    )
    .expect("write the ISO");
    assert_context_is_copied(&scsi_cd(&context), "/dev/sr0", dir.path(), &disk);
}

#[test]
fn the_same_packages_make_the_same_image() {
    let Some(built) = guest() else { return };
    let again = built.dir.path().join("again.qcow2");
    let image = veem_guest::build(&BuildOptions::new(&again)).expect("the guest builds again");
    assert_eq!(image.packages, built.image.packages);
    assert!(
        fs::read(&again).expect("the second image")
            == fs::read(&built.image.path).expect("the first"),
        "two builds from the same packages differ"
    );
}
