//! UDP conntrack cleanup, shared by the NAT-based modes (iptables, nftables, IPVS).
//!
//! TCP needs nothing: a connection to a removed endpoint fails and the client reconnects. A UDP
//! "connection" is only a conntrack entry, and as long as the client keeps sending from the same
//! source port the kernel keeps translating to the old endpoint — forever, since each datagram
//! refreshes the entry. So after a sync has programmed new rules, entries pointing at endpoints
//! that stopped serving are deleted, as are entries for removed UDP cluster IPs, and entries for
//! UDP service ports that just went from no endpoints to some (they may hold a pre-rule,
//! un-translated flow).
//!
//! [`plan`] is pure (what to delete, from the maps and [`Changes`]); [`Conntrack::clear`] runs
//! `conntrack -D` (conntrack-tools) for each entry of the plan. A failure is logged, never
//! turned into a failed sync: the rules are already right, and retrying the whole sync would not
//! make `conntrack` succeed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use tracing::{debug, warn};

use crate::model::{Protocol, ServicePort, ServicePortMap};
use crate::proxier::Changes;

/// One `conntrack -D` filter (always UDP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delete {
    /// Every flow whose original destination is `ip` (a removed service IP).
    ToIp(IpAddr),
    /// Flows to `ip:port` (a service port that just got endpoints).
    ToIpPort(IpAddr, u16),
    /// Flows to any local address on `port` (a NodePort that just got endpoints).
    ToNodePort(u16),
    /// Flows to `ip` translated to `endpoint` (a removed endpoint of a service IP).
    ToIpNatted(IpAddr, IpAddr),
    /// Flows to NodePort `port` translated to `endpoint`.
    ToNodePortNatted(u16, IpAddr),
}

impl Delete {
    /// The `conntrack` arguments for this deletion.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        match self {
            Delete::ToIp(ip) => push("--orig-dst", ip.to_string()),
            Delete::ToIpPort(ip, port) => {
                push("--orig-dst", ip.to_string());
                push("--dport", port.to_string());
            }
            Delete::ToNodePort(port) => push("--dport", port.to_string()),
            Delete::ToIpNatted(ip, ep) => {
                push("--orig-dst", ip.to_string());
                push("--dst-nat", ep.to_string());
            }
            Delete::ToNodePortNatted(port, ep) => {
                push("--dport", port.to_string());
                push("--dst-nat", ep.to_string());
            }
        }
        let v6 = match self {
            Delete::ToIp(ip) | Delete::ToIpPort(ip, _) | Delete::ToIpNatted(ip, _) => ip.is_ipv6(),
            Delete::ToNodePortNatted(_, ep) => ep.is_ipv6(),
            Delete::ToNodePort(_) => false,
        };
        if v6 {
            a.push("-f".into());
            a.push("ipv6".into());
        }
        a
    }
}

/// What to delete after a sync that applied `changes` (sorted, without duplicates).
pub fn plan(services: &ServicePortMap, changes: &Changes) -> Vec<Delete> {
    let mut out = Vec::new();
    for ip in &changes.deleted_udp_cluster_ips {
        out.push(Delete::ToIp(*ip));
    }
    for (spn, ep) in &changes.deleted_udp_endpoints {
        // A removed service's IPs are in `deleted_udp_cluster_ips` already.
        let Some(sp) = services.get(spn) else {
            continue;
        };
        if sp.protocol != Protocol::Udp {
            continue;
        }
        for ip in service_addresses(sp) {
            out.push(Delete::ToIpNatted(*ip, ep.ip()));
        }
        if let Some(np) = sp.node_port {
            out.push(Delete::ToNodePortNatted(np, ep.ip()));
        }
    }
    for spn in &changes.newly_active_udp_services {
        let Some(sp) = services.get(spn) else {
            continue;
        };
        if sp.protocol != Protocol::Udp {
            continue;
        }
        for ip in service_addresses(sp) {
            out.push(Delete::ToIpPort(*ip, sp.port));
        }
        if let Some(np) = sp.node_port {
            out.push(Delete::ToNodePort(np));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every address a service port is reached on, besides its NodePort.
fn service_addresses(sp: &ServicePort) -> impl Iterator<Item = &IpAddr> {
    sp.cluster_ips
        .iter()
        .chain(&sp.external_ips)
        .chain(&sp.load_balancer_ips)
}

/// Runs the deletions of a [`plan`] with `conntrack` (conntrack-tools).
#[derive(Debug, Clone)]
pub struct Conntrack {
    binary: PathBuf,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            binary: "conntrack".into(),
        }
    }
}

impl Conntrack {
    /// Uses `binary` instead of `conntrack` from `PATH`.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
        }
    }

    /// Deletes the flows `services`/`changes` call for; returns how many deletions ran
    /// successfully (a deletion matching nothing counts as successful).
    pub fn clear(&self, services: &ServicePortMap, changes: &Changes) -> usize {
        let deletes = plan(services, changes);
        let mut done = 0;
        for d in &deletes {
            let out = Command::new(&self.binary).args(d.args()).output();
            match out {
                // conntrack exits 1 when nothing matched ("0 flow entries have been deleted").
                Ok(o)
                    if o.status.success()
                        || String::from_utf8_lossy(&o.stderr).contains(" 0 flow entries") =>
                {
                    debug!(filter = ?d, "conntrack entries deleted");
                    done += 1;
                }
                Ok(o) => warn!(
                    filter = ?d,
                    status = %o.status,
                    stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                    "conntrack -D failed; stale UDP flows may persist until they time out"
                ),
                Err(e) => warn!(
                    filter = ?d,
                    binary = %self.binary.display(),
                    error = %e,
                    "cannot run conntrack; stale UDP flows may persist until they time out"
                ),
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::model::{ServicePort, ServicePortName};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn services() -> (ServicePortMap, ServicePortName, ServicePortName) {
        let dns = ServicePortName::new("kube-system", "dns", "dns", Protocol::Udp);
        let web = ServicePortName::new("default", "web", "", Protocol::Tcp);
        let mut m = ServicePortMap::new();
        let mut sp = ServicePort::cluster_ip(ip("10.96.0.10"), 53, Protocol::Udp);
        sp.node_port = Some(30053);
        sp.external_ips = vec![ip("192.0.2.7")];
        m.insert(dns.clone(), Arc::new(sp));
        m.insert(
            web.clone(),
            Arc::new(ServicePort::cluster_ip(ip("10.96.0.20"), 80, Protocol::Tcp)),
        );
        (m, dns, web)
    }

    #[test]
    fn removed_endpoint_clears_its_translations_on_every_service_address() {
        let (m, dns, _) = services();
        let ep: SocketAddr = "10.244.1.5:5353".parse().unwrap();
        let mut c = Changes::default();
        c.deleted_udp_endpoints.insert((dns, ep));
        assert_eq!(
            plan(&m, &c),
            vec![
                Delete::ToIpNatted(ip("10.96.0.10"), ip("10.244.1.5")),
                Delete::ToIpNatted(ip("192.0.2.7"), ip("10.244.1.5")),
                Delete::ToNodePortNatted(30053, ip("10.244.1.5")),
            ]
        );
        assert_eq!(
            Delete::ToIpNatted(ip("10.96.0.10"), ip("10.244.1.5")).args(),
            [
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                "10.96.0.10",
                "--dst-nat",
                "10.244.1.5"
            ]
        );
    }

    #[test]
    fn newly_active_and_deleted_ips() {
        let (m, dns, web) = services();
        let mut c = Changes::default();
        c.newly_active_udp_services.insert(dns);
        // A TCP service never needs conntrack work, even if listed.
        c.newly_active_udp_services.insert(web);
        c.deleted_udp_cluster_ips.insert(ip("10.96.0.99"));
        let p = plan(&m, &c);
        assert_eq!(
            p,
            vec![
                Delete::ToIp(ip("10.96.0.99")),
                Delete::ToIpPort(ip("10.96.0.10"), 53),
                Delete::ToIpPort(ip("192.0.2.7"), 53),
                Delete::ToNodePort(30053),
            ]
        );
        assert_eq!(
            Delete::ToNodePort(30053).args(),
            ["-D", "-p", "udp", "--dport", "30053"]
        );
        assert_eq!(
            Delete::ToIp(ip("fd00::a")).args(),
            ["-D", "-p", "udp", "--orig-dst", "fd00::a", "-f", "ipv6"]
        );
    }

    #[test]
    fn endpoint_of_a_removed_service_is_covered_by_its_ip() {
        let (m, _, _) = services();
        let gone = ServicePortName::new("default", "gone", "", Protocol::Udp);
        let mut c = Changes::default();
        c.deleted_udp_endpoints
            .insert((gone, "10.244.1.9:53".parse().unwrap()));
        assert!(plan(&m, &c).is_empty());
    }

    #[test]
    fn missing_binary_is_logged_not_fatal() {
        let (m, dns, _) = services();
        let mut c = Changes::default();
        c.newly_active_udp_services.insert(dns);
        let ct = Conntrack::with_binary("/nonexistent/conntrack");
        assert_eq!(ct.clear(&m, &c), 0);
        // `true` accepts any arguments: every deletion counts as done.
        assert_eq!(Conntrack::with_binary("true").clear(&m, &c), 3);
    }
}
