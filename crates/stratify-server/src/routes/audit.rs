//! The audit log: a layer on every configuration route records each
//! successful change (key, action, target, time, what was asked and
//! answered, secrets removed), and `GET /v1/audit` reads it (admins only).

use crate::extract::Params;
use crate::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stratify_engine::audit::{AuditService, Change};
use stratify_engine::keys::Principal;
use utoipa::{IntoParams, ToSchema};

/// Largest answer body kept in an entry.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Fields never written to the log (webhook secrets, new API keys).
const SECRET_FIELDS: [&str; 2] = ["secret", "key"];

/// Records a successful configuration request. Wraps the handler inside
/// authorization, so the key is known; reads and failures record nothing.
pub async fn record(
    state: AppState,
    template: &'static str,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let key_id = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.key_id.clone())
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    let asked = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response(),
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(asked.clone())))
        .await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let answered = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .unwrap_or_default();
    let answer = parse(&answered);
    let (target_kind, target_id, action) = target(template, &path, &method, &answer);
    let change = Change {
        key_id,
        action,
        target_kind,
        target_id,
        changes: json!({"request": redact(parse(&asked)), "response": redact(answer)}),
    };
    if let Err(e) = state.engine.audit.record(change).await {
        tracing::error!(error = %e, "audit: cannot record a configuration change");
    }
    Response::from_parts(parts, Body::from(answered))
}

fn parse(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!({"bytes": bytes.len()}))
}

fn redact(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        for f in SECRET_FIELDS {
            // An experiment's or metric's `key` is its name, not a secret:
            // only a string that looks like an API key is dropped.
            let secret = match map.get(f) {
                Some(Value::String(s)) => f == "secret" || s.starts_with("sfy_"),
                _ => false,
            };
            if secret {
                map.insert(f.into(), json!("(redacted)"));
            }
        }
    }
    v
}

/// (kind, id, action) of a request on `template`: the kind is the path's
/// collection, the id its first parameter or else the answer's `id`,
/// `key`, `name` or `user_id` (a merge: the person); a `{action}` parameter is spelled out in the action.
fn target(
    template: &str,
    path: &str,
    method: &Method,
    answer: &Value,
) -> (String, Option<String>, String) {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    let kind = t.get(2).copied().unwrap_or("").to_owned();
    let mut id = None;
    let mut action = Vec::with_capacity(t.len());
    for (i, part) in t.iter().enumerate() {
        let actual = p.get(i).copied().unwrap_or("");
        if *part == "{action}" {
            action.push(actual.to_owned());
            continue;
        }
        if part.starts_with('{') && id.is_none() {
            id = Some(percent_decode(actual));
        }
        action.push((*part).to_owned());
    }
    let from_answer = || {
        ["id", "key", "name", "user_id"]
            .iter()
            .find_map(|f| answer.get(f).and_then(Value::as_str))
            .filter(|s| !s.starts_with("sfy_"))
            .map(str::to_owned)
    };
    (
        kind,
        id.or_else(from_answer),
        format!("{method} {}", action.join("/")),
    )
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// 1–1000, default 100.
    limit: Option<u32>,
    /// `next_cursor` of the previous page (older entries).
    cursor: Option<String>,
    /// Only entries about this target id (`seg_…`, an experiment id, a
    /// metric key) or kind (`segments`, `experiments`, `api-keys`…).
    target: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntryOut {
    seq: i64,
    at: String,
    /// The API key that made the change.
    key_id: String,
    /// `METHOD /route`, e.g. `POST /v1/experiments/{id}/start`.
    action: String,
    target_kind: String,
    target_id: Option<String>,
    /// `{"request", "response"}`: what was asked and answered, secrets removed.
    #[schema(value_type = Object)]
    changes: Value,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    entries: Vec<AuditEntryOut>,
    /// The next (older) page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

/// Every configuration change, newest first (admins only).
#[utoipa::path(get, path = "/v1/audit", tag = "keys", security(("api_key" = [])), params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 403), (status = 422)))]
pub async fn list(
    State(audit): State<Arc<AuditService>>,
    Params(q): Params<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let page = audit
        .entries(q.target, q.cursor.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(AuditList {
        entries: page
            .entries
            .into_iter()
            .map(|e| AuditEntryOut {
                seq: e.seq,
                at: e.at,
                key_id: e.key_id,
                action: e.action,
                target_kind: e.target_kind,
                target_id: e.target_id,
                changes: e.changes,
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_and_action_come_from_the_route() {
        let none = Value::Null;
        assert_eq!(
            target(
                "/v1/experiments/{id}/{action}",
                "/v1/experiments/exp_1/start",
                &Method::POST,
                &none
            ),
            (
                "experiments".into(),
                Some("exp_1".into()),
                "POST /v1/experiments/{id}/start".into()
            )
        );
        assert_eq!(
            target(
                "/v1/segments",
                "/v1/segments",
                &Method::POST,
                &json!({"id": "seg_9"})
            ),
            (
                "segments".into(),
                Some("seg_9".into()),
                "POST /v1/segments".into()
            )
        );
        assert_eq!(
            target(
                "/v1/api-keys",
                "/v1/api-keys",
                &Method::POST,
                &json!({"id": "k1", "key": "sfy_x"})
            ),
            (
                "api-keys".into(),
                Some("k1".into()),
                "POST /v1/api-keys".into()
            )
        );
    }

    #[test]
    fn secrets_are_redacted_and_names_kept() {
        let v = redact(json!({"key": "sfy_abc", "secret": "whsec_x", "name": "n"}));
        assert_eq!(
            v,
            json!({"key": "(redacted)", "secret": "(redacted)", "name": "n"})
        );
        let v = redact(json!({"key": "checkout"}));
        assert_eq!(v, json!({"key": "checkout"}));
    }
}
