//! The single writer with group commit.
//!
//! SQLite allows one writer at a time, so all writes go through one thread
//! that owns the write connection. It blocks for the first job, drains
//! whatever else has queued (up to [`MAX_GROUP`]), runs each job in its own
//! savepoint (a failing job rolls back alone), commits once (one fsync for
//! the group) and only then answers every job: nothing is acknowledged before
//! it is durable, and a failed commit fails every job of the group.

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed together.
const MAX_GROUP: usize = 512;
/// Queue depth before writers wait (back-pressure instead of unbounded memory).
const QUEUE: usize = 1024;
/// Interned ids cached by the writer; past this the caches start over.
pub(crate) const MAX_CACHED_IDS: usize = 2_000_000;

/// The writer's connection and its caches of interned ids. Caches are only
/// trusted for committed rows: they are cleared whenever a job or a commit
/// fails, since a rollback may have undone an insert they remember.
pub struct WriterState {
    pub conn: Connection,
    /// foldhash: fast, and seeded per process so clients cannot aim collisions.
    pub uids: IdCache,
    pub name_ids: IdCache,
    /// The log's idempotency keys while a bulk append has dropped its
    /// indexes (see `bulk`).
    pub(crate) bulk: Option<crate::bulk::BulkKeys>,
}

pub type IdCache = HashMap<String, i64, foldhash::fast::RandomState>;

type Completion = Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>;
type Job = Box<dyn FnOnce(&mut WriterState) -> (bool, Completion) + Send>;

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread. It stops when every `Writer` is dropped,
    /// after committing what was queued.
    pub fn start(conn: Connection, name: &str) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let state = WriterState {
            conn,
            uids: IdCache::default(),
            name_ids: IdCache::default(),
            bulk: None,
        };
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(state, rx))
            .unwrap_or_else(|e| panic!("cannot spawn the writer thread: {e}"));
        (Self { tx }, handle)
    }

    /// Runs `f` inside the next group transaction and returns its result once
    /// the group is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
    {
        self.write_then(f, |_: &T| {}).await
    }

    /// Like [`Writer::write`], and calls `after` with the result on the
    /// writer thread once it is committed (jobs' hooks run in commit order).
    pub async fn write_then<T, F, H>(&self, f: F, after: H) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriterState) -> Result<T> + Send + 'static,
        H: FnOnce(&T) + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |state| {
            let outcome = f(state);
            let ok = outcome.is_ok();
            let complete: Completion = Box::new(move |commit| {
                if let (Ok(()), Ok(value)) = (&commit, &outcome) {
                    after(value);
                }
                let _ = reply.send(match commit {
                    Ok(()) => outcome,
                    Err(e) => Err(StoreError::Commit(e)),
                });
            });
            (ok, complete)
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn run(mut state: WriterState, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    let mut completions = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let commit = commit_group(&mut state, &mut jobs, &mut completions);
        if commit.is_err() {
            clear_caches(&mut state);
        }
        for complete in completions.drain(..) {
            complete(commit.clone());
        }
    }
    tracing::debug!("writer stopped: every handle dropped");
}

fn commit_group(
    state: &mut WriterState,
    jobs: &mut Vec<Job>,
    completions: &mut Vec<Completion>,
) -> Result<(), Arc<rusqlite::Error>> {
    if let Err(e) = state.conn.execute_batch("BEGIN IMMEDIATE") {
        // Dropping the jobs unanswered fails their callers with `Closed`.
        jobs.clear();
        tracing::error!(error = %e, "cannot begin a write transaction");
        return Err(Arc::new(e));
    }
    for job in jobs.drain(..) {
        let savepoint = state.conn.execute_batch("SAVEPOINT job");
        let (ok, complete) = job(state);
        if savepoint.is_ok() {
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = state.conn.execute_batch(end) {
                tracing::error!(error = %e, "savepoint failed");
            }
        }
        if !ok {
            clear_caches(state);
        }
        completions.push(complete);
    }
    state.conn.execute_batch("COMMIT").map_err(|e| {
        tracing::error!(error = %e, "group commit failed; rolling back");
        let _ = state.conn.execute_batch("ROLLBACK");
        Arc::new(e)
    })
}

fn clear_caches(state: &mut WriterState) {
    state.uids.clear();
    state.name_ids.clear();
    if let Some(bulk) = &mut state.bulk {
        bulk.stale = true;
    }
}
