//! The companion nftables table, pure: what IPVS does not do itself.
//!
//! IPVS only DNATs (NAT forwarding to the chosen destination). Masquerading, refusing
//! connections to a front end without endpoints, `loadBalancerSourceRanges` and keeping
//! non-service ports of the service addresses closed are done here, in a table of the mode's
//! own — `ip sluice-ipvs` (`ip6 sluice-ipvs` for IPv6), named apart from the nftables mode's
//! `sluice` table so that neither mode's cleanup touches the other's. kube-proxy uses ipset +
//! iptables for this; one nftables table gives the same set lookups, one atomic `nft -f`
//! transaction per sync, and a cleanup that is one `delete table`.
//!
//! # Layout
//!
//! Rules are fixed; every per-service fact is a set element keyed by front end
//! (`address . protocol . port`), so a sync only adds and deletes elements:
//!
//! * `nat-prerouting` / `nat-output` (nat, priority -100 — before IPVS, which runs at
//!   `LOCAL_IN` and at `LOCAL_OUT` priority -98) jump to `services`, which marks for
//!   masquerade connections to a cluster IP from outside the pod CIDR (`cluster-ips`) and
//!   every connection to an external front end with `externalTrafficPolicy: Cluster`
//!   (`masq-ips`);
//! * `nat-postrouting` (priority 100, after IPVS rewrote the destination; IPVS keeps the
//!   conntrack entry with `net.ipv4.vs.conntrack=1`) masquerades hairpin connections (a local
//!   endpoint reaching itself: `hairpin` holds `ip . ip` of every local endpoint) and marked
//!   ones;
//! * `filter-input` (priority -10, before IPVS's `LOCAL_IN` hooks) and `filter-output`
//!   (priority -110, before IPVS's `LOCAL_OUT` hook) send new connections to
//!   `endpoints-check`: `no-endpoints` maps a front end without usable endpoints to
//!   `goto reject-chain` (ICMP port unreachable) or to `drop` (a Local policy without local
//!   endpoints); `firewall-ips` / `firewall-allow` drop what `loadBalancerSourceRanges` do not
//!   allow; and a new TCP/UDP/SCTP connection to an address on the dummy link
//!   (`service-ips`) that is not one of its front ends (`service-ports`) is rejected, since
//!   every address on the node is reachable on every port otherwise.
//!
//! nft 1.0.6 (Debian 12) reads everything written here: objects are declared in the block
//! syntax with one statement per line, rules are `add rule` lines, elements `add element` /
//! `delete element` blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use sluice_proxy::model::{IpFamily, RenderConfig};
use sluice_proxy_nftables::text::{self, addr_type, family, proto, Chain, Table};

use crate::plan::{FrontEnd, Kind, Masquerade, Model, NoEndpoints, Want};

/// The table's name (in the `ip` and `ip6` families).
pub const TABLE: &str = "sluice-ipvs";

/// The table's sets and maps, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NftSet {
    /// Cluster IP front ends (masquerade from outside the pod CIDR).
    ClusterIps,
    /// External front ends with `externalTrafficPolicy: Cluster` (always masquerade).
    MasqIps,
    /// Front end → `goto reject-chain` / `drop`.
    NoEndpoints,
    /// Load-balancer front ends with source ranges.
    FirewallIps,
    /// `front end . allowed source range`.
    FirewallAllow,
    /// Addresses on the dummy link.
    ServiceIps,
    /// Front ends on those addresses.
    ServicePorts,
    /// `ip . ip` of local endpoints.
    Hairpin,
}

impl NftSet {
    const ALL: [NftSet; 8] = [
        NftSet::ClusterIps,
        NftSet::MasqIps,
        NftSet::NoEndpoints,
        NftSet::FirewallIps,
        NftSet::FirewallAllow,
        NftSet::ServiceIps,
        NftSet::ServicePorts,
        NftSet::Hairpin,
    ];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            NftSet::ClusterIps => "cluster-ips",
            NftSet::MasqIps => "masq-ips",
            NftSet::NoEndpoints => "no-endpoints",
            NftSet::FirewallIps => "firewall-ips",
            NftSet::FirewallAllow => "firewall-allow",
            NftSet::ServiceIps => "service-ips",
            NftSet::ServicePorts => "service-ports",
            NftSet::Hairpin => "hairpin",
        }
    }

    fn is_map(self) -> bool {
        self == NftSet::NoEndpoints
    }

    /// Declaration lines (inside the block).
    fn decl(self, f: IpFamily) -> Vec<String> {
        let a = addr_type(f);
        let fe = format!("{a} . inet_proto . inet_service");
        match self {
            NftSet::ClusterIps | NftSet::MasqIps | NftSet::FirewallIps | NftSet::ServicePorts => {
                vec![format!("type {fe}")]
            }
            NftSet::NoEndpoints => vec![format!("type {fe} : verdict")],
            NftSet::FirewallAllow => vec![format!("type {fe} . {a}"), "flags interval".into()],
            NftSet::ServiceIps => vec![format!("type {a}")],
            NftSet::Hairpin => vec![format!("type {a} . {a}")],
        }
    }
}

/// One set element (or map element with its value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// The set.
    pub set: NftSet,
    /// Its key.
    pub key: String,
    /// Its value (maps).
    pub value: Option<String>,
}

fn fe_key(fe: &FrontEnd) -> String {
    format!("{} . {} . {}", fe.addr, proto(fe.protocol), fe.port)
}

/// The elements one front end contributes.
pub fn elements(fe: &FrontEnd, want: &Want, cfg: &RenderConfig) -> Vec<Element> {
    let key = fe_key(fe);
    let el = |set: NftSet, key: String, value: Option<&str>| Element {
        set,
        key,
        value: value.map(str::to_string),
    };
    let mut v = Vec::new();
    match want.masquerade {
        Masquerade::OffCluster if cfg.cluster_cidr.is_some() && want.kind == Kind::ClusterIp => {
            v.push(el(NftSet::ClusterIps, key.clone(), None));
        }
        Masquerade::Always => v.push(el(NftSet::MasqIps, key.clone(), None)),
        _ => {}
    }
    match want.no_endpoints {
        Some(NoEndpoints::Reject) => v.push(el(
            NftSet::NoEndpoints,
            key.clone(),
            Some("goto reject-chain"),
        )),
        Some(NoEndpoints::Drop) => v.push(el(NftSet::NoEndpoints, key.clone(), Some("drop"))),
        None => {}
    }
    if !want.source_ranges.is_empty() {
        v.push(el(NftSet::FirewallIps, key.clone(), None));
        for r in &want.source_ranges {
            v.push(el(NftSet::FirewallAllow, format!("{key} . {r}"), None));
        }
    }
    if want.bind {
        v.push(el(NftSet::ServiceIps, fe.addr.to_string(), None));
        v.push(el(NftSet::ServicePorts, key, None));
    }
    for ip in &want.local_ips {
        v.push(el(NftSet::Hairpin, format!("{ip} . {ip}"), None));
    }
    v
}

/// What the last applied render put in the table: each front end's elements, and how many
/// front ends hold each element (addresses and hairpin pairs are shared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    per_fe: BTreeMap<FrontEnd, Vec<Element>>,
    refs: BTreeMap<Element, u32>,
}

impl NftState {
    /// Every element in the table.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.refs.keys()
    }

    fn add(&mut self, fe: FrontEnd, els: Vec<Element>, added: &mut Vec<Element>) {
        for e in &els {
            let n = self.refs.entry(e.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                added.push(e.clone());
            }
        }
        self.per_fe.insert(fe, els);
    }

    fn remove(&mut self, fe: &FrontEnd, removed: &mut Vec<Element>) {
        for e in self.per_fe.remove(fe).unwrap_or_default() {
            if let Some(n) = self.refs.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&e);
                    removed.push(e);
                }
            }
        }
    }
}

/// The table of `cfg`'s family.
fn table(cfg: &RenderConfig) -> Table {
    Table {
        family: cfg.family,
        name: TABLE,
    }
}

/// The fixed chains, in declaration order.
fn chains(cfg: &RenderConfig) -> Vec<Chain> {
    let ip = family(cfg.family);
    let fe = format!("{ip} daddr . meta l4proto . th dport");
    let mut services = Vec::new();
    if let Some(cidr) = cfg.cluster_cidr.filter(|c| cfg.family.matches(&c.addr())) {
        services.push(format!(
            "{fe} @{} {ip} saddr != {cidr} jump mark-for-masquerade",
            NftSet::ClusterIps.name()
        ));
    }
    services.push(format!(
        "{fe} @{} jump mark-for-masquerade",
        NftSet::MasqIps.name()
    ));
    let [nat_prerouting, nat_output, nat_postrouting] = text::nat_chains();
    // IPVS leaves no DNAT status on the connection: hairpin pairs match by addresses alone.
    let [mark_for_masquerade, masquerading] =
        text::masquerade_chains(cfg.family, cfg.masquerade_mark, "", NftSet::Hairpin.name());
    vec![
        nat_prerouting,
        nat_output,
        nat_postrouting,
        text::endpoints_check_hook("filter-input", "input", -10),
        text::endpoints_check_hook("filter-output", "output", -110),
        Chain::regular("services", services),
        mark_for_masquerade,
        masquerading,
        Chain::regular(
            "endpoints-check",
            vec![
                format!("{fe} vmap @{}", NftSet::NoEndpoints.name()),
                format!(
                    "{fe} @{} {fe} . {ip} saddr != @{} drop",
                    NftSet::FirewallIps.name(),
                    NftSet::FirewallAllow.name()
                ),
                format!(
                    "{ip} daddr @{} meta l4proto {{ tcp, udp, sctp }} {fe} != @{} goto reject-chain",
                    NftSet::ServiceIps.name(),
                    NftSet::ServicePorts.name()
                ),
            ],
        ),
        text::reject_chain(),
    ]
}

/// `verb element` blocks of `els` (keys only, but for `add`), one a set, in set order.
fn write_grouped(out: &mut String, cfg: &RenderConfig, verb: &str, els: &[Element]) {
    let mut by: BTreeMap<NftSet, Vec<text::Element<&str, &str>>> = BTreeMap::new();
    for e in els {
        let value = if verb == "add" {
            e.value.as_deref()
        } else {
            None
        };
        by.entry(e.set)
            .or_default()
            .push(text::Element(&e.key, value));
    }
    for (set, items) in by {
        table(cfg).write_elements(out, verb, set.name(), &items);
    }
}

/// The whole table: declarations, a flush of every chain and set, the rules, every element
/// (one transaction; existing elements of other front ends vanish with the flush). Returns the
/// script and the state it leaves.
pub fn full(model: &Model, cfg: &RenderConfig) -> (String, NftState) {
    let mut state = NftState::default();
    let mut added = Vec::new();
    for (fe, want) in model.desired() {
        state.add(*fe, elements(fe, want, cfg), &mut added);
    }
    let t = table(cfg);
    let fixed = chains(cfg);
    let mut out = format!("table {} {TABLE} {{\n", family(cfg.family));
    for set in NftSet::ALL {
        let what = if set.is_map() { "map" } else { "set" };
        let _ = writeln!(out, "\t{what} {} {{", set.name());
        for l in set.decl(cfg.family) {
            let _ = writeln!(out, "\t\t{l}");
        }
        out.push_str("\t}\n");
    }
    for c in &fixed {
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(h) = c.hook {
            let _ = writeln!(out, "\t\t{h}; policy accept;");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    for c in &fixed {
        let _ = writeln!(out, "{}", t.obj("flush chain", c.name));
    }
    for set in NftSet::ALL {
        let what = if set.is_map() {
            "flush map"
        } else {
            "flush set"
        };
        let _ = writeln!(out, "{}", t.obj(what, set.name()));
    }
    t.write_rules(&mut out, &fixed);
    let all: Vec<Element> = state.refs.keys().cloned().collect();
    write_grouped(&mut out, cfg, "add", &all);
    (out, state)
}

/// The element changes of the front ends in `touched` (a partial sync): their old elements
/// out, their new ones in, shared elements reference counted. Empty when nothing changed.
/// `state` becomes the state after the script.
pub fn delta(
    state: &mut NftState,
    model: &Model,
    touched: &BTreeSet<FrontEnd>,
    cfg: &RenderConfig,
) -> String {
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for fe in touched {
        state.remove(fe, &mut removed);
    }
    for fe in touched {
        if let Some(w) = model.desired().get(fe) {
            state.add(*fe, elements(fe, w, cfg), &mut added);
        }
    }
    // An element both removed and added again is unchanged.
    let removed_set: BTreeSet<&Element> = removed.iter().collect();
    let added_set: BTreeSet<&Element> = added.iter().collect();
    let dels: Vec<Element> = removed
        .iter()
        .filter(|e| !added_set.contains(e))
        .cloned()
        .collect();
    let adds: Vec<Element> = added
        .iter()
        .filter(|e| !removed_set.contains(e))
        .cloned()
        .collect();
    let mut out = String::new();
    write_grouped(&mut out, cfg, "delete", &dels);
    write_grouped(&mut out, cfg, "add", &adds);
    out
}

/// A script that replaces the table whatever is in it (an older layout, objects changed by
/// hand): `add` makes sure there is a table to delete, all in one transaction.
pub fn replace(script: &str, cfg: &RenderConfig) -> String {
    let f = family(cfg.family);
    format!("add table {f} {TABLE}\ndelete table {f} {TABLE}\n{script}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Config;
    use sluice_proxy::model::Protocol;
    use sluice_proxy::scenarios;

    fn cfg() -> Config {
        let mut c = Config::new(scenarios::NODE);
        c.node.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        c.node.node_ips = vec![scenarios::ip(scenarios::NODE_IP)];
        c
    }

    #[test]
    fn delta_is_empty_when_nothing_changed_and_exact_otherwise() {
        let (s, mut e) = scenarios::scenario("clusterip_three_endpoints");
        let mut model = Model::build(&s, &e, &cfg(), &BTreeMap::new());
        let (_, mut state) = full(&model, &cfg().node);
        let touched = model.update([&scenarios::spn("web")], &s, &e, &cfg(), &BTreeMap::new());
        assert_eq!(delta(&mut state, &model, &touched, &cfg().node), "");
        // The local endpoint goes: its hairpin pair goes with it.
        e.get_mut(&scenarios::spn("web")).unwrap().remove(0);
        let touched = model.update([&scenarios::spn("web")], &s, &e, &cfg(), &BTreeMap::new());
        assert_eq!(
            delta(&mut state, &model, &touched, &cfg().node),
            "delete element ip sluice-ipvs hairpin {\n\t10.244.1.1 . 10.244.1.1\n}\n"
        );
        // All go: the front end rejects.
        e.remove(&scenarios::spn("web"));
        let touched = model.update([&scenarios::spn("web")], &s, &e, &cfg(), &BTreeMap::new());
        assert_eq!(
            delta(&mut state, &model, &touched, &cfg().node),
            "add element ip sluice-ipvs no-endpoints {\n\t10.96.0.10 . tcp . 80 : goto reject-chain\n}\n"
        );
        assert_eq!(state, full(&model, &cfg().node).1);
    }

    #[test]
    fn shared_addresses_are_reference_counted() {
        let (mut s, e) = scenarios::scenario("clusterip_three_endpoints");
        let other =
            sluice_proxy::model::ServicePortName::new("default", "web", "https", Protocol::Tcp);
        let mut p = scenarios::cluster_ip();
        p.port = 443;
        s.insert(other.clone(), std::sync::Arc::new(p));
        let mut model = Model::build(&s, &e, &cfg(), &BTreeMap::new());
        let (_, mut state) = full(&model, &cfg().node);
        s.remove(&other);
        let touched = model.update([&other], &s, &e, &cfg(), &BTreeMap::new());
        let d = delta(&mut state, &model, &touched, &cfg().node);
        assert!(
            d.contains(
                "delete element ip sluice-ipvs service-ports {\n\t10.96.0.10 . tcp . 443\n}"
            ),
            "{d}"
        );
        assert!(!d.contains("service-ips"), "the address stays: {d}");
    }

    #[test]
    fn replace_wraps_the_script() {
        assert_eq!(
            replace("X\n", &cfg().node),
            "add table ip sluice-ipvs\ndelete table ip sluice-ipvs\nX\n"
        );
    }
}
