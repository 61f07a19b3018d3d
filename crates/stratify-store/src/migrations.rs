//! Schema migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! Users and event names are interned to integers so the event log's rows and
//! its `(uid, ts)` index stay small: that is what keeps ingest and per-user
//! reads fast.

use rusqlite::Connection;

pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    uid         INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL UNIQUE,
    attributes  TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE event_names (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE
);
-- The event log: the source of truth. AUTOINCREMENT so that a sequence
-- number is never reused after an erasure (cursors and change feeds rely on it).
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    uid          INTEGER NOT NULL,
    name_id      INTEGER NOT NULL,
    ts           INTEGER NOT NULL,
    event_id     TEXT,
    dedupe       INTEGER,
    properties   TEXT,
    source       INTEGER NOT NULL,
    received_at  INTEGER NOT NULL
);
CREATE INDEX events_uid_ts ON events(uid, ts);
-- Idempotency keys are unique per user: events are partitioned by user
-- (one owner per user when scaled out), and both indexes lead with uid, so a
-- batch written in user order touches each index page once.
CREATE UNIQUE INDEX events_dedupe ON events(uid, dedupe) WHERE dedupe IS NOT NULL;
CREATE TABLE event_types (
    name        TEXT PRIMARY KEY,
    schema      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    key_hash    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE ingest_status (
    source         INTEGER PRIMARY KEY,
    received       INTEGER NOT NULL DEFAULT 0,
    accepted       INTEGER NOT NULL DEFAULT 0,
    duplicates     INTEGER NOT NULL DEFAULT 0,
    rejected       INTEGER NOT NULL DEFAULT 0,
    last_event_at  INTEGER,
    last_error     TEXT,
    last_error_at  INTEGER,
    updated_at     INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE segments (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT,
    kind         TEXT NOT NULL,
    rules        TEXT,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    created_by   TEXT,
    updated_by   TEXT
);
-- Every version of every segment, the current one included (audit trail).
CREATE TABLE segment_versions (
    segment_id   TEXT NOT NULL,
    version      INTEGER NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT,
    rules        TEXT,
    created_at   INTEGER NOT NULL,
    created_by   TEXT,
    PRIMARY KEY (segment_id, version)
);
CREATE TABLE segment_members (
    segment_id  TEXT NOT NULL,
    uid         INTEGER NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (segment_id, uid)
) WITHOUT ROWID;
CREATE INDEX segment_members_uid ON segment_members(uid);
"#,
    r#"
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    segment_ids      TEXT,
    secret           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    delivered_seq    INTEGER NOT NULL,
    failures         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_attempt_at  INTEGER
);
"#,
    r#"
-- Experiments: the definition (variants, targeting, allocation) as the
-- engine's normalised JSON; status and its transitions kept apart.
CREATE TABLE experiments (
    id          TEXT PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    definition  TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    created_by  TEXT,
    updated_by  TEXT
);
CREATE TABLE experiment_transitions (
    experiment_id  TEXT NOT NULL,
    from_status    TEXT NOT NULL,
    to_status      TEXT NOT NULL,
    at             INTEGER NOT NULL,
    by             TEXT
);
CREATE INDEX experiment_transitions_id ON experiment_transitions(experiment_id, at);
"#,
    r#"
-- Sticky assignments, one per (user, experiment): the variant a user was
-- first served under a bucket version, and when (their first exposure).
-- A bucket-version bump replaces the row (re-randomisation).
CREATE TABLE assignments (
    user_id         TEXT NOT NULL,
    experiment_id   TEXT NOT NULL,
    variant         TEXT NOT NULL,
    bucket_version  INTEGER NOT NULL,
    assigned_at     INTEGER NOT NULL,
    PRIMARY KEY (user_id, experiment_id)
) WITHOUT ROWID;
CREATE INDEX assignments_experiment ON assignments(experiment_id, bucket_version, assigned_at);
-- The banners drawn for a user from the pool of their banner experiments.
CREATE TABLE banner_mixtures (
    user_id      TEXT PRIMARY KEY,
    mixture      TEXT NOT NULL,
    assigned_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
"#,
    r#"
-- Metrics: what to measure per exposed user (the engine's normalised JSON).
CREATE TABLE metrics (
    key         TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- Results read every exposure of an experiment with its variant: the index
-- covers the read (the primary key's user_id rides along), at no extra index.
DROP INDEX assignments_experiment;
CREATE INDEX assignments_experiment ON assignments(experiment_id, bucket_version, assigned_at, variant);
"#,
    r#"
-- Per-partition progress of the Kafka consumer.
CREATE TABLE kafka_partitions (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    committed   INTEGER NOT NULL,
    high_water  INTEGER NOT NULL,
    node        TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"#,
    r#"
-- Leases: one node at a time does a cluster-wide job, with its cursor.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    cursor      INTEGER NOT NULL
);
"#,
    r#"
-- Events handed to another node (the owner of their user) instead of being
-- stored here: over HTTP, or Kafka records on a partition not their user's.
ALTER TABLE ingest_status ADD COLUMN forwarded INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Dashboard sessions (see stratify_store::SessionRecord).
CREATE TABLE sessions (
    token_hash  BLOB PRIMARY KEY,
    key_id      TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);
"#,
    r#"
-- Recent erasures, for the other nodes of a cluster to forget the user too;
-- kept an hour (see ERASURE_MEMORY_MS), never longer.
CREATE TABLE erasures (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  TEXT NOT NULL,
    at       INTEGER NOT NULL
);
"#,
    r#"
-- The audit log: every configuration change (see stratify_store::AuditRecord).
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    key_id       TEXT NOT NULL,
    action       TEXT NOT NULL,
    target_kind  TEXT NOT NULL,
    target_id    TEXT,
    changes      TEXT NOT NULL
);
CREATE INDEX audit_target ON audit_log(target_id, seq);
CREATE INDEX audit_kind ON audit_log(target_kind, seq);
"#,
    r#"
-- Identity stitching: an anonymous id merged into a known user stays an
-- alias of that user; reads and writes on it resolve to the user.
CREATE TABLE aliases (
    alias       TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX aliases_user ON aliases(user_id);
-- A merge is followed by the other nodes as the visitor's departure.
ALTER TABLE erasures ADD COLUMN merged_into TEXT;
"#,
    r#"
-- Incremental results: each assignment written (or re-randomised) takes the
-- next number of one counter, so a reader that has seen every exposure up to
-- n reads only the ones after it. Rows written before this carry 0 and are
-- read by every full read.
ALTER TABLE assignments ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
-- Covering the read by number (the primary key's user_id rides along).
CREATE INDEX assignments_seq ON assignments(experiment_id, bucket_version, seq, variant, assigned_at);
CREATE TABLE assignment_seq (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    seq  INTEGER NOT NULL
);
INSERT INTO assignment_seq (one, seq) VALUES (1, 0);
"#,
    r#"
-- Packed sticky assignments: one record per (user, exposure instant) in an
-- append-only log, not one row per (user, experiment) (see `packed.rs` for
-- the entries' bytes). `seq` comes from `assignment_seq`, in commit order;
-- `uid` is the user's number when written (NULL: no profile then).
CREATE TABLE assignment_log (
    seq      INTEGER PRIMARY KEY,
    user_id  TEXT NOT NULL,
    uid      INTEGER,
    at       INTEGER NOT NULL,
    entries  BLOB NOT NULL
);
CREATE INDEX assignment_log_user ON assignment_log(user_id);
INSERT INTO assignment_log (seq, user_id, uid, at, entries)
    SELECT (SELECT seq FROM assignment_seq) + ROW_NUMBER() OVER (ORDER BY MIN(a.seq), a.user_id, a.assigned_at),
           a.user_id, MIN(u.uid), a.assigned_at, stratify_pack(a.experiment_id, a.variant, a.bucket_version)
    FROM assignments a LEFT JOIN users u ON u.user_id = a.user_id
    GROUP BY a.user_id, a.assigned_at;
UPDATE assignment_seq SET seq = max(seq, (SELECT COALESCE(MAX(l.seq), 0) FROM assignment_log l));
DROP TABLE assignments;
"#,
    r#"
-- Derived state saved to disk (checkpoints) is trusted only for the store it
-- was made from, as it was then: `store_id` names this store, and `n` counts
-- every write to what derived state reads besides appended events (users,
-- static members, segments, aliases, events moved or erased). Triggers keep
-- it, so no write path can forget to.
CREATE TABLE derived_generation (
    one       INTEGER PRIMARY KEY CHECK (one = 1),
    store_id  TEXT NOT NULL,
    n         INTEGER NOT NULL
);
INSERT INTO derived_generation (one, store_id, n) VALUES (1, lower(hex(randomblob(16))), 0);
CREATE TRIGGER derived_users_insert AFTER INSERT ON users BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_users_update AFTER UPDATE ON users BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_users_delete AFTER DELETE ON users BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_events_update AFTER UPDATE ON events BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_events_delete AFTER DELETE ON events BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_segment_members_insert AFTER INSERT ON segment_members BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_segment_members_update AFTER UPDATE ON segment_members BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_segment_members_delete AFTER DELETE ON segment_members BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_segments_insert AFTER INSERT ON segments BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_segments_update AFTER UPDATE ON segments BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_segments_delete AFTER DELETE ON segments BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_aliases_insert AFTER INSERT ON aliases BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_aliases_update AFTER UPDATE ON aliases BEGIN UPDATE derived_generation SET n = n + 1; END;
CREATE TRIGGER derived_aliases_delete AFTER DELETE ON aliases BEGIN UPDATE derived_generation SET n = n + 1; END;
"#,
];

/// The live engine's derived state, in its own file (`live.db`) with its own
/// writer, so that committing membership changes never queues behind event
/// ingest. Everything here can be rebuilt from the event log.
const LIVE_MIGRATIONS: &[&str] = &[
    r#"
-- The change log: every time a user entered or left a segment, in order.
-- `seq` is assigned by the engine (one writer) and grows by one per change.
-- cause: 0 event (event_seq, event_id), 1 time, 2 rule_change,
-- 3 attribute_change, 4 refresh. Memberships and their history are folds
-- of this log.
CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY,
    segment_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    entered     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    cause       INTEGER NOT NULL,
    event_seq   INTEGER,
    event_id    TEXT
);
CREATE INDEX changes_segment ON changes(segment_id, seq);
CREATE INDEX changes_user ON changes(user_id, seq);
CREATE TABLE live_state (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"#,
    r#"
-- The change log keyed by a segment's number instead of its 36-character
-- id (half the bytes of a row and its index entries), and indexed by
-- (segment, user) instead of by user. A build of 50 segments over a
-- million users writes 4.4 million changes, each build walking its users
-- in order: under (segment, user) a build's entries land side by side, where
-- under (user) each commit dirtied a page in a fifth of the index and wrote
-- it whole to the WAL (scripts/bench-change-log.py: 36 s against 15 s).
-- A user's changes are one seek per segment. `changes` stays as a view
-- with the ids, so readers keep the text PostgreSQL shares.
CREATE TABLE segment_keys (
    key         INTEGER PRIMARY KEY,
    segment_id  TEXT NOT NULL UNIQUE
);
CREATE TABLE change_log (
    seq         INTEGER PRIMARY KEY,
    segment     INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    entered     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    cause       INTEGER NOT NULL,
    event_seq   INTEGER,
    event_id    TEXT
);
INSERT INTO segment_keys (segment_id) SELECT DISTINCT segment_id FROM changes ORDER BY segment_id;
INSERT INTO change_log (seq, segment, user_id, entered, at, cause, event_seq, event_id)
    SELECT c.seq, k.key, c.user_id, c.entered, c.at, c.cause, c.event_seq, c.event_id
    FROM changes c JOIN segment_keys k ON k.segment_id = c.segment_id ORDER BY c.seq;
DROP TABLE changes;
CREATE INDEX change_log_segment ON change_log(segment, seq);
CREATE INDEX change_log_member ON change_log(segment, user_id, seq);
CREATE VIEW changes AS
    SELECT c.seq, k.segment_id, c.user_id, c.entered, c.at, c.cause, c.event_seq, c.event_id
    FROM change_log c JOIN segment_keys k ON k.key = c.segment;
"#,
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    apply(conn, MIGRATIONS)
}

pub fn migrate_live(conn: &mut Connection) -> rusqlite::Result<()> {
    apply(conn, LIVE_MIGRATIONS)
}

pub(crate) fn apply(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
