//! The pending queue alone (issue #3 will add eligibility and balancing on top) at 1,000,000 items:
//! pop throughput (next item, every reviewer eligible) and push+pop, plus an estimate of the bytes
//! per pending item from the process's resident memory.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hitl_assignment::queue::{DecayParams, Pending, Queue};

const ITEMS: usize = 1_000_000;

fn items() -> Vec<Pending> {
    (0..ITEMS)
        .map(|i| {
            let enqueued_at = (i as i64) * 7 % 3_600_000;
            Pending {
                id: format!("payments-{i:010}"),
                enqueued_at,
                sla_deadline: enqueued_at + 60_000 * (5 + (i as i64 % 240)),
                tier: (i % 4) as u8,
                risk: Some((i % 100) as f64 / 100.0),
                amount: Some((i % 50_000) as f64),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let items = items();
    let before = hitl_runtime::metrics::resident_bytes() as usize;
    let mut full = Queue::new(DecayParams::default());
    for item in &items {
        full.push(item);
    }
    let after = hitl_runtime::metrics::resident_bytes() as usize;
    println!(
        "queue of {ITEMS} pending items: ~{} bytes per item (resident memory delta)",
        (after.saturating_sub(before)) / ITEMS
    );
    let mut group = c.benchmark_group("queue_1m");
    group.sample_size(10);
    // Pop the most urgent item, then put it back with its key: the queue stays at 1M.
    group.bench_function("pop_then_requeue", |b| {
        b.iter(|| {
            let (id, key) = full.pop_first(|_| true).unwrap();
            full.requeue(id, key);
        })
    });
    group.bench_function("pop_1000_of_1m", |b| {
        b.iter_batched_ref(
            || {
                let mut queue = Queue::new(DecayParams::default());
                for item in items.iter().take(ITEMS) {
                    queue.push(item);
                }
                queue
            },
            |queue| {
                for _ in 0..1000 {
                    std::hint::black_box(queue.pop_first(|_| true));
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
