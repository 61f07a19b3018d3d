//! Per-user serving: the experiments a user is in, eligibility checks, the
//! banner mixture, and clearing a user's cached answer.

use super::instant;
use crate::extract::Body;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_engine::experiments::assign::ServingService;
use stratify_engine::experiments::assign::{Source, UserExperiments};
use stratify_engine::experiments::{Experiment, Mixture};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ServedOut<'a> {
    experiment_id: &'a str,
    key: &'a str,
    name: &'a str,
    /// The variant's key.
    variant: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant_name: Option<&'a str>,
    is_control: bool,
    /// The variant's payload (null when it has none).
    #[schema(value_type = Option<Object>)]
    payload: Option<&'a Value>,
}

#[derive(Serialize, ToSchema)]
pub struct MixtureOut<'a> {
    /// The banners, as the experiments' payloads list them (any JSON).
    #[schema(value_type = Vec<Value>)]
    banners: stratify_engine::experiments::BannersJson<'a>,
    assigned_at: String,
    expires_at: String,
    /// How long a mixture is kept.
    ttl_seconds: i64,
    /// `[{experiment_id, key, variant, banners}]`: the pool it was drawn from.
    #[schema(value_type = Vec<Object>)]
    source_experiments: stratify_engine::experiments::BannerSourcesJson<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct UserExperimentsOut<'a> {
    user_id: &'a str,
    /// `cache` when the answer was cached, `db` when computed for this call.
    source: &'static str,
    experiments: Vec<ServedOut<'a>>,
    banner_mixture: Option<MixtureOut<'a>>,
}

fn mixture_out(m: &Mixture) -> MixtureOut<'_> {
    MixtureOut {
        banners: m.banners_json(),
        assigned_at: instant(m.assigned_at),
        expires_at: instant(m.expires_at),
        ttl_seconds: (m.expires_at - m.assigned_at) / 1000,
        source_experiments: m.sources_json(),
    }
}

/// The answer as `UserExperimentsOut` serialises it, assembled from each
/// experiment's pre-rendered variants (made once per experiment version):
/// a cached answer holds no bytes of its own, and rendering is copying.
fn render(answer: &UserExperiments, source: Source) -> bytes::Bytes {
    let mut out = Vec::with_capacity(128 + answer.served().len() * 192);
    out.extend_from_slice(b"{\"user_id\":");
    json_into(&mut out, &answer.user_id);
    out.extend_from_slice(b",\"source\":\"");
    out.extend_from_slice(source.as_str().as_bytes());
    out.extend_from_slice(b"\",\"experiments\":[");
    for (i, s) in answer.served().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let variants = s
            .experiment
            .rendered_variants
            .get_or_init(|| render_variants(s.experiment));
        if let Some(v) = variants.get(s.variant as usize) {
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(b"],\"banner_mixture\":");
    json_into(&mut out, &answer.banner_mixture.as_deref().map(mixture_out));
    out.push(b'}');
    out.into()
}

/// Each variant of an experiment as one `ServedOut`.
fn render_variants(e: &Experiment) -> Vec<bytes::Bytes> {
    e.definition
        .variants
        .iter()
        .map(|v| {
            let mut out = Vec::new();
            json_into(
                &mut out,
                &ServedOut {
                    experiment_id: &e.record.id,
                    key: &e.record.key,
                    name: &e.record.name,
                    variant: &v.key,
                    variant_name: v.name.as_deref(),
                    is_control: v.is_control,
                    payload: v.payload.as_ref(),
                },
            );
            out.into()
        })
        .collect()
}

fn json_into(out: &mut Vec<u8>, value: &impl Serialize) {
    // Serialising these types into memory cannot fail (no maps with
    // non-string keys, no I/O).
    let _ = serde_json::to_writer(out, value);
}

fn user_id(id: &str) -> Result<UserId, ApiError> {
    UserId::parse(id).map_err(|e| ApiError::from(stratify_engine::EngineError::Invalid(e)))
}

/// Every running experiment the user is in, with the variant and payload,
/// and their banner mixture. Cached per user (default 5 minutes), and
/// invalidated at once by any change of the user's memberships, events or
/// attributes, or of any experiment. Unknown users get the experiments that
/// target everyone.
#[utoipa::path(get, path = "/v1/users/{id}/experiments", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = UserExperimentsOut), (status = 400)))]
pub async fn user_experiments(
    State(serving): State<Arc<ServingService>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = user_id(&id)?;
    let (answer, source) = serving.user_experiments(&user, None).await?;
    let body = render(&answer, source);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EligibilityIn {
    user_id: String,
    experiment_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EligibleOut {
    /// The variant's index in the experiment's variants.
    variant_id: usize,
    /// The variant's key.
    variant: String,
}

#[derive(Serialize, ToSchema)]
pub struct EligibilityOut {
    eligible_experiment_ids: BTreeMap<String, EligibleOut>,
}

/// Which of the given experiments the user is in, and with which variant.
#[utoipa::path(post, path = "/v1/experiments/check-eligibility", tag = "experiments", security(("api_key" = [])),
    request_body = EligibilityIn, responses((status = 200, body = EligibilityOut), (status = 422)))]
pub async fn check_eligibility(
    State(serving): State<Arc<ServingService>>,
    Body(req): Body<EligibilityIn>,
) -> Result<Json<EligibilityOut>, ApiError> {
    let user = UserId::parse(&req.user_id)
        .map_err(|e| ApiError::from(stratify_engine::EngineError::Invalid(e.at("/user_id"))))?;
    let served = serving
        .check_eligibility(&user, &req.experiment_ids)
        .await?;
    Ok(Json(EligibilityOut {
        eligible_experiment_ids: served
            .iter()
            .map(|s| {
                (
                    s.experiment.record.id.clone(),
                    EligibleOut {
                        variant_id: s.variant as usize,
                        variant: s.variant().key.clone(),
                    },
                )
            })
            .collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct BannerMixtureOut<'a> {
    user_id: &'a str,
    banner_mixture: Option<MixtureOut<'a>>,
}

/// The user's banner mixture: banners drawn from the pool of every banner
/// experiment they are in, kept 24 hours unless the pool changes.
#[utoipa::path(get, path = "/v1/users/{id}/banner_mixture", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = BannerMixtureOut), (status = 400)))]
pub async fn banner_mixture(
    State(serving): State<Arc<ServingService>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = user_id(&id)?;
    let (answer, _) = serving.user_experiments(&user, None).await?;
    let out = BannerMixtureOut {
        user_id: &answer.user_id,
        banner_mixture: answer.banner_mixture.as_deref().map(mixture_out),
    };
    Ok(Json(out).into_response())
}

/// Clears the user's cached experiments and banner mixture: the next call
/// computes afresh and draws new banners.
#[utoipa::path(delete, path = "/v1/users/{id}/cache", tag = "experiments", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 400)))]
pub async fn clear_cache(
    State(serving): State<Arc<ServingService>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = user_id(&id)?;
    serving.clear_user_cache(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}
