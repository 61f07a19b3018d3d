//! An in-memory copy of the events metrics read, one column set per
//! (event name, property), kept current by incremental scans of the log.
//!
//! The log is append-only and every event gets a larger sequence number, so
//! a copy that has seen the log up to sequence s is brought up to date by
//! reading the events after s: results reflect every committed event while
//! a warm request reads only what arrived since the last one. Erasing a
//! user drops every copy (their events must not outlive them).
//!
//! Bounded: at most [`MAX_CACHED_EVENTS`] events in all; past that the
//! least recently used copies go, and a metric whose events alone exceed
//! the bound is streamed from the log on every request instead.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::time::Millis;
use stratify_store::{MetricEvent, MetricScan, MetricSink, Metrics, StoreError};

/// Events kept in memory over all copies (24 bytes each: 60 M ≈ 1.4 GB).
pub const MAX_CACHED_EVENTS: usize = 60_000_000;

type Key = (String, Option<String>);

/// Remaps kept before every copy is dropped instead (a burst of merges
/// costs one re-read, not an ever longer list).
const MAX_REMAPS: usize = 1_000_000;

#[derive(Default)]
struct Copy {
    events: Vec<MetricEvent>,
    through_seq: i64,
    /// Names this copy's contents: events only ever added at the end.
    id: u64,
    last_used: u64,
    /// How many of [`Columns::remaps`] this copy has applied.
    remapped: usize,
}

#[derive(Default)]
pub struct Columns {
    copies: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Copy>>>>,
    clock: std::sync::atomic::AtomicU64,
    /// Bumped by `clear`: a refresh that started before it must not store.
    generation: std::sync::atomic::AtomicU64,
    /// Merges since the last `clear`, oldest first: `(visitor uid, person
    /// uid)`. Each copy applies the ones it has not yet, when next read.
    remaps: Mutex<Vec<(i64, i64)>>,
    /// Copies numbered so far.
    copies_made: std::sync::atomic::AtomicU64,
}

impl Columns {
    /// Forgets every copy (a user was erased).
    pub fn clear(&self) {
        let mut copies = self.copies.lock();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        copies.clear();
        self.remaps.lock().clear();
    }

    /// The events of uid `from` are uid `to`'s from now on (a merge).
    pub fn remap(&self, from: i64, to: i64) {
        let mut remaps = self.remaps.lock();
        if remaps.len() >= MAX_REMAPS {
            drop(remaps);
            self.clear();
            return;
        }
        remaps.push((from, to));
    }

    /// Applies the merges `copy` has not seen (chains followed: a visitor
    /// merged into a person later merged again ends at the last).
    /// Whether any applied.
    fn apply_remaps(&self, copy: &mut Copy) -> bool {
        let remaps = self.remaps.lock();
        if copy.remapped >= remaps.len() {
            copy.remapped = remaps.len();
            return false;
        }
        let mut map: HashMap<i64, i64> = HashMap::new();
        for &(from, to) in &remaps[copy.remapped..] {
            for target in map.values_mut() {
                if *target == from {
                    *target = to;
                }
            }
            map.insert(from, to);
        }
        copy.remapped = remaps.len();
        drop(remaps);
        for e in &mut copy.events {
            if let Some(&to) = map.get(&e.uid) {
                e.uid = to;
            }
        }
        true
    }

    /// Feeds every event of `event` (with `property`) to `feed`, from the
    /// copy brought up to date, or straight from the log when it is too big
    /// to keep.
    pub async fn visit(
        &self,
        store: &dyn Metrics,
        event: &str,
        property: Option<&str>,
        feed: &(dyn Fn(&[MetricEvent]) + Sync),
    ) -> Result<(), StoreError> {
        self.with_events(store, event, property, |_, events| {
            feed_parallel(events, feed)
        })
        .await
    }

    /// Calls `f` with every event of `event` (with `property`), from the copy
    /// brought up to date, and the copy's number: while a copy lives its
    /// events only grow at the end (a new number means read them again).
    pub async fn with_events<R>(
        &self,
        store: &dyn Metrics,
        event: &str,
        property: Option<&str>,
        f: impl FnOnce(u64, &[MetricEvent]) -> R,
    ) -> Result<R, StoreError> {
        use std::sync::atomic::Ordering;
        let key = (event.to_owned(), property.map(str::to_owned));
        let generation = self.generation.load(Ordering::SeqCst);
        let slot = self.copies.lock().entry(key.clone()).or_default().clone();
        let mut copy = slot.lock().await;
        if copy.through_seq == 0 && copy.events.is_empty() {
            // A new copy reads the log as it is now: no earlier merge applies.
            copy.remapped = self.remaps.lock().len();
            copy.id = self.copies_made.fetch_add(1, Ordering::Relaxed) + 1;
        }
        copy.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(Mutex::new(Vec::new()));
        let sink_fresh = fresh.clone();
        let sink: MetricSink = Arc::new(move |events: &[MetricEvent]| {
            sink_fresh.lock().extend_from_slice(events);
        });
        let outcome = store
            .scan_metric_events(
                MetricScan {
                    event: event.to_owned(),
                    property: property.map(str::to_owned),
                    since: Millis::MIN,
                    until: Millis::MAX,
                    after_seq: copy.through_seq,
                },
                sink,
            )
            .await?;
        let fresh = std::mem::take(&mut *fresh.lock());
        copy.events.extend_from_slice(&fresh);
        copy.through_seq = outcome.through_seq;
        if self.apply_remaps(&mut copy) {
            // Users changed in place: whoever read this copy reads it again.
            copy.id = self.copies_made.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let result = f(copy.id, &copy.events);
        // Keep it only within the budget and if nobody cleared meanwhile.
        let size = copy.events.len();
        drop(copy);
        let mut copies = self.copies.lock();
        if self.generation.load(Ordering::SeqCst) != generation || size > MAX_CACHED_EVENTS {
            copies.remove(&key);
            return Ok(result);
        }
        self.evict(&mut copies, &key);
        Ok(result)
    }

    /// Drops the least recently used copies (not `keep`) while over budget.
    fn evict(&self, copies: &mut HashMap<Key, Arc<tokio::sync::Mutex<Copy>>>, keep: &Key) {
        loop {
            let mut total = 0;
            let mut oldest: Option<(u64, Key)> = None;
            for (k, slot) in copies.iter() {
                // A copy being refreshed is in use: count it, never evict it.
                let Ok(copy) = slot.try_lock() else { continue };
                total += copy.events.len();
                if k != keep && oldest.as_ref().is_none_or(|(t, _)| copy.last_used < *t) {
                    oldest = Some((copy.last_used, k.clone()));
                }
            }
            match oldest {
                Some((_, k)) if total > MAX_CACHED_EVENTS => {
                    copies.remove(&k);
                }
                _ => return,
            }
        }
    }
}

/// Feeds `events` in chunks from two threads (the fold is CPU-bound).
fn feed_parallel(events: &[MetricEvent], feed: &(dyn Fn(&[MetricEvent]) + Sync)) {
    const CHUNK: usize = 65_536;
    let half = events.len() / 2;
    let (first, second) = events.split_at(half);
    std::thread::scope(|s| {
        s.spawn(|| first.chunks(CHUNK).for_each(feed));
        second.chunks(CHUNK).for_each(feed);
    });
}
