//! Statement text, written once for both dialects.
//!
//! Every statement the two backends agree on lives here, in SQLite's
//! spelling: `?N` placeholders and `COLLATE BINARY` (byte order). PostgreSQL
//! gets it translated once, on first use: `?N` becomes `$N`, `COLLATE BINARY`
//! becomes `COLLATE "C"`. Statements that truly differ (bulk appends, scans,
//! interning, the upserts that return a row) stay with their backend.
//!
//! A statement that writes configuration (schemas, keys, segments and their
//! members, experiments, metrics, webhooks) is a [`ConfigWrite`]. On
//! PostgreSQL only a `ConfigTx` runs one, and a `ConfigTx` commits with the
//! bump of `config_version` that makes every other node reload: a
//! configuration write that skips the bump does not type-check.

use std::sync::OnceLock;

/// One statement's text, for both dialects.
pub(crate) struct Statement {
    sqlite: &'static str,
    postgres: OnceLock<String>,
}

impl Statement {
    /// The same statement in both dialects, written for SQLite.
    pub(crate) const fn shared(sqlite: &'static str) -> Self {
        Self {
            sqlite,
            postgres: OnceLock::new(),
        }
    }

    pub(crate) fn sqlite(&self) -> &'static str {
        self.sqlite
    }

    /// The PostgreSQL text, translated on first use and kept.
    pub(crate) fn postgres(&'static self) -> &'static str {
        self.postgres.get_or_init(|| to_postgres(self.sqlite))
    }

    #[cfg(test)]
    fn text(&self) -> &'static str {
        self.sqlite
    }
}

/// A statement that writes configuration. On SQLite it runs like any other
/// (one process holds the configuration); on PostgreSQL only through
/// `postgres::ConfigTx`, which bumps `config_version` in the same commit.
pub(crate) struct ConfigWrite {
    statement: Statement,
    /// False for a PostgreSQL-only statement.
    shared: bool,
}

impl ConfigWrite {
    /// The same statement in both dialects, written for SQLite.
    pub(crate) const fn shared(sqlite: &'static str) -> Self {
        Self {
            statement: Statement::shared(sqlite),
            shared: true,
        }
    }

    /// A configuration write only PostgreSQL runs (its SQLite counterpart
    /// differs), written with `$N` placeholders.
    pub(crate) const fn postgres_only(postgres: &'static str) -> Self {
        Self {
            statement: Statement {
                sqlite: postgres,
                postgres: OnceLock::new(),
            },
            shared: false,
        }
    }

    pub(crate) fn sqlite(&self) -> &'static str {
        debug_assert!(self.shared, "a PostgreSQL-only statement run on SQLite");
        self.statement.sqlite
    }

    /// Crate-visible for `postgres::ConfigTx` only.
    pub(crate) fn postgres(&'static self) -> &'static str {
        self.statement.postgres()
    }

    #[cfg(test)]
    fn text(&self) -> &'static str {
        self.statement.sqlite
    }
}

/// `?N` → `$N` and `COLLATE BINARY` → `COLLATE "C"`. The shared statements
/// hold no string literals, so a `?` is always a placeholder.
fn to_postgres(sqlite: &str) -> String {
    let mut out = String::with_capacity(sqlite.len() + 8);
    let mut chars = sqlite.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out.replace("COLLATE BINARY", "COLLATE \"C\"")
}

/// An event's id by its user and dedupe hash (uid, dedupe).
pub(crate) static EVENT_BY_DEDUPE: Statement =
    Statement::shared("SELECT event_id FROM events WHERE uid = ?1 AND dedupe = ?2");
/// A user's row (user_id).
pub(crate) static USER_BY_ID: Statement = Statement::shared(
    "SELECT user_id, attributes, created_at, updated_at FROM users WHERE user_id = ?1",
);
/// Every source's ingest counts.
pub(crate) static INGEST_STATUS: Statement = Statement::shared(
    "SELECT source, received, accepted, duplicates, rejected, last_event_at, last_error, \
     last_error_at, updated_at, forwarded FROM ingest_status ORDER BY source",
);
/// Events in log order (after_seq, limit).
pub(crate) static SCAN_EVENTS: Statement = Statement::shared(
    "SELECT seq, uid, name_id, ts, properties, event_id, received_at FROM events WHERE \
     seq > ?1 ORDER BY seq LIMIT ?2",
);
/// Every interned event name.
pub(crate) static EVENT_NAMES: Statement =
    Statement::shared("SELECT id, name FROM event_names ORDER BY id");
/// Erasure: a user's events (uid).
pub(crate) static DELETE_USER_EVENTS: Statement =
    Statement::shared("DELETE FROM events WHERE uid = ?1");
/// Erasure: a user's static memberships (uid).
pub(crate) static DELETE_USER_MEMBERSHIPS: Statement =
    Statement::shared("DELETE FROM segment_members WHERE uid = ?1");
/// Erasure: a user's sticky assignments (user_id).
pub(crate) static DELETE_USER_ASSIGNMENTS: Statement =
    Statement::shared("DELETE FROM assignments WHERE user_id = ?1");
/// Erasure: a user's banner mixture (user_id).
pub(crate) static DELETE_USER_BANNERS: Statement =
    Statement::shared("DELETE FROM banner_mixtures WHERE user_id = ?1");
/// Erasure: a user's membership changes (user_id).
pub(crate) static DELETE_USER_CHANGES: Statement =
    Statement::shared("DELETE FROM changes WHERE user_id = ?1");
/// Users in creation order (after_uid, limit).
pub(crate) static USERS_PAGE: Statement = Statement::shared(
    "SELECT uid, user_id, attributes, created_at, updated_at FROM users WHERE uid > ?1 \
     ORDER BY uid LIMIT ?2",
);
/// Drops an event type (name).
pub(crate) static DELETE_EVENT_TYPE: ConfigWrite =
    ConfigWrite::shared("DELETE FROM event_types WHERE name = ?1");
/// Every event type, by name.
pub(crate) static EVENT_TYPES: Statement = Statement::shared(
    "SELECT schema, created_at, updated_at FROM event_types ORDER BY name COLLATE BINARY",
);
/// A setting's value (key).
pub(crate) static READ_SETTING: Statement =
    Statement::shared("SELECT value FROM settings WHERE key = ?1");
/// Sets a configuration setting (key, value, now).
pub(crate) static UPSERT_SETTING: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) \
     DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
);
/// A new segment (id, name, description, kind, rules, version, now, by).
pub(crate) static INSERT_SEGMENT: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO segments (id, name, description, kind, rules, version, created_at, \
     updated_at, created_by, updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?8)",
);
/// A segment version's audit row.
pub(crate) static INSERT_SEGMENT_VERSION: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO segment_versions (segment_id, version, name, description, rules, \
     created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
);
/// A segment's new version.
pub(crate) static UPDATE_SEGMENT: ConfigWrite = ConfigWrite::shared(
    "UPDATE segments SET name = ?2, description = ?3, rules = ?4, version = ?5, \
     updated_at = ?6, updated_by = ?7 WHERE id = ?1",
);
/// Every segment, oldest first.
pub(crate) static SEGMENTS: Statement = Statement::shared(
    "SELECT id, name, description, kind, rules, version, created_at, updated_at, \
     created_by, updated_by FROM segments ORDER BY created_at, id COLLATE BINARY",
);
/// A segment's versions, newest first.
pub(crate) static SEGMENT_VERSIONS: Statement = Statement::shared(
    "SELECT version, name, description, rules, created_at, created_by FROM \
     segment_versions WHERE segment_id = ?1 ORDER BY version DESC",
);
/// Drops a segment (id).
pub(crate) static DELETE_SEGMENT: ConfigWrite =
    ConfigWrite::shared("DELETE FROM segments WHERE id = ?1");
/// Drops a segment's versions (id).
pub(crate) static DELETE_SEGMENT_VERSIONS: ConfigWrite =
    ConfigWrite::shared("DELETE FROM segment_versions WHERE segment_id = ?1");
/// Drops a static segment's members (id).
pub(crate) static DELETE_SEGMENT_MEMBERS: ConfigWrite =
    ConfigWrite::shared("DELETE FROM segment_members WHERE segment_id = ?1");
/// A static segment's members.
pub(crate) static STATIC_MEMBERS: Statement = Statement::shared(
    "SELECT u.user_id FROM segment_members m JOIN users u ON u.uid = m.uid WHERE \
     m.segment_id = ?1 ORDER BY u.uid",
);
/// The static segments a user is in.
pub(crate) static STATIC_MEMBERSHIPS: Statement = Statement::shared(
    "SELECT m.segment_id FROM segment_members m JOIN users u ON u.uid = m.uid WHERE \
     u.user_id = ?1 ORDER BY m.segment_id COLLATE BINARY",
);
/// A new experiment.
pub(crate) static INSERT_EXPERIMENT: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO experiments (id, key, name, status, definition, version, created_at, \
     updated_at, created_by, updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
);
/// An experiment's new version.
pub(crate) static UPDATE_EXPERIMENT: ConfigWrite = ConfigWrite::shared(
    "UPDATE experiments SET name = ?2, definition = ?3, version = ?4, updated_at = ?5, \
     updated_by = ?6 WHERE id = ?1",
);
/// A lifecycle move, compare-and-set on the status (id, from, to, at).
pub(crate) static MOVE_EXPERIMENT: ConfigWrite = ConfigWrite::shared(
    "UPDATE experiments SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2",
);
/// A lifecycle move's audit row.
pub(crate) static INSERT_TRANSITION: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO experiment_transitions (experiment_id, from_status, to_status, at, by) \
     VALUES (?1, ?2, ?3, ?4, ?5)",
);
/// Every experiment, oldest first.
pub(crate) static EXPERIMENTS: Statement = Statement::shared(
    "SELECT id, key, name, status, definition, version, created_at, updated_at, \
     created_by, updated_by FROM experiments ORDER BY created_at, id COLLATE BINARY",
);
/// A new API key (hashed).
pub(crate) static INSERT_API_KEY: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO api_keys (id, name, role, key_hash, created_at, revoked_at) VALUES (?1, \
     ?2, ?3, ?4, ?5, ?6)",
);
/// Revokes an active key (id, now).
pub(crate) static REVOKE_API_KEY: ConfigWrite =
    ConfigWrite::shared("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL");
/// Every API key, oldest first.
pub(crate) static API_KEYS: Statement = Statement::shared(
    "SELECT id, name, role, key_hash, created_at, revoked_at FROM api_keys ORDER BY \
     created_at, id COLLATE BINARY",
);
/// A live-engine state value (key).
pub(crate) static READ_LIVE_STATE: Statement =
    Statement::shared("SELECT value FROM live_state WHERE key = ?1");
/// Sets a live-engine state value (key, value).
pub(crate) static UPSERT_LIVE_STATE: Statement = Statement::shared(
    "INSERT INTO live_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET \
     value = excluded.value",
);
/// The highest change sequence number.
pub(crate) static LAST_CHANGE_SEQ: Statement =
    Statement::shared("SELECT COALESCE(MAX(seq), 0) FROM changes");
/// A user's membership changes, oldest first.
pub(crate) static USER_CHANGES: Statement = Statement::shared(
    "SELECT segment_id, entered, at FROM changes WHERE user_id = ?1 ORDER BY seq",
);
/// Entered and exited counts per epoch-aligned bucket (segment_id, bucket ms).
pub(crate) static CHANGE_BUCKETS: Statement = Statement::shared(
    "SELECT (at - (((at % ?2) + ?2) % ?2)) AS b, SUM(CASE WHEN entered THEN 1 ELSE 0 \
     END), SUM(CASE WHEN entered THEN 0 ELSE 1 END) FROM changes WHERE segment_id = ?1 \
     GROUP BY b ORDER BY b",
);
/// A user's sticky assignments.
pub(crate) static USER_ASSIGNMENTS: Statement = Statement::shared(
    "SELECT user_id, experiment_id, variant, bucket_version, assigned_at FROM assignments \
     WHERE user_id = ?1",
);
/// A user's banner mixture.
pub(crate) static USER_BANNERS: Statement = Statement::shared(
    "SELECT mixture, assigned_at, expires_at FROM banner_mixtures WHERE user_id = ?1",
);
/// Everyone exposed to an experiment under one bucket version in [from, to].
pub(crate) static EXPOSURES: Statement = Statement::shared(
    "SELECT u.uid, a.variant, a.assigned_at FROM assignments a LEFT JOIN users u ON \
     u.user_id = a.user_id WHERE a.experiment_id = ?1 AND a.bucket_version = ?2 AND \
     a.assigned_at >= ?3 AND a.assigned_at <= ?4",
);
/// Saves a user's banner mixture.
pub(crate) static UPSERT_BANNERS: Statement = Statement::shared(
    "INSERT INTO banner_mixtures (user_id, mixture, assigned_at, expires_at) VALUES (?1, \
     ?2, ?3, ?4) ON CONFLICT (user_id) DO UPDATE SET mixture = excluded.mixture, \
     assigned_at = excluded.assigned_at, expires_at = excluded.expires_at",
);
/// A new metric.
pub(crate) static INSERT_METRIC: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO metrics (key, definition, created_at, updated_at) VALUES (?1, ?2, ?3, \
     ?4)",
);
/// Drops a metric (key).
pub(crate) static DELETE_METRIC: ConfigWrite =
    ConfigWrite::shared("DELETE FROM metrics WHERE key = ?1");
/// Every metric, by key.
pub(crate) static METRICS: Statement = Statement::shared(
    "SELECT key, definition, created_at, updated_at FROM metrics ORDER BY key COLLATE \
     BINARY",
);
/// A new webhook.
pub(crate) static INSERT_WEBHOOK: ConfigWrite = ConfigWrite::shared(
    "INSERT INTO webhooks (id, url, segment_ids, secret, created_at, delivered_seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
);
/// Drops a webhook (id).
pub(crate) static DELETE_WEBHOOK: ConfigWrite =
    ConfigWrite::shared("DELETE FROM webhooks WHERE id = ?1");
/// Every webhook, oldest first.
pub(crate) static WEBHOOKS: Statement = Statement::shared(
    "SELECT id, url, segment_ids, secret, created_at, delivered_seq, failures, \
     last_error, last_attempt_at FROM webhooks ORDER BY created_at, id COLLATE BINARY",
);
/// A delivery attempt: the cursor never moves back (id, seq, failures, error, at).
pub(crate) static RECORD_DELIVERY: Statement = Statement::shared(
    "UPDATE webhooks SET delivered_seq = CASE WHEN delivered_seq > ?2 THEN delivered_seq \
     ELSE ?2 END, failures = ?3, last_error = ?4, last_attempt_at = ?5 WHERE id = ?1",
);
/// A Kafka partition's progress.
pub(crate) static UPSERT_PARTITION: Statement = Statement::shared(
    "INSERT INTO kafka_partitions (topic, partition, committed, high_water, node, \
     updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (topic, partition) DO UPDATE \
     SET committed = excluded.committed, high_water = excluded.high_water, node = \
     excluded.node, updated_at = excluded.updated_at",
);
/// Every Kafka partition's progress.
pub(crate) static PARTITIONS: Statement = Statement::shared(
    "SELECT topic, partition, committed, high_water, node, updated_at FROM \
     kafka_partitions ORDER BY topic, partition",
);

/// Drops sessions that ended (now).
pub(crate) static DELETE_EXPIRED_SESSIONS: Statement =
    Statement::shared("DELETE FROM sessions WHERE expires_at <= ?1");
/// How many sessions are live.
pub(crate) static COUNT_SESSIONS: Statement = Statement::shared("SELECT COUNT(*) FROM sessions");
/// Drops the session that ends first.
pub(crate) static DELETE_OLDEST_SESSION: Statement = Statement::shared(
    "DELETE FROM sessions WHERE token_hash = \
     (SELECT token_hash FROM sessions ORDER BY expires_at LIMIT 1)",
);
/// A new session (token_hash, key_id, csrf, expires_at).
pub(crate) static INSERT_SESSION: Statement = Statement::shared(
    "INSERT INTO sessions (token_hash, key_id, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)",
);
/// A live session by token hash (token_hash, now).
pub(crate) static SESSION: Statement = Statement::shared(
    "SELECT token_hash, key_id, csrf, expires_at FROM sessions \
     WHERE token_hash = ?1 AND expires_at > ?2",
);
/// Ends a session (token_hash).
pub(crate) static DELETE_SESSION: Statement =
    Statement::shared("DELETE FROM sessions WHERE token_hash = ?1");

/// Records an erasure for the other nodes (user_id, now).
pub(crate) static INSERT_ERASURE: Statement =
    Statement::shared("INSERT INTO erasures (user_id, at) VALUES (?1, ?2)");
/// Forgets erasures older than the other nodes need (before).
pub(crate) static PRUNE_ERASURES: Statement =
    Statement::shared("DELETE FROM erasures WHERE at < ?1");
/// Erasures after a sequence number, oldest first (after, limit).
pub(crate) static ERASURES_AFTER: Statement =
    Statement::shared("SELECT seq, user_id FROM erasures WHERE seq > ?1 ORDER BY seq LIMIT ?2");
/// The newest erasure's sequence number (0 when none).
pub(crate) static LAST_ERASURE_SEQ: Statement =
    Statement::shared("SELECT COALESCE(MAX(seq), 0) FROM erasures");

/// Every shared statement: (name, SQLite text, writes configuration).
#[cfg(test)]
fn all() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("INSERT_ERASURE", INSERT_ERASURE.text(), false),
        ("PRUNE_ERASURES", PRUNE_ERASURES.text(), false),
        ("ERASURES_AFTER", ERASURES_AFTER.text(), false),
        ("LAST_ERASURE_SEQ", LAST_ERASURE_SEQ.text(), false),
        (
            "DELETE_EXPIRED_SESSIONS",
            DELETE_EXPIRED_SESSIONS.text(),
            false,
        ),
        ("COUNT_SESSIONS", COUNT_SESSIONS.text(), false),
        ("DELETE_OLDEST_SESSION", DELETE_OLDEST_SESSION.text(), false),
        ("INSERT_SESSION", INSERT_SESSION.text(), false),
        ("SESSION", SESSION.text(), false),
        ("DELETE_SESSION", DELETE_SESSION.text(), false),
        ("EVENT_BY_DEDUPE", EVENT_BY_DEDUPE.text(), false),
        ("USER_BY_ID", USER_BY_ID.text(), false),
        ("INGEST_STATUS", INGEST_STATUS.text(), false),
        ("SCAN_EVENTS", SCAN_EVENTS.text(), false),
        ("EVENT_NAMES", EVENT_NAMES.text(), false),
        ("DELETE_USER_EVENTS", DELETE_USER_EVENTS.text(), false),
        (
            "DELETE_USER_MEMBERSHIPS",
            DELETE_USER_MEMBERSHIPS.text(),
            false,
        ),
        (
            "DELETE_USER_ASSIGNMENTS",
            DELETE_USER_ASSIGNMENTS.text(),
            false,
        ),
        ("DELETE_USER_BANNERS", DELETE_USER_BANNERS.text(), false),
        ("DELETE_USER_CHANGES", DELETE_USER_CHANGES.text(), false),
        ("USERS_PAGE", USERS_PAGE.text(), false),
        ("DELETE_EVENT_TYPE", DELETE_EVENT_TYPE.text(), true),
        ("EVENT_TYPES", EVENT_TYPES.text(), false),
        ("READ_SETTING", READ_SETTING.text(), false),
        ("UPSERT_SETTING", UPSERT_SETTING.text(), true),
        ("INSERT_SEGMENT", INSERT_SEGMENT.text(), true),
        (
            "INSERT_SEGMENT_VERSION",
            INSERT_SEGMENT_VERSION.text(),
            true,
        ),
        ("UPDATE_SEGMENT", UPDATE_SEGMENT.text(), true),
        ("SEGMENTS", SEGMENTS.text(), false),
        ("SEGMENT_VERSIONS", SEGMENT_VERSIONS.text(), false),
        ("DELETE_SEGMENT", DELETE_SEGMENT.text(), true),
        (
            "DELETE_SEGMENT_VERSIONS",
            DELETE_SEGMENT_VERSIONS.text(),
            true,
        ),
        (
            "DELETE_SEGMENT_MEMBERS",
            DELETE_SEGMENT_MEMBERS.text(),
            true,
        ),
        ("STATIC_MEMBERS", STATIC_MEMBERS.text(), false),
        ("STATIC_MEMBERSHIPS", STATIC_MEMBERSHIPS.text(), false),
        ("INSERT_EXPERIMENT", INSERT_EXPERIMENT.text(), true),
        ("UPDATE_EXPERIMENT", UPDATE_EXPERIMENT.text(), true),
        ("MOVE_EXPERIMENT", MOVE_EXPERIMENT.text(), true),
        ("INSERT_TRANSITION", INSERT_TRANSITION.text(), true),
        ("EXPERIMENTS", EXPERIMENTS.text(), false),
        ("INSERT_API_KEY", INSERT_API_KEY.text(), true),
        ("REVOKE_API_KEY", REVOKE_API_KEY.text(), true),
        ("API_KEYS", API_KEYS.text(), false),
        ("READ_LIVE_STATE", READ_LIVE_STATE.text(), false),
        ("UPSERT_LIVE_STATE", UPSERT_LIVE_STATE.text(), false),
        ("LAST_CHANGE_SEQ", LAST_CHANGE_SEQ.text(), false),
        ("USER_CHANGES", USER_CHANGES.text(), false),
        ("CHANGE_BUCKETS", CHANGE_BUCKETS.text(), false),
        ("USER_ASSIGNMENTS", USER_ASSIGNMENTS.text(), false),
        ("USER_BANNERS", USER_BANNERS.text(), false),
        ("EXPOSURES", EXPOSURES.text(), false),
        ("UPSERT_BANNERS", UPSERT_BANNERS.text(), false),
        ("INSERT_METRIC", INSERT_METRIC.text(), true),
        ("DELETE_METRIC", DELETE_METRIC.text(), true),
        ("METRICS", METRICS.text(), false),
        ("INSERT_WEBHOOK", INSERT_WEBHOOK.text(), true),
        ("DELETE_WEBHOOK", DELETE_WEBHOOK.text(), true),
        ("WEBHOOKS", WEBHOOKS.text(), false),
        ("RECORD_DELIVERY", RECORD_DELIVERY.text(), false),
        ("UPSERT_PARTITION", UPSERT_PARTITION.text(), false),
        ("PARTITIONS", PARTITIONS.text(), false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables whose rows every node holds in memory: a write to one must
    /// reach the other nodes (PostgreSQL's `config_version`).
    pub(crate) const CONFIG_TABLES: &[&str] = &[
        "event_types",
        "settings",
        "api_keys",
        "segments",
        "segment_versions",
        "segment_members",
        "experiments",
        "experiment_transitions",
        "metrics",
        "webhooks",
    ];

    /// Plain statements that touch a configuration table without changing
    /// configuration, and why.
    const NOT_CONFIGURATION: &[(&str, &str)] = &[
        (
            "RECORD_DELIVERY",
            "a webhook's delivery cursor, not its definition",
        ),
        (
            "DELETE_USER_MEMBERSHIPS",
            "erasure; other nodes learn of it as a user refresh",
        ),
    ];

    pub(crate) fn writes_configuration(text: &str) -> Option<&'static str> {
        let upper = text.to_ascii_uppercase();
        CONFIG_TABLES.iter().copied().find(|t| {
            let t = t.to_ascii_uppercase();
            [
                format!("INSERT INTO {t} "),
                format!("INSERT OR IGNORE INTO {t} "),
                format!("UPDATE {t} "),
                format!("DELETE FROM {t} "),
            ]
            .iter()
            .any(|p| upper.contains(p.as_str()))
        })
    }

    #[test]
    fn translation_to_postgres() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = ?12 ORDER BY a COLLATE BINARY"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 ORDER BY a COLLATE \"C\""
        );
        assert_eq!(USERS_PAGE.postgres(), USERS_PAGE.postgres());
        assert!(std::ptr::eq(USERS_PAGE.postgres(), USERS_PAGE.postgres()));
    }

    #[test]
    fn every_configuration_write_is_typed_as_one() {
        let mut names = std::collections::HashSet::new();
        for (name, text, config) in all() {
            assert!(names.insert(name), "{name} twice");
            let table = writes_configuration(text);
            let exempt = NOT_CONFIGURATION.iter().any(|(n, _)| *n == name);
            assert_eq!(
                config,
                table.is_some() && !exempt,
                "{name} writes {table:?}: it must be a ConfigWrite exactly when it changes configuration"
            );
        }
    }

    /// The PostgreSQL backend holds no configuration write of its own
    /// outside a `ConfigWrite` (which only its `ConfigTx` runs).
    #[test]
    fn postgres_writes_configuration_only_through_config_writes() {
        let source = include_str!("postgres.rs");
        let literal = regex_lite_literals(source);
        for (at, text) in literal {
            if let Some(table) = writes_configuration(&text) {
                // A PostgreSQL-only configuration write, declared as one.
                let before = &source[at.saturating_sub(60)..at];
                assert!(
                    before.contains("ConfigWrite::postgres_only("),
                    "postgres.rs writes {table} outside a ConfigWrite: {text}"
                );
            }
        }
    }

    /// On PostgreSQL a shared configuration write reaches the database only
    /// through `ConfigTx`, never as raw text.
    #[test]
    fn postgres_never_runs_a_configuration_write_as_text() {
        let source = include_str!("postgres.rs");
        for (name, _, config) in all() {
            if config {
                let raw = format!("sql::{name}.postgres()");
                assert!(
                    !source.contains(&raw),
                    "postgres.rs runs {raw} outside ConfigTx"
                );
            }
        }
    }

    /// The string literals of a Rust source and where each starts.
    fn regex_lite_literals(source: &str) -> Vec<(usize, String)> {
        let bytes = source.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'/' if bytes.get(i + 1) == Some(&b'/') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 3,
                b'"' => {
                    let start = i;
                    let mut text = String::new();
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' {
                            if bytes.get(i + 1) == Some(&b'\n') {
                                i += 2;
                                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                                    i += 1;
                                }
                                continue;
                            }
                            text.push(bytes[i + 1] as char);
                            i += 2;
                            continue;
                        }
                        text.push(bytes[i] as char);
                        i += 1;
                    }
                    out.push((start, text));
                    i += 1;
                }
                _ => i += 1,
            }
        }
        out
    }
}
