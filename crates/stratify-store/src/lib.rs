//! Persistence for Stratify, behind the [`Store`] trait, with one backend
//! per deployment shape.
//!
//! - The embedded backend is SQLite ([`sqlite::SqliteStore`]) in the data
//!   directory: WAL mode, `synchronous=FULL`, and one writer thread that
//!   commits whatever has queued up as one transaction (group commit), so
//!   that every acknowledged write is fsynced first while the cost of the
//!   fsync is shared by all the writes waiting for it.
//! - The scale-out backend is PostgreSQL ([`postgres::PgStore`]), shared by
//!   several nodes.
//!
//! The statement text both dialects agree on is written once (`sql.rs`, with
//! `?N` placeholders translated once for PostgreSQL); only the statements that
//! truly differ (bulk appends, scans, upserts) live with their backend. One
//! storage suite (`tests/suite.rs`) runs against both.
//!
//! The event log (`events`) is the source of truth; everything else derived
//! may be rebuilt from it. This crate must not know HTTP or the engine, read
//! the clock (callers pass `now`), or make callers pre-check constraints: it
//! translates violations into [`StoreError`] variants.

mod bulk;
mod error;
mod migrations;
pub mod model;
mod packed;
mod pg_migrations;
pub mod postgres;
mod rows;
mod shared;
mod sql;
pub mod sqlite;
mod writer;

pub use error::StoreError;
pub use model::*;

use async_trait::async_trait;
use stratify_core::ids::UserId;
use stratify_core::rules::sql::Compiled;
use stratify_core::schema::{AttributeSchema, EventTypeSchema};
use stratify_core::time::Millis;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long an erasure is remembered for other nodes to follow (an hour:
/// far more than they lag, far less than a log of erased ids should live).
pub const ERASURE_MEMORY_MS: Millis = 3_600_000;

/// Everything the engine persists: every concern's trait, implemented by
/// each backend (the storage suite runs against each). Components that need
/// one concern take that trait (`&dyn ChangeLog`, `Arc<dyn Assignments>`).
pub trait Store:
    EventLog
    + Users
    + Configuration
    + Keys
    + ChangeLog
    + Assignments
    + Metrics
    + Webhooks
    + Coordination
    + DashboardSessions
    + AuditLog
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: EventLog
        + Users
        + Configuration
        + Keys
        + ChangeLog
        + Assignments
        + Metrics
        + Webhooks
        + Coordination
        + DashboardSessions
        + AuditLog
        + Send
        + Sync
        + 'static
{
}

/// The event log, the source of truth: appends, reads and per-source ingest status.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends validated events (creating unknown users) and records the
    /// batch in the source's ingest status, all in one durable commit.
    /// Returns, per event, whether it was new or a duplicate of an earlier one.
    async fn append_events(&self, batch: EventBatch) -> Result<Vec<Appended>>;

    async fn query_events(&self, query: EventQuery) -> Result<Vec<StoredEvent>>;

    async fn ingest_status(&self) -> Result<Vec<IngestStatus>>;

    /// Records counts for a source without appending events (e.g. a request
    /// whose every item was rejected before it reached the log).
    async fn record_ingest(&self, report: IngestReport) -> Result<()>;

    async fn counts(&self) -> Result<Counts>;

    /// Events in log order after `after_seq`, with interned user and name ids.
    async fn scan_events(&self, after_seq: i64, limit: u32) -> Result<Vec<RawEvent>>;

    /// Every interned event name: `(name_id, name)`.
    async fn event_names(&self) -> Result<Vec<(i64, String)>>;

    /// The largest sequence number in the log (0 when it is empty).
    async fn last_event_seq(&self) -> Result<i64>;

    /// A user's events up to `until` (inclusive), oldest first, at most `limit`.
    async fn user_events(
        &self,
        user_id: &UserId,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<StoredEvent>>;

    /// Before appending many events (an import of about as many events as
    /// the log holds, or more): the store may stop keeping its per-user
    /// indexes row by row and build them once in [`EventLog::end_bulk_append`].
    /// Appends stay idempotent and durable meanwhile; reads by user may be
    /// slow. Returns whether the store did (`false`: it declined, and
    /// appends go on as usual). The default declines.
    async fn begin_bulk_append(&self) -> Result<bool> {
        Ok(false)
    }

    /// Ends a bulk append: the indexes are complete again when this returns.
    /// Does nothing when none is under way.
    async fn end_bulk_append(&self) -> Result<()> {
        Ok(())
    }
}

/// Users and their attributes, and population queries over them.
#[async_trait]
pub trait Users: Send + Sync {
    /// The SQL dialect [`Users::select_users`] runs. A store in a dialect
    /// other than SQLite is shared by several nodes, so a node's in-memory
    /// indexes may lag it: the engine asks the store instead.
    fn dialect(&self) -> stratify_core::rules::sql::Dialect;

    /// Creates, replaces or merges one user's attributes.
    async fn write_user(
        &self,
        user_id: UserId,
        attributes: Attributes,
        mode: WriteMode,
        now: Millis,
    ) -> Result<UserRecord>;

    /// Merges attributes into many users at once (import); creates unknown users.
    async fn merge_users(
        &self,
        users: std::sync::Arc<Vec<(UserId, Attributes)>>,
        now: Millis,
    ) -> Result<u64>;

    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>>;

    /// Erases a user, all their events and their aliases, and records the
    /// erasure of each for the other nodes (kept [`ERASURE_MEMORY_MS`]).
    /// Returns whether the user existed.
    async fn delete_user(&self, user_id: &UserId, now: Millis) -> Result<bool>;
    /// Users gone after `after` (a sequence number), oldest first: erased,
    /// or merged into another user. Nodes sharing a store follow them.
    async fn erasures_after(&self, after: i64, limit: u32) -> Result<Vec<UserGone>>;

    /// Identity stitching: merges the visitor `anonymous` into `known`, in
    /// one transaction. The visitor's events move to the known user (an
    /// event whose `event_id` the known user already has is kept once);
    /// attributes merge (the known user's win); sticky assignments move
    /// where the known user has none for that experiment, and where both
    /// were exposed under one bucket version the known user keeps their
    /// variant from the earlier exposure; the banner mixture moves if the
    /// known user has none; static memberships move. The visitor's row goes
    /// and its id becomes an alias of the known user, as do its own
    /// aliases; the merge is logged for other nodes ([`UserGone`]). An
    /// unknown known user is created (the visitor's row renamed).
    ///
    /// A `known` id that is itself an alias merges into that alias's user.
    /// Writes that interned the visitor before the merge fail with
    /// [`StoreError::UsersMoved`] instead of recreating it.
    async fn identify(&self, anonymous: &UserId, known: &UserId, now: Millis)
        -> Result<Identified>;

    /// Every alias: `(alias, user_id)`.
    async fn aliases(&self) -> Result<Vec<(String, String)>>;

    /// The users these ids are aliases of: `(alias, user_id)` for those
    /// that are.
    async fn resolve_aliases(&self, ids: Vec<String>) -> Result<Vec<(String, String)>>;
    /// The newest erasure's sequence number (0 when none).
    async fn last_erasure_seq(&self) -> Result<i64>;

    /// What a checkpoint of derived state is checked against: this store's
    /// name and how many writes it has had to what derived state reads
    /// besides appended events. `None`: the store keeps no such count (a
    /// shared store), and derived state is always read from it.
    async fn derived_stamp(&self) -> Result<Option<DerivedStamp>> {
        Ok(None)
    }

    /// Users in creation order after `after_uid` (paging through everyone).
    async fn users_page(&self, after_uid: i64, limit: u32) -> Result<Vec<(i64, UserRecord)>>;

    /// Users numbered after `after_uid`: (uid, user id), in number order.
    async fn user_ids_after(&self, after_uid: i64, limit: u32) -> Result<Vec<(i64, String)>>;

    /// Runs a compiled rule (a predicate over `users u`): one page of user
    /// ids in id order after `after`, and the total count.
    async fn select_users(
        &self,
        predicate: Compiled,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<String>, u64)>;
}

/// Configuration every node holds in memory: schemas, segments (and static members) and experiments. Every write moves [`Configuration::config_version`].
#[async_trait]
pub trait Configuration: Send + Sync {
    async fn put_event_type(&self, schema: EventTypeSchema, now: Millis)
        -> Result<EventTypeRecord>;

    async fn list_event_types(&self) -> Result<Vec<EventTypeRecord>>;

    async fn delete_event_type(&self, name: &str) -> Result<bool>;

    async fn put_attribute_schema(&self, schema: AttributeSchema, now: Millis) -> Result<()>;

    async fn attribute_schema(&self) -> Result<AttributeSchema>;

    /// Every member of a static segment.
    async fn static_members(&self, segment_id: &str) -> Result<Vec<String>>;

    /// Creates a segment (version 1). `Conflict` when the name is taken.
    async fn create_segment(&self, segment: SegmentRecord, members: Vec<UserId>) -> Result<()>;

    /// Stores a new version of a segment (the record's `version` is the new one).
    async fn update_segment(&self, segment: SegmentRecord) -> Result<()>;

    async fn segments(&self) -> Result<Vec<SegmentRecord>>;

    async fn segment_versions(&self, id: &str) -> Result<Vec<SegmentVersion>>;

    /// Deletes a segment, its versions and its members.
    async fn delete_segment(&self, id: &str) -> Result<bool>;

    /// Adds users (created if unknown) to a static segment; returns how many were new.
    async fn add_members(&self, segment_id: &str, users: Vec<UserId>, now: Millis) -> Result<u64>;

    /// Removes users from a static segment; returns how many were members.
    async fn remove_members(&self, segment_id: &str, users: Vec<UserId>) -> Result<u64>;

    /// Replaces a static segment's members.
    async fn replace_members(
        &self,
        segment_id: &str,
        users: Vec<UserId>,
        now: Millis,
    ) -> Result<u64>;

    /// Ids of the static segments a user is a member of.
    async fn static_memberships(&self, user_id: &UserId) -> Result<Vec<String>>;

    /// Creates an experiment; `Conflict` when its key is taken.
    async fn create_experiment(&self, experiment: ExperimentRecord) -> Result<()>;

    /// Replaces an experiment's name and definition (a new version).
    async fn update_experiment(&self, experiment: ExperimentRecord) -> Result<()>;

    async fn experiments(&self) -> Result<Vec<ExperimentRecord>>;

    /// Moves an experiment from `from` to `to` if it is still in `from`
    /// (compare and set) and records the transition. Returns whether it moved.
    async fn transition_experiment(
        &self,
        id: &str,
        from: &str,
        to: &str,
        at: Millis,
        by: Option<String>,
    ) -> Result<bool>;

    /// An experiment's transitions, oldest first.
    async fn experiment_transitions(&self, id: &str) -> Result<Vec<TransitionRecord>>;

    /// A number that grows with every configuration write (keys, schemas,
    /// segments and their members, experiments, metrics, webhooks). Nodes
    /// sharing a store poll it and reload when it moves.
    async fn config_version(&self) -> Result<i64>;
}

/// API keys (stored hashed).
#[async_trait]
pub trait Keys: Send + Sync {
    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<()>;

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Marks a key revoked. Returns whether it existed and was active.
    async fn revoke_api_key(&self, id: &str, now: Millis) -> Result<bool>;
}

/// The membership change log and the live engine's watermark (derived state, rebuilt from the event log).
#[async_trait]
pub trait ChangeLog: Send + Sync {
    /// Commits a batch of membership changes (appending them to the change
    /// log and opening or closing membership rows) with the live engine's
    /// new watermark, in one transaction. Returns the changes as stored: a
    /// backend several nodes write to numbers them itself (sequence order
    /// is commit order), so callers publish what this returns.
    ///
    /// `node` names the committing node when several share the store: its
    /// watermark is kept under its own key ([`Watermark::key`]), and the
    /// single-node key is removed, so a node later started alone on the
    /// store rebuilds from the log instead of resuming from a point the
    /// cluster has moved past.
    async fn apply_changes(
        &self,
        changes: std::sync::Arc<Vec<ChangeRecord>>,
        watermark: Watermark,
        node: Option<&str>,
    ) -> Result<std::sync::Arc<Vec<ChangeRecord>>>;

    /// The last watermark committed by `node` (`None`: a node alone).
    async fn watermark(&self, node: Option<&str>) -> Result<Option<Watermark>>;

    /// Every current membership: `(segment_id, user_id)`.
    async fn open_memberships(&self) -> Result<Vec<(String, String)>>;

    /// The highest change sequence number (0 when none).
    async fn last_change_seq(&self) -> Result<i64>;

    /// Changes after `after` in sequence order, of the given segments only
    /// when `segments` is given.
    async fn changes(
        &self,
        segments: Option<Vec<String>>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>>;

    /// A segment's newest `limit` changes, newest first.
    async fn latest_changes(&self, segment_id: &str, limit: u32) -> Result<Vec<ChangeRecord>>;

    /// A user's memberships, current and past, newest first.
    async fn user_memberships(&self, user_id: &str, limit: u32) -> Result<Vec<MembershipRecord>>;

    /// Entered/exited counts of a segment per bucket of `bucket` ms (epoch
    /// aligned), oldest first.
    async fn change_buckets(&self, segment_id: &str, bucket: Millis) -> Result<Vec<ChangeBucket>>;
}

/// Sticky experiment assignments, banner mixtures and exposures.
#[async_trait]
pub trait Assignments: Send + Sync {
    /// What serving writes behind, in one commit: sticky assignments (one
    /// is added, or replaces one only with a higher bucket version; never
    /// moved back) and banner mixtures (the last of a user's wins).
    async fn save_serving(
        &self,
        assignments: std::sync::Arc<Vec<AssignmentRecord>>,
        mixtures: std::sync::Arc<Vec<BannerMixtureRecord>>,
    ) -> Result<()>;

    /// Sends `sink` the id of every user with stored serving state (an
    /// assignment record or a banner mixture); an id may come more than once.
    async fn served_user_ids(&self, sink: IdSink) -> Result<()>;

    async fn save_assignments(
        &self,
        assignments: std::sync::Arc<Vec<AssignmentRecord>>,
    ) -> Result<()> {
        self.save_serving(assignments, Default::default()).await
    }

    async fn save_banner_mixture(&self, mixture: BannerMixtureRecord) -> Result<()> {
        self.save_serving(Default::default(), std::sync::Arc::new(vec![mixture]))
            .await
    }

    /// A user's stored assignments and banner mixture, in one read.
    async fn serving_state(
        &self,
        user_id: &str,
    ) -> Result<(Vec<AssignmentRecord>, Option<BannerMixtureRecord>)>;

    /// Everyone exposed under one bucket version with `from ≤ assigned_at ≤ to`.
    async fn experiment_exposures(
        &self,
        experiment_id: &str,
        bucket_version: u32,
        from: Millis,
        to: Millis,
    ) -> Result<Exposures>;

    /// Everyone exposed under one bucket version whose assignment was
    /// written after assignment number `after_seq` (−1: everyone), whatever
    /// their exposure time. Numbers become visible in order: a reader that
    /// has seen `through_seq` never later finds a smaller one.
    async fn exposures_since(
        &self,
        experiment_id: &str,
        bucket_version: u32,
        after_seq: i64,
    ) -> Result<Exposures>;
}

/// Metric definitions and the scans that feed results.
#[async_trait]
pub trait Metrics: Send + Sync {
    /// Streams the events of a metric scan to `sink` in chunks, in no
    /// particular order (the scan may run on several threads). Says how
    /// many events it sent and up to which sequence number it looked.
    async fn scan_metric_events(&self, scan: MetricScan, sink: MetricSink) -> Result<ScanOutcome>;

    /// Creates a metric; `Conflict` when its key is taken.
    async fn create_metric(&self, metric: MetricRecord) -> Result<()>;

    async fn metrics(&self) -> Result<Vec<MetricRecord>>;

    async fn delete_metric(&self, key: &str) -> Result<bool>;
}

/// Webhooks and their delivery cursors.
#[async_trait]
pub trait Webhooks: Send + Sync {
    async fn create_webhook(&self, hook: WebhookRecord) -> Result<()>;

    async fn webhooks(&self) -> Result<Vec<WebhookRecord>>;

    async fn delete_webhook(&self, id: &str) -> Result<bool>;

    /// Records a delivery attempt: the new cursor, failure count and error.
    async fn record_delivery(
        &self,
        id: &str,
        delivered_seq: i64,
        failures: i64,
        last_error: Option<String>,
        at: Millis,
    ) -> Result<()>;
}

/// Dashboard sessions, shared by every node of a cluster (a load balancer
/// may send a browser to any of them).
#[async_trait]
pub trait DashboardSessions: Send + Sync {
    /// Stores a new session; drops expired ones, and the oldest when `max`
    /// are live.
    async fn create_session(&self, session: SessionRecord, now: Millis, max: u32) -> Result<()>;
    /// The live session with this token hash.
    async fn session(&self, token_hash: Vec<u8>, now: Millis) -> Result<Option<SessionRecord>>;
    async fn delete_session(&self, token_hash: Vec<u8>) -> Result<()>;
}

/// The audit log: every configuration change, who made it and what it was.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends an entry (its `seq` is assigned here).
    async fn append_audit(&self, entry: AuditRecord) -> Result<()>;
    /// Entries newest first: those before `before` (a seq), about `target`
    /// (a target id or kind) when given.
    async fn audit_entries(
        &self,
        target: Option<String>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>>;
}

/// What nodes sharing a store coordinate through: Kafka partition progress and leases.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Records the progress of the Kafka partitions this node consumes.
    async fn save_partition_progress(&self, progress: Vec<PartitionProgress>) -> Result<()>;

    /// Every Kafka partition's last recorded progress, whichever node owns it.
    async fn partition_progress(&self) -> Result<Vec<PartitionProgress>>;

    /// Takes or renews the lease `name` for `holder` until `until` when it
    /// is new, expired at `now`, or `holder`'s already; returns the lease's
    /// cursor when `holder` holds it, `None` when another node does. One
    /// node at a time does a cluster-wide job this way.
    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<Option<i64>>;

    /// Moves the lease's cursor if `holder` still holds it (false if not).
    async fn advance_lease(&self, name: &str, holder: &str, cursor: i64) -> Result<bool>;
}

/// Helpers for tests that need a real PostgreSQL.
#[doc(hidden)]
pub mod testing {
    /// The environment variable naming a PostgreSQL server the tests may
    /// create databases on (`scripts/test.sh` starts a throwaway one).
    pub const POSTGRES_ENV: &str = "STRATIFY_TEST_POSTGRES_URL";

    /// A new, empty database on the test server; returns its URL. Panics
    /// (never skips) when no server is configured.
    pub async fn fresh_postgres() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!("{POSTGRES_ENV} is not set: run the tests with scripts/test.sh, which starts a throwaway PostgreSQL")
        });
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
        let task = tokio::spawn(conn);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "stratify_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        drop(client);
        let _ = task.await;
        match admin.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
                format!("{server}/{name}")
            }
            _ => {
                panic!("{POSTGRES_ENV} must end with a database name: postgres://user@host:port/db")
            }
        }
    }
}
