use super::instant;
use crate::extract::{parse_json, BodyKind, Params, RawBody};
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stratify_core::event::MAX_BATCH_EVENTS;
use stratify_core::time::parse_rfc3339;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_engine::ingest::IngestOutcome;
use stratify_engine::model::{EventQuery, ExperimentFilter, Source, StoredEvent};
use utoipa::{IntoParams, ToSchema};

/// Most events one `GET /v1/events` page returns.
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

#[derive(Serialize, ToSchema)]
pub struct RejectedItem {
    index: usize,
    code: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestResponse {
    /// Events now in the log, duplicates included.
    accepted: u64,
    /// Accepted events whose `event_id` had been seen before (stored once).
    duplicates: u64,
    rejected: Vec<RejectedItem>,
}

/// One event, a `{"events": [...]}` batch, or NDJSON.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventIn {
    event_id: Option<String>,
    user_id: String,
    name: String,
    /// RFC 3339 or epoch milliseconds; default now.
    #[schema(value_type = Option<String>)]
    timestamp: Option<Value>,
    #[schema(value_type = Option<Object>)]
    properties: Option<Map<String, Value>>,
}

/// How the items were sent, for the pointer of the top-level error.
#[derive(Clone, Copy)]
enum Shape {
    Single,
    Batch,
    Lines,
}

fn respond(state: &AppState, outcome: IngestOutcome, shape: Shape) -> Response {
    let rejected = outcome.rejected.len() as u64;
    state
        .metrics
        .ingested("http", "accepted", outcome.accepted - outcome.duplicates);
    state
        .metrics
        .ingested("http", "duplicate", outcome.duplicates);
    state.metrics.ingested("http", "rejected", rejected);
    // Nothing accepted: a 422 that carries both the ingest answer and the
    // standard error object, so either kind of client understands it.
    let error = outcome
        .rejected
        .first()
        .filter(|_| outcome.accepted == 0)
        .map(|r| {
            let mut err =
                ApiError::with_status(StatusCode::UNPROCESSABLE_ENTITY, r.code, r.message.clone());
            err.field = match shape {
                Shape::Single => r.field.clone(),
                Shape::Batch => Some(format!(
                    "/events/{}{}",
                    r.index,
                    r.field.as_deref().unwrap_or("")
                )),
                Shape::Lines => None,
            };
            err.body()["error"].clone()
        });
    let body = IngestResponse {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        rejected: outcome
            .rejected
            .into_iter()
            .map(|r| RejectedItem {
                index: r.index,
                code: r.code.to_string(),
                message: r.message,
                field: r.field,
            })
            .collect(),
    };
    match error {
        Some(error) => {
            let mut json = serde_json::to_value(&body).unwrap_or(Value::Null);
            json["error"] = error;
            (StatusCode::UNPROCESSABLE_ENTITY, Json(json)).into_response()
        }
        None => (StatusCode::OK, Json(body)).into_response(),
    }
}

fn too_many(n: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BatchTooLarge,
        format!("{n} events in one request; at most {MAX_BATCH_EVENTS}"),
    )
}

/// Ingests events: one event object, `{"events": [...]}`, or NDJSON
/// (`Content-Type: application/x-ndjson`). Each item is accepted or rejected
/// on its own; an `event_id` seen before is accepted once.
#[utoipa::path(post, path = "/v1/events", tag = "events", security(("api_key" = [])),
    request_body(content = EventIn, description = "an event, {\"events\": [...]}, or NDJSON"),
    responses((status = 200, body = IngestResponse), (status = 422, description = "every item rejected"),
              (status = 400, description = "malformed JSON"), (status = 413)))]
pub async fn ingest(
    State(state): State<AppState>,
    RawBody(kind, bytes): RawBody,
) -> Result<Response, ApiError> {
    let mut shape = Shape::Batch;
    let items: Vec<Result<Value, ValidationError>> = match kind {
        BodyKind::Ndjson => {
            shape = Shape::Lines;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::new(ErrorCode::MalformedBody, "NDJSON must be UTF-8"))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() > MAX_BATCH_EVENTS {
                return Err(too_many(lines.len()));
            }
            lines
                .into_iter()
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .map_err(|e| ValidationError::new(ErrorCode::MalformedJson, e.to_string()))
                })
                .collect()
        }
        BodyKind::Json => match parse_json::<Value>(&bytes)? {
            Value::Object(mut obj) if obj.contains_key("events") => {
                if let Some(extra) = obj.keys().find(|k| *k != "events") {
                    return Err(ApiError::new(
                        ErrorCode::UnknownField,
                        format!("unknown field '{extra}' next to 'events'"),
                    )
                    .at(format!("/{}", stratify_core::error::pointer_token(extra))));
                }
                match obj.remove("events") {
                    Some(Value::Array(items)) if items.len() > MAX_BATCH_EVENTS => {
                        return Err(too_many(items.len()))
                    }
                    Some(Value::Array(items)) => items.into_iter().map(Ok).collect(),
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::InvalidBody,
                            "'events' must be an array",
                        )
                        .at("/events"))
                    }
                }
            }
            single @ Value::Object(_) => {
                shape = Shape::Single;
                vec![Ok(single)]
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidBody,
                    "send an event object or {\"events\": [...]}",
                ))
            }
        },
    };
    let outcome = state
        .engine
        .ingest
        .ingest_values(items, Source::Http)
        .await?;
    Ok(respond(&state, outcome, shape))
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OrderIn {
    user_id: String,
    amount: f64,
    city: String,
    #[schema(value_type = Option<String>)]
    timestamp: Option<Value>,
    /// Makes re-sending idempotent (stored as event id `order:<order_id>`).
    order_id: Option<String>,
}

/// Records an order: an `order_placed` event with properties `amount` and `city`.
#[utoipa::path(post, path = "/v1/orders", tag = "events", security(("api_key" = [])), request_body = OrderIn,
    responses((status = 200, body = IngestResponse), (status = 422)))]
pub async fn order(
    State(state): State<AppState>,
    RawBody(kind, bytes): RawBody,
) -> Result<Response, ApiError> {
    if kind != BodyKind::Json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json",
        ));
    }
    let order = parse_json::<Value>(&bytes)?;
    let outcome = state.engine.ingest.ingest_order(order).await?;
    Ok(respond(&state, outcome, Shape::Single))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    user_id: Option<String>,
    name: Option<String>,
    /// Inclusive, RFC 3339.
    from: Option<String>,
    /// Exclusive, RFC 3339.
    to: Option<String>,
    /// Only events of users assigned to this experiment, at or after their
    /// first exposure.
    experiment_id: Option<String>,
    /// With `experiment_id`: only that variant's users (key, or index).
    variant: Option<String>,
    /// 1–1000, default 100.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `asc` (default: log order, oldest first) or `desc` (newest first).
    order: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventOut {
    seq: i64,
    event_id: Option<String>,
    user_id: String,
    name: String,
    timestamp: String,
    #[schema(value_type = Option<Object>)]
    properties: Option<Map<String, Value>>,
    received_at: String,
    source: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    events: Vec<EventOut>,
    /// Pass as `cursor` for the next page; null at the end.
    next_cursor: Option<String>,
}

fn event_out(e: StoredEvent) -> EventOut {
    EventOut {
        seq: e.seq,
        event_id: e.event_id,
        user_id: e.user_id,
        name: e.name,
        timestamp: instant(e.timestamp),
        properties: e.properties,
        received_at: instant(e.received_at),
        source: e.source.map(|s| s.as_str()),
    }
}

fn query_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message).at(format!("/{field}"))
}

/// Events in log order, filtered, paged with an opaque cursor.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("api_key" = [])), params(EventFilter),
    responses((status = 200, body = EventPage), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    Params(f): Params<EventFilter>,
) -> Result<Json<EventPage>, ApiError> {
    let experiment = match (f.experiment_id.as_deref(), f.variant) {
        (None, Some(_)) => {
            return Err(query_error(
                "variant",
                "filtering by variant needs experiment_id",
            ))
        }
        (None, None) => None,
        (Some(id), variant) => {
            let e = state.engine.experiments.experiment(id)?;
            let variants = &e.definition.variants;
            // A variant by key, or by its index (the seed's `variant_id`).
            let variant = variant
                .map(|v| {
                    variants
                        .iter()
                        .find(|x| x.key == v)
                        .or_else(|| v.parse::<usize>().ok().and_then(|i| variants.get(i)))
                        .map(|x| x.key.clone())
                        .ok_or_else(|| {
                            query_error(
                                "variant",
                                format!("experiment '{id}' has no variant '{v}'"),
                            )
                        })
                })
                .transpose()?;
            state.engine.serving.flush_assignments().await;
            Some(ExperimentFilter {
                experiment_id: e.record.id.clone(),
                bucket_version: e.definition.bucket_version,
                variant,
            })
        }
    };
    let limit = f.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(query_error("limit", format!("limit is 1–{MAX_PAGE}")));
    }
    let time = |field: &str, v: Option<String>| {
        v.map(|t| parse_rfc3339(&t).map_err(|e| query_error(field, e.message)))
            .transpose()
    };
    let after_seq = f
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| query_error("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    let newest_first = match f.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(query_error("order", "order is asc or desc")),
    };
    let query = EventQuery {
        newest_first,
        user_id: f.user_id,
        name: f.name,
        from: time("from", f.from)?,
        to: time("to", f.to)?,
        after_seq,
        experiment,
        limit: limit + 1,
    };
    let mut events = state
        .engine
        .store()
        .query_events(query)
        .await
        .map_err(stratify_engine::EngineError::from)?;
    let next_cursor = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Json(EventPage {
        events: events.into_iter().map(event_out).collect(),
        next_cursor,
    }))
}
