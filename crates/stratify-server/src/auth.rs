//! The one mechanism that enforces roles: every route in the table is wrapped
//! by [`require`] with its capability. No key → 401; a valid key whose role
//! lacks the capability → 403.

use crate::{ApiError, AppState};
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stratify_core::access::Capability;
use stratify_engine::keys::Principal;

/// Reads the key from `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub async fn authorize(
    state: AppState,
    capability: Capability,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(principal) = presented_key(req.headers()).and_then(|k| state.engine.authenticate(k))
    else {
        return ApiError::unauthorized().into_response();
    };
    if !principal.role.can(capability) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the '{}' role may not do this ({capability:?})",
                principal.role
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert::<Principal>(principal);
    next.run(req).await
}
