//! Statistics for experiment results, pure and to double precision.
//!
//! - [`dist`]: normal, Student's t and chi-square distribution functions.
//! - [`compare`](mod@compare): per-arm intervals (Wilson for rates), absolute and relative
//!   lift with intervals and p-values by `welch`, `z` or `z_pooled`, the
//!   chance to beat control, Holm's correction.
//! - [`engines`]: GrowthBook's statistics (gbstats 0.8.0): arms from sums,
//!   ratio metrics, CUPED, the sequential test and the Bayesian engine.
//! - [`srm`](mod@srm): the sample-ratio-mismatch check.
//! - [`power`]: sample size for two proportions.
//!
//! Every formula is written next to its code. The reference tests
//! (`tests/stats_reference.rs`) compare each output with scipy and statsmodels
//! to 1e-9 relative. Undefined quantities are `None` (JSON `null`), never NaN.

pub mod compare;
pub mod dist;
pub mod engines;
pub mod power;
pub mod srm;

use serde::{Deserialize, Serialize};

pub use compare::{
    analyze, check_confidence, compare, holm, Absolute, Analysis, Arm, ArmEstimate, ArmInput,
    CompareInput, Comparison, CupedReport, Relative,
};
pub use engines::{Engine, Prior, PriorType};
pub use power::{sample_size, SampleSize, SampleSizeInput};
pub use srm::{srm, Srm, SRM_THRESHOLD};

/// The test used for p-values and intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Welch's t-test, Welch–Satterthwaite degrees of freedom.
    #[default]
    Welch,
    /// z-test with the unpooled standard error.
    Z,
    /// z-test with the pooled standard error for the statistic and p-value.
    ZPooled,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "welch" => Some(Method::Welch),
            "z" => Some(Method::Z),
            "z_pooled" => Some(Method::ZPooled),
            _ => None,
        }
    }
}

/// `Some(x)` when x is a finite number, else `None`.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
