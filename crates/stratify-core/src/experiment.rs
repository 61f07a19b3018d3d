//! Experiment definitions and their checks: what a client may send to
//! create or change an experiment, the validated definition that is stored,
//! and the lifecycle moves. Pure: the caller says which segments exist and
//! parses inline rules against its catalog.

use crate::error::{ErrorCode, ValidationError};
use crate::names;
use crate::time::{parse_rfc3339, Millis};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most variants of one experiment.
pub const MAX_VARIANTS: usize = 20;
/// Most segments one experiment targets.
pub const MAX_SEGMENTS: usize = 100;
/// Longest experiment, variant and namespace key.
pub const MAX_KEY: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    /// A percentage; the weights of an experiment sum to 100.
    pub weight: f64,
    #[serde(default)]
    pub is_control: bool,
    #[serde(default)]
    pub payload: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub id: String,
    pub start: f64,
    pub end: f64,
}

/// What a client sends to create an experiment (and, all optional but the
/// key, to change one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentInput {
    pub key: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub variants: Option<Vec<Variant>>,
    pub segment_ids: Option<Vec<String>>,
    pub rules: Option<Value>,
    pub coverage: Option<f64>,
    pub seed: Option<String>,
    pub hash_version: Option<u32>,
    pub hash_attribute: Option<String>,
    pub namespace: Option<Namespace>,
    pub sticky: Option<bool>,
    pub keep_on_exit: Option<bool>,
    pub start_at: Option<String>,
    pub end_at: Option<String>,
    /// How results are analysed unless a request says otherwise.
    pub analysis: Option<AnalysisDefaults>,
}

/// An experiment's default analysis: `{"engine": "frequentist" |
/// "bayesian", "sequential": {"tuning": 5000}}`. With the sequential test
/// as the default, looking at the results every day is safe.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisDefaults {
    #[serde(default)]
    pub engine: crate::stats::Engine,
    #[serde(default)]
    pub sequential: Option<SequentialDefault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialDefault {
    #[serde(default = "crate::stats::compare::default_tuning")]
    pub tuning: f64,
}

/// The validated definition, stored as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub description: Option<String>,
    pub variants: Vec<Variant>,
    pub segment_ids: Vec<String>,
    pub rules: Option<Value>,
    pub coverage: f64,
    pub seed: String,
    pub hash_version: u32,
    pub hash_attribute: String,
    pub namespace: Option<Namespace>,
    /// Stored assignments hold when weights, coverage or targeting change.
    pub sticky: bool,
    /// Whether a user with a stored assignment keeps it after leaving the
    /// targeted segments (or failing the inline rules).
    #[serde(default)]
    pub keep_on_exit: bool,
    /// Bumped to re-randomise: assignments of older versions are ignored.
    #[serde(default = "first_bucket_version")]
    pub bucket_version: u32,
    pub start_at: Option<Millis>,
    pub end_at: Option<Millis>,
    #[serde(default)]
    pub analysis: AnalysisDefaults,
}

fn first_bucket_version() -> u32 {
    1
}

/// Most re-randomisations of one experiment.
pub const MAX_BUCKET_VERSION: u32 = u16::MAX as u32;

/// A lifecycle action and the statuses it moves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Complete,
    Archive,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => Self::Start,
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "complete" => Self::Complete,
            "archive" => Self::Archive,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Complete => "complete",
            Self::Archive => "archive",
        }
    }

    /// The status it leads to from `from`, if the move is allowed.
    pub fn next(self, from: &str) -> Option<&'static str> {
        match (self, from) {
            (Self::Start, "draft") => Some("running"),
            (Self::Pause, "running") => Some("paused"),
            (Self::Resume, "paused") => Some("running"),
            (Self::Complete, "running" | "paused") => Some("completed"),
            (Self::Archive, "draft" | "completed") => Some("archived"),
            _ => None,
        }
    }
}

fn invalid(code: ErrorCode, message: impl Into<String>, field: &str) -> ValidationError {
    ValidationError::new(code, message).at(field)
}

/// Checks an experiment or variant key.
pub fn check_key(key: &str, field: &str) -> Result<(), ValidationError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            ErrorCode::InvalidKey,
            "a key is 1–64 characters of letters, digits, '_', '-' and '.'",
            field,
        ))
    }
}

fn instant(v: Option<&str>, field: &str) -> Result<Option<Millis>, ValidationError> {
    v.map(|t| parse_rfc3339(t).map_err(|e| e.at(field)))
        .transpose()
}

/// Validates a whole definition: `base` (for a change) overlaid with
/// `input`. `segment_exists` says whether a targeted segment id is known;
/// `parse_rule` parses the inline rules (the caller resolves references).
pub fn definition<R>(
    key: &str,
    base: Option<&Definition>,
    input: ExperimentInput,
    segment_exists: impl Fn(&str) -> bool,
    parse_rule: impl FnOnce(&Value) -> Result<R, ValidationError>,
) -> Result<(Definition, Option<R>), ValidationError> {
    let description = match input.description {
        Some(d) => names::description(Some(d))?,
        None => base.and_then(|b| b.description.clone()),
    };
    let variants = match (input.variants, base) {
        (Some(v), _) => v,
        (None, Some(b)) => b.variants.clone(),
        (None, None) => {
            return Err(invalid(
                ErrorCode::InvalidVariants,
                "variants are required",
                "/variants",
            ))
        }
    };
    if variants.is_empty() || variants.len() > MAX_VARIANTS {
        return Err(invalid(
            ErrorCode::InvalidVariants,
            format!("an experiment has 1 to {MAX_VARIANTS} variants"),
            "/variants",
        ));
    }
    let mut total = 0.0;
    for (i, v) in variants.iter().enumerate() {
        check_key(&v.key, &format!("/variants/{i}/key"))?;
        if variants[..i].iter().any(|w| w.key == v.key) {
            return Err(invalid(
                ErrorCode::DuplicateVariant,
                format!("variant key '{}' is used twice", v.key),
                &format!("/variants/{i}/key"),
            ));
        }
        if !v.weight.is_finite() || !(0.0..=100.0).contains(&v.weight) {
            return Err(invalid(
                ErrorCode::InvalidWeight,
                "a weight is a percentage from 0 to 100",
                &format!("/variants/{i}/weight"),
            ));
        }
        if v.name.as_ref().is_some_and(|n| n.len() > 200) {
            return Err(invalid(
                ErrorCode::InvalidName,
                "a variant name is at most 200 bytes",
                &format!("/variants/{i}/name"),
            ));
        }
        total += v.weight;
    }
    if (total - 100.0).abs() > 1e-6 {
        return Err(invalid(
            ErrorCode::InvalidWeights,
            format!("variant weights are percentages that sum to 100 (these sum to {total})"),
            "/variants",
        ));
    }
    if variants.iter().filter(|v| v.is_control).count() > 1 {
        return Err(invalid(
            ErrorCode::InvalidVariants,
            "at most one variant is the control",
            "/variants",
        ));
    }
    let segment_ids = match (input.segment_ids, base) {
        (Some(s), _) => s,
        (None, Some(b)) => b.segment_ids.clone(),
        (None, None) => Vec::new(),
    };
    if segment_ids.len() > MAX_SEGMENTS {
        return Err(invalid(
            ErrorCode::InvalidSegmentIds,
            format!("at most {MAX_SEGMENTS} segments"),
            "/segment_ids",
        ));
    }
    for (i, id) in segment_ids.iter().enumerate() {
        if !segment_exists(id) {
            return Err(invalid(
                ErrorCode::SegmentNotFound,
                format!("no segment '{id}'"),
                &format!("/segment_ids/{i}"),
            ));
        }
    }
    let rules = input.rules.or_else(|| base.and_then(|b| b.rules.clone()));
    let rule = match &rules {
        Some(json) => Some(parse_rule(json)?),
        None => None,
    };
    let coverage = input.coverage.or(base.map(|b| b.coverage)).unwrap_or(1.0);
    if !(0.0..=1.0).contains(&coverage) {
        return Err(invalid(
            ErrorCode::InvalidCoverage,
            "coverage is a fraction from 0 to 1",
            "/coverage",
        ));
    }
    let seed = input
        .seed
        .or_else(|| base.map(|b| b.seed.clone()))
        .unwrap_or_else(|| key.to_owned());
    if seed.is_empty() || seed.len() > 200 {
        return Err(invalid(
            ErrorCode::InvalidSeed,
            "a seed is 1–200 bytes",
            "/seed",
        ));
    }
    let hash_version = input
        .hash_version
        .or(base.map(|b| b.hash_version))
        .unwrap_or(2);
    if !matches!(hash_version, 1 | 2) {
        return Err(invalid(
            ErrorCode::InvalidHashVersion,
            "hash_version is 1 or 2",
            "/hash_version",
        ));
    }
    let hash_attribute = input
        .hash_attribute
        .or_else(|| base.map(|b| b.hash_attribute.clone()))
        .unwrap_or_else(|| "user_id".into());
    if hash_attribute.is_empty() || hash_attribute.len() > 128 {
        return Err(invalid(
            ErrorCode::InvalidHashAttribute,
            "hash_attribute names an attribute (or user_id)",
            "/hash_attribute",
        ));
    }
    let namespace = input
        .namespace
        .or_else(|| base.and_then(|b| b.namespace.clone()));
    if let Some(ns) = &namespace {
        let ok = !ns.id.is_empty()
            && ns.id.len() <= MAX_KEY
            && ns.start >= 0.0
            && ns.end <= 1.0
            && ns.start < ns.end;
        if !ok {
            return Err(invalid(
                ErrorCode::InvalidNamespace,
                "a namespace is {id, start, end} with 0 <= start < end <= 1",
                "/namespace",
            ));
        }
    }
    let sticky = input.sticky.or(base.map(|b| b.sticky)).unwrap_or(true);
    let keep_on_exit = input
        .keep_on_exit
        .or(base.map(|b| b.keep_on_exit))
        .unwrap_or(false);
    let bucket_version = base.map_or(1, |b| b.bucket_version);
    let start_at = match input.start_at {
        Some(t) => instant(Some(&t), "/start_at")?,
        None => base.and_then(|b| b.start_at),
    };
    let end_at = match input.end_at {
        Some(t) => instant(Some(&t), "/end_at")?,
        None => base.and_then(|b| b.end_at),
    };
    if let (Some(s), Some(e)) = (start_at, end_at) {
        if e <= s {
            return Err(invalid(
                ErrorCode::InvalidSchedule,
                "end_at is after start_at",
                "/end_at",
            ));
        }
    }
    let analysis = input
        .analysis
        .or(base.map(|b| b.analysis))
        .unwrap_or_default();
    let mut check = crate::stats::Analysis::fixed(crate::stats::Method::Welch, 0.95);
    check.engine = analysis.engine;
    check.sequential = analysis.sequential.map(|s| s.tuning);
    crate::stats::compare::check_analysis(&check).map_err(|e| {
        let field = e.field.clone().unwrap_or_default();
        e.at(format!("/analysis{field}"))
    })?;
    Ok((
        Definition {
            description,
            variants,
            segment_ids,
            rules,
            coverage,
            seed,
            hash_version,
            hash_attribute,
            namespace,
            sticky,
            keep_on_exit,
            bucket_version,
            start_at,
            end_at,
            analysis,
        },
        rule,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> ExperimentInput {
        serde_json::from_value(v).unwrap()
    }

    fn variants() -> Value {
        json!([{"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}])
    }

    fn no_rule(_: &Value) -> Result<(), ValidationError> {
        Ok(())
    }

    #[test]
    fn defaults_and_overlay() {
        let (d, _) = definition(
            "k",
            None,
            input(json!({"variants": variants()})),
            |_| true,
            no_rule,
        )
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.seed.as_str(), d.hash_version, d.coverage), ("k", 2, 1.0));
        assert_eq!(
            (d.sticky, d.keep_on_exit, d.bucket_version),
            (true, false, 1)
        );
        // A change overlays only what it names.
        let (changed, _) = definition(
            "k",
            Some(&d),
            input(json!({"coverage": 0.5})),
            |_| true,
            no_rule,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(changed.coverage, 0.5);
        assert_eq!(changed.variants, d.variants);
    }

    #[test]
    fn errors_point_at_the_field() {
        let cases = [
            (json!({}), ErrorCode::InvalidVariants, "/variants"),
            (
                json!({"variants": [{"key": "a", "weight": 60}, {"key": "b", "weight": 50}]}),
                ErrorCode::InvalidWeights,
                "/variants",
            ),
            (
                json!({"variants": [{"key": "a", "weight": 50}, {"key": "a", "weight": 50}]}),
                ErrorCode::DuplicateVariant,
                "/variants/1/key",
            ),
            (
                json!({"variants": variants(), "segment_ids": ["seg_x"]}),
                ErrorCode::SegmentNotFound,
                "/segment_ids/0",
            ),
            (
                json!({"variants": variants(), "coverage": 1.5}),
                ErrorCode::InvalidCoverage,
                "/coverage",
            ),
            (
                json!({"variants": variants(), "start_at": "2026-01-02T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"}),
                ErrorCode::InvalidSchedule,
                "/end_at",
            ),
        ];
        for (body, code, field) in cases {
            let err = definition("k", None, input(body.clone()), |id| id != "seg_x", no_rule)
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(
                (err.code, err.field.as_deref()),
                (code, Some(field)),
                "{body}"
            );
        }
    }

    #[test]
    fn lifecycle_moves() {
        assert_eq!(Action::Start.next("draft"), Some("running"));
        assert_eq!(Action::Complete.next("paused"), Some("completed"));
        assert_eq!(Action::Resume.next("running"), None);
        assert_eq!(Action::parse("archive"), Some(Action::Archive));
        assert_eq!(Action::parse("delete"), None);
    }
}
