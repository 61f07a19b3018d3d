use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn health_metrics_and_docs_need_no_key() {
    let app = spawn_app().await;
    let (status, health) = app.get("/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    app.post("/v1/events", json!({"user_id": "u", "name": "LOGIN"}))
        .await;
    app.post("/v1/events", json!({"user_id": 1})).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/plain"));
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains(
            "stratify_http_requests_total{method=\"POST\",route=\"/v1/events\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("stratify_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/events\",le=\"+Inf\"} 2"));
    assert!(text.contains("stratify_ingest_events_total{source=\"http\",outcome=\"accepted\"} 1"));
    assert!(text.contains("stratify_ingest_events_total{source=\"http\",outcome=\"rejected\"} 1"));

    let docs = app
        .client
        .get(app.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "the docs page is Swagger UI");
    assert!(
        !html.contains("https://"),
        "no asset may come from the network"
    );
    let bundle = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("bundle");
    assert_eq!(
        bundle.status(),
        StatusCode::OK,
        "Swagger UI's JavaScript is served by the binary"
    );
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("initializer")
        .text()
        .await
        .expect("text");
    let compact: String = init.split_whitespace().collect();
    assert!(
        compact.contains("\"validatorUrl\":\"none\""),
        "no online validator: {init}"
    );
    assert!(compact.contains("\"url\":\"/openapi.json\""), "{init}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_of_the_table() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    for route in stratify_server::routes::table() {
        if route.path == "/metrics" {
            continue; // text format, not JSON: documented in the README
        }
        let op = &paths
            .get(route.path)
            .unwrap_or_else(|| panic!("{} missing from OpenAPI", route.path))
            [route.method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from OpenAPI",
            route.method,
            route.path
        );
        if route.capability.is_some() {
            assert_ne!(
                op["security"],
                Value::Null,
                "{} {} must declare its key",
                route.method,
                route.path
            );
        }
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_error_code_and_types_error_answers() {
    let app = spawn_app().await;
    let (_, doc) = app.get("/openapi.json").await;
    let codes = &doc["components"]["schemas"]["ErrorCode"];
    let listed: Vec<&str> = codes["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let table = codes["description"].as_str().expect("code table");
    assert_eq!(listed.len(), stratify_core::ErrorCode::ALL.len());
    for code in stratify_core::ErrorCode::ALL {
        assert!(listed.contains(&code.as_str()), "{code} not listed");
        let row = format!("| `{}` | {} | ", code.as_str(), code.status());
        assert!(table.contains(&row), "{code}: no row {row}");
    }
    // Every failure response of every operation carries the Error body
    // (OFREP's own errors carry OFREP's body, as its specification says).
    let mut failures = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                if status.starts_with('4') || status.starts_with('5') {
                    failures += 1;
                    let ofrep_own = path.starts_with("/ofrep/")
                        && !matches!(status.as_str(), "401" | "403" | "429" | "5XX");
                    let schema = if ofrep_own { "OfrepError" } else { "Error" };
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        format!("#/components/schemas/{schema}").as_str(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    assert!(
        failures > 50,
        "only {failures} failure responses documented"
    );
    // A real error answer uses a listed code with the listed status.
    let (status, body) = app.get("/v1/segments/seg_missing").await;
    let code = body["error"]["code"].as_str().expect("code");
    assert!(listed.contains(&code), "{code}");
    assert!(table.contains(&format!("| `{code}` | {} |", status.as_u16())));
}
