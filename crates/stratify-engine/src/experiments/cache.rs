//! The per-user answer cache: each entry is valid while the user's stamp
//! (see [`crate::freshness`]) and the experiments' generation are the ones
//! it was computed under, and until its own deadline: the TTL, or sooner an
//! experiment's start or end, an inline rule's next change with time, or
//! the banner mixture's expiry. So a hit is always the answer a fresh
//! computation would give.

use super::assign::UserExperiments;
use parking_lot::Mutex;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use stratify_core::time::Millis;

const SHARDS: usize = 64;
/// Most cached users per shard (about a million in all).
const SHARD_CAPACITY: usize = 16_384;

/// An answer, found by its user id (held once, in the answer).
struct Entry(Arc<UserExperiments>);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0.user_id
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.user_id.as_str().hash(h);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.user_id == other.0.user_id
    }
}

impl Eq for Entry {}

type Shard = Mutex<HashSet<Entry, foldhash::fast::RandomState>>;

pub struct Cache {
    shards: Box<[Shard]>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Cache {
    fn shard(&self, user: &str) -> &Shard {
        &self.shards[(crate::shard::user_hash(user) >> 52) as usize % SHARDS]
    }

    /// The cached answer if it is still valid.
    pub fn get(
        &self,
        user: &str,
        stamp: u64,
        generation: u64,
        now: Millis,
    ) -> Option<Arc<UserExperiments>> {
        let shard = self.shard(user).lock();
        let hit = &shard.get(user)?.0;
        (hit.stamp == stamp && hit.generation == generation && now < hit.valid_until)
            .then(|| hit.clone())
    }

    pub fn put(&self, answer: Arc<UserExperiments>, now: Millis) {
        let mut shard = self.shard(&answer.user_id).lock();
        if shard.len() >= SHARD_CAPACITY && !shard.contains(answer.user_id.as_str()) {
            shard.retain(|e| now < e.0.valid_until);
            if shard.len() >= SHARD_CAPACITY {
                // Still full of live entries: drop an arbitrary eighth.
                let mut left = SHARD_CAPACITY / 8;
                shard.retain(|_| {
                    let keep = left == 0;
                    left = left.saturating_sub(1);
                    keep
                });
            }
        }
        shard.replace(Entry(answer));
    }

    pub fn remove(&self, user: &str) {
        self.shard(user).lock().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(user: &str, stamp: u64, valid_until: Millis) -> Arc<UserExperiments> {
        Arc::new(UserExperiments::empty(user, stamp, valid_until))
    }

    #[test]
    fn an_answer_is_found_by_user_while_valid_and_the_cache_stays_bounded() {
        let cache = Cache::default();
        cache.put(answer("u1", 7, 100), 0);
        assert!(cache.get("u1", 7, 1, 99).is_some());
        assert!(cache.get("u1", 8, 1, 99).is_none(), "another stamp");
        assert!(cache.get("u1", 7, 2, 99).is_none(), "another generation");
        assert!(cache.get("u1", 7, 1, 100).is_none(), "expired");
        assert!(cache.get("u2", 7, 1, 0).is_none());
        // A newer answer replaces the old one.
        cache.put(answer("u1", 8, 100), 0);
        assert!(cache.get("u1", 8, 1, 0).is_some());
        cache.remove("u1");
        assert!(cache.get("u1", 8, 1, 0).is_none());
        // Past capacity, live entries are dropped: never more than a shard's
        // capacity each.
        for i in 0..(SHARDS * SHARD_CAPACITY + 50_000) {
            cache.put(answer(&i.to_string(), 1, 1_000), 0);
        }
        for shard in cache.shards.iter() {
            assert!(shard.lock().len() <= SHARD_CAPACITY);
        }
        let last = (SHARDS * SHARD_CAPACITY + 49_999).to_string();
        assert!(cache.get(&last, 1, 1, 0).is_some(), "the newest is kept");
    }
}
