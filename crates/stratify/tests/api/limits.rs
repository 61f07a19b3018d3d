//! Issue 22: caps on configuration objects, paged lists, the cap on open
//! streams, per-key rate limits.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use stratify_core::access::Role;
use stratify_engine::{EngineConfig, Limits};
use stratify_server::ServerConfig;

async fn limited_app() -> TestApp {
    spawn_app_in(
        tempfile::tempdir().expect("dir"),
        ServerConfig {
            max_streams: 1,
            ingest_rate_per_key: Some(5),
            serving_rate_per_key: Some(5),
            ..ServerConfig::default()
        },
        EngineConfig {
            limits: Limits {
                segments: 3,
                experiments: 2,
                metrics: 2,
                api_keys: 3,
                event_types: 2,
                webhooks: 1,
            },
            ..EngineConfig::default()
        },
    )
    .await
}

fn limit_reached(status: StatusCode, body: &Value, setting: &str) {
    assert_eq!(
        (status, error_code(body)),
        (StatusCode::CONFLICT, "limit_reached"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(setting),
        "{body}"
    );
}

#[tokio::test]
async fn each_kind_of_configuration_is_capped() {
    let app = limited_app().await;
    for i in 0..3 {
        let (s, b) = app
            .post(
                "/v1/segments",
                json!({"name": format!("s{i}"), "rules": {"plan": "pro"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/segments",
            json!({"name": "s3", "rules": {"plan": "pro"}}),
        )
        .await;
    limit_reached(s, &b, "limits.segments");
    for key in ["e0", "e1", "e2"] {
        let (s, b) = app
            .post(
                "/v1/experiments",
                json!({"key": key, "name": key, "variants": [
                    {"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
            )
            .await;
        if key == "e2" {
            limit_reached(s, &b, "limits.experiments");
        } else {
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
    }
    for key in ["m0", "m1", "m2"] {
        let (s, b) = app
            .post(
                "/v1/metrics",
                json!({"key": key, "kind": "count", "event": "purchase"}),
            )
            .await;
        if key == "m2" {
            limit_reached(s, &b, "limits.metrics");
        } else {
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
    }
    for name in ["t0", "t1", "t2"] {
        let (s, b) = app
            .post("/v1/event-types", json!({"name": name, "properties": {}}))
            .await;
        if name == "t2" {
            limit_reached(s, &b, "limits.event_types");
        } else {
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
    }
    // Replacing a declared type is not one more.
    let (s, b) = app
        .json(
            Method::PUT,
            "/v1/event-types/t0",
            Some(json!({"name": "t0", "properties": {"x": {"type": "number"}}})),
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    // Keys: three active ones; revoking one makes room.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, b) = app
            .post(
                "/v1/api-keys",
                json!({"name": format!("k{i}"), "role": "viewer"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        ids.push(b["id"].as_str().expect("id").to_owned());
    }
    let (s, b) = app
        .post("/v1/api-keys", json!({"name": "k3", "role": "viewer"}))
        .await;
    limit_reached(s, &b, "limits.api_keys");
    let resp = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{}", ids[0]),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (s, b) = app
        .post("/v1/api-keys", json!({"name": "k3", "role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn list_endpoints_page_with_limit_and_next_cursor() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for i in 0..5 {
        let (_, b) = app
            .post(
                "/v1/segments",
                json!({"name": format!("s{i}"), "rules": {"plan": "pro"}}),
            )
            .await;
        made.push(b["id"].as_str().expect("id").to_owned());
        app.clock.advance(1);
        let (s, _) = app
            .post(
                "/v1/metrics",
                json!({"key": format!("m{i}"), "kind": "count", "event": "e"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    for (path, field) in [("/v1/segments", "segments"), ("/v1/metrics", "metrics")] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=2&cursor={c}"),
                None => format!("{path}?limit=2"),
            };
            let (s, page) = app.get(&url).await;
            assert_eq!(s, StatusCode::OK, "{page}");
            let items = page[field].as_array().expect("items").clone();
            assert!(items.len() <= 2);
            seen.extend(items);
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            // A segment deleted between pages does not shift the others.
            if pages == 1 && field == "segments" {
                let resp = app
                    .call(
                        Method::DELETE,
                        &format!("/v1/segments/{}", made[0]),
                        Some(ADMIN),
                        None,
                    )
                    .await;
                assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            }
        }
        assert_eq!((pages, seen.len()), (3, 5), "{path}: {seen:?}");
        if field == "segments" {
            let got: Vec<&str> = seen.iter().filter_map(|s| s["id"].as_str()).collect();
            assert_eq!(got, made.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("cursor=zz", "invalid_cursor"),
        ("page=2", "invalid_query"),
    ] {
        let (s, e) = app.get(&format!("/v1/experiments?{query}")).await;
        assert_eq!(
            (s, error_code(&e)),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{query}: {e}"
        );
    }
}

#[tokio::test]
async fn streams_past_max_streams_are_answered_429() {
    let app = limited_app().await;
    let open = || {
        app.client
            .get(app.url("/v1/changes/stream"))
            .bearer_auth(ADMIN)
            .send()
    };
    let first = open().await.expect("first stream");
    assert_eq!(first.status(), StatusCode::OK);
    let second = open().await.expect("second stream");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = second.json().await.expect("error body");
    assert_eq!(error_code(&body), "too_many_streams");
    let ws = tokio_tungstenite::connect_async(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/changes/ws",
            app.addr
        ))
        .map(|mut r| {
            r.headers_mut().insert(
                "authorization",
                format!("Bearer {ADMIN}").parse().expect("header"),
            );
            r
        })
        .expect("request"),
    )
    .await;
    assert!(ws.is_err(), "a WebSocket past the cap was accepted");
    // Closing the first stream frees its place.
    drop(first);
    let again = eventually("a freed place", || async {
        let r = open().await.ok()?;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    drop(again);
}

#[tokio::test]
async fn ingest_and_serving_are_rate_limited_per_key() {
    let app = limited_app().await;
    let ingest = app.key(Role::Ingest).await;
    let sdk = app.key(Role::Sdk).await;
    let send = |key: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/v1/events",
                Some(&key),
                Some(json!({"user_id": "u1", "name": "A"})),
            )
            .await
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(send(ingest.clone()).await.status());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        5,
        "{statuses:?}"
    );
    let refused = send(ingest.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = refused.json().await.expect("body");
    assert_eq!(error_code(&body), "rate_limited");
    // Another key is not limited by this one's requests; serving has its own.
    for _ in 0..5 {
        let r = app
            .call(Method::GET, "/v1/users/u1/experiments", Some(&sdk), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app
        .call(Method::GET, "/v1/users/u1/experiments", Some(&sdk), None)
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // A second later (on the server's clock) the bucket has refilled.
    app.clock.advance(1000);
    assert_eq!(send(ingest.clone()).await.status(), StatusCode::OK);
}
