//! Accounting and monitoring, measured through the real HTTP API of an in-process VEEM (SQLite
//! store on disk, 100 sim hosts), with listeners and subscribers of the bench's own on loopback:
//!
//! 1. accounting delivery jitter: 10,000 VEEs, each with a listener at 1 s; for every record,
//!    its arrival at the listener minus its planned time (`t0 + dt`);
//! 2. monitoring ingest: measurements per second through `POST /monitoring`, arrays of events
//!    from several clients at once;
//! 3. push latency: from the `POST /monitoring` of an event to its arrival at a subscriber.
//!
//! Run: `cargo bench -p veem-server --bench monitoring` (prints the rows for BENCHMARKS.md).
//! `VEEM_BENCH_LISTENERS`, `VEEM_BENCH_SECONDS` change the sizes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use veem_api::InitializeRequest;
use veem_client::Client;
use veem_model::{EventType, InitModel, Measurement, MonitoringEvent, VeeDescriptor, VeeId};

#[path = "support.rs"]
mod support;

use support::env_or;

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A loopback HTTP listener that hands every POST body and its arrival time (µs) to `sink`.
async fn listener(sink: Arc<Mutex<Vec<(u64, bytes::Bytes)>>>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                let at = wall_us();
                sink.lock().expect("not poisoned").push((at, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/push", socket.local_addr()?);
    tokio::spawn(async move { axum::serve(socket, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listeners = env_or("VEEM_BENCH_LISTENERS", 10_000);
    let seconds = env_or("VEEM_BENCH_SECONDS", 10) as u64;
    let (url, _dir) = support::start_veem(100).await?;
    let client = Client::new(&url, support::TOKEN)?;

    // 1. Accounting jitter.
    let mut ids = Vec::with_capacity(listeners);
    for chunk in 0..listeners.div_ceil(1000) {
        let count = (listeners - chunk * 1000).min(1000) as u32;
        let answer = client
            .initialize(&InitializeRequest {
                model: InitModel::Besteffort,
                count,
                descriptor: VeeDescriptor::minimal(1, 64),
            })
            .await?;
        ids.extend(answer.vees.into_iter().map(|v| v.id));
    }
    let received: Arc<Mutex<Vec<(u64, bytes::Bytes)>>> = Arc::default();
    let callback = listener(received.clone()).await?;
    for chunk in ids.chunks(1000) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        client.listen(&chunk, 1000, &callback).await?;
    }
    eprintln!("accounting: {listeners} listeners at 1 s, for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds) + Duration::from_millis(500)).await;
    client
        .unlisten(&ids.iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    let posts = std::mem::take(&mut *received.lock().expect("not poisoned"));
    let mut lateness: Vec<f64> = Vec::new();
    for (at_us, body) in &posts {
        let records: Vec<serde_json::Value> = serde_json::from_slice(body)?;
        for r in records {
            let planned_ms = r["t0"].as_u64().unwrap_or(0) + r["dt"].as_u64().unwrap_or(0);
            lateness.push(*at_us as f64 / 1000.0 - planned_ms as f64);
        }
    }
    lateness.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| accounting jitter, {listeners} listeners at 1 s, {seconds} s: {} records in {} POSTs | p50 {:.2} ms | p99 {:.2} ms | max {:.2} ms |",
        lateness.len(),
        posts.len(),
        percentile(&lateness, 50.0),
        percentile(&lateness, 99.0),
        lateness.last().copied().unwrap_or(f64::NAN)
    );

    // 2. Ingest.
    let vee = VeeId::parse(&ids[0])?;
    let per_event = 50;
    let per_post = 200;
    let batch: Vec<MonitoringEvent> = (0..per_post)
        .map(|e| MonitoringEvent {
            kind: EventType::Probe,
            t0: 1,
            dt: 1,
            vee: Some(vee.clone()),
            measurements: (0..per_event)
                .map(|m| Measurement::number(format!("bench.e{e}.m{m}"), m as f64))
                .collect(),
        })
        .collect();
    let batch = Arc::new(batch);
    let clients = 4;
    let until = Instant::now() + Duration::from_secs(seconds.min(5));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, batch) = (client.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut measurements = 0usize;
            while Instant::now() < until {
                measurements += client.put_monitoring(&batch).await?.measurements;
            }
            Ok::<usize, anyhow::Error>(measurements)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "| monitoring ingest, POSTs of {per_post} events x {per_event} measurements, {clients} clients | {total} measurements in {elapsed:.1} s | {:.0} measurements/s |",
        total as f64 / elapsed
    );

    // 3. Push latency.
    let pushed: Arc<Mutex<Vec<(u64, bytes::Bytes)>>> = Arc::default();
    let callback = listener(pushed.clone()).await?;
    client.subscribe(&callback, &[EventType::Agent]).await?;
    let events = 500;
    for _ in 0..events {
        let event = MonitoringEvent {
            kind: EventType::Agent,
            t0: 1,
            dt: 0,
            vee: Some(vee.clone()),
            measurements: vec![Measurement::number("bench.sent_us", wall_us() as f64)],
        };
        client.put_monitoring(&[event]).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latency: Vec<f64> = Vec::new();
    for (at_us, body) in pushed.lock().expect("not poisoned").iter() {
        let events: Vec<MonitoringEvent> = serde_json::from_slice(body)?;
        for e in events {
            if let Some(veem_model::MeasurementValue::Number(sent)) =
                e.measurements.first().map(|m| &m.value)
            {
                latency.push((*at_us as f64 - sent) / 1000.0);
            }
        }
    }
    latency.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| push latency, POST /monitoring to a subscriber, {} of {events} events | p50 {:.2} ms | p99 {:.2} ms | max {:.2} ms |",
        latency.len(),
        percentile(&latency, 50.0),
        percentile(&latency, 99.0),
        latency.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
