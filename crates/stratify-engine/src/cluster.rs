//! Several nodes on one shared store (PostgreSQL), each owning the live
//! state of some users (its Kafka partitions).
//!
//! - **Ownership.** [`ClusterService::own`] rebuilds this node's live state for the
//!   users it now owns, from the shared event log, after a rebalance.
//! - **Memberships of everyone else.** Every node follows the shared change
//!   log (one indexed range read every [`FOLLOW_EVERY`]) and applies the
//!   changes of users it does not own to its readers' view, so experiment
//!   targeting sees every user's segments on every node.
//! - **Erasures and merges.** Every node follows the store's short log of
//!   departed users and forgets each erased user (metric columns, sticky
//!   state, cached answers, memberships, aliases), whichever node erased
//!   them; a merge (identity stitching) is followed the same way, and the
//!   known user's owner re-reads the person from the store, so the merge
//!   lands there wherever it was made, even if that node died after its
//!   commit.
//! - **Configuration.** Every configuration write bumps the store's
//!   `config_version` in the same transaction; every node polls it every
//!   [`CONFIG_POLL_EVERY`] and reloads schemas, keys, segments and
//!   experiments when it moved: a change made on one node is served by all
//!   within that interval plus one reload (well under a second).
//! - **Writes for someone else's users.** Events sent over HTTP to a node
//!   that does not own their user are handed to the owner through the
//!   cluster's event stream ([`Forward::events`]); an attribute write or an
//!   erasure is stored here and the owner is told to re-read the user
//!   ([`Forward::refresh`], [`ClusterService::refresh_user`]).

use crate::live::Owns;
use crate::EngineError;
use std::sync::Arc;
use std::time::Duration;
use stratify_core::event::NewEvent;

/// Hands user-scoped writes to the node that owns the user.
#[async_trait::async_trait]
pub trait Forward: Send + Sync {
    /// Sends events to their users' owners; returns once they are durable
    /// there (the owner stores them exactly once).
    async fn events(&self, events: &[NewEvent]) -> Result<(), EngineError>;
    /// Tells a user's owner that the user's attributes changed, or that the
    /// user was erased, in the store.
    async fn refresh(&self, user: &str) -> Result<(), EngineError>;
}

pub const CONFIG_POLL_EVERY: Duration = Duration::from_millis(250);
pub const FOLLOW_EVERY: Duration = Duration::from_millis(100);
const FOLLOW_PAGE: u32 = 10_000;

/// Which users this node owns and where writes for the others go; read by
/// ingest and users, set by the cluster.
#[derive(Default)]
pub struct Routing {
    /// The users this node owns when several share the store.
    pub(crate) owns: parking_lot::RwLock<Option<Owns>>,
    /// Where writes for users this node does not own go (a Kafka cluster).
    pub(crate) forward: parking_lot::RwLock<Option<Arc<dyn Forward>>>,
}

impl Routing {
    pub(crate) fn owned(&self, user: &str) -> bool {
        self.owns.read().as_ref().is_none_or(|o| o(user))
    }

    /// Where a write for `user` must go instead of this node's live state:
    /// `None` when this node owns the user (or runs alone).
    pub(crate) fn forward_for(&self, user: &str) -> Option<Arc<dyn Forward>> {
        if self.owned(user) {
            None
        } else {
            self.forward.read().clone()
        }
    }
}

/// Several nodes on one store: ownership, forwarding, following and reloading.
pub struct ClusterService {
    pub(crate) store: Arc<dyn stratify_store::Store>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) derive: Arc<dyn crate::derived::Derive>,
    pub(crate) experiments: Arc<crate::experiments::Experiments>,
    pub(crate) keys: Arc<crate::keys::KeyRing>,
    pub(crate) schemas: Arc<crate::schemas::Schemas>,
    pub(crate) segments: Arc<crate::segments::Segments>,
    pub(crate) views: Arc<crate::derived::Views>,
    pub(crate) routing: Arc<Routing>,
    /// Deliverers follow webhooks created or deleted on other nodes.
    pub(crate) webhooks: Arc<crate::webhooks::WebhookService>,
    /// Merges made on other nodes are followed like erasures.
    pub(crate) identity: Arc<crate::identity::IdentityService>,
}

impl ClusterService {
    /// Takes ownership of the users `owns` accepts: commits the current
    /// live work, then rebuilds the live state of exactly those users.
    pub async fn own(&self, owns: Owns) -> Result<(), EngineError> {
        *self.routing.owns.write() = Some(owns.clone());
        self.derive
            .ownership_changed(&self.segments.snapshot(), owns)
            .await
    }

    /// A segment's size across the cluster (every node's users, as this
    /// node's view follows them); `None` on a single node, where the live
    /// build's size is exact.
    pub fn cluster_size(&self, segment_id: &str) -> Option<u64> {
        self.routing
            .owns
            .read()
            .is_some()
            .then(|| self.views.live.view().count(segment_id))
    }

    /// From now on, writes for users this node does not own go to `forward`.
    pub fn forward_to(&self, forward: Arc<dyn Forward>) {
        *self.routing.forward.write() = Some(forward);
    }

    /// Re-reads a user this node owns from the store after another node
    /// changed the user's attributes or erased the user.
    pub async fn refresh_user(&self, user: &str) -> Result<(), EngineError> {
        if !self.routing.owned(user) {
            return Ok(());
        }
        let id = stratify_core::ids::UserId::parse(user)?;
        match self.store.get_user(&id).await? {
            Some(record) => self.derive.user_written(
                &record.user_id,
                &record.attributes,
                false,
                self.clock.now(),
            ),
            None => self.derive.user_erased(user),
        }
        Ok(())
    }

    /// Starts the two followers of a shared store (config and changes);
    /// they run until the runtime stops.
    pub async fn follow_cluster(self: &Arc<Self>) -> Result<(), EngineError> {
        let mut version = self.store.config_version().await?;
        // The configuration was loaded when the engine opened; anything
        // written since (another node, during this node's start-up) would
        // otherwise be missed until the next change: reload once now, after
        // reading the version, so nothing falls between the two.
        self.reload_config().await?;
        let mut after = self.store.last_change_seq().await?;
        // Everyone else's memberships as committed so far; the log from here.
        let others: Vec<_> = self
            .store
            .open_memberships()
            .await?
            .into_iter()
            .filter(|(_, user)| !self.routing.owned(user))
            .map(|(segment_id, user_id)| stratify_store::ChangeRecord {
                seq: 0,
                segment_id,
                user_id,
                entered: true,
                at: 0,
                cause: stratify_store::Cause::Refresh,
            })
            .collect();
        self.derive.memberships_followed(&others);
        // Users erased on other nodes are forgotten here too (their events
        // in the metric columns, their sticky and cached answers).
        let mut erased_after = self.store.last_erasure_seq().await?;
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match engine.store.erasures_after(erased_after, FOLLOW_PAGE).await {
                    Ok(page) => {
                        let mut stopped = false;
                        for gone in &page {
                            match &gone.merged_into {
                                None => engine.derive.user_erased(&gone.user_id),
                                // Applied when it was made here.
                                Some(_) if engine.identity.applied_here(&gone.user_id) => {}
                                Some(known) => {
                                    let fact = engine
                                        .identity
                                        .fact(&gone.user_id, known, None, engine.clock.now())
                                        .await;
                                    match fact {
                                        Ok(fact) => engine.derive.user_merged(&fact),
                                        Err(e) => {
                                            // Read again on the next turn.
                                            tracing::warn!(error = %e, "cannot read a merged user");
                                            stopped = true;
                                            break;
                                        }
                                    }
                                }
                            }
                            erased_after = gone.seq;
                        }
                        if !stopped && page.len() == FOLLOW_PAGE as usize {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the shared erasures"),
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        });
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CONFIG_POLL_EVERY).await;
                match engine.store.config_version().await {
                    Ok(v) if v != version => match engine.reload_config().await {
                        Ok(()) => version = v,
                        Err(e) => tracing::error!(error = %e, "cannot reload the configuration"),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the configuration version"),
                }
            }
        });
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match engine.store.changes(None, after, FOLLOW_PAGE).await {
                    Ok(page) => {
                        let full = page.len() == FOLLOW_PAGE as usize;
                        if let Some(last) = page.last() {
                            after = last.seq;
                        }
                        let others: Vec<_> = page
                            .into_iter()
                            .filter(|c| !engine.routing.owned(&c.user_id))
                            .collect();
                        engine.derive.memberships_followed(&others);
                        if full {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the shared change log"),
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        });
        Ok(())
    }

    /// Reloads everything another node may have changed.
    pub async fn reload_config(&self) -> Result<(), EngineError> {
        let store = self.store.as_ref();
        self.schemas
            .replace(crate::schemas::Schemas::load(store).await?);
        self.keys.reload(store).await?;
        let before = self.segments.snapshot();
        let after = crate::segments::Segments::load(store).await?.snapshot();
        let mut static_members = std::collections::HashMap::new();
        for seg in after.all().filter(|s| s.rule.is_none()) {
            let id = &seg.record.id;
            static_members.insert(id.clone(), store.static_members(id).await?);
        }
        self.derive.config_reloaded(crate::derived::Reload {
            before: &before,
            after: &after,
            static_members,
            at: self.clock.now(),
        });
        self.segments.replace(after);
        self.experiments.reload(store).await?;
        self.webhooks.sync_deliverers().await?;
        Ok(())
    }
}
