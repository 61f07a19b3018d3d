//! Experiments: weighted variants with payloads, targeting (segments and an
//! optional inline rule), allocation (coverage, seed, hash version and
//! attribute, namespace), a schedule, and a recorded lifecycle:
//! draft → running ⇄ paused → completed → archived (drafts may be archived).
//! Bucketing itself is `stratify_core::bucketing` (GrowthBook-compatible).
//!
//! Serving (who gets which variant, sticky assignments, the per-user cache
//! and banner mixtures) is in [`assign`].

pub mod assign;
mod banners;
mod cache;
mod sticky;

pub use banners::{Mixture, Source as BannerSource};

use crate::live::MemberView;
use crate::segments::{check_description, check_name, invalid, new_id, parse_rule};
use crate::{Engine, EngineError};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::rules::Rule;
use stratify_core::time::{parse_rfc3339, Millis};
use stratify_core::ErrorCode;
use stratify_store::{ExperimentRecord, Store, TransitionRecord};

/// Most variants of one experiment.
pub const MAX_VARIANTS: usize = 20;
/// Most segments one experiment targets.
pub const MAX_SEGMENTS: usize = 100;
const MAX_KEY: usize = 64;

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
}

fn first_bucket_version() -> u32 {
    1
}

/// Most re-randomisations of one experiment.
pub const MAX_BUCKET_VERSION: u32 = u16::MAX as u32;

#[derive(Debug, Clone)]
pub struct Experiment {
    pub record: ExperimentRecord,
    pub definition: Definition,
    pub rule: Option<Rule>,
    /// Serving: the experiment's interned slot, each variant's interned
    /// slot (stable across versions), the bucket ranges, and the slots of
    /// the targeted segments (sorted).
    pub(crate) slot: u32,
    pub(crate) variant_slots: Vec<u16>,
    pub(crate) ranges: Vec<(f64, f64)>,
    pub(crate) segment_slots: Vec<u32>,
}

impl Experiment {
    pub fn is_running(&self) -> bool {
        self.record.status == "running"
    }
}

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

    fn name(self) -> &'static str {
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

/// Every experiment, as one immutable snapshot (swapped on each change).
#[derive(Default)]
pub struct Registry {
    pub by_id: HashMap<String, Arc<Experiment>>,
    pub by_key: HashMap<String, Arc<Experiment>>,
    /// Running experiments, oldest first (the serving order).
    pub running: Vec<Arc<Experiment>>,
    /// Bumped by every change: per-user answers computed before are stale.
    pub generation: u64,
}

/// Experiment and variant slots: small stable numbers for the sticky table.
#[derive(Default)]
struct Interner {
    experiments: HashMap<String, u32>,
    variants: Vec<Vec<Arc<str>>>,
}

impl Interner {
    fn experiment(&mut self, id: &str) -> u32 {
        if let Some(&s) = self.experiments.get(id) {
            return s;
        }
        let s = self.variants.len() as u32;
        self.experiments.insert(id.to_owned(), s);
        self.variants.push(Vec::new());
        s
    }

    fn variant(&mut self, experiment: u32, key: &str) -> u16 {
        let list = &mut self.variants[experiment as usize];
        if let Some(i) = list.iter().position(|k| &**k == key) {
            return i as u16;
        }
        list.push(Arc::from(key));
        (list.len() - 1) as u16
    }
}

pub struct Experiments {
    registry: RwLock<Arc<Registry>>,
    interner: Mutex<Interner>,
    view: Arc<MemberView>,
    /// Serialises experiment writes (version numbers are read-modify-write).
    write: tokio::sync::Mutex<()>,
}

impl Experiments {
    pub(crate) async fn load(
        store: &dyn Store,
        view: Arc<MemberView>,
    ) -> Result<Self, EngineError> {
        let this = Self {
            registry: RwLock::default(),
            interner: Mutex::default(),
            view,
            write: tokio::sync::Mutex::new(()),
        };
        this.reload(store).await?;
        Ok(this)
    }

    /// Installs every stored experiment (at start, and when another node
    /// changed one).
    pub(crate) async fn reload(&self, store: &dyn Store) -> Result<(), EngineError> {
        for record in store.experiments().await? {
            let definition: Definition = serde_json::from_value(record.definition.clone())
                .map_err(|e| corrupt(&record.id, &e.to_string()))?;
            let rule = definition
                .rules
                .as_ref()
                .map(stratify_core::rules::parse)
                .transpose()
                .map_err(|e| corrupt(&record.id, &e.message))?;
            self.put(record, definition, rule);
        }
        Ok(())
    }

    /// Installs an experiment's new state: a new registry snapshot.
    fn put(&self, record: ExperimentRecord, definition: Definition, rule: Option<Rule>) {
        let (slot, variant_slots) = {
            let mut interner = self.interner.lock();
            let slot = interner.experiment(&record.id);
            let variants = definition
                .variants
                .iter()
                .map(|v| interner.variant(slot, &v.key))
                .collect();
            (slot, variants)
        };
        let weights: Vec<f64> = definition
            .variants
            .iter()
            .map(|v| v.weight / 100.0)
            .collect();
        let ranges = stratify_core::bucketing::bucket_ranges(
            weights.len(),
            definition.coverage,
            Some(&weights),
        );
        let mut segment_slots: Vec<u32> = definition
            .segment_ids
            .iter()
            .map(|s| self.view.slot(s))
            .collect();
        segment_slots.sort_unstable();
        let e = Arc::new(Experiment {
            record,
            definition,
            rule,
            slot,
            variant_slots,
            ranges,
            segment_slots,
        });
        let mut guard = self.registry.write();
        let mut by_id = guard.by_id.clone();
        by_id.insert(e.record.id.clone(), e);
        let mut running: Vec<_> = by_id.values().filter(|e| e.is_running()).cloned().collect();
        running.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        let by_key = by_id
            .values()
            .map(|e| (e.record.key.clone(), e.clone()))
            .collect();
        *guard = Arc::new(Registry {
            by_id,
            by_key,
            running,
            generation: guard.generation + 1,
        });
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    fn intern(&self, experiment_id: &str, variant: &str) -> (u32, u16) {
        let mut interner = self.interner.lock();
        let e = interner.experiment(experiment_id);
        (e, interner.variant(e, variant))
    }
}

fn corrupt(id: &str, why: &str) -> EngineError {
    EngineError::Store(stratify_store::StoreError::Corrupt(format!(
        "experiment {id} has an invalid stored definition: {why}"
    )))
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound {
        code: ErrorCode::ExperimentNotFound,
        message: format!("no experiment '{id}'"),
    }
}

fn check_key(key: &str, field: &str) -> Result<(), EngineError> {
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

fn instant(v: Option<&str>, field: &str) -> Result<Option<Millis>, EngineError> {
    v.map(|t| parse_rfc3339(t).map_err(|e| EngineError::Invalid(e.at(field))))
        .transpose()
}

impl Engine {
    pub fn experiment(&self, id: &str) -> Result<Arc<Experiment>, EngineError> {
        self.experiments
            .registry()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Every experiment, as one consistent snapshot.
    pub fn experiment_registry(&self) -> Arc<Registry> {
        self.experiments.registry()
    }

    pub fn list_experiments(&self) -> Vec<Arc<Experiment>> {
        let mut all: Vec<_> = self
            .experiments
            .registry()
            .by_id
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        all
    }

    pub async fn experiment_transitions(
        &self,
        id: &str,
    ) -> Result<Vec<TransitionRecord>, EngineError> {
        self.experiment(id)?;
        Ok(self.store.experiment_transitions(id).await?)
    }

    /// Validates a whole definition: `base` (for a change) overlaid with `input`.
    fn definition(
        &self,
        key: &str,
        base: Option<&Definition>,
        input: ExperimentInput,
    ) -> Result<(Definition, Option<Rule>), EngineError> {
        let description = match input.description {
            Some(d) => check_description(Some(d))?,
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
        let catalog = self.segment_catalog();
        for (i, id) in segment_ids.iter().enumerate() {
            if catalog.get(id).is_none() {
                return Err(invalid(
                    ErrorCode::SegmentNotFound,
                    format!("no segment '{id}'"),
                    &format!("/segment_ids/{i}"),
                ));
            }
        }
        let rules = input.rules.or_else(|| base.and_then(|b| b.rules.clone()));
        let rule = match &rules {
            Some(json) => Some(parse_rule(json, "", &catalog)?),
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
            },
            rule,
        ))
    }

    /// Creates an experiment in `draft`.
    pub async fn create_experiment(
        &self,
        input: ExperimentInput,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        let key = input
            .key
            .clone()
            .ok_or_else(|| invalid(ErrorCode::InvalidKey, "key is required", "/key"))?;
        check_key(&key, "/key")?;
        let name = check_name(input.name.as_deref().unwrap_or(""))?;
        let (definition, rule) = self.definition(&key, None, input)?;
        let now = self.now();
        let record = ExperimentRecord {
            id: new_id("exp"),
            key: key.clone(),
            name,
            status: "draft".into(),
            definition: serde_json::to_value(&definition)
                .map_err(|e| corrupt(&key, &e.to_string()))?,
            version: 1,
            created_at: now,
            updated_at: now,
            created_by: Some(by.to_owned()),
            updated_by: Some(by.to_owned()),
        };
        self.store.create_experiment(record.clone()).await.map_err(
            |e| match EngineError::from(e) {
                EngineError::Conflict { message, .. } => EngineError::Conflict {
                    code: ErrorCode::ExperimentKeyTaken,
                    message,
                },
                other => other,
            },
        )?;
        let id = record.id.clone();
        self.experiments.put(record, definition, rule);
        self.experiment(&id)
    }

    /// Changes some of an experiment's fields (not its key): a new version.
    pub async fn update_experiment(
        &self,
        id: &str,
        input: ExperimentInput,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        self.update_locked(id, input, by, None).await
    }

    /// Attaches a segment to an experiment's targeting (a new version; no
    /// change when it is already attached).
    pub async fn attach_segment(
        &self,
        id: &str,
        segment_id: &str,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        let current = self.experiment(id)?;
        self.segment(segment_id)?;
        let mut ids = current.definition.segment_ids.clone();
        if ids.iter().any(|s| s == segment_id) {
            return Ok(current);
        }
        ids.push(segment_id.to_owned());
        let input = ExperimentInput {
            segment_ids: Some(ids),
            ..ExperimentInput::default()
        };
        self.update_locked(id, input, by, None).await
    }

    /// Detaches a segment from an experiment's targeting; 404 when it was
    /// not attached.
    pub async fn detach_segment(
        &self,
        id: &str,
        segment_id: &str,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        let current = self.experiment(id)?;
        let mut ids = current.definition.segment_ids.clone();
        let before = ids.len();
        ids.retain(|s| s != segment_id);
        if ids.len() == before {
            return Err(EngineError::NotFound {
                code: ErrorCode::SegmentNotAttached,
                message: format!("segment '{segment_id}' is not attached to experiment '{id}'"),
            });
        }
        let input = ExperimentInput {
            segment_ids: Some(ids),
            ..ExperimentInput::default()
        };
        self.update_locked(id, input, by, None).await
    }

    /// Re-randomises: a new bucket version (stored assignments of older
    /// versions no longer hold) and a new seed (`seed`, else `<key>-v<N>`),
    /// so users are bucketed afresh.
    pub async fn rerandomize_experiment(
        &self,
        id: &str,
        seed: Option<String>,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        let current = self.experiment(id)?;
        let version = current.definition.bucket_version + 1;
        if version > MAX_BUCKET_VERSION {
            return Err(EngineError::Conflict {
                code: ErrorCode::TooManyRerandomizations,
                message: format!(
                    "an experiment is re-randomised at most {MAX_BUCKET_VERSION} times"
                ),
            });
        }
        let seed = seed.unwrap_or_else(|| format!("{}-v{version}", current.record.key));
        let input = ExperimentInput {
            seed: Some(seed),
            ..ExperimentInput::default()
        };
        self.update_locked(id, input, by, Some(version)).await
    }

    async fn update_locked(
        &self,
        id: &str,
        input: ExperimentInput,
        by: &str,
        bucket_version: Option<u32>,
    ) -> Result<Arc<Experiment>, EngineError> {
        let current = self.experiment(id)?;
        if input.key.as_ref().is_some_and(|k| *k != current.record.key) {
            return Err(invalid(
                ErrorCode::ImmutableKey,
                "an experiment's key cannot change",
                "/key",
            ));
        }
        let mut record = current.record.clone();
        if let Some(name) = &input.name {
            record.name = check_name(name)?;
        }
        let key = record.key.clone();
        let (mut definition, rule) = self.definition(&key, Some(&current.definition), input)?;
        if let Some(v) = bucket_version {
            definition.bucket_version = v;
        }
        record.definition =
            serde_json::to_value(&definition).map_err(|e| corrupt(id, &e.to_string()))?;
        record.version += 1;
        record.updated_at = self.now();
        record.updated_by = Some(by.to_owned());
        self.store.update_experiment(record.clone()).await?;
        self.experiments.put(record, definition, rule);
        self.experiment(id)
    }

    /// Moves an experiment through its lifecycle; 409 when the move is not
    /// allowed from its current status.
    pub async fn transition_experiment(
        &self,
        id: &str,
        action: Action,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        let current = self.experiment(id)?;
        let from = current.record.status.clone();
        let Some(to) = action.next(&from) else {
            return Err(EngineError::Conflict {
                code: ErrorCode::InvalidTransition,
                message: format!("cannot {} an experiment that is {from}", action.name()),
            });
        };
        let now = self.now();
        if !self
            .store
            .transition_experiment(id, &from, to, now, Some(by.to_owned()))
            .await?
        {
            return Err(EngineError::Conflict {
                code: ErrorCode::InvalidTransition,
                message: "the experiment changed meanwhile; read it again".into(),
            });
        }
        let mut record = current.record.clone();
        record.status = to.to_owned();
        record.updated_at = now;
        self.experiments
            .put(record, current.definition.clone(), current.rule.clone());
        self.experiment(id)
    }
}
