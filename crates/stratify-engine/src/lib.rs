//! Stratify's engine: everything between the edge and the store.
//!
//! [`Engine`] is the composition root. It owns the configuration held in
//! memory (schemas, keys, the segment catalog, experiments) and the derived
//! state ([`derived::Views`]: the population index, the live engine and its
//! member view, freshness stamps, the serving cache and sticky state, metric
//! columns), which every write path changes only by telling a fact to the one
//! fan-out ([`derived::Derive`]). By concern:
//! - writes: [`ingest`] (HTTP and Kafka events), [`import`] (bulk files),
//!   [`users`] (attributes, erasure), [`schemas`], [`keys`];
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

pub mod clock;
pub mod cluster;
pub mod derived;
mod error;
pub mod experiments;
pub mod feed;
pub mod freshness;
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

/// The engine's handle: one pointer, cheap to clone, shared by every request
/// (one reference count to move per clone, not one per component).
#[derive(Clone)]
pub struct Engine(Arc<Parts>);

impl std::ops::Deref for Engine {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// What the engine is made of (reached through [`Engine`]).
pub struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) schemas: Arc<Schemas>,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) segments: Arc<segments::Segments>,
    /// The derived views, read directly; written only through `derive`.
    pub(crate) views: Arc<derived::Views>,
    /// The one fan-out every write path tells its facts to.
    pub(crate) derive: Arc<dyn derived::Derive>,
    pub(crate) deliverers: Arc<webhooks::Deliverers>,
    pub(crate) experiments: Arc<experiments::Experiments>,
    /// The users this node owns when several share the store.
    pub(crate) owns: parking_lot::RwLock<Option<live::Owns>>,
    /// Where writes for users this node does not own go (a Kafka cluster).
    pub(crate) forward: parking_lot::RwLock<Option<Arc<dyn cluster::Forward>>>,
}

/// Opens the embedded store in `data_dir`. Which backend a command uses is
/// the binary's choice (`stratify`'s `backend` module); this is the embedded
/// one, also opened directly by the offline `refresh` and `rebuild`.
pub fn open_store(data_dir: &Path) -> Result<Arc<SqliteStore>, EngineError> {
    Ok(Arc::new(SqliteStore::open(data_dir)?))
}

impl Engine {
    /// Loads schemas and keys from the store. `admin_secret` (from
    /// `STRATIFY_ADMIN_KEY`) is accepted as an admin key without being stored.
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        admin_secret: Option<String>,
    ) -> Result<Self, EngineError> {
        Self::open(store, clock, admin_secret, false, |views| views).await
    }

    /// Starts with the live state reconstructed from the event log alone
    /// (profiles, memberships, deadlines), ignoring the watermark; any
    /// materialised membership that differs is corrected with cause `refresh`.
    pub async fn start_rebuilt(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        Self::open(store, clock, None, true, |views| views).await
    }

    /// Builds the engine; `fan_out` chooses what write paths tell their
    /// facts to (the views themselves, or in tests a recorder around them).
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        admin_secret: Option<String>,
        rebuild: bool,
        fan_out: impl FnOnce(Arc<derived::Views>) -> Arc<dyn derived::Derive>,
    ) -> Result<Self, EngineError> {
        let schemas = Arc::new(Schemas::load(store.as_ref()).await?);
        let keys = Arc::new(KeyRing::load(store.as_ref(), admin_secret).await?);
        let segments = Arc::new(segments::Segments::load(store.as_ref()).await?);
        // A shared store answers population queries itself (see
        // `Engine::population`): no node keeps an index of it.
        let population = match store.dialect() {
            stratify_core::rules::sql::Dialect::Sqlite => {
                Some(population::load(store.as_ref()).await?)
            }
            stratify_core::rules::sql::Dialect::Postgres => None,
        };
        let view = Arc::new(live::MemberView::default());
        let experiments =
            Arc::new(experiments::Experiments::load(store.as_ref(), view.clone()).await?);
        let freshness = Arc::new(freshness::Freshness::default());
        let store_for_serving = store.clone();
        let live = Arc::new(
            live::Live::start(
                store.clone(),
                clock.clone(),
                &segments.snapshot(),
                rebuild,
                freshness.clone(),
                view,
            )
            .await?,
        );
        let views = Arc::new(derived::Views {
            population,
            live,
            freshness,
            serving: Arc::new(experiments::assign::Serving::start(store_for_serving)),
            results_columns: results::Columns::default(),
        });
        let engine = Self(Arc::new(Parts {
            store,
            clock,
            schemas,
            keys,
            segments,
            derive: fan_out(views.clone()),
            views,
            deliverers: Arc::default(),
            experiments,
            owns: parking_lot::RwLock::new(None),
            forward: parking_lot::RwLock::new(None),
        }));
        if !rebuild {
            engine.start_deliverers().await?;
        }
        Ok(engine)
    }

    /// The real-time engine (memberships, deadlines, change feed).
    pub fn live(&self) -> &live::Live {
        &self.views.live
    }

    /// Commits pending live work and stops the worker (on shutdown).
    pub async fn shutdown(&self) {
        self.deliverers.stop_all();
        self.views.serving.stop().await;
        self.views.live.stop().await;
    }

    pub fn now(&self) -> stratify_core::time::Millis {
        self.clock.now()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
}
