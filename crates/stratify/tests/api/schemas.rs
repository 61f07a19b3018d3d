use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn events_of_a_declared_type_are_validated_against_it() {
    let app = spawn_app().await;
    let schema = json!({"name": "order_placed", "properties": {"amount": {"type": "number", "required": true}, "city": {"type": "string"}}});
    let (status, created) = app.post("/v1/event-types", schema.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, body) = app.post("/v1/event-types", schema).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "event_type_exists")
    );

    let (status, body) = app
        .post(
            "/v1/events",
            json!({"events": [
                {"user_id": "u", "name": "order_placed", "properties": {"amount": 10, "city": "Pune"}},
                {"user_id": "u", "name": "order_placed", "properties": {"city": "Pune"}},
                {"user_id": "u", "name": "order_placed", "properties": {"amount": "ten"}},
                {"user_id": "u", "name": "LOGIN"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["accepted"], 2);
    assert_eq!(
        body["rejected"][0],
        json!({"index": 1, "code": "missing_property", "message": "event type 'order_placed' requires property 'amount'", "field": "/properties/amount"})
    );
    assert_eq!(body["rejected"][1]["code"], "type_mismatch");

    let (_, list) = app.get("/v1/event-types").await;
    assert_eq!(list["event_types"][0]["name"], "order_placed");
    let (status, _) = app
        .json(Method::DELETE, "/v1/event-types/order_placed", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, after) = app
        .post(
            "/v1/events",
            json!({"user_id": "u", "name": "order_placed"}),
        )
        .await;
    assert_eq!(after["accepted"], 1, "no schema, no check");
}

#[tokio::test]
async fn bad_schemas_are_refused_with_a_pointer() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/event-types",
            json!({"name": "x", "properties": {"a": {"type": "money"}}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/properties/a/type"))
    );
    let (status, body) = app.post("/v1/event-types", json!({"name": ""})).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/name"))
    );
    let (status, body) = app
        .json(Method::PUT, "/v1/event-types/a", Some(json!({"name": "b"})))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "name_mismatch")
    );
}

#[tokio::test]
async fn the_attribute_schema_validates_user_writes() {
    let app = spawn_app().await;
    let schema = json!({"attributes": {"age": {"type": "number"}, "email": {"type": "email"}, "signup_date": {"type": "date"}}});
    let (status, _) = app
        .json(Method::PUT, "/v1/attributes/schema", Some(schema.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = app.get("/v1/attributes/schema").await;
    assert_eq!(got, schema);
    let (status, _) = app.post("/v1/users", json!({"user_id": "ok", "attributes": {"age": 30, "email": "a@b.io", "signup_date": "2024-02-29", "other": "free"}})).await;
    assert_eq!(status, StatusCode::CREATED);
    for (attrs, field) in [
        (json!({"age": "thirty"}), "/attributes/age"),
        (json!({"email": "not-an-email"}), "/attributes/email"),
        (
            json!({"signup_date": "2023-02-29"}),
            "/attributes/signup_date",
        ),
    ] {
        let (status, body) = app
            .json(
                Method::PATCH,
                "/v1/users/ok",
                Some(json!({"attributes": attrs})),
            )
            .await;
        assert_eq!(
            (status, error_code(&body), body["error"]["field"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "type_mismatch",
                Some(field)
            )
        );
    }
}
