use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn single_batch_and_ndjson_ingest_report_each_item() {
    let app = spawn_app().await;
    let (status, one) = app
        .post(
            "/v1/events",
            json!({"user_id": "u1", "name": "LOGIN", "timestamp": "2025-12-31T23:00:00Z"}),
        )
        .await;
    assert_eq!(
        (status, one["accepted"].as_u64()),
        (StatusCode::OK, Some(1))
    );

    let (status, batch) = app
        .post(
            "/v1/events",
            json!({"events": [
                {"user_id": "u1", "name": "ADDED_TO_CART", "properties": {"sku": "p-1", "price": 9.5}},
                {"user_id": "u2", "name": "LOGIN", "timestamp": 1_767_225_000_000i64},
                {"user_id": "u3"},
                {"user_id": "u3", "name": "LOGIN", "timestamp": "not a time"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["accepted"], 2);
    let rejected: Vec<(u64, &str, &str)> = batch["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap_or(99),
                r["code"].as_str().unwrap_or(""),
                r["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (2, "missing_field", "/name"),
            (3, "invalid_timestamp", "/timestamp")
        ]
    );

    let ndjson = "{\"user_id\":\"u4\",\"name\":\"SEARCH\"}\n\n{broken\n{\"user_id\":\"u4\",\"name\":\"LOGOUT\"}\n";
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(ADMIN)
        .header("Content-Type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["code"], "malformed_json");

    // The unknown users were created by their events.
    let (status, _) = app.get("/v1/users/u4").await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = app.get("/v1/events?limit=100").await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(5));
    let default_ts = page["events"][1]["timestamp"].as_str();
    assert_eq!(
        default_ts,
        Some("2026-01-01T00:00:00.000Z"),
        "a missing timestamp is the receiving instant"
    );
}

#[tokio::test]
async fn an_event_id_is_accepted_once() {
    let app = spawn_app().await;
    let e = json!({"event_id": "evt-42", "user_id": "u", "name": "PURCHASE_MADE"});
    let (_, first) = app.post("/v1/events", e.clone()).await;
    let (status, again) = app
        .post("/v1/events", json!({"events": [e.clone(), e]}))
        .await;
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (
            status,
            again["accepted"].as_u64(),
            again["duplicates"].as_u64()
        ),
        (StatusCode::OK, Some(2), Some(2))
    );
    let (_, page) = app.get("/v1/events").await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1));
    let (_, status) = app.get("/v1/ingest/status").await;
    assert_eq!(status["sources"][0]["duplicates"], 2);
}

#[tokio::test]
async fn a_request_whose_every_event_is_rejected_is_a_422_with_both_shapes() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/events",
            json!({"events": [{"user_id": 5, "name": "X"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&body), "type_mismatch");
    assert_eq!(body["error"]["field"], "/events/0/user_id");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"][0]["field"], "/user_id");
}

#[tokio::test]
async fn events_are_filtered_and_paged_with_a_cursor() {
    let app = spawn_app().await;
    let events: Vec<Value> = (0..23)
        .map(|i| json!({"user_id": if i % 2 == 0 {"even"} else {"odd"}, "name": if i % 3 == 0 {"LOGIN"} else {"SEARCH"}, "timestamp": T0 - 1000 * (23 - i)}))
        .collect();
    app.post("/v1/events", json!({"events": events})).await;
    let mut seen = Vec::new();
    let mut path = "/v1/events?user_id=even&limit=4".to_owned();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["timestamp"].as_str().unwrap_or("").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/events?user_id=even&limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "log order");

    let (_, logins) = app
        .get("/v1/events?name=LOGIN&from=2025-12-31T23:59:45Z&to=2025-12-31T23:59:57Z")
        .await;
    // Log order; within one batch the log is ordered by (user, time), so
    // compare the mixed-user result as a set.
    let mut ts: Vec<_> = logins["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["timestamp"].clone())
        .collect();
    ts.sort_by_key(|t| t.as_str().unwrap_or("").to_owned());
    let expected = [
        "2025-12-31T23:59:46.000Z",
        "2025-12-31T23:59:49.000Z",
        "2025-12-31T23:59:52.000Z",
        "2025-12-31T23:59:55.000Z",
    ];
    assert_eq!(
        ts,
        expected.map(|t| json!(t)),
        "from is inclusive, to exclusive"
    );

    for bad in [
        "/v1/events?cursor=zzz",
        "/v1/events?from=yesterday",
        "/v1/events?limit=5000",
        "/v1/events?variant=control",
    ] {
        let (status, body) = app.get(bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        error_code(&body);
    }
    let (status, body) = app.get("/v1/events?experiment_id=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "experiment_not_found");
}

#[tokio::test]
async fn orders_are_idempotent_by_order_id() {
    let app = spawn_app().await;
    let order = json!({"order_id": "o-1", "user_id": "u", "amount": 99.5, "city": "Pune"});
    app.post("/v1/orders", order.clone()).await;
    let (_, again) = app.post("/v1/orders", order).await;
    assert_eq!(again["duplicates"], 1);
    let (_, page) = app.get("/v1/events?name=order_placed").await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        page["events"][0]["properties"],
        json!({"amount": 99.5, "city": "Pune", "order_id": "o-1"})
    );
    assert_eq!(page["events"][0]["event_id"], "order:o-1");
}

#[tokio::test]
async fn ingest_status_counts_per_source_with_the_last_error() {
    let app = spawn_app().await;
    app.post("/v1/events", json!({"events": [{"user_id": "u", "name": "A", "timestamp": "2025-06-01T00:00:00Z"}, {"name": "B"}]})).await;
    app.post(
        "/v1/events",
        json!({"user_id": "u", "name": "C", "timestamp": "2025-05-01T00:00:00Z"}),
    )
    .await;
    let (_, status) = app.get("/v1/ingest/status").await;
    let http = &status["sources"][0];
    assert_eq!(http["source"], "http");
    assert_eq!(
        (
            http["received"].as_u64(),
            http["accepted"].as_u64(),
            http["rejected"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(
        http["last_event_at"], "2025-06-01T00:00:00.000Z",
        "the latest event time, not the latest received"
    );
    assert!(http["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("missing_field")));
    assert_eq!(status["sources"][1]["source"], "import");
}
