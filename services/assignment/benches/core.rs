//! The whole assignment core with 1,000,000 pending items: memory per pending item, and
//! next-assignment throughput — a pass that hands out 100,000 items to 100 reviewers, and the
//! steady state where each verdict frees a slot that the next item fills.
//!
//! Items look like typical review requests: two context entries (one sensitive), a workflow,
//! subject, action, producer, policy rule and version. Heap bytes are counted exactly by a counting
//! allocator; the resident-memory delta (allocator overhead included) is printed beside them.

use std::time::{Duration, Instant};

use cap::Cap;

use criterion::{criterion_group, criterion_main, Criterion};
use hitl_assignment::{
    core::{Core, Effect},
    pools::CoreConfig,
};
use hitl_schema::{AssignmentKind, Presence, ReviewRequest, ReviewerStatus, Verdict, VerdictKind};

/// mimalloc, as the service binary uses, wrapped to count live heap bytes.
#[global_allocator]
static ALLOCATOR: Cap<mimalloc::MiMalloc> = Cap::new(mimalloc::MiMalloc, usize::MAX);

/// Bytes currently allocated on the heap.
fn heap_bytes() -> isize {
    ALLOCATOR.allocated() as isize
}

const ITEMS: usize = 1_000_000;
const T0: i64 = 1_800_000_000_000;

fn request(i: usize) -> ReviewRequest {
    let routed_at = T0 + (i as i64) * 3;
    hitl_schema::sample::review_request(
        format!("payments-{i:010}"),
        i as u64,
        "payments".into(),
        routed_at,
        routed_at + 60_000 * (60 + (i as i64 % 240)),
    )
}

fn reviewer(i: usize, capacity: i32) -> ReviewerStatus {
    ReviewerStatus {
        reviewer_id: format!("reviewer-{i:03}"),
        roles: vec!["analyst".into()],
        skills: vec![],
        pools: vec![],
        capacity,
        partition: Some((i % 8) as i32),
        presence: Presence::Online,
        updated_at: 0,
    }
}

/// The trace context the router gives item `i`'s review request (every request it writes has one).
fn trace(i: usize) -> Option<hitl_runtime::trace::TraceContext> {
    Some(hitl_runtime::trace::TraceContext::child(
        None,
        format!("bench-{i}").as_bytes(),
        1.0,
    ))
}

/// A core holding `ITEMS` pending items and nobody online.
fn full_core() -> Core {
    let mut config = CoreConfig::default();
    config.default_pool.escalate_at_sla.clear();
    let mut core = Core::new(config);
    let mut out = Vec::new();
    for i in 0..ITEMS {
        core.request_traced(&request(i), trace(i), T0 + i as i64 * 3, &mut out);
        out.clear();
    }
    core
}

fn bench(c: &mut Criterion) {
    let (heap_before, rss_before) = (
        heap_bytes(),
        hitl_runtime::metrics::resident_bytes() as usize,
    );
    let mut core = full_core();
    let (heap_after, rss_after) = (
        heap_bytes(),
        hitl_runtime::metrics::resident_bytes() as usize,
    );
    println!(
        "core with {ITEMS} pending items: {} heap bytes per item (counted), ~{} bytes per item resident",
        (heap_after - heap_before) / ITEMS as isize,
        rss_after.saturating_sub(rss_before) / ITEMS
    );
    println!("item struct: {} bytes", hitl_assignment::core::ITEM_BYTES);
    let now = T0 + ITEMS as i64 * 3;

    // One pass: 100 reviewers with 1,000 slots each come online and take 100,000 items.
    // Effects are dropped after each call, as the shell does once it has encoded them.
    let mut out = Vec::with_capacity(8192);
    let mut assigned = Vec::new();
    let mut elapsed = Duration::ZERO;
    for i in 0..100 {
        let started = Instant::now();
        core.reviewer_status(&reviewer(i, 1000), now, &mut out);
        elapsed += started.elapsed();
        assigned.extend(out.drain(..).filter_map(|effect| match effect {
            Effect::Assignment {
                event, pii: false, ..
            } if event.kind == AssignmentKind::Assigned => Some(event),
            _ => None,
        }));
    }
    println!(
        "assignment pass: {} items to 100 reviewers in {:?}: {:.0} assignments/s",
        assigned.len(),
        elapsed,
        assigned.len() as f64 / elapsed.as_secs_f64(),
    );

    // Steady state: a verdict frees a slot, the next item is assigned into it.
    let mut leases: std::collections::VecDeque<_> = assigned.into();
    let mut next_item = ITEMS;
    let mut group = c.benchmark_group("core_1m");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("verdict_then_next_assignment", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let lease = leases.pop_front().expect("enough leases for the benchmark");
                let verdict = Verdict {
                    decision_id: lease.decision_id,
                    assignment_id: lease.assignment_id,
                    reviewer_id: lease.reviewer_id,
                    verdict: VerdictKind::Approve,
                    amended_action: None,
                    rationale: String::new(),
                    decided_at: now,
                    pool: lease.pool,
                };
                let started = Instant::now();
                core.verdict(&verdict, now, &mut out);
                total += started.elapsed();
                // Keep the queue at 1,000,000 (untimed).
                core.request_traced(&request(next_item), trace(next_item), now, &mut Vec::new());
                next_item += 1;
                for effect in out.drain(..) {
                    if let Effect::Assignment {
                        event, pii: false, ..
                    } = effect
                    {
                        if event.kind == AssignmentKind::Assigned {
                            leases.push_back(event); // keeps the lease supply going
                        }
                    }
                }
            }
            total
        })
    });
    // A reviewer with 1,000 free slots comes online and the pass fills them (per assignment).
    let mut next_reviewer = 1000;
    group.bench_function("assignment_pass_per_item", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iterations {
                next_reviewer += 1;
                let started = Instant::now();
                core.reviewer_status(&reviewer(next_reviewer, 1000), now, &mut out);
                total += started.elapsed();
                let made = out
                    .iter()
                    .filter(|e| matches!(e, Effect::Assignment { pii: false, .. }))
                    .count() as u64;
                assert!(made > 0, "queue ran dry");
                done += made;
                out.clear();
                for _ in 0..made {
                    core.request_traced(
                        &request(next_item),
                        trace(next_item),
                        now,
                        &mut Vec::new(),
                    );
                    next_item += 1;
                }
            }
            total.mul_f64(iterations as f64 / done as f64)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
