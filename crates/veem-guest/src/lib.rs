//! veem's own tiny test guest, built from Debian packages: one bootable disk image, like a
//! real cloud image, that SeaBIOS boots through syslinux into Debian's cloud kernel and a
//! busybox initramfs. At every boot the guest prints [`BOOT_MARKER`] on its serial console,
//! appends a line to [`BOOT_LOG_PATH`] on its own disk, copies the `ovf-env.xml` of a context
//! disk (another virtio disk, or a CD on virtio-scsi; vfat or ISO 9660) to [`OVF_ENV_PATH`],
//! configures the network its context describes, probes the peers it names, prints
//! [`READY_MARKER`], and powers off cleanly on the ACPI power button (or by itself, when its
//! context sets [`POWEROFF_AFTER_PROPERTY`]). [`build`] writes it as a qcow2 file
//! (`veem guest build --out PATH`), and, asked for it, as an installer ISO too
//! ([`write_installer_iso`], `--iso PATH`): the same kernel and initramfs on a CD that
//! isolinux boots. Booted from a CD with no disk of its own (or none it can write), the guest
//! records no boot (`boot=0`) and does the rest as ever.
//!
//! The network, from the context's properties (`<Property oe:key=.. oe:value=../>`, whatever
//! the namespace prefix):
//! - each `veem.nic.<target>.mac` ([`NIC_PROPERTY_PREFIX`], [`NIC_MAC_SUFFIX`]) names a NIC
//!   by its MAC (any case): the guest finds the interface with that address, whatever the
//!   kernel called it, gives it `veem.nic.<target>.ip` / `veem.nic.<target>.prefix`
//!   ([`NIC_IP_SUFFIX`], [`NIC_PREFIX_SUFFIX`]; the prefix defaults to
//!   [`DEFAULT_NIC_PREFIX`]), brings it up, and prints `veem-guest: <target> <interface>
//!   <ip>/<prefix>`. A NIC it cannot configure is reported as `veem-guest: cannot ...`.
//! - it always serves TCP echo on port [`ECHO_PORT`] and a TCP discard sink on
//!   [`DISCARD_PORT`], on every address, one connection after another or several at once;
//! - before [`READY_MARKER`], for each `ip:port` of [`PROBE_PROPERTY`] (comma-separated), it
//!   sends a line to that echo service and appends `ip:port ok` (the line came back) or
//!   `ip:port fail` to [`PROBE_LOG_PATH`], retrying for about [`PROBE_BUDGET_MS`]: a peer
//!   must be serving by then;
//! - after [`READY_MARKER`], in the background: [`BENCH_SEND_PROPERTY`] and
//!   [`BENCH_PING_PROPERTY`] measure the network into [`BENCH_LOG_PATH`], then
//!   [`BENCH_DONE_MARKER`] is printed.
//!
//! Its own agent: after [`READY_MARKER`], in the background, the guest writes one line of KPIs
//! every [`KPI_INTERVAL_S`] seconds to the virtio-serial port named [`AGENT_PORT_NAME`]
//! (QEMU: `-device virtio-serial-pci -chardev socket,id=agent,path=..,server=on,wait=off
//! -device virtserialport,chardev=agent,name=org.veem.agent.0`), where the host's agent reads
//! them; no network is involved. A line is [`KPI_LINE_PREFIX`] followed by ` key=value` pairs,
//! keys of `[a-z0-9_]+`, values without spaces:
//! `VEEM-KPI uptime_s=12.34 mem_total_kb=230012 mem_free_kb=190444 load1=0.08` (from
//! `/proc/uptime`, `/proc/meminfo`, `/proc/loadavg`). A write waits at most a second for the
//! host's side to listen, and the line is dropped otherwise. Without that port the guest says
//! so once on its console and reports nothing.
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
//! - Kernel modules (virtio, virtio-net, the ACPI button, evdev, vfat, iso9660, ...: the
//!   cloud kernel builds them as modules) are loaded by `/init` with busybox `insmod`, each
//!   after what its `.modinfo` says it depends on (the package has no `modules.dep`); the
//!   SCSI stack only when the machine has a virtio-scsi controller. Compressed modules
//!   (`.ko.xz`, `.ko.zst`) are decompressed at build time with the `xz`/`zstd` tools, as
//!   busybox `insmod` reads only plain ones (bookworm's cloud kernel ships them
//!   uncompressed).
//! - The initramfs is a newc cpio archive written here, uncompressed. busybox `acpid` runs
//!   `/etc/acpi/PWRF/00000080` on the power button: sync, unmount, `poweroff -f`.
//! - The disk: a FAT file system over the whole disk (no partition table) made with mtools,
//!   with syslinux installed by its mtools-based installer, converted to qcow2 by `qemu-img`.
//!   File times are `SOURCE_DATE_EPOCH` (2000-01-01), the volume serial number is fixed.
//! - The installer ISO: `xorriso -as mkisofs` grafts isolinux (Debian's `isolinux` and
//!   `syslinux-common`), the disk's syslinux config as `isolinux.cfg`, the kernel and the
//!   initramfs into `/isolinux/`, with isolinux as the El Torito no-emulation boot image; file
//!   and volume times are `SOURCE_DATE_EPOCH`.

mod cpio;
mod debian;
mod disk;
mod initramfs;
mod iso;
mod kernel;
pub mod testing;
mod tools;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use iso::{installer_iso_tools_installed, write_installer_iso};

/// Printed on the serial console at every boot, followed by ` boot=<n>` (`n` the boot's
/// number in [`BOOT_LOG_PATH`], 0 when the guest has no disk of its own it can write (booted
/// from a CD) or could not mount it), once the boot is recorded on the disk.
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
/// A context property: when the VEE's `ovf-env.xml` sets it to a number of seconds, the guest
/// writes to its own disk that often once it is ready: it appends `write <n>` to
/// [`WRITES_LOG_PATH`], flushes it to the disk, then prints [`WROTE_MARKER`]` <n>` on its
/// console. It stands for a guest busy with its disk (while it moves, say).
pub const WRITE_EVERY_PROPERTY: &str = "veem.guest.write_every_s";
/// On the guest's disk: the lines [`WRITE_EVERY_PROPERTY`] asks for, `write 1`, `write 2`...,
/// counted on from the last line there at every boot.
pub const WRITES_LOG_PATH: &str = "veem/writes.log";
/// Printed with the number of each write of [`WRITE_EVERY_PROPERTY`], once it is on the disk.
pub const WROTE_MARKER: &str = "VEEM-GUEST-WROTE";
/// A context property: with [`NIC_MAC_SUFFIX`], [`NIC_IP_SUFFIX`] or [`NIC_PREFIX_SUFFIX`]
/// around a NIC's target (`eth0`, `eth1`, ...: a name on the host's side, which the guest's
/// interface need not have), the keys `veem.nic.<target>.mac` (`02:00:00:00:00:40`),
/// `veem.nic.<target>.ip` (`10.10.0.2`) and `veem.nic.<target>.prefix` (`24`). See
/// [`nic_property`].
pub const NIC_PROPERTY_PREFIX: &str = "veem.nic.";
/// The NIC's MAC address: how the guest finds the interface, in any case.
pub const NIC_MAC_SUFFIX: &str = ".mac";
/// The NIC's IPv4 address, without prefix.
pub const NIC_IP_SUFFIX: &str = ".ip";
/// The NIC's network prefix length; [`DEFAULT_NIC_PREFIX`] when the property is absent.
pub const NIC_PREFIX_SUFFIX: &str = ".prefix";
/// The prefix length of a NIC whose context gives none.
pub const DEFAULT_NIC_PREFIX: u8 = 24;
/// A context property: `ip:port` targets, comma-separated (`10.10.0.1:7,10.10.0.3:7`), each
/// probed before the guest is ready; see [`PROBE_LOG_PATH`].
pub const PROBE_PROPERTY: &str = "veem.probe";
/// How long the guest keeps trying one probe target before it records `fail`: ARP and the
/// peer's echo service may need a moment, but a missing peer must not hold the boot up for
/// long. An attempt takes at most 2 s (1 s to connect), and none starts in the last second
/// of the budget: an absent address fails after about 2.3 s, a peer that refuses after about
/// 2 s, one that accepts but never echoes after at most about 4 s.
pub const PROBE_BUDGET_MS: u32 = 3000;
/// A context property, `ip:port:megabytes` (`10.10.0.1:9:8`): once ready, the guest sends
/// that many MiB of zeros over TCP to the address (a [`DISCARD_PORT`] of a peer) and records
/// the time in [`BENCH_LOG_PATH`].
pub const BENCH_SEND_PROPERTY: &str = "veem.bench.send";
/// A context property, an IPv4 address: once ready (and after [`BENCH_SEND_PROPERTY`]), the
/// guest pings it 20 times, 200 ms apart, and records the round-trip times in
/// [`BENCH_LOG_PATH`].
pub const BENCH_PING_PROPERTY: &str = "veem.bench.ping";
/// The TCP echo service every guest runs on all its addresses (what a probe talks to).
pub const ECHO_PORT: u16 = 7;
/// The TCP discard service every guest runs on all its addresses: each connection's data
/// is read and thrown away (what [`BENCH_SEND_PROPERTY`] sends to).
pub const DISCARD_PORT: u16 = 9;
/// Printed when the benchmarks the context asked for are done and recorded; never printed
/// when it asked for none.
pub const BENCH_DONE_MARKER: &str = "VEEM-GUEST-BENCH-DONE";
/// On the guest's disk: one line per probe, `<ip>:<port> ok` or `<ip>:<port> fail`, appended
/// at every boot (see [`probe_results`]), flushed to the disk before [`READY_MARKER`].
pub const PROBE_LOG_PATH: &str = "veem/probe.log";
/// On the guest's disk, appended at every boot and flushed before [`BENCH_DONE_MARKER`]:
/// `send <ip>:<port> <bytes> <milliseconds>`, `ping <ip> min/avg/max <min>/<avg>/<max> ms`,
/// or `send <ip>:<port> fail`, `ping <ip> fail` (see [`bench_results`]).
pub const BENCH_LOG_PATH: &str = "veem/bench.log";
/// On the guest's disk (FAT, from its root): one line per boot, `boot <n> <UTC time> uptime
/// <seconds>`.
pub const BOOT_LOG_PATH: &str = "veem/boot.log";
/// On the guest's disk: the `ovf-env.xml` found on a context disk at the last boot.
pub const OVF_ENV_PATH: &str = "veem/ovf-env.xml";
/// The name of the virtio-serial port the guest's agent writes its KPIs to (QEMU's
/// `virtserialport,name=`); the guest finds it by this name among its `/dev/vport*`.
pub const AGENT_PORT_NAME: &str = "org.veem.agent.0";
/// The first word of every KPI line on [`AGENT_PORT_NAME`], before its ` key=value` pairs.
pub const KPI_LINE_PREFIX: &str = "VEEM-KPI";
/// How often the guest's agent reports, in seconds.
pub const KPI_INTERVAL_S: u32 = 2;
/// The figures of every KPI line, in this order: seconds since boot (`/proc/uptime`, with
/// hundredths), the memory the guest sees and how much of it is free (`MemTotal`, `MemFree`,
/// in kB), and the one-minute load average.
pub const KPI_KEYS: [&str; 4] = ["uptime_s", "mem_total_kb", "mem_free_kb", "load1"];
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
    /// Also write the installer ISO here ([`write_installer_iso`]).
    pub iso: Option<PathBuf>,
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
            iso: None,
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
    /// The installer ISO, when [`BuildOptions::iso`] asked for it.
    pub iso: Option<PathBuf>,
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
    if let Some(iso) = &options.iso {
        tracing::info!("writing the installer ISO");
        write_installer_iso(&kernel.vmlinuz, &initrd, iso)?;
    }
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
        iso: options.iso.clone(),
    })
}

/// The number of boots a guest's [`BOOT_LOG_PATH`] records.
pub fn boot_count(boot_log: &str) -> usize {
    boot_log
        .lines()
        .filter(|line| line.starts_with("boot "))
        .count()
}

/// The key of one of a NIC's context properties: `suffix` is [`NIC_MAC_SUFFIX`],
/// [`NIC_IP_SUFFIX`] or [`NIC_PREFIX_SUFFIX`]; `nic_property("eth0", NIC_IP_SUFFIX)` is
/// `veem.nic.eth0.ip`.
pub fn nic_property(target: &str, suffix: &str) -> String {
    format!("{NIC_PROPERTY_PREFIX}{target}{suffix}")
}

/// One line of a guest's [`PROBE_LOG_PATH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// `ip:port`, as the context gave it.
    pub target: String,
    /// Whether the line sent came back.
    pub ok: bool,
}

/// The probes a guest's [`PROBE_LOG_PATH`] records, oldest first; lines of another shape
/// are left out.
pub fn probe_results(probe_log: &str) -> Vec<ProbeResult> {
    probe_log
        .lines()
        .filter_map(|line| {
            let (target, result) = line.split_once(' ')?;
            let ok = match result {
                "ok" => true,
                "fail" => false,
                _ => return None,
            };
            Some(ProbeResult {
                target: target.to_owned(),
                ok,
            })
        })
        .collect()
}

/// One line of a guest's [`BENCH_LOG_PATH`].
#[derive(Debug, Clone, PartialEq)]
pub enum BenchResult {
    /// [`BENCH_SEND_PROPERTY`]: `bytes` sent to `target` (`ip:port`), all of them taken by
    /// the peer, in `millis` (from the first byte to the peer's close).
    Send {
        target: String,
        bytes: u64,
        millis: u64,
    },
    /// [`BENCH_PING_PROPERTY`]: the round-trip times to `target`, in milliseconds.
    Ping {
        target: String,
        min_ms: f64,
        avg_ms: f64,
        max_ms: f64,
    },
    /// A benchmark (`send` or `ping`) that could not reach `target`, or not finish.
    Failed { kind: String, target: String },
}

/// The results a guest's [`BENCH_LOG_PATH`] records, oldest first; lines of another shape
/// are left out.
pub fn bench_results(bench_log: &str) -> Vec<BenchResult> {
    bench_log.lines().filter_map(bench_result).collect()
}

fn bench_result(line: &str) -> Option<BenchResult> {
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        [kind @ ("send" | "ping"), target, "fail"] => Some(BenchResult::Failed {
            kind: (*kind).to_owned(),
            target: (*target).to_owned(),
        }),
        ["send", target, bytes, millis] => Some(BenchResult::Send {
            target: (*target).to_owned(),
            bytes: bytes.parse().ok()?,
            millis: millis.parse().ok()?,
        }),
        ["ping", target, "min/avg/max", times, "ms"] => {
            let times: Vec<f64> = times
                .split('/')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let [min_ms, avg_ms, max_ms] = times.as_slice() else {
                return None;
            };
            Some(BenchResult::Ping {
                target: (*target).to_owned(),
                min_ms: *min_ms,
                avg_ms: *avg_ms,
                max_ms: *max_ms,
            })
        }
        _ => None,
    }
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

    #[test]
    fn nic_keys_are_built_around_the_target() {
        assert_eq!(nic_property("eth0", NIC_MAC_SUFFIX), "veem.nic.eth0.mac");
        assert_eq!(nic_property("eth1", NIC_IP_SUFFIX), "veem.nic.eth1.ip");
        assert_eq!(
            nic_property("lan", NIC_PREFIX_SUFFIX),
            "veem.nic.lan.prefix"
        );
    }

    #[test]
    fn probe_lines_are_read_back_and_others_left_out() {
        let log = "10.10.0.1:7 ok\n10.10.0.99:7 fail\ngarbage\n10.10.0.1:7 maybe\n";
        assert_eq!(
            probe_results(log),
            [
                ProbeResult {
                    target: "10.10.0.1:7".to_owned(),
                    ok: true
                },
                ProbeResult {
                    target: "10.10.0.99:7".to_owned(),
                    ok: false
                },
            ]
        );
    }

    #[test]
    fn bench_lines_are_read_back_and_others_left_out() {
        let log = "send 10.10.0.1:9 8388608 1234\n\
                   ping 10.10.0.1 min/avg/max 0.512/1.250/3.100 ms\n\
                   send 10.10.0.99:9 fail\n\
                   ping 10.10.0.1 min/avg/max 1/2 ms\n\
                   send 10.10.0.1:9 lots 12\n";
        assert_eq!(
            bench_results(log),
            [
                BenchResult::Send {
                    target: "10.10.0.1:9".to_owned(),
                    bytes: 8_388_608,
                    millis: 1234
                },
                BenchResult::Ping {
                    target: "10.10.0.1".to_owned(),
                    min_ms: 0.512,
                    avg_ms: 1.25,
                    max_ms: 3.1
                },
                BenchResult::Failed {
                    kind: "send".to_owned(),
                    target: "10.10.0.99:9".to_owned()
                },
            ]
        );
    }
}
