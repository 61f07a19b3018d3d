//! Sample-ratio mismatch: do the exposures per variant fit the configured
//! weights? A chi-square goodness-of-fit test.

use super::dist::chi2_sf;
use super::finite;
use crate::ErrorCode;
use crate::ValidationError;
use serde::Serialize;

/// SRM is flagged below this p-value (a deliberately strict threshold: the
/// check runs continuously, and a real mismatch gives astronomically small p).
pub const SRM_THRESHOLD: f64 = 0.001;
/// Most arms accepted.
pub const MAX_ARMS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Srm {
    pub expected: Vec<f64>,
    pub chi2: Option<f64>,
    pub df: u32,
    pub p_value: Option<f64>,
    pub srm_detected: bool,
}

/// With N = Σ observed and weights normalised to shares w_i:
/// expected e_i = N·w_i, χ² = Σ (o_i − e_i)²/e_i over the arms with e_i > 0,
/// df = k − 1, p = P(χ²_df > χ²). No observations at all give χ² = 0 and
/// p = 1. An arm with weight 0 that has observations is a mismatch by
/// definition: χ² is infinite (null) and p = 0.
pub fn srm(observed: &[u64], weights: &[f64]) -> Result<Srm, ValidationError> {
    if observed.len() != weights.len() {
        return Err(ValidationError::new(
            ErrorCode::LengthMismatch,
            "observed and weights must have the same length",
        )
        .at("/weights"));
    }
    if observed.len() < 2 || observed.len() > MAX_ARMS {
        return Err(ValidationError::new(
            ErrorCode::InvalidArms,
            format!("between 2 and {MAX_ARMS} arms are needed"),
        )
        .at("/observed"));
    }
    for (i, w) in weights.iter().enumerate() {
        if !w.is_finite() || *w < 0.0 {
            return Err(ValidationError::new(
                ErrorCode::InvalidWeight,
                "weights must be finite and not negative",
            )
            .at(format!("/weights/{i}")));
        }
    }
    let total_weight: f64 = weights.iter().sum();
    if total_weight <= 0.0 {
        return Err(
            ValidationError::new(ErrorCode::InvalidWeight, "weights must not all be 0")
                .at("/weights"),
        );
    }
    let n: f64 = observed.iter().map(|&o| o as f64).sum();
    let expected: Vec<f64> = weights.iter().map(|w| n * w / total_weight).collect();
    let df = (observed.len() - 1) as u32;
    if n == 0.0 {
        return Ok(Srm {
            expected,
            chi2: Some(0.0),
            df,
            p_value: Some(1.0),
            srm_detected: false,
        });
    }
    let mut chi2 = 0.0;
    for (&o, &e) in observed.iter().zip(&expected) {
        let o = o as f64;
        if e > 0.0 {
            chi2 += (o - e) * (o - e) / e;
        } else if o > 0.0 {
            chi2 = f64::INFINITY;
        }
    }
    let p_value = if chi2.is_infinite() {
        0.0
    } else {
        chi2_sf(chi2, f64::from(df))
    };
    Ok(Srm {
        expected,
        chi2: finite(chi2),
        df,
        p_value: finite(p_value),
        srm_detected: p_value < SRM_THRESHOLD,
    })
}
