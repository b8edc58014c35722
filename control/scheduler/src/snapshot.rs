//! The scheduler's view of the cluster, updated one object at a time.
//!
//! Nodes are kept by name with what the filters need; per node the snapshot
//! keeps running sums of what its pods use, and per pod the exact amount it
//! added, so an update or delete subtracts precisely that contribution and
//! nothing is ever recomputed by scanning all pods.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use crate::resources::{self, BadQuantity, Resources};
use crate::Error;

/// Pod phases after which a pod holds no resources on its node.
const TERMINAL_PHASES: [&str; 2] = ["Succeeded", "Failed"];

/// What the scheduler knows about one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeEntry {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) taints: Vec<Taint>,
    pub(crate) unschedulable: bool,
    pub(crate) allocatable: Resources,
    /// status.allocatable["pods"]; a node that reports none fits no pod.
    pub(crate) allowed_pods: i64,
}

/// A host port a pod binds, normalised as upstream's `HostPortInfo` does
/// (empty IP is 0.0.0.0, empty protocol is TCP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HostPort {
    pub(crate) ip: String,
    pub(crate) protocol: String,
    pub(crate) port: i32,
}

impl HostPort {
    /// Two bindings clash on the same protocol and port when either is the
    /// wildcard address or the addresses are equal.
    pub(crate) fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// Running totals over the non-terminal pods bound (or assumed) to a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeUsage {
    /// Sum of the pods' effective requests.
    pub requested: Resources,
    /// Sum of the pods' CPU requests with the 100m default for containers
    /// that request none (what LeastAllocated scores with).
    pub non_zero_milli_cpu: i64,
    /// Sum of the pods' memory requests with the 200Mi default.
    pub non_zero_memory: i64,
    /// Number of pods.
    pub pods: i64,
    /// Pods per controlling owner UID (pods being deleted not counted, as
    /// upstream's spreading skips terminating pods).
    pub owners: HashMap<String, i64>,
    /// Host ports in use, with how many pods bind each.
    pub(crate) host_ports: HashMap<HostPort, i64>,
}

impl NodeUsage {
    fn apply(&mut self, c: &Contribution, sign: i64) {
        if sign > 0 {
            self.requested.add(&c.requested);
        } else {
            self.requested.sub(&c.requested);
        }
        self.non_zero_milli_cpu = self
            .non_zero_milli_cpu
            .saturating_add(sign * c.non_zero_milli_cpu);
        self.non_zero_memory = self
            .non_zero_memory
            .saturating_add(sign * c.non_zero_memory);
        self.pods += sign;
        if let Some(owner) = &c.owner {
            bump(&mut self.owners, owner.clone(), sign);
        }
        for p in &c.host_ports {
            bump(&mut self.host_ports, p.clone(), sign);
        }
    }

    fn is_empty(&self) -> bool {
        self.pods == 0
    }
}

/// Adds `sign` to a counter, dropping it at zero so maps do not grow with
/// churn.
fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, i64>, key: K, sign: i64) {
    let e = map.entry(key);
    match e {
        std::collections::hash_map::Entry::Occupied(mut o) => {
            *o.get_mut() += sign;
            if *o.get() <= 0 {
                o.remove();
            }
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            if sign > 0 {
                v.insert(sign);
            }
        }
    }
}

/// What one pod added to its node's usage, remembered so that it can be
/// taken back exactly.
#[derive(Clone, Debug, PartialEq)]
struct Contribution {
    node: String,
    requested: Resources,
    non_zero_milli_cpu: i64,
    non_zero_memory: i64,
    owner: Option<String>,
    host_ports: Vec<HostPort>,
    /// Placed by [`Snapshot::assume`] and not yet seen bound in the store.
    assumed: bool,
}

/// An incrementally maintained view of nodes and the pods placed on them.
///
/// Feed it every node and pod event (`upsert_*` for add/update,
/// `remove_*` for delete); after binding a pod, call [`Snapshot::assume`]
/// so the next decision already counts it. Pods are keyed by
/// namespace/name, so an update replaces the pod's previous contribution.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Ordered by name so every pass over nodes is deterministic.
    pub(crate) nodes: BTreeMap<String, NodeEntry>,
    /// Kept apart from `nodes`: pods may name a node the snapshot has not
    /// seen yet, or one just deleted, and their usage must survive that.
    pub(crate) usage: HashMap<String, NodeUsage>,
    pods: HashMap<(String, String), Contribution>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Adds or replaces a node. On error (no name, or an allocatable
    /// quantity that does not parse) the snapshot is unchanged.
    pub fn upsert_node(&mut self, node: &Node) -> Result<(), Error> {
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(Error::MissingName { kind: "Node" })?;
        let allocatable_list = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let bad = |b: BadQuantity| Error::from_bad_quantity("Node", &name, b);
        let allocatable = resources::from_list(allocatable_list).map_err(bad)?;
        let allowed_pods = match allocatable_list.and_then(|l| l.get("pods")) {
            Some(q) => resources::quantity_value("pods", q).map_err(bad)?,
            None => 0,
        };
        let spec = node.spec.as_ref();
        let entry = NodeEntry {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable,
            allowed_pods,
        };
        self.nodes.insert(name, entry);
        Ok(())
    }

    /// Removes a node. Usage of pods still bound to it is kept until those
    /// pods are removed, so a node that comes back is accounted correctly.
    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Adds, replaces or drops a pod's contribution according to its
    /// current state: bound (spec.nodeName set) and not Succeeded/Failed
    /// pods count on their node; anything else counts nowhere.
    ///
    /// An update that shows the pod still unbound does not undo an
    /// [`assume`](Snapshot::assume): the store may deliver the pre-binding
    /// version after the scheduler has bound it. On error (a request that
    /// does not parse) the snapshot is unchanged.
    pub fn upsert_pod(&mut self, pod: &Pod) -> Result<(), Error> {
        let key = pod_key(pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let terminal = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| TERMINAL_PHASES.contains(&p));
        match node {
            Some(node) if !terminal => {
                let c = contribution(pod, &key, node, false)?;
                self.replace(key, Some(c));
            }
            None if !terminal && self.pods.get(&key).is_some_and(|c| c.assumed) => {}
            _ => self.replace(key, None),
        }
        Ok(())
    }

    /// Removes a deleted pod's contribution (assumed or not).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.replace((namespace.to_string(), name.to_string()), None);
    }

    /// Counts `pod` on `node` right away, before the store shows the
    /// binding; the later [`upsert_pod`](Snapshot::upsert_pod) of the bound
    /// pod replaces this contribution. If the binding fails, call
    /// [`forget`](Snapshot::forget).
    pub fn assume(&mut self, pod: &Pod, node: &str) -> Result<(), Error> {
        let key = pod_key(pod);
        let c = contribution(pod, &key, node.to_string(), true)?;
        self.replace(key, Some(c));
        Ok(())
    }

    /// Drops an assumed pod whose binding failed; a pod already seen bound
    /// is left alone.
    pub fn forget(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if self.pods.get(&key).is_some_and(|c| c.assumed) {
            self.replace(key, None);
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node names in order.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// What the pods on `node` use, if any pod is counted there.
    pub fn usage(&self, node: &str) -> Option<&NodeUsage> {
        self.usage.get(node)
    }

    /// The node a pod is counted on (bound or assumed).
    pub fn pod_node(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|c| c.node.as_str())
    }

    /// Swaps a pod's contribution: subtract the old one, add the new one.
    fn replace(&mut self, key: (String, String), new: Option<Contribution>) {
        if let Some(old) = self.pods.remove(&key) {
            if let Some(u) = self.usage.get_mut(&old.node) {
                u.apply(&old, -1);
                if u.is_empty() {
                    self.usage.remove(&old.node);
                }
            }
        }
        if let Some(c) = new {
            self.usage.entry(c.node.clone()).or_default().apply(&c, 1);
            self.pods.insert(key, c);
        }
    }
}

/// namespace/name of a pod.
pub(crate) fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The UID of the pod's controlling owner, if any.
pub(crate) fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// The host ports a pod binds: app containers and sidecars (restartable
/// init containers keep their ports for the pod's lifetime).
pub(crate) fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|hp| *hp > 0)?;
            Some(HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".to_string()),
                protocol: p
                    .protocol
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "TCP".to_string()),
                port,
            })
        })
        .collect()
}

fn contribution(
    pod: &Pod,
    key: &(String, String),
    node: String,
    assumed: bool,
) -> Result<Contribution, Error> {
    let reqs = match pod.spec.as_ref() {
        Some(spec) => resources::pod_requests(spec)
            .map_err(|b| Error::from_bad_quantity("Pod", &format!("{}/{}", key.0, key.1), b))?,
        None => Default::default(),
    };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    Ok(Contribution {
        node,
        requested: reqs.requests,
        non_zero_milli_cpu: reqs.non_zero_milli_cpu,
        non_zero_memory: reqs.non_zero_memory,
        owner: controller_uid(pod)
            .filter(|_| !deleting)
            .map(str::to_string),
        host_ports: host_ports(pod),
        assumed,
    })
}
