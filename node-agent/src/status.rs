//! The Node object this agent registers, its status (addresses, nodeInfo, Ready) and its
//! Lease, as pure functions of the node's identity and the time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

/// `status.nodeInfo.kubeletVersion` we report.
pub const KUBELET_VERSION: &str = "v1.35.0-sluice";
/// Namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `spec.leaseDurationSeconds` of our Lease.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Reason of our Ready=True condition.
pub const READY_REASON: &str = "KubeletReady";

/// What the agent knows about its node.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub node_ip: IpAddr,
    /// `status.nodeInfo`.
    pub info: NodeSystemInfo,
    /// `status.capacity` (and allocatable: nothing is reserved): cpu, memory, pods.
    pub capacity: BTreeMap<String, Quantity>,
    /// `status.images`, when the agent runs pods (`None`: left alone).
    pub images: Option<Vec<ContainerImage>>,
    /// The kubelet API's port (`status.daemonEndpoints.kubeletEndpoint.Port`), when the agent
    /// serves it (`None`: left alone).
    pub kubelet_port: Option<i32>,
}

/// Pods a node accepts (kubelet's default `--max-pods`).
pub const MAX_PODS: u32 = 110;

/// The machine's capacity: logical CPUs, `MemTotal` from a meminfo text, and [`MAX_PODS`].
pub fn capacity(cpus: usize, meminfo: &str) -> BTreeMap<String, Quantity> {
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{mem_kib}Ki"))),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
    ])
}

/// Go's name for a Rust target architecture (`kubernetes.io/arch`).
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `PRETTY_NAME` of an os-release file.
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Identity {
    /// Reads kernel, OS and machine facts of the running system.
    pub fn probe(name: &str, node_ip: IpAddr) -> Identity {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| pretty_name(&s))
            .unwrap_or_else(|| "Linux".into());
        let info = NodeSystemInfo {
            architecture: go_arch(std::env::consts::ARCH).to_string(),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!("sluice://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trim("/etc/machine-id"),
            operating_system: std::env::consts::OS.into(),
            os_image,
            swap: None,
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Identity {
            name: name.into(),
            node_ip,
            info,
            capacity: capacity(
                cpus,
                &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            ),
            images: None,
            kubelet_port: None,
        }
    }

    /// The Node to create when none exists (status is written separately: a real API
    /// server ignores status on create).
    pub fn new_node(&self) -> Node {
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            (
                "kubernetes.io/os".to_string(),
                self.info.operating_system.clone(),
            ),
            (
                "kubernetes.io/arch".to_string(),
                self.info.architecture.clone(),
            ),
        ]);
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn addresses(&self) -> Vec<NodeAddress> {
        vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: self.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: self.name.clone(),
            },
        ]
    }
}

/// The Ready condition of a node, if any.
pub fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Brings `status` in line with `id`: addresses, nodeInfo, and Ready=True (reason
/// KubeletReady). `heartbeat` also refreshes Ready's lastHeartbeatTime. Other conditions are
/// left alone. Returns whether anything changed (and so must be written).
pub fn apply_status(
    status: &mut NodeStatus,
    id: &Identity,
    now: Timestamp,
    heartbeat: bool,
) -> bool {
    let mut changed = false;
    let addrs = id.addresses();
    if status.addresses.as_ref() != Some(&addrs) {
        status.addresses = Some(addrs);
        changed = true;
    }
    if status.node_info.as_ref() != Some(&id.info) {
        status.node_info = Some(id.info.clone());
        changed = true;
    }
    if status.capacity.as_ref() != Some(&id.capacity) {
        status.capacity = Some(id.capacity.clone());
        changed = true;
    }
    if status.allocatable.as_ref() != Some(&id.capacity) {
        status.allocatable = Some(id.capacity.clone());
        changed = true;
    }
    if id.images.is_some() && status.images != id.images {
        status.images = id.images.clone();
        changed = true;
    }
    if let Some(port) = id.kubelet_port {
        let want = NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port }),
        };
        if status.daemon_endpoints.as_ref() != Some(&want) {
            status.daemon_endpoints = Some(want);
            changed = true;
        }
    }
    let conds = status.conditions.get_or_insert_with(Vec::new);
    // The agent does not evict on pressure; it reports none, as a kubelet with room does.
    for (type_, reason, message) in [
        (
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
    ] {
        match conds.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == "False" => {
                if heartbeat {
                    c.last_heartbeat_time = Some(Time(now));
                }
            }
            _ => {
                conds.retain(|c| c.type_ != type_);
                conds.push(NodeCondition {
                    type_: type_.into(),
                    status: "False".into(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    last_heartbeat_time: Some(Time(now)),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    match conds.iter_mut().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" && c.reason.as_deref() == Some(READY_REASON) => {
            if heartbeat {
                c.last_heartbeat_time = Some(Time(now));
                changed = true;
            }
        }
        Some(c) => {
            if c.status != "True" {
                c.last_transition_time = Some(Time(now));
            }
            c.status = "True".into();
            c.reason = Some(READY_REASON.into());
            c.message = Some("sluice-agent is posting ready status".into());
            c.last_heartbeat_time = Some(Time(now));
            changed = true;
        }
        None => {
            conds.push(NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some(READY_REASON.into()),
                message: Some("sluice-agent is posting ready status".into()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            });
            changed = true;
        }
    }
    changed
}

/// The node's Lease renewed at `now`: `existing` (keeping its metadata, so an update carries
/// its resourceVersion) or a new one.
pub fn renew_lease(existing: Option<Lease>, node: &str, now: Timestamp) -> Lease {
    let mut lease = existing.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            ..Default::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(node.into());
    spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity::probe("n1", "172.30.0.11".parse().unwrap())
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn first_status_has_addresses_info_and_ready() {
        let mut st = NodeStatus::default();
        assert!(apply_status(&mut st, &id(), ts(0), false));
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(
            v["addresses"][0],
            serde_json::json!({"type": "InternalIP", "address": "172.30.0.11"})
        );
        assert_eq!(
            v["addresses"][1],
            serde_json::json!({"type": "Hostname", "address": "n1"})
        );
        assert_eq!(v["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(v["nodeInfo"]["operatingSystem"], "linux");
        assert!(!v["nodeInfo"]["kernelVersion"].as_str().unwrap().is_empty());
        let types: Vec<&str> = v["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"],
            "kubelet's order"
        );
        let ready = &v["conditions"][3];
        assert_eq!(v["conditions"][0]["status"], "False");
        assert_eq!(v["capacity"]["pods"], "110");
        assert_eq!(v["capacity"], v["allocatable"]);
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], READY_REASON);
        assert!(ready["lastHeartbeatTime"].is_string());
    }

    #[test]
    fn heartbeats_refresh_time_and_unknown_is_set_back_to_true() {
        let mut st = NodeStatus::default();
        apply_status(&mut st, &id(), ts(0), false);
        assert!(
            !apply_status(&mut st, &id(), ts(10), false),
            "nothing to write"
        );
        assert!(apply_status(&mut st, &id(), ts(20), true));
        let node = Node {
            status: Some(st.clone()),
            ..Default::default()
        };
        let c = ready_condition(&node).unwrap();
        assert_eq!(c.last_heartbeat_time, Some(Time(ts(20))));
        assert_eq!(c.last_transition_time, Some(Time(ts(0))));

        // The lifecycle controller marks it Unknown; the next pass restores it.
        let c = st
            .conditions
            .as_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        c.status = "Unknown".into();
        c.reason = Some("NodeStatusUnknown".into());
        st.conditions.as_mut().unwrap().push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..Default::default()
        });
        assert!(apply_status(&mut st, &id(), ts(30), false));
        let node = Node {
            status: Some(st.clone()),
            ..Default::default()
        };
        let c = ready_condition(&node).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("True", Some(READY_REASON))
        );
        assert_eq!(c.last_transition_time, Some(Time(ts(30))));
        assert_eq!(
            st.conditions.as_ref().unwrap().len(),
            5,
            "other conditions kept"
        );
    }

    #[test]
    fn kubelet_port_is_reported_once_known() {
        let mut st = NodeStatus::default();
        apply_status(&mut st, &id(), ts(0), false);
        assert_eq!(st.daemon_endpoints, None, "no kubelet API: left alone");
        let with_port = Identity {
            kubelet_port: Some(10250),
            ..id()
        };
        assert!(apply_status(&mut st, &with_port, ts(1), false));
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert!(
            !apply_status(&mut st, &with_port, ts(2), false),
            "nothing to write"
        );
    }

    #[test]
    fn lease_is_created_then_renewed_in_place() {
        let l = renew_lease(None, "n1", ts(0));
        assert_eq!(l.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
        let mut existing = l.clone();
        existing.metadata.resource_version = Some("7".into());
        let r = renew_lease(Some(existing), "n1", ts(5));
        assert_eq!(r.metadata.resource_version.as_deref(), Some("7"));
        let spec = r.spec.unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(ts(5))));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        let v = serde_json::to_value(renew_lease(None, "n1", ts(0))).unwrap();
        assert!(
            v["spec"]["renewTime"].as_str().unwrap().contains('.'),
            "MicroTime: {v}"
        );
    }

    #[test]
    fn capacity_from_the_machine() {
        let c = capacity(2, "MemTotal:        8000000 kB\nMemFree: 1 kB\n");
        assert_eq!(c["cpu"].0, "2");
        assert_eq!(c["memory"].0, "8000000Ki");
        assert_eq!(c["pods"].0, "110");
    }

    #[test]
    fn facts() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(
            pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let n = id().new_node();
        assert_eq!(n.metadata.labels.unwrap()["kubernetes.io/hostname"], "n1");
    }
}
