//! Results kept as exposures and events arrive.
//!
//! A full computation reads every exposure of the experiment and every event
//! of each metric, then folds them. A [`Tally`] (one per experiment, bucket
//! version and `from`) keeps instead:
//! - the exposures read so far, as columns, with the number of the last
//!   assignment read ([`stratify_store::Assignments::exposures_since`]);
//! - per metric and span, each exposed user's events that count, summed
//!   per day ([`MetricTally`]), and how far into the metric's column copy
//!   (`Columns`) it has read.
//!
//! A call then reads only the assignments written since and the events
//! appended since, and applies them. For conversion, count and sum metrics
//! the per-variant, per-bucket sums of the last call are kept too: each user
//! whose events changed has their old days taken out and their new ones put
//! in ([`Accumulator`], the full computation's own fold, run with a sign),
//! so a call costs what changed, not the number of users. A mean's
//! per-user values are quotients, whose removal is not exact in floating
//! point: its per-user day sums are folded afresh each call. Sums are the
//! same as a full recomputation's whenever they are exact in floating
//! point (a property test checks this on random data with values in
//! quarters); otherwise they can differ in the last bits, as two full
//! computations adding in different orders can.
//!
//! Three things make a user's past events count again, and are handled as
//! arrivals: a new exposure; an exposure whose user had no profile when it
//! was read, once that user appears; and a tally read with a later `to`
//! (events and exposures after the previous `to` wait until it passes).
//! A merge or an erasure changes exposures and events in place: every
//! tally is dropped ([`Tallies::clear`]).

use super::fold::{Accumulator, Exposed, Folded, Run, Span, Sums};
use super::metrics::{Metric, MetricKind};
use super::DAY_MS;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stratify_core::time::Millis;
use stratify_store::{Exposures, MetricEvent};

/// Experiments whose tallies are kept (least recently used go first).
pub const MAX_TALLIES: usize = 16;
/// Exposures kept over all tallies; past that the least recently used go.
pub const MAX_TALLIED_EXPOSURES: usize = 20_000_000;

type Key = (String, u32, Millis);

/// The variant of an exposure to a variant the definition no longer has.
const RETIRED: u16 = u16::MAX;

/// Every experiment's tally.
#[derive(Default)]
pub struct Tallies {
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Tally>>>>,
    /// Bumped by `clear`: a tally built before it starts again.
    generation: AtomicU64,
    clock: AtomicU64,
}

impl Tallies {
    /// Forgets every tally (a user was merged or erased).
    pub fn clear(&self) {
        let mut slots = self.slots.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        slots.clear();
    }

    /// The tally of `(experiment, bucket version, from)`, new if none.
    pub(crate) fn slot(
        &self,
        experiment: &str,
        bucket_version: u32,
        from: Millis,
    ) -> Arc<tokio::sync::Mutex<Tally>> {
        let key = (experiment.to_owned(), bucket_version, from);
        let mut slots = self.slots.lock();
        let slot = slots.entry(key.clone()).or_default().clone();
        if let Ok(mut t) = slot.try_lock() {
            t.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
        }
        // Within bounds: drop the least recently used others.
        loop {
            let mut exposures = 0;
            let mut oldest: Option<(u64, Key)> = None;
            for (k, s) in slots.iter() {
                let Ok(t) = s.try_lock() else { continue };
                exposures += t.exposed.len();
                if *k != key && oldest.as_ref().is_none_or(|(at, _)| t.last_used < *at) {
                    oldest = Some((t.last_used, k.clone()));
                }
            }
            match oldest {
                Some((_, k)) if slots.len() > MAX_TALLIES || exposures > MAX_TALLIED_EXPOSURES => {
                    slots.remove(&k);
                }
                _ => break,
            }
        }
        slot
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// An exposure read after `to`, applied once a later `to` passes it.
#[derive(Debug, Clone)]
struct Waiting {
    uid: Option<i64>,
    user: Option<String>,
    variant: u16,
    assigned_at: Millis,
}

/// One experiment's exposures so far, and its metrics' tallies.
pub(crate) struct Tally {
    generation: u64,
    /// Built: `cursor` is meaningful.
    built: bool,
    /// The definition's variant keys the exposure indices refer to.
    variants: Vec<String>,
    /// The last assignment number read.
    cursor: i64,
    /// The latest `to` applied.
    to: Millis,
    pub(crate) exposed: Exposed,
    min_assigned: Option<Millis>,
    /// Exposures to a variant the definition does not have.
    pub(crate) excluded: u64,
    waiting: Vec<Waiting>,
    /// Exposures whose user had no profile when read: user id → index.
    unresolved: HashMap<String, u32>,
    /// The largest user number looked at for `unresolved`.
    resolved_through: i64,
    /// Exposure indices in the order their events became countable.
    arrivals: Vec<u32>,
    /// Per exposure: its place in `arrivals` (u32::MAX: none yet).
    arrival: Vec<u32>,
    metrics: HashMap<String, MetricTally>,
    last_used: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            generation: 0,
            built: false,
            variants: Vec::new(),
            cursor: -1,
            to: Millis::MIN,
            exposed: Exposed::empty(0),
            min_assigned: None,
            excluded: 0,
            waiting: Vec::new(),
            unresolved: HashMap::new(),
            resolved_through: 0,
            arrivals: Vec::new(),
            arrival: Vec::new(),
            metrics: HashMap::new(),
            last_used: 0,
        }
    }
}

/// What a tally reads: the assignments written after a number, and the
/// users numbered after one (see [`stratify_store::Assignments::exposures_since`]).
#[async_trait::async_trait]
pub(crate) trait Source: Send + Sync {
    async fn exposures_since(&self, after_seq: i64) -> Result<Exposures, crate::EngineError>;
    /// (uid, user id) of up to `limit` users numbered after `after_uid`, in order.
    async fn user_ids_after(
        &self,
        after_uid: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, crate::EngineError>;
}

impl Tally {
    /// Whether this tally can answer for `to` as things are; if not it is
    /// started again (a clear since it was built, other variants, an
    /// earlier `to`).
    pub fn reset_unless_current(&mut self, generation: u64, variants: &[String], to: Millis) {
        if !self.built || self.generation != generation || self.variants != variants || to < self.to
        {
            let last_used = self.last_used;
            *self = Tally {
                generation,
                built: true,
                variants: variants.to_vec(),
                exposed: Exposed::empty(variants.len()),
                resolved_through: 0,
                last_used,
                ..Tally::default()
            };
        }
    }

    /// Reads the exposures written since the last call and applies those at
    /// or before `to`; lays the buckets out for `to`.
    pub async fn refresh(
        &mut self,
        source: &dyn Source,
        from: Millis,
        to: Millis,
    ) -> Result<(), crate::EngineError> {
        let fresh = source.exposures_since(self.cursor).await?;
        self.cursor = fresh.through_seq;
        let keys: Vec<&str> = self.variants.iter().map(String::as_str).collect();
        let index_of = super::fold::variant_indices(&fresh.variants, &keys);
        let without_profile = |w: &Waiting| w.uid.is_none() && w.user.is_some();
        if self.unresolved.is_empty() && !self.waiting.iter().any(without_profile) {
            // Nobody to look for among users numbered up to the read.
            self.resolved_through = self.resolved_through.max(fresh.max_uid);
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        let mut no_profile = fresh.no_profile.into_iter().peekable();
        for k in 0..fresh.uid.len() {
            let user = no_profile
                .next_if(|(row, _)| *row as usize == k)
                .map(|(_, user)| user);
            if fresh.assigned_at[k] < from {
                continue;
            }
            // A variant the definition lacks is counted as excluded once
            // its exposure is due, like the others.
            let variant = index_of[fresh.variant[k] as usize].unwrap_or(RETIRED);
            waiting.push(Waiting {
                uid: fresh.uid[k],
                user: user.filter(|_| variant != RETIRED),
                variant,
                assigned_at: fresh.assigned_at[k],
            });
        }
        // Users who had no profile: those numbered since may be them (a
        // user is numbered once, when their profile is first written).
        let mut pending: HashMap<String, usize> = waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| without_profile(w))
            .filter_map(|(k, w)| Some((w.user.clone()?, k)))
            .collect();
        while !self.unresolved.is_empty() || !pending.is_empty() {
            let page = source.user_ids_after(self.resolved_through, 10_000).await?;
            let Some(&(last, _)) = page.last() else { break };
            for (uid, user) in page {
                if let Some(i) = self.unresolved.remove(&user) {
                    self.exposed.set_uid(uid, i);
                    self.arrive(i);
                } else if let Some(k) = pending.remove(&user) {
                    waiting[k].uid = Some(uid);
                }
            }
            self.resolved_through = last;
        }
        let (due, later): (Vec<Waiting>, Vec<Waiting>) =
            waiting.into_iter().partition(|w| w.assigned_at <= to);
        self.waiting = later;
        for w in due {
            self.admit(w);
        }
        self.to = to;
        self.exposed.lay_out(self.min_assigned, to);
        Ok(())
    }

    fn admit(&mut self, w: Waiting) {
        if w.variant == RETIRED {
            self.excluded += 1;
            return;
        }
        let i = self.exposed.len() as u32;
        self.exposed.variant.push(w.variant);
        self.exposed.assigned_at.push(w.assigned_at);
        self.exposed.bucket.push(0);
        self.arrival.push(u32::MAX);
        self.min_assigned = Some(
            self.min_assigned
                .map_or(w.assigned_at, |m| m.min(w.assigned_at)),
        );
        match (w.uid, w.user) {
            (Some(uid), _) => {
                self.exposed.set_uid(uid, i);
                self.arrive(i);
            }
            (None, Some(user)) => {
                self.unresolved.insert(user, i);
            }
            (None, None) => {}
        }
    }

    fn arrive(&mut self, i: u32) {
        self.arrival[i as usize] = self.arrivals.len() as u32;
        self.arrivals.push(i);
    }

    /// One metric's fold for the current exposures and `to`, given its
    /// column copy (`copy` names it: another copy starts the tally again).
    pub fn fold(
        &mut self,
        metric: &Metric,
        span: Span,
        copy: u64,
        events: &[MetricEvent],
    ) -> Folded {
        let key = format!(
            "{}\u{0}{:?}\u{0}{:?}",
            metric.event, metric.property, metric.window_ms
        );
        self.fold_kind(key, metric.kind, span, copy, events)
    }

    /// [`Tally::fold`] of a metric named by `key` (its events and window).
    fn fold_kind(
        &mut self,
        key: String,
        kind: MetricKind,
        span: Span,
        copy: u64,
        events: &[MetricEvent],
    ) -> Folded {
        let key = format!("{key}\u{0}{kind:?}\u{0}{span:?}");
        let tally = self
            .metrics
            .entry(key)
            .or_insert_with(|| MetricTally::new(kind, span));
        let view = Arrived {
            exposed: &self.exposed,
            arrivals: &self.arrivals,
            arrival: &self.arrival,
        };
        tally.advance(&view, copy, events, self.to);
        tally.fold(&self.exposed)
    }
}

/// The exposures whose events count, as a metric tally sees them.
struct Arrived<'a> {
    exposed: &'a Exposed,
    arrivals: &'a [u32],
    arrival: &'a [u32],
}

/// One user's events of one day that count: how many, and their sum.
#[derive(Debug, Clone, Copy)]
struct Day {
    day: i64,
    count: u32,
    sum: f64,
}

/// One more event of `value` on `day` in a user's days (kept in day order).
fn add_to_day(days: &mut Vec<Day>, day: i64, value: f64) {
    match days.binary_search_by_key(&day, |d| d.day) {
        Ok(k) => {
            days[k].count += 1;
            days[k].sum += value;
        }
        Err(k) => days.insert(
            k,
            Day {
                day,
                count: 1,
                sum: value,
            },
        ),
    }
}

/// One metric's events per exposed user, per day.
pub(crate) struct MetricTally {
    kind: MetricKind,
    span: Span,
    copy: Option<u64>,
    /// Events of the copy applied.
    seen: usize,
    /// Arrivals applied.
    arrived: usize,
    to: Millis,
    /// Per exposure, their days in order (conversion: only the earliest).
    days: Vec<Vec<Day>>,
    /// Events of applied users after `to`.
    waiting: Vec<(u32, Millis, f64)>,
    /// The last fold's sums and the layout they are for (not for `mean`,
    /// whose per-user values are quotients: a fresh fold each call keeps
    /// them exact).
    kept: Option<(Millis, Millis, Sums)>,
    /// Users whose days changed since the last fold, with their days then.
    changed: HashMap<u32, Vec<Day>>,
}

impl MetricTally {
    fn new(kind: MetricKind, span: Span) -> Self {
        MetricTally {
            kind,
            span,
            copy: None,
            seen: 0,
            arrived: 0,
            to: Millis::MIN,
            days: Vec::new(),
            waiting: Vec::new(),
            kept: None,
            changed: HashMap::new(),
        }
    }

    /// The exposure an event belongs to, if it counts for it at all (its
    /// value: 1 for count and conversion).
    fn counts(&self, x: &Exposed, e: &MetricEvent) -> Option<(u32, f64)> {
        let slot = *usize::try_from(e.uid).ok().and_then(|u| x.by_uid.get(u))?;
        if slot == 0 {
            return None;
        }
        let i = slot - 1;
        let start = x.assigned_at[i as usize];
        let counts = match self.span {
            Span::After(window) => {
                e.ts >= start && window.is_none_or(|w| e.ts < start.saturating_add(w))
            }
            Span::Before(lookback) => e.ts < start && e.ts >= start.saturating_sub(lookback),
        };
        if !counts {
            return None;
        }
        let value = match self.kind {
            MetricKind::Sum | MetricKind::Mean => e.value.filter(|v| v.is_finite())?,
            _ => 1.0,
        };
        Some((i, value))
    }

    fn add(&mut self, i: u32, ts: Millis, value: f64) {
        if ts > self.to {
            self.waiting.push((i, ts, value));
            return;
        }
        let day = ts.div_euclid(DAY_MS);
        if self.kept.is_some() && !self.changed.contains_key(&i) {
            self.changed.insert(i, self.days[i as usize].clone());
        }
        let days = &mut self.days[i as usize];
        if self.kind == MetricKind::Conversion {
            match days.first_mut() {
                Some(d) if d.day <= day => {}
                Some(d) => d.day = day,
                None => days.push(Day {
                    day,
                    count: 1,
                    sum: 1.0,
                }),
            }
            return;
        }
        add_to_day(days, day, value);
    }

    fn advance(&mut self, view: &Arrived<'_>, copy: u64, events: &[MetricEvent], to: Millis) {
        let x = view.exposed;
        if self.copy != Some(copy) || events.len() < self.seen || to < self.to {
            *self = MetricTally::new(self.kind, self.span);
            self.copy = Some(copy);
        }
        self.days.resize_with(x.len(), Vec::new);
        // Events that waited for `to`.
        if to > self.to {
            self.to = to;
            let waiting = std::mem::take(&mut self.waiting);
            for (i, ts, value) in waiting {
                self.add(i, ts, value);
            }
        }
        // New events of users applied before.
        let before = self.arrived as u32;
        for e in &events[self.seen..] {
            if let Some((i, value)) = self.counts(x, e) {
                if view.arrival[i as usize] < before {
                    self.add(i, e.ts, value);
                }
            }
        }
        // Every event of users who arrived since (one pass over the copy,
        // filtered on two threads, applied on this one).
        if view.arrivals.len() > self.arrived {
            let matched = Mutex::new(Vec::new());
            let this = &*self;
            let filter = |chunk: &[MetricEvent]| {
                let mut found = Vec::new();
                for e in chunk {
                    if let Some((i, value)) = this.counts(x, e) {
                        let rank = view.arrival[i as usize];
                        if rank != u32::MAX && rank >= before {
                            found.push((i, e.ts, value));
                        }
                    }
                }
                matched.lock().extend(found);
            };
            let (first, second) = events.split_at(events.len() / 2);
            std::thread::scope(|s| {
                s.spawn(|| first.chunks(65_536).for_each(filter));
                second.chunks(65_536).for_each(filter);
            });
            self.arrive_all(matched.into_inner());
            self.arrived = view.arrivals.len();
        }
        self.seen = events.len();
    }

    /// Every event of users who just arrived (whose days are empty):
    /// grouped by user (a counting sort), then each user's days built at
    /// once; events after `to` wait.
    fn arrive_all(&mut self, mut matched: Vec<(u32, Millis, f64)>) {
        let to = self.to;
        self.waiting
            .extend(matched.iter().filter(|m| m.1 > to).copied());
        matched.retain(|m| m.1 <= to);
        let users = self.days.len();
        let mut start = vec![0_u32; users + 1];
        for m in &matched {
            start[m.0 as usize + 1] += 1;
        }
        for u in 0..users {
            start[u + 1] += start[u];
        }
        let mut cursor = start.clone();
        let mut grouped: Vec<(i64, f64)> = vec![(0, 0.0); matched.len()];
        for &(i, ts, value) in &matched {
            let slot = &mut cursor[i as usize];
            grouped[*slot as usize] = (ts.div_euclid(DAY_MS), value);
            *slot += 1;
        }
        drop(matched);
        for u in 0..users {
            let mine = &mut grouped[start[u] as usize..start[u + 1] as usize];
            if mine.is_empty() {
                continue;
            }
            if self.kept.is_some() {
                self.changed
                    .entry(u as u32)
                    .or_insert_with(|| self.days[u].clone());
            }
            let days = &mut self.days[u];
            if self.kind == MetricKind::Conversion {
                let day = mine.iter().map(|m| m.0).min().expect("one");
                match days.first_mut() {
                    Some(d) => d.day = d.day.min(day),
                    None => days.push(Day {
                        day,
                        count: 1,
                        sum: 1.0,
                    }),
                }
                continue;
            }
            mine.sort_unstable_by_key(|m| m.0);
            for &(day, value) in mine.iter() {
                add_to_day(days, day, value);
            }
        }
    }

    /// The fold for `x`: from the last one, with each changed user's old
    /// days taken out and new ones put in, while the layout holds (same
    /// origin and bucket width; more buckets are fine); else afresh.
    fn fold(&mut self, x: &Exposed) -> Folded {
        let origin_day = x.origin.div_euclid(DAY_MS);
        let bucket_days = x.bucket_ms / DAY_MS;
        let last = x.buckets.saturating_sub(1) as i64;
        let bucket = |day: i64| ((day - origin_day).max(0) / bucket_days).min(last) as u32;
        let runs_of = |days: &[Day], runs: &mut Vec<Run>| {
            runs.clear();
            for d in days {
                let b = bucket(d.day);
                match runs.last_mut() {
                    Some(r) if r.bucket == b => {
                        r.count += f64::from(d.count);
                        r.sum += d.sum;
                    }
                    _ => runs.push(Run {
                        bucket: b,
                        count: f64::from(d.count),
                        sum: d.sum,
                    }),
                }
            }
        };
        let mut runs: Vec<Run> = Vec::new();
        let conversion = self.kind == MetricKind::Conversion;
        let resumable = match &self.kept {
            Some((origin, bucket_ms, _)) => *origin == x.origin && *bucket_ms == x.bucket_ms,
            None => false,
        };
        let acc = if resumable {
            let (_, _, sums) = self.kept.take().expect("kept");
            let mut acc = Accumulator::resume(x, self.kind, sums);
            let mut old_runs: Vec<Run> = Vec::new();
            for (u, old) in self.changed.drain() {
                let (u, new) = (u as usize, &self.days[u as usize]);
                if conversion {
                    if let Some(first) = old.first() {
                        acc.converted(u, bucket(first.day), -1.0);
                    }
                    if let Some(first) = new.first() {
                        acc.converted(u, bucket(first.day), 1.0);
                    }
                    continue;
                }
                runs_of(&old, &mut old_runs);
                acc.user(u, &old_runs, -1.0);
                runs_of(new, &mut runs);
                acc.user(u, &runs, 1.0);
            }
            acc
        } else {
            self.changed.clear();
            let mut acc = Accumulator::new(x, self.kind);
            for (u, days) in self.days.iter().enumerate() {
                let Some(first) = days.first() else { continue };
                if conversion {
                    acc.converted(u, bucket(first.day), 1.0);
                    continue;
                }
                runs_of(days, &mut runs);
                acc.user(u, &runs, 1.0);
            }
            acc
        };
        if self.kind == MetricKind::Mean {
            return acc.finish();
        }
        let folded = Accumulator::folded(acc.sums());
        self.kept = Some((x.origin, x.bucket_ms, acc.into_sums()));
        folded
    }
}

#[cfg(test)]
mod tests {
    //! The tally against a full recomputation on random data: exposures
    //! and events arrive in random batches (some exposures before their
    //! user has a profile, some events and exposures after `to`), and after
    //! every batch each kind and span folds to exactly what
    //! [`super::super::fold::Collector`] gives over everything so far.
    //! Values are multiples of ¼, so every sum is exact in either order.
    use super::*;
    use crate::results::fold::Collector;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const DAY: Millis = DAY_MS;
    const T0: Millis = 1_700_000_000_000 / DAY * DAY;

    #[derive(Default)]
    struct Fake {
        /// (seq, user, uid known to the store when read?, variant, assigned_at)
        rows: Vec<(i64, String, String, Millis)>,
        /// user id → uid, for users with a profile.
        profiles: Vec<(i64, String)>,
    }

    fn uid_of(fake: &Fake, user: &str) -> Option<i64> {
        fake.profiles
            .iter()
            .find(|(_, u)| u == user)
            .map(|(uid, _)| *uid)
    }

    #[async_trait::async_trait]
    impl Source for parking_lot::Mutex<Fake> {
        async fn exposures_since(&self, after: i64) -> Result<Exposures, crate::EngineError> {
            let fake = self.lock();
            let mut out = Exposures {
                through_seq: after,
                max_uid: fake.profiles.iter().map(|p| p.0).max().unwrap_or(0),
                ..Exposures::default()
            };
            for (seq, user, variant, at) in fake.rows.iter().filter(|r| r.0 > after) {
                let index = match out.variants.iter().position(|v| v == variant) {
                    Some(i) => i,
                    None => {
                        out.variants.push(variant.clone());
                        out.variants.len() - 1
                    }
                };
                let uid = uid_of(&fake, user);
                if uid.is_none() {
                    out.no_profile.push((out.uid.len() as u32, user.clone()));
                }
                out.uid.push(uid);
                out.variant.push(index as u16);
                out.assigned_at.push(*at);
                out.through_seq = out.through_seq.max(*seq);
            }
            Ok(out)
        }

        async fn user_ids_after(
            &self,
            after: i64,
            limit: u32,
        ) -> Result<Vec<(i64, String)>, crate::EngineError> {
            let mut users: Vec<(i64, String)> = self
                .lock()
                .profiles
                .iter()
                .filter(|p| p.0 > after)
                .cloned()
                .collect();
            users.sort();
            users.truncate(limit as usize);
            Ok(users)
        }
    }

    /// The full computation's answer over what the fake holds now, with
    /// the exposures in `order`'s order (sums of non-dyadic means depend on
    /// it; which users and events count does not).
    fn full(
        fake: &Fake,
        order: &Exposed,
        variants: &[String],
        events: &[MetricEvent],
        (kind, span): (MetricKind, Span),
        (from, to): (Millis, Millis),
    ) -> (Arc<Exposed>, Folded) {
        let mut x = Exposed::empty(variants.len());
        let mut rows = fake.rows.clone();
        rows.sort_by_key(|r| order.assigned_at.iter().position(|&at| at == r.3));
        for (_, user, variant, at) in &rows {
            let Some(v) = variants.iter().position(|k| k == variant) else {
                continue;
            };
            if *at < from || *at > to {
                continue;
            }
            let i = x.len() as u32;
            x.variant.push(v as u16);
            x.assigned_at.push(*at);
            if let Some(uid) = uid_of(fake, user) {
                x.set_uid(uid, i);
            }
        }
        let first = x.assigned_at.iter().min().copied();
        x.lay_out(first, to);
        let x = Arc::new(x);
        let c = Collector::new(x.clone(), kind, span, to);
        c.take(events);
        (x.clone(), c.fold())
    }

    /// Per-user values keyed by (variant, exposure time, uid) so that the
    /// two exposure orders compare.
    fn by_user(x: &Exposed, f: &Folded) -> Vec<(u16, Millis, i64, u64)> {
        let mut uid_of_slot = vec![-1_i64; x.len()];
        for (uid, &slot) in x.by_uid.iter().enumerate() {
            if slot > 0 {
                uid_of_slot[slot as usize - 1] = uid as i64;
            }
        }
        let mut out: Vec<_> = (0..x.len())
            .map(|i| {
                (
                    x.variant[i],
                    x.assigned_at[i],
                    uid_of_slot[i],
                    f.per_user[i].to_bits(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_tally_fed_in_batches_folds_exactly_as_a_full_recomputation() {
        let kinds = [
            MetricKind::Conversion,
            MetricKind::Count,
            MetricKind::Sum,
            MetricKind::Mean,
        ];
        let spans = [
            Span::After(None),
            Span::After(Some(2 * DAY + 5)),
            Span::Before(3 * DAY),
        ];
        for seed in 0..12_u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let variants: Vec<String> = vec!["control".into(), "a".into(), "b".into()];
            let users = rng.random_range(20..200_i64);
            let from = if seed % 3 == 0 {
                T0 + 2 * DAY
            } else {
                Millis::MIN
            };
            let fake = parking_lot::Mutex::new(Fake::default());
            let mut next_uid = 0_i64;
            let mut events: Vec<MetricEvent> = Vec::new();
            let mut tally = Tally::default();
            let mut to = T0 + DAY;
            let mut seq = 0_i64;
            let copy = 7;
            for _batch in 0..rng.random_range(3..9) {
                {
                    let mut f = fake.lock();
                    // Profiles appear (users are numbered in order).
                    for _ in 0..rng.random_range(0..users / 2) {
                        let user = format!("u{}", rng.random_range(0..users));
                        if uid_of(&f, &user).is_none() {
                            next_uid += 1;
                            f.profiles.push((next_uid, user));
                        }
                    }
                    // Exposures: new users only (a user is assigned once);
                    // some to a variant the definition lacks, some after `to`.
                    for _ in 0..rng.random_range(0..users / 3) {
                        let user = format!("u{}", rng.random_range(0..users));
                        if f.rows.iter().any(|r| r.1 == user) {
                            continue;
                        }
                        let variant = match rng.random_range(0..10) {
                            0 => "retired".to_string(),
                            k => variants[k % 3].clone(),
                        };
                        let at = T0 + rng.random_range(0..12 * DAY);
                        if f.rows.iter().any(|r| r.3 == at) {
                            continue; // exposure times name exposures here
                        }
                        seq += rng.random_range(1..3);
                        f.rows.push((seq, user, variant, at));
                    }
                    // Events of anyone with a profile, before and after their
                    // exposure and `to`; some without a usable value.
                    let profiles = f.profiles.clone();
                    if !profiles.is_empty() {
                        for _ in 0..rng.random_range(0..400) {
                            let (uid, _) = &profiles[rng.random_range(0..profiles.len())];
                            let value = match rng.random_range(0..8) {
                                0 => None,
                                1 => Some(f64::NAN),
                                _ => Some(f64::from(rng.random_range(-40..400_i32)) / 4.0),
                            };
                            events.push(MetricEvent {
                                uid: *uid,
                                ts: T0 - 4 * DAY + rng.random_range(0..18 * DAY),
                                value,
                            });
                        }
                    }
                }
                if rng.random_bool(0.7) {
                    to += rng.random_range(0..3 * DAY);
                }
                tally.reset_unless_current(0, &variants, to);
                tally.refresh(&fake, from, to).await.expect("refresh");
                for kind in kinds {
                    for span in spans {
                        let got = tally.fold_kind(format!("{span:?}"), kind, span, copy, &events);
                        let (x, want) = full(
                            &fake.lock(),
                            &tally.exposed,
                            &variants,
                            &events,
                            (kind, span),
                            (from, to),
                        );
                        let at = format!("seed {seed}, {kind:?}, {span:?}, to {to}");
                        assert_eq!(tally.exposed.len(), x.len(), "{at}: exposed");
                        assert_eq!(
                            (
                                tally.exposed.origin,
                                tally.exposed.bucket_ms,
                                tally.exposed.buckets
                            ),
                            (x.origin, x.bucket_ms, x.buckets),
                            "{at}: layout"
                        );
                        assert_eq!(got.n, want.n, "{at}: N per bucket");
                        assert_eq!(got.s, want.s, "{at}: S per bucket");
                        assert_eq!(got.q, want.q, "{at}: Q per bucket");
                        assert_eq!(got.total_n, want.total_n, "{at}: N");
                        assert_eq!(got.total_s, want.total_s, "{at}: S");
                        assert_eq!(got.total_q, want.total_q, "{at}: Q");
                        assert_eq!(
                            by_user(&tally.exposed, &got),
                            by_user(&x, &want),
                            "{at}: per user"
                        );
                    }
                }
                let excluded = fake
                    .lock()
                    .rows
                    .iter()
                    .filter(|r| r.2 == "retired" && r.3 >= from && r.3 <= to)
                    .count() as u64;
                assert_eq!(tally.excluded, excluded, "seed {seed}: excluded");
            }
        }
    }
}
