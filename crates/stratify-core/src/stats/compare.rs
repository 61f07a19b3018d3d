//! Two-arm comparison: per-arm intervals, absolute and relative lift with
//! intervals and two-sided p-values, and the chance to beat control.
//!
//! Notation: arm i has n_i users, mean m_i and per-user sample variance v_i.
//! For a conversion metric m_i = c_i/n_i and v_i = m_i(1 − m_i) (the
//! per-user Bernoulli variance, as GrowthBook uses). α = 1 − confidence level.

use super::dist::{norm_cdf, norm_isf, norm_sf, t_critical, t_two_sided};
use super::engines::{self, CupedArm, Engine, Part, Prior, RatioArm};
use super::{finite, Method};
use crate::ErrorCode;
use serde::Serialize;

/// One arm's summary statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arm {
    /// A conversion metric: `conversions` of `n` users converted.
    Rate { n: u64, conversions: u64 },
    /// Any other metric: the mean and the sample variance (ddof 1) per user.
    Mean { n: u64, mean: f64, variance: f64 },
    /// A ratio of two per-user sums (revenue per order), by the delta method.
    Ratio(RatioArm),
    /// A metric with its pre-exposure covariate, for CUPED.
    Cuped(CupedArm),
}

impl Arm {
    /// The arm from sums (gbstats `SampleMeanStatistic`): mean S/n and
    /// variance (Q − S²/n)/(n − 1), 0 for one user.
    pub fn from_sums(n: u64, sum: f64, sum_squares: f64) -> Arm {
        let part = Part::SampleMean { sum, sum_squares };
        let nf = n as f64;
        Arm::Mean {
            n,
            mean: if n == 0 { f64::NAN } else { part.mean(nf) },
            variance: part.variance(nf),
        }
    }

    pub fn n(&self) -> u64 {
        match *self {
            Arm::Rate { n, .. } | Arm::Mean { n, .. } => n,
            Arm::Ratio(r) => r.n,
            Arm::Cuped(c) => c.n,
        }
    }

    /// m = c/n for rates; NaN with no users. A ratio's ΣM/ΣD; a CUPED arm's
    /// unadjusted (post-exposure) mean.
    pub fn mean(&self) -> f64 {
        match *self {
            Arm::Rate { n, conversions } => conversions as f64 / n as f64,
            Arm::Mean { n, mean, .. } => {
                if n == 0 {
                    f64::NAN
                } else {
                    mean
                }
            }
            Arm::Ratio(r) => r.mean(),
            Arm::Cuped(c) => c.post.mean(c.n as f64),
        }
    }

    /// v = m(1 − m) for rates (per-user Bernoulli variance), else as given;
    /// a ratio's delta-method variance; a CUPED arm's unadjusted variance.
    pub fn variance(&self) -> f64 {
        match *self {
            Arm::Rate { .. } => {
                let m = self.mean();
                m * (1.0 - m)
            }
            Arm::Mean { variance, .. } => variance,
            Arm::Ratio(r) => r.variance(),
            Arm::Cuped(c) => c.post.variance(c.n as f64),
        }
    }

    /// (mean, unadjusted mean, variance) under CUPED's θ (other arms ignore it).
    fn resolved(&self, theta: f64) -> (f64, f64, f64) {
        match self {
            Arm::Cuped(c) => (
                c.adjusted_mean(theta),
                self.mean(),
                c.adjusted_variance(theta),
            ),
            _ => (self.mean(), self.mean(), self.variance()),
        }
    }
}

/// One arm's estimate and its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ArmEstimate {
    pub n: u64,
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// Treatment minus control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Absolute {
    pub estimate: Option<f64>,
    pub se: Option<f64>,
    pub statistic: Option<f64>,
    /// Welch–Satterthwaite degrees of freedom (`welch` only).
    pub df: Option<f64>,
    pub p_value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Bayesian engine: P(treatment better).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chance_to_win: Option<f64>,
    /// Bayesian engine: expected loss of keeping control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_control: Option<f64>,
    /// Bayesian engine: expected loss of shipping the treatment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_treatment: Option<f64>,
}

/// (Treatment − control) / control's unadjusted mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Relative {
    pub estimate: f64,
    pub se: f64,
    pub p_value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chance_to_win: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_control: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_treatment: Option<f64>,
}

impl Absolute {
    /// The sequential test's (interval, p-value); `None`: undefined.
    fn set_sequential(&mut self, test: Option<(f64, f64, f64)>) {
        let (lo, hi, p) = test.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        (self.ci_low, self.ci_high, self.p_value) = (finite(lo), finite(hi), finite(p));
        (self.statistic, self.df) = (None, None);
    }

    /// The Bayesian posterior replaces the frequentist numbers.
    fn set_posterior(&mut self, posterior: Option<engines::Posterior>) {
        match posterior {
            Some(p) => {
                (self.estimate, self.se) = (finite(p.mean), finite(p.sd));
                (self.ci_low, self.ci_high) = (finite(p.ci_low), finite(p.ci_high));
                self.chance_to_win = finite(p.chance_to_win);
                self.risk_control = finite(p.risk_control);
                self.risk_treatment = finite(p.risk_treatment);
            }
            None => (self.ci_low, self.ci_high) = (None, None),
        }
        (self.statistic, self.df, self.p_value) = (None, None, None);
    }
}

impl Relative {
    fn set_sequential(&mut self, test: Option<(f64, f64, f64)>) {
        let (lo, hi, p) = test.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        (self.ci_low, self.ci_high, self.p_value) = (finite(lo), finite(hi), finite(p));
    }

    fn set_posterior(&mut self, posterior: Option<engines::Posterior>) {
        match posterior {
            Some(p) => {
                (self.estimate, self.se) = (p.mean, p.sd);
                (self.ci_low, self.ci_high) = (finite(p.ci_low), finite(p.ci_high));
                self.chance_to_win = finite(p.chance_to_win);
                self.risk_control = finite(p.risk_control);
                self.risk_treatment = finite(p.risk_treatment);
            }
            None => (self.ci_low, self.ci_high) = (None, None),
        }
        self.p_value = None;
    }
}

/// How a comparison is analysed: the engine, the frequentist method, the
/// confidence level, the sequential test's tuning, the Bayesian prior and
/// whether CUPED arms are adjusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analysis {
    pub engine: Engine,
    pub method: Method,
    pub confidence_level: f64,
    /// `Some(τ)`: the always-valid sequential test with tuning τ.
    pub sequential: Option<f64>,
    pub prior: Prior,
    /// `false`: CUPED arms are analysed on their post-exposure values alone.
    pub cuped: bool,
}

impl Analysis {
    pub fn fixed(method: Method, confidence_level: f64) -> Self {
        Self {
            engine: Engine::Frequentist,
            method,
            confidence_level,
            sequential: None,
            prior: Prior::default(),
            cuped: true,
        }
    }
}

/// What CUPED did to a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CupedReport {
    /// θ pooled over both arms (0: the pre-period has no variance, so the
    /// analysis is unadjusted).
    pub theta: f64,
    /// 1 − Var(adjusted lift)/Var(unadjusted lift), on the absolute scale.
    pub variance_reduction: Option<f64>,
    /// Welch's test of the covariate's means between the arms: a small
    /// p-value says the arms differed before exposure.
    pub balance_p_value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub engine: Engine,
    pub method: Method,
    pub confidence_level: f64,
    /// The sequential test's tuning, when it was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequential_tuning: Option<f64>,
    /// The prior, under the Bayesian engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior: Option<Prior>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuped: Option<CupedReport>,
    pub control: ArmEstimate,
    pub treatment: ArmEstimate,
    pub absolute: Absolute,
    pub relative: Option<Relative>,
    /// Why `relative` is null, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_reason: Option<&'static str>,
    pub chance_to_win: Option<f64>,
}

/// The interval of one arm's rate or mean.
///
/// Rates: Wilson's score interval, with z = Φ⁻¹(1 − α/2) for every method:
///   centre = (p + z²/2n) / (1 + z²/n),
///   half   = z·√(p(1−p)/n + z²/4n²) / (1 + z²/n).
/// Means: m ± q·√(v/n), q the t quantile with n − 1 df (`welch`) or the
/// normal quantile (`z`, `z_pooled`).
pub fn arm_estimate(arm: &Arm, method: Method, alpha: f64) -> ArmEstimate {
    let n = arm.n();
    if n == 0 {
        return ArmEstimate {
            n,
            estimate: None,
            ci_low: None,
            ci_high: None,
        };
    }
    let nf = n as f64;
    let m = arm.mean();
    let (low, high) = match *arm {
        Arm::Rate { .. } => {
            let z = norm_isf(alpha / 2.0);
            let z2 = z * z;
            let denom = 1.0 + z2 / nf;
            let centre = (m + z2 / (2.0 * nf)) / denom;
            let half = z * (m * (1.0 - m) / nf + z2 / (4.0 * nf * nf)).sqrt() / denom;
            // At 0 and n conversions the limits are exactly 0 and 1.
            let low = if m == 0.0 { 0.0 } else { centre - half };
            let high = if m == 1.0 { 1.0 } else { centre + half };
            (low, high)
        }
        Arm::Mean { .. } | Arm::Ratio(_) | Arm::Cuped(_) => {
            let variance = arm.variance();
            let q = match method {
                Method::Welch if n >= 2 => t_critical(alpha, nf - 1.0),
                Method::Welch => f64::NAN,
                Method::Z | Method::ZPooled => norm_isf(alpha / 2.0),
            };
            let se = (variance / nf).sqrt();
            if se > 0.0 {
                (m - q * se, m + q * se)
            } else {
                (f64::NAN, f64::NAN)
            }
        }
    };
    ArmEstimate {
        n,
        estimate: finite(m),
        ci_low: finite(low),
        ci_high: finite(high),
    }
}

/// The quantile and the two-sided p-value function of a method, given the
/// degrees of freedom (Welch) of the comparison.
struct Reference {
    quantile: f64,
    df: f64,
    t: bool,
}

impl Reference {
    fn p_value(&self, statistic: f64) -> f64 {
        if self.t {
            t_two_sided(statistic, self.df)
        } else {
            2.0 * norm_sf(statistic.abs())
        }
    }
}

/// Compares a treatment arm with the control arm.
///
/// Absolute lift d = m_t − m_c with unpooled se = √(v_t/n_t + v_c/n_c).
/// - `welch`: statistic d/se against Student's t with the Welch–Satterthwaite
///   df = (v_t/n_t + v_c/n_c)² / ((v_t/n_t)²/(n_t−1) + (v_c/n_c)²/(n_c−1));
///   interval d ± t_{1−α/2, df}·se.
/// - `z`: statistic d/se against the normal; interval d ± z_{1−α/2}·se.
/// - `z_pooled`: the statistic and p-value use the pooled se under H0 —
///   rates: p̄ = (c_t + c_c)/(n_t + n_c), se₀ = √(p̄(1−p̄)(1/n_t + 1/n_c))
///   (statsmodels `proportions_ztest`); means: s² = ((n_t−1)v_t +
///   (n_c−1)v_c)/(n_t + n_c − 2), se₀ = √(s²(1/n_t + 1/n_c)) — while the
///   interval keeps the unpooled se.
///
/// Relative lift r = m_t/m_c − 1 by the delta method:
/// var(r) = v_t/(m_c² n_t) + v_c·m_t²/(m_c⁴ n_c); its statistic r/se(r) is
/// referred to the same distribution (same df) as the absolute scale, and
/// its interval is r ± q·se(r). A zero control mean leaves it undefined.
///
/// Chance to win = Φ(r / se(r)): the posterior probability that the
/// treatment beats control under a flat prior and a normal likelihood.
///
/// Anything that divides by zero (a zero se, an arm with no users, a Welch
/// arm with one user) is `None`, never a made-up number.
pub fn compare(
    method: Method,
    confidence_level: f64,
    control: &Arm,
    treatment: &Arm,
) -> Comparison {
    analyze(
        &Analysis::fixed(method, confidence_level),
        control,
        treatment,
    )
}

/// The difference on one scale: estimate and its variance.
struct Scale {
    estimate: f64,
    variance: f64,
}

/// [`compare`] under any engine and test (see [`Analysis`]).
///
/// CUPED arms are adjusted by θ pooled over both arms
/// ([`engines::theta`]): each arm's mean becomes μ_post − θμ_pre and its
/// variance var(post) + θ²var(pre) − 2θ·cov; the relative lift divides by
/// the control's *unadjusted* mean, and its delta-method variance uses the
/// unadjusted means (gbstats `frequentist_variance`).
///
/// - Frequentist, fixed horizon: as above (`welch`, `z`, `z_pooled`).
/// - Frequentist, sequential: [`engines::sequential`] on each scale.
/// - Bayesian: [`engines::posterior`] on each scale, the prior moved to the
///   scale by the control's unadjusted mean ([`Prior::on_scale`]).
pub fn analyze(analysis: &Analysis, control: &Arm, treatment: &Arm) -> Comparison {
    let method = analysis.method;
    let confidence_level = analysis.confidence_level;
    let alpha = 1.0 - confidence_level;
    let control_estimate = arm_estimate(control, method, alpha);
    let treatment_estimate = arm_estimate(treatment, method, alpha);
    let (nc, nt) = (control.n() as f64, treatment.n() as f64);
    let (theta, cuped) = match (control, treatment) {
        (Arm::Cuped(a), Arm::Cuped(b)) => {
            let theta = if analysis.cuped {
                engines::theta(a, b)
            } else {
                0.0
            };
            let unadjusted = a.post.variance(nc) / nc + b.post.variance(nt) / nt;
            let adjusted = a.adjusted_variance(theta) / nc + b.adjusted_variance(theta) / nt;
            let (pa, pb) = (a.pre.variance(nc) / nc, b.pre.variance(nt) / nt);
            let balance = (b.pre.mean(nt) - a.pre.mean(nc)) / (pa + pb).sqrt();
            let balance_df = (pa + pb).powi(2) / (pa * pa / (nc - 1.0) + pb * pb / (nt - 1.0));
            (
                theta,
                Some(CupedReport {
                    theta,
                    variance_reduction: finite(1.0 - adjusted / unadjusted),
                    balance_p_value: finite(t_two_sided(balance, balance_df)),
                }),
            )
        }
        _ => (0.0, None),
    };
    let (mc, mc_raw, vc) = control.resolved(theta);
    let (mt, mt_raw, vt) = treatment.resolved(theta);
    let (wc, wt) = (vc / nc, vt / nt);
    let se = (wt + wc).sqrt();
    let diff = mt - mc;

    let reference = match method {
        Method::Welch => {
            let df = if control.n() >= 2 && treatment.n() >= 2 {
                (wt + wc).powi(2) / (wt * wt / (nt - 1.0) + wc * wc / (nc - 1.0))
            } else {
                f64::NAN
            };
            Reference {
                quantile: t_critical(alpha, df),
                df,
                t: true,
            }
        }
        Method::Z | Method::ZPooled => Reference {
            quantile: norm_isf(alpha / 2.0),
            df: f64::NAN,
            t: false,
        },
    };
    let null_se = match (method, control, treatment) {
        (
            Method::ZPooled,
            Arm::Rate {
                conversions: cc, ..
            },
            Arm::Rate {
                conversions: ct, ..
            },
        ) => {
            let pooled = (*cc + *ct) as f64 / (nc + nt);
            (pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nc)).sqrt()
        }
        (Method::ZPooled, _, _) => {
            let pooled = ((nt - 1.0) * vt + (nc - 1.0) * vc) / (nt + nc - 2.0);
            (pooled * (1.0 / nt + 1.0 / nc)).sqrt()
        }
        _ => se,
    };
    let defined = se > 0.0 && se.is_finite();
    let statistic = if null_se > 0.0 {
        diff / null_se
    } else {
        f64::NAN
    };
    let absolute_scale = Scale {
        estimate: diff,
        variance: wt + wc,
    };
    let mut absolute = Absolute {
        estimate: finite(diff),
        se: finite(se),
        statistic: finite(statistic),
        df: finite(reference.df),
        p_value: finite(reference.p_value(statistic)),
        ci_low: finite(if defined {
            diff - reference.quantile * se
        } else {
            f64::NAN
        }),
        ci_high: finite(if defined {
            diff + reference.quantile * se
        } else {
            f64::NAN
        }),
        chance_to_win: None,
        risk_control: None,
        risk_treatment: None,
    };

    let relative_scale = if control.n() == 0 || treatment.n() == 0 {
        Err("an arm has no users")
    } else if mc_raw == 0.0 || mc == 0.0 {
        Err("the control mean is 0, so a ratio to it is undefined")
    } else {
        Ok(Scale {
            estimate: (mt - mc) / mc_raw,
            variance: vt / (mc_raw * mc_raw * nt) + vc * mt_raw * mt_raw / (mc_raw.powi(4) * nc),
        })
    };
    let (mut relative, relative_reason) = match &relative_scale {
        Err(reason) => (None, Some(*reason)),
        Ok(r) => {
            let se = r.variance.sqrt();
            let defined = se > 0.0 && se.is_finite();
            let statistic = if defined { r.estimate / se } else { f64::NAN };
            let relative = Relative {
                estimate: r.estimate,
                se,
                p_value: finite(reference.p_value(statistic)),
                ci_low: finite(if defined {
                    r.estimate - reference.quantile * se
                } else {
                    f64::NAN
                }),
                ci_high: finite(if defined {
                    r.estimate + reference.quantile * se
                } else {
                    f64::NAN
                }),
                chance_to_win: None,
                risk_control: None,
                risk_treatment: None,
            };
            (Some(relative), None)
        }
    };
    let mut chance_to_win = relative.and_then(|r| {
        if r.se > 0.0 {
            finite(norm_cdf(r.estimate / r.se))
        } else {
            None
        }
    });
    // As gbstats, an arm without variance leaves nothing to infer.
    let usable = |s: &Scale| {
        vc > 0.0 && vt > 0.0 && s.variance > 0.0 && s.variance.is_finite() && s.estimate.is_finite()
    };
    if let (Engine::Frequentist, Some(tuning)) = (analysis.engine, analysis.sequential) {
        let sequential = |scale: &Scale| {
            usable(scale).then(|| {
                engines::sequential(scale.estimate, scale.variance, nc + nt, alpha, tuning)
            })
        };
        absolute.set_sequential(sequential(&absolute_scale));
        if let (Some(rel), Ok(scale)) = (relative.as_mut(), &relative_scale) {
            rel.set_sequential(sequential(scale));
        }
    }
    if analysis.engine == Engine::Bayesian {
        let bayes = |scale: &Scale, relative: bool| {
            usable(scale).then(|| {
                let prior = analysis.prior.on_scale(relative, mc_raw);
                engines::posterior(scale.estimate, scale.variance, &prior, alpha)
            })
        };
        absolute.set_posterior(bayes(&absolute_scale, false));
        if let (Some(rel), Ok(scale)) = (relative.as_mut(), &relative_scale) {
            rel.set_posterior(bayes(scale, true));
        }
        chance_to_win = relative.and_then(|r| r.chance_to_win);
    }
    Comparison {
        engine: analysis.engine,
        method,
        confidence_level,
        sequential_tuning: analysis.sequential,
        prior: (analysis.engine == Engine::Bayesian).then_some(analysis.prior),
        cuped,
        control: control_estimate,
        treatment: treatment_estimate,
        absolute,
        relative,
        relative_reason,
        chance_to_win,
    }
}

/// Holm's step-down adjustment of m p-values: sorted ascending,
/// p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)). `None` stays `None` and
/// does not count towards m.
pub fn holm(p_values: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut order: Vec<(usize, f64)> = p_values
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1));
    let m = order.len();
    let mut adjusted = vec![None; p_values.len()];
    let mut running = 0.0_f64;
    for (rank, (index, p)) in order.into_iter().enumerate() {
        running = running.max(((m - rank) as f64 * p).min(1.0));
        adjusted[index] = Some(running);
    }
    adjusted
}

/// Largest arm accepted by the calculator (users).
pub const MAX_N: u64 = 1_000_000_000_000;

/// One arm as a client sends it: `{n, conversions}`, `{n, mean, variance}`,
/// `{n, sum, sum_squares}`, `{n, ratio: {numerator, denominator,
/// sum_of_products}}` or `{n, cuped: {post, pre, sum_of_products}}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmInput {
    pub n: u64,
    pub conversions: Option<u64>,
    pub mean: Option<f64>,
    pub variance: Option<f64>,
    pub sum: Option<f64>,
    pub sum_squares: Option<f64>,
    pub ratio: Option<RatioInput>,
    pub cuped: Option<CupedInput>,
}

/// A part of a ratio or CUPED arm: `{sum, sum_squares}` or `{conversions}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartInput {
    pub sum: Option<f64>,
    pub sum_squares: Option<f64>,
    pub conversions: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatioInput {
    pub numerator: PartInput,
    pub denominator: PartInput,
    pub sum_of_products: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CupedInput {
    pub post: PartInput,
    pub pre: PartInput,
    pub sum_of_products: f64,
}

fn invalid_arm(at: String, message: &str) -> crate::ValidationError {
    crate::ValidationError::new(ErrorCode::InvalidArm, message).at(at)
}

impl PartInput {
    fn to_part(self, n: u64, at: &str) -> Result<Part, crate::ValidationError> {
        match (self.sum, self.sum_squares, self.conversions) {
            (Some(sum), Some(sum_squares), None) => {
                check_sums(n, sum, sum_squares, at)?;
                Ok(Part::SampleMean { sum, sum_squares })
            }
            (None, None, Some(c)) if c <= n => Ok(Part::Proportion { sum: c as f64 }),
            (None, None, Some(_)) => Err(invalid_arm(
                format!("{at}/conversions"),
                "conversions cannot exceed n",
            )),
            _ => Err(invalid_arm(
                at.to_owned(),
                "a part is {sum, sum_squares} or {conversions}",
            )),
        }
    }
}

/// Sums that some real values could have: finite, and Q ≥ S²/n (give or
/// take rounding).
fn check_sums(n: u64, sum: f64, sum_squares: f64, at: &str) -> Result<(), crate::ValidationError> {
    if !sum.is_finite() || !sum_squares.is_finite() || sum_squares < 0.0 {
        return Err(invalid_arm(
            format!("{at}/sum_squares"),
            "sum and sum_squares must be finite, sum_squares ≥ 0",
        ));
    }
    let floor = sum * sum / n as f64;
    if sum_squares < floor - 1e-9 * floor.abs().max(1.0) {
        return Err(invalid_arm(
            format!("{at}/sum_squares"),
            "sum_squares cannot be below sum²/n (no values have these sums)",
        ));
    }
    Ok(())
}

impl ArmInput {
    /// Checks the arm; errors point below `at` (e.g. `/control`).
    pub fn to_arm(&self, at: &str) -> Result<Arm, crate::ValidationError> {
        let err = |field: &str, message: &str| invalid_arm(format!("{at}/{field}"), message);
        if self.n == 0 || self.n > MAX_N {
            return Err(err("n", "n must be between 1 and 10^12"));
        }
        let n = self.n;
        // Exactly one form's fields, and nothing else.
        match (
            self.conversions,
            self.mean,
            self.variance,
            self.sum,
            self.sum_squares,
            self.ratio,
            self.cuped,
        ) {
            (Some(c), None, None, None, None, None, None) => {
                if c > n {
                    return Err(err("conversions", "conversions cannot exceed n"));
                }
                Ok(Arm::Rate { n, conversions: c })
            }
            (None, Some(mean), Some(variance), None, None, None, None) => {
                if !mean.is_finite() {
                    return Err(err("mean", "mean must be a finite number"));
                }
                if !variance.is_finite() || variance < 0.0 {
                    return Err(err("variance", "variance must be a finite number ≥ 0"));
                }
                Ok(Arm::Mean { n, mean, variance })
            }
            (None, None, None, Some(sum), Some(sum_squares), None, None) => {
                check_sums(n, sum, sum_squares, at)?;
                Ok(Arm::from_sums(n, sum, sum_squares))
            }
            (None, None, None, None, None, Some(r), None) => {
                let numerator = r.numerator.to_part(n, &format!("{at}/ratio/numerator"))?;
                let denominator = r.denominator.to_part(n, &format!("{at}/ratio/denominator"))?;
                if !r.sum_of_products.is_finite() {
                    return Err(err("ratio/sum_of_products", "sum_of_products must be finite"));
                }
                Ok(Arm::Ratio(RatioArm {
                    n,
                    numerator,
                    denominator,
                    sum_of_products: r.sum_of_products,
                }))
            }
            (None, None, None, None, None, None, Some(c)) => {
                let post = c.post.to_part(n, &format!("{at}/cuped/post"))?;
                let pre = c.pre.to_part(n, &format!("{at}/cuped/pre"))?;
                if !c.sum_of_products.is_finite() {
                    return Err(err("cuped/sum_of_products", "sum_of_products must be finite"));
                }
                Ok(Arm::Cuped(CupedArm {
                    n,
                    post,
                    pre,
                    sum_of_products: c.sum_of_products,
                }))
            }
            _ => Err(invalid_arm(
                at.to_owned(),
                "an arm is {n, conversions}, {n, mean, variance}, {n, sum, sum_squares}, {n, ratio} or {n, cuped}",
            )),
        }
    }
}

/// `"sequential": {"tuning": τ}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialInput {
    #[serde(default = "default_tuning")]
    pub tuning: f64,
}

/// GrowthBook's default tuning (the sample size the interval is tightest at).
pub fn default_tuning() -> f64 {
    5000.0
}

/// Checks an analysis's options together (the calculator's and the
/// results'); errors name the offending field.
pub fn check_analysis(analysis: &Analysis) -> Result<(), crate::ValidationError> {
    use crate::ValidationError;
    if let Some(tuning) = analysis.sequential {
        if !(1.0..=1e12).contains(&tuning) {
            return Err(ValidationError::new(
                ErrorCode::OutOfRange,
                "the sequential tuning is a number of users from 1 to 10^12",
            )
            .at("/sequential/tuning"));
        }
        if analysis.engine == Engine::Bayesian {
            return Err(ValidationError::new(
                ErrorCode::InvalidRequest,
                "the sequential test is frequentist; the Bayesian engine needs none",
            )
            .at("/sequential"));
        }
    }
    if (analysis.sequential.is_some() || analysis.engine == Engine::Bayesian)
        && analysis.method != Method::Welch
    {
        return Err(ValidationError::new(
            ErrorCode::InvalidRequest,
            "the sequential test and the Bayesian engine use their own statistics: leave method at welch",
        )
        .at("/method"));
    }
    let p = &analysis.prior;
    if !(p.mean.is_finite() && p.variance.is_finite() && p.variance > 0.0) {
        return Err(ValidationError::new(
            ErrorCode::OutOfRange,
            "a prior has a finite mean and a variance > 0",
        )
        .at("/prior"));
    }
    Ok(())
}

/// A calculator request: two arms of the same kind, and how to analyse them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareInput {
    #[serde(default)]
    pub engine: Engine,
    #[serde(default)]
    pub method: Method,
    #[serde(default = "default_confidence")]
    pub confidence_level: f64,
    pub sequential: Option<SequentialInput>,
    pub prior: Option<Prior>,
    pub control: ArmInput,
    pub treatment: ArmInput,
}

fn default_confidence() -> f64 {
    0.95
}

/// Checks a confidence level in (0, 1).
pub fn check_confidence(level: f64, at: &str) -> Result<f64, crate::ValidationError> {
    if level > 0.0 && level < 1.0 {
        Ok(level)
    } else {
        Err(crate::ValidationError::new(
            ErrorCode::OutOfRange,
            "confidence_level must be in (0, 1)",
        )
        .at(at.to_owned()))
    }
}

impl CompareInput {
    /// Validates and compares.
    pub fn run(&self) -> Result<Comparison, crate::ValidationError> {
        let level = check_confidence(self.confidence_level, "/confidence_level")?;
        let control = self.control.to_arm("/control")?;
        let treatment = self.treatment.to_arm("/treatment")?;
        let same_parts =
            |a: &Part, b: &Part| std::mem::discriminant(a) == std::mem::discriminant(b);
        let same_kind = match (&control, &treatment) {
            (Arm::Ratio(a), Arm::Ratio(b)) => {
                same_parts(&a.numerator, &b.numerator) && same_parts(&a.denominator, &b.denominator)
            }
            (Arm::Cuped(a), Arm::Cuped(b)) => {
                same_parts(&a.post, &b.post) && same_parts(&a.pre, &b.pre)
            }
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        };
        if !same_kind {
            return Err(crate::ValidationError::new(
                ErrorCode::InvalidArm,
                "both arms must be of the same form (rates, means or sums, ratios, CUPED), with parts of the same kinds",
            )
            .at("/treatment"));
        }
        if self.prior.is_some() && self.engine != Engine::Bayesian {
            return Err(crate::ValidationError::new(
                ErrorCode::InvalidRequest,
                "a prior is for the Bayesian engine (\"engine\": \"bayesian\")",
            )
            .at("/prior"));
        }
        if self.method == Method::ZPooled && matches!(control, Arm::Ratio(_) | Arm::Cuped(_)) {
            return Err(crate::ValidationError::new(
                ErrorCode::InvalidRequest,
                "z_pooled pools rates or means; ratio and CUPED arms take welch or z",
            )
            .at("/method"));
        }
        let analysis = Analysis {
            engine: self.engine,
            method: self.method,
            confidence_level: level,
            sequential: self.sequential.map(|s| s.tuning),
            prior: self.prior.unwrap_or_default(),
            cuped: true,
        };
        check_analysis(&analysis)?;
        Ok(analyze(&analysis, &control, &treatment))
    }
}
