//! What a VEE's devices have done, as the host can count it: disk I/O from QEMU's block
//! statistics, NIC traffic from the host kernel's counters of a tap device.
//!
//! QEMU reports no NIC counters over QMP; every NIC is a tap device, which the host kernel
//! counts and [`read_tap_counters`] reads.

use std::path::Path;

use veem_api::agent::{DiskCounters, NicCounters};

use super::machine::{CONTEXT_TARGET, DRIVE_ID_PREFIX};
use super::qmp::BlockStats;
use crate::DriverError;

/// How `machine::command_line` names a disk's device (`disk-<target>`, whose QOM path is
/// under this prefix).
const DISK_QOM_PREFIX: &str = "/machine/peripheral/disk-";
/// Linux's longest interface name (`IFNAMSIZ` less its terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// The counters of the VEE's disks, by target, in QEMU's order (the command line's), from a
/// `query-blockstats` answer. The context disk is left out: the driver adds it for the OVF
/// environment, it is no disk of the VEE's descriptor, and the guest only reads it once.
/// Backends that are no disk of the VEE are left out too.
pub fn disk_counters(stats: &[BlockStats]) -> Vec<DiskCounters> {
    stats
        .iter()
        .filter_map(|entry| {
            let target = disk_target(entry)?;
            if target == CONTEXT_TARGET {
                return None;
            }
            let counts = &entry.stats;
            Some(DiskCounters {
                target: target.to_owned(),
                read_bytes: counts.rd_bytes,
                write_bytes: counts.wr_bytes,
                read_ops: counts.rd_operations,
                write_ops: counts.wr_operations,
                flush_ops: counts.flush_operations,
            })
        })
        .collect()
}

/// The disk target a backend serves: from its drive id, or else from the device it feeds (a
/// backend QEMU named itself, as `-blockdev` would make it, has an empty `device`).
fn disk_target(entry: &BlockStats) -> Option<&str> {
    let from_drive = entry
        .device
        .as_deref()
        .and_then(|device| device.strip_prefix(DRIVE_ID_PREFIX));
    let from_device = || {
        entry
            .qdev
            .as_deref()?
            .strip_prefix(DISK_QOM_PREFIX)?
            .split('/')
            .next()
    };
    from_drive
        .or_else(from_device)
        .filter(|target| !target.is_empty())
}

/// The traffic of the VEE's NIC `target` whose host side is the tap device `interface`, from
/// `<sys_class_net>/<interface>/statistics/` (`sys_class_net` is `/sys/class/net` on a host).
/// What the tap transmits is what the guest receives, so the kernel's figures are swapped into
/// the guest's view. The kernel counts from the tap's creation, which is the instance's start
/// when the tap is made for it. Reads a few sysfs files synchronously: they are in memory.
pub fn read_tap_counters(
    sys_class_net: &Path,
    interface: &str,
    target: &str,
) -> Result<NicCounters, DriverError> {
    let plain = !interface.is_empty()
        && interface.len() <= MAX_INTERFACE_NAME
        && interface != "."
        && interface != ".."
        && !interface
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !plain {
        return Err(DriverError::Invalid {
            what: "network interface",
            reason: format!("{interface:?} is not a linux interface name"),
        });
    }
    let statistics = sys_class_net.join(interface).join("statistics");
    let counter = |name: &str| -> Result<u64, DriverError> {
        let path = statistics.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| DriverError::file(&path, e))?;
        text.trim().parse().map_err(|e| DriverError::Failed {
            op: "read nic counters",
            reason: format!("{}: {text:?}: {e}", path.display()),
        })
    };
    Ok(NicCounters {
        target: target.to_owned(),
        rx_bytes: counter("tx_bytes")?,
        tx_bytes: counter("rx_bytes")?,
        rx_packets: counter("tx_packets")?,
        tx_packets: counter("rx_packets")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `query-blockstats` answer of QEMU 10.0 for a VEE with disks `vda` and `vdb` and a
    /// context disk, after SeaBIOS read `vda`'s boot sector (trimmed of the counters veem does
    /// not read, which QEMU sends as well).
    const BLOCKSTATS: &str = r##"[
      {"device": "drive-vda",
       "parent": {"stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0,
                            "wr_operations": 0, "flush_operations": 0},
                  "node-name": "#block009",
                  "driver-specific": {"driver": "file", "discard-nb-ok": 0}},
       "stats": {"unmap_operations": 0, "flush_total_time_ns": 0, "wr_highest_offset": 0,
                 "wr_bytes": 4096, "timed_stats": [], "account_invalid": true,
                 "rd_total_time_ns": 867064, "flush_operations": 2, "wr_operations": 1,
                 "rd_bytes": 512, "idle_time_ns": 2050838091, "rd_operations": 1},
       "node-name": "#block133",
       "qdev": "/machine/peripheral/disk-vda/virtio-backend"},
      {"device": "drive-vdb",
       "stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0,
                 "flush_operations": 0},
       "node-name": "#block312",
       "qdev": "/machine/peripheral/disk-vdb/virtio-backend"},
      {"device": "drive-context",
       "stats": {"rd_bytes": 2048, "wr_bytes": 0, "rd_operations": 4, "wr_operations": 0,
                 "flush_operations": 0},
       "node-name": "#block501",
       "qdev": "/machine/peripheral/disk-context/virtio-backend"},
      {"device": "",
       "stats": {"rd_bytes": 7, "wr_bytes": 8, "rd_operations": 9, "wr_operations": 10,
                 "flush_operations": 11},
       "node-name": "blk-vdc",
       "qdev": "/machine/peripheral/disk-vdc/virtio-backend"},
      {"device": "",
       "stats": {"rd_bytes": 1, "wr_bytes": 1, "rd_operations": 1, "wr_operations": 1,
                 "flush_operations": 1},
       "node-name": "stray"}
    ]"##;

    #[test]
    fn blockstats_become_the_counters_of_the_vees_own_disks() {
        let stats: Vec<BlockStats> = serde_json::from_str(BLOCKSTATS).unwrap();
        let disk = |target: &str, counts: [u64; 5]| DiskCounters {
            target: target.into(),
            read_bytes: counts[0],
            write_bytes: counts[1],
            read_ops: counts[2],
            write_ops: counts[3],
            flush_ops: counts[4],
        };
        assert_eq!(
            disk_counters(&stats),
            [
                disk("vda", [512, 4096, 1, 1, 2]),
                disk("vdb", [0, 0, 0, 0, 0]),
                // Named by the device it feeds, as a -blockdev backend would be.
                disk("vdc", [7, 8, 9, 10, 11]),
            ]
        );
    }

    fn fake_sysfs(root: &Path, interface: &str, counts: [(&str, &str); 4]) {
        let statistics = root.join(interface).join("statistics");
        std::fs::create_dir_all(&statistics).unwrap();
        for (name, value) in counts {
            std::fs::write(statistics.join(name), value).unwrap();
        }
    }

    #[test]
    fn tap_counters_are_read_from_sysfs_in_the_guests_view() {
        let root = tempfile::tempdir().unwrap();
        fake_sysfs(
            root.path(),
            "vee7-eth0",
            [
                ("rx_bytes", "1500\n"),
                ("tx_bytes", "98765\n"),
                ("rx_packets", "3\n"),
                ("tx_packets", "70\n"),
            ],
        );
        let counters = read_tap_counters(root.path(), "vee7-eth0", "eth0").unwrap();
        assert_eq!(
            counters,
            NicCounters {
                target: "eth0".into(),
                // The tap sent 98765 bytes in 70 packets: the guest received them.
                rx_bytes: 98765,
                tx_bytes: 1500,
                rx_packets: 70,
                tx_packets: 3,
            }
        );
    }

    #[test]
    fn tap_counters_fail_clearly_and_stay_inside_sysfs() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_tap_counters(root.path(), "tap0", "eth0"),
            Err(DriverError::File { path, .. }) if path.ends_with("tap0/statistics/tx_bytes")
        ));
        fake_sysfs(
            root.path(),
            "tap1",
            [
                ("rx_bytes", "1\n"),
                ("tx_bytes", "lots\n"),
                ("rx_packets", "1\n"),
                ("tx_packets", "1\n"),
            ],
        );
        let error = read_tap_counters(root.path(), "tap1", "eth0").unwrap_err();
        assert!(error.to_string().contains("lots"), "{error}");
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "eth 0",
            "averyveryverylongname",
        ] {
            assert!(
                matches!(
                    read_tap_counters(root.path(), bad, "eth0"),
                    Err(DriverError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
