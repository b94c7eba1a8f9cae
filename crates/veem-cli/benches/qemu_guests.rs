//! What veem costs on real QEMU guests: SubmitVEEs to the guest's boot marker next to a bare
//! `qemu-system-x86_64` boot of the same guest image; PAUSE, SUSPEND and their ACTIVATE; live
//! migration as the SM and as QEMU see it; and VEEs started per minute on one host.
//!
//! Run: `cargo bench -p veem-cli --bench qemu_guests` (release build; a few minutes). It drives a
//! `veem serve` process started by the end-to-end tests' harness, through `veem-client` only, as
//! an SM would, and prints a Markdown table for BENCHMARKS.md. `VEEM_BENCH_RUNS` (boots of each
//! kind, default 10), `VEEM_BENCH_CONTROL_RUNS` (pauses, default 10), `VEEM_BENCH_SUSPENDS`
//! (default 5), `VEEM_BENCH_MIGRATIONS` (default 6) and `VEEM_BENCH_FLEET` (VEEs on one host,
//! default 12; 0 skips the fleet) change the sizes.
//!
//! It must never leave a QEMU behind: the harness's server ends its guests when dropped, and
//! every bare QEMU is held by a guard that kills it. It never changes the guest or veem's
//! command line to flatter a figure: the bare QEMU copies the machine options from the command
//! line veem actually ran.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(dead_code)] // each bench uses some of them
#[path = "support/figures.rs"]
mod figures;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use figures::env_or;
use harness::{ctl, ctl_ok, get, init, init_one, processes_mentioning, Hypervisor, Server, Setup};
use veem_api::MigrateRequest;
use veem_model::{ControlAction, InitModel, VeeDescriptor, VmiState};

/// How often a console is read for a marker: the resolution of the boot figures, the same for
/// veem and the bare QEMU.
const POLL: Duration = Duration::from_millis(2);
/// The memory of the VEEs whose boots are compared (the size of the end-to-end tests' guests).
const BOOT_MEMORY_MB: u64 = 512;
/// The memory of each VEE of the fleet.
const FLEET_MEMORY_MB: u64 = 256;
const BOOT_LIMIT: Duration = Duration::from_secs(180);
const FLEET_LIMIT: Duration = Duration::from_secs(900);
/// The machine options the bare QEMU copies from veem's command line.
const MACHINE_OPTIONS: [&str; 5] = ["-machine", "-accel", "-cpu", "-m", "-smp"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = env_or("VEEM_BENCH_RUNS", 10).max(1);
    let control_runs = env_or("VEEM_BENCH_CONTROL_RUNS", 10).max(1);
    let suspends = env_or("VEEM_BENCH_SUSPENDS", 5).max(1);
    let migrations = env_or("VEEM_BENCH_MIGRATIONS", 6).max(1);
    let fleet = env_or("VEEM_BENCH_FLEET", 12);
    let load_before = load_average();

    let Some(server) = Server::start_for_bench().await else {
        println!("SKIPPED: qemu-system-x86_64 is not installed; run scripts/install-deps");
        return Ok(());
    };
    let image = harness::guest_image().context("the guest image was built for the server")?;
    let mut rows = Vec::new();

    eprintln!("boots: {runs} of each, alternating, after one warm-up of each");
    let boots = compare_boots(&server, &image, runs).await?;
    let booted = |times: &[ConsoleTimes]| times.iter().map(|t| t.booted).collect::<Vec<_>>();
    let opened = |times: &[ConsoleTimes]| times.iter().map(|t| t.opened).collect::<Vec<_>>();
    let guest = |times: &[ConsoleTimes]| times.iter().map(|t| t.guest()).collect::<Vec<_>>();
    let added_ms = millis(median(&booted(&boots.veem))) - millis(median(&booted(&boots.bare)));
    rows.push(Row::spread(
        "veem: SubmitVEEs call to the boot marker",
        &booted(&boots.veem),
    ));
    rows.push(Row::spread(
        "bare QEMU: spawn to the boot marker",
        &booted(&boots.bare),
    ));
    rows.push(Row::single(
        "what veem adds (difference of the medians)",
        format!("{added_ms:.0} ms"),
        Some(("≤ 50 ms", added_ms <= 50.0)),
    ));
    rows.push(Row::spread(
        "veem: SubmitVEEs answered",
        &boots.submit_answered,
    ));
    rows.push(Row::spread(
        "veem: SubmitVEEs call until QEMU opened the console",
        &opened(&boots.veem),
    ));
    rows.push(Row::spread(
        "bare QEMU: spawn until QEMU opened the console",
        &opened(&boots.bare),
    ));
    let added_before_ms =
        millis(median(&opened(&boots.veem))) - millis(median(&opened(&boots.bare)));
    rows.push(Row::single(
        "what veem adds until QEMU runs (difference of the medians)",
        format!("{added_before_ms:.1} ms"),
        None,
    ));
    rows.push(Row::spread(
        "veem's guest: console opened to boot marker",
        &guest(&boots.veem),
    ));
    rows.push(Row::spread(
        "bare guest: console opened to boot marker",
        &guest(&boots.bare),
    ));

    let subject = boot_subject(&server).await?;
    eprintln!("pause / resume: {control_runs} of each");
    let (pauses, resumes) = away_and_back(
        &server,
        &subject,
        control_runs,
        ControlAction::Pause,
        VmiState::Paused,
    )
    .await?;
    rows.push(Row::spread("PAUSE: UpdateState round trip", &pauses));
    rows.push(Row::spread(
        "ACTIVATE from PAUSED: UpdateState round trip",
        &resumes,
    ));
    eprintln!("suspend / restore: {suspends} of each");
    let (saves, restores) = away_and_back(
        &server,
        &subject,
        suspends,
        ControlAction::Suspend,
        VmiState::Suspended,
    )
    .await?;
    rows.push(Row::spread("SUSPEND until SUSPENDED", &saves));
    rows.push(Row::spread(
        "ACTIVATE from SUSPENDED until ACTIVE",
        &restores,
    ));
    eprintln!("live migration: {migrations}, back and forth");
    let moves = migrate_back_and_forth(&server, &subject, migrations).await?;
    rows.push(Row::spread(
        "live migration: the migrate call, as the SM sees it",
        &moves.as_seen_by_sm,
    ));
    rows.push(Row::reported(
        "live migration: QEMU's total",
        &moves.qemu_total_ms,
        None,
    ));
    rows.push(Row::reported(
        "live migration: QEMU's downtime",
        &moves.qemu_downtime_ms,
        Some(("≤ 100 ms, every one", 100)),
    ));
    drop(server);

    let mut fleet_lines = Vec::new();
    if fleet > 0 {
        eprintln!("fleet: {fleet} VEEs on one host, at once and then one after another");
        let started = start_fleet(&image, fleet).await?;
        rows.push(Row::rate(
            &format!("{fleet} VEEs submitted at once on one host, until every boot marker"),
            fleet,
            started.at_once,
        ));
        rows.push(Row::rate(
            &format!("{fleet} VEEs one after another on one host (each waits for the last's boot marker)"),
            fleet,
            started.one_by_one,
        ));
        fleet_lines.push(format!(
            "fleet boots, submitted at once (each VEE's own time to its marker): min {} / median {} / max {}",
            show(min(&started.at_once_each)),
            show(median(&started.at_once_each)),
            show(max(&started.at_once_each)),
        ));
    }

    print_report(&rows, &boots, &fleet_lines, &load_before);
    Ok(())
}

/// One line of the results table.
struct Row {
    what: String,
    count: String,
    min: String,
    median: String,
    max: String,
    target: Option<(&'static str, bool)>,
}

impl Row {
    fn spread(what: &str, samples: &[Duration]) -> Self {
        Self {
            what: what.into(),
            count: samples.len().to_string(),
            min: show(min(samples)),
            median: show(median(samples)),
            max: show(max(samples)),
            target: None,
        }
    }

    /// Figures QEMU reported in the VEE's event notes, in milliseconds; `n/a` when the notes
    /// carry none.
    fn reported(what: &str, values: &[Option<u64>], target: Option<(&'static str, u64)>) -> Self {
        let known: Vec<u64> = values.iter().flatten().copied().collect();
        if known.len() < values.len() {
            eprintln!(
                "{what}: {} of {} migration notes carry no figures",
                values.len() - known.len(),
                values.len()
            );
        }
        let as_durations: Vec<Duration> =
            known.iter().map(|&ms| Duration::from_millis(ms)).collect();
        if as_durations.is_empty() {
            return Self {
                what: what.into(),
                count: "0".into(),
                min: "n/a".into(),
                median: "n/a".into(),
                max: "n/a".into(),
                target: None,
            };
        }
        let worst = known.iter().copied().max().unwrap_or_default();
        let mut row = Self::spread(what, &as_durations);
        row.target = target.map(|(text, limit)| (text, worst <= limit));
        row
    }

    /// One figure, in the median's column.
    fn single(what: &str, figure: String, target: Option<(&'static str, bool)>) -> Self {
        Self {
            what: what.into(),
            count: String::new(),
            min: String::new(),
            median: figure,
            max: String::new(),
            target,
        }
    }

    fn rate(what: &str, vees: usize, total: Duration) -> Self {
        let per_minute = vees as f64 * 60.0 / total.as_secs_f64();
        let mut row = Self::single(
            what,
            format!("{} in all: {per_minute:.0} VEEs/min", show(total)),
            None,
        );
        row.count = vees.to_string();
        row
    }
}

fn print_report(rows: &[Row], boots: &Boots, fleet_lines: &[String], load_before: &str) {
    println!("| figure | n | min | median | max | target |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let target = match row.target {
            Some((text, true)) => format!("{text}: met"),
            Some((text, false)) => format!("{text}: **not met**"),
            None => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {target} |",
            row.what, row.count, row.min, row.median, row.max
        );
    }
    println!();
    for line in fleet_lines {
        println!("{line}");
    }
    println!("veem's QEMU: {}", boots.veem_command_line);
    println!("bare QEMU:   {}", boots.bare_command_line);
    println!("{}", machine_description());
    println!(
        "load average (1, 5, 15 min): {load_before} before, {} after",
        load_average()
    );
}

fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
        .unwrap_or_else(|| "an unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    format!("machine: {cores} cores, {model}; {qemu}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn show(d: Duration) -> String {
    let ms = millis(d);
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn sorted(samples: &[Duration]) -> Vec<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
}

fn min(samples: &[Duration]) -> Duration {
    sorted(samples).first().copied().unwrap_or_default()
}

fn max(samples: &[Duration]) -> Duration {
    sorted(samples).last().copied().unwrap_or_default()
}

fn median(samples: &[Duration]) -> Duration {
    let sorted = sorted(samples);
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// A VEE booting the test guest (the image the harness uploaded as `tiny`) from a clone of it.
fn guest_descriptor(name: &str, memory_mb: u64) -> VeeDescriptor {
    let mut d = VeeDescriptor::minimal(1, memory_mb);
    d.name = name.to_owned();
    d.disks.push(harness::tiny_disk());
    d
}

fn console_of(server: &Server, id: &str) -> PathBuf {
    server.data_dir().join("vees").join(id).join("console.log")
}

/// Reads `console` every [`POLL`] until it holds `marker`; answers the time since `start`.
async fn wait_for_marker(
    console: &Path,
    marker: &str,
    start: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let text = std::fs::read(console).unwrap_or_default();
        if contains(&text, marker.as_bytes()) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!(
                "no {marker} in {} after {limit:?}: {}",
                console.display(),
                String::from_utf8_lossy(&text)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// When a boot's new console file first existed (QEMU creates it while it sets its devices up,
/// before the guest runs) and when it first held the boot marker, both since the clock started.
#[derive(Debug, Clone, Copy)]
struct ConsoleTimes {
    opened: Duration,
    booted: Duration,
}

impl ConsoleTimes {
    /// From QEMU's console to the boot marker: the boot itself.
    fn guest(self) -> Duration {
        self.booted.saturating_sub(self.opened)
    }
}

/// Reads a console that does not exist yet every [`POLL`] until it holds the boot marker.
async fn watch_boot(console: &Path, start: Instant) -> anyhow::Result<ConsoleTimes> {
    let mut opened = None;
    loop {
        if let Ok(text) = std::fs::read(console) {
            let now = start.elapsed();
            let opened = *opened.get_or_insert(now);
            if contains(&text, veem_guest::BOOT_MARKER.as_bytes()) {
                return Ok(ConsoleTimes {
                    opened,
                    booted: now,
                });
            }
        }
        ensure!(
            start.elapsed() < BOOT_LIMIT,
            "no boot marker in {} after {BOOT_LIMIT:?}",
            console.display()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The boot figures of both kinds, and the command lines they ran.
struct Boots {
    veem: Vec<ConsoleTimes>,
    bare: Vec<ConsoleTimes>,
    submit_answered: Vec<Duration>,
    veem_command_line: String,
    bare_command_line: String,
}

async fn compare_boots(server: &Server, image: &Path, runs: usize) -> anyhow::Result<Boots> {
    let scratch = tempfile::tempdir()?;
    // The warm-up pair fills the page cache with QEMU, its firmware and the image for both
    // kinds alike, and shows the command line veem runs, which the bare QEMU copies.
    let context = scratch.path().join("context.img");
    let warm_up = veem_boot(server, "warm-up", Some(&context)).await?;
    let machine = machine_options(&warm_up.command_line)?;
    let bare_command_line = bare_boot(image, &context, scratch.path(), "warm-up", &machine)
        .await?
        .command_line;
    let mut boots = Boots {
        veem: Vec::new(),
        bare: Vec::new(),
        submit_answered: Vec::new(),
        veem_command_line: warm_up.command_line.join(" "),
        bare_command_line: bare_command_line.join(" "),
    };
    for run in 0..runs {
        let veem = veem_boot(server, &format!("boot-{run}"), None).await?;
        let bare = bare_boot(
            image,
            &context,
            scratch.path(),
            &format!("boot-{run}"),
            &machine,
        )
        .await?;
        eprintln!(
            "  run {run}: veem {} (console {}), bare {} (console {})",
            show(veem.times.booted),
            show(veem.times.opened),
            show(bare.times.booted),
            show(bare.times.opened),
        );
        boots.veem.push(veem.times);
        boots.submit_answered.push(veem.submit_answered);
        boots.bare.push(bare.times);
    }
    Ok(boots)
}

struct Boot {
    times: ConsoleTimes,
    submit_answered: Duration,
    command_line: Vec<String>,
}

/// Initializes a VEE (not timed), submits it and waits for its boot marker; then destroys and
/// purges it and waits until its QEMU is gone, so the next boot has the machine to itself.
async fn veem_boot(
    server: &Server,
    name: &str,
    keep_context: Option<&Path>,
) -> anyhow::Result<Boot> {
    let id = init_one(&server.a, guest_descriptor(name, BOOT_MEMORY_MB)).await;
    let console = console_of(server, &id);
    let start = Instant::now();
    let submitted = server.a.submit(std::slice::from_ref(&id)).await?;
    let submit_answered = start.elapsed();
    ensure!(
        submitted.failed.is_empty(),
        "submit failed: {:?}",
        submitted.failed
    );
    let times = watch_boot(&console, start).await?;
    let command_line = processes_mentioning(&server.data_dir())
        .into_iter()
        .find_map(|pid| {
            let line = command_line_of(pid);
            line.first()
                .is_some_and(|program| program.contains("qemu-system"))
                .then_some(line)
        })
        .context("veem's QEMU is running")?;
    if let Some(copy) = keep_context {
        // Every VEE has a context disk (its monitoring token at least): the bare QEMU gets
        // the same one, so both guests do the same work at boot.
        let context = server.data_dir().join("vees").join(&id).join("context.img");
        std::fs::copy(&context, copy).with_context(|| format!("copy {}", context.display()))?;
    }
    ctl_ok(&server.a, ControlAction::Destroy, &[&id]).await;
    server.a.purge_vee(&id).await?;
    wait_no_qemu(server).await?;
    Ok(Boot {
        times,
        submit_answered,
        command_line,
    })
}

async fn wait_no_qemu(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(&server.data_dir()).is_empty() {
        ensure!(
            Instant::now() < deadline,
            "a QEMU of the server outlived its DESTROY"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn command_line_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The options of [`MACHINE_OPTIONS`] with their values, as veem passed them.
fn machine_options(veem_line: &[String]) -> anyhow::Result<Vec<String>> {
    let mut options = Vec::new();
    for option in MACHINE_OPTIONS {
        let value = veem_line
            .windows(2)
            .find(|pair| pair[0] == option)
            .map(|pair| pair[1].clone())
            .with_context(|| format!("veem's QEMU command line has no {option}"))?;
        options.push(option.to_owned());
        options.push(value);
    }
    Ok(options)
}

/// Ends a bare QEMU however the bench leaves its run.
struct BareQemu(Child);

impl Drop for BareQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the guest image in a QEMU of our own: the same machine options and guest devices as
/// veem's command line (a qcow2 overlay on virtio-blk, a copy of a veem VEE's context disk, the
/// balloon, pvpanic, the agent's virtio-serial port), the console to a file, and nothing veem
/// needs to manage it (no QMP socket, no pidfile, no daemonizing). The overlay is made before
/// the clock starts.
async fn bare_boot(
    image: &Path,
    context: &Path,
    scratch: &Path,
    name: &str,
    machine: &[String],
) -> anyhow::Result<BareBoot> {
    let overlay = scratch.join(format!("{name}.qcow2"));
    let console = scratch.join(format!("{name}.console"));
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&overlay)
        .status()
        .context("qemu-img runs")?;
    ensure!(created.success(), "qemu-img create {}", overlay.display());
    let mut args: Vec<OsString> = vec!["-name".into(), format!("bare-{name}").into()];
    args.extend(machine.iter().map(OsString::from));
    for arg in ["-nodefaults", "-no-user-config", "-display", "none"] {
        args.push(arg.into());
    }
    let mut serial = OsString::from("file:");
    serial.push(&console);
    args.extend(["-serial".into(), serial]);
    for arg in [
        "-action",
        "shutdown=pause,panic=pause",
        "-device",
        "pvpanic",
    ] {
        args.push(arg.into());
    }
    let mut drive = OsString::from("if=none,file=");
    drive.push(&overlay);
    drive.push(",id=drive-vda,format=qcow2");
    let mut context_drive = OsString::from("if=none,file=");
    context_drive.push(context);
    context_drive.push(",id=drive-context,format=raw,readonly=on");
    args.extend(["-drive".into(), drive, "-drive".into(), context_drive]);
    for arg in [
        "-device",
        "virtio-blk-pci,drive=drive-vda,id=disk-vda,serial=vda",
        "-device",
        "virtio-blk-pci,drive=drive-context,id=disk-context,serial=context",
        "-device",
        "virtio-balloon-pci,id=balloon",
        // The guest agent's channel, as veem gives it, with nobody reading.
        "-device",
        "virtio-serial-pci,id=agent-serial",
        "-chardev",
        "null,id=agent",
        "-device",
        "virtserialport,bus=agent-serial.0,chardev=agent,id=agent-port,name=org.veem.agent.0",
    ] {
        args.push(arg.into());
    }
    let log = std::fs::File::create(scratch.join(format!("{name}.log")))?;
    let start = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("qemu-system-x86_64 starts")?;
    let qemu = BareQemu(child);
    let times = watch_boot(&console, start).await;
    drop(qemu);
    let _ = std::fs::remove_file(&overlay);
    let mut command_line = vec!["qemu-system-x86_64".to_owned()];
    command_line.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    Ok(BareBoot {
        times: times?,
        command_line,
    })
}

struct BareBoot {
    times: ConsoleTimes,
    command_line: Vec<String>,
}

/// The VEE that is paused, suspended and migrated: booted, with its heartbeat printing.
async fn boot_subject(server: &Server) -> anyhow::Result<String> {
    let id = init_one(&server.a, guest_descriptor("subject", BOOT_MEMORY_MB)).await;
    let start = Instant::now();
    let submitted = server.a.submit(std::slice::from_ref(&id)).await?;
    ensure!(submitted.failed.is_empty(), "{:?}", submitted.failed);
    wait_for_marker(
        &console_of(server, &id),
        veem_guest::HEARTBEAT_MARKER,
        start,
        BOOT_LIMIT,
    )
    .await?;
    Ok(id)
}

/// Waits until the guest prints a heartbeat it had not printed yet: it runs.
async fn wait_heartbeat(server: &Server, id: &str) -> anyhow::Result<()> {
    let console = console_of(server, id);
    let beats = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with(veem_guest::HEARTBEAT_MARKER))
            .count()
    };
    let before = beats(&std::fs::read_to_string(&console).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if beats(&text) > before {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{id} printed no heartbeat in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies `action` to one VEE and answers the time until the VEE is in `state`: the
/// UpdateState round trip, when the answer came with the state reached (as the VMI promises),
/// or else the time until a GET first shows it.
async fn timed_action(
    server: &Server,
    id: &str,
    action: ControlAction,
    state: VmiState,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let answer = ctl(&server.a, action, &[id]).await;
    let answered = start.elapsed();
    ensure!(
        answer.failed.is_empty(),
        "{action} failed: {:?}",
        answer.failed
    );
    let mut first_look = true;
    let deadline = start + Duration::from_secs(60);
    loop {
        let view = get(&server.a, id).await;
        if view.state == state && view.phase.is_none() {
            return Ok(if first_look {
                answered
            } else {
                start.elapsed()
            });
        }
        if first_look {
            eprintln!(
                "  {action} answered before {id} was {state} (it is {})",
                view.state
            );
        }
        first_look = false;
        ensure!(Instant::now() < deadline, "{id} never became {state}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `runs` times: `away` (PAUSE or SUSPEND) to `away_state`, then ACTIVATE back, each timed
/// through the VMI on a guest whose heartbeat shows it running.
async fn away_and_back(
    server: &Server,
    id: &str,
    runs: usize,
    away: ControlAction,
    away_state: VmiState,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut aways, mut backs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        wait_heartbeat(server, id).await?;
        aways.push(timed_action(server, id, away, away_state).await?);
        backs.push(timed_action(server, id, ControlAction::Activate, VmiState::Active).await?);
    }
    wait_heartbeat(server, id).await?;
    Ok((aways, backs))
}

struct Migrations {
    as_seen_by_sm: Vec<Duration>,
    qemu_total_ms: Vec<Option<u64>>,
    qemu_downtime_ms: Vec<Option<u64>>,
}

/// Migrates the running guest between its host and another one, back and forth, checking
/// before and after each move that its heartbeat runs.
async fn migrate_back_and_forth(
    server: &Server,
    id: &str,
    runs: usize,
) -> anyhow::Result<Migrations> {
    let home = get(&server.a, id)
        .await
        .host
        .context("an ACTIVE VEE has a host")?;
    let hosts = server.ops.list_hosts().await?;
    let away = hosts
        .hosts
        .iter()
        .map(|h| h.id.clone())
        .find(|h| *h != home)
        .context("the server has a second host")?;
    let mut moves = Migrations {
        as_seen_by_sm: Vec::new(),
        qemu_total_ms: Vec::new(),
        qemu_downtime_ms: Vec::new(),
    };
    for run in 0..runs {
        let dest = if run % 2 == 0 { &away } else { &home };
        wait_heartbeat(server, id).await?;
        let notes_before = migration_notes(server, id).await?.len();
        let start = Instant::now();
        let moved = server
            .ops
            .migrate_vee(
                id,
                &MigrateRequest {
                    host: Some(dest.as_str().to_owned()),
                    live: Some(true),
                },
            )
            .await?;
        moves.as_seen_by_sm.push(start.elapsed());
        ensure!(
            moved.state == VmiState::Active && moved.host.as_ref() == Some(dest),
            "after the migration {id} is {} on {:?}",
            moved.state,
            moved.host
        );
        // The note of this move, if the VEEM recorded one (older VEEMs record none for a move
        // that keeps the state).
        let notes = migration_notes(server, id).await?;
        let note = notes.get(notes_before..).and_then(<[String]>::last);
        let figures = note
            .and_then(|note| harness::migration_figures(note))
            .map(|f| (f.total_ms, f.downtime_ms));
        eprintln!(
            "  to {dest}: {} ({})",
            show(start.elapsed()),
            note.map_or("no event note", String::as_str)
        );
        moves.qemu_total_ms.push(figures.map(|(total, _)| total));
        moves.qemu_downtime_ms.push(figures.map(|(_, down)| down));
        wait_heartbeat(server, id).await?;
    }
    Ok(moves)
}

async fn migration_notes(server: &Server, id: &str) -> anyhow::Result<Vec<String>> {
    Ok(server
        .a
        .vee_events(id)
        .await?
        .events
        .into_iter()
        .filter_map(|event| event.detail)
        .filter(|note| note.starts_with("migrated from"))
        .collect())
}

struct Fleet {
    at_once: Duration,
    at_once_each: Vec<Duration>,
    one_by_one: Duration,
}

/// On a server with one QEMU host: `count` VEEs initialized and submitted at once, timed from
/// the InitializeVEEs call until every console shows its boot marker; destroyed; then `count`
/// more, each initialized and submitted once the previous one showed its marker (those keep
/// running, as on a host that fills up).
async fn start_fleet(image: &Path, count: usize) -> anyhow::Result<Fleet> {
    let server = Server::start_with(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 64, 65536, "")],
        health_interval_ms: harness::VEEM_HEALTH_INTERVAL_MS,
        monitoring_interval_ms: 10_000,
        ..Setup::default()
    })
    .await;
    server.ops.push_image("tiny", image, None).await?;
    let batch = u32::try_from(count).context("a fleet fits in u32")?;

    let start = Instant::now();
    let ids = init(
        &server.a,
        InitModel::Besteffort,
        batch,
        guest_descriptor("fleet", FLEET_MEMORY_MB),
    )
    .await;
    let submitted = server.a.submit(&ids).await?;
    ensure!(submitted.failed.is_empty(), "{:?}", submitted.failed);
    let mut each: Vec<Option<Duration>> = vec![None; ids.len()];
    while each.iter().any(Option::is_none) {
        for (id, seen) in ids.iter().zip(each.iter_mut()) {
            if seen.is_none() {
                let text = std::fs::read(console_of(&server, id)).unwrap_or_default();
                if contains(&text, veem_guest::BOOT_MARKER.as_bytes()) {
                    *seen = Some(start.elapsed());
                }
            }
        }
        ensure!(
            start.elapsed() < FLEET_LIMIT,
            "{} of {count} VEEs did not boot in {FLEET_LIMIT:?}",
            each.iter().filter(|s| s.is_none()).count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_once = start.elapsed();
    let at_once_each: Vec<Duration> = each.into_iter().flatten().collect();
    eprintln!("  at once: {}", show(at_once));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&server.a, ControlAction::Destroy, &refs).await;
    wait_no_qemu(&server).await?;

    let start = Instant::now();
    for n in 0..count {
        let id = init_one(
            &server.a,
            guest_descriptor(&format!("one-by-one-{n}"), FLEET_MEMORY_MB),
        )
        .await;
        let submitted = server.a.submit(std::slice::from_ref(&id)).await?;
        ensure!(submitted.failed.is_empty(), "{:?}", submitted.failed);
        wait_for_marker(
            &console_of(&server, &id),
            veem_guest::BOOT_MARKER,
            start,
            FLEET_LIMIT,
        )
        .await?;
    }
    let one_by_one = start.elapsed();
    eprintln!("  one by one: {}", show(one_by_one));
    Ok(Fleet {
        at_once,
        at_once_each,
        one_by_one,
    })
}
