//! Bulk appends on SQLite (a large import): the event log's two per-user
//! indexes are dropped for the duration and built once at the end, by a sort,
//! instead of being kept up row by row.
//!
//! Why: an import spreads each batch over every user, so each commit dirties
//! nearly every leaf page of both indexes. At 1 M users and 10 M events that
//! wrote 22.7 GB (WAL frames, then checkpoints) for a 1.2 GB file; without
//! the indexes the same import takes half the time, and building both
//! afterwards takes about 1.1 µs per stored event.
//!
//! While the indexes are gone, the writer keeps the idempotency keys of the
//! log, `(uid, dedupe) → seq`, in memory ([`BulkKeys`]), so a row imported
//! twice is still stored once, and the unique index is built over keys that
//! are unique. The keys are trusted only for committed rows: a failed job or
//! commit marks them stale and they are read again from the table.
//!
//! Safety: the store holds a shared lock on `stratify.lock` for as long as
//! it is open; a bulk append needs the exclusive lock, so it is declined
//! while another process has the store open, and no other process opens the
//! store while it runs (it would append without the unique index). A process
//! that dies mid-import leaves the indexes dropped: every open builds what is
//! missing ([`ensure_event_indexes`]) before anything reads or writes.

use crate::Result;
use rusqlite::Connection;
use std::collections::HashMap;

/// The event log's per-user indexes, exactly as migration 1 created them
/// (a test compares the two).
pub(crate) const EVENT_INDEXES: &str = "\
CREATE INDEX IF NOT EXISTS events_uid_ts ON events(uid, ts);
CREATE UNIQUE INDEX IF NOT EXISTS events_dedupe ON events(uid, dedupe) WHERE dedupe IS NOT NULL;";

const DROP_EVENT_INDEXES: &str =
    "DROP INDEX IF EXISTS events_uid_ts; DROP INDEX IF EXISTS events_dedupe;";

/// The log's idempotency keys, held while the indexes are dropped.
pub(crate) struct BulkKeys {
    keys: HashMap<(i64, i64), i64, foldhash::fast::RandomState>,
    /// A job or a commit failed since the keys were read: read them again.
    pub(crate) stale: bool,
}

impl BulkKeys {
    /// Reads every key of the log (through the unique index while it
    /// exists: a covering scan).
    pub(crate) fn read(conn: &Connection) -> Result<Self> {
        let mut keys = HashMap::default();
        let mut stmt =
            conn.prepare("SELECT uid, dedupe, seq FROM events WHERE dedupe IS NOT NULL")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            keys.insert((row.get(0)?, row.get(1)?), row.get(2)?);
        }
        Ok(Self { keys, stale: false })
    }

    /// The sequence number of the stored event with this key, if any.
    pub(crate) fn get(&self, uid: i64, dedupe: i64) -> Option<i64> {
        self.keys.get(&(uid, dedupe)).copied()
    }

    pub(crate) fn insert(&mut self, uid: i64, dedupe: i64, seq: i64) {
        self.keys.insert((uid, dedupe), seq);
    }
}

/// Drops the indexes (in the caller's transaction) and returns the keys.
pub(crate) fn begin(conn: &Connection) -> Result<BulkKeys> {
    let keys = BulkKeys::read(conn)?;
    conn.execute_batch(DROP_EVENT_INDEXES)?;
    Ok(keys)
}

/// Builds whichever of the event log's indexes is missing; returns whether
/// any was (a bulk append that did not end, or one that is ending).
pub(crate) fn ensure_event_indexes(conn: &Connection) -> Result<bool> {
    let present: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' \
         AND name IN ('events_uid_ts', 'events_dedupe')",
        [],
        |r| r.get(0),
    )?;
    if present == 2 {
        return Ok(false);
    }
    // The sorter may use a second thread while nothing else writes.
    conn.pragma_update(None, "threads", 2)?;
    let built = conn.execute_batch(EVENT_INDEXES);
    conn.pragma_update(None, "threads", 0)?;
    built?;
    Ok(true)
}
