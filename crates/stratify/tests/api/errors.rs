//! Hostile and malformed input: never a 5xx, never a panic, always the JSON
//! error shape; size limits give 413.

use crate::helpers::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use stratify_server::{AppState, ServerConfig};
use tower::ServiceExt;

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_unknown_routes_are_json_404() {
    let app = spawn_app_with(ServerConfig {
        max_body_bytes: 1024,
        max_ingest_body_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let big = json!({"user_id": "u", "attributes": {"x": "y".repeat(2000)}});
    let (status, body) = app.post("/v1/users", big).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"user_id": format!("u{i}"), "name": "LOGIN"}))
        .collect();
    let (status, body) = app.post("/v1/events", json!({"events": events})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn a_batch_over_the_event_limit_is_413() {
    let app = spawn_app().await;
    let events: Vec<Value> = (0..10_001)
        .map(|_| json!({"user_id": "u", "name": "A"}))
        .collect();
    let (status, body) = app.post("/v1/events", json!({"events": events})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large")
    );
}

#[tokio::test]
async fn malformed_json_is_400_and_wrong_shapes_are_422() {
    let app = spawn_app().await;
    for (path, body, status, code) in [
        (
            "/v1/users",
            "{\"user_id\": ",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/users",
            "{\"user_id\": \"a\"} trailing",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/users",
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/users",
            "{\"user_id\": 7}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/events",
            "[1,2]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/events",
            "{\"events\": {}}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/events",
            "{\"events\": [], \"x\": 1}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
        ),
        (
            "/v1/orders",
            "nope",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
    ] {
        let resp = app
            .client
            .post(app.url(path))
            .bearer_auth(ADMIN)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), status, "{path} {body}");
        let json: Value = resp.json().await.expect("json error");
        assert_eq!(error_code(&json), code, "{path} {body}");
    }
    let resp = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(ADMIN)
        .header("Content-Type", "text/csv")
        .body("a,b")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("user_id"),
            Just("name"),
            Just("timestamp"),
            Just("events"),
            Just("attributes")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("user_id".to_owned()),
                    Just("name".to_owned()),
                    Just("timestamp".to_owned()),
                    Just("properties".to_owned()),
                    Just("events".to_owned()),
                    Just("attributes".to_owned()),
                    Just("event_id".to_owned()),
                    Just("amount".to_owned()),
                    ".{0,12}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (1usize..20_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => (1usize..5_000).prop_map(|depth| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()),
        1 => Just(b"{\"user_id\":\"u\",\"name\":\"n\",\"timestamp\":1e400}".to_vec()),
        1 => Just(b"{\"user_id\":\"\\ud800\",\"name\":\"n\"}".to_vec()),
        1 => Just(b"{\"user_id\":\"u\",\"name\":\"n\",\"timestamp\":-9223372036854775808}".to_vec()),
    ]
}

const TARGETS: [(&str, &str, &str); 12] = [
    ("POST", "/v1/segments", "application/json"),
    ("POST", "/v1/segments/query", "application/json"),
    ("PATCH", "/v1/segments/none", "application/json"),
    ("POST", "/v1/events", "application/json"),
    ("POST", "/v1/events", "application/x-ndjson"),
    ("POST", "/v1/users", "application/json"),
    ("PUT", "/v1/users/u", "application/json"),
    ("PATCH", "/v1/users/u", "application/json"),
    ("POST", "/v1/orders", "application/json"),
    ("POST", "/v1/event-types", "application/json"),
    ("PUT", "/v1/attributes/schema", "application/json"),
    ("POST", "/v1/api-keys", "application/json"),
];

#[test]
fn hostile_bodies_never_cause_a_5xx_or_a_panic() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let app = runtime.block_on(spawn_app());
    let router = stratify_server::app(AppState::new(app.engine.clone(), ServerConfig::default()));
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in hostile_body(), target in 0..TARGETS.len())| {
        let (method, path, content_type) = TARGETS[target];
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", content_type)
            .body(Body::from(body.clone()))
            .expect("request");
        let response = runtime.block_on(router.clone().oneshot(request)).expect("infallible");
        let status = response.status();
        let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).expect("body");
        prop_assert!(!status.is_server_error(), "{method} {path} -> {status}: {}", String::from_utf8_lossy(&bytes));
        if status.is_client_error() {
            let json: Value = serde_json::from_slice(&bytes).expect("JSON error body");
            prop_assert!(json["error"]["code"].is_string(), "{json}");
        }
    });
}

#[tokio::test]
async fn a_request_that_stalls_gets_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(ServerConfig {
        request_timeout: std::time::Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // Headers promise a body that never comes.
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("}}") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server must answer, not wait for the body forever"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
}
