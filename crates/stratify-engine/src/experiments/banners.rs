//! Banner mixtures: the variants a user is served whose payload holds a
//! `banners` array pool their banners (each once); a few are drawn at
//! random and kept for a day, and drawn again only when the pool changes or
//! the day is over.
//!
//! Held compactly: each experiment version makes one [`Source`] per variant
//! with banners, every user served the same sources shares one interned
//! [`Pool`] ([`Pools`]), and a user's mixture is the indices drawn from it
//! and two instants. The JSON kept in the store and served is the full
//! mixture (`banners`, `pool`, `source_experiments`).

use parking_lot::Mutex;
use rand::{rngs::StdRng, SeedableRng};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use stratify_core::time::Millis;

/// Banners drawn per mixture unless configured otherwise.
pub const DEFAULT_BANNERS: usize = 3;
/// How long a mixture is kept unless configured otherwise.
pub const DEFAULT_BANNER_TTL_MS: Millis = 24 * 3_600_000;

/// Where a banner in the pool came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub experiment_id: String,
    pub key: String,
    pub variant: String,
    pub banners: Vec<Value>,
}

/// The banners of a list of sources, each once, in first-seen order.
/// A banner is held by its place in its source (8 bytes), not copied: a
/// pool per distinct list of sources can be one per user.
#[derive(Debug, PartialEq)]
pub struct Pool {
    pub sources: Vec<Arc<Source>>,
    /// (source, position in its banners) of each banner.
    at: Box<[(u32, u32)]>,
}

impl Pool {
    pub fn new(sources: Vec<Arc<Source>>) -> Self {
        let mut at: Vec<(u32, u32)> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            for (j, b) in s.banners.iter().enumerate() {
                let seen = at
                    .iter()
                    .any(|&(k, l)| sources[k as usize].banners[l as usize] == *b);
                if !seen {
                    at.push((i as u32, j as u32));
                }
            }
        }
        Self {
            sources,
            at: at.into(),
        }
    }

    /// Banners in the pool.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The `i`th banner (`i < len()`).
    pub fn banner(&self, i: usize) -> &Value {
        let (s, b) = self.at[i];
        &self.sources[s as usize].banners[b as usize]
    }

    /// The banners, in pool order.
    pub fn banners(&self) -> impl ExactSizeIterator<Item = &Value> + '_ {
        (0..self.len()).map(|i| self.banner(i))
    }

    fn contains(&self, v: &Value) -> bool {
        self.banners().any(|b| b == v)
    }

    /// Whether `sources` are this pool's own (the same shared values, in
    /// order): then the pool is the same without comparing banners.
    fn made_of(&self, sources: &[Arc<Source>]) -> bool {
        self.sources.len() == sources.len()
            && self
                .sources
                .iter()
                .zip(sources)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Whether two pools hold the same banners (order does not matter).
    pub fn same_banners(&self, other: &Pool) -> bool {
        self.len() == other.len() && self.banners().all(|x| other.contains(x))
    }
}

/// The pools in use, one per list of sources: users served the same
/// variants share one. Keyed by the sources' addresses, which a live pool
/// keeps from being reused; entries of dropped pools are swept as the
/// table grows.
#[derive(Default)]
pub struct Pools {
    table: Mutex<PoolTable>,
}

#[derive(Default)]
struct PoolTable {
    by_sources: HashMap<Box<[usize]>, Weak<Pool>>,
    sweep_at: usize,
}

impl Pools {
    /// The shared pool of `sources` (made if none is alive).
    pub fn get(&self, sources: Vec<Arc<Source>>) -> Arc<Pool> {
        let key: Box<[usize]> = sources.iter().map(|s| Arc::as_ptr(s) as usize).collect();
        let mut t = self.table.lock();
        if let Some(pool) = t.by_sources.get(&key).and_then(Weak::upgrade) {
            return pool;
        }
        let pool = Arc::new(Pool::new(sources));
        t.by_sources.insert(key, Arc::downgrade(&pool));
        if t.by_sources.len() > t.sweep_at {
            t.by_sources.retain(|_, p| p.strong_count() > 0);
            t.sweep_at = 2 * t.by_sources.len() + 1024;
        }
        pool
    }

    /// Pools alive.
    #[cfg(test)]
    fn len(&self) -> usize {
        let t = self.table.lock();
        t.by_sources
            .values()
            .filter(|p| p.strong_count() > 0)
            .count()
    }
}

/// A user's banners: `drawn` indexes the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    pub drawn: Box<[u32]>,
    pub pool: Arc<Pool>,
    pub assigned_at: Millis,
    pub expires_at: Millis,
}

impl Mixture {
    pub fn banners(&self) -> impl ExactSizeIterator<Item = &Value> + '_ {
        self.drawn.iter().map(|&i| self.pool.banner(i as usize))
    }

    /// The drawn banners as a JSON array.
    pub fn banners_json(&self) -> Banners<'_> {
        Banners(self)
    }

    /// The sources as a JSON array.
    pub fn sources_json(&self) -> Sources<'_> {
        Sources(&self.pool.sources)
    }

    /// The JSON kept in the store.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(Wire {
            banners: self.banners_json(),
            pool: PoolBanners(&self.pool),
            source_experiments: self.sources_json(),
            assigned_at: self.assigned_at,
            expires_at: self.expires_at,
        })
        .unwrap_or(Value::Null)
    }

    /// Reads the stored JSON; each source equal to one of `known` (the
    /// current experiments' sources) is shared with it, and the pool is then
    /// the shared one. `None` when it does not read as a mixture.
    pub fn from_json(
        value: Value,
        known: impl Fn(&Source) -> Option<Arc<Source>>,
        pools: &Pools,
    ) -> Option<Self> {
        let w: WireOwned = serde_json::from_value(value).ok()?;
        let mut shared = true;
        let sources: Vec<Arc<Source>> = w
            .source_experiments
            .into_iter()
            .map(|s| {
                known(&s).unwrap_or_else(|| {
                    shared = false;
                    Arc::new(s)
                })
            })
            .collect();
        let pool = if shared {
            pools.get(sources)
        } else {
            Arc::new(Pool::new(sources))
        };
        // The pool is its sources' banners: a stored pool that is not was
        // not written by this code, and is drawn again.
        if !pool.banners().eq(w.pool.iter()) {
            return None;
        }
        let drawn = w
            .banners
            .iter()
            .map(|b| pool.banners().position(|p| p == b).map(|i| i as u32))
            .collect::<Option<Box<[u32]>>>()?;
        Some(Self {
            drawn,
            pool,
            assigned_at: w.assigned_at,
            expires_at: w.expires_at,
        })
    }
}

pub struct Banners<'a>(&'a Mixture);

impl Serialize for Banners<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.drawn.len()))?;
        for b in self.0.banners() {
            seq.serialize_element(b)?;
        }
        seq.end()
    }
}

pub struct Sources<'a>(&'a [Arc<Source>]);

impl Serialize for Sources<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|x| &**x))
    }
}

/// A pool's banners as a JSON array.
struct PoolBanners<'a>(&'a Pool);

impl Serialize for PoolBanners<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.banners())
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    banners: Banners<'a>,
    pool: PoolBanners<'a>,
    source_experiments: Sources<'a>,
    assigned_at: Millis,
    expires_at: Millis,
}

#[derive(Deserialize)]
struct WireOwned {
    banners: Vec<Value>,
    pool: Vec<Value>,
    source_experiments: Vec<Source>,
    assigned_at: Millis,
    expires_at: Millis,
}

/// Draws `count` banners from `pool` (all of them when it is smaller), in
/// random order. Seeded by the user and the instant, so a draw is
/// reproducible.
pub fn draw(user: &str, pool: Arc<Pool>, count: usize, now: Millis, ttl: Millis) -> Mixture {
    let seed = crate::shard::user_hash(user) ^ (now as u64).rotate_left(17);
    let mut rng = StdRng::seed_from_u64(seed);
    let n = count.min(pool.len());
    let drawn = rand::seq::index::sample(&mut rng, pool.len(), n)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    Mixture {
        drawn,
        pool,
        assigned_at: now,
        expires_at: now.saturating_add(ttl),
    }
}

/// What to serve for a user served `sources` (their variants' banners).
#[derive(Debug)]
pub enum Pick {
    /// The sources pool no banners: no mixture.
    Nothing,
    /// The kept mixture: unexpired and drawn from the same banners.
    Kept(Arc<Mixture>),
    /// A new draw from this pool.
    Draw(Arc<Pool>),
}

pub fn pick(
    kept: Option<&Arc<Mixture>>,
    sources: Vec<Arc<Source>>,
    pools: &Pools,
    now: Millis,
) -> Pick {
    let kept = kept.filter(|m| now < m.expires_at);
    if let Some(m) = kept {
        if m.pool.made_of(&sources) && !m.pool.is_empty() {
            return Pick::Kept(m.clone());
        }
    }
    let pool = pools.get(sources);
    if pool.is_empty() {
        return Pick::Nothing;
    }
    match kept {
        Some(m) if m.pool.same_banners(&pool) => Pick::Kept(m.clone()),
        _ => Pick::Draw(pool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(key: &str, banners: Value) -> Arc<Source> {
        Arc::new(Source {
            experiment_id: format!("exp_{key}"),
            key: key.into(),
            variant: "on".into(),
            banners: serde_json::from_value(banners).unwrap_or_default(),
        })
    }

    #[test]
    fn pools_each_banner_once_and_draws_distinct_ones() {
        let sources = vec![
            source("new", json!([1, 2, 3])),
            source("regular", json!([2, 4, 7])),
        ];
        let pools = Pools::default();
        let p = pools.get(sources.clone());
        assert_eq!(
            p.banners().collect::<Vec<_>>(),
            [&json!(1), &json!(2), &json!(3), &json!(4), &json!(7)]
        );
        let reordered = Pool::new(vec![source("r", json!([7, 4, 3, 2, 1]))]);
        assert!(p.same_banners(&reordered));
        assert!(!p.same_banners(&Pool::new(vec![source("x", json!([1, 2, 3]))])));
        for t in 0..50 {
            let m = draw("u1", p.clone(), 3, 1_000 + t, 10);
            let banners: Vec<&Value> = m.banners().collect();
            assert_eq!(banners.len(), 3);
            assert!(banners.iter().all(|b| p.contains(b)));
            for (i, b) in banners.iter().enumerate() {
                assert!(!banners[..i].contains(b), "no banner twice: {banners:?}");
            }
            assert_eq!(m.expires_at, 1_010 + t);
        }
        // A pool smaller than the count gives all of it.
        let small = pools.get(vec![source("s", json!([9]))]);
        assert_eq!(
            draw("u1", small, 3, 0, 1).banners().collect::<Vec<_>>(),
            vec![&json!(9)]
        );
        // Reproducible for the same user and instant.
        assert_eq!(draw("u2", p.clone(), 3, 5, 1), draw("u2", p, 3, 5, 1));
    }

    #[test]
    fn users_served_the_same_sources_share_one_pool_until_it_is_dropped() {
        let pools = Pools::default();
        let (a, b) = (source("a", json!([1, 2])), source("b", json!([3])));
        let p1 = pools.get(vec![a.clone(), b.clone()]);
        let p2 = pools.get(vec![a.clone(), b.clone()]);
        assert!(Arc::ptr_eq(&p1, &p2));
        // Another order is another list of sources (its banners' order too).
        let p3 = pools.get(vec![b.clone(), a.clone()]);
        assert!(!Arc::ptr_eq(&p1, &p3));
        assert!(p1.same_banners(&p3));
        assert_eq!(pools.len(), 2);
        drop((p1, p2, p3));
        assert_eq!(pools.len(), 0);
        // A fresh pool after the old one was dropped.
        assert_eq!(
            pools.get(vec![a, b]).banners().collect::<Vec<_>>(),
            [&json!(1), &json!(2), &json!(3)]
        );
    }

    #[test]
    fn a_kept_mixture_holds_while_unexpired_and_its_banners_are_served() {
        let pools = Pools::default();
        let (a, b) = (source("a", json!([1, 2])), source("b", json!([3])));
        let m = Arc::new(draw("u", pools.get(vec![a.clone(), b.clone()]), 2, 100, 50));
        let kept = |sources: Vec<Arc<Source>>, now| match pick(Some(&m), sources, &pools, now) {
            Pick::Kept(k) => Some(Arc::ptr_eq(&k, &m)),
            Pick::Draw(_) => Some(false),
            Pick::Nothing => None,
        };
        assert_eq!(kept(vec![a.clone(), b.clone()], 149), Some(true));
        assert_eq!(
            kept(vec![a.clone(), b.clone()], 150),
            Some(false),
            "expired"
        );
        // Other sources with the same banners (an experiment edited without
        // touching them): the same pool by value, still kept.
        let a2 = source("a", json!([2, 1]));
        assert_eq!(kept(vec![b.clone(), a2], 120), Some(true));
        assert_eq!(kept(vec![a.clone()], 120), Some(false), "banners changed");
        assert_eq!(kept(vec![source("e", json!([]))], 120), None, "no banners");
    }

    #[test]
    fn the_stored_json_reads_back_sharing_the_current_sources() {
        let pools = Pools::default();
        let (a, b) = (
            source("a", json!([{"id": 1}, 2])),
            source("b", json!(["x"])),
        );
        let m = draw("u", pools.get(vec![a.clone(), b.clone()]), 2, 100, 50);
        let stored = m.to_json();
        assert_eq!(stored["pool"], json!([{"id": 1}, 2, "x"]));
        assert_eq!(stored["source_experiments"][1]["key"], "b");
        assert_eq!(stored["banners"].as_array().map(Vec::len), Some(2));
        let known = |s: &Source| [&a, &b].into_iter().find(|k| ***k == *s).cloned();
        let back = Mixture::from_json(stored.clone(), known, &pools).expect("reads");
        assert_eq!(back, m);
        assert!(Arc::ptr_eq(&back.pool, &m.pool), "the live pool is shared");
        // Sources no experiment has any more: read, not shared.
        let alone = Mixture::from_json(stored.clone(), |_| None, &pools).expect("reads");
        assert!(!Arc::ptr_eq(&alone.pool, &m.pool));
        assert_eq!(alone.to_json(), stored);
        // Not a mixture, or a banner outside its pool.
        assert_eq!(
            Mixture::from_json(json!({"banners": []}), |_| None, &pools),
            None
        );
        let mut bad = stored.clone();
        bad["banners"] = json!([42]);
        assert_eq!(Mixture::from_json(bad, |_| None, &pools), None);
        // A pool that is not its sources' banners.
        let mut bad = stored;
        bad["pool"] = json!([2, {"id": 1}, "x"]);
        assert_eq!(Mixture::from_json(bad, |_| None, &pools), None);
    }
}
