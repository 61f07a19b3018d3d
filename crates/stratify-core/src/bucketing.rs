//! Experiment bucketing, identical to the GrowthBook SDKs (spec 0.8.0), so
//! that a user gets the same variant from Stratify as from any GrowthBook
//! SDK given the same seed, key and weights (ARCHITECTURE invariant 5).
//!
//! - `hash(seed, value, 1)` = `fnv1a32(value + seed) % 1000 / 1000`;
//!   `hash(seed, value, 2)` = `fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000`,
//!   FNV-1a over UTF-16 code units (as JavaScript's `charCodeAt`).
//! - Ranges: weights (fractions summing to ~1) in variant order; range `i`
//!   starts at the running sum of the earlier weights and covers
//!   `coverage * w_i` of it. Starts never move with coverage, so lowering
//!   coverage only removes users, and never moves one to another variant.
//! - Namespaces: `hash("__" + id, user, 1)` in `[start, end)` (mutual exclusion).
//!
//! The conformance cases run in `tests/growthbook.rs`.

/// FNV-1a 32 over the UTF-16 code units of `s`.
pub fn fnv1a32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for unit in s.encode_utf16() {
        h ^= u32::from(unit);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A user's position in [0, 1) for a seed; `None` for an unknown version.
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        1 => {
            let h = fnv1a32(&format!("{value}{seed}"));
            Some(f64::from(h % 1000) / 1000.0)
        }
        2 => {
            let inner = fnv1a32(&format!("{seed}{value}"));
            let h = fnv1a32(&inner.to_string());
            Some(f64::from(h % 10_000) / 10_000.0)
        }
        _ => None,
    }
}

/// `n` equal weights (empty for `n <= 0`).
pub fn equal_weights(n: i64) -> Vec<f64> {
    match usize::try_from(n) {
        Ok(n) if n > 0 => vec![1.0 / n as f64; n],
        _ => Vec::new(),
    }
}

/// Variant ranges as the SDKs build them. Coverage is clamped to [0, 1];
/// weights of the wrong length or not summing to 1 ± 0.01 fall back to equal.
pub fn bucket_ranges(n: usize, coverage: f64, weights: Option<&[f64]>) -> Vec<(f64, f64)> {
    let coverage = if coverage.is_nan() {
        0.0
    } else {
        coverage.clamp(0.0, 1.0)
    };
    let equal = equal_weights(n as i64);
    let weights = match weights {
        Some(w) if w.len() == n => {
            let total: f64 = w.iter().sum();
            if (0.99..=1.01).contains(&total) {
                w.to_vec()
            } else {
                equal
            }
        }
        _ => equal,
    };
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// The first range with `start <= n < end`, if any.
pub fn choose_variation(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges.iter().position(|&(lo, hi)| n >= lo && n < hi)
}

/// Whether a user falls in a namespace's `[start, end)` slice.
pub fn in_namespace(user: &str, id: &str, start: f64, end: f64) -> bool {
    hash(&format!("__{id}"), user, 1).is_some_and(|n| n >= start && n < end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv_runs_over_utf16_code_units() {
        // "é" is one UTF-16 unit (0xE9) but two UTF-8 bytes: the results differ.
        let mut h: u32 = 0x811c_9dc5;
        h ^= 0xE9;
        h = h.wrapping_mul(0x0100_0193);
        assert_eq!(fnv1a32("é"), h);
        assert_eq!(fnv1a32(""), 0x811c_9dc5);
    }

    proptest! {
        /// Lowering coverage only removes users: anyone still covered keeps
        /// their variant, and hashes depend only on (seed, user, version).
        #[test]
        fn lowering_coverage_never_moves_a_user(
            user in "[a-z0-9_]{1,12}",
            seed in "[a-z]{0,8}",
            weights in prop::collection::vec(1u32..100, 2..5),
            high in 0.0f64..=1.0,
            cut in 0.0f64..=1.0,
            version in 1u32..=2,
        ) {
            let total: u32 = weights.iter().sum();
            let w: Vec<f64> = weights.iter().map(|x| f64::from(*x) / f64::from(total)).collect();
            let low = high * cut;
            let n = hash(&seed, &user, version).unwrap_or(0.0);
            prop_assert_eq!(Some(n), hash(&seed, &user, version), "hashes are pure");
            let before = choose_variation(n, &bucket_ranges(w.len(), high, Some(&w)));
            let after = choose_variation(n, &bucket_ranges(w.len(), low, Some(&w)));
            if let Some(a) = after {
                prop_assert_eq!(before, Some(a));
            }
        }
    }
}
