//! The embedded backend: one SQLite file in the data directory.

use crate::migrations::{migrate, migrate_live};
use crate::model::*;
use crate::packed;
use crate::shared::{
    merge_into, merge_target, merged_attributes, properties_object, stays, without_nulls, Chunks,
    ADVANCE_LEASE, HOLD_LEASE,
};
use crate::writer::{Writer, WriterState, MAX_CACHED_IDS};
use crate::{rows, sql};
use crate::{
    Assignments, AuditLog, ChangeLog, Configuration, Coordination, DashboardSessions, EventLog,
    Keys, Metrics, Result, StoreError, Users, Webhooks,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_core::rules::sql::{Compiled, Param};
use stratify_core::schema::{AttributeSchema, EventTypeSchema};
use stratify_core::time::Millis;

const DB_FILE: &str = "stratify.db";
const LIVE_DB_FILE: &str = "live.db";
const LOCK_FILE: &str = "stratify.lock";
const ATTRIBUTE_SCHEMA_KEY: &str = "attribute_schema";
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReadPool>,
    /// `live.db`: the change log and the live watermark (derived state).
    live_writer: Writer,
    live_readers: Arc<ReadPool>,
    writer_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// `stratify.lock`, held shared while open and exclusive during a bulk
    /// append (see `bulk`).
    lock: std::fs::File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`, and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Open {
            path: data_dir.display().to_string(),
            source,
        })?;
        let lock = open_lock(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        if crate::bulk::ensure_event_indexes(&conn)? {
            tracing::warn!(
                "the event log's indexes were missing (an import stopped midway): built"
            );
        }
        let live_path = data_dir.join(LIVE_DB_FILE);
        let mut live = Connection::open(&live_path)?;
        configure(&live)?;
        // Append-mostly: a small cache is enough, and SQLite walks the whole
        // page cache's hash at every commit (pcache1Truncate), which with the
        // main file's large cache cost a sixth of the live writer's time.
        live.pragma_update(None, "cache_size", -16_384)?;
        live.pragma_update(None, "wal_autocheckpoint", 1_000)?;
        migrate_live(&mut live)?;
        let (writer, handle) = Writer::start(conn, "stratify-writer");
        let (live_writer, live_handle) = Writer::start(live, "stratify-live-writer");
        Ok(Self {
            writer,
            readers: Arc::new(ReadPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            live_writer,
            live_readers: Arc::new(ReadPool {
                path: live_path,
                idle: Mutex::new(Vec::new()),
            }),
            writer_threads: Mutex::new(vec![handle, live_handle]),
            lock,
        })
    }

    /// Stops accepting writes once every clone of the writer is gone and waits
    /// for the queued ones to commit. Call after the last request finished.
    pub fn close(self) {
        let handles = std::mem::take(&mut *self.writer_threads.lock());
        drop(self.writer);
        drop(self.live_writer);
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// Back from a bulk append's exclusive lock to the shared one.
    fn release_bulk_lock(&self) -> Result<()> {
        match self.lock.try_lock_shared() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => Ok(()),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Lock(e)),
        }
    }

    /// A one-column text query with one parameter.
    async fn strings(&self, sql: &'static str, param: String) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map([param], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        Self::read_from(self.readers.clone(), f).await
    }

    async fn read_live<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        Self::read_from(self.live_readers.clone(), f).await
    }

    async fn read_from<T, F>(pool: Arc<ReadPool>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(StoreError::Task)?
    }
}

/// A user's assignments, folded from their records (see `packed`).
fn held_assignments(c: &Connection, user_id: &str) -> Result<Vec<AssignmentRecord>> {
    let records = all(c, sql::USER_ASSIGNMENTS.sqlite(), [user_id], |r| {
        rows::assignment_record(r)
    })?;
    packed::fold(user_id, &records)
}

/// Every row of a query, each read by a shared mapper (`crate::rows`).
fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let out = collect(stmt.query(params)?, map);
    out
}

/// Reads every row left in `rows` with `map`.
fn collect<T>(
    mut rows: rusqlite::Rows<'_>,
    map: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// SQL functions the compiled rules call (see `stratify_core::rules::sql`).
fn register_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "stratify_version_cmp",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let (a, b) = (ctx.get::<Option<String>>(0)?, ctx.get::<Option<String>>(1)?);
            Ok(match (a, b) {
                (Some(a), Some(b)) => {
                    stratify_core::rules::version::compare(&a, &b).map(|o| o as i64)
                }
                _ => None,
            })
        },
    )?;
    // An experiment's event listing: whether packed entries hold (experiment,
    // bucket version, variant or NULL for any): 1 or 0.
    conn.create_scalar_function(
        "stratify_exposed",
        4,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let blob = ctx.get_raw(0).as_blob_or_null()?.unwrap_or_default();
            let experiment = ctx.get_raw(1).as_str_or_null()?.unwrap_or_default();
            let version = ctx.get::<i64>(2)?;
            let variant = ctx.get_raw(3).as_str_or_null()?;
            let Ok(version) = u32::try_from(version) else {
                return Ok(0);
            };
            Ok(i64::from(crate::packed::exposed(
                blob, experiment, version, variant,
            )))
        },
    )?;
    // The migration to packed assignments: (experiment, variant, bucket
    // version) rows packed into one blob.
    conn.create_aggregate_function(
        "stratify_pack",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        Pack,
    )?;
    Ok(())
}

struct Pack;

impl rusqlite::functions::Aggregate<Vec<u8>, Vec<u8>> for Pack {
    fn init(&self, _: &mut rusqlite::functions::Context<'_>) -> rusqlite::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn step(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: &mut Vec<u8>,
    ) -> rusqlite::Result<()> {
        let experiment = ctx.get::<String>(0)?;
        let variant = ctx.get::<String>(1)?;
        let bucket_version = u32::try_from(ctx.get::<i64>(2)?).unwrap_or(u32::MAX);
        crate::packed::push(
            acc,
            crate::packed::Entry {
                experiment: &experiment,
                variant: &variant,
                bucket_version,
            },
        )
        .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    }

    fn finalize(
        &self,
        _: &mut rusqlite::functions::Context<'_>,
        acc: Option<Vec<u8>>,
    ) -> rusqlite::Result<Vec<u8>> {
        Ok(acc.unwrap_or_default())
    }
}

fn to_sql(p: &Param) -> rusqlite::types::Value {
    match p {
        Param::Int(i) => rusqlite::types::Value::Integer(*i),
        Param::Real(f) => rusqlite::types::Value::Real(*f),
        Param::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

fn member_ids(w: &mut WriterState, users: &[UserId], now: Millis) -> Result<Vec<i64>> {
    users.iter().map(|u| w.uid(u.as_str(), now)).collect()
}

fn add_member_rows(
    w: &mut WriterState,
    segment_id: &str,
    uids: &[i64],
    now: Millis,
) -> Result<u64> {
    let mut insert = w.conn.prepare_cached(
        "INSERT OR IGNORE INTO segment_members (segment_id, uid, added_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut added = 0;
    for uid in uids {
        added += insert.execute(params![segment_id, uid, now])? as u64;
    }
    Ok(added)
}

/// A constraint violation is `Conflict` on `what` (e.g. a name taken).
fn conflict(e: rusqlite::Error, what: String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what)
        }
        other => other.into(),
    }
}

/// Opens `stratify.lock` in the data directory and takes it shared: refused
/// while another process runs a bulk append there.
fn open_lock(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let open_error = |source| StoreError::Open {
        path: data_dir.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(open_error)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(open_error(std::io::Error::other(
            "another process is importing into it (stratify import); try again when it ends",
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(open_error(e)),
    }
}

fn configure(conn: &Connection) -> Result<()> {
    register_functions(conn)?;
    // WAL: readers never block the writer. FULL: the WAL is fsynced at every
    // commit, so an acknowledged write survives power loss, not just a crash.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "busy_timeout", 10_000)?;
    // Random-key index inserts dirty pages all over the indexes; the cache
    // keeps the hot ones (the users' and assignments' indexes, which first
    // servings touch) and rare checkpoints keep the writer from copying the
    // WAL back after every group. Pages past it are read again from the
    // kernel's page cache, which is shared and reclaimable where this is
    // the process's own memory. 128 MiB: 256 MiB was an eighth of the
    // resident memory at a million users (scripts/bench-scale.sh), and 64 MiB
    // slowed the writer enough to show in the serving figures.
    conn.pragma_update(None, "cache_size", -131_072)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.pragma_update(None, "busy_timeout", 10_000)?;
        // Readers mostly scan (results, populations): a small cache each.
        conn.pragma_update(None, "cache_size", -8_192)?;
        register_functions(&conn)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

impl WriterState {
    /// The interned id of a user, creating the user if unknown.
    fn uid(&mut self, user_id: &str, now: Millis) -> Result<i64> {
        if let Some(&uid) = self.uids.get(user_id) {
            return Ok(uid);
        }
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO users (user_id, created_at, updated_at) VALUES (?1, ?2, ?2) \
             ON CONFLICT(user_id) DO NOTHING",
        )?;
        let uid = if insert.execute(params![user_id, now])? == 1 {
            // A new id may be one merged into another user: the job fails
            // (its savepoint undoes the insert) and the caller resolves it
            // and writes again.
            if let Some(target) = self.alias_target(user_id)? {
                return Err(StoreError::UsersMoved(vec![(
                    user_id.to_owned(),
                    Some(target),
                )]));
            }
            self.conn.last_insert_rowid()
        } else {
            self.conn
                .prepare_cached("SELECT uid FROM users WHERE user_id = ?1")?
                .query_row([user_id], |r| r.get(0))?
        };
        if self.uids.len() >= MAX_CACHED_IDS {
            self.uids.clear();
        }
        self.uids.insert(user_id.to_owned(), uid);
        Ok(uid)
    }

    /// Creates a user with these attributes (nulls dropped) unless the id is
    /// taken; returns whether it was created. Like [`WriterState::uid`], an
    /// id merged into another user fails the job.
    fn insert_user(&mut self, user_id: &str, attributes: &Attributes, now: Millis) -> Result<bool> {
        let mut fresh = Attributes::new();
        merge_into(&mut fresh, attributes);
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO users (user_id, attributes, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?3) ON CONFLICT(user_id) DO NOTHING",
            )?
            .execute(params![user_id, serde_json::to_string(&fresh)?, now])?;
        if inserted == 0 {
            return Ok(false);
        }
        if let Some(target) = self.alias_target(user_id)? {
            return Err(StoreError::UsersMoved(vec![(
                user_id.to_owned(),
                Some(target),
            )]));
        }
        if self.uids.len() >= MAX_CACHED_IDS {
            self.uids.clear();
        }
        self.uids
            .insert(user_id.to_owned(), self.conn.last_insert_rowid());
        Ok(true)
    }

    fn alias_target(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(sql::ALIAS_TARGET.sqlite())?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// A user's assignments, folded from their records (see `packed`).
    fn held_assignments(&self, user_id: &str) -> Result<Vec<AssignmentRecord>> {
        held_assignments(&self.conn, user_id)
    }

    /// Appends one user's assignment records (one per instant), numbered
    /// from `seq` on (the caller stores the last number taken).
    fn append_assignments(
        &self,
        user_id: &str,
        assignments: &[&AssignmentRecord],
        seq: &mut i64,
    ) -> Result<()> {
        if assignments.is_empty() {
            return Ok(());
        }
        let uid = self.uid_of(user_id)?;
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO assignment_log (seq, user_id, uid, at, entries) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (at, entries) in packed::pack(assignments)? {
            *seq += 1;
            insert.execute(params![*seq, user_id, uid, at, entries])?;
        }
        Ok(())
    }

    /// The last assignment number taken. One writer: numbers taken in its
    /// transaction are committed in order.
    fn assignment_seq(&self) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq FROM assignment_seq WHERE one = 1")?
            .query_row([], |r| r.get(0))?)
    }

    fn set_assignment_seq(&self, seq: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE assignment_seq SET seq = ?1 WHERE one = 1")?
            .execute([seq])?;
        Ok(())
    }

    fn uid_of(&self, user_id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT uid FROM users WHERE user_id = ?1")?
            .query_row([user_id], |r| r.get(0))
            .optional()?)
    }

    /// Merges a visitor into a known user (see [`Users::identify`]).
    fn identify(&mut self, anonymous: &str, known: &str, now: Millis) -> Result<Identified> {
        let into = match merge_target(
            anonymous,
            known,
            self.alias_target(anonymous)?,
            self.alias_target(known)?,
        ) {
            Ok(into) => into,
            Err(answer) => return Ok(answer),
        };
        let known = into.as_str();
        let visitor_uid = self.uid_of(anonymous)?;
        let known_uid = self.uid_of(known)?;
        let exec =
            |w: &Self, statement: &sql::Statement, args: &[&dyn rusqlite::ToSql]| -> Result<u64> {
                Ok(w.conn.prepare_cached(statement.sqlite())?.execute(args)? as u64)
            };
        let mut merge = Merge {
            anonymous_uid: visitor_uid,
            known_uid: 0,
            user: UserRecord::default(),
            events_moved: 0,
            duplicates_dropped: 0,
            assignments_moved: 0,
            aliases_moved: all(&self.conn, sql::USER_ALIASES.sqlite(), [anonymous], |r| {
                Ok(r.get(0)?)
            })?,
        };
        match (visitor_uid, known_uid) {
            (Some(v), None) => {
                // The known id is new: the visitor's row is renamed.
                exec(self, &sql::RENAME_USER, &[&v, &known, &now])?;
                merge.known_uid = v;
                merge.events_moved =
                    self.conn
                        .prepare_cached(sql::USER_EVENT_COUNT.sqlite())?
                        .query_row([v], |r| r.get::<_, i64>(0))? as u64;
                merge.assignments_moved = self.held_assignments(anonymous)?.len() as u64;
                exec(self, &sql::RENAME_ASSIGNMENTS, &[&anonymous, &known])?;
                exec(self, &sql::MOVE_BANNERS, &[&anonymous, &known])?;
                exec(self, &sql::DELETE_USER_BANNERS, &[&anonymous])?;
            }
            (Some(v), Some(k)) => {
                merge.known_uid = k;
                merge.duplicates_dropped = exec(self, &sql::DROP_DUPLICATE_EVENTS, &[&v, &k])?;
                merge.events_moved = exec(self, &sql::MOVE_EVENTS, &[&v, &k])?;
                let visitor = self.held_assignments(anonymous)?;
                if !visitor.is_empty() {
                    let (person, moved) =
                        packed::merged(visitor, self.held_assignments(known)?, known);
                    merge.assignments_moved = moved;
                    exec(self, &sql::DELETE_USER_ASSIGNMENTS, &[&anonymous])?;
                    exec(self, &sql::DELETE_USER_ASSIGNMENTS, &[&known])?;
                    let mut seq = self.assignment_seq()?;
                    let refs: Vec<&AssignmentRecord> = person.iter().collect();
                    self.append_assignments(known, &refs, &mut seq)?;
                    self.set_assignment_seq(seq)?;
                }
                exec(self, &sql::MOVE_BANNERS, &[&anonymous, &known])?;
                exec(self, &sql::DELETE_USER_BANNERS, &[&anonymous])?;
                exec(self, &sql::MOVE_MEMBERS, &[&v, &k])?;
                exec(self, &sql::DELETE_USER_MEMBERSHIPS, &[&v])?;
                let visitor = self.user_row(anonymous)?.unwrap_or_default();
                let person = self.user_row(known)?.unwrap_or_default();
                let attributes = merged_attributes(visitor.attributes, person.attributes);
                self.save_attributes(known, &attributes, now)?;
                exec(self, &sql::EARLIER_CREATED, &[&k, &visitor.created_at])?;
                exec(self, &sql::DELETE_USER_ROW, &[&v])?;
            }
            (None, known_uid) => {
                merge.known_uid = match known_uid {
                    Some(k) => k,
                    None => self.uid(known, now)?,
                };
            }
        }
        exec(self, &sql::REPOINT_ALIASES, &[&anonymous, &known])?;
        exec(self, &sql::INSERT_ALIAS, &[&anonymous, &known, &now])?;
        exec(
            self,
            &sql::PRUNE_ERASURES,
            &[&(now - crate::ERASURE_MEMORY_MS)],
        )?;
        exec(self, &sql::INSERT_MERGE, &[&anonymous, &now, &known])?;
        self.uids.remove(anonymous);
        self.uids.remove(known);
        merge.user = self
            .user_row(known)?
            .ok_or_else(|| StoreError::Corrupt("user vanished during a merge".into()))?;
        Ok(Identified::Merged(Box::new(merge)))
    }

    fn name_id(&mut self, name: &str) -> Result<i64> {
        if let Some(&id) = self.name_ids.get(name) {
            return Ok(id);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO event_names (name) VALUES (?1) ON CONFLICT(name) DO NOTHING",
            )?
            .execute([name])?;
        let id = self
            .conn
            .prepare_cached("SELECT id FROM event_names WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        if self.name_ids.len() >= MAX_CACHED_IDS {
            self.name_ids.clear();
        }
        self.name_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Appends a batch; `properties` holds each event's serialised properties.
    fn append_batch(
        &mut self,
        batch: &EventBatch,
        properties: &[Option<String>],
    ) -> Result<(Vec<Appended>, Vec<i64>)> {
        let (now, source) = (batch.report.now, batch.report.source.code());
        // Appended in (user, time) order: the events of one batch are one
        // atomic write, so their relative sequence is ours to choose, and this
        // order turns random inserts into both per-user indexes into runs.
        let mut order = Vec::with_capacity(batch.events.len());
        for (i, event) in batch.events.iter().enumerate() {
            let uid = self.uid(event.user_id.as_str(), now)?;
            let name_id = self.name_id(event.name.as_str())?;
            order.push((uid, event.timestamp, i, name_id));
        }
        let uids: Vec<i64> = order.iter().map(|o| o.0).collect();
        order.sort_unstable();
        let mut out = vec![Appended::Duplicate; batch.events.len()];
        let (mut accepted, mut duplicates, mut last) = (0u64, 0u64, None::<Millis>);
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO events (uid, name_id, ts, event_id, dedupe, properties, source, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut stored_id = self.conn.prepare_cached(sql::EVENT_BY_DEDUPE.sqlite())?;
        if self.bulk.as_ref().is_some_and(|b| b.stale) {
            self.bulk = Some(crate::bulk::BulkKeys::read(&self.conn)?);
        }
        for (uid, ts, i, name_id) in order {
            let event = &batch.events[i];
            let event_id = event.event_id.as_ref().map(|e| e.as_str());
            let props = properties[i].as_deref();
            let mut appended = Appended::Duplicate;
            if let Some(bulk) = &mut self.bulk {
                // The indexes are dropped: the keys in memory decide.
                let mut key = event.dedupe_key;
                let stored = key.and_then(|k| bulk.get(uid, k));
                let same = match (stored, event_id) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(seq), Some(id)) => {
                        // A 64-bit collision of two event ids must not lose one.
                        let stored: Option<String> = self
                            .conn
                            .prepare_cached("SELECT event_id FROM events WHERE seq = ?1")?
                            .query_row([seq], |r| r.get(0))?;
                        stored.as_deref() == Some(id)
                    }
                };
                if !same {
                    if stored.is_some() {
                        key = None; // the collided event is kept, unkeyed
                    }
                    insert.execute(params![uid, name_id, ts, event_id, key, props, source, now])?;
                    let seq = self.conn.last_insert_rowid();
                    if let Some(k) = key {
                        bulk.insert(uid, k, seq);
                    }
                    appended = Appended::New(seq);
                }
            } else if insert.execute(params![
                uid,
                name_id,
                ts,
                event_id,
                event.dedupe_key,
                props,
                source,
                now
            ])? == 1
            {
                appended = Appended::New(self.conn.last_insert_rowid());
            } else if let (Some(id), Some(key)) = (event_id, event.dedupe_key) {
                // The key was seen before for this user. Make sure the stored
                // id is the same text: a 64-bit hash collision must not lose
                // an event.
                let stored: Option<String> = stored_id
                    .query_row(params![uid, key], |r| r.get(0))
                    .optional()?
                    .flatten();
                if stored.as_deref() != Some(id) {
                    insert.execute(params![
                        uid,
                        name_id,
                        ts,
                        id,
                        None::<i64>,
                        props,
                        source,
                        now
                    ])?;
                    appended = Appended::New(self.conn.last_insert_rowid());
                }
            }
            match appended {
                Appended::New(_) => {
                    accepted += 1;
                    last = Some(last.map_or(ts, |l: Millis| l.max(ts)));
                }
                Appended::Duplicate => duplicates += 1,
            }
            out[i] = appended;
        }
        drop((insert, stored_id));
        self.record(&batch.report, accepted, duplicates, last)?;
        Ok((out, uids))
    }

    fn record(
        &mut self,
        report: &IngestReport,
        accepted: u64,
        duplicates: u64,
        last_event_at: Option<Millis>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO ingest_status (source, received, accepted, duplicates, rejected, last_event_at, \
                 last_error, last_error_at, updated_at, forwarded) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT(source) DO UPDATE SET received = received + excluded.received, \
                 accepted = accepted + excluded.accepted, duplicates = duplicates + excluded.duplicates, \
                 rejected = rejected + excluded.rejected, forwarded = forwarded + excluded.forwarded, \
                 last_event_at = max(coalesce(last_event_at, 0), coalesce(excluded.last_event_at, 0)), \
                 last_error = coalesce(excluded.last_error, last_error), \
                 last_error_at = coalesce(excluded.last_error_at, last_error_at), updated_at = excluded.updated_at",
            )?
            .execute(params![
                report.source.code(),
                report.received as i64,
                accepted as i64,
                duplicates as i64,
                report.rejected as i64,
                last_event_at,
                report.last_error,
                report.last_error.as_ref().map(|_| report.now),
                report.now,
                report.forwarded as i64,
            ])?;
        Ok(())
    }

    fn user_row(&self, user_id: &str) -> Result<Option<UserRecord>> {
        self.conn
            .prepare_cached(sql::USER_BY_ID.sqlite())?
            .query_row([user_id], user_from_row)
            .optional()?
            .map(finish_user)
            .transpose()
    }

    fn save_attributes(
        &mut self,
        user_id: &str,
        attributes: &Attributes,
        now: Millis,
    ) -> Result<()> {
        self.uid(user_id, now)?;
        self.conn
            .prepare_cached("UPDATE users SET attributes = ?2, updated_at = ?3 WHERE user_id = ?1")?
            .execute(params![user_id, serde_json::to_string(attributes)?, now])?;
        Ok(())
    }
}

/// The columns every event read selects, in [`event_row`] order, and their tables.
const EVENT_COLUMNS: &str =
    "e.seq, e.event_id, u.user_id, n.name, e.ts, e.properties, e.received_at, e.source";
const EVENT_FROM: &str =
    "FROM events e JOIN users u ON u.uid = e.uid JOIN event_names n ON n.id = e.name_id";

type EventRow = (
    i64,
    Option<String>,
    String,
    String,
    Millis,
    Option<String>,
    Millis,
    i64,
);

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn events(rows: impl Iterator<Item = rusqlite::Result<EventRow>>) -> Result<Vec<StoredEvent>> {
    rows.map(|row| {
        let (seq, event_id, user_id, name, timestamp, props, received_at, source) = row?;
        Ok(StoredEvent {
            properties: properties(seq, props)?,
            seq,
            event_id,
            user_id,
            name,
            timestamp,
            received_at,
            source: Source::from_code(source),
        })
    })
    .collect()
}

/// An event's stored properties (JSON text): an object, or nothing.
fn properties(seq: i64, text: Option<String>) -> Result<Option<serde_json::Map<String, Value>>> {
    properties_object(
        seq,
        text.map(|t| serde_json::from_str::<Value>(&t))
            .transpose()?,
    )
}

type RawUser = (String, String, Millis, Millis);

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawUser> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn finish_user((user_id, attributes, created_at, updated_at): RawUser) -> Result<UserRecord> {
    Ok(UserRecord {
        user_id,
        attributes: serde_json::from_str(&attributes)?,
        created_at,
        updated_at,
    })
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn begin_bulk_append(&self) -> Result<bool> {
        match self.lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!("bulk append declined: another process has the store open");
                return Ok(false);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::Lock(e)),
        }
        let began = self
            .writer
            .write(|w| {
                if w.bulk.is_none() {
                    w.bulk = Some(crate::bulk::begin(&w.conn)?);
                }
                Ok(())
            })
            .await;
        if began.is_err() {
            self.release_bulk_lock()?;
        }
        began.map(|()| true)
    }

    async fn end_bulk_append(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let built = self
            .writer
            .write(|w| {
                if w.bulk.take().is_none() {
                    return Ok(false);
                }
                crate::bulk::ensure_event_indexes(&w.conn)
            })
            .await?;
        if built {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "event log indexes built"
            );
        }
        self.release_bulk_lock()
    }

    async fn append_events(&self, batch: EventBatch) -> Result<Vec<Appended>> {
        // Serialised here, on the caller's thread: the writer is the bottleneck.
        let properties = batch
            .events
            .iter()
            .map(|e| e.properties.as_ref().map(serde_json::to_string).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let hook = batch.on_commit.clone();
        let (appended, _) = self
            .writer
            .write_then(
                move |w| w.append_batch(&batch, &properties),
                move |(appended, uids): &(Vec<Appended>, Vec<i64>)| {
                    if let Some(hook) = hook {
                        (hook.0)(appended, uids);
                    }
                },
            )
            .await?;
        Ok(appended)
    }

    async fn query_events(&self, q: EventQuery) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let mut sql = format!("SELECT {EVENT_COLUMNS} {EVENT_FROM} WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut bind = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
                args.push(v);
                sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
            };
            if let Some(u) = q.user_id {
                bind(&mut sql, " AND u.user_id = ?", u.into());
            }
            if let Some(n) = q.name {
                bind(&mut sql, " AND n.name = ?", n.into());
            }
            if let Some(f) = q.from {
                bind(&mut sql, " AND e.ts >= ?", f.into());
            }
            if let Some(t) = q.to {
                bind(&mut sql, " AND e.ts < ?", t.into());
            }
            if let Some(a) = q.after_seq {
                let clause = if q.newest_first {
                    " AND e.seq < ?"
                } else {
                    " AND e.seq > ?"
                };
                bind(&mut sql, clause, a.into());
            }
            if let Some(x) = q.experiment {
                bind(
                    &mut sql,
                    " AND EXISTS (SELECT 1 FROM assignment_log a WHERE a.user_id = u.user_id \
                     AND a.at <= e.ts AND stratify_exposed(a.entries, ?",
                    x.experiment_id.into(),
                );
                bind(&mut sql, ", ?", i64::from(x.bucket_version).into());
                let variant = x.variant.map_or(rusqlite::types::Value::Null, Into::into);
                bind(&mut sql, ", ?) = 1)", variant);
            }
            let order = if q.newest_first {
                " ORDER BY e.seq DESC LIMIT ?"
            } else {
                " ORDER BY e.seq LIMIT ?"
            };
            bind(&mut sql, order, i64::from(q.limit).into());
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), event_row)?;
            events(rows)
        })
        .await
    }

    async fn ingest_status(&self) -> Result<Vec<IngestStatus>> {
        self.read(|c| {
            all(c, sql::INGEST_STATUS.sqlite(), [], |r| {
                rows::ingest_status(r)
            })
        })
        .await
    }

    async fn record_ingest(&self, report: IngestReport) -> Result<()> {
        self.writer
            .write(move |w| w.record(&report, 0, 0, None))
            .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.read(|c| {
            let users: i64 = c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            let events: i64 = c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
            Ok(Counts {
                users: users as u64,
                events: events as u64,
            })
        })
        .await
    }

    async fn user_events(
        &self,
        user_id: &UserId,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let user_id = user_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} {EVENT_FROM} WHERE u.user_id = ?1 AND e.ts <= ?2 ORDER BY e.ts, e.seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![user_id, until, limit], event_row)?;
            events(rows)
        })
        .await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c.prepare_cached(sql::LAST_EVENT_SEQ.sqlite())?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn scan_events(&self, after_seq: i64, limit: u32) -> Result<Vec<RawEvent>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::SCAN_EVENTS.sqlite())?;
            let rows = stmt.query_map(params![after_seq, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            let mut out = Vec::with_capacity(limit as usize);
            for row in rows {
                let (seq, uid, name_id, timestamp, props, event_id, received_at) = row?;
                let properties = properties(seq, props)?;
                out.push(RawEvent {
                    seq,
                    uid,
                    name_id,
                    timestamp,
                    properties,
                    event_id,
                    received_at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn event_names(&self) -> Result<Vec<(i64, String)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql::EVENT_NAMES.sqlite())?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[async_trait]
impl Users for SqliteStore {
    fn dialect(&self) -> stratify_core::rules::sql::Dialect {
        stratify_core::rules::sql::Dialect::Sqlite
    }

    async fn write_user(
        &self,
        user_id: UserId,
        attributes: Attributes,
        mode: WriteMode,
        now: Millis,
    ) -> Result<UserRecord> {
        self.writer
            .write(move |w| {
                let existing = w.user_row(user_id.as_str())?;
                let merged = match (mode, existing) {
                    (WriteMode::Create, Some(_)) => {
                        return Err(StoreError::Conflict(format!("user '{user_id}'")))
                    }
                    (WriteMode::Merge, None) => {
                        return Err(StoreError::NotFound(format!("user '{user_id}'")))
                    }
                    (WriteMode::Merge, Some(mut current)) => {
                        merge_into(&mut current.attributes, &attributes);
                        current.attributes
                    }
                    (_, _) => without_nulls(attributes),
                };
                w.save_attributes(user_id.as_str(), &merged, now)?;
                w.user_row(user_id.as_str())?
                    .ok_or_else(|| StoreError::Corrupt("user vanished during a write".into()))
            })
            .await
    }

    async fn merge_users(&self, users: Arc<Vec<(UserId, Attributes)>>, now: Millis) -> Result<u64> {
        self.writer
            .write(move |w| {
                let mut changed = 0;
                for (user_id, attributes) in users.iter() {
                    // A new user is one insert; only a known one is read and merged.
                    if !w.uids.contains_key(user_id.as_str())
                        && w.insert_user(user_id.as_str(), attributes, now)?
                    {
                        changed += 1;
                        continue;
                    }
                    let existing = w.user_row(user_id.as_str())?.map(|u| u.attributes);
                    let mut merged = existing.clone().unwrap_or_default();
                    merge_into(&mut merged, attributes);
                    if existing.as_ref() != Some(&merged) {
                        w.save_attributes(user_id.as_str(), &merged, now)?;
                        changed += 1;
                    }
                }
                Ok(changed)
            })
            .await
    }

    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        let user_id = user_id.to_string();
        self.read(move |c| {
            c.prepare_cached(sql::USER_BY_ID.sqlite())?
                .query_row([user_id], user_from_row)
                .optional()?
                .map(finish_user)
                .transpose()
        })
        .await
    }

    async fn delete_user(&self, user_id: &UserId, now: Millis) -> Result<bool> {
        let user_id = user_id.to_string();
        let erased = user_id.clone();
        let existed = self
            .writer
            .write(move |w| {
                let uid: Option<i64> = w
                    .conn
                    .prepare_cached("SELECT uid FROM users WHERE user_id = ?1")?
                    .query_row([&user_id], |r| r.get(0))
                    .optional()?;
                let Some(uid) = uid else { return Ok(false) };
                w.conn
                    .prepare_cached(sql::DELETE_USER_EVENTS.sqlite())?
                    .execute([uid])?;
                w.conn
                    .prepare_cached(sql::DELETE_USER_MEMBERSHIPS.sqlite())?
                    .execute([uid])?;
                w.conn
                    .prepare_cached("DELETE FROM users WHERE uid = ?1")?
                    .execute([uid])?;
                w.conn
                    .prepare_cached(sql::DELETE_USER_ASSIGNMENTS.sqlite())?
                    .execute([&user_id])?;
                w.conn
                    .prepare_cached(sql::DELETE_USER_BANNERS.sqlite())?
                    .execute([&user_id])?;
                let aliases: Vec<String> =
                    all(&w.conn, sql::USER_ALIASES.sqlite(), [&user_id], |r| {
                        Ok(r.get(0)?)
                    })?;
                w.conn
                    .prepare_cached(sql::DELETE_USER_ALIASES.sqlite())?
                    .execute([&user_id])?;
                w.conn
                    .prepare_cached(sql::PRUNE_ERASURES.sqlite())?
                    .execute([now - crate::ERASURE_MEMORY_MS])?;
                for gone in std::iter::once(&user_id).chain(&aliases) {
                    w.conn
                        .prepare_cached(sql::INSERT_ERASURE.sqlite())?
                        .execute(params![gone, now])?;
                }
                w.uids.remove(&user_id);
                Ok(true)
            })
            .await?;
        if !existed {
            return Ok(false);
        }
        // Their membership history goes too (derived state, separate file).
        self.live_writer
            .write(move |w| {
                w.conn
                    .prepare_cached(
                        "DELETE FROM change_log WHERE segment IN (SELECT key FROM segment_keys) AND user_id = ?1",
                    )?
                    .execute([&erased])?;
                Ok(true)
            })
            .await
    }

    async fn select_users(
        &self,
        predicate: Compiled,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<String>, u64)> {
        self.read(move |c| {
            let mut args: Vec<rusqlite::types::Value> =
                predicate.params.iter().map(to_sql).collect();
            let total: i64 = c.query_row(
                &format!(
                    "{}SELECT COUNT(*) FROM users u WHERE {}",
                    predicate.with, predicate.sql
                ),
                rusqlite::params_from_iter(args.iter()),
                |r| r.get(0),
            )?;
            let mut sql = format!(
                "{}SELECT u.user_id FROM users u WHERE {}",
                predicate.with, predicate.sql
            );
            if let Some(a) = after {
                args.push(rusqlite::types::Value::Text(a));
                sql.push_str(&format!(" AND u.user_id > ?{}", args.len()));
            }
            args.push(rusqlite::types::Value::Integer(i64::from(limit)));
            sql.push_str(&format!(" ORDER BY u.user_id LIMIT ?{}", args.len()));
            let mut stmt = c.prepare(&sql)?;
            let ids = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok((ids, total as u64))
        })
        .await
    }

    async fn erasures_after(&self, after: i64, limit: u32) -> Result<Vec<UserGone>> {
        self.read(move |c| {
            all(
                c,
                sql::ERASURES_AFTER.sqlite(),
                params![after, limit],
                |r| {
                    Ok(UserGone {
                        seq: r.get(0)?,
                        user_id: r.get(1)?,
                        merged_into: r.get(2)?,
                    })
                },
            )
        })
        .await
    }

    async fn identify(
        &self,
        anonymous: &UserId,
        known: &UserId,
        now: Millis,
    ) -> Result<Identified> {
        let (anonymous, known) = (anonymous.to_string(), known.to_string());
        self.writer
            .write(move |w| w.identify(&anonymous, &known, now))
            .await
    }

    async fn aliases(&self) -> Result<Vec<(String, String)>> {
        self.read(|c| all(c, sql::ALIASES.sqlite(), [], |r| Ok((r.get(0)?, r.get(1)?))))
            .await
    }

    async fn resolve_aliases(&self, ids: Vec<String>) -> Result<Vec<(String, String)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::ALIAS_TARGET.sqlite())?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(target) = stmt.query_row([&id], |r| r.get(0)).optional()? {
                    out.push((id, target));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn last_erasure_seq(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c.prepare_cached(sql::LAST_ERASURE_SEQ.sqlite())?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn derived_stamp(&self) -> Result<Option<DerivedStamp>> {
        self.read(|c| {
            Ok(Some(
                c.prepare_cached("SELECT store_id, n FROM derived_generation")?
                    .query_row([], |r| {
                        Ok(DerivedStamp {
                            store_id: r.get(0)?,
                            generation: r.get(1)?,
                        })
                    })?,
            ))
        })
        .await
    }

    async fn user_ids_after(&self, after_uid: i64, limit: u32) -> Result<Vec<(i64, String)>> {
        self.read(move |c| {
            all(
                c,
                sql::USER_IDS_AFTER.sqlite(),
                params![after_uid, limit],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    async fn users_page(&self, after_uid: i64, limit: u32) -> Result<Vec<(i64, UserRecord)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::USERS_PAGE.sqlite())?;
            let rows = stmt.query_map(params![after_uid, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (uid, raw) = row?;
                out.push((uid, finish_user(raw)?));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Configuration for SqliteStore {
    async fn put_event_type(
        &self,
        schema: EventTypeSchema,
        now: Millis,
    ) -> Result<EventTypeRecord> {
        self.writer
            .write(move |w| {
                let json = serde_json::to_string(&schema)?;
                w.conn
                    .prepare_cached(
                        "INSERT INTO event_types (name, schema, created_at, updated_at) VALUES (?1, ?2, ?3, ?3) \
                         ON CONFLICT(name) DO UPDATE SET schema = excluded.schema, updated_at = excluded.updated_at",
                    )?
                    .execute(params![schema.name, json, now])?;
                let created_at = w
                    .conn
                    .prepare_cached("SELECT created_at FROM event_types WHERE name = ?1")?
                    .query_row([&schema.name], |r| r.get(0))?;
                Ok(EventTypeRecord { schema, created_at, updated_at: now })
            })
            .await
    }

    async fn list_event_types(&self) -> Result<Vec<EventTypeRecord>> {
        self.read(|c| all(c, sql::EVENT_TYPES.sqlite(), [], |r| rows::event_type(r)))
            .await
    }

    async fn delete_event_type(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.writer
            .write(move |w| {
                Ok(w.conn
                    .prepare_cached(sql::DELETE_EVENT_TYPE.sqlite())?
                    .execute([name])?
                    == 1)
            })
            .await
    }

    async fn put_attribute_schema(&self, schema: AttributeSchema, now: Millis) -> Result<()> {
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::UPSERT_SETTING.sqlite())?
                    .execute(params![
                        ATTRIBUTE_SCHEMA_KEY,
                        serde_json::to_string(&schema)?,
                        now
                    ])?;
                Ok(())
            })
            .await
    }

    async fn attribute_schema(&self) -> Result<AttributeSchema> {
        self.read(|c| {
            let value: Option<String> = c
                .prepare_cached(sql::READ_SETTING.sqlite())?
                .query_row([ATTRIBUTE_SCHEMA_KEY], |r| r.get(0))
                .optional()?;
            Ok(match value {
                Some(v) => serde_json::from_str(&v)?,
                None => AttributeSchema::default(),
            })
        })
        .await
    }

    async fn create_segment(&self, seg: SegmentRecord, members: Vec<UserId>) -> Result<()> {
        self.writer
            .write(move |w| {
                let rules = seg.rules.as_ref().map(serde_json::to_string).transpose()?;
                w.conn
                    .prepare_cached(sql::INSERT_SEGMENT.sqlite())?
                    .execute(params![
                        seg.id,
                        seg.name,
                        seg.description,
                        seg.kind,
                        rules,
                        seg.version,
                        seg.created_at,
                        seg.created_by
                    ])
                    .map_err(|e| conflict(e, format!("a segment named '{}'", seg.name)))?;
                w.conn
                    .prepare_cached(sql::INSERT_SEGMENT_VERSION.sqlite())?
                    .execute(params![
                        seg.id,
                        seg.version,
                        seg.name,
                        seg.description,
                        rules,
                        seg.created_at,
                        seg.created_by
                    ])?;
                let uids = member_ids(w, &members, seg.created_at)?;
                add_member_rows(w, &seg.id, &uids, seg.created_at)?;
                Ok(())
            })
            .await
    }

    async fn update_segment(&self, seg: SegmentRecord) -> Result<()> {
        self.writer
            .write(move |w| {
                let rules = seg.rules.as_ref().map(serde_json::to_string).transpose()?;
                let changed = w
                    .conn
                    .prepare_cached(sql::UPDATE_SEGMENT.sqlite())?
                    .execute(params![
                        seg.id,
                        seg.name,
                        seg.description,
                        rules,
                        seg.version,
                        seg.updated_at,
                        seg.updated_by
                    ])
                    .map_err(|e| conflict(e, format!("a segment named '{}'", seg.name)))?;
                if changed == 0 {
                    return Err(StoreError::NotFound(format!("segment '{}'", seg.id)));
                }
                w.conn
                    .prepare_cached(sql::INSERT_SEGMENT_VERSION.sqlite())?
                    .execute(params![
                        seg.id,
                        seg.version,
                        seg.name,
                        seg.description,
                        rules,
                        seg.updated_at,
                        seg.updated_by
                    ])?;
                Ok(())
            })
            .await
    }

    async fn segments(&self) -> Result<Vec<SegmentRecord>> {
        self.read(|c| all(c, sql::SEGMENTS.sqlite(), [], |r| rows::segment(r)))
            .await
    }

    async fn segment_versions(&self, id: &str) -> Result<Vec<SegmentVersion>> {
        let id = id.to_owned();
        self.read(move |c| {
            all(c, sql::SEGMENT_VERSIONS.sqlite(), [id], |r| {
                rows::segment_version(r)
            })
        })
        .await
    }

    async fn delete_segment(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.writer
            .write(move |w| {
                let n = w
                    .conn
                    .prepare_cached(sql::DELETE_SEGMENT.sqlite())?
                    .execute([&id])?;
                w.conn
                    .prepare_cached(sql::DELETE_SEGMENT_VERSIONS.sqlite())?
                    .execute([&id])?;
                w.conn
                    .prepare_cached(sql::DELETE_SEGMENT_MEMBERS.sqlite())?
                    .execute([&id])?;
                Ok(n == 1)
            })
            .await
    }

    async fn add_members(&self, segment_id: &str, users: Vec<UserId>, now: Millis) -> Result<u64> {
        let segment_id = segment_id.to_owned();
        self.writer
            .write(move |w| {
                let uids = member_ids(w, &users, now)?;
                add_member_rows(w, &segment_id, &uids, now)
            })
            .await
    }

    async fn remove_members(&self, segment_id: &str, users: Vec<UserId>) -> Result<u64> {
        let segment_id = segment_id.to_owned();
        self.writer
            .write(move |w| {
                let mut delete = w.conn.prepare_cached(
                    "DELETE FROM segment_members WHERE segment_id = ?1 AND uid = (SELECT uid FROM users WHERE user_id = ?2)",
                )?;
                let mut removed = 0;
                for u in &users {
                    removed += delete.execute(params![segment_id, u.as_str()])? as u64;
                }
                Ok(removed)
            })
            .await
    }

    async fn replace_members(
        &self,
        segment_id: &str,
        users: Vec<UserId>,
        now: Millis,
    ) -> Result<u64> {
        let segment_id = segment_id.to_owned();
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::DELETE_SEGMENT_MEMBERS.sqlite())?
                    .execute([&segment_id])?;
                let uids = member_ids(w, &users, now)?;
                add_member_rows(w, &segment_id, &uids, now)
            })
            .await
    }

    async fn static_memberships(&self, user_id: &UserId) -> Result<Vec<String>> {
        self.strings(sql::STATIC_MEMBERSHIPS.sqlite(), user_id.to_string())
            .await
    }

    async fn create_experiment(&self, e: ExperimentRecord) -> Result<()> {
        let definition = serde_json::to_string(&e.definition)?;
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::INSERT_EXPERIMENT.sqlite())?
                    .execute(params![
                        e.id,
                        e.key,
                        e.name,
                        e.status,
                        definition,
                        e.version,
                        e.created_at,
                        e.updated_at,
                        e.created_by,
                        e.updated_by
                    ])
                    .map_err(|err| conflict(err, format!("an experiment with key '{}'", e.key)))?;
                Ok(())
            })
            .await
    }

    async fn update_experiment(&self, e: ExperimentRecord) -> Result<()> {
        let definition = serde_json::to_string(&e.definition)?;
        self.writer
            .write(move |w| {
                let n = w
                    .conn
                    .prepare_cached(sql::UPDATE_EXPERIMENT.sqlite())?
                    .execute(params![
                        e.id,
                        e.name,
                        definition,
                        e.version,
                        e.updated_at,
                        e.updated_by
                    ])?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("experiment '{}'", e.id)));
                }
                Ok(())
            })
            .await
    }

    async fn experiments(&self) -> Result<Vec<ExperimentRecord>> {
        self.read(|c| all(c, sql::EXPERIMENTS.sqlite(), [], |r| rows::experiment(r)))
            .await
    }

    async fn transition_experiment(
        &self,
        id: &str,
        from: &str,
        to: &str,
        at: Millis,
        by: Option<String>,
    ) -> Result<bool> {
        let (id, from, to) = (id.to_owned(), from.to_owned(), to.to_owned());
        self.writer
            .write(move |w| {
                let n = w
                    .conn
                    .prepare_cached(sql::MOVE_EXPERIMENT.sqlite())?
                    .execute(params![id, from, to, at])?;
                if n == 1 {
                    w.conn
                        .prepare_cached(sql::INSERT_TRANSITION.sqlite())?
                        .execute(params![id, from, to, at, by])?;
                }
                Ok(n == 1)
            })
            .await
    }

    async fn experiment_transitions(&self, id: &str) -> Result<Vec<TransitionRecord>> {
        let id = id.to_owned();
        self.read(move |c| {
            all(
                c,
                "SELECT from_status, to_status, at, by FROM experiment_transitions WHERE experiment_id = ?1 ORDER BY at, rowid",
                [id],
                |r| rows::transition(r),
            )
        })
        .await
    }

    async fn static_members(&self, segment_id: &str) -> Result<Vec<String>> {
        self.strings(sql::STATIC_MEMBERS.sqlite(), segment_id.to_owned())
            .await
    }

    async fn config_version(&self) -> Result<i64> {
        // One process owns the file and its configuration: nothing to poll.
        Ok(0)
    }
}

#[async_trait]
impl Keys for SqliteStore {
    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<()> {
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::INSERT_API_KEY.sqlite())?
                    .execute(params![
                        key.id,
                        key.name,
                        key.role,
                        key.key_hash,
                        key.created_at,
                        key.revoked_at
                    ])
                    .map_err(|e| conflict(e, format!("api key '{}'", key.id)))?;
                Ok(())
            })
            .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.read(|c| all(c, sql::API_KEYS.sqlite(), [], |r| rows::api_key(r)))
            .await
    }

    async fn revoke_api_key(&self, id: &str, now: Millis) -> Result<bool> {
        let id = id.to_owned();
        self.writer
            .write(move |w| {
                Ok(w.conn
                    .prepare_cached(sql::REVOKE_API_KEY.sqlite())?
                    .execute(params![id, now])?
                    == 1)
            })
            .await
    }
}

#[async_trait]
impl ChangeLog for SqliteStore {
    async fn apply_changes(
        &self,
        changes: std::sync::Arc<Vec<ChangeRecord>>,
        watermark: Watermark,
        node: Option<&str>,
    ) -> Result<Arc<Vec<ChangeRecord>>> {
        let mark = serde_json::to_string(&watermark)?;
        let key = Watermark::key(node);
        let single = node.is_some().then(|| Watermark::key(None));
        let stored = changes.clone();
        self.live_writer
            .write(move |w| {
                // The segments' numbers in the log, found or given once per batch.
                let mut keys: std::collections::HashMap<&str, i64> = Default::default();
                let mut add_key = w
                    .conn
                    .prepare_cached("INSERT OR IGNORE INTO segment_keys (segment_id) VALUES (?1)")?;
                let mut find_key = w
                    .conn
                    .prepare_cached("SELECT key FROM segment_keys WHERE segment_id = ?1")?;
                for c in changes.iter() {
                    if !keys.contains_key(c.segment_id.as_str()) {
                        add_key.execute([&c.segment_id])?;
                        let key = find_key.query_row([&c.segment_id], |r| r.get(0))?;
                        keys.insert(&c.segment_id, key);
                    }
                }
                let mut log = w.conn.prepare_cached(
                    "INSERT INTO change_log (seq, segment, user_id, entered, at, cause, event_seq, event_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for c in changes.iter() {
                    let (event_seq, event_id) = match &c.cause {
                        Cause::Event { seq, event_id } => (Some(*seq), event_id.as_deref()),
                        _ => (None, None),
                    };
                    log.execute(params![
                        c.seq,
                        keys[c.segment_id.as_str()],
                        c.user_id,
                        c.entered,
                        c.at,
                        c.cause.code(),
                        event_seq,
                        event_id
                    ])?;
                }
                w.conn
                    .prepare_cached(
                        sql::UPSERT_LIVE_STATE.sqlite(),
                    )?
                    .execute(params![key, mark])?;
                if let Some(single) = &single {
                    w.conn
                        .prepare_cached(sql::DELETE_LIVE_STATE.sqlite())?
                        .execute([single])?;
                }
                Ok(())
            })
            .await?;
        // One process owns the file: the engine's numbering stands.
        Ok(stored)
    }

    async fn watermark(&self, node: Option<&str>) -> Result<Option<Watermark>> {
        let key = Watermark::key(node);
        self.read_live(move |c| {
            let text: Option<String> = c
                .prepare_cached(sql::READ_LIVE_STATE.sqlite())?
                .query_row([key], |r| r.get(0))
                .optional()?;
            Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
        })
        .await
    }

    async fn open_memberships(&self) -> Result<Vec<(String, String)>> {
        // A membership is open when its latest change is an entry.
        self.read_live(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT k.segment_id, c.user_id FROM change_log c JOIN segment_keys k ON k.key = c.segment \
                 WHERE c.entered = 1 AND NOT EXISTS (SELECT 1 FROM change_log d INDEXED BY change_log_member \
                 WHERE d.segment = c.segment AND d.user_id = c.user_id AND d.seq > c.seq)",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn last_change_seq(&self) -> Result<i64> {
        self.read_live(|c| Ok(c.query_row(sql::LAST_CHANGE_SEQ.sqlite(), [], |r| r.get(0))?))
            .await
    }

    async fn changes(
        &self,
        segments: Option<Vec<String>>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>> {
        let filter = segments.map(|s| serde_json::to_string(&s)).transpose()?;
        self.read_live(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, segment_id, user_id, entered, at, cause, event_seq, event_id FROM changes \
                 WHERE seq > ?1 AND (?2 IS NULL OR segment_id IN (SELECT value FROM json_each(?2))) \
                 ORDER BY seq LIMIT ?3",
            )?;
            let out = collect(stmt.query(params![after, filter, limit])?, |r| rows::change(r));
            out
        })
        .await
    }

    async fn latest_changes(&self, segment_id: &str, limit: u32) -> Result<Vec<ChangeRecord>> {
        let segment_id = segment_id.to_owned();
        self.read_live(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, segment_id, user_id, entered, at, cause, event_seq, event_id FROM changes \
                 WHERE segment_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let out = collect(stmt.query(params![segment_id, limit])?, |r| rows::change(r));
            out
        })
        .await
    }

    async fn user_memberships(&self, user_id: &str, limit: u32) -> Result<Vec<MembershipRecord>> {
        let user_id = user_id.to_owned();
        self.read_live(move |c| {
            // One seek per segment in (segment, user): see LIVE_MIGRATIONS.
            let mut stmt = c.prepare_cached(
                "SELECT k.segment_id, c.entered, c.at FROM change_log c JOIN segment_keys k ON k.key = c.segment \
                 WHERE c.segment IN (SELECT key FROM segment_keys) AND c.user_id = ?1 ORDER BY c.seq",
            )?;
            let rows = stmt.query_map([user_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            stays(rows.map(|r| r.map_err(StoreError::from)), limit)
        })
        .await
    }

    async fn change_buckets(&self, segment_id: &str, bucket: Millis) -> Result<Vec<ChangeBucket>> {
        let segment_id = segment_id.to_owned();
        let bucket = bucket.max(1);
        self.read_live(move |c| {
            let mut stmt = c.prepare_cached(sql::CHANGE_BUCKETS.sqlite())?;
            let rows = stmt.query_map(params![segment_id, bucket], |r| {
                Ok(ChangeBucket {
                    start: r.get(0)?,
                    entered: r.get::<_, i64>(1)? as u64,
                    exited: r.get::<_, i64>(2)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[async_trait]
impl Assignments for SqliteStore {
    async fn save_serving(
        &self,
        assignments: Arc<Vec<AssignmentRecord>>,
        mixtures: Arc<Vec<BannerMixtureRecord>>,
    ) -> Result<()> {
        if assignments.is_empty() && mixtures.is_empty() {
            return Ok(());
        }
        let mixture_json = mixtures
            .iter()
            .map(|m| serde_json::to_string(&m.mixture))
            .collect::<std::result::Result<Vec<String>, _>>()?;
        self.writer
            .write(move |w| {
                if !assignments.is_empty() {
                    let mut seq = w.assignment_seq()?;
                    for (user, new) in packed::by_user(&assignments) {
                        let held = w.held_assignments(user)?;
                        w.append_assignments(user, &packed::fresh(&held, new), &mut seq)?;
                    }
                    w.set_assignment_seq(seq)?;
                }
                let mut upsert = w.conn.prepare_cached(sql::UPSERT_BANNERS.sqlite())?;
                for (m, json) in mixtures.iter().zip(&mixture_json) {
                    upsert.execute(params![m.user_id, json, m.assigned_at, m.expires_at])?;
                }
                Ok(())
            })
            .await
    }

    async fn served_user_ids(&self, sink: IdSink) -> Result<()> {
        self.read(move |c| {
            for statement in [&sql::ASSIGNED_USERS, &sql::MIXTURE_USERS] {
                let mut stmt = c.prepare_cached(statement.sqlite())?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    sink(row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?);
                }
            }
            Ok(())
        })
        .await
    }

    async fn serving_state(
        &self,
        user_id: &str,
    ) -> Result<(Vec<AssignmentRecord>, Option<BannerMixtureRecord>)> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            let assignments = held_assignments(c, &user_id)?;
            let row = c
                .prepare_cached(sql::USER_BANNERS.sqlite())?
                .query_row([&user_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()?;
            let mixture = row
                .map(|(mixture, assigned_at, expires_at)| {
                    Ok::<_, StoreError>(BannerMixtureRecord {
                        user_id: user_id.clone(),
                        mixture: serde_json::from_str(&mixture)?,
                        assigned_at,
                        expires_at,
                    })
                })
                .transpose()?;
            Ok((assignments, mixture))
        })
        .await
    }

    async fn experiment_exposures(
        &self,
        experiment_id: &str,
        bucket_version: u32,
        from: Millis,
        to: Millis,
    ) -> Result<Exposures> {
        let x = self
            .exposures_since(experiment_id, bucket_version, -1)
            .await?;
        Ok(x.within(from, to))
    }

    async fn exposures_since(
        &self,
        experiment_id: &str,
        bucket_version: u32,
        after_seq: i64,
    ) -> Result<Exposures> {
        let experiment_id = experiment_id.to_owned();
        self.read(move |c| {
            // Before the exposures: a user numbered above it did not exist
            // when they were read (one writer numbers users in order).
            let max_uid: i64 = c
                .prepare_cached(sql::MAX_UID.sqlite())?
                .query_row([], |r| r.get(0))?;
            let mut stmt = c.prepare_cached(sql::ASSIGNMENT_LOG.sqlite())?;
            let mut rows = stmt.query([after_seq])?;
            let mut read = packed::ExposureReader::new(&experiment_id, bucket_version, after_seq);
            while let Some(row) = rows.next()? {
                let user = row
                    .get_ref(2)?
                    .as_str_or_null()
                    .map_err(rusqlite::Error::from)?;
                let blob = row.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?;
                read.record(row.get(0)?, row.get(1)?, user, row.get(3)?, blob)?;
            }
            let mut out = read.finish();
            out.max_uid = max_uid;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Metrics for SqliteStore {
    async fn scan_metric_events(&self, scan: MetricScan, sink: MetricSink) -> Result<ScanOutcome> {
        // The name's id and the log's extent, then the log in two halves on
        // two readers at once (a scan is CPU-bound in SQLite's row decoding).
        let name = scan.event.clone();
        let (name_id, max_seq) = self
            .read(move |c| {
                let id: Option<i64> = c
                    .prepare_cached("SELECT id FROM event_names WHERE name = ?1")?
                    .query_row([name], |r| r.get(0))
                    .optional()?;
                let max: i64 =
                    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
                Ok((id, max))
            })
            .await?;
        let Some(name_id) = name_id else {
            return Ok(ScanOutcome {
                events: 0,
                through_seq: max_seq,
            });
        };
        let low = scan.after_seq.max(0);
        if low >= max_seq {
            return Ok(ScanOutcome {
                events: 0,
                through_seq: max_seq.max(scan.after_seq),
            });
        }
        let half = low + (max_seq - low) / 2;
        let part = |low: i64, high: i64| {
            let (scan, sink) = (scan.clone(), sink.clone());
            self.read(move |c| scan_part(c, &scan, name_id, low, high, &sink))
        };
        let started = std::time::Instant::now();
        let (first, second) = tokio::join!(part(low, half), part(half, max_seq));
        let events = first? + second?;
        tracing::debug!(event = %scan.event, after_seq = low, through_seq = max_seq, events, elapsed = ?started.elapsed(), "metric events scanned");
        Ok(ScanOutcome {
            events,
            through_seq: max_seq,
        })
    }

    async fn create_metric(&self, m: MetricRecord) -> Result<()> {
        let definition = serde_json::to_string(&m.definition)?;
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::INSERT_METRIC.sqlite())?
                    .execute(params![m.key, definition, m.created_at, m.updated_at])
                    .map_err(|err| conflict(err, format!("a metric with key '{}'", m.key)))?;
                Ok(())
            })
            .await
    }

    async fn metrics(&self) -> Result<Vec<MetricRecord>> {
        self.read(|c| all(c, sql::METRICS.sqlite(), [], |r| rows::metric(r)))
            .await
    }

    async fn delete_metric(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.writer
            .write(move |w| {
                Ok(w.conn
                    .prepare_cached(sql::DELETE_METRIC.sqlite())?
                    .execute([key])?
                    > 0)
            })
            .await
    }
}

#[async_trait]
impl Webhooks for SqliteStore {
    async fn create_webhook(&self, hook: WebhookRecord) -> Result<()> {
        let segments = hook
            .segment_ids
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::INSERT_WEBHOOK.sqlite())?
                    .execute(params![
                        hook.id,
                        hook.url,
                        segments,
                        hook.secret,
                        hook.created_at,
                        hook.delivered_seq
                    ])?;
                Ok(())
            })
            .await
    }

    async fn webhooks(&self) -> Result<Vec<WebhookRecord>> {
        self.read(|c| all(c, sql::WEBHOOKS.sqlite(), [], |r| rows::webhook(r)))
            .await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.writer
            .write(move |w| {
                Ok(w.conn
                    .prepare_cached(sql::DELETE_WEBHOOK.sqlite())?
                    .execute([id])?
                    == 1)
            })
            .await
    }

    async fn record_delivery(
        &self,
        id: &str,
        delivered_seq: i64,
        failures: i64,
        last_error: Option<String>,
        at: Millis,
    ) -> Result<()> {
        let id = id.to_owned();
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::RECORD_DELIVERY.sqlite())?
                    .execute(params![id, delivered_seq, failures, last_error, at])?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Coordination for SqliteStore {
    async fn save_partition_progress(&self, progress: Vec<PartitionProgress>) -> Result<()> {
        self.writer
            .write(move |w| {
                let mut stmt = w.conn.prepare_cached(sql::UPSERT_PARTITION.sqlite())?;
                for p in &progress {
                    stmt.execute(params![
                        p.topic,
                        p.partition,
                        p.committed,
                        p.high_water,
                        p.node,
                        p.updated_at
                    ])?;
                }
                Ok(())
            })
            .await
    }

    async fn partition_progress(&self) -> Result<Vec<PartitionProgress>> {
        self.read(|c| all(c, sql::PARTITIONS.sqlite(), [], |r| rows::partition(r)))
            .await
    }

    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<Option<i64>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer
            .write(move |w| {
                // SQLite numbers parameters `?N`.
                let mut stmt = w.conn.prepare_cached(&HOLD_LEASE.replace('$', "?"))?;
                Ok(stmt
                    .query_row(params![name, holder, now, until], |r| r.get(0))
                    .optional()?)
            })
            .await
    }

    async fn advance_lease(&self, name: &str, holder: &str, cursor: i64) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer
            .write(move |w| {
                let mut stmt = w.conn.prepare_cached(&ADVANCE_LEASE.replace('$', "?"))?;
                Ok(stmt.execute(params![name, holder, cursor])? == 1)
            })
            .await
    }
}

/// One slice `(low, high]` of the log for [`SqliteStore::scan_metric_events`].
fn scan_part(
    c: &Connection,
    scan: &MetricScan,
    name_id: i64,
    low: i64,
    high: i64,
    sink: &MetricSink,
) -> Result<u64> {
    let path = scan.property.as_ref().map(|p| format!("$.{p}"));
    let sql = if path.is_some() {
        // Numbers only, as on PostgreSQL: `true` is not 1.
        "SELECT uid, ts, CASE WHEN json_type(properties, ?6) IN ('integer', 'real') \
           THEN json_extract(properties, ?6) END FROM events \
         WHERE seq > ?1 AND seq <= ?2 AND name_id = ?3 AND ts >= ?4 AND ts <= ?5"
    } else {
        "SELECT uid, ts, NULL FROM events \
         WHERE seq > ?1 AND seq <= ?2 AND name_id = ?3 AND ts >= ?4 AND ts <= ?5 AND ?6 IS NULL"
    };
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params![low, high, name_id, scan.since, scan.until, path])?;
    let mut chunks = Chunks::new(sink);
    while let Some(row) = rows.next()? {
        let value = match row.get_ref(2)? {
            rusqlite::types::ValueRef::Integer(i) => Some(i as f64),
            rusqlite::types::ValueRef::Real(f) => Some(f),
            _ => None,
        };
        chunks.push(MetricEvent {
            uid: row.get(0)?,
            ts: row.get(1)?,
            value,
        });
    }
    Ok(chunks.finish())
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append_audit(&self, e: AuditRecord) -> Result<()> {
        let changes = e.changes.to_string();
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::INSERT_AUDIT.sqlite())?
                    .execute(params![
                        e.at,
                        e.key_id,
                        e.action,
                        e.target_kind,
                        e.target_id,
                        changes
                    ])?;
                Ok(())
            })
            .await
    }

    async fn audit_entries(
        &self,
        target: Option<String>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.read(move |c| {
            all(
                c,
                sql::AUDIT_ENTRIES.sqlite(),
                params![target, before, limit],
                |r| rows::audit(r),
            )
        })
        .await
    }
}

#[async_trait]
impl DashboardSessions for SqliteStore {
    async fn create_session(&self, session: SessionRecord, now: Millis, max: u32) -> Result<()> {
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::DELETE_EXPIRED_SESSIONS.sqlite())?
                    .execute([now])?;
                let live: i64 = w
                    .conn
                    .prepare_cached(sql::COUNT_SESSIONS.sqlite())?
                    .query_row([], |r| r.get(0))?;
                if live >= i64::from(max) {
                    w.conn
                        .prepare_cached(sql::DELETE_OLDEST_SESSION.sqlite())?
                        .execute([])?;
                }
                w.conn
                    .prepare_cached(sql::INSERT_SESSION.sqlite())?
                    .execute(params![
                        session.token_hash,
                        session.key_id,
                        session.csrf,
                        session.expires_at
                    ])?;
                Ok(())
            })
            .await
    }

    async fn session(&self, token_hash: Vec<u8>, now: Millis) -> Result<Option<SessionRecord>> {
        self.read(move |c| {
            let mut found = all(c, sql::SESSION.sqlite(), params![token_hash, now], |r| {
                rows::session(r)
            })?;
            Ok(found.pop())
        })
        .await
    }

    async fn delete_session(&self, token_hash: Vec<u8>) -> Result<()> {
        self.writer
            .write(move |w| {
                w.conn
                    .prepare_cached(sql::DELETE_SESSION.sqlite())?
                    .execute([token_hash])?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::{apply, MIGRATIONS};

    /// A store written before assignments were packed opens with every
    /// assignment in the log, readable as before, and numbers go on after.
    #[tokio::test]
    async fn assignments_stored_a_row_each_are_packed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
            configure(&conn).expect("configure");
            let packing = MIGRATIONS
                .iter()
                .position(|m| m.contains("CREATE TABLE assignment_log"))
                .expect("the packing migration");
            apply(&mut conn, &MIGRATIONS[..packing]).expect("old schema");
            conn.execute_batch(
                "INSERT INTO users (uid, user_id, created_at, updated_at) VALUES (7, 'u1', 0, 0);
                 INSERT INTO assignments (user_id, experiment_id, variant, bucket_version, assigned_at, seq) VALUES
                   ('u1', 'x', 'a', 1, 100, 5), ('u1', 'y', 'b', 2, 100, 6), ('u1', 'z', 'c', 1, 150, 8),
                   ('anon', 'x', 'b', 1, 200, 7);
                 UPDATE assignment_seq SET seq = 8;",
            )
            .expect("old rows");
        }
        let store = SqliteStore::open(dir.path()).expect("migrate");
        let a = |user: &str, exp: &str, variant: &str, version: u32, at: Millis| AssignmentRecord {
            user_id: user.into(),
            experiment_id: exp.into(),
            variant: variant.into(),
            bucket_version: version,
            assigned_at: at,
        };
        let (u1, _) = store.serving_state("u1").await.expect("u1");
        assert_eq!(
            u1,
            vec![
                a("u1", "x", "a", 1, 100),
                a("u1", "y", "b", 2, 100),
                a("u1", "z", "c", 1, 150)
            ]
        );
        let x = store.exposures_since("x", 1, -1).await.expect("x");
        assert_eq!(x.uid.len(), 2);
        assert!(x.uid.contains(&Some(7)));
        assert_eq!(x.no_profile.len(), 1);
        assert_eq!(x.no_profile[0].1, "anon");
        assert!(
            x.through_seq > 8,
            "numbers follow the old ones: {}",
            x.through_seq
        );
        store
            .save_assignments(Arc::new(vec![a("u2", "x", "b", 1, 300)]))
            .await
            .expect("save");
        let next = store
            .exposures_since("x", 1, x.through_seq)
            .await
            .expect("next");
        assert_eq!(next.assigned_at, vec![300]);
        store.close();
    }
}
