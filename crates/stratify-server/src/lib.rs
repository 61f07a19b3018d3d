//! Stratify's HTTP surface: the routes (README and the OpenAPI document),
//! authentication and roles, OpenAPI with offline interactive docs, the
//! dashboard, Prometheus metrics.
//!
//! Handlers only translate: HTTP in, a call on the engine service they take
//! as a sub-state (`State<Arc<UserService>>`), HTTP out. Domain rules live
//! in the engine and the core. Every route is declared once in
//! [`routes::table`] with the capability it needs, and one middleware
//! enforces it. Every error leaves as `{"error": {code, message, field?}}`.

mod auth;
mod dashboard;
mod error;
mod extract;
mod limits;
mod metrics;
mod openapi;
pub mod routes;
pub mod tls;

pub use error::ApiError;
pub use metrics::Metrics;

use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use stratify_engine::Engine;

/// Limits applied at the edge.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body for ingest routes (events, orders), in bytes.
    pub max_ingest_body_bytes: usize,
    /// Largest request body elsewhere, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 408.
    pub request_timeout: std::time::Duration,
    /// Most concurrent SSE and WebSocket streams (the next one is 429).
    pub max_streams: usize,
    /// Most ingest requests per second per API key (`None`: no limit).
    pub ingest_rate_per_key: Option<u32>,
    /// Most serving requests per second per API key (`None`: no limit).
    pub serving_rate_per_key: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_ingest_body_bytes: 32 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            request_timeout: std::time::Duration::from_secs(30),
            max_streams: 1000,
            ingest_rate_per_key: None,
            serving_rate_per_key: None,
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateParts>,
}

/// What every handler shares (behind one pointer: cloning the state per
/// request and per layer moves one reference count).
pub struct StateParts {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
    pub started: Instant,
    /// Flips to `true` when shutdown starts: long-lived streams (SSE,
    /// WebSocket) end so that the graceful shutdown can finish.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Places for open SSE and WebSocket streams (`max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Per-key ingest and serving rates.
    pub rates: limits::RateLimiter,
}

impl std::ops::Deref for AppState {
    type Target = StateParts;
    fn deref(&self) -> &StateParts {
        &self.inner
    }
}

impl AppState {
    pub fn new(engine: Engine, config: ServerConfig) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let streams = Arc::new(tokio::sync::Semaphore::new(config.max_streams));
        Self {
            inner: Arc::new(StateParts {
                engine,
                metrics: Arc::new(Metrics::default()),
                config: Arc::new(config),
                started: Instant::now(),
                stopping,
                stop: Arc::new(stop),
                streams,
                rates: limits::RateLimiter::default(),
            }),
        }
    }
}

/// Each service is a sub-state: a handler takes the one it needs
/// (`State<Arc<UserService>>`) instead of the whole application.
macro_rules! sub_states {
    ($($field:ident: $ty:ty,)*) => {
        $(impl axum::extract::FromRef<AppState> for Arc<$ty> {
            fn from_ref(state: &AppState) -> Self {
                state.engine.$field.clone()
            }
        })*
    };
}

sub_states! {
    users: stratify_engine::users::UserService,
    identity: stratify_engine::identity::IdentityService,
    ingest: stratify_engine::ingest::IngestService,
    segments: stratify_engine::segments::SegmentService,
    experiments: stratify_engine::experiments::ExperimentService,
    serving: stratify_engine::experiments::assign::ServingService,
    results: stratify_engine::results::ResultService,
    feed: stratify_engine::feed::FeedService,
    webhooks: stratify_engine::webhooks::WebhookService,
    keys: stratify_engine::keys::KeyService,
    schemas: stratify_engine::schemas::SchemaService,
    audit: stratify_engine::audit::AuditService,
}

/// The whole application: API routes, docs, metrics, health, and the layers
/// every request passes (metrics, panic → 500, JSON errors everywhere).
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let stop = state.stop.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
}
