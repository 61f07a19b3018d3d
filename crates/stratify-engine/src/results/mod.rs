//! Experiment results: each exposed user's metric value, per variant, with
//! the statistics of [`stratify_core::stats`].
//!
//! Who counts: every user with a stored assignment under the experiment's
//! current bucket version (the first serving, which is also the first
//! exposure), in the variant they were assigned, whatever happened since.
//! Which events count: the metric's event at or after that user's first
//! exposure, before the end of the window when the metric has one, and not
//! after `to`.
//!
//! The events come from a copy per (event, property) kept current by
//! scanning the log after its last sequence number (`columns`, saved between
//! runs by `checkpoint`). Results up to now are kept per experiment between
//! calls (`tally`: only the assignments and events since the last call are
//! read); results up to a given `to` read every exposure and fold afresh.
//! Both fold per user and per day with `fold`.

mod checkpoint;
pub(crate) mod columns;
mod fold;
pub mod metrics;
mod tally;

pub use columns::Columns;
pub use tally::Tallies;
use tally::Tally;

use crate::experiments::Experiment;
use crate::EngineError;
use fold::{Collector, Exposed, Folded, Span};
use metrics::{Metric, MetricKind};
use serde::Serialize;
use std::sync::Arc;
use stratify_core::stats::engines::{CupedArm, Part, RatioArm};
use stratify_core::stats::{
    self, Absolute, Analysis, Arm, ArmEstimate, Comparison, CupedReport, Engine, Method, Prior,
    Relative,
};
use stratify_core::time::{format_rfc3339, Millis};
use stratify_core::ErrorCode;
use stratify_core::ValidationError;

pub use metrics::{MetricInput, MAX_METRICS_PER_QUERY};

const DAY_MS: Millis = 86_400_000;
/// Most points of a time series; longer experiments get wider buckets.
pub const MAX_POINTS: i64 = 400;

/// What to compute.
#[derive(Debug, Clone)]
pub struct ResultsQuery {
    pub metrics: Vec<Metric>,
    /// Metrics a treatment must not significantly harm: reported apart,
    /// outside any winner's family; significant harm blocks the winner.
    pub guardrails: Vec<Metric>,
    pub method: Method,
    pub engine: Engine,
    /// `Some(τ)`: the sequential test with tuning τ.
    pub sequential: Option<f64>,
    /// `false`: metrics with a CUPED lookback are analysed unadjusted.
    pub cuped: bool,
    pub confidence_level: f64,
    /// α for `significant` and the winner; default 1 − confidence level.
    pub significance_threshold: Option<f64>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantInfo {
    pub key: String,
    pub name: Option<String>,
    pub weight: f64,
    pub is_control: bool,
    /// Users exposed (assigned) to the variant.
    pub users: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SrmReport {
    pub observed: Vec<u64>,
    #[serde(flatten)]
    pub test: stats::Srm,
    pub threshold: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub key: String,
    pub is_control: bool,
    /// Users exposed.
    pub users: u64,
    /// Users with a value (= `users`, except for `mean` metrics: those with an event).
    pub n: u64,
    /// Users who converted (conversion metrics).
    pub conversions: Option<u64>,
    /// Σ of the users' values.
    pub total: f64,
    pub mean: Option<f64>,
    /// Per-user sample variance (p(1 − p) for conversions).
    pub variance: Option<f64>,
    /// The rate or mean with its interval (Wilson for rates).
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Versus control (null for the control).
    pub absolute: Option<Absolute>,
    pub relative: Option<Relative>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_reason: Option<&'static str>,
    pub chance_to_win: Option<f64>,
    /// Holm-adjusted when there are more than two variants, else the raw p-value.
    pub p_value_adjusted: Option<f64>,
    /// The interval shown (absolute lift) excludes zero and, for the
    /// frequentist engine, the adjusted p-value is below α.
    pub significant: bool,
    /// CUPED's θ, variance reduction and pre-exposure balance check
    /// (treatments of a metric with a lookback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuped: Option<CupedReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Winner {
    pub key: String,
    pub name: Option<String>,
    pub metric: String,
    pub absolute_lift: Option<f64>,
    pub relative_lift: Option<f64>,
    pub p_value_adjusted: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PointVariant {
    pub key: String,
    pub n: u64,
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Absolute lift versus control with its interval (null for the control).
    pub lift: Option<Interval>,
    pub relative_lift: Option<Interval>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// Cumulative estimates at the end of one bucket (a UTC day by default).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub date: String,
    pub end: String,
    pub variants: Vec<PointVariant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricResult {
    pub metric: Metric,
    pub variants: Vec<VariantResult>,
    pub winner: Option<Winner>,
    pub winner_reason: Option<String>,
    /// Width of the time series' buckets in days.
    pub bucket_days: i64,
    pub timeseries: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExperimentResults {
    pub experiment_id: String,
    pub key: String,
    pub name: String,
    pub status: String,
    pub bucket_version: u32,
    pub engine: Engine,
    pub method: Method,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequential_tuning: Option<f64>,
    /// Whether metrics with a CUPED lookback were adjusted.
    pub cuped: bool,
    pub confidence_level: f64,
    pub significance_threshold: f64,
    pub from: Option<String>,
    pub to: String,
    pub computed_at: String,
    pub exposed_users: u64,
    /// Users assigned to a variant the definition no longer has.
    pub excluded_users: u64,
    pub variants: Vec<VariantInfo>,
    pub srm: SrmReport,
    pub metrics: Vec<MetricResult>,
    /// The guardrail metrics, each analysed alone (never a winner).
    pub guardrails: Vec<MetricResult>,
    /// The first metric's winner, unless a guardrail blocks it.
    pub winner: Option<Winner>,
    pub winner_reason: Option<String>,
}

fn invalid(code: ErrorCode, message: impl Into<String>, field: &str) -> EngineError {
    EngineError::Invalid(ValidationError::new(code, message).at(field))
}

/// The control: the variant marked `is_control`, else the first.
fn control_index(experiment: &Experiment) -> usize {
    experiment
        .definition
        .variants
        .iter()
        .position(|v| v.is_control)
        .unwrap_or(0)
}

/// Experiment results and metric definitions.
pub struct ResultService {
    pub(crate) store: Arc<dyn stratify_store::Store>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) experiments: Arc<crate::experiments::Experiments>,
    pub(crate) views: Arc<crate::derived::Views>,
    pub(crate) limits: Arc<crate::Limits>,
}

impl ResultService {
    /// Results of an experiment for one or more metrics.
    pub async fn experiment_results(
        &self,
        experiment_id: &str,
        query: ResultsQuery,
    ) -> Result<ExperimentResults, EngineError> {
        let experiment = self.experiments.get(experiment_id)?;
        if query.metrics.is_empty()
            || query.metrics.len() + query.guardrails.len() > MAX_METRICS_PER_QUERY
        {
            return Err(invalid(
                ErrorCode::InvalidMetrics,
                format!("name 1 to {MAX_METRICS_PER_QUERY} metrics"),
                "/metric",
            ));
        }
        let confidence = stats::check_confidence(query.confidence_level, "/confidence_level")?;
        // 1 − 0.95 is 0.050000000000000044 in binary; the threshold people
        // mean (and read back in the answer) is 0.05.
        let alpha = query
            .significance_threshold
            .unwrap_or(((1.0 - confidence) * 1e12).round() / 1e12);
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(invalid(
                ErrorCode::OutOfRange,
                "significance_threshold must be in (0, 1)",
                "/significance_threshold",
            ));
        }
        let analysis = Analysis {
            engine: query.engine,
            method: query.method,
            confidence_level: confidence,
            sequential: query.sequential,
            prior: Prior::default(),
            cuped: query.cuped,
        };
        stats::compare::check_analysis(&analysis)?;
        let now = self.clock.now();
        let to = query.to.unwrap_or(now);
        let from = query.from.unwrap_or(Millis::MIN);
        if from > to {
            return Err(invalid(
                ErrorCode::InvalidRange,
                "from is after to",
                "/from",
            ));
        }
        let definition = &experiment.definition;
        let bucket_version = definition.bucket_version;
        // Every exposure served so far counts, including those still queued
        // in the write-behind buffer.
        self.views.serving.flush().await;
        let started = std::time::Instant::now();
        let mut folding = if query.to.is_none() {
            self.kept(&experiment, from, to).await?
        } else {
            self.full(&experiment, from, to).await?
        };
        let excluded = folding.excluded();
        tracing::debug!(users = folding.exposed().len(), elapsed = ?started.elapsed(), "results: exposures read");

        let mut users = vec![0_u64; definition.variants.len()];
        for &v in &folding.exposed().variant {
            users[v as usize] += 1;
        }
        let weights: Vec<f64> = definition.variants.iter().map(|v| v.weight).collect();
        let srm = stats::srm(&users, &weights)?;
        let srm = SrmReport {
            observed: users.clone(),
            test: srm,
            threshold: stats::SRM_THRESHOLD,
        };

        let mut metric_results = Vec::with_capacity(query.metrics.len());
        let mut guardrail_results = Vec::with_capacity(query.guardrails.len());
        let all = query.metrics.iter().map(|m| (m, false));
        for (metric, guardrail) in all.chain(query.guardrails.iter().map(|m| (m, true))) {
            let (arms, folded, series) = if metric.kind == MetricKind::Ratio {
                let (numerator, denominator) = self.ratio_parts(metric).await?;
                let num = folding
                    .fold(self, &numerator, Span::After(numerator.window_ms), to)
                    .await?;
                let den = folding
                    .fold(self, &denominator, Span::After(denominator.window_ms), to)
                    .await?;
                (ratio_arms(&num, &den, folding.exposed()), num, false)
            } else {
                let folded = folding
                    .fold(self, metric, Span::After(metric.window_ms), to)
                    .await?;
                // CUPED's covariate: the same metric over the lookback before
                // each user's first exposure (one more pass over its events).
                let arms = match metric.lookback_ms {
                    Some(lookback) if query.cuped => {
                        let pre = folding
                            .fold(self, metric, Span::Before(lookback), to)
                            .await?;
                        cuped_arms(metric.kind, &folded, &pre, folding.exposed())
                    }
                    _ => (0..definition.variants.len())
                        .map(|v| {
                            arm(
                                metric.kind,
                                folded.total_n[v],
                                folded.total_s[v],
                                folded.total_q[v],
                            )
                        })
                        .collect(),
                };
                (arms, folded, true)
            };
            tracing::debug!(metric = %metric.key, elapsed = ?started.elapsed(), "results: folded");
            let result = metric_result(
                &experiment,
                metric,
                (arms, &folded, series),
                &users,
                &analysis,
                alpha,
                &srm,
                folding.exposed(),
            );
            if guardrail {
                guardrail_results.push(MetricResult {
                    winner: None,
                    winner_reason: Some("a guardrail only blocks winners".into()),
                    ..result
                });
            } else {
                metric_results.push(result);
            }
        }
        block_harmful_winners(&mut metric_results, &guardrail_results);
        let (winner, winner_reason) = metric_results
            .first()
            .map(|m| (m.winner.clone(), m.winner_reason.clone()))
            .unwrap_or((None, None));
        Ok(ExperimentResults {
            experiment_id: experiment.record.id.clone(),
            key: experiment.record.key.clone(),
            name: experiment.record.name.clone(),
            status: experiment.record.status.clone(),
            bucket_version,
            engine: query.engine,
            method: query.method,
            sequential_tuning: query.sequential,
            cuped: query.cuped,
            confidence_level: confidence,
            significance_threshold: alpha,
            from: query.from.map(format_rfc3339),
            to: format_rfc3339(to),
            computed_at: format_rfc3339(now),
            exposed_users: folding.exposed().len() as u64,
            excluded_users: excluded,
            variants: definition
                .variants
                .iter()
                .zip(&users)
                .map(|(v, &n)| VariantInfo {
                    key: v.key.clone(),
                    name: v.name.clone(),
                    weight: v.weight,
                    is_control: v.is_control,
                    users: n,
                })
                .collect(),
            srm,
            metrics: metric_results,
            guardrails: guardrail_results,
            winner,
            winner_reason,
        })
    }
}

impl ResultService {
    /// A ratio metric's numerator and denominator definitions.
    async fn ratio_parts(&self, metric: &Metric) -> Result<(Metric, Metric), EngineError> {
        let mut parts = Vec::with_capacity(2);
        for key in [&metric.numerator, &metric.denominator]
            .into_iter()
            .flatten()
        {
            let part = self.metric(key).await.map_err(|_| {
                invalid(
                    ErrorCode::MetricNotFound,
                    format!("the ratio metric '{}' names no metric '{key}'", metric.key),
                    "/metric",
                )
            })?;
            if matches!(part.kind, MetricKind::Mean | MetricKind::Ratio) {
                return Err(invalid(
                    ErrorCode::InvalidMetrics,
                    format!(
                        "the ratio metric '{}' divides count, sum or conversion metrics; '{key}' is not one",
                        metric.key
                    ),
                    "/metric",
                ));
            }
            parts.push(part);
        }
        match (parts.pop(), parts.pop()) {
            (Some(denominator), Some(numerator)) => Ok((numerator, denominator)),
            _ => Err(invalid(
                ErrorCode::InvalidMetrics,
                format!("the ratio metric '{}' lacks a part", metric.key),
                "/metric",
            )),
        }
    }

    /// Every exposure in `[from, to]`, read now (a call for a past `to`).
    async fn full(
        &self,
        experiment: &Experiment,
        from: Millis,
        to: Millis,
    ) -> Result<Folding, EngineError> {
        let definition = &experiment.definition;
        let raw = self
            .store
            .experiment_exposures(&experiment.record.id, definition.bucket_version, from, to)
            .await?;
        // Exposures as columns, with variants as definition indices.
        let keys: Vec<&str> = definition.variants.iter().map(|v| v.key.as_str()).collect();
        let index_of = fold::variant_indices(&raw.variants, &keys);
        let mut exposed = Exposed::empty(definition.variants.len());
        exposed.variant.reserve(raw.uid.len());
        exposed.assigned_at.reserve(raw.uid.len());
        let mut excluded = 0_u64;
        for k in 0..raw.uid.len() {
            let Some(variant) = index_of[raw.variant[k] as usize] else {
                excluded += 1;
                continue;
            };
            let i = exposed.variant.len() as u32;
            exposed.variant.push(variant);
            exposed.assigned_at.push(raw.assigned_at[k]);
            if let Some(uid) = raw.uid[k] {
                exposed.set_uid(uid, i);
            }
        }
        let first = exposed.assigned_at.iter().min().copied();
        exposed.lay_out(first, to);
        Ok(Folding::Full {
            exposed: Arc::new(exposed),
            excluded,
        })
    }

    /// The experiment's tally brought up to `to` (now): only what was
    /// written since the last call is read.
    async fn kept(
        &self,
        experiment: &Experiment,
        from: Millis,
        to: Millis,
    ) -> Result<Folding, EngineError> {
        let definition = &experiment.definition;
        let tallies = &self.views.results_tallies;
        let generation = tallies.generation();
        let mut tally = tallies
            .slot(&experiment.record.id, definition.bucket_version, from)
            .lock_owned()
            .await;
        let variants: Vec<String> = definition.variants.iter().map(|v| v.key.clone()).collect();
        tally.reset_unless_current(generation, &variants, to);
        let source = StoreSource {
            store: self.store.as_ref(),
            experiment: &experiment.record.id,
            bucket_version: definition.bucket_version,
        };
        tally.refresh(&source, from, to).await?;
        Ok(Folding::Kept(tally))
    }
}

/// Where one call's exposures and metric folds come from.
enum Folding {
    /// Read for this call, every metric's events folded afresh.
    Full {
        exposed: Arc<Exposed>,
        excluded: u64,
    },
    /// The experiment's tally, kept between calls.
    Kept(tokio::sync::OwnedMutexGuard<Tally>),
}

impl Folding {
    fn exposed(&self) -> &Exposed {
        match self {
            Folding::Full { exposed, .. } => exposed,
            Folding::Kept(tally) => &tally.exposed,
        }
    }

    fn excluded(&self) -> u64 {
        match self {
            Folding::Full { excluded, .. } => *excluded,
            Folding::Kept(tally) => tally.excluded,
        }
    }

    /// One metric's events, per exposed user, folded per variant and bucket.
    async fn fold(
        &mut self,
        service: &ResultService,
        metric: &Metric,
        span: Span,
        to: Millis,
    ) -> Result<Folded, EngineError> {
        let columns = &service.views.results_columns;
        let store = service.store.as_ref();
        match self {
            Folding::Full { exposed, .. } => {
                let collector = Collector::new(exposed.clone(), metric.kind, span, to);
                if !exposed.variant.is_empty() {
                    let feed = |events: &[stratify_store::MetricEvent]| collector.take(events);
                    columns
                        .visit(store, &metric.event, metric.property.as_deref(), &feed)
                        .await?;
                }
                Ok(collector.fold())
            }
            Folding::Kept(tally) => Ok(columns
                .with_events(
                    store,
                    &metric.event,
                    metric.property.as_deref(),
                    |copy, events| tally.fold(metric, span, copy, events),
                )
                .await?),
        }
    }
}

/// A tally's reads, from the store.
struct StoreSource<'a> {
    store: &'a dyn stratify_store::Store,
    experiment: &'a str,
    bucket_version: u32,
}

#[async_trait::async_trait]
impl tally::Source for StoreSource<'_> {
    async fn exposures_since(
        &self,
        after_seq: i64,
    ) -> Result<stratify_store::Exposures, EngineError> {
        Ok(self
            .store
            .exposures_since(self.experiment, self.bucket_version, after_seq)
            .await?)
    }

    async fn user_ids_after(
        &self,
        after_uid: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, EngineError> {
        Ok(self.store.user_ids_after(after_uid, limit).await?)
    }
}

/// A CUPED arm per variant: the metric after exposure and its covariate
/// before, as sums (proportions for conversion metrics), with Σ post·pre.
fn cuped_arms(kind: MetricKind, post: &Folded, pre: &Folded, exposed: &Exposed) -> Vec<Arm> {
    let mut products = vec![0.0_f64; exposed.variants];
    for u in 0..exposed.len() {
        products[exposed.variant[u] as usize] += post.per_user[u] * pre.per_user[u];
    }
    let part = |f: &Folded, v: usize| {
        if kind == MetricKind::Conversion {
            Part::Proportion { sum: f.total_s[v] }
        } else {
            Part::SampleMean {
                sum: f.total_s[v],
                sum_squares: f.total_q[v],
            }
        }
    };
    (0..exposed.variants)
        .map(|v| {
            Arm::Cuped(CupedArm {
                n: post.total_n[v],
                post: part(post, v),
                pre: part(pre, v),
                sum_of_products: products[v],
            })
        })
        .collect()
}

/// A treatment that significantly harms a guardrail (its lift is
/// significant and in the metric's bad direction) cannot win any metric.
fn block_harmful_winners(metrics: &mut [MetricResult], guardrails: &[MetricResult]) {
    for m in metrics.iter_mut() {
        let Some(winner) = &m.winner else { continue };
        let harmed = guardrails.iter().find_map(|g| {
            let v = g
                .variants
                .iter()
                .find(|v| v.key == winner.key && !v.is_control)?;
            let lift = v.absolute.and_then(|a| a.estimate)?;
            let bad = if g.metric.higher_is_better {
                lift < 0.0
            } else {
                lift > 0.0
            };
            (v.significant && bad).then(|| g.metric.key.clone())
        });
        if let Some(guardrail) = harmed {
            m.winner_reason = Some(format!(
                "'{}' would win on '{}' but significantly harms the guardrail '{guardrail}'",
                winner.key, m.metric.key
            ));
            m.winner = None;
        }
    }
}

/// A ratio arm per variant: per-user numerator and denominator values
/// summed, with Σ m·d (gbstats `RatioStatistic`).
fn ratio_arms(num: &Folded, den: &Folded, exposed: &Exposed) -> Vec<Arm> {
    let mut products = vec![0.0_f64; exposed.variants];
    for u in 0..exposed.len() {
        products[exposed.variant[u] as usize] += num.per_user[u] * den.per_user[u];
    }
    (0..exposed.variants)
        .map(|v| {
            Arm::Ratio(RatioArm {
                n: num.total_n[v],
                numerator: Part::SampleMean {
                    sum: num.total_s[v],
                    sum_squares: num.total_q[v],
                },
                denominator: Part::SampleMean {
                    sum: den.total_s[v],
                    sum_squares: den.total_q[v],
                },
                sum_of_products: products[v],
            })
        })
        .collect()
}

/// Whether the interval shown for the lift (absolute) excludes zero.
fn excludes_zero(c: &Comparison) -> bool {
    c.absolute
        .ci_low
        .zip(c.absolute.ci_high)
        .is_some_and(|(low, high)| low > 0.0 || high < 0.0)
}

/// One arm from the sums of its users' values.
///
/// Rates: conversions = Σf. Other metrics: mean = S/n and the sample
/// variance (Q − S²/n)/(n − 1) (undefined with fewer than two users).
fn arm(kind: MetricKind, n: u64, s: f64, q: f64) -> Arm {
    if kind == MetricKind::Conversion {
        return Arm::Rate {
            n,
            conversions: s.round().max(0.0) as u64,
        };
    }
    let nf = n as f64;
    let mean = if n > 0 { s / nf } else { f64::NAN };
    let variance = if n >= 2 {
        ((q - s * s / nf) / (nf - 1.0)).max(0.0)
    } else {
        f64::NAN
    };
    Arm::Mean { n, mean, variance }
}

#[allow(clippy::too_many_arguments)]
fn metric_result(
    experiment: &Experiment,
    metric: &Metric,
    (arms, folded, series): (Vec<Arm>, &Folded, bool),
    users: &[u64],
    analysis: &Analysis,
    alpha: f64,
    srm: &SrmReport,
    exposed: &Exposed,
) -> MetricResult {
    let variants = &experiment.definition.variants;
    let control = control_index(experiment);
    let comparisons: Vec<Option<stats::Comparison>> = (0..variants.len())
        .map(|v| (v != control).then(|| stats::analyze(analysis, &arms[control], &arms[v])))
        .collect();
    // Holm over the treatments when there is more than one.
    let raw_p: Vec<Option<f64>> = comparisons
        .iter()
        .map(|c| c.as_ref().and_then(|c| c.absolute.p_value))
        .collect();
    let adjusted = if variants.len() > 2 {
        let treatment_p: Vec<Option<f64>> = raw_p
            .iter()
            .enumerate()
            .filter(|(v, _)| *v != control)
            .map(|(_, p)| *p)
            .collect();
        let mut adjusted_treatments = stats::holm(&treatment_p).into_iter();
        (0..variants.len())
            .map(|v| {
                if v == control {
                    None
                } else {
                    adjusted_treatments.next().flatten()
                }
            })
            .collect()
    } else {
        raw_p
    };

    let mut results = Vec::with_capacity(variants.len());
    for (v, variant) in variants.iter().enumerate() {
        let a = &arms[v];
        let comparison = comparisons[v].as_ref();
        // A comparison has already estimated its treatment arm.
        let estimate: ArmEstimate = comparison.map(|c| c.treatment).unwrap_or_else(|| {
            stats::compare::arm_estimate(a, analysis.method, 1.0 - analysis.confidence_level)
        });
        let significant = comparison.is_some_and(|c| {
            excludes_zero(c)
                && (analysis.engine == Engine::Bayesian || adjusted[v].is_some_and(|p| p < alpha))
        });
        results.push(VariantResult {
            key: variant.key.clone(),
            is_control: v == control,
            users: users[v],
            n: a.n(),
            conversions: (metric.kind == MetricKind::Conversion)
                .then(|| folded.total_s[v].round().max(0.0) as u64),
            total: folded.total_s[v],
            mean: stats::finite(a.mean()),
            variance: stats::finite(a.variance()),
            estimate: estimate.estimate,
            ci_low: estimate.ci_low,
            ci_high: estimate.ci_high,
            absolute: comparison.map(|c| c.absolute),
            relative: comparison.and_then(|c| c.relative),
            relative_reason: comparison.and_then(|c| c.relative_reason),
            chance_to_win: comparison.and_then(|c| c.chance_to_win),
            p_value_adjusted: adjusted[v],
            significant,
            cuped: comparison.and_then(|c| c.cuped),
        });
    }
    let (winner, winner_reason) = pick_winner(
        experiment,
        metric,
        &results,
        control,
        alpha,
        srm,
        analysis.engine,
    );
    MetricResult {
        metric: metric.clone(),
        // A ratio's series would need Σ m·d per bucket; not kept.
        timeseries: if series {
            timeseries(metric, folded, analysis, control, experiment, exposed)
        } else {
            Vec::new()
        },
        variants: results,
        winner,
        winner_reason,
        bucket_days: exposed.bucket_ms / DAY_MS,
    }
}

/// A winner only when SRM is clean and the difference is significant
/// (after Holm with more than two variants): the treatment with the best
/// lift among those significantly better than control; the control when
/// every treatment is significantly worse.
fn pick_winner(
    experiment: &Experiment,
    metric: &Metric,
    results: &[VariantResult],
    control: usize,
    alpha: f64,
    srm: &SrmReport,
    engine: Engine,
) -> (Option<Winner>, Option<String>) {
    if srm.test.srm_detected {
        return (
            None,
            Some(format!(
                "sample ratio mismatch: exposures do not fit the weights (p = {:.3e}); results are not trustworthy",
                srm.test.p_value.unwrap_or(0.0)
            )),
        );
    }
    if results.iter().any(|r| r.n == 0) {
        return (None, Some("a variant has no users with a value yet".into()));
    }
    let direction = if metric.higher_is_better { 1.0 } else { -1.0 };
    let lift = |r: &VariantResult| r.absolute.and_then(|a| a.estimate).unwrap_or(0.0) * direction;
    let winner_of = |i: usize| {
        let r = &results[i];
        Winner {
            key: r.key.clone(),
            name: experiment.definition.variants[i].name.clone(),
            metric: metric.key.clone(),
            absolute_lift: r.absolute.and_then(|a| a.estimate),
            relative_lift: r.relative.map(|x| x.estimate),
            p_value_adjusted: r.p_value_adjusted,
        }
    };
    let better = results
        .iter()
        .enumerate()
        .filter(|(i, r)| *i != control && r.significant && lift(r) > 0.0)
        .max_by(|a, b| lift(a.1).total_cmp(&lift(b.1)));
    if let Some((i, _)) = better {
        return (Some(winner_of(i)), None);
    }
    let treatments: Vec<&VariantResult> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != control)
        .map(|(_, r)| r)
        .collect();
    if !treatments.is_empty() && treatments.iter().all(|r| r.significant && lift(r) < 0.0) {
        return (Some(winner_of(control)), None);
    }
    let reason = match engine {
        Engine::Frequentist => {
            format!("no variant differs significantly from control at α = {alpha}")
        }
        Engine::Bayesian => "no variant's credible interval for the lift excludes zero".into(),
    };
    (None, Some(reason))
}

/// The cumulative estimates per bucket (of the unadjusted metric: CUPED's
/// covariate is not kept per bucket).
fn timeseries(
    metric: &Metric,
    folded: &Folded,
    analysis: &Analysis,
    control: usize,
    experiment: &Experiment,
    exposed: &Exposed,
) -> Vec<Point> {
    let variants = &experiment.definition.variants;
    let alpha = 1.0 - analysis.confidence_level;
    (0..exposed.buckets)
        .map(|b| {
            let arms: Vec<Arm> = (0..variants.len())
                .map(|v| arm(metric.kind, folded.n[v][b], folded.s[v][b], folded.q[v][b]))
                .collect();
            let start = exposed.origin + b as Millis * exposed.bucket_ms;
            let end = start + exposed.bucket_ms - 1;
            Point {
                date: format_rfc3339(start).chars().take(10).collect(),
                end: format_rfc3339(end),
                variants: variants
                    .iter()
                    .enumerate()
                    .map(|(v, variant)| {
                        let c = (v != control)
                            .then(|| stats::analyze(analysis, &arms[control], &arms[v]));
                        let e = c.as_ref().map(|c| c.treatment).unwrap_or_else(|| {
                            stats::compare::arm_estimate(&arms[v], analysis.method, alpha)
                        });
                        PointVariant {
                            key: variant.key.clone(),
                            n: arms[v].n(),
                            estimate: e.estimate,
                            ci_low: e.ci_low,
                            ci_high: e.ci_high,
                            lift: c.as_ref().map(|c| Interval {
                                estimate: c.absolute.estimate,
                                ci_low: c.absolute.ci_low,
                                ci_high: c.absolute.ci_high,
                            }),
                            relative_lift: c.and_then(|c| c.relative).map(|r| Interval {
                                estimate: Some(r.estimate),
                                ci_low: r.ci_low,
                                ci_high: r.ci_high,
                            }),
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}
