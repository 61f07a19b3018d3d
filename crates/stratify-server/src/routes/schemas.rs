use super::instant;
use super::paging::{paginate, Order, PageQuery};
use crate::extract::Body;
use crate::extract::Params;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use stratify_core::schema::{AttributeSchema, EventTypeSchema};
use stratify_core::ErrorCode;
use stratify_engine::model::EventTypeRecord;
use stratify_engine::schemas::SchemaService;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct EventTypeOut {
    name: String,
    description: Option<String>,
    /// `{"amount": {"type": "number", "required": true}, ...}`; types: string,
    /// number, boolean, date, timestamp, email.
    #[schema(value_type = Object)]
    properties: serde_json::Value,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeList {
    event_types: Vec<EventTypeOut>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

fn out(r: EventTypeRecord) -> EventTypeOut {
    EventTypeOut {
        properties: serde_json::to_value(&r.schema.properties).unwrap_or_default(),
        name: r.schema.name,
        description: r.schema.description,
        created_at: instant(r.created_at),
        updated_at: instant(r.updated_at),
    }
}

/// Declares an event type; events of that name are then validated against it.
#[utoipa::path(post, path = "/v1/event-types", tag = "schemas", security(("api_key" = [])),
    request_body(content = Object, description = "{name, description?, properties: {prop: {type, required?}}}"),
    responses((status = 201, body = EventTypeOut), (status = 409, description = "already declared"), (status = 422)))]
pub async fn create_event_type(
    State(schemas): State<Arc<SchemaService>>,
    Body(schema): Body<EventTypeSchema>,
) -> Result<(StatusCode, Json<EventTypeOut>), ApiError> {
    if schemas.event_type(&schema.name).is_ok() {
        return Err(ApiError::new(
            ErrorCode::EventTypeExists,
            format!(
                "event type '{}' is declared; PUT /v1/event-types/{{name}} replaces it",
                schema.name
            ),
        )
        .at("/name"));
    }
    let (record, _) = schemas.put_event_type(schema).await?;
    Ok((StatusCode::CREATED, Json(out(record))))
}

/// Replaces (or declares) the event type `name`.
#[utoipa::path(put, path = "/v1/event-types/{name}", tag = "schemas", security(("api_key" = [])), params(("name" = String, Path)),
    request_body(content = Object), responses((status = 200, body = EventTypeOut), (status = 422)))]
pub async fn replace_event_type(
    State(schemas): State<Arc<SchemaService>>,
    Path(name): Path<String>,
    Body(schema): Body<EventTypeSchema>,
) -> Result<Json<EventTypeOut>, ApiError> {
    if schema.name != name {
        return Err(ApiError::new(
            ErrorCode::NameMismatch,
            "the body's name differs from the path",
        )
        .at("/name"));
    }
    Ok(Json(out(schemas.put_event_type(schema).await?.0)))
}

#[utoipa::path(get, path = "/v1/event-types", tag = "schemas", security(("api_key" = [])), params(PageQuery), responses((status = 200, body = EventTypeList)))]
pub async fn list_event_types(
    State(schemas): State<Arc<SchemaService>>,
    Params(q): Params<PageQuery>,
) -> Result<Json<EventTypeList>, ApiError> {
    let all = schemas.event_types().into_iter().map(out).collect();
    let (event_types, next_cursor) = paginate(all, |t| t.name.clone(), Order::Ascending, &q)?;
    Ok(Json(EventTypeList {
        event_types,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/event-types/{name}", tag = "schemas", security(("api_key" = [])), params(("name" = String, Path)),
    responses((status = 200, body = EventTypeOut), (status = 404)))]
pub async fn get_event_type(
    State(schemas): State<Arc<SchemaService>>,
    Path(name): Path<String>,
) -> Result<Json<EventTypeOut>, ApiError> {
    Ok(Json(out(schemas.event_type(&name)?)))
}

#[utoipa::path(delete, path = "/v1/event-types/{name}", tag = "schemas", security(("api_key" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_event_type(
    State(schemas): State<Arc<SchemaService>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    schemas.delete_event_type(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The attribute schema: `{"attributes": {"age": {"type": "number"}, ...}}`.
#[utoipa::path(get, path = "/v1/attributes/schema", tag = "schemas", security(("api_key" = [])),
    responses((status = 200, body = Object)))]
pub async fn get_attribute_schema(
    State(schemas): State<Arc<SchemaService>>,
) -> Json<AttributeSchema> {
    Json(AttributeSchema::clone(&schemas.attribute_schema()))
}

/// Replaces the attribute schema; later user writes are validated against it.
#[utoipa::path(put, path = "/v1/attributes/schema", tag = "schemas", security(("api_key" = [])),
    request_body(content = Object), responses((status = 200, body = Object), (status = 422)))]
pub async fn put_attribute_schema(
    State(schemas): State<Arc<SchemaService>>,
    Body(schema): Body<AttributeSchema>,
) -> Result<Json<AttributeSchema>, ApiError> {
    Ok(Json(schemas.put_attribute_schema(schema).await?))
}
