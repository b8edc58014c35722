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
//! `loadBalancerSourceRanges` (the EXT front ends of load-balancer IPs, flagged
//! [`FLAG_SRC_RANGES`]) follow the same rule: a front end's ranges are written before the slot
//! 0 that sets the flag, and ranges it no longer has are removed only after its slot 0 was
//! rewritten (or, for a front end that goes, deleted), so a flagged slot 0 never lacks one of
//! its ranges.
//!
//! Identities are stable: a backend keeps its id (and a front end its service id, which the
//! reverse-NAT and affinity entries carry) for as long as it exists, across syncs and across
//! agent restarts (the planner starts from what the pinned maps hold), so a sync never
//! rewrites an entry that is already right.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::Changes;

use crate::abi::{self, proto_name};
pub use crate::abi::{BACKEND_LOCAL, SCOPE_EXT, SCOPE_SOCK};

/// `sessionAffinity: ClientIP`.
pub const FLAG_AFFINITY: u8 = abi::SVC_AFFINITY;
/// The front end is a node address and a NodePort.
pub const FLAG_NODEPORT: u8 = abi::SVC_NODEPORT;
/// `externalTrafficPolicy: Local` (tc: keep the client address; no backend → drop).
pub const FLAG_EXT_LOCAL: u8 = abi::SVC_EXT_LOCAL;
/// A load-balancer IP with `loadBalancerSourceRanges` (EXT scope only): tc drops a new flow
/// from a source outside the front end's ranges.
pub const FLAG_SRC_RANGES: u8 = abi::SVC_SRC_RANGES;

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

/// An allowed IPv4 source range (`loadBalancerSourceRanges`), host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrcRange {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl SrcRange {
    const MIN: SrcRange = SrcRange {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };
    const MAX: SrcRange = SrcRange {
        addr: Ipv4Addr::BROADCAST,
        prefix: u8::MAX,
    };

    /// `addr/prefix` with the host bits of `addr` cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let k = abi::SrcRangeKey::new(0, addr, prefix);
        Self {
            addr: k.addr(),
            prefix: k.prefix(),
        }
    }
}

impl fmt::Display for SrcRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
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
    /// Allowed source ranges, sorted (non-empty exactly when `flags` has
    /// [`FLAG_SRC_RANGES`]).
    pub src_ranges: Vec<SrcRange>,
}

/// The maps' desired contents, by address (ids are the planner's business).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every front end.
    pub frontends: BTreeMap<Frontend, Want>,
    /// Every backend some front end uses.
    pub backends: BTreeMap<BackendAddr, BackendWant>,
}

/// A backend of the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendWant {
    /// [`BACKEND_LOCAL`] if some front end has it as a local endpoint.
    pub flags: u8,
    /// How many front ends use it (the model drops it when none does).
    pub users: u32,
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
///   [`FLAG_EXT_LOCAL`] when Local; from outside to a load-balancer IP, only from the
///   service's `loadBalancerSourceRanges` when it has (IPv4) ones ([`FLAG_SRC_RANGES`]).
///   In-node clients are not filtered (see `docs/ebpf.md`).
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
    let mut ranges: Vec<SrcRange> = svc
        .load_balancer_source_ranges
        .iter()
        .filter_map(|net| match net.network() {
            IpAddr::V4(a) => Some(SrcRange::new(a, net.prefix_len())),
            IpAddr::V6(_) => None,
        })
        .collect();
    ranges.sort();
    ranges.dedup();
    let lb_flag = if ranges.is_empty() {
        0
    } else {
        FLAG_SRC_RANGES
    };
    let mut put = |addr: Ipv4Addr,
                   port: u16,
                   scope: u8,
                   flags: u8,
                   set: &[(BackendAddr, bool)],
                   src_ranges: &[SrcRange]| {
        for (b, is_local) in set {
            let w = out.backends.entry(*b).or_default();
            w.users += 1;
            if *is_local {
                w.flags |= BACKEND_LOCAL;
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
                src_ranges: src_ranges.to_vec(),
            },
        );
    };
    for ip in v4(&svc.cluster_ips) {
        put(ip, svc.port, SCOPE_SOCK, 0, internal, &[]);
    }
    for ip in v4(&svc.external_ips) {
        put(ip, svc.port, SCOPE_SOCK, 0, short_circuit, &[]);
        put(ip, svc.port, SCOPE_EXT, ext_flag, external, &[]);
    }
    for ip in v4(&svc.load_balancer_ips) {
        put(ip, svc.port, SCOPE_SOCK, 0, short_circuit, &[]);
        put(
            ip,
            svc.port,
            SCOPE_EXT,
            ext_flag | lb_flag,
            external,
            &ranges,
        );
    }
    if let Some(np) = svc.node_port {
        for ip in &cfg.node_ips {
            put(*ip, np, SCOPE_SOCK, FLAG_NODEPORT, short_circuit, &[]);
            put(*ip, np, SCOPE_EXT, FLAG_NODEPORT | ext_flag, external, &[]);
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
    Model::build(services, endpoints, cfg, node_labels).desired
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
    /// Allow a source range for the front end with service id `svc_id`.
    PutSrcRange {
        /// The front end's service id.
        svc_id: u32,
        /// The range.
        net: SrcRange,
    },
    /// Remove a source range of the front end with service id `svc_id`.
    DeleteSrcRange {
        /// The front end's service id.
        svc_id: u32,
        /// The range.
        net: SrcRange,
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
            Op::PutSrcRange { svc_id, net } => write!(f, "put srcrange id={svc_id} {net}"),
            Op::DeleteSrcRange { svc_id, net } => write!(f, "delete srcrange id={svc_id} {net}"),
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
    if flags & FLAG_SRC_RANGES != 0 {
        f.write_str(" src-ranges")?;
    }
    if flags & FLAG_AFFINITY != 0 {
        write!(f, " affinity={timeout}s")?;
    }
    Ok(())
}

/// What the maps hold (read from the pinned maps at start, then kept in step with every
/// applied [`Op`]), with the indexes a partial plan needs so that its cost does not grow with
/// the number of services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    svc: BTreeMap<(Frontend, u32), SvcVal>,
    backends: BTreeMap<u32, Backend>,
    /// Backend address → ids holding it (normally one; two after a crash between writes).
    /// (One set of pairs rather than a set per address: 50,000 small sets cost megabytes.)
    by_addr: BTreeSet<(BackendAddr, u32)>,
    /// Service ids of slot-0 entries → how many front ends use them.
    svc_ids: BTreeMap<u32, u32>,
    /// Source ranges by service id.
    src_ranges: BTreeSet<(u32, SrcRange)>,
    /// Backend ids not in use.
    free_backend_ids: FreeIds,
    /// Service ids neither a slot-0 entry nor a source range uses.
    free_svc_ids: FreeIds,
}

/// The ids (`1..=u32::MAX`) not in use, as maximal intervals, so that handing out the least
/// free id costs a lookup, not a walk over every id in use (a new backend at 50,000 backends
/// took milliseconds that way).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FreeIds {
    /// Interval start → end (exclusive; `u64` so that `u32::MAX` can be free).
    intervals: BTreeMap<u32, u64>,
}

impl Default for FreeIds {
    fn default() -> Self {
        Self {
            intervals: BTreeMap::from([(1, 1 << 32)]),
        }
    }
}

impl FreeIds {
    /// The free interval holding `id`, if `id` is free.
    fn holding(&self, id: u32) -> Option<(u32, u64)> {
        self.intervals
            .range(..=id)
            .next_back()
            .filter(|(_, end)| u64::from(id) < **end)
            .map(|(s, e)| (*s, *e))
    }

    /// Marks `id` used (nothing if it already is, or is 0).
    fn take_id(&mut self, id: u32) {
        let Some((start, end)) = self.holding(id) else {
            return;
        };
        self.intervals.remove(&start);
        if start < id {
            self.intervals.insert(start, u64::from(id));
        }
        if u64::from(id) + 1 < end {
            self.intervals.insert(id + 1, end);
        }
    }

    /// Marks `id` free (nothing if it already is, or is 0), merging with its neighbours.
    fn free_id(&mut self, id: u32) {
        if id == 0 || self.holding(id).is_some() {
            return;
        }
        let mut start = id;
        let mut end = u64::from(id) + 1;
        if let Some(next) = id.checked_add(1).and_then(|n| self.intervals.remove(&n)) {
            end = next;
        }
        if let Some((s, e)) = self.intervals.range(..id).next_back() {
            if *e == u64::from(id) {
                start = *s;
            }
        }
        self.intervals.insert(start, end);
    }

    /// The least free id `>= from`.
    fn first_from(&self, from: u32) -> Option<u32> {
        if self.holding(from).is_some() {
            return Some(from);
        }
        self.intervals.range(from..).next().map(|(s, _)| *s)
    }
}

impl Current {
    /// Service map entries by (front end, slot).
    pub fn svc(&self) -> &BTreeMap<(Frontend, u32), SvcVal> {
        &self.svc
    }

    /// Backend map entries by id.
    pub fn backends(&self) -> &BTreeMap<u32, Backend> {
        &self.backends
    }

    /// Source range entries, by (service id, range).
    pub fn src_ranges(&self) -> &BTreeSet<(u32, SrcRange)> {
        &self.src_ranges
    }

    /// Records a source range entry (as read from the map).
    pub fn insert_src_range(&mut self, svc_id: u32, net: SrcRange) {
        self.src_ranges.insert((svc_id, net));
        self.free_svc_ids.take_id(svc_id);
    }

    fn remove_src_range(&mut self, svc_id: u32, net: SrcRange) {
        self.src_ranges.remove(&(svc_id, net));
        self.release_svc_id(svc_id);
    }

    /// Frees `svc_id` once neither a slot-0 entry nor a source range uses it.
    fn release_svc_id(&mut self, svc_id: u32) {
        if !self.svc_ids.contains_key(&svc_id) && self.ranges_of(svc_id).next().is_none() {
            self.free_svc_ids.free_id(svc_id);
        }
    }

    /// The source ranges of service id `svc_id`.
    fn ranges_of(&self, svc_id: u32) -> impl Iterator<Item = SrcRange> + '_ {
        self.src_ranges
            .range((svc_id, SrcRange::MIN)..=(svc_id, SrcRange::MAX))
            .map(|(_, n)| *n)
    }

    /// Records a service map entry (as read from the map).
    pub fn insert_svc(&mut self, frontend: Frontend, slot: u32, val: SvcVal) {
        self.remove_svc(frontend, slot);
        if slot == 0 {
            *self.svc_ids.entry(val.svc_id).or_insert(0) += 1;
            self.free_svc_ids.take_id(val.svc_id);
        }
        self.svc.insert((frontend, slot), val);
    }

    fn remove_svc(&mut self, frontend: Frontend, slot: u32) {
        if let Some(old) = self.svc.remove(&(frontend, slot)) {
            if slot == 0 {
                if let Some(n) = self.svc_ids.get_mut(&old.svc_id) {
                    *n -= 1;
                    if *n == 0 {
                        self.svc_ids.remove(&old.svc_id);
                        self.release_svc_id(old.svc_id);
                    }
                }
            }
        }
    }

    /// Records a backend map entry (as read from the map).
    pub fn insert_backend(&mut self, id: u32, backend: Backend) {
        self.remove_backend(id);
        self.by_addr.insert((backend.addr, id));
        self.backends.insert(id, backend);
        self.free_backend_ids.take_id(id);
    }

    /// The ids holding backend `addr`, least first.
    fn ids_of(&self, addr: BackendAddr) -> impl Iterator<Item = u32> + '_ {
        self.by_addr
            .range((addr, 0)..=(addr, u32::MAX))
            .map(|(_, id)| *id)
    }

    fn remove_backend(&mut self, id: u32) {
        if let Some(old) = self.backends.remove(&id) {
            self.by_addr.remove(&(old.addr, id));
            self.free_backend_ids.free_id(id);
        }
    }

    /// Records a successfully applied operation.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, backend } => self.insert_backend(*id, *backend),
            Op::PutSvc {
                frontend,
                slot,
                val,
            } => self.insert_svc(*frontend, *slot, *val),
            Op::DeleteSvc { frontend, slot } => self.remove_svc(*frontend, *slot),
            Op::DeleteBackend { id } => self.remove_backend(*id),
            Op::PutSrcRange { svc_id, net } => self.insert_src_range(*svc_id, *net),
            Op::DeleteSrcRange { svc_id, net } => self.remove_src_range(*svc_id, *net),
        }
    }

    /// Slots `> 0` of `frontend` present in the map.
    fn slots(&self, frontend: Frontend) -> impl Iterator<Item = (u32, &SvcVal)> + '_ {
        self.svc
            .range((frontend, 1)..=(frontend, u32::MAX))
            .map(|((_, s), v)| (*s, v))
    }

    /// Whether `frontend` has any entry.
    fn has_frontend(&self, frontend: Frontend) -> bool {
        self.svc
            .range((frontend, 0)..=(frontend, u32::MAX))
            .next()
            .is_some()
    }
}

/// The ids the maps give each front end and backend, and the ids free: what the dataplane
/// keeps between syncs instead of a copy of the maps (7.5 MB at 10,000 services × 5
/// endpoints). After a successful sync the maps hold exactly the [`Model`]'s desired state
/// under these ids, so the entries a partial sync touches can be rebuilt from the two
/// ([`Assigned::current_for`]) rather than read back or mirrored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// Slot-0 service id of each front end.
    svc: BTreeMap<Frontend, u32>,
    /// Id and flags of each backend.
    backends: BTreeMap<BackendAddr, (u32, u8)>,
    free_backend_ids: FreeIds,
    free_svc_ids: FreeIds,
}

impl Assigned {
    /// The ids of `current` (maps that hold what the desired state asks for).
    pub fn of(current: &Current) -> Self {
        Self {
            svc: current
                .svc
                .range(..)
                .filter(|((_, slot), _)| *slot == 0)
                .map(|((f, _), v)| (*f, v.svc_id))
                .collect(),
            backends: current
                .backends
                .iter()
                .map(|(id, b)| (b.addr, (*id, b.flags)))
                .collect(),
            free_backend_ids: current.free_backend_ids.clone(),
            free_svc_ids: current.free_svc_ids.clone(),
        }
    }

    /// The maps' entries for `touched` (front ends as they were before the update, and
    /// backends), with the free ids of the whole maps: the input of [`plan_some`].
    pub fn current_for(&self, touched: &Touched) -> Current {
        let mut c = Current {
            free_backend_ids: self.free_backend_ids.clone(),
            free_svc_ids: self.free_svc_ids.clone(),
            ..Current::default()
        };
        for addr in &touched.backends {
            if let Some((id, flags)) = self.backends.get(addr) {
                let backend = Backend {
                    addr: *addr,
                    flags: *flags,
                };
                c.insert_backend(*id, backend);
            }
        }
        for (f, w) in &touched.before {
            let Some(svc_id) = self.svc.get(f).copied() else {
                continue;
            };
            for (i, b) in w.backends.iter().enumerate() {
                let backend_id = self.backends.get(b).map(|(id, _)| *id).unwrap_or(0);
                let val = SvcVal {
                    backend_id,
                    svc_id,
                    ..SvcVal::default()
                };
                c.insert_svc(*f, i as u32 + 1, val);
            }
            for net in &w.src_ranges {
                c.insert_src_range(svc_id, *net);
            }
            let val = SvcVal {
                count: w.backends.len() as u32,
                svc_id,
                affinity_timeout: w.affinity_timeout,
                flags: w.flags,
                ..SvcVal::default()
            };
            c.insert_svc(*f, 0, val);
        }
        c
    }

    /// Takes over the ids of `touched` from `current` (a [`Assigned::current_for`] of it with
    /// the plan applied).
    pub fn record(&mut self, touched: &Touched, current: &Current) {
        let mut released = Vec::new();
        for f in &touched.frontends {
            match current.svc.get(&(*f, 0)) {
                Some(v) => self.svc.insert(*f, v.svc_id),
                None => self.svc.remove(f).inspect(|id| released.push(*id)),
            };
        }
        for addr in &touched.backends {
            match current.ids_of(*addr).next() {
                Some(id) => {
                    let flags = current.backends.get(&id).map(|b| b.flags).unwrap_or(0);
                    self.backends.insert(*addr, (id, flags))
                }
                None => self.backends.remove(addr),
            };
        }
        self.free_backend_ids = current.free_backend_ids.clone();
        self.free_svc_ids = current.free_svc_ids.clone();
        // Two front ends share a service id only after a crash between writes; `current` knew
        // only the touched one, so an id it freed may still be in use by an untouched one.
        for id in released {
            if self.svc.values().any(|v| *v == id) {
                self.free_svc_ids.take_id(id);
            }
        }
    }
}

/// Hands out, in increasing order, the least id that is free in `current` and not handed out
/// already.
struct Ids<'a> {
    free: &'a FreeIds,
    next: u32,
}

impl<'a> Ids<'a> {
    fn new(free: &'a FreeIds) -> Self {
        Self { free, next: 1 }
    }

    /// The least free id not handed out yet (`u32::MAX` if none is: maps that large cannot exist).
    fn take(&mut self) -> u32 {
        let id = self.free.first_from(self.next).unwrap_or(u32::MAX);
        self.next = id.saturating_add(1);
        id
    }
}

/// The peers of connected UDP sockets that a batch of [`Op`]s leaves stale: such a socket is
/// connected for good to what the socket hook chose at `connect()`, and nothing translates
/// its datagrams afterwards, so the mode destroys the sockets (their owners see an error and
/// reconnect through the hook).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StaleUdp {
    /// UDP backends the batch deletes: sockets connected to them send into the void.
    pub gone_backends: Vec<SocketAddrV4>,
    /// Socket-scope UDP front ends that start answering (absent, or without backends, before
    /// the batch): a socket connected to one earlier passed the hook untranslated, so it is
    /// connected to the bare service address. kube-proxy flushes the UDP conntrack entries
    /// of a Service that gets its first endpoint for the same reason. A socket the hook did
    /// translate is connected to a backend, never to a front end, so destroying these never
    /// cuts a working flow.
    pub opened_frontends: Vec<SocketAddrV4>,
}

impl StaleUdp {
    /// True when there is nothing to destroy.
    pub fn is_empty(&self) -> bool {
        self.gone_backends.is_empty() && self.opened_frontends.is_empty()
    }

    /// Every stale peer address.
    pub fn all(&self) -> Vec<SocketAddrV4> {
        self.gone_backends
            .iter()
            .chain(&self.opened_frontends)
            .copied()
            .collect()
    }
}

/// The connected UDP sockets `ops`, planned against `current` (before they are applied),
/// leave stale.
pub fn stale_udp_sockets(ops: &[Op], current: &Current) -> StaleUdp {
    let udp = abi::IPPROTO_UDP;
    let mut stale = StaleUdp::default();
    for op in ops {
        match op {
            Op::DeleteBackend { id } => {
                if let Some(b) = current.backends.get(id).filter(|b| b.addr.proto == udp) {
                    stale
                        .gone_backends
                        .push(SocketAddrV4::new(b.addr.addr, b.addr.port));
                }
            }
            Op::PutSvc {
                frontend,
                slot: 0,
                val,
            } if frontend.proto == udp
                && frontend.scope == SCOPE_SOCK
                && val.count > 0
                && current
                    .svc
                    .get(&(*frontend, 0))
                    .is_none_or(|old| old.count == 0) =>
            {
                stale
                    .opened_frontends
                    .push(SocketAddrV4::new(frontend.addr, frontend.port));
            }
            _ => {}
        }
    }
    stale
}

/// The ordered operations that turn `current` into `want` (see the module doc for the order).
/// Entries that are already right are not touched.
pub fn plan(want: &Desired, current: &Current) -> Vec<Op> {
    let mut frontends: BTreeSet<Frontend> = want.frontends.keys().copied().collect();
    frontends.extend(current.svc.keys().map(|(f, _)| *f));
    let mut backends: BTreeSet<BackendAddr> = want.backends.keys().copied().collect();
    backends.extend(current.by_addr.iter().map(|(a, _)| *a));
    plan_inner(want, current, &frontends, &backends, true)
}

/// [`plan`] limited to `frontends` and `backends` (those a partial update touched, see
/// [`Model::update`]); `want` is still the whole desired state, so a backend another front end
/// uses is kept.
pub fn plan_some(
    want: &Desired,
    current: &Current,
    frontends: &BTreeSet<Frontend>,
    backends: &BTreeSet<BackendAddr>,
) -> Vec<Op> {
    plan_inner(want, current, frontends, backends, false)
}

/// [`plan_some`]; `sweep` also removes source ranges of service ids no front end has (left by
/// a crash between writes), which only a full plan looks for.
fn plan_inner(
    want: &Desired,
    current: &Current,
    frontends: &BTreeSet<Frontend>,
    backends: &BTreeSet<BackendAddr>,
    sweep: bool,
) -> Vec<Op> {
    let mut ops = Vec::new();

    // 1. Backends, keeping every id a backend already has.
    let mut backend_ids = Ids::new(&current.free_backend_ids);
    let mut ids: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    for addr in backends {
        let Some(w) = want.backends.get(addr) else {
            continue;
        };
        let backend = Backend {
            addr: *addr,
            flags: w.flags,
        };
        // Two ids for one address (a crash between writes): keep the first, the other goes.
        let id = match current.ids_of(*addr).next() {
            Some(id) => {
                if current.backends.get(&id) != Some(&backend) {
                    ops.push(Op::PutBackend { id, backend });
                }
                id
            }
            None => {
                let id = backend_ids.take();
                ops.push(Op::PutBackend { id, backend });
                id
            }
        };
        ids.insert(*addr, id);
    }
    let id_of = |addr: &BackendAddr| -> u32 {
        ids.get(addr).copied().unwrap_or_else(|| {
            // A backend of an untouched front end (only in a partial plan).
            current.ids_of(*addr).next().unwrap_or(0)
        })
    };

    // 2. Front ends: slots and source ranges, then the count, then surplus slots and ranges.
    let mut svc_ids = Ids::new(&current.free_svc_ids);
    for frontend in frontends {
        let Some(w) = want.frontends.get(frontend) else {
            continue;
        };
        let master = current.svc.get(&(*frontend, 0));
        let svc_id = master.map(|m| m.svc_id).unwrap_or_else(|| svc_ids.take());
        for (i, b) in w.backends.iter().enumerate() {
            let slot = i as u32 + 1;
            let val = SvcVal {
                backend_id: id_of(b),
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
        for net in &w.src_ranges {
            if !current.src_ranges.contains(&(svc_id, *net)) {
                ops.push(Op::PutSrcRange { svc_id, net: *net });
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
        for net in current.ranges_of(svc_id) {
            if !w.src_ranges.contains(&net) {
                ops.push(Op::DeleteSrcRange { svc_id, net });
            }
        }
    }

    // 3. Front ends that go: the count first, so no lookup follows it into removed slots.
    for frontend in frontends {
        if want.frontends.contains_key(frontend) || !current.has_frontend(*frontend) {
            continue;
        }
        let master = current.svc.get(&(*frontend, 0));
        if master.is_some() {
            ops.push(Op::DeleteSvc {
                frontend: *frontend,
                slot: 0,
            });
        }
        for (slot, _) in current.slots(*frontend) {
            ops.push(Op::DeleteSvc {
                frontend: *frontend,
                slot,
            });
        }
        // Its ranges, unless another front end shares the id (only after a crash).
        if let Some(m) = master.filter(|m| current.svc_ids.get(&m.svc_id) == Some(&1)) {
            for net in current.ranges_of(m.svc_id) {
                ops.push(Op::DeleteSrcRange {
                    svc_id: m.svc_id,
                    net,
                });
            }
        }
    }
    if sweep {
        for (svc_id, net) in &current.src_ranges {
            if !current.svc_ids.contains_key(svc_id) {
                ops.push(Op::DeleteSrcRange {
                    svc_id: *svc_id,
                    net: *net,
                });
            }
        }
    }

    // 4. Backends nothing points at (and duplicate ids of one address).
    for addr in backends {
        let keep = ids.get(addr);
        for id in current.ids_of(*addr) {
            if Some(&id) != keep {
                ops.push(Op::DeleteBackend { id });
            }
        }
    }
    ops
}

/// The desired state kept across syncs: a partial sync recomputes only the changed service
/// ports and plans only their front ends and backends, so its cost does not grow with the
/// number of services.
#[derive(Debug, Clone, Default)]
pub struct Model {
    desired: Desired,
    /// The front ends each service port produced.
    per_port: BTreeMap<ServicePortName, Vec<Frontend>>,
}

/// What a [`Model::update`] touched: the input of [`plan_some`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Front ends added, changed or removed.
    pub frontends: BTreeSet<Frontend>,
    /// Backends they used before or use now.
    pub backends: BTreeSet<BackendAddr>,
    /// The touched front ends' wants before the update (what the maps hold after a successful
    /// sync): with [`Assigned`], enough to rebuild the maps' touched entries.
    pub before: BTreeMap<Frontend, Want>,
}

impl Model {
    /// The model of the whole proxy state.
    pub fn build(
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        cfg: &Config,
        node_labels: &BTreeMap<String, String>,
    ) -> Self {
        let mut m = Model::default();
        m.update(services.keys(), services, endpoints, cfg, node_labels);
        m
    }

    /// The desired map contents.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Recomputes `ports` (changed, added or removed service ports) from the maps.
    pub fn update<'a>(
        &mut self,
        ports: impl IntoIterator<Item = &'a ServicePortName>,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        cfg: &Config,
        node_labels: &BTreeMap<String, String>,
    ) -> Touched {
        let mut touched = Touched::default();
        for port in ports {
            for f in self.per_port.remove(port).unwrap_or_default() {
                touched.frontends.insert(f);
                if let Some(w) = self.desired.frontends.remove(&f) {
                    for b in &w.backends {
                        touched.backends.insert(*b);
                        self.unref(*b);
                    }
                    touched.before.insert(f, w);
                }
            }
            let Some(svc) = services.get(port) else {
                continue;
            };
            let eps = endpoints.get(port).map(Vec::as_slice).unwrap_or(&[]);
            let mut part = Desired::default();
            service_frontends(svc, eps, cfg, node_labels, &mut part);
            for (b, part) in &part.backends {
                let w = self.desired.backends.entry(*b).or_default();
                w.flags |= part.flags;
                w.users += part.users;
            }
            let mut mine = Vec::with_capacity(part.frontends.len());
            for (f, w) in part.frontends {
                touched.frontends.insert(f);
                touched.backends.extend(w.backends.iter().copied());
                mine.push(f);
                self.desired.frontends.insert(f, w);
            }
            self.per_port.insert(port.clone(), mine);
        }
        touched
    }

    /// The service ports a partial sync of `changes` must recompute: those of the changed
    /// services, in `services` now or in the model from before (removed ones).
    pub fn changed_ports(
        &self,
        changes: &Changes,
        services: &ServicePortMap,
    ) -> Vec<ServicePortName> {
        changes.changed_ports_in(services, &self.per_port)
    }

    fn unref(&mut self, b: BackendAddr) {
        if let Some(w) = self.desired.backends.get_mut(&b) {
            w.users -= 1;
            if w.users == 0 {
                self.desired.backends.remove(&b);
            }
        }
    }
}

#[cfg(test)]
mod tests;
