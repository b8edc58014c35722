//! Patch metadata of the kinds Sluice serves.
//!
//! The tables transcribe the `patchStrategy` / `patchMergeKey` struct tags of
//! the Kubernetes Go types (the same information k8s-openapi's `DeepMerge`
//! impls and hints carry). Only fields with a non-default strategy, and the
//! objects leading to them, are listed; every other list is atomic and every
//! other map merges key by key. A few atomic lists are spelled out with
//! [`Field::atomic`] where a reader might expect otherwise.

use crate::schema::{Field, Schema};

/// `ObjectMeta`, shared by every kind and by pod templates.
static OBJECT_META: [Field; 3] = [
    Field::primitives("finalizers"),
    Field::merge_by("ownerReferences", "uid", &[]),
    Field::atomic("managedFields"),
];

/// `Container` and `EphemeralContainer` (whose common fields carry the same tags).
static CONTAINER: [Field; 8] = [
    Field::merge_by("ports", "containerPort", &[]),
    Field::merge_by("env", "name", &[]),
    Field::merge_by("volumeMounts", "mountPath", &[]),
    Field::merge_by("volumeDevices", "devicePath", &[]),
    // `+listType=atomic`, no patch strategy.
    Field::atomic("resizePolicy"),
    Field::atomic("command"),
    Field::atomic("args"),
    Field::atomic("envFrom"),
];

/// `PodSpec`.
static POD_SPEC: [Field; 11] = [
    Field::merge_by("volumes", "name", &[]).retaining(),
    Field::merge_by("initContainers", "name", &CONTAINER),
    Field::merge_by("containers", "name", &CONTAINER),
    Field::merge_by("ephemeralContainers", "name", &CONTAINER),
    Field::merge_by("imagePullSecrets", "name", &[]),
    Field::merge_by("hostAliases", "ip", &[]),
    Field::merge_by("topologySpreadConstraints", "topologyKey", &[]),
    Field::merge_by("schedulingGates", "name", &[]),
    Field::merge_by("resourceClaims", "name", &[]).retaining(),
    Field::atomic("tolerations"),
    Field::atomic("readinessGates"),
];

/// `PodStatus`.
static POD_STATUS: [Field; 7] = [
    Field::merge_by("conditions", "type", &[]),
    Field::merge_by("podIPs", "ip", &[]),
    Field::merge_by("hostIPs", "ip", &[]),
    Field::merge_by("resourceClaimStatuses", "name", &[]).retaining(),
    Field::atomic("containerStatuses"),
    Field::atomic("initContainerStatuses"),
    Field::atomic("ephemeralContainerStatuses"),
];

/// `PodTemplateSpec`.
static POD_TEMPLATE_SPEC: [Field; 2] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &POD_SPEC),
];

static POD: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &POD_SPEC),
    Field::object("status", &POD_STATUS),
];

static SERVICE_SPEC: [Field; 1] = [
    // The list-map keys are port+protocol, but the strategic merge key is `port`.
    Field::merge_by("ports", "port", &[]),
];

static SERVICE_STATUS: [Field; 1] = [Field::merge_by("conditions", "type", &[])];

static SERVICE: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &SERVICE_SPEC),
    Field::object("status", &SERVICE_STATUS),
];

static NODE_SPEC: [Field; 2] = [Field::primitives("podCIDRs"), Field::atomic("taints")];

static NODE_STATUS: [Field; 2] = [
    Field::merge_by("conditions", "type", &[]),
    Field::merge_by("addresses", "type", &[]),
];

static NODE: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &NODE_SPEC),
    Field::object("status", &NODE_STATUS),
];

static NAMESPACE_SPEC: [Field; 1] = [Field::atomic("finalizers")];

static NAMESPACE_STATUS: [Field; 1] = [Field::merge_by("conditions", "type", &[])];

static NAMESPACE: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &NAMESPACE_SPEC),
    Field::object("status", &NAMESPACE_STATUS),
];

static ENDPOINTS: [Field; 2] = [
    Field::object("metadata", &OBJECT_META),
    Field::atomic("subsets"),
];

static ENDPOINT_SLICE: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::atomic("endpoints"),
    Field::atomic("ports"),
];

static DEPLOYMENT_SPEC: [Field; 2] = [
    Field::object("strategy", &[]).retaining(),
    Field::object("template", &POD_TEMPLATE_SPEC),
];

static DEPLOYMENT_STATUS: [Field; 1] = [Field::merge_by("conditions", "type", &[])];

static DEPLOYMENT: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &DEPLOYMENT_SPEC),
    Field::object("status", &DEPLOYMENT_STATUS),
];

static REPLICA_SET_SPEC: [Field; 1] = [Field::object("template", &POD_TEMPLATE_SPEC)];

static REPLICA_SET_STATUS: [Field; 1] = [Field::merge_by("conditions", "type", &[])];

static REPLICA_SET: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::object("spec", &REPLICA_SET_SPEC),
    Field::object("status", &REPLICA_SET_STATUS),
];

static SERVICE_ACCOUNT: [Field; 3] = [
    Field::object("metadata", &OBJECT_META),
    Field::merge_by("secrets", "name", &[]),
    // `+listType=atomic`, no patch strategy (unlike a PodSpec's).
    Field::atomic("imagePullSecrets"),
];

/// Kinds with nothing special below their metadata (Lease, Scale, ConfigMap,
/// Secret and both Events, whose `data` maps merge key by key and whose
/// lists are atomic).
static METADATA_ONLY: [Field; 1] = [Field::object("metadata", &OBJECT_META)];

static POD_SCHEMA: Schema = Schema::new(&POD);
static SERVICE_SCHEMA: Schema = Schema::new(&SERVICE);
static NODE_SCHEMA: Schema = Schema::new(&NODE);
static NAMESPACE_SCHEMA: Schema = Schema::new(&NAMESPACE);
static ENDPOINTS_SCHEMA: Schema = Schema::new(&ENDPOINTS);
static ENDPOINT_SLICE_SCHEMA: Schema = Schema::new(&ENDPOINT_SLICE);
static DEPLOYMENT_SCHEMA: Schema = Schema::new(&DEPLOYMENT);
static REPLICA_SET_SCHEMA: Schema = Schema::new(&REPLICA_SET);
static SERVICE_ACCOUNT_SCHEMA: Schema = Schema::new(&SERVICE_ACCOUNT);
static METADATA_ONLY_SCHEMA: Schema = Schema::new(&METADATA_ONLY);

/// Schema for a served kind, by (apiGroup, kind): `("", "Pod")`, `("", "Service")`,
/// `("", "Node")`, `("", "Namespace")`, `("", "Endpoints")`,
/// `("discovery.k8s.io", "EndpointSlice")`, `("apps", "Deployment")`,
/// `("apps", "ReplicaSet")`, `("", "ConfigMap")`, `("", "Secret")`,
/// `("", "ServiceAccount")`, `("", "Event")`, `("events.k8s.io", "Event")`,
/// `("coordination.k8s.io", "Lease")`, `("autoscaling", "Scale")`. The
/// group matters: `"Event"` is served by two groups.
///
/// Unknown kinds give `None`; the caller then answers 415 Unsupported Media
/// Type, as the apiserver does for custom resources.
pub fn schema_for(group: &str, kind: &str) -> Option<&'static Schema> {
    match (group, kind) {
        ("", "Pod") => Some(&POD_SCHEMA),
        ("", "Service") => Some(&SERVICE_SCHEMA),
        ("", "Node") => Some(&NODE_SCHEMA),
        ("", "Namespace") => Some(&NAMESPACE_SCHEMA),
        ("", "Endpoints") => Some(&ENDPOINTS_SCHEMA),
        ("discovery.k8s.io", "EndpointSlice") => Some(&ENDPOINT_SLICE_SCHEMA),
        ("apps", "Deployment") => Some(&DEPLOYMENT_SCHEMA),
        ("apps", "ReplicaSet") => Some(&REPLICA_SET_SCHEMA),
        ("", "ServiceAccount") => Some(&SERVICE_ACCOUNT_SCHEMA),
        ("coordination.k8s.io", "Lease")
        | ("autoscaling", "Scale")
        | ("", "ConfigMap" | "Secret" | "Event")
        | ("events.k8s.io", "Event") => Some(&METADATA_ONLY_SCHEMA),
        _ => None,
    }
}
