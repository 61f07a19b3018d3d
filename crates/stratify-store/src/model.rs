//! Records that cross the store boundary.

use serde::Serialize;
use serde_json::{Map, Value};
use stratify_core::event::NewEvent;
use stratify_core::time::Millis;

pub type Attributes = Map<String, Value>;

/// Where events came from, for ingestion status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Http,
    Import,
    Kafka,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Import => "import",
            Source::Kafka => "kafka",
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Source::Http => 1,
            Source::Import => 2,
            Source::Kafka => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Source::Http),
            2 => Some(Source::Import),
            3 => Some(Source::Kafka),
            _ => None,
        }
    }
}

/// Validated events plus the counts of what was refused before the store.
#[derive(Debug, Clone)]
pub struct EventBatch {
    /// Shared so the engine can index the same events after the write.
    pub events: std::sync::Arc<Vec<NewEvent>>,
    pub report: IngestReport,
    /// Called on the writer's thread once the batch is durable, before the
    /// caller hears of it. Hooks run in commit order, which is sequence
    /// order: what a consumer that must see the log in order needs.
    pub on_commit: Option<CommitHook>,
}

/// See [`EventBatch::on_commit`].
#[derive(Clone)]
pub struct CommitHook(pub std::sync::Arc<OnCommit>);

/// What a [`CommitHook`] calls with the outcome of each event and its
/// user's interned id (`uid`), in input order.
pub type OnCommit = dyn Fn(&[Appended], &[i64]) + Send + Sync;

impl std::fmt::Debug for CommitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitHook")
    }
}

/// Counts for one source, added to its ingestion status.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub source: Source,
    /// Items received, including rejected and forwarded ones.
    pub received: u64,
    pub rejected: u64,
    /// Items handed to the node that owns their user instead of stored here
    /// (that node counts them again, under `kafka`).
    pub forwarded: u64,
    pub last_error: Option<String>,
    pub now: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Appended with this sequence number.
    New(i64),
    /// An event with the same idempotency key was appended before.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Fails with `Conflict` if the user exists.
    Create,
    /// Replaces all attributes; creates the user if unknown.
    Replace,
    /// Merges into existing attributes (`null` removes one); `NotFound` if unknown.
    Merge,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UserRecord {
    pub user_id: String,
    pub attributes: Attributes,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub user_id: Option<String>,
    pub name: Option<String>,
    /// Inclusive lower bound on the event timestamp. Results come in log
    /// (sequence) order; within one appended batch that is (user, time) order.
    pub from: Option<Millis>,
    /// Exclusive upper bound on the event timestamp.
    pub to: Option<Millis>,
    /// Only events with a larger sequence number (cursor paging), or a
    /// smaller one when `newest_first`.
    pub after_seq: Option<i64>,
    /// Newest (highest sequence number) first.
    pub newest_first: bool,
    /// Only events of users assigned to an experiment, at or after their
    /// assignment (first exposure).
    pub experiment: Option<ExperimentFilter>,
    pub limit: u32,
}

/// Events of an experiment's users (in one variant when given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentFilter {
    pub experiment_id: String,
    pub bucket_version: u32,
    pub variant: Option<String>,
}

/// A metric definition (the engine's JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    pub key: String,
    pub definition: Value,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Everyone exposed to an experiment under one bucket version, as columns:
/// the store's user number (`None` for a user with no stored profile and so
/// no events), the index of their variant in `variants`, and the instant of
/// their first exposure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposures {
    pub variants: Vec<String>,
    pub uid: Vec<Option<i64>>,
    pub variant: Vec<u16>,
    pub assigned_at: Vec<Millis>,
    /// For [`crate::Assignments::exposures_since`]: the largest assignment
    /// number read (the one passed in when nothing was new).
    pub through_seq: i64,
    /// For `exposures_since`: (row, user id) of each user without a profile.
    pub no_profile: Vec<(u32, String)>,
    /// For `exposures_since`: the largest user number when the read began
    /// (a user without a profile then who gets one later is numbered above).
    pub max_uid: i64,
}

impl Exposures {
    /// Only the exposures with `from ≤ assigned_at ≤ to` (their variants'
    /// names kept), without the read-by-number fields.
    pub fn within(self, from: Millis, to: Millis) -> Self {
        let mut out = Exposures {
            variants: self.variants,
            ..Exposures::default()
        };
        for ((uid, variant), at) in self.uid.into_iter().zip(self.variant).zip(self.assigned_at) {
            if (from..=to).contains(&at) {
                out.uid.push(uid);
                out.variant.push(variant);
                out.assigned_at.push(at);
            }
        }
        out
    }
}

/// Events of one name in `[since, until]`, with one numeric property.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricScan {
    pub event: String,
    /// A property name (letters, digits, `_`); its numeric value, else `None`.
    pub property: Option<String>,
    pub since: Millis,
    pub until: Millis,
    /// Only events with a larger sequence number (an incremental scan).
    pub after_seq: i64,
}

/// What a metric scan covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Events sent to the sink.
    pub events: u64,
    /// Every event up to this sequence number was considered.
    pub through_seq: i64,
}

/// One event of a metric scan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricEvent {
    pub uid: i64,
    pub ts: Millis,
    pub value: Option<f64>,
}

/// Receives a metric scan in chunks, possibly from several threads at once.
pub type MetricSink = std::sync::Arc<dyn Fn(&[MetricEvent]) + Send + Sync>;

/// Receives user ids one at a time (a scan that would not fit a `Vec`).
pub type IdSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_id: Option<String>,
    pub user_id: String,
    pub name: String,
    pub timestamp: Millis,
    pub properties: Option<Map<String, Value>>,
    pub received_at: Millis,
    pub source: Option<Source>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventTypeRecord {
    pub schema: stratify_core::schema::EventTypeSchema,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    /// SHA-256 of the whole secret key.
    pub key_hash: Vec<u8>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestStatus {
    pub source: Source,
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Handed to the node that owns their user (see [`IngestReport::forwarded`]).
    pub forwarded: u64,
    pub last_event_at: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub updated_at: Millis,
}

/// See [`crate::Users::derived_stamp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DerivedStamp {
    pub store_id: String,
    pub generation: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub users: u64,
    pub events: u64,
}

/// A segment as stored: its rules are kept as the JSON the client sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// `dynamic` or `static`.
    pub kind: String,
    pub rules: Option<Value>,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentVersion {
    pub version: i64,
    pub name: String,
    pub description: Option<String>,
    pub rules: Option<Value>,
    pub created_at: Millis,
    pub created_by: Option<String>,
}

/// An event as stored, with interned ids (for bulk scans).
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub seq: i64,
    pub uid: i64,
    pub name_id: i64,
    pub timestamp: Millis,
    pub properties: Option<Map<String, Value>>,
    pub event_id: Option<String>,
    pub received_at: Millis,
}

/// One entry of the change log: a user entered or left a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub seq: i64,
    pub segment_id: String,
    pub user_id: String,
    pub entered: bool,
    pub at: Millis,
    pub cause: Cause,
}

/// Why a membership changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// An event arrived (its sequence number and `event_id`, if it had one).
    Event { seq: i64, event_id: Option<String> },
    /// Time passed: a window or a recency threshold was crossed.
    Time,
    /// The segment was created or its rule (or a segment it refers to) changed.
    RuleChange,
    /// The user's attributes were written.
    AttributeChange,
    /// A refresh or rebuild from the event log corrected it.
    Refresh,
    /// An anonymous visitor was identified as a known user (`POST
    /// /v1/identify`): the visitor's memberships end and the merged user's
    /// are evaluated anew.
    Identify,
}

impl Cause {
    /// The wire form: `{"event_id": .., "event_seq": ..}` or a string.
    pub fn to_json(&self) -> Value {
        match self {
            Cause::Event { seq, event_id } => {
                serde_json::json!({"event_id": event_id, "event_seq": seq})
            }
            Cause::Time => "time".into(),
            Cause::RuleChange => "rule_change".into(),
            Cause::AttributeChange => "attribute_change".into(),
            Cause::Refresh => "refresh".into(),
            Cause::Identify => "identify".into(),
        }
    }

    pub(crate) fn code(&self) -> i64 {
        match self {
            Cause::Event { .. } => 0,
            Cause::Time => 1,
            Cause::RuleChange => 2,
            Cause::AttributeChange => 3,
            Cause::Refresh => 4,
            Cause::Identify => 5,
        }
    }

    pub(crate) fn from_row(code: i64, seq: Option<i64>, event_id: Option<String>) -> Self {
        match code {
            0 => Cause::Event {
                seq: seq.unwrap_or(0),
                event_id,
            },
            1 => Cause::Time,
            2 => Cause::RuleChange,
            3 => Cause::AttributeChange,
            5 => Cause::Identify,
            _ => Cause::Refresh,
        }
    }
}

/// How far the live engine has got: every event up to `event_seq` has been
/// applied and every deadline up to `at` fired. Committed with the changes
/// it produced, so a restart resumes exactly there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Watermark {
    pub event_seq: i64,
    pub at: Millis,
}

impl Watermark {
    /// The `live_state` key a live engine keeps its watermark under:
    /// `live_watermark` alone, `live_watermark:<node>` for a node of a
    /// cluster, so no node's progress overwrites another's.
    pub fn key(node: Option<&str>) -> String {
        match node {
            None => "live_watermark".to_owned(),
            Some(n) => format!("live_watermark:{n}"),
        }
    }
}

/// One stay of a user in a segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MembershipRecord {
    pub segment_id: String,
    pub entered_at: Millis,
    pub exited_at: Option<Millis>,
}

/// A registered webhook and its delivery progress.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// Only changes of these segments; `None` = all.
    pub segment_ids: Option<Vec<String>>,
    pub secret: String,
    pub created_at: Millis,
    /// Every change up to this sequence number has been delivered.
    pub delivered_seq: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<Millis>,
}

/// Entered and exited counts of one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeBucket {
    pub start: Millis,
    pub entered: u64,
    pub exited: u64,
}

/// An experiment as stored: its definition is the engine's normalised JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentRecord {
    pub id: String,
    pub key: String,
    pub name: String,
    pub status: String,
    pub definition: Value,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

/// One lifecycle step of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionRecord {
    pub from: String,
    pub to: String,
    pub at: Millis,
    pub by: Option<String>,
}

/// A sticky assignment: the variant a user was first served (their first
/// exposure) under a bucket version of an experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignmentRecord {
    pub user_id: String,
    pub experiment_id: String,
    pub variant: String,
    pub bucket_version: u32,
    pub assigned_at: Millis,
}

/// The banners drawn for a user, kept until `expires_at` (the engine's JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct BannerMixtureRecord {
    pub user_id: String,
    pub mixture: Value,
    pub assigned_at: Millis,
    pub expires_at: Millis,
}

/// How far a node has consumed one Kafka partition: every record before
/// `committed` is durable in the store; `high_water` is the partition's end
/// when last seen (lag = high_water - committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub high_water: i64,
    pub node: String,
    pub updated_at: Millis,
}

/// A signed-in dashboard browser: the SHA-256 of its cookie token (never the
/// token), the API key it signed in with (by id: the key is checked again on
/// every request), its CSRF token and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: Millis,
    /// The API key that made the change.
    pub key_id: String,
    /// `METHOD /route/{template}`, e.g. `POST /v1/experiments/{id}/start`.
    pub action: String,
    /// What kind of thing changed (`segments`, `experiments`, `api-keys`…).
    pub target_kind: String,
    pub target_id: Option<String>,
    /// What the request asked to change and what it answered (secrets removed).
    pub changes: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub token_hash: Vec<u8>,
    pub key_id: String,
    pub csrf: String,
    pub expires_at: Millis,
}

/// What `Users::identify` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Identified {
    /// The anonymous id was merged into the known user now.
    Merged(Box<Merge>),
    /// The anonymous id was already an alias of the known user (a retry).
    Already,
    /// The anonymous id is already an alias of another user (named).
    AliasOfOther(String),
    /// The known id is an alias of the anonymous user: merging would make
    /// the person an alias of themselves.
    KnownIsAlias,
}

/// One merge of an anonymous visitor into a known user, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// The visitor's interned id before the merge (`None`: the id had
    /// never been seen, only the alias was recorded).
    pub anonymous_uid: Option<i64>,
    /// The known user's interned id after the merge (the visitor's own
    /// when the known user did not exist: the row was renamed).
    pub known_uid: i64,
    /// The known user as merged (attributes: the visitor's, overlaid by
    /// the known user's).
    pub user: UserRecord,
    pub events_moved: u64,
    /// Visitor events whose `event_id` the known user already had: the
    /// same event sent under both ids, kept once.
    pub duplicates_dropped: u64,
    pub assignments_moved: u64,
    /// Aliases of the visitor that now point at the known user.
    pub aliases_moved: Vec<String>,
}

/// A user gone from the store, as other nodes follow it: erased, or merged
/// into another user (`merged_into`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGone {
    pub seq: i64,
    pub user_id: String,
    pub merged_into: Option<String>,
}
