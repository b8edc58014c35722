//! Column definitions per kind, in the order, types and priorities of the
//! kube-apiserver printers. Priority 1 columns are shown by kubectl only
//! with `-o wide`.

use serde_json::{json, Value};

/// One `meta.k8s.io/v1` `TableColumnDefinition`.
pub(crate) struct Column {
    pub(crate) name: &'static str,
    pub(crate) ty: &'static str,
    pub(crate) format: &'static str,
    pub(crate) description: &'static str,
    pub(crate) priority: i32,
}

impl Column {
    /// All five fields are always serialized, as Go's struct has no `omitempty`.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

const fn string(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        description,
        priority: 1,
    }
}

const fn integer(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "integer",
        format: "",
        description,
        priority: 0,
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name of the object, unique within its namespace or the cluster.",
    priority: 0,
};

const AGE: Column = string(
    "Age",
    "Time elapsed since the object was created (metadata.creationTimestamp).",
);

const POD: &[Column] = &[
    NAME,
    string(
        "Ready",
        "Ready containers out of all containers in the pod.",
    ),
    string("Status", "Aggregate status of the pod and its containers."),
    string(
        "Restarts",
        "Total container restarts, and how long ago the last one happened.",
    ),
    AGE,
    wide("IP", "First IP address allocated to the pod."),
    wide("Node", "Node the pod is bound to."),
    wide(
        "Nominated Node",
        "Node nominated by the scheduler after preemption.",
    ),
    wide(
        "Readiness Gates",
        "Readiness gates whose condition is True, out of all gates.",
    ),
];

const SERVICE: &[Column] = &[
    NAME,
    string("Type", "How the service is exposed."),
    string("Cluster-IP", "Cluster-internal IP address of the service."),
    string(
        "External-IP",
        "External addresses: load-balancer ingress, external IPs or external name.",
    ),
    string("Port(s)", "Ports exposed by the service, with node ports."),
    AGE,
    wide("Selector", "Labels selecting the pods backing the service."),
];

const NODE: &[Column] = &[
    NAME,
    string(
        "Status",
        "Readiness of the node and whether it is schedulable.",
    ),
    string("Roles", "Roles taken from node-role.kubernetes.io labels."),
    AGE,
    string("Version", "Kubelet version reported by the node."),
    wide("Internal-IP", "First internal address of the node."),
    wide("External-IP", "First external address of the node."),
    wide("OS-Image", "Operating system image reported by the node."),
    wide("Kernel-Version", "Kernel version reported by the node."),
    wide(
        "Container-Runtime",
        "Container runtime and version reported by the node.",
    ),
];

const NAMESPACE: &[Column] = &[
    NAME,
    string("Status", "Lifecycle phase of the namespace."),
    AGE,
];

const ENDPOINTS: &[Column] = &[
    NAME,
    string("Endpoints", "Address:port pairs of the endpoints."),
    AGE,
];

const ENDPOINT_SLICE: &[Column] = &[
    NAME,
    string("AddressType", "Type of addresses carried by the slice."),
    string("Ports", "Ports exposed by the endpoints of the slice."),
    string("Endpoints", "Addresses of the endpoints in the slice."),
    AGE,
];

const DEPLOYMENT: &[Column] = &[
    NAME,
    string("Ready", "Ready pods out of desired replicas."),
    string("Up-to-date", "Pods running the latest pod template."),
    string("Available", "Pods available to serve."),
    AGE,
    wide("Containers", "Names of the containers in the pod template."),
    wide("Images", "Images of the containers in the pod template."),
    wide("Selector", "Label selector for the pods of the deployment."),
];

const LEASE: &[Column] = &[
    NAME,
    string("Holder", "Identity of the current holder of the lease."),
    AGE,
];

const REPLICA_SET: &[Column] = &[
    NAME,
    integer("Desired", "Number of desired pods (spec.replicas)."),
    integer("Current", "Number of pods observed (status.replicas)."),
    integer("Ready", "Number of ready pods (status.readyReplicas)."),
    AGE,
    wide("Containers", "Names of each container in the template."),
    wide(
        "Images",
        "Images referenced by each container in the template.",
    ),
    wide(
        "Selector",
        "Label selector for the pods of the replica set.",
    ),
];

const CONFIG_MAP: &[Column] = &[
    NAME,
    string("Data", "Number of data and binaryData entries."),
    AGE,
];

const SECRET: &[Column] = &[
    NAME,
    string("Type", "Type of the secret, used to validate its data."),
    string("Data", "Number of data entries."),
    AGE,
];

const SERVICE_ACCOUNT: &[Column] = &[
    NAME,
    string(
        "Secrets",
        "Number of secrets listed in the service account.",
    ),
    AGE,
];

/// Shared by core/v1 and events.k8s.io/v1 Events, as upstream serves both
/// from one internal type with one printer. The name comes last here.
const EVENT: &[Column] = &[
    string(
        "Last Seen",
        "Time the event was last seen (lastTimestamp, series or eventTime).",
    ),
    string("Type", "Type of the event (Normal, Warning)."),
    string(
        "Reason",
        "Short machine-understandable reason for the event.",
    ),
    string("Object", "The object the event is about, as kind/name."),
    wide(
        "Subobject",
        "Field path within the object (e.g. a container).",
    ),
    wide("Source", "Component and host that reported the event."),
    string("Message", "Human-readable description of the event."),
    wide(
        "First Seen",
        "Time the event was first seen (firstTimestamp or eventTime).",
    ),
    wide("Count", "Number of times the event occurred."),
    Column {
        name: "Name",
        ty: "string",
        format: "name",
        description: "Name of the object, unique within its namespace or the cluster.",
        priority: 1,
    },
];

const DEFAULT: &[Column] = &[
    NAME,
    Column {
        name: "Created At",
        ty: "date",
        format: "",
        description: "Time the object was created (metadata.creationTimestamp).",
        priority: 0,
    },
];

/// The columns for `kind`; unknown kinds get the default Name + Created At.
pub(crate) fn for_kind(kind: &str) -> &'static [Column] {
    match kind {
        "Pod" => POD,
        "Service" => SERVICE,
        "Node" => NODE,
        "Namespace" => NAMESPACE,
        "Endpoints" => ENDPOINTS,
        "EndpointSlice" => ENDPOINT_SLICE,
        "Deployment" => DEPLOYMENT,
        "Lease" => LEASE,
        "ReplicaSet" => REPLICA_SET,
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "Event" => EVENT,
        _ => DEFAULT,
    }
}
