//! The live engine's derived state: per-user profiles (attributes and the
//! events the rules read), the segments with their dependencies, each
//! segment's members, and the deadlines. Pure: no IO, no clock. The worker
//! drives it and persists what it produces.

use super::deadlines::Deadlines;
use super::doc::Doc;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use stratify_core::codec::{DecodeError, Decoded, Decoder, Encoder};
use stratify_core::id_index::IdIndex;
use stratify_core::rules::{self, EventFact, Facts, Rule, SegmentLookup, SegmentRef};
use stratify_core::time::Millis;

/// Most events kept per user in live state. Past it the oldest are dropped
/// and the user is marked truncated (aggregates over all time then cover
/// only what is kept); the SQL and columnar evaluators still see everything.
pub const MAX_USER_EVENTS: usize = 10_000;

/// Users evaluated per slice of a background build.
pub const BUILD_SLICE: usize = 16_384;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct LiveEvent {
    pub seq: i64,
    pub ts: Millis,
    pub name: u32,
    pub properties: Option<Box<Doc>>,
}

impl LiveEvent {
    pub fn new(seq: i64, ts: Millis, name: u32, properties: Option<Map<String, Value>>) -> Self {
        Self {
            seq,
            ts,
            name,
            properties: properties
                .map(Doc::from_map)
                .filter(|d| !d.is_empty())
                .map(Box::new),
        }
    }
}

#[derive(Default)]
pub struct Profile {
    pub attributes: Doc,
    /// Sorted by (timestamp, seq), as the evaluator expects.
    pub events: Vec<LiveEvent>,
    pub alive: bool,
    pub truncated: bool,
}

pub struct Seg {
    pub id: String,
    pub rule: Option<Arc<Rule>>,
    /// Event names its result depends on (through references too).
    pub events: Vec<u32>,
    /// Whether it reads attributes (through references too).
    pub attributes: bool,
    /// Static segments it refers to (through references too).
    pub statics: Vec<u32>,
    /// Dynamic segments it refers to (through references too).
    pub refs: Vec<u32>,
    /// Members, one bit per user.
    pub members: Vec<u64>,
    pub size: u64,
}

impl Seg {
    pub fn contains(&self, user: u32) -> bool {
        let (w, b) = ((user / 64) as usize, user % 64);
        self.members.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// Sets membership; returns whether it changed.
    pub fn set(&mut self, user: u32, inside: bool) -> bool {
        let (w, b) = ((user / 64) as usize, user % 64);
        if self.members.len() <= w {
            if !inside {
                return false;
            }
            self.members.resize(w + 1, 0);
        }
        let was = self.members[w] & (1 << b) != 0;
        if was != inside {
            self.members[w] ^= 1 << b;
            if inside {
                self.size += 1;
            } else {
                self.size -= 1;
            }
        }
        was != inside
    }

    pub fn timed(&self) -> bool {
        !self.events.is_empty()
    }
}

/// One evaluated (user, segment): its result now and its next deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub user: u32,
    pub segment: u32,
    pub inside: bool,
    pub next: Option<Millis>,
}

#[derive(Default)]
pub struct State {
    /// Finds a user's index by their id (held once, in `user_ids`).
    users: IdIndex,
    pub user_ids: Vec<Box<str>>,
    pub profiles: Vec<Profile>,
    pub names: FastMap<Box<str>, u32>,
    pub name_list: Vec<Box<str>>,
    pub segments: Vec<Option<Seg>>,
    pub segment_index: FastMap<String, u32>,
    /// Dynamic segments by the event name they read.
    /// (Shared slices: the per-event hot path clones them without allocating.)
    pub by_event: FastMap<u32, Arc<[u32]>>,
    /// Dynamic segments that read attributes.
    pub by_attributes: Arc<[u32]>,
    /// Dynamic segments by the static segment they refer to.
    pub by_static: FastMap<u32, Vec<u32>>,
    pub dynamic: Arc<[u32]>,
    pub deadlines: Deadlines,
    pub truncated_users: u64,
}

impl State {
    /// Writes the whole state (for a checkpoint). Segments are written by
    /// id, in slot order, without their rules: the catalog gives those back.
    pub fn encode<W: Write>(&self, e: &mut Encoder<W>) -> io::Result<()> {
        e.len(self.user_ids.len())?;
        for (id, p) in self.user_ids.iter().zip(&self.profiles) {
            e.str(id)?;
            p.attributes.encode(e)?;
            e.bool(p.alive)?;
            e.bool(p.truncated)?;
            e.len(p.events.len())?;
            for ev in &p.events {
                e.i64(ev.seq)?;
                e.i64(ev.ts)?;
                e.u32(ev.name)?;
                match &ev.properties {
                    Some(doc) => {
                        e.bool(true)?;
                        doc.encode(e)?;
                    }
                    None => e.bool(false)?,
                }
            }
        }
        e.len(self.name_list.len())?;
        self.name_list.iter().try_for_each(|n| e.str(n))?;
        e.u64(self.truncated_users)?;
        // Slot → position among the segments written.
        let mut position = vec![u32::MAX; self.segments.len()];
        let live: Vec<&Seg> = self.segments.iter().flatten().collect();
        e.len(live.len())?;
        for (k, (slot, seg)) in self
            .segments
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .enumerate()
        {
            position[slot] = k as u32;
            e.str(&seg.id)?;
            e.u64s(&seg.members)?;
            e.u64(seg.size)?;
        }
        let (mut users, mut segments, mut at) = (Vec::new(), Vec::new(), Vec::new());
        for ((u, s), t) in self.deadlines.iter() {
            if let Some(&k) = position.get(s as usize).filter(|k| **k != u32::MAX) {
                users.push(u);
                segments.push(k);
                at.push(t);
            }
        }
        e.u32s(&users)?;
        e.u32s(&segments)?;
        e.i64s(&at)
    }

    /// Reads a state written by [`State::encode`]; `rules` is every segment
    /// of the catalog now, which must be exactly the segments written.
    pub fn decode<R: Read>(
        d: &mut Decoder<R>,
        rules: &HashMap<String, Option<Arc<Rule>>>,
    ) -> Decoded<Self> {
        let malformed = |what| Err(DecodeError::Malformed(what));
        let mut state = State::default();
        let n = d.len(8)?;
        state.user_ids.reserve_exact(n);
        state.profiles.reserve_exact(n);
        let mut names_used = 0u32;
        // The shapes of the last attributes and properties read.
        let (mut attribute_shape, mut property_shape) = (None, None);
        for i in 0..n {
            let id: Box<str> = d.string()?.into();
            let attributes = Doc::decode(d, &mut attribute_shape)?;
            let (alive, truncated) = (d.bool()?, d.bool()?);
            let k = d.len(21)?;
            let mut events = Vec::with_capacity(k);
            for _ in 0..k {
                let (seq, ts, name) = (d.i64()?, d.i64()?, d.u32()?);
                names_used = names_used.max(name + 1);
                let properties = if d.bool()? {
                    Some(Box::new(Doc::decode(d, &mut property_shape)?))
                } else {
                    None
                };
                events.push(LiveEvent {
                    seq,
                    ts,
                    name,
                    properties,
                });
            }
            if !events.is_sorted_by_key(|e| (e.ts, e.seq)) {
                return malformed("event order");
            }
            state.user_ids.push(id);
            let id = &state.user_ids[i];
            if state.users.insert(id, i as u32, &state.user_ids).is_some() {
                return malformed("user twice");
            }
            state.profiles.push(Profile {
                attributes,
                events,
                alive,
                truncated,
            });
        }
        let names = d.len(8)?;
        for _ in 0..names {
            let name = d.string()?;
            state.name_id(&name);
        }
        if names_used as usize > state.name_list.len() || state.name_list.len() != names {
            return malformed("event name");
        }
        state.truncated_users = d.u64()?;
        let k = d.len(24)?;
        if k != rules.len() {
            return malformed("segments");
        }
        let mut slots = Vec::with_capacity(k);
        for _ in 0..k {
            let id = d.string()?;
            let Some(rule) = rules.get(&id) else {
                return malformed("segment");
            };
            let slot = state.put_segment(&id, rule.clone());
            let (members, size) = (d.u64s()?, d.u64()?);
            if members.len() > n.div_ceil(64) {
                return malformed("members");
            }
            if let Some(seg) = state.segments[slot as usize].as_mut() {
                (seg.members, seg.size) = (members, size);
            }
            slots.push(slot);
        }
        let (users, segments, at) = (d.u32s()?, d.u32s()?, d.i64s()?);
        if users.len() != segments.len() || users.len() != at.len() {
            return malformed("deadlines");
        }
        for ((u, s), t) in users.into_iter().zip(segments).zip(at) {
            match slots.get(s as usize) {
                Some(&slot) if (u as usize) < n => state.deadlines.set(u, slot, Some(t)),
                _ => return malformed("deadline"),
            }
        }
        Ok(state)
    }
}

struct Lookup<'a> {
    state: &'a State,
    user: u32,
}

impl SegmentLookup for Lookup<'_> {
    fn segment(&self, id: &str) -> Option<SegmentRef<'_>> {
        let s = self.state.segment(id)?;
        Some(match &s.rule {
            Some(r) => SegmentRef::Dynamic(r),
            None => SegmentRef::Static(s.contains(self.user)),
        })
    }
}

impl State {
    pub fn segment(&self, id: &str) -> Option<&Seg> {
        let i = *self.segment_index.get(id)?;
        self.segments.get(i as usize)?.as_ref()
    }

    /// The index of a user the state knows.
    pub fn index_of(&self, user_id: &str) -> Option<u32> {
        self.users.get(user_id, &self.user_ids)
    }

    pub fn name_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.names.get(name) {
            return i;
        }
        let i = self.name_list.len() as u32;
        self.name_list.push(name.into());
        self.names.insert(name.into(), i);
        i
    }

    /// The user's index and whether it was just created (or re-created).
    pub fn user(&mut self, user_id: &str) -> (u32, bool) {
        let i = match self.users.get(user_id, &self.user_ids) {
            Some(i) => i,
            None => {
                let i = self.user_ids.len() as u32;
                self.user_ids.push(user_id.into());
                self.users.insert(user_id, i, &self.user_ids);
                self.profiles.push(Profile::default());
                i
            }
        };
        let p = &mut self.profiles[i as usize];
        let new = !p.alive;
        p.alive = true;
        (i, new)
    }

    /// Adds an event to a user's profile, keeping (timestamp, seq) order;
    /// an event the profile holds already (same sequence number) is not
    /// added twice.
    pub fn add_event(&mut self, user: u32, e: LiveEvent) {
        let p = &mut self.profiles[user as usize];
        let at = match p.events.last() {
            Some(last) if (last.ts, last.seq) >= (e.ts, e.seq) => {
                let at = p.events.partition_point(|x| (x.ts, x.seq) < (e.ts, e.seq));
                if p.events.get(at).is_some_and(|x| x.seq == e.seq) {
                    return;
                }
                at
            }
            _ => p.events.len(),
        };
        p.events.insert(at, e);
        if p.events.len() > MAX_USER_EVENTS {
            let extra = p.events.len() - MAX_USER_EVENTS;
            p.events.drain(..extra);
            if !p.truncated {
                p.truncated = true;
                self.truncated_users += 1;
                tracing::warn!(
                    user = %self.user_ids[user as usize],
                    limit = MAX_USER_EVENTS,
                    "user over the live event limit: oldest events dropped from live state"
                );
            }
        }
    }

    /// Forgets a user's profile and memberships (an erasure).
    pub fn forget(&mut self, user: u32) {
        if let Some(p) = self.profiles.get_mut(user as usize) {
            if p.truncated {
                self.truncated_users -= 1;
            }
            *p = Profile::default();
        }
        for s in self.segments.iter_mut().flatten() {
            s.set(user, false);
        }
        for s in 0..self.segments.len() as u32 {
            self.deadlines.set(user, s, None);
        }
    }

    /// Installs (or replaces) a segment; returns its index. Members are kept
    /// when it is replaced: a build re-evaluates them.
    pub fn put_segment(&mut self, id: &str, rule: Option<Arc<Rule>>) -> u32 {
        let i = match self.segment_index.get(id) {
            Some(&i) => i,
            None => {
                let i = self.segments.len() as u32;
                self.segments.push(None);
                self.segment_index.insert(id.to_owned(), i);
                i
            }
        };
        let (members, size) = match self.segments[i as usize].take() {
            Some(s) => (s.members, s.size),
            None => (Vec::new(), 0),
        };
        self.segments[i as usize] = Some(Seg {
            id: id.to_owned(),
            rule,
            events: Vec::new(),
            attributes: false,
            statics: Vec::new(),
            refs: Vec::new(),
            members,
            size,
        });
        self.reindex();
        i
    }

    pub fn remove_segment(&mut self, id: &str) -> Option<u32> {
        let i = self.segment_index.remove(id)?;
        self.segments[i as usize] = None;
        self.reindex();
        Some(i)
    }

    /// Recomputes every segment's dependencies and the indexes by dependency.
    fn reindex(&mut self) {
        let n = self.segments.len();
        let mut deps = Vec::with_capacity(n);
        for i in 0..n {
            let mut d = (Vec::new(), false, Vec::new(), Vec::new());
            self.collect(i as u32, &mut d, 0);
            deps.push(d);
        }
        self.by_static.clear();
        let mut by_event: FastMap<u32, Vec<u32>> = FastMap::default();
        let (mut by_attributes, mut dynamic) = (Vec::new(), Vec::new());
        for (i, (events, attributes, statics, refs)) in deps.into_iter().enumerate() {
            let Some(s) = self.segments[i].as_mut() else {
                continue;
            };
            if s.rule.is_none() {
                continue;
            }
            let i = i as u32;
            dynamic.push(i);
            for e in &events {
                by_event.entry(*e).or_default().push(i);
            }
            if attributes {
                by_attributes.push(i);
            }
            for st in &statics {
                self.by_static.entry(*st).or_default().push(i);
            }
            (s.events, s.attributes, s.statics, s.refs) = (events, attributes, statics, refs);
        }
        self.by_event = by_event.into_iter().map(|(k, v)| (k, v.into())).collect();
        self.by_attributes = by_attributes.into();
        self.dynamic = dynamic.into();
    }

    fn collect(&mut self, i: u32, d: &mut (Vec<u32>, bool, Vec<u32>, Vec<u32>), depth: usize) {
        let Some(rule) = self.segments[i as usize]
            .as_ref()
            .and_then(|s| s.rule.clone())
        else {
            return;
        };
        for name in rule.event_names() {
            let n = self.name_id(name);
            if !d.0.contains(&n) {
                d.0.push(n);
            }
        }
        d.1 |= !rule.attribute_names().is_empty();
        if depth >= 16 {
            return;
        }
        for r in rule.references() {
            let Some(&j) = self.segment_index.get(r) else {
                continue;
            };
            let is_static = self.segments[j as usize]
                .as_ref()
                .is_some_and(|s| s.rule.is_none());
            if is_static {
                if !d.2.contains(&j) {
                    d.2.push(j);
                }
            } else {
                if !d.3.contains(&j) {
                    d.3.push(j);
                }
                self.collect(j, d, depth + 1);
            }
        }
    }

    /// Evaluates `segments` (dynamic ones) for one user at `now`.
    pub fn evaluate(&self, user: u32, segments: &[u32], now: Millis, out: &mut Vec<Outcome>) {
        let Some(p) = self.profiles.get(user as usize).filter(|p| p.alive) else {
            return;
        };
        // Only the events these segments read (by name, through references
        // too): an aggregate matches events by name, so no other event can
        // change a result or a deadline, and a build of one segment copies a
        // few events per user instead of all of them.
        let mut names: Vec<u32> = Vec::new();
        for &s in segments {
            if let Some(seg) = self.segments.get(s as usize).and_then(|s| s.as_ref()) {
                names.extend(&seg.events);
            }
        }
        names.sort_unstable();
        names.dedup();
        let events: Vec<EventFact<'_>> = p
            .events
            .iter()
            .filter(|e| names.binary_search(&e.name).is_ok())
            .map(|e| EventFact {
                name: &self.name_list[e.name as usize],
                timestamp: e.ts,
                properties: e.properties.as_deref().map(|d| d as &dyn rules::Fields),
            })
            .collect();
        let lookup = Lookup { state: self, user };
        let facts = Facts {
            attributes: &p.attributes,
            events: &events,
            segments: &lookup,
            now,
        };
        for &s in segments {
            let Some(seg) = self.segments.get(s as usize).and_then(|s| s.as_ref()) else {
                continue;
            };
            let Some(rule) = &seg.rule else { continue };
            let inside = rules::evaluate(rule, &facts);
            let next = if seg.timed() {
                rules::next_change_from(rule, &facts, inside)
            } else {
                None
            };
            out.push(Outcome {
                user,
                segment: s,
                inside,
                next,
            });
        }
    }

    /// Evaluates `segments` for users `from..to`, spread over `threads`.
    pub fn evaluate_range(
        &self,
        from: u32,
        to: u32,
        segments: &[u32],
        now: Millis,
        threads: usize,
    ) -> Vec<Outcome> {
        let len = to.saturating_sub(from) as usize;
        fan_out(len, threads, |part| {
            let mut out = Vec::new();
            for u in part {
                self.evaluate(from + u as u32, segments, now, &mut out);
            }
            out
        })
    }

    /// Applies outcomes: memberships and deadlines. Returns those whose
    /// membership changed.
    pub fn apply(&mut self, outcomes: &[Outcome]) -> Vec<Outcome> {
        let mut changed = Vec::new();
        for o in outcomes {
            let Some(seg) = self
                .segments
                .get_mut(o.segment as usize)
                .and_then(|s| s.as_mut())
            else {
                continue;
            };
            if seg.set(o.user, o.inside) {
                changed.push(*o);
            }
            self.deadlines.set(o.user, o.segment, o.next);
        }
        changed
    }

    /// Dynamic segments an event of `name` can change.
    pub fn readers_of_event(&self, name: u32) -> Arc<[u32]> {
        self.by_event
            .get(&name)
            .cloned()
            .unwrap_or_else(|| Arc::from([]))
    }

    /// Dynamic segments that must be re-evaluated when `segment` changes
    /// (its rule, or a static segment's members).
    pub fn dependents(&self, segment: u32) -> Vec<u32> {
        let mut out: Vec<u32> = self.by_static.get(&segment).cloned().unwrap_or_default();
        for &d in self.dynamic.iter() {
            if let Some(s) = self.segments[d as usize].as_ref() {
                if s.refs.contains(&segment) && !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out
    }
}

/// Splits `0..len` into one contiguous part per thread, runs `f` on each
/// in parallel, and concatenates the results in order. A panic in a part is
/// not swallowed: it resumes on the caller.
pub fn fan_out<R, F>(len: usize, threads: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(std::ops::Range<usize>) -> Vec<R> + Sync,
{
    let per = len.div_ceil(threads.max(1)).max(1);
    if len <= per {
        return f(0..len);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..len)
            .step_by(per)
            .map(|lo| scope.spawn(move || f(lo..(lo + per).min(len))))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, ts: Millis) -> LiveEvent {
        LiveEvent {
            seq,
            ts,
            name: 0,
            properties: None,
        }
    }

    #[test]
    fn an_oversized_user_keeps_the_newest_events_and_is_counted() {
        let mut s = State::default();
        let (u, new) = s.user("big");
        assert!(new);
        let n = MAX_USER_EVENTS as i64 + 5;
        // Out of order on purpose: the profile stays sorted by (ts, seq).
        for i in (0..n).rev() {
            s.add_event(u, event(i, 1_000 + i));
        }
        let p = &s.profiles[u as usize];
        assert_eq!(p.events.len(), MAX_USER_EVENTS);
        assert!(p.truncated);
        assert_eq!(s.truncated_users, 1);
        assert!(p.events.windows(2).all(|w| w[0].ts <= w[1].ts));
        s.forget(u);
        assert_eq!(s.truncated_users, 0);
        assert!(s.profiles[u as usize].events.is_empty());
        assert!(s.user("big").1, "an erased user comes back as new");
    }

    #[test]
    fn fan_out_covers_every_index_once_in_order() {
        for (len, threads) in [(0, 2), (1, 2), (7, 2), (10, 3), (5, 8)] {
            let got = fan_out(len, threads, |r| r.collect::<Vec<_>>());
            assert_eq!(got, (0..len).collect::<Vec<_>>(), "{len} over {threads}");
        }
    }

    #[test]
    fn memberships_count_their_members() {
        let mut seg = Seg {
            id: "s".into(),
            rule: None,
            events: Vec::new(),
            attributes: false,
            statics: Vec::new(),
            refs: Vec::new(),
            members: Vec::new(),
            size: 0,
        };
        assert!(!seg.set(130, false), "absent stays absent without growing");
        assert!(seg.set(130, true));
        assert!(!seg.set(130, true));
        assert!(seg.contains(130) && !seg.contains(129));
        assert_eq!(seg.size, 1);
        assert!(seg.set(130, false));
        assert_eq!(seg.size, 0);
    }
}
