//! Any bytes that are JSON go through the rule parser, and every rule it
//! accepts goes through evaluation, explain, SQL compilation (both dialects)
//! and next-change computation: none of them may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratify_core::rules::{self, sql, EventFact, Facts, NoSegments};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(rule) = rules::parse(&value) else { return };
    let attrs = serde_json::json!({"age": 30, "city": "Pune", "tags": ["a"], "v": "1.2.3"});
    let props = serde_json::json!({"amount": 10.5, "city": "Pune"});
    let events = [
        EventFact { name: "order_placed", timestamp: 1_000, properties: props.as_object() },
        EventFact { name: "LOGIN", timestamp: 2_000, properties: None },
    ];
    let empty = serde_json::Map::new();
    let facts = Facts { attributes: attrs.as_object().unwrap_or(&empty), events: &events, segments: &NoSegments, now: 5_000 };
    let _ = rules::evaluate(&rule, &facts);
    let _ = rules::explain(&rule, &facts);
    let _ = rules::next_change(&rule, &facts);
    let _ = sql::members(&rule, sql::Dialect::Sqlite, 5_000, &NoSegments);
    let _ = sql::members(&rule, sql::Dialect::Postgres, 5_000, &NoSegments);
});
