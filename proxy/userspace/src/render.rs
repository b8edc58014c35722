//! Pure render: service/endpoint maps → listener plan + one `iptables-restore --noflush`
//! transaction over the `SLUICEUS-*` chains.
//!
//! Two steps, both pure:
//!
//! 1. [`plan`] categorises each TCP/UDP service port's endpoints (Cluster and Local sets,
//!    exactly as every other mode, via [`categorize_endpoints`]) into a [`PortalPlan`]. A plan
//!    says which listeners the port needs ([`PortalPlan::listener_sets`]): one per endpoint
//!    *set* in use — normally just `cluster`; a second one, `local`, when a traffic policy is
//!    `Local`. The set of listeners depends only on the service's policies, never on the
//!    endpoints, so a listener (and its port) survives its endpoints coming and going.
//! 2. [`render`] turns the plans plus the listeners' ports into rules. Every sync rewrites all
//!    `SLUICEUS-*` chains (a handful of rules per service port; the transaction is atomic).
//!
//! Rule layout (`P` = service port, `LP` = listener port, `N` = node IP):
//!
//! * nat `SLUICEUS-PORTALS-CONTAINER` (from `PREROUTING`): `-d VIP/32 --dport P -j REDIRECT
//!   --to-ports LP` for ClusterIPs, externalIPs and LB IPs.
//! * nat `SLUICEUS-PORTALS-HOST` (from `OUTPUT`): the same matches `-j DNAT --to-destination N:LP`.
//! * nat `SLUICEUS-NODEPORT-CONTAINER` / `-HOST`: `-m addrtype --dst-type LOCAL --dport NODEPORT`,
//!   REDIRECT / DNAT likewise.
//! * filter `SLUICEUS-REJECT` (from `INPUT`/`FORWARD`/`OUTPUT`, new connections only): no usable
//!   endpoint anywhere → `REJECT` (`tcp-reset` for TCP so clients see "connection refused" at
//!   once, `icmp-port-unreachable` for UDP); a `Local` policy without local endpoints → `DROP`;
//!   LB IP traffic from sources outside `loadBalancerSourceRanges` (its portal rules match the
//!   allowed sources only) → `DROP`.
//!   Filter runs after nat, so it only sees Service traffic nat did not redirect.
//!
//! Which listener a destination uses:
//!
//! * ClusterIP: the internal set (`local` for `internalTrafficPolicy: Local`, else `cluster`).
//! * NodePort / externalIPs / LB IPs: the external set (`local` for `externalTrafficPolicy:
//!   Local`, else `cluster`), except that, like kube-proxy, traffic from this host (nat `OUTPUT`)
//!   and — when [`RenderConfig::cluster_cidr`] is known — from pods is short-circuited to the
//!   `cluster` listener, so it works even when this node has no local endpoint.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName};
use tracing::debug;

use crate::chains;

/// Which endpoints a listener balances over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSet {
    /// The Cluster set: usable endpoints anywhere (topology hints applied).
    Cluster,
    /// The Local set: usable endpoints on this node.
    Local,
}

impl fmt::Display for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointSet::Cluster => "cluster",
            EndpointSet::Local => "local",
        })
    }
}

/// Identity of one listener: a service port and the endpoint set it serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    /// The service port.
    pub service: ServicePortName,
    /// The endpoint set.
    pub set: EndpointSet,
}

impl ListenerKey {
    /// Builds a key.
    pub fn new(service: ServicePortName, set: EndpointSet) -> Self {
        Self { service, set }
    }
}

/// One TCP/UDP service port, categorised for this node (IPv4 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalPlan {
    /// The service port.
    pub name: ServicePortName,
    /// Its spec.
    pub service: Arc<ServicePort>,
    /// Cluster-set endpoint addresses, sorted. Always computed (even when both policies are
    /// Local: host and pod traffic to external addresses is short-circuited to it).
    pub cluster: Vec<SocketAddr>,
    /// Local-set endpoint addresses, sorted (empty unless a policy is Local).
    pub local: Vec<SocketAddr>,
    /// Some endpoint anywhere is usable: decides REJECT (none) vs DROP (none local).
    pub has_any_endpoints: bool,
}

impl PortalPlan {
    /// The set ClusterIP traffic uses.
    pub fn internal_set(&self) -> EndpointSet {
        if self.service.internal_policy_local {
            EndpointSet::Local
        } else {
            EndpointSet::Cluster
        }
    }

    /// The set NodePort / externalIP / LB-IP traffic from off-node uses.
    pub fn external_set(&self) -> EndpointSet {
        if self.service.external_policy_local {
            EndpointSet::Local
        } else {
            EndpointSet::Cluster
        }
    }

    /// Listeners this port needs, from its policies only (stable while endpoints change).
    pub fn listener_sets(&self) -> Vec<EndpointSet> {
        let mut sets = vec![self.internal_set()];
        if self.service.externally_accessible() {
            sets.push(self.external_set());
            // Host (and pod) traffic to external addresses is short-circuited to `cluster`.
            sets.push(EndpointSet::Cluster);
        }
        sets.sort();
        sets.dedup();
        sets
    }

    /// The endpoints of `set`.
    pub fn endpoints(&self, set: EndpointSet) -> &[SocketAddr] {
        match set {
            EndpointSet::Cluster => &self.cluster,
            EndpointSet::Local => &self.local,
        }
    }

    /// The listener keys this port needs.
    pub fn listener_keys(&self) -> impl Iterator<Item = ListenerKey> + '_ {
        self.listener_sets()
            .into_iter()
            .map(|s| ListenerKey::new(self.name.clone(), s))
    }
}

fn v4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }
}

/// Categorises every TCP/UDP service port (SCTP is skipped with a debug log; IPv6 addresses and
/// endpoints are ignored — this proxier is IPv4 only).
pub fn plan(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> Vec<PortalPlan> {
    let mut out = Vec::with_capacity(services.len());
    for (name, svc) in services {
        if svc.protocol == Protocol::Sctp {
            debug!(service = %name, "userspace proxy: SCTP is not supported, skipping");
            continue;
        }
        let eps: Vec<_> = endpoints
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(|e| e.ip.is_ipv4())
            .cloned()
            .collect();
        let cat = categorize_endpoints(&eps, svc, node_name, node_labels);
        let cluster = if svc.uses_cluster_endpoints() {
            cat.cluster.clone()
        } else {
            let mut tmp = (**svc).clone();
            tmp.internal_policy_local = false;
            tmp.external_policy_local = false;
            categorize_endpoints(&eps, &tmp, node_name, node_labels).cluster
        };
        let addrs = |v: &[Arc<sluice_proxy::model::Endpoint>]| {
            let mut a: Vec<SocketAddr> = v.iter().map(|e| e.addr()).collect();
            a.sort();
            a.dedup();
            a
        };
        out.push(PortalPlan {
            name: name.clone(),
            service: svc.clone(),
            has_any_endpoints: cat.has_any_endpoints || !cluster.is_empty(),
            local: if svc.uses_local_endpoints() {
                addrs(&cat.local)
            } else {
                Vec::new()
            },
            cluster: addrs(&cluster),
        });
    }
    out
}

/// Node-level inputs of the render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// Host-originated Service traffic is DNATed to `node_ip:listener port`.
    pub node_ip: Ipv4Addr,
    /// Pod CIDR; when set, pod traffic to an `externalTrafficPolicy: Local` service's external
    /// addresses is short-circuited to the `cluster` listener.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// Result of [`render`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// `# listener …` comment lines describing the listeners and their endpoints.
    pub listeners: String,
    /// The `iptables-restore --noflush` transaction (filter, then nat).
    pub rules: String,
}

impl Rendered {
    /// Listener comments followed by the rules: what the golden files hold and what is piped to
    /// `iptables-restore` (which skips `#` lines).
    pub fn text(&self) -> String {
        format!("{}{}", self.listeners, self.rules)
    }
}

/// `# listener <svc> <set> <proto> :<port> -> <endpoints>` (endpoints `-` when none).
pub fn listener_comment(
    key: &ListenerKey,
    protocol: Protocol,
    port: Option<u16>,
    endpoints: &[SocketAddr],
) -> String {
    let port = port.map_or("unbound".to_string(), |p| format!(":{p}"));
    let eps = if endpoints.is_empty() {
        "-".to_string()
    } else {
        endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "# listener {} {} {} {port} -> {eps}\n",
        label(&key.service),
        key.set,
        proto(protocol)
    )
}

/// `ns/name:port` (or `ns/name` for an unnamed port).
fn label(spn: &ServicePortName) -> String {
    if spn.port_name.is_empty() {
        format!("{}/{}", spn.namespace, spn.name)
    } else {
        format!("{}/{}:{}", spn.namespace, spn.name, spn.port_name)
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

#[derive(Default)]
struct Out {
    reject: Vec<String>,
    portals_container: Vec<String>,
    portals_host: Vec<String>,
    nodeport_container: Vec<String>,
    nodeport_host: Vec<String>,
}

/// What to do with one destination (a set of matches) of a service port.
enum Action {
    /// Redirect to the listener port.
    To(u16),
    /// Filter it with this target.
    Filter(&'static str),
}

/// Renders the rules for `plans`; `ports` gives each listener's bound port (a listener without a
/// port gets no redirect and is reported as `unbound`).
pub fn render(
    plans: &[PortalPlan],
    ports: &BTreeMap<ListenerKey, u16>,
    cfg: &RenderConfig,
) -> Rendered {
    let mut listeners = String::new();
    let mut out = Out::default();
    for p in plans {
        for key in p.listener_keys() {
            listeners.push_str(&listener_comment(
                &key,
                p.service.protocol,
                ports.get(&key).copied(),
                p.endpoints(key.set),
            ));
        }
        render_port(p, ports, cfg, &mut out);
    }

    let mut rules = String::new();
    rules.push_str("*filter\n");
    for c in chains::FILTER_CHAINS {
        let _ = writeln!(rules, ":{c} - [0:0]");
    }
    write_rules(&mut rules, chains::REJECT, &out.reject);
    rules.push_str("COMMIT\n*nat\n");
    for c in chains::NAT_CHAINS {
        let _ = writeln!(rules, ":{c} - [0:0]");
    }
    write_rules(
        &mut rules,
        chains::PORTALS_CONTAINER,
        &out.portals_container,
    );
    write_rules(&mut rules, chains::PORTALS_HOST, &out.portals_host);
    write_rules(
        &mut rules,
        chains::NODEPORT_CONTAINER,
        &out.nodeport_container,
    );
    write_rules(&mut rules, chains::NODEPORT_HOST, &out.nodeport_host);
    rules.push_str("COMMIT\n");
    Rendered { listeners, rules }
}

fn write_rules(text: &mut String, chain: &str, rules: &[String]) {
    for r in rules {
        let _ = writeln!(text, "-A {chain} {r}");
    }
}

fn render_port(
    p: &PortalPlan,
    ports: &BTreeMap<ListenerKey, u16>,
    cfg: &RenderConfig,
    out: &mut Out,
) {
    let svc = &p.service;
    let lbl = label(&p.name);
    let pr = proto(svc.protocol);
    let port_of = |set: EndpointSet| ports.get(&ListenerKey::new(p.name.clone(), set)).copied();
    // Where traffic using `set` goes: its listener if the set has endpoints, else REJECT (no
    // endpoints anywhere) or DROP (a Local policy with none on this node).
    let action = |set: EndpointSet| -> Option<Action> {
        if !p.endpoints(set).is_empty() {
            port_of(set).map(Action::To)
        } else if !p.has_any_endpoints {
            Some(Action::Filter(match svc.protocol {
                Protocol::Tcp => "REJECT --reject-with tcp-reset",
                _ => "REJECT --reject-with icmp-port-unreachable",
            }))
        } else {
            Some(Action::Filter("DROP"))
        }
    };
    let filter_comment = |a: &Action| match a {
        Action::Filter("DROP") => format!("{lbl} has no local endpoints"),
        _ => format!("{lbl} has no endpoints"),
    };
    let internal = action(p.internal_set());
    let external = action(p.external_set());
    // Short-circuit for host/pod traffic to external addresses when the external set is Local.
    let short_circuit = (p.external_set() == EndpointSet::Local)
        .then(|| action(EndpointSet::Cluster))
        .flatten()
        .and_then(|a| match a {
            Action::To(lp) => Some(lp),
            Action::Filter(_) => None,
        });
    let node_ip = cfg.node_ip;

    // `-d VIP/32 -p P -m comment … -m P --dport N` in iptables-save's canonical order.
    let vip = |ip: Ipv4Addr, what: &str| {
        format!(
            "-d {ip}/32 -p {pr} -m comment --comment \"{lbl} {what}\" -m {pr} --dport {}",
            svc.port
        )
    };
    let addr =
        |out: &mut Out, ip: Ipv4Addr, what: &str, action: &Option<Action>, external: bool| {
            let m = vip(ip, what);
            match action {
                Some(Action::To(lp)) => {
                    out.portals_container
                        .push(format!("{m} -j REDIRECT --to-ports {lp}"));
                    let host_lp = if external {
                        short_circuit.unwrap_or(*lp)
                    } else {
                        *lp
                    };
                    out.portals_host
                        .push(format!("{m} -j DNAT --to-destination {node_ip}:{host_lp}"));
                }
                Some(a @ Action::Filter(target)) => {
                    if external {
                        if let Some(lp) = short_circuit {
                            if let Some(cidr) = cfg.cluster_cidr {
                                out.portals_container
                                    .push(format!("-s {cidr} {m} -j REDIRECT --to-ports {lp}"));
                            }
                            out.portals_host
                                .push(format!("{m} -j DNAT --to-destination {node_ip}:{lp}"));
                        }
                    }
                    out.reject.push(format!(
                    "-d {ip}/32 -p {pr} -m comment --comment \"{}\" -m {pr} --dport {} -j {target}",
                    filter_comment(a),
                    svc.port
                ));
                }
                None => {}
            }
        };

    for ip in svc.cluster_ips.iter().filter_map(v4) {
        addr(out, ip, "cluster IP", &internal, false);
    }
    for ip in svc.external_ips.iter().filter_map(v4) {
        addr(out, ip, "external IP", &external, true);
    }
    // `loadBalancerSourceRanges`: only allowed sources are redirected (kube-proxy's FW chain);
    // the rest reach filter un-redirected and are dropped there. A node inside an allowed range
    // may also send from the LB IP itself (a VIP held by the node), as kube-proxy allows.
    let ranges: Vec<Ipv4Net> = svc
        .load_balancer_source_ranges
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect();
    let restricted = !svc.load_balancer_source_ranges.is_empty();
    for ip in svc.load_balancer_ips.iter().filter_map(v4) {
        let Some(Action::To(lp)) = external.as_ref().filter(|_| restricted) else {
            addr(out, ip, "loadbalancer IP", &external, true);
            continue;
        };
        let m = vip(ip, "loadbalancer IP");
        let host_lp = short_circuit.unwrap_or(*lp);
        let node_allowed = ranges.iter().any(|r| r.contains(&node_ip));
        for r in ranges
            .iter()
            .copied()
            .chain(node_allowed.then(|| Ipv4Net::from(ip)))
        {
            out.portals_container
                .push(format!("-s {r} {m} -j REDIRECT --to-ports {lp}"));
            out.portals_host.push(format!(
                "-s {r} {m} -j DNAT --to-destination {node_ip}:{host_lp}"
            ));
        }
        out.reject.push(format!(
            "-d {ip}/32 -p {pr} -m comment --comment \"{lbl} traffic not accepted by loadBalancerSourceRanges\" -m {pr} --dport {} -j DROP",
            svc.port
        ));
    }

    if let Some(np) = svc.node_port {
        let m = format!(
            "-p {pr} -m comment --comment \"{lbl} node port\" -m addrtype --dst-type LOCAL -m {pr} --dport {np}"
        );
        match &external {
            Some(Action::To(lp)) => {
                out.nodeport_container
                    .push(format!("{m} -j REDIRECT --to-ports {lp}"));
                let host_lp = short_circuit.unwrap_or(*lp);
                out.nodeport_host
                    .push(format!("{m} -j DNAT --to-destination {node_ip}:{host_lp}"));
            }
            Some(a @ Action::Filter(target)) => {
                if let Some(lp) = short_circuit {
                    if let Some(cidr) = cfg.cluster_cidr {
                        out.nodeport_container
                            .push(format!("-s {cidr} {m} -j REDIRECT --to-ports {lp}"));
                    }
                    out.nodeport_host
                        .push(format!("{m} -j DNAT --to-destination {node_ip}:{lp}"));
                }
                out.reject.push(format!(
                    "-p {pr} -m comment --comment \"{}\" -m addrtype --dst-type LOCAL -m {pr} --dport {np} -j {target}",
                    filter_comment(a)
                ));
            }
            None => {}
        }
    }
}

/// Splits a saved rule into words, honouring double quotes (`--comment "a b"` is one word,
/// returned without the quotes).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Per table: our chains declared, rules of our chains, and rules of other chains jumping into
/// ours, from `iptables-save` output (any tables, any order).
#[derive(Debug, Default)]
struct Saved {
    tables: BTreeMap<String, SavedTable>,
}

#[derive(Debug, Default)]
struct SavedTable {
    own_chains: Vec<String>,
    own_rules: BTreeMap<String, Vec<String>>,
    jumps_in: Vec<String>,
}

fn parse_saved(saved: &str) -> Saved {
    let mut s = Saved::default();
    let mut table: Option<String> = None;
    for line in saved.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim().to_string());
            s.tables.entry(name.trim().to_string()).or_default();
            continue;
        }
        let Some(t) = table.as_ref().and_then(|t| s.tables.get_mut(t)) else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(c) = decl
                .split_whitespace()
                .next()
                .filter(|c| chains::is_own_chain(c))
            {
                t.own_chains.push(c.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let ws = words(rest);
            let Some(chain) = ws.first() else { continue };
            if chains::is_own_chain(chain) {
                let rule = rest[chain.len()..].trim_start().to_string();
                t.own_rules.entry(chain.clone()).or_default().push(rule);
            } else if ws
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && chains::is_own_chain(&w[1]))
            {
                t.jumps_in.push(rest.to_string());
            }
        } else if line == "COMMIT" {
            table = None;
        }
    }
    s
}

/// One restore transaction deleting every `SLUICEUS-*` chain and every rule of another chain
/// that jumps into one, from `iptables-save` output; `None` when there is nothing of ours.
pub fn cleanup_text(saved: &str) -> Option<String> {
    let s = parse_saved(saved);
    let mut out = String::new();
    for (name, t) in &s.tables {
        if t.own_chains.is_empty() && t.jumps_in.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{name}");
        for j in &t.jumps_in {
            let _ = writeln!(out, "-D {j}");
        }
        // Declaring flushes the chain, so the deletes below cannot fail on references between
        // our own chains.
        for c in &t.own_chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for c in &t.own_chains {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// What is programmed, from `iptables-save` output, in the format of [`Rendered::rules`]: the
/// `SLUICEUS-*` chains of filter then nat with their rules. Chains the mode does not know are
/// appended after the known ones; jumps from built-in chains are listed as `# jump` comments.
pub fn dump_saved(saved: &str) -> String {
    let s = parse_saved(saved);
    let mut out = String::new();
    for (table, known) in [
        ("filter", &chains::FILTER_CHAINS[..]),
        ("nat", &chains::NAT_CHAINS[..]),
    ] {
        let Some(t) = s.tables.get(table) else {
            let _ = writeln!(out, "# table {table}: not in iptables-save output");
            continue;
        };
        for j in &t.jumps_in {
            let _ = writeln!(out, "# jump -t {table} -A {j}");
        }
        let mut order: Vec<&str> = known
            .iter()
            .copied()
            .filter(|c| t.own_chains.iter().any(|o| o == c))
            .collect();
        order.extend(
            t.own_chains
                .iter()
                .map(String::as_str)
                .filter(|c| !known.contains(c)),
        );
        let _ = writeln!(out, "*{table}");
        for c in &order {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for c in &order {
            if let Some(rules) = t.own_rules.get(*c) {
                write_rules(&mut out, c, rules);
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_honour_quotes() {
        assert_eq!(
            words(r#"PREROUTING -m comment --comment "a b" -j X"#),
            ["PREROUTING", "-m", "comment", "--comment", "a b", "-j", "X"]
        );
    }

    const SAVED: &str = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
:SLUICE-SERVICES - [0:0]\n:SLUICEUS-PORTALS-CONTAINER - [0:0]\n:SLUICEUS-NODEPORT-HOST - [0:0]\n\
-A PREROUTING -m comment --comment \"sluice userspace portals\" -j SLUICEUS-PORTALS-CONTAINER\n\
-A PREROUTING -m comment --comment \"sluice service portals\" -j SLUICE-SERVICES\n\
-A SLUICEUS-PORTALS-CONTAINER -d 10.96.0.1/32 -p tcp -m comment --comment \"default/web cluster IP\" -m tcp --dport 80 -j REDIRECT --to-ports 40000\n\
COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:SLUICEUS-REJECT - [0:0]\n\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"sluice userspace rejects\" -j SLUICEUS-REJECT\nCOMMIT\n";

    #[test]
    fn cleanup_deletes_only_our_chains_and_the_jumps_into_them() {
        let text = cleanup_text(SAVED).unwrap();
        assert_eq!(
            text,
            "*filter\n\
-D INPUT -m conntrack --ctstate NEW -m comment --comment \"sluice userspace rejects\" -j SLUICEUS-REJECT\n\
:SLUICEUS-REJECT - [0:0]\n-X SLUICEUS-REJECT\nCOMMIT\n\
*nat\n\
-D PREROUTING -m comment --comment \"sluice userspace portals\" -j SLUICEUS-PORTALS-CONTAINER\n\
:SLUICEUS-PORTALS-CONTAINER - [0:0]\n:SLUICEUS-NODEPORT-HOST - [0:0]\n\
-X SLUICEUS-PORTALS-CONTAINER\n-X SLUICEUS-NODEPORT-HOST\nCOMMIT\n"
        );
        assert!(!text.contains("SLUICE-SERVICES"));
        assert_eq!(
            cleanup_text("*nat\n:PREROUTING ACCEPT [0:0]\n:SLUICE-X - [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn dump_lists_our_chains_in_render_order() {
        let d = dump_saved(SAVED);
        assert_eq!(
            d,
            "# jump -t filter -A INPUT -m conntrack --ctstate NEW -m comment --comment \"sluice userspace rejects\" -j SLUICEUS-REJECT\n\
*filter\n:SLUICEUS-REJECT - [0:0]\nCOMMIT\n\
# jump -t nat -A PREROUTING -m comment --comment \"sluice userspace portals\" -j SLUICEUS-PORTALS-CONTAINER\n\
*nat\n:SLUICEUS-PORTALS-CONTAINER - [0:0]\n:SLUICEUS-NODEPORT-HOST - [0:0]\n\
-A SLUICEUS-PORTALS-CONTAINER -d 10.96.0.1/32 -p tcp -m comment --comment \"default/web cluster IP\" -m tcp --dport 80 -j REDIRECT --to-ports 40000\n\
COMMIT\n"
        );
    }
}
