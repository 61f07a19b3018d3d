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

use super::checkpoint;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use stratify_core::time::Millis;
use stratify_store::{MetricEvent, MetricScan, MetricSink, Metrics, Store, StoreError};

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
    /// The log position of the last checkpoint written of it.
    saved: i64,
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
    /// Where copies are saved between runs (see `checkpoint`), if anywhere.
    checkpoints: Option<PathBuf>,
}

impl Columns {
    /// Where copies are saved, if anywhere.
    pub fn checkpoint_dir(&self) -> Option<&std::path::Path> {
        self.checkpoints.as_deref()
    }

    /// Copies saved in `dir` between runs.
    pub fn with_checkpoints(dir: PathBuf) -> Self {
        Columns {
            checkpoints: Some(dir),
            ..Columns::default()
        }
    }

    /// Forgets every copy, in memory and on disk (a user was erased).
    pub fn clear(&self) {
        let mut copies = self.copies.lock();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        copies.clear();
        self.remaps.lock().clear();
        if let Some(dir) = &self.checkpoints {
            checkpoint::remove_all(dir);
        }
    }

    /// Takes copies read by `load`; a copy read from the log meanwhile stays.
    pub fn adopt(&self, loaded: Loaded) -> (usize, usize) {
        let mut copies = self.copies.lock();
        let events = loaded.iter().map(|(_, events)| events.len()).sum();
        let count = loaded.len();
        for (header, events) in loaded {
            let id = self
                .copies_made
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let copy = Copy {
                events,
                through_seq: header.through_seq,
                id,
                saved: header.through_seq,
                ..Copy::default()
            };
            copies
                .entry((header.event, header.property))
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(copy)));
        }
        (count, events)
    }

    /// Saves every copy that changed since it was last saved. An erasure
    /// or merge during the save makes the files it wrote stale (they record
    /// the erasure log's number from before), or removes them (`clear`).
    pub async fn save(&self, store: &dyn Store, now: Millis) -> Result<usize, StoreError> {
        use std::sync::atomic::Ordering;
        let Some(dir) = self.checkpoints.clone() else {
            return Ok(0);
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let erasure_seq = store.last_erasure_seq().await?;
        let slots: Vec<(Key, Arc<tokio::sync::Mutex<Copy>>)> = self
            .copies
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut saved = 0;
        for ((event, property), slot) in slots {
            let mut copy = slot.lock_owned().await;
            if copy.through_seq == 0 || copy.saved == copy.through_seq {
                continue;
            }
            if self.apply_remaps(&mut copy) {
                copy.id = self.copies_made.fetch_add(1, Ordering::Relaxed) + 1;
            }
            let header = checkpoint::Header {
                event,
                property,
                through_seq: copy.through_seq,
                erasure_seq,
                written_at: now,
                events: copy.events.len() as u64,
            };
            let into = dir.clone();
            let copy = tokio::task::spawn_blocking(move || {
                let written = checkpoint::write(&into, &header, &copy.events);
                (copy, header, written)
            })
            .await
            .map_err(StoreError::Task)?;
            let (mut copy, header, written) = copy;
            match written {
                Ok(()) => {
                    copy.saved = header.through_seq;
                    saved += 1;
                }
                Err(e) => tracing::warn!(error = %e, "cannot save a metric copy checkpoint"),
            }
            if self.generation.load(Ordering::SeqCst) != generation {
                // Cleared meanwhile: nothing written from before may stay.
                checkpoint::remove_all(&dir);
                return Ok(0);
            }
        }
        Ok(saved)
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

/// Saved copies read and checked, not yet taken by a [`Columns`].
pub type Loaded = Vec<(checkpoint::Header, Vec<MetricEvent>)>;

/// Reads the saved copies in `dir` that still hold for the store as it is
/// now, deleting the others (see `checkpoint`), within [`MAX_CACHED_EVENTS`];
/// with the erasure log's number they were checked against.
pub async fn load(
    dir: PathBuf,
    store: &dyn Store,
    now: Millis,
) -> Result<(i64, Loaded), StoreError> {
    let last_event = store.last_event_seq().await?;
    let last_erasure = store.last_erasure_seq().await?;
    tokio::task::spawn_blocking(move || {
        let mut loaded = Vec::new();
        let mut total = 0;
        for file in checkpoint::files(&dir) {
            let outcome = checkpoint::read(&file).and_then(|(header, events)| {
                checkpoint::check(&header, last_event, last_erasure, now)?;
                Ok((header, events))
            });
            match outcome {
                Ok((header, events)) if total + events.len() <= MAX_CACHED_EVENTS => {
                    total += events.len();
                    loaded.push((header, events));
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(file = %file.display(), ?why, "metric copy checkpoint not used; the copy is read from the log");
                    let _ = std::fs::remove_file(&file);
                }
            }
        }
        loaded
    })
    .await
    .map(|loaded| (last_erasure, loaded))
    .map_err(StoreError::Task)
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

#[cfg(test)]
mod tests {
    //! Saved copies: one that holds is loaded and read on from where it
    //! stopped; a truncated, flipped, too old, post-erasure or
    //! past-the-log one is refused and deleted, and the copy then read from
    //! the log gives the same events.
    use super::*;
    use crate::{Engine, ManualClock};
    use serde_json::json;
    use stratify_core::ids::UserId;
    use stratify_store::sqlite::SqliteStore;
    use stratify_store::Source;

    const T0: Millis = 1_767_225_600_000;

    async fn events(columns: &Columns, store: &dyn Store) -> Vec<(i64, i64, Option<u64>)> {
        let mut out = columns
            .with_events(store, "buy", Some("amount"), |_, events| {
                events
                    .iter()
                    .map(|e| (e.uid, e.ts, e.value.map(f64::to_bits)))
                    .collect::<Vec<_>>()
            })
            .await
            .expect("events");
        out.sort_unstable();
        out
    }

    async fn buy(engine: &Engine, users: std::ops::Range<u32>, at: Millis) {
        let events = users
            .map(|i| {
                let amount = if i % 7 == 0 { json!("n/a") } else { json!(f64::from(i) / 8.0) };
                Ok(json!({"user_id": format!("u{}", i % 40), "name": "buy", "timestamp": at + i64::from(i),
                          "properties": {"amount": amount}}))
            })
            .collect();
        engine
            .ingest
            .ingest_values(events, Source::Http)
            .await
            .expect("ingest");
    }

    /// What a start does: the saved copies that hold, read and taken.
    async fn restore(
        columns: &Columns,
        store: &dyn Store,
        now: Millis,
    ) -> Result<(usize, usize), StoreError> {
        let dir = columns
            .checkpoint_dir()
            .expect("saved copies")
            .to_path_buf();
        Ok(columns.adopt(load(dir, store, now).await?.1))
    }

    fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
        let files = checkpoint::files(dir);
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    #[tokio::test]
    async fn a_saved_copy_is_used_only_while_it_holds_for_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("data")).expect("open"));
        let engine = Engine::start(store.clone(), Arc::new(ManualClock::new(T0)), None)
            .await
            .expect("engine");
        let ck = dir.path().join("checkpoints");
        let s: &dyn Store = store.as_ref();
        buy(&engine, 0..300, T0).await;

        let first = Columns::with_checkpoints(ck.clone());
        let want = events(&first, s).await;
        assert_eq!(want.len(), 300);
        assert_eq!(first.save(s, T0).await.expect("save"), 1);
        assert_eq!(
            first.save(s, T0).await.expect("save"),
            0,
            "unchanged: not written again"
        );
        let file = only_file(&ck);

        // Whole, current: loaded as it was.
        let again = Columns::with_checkpoints(ck.clone());
        assert_eq!(restore(&again, s, T0 + 1).await.expect("restore"), (1, 300));
        assert_eq!(events(&again, s).await, want);

        // Behind the log: loaded, then read on from its position.
        buy(&engine, 300..350, T0 + 10_000).await;
        let behind = Columns::with_checkpoints(ck.clone());
        assert_eq!(
            restore(&behind, s, T0 + 2).await.expect("restore"),
            (1, 300)
        );
        let fresh = events(&Columns::default(), s).await;
        assert_eq!(fresh.len(), 350);
        assert_eq!(events(&behind, s).await, fresh);

        // Damaged, too old, or past the log: refused, deleted, read afresh.
        let bytes = std::fs::read(&file).expect("read");
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        type Damage<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, Damage, Millis)> = vec![
            (
                "truncated",
                Box::new(|| std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap()),
                T0 + 1,
            ),
            (
                "a flipped byte",
                Box::new(|| std::fs::write(&file, &flipped).unwrap()),
                T0 + 1,
            ),
            (
                "empty",
                Box::new(|| std::fs::write(&file, b"").unwrap()),
                T0 + 1,
            ),
            (
                "older than the erasure memory",
                Box::new(|| std::fs::write(&file, &bytes).unwrap()),
                T0 + stratify_store::ERASURE_MEMORY_MS,
            ),
            (
                "written in the future",
                Box::new(|| std::fs::write(&file, &bytes).unwrap()),
                T0 - 1,
            ),
            (
                "past the store's log",
                Box::new(|| {
                    let header = checkpoint::Header {
                        event: "buy".into(),
                        property: Some("amount".into()),
                        through_seq: 1_000_000,
                        erasure_seq: 0,
                        written_at: T0,
                        events: 0,
                    };
                    checkpoint::write(file.parent().unwrap(), &header, &[]).unwrap();
                }),
                T0 + 1,
            ),
        ];
        for (case, damage, now) in cases {
            damage();
            let c = Columns::with_checkpoints(ck.clone());
            assert_eq!(
                restore(&c, s, now).await.expect("restore"),
                (0, 0),
                "{case}"
            );
            assert!(checkpoint::files(&ck).is_empty(), "{case}: deleted");
            assert_eq!(events(&c, s).await, fresh, "{case}: read from the log");
        }

        // A stray temporary file (a crash while writing) is removed; the
        // last whole file is still used.
        std::fs::write(&file, &bytes).unwrap();
        std::fs::write(file.with_extension("tmp"), &bytes[..100]).unwrap();
        let c = Columns::with_checkpoints(ck.clone());
        assert_eq!(restore(&c, s, T0 + 1).await.expect("restore"), (1, 300));
        assert!(!file.with_extension("tmp").exists());

        // An erasure after it was written: refused.
        engine
            .users
            .delete_user(&UserId::parse("u3").expect("id"))
            .await
            .expect("erase");
        let c = Columns::with_checkpoints(ck.clone());
        assert_eq!(restore(&c, s, T0 + 1).await.expect("restore"), (0, 0));
        let erased = events(&Columns::default(), s).await;
        assert!(erased.len() < fresh.len());
        assert_eq!(events(&c, s).await, erased);

        // An erasure here removes every file.
        assert_eq!(c.save(s, T0 + 2).await.expect("save"), 1);
        assert_eq!(checkpoint::files(&ck).len(), 1);
        c.clear();
        assert!(checkpoint::files(&ck).is_empty());
    }
}
