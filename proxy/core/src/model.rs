//! The proxy's model of services and endpoints.
//!
//! These types are what every [`crate::proxier::Dataplane`] renders from. They are produced only
//! by [`crate::tracker`] from Kubernetes objects and are plain data: no I/O, deterministic order
//! (`BTreeMap`/`BTreeSet`) so that renderers can be golden-file tested.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// Label on Services naming the proxy that should handle them.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label on EndpointSlices of headless services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label on EndpointSlices naming the owning Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Node label holding the node's topology zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    Tcp,
    /// UDP (needs conntrack cleanup when endpoints go away).
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol string; `None` (unset) means TCP. Unknown values yield `None`.
    pub fn from_k8s(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// IP family a proxier instance handles (dual-stack = two independent proxiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// Whether `ip` belongs to this family.
    pub fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (IpFamily::V4, IpAddr::V4(_)) | (IpFamily::V6, IpAddr::V6(_))
        )
    }
}

/// A shared copy of `s` for the strings that service port names repeat across thousands of
/// keys (namespaces, port names): one allocation per distinct string instead of one per key.
/// The pool drops strings no key holds any more whenever it has doubled since it last did.
pub fn intern(s: &str) -> Arc<str> {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static POOL: Mutex<(BTreeSet<Arc<str>>, usize)> = Mutex::new((BTreeSet::new(), 0));
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = pool.0.get(s) {
        return a.clone();
    }
    if pool.0.len() >= 2 * pool.1 + 64 {
        pool.0.retain(|a| Arc::strong_count(a) > 1);
        pool.1 = pool.0.len();
    }
    let a: Arc<str> = Arc::from(s);
    pool.0.insert(a.clone());
    a
}

/// Namespace + name of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl NamespacedName {
    /// Builds a name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of one port of one Service: the key of [`ServicePortMap`] and [`EndpointsMap`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
///
/// The strings are shared (`Arc<str>`): every map keyed by service port (the proxy's merged
/// maps, each mode's own state) holds a copy of each key, and at 10,000 services three heap
/// strings per copy add up to megabytes.
pub struct ServicePortName {
    /// Service namespace.
    pub namespace: Arc<str>,
    /// Service name.
    pub name: Arc<str>,
    /// Port name (`""` for a single unnamed port); matches the EndpointSlice port name.
    pub port_name: Arc<str>,
    /// Protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// Builds a service port name.
    pub fn new(
        namespace: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        port_name: impl Into<Arc<str>>,
        protocol: Protocol,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            port_name: port_name.into(),
            protocol,
        }
    }

    /// The Service this port belongs to.
    pub fn service(&self) -> NamespacedName {
        NamespacedName::new(&*self.namespace, &*self.name)
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port_name, self.protocol
        )
    }
}

/// One port of a Service as the proxy sees it (already filtered to the proxier's IP family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Cluster IPs (`.spec.clusterIPs`) of the proxier's family.
    pub cluster_ips: Vec<IpAddr>,
    /// Service port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// NodePort, if allocated.
    pub node_port: Option<u16>,
    /// `.spec.externalIPs` of the proxier's family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs with `ipMode: VIP` (or unset); `Proxy` mode IPs are excluded.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` = no affinity.
    pub session_affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` on a NodePort/LoadBalancer service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// Health-check node port (LoadBalancer + externalTrafficPolicy Local only).
    pub health_check_node_port: Option<u16>,
    /// `.spec.loadBalancerSourceRanges` of the proxier's family.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// The Service's [`ANNOTATION_SCHEDULER`] (a mode with a choice of scheduler, ipvs,
    /// validates it and falls back to the node's default); `None` without one.
    pub scheduler: Option<Arc<str>>,
}

/// The Service annotation choosing its load-balancing scheduler in modes that have a choice
/// (the ipvs mode: `rr`, `lc`, `sh`, `mh`, …), e.g. `ipvs.sluice.dev/scheduler: mh`.
pub const ANNOTATION_SCHEDULER: &str = "ipvs.sluice.dev/scheduler";

impl ServicePort {
    /// A minimal ClusterIP port, handy for tests and builders.
    pub fn cluster_ip(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            cluster_ips: vec![ip],
            port,
            protocol,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            session_affinity_timeout: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            scheduler: None,
        }
    }

    /// Reachable from outside the cluster (NodePort, external IPs or LB IPs).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Some traffic uses the Cluster endpoint set.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || (self.externally_accessible() && !self.external_policy_local)
    }

    /// Some traffic uses the Local endpoint set.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible() && self.external_policy_local)
    }
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Endpoint IP (first address of the EndpointSlice endpoint).
    pub ip: IpAddr,
    /// Target port (from the EndpointSlice port with the service port's name).
    pub port: u16,
    /// `conditions.ready` (unset = true).
    pub ready: bool,
    /// `conditions.serving` (unset = true).
    pub serving: bool,
    /// `conditions.terminating` (unset = false).
    pub terminating: bool,
    /// `nodeName`, if set.
    pub node_name: Option<String>,
    /// `zone`, if set.
    pub zone: Option<String>,
    /// `hints.forZones`.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes`.
    pub node_hints: BTreeSet<String>,
    /// Runs on this proxy's node (`nodeName` equals the proxy's node name).
    pub is_local: bool,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint with no topology info.
    pub fn ready(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
            is_local: false,
        }
    }

    /// `ip:port` of the endpoint.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// Default masquerade mark (kube-proxy's `0x4000`, bit 14).
pub const DEFAULT_MASQUERADE_MARK: u32 = 0x4000;

/// Node-level inputs of a NAT mode's render (iptables, nftables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// This node's name (decides which endpoints are local).
    pub node_name: String,
    /// IP family of this proxier; other addresses are skipped.
    pub family: IpFamily,
    /// Addresses NodePorts are served on; empty = every local address.
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDR: traffic to a ClusterIP from outside it is masqueraded, and pod traffic to an
    /// `externalTrafficPolicy: Local` service's external IPs is short-circuited. `None` = neither.
    pub cluster_cidr: Option<IpNet>,
    /// Masquerade mark bit(s).
    pub masquerade_mark: u32,
}

impl RenderConfig {
    /// IPv4 config for `node_name` with the default mark, no node IPs and no cluster CIDR.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            family: IpFamily::V4,
            node_ips: Vec::new(),
            cluster_cidr: None,
            masquerade_mark: DEFAULT_MASQUERADE_MARK,
        }
    }
}

/// All service ports, keyed and ordered by [`ServicePortName`].
pub type ServicePortMap = BTreeMap<ServicePortName, Arc<ServicePort>>;

/// All endpoints per service port; each list is sorted by `(ip, port)`.
pub type EndpointsMap = BTreeMap<ServicePortName, Vec<Arc<Endpoint>>>;

/// Identity and filters of this proxy instance, shared by the trackers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// This node's name (decides [`Endpoint::is_local`]).
    pub node_name: String,
    /// Our `service.kubernetes.io/service-proxy-name`; `None` = handle only unlabelled services.
    pub proxy_name: Option<String>,
    /// IP family handled; `None` = keep both (single proxier for both families).
    pub ip_family: Option<IpFamily>,
}

impl ProxyConfig {
    /// Config for `node_name`, no proxy name, both families.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            proxy_name: None,
            ip_family: None,
        }
    }

    /// Whether `ip` is of the handled family.
    pub fn family_matches(&self, ip: &IpAddr) -> bool {
        self.ip_family.is_none_or(|f| f.matches(ip))
    }
}

/// 80 bits of FNV-1a/128 over `s`, as 16 RFC 4648 base32 characters. Stable across releases:
/// changing it renames every chain or set named by it on upgrade (harmless, but churny).
pub fn hash_name(s: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h = OFFSET;
    for b in s.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    let top = h >> 48; // 80 bits
    (0..16)
        .map(|i| ALPHABET[((top >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_strings_are_shared_and_dropped_once_unused() {
        let a = intern("intern-test-ns");
        let b = intern(&String::from("intern-test-ns"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "intern-test-ns");
        // Strings nobody holds any more go when the pool prunes (after it has doubled).
        let weak = Arc::downgrade(&a);
        drop((a, b));
        for i in 0..10_000 {
            intern(&format!("intern-test-filler-{i}"));
        }
        assert!(
            weak.upgrade().is_none(),
            "the unused string is still pooled"
        );
        let keys = ServicePortName::new(intern("ns"), "svc", intern(""), Protocol::Tcp);
        assert!(Arc::ptr_eq(&keys.namespace, &intern("ns")));
    }
}
