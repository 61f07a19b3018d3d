//! A columnar, in-memory view of every user, for population queries.
//!
//! Users get dense indices (in the order they were first seen). Attributes
//! are dictionary-coded columns: a leaf is decided once per *distinct value*
//! with [`crate::rules::test`] (the single definition of what a leaf means),
//! then the code column is scanned into a [`Bitset`]. Events are kept per
//! name in arrival order with a time-sorted index (plus a small sorted delta
//! for recent arrivals), so a window is a binary search and an aggregate is
//! one pass over the events in the window, in exactly the (time, sequence)
//! order the other evaluators use; a differential test keeps this evaluator
//! equal to the per-user evaluator and to SQL.
//!
//! Pure: no IO, no clock. The engine feeds it from the store and from ingest.

use crate::codec::{DecodeError, Decoded, Decoder, Encoder};
use crate::id_index::IdIndex;
use crate::rules::{
    self, AggFn, Aggregate, Leaf, NumTest, Op, Operand, Rule, Seen, SegmentLookup, SegmentRef,
    Source,
};
use crate::time::Millis;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::{self, Read, Write};

const MAX_REF_DEPTH: usize = 16;

/// A fixed-capacity set of user indices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    pub fn with_len(bits: usize) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    /// Bit `row` set when `truth[codes[row]]`; rows past `codes` count as code 0.
    fn from_codes(codes: &[u32], truth: &[bool], bits: usize) -> Self {
        let mut words = vec![if truth[0] { u64::MAX } else { 0 }; bits.div_ceil(64)];
        for (w, chunk) in words.iter_mut().zip(codes.chunks(64)) {
            let mut word = 0u64;
            for (bit, &code) in chunk.iter().enumerate() {
                word |= u64::from(truth[code as usize]) << bit;
            }
            if chunk.len() < 64 && truth[0] {
                word |= u64::MAX << chunk.len();
            }
            *w = word;
        }
        Self { words }
    }

    pub fn set(&mut self, i: u32) {
        let w = i as usize / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << (i % 64);
    }

    pub fn clear(&mut self, i: u32) {
        if let Some(w) = self.words.get_mut(i as usize / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    pub fn contains(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn and(&mut self, other: &Bitset) {
        for (i, w) in self.words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
    }

    pub fn or(&mut self, other: &Bitset) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }

    /// `self = mask AND NOT self`.
    pub fn complement_within(&mut self, mask: &Bitset) {
        self.words.resize(mask.words.len(), 0);
        for (w, m) in self.words.iter_mut().zip(&mask.words) {
            *w = m & !*w;
        }
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Set bits in increasing order, starting after `after` (if any).
    pub fn iter_from(&self, after: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        let start = after.map_or(0, |a| a as usize + 1);
        let first_word = start / 64;
        self.words
            .iter()
            .enumerate()
            .skip(first_word)
            .flat_map(move |(wi, &w)| {
                let mut w = w;
                if wi == first_word {
                    w &= u64::MAX.checked_shl((start % 64) as u32).unwrap_or(0);
                }
                std::iter::from_fn(move || {
                    if w == 0 {
                        return None;
                    }
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    Some((wi * 64) as u32 + bit)
                })
            })
    }
}

/// Dictionary-coded JSON values, one code per row (0 = missing).
#[derive(Debug, Default, Clone)]
struct Column {
    codes: Vec<u32>,
    dict: Vec<Value>,
    /// The number each dictionary code holds, NaN when it is not a number.
    dict_num: Vec<f64>,
    /// Code by a hash of the value's JSON text; a collision probes the next
    /// hash (the dictionary decides equality), so no text is kept.
    lookup: HashMap<u64, u32>,
}

/// Feeds JSON text to a hasher without building it.
struct HashWriter<'a>(&'a mut std::hash::DefaultHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::hash::Hasher::write(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Column {
    fn shrink_to_fit(&mut self) {
        self.codes.shrink_to_fit();
        self.dict.shrink_to_fit();
        self.dict_num.shrink_to_fit();
        self.lookup.shrink_to_fit();
    }

    fn code_of(&mut self, v: &Value) -> u32 {
        let mut h = std::hash::DefaultHasher::new();
        // Writing JSON into memory cannot fail.
        let _ = serde_json::to_writer(HashWriter(&mut h), v);
        let mut key = std::hash::Hasher::finish(&h);
        loop {
            match self.lookup.get(&key) {
                Some(&c) if self.dict[c as usize - 1] == *v => return c,
                Some(_) => key = key.wrapping_add(1),
                None => break,
            }
        }
        self.dict.push(v.clone());
        self.dict_num.push(v.as_f64().unwrap_or(f64::NAN));
        let c = self.dict.len() as u32;
        self.lookup.insert(key, c);
        c
    }

    fn set(&mut self, row: usize, v: Option<&Value>) {
        let code = match v.filter(|v| !v.is_null()) {
            Some(v) => self.code_of(v),
            None => 0,
        };
        if row >= self.codes.len() {
            if code == 0 {
                return;
            }
            self.codes.resize(row + 1, 0);
        }
        self.codes[row] = code;
    }

    /// The number at a row (NaN when missing or not a number).
    fn num(&self, row: usize) -> f64 {
        match self.codes.get(row).copied().unwrap_or(0) {
            0 => f64::NAN,
            c => self.dict_num[c as usize - 1],
        }
    }

    fn get(&self, row: usize) -> Option<&Value> {
        match self.codes.get(row).copied().unwrap_or(0) {
            0 => None,
            c => self.dict.get(c as usize - 1),
        }
    }

    /// `truth[code]` for code 0 (missing) and every dictionary value.
    fn truth(&self, op: Op, operand: &Operand) -> Vec<bool> {
        let mut t = Vec::with_capacity(self.dict.len() + 1);
        t.push(rules::test(op, &Seen::Missing, operand));
        t.extend(
            self.dict
                .iter()
                .map(|v| rules::test(op, &Seen::Json(v), operand)),
        );
        t
    }
}

/// All events of one name, as columns in (time, arrival) order, so that a
/// window is a contiguous slice scanned sequentially.
#[derive(Debug, Default)]
struct EventLog {
    ts: Vec<Millis>,
    user: Vec<u32>,
    /// Property columns, each exactly as long as `ts`.
    props: HashMap<String, Column>,
    /// Events added since the last [`EventLog::settle`], in arrival order.
    tail: Vec<TailEvent>,
    /// Per-user aggregates over all settled events.
    all_time: Profiles,
}

/// Per-user aggregates over every event of one name, kept in (time, arrival)
/// order (the order the scan uses, so even compensated sums agree): updated
/// event by event when events arrive in time order, rebuilt in one pass when
/// a merge puts older events in.
#[derive(Debug, Default)]
struct Profiles {
    has_any: Bitset,
    count: Vec<u32>,
    first: Vec<Millis>,
    last: Vec<Millis>,
    last_row: Vec<u32>,
    numeric: HashMap<String, NumericProfile>,
}

#[derive(Debug, Default)]
struct NumericProfile {
    n: Vec<u32>,
    sum: Vec<f64>,
    carry: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
}

impl NumericProfile {
    fn add(&mut self, u: usize, x: f64) {
        if self.n.len() <= u {
            let len = (u + 1).max(self.n.len() * 2);
            self.n.resize(len, 0);
            self.sum.resize(len, 0.0);
            self.carry.resize(len, 0.0);
            self.min.resize(len, 0.0);
            self.max.resize(len, 0.0);
        }
        let (sum, carry) = (&mut self.sum[u], &mut self.carry[u]);
        let s = *sum + x;
        if sum.abs() > x.abs() {
            *carry += (*sum - s) + x;
        } else {
            *carry += (x - s) + *sum;
        }
        *sum = s;
        if self.n[u] == 0 {
            self.min[u] = x;
            self.max[u] = x;
        } else {
            self.min[u] = self.min[u].min(x);
            self.max[u] = self.max[u].max(x);
        }
        self.n[u] += 1;
    }
}

impl Profiles {
    /// Clears the profiles of some users (to be recomputed).
    fn forget(&mut self, users: &Bitset) {
        for u in users.iter_from(None) {
            let i = u as usize;
            if i < self.count.len() {
                self.count[i] = 0;
                self.has_any.clear(u);
            }
            for np in self.numeric.values_mut() {
                if i < np.n.len() {
                    np.n[i] = 0;
                    np.sum[i] = 0.0;
                    np.carry[i] = 0.0;
                }
            }
        }
    }

    fn add(&mut self, row: usize, ts: Millis, user: u32, props: &HashMap<String, Column>) {
        let u = user as usize;
        if self.count.len() <= u {
            let len = (u + 1).max(self.count.len() * 2);
            self.count.resize(len, 0);
            self.first.resize(len, 0);
            self.last.resize(len, 0);
            self.last_row.resize(len, 0);
        }
        if self.count[u] == 0 {
            self.first[u] = ts;
            self.has_any.set(user);
        }
        self.count[u] += 1;
        self.last[u] = ts;
        self.last_row[u] = row as u32;
        for (name, col) in props {
            let x = col.num(row);
            if !x.is_nan() {
                self.numeric.entry(name.clone()).or_default().add(u, x);
            }
        }
    }
}

/// (timestamp, user, properties) of an event not yet settled.
type TailEvent = (Millis, u32, Option<Map<String, Value>>);

impl EventLog {
    fn push(&mut self, user: u32, ts: Millis, props: Option<&Map<String, Value>>) {
        self.tail.push((ts, user, props.cloned()));
    }

    fn append_row(&mut self, ts: Millis, user: u32, props: Option<&Map<String, Value>>) {
        let row = self.ts.len();
        self.ts.push(ts);
        self.user.push(user);
        if let Some(p) = props {
            for (k, v) in p {
                let col = self.props.entry(k.clone()).or_default();
                col.set(row, Some(v));
            }
        }
    }

    /// Moves the tail into the columns: an append when every new event is
    /// the newest (the real-time case), one linear merge otherwise. Ties keep
    /// arrival order (stable), which is log order.
    fn settle(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let mut tail = std::mem::take(&mut self.tail);
        tail.sort_by_key(|e| e.0);
        if self.ts.last().is_none_or(|&last| last <= tail[0].0) {
            for (ts, user, props) in &tail {
                self.append_row(*ts, *user, props.as_ref());
            }
            let first_new = self.ts.len() - tail.len();
            self.pad_props();
            for row in first_new..self.ts.len() {
                self.all_time
                    .add(row, self.ts[row], self.user[row], &self.props);
            }
            return;
        } else {
            // One stable merge: the interleaving is computed once, then every
            // column is rebuilt by copying codes (no re-encoding).
            let old_len = self.ts.len();
            let mut order: Vec<(bool, usize)> = Vec::with_capacity(old_len + tail.len());
            let (mut i, mut j) = (0, 0);
            while i < old_len || j < tail.len() {
                if j == tail.len() || (i < old_len && self.ts[i] <= tail[j].0) {
                    order.push((true, i));
                    i += 1;
                } else {
                    order.push((false, j));
                    j += 1;
                }
            }
            self.ts = order
                .iter()
                .map(|&(is_old, k)| if is_old { self.ts[k] } else { tail[k].0 })
                .collect();
            self.user = order
                .iter()
                .map(|&(is_old, k)| if is_old { self.user[k] } else { tail[k].1 })
                .collect();
            let mut names: Vec<String> = self.props.keys().cloned().collect();
            for (_, _, props) in &tail {
                for k in props.iter().flat_map(|p| p.keys()) {
                    if !names.contains(k) {
                        names.push(k.clone());
                    }
                }
            }
            for name in names {
                let col = self.props.entry(name.clone()).or_default();
                let tail_codes: Vec<u32> = tail
                    .iter()
                    .map(|(_, _, p)| {
                        match p
                            .as_ref()
                            .and_then(|m| m.get(&name))
                            .filter(|v| !v.is_null())
                        {
                            Some(v) => col.code_of(v),
                            None => 0,
                        }
                    })
                    .collect();
                let old_codes = std::mem::take(&mut col.codes);
                col.codes = order
                    .iter()
                    .map(|&(is_old, k)| {
                        if is_old {
                            old_codes.get(k).copied().unwrap_or(0)
                        } else {
                            tail_codes[k]
                        }
                    })
                    .collect();
            }
        }
        self.pad_props();
        // Rows moved: re-point every user's latest row, then recompute the
        // profiles of the users whose history changed (others keep theirs:
        // their events' relative order did not change).
        let mut changed = Bitset::with_len(
            self.user
                .iter()
                .copied()
                .max()
                .map_or(0, |m| m as usize + 1),
        );
        tail.iter().for_each(|(_, user, _)| changed.set(*user));
        self.all_time.forget(&changed);
        for row in 0..self.ts.len() {
            let user = self.user[row];
            if changed.contains(user) {
                self.all_time.add(row, self.ts[row], user, &self.props);
            } else if let Some(last) = self.all_time.last_row.get_mut(user as usize) {
                *last = row as u32;
            }
        }
    }

    /// Every property column exactly as long as the log.
    fn pad_props(&mut self) {
        let rows = self.ts.len();
        for col in self.props.values_mut() {
            col.codes.resize(rows, 0);
        }
    }

    /// Rows with `lo < ts <= hi`, in (ts, arrival) order.
    fn window(&self, lo: Option<Millis>, hi: Millis) -> std::ops::Range<usize> {
        let start = lo.map_or(0, |lo| self.ts.partition_point(|&t| t <= lo));
        let end = self.ts.partition_point(|&t| t <= hi);
        start..end.max(start)
    }
}

/// Per-user accumulators, reused across queries (reset only where touched).
#[derive(Default)]
struct Scratch {
    /// Matching events per user.
    count: Vec<u32>,
    /// Saturating counts, for counts compared with small numbers only: a
    /// quarter of the memory, so the random increments stay in cache.
    small: Vec<u8>,
    /// Numeric values seen per user.
    numeric: Vec<u32>,
    /// Sum, min or max.
    a: Vec<f64>,
    /// Neumaier carry.
    b: Vec<f64>,
    /// First/last timestamp, or the row of the latest event.
    t: Vec<i64>,
    /// Users with at least one matching event, in user order.
    seen: Bitset,
}

impl Scratch {
    fn ensure(&mut self, n: usize) {
        if self.count.len() < n {
            self.count.resize(n, 0);
            self.small.resize(n, 0);
            self.numeric.resize(n, 0);
            self.a.resize(n, 0.0);
            self.b.resize(n, 0.0);
            self.t.resize(n, 0);
        }
        if self.seen.words.len() < n.div_ceil(64) {
            self.seen.words.resize(n.div_ceil(64), 0);
        }
    }

    /// Zeroes what a query wrote: only the arrays its function uses.
    fn reset(&mut self, func: &AggFn) {
        let numeric = matches!(
            func,
            AggFn::Sum(_) | AggFn::Avg(_) | AggFn::Min(_) | AggFn::Max(_)
        );
        for u in self.seen.iter_from(None) {
            let u = u as usize;
            self.count[u] = 0;
            if numeric {
                self.numeric[u] = 0;
                self.a[u] = 0.0;
                self.b[u] = 0.0;
            }
        }
        // `t` is always written before it is read (on a user's first event).
        self.seen.words.iter_mut().for_each(|w| *w = 0);
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Every user's attributes, events and static memberships, columnar.
#[derive(Debug, Default)]
pub struct PopulationIndex {
    ids: Vec<String>,
    by_id: IdIndex,
    live: Bitset,
    attrs: HashMap<String, Column>,
    events: HashMap<String, EventLog>,
    statics: HashMap<String, Bitset>,
    event_count: u64,
}

impl PopulationIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn user_count(&self) -> u64 {
        self.live.count()
    }

    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// The dense index of a user, adding the user if unknown.
    pub fn user(&mut self, user_id: &str) -> u32 {
        if let Some(i) = self.by_id.get(user_id, &self.ids) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(user_id.to_owned());
        self.by_id.insert(user_id, i, &self.ids);
        self.live.set(i);
        i
    }

    pub fn index_of(&self, user_id: &str) -> Option<u32> {
        self.by_id.get(user_id, &self.ids)
    }

    pub fn user_id(&self, index: u32) -> &str {
        self.ids.get(index as usize).map_or("", String::as_str)
    }

    /// Replaces a user's attributes (a `null` or absent value is missing).
    pub fn set_attributes(&mut self, user_id: &str, attributes: &Map<String, Value>) {
        let row = self.user(user_id) as usize;
        for (name, col) in self.attrs.iter_mut() {
            if !attributes.contains_key(name) {
                col.set(row, None);
            }
        }
        for (name, v) in attributes {
            self.attrs
                .entry(name.clone())
                .or_default()
                .set(row, Some(v));
        }
    }

    /// Merges attributes into a user's: a `null` value removes one.
    pub fn merge_attributes(&mut self, user_id: &str, attributes: &Map<String, Value>) {
        let row = self.user(user_id) as usize;
        for (name, v) in attributes {
            self.attrs
                .entry(name.clone())
                .or_default()
                .set(row, Some(v));
        }
    }

    /// Adds events, given in log (sequence) order, and makes them visible to
    /// queries: `(user_id, name, timestamp, properties)`.
    pub fn add_events<'a>(
        &mut self,
        events: impl IntoIterator<Item = (&'a str, &'a str, Millis, Option<&'a Map<String, Value>>)>,
    ) {
        let mut touched: Vec<String> = Vec::new();
        for (user_id, name, ts, properties) in events {
            let user = self.user(user_id);
            let log = match self.events.get_mut(name) {
                Some(log) => log,
                None => self.events.entry(name.to_owned()).or_default(),
            };
            if log.tail.is_empty() {
                touched.push(name.to_owned());
            }
            log.push(user, ts, properties);
            self.event_count += 1;
        }
        for name in touched {
            if let Some(log) = self.events.get_mut(&name) {
                log.settle();
            }
        }
    }

    /// Adds events without making them visible yet: for bulk loads, which
    /// then call [`PopulationIndex::settle_all`] once (one sort, no merges).
    pub fn add_events_deferred<'a>(
        &mut self,
        events: impl IntoIterator<Item = (&'a str, &'a str, Millis, Option<&'a Map<String, Value>>)>,
    ) {
        for (user_id, name, ts, properties) in events {
            let user = self.user(user_id);
            let log = match self.events.get_mut(name) {
                Some(log) => log,
                None => self.events.entry(name.to_owned()).or_default(),
            };
            log.push(user, ts, properties);
            self.event_count += 1;
        }
    }

    /// [`PopulationIndex::add_events_deferred`] for one event of a user already
    /// known by index (bulk loads that resolved ids themselves).
    pub fn add_event_deferred_at(
        &mut self,
        user: u32,
        name: &str,
        ts: Millis,
        properties: Option<&Map<String, Value>>,
    ) {
        let log = match self.events.get_mut(name) {
            Some(log) => log,
            None => self.events.entry(name.to_owned()).or_default(),
        };
        log.push(user, ts, properties);
        self.event_count += 1;
    }

    /// Makes every deferred event visible.
    pub fn settle_all(&mut self) {
        self.events.values_mut().for_each(EventLog::settle);
    }

    /// Gives back the spare capacity the columns grew by (after a load).
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.live.words.shrink_to_fit();
        for col in self.attrs.values_mut() {
            col.shrink_to_fit();
        }
        for log in self.events.values_mut() {
            log.ts.shrink_to_fit();
            log.user.shrink_to_fit();
            log.tail.shrink_to_fit();
            for col in log.props.values_mut() {
                col.shrink_to_fit();
            }
            let p = &mut log.all_time;
            p.has_any.words.shrink_to_fit();
            // Indexed by user: trimmed to the last user with an event.
            let users = p
                .has_any
                .iter_from(None)
                .last()
                .map_or(0, |u| u as usize + 1);
            for v in [&mut p.first, &mut p.last] {
                v.truncate(users);
                v.shrink_to_fit();
            }
            for v in [&mut p.count, &mut p.last_row] {
                v.truncate(users);
                v.shrink_to_fit();
            }
            for np in p.numeric.values_mut() {
                let users = np.n.iter().rposition(|&n| n > 0).map_or(0, |u| u + 1);
                np.n.truncate(users);
                np.n.shrink_to_fit();
                for v in [&mut np.sum, &mut np.carry, &mut np.min, &mut np.max] {
                    v.truncate(users);
                    v.shrink_to_fit();
                }
            }
        }
    }

    /// Forgets a user (erasure): their index stays allocated but is never live again.
    pub fn remove_user(&mut self, user_id: &str) {
        if let Some(i) = self.by_id.remove(user_id, &self.ids) {
            self.live.clear(i);
            for members in self.statics.values_mut() {
                members.clear(i);
            }
        }
    }

    /// Identity stitching: `anonymous`'s events and static memberships
    /// become `known`'s, and `anonymous` is forgotten. Attributes are the
    /// caller's to set (the store merged them). Each event log the visitor
    /// appears in is relabelled in place (the rows keep their (time,
    /// arrival) order) and the person's profile in it recomputed.
    pub fn merge_user(&mut self, anonymous: &str, known: &str) {
        let Some(a) = self.index_of(anonymous) else {
            return;
        };
        let k = self.user(known);
        let size = a.max(k) as usize + 1;
        for log in self.events.values_mut() {
            log.settle();
            if !log.all_time.has_any.contains(a) {
                continue;
            }
            for u in log.user.iter_mut() {
                if *u == a {
                    *u = k;
                }
            }
            let mut changed = Bitset::with_len(size);
            changed.set(a);
            changed.set(k);
            log.all_time.forget(&changed);
            for row in 0..log.ts.len() {
                if log.user[row] == k {
                    log.all_time.add(row, log.ts[row], k, &log.props);
                }
            }
        }
        for members in self.statics.values_mut() {
            if members.contains(a) {
                members.set(k);
            }
        }
        self.remove_user(anonymous);
    }

    pub fn set_static_members(&mut self, segment_id: &str, user_ids: &[String]) {
        let mut set = Bitset::with_len(self.ids.len());
        for u in user_ids {
            let i = self.user(u);
            set.set(i);
        }
        self.statics.insert(segment_id.to_owned(), set);
    }

    pub fn add_static_members(&mut self, segment_id: &str, user_ids: &[String]) {
        let idx: Vec<u32> = user_ids.iter().map(|u| self.user(u)).collect();
        let set = self.statics.entry(segment_id.to_owned()).or_default();
        idx.into_iter().for_each(|i| set.set(i));
    }

    pub fn remove_static_members(&mut self, segment_id: &str, user_ids: &[String]) {
        let idx: Vec<u32> = user_ids.iter().filter_map(|u| self.index_of(u)).collect();
        if let Some(set) = self.statics.get_mut(segment_id) {
            idx.into_iter().for_each(|i| set.clear(i));
        }
    }

    pub fn drop_static(&mut self, segment_id: &str) {
        self.statics.remove(segment_id);
    }

    /// The users a rule selects at `now`.
    pub fn select(&self, rule: &Rule, now: Millis, segments: &dyn SegmentLookup) -> Bitset {
        let mut out = self.eval(rule, now, segments, 0, None, &mut HashMap::new());
        out.and(&self.live);
        out
    }

    /// Evaluates `rule`. With a `mask`, the answer is exact for the users in
    /// the mask and arbitrary outside it (callers intersect with the mask):
    /// an AND passes what its earlier children left as the mask to the later
    /// ones, so aggregates skip the events of users already ruled out.
    /// `memo` holds the referenced dynamic segments already computed (over
    /// every user, so any mask may use them): each is computed once however
    /// often the reference graph reaches it.
    fn eval(
        &self,
        rule: &Rule,
        now: Millis,
        segments: &dyn SegmentLookup,
        depth: usize,
        mask: Option<&Bitset>,
        memo: &mut HashMap<String, Bitset>,
    ) -> Bitset {
        match rule {
            Rule::All(children) => {
                let mut acc = self.live.clone();
                if let Some(m) = mask {
                    acc.and(m);
                }
                // Cheap children (attributes, segments, nested logic) first, then aggregates under the mask.
                let is_aggregate = |c: &&Rule| {
                    matches!(
                        c,
                        Rule::Leaf(Leaf {
                            source: Source::Aggregate(_),
                            ..
                        })
                    )
                };
                let (aggregates, others): (Vec<&Rule>, Vec<&Rule>) =
                    children.iter().partition(is_aggregate);
                for c in others.into_iter().chain(aggregates) {
                    let within = acc.clone();
                    acc.and(&self.eval(c, now, segments, depth, Some(&within), memo));
                }
                acc
            }
            Rule::Any(children) => {
                let mut acc = Bitset::with_len(self.ids.len());
                for c in children {
                    acc.or(&self.eval(c, now, segments, depth, mask, memo));
                }
                acc
            }
            Rule::Not(inner) => {
                let mut s = self.eval(inner, now, segments, depth, mask, memo);
                s.complement_within(&self.live);
                s
            }
            Rule::Leaf(Leaf {
                source: Source::Aggregate(a),
                op,
                operand,
            }) => self.aggregate_leaf(a, *op, operand, now, mask),
            Rule::Leaf(leaf) => self.leaf(leaf, now),
            Rule::Segment(id) => match segments.segment(id) {
                Some(SegmentRef::Static(_)) => {
                    let mut s = self.statics.get(id).cloned().unwrap_or_default();
                    s.and(&self.live);
                    s
                }
                Some(SegmentRef::Dynamic(r)) if depth < MAX_REF_DEPTH => {
                    if let Some(known) = memo.get(id) {
                        return known.clone();
                    }
                    let all = self.eval(r, now, segments, depth + 1, None, memo);
                    memo.insert(id.clone(), all.clone());
                    all
                }
                _ => Bitset::with_len(self.ids.len()),
            },
        }
    }

    fn leaf(&self, leaf: &Leaf, now: Millis) -> Bitset {
        match &leaf.source {
            Source::Attribute(name) => {
                let mut out = Bitset::with_len(self.ids.len());
                match self.attrs.get(name) {
                    Some(col) => {
                        // Decide each distinct value once, then build the
                        // result 64 rows (one word) at a time.
                        let truth = col.truth(leaf.op, &leaf.operand);
                        out = Bitset::from_codes(&col.codes, &truth, self.ids.len());
                        out.and(&self.live);
                    }
                    None if rules::test(leaf.op, &Seen::Missing, &leaf.operand) => {
                        out = self.live.clone()
                    }
                    None => {}
                }
                out
            }
            Source::Aggregate(a) => self.aggregate_leaf(a, leaf.op, &leaf.operand, now, None),
        }
    }

    fn aggregate_leaf(
        &self,
        a: &Aggregate,
        op: Op,
        operand: &Operand,
        now: Millis,
        mask: Option<&Bitset>,
    ) -> Bitset {
        let n = self.ids.len();
        let mut out = Bitset::with_len(n);
        let mut touched = Bitset::with_len(n);
        let settled_to_now = |log: &EventLog| log.ts.last().is_none_or(|&newest| newest <= now);
        if let Some(log) = self
            .events
            .get(&a.event)
            .filter(|l| a.within.is_none() && a.filters.is_empty() && settled_to_now(l))
        {
            return self.profile_leaf(log, a, op, operand, now, mask);
        }
        if let Some(log) = self.events.get(&a.event) {
            // `true` when the small-count path produced the final answer.
            let complete = SCRATCH.with(|cell| {
                let mut guard = cell.borrow_mut();
                let sc = &mut *guard;
                sc.ensure(n);
                let fast = NumTest::new(op, operand);
                let small = a.func == AggFn::Count && fast.below(250.0);
                self.accumulate(log, a, now, sc, mask, small);
                if small {
                    // 256 possible counts: decide each once (0 is "no event",
                    // exactly the empty aggregate), then one branch-free pass.
                    let table: Vec<u64> = (0..=255u8)
                        .map(|c| u64::from(fast.test(f64::from(c))))
                        .collect();
                    for (word, chunk) in out.words.iter_mut().zip(sc.small[..n].chunks(64)) {
                        let mut bits = 0u64;
                        for (b, &c) in chunk.iter().enumerate() {
                            bits |= table[c as usize] << b;
                        }
                        *word = bits;
                    }
                    sc.small[..n].iter_mut().for_each(|c| *c = 0);
                    if let Some(m) = mask {
                        out.and(m);
                    }
                    out.and(&self.live);
                    return true;
                }
                let prop = a.func.property().and_then(|p| log.props.get(p));
                let missing = rules::test(op, &Seen::Missing, operand);
                for u in sc.seen.iter_from(None) {
                    let i = u as usize;
                    let hit = match &a.func {
                        AggFn::LastValue(_) => {
                            let v = prop.and_then(|c| c.get(sc.t[i] as usize));
                            rules::test(op, &value_of(&a.func, sc, i, v, now), operand)
                        }
                        AggFn::NoneYet => rules::test(op, &Seen::Bool(false), operand),
                        func => number_of(func, sc, i, now).map_or(missing, |x| fast.test(x)),
                    };
                    if hit {
                        out.set(u);
                    }
                }
                touched = sc.seen.clone();
                sc.reset(&a.func);
                false
            });
            if complete {
                return out;
            }
        }
        self.with_untouched(out, &touched, a, op, operand, mask)
    }

    /// Adds the users with no matching event when the empty aggregate (count
    /// 0, sum 0, everything else missing) satisfies the leaf; keeps only live users.
    fn with_untouched(
        &self,
        mut out: Bitset,
        touched: &Bitset,
        a: &Aggregate,
        op: Op,
        operand: &Operand,
        mask: Option<&Bitset>,
    ) -> Bitset {
        if rules::test(op, &empty_value(&a.func), operand) {
            let mut untouched = touched.clone();
            untouched.complement_within(mask.unwrap_or(&self.live));
            out.or(&untouched);
        }
        out.and(&self.live);
        out
    }

    /// An all-time aggregate read from the per-user profiles.
    fn profile_leaf(
        &self,
        log: &EventLog,
        a: &Aggregate,
        op: Op,
        operand: &Operand,
        now: Millis,
        mask: Option<&Bitset>,
    ) -> Bitset {
        let p = &log.all_time;
        let numeric = a.func.property().and_then(|name| p.numeric.get(name));
        let prop = a.func.property().and_then(|name| log.props.get(name));
        let fast = NumTest::new(op, operand);
        let missing = rules::test(op, &Seen::Missing, operand);
        let truth = match (&a.func, prop) {
            (AggFn::LastValue(_), Some(col)) => Some(col.truth(op, operand)),
            _ => None,
        };
        let mut out = Bitset::with_len(self.ids.len());
        let mut candidates = p.has_any.clone();
        if let Some(m) = mask {
            candidates.and(m);
        }
        for user in candidates.iter_from(None) {
            let u = user as usize;
            let num =
                |f: fn(&NumericProfile, usize) -> Option<f64>| numeric.and_then(|np| f(np, u));
            let hit = match &a.func {
                AggFn::Count => fast.test(f64::from(p.count[u])),
                AggFn::NoneYet => rules::test(op, &Seen::Bool(false), operand),
                AggFn::Sum(_) => fast
                    .test(num(|np, u| np.n.get(u).map(|_| np.sum[u] + np.carry[u])).unwrap_or(0.0)),
                AggFn::Avg(_) => num(|np, u| {
                    np.n.get(u)
                        .filter(|n| **n > 0)
                        .map(|n| (np.sum[u] + np.carry[u]) / f64::from(*n))
                })
                .map_or(missing, |x| fast.test(x)),
                AggFn::Min(_) => num(|np, u| np.n.get(u).filter(|n| **n > 0).map(|_| np.min[u]))
                    .map_or(missing, |x| fast.test(x)),
                AggFn::Max(_) => num(|np, u| np.n.get(u).filter(|n| **n > 0).map(|_| np.max[u]))
                    .map_or(missing, |x| fast.test(x)),
                AggFn::SecondsSinceLast => fast.test((now - p.last[u]) as f64 / 1000.0),
                AggFn::SecondsSinceFirst => fast.test((now - p.first[u]) as f64 / 1000.0),
                AggFn::LastValue(_) => match (&truth, prop) {
                    (Some(t), Some(col)) => {
                        t[col.codes.get(p.last_row[u] as usize).copied().unwrap_or(0) as usize]
                    }
                    _ => missing,
                },
            };
            if hit {
                out.set(user);
            }
        }
        self.with_untouched(out, &p.has_any, a, op, operand, mask)
    }

    /// One pass over the events in the window, in (time, arrival) order.
    fn accumulate(
        &self,
        log: &EventLog,
        a: &Aggregate,
        now: Millis,
        sc: &mut Scratch,
        mask: Option<&Bitset>,
        small: bool,
    ) {
        // Property filters, decided once per distinct value.
        let filters: Vec<(Option<&Column>, Vec<bool>)> = a
            .filters
            .iter()
            .map(|f| match log.props.get(&f.property) {
                Some(col) => (Some(col), col.truth(f.op, &f.operand)),
                None => (None, vec![rules::test(f.op, &Seen::Missing, &f.operand)]),
            })
            .collect();
        let prop = a.func.property().and_then(|p| log.props.get(p));
        let numeric = matches!(
            a.func,
            AggFn::Sum(_) | AggFn::Avg(_) | AggFn::Min(_) | AggFn::Max(_)
        );
        for r in log.window(a.within.map(|w| now - w), now) {
            if !filters.iter().all(|(col, truth)| match col {
                Some(c) => truth[c.codes.get(r).copied().unwrap_or(0) as usize],
                None => truth[0],
            }) {
                continue;
            }
            let u = log.user[r] as usize;
            if mask.is_some_and(|m| !m.contains(u as u32)) {
                continue;
            }
            if small {
                sc.small[u] = sc.small[u].saturating_add(1);
                continue;
            }
            // Branch on the small `seen` bitset, not on `count` (a cache miss
            // per event in a large array): the increments then overlap.
            if !sc.seen.contains(u as u32) {
                sc.seen.set(u as u32);
                if a.func == AggFn::SecondsSinceFirst {
                    sc.t[u] = log.ts[r];
                }
            }
            sc.count[u] += 1;
            match &a.func {
                AggFn::SecondsSinceLast => sc.t[u] = log.ts[r],
                AggFn::LastValue(_) => sc.t[u] = r as i64,
                _ => {}
            }
            if !numeric {
                continue;
            }
            let x = prop.map_or(f64::NAN, |c| c.num(r));
            if x.is_nan() {
                continue;
            }
            match &a.func {
                AggFn::Sum(_) | AggFn::Avg(_) => {
                    // Neumaier, as SQLite's sum() and the per-user evaluator do.
                    let (sum, carry) = (&mut sc.a[u], &mut sc.b[u]);
                    let s = *sum + x;
                    if sum.abs() > x.abs() {
                        *carry += (*sum - s) + x;
                    } else {
                        *carry += (x - s) + *sum;
                    }
                    *sum = s;
                }
                AggFn::Min(_) => {
                    sc.a[u] = if sc.numeric[u] == 0 {
                        x
                    } else {
                        sc.a[u].min(x)
                    }
                }
                AggFn::Max(_) => {
                    sc.a[u] = if sc.numeric[u] == 0 {
                        x
                    } else {
                        sc.a[u].max(x)
                    }
                }
                _ => {}
            }
            sc.numeric[u] += 1;
        }
    }
}

/// A numeric aggregate's value for user `i` (None when missing).
fn number_of(func: &AggFn, sc: &Scratch, i: usize, now: Millis) -> Option<f64> {
    let numeric = || sc.numeric[i];
    match func {
        AggFn::Count => Some(f64::from(sc.count[i])),
        AggFn::Sum(_) => Some(sc.a[i] + sc.b[i]),
        AggFn::Avg(_) if numeric() > 0 => Some((sc.a[i] + sc.b[i]) / f64::from(numeric())),
        AggFn::Min(_) | AggFn::Max(_) if numeric() > 0 => Some(sc.a[i]),
        AggFn::SecondsSinceLast | AggFn::SecondsSinceFirst if sc.count[i] > 0 => {
            Some((now - sc.t[i]) as f64 / 1000.0)
        }
        _ => None,
    }
}

/// An aggregate's value over no events.
fn empty_value(func: &AggFn) -> Seen<'static> {
    match func {
        AggFn::Count | AggFn::Sum(_) => Seen::Num(0.0),
        AggFn::NoneYet => Seen::Bool(true),
        _ => Seen::Missing,
    }
}

fn value_of<'a>(
    func: &AggFn,
    sc: &Scratch,
    i: usize,
    last_value: Option<&'a Value>,
    now: Millis,
) -> Seen<'a> {
    let (count, numeric) = (sc.count[i], sc.numeric[i]);
    match func {
        AggFn::Count => Seen::Num(f64::from(count)),
        AggFn::NoneYet => Seen::Bool(count == 0),
        AggFn::Sum(_) => Seen::Num(sc.a[i] + sc.b[i]),
        AggFn::Avg(_) if numeric > 0 => Seen::Num((sc.a[i] + sc.b[i]) / f64::from(numeric)),
        AggFn::Min(_) | AggFn::Max(_) if numeric > 0 => Seen::Num(sc.a[i]),
        AggFn::SecondsSinceLast | AggFn::SecondsSinceFirst if count > 0 => {
            Seen::Num((now - sc.t[i]) as f64 / 1000.0)
        }
        AggFn::LastValue(_) if count > 0 => last_value
            .filter(|v| !v.is_null())
            .map_or(Seen::Missing, Seen::Json),
        _ => Seen::Missing,
    }
}

// Saving and reading the index (checkpoints). Every field is written as it
// is held, so a decoded index answers exactly as the encoded one; decoding
// checks that every code, row and user it reads points inside the index.

type Enc<'a, W> = &'a mut Encoder<W>;
type Dec<'a, R> = &'a mut Decoder<R>;

fn put_bitset<W: Write>(e: Enc<W>, b: &Bitset) -> io::Result<()> {
    e.u64s(&b.words)
}

fn get_bitset<R: Read>(d: Dec<R>) -> Decoded<Bitset> {
    Ok(Bitset { words: d.u64s()? })
}

fn put_map<W: Write, T>(
    e: Enc<W>,
    map: &HashMap<String, T>,
    mut put: impl FnMut(Enc<W>, &T) -> io::Result<()>,
) -> io::Result<()> {
    e.len(map.len())?;
    for (k, v) in map {
        e.str(k)?;
        put(e, v)?;
    }
    Ok(())
}

fn get_map<R: Read, T>(
    d: Dec<R>,
    mut get: impl FnMut(Dec<R>) -> Decoded<T>,
) -> Decoded<HashMap<String, T>> {
    let n = d.len(9)?;
    let mut map = HashMap::with_capacity(n);
    for _ in 0..n {
        let k = d.string()?;
        map.insert(k, get(d)?);
    }
    Ok(map)
}

fn check(ok: bool, what: &'static str) -> Decoded<()> {
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Malformed(what))
    }
}

impl Column {
    fn encode<W: Write>(&self, e: Enc<W>) -> io::Result<()> {
        e.u32s(&self.codes)?;
        e.len(self.dict.len())?;
        self.dict.iter().try_for_each(|v| e.value(v))?;
        e.f64s(&self.dict_num)?;
        let (keys, codes): (Vec<u64>, Vec<u32>) = self.lookup.iter().map(|(k, c)| (*k, *c)).unzip();
        e.u64s(&keys)?;
        e.u32s(&codes)
    }

    fn decode<R: Read>(d: Dec<R>) -> Decoded<Self> {
        let codes = d.u32s()?;
        let n = d.len(1)?;
        let dict = (0..n).map(|_| d.value()).collect::<Decoded<Vec<_>>>()?;
        let dict_num = d.f64s()?;
        let (keys, lookup_codes) = (d.u64s()?, d.u32s()?);
        check(
            dict_num.len() == n && keys.len() == lookup_codes.len(),
            "column",
        )?;
        check(codes.iter().all(|&c| c as usize <= n), "column code")?;
        check(
            lookup_codes.iter().all(|&c| c >= 1 && c as usize <= n),
            "column lookup",
        )?;
        Ok(Self {
            codes,
            dict,
            dict_num,
            lookup: keys.into_iter().zip(lookup_codes).collect(),
        })
    }
}

impl NumericProfile {
    fn encode<W: Write>(&self, e: Enc<W>) -> io::Result<()> {
        e.u32s(&self.n)?;
        [&self.sum, &self.carry, &self.min, &self.max]
            .into_iter()
            .try_for_each(|v| e.f64s(v))
    }

    fn decode<R: Read>(d: Dec<R>) -> Decoded<Self> {
        let p = Self {
            n: d.u32s()?,
            sum: d.f64s()?,
            carry: d.f64s()?,
            min: d.f64s()?,
            max: d.f64s()?,
        };
        let n = p.n.len();
        check(
            [&p.sum, &p.carry, &p.min, &p.max]
                .iter()
                .all(|v| v.len() == n),
            "numeric profile",
        )?;
        Ok(p)
    }
}

impl EventLog {
    fn encode<W: Write>(&self, e: Enc<W>) -> io::Result<()> {
        e.i64s(&self.ts)?;
        e.u32s(&self.user)?;
        put_map(e, &self.props, |e, c| c.encode(e))?;
        let p = &self.all_time;
        put_bitset(e, &p.has_any)?;
        e.u32s(&p.count)?;
        e.i64s(&p.first)?;
        e.i64s(&p.last)?;
        e.u32s(&p.last_row)?;
        put_map(e, &p.numeric, |e, n| n.encode(e))
    }

    fn decode<R: Read>(d: Dec<R>, users: usize) -> Decoded<Self> {
        let ts = d.i64s()?;
        let user = d.u32s()?;
        let props = get_map(d, |d| Column::decode(d))?;
        let all_time = Profiles {
            has_any: get_bitset(d)?,
            count: d.u32s()?,
            first: d.i64s()?,
            last: d.i64s()?,
            last_row: d.u32s()?,
            numeric: get_map(d, |d| NumericProfile::decode(d))?,
        };
        let rows = ts.len();
        check(user.len() == rows, "event log")?;
        check(user.iter().all(|&u| (u as usize) < users), "event user")?;
        check(ts.is_sorted(), "event order")?;
        check(
            props.values().all(|c| c.codes.len() == rows),
            "event column",
        )?;
        let p = &all_time;
        let n = p.count.len();
        check(
            p.first.len() == n && p.last.len() == n && p.last_row.len() == n,
            "event profile",
        )?;
        check(
            p.last_row.iter().all(|&r| r as usize <= rows),
            "event profile row",
        )?;
        Ok(Self {
            ts,
            user,
            props,
            tail: Vec::new(),
            all_time,
        })
    }
}

impl PopulationIndex {
    /// Writes the whole index (deferred events are settled first).
    pub fn encode<W: Write>(&mut self, e: Enc<W>) -> io::Result<()> {
        self.settle_all();
        e.len(self.ids.len())?;
        self.ids.iter().try_for_each(|id| e.str(id))?;
        let mut by_id: Vec<u32> = self.by_id.indexes().collect();
        by_id.sort_unstable();
        e.u32s(&by_id)?;
        put_bitset(e, &self.live)?;
        put_map(e, &self.attrs, |e, c| c.encode(e))?;
        put_map(e, &self.events, |e, log| log.encode(e))?;
        put_map(e, &self.statics, |e, b| put_bitset(e, b))?;
        e.u64(self.event_count)
    }

    /// Reads an index written by [`PopulationIndex::encode`].
    pub fn decode<R: Read>(d: Dec<R>) -> Decoded<Self> {
        let n = d.len(8)?;
        let ids = (0..n).map(|_| d.string()).collect::<Decoded<Vec<_>>>()?;
        let by_id_rows = d.u32s()?;
        check(by_id_rows.iter().all(|&u| (u as usize) < n), "user index")?;
        let mut by_id = IdIndex::with_capacity(by_id_rows.len());
        for u in by_id_rows {
            check(
                by_id.insert(&ids[u as usize], u, &ids).is_none(),
                "user twice",
            )?;
        }
        let live = get_bitset(d)?;
        let attrs = get_map(d, |d| Column::decode(d))?;
        let events = get_map(d, |d| EventLog::decode(d, n))?;
        let statics = get_map(d, |d| get_bitset(d))?;
        let event_count = d.u64()?;
        Ok(Self {
            ids,
            by_id,
            live,
            attrs,
            events,
            statics,
            event_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_codes_equal_values_alike_and_others_apart_even_when_hashes_collide() {
        use serde_json::json;
        let mut c = Column::default();
        let values = [
            json!(1),
            json!(1.0),
            json!("1"),
            json!([1]),
            json!({"a": 1}),
            json!(null),
            json!(true),
        ];
        let codes: Vec<u32> = values.iter().map(|v| c.code_of(v)).collect();
        let mut distinct = codes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len(), "{codes:?}");
        for (v, code) in values.iter().zip(&codes) {
            assert_eq!(c.code_of(v), *code);
            assert_eq!(&c.dict[*code as usize - 1], v);
        }
        // A value whose hash slot is taken by another: moved to the next
        // free slot, found there again.
        let mut h = std::hash::DefaultHasher::new();
        let _ = serde_json::to_writer(HashWriter(&mut h), &json!("x"));
        let taken = std::hash::Hasher::finish(&h);
        let mut c = Column::default();
        c.dict.push(json!("other"));
        c.dict_num.push(f64::NAN);
        c.lookup.insert(taken, 1);
        let x = c.code_of(&json!("x"));
        assert_eq!(x, 2);
        assert_eq!(c.code_of(&json!("x")), 2);
        assert_eq!(c.lookup.get(&taken.wrapping_add(1)), Some(&2));
        for i in 0..10_000 {
            c.set(i, Some(&json!(i)));
        }
        assert!((0..10_000).all(|i| c.get(i) == Some(&json!(i))));
    }

    #[test]
    fn bitset_iterates_from_a_cursor_and_complements_within_a_mask() {
        let mut b = Bitset::with_len(200);
        for i in [0, 63, 64, 150] {
            b.set(i);
        }
        assert_eq!(b.iter_from(None).collect::<Vec<_>>(), [0, 63, 64, 150]);
        assert_eq!(b.iter_from(Some(63)).collect::<Vec<_>>(), [64, 150]);
        assert_eq!(b.iter_from(Some(150)).count(), 0);
        let mut mask = Bitset::with_len(200);
        (0..4).for_each(|i| mask.set(i));
        b.complement_within(&mask);
        assert_eq!(b.iter_from(None).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn saturating_counts_answer_exactly_past_saturation() {
        let mut index = PopulationIndex::new();
        index.add_events((0..300).map(|i| ("heavy", "E", 1_000 + i, None)));
        index.add_events([("light", "E", 1_000, None)]);
        let select = |rule: serde_json::Value| {
            let rule = rules::parse(&rule).unwrap_or_else(|e| unreachable!("{e}"));
            let set = index.select(&rule, 10_000, &rules::NoSegments);
            set.iter_from(None)
                .map(|i| index.user_id(i).to_owned())
                .collect::<Vec<_>>()
        };
        let within = "1h";
        assert_eq!(
            select(serde_json::json!({"event": "E", "within": within, "op": "gte", "value": 2})),
            ["heavy"]
        );
        assert_eq!(
            select(serde_json::json!({"event": "E", "within": within, "op": "lt", "value": 100})),
            ["light"]
        );
        assert_eq!(
            select(serde_json::json!({"event": "E", "within": within, "op": "eq", "value": 300})),
            ["heavy"]
        );
        assert_eq!(
            select(serde_json::json!({"event": "E", "within": within, "op": "neq", "value": 1})),
            ["heavy"]
        );
        assert_eq!(
            select(
                serde_json::json!({"event": "E", "within": within, "op": "between", "value": [256, 299]})
            ),
            Vec::<String>::new()
        );
    }

    /// A merged index answers every rule as an index built from the start
    /// with the visitor's events under the person's id.
    #[test]
    fn a_merged_user_is_answered_as_if_they_had_always_been_one() {
        let mut rng: u64 = 7;
        let mut next = |n: u64| {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (rng >> 33) % n
        };
        let users = ["u0", "u1", "u2", "u3", "visitor"];
        let stream: Vec<(&str, &str, Millis, Map<String, Value>)> = (0..400)
            .map(|_| {
                let user = users[next(5) as usize];
                let name = ["E", "F"][next(2) as usize];
                let props = serde_json::json!({"amount": next(100) as f64 / 4.0});
                let props = props.as_object().cloned().unwrap_or_default();
                (user, name, 1_000 + next(5_000) as Millis, props)
            })
            .collect();
        let build = |relabel: bool| {
            let mut index = PopulationIndex::new();
            // In several batches, so later ones merge older events in.
            for chunk in stream.chunks(37) {
                index.add_events(chunk.iter().map(|(u, n, ts, p)| {
                    let u = if relabel && *u == "visitor" { "u3" } else { *u };
                    (u, *n, *ts, Some(p))
                }));
            }
            let statics = if relabel { ["u3"] } else { ["visitor"] };
            index.set_static_members("s", &statics.map(str::to_owned));
            index
        };
        let mut merged = build(false);
        merged.merge_user("visitor", "u3");
        let fresh = build(true);
        for rule in [
            serde_json::json!({"event": "E", "op": "gte", "value": 40}),
            serde_json::json!({"event": "F", "agg": "sum", "property": "amount", "op": "gt", "value": 1000}),
            serde_json::json!({"event": "E", "agg": "avg", "property": "amount", "op": "gt", "value": 12.4}),
            serde_json::json!({"event": "F", "agg": "max", "property": "amount", "op": "gte", "value": 24.75}),
            serde_json::json!({"event": "E", "agg": "seconds_since_last", "op": "lt", "value": 4}),
            serde_json::json!({"event": "F", "agg": "seconds_since_first", "op": "gt", "value": 5.99}),
            serde_json::json!({"event": "E", "within": "3s", "op": "gte", "value": 20}),
            serde_json::json!({"segment": "s"}),
        ] {
            let parsed = rules::parse(&rule).unwrap_or_else(|e| unreachable!("{e}"));
            let ids = |index: &PopulationIndex| {
                let mut ids: Vec<String> = index
                    .select(&parsed, 6_000, &rules::NoSegments)
                    .iter_from(None)
                    .map(|i| index.user_id(i).to_owned())
                    .collect();
                ids.sort();
                ids
            };
            assert_eq!(ids(&merged), ids(&fresh), "{rule}");
        }
        assert_eq!(merged.user_count(), 4);
        assert_eq!(merged.index_of("visitor"), None);
    }

    #[test]
    fn settling_keeps_time_order_with_ties_in_arrival_order() {
        let mut log = EventLog::default();
        let p = |v: i64| serde_json::json!({"n": v}).as_object().cloned();
        for (i, ts) in [5, 1, 9, 1, 3].into_iter().enumerate() {
            log.push(i as u32, ts, p(i as i64).as_ref());
        }
        log.settle();
        log.push(9, 4, None); // out of order: merged
        log.settle();
        log.push(9, 10, p(99).as_ref()); // newest: appended
        log.settle();
        assert_eq!(log.ts, [1, 1, 3, 4, 5, 9, 10]);
        assert_eq!(log.user, [1, 3, 4, 9, 0, 2, 9], "ties keep arrival order");
        let n = log
            .props
            .get("n")
            .map(|c| (0..7).map(|r| c.num(r)).collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(n[..3], [1.0, 3.0, 4.0]);
        assert!(n[3].is_nan(), "the event without properties has none");
        assert_eq!(n[6], 99.0);
        assert_eq!(log.window(Some(3), 5), 3..5);
    }
    /// A decoded index answers every rule as the one encoded, and goes on
    /// answering alike as both are fed the same new facts (its dictionaries
    /// and per-user aggregates came back whole).
    #[test]
    fn a_decoded_index_answers_as_the_encoded_one_and_keeps_doing_so() {
        use crate::codec::{Decoder, Encoder};
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let mut index = PopulationIndex::new();
        for u in 0..50usize {
            let id = format!("u{u}");
            let plan = ["free", "pro", "team"][u % 3];
            index.set_attributes(&id, &obj(serde_json::json!({"plan": plan, "age": u})));
            let times: Vec<Millis> = (0..u % 7)
                .map(|k| 1_000 + ((u * 37 + k * 101) % 5_000) as Millis)
                .collect();
            index.add_events(times.iter().map(|ts| (id.as_str(), "E", *ts, None)));
        }
        let amounts: Vec<(String, Map<String, Value>)> = (0..200)
            .map(|k| (format!("u{}", k % 40), obj(serde_json::json!({"amount": (k % 17) as f64 * 1.5, "sku": format!("s{}", k % 5)}))))
            .collect();
        index.add_events(
            amounts
                .iter()
                .enumerate()
                .map(|(k, (u, p))| (u.as_str(), "F", 2_000 + k as Millis * 13, Some(p))),
        );
        index.set_static_members("s", &["u1".to_owned(), "u2".to_owned()]);
        index.remove_user("u3");
        index.merge_user("u4", "u5");
        index.set_attributes("u3", &obj(serde_json::json!({"plan": "pro"})));
        let mut bytes = Vec::new();
        {
            let mut e = Encoder::new(&mut bytes);
            index
                .encode(&mut e)
                .unwrap_or_else(|e| unreachable!("encode: {e}"));
            e.finish().unwrap_or_else(|e| unreachable!("finish: {e}"));
        }
        let mut d = Decoder::new(bytes.as_slice(), bytes.len() as u64)
            .unwrap_or_else(|e| unreachable!("decoder: {e}"));
        let mut back =
            PopulationIndex::decode(&mut d).unwrap_or_else(|e| unreachable!("decode: {e}"));
        d.finish().unwrap_or_else(|e| unreachable!("checksum: {e}"));
        let rules: Vec<Value> = vec![
            serde_json::json!({"field": "plan", "op": "eq", "value": "pro"}),
            serde_json::json!({"field": "age", "op": "gt", "value": 20}),
            serde_json::json!({"event": "E", "op": "gte", "value": 3}),
            serde_json::json!({"event": "F", "agg": "sum", "property": "amount", "op": "gt", "value": 40}),
            serde_json::json!({"event": "F", "where": [{"field": "sku", "op": "eq", "value": "s2"}], "op": "gte", "value": 1}),
            serde_json::json!({"event": "E", "within": "3s", "op": "gte", "value": 1}),
            serde_json::json!({"segment": "s"}),
        ];
        struct Statics;
        impl SegmentLookup for Statics {
            fn segment(&self, _: &str) -> Option<SegmentRef<'_>> {
                Some(SegmentRef::Static(false))
            }
        }
        let same = |a: &PopulationIndex, b: &PopulationIndex| {
            assert_eq!(a.user_count(), b.user_count());
            assert_eq!(a.event_count(), b.event_count());
            for rule in &rules {
                let parsed = rules::parse(rule).unwrap_or_else(|e| unreachable!("{e}"));
                let ids = |index: &PopulationIndex| {
                    let mut ids: Vec<String> = index
                        .select(&parsed, 6_000, &Statics)
                        .iter_from(None)
                        .map(|i| index.user_id(i).to_owned())
                        .collect();
                    ids.sort();
                    ids
                };
                assert_eq!(ids(a), ids(b), "{rule}");
                assert!(
                    !ids(a).is_empty() || rule.get("within").is_some(),
                    "{rule} selects someone"
                );
            }
        };
        same(&index, &back);
        // New facts after the load: existing and new values, an older event.
        for i in [&mut index, &mut back] {
            i.set_attributes("u7", &obj(serde_json::json!({"plan": "pro", "age": 99})));
            i.set_attributes("new", &obj(serde_json::json!({"plan": "enterprise"})));
            let p = obj(serde_json::json!({"amount": 100.0, "sku": "s2"}));
            i.add_events([("u9", "F", 1_500, Some(&p)), ("new", "E", 5_900, None)]);
        }
        same(&index, &back);
        assert_eq!(back.index_of("u3"), index.index_of("u3"));
        assert_eq!(back.index_of("u4"), None);
        // Damaged bytes are refused.
        let cut = &bytes[..bytes.len() / 2];
        let mut d =
            Decoder::new(cut, cut.len() as u64).unwrap_or_else(|e| unreachable!("decoder: {e}"));
        assert!(PopulationIndex::decode(&mut d)
            .and_then(|_| d.finish())
            .is_err());
    }
}
