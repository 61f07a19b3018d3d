//! The per-user answer cache: each entry is valid while the user's stamp
//! (see [`crate::freshness`]) and the experiments' generation are the ones
//! it was computed under, and until its own deadline: the TTL, or sooner an
//! experiment's start or end, an inline rule's next change with time, or
//! the banner mixture's expiry. So a hit is always the answer a fresh
//! computation would give.

use super::assign::UserExperiments;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::time::Millis;

const SHARDS: usize = 64;
/// Most cached users per shard (about a million in all).
const SHARD_CAPACITY: usize = 16_384;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Shard = Mutex<FastMap<Box<str>, Arc<UserExperiments>>>;

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
        let hit = shard.get(user)?;
        (hit.stamp == stamp && hit.generation == generation && now < hit.valid_until)
            .then(|| hit.clone())
    }

    pub fn put(&self, answer: Arc<UserExperiments>, now: Millis) {
        let mut shard = self.shard(&answer.user_id).lock();
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(answer.user_id.as_str()) {
            shard.retain(|_, e| now < e.valid_until);
            if shard.len() >= SHARD_CAPACITY {
                // Still full of live entries: drop an arbitrary eighth.
                let drop: Vec<Box<str>> = shard.keys().take(SHARD_CAPACITY / 8).cloned().collect();
                for k in drop {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(Box::from(answer.user_id.as_str()), answer);
    }

    pub fn remove(&self, user: &str) {
        self.shard(user).lock().remove(user);
    }
}
