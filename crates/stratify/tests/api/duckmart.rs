//! The DuckMart acceptance: on `stratify generate --seed 42` (10 000 users,
//! 50 000 events), "users aged 25–34" and "users in California who logged in
//! at least once" return exactly the users that the DuckMart SQL returns over
//! the same CSV files loaded into a plain SQLite database.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use stratify_engine::import::FileKind;

fn plain_sql(dir: &Path, query: &str) -> BTreeSet<String> {
    let db = rusqlite::Connection::open_in_memory().expect("sqlite");
    db.execute_batch(
        "CREATE TABLE user_attributes (user_id INTEGER PRIMARY KEY, name VARCHAR, age INTEGER, gender VARCHAR, location VARCHAR,
             signup_date DATE, subscription_plan VARCHAR, device_type VARCHAR);
         CREATE TABLE user_events (user_id INTEGER, event_name VARCHAR, timestamp TIMESTAMP);",
    )
    .expect("schema");
    let mut users = csv::Reader::from_path(dir.join("user_attributes.csv")).expect("users csv");
    let tx = db.unchecked_transaction().expect("tx");
    for r in users.records() {
        let r = r.expect("row");
        tx.execute(
            "INSERT INTO user_attributes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params_from_iter(r.iter()),
        )
        .expect("insert");
    }
    let mut events = csv::Reader::from_path(dir.join("user_events.csv")).expect("events csv");
    for r in events.records() {
        let r = r.expect("row");
        tx.execute(
            "INSERT INTO user_events VALUES (?1, ?2, ?3)",
            rusqlite::params_from_iter(r.iter()),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    let mut stmt = db.prepare(query).expect("query");
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0)).expect("rows");
    rows.map(|r| r.expect("id").to_string()).collect()
}

async fn all_ids(app: &TestApp, payload: Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = payload.clone();
        body["limit"] = json!(5000);
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = app.post("/v1/segments/query", body).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(
            page["user_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn duckmart_queries_match_plain_sql_on_the_seed_42_data() {
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_stratify"))
        .args([
            "generate",
            "--seed",
            "42",
            "--users",
            "10000",
            "--events",
            "50000",
            "--now",
            "2025-12-31T00:00:00Z",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("generate");
    assert!(out.status.success());
    let app = spawn_app().await;
    for (kind, file) in [
        (FileKind::Users, "user_attributes.csv"),
        (FileKind::EventsCsv, "user_events.csv"),
    ] {
        let f = std::fs::File::open(dir.path().join(file)).expect("open");
        let report = app
            .engine
            .ingest
            .import(kind, f, |_| {})
            .await
            .expect("import");
        assert_eq!(report.bad_rows, 0);
    }

    let expected_age = plain_sql(
        dir.path(),
        "SELECT user_id FROM user_attributes WHERE age >= 25 AND age <= 34 ORDER BY user_id",
    );
    let got_age = all_ids(&app, json!({"user_filters": [{"field": "age", "operator": "gte", "value": 25}, {"field": "age", "operator": "lte", "value": 34}], "logic_operator": "AND"})).await;
    assert!(
        expected_age.len() > 1000,
        "a realistic share of 10 000 users is 25–34 ({})",
        expected_age.len()
    );
    assert_eq!(got_age, expected_age);
    let got_between = all_ids(
        &app,
        json!({"rules": {"field": "age", "op": "between", "value": [25, 34]}}),
    )
    .await;
    assert_eq!(got_between, expected_age);

    let expected_ca = plain_sql(
        dir.path(),
        "SELECT DISTINCT ua.user_id FROM user_attributes ua INNER JOIN user_events ue ON ua.user_id = ue.user_id
         WHERE ua.location = 'California' AND ue.event_name = 'LOGIN' ORDER BY ua.user_id",
    );
    let got_ca = all_ids(&app, json!({"user_filters": [{"field": "location", "operator": "eq", "value": "California"}],
        "event_filters": [{"event_name": "LOGIN", "operator": "gte", "count": 1}], "logic_operator": "AND"})).await;
    assert!(expected_ca.len() > 100, "{}", expected_ca.len());
    assert_eq!(got_ca, expected_ca);

    // The compiled SQL answers the same (the in-memory index is the default).
    for (payload, expected) in [
        (
            json!({"rules": {"field": "age", "op": "between", "value": [25, 34]}}),
            &expected_age,
        ),
        (
            json!({"rules": {"operator": "AND", "conditions": [{"field": "location", "op": "eq", "value": "California"},
            {"event": "LOGIN", "op": "gte", "value": 1}]}}),
            &expected_ca,
        ),
    ] {
        let mut sql = payload.clone();
        sql["evaluator"] = json!("sql");
        assert_eq!(&all_ids(&app, sql).await, expected);
    }

    // A restart rebuilds the index from the store and answers the same.
    let engine = stratify_engine::Engine::start(
        stratify_engine::open_store(app.dir.path()).expect("reopen"),
        app.clock.clone(),
        None,
    )
    .await
    .expect("restart");
    let page = stratify_engine::segments::PageRequest {
        limit: 10_000,
        ..Default::default()
    };
    let again = engine
        .segments
        .query_population(
            &json!({"field": "age", "op": "between", "value": [25, 34]}),
            page,
        )
        .await
        .expect("query");
    assert_eq!(
        again.user_ids.into_iter().collect::<BTreeSet<_>>(),
        expected_age
    );
}
