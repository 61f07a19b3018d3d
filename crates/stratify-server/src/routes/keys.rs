use super::instant;
use super::paging::{paginate, Order, PageQuery};
use crate::extract::Body;
use crate::extract::Params;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stratify_core::access::Role;
use stratify_engine::keys::KeyInfo;
use stratify_engine::keys::KeyService;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    /// admin, ops, editor, viewer, ingest or sdk.
    #[schema(value_type = String, example = "viewer")]
    role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    id: String,
    /// The secret: shown only in this response, stored hashed.
    key: String,
    name: String,
    #[schema(value_type = String)]
    role: Role,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    name: String,
    #[schema(value_type = String)]
    role: Role,
    created_at: String,
    revoked_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    api_keys: Vec<KeyView>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

fn view(k: KeyInfo) -> KeyView {
    KeyView {
        id: k.id,
        name: k.name,
        role: k.role,
        created_at: instant(k.created_at),
        revoked_at: k.revoked_at.map(instant),
    }
}

/// Creates an API key. The secret is in this response only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "keys", security(("api_key" = [])), request_body = CreateKey,
    responses((status = 201, body = KeyCreated), (status = 422, description = "invalid name or role")))]
pub async fn create(
    State(keys): State<Arc<KeyService>>,
    Body(req): Body<CreateKey>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let (info, key) = keys.create_api_key(&req.name, req.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            id: info.id,
            key,
            name: info.name,
            role: info.role,
            created_at: instant(info.created_at),
        }),
    ))
}

/// Lists keys, revoked ones included, without secrets.
#[utoipa::path(get, path = "/v1/api-keys", tag = "keys", security(("api_key" = [])), params(PageQuery),
    responses((status = 200, body = KeyList)))]
pub async fn list(
    State(keys): State<Arc<KeyService>>,
    Params(q): Params<PageQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let all = keys.list_api_keys().await?.into_iter().map(view).collect();
    let (api_keys, next_cursor) = paginate(
        all,
        |k| format!("{}{}", k.created_at, k.id),
        Order::Ascending,
        &q,
    )?;
    Ok(Json(KeyList {
        api_keys,
        next_cursor,
    }))
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404)))]
pub async fn revoke(
    State(keys): State<Arc<KeyService>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    keys.revoke_api_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
