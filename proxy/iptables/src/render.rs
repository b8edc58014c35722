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
//! * The endpoint choice DNATs right in `SVC`/`SVL` (kube-proxy jumps to a chain per endpoint
//!   first). Per-endpoint chains made iptables-nft-restore ~10x slower at 10,000 services × 5
//!   endpoints (it looks chains up by a linear scan per rule), and all they add is the hairpin
//!   masquerade (source = chosen endpoint), which one rule in `SLUICE-POSTROUTING` does for every
//!   service: a connection DNATed back to its own source address (xt_bpf compares the IP
//!   header's source and destination) is masqueraded. `ClientIP` affinity records the client
//!   with `-m recent --set` in the DNAT rule itself.
//! * No usable endpoints anywhere → REJECT in filter; a Local policy without local endpoints →
//!   DROP in filter. Filter rules match the original destination, so they only see packets that
//!   nat did not DNAT.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{
    Endpoint, EndpointsMap, IpFamily, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::Changes;

use crate::chains::{self, affinity_list, service_chain, Kind};

/// Splits an `iptables-restore`/`-save` line into words, honouring (and removing) double
/// quotes: the inverse of [`restore_words`].
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                in_word = true;
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
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Words as one `iptables-restore` line fragment: a word with a space (a comment) is quoted.
pub(crate) fn restore_words<S: AsRef<str>>(words: &[S]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| {
            let w = w.as_ref();
            if w.contains(' ') {
                format!("\"{w}\"")
            } else {
                w.to_string()
            }
        })
        .collect();
    quoted.join(" ")
}

pub use sluice_proxy::model::{RenderConfig, DEFAULT_MASQUERADE_MARK};

/// Sluice chains currently present in the kernel (input for stale-chain deletion and for
/// deciding whether an unchanged service's chains exist in a partial render).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingChains {
    /// Chains of the `filter` table.
    pub filter: BTreeSet<String>,
    /// Chains of the `nat` table.
    pub nat: BTreeSet<String>,
}

/// The shared chains service ports add rules to, in the order of [`Fragment::shared`].
const SHARED: [(&str, &str); 5] = [
    ("filter", chains::SERVICES),
    ("filter", chains::EXTERNAL_SERVICES),
    ("filter", chains::FIREWALL),
    ("nat", chains::SERVICES),
    ("nat", chains::NODEPORTS),
];
const F_SERVICES: usize = 0;
const F_EXTERNAL: usize = 1;
const F_FIREWALL: usize = 2;
const N_SERVICES: usize = 3;
const N_NODEPORTS: usize = 4;

/// What one service port contributed to the last render: its rules in the shared chains
/// ([`SHARED`]) and the per-service nat chains it owns, each with a hash of its rules (an
/// incremental render rewrites only chains whose rules changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fragment {
    shared: [Vec<String>; 5],
    chains: Vec<(String, u64)>,
}

fn rules_hash(rules: &[String]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

/// What a render hands to the next one (see [`render_parts`]): per service port, its rules in
/// the shared chains and the names of its chains. The per-service chains' rules are not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderState {
    ports: BTreeMap<ServicePortName, Fragment>,
}

impl RenderState {
    /// The Sluice chains that exist once the render that produced this state is applied.
    pub fn chains(&self) -> ExistingChains {
        let mut nat: BTreeSet<String> = chains::NAT_CHAINS.iter().map(|c| c.to_string()).collect();
        nat.extend(
            self.ports
                .values()
                .flat_map(|f| f.chains.iter().map(|(c, _)| c.clone())),
        );
        ExistingChains {
            filter: chains::FILTER_CHAINS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            nat,
        }
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// No service ports.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Result of a render.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The `iptables-restore --noflush` input.
    pub text: String,
    /// Sluice chains that exist after applying `text` (the next render's [`ExistingChains`]).
    pub chains: ExistingChains,
    /// State for the next incremental render ([`render_parts`]).
    pub state: RenderState,
}

/// One piece of restore input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// The per-service chains of a whole render, rendered again while they are written: at
    /// 10,000 services their rules are ~12 MB of text, and holding it (or growing it) set the
    /// agent's memory high-water mark. Rendering twice costs far less than the restore.
    Chains(Box<DeferredChains>),
}

/// What a [`Part::Chains`] renders: service ports (with what they were rendered from, shared
/// `Arc`s) and, per port, the chains to write (`None` = all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredChains {
    config: RenderConfig,
    node_labels: BTreeMap<String, String>,
    ports: Vec<DeferredPort>,
}

type DeferredPort = (
    ServicePortName,
    Arc<ServicePort>,
    Vec<Arc<Endpoint>>,
    Option<BTreeSet<String>>,
);

impl DeferredChains {
    fn write_to<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<usize> {
        let mut written = 0;
        let mut buf = String::new();
        for (spn, svc, eps, only) in &self.ports {
            let mut out = Out::default();
            render_service(spn, svc, eps, &self.config, &self.node_labels, &mut out);
            buf.clear();
            for (c, rs) in &out.chains {
                if only.as_ref().is_none_or(|o| o.contains(c)) {
                    write_rules(&mut buf, c, rs);
                }
            }
            w.write_all(buf.as_bytes())?;
            written += buf.len();
        }
        Ok(written)
    }
}

/// A render as consecutive pieces of restore input, written one after the other and never
/// joined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedParts {
    /// The `iptables-restore --noflush` input, in pieces; empty = nothing to apply.
    pub parts: Vec<Part>,
    /// Sluice chains that exist after applying the parts. Only filled by whole renders (full, or
    /// without a previous state); for an incremental render use [`RenderState::chains`].
    pub chains: ExistingChains,
    /// State for the next incremental render.
    pub state: RenderState,
    /// Whether this was an incremental render (only changed services and the shared chains
    /// their rules in changed).
    pub incremental: bool,
}

impl RenderedParts {
    /// Nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Text(t) => t.is_empty(),
            Part::Chains(d) => d.ports.is_empty(),
        })
    }

    /// Appends literal text.
    pub fn push_text(&mut self, text: String) {
        self.parts.push(Part::Text(text));
    }

    /// Writes the parts in order; returns the number of bytes written.
    pub fn write_to<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<usize> {
        let mut written = 0;
        for p in &self.parts {
            match p {
                Part::Text(t) => {
                    w.write_all(t.as_bytes())?;
                    written += t.len();
                }
                Part::Chains(d) => written += d.write_to(w)?,
            }
        }
        Ok(written)
    }

    /// The parts as one text.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        String::from_utf8(out).expect("render output is UTF-8")
    }
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
    let r = render_parts(services, endpoints, config, changes, existing, None);
    Rendered {
        text: r.text(),
        chains: r.chains,
        state: r.state,
    }
}

/// [`render`] in parts, and incremental when given the previous render's state.
///
/// * `changes.full` or no `prev`: a whole render, as [`render`] (`existing` decides stale chains
///   and, for a partial one, which unchanged services' chains are missing).
/// * otherwise incremental, trusting `prev` to describe the kernel (the previous render was
///   applied): only the service ports of `changes.services` are rendered; their chains are
///   rewritten and their chains no longer wanted deleted; a shared chain (the nat dispatch
///   chains, the filter reject/drop chains) is rewritten only when the rules a changed service
///   port has in it changed. An endpoint change that keeps a service's reachability writes only
///   that service's chains; with nothing to do the parts are empty. `existing` is not used.
pub fn render_parts(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    config: &RenderConfig,
    changes: &Changes,
    existing: &ExistingChains,
    prev: Option<RenderState>,
) -> RenderedParts {
    match prev {
        Some(prev) if !changes.full => incremental(services, endpoints, config, changes, prev),
        _ => whole(services, endpoints, config, changes, existing),
    }
}

fn render_port(
    spn: &ServicePortName,
    svc: &ServicePort,
    endpoints: &EndpointsMap,
    config: &RenderConfig,
    changes: &Changes,
) -> (Fragment, BTreeMap<String, Vec<String>>) {
    let eps = endpoints.get(spn).map(Vec::as_slice).unwrap_or(&[]);
    let mut out = Out::default();
    render_service(spn, svc, eps, config, &changes.node_labels, &mut out);
    let frag = Fragment {
        chains: out
            .chains
            .iter()
            .map(|(c, rs)| (c.clone(), rules_hash(rs)))
            .collect(),
        shared: out.shared,
    };
    (frag, out.chains)
}

/// Declarations into `decls`, rules into `rules`.
fn write_chains(decls: &mut String, rules: &mut String, chains: &BTreeMap<String, Vec<String>>) {
    for (c, rs) in chains {
        let _ = writeln!(decls, ":{c} - [0:0]");
        write_rules(rules, c, rs);
    }
}

fn forward_rules(mark: &str) -> [String; 3] {
    [
        "-m conntrack --ctstate INVALID -j DROP".to_string(),
        format!(
            "-m comment --comment \"sluice forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
        ),
        "-m comment --comment \"sluice forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
    ]
}

fn postrouting_rules(mark: &str, family: IpFamily) -> [String; 4] {
    [
        format!(
            "-m comment --comment \"sluice hairpin: service traffic DNATed back to its source\" -m conntrack --ctstate DNAT -m bpf --bytecode \"{}\" -j MASQUERADE --random-fully",
            hairpin_bytecode(family)
        ),
        format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
        format!("-j MARK --xor-mark {mark}"),
        "-m comment --comment \"sluice service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .to_string(),
    ]
}

/// Classic BPF (xt_bpf's `--bytecode` syntax: count, then `code jt jf k` per instruction) that
/// matches a packet whose IP source address equals its destination address. In nat POSTROUTING
/// a DNATed packet carries its new destination, so this is a pod that reached itself through a
/// service: it must be masqueraded or its reply would go straight back to itself, un-NATed.
/// xt_bpf runs with the packet data starting at the IP header.
pub fn hairpin_bytecode(family: IpFamily) -> String {
    // Word offsets of the source and destination addresses in the IP header.
    let (src, dst, words) = match family {
        IpFamily::V4 => (12, 16, 1),
        IpFamily::V6 => (8, 24, 4),
    };
    const LD_W_ABS: u16 = 0x20;
    const TAX: u16 = 0x07;
    const JEQ_X: u16 = 0x1d;
    const RET_K: u16 = 0x06;
    let mut prog: Vec<(u16, u8, u8, u32)> = Vec::new();
    for w in 0..words {
        // ld src[w]; tax; ld dst[w]; jeq x ? next : mismatch
        let remaining = (words - w - 1) as u8;
        prog.push((LD_W_ABS, 0, 0, src + 4 * w));
        prog.push((TAX, 0, 0, 0));
        prog.push((LD_W_ABS, 0, 0, dst + 4 * w));
        // On a mismatch skip the remaining comparisons (4 instructions each) and `ret 1`.
        prog.push((JEQ_X, 0, 4 * remaining + 1, 0));
    }
    prog.push((RET_K, 0, 0, 1));
    prog.push((RET_K, 0, 0, 0));
    let mut out = prog.len().to_string();
    for (code, jt, jf, k) in prog {
        let _ = write!(out, ",{code} {jt} {jf} {k}");
    }
    out
}

/// The rules of shared chain `i` (index into [`SHARED`]) from every service port of `state`.
fn write_shared(text: &mut String, state: &RenderState, i: usize, config: &RenderConfig) {
    let chain = SHARED[i].1;
    for f in state.ports.values() {
        write_rules(text, chain, &f.shared[i]);
    }
    if i == N_SERVICES {
        let jumps: Vec<String> = if config.node_ips.is_empty() {
            vec!["-m addrtype --dst-type LOCAL".to_string()]
        } else {
            family_ips(&config.node_ips, config.family)
                .map(|ip| format!("-d {}", host(ip)))
                .collect()
        };
        for m in jumps {
            let _ = writeln!(
                text,
                "-A {chain} -m comment --comment \"sluice service nodeports; must be last\" {m} -j {}",
                chains::NODEPORTS
            );
        }
    }
}

fn whole(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    config: &RenderConfig,
    changes: &Changes,
    existing: &ExistingChains,
) -> RenderedParts {
    let mut state = RenderState::default();
    let mut declared: Vec<String> = Vec::new();
    let mut deferred = DeferredChains {
        config: config.clone(),
        node_labels: changes.node_labels.clone(),
        ports: Vec::new(),
    };
    for (spn, svc) in services {
        let (frag, mut own) = render_port(spn, svc, endpoints, config, changes);
        let partial = !(changes.full || changes.services.contains(&spn.service()));
        if partial {
            own.retain(|c, _| !existing.nat.contains(c));
        }
        if !own.is_empty() {
            deferred.ports.push((
                spn.clone(),
                svc.clone(),
                endpoints.get(spn).cloned().unwrap_or_default(),
                partial.then(|| own.keys().cloned().collect()),
            ));
        }
        declared.extend(own.into_keys());
        state.ports.insert(spn.clone(), frag);
    }
    // Declared in name order: iptables-nft keeps a table's chains sorted and inserts each new
    // one by a scan, so declarations in hash order cost a quadratic number of name compares (4x
    // slower at 2,000 services, measured). The rules can stay grouped by service.
    declared.sort_unstable();
    let mut decls = String::with_capacity(declared.len() * 40);
    for c in &declared {
        let _ = writeln!(decls, ":{c} - [0:0]");
    }
    drop(declared);
    let chains = state.chains();
    let mark = format!("{:#x}", config.masquerade_mark);

    // filter
    let mut filter = String::from("*filter\n");
    for c in chains::FILTER_CHAINS {
        let _ = writeln!(filter, ":{c} - [0:0]");
    }
    let stale_filter: Vec<&String> = existing
        .filter
        .iter()
        .filter(|c| chains::is_sluice_chain(c) && !chains.filter.contains(*c))
        .collect();
    for c in &stale_filter {
        let _ = writeln!(filter, ":{c} - [0:0]");
    }
    write_shared(&mut filter, &state, F_SERVICES, config);
    write_shared(&mut filter, &state, F_EXTERNAL, config);
    write_rules(&mut filter, chains::FORWARD, &forward_rules(&mark));
    write_shared(&mut filter, &state, F_FIREWALL, config);
    for c in &stale_filter {
        let _ = writeln!(filter, "-X {c}");
    }
    filter.push_str("COMMIT\n");

    // nat
    let mut head = String::from("*nat\n");
    for c in chains::NAT_CHAINS {
        let _ = writeln!(head, ":{c} - [0:0]");
    }
    let stale_nat: Vec<&String> = existing
        .nat
        .iter()
        .filter(|c| chains::is_sluice_chain(c) && !chains.nat.contains(*c))
        .collect();
    let mut shared = String::new();
    for c in &stale_nat {
        let _ = writeln!(shared, ":{c} - [0:0]");
    }
    write_shared(&mut shared, &state, N_SERVICES, config);
    write_shared(&mut shared, &state, N_NODEPORTS, config);
    write_rules(
        &mut shared,
        chains::POSTROUTING,
        &postrouting_rules(&mark, config.family),
    );
    write_rules(
        &mut shared,
        chains::MARK_MASQ,
        &[format!("-j MARK --or-mark {mark}")],
    );
    let mut tail = String::new();
    for c in &stale_nat {
        let _ = writeln!(tail, "-X {c}");
    }
    tail.push_str("COMMIT\n");
    RenderedParts {
        parts: vec![
            Part::Text(filter),
            Part::Text(head),
            Part::Text(decls),
            Part::Text(shared),
            Part::Chains(Box::new(deferred)),
            Part::Text(tail),
        ],
        chains,
        state,
        incremental: false,
    }
}

fn incremental(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    config: &RenderConfig,
    changes: &Changes,
    mut state: RenderState,
) -> RenderedParts {
    // Changed service ports still present (a port the state lacks belongs to a service added
    // since the last render, so to a changed one), then removed ones.
    let touched: Vec<&ServicePortName> = changes.changed_ports(services).collect();
    let removed: Vec<ServicePortName> = changes
        .changed_ports(&state.ports)
        .filter(|k| !services.contains_key(*k))
        .cloned()
        .collect();
    let mut dirty = [false; 5];
    let mut decls = String::new();
    let mut rules = String::new();
    let mut stale: Vec<String> = Vec::new();
    for spn in touched {
        let (frag, mut own) = render_port(spn, &services[spn], endpoints, config, changes);
        let old = state.ports.remove(spn).unwrap_or_default();
        // Chains that exist with the same rules stay as they are (e.g. the endpoint chains of
        // endpoints that did not change).
        own.retain(|c, _| {
            let new = frag.chains.iter().find(|(n, _)| n == c).map(|(_, h)| h);
            old.chains.iter().find(|(n, _)| n == c).map(|(_, h)| h) != new
        });
        write_chains(&mut decls, &mut rules, &own);
        for (i, d) in dirty.iter_mut().enumerate() {
            *d |= frag.shared[i] != old.shared[i];
        }
        stale.extend(
            old.chains
                .into_iter()
                .map(|(c, _)| c)
                .filter(|c| !frag.chains.iter().any(|(n, _)| n == c)),
        );
        state.ports.insert(spn.clone(), frag);
    }
    for spn in removed {
        if let Some(old) = state.ports.remove(&spn) {
            for (i, d) in dirty.iter_mut().enumerate() {
                *d |= !old.shared[i].is_empty();
            }
            stale.extend(old.chains.into_iter().map(|(c, _)| c));
        }
    }

    let mut parts = Vec::new();
    if dirty[..3].iter().any(|d| *d) {
        let mut filter = String::from("*filter\n");
        for i in [F_SERVICES, F_EXTERNAL, F_FIREWALL]
            .into_iter()
            .filter(|i| dirty[*i])
        {
            let _ = writeln!(filter, ":{} - [0:0]", SHARED[i].1);
        }
        for i in [F_SERVICES, F_EXTERNAL, F_FIREWALL]
            .into_iter()
            .filter(|i| dirty[*i])
        {
            write_shared(&mut filter, &state, i, config);
        }
        filter.push_str("COMMIT\n");
        parts.push(Part::Text(filter));
    }
    if dirty[3..].iter().any(|d| *d) || !decls.is_empty() || !stale.is_empty() {
        let mut head = String::from("*nat\n");
        for i in [N_SERVICES, N_NODEPORTS].into_iter().filter(|i| dirty[*i]) {
            let _ = writeln!(head, ":{} - [0:0]", SHARED[i].1);
        }
        let mut shared = String::new();
        for c in &stale {
            let _ = writeln!(shared, ":{c} - [0:0]");
        }
        for i in [N_SERVICES, N_NODEPORTS].into_iter().filter(|i| dirty[*i]) {
            write_shared(&mut shared, &state, i, config);
        }
        let mut tail = String::new();
        for c in &stale {
            let _ = writeln!(tail, "-X {c}");
        }
        tail.push_str("COMMIT\n");
        parts.extend([head, decls, shared, rules, tail].map(Part::Text));
    }
    RenderedParts {
        parts,
        chains: ExistingChains::default(),
        state,
        incremental: true,
    }
}

/// Rules of one service port while it is rendered.
#[derive(Default)]
struct Out {
    /// Its rules in the shared chains ([`SHARED`] order).
    shared: [Vec<String>; 5],
    /// Its own nat chains and their rules.
    chains: BTreeMap<String, Vec<String>>,
}

impl Out {
    fn chain(&mut self, name: &str) -> &mut Vec<String> {
        self.chains.entry(name.to_string()).or_default()
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

fn render_service(
    spn: &ServicePortName,
    svc: &ServicePort,
    eps: &[Arc<Endpoint>],
    cfg: &RenderConfig,
    node_labels: &BTreeMap<String, String>,
    out: &mut Out,
) {
    let fam = cfg.family;
    let eps: Vec<Arc<Endpoint>> = eps.iter().filter(|e| fam.matches(&e.ip)).cloned().collect();
    let cat = categorize_endpoints(&eps, svc, &cfg.node_name, node_labels);
    // Externally reachable services always need the Cluster set: pod and host traffic to their
    // external addresses is short-circuited to it even with both policies Local.
    let mut cluster = cat.cluster.clone();
    if svc.externally_accessible() && !svc.uses_cluster_endpoints() {
        let mut tmp = svc.clone();
        tmp.internal_policy_local = false;
        cluster = categorize_endpoints(&eps, &tmp, &cfg.node_name, node_labels).cluster;
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
            out.shared[N_SERVICES].push(format!(
                "{} -d {d} {dp} -j {internal_chain}",
                comment(&format!("{lbl} cluster IP"))
            ));
            if let Some(cidr) = cfg.cluster_cidr {
                out.chain(internal_chain).push(format!(
                    "{} -d {d} {dp} ! -s {cidr} -j {}",
                    comment(&format!("{lbl} cluster IP")),
                    chains::MARK_MASQ
                ));
            }
        } else if let Some((c, target)) = &internal_filter {
            out.shared[F_SERVICES].push(format!("{} -d {d} {dp} -j {target}", comment(c)));
        }
    }

    // External IPs.
    for ip in family_ips(&svc.external_ips, fam) {
        let d = host(ip);
        if has_endpoints {
            out.shared[N_SERVICES].push(format!(
                "{} -d {d} {dp} -j {ext_chain}",
                comment(&format!("{lbl} external IP"))
            ));
        }
        if let Some((c, target)) = &external_filter {
            out.shared[F_EXTERNAL].push(format!("{} -d {d} {dp} -j {target}", comment(c)));
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
            out.shared[N_SERVICES].push(format!(
                "{} -d {d} {dp} -j {lb_target}",
                comment(&format!("{lbl} loadbalancer IP"))
            ));
        }
        if !ranges.is_empty() {
            out.shared[F_FIREWALL].push(format!(
                "{} -d {d} {dp} -j DROP",
                comment(&format!("{lbl} traffic not accepted by {fw_chain}"))
            ));
        }
        if let Some((c, target)) = &external_filter {
            out.shared[F_EXTERNAL].push(format!("{} -d {d} {dp} -j {target}", comment(c)));
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
        out.chain(&fw_chain).extend(rules);
    }

    // NodePort.
    if let Some(np) = svc.node_port {
        let ndp = dport(svc.protocol, np);
        if has_endpoints {
            out.shared[N_NODEPORTS].push(format!("{} {ndp} -j {ext_chain}", comment(&lbl)));
        }
        if let Some((c, target)) = &external_filter {
            if cfg.node_ips.is_empty() {
                out.shared[F_EXTERNAL].push(format!(
                    "{} -m addrtype --dst-type LOCAL {ndp} -j {target}",
                    comment(c)
                ));
            } else {
                for ip in family_ips(&cfg.node_ips, fam) {
                    out.shared[F_EXTERNAL].push(format!(
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
        out.chain(&ext_chain).extend(rules);
    }

    // Endpoint-selection chains.
    if uses_svc {
        let rules = balance(spn, svc, &cluster, &lbl);
        out.chain(&svc_chain).extend(rules);
    }
    if uses_svl {
        let rules = balance(spn, svc, &local, &lbl);
        out.chain(&svl_chain).extend(rules);
    }
}

/// Rules of an endpoint-selection chain: affinity checks, then a uniform random choice, each
/// DNATing straight to its endpoint.
fn balance(
    spn: &ServicePortName,
    svc: &ServicePort,
    eps: &[Arc<Endpoint>],
    lbl: &str,
) -> Vec<String> {
    // `-p` alone: DNAT to a port needs the protocol, and kube-proxy's extra `-m tcp` (a match
    // without options) only adds an expression per rule for nf_tables to walk on every commit.
    let p = proto(svc.protocol);
    let dnat = |ep: &Endpoint| format!("-p {p} -j DNAT --to-destination {}", ep.addr());
    let mut rules = Vec::new();
    if let Some(timeout) = svc.session_affinity_timeout {
        // `--update` = kube-proxy's `--rcheck` followed by the endpoint chain's `--set`: match a
        // client seen within the timeout and refresh its timestamp.
        for ep in eps {
            rules.push(format!(
                "{} -m recent --name {} --update --seconds {timeout} --reap {}",
                comment(&format!("{lbl} -> {}", ep.addr())),
                affinity_list(spn, ep.addr()),
                dnat(ep)
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let c = comment(&format!("{lbl} -> {}", ep.addr()));
        // Matches run in order and stop at the first miss, so the client is recorded only for
        // the endpoint the statistic match picked.
        let recent = if svc.session_affinity_timeout.is_some() {
            format!(" -m recent --name {} --set", affinity_list(spn, ep.addr()))
        } else {
            String::new()
        };
        if i + 1 < n {
            let pr = 1.0 / (n - i) as f64;
            rules.push(format!(
                "{c} -m statistic --mode random --probability {pr:.10}{recent} {}",
                dnat(ep)
            ));
        } else {
            rules.push(format!("{c}{recent} {}", dnat(ep)));
        }
    }
    rules
}
