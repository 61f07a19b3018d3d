//! The rule language: one typed AST ([`Rule`]) for every input format, one
//! meaning, several evaluators (in memory, explain, SQL).
//!
//! # Grammar (JSON)
//!
//! ```text
//! rule      := tree | not | leaf | segment | behavior | duckmart | attrmap
//! tree      := {"operator": "AND"|"OR", "conditions": [rule, ...]}
//! not       := {"not": rule}
//! segment   := {"segment": "<segment id>"}
//! leaf      := {"field": FIELD, "op": OP, "value": VALUE}
//! behavior  := {"event": NAME, "where"?: [{"field": PROP, "op": OP, "value": VALUE}],
//!               "within"?: "<N>s|m|h|d", "agg"?: AGG, "property"?: PROP, "op": OP, "value": VALUE}
//! duckmart  := {"user_filters"?: [{"field", "operator", "value"}],
//!               "event_filters"?: [{"event_name", "operator", "count", "time_range_days"?}],
//!               "logic_operator"?: "AND"|"OR", "limit"?: N}
//! attrmap   := {"<attribute>": scalar, ...}             (all equal; no reserved keys)
//! AGG       := count (default) | sum | avg | min | max   (these four need "property")
//!            | seconds_since_last | seconds_since_first
//! FIELD     := total_orders | order_count_last_<N>_days | ltv | seconds_since_last_order
//!            | city | is_new_user                        (built-ins over order_placed events)
//!            | attributes.<name> | <name>                (a user attribute)
//! OP        := eq neq(ne) gt gte lt lte in not_in like not_like contains starts_with
//!              ends_with exists not_exists between version_eq version_gt version_gte
//!              version_lt version_lte
//! ```
//!
//! # Semantics (identical in every evaluator)
//! - **Missing** (no attribute, JSON `null`, an aggregate over no values such
//!   as `avg`, `seconds_since_*`, `city` of a user without orders) is false for
//!   every operator except `not_exists`; `NOT` inverts that, so logic is
//!   two-valued. `count` and `sum` over no events are 0, not missing;
//!   `is_new_user` is `true` when there is no order.
//! - **Types are strict**: a number never equals or orders against a string;
//!   booleans only compare with `eq`/`neq`/`in`/`not_in`. `neq` and `not_in`
//!   hold for present scalar values that differ. Strings order bytewise (ISO
//!   dates sort correctly). Matching is case-sensitive; `like` is SQL `LIKE`
//!   (`%` any run, `_` one character). `contains` is substring on strings and
//!   element equality on arrays. `between` includes both ends. `version_*`
//!   compare semantic versions; a value that is not a version is false.
//! - **Time**: a window `within: "Nd"` covers (now − N·86400 s, now]; events
//!   after `now` are ignored (that is how `as_of` works). `seconds_since_*`
//!   are (now − t)/1000 as a float.
//! - **Built-ins**: `total_orders` = count of `order_placed`; `ltv` = sum of
//!   its `amount`; `order_count_last_<N>_days` = count within N days;
//!   `seconds_since_last_order`; `city` = the `city` of the latest order.
//!   Built-in names win over attributes of the same name (use `attributes.<name>`).
//! - **Limits**: depth [`MAX_DEPTH`], nodes [`MAX_NODES`], list items [`MAX_LIST`],
//!   strings [`MAX_TEXT`] bytes, windows up to 10 years.
//! - **References** are evaluated, never expanded: a referenced segment is
//!   computed once per evaluation (memoised in memory, one CTE in SQL),
//!   however often the rule reaches it. A rule's reference graph (the rule
//!   and every segment it reaches, each counted once) holds at most
//!   [`MAX_REF_GRAPH_NODES`] nodes and chains at most [`MAX_REF_CHAIN`]
//!   references ([`reference_graph`]); past that a write is refused, so the
//!   work of one evaluation is bounded whatever editors write.

mod ast;
mod eval;
mod graph;
mod like;
mod parse;
pub mod sql;
mod timing;
pub mod version;

pub use ast::*;
pub use eval::{
    aggregate, evaluate, explain, leaf_value, test, EventFact, Facts, Fields, NoSegments, NumTest,
    Seen, SegmentLookup, SegmentRef,
};
pub use graph::{reference_graph, ReferenceGraph};
pub use like::{like, to_glob};
pub use parse::{parse, parse_within};
pub use timing::{next_change, next_change_from, MAX_CANDIDATES};

pub const MAX_DEPTH: usize = 32;
/// Most rule nodes a rule's reference graph reaches, each segment once.
pub const MAX_REF_GRAPH_NODES: usize = 10_000;
/// Longest chain of segment references from a rule.
pub const MAX_REF_CHAIN: usize = 8;
pub const MAX_NODES: usize = 1000;
pub const MAX_LIST: usize = 1000;
pub const MAX_TEXT: usize = 1024;
pub const MAX_WITHIN_MS: i64 = 3650 * 86_400_000;
