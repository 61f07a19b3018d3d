//! Identity stitching: `POST /v1/identify` merges an anonymous visitor into
//! a known user, and the visitor's id becomes an alias that every later
//! read and write resolves to the known user.
//!
//! The merge is one store transaction ([`stratify_store::Users::identify`]);
//! derived state follows it as one fact ([`crate::derived::Derive::user_merged`]):
//! the alias table here, the population index, the live state (the
//! visitor's memberships end and the person's are evaluated anew, cause
//! `identify`), metric columns, sticky state and cached answers. On a
//! cluster every node follows merges from the store's log of departed users,
//! so the known user's owner applies a merge made on any node, and a merge
//! whose node died after its commit is still applied.

use crate::EngineError;
use parking_lot::RwLock;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_core::ErrorCode;
use stratify_store::{Identified, Merge, StoredEvent};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every alias and the user it resolves to, in memory (derived from the
/// store's `aliases`; loaded at start, kept current by merges and erasures).
#[derive(Default)]
pub struct Aliases {
    inner: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    to_user: FastMap<Box<str>, Box<str>>,
    of_user: FastMap<Box<str>, Vec<Box<str>>>,
}

impl Table {
    fn insert(&mut self, alias: &str, user: &str) {
        if let Some(old) = self.to_user.insert(alias.into(), user.into()) {
            if let Some(list) = self.of_user.get_mut(&old) {
                list.retain(|a| &**a != alias);
            }
        }
        self.of_user
            .entry(user.into())
            .or_default()
            .push(alias.into());
    }
}

impl Aliases {
    pub(crate) async fn load(store: &dyn stratify_store::Store) -> Result<Self, EngineError> {
        let aliases = Self::default();
        let stored = store.aliases().await?;
        let mut t = aliases.inner.write();
        for (alias, user) in stored {
            t.insert(&alias, &user);
        }
        drop(t);
        Ok(aliases)
    }

    /// `id`, or the user it is an alias of.
    pub fn resolve<'a>(&self, id: &'a UserId) -> Cow<'a, UserId> {
        let t = self.inner.read();
        // A stored alias target is a user id that was valid when stored.
        match t.to_user.get(id.as_str()).map(|u| UserId::parse(&**u)) {
            Some(Ok(user)) => Cow::Owned(user),
            _ => Cow::Borrowed(id),
        }
    }

    /// Every alias of `user`, sorted.
    pub fn of(&self, user: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .inner
            .read()
            .of_user
            .get(user)
            .map(|l| l.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        all.sort();
        all
    }

    /// Replaces every alias among `ids` with the user it resolves to, under
    /// one read of the table; returns how many were replaced.
    pub(crate) fn rewrite<'a>(&self, ids: impl IntoIterator<Item = &'a mut UserId>) -> usize {
        let t = self.inner.read();
        if t.to_user.is_empty() {
            return 0;
        }
        let mut rewritten = 0;
        for id in ids {
            // A stored alias target is a user id that was valid when stored.
            if let Some(Ok(user)) = t.to_user.get(id.as_str()).map(|u| UserId::parse(&**u)) {
                *id = user;
                rewritten += 1;
            }
        }
        rewritten
    }

    /// Learns aliases found in the store (a write refused for naming them).
    pub(crate) fn learn(&self, found: &[(String, String)]) {
        let mut t = self.inner.write();
        for (alias, user) in found {
            t.insert(alias, user);
        }
    }

    /// `anonymous` (and its aliases) now resolve to `known`.
    pub(crate) fn merged(&self, anonymous: &str, known: &str) {
        let mut t = self.inner.write();
        let moved = t.of_user.remove(anonymous).unwrap_or_default();
        for alias in moved {
            t.insert(&alias, known);
        }
        t.insert(anonymous, known);
    }

    /// `user` was erased: it resolves to nothing, and neither do its aliases.
    pub(crate) fn erased(&self, user: &str) {
        let mut t = self.inner.write();
        if let Some(target) = t.to_user.remove(user) {
            if let Some(list) = t.of_user.get_mut(&target) {
                list.retain(|a| &**a != user);
            }
        }
        for alias in t.of_user.remove(user).unwrap_or_default() {
            t.to_user.remove(&alias);
        }
    }
}

/// A merge as derived state follows it.
pub struct UserMerged {
    pub anonymous: String,
    pub known: String,
    /// What the store did (`None` when a node follows another node's merge
    /// from the log: only the ids are known there).
    pub merge: Option<Merge>,
    /// The known user's attributes and events after the merge, read from the
    /// store for the live state; `None` on a node that does not own them.
    pub profile: Option<MergedProfile>,
    pub at: stratify_core::time::Millis,
}

#[derive(Clone)]
pub struct MergedProfile {
    pub attributes: stratify_store::Attributes,
    pub events: Vec<StoredEvent>,
    /// The static segments the person is a member of now.
    pub statics: Vec<String>,
}

/// The answer to `POST /v1/identify`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentifyOutcome {
    pub user_id: String,
    pub anonymous_id: String,
    /// False when the visitor was already merged into this user (a retry).
    pub merged: bool,
    pub events_moved: u64,
    pub duplicates_dropped: u64,
    pub assignments_moved: u64,
    /// Every id that now resolves to the user, sorted.
    pub aliases: Vec<String>,
}

/// Identity stitching: merges, and the aliases reads and writes resolve.
pub struct IdentityService {
    pub(crate) store: Arc<dyn stratify_store::Store>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) derive: Arc<dyn crate::derived::Derive>,
    pub(crate) views: Arc<crate::derived::Views>,
    pub(crate) routing: Arc<crate::cluster::Routing>,
    /// On a cluster node: visitors this node merged and already applied,
    /// until its follower of the store's log passes them (not twice).
    pub(crate) merged_here: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl IdentityService {
    /// Merges `anonymous` into `known` (see the module docs). 422 when both
    /// are one id; 409 `identity_conflict` when `anonymous` is already an
    /// alias of someone else, or `known` is an alias of `anonymous`.
    pub async fn identify(
        &self,
        anonymous: UserId,
        known: UserId,
    ) -> Result<IdentifyOutcome, EngineError> {
        if anonymous == known {
            return Err(EngineError::Invalid(
                stratify_core::ValidationError::new(
                    ErrorCode::InvalidIdentity,
                    "anonymous_id and user_id are the same id: there is nothing to merge",
                )
                .at("/anonymous_id"),
            ));
        }
        // Assignments served to the visitor are written behind: in the
        // store before the merge moves them.
        self.views.serving.flush().await;
        let now = self.clock.now();
        // On a cluster the merge is applied here, and the follower of the
        // store's log skips it. Marked before the commit (the follower may
        // read the log before this call returns), unmarked unless applied.
        let clustered = self.routing.owns.read().is_some();
        if clustered {
            self.merged_here.lock().insert(anonymous.to_string());
        }
        let applied = self.merge_and_apply(&anonymous, &known, now).await;
        if clustered && !matches!(applied, Ok(Some(_))) {
            self.merged_here.lock().remove(anonymous.as_str());
        }
        let merge = match applied? {
            Some(merge) => merge,
            None => {
                let user = self.views.aliases.resolve(&anonymous).into_owned();
                return Ok(IdentifyOutcome {
                    aliases: self.views.aliases.of(user.as_str()),
                    user_id: user.to_string(),
                    anonymous_id: anonymous.to_string(),
                    merged: false,
                    events_moved: 0,
                    duplicates_dropped: 0,
                    assignments_moved: 0,
                });
            }
        };
        Ok(IdentifyOutcome {
            aliases: self.views.aliases.of(&merge.user_id),
            user_id: merge.user_id,
            anonymous_id: anonymous.to_string(),
            merged: true,
            events_moved: merge.events_moved,
            duplicates_dropped: merge.duplicates_dropped,
            assignments_moved: merge.assignments_moved,
        })
    }

    /// The store's merge, then derived state told of it; `None` when the
    /// visitor was merged into this user before.
    async fn merge_and_apply(
        &self,
        anonymous: &UserId,
        known: &UserId,
        now: stratify_core::time::Millis,
    ) -> Result<Option<MergeCounts>, EngineError> {
        let merge = match self.store.identify(anonymous, known, now).await? {
            Identified::Merged(m) => *m,
            Identified::Already => return Ok(None),
            Identified::AliasOfOther(other) => {
                return Err(conflict(format!(
                    "'{anonymous}' is already identified as another user ('{other}'); an anonymous id merges into one user"
                )))
            }
            Identified::KnownIsAlias => {
                return Err(conflict(format!(
                    "'{known}' is an alias of '{anonymous}': the two are already one user"
                )))
            }
        };
        let counts = MergeCounts {
            user_id: merge.user.user_id.clone(),
            events_moved: merge.events_moved,
            duplicates_dropped: merge.duplicates_dropped,
            assignments_moved: merge.assignments_moved,
        };
        let fact = self
            .fact(anonymous.as_str(), &counts.user_id, Some(merge), now)
            .await?;
        self.derive.user_merged(&fact);
        Ok(Some(counts))
    }

    /// Whether this node merged `anonymous` itself (and so applied it): the
    /// follower of the store's log then skips the entry, once.
    pub(crate) fn applied_here(&self, anonymous: &str) -> bool {
        self.merged_here.lock().remove(anonymous)
    }

    /// A merge as derived state follows it, with the person's profile read
    /// when this node owns them (their attributes as merged, when the merge
    /// was made here).
    pub(crate) async fn fact(
        &self,
        anonymous: &str,
        known: &str,
        merge: Option<Merge>,
        at: stratify_core::time::Millis,
    ) -> Result<UserMerged, EngineError> {
        let profile = if self.routing.owned(known) {
            let id = UserId::parse(known)?;
            let attributes = match &merge {
                Some(m) => Some(m.user.attributes.clone()),
                None => self.store.get_user(&id).await?.map(|r| r.attributes),
            };
            match attributes {
                Some(attributes) => Some(MergedProfile {
                    attributes,
                    events: self
                        .store
                        .user_events(&id, i64::MAX, crate::live::MAX_USER_EVENTS as u32)
                        .await?,
                    statics: self.store.static_memberships(&id).await?,
                }),
                // Erased since: the erasure is followed on its own.
                None => None,
            }
        } else {
            None
        };
        Ok(UserMerged {
            anonymous: anonymous.to_owned(),
            known: known.to_owned(),
            merge,
            profile,
            at,
        })
    }
}

/// What a merge did, as the answer reports it.
struct MergeCounts {
    user_id: String,
    events_moved: u64,
    duplicates_dropped: u64,
    assignments_moved: u64,
}

fn conflict(message: String) -> EngineError {
    EngineError::Conflict {
        code: ErrorCode::IdentityConflict,
        message,
    }
}
