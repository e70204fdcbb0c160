//! The laws of priority with SLA decay (src/README.md), as properties.

use hitl_assignment::queue::{DecayParams, Key, Pending, Queue};
use proptest::prelude::*;

const MINUTE: i64 = 60_000;

fn item(
    id: &str,
    enqueued_at: i64,
    sla: i64,
    tier: u8,
    risk: Option<f64>,
    amount: Option<f64>,
) -> Pending {
    Pending {
        id: id.to_owned(),
        enqueued_at,
        sla_deadline: enqueued_at + sla,
        tier,
        risk,
        amount,
    }
}

fn arbitrary_item(id: String) -> impl Strategy<Value = Pending> {
    (
        0i64..10_000 * MINUTE,
        MINUTE..24 * 60 * MINUTE,
        0u8..4,
        proptest::option::of(0.0f64..=1.0),
        proptest::option::of(0.0f64..1e7),
    )
        .prop_map(move |(at, sla, tier, risk, amount)| item(&id, at, sla, tier, risk, amount))
}

fn arbitrary_params() -> impl Strategy<Value = DecayParams> {
    (
        prop::array::uniform4(0.0f64..0.3),
        0.0f64..0.3,
        0.0f64..0.3,
        0.05f64..0.95,
    )
        .prop_map(
            |(mut tiers, risk_fraction, amount_fraction, max_fraction)| {
                tiers.sort_by(f64::total_cmp);
                DecayParams {
                    tier_fraction: tiers,
                    risk_fraction,
                    amount_fraction,
                    amount_scale: 1e5,
                    max_fraction,
                }
            },
        )
}

fn drain(queue: &mut Queue) -> Vec<String> {
    std::iter::from_fn(|| queue.pop_first(|_| true).map(|(id, _)| id.to_string())).collect()
}

proptest! {
    #[test]
    fn same_input_same_order(items in prop::collection::vec(arbitrary_item(String::new()), 1..60)) {
        let items: Vec<Pending> =
            items.into_iter().enumerate().map(|(i, mut item)| { item.id = format!("i{i}"); item }).collect();
        let mut first = Queue::new(DecayParams::default());
        let mut second = Queue::new(DecayParams::default());
        for item in &items {
            first.push(item);
            second.push(item);
        }
        prop_assert_eq!(drain(&mut first), drain(&mut second));
    }

    /// An item is never passed by one that arrives after its deadline minus (1 − max_fraction) of
    /// the later item's SLA.
    #[test]
    fn no_starvation(
        params in arbitrary_params(),
        early in arbitrary_item("early".into()),
        mut late in arbitrary_item("late".into()),
        lateness in 0i64..1000 * MINUTE,
    ) {
        let late_sla = late.sla_deadline - late.enqueued_at;
        let bound = early.sla_deadline - ((1.0 - params.max_fraction) * late_sla as f64) as i64;
        late.enqueued_at = bound + 1 + lateness;
        late.sla_deadline = late.enqueued_at + late_sla;
        let mut queue = Queue::new(params);
        queue.push(&early);
        queue.push(&late);
        prop_assert_eq!(&*queue.pop_first(|_| true).unwrap().0, "early");
    }

    /// At equal age and SLA, a higher base priority (tier, risk, amount) goes first.
    #[test]
    fn higher_base_priority_first_at_equal_age(
        at in 0i64..1000 * MINUTE,
        sla in MINUTE..1000 * MINUTE,
        (low_tier, high_tier) in (0u8..4, 0u8..4).prop_filter("distinct", |(a, b)| a < b),
    ) {
        // Tier fractions strictly increase by default (0, 0.1, 0.25, 0.4).
        let mut queue = Queue::new(DecayParams::default());
        queue.push(&item("low", at, sla, low_tier, None, None));
        queue.push(&item("high", at, sla, high_tier, None, None));
        prop_assert_eq!(&*queue.pop_first(|_| true).unwrap().0, "high");
        let mut queue = Queue::new(DecayParams::default());
        queue.push(&item("safe", at, sla, 1, Some(0.1), None));
        queue.push(&item("risky", at, sla, 1, Some(0.9), None));
        prop_assert_eq!(&*queue.pop_first(|_| true).unwrap().0, "risky");
    }

    /// Among breached items of the same priority, the most overdue goes first, whatever the
    /// arrival order; at different priorities, overdue time is weighted by the bonus.
    #[test]
    fn most_overdue_first(
        sla in MINUTE..100 * MINUTE,
        deadline_a in 0i64..1000 * MINUTE,
        gap in 1i64..100 * MINUTE,
        tier in 0u8..4,
        push_later_first in any::<bool>(),
    ) {
        let older = item("older", deadline_a - sla, sla, tier, None, None);
        let newer = item("newer", deadline_a + gap - sla, sla, tier, None, None);
        let mut queue = Queue::new(DecayParams::default());
        if push_later_first {
            queue.push(&newer);
            queue.push(&older);
        } else {
            queue.push(&older);
            queue.push(&newer);
        }
        prop_assert_eq!(&*queue.pop_first(|_| true).unwrap().0, "older");
    }

    /// Equal attributes: first come, first served.
    #[test]
    fn ties_break_by_arrival(template in arbitrary_item(String::new()), count in 2usize..20) {
        let mut queue = Queue::new(DecayParams::default());
        for i in 0..count {
            queue.push(&Pending { id: format!("t{i:02}"), ..template.clone() });
        }
        let expected: Vec<String> = (0..count).map(|i| format!("t{i:02}")).collect();
        prop_assert_eq!(drain(&mut queue), expected);
    }

    /// A requeued item (revoked, deferred) gets its old place back; pushing a known id is a no-op.
    #[test]
    fn requeue_restores_the_old_place(items in prop::collection::vec(arbitrary_item(String::new()), 2..40), pick in any::<prop::sample::Index>()) {
        let items: Vec<Pending> =
            items.into_iter().enumerate().map(|(i, mut item)| { item.id = format!("i{i}"); item }).collect();
        let mut reference = Queue::new(DecayParams::default());
        let mut queue = Queue::new(DecayParams::default());
        for item in &items {
            reference.push(item);
            queue.push(item);
        }
        // Pushing a known id again changes nothing.
        let first_key = *queue.iter().find(|(_, id)| ***id == *items[0].id).unwrap().0;
        prop_assert_eq!(queue.push(&items[0]), first_key);
        prop_assert_eq!(queue.len(), items.len());
        let chosen = &items[pick.index(items.len())];
        let key = queue.remove(&chosen.id).unwrap();
        queue.requeue(chosen.id.as_str().into(), key);
        prop_assert_eq!(drain(&mut queue), drain(&mut reference));
    }

    /// `pop_first` takes the most urgent eligible item and leaves the rest in order.
    #[test]
    fn pop_first_skips_ineligible(items in prop::collection::vec(arbitrary_item(String::new()), 1..40)) {
        let items: Vec<Pending> =
            items.into_iter().enumerate().map(|(i, mut item)| { item.id = format!("i{i}"); item }).collect();
        let mut queue = Queue::new(DecayParams::default());
        for item in &items {
            queue.push(item);
        }
        let order: Vec<String> = queue.iter().map(|(_, id)| id.to_string()).collect();
        let eligible = |id: &str| id.trim_start_matches('i').parse::<usize>().unwrap() % 3 == 0;
        if let Some((id, _)) = queue.pop_first(eligible) {
            let expected = order.iter().find(|id| eligible(id)).unwrap();
            prop_assert_eq!(&*id, expected.as_str());
            let rest: Vec<String> = order.iter().filter(|other| other.as_str() != &*id).cloned().collect();
            prop_assert_eq!(drain(&mut queue), rest);
        } else {
            prop_assert!(order.iter().all(|id| !eligible(id)));
        }
    }
}

#[test]
fn urgency_rises_alike_for_every_item() {
    let a = Key {
        virtual_deadline: 10_000,
        sequence: 0,
    };
    let b = Key {
        virtual_deadline: 50_000,
        sequence: 1,
    };
    for now in [0, 30_000, 90_000] {
        assert!(Queue::urgency(&a, now) > Queue::urgency(&b, now));
        assert_eq!(
            Queue::urgency(&a, now + 1_000) - Queue::urgency(&a, now),
            1.0
        );
    }
}

#[test]
fn bad_parameters_are_named() {
    let params = DecayParams {
        tier_fraction: [0.3, 0.1, 0.2, 1.2],
        max_fraction: 1.0,
        amount_scale: 0.5,
        ..DecayParams::default()
    };
    let problems = params.problems().join("\n");
    for expected in [
        "every fraction",
        "tier_fraction",
        "max_fraction",
        "amount_scale",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} missing in {problems}"
        );
    }
    assert!(DecayParams::default().problems().is_empty());
}
