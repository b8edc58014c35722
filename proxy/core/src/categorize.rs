//! Endpoint categorisation: which endpoints a service port's traffic may use.
//!
//! Port of kube-proxy's `CategorizeEndpoints` (`pkg/proxy/topology.go`), facts only:
//!
//! * **Cluster set** (computed when some traffic uses the Cluster policy): ready endpoints,
//!   filtered by the topology mode; if empty, every serving *and* terminating endpoint.
//! * **Topology mode** from EndpointSlice hints of the *ready* endpoints: PreferSameNode when every
//!   ready endpoint has node hints and one names this node; else PreferSameZone when every ready
//!   endpoint has zone hints and one names this node's zone; else none.
//! * **Local set** (computed only when a traffic policy is Local): local ready endpoints, else
//!   local serving+terminating endpoints.
//! * **All reachable** = Cluster ∪ Local (or just the set in use).
//! * `has_any_endpoints` = some endpoint is usable by Cluster or Local (ready, or serving and
//!   terminating), anywhere in the cluster. Dataplanes use it to choose REJECT vs DROP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::{Endpoint, ServicePort, LABEL_TOPOLOGY_ZONE};

/// Result of [`categorize_endpoints`]. Endpoint order follows the input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for Cluster-policy traffic (empty if no traffic uses the Cluster policy).
    pub cluster: Vec<Arc<Endpoint>>,
    /// Endpoints for Local-policy traffic (empty if no traffic policy is Local).
    pub local: Vec<Arc<Endpoint>>,
    /// Union of `cluster` and `local`, ordered by `ip:port`.
    pub all_reachable: Vec<Arc<Endpoint>>,
    /// Some endpoint anywhere is usable (ready, or serving and terminating).
    pub has_any_endpoints: bool,
}

/// Topology-aware routing mode chosen from hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    /// No topology filtering.
    None,
    /// Only endpoints whose node hints include this node.
    PreferSameNode,
    /// Only endpoints whose zone hints include this node's zone.
    PreferSameZone,
}

/// Chooses the topology mode from the hints of the ready endpoints.
pub fn topology_mode(endpoints: &[Arc<Endpoint>], node_name: &str, zone: &str) -> TopologyMode {
    let mut all_node_hints = true;
    let mut node_match = false;
    let mut all_zone_hints = true;
    let mut zone_match = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(node_name) {
            node_match = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if ep.zone_hints.contains(zone) {
            zone_match = true;
        }
    }
    if all_node_hints && node_match {
        TopologyMode::PreferSameNode
    } else if all_zone_hints && zone_match {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}

fn serving_terminating(ep: &Endpoint) -> bool {
    ep.serving && ep.terminating
}

fn filter(endpoints: &[Arc<Endpoint>], pred: impl Fn(&Endpoint) -> bool) -> Vec<Arc<Endpoint>> {
    endpoints.iter().filter(|e| pred(e)).cloned().collect()
}

/// Splits `endpoints` of `svc` into Cluster / Local sets for this node.
///
/// `topology_labels` are the node's labels; only `topology.kubernetes.io/zone` is read.
pub fn categorize_endpoints(
    endpoints: &[Arc<Endpoint>],
    svc: &ServicePort,
    node_name: &str,
    topology_labels: &BTreeMap<String, String>,
) -> Categorized {
    let mut out = Categorized::default();
    if svc.uses_cluster_endpoints() {
        let zone = topology_labels
            .get(LABEL_TOPOLOGY_ZONE)
            .map(String::as_str)
            .unwrap_or("");
        let mode = topology_mode(endpoints, node_name, zone);
        out.cluster = filter(endpoints, |e| {
            e.ready && available_for_topology(e, mode, node_name, zone)
        });
        // The topology mode is only chosen when a ready endpoint matches, so an empty set here
        // means there is no ready endpoint anywhere: fall back to serving-terminating ones.
        if out.cluster.is_empty() {
            out.cluster = filter(endpoints, serving_terminating);
        }
        out.has_any_endpoints = !out.cluster.is_empty();
    }

    if !svc.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone();
        return out;
    }

    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any_endpoints = true;
            local_ready |= ep.is_local;
        } else if serving_terminating(ep) {
            out.has_any_endpoints = true;
            local_serving_terminating |= ep.is_local;
        }
    }
    if local_ready {
        out.local = filter(endpoints, |e| e.is_local && e.ready);
    } else if local_serving_terminating {
        out.local = filter(endpoints, |e| e.is_local && serving_terminating(e));
    }

    if !svc.uses_cluster_endpoints() {
        out.all_reachable = out.local.clone();
        return out;
    }
    let mut union: BTreeMap<SocketAddr, Arc<Endpoint>> = BTreeMap::new();
    for ep in out.cluster.iter().chain(out.local.iter()) {
        union.entry(ep.addr()).or_insert_with(|| ep.clone());
    }
    out.all_reachable = union.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::IpAddr;

    const NODE: &str = "node-a";
    const ZONE: &str = "zone-a";

    #[derive(Clone, Copy)]
    enum St {
        Ready,
        ServingTerminating,
        NotServingTerminating,
        NotReady,
    }

    struct Ep {
        last_octet: u8,
        state: St,
        local: bool,
        zones: &'static [&'static str],
        nodes: &'static [&'static str],
    }

    fn ep(last_octet: u8, state: St, local: bool) -> Ep {
        Ep {
            last_octet,
            state,
            local,
            zones: &[],
            nodes: &[],
        }
    }

    fn ep_hints(
        last_octet: u8,
        zones: &'static [&'static str],
        nodes: &'static [&'static str],
    ) -> Ep {
        Ep {
            last_octet,
            state: St::Ready,
            local: false,
            zones,
            nodes,
        }
    }

    fn build(eps: &[Ep]) -> Vec<Arc<Endpoint>> {
        eps.iter()
            .map(|e| {
                let ip: IpAddr = format!("10.0.0.{}", e.last_octet).parse().unwrap();
                let mut x = Endpoint::ready(ip, 80);
                (x.ready, x.serving, x.terminating) = match e.state {
                    St::Ready => (true, true, false),
                    St::ServingTerminating => (false, true, true),
                    St::NotServingTerminating => (false, false, true),
                    St::NotReady => (false, false, false),
                };
                x.is_local = e.local;
                x.zone_hints = e.zones.iter().map(|s| s.to_string()).collect();
                x.node_hints = e.nodes.iter().map(|s| s.to_string()).collect();
                Arc::new(x)
            })
            .collect()
    }

    #[derive(Clone, Copy)]
    enum Policy {
        /// ClusterIP service, both policies Cluster.
        Cluster,
        /// internalTrafficPolicy Local, not externally accessible.
        InternalLocal,
        /// NodePort with externalTrafficPolicy Local.
        ExternalLocal,
        /// NodePort, internal Local, external Cluster.
        InternalLocalExternalCluster,
    }

    fn svc(p: Policy) -> ServicePort {
        let mut s = ServicePort::cluster_ip("10.96.0.1".parse().unwrap(), 80, Protocol::Tcp);
        match p {
            Policy::Cluster => {}
            Policy::InternalLocal => s.internal_policy_local = true,
            Policy::ExternalLocal => {
                s.node_port = Some(30080);
                s.external_policy_local = true;
            }
            Policy::InternalLocalExternalCluster => {
                s.node_port = Some(30080);
                s.internal_policy_local = true;
            }
        }
        s
    }

    fn octets(v: &[Arc<Endpoint>]) -> Vec<u8> {
        v.iter()
            .map(|e| match e.ip {
                IpAddr::V4(ip) => ip.octets()[3],
                IpAddr::V6(_) => unreachable!(),
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        policy: Policy,
        zone: Option<&'static str>,
        eps: Vec<Ep>,
        cluster: &'static [u8],
        local: &'static [u8],
        all: &'static [u8],
        any: bool,
    }

    #[test]
    fn categorize_table() {
        use St::*;
        let cases = vec![
            Case {
                name: "cluster: ready only, not-ready ignored",
                policy: Policy::Cluster,
                zone: None,
                eps: vec![
                    ep(1, Ready, false),
                    ep(2, NotReady, false),
                    ep(3, Ready, true),
                ],
                cluster: &[1, 3],
                local: &[],
                all: &[1, 3],
                any: true,
            },
            Case {
                name: "cluster: ready present => terminating ignored",
                policy: Policy::Cluster,
                zone: None,
                eps: vec![ep(1, Ready, false), ep(2, ServingTerminating, false)],
                cluster: &[1],
                local: &[],
                all: &[1],
                any: true,
            },
            Case {
                name: "cluster: no ready => serving-terminating fallback",
                policy: Policy::Cluster,
                zone: None,
                eps: vec![
                    ep(1, NotReady, false),
                    ep(2, ServingTerminating, false),
                    ep(3, NotServingTerminating, false),
                ],
                cluster: &[2],
                local: &[],
                all: &[2],
                any: true,
            },
            Case {
                name: "cluster: nothing usable",
                policy: Policy::Cluster,
                zone: None,
                eps: vec![ep(1, NotReady, false), ep(2, NotServingTerminating, false)],
                cluster: &[],
                local: &[],
                all: &[],
                any: false,
            },
            Case {
                name: "internal local: only local set computed, local ready",
                policy: Policy::InternalLocal,
                zone: None,
                eps: vec![ep(1, Ready, false), ep(2, Ready, true)],
                cluster: &[],
                local: &[2],
                all: &[2],
                any: true,
            },
            Case {
                name: "internal local: no local endpoints but remote ones => has_any",
                policy: Policy::InternalLocal,
                zone: None,
                eps: vec![ep(1, Ready, false)],
                cluster: &[],
                local: &[],
                all: &[],
                any: true,
            },
            Case {
                name: "external local: local falls back to serving-terminating independently",
                policy: Policy::ExternalLocal,
                zone: None,
                eps: vec![ep(1, Ready, false), ep(2, ServingTerminating, true)],
                cluster: &[1],
                local: &[2],
                all: &[1, 2],
                any: true,
            },
            Case {
                name: "external local: local ready preferred over local terminating",
                policy: Policy::ExternalLocal,
                zone: None,
                eps: vec![ep(1, ServingTerminating, true), ep(2, Ready, true)],
                cluster: &[2],
                local: &[2],
                all: &[2],
                any: true,
            },
            Case {
                name: "internal local + external cluster: both sets",
                policy: Policy::InternalLocalExternalCluster,
                zone: None,
                eps: vec![
                    ep(1, Ready, false),
                    ep(2, Ready, true),
                    ep(3, NotReady, true),
                ],
                cluster: &[1, 2],
                local: &[2],
                all: &[1, 2],
                any: true,
            },
            Case {
                name: "topology: same zone",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![
                    ep_hints(1, &["zone-a"], &[]),
                    ep_hints(2, &["zone-b"], &[]),
                    ep_hints(3, &["zone-a", "zone-c"], &[]),
                ],
                cluster: &[1, 3],
                local: &[],
                all: &[1, 3],
                any: true,
            },
            Case {
                name: "topology: one ready endpoint without zone hints => ignore hints",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![ep_hints(1, &["zone-a"], &[]), ep_hints(2, &[], &[])],
                cluster: &[1, 2],
                local: &[],
                all: &[1, 2],
                any: true,
            },
            Case {
                name: "topology: not-ready endpoints without hints do not disable hints",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![
                    ep_hints(1, &["zone-a"], &[]),
                    ep_hints(2, &["zone-b"], &[]),
                    ep(3, NotReady, false),
                ],
                cluster: &[1],
                local: &[],
                all: &[1],
                any: true,
            },
            Case {
                name: "topology: no hint for our zone => ignore hints",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![ep_hints(1, &["zone-b"], &[]), ep_hints(2, &["zone-c"], &[])],
                cluster: &[1, 2],
                local: &[],
                all: &[1, 2],
                any: true,
            },
            Case {
                name: "topology: node missing zone label => ignore zone hints",
                policy: Policy::Cluster,
                zone: None,
                eps: vec![ep_hints(1, &["zone-a"], &[]), ep_hints(2, &["zone-b"], &[])],
                cluster: &[1, 2],
                local: &[],
                all: &[1, 2],
                any: true,
            },
            Case {
                name: "topology: same node beats same zone",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![
                    ep_hints(1, &["zone-a"], &["node-b"]),
                    ep_hints(2, &["zone-a"], &[NODE]),
                ],
                cluster: &[2],
                local: &[],
                all: &[2],
                any: true,
            },
            Case {
                name: "topology: node hints incomplete => fall back to zone hints",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![
                    ep_hints(1, &["zone-a"], &[NODE]),
                    ep_hints(2, &["zone-a"], &[]),
                    ep_hints(3, &["zone-b"], &[]),
                ],
                cluster: &[1, 2],
                local: &[],
                all: &[1, 2],
                any: true,
            },
            Case {
                name: "topology: node hints for other nodes only => zone hints",
                policy: Policy::Cluster,
                zone: Some(ZONE),
                eps: vec![
                    ep_hints(1, &["zone-a"], &["node-b"]),
                    ep_hints(2, &["zone-b"], &["node-c"]),
                ],
                cluster: &[1],
                local: &[],
                all: &[1],
                any: true,
            },
            Case {
                name: "topology: ignored by the local set",
                policy: Policy::InternalLocalExternalCluster,
                zone: Some(ZONE),
                eps: vec![
                    Ep {
                        local: true,
                        ..ep_hints(1, &["zone-b"], &[])
                    },
                    ep_hints(2, &["zone-a"], &[]),
                ],
                cluster: &[2],
                local: &[1],
                all: &[1, 2],
                any: true,
            },
        ];
        for c in cases {
            let labels: BTreeMap<String, String> = c
                .zone
                .map(|z| (LABEL_TOPOLOGY_ZONE.to_string(), z.to_string()))
                .into_iter()
                .collect();
            let got = categorize_endpoints(&build(&c.eps), &svc(c.policy), NODE, &labels);
            assert_eq!(octets(&got.cluster), c.cluster, "{}: cluster", c.name);
            assert_eq!(octets(&got.local), c.local, "{}: local", c.name);
            assert_eq!(
                octets(&got.all_reachable),
                c.all,
                "{}: all reachable",
                c.name
            );
            assert_eq!(
                got.has_any_endpoints, c.any,
                "{}: has_any_endpoints",
                c.name
            );
        }
    }

    #[test]
    fn topology_mode_ignores_not_ready_and_needs_a_match() {
        let eps = build(&[ep_hints(1, &["zone-a"], &[NODE])]);
        assert_eq!(
            topology_mode(&eps, NODE, ZONE),
            TopologyMode::PreferSameNode
        );
        assert_eq!(
            topology_mode(&eps, "other", ZONE),
            TopologyMode::PreferSameZone
        );
        assert_eq!(topology_mode(&eps, "other", "zone-z"), TopologyMode::None);
        assert_eq!(topology_mode(&[], NODE, ZONE), TopologyMode::None);
    }
}
