//! How fast the store takes accounting: one commit of one `AppendAccounting` change of N
//! records (100 VEEs, one record each per interval) on a durable file store, as the server's
//! accounting writer does. The target is well over 10,000 records a second.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use veem_store::conformance::{accounted, accounting_record, plain_record};
use veem_store::{Change, SqliteStore, Store, FIRST_VEE_SEQ};

const VEES: u64 = 100;

fn append_accounting(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = SqliteStore::open(&dir.path().join("bench.db")).expect("open");
    let vees: Vec<_> = (0..VEES)
        .map(|i| plain_record(FIRST_VEE_SEQ + i).id)
        .collect();
    store
        .commit(
            &(0..VEES)
                .map(|i| Change::InsertVee(plain_record(FIRST_VEE_SEQ + i)))
                .collect::<Vec<_>>(),
        )
        .expect("insert the VEEs");

    let mut group = c.benchmark_group("append_accounting");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    // Each iteration appends later intervals than the last, as the writer does.
    let mut next_t0 = 0;
    for records in [100u64, 1_000, 10_000] {
        group.throughput(Throughput::Elements(records));
        group.bench_function(format!("{records}_records"), |b| {
            b.iter_batched(
                || {
                    let batch: Vec<_> = (0..records)
                        .map(|i| {
                            let vee = &vees[(i % VEES) as usize];
                            accounted(
                                "alice",
                                accounting_record(vee, next_t0 + 1_000 * (i / VEES)),
                            )
                        })
                        .collect();
                    next_t0 += 1_000 * records.div_ceil(VEES);
                    [Change::AppendAccounting(batch)]
                },
                |change| store.commit(&change).expect("append"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, append_accounting);
criterion_main!(benches);
