//! Pure render: service/endpoint maps → one `iptables-restore --noflush` transaction.
//!
//! The output touches only Sluice chains (see [`crate::chains`]); the jumps from the built-in
//! chains into them are installed separately ([`crate::apply::BASE_JUMPS`]). Facts followed
//! (kube-proxy's iptables mode):
//!
//! * ClusterIP traffic jumps to the *internal* chain (`SVC` = Cluster endpoints, or `SVL` = Local
//!   endpoints for `internalTrafficPolicy: Local`); off-cluster sources are masqueraded.
//! * NodePort / externalIP / LB-IP traffic jumps to `EXT`. With `externalTrafficPolicy: Cluster`
//!   everything is masqueraded; with `Local` only host-originated traffic is (and pod and host
//!   traffic is short-circuited to the Cluster chain), the rest goes to `SVL`.
//! * LB IPs with `loadBalancerSourceRanges` go through `FW` (allowed sources → `EXT`); what falls
//!   out un-DNATed is dropped by `SLUICE-FIREWALL` in filter.
//! * An endpoint chain `SEP` masquerades hairpin traffic (source = endpoint) and DNATs.
//! * No usable endpoints anywhere → REJECT in filter; a Local policy without local endpoints →
//!   DROP in filter. Filter rules match the original destination, so they only see packets that
//!   nat did not DNAT.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{
    Endpoint, EndpointsMap, IpFamily, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::Changes;

use crate::chains::{self, endpoint_chain, service_chain, Kind};

/// Default masquerade mark (kube-proxy's `0x4000`, bit 14).
pub const DEFAULT_MASQUERADE_MARK: u32 = 0x4000;

/// Node-level inputs of the render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// This node's name (decides which endpoints are local).
    pub node_name: String,
    /// IP family of this proxier (`iptables` = V4, `ip6tables` = V6); other addresses are skipped.
    pub family: IpFamily,
    /// Addresses NodePorts are served on; empty = every local address (`--dst-type LOCAL`).
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

/// Sluice chains currently present in the kernel (input for stale-chain deletion and for
/// deciding whether an unchanged service's chains exist in a partial render).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingChains {
    /// Chains of the `filter` table.
    pub filter: BTreeSet<String>,
    /// Chains of the `nat` table.
    pub nat: BTreeSet<String>,
}

/// Result of a render.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The `iptables-restore --noflush` input.
    pub text: String,
    /// Sluice chains that exist after applying `text` (the next render's [`ExistingChains`]).
    pub chains: ExistingChains,
}

/// Renders the whole desired state into restore text.
///
/// With `changes.full == false`, per-service chains are written only for services in
/// `changes.services` (or whose chains are missing from `existing`); the dispatch chains are
/// always rewritten. Chains in `existing` that are no longer wanted are flushed and deleted.
pub fn render(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    config: &RenderConfig,
    changes: &Changes,
    existing: &ExistingChains,
) -> Rendered {
    let mut out = Out::default();
    for (spn, svc) in services {
        let eps = endpoints.get(spn).map(Vec::as_slice).unwrap_or(&[]);
        render_service(spn, svc, eps, config, changes, &mut out);
    }
    let mut per_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (chain, rules) in out.service_chains {
        let written =
            changes.full || changes.services.contains(&rules.0) || !existing.nat.contains(&chain);
        if written {
            per_service.insert(chain, rules.1);
        }
    }

    let mut text = String::new();
    let mark = format!("{:#x}", config.masquerade_mark);
    let filter_chains: BTreeSet<String> = chains::FILTER_CHAINS
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut nat_chains: BTreeSet<String> =
        chains::NAT_CHAINS.iter().map(|c| c.to_string()).collect();
    nat_chains.extend(out.wanted.iter().cloned());

    // filter
    text.push_str("*filter\n");
    for c in chains::FILTER_CHAINS {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    let stale_filter: Vec<&String> = existing
        .filter
        .iter()
        .filter(|c| chains::is_sluice_chain(c) && !filter_chains.contains(*c))
        .collect();
    for c in &stale_filter {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    write_rules(&mut text, chains::SERVICES, &out.filter_services);
    write_rules(&mut text, chains::EXTERNAL_SERVICES, &out.filter_external);
    let forward = [
        "-m conntrack --ctstate INVALID -j DROP".to_string(),
        format!(
            "-m comment --comment \"sluice forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
        ),
        "-m comment --comment \"sluice forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
    ];
    write_rules(&mut text, chains::FORWARD, &forward);
    write_rules(&mut text, chains::FIREWALL, &out.filter_firewall);
    for c in &stale_filter {
        let _ = writeln!(text, "-X {c}");
    }
    text.push_str("COMMIT\n");

    // nat
    text.push_str("*nat\n");
    for c in chains::NAT_CHAINS {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    for c in per_service.keys() {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    let stale_nat: Vec<&String> = existing
        .nat
        .iter()
        .filter(|c| chains::is_sluice_chain(c) && !nat_chains.contains(*c))
        .collect();
    for c in &stale_nat {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    let mut nat_services = out.nat_services;
    let nodeport_jumps: Vec<String> = if config.node_ips.is_empty() {
        vec!["-m addrtype --dst-type LOCAL".to_string()]
    } else {
        family_ips(&config.node_ips, config.family)
            .map(|ip| format!("-d {}", host(ip)))
            .collect()
    };
    for m in nodeport_jumps {
        nat_services.push(format!(
            "-m comment --comment \"sluice service nodeports; must be last\" {m} -j {}",
            chains::NODEPORTS
        ));
    }
    write_rules(&mut text, chains::SERVICES, &nat_services);
    write_rules(&mut text, chains::NODEPORTS, &out.nat_nodeports);
    let postrouting = [
        format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
        format!("-j MARK --xor-mark {mark}"),
        "-m comment --comment \"sluice service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .to_string(),
    ];
    write_rules(&mut text, chains::POSTROUTING, &postrouting);
    write_rules(
        &mut text,
        chains::MARK_MASQ,
        &[format!("-j MARK --or-mark {mark}")],
    );
    for (c, rules) in &per_service {
        write_rules(&mut text, c, rules);
    }
    for c in &stale_nat {
        let _ = writeln!(text, "-X {c}");
    }
    text.push_str("COMMIT\n");

    Rendered {
        text,
        chains: ExistingChains {
            filter: filter_chains,
            nat: nat_chains,
        },
    }
}

/// Rules collected while walking the services.
#[derive(Default)]
struct Out {
    filter_services: Vec<String>,
    filter_external: Vec<String>,
    filter_firewall: Vec<String>,
    nat_services: Vec<String>,
    nat_nodeports: Vec<String>,
    /// Per-service chain → (owning service, rules).
    service_chains: BTreeMap<String, (sluice_proxy::model::NamespacedName, Vec<String>)>,
    /// Every per-service chain that should exist.
    wanted: BTreeSet<String>,
}

impl Out {
    fn chain(&mut self, spn: &ServicePortName, name: &str) -> &mut Vec<String> {
        self.wanted.insert(name.to_string());
        &mut self
            .service_chains
            .entry(name.to_string())
            .or_insert_with(|| (spn.service(), Vec::new()))
            .1
    }
}

fn write_rules(text: &mut String, chain: &str, rules: &[String]) {
    for r in rules {
        let _ = writeln!(text, "-A {chain} {r}");
    }
}

fn family_ips(ips: &[IpAddr], family: IpFamily) -> impl Iterator<Item = &IpAddr> {
    ips.iter().filter(move |ip| family.matches(ip))
}

/// `ip/32` or `ip/128`.
fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// `-p tcp -m tcp --dport N`.
fn dport(p: Protocol, port: u16) -> String {
    let p = proto(p);
    format!("-p {p} -m {p} --dport {port}")
}

/// `ns/name:port` (or `ns/name` for an unnamed port), as used in comments.
fn label(spn: &ServicePortName) -> String {
    if spn.port_name.is_empty() {
        format!("{}/{}", spn.namespace, spn.name)
    } else {
        format!("{}/{}:{}", spn.namespace, spn.name, spn.port_name)
    }
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

fn reject(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "REJECT --reject-with icmp-port-unreachable",
        IpFamily::V6 => "REJECT --reject-with icmp6-port-unreachable",
    }
}

fn union_by_addr(a: &[Arc<Endpoint>], b: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
    let mut m: BTreeMap<SocketAddr, Arc<Endpoint>> = BTreeMap::new();
    for ep in a.iter().chain(b) {
        m.entry(ep.addr()).or_insert_with(|| ep.clone());
    }
    m.into_values().collect()
}

fn render_service(
    spn: &ServicePortName,
    svc: &ServicePort,
    eps: &[Arc<Endpoint>],
    cfg: &RenderConfig,
    changes: &Changes,
    out: &mut Out,
) {
    let fam = cfg.family;
    let eps: Vec<Arc<Endpoint>> = eps.iter().filter(|e| fam.matches(&e.ip)).cloned().collect();
    let cat = categorize_endpoints(&eps, svc, &cfg.node_name, &changes.node_labels);
    // Externally reachable services always need the Cluster set: pod and host traffic to their
    // external addresses is short-circuited to it even with both policies Local.
    let mut cluster = cat.cluster.clone();
    if svc.externally_accessible() && !svc.uses_cluster_endpoints() {
        let mut tmp = svc.clone();
        tmp.internal_policy_local = false;
        cluster = categorize_endpoints(&eps, &tmp, &cfg.node_name, &changes.node_labels).cluster;
    }
    let local = cat.local.clone();
    let has_endpoints = cat.has_any_endpoints || !cluster.is_empty();

    let lbl = label(spn);
    let svc_chain = service_chain(Kind::Svc, spn);
    let svl_chain = service_chain(Kind::Svl, spn);
    let ext_chain = service_chain(Kind::Ext, spn);
    let fw_chain = service_chain(Kind::Fw, spn);
    let uses_svc = !cluster.is_empty();
    let uses_svl = !local.is_empty() && svc.uses_local_endpoints();

    let (internal_chain, has_internal) = if svc.internal_policy_local {
        (&svl_chain, has_endpoints && uses_svl)
    } else {
        (&svc_chain, has_endpoints && uses_svc)
    };
    let (external_policy_chain, has_external) = if svc.external_policy_local {
        (&svl_chain, has_endpoints && uses_svl)
    } else {
        (&svc_chain, has_endpoints && uses_svc)
    };
    let uses_ext = has_endpoints && svc.externally_accessible();
    let (internal_filter, external_filter) = if !has_endpoints {
        let c = format!("{lbl} has no endpoints");
        (Some((c.clone(), reject(fam))), Some((c, reject(fam))))
    } else {
        let c = format!("{lbl} has no local endpoints");
        (
            (!has_internal).then(|| (c.clone(), "DROP")),
            (!has_external).then_some((c, "DROP")),
        )
    };
    let dp = dport(svc.protocol, svc.port);

    // ClusterIPs.
    for ip in family_ips(&svc.cluster_ips, fam) {
        let d = host(ip);
        if has_internal {
            out.nat_services.push(format!(
                "{} -d {d} {dp} -j {internal_chain}",
                comment(&format!("{lbl} cluster IP"))
            ));
            if let Some(cidr) = cfg.cluster_cidr {
                out.chain(spn, internal_chain).push(format!(
                    "{} -d {d} {dp} ! -s {cidr} -j {}",
                    comment(&format!("{lbl} cluster IP")),
                    chains::MARK_MASQ
                ));
            }
        } else if let Some((c, target)) = &internal_filter {
            out.filter_services
                .push(format!("{} -d {d} {dp} -j {target}", comment(c)));
        }
    }

    // External IPs.
    for ip in family_ips(&svc.external_ips, fam) {
        let d = host(ip);
        if has_endpoints {
            out.nat_services.push(format!(
                "{} -d {d} {dp} -j {ext_chain}",
                comment(&format!("{lbl} external IP"))
            ));
        }
        if let Some((c, target)) = &external_filter {
            out.filter_external
                .push(format!("{} -d {d} {dp} -j {target}", comment(c)));
        }
    }

    // Load-balancer IPs.
    let ranges: Vec<&IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .filter(|n| fam.matches(&n.addr()))
        .collect();
    let lb_ips: Vec<&IpAddr> = family_ips(&svc.load_balancer_ips, fam).collect();
    let lb_target = if ranges.is_empty() {
        &ext_chain
    } else {
        &fw_chain
    };
    for ip in &lb_ips {
        let d = host(ip);
        if has_endpoints {
            out.nat_services.push(format!(
                "{} -d {d} {dp} -j {lb_target}",
                comment(&format!("{lbl} loadbalancer IP"))
            ));
        }
        if !ranges.is_empty() {
            out.filter_firewall.push(format!(
                "{} -d {d} {dp} -j DROP",
                comment(&format!("{lbl} traffic not accepted by {fw_chain}"))
            ));
        }
        if let Some((c, target)) = &external_filter {
            out.filter_external
                .push(format!("{} -d {d} {dp} -j {target}", comment(c)));
        }
    }
    if has_endpoints && !ranges.is_empty() && !lb_ips.is_empty() {
        let c = comment(&format!("{lbl} loadbalancer IP"));
        let mut rules: Vec<String> = ranges
            .iter()
            .map(|r| format!("{c} -s {r} -j {ext_chain}"))
            .collect();
        // A VIP-style LB IP is often a local address: requests from this node then arrive with
        // the LB IP as source. Allow them when the node itself is in an allowed range.
        let node_allowed = cfg
            .node_ips
            .iter()
            .any(|n| ranges.iter().any(|r| r.contains(n)));
        if node_allowed {
            rules.extend(
                lb_ips
                    .iter()
                    .map(|ip| format!("{c} -s {} -j {ext_chain}", host(ip))),
            );
        }
        out.chain(spn, &fw_chain).extend(rules);
    }

    // NodePort.
    if let Some(np) = svc.node_port {
        let ndp = dport(svc.protocol, np);
        if has_endpoints {
            out.nat_nodeports
                .push(format!("{} {ndp} -j {ext_chain}", comment(&lbl)));
        }
        if let Some((c, target)) = &external_filter {
            if cfg.node_ips.is_empty() {
                out.filter_external.push(format!(
                    "{} -m addrtype --dst-type LOCAL {ndp} -j {target}",
                    comment(c)
                ));
            } else {
                for ip in family_ips(&cfg.node_ips, fam) {
                    out.filter_external.push(format!(
                        "{} -d {} {ndp} -j {target}",
                        comment(c),
                        host(ip)
                    ));
                }
            }
        }
    }

    // EXT chain.
    if uses_ext {
        let mut rules = Vec::new();
        if !svc.external_policy_local {
            rules.push(format!(
                "{} -j {}",
                comment(&format!(
                    "masquerade traffic for {lbl} external destinations"
                )),
                chains::MARK_MASQ
            ));
        } else {
            if let Some(cidr) = cfg.cluster_cidr {
                rules.push(format!(
                    "{} -s {cidr} -j {svc_chain}",
                    comment(&format!("pod traffic for {lbl} external destinations"))
                ));
            }
            rules.push(format!(
                "{} -m addrtype --src-type LOCAL -j {}",
                comment(&format!(
                    "masquerade LOCAL traffic for {lbl} external destinations"
                )),
                chains::MARK_MASQ
            ));
            rules.push(format!(
                "{} -m addrtype --src-type LOCAL -j {svc_chain}",
                comment(&format!(
                    "route LOCAL traffic for {lbl} external destinations"
                ))
            ));
        }
        if has_external {
            rules.push(format!("-j {external_policy_chain}"));
        }
        out.chain(spn, &ext_chain).extend(rules);
    }

    // Endpoint-selection chains.
    if uses_svc {
        let rules = balance(spn, svc, &cluster, &lbl);
        out.chain(spn, &svc_chain).extend(rules);
    }
    if uses_svl {
        let rules = balance(spn, svc, &local, &lbl);
        out.chain(spn, &svl_chain).extend(rules);
    }

    // SEP chains.
    let reachable = union_by_addr(
        if uses_svc { &cluster } else { &[] },
        if uses_svl { &local } else { &[] },
    );
    for ep in &reachable {
        let sep = endpoint_chain(spn, ep.addr());
        let c = comment(&lbl);
        let mut rules = vec![format!("{c} -s {} -j {}", host(&ep.ip), chains::MARK_MASQ)];
        let recent = if svc.session_affinity_timeout.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        let p = proto(svc.protocol);
        rules.push(format!(
            "{c}{recent} -p {p} -m {p} -j DNAT --to-destination {}",
            ep.addr()
        ));
        out.chain(spn, &sep).extend(rules);
    }
}

/// Rules of an endpoint-selection chain: affinity checks, then a uniform random choice.
fn balance(
    spn: &ServicePortName,
    svc: &ServicePort,
    eps: &[Arc<Endpoint>],
    lbl: &str,
) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(timeout) = svc.session_affinity_timeout {
        for ep in eps {
            let sep = endpoint_chain(spn, ep.addr());
            rules.push(format!(
                "{} -m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                comment(&format!("{lbl} -> {}", ep.addr()))
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = endpoint_chain(spn, ep.addr());
        let c = comment(&format!("{lbl} -> {}", ep.addr()));
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            rules.push(format!(
                "{c} -m statistic --mode random --probability {p:.10} -j {sep}"
            ));
        } else {
            rules.push(format!("{c} -j {sep}"));
        }
    }
    rules
}
