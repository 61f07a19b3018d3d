use super::instant;
use super::paging::{paginate, Order, PageQuery};
use crate::extract::{parse_json, Body, BodyKind, Params, RawBody};
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_core::rules::sql::{Compiled, Dialect};
use stratify_core::time::parse_rfc3339;
use stratify_core::ErrorCode;
use stratify_engine::keys::Principal;
use stratify_engine::segments::SegmentService;
use stratify_engine::segments::{
    Evaluator, MemberChange, PageRequest, Segment, SegmentInput, SegmentPatch,
};
use utoipa::{IntoParams, ToSchema};

const DEFAULT_LIMIT: u32 = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSegment {
    name: String,
    description: Option<String>,
    /// A rule in any accepted format (tree, behavioral, DuckMart filters, attribute map): a dynamic segment.
    #[schema(value_type = Option<Object>)]
    rules: Option<Value>,
    /// A list of user ids: a static segment.
    user_ids: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSegment {
    name: Option<String>,
    /// A string sets it, `null` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Option<Value>,
    #[schema(value_type = Option<Object>)]
    rules: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentOut {
    id: String,
    name: String,
    description: Option<String>,
    /// `dynamic` or `static`.
    kind: &'static str,
    #[schema(value_type = Option<Object>)]
    rules: Option<Value>,
    version: i64,
    created_at: String,
    updated_at: String,
    created_by: Option<String>,
    updated_by: Option<String>,
    /// The live evaluation of this segment over every user.
    build: Option<BuildOut>,
    /// Current members (live, materialised).
    size: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct BuildOut {
    /// `building` (evaluating every user in the background) or `ready`.
    state: &'static str,
    evaluated: u64,
    total: u64,
    started_at: String,
    finished_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentList {
    segments: Vec<SegmentOut>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

fn out(s: &Segment, state: &AppState) -> SegmentOut {
    let r = &s.record;
    let build = state.engine.live().build_status(&r.id);
    SegmentOut {
        id: r.id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        kind: if s.rule.is_some() {
            "dynamic"
        } else {
            "static"
        },
        rules: r.rules.clone(),
        version: r.version,
        created_at: instant(r.created_at),
        updated_at: instant(r.updated_at),
        created_by: r.created_by.clone(),
        updated_by: r.updated_by.clone(),
        size: state
            .engine
            .cluster
            .cluster_size(&r.id)
            .or(build.as_ref().map(|b| b.size)),
        build: build.map(|b| BuildOut {
            state: b.state,
            evaluated: b.evaluated,
            total: b.total,
            started_at: instant(b.started_at),
            finished_at: b.finished_at.map(instant),
        }),
    }
}

fn as_of(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|t| {
            parse_rfc3339(t)
                .map_err(|e| ApiError::new(ErrorCode::InvalidAsOf, e.message).at("/as_of"))
        })
        .transpose()
}

/// Creates a dynamic (rules) or static (user_ids) segment, version 1.
#[utoipa::path(post, path = "/v1/segments", tag = "segments", security(("api_key" = [])), request_body = CreateSegment,
    responses((status = 201, body = SegmentOut), (status = 409, description = "name taken"), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(req): Body<CreateSegment>,
) -> Result<(StatusCode, Json<SegmentOut>), ApiError> {
    let input = SegmentInput {
        name: req.name,
        description: req.description,
        rules: req.rules,
        user_ids: req.user_ids,
    };
    let segment = state
        .engine
        .segments
        .create_segment(input, &who.key_id)
        .await?;
    Ok((StatusCode::CREATED, Json(out(&segment, &state))))
}

#[utoipa::path(get, path = "/v1/segments", tag = "segments", security(("api_key" = [])), params(PageQuery), responses((status = 200, body = SegmentList)))]
pub async fn list(
    State(state): State<AppState>,
    Params(q): Params<PageQuery>,
) -> Result<Json<SegmentList>, ApiError> {
    let all = state
        .engine
        .segments
        .list_segments()
        .iter()
        .map(|s| out(s, &state))
        .collect();
    let (segments, next_cursor) = paginate(
        all,
        |s| format!("{}{}", s.created_at, s.id),
        Order::Ascending,
        &q,
    )?;
    Ok(Json(SegmentList {
        segments,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/segments/{id}", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 200, body = SegmentOut), (status = 404)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SegmentOut>, ApiError> {
    Ok(Json(out(
        state.engine.segments.segment(&id)?.as_ref(),
        &state,
    )))
}

/// Replaces name, description and rules: a new version.
#[utoipa::path(put, path = "/v1/segments/{id}", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    request_body = CreateSegment, responses((status = 200, body = SegmentOut), (status = 404), (status = 422)))]
pub async fn replace(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<CreateSegment>,
) -> Result<Json<SegmentOut>, ApiError> {
    if req.user_ids.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidSegment,
            "change members with /v1/segments/{id}/members",
        )
        .at("/user_ids"));
    }
    let patch = SegmentPatch {
        name: Some(req.name),
        description: Some(req.description),
        rules: req.rules,
    };
    let segment = state
        .engine
        .segments
        .update_segment(&id, patch, &who.key_id)
        .await?;
    Ok(Json(out(&segment, &state)))
}

/// Changes some of name, description and rules: a new version.
#[utoipa::path(patch, path = "/v1/segments/{id}", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    request_body = PatchSegment, responses((status = 200, body = SegmentOut), (status = 404), (status = 422)))]
pub async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<PatchSegment>,
) -> Result<Json<SegmentOut>, ApiError> {
    let description = match req.description {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidDescription,
                "description is a string or null",
            )
            .at("/description"))
        }
    };
    let patch = SegmentPatch {
        name: req.name,
        description,
        rules: req.rules,
    };
    let segment = state
        .engine
        .segments
        .update_segment(&id, patch, &who.key_id)
        .await?;
    Ok(Json(out(&segment, &state)))
}

#[utoipa::path(delete, path = "/v1/segments/{id}", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404), (status = 409, description = "another segment refers to it")))]
pub async fn remove(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    segments.delete_segment(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct VersionOut {
    version: i64,
    name: String,
    description: Option<String>,
    #[schema(value_type = Option<Object>)]
    rules: Option<Value>,
    created_at: String,
    /// The id of the API key that made this version.
    created_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    versions: Vec<VersionOut>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

/// Every version, newest first, with when and by which key it was made.
#[utoipa::path(get, path = "/v1/segments/{id}/versions", tag = "segments", security(("api_key" = [])), params(("id" = String, Path), PageQuery),
    responses((status = 200, body = VersionList), (status = 404)))]
pub async fn versions(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
    Params(q): Params<PageQuery>,
) -> Result<Json<VersionList>, ApiError> {
    let versions = segments
        .segment_versions(&id)
        .await?
        .into_iter()
        .map(|v| VersionOut {
            version: v.version,
            name: v.name,
            description: v.description,
            rules: v.rules,
            created_at: instant(v.created_at),
            created_by: v.created_by,
        })
        .collect();
    let (versions, next_cursor) = paginate(
        versions,
        |v| format!("{:020}", v.version),
        Order::Descending,
        &q,
    )?;
    Ok(Json(VersionList {
        versions,
        next_cursor,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MembersQuery {
    /// 1–10000, default 1000.
    limit: Option<u32>,
    cursor: Option<String>,
    /// Evaluate as if now were this instant (RFC 3339).
    as_of: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MembersPage {
    user_ids: Vec<String>,
    total_count: u64,
    next_cursor: Option<String>,
}

/// The segment's members, in user id order, paged.
#[utoipa::path(get, path = "/v1/segments/{id}/members", tag = "segments", security(("api_key" = [])),
    params(("id" = String, Path), MembersQuery), responses((status = 200, body = MembersPage), (status = 404)))]
pub async fn members(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
    Params(q): Params<MembersQuery>,
) -> Result<Json<MembersPage>, ApiError> {
    let page = segments
        .segment_members(
            &id,
            q.limit.unwrap_or(DEFAULT_LIMIT),
            q.cursor.as_deref(),
            as_of(q.as_of.as_deref())?,
        )
        .await?;
    Ok(Json(MembersPage {
        user_ids: page.user_ids,
        total_count: page.total_count,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberIds {
    user_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MembersChanged {
    /// How many memberships changed.
    changed: u64,
}

/// Adds users to a static segment (unknown users are created).
#[utoipa::path(post, path = "/v1/segments/{id}/members", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    request_body = MemberIds, responses((status = 200, body = MembersChanged), (status = 409, description = "dynamic segment")))]
pub async fn add_members(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
    Body(req): Body<MemberIds>,
) -> Result<Json<MembersChanged>, ApiError> {
    Ok(Json(MembersChanged {
        changed: segments
            .change_members(&id, MemberChange::Add, req.user_ids)
            .await?,
    }))
}

/// Removes users from a static segment.
#[utoipa::path(delete, path = "/v1/segments/{id}/members", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    request_body = MemberIds, responses((status = 200, body = MembersChanged), (status = 409, description = "dynamic segment")))]
pub async fn remove_members(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
    Body(req): Body<MemberIds>,
) -> Result<Json<MembersChanged>, ApiError> {
    Ok(Json(MembersChanged {
        changed: segments
            .change_members(&id, MemberChange::Remove, req.user_ids)
            .await?,
    }))
}

/// Uploads a static segment's whole member list, replacing it: `text/plain`
/// or `text/csv`, one user id per line (a first line `user_id` is a header).
#[utoipa::path(put, path = "/v1/segments/{id}/members", tag = "segments", security(("api_key" = [])), params(("id" = String, Path)),
    request_body(content = String, content_type = "text/plain"), responses((status = 200, body = MembersChanged)))]
pub async fn upload_members(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<MembersChanged>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(ErrorCode::MalformedBody, "the upload must be UTF-8"))?;
    let ids: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_matches('"').to_owned())
        .enumerate()
        .filter(|(i, l)| !(l.is_empty() || (*i == 0 && l == "user_id")))
        .map(|(_, l)| l)
        .collect();
    Ok(Json(MembersChanged {
        changed: segments
            .change_members(&id, MemberChange::Replace, ids)
            .await?,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct QueryResult {
    user_ids: Vec<String>,
    total_count: u64,
    /// The filters as applied (the DuckMart payload's filters, or the rule).
    #[schema(value_type = Object)]
    filters_applied: Value,
    next_cursor: Option<String>,
    /// With `include_sql`: `{sql, params}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    sql: Option<Compiled>,
}

fn bad_query(field: &str, message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message).at(format!("/{field}"))
}

/// An ad-hoc population query: `{"rules": <rule>}` or the DuckMart payload at
/// top level (`user_filters`, `event_filters`, `logic_operator`), plus the
/// options `limit`, `cursor`, `as_of`, `include_sql` and `evaluator`
/// (`memory`, the default, or `sql`: the same answer from the compiled SQL).
#[utoipa::path(post, path = "/v1/segments/query", tag = "segments", security(("api_key" = [])),
    request_body(content = Object), responses((status = 200, body = QueryResult), (status = 422)))]
pub async fn query(
    State(segments): State<Arc<SegmentService>>,
    RawBody(kind, bytes): RawBody,
) -> Result<Json<QueryResult>, ApiError> {
    if kind != BodyKind::Json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json",
        ));
    }
    let Value::Object(mut body) = parse_json::<Value>(&bytes)? else {
        return Err(ApiError::new(ErrorCode::InvalidBody, "send a JSON object"));
    };
    let opts = QueryOptions::take(&mut body)?;
    let duckmart = !body.contains_key("rules");
    let (rule, filters_applied) = if duckmart {
        let mut applied = Map::new();
        applied.insert(
            "user_filters".into(),
            body.get("user_filters").cloned().unwrap_or(json!([])),
        );
        applied.insert(
            "event_filters".into(),
            body.get("event_filters").cloned().unwrap_or(json!([])),
        );
        applied.insert(
            "logic_operator".into(),
            body.get("logic_operator").cloned().unwrap_or(json!("AND")),
        );
        (Value::Object(body), Value::Object(applied))
    } else {
        if let Some(k) = body.keys().find(|k| *k != "rules") {
            return Err(
                ApiError::new(ErrorCode::UnknownField, format!("unknown field '{k}'"))
                    .at(format!("/{}", stratify_core::error::pointer_token(k))),
            );
        }
        let rule = body.remove("rules").unwrap_or(Value::Null);
        (rule.clone(), rule)
    };
    let page = PageRequest {
        limit: opts.limit,
        cursor: opts.cursor.as_deref(),
        as_of: as_of(opts.as_of.as_deref())?,
        include_sql: opts.include_sql,
        evaluator: opts.evaluator,
    };
    let population = segments
        .query_population(&rule, page)
        .await
        .map_err(|e| match e {
            // The DuckMart filters sit at the top of the body, not under /rules.
            stratify_engine::EngineError::Invalid(mut v) if duckmart => {
                v.field = v
                    .field
                    .map(|f| f.strip_prefix("/rules").map(str::to_owned).unwrap_or(f));
                ApiError::from(v)
            }
            other => other.into(),
        })?;
    Ok(Json(QueryResult {
        user_ids: population.user_ids,
        total_count: population.total_count,
        filters_applied,
        next_cursor: population.next_cursor,
        sql: population.sql,
    }))
}

/// The options of `POST /v1/segments/query`, removed from the body.
struct QueryOptions {
    limit: u32,
    cursor: Option<String>,
    as_of: Option<String>,
    include_sql: bool,
    evaluator: Evaluator,
}

impl QueryOptions {
    fn take(body: &mut Map<String, Value>) -> Result<Self, ApiError> {
        let mut text = |key: &str| match body.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad_query(key, "must be a string")),
        };
        let (cursor, as_of, evaluator) = (text("cursor")?, text("as_of")?, text("evaluator")?);
        let evaluator = match evaluator.as_deref() {
            None | Some("memory") => Evaluator::Memory,
            Some("sql") => Evaluator::Sql,
            Some(_) => return Err(bad_query("evaluator", "evaluator is memory or sql")),
        };
        let limit = match body.remove("limit") {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad_query("limit", "limit is a whole number"))?,
        };
        let include_sql = match body.remove("include_sql") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(bad_query("include_sql", "include_sql is a boolean")),
        };
        Ok(Self {
            limit,
            cursor,
            as_of,
            include_sql,
            evaluator,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SqlQuery {
    /// `sqlite` (default) or `postgres`.
    dialect: Option<String>,
    as_of: Option<String>,
}

/// The parameterised SQL a segment's population runs as.
#[utoipa::path(get, path = "/v1/segments/{id}/sql", tag = "segments", security(("api_key" = [])),
    params(("id" = String, Path), SqlQuery), responses((status = 200, body = Object), (status = 404)))]
pub async fn sql(
    State(segments): State<Arc<SegmentService>>,
    Path(id): Path<String>,
    Params(q): Params<SqlQuery>,
) -> Result<Json<Value>, ApiError> {
    let name = q.dialect.as_deref().unwrap_or("sqlite");
    let dialect = Dialect::parse(name)
        .ok_or_else(|| bad_query("dialect", "dialect is sqlite or postgres"))?;
    let compiled = segments.segment_sql(&id, dialect, as_of(q.as_of.as_deref())?)?;
    Ok(Json(
        json!({"dialect": name, "sql": compiled.sql, "params": compiled.params}),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    as_of: Option<String>,
}

/// Why a user is in or out of a segment: every node with its result and the values it saw.
#[utoipa::path(get, path = "/v1/users/{id}/segments/{segment_id}/explain", tag = "segments", security(("api_key" = [])),
    params(("id" = String, Path), ("segment_id" = String, Path), ExplainQuery), responses((status = 200, body = Object), (status = 404)))]
pub async fn explain(
    State(segments): State<Arc<SegmentService>>,
    Path((user, segment)): Path<(String, String)>,
    Params(q): Params<ExplainQuery>,
) -> Result<Json<Value>, ApiError> {
    let user_id = UserId::parse(user).map_err(|e| ApiError::from(e.at("/user_id")))?;
    let (in_segment, tree) = segments
        .explain(&user_id, &segment, as_of(q.as_of.as_deref())?)
        .await?;
    Ok(Json(
        json!({"user_id": user_id.as_str(), "segment_id": segment, "in_segment": in_segment, "tree": tree}),
    ))
}

/// Ready payloads for `POST /v1/segments/query`, for the common scenarios.
#[utoipa::path(get, path = "/v1/segments/examples", tag = "segments", security(("api_key" = [])), responses((status = 200, body = Object)))]
pub async fn examples() -> Json<Value> {
    Json(examples_json())
}

fn examples_json() -> Value {
    json!({"examples": [
        {"name": "age_25_34", "description": "Users aged 25–34 (DuckMart query 1)",
         "payload": {"user_filters": [{"field": "age", "operator": "gte", "value": 25}, {"field": "age", "operator": "lte", "value": 34}], "logic_operator": "AND"}},
        {"name": "california_login", "description": "Users in California who logged in at least once (DuckMart query 2)",
         "payload": {"user_filters": [{"field": "location", "operator": "eq", "value": "California"}],
                     "event_filters": [{"event_name": "LOGIN", "operator": "gte", "count": 1}], "logic_operator": "AND"}},
        {"name": "premium_recent_purchase", "description": "Premium users with a purchase in the last 30 days",
         "payload": {"rules": {"operator": "AND", "conditions": [
             {"field": "subscription_plan", "op": "eq", "value": "premium"},
             {"event": "PURCHASE_MADE", "within": "30d", "op": "gte", "value": 1}]}}},
        {"name": "cart_abandonment", "description": "Added to cart in the last 7 days but never purchased",
         "payload": {"rules": {"operator": "AND", "conditions": [
             {"event": "ADDED_TO_CART", "within": "7d", "op": "gte", "value": 1},
             {"event": "PURCHASE_MADE", "op": "eq", "value": 0}]}}},
        {"name": "mobile_or_tablet", "description": "Users on mobile or tablet devices",
         "payload": {"rules": {"field": "device_type", "op": "in", "value": ["mobile", "tablet"]}}},
        {"name": "desktop_premium", "description": "Attribute map: premium users on desktop",
         "payload": {"rules": {"subscription_plan": "premium", "device_type": "desktop"}}},
        {"name": "power_users", "description": "Food delivery: 25 or more orders in the last 23 days",
         "payload": {"rules": {"field": "order_count_last_23_days", "op": "gte", "value": 25}}},
        {"name": "dormant_users", "description": "Food delivery: no order for 14 days",
         "payload": {"rules": {"field": "seconds_since_last_order", "op": "gte", "value": 1_209_600}}},
        {"name": "high_value_recent", "description": "13+ orders in 15 days and lifetime spend over 1000",
         "payload": {"rules": {"operator": "AND", "conditions": [
             {"field": "order_count_last_15_days", "op": "gte", "value": 13}, {"field": "ltv", "op": "gt", "value": 1000}]}}}
    ]})
}
