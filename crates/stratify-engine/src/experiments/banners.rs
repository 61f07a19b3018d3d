//! Banner mixtures: the variants a user is served whose payload holds a
//! `banners` array pool their banners (each once); a few are drawn at
//! random and kept for a day, and drawn again only when the pool changes or
//! the day is over.

use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mixture {
    pub banners: Vec<Value>,
    /// Every banner it was drawn from, each once, in first-seen order.
    pub pool: Vec<Value>,
    pub source_experiments: Vec<Source>,
    pub assigned_at: Millis,
    pub expires_at: Millis,
}

/// The pool of the served variants' banners, each once, in serving order.
pub fn pool(sources: &[Source]) -> Vec<Value> {
    let mut pool: Vec<Value> = Vec::new();
    for s in sources {
        for b in &s.banners {
            if !pool.contains(b) {
                pool.push(b.clone());
            }
        }
    }
    pool
}

/// Whether two pools hold the same banners (order does not matter).
pub fn same_pool(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Draws `count` banners (all of them when the pool is smaller), in random
/// order. Seeded by the user and the instant, so a draw is reproducible.
pub fn draw(
    user: &str,
    sources: Vec<Source>,
    pool: Vec<Value>,
    count: usize,
    now: Millis,
    ttl: Millis,
) -> Mixture {
    let seed = crate::shard::user_hash(user) ^ (now as u64).rotate_left(17);
    let mut rng = StdRng::seed_from_u64(seed);
    let n = count.min(pool.len());
    let banners = rand::seq::index::sample(&mut rng, pool.len(), n)
        .into_iter()
        .map(|i| pool[i].clone())
        .collect();
    Mixture {
        banners,
        pool,
        source_experiments: sources,
        assigned_at: now,
        expires_at: now.saturating_add(ttl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(key: &str, banners: Value) -> Source {
        Source {
            experiment_id: format!("exp_{key}"),
            key: key.into(),
            variant: "on".into(),
            banners: serde_json::from_value(banners).unwrap_or_default(),
        }
    }

    #[test]
    fn pools_each_banner_once_and_draws_distinct_ones() {
        let sources = vec![
            source("new", json!([1, 2, 3])),
            source("regular", json!([2, 4, 7])),
        ];
        let p = pool(&sources);
        assert_eq!(p, vec![json!(1), json!(2), json!(3), json!(4), json!(7)]);
        assert!(same_pool(
            &p,
            &[json!(7), json!(4), json!(3), json!(2), json!(1)]
        ));
        assert!(!same_pool(&p, &[json!(1), json!(2), json!(3)]));
        for t in 0..50 {
            let m = draw("u1", sources.clone(), p.clone(), 3, 1_000 + t, 10);
            assert_eq!(m.banners.len(), 3);
            assert!(m.banners.iter().all(|b| p.contains(b)));
            for (i, b) in m.banners.iter().enumerate() {
                assert!(
                    !m.banners[..i].contains(b),
                    "no banner twice: {:?}",
                    m.banners
                );
            }
            assert_eq!(m.expires_at, 1_010 + t);
        }
        // A pool smaller than the count gives all of it.
        let small = vec![json!(9)];
        assert_eq!(draw("u1", vec![], small.clone(), 3, 0, 1).banners, small);
        // Reproducible for the same user and instant.
        assert_eq!(
            draw("u2", vec![], p.clone(), 3, 5, 1),
            draw("u2", vec![], p, 3, 5, 1)
        );
    }
}
