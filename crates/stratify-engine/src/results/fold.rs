//! Folding a metric's events into per-variant sums, per time bucket.
//!
//! A user's value f(u, D) at the end of bucket D counts only their events at
//! or after their first exposure x_u (and, with a window w, before x_u + w)
//! up to D: conversion = 1 if any, count = how many, sum = Σ property,
//! mean = Σ property / how many (no value before the first one).
//!
//! Per variant and bucket we need N (users with a value), S = Σ f and
//! Q = Σ f². f changes only in buckets where the user has events, so each
//! user adds *deltas* at those buckets (and N at their exposure bucket, or
//! at their first event for `mean`); prefix sums then give every bucket's
//! cumulative N, S, Q in one pass. The totals at the end are also kept
//! exactly from each user's final value.

use super::metrics::MetricKind;
use parking_lot::Mutex;
use std::sync::Arc;
use stratify_core::time::Millis;
use stratify_store::MetricEvent;

/// Everyone exposed, as columns indexed by exposure number.
pub(crate) struct Exposed {
    /// Index of the variant in the definition.
    pub variant: Vec<u16>,
    pub assigned_at: Vec<Millis>,
    /// Bucket of the first exposure.
    pub bucket: Vec<u32>,
    /// Store user number → exposure number + 1 (0: not exposed).
    pub by_uid: Vec<u32>,
    pub variants: usize,
    pub origin: Millis,
    pub bucket_ms: Millis,
    pub buckets: usize,
}

impl Exposed {
    pub fn len(&self) -> usize {
        self.variant.len()
    }

    fn bucket_of(&self, ts: Millis) -> u32 {
        (((ts - self.origin) / self.bucket_ms).max(0) as usize).min(self.buckets - 1) as u32
    }
}

/// Events that count, gathered from the scan's threads.
#[derive(Default)]
struct Gathered {
    user: Vec<u32>,
    bucket: Vec<u32>,
    value: Vec<f64>,
    /// Conversion only: the first bucket with an event, per user (u32::MAX: none).
    first: Vec<u32>,
}

/// Which of a user's events count, relative to their first exposure x.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Span {
    /// From x on (before x + w with a window).
    After(Option<Millis>),
    /// The CUPED covariate: in [x − lookback, x).
    Before(Millis),
}

/// Collects the events of one metric while the store scans them.
pub(crate) struct Collector {
    exposed: Arc<Exposed>,
    kind: MetricKind,
    span: Span,
    /// Events after this instant do not count.
    until: Millis,
    gathered: Mutex<Gathered>,
}

/// Per variant, per bucket: cumulative users, Σf, Σf²; and the exact totals.
pub(crate) struct Folded {
    pub n: Vec<Vec<u64>>,
    pub s: Vec<Vec<f64>>,
    pub q: Vec<Vec<f64>>,
    pub total_n: Vec<u64>,
    pub total_s: Vec<f64>,
    pub total_q: Vec<f64>,
    /// Each exposed user's final value (NaN: none, for `mean`).
    pub per_user: Vec<f64>,
}

impl Collector {
    pub fn new(exposed: Arc<Exposed>, kind: MetricKind, span: Span, until: Millis) -> Arc<Self> {
        let first = if kind == MetricKind::Conversion {
            vec![u32::MAX; exposed.len()]
        } else {
            Vec::new()
        };
        Arc::new(Collector {
            exposed,
            kind,
            span,
            until,
            gathered: Mutex::new(Gathered {
                first,
                ..Gathered::default()
            }),
        })
    }

    /// Takes a chunk of the metric's events (from any thread).
    pub fn take(&self, events: &[MetricEvent]) {
        let x = &self.exposed;
        let needs_value = matches!(self.kind, MetricKind::Sum | MetricKind::Mean);
        let mut user = Vec::with_capacity(events.len());
        let mut bucket = Vec::with_capacity(events.len());
        let mut value = Vec::new();
        for e in events {
            let Some(&slot) = usize::try_from(e.uid).ok().and_then(|u| x.by_uid.get(u)) else {
                continue;
            };
            if slot == 0 {
                continue;
            }
            let i = (slot - 1) as usize;
            let start = x.assigned_at[i];
            let counts = match self.span {
                Span::After(window) => {
                    e.ts >= start
                        && e.ts <= self.until
                        && window.is_none_or(|w| e.ts < start.saturating_add(w))
                }
                Span::Before(lookback) => e.ts < start && e.ts >= start.saturating_sub(lookback),
            };
            if !counts {
                continue;
            }
            if needs_value {
                match e.value {
                    Some(v) if v.is_finite() => value.push(v),
                    _ => continue,
                }
            }
            user.push(i as u32);
            bucket.push(x.bucket_of(e.ts));
        }
        let mut g = self.gathered.lock();
        if self.kind == MetricKind::Conversion {
            for (&i, &b) in user.iter().zip(&bucket) {
                let first = &mut g.first[i as usize];
                *first = (*first).min(b);
            }
        } else {
            g.user.extend_from_slice(&user);
            g.bucket.extend_from_slice(&bucket);
            g.value.extend_from_slice(&value);
        }
    }

    /// Folds what was gathered (call once the scan is done).
    pub fn fold(&self) -> Folded {
        let x = &self.exposed;
        let g = std::mem::take(&mut *self.gathered.lock());
        let (v, b) = (x.variants, x.buckets);
        let mut dn = vec![vec![0_i64; b]; v];
        let mut ds = vec![vec![0.0_f64; b]; v];
        let mut dq = vec![vec![0.0_f64; b]; v];
        let mut total_n = vec![0_u64; v];
        let mut total_s = vec![0.0_f64; v];
        let mut total_q = vec![0.0_f64; v];
        let mut per_user = vec![
            if self.kind == MetricKind::Mean {
                f64::NAN
            } else {
                0.0
            };
            x.len()
        ];

        // N: every exposed user from their exposure bucket, except for
        // `mean`, where a user has a value only from their first event.
        if self.kind != MetricKind::Mean {
            for i in 0..x.len() {
                let var = x.variant[i] as usize;
                dn[var][x.bucket[i] as usize] += 1;
                total_n[var] += 1;
            }
        }

        if self.kind == MetricKind::Conversion {
            for (i, &first) in g.first.iter().enumerate() {
                if first != u32::MAX {
                    per_user[i] = 1.0;
                    let var = x.variant[i] as usize;
                    ds[var][first as usize] += 1.0;
                    dq[var][first as usize] += 1.0;
                    total_s[var] += 1.0;
                    total_q[var] += 1.0;
                }
            }
        } else {
            // Group events by user (a counting sort), then walk each user's
            // buckets in order.
            let users = x.len();
            let mut start = vec![0_u32; users + 1];
            for &u in &g.user {
                start[u as usize + 1] += 1;
            }
            for i in 0..users {
                start[i + 1] += start[i];
            }
            let mut cursor = start.clone();
            let m = g.user.len();
            let mut by_user: Vec<(u32, f64)> = vec![(0, 0.0); m];
            for k in 0..m {
                let u = g.user[k] as usize;
                let value = g.value.get(k).copied().unwrap_or(1.0);
                by_user[cursor[u] as usize] = (g.bucket[k], value);
                cursor[u] += 1;
            }
            drop(g);
            for u in 0..users {
                let events = &mut by_user[start[u] as usize..start[u + 1] as usize];
                if events.is_empty() {
                    continue;
                }
                events.sort_unstable_by_key(|e| e.0);
                let var = x.variant[u] as usize;
                let (mut count, mut sum, mut f_old) = (0.0_f64, 0.0_f64, 0.0_f64);
                let mut count_before = 0.0_f64;
                let mut k = 0;
                while k < events.len() {
                    let bucket = events[k].0;
                    while k < events.len() && events[k].0 == bucket {
                        count += 1.0;
                        sum += events[k].1;
                        k += 1;
                    }
                    let f = match self.kind {
                        MetricKind::Mean => sum / count,
                        MetricKind::Count => count,
                        _ => sum,
                    };
                    if self.kind == MetricKind::Mean && count_before == 0.0 {
                        // A mean has a value from the user's first event on.
                        dn[var][bucket as usize] += 1;
                    }
                    count_before = count;
                    ds[var][bucket as usize] += f - f_old;
                    dq[var][bucket as usize] += f * f - f_old * f_old;
                    f_old = f;
                }
                if self.kind == MetricKind::Mean {
                    total_n[var] += 1;
                }
                total_s[var] += f_old;
                total_q[var] += f_old * f_old;
                per_user[u] = f_old;
            }
        }

        let cumulate = |d: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            d.into_iter()
                .map(|row| {
                    let mut acc = 0.0;
                    row.into_iter()
                        .map(|x| {
                            acc += x;
                            acc
                        })
                        .collect()
                })
                .collect()
        };
        let n = dn
            .into_iter()
            .map(|row| {
                let mut acc = 0_i64;
                row.into_iter()
                    .map(|x| {
                        acc += x;
                        acc.max(0) as u64
                    })
                    .collect()
            })
            .collect();
        Folded {
            n,
            s: cumulate(ds),
            q: cumulate(dq),
            total_n,
            total_s,
            total_q,
            per_user,
        }
    }
}
