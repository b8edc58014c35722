//! Routes between nodes: every other node's podCIDR is reached through that node's
//! InternalIP (no encapsulation, no NAT). Pure: desired routes from a node list and the plan
//! that takes the kernel's current Sluice routes to them. Applying the plan is
//! [`crate::netlink`]'s job.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;

/// Route protocol number that marks the routes this agent owns (`ip route ... proto 92`).
/// Only routes carrying it are ever changed or deleted.
pub const ROUTE_PROTOCOL: u8 = 92;

/// Routes by destination: podCIDR → next hop.
pub type RouteTable = BTreeMap<Ipv4Net, Ipv4Addr>;

/// One change to the kernel's routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Add the route, or replace the existing one to the same destination.
    Replace {
        /// Destination (a podCIDR).
        dst: Ipv4Net,
        /// Next hop (the owning node's InternalIP).
        via: Ipv4Addr,
    },
    /// Delete a route of ours.
    Delete {
        /// Destination.
        dst: Ipv4Net,
        /// Its current next hop.
        via: Ipv4Addr,
    },
}

/// The node's IPv4 podCIDR (`spec.podCIDRs`, else `spec.podCIDR`), host bits cleared.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|s| s.parse::<IpNet>().ok())
        .find_map(|n| match n {
            IpNet::V4(v4) => Some(v4.trunc()),
            IpNet::V6(_) => None,
        })
}

/// The node's first IPv4 InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
}

fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

/// Desired routes on node `me`: one per other node that has both an IPv4 podCIDR and an IPv4
/// InternalIP. Skipped: our own podCIDR (local, on the bridge), a podCIDR overlapping ours,
/// and a next hop that is one of our own addresses. When two nodes claim overlapping podCIDRs
/// (a broken allocator), the lexically smallest node name wins, so every agent decides alike.
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str) -> RouteTable {
    let mut nodes: Vec<&Node> = nodes.into_iter().collect();
    nodes.sort_by(|a, b| name(a).cmp(name(b)));
    let mine = nodes
        .iter()
        .find(|n| name(n) == me)
        .and_then(|n| pod_cidr(n));
    let my_ip = nodes
        .iter()
        .find(|n| name(n) == me)
        .and_then(|n| internal_ip(n));
    let mut out = RouteTable::new();
    for n in nodes {
        if name(n) == me {
            continue;
        }
        let (Some(dst), Some(via)) = (pod_cidr(n), internal_ip(n)) else {
            continue;
        };
        let overlaps =
            |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
        if mine.is_some_and(|m| overlaps(&m, &dst)) || Some(via) == my_ip {
            continue;
        }
        if out.keys().any(|k| overlaps(k, &dst)) {
            tracing::warn!(node = name(n), %dst, "podCIDR overlaps another node's: no route");
            continue;
        }
        out.insert(dst, via);
    }
    out
}

/// The operations that turn `current` (our routes in the kernel) into `desired`: deletes
/// first, then adds/replacements, each group in destination order.
pub fn plan(current: &RouteTable, desired: &RouteTable) -> Vec<Op> {
    let mut ops: Vec<Op> = current
        .iter()
        .filter(|(dst, _)| !desired.contains_key(dst))
        .map(|(&dst, &via)| Op::Delete { dst, via })
        .collect();
    ops.extend(
        desired
            .iter()
            .filter(|(dst, via)| current.get(dst) != Some(via))
            .map(|(&dst, &via)| Op::Replace { dst, via }),
    );
    ops
}

/// Where routes live: the kernel ([`crate::netlink::Netlink`]) or a fake in tests.
pub trait RouteBackend {
    /// Error of the backend.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Our routes as they are now.
    fn our_routes(
        &self,
    ) -> impl std::future::Future<Output = Result<RouteTable, Self::Error>> + Send;
    /// Applies one operation (deleting a missing route succeeds).
    fn apply(&self, op: &Op) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// Brings the backend's routes to `desired`: reads the current table, applies the plan, and
/// keeps going past failed operations. Returns the operations applied, or the first error
/// (the caller retries on its next resync).
pub async fn reconcile<B: RouteBackend>(
    backend: &B,
    desired: &RouteTable,
) -> Result<Vec<Op>, B::Error> {
    let have = backend.our_routes().await?;
    let mut done = Vec::new();
    let mut first_err = None;
    for op in plan(&have, desired) {
        match backend.apply(&op).await {
            Ok(()) => {
                tracing::info!(?op, "route applied");
                done.push(op);
            }
            Err(e) => {
                tracing::warn!(?op, error = %e, "route change failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    /// A kernel stand-in: a table, and next hops it cannot reach (like ENETUNREACH).
    #[derive(Default)]
    struct Fake {
        table: Mutex<RouteTable>,
        unreachable: Mutex<Vec<Ipv4Addr>>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("network unreachable: {0}")]
    struct Unreachable(Ipv4Addr);

    impl RouteBackend for Fake {
        type Error = Unreachable;
        async fn our_routes(&self) -> Result<RouteTable, Unreachable> {
            Ok(self.table.lock().unwrap().clone())
        }
        async fn apply(&self, op: &Op) -> Result<(), Unreachable> {
            let mut t = self.table.lock().unwrap();
            match *op {
                Op::Replace { dst, via } => {
                    if self.unreachable.lock().unwrap().contains(&via) {
                        return Err(Unreachable(via));
                    }
                    t.insert(dst, via);
                }
                Op::Delete { dst, .. } => {
                    t.remove(&dst);
                }
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn reconcile_converges_past_failures() {
        let fake = Fake::default();
        *fake.table.lock().unwrap() = table(&[("10.244.250.0/24", "172.30.0.13")]);
        fake.unreachable
            .lock()
            .unwrap()
            .push("172.30.0.99".parse().unwrap());
        let want = table(&[
            ("10.244.1.0/24", "172.30.0.12"),
            ("10.244.2.0/24", "172.30.0.99"),
        ]);
        let err = reconcile(&fake, &want).await.unwrap_err();
        assert_eq!(err.0.to_string(), "172.30.0.99");
        // The stale route went and the reachable one was added despite the failure.
        assert_eq!(
            *fake.table.lock().unwrap(),
            table(&[("10.244.1.0/24", "172.30.0.12")])
        );
        fake.unreachable.lock().unwrap().clear();
        let ops = reconcile(&fake, &want).await.unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(*fake.table.lock().unwrap(), want);
        assert!(
            reconcile(&fake, &want).await.unwrap().is_empty(),
            "idempotent"
        );
    }

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut v = json!({"metadata": {"name": name}, "spec": {}, "status": {"addresses": []}});
        if let Some(c) = cidr {
            v["spec"]["podCIDR"] = json!(c);
            v["spec"]["podCIDRs"] = json!([c]);
        }
        if let Some(ip) = ip {
            v["status"]["addresses"] = json!([
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip}
            ]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn table(rows: &[(&str, &str)]) -> RouteTable {
        rows.iter()
            .map(|(d, v)| (d.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn one_route_per_other_complete_node() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("172.30.0.11")),
            node("b", Some("10.244.1.0/24"), Some("172.30.0.12")),
            node("c", None, Some("172.30.0.13")),
            node("d", Some("10.244.3.0/24"), None),
            node("e", Some("10.244.4.0/24"), Some("172.30.0.15")),
        ];
        assert_eq!(
            desired(&nodes, "a"),
            table(&[
                ("10.244.1.0/24", "172.30.0.12"),
                ("10.244.4.0/24", "172.30.0.15")
            ])
        );
        // A node we do not know yet (not registered) still routes to everyone else.
        assert_eq!(desired(&nodes, "zz").len(), 3);
    }

    #[test]
    fn prefers_pod_cidrs_ipv4_and_ignores_ipv6() {
        let mut n = node("b", Some("fd00::/64"), Some("fd00::1"));
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00::/64".into(), "10.244.9.5/24".into()]);
        assert_eq!(pod_cidr(&n), Some("10.244.9.0/24".parse().unwrap()));
        assert_eq!(internal_ip(&n), None);
        assert!(desired([&n], "a").is_empty());
    }

    #[test]
    fn skips_own_cidr_own_ip_and_overlaps_deterministically() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("172.30.0.11")),
            node("b", Some("10.244.0.0/24"), Some("172.30.0.12")),
            node("c", Some("10.244.5.0/24"), Some("172.30.0.11")),
            node("d", Some("10.244.6.0/23"), Some("172.30.0.14")),
            node("e", Some("10.244.7.0/24"), Some("172.30.0.15")),
        ];
        assert_eq!(
            desired(&nodes, "a"),
            table(&[("10.244.6.0/23", "172.30.0.14")])
        );
        let mut rev = nodes.clone();
        rev.reverse();
        assert_eq!(desired(&rev, "a"), desired(&nodes, "a"));
    }

    #[test]
    fn plan_deletes_stale_and_replaces_changed() {
        let cur = table(&[
            ("10.244.1.0/24", "172.30.0.12"),
            ("10.244.2.0/24", "172.30.0.13"),
            ("10.244.3.0/24", "172.30.0.14"),
        ]);
        let want = table(&[
            ("10.244.1.0/24", "172.30.0.12"),
            ("10.244.3.0/24", "172.30.0.99"),
            ("10.244.4.0/24", "172.30.0.15"),
        ]);
        let ops = plan(&cur, &want);
        assert_eq!(
            ops,
            vec![
                Op::Delete {
                    dst: "10.244.2.0/24".parse().unwrap(),
                    via: "172.30.0.13".parse().unwrap()
                },
                Op::Replace {
                    dst: "10.244.3.0/24".parse().unwrap(),
                    via: "172.30.0.99".parse().unwrap()
                },
                Op::Replace {
                    dst: "10.244.4.0/24".parse().unwrap(),
                    via: "172.30.0.15".parse().unwrap()
                },
            ]
        );
        assert!(plan(&want, &want).is_empty());
        assert_eq!(plan(&cur, &RouteTable::new()).len(), 3);
    }
}
