//! Experiments over HTTP: validation (weights, keys, targeting, allocation),
//! unique keys, changes as versions, and the recorded lifecycle with 409s.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn body() -> Value {
    json!({
        "key": "pizza-tile",
        "name": "Pizza tile for power users",
        "variants": [
            {"key": "control", "weight": 50, "is_control": true},
            {"key": "pizza", "weight": 50, "payload": {"tile": "pizza", "position": 1}}
        ]
    })
}

#[tokio::test]
async fn experiments_are_created_in_draft_with_defaults() {
    let app = spawn_app().await;
    let (s, e) = app.post("/v1/experiments", body()).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    assert!(e["id"].as_str().is_some_and(|i| i.starts_with("exp_")));
    assert_eq!(e["status"], "draft");
    assert_eq!(e["coverage"], 1.0);
    assert_eq!(e["seed"], "pizza-tile", "the seed defaults to the key");
    assert_eq!(e["hash_version"], 2);
    assert_eq!(e["hash_attribute"], "user_id");
    assert_eq!(e["sticky"], true);
    assert_eq!(e["variants"][1]["payload"]["tile"], "pizza");
    assert_eq!(e["transitions"], json!([]));
    let (s, dup) = app.post("/v1/experiments", body()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{dup}");
    assert_eq!(error_code(&dup), "experiment_key_taken");
    let (s, list) = app.get("/v1/experiments").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["experiments"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn bad_experiments_are_clear_422s() {
    let app = spawn_app().await;
    let with = |patch: Value| {
        let mut b = body();
        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
            b[k] = v;
        }
        b
    };
    let cases = [
        (
            with(json!({"variants": [{"key": "a", "weight": 60}, {"key": "b", "weight": 30}]})),
            "invalid_weights",
            "/variants",
        ),
        (
            with(json!({"variants": [{"key": "a", "weight": 150}, {"key": "b", "weight": -50}]})),
            "invalid_weight",
            "/variants/0/weight",
        ),
        (
            with(json!({"variants": [{"key": "a", "weight": 50}, {"key": "a", "weight": 50}]})),
            "duplicate_variant",
            "/variants/1/key",
        ),
        (
            with(json!({"variants": []})),
            "invalid_variants",
            "/variants",
        ),
        (
            with(
                json!({"variants": [{"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50, "is_control": true}]}),
            ),
            "invalid_variants",
            "/variants",
        ),
        (with(json!({"key": "no spaces"})), "invalid_key", "/key"),
        (
            with(json!({"coverage": 1.5})),
            "invalid_coverage",
            "/coverage",
        ),
        (
            with(json!({"hash_version": 3})),
            "invalid_hash_version",
            "/hash_version",
        ),
        (
            with(json!({"segment_ids": ["nope"]})),
            "segment_not_found",
            "/segment_ids/0",
        ),
        (
            with(json!({"namespace": {"id": "checkout", "start": 0.6, "end": 0.4}})),
            "invalid_namespace",
            "/namespace",
        ),
        (
            with(json!({"start_at": "2026-02-01T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"})),
            "invalid_schedule",
            "/end_at",
        ),
        (
            with(json!({"rules": {"field": "age", "op": "between", "value": 3}})),
            "invalid_value",
            "/rules/value",
        ),
        (with(json!({"colour": "red"})), "invalid_body", "/colour"),
        (
            with(json!({"variants": [{"key": "a", "weight": "50"}, {"key": "b", "weight": 50}]})),
            "invalid_body",
            "/variants/0/weight",
        ),
    ];
    for (b, code, field) in cases {
        let (s, e) = app.post("/v1/experiments", b.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b} -> {e}");
        assert_eq!(error_code(&e), code, "{b} -> {e}");
        assert_eq!(e["error"]["field"], field, "{b} -> {e}");
    }
}

#[tokio::test]
async fn the_lifecycle_is_recorded_and_invalid_moves_are_409() {
    let app = spawn_app().await;
    let (_, e) = app.post("/v1/experiments", body()).await;
    let id = e["id"].as_str().expect("id").to_owned();
    let act = |a: &'static str| {
        let (app, id) = (&app, id.clone());
        async move {
            app.json(Method::POST, &format!("/v1/experiments/{id}/{a}"), None)
                .await
        }
    };
    let (s, b) = act("pause").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(error_code(&b), "invalid_transition");
    for (a, status) in [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("complete", "completed"),
        ("archive", "archived"),
    ] {
        app.clock.advance(60_000);
        let (s, b) = act(a).await;
        assert_eq!(s, StatusCode::OK, "{a}: {b}");
        assert_eq!(b["status"], status);
    }
    for a in ["start", "resume", "complete", "archive"] {
        let (s, b) = act(a).await;
        assert_eq!(s, StatusCode::CONFLICT, "{a} from archived: {b}");
    }
    let (s, b) = act("explode").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (_, e) = app.get(&format!("/v1/experiments/{id}")).await;
    let moves: Vec<(String, String, String)> = e["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap_or("").to_owned(),
                t["to"].as_str().unwrap_or("").to_owned(),
                t["by"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(moves.len(), 5);
    assert_eq!(
        moves[0],
        ("draft".into(), "running".into(), "env-admin".into())
    );
    assert_eq!(moves[4].1, "archived");
    assert_eq!(e["transitions"][0]["at"], "2026-01-01T00:01:00.000Z");
    let (s, _) = app.get("/v1/experiments/exp_nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn changes_are_new_versions_and_targeted_segments_cannot_be_deleted() {
    let app = spawn_app().await;
    let (_, seg) = app
        .post(
            "/v1/segments",
            json!({"name": "power", "rules": {"field": "total_orders", "op": "gte", "value": 25}}),
        )
        .await;
    let seg_id = seg["id"].as_str().expect("id").to_owned();
    let mut b = body();
    b["segment_ids"] = json!([seg_id]);
    let (_, e) = app.post("/v1/experiments", b).await;
    let id = e["id"].as_str().expect("id").to_owned();
    let (s, e) = app
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{id}"),
            Some(json!({"variants": [{"key": "control", "weight": 20, "is_control": true}, {"key": "pizza", "weight": 80}], "coverage": 0.5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(
        (e["version"].as_i64(), e["coverage"].as_f64()),
        (Some(2), Some(0.5))
    );
    assert_eq!(e["segment_ids"], json!([seg_id]), "untouched fields stay");
    let (s, e) = app
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{id}"),
            Some(json!({"key": "renamed"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(error_code(&e), "immutable_key");
    let resp = app
        .call(
            Method::DELETE,
            &format!("/v1/segments/{seg_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}
