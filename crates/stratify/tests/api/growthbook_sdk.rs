//! Issue 21: GrowthBook's official Python SDK (`growthbook` 4.0.0 from
//! PyPI, pinned in scripts/test.sh), pointed at the real server with an sdk
//! key, evaluates every user locally to the variant the server serves.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use stratify_core::access::Role;

const SCRIPT: &str = r#"
import json, sys
from growthbook import GrowthBook
data = json.load(sys.stdin)
gb = GrowthBook(api_host=data["host"], client_key=data["client_key"])
gb.load_features()
out = {}
for user in data["users"]:
    gb.set_attributes(user)
    got = {}
    for key in data["keys"]:
        r = gb.eval_feature(key).experimentResult
        got[key] = r.key if (r is not None and r.inExperiment) else None
    out[user["id"]] = got
print(json.dumps(out))
"#;

// The SDK calls back into the server while the test waits for it: the
// server needs workers of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_growthbook_sdk_gives_every_user_the_variant_the_server_serves() {
    let app = spawn_app().await;
    let users: Vec<String> = (0..300).map(|i| format!("gb-{i:03}")).collect();
    for (i, u) in users.iter().enumerate() {
        let plan = if i % 3 == 0 { "pro" } else { "free" };
        let (s, b) = app
            .post(
                "/v1/users",
                json!({"user_id": u, "attributes": {"plan": plan, "age": 18 + i % 50}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (_, pro) = app
        .post(
            "/v1/segments",
            json!({"name": "pro", "rules": {"plan": "pro"}}),
        )
        .await;
    let pro = pro["id"].as_str().expect("id").to_owned();
    eventually("the segment built", || async {
        let (_, s) = app.get(&format!("/v1/segments/{pro}")).await;
        (s["build"]["state"] == "ready").then_some(())
    })
    .await;
    let variants = |keys: &[(&str, f64)]| -> Value {
        keys.iter()
            .enumerate()
            .map(|(i, (k, w))| json!({"key": k, "weight": w, "is_control": i == 0}))
            .collect()
    };
    let experiments = [
        json!({"key": "colour", "name": "Colour", "variants": [
            {"key": "red", "weight": 50, "is_control": true, "payload": {"colour": "red"}},
            {"key": "blue", "weight": 50, "payload": {"colour": "blue"}}]}),
        json!({"key": "pro-upsell", "name": "Pro upsell", "segment_ids": [pro], "coverage": 0.8,
               "hash_version": 1, "seed": "s1", "variants": variants(&[("a", 20.0), ("b", 30.0), ("c", 50.0)])}),
        json!({"key": "half", "name": "Half", "namespace": {"id": "ns", "start": 0.0, "end": 0.5},
               "variants": variants(&[("x", 50.0), ("y", 50.0)])}),
        json!({"key": "older", "name": "Older users", "rules": {"field": "age", "op": "gte", "value": 40},
               "variants": variants(&[("p", 40.0), ("q", 60.0)])}),
    ];
    for e in experiments {
        running_experiment(&app, e).await;
    }
    let sdk = app.key(Role::Sdk).await;

    // The payload: ETag and 304; the client key must be a key that evaluates.
    let first = app
        .call(Method::GET, &format!("/api/features/{sdk}"), None, None)
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().expect("etag").to_owned();
    let payload: Value = first.json().await.expect("payload");
    assert_eq!(
        payload["features"].as_object().map(|f| f.len()),
        Some(4),
        "{payload}"
    );
    assert_eq!(
        payload["features"]["pro-upsell"]["rules"][0]["condition"],
        json!({"segments": {"$in": [pro]}})
    );
    let again = app
        .client
        .get(app.url(&format!("/api/features/{sdk}")))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let nobody = app
        .call(Method::GET, "/api/features/sfy_not_a_key", None, None)
        .await;
    assert_eq!(nobody.status(), StatusCode::UNAUTHORIZED);
    let ingest = app.key(Role::Ingest).await;
    let wrong = app
        .call(Method::GET, &format!("/api/features/{ingest}"), None, None)
        .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);

    // What an app hands the SDK, per user (with the sdk key).
    let mut attributes = Vec::new();
    for u in &users {
        let r = app
            .call(
                Method::GET,
                &format!("/v1/users/{u}/sdk-attributes"),
                Some(&sdk),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        attributes.push(r.json::<Value>().await.expect("attributes"));
    }
    assert_eq!(attributes[0]["id"], "gb-000");
    let unknown = app
        .call(
            Method::GET,
            "/v1/users/nobody/sdk-attributes",
            Some(&sdk),
            None,
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(attributes[0]["segments"], json!([pro]), "{}", attributes[0]);
    let keys = ["colour", "pro-upsell", "half", "older"];
    let input = json!({"host": format!("http://{}", app.addr), "client_key": sdk, "users": attributes, "keys": keys});
    let sdk_says = python_json("the GrowthBook SDK", SCRIPT, &input).await;
    let mut in_experiments = [0; 4];
    for u in &users {
        let r = app
            .call(
                Method::GET,
                &format!("/v1/users/{u}/experiments"),
                Some(&sdk),
                None,
            )
            .await;
        let served: Value = r.json().await.expect("served");
        for (k, key) in keys.iter().enumerate() {
            let server = served["experiments"]
                .as_array()
                .expect("experiments")
                .iter()
                .find(|e| e["key"] == *key)
                .map(|e| e["variant"].clone())
                .unwrap_or(Value::Null);
            assert_eq!(sdk_says[u][key], server, "{u} in {key}");
            in_experiments[k] += usize::from(!server.is_null());
        }
    }
    // Every experiment has users in and users out where targeting says so.
    assert_eq!(in_experiments[0], users.len());
    for (k, n) in in_experiments.iter().enumerate().skip(1) {
        assert!(*n > 0 && *n < users.len(), "{}: {n} users", keys[k]);
    }
}

/// GrowthBook's streaming protocol: `/sub/{client_key}` sends the payload
/// now and again when an experiment changes.
#[tokio::test]
async fn the_sdk_stream_pushes_the_payload_when_an_experiment_changes() {
    let app = spawn_app().await;
    let sdk = app.key(Role::Sdk).await;
    let mut response = app
        .client
        .get(app.url(&format!("/sub/{sdk}")))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    let empty = next_event(&mut response, &mut text).await;
    assert_eq!(empty["features"], json!({}));
    running_experiment(
        &app,
        json!({"key": "streamed", "name": "Streamed", "variants": [
            {"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
    )
    .await;
    let changed = next_event(&mut response, &mut text).await;
    assert_eq!(
        changed["features"]["streamed"]["rules"][0]["meta"][1]["key"],
        "b"
    );
}

/// The next `features` event's payload (10 s at most).
async fn next_event(response: &mut reqwest::Response, text: &mut String) -> Value {
    loop {
        if let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if event.contains("event: features") {
                let data = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect::<String>();
                return serde_json::from_str::<Value>(&data).expect("payload");
            }
            continue;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
            .await
            .expect("an event in time")
            .expect("readable")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}
