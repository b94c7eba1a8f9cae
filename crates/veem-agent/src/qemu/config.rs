//! The qemu driver's configuration (`[host.qemu]` in the server's file) and the choice of
//! accelerator.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hostnet::VxlanConfig;

/// How the qemu driver runs QEMU. Every field has a default, so an empty table is valid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// The emulator; a bare name is looked up in `PATH`.
    pub binary: PathBuf,
    /// `qemu-img`, which creates, inspects and exports disks.
    pub qemu_img: PathBuf,
    /// iproute2's `ip`, which builds the virtual LANs and plugs NICs' taps into them
    /// (iproute2's `bridge` is taken from beside it).
    pub ip: PathBuf,
    pub accel: AccelChoice,
    /// The machine type (`-machine`).
    pub machine: String,
    /// The CPU model (`-cpu`); by default `host` under KVM and `max` under TCG (`host` does
    /// not exist under TCG).
    pub cpu_model: Option<String>,
    /// How often a waiting operation (shutdown, a migration) looks again, in milliseconds.
    pub shutdown_poll_ms: u64,
    /// How long one QMP command may take before the driver gives up on it.
    pub qmp_timeout_ms: u64,
    /// How long a migration (to a file or to another host) may take in all.
    pub migration_timeout_ms: u64,
    /// The pause a live migration may impose on the guest at its end (`downtime-limit`).
    pub migration_downtime_limit_ms: u64,
    /// The bandwidth a live migration may use, in MiB/s (`max-bandwidth`).
    pub migration_max_bandwidth_mib_s: u64,
    /// The address an incoming migration listens on. Loopback suffices for hosts on one
    /// machine; a site of several machines sets the address the other hosts reach.
    pub migration_listen_address: String,
    /// How long a guest may take to release a vCPU that is unplugged.
    pub cpu_unplug_timeout_ms: u64,
    /// How this machine's virtual LANs reach the other machines of the site
    /// (`[host.qemu.vxlan]`). Needed only for a site of several machines: hosts on one
    /// machine share the LANs' bridges. Without it a LAN stays on this machine.
    pub vxlan: Option<VxlanConfig>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            qemu_img: PathBuf::from("qemu-img"),
            ip: PathBuf::from("ip"),
            accel: AccelChoice::Auto,
            machine: "q35".to_owned(),
            cpu_model: None,
            shutdown_poll_ms: 50,
            qmp_timeout_ms: 10_000,
            migration_timeout_ms: 600_000,
            migration_downtime_limit_ms: 100,
            migration_max_bandwidth_mib_s: 1024,
            migration_listen_address: "127.0.0.1".to_owned(),
            cpu_unplug_timeout_ms: 5_000,
            vxlan: None,
        }
    }
}

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM where the CPU really has virtualization extensions, TCG elsewhere.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model used when none is configured. `host` only means something under KVM.
    pub fn default_cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// Decides the accelerator for `Auto`: KVM only when the CPU flags of `/proc/cpuinfo` show
/// `vmx` (Intel) or `svm` (AMD) and `/dev/kvm` can be opened read-write. A `/dev/kvm` alone
/// proves nothing: some machines offer a software shim under that name on a CPU without the
/// extensions, and a guest under it is far slower than under TCG.
pub fn detect_accel(cpuinfo: &str, kvm_usable: bool) -> Accel {
    let has_extensions = cpuinfo.lines().any(|line| {
        let mut parts = line.splitn(2, ':');
        let key = parts.next().unwrap_or_default().trim();
        let value = parts.next().unwrap_or_default();
        key == "flags"
            && value
                .split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
    });
    if has_extensions && kvm_usable {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Resolves a configured choice on this machine, reading `/proc/cpuinfo` and opening
/// `/dev/kvm` only for `Auto`.
pub fn resolve_accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let kvm_usable = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            detect_accel(&cpuinfo, kvm_usable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse tsc msr vmx smx est\nbugs\t\t: spectre_v1\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu sse2 svm extapic\n";
    const NO_EXTENSIONS: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor avx2\n\
        vmx flags\t: vnmi\nbugs\t\t: svm_lookalike\n";

    #[test]
    fn kvm_needs_both_the_cpu_extensions_and_a_usable_device() {
        let cases = [
            (INTEL, true, Accel::Kvm),
            (AMD, true, Accel::Kvm),
            (INTEL, false, Accel::Tcg),
            (AMD, false, Accel::Tcg),
            // A /dev/kvm shim on a CPU without the extensions must not be used.
            (NO_EXTENSIONS, true, Accel::Tcg),
            (NO_EXTENSIONS, false, Accel::Tcg),
            ("", true, Accel::Tcg),
        ];
        for (cpuinfo, kvm_usable, expected) in cases {
            assert_eq!(
                detect_accel(cpuinfo, kvm_usable),
                expected,
                "{cpuinfo:?} kvm_usable={kvm_usable}"
            );
        }
    }

    #[test]
    fn flags_are_whole_words() {
        let lookalikes = "flags\t\t: fpu vmxe svm2 nosvm\n";
        assert_eq!(detect_accel(lookalikes, true), Accel::Tcg);
    }

    #[test]
    fn tcg_never_uses_the_host_cpu_model() {
        assert_eq!(Accel::Tcg.default_cpu_model(), "max");
        assert_eq!(Accel::Kvm.default_cpu_model(), "host");
    }

    #[test]
    fn an_empty_table_is_the_default_config() {
        let config: QemuConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, QemuConfig::default());
        let tcg: QemuConfig = serde_json::from_str(r#"{"accel": "tcg", "machine": "pc"}"#).unwrap();
        assert_eq!((tcg.accel, tcg.machine.as_str()), (AccelChoice::Tcg, "pc"));
    }

    #[test]
    fn a_vxlan_table_joins_the_machine_to_its_peers() {
        let config: QemuConfig = serde_json::from_str(
            r#"{"vxlan": {"local": "192.168.0.1", "peers": ["192.168.0.2"]}}"#,
        )
        .unwrap();
        let vxlan = config.vxlan.unwrap();
        assert_eq!(vxlan.local, "192.168.0.1");
        assert_eq!(vxlan.peers, ["192.168.0.2"]);
        assert_eq!(vxlan.port, 4789);
        assert!(vxlan.learning, "learning is on unless turned off");
        assert!(serde_json::from_str::<QemuConfig>(r#"{"vxlan": {"peers": []}}"#).is_err());
    }
}
