//! The statistics of GrowthBook's engine (`gbstats` 0.8.0, MIT), to its
//! numbers: arms from sums, ratio metrics and CUPED as gbstats'
//! `SampleMeanStatistic`, `RatioStatistic` and `RegressionAdjustedStatistic`
//! (`models/statistics.py`), the sequential test `SequentialTwoSidedTTest`
//! (`frequentist/tests.py`, Waudby-Smith et al. 2023) and the Bayesian
//! `EffectBayesianABTest` (`bayesian/tests.py`). Formulas are written next to
//! their code; `tests/gbstats_reference.rs` checks them against gbstats
//! itself to 1e-9 relative.

use super::dist::{norm_cdf, norm_pdf, norm_ppf};
use serde::{Deserialize, Serialize};

/// One part of a ratio or CUPED arm: a proportion (`conversions`) or a
/// sample mean (`sum`, `sum_squares`), over the arm's n users.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    Proportion { sum: f64 },
    SampleMean { sum: f64, sum_squares: f64 },
}

impl Part {
    pub fn sum(&self) -> f64 {
        match *self {
            Part::Proportion { sum } | Part::SampleMean { sum, .. } => sum,
        }
    }

    /// Σx²; a proportion's values are 0 or 1, so it is Σx.
    pub fn sum_squares(&self) -> f64 {
        match *self {
            Part::Proportion { sum } => sum,
            Part::SampleMean { sum_squares, .. } => sum_squares,
        }
    }

    /// S/n (0 with no users, as gbstats).
    pub fn mean(&self, n: f64) -> f64 {
        if n == 0.0 {
            0.0
        } else {
            self.sum() / n
        }
    }

    /// Proportion: p(1 − p). Sample mean: (Q − S²/n)/(n − 1), 0 for n ≤ 1.
    pub fn variance(&self, n: f64) -> f64 {
        match *self {
            Part::Proportion { .. } => {
                let p = self.mean(n);
                p * (1.0 - p)
            }
            Part::SampleMean { sum, sum_squares } => {
                if n <= 1.0 {
                    0.0
                } else {
                    (sum_squares - sum * sum / n) / (n - 1.0)
                }
            }
        }
    }

    /// Both arms' parts as one (gbstats `create_joint_statistic`); `None`
    /// when their kinds differ.
    pub fn joint(&self, other: &Part) -> Option<Part> {
        match (*self, *other) {
            (Part::Proportion { sum: a }, Part::Proportion { sum: b }) => {
                Some(Part::Proportion { sum: a + b })
            }
            (
                Part::SampleMean {
                    sum: a,
                    sum_squares: qa,
                },
                Part::SampleMean {
                    sum: b,
                    sum_squares: qb,
                },
            ) => Some(Part::SampleMean {
                sum: a + b,
                sum_squares: qa + qb,
            }),
            _ => None,
        }
    }
}

/// cov(x, y) = (Σxy − Σx·Σy/n)/(n − 1), 0 for n ≤ 1.
pub fn covariance(n: f64, x: &Part, y: &Part, sum_of_products: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else {
        (sum_of_products - x.sum() * y.sum() / n) / (n - 1.0)
    }
}

/// A CUPED arm: the metric after exposure (`post`), the covariate before it
/// (`pre`) and Σ post·pre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CupedArm {
    pub n: u64,
    pub post: Part,
    pub pre: Part,
    pub sum_of_products: f64,
}

/// θ pooled over both arms (gbstats `compute_theta`): the joint
/// cov(post, pre)/var(pre), where the joint parts add both arms' sums over
/// n = n_a + n_b. 0 when the joint pre or post has no variance (the
/// analysis is then unadjusted), and when the parts' kinds differ.
pub fn theta(a: &CupedArm, b: &CupedArm) -> f64 {
    let n = (a.n + b.n) as f64;
    let (Some(post), Some(pre)) = (a.post.joint(&b.post), a.pre.joint(&b.pre)) else {
        return 0.0;
    };
    let (var_pre, var_post) = (pre.variance(n), post.variance(n));
    if var_pre == 0.0 || var_post == 0.0 {
        return 0.0;
    }
    covariance(n, &post, &pre, a.sum_of_products + b.sum_of_products) / var_pre
}

impl CupedArm {
    /// The adjusted mean μ_post − θ·μ_pre.
    pub fn adjusted_mean(&self, theta: f64) -> f64 {
        let n = self.n as f64;
        self.post.mean(n) - theta * self.pre.mean(n)
    }

    /// var(post) + θ²·var(pre) − 2θ·cov(post, pre), 0 for n ≤ 1.
    pub fn adjusted_variance(&self, theta: f64) -> f64 {
        let n = self.n as f64;
        if n <= 1.0 {
            return 0.0;
        }
        self.post.variance(n) + theta * theta * self.pre.variance(n)
            - 2.0 * theta * covariance(n, &self.post, &self.pre, self.sum_of_products)
    }
}

/// A ratio arm: numerator and denominator sample means and Σ m·d.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioArm {
    pub n: u64,
    pub numerator: Part,
    pub denominator: Part,
    pub sum_of_products: f64,
}

impl RatioArm {
    /// ΣM/ΣD (0 when ΣD is 0, as gbstats).
    pub fn mean(&self) -> f64 {
        if self.denominator.sum() == 0.0 {
            0.0
        } else {
            self.numerator.sum() / self.denominator.sum()
        }
    }

    /// The delta method (gbstats `RatioStatistic.variance`):
    /// var(M)/μ_D² − 2·cov(M, D)·μ_M/μ_D³ + μ_M²·var(D)/μ_D⁴; 0 when μ_D is 0
    /// or n ≤ 1.
    pub fn variance(&self) -> f64 {
        let n = self.n as f64;
        let (mm, md) = (self.numerator.mean(n), self.denominator.mean(n));
        if md == 0.0 || n <= 1.0 {
            return 0.0;
        }
        let cov = covariance(n, &self.numerator, &self.denominator, self.sum_of_products);
        self.numerator.variance(n) / (md * md) - 2.0 * cov * mm / md.powi(3)
            + mm * mm * self.denominator.variance(n) / md.powi(4)
    }
}

/// Which engine analyses a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    #[default]
    Frequentist,
    Bayesian,
}

impl Engine {
    pub fn parse(s: &str) -> Option<Engine> {
        match s {
            "frequentist" => Some(Engine::Frequentist),
            "bayesian" => Some(Engine::Bayesian),
            _ => None,
        }
    }
}

/// The scale a prior is stated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorType {
    #[default]
    Relative,
    Absolute,
}

/// A Gaussian prior on the effect (gbstats `GaussianPrior`): used only when
/// `proper`; otherwise the posterior is the likelihood (a flat prior).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prior {
    #[serde(default)]
    pub mean: f64,
    #[serde(default = "one")]
    pub variance: f64,
    #[serde(default)]
    pub proper: bool,
    #[serde(default, rename = "type")]
    pub kind: PriorType,
}

fn one() -> f64 {
    1.0
}

impl Default for Prior {
    fn default() -> Self {
        Self {
            mean: 0.0,
            variance: 1.0,
            proper: false,
            kind: PriorType::Relative,
        }
    }
}

impl Prior {
    /// The prior on the scale of the analysis (gbstats rescales by the
    /// control's unadjusted mean: relative → absolute multiplies the mean by
    /// |μ_a| and the variance by μ_a², and back divides).
    pub fn on_scale(&self, relative: bool, control_mean: f64) -> Prior {
        let (mean, variance) = match (relative, self.kind) {
            (true, PriorType::Absolute) => (
                self.mean / control_mean.abs(),
                self.variance / (control_mean * control_mean),
            ),
            (false, PriorType::Relative) => (
                self.mean * control_mean.abs(),
                self.variance * control_mean * control_mean,
            ),
            _ => (self.mean, self.variance),
        };
        Prior {
            mean,
            variance,
            proper: self.proper,
            kind: if relative {
                PriorType::Relative
            } else {
                PriorType::Absolute
            },
        }
    }
}

/// The posterior of an effect and what is read from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posterior {
    pub mean: f64,
    pub sd: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub chance_to_win: f64,
    pub risk_control: f64,
    pub risk_treatment: f64,
}

/// gbstats `EffectBayesianABTest`: with data mean d and variance v,
/// precision 1/v + 𝟙(proper)/σ₀²; mean (d/v + μ₀/σ₀²)/precision when the
/// prior is proper, else d; sd 1/√precision. Credible interval
/// mean + sd·Φ⁻¹(α/2 … 1 − α/2); chance to win Φ(mean/sd); risk of choosing
/// control E[max(Δ, 0)] = μΦ(μ/σ) + σφ(μ/σ), of choosing treatment
/// E[max(−Δ, 0)] = −μΦ(−μ/σ) + σφ(μ/σ) (gbstats' truncated-normal means
/// times their probabilities, in closed form).
pub fn posterior(data_mean: f64, data_variance: f64, prior: &Prior, alpha: f64) -> Posterior {
    let proper = if prior.proper { 1.0 } else { 0.0 };
    let precision = 1.0 / data_variance + proper / prior.variance;
    let mean = if prior.proper {
        (data_mean / data_variance + prior.mean / prior.variance) / precision
    } else {
        data_mean
    };
    let sd = (1.0 / precision).sqrt();
    let z = mean / sd;
    let density = norm_pdf(z);
    Posterior {
        mean,
        sd,
        ci_low: mean + sd * norm_ppf(alpha / 2.0),
        ci_high: mean + sd * norm_ppf(1.0 - alpha / 2.0),
        chance_to_win: norm_cdf(z),
        risk_control: mean * norm_cdf(z) + sd * density,
        risk_treatment: -mean * norm_cdf(-z) + sd * density,
    }
}

/// gbstats `SequentialTwoSidedTTest` (Waudby-Smith et al. 2023,
/// arXiv 2103.06476v7): with N = n_a + n_b, the estimate's variance v and
/// tuning τ, ρ = √((−2 ln α + ln(−2 ln α + 1))/τ) (eq. 161) and s² = v·N,
/// the always-valid interval is estimate ± √s²·√(2(Nρ² + 1)·ln(√(Nρ² + 1)/α)/(Nρ)²)
/// (eq. 9), and the p-value min(1, 1/E) with
/// E = exp(ρ²·t²/(2(Nρ² + 1)))/√(Nρ² + 1), t² = estimate²·N/v (eq. 155).
pub fn sequential(
    estimate: f64,
    variance: f64,
    n_total: f64,
    alpha: f64,
    tuning: f64,
) -> (f64, f64, f64) {
    let rho = ((-2.0 * alpha.ln() + (-2.0 * alpha.ln() + 1.0).ln()) / tuning).sqrt();
    let nr2 = n_total * rho * rho;
    let s2 = variance * n_total;
    let width = s2.sqrt()
        * ((2.0 * (nr2 + 1.0)) * ((nr2 + 1.0).sqrt() / alpha).ln() / (n_total * rho).powi(2))
            .sqrt();
    let st2 = estimate * estimate * n_total / variance;
    // ln E, so that a large statistic gives p = 0 instead of overflowing.
    let ln_e = rho * rho * st2 / (2.0 * (nr2 + 1.0)) - 0.5 * (nr2 + 1.0).ln();
    let p = (-ln_e).exp().min(1.0);
    (estimate - width, estimate + width, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_is_the_expected_loss_of_each_choice() {
        // E[max(Δ,0)] − E[max(−Δ,0)] = E[Δ] = μ for any normal.
        for (mu, sd) in [(0.1, 0.05), (-0.3, 0.2), (0.0, 1.0), (2.0, 0.5)] {
            let p = posterior(mu, sd * sd, &Prior::default(), 0.05);
            assert!((p.risk_control - p.risk_treatment - mu).abs() < 1e-12);
            assert!(p.risk_control >= 0.0 && p.risk_treatment >= 0.0);
        }
    }

    #[test]
    fn a_proper_prior_shrinks_towards_its_mean() {
        let flat = posterior(0.2, 0.01, &Prior::default(), 0.05);
        let prior = Prior {
            mean: 0.0,
            variance: 0.01,
            proper: true,
            kind: PriorType::Relative,
        };
        let shrunk = posterior(0.2, 0.01, &prior, 0.05);
        assert!((shrunk.mean - 0.1).abs() < 1e-15);
        assert!(shrunk.sd < flat.sd);
    }
}
