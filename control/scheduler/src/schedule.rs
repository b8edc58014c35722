//! One scheduling decision: filter every node, score the feasible ones,
//! pick the best, or explain why none fits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Taint};

use crate::affinity::{self, NamedNodes, NodeView};
use crate::resources::{self, PodRequests};
use crate::snapshot::{self, HostPort, NodeEntry, NodeUsage, Snapshot};
use crate::taints::{self, EFFECT_NO_EXECUTE, EFFECT_NO_SCHEDULE, EFFECT_PREFER_NO_SCHEDULE};

/// Highest score one plugin gives a node (`framework.MaxNodeScore`).
const MAX_NODE_SCORE: i64 = 100;

/// Default score-plugin weights (kube-scheduler's default profile).
const WEIGHT_TAINT_TOLERATION: i64 = 3;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_POD_TOPOLOGY_SPREAD: i64 = 2;
const WEIGHT_LEAST_ALLOCATED: i64 = 1;
const WEIGHT_BALANCED_ALLOCATION: i64 = 1;

/// Topology label of the zone spreading constraint.
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// maxSkew of the system-default hostname and zone spreading constraints.
const MAX_SKEW_HOSTNAME: i64 = 3;
const MAX_SKEW_ZONE: i64 = 5;

/// The message for a snapshot without nodes (`ErrNoNodesAvailable`).
pub const NO_NODES_MESSAGE: &str = "no nodes available to schedule pods";

/// Why one node cannot take the pod; `Display` is upstream's reason text,
/// which is what the aggregated message counts.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// NodeUnschedulable: the node is cordoned and the pod does not
    /// tolerate `node.kubernetes.io/unschedulable:NoSchedule`.
    Unschedulable,
    /// NodeName: spec.nodeName names another node.
    NodeName,
    /// TaintToleration: a NoSchedule or NoExecute taint the pod does not
    /// tolerate (the first one found). Since Kubernetes 1.35 the message no
    /// longer shows the taint, as keys and values may be sensitive; it is
    /// kept here for logs.
    UntoleratedTaint(Taint),
    /// NodeAffinity: spec.nodeSelector or the required node affinity does
    /// not match.
    NodeAffinity,
    /// The required node affinity names other nodes by `metadata.name`, so
    /// this node was never evaluated (upstream PreFilter result).
    NotNamedByAffinity,
    /// NodePorts: a requested host port is taken.
    HostPorts,
    /// NodeResourcesFit: the node already runs as many pods as it allows.
    TooManyPods,
    /// NodeResourcesFit: not enough of this resource is left.
    Insufficient(String),
}

impl Reason {
    /// Whether evicting lower-priority pods could make room. Upstream marks
    /// the resource and port failures `Unschedulable` and the others
    /// `UnschedulableAndUnresolvable`; preemption only looks at the former.
    pub fn resolvable_by_preemption(&self) -> bool {
        matches!(
            self,
            Reason::HostPorts | Reason::TooManyPods | Reason::Insufficient(_)
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::UntoleratedTaint(_) => f.write_str("node(s) had untolerated taint(s)"),
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::NotNamedByAffinity => {
                f.write_str("node(s) didn't satisfy plugin(s) [NodeAffinity]")
            }
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
        }
    }
}

/// Upstream's per-node preemption verdict for a node that failed only on
/// resources or ports when no pod has lower priority than the incoming one.
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Upstream's per-node preemption verdict for failures eviction cannot fix.
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// No node can take the pod: the per-node reasons, formatted like
/// kube-scheduler's `FitError`.
#[derive(Clone, Debug, PartialEq)]
pub struct Unschedulable {
    /// Nodes in the snapshot.
    pub num_nodes: usize,
    /// A rejection of the pod itself before any node was looked at (a
    /// request that does not parse, node-name affinity terms that
    /// contradict each other); every node then failed for this reason.
    pub pod_reason: Option<String>,
    /// For every node (empty when `pod_reason` is set), why it failed: the
    /// reasons of the first filter that rejected it (NodeResourcesFit may
    /// give several).
    pub node_reasons: BTreeMap<String, Vec<Reason>>,
    /// The pod has `preemptionPolicy: Never`.
    pub preemption_never: bool,
}

impl Unschedulable {
    /// The event / PodScheduled condition message, as upstream formats it:
    /// `0/N nodes are available: <count> <reason>, ... preemption: ...`
    /// with reasons counted over nodes and sorted as strings.
    ///
    /// The `preemption:` part is what upstream's DefaultPreemption
    /// PostFilter reports when it finds no candidate. We never preempt,
    /// which is what upstream does when no running pod has a lower priority
    /// than the incoming one (the usual case without PriorityClasses):
    /// nodes rejected only for resources or ports then report `No preemption
    /// victims found for incoming pod`, all others `Preemption is not
    /// helpful for scheduling`, and a pod with `preemptionPolicy: Never`
    /// gets `not eligible due to preemptionPolicy=Never.`
    pub fn message(&self) -> String {
        if self.num_nodes == 0 {
            return NO_NODES_MESSAGE.to_string();
        }
        let mut msg = format!("0/{} nodes are available:", self.num_nodes);
        let mut preemption: BTreeMap<&str, usize> = BTreeMap::new();
        if let Some(reason) = &self.pod_reason {
            msg.push_str(&format!(" {reason}."));
            preemption.insert(NOT_HELPFUL, self.num_nodes);
        } else {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for reasons in self.node_reasons.values() {
                for r in reasons {
                    *counts.entry(r.to_string()).or_default() += 1;
                }
                let verdict = if reasons.iter().all(Reason::resolvable_by_preemption) {
                    NO_VICTIMS
                } else {
                    NOT_HELPFUL
                };
                *preemption.entry(verdict).or_default() += 1;
            }
            if !counts.is_empty() {
                msg.push_str(&format!(" {}.", histogram(counts)));
            }
        }
        if self.preemption_never {
            msg.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
        } else {
            msg.push_str(&format!(
                " preemption: 0/{} nodes are available: {}.",
                self.num_nodes,
                histogram(preemption)
            ));
        }
        msg
    }
}

/// `"<count> <reason>"` entries sorted as strings (so "10 x" sorts before
/// "2 y", exactly as upstream's sort.Strings does) and joined with ", ".
fn histogram<K: fmt::Display>(counts: BTreeMap<K, usize>) -> String {
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    parts.sort();
    parts.join(", ")
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Unschedulable {}

/// Everything about the pod that filters and scores need, computed once
/// per decision rather than once per node.
struct PodFacts<'a> {
    spec: &'a PodSpec,
    requests: PodRequests,
    host_ports: Vec<HostPort>,
    owner: Option<&'a str>,
    node_name: Option<&'a str>,
    tolerates_unschedulable: bool,
    /// Tolerations that can tolerate PreferNoSchedule (effect empty or
    /// PreferNoSchedule), the only ones TaintToleration scores with.
    prefer_tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}

/// Picks a node for `pod`, as kube-scheduler's default profile would.
///
/// Filters, in upstream order, stopping at the first that rejects a node:
/// NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodePorts,
/// NodeResourcesFit. Every node is evaluated (upstream also scores all
/// nodes in clusters of up to 100 nodes).
///
/// Scores (weight): TaintToleration (3), NodeAffinity preferred terms (2),
/// PodTopologySpread's system defaults over pods with the same controlling
/// owner (2), NodeResourcesFit LeastAllocated on cpu and memory (1),
/// NodeResourcesBalancedAllocation (1).
///
/// Ties: upstream picks at random among the best nodes; here the tied node
/// with the smallest FNV-1a hash of (pod UID, or namespace/name without a
/// UID; node name) wins, so a decision is reproducible for the same
/// snapshot while different pods still fan out over equal nodes.
pub fn schedule(snapshot: &Snapshot, pod: &Pod) -> Result<String, Unschedulable> {
    let num_nodes = snapshot.nodes.len();
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let mut failure = Unschedulable {
        num_nodes,
        pod_reason: None,
        node_reasons: BTreeMap::new(),
        preemption_never: spec.preemption_policy.as_deref() == Some("Never"),
    };
    if num_nodes == 0 {
        return Err(failure);
    }
    let requests = match resources::pod_requests(spec) {
        Ok(r) => r,
        Err(b) => {
            failure.pod_reason = Some(format!(
                "pod has an invalid quantity {:?} for {}: {}",
                b.value, b.resource, b.reason
            ));
            return Err(failure);
        }
    };
    let named = match affinity::named_nodes(spec) {
        NamedNodes::All => None,
        NamedNodes::Only(names) => Some(names),
        NamedNodes::Conflict => {
            failure.pod_reason = Some("pod affinity terms conflict".to_string());
            return Err(failure);
        }
    };
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let unschedulable_taint = Taint {
        key: taints::TAINT_NODE_UNSCHEDULABLE.to_string(),
        effect: EFFECT_NO_SCHEDULE.to_string(),
        ..Default::default()
    };
    let facts = PodFacts {
        spec,
        requests,
        host_ports: snapshot::host_ports(pod),
        owner: snapshot::controller_uid(pod),
        node_name: spec.node_name.as_deref().filter(|n| !n.is_empty()),
        tolerates_unschedulable: taints::tolerated_by_any(tolerations, &unschedulable_taint),
        prefer_tolerations: tolerations
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some(EFFECT_PREFER_NO_SCHEDULE)
                )
            })
            .cloned()
            .collect(),
    };

    let empty = NodeUsage::default();
    let mut feasible: Vec<(&str, &NodeEntry, &NodeUsage)> = Vec::new();
    for (name, node) in &snapshot.nodes {
        let usage = snapshot.usage.get(name).unwrap_or(&empty);
        let verdict = match &named {
            Some(names) if !names.contains(name) => Err(vec![Reason::NotNamedByAffinity]),
            _ => filter(&facts, name, node, usage),
        };
        match verdict {
            Ok(()) => feasible.push((name, node, usage)),
            Err(reasons) => {
                failure.node_reasons.insert(name.clone(), reasons);
            }
        }
    }
    if feasible.is_empty() {
        return Err(failure);
    }
    if feasible.len() == 1 {
        return Ok(feasible[0].0.to_string());
    }

    let scores = score(snapshot, &facts, &feasible);
    let best = scores.iter().copied().max().unwrap_or(0);
    let tie_key = tie_key(pod);
    feasible
        .iter()
        .zip(&scores)
        .filter(|(_, s)| **s == best)
        .min_by_key(|((name, _, _), _)| (tie_hash(&tie_key, name), *name))
        .map(|((name, _, _), _)| name.to_string())
        .ok_or(failure)
}

/// Runs the filters on one node; the error holds the first failing
/// filter's reasons.
fn filter(
    pod: &PodFacts<'_>,
    name: &str,
    node: &NodeEntry,
    usage: &NodeUsage,
) -> Result<(), Vec<Reason>> {
    // NodeUnschedulable
    if node.unschedulable && !pod.tolerates_unschedulable {
        return Err(vec![Reason::Unschedulable]);
    }
    // NodeName
    if pod.node_name.is_some_and(|n| n != name) {
        return Err(vec![Reason::NodeName]);
    }
    // TaintToleration: only NoSchedule and NoExecute taints keep pods off.
    let tolerations = pod.spec.tolerations.as_deref().unwrap_or_default();
    if let Some(t) = node.taints.iter().find(|t| {
        (t.effect == EFFECT_NO_SCHEDULE || t.effect == EFFECT_NO_EXECUTE)
            && !taints::tolerated_by_any(tolerations, t)
    }) {
        return Err(vec![Reason::UntoleratedTaint(t.clone())]);
    }
    // NodeAffinity
    let view = NodeView {
        name,
        labels: &node.labels,
    };
    if !affinity::matches_required(pod.spec, &view) {
        return Err(vec![Reason::NodeAffinity]);
    }
    // NodePorts
    if pod
        .host_ports
        .iter()
        .any(|want| usage.host_ports.keys().any(|used| want.conflicts(used)))
    {
        return Err(vec![Reason::HostPorts]);
    }
    // NodeResourcesFit
    let reasons = fit(&pod.requests.requests, node, usage);
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// NodeResourcesFit's checks, all reported together, in upstream order.
fn fit(want: &resources::Resources, node: &NodeEntry, usage: &NodeUsage) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if usage.pods.saturating_add(1) > node.allowed_pods {
        reasons.push(Reason::TooManyPods);
    }
    if want.is_zero() {
        return reasons;
    }
    let have = &node.allocatable;
    let used = &usage.requested;
    let short = |want: i64, have: i64, used: i64| want > 0 && want > have.saturating_sub(used);
    if short(want.milli_cpu, have.milli_cpu, used.milli_cpu) {
        reasons.push(Reason::Insufficient("cpu".to_string()));
    }
    if short(want.memory, have.memory, used.memory) {
        reasons.push(Reason::Insufficient("memory".to_string()));
    }
    if short(
        want.ephemeral_storage,
        have.ephemeral_storage,
        used.ephemeral_storage,
    ) {
        reasons.push(Reason::Insufficient("ephemeral-storage".to_string()));
    }
    for (name, amount) in &want.scalar {
        let have = have.scalar.get(name).copied().unwrap_or(0);
        let used = used.scalar.get(name).copied().unwrap_or(0);
        if short(*amount, have, used) {
            reasons.push(Reason::Insufficient(name.clone()));
        }
    }
    reasons
}

/// Weighted sum of the normalised plugin scores for each feasible node.
fn score(
    snapshot: &Snapshot,
    pod: &PodFacts<'_>,
    feasible: &[(&str, &NodeEntry, &NodeUsage)],
) -> Vec<i64> {
    let n = feasible.len();
    let mut total = vec![0i64; n];
    let mut add = |weight: i64, scores: Vec<i64>| {
        for (t, s) in total.iter_mut().zip(scores) {
            *t += weight * s;
        }
    };

    // TaintToleration: fewer intolerable PreferNoSchedule taints is better.
    let raw = feasible
        .iter()
        .map(|(_, node, _)| {
            node.taints
                .iter()
                .filter(|t| {
                    t.effect == EFFECT_PREFER_NO_SCHEDULE
                        && !taints::tolerated_by_any(&pod.prefer_tolerations, t)
                })
                .count() as i64
        })
        .collect();
    add(WEIGHT_TAINT_TOLERATION, default_normalize(raw, true));

    // NodeAffinity preferred terms.
    if affinity::has_preferred(pod.spec) {
        let raw = feasible
            .iter()
            .map(|(name, node, _)| {
                affinity::preferred_weight(
                    pod.spec,
                    &NodeView {
                        name,
                        labels: &node.labels,
                    },
                )
            })
            .collect();
        add(WEIGHT_NODE_AFFINITY, default_normalize(raw, false));
    }

    // PodTopologySpread with the system-default constraints.
    if let Some(owner) = pod.owner {
        add(
            WEIGHT_POD_TOPOLOGY_SPREAD,
            spread_scores(snapshot, pod, owner, feasible),
        );
    }

    // LeastAllocated and BalancedAllocation.
    let req = &pod.requests;
    let least = feasible
        .iter()
        .map(|(_, node, usage)| {
            let cpu = least_requested(
                usage
                    .non_zero_milli_cpu
                    .saturating_add(req.non_zero_milli_cpu),
                node.allocatable.milli_cpu,
            );
            let mem = least_requested(
                usage.non_zero_memory.saturating_add(req.non_zero_memory),
                node.allocatable.memory,
            );
            // Resources a node has none of are left out of the average.
            match (cpu, mem) {
                (Some(c), Some(m)) => (c + m) / 2,
                (Some(s), None) | (None, Some(s)) => s,
                (None, None) => 0,
            }
        })
        .collect();
    add(WEIGHT_LEAST_ALLOCATED, least);
    let balanced = feasible
        .iter()
        .map(|(_, node, usage)| {
            let fractions: Vec<f64> = [
                (
                    usage
                        .requested
                        .milli_cpu
                        .saturating_add(req.requests.milli_cpu),
                    node.allocatable.milli_cpu,
                ),
                (
                    usage.requested.memory.saturating_add(req.requests.memory),
                    node.allocatable.memory,
                ),
            ]
            .into_iter()
            .filter(|(_, cap)| *cap != 0)
            .map(|(used, cap)| (used as f64 / cap as f64).min(1.0))
            .collect();
            let std = match fractions.as_slice() {
                [a, b] => ((a - b) / 2.0).abs(),
                _ => 0.0,
            };
            ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
        })
        .collect();
    add(WEIGHT_BALANCED_ALLOCATION, balanced);
    total
}

/// `(capacity - requested) * 100 / capacity`, 0 when over capacity; `None`
/// when the node has none of the resource.
fn least_requested(requested: i64, capacity: i64) -> Option<i64> {
    if capacity == 0 {
        return None;
    }
    if requested > capacity {
        return Some(0);
    }
    let s = (i128::from(capacity - requested) * i128::from(MAX_NODE_SCORE)) / i128::from(capacity);
    Some(s as i64)
}

/// Upstream `helper.DefaultNormalizeScore`: scale to 0..=100 by the
/// maximum, optionally reversed (all 100 when every score is 0).
fn default_normalize(mut scores: Vec<i64>, reverse: bool) -> Vec<i64> {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return scores;
    }
    for s in &mut scores {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
    scores
}

/// PodTopologySpread scores under the system-default constraints
/// (hostname maxSkew 3, zone maxSkew 5, both ScheduleAnyway), counting
/// pods with the same controlling owner where upstream counts pods matched
/// by the owner's selector.
///
/// Per node: Σ over constraints of `count * ln(domains + 2) + (maxSkew - 1)`
/// (zone term only for nodes with a zone label), rounded; then normalised
/// so the emptiest domain gets 100: `100 * (max + min - s) / max`. The node
/// name stands in for its hostname label.
fn spread_scores(
    snapshot: &Snapshot,
    pod: &PodFacts<'_>,
    owner: &str,
    feasible: &[(&str, &NodeEntry, &NodeUsage)],
) -> Vec<i64> {
    let owned = |u: &NodeUsage| u.owners.get(owner).copied().unwrap_or(0);
    let zones: BTreeSet<&str> = feasible
        .iter()
        .filter_map(|(_, node, _)| node.labels.get(LABEL_ZONE).map(String::as_str))
        .collect();
    // Zone totals come from every node in those zones that the pod's
    // required affinity allows, not only the feasible ones.
    let mut zone_counts: HashMap<&str, i64> = HashMap::new();
    if !zones.is_empty() {
        for (name, node) in &snapshot.nodes {
            let Some(zone) = node.labels.get(LABEL_ZONE).map(String::as_str) else {
                continue;
            };
            if !zones.contains(zone)
                || !affinity::matches_required(
                    pod.spec,
                    &NodeView {
                        name,
                        labels: &node.labels,
                    },
                )
            {
                continue;
            }
            let c = snapshot.usage.get(name).map_or(0, owned);
            *zone_counts.entry(zone).or_default() += c;
        }
    }
    let host_weight = ((feasible.len() + 2) as f64).ln();
    let zone_weight = ((zones.len() + 2) as f64).ln();
    let raw: Vec<i64> = feasible
        .iter()
        .map(|(_, node, usage)| {
            let mut s = owned(usage) as f64 * host_weight + (MAX_SKEW_HOSTNAME - 1) as f64;
            if let Some(zone) = node.labels.get(LABEL_ZONE) {
                let c = zone_counts.get(zone.as_str()).copied().unwrap_or(0);
                s += c as f64 * zone_weight + (MAX_SKEW_ZONE - 1) as f64;
            }
            s.round() as i64
        })
        .collect();
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.into_iter()
        .map(|s| {
            if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - s) / max
            }
        })
        .collect()
}

/// The pod's identity for tie-breaking: its UID, else namespace/name.
fn tie_key(pod: &Pod) -> String {
    match pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => uid.to_string(),
        None => {
            let (ns, name) = snapshot::pod_key(pod);
            format!("{ns}/{name}")
        }
    }
}

/// 64-bit FNV-1a over the pod key, a zero byte and the node name: stable
/// across runs, platforms and Rust versions (unlike `DefaultHasher`).
fn tie_hash(pod_key: &str, node: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    pod_key
        .bytes()
        .chain(std::iter::once(0))
        .chain(node.bytes())
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}
