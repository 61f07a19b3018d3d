//! Segments: dynamic (a rule) or static (a list of users), versioned and
//! audited; population queries run the rule compiled to SQL by the store, and
//! per-user answers (a user's segments, explain) evaluate the same rule in
//! memory over the user's events.

use crate::EngineError;
use parking_lot::RwLock;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_core::rules::sql::{self, Compiled, Dialect};
use stratify_core::rules::{self, EventFact, Facts, Rule, SegmentLookup, SegmentRef};
use stratify_core::time::Millis;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::{Configuration, SegmentRecord, SegmentVersion, StoredEvent};

/// Most user ids one request may add, remove or upload.
pub const MAX_IDS_PER_REQUEST: usize = 100_000;
/// Most events of one user read to evaluate or explain a rule.
pub const MAX_USER_EVENTS: u32 = 100_000;
/// Largest page of members.
pub const MAX_PAGE: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dynamic,
    Static,
}

/// A segment with its parsed rule.
#[derive(Debug, Clone)]
pub struct Segment {
    pub record: SegmentRecord,
    pub rule: Option<Rule>,
}

impl Segment {
    pub fn kind(&self) -> Kind {
        if self.rule.is_some() {
            Kind::Dynamic
        } else {
            Kind::Static
        }
    }
}

/// Every segment, by id: an immutable snapshot swapped on change.
#[derive(Default)]
pub struct Catalog {
    by_id: HashMap<String, Arc<Segment>>,
}

impl Catalog {
    pub fn get(&self, id: &str) -> Option<&Arc<Segment>> {
        self.by_id.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Segment>> {
        self.by_id.values()
    }
}

/// Segments as seen for SQL: static ones become a membership subquery.
struct ForSql<'a>(&'a Catalog);

impl SegmentLookup for ForSql<'_> {
    fn segment(&self, id: &str) -> Option<SegmentRef<'_>> {
        self.0.get(id).map(|s| match &s.rule {
            Some(r) => SegmentRef::Dynamic(r),
            None => SegmentRef::Static(false),
        })
    }
}

/// Segments as seen for one user.
struct ForUser<'a> {
    catalog: &'a Catalog,
    member_of: &'a HashSet<String>,
}

impl SegmentLookup for ForUser<'_> {
    fn segment(&self, id: &str) -> Option<SegmentRef<'_>> {
        self.catalog.get(id).map(|s| match &s.rule {
            Some(r) => SegmentRef::Dynamic(r),
            None => SegmentRef::Static(self.member_of.contains(id)),
        })
    }
}

pub struct Segments {
    catalog: RwLock<Arc<Catalog>>,
    /// Serialises segment writes (version numbers are read-modify-write).
    write: tokio::sync::Mutex<()>,
}

impl Segments {
    pub(crate) async fn load(store: &dyn Configuration) -> Result<Self, EngineError> {
        let mut by_id = HashMap::new();
        for record in store.segments().await? {
            let rule = match &record.rules {
                Some(json) => Some(rules::parse(json).map_err(|e| {
                    EngineError::Store(stratify_store::StoreError::Corrupt(format!(
                        "segment {} has an invalid stored rule: {e}",
                        record.id
                    )))
                })?),
                None => None,
            };
            by_id.insert(record.id.clone(), Arc::new(Segment { record, rule }));
        }
        Ok(Self {
            catalog: RwLock::new(Arc::new(Catalog { by_id })),
            write: tokio::sync::Mutex::new(()),
        })
    }

    pub fn snapshot(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// One segment, or `segment_not_found`.
    pub fn get(&self, id: &str) -> Result<Arc<Segment>, EngineError> {
        self.snapshot()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Installs a freshly loaded catalog (a reload).
    pub(crate) fn replace(&self, catalog: Arc<Catalog>) {
        *self.catalog.write() = catalog;
    }

    fn put(&self, segment: Segment) {
        let mut guard = self.catalog.write();
        let mut by_id = guard.by_id.clone();
        by_id.insert(segment.record.id.clone(), Arc::new(segment));
        *guard = Arc::new(Catalog { by_id });
    }

    fn remove(&self, id: &str) {
        let mut guard = self.catalog.write();
        let mut by_id = guard.by_id.clone();
        by_id.remove(id);
        *guard = Arc::new(Catalog { by_id });
    }
}

/// How [`SegmentService::change_members`] changes a static segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Add,
    Remove,
    /// Replace the whole list (an upload).
    Replace,
}

/// What a client sends to create or replace a segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentInput {
    pub name: String,
    pub description: Option<String>,
    pub rules: Option<Value>,
    pub user_ids: Option<Vec<String>>,
}

/// A partial update (`PATCH`).
#[derive(Debug, Clone, Default)]
pub struct SegmentPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub rules: Option<Value>,
}

/// Which evaluator answers a population query. Both give the same set (a
/// differential test keeps them equal); they page in different orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Evaluator {
    /// The columnar in-memory index (default): users in first-seen order.
    #[default]
    Memory,
    /// The rule compiled to SQL and run by the store: users in id order.
    Sql,
}

/// What page of a population to return.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRequest<'a> {
    pub limit: u32,
    pub cursor: Option<&'a str>,
    pub as_of: Option<Millis>,
    pub include_sql: bool,
    pub evaluator: Evaluator,
}

/// One page of a population.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    pub user_ids: Vec<String>,
    pub total_count: u64,
    pub next_cursor: Option<String>,
    pub sql: Option<Compiled>,
}

pub(crate) fn invalid(code: ErrorCode, message: impl Into<String>, field: &str) -> EngineError {
    EngineError::Invalid(ValidationError::new(code, message).at(field))
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound {
        code: ErrorCode::SegmentNotFound,
        message: format!("no segment '{id}'"),
    }
}

/// Parses user ids, pointing at the bad one.
pub fn parse_user_ids(ids: Vec<String>, pointer: &str) -> Result<Vec<UserId>, EngineError> {
    if ids.len() > MAX_IDS_PER_REQUEST {
        return Err(invalid(
            ErrorCode::TooManyIds,
            format!("at most {MAX_IDS_PER_REQUEST} user ids per request"),
            pointer,
        ));
    }
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            UserId::parse(id).map_err(|e| EngineError::Invalid(e.at(format!("{pointer}/{i}"))))
        })
        .collect()
}

/// Parses a rule and checks its references: every referenced segment exists
/// and following references from `self_id` never comes back to it.
pub(crate) fn parse_rule(
    json: &Value,
    self_id: &str,
    catalog: &Catalog,
) -> Result<Rule, ValidationError> {
    let rule = rules::parse(json).map_err(|e| e.within("/rules"))?;
    for id in rule.references() {
        if catalog.get(id).is_none() {
            return Err(ValidationError::new(
                ErrorCode::SegmentNotFound,
                format!("the rule refers to unknown segment '{id}'"),
            )
            .at("/rules"));
        }
    }
    // Depth-first search over references, the new rule standing in for self.
    let mut stack: Vec<String> = rule.references().into_iter().map(str::to_owned).collect();
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if id == self_id {
            return Err(ValidationError::new(
                ErrorCode::SegmentCycle,
                "segment references form a cycle",
            )
            .at("/rules"));
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(r) = catalog.get(&id).and_then(|s| s.rule.as_ref()) {
            stack.extend(r.references().into_iter().map(str::to_owned));
        }
    }
    check_reference_graph(&rule, catalog, None).map_err(|e| e.at("/rules"))?;
    Ok(rule)
}

/// Refuses a rule whose reference graph is over the budget
/// ([`rules::MAX_REF_GRAPH_NODES`], [`rules::MAX_REF_CHAIN`]). `edited`
/// stands in for one segment's stored rule (a change being checked).
pub(crate) fn check_reference_graph(
    rule: &Rule,
    catalog: &Catalog,
    edited: Option<(&str, &Rule)>,
) -> Result<(), ValidationError> {
    let rule_of = |id: &str| match edited {
        Some((e, r)) if e == id => Some(r),
        _ => catalog.get(id).and_then(|s| s.rule.as_ref()),
    };
    let graph = rules::reference_graph(rule, &rule_of);
    if graph.nodes > rules::MAX_REF_GRAPH_NODES || graph.chain > rules::MAX_REF_CHAIN {
        return Err(ValidationError::new(
            ErrorCode::ReferenceGraphTooLarge,
            format!(
                "the rule's segment references reach {} rule nodes through a chain of {} \
                 (at most {} nodes, each segment counted once, and a chain of {})",
                graph.nodes,
                graph.chain,
                rules::MAX_REF_GRAPH_NODES,
                rules::MAX_REF_CHAIN
            ),
        ));
    }
    Ok(())
}

/// A random id with a readable prefix (`seg`, `exp`, `whk`).
pub(crate) fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Cursors are the hex of the last user id: opaque and URL-safe.
pub fn encode_cursor(user_id: &str) -> String {
    hex::encode(user_id.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Result<String, EngineError> {
    hex::decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            invalid(
                ErrorCode::InvalidCursor,
                "not a cursor from this API",
                "/cursor",
            )
        })
}

pub(crate) fn facts_events(events: &[StoredEvent]) -> Vec<EventFact<'_>> {
    events
        .iter()
        .map(|e| EventFact {
            name: &e.name,
            timestamp: e.timestamp,
            properties: e.properties.as_ref().map(|m| m as &dyn rules::Fields),
        })
        .collect()
}

/// Segments: definitions, static members, populations, SQL, explain.
pub struct SegmentService {
    pub(crate) store: Arc<dyn stratify_store::Store>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) segments: Arc<Segments>,
    pub(crate) experiments: Arc<crate::experiments::Experiments>,
    pub(crate) views: Arc<crate::derived::Views>,
    pub(crate) derive: Arc<dyn crate::derived::Derive>,
    pub(crate) limits: Arc<crate::Limits>,
}

impl SegmentService {
    pub fn segment_catalog(&self) -> Arc<Catalog> {
        self.segments.snapshot()
    }

    pub fn segment(&self, id: &str) -> Result<Arc<Segment>, EngineError> {
        self.segments.get(id)
    }

    pub fn list_segments(&self) -> Vec<Arc<Segment>> {
        let mut all: Vec<_> = self.segments.snapshot().by_id.values().cloned().collect();
        all.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        all
    }

    pub async fn create_segment(
        &self,
        input: SegmentInput,
        by: &str,
    ) -> Result<Arc<Segment>, EngineError> {
        let _guard = self.segments.write.lock().await;
        let name = stratify_core::names::name(&input.name)?;
        let description = stratify_core::names::description(input.description)?;
        let id = new_id("seg");
        let catalog = self.segments.snapshot();
        crate::Limits::check(
            "segments",
            "segments",
            catalog.all().count(),
            self.limits.segments,
        )?;
        let (rule, members) = match (input.rules, input.user_ids) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    ErrorCode::InvalidSegment,
                    "give either rules (dynamic) or user_ids (static), not both",
                    "/user_ids",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    ErrorCode::InvalidSegment,
                    "give rules (dynamic) or user_ids (static)",
                    "/rules",
                ))
            }
            (Some(json), None) => (Some((parse_rule(&json, &id, &catalog)?, json)), Vec::new()),
            (None, Some(ids)) => (None, self.resolve_all(parse_user_ids(ids, "/user_ids")?)),
        };
        let now = self.clock.now();
        let record = SegmentRecord {
            id: id.clone(),
            name,
            description,
            kind: if rule.is_some() { "dynamic" } else { "static" }.into(),
            rules: rule.as_ref().map(|(_, json)| json.clone()),
            version: 1,
            created_at: now,
            updated_at: now,
            created_by: Some(by.to_owned()),
            updated_by: Some(by.to_owned()),
        };
        let member_ids: Vec<String> = members.iter().map(|u| u.as_str().to_owned()).collect();
        self.store
            .create_segment(record.clone(), members)
            .await
            .map_err(name_taken)?;
        let segment = Segment {
            record,
            rule: rule.map(|(r, _)| r),
        };
        self.derive
            .segment_put(&id, segment.rule.clone().map(Arc::new), now);
        if segment.rule.is_none() {
            self.derive
                .static_members_changed(&id, MemberChange::Replace, &member_ids);
        }
        self.segments.put(segment);
        self.segment(&id)
    }

    /// Replaces name, description and rules (a new version). The kind cannot change.
    pub async fn update_segment(
        &self,
        id: &str,
        patch: SegmentPatch,
        by: &str,
    ) -> Result<Arc<Segment>, EngineError> {
        let _guard = self.segments.write.lock().await;
        let catalog = self.segments.snapshot();
        let current = catalog.get(id).cloned().ok_or_else(|| not_found(id))?;
        let mut record = current.record.clone();
        let mut rule = current.rule.clone();
        if let Some(name) = patch.name {
            record.name = stratify_core::names::name(&name)?;
        }
        if let Some(description) = patch.description {
            record.description = stratify_core::names::description(description)?;
        }
        let rules_changed = patch.rules.is_some();
        if let Some(json) = patch.rules {
            if current.rule.is_none() {
                return Err(invalid(
                    ErrorCode::StaticSegment,
                    "a static segment has no rules; change its members instead",
                    "/rules",
                ));
            }
            let new_rule = parse_rule(&json, id, &catalog)?;
            self.check_dependents(id, &new_rule, &catalog)?;
            rule = Some(new_rule);
            record.rules = Some(json);
        }
        record.version += 1;
        record.updated_at = self.clock.now();
        record.updated_by = Some(by.to_owned());
        self.store
            .update_segment(record.clone())
            .await
            .map_err(name_taken)?;
        if rules_changed {
            self.derive
                .segment_put(id, rule.clone().map(Arc::new), record.updated_at);
        }
        self.segments.put(Segment { record, rule });
        self.segment(id)
    }

    /// A changed rule grows the reference graph of every segment and
    /// experiment that reaches it: each must stay within the budget.
    fn check_dependents(
        &self,
        id: &str,
        rule: &Rule,
        catalog: &Catalog,
    ) -> Result<(), EngineError> {
        let segments = catalog
            .all()
            .filter(|s| s.record.id != id)
            .filter_map(|s| Some((format!("segment '{}'", s.record.id), s.rule.as_ref()?)));
        let registry = self.experiments.registry();
        let experiments = registry
            .by_id
            .values()
            .filter_map(|e| Some((format!("experiment '{}'", e.record.key), e.rule.as_ref()?)));
        for (who, dependent) in segments.chain(experiments) {
            if let Err(e) = check_reference_graph(dependent, catalog, Some((id, rule))) {
                return Err(EngineError::Invalid(
                    ValidationError::new(e.code, format!("with this change, {who}: {}", e.message))
                        .at("/rules"),
                ));
            }
        }
        Ok(())
    }

    pub async fn delete_segment(&self, id: &str) -> Result<(), EngineError> {
        let _guard = self.segments.write.lock().await;
        let catalog = self.segments.snapshot();
        if catalog.get(id).is_none() {
            return Err(not_found(id));
        }
        if let Some(user) = catalog.by_id.values().find(|s| {
            s.rule
                .as_ref()
                .is_some_and(|r| r.references().contains(&id))
        }) {
            return Err(EngineError::Conflict {
                code: ErrorCode::SegmentInUse,
                message: format!(
                    "segment '{}' ({}) refers to this segment",
                    user.record.name, user.record.id
                ),
            });
        }
        if let Some(e) = self.experiments.registry().by_id.values().find(|e| {
            e.definition.segment_ids.iter().any(|s| s == id)
                || e.rule
                    .as_ref()
                    .is_some_and(|r| r.references().contains(&id))
        }) {
            return Err(EngineError::Conflict {
                code: ErrorCode::SegmentInUse,
                message: format!(
                    "experiment '{}' ({}) targets this segment",
                    e.record.key, e.record.id
                ),
            });
        }
        self.store.delete_segment(id).await?;
        self.derive.segment_removed(id);
        self.segments.remove(id);
        Ok(())
    }

    pub async fn segment_versions(&self, id: &str) -> Result<Vec<SegmentVersion>, EngineError> {
        self.segment(id)?;
        Ok(self.store.segment_versions(id).await?)
    }

    fn static_segment(&self, id: &str) -> Result<Arc<Segment>, EngineError> {
        let s = self.segment(id)?;
        if s.rule.is_some() {
            return Err(EngineError::Conflict {
                code: ErrorCode::DynamicSegment,
                message: "members of a dynamic segment follow its rules".into(),
            });
        }
        Ok(s)
    }

    /// Changes a static segment's members (unknown users are created); returns
    /// how many memberships changed.
    pub async fn change_members(
        &self,
        id: &str,
        change: MemberChange,
        ids: Vec<String>,
    ) -> Result<u64, EngineError> {
        self.static_segment(id)?;
        let users = self.resolve_all(parse_user_ids(ids, "/user_ids")?);
        let ids: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let now = self.clock.now();
        let changed = match change {
            MemberChange::Add => self.store.add_members(id, users, now).await?,
            MemberChange::Remove => self.store.remove_members(id, users).await?,
            MemberChange::Replace => self.store.replace_members(id, users, now).await?,
        };
        self.derive.static_members_changed(id, change, &ids);
        Ok(changed)
    }

    /// Ids merged into other users (aliases) replaced by those users.
    fn resolve_all(&self, mut users: Vec<UserId>) -> Vec<UserId> {
        self.views.aliases.rewrite(users.iter_mut());
        users
    }

    /// The SQL a segment (or an ad-hoc rule) runs as.
    pub fn segment_sql(
        &self,
        id: &str,
        dialect: Dialect,
        as_of: Option<Millis>,
    ) -> Result<Compiled, EngineError> {
        let catalog = self.segments.snapshot();
        let rule = match catalog.get(id).ok_or_else(|| not_found(id))?.rule.clone() {
            Some(r) => r,
            None => Rule::Segment(id.to_owned()),
        };
        Ok(sql::members(
            &rule,
            dialect,
            as_of.unwrap_or_else(|| self.clock.now()),
            &ForSql(&catalog),
        ))
    }

    /// One page of a segment's members.
    pub async fn segment_members(
        &self,
        id: &str,
        limit: u32,
        cursor: Option<&str>,
        as_of: Option<Millis>,
    ) -> Result<Population, EngineError> {
        let segment = self.segment(id)?;
        let rule = segment
            .rule
            .clone()
            .unwrap_or_else(|| Rule::Segment(id.to_owned()));
        self.population(
            &rule,
            PageRequest {
                limit,
                cursor,
                as_of,
                include_sql: false,
                evaluator: Evaluator::Memory,
            },
        )
        .await
    }

    /// An ad-hoc population query (any rule format, the DuckMart payload included).
    pub async fn query_population(
        &self,
        rules_json: &Value,
        page: PageRequest<'_>,
    ) -> Result<Population, EngineError> {
        let catalog = self.segments.snapshot();
        let rule = parse_rule(rules_json, "", &catalog)?;
        self.population(&rule, page).await
    }

    async fn population(
        &self,
        rule: &Rule,
        page: PageRequest<'_>,
    ) -> Result<Population, EngineError> {
        if !(1..=MAX_PAGE).contains(&page.limit) {
            return Err(invalid(
                ErrorCode::InvalidLimit,
                format!("limit is 1–{MAX_PAGE}"),
                "/limit",
            ));
        }
        let after = page.cursor.map(decode_cursor).transpose()?;
        let catalog = self.segments.snapshot();
        let now = page.as_of.unwrap_or_else(|| self.clock.now());
        let lookup = ForSql(&catalog);
        let dialect = self.store.dialect();
        let sql = page
            .include_sql
            .then(|| sql::members(rule, dialect, now, &lookup));
        let limit = page.limit as usize;
        // A shared store (PostgreSQL) is written by every node: its answer,
        // not a node's index, is the current one, and no node keeps one.
        let index = match page.evaluator {
            Evaluator::Memory => self.views.population.as_ref(),
            Evaluator::Sql => None,
        };
        let (mut user_ids, total_count) = match index {
            None => {
                let predicate = sql::predicate(rule, dialect, now, &lookup);
                self.store
                    .select_users(predicate, after, page.limit + 1)
                    .await?
            }
            Some(index) => {
                let index = index.read();
                let selected = index.select(rule, now, &lookup);
                let start = match &after {
                    Some(user) => Some(index.index_of(user).ok_or_else(|| {
                        invalid(
                            ErrorCode::InvalidCursor,
                            "the cursor's user no longer exists; start again",
                            "/cursor",
                        )
                    })?),
                    None => None,
                };
                let ids = selected
                    .iter_from(start)
                    .take(limit + 1)
                    .map(|i| index.user_id(i).to_owned())
                    .collect();
                (ids, selected.count())
            }
        };
        let next_cursor = if user_ids.len() > limit {
            user_ids.truncate(limit);
            user_ids.last().map(|u| encode_cursor(u))
        } else {
            None
        };
        Ok(Population {
            user_ids,
            total_count,
            next_cursor,
            sql,
        })
    }

    /// Whether a user is in a segment, node by node.
    pub async fn explain(
        &self,
        user_id: &UserId,
        segment_id: &str,
        as_of: Option<Millis>,
    ) -> Result<(bool, Value), EngineError> {
        let catalog = self.segments.snapshot();
        let segment = catalog
            .get(segment_id)
            .cloned()
            .ok_or_else(|| not_found(segment_id))?;
        let user = self
            .store
            .get_user(user_id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                code: ErrorCode::UserNotFound,
                message: format!("no user '{user_id}'"),
            })?;
        let now = as_of.unwrap_or_else(|| self.clock.now());
        let events = self
            .store
            .user_events(user_id, now, MAX_USER_EVENTS)
            .await?;
        let member_of: HashSet<String> = self
            .store
            .static_memberships(user_id)
            .await?
            .into_iter()
            .collect();
        let lookup = ForUser {
            catalog: &catalog,
            member_of: &member_of,
        };
        let facts_events = facts_events(&events);
        let facts = Facts {
            attributes: &user.attributes,
            events: &facts_events,
            segments: &lookup,
            now,
        };
        let rule = segment
            .rule
            .clone()
            .unwrap_or_else(|| Rule::Segment(segment_id.to_owned()));
        Ok(rules::explain(&rule, &facts))
    }

    /// Ids of every segment the user is in now, given the user's events up to now.
    pub(crate) async fn user_segment_ids(
        &self,
        user: &stratify_store::UserRecord,
        user_id: &UserId,
        events: &[StoredEvent],
    ) -> Result<Vec<String>, EngineError> {
        let catalog = self.segments.snapshot();
        let member_of: HashSet<String> = self
            .store
            .static_memberships(user_id)
            .await?
            .into_iter()
            .collect();
        let lookup = ForUser {
            catalog: &catalog,
            member_of: &member_of,
        };
        let facts_events = facts_events(events);
        let facts = Facts {
            attributes: &user.attributes,
            events: &facts_events,
            segments: &lookup,
            now: self.clock.now(),
        };
        let mut ids: Vec<String> = catalog
            .by_id
            .values()
            .filter(|s| match &s.rule {
                Some(r) => rules::evaluate(r, &facts),
                None => member_of.contains(&s.record.id),
            })
            .map(|s| s.record.id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn name_taken(e: stratify_store::StoreError) -> EngineError {
    match EngineError::from(e) {
        EngineError::Conflict { message, .. } => EngineError::Conflict {
            code: ErrorCode::SegmentNameTaken,
            message,
        },
        other => other,
    }
}
