//! The VEEM's Prometheus metrics: the series, their help, and the exposition text. No HTTP
//! here (`http/metrics.rs` serves `GET /metrics` and measures the requests).
//!
//! Two kinds of series:
//! - instruments that count events as they happen, one set per process ([`instruments`], a
//!   leaf module the core's parts use without a loop): HTTP
//!   requests, store commits, placement decisions. The core and the HTTP layer feed them with
//!   a line each ([`instruments::commit_timer`], [`instruments::placement_timer`],
//!   [`instruments::http_request`]).
//! - figures read from the books at scrape time ([`CoreFigures`], the core's
//!   [`crate::Veem::figures`]): VEEs by state, hosts'
//!   capacity and use, the placement queue, the push queues. They cost what the site has in
//!   hosts, never what it has in VEEs: the counts by state are kept as records change
//!   (`veem/records.rs`) and each host's load is a line of placement's books.
//!
//! A front-end that does not lead has no books: it shows its instruments and `veem_leader 0`.

use std::collections::HashMap;
use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use veem_api::HostState;
use veem_model::VmiState;
/// What [`CoreFigures::loads`] is made of.
pub use veem_placement::{Capacity, HostLoad};

use crate::veem::CoreFigures;

pub mod instruments;

use instruments::instruments;

/// How the exposition is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (`text/plain; version=0.0.4`).
    PrometheusText,
    /// OpenMetrics 1.0 text (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The exposition: this process's instruments, `veem_leader`, and when this front-end leads,
/// the figures of its books.
pub fn render(figures: Option<CoreFigures>, format: Format) -> String {
    let mut per_host = String::new();
    if let Some(figures) = &figures {
        write_host_series(&mut per_host, figures);
    }
    let mut scraped = Registry::default();
    scraped.register_collector(Box::new(Scraped { figures }));
    let mut text = String::with_capacity(per_host.len() + 64 * 1024);
    // Writing to a String cannot fail, nor can the encoders of these metrics.
    let _ = prometheus_client::encoding::text::encode_registry(&mut text, &instruments().registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut text, &scraped);
    text.push_str(&per_host);
    match format {
        Format::OpenMetrics => {
            let _ = prometheus_client::encoding::text::encode_eof(&mut text);
            text
        }
        Format::PrometheusText => prometheus_text(&text),
    }
}

/// OpenMetrics text as the Prometheus text format (0.0.4) writes it: there a counter's family
/// is named as its samples are, with `_total`, and there is no `# EOF` (not written here). Only
/// the few `# HELP` and `# TYPE` lines of counters change: the rest, one line per host and
/// figure, is copied in large slices.
fn prometheus_text(open_metrics: &str) -> String {
    // Where "_total" goes: after the family's name in its HELP and TYPE lines.
    let mut insertions = Vec::new();
    for (at, _) in open_metrics.match_indices("# TYPE ") {
        let line = &open_metrics[at..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        else {
            continue;
        };
        let name_end = at + "# TYPE ".len() + name.len();
        insertions.push(name_end);
        // prometheus-client writes a family's HELP line just before its TYPE line.
        let help = format!("# HELP {name} ");
        if let Some(help_at) = open_metrics[..at].rfind(&help) {
            insertions.push(help_at + help.len() - 1);
        }
    }
    insertions.sort_unstable();
    let mut text = String::with_capacity(open_metrics.len() + insertions.len() * 6);
    let mut copied = 0;
    for at in insertions {
        text.push_str(&open_metrics[copied..at]);
        text.push_str("_total");
        copied = at;
    }
    text.push_str(&open_metrics[copied..]);
    text
}

/// The series computed at scrape time.
#[derive(Debug)]
struct Scraped {
    figures: Option<CoreFigures>,
}

fn gauge<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn single_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        single_gauge(
            &mut encoder,
            "veem_leader",
            "1 if this front-end leads its site (and so shows the VEE and host series), else 0",
            i64::from(self.figures.is_some()),
        )?;
        let Some(figures) = &self.figures else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "veem_vees",
            "VEEs in each VMI state (DESTROYED ones until purged), as GET /vees?state= lists them",
            VmiState::ALL
                .into_iter()
                .map(|state| ([("state", state.as_str())], count(figures.vees.of(state)))),
        )?;
        single_gauge(
            &mut encoder,
            "veem_pending_vees",
            "VEEs waiting for a host (INITIAL, not placed yet)",
            count(figures.pending as u64),
        )?;
        encode_hosts(&mut encoder, figures)?;
        let pushes = [
            ("accounting", &figures.accounting_push),
            ("monitoring", &figures.monitoring_push),
        ];
        gauge(
            &mut encoder,
            "veem_push_queued_items",
            "Items waiting to be pushed to listeners' callbacks (accounting records, \
             monitoring events), over all callbacks",
            pushes.map(|(push, totals)| ([("push", push)], count(totals.queued))),
        )?;
        let mut dropped = encoder.encode_descriptor(
            "veem_push_dropped_items",
            "Items dropped before any listener took them (queue bound, unserializable, \
             listener removed), since this front-end started leading",
            None,
            MetricType::Counter,
        )?;
        for (push, totals) in pushes {
            let labels = [("push", push)];
            ConstCounter::new(totals.dropped).encode(dropped.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn host_state_label(state: HostState) -> &'static str {
    match state {
        HostState::Up => "up",
        HostState::Disabled => "disabled",
        HostState::Down => "down",
    }
}

/// The hosts' series summed over the site (the per-host ones are [`write_host_series`]'s).
fn encode_hosts(
    encoder: &mut DescriptorEncoder,
    figures: &CoreFigures,
) -> Result<(), std::fmt::Error> {
    let states = [HostState::Up, HostState::Disabled, HostState::Down];
    gauge(
        encoder,
        "veem_hosts",
        "Hosts in each state (up, disabled, down), as GET /hosts shows them",
        states.map(|state| {
            let hosts = figures
                .host_states
                .iter()
                .filter(|(_, s)| *s == state)
                .count();
            ([("state", host_state_label(state))], count(hosts as u64))
        }),
    )?;
    type Figure = (&'static str, &'static str, fn(&HostLoad) -> u64);
    let site: [Figure; 4] = [
        ("veem_site_cpus", "CPUs of all hosts (capacity)", |l| {
            u64::from(l.capacity.cpus)
        }),
        (
            "veem_site_memory_mb",
            "Memory in MB of all hosts (capacity)",
            |l| l.capacity.memory_mb,
        ),
        (
            "veem_site_used_cpus",
            "CPUs allocated to VEEs on all hosts",
            |l| u64::from(l.used.cpus),
        ),
        (
            "veem_site_used_memory_mb",
            "Memory in MB allocated to VEEs on all hosts",
            |l| l.used.memory_mb,
        ),
    ];
    for (name, help, value) in site {
        let sum = figures.loads.iter().map(|(_, load)| value(load)).sum();
        single_gauge(encoder, name, help, count(sum))?;
    }
    Ok(())
}

/// The per-host series, written straight into `text` in the exposition's syntax (the same in
/// both formats: gauges, one `host` label). At 10,000 hosts they are 60,000 lines, most of a
/// scrape, and the generic encoder costs several times this loop. Host ids need no escaping:
/// they are letters, digits, '.', '_' and '-'.
fn write_host_series(text: &mut String, figures: &CoreFigures) {
    let family = |text: &mut String, name: &str, help: &str| {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n");
    };
    family(
        text,
        "veem_host_state",
        "1 for each host, labelled with its state (up, disabled, down)",
    );
    for (host, state) in &figures.host_states {
        text.push_str("veem_host_state{host=\"");
        text.push_str(host.as_str());
        text.push_str("\",state=\"");
        text.push_str(host_state_label(*state));
        text.push_str("\"} 1\n");
    }
    let mut loads: Vec<(&str, &HostLoad)> = figures
        .loads
        .iter()
        .map(|(host, load)| (host.as_str(), load))
        .collect();
    loads.sort_unstable_by_key(|(host, _)| *host);
    type Figure = (&'static str, &'static str, fn(&HostLoad) -> u64);
    let per_host: [Figure; 5] = [
        (
            "veem_host_vees",
            "VEEs holding an allocation on each host (the vees of GET /hosts)",
            |l| l.vees as u64,
        ),
        ("veem_host_cpus", "Each host's CPUs (capacity)", |l| {
            u64::from(l.capacity.cpus)
        }),
        (
            "veem_host_memory_mb",
            "Each host's memory in MB (capacity)",
            |l| l.capacity.memory_mb,
        ),
        (
            "veem_host_used_cpus",
            "CPUs allocated to VEEs on each host",
            |l| u64::from(l.used.cpus),
        ),
        (
            "veem_host_used_memory_mb",
            "Memory in MB allocated to VEEs on each host",
            |l| l.used.memory_mb,
        ),
    ];
    for (name, help, value) in per_host {
        family(text, name, help);
        for (host, load) in &loads {
            let _ = writeln!(text, "{name}{{host=\"{host}\"}} {}", value(load));
        }
    }
}

/// A parsed exposition, for tests: each sample's `name{labels}` (labels as written) to its
/// value.
pub fn parse_samples(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(value) = value.parse::<f64>() {
                samples.insert(series.to_owned(), value);
            }
        }
    }
    samples
}

/// Writes `name{label="value",...}` as an exposition writes it, for looking up
/// [`parse_samples`]'s answer.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let mut text = format!("{name}{{");
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "{key}=\"{value}\"");
    }
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use veem_model::HostId;

    use super::instruments::{http_request, placement_timer};
    use super::*;
    use crate::push::PushTotals;
    use crate::veem::VeeCounts;

    fn host(name: &str) -> HostId {
        HostId::new(name).expect("a valid host name")
    }

    fn figures() -> CoreFigures {
        let vees = VeeCounts([3, 0, 5, 1, 0, 2]);
        let load = |cpus, used_cpus, vees| HostLoad {
            capacity: Capacity {
                cpus,
                memory_mb: 8192,
            },
            used: Capacity {
                cpus: used_cpus,
                memory_mb: 1024 * u64::from(used_cpus),
            },
            enabled: true,
            vees,
        };
        CoreFigures {
            vees,
            pending: 3,
            host_states: vec![(host("h1"), HostState::Up), (host("h2"), HostState::Down)],
            loads: vec![
                (Arc::new(host("h2")), load(4, 0, 0)),
                (Arc::new(host("h1")), load(8, 6, 3)),
            ],
            accounting_push: PushTotals {
                queued: 7,
                dropped: 2,
            },
            monitoring_push: PushTotals::default(),
        }
    }

    #[test]
    fn the_exposition_shows_every_series_with_its_help_and_the_books_figures() {
        http_request("/vmi/v1/vees/{id}", "GET", 200, 0.003);
        let text = render(Some(figures()), Format::PrometheusText);
        let samples = parse_samples(&text);
        let value = |name: &str, labels: &[(&str, &str)]| {
            *samples
                .get(&series(name, labels))
                .unwrap_or_else(|| panic!("no {} in\n{text}", series(name, labels)))
        };
        let by_state: Vec<f64> = VmiState::ALL
            .iter()
            .map(|s| value("veem_vees", &[("state", s.as_str())]))
            .collect();
        assert_eq!(
            by_state,
            vec![3.0, 0.0, 5.0, 1.0, 0.0, 2.0],
            "all six states"
        );
        assert_eq!(value("veem_pending_vees", &[]), 3.0);
        assert_eq!(value("veem_leader", &[]), 1.0);
        assert_eq!(value("veem_host_vees", &[("host", "h1")]), 3.0);
        assert_eq!(value("veem_host_used_cpus", &[("host", "h1")]), 6.0);
        assert_eq!(value("veem_host_memory_mb", &[("host", "h2")]), 8192.0);
        assert_eq!(value("veem_site_cpus", &[]), 12.0);
        assert_eq!(value("veem_site_used_memory_mb", &[]), 6144.0);
        assert_eq!(value("veem_hosts", &[("state", "up")]), 1.0);
        assert_eq!(value("veem_hosts", &[("state", "down")]), 1.0);
        assert_eq!(value("veem_hosts", &[("state", "disabled")]), 0.0);
        assert_eq!(
            value("veem_host_state", &[("host", "h2"), ("state", "down")]),
            1.0
        );
        assert_eq!(
            value("veem_push_queued_items", &[("push", "accounting")]),
            7.0
        );
        assert_eq!(
            value("veem_push_dropped_items_total", &[("push", "accounting")]),
            2.0
        );
        assert_eq!(
            value("veem_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
            1.0
        );
        let requests = series(
            "veem_http_requests_total",
            &[
                ("route", "/vmi/v1/vees/{id}"),
                ("method", "GET"),
                ("status", "200"),
            ],
        );
        assert!(samples[&requests] >= 1.0);
        assert!(
            samples.keys().any(
                |k| k.starts_with("veem_http_request_duration_seconds_bucket{")
                    && k.contains("route=\"/vmi/v1/vees/{id}\"")
            ),
            "a latency histogram per route"
        );
        // Every family is described, and the text format names counters as their samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line
                .split(' ')
                .nth(2)
                .expect("a TYPE line names its family");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
            assert!(name.starts_with("veem_"), "{name} is not veem's");
        }
        assert!(text.contains("# TYPE veem_http_requests_total counter\n"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_is_written_when_asked_and_a_follower_shows_only_its_process() {
        let text = render(None, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE veem_store_commit_duration_seconds histogram\n"));
        let samples = parse_samples(&text);
        assert_eq!(samples.get("veem_leader"), Some(&0.0));
        assert!(
            !samples.keys().any(|k| k.starts_with("veem_vees")),
            "no books, no VEE series"
        );
    }

    #[test]
    fn timers_observe_into_their_histograms() {
        let count = || {
            let text = render(None, Format::PrometheusText);
            parse_samples(&text)["veem_placement_duration_seconds_count"]
        };
        let before = count();
        drop(placement_timer());
        assert!(count() > before);
    }
}
