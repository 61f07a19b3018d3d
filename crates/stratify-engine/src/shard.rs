//! Spreading users over shards and buckets: one hash for every in-memory
//! structure keyed by user (member view, freshness, serving cache, sticky
//! state, banner seeds).

use std::hash::BuildHasher;

/// A hash of a user id that is the same in every process (shards, buckets).
pub(crate) fn user_hash(user: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(user)
}
