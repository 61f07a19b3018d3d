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
use super::{DAY_MS, MAX_POINTS};
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
    /// Nobody yet, for `variants` variants.
    pub fn empty(variants: usize) -> Self {
        Exposed {
            variant: Vec::new(),
            assigned_at: Vec::new(),
            bucket: Vec::new(),
            by_uid: Vec::new(),
            variants,
            origin: 0,
            bucket_ms: DAY_MS,
            buckets: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.variant.len()
    }

    /// Store user number `uid` is exposure `i`.
    pub fn set_uid(&mut self, uid: i64, i: u32) {
        let Ok(uid) = usize::try_from(uid) else {
            return;
        };
        if self.by_uid.len() <= uid {
            self.by_uid.resize(uid + 1, 0);
        }
        self.by_uid[uid] = i + 1;
    }

    /// Lays the time series out for `to`: from the day of the first
    /// exposure (or of `to`, with nobody exposed), at most [`MAX_POINTS`]
    /// buckets of whole days; every exposure's bucket.
    pub fn lay_out(&mut self, first_exposure: Option<Millis>, to: Millis) {
        let origin = first_exposure
            .map(|t| t.div_euclid(DAY_MS) * DAY_MS)
            .unwrap_or(to.div_euclid(DAY_MS) * DAY_MS);
        let days = (to - origin) / DAY_MS + 1;
        let bucket_days = ((days + MAX_POINTS - 1) / MAX_POINTS).max(1);
        self.origin = origin;
        self.bucket_ms = bucket_days * DAY_MS;
        self.buckets = ((to - origin) / self.bucket_ms + 1) as usize;
        let (origin, bucket_ms) = (self.origin, self.bucket_ms);
        self.bucket.clear();
        self.bucket.extend(
            self.assigned_at
                .iter()
                .map(|&at| ((at - origin) / bucket_ms) as u32),
        );
    }

    fn bucket_of(&self, ts: Millis) -> u32 {
        (((ts - self.origin) / self.bucket_ms).max(0) as usize).min(self.buckets - 1) as u32
    }
}

/// For each variant name an exposure read names, its index among the
/// definition's variant `keys` (`None`: a variant the definition no longer has).
pub(crate) fn variant_indices(names: &[String], keys: &[&str]) -> Vec<Option<u16>> {
    names
        .iter()
        .map(|name| keys.iter().position(|k| k == name).map(|i| i as u16))
        .collect()
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
    /// Each exposed user's final value (NaN: none, for `mean`). Shared with
    /// the kept sums it was folded from: they copy it only if they change
    /// while it is still held.
    pub per_user: Arc<Vec<f64>>,
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
        let mut acc = Accumulator::new(x, self.kind);
        if self.kind == MetricKind::Conversion {
            for (i, &first) in g.first.iter().enumerate() {
                if first != u32::MAX {
                    acc.converted(i, first, 1.0);
                }
            }
            return acc.finish();
        }
        // Group events by user (a counting sort), then give each user's
        // (bucket, count, sum) runs in bucket order.
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
        let mut runs = Vec::new();
        for u in 0..users {
            let events = &mut by_user[start[u] as usize..start[u + 1] as usize];
            if events.is_empty() {
                continue;
            }
            events.sort_unstable_by_key(|e| e.0);
            runs.clear();
            for &(bucket, value) in events.iter() {
                match runs.last_mut() {
                    Some(Run {
                        bucket: b,
                        count,
                        sum,
                    }) if *b == bucket => {
                        *count += 1.0;
                        *sum += value;
                    }
                    _ => runs.push(Run {
                        bucket,
                        count: 1.0,
                        sum: value,
                    }),
                }
            }
            acc.user(u, &runs, 1.0);
        }
        acc.finish()
    }
}

/// A user's events in one bucket: how many, and the sum of their values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Run {
    pub bucket: u32,
    pub count: f64,
    pub sum: f64,
}

/// Per-variant, per-bucket deltas of N, S and Q, the totals and each user's
/// final value: what an [`Accumulator`] folds into, kept between calls by
/// `tally` for the kinds whose updates are exact sums.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sums {
    dn: Vec<Vec<i64>>,
    ds: Vec<Vec<f64>>,
    dq: Vec<Vec<f64>>,
    total_n: Vec<u64>,
    total_s: Vec<f64>,
    total_q: Vec<f64>,
    per_user: Arc<Vec<f64>>,
    /// Exposures whose N is in.
    exposed: usize,
}

/// Per-variant, per-bucket deltas of N, S and Q, and the exact totals,
/// from each user's value changes: the one fold of both the full
/// computation ([`Collector`]) and the incremental one (`tally`).
pub(crate) struct Accumulator<'a> {
    x: &'a Exposed,
    kind: MetricKind,
    sums: Sums,
}

impl<'a> Accumulator<'a> {
    pub fn new(x: &'a Exposed, kind: MetricKind) -> Self {
        Self::resume(x, kind, Sums::default())
    }

    /// Goes on from `sums` (folded for `x` as it was, with the same origin
    /// and bucket width): the buckets `x` has since are added, and the N of
    /// the users exposed since.
    pub fn resume(x: &'a Exposed, kind: MetricKind, mut sums: Sums) -> Self {
        let (v, b) = (x.variants, x.buckets);
        sums.dn.resize_with(v, Vec::new);
        sums.ds.resize_with(v, Vec::new);
        sums.dq.resize_with(v, Vec::new);
        for k in 0..v {
            sums.dn[k].resize(b, 0);
            sums.ds[k].resize(b, 0.0);
            sums.dq[k].resize(b, 0.0);
        }
        sums.total_n.resize(v, 0);
        sums.total_s.resize(v, 0.0);
        sums.total_q.resize(v, 0.0);
        let none = if kind == MetricKind::Mean {
            f64::NAN
        } else {
            0.0
        };
        Arc::make_mut(&mut sums.per_user).resize(x.len(), none);
        // N: every exposed user from their exposure bucket, except for
        // `mean`, where a user has a value only from their first event.
        if kind != MetricKind::Mean {
            for i in sums.exposed..x.len() {
                let var = x.variant[i] as usize;
                sums.dn[var][x.bucket[i] as usize] += 1;
                sums.total_n[var] += 1;
            }
        }
        sums.exposed = x.len();
        Accumulator { x, kind, sums }
    }

    /// Conversion: user `u` converted in bucket `first` (their earliest);
    /// `sign` −1 takes a conversion back out.
    pub fn converted(&mut self, u: usize, first: u32, sign: f64) {
        let s = &mut self.sums;
        Arc::make_mut(&mut s.per_user)[u] = if sign > 0.0 { 1.0 } else { 0.0 };
        let var = self.x.variant[u] as usize;
        s.ds[var][first as usize] += sign;
        s.dq[var][first as usize] += sign;
        s.total_s[var] += sign;
        s.total_q[var] += sign;
    }

    /// Count, sum or mean: user `u`'s events, one run per bucket, in bucket
    /// order; `sign` −1 takes those events back out (before the user's new
    /// runs go in).
    pub fn user(&mut self, u: usize, runs: &[Run], sign: f64) {
        if runs.is_empty() {
            return;
        }
        let s = &mut self.sums;
        let var = self.x.variant[u] as usize;
        let (mut count, mut sum, mut f_old) = (0.0_f64, 0.0_f64, 0.0_f64);
        for run in runs {
            let bucket = run.bucket as usize;
            if self.kind == MetricKind::Mean && count == 0.0 {
                // A mean has a value from the user's first event on.
                s.dn[var][bucket] += sign as i64;
            }
            count += run.count;
            sum += run.sum;
            let f = match self.kind {
                MetricKind::Mean => sum / count,
                MetricKind::Count => count,
                _ => sum,
            };
            s.ds[var][bucket] += sign * (f - f_old);
            s.dq[var][bucket] += sign * (f * f - f_old * f_old);
            f_old = f;
        }
        if self.kind == MetricKind::Mean {
            s.total_n[var] = s.total_n[var].saturating_add_signed(sign as i64);
        }
        s.total_s[var] += sign * f_old;
        s.total_q[var] += sign * (f_old * f_old);
        Arc::make_mut(&mut s.per_user)[u] = if sign > 0.0 {
            f_old
        } else if self.kind == MetricKind::Mean {
            f64::NAN
        } else {
            0.0
        };
    }

    pub fn sums(&self) -> &Sums {
        &self.sums
    }

    /// The sums, to go on from later ([`Accumulator::resume`]).
    pub fn into_sums(self) -> Sums {
        self.sums
    }

    /// Cumulates the deltas over the buckets.
    pub fn finish(self) -> Folded {
        let mut folded = Self::folded_sums(&self.sums);
        folded.per_user = self.sums.per_user;
        folded
    }

    /// [`Accumulator::finish`] of `sums`, leaving them as they are.
    pub fn folded(sums: &Sums) -> Folded {
        let mut folded = Self::folded_sums(sums);
        folded.per_user = sums.per_user.clone();
        folded
    }

    /// Everything but the per-user values (left empty).
    fn folded_sums(sums: &Sums) -> Folded {
        let cumulate = |d: &[Vec<f64>]| -> Vec<Vec<f64>> {
            d.iter()
                .map(|row| {
                    let mut acc = 0.0;
                    row.iter()
                        .map(|x| {
                            acc += x;
                            acc
                        })
                        .collect()
                })
                .collect()
        };
        let n = sums
            .dn
            .iter()
            .map(|row| {
                let mut acc = 0_i64;
                row.iter()
                    .map(|x| {
                        acc += x;
                        acc.max(0) as u64
                    })
                    .collect()
            })
            .collect();
        Folded {
            n,
            s: cumulate(&sums.ds),
            q: cumulate(&sums.dq),
            total_n: sums.total_n.clone(),
            total_s: sums.total_s.clone(),
            total_q: sums.total_q.clone(),
            per_user: Arc::default(),
        }
    }
}
