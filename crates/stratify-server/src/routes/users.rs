use super::instant;
use super::paging::{paginate, Order, PageQuery};
use crate::extract::{Body, Params};
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_engine::experiments::assign::ServingService;
use stratify_engine::experiments::ExperimentService;
use stratify_engine::model::{UserRecord, WriteMode};
use stratify_engine::users::UserService;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    user_id: String,
    /// Attribute values keep their JSON types.
    #[serde(default)]
    #[schema(value_type = Object)]
    attributes: Map<String, Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserAttributes {
    /// For PATCH, `null` removes an attribute.
    #[schema(value_type = Object)]
    attributes: Map<String, Value>,
}

#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    user_id: String,
    #[schema(value_type = Object)]
    attributes: Map<String, Value>,
    /// Built-in fields over `order_placed` events: total_orders, ltv, is_new_user,
    /// seconds_since_last_order, city.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    computed: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<Vec<String>>,
    created_at: String,
    updated_at: String,
}

impl UserResponse {
    fn from_record(r: UserRecord) -> Self {
        Self {
            user_id: r.user_id,
            attributes: r.attributes,
            computed: None,
            segments: None,
            created_at: instant(r.created_at),
            updated_at: instant(r.updated_at),
        }
    }
}

pub(crate) fn user_id(raw: String, pointer: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::from(e.at(pointer.to_owned())))
}

/// Creates a user (409 if the id exists).
#[utoipa::path(post, path = "/v1/users", tag = "users", security(("api_key" = [])), request_body = CreateUser,
    responses((status = 201, body = UserResponse), (status = 409, description = "user exists"), (status = 422)))]
pub async fn create(
    State(users): State<Arc<UserService>>,
    Body(req): Body<CreateUser>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let id = user_id(req.user_id, "/user_id")?;
    let record = users
        .write_user(id, req.attributes, WriteMode::Create)
        .await?;
    Ok((StatusCode::CREATED, Json(UserResponse::from_record(record))))
}

/// A user with attributes, computed fields and segments.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 200, body = UserResponse), (status = 404)))]
pub async fn get_one(
    State(users): State<Arc<UserService>>,
    Path(id): Path<String>,
) -> Result<Json<UserResponse>, ApiError> {
    let view = users.user(&user_id(id, "/user_id")?).await?;
    let mut out = UserResponse::from_record(view.record);
    out.computed = Some(view.computed);
    out.segments = Some(view.segments);
    Ok(Json(out))
}

/// Replaces all attributes (creates the user if unknown).
#[utoipa::path(put, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path)),
    request_body = UserAttributes, responses((status = 200, body = UserResponse), (status = 422)))]
pub async fn replace(
    State(users): State<Arc<UserService>>,
    Path(id): Path<String>,
    Body(req): Body<UserAttributes>,
) -> Result<Json<UserResponse>, ApiError> {
    write(&users, id, req.attributes, WriteMode::Replace).await
}

/// Merges attributes into an existing user; `null` removes one.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path)),
    request_body = UserAttributes, responses((status = 200, body = UserResponse), (status = 404), (status = 422)))]
pub async fn merge(
    State(users): State<Arc<UserService>>,
    Path(id): Path<String>,
    Body(req): Body<UserAttributes>,
) -> Result<Json<UserResponse>, ApiError> {
    write(&users, id, req.attributes, WriteMode::Merge).await
}

async fn write(
    users: &UserService,
    id: String,
    attributes: Map<String, Value>,
    mode: WriteMode,
) -> Result<Json<UserResponse>, ApiError> {
    let record = users
        .write_user(user_id(id, "/user_id")?, attributes, mode)
        .await?;
    Ok(Json(UserResponse::from_record(record)))
}

/// Erases a user and all their events.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn erase(
    State(users): State<Arc<UserService>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    users.delete_user(&user_id(id, "/user_id")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct AssignmentOut {
    experiment_id: String,
    /// The experiment's key and name (null once the experiment is gone).
    key: Option<String>,
    name: Option<String>,
    status: Option<String>,
    /// The variant's key.
    variant: String,
    /// The first serving under this bucket version: the exposure.
    assigned_at: String,
    bucket_version: u32,
}

#[derive(Serialize, ToSchema)]
pub struct AssignmentList {
    user_id: String,
    assignments: Vec<AssignmentOut>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

/// The user's stored experiment assignments, newest first. Read-only: unlike
/// `GET /v1/users/{id}/experiments` it serves nothing and records no
/// exposure, so looking at a user never changes an experiment's results.
#[utoipa::path(get, path = "/v1/users/{id}/assignments", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path), PageQuery), responses((status = 200, body = AssignmentList), (status = 422)))]
pub async fn assignments(
    State(experiments): State<Arc<ExperimentService>>,
    State(serving): State<Arc<ServingService>>,
    Path(id): Path<String>,
    Params(q): Params<PageQuery>,
) -> Result<Json<AssignmentList>, ApiError> {
    let id = user_id(id, "/user_id")?;
    let rows = serving.user_assignments(&id).await?;
    let registry = experiments.experiment_registry();
    let assignments = rows
        .into_iter()
        .map(|r| {
            let experiment = registry.by_id.get(&r.experiment_id);
            AssignmentOut {
                key: experiment.map(|e| e.record.key.clone()),
                name: experiment.map(|e| e.record.name.clone()),
                status: experiment.map(|e| e.record.status.clone()),
                experiment_id: r.experiment_id,
                variant: r.variant,
                assigned_at: instant(r.assigned_at),
                bucket_version: r.bucket_version,
            }
        })
        .collect();
    let (assignments, next_cursor) = paginate(
        assignments,
        |a| format!("{}{}", a.assigned_at, a.experiment_id),
        Order::Descending,
        &q,
    )?;
    Ok(Json(AssignmentList {
        user_id: id.as_str().to_owned(),
        assignments,
        next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyIn {
    /// The id the visitor was known by before signing in (a device or
    /// cookie id). From now on it resolves to `user_id`.
    anonymous_id: String,
    /// The known user's id (created if unknown).
    user_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct IdentifyOut {
    /// The person the visitor is now (the user `user_id` resolved to).
    user_id: String,
    anonymous_id: String,
    /// False when the visitor was merged into this user before (a retry).
    merged: bool,
    /// The visitor's events that moved to the user.
    events_moved: u64,
    /// Visitor events whose `event_id` the user already had (one event sent
    /// under both ids): kept once.
    duplicates_dropped: u64,
    /// The visitor's sticky assignments that became the user's (for
    /// experiments the user had no assignment in).
    assignments_moved: u64,
    /// Every id that resolves to the user now, sorted.
    aliases: Vec<String>,
}

/// Identity stitching: merges an anonymous visitor into a known user. The
/// visitor's events, attributes (the user's win on conflict), sticky
/// assignments (the user's own win, from the earlier exposure) and static
/// memberships become the user's, segments are re-evaluated at once (change
/// cause `identify`), and `anonymous_id` becomes an alias: every later read
/// and write on it is the user's. Idempotent; 409 `identity_conflict` when
/// `anonymous_id` is already merged into another user; 422 when both ids
/// are the same.
#[utoipa::path(post, path = "/v1/identify", tag = "users", security(("api_key" = [])), request_body = IdentifyIn,
    responses((status = 200, body = IdentifyOut), (status = 409, description = "identity_conflict"), (status = 422)))]
pub async fn identify(
    State(identity): State<Arc<stratify_engine::identity::IdentityService>>,
    Body(req): Body<IdentifyIn>,
) -> Result<Json<IdentifyOut>, ApiError> {
    let anonymous = user_id(req.anonymous_id, "/anonymous_id")?;
    let known = user_id(req.user_id, "/user_id")?;
    let out = identity.identify(anonymous, known).await?;
    Ok(Json(IdentifyOut {
        user_id: out.user_id,
        anonymous_id: out.anonymous_id,
        merged: out.merged,
        events_moved: out.events_moved,
        duplicates_dropped: out.duplicates_dropped,
        assignments_moved: out.assignments_moved,
        aliases: out.aliases,
    }))
}
