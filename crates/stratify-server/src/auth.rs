//! The one mechanism that enforces roles: every route in the table is wrapped
//! by [`authorize`] with its capability. No key → 401; a valid key whose role
//! lacks the capability → 403.
//!
//! A request without a key may carry a dashboard session cookie instead
//! (see [`crate::dashboard::session`]); a session request that changes
//! something must also present the session's CSRF token, or it is 403.

use crate::dashboard::session;
use crate::{ApiError, AppState};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stratify_core::access::Capability;
use stratify_core::ErrorCode;
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
    let principal = match presented_key(req.headers()) {
        Some(key) => state.engine.keys.authenticate(key),
        None => match session::of_request(&state.engine, req.headers()).await {
            Some(signed) => {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
                let presented = req
                    .headers()
                    .get(session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !safe && !signed.csrf_matches(presented) {
                    return ApiError::new(ErrorCode::CsrfFailed,
                        "a dashboard session request that changes something needs the session's X-CSRF-Token header",
                    )
                    .into_response();
                }
                Some(signed.principal)
            }
            None => None,
        },
    };
    let Some(principal) = principal else {
        return ApiError::unauthorized().into_response();
    };
    if !principal.role.can(capability) {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "the '{}' role may not do this ({capability:?})",
                principal.role
            ),
        )
        .into_response();
    }
    let limited = match capability {
        Capability::WriteEvents | Capability::WriteUsers => state
            .config
            .ingest_rate_per_key
            .map(|r| (crate::limits::RateKind::Ingest, r)),
        Capability::Evaluate => state
            .config
            .serving_rate_per_key
            .map(|r| (crate::limits::RateKind::Serving, r)),
        _ => None,
    };
    if let Some((kind, rate)) = limited {
        if let Err(retry_after) =
            state
                .rates
                .take(kind, &principal.key_id, rate, state.engine.now())
        {
            return crate::limits::rate_limited(kind, retry_after);
        }
    }
    req.extensions_mut().insert::<Principal>(principal);
    next.run(req).await
}
