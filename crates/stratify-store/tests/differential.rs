//! Differential test (ARCHITECTURE invariant 2): on random rules and random
//! data, the per-user evaluator, the columnar population index and the
//! compiled SQL (run by SQLite, and by PostgreSQL in its dialect) select exactly the same users — including NOT, missing attributes, mixed types
//! and events at the very edges of windows.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use stratify_core::event::NewEvent;
use stratify_core::ids::UserId;
use stratify_core::population::PopulationIndex;
use stratify_core::rules::{self, sql, EventFact, Facts, NoSegments};
use stratify_store::postgres::PgStore;
use stratify_store::sqlite::SqliteStore;
use stratify_store::*;

const NOW: i64 = 1_780_000_000_000;
const DAY: i64 = 86_400_000;

/// Offsets from NOW that sit on and next to every window boundary used below.
const OFFSETS: [i64; 10] = [
    -30 * DAY,
    -14 * DAY,
    -14 * DAY + 1,
    -DAY,
    -DAY + 1,
    -1000,
    -1,
    0,
    1,
    5 * DAY,
];

/// (name, timestamp, properties)
type Event = (String, i64, Option<Map<String, Value>>);

#[derive(Debug, Clone)]
struct UserData {
    attributes: Map<String, Value>,
    events: Vec<Event>,
}

fn attr_value(name: &'static str) -> BoxedStrategy<Option<Value>> {
    let any_scalar = prop_oneof![
        (0i64..6).prop_map(|n| json!(n * 10)),
        (0i64..8).prop_map(|n| json!(n as f64 * 0.5)),
        prop::sample::select(vec![
            "Pune",
            "pune",
            "Delhi",
            "30",
            "",
            "2.0.0",
            "HSR Layout"
        ])
        .prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
    ];
    let specific: BoxedStrategy<Value> = match name {
        "age" => (16i64..72).prop_map(|n| json!(n)).boxed(),
        "city" => prop::sample::select(vec!["Pune", "Delhi", "Del%hi", "Mumbai_1", "pune"])
            .prop_map(|s| json!(s))
            .boxed(),
        "tags" => prop::collection::vec(
            prop_oneof![
                Just(json!("vip")),
                Just(json!("new")),
                Just(json!(1)),
                Just(json!(true))
            ],
            0..3,
        )
        .prop_map(Value::Array)
        .boxed(),
        "app_version" => {
            prop::sample::select(vec!["1.2.0", "1.10.0", "2.0.0-beta", "2.0.0", "v2", "x.y"])
                .prop_map(|s| json!(s))
                .boxed()
        }
        _ => any::<bool>().prop_map(|b| json!(b)).boxed(),
    };
    prop_oneof![3 => specific.prop_map(Some), 1 => any_scalar.prop_map(Some), 1 => Just(None), 1 => Just(Some(Value::Null))].boxed()
}

fn user() -> impl Strategy<Value = UserData> {
    let names = ["age", "city", "tags", "app_version", "vip"];
    let attrs = (
        attr_value(names[0]),
        attr_value(names[1]),
        attr_value(names[2]),
        attr_value(names[3]),
        attr_value(names[4]),
    )
        .prop_map(move |vals| {
            let vals = [vals.0, vals.1, vals.2, vals.3, vals.4];
            names
                .iter()
                .zip(vals)
                .filter_map(|(n, v)| v.map(|v| ((*n).to_owned(), v)))
                .collect::<Map<String, Value>>()
        });
    let event = (
        prop::sample::select(vec!["LOGIN", "order_placed", "order_placed", "PAGE_VIEW"]),
        prop::sample::select(OFFSETS.to_vec()),
        (0i64..40).prop_map(|n| n as f64 * 50.0),
        prop::sample::select(vec![Some("Pune"), Some("Delhi"), None]),
    )
        .prop_map(|(name, off, amount, city)| {
            let mut props = Map::new();
            if name != "LOGIN" {
                props.insert("amount".into(), json!(amount));
                if let Some(c) = city {
                    props.insert("city".into(), json!(c));
                }
            }
            (
                name.to_owned(),
                NOW + off,
                (!props.is_empty()).then_some(props),
            )
        });
    (attrs, prop::collection::vec(event, 0..7))
        .prop_map(|(attributes, events)| UserData { attributes, events })
}

fn scalar_operand() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..8).prop_map(|n| json!(n * 10)),
        (0i64..8).prop_map(|n| json!(n as f64 * 0.5)),
        prop::sample::select(vec![
            "Pune", "pune", "Delhi", "30", "", "vip", "Del%", "%un%", "_une", "2.0.0"
        ])
        .prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
    ]
}

/// Seconds-since values sit in days: map a small number onto day boundaries
/// (and one second either side) so comparisons can go either way.
fn seconds_operand(v: Value) -> Value {
    const CHOICES: [i64; 8] = [
        0,
        86_399,
        86_400,
        86_401,
        14 * 86_400,
        15 * 86_400,
        20 * 86_400,
        35 * 86_400,
    ];
    let k = v.as_f64().unwrap_or(0.0).abs() as usize;
    json!(CHOICES[k % CHOICES.len()])
}

fn leaf() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "age",
        "city",
        "tags",
        "tags",
        "vip",
        "app_version",
        "vip",
        "missing_attr",
        "total_orders",
        "ltv",
        "order_count_last_14_days",
        "seconds_since_last_order",
        "city",
        "is_new_user",
        "order_count_last_1_days",
    ]);
    // Every operator, with the negative ones weighted up: they are where
    // missing values and mixed types differ most between evaluators.
    let op = prop_oneof![
        3 => prop::sample::select(rules::Op::ALL.to_vec()),
        1 => prop::sample::select(vec![rules::Op::Neq, rules::Op::NotIn, rules::Op::NotLike, rules::Op::Contains]),
    ];
    let attr_leaf = (
        field,
        op,
        scalar_operand(),
        scalar_operand(),
        prop::sample::select(vec!["1.10.0", "2.0.0", "2"]),
    )
        .prop_map(|(field, op, a, b, version)| {
            let value = match op {
                rules::Op::Exists | rules::Op::NotExists => Value::Null,
                rules::Op::In | rules::Op::NotIn => json!([a, b]),
                rules::Op::Between => json!([a, b]),
                rules::Op::VersionEq
                | rules::Op::VersionGt
                | rules::Op::VersionGte
                | rules::Op::VersionLt
                | rules::Op::VersionLte => json!(version),
                _ => a,
            };
            let value = if field == "seconds_since_last_order" && value.is_number() {
                seconds_operand(value)
            } else {
                value
            };
            json!({"field": field, "op": op.name(), "value": value})
        });
    let behavior = (
        prop::sample::select(vec!["LOGIN", "order_placed", "PAGE_VIEW"]),
        prop::sample::select(vec![None, Some("1d"), Some("14d"), Some("1s")]),
        prop::sample::select(vec![
            "count",
            "sum",
            "avg",
            "min",
            "max",
            "seconds_since_last",
            "seconds_since_first",
        ]),
        prop::sample::select(vec!["gte", "gt", "eq", "lt", "neq", "exists", "not_exists"]),
        (0i64..6).prop_map(|n| json!(n * 100)),
        prop::option::of(prop::sample::select(vec!["Pune", "Delhi"])),
    )
        .prop_map(|(event, within, agg, op, value, city)| {
            let value = if agg.starts_with("seconds_since") {
                seconds_operand(value)
            } else {
                value
            };
            let mut node = json!({"event": event, "agg": agg, "op": op, "value": value});
            if let Some(w) = within {
                node["within"] = json!(w);
            }
            if matches!(agg, "sum" | "avg" | "min" | "max") {
                node["property"] = json!("amount");
            }
            if let Some(c) = city {
                node["where"] = json!([{"field": "city", "op": "eq", "value": c}]);
            }
            if op.ends_with("exists") {
                node.as_object_mut().map(|o| o.remove("value"));
            }
            node
        });
    prop_oneof![2 => attr_leaf, 1 => behavior]
}

fn rule() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|c| json!({"operator": "AND", "conditions": c})),
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|c| json!({"operator": "OR", "conditions": c})),
            inner.prop_map(|r| json!({"not": r})),
        ]
    })
}

fn in_memory(rule: &rules::Rule, users: &[UserData], now: i64) -> Vec<String> {
    let mut out = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut events: Vec<EventFact<'_>> = u
            .events
            .iter()
            .map(|(n, t, p)| EventFact {
                name: n,
                timestamp: *t,
                properties: p.as_ref().map(|m| m as &dyn stratify_core::rules::Fields),
            })
            .collect();
        events.sort_by_key(|e| e.timestamp); // stable: ties keep input order, as the log does
        let facts = Facts {
            attributes: &u.attributes,
            events: &events,
            segments: &NoSegments,
            now,
        };
        if rules::evaluate(rule, &facts) {
            out.push(format!("u{i:02}"));
        }
    }
    out
}

/// The columnar index, built incrementally (one batch per user: out-of-order
/// merges) or in bulk (deferred, one settle).
fn columnar(users: &[UserData], bulk: bool) -> PopulationIndex {
    let mut index = PopulationIndex::new();
    for (i, u) in users.iter().enumerate() {
        let id = format!("u{i:02}");
        index.set_attributes(&id, &u.attributes);
        let events = u
            .events
            .iter()
            .map(|(name, ts, props)| (id.as_str(), name.as_str(), *ts, props.as_ref()));
        if bulk {
            index.add_events_deferred(events);
        } else {
            index.add_events(events);
        }
    }
    if bulk {
        index.settle_all();
    }
    index
}

async fn load(store: &dyn Store, users: &[UserData]) {
    let mut events = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let id = UserId::parse(format!("u{i:02}")).expect("id");
        store
            .write_user(id.clone(), u.attributes.clone(), WriteMode::Replace, NOW)
            .await
            .expect("user");
        for (name, ts, props) in &u.events {
            let mut e = json!({"user_id": id.as_str(), "name": name, "timestamp": ts});
            if let Some(p) = props {
                e["properties"] = Value::Object(p.clone());
            }
            events.push(NewEvent::from_json(e, NOW).expect("event"));
        }
    }
    let report = IngestReport {
        source: Source::Http,
        received: events.len() as u64,
        rejected: 0,
        forwarded: 0,
        last_error: None,
        now: NOW,
    };
    store
        .append_events(EventBatch {
            events: events.into(),
            report,
            on_commit: None,
        })
        .await
        .expect("append");
}

/// One runtime and one PostgreSQL database for every case (emptied between
/// cases): creating a database per case would dominate the run.
fn postgres() -> &'static (tokio::runtime::Runtime, PgStore, tokio_postgres::Client) {
    static PG: OnceLock<(tokio::runtime::Runtime, PgStore, tokio_postgres::Client)> =
        OnceLock::new();
    PG.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (store, client) = runtime.block_on(async {
            let url = stratify_store::testing::fresh_postgres().await;
            let store = PgStore::connect(&url).await.expect("connect");
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            (store, client)
        });
        (runtime, store, client)
    })
}

/// The users PostgreSQL selects with the rule compiled to its dialect.
fn postgres_selects(rule: &rules::Rule, now: i64) -> (Vec<String>, u64) {
    let (runtime, store, _) = postgres();
    let predicate = sql::predicate(rule, sql::Dialect::Postgres, now, &NoSegments);
    runtime
        .block_on(store.select_users(predicate.clone(), None, 10_000))
        .unwrap_or_else(|e| panic!("postgres runs {}: {e:?}", predicate.sql))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn per_user_columnar_sqlite_and_postgres_select_the_same_users(users in prop::collection::vec(user(), 1..25), rules_json in prop::collection::vec(rule(), 12)) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path()).expect("store");
        runtime.block_on(load(&store, &users));
        let (pg_runtime, pg, pg_client) = postgres();
        pg_runtime.block_on(async {
            pg_client
                .batch_execute("TRUNCATE users, events, event_names RESTART IDENTITY")
                .await
                .expect("truncate");
            load(pg, &users).await;
        });
        let indexes = [columnar(&users, false), columnar(&users, true)];
        let mut checked = 0;
        for rj in &rules_json {
            let Ok(rule) = rules::parse(rj) else { continue };
            checked += 1;
            // At NOW (some events are in the future: the scan path) and after
            // every event (all-time aggregates come from the per-user profiles).
            for now in [NOW, NOW + 6 * DAY] {
                let expected = in_memory(&rule, &users, now);
                let predicate = sql::predicate(&rule, sql::Dialect::Sqlite, now, &NoSegments);
                let (got, total) = runtime.block_on(store.select_users(predicate.clone(), None, 10_000)).expect("sql runs");
                prop_assert_eq!(&got, &expected, "rule {} at {}\nsql {}\nparams {:?}", rj, now, predicate.sql, predicate.params);
                prop_assert_eq!(total as usize, expected.len());
                let (pg_got, pg_total) = postgres_selects(&rule, now);
                prop_assert_eq!(&pg_got, &expected, "postgres, rule {} at {}", rj, now);
                prop_assert_eq!(pg_total as usize, expected.len());
                for index in &indexes {
                    let selected: Vec<String> =
                        index.select(&rule, now, &NoSegments).iter_from(None).map(|i| index.user_id(i).to_owned()).collect();
                    prop_assert_eq!(&selected, &expected, "columnar, rule {} at {}", rj, now);
                }
            }
            let (got, _) = runtime
                .block_on(store.select_users(sql::predicate(&rule, sql::Dialect::Sqlite, NOW, &NoSegments), None, 10_000))
                .expect("sql");
            // NOT flips exactly (two-valued logic in both evaluators).
            let negated = rules::Rule::Not(Box::new(rule.clone()));
            let (not_got, _) = runtime.block_on(store.select_users(sql::predicate(&negated, sql::Dialect::Sqlite, NOW, &NoSegments), None, 10_000)).expect("sql");
            prop_assert_eq!(not_got.len() + got.len(), users.len(), "NOT {}", rj);
        }
        prop_assert!(checked > 0);
    }
}
