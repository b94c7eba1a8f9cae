//! Rendering answers: aligned tables for people, the API's own JSON (pretty) for scripts.

use std::fmt::Write as _;
use std::io::Write as _;

use serde::Serialize;
use veem_api::{
    HostView, ImageView, InitializeResponse, NetworkView, PlanResponse, SiteState, SiteView,
    VeeView,
};
use veem_model::{AccountingRecord, DiskSource, MeasurementValue, MonitoringEvent, VeeEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Columns separated by two spaces, each as wide as its widest cell; no trailing blanks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut rendered = String::new();
            for (i, cell) in line.iter().take(columns).enumerate() {
                if i > 0 {
                    rendered.push_str("  ");
                }
                rendered.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                rendered.extend(std::iter::repeat_n(' ', pad));
            }
            text.push_str(rendered.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `key:  value` lines with the values aligned, for one object.
pub fn pairs(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in rows {
        let label = format!("{key}:");
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{label:<width$}  {value}");
    }
    text
}

pub fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// Writes to standard output. A reader that went away (`veem vee ls | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context("cannot write to standard output")),
    }
}

fn or_dash(text: Option<&str>) -> String {
    match text {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => "-".to_owned(),
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

fn joined_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

pub fn vee_table(vees: &[VeeView]) -> Table {
    let mut table = Table::new(&["ID", "NAME", "STATE", "VEEM", "SITE", "HOST", "CPU", "MEM"]);
    for vee in vees {
        // A site that does not answer is said with the last state it told.
        let site = match vee.site_state {
            SiteState::Up => vee.site.clone(),
            SiteState::Unreachable => format!("{} (unreachable)", vee.site),
        };
        table.row(vec![
            vee.id.clone(),
            or_dash(Some(&vee.name)),
            vee.state.to_string(),
            veem_state(vee),
            site,
            or_dash(vee.host.as_ref().map(|h| h.as_str())),
            vee.descriptor.cpu.to_string(),
            fmt_mb(vee.descriptor.memory_mb),
        ]);
    }
    table
}

/// The VEEM state, with the phase under way if any (`HOLD/booting`).
fn veem_state(vee: &VeeView) -> String {
    match vee.phase {
        Some(phase) => {
            let phase = serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("{}/{phase}", vee.veem_state)
        }
        None => vee.veem_state.to_string(),
    }
}

pub fn vee_detail(vee: &VeeView) -> String {
    let d = &vee.descriptor;
    let ceiling = |current: String, max: Option<String>| match max {
        Some(max) => format!("{current} (up to {max} live)"),
        None => current,
    };
    let mut rows = vec![
        ("id", vee.id.clone()),
        ("name", or_dash(Some(&vee.name))),
        ("owner", vee.owner.clone()),
        ("state", vee.state.to_string()),
        ("veem state", veem_state(vee)),
        ("host", or_dash(vee.host.as_ref().map(|h| h.as_str()))),
        ("site", or_dash(Some(&vee.site))),
        (
            "cpu",
            ceiling(d.cpu.to_string(), d.cpu_max.map(|m| m.to_string())),
        ),
        (
            "memory",
            ceiling(fmt_mb(d.memory_mb), d.memory_max_mb.map(fmt_mb)),
        ),
        ("tags", list_or_dash(&vee.tags)),
        ("anti-affinity", list_or_dash(&d.anti_affinity)),
        ("disks", disks(vee)),
        ("nics", nics(vee)),
    ];
    if let Some(reason) = &vee.pending_reason {
        rows.push(("pending", reason.clone()));
    }
    if let Some(error) = &vee.last_error {
        rows.push(("last error", error.clone()));
    }
    if d.restart_attempts > 0 {
        rows.push((
            "restarts",
            format!("{} of {}", vee.restarts, d.restart_attempts),
        ));
    }
    if let Some(boot) = &d.boot {
        let mut text = format!("kernel {}", boot.kernel);
        if let Some(initrd) = &boot.initrd {
            text.push_str(&format!(", initrd {initrd}"));
        }
        if !boot.cmdline.is_empty() {
            text.push_str(&format!(", cmdline {:?}", boot.cmdline));
        }
        rows.push(("boot", text));
    }
    rows.push(("created", fmt_time(vee.created_ms)));
    rows.push(("updated", fmt_time(vee.updated_ms)));
    pairs(&rows)
}

fn disks(vee: &VeeView) -> String {
    let described: Vec<String> = vee
        .descriptor
        .disks
        .iter()
        .map(|disk| {
            let mut text = or_dash(disk.target.as_deref());
            text.push(' ');
            text.push_str(&match &disk.source {
                Some(DiskSource::Image(name)) => format!("image:{name}"),
                Some(DiskSource::Url(url)) => url.clone(),
                None => "blank".to_owned(),
            });
            if let Some(size) = disk.size_gb {
                let _ = write!(text, " {size} GB");
            }
            if disk.source.is_some() && !disk.clone {
                text.push_str(" (shared)");
            }
            text
        })
        .collect();
    joined_or_dash(&described)
}

fn nics(vee: &VeeView) -> String {
    let described: Vec<String> = if vee.generated.nics.is_empty() {
        vee.descriptor
            .nics
            .iter()
            .map(|nic| format!("{} {}", or_dash(nic.target.as_deref()), nic.network))
            .collect()
    } else {
        vee.generated
            .nics
            .iter()
            .map(|nic| {
                let mut text = format!("{} {} {}", nic.target, nic.network, nic.mac);
                if let Some(ip) = &nic.ip {
                    text.push(' ');
                    text.push_str(ip);
                }
                text
            })
            .collect()
    };
    joined_or_dash(&described)
}

pub fn initialized_table(answer: &InitializeResponse) -> Table {
    // Replicas of a batch have names of their own (`db-1`, ...); a batch of one has none.
    let named = answer.vees.iter().any(|vee| vee.generated.name.is_some());
    let mut table = if named {
        Table::new(&["ID", "NAME", "STATE", "NICS"])
    } else {
        Table::new(&["ID", "STATE", "NICS"])
    };
    for vee in &answer.vees {
        let nics: Vec<String> = vee
            .generated
            .nics
            .iter()
            .map(|nic| format!("{}={}", nic.target, nic.ip.as_deref().unwrap_or(&nic.mac)))
            .collect();
        let mut row = vec![vee.id.clone()];
        if named {
            row.push(or_dash(vee.generated.name.as_deref()));
        }
        row.extend([vee.state.to_string(), list_or_dash(&nics)]);
        table.row(row);
    }
    table
}

/// A placement plan: where each VEE of the batch would land, then the verdict.
pub fn plan_text(plan: &PlanResponse) -> String {
    let mut table = Table::new(&["INDEX", "NAME", "SITE", "HOST", "REASON"]);
    for p in &plan.placements {
        table.row(vec![
            p.index.to_string(),
            or_dash(Some(&p.name)),
            p.site.clone(),
            or_dash(p.host.as_deref()),
            or_dash(p.reason.as_deref()),
        ]);
    }
    let verdict = if plan.feasible {
        format!(
            "feasible: a TWOPHASE of these {} would be reserved as shown\n",
            plan.placements.len()
        )
    } else {
        "not feasible: a TWOPHASE of this batch would be refused (insufficient_resources)\n"
            .to_owned()
    };
    format!("{}{verdict}", table.render())
}

pub fn event_table(events: &[VeeEvent]) -> Table {
    let mut table = Table::new(&["TIME", "FROM", "TO", "VEEM", "HOST", "DETAIL"]);
    for event in events {
        table.row(vec![
            fmt_time(event.t_ms),
            or_dash(event.from.map(|s| s.as_str())),
            event.to.to_string(),
            event.veem_state.to_string(),
            or_dash(event.host.as_ref().map(|h| h.as_str())),
            or_dash(event.detail.as_deref()),
        ]);
    }
    table
}

pub fn image_table(images: &[ImageView]) -> Table {
    let mut table = Table::new(&["NAME", "FORMAT", "SIZE", "OWNER", "CREATED"]);
    for image in images {
        table.row(vec![
            image.name.clone(),
            image.format.clone(),
            fmt_bytes(image.size_bytes),
            image.owner.clone(),
            fmt_time(image.created_ms),
        ]);
    }
    table
}

pub fn accounting_table(records: &[AccountingRecord]) -> Table {
    let mut table = Table::new(&[
        "FROM", "DT", "STATE", "HOST", "CPU", "MEM", "CPU TIME", "ACTIVE",
    ]);
    for r in records {
        table.row(vec![
            fmt_time(r.t0),
            format!("{} ms", r.dt),
            r.state.to_string(),
            or_dash(r.host.as_ref().map(|h| h.as_str())),
            r.cpu.to_string(),
            fmt_mb(r.memory_mb),
            format!("{} ms", r.cpu_time_ms),
            format!("{} ms", r.active_ms),
        ]);
    }
    table
}

/// One monitoring event on one line: time, type, VEE, then `fqn=value` pairs.
pub fn event_line(event: &MonitoringEvent) -> String {
    let mut line = format!(
        "{} {:<8} {}",
        fmt_time(event.t0),
        event.kind.as_str(),
        event.vee.as_ref().map_or("-", |v| v.as_str())
    );
    for m in &event.measurements {
        let value = match &m.value {
            MeasurementValue::Number(n) => n.to_string(),
            MeasurementValue::Text(t) => t.clone(),
        };
        line.push_str(&format!(" {}={value}", m.fqn));
    }
    line
}

pub fn network_table(networks: &[NetworkView]) -> Table {
    let mut table = Table::new(&[
        "NAME", "OWNER", "CIDR", "PUBLIC", "HOSTS AT", "USED", "FREE",
    ]);
    for network in networks {
        table.row(vec![
            network.name.clone(),
            network.owner.clone(),
            network.cidr.clone(),
            if network.public { "yes" } else { "no" }.to_owned(),
            or_dash(network.host_address.as_deref()),
            network.addresses_used.to_string(),
            network.addresses_free.to_string(),
        ]);
    }
    table
}

pub fn site_table(sites: &[SiteView]) -> Table {
    let mut table = Table::new(&["NAME", "STATE", "URL", "VEES"]);
    for site in sites {
        let state = match site.state {
            SiteState::Up => "up",
            SiteState::Unreachable => "unreachable",
        };
        table.row(vec![
            site.name.clone(),
            state.to_owned(),
            or_dash(site.url.as_deref()),
            site.vees.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ]);
    }
    table
}

/// `veem cluster`: the front-ends sharing the site's database, the leader first.
pub fn cluster_table(view: &veem_api::ClusterView, now_ms: u64) -> Table {
    let mut table = Table::new(&["NAME", "ROLE", "URL", "FOR"]);
    let mut members: Vec<_> = view.members.iter().collect();
    members.sort_by_key(|m| (m.role != veem_api::ClusterRole::Leader, m.name.clone()));
    for member in members {
        let role = match member.role {
            veem_api::ClusterRole::Leader => "leader",
            veem_api::ClusterRole::Follower => "follower",
        };
        let held_s = now_ms.saturating_sub(member.since_ms) / 1000;
        table.row(vec![
            member.name.clone(),
            role.to_owned(),
            member.url.clone(),
            format!("{held_s}s"),
        ]);
    }
    table
}

pub fn host_table(hosts: &[HostView]) -> Table {
    // A failed health check, else why a host is down (disconnected, lost).
    let why = |h: &HostView| h.error.clone().or_else(|| h.reason.clone());
    let with_errors = hosts.iter().any(|h| why(h).is_some());
    let mut headers = vec!["ID", "STATE", "DRIVER", "AGENT", "CPU", "MEM", "VEES"];
    if with_errors {
        headers.push("ERROR");
    }
    let mut table = Table::new(&headers);
    for host in hosts {
        let state = serde_json::to_value(host.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut row = vec![
            host.id.to_string(),
            state,
            host.driver.clone(),
            host.agent.clone(),
            format!("{}/{}", host.used.cpus, host.capacity.cpus),
            format!(
                "{}/{}",
                fmt_mb(host.used.memory_mb),
                fmt_mb(host.capacity.memory_mb)
            ),
            host.vees.len().to_string(),
        ];
        if with_errors {
            row.push(or_dash(why(host).as_deref()));
        }
        table.row(row);
    }
    table
}

/// One id of a batch (submit, control, purge) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub id: String,
    /// The success word (`submitted`, `applied`, `purged`) or the failure's error code.
    pub result: String,
    pub detail: String,
    pub failed: bool,
}

/// The items that succeeded; `None` when none did (failures go to standard error, one line
/// each, see `failure_line`).
pub fn batch_table(rows: &[BatchRow]) -> Option<Table> {
    let mut table = Table::new(&["ID", "RESULT"]);
    for row in rows.iter().filter(|row| !row.failed) {
        table.row(vec![row.id.clone(), row.result.clone()]);
    }
    (!table.rows.is_empty()).then_some(table)
}

/// `vee-00000002 (wrong_state): ACTIVATE is not defined in state DESTROYED`
pub fn failure_line(row: &BatchRow) -> String {
    if row.detail.is_empty() {
        format!("{} ({})", row.id, row.result)
    } else {
        format!("{} ({}): {}", row.id, row.result, row.detail)
    }
}

/// Writes lines to standard error, each after `error: `.
pub fn emit_errors(lines: &[String]) {
    let mut stderr = std::io::stderr().lock();
    for line in lines {
        // Nothing is left to tell the user with if standard error itself is gone.
        let _ = writeln!(stderr, "error: {line}");
    }
}

/// An error whose lines were printed already: it only sets the exit code.
#[derive(Debug)]
pub struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the errors above")
    }
}

impl std::error::Error for AlreadyReported {}

/// Memory in the unit people think of it: whole GiB when exact, MiB otherwise.
pub fn fmt_mb(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(1024) {
        format!("{} GiB", mb / 1024)
    } else {
        format!("{mb} MiB")
    }
}

pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Milliseconds since the epoch as an RFC 3339 UTC time, to the second.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veem_api::{HostState, Resources};
    use veem_model::{HostId, Phase, VeeDescriptor, VeemState, VmiState};

    fn vee(id: &str, name: &str, host: Option<&str>) -> VeeView {
        let mut descriptor = VeeDescriptor::minimal(2, 1024);
        descriptor.name = name.to_owned();
        VeeView {
            id: id.to_owned(),
            name: name.to_owned(),
            owner: "sm-a".into(),
            state: VmiState::Active,
            veem_state: VeemState::Active,
            phase: None,
            host: host.map(|h| HostId::new(h).expect("valid host id")),
            site: "local".into(),
            site_state: veem_api::SiteState::Up,
            descriptor,
            generated: Default::default(),
            tags: vec!["database".into()],
            pending_reason: None,
            last_error: None,
            restarts: 0,
            created_ms: 0,
            updated_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn columns_align_to_the_widest_cell_without_trailing_blanks() {
        let mut table = Table::new(&["ID", "NAME", "STATE"]);
        table.row(vec!["vee-00000001".into(), "db".into(), "ACTIVE".into()]);
        table.row(vec!["vee-2".into(), "frontend".into(), "".into()]);
        assert_eq!(
            table.render(),
            "ID            NAME      STATE\n\
             vee-00000001  db        ACTIVE\n\
             vee-2         frontend\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(Table::new(&["A", "BB"]).render(), "A  BB\n");
    }

    #[test]
    fn vees_show_state_host_and_resources() {
        let mut waiting = vee("vee-00000002", "", None);
        waiting.state = VmiState::Initial;
        waiting.veem_state = VeemState::Hold;
        waiting.phase = Some(Phase::Booting);
        waiting.descriptor.memory_mb = 1536;
        let text = vee_table(&[vee("vee-00000001", "db", Some("h1")), waiting]).render();
        assert_eq!(
            text,
            "ID            NAME  STATE    VEEM          SITE   HOST  CPU  MEM\n\
             vee-00000001  db    ACTIVE   ACTIVE        local  h1    2    1 GiB\n\
             vee-00000002  -     INITIAL  HOLD/booting  local  -     2    1536 MiB\n"
        );
    }

    #[test]
    fn a_vee_detail_tells_why_it_waits() {
        let mut waiting = vee("vee-00000002", "db", None);
        waiting.pending_reason = Some("no host has 12000 MB free".into());
        waiting.descriptor.memory_max_mb = Some(8192);
        let text = vee_detail(&waiting);
        assert!(
            text.contains("\npending:        no host has 12000 MB free\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmemory:         1 GiB (up to 8 GiB live)\n"),
            "{text}"
        );
        assert!(text.contains("\nhost:           -\n"), "{text}");
        assert!(
            text.contains("\nupdated:        2023-11-14T22:13:20Z\n"),
            "{text}"
        );
    }

    #[test]
    fn hosts_show_use_against_capacity_and_errors_only_when_any() {
        let mut host = HostView {
            id: HostId::new("h1").expect("valid host id"),
            state: HostState::Disabled,
            driver: "sim".into(),
            agent: "in-process".into(),
            capacity: Resources {
                cpus: 8,
                memory_mb: 16384,
            },
            used: Resources {
                cpus: 2,
                memory_mb: 1000,
            },
            vees: vec!["vee-00000001".into()],
            last_seen_ms: 0,
            error: None,
            since_ms: None,
            reason: None,
        };
        assert_eq!(
            host_table(std::slice::from_ref(&host)).render(),
            "ID  STATE     DRIVER  AGENT       CPU  MEM              VEES\n\
             h1  DISABLED  sim     in-process  2/8  1000 MiB/16 GiB  1\n"
        );
        host.error = Some("qmp socket closed".into());
        let text = host_table(std::slice::from_ref(&host)).render();
        assert!(
            text.starts_with(
                "ID  STATE     DRIVER  AGENT       CPU  MEM              VEES  ERROR\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("  1     qmp socket closed\n"), "{text}");
        // A lost host says why it is down.
        host.error = None;
        host.state = HostState::Down;
        host.reason = Some("no answer for 10 s".into());
        let text = host_table(&[host]).render();
        assert!(text.ends_with("  1     no answer for 10 s\n"), "{text}");
    }

    #[test]
    fn sizes_and_times_read_naturally() {
        assert_eq!(fmt_mb(512), "512 MiB");
        assert_eq!(fmt_mb(2048), "2 GiB");
        assert_eq!(fmt_mb(12000), "12000 MiB");
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(40 * 1024 * 1024), "40.0 MiB");
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_time(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_time(4_107_542_399_000), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn a_batch_tables_its_successes_and_lines_its_failures() {
        let rows = vec![
            BatchRow {
                id: "vee-00000001".into(),
                result: "applied".into(),
                detail: String::new(),
                failed: false,
            },
            BatchRow {
                id: "vee-99999999".into(),
                result: "not_found".into(),
                detail: "no VEE vee-99999999".into(),
                failed: true,
            },
        ];
        let table = batch_table(&rows).expect("one success");
        assert_eq!(
            table.render(),
            "ID            RESULT\nvee-00000001  applied\n"
        );
        assert_eq!(
            failure_line(&rows[1]),
            "vee-99999999 (not_found): no VEE vee-99999999"
        );
        assert_eq!(batch_table(&rows[1..]), None);
    }

    #[test]
    fn key_value_pairs_align() {
        assert_eq!(
            pairs(&[("id", "vee-1".into()), ("veem state", "ACTIVE".into())]),
            "id:          vee-1\nveem state:  ACTIVE\n"
        );
    }
}
