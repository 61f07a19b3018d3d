use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use stratify_core::access::Role;

#[tokio::test]
async fn a_created_key_works_is_listed_without_its_secret_and_dies_when_revoked() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/v1/api-keys",
            json!({"name": "dashboard", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = created["key"].as_str().expect("secret").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (created["name"].as_str(), created["role"].as_str()),
        (Some("dashboard"), Some("viewer"))
    );
    assert!(created["created_at"].is_string());

    let ok = app
        .call(Method::GET, "/v1/ingest/status", Some(&key), None)
        .await;
    assert_eq!(ok.status(), StatusCode::OK);

    let (_, list) = app.get("/v1/api-keys").await;
    let text = list.to_string();
    assert!(
        text.contains(&id) && !text.contains(&key),
        "listing must not leak the secret: {text}"
    );

    let (status, _) = app
        .json(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = app
        .call(Method::GET, "/v1/ingest/status", Some(&key), None)
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .json(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "api_key_not_found")
    );
}

#[tokio::test]
async fn a_key_with_a_tampered_secret_is_refused() {
    let app = spawn_app().await;
    let key = app.key(Role::Admin).await;
    let mut tampered = key.clone();
    let last = tampered.pop().expect("char");
    tampered.push(if last == '0' { '1' } else { '0' });
    let resp = app
        .call(Method::GET, "/v1/api-keys", Some(&tampered), None)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_survive_a_restart_and_are_stored_hashed() {
    let app = spawn_app().await;
    let key = app.key(Role::Editor).await;
    let db = std::fs::read(app.dir.path().join("stratify.db")).unwrap_or_default();
    let wal = std::fs::read(app.dir.path().join("stratify.db-wal")).unwrap_or_default();
    let secret = key.rsplit('_').next().expect("secret part").as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the secret must never be stored"
        );
    }
    let store = stratify_engine::open_store(app.dir.path()).expect("reopen");
    let engine = stratify_engine::Engine::start(store, app.clock.clone(), None)
        .await
        .expect("engine");
    assert_eq!(
        engine.keys.authenticate(&key).map(|p| p.role),
        Some(Role::Editor)
    );
}
