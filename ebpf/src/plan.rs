//! The ebpf mode's planner, pure: what the service and backend maps should hold for the proxy
//! model ([`desired`]), and the ordered map operations that turn what they hold into that
//! ([`plan`]).
//!
//! Order is the point. A program may look a service up between any two writes, so:
//! backends are written first; then, per front end, its slots `1..=n` and only then its slot 0
//! (the count), so a count never covers a slot that is missing or names a missing backend; a
//! shrinking front end gets its new count before its surplus slots go; a removed front end
//! loses its slot 0 before its slots; backends nothing points at any more go last.
//!
//! Identities are stable: a backend keeps its id (and a front end its service id, which the
//! reverse-NAT and affinity entries carry) for as long as it exists, across syncs and across
//! agent restarts (the planner starts from what the pinned maps hold), so a sync never
//! rewrites an entry that is already right.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap};

use crate::abi::{self, proto_name};
pub use crate::abi::{BACKEND_LOCAL, SCOPE_EXT, SCOPE_SOCK};

/// `sessionAffinity: ClientIP`.
pub const FLAG_AFFINITY: u8 = abi::SVC_AFFINITY;
/// The front end is a node address and a NodePort.
pub const FLAG_NODEPORT: u8 = abi::SVC_NODEPORT;
/// `externalTrafficPolicy: Local` (tc: keep the client address; no backend → drop).
pub const FLAG_EXT_LOCAL: u8 = abi::SVC_EXT_LOCAL;

/// IP protocol numbers the programs compare with.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => abi::IPPROTO_TCP,
        Protocol::Udp => abi::IPPROTO_UDP,
        Protocol::Sctp => abi::IPPROTO_SCTP,
    }
}

/// An address + port + protocol a Service is reached on, in one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`SCOPE_SOCK`] or [`SCOPE_EXT`].
    pub scope: u8,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = if self.scope == SCOPE_SOCK {
            "sock"
        } else {
            "ext"
        };
        write!(
            f,
            "{}:{}/{} {scope}",
            self.addr,
            self.port,
            proto_name(self.proto)
        )
    }
}

/// A backend's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, proto_name(self.proto))
    }
}

/// A backend map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Where it is.
    pub addr: BackendAddr,
    /// [`BACKEND_LOCAL`].
    pub flags: u8,
}

/// A service map value: slot 0 holds `count`, `svc_id`, `flags` and the affinity timeout;
/// slots `1..=count` hold a `backend_id` (and repeat `svc_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcVal {
    /// Slot 0: number of backends.
    pub count: u32,
    /// Slots > 0: the backend.
    pub backend_id: u32,
    /// The front end's id (reverse NAT, affinity).
    pub svc_id: u32,
    /// Affinity timeout, seconds (slot 0).
    pub affinity_timeout: u32,
    /// `FLAG_*` (slot 0).
    pub flags: u8,
}

/// What one front end should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// `FLAG_*`.
    pub flags: u8,
    /// Affinity timeout, seconds (0 without affinity).
    pub affinity_timeout: u32,
    /// Its backends, in slot order.
    pub backends: Vec<BackendAddr>,
}

/// The maps' desired contents, by address (ids are the planner's business).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every front end.
    pub frontends: BTreeMap<Frontend, Want>,
    /// Every backend some front end uses, with its flags.
    pub backends: BTreeMap<BackendAddr, u8>,
}

/// The node-level inputs of [`desired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node.
    pub node_name: String,
    /// Addresses NodePorts are served on.
    pub node_ips: Vec<Ipv4Addr>,
}

fn v4(ips: &[IpAddr]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    ips.iter().filter_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    })
}

fn addrs(eps: &[Arc<Endpoint>], proto: u8) -> Vec<(BackendAddr, bool)> {
    eps.iter()
        .filter_map(|e| match e.ip {
            IpAddr::V4(addr) => Some((
                BackendAddr {
                    addr,
                    port: e.port,
                    proto,
                },
                e.is_local,
            )),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The front ends of one service port and their backends, from the core's categorisation:
///
/// * clients on this node reaching a cluster IP use the internal policy's set (Local set for
///   `internalTrafficPolicy: Local`, else Cluster);
/// * clients on this node reaching an external IP, a load-balancer IP or a NodePort are
///   short-circuited to the cluster path, as kube-proxy does for pods, so an
///   `externalTrafficPolicy: Local` service works from any node;
/// * traffic from outside the node to those uses the external policy's set, flagged
///   [`FLAG_EXT_LOCAL`] when Local.
pub fn service_frontends(
    svc: &ServicePort,
    eps: &[Arc<Endpoint>],
    cfg: &Config,
    node_labels: &BTreeMap<String, String>,
    out: &mut Desired,
) {
    let cat = categorize_endpoints(eps, svc, &cfg.node_name, node_labels);
    let proto = proto_number(svc.protocol);
    let (affinity, timeout) = match svc.session_affinity_timeout {
        Some(t) => (FLAG_AFFINITY, t),
        None => (0, 0),
    };
    let cluster = addrs(&cat.cluster, proto);
    let local = addrs(&cat.local, proto);
    let internal = if svc.internal_policy_local {
        &local
    } else {
        &cluster
    };
    let short_circuit = if svc.uses_cluster_endpoints() {
        &cluster
    } else {
        &local
    };
    let external = if svc.external_policy_local {
        &local
    } else {
        &cluster
    };
    let ext_flag = if svc.external_policy_local {
        FLAG_EXT_LOCAL
    } else {
        0
    };
    let mut put = |addr: Ipv4Addr, port: u16, scope: u8, flags: u8, set: &[(BackendAddr, bool)]| {
        for (b, is_local) in set {
            let f = out.backends.entry(*b).or_insert(0);
            if *is_local {
                *f |= BACKEND_LOCAL;
            }
        }
        out.frontends.insert(
            Frontend {
                addr,
                port,
                proto,
                scope,
            },
            Want {
                flags: flags | affinity,
                affinity_timeout: timeout,
                backends: set.iter().map(|(b, _)| *b).collect(),
            },
        );
    };
    for ip in v4(&svc.cluster_ips) {
        put(ip, svc.port, SCOPE_SOCK, 0, internal);
    }
    for ip in v4(&svc.external_ips).chain(v4(&svc.load_balancer_ips)) {
        put(ip, svc.port, SCOPE_SOCK, 0, short_circuit);
        put(ip, svc.port, SCOPE_EXT, ext_flag, external);
    }
    if let Some(np) = svc.node_port {
        for ip in &cfg.node_ips {
            put(*ip, np, SCOPE_SOCK, FLAG_NODEPORT, short_circuit);
            put(*ip, np, SCOPE_EXT, FLAG_NODEPORT | ext_flag, external);
        }
    }
}

/// The maps' desired contents for the whole model.
pub fn desired(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    cfg: &Config,
    node_labels: &BTreeMap<String, String>,
) -> Desired {
    let mut out = Desired::default();
    for (name, svc) in services {
        let eps = endpoints.get(name).map(Vec::as_slice).unwrap_or(&[]);
        service_frontends(svc, eps, cfg, node_labels, &mut out);
    }
    out
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite a backend.
    PutBackend {
        /// Its id.
        id: u32,
        /// The entry.
        backend: Backend,
    },
    /// Create or overwrite one slot of a front end.
    PutSvc {
        /// The front end.
        frontend: Frontend,
        /// The slot (0 = the count).
        slot: u32,
        /// The value.
        val: SvcVal,
    },
    /// Delete one slot of a front end.
    DeleteSvc {
        /// The front end.
        frontend: Frontend,
        /// The slot.
        slot: u32,
    },
    /// Delete a backend.
    DeleteBackend {
        /// Its id.
        id: u32,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::PutBackend { id, backend } => {
                let local = if backend.flags & BACKEND_LOCAL != 0 {
                    " local"
                } else {
                    ""
                };
                write!(f, "put backend {id} {}{local}", backend.addr)
            }
            Op::PutSvc {
                frontend,
                slot: 0,
                val,
            } => {
                write!(
                    f,
                    "put svc {frontend} slot 0 count={} id={}",
                    val.count, val.svc_id
                )?;
                write_flags(f, val.flags, val.affinity_timeout)
            }
            Op::PutSvc {
                frontend,
                slot,
                val,
            } => write!(
                f,
                "put svc {frontend} slot {slot} backend={} id={}",
                val.backend_id, val.svc_id
            ),
            Op::DeleteSvc { frontend, slot } => write!(f, "delete svc {frontend} slot {slot}"),
            Op::DeleteBackend { id } => write!(f, "delete backend {id}"),
        }
    }
}

fn write_flags(f: &mut fmt::Formatter<'_>, flags: u8, timeout: u32) -> fmt::Result {
    if flags & FLAG_NODEPORT != 0 {
        f.write_str(" nodeport")?;
    }
    if flags & FLAG_EXT_LOCAL != 0 {
        f.write_str(" ext-local")?;
    }
    if flags & FLAG_AFFINITY != 0 {
        write!(f, " affinity={timeout}s")?;
    }
    Ok(())
}

/// What the maps hold (read from the pinned maps at start, then kept in step with every
/// applied [`Op`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// Service map entries by (front end, slot).
    pub svc: BTreeMap<(Frontend, u32), SvcVal>,
    /// Backend map entries by id.
    pub backends: BTreeMap<u32, Backend>,
}

impl Current {
    /// Records a successfully applied operation.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, backend } => {
                self.backends.insert(*id, *backend);
            }
            Op::PutSvc {
                frontend,
                slot,
                val,
            } => {
                self.svc.insert((*frontend, *slot), *val);
            }
            Op::DeleteSvc { frontend, slot } => {
                self.svc.remove(&(*frontend, *slot));
            }
            Op::DeleteBackend { id } => {
                self.backends.remove(id);
            }
        }
    }

    /// Slots `> 0` of `frontend` present in the map.
    fn slots(&self, frontend: Frontend) -> impl Iterator<Item = (u32, &SvcVal)> + '_ {
        self.svc
            .range((frontend, 1)..=(frontend, u32::MAX))
            .map(|((_, s), v)| (*s, v))
    }

    /// Front ends with a slot 0 or any slot.
    fn frontends(&self) -> BTreeSet<Frontend> {
        self.svc.keys().map(|(f, _)| *f).collect()
    }
}

/// Hands out the least unused id ≥ 1.
struct Ids {
    used: BTreeSet<u32>,
    next: u32,
}

impl Ids {
    fn new(used: BTreeSet<u32>) -> Self {
        Self { used, next: 1 }
    }

    fn take(&mut self) -> u32 {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        self.used.insert(self.next);
        self.next
    }
}

/// The ordered operations that turn `current` into `want` (see the module doc for the order).
/// Entries that are already right are not touched.
pub fn plan(want: &Desired, current: &Current) -> Vec<Op> {
    let mut ops = Vec::new();

    // 1. Backends, keeping every id a backend already has.
    let mut by_addr: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    for (id, b) in &current.backends {
        // Two ids for one address (a crash between writes): keep the first, the other goes.
        by_addr.entry(b.addr).or_insert(*id);
    }
    let mut backend_ids = Ids::new(current.backends.keys().copied().collect());
    let mut ids: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    for (addr, flags) in &want.backends {
        let backend = Backend {
            addr: *addr,
            flags: *flags,
        };
        let id = match by_addr.get(addr) {
            Some(id) => {
                if current.backends.get(id) != Some(&backend) {
                    ops.push(Op::PutBackend { id: *id, backend });
                }
                *id
            }
            None => {
                let id = backend_ids.take();
                ops.push(Op::PutBackend { id, backend });
                id
            }
        };
        ids.insert(*addr, id);
    }

    // 2. Front ends: slots, then the count, then surplus slots.
    let mut svc_ids = Ids::new(
        current
            .svc
            .iter()
            .filter(|((_, slot), _)| *slot == 0)
            .map(|(_, v)| v.svc_id)
            .collect(),
    );
    for (frontend, w) in &want.frontends {
        let master = current.svc.get(&(*frontend, 0));
        let svc_id = master.map(|m| m.svc_id).unwrap_or_else(|| svc_ids.take());
        for (i, b) in w.backends.iter().enumerate() {
            let slot = i as u32 + 1;
            let val = SvcVal {
                backend_id: ids[b],
                svc_id,
                ..SvcVal::default()
            };
            if current.svc.get(&(*frontend, slot)) != Some(&val) {
                ops.push(Op::PutSvc {
                    frontend: *frontend,
                    slot,
                    val,
                });
            }
        }
        let val = SvcVal {
            count: w.backends.len() as u32,
            svc_id,
            affinity_timeout: w.affinity_timeout,
            flags: w.flags,
            ..SvcVal::default()
        };
        if master != Some(&val) {
            ops.push(Op::PutSvc {
                frontend: *frontend,
                slot: 0,
                val,
            });
        }
        let n = w.backends.len() as u32;
        for (slot, _) in current.slots(*frontend).filter(|(s, _)| *s > n) {
            ops.push(Op::DeleteSvc {
                frontend: *frontend,
                slot,
            });
        }
    }

    // 3. Front ends that go: the count first, so no lookup follows it into removed slots.
    for frontend in current.frontends() {
        if want.frontends.contains_key(&frontend) {
            continue;
        }
        if current.svc.contains_key(&(frontend, 0)) {
            ops.push(Op::DeleteSvc { frontend, slot: 0 });
        }
        for (slot, _) in current.slots(frontend) {
            ops.push(Op::DeleteSvc { frontend, slot });
        }
    }

    // 4. Backends nothing points at.
    let keep: BTreeSet<u32> = ids.values().copied().collect();
    for id in current.backends.keys() {
        if !keep.contains(id) {
            ops.push(Op::DeleteBackend { id: *id });
        }
    }
    ops
}

/// The maps' contents as stable text, one entry per line (front ends by address, then
/// backends by id): what `debug dump` prints and the golden files hold.
pub fn render_current(current: &Current) -> String {
    let mut out = String::new();
    for ((frontend, slot), val) in &current.svc {
        let op = Op::PutSvc {
            frontend: *frontend,
            slot: *slot,
            val: *val,
        };
        out.push_str(op.to_string().trim_start_matches("put "));
        out.push('\n');
    }
    for (id, backend) in &current.backends {
        let op = Op::PutBackend {
            id: *id,
            backend: *backend,
        };
        out.push_str(op.to_string().trim_start_matches("put "));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
