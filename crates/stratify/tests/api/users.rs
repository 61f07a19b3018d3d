use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn users_are_created_read_replaced_merged_and_erased() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/v1/users",
            json!({"user_id": "alice", "attributes": {"age": 31, "vip": true, "tags": ["a"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["attributes"],
        json!({"age": 31, "vip": true, "tags": ["a"]}),
        "JSON types are kept"
    );
    assert_eq!(created["created_at"], "2026-01-01T00:00:00.000Z");

    let (status, body) = app.post("/v1/users", json!({"user_id": "alice"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "user_exists")
    );

    app.clock.advance(60_000);
    let (status, merged) = app
        .json(
            Method::PATCH,
            "/v1/users/alice",
            Some(json!({"attributes": {"age": 32, "vip": null}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(merged["attributes"], json!({"age": 32, "tags": ["a"]}));
    assert_eq!(merged["updated_at"], "2026-01-01T00:01:00.000Z");

    let (status, replaced) = app
        .json(
            Method::PUT,
            "/v1/users/alice",
            Some(json!({"attributes": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(
        (status, &replaced["attributes"]),
        (StatusCode::OK, &json!({"plan": "pro"}))
    );

    let (status, got) = app.get("/v1/users/alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["user_id"], "alice");
    assert_eq!(got["segments"], json!([]));
    assert_eq!(got["computed"]["total_orders"], 0);

    let (status, _) = app.json(Method::DELETE, "/v1/users/alice", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/users/alice").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
}

#[tokio::test]
async fn patching_an_unknown_user_is_404_and_put_creates() {
    let app = spawn_app().await;
    let (status, body) = app
        .json(
            Method::PATCH,
            "/v1/users/ghost",
            Some(json!({"attributes": {}})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
    let (status, _) = app
        .json(
            Method::PUT,
            "/v1/users/ghost",
            Some(json!({"attributes": {"a": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn deleting_a_user_erases_their_events() {
    let app = spawn_app().await;
    app.post("/v1/events", json!({"events": [{"user_id": "bob", "name": "LOGIN"}, {"user_id": "carol", "name": "LOGIN"}]})).await;
    app.json(Method::DELETE, "/v1/users/bob", None).await;
    let (_, page) = app.get("/v1/events").await;
    let users: Vec<_> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["user_id"].clone())
        .collect();
    assert_eq!(users, [json!("carol")]);
}

#[tokio::test]
async fn computed_fields_follow_the_users_orders() {
    let app = spawn_app().await;
    for (i, (amount, city, ts)) in [
        (120.5, "Pune", "2025-12-30T10:00:00Z"),
        (300.0, "HSR Layout", "2025-12-31T00:00:00Z"),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = app.post("/v1/orders", json!({"user_id": "dave", "amount": amount, "city": city, "timestamp": ts, "order_id": i})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, user) = app.get("/v1/users/dave").await;
    let c = &user["computed"];
    assert_eq!(c["total_orders"], 2);
    assert_eq!(c["ltv"], 420.5);
    assert_eq!(c["city"], "HSR Layout");
    assert_eq!(c["seconds_since_last_order"], 86_400);
}

#[tokio::test]
async fn attribute_writes_are_bounded() {
    let app = spawn_app().await;
    let many: serde_json::Map<_, _> = (0..101).map(|i| (format!("a{i}"), json!(i))).collect();
    let (status, body) = app
        .post("/v1/users", json!({"user_id": "x", "attributes": many}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "too_many_fields")
    );
    let (status, body) = app
        .post("/v1/users", json!({"user_id": "", "attributes": {}}))
        .await;
    assert_eq!(
        (status, error_code(&body), body["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
            Some("/user_id")
        )
    );
    let (status, body) = app
        .post(
            "/v1/users",
            json!({"user_id": "x", "attributes": {"deep": [[[[[1]]]]]}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/attributes/deep"))
    );
}
