//! The Node-specific steps of the registry's writes.
//!
//! podCIDRs: every block a stored Node has (`spec.podCIDRs`, or `spec.podCIDR` alone) is
//! reserved in the allocator under its `(name, uid)`, and no two Nodes have overlapping
//! blocks. A create, or an update that sets a podCIDR, reserves the new blocks under the
//! allocator lock before the object is written (so of two concurrent writes with overlapping
//! blocks exactly one gets it; the other is refused with 422), and gives them back if the write
//! fails; a delete releases the deleted object's blocks. At start-up the allocator is rebuilt
//! from every stored Node. Upstream's range allocator occupies a node's own podCIDR the same
//! way, but does not refuse a clash; here a clash is refused because nothing could undo it.
//! A block outside `--cluster-cidr` is reserved nowhere but still may not overlap another
//! node's.
//!
//! NodeRestriction: when a node's own request is being served ([`crate::auth::requesting_node`]),
//! [`crate::auth::admit_node_write`] checks the object about to be written against the stored one.

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use sluice_store::Store;

use super::{causes, str_at, Part, Registry};
use crate::alloc::{parse_cidr_sloppy, AllocError, Holder, PodCidrs};
use crate::resources::{self, Resource};
use crate::status::{ApiError, ApiResult};

/// The node whose own request the caller is serving, when it writes a Node.
pub(super) fn writer(res: &Resource) -> Option<String> {
    res.strategy
        .node_restricted_writes()
        .then(crate::auth::requesting_node)
        .flatten()
}

/// NodeRestriction on a node's write of a Node's main resource. Status writes keep the stored
/// labels and spec, so there is nothing to check for them.
pub(super) fn admit(
    writer: Option<&str>,
    res: &Resource,
    name: &str,
    old: Option<&Value>,
    new: &Value,
    part: Part,
) -> ApiResult<()> {
    match writer {
        Some(node) if part == Part::Main => {
            crate::auth::admit_node_write(node, res, name, old, new)
        }
        _ => Ok(()),
    }
}

fn holder_of(v: &Value) -> Holder {
    Holder::new(
        str_at(v, "/metadata/name").unwrap_or(""),
        str_at(v, "/metadata/uid").unwrap_or(""),
    )
}

/// The podCIDR strings of a Node: `spec.podCIDRs`, or `spec.podCIDR` when that list is empty.
fn cidr_strings(v: &Value) -> Vec<String> {
    let list: Vec<String> = v
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str())
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !list.is_empty() {
        return list;
    }
    str_at(v, "/spec/podCIDR")
        .filter(|c| !c.is_empty())
        .map(|c| vec![c.to_string()])
        .unwrap_or_default()
}

/// The parsed podCIDR blocks of a Node (unparseable entries are validation's to refuse).
pub(super) fn cidrs_of(v: &Value) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = cidr_strings(v)
        .iter()
        .filter_map(|c| parse_cidr_sloppy(c))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The claims one Node write took on the blocks it adds, and the blocks it gives up once
/// stored. Stored, its claims are the object's; failed, they are given back.
#[derive(Debug, Default)]
pub struct CidrTx {
    holder: Option<Holder>,
    taken: Vec<IpNet>,
    freed: Vec<IpNet>,
}

impl super::strategy::Held for CidrTx {
    /// The write failed or was not made: give back what it reserved.
    fn rollback(&self, reg: &Registry) {
        self.release(reg, &self.taken);
    }

    /// The write is stored: release what the object no longer has.
    fn commit(&self, reg: &Registry) {
        self.release(reg, &self.freed);
    }
}

impl CidrTx {
    fn release(&self, reg: &Registry, nets: &[IpNet]) {
        let Some(h) = &self.holder else { return };
        if nets.is_empty() {
            return;
        }
        let mut a = reg.allocators();
        for n in nets {
            a.pod_cidrs.release(h, *n);
        }
    }
}

/// Reserves the podCIDR blocks `new` has and `old` (the stored object; `None` on create) has
/// not, all or nothing; 422 naming `spec.podCIDRs` and the other node when one overlaps a
/// block another Node has.
fn reserve(
    reg: &Registry,
    res: &Resource,
    name: &str,
    old: Option<&Value>,
    new: &Value,
) -> ApiResult<CidrTx> {
    let holder = holder_of(old.unwrap_or(new));
    let before = old.map(cidrs_of).unwrap_or_default();
    let after = cidrs_of(new);
    let mut tx = CidrTx {
        holder: Some(holder.clone()),
        taken: Vec::new(),
        freed: before
            .iter()
            .filter(|n| !after.contains(n))
            .copied()
            .collect(),
    };
    let mut a = reg.allocators();
    for net in after.iter().filter(|n| !before.contains(n)) {
        match a.pod_cidrs.hold(&holder, *net) {
            Ok(()) => tx.taken.push(*net),
            Err(e) => {
                for n in &tx.taken {
                    a.pod_cidrs.release(&holder, *n);
                }
                drop(a);
                let given = cidr_strings(new);
                return Err(ApiError::invalid(
                    res,
                    name,
                    causes(vec![sluice_validation::FieldError::invalid(
                        "spec.podCIDRs",
                        Value::from(given),
                        e.to_string(),
                    )]),
                ));
            }
        }
    }
    Ok(tx)
}

/// Releases a deleted Node's blocks.
fn release_deleted(reg: &Registry, v: &Value) {
    let holder = holder_of(v);
    let mut a = reg.allocators();
    for n in cidrs_of(v) {
        a.pod_cidrs.release(&holder, n);
    }
}

/// Rebuilds the podCIDR reservations from every stored Node, in name order. Nodes an older
/// version let overlap are all recorded (the first by name is the one that keeps the block;
/// the clash is logged), so the block is never handed out while any of them remains.
pub(super) fn rebuild(cidrs: &mut PodCidrs, store: &dyn Store) {
    let nodes = resources::by_kind("Node");
    for s in store.list(&nodes.prefix()).0 {
        let Ok(v) = s.value() else { continue };
        let holder = holder_of(&v);
        for c in cidr_strings(&v) {
            let Some(net) = parse_cidr_sloppy(&c) else {
                tracing::warn!(node = %holder.name, pod_cidr = %c, "stored podCIDR does not parse; not reserved");
                continue;
            };
            if let Some(clash) = cidrs.occupy(&holder, net) {
                tracing::error!(
                    node = %holder.name,
                    pod_cidr = %net,
                    error = %clash,
                    "stored Nodes have overlapping podCIDRs; the first by name keeps the block, which stays reserved while either Node exists"
                );
            }
        }
    }
}

impl Registry {
    /// Reserves the lowest free podCIDR slot for a node (the node IPAM controller's step,
    /// before it writes the block to the Node, whose write then takes its own claim). The
    /// caller gives this claim back with [`Registry::release_pod_cidr`] once the write is done,
    /// whether it succeeded or not.
    pub(crate) fn allocate_pod_cidr(&self, holder: &Holder) -> Result<Ipv4Net, AllocError> {
        self.allocators().pod_cidrs.allocate_next(holder)
    }

    /// Gives back the claim [`Registry::allocate_pod_cidr`] took.
    pub(crate) fn release_pod_cidr(&self, holder: &Holder, c: Ipv4Net) {
        self.allocators().pod_cidrs.release(holder, IpNet::V4(c))
    }
}

/// The Node strategy: podCIDR reservations and NodeRestriction on a node's own writes.
#[derive(Debug)]
pub struct NodeStrategy;

impl super::strategy::Strategy for NodeStrategy {
    fn reserve(
        &self,
        reg: &Registry,
        res: &Resource,
        name: &str,
        old: Option<&Value>,
        new: &mut Value,
    ) -> ApiResult<Box<dyn super::strategy::Held>> {
        Ok(Box::new(reserve(reg, res, name, old, new)?))
    }

    fn release_deleted(&self, reg: &Registry, v: &Value) {
        release_deleted(reg, v);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn node_allowed(&self, r: &super::strategy::NodeRequest<'_>) -> bool {
        matches!(r.sub, None | Some("status"))
            && (r.is_read()
                || (matches!(r.verb, "create" | "update" | "patch") && r.name == Some(r.node)))
    }

    fn node_restricted_writes(&self) -> bool {
        true
    }
}

/// Leases: a node renews its own heartbeat Lease in `kube-node-lease`.
#[derive(Debug)]
pub struct LeaseStrategy;

impl super::strategy::Strategy for LeaseStrategy {
    fn node_allowed(&self, r: &super::strategy::NodeRequest<'_>) -> bool {
        r.sub.is_none()
            && r.ns == Some("kube-node-lease")
            && r.name == Some(r.node)
            && matches!(r.verb, "get" | "create" | "update" | "patch" | "delete")
    }
}
