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

use crate::rules::{
    self, AggFn, Aggregate, Leaf, NumTest, Op, Operand, Rule, Seen, SegmentLookup, SegmentRef,
    Source,
};
use crate::time::Millis;
use serde_json::{Map, Value};
use std::collections::HashMap;

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
    lookup: HashMap<String, u32>,
}

impl Column {
    fn code_of(&mut self, v: &Value) -> u32 {
        let key = v.to_string();
        if let Some(&c) = self.lookup.get(&key) {
            return c;
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

/// One user's aggregate over their events in a window, accumulated in
/// (time, arrival) order.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    count: u32,
    numeric: u32,
    sum: f64,
    carry: f64,
    min: f64,
    max: f64,
    first: Millis,
    last: Millis,
    last_row: u32,
}

impl Run {
    fn add(&mut self, ts: Millis, row: usize, x: f64) {
        if self.count == 0 {
            self.first = ts;
        }
        self.count += 1;
        self.last = ts;
        self.last_row = row as u32;
        if x.is_nan() {
            return;
        }
        // Neumaier, as SQLite's sum() and the per-user evaluator do.
        let s = self.sum + x;
        if self.sum.abs() > x.abs() {
            self.carry += (self.sum - s) + x;
        } else {
            self.carry += (x - s) + self.sum;
        }
        self.sum = s;
        if self.numeric == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.numeric += 1;
    }

    /// The value of a numeric aggregate (None when missing).
    fn number(&self, func: &AggFn, now: Millis) -> Option<f64> {
        match func {
            AggFn::Count => Some(f64::from(self.count)),
            AggFn::Sum(_) => Some(self.sum + self.carry),
            AggFn::Avg(_) if self.numeric > 0 => {
                Some((self.sum + self.carry) / f64::from(self.numeric))
            }
            AggFn::Min(_) if self.numeric > 0 => Some(self.min),
            AggFn::Max(_) if self.numeric > 0 => Some(self.max),
            AggFn::SecondsSinceLast if self.count > 0 => Some((now - self.last) as f64 / 1000.0),
            AggFn::SecondsSinceFirst if self.count > 0 => Some((now - self.first) as f64 / 1000.0),
            _ => None,
        }
    }

    fn value<'a>(&self, func: &AggFn, last_value: Option<&'a Value>, now: Millis) -> Seen<'a> {
        match func {
            AggFn::NoneYet => Seen::Bool(self.count == 0),
            AggFn::LastValue(_) if self.count > 0 => last_value
                .filter(|v| !v.is_null())
                .map_or(Seen::Missing, Seen::Json),
            AggFn::LastValue(_) => Seen::Missing,
            f => self.number(f, now).map_or(Seen::Missing, Seen::Num),
        }
    }
}

/// Sorts (user, row) pairs by user, keeping row order within a user (LSD
/// radix sort: stable, linear).
fn sort_by_user(pairs: &mut Vec<(u32, u32)>, users: usize) {
    if pairs.len() < 2048 {
        pairs.sort_by_key(|p| p.0);
        return;
    }
    const BITS: u32 = 11;
    let key_bits = usize::BITS - users.leading_zeros();
    let mut buf = vec![(0u32, 0u32); pairs.len()];
    let mut shift = 0;
    while shift < key_bits {
        let mut start = [0usize; 1 << BITS];
        for p in pairs.iter() {
            start[((p.0 >> shift) as usize) & ((1 << BITS) - 1)] += 1;
        }
        let mut sum = 0;
        for c in start.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for p in pairs.iter() {
            let k = ((p.0 >> shift) as usize) & ((1 << BITS) - 1);
            buf[start[k]] = *p;
            start[k] += 1;
        }
        std::mem::swap(pairs, &mut buf);
        shift += BITS;
    }
}

/// Every user's attributes, events and static memberships, columnar.
#[derive(Debug, Default)]
pub struct PopulationIndex {
    ids: Vec<String>,
    by_id: HashMap<String, u32>,
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
        if let Some(&i) = self.by_id.get(user_id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(user_id.to_owned());
        self.by_id.insert(user_id.to_owned(), i);
        self.live.set(i);
        i
    }

    pub fn index_of(&self, user_id: &str) -> Option<u32> {
        self.by_id.get(user_id).copied()
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

    /// Makes every deferred event visible.
    pub fn settle_all(&mut self) {
        self.events.values_mut().for_each(EventLog::settle);
    }

    /// Forgets a user (erasure): their index stays allocated but is never live again.
    pub fn remove_user(&mut self, user_id: &str) {
        if let Some(i) = self.by_id.remove(user_id) {
            self.live.clear(i);
            for members in self.statics.values_mut() {
                members.clear(i);
            }
        }
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
        let mut out = self.eval(rule, now, segments, 0, None);
        out.and(&self.live);
        out
    }

    /// Evaluates `rule`. With a `mask`, the answer is exact for the users in
    /// the mask and arbitrary outside it (callers intersect with the mask):
    /// an AND passes what its earlier children left as the mask to the later
    /// ones, so aggregates skip the events of users already ruled out.
    fn eval(
        &self,
        rule: &Rule,
        now: Millis,
        segments: &dyn SegmentLookup,
        depth: usize,
        mask: Option<&Bitset>,
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
                    acc.and(&self.eval(c, now, segments, depth, Some(&within)));
                }
                acc
            }
            Rule::Any(children) => {
                let mut acc = Bitset::with_len(self.ids.len());
                for c in children {
                    acc.or(&self.eval(c, now, segments, depth, mask));
                }
                acc
            }
            Rule::Not(inner) => {
                let mut s = self.eval(inner, now, segments, depth, mask);
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
                    self.eval(r, now, segments, depth + 1, mask)
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
            let pairs = self.window_pairs(log, a, now, mask);
            let prop = a.func.property().and_then(|p| log.props.get(p));
            let numeric = matches!(
                a.func,
                AggFn::Sum(_) | AggFn::Avg(_) | AggFn::Min(_) | AggFn::Max(_)
            );
            let fast = NumTest::new(op, operand);
            let missing = rules::test(op, &Seen::Missing, operand);
            let mut i = 0;
            while i < pairs.len() {
                let user = pairs[i].0;
                let mut run = Run::default();
                while i < pairs.len() && pairs[i].0 == user {
                    let r = pairs[i].1 as usize;
                    let x = match (numeric, prop) {
                        (true, Some(c)) => c.num(r),
                        _ => f64::NAN,
                    };
                    run.add(log.ts[r], r, x);
                    i += 1;
                }
                touched.set(user);
                let hit = match &a.func {
                    AggFn::LastValue(_) => {
                        let v = prop.and_then(|c| c.get(run.last_row as usize));
                        rules::test(op, &run.value(&a.func, v, now), operand)
                    }
                    AggFn::NoneYet => rules::test(op, &Seen::Bool(false), operand),
                    func => run.number(func, now).map_or(missing, |x| fast.test(x)),
                };
                if hit {
                    out.set(user);
                }
            }
        }
        if rules::test(op, &Run::default().value(&a.func, None, now), operand) {
            let mut untouched = touched;
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
        if rules::test(op, &Run::default().value(&a.func, None, now), operand) {
            let mut untouched = p.has_any.clone();
            untouched.complement_within(mask.unwrap_or(&self.live));
            out.or(&untouched);
        }
        out.and(&self.live);
        out
    }

    /// The (user, row) pairs of the matching events in the window, sorted
    /// by user, each user's rows in (time, arrival) order.
    fn window_pairs(
        &self,
        log: &EventLog,
        a: &Aggregate,
        now: Millis,
        mask: Option<&Bitset>,
    ) -> Vec<(u32, u32)> {
        // Property filters, decided once per distinct value.
        let filters: Vec<(Option<&Column>, Vec<bool>)> = a
            .filters
            .iter()
            .map(|f| match log.props.get(&f.property) {
                Some(col) => (Some(col), col.truth(f.op, &f.operand)),
                None => (None, vec![rules::test(f.op, &Seen::Missing, &f.operand)]),
            })
            .collect();
        let window = log.window(a.within.map(|w| now - w), now);
        let mut pairs = Vec::with_capacity(window.len());
        for r in window {
            let pass = filters.iter().all(|(col, truth)| match col {
                Some(c) => truth[c.codes.get(r).copied().unwrap_or(0) as usize],
                None => truth[0],
            });
            let user = log.user[r];
            if pass && mask.is_none_or(|m| m.contains(user)) {
                pairs.push((user, r as u32));
            }
        }
        sort_by_user(&mut pairs, self.ids.len());
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn radix_sort_by_user_is_stable_and_matches_a_stable_sort() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for users in [3usize, 2_000, 1 << 20] {
            let mut pairs: Vec<(u32, u32)> = (0..50_000u32)
                .map(|row| (rng.random_range(0..users as u32), row))
                .collect();
            let mut expected = pairs.clone();
            expected.sort_by_key(|p| p.0);
            sort_by_user(&mut pairs, users);
            assert_eq!(pairs, expected, "{users} users");
        }
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
}
