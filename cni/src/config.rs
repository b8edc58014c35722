//! Network configuration parsing (stdin JSON), version negotiation and IPAM range canonicalisation.

use std::net::IpAddr;

use serde::Deserialize;

use crate::error::{CniError, Code};
use crate::ipam::{self, Range, RangeError};
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
    /// An IPAM range, range set or the set list is refused; `at` is where in the config
    /// (`ipam.ranges[0][1]`, `ipam.ranges[2]`, `ipam` for the single-range form).
    #[error("{at}: {source}")]
    Range {
        /// The JSON path of the offending range or set.
        at: String,
        /// What is wrong.
        #[source]
        source: RangeError,
    },
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> CniError {
        let code = match &e {
            ConfigError::Decode(_) => Code::Decode,
            ConfigError::MissingName | ConfigError::Invalid(_) | ConfigError::Range { .. } => {
                Code::InvalidConfig
            }
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
    /// Parses and validates stdin, IPAM ranges included: every command but DEL (see
    /// [`NetConf::parse_for_del`]) refuses a configuration whose ranges are invalid.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, ConfigError> {
        let conf = NetConf::parse_base(bytes)?;
        if let Some(ipam) = &conf.ipam {
            ipam.range_sets()?;
        }
        Ok(conf)
    }

    /// Parses stdin for DEL: everything [`NetConf::parse`] checks is fatal except the IPAM
    /// ranges, whose error is returned alongside. Releasing an attachment's leases needs only
    /// the network name and data directory, and a DEL that can never succeed would leave the
    /// runtime retrying it forever (and leak the leases a config allocated before it became
    /// invalid, or before this plugin refused it).
    pub fn parse_for_del(bytes: &[u8]) -> Result<(NetConf, Option<ConfigError>), ConfigError> {
        let conf = NetConf::parse_base(bytes)?;
        let bad = conf.ipam.as_ref().and_then(|i| i.range_sets().err());
        Ok((conf, bad))
    }

    fn parse_base(bytes: &[u8]) -> Result<NetConf, ConfigError> {
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
    /// The canonical range sets, validated as host-local's `LoadIPAMConfig` does: each range
    /// canonicalised ([`Range::new`]), each set checked ([`ipam::check_set`]), and no two sets
    /// sharing an address. The single-range form (`subnet`, `rangeStart`, …) comes first, as
    /// host-local prepends it to `ranges`.
    pub fn range_sets(&self) -> Result<Vec<Vec<Range>>, ConfigError> {
        let err = |at: &str, source: RangeError| ConfigError::Range {
            at: at.to_string(),
            source,
        };
        // (where the set is, [(where the range is, the range)])
        let mut located: Vec<(String, Vec<(String, &RangeConf)>)> = Vec::new();
        let single;
        if let Some(subnet) = &self.subnet {
            single = RangeConf {
                subnet: subnet.clone(),
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            };
            located.push(("ipam".into(), vec![("ipam".into(), &single)]));
        } else {
            // host-local silently ignores these without `subnet`; a range limit the operator
            // wrote and we ignore would hand out addresses they meant to keep free.
            let stray = [
                ("rangeStart", self.range_start),
                ("rangeEnd", self.range_end),
                ("gateway", self.gateway),
            ];
            if let Some((field, Some(ip))) = stray.into_iter().find(|(_, ip)| ip.is_some()) {
                return Err(err("ipam", RangeError::WithoutSubnet { field, ip }));
            }
        }
        for (k, set) in self.ranges.iter().enumerate() {
            let ranges = set
                .iter()
                .enumerate()
                .map(|(j, r)| (format!("ipam.ranges[{k}][{j}]"), r))
                .collect();
            located.push((format!("ipam.ranges[{k}]"), ranges));
        }
        if located.is_empty() {
            return Err(err("ipam", RangeError::NoRanges));
        }
        let mut out: Vec<Vec<Range>> = Vec::with_capacity(located.len());
        for (set_at, set) in &located {
            let mut rs = Vec::with_capacity(set.len());
            for (at, r) in set {
                let range = Range::parse(&r.subnet, r.range_start, r.range_end, r.gateway)
                    .map_err(|e| err(at, e))?;
                rs.push(range);
            }
            ipam::check_set(&rs).map_err(|e| err(set_at, e))?;
            out.push(rs);
        }
        // One address is allocated from each set: two sets sharing addresses could give an
        // attachment the same address twice, or one set's round robin eat the other's pool.
        for i in 0..out.len() {
            for j in i + 1..out.len() {
                if let Some((a, b)) = ipam::sets_overlap(&out[i], &out[j]) {
                    let e = RangeError::SetsOverlap {
                        set_a: located[i].0.clone(),
                        set_b: located[j].0.clone(),
                        a: a.to_string(),
                        b: b.to_string(),
                    };
                    return Err(err("ipam", e));
                }
            }
        }
        Ok(out)
    }

    /// The lease store directory.
    pub fn data_dir(&self) -> &str {
        self.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)
    }
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
            assert_eq!(sets[0][0].gateway().to_string(), "10.1.2.1");
            assert_eq!(sets[0][0].start().to_string(), "10.1.2.1");
            assert_eq!(sets[0][0].end().to_string(), "10.1.2.254");
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
        let e: CniError = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/31"}}"#,
        )
        .unwrap_err()
        .into();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (7, "ipam: subnet 10.0.0.0/31 too small to allocate from")
        );
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
        assert_eq!(r.subnet().to_string(), "10.9.0.0/16");
        assert_eq!(r.start().to_string(), "10.9.1.10");
        assert_eq!(r.end().to_string(), "10.9.1.20");
        assert_eq!(r.gateway().to_string(), "10.9.0.254");
        assert_eq!(c.ipam().unwrap().data_dir(), DEFAULT_DATA_DIR);
    }

    fn ipam_err(ipam: &str) -> CniError {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","ipam":{ipam}}}"#);
        NetConf::parse(text.as_bytes()).unwrap_err().into()
    }

    /// host-local's config_test.go "new-style config": two sets, defaults filled in.
    #[test]
    fn host_local_new_style_config() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"mynet","type":"ipvlan","master":"foo0",
            "ipam":{"type":"host-local","ranges":[
              [{"subnet":"10.1.2.0/24","rangeStart":"10.1.2.9","rangeEnd":"10.1.2.20","gateway":"10.1.2.30"},
               {"subnet":"10.1.4.0/24"}],
              [{"subnet":"11.1.2.0/24","rangeStart":"11.1.2.9","rangeEnd":"11.1.2.20","gateway":"11.1.2.30"}]]}}"#,
        )
        .unwrap();
        let sets = c.ipam().unwrap().range_sets().unwrap();
        let shape: Vec<Vec<String>> = sets
            .iter()
            .map(|s| {
                s.iter()
                    .map(|r| format!("{} {r} gw {}", r.subnet(), r.gateway()))
                    .collect()
            })
            .collect();
        assert_eq!(
            shape,
            [
                vec![
                    "10.1.2.0/24 10.1.2.9-10.1.2.20 gw 10.1.2.30",
                    "10.1.4.0/24 10.1.4.1-10.1.4.254 gw 10.1.4.1"
                ],
                vec!["11.1.2.0/24 11.1.2.9-11.1.2.20 gw 11.1.2.30"]
            ]
        );
    }

    /// host-local's config_test.go refusals (overlaps, families) and ours, all code 7 with the
    /// JSON path, the field and the values in the message.
    #[test]
    fn invalid_ranges_are_code_7_with_path_field_and_values() {
        #[rustfmt::skip]
        let cases = [
            // host-local: "range set 0 overlaps with 1".
            (r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"},{"subnet":"10.2.2.0/24"}],
                [{"subnet":"10.1.4.0/24"},{"subnet":"10.1.6.0/24"},{"subnet":"10.1.8.0/24"},{"subnet":"10.1.2.0/24"}]]}"#,
             "ipam: range sets ipam.ranges[0] and ipam.ranges[1] overlap: 10.1.2.1-10.1.2.254 and 10.1.2.1-10.1.2.254"),
            // host-local: "invalid range set 0: subnets … overlap".
            (r#"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/22"},{"subnet":"10.1.2.0/24"}]]}"#,
             "ipam.ranges[0]: ranges 10.1.0.1-10.1.3.254 and 10.1.2.1-10.1.2.254 overlap"),
            // host-local: "invalid range set 0: mixed address families".
            (r#"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/22"},{"subnet":"2001:db8:5::/64"}]]}"#,
             "ipam.ranges[0]: mixed address families in one range set: 10.1.0.1-10.1.3.254 and 2001:db8:5::1-2001:db8:5:0:ffff:ffff:ffff:ffff"),
            // The single-range form is set 0, as host-local prepends it.
            (r#"{"type":"host-local","subnet":"10.9.0.0/16","ranges":[[{"subnet":"10.9.3.0/24"}]]}"#,
             "ipam: range sets ipam and ipam.ranges[0] overlap: 10.9.0.1-10.9.255.254 and 10.9.3.1-10.9.3.254"),
            // The review's regression, in both forms.
            (r#"{"type":"host-local","subnet":"10.80.0.0/24","rangeStart":"10.80.0.200","rangeEnd":"10.80.0.100"}"#,
             "ipam: rangeStart 10.80.0.200 is after rangeEnd 10.80.0.100"),
            (r#"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.80.0.0/24","rangeStart":"10.80.0.200","rangeEnd":"10.80.0.100"}]]}"#,
             "ipam.ranges[1][0]: rangeStart 10.80.0.200 is after rangeEnd 10.80.0.100"),
            (r#"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.80.0.5/24"}]]}"#,
             "ipam.ranges[0][1]: subnet 10.80.0.5/24 has host bits set: for a prefix length of 24 the network address is 10.80.0.0"),
            (r#"{"type":"host-local","ranges":[[{"subnet":"10.80.0.0/24","gateway":"10.80.1.1"}]]}"#,
             "ipam.ranges[0][0]: gateway 10.80.1.1 not in network 10.80.0.0/24"),
            (r#"{"type":"host-local","ranges":[[{"subnet":"nonsense"}]]}"#,
             "ipam.ranges[0][0]: invalid subnet \"nonsense\": invalid IP address syntax"),
            (r#"{"type":"host-local","rangeStart":"10.0.0.5","ranges":[[{"subnet":"10.0.0.0/24"}]]}"#,
             "ipam: rangeStart 10.0.0.5 given without subnet"),
            (r#"{"type":"host-local"}"#, "ipam: no IP ranges specified"),
            (r#"{"type":"host-local","ranges":[]}"#, "ipam: no IP ranges specified"),
            (r#"{"type":"host-local","ranges":[[]]}"#, "ipam.ranges[0]: empty range set"),
        ];
        for (ipam, msg) in cases {
            let e = ipam_err(ipam);
            assert_eq!((e.code, e.msg.as_str()), (7, msg), "{ipam}");
        }
        // Dual stack: one IPv4 and one IPv6 set is fine, so is one subnet split in two ranges.
        for ok in [
            r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"2001:db8:1::/48"}]]}"#,
            r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.127"},{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.128"}]]}"#,
        ] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","ipam":{ok}}}"#);
            NetConf::parse(text.as_bytes()).unwrap();
        }
        // host-local's 0.2.0 one-address-per-family rule: we do not speak 0.2.0 at all.
        let e: CniError = NetConf::parse(
            br#"{"cniVersion":"0.2.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.2.0/24"}}"#,
        )
        .unwrap_err()
        .into();
        assert_eq!(e.code, 1);
    }

    #[test]
    fn del_parse_reports_but_tolerates_bad_ranges() {
        let text = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.80.0.0/24","rangeStart":"10.80.0.200","rangeEnd":"10.80.0.100"}}"#;
        let (c, bad) = NetConf::parse_for_del(text).unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(
            bad.unwrap().to_string(),
            "ipam: rangeStart 10.80.0.200 is after rangeEnd 10.80.0.100"
        );
        // Everything else is still fatal for DEL.
        assert!(NetConf::parse_for_del(br#"{"cniVersion":"1.0.0"}"#).is_err());
        assert!(NetConf::parse_for_del(b"{").is_err());
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
