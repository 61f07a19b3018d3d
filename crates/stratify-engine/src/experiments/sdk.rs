//! GrowthBook's SDKs against Stratify: the features payload they fetch
//! (`GET /api/features/{client_key}`) and the attributes an app hands them
//! for a user (`GET /v1/users/{id}/sdk-attributes`).
//!
//! Every running experiment (within its schedule) is a feature of the same
//! key with one experiment rule: the variations (each variant's payload, or
//! its key when it has none), weights, coverage, hash attribute (`user_id`
//! is the SDK's `id`), hash version, seed, namespace and variation `meta`
//! keys. Our bucketing is GrowthBook's, so the SDK evaluating locally gives
//! a user the variant `GET /v1/users/{id}/experiments` gives — except for
//! users stuck under older weights (sticky assignments live on the server).
//!
//! Targeting travels as a condition on the `segments` attribute: the
//! experiment's segments become `{"segments": {"$in": [ids]}}`, and an
//! inline rule, which the SDK cannot evaluate (it reads behaviour), becomes
//! membership of a pseudo-segment `rule:<experiment key>` that
//! sdk-attributes computes on the server.

use super::assign::{ServingService, ViewLookup};
use crate::segments::facts_events;
use crate::EngineError;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use stratify_core::ids::UserId;
use stratify_core::rules::{self, Facts};
use stratify_core::time::format_rfc3339;

/// A features payload and its entity tag.
#[derive(Clone)]
pub struct FeaturesPayload {
    pub body: bytes::Bytes,
    pub etag: String,
}

/// The pseudo-segment an experiment's inline rule becomes.
pub fn rule_segment(experiment_key: &str) -> String {
    format!("rule:{experiment_key}")
}

/// The payload made for one registry, until the next schedule boundary
/// (an experiment starting or ending): every fetch and every stream's
/// check reads it instead of rendering it again.
#[derive(Default)]
pub(crate) struct PayloadCache(parking_lot::Mutex<Option<Cached>>);

struct Cached {
    registry: std::sync::Arc<super::Registry>,
    valid_until: stratify_core::time::Millis,
    payload: FeaturesPayload,
}

impl ServingService {
    /// The GrowthBook features payload of every running experiment.
    pub fn growthbook_features(&self) -> FeaturesPayload {
        let registry = self.experiments.registry();
        let now = self.clock.now();
        if let Some(c) = &*self.sdk_payload.0.lock() {
            if std::sync::Arc::ptr_eq(&c.registry, &registry) && now < c.valid_until {
                return c.payload.clone();
            }
        }
        let valid_until = registry
            .running
            .iter()
            .flat_map(|e| [e.definition.start_at, e.definition.end_at])
            .flatten()
            .filter(|t| *t > now)
            .min()
            .unwrap_or(stratify_core::time::MAX_MILLIS);
        let payload = self.render_features(&registry, now);
        *self.sdk_payload.0.lock() = Some(Cached {
            registry,
            valid_until,
            payload: payload.clone(),
        });
        payload
    }

    fn render_features(
        &self,
        registry: &super::Registry,
        now: stratify_core::time::Millis,
    ) -> FeaturesPayload {
        let mut features = Map::new();
        let mut updated = 0;
        let mut running: Vec<_> = registry
            .running
            .iter()
            .filter(|e| e.definition.start_at.is_none_or(|s| now >= s))
            .filter(|e| e.definition.end_at.is_none_or(|end| now < end))
            .collect();
        running.sort_by(|a, b| a.record.key.cmp(&b.record.key));
        for e in running {
            let d = &e.definition;
            updated = updated.max(e.record.updated_at);
            let variations: Vec<Value> = d
                .variants
                .iter()
                .map(|v| v.payload.clone().unwrap_or_else(|| json!(v.key)))
                .collect();
            let meta: Vec<Value> = d
                .variants
                .iter()
                .map(|v| match &v.name {
                    Some(name) => json!({"key": v.key, "name": name}),
                    None => json!({"key": v.key}),
                })
                .collect();
            let mut rule = json!({
                "key": e.record.key,
                "name": e.record.name,
                "seed": d.seed,
                "hashVersion": d.hash_version,
                "hashAttribute": if d.hash_attribute == "user_id" { "id" } else { d.hash_attribute.as_str() },
                "variations": variations,
                "weights": d.variants.iter().map(|v| v.weight / 100.0).collect::<Vec<_>>(),
                "coverage": d.coverage,
                "meta": meta,
                "phase": d.bucket_version.to_string(),
            });
            if let Some(ns) = &d.namespace {
                rule["namespace"] = json!([ns.id, ns.start, ns.end]);
            }
            let mut conditions = Vec::new();
            if !d.segment_ids.is_empty() {
                conditions.push(json!({"segments": {"$in": d.segment_ids}}));
            }
            if e.rule.is_some() {
                conditions.push(json!({"segments": {"$in": [rule_segment(&e.record.key)]}}));
            }
            match conditions.len() {
                0 => {}
                1 => rule["condition"] = conditions.remove(0),
                _ => rule["condition"] = json!({"$and": conditions}),
            }
            features.insert(
                e.record.key.clone(),
                json!({"defaultValue": null, "rules": [rule]}),
            );
        }
        let body = json!({
            "status": 200,
            "features": features,
            "dateUpdated": format_rfc3339(updated),
        })
        .to_string();
        let etag = format!(
            "\"{}\"",
            hex::encode(&Sha256::digest(body.as_bytes())[..12])
        );
        FeaturesPayload {
            body: bytes::Bytes::from(body),
            etag,
        }
    }

    /// What an app hands a GrowthBook SDK for this user: `id`, the user's
    /// attributes, and `segments`: the live segments the user is in, plus
    /// `rule:<key>` for each running experiment whose inline rule holds.
    pub async fn sdk_attributes(&self, id: &UserId) -> Result<Map<String, Value>, EngineError> {
        let id = &*self.views.aliases.resolve(id);
        let user = id.as_str();
        let record = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                code: stratify_core::ErrorCode::UserNotFound,
                message: format!("no user '{user}'"),
            })?;
        let catalog = self.segments.snapshot();
        let view = self.views.live.view();
        let mut segments: Vec<String> = catalog
            .all()
            .filter(|s| view.contains(user, view.slot(&s.record.id)))
            .map(|s| s.record.id.clone())
            .collect();
        segments.sort();
        let registry = self.experiments.registry();
        if registry.running.iter().any(|e| e.rule.is_some()) {
            let now = self.clock.now();
            let events = self
                .store
                .user_events(id, now, crate::live::MAX_USER_EVENTS as u32)
                .await?;
            let fact_events = facts_events(&events);
            let lookup = ViewLookup {
                views: &self.views,
                catalog: &catalog,
                user,
            };
            let facts = Facts {
                attributes: &record.attributes,
                events: &fact_events,
                segments: &lookup,
                now,
            };
            for e in registry.running.iter() {
                if let Some(rule) = &e.rule {
                    if rules::evaluate(rule, &facts) {
                        segments.push(rule_segment(&e.record.key));
                    }
                }
            }
        }
        let mut out = record.attributes;
        out.insert("id".into(), json!(user));
        out.insert("segments".into(), json!(segments));
        Ok(out)
    }
}
