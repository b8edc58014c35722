//! Scenarios shared by the golden-file and tracer tests.
#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;

use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::Changes;
use sluice_proxy_iptables::apply::base_jumps_restore_text;
use sluice_proxy_iptables::{render, Action, ExistingChains, Fake, Packet, RenderConfig, Verdict};

pub const NODE: &str = "node-a";
pub const NODE_IP: &str = "192.168.1.10";
pub const CLUSTER_IP: &str = "10.96.0.10";
pub const EXTERNAL_IP: &str = "198.51.100.7";
pub const LB_IP: &str = "203.0.113.10";
pub const NODE_PORT: u16 = 30080;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn spn(name: &str) -> ServicePortName {
    ServicePortName::new("default", name, "http", Protocol::Tcp)
}

pub fn config() -> RenderConfig {
    RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RenderConfig::new(NODE)
    }
}

pub fn ep(addr: &str, local: bool) -> Arc<Endpoint> {
    let mut e = Endpoint::ready(ip(addr), 8080);
    e.is_local = local;
    e.node_name = Some(if local { NODE } else { "node-b" }.to_string());
    Arc::new(e)
}

pub fn terminating(addr: &str, serving: bool) -> Arc<Endpoint> {
    let mut e = (*ep(addr, false)).clone();
    e.ready = false;
    e.serving = serving;
    e.terminating = true;
    Arc::new(e)
}

pub fn cluster_ip() -> ServicePort {
    ServicePort::cluster_ip(ip(CLUSTER_IP), 80, Protocol::Tcp)
}

pub fn node_port() -> ServicePort {
    ServicePort {
        node_port: Some(NODE_PORT),
        ..cluster_ip()
    }
}

pub fn load_balancer(etp_local: bool) -> ServicePort {
    ServicePort {
        external_ips: vec![ip(EXTERNAL_IP)],
        load_balancer_ips: vec![ip(LB_IP)],
        external_policy_local: etp_local,
        health_check_node_port: etp_local.then_some(32000),
        ..node_port()
    }
}

/// One service `default/<name>:http` with the given port and endpoints.
pub fn one(
    name: &str,
    svc: ServicePort,
    eps: Vec<Arc<Endpoint>>,
) -> (ServicePortMap, EndpointsMap) {
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    s.insert(spn(name), Arc::new(svc));
    if !eps.is_empty() {
        e.insert(spn(name), eps);
    }
    (s, e)
}

/// The golden scenarios, by file name.
pub fn scenarios() -> Vec<(&'static str, ServicePortMap, EndpointsMap)> {
    let three = || {
        vec![
            ep("10.244.1.1", true),
            ep("10.244.2.1", false),
            ep("10.244.3.1", false),
        ]
    };
    let mut v = Vec::new();
    let (s, e) = one("web", cluster_ip(), three());
    v.push(("clusterip_three_endpoints", s, e));
    let (s, e) = one(
        "web",
        node_port(),
        vec![ep("10.244.1.1", true), ep("10.244.2.1", false)],
    );
    v.push(("nodeport", s, e));
    let (s, e) = one(
        "web",
        ServicePort {
            session_affinity_timeout: Some(10800),
            ..cluster_ip()
        },
        vec![ep("10.244.1.1", true), ep("10.244.2.1", false)],
    );
    v.push(("client_ip_affinity", s, e));
    let (s, e) = one("web", load_balancer(false), vec![]);
    v.push(("no_endpoints", s, e));
    let (s, e) = one(
        "web",
        load_balancer(true),
        vec![ep("10.244.1.1", true), ep("10.244.2.1", false)],
    );
    v.push(("etp_local_with_local_endpoints", s, e));
    let (s, e) = one("web", load_balancer(true), vec![ep("10.244.2.1", false)]);
    v.push(("etp_local_without_local_endpoints", s, e));
    let (s, e) = one(
        "web",
        cluster_ip(),
        vec![
            terminating("10.244.1.1", true),
            terminating("10.244.2.1", false),
            terminating("10.244.3.1", true),
        ],
    );
    v.push(("terminating_fallback", s, e));
    let (s, e) = one(
        "web",
        ServicePort {
            internal_policy_local: true,
            ..cluster_ip()
        },
        vec![ep("10.244.2.1", false)],
    );
    v.push(("itp_local_without_local_endpoints", s, e));
    let (s, e) = one(
        "web",
        ServicePort {
            load_balancer_source_ranges: vec!["192.0.2.0/24".parse().unwrap()],
            ..load_balancer(false)
        },
        vec![ep("10.244.2.1", false)],
    );
    v.push(("lb_source_ranges", s, e));
    v
}

pub fn scenario(name: &str) -> (ServicePortMap, EndpointsMap) {
    let (_, s, e) = scenarios()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .expect("scenario");
    (s, e)
}

pub fn full() -> Changes {
    Changes {
        full: true,
        ..Changes::default()
    }
}

pub fn render_full(s: &ServicePortMap, e: &EndpointsMap) -> String {
    render(s, e, &config(), &full(), &ExistingChains::default()).text
}

/// A fake with the scenario applied and the base jumps installed.
pub fn load(name: &str) -> Fake {
    let (s, e) = scenario(name);
    let mut f = Fake::new();
    f.local_addrs.insert(ip(NODE_IP));
    f.restore(&render_full(&s, &e)).expect("render applies");
    f.restore(&base_jumps_restore_text()).expect("jumps apply");
    f
}

pub fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet {
        src: ip(src),
        dst: ip(dst),
        dport,
        proto: Protocol::Tcp,
        from_local: false,
    }
}

pub fn dnat(addrs: &[&str], masquerade: bool) -> Vec<Verdict> {
    addrs
        .iter()
        .map(|a| Verdict {
            action: Action::Dnat(format!("{a}:8080").parse().unwrap()),
            masquerade,
        })
        .collect()
}

pub fn only(action: Action) -> Vec<Verdict> {
    vec![Verdict {
        action,
        masquerade: false,
    }]
}

pub fn trace(f: &Fake, p: Packet) -> Vec<Verdict> {
    f.trace(&p).expect("trace").into_iter().collect()
}
