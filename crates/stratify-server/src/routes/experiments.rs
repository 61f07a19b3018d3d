//! Experiments: create, read, change, and move through the lifecycle.

use super::instant;
use super::paging::{paginate, Order, PageQuery};
use crate::extract::Params;
use crate::extract::{parse_json, Body, RawBody};
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use stratify_engine::experiments::ExperimentService;
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
    /// Whether a stuck user who leaves the targeting keeps the assignment.
    keep_on_exit: bool,
    /// The default analysis of its results: `{engine, sequential: {tuning} | null}`.
    #[schema(value_type = Object)]
    analysis: stratify_core::experiment::AnalysisDefaults,
    /// Bumped by each re-randomisation.
    bucket_version: u32,
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
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
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
        keep_on_exit: d.keep_on_exit,
        analysis: d.analysis,
        bucket_version: d.bucket_version,
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

async fn with_transitions(
    experiments: &ExperimentService,
    e: &Experiment,
) -> Result<ExperimentOut, ApiError> {
    let mut o = out(e);
    o.transitions = Some(
        experiments
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
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Body(req): Body<ExperimentInput>,
) -> Result<(StatusCode, Json<ExperimentOut>), ApiError> {
    let e = experiments.create_experiment(req, &who.key_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(with_transitions(&experiments, &e).await?),
    ))
}

#[utoipa::path(get, path = "/v1/experiments", tag = "experiments", security(("api_key" = [])), params(PageQuery),
    responses((status = 200, body = ExperimentList)))]
pub async fn list(
    State(experiments): State<Arc<ExperimentService>>,
    Params(q): Params<PageQuery>,
) -> Result<Json<ExperimentList>, ApiError> {
    let all = experiments
        .list_experiments()
        .iter()
        .map(|e| out(e))
        .collect();
    let (experiments, next_cursor) = paginate(
        all,
        |e| format!("{}{}", e.created_at, e.id),
        Order::Ascending,
        &q,
    )?;
    Ok(Json(ExperimentList {
        experiments,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/experiments/{id}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ExperimentOut), (status = 404)))]
pub async fn get_one(
    State(experiments): State<Arc<ExperimentService>>,
    Path(id): Path<String>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let e = experiments.experiment(&id)?;
    Ok(Json(with_transitions(&experiments, &e).await?))
}

/// Changes some fields (not the key): a new version. Works in any status.
#[utoipa::path(patch, path = "/v1/experiments/{id}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), request_body(content = Object, description = "any fields of the create body but key"),
    responses((status = 200, body = ExperimentOut), (status = 404), (status = 422)))]
pub async fn patch(
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<ExperimentInput>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let e = experiments.update_experiment(&id, req, &who.key_id).await?;
    Ok(Json(with_transitions(&experiments, &e).await?))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerandomizeIn {
    /// The new seed (default `<key>-v<bucket_version>`).
    seed: Option<String>,
}

/// Lifecycle: `start` (draft → running), `pause`, `resume`, `complete`
/// (running or paused → completed), `archive` (draft or completed →
/// archived). Any other move is 409 `invalid_transition`. And
/// `rerandomize`: a new bucket version and seed, so stored assignments of
/// earlier versions no longer hold (optional body `{seed}`).
#[utoipa::path(post, path = "/v1/experiments/{id}/{action}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path), ("action" = String, Path, description = "start, pause, resume, complete, archive or rerandomize")),
    responses((status = 200, body = ExperimentOut), (status = 404), (status = 409)))]
pub async fn transition(
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    raw: RawBody,
) -> Result<Json<ExperimentOut>, ApiError> {
    let RawBody(_, body) = raw;
    let e = if action == "rerandomize" {
        let seed = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            parse_json::<Option<RerandomizeIn>>(&body)?.and_then(|b| b.seed)
        };
        experiments
            .rerandomize_experiment(&id, seed, &who.key_id)
            .await?
    } else {
        let action =
            Action::parse(&action).ok_or_else(|| ApiError::for_status(StatusCode::NOT_FOUND))?;
        experiments
            .transition_experiment(&id, action, &who.key_id)
            .await?
    };
    Ok(Json(with_transitions(&experiments, &e).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachIn {
    segment_id: String,
}

/// Attaches a segment to the experiment's targeting (a new version).
#[utoipa::path(post, path = "/v1/experiments/{id}/segments", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), request_body = AttachIn,
    responses((status = 200, body = ExperimentOut), (status = 404)))]
pub async fn attach_segment(
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<AttachIn>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let e = experiments
        .attach_segment(&id, &req.segment_id, &who.key_id)
        .await?;
    Ok(Json(with_transitions(&experiments, &e).await?))
}

/// Detaches a segment from the experiment's targeting (a new version).
#[utoipa::path(delete, path = "/v1/experiments/{id}/segments/{segment_id}", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path), ("segment_id" = String, Path)),
    responses((status = 200, body = ExperimentOut), (status = 404)))]
pub async fn detach_segment(
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Path((id, segment_id)): Path<(String, String)>,
) -> Result<Json<ExperimentOut>, ApiError> {
    let e = experiments
        .detach_segment(&id, &segment_id, &who.key_id)
        .await?;
    Ok(Json(with_transitions(&experiments, &e).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentExperimentIn {
    experiment_id: String,
    segment_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct MessageOut {
    message: &'static str,
}

/// The platform seed's form of attaching: `{experiment_id, segment_id}`.
#[utoipa::path(post, path = "/v1/segments/assign-experiment", tag = "experiments", security(("api_key" = [])),
    request_body = SegmentExperimentIn, responses((status = 200, body = MessageOut), (status = 422)))]
pub async fn assign_experiment(
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Body(req): Body<SegmentExperimentIn>,
) -> Result<Json<MessageOut>, ApiError> {
    experiments
        .attach_segment(&req.experiment_id, &req.segment_id, &who.key_id)
        .await?;
    Ok(Json(MessageOut {
        message: "Segment assigned to experiment successfully",
    }))
}

/// The platform seed's form of detaching: `{experiment_id, segment_id}`.
#[utoipa::path(delete, path = "/v1/segments/unassign-experiment", tag = "experiments", security(("api_key" = [])),
    request_body = SegmentExperimentIn, responses((status = 200, body = MessageOut), (status = 404)))]
pub async fn unassign_experiment(
    State(experiments): State<Arc<ExperimentService>>,
    Extension(who): Extension<Principal>,
    Body(req): Body<SegmentExperimentIn>,
) -> Result<Json<MessageOut>, ApiError> {
    experiments
        .detach_segment(&req.experiment_id, &req.segment_id, &who.key_id)
        .await?;
    Ok(Json(MessageOut {
        message: "Segment removed from experiment successfully",
    }))
}
