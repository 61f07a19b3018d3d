//! GrowthBook's SDKs against Stratify: the features endpoint they fetch and
//! the SSE stream they follow, with an `sdk` key as the client key, and the
//! attributes an app hands them for a user.

use super::users::user_id;
use crate::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use stratify_core::access::Capability;
use stratify_core::ErrorCode;
use stratify_engine::experiments::assign::ServingService;

/// How often the stream looks for a changed payload.
const STREAM_CHECK: Duration = Duration::from_secs(1);

/// The client key is an API key whose role may evaluate (`sdk` and up).
fn check_client_key(state: &AppState, client_key: &str) -> Result<(), ApiError> {
    let principal = state
        .engine
        .keys
        .authenticate(client_key)
        .ok_or_else(ApiError::unauthorized)?;
    if !principal.role.can(Capability::Evaluate) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the client key's role may not evaluate experiments (use an sdk key)",
        ));
    }
    Ok(())
}

/// GrowthBook's features payload: every running experiment as a feature
/// of the same key with one experiment rule. `ETag` and `If-None-Match`
/// (304); readable cross-origin, as SDKs in browsers fetch it.
#[utoipa::path(get, path = "/api/features/{client_key}", tag = "experiments",
    params(("client_key" = String, Path, description = "an sdk API key")),
    responses((status = 200, description = "{status, features: {<experiment key>: {defaultValue, rules: [{key, variations, weights, coverage, hashAttribute, hashVersion, seed, namespace?, meta, condition?}]}}, dateUpdated}"),
        (status = 304), (status = 401), (status = 403)))]
pub async fn features(
    State(state): State<AppState>,
    Path(client_key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_client_key(&state, &client_key)?;
    let payload = state.engine.serving.growthbook_features();
    let etag = HeaderValue::from_str(&payload.etag).map_err(|_| ApiError::internal())?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == payload.etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(payload.body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(response)
}

/// GrowthBook's streaming protocol: a `features` event with the payload
/// now, and again whenever it changes (checked every second).
#[utoipa::path(get, path = "/sub/{client_key}", tag = "experiments",
    params(("client_key" = String, Path, description = "an sdk API key")),
    responses((status = 200, description = "text/event-stream of `features` events"), (status = 401), (status = 403), (status = 429)))]
pub async fn stream(
    State(state): State<AppState>,
    Path(client_key): Path<String>,
) -> Result<Response, ApiError> {
    check_client_key(&state, &client_key)?;
    let permit = crate::limits::stream_permit(&state.streams, state.config.max_streams)?;
    let serving = state.engine.serving.clone();
    let stopping = state.stopping.clone();
    let events = futures_util::stream::unfold(
        (serving, stopping, permit, String::new()),
        |(serving, mut stopping, permit, sent)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                let payload = serving.growthbook_features();
                if payload.etag != sent {
                    let data = String::from_utf8_lossy(&payload.body).into_owned();
                    let event = Event::default().event("features").data(data);
                    return Some((
                        Ok::<_, Infallible>(event),
                        (serving, stopping, permit, payload.etag),
                    ));
                }
                tokio::select! {
                    _ = tokio::time::sleep(STREAM_CHECK) => {}
                    _ = stopping.wait_for(|s| *s) => return None,
                }
            }
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(response)
}

/// What an app hands a GrowthBook SDK for this user: `id`, the user's
/// attributes, and `segments` (the live segments they are in, plus
/// `rule:<experiment key>` for running experiments whose inline rule holds).
#[utoipa::path(get, path = "/v1/users/{id}/sdk-attributes", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404), (status = 422)))]
pub async fn sdk_attributes(
    State(serving): State<Arc<ServingService>>,
    Path(id): Path<String>,
) -> Result<Json<Map<String, Value>>, ApiError> {
    let id = user_id(id, "/user_id")?;
    Ok(Json(serving.sdk_attributes(&id).await?))
}
