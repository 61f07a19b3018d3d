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
    pub event: String,
    #[serde(default)]
    pub property: Option<String>,
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
    pub event: String,
    pub property: Option<String>,
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
        let event =
            EventName::parse(input.event).map_err(|e| EngineError::Invalid(e.at("/event")))?;
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

    /// The seed's ad hoc form: "did the user send `event`" with no window.
    pub fn conversion_on(event: &str) -> Result<Metric, EngineError> {
        Metric::from_input(MetricInput {
            key: "conversion".into(),
            name: Some(format!("converted ({event})")),
            description: None,
            kind: MetricKind::Conversion,
            event: event.to_owned(),
            property: None,
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
