//! Node selection by labels and fields: spec.nodeSelector and
//! spec.affinity.nodeAffinity, as component-helpers' `nodeaffinity` matches
//! them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// The only field a node selector term may match on.
const OBJECT_NAME_FIELD: &str = "metadata.name";

/// A node as affinity sees it.
pub(crate) struct NodeView<'a> {
    pub(crate) name: &'a str,
    pub(crate) labels: &'a BTreeMap<String, String>,
}

/// Whether the node satisfies spec.nodeSelector AND the required node
/// affinity (the NodeAffinity filter).
pub(crate) fn matches_required(spec: &PodSpec, node: &NodeView<'_>) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    if !selector_ok {
        return false;
    }
    match required_terms(spec) {
        // Terms are ORed; an empty list matches no node.
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

fn required_terms(spec: &PodSpec) -> Option<&Vec<NodeSelectorTerm>> {
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .map(|s| &s.node_selector_terms)
}

/// Sum of the weights of the preferred terms the node matches (the
/// NodeAffinity score before normalisation).
pub(crate) fn preferred_weight(spec: &PodSpec, node: &NodeView<'_>) -> i64 {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| p.weight != 0 && term_matches(&p.preference, node))
        .map(|p| i64::from(p.weight))
        .sum()
}

/// Whether the pod has any preferred node-affinity terms (otherwise
/// upstream skips the score).
pub(crate) fn has_preferred(spec: &PodSpec) -> bool {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|p| !p.is_empty())
}

/// The NodeAffinity PreFilter: when every required term names nodes with
/// `metadata.name In [...]`, only those nodes can match.
pub(crate) enum NamedNodes {
    /// Any node may match.
    All,
    /// Only these nodes may match.
    Only(BTreeSet<String>),
    /// The terms name disjoint node sets: nothing can match.
    Conflict,
}

/// Computes [`NamedNodes`] for the pod (upstream NodeAffinity.PreFilter).
pub(crate) fn named_nodes(spec: &PodSpec) -> NamedNodes {
    let Some(terms) = required_terms(spec) else {
        return NamedNodes::All;
    };
    let mut union: Option<BTreeSet<String>> = None;
    for term in terms {
        let mut term_names: Option<BTreeSet<String>> = None;
        for r in term.match_fields.iter().flatten() {
            if r.key == OBJECT_NAME_FIELD && r.operator == "In" {
                let s: BTreeSet<String> = r.values.iter().flatten().cloned().collect();
                // Requirements within a term are ANDed: intersect.
                term_names = Some(match term_names {
                    None => s,
                    Some(prev) => prev.intersection(&s).cloned().collect(),
                });
            }
        }
        // A term without a name requirement lets any node through, and
        // terms are ORed.
        let Some(names) = term_names else {
            return NamedNodes::All;
        };
        union.get_or_insert_with(BTreeSet::new).extend(names);
    }
    match union {
        None => NamedNodes::All,
        Some(u) if u.is_empty() => NamedNodes::Conflict,
        Some(u) => NamedNodes::Only(u),
    }
}

/// A term's expressions and fields are ANDed; a term with neither matches
/// nothing, and a term with an invalid requirement is skipped (matches
/// nothing), as upstream's lazy-error selector does.
fn term_matches(term: &NodeSelectorTerm, node: &NodeView<'_>) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| expression_matches(r, node.labels) == Some(true))
        && fields
            .iter()
            .all(|r| field_matches(r, node.name) == Some(true))
}

/// One label requirement; `None` when the requirement itself is invalid
/// (labels.NewRequirement's rules on the number of values).
fn expression_matches(
    r: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Option<bool> {
    let values = r.values.as_deref().unwrap_or_default();
    let label = labels.get(&r.key);
    match r.operator.as_str() {
        "In" | "NotIn" => {
            if values.is_empty() {
                return None;
            }
            let found = label.is_some_and(|l| values.contains(l));
            Some(if r.operator == "In" { found } else { !found })
        }
        "Exists" | "DoesNotExist" => {
            if !values.is_empty() {
                return None;
            }
            Some((r.operator == "Exists") == label.is_some())
        }
        "Gt" | "Lt" => {
            let [bound] = values else { return None };
            let bound: i64 = bound.parse().ok()?;
            // A label that is absent or not an integer never matches.
            let Some(v) = label.and_then(|l| l.parse::<i64>().ok()) else {
                return Some(false);
            };
            Some(if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            })
        }
        _ => None,
    }
}

/// One field requirement: only `metadata.name` with In/NotIn and exactly one
/// value is valid (the field-selector conversion upstream applies).
fn field_matches(r: &NodeSelectorRequirement, node_name: &str) -> Option<bool> {
    if r.key != OBJECT_NAME_FIELD {
        return None;
    }
    let [value] = r.values.as_deref().unwrap_or_default() else {
        return None;
    };
    match r.operator.as_str() {
        "In" => Some(node_name == value),
        "NotIn" => Some(node_name != value),
        _ => None,
    }
}
