//! What per-user answers (experiments, banners) need to know to stay correct
//! while they are cached: a stamp per user that moves whenever anything the
//! answer depends on moves (an event or attribute write, a membership change,
//! an explicit cache clear), and read-your-writes for events: the highest
//! event sequence committed for the user, which the live engine must have
//! applied before the user's memberships are current.
//!
//! Users share fixed buckets (by hash), so the table is a few megabytes
//! whatever the population; a shared bucket only costs a neighbour an extra
//! recomputation, never a stale answer.

use crate::shard::user_hash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

const BUCKETS: usize = 1 << 16;

pub struct Freshness {
    stamps: Box<[AtomicU64]>,
    pending: Box<[AtomicI64]>,
    /// Every event up to this sequence is applied and its changes published.
    published: AtomicI64,
    advanced: Notify,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            stamps: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..BUCKETS).map(|_| AtomicI64::new(0)).collect(),
            published: AtomicI64::new(0),
            advanced: Notify::new(),
        }
    }
}

fn bucket(user: &str) -> usize {
    user_hash(user) as usize % BUCKETS
}

impl Freshness {
    /// Something `user`'s answers depend on changed.
    pub fn touch(&self, user: &str) {
        self.stamps[bucket(user)].fetch_add(1, Ordering::AcqRel);
    }

    pub fn stamp(&self, user: &str) -> u64 {
        self.stamps[bucket(user)].load(Ordering::Acquire)
    }

    /// An event of `user` with sequence `seq` is committed (the store's
    /// writer thread, before the writer is answered).
    pub fn committed(&self, user: &str, seq: i64) {
        let b = bucket(user);
        self.pending[b].fetch_max(seq, Ordering::AcqRel);
        self.stamps[b].fetch_add(1, Ordering::AcqRel);
    }

    /// The live engine has applied and published everything up to `seq`.
    pub fn published(&self, seq: i64) {
        self.published.fetch_max(seq, Ordering::AcqRel);
        self.advanced.notify_waiters();
    }

    /// Whether every committed event of `user` (and its bucket) is applied.
    pub fn is_current(&self, user: &str) -> bool {
        self.pending[bucket(user)].load(Ordering::Acquire) <= self.published.load(Ordering::Acquire)
    }

    /// Waits until `user`'s committed events are applied, at most `limit`.
    /// Returns whether they are.
    pub async fn wait_current(&self, user: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let advanced = self.advanced.notified();
            if self.is_current(user) {
                return true;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return self.is_current(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_committed_event_is_waited_for_until_published() {
        let f = Arc::new(Freshness::default());
        let before = f.stamp("u1");
        f.committed("u1", 7);
        assert_ne!(f.stamp("u1"), before);
        assert!(!f.is_current("u1"));
        assert!(!f.wait_current("u1", Duration::from_millis(10)).await);
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait_current("u1", Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        f.published(6);
        f.published(7);
        assert!(waiter.await.unwrap_or(false));
        // Published only moves forward.
        f.published(3);
        assert!(f.is_current("u1"));
    }
}
