//! Persistence for Stratify, behind the narrow [`Store`] trait.
//!
//! The embedded backend is SQLite ([`sqlite::SqliteStore`]) in one file of
//! the data directory: WAL mode, `synchronous=FULL`, and one writer thread
//! that commits whatever has queued up as one transaction (group commit), so
//! that every acknowledged write is fsynced first while the cost of the fsync
//! is shared by all the writes waiting for it.
//!
//! The event log (`events`) is the source of truth; everything else derived
//! may be rebuilt from it. This crate knows nothing about HTTP, never reads
//! the clock (callers pass `now`) and translates constraint violations into
//! [`StoreError`] variants instead of letting callers pre-check.

mod error;
mod migrations;
pub mod model;
pub mod sqlite;
mod writer;

pub use error::StoreError;
pub use model::*;

use async_trait::async_trait;
use stratify_core::ids::UserId;
use stratify_core::schema::{AttributeSchema, EventTypeSchema};
use stratify_core::time::Millis;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the engine persists. One implementation per backend; the
/// storage test suite runs against each.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends validated events (creating unknown users) and records the
    /// batch in the source's ingest status, all in one durable commit.
    /// Returns, per event, whether it was new or a duplicate of an earlier one.
    async fn append_events(&self, batch: EventBatch) -> Result<Vec<Appended>>;

    /// Creates, replaces or merges one user's attributes.
    async fn write_user(
        &self,
        user_id: UserId,
        attributes: Attributes,
        mode: WriteMode,
        now: Millis,
    ) -> Result<UserRecord>;
    /// Merges attributes into many users at once (import); creates unknown users.
    async fn merge_users(&self, users: Vec<(UserId, Attributes)>, now: Millis) -> Result<u64>;
    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>>;
    /// Erases a user and all their events. Returns whether the user existed.
    async fn delete_user(&self, user_id: &UserId) -> Result<bool>;
    /// Built-in aggregates over one user's events of one name.
    async fn event_summary(&self, user_id: &UserId, name: &str) -> Result<EventSummary>;
    async fn query_events(&self, query: EventQuery) -> Result<Vec<StoredEvent>>;

    async fn put_event_type(&self, schema: EventTypeSchema, now: Millis)
        -> Result<EventTypeRecord>;
    async fn list_event_types(&self) -> Result<Vec<EventTypeRecord>>;
    async fn delete_event_type(&self, name: &str) -> Result<bool>;
    async fn put_attribute_schema(&self, schema: AttributeSchema, now: Millis) -> Result<()>;
    async fn attribute_schema(&self) -> Result<AttributeSchema>;

    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<()>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// Marks a key revoked. Returns whether it existed and was active.
    async fn revoke_api_key(&self, id: &str, now: Millis) -> Result<bool>;

    async fn ingest_status(&self) -> Result<Vec<IngestStatus>>;
    /// Records counts for a source without appending events (e.g. a request
    /// whose every item was rejected before it reached the log).
    async fn record_ingest(&self, report: IngestReport) -> Result<()>;
    async fn counts(&self) -> Result<Counts>;
}
