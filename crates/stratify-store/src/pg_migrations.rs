//! PostgreSQL schema migrations, applied in order under an advisory lock (so
//! several nodes starting at once migrate exactly once) and recorded in
//! `stratify_migrations`.
//!
//! The tables mirror the SQLite schema (see `migrations.rs`) with the
//! contract the compiled rules read (`stratify_core::rules::sql`):
//! `attributes` and `properties` are `jsonb`, and the rules' version
//! comparison is the SQL function `stratify_version_cmp`.

use tokio_postgres::Client;

/// Advisory lock key held while migrating ("stratify" in ASCII).
const MIGRATION_LOCK: i64 = 0x7374_7261_7469_6679;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    uid         BIGSERIAL PRIMARY KEY,
    user_id     TEXT NOT NULL UNIQUE,
    attributes  JSONB NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE event_names (
    id    BIGSERIAL PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE
);
-- The event log. A sequence number is never reused (cursors rely on it).
CREATE TABLE events (
    seq          BIGSERIAL PRIMARY KEY,
    uid          BIGINT NOT NULL,
    name_id      BIGINT NOT NULL,
    ts           BIGINT NOT NULL,
    event_id     TEXT,
    dedupe       BIGINT,
    properties   JSONB,
    source       BIGINT NOT NULL,
    received_at  BIGINT NOT NULL
);
CREATE INDEX events_uid_ts ON events(uid, ts);
CREATE INDEX events_name_seq ON events(name_id, seq);
-- Idempotency keys are unique per user: what makes a redelivered Kafka
-- record (after a crash or a rebalance) a duplicate instead of a second count.
CREATE UNIQUE INDEX events_dedupe ON events(uid, dedupe) WHERE dedupe IS NOT NULL;
CREATE TABLE event_types (
    name        TEXT PRIMARY KEY,
    schema      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    key_hash    BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE TABLE ingest_status (
    source         BIGINT PRIMARY KEY,
    received       BIGINT NOT NULL DEFAULT 0,
    accepted       BIGINT NOT NULL DEFAULT 0,
    duplicates     BIGINT NOT NULL DEFAULT 0,
    rejected       BIGINT NOT NULL DEFAULT 0,
    last_event_at  BIGINT,
    last_error     TEXT,
    last_error_at  BIGINT,
    updated_at     BIGINT NOT NULL
);
CREATE TABLE segments (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT,
    kind         TEXT NOT NULL,
    rules        TEXT,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    created_by   TEXT,
    updated_by   TEXT
);
CREATE TABLE segment_versions (
    segment_id   TEXT NOT NULL,
    version      BIGINT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT,
    rules        TEXT,
    created_at   BIGINT NOT NULL,
    created_by   TEXT,
    PRIMARY KEY (segment_id, version)
);
CREATE TABLE segment_members (
    segment_id  TEXT NOT NULL,
    uid         BIGINT NOT NULL,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (segment_id, uid)
);
CREATE INDEX segment_members_uid ON segment_members(uid);
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    segment_ids      TEXT,
    secret           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    delivered_seq    BIGINT NOT NULL,
    failures         BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_attempt_at  BIGINT
);
CREATE TABLE experiments (
    id          TEXT PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    definition  TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    created_by  TEXT,
    updated_by  TEXT
);
CREATE TABLE experiment_transitions (
    id             BIGSERIAL PRIMARY KEY,
    experiment_id  TEXT NOT NULL,
    from_status    TEXT NOT NULL,
    to_status      TEXT NOT NULL,
    at             BIGINT NOT NULL,
    by             TEXT
);
CREATE INDEX experiment_transitions_id ON experiment_transitions(experiment_id, at);
CREATE TABLE assignments (
    user_id         TEXT NOT NULL,
    experiment_id   TEXT NOT NULL,
    variant         TEXT NOT NULL,
    bucket_version  BIGINT NOT NULL,
    assigned_at     BIGINT NOT NULL,
    PRIMARY KEY (user_id, experiment_id)
);
CREATE INDEX assignments_experiment ON assignments(experiment_id, bucket_version, assigned_at, variant);
CREATE TABLE banner_mixtures (
    user_id      TEXT PRIMARY KEY,
    mixture      TEXT NOT NULL,
    assigned_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE TABLE metrics (
    key         TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- The change log. `seq` is assigned here, under a transaction-level lock,
-- so that with several nodes writing, sequence order is commit order and a
-- reader following `seq > cursor` never skips a late commit.
CREATE TABLE changes (
    seq         BIGINT PRIMARY KEY,
    segment_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    entered     BOOLEAN NOT NULL,
    at          BIGINT NOT NULL,
    cause       BIGINT NOT NULL,
    event_seq   BIGINT,
    event_id    TEXT
);
CREATE INDEX changes_segment ON changes(segment_id, seq);
CREATE INDEX changes_user ON changes(user_id, seq);
CREATE TABLE live_state (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
-- Per-partition progress of Kafka consumers (any node shows all of them).
CREATE TABLE kafka_partitions (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    committed   BIGINT NOT NULL,
    high_water  BIGINT NOT NULL,
    node        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
-- Bumped by every configuration write; nodes poll it to reload.
CREATE TABLE config_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO config_version VALUES (1, 0);

-- Semantic Versioning 2.0 order (see stratify_core::rules::version):
-- -1, 0, 1, or NULL when either side is not a version.
CREATE FUNCTION stratify_version_parse(t TEXT) RETURNS TEXT[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    core TEXT;
    pre TEXT;
    parts TEXT[];
    p TEXT;
    ids TEXT[];
    out TEXT[] := ARRAY[]::TEXT[];
BEGIN
    IF t IS NULL THEN RETURN NULL; END IF;
    t := btrim(t, E' \t\n\r\f\v');
    IF left(t, 1) IN ('v', 'V') THEN t := substr(t, 2); END IF;
    t := split_part(t, '+', 1);
    IF position('-' IN t) > 0 THEN
        core := substr(t, 1, position('-' IN t) - 1);
        pre := substr(t, position('-' IN t) + 1);
    ELSE
        core := t;
    END IF;
    parts := string_to_array(core, '.');
    IF array_length(parts, 1) IS NULL OR array_length(parts, 1) > 3 THEN RETURN NULL; END IF;
    FOREACH p IN ARRAY parts LOOP
        IF p !~ '^[0-9]{1,18}$' THEN RETURN NULL; END IF;
    END LOOP;
    WHILE array_length(parts, 1) < 3 LOOP parts := parts || '0'::TEXT; END LOOP;
    FOREACH p IN ARRAY parts LOOP
        out := out || lpad(p::NUMERIC::TEXT, 19, '0');
    END LOOP;
    IF pre IS NULL THEN
        RETURN out;
    END IF;
    IF pre = '' THEN RETURN NULL; END IF;
    ids := string_to_array(pre, '.');
    FOREACH p IN ARRAY ids LOOP
        IF p !~ '^[0-9A-Za-z-]+$' THEN RETURN NULL; END IF;
    END LOOP;
    RETURN (out || '-'::TEXT) || ids;
END $$;

CREATE FUNCTION stratify_version_cmp(a TEXT, b TEXT) RETURNS INTEGER LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    x TEXT[] := stratify_version_parse(a);
    y TEXT[] := stratify_version_parse(b);
    i INTEGER;
    xi TEXT;
    yi TEXT;
    xn BOOLEAN;
    yn BOOLEAN;
BEGIN
    IF x IS NULL OR y IS NULL THEN RETURN NULL; END IF;
    FOR i IN 1..3 LOOP
        IF x[i] < y[i] THEN RETURN -1; END IF;
        IF x[i] > y[i] THEN RETURN 1; END IF;
    END LOOP;
    -- A release (no pre-release) sorts after its pre-releases.
    IF array_length(x, 1) = 3 AND array_length(y, 1) = 3 THEN RETURN 0; END IF;
    IF array_length(x, 1) = 3 THEN RETURN 1; END IF;
    IF array_length(y, 1) = 3 THEN RETURN -1; END IF;
    i := 5;
    LOOP
        xi := x[i];
        yi := y[i];
        IF xi IS NULL AND yi IS NULL THEN RETURN 0; END IF;
        IF xi IS NULL THEN RETURN -1; END IF;
        IF yi IS NULL THEN RETURN 1; END IF;
        xn := xi ~ '^[0-9]{1,18}$';
        yn := yi ~ '^[0-9]{1,18}$';
        IF xn AND yn THEN
            IF xi::NUMERIC < yi::NUMERIC THEN RETURN -1; END IF;
            IF xi::NUMERIC > yi::NUMERIC THEN RETURN 1; END IF;
        ELSIF xn THEN
            RETURN -1;
        ELSIF yn THEN
            RETURN 1;
        ELSE
            IF xi COLLATE "C" < yi COLLATE "C" THEN RETURN -1; END IF;
            IF xi COLLATE "C" > yi COLLATE "C" THEN RETURN 1; END IF;
        END IF;
        i := i + 1;
    END LOOP;
END $$;
"#,
    r#"
-- Leases: one node at a time does a cluster-wide job, with its cursor.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    cursor      BIGINT NOT NULL
);
"#,
    r#"
-- Events handed to another node (the owner of their user) instead of being
-- stored here: over HTTP, or Kafka records on a partition not their user's.
ALTER TABLE ingest_status ADD COLUMN forwarded BIGINT NOT NULL DEFAULT 0;
"#,
    r#"
-- Dashboard sessions, shared by every node (see stratify_store::SessionRecord).
CREATE TABLE sessions (
    token_hash  BYTEA PRIMARY KEY,
    key_id      TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);
"#,
    r#"
-- Recent erasures, for the other nodes to forget the user too; kept an hour.
CREATE TABLE erasures (
    seq      BIGSERIAL PRIMARY KEY,
    user_id  TEXT NOT NULL,
    at       BIGINT NOT NULL
);
"#,
    r#"
-- The audit log: every configuration change (see stratify_store::AuditRecord).
CREATE TABLE audit_log (
    seq          BIGSERIAL PRIMARY KEY,
    at           BIGINT NOT NULL,
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
-- Identity stitching (see the SQLite schema).
CREATE TABLE aliases (
    alias       TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX aliases_user ON aliases(user_id);
ALTER TABLE erasures ADD COLUMN merged_into TEXT;
-- Moved by every merge and erasure: an append that interned its users
-- before one committed checks them again (see PgStore::append_events).
CREATE TABLE user_epoch (
    one    BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    epoch  BIGINT NOT NULL
);
INSERT INTO user_epoch (one, epoch) VALUES (true, 0);
"#,
    r#"
-- Incremental results (see the SQLite schema): numbers are taken under
-- ASSIGNMENTS_LOCK, so they become visible in order.
ALTER TABLE assignments ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX assignments_seq ON assignments(experiment_id, bucket_version, seq)
    INCLUDE (variant, assigned_at, user_id);
CREATE SEQUENCE assignment_seq;
"#,
    r#"
-- Packed sticky assignments: one record per (user, exposure instant) in an
-- append-only log, not one row per (user, experiment) (see `packed.rs` for
-- the entries' bytes). `seq` comes from `assignment_seq` under the
-- assignments lock, so numbers become visible in order; `uid` is the user's
-- number when written (NULL: no profile then).
CREATE TABLE assignment_log (
    seq      BIGINT PRIMARY KEY,
    user_id  TEXT NOT NULL,
    uid      BIGINT,
    at       BIGINT NOT NULL,
    entries  BYTEA NOT NULL
);
CREATE INDEX assignment_log_user ON assignment_log(user_id);
INSERT INTO assignment_log (seq, user_id, uid, at, entries)
    SELECT nextval('assignment_seq'), g.user_id, g.uid, g.at, g.entries FROM (
        SELECT a.user_id, MIN(u.uid) AS uid, a.assigned_at AS at, MIN(a.seq) AS first,
               string_agg(set_byte('\x00'::bytea, 0, octet_length(a.experiment_id))
                   || convert_to(a.experiment_id, 'UTF8')
                   || set_byte('\x00'::bytea, 0, octet_length(a.variant))
                   || convert_to(a.variant, 'UTF8')
                   || substring(int8send(a.bucket_version) FROM 5 FOR 4), ''::bytea) AS entries
        FROM assignments a LEFT JOIN users u ON u.user_id = a.user_id
        GROUP BY a.user_id, a.assigned_at
        ORDER BY first, a.user_id, a.assigned_at) g;
DROP TABLE assignments;

-- Whether packed entries hold an experiment under a bucket version (and a
-- variant, unless NULL): 1 or 0. The same as `packed::exposed` in Rust.
CREATE FUNCTION stratify_exposed(entries BYTEA, experiment TEXT, version BIGINT, want TEXT)
RETURNS INTEGER LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    i INTEGER := 0;
    n INTEGER := octet_length(entries);
    el INTEGER;
    vl INTEGER;
    e BYTEA;
    v BYTEA;
    b BIGINT;
    x BYTEA := convert_to(experiment, 'UTF8');
    w BYTEA := convert_to(want, 'UTF8');
BEGIN
    WHILE i + 6 <= n LOOP
        el := get_byte(entries, i);
        e := substring(entries FROM i + 2 FOR el);
        i := i + 1 + el;
        vl := get_byte(entries, i);
        v := substring(entries FROM i + 2 FOR vl);
        i := i + 1 + vl;
        IF i + 4 > n THEN RETURN 0; END IF;
        b := (get_byte(entries, i)::BIGINT << 24) | (get_byte(entries, i + 1) << 16)
             | (get_byte(entries, i + 2) << 8) | get_byte(entries, i + 3);
        i := i + 4;
        IF e = x AND b = version AND (w IS NULL OR v = w) THEN RETURN 1; END IF;
    END LOOP;
    RETURN 0;
END $$;
"#,
];

pub async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS stratify_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let done: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM stratify_migrations",
            &[],
        )
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO stratify_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await
}
