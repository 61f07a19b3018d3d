//! A read-only view of current memberships for request handlers: for each
//! user, the segments they are in, as small interned slots.
//!
//! The live worker owns the memberships; this view follows what it commits
//! (the committer applies each batch here after it is durable, before it is
//! published), so a reader never sees a membership the change log does not
//! hold. Reads take one shard's read lock and never wait for the worker.
//! Segment slots are never reused (a deleted segment's slot stays behind
//! harmlessly: nothing can target a deleted segment).

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stratify_store::ChangeRecord;

const SHARDS: usize = 64;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

type Shard = RwLock<FastMap<Box<str>, Vec<u32>>>;

pub struct MemberView {
    slots: RwLock<FastMap<Arc<str>, u32>>,
    shards: Box<[Shard]>,
    /// Members per slot, kept as memberships move (so a segment's size is
    /// one read, not a scan of every user).
    counts: RwLock<Vec<AtomicU64>>,
}

impl Default for MemberView {
    fn default() -> Self {
        Self {
            slots: RwLock::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            counts: RwLock::default(),
        }
    }
}

impl MemberView {
    fn shard(&self, user: &str) -> &Shard {
        &self.shards[(crate::shard::user_hash(user) >> 58) as usize % SHARDS]
    }

    /// The slot of a segment id, interned on first use.
    pub fn slot(&self, segment_id: &str) -> u32 {
        if let Some(&s) = self.slots.read().get(segment_id) {
            return s;
        }
        let mut slots = self.slots.write();
        let next = slots.len() as u32;
        let slot = *slots.entry(Arc::from(segment_id)).or_insert(next);
        let mut counts = self.counts.write();
        while counts.len() <= slot as usize {
            counts.push(AtomicU64::new(0));
        }
        slot
    }

    /// Adds `delta` (±1) to a slot's member count.
    fn counted(&self, slot: u32, delta: i64) {
        if let Some(c) = self.counts.read().get(slot as usize) {
            if delta > 0 {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                // Never below zero, whatever the order of callers.
                let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
    }

    /// Appends the slots of the segments `user` is in (sorted) to `out`.
    pub fn segments_of(&self, user: &str, out: &mut Vec<u32>) {
        if let Some(s) = self.shard(user).read().get(user) {
            out.extend_from_slice(s);
        }
    }

    pub fn contains(&self, user: &str, slot: u32) -> bool {
        self.shard(user)
            .read()
            .get(user)
            .is_some_and(|s| s.binary_search(&slot).is_ok())
    }

    pub(crate) fn set(&self, user: &str, slot: u32, inside: bool) {
        let mut shard = self.shard(user).write();
        if inside {
            let list = shard.entry(Box::from(user)).or_default();
            if let Err(i) = list.binary_search(&slot) {
                list.insert(i, slot);
                self.counted(slot, 1);
            }
        } else if let Some(list) = shard.get_mut(user) {
            if let Ok(i) = list.binary_search(&slot) {
                list.remove(i);
                self.counted(slot, -1);
            }
            if list.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Applies committed changes, in order.
    pub(crate) fn apply(&self, changes: &[ChangeRecord]) {
        for c in changes {
            let slot = self.slot(&c.segment_id);
            self.set(&c.user_id, slot, c.entered);
        }
    }

    /// Members of a segment: one read (counts are kept as members move).
    pub fn count(&self, segment_id: &str) -> u64 {
        let Some(&slot) = self.slots.read().get(segment_id) else {
            return 0;
        };
        self.counts
            .read()
            .get(slot as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn remove_user(&self, user: &str) {
        let mut shard = self.shard(user).write();
        if let Some(list) = shard.remove(user) {
            for slot in list {
                self.counted(slot, -1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratify_store::Cause;

    fn change(segment: &str, user: &str, entered: bool) -> ChangeRecord {
        ChangeRecord {
            seq: 0,
            segment_id: segment.into(),
            user_id: user.into(),
            entered,
            at: 0,
            cause: Cause::Time,
        }
    }

    #[test]
    fn follows_entries_and_exits_in_order() {
        let view = MemberView::default();
        view.apply(&[
            change("b", "u1", true),
            change("a", "u1", true),
            change("a", "u2", true),
            change("a", "u2", false),
            change("b", "u1", true),
        ]);
        let (a, b) = (view.slot("a"), view.slot("b"));
        let mut out = Vec::new();
        view.segments_of("u1", &mut out);
        let mut want = vec![a, b];
        want.sort_unstable();
        assert_eq!(out, want);
        assert!(view.contains("u1", a) && !view.contains("u2", a));
        out.clear();
        view.segments_of("u2", &mut out);
        assert!(out.is_empty());
        view.remove_user("u1");
        assert!(!view.contains("u1", b));
    }

    /// The kept counts equal a scan of every user, whatever the sequence of
    /// entries, exits (repeated or not) and erasures.
    #[test]
    fn kept_counts_equal_a_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let view = MemberView::default();
        let segments = ["a", "b", "c"];
        for _ in 0..5_000 {
            let user = format!("u{}", rng.random_range(0..200));
            if rng.random_ratio(1, 50) {
                view.remove_user(&user);
            } else {
                let seg = segments[rng.random_range(0..segments.len())];
                view.apply(&[change(seg, &user, rng.random_bool(0.6))]);
            }
        }
        for seg in segments {
            let slot = view.slot(seg);
            let scanned: u64 = view
                .shards
                .iter()
                .map(|s| {
                    s.read()
                        .values()
                        .filter(|l| l.binary_search(&slot).is_ok())
                        .count() as u64
                })
                .sum();
            assert_eq!(view.count(seg), scanned, "{seg}");
            assert!(scanned > 0);
        }
        assert_eq!(view.count("never"), 0);
    }
}
