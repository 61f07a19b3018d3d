//! Metric definitions: what to measure for each exposed user.

use crate::EngineError;
use serde::{Deserialize, Serialize};
use stratify_core::ids::EventName;
use stratify_core::rules::parse_within;
use stratify_core::time::Millis;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::MetricRecord;

/// Most metrics one results request computes.
pub const MAX_METRICS_PER_QUERY: usize = 10;
const MAX_KEY: usize = 64;

/// How a user's events become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// 1 if the user sent the event (within the window), else 0: a rate.
    Conversion,
    /// How many of the events the user sent.
    Count,
    /// The sum of a numeric property over the user's events (revenue).
    Sum,
    /// The mean of a numeric property over the user's events; users with no
    /// such event have no value and are left out of this metric's arms.
    Mean,
    /// Σ numerator / Σ denominator over the exposed users, two other
    /// metrics (count, sum or conversion): revenue per order, items per
    /// session. Analysed by the delta method.
    Ratio,
}

/// What a client sends to define a metric.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricInput {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub kind: MetricKind,
    /// The event (every kind but `ratio`).
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub property: Option<String>,
    /// `ratio`: the keys of the numerator and denominator metrics.
    #[serde(default)]
    pub numerator: Option<String>,
    #[serde(default)]
    pub denominator: Option<String>,
    /// How long after a user's first exposure their events count
    /// (`Ns|Nm|Nh|Nd`); omitted = until the end of the analysis.
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub higher_is_better: Option<bool>,
    /// `{"lookback": "14d"}`: adjust by CUPED, each user's covariate being
    /// this metric's value over the lookback before their first exposure.
    #[serde(default)]
    pub cuped: Option<CupedSpec>,
}

/// CUPED settings of a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CupedSpec {
    /// How far before a user's first exposure the covariate looks (`Nd`…).
    pub lookback: String,
}

/// A validated metric, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: MetricKind,
    /// Empty for ratio metrics.
    #[serde(default)]
    pub event: String,
    pub property: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<String>,
    pub window: Option<String>,
    #[serde(skip)]
    pub window_ms: Option<Millis>,
    pub higher_is_better: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuped: Option<CupedSpec>,
    #[serde(skip)]
    pub lookback_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

fn invalid(code: ErrorCode, message: impl Into<String>, field: &str) -> EngineError {
    EngineError::Invalid(ValidationError::new(code, message).at(field))
}

impl Metric {
    /// Validates a definition.
    pub fn from_input(input: MetricInput) -> Result<Metric, EngineError> {
        let key_ok = !input.key.is_empty()
            && input.key.len() <= MAX_KEY
            && input
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(invalid(
                ErrorCode::InvalidKey,
                "key is 1–64 letters, digits, '_', '-' or '.'",
                "/key",
            ));
        }
        if input.kind == MetricKind::Ratio {
            return Metric::ratio(input);
        }
        if input.numerator.is_some() || input.denominator.is_some() {
            return Err(invalid(
                ErrorCode::UnexpectedField,
                "only ratio metrics have a numerator and a denominator",
                "/numerator",
            ));
        }
        let event = EventName::parse(input.event.unwrap_or_default())
            .map_err(|e| EngineError::Invalid(e.at("/event")))?;
        let needs_property = matches!(input.kind, MetricKind::Sum | MetricKind::Mean);
        match (&input.property, needs_property) {
            (None, true) => {
                return Err(invalid(
                    ErrorCode::MissingField,
                    "sum and mean metrics need a numeric property",
                    "/property",
                ))
            }
            (Some(_), false) => {
                return Err(invalid(
                    ErrorCode::UnexpectedField,
                    "only sum and mean metrics read a property",
                    "/property",
                ))
            }
            (Some(p), true) => {
                let ok = !p.is_empty()
                    && p.len() <= MAX_KEY
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(invalid(
                        ErrorCode::InvalidProperty,
                        "property is 1–64 letters, digits or '_'",
                        "/property",
                    ));
                }
            }
            (None, false) => {}
        }
        let window_ms = match &input.window {
            None => None,
            Some(w) => Some(parse_within(w).ok_or_else(|| {
                invalid(
                    ErrorCode::InvalidWindow,
                    "window is Ns, Nm, Nh or Nd (N >= 1, at most 10 years)",
                    "/window",
                )
            })?),
        };
        if input.name.as_ref().is_some_and(|n| n.len() > 200) {
            return Err(invalid(
                ErrorCode::TooLong,
                "name is at most 200 bytes",
                "/name",
            ));
        }
        if input.description.as_ref().is_some_and(|d| d.len() > 2000) {
            return Err(invalid(
                ErrorCode::TooLong,
                "description is at most 2000 bytes",
                "/description",
            ));
        }
        let lookback_ms = match &input.cuped {
            None => None,
            Some(_) if input.kind == MetricKind::Mean => {
                return Err(invalid(
                    ErrorCode::UnexpectedField,
                    "CUPED needs a value for every exposed user: conversion, count and sum metrics take it, mean metrics do not",
                    "/cuped",
                ))
            }
            Some(spec) => Some(parse_within(&spec.lookback).ok_or_else(|| {
                invalid(
                    ErrorCode::InvalidWindow,
                    "lookback is Ns, Nm, Nh or Nd (N >= 1, at most 10 years)",
                    "/cuped/lookback",
                )
            })?),
        };
        Ok(Metric {
            numerator: None,
            denominator: None,
            cuped: input.cuped,
            lookback_ms,
            name: input.name.unwrap_or_else(|| input.key.clone()),
            key: input.key,
            description: input.description,
            kind: input.kind,
            event: event.as_str().to_owned(),
            property: input.property,
            window: input.window,
            window_ms,
            higher_is_better: input.higher_is_better.unwrap_or(true),
            created_at: None,
            updated_at: None,
        })
    }

    /// A ratio of two other metrics (checked against them when results are
    /// computed: they must exist and be count, sum or conversion metrics).
    fn ratio(input: MetricInput) -> Result<Metric, EngineError> {
        let part = |key: &Option<String>, field: &str| match key {
            Some(k)
                if !k.is_empty()
                    && k.len() <= MAX_KEY
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
            {
                Ok(k.clone())
            }
            Some(_) => Err(invalid(ErrorCode::InvalidKey, "a metric key", field)),
            None => Err(invalid(
                ErrorCode::MissingField,
                "a ratio metric names its numerator and denominator metrics",
                field,
            )),
        };
        let numerator = part(&input.numerator, "/numerator")?;
        let denominator = part(&input.denominator, "/denominator")?;
        for (present, field) in [
            (input.event.is_some(), "/event"),
            (input.property.is_some(), "/property"),
            (input.window.is_some(), "/window"),
            (input.cuped.is_some(), "/cuped"),
        ] {
            if present {
                return Err(invalid(
                    ErrorCode::UnexpectedField,
                    "a ratio metric takes its events, windows and properties from its two metrics",
                    field,
                ));
            }
        }
        Ok(Metric {
            name: input.name.unwrap_or_else(|| input.key.clone()),
            key: input.key,
            description: input.description,
            kind: MetricKind::Ratio,
            event: String::new(),
            property: None,
            numerator: Some(numerator),
            denominator: Some(denominator),
            window: None,
            window_ms: None,
            higher_is_better: input.higher_is_better.unwrap_or(true),
            cuped: None,
            lookback_ms: None,
            created_at: None,
            updated_at: None,
        })
    }

    /// The seed's ad hoc form: "did the user send `event`" with no window.
    pub fn conversion_on(event: &str) -> Result<Metric, EngineError> {
        Metric::from_input(MetricInput {
            key: "conversion".into(),
            name: Some(format!("converted ({event})")),
            description: None,
            kind: MetricKind::Conversion,
            event: Some(event.to_owned()),
            property: None,
            numerator: None,
            denominator: None,
            window: None,
            higher_is_better: None,
            cuped: None,
        })
        .map_err(|e| match e {
            EngineError::Invalid(v) if v.field.as_deref() == Some("/event") => {
                EngineError::Invalid(v.at("/conversion_event_type"))
            }
            other => other,
        })
    }

    fn from_record(record: MetricRecord) -> Result<Metric, EngineError> {
        let mut metric: Metric = serde_json::from_value(record.definition)
            .map_err(|e| EngineError::Store(stratify_store::StoreError::from(e)))?;
        metric.window_ms = metric.window.as_deref().and_then(parse_within);
        metric.lookback_ms = metric
            .cuped
            .as_ref()
            .and_then(|c| parse_within(&c.lookback));
        metric.created_at = Some(stratify_core::time::format_rfc3339(record.created_at));
        metric.updated_at = Some(stratify_core::time::format_rfc3339(record.updated_at));
        Ok(metric)
    }
}

fn metric_not_found(key: &str) -> EngineError {
    EngineError::NotFound {
        code: ErrorCode::MetricNotFound,
        message: format!("no metric '{key}'"),
    }
}

impl super::ResultService {
    pub async fn create_metric(&self, input: MetricInput) -> Result<Metric, EngineError> {
        let metric = Metric::from_input(input)?;
        crate::Limits::check(
            "metrics",
            "metrics",
            self.store.metrics().await?.len(),
            self.limits.metrics,
        )?;
        let now = self.clock.now();
        let definition = serde_json::to_value(&metric)
            .map_err(|e| EngineError::Store(stratify_store::StoreError::from(e)))?;
        self.store
            .create_metric(MetricRecord {
                key: metric.key.clone(),
                definition,
                created_at: now,
                updated_at: now,
            })
            .await?;
        self.metric(&metric.key).await
    }

    pub async fn metrics(&self) -> Result<Vec<Metric>, EngineError> {
        self.store
            .metrics()
            .await?
            .into_iter()
            .map(Metric::from_record)
            .collect()
    }

    pub async fn metric(&self, key: &str) -> Result<Metric, EngineError> {
        self.metrics()
            .await?
            .into_iter()
            .find(|m| m.key == key)
            .ok_or_else(|| metric_not_found(key))
    }

    pub async fn delete_metric(&self, key: &str) -> Result<(), EngineError> {
        if self.store.delete_metric(key).await? {
            Ok(())
        } else {
            Err(metric_not_found(key))
        }
    }
}
