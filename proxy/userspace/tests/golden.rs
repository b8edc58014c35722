//! Golden files: `testdata/<scenario>.golden` holds the exact render (listener comments + the
//! restore transaction) of each scenario, with listener ports assigned 40000, 40001, … in plan
//! order. `UPDATE_GOLDEN=1 cargo test -p sluice-proxy-userspace --test golden` rewrites them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_proxy::golden;
use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy_userspace::render::{plan, render, ListenerKey, RenderConfig};

const NODE: &str = "node-a";
const CLUSTER_IP: &str = "10.96.0.10";
const EXTERNAL_IP: &str = "198.51.100.7";
const LB_IP: &str = "203.0.113.10";
const NODE_PORT: u16 = 30080;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spn(name: &str, port: &str, p: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, port, p)
}

fn ep(addr: &str, port: u16, local: bool) -> Arc<Endpoint> {
    let mut e = Endpoint::ready(ip(addr), port);
    e.is_local = local;
    e.node_name = Some(if local { NODE } else { "node-b" }.to_string());
    Arc::new(e)
}

fn cluster_ip(port: u16, p: Protocol) -> ServicePort {
    ServicePort::cluster_ip(ip(CLUSTER_IP), port, p)
}

fn node_port() -> ServicePort {
    ServicePort {
        node_port: Some(NODE_PORT),
        ..cluster_ip(80, Protocol::Tcp)
    }
}

fn load_balancer(etp_local: bool) -> ServicePort {
    ServicePort {
        external_ips: vec![ip(EXTERNAL_IP)],
        load_balancer_ips: vec![ip(LB_IP)],
        external_policy_local: etp_local,
        health_check_node_port: etp_local.then_some(32000),
        ..node_port()
    }
}

type Scenario = (&'static str, ServicePortMap, EndpointsMap);

fn maps(
    entries: Vec<(ServicePortName, ServicePort, Vec<Arc<Endpoint>>)>,
) -> (ServicePortMap, EndpointsMap) {
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    for (n, svc, eps) in entries {
        s.insert(n.clone(), Arc::new(svc));
        if !eps.is_empty() {
            e.insert(n, eps);
        }
    }
    (s, e)
}

fn scenarios() -> Vec<Scenario> {
    let tcp = Protocol::Tcp;
    let udp = Protocol::Udp;
    let mut out = Vec::new();
    let mut add = |name, entries| {
        let (s, e) = maps(entries);
        out.push((name, s, e));
    };
    add(
        "clusterip_tcp_udp",
        vec![
            (
                spn("dns", "dns-tcp", tcp),
                cluster_ip(53, tcp),
                vec![ep("10.244.1.5", 53, false), ep("10.244.2.5", 53, true)],
            ),
            (
                spn("dns", "dns", udp),
                cluster_ip(53, udp),
                vec![ep("10.244.1.5", 53, false), ep("10.244.2.5", 53, true)],
            ),
        ],
    );
    add(
        "nodeport",
        vec![(
            spn("web", "http", tcp),
            node_port(),
            vec![ep("10.244.1.5", 8080, false), ep("10.244.2.5", 8080, true)],
        )],
    );
    add(
        "no_endpoints",
        vec![
            (spn("web", "http", tcp), load_balancer(false), vec![]),
            (spn("dns", "dns", udp), cluster_ip(53, udp), vec![]),
        ],
    );
    add(
        "external_ips_and_lb_ips",
        vec![(
            spn("web", "http", tcp),
            load_balancer(false),
            vec![ep("10.244.1.5", 8080, false)],
        )],
    );
    add(
        "etp_local_with_local_endpoints",
        vec![(
            spn("web", "http", tcp),
            load_balancer(true),
            vec![ep("10.244.1.5", 8080, false), ep("10.244.2.5", 8080, true)],
        )],
    );
    add(
        "etp_local_without_local_endpoints",
        vec![(
            spn("web", "http", tcp),
            load_balancer(true),
            vec![ep("10.244.1.5", 8080, false)],
        )],
    );
    add(
        "itp_local_without_local_endpoints",
        vec![(
            spn("web", "http", tcp),
            ServicePort {
                internal_policy_local: true,
                ..cluster_ip(80, tcp)
            },
            vec![ep("10.244.1.5", 8080, false)],
        )],
    );
    // Allowed: a client range, and the node's own range (so the LB IP itself is an allowed
    // source too); the IPv6 range does not apply to IPv4 traffic. The second service has only
    // an IPv6 range: no IPv4 source is allowed.
    add(
        "lb_source_ranges",
        vec![
            (
                spn("web", "http", tcp),
                ServicePort {
                    load_balancer_source_ranges: vec![
                        "192.0.2.0/24".parse().unwrap(),
                        "192.168.1.0/24".parse().unwrap(),
                        "2001:db8::/32".parse().unwrap(),
                    ],
                    ..load_balancer(false)
                },
                vec![ep("10.244.1.5", 8080, false)],
            ),
            (
                spn("v6only", "", tcp),
                ServicePort {
                    load_balancer_ips: vec![ip("203.0.113.11")],
                    load_balancer_source_ranges: vec!["2001:db8::/32".parse().unwrap()],
                    ..cluster_ip(81, tcp)
                },
                vec![ep("10.244.1.6", 8080, false)],
            ),
        ],
    );
    add(
        "sctp_and_ipv6_skipped",
        vec![
            (
                spn("sctp", "", Protocol::Sctp),
                cluster_ip(9999, Protocol::Sctp),
                vec![ep("10.244.1.5", 9999, false)],
            ),
            (
                spn("dual", "", tcp),
                ServicePort {
                    cluster_ips: vec![ip(CLUSTER_IP), ip("fd00::10")],
                    ..cluster_ip(80, tcp)
                },
                vec![
                    ep("10.244.1.5", 8080, false),
                    ep("fd00:244::5", 8080, false),
                ],
            ),
        ],
    );
    out
}

fn config() -> RenderConfig {
    RenderConfig {
        node_ip: "192.168.1.10".parse().unwrap(),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
    }
}

fn render_scenario(s: &ServicePortMap, e: &EndpointsMap) -> String {
    let plans = plan(s, e, NODE, &BTreeMap::new());
    let mut ports: BTreeMap<ListenerKey, u16> = BTreeMap::new();
    for p in &plans {
        for k in p.listener_keys() {
            let n = 40000 + ports.len() as u16;
            ports.insert(k, n);
        }
    }
    render(&plans, &ports, &config()).text()
}

#[test]
fn golden_files_match() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let scenarios = scenarios();
    golden::check(
        &dir,
        scenarios
            .iter()
            .map(|(name, s, e)| (*name, render_scenario(s, e))),
    );
}

#[test]
fn every_golden_file_has_a_scenario() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let names: Vec<&str> = scenarios().iter().map(|(n, _, _)| *n).collect();
    golden::check_no_stale(&dir, &names);
}

/// Semantic checks that hold whatever the golden files say.
#[test]
fn rules_follow_the_service_semantics() {
    let by_name: BTreeMap<&str, String> = scenarios()
        .iter()
        .map(|(n, s, e)| (*n, render_scenario(s, e)))
        .collect();
    let no_eps = &by_name["no_endpoints"];
    assert!(
        !no_eps.contains("REDIRECT") && !no_eps.contains("DNAT"),
        "{no_eps}"
    );
    assert!(no_eps.contains("--dport 80 -j REJECT --reject-with tcp-reset"));
    assert!(no_eps.contains("--dport 53 -j REJECT --reject-with icmp-port-unreachable"));
    assert!(no_eps.contains("--dport 30080 -j REJECT --reject-with tcp-reset"));
    assert!(!no_eps.contains("DROP"));

    let etp = &by_name["etp_local_without_local_endpoints"];
    assert!(etp.contains(&format!("-d {EXTERNAL_IP}/32 -p tcp -m comment --comment \"default/web:http has no local endpoints\" -m tcp --dport 80 -j DROP")), "{etp}");
    assert!(etp.contains(&format!("--dport {NODE_PORT} -j DROP")));
    assert!(!etp.contains("-j REJECT"));
    // ClusterIP still works through the cluster listener.
    assert!(etp.contains(&format!("-A SLUICEUS-PORTALS-CONTAINER -d {CLUSTER_IP}/32")));

    let itp = &by_name["itp_local_without_local_endpoints"];
    assert!(
        itp.contains("-j DROP") && !itp.contains("REDIRECT"),
        "{itp}"
    );

    let skipped = &by_name["sctp_and_ipv6_skipped"];
    assert!(
        !skipped.contains("sctp") && !skipped.contains("fd00"),
        "{skipped}"
    );
    for text in by_name.values() {
        for line in text.lines().filter(|l| l.starts_with(":")) {
            assert!(line.starts_with(":SLUICEUS-"), "{line}");
        }
    }
}
