//! The guest's whole userland: a busybox, its `/init` and the ACPI power-button handler, and
//! the kernel modules, as one uncompressed initramfs (the kernel needs no decompressor for
//! it, and under TCG copying is cheaper than inflating).

use crate::cpio::Archive;
use crate::kernel::GuestModules;
use crate::{
    AGENT_PORT_NAME, BENCH_DONE_MARKER, BENCH_LOG_PATH, BENCH_PING_PROPERTY, BENCH_SEND_PROPERTY,
    BOOT_LOG_PATH, BOOT_MARKER, DEFAULT_NIC_PREFIX, DISCARD_PORT, ECHO_PORT, HEARTBEAT_MARKER,
    KPI_INTERVAL_S, KPI_LINE_PREFIX, NIC_IP_SUFFIX, NIC_MAC_SUFFIX, NIC_PREFIX_SUFFIX,
    NIC_PROPERTY_PREFIX, OVF_ENV_PATH, POWEROFF_AFTER_PROPERTY, POWEROFF_MARKER, PROBE_BUDGET_MS,
    PROBE_LOG_PATH, PROBE_PROPERTY, READY_MARKER, WRITES_LOG_PATH, WRITE_EVERY_PROPERTY,
    WROTE_MARKER,
};

/// The busybox applets `/init`, its network functions and the handler call, as links in
/// `/bin` (no `--install` at boot: every process start counts under TCG).
const APPLETS: &[&str] = &[
    "acpid", "cat", "cp", "cut", "date", "dd", "grep", "insmod", "ip", "ls", "mkdir", "mount",
    "nc", "ping", "poweroff", "sed", "sh", "sleep", "sync", "timeout", "tr", "umount", "wc",
];

/// The shell functions of the guest's network (`network.sh`), before its `@NAME@` words are
/// replaced.
const NETWORK_FUNCTIONS: &str = include_str!("network.sh");

/// The shell functions of the guest's own agent (`agent.sh`), before its `@NAME@` words are
/// replaced.
const AGENT_FUNCTIONS: &str = include_str!("agent.sh");

/// Where the kernel lists the virtio-serial ports, each with its `name`.
const VIRTIO_PORTS_DIR: &str = "/sys/class/virtio-ports";

/// Where `/init` keeps the context's properties, one `key value` a line.
const PROPERTIES: &str = "/etc/ovf-properties";

/// The power-button handler, where acpid's built-in action table looks for it.
const POWER_BUTTON_HANDLER: &str = "/etc/acpi/PWRF/00000080";
/// The context's `ovf-env.xml`, kept in the initramfs for the whole boot.
const CONTEXT_COPY: &str = "/etc/ovf-env.xml";

/// Where `/init` mounts the guest's own disk and, briefly, a candidate context disk.
const DISK_MOUNT: &str = "/disk";
const CONTEXT_MOUNT: &str = "/context";

/// The initramfs: busybox from `busybox-static`, the modules in load order.
pub(crate) fn build(busybox: &[u8], modules: &GuestModules) -> Vec<u8> {
    let mut archive = Archive::new();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "var",
        "var/run",
        "var/log",
        "lib",
        "lib/modules",
        &DISK_MOUNT[1..],
        &CONTEXT_MOUNT[1..],
    ] {
        archive.directory(dir);
    }
    // The kernel opens /dev/console for init's output before anything mounts devtmpfs.
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        archive.symlink(&format!("bin/{applet}"), "busybox");
    }
    for module in modules.always.iter().chain(&modules.for_virtio_scsi) {
        archive.file(
            &format!("lib/modules/{}.ko", module.name),
            0o644,
            &module.bytes,
        );
    }
    archive.file(
        &POWER_BUTTON_HANDLER[1..],
        0o755,
        power_button_handler().as_bytes(),
    );
    let names = |group: &[crate::kernel::Module]| -> Vec<String> {
        group.iter().map(|module| module.name.clone()).collect()
    };
    let script = init_script(&names(&modules.always), &names(&modules.for_virtio_scsi));
    archive.file("init", 0o755, script.as_bytes());
    archive.finish()
}

/// The network functions `/init` defines, with veem's keys, paths and markers in place.
pub(crate) fn network_functions() -> String {
    let sed_literal = |text: &str| text.replace('.', "\\.");
    [
        ("@NIC_PROPERTY_PREFIX_RE@", sed_literal(NIC_PROPERTY_PREFIX)),
        ("@NIC_MAC_SUFFIX_RE@", sed_literal(NIC_MAC_SUFFIX)),
        ("@NIC_PROPERTY_PREFIX@", NIC_PROPERTY_PREFIX.to_owned()),
        ("@NIC_IP_SUFFIX@", NIC_IP_SUFFIX.to_owned()),
        ("@NIC_PREFIX_SUFFIX@", NIC_PREFIX_SUFFIX.to_owned()),
        ("@DEFAULT_NIC_PREFIX@", DEFAULT_NIC_PREFIX.to_string()),
        ("@PROBE_BUDGET_MS@", PROBE_BUDGET_MS.to_string()),
        ("@DISK_MOUNT@", DISK_MOUNT.to_owned()),
        ("@PROBE_LOG_PATH@", PROBE_LOG_PATH.to_owned()),
        ("@BENCH_LOG_PATH@", BENCH_LOG_PATH.to_owned()),
        ("@BENCH_DONE_MARKER@", BENCH_DONE_MARKER.to_owned()),
    ]
    .iter()
    .fold(NETWORK_FUNCTIONS.to_owned(), |text, (word, value)| {
        text.replace(word, value)
    })
}

/// The agent's functions `/init` defines, with the port's name and the line's format in place.
pub(crate) fn agent_functions() -> String {
    [
        ("@AGENT_PORT_NAME@", AGENT_PORT_NAME.to_owned()),
        ("@KPI_LINE_PREFIX@", KPI_LINE_PREFIX.to_owned()),
        ("@KPI_INTERVAL_S@", KPI_INTERVAL_S.to_string()),
    ]
    .iter()
    .fold(AGENT_FUNCTIONS.to_owned(), |text, (word, value)| {
        text.replace(word, value)
    })
}

/// PID 1: `always` modules, then `for_virtio_scsi` ones if the machine has a virtio-scsi
/// controller. It never exits: the kernel would panic. Shell built-ins where they do: every
/// process started costs a few milliseconds under TCG.
pub(crate) fn init_script(always: &[String], for_virtio_scsi: &[String]) -> String {
    let always = always.join(" ");
    let for_virtio_scsi = for_virtio_scsi.join(" ");
    let network_functions = network_functions();
    let agent_functions = agent_functions();
    format!(
        r#"#!/bin/sh
# PID 1 of veem's test guest, written by the veem-guest crate.
export PATH=/bin
{network_functions}
{agent_functions}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in {always}; do
	insmod /lib/modules/$module.ko || echo "veem-guest: cannot load $module"
done
# virtio-scsi (PCI 1af4:1004 or 1af4:1048) is how a CD reaches this kernel, virtio-blk
# (1af4:1001 or 1af4:1042) how a disk does.
for pci in /sys/bus/pci/devices/*; do
	read -r vendor < $pci/vendor
	read -r device < $pci/device
	case $vendor:$device in
	0x1af4:0x1004|0x1af4:0x1048) virtio_scsi=1;;
	0x1af4:0x1001|0x1af4:0x1042) virtio_blk=1;;
	esac
done
if [ -n "$virtio_scsi" ]; then
	for module in {for_virtio_scsi}; do
		insmod /lib/modules/$module.ko || echo "veem-guest: cannot load $module"
	done
fi
# Started now, it has opened the input devices by the time the context is copied.
acpid -f -c /etc/acpi -l /var/log/acpid.log &
acpid=$!

# The guest's own disk records every boot: boot <n> <date> uptime <seconds>. It is the first
# disk, when that is writable: booted from a CD, the guest may have no disk, or only its
# read-only context disk.
own_disk=
if [ -n "$virtio_blk" ]; then
	tries=0
	while [ ! -b /dev/vda ] && [ $tries -lt 100 ]; do sleep 0.02; tries=$((tries + 1)); done
	[ -b /dev/vda ] && read -r read_only < /sys/block/vda/ro && [ "$read_only" = 0 ] && own_disk=/dev/vda
fi
boot=0
if [ -z "$own_disk" ]; then
	echo "veem-guest: no disk of its own to write: this boot is not recorded"
elif mount -t vfat $own_disk {DISK_MOUNT}; then
	[ -d {DISK_MOUNT}/veem ] || mkdir {DISK_MOUNT}/veem
	boot=1
	if [ -f {DISK_MOUNT}/{BOOT_LOG_PATH} ]; then
		while read -r line; do boot=$((boot + 1)); done < {DISK_MOUNT}/{BOOT_LOG_PATH}
	fi
	read -r uptime idle < /proc/uptime
	echo "boot $boot $(date -u +%Y-%m-%dT%H:%M:%SZ) uptime $uptime" >> {DISK_MOUNT}/{BOOT_LOG_PATH}
	# A plain sync leaves the write in QEMU's hands without a flush, and a qcow2 overlay keeps
	# its new cluster mappings in memory until one: a guest killed then would lose the boot.
	# fsync on a vfat file flushes the device.
	sync
	sync {DISK_MOUNT}/{BOOT_LOG_PATH}
else
	echo "veem-guest: cannot mount /dev/vda: this boot is not recorded"
fi
echo "{BOOT_MARKER} boot=$boot"

# The context: the first other disk or CD holding ovf-env.xml, copied onto the own disk.
for device in /dev/vd[a-z] /dev/vd[a-z][0-9] /dev/sr[0-9]; do
	[ -b "$device" ] && [ "$device" != "$own_disk" ] || continue
	mount -o ro -t iso9660 "$device" {CONTEXT_MOUNT} 2>/dev/null || mount -o ro -t vfat "$device" {CONTEXT_MOUNT} 2>/dev/null || continue
	found=
	if [ -f {CONTEXT_MOUNT}/ovf-env.xml ]; then
		found=$device
		cp {CONTEXT_MOUNT}/ovf-env.xml {CONTEXT_COPY}
		if [ $boot -gt 0 ]; then
			cp {CONTEXT_MOUNT}/ovf-env.xml {DISK_MOUNT}/{OVF_ENV_PATH}
			sync
			sync {DISK_MOUNT}/{OVF_ENV_PATH}
		fi
	fi
	umount {CONTEXT_MOUNT}
	[ -n "$found" ] && echo "veem-guest: context from $found" && break
done
sync
properties={PROPERTIES}
: > $properties
[ -f {CONTEXT_COPY} ] && read_properties {CONTEXT_COPY} > $properties

# The network: the NICs the context names, an echo and a discard service on every address,
# then the probes, recorded before ready so that a guest shut down after it has them on disk.
ip link set lo up
configure_nics
nc -ll -p {ECHO_PORT} -e /bin/cat < /dev/null &
nc -ll -p {DISCARD_PORT} -e /bin/sh -c 'cat > /dev/null' < /dev/null &
probes=$(property {PROBE_PROPERTY}) && probe_all "$probes"

# Ready means the power button is heard: acpid has opened the input devices.
tries=0
until ls -l /proc/$acpid/fd 2>/dev/null | grep -q /dev/input/event || [ $tries -ge 200 ]; do
	sleep 0.01
	tries=$((tries + 1))
done
echo "{READY_MARKER}"
# A guest that powers itself off, when its context asks for it (after that many seconds).
poweroff_after=$(property {POWEROFF_AFTER_PROPERTY})
if [ -n "$poweroff_after" ]; then
	(sleep "$poweroff_after"; {POWER_BUTTON_HANDLER}) &
fi
bench_send=$(property {BENCH_SEND_PROPERTY})
bench_ping=$(property {BENCH_PING_PROPERTY})
if [ -n "$bench_send$bench_ping" ]; then
	bench "$bench_send" "$bench_ping" < /dev/null &
fi
# A guest busy with its disk, when its context asks for it: a flushed line every so often.
write_every=$(property {WRITE_EVERY_PROPERTY})
if [ -n "$write_every" ] && [ $boot -gt 0 ]; then
	(
		written=0
		if [ -f {DISK_MOUNT}/{WRITES_LOG_PATH} ]; then
			while read -r word n; do written=$n; done < {DISK_MOUNT}/{WRITES_LOG_PATH}
		fi
		while :; do
			written=$((written + 1))
			echo "write $written" >> {DISK_MOUNT}/{WRITES_LOG_PATH}
			sync {DISK_MOUNT}/{WRITES_LOG_PATH}
			echo "{WROTE_MARKER} $written"
			sleep "$write_every"
		done
	) < /dev/null &
fi
# The guest's own agent: its KPIs to the host, over virtio-serial.
report_kpis {VIRTIO_PORTS_DIR} /proc < /dev/null &
# A heartbeat on the console: it stops while the VEE is PAUSED, and carries the memory the
# guest sees (MemTotal follows the balloon), so both can be checked from outside.
beat=0
while :; do
	beat=$((beat + 1))
	echo "{HEARTBEAT_MARKER} $beat $(grep MemTotal /proc/meminfo)"
	sleep 0.2
done
"#
    )
}

/// Run by acpid on the ACPI power button (QMP `system_powerdown`): leave the disk clean and
/// power off at once.
fn power_button_handler() -> String {
    format!(
        r#"#!/bin/sh
echo "{POWEROFF_MARKER}" > /dev/console
sync
umount {DISK_MOUNT} 2>/dev/null || mount -o remount,ro {DISK_MOUNT} 2>/dev/null
poweroff -f
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_loads_the_modules_in_the_given_order() {
        let names = |names: &[&str]| {
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>()
        };
        let script = init_script(
            &names(&["virtio_ring", "virtio", "virtio_blk"]),
            &names(&["scsi_mod", "virtio_scsi"]),
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        let always = script
            .find("for module in virtio_ring virtio virtio_blk; do")
            .expect("the modules always loaded");
        let scsi = script
            .find("for module in scsi_mod virtio_scsi; do")
            .expect("the modules loaded for virtio-scsi");
        assert!(always < scsi);
    }

    #[test]
    fn init_prints_both_markers_and_records_the_boot_in_the_boot_log() {
        let script = init_script(&[], &[]);
        let booted = script
            .find(&format!("echo \"{BOOT_MARKER} boot=$boot\""))
            .expect("the boot marker");
        let recorded = script
            .find(&format!(">> /disk/{BOOT_LOG_PATH}"))
            .expect("the boot log line");
        let context = script
            .find(&format!("/disk/{OVF_ENV_PATH}"))
            .expect("the context copy");
        let ready = script
            .find(&format!("echo \"{READY_MARKER}\""))
            .expect("the ready marker");
        assert!(recorded < booted && booted < context && context < ready);
        let heartbeat = script.find(HEARTBEAT_MARKER).expect("the heartbeat");
        assert!(ready < heartbeat);
        assert!(
            script.trim_end().ends_with("done"),
            "the heartbeat loop never ends"
        );
    }

    #[test]
    fn init_brings_the_network_up_and_records_the_probes_before_ready_and_benches_after() {
        let script = init_script(&[], &[]);
        let position = |text: &str| {
            script
                .find(text)
                .unwrap_or_else(|| panic!("{text} is missing from /init"))
        };
        let context = position(&format!("/disk/{OVF_ENV_PATH}"));
        let properties = position(&format!("read_properties {CONTEXT_COPY} > $properties"));
        let loopback = position("ip link set lo up");
        let nics = position("\nconfigure_nics\n");
        let echo = position("nc -ll -p 7 -e /bin/cat < /dev/null &");
        let discard = position("nc -ll -p 9 -e /bin/sh -c 'cat > /dev/null' < /dev/null &");
        let probes = position("probes=$(property veem.probe) && probe_all \"$probes\"");
        let ready = position(&format!("echo \"{READY_MARKER}\""));
        let bench = position("bench \"$bench_send\" \"$bench_ping\" < /dev/null &");
        let agent = position("\nreport_kpis /sys/class/virtio-ports /proc < /dev/null &\n");
        let heartbeat = position(&format!("echo \"{HEARTBEAT_MARKER}"));
        assert!(context < properties && properties < loopback && loopback < nics);
        assert!(nics < echo && echo < discard && discard < probes && probes < ready);
        assert!(ready < bench && bench < agent && agent < heartbeat);
        for applet in ["ip", "nc", "ping", "dd", "timeout", "tr", "sed", "sync"] {
            assert!(APPLETS.contains(&applet), "{applet} is not linked");
        }
    }

    #[test]
    fn the_network_functions_have_every_word_replaced() {
        let functions = network_functions();
        assert!(!functions.contains('@'), "{functions}");
        assert!(functions.contains(
            "sed -n 's/^veem\\.nic\\.\\(.*\\)\\.mac \\(.*\\)$/\\1=\\2/p' \"$properties\""
        ));
        assert!(functions.contains("record \"/disk/veem/probe.log\" \"$target $result\""));
        assert!(functions.contains("record \"/disk/veem/bench.log\" \"$line\""));
        assert!(functions.contains("echo \"VEEM-GUEST-BENCH-DONE\""));
    }

    /// Runs `test` with the network functions defined, under the build machine's `sh`, in
    /// `dir` (also its `TMPDIR`); its standard output.
    fn run_network_functions(dir: &std::path::Path, test: &str) -> String {
        let script = format!(
            "{}\nproperties={}/properties\nboot=1\n{test}\n",
            network_functions(),
            dir.display()
        );
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir)
            .env("TMPDIR", dir)
            .output()
            .expect("sh runs");
        assert!(
            output.status.success(),
            "{test}\nfailed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("text")
    }

    /// A clock the fakes move on (`advance MS`), for `now_ms`, and a record of log lines.
    const FAKE_CLOCK: &str = r#"
echo 0 > clock
now_ms() { cat clock; }
advance() { echo $(($(cat clock) + $1)) > clock; }
sleep() { advance 300; }
timeout() { shift; "$@"; }
record() { echo "$1: $2" >> recorded; }
"#;

    #[test]
    fn properties_are_read_whatever_the_prefix_and_the_layout() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            dir.path().join("ovf-env.xml"),
            "<?xml version=\"1.0\"?>\n<Environment xmlns:oe=\"x\" oe:id=\"vee-1\">\n\
             <PropertySection>\n\
             \t<oe:Property oe:key=\"veem.nic.eth0.mac\" oe:value=\"02:00:00:00:00:0A\"/>\
             <Property ovfenv:key=\"veem.probe\" ovfenv:value=\"10.0.0.1:7,10.0.0.9:7\"/>\n\
             <Property\n  ovfenv:key=\"greeting\"\n  ovfenv:value=\"hello there\"/>\n\
             <Property ovfenv:key=\"empty\" ovfenv:value=\"\"/>\
             </PropertySection></Environment>",
        )
        .expect("write ovf-env.xml");
        let output = run_network_functions(
            dir.path(),
            r#"read_properties ovf-env.xml > "$properties"
property veem.nic.eth0.mac
property veem.probe
property greeting
property empty && echo "(empty)"
property veem.nic || echo "no veem.nic"
property PropertySection || echo "no section""#,
        );
        assert_eq!(
            output,
            "02:00:00:00:00:0A\n10.0.0.1:7,10.0.0.9:7\nhello there\n\n(empty)\n\
             no veem.nic\nno section\n"
        );
    }

    #[test]
    fn an_interface_is_found_by_its_mac_in_any_case() {
        let mut addresses = Vec::new();
        for entry in std::fs::read_dir("/sys/class/net")
            .expect("sysfs")
            .flatten()
        {
            let address = std::fs::read_to_string(entry.path().join("address"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            addresses.push((entry.file_name().into_string().expect("a name"), address));
        }
        let unique = addresses.iter().find(|(_, address)| {
            addresses
                .iter()
                .filter(|(_, other)| other == address)
                .count()
                == 1
        });
        let Some((name, address)) = unique else {
            panic!("no interface with a MAC of its own here: {addresses:?}");
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        let output = run_network_functions(
            dir.path(),
            &format!(
                "interface_with_mac {}\ninterface_with_mac 02:ff:ff:ff:ff:fe || echo none",
                address.to_uppercase()
            ),
        );
        assert_eq!(output, format!("{name}\nnone\n"));
    }

    #[test]
    fn nics_are_configured_by_mac_with_their_address_and_prefix() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            dir.path().join("properties"),
            "veem.nic.eth0.mac 02:00:00:00:00:0a\nveem.nic.eth0.ip 10.10.0.2\n\
             veem.nic.eth0.prefix 16\nveem.nic.eth1.mac 02:00:00:00:00:0b\n\
             veem.nic.eth1.ip 10.20.0.2\nveem.nic.gone.mac 02:00:00:00:00:99\n\
             veem.nic.bare.mac 02:00:00:00:00:0c\nveem.probe 10.10.0.1:7\n",
        )
        .expect("write the properties");
        let output = run_network_functions(
            dir.path(),
            &format!(
                "{FAKE_CLOCK}
interface_with_mac() {{
	case $1 in
	02:00:00:00:00:0a) echo ens4;;
	02:00:00:00:00:0b) echo ens3;;
	02:00:00:00:00:0c) echo ens5;;
	*) return 1;;
	esac
}}
ip() {{ echo \"ip $*\" >> commands; }}
configure_nics
cat commands"
            ),
        );
        assert_eq!(
            output,
            "veem-guest: eth0 ens4 10.10.0.2/16\n\
             veem-guest: eth1 ens3 10.20.0.2/24\n\
             veem-guest: cannot configure gone: no interface has MAC 02:00:00:00:00:99\n\
             veem-guest: cannot configure bare: its context has no veem.nic.bare.ip\n\
             ip addr add 10.10.0.2/16 dev ens4\nip link set ens4 up\n\
             ip addr add 10.20.0.2/24 dev ens3\nip link set ens3 up\n"
        );
    }

    #[test]
    fn a_probe_retries_until_its_peer_answers_and_gives_up_within_its_budget() {
        let dir = tempfile::tempdir().expect("a temp dir");
        // The peer at .1 refuses twice (its echo service is starting), then echoes; .99 is
        // absent: each attempt waits out the one-second connect timeout.
        let output = run_network_functions(
            dir.path(),
            &format!(
                "{FAKE_CLOCK}
echo 0 > refused
nc() {{
	shift 2
	echo \"$1:$2\" >> attempts
	case $1 in
	10.0.0.1)
		refused=$(cat refused)
		if [ $refused -lt 2 ]; then echo $((refused + 1)) > refused; advance 5; return 1; fi
		advance 20; cat;;
	*) advance 1000; return 1;;
	esac
}}
probe_all 10.0.0.1:7,10.0.0.99:7
echo \"took $(cat clock)\"
cat attempts recorded"
            ),
        );
        let lines: Vec<&str> = output.lines().collect();
        let took: u32 = lines[2]
            .strip_prefix("took ")
            .and_then(|ms| ms.parse().ok())
            .expect("the time taken");
        assert_eq!(
            lines[..2],
            [
                "veem-guest: probe 10.0.0.1:7 ok",
                "veem-guest: probe 10.0.0.99:7 fail"
            ]
        );
        let attempts = |target: &str| lines.iter().filter(|line| **line == target).count();
        assert_eq!(attempts("10.0.0.1:7"), 3);
        assert!(attempts("10.0.0.99:7") >= 2, "{output}");
        let absent_took = took - (2 * 5 + 20 + 2 * 300);
        assert!(absent_took <= PROBE_BUDGET_MS, "{output}");
        assert_eq!(
            lines[lines.len() - 2..],
            [
                "/disk/veem/probe.log: 10.0.0.1:7 ok",
                "/disk/veem/probe.log: 10.0.0.99:7 fail"
            ]
        );
    }

    #[test]
    fn benches_record_their_measures_or_their_failures_then_say_done() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let output = run_network_functions(
            dir.path(),
            &format!(
                "{FAKE_CLOCK}
dd() {{
	head -c 3000000 /dev/zero
	echo \"${{3#count=}}+0 records in\" >&2
	echo \"${{3#count=}}+0 records out\" >&2
}}
nc() {{ shift 2; [ $1 = 10.0.0.1 ] || return 1; advance 1234; wc -c > received; }}
ping() {{
	[ $8 = 10.0.0.1 ] || return 1
	printf 'PING 10.0.0.1 (10.0.0.1): 56 data bytes\\n\\n--- 10.0.0.1 ping statistics ---\\n'
	printf '20 packets transmitted, 20 packets received, 0%% packet loss\\n'
	printf 'round-trip min/avg/max = 0.512/1.250/3.100 ms\\n'
}}
bench 10.0.0.1:9:8 10.0.0.1
bench 10.0.0.99:9:8 10.0.0.99
bench '' 10.0.0.1
cat received recorded"
            ),
        );
        assert_eq!(
            output.lines().collect::<Vec<_>>(),
            [
                "veem-guest: bench send 10.0.0.1:9 8388608 1234",
                "veem-guest: bench ping 10.0.0.1 min/avg/max 0.512/1.250/3.100 ms",
                BENCH_DONE_MARKER,
                "veem-guest: bench send 10.0.0.99:9 fail",
                "veem-guest: bench ping 10.0.0.99 fail",
                BENCH_DONE_MARKER,
                "veem-guest: bench ping 10.0.0.1 min/avg/max 0.512/1.250/3.100 ms",
                BENCH_DONE_MARKER,
                "3000000",
                "/disk/veem/bench.log: send 10.0.0.1:9 8388608 1234",
                "/disk/veem/bench.log: ping 10.0.0.1 min/avg/max 0.512/1.250/3.100 ms",
                "/disk/veem/bench.log: send 10.0.0.99:9 fail",
                "/disk/veem/bench.log: ping 10.0.0.99 fail",
                "/disk/veem/bench.log: ping 10.0.0.1 min/avg/max 0.512/1.250/3.100 ms",
            ]
        );
    }

    #[test]
    fn the_agent_functions_have_every_word_replaced() {
        let functions = agent_functions();
        assert!(!functions.contains('@'), "{functions}");
        assert!(functions.contains("if [ \"$name\" = \"org.veem.agent.0\" ]; then"));
        assert!(functions.contains(
            "echo \"VEEM-KPI uptime_s=$uptime mem_total_kb=$total mem_free_kb=$free load1=$load1\""
        ));
        assert!(functions.contains("\t\tsleep 2\n"));
        let script = init_script(&[], &[]);
        assert!(script.contains(&functions), "/init defines them");
    }

    /// Runs `test` with the agent's functions defined, under the build machine's `sh`, in
    /// `dir`; its standard output.
    fn run_agent_functions(dir: &std::path::Path, test: &str) -> String {
        let script = format!("{}\n{test}\n", agent_functions());
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir)
            .output()
            .expect("sh runs");
        assert!(
            output.status.success(),
            "{test}\nfailed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("text")
    }

    /// A `/sys/class/virtio-ports` with these `(port, name)`s under `dir/ports`.
    fn fake_ports(dir: &std::path::Path, ports: &[(&str, &str)]) {
        std::fs::create_dir(dir.join("ports")).expect("the ports dir");
        for (port, name) in ports {
            let port = dir.join("ports").join(port);
            std::fs::create_dir(&port).expect("a port dir");
            std::fs::write(port.join("name"), format!("{name}\n")).expect("its name");
        }
    }

    /// A `/proc` with what `kpi_line` reads, under `dir/proc`.
    fn fake_proc(dir: &std::path::Path) {
        let proc = dir.join("proc");
        std::fs::create_dir(&proc).expect("the proc dir");
        std::fs::write(proc.join("uptime"), "12.34 20.10\n").expect("uptime");
        std::fs::write(proc.join("loadavg"), "0.08 0.03 0.01 1/61 245\n").expect("loadavg");
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal:         230012 kB\nMemFree:          190444 kB\n\
             MemAvailable:     195000 kB\nBuffers:            1024 kB\n",
        )
        .expect("meminfo");
    }

    #[test]
    fn the_agent_port_is_found_by_its_name_among_the_virtio_serial_ports() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fake_ports(
            dir.path(),
            &[
                ("vport0p1", "org.qemu.guest_agent.0"),
                ("vport1p1", ""),
                ("vport1p2", AGENT_PORT_NAME),
            ],
        );
        let output = run_agent_functions(
            dir.path(),
            "agent_port ports\nagent_port nowhere || echo none",
        );
        assert_eq!(output, "/dev/vport1p2\nnone\n");
    }

    #[test]
    fn a_kpi_line_carries_the_uptime_the_memory_and_the_load() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fake_proc(dir.path());
        let output = run_agent_functions(dir.path(), "kpi_line proc");
        assert_eq!(
            output,
            "VEEM-KPI uptime_s=12.34 mem_total_kb=230012 mem_free_kb=190444 load1=0.08\n"
        );
        let keys: Vec<&str> = output
            .trim_end()
            .strip_prefix(&format!("{KPI_LINE_PREFIX} "))
            .expect("the prefix and a space")
            .split(' ')
            .map(|pair| pair.split_once('=').expect("key=value").0)
            .collect();
        assert_eq!(keys, crate::KPI_KEYS);
    }

    #[test]
    fn the_agent_writes_a_line_to_its_port_every_interval() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fake_ports(
            dir.path(),
            &[("vport0p1", "other"), ("vport2p1", AGENT_PORT_NAME)],
        );
        fake_proc(dir.path());
        // The port's device is a plain file here; three rounds, then the test ends.
        let output = run_agent_functions(
            dir.path(),
            r#"agent_port() { echo "$PWD/vport"; }
sleep() { echo "sleep $1" >> slept; [ $(wc -l < slept) -lt 3 ] || exit 0; }
report_kpis ports proc"#,
        );
        let port = dir.path().join("vport").display().to_string();
        assert_eq!(output, format!("veem-guest: KPIs every 2 s to {port}\n"));
        let line = "VEEM-KPI uptime_s=12.34 mem_total_kb=230012 mem_free_kb=190444 load1=0.08\n";
        assert_eq!(
            std::fs::read_to_string(dir.path().join("vport")).expect("the port"),
            line.repeat(3)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("slept")).expect("the sleeps"),
            "sleep 2\n".repeat(3)
        );
    }

    #[test]
    fn without_its_port_the_agent_says_so_once_and_ends() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fake_ports(dir.path(), &[("vport0p1", "org.qemu.guest_agent.0")]);
        fake_proc(dir.path());
        let output = run_agent_functions(
            dir.path(),
            r#"sleep() { echo "sleep $1" >> slept; }
report_kpis ports proc
echo ended"#,
        );
        assert_eq!(
            output,
            "veem-guest: no virtio-serial port org.veem.agent.0, so no KPIs for the host\nended\n"
        );
        // It waited about a second for the port to appear.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("slept")).expect("the waits"),
            "sleep 0.1\n".repeat(9)
        );
    }

    #[test]
    fn the_handler_powers_off_after_unmounting() {
        let handler = power_button_handler();
        let unmount = handler.find("umount /disk").expect("unmounts");
        let poweroff = handler.find("poweroff -f").expect("powers off");
        assert!(unmount < poweroff);
    }
}
