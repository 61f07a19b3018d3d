//! The real-time engine: memberships that follow events and the clock.
//!
//! Every committed event reaches the live worker in sequence order (a commit
//! hook on the store's writer thread), updates that user's profile, and
//! re-evaluates only the segments that read its event name. For each
//! (user, segment) the core computes the next instant the result can change
//! with no new event ([`stratify_core::rules::next_change`]); those deadlines
//! live in one ordered index and the worker sleeps until the earliest.
//! Entered/exited changes are committed to the change log with the worker's
//! watermark, then published to subscribers (SSE, WebSocket, webhooks).
//!
//! Everything here is derived from the event log: on start the worker
//! resumes from its watermark, and `stratify rebuild` recomputes it all from
//! the log alone.

mod deadlines;
mod doc;
mod state;
mod view;
mod worker;

pub use state::MAX_USER_EVENTS;
pub use view::MemberView;

use crate::freshness::Freshness;
use crate::segments::{Catalog, MemberChange};
use crate::{Clock, EngineError};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use stratify_core::event::NewEvent;
use stratify_core::rules::Rule;
use stratify_core::time::Millis;
use stratify_store::{Appended, ChangeRecord, CommitHook, Store};
use tokio::sync::{broadcast, oneshot};

/// Which users this node owns when several nodes share the store (the
/// users of its Kafka partitions).
pub type Owns = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Batches of committed changes kept for slow subscribers before they lag
/// (and fall back to reading the log).
const FEED_CAPACITY: usize = 1024;
/// Committed events the worker may be behind before writers wait.
pub const MAX_LAG_EVENTS: usize = 20_000;

pub(crate) enum Msg {
    Events {
        events: Arc<Vec<NewEvent>>,
        appended: Vec<Appended>,
        /// The store's interned user id of each event.
        uids: Vec<i64>,
        received_at: Millis,
    },
    Attributes {
        user: String,
        attributes: Map<String, Value>,
        merge: bool,
        at: Millis,
    },
    UserDeleted(String),
    /// Identity stitching: the visitor's memberships end, and the person's
    /// profile (attributes, events, static segments as the store has them
    /// after the merge; `None` where this node does not own the person) is
    /// evaluated anew. Both with cause `identify`.
    Identify {
        anonymous: String,
        known: String,
        profile: Option<crate::identity::MergedProfile>,
        at: Millis,
    },
    SegmentPut {
        id: String,
        rule: Option<Arc<Rule>>,
    },
    StaticMembers {
        id: String,
        change: MemberChange,
        users: Vec<String>,
    },
    SegmentDeleted(String),
    Tick,
    Sync(oneshot::Sender<()>),
    Refresh(oneshot::Sender<u64>),
    Snapshot(oneshot::Sender<Snapshot>),
    Stop,
}

/// The state of a segment's evaluation over every user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildStatus {
    /// `building` or `ready`.
    pub state: &'static str,
    pub evaluated: u64,
    pub total: u64,
    /// Current members.
    pub size: u64,
    #[serde(skip)]
    pub started_at: Millis,
    #[serde(skip)]
    pub finished_at: Option<Millis>,
}

impl BuildStatus {
    fn ready(total: u64, at: Millis) -> Self {
        Self {
            state: "ready",
            evaluated: total,
            total,
            size: 0,
            started_at: at,
            finished_at: Some(at),
        }
    }
}

/// Counters for `/metrics` and status.
#[derive(Default)]
pub struct Stats {
    pub users: AtomicU64,
    pub deadlines: AtomicU64,
    pub truncated_users: AtomicU64,
    pub changes: AtomicU64,
    pub fired: AtomicU64,
    pub applied_seq: AtomicI64,
    pub last_change_seq: AtomicI64,
    pub watermark_at: AtomicI64,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub builds: RwLock<HashMap<String, BuildStatus>>,
    /// Current memberships for readers, following what is committed.
    pub view: Arc<MemberView>,
    pub freshness: Arc<Freshness>,
    pub stats: Stats,
    /// Changes handed to the committer, not yet durable.
    pub queued: std::sync::atomic::AtomicUsize,
    /// Committed events handed to the worker, not yet applied.
    pub lag: std::sync::atomic::AtomicUsize,
    /// This node's name when several share the store (the key of its
    /// watermark; see [`stratify_store::Watermark::key`]).
    pub node: Option<String>,
}

/// Every current membership and pending deadline, by ids (for comparing a
/// live state with one rebuilt from the log).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub members: BTreeMap<String, BTreeSet<String>>,
    pub deadlines: BTreeMap<(String, String), Millis>,
}

pub struct Live {
    tx: Mutex<Sender<Msg>>,
    /// The sender the clock's jump hook uses (replaced with `tx`).
    tick: Arc<Mutex<Sender<Msg>>>,
    feed: broadcast::Sender<Arc<Vec<ChangeRecord>>>,
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    thread: Mutex<Option<std::thread::JoinHandle<worker::Stopped>>>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the state is saved at shutdown and read at start (one node
    /// alone on its store; see [`crate::checkpoint`]).
    checkpoint: Option<PathBuf>,
}

impl Live {
    /// Loads the live state (resuming from the watermark, or from the whole
    /// log with `rebuild`) and starts the worker thread. A node of a
    /// cluster (`node`) starts owning nobody: it loads its users when the
    /// group assigns them ([`Live::reown`]), and never evaluates or
    /// commits changes for users another node owns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: &Catalog,
        rebuild: bool,
        freshness: Arc<Freshness>,
        view: Arc<MemberView>,
        node: Option<String>,
        checkpoint: Option<PathBuf>,
    ) -> Result<Self, EngineError> {
        let checkpoint = checkpoint.filter(|_| node.is_none());
        let owns: Option<Owns> = node.is_some().then(|| Arc::new(|_: &str| false) as Owns);
        let shared = Arc::new(Shared {
            freshness,
            view,
            node,
            ..Shared::default()
        });
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (tx, thread, committer) = Self::spawn(
            &store,
            &clock,
            catalog,
            &shared,
            &feed,
            rebuild,
            owns,
            checkpoint.as_deref(),
        )
        .await?;
        let tick_tx = Arc::new(Mutex::new(tx.clone()));
        let tick = tick_tx.clone();
        clock.on_jump(Box::new(move || {
            let _ = tick.lock().send(Msg::Tick);
        }));
        Ok(Self {
            tx: Mutex::new(tx),
            tick: tick_tx,
            feed,
            shared,
            store,
            clock,
            thread: Mutex::new(Some(thread)),
            committer: Mutex::new(Some(committer)),
            checkpoint,
        })
    }

    /// Loads a worker and starts it with its committer.
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        store: &Arc<dyn Store>,
        clock: &Arc<dyn Clock>,
        catalog: &Catalog,
        shared: &Arc<Shared>,
        feed: &broadcast::Sender<Arc<Vec<ChangeRecord>>>,
        rebuild: bool,
        owns: Option<Owns>,
        checkpoint: Option<&Path>,
    ) -> Result<
        (
            Sender<Msg>,
            std::thread::JoinHandle<worker::Stopped>,
            tokio::task::JoinHandle<()>,
        ),
        EngineError,
    > {
        let (to_committer, committer_rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = worker::Worker::load(
            store.clone(),
            clock.clone(),
            catalog,
            shared.clone(),
            to_committer,
            rebuild,
            owns,
            checkpoint,
        )
        .await?;
        let committer = tokio::spawn(worker::committer(
            store.clone(),
            committer_rx,
            feed.clone(),
            shared.clone(),
        ));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("stratify-live".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| {
                EngineError::Store(stratify_store::StoreError::Corrupt(format!(
                    "cannot start the live worker: {e}"
                )))
            })?;
        Ok((tx, thread, committer))
    }

    /// Takes over a new set of users (after a Kafka rebalance): commits
    /// and stops the current worker, then rebuilds the live state of the
    /// owned users from the shared log and resumes. Readers' view keeps the
    /// memberships of everyone else (see [`Live::follow`]).
    pub(crate) async fn reown(&self, catalog: &Catalog, owns: Owns) -> Result<(), EngineError> {
        self.stop().await;
        let (tx, thread, committer) = Self::spawn(
            &self.store,
            &self.clock,
            catalog,
            &self.shared,
            &self.feed,
            true,
            Some(owns),
            None,
        )
        .await?;
        *self.tick.lock() = tx.clone();
        *self.tx.lock() = tx;
        *self.thread.lock() = Some(thread);
        *self.committer.lock() = Some(committer);
        Ok(())
    }

    /// Applies changes other nodes committed to the shared change log (the
    /// users this node does not own) to the readers' view.
    pub(crate) fn follow(&self, changes: &[ChangeRecord]) {
        self.shared.view.apply(changes);
    }

    /// Installs a segment's rule (or a static segment) and, for a dynamic
    /// one, starts its background build; the status shows it at once.
    pub(crate) fn put_segment(&self, id: &str, rule: Option<Arc<Rule>>, now: Millis) {
        let status = BuildStatus {
            state: if rule.is_some() { "building" } else { "ready" },
            evaluated: 0,
            total: self
                .shared
                .stats
                .users
                .load(std::sync::atomic::Ordering::Relaxed),
            size: self.build_status(id).map_or(0, |b| b.size),
            started_at: now,
            finished_at: None,
        };
        self.shared.builds.write().insert(id.to_owned(), status);
        self.send(Msg::SegmentPut {
            id: id.to_owned(),
            rule,
        });
    }

    pub(crate) fn send(&self, msg: Msg) {
        if self.tx.lock().send(msg).is_err() {
            tracing::error!("the live worker has stopped; a change was not applied");
        }
    }

    /// A hook for an event batch: hands the committed events to the worker,
    /// in commit order, from the store's writer thread.
    pub(crate) fn commit_hook(&self, events: Arc<Vec<NewEvent>>) -> CommitHook {
        let tx = self.tx.lock().clone();
        let clock = self.clock.clone();
        let shared = self.shared.clone();
        CommitHook(Arc::new(move |appended: &[Appended], uids: &[i64]| {
            let mut new = 0;
            for (a, e) in appended.iter().zip(events.iter()) {
                if let Appended::New(seq) = a {
                    shared.freshness.committed(e.user_id.as_str(), *seq);
                    new += 1;
                }
            }
            if new > 0 {
                shared
                    .lag
                    .fetch_add(new, std::sync::atomic::Ordering::AcqRel);
                let _ = tx.send(Msg::Events {
                    events: events.clone(),
                    appended: appended.to_vec(),
                    uids: uids.to_vec(),
                    received_at: clock.now(),
                });
            }
        }))
    }

    /// Back-pressure for writers: waits while the worker is more than
    /// [`MAX_LAG_EVENTS`] committed events behind, so that a sustained
    /// overload slows acknowledgements instead of growing an unbounded queue
    /// and the delay from acknowledgement to membership change stays bounded.
    pub(crate) async fn admit(&self) {
        while self.lag() > MAX_LAG_EVENTS {
            let running = self
                .thread
                .lock()
                .as_ref()
                .is_some_and(|t| !t.is_finished());
            if !running {
                return; // a stopped worker must not stop ingest
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Committed events not yet applied by the worker.
    pub fn lag(&self) -> usize {
        self.shared.lag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until everything sent before is applied and committed.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Sync(tx));
        let _ = rx.await;
    }

    /// Re-evaluates every (user, dynamic segment) now; returns how many
    /// memberships changed (each recorded with cause `refresh`).
    pub async fn refresh(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Refresh(tx));
        let n = rx.await.unwrap_or(0);
        self.sync().await;
        n
    }

    pub async fn snapshot(&self) -> Snapshot {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Snapshot(tx));
        rx.await.unwrap_or_default()
    }

    /// Committed changes, in batches, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<ChangeRecord>>> {
        self.feed.subscribe()
    }

    pub fn build_status(&self, segment_id: &str) -> Option<BuildStatus> {
        self.shared.builds.read().get(segment_id).cloned()
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Current memberships, as committed.
    pub fn view(&self) -> &MemberView {
        &self.shared.view
    }

    /// Stops the worker and waits until everything it produced is durable.
    pub async fn stop(&self) {
        self.stop_worker().await;
    }

    async fn stop_worker(&self) -> Option<worker::Stopped> {
        self.send(Msg::Stop);
        let thread = self.thread.lock().take();
        let worker = match thread {
            Some(t) => tokio::task::spawn_blocking(move || t.join().ok())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let committer = self.committer.lock().take();
        if let Some(c) = committer {
            let _ = c.await;
        }
        worker
    }

    /// [`Live::stop`], then saves the state for the next start (at
    /// shutdown, when nothing writes any more).
    pub(crate) async fn stop_and_save(&self) -> Result<(), EngineError> {
        let worker = self.stop_worker().await;
        let (Some(worker), Some(dir)) = (worker, self.checkpoint.clone()) else {
            return Ok(());
        };
        let Some(stamp) = self.store.derived_stamp().await? else {
            return Ok(());
        };
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || worker.save(&dir, &stamp, now))
            .await
            .map_err(|e| EngineError::Store(stratify_store::StoreError::Task(e)))
    }
}
