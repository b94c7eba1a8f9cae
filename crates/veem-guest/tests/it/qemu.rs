//! A QEMU process for the tests: the serial console read line by line, and the power button
//! pressed over QMP (`system_powerdown`, through the qemu driver's client).

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use veem_agent::qemu::qmp::{QmpClient, SystemPowerdown};

pub const QEMU: &str = "qemu-system-x86_64";

pub fn qemu_is_installed() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// QEMU arguments attaching a raw image as a read-only virtio disk (after the first).
pub fn virtio_disk(image: &Path) -> Vec<String> {
    vec![
        "-drive".to_owned(),
        format!("file={},if=virtio,format=raw,readonly=on", image.display()),
    ]
}

/// QEMU arguments attaching an ISO image as a CD on a virtio-scsi controller: on q35 the
/// cloud kernel has no AHCI driver for an IDE/SATA CD.
pub fn scsi_cd(image: &Path) -> Vec<String> {
    [
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-drive",
        &format!(
            "file={},if=none,id=cd0,format=raw,media=cdrom,readonly=on",
            image.display()
        ),
        "-device",
        "scsi-cd,drive=cd0,bus=scsi0.0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// QEMU arguments for the guest agent's channel: a virtio-serial port named
/// [`veem_guest::AGENT_PORT_NAME`] whose host side is a Unix socket QEMU serves at `socket`,
/// as veem's qemu driver gives every VEE.
pub fn agent_port(socket: &Path) -> Vec<String> {
    [
        "-device",
        "virtio-serial-pci",
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            socket.display()
        ),
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            veem_guest::AGENT_PORT_NAME
        ),
    ]
    .map(str::to_owned)
    .to_vec()
}

pub struct Vm {
    child: Child,
    started: Instant,
    lines: Receiver<String>,
    serial: String,
    qmp_socket: PathBuf,
}

impl Vm {
    /// Boots `disk` (qcow2) as the first virtio disk, with `devices` (see [`virtio_disk`],
    /// [`scsi_cd`]), on q35 under TCG with 256 MiB, as veem's hosts run a VEE without KVM.
    pub fn boot(disk: &Path, devices: &[String], dir: &Path) -> Self {
        let mut all = vec![
            "-drive".to_owned(),
            format!("file={},if=virtio,format=qcow2", disk.display()),
        ];
        all.extend_from_slice(devices);
        Self::boot_devices(&all, dir)
    }

    /// Starts the machine [`Vm::boot`] does with only `devices`: the firmware boots what it
    /// finds among them (an installer CD, say).
    pub fn boot_devices(devices: &[String], dir: &Path) -> Self {
        let qmp_socket = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_socket);
        let mut command = Command::new(QEMU);
        command.args(["-machine", "q35", "-accel", "tcg", "-m", "256"]);
        // -nographic would also put the monitor on stdio, which the serial console holds.
        command.args([
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ]);
        command.args(["-display", "none"]);
        command
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()));
        command.args(devices);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let mut child = command.spawn().expect("qemu-system-x86_64 starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            // Byte by byte: a marker is seen as soon as its line ends, whatever QEMU buffers.
            while reader.read(&mut byte).is_ok_and(|read| read == 1) {
                if byte[0] == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if sender.send(text).is_err() {
                        return;
                    }
                    line.clear();
                } else {
                    line.push(byte[0]);
                }
            }
            if !line.is_empty() {
                let _ = sender.send(String::from_utf8_lossy(&line).into_owned());
            }
        });
        Self {
            child,
            started,
            lines,
            serial: String::new(),
            qmp_socket,
        }
    }

    /// Reads the serial console until a line holds `marker`; the time since QEMU started.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Duration {
        if self.serial.lines().any(|line| line.contains(marker)) {
            return self.started.elapsed();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(marker);
                    self.serial.push_str(&line);
                    self.serial.push('\n');
                    if found {
                        return self.started.elapsed();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {marker} within {timeout:?}; serial console:\n{}",
                        self.serial
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "QEMU ended before {marker} ({:?}); serial console:\n{}",
                        self.child.try_wait(),
                        self.serial
                    )
                }
            }
        }
    }

    /// Presses the power button (QMP `system_powerdown`) and waits for QEMU to exit by
    /// itself; the time that took.
    pub fn power_down(&mut self, timeout: Duration) -> Duration {
        let pressed = Instant::now();
        // Through veem's own QMP client: QMP lives in the qemu driver only.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let qmp = QmpClient::connect(&self.qmp_socket, Duration::from_secs(10))
                .await
                .expect("QEMU's QMP socket");
            qmp.execute(&SystemPowerdown)
                .await
                .expect("system_powerdown");
        });
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("QEMU's status") {
                assert!(status.success(), "QEMU ended with {status}");
                // Whatever the console said last (the poweroff marker) is still in the pipe.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.serial.push_str(&line);
                    self.serial.push('\n');
                }
                return pressed.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "QEMU still runs {timeout:?} after the power button; serial console:\n{}",
                self.serial
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn serial(&self) -> String {
        self.serial.clone()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A test that failed half-way must not leave a guest running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
