//! Serving: which variant of every running experiment a user gets.
//!
//! For each running experiment inside its schedule, in creation order:
//! 1. Targeting: the user is in any targeted segment (live memberships; no
//!    segments = everyone) and the inline rule, if any, holds.
//! 2. A stored (sticky) assignment of the current bucket version wins, when
//!    the experiment is sticky: weights, coverage and targeting changes do
//!    not move the user. A stuck user who no longer qualifies keeps it only
//!    when the experiment says `keep_on_exit`.
//! 3. Otherwise GrowthBook bucketing: the hash attribute's value, the
//!    namespace range, then `hash(seed, value, hash_version)` against the
//!    bucket ranges (coverage included). Outside every range: not in it.
//!
//! The first serving of (user, experiment) under a bucket version is stored:
//! it is the sticky assignment and the user's first exposure.
//!
//! Answers are cached per user (see `cache`); a computation first
//! waits (briefly) until the live engine has applied the user's committed
//! events, so an order posted and acknowledged is reflected by the next call.

use super::banners::{self, Mixture};
use super::cache::Cache;
use super::sticky::{Sticky, Stuck, UserState};
use super::Experiment;
use crate::segments::{facts_events, Catalog};
use crate::EngineError;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use stratify_core::bucketing;
use stratify_core::ids::UserId;
use stratify_core::rules::{self, Facts, SegmentLookup, SegmentRef};
use stratify_core::time::Millis;
use stratify_core::ErrorCode;
use stratify_store::AssignmentRecord;

/// How long a computation waits for the live engine to apply the user's
/// committed events before answering with the memberships it has.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);
/// Most experiment ids in one eligibility check.
pub const MAX_ELIGIBILITY_IDS: usize = 1000;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// How long a per-user answer is cached (it is invalidated earlier by
    /// any change it depends on).
    pub cache_ttl_ms: Millis,
    /// Banners drawn per mixture.
    pub banner_count: usize,
    /// How long a mixture is kept.
    pub banner_ttl_ms: Millis,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cache_ttl_ms: 5 * 60_000,
            banner_count: banners::DEFAULT_BANNERS,
            banner_ttl_ms: banners::DEFAULT_BANNER_TTL_MS,
        }
    }
}

pub struct Serving {
    sticky: Sticky,
    /// Banner pools shared by the users served the same variants.
    pools: banners::Pools,
    cache: Cache,
    /// The documented defaults (README: answers cached 5 minutes); not
    /// configurable.
    options: Options,
}

impl Serving {
    pub(crate) fn start(store: Arc<dyn stratify_store::Store>, sole_writer: bool) -> Self {
        Self {
            sticky: Sticky::start(store, sole_writer),
            pools: banners::Pools::default(),
            cache: Cache::default(),
            options: Options::default(),
        }
    }

    pub(crate) async fn stop(&self) {
        self.sticky.stop().await;
    }

    /// Writes the queued first exposures.
    pub(crate) async fn flush(&self) {
        self.sticky.flush().await;
    }

    pub(crate) fn forget(&self, user: &str) {
        self.sticky.forget(user);
        self.cache.remove(user);
    }
}

/// Where an answer came from: `cache`, or computed now (`db`, as the seed
/// API calls it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Computed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Computed => "db",
        }
    }
}

/// One experiment a user is in, and their variant.
#[derive(Debug, Clone)]
pub struct Served {
    pub experiment: Arc<Experiment>,
    /// Index into the experiment's variants (u32: a cached answer holds
    /// one of these per experiment it serves).
    pub variant: u32,
    /// Whether a stored assignment decided it (rather than the hash now).
    pub sticky: bool,
}

impl Served {
    pub fn variant(&self) -> &super::Variant {
        &self.experiment.definition.variants[self.variant as usize]
    }
}

/// One experiment of an answer, as [`UserExperiments::served`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct ServedRef<'a> {
    pub experiment: &'a Arc<Experiment>,
    pub variant: u32,
    pub sticky: bool,
}

impl<'a> ServedRef<'a> {
    pub fn variant(&self) -> &'a super::Variant {
        &self.experiment.definition.variants[self.variant as usize]
    }

    pub fn to_served(self) -> Served {
        Served {
            experiment: self.experiment.clone(),
            variant: self.variant,
            sticky: self.sticky,
        }
    }
}

/// Bits of a packed served entry below the experiment's position: the
/// variant (five bits: at most [`stratify_core::experiment::MAX_VARIANTS`])
/// and whether it was sticky.
const VARIANT_BITS: u32 = 5;
const _: () = assert!(stratify_core::experiment::MAX_VARIANTS <= 1 << VARIANT_BITS);

/// A served experiment as a cached answer holds it: its position among the
/// running experiments it was computed from, its variant, sticky or not.
fn pack(position: usize, variant: usize, sticky: bool) -> u32 {
    ((position as u32) << (VARIANT_BITS + 1)) | ((variant as u32) << 1) | u32::from(sticky)
}

/// First exposures counted for one (experiment, variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposureCount {
    pub experiment_key: String,
    pub variant: String,
    pub count: u64,
}

#[derive(Debug)]
pub struct UserExperiments {
    pub user_id: String,
    /// The running experiments it was computed from (`served` names them).
    running: Arc<[Arc<Experiment>]>,
    /// Packed (see [`pack`]): four bytes per experiment served, which a
    /// million cached answers hold.
    served: Box<[u32]>,
    pub banner_mixture: Option<Arc<Mixture>>,
    pub computed_at: Millis,
    pub(crate) valid_until: Millis,
    pub(crate) stamp: u64,
    pub(crate) generation: u64,
}

impl UserExperiments {
    /// The experiments served, in serving order, with their variants.
    pub fn served(&self) -> impl ExactSizeIterator<Item = ServedRef<'_>> + '_ {
        self.served.iter().map(|&p| ServedRef {
            experiment: &self.running[(p >> (VARIANT_BITS + 1)) as usize],
            variant: (p >> 1) & ((1 << VARIANT_BITS) - 1),
            sticky: p & 1 == 1,
        })
    }

    #[cfg(test)]
    pub(crate) fn empty(user: &str, stamp: u64, valid_until: Millis) -> Self {
        UserExperiments {
            user_id: user.into(),
            running: Arc::new([]),
            served: Box::new([]),
            banner_mixture: None,
            computed_at: 0,
            valid_until,
            stamp,
            generation: 1,
        }
    }
}

/// Segment references in inline rules read the live memberships.
pub(crate) struct ViewLookup<'a> {
    pub(crate) views: &'a crate::derived::Views,
    pub(crate) catalog: &'a Catalog,
    pub(crate) user: &'a str,
}

impl SegmentLookup for ViewLookup<'_> {
    fn segment(&self, id: &str) -> Option<SegmentRef<'_>> {
        self.catalog.get(id)?;
        let view = self.views.live.view();
        Some(SegmentRef::Static(view.contains(self.user, view.slot(id))))
    }
}

fn hash_value<'a>(
    attribute: &str,
    user: &'a str,
    attributes: &'a Map<String, Value>,
) -> Option<Cow<'a, str>> {
    if attribute == "user_id" {
        return Some(Cow::Borrowed(user));
    }
    match attributes.get(attribute)? {
        Value::String(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// Serving: a user's experiments and variants, eligibility, banners, sticky assignments.
pub struct ServingService {
    pub(crate) store: Arc<dyn stratify_store::Store>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) experiments: Arc<super::Experiments>,
    pub(crate) segments: Arc<crate::segments::Segments>,
    pub(crate) views: Arc<crate::derived::Views>,
    /// The GrowthBook payload of the current registry (see `sdk`).
    pub(crate) sdk_payload: super::sdk::PayloadCache,
}

impl ServingService {
    /// Every running experiment `user` is in, with their variants and banner
    /// mixture. `context` (attributes given by the caller, e.g. OFREP) is
    /// laid over the stored attributes; such answers are not cached.
    pub async fn user_experiments(
        &self,
        user: &UserId,
        context: Option<&Map<String, Value>>,
    ) -> Result<(Arc<UserExperiments>, Source), EngineError> {
        // An id merged into a known user is served as that user.
        let id = &*self.views.aliases.resolve(user);
        let user = id.as_str();
        let generation = self.experiments.registry().generation;
        if context.is_none() {
            let stamp = self.views.freshness.stamp(user);
            if let Some(hit) =
                self.views
                    .serving
                    .cache
                    .get(user, stamp, generation, self.clock.now())
            {
                return Ok((hit, Source::Cache));
            }
        }
        self.views.serving.sticky.admit().await;
        if !self
            .views
            .freshness
            .wait_current(user, READ_YOUR_WRITES)
            .await
        {
            tracing::debug!(user, "answering before the live engine caught up");
        }
        let answer = Arc::new(self.compute(id, context).await?);
        if context.is_none() {
            self.views
                .serving
                .cache
                .put(answer.clone(), answer.computed_at);
        }
        Ok((answer, Source::Computed))
    }

    /// The experiments among `ids` that `user` is in, with their variants;
    /// 422 for an id that names no experiment.
    pub async fn check_eligibility(
        &self,
        user: &UserId,
        ids: &[String],
    ) -> Result<Vec<Served>, EngineError> {
        if ids.len() > MAX_ELIGIBILITY_IDS {
            return Err(crate::segments::invalid(
                ErrorCode::TooManyExperiments,
                format!("at most {MAX_ELIGIBILITY_IDS} experiment ids per call"),
                "/experiment_ids",
            ));
        }
        let registry = self.experiments.registry();
        for (i, id) in ids.iter().enumerate() {
            if !registry.by_id.contains_key(id) {
                return Err(crate::segments::invalid(
                    ErrorCode::ExperimentNotFound,
                    format!("no experiment '{id}'"),
                    &format!("/experiment_ids/{i}"),
                ));
            }
        }
        let (answer, _) = self.user_experiments(user, None).await?;
        Ok(answer
            .served()
            .filter(|s| ids.contains(&s.experiment.record.id))
            .map(ServedRef::to_served)
            .collect())
    }

    /// Drops a user's cached answer and banner mixture: the next call
    /// computes afresh and draws new banners.
    pub async fn clear_user_cache(&self, user: &UserId) -> Result<(), EngineError> {
        let user = &*self.views.aliases.resolve(user);
        let user = user.as_str();
        let state = self.user_state(user).await?;
        if let Some(m) = state.mixture {
            let mut expired = (*m).clone();
            expired.expires_at = self.clock.now();
            self.views
                .serving
                .sticky
                .set_mixture(user, Arc::new(expired));
        }
        self.views.serving.cache.remove(user);
        self.views.freshness.touch(user);
        Ok(())
    }

    /// The assignments stored for `user`, newest first, without serving
    /// anything (no exposure is recorded): what the dashboard shows.
    pub async fn user_assignments(
        &self,
        user: &UserId,
    ) -> Result<Vec<stratify_store::AssignmentRecord>, EngineError> {
        self.flush_assignments().await;
        let user = self.views.aliases.resolve(user);
        let (mut rows, _) = self.store.serving_state(user.as_str()).await?;
        rows.sort_by(|a, b| {
            b.assigned_at
                .cmp(&a.assigned_at)
                .then_with(|| a.experiment_id.cmp(&b.experiment_id))
        });
        Ok(rows)
    }

    /// First exposures (new sticky assignments) this process has made since
    /// it started, per experiment and current variant, for every experiment
    /// with any: counted as they happen, read without the store.
    pub fn exposure_counts(&self) -> Vec<ExposureCount> {
        let registry = self.experiments.registry();
        let sticky = &self.views.serving.sticky;
        let mut out: Vec<ExposureCount> = registry
            .by_id
            .values()
            .flat_map(|e| {
                e.variant_slots
                    .iter()
                    .zip(&e.definition.variants)
                    .map(|(&slot, v)| ExposureCount {
                        experiment_key: e.record.key.clone(),
                        variant: v.key.clone(),
                        count: sticky.exposures(e.slot, slot),
                    })
            })
            .filter(|c| c.count > 0)
            .collect();
        out.sort_by(|a, b| (&a.experiment_key, &a.variant).cmp(&(&b.experiment_key, &b.variant)));
        out
    }

    /// Waits until every assignment and mixture served so far is stored.
    pub async fn flush_assignments(&self) {
        self.views.serving.sticky.flush().await;
    }

    async fn user_state(&self, user: &str) -> Result<UserState, EngineError> {
        let sticky = &self.views.serving.sticky;
        if let Some(s) = sticky.get(user) {
            return Ok(s);
        }
        if !sticky.may_be_stored(user) {
            return Ok(sticky.insert_loaded(user, UserState::default()));
        }
        let (rows, mixture) = self.store.serving_state(user).await?;
        let stuck = rows
            .iter()
            .map(|r| {
                let (experiment, variant) = self.experiments.intern(&r.experiment_id, &r.variant);
                Stuck {
                    experiment,
                    variant,
                    bucket_version: r.bucket_version.min(u16::MAX as u32) as u16,
                }
            })
            .collect();
        let registry = self.experiments.registry();
        let known = |s: &banners::Source| {
            let e = registry.by_id.get(&s.experiment_id)?;
            let v = e
                .definition
                .variants
                .iter()
                .position(|v| v.key == s.variant)?;
            e.banner_sources[v].clone().filter(|k| **k == *s)
        };
        let mixture = mixture
            .and_then(|m| Mixture::from_json(m.mixture, known, &self.views.serving.pools))
            .map(Arc::new);
        Ok(self
            .views
            .serving
            .sticky
            .insert_loaded(user, UserState { stuck, mixture }))
    }

    async fn facts_for(
        &self,
        id: &UserId,
        now: Millis,
        context: Option<&Map<String, Value>>,
        events: bool,
    ) -> Result<(Map<String, Value>, Vec<stratify_store::StoredEvent>), EngineError> {
        let mut attributes = self
            .store
            .get_user(id)
            .await?
            .map(|u| u.attributes)
            .unwrap_or_default();
        if let Some(c) = context {
            for (k, v) in c {
                attributes.insert(k.clone(), v.clone());
            }
        }
        let events = if events {
            self.store
                .user_events(id, now, crate::live::MAX_USER_EVENTS as u32)
                .await?
        } else {
            Vec::new()
        };
        Ok((attributes, events))
    }

    async fn compute(
        &self,
        id: &UserId,
        context: Option<&Map<String, Value>>,
    ) -> Result<UserExperiments, EngineError> {
        let user = id.as_str();
        let registry = self.experiments.registry();
        let options = self.views.serving.options;
        let stamp = self.views.freshness.stamp(user);
        let now = self.clock.now();
        let state = self.user_state(user).await?;
        let running = &registry.running;
        let needs_rules = running.iter().any(|e| e.rule.is_some());
        let needs_attributes = context.is_some()
            || needs_rules
            || running
                .iter()
                .any(|e| e.definition.hash_attribute != "user_id");
        let (attributes, events) = if needs_attributes {
            self.facts_for(id, now, context, needs_rules).await?
        } else {
            (Map::new(), Vec::new())
        };
        let fact_events = facts_events(&events);
        let catalog = self.segments.snapshot();
        let lookup = ViewLookup {
            views: &self.views,
            catalog: &catalog,
            user,
        };
        let facts = Facts {
            attributes: &attributes,
            events: &fact_events,
            segments: &lookup,
            now,
        };
        let mut segments = Vec::new();
        self.views.live.view().segments_of(user, &mut segments);

        let mut valid_until = now.saturating_add(options.cache_ttl_ms);
        let mut served = Vec::new();
        // (index in `served`, position) and (slot, record) of each first
        // assignment.
        let (mut first_at, mut first) = (Vec::new(), Vec::new());
        for (position, e) in running.iter().enumerate() {
            let d = &e.definition;
            if let Some(start) = d.start_at {
                if now < start {
                    valid_until = valid_until.min(start);
                    continue;
                }
            }
            if let Some(end) = d.end_at {
                if now >= end {
                    continue;
                }
                valid_until = valid_until.min(end);
            }
            let mut targeted = e.segment_slots.is_empty()
                || e.segment_slots
                    .iter()
                    .any(|s| segments.binary_search(s).is_ok());
            if let Some(rule) = &e.rule {
                if targeted {
                    targeted = rules::evaluate(rule, &facts);
                }
                if let Some(t) = rules::next_change(rule, &facts) {
                    valid_until = valid_until.min(t);
                }
            }
            let version = d.bucket_version.min(u16::MAX as u32) as u16;
            let stuck = state
                .stuck
                .iter()
                .find(|s| s.experiment == e.slot && s.bucket_version == version);
            let stuck_variant =
                stuck.and_then(|s| e.variant_slots.iter().position(|&v| v == s.variant));
            if d.sticky {
                if let Some(v) = stuck_variant {
                    if targeted || d.keep_on_exit {
                        served.push(pack(position, v, true));
                    }
                    continue;
                }
            }
            if !targeted {
                continue;
            }
            let Some(value) = hash_value(&d.hash_attribute, user, &attributes) else {
                continue;
            };
            if let Some(ns) = &d.namespace {
                if !bucketing::in_namespace(&value, &ns.id, ns.start, ns.end) {
                    continue;
                }
            }
            let Some(n) = bucketing::hash(&d.seed, &value, d.hash_version) else {
                continue;
            };
            let Some(variant) = bucketing::choose_variation(n, &e.ranges) else {
                continue;
            };
            if stuck.is_none() {
                first_at.push((served.len(), position));
                first.push((
                    Stuck {
                        experiment: e.slot,
                        variant: e.variant_slots[variant],
                        bucket_version: version,
                    },
                    AssignmentRecord {
                        user_id: user.to_owned(),
                        experiment_id: e.record.id.clone(),
                        variant: d.variants[variant].key.clone(),
                        bucket_version: d.bucket_version,
                        assigned_at: now,
                    },
                ));
            }
            served.push(pack(position, variant, false));
        }
        // The first assignments, recorded together. A concurrent first
        // serving that won holds (when sticky).
        let held = self.views.serving.sticky.assign(user, first);
        for ((i, position), held) in first_at.into_iter().zip(held) {
            let e = &running[position];
            if e.definition.sticky {
                if let Some(v) = e.variant_slots.iter().position(|&v| v == held.variant) {
                    served[i] = pack(position, v, false);
                }
            }
        }

        let answer = UserExperiments {
            user_id: user.to_owned(),
            running: running.clone(),
            served: served.into(),
            banner_mixture: None,
            computed_at: now,
            valid_until,
            stamp,
            generation: registry.generation,
        };
        let banner_mixture = self.mixture(user, &state, &answer, now, &options);
        Ok(UserExperiments {
            valid_until: banner_mixture
                .as_ref()
                .map_or(valid_until, |m| valid_until.min(m.expires_at)),
            banner_mixture,
            ..answer
        })
    }

    /// The user's banner mixture for what they are served: the kept one
    /// while it is unexpired and drawn from the same pool, else a new draw.
    fn mixture(
        &self,
        user: &str,
        state: &UserState,
        answer: &UserExperiments,
        now: Millis,
        options: &Options,
    ) -> Option<Arc<Mixture>> {
        let sources: Vec<_> = answer
            .served()
            .filter_map(|s| s.experiment.banner_sources.get(s.variant as usize)?.clone())
            .collect();
        if sources.is_empty() {
            return None;
        }
        let serving = &self.views.serving;
        match banners::pick(state.mixture.as_ref(), sources, &serving.pools, now) {
            banners::Pick::Nothing => None,
            banners::Pick::Kept(m) => Some(m),
            banners::Pick::Draw(pool) => {
                let m = Arc::new(banners::draw(
                    user,
                    pool,
                    options.banner_count,
                    now,
                    options.banner_ttl_ms,
                ));
                serving.sticky.set_mixture(user, m.clone());
                Some(m)
            }
        }
    }
}
