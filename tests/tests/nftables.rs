//! The nftables proxy mode's render against the real kernel, inside network namespaces the
//! tests create (`sluice-nft-<pid>-<n>`, deleted on drop; the root namespace is never touched):
//!
//! * every shared scenario's full render loads, reloads onto itself unchanged, and replaces
//!   every other scenario's table exactly (stale chains and sets deleted);
//! * random incremental renders (TCP and UDP ports, affinity, `externalTrafficPolicy: Local`,
//!   source ranges, NodePorts) leave the kernel's table as a fresh full render does;
//! * IPv6 renders load into `ip6 sluice` and reload;
//! * traffic: a routing "node" namespace between a client and backends load-balances a TCP
//!   ClusterIP over both endpoints, answers a UDP one, refuses one without endpoints, and an
//!   endpoint replaced by an incremental render (element updates only) takes effect.
//!
//! Without root or `nft` the tests print `SKIP: <reason>` and return (they fail instead under
//! `SLUICE_REQUIRE_ALL=1`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use sluice_proxy::model::{
    Endpoint, EndpointsMap, IpFamily, NamespacedName, Protocol, ServicePort, ServicePortMap,
    ServicePortName,
};
use sluice_proxy::proxier::Changes;
use sluice_proxy::scenarios::{
    ep, full, ip, load_balancer, node_port, scenarios, spn, EXTERNAL_IP, NODE,
};
use sluice_proxy_nftables::{render, Existing, RenderConfig, RenderState, Rendered};
use sluice_tests::{ip_ok, is_root, run, skip, text};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether the tests can run here; prints SKIP otherwise.
fn privileged() -> bool {
    if !is_root() {
        skip("not root: the nftables kernel tests need CAP_NET_ADMIN");
        return false;
    }
    let nft = Command::new("nft").arg("--version").output();
    if !nft.is_ok_and(|o| o.status.success()) {
        skip("nft is not installed (Debian: nftables)");
        return false;
    }
    let Some(ns) = Netns::try_new() else {
        skip("cannot create network namespaces (ip netns add failed)");
        return false;
    };
    if let Err(e) = ns.nft("add table ip sluice-probe\n") {
        skip(&format!("nft cannot program a network namespace: {e}"));
        return false;
    }
    true
}

/// The render config of the unit tests (IPv4, pod CIDR 10.244.0.0/16).
fn config_v4() -> RenderConfig {
    RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RenderConfig::new(NODE)
    }
}

/// The IPv6 render config (pod CIDR fd00:10:244::/48).
fn config_v6() -> RenderConfig {
    RenderConfig {
        family: IpFamily::V6,
        cluster_cidr: Some("fd00:10:244::/48".parse().unwrap()),
        ..RenderConfig::new(NODE)
    }
}

/// The table family keyword of `cfg` (`ip` / `ip6`).
fn family(cfg: &RenderConfig) -> &'static str {
    match cfg.family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// A full render of `s`/`e` over a table holding `existing`.
fn render_full(
    s: &ServicePortMap,
    e: &EndpointsMap,
    cfg: &RenderConfig,
    existing: &Existing,
) -> Rendered {
    let r = render(s, e, cfg, &full(), None, existing);
    assert!(!r.incremental, "a full render");
    r
}

/// Changes naming the services `names` of namespace `default`.
fn partial(names: &[&str]) -> Changes {
    Changes {
        services: names
            .iter()
            .map(|n| NamespacedName::new("default", *n))
            .collect(),
        ..Changes::default()
    }
}

/// A network namespace created by the test (loopback up), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace, or `None` when `ip netns add` fails.
    fn try_new() -> Option<Netns> {
        let name = format!(
            "sluice-nft-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let added = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !added {
            return None;
        }
        let ns = Netns { name };
        ip_ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// A fresh namespace (panics when it cannot be created).
    fn new() -> Netns {
        Netns::try_new().expect("ip netns add")
    }

    /// Runs `args` inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// `ip -n <ns> args…`, asserting success.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip_ok(&all);
    }

    /// Applies `script` with `nft -f -` inside the namespace (one transaction); nft's
    /// complaint on failure.
    fn nft(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ip netns exec nft");
        // nft reads all of stdin before it says anything; a write error (it died early) shows
        // in its status.
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes());
        let o = child.wait_with_output().expect("nft output");
        if o.status.success() {
            Ok(())
        } else {
            Err(text(&o))
        }
    }

    /// Applies `script`, panicking with `what`, nft's error and the script on failure.
    fn apply(&self, script: &str, what: &str) {
        if let Err(e) = self.nft(script) {
            panic!("{what}: nft -f refused the script: {e}\n--- script\n{script}");
        }
    }

    /// `nft list table <family> sluice`, or `None` when there is no such table.
    fn listing(&self, family: &str) -> Option<String> {
        let o = self.exec(&["nft", "list", "table", family, "sluice"]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    }

    /// The normalised table (see [`normalise`]); panics when there is none.
    fn table(&self, family: &str) -> Vec<String> {
        let listing = self
            .listing(family)
            .unwrap_or_else(|| panic!("{}: no table {family} sluice", self.name));
        normalise(&listing)
    }

    /// Sluice's objects in the kernel, as the dataplane reads them (`nft -t list table`).
    fn existing(&self, family: &str) -> Existing {
        let o = self.exec(&["nft", "-t", "list", "table", family, "sluice"]);
        if o.status.success() {
            Existing::parse(&String::from_utf8_lossy(&o.stdout))
        } else {
            Existing::default()
        }
    }

    /// Deletes Sluice's table of `family`, if there is one.
    fn reset(&self, family: &str) {
        self.apply(
            &format!("add table {family} sluice\ndelete table {family} sluice\n"),
            "reset",
        );
    }

    /// Runs `f` on a fresh thread inside the namespace: sockets it creates live there.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `nft list table` output in a canonical form, one entry per object (chain, set, map): its
/// declaration and rules in order, then its elements sorted. The kernel lists elements in its
/// own order, several to a line, and objects in creation order, so elements and objects are
/// sorted; rule order is kept, since it matters.
fn normalise(listing: &str) -> Vec<String> {
    let mut objects = Vec::new();
    let mut current: Option<Vec<String>> = None;
    // An `elements = { … }` list being read (it may span lines).
    let mut elements: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        let acc = match elements.take() {
            Some(acc) => format!("{acc} {line}"),
            None => match line.strip_prefix("elements = {") {
                Some(rest) => rest.to_string(),
                None => {
                    match line.strip_suffix('{') {
                        _ if line.is_empty() || line.starts_with("table ") => {}
                        _ if line == "}" => objects.extend(current.take().map(|o| o.join("\n  "))),
                        Some(header) if current.is_none() => {
                            current = Some(vec![header.trim().to_string()]);
                        }
                        _ => current
                            .as_mut()
                            .unwrap_or_else(|| panic!("line outside an object: {line}\n{listing}"))
                            .push(line.to_string()),
                    }
                    continue;
                }
            },
        };
        let Some(body) = acc.trim_end().strip_suffix('}') else {
            elements = Some(acc);
            continue;
        };
        let mut items: Vec<String> = body
            .split(',')
            .map(|i| i.split(" expires ").next().unwrap_or(i).trim().to_string())
            .filter(|i| !i.is_empty())
            .map(|i| format!("element {i}"))
            .collect();
        items.sort();
        current
            .as_mut()
            .unwrap_or_else(|| panic!("elements outside an object\n{listing}"))
            .extend(items);
    }
    objects.sort();
    objects
}

/// Asserts two normalised tables are equal, showing only the objects that differ.
fn assert_same(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let g: BTreeSet<&String> = got.iter().collect();
    let w: BTreeSet<&String> = want.iter().collect();
    let extra: Vec<&&String> = g.difference(&w).collect();
    let missing: Vec<&&String> = w.difference(&g).collect();
    let show = |v: Vec<&&String>| v.iter().map(|o| o.as_str()).collect::<Vec<_>>().join("\n");
    panic!(
        "{what}: tables differ\n--- only in the kernel's table\n{}\n--- only in the expected one\n{}",
        show(extra),
        show(missing)
    );
}

/// Whether `table` has the object whose header is `header` (e.g. `chain services`).
fn has_object(table: &[String], header: &str) -> bool {
    table
        .iter()
        .any(|o| o.lines().next().map(str::trim) == Some(header))
}

/// Whether `table` has `element` in the object whose header is `header`.
fn has_element(table: &[String], header: &str, element: &str) -> bool {
    table.iter().any(|o| {
        let mut lines = o.lines().map(str::trim);
        lines.next() == Some(header) && lines.any(|l| l == format!("element {element}"))
    })
}

#[test]
fn every_scenario_loads_and_reloads_in_the_kernel() {
    if !privileged() {
        return;
    }
    let cfg = config_v4();
    let fam = family(&cfg);
    // Each scenario in a fresh namespace, then reloaded onto itself from the kernel's names.
    let mut fresh = Vec::new();
    for (name, s, e) in scenarios() {
        let ns = Netns::new();
        let r = render_full(&s, &e, &cfg, &Existing::default());
        ns.apply(&r.text, name);
        let table = ns.table(fam);
        assert!(
            has_object(&table, "chain services") && has_object(&table, "map service-ips"),
            "{name}: {table:#?}"
        );
        let again = render_full(&s, &e, &cfg, &ns.existing(fam));
        ns.apply(&again.text, &format!("{name} reloaded"));
        assert_same(
            &ns.table(fam),
            &table,
            &format!("{name} reloaded onto itself"),
        );
        fresh.push((name, table, ns));
    }
    let three = &fresh
        .iter()
        .find(|(n, ..)| *n == "clusterip_three_endpoints")
        .expect("scenario")
        .1;
    assert!(
        has_element(
            three,
            "map service-ips",
            "10.96.0.10 . tcp . 80 : goto pick-tcp-3"
        ),
        "{three:#?}"
    );
    // Every scenario over every other, in a's namespace.
    for (a, sa, ea) in scenarios() {
        let ns = &fresh.iter().find(|(n, ..)| *n == a).expect("scenario").2;
        for (b, sb, eb) in scenarios() {
            if a == b {
                continue;
            }
            ns.reset(fam);
            ns.apply(&render_full(&sa, &ea, &cfg, &Existing::default()).text, a);
            let r = render_full(&sb, &eb, &cfg, &ns.existing(fam));
            ns.apply(&r.text, &format!("{b} over {a}"));
            let want = &fresh.iter().find(|(n, ..)| *n == b).expect("scenario").1;
            assert_same(&ns.table(fam), want, &format!("{b} over {a}"));
        }
    }
}

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    /// The next value.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether two service ports claim one front end (address . protocol . port, or protocol .
/// NodePort): who wins then depends on history, so incremental and full renders may differ.
fn contested(s: &ServicePortMap) -> bool {
    let mut seen = BTreeSet::new();
    s.values().any(|p| {
        let ips = p
            .cluster_ips
            .iter()
            .chain(&p.external_ips)
            .chain(&p.load_balancer_ips);
        let mut keys: Vec<String> = ips
            .map(|a| format!("{a} {:?} {}", p.protocol, p.port))
            .collect();
        keys.extend(p.node_port.map(|n| format!("{:?} {n}", p.protocol)));
        keys.into_iter().any(|k| !seen.insert(k))
    })
}

#[test]
fn incremental_renders_match_full_renders_in_the_kernel() {
    if !privileged() {
        return;
    }
    let cfg = config_v4();
    let fam = family(&cfg);
    let (a, b) = (Netns::new(), Netns::new());
    let names = ["a", "b", "c", "d"];
    // (port name, protocol, service port, target port)
    let ports = [
        ("http", Protocol::Tcp, 80, 8080),
        ("dns", Protocol::Udp, 53, 5353),
    ];
    let mut rng = Rng(0x5eed_2024_0bad_cafe);
    let (mut s, mut e) = (ServicePortMap::new(), EndpointsMap::new());
    let mut state: Option<RenderState> = None;
    let mut compared = 0;
    // Objects that held something in some compared round (the rounds must cover them).
    let mut seen = BTreeSet::new();
    for round in 0..60 {
        let i = rng.below(names.len() as u64) as usize;
        let name = names[i];
        for (port_name, protocol, port, target) in ports {
            let key = ServicePortName::new("default", name, port_name, protocol);
            if rng.below(4) == 0 {
                s.remove(&key);
                e.remove(&key);
                continue;
            }
            let cluster_ip = ip(&format!("10.96.0.{}", 10 + i));
            // The same NodePort number for both protocols: distinct front ends.
            let base = match rng.below(4) {
                0 => ServicePort::cluster_ip(cluster_ip, port, protocol),
                1 => ServicePort {
                    cluster_ips: vec![cluster_ip],
                    port,
                    protocol,
                    node_port: Some(30000 + i as u16),
                    ..node_port()
                },
                _ => ServicePort {
                    cluster_ips: vec![cluster_ip],
                    port,
                    protocol,
                    node_port: Some(30000 + i as u16),
                    // Sometimes shared on purpose: a front end two services claim.
                    external_ips: vec![if rng.below(3) == 0 {
                        ip(EXTERNAL_IP)
                    } else {
                        ip(&format!("198.51.100.{}", 10 + i))
                    }],
                    load_balancer_ips: vec![ip(&format!("203.0.113.{}", 10 + i))],
                    ..load_balancer(false)
                },
            };
            let svc = ServicePort {
                external_policy_local: base.externally_accessible() && rng.below(2) == 0,
                internal_policy_local: rng.below(5) == 0,
                session_affinity_timeout: (rng.below(5) == 0).then(|| 60 + rng.below(2) as u32),
                load_balancer_source_ranges: if rng.below(3) == 0 {
                    vec!["192.0.2.0/24".parse().unwrap()]
                } else {
                    vec![]
                },
                ..base
            };
            let n = rng.below(4);
            let mut eps: Vec<Arc<Endpoint>> = (0..n)
                .map(|j| {
                    let addr = format!("10.244.{}.{}", rng.below(3) + 1, j + 1);
                    let mut x = (*ep(&addr, rng.below(2) == 0)).clone();
                    x.port = target;
                    if rng.below(6) == 0 {
                        x.ready = false;
                        x.terminating = true;
                    }
                    Arc::new(x)
                })
                .collect();
            eps.sort_by_key(|x| (x.ip, x.port));
            eps.dedup_by_key(|x| (x.ip, x.port));
            s.insert(key.clone(), Arc::new(svc));
            if eps.is_empty() {
                e.remove(&key);
            } else {
                e.insert(key, eps);
            }
        }
        let (changes, existing) = if round % 30 == 0 {
            (full(), a.existing(fam))
        } else {
            (partial(&[name]), Existing::default())
        };
        let r = render(&s, &e, &cfg, &changes, state.take(), &existing);
        assert_eq!(r.incremental, round % 30 != 0, "round {round}");
        a.apply(&r.text, &format!("round {round} ({name})"));
        state = Some(r.state);
        if contested(&s) {
            continue;
        }
        b.reset(fam);
        b.apply(
            &render_full(&s, &e, &cfg, &Existing::default()).text,
            &format!("round {round}: full render"),
        );
        assert_same(
            &a.table(fam),
            &b.table(fam),
            &format!("round {round}: incremental ({name}) vs full"),
        );
        compared += 1;
        for o in a.table(fam) {
            let header = o.lines().next().unwrap_or_default().to_string();
            if header.starts_with("chain affinity-") {
                seen.insert("chain affinity-…".to_string());
            } else if o.contains("\n  element ") {
                seen.insert(header);
            }
        }
    }
    eprintln!("{compared} of 60 rounds compared");
    assert!(compared >= 30, "only {compared} rounds compared");
    for want in [
        "chain affinity-…",
        "map endpoints-udp",
        "map nodeport-endpoints-udp",
        "map local-endpoints-tcp",
        "map local-nodeports",
        "map short-circuit-ips",
        "map no-endpoint-services",
        "set firewall-allow",
        "set hairpin",
    ] {
        assert!(seen.contains(want), "no round exercised {want}: {seen:?}");
    }
}

/// The IPv6 twin of a shared scenario's address: `a.b.c.d` → `fd00:a:b:c::d` (decimal digits
/// read as hex), so 10.244.1.1 → fd00:10:244:1::1, inside the IPv6 pod CIDR.
fn v6(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("fd00:{a}:{b}:{c}::{d}").parse().unwrap()
        }
        IpAddr::V6(_) => a,
    }
}

/// A shared scenario with every address (and source range) moved to IPv6 by [`v6`].
fn to_v6(s: &ServicePortMap, e: &EndpointsMap) -> (ServicePortMap, EndpointsMap) {
    let addrs = |v: &[IpAddr]| v.iter().copied().map(v6).collect::<Vec<_>>();
    let s = s
        .iter()
        .map(|(k, p)| {
            let p = ServicePort {
                cluster_ips: addrs(&p.cluster_ips),
                external_ips: addrs(&p.external_ips),
                load_balancer_ips: addrs(&p.load_balancer_ips),
                load_balancer_source_ranges: p
                    .load_balancer_source_ranges
                    .iter()
                    // Octets b and c (a /24 here) become the 3rd and 4th groups: /24 → /64.
                    .map(|n| {
                        let len = 16 + u32::from(n.prefix_len()) * 2;
                        format!("{}/{len}", v6(n.addr())).parse().unwrap()
                    })
                    .collect(),
                ..(**p).clone()
            };
            (k.clone(), Arc::new(p))
        })
        .collect();
    let e = e
        .iter()
        .map(|(k, eps)| {
            let eps = eps
                .iter()
                .map(|x| {
                    Arc::new(Endpoint {
                        ip: v6(x.ip),
                        ..(**x).clone()
                    })
                })
                .collect();
            (k.clone(), eps)
        })
        .collect();
    (s, e)
}

/// Hand-built IPv6 services: a ClusterIP with two endpoints, one with ClientIP affinity, a
/// NodePort + LB with `externalTrafficPolicy: Local` and source ranges, and a UDP ClusterIP.
fn v6_services() -> (ServicePortMap, EndpointsMap) {
    let two = || vec![ep("fd00:10:244:1::1", true), ep("fd00:10:244:2::1", false)];
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    s.insert(
        spn("web"),
        Arc::new(ServicePort::cluster_ip(
            ip("fd00:96::10"),
            80,
            Protocol::Tcp,
        )),
    );
    e.insert(spn("web"), two());
    s.insert(
        spn("sticky"),
        Arc::new(ServicePort {
            session_affinity_timeout: Some(10800),
            ..ServicePort::cluster_ip(ip("fd00:96::11"), 80, Protocol::Tcp)
        }),
    );
    e.insert(spn("sticky"), two());
    s.insert(
        spn("edge"),
        Arc::new(ServicePort {
            cluster_ips: vec![ip("fd00:96::12")],
            external_ips: vec![ip("2001:db8::7")],
            load_balancer_ips: vec![ip("2001:db8::10")],
            load_balancer_source_ranges: vec!["2001:db8:1::/48".parse().unwrap()],
            ..load_balancer(true)
        }),
    );
    e.insert(spn("edge"), two());
    let dns = ServicePortName::new("default", "dns", "dns", Protocol::Udp);
    s.insert(
        dns.clone(),
        Arc::new(ServicePort::cluster_ip(
            ip("fd00:96::53"),
            53,
            Protocol::Udp,
        )),
    );
    e.insert(
        dns,
        vec![Arc::new(Endpoint::ready(ip("fd00:10:244:2::1"), 5353))],
    );
    (s, e)
}

#[test]
fn ipv6_render_loads() {
    if !privileged() {
        return;
    }
    let cfg = config_v6();
    let ns = Netns::new();
    let mut cases: Vec<(String, ServicePortMap, EndpointsMap)> = scenarios()
        .into_iter()
        .map(|(name, s, e)| {
            let (s, e) = to_v6(&s, &e);
            (format!("{name} (IPv6)"), s, e)
        })
        .collect();
    let (s, e) = v6_services();
    cases.push(("hand-built IPv6 services".into(), s, e));
    for (name, s, e) in &cases {
        ns.reset("ip6");
        let r = render_full(s, e, &cfg, &Existing::default());
        assert!(
            r.text.starts_with("add table ip6 sluice"),
            "{name}: {}",
            r.text
        );
        ns.apply(&r.text, name);
        assert!(ns.listing("ip").is_none(), "{name}: an ip table appeared");
        let table = ns.table("ip6");
        let again = render_full(s, e, &cfg, &ns.existing("ip6"));
        ns.apply(&again.text, &format!("{name} reloaded"));
        assert_same(&ns.table("ip6"), &table, &format!("{name} reloaded"));
        // Applied a third time from stale knowledge (no names read): still loads.
        ns.apply(&r.text, &format!("{name} applied twice"));
        assert_same(&ns.table("ip6"), &table, &format!("{name} applied twice"));
    }
    let table = ns.table("ip6");
    for (header, element) in [
        (
            "map service-ips",
            "fd00:96::10 . tcp . 80 : goto pick-tcp-2",
        ),
        (
            "map service-ips",
            "fd00:96::53 . udp . 53 : goto pick-udp-1",
        ),
        (
            "map service-ips",
            "2001:db8::10 . tcp . 80 : goto external-local",
        ),
        (
            "map endpoints-udp",
            "fd00:96::53 . 53 . 0 : fd00:10:244:2::1 . 5353",
        ),
        (
            "map local-nodeports",
            "tcp . 30080 : goto nodeport-pick-local-tcp-1",
        ),
        ("set firewall-ips", "2001:db8::10 . tcp . 80"),
    ] {
        assert!(
            has_element(&table, header, element),
            "{header} lacks {element}: {table:#?}"
        );
    }
    assert!(
        table.iter().any(|o| o.starts_with("chain affinity-")),
        "no affinity chain: {table:#?}"
    );
}

/// A server thread over a socket in some namespace, stopped and joined on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// A TCP server on `addr` in `ns` answering every connection with its own address.
    fn tcp(ns: &Netns, addr: &str) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = ns
            .run(move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let reply = addr.ip().to_string();
        Server::spawn(move |stop| {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    /// A UDP server on `addr` in `ns` answering every datagram with its own address.
    fn udp(ns: &Netns, addr: &str) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let sock = ns
            .run(move || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let reply = addr.ip().to_string();
        Server::spawn(move |stop| {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(reply.as_bytes(), peer);
                }
            }
        })
    }

    /// Runs `f` on a thread, with the flag that asks it to stop.
    fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Server {
            stop,
            thread: Some(std::thread::spawn(move || f(flag))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `n` TCP connections from `ns` to `addr`: each one's reply, or `error: …`.
fn tcp_asks(ns: &Netns, addr: &str, n: usize) -> Vec<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || {
        (0..n)
            .map(|_| {
                let answer =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut s = String::new();
                        c.read_to_string(&mut s)?;
                        Ok(s)
                    });
                answer.unwrap_or_else(|e| format!("error: {e}"))
            })
            .collect()
    })
}

/// One UDP datagram from `ns` to `addr`: the reply, or `error: …`.
fn udp_ask(ns: &Netns, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || {
        let answer = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.connect(addr)?;
            s.send(b"?")?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).to_string())
        });
        answer.unwrap_or_else(|e| format!("error: {e}"))
    })
}

/// The distinct replies, asserting every one is a backend's answer.
fn backends_seen(replies: &[String]) -> BTreeSet<String> {
    for r in replies {
        assert!(r.starts_with("10.244.1."), "a connection failed: {r}");
    }
    replies.iter().cloned().collect()
}

#[test]
fn traffic_through_cluster_ip() {
    if !privileged() {
        return;
    }
    // client (10.244.0.2) ── c0 [node: router, Sluice's table] b0 ── backend (10.244.1.2, .3)
    let node = Netns::new();
    let client = Netns::new();
    let backend = Netns::new();
    node.ip(&[
        "link",
        "add",
        "c0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client.name,
    ]);
    node.ip(&[
        "link",
        "add",
        "b0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &backend.name,
    ]);
    node.ip(&["addr", "add", "10.244.0.1/24", "dev", "c0"]);
    node.ip(&["addr", "add", "10.244.1.1/24", "dev", "b0"]);
    node.ip(&["link", "set", "c0", "up"]);
    node.ip(&["link", "set", "b0", "up"]);
    // Unmatched cluster IPs must be routable, or the kernel answers "network unreachable"
    // before the filter hook can reject.
    node.ip(&["route", "add", "10.96.0.0/12", "dev", "b0"]);
    let o = node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert!(o.status.success(), "ip_forward: {}", text(&o));
    client.ip(&["addr", "add", "10.244.0.2/24", "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["route", "add", "default", "via", "10.244.0.1"]);
    backend.ip(&["addr", "add", "10.244.1.2/24", "dev", "eth0"]);
    backend.ip(&["addr", "add", "10.244.1.3/24", "dev", "eth0"]);
    backend.ip(&["link", "set", "eth0", "up"]);
    backend.ip(&["route", "add", "default", "via", "10.244.1.1"]);
    let _servers = [
        Server::tcp(&backend, "10.244.1.2:8080"),
        Server::tcp(&backend, "10.244.1.3:8080"),
        Server::udp(&backend, "10.244.1.2:5353"),
    ];

    let cfg = config_v4();
    let (mut s, mut e) = (ServicePortMap::new(), EndpointsMap::new());
    s.insert(
        spn("web"),
        Arc::new(ServicePort::cluster_ip(ip("10.96.0.10"), 80, Protocol::Tcp)),
    );
    e.insert(
        spn("web"),
        vec![ep("10.244.1.2", false), ep("10.244.1.3", false)],
    );
    let dns = ServicePortName::new("default", "dns", "dns", Protocol::Udp);
    s.insert(
        dns.clone(),
        Arc::new(ServicePort::cluster_ip(ip("10.96.0.11"), 53, Protocol::Udp)),
    );
    e.insert(dns, vec![Arc::new(Endpoint::ready(ip("10.244.1.2"), 5353))]);
    s.insert(
        spn("empty"),
        Arc::new(ServicePort::cluster_ip(ip("10.96.0.12"), 80, Protocol::Tcp)),
    );
    let r = render_full(&s, &e, &cfg, &Existing::default());
    node.apply(&r.text, "full render");

    let replies = tcp_asks(&client, "10.96.0.10:80", 40);
    assert_eq!(
        backends_seen(&replies),
        BTreeSet::from(["10.244.1.2".to_string(), "10.244.1.3".to_string()]),
        "{replies:?}"
    );
    assert_eq!(udp_ask(&client, "10.96.0.11:53"), "10.244.1.2");
    let empty: SocketAddr = "10.96.0.12:80".parse().unwrap();
    let (refused, took) = client.run(move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&empty, Duration::from_secs(3));
        (r.map(drop), t.elapsed())
    });
    assert_eq!(
        refused.as_ref().map_err(std::io::Error::kind),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a service without endpoints: {refused:?}"
    );
    assert!(took < Duration::from_secs(1), "refused after {took:?}");

    // 10.244.1.3 is replaced by 10.244.1.4 (still listening on .3: it must get nothing).
    backend.ip(&["addr", "add", "10.244.1.4/24", "dev", "eth0"]);
    let _new_server = Server::tcp(&backend, "10.244.1.4:8080");
    e.insert(
        spn("web"),
        vec![ep("10.244.1.2", false), ep("10.244.1.4", false)],
    );
    let r2 = render(
        &s,
        &e,
        &cfg,
        &partial(&["web"]),
        Some(r.state),
        &Existing::default(),
    );
    assert!(r2.incremental);
    assert!(
        !r2.text.contains("add rule") && !r2.text.contains(" chain "),
        "an endpoint replacement changed rules or chains:\n{}",
        r2.text
    );
    assert!(r2.text.contains("10.244.1.4"), "{}", r2.text);
    node.apply(&r2.text, "endpoint replacement");
    let replies = tcp_asks(&client, "10.96.0.10:80", 40);
    assert_eq!(
        backends_seen(&replies),
        BTreeSet::from(["10.244.1.2".to_string(), "10.244.1.4".to_string()]),
        "{replies:?}"
    );
}
