//! veem's own tiny test guest, built from Debian packages: one bootable disk image, like a
//! real cloud image, that SeaBIOS boots through syslinux into Debian's cloud kernel and a
//! busybox initramfs. At every boot the guest prints [`BOOT_MARKER`] on its serial console,
//! appends a line to [`BOOT_LOG_PATH`] on its own disk, copies the `ovf-env.xml` of a context
//! disk (another virtio disk, or a CD on virtio-scsi; vfat or ISO 9660) to [`OVF_ENV_PATH`],
//! prints [`READY_MARKER`], and powers off cleanly on the ACPI power button (or by itself, when
//! its context sets [`POWEROFF_AFTER_PROPERTY`]). [`build`] writes
//! it as a qcow2 file (`veem guest build --out PATH`).
//!
//! It must never download anything but Debian packages, and only through apt
//! (`apt-get download`, from the machine's own apt sources); never need a loop mount or a
//! running guest to build, nor root (except for `apt-get update` on a machine whose apt has no
//! lists yet); and never write outside its output, work and cache paths. The same packages
//! always make the same bytes. The build machine is amd64, like the guest.
//!
//! How:
//! - Packages: `linux-image-cloud-amd64` names the current cloud kernel package
//!   (`linux-image-<abi>-cloud-amd64`, pinned to a version); `busybox-static` gives the
//!   userland. apt's candidate versions are asked with `apt-cache show` (when apt has no lists
//!   yet, `apt-get update -qq` runs once); each .deb is kept in the cache
//!   ([`default_cache_dir`]) under its version, so a rebuild downloads nothing until Debian
//!   moves on. Unpacked with `dpkg-deb -x`.
//! - Kernel modules (virtio, the ACPI button, evdev, vfat, iso9660, ...: the cloud kernel
//!   builds them as modules) are loaded by `/init` with busybox `insmod`, each after what its
//!   `.modinfo` says it depends on (the package has no `modules.dep`); the SCSI stack only
//!   when the machine has a virtio-scsi controller. Compressed modules (`.ko.xz`, `.ko.zst`)
//!   are decompressed at build time with the `xz`/`zstd` tools, as busybox `insmod` reads
//!   only plain ones (bookworm's cloud kernel ships them uncompressed).
//! - The initramfs is a newc cpio archive written here, uncompressed. busybox `acpid` runs
//!   `/etc/acpi/PWRF/00000080` on the power button: sync, unmount, `poweroff -f`.
//! - The disk: a FAT file system over the whole disk (no partition table) made with mtools,
//!   with syslinux installed by its mtools-based installer, converted to qcow2 by `qemu-img`.
//!   File times are `SOURCE_DATE_EPOCH` (2000-01-01), the volume serial number is fixed.

mod cpio;
mod debian;
mod disk;
mod initramfs;
mod kernel;
mod tools;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Printed on the serial console at every boot, followed by ` boot=<n>` (`n` the boot's
/// number in [`BOOT_LOG_PATH`], 0 when the guest's disk could not be mounted), once the
/// boot is recorded on the disk.
pub const BOOT_MARKER: &str = "VEEM-GUEST-BOOTED";
/// Printed once the context is copied and the guest listens to the ACPI power button.
pub const READY_MARKER: &str = "VEEM-GUEST-READY";
/// Printed on the serial console every 200 ms once ready, with the guest's `MemTotal` line:
/// the beat stops while the VEE is paused, and the memory follows a live resize.
pub const HEARTBEAT_MARKER: &str = "VEEM-GUEST-ALIVE";
/// Printed when the power button was pressed, just before the guest powers off.
pub const POWEROFF_MARKER: &str = "VEEM-GUEST-POWEROFF";
/// A context property: when the VEE's `ovf-env.xml` sets it to a number of seconds, the guest
/// powers itself off (as on the power button) that long after it is ready, at every boot. It
/// stands for a guest whose own user shuts it down.
pub const POWEROFF_AFTER_PROPERTY: &str = "veem.guest.poweroff_after_s";
/// On the guest's disk (FAT, from its root): one line per boot, `boot <n> <UTC time> uptime
/// <seconds>`.
pub const BOOT_LOG_PATH: &str = "veem/boot.log";
/// On the guest's disk: the `ovf-env.xml` found on a context disk at the last boot.
pub const OVF_ENV_PATH: &str = "veem/ovf-env.xml";
/// The guest kernel's command line, also for booting its kernel directly. `swiotlb=noforce`
/// lets QEMU's `maxmem` work, `memhp_default_state=online` puts hotplugged memory to use; the
/// rest makes boot fast under TCG (no KASLR, crypto self-tests, PS/2 probing or mitigations:
/// a test guest runs nothing untrusted) and SCSI scanning synchronous, so a CD is there when
/// `/init` looks.
pub const KERNEL_COMMAND_LINE: &str = "console=ttyS0 swiotlb=noforce memhp_default_state=online \
     quiet nokaslr mitigations=off cryptomgr.notests tsc=reliable no_timer_check i8042.noaux \
     i8042.nokbd scsi_mod.scan=sync";
pub const DEFAULT_SIZE_MB: u32 = 128;
/// Room for the kernel, the initramfs and syslinux, with some left for the guest.
pub const MIN_SIZE_MB: u32 = 32;

/// What to build and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The qcow2 file to write (replaced whole if it exists).
    pub out: PathBuf,
    /// Where the intermediate files go (kept, to look at); `None`: a temporary directory,
    /// removed afterwards.
    pub work_dir: Option<PathBuf>,
    /// The disk's virtual size.
    pub size_mb: u32,
    /// Where downloaded .debs are kept; `None`: [`default_cache_dir`], or no cache at all
    /// when there is no home directory.
    pub cache_dir: Option<PathBuf>,
    /// Also write the kernel and the initramfs here, as [`KERNEL_FILE`] and [`INITRD_FILE`],
    /// for direct kernel boot (with [`KERNEL_COMMAND_LINE`] and the disk as the VEE's first).
    pub boot_files_dir: Option<PathBuf>,
}

/// The kernel's file name in [`BuildOptions::boot_files_dir`], and on the disk's FAT root
/// where syslinux finds it.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs's file name in [`BuildOptions::boot_files_dir`] and on the disk's FAT root.
pub const INITRD_FILE: &str = "initrd.img";

impl BuildOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            work_dir: None,
            size_mb: DEFAULT_SIZE_MB,
            cache_dir: None,
            boot_files_dir: None,
        }
    }
}

/// A Debian package at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// The image [`build`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The qcow2 file (= [`BuildOptions::out`]).
    pub path: PathBuf,
    /// The guest kernel's release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The qcow2 file's size on disk.
    pub size_bytes: u64,
    /// The packages it was built from: the kernel's, then busybox's.
    pub packages: Vec<Package>,
    /// The kernel and the initramfs, when [`BuildOptions::boot_files_dir`] asked for them.
    pub boot_files: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("`{tool}` is not installed: {hint}")]
    MissingTool { tool: String, hint: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`")]
    Run {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot download the Debian package {package}: {stderr} \
         (check the network and apt's sources; `apt-get update` as root refreshes its lists)"
    )]
    Download { package: String, stderr: String },
    #[error(
        "apt offers no package {package}: {stderr} \
         (the test guest needs Debian's main archive in apt's sources)"
    )]
    UnknownPackage { package: String, stderr: String },
    #[error("the Debian package {package} has no {what}")]
    PackageContent { package: String, what: String },
    #[error("kernel {kernel_version} has no module {module}, neither as a file nor built in")]
    MissingModule {
        module: String,
        kernel_version: String,
    },
    #[error("kernel modules depend on each other in a cycle: {chain}")]
    ModuleCycle { chain: String },
    #[error("the guest's disk needs at least {min_mb} MiB, not {size_mb}")]
    TooSmall { size_mb: u32, min_mb: u32 },
    #[error("{out} cannot be the output: it names no file")]
    InvalidOut { out: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GuestError {
    let path = path.to_path_buf();
    move |source| GuestError::Io {
        action,
        path,
        source,
    }
}

/// `$XDG_CACHE_HOME/veem/guest`, else `$HOME/.cache/veem/guest`: the downloaded .debs, one
/// version per package (about 28 MB).
pub fn default_cache_dir() -> Option<PathBuf> {
    let absolute = |variable: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .map(|cache| cache.join("veem").join("guest"))
}

/// Builds the test guest and writes it as a qcow2 file at `options.out`.
pub fn build(options: &BuildOptions) -> Result<GuestImage, GuestError> {
    if options.size_mb < MIN_SIZE_MB {
        return Err(GuestError::TooSmall {
            size_mb: options.size_mb,
            min_mb: MIN_SIZE_MB,
        });
    }
    let temporary_work_dir;
    let work_dir = match &options.work_dir {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
            dir.clone()
        }
        None => {
            temporary_work_dir = tempfile::Builder::new()
                .prefix("veem-guest-")
                .tempdir()
                .map_err(io_error("create", &std::env::temp_dir()))?;
            temporary_work_dir.path().to_path_buf()
        }
    };
    let cache_dir = options
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .unwrap_or_else(|| work_dir.join("cache"));

    let mut apt = debian::Apt::default();
    let kernel_package = apt.kernel()?;
    let busybox_package = apt.candidate(debian::BUSYBOX_PACKAGE)?.package;
    let kernel_deb = debian::fetch(&kernel_package, &cache_dir, &work_dir)?;
    let busybox_deb = debian::fetch(&busybox_package, &cache_dir, &work_dir)?;

    // A leftover tree from an earlier build in the same work dir would mix two kernels.
    let unpacked = work_dir.join("unpacked");
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked).map_err(io_error("remove", &unpacked))?;
    }
    let kernel_root = unpacked.join("kernel");
    let busybox_root = unpacked.join("busybox");
    tracing::info!("unpacking the packages");
    debian::unpack(&kernel_deb, &kernel_root)?;
    debian::unpack(&busybox_deb, &busybox_root)?;

    let kernel = kernel::Kernel::find(&kernel_root, &kernel_package.name)?;
    let modules = kernel.guest_modules()?;
    let busybox_path = busybox_root.join("bin/busybox");
    let busybox = fs::read(&busybox_path).map_err(|_| GuestError::PackageContent {
        package: busybox_package.name.clone(),
        what: "bin/busybox".to_owned(),
    })?;
    let initrd = work_dir.join(INITRD_FILE);
    fs::write(&initrd, initramfs::build(&busybox, &modules)).map_err(io_error("write", &initrd))?;

    tracing::info!(kernel = %kernel.version, "writing the disk");
    let raw = work_dir.join("disk.raw");
    disk::write_raw(&raw, options.size_mb, &kernel.vmlinuz, &initrd, &work_dir)?;
    disk::convert_to_qcow2(&raw, &options.out)?;
    let boot_files = match &options.boot_files_dir {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
            let (kernel_out, initrd_out) = (dir.join(KERNEL_FILE), dir.join(INITRD_FILE));
            fs::copy(&kernel.vmlinuz, &kernel_out).map_err(io_error("write", &kernel_out))?;
            fs::copy(&initrd, &initrd_out).map_err(io_error("write", &initrd_out))?;
            Some((kernel_out, initrd_out))
        }
        None => None,
    };
    if options.work_dir.is_none() {
        // The temporary directory goes anyway; the 128 MiB raw disk should not wait for it.
        let _ = fs::remove_file(&raw);
    }
    let size_bytes = fs::metadata(&options.out)
        .map_err(io_error("read", &options.out))?
        .len();
    Ok(GuestImage {
        path: options.out.clone(),
        kernel_version: kernel.version,
        size_bytes,
        packages: vec![kernel_package, busybox_package],
        boot_files,
    })
}

/// The number of boots a guest's [`BOOT_LOG_PATH`] records.
pub fn boot_count(boot_log: &str) -> usize {
    boot_log
        .lines()
        .filter(|line| line.starts_with("boot "))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_too_small_for_the_kernel_is_refused_before_any_download() {
        let options = BuildOptions {
            size_mb: 8,
            ..BuildOptions::new("/nonexistent/tiny.qcow2")
        };
        let error = build(&options).expect_err("too small");
        assert_eq!(
            error.to_string(),
            "the guest's disk needs at least 32 MiB, not 8"
        );
    }

    #[test]
    fn boots_are_counted_by_their_lines() {
        let log =
            "boot 1 2026-01-01T00:00:00Z uptime 1.02\nboot 2 2026-01-01T00:01:00Z uptime 0.98\n";
        assert_eq!(boot_count(log), 2);
        assert_eq!(boot_count(""), 0);
    }

    #[test]
    fn the_command_line_keeps_what_memory_hotplug_needs() {
        let words: Vec<&str> = KERNEL_COMMAND_LINE.split_whitespace().collect();
        for needed in [
            "console=ttyS0",
            "swiotlb=noforce",
            "memhp_default_state=online",
        ] {
            assert!(words.contains(&needed), "{needed} is missing");
        }
    }
}
