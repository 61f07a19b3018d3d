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

/// Declares the shared statements and, for the tests, the list of them
/// all: a statement added here cannot escape the configuration-write check.
macro_rules! statements {
    ($($(#[$doc:meta])* $name:ident: $ty:ident = $text:expr;)*) => {
        $($(#[$doc])* pub(crate) static $name: $ty = $ty::shared($text);)*

        /// Every shared statement: (name, SQLite text, writes configuration).
        #[cfg(test)]
        fn all() -> Vec<(&'static str, &'static str, bool)> {
            vec![$((stringify!($name), $name.text(), stringify!($ty) == "ConfigWrite"),)*]
        }
    };
}

statements! {
    /// An event's id by its user and dedupe hash (uid, dedupe).
    EVENT_BY_DEDUPE: Statement = "SELECT event_id FROM events WHERE uid = ?1 AND dedupe = ?2";
    /// A user's row (user_id).
    USER_BY_ID: Statement = "SELECT user_id, attributes, created_at, updated_at FROM users WHERE user_id = ?1";
    /// Every source's ingest counts.
    INGEST_STATUS: Statement = "SELECT source, received, accepted, duplicates, rejected, last_event_at, last_error, \
         last_error_at, updated_at, forwarded FROM ingest_status ORDER BY source";
    /// Events in log order (after_seq, limit).
    SCAN_EVENTS: Statement = "SELECT seq, uid, name_id, ts, properties, event_id, received_at FROM events WHERE \
         seq > ?1 ORDER BY seq LIMIT ?2";
    /// Every interned event name.
    EVENT_NAMES: Statement = "SELECT id, name FROM event_names ORDER BY id";
    /// Erasure: a user's events (uid).
    DELETE_USER_EVENTS: Statement = "DELETE FROM events WHERE uid = ?1";
    /// Erasure: a user's static memberships (uid).
    DELETE_USER_MEMBERSHIPS: Statement = "DELETE FROM segment_members WHERE uid = ?1";
    /// Erasure: a user's sticky assignments (user_id).
    DELETE_USER_ASSIGNMENTS: Statement = "DELETE FROM assignment_log WHERE user_id = ?1";
    /// Erasure: a user's banner mixture (user_id).
    DELETE_USER_BANNERS: Statement = "DELETE FROM banner_mixtures WHERE user_id = ?1";
    /// Erasure: a user's membership changes (user_id). PostgreSQL's: SQLite's
    /// log is `change_log` behind the `changes` view (see `migrations`).
    DELETE_USER_CHANGES: Statement = "DELETE FROM changes WHERE user_id = ?1";
    /// The user an alias resolves to (alias).
    ALIAS_TARGET: Statement = "SELECT user_id FROM aliases WHERE alias = ?1";
    /// Every alias: (alias, user_id).
    ALIASES: Statement = "SELECT alias, user_id FROM aliases ORDER BY alias";
    /// A user's aliases (user_id).
    USER_ALIASES: Statement = "SELECT alias FROM aliases WHERE user_id = ?1 ORDER BY alias";
    /// Erasure: a user's aliases (user_id).
    DELETE_USER_ALIASES: Statement = "DELETE FROM aliases WHERE user_id = ?1";
    /// Merge: the visitor's aliases become the known user's (visitor, known).
    REPOINT_ALIASES: Statement = "UPDATE aliases SET user_id = ?2 WHERE user_id = ?1";
    /// Merge: the visitor's id becomes an alias (alias, user_id, now).
    INSERT_ALIAS: Statement = "INSERT INTO aliases (alias, user_id, created_at) VALUES (?1, ?2, ?3)";
    /// Merge into a user not seen before: the visitor's row is renamed (uid, new id, now).
    RENAME_USER: Statement = "UPDATE users SET user_id = ?2, updated_at = ?3 WHERE uid = ?1";
    /// Merge: the person was first seen when the earlier of the two was (uid, created_at).
    EARLIER_CREATED: Statement = "UPDATE users SET created_at = ?2 WHERE uid = ?1 AND created_at > ?2";
    /// Merge: a user's row goes once its facts moved (uid).
    DELETE_USER_ROW: Statement = "DELETE FROM users WHERE uid = ?1";
    /// A user's event count (uid).
    USER_EVENT_COUNT: Statement = "SELECT COUNT(*) FROM events WHERE uid = ?1";
    /// Merge: visitor events whose idempotency key the known user already
    /// has are the same event sent twice (visitor uid, known uid).
    DROP_DUPLICATE_EVENTS: Statement = "DELETE FROM events WHERE uid = ?1 AND dedupe IS NOT NULL AND dedupe IN \
         (SELECT k.dedupe FROM events k WHERE k.uid = ?2 AND k.dedupe IS NOT NULL)";
    /// Merge: the visitor's events become the known user's (visitor uid, known uid).
    MOVE_EVENTS: Statement = "UPDATE events SET uid = ?2 WHERE uid = ?1";
    /// Merge into a user not seen before: the visitor's assignment records
    /// become theirs (visitor, known).
    RENAME_ASSIGNMENTS: Statement = "UPDATE assignment_log SET user_id = ?2 WHERE user_id = ?1";
    /// Merge: the visitor's banner mixture, if the known user has none (visitor, known).
    MOVE_BANNERS: Statement = "INSERT INTO banner_mixtures (user_id, mixture, assigned_at, expires_at) \
         SELECT ?2, mixture, assigned_at, expires_at FROM banner_mixtures WHERE user_id = ?1 \
         ON CONFLICT (user_id) DO NOTHING";
    /// Merge: the visitor's static memberships (visitor uid, known uid).
    MOVE_MEMBERS: Statement = "INSERT INTO segment_members (segment_id, uid, added_at) \
         SELECT segment_id, ?2, added_at FROM segment_members WHERE uid = ?1 \
         ON CONFLICT (segment_id, uid) DO NOTHING";
    /// Users in creation order (after_uid, limit).
    USERS_PAGE: Statement = "SELECT uid, user_id, attributes, created_at, updated_at FROM users WHERE uid > ?1 \
         ORDER BY uid LIMIT ?2";
    /// Drops an event type (name).
    DELETE_EVENT_TYPE: ConfigWrite = "DELETE FROM event_types WHERE name = ?1";
    /// Every event type, by name.
    EVENT_TYPES: Statement = "SELECT schema, created_at, updated_at FROM event_types ORDER BY name COLLATE BINARY";
    /// A setting's value (key).
    READ_SETTING: Statement = "SELECT value FROM settings WHERE key = ?1";
    /// Sets a configuration setting (key, value, now).
    UPSERT_SETTING: ConfigWrite = "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) \
         DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";
    /// A new segment (id, name, description, kind, rules, version, now, by).
    INSERT_SEGMENT: ConfigWrite = "INSERT INTO segments (id, name, description, kind, rules, version, created_at, \
         updated_at, created_by, updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?8)";
    /// A segment version's audit row.
    INSERT_SEGMENT_VERSION: ConfigWrite = "INSERT INTO segment_versions (segment_id, version, name, description, rules, \
         created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    /// A segment's new version.
    UPDATE_SEGMENT: ConfigWrite = "UPDATE segments SET name = ?2, description = ?3, rules = ?4, version = ?5, \
         updated_at = ?6, updated_by = ?7 WHERE id = ?1";
    /// Every segment, oldest first.
    SEGMENTS: Statement = "SELECT id, name, description, kind, rules, version, created_at, updated_at, \
         created_by, updated_by FROM segments ORDER BY created_at, id COLLATE BINARY";
    /// A segment's versions, newest first.
    SEGMENT_VERSIONS: Statement = "SELECT version, name, description, rules, created_at, created_by FROM \
         segment_versions WHERE segment_id = ?1 ORDER BY version DESC";
    /// Drops a segment (id).
    DELETE_SEGMENT: ConfigWrite = "DELETE FROM segments WHERE id = ?1";
    /// Drops a segment's versions (id).
    DELETE_SEGMENT_VERSIONS: ConfigWrite = "DELETE FROM segment_versions WHERE segment_id = ?1";
    /// Drops a static segment's members (id).
    DELETE_SEGMENT_MEMBERS: ConfigWrite = "DELETE FROM segment_members WHERE segment_id = ?1";
    /// A static segment's members.
    STATIC_MEMBERS: Statement = "SELECT u.user_id FROM segment_members m JOIN users u ON u.uid = m.uid WHERE \
         m.segment_id = ?1 ORDER BY u.uid";
    /// The static segments a user is in.
    STATIC_MEMBERSHIPS: Statement = "SELECT m.segment_id FROM segment_members m JOIN users u ON u.uid = m.uid WHERE \
         u.user_id = ?1 ORDER BY m.segment_id COLLATE BINARY";
    /// A new experiment.
    INSERT_EXPERIMENT: ConfigWrite = "INSERT INTO experiments (id, key, name, status, definition, version, created_at, \
         updated_at, created_by, updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
    /// An experiment's new version.
    UPDATE_EXPERIMENT: ConfigWrite = "UPDATE experiments SET name = ?2, definition = ?3, version = ?4, updated_at = ?5, \
         updated_by = ?6 WHERE id = ?1";
    /// A lifecycle move, compare-and-set on the status (id, from, to, at).
    MOVE_EXPERIMENT: ConfigWrite = "UPDATE experiments SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2";
    /// A lifecycle move's audit row.
    INSERT_TRANSITION: ConfigWrite = "INSERT INTO experiment_transitions (experiment_id, from_status, to_status, at, by) \
         VALUES (?1, ?2, ?3, ?4, ?5)";
    /// Every experiment, oldest first.
    EXPERIMENTS: Statement = "SELECT id, key, name, status, definition, version, created_at, updated_at, \
         created_by, updated_by FROM experiments ORDER BY created_at, id COLLATE BINARY";
    /// A new API key (hashed).
    INSERT_API_KEY: ConfigWrite = "INSERT INTO api_keys (id, name, role, key_hash, created_at, revoked_at) VALUES (?1, \
         ?2, ?3, ?4, ?5, ?6)";
    /// Revokes an active key (id, now).
    REVOKE_API_KEY: ConfigWrite = "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";
    /// Every API key, oldest first.
    API_KEYS: Statement = "SELECT id, name, role, key_hash, created_at, revoked_at FROM api_keys ORDER BY \
         created_at, id COLLATE BINARY";
    /// A live-engine state value (key).
    READ_LIVE_STATE: Statement = "SELECT value FROM live_state WHERE key = ?1";
    /// Sets a live-engine state value (key, value).
    UPSERT_LIVE_STATE: Statement = "INSERT INTO live_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET \
         value = excluded.value";
    /// Removes a live-engine state value (key).
    DELETE_LIVE_STATE: Statement = "DELETE FROM live_state WHERE key = ?1";
    /// The highest change sequence number.
    LAST_CHANGE_SEQ: Statement = "SELECT COALESCE(MAX(seq), 0) FROM changes";
    /// A user's membership changes, oldest first. PostgreSQL's: SQLite's
    /// log is indexed by (segment, user) (see `migrations`).
    USER_CHANGES: Statement = "SELECT segment_id, entered, at FROM changes WHERE user_id = ?1 ORDER BY seq";
    /// Entered and exited counts per epoch-aligned bucket (segment_id, bucket ms).
    CHANGE_BUCKETS: Statement = "SELECT (at - (((at % ?2) + ?2) % ?2)) AS b, SUM(CASE WHEN entered THEN 1 ELSE 0 \
         END), SUM(CASE WHEN entered THEN 0 ELSE 1 END) FROM changes WHERE segment_id = ?1 \
         GROUP BY b ORDER BY b";
    /// A user's assignment records in order (see `packed`): (seq, at, entries).
    USER_ASSIGNMENTS: Statement = "SELECT seq, at, entries FROM assignment_log WHERE user_id = ?1 ORDER BY seq";
    /// A user's banner mixture.
    USER_BANNERS: Statement = "SELECT mixture, assigned_at, expires_at FROM banner_mixtures WHERE user_id = ?1";
    /// Assignment records after a number, in no order (after seq): the
    /// user's number now (written with the record, else looked up), their id
    /// only when it was not known at writing, the instant and the entries.
    ASSIGNMENT_LOG: Statement = "SELECT l.seq, COALESCE(l.uid, (SELECT u.uid FROM users u WHERE \
         u.user_id = l.user_id)), CASE WHEN l.uid IS NULL THEN l.user_id END, l.at, l.entries \
         FROM assignment_log l WHERE l.seq > ?1";
    /// Every user with an assignment record (once per record).
    ASSIGNED_USERS: Statement = "SELECT user_id FROM assignment_log";
    /// Every user with a banner mixture.
    MIXTURE_USERS: Statement = "SELECT user_id FROM banner_mixtures";
    /// The largest user number.
    MAX_UID: Statement = "SELECT COALESCE(MAX(uid), 0) FROM users";
    /// Users numbered after one, in number order (after_uid, limit).
    USER_IDS_AFTER: Statement = "SELECT uid, user_id FROM users WHERE uid > ?1 ORDER BY uid LIMIT ?2";
    /// Saves a user's banner mixture.
    UPSERT_BANNERS: Statement = "INSERT INTO banner_mixtures (user_id, mixture, assigned_at, expires_at) VALUES (?1, \
         ?2, ?3, ?4) ON CONFLICT (user_id) DO UPDATE SET mixture = excluded.mixture, \
         assigned_at = excluded.assigned_at, expires_at = excluded.expires_at";
    /// A new metric.
    INSERT_METRIC: ConfigWrite = "INSERT INTO metrics (key, definition, created_at, updated_at) VALUES (?1, ?2, ?3, \
         ?4)";
    /// Drops a metric (key).
    DELETE_METRIC: ConfigWrite = "DELETE FROM metrics WHERE key = ?1";
    /// Every metric, by key.
    METRICS: Statement = "SELECT key, definition, created_at, updated_at FROM metrics ORDER BY key COLLATE \
         BINARY";
    /// A new webhook.
    INSERT_WEBHOOK: ConfigWrite = "INSERT INTO webhooks (id, url, segment_ids, secret, created_at, delivered_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    /// Drops a webhook (id).
    DELETE_WEBHOOK: ConfigWrite = "DELETE FROM webhooks WHERE id = ?1";
    /// Every webhook, oldest first.
    WEBHOOKS: Statement = "SELECT id, url, segment_ids, secret, created_at, delivered_seq, failures, \
         last_error, last_attempt_at FROM webhooks ORDER BY created_at, id COLLATE BINARY";
    /// A delivery attempt: the cursor never moves back (id, seq, failures, error, at).
    RECORD_DELIVERY: Statement = "UPDATE webhooks SET delivered_seq = CASE WHEN delivered_seq > ?2 THEN delivered_seq \
         ELSE ?2 END, failures = ?3, last_error = ?4, last_attempt_at = ?5 WHERE id = ?1";
    /// A Kafka partition's progress.
    UPSERT_PARTITION: Statement = "INSERT INTO kafka_partitions (topic, partition, committed, high_water, node, \
         updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (topic, partition) DO UPDATE \
         SET committed = excluded.committed, high_water = excluded.high_water, node = \
         excluded.node, updated_at = excluded.updated_at";
    /// Every Kafka partition's progress.
    PARTITIONS: Statement = "SELECT topic, partition, committed, high_water, node, updated_at FROM \
         kafka_partitions ORDER BY topic, partition";
    /// Drops sessions that ended (now).
    DELETE_EXPIRED_SESSIONS: Statement = "DELETE FROM sessions WHERE expires_at <= ?1";
    /// How many sessions are live.
    COUNT_SESSIONS: Statement = "SELECT COUNT(*) FROM sessions";
    /// Drops the session that ends first.
    DELETE_OLDEST_SESSION: Statement = "DELETE FROM sessions WHERE token_hash = \
         (SELECT token_hash FROM sessions ORDER BY expires_at LIMIT 1)";
    /// A new session (token_hash, key_id, csrf, expires_at).
    INSERT_SESSION: Statement = "INSERT INTO sessions (token_hash, key_id, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)";
    /// A live session by token hash (token_hash, now).
    SESSION: Statement = "SELECT token_hash, key_id, csrf, expires_at FROM sessions \
         WHERE token_hash = ?1 AND expires_at > ?2";
    /// Ends a session (token_hash).
    DELETE_SESSION: Statement = "DELETE FROM sessions WHERE token_hash = ?1";
    /// One audit entry (at, key_id, action, target_kind, target_id, changes).
    INSERT_AUDIT: Statement = "INSERT INTO audit_log (at, key_id, action, target_kind, target_id, changes) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    /// Audit entries newest first (target or NULL, before seq or NULL, limit).
    AUDIT_ENTRIES: Statement = "SELECT seq, at, key_id, action, target_kind, target_id, changes FROM audit_log \
         WHERE (CAST(?1 AS TEXT) IS NULL OR target_id = ?1 OR target_kind = ?1) \
         AND (CAST(?2 AS BIGINT) IS NULL OR seq < ?2) \
         ORDER BY seq DESC LIMIT ?3";
    /// Records an erasure for the other nodes (user_id, now).
    INSERT_ERASURE: Statement = "INSERT INTO erasures (user_id, at) VALUES (?1, ?2)";
    /// A merge, followed by other nodes like an erasure (user_id, at, merged_into).
    INSERT_MERGE: Statement = "INSERT INTO erasures (user_id, at, merged_into) VALUES (?1, ?2, ?3)";
    /// Forgets erasures older than the other nodes need (before).
    PRUNE_ERASURES: Statement = "DELETE FROM erasures WHERE at < ?1";
    /// Erasures after a sequence number, oldest first (after, limit).
    ERASURES_AFTER: Statement = "SELECT seq, user_id, merged_into FROM erasures WHERE seq > ?1 ORDER BY seq LIMIT ?2";
    /// The log's largest sequence number (0 when empty).
    LAST_EVENT_SEQ: Statement = "SELECT COALESCE(MAX(seq), 0) FROM events";
    /// The newest erasure's sequence number (0 when none).
    LAST_ERASURE_SEQ: Statement = "SELECT COALESCE(MAX(seq), 0) FROM erasures";
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
        (
            "MOVE_MEMBERS",
            "a merge; other nodes learn of it from the log of departed users",
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
