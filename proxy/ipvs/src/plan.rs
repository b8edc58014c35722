//! The planner, pure: which virtual servers the proxy model wants ([`Model`]), what of Sluice's
//! the kernel holds ([`Current`]), and the ordered operations from one to the other ([`plan`]).
//!
//! # What is wanted (kube-proxy's ipvs proxier, per service port)
//!
//! One virtual server per *front end* — protocol, address and port:
//!
//! * each cluster IP × port, with the internal traffic policy's endpoints (the Local set for
//!   `internalTrafficPolicy: Local`, else the Cluster set);
//! * each external IP and load-balancer IP × port, and each node IP × NodePort, with the
//!   external traffic policy's endpoints.
//!
//! Endpoint sets come from [`categorize_endpoints`] (ready endpoints, else serving-terminating
//! ones; topology hints), like every mode. Every destination is NAT-forwarded (`Masq`) with
//! weight 1. The scheduler is the node's (`--ipvs-scheduler`) unless the Service names its own
//! ([`crate::scheduler::ANNOTATION`], read into `ServicePort::scheduler`);
//! `sessionAffinity: ClientIP` is persistence with the affinity timeout. A front end without
//! endpoints keeps its virtual server (empty): the companion nftables table rejects (or, for a
//! Local policy without local endpoints, drops) new connections to it first. Cluster,
//! external and load-balancer addresses are bound to the dummy link; node IPs are not.
//!
//! When two service ports claim one front end, the first by name owns it (in a full build and
//! after any sequence of partial updates alike).
//!
//! # What is Sluice's
//!
//! On a shared machine other IPVS users may exist, so a virtual server is touched only when
//! it is Sluice's ([`Current::is_ours`]): its address is on the dummy link, or it is a node IP
//! and its port is in the NodePort range ([`Config::node_port_range`]), or Sluice wants it.
//! Firewall-mark services and other families are never Sluice's.
//!
//! # Order
//!
//! 1. new virtual servers and changed settings, then every wanted destination that is missing
//!    (or quiescent, or forwarding otherwise) — before anything is taken away, so a virtual
//!    server with usable endpoints never has none, even for a moment;
//! 2. destinations no longer wanted: UDP and SCTP ones, and TCP ones without connections, are
//!    deleted; TCP ones with connections are drained (weight 0: no new connections) and
//!    deleted by a later plan once their active and inactive connection counts reach 0, or
//!    [`Config::drain_timeout`] after draining began;
//! 3. addresses to bind (after their virtual servers exist, so the first packet finds one);
//! 4. virtual servers no longer wanted;
//! 5. addresses no longer wanted.
//!
//! Entries that are already right are not touched, so a restarted agent changes nothing that
//! is right and drops no established connection.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, RenderConfig, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::Changes;

use crate::netlink::{
    Destination, Service, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_MASQ, IP_VS_SVC_F_PERSISTENT,
};
use crate::scheduler::Scheduler;

/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;
/// How long a drained TCP destination may keep connections before it is deleted anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The weight of every wanted destination.
pub const WEIGHT: u32 = 1;

/// Node-level inputs of the planner and the companion nftables render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What every NAT mode's render takes: this node (decides which endpoints are local), the
    /// family this dataplane programs (other addresses are skipped), the pod CIDR (connections
    /// to a cluster IP from outside it are masqueraded; `None`: never, hairpin aside) and the
    /// companion table's masquerade mark. Its `node_ips` are the addresses NodePorts are served
    /// on (never bound to the dummy link); here, empty means no NodePort virtual servers.
    pub node: RenderConfig,
    /// The node's scheduler (`--ipvs-scheduler`).
    pub scheduler: Scheduler,
    /// Ports of virtual servers on node IPs that are Sluice's even when not wanted (stale
    /// NodePorts).
    pub node_port_range: RangeInclusive<u16>,
    /// See [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
}

impl Config {
    /// IPv4 config for `node_name`: round robin, no node IPs, no cluster CIDR, defaults
    /// elsewhere.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node: RenderConfig::new(node_name),
            scheduler: Scheduler::rr(),
            node_port_range: DEFAULT_NODE_PORT_RANGE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The node IPs of the configured family.
    pub fn family_node_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.node
            .node_ips
            .iter()
            .filter(|ip| self.node.family.matches(ip))
    }
}

/// A virtual server's identity: protocol, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontEnd {
    /// Address (ordered first, so the front ends of one address are a range).
    pub addr: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
}

impl FrontEnd {
    /// The `IPPROTO_*` number.
    pub fn ipproto(&self) -> u16 {
        ipproto(self.protocol)
    }

    /// The netlink service for this front end with `scheduler` and `persistence`.
    pub fn service(&self, scheduler: &str, persistence: Option<u32>) -> Service {
        let s = Service::new(self.addr, self.ipproto(), self.port, scheduler);
        match persistence {
            Some(t) => s.persistent(t),
            None => s,
        }
    }

    /// The front end of a netlink service, if it is one Sluice could own (addressed, TCP, UDP
    /// or SCTP).
    pub fn of(svc: &Service) -> Option<FrontEnd> {
        if svc.is_fwmark() || svc.pe_name.is_some() {
            return None;
        }
        let protocol = match svc.protocol {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            IPPROTO_SCTP => Protocol::Sctp,
            _ => return None,
        };
        Some(FrontEnd {
            addr: svc.addr,
            protocol,
            port: svc.port,
        })
    }
}

impl fmt::Display for FrontEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.protocol,
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// `IPPROTO_*` of a protocol.
pub fn ipproto(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// What kind of address a front end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A cluster IP.
    ClusterIp,
    /// An external IP.
    ExternalIp,
    /// A load-balancer ingress IP.
    LoadBalancerIp,
    /// A node IP × NodePort.
    NodePort,
}

/// Which connections to a front end the companion table masquerades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Masquerade {
    /// None (external traffic policy Local: the client address is kept).
    Never,
    /// Those from outside the pod CIDR (cluster IPs).
    OffCluster,
    /// All (external front ends with the Cluster policy: the reply must come back here).
    Always,
}

/// What the companion table does with new connections to a front end whose virtual server has
/// no destination to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoEndpoints {
    /// No usable endpoint anywhere: ICMP port unreachable.
    Reject,
    /// A Local traffic policy without local endpoints: silently dropped.
    Drop,
}

/// Everything wanted for one front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// What kind of address it is.
    pub kind: Kind,
    /// The virtual server's scheduler.
    pub scheduler: Scheduler,
    /// Persistence timeout in seconds (`sessionAffinity: ClientIP`).
    pub persistence: Option<u32>,
    /// Destinations, sorted.
    pub dests: Vec<SocketAddr>,
    /// Addresses among `dests` of endpoints on this node (hairpin masquerade).
    pub local_ips: Vec<IpAddr>,
    /// Masquerade policy.
    pub masquerade: Masquerade,
    /// Set when no destination may be used.
    pub no_endpoints: Option<NoEndpoints>,
    /// `loadBalancerSourceRanges` (load-balancer IPs only; empty = unfiltered), plus the
    /// load-balancer IP itself when a node IP is in them (hairpin through the load balancer).
    pub source_ranges: Vec<IpNet>,
    /// The address goes on the dummy link.
    pub bind: bool,
}

fn addrs(eps: &[Arc<Endpoint>]) -> (Vec<SocketAddr>, Vec<IpAddr>) {
    let mut d: Vec<SocketAddr> = eps.iter().map(|e| e.addr()).collect();
    d.sort();
    d.dedup();
    let mut l: Vec<IpAddr> = eps.iter().filter(|e| e.is_local).map(|e| e.ip).collect();
    l.sort();
    l.dedup();
    (d, l)
}

/// The front ends of one service port and what each wants.
pub fn port_front_ends(
    svc: &ServicePort,
    endpoints: &[Arc<Endpoint>],
    cfg: &Config,
    node_labels: &BTreeMap<String, String>,
) -> Vec<(FrontEnd, Want)> {
    let fam = cfg.node.family;
    let eps: Vec<Arc<Endpoint>> = endpoints
        .iter()
        .filter(|e| fam.matches(&e.ip))
        .cloned()
        .collect();
    let cat = categorize_endpoints(&eps, svc, &cfg.node.node_name, node_labels);
    let internal = if svc.internal_policy_local {
        &cat.local
    } else {
        &cat.cluster
    };
    let external = if svc.external_policy_local {
        &cat.local
    } else {
        &cat.cluster
    };
    let no_endpoints = |set: &[Arc<Endpoint>]| {
        if !cat.has_any_endpoints {
            Some(NoEndpoints::Reject)
        } else if set.is_empty() {
            Some(NoEndpoints::Drop)
        } else {
            None
        }
    };
    // The Service's own scheduler (annotation) wins; one the kernel cannot have falls back to
    // the node's (the agent logs it when the Service changes, see `crate::scheduler`).
    let scheduler = svc
        .scheduler
        .as_deref()
        .and_then(|name| Scheduler::parse(name).ok())
        .unwrap_or_else(|| cfg.scheduler.clone());
    let is_node_ip = |ip: &IpAddr| cfg.node.node_ips.contains(ip);
    let (int_dests, int_local) = addrs(internal);
    let (ext_dests, ext_local) = addrs(external);
    let ext_masq = if svc.external_policy_local {
        Masquerade::Never
    } else {
        Masquerade::Always
    };
    let ranges: Vec<IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .filter(|n| fam.matches(&n.addr()))
        .map(IpNet::trunc)
        .collect();
    let node_in_ranges = cfg
        .family_node_ips()
        .any(|n| ranges.iter().any(|r| r.contains(n)));
    let base = Want {
        kind: Kind::ClusterIp,
        scheduler,
        persistence: svc.session_affinity_timeout,
        dests: int_dests,
        local_ips: int_local,
        masquerade: Masquerade::OffCluster,
        no_endpoints: no_endpoints(internal),
        source_ranges: Vec::new(),
        bind: false,
    };
    let ext = Want {
        kind: Kind::ExternalIp,
        dests: ext_dests,
        local_ips: ext_local,
        masquerade: ext_masq,
        no_endpoints: no_endpoints(external),
        ..base.clone()
    };
    let fe = |addr: IpAddr, port: u16| FrontEnd {
        addr,
        protocol: svc.protocol,
        port,
    };
    let mut out = Vec::new();
    for ip in svc.cluster_ips.iter().filter(|a| fam.matches(a)) {
        out.push((
            fe(*ip, svc.port),
            Want {
                bind: !is_node_ip(ip),
                ..base.clone()
            },
        ));
    }
    for ip in svc.external_ips.iter().filter(|a| fam.matches(a)) {
        out.push((
            fe(*ip, svc.port),
            Want {
                bind: !is_node_ip(ip),
                ..ext.clone()
            },
        ));
    }
    for ip in svc.load_balancer_ips.iter().filter(|a| fam.matches(a)) {
        let mut source_ranges = ranges.clone();
        if !ranges.is_empty() && node_in_ranges {
            source_ranges.push(IpNet::from(*ip));
        }
        source_ranges.sort();
        source_ranges.dedup();
        out.push((
            fe(*ip, svc.port),
            Want {
                kind: Kind::LoadBalancerIp,
                bind: !is_node_ip(ip),
                source_ranges,
                ..ext.clone()
            },
        ));
    }
    if let Some(np) = svc.node_port {
        for ip in cfg.family_node_ips() {
            out.push((
                fe(*ip, np),
                Want {
                    kind: Kind::NodePort,
                    ..ext.clone()
                },
            ));
        }
    }
    out
}

/// The wanted virtual servers, kept across syncs: a partial sync recomputes only the changed
/// service ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Each service port's front ends.
    per_port: BTreeMap<ServicePortName, Vec<(FrontEnd, Want)>>,
    /// The service ports claiming each front end.
    claims: BTreeMap<FrontEnd, BTreeSet<ServicePortName>>,
    /// Each front end's want, from its first claimant.
    desired: BTreeMap<FrontEnd, Want>,
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

    /// Every wanted front end.
    pub fn desired(&self) -> &BTreeMap<FrontEnd, Want> {
        &self.desired
    }

    /// Whether `addr` should be on the dummy link.
    pub fn binds(&self, addr: IpAddr) -> bool {
        self.front_ends_of(addr).any(|(_, w)| w.bind)
    }

    /// The wanted front ends on `addr`.
    pub fn front_ends_of(&self, addr: IpAddr) -> impl Iterator<Item = (&FrontEnd, &Want)> {
        let from = FrontEnd {
            addr,
            protocol: Protocol::Tcp,
            port: 0,
        };
        self.desired
            .range(from..)
            .take_while(move |(f, _)| f.addr == addr)
    }

    /// Every address to bind.
    pub fn bound_addresses(&self) -> BTreeSet<IpAddr> {
        self.desired
            .iter()
            .filter(|(_, w)| w.bind)
            .map(|(f, _)| f.addr)
            .collect()
    }

    /// Recomputes `ports` (changed, added or removed service ports) from the maps; returns the
    /// front ends whose want may have changed.
    pub fn update<'a>(
        &mut self,
        ports: impl IntoIterator<Item = &'a ServicePortName>,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        cfg: &Config,
        node_labels: &BTreeMap<String, String>,
    ) -> BTreeSet<FrontEnd> {
        let mut touched = BTreeSet::new();
        for port in ports {
            for (f, _) in self.per_port.remove(port).unwrap_or_default() {
                if let Some(c) = self.claims.get_mut(&f) {
                    c.remove(port);
                    if c.is_empty() {
                        self.claims.remove(&f);
                    }
                }
                touched.insert(f);
            }
            let Some(svc) = services.get(port) else {
                continue;
            };
            let eps = endpoints.get(port).map(Vec::as_slice).unwrap_or(&[]);
            let mine = port_front_ends(svc, eps, cfg, node_labels);
            for (f, _) in &mine {
                self.claims.entry(*f).or_default().insert(port.clone());
                touched.insert(*f);
            }
            self.per_port.insert(port.clone(), mine);
        }
        for f in &touched {
            let want = self
                .claims
                .get(f)
                .and_then(|c| c.first())
                .and_then(|owner| self.per_port.get(owner))
                .and_then(|v| v.iter().find(|(g, _)| g == f))
                .map(|(_, w)| w.clone());
            match want {
                Some(w) => {
                    self.desired.insert(*f, w);
                }
                None => {
                    self.desired.remove(f);
                }
            }
        }
        touched
    }

    /// The service ports a partial sync of `changes` recomputes: those of the changed services,
    /// in `services` now or in the model (removed ones).
    pub fn changed_ports(
        &self,
        changes: &Changes,
        services: &ServicePortMap,
    ) -> Vec<ServicePortName> {
        changes.changed_ports_in(services, &self.per_port)
    }
}

/// Virtual servers as listed from the kernel, with their destinations.
pub type Listing = Vec<(Service, Vec<Destination>)>;

/// One destination as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelDest {
    /// Weight (0 = drained).
    pub weight: u32,
    /// Connection flags (forwarding method).
    pub fwd_method: u32,
    /// Active connections.
    pub active: u32,
    /// Inactive connections.
    pub inactive: u32,
}

impl KernelDest {
    /// A wanted destination as the plan leaves it.
    pub fn wanted() -> Self {
        Self {
            weight: WEIGHT,
            fwd_method: IP_VS_CONN_F_MASQ,
            active: 0,
            inactive: 0,
        }
    }

    fn is_right(&self) -> bool {
        self.weight == WEIGHT && self.fwd_method & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ
    }
}

/// One of Sluice's virtual servers as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    /// Scheduler.
    pub scheduler: String,
    /// Persistence timeout, when persistent.
    pub persistence: Option<u32>,
    /// Destinations.
    pub dests: BTreeMap<SocketAddr, KernelDest>,
}

impl KernelService {
    /// From a listed service and its destinations.
    pub fn of(svc: &Service, dests: &[Destination]) -> Self {
        Self {
            scheduler: svc.scheduler.clone(),
            persistence: (svc.flags & IP_VS_SVC_F_PERSISTENT != 0).then_some(svc.timeout),
            dests: dests_of(dests),
        }
    }
}

fn dests_of(dests: &[Destination]) -> BTreeMap<SocketAddr, KernelDest> {
    dests
        .iter()
        .map(|d| {
            (
                d.socket_addr(),
                KernelDest {
                    weight: d.weight,
                    fwd_method: d.fwd_method,
                    active: d.active_conns,
                    inactive: d.inactive_conns,
                },
            )
        })
        .collect()
}

/// What of Sluice's the kernel holds: listed at a full sync, then kept in step with every
/// applied [`Op`] (and refreshed per virtual server where connection counts matter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// Sluice's virtual servers.
    pub services: BTreeMap<FrontEnd, KernelService>,
    /// Addresses on the dummy link.
    pub addresses: BTreeSet<IpAddr>,
    /// Drained destinations not wanted any more, with when draining began (on the clock of
    /// [`plan`]'s `now`).
    pub draining: BTreeMap<(FrontEnd, SocketAddr), Duration>,
}

impl Current {
    /// Whether listed service `svc` is Sluice's (see the module doc).
    pub fn is_ours(
        svc: &Service,
        dummy_addresses: &BTreeSet<IpAddr>,
        cfg: &Config,
        model: &Model,
    ) -> bool {
        let Some(fe) = FrontEnd::of(svc) else {
            return false;
        };
        if !cfg.node.family.matches(&fe.addr) {
            return false;
        }
        dummy_addresses.contains(&fe.addr)
            || (cfg.node.node_ips.contains(&fe.addr) && cfg.node_port_range.contains(&fe.port))
            || model.desired().contains_key(&fe)
    }

    /// Sluice's part of a listing: `listed` holds the services [`Current::is_ours`] chose,
    /// with their destinations. Drain start times come from `draining` (the previous state);
    /// a quiescent unwanted destination without one began draining `now`.
    pub fn from_kernel(
        listed: &Listing,
        dummy_addresses: BTreeSet<IpAddr>,
        model: &Model,
        draining: &BTreeMap<(FrontEnd, SocketAddr), Duration>,
        now: Duration,
    ) -> Self {
        let mut c = Current {
            addresses: dummy_addresses,
            ..Current::default()
        };
        for (svc, dests) in listed {
            let Some(fe) = FrontEnd::of(svc) else {
                continue;
            };
            let k = KernelService::of(svc, dests);
            c.services.insert(fe, k);
            c.note_drains(fe, model, draining, now);
        }
        c
    }

    /// Replaces the destinations of `fe` with a fresh listing (connection counts).
    pub fn refresh(&mut self, fe: FrontEnd, dests: &[Destination], model: &Model, now: Duration) {
        if let Some(k) = self.services.get_mut(&fe) {
            k.dests = dests_of(dests);
            let prev = std::mem::take(&mut self.draining);
            let (mine, rest): (BTreeMap<_, _>, BTreeMap<_, _>) =
                prev.into_iter().partition(|((f, _), _)| *f == fe);
            self.draining = rest;
            self.note_drains(fe, model, &mine, now);
        }
    }

    /// Records drain start times for `fe`'s quiescent, unwanted destinations.
    fn note_drains(
        &mut self,
        fe: FrontEnd,
        model: &Model,
        draining: &BTreeMap<(FrontEnd, SocketAddr), Duration>,
        now: Duration,
    ) {
        let Some(k) = self.services.get(&fe) else {
            return;
        };
        let wanted = model.desired().get(&fe);
        for (d, kd) in &k.dests {
            let unwanted = wanted.is_none_or(|w| !w.dests.contains(d));
            if kd.weight == 0 && unwanted {
                let since = draining.get(&(fe, *d)).copied().unwrap_or(now);
                self.draining.insert((fe, *d), since);
            }
        }
    }

    /// The front ends with drained destinations.
    pub fn draining_front_ends(&self) -> BTreeSet<FrontEnd> {
        self.draining.keys().map(|(f, _)| *f).collect()
    }

    /// Records a successfully applied operation at time `now`.
    pub fn apply(&mut self, op: &Op, now: Duration) {
        match op {
            Op::AddService {
                fe,
                scheduler,
                persistence,
            } => {
                self.services.insert(
                    *fe,
                    KernelService {
                        scheduler: scheduler.clone(),
                        persistence: *persistence,
                        dests: BTreeMap::new(),
                    },
                );
            }
            Op::UpdateService {
                fe,
                scheduler,
                persistence,
            } => {
                if let Some(k) = self.services.get_mut(fe) {
                    k.scheduler = scheduler.clone();
                    k.persistence = *persistence;
                }
            }
            Op::AddDest { fe, dest } | Op::RestoreDest { fe, dest } => {
                if let Some(k) = self.services.get_mut(fe) {
                    let kd = k.dests.entry(*dest).or_insert_with(KernelDest::wanted);
                    kd.weight = WEIGHT;
                    kd.fwd_method = IP_VS_CONN_F_MASQ;
                }
                self.draining.remove(&(*fe, *dest));
            }
            Op::DrainDest { fe, dest } => {
                if let Some(kd) = self
                    .services
                    .get_mut(fe)
                    .and_then(|k| k.dests.get_mut(dest))
                {
                    kd.weight = 0;
                }
                self.draining.entry((*fe, *dest)).or_insert(now);
            }
            Op::DeleteDest { fe, dest } => {
                if let Some(k) = self.services.get_mut(fe) {
                    k.dests.remove(dest);
                }
                self.draining.remove(&(*fe, *dest));
            }
            Op::BindAddress(ip) => {
                self.addresses.insert(*ip);
            }
            Op::DeleteService { fe } => {
                self.services.remove(fe);
                self.draining.retain(|(f, _), _| f != fe);
            }
            Op::UnbindAddress(ip) => {
                self.addresses.remove(ip);
            }
        }
    }
}

/// One kernel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a virtual server.
    AddService {
        /// Which.
        fe: FrontEnd,
        /// Scheduler.
        scheduler: String,
        /// Persistence timeout.
        persistence: Option<u32>,
    },
    /// Change a virtual server's scheduler or persistence.
    UpdateService {
        /// Which.
        fe: FrontEnd,
        /// Scheduler.
        scheduler: String,
        /// Persistence timeout.
        persistence: Option<u32>,
    },
    /// Add a destination (NAT, weight [`WEIGHT`]).
    AddDest {
        /// Virtual server.
        fe: FrontEnd,
        /// Destination.
        dest: SocketAddr,
    },
    /// Give a present destination weight [`WEIGHT`] and NAT forwarding again.
    RestoreDest {
        /// Virtual server.
        fe: FrontEnd,
        /// Destination.
        dest: SocketAddr,
    },
    /// Weight 0: no new connections, established ones continue.
    DrainDest {
        /// Virtual server.
        fe: FrontEnd,
        /// Destination.
        dest: SocketAddr,
    },
    /// Remove a destination.
    DeleteDest {
        /// Virtual server.
        fe: FrontEnd,
        /// Destination.
        dest: SocketAddr,
    },
    /// Put an address on the dummy link.
    BindAddress(IpAddr),
    /// Delete a virtual server.
    DeleteService {
        /// Which.
        fe: FrontEnd,
    },
    /// Take an address off the dummy link.
    UnbindAddress(IpAddr),
}

impl Op {
    /// The virtual server the operation is about, if any.
    pub fn front_end(&self) -> Option<FrontEnd> {
        match self {
            Op::AddService { fe, .. }
            | Op::UpdateService { fe, .. }
            | Op::AddDest { fe, .. }
            | Op::RestoreDest { fe, .. }
            | Op::DrainDest { fe, .. }
            | Op::DeleteDest { fe, .. }
            | Op::DeleteService { fe } => Some(*fe),
            Op::BindAddress(_) | Op::UnbindAddress(_) => None,
        }
    }
}

fn settings(f: &mut fmt::Formatter<'_>, scheduler: &str, persistence: &Option<u32>) -> fmt::Result {
    write!(f, " {scheduler}")?;
    if let Some(t) = persistence {
        write!(f, " persistent {t}")?;
    }
    Ok(())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService {
                fe,
                scheduler,
                persistence,
            } => {
                write!(f, "add service {fe}")?;
                settings(f, scheduler, persistence)
            }
            Op::UpdateService {
                fe,
                scheduler,
                persistence,
            } => {
                write!(f, "update service {fe}")?;
                settings(f, scheduler, persistence)
            }
            Op::AddDest { fe, dest } => write!(f, "add dest {fe} -> {dest}"),
            Op::RestoreDest { fe, dest } => write!(f, "restore dest {fe} -> {dest}"),
            Op::DrainDest { fe, dest } => write!(f, "drain dest {fe} -> {dest}"),
            Op::DeleteDest { fe, dest } => write!(f, "delete dest {fe} -> {dest}"),
            Op::BindAddress(ip) => write!(f, "bind {ip}"),
            Op::DeleteService { fe } => write!(f, "delete service {fe}"),
            Op::UnbindAddress(ip) => write!(f, "unbind {ip}"),
        }
    }
}

/// Which part of the state a plan covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every wanted front end, every Sluice virtual server, every address (a full sync).
    All,
    /// These front ends and addresses only (a partial sync, a drain check).
    Some {
        /// Front ends to reconcile.
        front_ends: &'a BTreeSet<FrontEnd>,
        /// Addresses to reconcile.
        addresses: &'a BTreeSet<IpAddr>,
    },
}

/// The ordered operations turning `current` into what `model` wants, within `scope` (see
/// the module doc for the order). `now` is on the clock of [`Current::draining`].
pub fn plan(
    model: &Model,
    current: &Current,
    cfg: &Config,
    scope: Scope<'_>,
    now: Duration,
) -> Vec<Op> {
    let (front_ends, addresses): (BTreeSet<FrontEnd>, BTreeSet<IpAddr>) = match scope {
        Scope::All => (
            model
                .desired()
                .keys()
                .chain(current.services.keys())
                .copied()
                .collect(),
            model
                .bound_addresses()
                .into_iter()
                .chain(current.addresses.iter().copied())
                .collect(),
        ),
        Scope::Some {
            front_ends,
            addresses,
        } => (front_ends.clone(), addresses.clone()),
    };
    let mut adds = Vec::new();
    let mut retire = Vec::new();
    let mut deletes = Vec::new();
    for fe in &front_ends {
        let have = current.services.get(fe);
        let Some(w) = model.desired().get(fe) else {
            if have.is_some() {
                deletes.push(Op::DeleteService { fe: *fe });
            }
            continue;
        };
        let scheduler = w.scheduler.as_str().to_string();
        let Some(k) = have else {
            adds.push(Op::AddService {
                fe: *fe,
                scheduler,
                persistence: w.persistence,
            });
            adds.extend(w.dests.iter().map(|d| Op::AddDest { fe: *fe, dest: *d }));
            continue;
        };
        if k.scheduler != scheduler || k.persistence != w.persistence {
            adds.push(Op::UpdateService {
                fe: *fe,
                scheduler,
                persistence: w.persistence,
            });
        }
        for d in &w.dests {
            match k.dests.get(d) {
                None => adds.push(Op::AddDest { fe: *fe, dest: *d }),
                Some(kd) if !kd.is_right() => adds.push(Op::RestoreDest { fe: *fe, dest: *d }),
                Some(_) => {}
            }
        }
        for (d, kd) in &k.dests {
            if w.dests.binary_search(d).is_ok() {
                continue;
            }
            let conns = u64::from(kd.active) + u64::from(kd.inactive);
            let graceful = fe.protocol == Protocol::Tcp;
            if !graceful || conns == 0 {
                retire.push(Op::DeleteDest { fe: *fe, dest: *d });
            } else if kd.weight != 0 {
                retire.push(Op::DrainDest { fe: *fe, dest: *d });
            } else if current
                .draining
                .get(&(*fe, *d))
                .is_some_and(|since| now.saturating_sub(*since) >= cfg.drain_timeout)
            {
                retire.push(Op::DeleteDest { fe: *fe, dest: *d });
            }
        }
    }
    let mut ops = adds;
    ops.extend(retire);
    for a in &addresses {
        if model.binds(*a) && !current.addresses.contains(a) {
            ops.push(Op::BindAddress(*a));
        }
    }
    ops.extend(deletes);
    for a in &addresses {
        if !model.binds(*a) && current.addresses.contains(a) {
            ops.push(Op::UnbindAddress(*a));
        }
    }
    ops
}

/// The addresses of `front_ends` (what a partial plan reconciles besides them).
pub fn addresses_of(front_ends: &BTreeSet<FrontEnd>) -> BTreeSet<IpAddr> {
    front_ends.iter().map(|f| f.addr).collect()
}

/// The netlink destination an operation writes.
pub fn netlink_dest(op: &Op) -> Option<Destination> {
    match op {
        Op::AddDest { dest, .. } | Op::RestoreDest { dest, .. } => {
            Some(Destination::masq(dest.ip(), dest.port(), WEIGHT))
        }
        Op::DrainDest { dest, .. } | Op::DeleteDest { dest, .. } => {
            Some(Destination::masq(dest.ip(), dest.port(), 0))
        }
        _ => None,
    }
}

/// The state text shared by the golden files and `debug dump`: Sluice's virtual servers in
/// front-end order with their destinations, then the addresses on the dummy link.
pub fn state_text(current: &Current) -> String {
    let mut out = String::from("# virtual servers\n");
    for (fe, k) in &current.services {
        let _ = write!(out, "{fe} {}", k.scheduler);
        if let Some(t) = k.persistence {
            let _ = write!(out, " persistent {t}");
        }
        out.push('\n');
        for (d, kd) in &k.dests {
            let _ = write!(out, "  -> {d} weight {}", kd.weight);
            if kd.fwd_method & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ {
                let _ = write!(out, " {}", crate::client::forward_name(kd.fwd_method));
            }
            if kd.active + kd.inactive > 0 {
                let _ = write!(out, " (active {}, inactive {})", kd.active, kd.inactive);
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out, "# addresses on {}", crate::DUMMY_LINK);
    for a in &current.addresses {
        let _ = writeln!(out, "{a}");
    }
    out
}

#[cfg(test)]
mod tests;
