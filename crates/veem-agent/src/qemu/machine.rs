//! The QEMU command line of a VEE, and the machine shape that both ends of a migration must
//! agree on.
//!
//! A migration (to a file or to another host) carries device state, not devices: the receiving
//! QEMU must be started with the same devices in the same order. Most of them follow from the
//! [`DeploySpec`]; what a running VEE changes about itself (vCPUs plugged by a resize, and the
//! boot vCPU count, on which QEMU sizes e.g. the virtio-blk queues) is its [`MachineShape`],
//! kept in `<vee_dir>/qemu-machine.json` on the shared storage, so a restore or an incoming
//! migration on another host starts the very same machine.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use veem_api::agent::{BootPlan, DeploySpec};
use veem_layout::console_path;

use super::config::Accel;
use super::guest_agent::AGENT_PORT_NAME;

/// What a VEE's machine is made of beyond its spec; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    /// vCPUs on the command line (`-smp`).
    pub boot_cpus: u32,
    pub max_cpus: u32,
    /// The guest's RAM as QEMU allocates it (`-m`): the ceiling the balloon works under.
    pub memory_max_mb: u64,
    /// The balloon's target: the memory the guest is meant to have.
    pub memory_mb: u64,
    /// vCPUs added by `device_add`, in the order they were added.
    pub plugged_cpus: Vec<PluggedCpu>,
}

impl MachineShape {
    /// The shape of a fresh boot of `spec`. Maxima below the current values are read as the
    /// current values: a spec cannot ask for less than it starts with.
    pub fn for_boot(spec: &DeploySpec) -> Self {
        Self {
            boot_cpus: spec.cpu,
            max_cpus: spec.cpu_max.max(spec.cpu),
            memory_max_mb: spec.memory_max_mb.max(spec.memory_mb),
            memory_mb: spec.memory_mb,
            plugged_cpus: Vec::new(),
        }
    }

    /// The vCPUs the guest has now.
    pub fn cpus(&self) -> u32 {
        let plugged = u32::try_from(self.plugged_cpus.len()).unwrap_or(u32::MAX);
        self.boot_cpus.saturating_add(plugged)
    }
}

/// A vCPU added after boot, as `device_add` took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluggedCpu {
    pub id: String,
    pub driver: String,
    /// Its slot: `socket-id`, `core-id`, `thread-id`...
    pub props: BTreeMap<String, i64>,
}

/// How [`command_line`] names a disk's `-drive`: `drive-<target>`, the name QMP knows it by.
pub const DRIVE_ID_PREFIX: &str = "drive-";

/// The `-drive` id of the disk `target`.
pub fn drive_id(target: &str) -> String {
    format!("{DRIVE_ID_PREFIX}{target}")
}

/// The target (and serial) of the context disk, always the last drive and never booted from.
pub const CONTEXT_TARGET: &str = "context";

/// One virtio disk of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The guest-visible name (`vda`...), also its serial number.
    pub target: String,
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    pub read_only: bool,
    /// A CD-ROM drive holding the file as its medium (read-only), not a virtio disk.
    pub cdrom: bool,
}

/// Where one instance's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    pub record: PathBuf,
    pub pid: PathBuf,
    pub qmp: PathBuf,
    /// The socket QEMU serves the guest agent's virtio-serial port on.
    pub agent: PathBuf,
    pub log: PathBuf,
    pub console: PathBuf,
}

impl InstancePaths {
    pub fn new(state_dir: &Path, vee: &str, vee_dir: &Path) -> Self {
        let file = |extension: &str| state_dir.join(format!("{vee}.{extension}"));
        Self {
            record: file("json"),
            pid: file("pid"),
            qmp: file("qmp"),
            agent: file("agent"),
            log: file("log"),
            console: console_path(vee_dir),
        }
    }
}

/// The file in a VEE's directory that carries its [`MachineShape`].
pub fn shape_path(vee_dir: &Path) -> PathBuf {
    vee_dir.join("qemu-machine.json")
}

/// A NIC of one QEMU start: the host's side of it is the tap device `tap`, which QEMU makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicTap {
    pub target: String,
    pub mac: Option<String>,
    pub tap: String,
    /// The MTU of the NIC's LAN when it is not Ethernet's (a LAN joined by VXLAN), told to
    /// the guest (`host_mtu`) so it sends no frame the LAN would drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Everything one QEMU start depends on.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub vee: &'a str,
    pub shape: &'a MachineShape,
    pub accel: Accel,
    pub machine: &'a str,
    pub cpu_model: &'a str,
    pub drives: &'a [Drive],
    /// One NIC per entry, on its tap device.
    pub nics: &'a [NicTap],
    pub paths: &'a InstancePaths,
    /// `-incoming` (`defer`, `tcp:host:port`), for a restore or an incoming migration.
    pub incoming: Option<&'a str>,
    /// Direct kernel boot instead of the firmware booting the first disk.
    pub boot: Option<&'a BootPlan>,
}

/// The arguments of `qemu-system-x86_64` (without the program name) for one VEE.
///
/// The device order is fixed (disks in spec order, then the context disk the caller put last
/// among the drives, then NICs, then the balloon, then the guest agent's virtio-serial
/// controller and port, then the vCPUs plugged since boot) because a migration needs the
/// same devices at the same PCI addresses on both ends.
pub fn command_line(launch: &Launch<'_>) -> Vec<OsString> {
    let shape = launch.shape;
    let mut args = Args::default();
    args.push("-name").push(launch.vee);
    args.push("-machine").push(launch.machine);
    args.push("-accel").push(launch.accel.as_str());
    args.push("-cpu").push(launch.cpu_model);
    // Boot with the maximum; the balloon takes the guest down to its memory right away.
    args.push("-m").push(format!("{}M", shape.memory_max_mb));
    args.push("-smp")
        .push(format!("{},maxcpus={}", shape.boot_cpus, shape.max_cpus));
    args.push("-nodefaults").push("-no-user-config");
    args.push("-display").push("none");
    args.push("-msg").push("timestamp=on");
    args.push("-chardev").push(opts(
        "file,id=console,append=on,path=",
        &launch.paths.console,
    ));
    args.push("-serial").push("chardev:console");
    args.push("-chardev").push(opts(
        "socket,id=qmp,server=on,wait=off,path=",
        &launch.paths.qmp,
    ));
    args.push("-mon").push("chardev=qmp,mode=control");
    args.push("-pidfile").push(launch.paths.pid.as_os_str());
    // QEMU's own messages after it daemonized (e.g. why an incoming migration failed): without
    // `-D`, QEMU points its stderr at /dev/null.
    args.push("-D").push(launch.paths.log.as_os_str());
    args.push("-daemonize");
    // A guest that powers itself off (or panics, reported through pvpanic) leaves its process
    // waiting instead of ending it, so the agent can tell a clean power-off from a crash and the
    // VEEM can record the right state; the agent ends the process.
    args.push("-action").push("shutdown=pause,panic=pause");
    args.push("-device").push("pvpanic");
    if let Some(boot) = launch.boot {
        // The files were checked (and fetched) before launch: `check_boot_files`.
        if let Some(kernel) = boot.kernel.local_path() {
            args.push("-kernel").push(kernel.as_os_str());
        }
        if let Some(initrd) = boot.initrd.as_ref().and_then(|i| i.local_path()) {
            args.push("-initrd").push(initrd.as_os_str());
        }
        if !boot.cmdline.is_empty() {
            args.push("-append").push(boot.cmdline.as_str());
        }
    }
    // With a CD-ROM among the drives, the firmware is told the boot order: the descriptor's
    // disks in their order (the context disk never), so a VEE whose first bootable medium
    // is its CD boots from it (an installer on a blank disk). Without one, SeaBIOS's own
    // order (the first disk) is kept, so nothing changes for a VEE without a CD.
    let boot_order = launch.drives.iter().any(|d| d.cdrom);
    for (index, drive) in launch.drives.iter().enumerate() {
        let mut drive_opts = opts("if=none,file=", &drive.path);
        drive_opts.push(format!(
            ",id=drive-{},format={}{}{}",
            drive.target,
            drive.format,
            if drive.read_only || drive.cdrom {
                ",readonly=on"
            } else {
                ""
            },
            if drive.cdrom { ",media=cdrom" } else { "" }
        ));
        args.push("-drive").push(drive_opts);
        let bootindex = if boot_order && drive.target != CONTEXT_TARGET {
            format!(",bootindex={}", index + 1)
        } else {
            String::new()
        };
        if drive.cdrom {
            // A SCSI CD-ROM on a virtio-scsi controller of its own: the same on every machine
            // type, and SeaBIOS boots from it.
            args.push("-device")
                .push(format!("virtio-scsi-pci,id=scsi-{}", drive.target));
            args.push("-device").push(format!(
                "scsi-cd,bus=scsi-{target}.0,drive=drive-{target},id=disk-{target}{bootindex}",
                target = drive.target
            ));
        } else {
            args.push("-device").push(format!(
                "virtio-blk-pci,drive=drive-{target},id=disk-{target},serial={target}{bootindex}",
                target = drive.target
            ));
        }
    }
    for nic in launch.nics {
        let target = &nic.target;
        args.push("-netdev").push(format!(
            "tap,id=net-{target},ifname={},script=no,downscript=no",
            nic.tap
        ));
        let mut device = format!("virtio-net-pci,netdev=net-{target},id=nic-{target}");
        if let Some(mac) = &nic.mac {
            device.push_str(&format!(",mac={mac}"));
        }
        if let Some(mtu) = nic.mtu {
            device.push_str(&format!(",host_mtu={mtu}"));
        }
        args.push("-device").push(device);
    }
    args.push("-device").push("virtio-balloon-pci,id=balloon");
    // The guest's own agent reports over virtio-serial: no network needed, and QEMU serves
    // the host's end as a socket the driver reads.
    args.push("-device")
        .push("virtio-serial-pci,id=agent-serial");
    args.push("-chardev").push(opts(
        "socket,id=agent,server=on,wait=off,path=",
        &launch.paths.agent,
    ));
    args.push("-device").push(format!(
        "virtserialport,bus=agent-serial.0,chardev=agent,id=agent-port,name={AGENT_PORT_NAME}"
    ));
    for cpu in &shape.plugged_cpus {
        let mut device = format!("{},id={}", cpu.driver, cpu.id);
        for (key, value) in &cpu.props {
            device.push_str(&format!(",{key}={value}"));
        }
        args.push("-device").push(device);
    }
    if let Some(incoming) = launch.incoming {
        args.push("-incoming").push(incoming);
    }
    args.0
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.0.push(arg.into());
        self
    }
}

/// `prefix` followed by a path as a QEMU option value: QEMU splits options at commas, so a
/// comma in the path is written twice.
fn opts(prefix: &str, path: &Path) -> OsString {
    let mut value = OsString::from(prefix);
    let text = path.as_os_str().to_string_lossy();
    if text.contains(',') {
        value.push(text.replace(',', ",,"));
    } else {
        value.push(path.as_os_str());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use veem_api::agent::SourcePlan;
    use veem_model::VeeId;

    fn spec() -> DeploySpec {
        DeploySpec {
            vee: VeeId::from_seq(7),
            name: "web".into(),
            cpu: 1,
            cpu_max: 2,
            memory_mb: 96,
            memory_max_mb: 128,
            disks: vec![],
            nics: vec![],
            hypervisor: None,
            raw: String::new(),
            ovf_env: None,
            boot: None,
            vee_dir: "/shared/vees/vee-00000007".into(),
            stale_own_dir: false,
        }
    }

    fn line(launch: &Launch<'_>) -> Vec<String> {
        command_line(launch)
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    fn following<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
            .collect()
    }

    #[test]
    fn a_cdrom_is_a_read_only_scsi_cd_and_the_boot_order_follows_the_disks() {
        let spec = spec();
        let shape = MachineShape::for_boot(&spec);
        let paths = InstancePaths::new(Path::new("/state"), spec.vee.as_str(), &spec.vee_dir);
        let drive = |target: &str, path: &str, format, cdrom| Drive {
            target: target.into(),
            path: path.into(),
            format,
            read_only: cdrom,
            cdrom,
        };
        let drives = [
            drive("vda", "/shared/blank.qcow2", "qcow2", false),
            drive("vdb", "/images/installer.iso", "raw", true),
            Drive {
                read_only: true,
                ..drive("context", "/shared/context.img", "raw", false)
            },
        ];
        let args = line(&Launch {
            vee: spec.vee.as_str(),
            shape: &shape,
            accel: Accel::Tcg,
            machine: "q35",
            cpu_model: "max",
            drives: &drives,
            nics: &[],
            paths: &paths,
            incoming: None,
            boot: None,
        });
        assert_eq!(
            following(&args, "-drive"),
            [
                "if=none,file=/shared/blank.qcow2,id=drive-vda,format=qcow2",
                "if=none,file=/images/installer.iso,id=drive-vdb,format=raw,readonly=on,media=cdrom",
                "if=none,file=/shared/context.img,id=drive-context,format=raw,readonly=on",
            ]
        );
        assert_eq!(
            following(&args, "-device")[1..5],
            [
                "virtio-blk-pci,drive=drive-vda,id=disk-vda,serial=vda,bootindex=1",
                "virtio-scsi-pci,id=scsi-vdb",
                "scsi-cd,bus=scsi-vdb.0,drive=drive-vdb,id=disk-vdb,bootindex=2",
                "virtio-blk-pci,drive=drive-context,id=disk-context,serial=context",
            ]
        );
    }

    #[test]
    fn the_command_line_names_the_vee_and_carries_its_shape() {
        let spec = spec();
        let mut shape = MachineShape::for_boot(&spec);
        shape.plugged_cpus.push(PluggedCpu {
            id: "vcpu1".into(),
            driver: "max-x86_64-cpu".into(),
            props: BTreeMap::from([
                ("core-id".into(), 1),
                ("socket-id".into(), 0),
                ("thread-id".into(), 0),
            ]),
        });
        let paths = InstancePaths::new(Path::new("/state"), spec.vee.as_str(), &spec.vee_dir);
        let drives = [
            Drive {
                target: "vda".into(),
                path: "/shared/a,b.qcow2".into(),
                format: "qcow2",
                read_only: false,
                cdrom: false,
            },
            Drive {
                target: "context".into(),
                path: "/shared/vees/vee-00000007/context.img".into(),
                format: "raw",
                read_only: true,
                cdrom: false,
            },
        ];
        let args = line(&Launch {
            vee: spec.vee.as_str(),
            shape: &shape,
            accel: Accel::Tcg,
            machine: "q35",
            cpu_model: "max",
            drives: &drives,
            nics: &[
                NicTap {
                    target: "eth0".into(),
                    mac: Some("52:54:00:00:00:01".into()),
                    tap: "vt70a1b2c".into(),
                    mtu: None,
                },
                NicTap {
                    target: "eth1".into(),
                    mac: None,
                    tap: "vt70b3d4e".into(),
                    mtu: Some(1450),
                },
            ],
            paths: &paths,
            incoming: Some("defer"),
            boot: Some(&BootPlan {
                kernel: SourcePlan::file("/images/vmlinuz"),
                initrd: Some(SourcePlan::Fetch {
                    url: "http://images.example/initrd.img".into(),
                    cached: Some("/state/cache/0123".into()),
                }),
                cmdline: "console=ttyS0 quiet".into(),
            }),
        });
        assert_eq!(following(&args, "-kernel"), ["/images/vmlinuz"]);
        assert_eq!(following(&args, "-initrd"), ["/state/cache/0123"]);
        assert_eq!(following(&args, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(following(&args, "-name"), ["vee-00000007"]);
        assert_eq!(following(&args, "-accel"), ["tcg"]);
        assert_eq!(following(&args, "-cpu"), ["max"]);
        assert_eq!(following(&args, "-m"), ["128M"]);
        assert_eq!(following(&args, "-smp"), ["1,maxcpus=2"]);
        assert_eq!(following(&args, "-pidfile"), ["/state/vee-00000007.pid"]);
        assert_eq!(following(&args, "-incoming"), ["defer"]);
        assert!(args.contains(&"-daemonize".to_owned()));
        assert_eq!(
            following(&args, "-drive"),
            [
                "if=none,file=/shared/a,,b.qcow2,id=drive-vda,format=qcow2",
                "if=none,file=/shared/vees/vee-00000007/context.img,id=drive-context,format=raw,readonly=on",
            ]
        );
        assert_eq!(
            following(&args, "-device"),
            [
                "pvpanic",
                "virtio-blk-pci,drive=drive-vda,id=disk-vda,serial=vda",
                "virtio-blk-pci,drive=drive-context,id=disk-context,serial=context",
                "virtio-net-pci,netdev=net-eth0,id=nic-eth0,mac=52:54:00:00:00:01",
                "virtio-net-pci,netdev=net-eth1,id=nic-eth1,host_mtu=1450",
                "virtio-balloon-pci,id=balloon",
                "virtio-serial-pci,id=agent-serial",
                "virtserialport,bus=agent-serial.0,chardev=agent,id=agent-port,name=org.veem.agent.0",
                "max-x86_64-cpu,id=vcpu1,core-id=1,socket-id=0,thread-id=0",
            ]
        );
        assert_eq!(
            following(&args, "-netdev"),
            [
                "tap,id=net-eth0,ifname=vt70a1b2c,script=no,downscript=no",
                "tap,id=net-eth1,ifname=vt70b3d4e,script=no,downscript=no",
            ]
        );
        let chardevs = following(&args, "-chardev");
        assert_eq!(
            chardevs,
            [
                "file,id=console,append=on,path=/shared/vees/vee-00000007/console.log",
                "socket,id=qmp,server=on,wait=off,path=/state/vee-00000007.qmp",
                "socket,id=agent,server=on,wait=off,path=/state/vee-00000007.agent",
            ]
        );
        assert!(!args.contains(&"-no-reboot".to_owned()));
        assert_eq!(following(&args, "-action"), ["shutdown=pause,panic=pause"]);
    }

    #[test]
    fn maxima_below_the_current_size_are_read_as_the_current_size() {
        let mut spec = spec();
        spec.cpu = 4;
        spec.cpu_max = 2;
        spec.memory_max_mb = 0;
        let shape = MachineShape::for_boot(&spec);
        assert_eq!((shape.boot_cpus, shape.max_cpus), (4, 4));
        assert_eq!((shape.memory_mb, shape.memory_max_mb), (96, 96));
        assert_eq!(shape.cpus(), 4);
    }
}
