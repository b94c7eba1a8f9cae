//! The guest's own agent: KPI lines on its virtio-serial port, read from the socket QEMU
//! serves for it, and parsed by the qemu driver's own parser (the format both sides agree on).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use veem_guest::{AGENT_PORT_NAME, KPI_INTERVAL_S, KPI_KEYS, KPI_LINE_PREFIX, READY_MARKER};

use crate::qemu::{agent_port, Vm};
use crate::{assert_no_complaints, guest, overlay, BOOT_TIMEOUT, POWEROFF_TIMEOUT};

/// Two reports come within this once the guest is ready (they are 2 s apart, under TCG).
const REPORTS_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn the_guest_and_the_qemu_driver_agree_on_the_port_and_the_line() {
    assert_eq!(AGENT_PORT_NAME, veem_agent::qemu::AGENT_PORT_NAME);
    assert_eq!(KPI_LINE_PREFIX, veem_agent::qemu::KPI_LINE_PREFIX);
}

/// Connects to QEMU's end of the channel, which exists once QEMU has started.
fn connect(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return stream,
            Err(error) => {
                assert!(Instant::now() < deadline, "QEMU's agent socket: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The figures of one KPI line, by [`KPI_KEYS`], as numbers.
fn figures(line: &str) -> Vec<f64> {
    let measurements = veem_agent::qemu::parse_kpi_line(line)
        .unwrap_or_else(|| panic!("the driver reads {line:?}"));
    let keys: Vec<&str> = measurements.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, KPI_KEYS, "{line}");
    measurements
        .iter()
        .map(|(key, value)| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{key}={value} is a number"))
        })
        .collect()
}

#[test]
fn the_guest_reports_its_kpis_on_its_virtio_serial_port_every_interval() {
    let Some(built) = guest() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let disk = overlay(built, dir.path());
    let socket = dir.path().join("agent.sock");
    let mut vm = Vm::boot(&disk, &agent_port(&socket), dir.path());
    let channel = connect(&socket);
    vm.wait_for(READY_MARKER, BOOT_TIMEOUT);
    channel
        .set_read_timeout(Some(REPORTS_TIMEOUT))
        .expect("a read timeout");
    let mut lines = BufReader::new(channel).lines();
    let mut reports = Vec::new();
    let started = Instant::now();
    while reports.len() < 2 {
        let line = lines
            .next()
            .expect("the channel stays open")
            .unwrap_or_else(|error| panic!("a report within {REPORTS_TIMEOUT:?}: {error}"));
        eprintln!("{line}");
        reports.push((figures(&line), started.elapsed()));
    }
    vm.wait_for("veem-guest: KPIs every 2 s to /dev/vport", BOOT_TIMEOUT);
    vm.power_down(POWEROFF_TIMEOUT);
    assert_no_complaints(&vm.serial());

    let (first, second) = (&reports[0].0, &reports[1].0);
    let (uptime, mem_total_kb, mem_free_kb, load1) = (second[0], second[1], second[2], second[3]);
    let interval = f64::from(KPI_INTERVAL_S);
    let apart = uptime - first[0];
    assert!(
        apart >= interval - 0.05 && apart < interval + 5.0,
        "{KPI_INTERVAL_S} s apart, by the guest's clock: {reports:?}"
    );
    // The machine has 256 MiB; the kernel keeps some for itself.
    assert!(
        (128.0 * 1024.0..=256.0 * 1024.0).contains(&mem_total_kb),
        "{reports:?}"
    );
    assert!(
        0.0 < mem_free_kb && mem_free_kb < mem_total_kb,
        "{reports:?}"
    );
    assert!(load1 >= 0.0, "{reports:?}");
}
