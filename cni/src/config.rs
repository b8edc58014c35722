//! Network configuration parsing (stdin JSON), version negotiation and IPAM range canonicalisation.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{CniError, Code};
use crate::ipam::Range;
use crate::types::{CniResult, Dns, Route};

/// The CNI versions this plugin accepts in configurations.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Default directory of the IPAM lease store (same as host-local).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Errors in the network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JSON did not decode.
    #[error("failed to decode network configuration: {0}")]
    Decode(#[source] serde_json::Error),
    /// The config lacks a network name.
    #[error("missing network name")]
    MissingName,
    /// The version is not one we support.
    #[error("incompatible CNI versions: config is {0:?}, plugin supports {SUPPORTED_VERSIONS:?}")]
    Version(String),
    /// A field we do not implement has a non-default value.
    #[error("unsupported field {field}: {value}")]
    Unsupported {
        /// The key.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A semantically invalid configuration.
    #[error("invalid network configuration: {0}")]
    Invalid(String),
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> CniError {
        let code = match &e {
            ConfigError::Decode(_) => Code::Decode,
            ConfigError::MissingName | ConfigError::Invalid(_) => Code::InvalidConfig,
            ConfigError::Version(_) => Code::IncompatibleVersion,
            ConfigError::Unsupported { .. } => Code::UnsupportedField,
        };
        match e {
            ConfigError::Version(v) => CniError::new(code, "incompatible CNI versions").details(
                format!("config is {v:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
            ),
            e => CniError::new(code, e.to_string()),
        }
    }
}

/// The plugin's configuration (the bridge plugin's keys plus the runtime-injected ones).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// Declared version.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Network name (also the IPAM store's directory name).
    #[serde(default)]
    pub name: String,
    /// Plugin type (informational).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Bridge name, `cni0` by default.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Give the bridge the gateway address.
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    /// Also install a default route via the gateway (implies `isGateway`).
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    /// Masquerade traffic leaving the subnet.
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    /// MTU of the bridge and both veth ends.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Hairpin mode on the bridge port.
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    /// Promiscuous mode on the bridge.
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    /// VLAN tag (unsupported: rejected with code 2 if non-zero).
    #[serde(default)]
    pub vlan: Option<u32>,
    /// IPAM configuration.
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// DNS settings copied into the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Capability data from the runtime.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// The previous plugin's result (CHECK, DEL, chained ADD).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC: attachments that are still valid.
    #[serde(
        rename = "cni.dev/valid-attachments",
        alias = "cni.dev/attachments",
        default
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

/// Capability data injected by the runtime.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// Port mappings (for a chained `portmap`; accepted here, and validated).
    #[serde(rename = "portMappings", alias = "PortMappings", default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One port mapping; containerd sends capitalised keys, the conventions doc lower camel case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    /// Host port.
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    /// Container port.
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    #[serde(rename = "protocol", alias = "Protocol", default)]
    pub protocol: String,
    /// Host IP to bind, empty for any.
    #[serde(rename = "hostIP", alias = "HostIP", alias = "hostIp", default)]
    pub host_ip: String,
}

/// A (containerID, ifname) pair of GC's valid attachments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// host-local-compatible IPAM configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    /// Must be `host-local`.
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    /// Range sets: one address is allocated from each.
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Old single-range form: subnet.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Old single-range form: first address.
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    /// Old single-range form: last address.
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    /// Old single-range form: gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Routes to install in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Lease store directory (`/var/lib/cni/networks` by default).
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<String>,
}

/// One range of a range set.
#[derive(Debug, Clone, Deserialize)]
pub struct RangeConf {
    /// Subnet CIDR.
    pub subnet: String,
    /// First allocatable address.
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address.
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    /// Gateway (default: the subnet's first address).
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

impl NetConf {
    /// Parses and validates stdin.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, ConfigError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(ConfigError::Decode)?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(ConfigError::Version(conf.cni_version));
        }
        if conf.name.is_empty() {
            return Err(ConfigError::MissingName);
        }
        if conf.name.contains('/') || conf.name.starts_with('.') {
            return Err(ConfigError::Invalid(format!(
                "invalid network name {:?}",
                conf.name
            )));
        }
        if let Some(v) = conf.vlan.filter(|v| *v != 0) {
            return Err(ConfigError::Unsupported {
                field: "vlan",
                value: v.to_string(),
            });
        }
        if conf.hairpin_mode && conf.promisc_mode {
            return Err(ConfigError::Invalid(
                "cannot set hairpin mode and promiscuous mode at the same time.".into(),
            ));
        }
        if let Some(ipam) = &conf.ipam {
            if ipam.ipam_type != "host-local" {
                return Err(ConfigError::Unsupported {
                    field: "ipam.type",
                    value: ipam.ipam_type.clone(),
                });
            }
        }
        if conf.bridge.is_empty() || conf.bridge.len() > 15 {
            return Err(ConfigError::Invalid(format!(
                "invalid bridge name {:?}",
                conf.bridge
            )));
        }
        Ok(conf)
    }

    /// Whether the bridge gets the gateway address.
    pub fn gateway_on_bridge(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }

    /// The IPAM config, required for ADD.
    pub fn ipam(&self) -> Result<&IpamConf, ConfigError> {
        self.ipam
            .as_ref()
            .ok_or_else(|| ConfigError::Invalid("missing ipam".into()))
    }

    /// The previous result, decoded.
    pub fn prev_result(&self) -> Result<Option<CniResult>, ConfigError> {
        match &self.prev_result {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(ConfigError::Decode),
        }
    }

    /// Whether a version is at least `major.minor`.
    pub fn version_at_least(&self, major: u32, minor: u32) -> bool {
        let mut it = self
            .cni_version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }
}

impl IpamConf {
    /// The canonical range sets (old `subnet` form turned into one set).
    pub fn range_sets(&self) -> Result<Vec<Vec<Range>>, ConfigError> {
        let mut sets = Vec::new();
        if let Some(subnet) = &self.subnet {
            sets.push(vec![RangeConf {
                subnet: subnet.clone(),
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            }]);
        }
        sets.extend(self.ranges.iter().cloned());
        if sets.is_empty() {
            return Err(ConfigError::Invalid("ipam: no IP ranges specified".into()));
        }
        let mut out = Vec::new();
        for set in sets {
            if set.is_empty() {
                return Err(ConfigError::Invalid("ipam: empty range set".into()));
            }
            let mut rs = Vec::new();
            for r in set {
                rs.push(canonical_range(&r)?);
            }
            out.push(rs);
        }
        Ok(out)
    }

    /// The lease store directory.
    pub fn data_dir(&self) -> &str {
        self.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)
    }
}

fn canonical_range(r: &RangeConf) -> Result<Range, ConfigError> {
    let subnet: IpNet = r
        .subnet
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("invalid subnet {:?}: {e}", r.subnet)))?;
    let subnet = subnet.trunc();
    let bits = if subnet.addr().is_ipv4() { 32 } else { 128 };
    if bits - subnet.prefix_len() < 2 {
        return Err(ConfigError::Invalid(format!(
            "network {subnet} too small to allocate from"
        )));
    }
    let first = crate::ipam::next_ip(subnet.network());
    let last = crate::ipam::prev_ip(subnet.broadcast());
    let inside = |ip: IpAddr, what: &str| {
        if subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast() {
            Ok(ip)
        } else {
            Err(ConfigError::Invalid(format!(
                "{what} {ip} not in network {subnet}"
            )))
        }
    };
    let start = r
        .range_start
        .map(|ip| inside(ip, "RangeStart"))
        .transpose()?;
    let end = r.range_end.map(|ip| inside(ip, "RangeEnd")).transpose()?;
    let gateway = match r.gateway {
        Some(g) if subnet.contains(&g) => g,
        Some(g) => {
            return Err(ConfigError::Invalid(format!(
                "gateway {g} not in network {subnet}"
            )))
        }
        None => first,
    };
    Ok(Range {
        subnet,
        start: start.unwrap_or(first),
        end: end.unwrap_or(last),
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: &str) -> String {
        format!(
            r#"{{"cniVersion":"{v}","name":"n1","type":"sluice-cni","bridge":"br9","isGateway":true,
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.1.2.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#
        )
    }

    #[test]
    fn accepts_supported_versions() {
        for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let c = NetConf::parse(conf(v).as_bytes()).unwrap();
            assert_eq!(c.cni_version, v);
            assert_eq!(c.bridge, "br9");
            let sets = c.ipam().unwrap().range_sets().unwrap();
            assert_eq!(sets[0][0].gateway.to_string(), "10.1.2.1");
            assert_eq!(sets[0][0].start.to_string(), "10.1.2.1");
            assert_eq!(sets[0][0].end.to_string(), "10.1.2.254");
        }
        let e: CniError = NetConf::parse(conf("9.9.9").as_bytes()).unwrap_err().into();
        assert_eq!(e.code, 1);
        assert!(e.details.contains("9.9.9"));
    }

    #[test]
    fn errors_map_to_codes() {
        let e: CniError = NetConf::parse(b"{not json").unwrap_err().into();
        assert_eq!(e.code, 6);
        let e: CniError = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"x"}"#)
            .unwrap_err()
            .into();
        assert_eq!((e.code, e.msg.as_str()), (7, "missing network name"));
        let e: CniError =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#)
                .unwrap_err()
                .into();
        assert_eq!(e.code, 2);
        let e: CniError = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","hairpinMode":true,"promiscMode":true}"#,
        )
        .unwrap_err()
        .into();
        assert_eq!(e.code, 7);
        let e: CniError = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","vlan":5}"#)
            .unwrap_err()
            .into();
        assert_eq!(e.code, 2);
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/31"}}"#,
        )
        .unwrap();
        let e: CniError = c.ipam().unwrap().range_sets().unwrap_err().into();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn old_subnet_form() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","type":"bridge",
            "ipam":{"type":"host-local","subnet":"10.9.0.0/16","rangeStart":"10.9.1.10","rangeEnd":"10.9.1.20","gateway":"10.9.0.254"}}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "cni0");
        let sets = c.ipam().unwrap().range_sets().unwrap();
        assert_eq!(sets.len(), 1);
        let r = &sets[0][0];
        assert_eq!(r.subnet.to_string(), "10.9.0.0/16");
        assert_eq!(r.start.to_string(), "10.9.1.10");
        assert_eq!(r.end.to_string(), "10.9.1.20");
        assert_eq!(r.gateway.to_string(), "10.9.0.254");
        assert_eq!(c.ipam().unwrap().data_dir(), DEFAULT_DATA_DIR);
    }

    #[test]
    fn port_mappings_both_spellings() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","capabilities":{"portMappings":true},
            "runtimeConfig":{"portMappings":[
              {"HostPort":18081,"ContainerPort":8080,"Protocol":"tcp","HostIP":""},
              {"hostPort":18082,"containerPort":8081,"protocol":"udp"}]}}"#,
        )
        .unwrap();
        let pm = &c.runtime_config.port_mappings;
        assert_eq!(pm.len(), 2);
        assert_eq!((pm[0].host_port, pm[0].container_port), (18081, 8080));
        assert_eq!(pm[0].protocol, "tcp");
        assert_eq!((pm[1].host_port, pm[1].protocol.as_str()), (18082, "udp"));
    }

    #[test]
    fn gc_attachments_both_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let text = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","{key}":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
            );
            let c = NetConf::parse(text.as_bytes()).unwrap();
            assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
        }
    }
}
