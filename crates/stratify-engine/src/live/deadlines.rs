//! The one ordered index of pending deadlines: for each (user, segment), the
//! instant its result next changes with no new event. A binary heap ordered
//! by instant, and a dense table (per segment, by user) of each pair's
//! current deadline: replacing a deadline pushes the new one and leaves the
//! old entry to be skipped when it surfaces; the heap is compacted when
//! stale entries pile up. The table costs 8 bytes per (user, timed segment)
//! and makes `set` a couple of array accesses, no hashing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use stratify_core::time::Millis;

type Key = u64;
const NONE: Millis = Millis::MIN;

fn key(user: u32, segment: u32) -> Key {
    (u64::from(user) << 32) | u64::from(segment)
}

#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Millis, Key)>>,
    /// `current[segment][user]`, `NONE` when there is no deadline.
    current: Vec<Vec<Millis>>,
    pending: usize,
}

impl Deadlines {
    fn get(&self, user: u32, segment: u32) -> Millis {
        self.current
            .get(segment as usize)
            .and_then(|s| s.get(user as usize))
            .copied()
            .unwrap_or(NONE)
    }

    /// Sets (or with `None` clears) the deadline of a (user, segment) pair.
    pub fn set(&mut self, user: u32, segment: u32, at: Option<Millis>) {
        let new = at.unwrap_or(NONE);
        let (s, u) = (segment as usize, user as usize);
        if new == NONE && self.get(user, segment) == NONE {
            return;
        }
        if self.current.len() <= s {
            self.current.resize_with(s + 1, Vec::new);
        }
        let column = &mut self.current[s];
        if column.len() <= u {
            column.resize((u + 1).next_power_of_two(), NONE);
        }
        let old = std::mem::replace(&mut column[u], new);
        if old == new {
            return;
        }
        match (old == NONE, new == NONE) {
            (true, false) => self.pending += 1,
            (false, true) => self.pending -= 1,
            _ => {}
        }
        if new != NONE {
            self.heap.push(Reverse((new, key(user, segment))));
        }
        if self.heap.len() > 2 * self.pending + 4096 {
            self.compact();
        }
    }

    /// Pending deadlines.
    pub fn len(&self) -> usize {
        self.pending
    }

    /// The earliest pending deadline.
    pub fn next(&mut self) -> Option<Millis> {
        while let Some(&Reverse((t, k))) = self.heap.peek() {
            if self.get((k >> 32) as u32, k as u32) == t {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the earliest deadline at or before `until`:
    /// `(instant, user, segment)`.
    pub fn pop_due(&mut self, until: Millis) -> Option<(Millis, u32, u32)> {
        let t = self.next().filter(|t| *t <= until)?;
        let Reverse((_, k)) = self.heap.pop()?;
        let (user, segment) = ((k >> 32) as u32, k as u32);
        self.current[segment as usize][user as usize] = NONE;
        self.pending -= 1;
        Some((t, user, segment))
    }

    /// Clears every deadline of a segment.
    pub fn drop_segment(&mut self, segment: u32) {
        if let Some(column) = self.current.get_mut(segment as usize) {
            self.pending -= column.iter().filter(|t| **t != NONE).count();
            *column = Vec::new();
        }
    }

    /// Every pending deadline, as `(user, segment) → instant`.
    pub fn iter(&self) -> impl Iterator<Item = ((u32, u32), Millis)> + '_ {
        self.current.iter().enumerate().flat_map(|(s, column)| {
            column
                .iter()
                .enumerate()
                .filter(|(_, t)| **t != NONE)
                .map(move |(u, t)| ((u as u32, s as u32), *t))
        })
    }

    fn compact(&mut self) {
        self.heap = self
            .iter()
            .map(|((u, s), t)| Reverse((t, key(u, s))))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Against a model: after any sequence of sets, popping yields every
        /// pending deadline once, in order of instant, each with its latest value.
        #[test]
        fn pops_the_latest_deadlines_in_order(ops in prop::collection::vec((0u32..20, 0u32..3, prop::option::of(0i64..1000)), 0..400)) {
            let mut d = Deadlines::default();
            let mut model = BTreeMap::new();
            for (u, s, t) in ops {
                d.set(u, s, t);
                match t {
                    Some(t) => { model.insert((u, s), t); }
                    None => { model.remove(&(u, s)); }
                }
            }
            prop_assert_eq!(d.len(), model.len());
            let mut popped = Vec::new();
            while let Some((t, u, s)) = d.pop_due(i64::MAX) {
                popped.push((t, u, s));
            }
            prop_assert!(popped.windows(2).all(|w| w[0].0 <= w[1].0));
            let got: BTreeMap<(u32, u32), i64> = popped.iter().map(|(t, u, s)| ((*u, *s), *t)).collect();
            prop_assert_eq!(got, model);
            prop_assert_eq!(d.len(), 0);
        }
    }

    #[test]
    fn only_due_deadlines_pop() {
        let mut d = Deadlines::default();
        d.set(1, 0, Some(50));
        d.set(2, 0, Some(10));
        assert_eq!(d.pop_due(9), None);
        assert_eq!(d.pop_due(10), Some((10, 2, 0)));
        assert_eq!(d.next(), Some(50));
        d.set(1, 0, None);
        assert_eq!(d.next(), None);
    }
}
