//! The typed rule tree every input format parses into.

use crate::time::Millis;

/// A rule: a boolean function of one user's attributes, events and static
/// memberships, at an instant `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// True when every child is (true when empty).
    All(Vec<Rule>),
    /// True when any child is (false when empty).
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Leaf(Leaf),
    /// Membership of another segment, by id.
    Segment(String),
}

/// `source op operand`, e.g. `age gte 25` or `count(LOGIN, 30d) gte 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub source: Source,
    pub op: Op,
    pub operand: Operand,
}

/// Where a leaf's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A user attribute (JSON value; `null` counts as missing).
    Attribute(String),
    /// An aggregate over the user's events.
    Aggregate(Aggregate),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub event: String,
    /// Conditions on the event's properties; all must hold.
    pub filters: Vec<PropertyFilter>,
    /// Only events in (now − within, now]; `None` = all events up to now.
    pub within: Option<Millis>,
    pub func: AggFn,
    /// The built-in field this aggregate was written as, if any (for explain).
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PropertyFilter {
    pub property: String,
    pub op: Op,
    pub operand: Operand,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AggFn {
    /// Number of matching events (0 when none).
    Count,
    /// Sum of a numeric property (0 when none; non-numeric values skipped).
    Sum(String),
    /// Mean of a numeric property (missing when no numeric value).
    Avg(String),
    Min(String),
    Max(String),
    /// Seconds from the latest matching event to now (missing when none).
    SecondsSinceLast,
    /// Seconds from the earliest matching event to now (missing when none).
    SecondsSinceFirst,
    /// A property of the latest matching event (e.g. the city of the last order).
    LastValue(String),
    /// `true` when there is no matching event (e.g. `is_new_user`).
    NoneYet,
}

impl AggFn {
    pub fn name(&self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum(_) => "sum",
            AggFn::Avg(_) => "avg",
            AggFn::Min(_) => "min",
            AggFn::Max(_) => "max",
            AggFn::SecondsSinceLast => "seconds_since_last",
            AggFn::SecondsSinceFirst => "seconds_since_first",
            AggFn::LastValue(_) => "last_value",
            AggFn::NoneYet => "none_yet",
        }
    }

    pub fn property(&self) -> Option<&str> {
        match self {
            AggFn::Sum(p) | AggFn::Avg(p) | AggFn::Min(p) | AggFn::Max(p) | AggFn::LastValue(p) => {
                Some(p)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Like,
    NotLike,
    Contains,
    StartsWith,
    EndsWith,
    Exists,
    NotExists,
    Between,
    VersionEq,
    VersionGt,
    VersionGte,
    VersionLt,
    VersionLte,
}

impl Op {
    pub const ALL: [Op; 21] = [
        Op::Eq,
        Op::Neq,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::In,
        Op::NotIn,
        Op::Like,
        Op::NotLike,
        Op::Contains,
        Op::StartsWith,
        Op::EndsWith,
        Op::Exists,
        Op::NotExists,
        Op::Between,
        Op::VersionEq,
        Op::VersionGt,
        Op::VersionGte,
        Op::VersionLt,
        Op::VersionLte,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Like => "like",
            Op::NotLike => "not_like",
            Op::Contains => "contains",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::Exists => "exists",
            Op::NotExists => "not_exists",
            Op::Between => "between",
            Op::VersionEq => "version_eq",
            Op::VersionGt => "version_gt",
            Op::VersionGte => "version_gte",
            Op::VersionLt => "version_lt",
            Op::VersionLte => "version_lte",
        }
    }

    pub fn parse(name: &str) -> Option<Op> {
        match name {
            "ne" | "!=" => Some(Op::Neq),
            "==" | "=" => Some(Op::Eq),
            ">" => Some(Op::Gt),
            ">=" => Some(Op::Gte),
            "<" => Some(Op::Lt),
            "<=" => Some(Op::Lte),
            _ => Op::ALL.into_iter().find(|op| op.name() == name),
        }
    }
}

/// A comparison value, checked against its operator when parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `exists` / `not_exists`.
    None,
    Scalar(Scalar),
    /// `in` / `not_in`: non-empty, at most [`super::MAX_LIST`] items.
    List(Vec<Scalar>),
    /// `between`: both ends included, same type, low <= high.
    Range(Scalar, Scalar),
    /// `version_*`: a parsed version.
    Version(super::version::Version),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Num(f64),
    Str(String),
    Bool(bool),
}

impl Scalar {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Scalar::Num(n) => {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, |n| {
                    // Integral values print as integers (25, not 25.0).
                    if n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    {
                        serde_json::Value::from(n.as_f64().unwrap_or_default() as i64)
                    } else {
                        serde_json::Value::Number(n)
                    }
                })
            }
            Scalar::Str(s) => serde_json::Value::String(s.clone()),
            Scalar::Bool(b) => serde_json::Value::Bool(*b),
        }
    }
}

impl Operand {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Operand::None => serde_json::Value::Null,
            Operand::Scalar(s) => s.to_json(),
            Operand::List(_) | Operand::Range(..) => serde_json::Value::Array(items_of(self)),
            Operand::Version(v) => serde_json::Value::String(v.to_string()),
        }
    }
}

fn items_of(operand: &Operand) -> Vec<serde_json::Value> {
    match operand {
        Operand::List(items) => items.iter().map(Scalar::to_json).collect(),
        Operand::Range(lo, hi) => vec![lo.to_json(), hi.to_json()],
        _ => Vec::new(),
    }
}

impl Rule {
    /// How many nodes the rule has (logic, leaves and references).
    pub fn node_count(&self) -> usize {
        let mut n = 0;
        self.walk(&mut |_| n += 1);
        n
    }

    /// Ids of the segments this rule refers to directly.
    pub fn references(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |r| {
            if let Rule::Segment(id) = r {
                out.push(id.as_str());
            }
        });
        out
    }

    /// Names of the events this rule reads (what a new event can change).
    pub fn event_names(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |r| {
            if let Rule::Leaf(Leaf {
                source: Source::Aggregate(a),
                ..
            }) = r
            {
                if !out.contains(&a.event.as_str()) {
                    out.push(a.event.as_str());
                }
            }
        });
        out
    }

    /// Names of the attributes this rule reads (what an attribute write can change).
    pub fn attribute_names(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |r| {
            if let Rule::Leaf(Leaf {
                source: Source::Attribute(a),
                ..
            }) = r
            {
                if !out.contains(&a.as_str()) {
                    out.push(a.as_str());
                }
            }
        });
        out
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Rule)) {
        f(self);
        match self {
            Rule::All(c) | Rule::Any(c) => c.iter().for_each(|r| r.walk(f)),
            Rule::Not(r) => r.walk(f),
            Rule::Leaf(_) | Rule::Segment(_) => {}
        }
    }
}
