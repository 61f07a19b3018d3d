//! Stratify's engine: everything between the edge and the store.
//!
//! [`Engine`] is the composition root. It owns the configuration held in
//! memory (schemas, keys, the segment catalog, experiments) and the derived
//! state ([`derived::Views`]: the population index, the live engine and its
//! member view, freshness stamps, the serving cache and sticky state, metric
//! columns), which every write path changes only by telling a fact to the one
//! fan-out ([`derived::Derive`]). By concern:
//! - writes: [`ingest`] (HTTP and Kafka events), [`import`] (bulk files),
//!   [`users`] (attributes, erasure), [`identity`] (merging an anonymous
//!   visitor into a known user; aliases), [`schemas`], [`keys`];
//! - segments and their live memberships: [`segments`], [`live`], [`feed`]
//!   (the change log read back), [`webhooks`];
//! - experiments and results: [`experiments`] (serving, sticky assignments,
//!   banners), [`results`];
//! - several nodes on one store: [`cluster`]; time: [`clock`].
//!
//! It must not know HTTP (the server and the CLI are thin shells around it),
//! read the wall clock except through [`Clock`], or write derived state
//! outside [`derived`]. Domain checks that need no IO belong in
//! `stratify_core`; SQL belongs in `stratify_store`.

pub mod audit;
pub(crate) mod checkpoint;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod derived;
mod error;
pub mod experiments;
pub mod feed;
pub mod freshness;
pub mod identity;
pub mod import;
pub mod ingest;
pub mod keys;
pub mod live;
mod population;
pub mod results;
mod scan;
pub mod schemas;
pub mod segments;
pub(crate) mod shard;
pub mod users;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{EngineConfig, Limits, WebhookPolicy};
pub use error::EngineError;
/// The records the engine hands out (read models of the store).
pub mod model {
    pub use stratify_store::model::*;
}

use keys::KeyRing;
use schemas::Schemas;
use std::path::Path;
use std::sync::Arc;
use stratify_store::sqlite::SqliteStore;
use stratify_store::Store;

/// The composition root: builds every service in one function
/// (`Engine::open`) and hands each caller the one it needs. One pointer,
/// cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Engine(Arc<Services>);

/// Every service, each holding only what it uses.
pub struct Services {
    pub users: Arc<users::UserService>,
    pub identity: Arc<identity::IdentityService>,
    pub ingest: Arc<ingest::IngestService>,
    pub segments: Arc<segments::SegmentService>,
    pub experiments: Arc<experiments::ExperimentService>,
    pub serving: Arc<experiments::assign::ServingService>,
    pub results: Arc<results::ResultService>,
    pub feed: Arc<feed::FeedService>,
    pub webhooks: Arc<webhooks::WebhookService>,
    pub keys: Arc<keys::KeyService>,
    pub schemas: Arc<schemas::SchemaService>,
    pub cluster: Arc<cluster::ClusterService>,
    pub audit: Arc<audit::AuditService>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    views: Arc<derived::Views>,
    deliverers: Arc<webhooks::Deliverers>,
    /// Where derived state is saved at shutdown (see [`checkpoint`]).
    derived_dir: Option<std::path::PathBuf>,
}

impl std::ops::Deref for Engine {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Opens the embedded store in `data_dir`. Which backend a command uses is
/// the binary's choice (`stratify`'s `backend` module); this is the embedded
/// one, also opened directly by the offline `refresh` and `rebuild`.
pub fn open_store(data_dir: &Path) -> Result<Arc<SqliteStore>, EngineError> {
    Ok(Arc::new(SqliteStore::open(data_dir)?))
}

/// How often derived state is saved while it changes (see `EngineConfig::checkpoint_dir`).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

impl Engine {
    /// Loads schemas and keys from the store. `admin_secret` (from
    /// `STRATIFY_ADMIN_KEY`) is accepted as an admin key without being stored.
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        admin_secret: Option<String>,
    ) -> Result<Self, EngineError> {
        Self::start_with(store, clock, admin_secret, EngineConfig::default()).await
    }

    /// [`Engine::start`] with the operator's settings.
    pub async fn start_with(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        admin_secret: Option<String>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        Self::open(store, clock, admin_secret, false, config, |views| views).await
    }

    /// Starts with the live state reconstructed from the event log alone
    /// (profiles, memberships, deadlines), ignoring the watermark; any
    /// materialised membership that differs is corrected with cause `refresh`.
    pub async fn start_rebuilt(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        Self::open(store, clock, None, true, EngineConfig::default(), |views| {
            views
        })
        .await
    }

    /// Builds the engine; `fan_out` chooses what write paths tell their
    /// facts to (the views themselves, or in tests a recorder around them).
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        admin_secret: Option<String>,
        rebuild: bool,
        config: EngineConfig,
        fan_out: impl FnOnce(Arc<derived::Views>) -> Arc<dyn derived::Derive>,
    ) -> Result<Self, EngineError> {
        let limits = Arc::new(config.limits);
        // Derived state saved at shutdown (one node alone on its store).
        let derived_dir = config
            .checkpoint_dir
            .as_ref()
            .filter(|_| config.cluster_node.is_none())
            .map(|dir| dir.join("derived"));
        let schemas = Arc::new(Schemas::load(store.as_ref()).await?);
        let keys = Arc::new(KeyRing::load(store.as_ref(), admin_secret).await?);
        let segments = Arc::new(segments::Segments::load(store.as_ref()).await?);
        // A shared store answers population queries itself (see
        // `SegmentService::population`): no node keeps an index of it. The
        // index loads on another task while the live state loads here: each
        // reads the whole log, so on a multi-core machine the two overlap.
        let population = match store.dialect() {
            stratify_core::rules::sql::Dialect::Sqlite => {
                let (store, dir) = (store.clone(), derived_dir.clone());
                Some(tokio::spawn(async move {
                    population::load(store.as_ref(), dir.as_deref()).await
                }))
            }
            stratify_core::rules::sql::Dialect::Postgres => None,
        };
        // Saved metric copies are read beside the live state's load too.
        let columns = match &config.checkpoint_dir {
            Some(dir) => results::Columns::with_checkpoints(dir.join("metric-columns")),
            None => results::Columns::default(),
        };
        let saved_columns = columns.checkpoint_dir().map(|dir| {
            let (dir, store, now) = (dir.to_path_buf(), store.clone(), clock.now());
            tokio::spawn(async move { results::columns::load(dir, store.as_ref(), now).await })
        });
        let view = Arc::new(live::MemberView::default());
        let experiments =
            Arc::new(experiments::Experiments::load(store.as_ref(), view.clone()).await?);
        let freshness = Arc::new(freshness::Freshness::default());
        let aliases = Arc::new(identity::Aliases::load(store.as_ref()).await?);
        let store_for_serving = store.clone();
        let live = Arc::new(
            live::Live::start(
                store.clone(),
                clock.clone(),
                &segments.snapshot(),
                rebuild,
                freshness.clone(),
                view,
                config.cluster_node.clone(),
                derived_dir.clone(),
            )
            .await?,
        );
        let population = match population {
            Some(task) => Some(
                task.await
                    .map_err(|e| EngineError::Store(stratify_store::StoreError::Task(e)))??,
            ),
            None => None,
        };
        let views = Arc::new(derived::Views {
            population,
            live,
            freshness,
            serving: Arc::new(experiments::assign::Serving::start(
                store_for_serving,
                config.cluster_node.is_none(),
            )),
            results_columns: columns,
            results_tallies: results::Tallies::default(),
            aliases,
        });
        let derive = fan_out(views.clone());
        if let Some(task) = saved_columns {
            let columns = &views.results_columns;
            match task.await {
                Ok(Ok((before, loaded))) => {
                    let (copies, events) = columns.adopt(loaded);
                    tracing::info!(copies, events, "metric copies restored from checkpoints");
                    // An erasure another node logged while they loaded
                    // (nothing here has followed it yet).
                    if store.last_erasure_seq().await? != before {
                        columns.clear();
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "metric copy checkpoints not read"),
                Err(e) => tracing::warn!(error = %e, "metric copy checkpoints not read"),
            }
            // Saved every few minutes (and at shutdown) while they change.
            let (views, store, clock) = (views.clone(), store.clone(), clock.clone());
            tokio::spawn(async move {
                let columns = &views.results_columns;
                let mut every = tokio::time::interval(CHECKPOINT_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) = columns.save(store.as_ref(), clock.now()).await {
                        tracing::warn!(error = %e, "metric copies not saved");
                    }
                }
            });
        }
        let deliverers: Arc<webhooks::Deliverers> = Arc::default();
        let routing: Arc<cluster::Routing> = Arc::default();
        let segment_service = Arc::new(segments::SegmentService {
            store: store.clone(),
            clock: clock.clone(),
            segments: segments.clone(),
            experiments: experiments.clone(),
            views: views.clone(),
            derive: derive.clone(),
            limits: limits.clone(),
        });
        let webhook_service = Arc::new(webhooks::WebhookService {
            store: store.clone(),
            clock: clock.clone(),
            deliverers: deliverers.clone(),
            segments: segments.clone(),
            views: views.clone(),
            policy: Arc::new(config.webhooks),
            limits: limits.clone(),
        });
        let identity = Arc::new(identity::IdentityService {
            store: store.clone(),
            clock: clock.clone(),
            derive: derive.clone(),
            views: views.clone(),
            routing: routing.clone(),
            merged_here: Default::default(),
        });
        let services = Services {
            users: Arc::new(users::UserService {
                store: store.clone(),
                clock: clock.clone(),
                schemas: schemas.clone(),
                derive: derive.clone(),
                routing: routing.clone(),
                segments: segment_service.clone(),
                aliases: views.aliases.clone(),
            }),
            identity: identity.clone(),
            ingest: Arc::new(ingest::IngestService {
                store: store.clone(),
                clock: clock.clone(),
                schemas: schemas.clone(),
                derive: derive.clone(),
                views: views.clone(),
                routing: routing.clone(),
            }),
            segments: segment_service,
            experiments: Arc::new(experiments::ExperimentService {
                store: store.clone(),
                clock: clock.clone(),
                experiments: experiments.clone(),
                segments: segments.clone(),
                limits: limits.clone(),
            }),
            serving: Arc::new(experiments::assign::ServingService {
                store: store.clone(),
                clock: clock.clone(),
                experiments: experiments.clone(),
                segments: segments.clone(),
                views: views.clone(),
                sdk_payload: Default::default(),
            }),
            results: Arc::new(results::ResultService {
                store: store.clone(),
                clock: clock.clone(),
                experiments: experiments.clone(),
                views: views.clone(),
                limits: limits.clone(),
            }),
            feed: Arc::new(feed::FeedService {
                store: store.clone(),
                segments: segments.clone(),
                views: views.clone(),
            }),
            webhooks: webhook_service.clone(),
            keys: Arc::new(keys::KeyService {
                store: store.clone(),
                clock: clock.clone(),
                ring: keys.clone(),
                limits: limits.clone(),
            }),
            schemas: Arc::new(schemas::SchemaService {
                store: store.clone(),
                clock: clock.clone(),
                schemas: schemas.clone(),
                limits: limits.clone(),
            }),
            cluster: Arc::new(cluster::ClusterService {
                store: store.clone(),
                clock: clock.clone(),
                derive,
                experiments,
                keys,
                schemas,
                segments,
                views: views.clone(),
                routing,
                webhooks: webhook_service,
                identity,
            }),
            audit: Arc::new(audit::AuditService {
                store: store.clone(),
                clock: clock.clone(),
            }),
            store,
            clock,
            views,
            deliverers,
            derived_dir,
        };
        let engine = Self(Arc::new(services));
        // Alone on its store (SQLite), a node delivers every webhook. On a
        // shared store the binary starts deliverers once it knows whether
        // this node is one of several (per-webhook leases) or alone.
        if !rebuild && engine.store.dialect() == stratify_core::rules::sql::Dialect::Sqlite {
            engine.webhooks.start_deliverers(None).await?;
        }
        Ok(engine)
    }

    /// The real-time engine (memberships, deadlines, change feed).
    pub fn live(&self) -> &live::Live {
        &self.views.live
    }

    /// Commits pending live work and stops the worker (on shutdown), and
    /// saves what a restart would otherwise read from the whole log. Call
    /// it once nothing writes any more (the server has drained): the saved
    /// state must hold every write the store has.
    pub async fn shutdown(&self) {
        self.deliverers.stop_all();
        self.views.serving.stop().await;
        if let Err(e) = self.views.live.stop_and_save().await {
            tracing::warn!(error = %e, "live state not saved at shutdown");
        }
        if let (Some(dir), Some(index)) = (&self.derived_dir, &self.views.population) {
            let saved = population::save(index, self.store.as_ref(), dir, self.clock.now());
            if let Err(e) = saved.await {
                tracing::warn!(error = %e, "population index not saved at shutdown");
            }
        }
        if let Err(e) = self
            .views
            .results_columns
            .save(self.store.as_ref(), self.clock.now())
            .await
        {
            tracing::warn!(error = %e, "metric copies not saved at shutdown");
        }
    }

    pub fn now(&self) -> stratify_core::time::Millis {
        self.clock.now()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
}
