//! Two guests on one virtual LAN (a QEMU stream netdev over a Unix socket: no root, no
//! bridge), each configured by its context as veem configures a VEE's NICs; what the prober
//! measured is read back from its disk.

use std::path::Path;
use std::time::Duration;

use veem_guest::{
    nic_property, BenchResult, ProbeResult, BENCH_DONE_MARKER, BENCH_LOG_PATH, BENCH_PING_PROPERTY,
    BENCH_SEND_PROPERTY, NIC_IP_SUFFIX, NIC_MAC_SUFFIX, NIC_PREFIX_SUFFIX, PROBE_LOG_PATH,
    PROBE_PROPERTY, READY_MARKER,
};

use crate::qemu::{virtio_disk, Vm};
use crate::{assert_no_complaints, guest, overlay, vfat_context, BOOT_TIMEOUT, POWEROFF_TIMEOUT};

/// Upper case: the guest matches MACs in any case.
const A_LAN_MAC: &str = "02:00:00:00:00:0A";
const A_OTHER_MAC: &str = "02:00:00:00:00:a1";
const B_LAN_MAC: &str = "02:00:00:00:00:0b";
const A_LAN_IP: &str = "10.10.0.1";
const B_LAN_IP: &str = "10.10.0.2";
/// On the LAN's network, but nobody's.
const ABSENT_IP: &str = "10.10.0.99";
/// 8 MiB, sent from B to A's discard service.
const BENCH_MEGABYTES: u64 = 8;
/// The benchmarks' own bound: 8 MiB under TCG, then 20 pings 200 ms apart.
const BENCH_TIMEOUT: Duration = Duration::from_secs(120);

/// An `ovf-env.xml` with these properties, their elements in the `prefix` namespace prefix.
fn ovf_env(prefix: &str, properties: &[(String, String)]) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:{prefix}=\"http://schemas.dmtf.org/ovf/environment/1\" {prefix}:id=\"vee\">\n\
         <PropertySection>\n"
    );
    for (key, value) in properties {
        xml.push_str(&format!(
            "<Property {prefix}:key=\"{key}\" {prefix}:value=\"{value}\"/>\n"
        ));
    }
    xml.push_str("</PropertySection>\n</Environment>\n");
    xml
}

/// The context properties of one NIC; no prefix property when `prefix` is `None`.
fn nic(target: &str, mac: &str, ip: &str, prefix: Option<&str>) -> Vec<(String, String)> {
    let mut properties = vec![
        (nic_property(target, NIC_MAC_SUFFIX), mac.to_owned()),
        (nic_property(target, NIC_IP_SUFFIX), ip.to_owned()),
    ];
    if let Some(prefix) = prefix {
        properties.push((nic_property(target, NIC_PREFIX_SUFFIX), prefix.to_owned()));
    }
    properties
}

/// QEMU arguments for a virtio NIC with this MAC on netdev `netdev` (given as `-netdev`
/// options after its id). No option ROM: iPXE would only slow SeaBIOS down.
fn virtio_nic(id: &str, netdev: &str, mac: &str) -> Vec<String> {
    vec![
        "-netdev".to_owned(),
        format!("{netdev},id={id}"),
        "-device".to_owned(),
        format!("virtio-net-pci,netdev={id},mac={mac},romfile="),
    ]
}

fn lan_netdev(socket: &Path, server: bool) -> String {
    format!(
        "stream,server={},addr.type=unix,addr.path={}",
        if server { "on" } else { "off" },
        socket.display()
    )
}

#[test]
fn two_guests_on_a_lan_find_their_nics_by_mac_probe_each_other_and_measure_the_link() {
    let Some(built) = guest() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let lan = dir.path().join("lan.sock");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a_dir).expect("a's dir");
    std::fs::create_dir(&b_dir).expect("b's dir");

    // A's LAN NIC is the second on its PCI bus, so the kernel calls it eth1 while the
    // context names it eth0: the guest must go by the MAC.
    let mut a_properties = nic("eth0", A_LAN_MAC, A_LAN_IP, Some("24"));
    a_properties.extend(nic("eth1", A_OTHER_MAC, "10.20.0.1", None));
    let a_context = vfat_context(&a_dir, &ovf_env("ovfenv", &a_properties));
    let mut a_devices = virtio_nic("other", "user,restrict=on", A_OTHER_MAC);
    a_devices.extend(virtio_nic("lan", &lan_netdev(&lan, true), A_LAN_MAC));
    a_devices.extend(virtio_disk(&a_context));
    let a_disk = overlay(built, &a_dir);
    let mut a = Vm::boot(&a_disk, &a_devices, &a_dir);
    let a_ready = a.wait_for(READY_MARKER, BOOT_TIMEOUT);

    let mut b_properties = nic("eth0", B_LAN_MAC, B_LAN_IP, Some("24"));
    b_properties.extend([
        (
            PROBE_PROPERTY.to_owned(),
            // A twice: its echo service serves one connection after another.
            format!("{A_LAN_IP}:7,{A_LAN_IP}:7,{ABSENT_IP}:7"),
        ),
        (
            BENCH_SEND_PROPERTY.to_owned(),
            format!("{A_LAN_IP}:9:{BENCH_MEGABYTES}"),
        ),
        (BENCH_PING_PROPERTY.to_owned(), A_LAN_IP.to_owned()),
    ]);
    let b_context = vfat_context(&b_dir, &ovf_env("oe", &b_properties));
    let mut b_devices = virtio_nic("lan", &lan_netdev(&lan, false), B_LAN_MAC);
    b_devices.extend(virtio_disk(&b_context));
    let b_disk = overlay(built, &b_dir);
    let mut b = Vm::boot(&b_disk, &b_devices, &b_dir);
    let b_ready = b.wait_for(READY_MARKER, BOOT_TIMEOUT);
    let b_benched = b.wait_for(BENCH_DONE_MARKER, BENCH_TIMEOUT);
    eprintln!(
        "A ready after {a_ready:.2?}; B ready after {b_ready:.2?} (probes included), \
         benches done after {b_benched:.2?}"
    );
    b.power_down(POWEROFF_TIMEOUT);
    a.power_down(POWEROFF_TIMEOUT);

    let (a_serial, b_serial) = (a.serial(), b.serial());
    assert_no_complaints(&a_serial);
    assert_no_complaints(&b_serial);
    for line in [
        format!("veem-guest: eth0 eth1 {A_LAN_IP}/24"),
        "veem-guest: eth1 eth0 10.20.0.1/24".to_owned(),
    ] {
        assert!(a_serial.contains(&line), "{line} is missing:\n{a_serial}");
    }
    let line = format!("veem-guest: eth0 eth0 {B_LAN_IP}/24");
    assert!(b_serial.contains(&line), "{line} is missing:\n{b_serial}");

    let probe_log = crate::disk_file(&b_disk, PROBE_LOG_PATH);
    let probe = |target: String, ok: bool| ProbeResult { target, ok };
    assert_eq!(
        veem_guest::probe_results(&probe_log),
        [
            probe(format!("{A_LAN_IP}:7"), true),
            probe(format!("{A_LAN_IP}:7"), true),
            probe(format!("{ABSENT_IP}:7"), false),
        ],
        "{probe_log}"
    );

    let bench_log = crate::disk_file(&b_disk, BENCH_LOG_PATH);
    eprintln!("B's bench log:\n{bench_log}");
    match veem_guest::bench_results(&bench_log).as_slice() {
        [BenchResult::Send {
            target,
            bytes,
            millis,
        }, BenchResult::Ping {
            target: pinged,
            min_ms,
            avg_ms,
            max_ms,
        }] => {
            assert_eq!(target, &format!("{A_LAN_IP}:9"));
            assert_eq!(*bytes, BENCH_MEGABYTES * 1024 * 1024);
            assert!(*millis > 0 && *millis < 120_000, "{bench_log}");
            assert_eq!(pinged, A_LAN_IP);
            assert!(
                0.0 < *min_ms && min_ms <= avg_ms && avg_ms <= max_ms && *max_ms < 10_000.0,
                "{bench_log}"
            );
        }
        other => panic!("a send and a ping, not {other:?}:\n{bench_log}"),
    }
}
