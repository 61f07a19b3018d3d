//! Per-user serving state in memory: sticky assignments (as small slots) and
//! the current banner mixture, loaded from the store the first time a user
//! is served after start, then kept current here and written behind.
//!
//! Write-behind: a new assignment is in this table (and so holds for every
//! later request) at once, and reaches the store within one group commit. A
//! crash in between loses only assignments that the same hash gives again,
//! unless the experiment's allocation changed in those milliseconds.

use super::banners::Mixture;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stratify_store::{AssignmentRecord, Assignments, BannerMixtureRecord};
use tokio::sync::{mpsc, oneshot};

const SHARDS: usize = 64;
/// Most rows per store commit.
const MAX_BATCH: usize = 8192;
/// Rows waiting for the store before new servings wait (back-pressure: a
/// burst of first servings slows down instead of growing the queue).
const MAX_QUEUED: usize = 200_000;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck {
    pub experiment: u32,
    pub variant: u16,
    pub bucket_version: u16,
}

#[derive(Default, Clone)]
pub struct UserState {
    pub stuck: Vec<Stuck>,
    pub mixture: Option<Arc<Mixture>>,
}

pub enum Write {
    Assignment(AssignmentRecord),
    Mixture(BannerMixtureRecord),
    Flush(oneshot::Sender<()>),
}

type Shard = RwLock<FastMap<Box<str>, UserState>>;

pub struct Sticky {
    shards: Box<[Shard]>,
    tx: mpsc::UnboundedSender<Write>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    queued: Arc<AtomicUsize>,
}

impl Sticky {
    pub fn start(store: Arc<dyn Assignments>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let flusher = tokio::spawn(flush(store, rx, queued.clone()));
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            tx,
            flusher: Mutex::new(Some(flusher)),
            queued,
        }
    }

    /// Waits while too many rows are waiting for the store.
    pub async fn admit(&self) {
        while self.queued.load(Ordering::Acquire) > MAX_QUEUED {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn shard(&self, user: &str) -> &Shard {
        &self.shards[(crate::shard::user_hash(user) >> 40) as usize % SHARDS]
    }

    /// The user's state if it is loaded.
    pub fn get(&self, user: &str) -> Option<UserState> {
        self.shard(user).read().get(user).cloned()
    }

    /// Installs a state loaded from the store, unless one got there first.
    pub fn insert_loaded(&self, user: &str, state: UserState) -> UserState {
        self.shard(user)
            .write()
            .entry(Box::from(user))
            .or_insert(state)
            .clone()
    }

    /// Records a first assignment; returns the one that holds (an earlier
    /// one of the same or a newer bucket version wins a race).
    pub fn assign(&self, user: &str, stuck: Stuck, record: AssignmentRecord) -> Stuck {
        let mut shard = self.shard(user).write();
        let state = shard.entry(Box::from(user)).or_default();
        if let Some(s) = state
            .stuck
            .iter_mut()
            .find(|s| s.experiment == stuck.experiment)
        {
            if s.bucket_version >= stuck.bucket_version {
                return *s;
            }
            *s = stuck;
        } else {
            state.stuck.push(stuck);
        }
        drop(shard);
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Write::Assignment(record));
        stuck
    }

    pub fn set_mixture(&self, user: &str, mixture: Arc<Mixture>, record: BannerMixtureRecord) {
        self.shard(user)
            .write()
            .entry(Box::from(user))
            .or_default()
            .mixture = Some(mixture);
        let _ = self.tx.send(Write::Mixture(record));
    }

    pub fn forget(&self, user: &str) {
        self.shard(user).write().remove(user);
    }

    /// Waits until everything recorded before is in the store.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Write::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Flushes and stops the writer (on shutdown).
    pub async fn stop(&self) {
        self.flush().await;
        let flusher = self.flusher.lock().take();
        if let Some(f) = flusher {
            f.abort();
        }
    }
}

async fn flush(
    store: Arc<dyn Assignments>,
    mut rx: mpsc::UnboundedReceiver<Write>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(first) = rx.recv().await {
        let mut assignments = Vec::new();
        let mut mixtures = Vec::new();
        let mut flushed = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next {
            match w {
                Write::Assignment(a) => assignments.push(a),
                Write::Mixture(m) => mixtures.push(m),
                Write::Flush(done) => flushed.push(done),
            }
            next = if assignments.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let saved = assignments.len();
        let assignments = Arc::new(assignments);
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store.save_assignments(assignments.clone()).await {
            tracing::error!(error = %e, "cannot save assignments; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        queued.fetch_sub(saved, Ordering::AcqRel);
        for m in mixtures {
            if let Err(e) = store.save_banner_mixture(m).await {
                // A lost mixture is drawn again: logged, not retried.
                tracing::error!(error = %e, "cannot save a banner mixture");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
