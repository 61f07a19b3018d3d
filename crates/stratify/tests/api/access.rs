//! Every route × every role: 401 without a valid key, 403 for a role without
//! the route's capability, and neither (and no 5xx) for a role with it.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use stratify_core::access::{Capability, Role};
use stratify_server::routes::table;

fn concrete(path: &str) -> String {
    path.replace("{id}", "some-id")
        .replace("{name}", "some_name")
}

fn sample_body(method: &Method, path: &str) -> Option<serde_json::Value> {
    match (method.as_str(), path) {
        ("POST", "/v1/api-keys") => Some(json!({"name": "k", "role": "viewer"})),
        ("POST", "/v1/users") => {
            Some(json!({"user_id": format!("u-{}", rand_suffix()), "attributes": {}}))
        }
        ("PUT" | "PATCH", _) if path.starts_with("/v1/users/") => {
            Some(json!({"attributes": {"a": 1}}))
        }
        ("POST", "/v1/events") => Some(json!({"user_id": "u", "name": "LOGIN"})),
        ("POST", "/v1/orders") => Some(json!({"user_id": "u", "amount": 10, "city": "Pune"})),
        ("POST", "/v1/event-types") => Some(json!({"name": format!("t{}", rand_suffix())})),
        ("PUT", "/v1/event-types/{name}") => Some(json!({"name": "some_name"})),
        ("PUT", "/v1/attributes/schema") => Some(json!({"attributes": {}})),
        _ => None,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn every_route_enforces_its_role() {
    let app = spawn_app().await;
    let mut keys = Vec::new();
    for role in Role::ALL {
        keys.push((role, app.key(role).await));
    }
    let routes = table();
    assert!(routes.len() >= 20, "the table lists every route");
    for route in &routes {
        let path = concrete(route.path);
        let body = || sample_body(&route.method, route.path);
        // GrowthBook's SDK routes carry their key in the path (a client
        // key): a key that may evaluate is served, another is 403, none 401.
        if route.path.contains("{client_key}") {
            let with = |key: &str| route.path.replace("{client_key}", key);
            let resp = app
                .call(route.method.clone(), &with("sfy_0000_nope"), None, None)
                .await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{}", route.path);
            for (role, key) in &keys {
                let resp = app
                    .client
                    .request(route.method.clone(), app.url(&with(key)))
                    .timeout(std::time::Duration::from_secs(2))
                    .send()
                    .await
                    .expect("answer");
                let expected = if role.can(Capability::Evaluate) {
                    StatusCode::OK
                } else {
                    StatusCode::FORBIDDEN
                };
                assert_eq!(resp.status(), expected, "{} as {role}", route.path);
            }
            continue;
        }
        let Some(capability) = route.capability else {
            let status = app
                .call(route.method.clone(), &path, None, body())
                .await
                .status();
            assert!(
                status.is_success(),
                "public {} {} gave {status}",
                route.method,
                route.path
            );
            continue;
        };
        for key in [None, Some("sfy_0000_nope"), Some("Bearer-less garbage")] {
            let resp = app.call(route.method.clone(), &path, key, body()).await;
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{} {} with {key:?}",
                route.method,
                route.path
            );
            assert_eq!(
                error_code(&resp.json().await.expect("json")),
                "unauthorized"
            );
        }
        for (role, key) in &keys {
            let resp = app
                .call(route.method.clone(), &path, Some(key), body())
                .await;
            let status = resp.status();
            if role.can(capability) {
                assert!(
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && !status.is_server_error(),
                    "{role} should reach {} {} but got {status}",
                    route.method,
                    route.path
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} must not reach {} {}",
                    route.method,
                    route.path
                );
                assert_eq!(error_code(&resp.json().await.expect("json")), "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn the_key_may_come_in_the_x_api_key_header() {
    let app = spawn_app().await;
    let viewer = app.key(Role::Viewer).await;
    let resp = app
        .client
        .get(app.url("/v1/ingest/status"))
        .header("X-API-Key", &viewer)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
}
