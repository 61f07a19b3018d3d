//! The scale-out backend: PostgreSQL, shared by every node.
//!
//! Same tables and semantics as the SQLite backend (the one storage suite
//! runs against both). What differs because several nodes write at once:
//! - users and event names are interned with `INSERT .. ON CONFLICT`, in
//!   sorted order (no deadlock between two nodes' batches), and never cached
//!   (another node may erase a user);
//! - event appends take their sequence numbers under a transaction-level
//!   advisory lock held to the commit, so a reader by sequence never skips
//!   a lower number that commits later;
//! - the change log is numbered here, under a transaction-level advisory
//!   lock, so sequence order is commit order across nodes
//!   ([`ChangeLog::apply_changes`] returns the changes as numbered);
//! - every configuration write bumps `config_version`, which nodes poll to
//!   reload (see [`Configuration::config_version`], run only through `ConfigTx`).
//!
//! Event appends of one node are serialised, so its commit hooks run in
//! sequence order, as the live engine needs.

use crate::model::*;
use crate::packed;
use crate::pg_migrations::migrate;
use crate::rows;
use crate::shared::{
    merge_into, merge_target, merged_attributes, properties_object, stays, without_nulls, Chunks,
    ADVANCE_LEASE, HOLD_LEASE,
};
use crate::sql::{self, ConfigWrite};
use crate::{
    Assignments, AuditLog, ChangeLog, Configuration, Coordination, DashboardSessions, EventLog,
    Keys, Metrics, Result, StoreError, Users, Webhooks,
};
use async_trait::async_trait;
use deadpool_postgres::{Pool, Runtime};
use futures_util::{pin_mut, TryStreamExt};
use serde_json::Value;
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_core::rules::sql::{Compiled, Param};
use stratify_core::schema::{AttributeSchema, EventTypeSchema};
use stratify_core::time::Millis;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, Json, ToSql, Type};
use tokio_postgres::{GenericClient, NoTls, Row, Transaction};

const ATTRIBUTE_SCHEMA_KEY: &str = "attribute_schema";
/// Advisory lock serialising change-log commits across nodes.
const CHANGES_LOCK: i64 = 0x7374_7261_6368_6e67;
/// Advisory lock serialising event appends across nodes from the first
/// sequence number taken to the commit: sequence order is commit order, so
/// a reader by sequence (metric scans, followers) never moves past a lower
/// number that commits later.
const EVENTS_LOCK: i64 = 0x7374_7261_6576_6e74;
/// Held by an assignment write from taking its numbers to its commit.
const ASSIGNMENTS_LOCK: i64 = 0x7374_7261_6173_676e;
/// Advisory lock numbering erasures in commit order.
const ERASURES_LOCK: i64 = 0x7374_7261_6572_6173;
/// Connections per node.
const POOL_SIZE: usize = 16;

const EVENT_SELECT: &str =
    "SELECT e.seq, e.event_id, u.user_id, n.name, e.ts, e.properties, e.received_at, e.source \
     FROM events e JOIN users u ON u.uid = e.uid JOIN event_names n ON n.id = e.name_id";
/// Each connection's staging table for event appends: a batch is COPied
/// into it (binary), then inserted with its duplicates skipped; emptied at
/// every commit.
const CREATE_EVENTS_IN: &str = "DO $$ BEGIN IF to_regclass('pg_temp.events_in') IS NULL THEN \
     CREATE TEMP TABLE events_in (seq BIGINT, uid BIGINT, name_id BIGINT, ts BIGINT, event_id TEXT, \
     dedupe BIGINT, properties JSONB, source BIGINT, received_at BIGINT) ON COMMIT DELETE ROWS; \
     END IF; END $$";
const COPY_EVENTS_IN: &str = "COPY events_in FROM STDIN (FORMAT binary)";
const EVENTS_IN_TYPES: [Type; 9] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::JSONB,
    Type::INT8,
    Type::INT8,
];
const CHANGE_COLUMNS: &str = "seq, segment_id, user_id, entered, at, cause, event_seq, event_id";

pub struct PgStore {
    pool: Pool,
    /// Serialises this node's event appends (hooks in sequence order).
    appends: tokio::sync::Mutex<()>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and migrates.
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::Config(format!("invalid PostgreSQL URL: {e}"))
        })?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let store = Self {
            pool,
            appends: tokio::sync::Mutex::new(()),
        };
        let mut client = store.client().await?;
        migrate(&mut client).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    async fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.query(&stmt, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.execute(&stmt, params).await?)
    }

    /// Runs a configuration write: `f` gets a [`ConfigTx`], the only way to
    /// run a [`ConfigWrite`], and the transaction commits with the bump of
    /// `config_version` (other nodes reload when they see the new version).
    async fn config_write<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'t> FnOnce(
            &'t ConfigTx<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T>> + Send + 't>,
        >,
    {
        let mut client = self.client().await?;
        let tx = ConfigTx(client.transaction().await?);
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// One configuration statement in its own [`ConfigTx`]; returns the
    /// rows it changed.
    async fn config_execute(
        &self,
        statement: &'static ConfigWrite,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = ConfigTx(client.transaction().await?);
        let changed = tx.execute(statement, params).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Every row of a shared statement, read by its shared mapper.
    async fn all<T>(
        &self,
        statement: &'static sql::Statement,
        params: &[&(dyn ToSql + Sync)],
        map: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.rows(statement.postgres(), params)
            .await?
            .iter()
            .map(map)
            .collect()
    }
}

/// A transaction that changes configuration. Only [`PgStore::config_write`]
/// makes one, and it always commits with the `config_version` bump, so a
/// [`ConfigWrite`] cannot run without telling the other nodes.
pub(crate) struct ConfigTx<'t>(deadpool_postgres::Transaction<'t>);

impl<'t> ConfigTx<'t> {
    async fn execute(
        &self,
        statement: &'static ConfigWrite,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.0.execute(statement.postgres(), params).await
    }

    async fn query_one(
        &self,
        statement: &'static ConfigWrite,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        self.0.query_one(statement.postgres(), params).await
    }

    /// Bumps `config_version` and commits: the only way a `ConfigTx` ends
    /// other than being dropped (rolled back).
    async fn commit(self) -> Result<()> {
        self.0
            .execute("UPDATE config_version SET version = version + 1", &[])
            .await?;
        self.0.commit().await?;
        Ok(())
    }

    /// The transaction, for what is not configuration (interning the users
    /// a static segment names).
    fn other(&self) -> &Transaction<'t> {
        &self.0
    }
}

/// Upserts an event type and returns its creation instant.
static UPSERT_EVENT_TYPE: ConfigWrite = ConfigWrite::postgres_only(
    "INSERT INTO event_types AS t (name, schema, created_at, updated_at) VALUES ($1, $2, $3, $3) \
     ON CONFLICT (name) DO UPDATE SET schema = excluded.schema, updated_at = excluded.updated_at \
     RETURNING t.created_at",
);
/// Adds members (segment_id, uids, now), skipping those already in.
static ADD_MEMBERS: ConfigWrite = ConfigWrite::postgres_only(
    "INSERT INTO segment_members (segment_id, uid, added_at) \
     SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u ON CONFLICT DO NOTHING",
);
/// Removes members by user id (segment_id, user_ids).
static REMOVE_MEMBERS: ConfigWrite = ConfigWrite::postgres_only(
    "DELETE FROM segment_members WHERE segment_id = $1 AND uid IN \
     (SELECT uid FROM users WHERE user_id = ANY($2))",
);

fn unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn conflict(e: impl Into<StoreError>, what: String) -> StoreError {
    match e.into() {
        StoreError::Postgres(e) if unique_violation(&e) => StoreError::Conflict(what),
        other => other,
    }
}

/// A compiled rule's parameter, converted to whatever type PostgreSQL
/// inferred for its placeholder (a number compared with `float8` is sent as
/// one; text as text).
#[derive(Debug)]
struct Bind<'a>(&'a Param);

impl ToSql for Bind<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self.0, ty) {
            (Param::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Param::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Param::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Param::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Param::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Param::Real(f), &Type::TEXT | &Type::VARCHAR) => f.to_string().to_sql(ty, out),
            (Param::Text(t), _) => t.to_sql(ty, out),
            (p, ty) => Err(format!("cannot bind {p:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn user_record(r: &Row, offset: usize) -> Result<UserRecord> {
    let attributes = match r.get::<_, Value>(offset + 1) {
        Value::Object(m) => m,
        _ => {
            return Err(StoreError::Corrupt(
                "user attributes are not an object".into(),
            ))
        }
    };
    Ok(UserRecord {
        user_id: r.get(offset),
        attributes,
        created_at: r.get(offset + 2),
        updated_at: r.get(offset + 3),
    })
}

fn stored_event(r: &Row) -> Result<StoredEvent> {
    let seq: i64 = r.get(0);
    Ok(StoredEvent {
        seq,
        event_id: r.get(1),
        user_id: r.get(2),
        name: r.get(3),
        timestamp: r.get(4),
        properties: properties_object(seq, r.get(5))?,
        received_at: r.get(6),
        source: Source::from_code(r.get(7)),
    })
}

/// Interns users (creating unknown ones) and returns their uids in input order.
async fn uids<C: GenericClient>(c: &C, users: &[&str], now: Millis) -> Result<Vec<i64>> {
    let mut sorted: Vec<&str> = users.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    // Most users of a batch exist: read them first, and insert only the
    // others (an upsert of every user would try an insert, and burn a
    // sequence number, per known user).
    let lookup = "SELECT user_id, uid FROM users WHERE user_id = ANY($1)";
    let mut map: std::collections::HashMap<String, i64> = c
        .query(lookup, &[&sorted])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|u| !map.contains_key(*u))
        .collect();
    if !missing.is_empty() {
        // A new id may be one merged into another user: the caller
        // resolves it and writes again.
        let merged: Vec<(String, Option<String>)> = c
            .query(
                "SELECT alias, user_id FROM aliases WHERE alias = ANY($1)",
                &[&missing],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), Some(r.get(1))))
            .collect();
        if !merged.is_empty() {
            return Err(StoreError::UsersMoved(merged));
        }
        c.execute(
            "INSERT INTO users (user_id, created_at, updated_at) \
             SELECT u, $2, $2 FROM unnest($1::text[]) AS u ORDER BY u ON CONFLICT (user_id) DO NOTHING",
            &[&missing, &now],
        )
        .await?;
        // Inserted here, or meanwhile by another node: read them all.
        map.extend(
            c.query(lookup, &[&missing])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1))),
        );
    }
    users
        .iter()
        .map(|u| {
            map.get(*u)
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("user '{u}' vanished while interning")))
        })
        .collect()
}

/// The number every merge and erasure moves (see `user_epoch`'s table).
async fn user_epoch<C: GenericClient>(c: &C) -> Result<i64> {
    Ok(c.query_one("SELECT epoch FROM user_epoch", &[])
        .await?
        .get(0))
}

/// Fails with [`StoreError::UsersMoved`] when any of `uids` no longer
/// exists (its user merged or erased after it was interned).
async fn check_users<C: GenericClient>(c: &C, users: &[&str], uids: &[i64]) -> Result<()> {
    let live: std::collections::HashSet<i64> = c
        .query("SELECT uid FROM users WHERE uid = ANY($1)", &[&uids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut gone: Vec<String> = users
        .iter()
        .zip(uids)
        .filter(|(_, uid)| !live.contains(uid))
        .map(|(u, _)| (*u).to_owned())
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    gone.sort_unstable();
    gone.dedup();
    let targets: std::collections::HashMap<String, String> = c
        .query(
            "SELECT alias, user_id FROM aliases WHERE alias = ANY($1)",
            &[&gone],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Err(StoreError::UsersMoved(
        gone.into_iter()
            .map(|u| {
                let target = targets.get(&u).cloned();
                (u, target)
            })
            .collect(),
    ))
}

/// Interns event names and returns their ids in input order.
async fn name_ids<C: GenericClient>(c: &C, names: &[&str]) -> Result<Vec<i64>> {
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    c.execute(
        "INSERT INTO event_names (name) SELECT n FROM unnest($1::text[]) AS n ORDER BY n \
         ON CONFLICT (name) DO NOTHING",
        &[&sorted],
    )
    .await?;
    let rows = c
        .query(
            "SELECT name, id FROM event_names WHERE name = ANY($1)",
            &[&sorted],
        )
        .await?;
    let map: std::collections::HashMap<String, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    names
        .iter()
        .map(|n| {
            map.get(*n)
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("event name '{n}' vanished")))
        })
        .collect()
}

async fn record_ingest<C: GenericClient>(
    c: &C,
    report: &IngestReport,
    accepted: u64,
    duplicates: u64,
    last_event_at: Option<Millis>,
) -> Result<()> {
    c.execute(
        "INSERT INTO ingest_status AS s (source, received, accepted, duplicates, rejected, last_event_at, \
         last_error, last_error_at, updated_at, forwarded) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (source) DO UPDATE SET received = s.received + excluded.received, \
         accepted = s.accepted + excluded.accepted, duplicates = s.duplicates + excluded.duplicates, \
         rejected = s.rejected + excluded.rejected, forwarded = s.forwarded + excluded.forwarded, \
         last_event_at = GREATEST(COALESCE(s.last_event_at, 0), COALESCE(excluded.last_event_at, 0)), \
         last_error = COALESCE(excluded.last_error, s.last_error), \
         last_error_at = COALESCE(excluded.last_error_at, s.last_error_at), updated_at = excluded.updated_at",
        &[
            &report.source.code(),
            &(report.received as i64),
            &(accepted as i64),
            &(duplicates as i64),
            &(report.rejected as i64),
            &last_event_at,
            &report.last_error,
            &report.last_error.as_ref().map(|_| report.now),
            &report.now,
            &(report.forwarded as i64),
        ],
    )
    .await?;
    Ok(())
}

async fn user_row<C: GenericClient>(c: &C, user_id: &str) -> Result<Option<UserRecord>> {
    c.query_opt(sql::USER_BY_ID.postgres(), &[&user_id])
        .await?
        .map(|r| user_record(&r, 0))
        .transpose()
}

async fn save_attributes<C: GenericClient>(
    c: &C,
    user_id: &str,
    attributes: &Attributes,
    now: Millis,
) -> Result<()> {
    c.execute(
        "INSERT INTO users (user_id, attributes, created_at, updated_at) VALUES ($1, $2, $3, $3) \
         ON CONFLICT (user_id) DO UPDATE SET attributes = excluded.attributes, updated_at = excluded.updated_at",
        &[&user_id, &Json(attributes), &now],
    )
    .await?;
    Ok(())
}

async fn add_member_rows(
    tx: &ConfigTx<'_>,
    segment_id: &str,
    users: &[UserId],
    now: Millis,
) -> Result<u64> {
    let names: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    let uids = uids(tx.other(), &names, now).await?;
    Ok(tx
        .execute(&ADD_MEMBERS, &[&segment_id, &uids, &now])
        .await?)
}

type Boxed<'t, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 't>>;

#[async_trait]
impl EventLog for PgStore {
    async fn append_events(&self, batch: EventBatch) -> Result<Vec<Appended>> {
        let _serial = self.appends.lock().await;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = batch.report.now;
        let events = &batch.events;
        let users: Vec<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        let epoch = user_epoch(&*tx).await?;
        let uids = uids(&*tx, &users, now).await?;
        let name_ids = name_ids(&*tx, &names).await?;
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_unstable_by_key(|&i| (uids[i], events[i].timestamp, i));
        tx.batch_execute(CREATE_EVENTS_IN).await?;
        // Numbers are taken from here to the commit under the lock (see
        // EVENTS_LOCK); interning users and names above stays concurrent.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
            .await?;
        // A merge or erasure (both under the lock) committed since the users
        // were interned: those still there are safe to write to.
        if user_epoch(&*tx).await? != epoch {
            check_users(&*tx, &users, &uids).await?;
        }
        // Every row is numbered before it is sent, in (user, time) order:
        // what the insert skips as a duplicate leaves a gap, as a sequence
        // may anyway.
        let mut numbers: Vec<i64> = tx
            .query(
                "SELECT nextval('events_seq_seq') FROM generate_series(1, $1::bigint)",
                &[&(events.len() as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        numbers.sort_unstable();
        let mut seqs = vec![0i64; events.len()];
        for (&i, &n) in order.iter().zip(&numbers) {
            seqs[i] = n;
        }
        let source = batch.report.source.code();
        {
            let sink = tx.copy_in(COPY_EVENTS_IN).await?;
            let writer = BinaryCopyInWriter::new(sink, &EVENTS_IN_TYPES);
            pin_mut!(writer);
            for &i in &order {
                let e = &events[i];
                let event_id = e.event_id.as_ref().map(|id| id.as_str());
                let props = e.properties.as_ref().map(Json);
                writer
                    .as_mut()
                    .write(&[
                        &seqs[i],
                        &uids[i],
                        &name_ids[i],
                        &e.timestamp,
                        &event_id,
                        &e.dedupe_key,
                        &props,
                        &source,
                        &now,
                    ])
                    .await?;
            }
            writer.finish().await?;
        }
        let inserted: std::collections::HashSet<i64> = tx
            .query(
                "INSERT INTO events (seq, uid, name_id, ts, event_id, dedupe, properties, source, received_at) \
                 SELECT * FROM events_in ORDER BY seq ON CONFLICT DO NOTHING RETURNING seq",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out: Vec<Appended> = seqs
            .iter()
            .map(|s| {
                if inserted.contains(s) {
                    Appended::New(*s)
                } else {
                    Appended::Duplicate
                }
            })
            .collect();
        // A skipped row with an id is only a duplicate if the stored event
        // under its (user, key) has the same id text: a 64-bit hash
        // collision must not lose it (stored again, without the key).
        let skipped: Vec<usize> = (0..events.len())
            .filter(|&i| out[i] == Appended::Duplicate && events[i].event_id.is_some())
            .collect();
        if !skipped.is_empty() {
            let rows = tx
                .query(
                    "SELECT e.uid, e.dedupe, e.event_id FROM events e \
                     JOIN unnest($1::bigint[], $2::bigint[]) AS k(uid, dedupe) \
                     ON e.uid = k.uid AND e.dedupe = k.dedupe",
                    &[
                        &skipped.iter().map(|&i| uids[i]).collect::<Vec<_>>(),
                        &skipped
                            .iter()
                            .map(|&i| events[i].dedupe_key)
                            .collect::<Vec<_>>(),
                    ],
                )
                .await?;
            let stored: std::collections::HashMap<(i64, i64), Option<String>> = rows
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            for i in skipped {
                let e = &events[i];
                let id = e.event_id.as_ref().map(|id| id.as_str());
                let held = e
                    .dedupe_key
                    .and_then(|k| stored.get(&(uids[i], k)))
                    .and_then(|s| s.as_deref());
                if held == id {
                    continue;
                }
                let props = e.properties.as_ref().map(Json);
                let r = tx
                    .query_one(
                        "INSERT INTO events (uid, name_id, ts, event_id, dedupe, properties, source, received_at) \
                         VALUES ($1, $2, $3, $4, NULL, $5, $6, $7) RETURNING seq",
                        &[&uids[i], &name_ids[i], &e.timestamp, &id, &props, &source, &now],
                    )
                    .await?;
                out[i] = Appended::New(r.get(0));
            }
        }
        let (mut accepted, mut duplicates, mut last) = (0u64, 0u64, None::<Millis>);
        for (e, a) in events.iter().zip(&out) {
            match a {
                Appended::New(_) => {
                    accepted += 1;
                    last = Some(last.map_or(e.timestamp, |l| l.max(e.timestamp)));
                }
                Appended::Duplicate => duplicates += 1,
            }
        }
        record_ingest(&*tx, &batch.report, accepted, duplicates, last).await?;
        tx.commit().await?;
        if let Some(hook) = &batch.on_commit {
            (hook.0)(&out, &uids);
        }
        Ok(out)
    }

    async fn query_events(&self, q: EventQuery) -> Result<Vec<StoredEvent>> {
        let mut sql = format!("{EVENT_SELECT} WHERE TRUE");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(u) = q.user_id {
            bind(&mut sql, " AND u.user_id = ?", Box::new(u));
        }
        if let Some(n) = q.name {
            bind(&mut sql, " AND n.name = ?", Box::new(n));
        }
        if let Some(f) = q.from {
            bind(&mut sql, " AND e.ts >= ?", Box::new(f));
        }
        if let Some(t) = q.to {
            bind(&mut sql, " AND e.ts < ?", Box::new(t));
        }
        if let Some(a) = q.after_seq {
            let clause = if q.newest_first {
                " AND e.seq < ?"
            } else {
                " AND e.seq > ?"
            };
            bind(&mut sql, clause, Box::new(a));
        }
        if let Some(x) = q.experiment {
            bind(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM assignment_log a WHERE a.user_id = u.user_id \
                 AND a.at <= e.ts AND stratify_exposed(a.entries, ?::text",
                Box::new(x.experiment_id),
            );
            bind(
                &mut sql,
                ", ?::bigint",
                Box::new(i64::from(x.bucket_version)),
            );
            bind(&mut sql, ", ?::text) = 1)", Box::new(x.variant));
        }
        let order = if q.newest_first {
            " ORDER BY e.seq DESC LIMIT ?"
        } else {
            " ORDER BY e.seq LIMIT ?"
        };
        bind(&mut sql, order, Box::new(i64::from(q.limit)));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
        self.rows(&sql, &params)
            .await?
            .iter()
            .map(stored_event)
            .collect()
    }

    async fn ingest_status(&self) -> Result<Vec<IngestStatus>> {
        self.all(&sql::INGEST_STATUS, &[], rows::ingest_status)
            .await
    }

    async fn record_ingest(&self, report: IngestReport) -> Result<()> {
        let client = self.client().await?;
        record_ingest(&**client, &report, 0, 0, None).await
    }

    async fn counts(&self) -> Result<Counts> {
        let rows = self
            .rows(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM events)",
                &[],
            )
            .await?;
        let r = &rows[0];
        Ok(Counts {
            users: r.get::<_, i64>(0) as u64,
            events: r.get::<_, i64>(1) as u64,
        })
    }

    async fn last_event_seq(&self) -> Result<i64> {
        Ok(self.rows(sql::LAST_EVENT_SEQ.postgres(), &[]).await?[0].get(0))
    }

    async fn scan_events(&self, after_seq: i64, limit: u32) -> Result<Vec<RawEvent>> {
        self.rows(
            sql::SCAN_EVENTS.postgres(),
            &[&after_seq, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            Ok(RawEvent {
                seq,
                uid: r.get(1),
                name_id: r.get(2),
                timestamp: r.get(3),
                properties: properties_object(seq, r.get(4))?,
                event_id: r.get(5),
                received_at: r.get(6),
            })
        })
        .collect()
    }

    async fn event_names(&self) -> Result<Vec<(i64, String)>> {
        Ok(self
            .rows(sql::EVENT_NAMES.postgres(), &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn user_events(
        &self,
        user_id: &UserId,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        self.rows(
            &format!(
                "{EVENT_SELECT} WHERE u.user_id = $1 AND e.ts <= $2 ORDER BY e.ts, e.seq LIMIT $3"
            ),
            &[&user_id.as_str(), &until, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(stored_event)
        .collect()
    }
}

#[async_trait]
impl Users for PgStore {
    fn dialect(&self) -> stratify_core::rules::sql::Dialect {
        stratify_core::rules::sql::Dialect::Postgres
    }

    async fn write_user(
        &self,
        user_id: UserId,
        attributes: Attributes,
        mode: WriteMode,
        now: Millis,
    ) -> Result<UserRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Row lock: concurrent merges of one user must not lose each other.
        let existing = tx
            .query_opt(
                "SELECT attributes FROM users WHERE user_id = $1 FOR UPDATE",
                &[&user_id.as_str()],
            )
            .await?
            .map(|r| r.get::<_, Value>(0));
        let merged = match (mode, existing) {
            (WriteMode::Create, Some(_)) => {
                return Err(StoreError::Conflict(format!("user '{user_id}'")))
            }
            (WriteMode::Merge, None) => {
                return Err(StoreError::NotFound(format!("user '{user_id}'")))
            }
            (WriteMode::Merge, Some(Value::Object(mut current))) => {
                merge_into(&mut current, &attributes);
                current
            }
            (WriteMode::Merge, Some(_)) => {
                return Err(StoreError::Corrupt(
                    "user attributes are not an object".into(),
                ))
            }
            (_, _) => without_nulls(attributes),
        };
        save_attributes(&*tx, user_id.as_str(), &merged, now).await?;
        let user = user_row(&*tx, user_id.as_str())
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished during a write".into()))?;
        tx.commit().await?;
        Ok(user)
    }

    async fn merge_users(&self, users: Arc<Vec<(UserId, Attributes)>>, now: Millis) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut changed = 0;
        for (user_id, attributes) in users.iter() {
            let existing = user_row(&*tx, user_id.as_str())
                .await?
                .map(|u| u.attributes);
            let mut merged = existing.clone().unwrap_or_default();
            merge_into(&mut merged, attributes);
            if existing.as_ref() != Some(&merged) {
                save_attributes(&*tx, user_id.as_str(), &merged, now).await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        let client = self.client().await?;
        user_row(&**client, user_id.as_str()).await
    }

    async fn delete_user(&self, user_id: &UserId, now: Millis) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Serialised with appends: one that interned this user before the
        // erasure sees the epoch move and checks its users again.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
            .await?;
        let id = user_id.as_str();
        let Some(uid) = tx
            .query_opt("DELETE FROM users WHERE user_id = $1 RETURNING uid", &[&id])
            .await?
            .map(|r| r.get::<_, i64>(0))
        else {
            return Ok(false);
        };
        tx.execute(sql::DELETE_USER_EVENTS.postgres(), &[&uid])
            .await?;
        tx.execute(sql::DELETE_USER_MEMBERSHIPS.postgres(), &[&uid])
            .await?;
        tx.execute(sql::DELETE_USER_ASSIGNMENTS.postgres(), &[&id])
            .await?;
        tx.execute(sql::DELETE_USER_BANNERS.postgres(), &[&id])
            .await?;
        tx.execute(sql::DELETE_USER_CHANGES.postgres(), &[&id])
            .await?;
        // Numbered in commit order (followers read by number).
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ERASURES_LOCK])
            .await?;
        tx.execute(
            sql::PRUNE_ERASURES.postgres(),
            &[&(now - crate::ERASURE_MEMORY_MS)],
        )
        .await?;
        let aliases: Vec<String> = tx
            .query(sql::USER_ALIASES.postgres(), &[&id])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(sql::DELETE_USER_ALIASES.postgres(), &[&id])
            .await?;
        for gone in std::iter::once(id).chain(aliases.iter().map(String::as_str)) {
            tx.execute(sql::INSERT_ERASURE.postgres(), &[&gone, &now])
                .await?;
        }
        tx.execute("UPDATE user_epoch SET epoch = epoch + 1", &[])
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn erasures_after(&self, after: i64, limit: u32) -> Result<Vec<UserGone>> {
        self.all(&sql::ERASURES_AFTER, &[&after, &i64::from(limit)], |r| {
            Ok(UserGone {
                seq: r.try_get(0)?,
                user_id: r.try_get(1)?,
                merged_into: r.try_get(2)?,
            })
        })
        .await
    }

    async fn identify(
        &self,
        anonymous: &UserId,
        known: &UserId,
        now: Millis,
    ) -> Result<Identified> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Serialised with appends (see `user_epoch`) and numbered in the
        // log of departed users in commit order.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
            .await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ERASURES_LOCK])
            .await?;
        let anonymous = anonymous.as_str();
        let alias_target = |id: &str| {
            let tx = &tx;
            let id = id.to_owned();
            async move {
                Ok::<Option<String>, StoreError>(
                    tx.query_opt(sql::ALIAS_TARGET.postgres(), &[&id])
                        .await?
                        .map(|r| r.get(0)),
                )
            }
        };
        let into = match merge_target(
            anonymous,
            known.as_str(),
            alias_target(anonymous).await?,
            alias_target(known.as_str()).await?,
        ) {
            Ok(into) => into,
            Err(answer) => return Ok(answer),
        };
        let known = into.as_str();
        let uid_of = |id: &str| {
            let tx = &tx;
            let id = id.to_owned();
            async move {
                Ok::<Option<i64>, StoreError>(
                    tx.query_opt(
                        "SELECT uid FROM users WHERE user_id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await?
                    .map(|r| r.get(0)),
                )
            }
        };
        let visitor_uid = uid_of(anonymous).await?;
        let known_uid = uid_of(known).await?;
        let mut merge = Merge {
            anonymous_uid: visitor_uid,
            known_uid: 0,
            user: UserRecord::default(),
            events_moved: 0,
            duplicates_dropped: 0,
            assignments_moved: 0,
            aliases_moved: tx
                .query(sql::USER_ALIASES.postgres(), &[&anonymous])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        match (visitor_uid, known_uid) {
            (Some(v), None) => {
                tx.execute(sql::RENAME_USER.postgres(), &[&v, &known, &now])
                    .await?;
                merge.known_uid = v;
                merge.events_moved = tx
                    .query_one(sql::USER_EVENT_COUNT.postgres(), &[&v])
                    .await?
                    .get::<_, i64>(0) as u64;
                merge.assignments_moved = held_assignments(&*tx, anonymous).await?.len() as u64;
                tx.execute(sql::RENAME_ASSIGNMENTS.postgres(), &[&anonymous, &known])
                    .await?;
                tx.execute(sql::MOVE_BANNERS.postgres(), &[&anonymous, &known])
                    .await?;
                tx.execute(sql::DELETE_USER_BANNERS.postgres(), &[&anonymous])
                    .await?;
            }
            (Some(v), Some(k)) => {
                merge.known_uid = k;
                merge.duplicates_dropped = tx
                    .execute(sql::DROP_DUPLICATE_EVENTS.postgres(), &[&v, &k])
                    .await?;
                merge.events_moved = tx.execute(sql::MOVE_EVENTS.postgres(), &[&v, &k]).await?;
                lock_assignments(&*tx).await?;
                let visitor = held_assignments(&*tx, anonymous).await?;
                if !visitor.is_empty() {
                    let (person, moved) =
                        packed::merged(visitor, held_assignments(&*tx, known).await?, known);
                    merge.assignments_moved = moved;
                    for user in [anonymous, known] {
                        tx.execute(sql::DELETE_USER_ASSIGNMENTS.postgres(), &[&user])
                            .await?;
                    }
                    let refs: Vec<&AssignmentRecord> = person.iter().collect();
                    let records = packed::pack(&refs)?
                        .into_iter()
                        .map(|(at, entries)| (known, at, entries))
                        .collect();
                    append_assignments(&*tx, records).await?;
                }
                tx.execute(sql::MOVE_BANNERS.postgres(), &[&anonymous, &known])
                    .await?;
                tx.execute(sql::DELETE_USER_BANNERS.postgres(), &[&anonymous])
                    .await?;
                tx.execute(sql::MOVE_MEMBERS.postgres(), &[&v, &k]).await?;
                tx.execute(sql::DELETE_USER_MEMBERSHIPS.postgres(), &[&v])
                    .await?;
                let visitor = user_row(&*tx, anonymous).await?.unwrap_or_default();
                let person = user_row(&*tx, known).await?.unwrap_or_default();
                let attributes = merged_attributes(visitor.attributes, person.attributes);
                save_attributes(&*tx, known, &attributes, now).await?;
                tx.execute(sql::EARLIER_CREATED.postgres(), &[&k, &visitor.created_at])
                    .await?;
                tx.execute(sql::DELETE_USER_ROW.postgres(), &[&v]).await?;
            }
            (None, known_uid) => {
                merge.known_uid = match known_uid {
                    Some(k) => k,
                    None => uids(&*tx, &[known], now).await?[0],
                };
            }
        }
        tx.execute(sql::REPOINT_ALIASES.postgres(), &[&anonymous, &known])
            .await?;
        tx.execute(sql::INSERT_ALIAS.postgres(), &[&anonymous, &known, &now])
            .await?;
        tx.execute(
            sql::PRUNE_ERASURES.postgres(),
            &[&(now - crate::ERASURE_MEMORY_MS)],
        )
        .await?;
        tx.execute(sql::INSERT_MERGE.postgres(), &[&anonymous, &now, &known])
            .await?;
        tx.execute("UPDATE user_epoch SET epoch = epoch + 1", &[])
            .await?;
        merge.user = user_row(&*tx, known)
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished during a merge".into()))?;
        tx.commit().await?;
        Ok(Identified::Merged(Box::new(merge)))
    }

    async fn aliases(&self) -> Result<Vec<(String, String)>> {
        self.all(&sql::ALIASES, &[], |r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .await
    }

    async fn resolve_aliases(&self, ids: Vec<String>) -> Result<Vec<(String, String)>> {
        Ok(self
            .rows(
                "SELECT alias, user_id FROM aliases WHERE alias = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn last_erasure_seq(&self) -> Result<i64> {
        Ok(self
            .rows(sql::LAST_ERASURE_SEQ.postgres(), &[])
            .await?
            .first()
            .map_or(0, |r| r.get(0)))
    }

    async fn user_ids_after(&self, after_uid: i64, limit: u32) -> Result<Vec<(i64, String)>> {
        Ok(self
            .rows(
                sql::USER_IDS_AFTER.postgres(),
                &[&after_uid, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn users_page(&self, after_uid: i64, limit: u32) -> Result<Vec<(i64, UserRecord)>> {
        self.rows(sql::USERS_PAGE.postgres(), &[&after_uid, &i64::from(limit)])
            .await?
            .iter()
            .map(|r| Ok((r.get(0), user_record(r, 1)?)))
            .collect()
    }

    async fn select_users(
        &self,
        predicate: Compiled,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<String>, u64)> {
        let binds: Vec<Bind<'_>> = predicate.params.iter().map(Bind).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
        let client = self.client().await?;
        let total: i64 = client
            .query_one(
                &format!(
                    "{}SELECT COUNT(*) FROM users u WHERE {}",
                    predicate.with, predicate.sql
                ),
                &params,
            )
            .await?
            .get(0);
        let mut sql = format!(
            "{}SELECT u.user_id FROM users u WHERE {}",
            predicate.with, predicate.sql
        );
        if let Some(a) = &after {
            params.push(a);
            sql.push_str(&format!(" AND u.user_id COLLATE \"C\" > ${}", params.len()));
        }
        let limit = i64::from(limit);
        params.push(&limit);
        sql.push_str(&format!(
            " ORDER BY u.user_id COLLATE \"C\" LIMIT ${}",
            params.len()
        ));
        let ids = client
            .query(&sql, &params)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok((ids, total as u64))
    }
}

#[async_trait]
impl Configuration for PgStore {
    async fn put_event_type(
        &self,
        schema: EventTypeSchema,
        now: Millis,
    ) -> Result<EventTypeRecord> {
        let json = serde_json::to_string(&schema)?;
        let name = schema.name.clone();
        let created_at: i64 = self
            .config_write(move |tx| -> Boxed<'_, i64> {
                Box::pin(async move {
                    Ok(tx
                        .query_one(&UPSERT_EVENT_TYPE, &[&name, &json, &now])
                        .await?
                        .get(0))
                })
            })
            .await?;
        Ok(EventTypeRecord {
            schema,
            created_at,
            updated_at: now,
        })
    }

    async fn list_event_types(&self) -> Result<Vec<EventTypeRecord>> {
        self.all(&sql::EVENT_TYPES, &[], rows::event_type).await
    }

    async fn delete_event_type(&self, name: &str) -> Result<bool> {
        Ok(self
            .config_execute(&sql::DELETE_EVENT_TYPE, &[&name])
            .await?
            == 1)
    }

    async fn put_attribute_schema(&self, schema: AttributeSchema, now: Millis) -> Result<()> {
        let json = serde_json::to_string(&schema)?;
        self.config_write(move |tx| -> Boxed<'_, ()> {
            Box::pin(async move {
                tx.execute(&sql::UPSERT_SETTING, &[&ATTRIBUTE_SCHEMA_KEY, &json, &now])
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn attribute_schema(&self) -> Result<AttributeSchema> {
        let rows = self
            .rows(sql::READ_SETTING.postgres(), &[&ATTRIBUTE_SCHEMA_KEY])
            .await?;
        Ok(match rows.first() {
            Some(r) => serde_json::from_str(r.get(0))?,
            None => AttributeSchema::default(),
        })
    }

    async fn static_members(&self, segment_id: &str) -> Result<Vec<String>> {
        Ok(self
            .rows(sql::STATIC_MEMBERS.postgres(), &[&segment_id])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn create_segment(&self, seg: SegmentRecord, members: Vec<UserId>) -> Result<()> {
        let rules = seg.rules.as_ref().map(serde_json::to_string).transpose()?;
        self.config_write(move |tx| -> Boxed<'_, ()> {
            Box::pin(async move {
                tx.execute(
                    &sql::INSERT_SEGMENT,
                    &[
                        &seg.id,
                        &seg.name,
                        &seg.description,
                        &seg.kind,
                        &rules,
                        &seg.version,
                        &seg.created_at,
                        &seg.created_by,
                    ],
                )
                .await
                .map_err(|e| conflict(e, format!("a segment named '{}'", seg.name)))?;
                tx.execute(
                    &sql::INSERT_SEGMENT_VERSION,
                    &[
                        &seg.id,
                        &seg.version,
                        &seg.name,
                        &seg.description,
                        &rules,
                        &seg.created_at,
                        &seg.created_by,
                    ],
                )
                .await?;
                add_member_rows(tx, &seg.id, &members, seg.created_at).await?;
                Ok(())
            })
        })
        .await
    }

    async fn update_segment(&self, seg: SegmentRecord) -> Result<()> {
        let rules = seg.rules.as_ref().map(serde_json::to_string).transpose()?;
        self.config_write(move |tx| -> Boxed<'_, ()> {
            Box::pin(async move {
                let changed = tx
                    .execute(
                        &sql::UPDATE_SEGMENT,
                        &[
                            &seg.id,
                            &seg.name,
                            &seg.description,
                            &rules,
                            &seg.version,
                            &seg.updated_at,
                            &seg.updated_by,
                        ],
                    )
                    .await
                    .map_err(|e| conflict(e, format!("a segment named '{}'", seg.name)))?;
                if changed == 0 {
                    return Err(StoreError::NotFound(format!("segment '{}'", seg.id)));
                }
                tx.execute(
                    &sql::INSERT_SEGMENT_VERSION,
                    &[
                        &seg.id,
                        &seg.version,
                        &seg.name,
                        &seg.description,
                        &rules,
                        &seg.updated_at,
                        &seg.updated_by,
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn segments(&self) -> Result<Vec<SegmentRecord>> {
        self.all(&sql::SEGMENTS, &[], rows::segment).await
    }

    async fn segment_versions(&self, id: &str) -> Result<Vec<SegmentVersion>> {
        self.all(&sql::SEGMENT_VERSIONS, &[&id], rows::segment_version)
            .await
    }

    async fn delete_segment(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.config_write(move |tx| -> Boxed<'_, bool> {
            Box::pin(async move {
                let n = tx.execute(&sql::DELETE_SEGMENT, &[&id]).await?;
                tx.execute(&sql::DELETE_SEGMENT_VERSIONS, &[&id]).await?;
                tx.execute(&sql::DELETE_SEGMENT_MEMBERS, &[&id]).await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn add_members(&self, segment_id: &str, users: Vec<UserId>, now: Millis) -> Result<u64> {
        let segment_id = segment_id.to_owned();
        self.config_write(move |tx| -> Boxed<'_, u64> {
            Box::pin(async move { add_member_rows(tx, &segment_id, &users, now).await })
        })
        .await
    }

    async fn remove_members(&self, segment_id: &str, users: Vec<UserId>) -> Result<u64> {
        let segment_id = segment_id.to_owned();
        let names: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.config_write(move |tx| -> Boxed<'_, u64> {
            Box::pin(async move { Ok(tx.execute(&REMOVE_MEMBERS, &[&segment_id, &names]).await?) })
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
        self.config_write(move |tx| -> Boxed<'_, u64> {
            Box::pin(async move {
                tx.execute(&sql::DELETE_SEGMENT_MEMBERS, &[&segment_id])
                    .await?;
                add_member_rows(tx, &segment_id, &users, now).await
            })
        })
        .await
    }

    async fn static_memberships(&self, user_id: &UserId) -> Result<Vec<String>> {
        Ok(self
            .rows(sql::STATIC_MEMBERSHIPS.postgres(), &[&user_id.as_str()])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn create_experiment(&self, e: ExperimentRecord) -> Result<()> {
        let definition = serde_json::to_string(&e.definition)?;
        self.config_execute(
            &sql::INSERT_EXPERIMENT,
            &[
                &e.id,
                &e.key,
                &e.name,
                &e.status,
                &definition,
                &e.version,
                &e.created_at,
                &e.updated_at,
                &e.created_by,
                &e.updated_by,
            ],
        )
        .await
        .map_err(|err| conflict(err, format!("an experiment with key '{}'", e.key)))?;
        Ok(())
    }

    async fn update_experiment(&self, e: ExperimentRecord) -> Result<()> {
        let definition = serde_json::to_string(&e.definition)?;
        self.config_write(move |tx| -> Boxed<'_, ()> {
            Box::pin(async move {
                let n = tx
                    .execute(
                        &sql::UPDATE_EXPERIMENT,
                        &[
                            &e.id,
                            &e.name,
                            &definition,
                            &e.version,
                            &e.updated_at,
                            &e.updated_by,
                        ],
                    )
                    .await?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("experiment '{}'", e.id)));
                }
                Ok(())
            })
        })
        .await
    }

    async fn experiments(&self) -> Result<Vec<ExperimentRecord>> {
        self.all(&sql::EXPERIMENTS, &[], rows::experiment).await
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
        self.config_write(move |tx| -> Boxed<'_, bool> {
            Box::pin(async move {
                let n = tx
                    .execute(&sql::MOVE_EXPERIMENT, &[&id, &from, &to, &at])
                    .await?;
                if n == 1 {
                    tx.execute(&sql::INSERT_TRANSITION, &[&id, &from, &to, &at, &by])
                        .await?;
                }
                Ok(n == 1)
            })
        })
        .await
    }

    async fn experiment_transitions(&self, id: &str) -> Result<Vec<TransitionRecord>> {
        self.rows(
            "SELECT from_status, to_status, at, by FROM experiment_transitions WHERE experiment_id = $1 ORDER BY at, id",
            &[&id],
        )
        .await?
        .iter()
        .map(rows::transition)
        .collect()
    }

    async fn config_version(&self) -> Result<i64> {
        Ok(self
            .rows("SELECT version FROM config_version WHERE id = 1", &[])
            .await?[0]
            .get(0))
    }
}

#[async_trait]
impl Keys for PgStore {
    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<()> {
        self.config_execute(
            &sql::INSERT_API_KEY,
            &[
                &key.id,
                &key.name,
                &key.role,
                &key.key_hash,
                &key.created_at,
                &key.revoked_at,
            ],
        )
        .await
        .map_err(|e| conflict(e, format!("api key '{}'", key.id)))?;
        Ok(())
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.all(&sql::API_KEYS, &[], rows::api_key).await
    }

    async fn revoke_api_key(&self, id: &str, now: Millis) -> Result<bool> {
        let id = id.to_owned();
        Ok(self
            .config_execute(&sql::REVOKE_API_KEY, &[&id, &now])
            .await?
            == 1)
    }
}

#[async_trait]
impl ChangeLog for PgStore {
    async fn apply_changes(
        &self,
        changes: Arc<Vec<ChangeRecord>>,
        watermark: Watermark,
        node: Option<&str>,
    ) -> Result<Arc<Vec<ChangeRecord>>> {
        let mark = serde_json::to_string(&watermark)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGES_LOCK])
            .await?;
        let last: i64 = tx
            .query_one(sql::LAST_CHANGE_SEQ.postgres(), &[])
            .await?
            .get(0);
        let numbered: Vec<ChangeRecord> = changes
            .iter()
            .zip(last + 1..)
            .map(|(c, seq)| ChangeRecord { seq, ..c.clone() })
            .collect();
        let mut cols = ChangeColumns::default();
        for c in &numbered {
            cols.push(c);
        }
        tx.execute(
            "INSERT INTO changes (seq, segment_id, user_id, entered, at, cause, event_seq, event_id) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::boolean[], $5::bigint[], $6::bigint[], $7::bigint[], $8::text[])",
            &[&cols.seq, &cols.segment_id, &cols.user_id, &cols.entered, &cols.at, &cols.cause, &cols.event_seq, &cols.event_id],
        )
        .await?;
        tx.execute(
            sql::UPSERT_LIVE_STATE.postgres(),
            &[&Watermark::key(node), &mark],
        )
        .await?;
        if node.is_some() {
            tx.execute(sql::DELETE_LIVE_STATE.postgres(), &[&Watermark::key(None)])
                .await?;
        }
        tx.commit().await?;
        Ok(Arc::new(numbered))
    }

    async fn watermark(&self, node: Option<&str>) -> Result<Option<Watermark>> {
        let rows = self
            .rows(sql::READ_LIVE_STATE.postgres(), &[&Watermark::key(node)])
            .await?;
        Ok(rows
            .first()
            .map(|r| serde_json::from_str(r.get(0)))
            .transpose()?)
    }

    async fn open_memberships(&self) -> Result<Vec<(String, String)>> {
        // A membership is open when its latest change is an entry.
        Ok(self
            .rows(
                "SELECT segment_id, user_id FROM (SELECT DISTINCT ON (segment_id, user_id) segment_id, user_id, entered \
                 FROM changes ORDER BY segment_id, user_id, seq DESC) latest WHERE entered",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn last_change_seq(&self) -> Result<i64> {
        Ok(self.rows(sql::LAST_CHANGE_SEQ.postgres(), &[]).await?[0].get(0))
    }

    async fn changes(
        &self,
        segments: Option<Vec<String>>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>> {
        self
            .rows(
                &format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > $1 AND ($2::text[] IS NULL OR segment_id = ANY($2)) \
                     ORDER BY seq LIMIT $3"
                ),
                &[&after, &segments, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(rows::change)
            .collect()
    }

    async fn latest_changes(&self, segment_id: &str, limit: u32) -> Result<Vec<ChangeRecord>> {
        self
            .rows(
                &format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE segment_id = $1 ORDER BY seq DESC LIMIT $2"),
                &[&segment_id, &i64::from(limit)],
            )
            .await?
            .iter()
            .map(rows::change)
            .collect()
    }

    async fn user_memberships(&self, user_id: &str, limit: u32) -> Result<Vec<MembershipRecord>> {
        let rows = self.rows(sql::USER_CHANGES.postgres(), &[&user_id]).await?;
        stays(
            rows.iter().map(|r| Ok((r.get(0), r.get(1), r.get(2)))),
            limit,
        )
    }

    async fn change_buckets(&self, segment_id: &str, bucket: Millis) -> Result<Vec<ChangeBucket>> {
        let bucket = bucket.max(1);
        Ok(self
            .rows(sql::CHANGE_BUCKETS.postgres(), &[&segment_id, &bucket])
            .await?
            .iter()
            .map(|r| ChangeBucket {
                start: r.get(0),
                entered: r.get::<_, i64>(1) as u64,
                exited: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }
}

#[async_trait]
impl Assignments for PgStore {
    async fn save_serving(
        &self,
        assignments: Arc<Vec<AssignmentRecord>>,
        mixtures: Arc<Vec<BannerMixtureRecord>>,
    ) -> Result<()> {
        if assignments.is_empty() && mixtures.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !assignments.is_empty() {
            let groups = packed::by_user(&assignments);
            let users: Vec<&str> = groups.iter().map(|(u, _)| *u).collect();
            lock_assignments(&*tx).await?;
            let mut held: std::collections::HashMap<String, Vec<packed::UserRecord>> =
                std::collections::HashMap::new();
            for r in tx
                .query(
                    "SELECT user_id, seq, at, entries FROM assignment_log WHERE user_id = ANY($1) ORDER BY seq",
                    &[&users],
                )
                .await?
            {
                held.entry(r.get(0))
                    .or_default()
                    .push((r.get(1), r.get(2), r.get(3)));
            }
            let mut records = Vec::new();
            for (user, new) in groups {
                let hold = packed::fold(user, held.get(user).map_or(&[], Vec::as_slice))?;
                for (at, entries) in packed::pack(&packed::fresh(&hold, new))? {
                    records.push((user, at, entries));
                }
            }
            append_assignments(&*tx, records).await?;
        }
        // One row per user per statement (ON CONFLICT touches a row once):
        // the last mixture of a user wins.
        let mut last: std::collections::HashMap<&str, &BannerMixtureRecord> = Default::default();
        for m in mixtures.iter() {
            last.insert(&m.user_id, m);
        }
        if !last.is_empty() {
            let users: Vec<&str> = last.keys().copied().collect();
            let json = last
                .values()
                .map(|m| serde_json::to_string(&m.mixture))
                .collect::<std::result::Result<Vec<String>, _>>()?;
            let at: Vec<i64> = last.values().map(|m| m.assigned_at).collect();
            let expires: Vec<i64> = last.values().map(|m| m.expires_at).collect();
            tx.execute(
                "INSERT INTO banner_mixtures (user_id, mixture, assigned_at, expires_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
                 ON CONFLICT (user_id) DO UPDATE SET mixture = excluded.mixture, \
                   assigned_at = excluded.assigned_at, expires_at = excluded.expires_at",
                &[&users, &json, &at, &expires],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn served_user_ids(&self, sink: IdSink) -> Result<()> {
        let client = self.client().await?;
        for statement in [&sql::ASSIGNED_USERS, &sql::MIXTURE_USERS] {
            let stmt = client.prepare_cached(statement.postgres()).await?;
            let stream = client
                .query_raw(&stmt, std::iter::empty::<&(dyn ToSql + Sync)>())
                .await?;
            pin_mut!(stream);
            while let Some(r) = stream.try_next().await? {
                sink(r.get(0));
            }
        }
        Ok(())
    }

    async fn serving_state(
        &self,
        user_id: &str,
    ) -> Result<(Vec<AssignmentRecord>, Option<BannerMixtureRecord>)> {
        let client = self.client().await?;
        let a = client
            .prepare_cached(sql::USER_ASSIGNMENTS.postgres())
            .await?;
        let m = client.prepare_cached(sql::USER_BANNERS.postgres()).await?;
        // Both reads in flight at once on one connection (pipelined).
        let params: [&(dyn ToSql + Sync); 1] = [&user_id];
        let (assignments, mixture) =
            tokio::try_join!(client.query(&a, &params), client.query_opt(&m, &params))?;
        let mixture = mixture
            .map(|r| {
                Ok::<_, StoreError>(BannerMixtureRecord {
                    user_id: user_id.to_owned(),
                    mixture: serde_json::from_str(r.get(0))?,
                    assigned_at: r.get(1),
                    expires_at: r.get(2),
                })
            })
            .transpose()?;
        let records: Vec<packed::UserRecord> = assignments
            .iter()
            .map(rows::assignment_record)
            .collect::<Result<_>>()?;
        Ok((packed::fold(user_id, &records)?, mixture))
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
        let client = self.client().await?;
        let max_uid: i64 = client.query_one(sql::MAX_UID.postgres(), &[]).await?.get(0);
        let stmt = client
            .prepare_cached(sql::ASSIGNMENT_LOG.postgres())
            .await?;
        let params: [&(dyn ToSql + Sync); 1] = [&after_seq];
        let stream = client.query_raw(&stmt, params).await?;
        pin_mut!(stream);
        let mut read = packed::ExposureReader::new(experiment_id, bucket_version, after_seq);
        while let Some(r) = stream.try_next().await? {
            read.record(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))?;
        }
        let mut out = read.finish();
        out.max_uid = max_uid;
        Ok(out)
    }
}

/// A user's assignments, folded from their records (see `packed`).
async fn held_assignments<C: GenericClient>(c: &C, user_id: &str) -> Result<Vec<AssignmentRecord>> {
    let records: Vec<packed::UserRecord> = c
        .query(sql::USER_ASSIGNMENTS.postgres(), &[&user_id])
        .await?
        .iter()
        .map(rows::assignment_record)
        .collect::<Result<_>>()?;
    packed::fold(user_id, &records)
}

/// Takes the assignments lock until the commit: from reading what users
/// hold to appending, another node's write of the same users waits, and
/// numbers become visible in order (see `Assignments::exposures_since`).
async fn lock_assignments<C: GenericClient>(c: &C) -> Result<()> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&ASSIGNMENTS_LOCK])
        .await?;
    Ok(())
}

/// Appends assignment records (user, at, entries) with the user's number;
/// the transaction holds the assignments lock ([`lock_assignments`]).
async fn append_assignments<C: GenericClient>(
    c: &C,
    records: Vec<(&str, Millis, Vec<u8>)>,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = records.iter().map(|r| r.0).collect();
    let at: Vec<i64> = records.iter().map(|r| r.1).collect();
    let entries: Vec<&[u8]> = records.iter().map(|r| r.2.as_slice()).collect();
    c.execute(
        "INSERT INTO assignment_log (seq, user_id, uid, at, entries) \
         SELECT nextval('assignment_seq'), r.u, (SELECT uid FROM users WHERE user_id = r.u), r.t, r.e \
         FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS r(u, t, e)",
        &[&users, &at, &entries],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl Metrics for PgStore {
    async fn scan_metric_events(&self, scan: MetricScan, sink: MetricSink) -> Result<ScanOutcome> {
        let client = self.client().await?;
        let head = client
            .query_one(
                "SELECT (SELECT id FROM event_names WHERE name = $1), (SELECT COALESCE(MAX(seq), 0) FROM events)",
                &[&scan.event],
            )
            .await?;
        let (name_id, max_seq): (Option<i64>, i64) = (head.get(0), head.get(1));
        let low = scan.after_seq.max(0);
        let Some(name_id) = name_id.filter(|_| low < max_seq) else {
            return Ok(ScanOutcome {
                events: 0,
                through_seq: max_seq.max(scan.after_seq),
            });
        };
        let key = scan.property.clone();
        let stmt = client
            .prepare_cached(
                "SELECT uid, ts, CASE WHEN jsonb_typeof(properties -> $6::text) = 'number' \
                   THEN (properties ->> $6::text)::float8 END FROM events \
                 WHERE seq > $1 AND seq <= $2 AND name_id = $3 AND ts >= $4 AND ts <= $5",
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 6] =
            [&low, &max_seq, &name_id, &scan.since, &scan.until, &key];
        let stream = client.query_raw(&stmt, params).await?;
        pin_mut!(stream);
        let mut chunks = Chunks::new(&sink);
        while let Some(r) = stream.try_next().await? {
            chunks.push(MetricEvent {
                uid: r.get(0),
                ts: r.get(1),
                value: r.get(2),
            });
        }
        Ok(ScanOutcome {
            events: chunks.finish(),
            through_seq: max_seq,
        })
    }

    async fn create_metric(&self, m: MetricRecord) -> Result<()> {
        let definition = serde_json::to_string(&m.definition)?;
        self.config_execute(
            &sql::INSERT_METRIC,
            &[&m.key, &definition, &m.created_at, &m.updated_at],
        )
        .await
        .map_err(|e| conflict(e, format!("a metric with key '{}'", m.key)))?;
        Ok(())
    }

    async fn metrics(&self) -> Result<Vec<MetricRecord>> {
        self.all(&sql::METRICS, &[], rows::metric).await
    }

    async fn delete_metric(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        Ok(self.config_execute(&sql::DELETE_METRIC, &[&key]).await? > 0)
    }
}

#[async_trait]
impl Webhooks for PgStore {
    async fn create_webhook(&self, hook: WebhookRecord) -> Result<()> {
        let segments = hook
            .segment_ids
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        self.config_execute(
            &sql::INSERT_WEBHOOK,
            &[
                &hook.id,
                &hook.url,
                &segments,
                &hook.secret,
                &hook.created_at,
                &hook.delivered_seq,
            ],
        )
        .await?;
        Ok(())
    }

    async fn webhooks(&self) -> Result<Vec<WebhookRecord>> {
        self.all(&sql::WEBHOOKS, &[], rows::webhook).await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        Ok(self.config_execute(&sql::DELETE_WEBHOOK, &[&id]).await? == 1)
    }

    async fn record_delivery(
        &self,
        id: &str,
        delivered_seq: i64,
        failures: i64,
        last_error: Option<String>,
        at: Millis,
    ) -> Result<()> {
        self.execute(
            sql::RECORD_DELIVERY.postgres(),
            &[&id, &delivered_seq, &failures, &last_error, &at],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Coordination for PgStore {
    async fn save_partition_progress(&self, progress: Vec<PartitionProgress>) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::UPSERT_PARTITION.postgres())
            .await?;
        for p in &progress {
            client
                .execute(
                    &stmt,
                    &[
                        &p.topic,
                        &p.partition,
                        &p.committed,
                        &p.high_water,
                        &p.node,
                        &p.updated_at,
                    ],
                )
                .await?;
        }
        Ok(())
    }

    async fn partition_progress(&self) -> Result<Vec<PartitionProgress>> {
        self.all(&sql::PARTITIONS, &[], rows::partition).await
    }

    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<Option<i64>> {
        let rows = self
            .rows(HOLD_LEASE, &[&name, &holder, &now, &until])
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn advance_lease(&self, name: &str, holder: &str, cursor: i64) -> Result<bool> {
        Ok(self
            .execute(ADVANCE_LEASE, &[&name, &holder, &cursor])
            .await?
            == 1)
    }
}

/// The change log's columns, for one `unnest` insert.
#[derive(Default)]
struct ChangeColumns<'a> {
    seq: Vec<i64>,
    segment_id: Vec<&'a str>,
    user_id: Vec<&'a str>,
    entered: Vec<bool>,
    at: Vec<i64>,
    cause: Vec<i64>,
    event_seq: Vec<Option<i64>>,
    event_id: Vec<Option<&'a str>>,
}

impl<'a> ChangeColumns<'a> {
    fn push(&mut self, c: &'a ChangeRecord) {
        let (event_seq, event_id) = match &c.cause {
            Cause::Event { seq, event_id } => (Some(*seq), event_id.as_deref()),
            _ => (None, None),
        };
        self.seq.push(c.seq);
        self.segment_id.push(&c.segment_id);
        self.user_id.push(&c.user_id);
        self.entered.push(c.entered);
        self.at.push(c.at);
        self.cause.push(c.cause.code());
        self.event_seq.push(event_seq);
        self.event_id.push(event_id);
    }
}

#[async_trait]
impl AuditLog for PgStore {
    async fn append_audit(&self, e: AuditRecord) -> Result<()> {
        self.execute(
            sql::INSERT_AUDIT.postgres(),
            &[
                &e.at,
                &e.key_id,
                &e.action,
                &e.target_kind,
                &e.target_id,
                &e.changes.to_string(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn audit_entries(
        &self,
        target: Option<String>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.all(
            &sql::AUDIT_ENTRIES,
            &[&target, &before, &i64::from(limit)],
            rows::audit,
        )
        .await
    }
}

#[async_trait]
impl DashboardSessions for PgStore {
    async fn create_session(&self, session: SessionRecord, now: Millis, max: u32) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(sql::DELETE_EXPIRED_SESSIONS.postgres(), &[&now])
            .await?;
        let live: i64 = tx
            .query_one(sql::COUNT_SESSIONS.postgres(), &[])
            .await?
            .get(0);
        if live >= i64::from(max) {
            tx.execute(sql::DELETE_OLDEST_SESSION.postgres(), &[])
                .await?;
        }
        tx.execute(
            sql::INSERT_SESSION.postgres(),
            &[
                &session.token_hash,
                &session.key_id,
                &session.csrf,
                &session.expires_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, token_hash: Vec<u8>, now: Millis) -> Result<Option<SessionRecord>> {
        Ok(self
            .all(&sql::SESSION, &[&token_hash, &now], rows::session)
            .await?
            .pop())
    }

    async fn delete_session(&self, token_hash: Vec<u8>) -> Result<()> {
        self.execute(sql::DELETE_SESSION.postgres(), &[&token_hash])
            .await?;
        Ok(())
    }
}
