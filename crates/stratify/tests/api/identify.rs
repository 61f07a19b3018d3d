//! Identity stitching end to end: a visitor browses anonymously, is served
//! a variant, signs up; `POST /v1/identify` merges them into the known user.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use stratify_core::bucketing;

async fn variant_of(app: &TestApp, user: &str, experiment: &str) -> Option<String> {
    let (s, b) = app.get(&format!("/v1/users/{user}/experiments")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["experiments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == experiment)
        .and_then(|e| e["variant"].as_str().map(str::to_owned))
}

async fn view(app: &TestApp, user: &str, id: &str) {
    let (s, b) = app
        .post(
            "/v1/events",
            json!({"event_id": id, "user_id": user, "name": "page_view"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 1, "{b}");
}

async fn changes(app: &TestApp, segment: &str) -> Vec<Value> {
    let (s, b) = app
        .get(&format!(
            "/v1/segments/{segment}/changes?after=0&limit=1000"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["changes"].as_array().expect("changes").clone()
}

/// The segment of users with at least two page views; returns its id.
async fn browsers(app: &TestApp) -> String {
    let (s, seg) = app
        .post(
            "/v1/segments",
            json!({"name": "browsers", "rules": {"event": "page_view", "op": "gte", "value": 2}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{seg}");
    seg["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_visitor_who_signs_up_keeps_their_variant_behaviour_and_counts_once() {
    let app = spawn_app().await;
    let browsers = browsers(&app).await;
    let (s, vip) = app
        .post(
            "/v1/segments",
            json!({"name": "vip", "user_ids": ["alice"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vip}");
    let experiment = running_experiment(
        &app,
        json!({"key": "ab", "name": "AB", "variants": [
            {"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
    )
    .await;
    // A visitor whose hash gives another variant than alice's: afterwards
    // only stickiness explains which one alice has.
    let by_hash = |user: &str| {
        let ranges = bucketing::bucket_ranges(2, 1.0, None);
        let n = bucketing::hash("ab", user, 2).expect("hash");
        ["a", "b"][bucketing::choose_variation(n, &ranges).expect("range")]
    };
    let anon = (0..100)
        .map(|i| format!("anon-{i}"))
        .find(|u| by_hash(u) != by_hash("alice"))
        .expect("a visitor");
    // 49 other visitors are served too (for the results below).
    for i in 0..49 {
        variant_of(&app, &format!("other-{i}"), "ab")
            .await
            .expect("served");
    }
    let anon_variant = variant_of(&app, &anon, "ab").await.expect("served");
    assert_eq!(anon_variant, by_hash(&anon));
    view(&app, &anon, "v1").await;
    let (s, b) = app
        .json(
            Method::PATCH,
            &format!("/v1/users/{anon}"),
            Some(json!({"attributes": {"city": "Oslo", "plan": "free"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .json(
            Method::PUT,
            "/v1/users/alice",
            Some(json!({"attributes": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    view(&app, "alice", "v2").await;
    app.engine.live().sync().await;
    assert!(changes(&app, &browsers).await.is_empty(), "one view each");

    // Results read once before the merge: their metric columns hold the
    // visitor's events under the visitor's uid.
    let (s, b) = app
        .post(
            "/v1/metrics",
            json!({"key": "views", "kind": "count", "event": "page_view"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let results_path = format!("/v1/experiments/{experiment}/results?metric=views");
    let (s, before) = app.get(&results_path).await;
    assert_eq!(s, StatusCode::OK, "{before}");
    app.clock.advance(60_000);
    let (s, out) = app
        .post(
            "/v1/identify",
            json!({"anonymous_id": anon, "user_id": "alice"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["user_id"], "alice");
    assert_eq!(out["merged"], true);
    assert_eq!(out["events_moved"], 1);
    assert_eq!(out["assignments_moved"], 1);
    assert_eq!(out["aliases"], json!([anon]));

    // Segments at once, cause `identify`: two views now.
    app.engine.live().sync().await;
    let c = changes(&app, &browsers).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(
        (&c[0]["user_id"], &c[0]["change"], &c[0]["cause"]),
        (&json!("alice"), &json!("entered"), &json!("identify"))
    );
    let (s, me) = app.get("/v1/users/alice").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["attributes"], json!({"city": "Oslo", "plan": "pro"}));
    let mut segments = me["segments"].as_array().expect("segments").clone();
    segments.sort_by_key(|v| v.as_str().map(str::to_owned));
    let mut expected = vec![json!(browsers), vip["id"].clone()];
    expected.sort_by_key(|v| v.as_str().map(str::to_owned));
    assert_eq!(segments, expected);

    // The alias resolves everywhere: reads, serving, writes.
    let (s, via_alias) = app.get(&format!("/v1/users/{anon}")).await;
    assert_eq!(
        (s, &via_alias["user_id"]),
        (StatusCode::OK, &json!("alice"))
    );
    assert_eq!(
        variant_of(&app, "alice", "ab").await.as_deref(),
        Some(anon_variant.as_str()),
        "the variant the visitor was served sticks to the person"
    );
    assert_eq!(
        variant_of(&app, &anon, "ab").await.as_deref(),
        Some(anon_variant.as_str())
    );
    view(&app, &anon, "v3").await;
    let (s, ev) = app.get("/v1/events?user_id=alice&limit=100").await;
    assert_eq!(s, StatusCode::OK, "{ev}");
    assert_eq!(ev["events"].as_array().map(Vec::len), Some(3), "{ev}");
    let (s, ev) = app
        .get(&format!("/v1/events?user_id={anon}&limit=100"))
        .await;
    assert_eq!(s, StatusCode::OK, "{ev}");
    assert_eq!(ev["events"].as_array().map(Vec::len), Some(0), "{ev}");
    let (s, assigned) = app.get("/v1/users/alice/assignments").await;
    assert_eq!(s, StatusCode::OK, "{assigned}");
    let rows = assigned["assignments"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "counted once: {assigned}");
    assert_eq!(
        rows[0]["assigned_at"], "2026-01-01T00:00:00.000Z",
        "at the visitor's exposure"
    );

    // Results count the person once.
    let (s, r) = app.get(&results_path).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let exposed: HashMap<String, i64> = r["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap_or_default().to_owned(),
                v["users"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        r["exposed_users"], 50,
        "50 visitors served, one of them now alice: {r}"
    );
    assert_eq!(exposed.values().sum::<i64>(), 50, "{exposed:?}");
    // The columns remapped at the merge agree with columns read afresh (an
    // erasure drops every copy).
    let (s, _) = app.post("/v1/users", json!({"user_id": "nobody"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app.json(Method::DELETE, "/v1/users/nobody", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, fresh) = app.get(&results_path).await;
    assert_eq!(s, StatusCode::OK, "{fresh}");
    assert_eq!(r["metrics"], fresh["metrics"]);
    // The person's three views count in their variant (the visitor's first
    // one was in the copy under the visitor's uid before the merge).
    let views = |r: &Value| -> f64 {
        r["metrics"][0]["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["key"] == anon_variant.as_str())
            .map(|v| v["mean"].as_f64().unwrap_or(0.0) * v["users"].as_f64().unwrap_or(0.0))
            .sum()
    };
    assert!((views(&before) - 1.0).abs() < 1e-9, "{before}");
    assert!((views(&r) - 3.0).abs() < 1e-9, "{r}");

    // Retries are answered; conflicts and nonsense refused.
    let (s, again) = app
        .post(
            "/v1/identify",
            json!({"anonymous_id": anon, "user_id": "alice"}),
        )
        .await;
    assert_eq!(
        (s, &again["merged"]),
        (StatusCode::OK, &json!(false)),
        "{again}"
    );
    for (body, status, code) in [
        (
            json!({"anonymous_id": anon, "user_id": "bob"}),
            StatusCode::CONFLICT,
            "identity_conflict",
        ),
        (
            json!({"anonymous_id": "alice", "user_id": anon}),
            StatusCode::CONFLICT,
            "identity_conflict",
        ),
        (
            json!({"anonymous_id": "same", "user_id": "same"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_identity",
        ),
        (
            json!({"anonymous_id": "x", "user_id": "y", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"anonymous_id": "", "user_id": "y"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
    ] {
        let (s, b) = app.post("/v1/identify", body.clone()).await;
        assert_eq!((s, error_code(&b)), (status, code), "{body}");
    }

    // The merge is in the audit log.
    let (s, audit) = app.get("/v1/audit?target=alice").await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    assert!(
        audit["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["action"] == "POST /v1/identify")),
        "{audit}"
    );

    // Erasing the person erases the alias.
    let (s, _) = app
        .json(Method::DELETE, &format!("/v1/users/{anon}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get("/v1/users/alice").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = app.get(&format!("/v1/users/{anon}")).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
}

#[tokio::test]
async fn aliases_survive_a_restart_and_a_rebuild_agrees_with_the_live_state() {
    let app = spawn_app().await;
    let browsers = browsers(&app).await;
    for (user, id) in [("dev-1", "a"), ("dev-1", "b"), ("carol", "c")] {
        view(&app, user, id).await;
    }
    // dev-1 is in the segment; after the merge carol is, dev-1 is gone.
    let (s, out) = app
        .post(
            "/v1/identify",
            json!({"anonymous_id": "dev-1", "user_id": "carol"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    // A second device, never seen before, is recorded as an alias too.
    let (s, out) = app
        .post(
            "/v1/identify",
            json!({"anonymous_id": "dev-2", "user_id": "carol"}),
        )
        .await;
    assert_eq!(
        (s, &out["events_moved"]),
        (StatusCode::OK, &json!(0)),
        "{out}"
    );
    app.engine.live().sync().await;
    let c = changes(&app, &browsers).await;
    let summary: Vec<(String, String, Value)> = c
        .iter()
        .map(|x| {
            (
                x["user_id"].as_str().unwrap_or_default().to_owned(),
                x["change"].as_str().unwrap_or_default().to_owned(),
                x["cause"].clone(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!(
        (summary[0].0.as_str(), summary[0].1.as_str()),
        ("dev-1", "entered")
    );
    assert_eq!(
        summary[1..]
            .iter()
            .map(|(u, ch, c)| (u.as_str(), ch.as_str(), c.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("dev-1", "exited", json!("identify")),
            ("carol", "entered", json!("identify")),
        ]
    );
    let query = app
        .post(
            "/v1/segments/query",
            json!({"rules": {"event": "page_view", "op": "gte", "value": 3}}),
        )
        .await;
    assert_eq!(query.0, StatusCode::OK, "{}", query.1);
    assert_eq!(query.1["user_ids"], json!(["carol"]), "{}", query.1);
    app.engine.shutdown().await;
    let dir = app.dir;
    let again = spawn_app_in(dir, Default::default(), Default::default()).await;
    view(&again, "dev-2", "d").await;
    let (s, me) = again.get("/v1/users/dev-2").await;
    assert_eq!((s, &me["user_id"]), (StatusCode::OK, &json!("carol")));
    let (s, ev) = again.get("/v1/events?user_id=carol&limit=100").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ev["events"].as_array().map(Vec::len), Some(4), "{ev}");
    again.engine.live().sync().await;
    let live = again.engine.live().snapshot().await;
    again.engine.shutdown().await;
    let store = stratify_engine::open_store(again.dir.path()).expect("store");
    let rebuilt = stratify_engine::Engine::start_rebuilt(
        store,
        std::sync::Arc::new(stratify_engine::ManualClock::new(T0)),
    )
    .await
    .expect("rebuild");
    let from_log = rebuilt.live().snapshot().await;
    assert_eq!(live, from_log, "rebuild == live after merges");
    rebuilt.shutdown().await;
}
