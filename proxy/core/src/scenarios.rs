//! Golden scenarios shared by every proxy mode's render tests: one service port per scenario
//! (ClusterIP, NodePort, affinity, no endpoints, `externalTrafficPolicy: Local` with and without
//! local endpoints, terminating fallback, `internalTrafficPolicy: Local`, LB source ranges),
//! plus the builders they use. Each mode renders the same maps, so its golden files differ
//! only where the mode does.

use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use crate::proxier::Changes;

/// The proxy's node.
pub const NODE: &str = "node-a";
/// The node's address.
pub const NODE_IP: &str = "192.168.1.10";
/// The service's cluster IP.
pub const CLUSTER_IP: &str = "10.96.0.10";
/// The service's external IP.
pub const EXTERNAL_IP: &str = "198.51.100.7";
/// The service's load-balancer IP.
pub const LB_IP: &str = "203.0.113.10";
/// The service's node port.
pub const NODE_PORT: u16 = 30080;

/// Parses an address.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `default/<name>:http` over TCP.
pub fn spn(name: &str) -> ServicePortName {
    ServicePortName::new("default", name, "http", Protocol::Tcp)
}

/// A ready endpoint on port 8080, on [`NODE`] when `local`, else on `node-b`.
pub fn ep(addr: &str, local: bool) -> Arc<Endpoint> {
    let mut e = Endpoint::ready(ip(addr), 8080);
    e.is_local = local;
    e.node_name = Some(if local { NODE } else { "node-b" }.to_string());
    Arc::new(e)
}

/// A terminating (not ready) endpoint on `node-b`, serving or not.
pub fn terminating(addr: &str, serving: bool) -> Arc<Endpoint> {
    let mut e = (*ep(addr, false)).clone();
    e.ready = false;
    e.serving = serving;
    e.terminating = true;
    Arc::new(e)
}

/// A TCP ClusterIP port 80 on [`CLUSTER_IP`].
pub fn cluster_ip() -> ServicePort {
    ServicePort::cluster_ip(ip(CLUSTER_IP), 80, Protocol::Tcp)
}

/// [`cluster_ip`] with NodePort [`NODE_PORT`].
pub fn node_port() -> ServicePort {
    ServicePort {
        node_port: Some(NODE_PORT),
        ..cluster_ip()
    }
}

/// [`node_port`] with [`EXTERNAL_IP`], LB IP [`LB_IP`] and the given external traffic policy.
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

/// The scenario called `name`.
pub fn scenario(name: &str) -> (ServicePortMap, EndpointsMap) {
    let (_, s, e) = scenarios()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .expect("scenario");
    (s, e)
}

/// Changes asking for a full sync.
pub fn full() -> Changes {
    Changes {
        full: true,
        ..Changes::default()
    }
}
