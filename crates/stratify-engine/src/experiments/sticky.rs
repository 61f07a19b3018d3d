//! Per-user serving state in memory: sticky assignments (as small slots) and
//! the current banner mixture, loaded from the store the first time a user
//! is served after start, then kept current here and written behind.
//!
//! Write-behind: a new assignment is in this table (and so holds for every
//! later request) at once, and reaches the store within one group commit
//! (writes gather for [`GATHER`] first, so a commit serves thousands). A
//! crash in between loses only assignments that the same hash gives again,
//! unless the experiment's allocation changed in those milliseconds.
//! Assignments and mixtures are saved together, one store commit per batch.
//!
//! On a single node, a filter of the users with stored state ([`Stored`])
//! spares a never-served user's first serving its store read.

use super::banners::Mixture;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stratify_store::{AssignmentRecord, Assignments, BannerMixtureRecord};
use tokio::sync::{mpsc, oneshot};

const SHARDS: usize = 64;
/// Most assignments and mixtures per store commit.
const MAX_BATCH: usize = 8192;
/// Writes waiting for the store before new servings wait (back-pressure: a
/// burst of first servings slows down instead of growing the queue).
const MAX_QUEUED: usize = 200_000;
/// How long the writer lets writes gather before a commit.
const GATHER: Duration = Duration::from_millis(10);

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
    /// One serving's first assignments.
    Assignments(Vec<AssignmentRecord>),
    /// Written as JSON by the flusher, off the serving path.
    Mixture(Box<str>, Arc<Mixture>),
    Flush(oneshot::Sender<()>),
}

type Shard = RwLock<FastMap<Box<str>, UserState>>;

pub struct Sticky {
    shards: Box<[Shard]>,
    /// New assignments made here, per (experiment slot, variant slot).
    exposures: Exposures,
    tx: mpsc::UnboundedSender<Write>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    queued: Arc<AtomicUsize>,
    /// Who may have serving state in the store; `None` when other nodes
    /// write it too (then every first serving reads the store).
    stored: Option<Arc<Stored>>,
}

impl Sticky {
    /// `sole_writer`: no other process writes assignments to this store, so
    /// a user this process never wrote for and the store did not hold at
    /// start has nothing stored.
    pub fn start(store: Arc<dyn Assignments>, sole_writer: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stored = sole_writer.then(|| {
            let stored = Arc::new(Stored::new());
            tokio::spawn(Stored::load(stored.clone(), store.clone()));
            stored
        });
        let flusher = tokio::spawn(flush(store, rx, queued.clone()));
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            exposures: Exposures::default(),
            tx,
            flusher: Mutex::new(Some(flusher)),
            queued,
            stored,
        }
    }

    /// Whether the store may hold state for `user` (false: it holds none,
    /// and a first serving need not read it).
    pub fn may_be_stored(&self, user: &str) -> bool {
        self.stored.as_ref().is_none_or(|s| s.may_hold(user))
    }

    fn stored_now(&self, user: &str) {
        if let Some(s) = &self.stored {
            s.add(user);
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

    /// Records a user's first assignments (one serving's, at most one per
    /// experiment); returns, for each, the one that holds: an earlier one
    /// of the same or a newer bucket version wins a race. One lock and one
    /// message for all of them.
    pub fn assign(&self, user: &str, new: Vec<(Stuck, AssignmentRecord)>) -> Vec<Stuck> {
        if new.is_empty() {
            return Vec::new();
        }
        let mut shard = self.shard(user).write();
        let state = match shard.get_mut(user) {
            Some(state) => state,
            None => shard.entry(Box::from(user)).or_default(),
        };
        // Exactly as long as it holds (a user holds tens of these, and a
        // million users hold them for as long as the process runs).
        state.stuck.reserve_exact(new.len());
        let mut held = Vec::with_capacity(new.len());
        let mut records = Vec::with_capacity(new.len());
        for (stuck, record) in new {
            match state
                .stuck
                .iter_mut()
                .find(|s| s.experiment == stuck.experiment)
            {
                Some(s) if s.bucket_version >= stuck.bucket_version => {
                    held.push(*s);
                    continue;
                }
                Some(s) => *s = stuck,
                None => state.stuck.push(stuck),
            }
            held.push(stuck);
            records.push((stuck, record));
        }
        state.stuck.shrink_to_fit();
        drop(shard);
        if records.is_empty() {
            return held;
        }
        for (stuck, _) in &records {
            self.exposures.add(stuck.experiment, stuck.variant);
        }
        self.stored_now(user);
        self.queued.fetch_add(records.len(), Ordering::AcqRel);
        let _ = self.tx.send(Write::Assignments(
            records.into_iter().map(|(_, r)| r).collect(),
        ));
        held
    }

    /// New assignments (first exposures) made by this process since it
    /// started, for an experiment slot and variant slot.
    pub fn exposures(&self, experiment: u32, variant: u16) -> u64 {
        self.exposures.get(experiment, variant)
    }

    pub fn set_mixture(&self, user: &str, mixture: Arc<Mixture>) {
        self.shard(user)
            .write()
            .entry(Box::from(user))
            .or_default()
            .mixture = Some(mixture.clone());
        self.stored_now(user);
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Write::Mixture(Box::from(user), mixture));
    }

    /// Drops what is held for `user` (merged or erased): the next serving
    /// reads the store, which a merge may have given them state in.
    pub fn forget(&self, user: &str) {
        self.stored_now(user);
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
        // Group commit: let a burst of first servings gather for a moment
        // (a flush asked for waits for nothing). Each commit writes every
        // index page it dirtied, so a commit of a few rows writes about a
        // page per row, and one of thousands shares the pages.
        if !matches!(first, Write::Flush(_)) {
            tokio::time::sleep(GATHER).await;
        }
        let mut assignments = Vec::new();
        let mut mixtures = Vec::new();
        let mut flushed = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next {
            match w {
                Write::Assignments(a) => assignments.extend(a),
                Write::Mixture(user, m) => mixtures.push(BannerMixtureRecord {
                    user_id: user.into(),
                    mixture: m.to_json(),
                    assigned_at: m.assigned_at,
                    expires_at: m.expires_at,
                }),
                Write::Flush(done) => flushed.push(done),
            }
            next = if assignments.len() + mixtures.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let saved = assignments.len() + mixtures.len();
        let assignments = Arc::new(assignments);
        let mixtures = Arc::new(mixtures);
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store
            .save_serving(assignments.clone(), mixtures.clone())
            .await
        {
            tracing::error!(error = %e, "cannot save assignments; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        queued.fetch_sub(saved, Ordering::AcqRel);
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Counters per (experiment slot, variant slot), counted as first exposures
/// happen: an increment is an atomic add under a shared lock; only a slot
/// never seen before takes the lock exclusively, to grow the table.
#[derive(Default)]
struct Exposures {
    counts: RwLock<Vec<Vec<AtomicU64>>>,
}

impl Exposures {
    fn add(&self, experiment: u32, variant: u16) {
        let (e, v) = (experiment as usize, variant as usize);
        if let Some(c) = self.counts.read().get(e).and_then(|x| x.get(v)) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut counts = self.counts.write();
        if counts.len() <= e {
            counts.resize_with(e + 1, Vec::new);
        }
        if counts[e].len() <= v {
            counts[e].resize_with(v + 1, AtomicU64::default);
        }
        counts[e][v].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, experiment: u32, variant: u16) -> u64 {
        self.counts
            .read()
            .get(experiment as usize)
            .and_then(|x| x.get(variant as usize))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A Bloom filter of the users with serving state in the store: filled from
/// the store at start, then by every write. Until the fill ends, anyone may
/// have state. A false "maybe" only costs a store read.
pub struct Stored {
    bits: Box<[AtomicU64]>,
    ready: AtomicBool,
}

/// 2^25 bits (4 MiB): under 0.1% false "maybe" at a million users, about
/// 1% at three million.
const STORED_BITS: u32 = 25;
const STORED_HASHES: u64 = 3;

impl Stored {
    fn new() -> Self {
        Self {
            bits: (0..1usize << (STORED_BITS - 6))
                .map(|_| AtomicU64::new(0))
                .collect(),
            ready: AtomicBool::new(false),
        }
    }

    async fn load(this: Arc<Self>, store: Arc<dyn Assignments>) {
        let sink = this.clone();
        match store
            .served_user_ids(Arc::new(move |user: &str| sink.add(user)))
            .await
        {
            Ok(()) => this.ready.store(true, Ordering::Release),
            // Not ready: every first serving keeps reading the store.
            Err(e) => tracing::warn!(error = %e, "users with serving state not read"),
        }
    }

    fn positions(user: &str) -> impl Iterator<Item = usize> {
        let h = crate::shard::user_hash(user);
        let (a, b) = (h, h.rotate_left(32) | 1);
        (0..STORED_HASHES)
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) >> (64 - STORED_BITS)) as usize)
    }

    fn add(&self, user: &str) {
        for p in Self::positions(user) {
            self.bits[p / 64].fetch_or(1 << (p % 64), Ordering::AcqRel);
        }
    }

    fn may_hold(&self, user: &str) -> bool {
        !self.ready.load(Ordering::Acquire)
            || Self::positions(user)
                .all(|p| self.bits[p / 64].load(Ordering::Acquire) & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_never_misses_a_user_added_and_rarely_says_maybe_otherwise() {
        let s = Stored::new();
        for i in 0..100_000 {
            s.add(&format!("user-{i}"));
        }
        assert!(
            s.may_hold("stranger"),
            "anyone may hold state until the fill ends"
        );
        s.ready.store(true, Ordering::Release);
        assert!((0..100_000).all(|i| s.may_hold(&format!("user-{i}"))));
        let maybes = (0..100_000)
            .filter(|i| s.may_hold(&format!("other-{i}")))
            .count();
        assert!(maybes < 100, "{maybes} false maybes in 100 000");
    }
}
