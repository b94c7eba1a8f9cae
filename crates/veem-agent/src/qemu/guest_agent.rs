//! The channel from a guest's own agent to the host: a virtio-serial port named
//! [`AGENT_PORT_NAME`] in the guest, a Unix socket QEMU serves in the state directory
//! (`<vee>.agent`) on the host. The guest writes one line of KPIs at a time,
//! `VEEM-KPI uptime_s=12.34 mem_total_kb=230012 mem_free_kb=190444 load1=0.08`
//! ([`KPI_LINE_PREFIX`], then ` key=value` pairs); a task per instance reads them into
//! [`AgentReport`]s, stamped with the host's time on arrival, until the driver takes them for a
//! status.
//!
//! The guest is not trusted: a line that is not of that shape, or longer than
//! [`MAX_LINE_BYTES`], is ignored, and at most [`MAX_PENDING_REPORTS`] wait for a status, the
//! oldest dropped first. QEMU serves one client per socket and forgets nothing when it goes: the
//! reader connects again whenever the connection closes while the process lives, and ends with
//! it. Dropping the [`ReportReader`] stops the task and closes its connection.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use veem_api::agent::AgentReport;
use veem_layout::now_ms;
use veem_model::VeeId;

/// The name of the guest's virtio-serial port for its agent (`virtserialport,name=`).
pub const AGENT_PORT_NAME: &str = "org.veem.agent.0";
/// The first word of a KPI line, before its ` key=value` pairs.
pub const KPI_LINE_PREFIX: &str = "VEEM-KPI";
/// The longest line read, its newline not counted; a longer one is skipped whole.
pub const MAX_LINE_BYTES: usize = 4096;
/// The most reports kept for one instance between two statuses; the oldest go first.
pub const MAX_PENDING_REPORTS: usize = 1000;
/// How long the reader waits before connecting again: QEMU may be starting, or the last
/// client's connection closing.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The measurements of a KPI line (without its newline), in the line's order; `None` when
/// it is no KPI line: not [`KPI_LINE_PREFIX`] and one or more ` key=value` pairs with keys of
/// `[a-z0-9_]+`, each once, and values of printable ASCII without spaces.
pub fn parse_kpi_line(line: &str) -> Option<Vec<(String, String)>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let pairs = line.strip_prefix(KPI_LINE_PREFIX)?.strip_prefix(' ')?;
    let mut measurements: Vec<(String, String)> = Vec::new();
    for pair in pairs.split(' ') {
        let (key, value) = pair.split_once('=')?;
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let value_ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic());
        if !key_ok || !value_ok || measurements.iter().any(|(known, _)| known == key) {
            return None;
        }
        measurements.push((key.to_owned(), value.to_owned()));
    }
    Some(measurements)
}

/// The reports of one instance that no status has carried yet.
#[derive(Debug)]
pub(crate) struct PendingReports {
    vee: VeeId,
    state: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    reports: VecDeque<AgentReport>,
    /// Whether dropping has been logged since the last status took the reports.
    drop_logged: bool,
}

impl PendingReports {
    pub(crate) fn new(vee: VeeId) -> Self {
        Self {
            vee,
            state: Mutex::new(Pending::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a report, dropping the oldest when [`MAX_PENDING_REPORTS`] wait already (logged
    /// once until the reports are taken).
    pub(crate) fn push(&self, report: AgentReport) {
        let mut state = self.state();
        if state.reports.len() >= MAX_PENDING_REPORTS {
            state.reports.pop_front();
            if !state.drop_logged {
                state.drop_logged = true;
                tracing::warn!(
                    vee = %self.vee,
                    kept = MAX_PENDING_REPORTS,
                    "no status took the guest agent's reports: dropping the oldest"
                );
            }
        }
        state.reports.push_back(report);
    }

    /// Every waiting report, oldest first; none are left.
    pub(crate) fn take(&self) -> Vec<AgentReport> {
        let mut state = self.state();
        state.drop_logged = false;
        std::mem::take(&mut state.reports).into()
    }
}

/// The task reading one instance's agent socket; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct ReportReader {
    task: JoinHandle<()>,
}

impl ReportReader {
    /// Starts reading `socket` into `pending` on the current tokio runtime, connecting again
    /// whenever the connection fails or closes, as long as `alive` says the process lives.
    pub(crate) fn spawn(
        socket: PathBuf,
        pending: Arc<PendingReports>,
        alive: impl Fn() -> bool + Send + 'static,
    ) -> Self {
        Self {
            task: tokio::spawn(read_reports(socket, pending, alive)),
        }
    }

    /// Whether the task ended (its process was gone).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ReportReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_reports(
    socket: PathBuf,
    pending: Arc<PendingReports>,
    alive: impl Fn() -> bool + Send + 'static,
) {
    let vee = pending.vee.clone();
    let mut connected_before = false;
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                if connected_before {
                    tracing::debug!(%vee, "reading the guest agent's reports again");
                }
                connected_before = true;
                let closed = read_connection(stream, &pending).await;
                tracing::debug!(%vee, reason = %closed, "the guest agent's channel closed");
            }
            Err(e) => {
                let socket = socket.display();
                tracing::trace!(%vee, error = %e, %socket, "no guest agent channel yet");
            }
        }
        if !alive() {
            return;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Reads reports from one connection until it ends; why it ended.
async fn read_connection(mut stream: UnixStream, pending: &PendingReports) -> String {
    let mut lines = LineSplitter::default();
    let mut buffer = vec![0u8; MAX_LINE_BYTES];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => return "end of stream".to_owned(),
            Ok(read) => lines.push(&buffer[..read], |line| {
                let Some(measurements) = std::str::from_utf8(line).ok().and_then(parse_kpi_line)
                else {
                    return;
                };
                pending.push(AgentReport {
                    t_ms: now_ms(),
                    measurements,
                });
            }),
            Err(e) => return e.to_string(),
        }
    }
}

/// Cuts a byte stream into lines of at most [`MAX_LINE_BYTES`]; a longer line is skipped
/// up to its newline, without ever holding more than that.
#[derive(Debug, Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// Inside a line that grew too long: everything up to the next newline goes.
    skipping: bool,
}

impl LineSplitter {
    /// Takes the next bytes of the stream; calls `on_line` with each line they end.
    fn push(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let (part, ended, rest) = match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => (&bytes[..at], true, &bytes[at + 1..]),
                None => (bytes, false, &[][..]),
            };
            bytes = rest;
            if !self.skipping {
                if self.line.len() + part.len() > MAX_LINE_BYTES {
                    self.line.clear();
                    self.skipping = true;
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if ended {
                if !self.skipping {
                    on_line(&self.line);
                }
                self.line.clear();
                self.skipping = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn kpi_lines_are_parsed_and_anything_else_ignored() {
        assert_eq!(
            parse_kpi_line(
                "VEEM-KPI uptime_s=12.34 mem_total_kb=230012 mem_free_kb=190444 load1=0.08"
            ),
            Some(pairs(&[
                ("uptime_s", "12.34"),
                ("mem_total_kb", "230012"),
                ("mem_free_kb", "190444"),
                ("load1", "0.08"),
            ]))
        );
        assert_eq!(
            parse_kpi_line("VEEM-KPI a_1=x/y:z\r"),
            Some(pairs(&[("a_1", "x/y:z")]))
        );
        for malformed in [
            "",
            "VEEM-KPI",
            "VEEM-KPI ",
            "VEEM-KPIX a=1",
            "veem-kpi a=1",
            " VEEM-KPI a=1",
            "VEEM-KPI a=1 ",
            "VEEM-KPI a=1  b=2",
            "VEEM-KPI a",
            "VEEM-KPI =1",
            "VEEM-KPI a=",
            "VEEM-KPI Load=1",
            "VEEM-KPI a-b=1",
            "VEEM-KPI a=1 a=2",
            "VEEM-KPI a=\u{e9}",
            "VEEM-KPI a=1\tb=2",
            "VEEM-GUEST-ALIVE 3 MemTotal: 230012 kB",
        ] {
            assert_eq!(parse_kpi_line(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn lines_are_cut_wherever_the_reads_end_and_long_ones_skipped_whole() {
        let mut splitter = LineSplitter::default();
        let mut lines: Vec<String> = Vec::new();
        let mut feed = |splitter: &mut LineSplitter, bytes: &[u8]| {
            splitter.push(bytes, |line| {
                lines.push(String::from_utf8_lossy(line).into_owned())
            })
        };
        feed(&mut splitter, b"one\ntw");
        feed(&mut splitter, b"o\n\nthr");
        feed(&mut splitter, b"ee");
        let long = "x".repeat(MAX_LINE_BYTES + 1);
        feed(&mut splitter, format!("\n{}", &long[..10]).as_bytes());
        feed(&mut splitter, &long.as_bytes()[10..]);
        feed(&mut splitter, b"still too long\nfour\n");
        let longest = "y".repeat(MAX_LINE_BYTES);
        feed(&mut splitter, format!("{longest}\nfive").as_bytes());
        assert_eq!(splitter.line, b"five", "a partial line is kept");
        assert_eq!(lines, ["one", "two", "", "three", "four", longest.as_str()]);
    }

    #[test]
    fn pending_reports_are_taken_once_and_capped_oldest_first() {
        let pending = PendingReports::new(VeeId::from_seq(1));
        let report = |t_ms| AgentReport {
            t_ms,
            measurements: pairs(&[("n", "1")]),
        };
        pending.push(report(1));
        pending.push(report(2));
        let taken: Vec<u64> = pending.take().iter().map(|r| r.t_ms).collect();
        assert_eq!(taken, [1, 2]);
        assert!(pending.take().is_empty(), "each report is given once");
        let total = u64::try_from(MAX_PENDING_REPORTS).unwrap() + 5;
        for t_ms in 0..total {
            pending.push(report(t_ms));
        }
        let taken = pending.take();
        assert_eq!(taken.len(), MAX_PENDING_REPORTS);
        assert_eq!(taken.first().map(|r| r.t_ms), Some(5));
        assert_eq!(taken.last().map(|r| r.t_ms), Some(total - 1));
    }

    /// Waits until `pending` holds `count` reports (taking them) or panics after a while.
    async fn take_reports(pending: &PendingReports, count: usize) -> Vec<AgentReport> {
        let mut reports = Vec::new();
        for _ in 0..200 {
            reports.extend(pending.take());
            if reports.len() >= count {
                return reports;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {reports:?} arrived");
    }

    #[tokio::test]
    async fn the_reader_connects_reads_reports_reconnects_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vee.agent");
        let pending = Arc::new(PendingReports::new(VeeId::from_seq(1)));
        // The reader starts before QEMU listens, as after a launch or an adoption.
        let reader = ReportReader::spawn(socket.clone(), Arc::clone(&pending), || true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = UnixListener::bind(&socket).unwrap();
        let (mut guest, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the reader connects")
            .unwrap();
        let before = now_ms();
        let mut stream = format!(
            "VEEM-GUEST-ALIVE 1\nVEEM-KPI a=1 b=2\nVEEM-KPI bad\nVEEM-KPI {}=1\n",
            "k".repeat(MAX_LINE_BYTES)
        )
        .into_bytes();
        stream.extend_from_slice(b"VEEM-KPI a=\xff\nVEEM-KPI a=2\nVEEM-KPI a=");
        guest.write_all(&stream).await.unwrap();
        let reports = take_reports(&pending, 2).await;
        assert_eq!(
            reports
                .iter()
                .map(|r| r.measurements.clone())
                .collect::<Vec<_>>(),
            [pairs(&[("a", "1"), ("b", "2")]), pairs(&[("a", "2")])]
        );
        assert!(reports
            .iter()
            .all(|r| r.t_ms >= before && r.t_ms <= now_ms()));

        // The channel closes (a line half written is lost) and the reader comes back.
        drop(guest);
        let (mut guest, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the reader connects again")
            .unwrap();
        guest.write_all(b"3\nVEEM-KPI a=3\n").await.unwrap();
        let reports = take_reports(&pending, 1).await;
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].measurements, pairs(&[("a", "3")]));

        // Dropped, the reader lets go of its connection.
        assert!(!reader.is_finished());
        drop(reader);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), guest.read_to_end(&mut rest))
            .await
            .expect("the connection closes");
        assert_eq!(read.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_reader_ends_when_its_process_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Arc::new(PendingReports::new(VeeId::from_seq(2)));
        let reader = ReportReader::spawn(dir.path().join("none.agent"), pending, || false);
        for _ in 0..200 {
            if reader.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the reader still runs for a process that is gone");
    }
}
