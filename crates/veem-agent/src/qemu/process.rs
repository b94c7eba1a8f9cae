//! QEMU processes as the host sees them: starting one (daemonized, so it outlives the agent),
//! recognizing it again by its pid and command line, its CPU time, and ending it.
//!
//! The workspace forbids `unsafe`, so there is no `kill(2)` or `sysconf(3)` here: signals go
//! through the `kill` program, and the clock tick is read once from `getconf CLK_TCK`.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::DriverError;

/// How much of QEMU's log an error message quotes.
const LOG_TAIL_CHARS: usize = 2000;
/// Clock ticks per second on every Linux architecture veem runs on; used when `getconf`
/// cannot tell.
const DEFAULT_CLOCK_TICKS: u64 = 100;

/// Starts QEMU with `-daemonize` among `args` and answers the daemon's pid, read from
/// `pid_file`. The parent process returns once the daemon is ready (its QMP socket listens),
/// so the caller can connect right away. QEMU's stderr is appended to `log`; a failed start
/// reports what QEMU wrote there.
pub async fn start_daemon(
    binary: &Path,
    args: &[OsString],
    pid_file: &Path,
    log: &Path,
) -> Result<u32, DriverError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| DriverError::file(log, e))?;
    let log_start = log_file
        .metadata()
        .map_err(|e| DriverError::file(log, e))?
        .len();
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        // QEMU's daemon calls setsid itself; a group of its own for the short-lived parent
        // too means a Ctrl-C to the agent's terminal reaches no part of a starting guest.
        .process_group(0)
        .kill_on_drop(false);
    let status = command.status().await.map_err(|e| DriverError::Failed {
        op: "start qemu",
        reason: format!("cannot run {}: {e}", binary.display()),
    })?;
    if !status.success() {
        return Err(DriverError::Failed {
            op: "start qemu",
            reason: format!("{status}: {}", log_since(log, log_start)),
        });
    }
    read_pid(pid_file)?.ok_or_else(|| DriverError::Failed {
        op: "start qemu",
        reason: format!("qemu started but wrote no pid to {}", pid_file.display()),
    })
}

/// The pid in a pid file; `None` when there is no file.
pub fn read_pid(path: &Path) -> Result<Option<u32>, DriverError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| DriverError::CorruptState {
                path: path.to_owned(),
                reason: format!("not a pid: {e}"),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::file(path, e)),
    }
}

/// Whether `pid` is a live QEMU started for `vee`: a process that exists, is not a zombie,
/// and whose command line carries `-name <vee>`. A pid reused by another process after QEMU
/// died does not pass.
pub fn is_qemu_of(pid: u32, vee: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if matches!(process_state(&stat), Some('Z' | 'X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline_names(&cmdline, vee))
}

/// Whether a NUL-separated command line has `-name <vee>` (or `-name <vee>,...`).
fn cmdline_names(cmdline: &[u8], vee: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|pair| {
        let value = pair[1];
        pair[0] == b"-name"
            && (value == vee.as_bytes()
                || value
                    .strip_prefix(vee.as_bytes())
                    .is_some_and(|rest| rest.starts_with(b",")))
    })
}

/// The state letter of `/proc/<pid>/stat`: the field after the command name, which is in
/// parentheses and may itself contain spaces and parentheses.
fn process_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

/// CPU time (user + system) the process used, in milliseconds.
pub fn cpu_time_ms(pid: u32, clock_ticks: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_ticks(&stat).map(|ticks| ticks.saturating_mul(1000) / clock_ticks.max(1))
}

/// utime + stime: fields 14 and 15 of `/proc/<pid>/stat`, i.e. the 12th and 13th after the
/// command name.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), or 100 when it cannot be asked.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(DEFAULT_CLOCK_TICKS)
}

/// Sends SIGKILL to the process.
pub async fn kill(pid: u32) -> Result<(), DriverError> {
    let status = tokio::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| DriverError::Failed {
            op: "kill qemu",
            reason: format!("cannot run kill: {e}"),
        })?;
    // `kill` fails for a process that has just ended by itself, which is what we want.
    if status.success() {
        Ok(())
    } else {
        Err(DriverError::Failed {
            op: "kill qemu",
            reason: format!("kill -KILL {pid}: {status}"),
        })
    }
}

/// Waits until the QEMU of `vee` with `pid` is gone or `timeout` has passed; answers whether
/// it is gone.
pub async fn wait_gone(pid: u32, vee: &str, timeout: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_qemu_of(pid, vee) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// What QEMU wrote to its log from byte `start` on, at most the last few lines' worth.
pub fn log_since(log: &Path, start: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..])
        .trim()
        .replace('\n', " | ");
    if text.is_empty() {
        return "qemu wrote nothing to its log".to_owned();
    }
    let skip = text.chars().count().saturating_sub(LOG_TAIL_CHARS);
    text.chars().skip(skip).collect()
}

/// The current length of a log, to quote only what is written after it.
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |meta| meta.len())
}

/// A TCP port free on `address` right now. Another process may take it before QEMU binds it:
/// the caller retries on "Address already in use".
pub fn free_port(address: &str) -> Result<u16, DriverError> {
    let listener = std::net::TcpListener::bind((address, 0)).map_err(|e| DriverError::Failed {
        op: "find a free port",
        reason: format!("{address}: {e}"),
    })?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vee_is_found_in_the_command_line() {
        let cmdline = b"qemu-system-x86_64\0-name\0vee-00000001\0-m\x00128M\0";
        assert!(cmdline_names(cmdline, "vee-00000001"));
        assert!(!cmdline_names(cmdline, "vee-0000000"));
        assert!(!cmdline_names(cmdline, "vee-00000012"));
        assert!(cmdline_names(
            b"qemu\0-name\0vee-00000001,process=x\0",
            "vee-00000001"
        ));
        // The id elsewhere than after -name is not ours.
        assert!(!cmdline_names(
            b"qemu\0-pidfile\0vee-00000001\0",
            "vee-00000001"
        ));
    }

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and parentheses, as the kernel writes it.
        let stat = "4242 (qemu (vee) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 3 0 1 0";
        assert_eq!(process_state(stat), Some('S'));
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(process_state("1 (z) Z 0"), Some('Z'));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_not_a_qemu_of_any_vee() {
        assert!(!is_qemu_of(std::process::id(), "vee-00000001"));
        assert!(cpu_time_ms(std::process::id(), clock_ticks()).is_some());
        assert!(clock_ticks() > 0);
    }

    #[test]
    fn log_tails_are_short_and_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("q.log");
        std::fs::write(&log, "old\n").unwrap();
        let start = log_len(&log);
        std::fs::write(&log, format!("old\nfirst\n{}\nlast\n", "x".repeat(5000))).unwrap();
        let tail = log_since(&log, start);
        assert!(tail.ends_with("last"), "{tail}");
        assert!(!tail.contains("old"));
        assert!(tail.chars().count() <= LOG_TAIL_CHARS);
        assert_eq!(log_since(&log, 1 << 40), "qemu wrote nothing to its log");
    }
}
