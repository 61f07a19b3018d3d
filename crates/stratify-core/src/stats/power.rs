//! Sample size for a two-sided test of two proportions.

use super::dist::{norm_isf, norm_ppf};
use crate::ErrorCode;
use crate::ValidationError;
use serde::{Deserialize, Serialize};

fn default_alpha() -> f64 {
    0.05
}
fn default_power() -> f64 {
    0.8
}
fn default_ratio() -> f64 {
    1.0
}

/// A planning question: how many users per arm to detect `mde`?
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSizeInput {
    /// The control's conversion rate p₁, in (0, 1).
    pub baseline_rate: f64,
    /// The smallest effect worth detecting: p₂ − p₁, or p₂/p₁ − 1 when `relative`.
    pub mde: f64,
    #[serde(default)]
    pub relative: bool,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_power")]
    pub power: f64,
    /// Treatment users per control user (n₂ = ratio·n₁).
    #[serde(default = "default_ratio")]
    pub ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SampleSize {
    /// Control users needed, rounded up (= every arm's size when ratio is 1).
    pub n_per_variant: u64,
    /// Treatment users needed, rounded up.
    pub n_treatment: u64,
    pub n_exact: f64,
    pub baseline_rate: f64,
    pub target_rate: f64,
}

/// With p₁ the baseline, p₂ the target, r the ratio, Δ = p₂ − p₁:
/// pooled p̄ = (p₁ + r·p₂)/(1 + r) for the standard error under H0 and the
/// unpooled one under H1,
///   n₁ = ( z_{1−α/2}·√(p̄(1−p̄)(1 + 1/r)) + z_{power}·√(p₁(1−p₁) + p₂(1−p₂)/r) )² / Δ²,
/// n₂ = r·n₁. The far tail of the two-sided test is ignored (it adds
/// less than α/2 to the power), as in the usual closed form.
pub fn sample_size(input: &SampleSizeInput) -> Result<SampleSize, ValidationError> {
    let SampleSizeInput {
        baseline_rate: p1,
        mde,
        relative,
        alpha,
        power,
        ratio,
    } = *input;
    let open_unit = |v: f64| v > 0.0 && v < 1.0;
    if !open_unit(p1) {
        return Err(
            ValidationError::new(ErrorCode::OutOfRange, "baseline_rate must be in (0, 1)")
                .at("/baseline_rate"),
        );
    }
    if !mde.is_finite() || mde == 0.0 {
        return Err(
            ValidationError::new(ErrorCode::OutOfRange, "mde must be a non-zero number").at("/mde"),
        );
    }
    if !open_unit(alpha) {
        return Err(
            ValidationError::new(ErrorCode::OutOfRange, "alpha must be in (0, 1)").at("/alpha"),
        );
    }
    if !open_unit(power) {
        return Err(
            ValidationError::new(ErrorCode::OutOfRange, "power must be in (0, 1)").at("/power"),
        );
    }
    if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1000.0) {
        return Err(
            ValidationError::new(ErrorCode::OutOfRange, "ratio must be in (0, 1000]").at("/ratio"),
        );
    }
    let p2 = if relative { p1 * (1.0 + mde) } else { p1 + mde };
    if !open_unit(p2) {
        return Err(ValidationError::new(
            ErrorCode::OutOfRange,
            format!("the target rate {p2} is outside (0, 1)"),
        )
        .at("/mde"));
    }
    let pooled = (p1 + ratio * p2) / (1.0 + ratio);
    let sd_null = (pooled * (1.0 - pooled) * (1.0 + 1.0 / ratio)).sqrt();
    let sd_alt = (p1 * (1.0 - p1) + p2 * (1.0 - p2) / ratio).sqrt();
    let delta = p2 - p1;
    let n = ((norm_isf(alpha / 2.0) * sd_null + norm_ppf(power) * sd_alt) / delta).powi(2);
    Ok(SampleSize {
        n_per_variant: n.ceil() as u64,
        n_treatment: (ratio * n).ceil() as u64,
        n_exact: n,
        baseline_rate: p1,
        target_rate: p2,
    })
}
