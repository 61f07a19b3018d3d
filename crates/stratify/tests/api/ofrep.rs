//! OFREP: the protocol's shapes, codes and ETag / 304 over HTTP, and the
//! official Python OpenFeature SDK with its OFREP provider against the real
//! server (the interpreter with both packages comes from `scripts/test.sh`,
//! or `STRATIFY_PYTHON`; the test fails, never skips, without it).

use crate::helpers::*;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use stratify_core::access::Role;
use stratify_core::bucketing;

async fn flags(app: &TestApp) {
    running_experiment(
        app,
        json!({"key": "pizza", "name": "Pizza tile", "variants": [
            {"key": "control", "weight": 50, "is_control": true, "payload": {"tile": "none"}},
            {"key": "show_pizza_tile", "weight": 50, "payload": {"tile": "pizza"}}]}),
    )
    .await;
    running_experiment(
        app,
        json!({"key": "button-color", "name": "Button colour", "variants": [
            {"key": "blue", "weight": 50, "is_control": true}, {"key": "green", "weight": 50}]}),
    )
    .await;
    running_experiment(
        app,
        json!({"key": "premium-only", "name": "Premium only", "rules": {"plan": "premium"},
               "variants": [{"key": "on", "weight": 100, "payload": true}]}),
    )
    .await;
    let paused = running_experiment(
        app,
        json!({"key": "paused-flag", "name": "Paused", "variants": [{"key": "on", "weight": 100}]}),
    )
    .await;
    app.post(&format!("/v1/experiments/{paused}/pause"), json!(null))
        .await;
    app.post(
        "/v1/experiments",
        json!({"key": "draft-flag", "name": "Draft", "variants": [{"key": "on", "weight": 100}]}),
    )
    .await;
}

fn expected(seed: &str, user: &str, keys: &[&str]) -> String {
    let ranges = bucketing::bucket_ranges(keys.len(), 1.0, None);
    let n = bucketing::hash(seed, user, 2).expect("hash");
    keys[bucketing::choose_variation(n, &ranges).expect("range")].to_owned()
}

async fn ofrep(
    app: &TestApp,
    path: &str,
    body: &str,
    etag: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(ADMIN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(t) = etag {
        req = req.header(header::IF_NONE_MATCH, t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn ofrep_single_and_bulk_evaluation_follow_the_protocol() {
    let app = spawn_app().await;
    flags(&app).await;
    let ctx = r#"{"context": {"targetingKey": "user-42"}}"#;
    let (s, _, b) = ofrep(&app, "/ofrep/v1/evaluate/flags/pizza", ctx, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let variant = expected("pizza", "user-42", &["control", "show_pizza_tile"]);
    assert_eq!(b["key"], "pizza");
    assert_eq!(b["reason"], "SPLIT");
    assert_eq!(b["variant"], json!(variant));
    let tile = if variant == "control" {
        "none"
    } else {
        "pizza"
    };
    assert_eq!(b["value"], json!({"tile": tile}));
    // Without a payload the value is the variant's key.
    let (_, _, b) = ofrep(&app, "/ofrep/v1/evaluate/flags/button-color", ctx, None).await;
    assert_eq!(b["value"], b["variant"]);
    // Context attributes target; outside, no value (the code default).
    let (_, _, b) = ofrep(
        &app,
        "/ofrep/v1/evaluate/flags/premium-only",
        r#"{"context": {"targetingKey": "user-42", "plan": "premium"}}"#,
        None,
    )
    .await;
    assert_eq!(
        (b["reason"].clone(), b["value"].clone()),
        (json!("SPLIT"), json!(true))
    );
    let (_, _, b) = ofrep(&app, "/ofrep/v1/evaluate/flags/premium-only", ctx, None).await;
    assert_eq!(b["reason"], "DEFAULT");
    assert_eq!(b["variant"], "");
    assert!(b.get("value").is_none(), "{b}");
    let (_, _, b) = ofrep(&app, "/ofrep/v1/evaluate/flags/paused-flag", ctx, None).await;
    assert_eq!(b["reason"], "DISABLED");
    // Errors: the protocol's codes and statuses.
    for (path, body, status, code) in [
        (
            "/ofrep/v1/evaluate/flags/nope",
            ctx,
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
        ),
        (
            "/ofrep/v1/evaluate/flags/draft-flag",
            ctx,
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
        ),
        (
            "/ofrep/v1/evaluate/flags/pizza",
            r#"{"context": {}}"#,
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
        ),
        (
            "/ofrep/v1/evaluate/flags/pizza",
            "",
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
        ),
        (
            "/ofrep/v1/evaluate/flags/pizza",
            r#"{"context": {"targetingKey": 7}}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
        ),
        (
            "/ofrep/v1/evaluate/flags/pizza",
            r#"{"context": [1]}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
        ),
        (
            "/ofrep/v1/evaluate/flags/pizza",
            "{nope",
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
        ),
    ] {
        let (s, _, b) = ofrep(&app, path, body, None).await;
        assert_eq!(s, status, "{path} {body}: {b}");
        assert_eq!(b["errorCode"], code, "{b}");
        assert_eq!(b["key"], path.rsplit('/').next().unwrap_or_default());
        assert!(b["errorDetails"].is_string());
    }

    // Bulk: every running, paused or completed flag; ETag and 304.
    let (s, h, b) = ofrep(&app, "/ofrep/v1/evaluate/flags", ctx, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let keys: Vec<&str> = b["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["button-color", "paused-flag", "pizza", "premium-only"]
    );
    let etag = h[header::ETAG].to_str().expect("etag").to_owned();
    let (s, h, _) = ofrep(&app, "/ofrep/v1/evaluate/flags", ctx, Some(&etag)).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert_eq!(h[header::ETAG].to_str().ok(), Some(etag.as_str()));
    let other = r#"{"context": {"targetingKey": "user-43"}}"#;
    let (s, _, _) = ofrep(&app, "/ofrep/v1/evaluate/flags", other, Some(&etag)).await;
    assert!(s == StatusCode::OK || s == StatusCode::NOT_MODIFIED);
    // A change of the flags changes the ETag.
    let (_, exps) = app.get("/v1/experiments").await;
    let paused = exps["experiments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["key"] == "paused-flag")
        .and_then(|e| e["id"].as_str())
        .expect("paused")
        .to_owned();
    app.post(&format!("/v1/experiments/{paused}/resume"), json!(null))
        .await;
    let (s, h, _) = ofrep(&app, "/ofrep/v1/evaluate/flags", ctx, Some(&etag)).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(h[header::ETAG].to_str().ok(), Some(etag.as_str()));
    let (s, _, b) = ofrep(&app, "/ofrep/v1/evaluate/flags", "{}", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["errorCode"], "TARGETING_KEY_MISSING");
    // SDK keys may evaluate; ingest keys may not; no key is 401.
    let sdk = app.key(Role::Sdk).await;
    let ingest = app.key(Role::Ingest).await;
    for (key, status) in [
        (Some(sdk.as_str()), StatusCode::OK),
        (Some(ingest.as_str()), StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        let resp = app
            .call(
                Method::POST,
                "/ofrep/v1/evaluate/flags",
                key,
                Some(json!({"context": {"targetingKey": "u"}})),
            )
            .await;
        assert_eq!(resp.status(), status);
    }
}

#[tokio::test]
async fn the_python_openfeature_sdk_evaluates_experiments_as_flags() {
    let app = spawn_app().await;
    flags(&app).await;
    let user = "user-7";
    let pizza = expected("pizza", user, &["control", "show_pizza_tile"]);
    let tile = if pizza == "control" { "none" } else { "pizza" };
    let want = json!({
        "user": user,
        "pizza_variant": pizza,
        "pizza_value": {"tile": tile},
        "color_variant": expected("button-color", user, &["blue", "green"]),
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/ofrep/openfeature_check.py"
    );
    let out = tokio::process::Command::new(pyenv_python(
        "the OpenFeature check (openfeature-sdk, openfeature-provider-ofrep)",
    ))
    .arg(script)
    .arg(format!("http://{}", app.addr))
    .arg(ADMIN)
    .arg(want.to_string())
    .output()
    .await
    .expect("run python");
    assert!(
        out.status.success(),
        "the OpenFeature SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
