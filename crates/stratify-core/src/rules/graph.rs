//! The size of a rule's reference graph: what one evaluation of it can cost.

use super::ast::Rule;
use std::collections::HashMap;

/// A rule and every segment it reaches through references, each counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceGraph {
    /// Rule nodes of the rule and of each distinct reachable segment.
    pub nodes: usize,
    /// The longest chain of references (0 when the rule refers to none).
    pub chain: usize,
}

/// Measures `rule`'s reference graph; `rule_of` gives a dynamic segment's
/// rule (`None` for static and unknown segments, which end a chain). Each
/// segment is visited once, so this costs the graph's size, not its
/// expansion. Callers refuse cycles first; a cycle here ends at the
/// segment already on the path.
pub fn reference_graph<'a>(
    rule: &'a Rule,
    rule_of: &dyn Fn(&str) -> Option<&'a Rule>,
) -> ReferenceGraph {
    // Longest chain below each visited segment (None while on the path).
    let mut chains: HashMap<&'a str, Option<usize>> = HashMap::new();
    let mut nodes = rule.node_count();
    let chain = chain_below(rule, rule_of, &mut chains, &mut nodes);
    ReferenceGraph { nodes, chain }
}

fn chain_below<'a>(
    rule: &'a Rule,
    rule_of: &dyn Fn(&str) -> Option<&'a Rule>,
    chains: &mut HashMap<&'a str, Option<usize>>,
    nodes: &mut usize,
) -> usize {
    let mut longest = 0;
    for id in rule.references() {
        let below = match chains.get(id) {
            Some(known) => known.unwrap_or(0),
            None => {
                chains.insert(id, None);
                let below = match rule_of(id) {
                    Some(r) => {
                        *nodes += r.node_count();
                        chain_below(r, rule_of, chains, nodes)
                    }
                    None => 0,
                };
                chains.insert(id, Some(below));
                below
            }
        };
        longest = longest.max(below + 1);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse;
    use serde_json::json;

    fn or_of_refs(target: &str, n: usize) -> Rule {
        let refs: Vec<_> = (0..n).map(|_| json!({"segment": target})).collect();
        parse(&json!({"operator": "OR", "conditions": refs}))
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn a_chain_of_ors_of_references_counts_each_segment_once() {
        // s1 is one leaf; s2..s4 are ORs of 900 references to the previous:
        // 900³ leaves if expanded, 1 + 3 × 901 nodes as a graph.
        let s1 = parse(&json!({"field": "plan", "op": "eq", "value": "pro"}))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let s2 = or_of_refs("s1", 900);
        let s3 = or_of_refs("s2", 900);
        let s4 = or_of_refs("s3", 900);
        let lookup = |id: &str| match id {
            "s1" => Some(&s1),
            "s2" => Some(&s2),
            "s3" => Some(&s3),
            _ => None,
        };
        assert_eq!(
            reference_graph(&s4, &lookup),
            ReferenceGraph {
                nodes: 901 * 3 + 1,
                chain: 3
            }
        );
        assert_eq!(
            reference_graph(&s1, &lookup),
            ReferenceGraph { nodes: 1, chain: 0 }
        );
    }

    #[test]
    fn the_chain_is_the_longest_path_not_the_first() {
        let leaf = parse(&json!({"field": "plan", "op": "eq", "value": "pro"}))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let b = parse(&json!({"segment": "a"})).unwrap_or_else(|e| unreachable!("{e}"));
        let c = parse(&json!({"segment": "b"})).unwrap_or_else(|e| unreachable!("{e}"));
        let root =
            parse(&json!({"operator": "AND", "conditions": [{"segment": "a"}, {"segment": "c"}]}))
                .unwrap_or_else(|e| unreachable!("{e}"));
        let lookup = |id: &str| match id {
            "a" => Some(&leaf),
            "b" => Some(&b),
            "c" => Some(&c),
            _ => None,
        };
        assert_eq!(reference_graph(&root, &lookup).chain, 3);
    }
}
