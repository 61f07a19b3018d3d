//! When does a rule's result change with no new event? (ARCHITECTURE
//! invariant 3: exact time transitions, no polling.)
//!
//! A result can only change when a leaf's value changes, and with no new
//! event a leaf's value changes only at known instants:
//! - an event leaves a window `within: w` at `ts + w` (the window is (t − w, t]);
//! - an event dated after `now` starts counting at its `ts`;
//! - `seconds_since_*` grows continuously, so a comparison flips where it
//!   crosses the operand's thresholds (`base + x·1000`, give or take a
//!   millisecond of float rounding, which the candidates cover).
//!
//! [`next_change`] collects those candidate instants and evaluates the rule at
//! each, in order, with the one evaluator: the first instant where the result
//! differs from the result at `now` is exact, not an estimate.

use super::ast::*;
use super::eval::{evaluate, Facts, SegmentRef, MAX_REF_DEPTH};
use crate::time::{Millis, MAX_MILLIS};

/// Most candidate instants examined for one (user, rule); past this the
/// earliest candidate is returned, which may be a spurious wake-up but is
/// never late.
pub const MAX_CANDIDATES: usize = 4096;

/// The earliest instant after `facts.now` at which the rule's result differs
/// from its result at `facts.now`, assuming no new event arrives. `None` when
/// it never changes on its own.
pub fn next_change(rule: &Rule, facts: &Facts<'_>) -> Option<Millis> {
    next_change_from(rule, facts, evaluate(rule, facts))
}

/// [`next_change`] for a caller that already evaluated the rule at
/// `facts.now` (`now_result`), saving one evaluation on the hot path.
pub fn next_change_from(rule: &Rule, facts: &Facts<'_>, now_result: bool) -> Option<Millis> {
    let mut candidates = Vec::new();
    collect(rule, facts, &mut candidates, 0, &mut Default::default());
    candidates.retain(|t| *t > facts.now);
    if candidates.is_empty() {
        return None;
    }
    candidates.sort_unstable();
    candidates.dedup();
    let mut later = Facts {
        attributes: facts.attributes,
        events: facts.events,
        segments: facts.segments,
        now: facts.now,
    };
    for (i, &t) in candidates.iter().enumerate() {
        if i >= MAX_CANDIDATES {
            return Some(t);
        }
        later.now = t;
        if evaluate(rule, &later) != now_result {
            return Some(t);
        }
    }
    None
}

/// Candidate instants of every leaf the rule reaches; `seen` holds the
/// referenced segments already visited (each is visited once).
fn collect<'r>(
    rule: &'r Rule,
    facts: &Facts<'r>,
    out: &mut Vec<Millis>,
    depth: usize,
    seen: &mut std::collections::HashSet<&'r str>,
) {
    match rule {
        Rule::All(c) | Rule::Any(c) => c.iter().for_each(|r| collect(r, facts, out, depth, seen)),
        Rule::Not(r) => collect(r, facts, out, depth, seen),
        Rule::Leaf(Leaf {
            source: Source::Attribute(_),
            ..
        }) => {}
        Rule::Leaf(Leaf {
            source: Source::Aggregate(a),
            operand,
            ..
        }) => aggregate_instants(a, operand, facts, out),
        Rule::Segment(id) => {
            if !seen.insert(id) {
                return;
            }
            if let Some(SegmentRef::Dynamic(r)) = facts.segments.segment(id) {
                if depth < MAX_REF_DEPTH {
                    collect(r, facts, out, depth + 1, seen);
                }
            }
        }
    }
}

fn push(out: &mut Vec<Millis>, t: Option<Millis>) {
    if let Some(t) = t.filter(|t| (0..=MAX_MILLIS).contains(t)) {
        out.push(t);
    }
}

fn aggregate_instants(a: &Aggregate, operand: &Operand, facts: &Facts<'_>, out: &mut Vec<Millis>) {
    // Events matching the aggregate's name (filters do not depend on time).
    let events = facts.events.iter().filter(|e| e.name == a.event);
    let mut bases = Vec::new();
    for e in events {
        if e.timestamp > facts.now {
            push(out, Some(e.timestamp));
        }
        if let Some(w) = a.within {
            push(out, e.timestamp.checked_add(w));
        }
        bases.push(e.timestamp);
    }
    if matches!(a.func, AggFn::SecondsSinceLast | AggFn::SecondsSinceFirst) {
        let thresholds: Vec<f64> = match operand {
            Operand::Scalar(Scalar::Num(x)) => vec![*x],
            Operand::List(items) => items
                .iter()
                .filter_map(|s| {
                    if let Scalar::Num(x) = s {
                        Some(*x)
                    } else {
                        None
                    }
                })
                .collect(),
            Operand::Range(Scalar::Num(lo), Scalar::Num(hi)) => vec![*lo, *hi],
            _ => Vec::new(),
        };
        // The latest or earliest matching event may be any of them once the
        // window and the future are accounted for: every base is a candidate.
        for base in bases {
            for x in &thresholds {
                let ms = (x * 1000.0).floor();
                if ms.is_finite() && ms.abs() < 1e15 {
                    for d in -2..=2 {
                        push(out, base.checked_add(ms as i64 + d));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{parse, EventFact, NoSegments};
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    const DAY: Millis = 86_400_000;
    const NOW: Millis = 1_000 * DAY;

    fn facts<'a>(
        attrs: &'a Map<String, Value>,
        events: &'a [EventFact<'a>],
        now: Millis,
    ) -> Facts<'a> {
        Facts {
            attributes: attrs,
            events,
            segments: &NoSegments,
            now,
        }
    }

    fn order(ts: Millis) -> EventFact<'static> {
        EventFact {
            name: "order_placed",
            timestamp: ts,
            properties: None,
        }
    }

    #[test]
    fn dormant_exactly_fourteen_days_after_the_last_order() {
        let rule =
            parse(&json!({"field": "seconds_since_last_order", "op": "gte", "value": 1_209_600}))
                .unwrap_or_else(|e| unreachable!("{e}"));
        let attrs = Map::new();
        let events = [order(NOW - 3 * DAY), order(NOW - DAY)];
        let next = next_change(&rule, &facts(&attrs, &events, NOW));
        assert_eq!(next, Some(NOW - DAY + 14 * DAY));
    }

    #[test]
    fn power_user_leaves_when_an_order_ages_out_of_the_window() {
        let rule = parse(&json!({"field": "order_count_last_23_days", "op": "gte", "value": 2}))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let attrs = Map::new();
        let events = [
            order(NOW - 20 * DAY),
            order(NOW - 10 * DAY),
            order(NOW - 5 * DAY),
        ];
        // 3 orders now; the oldest leaves at -20d + 23d = now + 3d (2 left: still in),
        // the next at -10d + 23d = now + 13d (1 left: out).
        assert_eq!(
            next_change(&rule, &facts(&attrs, &events, NOW)),
            Some(NOW + 13 * DAY)
        );
    }

    #[test]
    fn attribute_rules_never_change_by_themselves() {
        let rule = parse(&json!({"field": "age", "op": "gte", "value": 18}))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let attrs = json!({"age": 20}).as_object().cloned().unwrap_or_default();
        assert_eq!(next_change(&rule, &facts(&attrs, &[], NOW)), None);
    }

    #[test]
    fn a_future_dated_event_counts_from_its_timestamp() {
        let rule = parse(&json!({"event": "LOGIN", "op": "gte", "value": 1}))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let attrs = Map::new();
        let events = [EventFact {
            name: "LOGIN",
            timestamp: NOW + 500,
            properties: None,
        }];
        assert_eq!(
            next_change(&rule, &facts(&attrs, &events, NOW)),
            Some(NOW + 500)
        );
    }

    fn rule_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            (
                prop::sample::select(vec![None, Some("1d"), Some("3d"), Some("90s")]),
                prop::sample::select(vec!["gte", "lt", "eq", "neq"]),
                0i64..4
            )
                .prop_map(|(w, op, v)| {
                    let mut n = json!({"event": "E", "op": op, "value": v});
                    if let Some(w) = w {
                        n["within"] = json!(w);
                    }
                    n
                }),
            (
                prop::sample::select(vec!["seconds_since_last", "seconds_since_first"]),
                prop::sample::select(vec!["gte", "gt", "lt", "lte", "eq", "between"]),
                prop::sample::select(vec![0.5, 60.0, 86_400.0, 129_600.25, 172_800.0]),
                prop::sample::select(vec![None, Some("2d")])
            )
                .prop_map(|(agg, op, v, w)| {
                    let value = if op == "between" {
                        json!([v, v * 2.0])
                    } else {
                        json!(v)
                    };
                    let mut n = json!({"event": "E", "agg": agg, "op": op, "value": value});
                    if let Some(w) = w {
                        n["within"] = json!(w);
                    }
                    n
                }),
            Just(json!({"field": "age", "op": "gte", "value": 30})),
        ];
        leaf.prop_recursive(2, 6, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3)
                    .prop_map(|c| json!({"operator": "AND", "conditions": c})),
                prop::collection::vec(inner.clone(), 1..3)
                    .prop_map(|c| json!({"operator": "OR", "conditions": c})),
                inner.prop_map(|r| json!({"not": r})),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Nothing changes strictly before the computed instant, and the result
        /// does change at it; with `None`, nothing changes at any probed instant.
        #[test]
        fn next_change_is_exact(
            rule in rule_strategy(),
            offsets in prop::collection::vec(-4 * DAY..DAY, 0..6),
            age in 20i64..40,
            probes in prop::collection::vec(1i64..6 * DAY, 40),
        ) {
            let Ok(rule) = parse(&rule) else { return Ok(()) };
            let attrs = json!({"age": age}).as_object().cloned().unwrap_or_default();
            let mut events: Vec<EventFact<'_>> = offsets.iter().map(|o| EventFact { name: "E", timestamp: NOW + o, properties: None }).collect();
            events.sort_by_key(|e| e.timestamp);
            let at = |t: Millis| evaluate(&rule, &facts(&attrs, &events, t));
            let now_result = at(NOW);
            let next = next_change(&rule, &facts(&attrs, &events, NOW));
            // Probe random instants plus every millisecond around each event,
            // window edge and day boundary.
            let mut instants: Vec<Millis> = probes.iter().map(|p| NOW + p).collect();
            for e in &events {
                for base in [e.timestamp, e.timestamp + DAY, e.timestamp + 2 * DAY, e.timestamp + 3 * DAY, e.timestamp + 90_000] {
                    instants.extend((-3..=3).map(|d| base + d));
                }
            }
            for t in instants.into_iter().filter(|t| *t > NOW) {
                if next.is_none_or(|n| t < n) {
                    prop_assert_eq!(at(t), now_result, "changed at {} before the computed {:?}", t - NOW, next.map(|n| n - NOW));
                }
            }
            if let Some(n) = next {
                prop_assert!(n > NOW);
                prop_assert_ne!(at(n), now_result, "no change at the computed instant {}", n - NOW);
            }
        }
    }
}
