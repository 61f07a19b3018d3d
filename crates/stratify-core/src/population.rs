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
    self, AggFn, Aggregate, Leaf, Op, Operand, Rule, Seen, SegmentLookup, SegmentRef, Source,
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
    lookup: HashMap<String, u32>,
}

impl Column {
    fn code_of(&mut self, v: &Value) -> u32 {
        let key = v.to_string();
        if let Some(&c) = self.lookup.get(&key) {
            return c;
        }
        self.dict.push(v.clone());
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

/// All events of one name.
#[derive(Debug, Default)]
struct EventLog {
    ts: Vec<Millis>,
    user: Vec<u32>,
    props: HashMap<String, Column>,
    /// Row ids sorted by (ts, row): what queries read.
    main: Vec<u32>,
    /// Rows added since the last [`EventLog::settle`], in arrival order.
    tail: Vec<u32>,
}

impl EventLog {
    fn push(&mut self, user: u32, ts: Millis, props: Option<&Map<String, Value>>) {
        let row = self.ts.len();
        self.ts.push(ts);
        self.user.push(user);
        if let Some(p) = props {
            for (k, v) in p {
                self.props.entry(k.clone()).or_default().set(row, Some(v));
            }
        }
        self.tail.push(row as u32);
    }

    /// Sorts the tail into the main index: an append when every new event is
    /// the newest (the real-time case), one linear merge otherwise.
    fn settle(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let ts = &self.ts;
        let key = |r: u32| (ts[r as usize], r);
        self.tail.sort_unstable_by_key(|&r| key(r));
        if self
            .main
            .last()
            .is_none_or(|&last| key(last) <= key(self.tail[0]))
        {
            self.main.append(&mut self.tail);
            return;
        }
        let mut merged = Vec::with_capacity(self.main.len() + self.tail.len());
        let (mut i, mut j) = (0, 0);
        while i < self.main.len() && j < self.tail.len() {
            if key(self.main[i]) <= key(self.tail[j]) {
                merged.push(self.main[i]);
                i += 1;
            } else {
                merged.push(self.tail[j]);
                j += 1;
            }
        }
        merged.extend_from_slice(&self.main[i..]);
        merged.extend_from_slice(&self.tail[j..]);
        self.main = merged;
        self.tail.clear();
    }

    /// Rows with `lo < ts <= hi` in (ts, row) order.
    fn window(&self, lo: Option<Millis>, hi: Millis) -> impl Iterator<Item = u32> + '_ {
        let start = lo.map_or(0, |lo| {
            self.main.partition_point(|&r| self.ts[r as usize] <= lo)
        });
        let end = self.main.partition_point(|&r| self.ts[r as usize] <= hi);
        self.main[start..end.max(start)].iter().copied()
    }
}

/// Per-user running aggregate.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
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

impl Acc {
    fn add_number(&mut self, x: f64) {
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
        self.eval(rule, now, segments, 0)
    }

    fn eval(&self, rule: &Rule, now: Millis, segments: &dyn SegmentLookup, depth: usize) -> Bitset {
        match rule {
            Rule::All(children) => {
                let mut acc = self.live.clone();
                for c in children {
                    acc.and(&self.eval(c, now, segments, depth));
                }
                acc
            }
            Rule::Any(children) => {
                let mut acc = Bitset::with_len(self.ids.len());
                for c in children {
                    acc.or(&self.eval(c, now, segments, depth));
                }
                acc
            }
            Rule::Not(inner) => {
                let mut s = self.eval(inner, now, segments, depth);
                s.complement_within(&self.live);
                s
            }
            Rule::Leaf(leaf) => self.leaf(leaf, now),
            Rule::Segment(id) => match segments.segment(id) {
                Some(SegmentRef::Static(_)) => {
                    let mut s = self.statics.get(id).cloned().unwrap_or_default();
                    s.and(&self.live);
                    s
                }
                Some(SegmentRef::Dynamic(r)) if depth < MAX_REF_DEPTH => {
                    self.eval(r, now, segments, depth + 1)
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
                        let truth = col.truth(leaf.op, &leaf.operand);
                        if truth[0] {
                            // Missing matches (not_exists): start from everyone and drop the present.
                            out = self.live.clone();
                            for (row, &code) in col.codes.iter().enumerate() {
                                if !truth[code as usize] {
                                    out.clear(row as u32);
                                }
                            }
                        } else {
                            for (row, &code) in col.codes.iter().enumerate() {
                                if code != 0 && truth[code as usize] {
                                    out.set(row as u32);
                                }
                            }
                            out.and(&self.live);
                        }
                    }
                    None if rules::test(leaf.op, &Seen::Missing, &leaf.operand) => {
                        out = self.live.clone()
                    }
                    None => {}
                }
                out
            }
            Source::Aggregate(a) => self.aggregate_leaf(a, leaf.op, &leaf.operand, now),
        }
    }

    fn aggregate_leaf(&self, a: &Aggregate, op: Op, operand: &Operand, now: Millis) -> Bitset {
        let n = self.ids.len();
        let mut out = Bitset::with_len(n);
        let mut touched = Bitset::with_len(n);
        let empty = value_of(&a.func, &Acc::default(), None, now);
        if let Some(log) = self.events.get(&a.event) {
            // Property filters, decided per distinct value.
            let filters: Vec<(Option<&Column>, Vec<bool>)> = a
                .filters
                .iter()
                .map(|f| match log.props.get(&f.property) {
                    Some(col) => (Some(col), col.truth(f.op, &f.operand)),
                    None => (None, vec![rules::test(f.op, &Seen::Missing, &f.operand)]),
                })
                .collect();
            let prop = a.func.property().and_then(|p| log.props.get(p));
            let mut accs: HashMap<u32, Acc> = HashMap::new();
            let mut dense: Vec<Acc> = Vec::new();
            let use_dense = log.ts.len() > n / 8;
            if use_dense {
                dense = vec![Acc::default(); n];
            }
            let lo = a.within.map(|w| now - w);
            for row in log.window(lo, now) {
                let r = row as usize;
                let pass = filters.iter().all(|(col, truth)| match col {
                    Some(c) => truth[c.codes.get(r).copied().unwrap_or(0) as usize],
                    None => truth[0],
                });
                if !pass {
                    continue;
                }
                let user = log.user[r];
                touched.set(user);
                let acc = if use_dense {
                    &mut dense[user as usize]
                } else {
                    accs.entry(user).or_default()
                };
                if acc.count == 0 {
                    acc.first = log.ts[r];
                }
                acc.count += 1;
                acc.last = log.ts[r];
                acc.last_row = row;
                if let Some(x) = prop.and_then(|c| c.get(r)).and_then(Value::as_f64) {
                    if matches!(
                        a.func,
                        AggFn::Sum(_) | AggFn::Avg(_) | AggFn::Min(_) | AggFn::Max(_)
                    ) {
                        acc.add_number(x);
                    }
                }
            }
            let mut decide = |user: u32, acc: &Acc| {
                let last_value = match &a.func {
                    AggFn::LastValue(_) => prop.and_then(|c| c.get(acc.last_row as usize)),
                    _ => None,
                };
                if rules::test(op, &value_of(&a.func, acc, last_value, now), operand) {
                    out.set(user);
                }
            };
            if use_dense {
                for user in touched.iter_from(None) {
                    decide(user, &dense[user as usize]);
                }
            } else {
                for (user, acc) in &accs {
                    decide(*user, acc);
                }
            }
        }
        if rules::test(op, &empty, operand) {
            let mut untouched = touched;
            untouched.complement_within(&self.live);
            out.or(&untouched);
        }
        out.and(&self.live);
        out
    }
}

fn value_of<'a>(func: &AggFn, acc: &Acc, last_value: Option<&'a Value>, now: Millis) -> Seen<'a> {
    match func {
        AggFn::Count => Seen::Num(f64::from(acc.count)),
        AggFn::NoneYet => Seen::Bool(acc.count == 0),
        AggFn::Sum(_) => Seen::Num(acc.sum + acc.carry),
        AggFn::Avg(_) if acc.numeric > 0 => {
            Seen::Num((acc.sum + acc.carry) / f64::from(acc.numeric))
        }
        AggFn::Min(_) if acc.numeric > 0 => Seen::Num(acc.min),
        AggFn::Max(_) if acc.numeric > 0 => Seen::Num(acc.max),
        AggFn::SecondsSinceLast if acc.count > 0 => Seen::Num((now - acc.last) as f64 / 1000.0),
        AggFn::SecondsSinceFirst if acc.count > 0 => Seen::Num((now - acc.first) as f64 / 1000.0),
        AggFn::LastValue(_) if acc.count > 0 => last_value
            .filter(|v| !v.is_null())
            .map_or(Seen::Missing, Seen::Json),
        _ => Seen::Missing,
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
    fn settling_keeps_time_order_with_ties_in_arrival_order() {
        let mut log = EventLog::default();
        for (i, ts) in [5, 1, 9, 1, 3].into_iter().enumerate() {
            log.push(i as u32, ts, None);
        }
        log.settle();
        log.push(9, 4, None); // out of order: merged
        log.settle();
        log.push(9, 10, None); // newest: appended
        log.settle();
        let rows: Vec<u32> = log.window(None, 100).collect();
        let order: Vec<Millis> = rows.iter().map(|&r| log.ts[r as usize]).collect();
        assert_eq!(order, [1, 1, 3, 4, 5, 9, 10]);
        assert_eq!(rows[..2], [1, 3], "ties keep arrival order");
        assert_eq!(
            log.window(Some(3), 5)
                .map(|r| log.ts[r as usize])
                .collect::<Vec<_>>(),
            [4, 5]
        );
    }
}
