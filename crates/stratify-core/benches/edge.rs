//! The per-event cost at the edge: validating an event document and
//! inferring a CSV cell's type (both run once per ingested item).
//!
//!     cargo bench -p stratify-core --bench edge

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use stratify_core::attributes::infer_csv_value;
use stratify_core::event::NewEvent;

fn validate_events(c: &mut Criterion) {
    let order = json!({"event_id": "evt-123456", "user_id": "user-42", "name": "order_placed",
        "timestamp": "2026-05-01T12:00:00Z", "properties": {"amount": 249.5, "city": "Pune"}});
    let login = json!({"user_id": "user-42", "name": "LOGIN", "timestamp": 1_780_000_000_000i64});
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_order_with_properties", |b| {
        b.iter(|| NewEvent::from_json(black_box(order.clone()), 0))
    });
    g.bench_function("validate_login", |b| {
        b.iter(|| NewEvent::from_json(black_box(login.clone()), 0))
    });
    g.bench_function("parse_and_validate_from_text", |b| {
        let text = order.to_string();
        b.iter(|| {
            NewEvent::from_json(
                serde_json::from_str(black_box(&text)).unwrap_or_default(),
                0,
            )
        })
    });
    g.finish();
}

fn infer_cells(c: &mut Criterion) {
    let cells = ["42", "California", "2024-03-15", "true", "249.50", "02134"];
    c.bench_function("csv/infer_6_cells", |b| {
        b.iter(|| {
            cells
                .iter()
                .filter_map(|c| infer_csv_value(black_box(c)))
                .collect::<Vec<_>>()
        })
    });
}

criterion_group!(benches, validate_events, infer_cells);
criterion_main!(benches);
