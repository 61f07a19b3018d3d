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
pub mod sdk;
mod sticky;

pub use banners::{Banners as BannersJson, Mixture, Sources as BannerSourcesJson};

use crate::live::MemberView;
use crate::segments::{invalid, new_id, parse_rule};
use crate::EngineError;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::names;
use stratify_core::rules::Rule;
use stratify_core::ErrorCode;
use stratify_store::{Configuration, ExperimentRecord, TransitionRecord};

pub use stratify_core::experiment::{
    Action, Definition, ExperimentInput, Namespace, Variant, MAX_BUCKET_VERSION, MAX_SEGMENTS,
    MAX_VARIANTS,
};

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
    /// Each variant's banners (when its payload lists any), shared by the
    /// mixtures drawn from them.
    pub(crate) banner_sources: Vec<Option<Arc<banners::Source>>>,
    /// A rendering of each variant as served, made once by the caller (the
    /// HTTP layer) and kept with this version of the experiment: an answer
    /// is assembled from these instead of each user keeping a rendering.
    pub rendered_variants: std::sync::OnceLock<Vec<bytes::Bytes>>,
}

impl Experiment {
    pub fn is_running(&self) -> bool {
        self.record.status == "running"
    }
}

/// Every experiment, as one immutable snapshot (swapped on each change).
#[derive(Default)]
pub struct Registry {
    pub by_id: HashMap<String, Arc<Experiment>>,
    pub by_key: HashMap<String, Arc<Experiment>>,
    /// Running experiments, oldest first (the serving order).
    /// (Shared with the answers computed from it, which name its entries.)
    pub running: Arc<[Arc<Experiment>]>,
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
        store: &dyn Configuration,
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
    pub(crate) async fn reload(&self, store: &dyn Configuration) -> Result<(), EngineError> {
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
        let banner_sources = definition
            .variants
            .iter()
            .map(|v| {
                let list = v.payload.as_ref()?.get("banners")?.as_array()?;
                Some(Arc::new(banners::Source {
                    experiment_id: record.id.clone(),
                    key: record.key.clone(),
                    variant: v.key.clone(),
                    banners: list.clone(),
                }))
            })
            .collect();
        let e = Arc::new(Experiment {
            record,
            definition,
            rule,
            slot,
            variant_slots,
            ranges,
            segment_slots,
            banner_sources,
            rendered_variants: std::sync::OnceLock::new(),
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
            running: running.into(),
            generation: guard.generation + 1,
        });
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    /// One experiment, or `experiment_not_found`.
    pub fn get(&self, id: &str) -> Result<Arc<Experiment>, EngineError> {
        self.registry()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
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

/// Experiment definitions, targeting and lifecycle.
pub struct ExperimentService {
    pub(crate) store: Arc<dyn stratify_store::Configuration>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) experiments: Arc<Experiments>,
    pub(crate) segments: Arc<crate::segments::Segments>,
    pub(crate) limits: Arc<crate::Limits>,
}

impl ExperimentService {
    pub fn experiment(&self, id: &str) -> Result<Arc<Experiment>, EngineError> {
        self.experiments.get(id)
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

    /// Validates a whole definition against the current segment catalog.
    fn definition(
        &self,
        key: &str,
        base: Option<&Definition>,
        input: ExperimentInput,
    ) -> Result<(Definition, Option<Rule>), EngineError> {
        let catalog = self.segments.snapshot();
        Ok(stratify_core::experiment::definition(
            key,
            base,
            input,
            |id| catalog.get(id).is_some(),
            |json| parse_rule(json, "", &catalog),
        )?)
    }

    /// Creates an experiment in `draft`.
    pub async fn create_experiment(
        &self,
        input: ExperimentInput,
        by: &str,
    ) -> Result<Arc<Experiment>, EngineError> {
        let _guard = self.experiments.write.lock().await;
        crate::Limits::check(
            "experiments",
            "experiments",
            self.experiments.registry().by_id.len(),
            self.limits.experiments,
        )?;
        let key = input
            .key
            .clone()
            .ok_or_else(|| invalid(ErrorCode::InvalidKey, "key is required", "/key"))?;
        stratify_core::experiment::check_key(&key, "/key")?;
        let name = names::name(input.name.as_deref().unwrap_or(""))?;
        let (definition, rule) = self.definition(&key, None, input)?;
        let now = self.clock.now();
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
        self.segments.get(segment_id)?;
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
            record.name = names::name(name)?;
        }
        let key = record.key.clone();
        let (mut definition, rule) = self.definition(&key, Some(&current.definition), input)?;
        if let Some(v) = bucket_version {
            definition.bucket_version = v;
        }
        record.definition =
            serde_json::to_value(&definition).map_err(|e| corrupt(id, &e.to_string()))?;
        record.version += 1;
        record.updated_at = self.clock.now();
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
        let now = self.clock.now();
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
