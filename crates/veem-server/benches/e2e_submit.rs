//! End-to-end throughput: InitializeVEEs + SubmitVEEs of 10,000 VEEs, in batches, on 100 sim
//! hosts, through the real HTTP API and the SQLite store, until all are ACTIVE.
//!
//! Run: `cargo bench -p veem-server --bench e2e_submit` (prints a table row for BENCHMARKS.md).
//! `VEEM_BENCH_VEES` and `VEEM_BENCH_BATCH` change the sizes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veem_api::InitializeRequest;
use veem_client::{Client, ListQuery};
use veem_model::{InitModel, VeeDescriptor, VmiState};

#[path = "support.rs"]
mod support;

use support::env_or;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vees = env_or("VEEM_BENCH_VEES", 10_000);
    let batch = env_or("VEEM_BENCH_BATCH", 100);
    let in_flight = env_or("VEEM_BENCH_IN_FLIGHT", 4);
    let (url, _dir) = support::start_veem(100).await?;
    let client = Client::new(&url, support::TOKEN)?;

    let mut descriptor = VeeDescriptor::minimal(1, 512);
    descriptor.name = "bench".into();
    let started = Instant::now();
    let batches = vees.div_ceil(batch);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let init_time = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let submit_time = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let mut tasks = Vec::new();
    for _ in 0..batches {
        let (init_time, submit_time) = (init_time.clone(), submit_time.clone());
        let permit = semaphore.clone().acquire_owned().await?;
        let client = client.clone();
        let descriptor = descriptor.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let r = client
                .initialize(&InitializeRequest {
                    model: InitModel::Besteffort,
                    count: batch as u32,
                    descriptor,
                })
                .await?;
            *init_time.lock().expect("not poisoned") += t.elapsed();
            let ids: Vec<String> = r.vees.into_iter().map(|v| v.id).collect();
            let t = Instant::now();
            let s = client.submit(&ids).await?;
            *submit_time.lock().expect("not poisoned") += t.elapsed();
            anyhow::ensure!(s.failed.is_empty(), "submit failed: {:?}", s.failed);
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submitted = started.elapsed();
    let total = batches * batch;
    loop {
        let active = client
            .list_all_vees(&ListQuery {
                state: Some(VmiState::Active),
                limit: Some(1000),
                ..ListQuery::default()
            })
            .await?
            .len();
        if active == total {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {active} of {total} became ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "time inside calls (summed over {in_flight} in flight): initialize {:.2} s, submit {:.2} s",
        init_time.lock().expect("not poisoned").as_secs_f64(),
        submit_time.lock().expect("not poisoned").as_secs_f64()
    );
    println!(
        "| e2e initialize+submit, {total} VEEs, batches of {batch} ({in_flight} in flight), 100 sim hosts | all submitted in {:.2} s | all ACTIVE in {:.2} s | {:.0} VEEs/s |",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
