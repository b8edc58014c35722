//! The CNI result types (`interfaces`, `ips`, `routes`, `dns`) as the reference plugins print them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A CNI result (the full form, as a main plugin returns it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version the result is written in (the config's version).
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces: bridge, host veth, container interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses given to interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings (printed as `{}` when empty, as the reference bridge does).
    #[serde(default)]
    pub dns: Dns,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the container; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`, only in results older than 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix length (`10.1.2.3/24`).
    pub address: String,
    /// Gateway for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result or of the IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop; none means the address's gateway (when installed in the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Priority/metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A plain route with a destination and an optional gateway.
    pub fn new(dst: impl Into<String>, gw: Option<IpAddr>) -> Route {
        Route {
            dst: dst.into(),
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// Rewrites the result for the config's version: `ips[].version` before 1.0.0.
    pub fn for_version(mut self, version: &str) -> CniResult {
        let old = !version.starts_with("1.");
        for ip in &mut self.ips {
            ip.version = if old {
                Some(if ip.address.contains(':') { "6" } else { "4" }.to_string())
            } else {
                None
            };
        }
        self.cni_version = version.to_string();
        self
    }

    /// The index of the interface whose sandbox is set and whose name is `ifname`.
    pub fn container_iface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "veth1234abcd".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:03".into(),
                    sandbox: "/run/netns/x".into(),
                    mtu: None,
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: "10.1.2.2/24".into(),
                gateway: Some("10.1.2.1".parse().unwrap()),
                interface: Some(2),
            }],
            routes: vec![Route::new("0.0.0.0/0", None)],
            dns: Dns::default(),
        }
    }

    #[test]
    fn result_json_shape_matches_reference() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["interfaces"].as_array().unwrap().len(), 3);
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["interfaces"][2]["sandbox"], "/run/netns/x");
        assert_eq!(v["ips"][0]["interface"], 2);
        assert_eq!(v["ips"][0]["gateway"], "10.1.2.1");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0], serde_json::json!({"dst": "0.0.0.0/0"}));
        assert_eq!(v["dns"], serde_json::json!({}));
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn old_versions_carry_ip_version() {
        let r = sample().for_version("0.3.1");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["cniVersion"], "0.3.1");
        // Round trip through prevResult decoding.
        let back: CniResult = serde_json::from_value(v).unwrap();
        assert_eq!(back.container_iface("eth0"), Some(2));
    }
}
