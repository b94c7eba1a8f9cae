//! The instruments of this process: what counts events as they happen (HTTP requests, store
//! commits, placement decisions), fed with a line each by the HTTP layer and the core. A leaf:
//! it knows nothing of the core, so the core's parts can time themselves without a loop.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of one HTTP request's count: the route template (`/vmi/v1/vees/{id}`, never the
/// path the caller wrote, so no id becomes a label), its method and its status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

/// The labels of one HTTP request's duration: as [`RequestLabels`] without the status, so
/// that a route has one histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// The instruments of this process (see the module's comment), and the registry that holds them.
pub struct Instruments {
    pub(super) registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_seconds: Family<RouteLabels, Histogram>,
    commit_seconds: Histogram,
    placement_seconds: Histogram,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(Instruments::new);

/// This process's instruments.
pub fn instruments() -> &'static Instruments {
    &INSTRUMENTS
}

impl Instruments {
    fn new() -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "veem_build_info",
            "The veem version this process runs (always 1)",
            build_info,
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "veem_http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        // 0.5 ms to 16 s.
        let http_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "veem_http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by route template and method",
            http_seconds.clone(),
        );
        // 0.1 ms to 3.3 s.
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "veem_store_commit_duration_seconds",
            "Time one group commit of the store takes (one transaction, many callers' changes)",
            commit_seconds.clone(),
        );
        // 10 us to 1.3 s.
        let placement_seconds = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
        registry.register(
            "veem_placement_duration_seconds",
            "Time one placement decision takes (one VEE, or a whole batch), waiting for the \
             placement lock included",
            placement_seconds.clone(),
        );
        Self {
            registry,
            http_requests,
            http_seconds,
            commit_seconds,
            placement_seconds,
        }
    }
}

/// Observes the time from its making to its drop into a histogram.
pub struct Timer {
    histogram: &'static Histogram,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Times one group commit of the store, until dropped.
pub fn commit_timer() -> Timer {
    Timer {
        histogram: &instruments().commit_seconds,
        started: Instant::now(),
    }
}

/// Times one placement decision, until dropped.
pub fn placement_timer() -> Timer {
    Timer {
        histogram: &instruments().placement_seconds,
        started: Instant::now(),
    }
}

/// Counts one HTTP request answered after `seconds`; `route` is the template it matched.
pub fn http_request(route: &str, method: &str, status: u16, seconds: f64) {
    let instruments = instruments();
    instruments
        .http_requests
        .get_or_create(&RequestLabels {
            route: route.to_owned(),
            method: method.to_owned(),
            status,
        })
        .inc();
    instruments
        .http_seconds
        .get_or_create(&RouteLabels {
            route: route.to_owned(),
            method: method.to_owned(),
        })
        .observe(seconds);
}
