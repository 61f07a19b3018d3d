//! Issue 22: the audit log records every configuration change with its key,
//! action, target, time and what changed; admins read it, others may not.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use stratify_core::access::Role;

#[tokio::test]
async fn configuration_changes_are_audited_for_admins_without_secrets() {
    let app = spawn_app().await;
    let editor = app.key(Role::Editor).await;
    let as_editor = |method: Method, path: String, body: Option<Value>| {
        let (app, editor) = (&app, editor.clone());
        async move {
            let r = app.call(method, &path, Some(&editor), body).await;
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, seg) = as_editor(
        Method::POST,
        "/v1/segments".into(),
        Some(json!({"name": "pro users", "rules": {"plan": "pro"}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{seg}");
    let seg_id = seg["id"].as_str().expect("id").to_owned();
    app.clock.advance(1000);
    let (s, _) = as_editor(
        Method::PATCH,
        format!("/v1/segments/{seg_id}"),
        Some(json!({"name": "pro plan users"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // A refused change is not a change.
    let (s, _) = as_editor(
        Method::PATCH,
        format!("/v1/segments/{seg_id}"),
        Some(json!({"name": ""})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let exp = running_experiment(
        &app,
        json!({"key": "checkout", "name": "Checkout", "variants": [
            {"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
    )
    .await;
    let (s, key) = app
        .post("/v1/api-keys", json!({"name": "ci", "role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = key["key"].as_str().expect("key").to_owned();
    let (s, hook) = app
        .post("/v1/webhooks", json!({"url": "http://93.184.216.34/hook"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    let hook_secret = hook["secret"].as_str().expect("secret").to_owned();

    let (s, log) = app.get("/v1/audit").await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let text = log.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&hook_secret),
        "a secret is in the log"
    );
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "POST /v1/webhooks",
            "POST /v1/api-keys",
            "POST /v1/experiments/{id}/start",
            "POST /v1/experiments",
            "PATCH /v1/segments/{id}",
            "POST /v1/segments",
            "POST /v1/api-keys",
        ],
        "{log}"
    );
    let patch = &log["entries"][4];
    assert_eq!(patch["target_kind"], "segments");
    assert_eq!(patch["target_id"], seg_id.as_str());
    assert_eq!(
        patch["changes"]["request"],
        json!({"name": "pro plan users"})
    );
    assert_eq!(patch["changes"]["response"]["version"], 2);
    assert_eq!(patch["at"], "2026-01-01T00:00:01.000Z");
    // The editor's key (made first, by the admin) made the segment changes.
    assert_eq!(patch["key_id"], log["entries"][6]["target_id"]);
    assert_eq!(log["entries"][5]["key_id"], log["entries"][6]["target_id"]);
    assert_eq!(log["entries"][3]["key_id"], "env-admin");
    assert_eq!(log["entries"][2]["target_id"], exp.as_str());

    // By target, and paged.
    let (_, about) = app.get(&format!("/v1/audit?target={seg_id}")).await;
    assert_eq!(about["entries"].as_array().map(Vec::len), Some(2));
    let (_, first) = app.get("/v1/audit?limit=3").await;
    let cursor = first["next_cursor"].as_str().expect("more").to_owned();
    let (_, second) = app.get(&format!("/v1/audit?limit=3&cursor={cursor}")).await;
    assert_eq!(second["entries"][0]["action"], "POST /v1/experiments");
    // Admins only.
    let viewer = app.key(Role::Viewer).await;
    for key in [viewer, editor.clone()] {
        let r = app.call(Method::GET, "/v1/audit", Some(&key), None).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let (s, e) = app.get("/v1/audit?cursor=abc").await;
    assert_eq!(
        (s, error_code(&e)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor")
    );
}
