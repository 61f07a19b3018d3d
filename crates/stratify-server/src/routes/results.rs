//! Metrics, experiment results, and the statistics calculator.

use super::paging::{paginate, Order, PageQuery};
use crate::extract::{parse_json, Body, Params, RawBody};
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stratify_core::stats::{
    self, CompareInput, Comparison, Engine as StatsEngine, Method, SampleSize, SampleSizeInput, Srm,
};
use stratify_core::time::parse_rfc3339;
use stratify_core::ErrorCode;
use stratify_engine::results::metrics::Metric;
use stratify_engine::results::ResultService;
use stratify_engine::results::{
    ExperimentResults, MetricInput, ResultsQuery, MAX_METRICS_PER_QUERY,
};
use stratify_engine::Engine;
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct MetricList {
    #[schema(value_type = Vec<Object>)]
    metrics: Vec<Metric>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

/// Defines a metric.
#[utoipa::path(post, path = "/v1/metrics", tag = "results", security(("api_key" = [])),
    request_body(content = Object, description = "{key, kind: conversion|count|sum|mean, event, property? (sum, mean), window? (Ns|Nm|Nh|Nd after first exposure), name?, description?, higher_is_better? (default true)}"),
    responses((status = 201, description = "the metric"), (status = 409, description = "key taken"), (status = 422)))]
pub async fn create_metric(
    State(results): State<Arc<ResultService>>,
    Body(input): Body<MetricInput>,
) -> Result<(StatusCode, Json<Metric>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(results.create_metric(input).await?),
    ))
}

#[utoipa::path(get, path = "/v1/metrics", tag = "results", security(("api_key" = [])), params(PageQuery),
    responses((status = 200, body = MetricList)))]
pub async fn list_metrics(
    State(results): State<Arc<ResultService>>,
    Params(q): Params<PageQuery>,
) -> Result<Json<MetricList>, ApiError> {
    let (metrics, next_cursor) = paginate(
        results.metrics().await?,
        |m| format!("{}{}", m.created_at.as_deref().unwrap_or(""), m.key),
        Order::Ascending,
        &q,
    )?;
    Ok(Json(MetricList {
        metrics,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/metrics/{key}", tag = "results", security(("api_key" = [])),
    params(("key" = String, Path)), responses((status = 200, description = "the metric"), (status = 404)))]
pub async fn get_metric(
    State(results): State<Arc<ResultService>>,
    Path(key): Path<String>,
) -> Result<Json<Metric>, ApiError> {
    Ok(Json(results.metric(&key).await?))
}

#[utoipa::path(delete, path = "/v1/metrics/{key}", tag = "results", security(("api_key" = [])),
    params(("key" = String, Path)), responses((status = 204), (status = 404)))]
pub async fn delete_metric(
    State(results): State<Arc<ResultService>>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    results.delete_metric(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query parameters of `GET /v1/experiments/{id}/results`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResultsParams {
    /// Metric keys, comma-separated (e.g. `converted,revenue`).
    metric: Option<String>,
    /// Guardrail metric keys, comma-separated: reported apart; a treatment
    /// that significantly harms one cannot win.
    guardrail: Option<String>,
    /// An ad hoc conversion metric on this event name (no window).
    event: Option<String>,
    /// Default 0.95.
    confidence_level: Option<f64>,
    /// `welch` (default), `z` or `z_pooled`.
    method: Option<String>,
    /// α for `significant` and the winner; default 1 − confidence_level.
    significance_threshold: Option<f64>,
    /// Only users first exposed at or after this instant (RFC 3339).
    from: Option<String>,
    /// Only exposures and events up to this instant (RFC 3339); default now.
    to: Option<String>,
    /// `frequentist` (default) or `bayesian` (GrowthBook's effect model, flat prior).
    engine: Option<String>,
    /// `true`: the always-valid sequential test (safe to look every day).
    sequential: Option<bool>,
    /// The sequential test's tuning (default 5000).
    sequential_tuning: Option<f64>,
    /// `false`: analyse metrics that have a CUPED lookback unadjusted, for this call.
    cuped: Option<bool>,
}

fn query_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message).at(format!("/{field}"))
}

fn method(m: Option<&str>, field: &str) -> Result<Method, ApiError> {
    match m {
        None => Ok(Method::Welch),
        Some(s) => {
            Method::parse(s).ok_or_else(|| query_error(field, "method is welch, z or z_pooled"))
        }
    }
}

fn instant(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|t| parse_rfc3339(t).map_err(|e| query_error(field, e.message)))
        .transpose()
}

/// Resolves metric keys (and an ad hoc conversion event) to definitions.
async fn resolve_metrics(
    engine: &Engine,
    keys: &[&str],
    event: Option<&str>,
    field: &str,
) -> Result<Vec<Metric>, ApiError> {
    if keys.len() + usize::from(event.is_some()) > MAX_METRICS_PER_QUERY {
        return Err(query_error(
            field,
            format!("at most {MAX_METRICS_PER_QUERY} metrics"),
        ));
    }
    let all = engine.results.metrics().await?;
    let mut out = Vec::new();
    for key in keys {
        let metric = all.iter().find(|m| m.key == *key).cloned().ok_or_else(|| {
            ApiError::new(ErrorCode::MetricNotFound, format!("no metric '{key}'"))
                .at(format!("/{field}"))
        })?;
        out.push(metric);
    }
    if let Some(event) = event {
        out.push(Metric::conversion_on(event)?);
    }
    Ok(out)
}

/// Per-variant results of an experiment for one or more metrics.
#[utoipa::path(get, path = "/v1/experiments/{id}/results", tag = "results", security(("api_key" = [])),
    params(("id" = String, Path), ResultsParams),
    responses((status = 200, description = "{experiment_id, key, engine, method, sequential_tuning?, cuped, confidence_level, significance_threshold, exposed_users, variants, srm, metrics: [{metric, variants: [{key, users, n, conversions, total, mean, variance, estimate, ci_low, ci_high, absolute, relative, chance_to_win, p_value_adjusted, significant, cuped?: {theta, variance_reduction, balance_p_value}}], winner, winner_reason, timeseries}], guardrails: [same as metrics], winner, winner_reason}"),
        (status = 404), (status = 422)))]
pub async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Params(p): Params<ResultsParams>,
) -> Result<Json<ExperimentResults>, ApiError> {
    let keys: Vec<&str> = p
        .metric
        .as_deref()
        .map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if keys.is_empty() && p.event.is_none() {
        return Err(query_error(
            "metric",
            "name metric keys (metric=a,b) or an event (event=NAME)",
        ));
    }
    let experiment = state.engine.experiments.experiment(&id)?;
    let metrics = resolve_metrics(&state.engine, &keys, p.event.as_deref(), "metric").await?;
    // What the request leaves out, the experiment's default analysis decides.
    let defaults = experiment.definition.analysis;
    let engine = match p.engine.as_deref() {
        None => defaults.engine,
        Some(e) => StatsEngine::parse(e)
            .ok_or_else(|| query_error("engine", "engine is frequentist or bayesian"))?,
    };
    let default_tuning = defaults
        .sequential
        .map_or_else(stratify_core::stats::compare::default_tuning, |s| s.tuning);
    let sequential = match (p.sequential, p.sequential_tuning) {
        (Some(true), tuning) => Some(tuning.unwrap_or(default_tuning)),
        (Some(false), None) => None,
        // A default sequential test goes with the frequentist engine only.
        (None, None) if engine == StatsEngine::Frequentist => defaults.sequential.map(|s| s.tuning),
        (None, None) => None,
        (_, Some(_)) => {
            return Err(query_error(
                "sequential_tuning",
                "sequential_tuning goes with sequential=true",
            ))
        }
    };
    if sequential.is_some_and(|t| !(1.0..=1e12).contains(&t)) {
        return Err(query_error(
            "sequential_tuning",
            "sequential_tuning is a number of users from 1 to 10^12",
        ));
    }
    if engine == StatsEngine::Bayesian && sequential.is_some() {
        return Err(query_error(
            "sequential",
            "the sequential test is frequentist: ask for engine=bayesian or sequential=true, not both",
        ));
    }
    let guardrail_keys: Vec<&str> = p
        .guardrail
        .as_deref()
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let guardrails = resolve_metrics(&state.engine, &guardrail_keys, None, "guardrail").await?;
    let query = ResultsQuery {
        metrics,
        guardrails,
        method: method(p.method.as_deref(), "method")?,
        engine,
        sequential,
        cuped: p.cuped.unwrap_or(true),
        confidence_level: p.confidence_level.unwrap_or(0.95),
        significance_threshold: p.significance_threshold,
        from: instant("from", p.from.as_deref())?,
        to: instant("to", p.to.as_deref())?,
    };
    Ok(Json(
        state.engine.results.experiment_results(&id, query).await?,
    ))
}

fn default_event() -> String {
    "conversion".into()
}
fn default_confidence() -> f64 {
    0.95
}
fn default_threshold() -> f64 {
    0.05
}

/// The seed's body: a conversion metric on an event, plus our options.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedResultsInput {
    #[serde(default = "default_event")]
    conversion_event_type: String,
    #[serde(default = "default_confidence")]
    confidence_level: f64,
    #[serde(default = "default_threshold")]
    significance_threshold: f64,
    #[serde(default)]
    method: Option<String>,
    /// More metrics by key, after the conversion.
    #[serde(default)]
    metrics: Vec<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

#[derive(Serialize)]
pub struct SeedResults {
    experiment_name: String,
    conversion_event_type: String,
    #[serde(flatten)]
    results: ExperimentResults,
}

/// The seed's form: `{conversion_event_type, confidence_level, significance_threshold}`.
#[utoipa::path(post, path = "/v1/experiments/{id}/results", tag = "results", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "{conversion_event_type = \"conversion\", confidence_level = 0.95, significance_threshold = 0.05, method?, metrics?: [key], from?, to?}"),
    responses((status = 200, description = "the GET form's answer plus experiment_name and conversion_event_type"), (status = 404), (status = 422)))]
pub async fn results_seed(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: RawBody,
) -> Result<Json<SeedResults>, ApiError> {
    let bytes = raw.1;
    let input: SeedResultsInput = if bytes.iter().all(u8::is_ascii_whitespace) {
        parse_json(b"{}")?
    } else {
        parse_json(&bytes)?
    };
    let experiment = state.engine.experiments.experiment(&id)?;
    let keys: Vec<&str> = input.metrics.iter().map(String::as_str).collect();
    let mut metrics = resolve_metrics(
        &state.engine,
        &keys,
        Some(&input.conversion_event_type),
        "metrics",
    )
    .await?;
    metrics.rotate_right(1); // the conversion first: it decides the winner
    let query = ResultsQuery {
        metrics,
        guardrails: Vec::new(),
        method: method(input.method.as_deref(), "method")?,
        engine: StatsEngine::Frequentist,
        sequential: None,
        cuped: true,
        confidence_level: input.confidence_level,
        significance_threshold: Some(input.significance_threshold),
        from: instant("from", input.from.as_deref())?,
        to: instant("to", input.to.as_deref())?,
    };
    let results = state.engine.results.experiment_results(&id, query).await?;
    Ok(Json(SeedResults {
        experiment_name: experiment.record.name.clone(),
        conversion_event_type: input.conversion_event_type,
        results,
    }))
}

/// Compares two arms (rates or means).
#[utoipa::path(post, path = "/v1/stats/compare", tag = "statistics", security(("api_key" = [])),
    request_body(content = Object, description = "{engine?: frequentist|bayesian, method?: welch|z|z_pooled, confidence_level?: 0.95, sequential?: {tuning: 5000}, prior?: {mean, variance, proper, type: relative|absolute} (bayesian), control: {n, conversions} | {n, mean, variance} | {n, sum, sum_squares} | {n, ratio: {numerator: {sum, sum_squares}, denominator: {sum, sum_squares}, sum_of_products}} | {n, cuped: {post: PART, pre: PART, sum_of_products}} (PART: {sum, sum_squares} or {conversions}), treatment: same form}"),
    responses((status = 200, description = "{engine, method, confidence_level, sequential_tuning?, prior?, cuped?: {theta, variance_reduction, balance_p_value}, control: {n, estimate, ci_low, ci_high}, treatment, absolute: {estimate, se, statistic, df, p_value, ci_low, ci_high} (bayesian: estimate, se, ci_low, ci_high, chance_to_win, risk_control, risk_treatment), relative: same | null, chance_to_win}"), (status = 422)))]
pub async fn compare(Body(input): Body<CompareInput>) -> Result<Json<Comparison>, ApiError> {
    Ok(Json(input.run()?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SrmInput {
    observed: Vec<u64>,
    weights: Vec<f64>,
}

/// Sample-ratio-mismatch check (chi-square goodness of fit).
#[utoipa::path(post, path = "/v1/stats/srm", tag = "statistics", security(("api_key" = [])),
    request_body = SrmInput,
    responses((status = 200, description = "{expected, chi2, df, p_value, srm_detected}"), (status = 422)))]
pub async fn srm(Body(input): Body<SrmInput>) -> Result<Json<Srm>, ApiError> {
    Ok(Json(stats::srm(&input.observed, &input.weights)?))
}

/// Users per variant to detect an effect on a conversion rate.
#[utoipa::path(post, path = "/v1/stats/sample-size", tag = "statistics", security(("api_key" = [])),
    request_body(content = Object, description = "{baseline_rate, mde, relative?: false, alpha?: 0.05, power?: 0.8, ratio?: 1}"),
    responses((status = 200, description = "{n_per_variant, n_treatment, n_exact, baseline_rate, target_rate}"), (status = 422)))]
pub async fn sample_size(Body(input): Body<SampleSizeInput>) -> Result<Json<SampleSize>, ApiError> {
    Ok(Json(stats::sample_size(&input)?))
}
