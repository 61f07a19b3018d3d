//! JSON → [`Rule`], for every input format, with a JSON pointer on each error.

use super::ast::*;
use super::version::Version;
use super::{MAX_DEPTH, MAX_LIST, MAX_NODES, MAX_TEXT, MAX_WITHIN_MS};
use crate::error::pointer_token;
use crate::event::ORDER_PLACED;
use crate::schema::json_type_name;
use crate::ErrorCode;
use crate::ValidationError;
use serde_json::{Map, Value};

/// Parses a rule in any accepted format.
pub fn parse(value: &Value) -> Result<Rule, ValidationError> {
    let mut p = Parser { nodes: 0 };
    p.node(value, "", 0)
}

struct Parser {
    nodes: usize,
}

fn err(code: ErrorCode, message: impl Into<String>, at: &str) -> ValidationError {
    ValidationError::new(code, message).at(if at.is_empty() {
        "/".to_owned()
    } else {
        at.to_owned()
    })
}

fn ptr(base: &str, key: &str) -> String {
    format!("{base}/{}", pointer_token(key))
}

const TREE_KEYS: [&str; 4] = ["operator", "conditions", "not", "segment"];
const RESERVED: [&str; 9] = [
    "operator",
    "conditions",
    "not",
    "field",
    "segment",
    "event",
    "user_filters",
    "event_filters",
    "logic_operator",
];

impl Parser {
    fn node(&mut self, value: &Value, at: &str, depth: usize) -> Result<Rule, ValidationError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(err(
                ErrorCode::RuleTooLarge,
                format!("a rule has at most {MAX_NODES} nodes"),
                at,
            ));
        }
        if depth > MAX_DEPTH {
            return Err(err(
                ErrorCode::RuleTooDeep,
                format!("rules nest at most {MAX_DEPTH} levels"),
                at,
            ));
        }
        let Value::Object(obj) = value else {
            return Err(err(
                ErrorCode::InvalidRule,
                format!("a rule node is an object, got {}", json_type_name(value)),
                at,
            ));
        };
        if obj.contains_key("user_filters") || obj.contains_key("event_filters") {
            return self.duckmart(obj, at);
        }
        if obj.contains_key("operator") || obj.contains_key("conditions") {
            only(obj, &["operator", "conditions"], at)?;
            let op = match obj.get("operator") {
                Some(Value::String(s)) if s.eq_ignore_ascii_case("and") => true,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("or") => false,
                Some(_) => {
                    return Err(err(
                        ErrorCode::InvalidOperator,
                        "operator is \"AND\" or \"OR\"",
                        &ptr(at, "operator"),
                    ))
                }
                None => {
                    return Err(err(
                        ErrorCode::MissingField,
                        "operator is required next to conditions",
                        &ptr(at, "operator"),
                    ))
                }
            };
            let Some(Value::Array(items)) = obj.get("conditions") else {
                return Err(err(
                    ErrorCode::InvalidConditions,
                    "conditions is an array of rule nodes",
                    &ptr(at, "conditions"),
                ));
            };
            let here = ptr(at, "conditions");
            let children = items
                .iter()
                .enumerate()
                .map(|(i, c)| self.node(c, &format!("{here}/{i}"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if op {
                Rule::All(children)
            } else {
                Rule::Any(children)
            });
        }
        if let Some(inner) = obj.get("not") {
            only(obj, &["not"], at)?;
            return Ok(Rule::Not(Box::new(self.node(
                inner,
                &ptr(at, "not"),
                depth + 1,
            )?)));
        }
        if let Some(id) = obj.get("segment") {
            only(obj, &["segment"], at)?;
            return match id {
                Value::String(s) if !s.is_empty() && s.len() <= 128 => Ok(Rule::Segment(s.clone())),
                _ => Err(err(
                    ErrorCode::InvalidSegmentRef,
                    "segment is a segment id",
                    &ptr(at, "segment"),
                )),
            };
        }
        if obj.contains_key("event") {
            return self.behavioral(obj, at);
        }
        if obj.contains_key("field") {
            only(obj, &["field", "op", "value"], at)?;
            let field = text(obj.get("field"), &ptr(at, "field"), "field")?;
            let op = op_of(obj.get("op"), &ptr(at, "op"))?;
            let source = field_source(field, &ptr(at, "field"))?;
            let operand = operand(op, obj.get("value"), &ptr(at, "value"))?;
            return Ok(Rule::Leaf(Leaf {
                source,
                op,
                operand,
            }));
        }
        self.attribute_map(obj, at)
    }

    /// `{"country_code": "US", "is_premium": true}`: every attribute equals its value.
    fn attribute_map(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
    ) -> Result<Rule, ValidationError> {
        if obj.is_empty() {
            return Err(err(
                ErrorCode::InvalidRule,
                "an empty object is not a rule",
                at,
            ));
        }
        let mut leaves = Vec::with_capacity(obj.len());
        for (name, value) in obj {
            let here = ptr(at, name);
            if RESERVED.contains(&name.as_str()) || TREE_KEYS.contains(&name.as_str()) {
                return Err(err(
                    ErrorCode::InvalidRule,
                    format!("'{name}' cannot be used in an attribute map"),
                    &here,
                ));
            }
            self.nodes += 1;
            let operand = operand(Op::Eq, Some(value), &here)?;
            leaves.push(Rule::Leaf(Leaf {
                source: field_source(name, &here)?,
                op: Op::Eq,
                operand,
            }));
        }
        Ok(Rule::All(leaves))
    }

    fn behavioral(&mut self, obj: &Map<String, Value>, at: &str) -> Result<Rule, ValidationError> {
        only(
            obj,
            &["event", "where", "within", "agg", "property", "op", "value"],
            at,
        )?;
        let event = text(obj.get("event"), &ptr(at, "event"), "event")?.to_owned();
        let filters = match obj.get("where") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let here = ptr(at, "where");
                items
                    .iter()
                    .enumerate()
                    .map(|(i, f)| self.property_filter(f, &format!("{here}/{i}")))
                    .collect::<Result<_, _>>()?
            }
            Some(_) => {
                return Err(err(
                    ErrorCode::InvalidWhere,
                    "where is an array of {field, op, value}",
                    &ptr(at, "where"),
                ))
            }
        };
        let within = match obj.get("within") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_within(s).ok_or_else(|| {
                err(
                    ErrorCode::InvalidWindow,
                    "within is Ns, Nm, Nh or Nd (N >= 1, at most 10 years)",
                    &ptr(at, "within"),
                )
            })?),
            Some(_) => {
                return Err(err(
                    ErrorCode::InvalidWindow,
                    "within is a string like \"30d\"",
                    &ptr(at, "within"),
                ))
            }
        };
        let agg = match obj.get("agg") {
            None | Some(Value::Null) => "count",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(err(
                    ErrorCode::InvalidAgg,
                    "agg is a string",
                    &ptr(at, "agg"),
                ))
            }
        };
        let property = || -> Result<String, ValidationError> {
            match obj.get("property") {
                Some(Value::String(p)) if !p.is_empty() && p.len() <= 64 => {
                    json_key(p, &ptr(at, "property")).map(|()| p.clone())
                }
                _ => Err(err(
                    ErrorCode::MissingProperty,
                    format!("agg \"{agg}\" needs \"property\""),
                    &ptr(at, "property"),
                )),
            }
        };
        let func = match agg {
            "count" => AggFn::Count,
            "sum" => AggFn::Sum(property()?),
            "avg" => AggFn::Avg(property()?),
            "min" => AggFn::Min(property()?),
            "max" => AggFn::Max(property()?),
            "seconds_since_last" => AggFn::SecondsSinceLast,
            "seconds_since_first" => AggFn::SecondsSinceFirst,
            other => {
                return Err(err(
                    ErrorCode::InvalidAgg,
                    format!("unknown agg '{other}' (count, sum, avg, min, max, seconds_since_last, seconds_since_first)"),
                    &ptr(at, "agg"),
                ))
            }
        };
        if func.property().is_none() && obj.contains_key("property") {
            return Err(err(
                ErrorCode::UnexpectedProperty,
                format!("agg \"{agg}\" takes no property"),
                &ptr(at, "property"),
            ));
        }
        let op = op_of(obj.get("op"), &ptr(at, "op"))?;
        let operand = operand(op, obj.get("value"), &ptr(at, "value"))?;
        let aggregate = Aggregate {
            event,
            filters,
            within,
            func,
            alias: None,
        };
        Ok(Rule::Leaf(Leaf {
            source: Source::Aggregate(aggregate),
            op,
            operand,
        }))
    }

    fn property_filter(
        &mut self,
        value: &Value,
        at: &str,
    ) -> Result<PropertyFilter, ValidationError> {
        self.nodes += 1;
        let Value::Object(obj) = value else {
            return Err(err(
                ErrorCode::InvalidWhere,
                "a where item is {field, op, value}",
                at,
            ));
        };
        only(obj, &["field", "op", "value"], at)?;
        let property = text(obj.get("field"), &ptr(at, "field"), "field")?.to_owned();
        json_key(&property, &ptr(at, "field"))?;
        let op = op_of(obj.get("op"), &ptr(at, "op"))?;
        let operand = operand(op, obj.get("value"), &ptr(at, "value"))?;
        Ok(PropertyFilter {
            property,
            op,
            operand,
        })
    }

    /// The DuckMart payload: user filters and event-count filters joined by one operator.
    fn duckmart(&mut self, obj: &Map<String, Value>, at: &str) -> Result<Rule, ValidationError> {
        only(
            obj,
            &["user_filters", "event_filters", "logic_operator", "limit"],
            at,
        )?;
        let mut children = Vec::new();
        if let Some(filters) = obj.get("user_filters") {
            let here = ptr(at, "user_filters");
            let Value::Array(items) = filters else {
                return Err(err(
                    ErrorCode::InvalidFilters,
                    "user_filters is an array",
                    &here,
                ));
            };
            for (i, f) in items.iter().enumerate() {
                let fat = format!("{here}/{i}");
                self.nodes += 1;
                let Value::Object(f) = f else {
                    return Err(err(
                        ErrorCode::InvalidFilters,
                        "a user filter is an object",
                        &fat,
                    ));
                };
                only(f, &["field", "operator", "value"], &fat)?;
                let field = text(f.get("field"), &ptr(&fat, "field"), "field")?;
                let op = op_of(f.get("operator"), &ptr(&fat, "operator"))?;
                let operand = operand(op, f.get("value"), &ptr(&fat, "value"))?;
                children.push(Rule::Leaf(Leaf {
                    source: field_source(field, &ptr(&fat, "field"))?,
                    op,
                    operand,
                }));
            }
        }
        if let Some(filters) = obj.get("event_filters") {
            let here = ptr(at, "event_filters");
            let Value::Array(items) = filters else {
                return Err(err(
                    ErrorCode::InvalidFilters,
                    "event_filters is an array",
                    &here,
                ));
            };
            for (i, f) in items.iter().enumerate() {
                let fat = format!("{here}/{i}");
                self.nodes += 1;
                let Value::Object(f) = f else {
                    return Err(err(
                        ErrorCode::InvalidFilters,
                        "an event filter is an object",
                        &fat,
                    ));
                };
                only(
                    f,
                    &["event_name", "operator", "count", "time_range_days"],
                    &fat,
                )?;
                let event =
                    text(f.get("event_name"), &ptr(&fat, "event_name"), "event_name")?.to_owned();
                let op = op_of(f.get("operator"), &ptr(&fat, "operator"))?;
                if !matches!(op, Op::Eq | Op::Neq | Op::Gt | Op::Gte | Op::Lt | Op::Lte) {
                    return Err(err(
                        ErrorCode::InvalidOperator,
                        "event filters compare counts: eq, ne, gt, gte, lt, lte",
                        &ptr(&fat, "operator"),
                    ));
                }
                let count = match f.get("count") {
                    Some(Value::Number(n))
                        if n.as_f64().is_some_and(|c| c >= 0.0 && c.fract() == 0.0) =>
                    {
                        n.as_f64().unwrap_or(0.0)
                    }
                    _ => {
                        return Err(err(
                            ErrorCode::InvalidCount,
                            "count is a whole number >= 0",
                            &ptr(&fat, "count"),
                        ))
                    }
                };
                let within = match f.get("time_range_days") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n))
                        if n.as_u64().is_some_and(|d| (1..=3650).contains(&d)) =>
                    {
                        Some(n.as_u64().unwrap_or(1) as i64 * 86_400_000)
                    }
                    _ => {
                        return Err(err(
                            ErrorCode::InvalidWindow,
                            "time_range_days is a whole number of days, 1–3650",
                            &ptr(&fat, "time_range_days"),
                        ))
                    }
                };
                let aggregate = Aggregate {
                    event,
                    filters: Vec::new(),
                    within,
                    func: AggFn::Count,
                    alias: None,
                };
                children.push(Rule::Leaf(Leaf {
                    source: Source::Aggregate(aggregate),
                    op,
                    operand: Operand::Scalar(Scalar::Num(count)),
                }));
            }
        }
        if children.is_empty() {
            return Err(err(
                ErrorCode::EmptyFilters,
                "give at least one user filter or event filter",
                at,
            ));
        }
        match obj.get("logic_operator") {
            None | Some(Value::Null) => Ok(Rule::All(children)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("and") => Ok(Rule::All(children)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("or") => Ok(Rule::Any(children)),
            Some(_) => Err(err(
                ErrorCode::InvalidOperator,
                "logic_operator is \"AND\" or \"OR\"",
                &ptr(at, "logic_operator"),
            )),
        }
    }
}

fn only(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ValidationError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(err(
            ErrorCode::UnknownField,
            format!(
                "unexpected field '{k}' here (allowed: {})",
                allowed.join(", ")
            ),
            &ptr(at, k),
        )),
        None => Ok(()),
    }
}

fn text<'v>(value: Option<&'v Value>, at: &str, what: &str) -> Result<&'v str, ValidationError> {
    match value {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Ok(s),
        Some(Value::String(_)) => Err(err(
            ErrorCode::InvalidField,
            format!("{what} is 1–128 bytes"),
            at,
        )),
        Some(other) => Err(err(
            ErrorCode::InvalidField,
            format!("{what} must be a string, got {}", json_type_name(other)),
            at,
        )),
        None => Err(err(
            ErrorCode::MissingField,
            format!("{what} is required"),
            at,
        )),
    }
}

/// Names become JSON path members in SQL: `"` and `\` cannot appear in them.
fn json_key(name: &str, at: &str) -> Result<(), ValidationError> {
    if name.contains(['"', '\\']) || name.chars().any(char::is_control) {
        return Err(err(
            ErrorCode::InvalidField,
            "field names cannot contain '\"', '\\' or control characters",
            at,
        ));
    }
    Ok(())
}

fn op_of(value: Option<&Value>, at: &str) -> Result<Op, ValidationError> {
    match value {
        Some(Value::String(s)) => Op::parse(s).ok_or_else(|| {
            let all: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
            err(
                ErrorCode::InvalidOp,
                format!("unknown operator '{s}' (one of {})", all.join(", ")),
                at,
            )
        }),
        Some(_) => Err(err(ErrorCode::InvalidOp, "op is a string", at)),
        None => Err(err(ErrorCode::MissingField, "op is required", at)),
    }
}

/// `N{s,m,h,d}` → milliseconds.
pub fn parse_within(text: &str) -> Option<i64> {
    let t = text.trim();
    let unit = match t.chars().last()? {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    let n: i64 = t[..t.len() - 1].parse().ok().filter(|n| *n >= 1)?;
    n.checked_mul(unit).filter(|ms| *ms <= MAX_WITHIN_MS)
}

/// The source a field name reads: a built-in order field or an attribute.
/// Built-in names win; `attributes.<name>` reaches an attribute of the same name.
fn field_source(field: &str, at: &str) -> Result<Source, ValidationError> {
    json_key(field, at)?;
    if let Some(attr) = field.strip_prefix("attributes.") {
        if attr.is_empty() {
            return Err(err(
                ErrorCode::InvalidField,
                "attributes. needs an attribute name",
                at,
            ));
        }
        return Ok(Source::Attribute(attr.to_owned()));
    }
    let order = |func: AggFn, within: Option<i64>| {
        Source::Aggregate(Aggregate {
            event: ORDER_PLACED.into(),
            filters: Vec::new(),
            within,
            func,
            alias: Some(field.to_owned()),
        })
    };
    Ok(match field {
        "total_orders" => order(AggFn::Count, None),
        "ltv" => order(AggFn::Sum("amount".into()), None),
        "seconds_since_last_order" => order(AggFn::SecondsSinceLast, None),
        "city" => order(AggFn::LastValue("city".into()), None),
        "is_new_user" => order(AggFn::NoneYet, None),
        f => match f
            .strip_prefix("order_count_last_")
            .and_then(|r| r.strip_suffix("_days"))
        {
            Some(n) => {
                let days: i64 = n
                    .parse()
                    .ok()
                    .filter(|d| (1..=3650).contains(d))
                    .ok_or_else(|| {
                        err(
                            ErrorCode::InvalidField,
                            "order_count_last_<N>_days takes N from 1 to 3650",
                            at,
                        )
                    })?;
                order(AggFn::Count, Some(days * 86_400_000))
            }
            None => Source::Attribute(f.to_owned()),
        },
    })
}

fn scalar(value: &Value, at: &str) -> Result<Scalar, ValidationError> {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Scalar::Num(f)),
            _ => Err(err(ErrorCode::InvalidValue, "numbers must be finite", at)),
        },
        Value::String(s) if s.len() <= MAX_TEXT => Ok(Scalar::Str(s.clone())),
        Value::String(_) => Err(err(
            ErrorCode::InvalidValue,
            format!("strings in rules are at most {MAX_TEXT} bytes"),
            at,
        )),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        other => Err(err(
            ErrorCode::InvalidValue,
            format!(
                "expected a number, string or boolean, got {}",
                json_type_name(other)
            ),
            at,
        )),
    }
}

/// Checks the value fits the operator and types it.
fn operand(op: Op, value: Option<&Value>, at: &str) -> Result<Operand, ValidationError> {
    let value = value.filter(|v| !v.is_null());
    match op {
        Op::Exists | Op::NotExists => match value {
            None | Some(Value::Bool(true)) => Ok(Operand::None),
            Some(_) => Err(err(
                ErrorCode::InvalidValue,
                format!("{} takes no value", op.name()),
                at,
            )),
        },
        Op::In | Op::NotIn => match value {
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_LIST => {
                Ok(Operand::List(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| scalar(v, &format!("{at}/{i}")))
                        .collect::<Result<_, _>>()?,
                ))
            }
            Some(Value::Array(_)) => Err(err(
                ErrorCode::InvalidValue,
                format!("{} takes 1–{MAX_LIST} values", op.name()),
                at,
            )),
            _ => Err(err(
                ErrorCode::InvalidValue,
                format!("{} takes an array of values", op.name()),
                at,
            )),
        },
        Op::Between => match value {
            Some(Value::Array(items)) if items.len() == 2 => {
                let (lo, hi) = (
                    scalar(&items[0], &format!("{at}/0"))?,
                    scalar(&items[1], &format!("{at}/1"))?,
                );
                let ordered = match (&lo, &hi) {
                    (Scalar::Num(a), Scalar::Num(b)) => a <= b,
                    (Scalar::Str(a), Scalar::Str(b)) => a <= b,
                    _ => {
                        return Err(err(
                            ErrorCode::InvalidValue,
                            "between takes two numbers or two strings",
                            at,
                        ))
                    }
                };
                if !ordered {
                    return Err(err(
                        ErrorCode::InvalidValue,
                        "between takes [low, high] with low <= high",
                        at,
                    ));
                }
                Ok(Operand::Range(lo, hi))
            }
            _ => Err(err(
                ErrorCode::InvalidValue,
                "between takes [low, high]",
                at,
            )),
        },
        Op::Like | Op::NotLike | Op::StartsWith | Op::EndsWith => {
            match value.map(|v| scalar(v, at)).transpose()? {
                Some(Scalar::Str(s)) => Ok(Operand::Scalar(Scalar::Str(s))),
                _ => Err(err(
                    ErrorCode::InvalidValue,
                    format!("{} takes a string", op.name()),
                    at,
                )),
            }
        }
        Op::VersionEq | Op::VersionGt | Op::VersionGte | Op::VersionLt | Op::VersionLte => {
            match value {
                Some(Value::String(s)) => {
                    Version::parse(s).map(Operand::Version).ok_or_else(|| {
                        err(
                            ErrorCode::InvalidValue,
                            format!("'{s}' is not a version like 2.4.1"),
                            at,
                        )
                    })
                }
                _ => Err(err(
                    ErrorCode::InvalidValue,
                    format!("{} takes a version string", op.name()),
                    at,
                )),
            }
        }
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => match value.map(|v| scalar(v, at)).transpose()? {
            Some(s @ (Scalar::Num(_) | Scalar::Str(_))) => Ok(Operand::Scalar(s)),
            _ => Err(err(
                ErrorCode::InvalidValue,
                format!("{} takes a number or a string", op.name()),
                at,
            )),
        },
        Op::Eq | Op::Neq | Op::Contains => match value {
            Some(v) => Ok(Operand::Scalar(scalar(v, at)?)),
            None => Err(err(
                ErrorCode::MissingValue,
                format!("{} needs a value", op.name()),
                at,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(r: &Result<Rule, ValidationError>) -> Option<String> {
        r.as_ref().err().and_then(|e| e.field.clone())
    }

    #[test]
    fn the_four_formats_parse_into_one_ast() {
        let tree = parse(
            &json!({"operator": "AND", "conditions": [{"field": "age", "op": "gte", "value": 25}, {"not": {"segment": "s1"}}]}),
        );
        assert!(matches!(tree, Ok(Rule::All(ref c)) if c.len() == 2));
        let behavioral = parse(
            &json!({"event": "LOGIN", "where": [{"field": "city", "op": "eq", "value": "Pune"}], "within": "30d", "op": "gte", "value": 1}),
        );
        let Ok(Rule::Leaf(Leaf {
            source: Source::Aggregate(a),
            ..
        })) = behavioral
        else {
            unreachable!("{behavioral:?}")
        };
        assert_eq!(
            (a.within, a.func, a.filters.len()),
            (Some(30 * 86_400_000), AggFn::Count, 1)
        );
        let duck = parse(
            &json!({"user_filters": [{"field": "location", "operator": "eq", "value": "California"}],
            "event_filters": [{"event_name": "LOGIN", "operator": "gte", "count": 1}], "logic_operator": "AND", "limit": 10}),
        );
        assert!(matches!(duck, Ok(Rule::All(ref c)) if c.len() == 2));
        let map = parse(&json!({"country_code": "US", "is_premium": true}));
        assert!(matches!(map, Ok(Rule::All(ref c)) if c.len() == 2));
    }

    #[test]
    fn built_in_fields_become_order_aggregates() {
        let r = parse(&json!({"field": "order_count_last_23_days", "op": "gte", "value": 25}));
        let Ok(Rule::Leaf(Leaf {
            source: Source::Aggregate(a),
            ..
        })) = r
        else {
            unreachable!()
        };
        assert_eq!(
            (a.event.as_str(), a.within, a.alias.as_deref()),
            (
                "order_placed",
                Some(23 * 86_400_000),
                Some("order_count_last_23_days")
            )
        );
        let r = parse(&json!({"field": "attributes.city", "op": "eq", "value": "x"}));
        assert!(
            matches!(r, Ok(Rule::Leaf(Leaf { source: Source::Attribute(ref n), .. })) if n == "city")
        );
        assert_eq!(
            field_of(&parse(
                &json!({"field": "order_count_last_0_days", "op": "gte", "value": 1})
            ))
            .as_deref(),
            Some("/field")
        );
    }

    #[test]
    fn errors_point_at_the_offending_node() {
        let r = parse(
            &json!({"operator": "AND", "conditions": [{"field": "a", "op": "eq", "value": 1}, {"operator": "OR", "conditions": [{"field": "b", "op": "nope", "value": 1}]}]}),
        );
        assert_eq!(
            field_of(&r).as_deref(),
            Some("/conditions/1/conditions/0/op")
        );
        let r = parse(&json!({"field": "age", "op": "between", "value": [40, 30]}));
        assert_eq!(field_of(&r).as_deref(), Some("/value"));
        let r = parse(&json!({"field": "age", "op": "in", "value": [1, {"x": 1}]}));
        assert_eq!(field_of(&r).as_deref(), Some("/value/1"));
        let r = parse(&json!({"event": "X", "agg": "sum", "op": "gt", "value": 1}));
        assert_eq!(field_of(&r).as_deref(), Some("/property"));
        let r = parse(&json!({"event": "X", "within": "0d", "op": "gt", "value": 1}));
        assert_eq!(field_of(&r).as_deref(), Some("/within"));
        let r = parse(&json!({"field": "a", "op": "eq", "value": 1, "extra": 2}));
        assert_eq!(field_of(&r).as_deref(), Some("/extra"));
        let r = parse(&json!({"field": "v", "op": "version_gte", "value": "two"}));
        assert_eq!(field_of(&r).as_deref(), Some("/value"));
        assert_eq!(field_of(&parse(&json!([]))).as_deref(), Some("/"));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = json!({"field": "a", "op": "exists"});
        for _ in 0..(MAX_DEPTH + 1) {
            deep = json!({"not": deep});
        }
        assert_eq!(
            parse(&deep).map_err(|e| e.code.as_str()),
            Err("rule_too_deep")
        );
        let wide: Vec<_> = (0..MAX_NODES + 1)
            .map(|i| json!({"field": format!("a{i}"), "op": "exists"}))
            .collect();
        assert_eq!(
            parse(&json!({"operator": "OR", "conditions": wide})).map_err(|e| e.code.as_str()),
            Err("rule_too_large")
        );
        let long: Vec<_> = (0..MAX_LIST + 1).map(|i| json!(i)).collect();
        assert_eq!(
            parse(&json!({"field": "a", "op": "in", "value": long})).map_err(|e| e.code.as_str()),
            Err("invalid_value")
        );
    }

    #[test]
    fn windows_parse_units() {
        assert_eq!(parse_within("45s"), Some(45_000));
        assert_eq!(parse_within("2h"), Some(7_200_000));
        assert_eq!(parse_within("3d"), Some(259_200_000));
        assert_eq!(parse_within("d"), None);
        assert_eq!(parse_within("-1d"), None);
        assert_eq!(parse_within("4000d"), None);
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "AND",
                "OR",
                "eq",
                "in",
                "between",
                "like",
                "version_gte",
                "count",
                "sum",
                "30d",
                "0d",
                "x.y"
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            let key = prop::sample::select(vec![
                "operator",
                "conditions",
                "not",
                "field",
                "op",
                "value",
                "segment",
                "event",
                "where",
                "within",
                "agg",
                "property",
                "user_filters",
                "event_filters",
                "logic_operator",
                "operator",
                "event_name",
                "count",
                "time_range_days",
                "limit",
                "age",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..5).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// The parser never panics, and every error points somewhere.
        #[test]
        fn any_json_parses_or_fails_with_a_pointer(value in arbitrary_json()) {
            match parse(&value) {
                Ok(rule) => { let _ = rule.references(); }
                Err(e) => proptest::prop_assert!(e.field.as_deref().is_some_and(|f| f.starts_with('/')), "{:?}", e),
            }
        }
    }
}
