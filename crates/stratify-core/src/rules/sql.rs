//! Rule → parameterised SQL over the store's own tables, for SQLite and
//! PostgreSQL. Every value is bound (never spliced), so no input can inject
//! SQL. Every leaf compiles to a `CASE` that is never NULL, so SQL's
//! three-valued logic cannot leak into AND/OR/NOT: the result is exactly the
//! in-memory evaluator's (see the module docs of [`crate::rules`]).
//!
//! Tables read (the store's contract):
//! `users(uid, user_id, attributes)`, `events(seq, uid, name_id, ts, properties)`,
//! `event_names(id, name)`, `segment_members(segment_id, uid)`; `attributes`
//! and `properties` are JSON text (SQLite) or `jsonb` (PostgreSQL), `ts` is
//! epoch milliseconds. Version comparison calls the function
//! `stratify_version_cmp(a, b)` (-1, 0, 1 or NULL), which the backend registers.

use super::ast::*;
use super::eval::{SegmentLookup, SegmentRef};
use super::like::to_glob;
use crate::time::Millis;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn parse(name: &str) -> Option<Dialect> {
        match name {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            _ => None,
        }
    }
}

/// A bound parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Param {
    Int(i64),
    Real(f64),
    Text(String),
}

/// SQL text with its parameters (`?1..` for SQLite, `$1..` for PostgreSQL).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<Param>,
    /// For a predicate that refers to dynamic segments: the `WITH …` clause
    /// (ending in a space) that the statement using the predicate starts
    /// with. Each referenced segment is one materialised CTE, referred to by
    /// name however often the rule reaches it. Empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub with: String,
}

const MAX_REF_DEPTH: usize = 16;

struct Builder<'a> {
    d: Dialect,
    params: Vec<Param>,
    now: Millis,
    segments: &'a dyn SegmentLookup,
    /// Referenced dynamic segments as CTEs, in dependency order: (segment
    /// id, CTE name, definition).
    ctes: Vec<(String, String, String)>,
    /// The CTEs each rule being compiled (innermost last) joins.
    scopes: Vec<Vec<String>>,
}

/// A value a leaf compares, as SQL.
enum Src {
    /// A key of a JSON document expression (`u.attributes`, `e.properties`, a subquery).
    Json { doc: String, key: String },
    /// A numeric expression, NULL when missing.
    Num(String),
    /// A boolean expression, never NULL.
    Bool(String),
}

impl Builder<'_> {
    /// `SELECT u.uid FROM users u … WHERE rule`: the users the rule holds
    /// for, with a LEFT JOIN to each CTE it refers to. Every CTE is named in
    /// exactly one FROM, whatever the number of references to it: the
    /// database reads it once (SQLite also counts a table once per naming,
    /// up to 65 535).
    fn scope(&mut self, rule: &Rule, depth: usize) -> String {
        self.scopes.push(Vec::new());
        let body = self.rule(rule, depth);
        let joined = self.scopes.pop().unwrap_or_default();
        let joins: String = joined
            .iter()
            .map(|j| format!(" LEFT JOIN {j} ON {j}.uid = u.uid"))
            .collect();
        format!("SELECT u.uid FROM users u{joins} WHERE {body}")
    }

    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        match self.d {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn text(&mut self, s: &str) -> String {
        self.bind(Param::Text(s.to_owned()))
    }

    fn num(&mut self, n: f64) -> String {
        let p = if n.fract() == 0.0 && n.abs() < 9.0e15 {
            self.bind(Param::Int(n as i64))
        } else {
            self.bind(Param::Real(n))
        };
        match self.d {
            Dialect::Sqlite => p,
            // Typed, so that `COUNT(*) = 0.5` compares as a double instead
            // of PostgreSQL inferring `bigint` for the placeholder.
            Dialect::Postgres => format!("{p}::float8"),
        }
    }

    fn falsy(&self) -> &'static str {
        "FALSE"
    }

    // JSON accessors ------------------------------------------------------

    fn key_param(&mut self, key: &str) -> String {
        match self.d {
            // A quoted member name: `$."key"` (keys with `"` or `\` are refused by the parser).
            Dialect::Sqlite => self.text(&format!("$.\"{key}\"")),
            Dialect::Postgres => self.text(key),
        }
    }

    fn json_type(&mut self, doc: &str, key: &str) -> String {
        let k = self.key_param(key);
        match self.d {
            Dialect::Sqlite => format!("json_type({doc}, {k})"),
            Dialect::Postgres => format!("jsonb_typeof({doc} -> {k})"),
        }
    }

    fn is_num(&mut self, src: &Src) -> String {
        match src {
            Src::Json { doc, key } => {
                let t = self.json_type(doc, key);
                match self.d {
                    Dialect::Sqlite => format!("{t} IN ('integer', 'real')"),
                    Dialect::Postgres => format!("{t} = 'number'"),
                }
            }
            Src::Num(v) => format!("{v} IS NOT NULL"),
            Src::Bool(_) => "FALSE".into(),
        }
    }

    fn is_str(&mut self, src: &Src) -> String {
        match src {
            Src::Json { doc, key } => {
                let t = self.json_type(doc, key);
                match self.d {
                    Dialect::Sqlite => format!("{t} = 'text'"),
                    Dialect::Postgres => format!("{t} = 'string'"),
                }
            }
            _ => "FALSE".into(),
        }
    }

    fn is_bool(&mut self, src: &Src, value: bool) -> String {
        match src {
            Src::Json { doc, key } => {
                let k = self.key_param(key);
                match self.d {
                    Dialect::Sqlite => {
                        format!("COALESCE(json_type({doc}, {k}) = '{value}', FALSE)")
                    }
                    Dialect::Postgres => {
                        format!("COALESCE(({doc} -> {k}) = '{value}'::jsonb, FALSE)")
                    }
                }
            }
            Src::Num(_) => "FALSE".into(),
            Src::Bool(b) => {
                if value {
                    format!("({b})")
                } else {
                    format!("(NOT ({b}))")
                }
            }
        }
    }

    fn is_array(&mut self, src: &Src) -> String {
        match src {
            Src::Json { doc, key } => {
                let t = self.json_type(doc, key);
                format!("{t} = 'array'")
            }
            _ => "FALSE".into(),
        }
    }

    fn present(&mut self, src: &Src) -> String {
        match src {
            Src::Json { doc, key } => {
                let t = self.json_type(doc, key);
                format!("COALESCE({t}, 'null') <> 'null'")
            }
            Src::Num(v) => format!("{v} IS NOT NULL"),
            Src::Bool(_) => "TRUE".into(),
        }
    }

    fn num_value(&mut self, src: &Src) -> String {
        match src {
            Src::Json { doc, key } => {
                let k = self.key_param(key);
                match self.d {
                    Dialect::Sqlite => format!("json_extract({doc}, {k})"),
                    Dialect::Postgres => format!("({doc} ->> {k})::float8"),
                }
            }
            Src::Num(v) => v.clone(),
            Src::Bool(_) => "NULL".into(),
        }
    }

    fn str_value(&mut self, src: &Src) -> String {
        match src {
            Src::Json { doc, key } => {
                let k = self.key_param(key);
                match self.d {
                    Dialect::Sqlite => format!("json_extract({doc}, {k})"),
                    Dialect::Postgres => format!("(({doc} ->> {k}) COLLATE \"C\")"),
                }
            }
            _ => "NULL".into(),
        }
    }

    fn is_scalar(&mut self, src: &Src) -> String {
        let (n, s, t, f) = (
            self.is_num(src),
            self.is_str(src),
            self.is_bool(src, true),
            self.is_bool(src, false),
        );
        format!("(({n}) OR ({s}) OR ({t}) OR ({f}))")
    }

    /// Never NULL: `CASE WHEN guard THEN test ELSE FALSE END`.
    fn guarded(&self, guard: String, test: String) -> String {
        format!(
            "(CASE WHEN {guard} THEN COALESCE({test}, FALSE) ELSE {} END)",
            self.falsy()
        )
    }

    fn eq(&mut self, src: &Src, s: &Scalar) -> String {
        match s {
            Scalar::Num(n) => {
                let (g, v, p) = (self.is_num(src), self.num_value(src), self.num(*n));
                self.guarded(g, format!("{v} = {p}"))
            }
            Scalar::Str(t) => {
                let (g, v, p) = (self.is_str(src), self.str_value(src), self.text(t));
                self.guarded(g, format!("{v} = {p}"))
            }
            Scalar::Bool(b) => self.is_bool(src, *b),
        }
    }

    fn ordered(&mut self, src: &Src, cmp: &str, s: &Scalar) -> String {
        match s {
            Scalar::Num(n) => {
                let (g, v, p) = (self.is_num(src), self.num_value(src), self.num(*n));
                self.guarded(g, format!("{v} {cmp} {p}"))
            }
            Scalar::Str(t) => {
                let (g, v, p) = (self.is_str(src), self.str_value(src), self.text(t));
                self.guarded(g, format!("{v} {cmp} {p}"))
            }
            Scalar::Bool(_) => "FALSE".into(),
        }
    }

    fn leaf(&mut self, src: &Src, op: Op, operand: &Operand) -> String {
        match (op, operand) {
            (Op::Exists, _) => format!("({})", self.present(src)),
            (Op::NotExists, _) => format!("(NOT ({}))", self.present(src)),
            (Op::Eq, Operand::Scalar(s)) => self.eq(src, s),
            (Op::Neq, Operand::Scalar(s)) => {
                let (g, e) = (self.is_scalar(src), self.eq(src, s));
                self.guarded(g, format!("NOT {e}"))
            }
            (Op::Gt, Operand::Scalar(s)) => self.ordered(src, ">", s),
            (Op::Gte, Operand::Scalar(s)) => self.ordered(src, ">=", s),
            (Op::Lt, Operand::Scalar(s)) => self.ordered(src, "<", s),
            (Op::Lte, Operand::Scalar(s)) => self.ordered(src, "<=", s),
            (Op::In, Operand::List(items)) => {
                let parts: Vec<String> = items.iter().map(|s| self.eq(src, s)).collect();
                format!("({})", parts.join(" OR "))
            }
            (Op::NotIn, Operand::List(items)) => {
                let g = self.is_scalar(src);
                let parts: Vec<String> = items.iter().map(|s| self.eq(src, s)).collect();
                self.guarded(g, format!("NOT ({})", parts.join(" OR ")))
            }
            (Op::Like | Op::NotLike, Operand::Scalar(Scalar::Str(p))) => {
                let (g, v) = (self.is_str(src), self.str_value(src));
                let test = match self.d {
                    Dialect::Sqlite => format!("{v} GLOB {}", self.text(&to_glob(p))),
                    Dialect::Postgres => format!("{v} LIKE {} ESCAPE ''", self.text(p)),
                };
                let test = if op == Op::NotLike {
                    format!("NOT ({test})")
                } else {
                    test
                };
                self.guarded(g, test)
            }
            (Op::StartsWith | Op::EndsWith, Operand::Scalar(Scalar::Str(p))) => {
                let g = self.is_str(src);
                if p.is_empty() {
                    return format!("COALESCE({g}, FALSE)");
                }
                let v = self.str_value(src);
                let (a, b) = (self.text(p), self.text(p));
                let test = match (self.d, op) {
                    (Dialect::Sqlite, Op::StartsWith) => {
                        format!("substr({v}, 1, length({a})) = {b}")
                    }
                    (Dialect::Sqlite, _) => format!("substr({v}, -length({a})) = {b}"),
                    (Dialect::Postgres, Op::StartsWith) => format!("left({v}, length({a})) = {b}"),
                    (Dialect::Postgres, _) => format!("right({v}, length({a})) = {b}"),
                };
                self.guarded(g, test)
            }
            (Op::Contains, Operand::Scalar(s)) => {
                let Src::Json { doc, key } = src else {
                    return "FALSE".into();
                };
                let (doc, key) = (doc.clone(), key.clone());
                let string_test = match s {
                    Scalar::Str(t) => {
                        let (g, v, p) = (self.is_str(src), self.str_value(src), self.text(t));
                        let test = match self.d {
                            Dialect::Sqlite => format!("instr({v}, {p}) > 0"),
                            Dialect::Postgres => format!("strpos({v}, {p}) > 0"),
                        };
                        self.guarded(g, test)
                    }
                    _ => "FALSE".into(),
                };
                let arr = self.is_array(src);
                let k = self.key_param(&key);
                let el_test = self.element_eq(s);
                let each = match self.d {
                    Dialect::Sqlite => format!("EXISTS (SELECT 1 FROM json_each({doc}, {k}) j WHERE {el_test})"),
                    Dialect::Postgres => format!("EXISTS (SELECT 1 FROM jsonb_array_elements({doc} -> {k}) j(value) WHERE {el_test})"),
                };
                format!("({string_test} OR {})", self.guarded(arr, each))
            }
            (Op::Between, Operand::Range(lo, hi)) => {
                let (g, v, a, b) = match lo {
                    Scalar::Num(_) => (
                        self.is_num(src),
                        self.num_value(src),
                        self.scalar(lo),
                        self.scalar(hi),
                    ),
                    _ => (
                        self.is_str(src),
                        self.str_value(src),
                        self.scalar(lo),
                        self.scalar(hi),
                    ),
                };
                self.guarded(g, format!("{v} BETWEEN {a} AND {b}"))
            }
            (
                Op::VersionEq | Op::VersionGt | Op::VersionGte | Op::VersionLt | Op::VersionLte,
                Operand::Version(want),
            ) => {
                let cmp = match op {
                    Op::VersionEq => "= 0",
                    Op::VersionGt => "> 0",
                    Op::VersionGte => ">= 0",
                    Op::VersionLt => "< 0",
                    _ => "<= 0",
                };
                let (g, v, p) = (
                    self.is_str(src),
                    self.str_value(src),
                    self.text(&want.to_string()),
                );
                self.guarded(g, format!("stratify_version_cmp({v}, {p}) {cmp}"))
            }
            _ => "FALSE".into(),
        }
    }

    /// Equality on one element of a JSON array (`j.value` of json_each /
    /// jsonb_array_elements), typed like [`Self::eq`].
    fn element_eq(&mut self, s: &Scalar) -> String {
        match (self.d, s) {
            (Dialect::Sqlite, Scalar::Num(n)) => format!(
                "j.type IN ('integer', 'real') AND j.value = {}",
                self.num(*n)
            ),
            (Dialect::Sqlite, Scalar::Str(t)) => {
                format!("j.type = 'text' AND j.value = {}", self.text(t))
            }
            (Dialect::Sqlite, Scalar::Bool(b)) => format!("j.type = '{b}'"),
            (Dialect::Postgres, Scalar::Num(n)) => {
                format!(
                    "jsonb_typeof(j.value) = 'number' AND (j.value #>> '{{}}')::float8 = {}",
                    self.num(*n)
                )
            }
            (Dialect::Postgres, Scalar::Str(t)) => {
                format!(
                    "jsonb_typeof(j.value) = 'string' AND (j.value #>> '{{}}') = {}",
                    self.text(t)
                )
            }
            (Dialect::Postgres, Scalar::Bool(b)) => format!("j.value = '{b}'::jsonb"),
        }
    }

    fn scalar(&mut self, s: &Scalar) -> String {
        match s {
            Scalar::Num(n) => self.num(*n),
            Scalar::Str(t) => self.text(t),
            Scalar::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        }
    }

    /// `FROM events e WHERE ...` for an aggregate, correlated on `u.uid`.
    fn events_from(&mut self, a: &Aggregate) -> String {
        let name = self.text(&a.event);
        let now = self.bind(Param::Int(self.now));
        let mut sql = format!(
            "FROM events e WHERE e.uid = u.uid AND e.name_id = (SELECT n.id FROM event_names n WHERE n.name = {name}) AND e.ts <= {now}"
        );
        if let Some(w) = a.within {
            let lo = self.bind(Param::Int(self.now - w));
            sql.push_str(&format!(" AND e.ts > {lo}"));
        }
        for f in &a.filters {
            let src = Src::Json {
                doc: "e.properties".into(),
                key: f.property.clone(),
            };
            let test = self.leaf(&src, f.op, &f.operand);
            sql.push_str(&format!(" AND {test}"));
        }
        sql
    }

    fn numeric_property(&mut self, p: &str) -> String {
        let src = Src::Json {
            doc: "e.properties".into(),
            key: p.to_owned(),
        };
        let (g, v) = (self.is_num(&src), self.num_value(&src));
        format!("CASE WHEN {g} THEN {v} END")
    }

    fn source(&mut self, source: &Source) -> Src {
        match source {
            Source::Attribute(name) => Src::Json {
                doc: "u.attributes".into(),
                key: name.clone(),
            },
            Source::Aggregate(a) => {
                match &a.func {
                    AggFn::Count => Src::Num(format!("(SELECT COUNT(*) {})", self.events_from(a))),
                    AggFn::NoneYet => {
                        Src::Bool(format!("NOT EXISTS (SELECT 1 {})", self.events_from(a)))
                    }
                    AggFn::Sum(p) => {
                        let x = self.numeric_property(p);
                        let from = self.events_from(a);
                        Src::Num(match self.d {
                            Dialect::Sqlite => format!("(SELECT TOTAL({x}) {from})"),
                            Dialect::Postgres => format!("(SELECT COALESCE(SUM({x}), 0) {from})"),
                        })
                    }
                    AggFn::Avg(p) | AggFn::Min(p) | AggFn::Max(p) => {
                        let f = match &a.func {
                            AggFn::Avg(_) => "AVG",
                            AggFn::Min(_) => "MIN",
                            _ => "MAX",
                        };
                        let x = self.numeric_property(p);
                        let from = self.events_from(a);
                        Src::Num(format!("(SELECT {f}({x}) {from})"))
                    }
                    AggFn::SecondsSinceLast | AggFn::SecondsSinceFirst => {
                        let f = if a.func == AggFn::SecondsSinceLast {
                            "MAX"
                        } else {
                            "MIN"
                        };
                        let now = self.bind(Param::Int(self.now));
                        let from = self.events_from(a);
                        // Seconds as a double in both dialects (PostgreSQL
                        // would otherwise compute an exact `numeric`).
                        let seconds = match self.d {
                            Dialect::Sqlite => "1000.0",
                            Dialect::Postgres => "1000.0::float8",
                        };
                        Src::Num(format!("(({now} - (SELECT {f}(e.ts) {from})) / {seconds})"))
                    }
                    AggFn::LastValue(p) => {
                        let from = self.events_from(a);
                        Src::Json { doc: format!("(SELECT e.properties {from} ORDER BY e.ts DESC, e.seq DESC LIMIT 1)"), key: p.clone() }
                    }
                }
            }
        }
    }

    fn rule(&mut self, rule: &Rule, depth: usize) -> String {
        match rule {
            Rule::All(c) if c.is_empty() => "TRUE".into(),
            Rule::Any(c) if c.is_empty() => "FALSE".into(),
            Rule::All(c) => format!(
                "({})",
                c.iter()
                    .map(|r| self.rule(r, depth))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
            Rule::Any(c) => format!(
                "({})",
                c.iter()
                    .map(|r| self.rule(r, depth))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
            Rule::Not(r) => format!("(NOT {})", self.rule(r, depth)),
            Rule::Leaf(leaf) => {
                let src = self.source(&leaf.source);
                self.leaf(&src, leaf.op, &leaf.operand)
            }
            Rule::Segment(id) => match self.segments.segment(id) {
                Some(SegmentRef::Static(_)) => {
                    let p = self.text(id);
                    format!("EXISTS (SELECT 1 FROM segment_members m WHERE m.segment_id = {p} AND m.uid = u.uid)")
                }
                Some(SegmentRef::Dynamic(r)) if depth < MAX_REF_DEPTH => {
                    let name = match self.ctes.iter().find(|c| c.0 == *id) {
                        Some(c) => c.1.clone(),
                        None => {
                            // Named once its body (and what it refers to) is in.
                            let select = self.scope(r, depth + 1);
                            let name = format!("segment_{}", self.ctes.len() + 1);
                            let definition = format!("{name}(uid) AS MATERIALIZED ({select})");
                            self.ctes.push((id.clone(), name.clone(), definition));
                            name
                        }
                    };
                    let joined = self
                        .scopes
                        .last_mut()
                        .unwrap_or_else(|| unreachable!("a rule is compiled inside a scope"));
                    if !joined.contains(&name) {
                        joined.push(name.clone());
                    }
                    format!("{name}.uid IS NOT NULL")
                }
                _ => "FALSE".into(),
            },
        }
    }
}

/// The rule as a boolean SQL expression over `users u`, evaluated at `now`.
pub fn predicate(
    rule: &Rule,
    dialect: Dialect,
    now: Millis,
    segments: &dyn SegmentLookup,
) -> Compiled {
    let mut b = Builder {
        d: dialect,
        params: Vec::new(),
        now,
        segments,
        ctes: Vec::new(),
        scopes: vec![Vec::new()],
    };
    let sql = b.rule(rule, 0);
    if b.ctes.is_empty() {
        return compact(dialect, &sql, b.params);
    }
    // The rule itself joins its references in one more CTE.
    let matched = format!("matched(uid) AS MATERIALIZED ({})", b.scope(rule, 0));
    let sql = "u.uid IN (SELECT uid FROM matched)".to_owned();
    b.ctes.push((String::new(), "matched".into(), matched));
    let with = format!(
        "WITH {} ",
        b.ctes
            .iter()
            .map(|c| c.2.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // One pass renumbers the placeholders of both parts alike.
    let whole = compact(dialect, &format!("{with}{CUT}{sql}"), b.params);
    let (with, sql) = whole
        .sql
        .split_once(CUT)
        .unwrap_or_else(|| unreachable!("the cut survives compaction"));
    Compiled {
        sql: sql.to_owned(),
        params: whole.params,
        with: with.to_owned(),
    }
}

/// Separates the `WITH` clause from the predicate while both are compacted
/// (no SQL we write contains it).
const CUT: &str = "\u{1}";

/// Drops parameters the text does not reference (a leaf that folds to a
/// constant leaves its source's parameters behind) and renumbers the rest,
/// so the placeholders are exactly 1..=n. Our SQL has no string literal that
/// contains a placeholder sigil, so a plain scan is exact.
fn compact(dialect: Dialect, sql: &str, params: Vec<Param>) -> Compiled {
    let sigil = match dialect {
        Dialect::Sqlite => '?',
        Dialect::Postgres => '$',
    };
    let bytes = sql.as_bytes();
    let mut used = vec![false; params.len() + 1];
    let mut tokens = Vec::new(); // (start, end, index)
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == sigil as u8 {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if let Ok(n) = sql[start + 1..i].parse::<usize>() {
                if n < used.len() {
                    used[n] = true;
                    tokens.push((start, i, n));
                }
            }
        } else {
            i += 1;
        }
    }
    let mut renumber = vec![0usize; used.len()];
    let mut kept = Vec::new();
    for (old, p) in params.into_iter().enumerate() {
        if used[old + 1] {
            kept.push(p);
            renumber[old + 1] = kept.len();
        }
    }
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for (start, end, n) in tokens {
        out.push_str(&sql[last..start]);
        out.push(sigil);
        out.push_str(&renumber[n].to_string());
        last = end;
    }
    out.push_str(&sql[last..]);
    Compiled {
        sql: out,
        params: kept,
        with: String::new(),
    }
}

/// `SELECT u.user_id FROM users u WHERE <rule> ORDER BY u.user_id`: the
/// whole population, as `GET /v1/segments/{id}/sql` shows it.
pub fn members(
    rule: &Rule,
    dialect: Dialect,
    now: Millis,
    segments: &dyn SegmentLookup,
) -> Compiled {
    let p = predicate(rule, dialect, now, segments);
    Compiled {
        sql: format!(
            "{}SELECT u.user_id FROM users u WHERE {} ORDER BY u.user_id",
            p.with, p.sql
        ),
        params: p.params,
        with: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{parse, NoSegments};
    use serde_json::json;

    #[test]
    fn values_are_bound_never_spliced() {
        let evil = "x'); DROP TABLE users; --";
        let rule = parse(&json!({"operator": "OR", "conditions": [
            {"field": "city", "op": "eq", "value": evil},
            {"event": evil, "where": [{"field": "p", "op": "like", "value": evil}], "op": "gte", "value": 1}]}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let c = predicate(&rule, d, 0, &NoSegments);
            assert!(!c.sql.contains("DROP"), "{}", c.sql);
            assert!(c
                .params
                .iter()
                .any(|p| matches!(p, Param::Text(t) if t == evil)));
        }
    }

    #[test]
    fn unused_parameters_are_dropped_and_placeholders_renumbered() {
        // starts_with on a numeric aggregate folds to FALSE: its parameters go.
        let rule = parse(&json!({"operator": "AND", "conditions": [
            {"field": "total_orders", "op": "starts_with", "value": "1"},
            {"field": "age", "op": "gt", "value": 3}]}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let c = predicate(&rule, Dialect::Postgres, 0, &NoSegments);
        let max = (1..=20)
            .rev()
            .find(|n| c.sql.contains(&format!("${n}")))
            .unwrap_or(0);
        assert_eq!(max, c.params.len(), "{} {:?}", c.sql, c.params);
        assert!(c.sql.contains("$1") && !c.sql.contains("order_placed"));
    }
}
