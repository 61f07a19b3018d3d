//! Experiments: create, read, change, and move through the lifecycle.

use super::instant;
use crate::extract::Body;
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use stratify_engine::experiments::{Action, Experiment, ExperimentInput};
use stratify_engine::keys::Principal;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct TransitionOut {
    from: String,
    to: String,
    at: String,
    /// The API key that made the move.
    by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ExperimentOut {
    id: String,
    key: String,
    name: String,
    description: Option<String>,
    /// draft, running, paused, completed or archived.
    status: String,
    /// `[{key, name, weight (percent), is_control, payload}]`.
    #[schema(value_type = Vec<Object>)]
    variants: Value,
    segment_ids: Vec<String>,
    #[schema(value_type = Option<Object>)]
    rules: Option<Value>,
    coverage: f64,
    seed: String,
    hash_version: u32,
    hash_attribute: String,
    #[schema(value_type = Option<Object>)]
    namespace: Option<Value>,
    sticky: bool,
    start_at: Option<String>,
    end_at: Option<String>,
    version: i64,
    created_at: String,
    updated_at: String,
    created_by: Option<String>,
    updated_by: Option<String>,
    /// Lifecycle moves, oldest first (on single reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    transitions: Option<Vec<TransitionOut>>,
}

#[derive(Serialize, ToSchema)]
pub struct ExperimentList {
    experiments: Vec<ExperimentOut>,
}

fn out(e: &Experiment) -> ExperimentOut {
    let (r, d) = (&e.record, &e.definition);
    ExperimentOut {
        id: r.id.clone(),
        key: r.key.clone(),
        name: r.name.clone(),
        description: d.description.clone(),
        status: r.status.clone(),
        variants: serde_json::to_value(&d.variants).unwrap_or(Value::Null),
        segment_ids: d.segment_ids.clone(),
        rules: d.rules.clone(),
        coverage: d.coverage,
        seed: d.seed.clone(),
        hash_version: d.hash_version,
        hash_attribute: d.hash_attribute.clone(),
        namespace: d
            .namespace
            .as_ref()
            .and_then(|n| serde_json::to_value(n).ok()),
        sticky: d.sticky,
        start_at: d.start_at.map(instant),
        end_at: d.end_at.map(instant),
        version: r.version,
        created_at: instant(r.created_at),
        updated_at: instant(r.updated_at),
        created_by: r.created_by.clone(),
        updated_by: r.updated_by.clone(),
        transitions: None,
    }
}

async fn with_transitions(state: &AppState, e: &Experiment) -> Result<ExperimentOut, ApiError> {
    let mut o = out(e);
    o.transitions = Some(
        state
            .engine
            .experiment_transitions(&e.record.id)
            .await?
            .into_iter()
            .map(|t| TransitionOut {
                from: t.from,
                to: t.to,
                at: instant(t.at),
                by: t.by,
            })
            .collect(),
    );
    Ok(o)
}

/// Creates an experiment (status `draft`). Weights are percentages summing to 100.
#[utoipa::path(post, path = "/v1/experiments", tag = "experiments", security(("api_key" = [])),
    request_body(content = Object, description = "{key, name, description?, variants: [{key, name?, weight, is_control?, payload?}], segment_ids?, rules?, coverage?, seed?, hash_version?, hash_attribute?, namespace?: {id, start, end}, sticky?, start_at?, end_at?}"),
    responses((status = 201, body = ExperimentOut), (status = 409, description = "key taken"), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(req): Body<ExperimentInput>,
) -> Result<(StatusCode, Json<ExperimentOut>), ApiError> {
    let e = state.engine.create_experiment(req, &who.key_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(with_transitions(&state, &e).await?),
    ))
}

#[utoipa::path(get, path = "/v1/experiments", tag = "experiments", security(("api_key" = [])),
    responses((status = 200, body = ExperimentList)))]
pub async fn list(State(state): State<AppState>) -> Json<ExperimentList> {
    Json(ExperimentList {
        experiments: state
            .engine
            .list_experiments()
            .iter()
            .map(|e| out(e))
            .collect(),
    })
}

#[utoipa::path(get, path = "/v1/experiments/{id}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ExperimentOut), (status = 404)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let e = state.engine.experiment(&id)?;
    Ok(Json(with_transitions(&state, &e).await?))
}

/// Changes some fields (not the key): a new version. Works in any status.
#[utoipa::path(patch, path = "/v1/experiments/{id}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), request_body(content = Object, description = "any fields of the create body but key"),
    responses((status = 200, body = ExperimentOut), (status = 404), (status = 422)))]
pub async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<ExperimentInput>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let e = state
        .engine
        .update_experiment(&id, req, &who.key_id)
        .await?;
    Ok(Json(with_transitions(&state, &e).await?))
}

/// Lifecycle: `start` (draft → running), `pause`, `resume`, `complete`
/// (running or paused → completed), `archive` (draft or completed →
/// archived). Any other move is 409 `invalid_transition`.
#[utoipa::path(post, path = "/v1/experiments/{id}/{action}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path), ("action" = String, Path, description = "start, pause, resume, complete or archive")),
    responses((status = 200, body = ExperimentOut), (status = 404), (status = 409)))]
pub async fn transition(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let action =
        Action::parse(&action).ok_or_else(|| ApiError::for_status(StatusCode::NOT_FOUND))?;
    let e = state
        .engine
        .transition_experiment(&id, action, &who.key_id)
        .await?;
    Ok(Json(with_transitions(&state, &e).await?))
}
