//! The guest's whole userland: a busybox, its `/init` and the ACPI power-button handler, and
//! the kernel modules, as one uncompressed initramfs (the kernel needs no decompressor for
//! it, and under TCG copying is cheaper than inflating).

use crate::cpio::Archive;
use crate::kernel::GuestModules;
use crate::{
    BOOT_LOG_PATH, BOOT_MARKER, HEARTBEAT_MARKER, OVF_ENV_PATH, POWEROFF_AFTER_PROPERTY,
    POWEROFF_MARKER, READY_MARKER,
};

/// The busybox applets `/init` and the handler call, as links in `/bin` (no `--install` at
/// boot: every process start counts under TCG).
const APPLETS: &[&str] = &[
    "acpid", "cat", "cp", "cut", "date", "grep", "insmod", "ls", "mkdir", "mount", "poweroff",
    "sed", "sh", "sleep", "sync", "umount", "wc",
];

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

/// PID 1: `always` modules, then `for_virtio_scsi` ones if the machine has a virtio-scsi
/// controller. It never exits: the kernel would panic. Shell built-ins where they do: every
/// process started costs a few milliseconds under TCG.
pub(crate) fn init_script(always: &[String], for_virtio_scsi: &[String]) -> String {
    let always = always.join(" ");
    let for_virtio_scsi = for_virtio_scsi.join(" ");
    format!(
        r#"#!/bin/sh
# PID 1 of veem's test guest, written by the veem-guest crate.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in {always}; do
	insmod /lib/modules/$module.ko || echo "veem-guest: cannot load $module"
done
# virtio-scsi (PCI 1af4:1004 or 1af4:1048) is how a CD reaches this kernel.
for pci in /sys/bus/pci/devices/*; do
	read -r vendor < $pci/vendor
	read -r device < $pci/device
	case $vendor:$device in 0x1af4:0x1004|0x1af4:0x1048) virtio_scsi=1;; esac
done
if [ -n "$virtio_scsi" ]; then
	for module in {for_virtio_scsi}; do
		insmod /lib/modules/$module.ko || echo "veem-guest: cannot load $module"
	done
fi
# Started now, it has opened the input devices by the time the context is copied.
acpid -f -c /etc/acpi -l /var/log/acpid.log &
acpid=$!

# The guest's own disk records every boot: boot <n> <date> uptime <seconds>.
tries=0
while [ ! -b /dev/vda ] && [ $tries -lt 100 ]; do sleep 0.02; tries=$((tries + 1)); done
boot=0
if mount -t vfat /dev/vda {DISK_MOUNT}; then
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
for device in /dev/vd[b-z] /dev/vd[b-z][0-9] /dev/sr[0-9]; do
	[ -b "$device" ] || continue
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

# Ready means the power button is heard: acpid has opened the input devices.
tries=0
until ls -l /proc/$acpid/fd 2>/dev/null | grep -q /dev/input/event || [ $tries -ge 200 ]; do
	sleep 0.01
	tries=$((tries + 1))
done
echo "{READY_MARKER}"
# A guest that powers itself off, when its context asks for it (after that many seconds).
poweroff_after=$(sed -n 's/.*key="{POWEROFF_AFTER_PROPERTY}"[^>]*value="\([0-9.]*\)".*/\1/p' {CONTEXT_COPY} 2>/dev/null)
if [ -n "$poweroff_after" ]; then
	(sleep "$poweroff_after"; {POWER_BUTTON_HANDLER}) &
fi
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
    fn the_handler_powers_off_after_unmounting() {
        let handler = power_button_handler();
        let unmount = handler.find("umount /disk").expect("unmounts");
        let poweroff = handler.find("poweroff -f").expect("powers off");
        assert!(unmount < poweroff);
    }
}
