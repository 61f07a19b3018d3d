//! Population queries on the columnar index at 1 000 000 users and
//! 10 000 000 events + 1 000 000 orders (the scale), without HTTP:
//!
//!     cargo bench -p stratify-core --bench population
//!
//! Set STRATIFY_BENCH_USERS / STRATIFY_BENCH_EVENTS for other sizes.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Map, Value};
use stratify_core::datagen::{Generator, Spec};
use stratify_core::population::PopulationIndex;
use stratify_core::rules::{parse, NoSegments};

const NOW: i64 = 1_780_272_000_000; // 2026-06-01

fn build() -> PopulationIndex {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let users = env("STRATIFY_BENCH_USERS", 1_000_000);
    let events = env("STRATIFY_BENCH_EVENTS", 10_000_000);
    let mut g = Generator::new(Spec {
        users,
        events,
        orders: users,
        seed: 7,
        now: NOW,
    });
    let mut index = PopulationIndex::new();
    for u in g.users() {
        let attrs: Map<String, Value> = json!({"name": u.name, "age": u.age, "gender": u.gender, "location": u.location,
            "signup_date": u.signup_date, "subscription_plan": u.subscription_plan, "device_type": u.device_type})
        .as_object()
        .cloned()
        .unwrap_or_default();
        index.set_attributes(&u.user_id.to_string(), &attrs);
    }
    let evs: Vec<(String, &str, i64)> = g
        .events()
        .map(|e| (e.user_id.to_string(), e.event_name, e.timestamp))
        .collect();
    for chunk in evs.chunks(100_000) {
        index.add_events_deferred(chunk.iter().map(|(u, n, t)| (u.as_str(), *n, *t, None)));
    }
    let orders: Vec<(String, i64, Map<String, Value>)> = g
        .orders()
        .map(|o| {
            (
                o.user_id.to_string(),
                o.timestamp,
                json!({"amount": o.amount, "city": o.city})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    for chunk in orders.chunks(100_000) {
        index.add_events_deferred(
            chunk
                .iter()
                .map(|(u, t, p)| (u.as_str(), "order_placed", *t, Some(p))),
        );
    }
    index.settle_all();
    index
}

fn queries(c: &mut Criterion) {
    let index = build();
    let rules = [
        (
            "age_between",
            json!({"field": "age", "op": "between", "value": [25, 34]}),
        ),
        (
            "ca_and_login",
            json!({"operator": "AND", "conditions": [{"field": "location", "op": "eq", "value": "California"}, {"event": "LOGIN", "op": "gte", "value": 1}]}),
        ),
        (
            "login_3_in_30d",
            json!({"event": "LOGIN", "within": "30d", "op": "gte", "value": 3}),
        ),
        (
            "orders_2_in_23d",
            json!({"field": "order_count_last_23_days", "op": "gte", "value": 2}),
        ),
        (
            "ltv_gt_1000",
            json!({"field": "ltv", "op": "gt", "value": 1000}),
        ),
        (
            "dormant_14d",
            json!({"field": "seconds_since_last_order", "op": "gte", "value": 1_209_600}),
        ),
        (
            "city_bengaluru",
            json!({"field": "city", "op": "eq", "value": "Bengaluru"}),
        ),
    ];
    let mut g = c.benchmark_group("population");
    g.sample_size(20);
    for (name, rule) in rules {
        let rule = parse(&rule).unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(name, |b| {
            b.iter(|| index.select(&rule, NOW, &NoSegments).count())
        });
    }
    g.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
