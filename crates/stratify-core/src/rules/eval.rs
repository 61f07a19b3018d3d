//! In-memory evaluation and explain. Both use [`leaf_value`] and [`test`],
//! the single definition of what a leaf means; the SQL compiler mirrors them
//! and a differential test keeps the two equal.

use super::ast::*;
use super::like::like;
use super::version::Version;
use crate::time::Millis;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;

/// Deepest chain of segment references followed (cycles and chains longer
/// than [`super::MAX_REF_CHAIN`] are refused when segments are saved; this is
/// the backstop).
pub(crate) const MAX_REF_DEPTH: usize = 16;

/// Results of the referenced dynamic segments already evaluated for this user
/// at this instant: each is computed once per evaluation however often the
/// reference graph reaches it, so the work is the size of the graph, not of
/// its expansion (a chain of `OR`s of references is not exponential).
type Memo = std::collections::HashMap<String, bool>;

/// Named values a rule reads: a user's attributes, an event's properties.
/// A JSON object is one; the live engine keeps a more compact one.
pub trait Fields {
    fn field(&self, name: &str) -> Option<&Value>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// One event as the evaluator sees it.
#[derive(Clone, Copy)]
pub struct EventFact<'a> {
    pub name: &'a str,
    pub timestamp: Millis,
    pub properties: Option<&'a dyn Fields>,
}

impl std::fmt::Debug for EventFact<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFact")
            .field("name", &self.name)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Segments a rule may refer to.
pub trait SegmentLookup {
    fn segment(&self, id: &str) -> Option<SegmentRef<'_>>;
}

pub enum SegmentRef<'a> {
    /// A static segment: whether the user is a member.
    Static(bool),
    /// A dynamic segment's rule.
    Dynamic(&'a Rule),
}

/// No segments at all.
pub struct NoSegments;

impl SegmentLookup for NoSegments {
    fn segment(&self, _: &str) -> Option<SegmentRef<'_>> {
        None
    }
}

/// What is known about one user at an instant.
pub struct Facts<'a> {
    pub attributes: &'a dyn Fields,
    /// The user's events in log order of time: sorted by (timestamp, seq).
    /// Events after `now` are ignored.
    pub events: &'a [EventFact<'a>],
    pub segments: &'a dyn SegmentLookup,
    pub now: Millis,
}

/// A value a leaf saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen<'a> {
    Missing,
    Json(&'a Value),
    Num(f64),
    Bool(bool),
}

impl Seen<'_> {
    pub fn to_json(&self) -> Value {
        match self {
            Seen::Missing => Value::Null,
            Seen::Json(v) => (*v).clone(),
            Seen::Num(n) => Scalar::Num(*n).to_json(),
            Seen::Bool(b) => Value::Bool(*b),
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Seen::Num(n) => Some(*n),
            Seen::Json(Value::Number(n)) => n.as_f64(),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Seen::Json(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn bool(&self) -> Option<bool> {
        match self {
            Seen::Bool(b) | Seen::Json(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn is_scalar(&self) -> bool {
        self.num().is_some() || self.str().is_some() || self.bool().is_some()
    }
}

fn eq(seen: &Seen<'_>, s: &Scalar) -> bool {
    match s {
        Scalar::Num(n) => seen.num() == Some(*n),
        Scalar::Str(t) => seen.str() == Some(t.as_str()),
        Scalar::Bool(b) => seen.bool() == Some(*b),
    }
}

fn order(seen: &Seen<'_>, s: &Scalar) -> Option<Ordering> {
    match s {
        Scalar::Num(n) => seen.num().and_then(|v| v.partial_cmp(n)),
        Scalar::Str(t) => seen.str().map(|v| v.as_bytes().cmp(t.as_bytes())),
        Scalar::Bool(_) => None,
    }
}

/// Whether `seen op operand` holds. Missing values are false for every
/// operator but `not_exists` (and `exists` is false for them), types are
/// strict (a number never equals a string), and `neq`/`not_in` hold only for
/// present scalar values.
pub fn test(op: Op, seen: &Seen<'_>, operand: &Operand) -> bool {
    if matches!(seen, Seen::Missing) {
        return op == Op::NotExists;
    }
    let scalar = match operand {
        Operand::Scalar(s) => Some(s),
        _ => None,
    };
    match (op, operand) {
        (Op::Exists, _) => true,
        (Op::NotExists, _) => false,
        (Op::Eq, _) => scalar.is_some_and(|s| eq(seen, s)),
        (Op::Neq, _) => seen.is_scalar() && scalar.is_some_and(|s| !eq(seen, s)),
        (Op::Gt, _) => scalar.and_then(|s| order(seen, s)) == Some(Ordering::Greater),
        (Op::Gte, _) => matches!(
            scalar.and_then(|s| order(seen, s)),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        (Op::Lt, _) => scalar.and_then(|s| order(seen, s)) == Some(Ordering::Less),
        (Op::Lte, _) => matches!(
            scalar.and_then(|s| order(seen, s)),
            Some(Ordering::Less | Ordering::Equal)
        ),
        (Op::In, Operand::List(items)) => items.iter().any(|s| eq(seen, s)),
        (Op::NotIn, Operand::List(items)) => seen.is_scalar() && !items.iter().any(|s| eq(seen, s)),
        (Op::Like, Operand::Scalar(Scalar::Str(p))) => seen.str().is_some_and(|v| like(v, p)),
        (Op::NotLike, Operand::Scalar(Scalar::Str(p))) => seen.str().is_some_and(|v| !like(v, p)),
        (Op::Contains, Operand::Scalar(s)) => match (seen, s) {
            (Seen::Json(Value::String(v)), Scalar::Str(t)) => v.contains(t.as_str()),
            (Seen::Json(Value::Array(items)), s) => items.iter().any(|i| eq(&Seen::Json(i), s)),
            _ => false,
        },
        (Op::StartsWith, Operand::Scalar(Scalar::Str(p))) => {
            seen.str().is_some_and(|v| v.starts_with(p.as_str()))
        }
        (Op::EndsWith, Operand::Scalar(Scalar::Str(p))) => {
            seen.str().is_some_and(|v| v.ends_with(p.as_str()))
        }
        (Op::Between, Operand::Range(lo, hi)) => {
            matches!(order(seen, lo), Some(Ordering::Greater | Ordering::Equal))
                && matches!(order(seen, hi), Some(Ordering::Less | Ordering::Equal))
        }
        (
            Op::VersionEq | Op::VersionGt | Op::VersionGte | Op::VersionLt | Op::VersionLte,
            Operand::Version(want),
        ) => {
            let Some(have) = seen.str().and_then(Version::parse) else {
                return false;
            };
            let o = have.cmp(want);
            match op {
                Op::VersionEq => o == Ordering::Equal,
                Op::VersionGt => o == Ordering::Greater,
                Op::VersionGte => o != Ordering::Less,
                Op::VersionLt => o == Ordering::Less,
                _ => o != Ordering::Greater,
            }
        }
        _ => false,
    }
}

/// [`test()`] specialised to a present numeric value, decided once per leaf:
/// `NumTest::new(op, operand).test(x) == test(op, &Seen::Num(x), operand)`
/// for every finite `x` (a property test checks it). Used by the columnar
/// index, which tests millions of aggregate values per query.
#[derive(Debug, Clone, PartialEq)]
pub enum NumTest {
    Const(bool),
    Cmp(Op, f64),
    Range(f64, f64),
    In(Vec<f64>, bool),
}

impl NumTest {
    pub fn new(op: Op, operand: &Operand) -> NumTest {
        let num = |s: &Scalar| match s {
            Scalar::Num(n) => Some(*n),
            _ => None,
        };
        match (op, operand) {
            (Op::Exists, _) => NumTest::Const(true),
            (Op::Eq | Op::Gt | Op::Gte | Op::Lt | Op::Lte, Operand::Scalar(s)) => match num(s) {
                Some(n) => NumTest::Cmp(op, n),
                None => NumTest::Const(false),
            },
            (Op::Neq, Operand::Scalar(s)) => match num(s) {
                Some(n) => NumTest::Cmp(Op::Neq, n),
                None => NumTest::Const(true),
            },
            (Op::In | Op::NotIn, Operand::List(items)) => {
                NumTest::In(items.iter().filter_map(num).collect(), op == Op::NotIn)
            }
            (Op::Between, Operand::Range(Scalar::Num(lo), Scalar::Num(hi))) => {
                NumTest::Range(*lo, *hi)
            }
            _ => NumTest::Const(false),
        }
    }

    /// Whether every threshold is below `limit`: then the answer is the same
    /// for every `x >= limit` (so a count may saturate there).
    pub fn below(&self, limit: f64) -> bool {
        match self {
            NumTest::Const(_) => true,
            NumTest::Cmp(_, n) => *n < limit,
            NumTest::Range(_, hi) => *hi < limit,
            NumTest::In(items, _) => items.iter().all(|x| *x < limit),
        }
    }

    #[inline]
    pub fn test(&self, x: f64) -> bool {
        match self {
            NumTest::Const(b) => *b,
            NumTest::Cmp(Op::Eq, n) => x == *n,
            NumTest::Cmp(Op::Neq, n) => x != *n,
            NumTest::Cmp(Op::Gt, n) => x > *n,
            NumTest::Cmp(Op::Gte, n) => x >= *n,
            NumTest::Cmp(Op::Lt, n) => x < *n,
            NumTest::Cmp(Op::Lte, n) => x <= *n,
            NumTest::Cmp(..) => false,
            NumTest::Range(lo, hi) => *lo <= x && x <= *hi,
            NumTest::In(items, negate) => items.contains(&x) != *negate,
        }
    }
}

/// Neumaier-compensated sum, the algorithm SQLite's `sum()`/`total()` use,
/// so in-memory and SQL sums agree to the bit over the same ordered values.
#[derive(Default)]
struct Sum {
    sum: f64,
    carry: f64,
}

impl Sum {
    fn add(&mut self, x: f64) {
        let s = self.sum + x;
        if self.sum.abs() > x.abs() {
            self.carry += (self.sum - s) + x;
        } else {
            self.carry += (x - s) + self.sum;
        }
        self.sum = s;
    }

    fn value(&self) -> f64 {
        self.sum + self.carry
    }
}

fn matches_event(a: &Aggregate, e: &EventFact<'_>, now: Millis) -> bool {
    e.name == a.event
        && e.timestamp <= now
        && a.within.is_none_or(|w| e.timestamp > now - w)
        && a.filters.iter().all(|f| {
            let v = e
                .properties
                .and_then(|p| p.field(&f.property))
                .filter(|v| !v.is_null());
            test(f.op, &v.map_or(Seen::Missing, Seen::Json), &f.operand)
        })
}

/// The value an aggregate takes for these facts.
pub fn aggregate<'a>(a: &Aggregate, facts: &Facts<'a>) -> Seen<'a> {
    let now = facts.now;
    let mut matching = facts.events.iter().filter(|e| matches_event(a, e, now));
    let numbers = |p: &str, e: &EventFact<'a>| {
        e.properties
            .and_then(|m| m.field(p))
            .and_then(Value::as_f64)
    };
    match &a.func {
        AggFn::Count => Seen::Num(matching.count() as f64),
        AggFn::NoneYet => Seen::Bool(matching.next().is_none()),
        AggFn::Sum(p) => {
            let mut sum = Sum::default();
            matching
                .filter_map(|e| numbers(p, e))
                .for_each(|x| sum.add(x));
            Seen::Num(sum.value())
        }
        AggFn::Avg(p) => {
            let (mut sum, mut n) = (Sum::default(), 0u64);
            matching.filter_map(|e| numbers(p, e)).for_each(|x| {
                sum.add(x);
                n += 1;
            });
            if n == 0 {
                Seen::Missing
            } else {
                Seen::Num(sum.value() / n as f64)
            }
        }
        AggFn::Min(p) => matching
            .filter_map(|e| numbers(p, e))
            .reduce(f64::min)
            .map_or(Seen::Missing, Seen::Num),
        AggFn::Max(p) => matching
            .filter_map(|e| numbers(p, e))
            .reduce(f64::max)
            .map_or(Seen::Missing, Seen::Num),
        AggFn::SecondsSinceLast => matching.next_back().map_or(Seen::Missing, |e| {
            Seen::Num((now - e.timestamp) as f64 / 1000.0)
        }),
        AggFn::SecondsSinceFirst => matching.next().map_or(Seen::Missing, |e| {
            Seen::Num((now - e.timestamp) as f64 / 1000.0)
        }),
        AggFn::LastValue(p) => matching
            .next_back()
            .and_then(|e| e.properties.and_then(|m| m.field(p)))
            .filter(|v| !v.is_null())
            .map_or(Seen::Missing, Seen::Json),
    }
}

/// The value a leaf reads.
pub fn leaf_value<'a>(leaf: &Leaf, facts: &Facts<'a>) -> Seen<'a> {
    match &leaf.source {
        Source::Attribute(name) => facts
            .attributes
            .field(name)
            .filter(|v| !v.is_null())
            .map_or(Seen::Missing, Seen::Json),
        Source::Aggregate(a) => aggregate(a, facts),
    }
}

/// Evaluates a rule (short-circuiting).
pub fn evaluate(rule: &Rule, facts: &Facts<'_>) -> bool {
    eval_at(rule, facts, 0, &mut Memo::new())
}

fn eval_at(rule: &Rule, facts: &Facts<'_>, depth: usize, memo: &mut Memo) -> bool {
    match rule {
        Rule::All(c) => c.iter().all(|r| eval_at(r, facts, depth, memo)),
        Rule::Any(c) => c.iter().any(|r| eval_at(r, facts, depth, memo)),
        Rule::Not(r) => !eval_at(r, facts, depth, memo),
        Rule::Leaf(leaf) => test(leaf.op, &leaf_value(leaf, facts), &leaf.operand),
        Rule::Segment(id) => match facts.segments.segment(id) {
            Some(SegmentRef::Static(member)) => member,
            Some(SegmentRef::Dynamic(r)) if depth < MAX_REF_DEPTH => {
                if let Some(&known) = memo.get(id) {
                    return known;
                }
                let result = eval_at(r, facts, depth + 1, memo);
                memo.insert(id.clone(), result);
                result
            }
            _ => false,
        },
    }
}

/// Evaluates every node (no short-circuit) and returns the result with a
/// tree that shows, node by node, the result and the values seen. A segment
/// referenced more than once is explained where it first appears; later
/// references show its result with `"explained": "above"`.
pub fn explain(rule: &Rule, facts: &Facts<'_>) -> (bool, Value) {
    explain_at(rule, facts, 0, &mut Memo::new())
}

fn explain_at(rule: &Rule, facts: &Facts<'_>, depth: usize, memo: &mut Memo) -> (bool, Value) {
    match rule {
        Rule::All(children) | Rule::Any(children) => {
            let all = matches!(rule, Rule::All(_));
            let parts: Vec<(bool, Value)> = children
                .iter()
                .map(|c| explain_at(c, facts, depth, memo))
                .collect();
            let result = if all {
                parts.iter().all(|p| p.0)
            } else {
                parts.iter().any(|p| p.0)
            };
            let node = json!({"type": if all {"and"} else {"or"}, "result": result,
                "children": parts.into_iter().map(|p| p.1).collect::<Vec<_>>()});
            (result, node)
        }
        Rule::Not(inner) => {
            let (r, child) = explain_at(inner, facts, depth, memo);
            (!r, json!({"type": "not", "result": !r, "child": child}))
        }
        Rule::Leaf(leaf) => {
            let seen = leaf_value(leaf, facts);
            let result = test(leaf.op, &seen, &leaf.operand);
            let mut node = describe_source(&leaf.source);
            node.insert("op".into(), json!(leaf.op.name()));
            if !matches!(leaf.operand, Operand::None) {
                node.insert("value".into(), leaf.operand.to_json());
            }
            node.insert("actual".into(), seen.to_json());
            node.insert("missing".into(), json!(matches!(seen, Seen::Missing)));
            node.insert("result".into(), json!(result));
            (result, Value::Object(node))
        }
        Rule::Segment(id) => match facts.segments.segment(id) {
            Some(SegmentRef::Static(member)) => (
                member,
                json!({"type": "segment", "segment_id": id, "kind": "static", "result": member}),
            ),
            Some(SegmentRef::Dynamic(_)) if memo.contains_key(id) => {
                let result = memo[id];
                (
                    result,
                    json!({"type": "segment", "segment_id": id, "kind": "dynamic", "result": result, "explained": "above"}),
                )
            }
            Some(SegmentRef::Dynamic(r)) if depth < MAX_REF_DEPTH => {
                let (result, child) = explain_at(r, facts, depth + 1, memo);
                memo.insert(id.clone(), result);
                (
                    result,
                    json!({"type": "segment", "segment_id": id, "kind": "dynamic", "result": result, "child": child}),
                )
            }
            _ => (
                false,
                json!({"type": "segment", "segment_id": id, "result": false, "note": "unknown segment"}),
            ),
        },
    }
}

fn describe_source(source: &Source) -> Map<String, Value> {
    let mut node = Map::new();
    match source {
        Source::Attribute(name) => {
            node.insert("type".into(), json!("attribute"));
            node.insert("field".into(), json!(name));
        }
        Source::Aggregate(a) => {
            node.insert("type".into(), json!("behavior"));
            if let Some(alias) = &a.alias {
                node.insert("field".into(), json!(alias));
            }
            node.insert("event".into(), json!(a.event));
            node.insert("agg".into(), json!(a.func.name()));
            if let Some(p) = a.func.property() {
                node.insert("property".into(), json!(p));
            }
            if let Some(w) = a.within {
                node.insert("within_seconds".into(), json!(w / 1000));
            }
            if !a.filters.is_empty() {
                let filters: Vec<Value> = a
                    .filters
                    .iter()
                    .map(|f| json!({"field": f.property, "op": f.op.name(), "value": f.operand.to_json()}))
                    .collect();
                node.insert("where".into(), Value::Array(filters));
            }
        }
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse;

    const NOW: Millis = 100 * 86_400_000;
    const DAY: Millis = 86_400_000;

    fn check(rule: Value, attrs: Value, events: &[(&str, Millis, Value)]) -> bool {
        let rule = parse(&rule).unwrap_or_else(|e| unreachable!("{e}"));
        let attrs = attrs.as_object().cloned().unwrap_or_default();
        let facts: Vec<EventFact<'_>> = events
            .iter()
            .map(|(n, t, p)| EventFact {
                name: n,
                timestamp: *t,
                properties: p.as_object().map(|m| m as &dyn Fields),
            })
            .collect();
        evaluate(
            &rule,
            &Facts {
                attributes: &attrs,
                events: &facts,
                segments: &NoSegments,
                now: NOW,
            },
        )
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn num_test_agrees_with_test(
            op in proptest::sample::select(Op::ALL.to_vec()),
            x in (-5i64..5).prop_map(|n| n as f64 / 2.0),
            a in prop_oneof![(-5i64..5).prop_map(|n| Scalar::Num(n as f64 / 2.0)), Just(Scalar::Str("1".into())), any::<bool>().prop_map(Scalar::Bool)],
            b in (-5i64..5).prop_map(|n| n as f64 / 2.0),
        ) {
            let operand = match op {
                Op::Exists | Op::NotExists => Operand::None,
                Op::In | Op::NotIn => Operand::List(vec![a.clone(), Scalar::Num(b)]),
                Op::Between => match &a { Scalar::Num(lo) if *lo <= b => Operand::Range(Scalar::Num(*lo), Scalar::Num(b)), _ => Operand::Range(Scalar::Str("a".into()), Scalar::Str("b".into())) },
                Op::Like | Op::NotLike | Op::StartsWith | Op::EndsWith => Operand::Scalar(Scalar::Str("1%".into())),
                Op::VersionEq | Op::VersionGt | Op::VersionGte | Op::VersionLt | Op::VersionLte => Operand::Version(crate::rules::version::Version { core: [1, 0, 0], pre: vec![] }),
                _ => Operand::Scalar(a.clone()),
            };
            prop_assert_eq!(NumTest::new(op, &operand).test(x), test(op, &Seen::Num(x), &operand), "{:?} {:?} {}", op, operand, x);
        }
    }

    #[test]
    fn missing_fields_are_false_for_every_operator_but_not_exists_and_not_inverts() {
        for op in ["eq", "neq", "gt", "lt", "like", "contains", "starts_with"] {
            assert!(
                !check(
                    json!({"field": "plan", "op": op, "value": "x"}),
                    json!({}),
                    &[]
                ),
                "{op}"
            );
        }
        assert!(!check(
            json!({"field": "plan", "op": "not_in", "value": ["x"]}),
            json!({"plan": null}),
            &[]
        ));
        assert!(check(
            json!({"field": "plan", "op": "not_exists"}),
            json!({}),
            &[]
        ));
        assert!(check(
            json!({"not": {"field": "plan", "op": "neq", "value": "x"}}),
            json!({}),
            &[]
        ));
    }

    #[test]
    fn types_are_strict() {
        assert!(!check(
            json!({"field": "age", "op": "eq", "value": "30"}),
            json!({"age": 30}),
            &[]
        ));
        assert!(!check(
            json!({"field": "age", "op": "gt", "value": "3"}),
            json!({"age": 30}),
            &[]
        ));
        assert!(check(
            json!({"field": "age", "op": "neq", "value": "30"}),
            json!({"age": 30}),
            &[]
        ));
        assert!(check(
            json!({"field": "age", "op": "eq", "value": 30}),
            json!({"age": 30.0}),
            &[]
        ));
        assert!(check(
            json!({"field": "tags", "op": "contains", "value": "vip"}),
            json!({"tags": ["a", "vip"]}),
            &[]
        ));
        assert!(!check(
            json!({"field": "tags", "op": "neq", "value": "vip"}),
            json!({"tags": ["a"]}),
            &[]
        ));
    }

    #[test]
    fn windows_are_half_open_and_future_events_are_ignored() {
        let at = |t: Millis| [("LOGIN", t, Value::Null)];
        let rule = json!({"event": "LOGIN", "within": "1d", "op": "gte", "value": 1});
        assert!(
            !check(rule.clone(), json!({}), &at(NOW - DAY)),
            "the window's start is excluded"
        );
        assert!(check(rule.clone(), json!({}), &at(NOW - DAY + 1)));
        assert!(check(rule.clone(), json!({}), &at(NOW)), "now is included");
        assert!(
            !check(rule, json!({}), &at(NOW + 1)),
            "an event after now does not count yet"
        );
    }

    #[test]
    fn built_in_order_fields() {
        let orders = [
            (
                "order_placed",
                NOW - 20 * DAY,
                json!({"amount": 600, "city": "Pune"}),
            ),
            (
                "order_placed",
                NOW - 15 * DAY,
                json!({"amount": 500.5, "city": "HSR Layout"}),
            ),
        ];
        assert!(check(
            json!({"field": "ltv", "op": "gt", "value": 1100}),
            json!({}),
            &orders
        ));
        assert!(check(
            json!({"field": "total_orders", "op": "eq", "value": 2}),
            json!({}),
            &orders
        ));
        assert!(check(
            json!({"field": "order_count_last_16_days", "op": "eq", "value": 1}),
            json!({}),
            &orders
        ));
        assert!(check(
            json!({"field": "city", "op": "eq", "value": "HSR Layout"}),
            json!({}),
            &orders
        ));
        assert!(check(
            json!({"field": "seconds_since_last_order", "op": "gte", "value": 1_209_600}),
            json!({}),
            &orders
        ));
        assert!(check(
            json!({"field": "is_new_user", "op": "eq", "value": false}),
            json!({}),
            &orders
        ));
        assert!(check(
            json!({"field": "is_new_user", "op": "eq", "value": true}),
            json!({}),
            &[]
        ));
        assert!(!check(
            json!({"field": "seconds_since_last_order", "op": "lt", "value": 10}),
            json!({}),
            &[]
        ));
        assert!(
            check(
                json!({"field": "total_orders", "op": "eq", "value": 0}),
                json!({}),
                &[]
            ),
            "counts over nothing are 0"
        );
    }

    #[test]
    fn explain_shows_each_node_with_the_values_seen() {
        let rule = parse(&json!({"operator": "AND", "conditions": [
            {"field": "age", "op": "between", "value": [25, 34]},
            {"event": "LOGIN", "op": "gte", "value": 1}]}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let attrs = json!({"age": 40}).as_object().cloned().unwrap_or_default();
        let (result, tree) = explain(
            &rule,
            &Facts {
                attributes: &attrs,
                events: &[],
                segments: &NoSegments,
                now: NOW,
            },
        );
        assert!(!result);
        assert_eq!(tree["type"], "and");
        assert_eq!(tree["children"][0]["actual"], 40);
        assert_eq!(tree["children"][0]["result"], false);
        assert_eq!(tree["children"][1]["actual"], 0);
        assert_eq!(tree["children"][1]["event"], "LOGIN");
    }
}
