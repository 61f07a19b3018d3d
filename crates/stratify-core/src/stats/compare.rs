//! Two-arm comparison: per-arm intervals, absolute and relative lift with
//! intervals and two-sided p-values, and the chance to beat control.
//!
//! Notation: arm i has n_i users, mean m_i and per-user sample variance v_i.
//! For a conversion metric m_i = c_i/n_i and v_i = m_i(1 − m_i) (the
//! per-user Bernoulli variance, as GrowthBook uses). α = 1 − confidence level.

use super::dist::{norm_cdf, norm_isf, norm_sf, t_critical, t_two_sided};
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
}

impl Arm {
    pub fn n(&self) -> u64 {
        match *self {
            Arm::Rate { n, .. } | Arm::Mean { n, .. } => n,
        }
    }

    /// m = c/n for rates; NaN with no users.
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
        }
    }

    /// v = m(1 − m) for rates (per-user Bernoulli variance), else as given.
    pub fn variance(&self) -> f64 {
        match *self {
            Arm::Rate { .. } => {
                let m = self.mean();
                m * (1.0 - m)
            }
            Arm::Mean { variance, .. } => variance,
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
}

/// Treatment / control − 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Relative {
    pub estimate: f64,
    pub se: f64,
    pub p_value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub method: Method,
    pub confidence_level: f64,
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
        Arm::Mean { variance, .. } => {
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
    let alpha = 1.0 - confidence_level;
    let control_estimate = arm_estimate(control, method, alpha);
    let treatment_estimate = arm_estimate(treatment, method, alpha);
    let (nc, nt) = (control.n() as f64, treatment.n() as f64);
    let (mc, mt) = (control.mean(), treatment.mean());
    let (vc, vt) = (control.variance(), treatment.variance());
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
    let absolute = Absolute {
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
    };

    let (relative, relative_reason) = if control.n() == 0 || treatment.n() == 0 {
        (None, Some("an arm has no users"))
    } else if mc == 0.0 {
        (
            None,
            Some("the control mean is 0, so a ratio to it is undefined"),
        )
    } else {
        let estimate = mt / mc - 1.0;
        let variance = vt / (mc * mc * nt) + vc * mt * mt / (mc.powi(4) * nc);
        let se = variance.sqrt();
        let defined = se > 0.0 && se.is_finite();
        let statistic = if defined { estimate / se } else { f64::NAN };
        let relative = Relative {
            estimate,
            se,
            p_value: finite(reference.p_value(statistic)),
            ci_low: finite(if defined {
                estimate - reference.quantile * se
            } else {
                f64::NAN
            }),
            ci_high: finite(if defined {
                estimate + reference.quantile * se
            } else {
                f64::NAN
            }),
        };
        (Some(relative), None)
    };
    let chance_to_win = relative.and_then(|r| {
        if r.se > 0.0 {
            finite(norm_cdf(r.estimate / r.se))
        } else {
            None
        }
    });
    Comparison {
        method,
        confidence_level,
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

/// One arm as a client sends it: `{n, conversions}` or `{n, mean, variance}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmInput {
    pub n: u64,
    pub conversions: Option<u64>,
    pub mean: Option<f64>,
    pub variance: Option<f64>,
}

impl ArmInput {
    /// Checks the arm; errors point below `at` (e.g. `/control`).
    pub fn to_arm(&self, at: &str) -> Result<Arm, crate::ValidationError> {
        use crate::ValidationError;
        let err = |field: &str, message: &str| {
            ValidationError::new(ErrorCode::InvalidArm, message).at(format!("{at}/{field}"))
        };
        if self.n == 0 || self.n > MAX_N {
            return Err(err("n", "n must be between 1 and 10^12"));
        }
        match (self.conversions, self.mean, self.variance) {
            (Some(c), None, None) => {
                if c > self.n {
                    return Err(err("conversions", "conversions cannot exceed n"));
                }
                Ok(Arm::Rate {
                    n: self.n,
                    conversions: c,
                })
            }
            (None, Some(mean), Some(variance)) => {
                if !mean.is_finite() {
                    return Err(err("mean", "mean must be a finite number"));
                }
                if !variance.is_finite() || variance < 0.0 {
                    return Err(err("variance", "variance must be a finite number ≥ 0"));
                }
                Ok(Arm::Mean {
                    n: self.n,
                    mean,
                    variance,
                })
            }
            _ => Err(ValidationError::new(
                ErrorCode::InvalidArm,
                "an arm is {n, conversions} or {n, mean, variance}",
            )
            .at(at.to_owned())),
        }
    }
}

/// A calculator request: two arms of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareInput {
    #[serde(default)]
    pub method: Method,
    #[serde(default = "default_confidence")]
    pub confidence_level: f64,
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
        if std::mem::discriminant(&control) != std::mem::discriminant(&treatment) {
            return Err(crate::ValidationError::new(
                ErrorCode::InvalidArm,
                "both arms must be rates ({n, conversions}) or both means ({n, mean, variance})",
            )
            .at("/treatment"));
        }
        Ok(compare(self.method, level, &control, &treatment))
    }
}
