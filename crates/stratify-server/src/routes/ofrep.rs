//! OFREP, the OpenFeature Remote Evaluation Protocol
//! (open-feature/protocol, service/openapi.yaml): a flag is an experiment,
//! found by its key. The context's `targetingKey` is the user id; its other
//! fields are attributes laid over the stored ones. A user in the experiment
//! gets reason `SPLIT`, the variant's key and, as the value, the variant's
//! payload (else its key). A user outside it gets reason `DEFAULT` and no
//! value (the caller's code default, as the protocol allows); a paused or
//! completed experiment gives `DISABLED`. Errors carry the protocol's codes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_engine::experiments::assign::ServingService;
use stratify_engine::experiments::assign::UserExperiments;
use stratify_engine::experiments::Experiment;
use stratify_engine::experiments::ExperimentService;

struct Failure {
    status: StatusCode,
    code: &'static str,
    details: String,
}

fn failure(status: StatusCode, code: &'static str, details: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        details: details.into(),
    }
}

/// The request's user and the attributes its context adds.
fn context(body: &[u8]) -> Result<(UserId, Option<Map<String, Value>>), Failure> {
    let bad = StatusCode::BAD_REQUEST;
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| failure(bad, "PARSE_ERROR", format!("the body is not JSON: {e}")))?
    };
    let Value::Object(mut doc) = doc else {
        return Err(failure(bad, "PARSE_ERROR", "the body is a JSON object"));
    };
    let ctx = match doc.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(failure(
                bad,
                "INVALID_CONTEXT",
                "context is an object of attributes",
            ))
        }
    };
    let mut attributes = ctx;
    let key = match attributes.remove("targetingKey") {
        None | Some(Value::Null) => {
            return Err(failure(
                bad,
                "TARGETING_KEY_MISSING",
                "context.targetingKey (the user id) is required",
            ))
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(failure(
                bad,
                "TARGETING_KEY_MISSING",
                "context.targetingKey is empty",
            ))
        }
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(failure(
                bad,
                "INVALID_CONTEXT",
                "context.targetingKey is a string",
            ))
        }
    };
    let user = UserId::parse(&key)
        .map_err(|e| failure(bad, "INVALID_CONTEXT", format!("targetingKey: {e}")))?;
    stratify_core::attributes::check(&attributes, "/context")
        .map_err(|e| failure(bad, "INVALID_CONTEXT", e.to_string()))?;
    Ok((user, (!attributes.is_empty()).then_some(attributes)))
}

/// Whether an experiment is visible as a flag (drafts and archived ones are not).
fn is_flag(e: &Experiment) -> bool {
    matches!(e.record.status.as_str(), "running" | "paused" | "completed")
}

fn evaluation(e: &Experiment, answer: &UserExperiments) -> Value {
    let key = &e.record.key;
    let mut metadata = Map::new();
    metadata.insert("experiment_id".into(), json!(e.record.id));
    if !e.is_running() {
        metadata.insert("status".into(), json!(e.record.status));
        return json!({"key": key, "reason": "DISABLED", "variant": "", "metadata": metadata});
    }
    match answer
        .served()
        .find(|s| s.experiment.record.id == e.record.id)
    {
        Some(s) => {
            let v = s.variant();
            metadata.insert("in_experiment".into(), json!(true));
            metadata.insert("is_control".into(), json!(v.is_control));
            let value = v.payload.clone().unwrap_or_else(|| json!(v.key));
            json!({"key": key, "reason": "SPLIT", "variant": v.key, "value": value, "metadata": metadata})
        }
        None => {
            metadata.insert("in_experiment".into(), json!(false));
            json!({"key": key, "reason": "DEFAULT", "variant": "", "metadata": metadata})
        }
    }
}

async fn answer(
    serving: &ServingService,
    user: &UserId,
    attributes: Option<&Map<String, Value>>,
) -> Result<Arc<UserExperiments>, Failure> {
    serving
        .user_experiments(user, attributes)
        .await
        .map(|(a, _)| a)
        .map_err(|e| {
            tracing::error!(error = %e, "OFREP evaluation failed");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "GENERAL",
                "evaluation failed",
            )
        })
}

/// OFREP single flag evaluation.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "ofrep", security(("api_key" = [])),
    params(("key" = String, Path, description = "the experiment's key")),
    request_body(content = Object, description = "{context: {targetingKey, ...attributes}}"),
    responses((status = 200, description = "{key, reason, variant, value?, metadata}"),
        (status = 400, description = "{key, errorCode: PARSE_ERROR | TARGETING_KEY_MISSING | INVALID_CONTEXT, errorDetails}"),
        (status = 404, description = "{key, errorCode: FLAG_NOT_FOUND, errorDetails}")))]
pub async fn evaluate_flag(
    State(experiments): State<Arc<ExperimentService>>,
    State(serving): State<Arc<ServingService>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let (user, attributes) = context(&body)?;
        let registry = experiments.experiment_registry();
        let e = registry
            .by_key
            .get(&key)
            .filter(|e| is_flag(e))
            .cloned()
            .ok_or_else(|| {
                failure(
                    StatusCode::NOT_FOUND,
                    "FLAG_NOT_FOUND",
                    format!("no flag '{key}'"),
                )
            })?;
        let answer = answer(&serving, &user, attributes.as_ref()).await?;
        Ok::<_, Failure>(evaluation(&e, &answer))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(f) => (
            f.status,
            Json(json!({"key": key, "errorCode": f.code, "errorDetails": f.details})),
        )
            .into_response(),
    }
}

/// OFREP bulk evaluation: every running, paused or completed experiment, by key.
/// Answers 304 when `If-None-Match` holds the ETag of the same answer.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "ofrep", security(("api_key" = [])),
    request_body(content = Object, description = "{context: {targetingKey, ...attributes}}"),
    responses((status = 200, description = "{flags: [...]} with an ETag"), (status = 304),
        (status = 400, description = "{errorCode, errorDetails}")))]
pub async fn evaluate_flags(
    State(experiments): State<Arc<ExperimentService>>,
    State(serving): State<Arc<ServingService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (user, attributes) = context(&body)?;
        let answer = answer(&serving, &user, attributes.as_ref()).await?;
        let registry = experiments.experiment_registry();
        let mut flags: Vec<&Arc<Experiment>> =
            registry.by_id.values().filter(|e| is_flag(e)).collect();
        flags.sort_by(|a, b| a.record.key.cmp(&b.record.key));
        let flags: Vec<Value> = flags.iter().map(|e| evaluation(e, &answer)).collect();
        Ok::<_, Failure>(serde_json::to_vec(&json!({ "flags": flags })).unwrap_or_default())
    }
    .await;
    let body = match result {
        Ok(b) => b,
        Err(f) => {
            return (
                f.status,
                Json(json!({"errorCode": f.code, "errorDetails": f.details})),
            )
                .into_response()
        }
    };
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}
