//! Defaulting and validation for the kinds Sluice serves, with Kubernetes'
//! field names, default values and error texts.
//!
//! The crate works on `serde_json::Value`s and knows nothing of storage or
//! HTTP. The API server drives it per write request, mirroring the
//! apiserver's decode → default → prepare → validate pipeline:
//!
//! 1. [`normalize`]: the body goes through the k8s-openapi type of its kind,
//!    which drops unknown fields and rejects type mismatches (the server
//!    answers 400 BadRequest with the returned message).
//! 2. [`apply_defaults`]: Kubernetes defaults (`SetDefaults_*`, `+default`
//!    markers) plus the request-time fills that happen before validation in
//!    Kubernetes (v1 IP-field pairing, Priority admission, Service IP
//!    family inference). Run it on every create, update and status update.
//! 3. Optionally [`prepare_for_create`] / [`prepare_for_update`] /
//!    [`prepare_for_status_update`]: the registry strategies' bookkeeping
//!    (status reset on create, status preserved on spec updates, spec
//!    preserved on status updates, generation, Service clusterIP
//!    normalization and type-dependent field wiping).
//! 4. [`validate_create`], [`validate_update`] or [`validate_status_update`]:
//!    a list of [`FieldError`]s; empty means valid. The server turns a
//!    non-empty list into a 422 `Invalid` Status: [`invalid_status_message`]
//!    builds its `message`, each error's [`FieldError::reason`], `field` and
//!    [`FieldError::body`] fill `details.causes[]`.
//!
//! Fields the server assigns (uid, resourceVersion, creationTimestamp,
//! clusterIP/nodePort/healthCheckNodePort allocation) are never required
//! here. Name/namespace immutability and resourceVersion checks on update
//! are the server's.

mod configmap;
mod defaults;
mod deployment;
mod endpoints;
mod endpointslice;
mod event;
mod field;
mod json;
mod lease;
mod meta;
mod names;
mod namespace;
mod net;
mod node;
mod normalize;
mod pod;
mod prepare;
mod quantity;
mod replicaset;
mod secret;
mod service;
mod serviceaccount;

use serde_json::Value;

pub use field::{aggregate_message, ErrorType, FieldError};

/// The kinds served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// core/v1 Namespace (cluster-scoped).
    Namespace,
    /// core/v1 Node (cluster-scoped).
    Node,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Service.
    Service,
    /// core/v1 Endpoints.
    Endpoints,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// apps/v1 Deployment.
    Deployment,
    /// coordination.k8s.io/v1 Lease.
    Lease,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// core/v1 ConfigMap.
    ConfigMap,
    /// core/v1 Secret.
    Secret,
    /// core/v1 ServiceAccount.
    ServiceAccount,
    /// core/v1 Event (the legacy `events` resource of the core group).
    Event,
    /// events.k8s.io/v1 Event. Its `kind` string is also `"Event"`, so
    /// [`Kind::from_kind`] never returns it; use [`Kind::from_group_kind`].
    EventsV1Event,
}

impl Kind {
    /// All served kinds.
    pub const ALL: [Kind; 14] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::Deployment,
        Kind::Lease,
        Kind::ReplicaSet,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
        // The core Event comes before the events.k8s.io one, so that
        // `from_kind("Event")` keeps meaning the core kind.
        Kind::Event,
        Kind::EventsV1Event,
    ];

    /// The kind for a `kind` string such as `"Pod"` (exact, case-sensitive),
    /// ignoring the group. `"Event"` is the core/v1 Event; callers that know
    /// the group should use [`Kind::from_group_kind`].
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// The kind for an API group (`""` for core) and `kind` string, e.g.
    /// `("events.k8s.io", "Event")` → [`Kind::EventsV1Event`].
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.name() == kind)
    }

    /// The `kind` string, e.g. `"EndpointSlice"`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Deployment => "Deployment",
            Kind::Lease => "Lease",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Event | Kind::EventsV1Event => "Event",
        }
    }

    /// The API group (`""` for core).
    pub fn group(&self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Deployment | Kind::ReplicaSet => "apps",
            Kind::Lease => "coordination.k8s.io",
            Kind::EventsV1Event => "events.k8s.io",
            _ => "",
        }
    }

    /// The `apiVersion` string, e.g. `"apps/v1"`.
    pub fn api_version(&self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Deployment | Kind::ReplicaSet => "apps/v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::EventsV1Event => "events.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(&self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

/// The `message` of the 422 Status for an invalid object, e.g.
/// `Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: must
/// be greater than or equal to 0` (several errors print as `[a, b]`).
pub fn invalid_status_message(kind: Kind, name: &str, errors: &[FieldError]) -> String {
    let qualified = if kind.group().is_empty() {
        kind.name().to_string()
    } else {
        format!("{}.{}", kind.name(), kind.group())
    };
    let quoted = field::go_quote(name);
    if errors.is_empty() {
        format!("{qualified} {quoted} is invalid")
    } else {
        format!(
            "{qualified} {quoted} is invalid: {}",
            aggregate_message(errors)
        )
    }
}

/// Round-trips the JSON through the k8s-openapi type of `kind`, which drops
/// unknown fields the way the apiserver's decoder does; a type mismatch (or a
/// malformed quantity) is a decode error, returned as the apiserver's text
/// (`Pod in version "v1" cannot be handled as a Pod: ...`). `apiVersion` and
/// `kind` are kept (and filled when absent); a mismatching `apiVersion` or
/// `kind` is an error. JSON `null`s are treated as absent fields.
pub fn normalize(kind: Kind, obj: Value) -> Result<Value, String> {
    normalize::normalize(kind, obj)
}

/// Fills Kubernetes defaults in place (`obj` is the full object JSON,
/// including apiVersion/kind/metadata). Idempotent; run it on every write.
///
/// Besides the `SetDefaults_*` functions this fills what Kubernetes sets
/// before validation on every request: missing `apiVersion`/`kind`; the
/// namespace of cluster-scoped objects is cleared; Pod `priority` (0 or the
/// system classes') and `preemptionPolicy`; `podIP`/`podIPs`,
/// `hostIP`/`hostIPs`, `podCIDR`/`podCIDRs` pairing; Service `clusterIPs`
/// from `clusterIP`, and `ipFamilies`/`ipFamilyPolicy` (single-stack IPv4
/// unless the object's IPs or families say otherwise; RequireDualStack for
/// headless selector-less Services); Secret `stringData` merged into `data`
/// (base64) and removed, as the apiserver's v1 → internal conversion does.
pub fn apply_defaults(kind: Kind, obj: &mut Value) {
    defaults::apply(kind, obj);
}

/// The registry's `PrepareForCreate`, to run after [`apply_defaults`] on a
/// create: resets status (Pod: `phase: Pending` and its `qosClass`;
/// Namespace: `phase: Active`; Service: empty load balancer status;
/// Deployment, ReplicaSet: empty), sets `metadata.generation: 1` for Pods,
/// Deployments, ReplicaSets and EndpointSlices, adds the `kubernetes`
/// finalizer to Namespaces, and trims ServiceAccount `secrets` entries to
/// their `name`.
pub fn prepare_for_create(kind: Kind, obj: &mut Value) {
    prepare::for_create(kind, obj);
}

/// The registry's `PrepareForUpdate`, to run after [`apply_defaults`] on an
/// update of the main resource: keeps the old status (and a Namespace's
/// `spec.finalizers`), bumps `metadata.generation` when the spec changed
/// (Deployment: or annotations), trims ServiceAccount `secrets` entries to
/// their `name`, and for Services pairs
/// `clusterIP`/`clusterIPs` for old clients and wipes fields the new type no
/// longer uses when the client left them unchanged.
pub fn prepare_for_update(kind: Kind, old: &Value, new: &mut Value) {
    prepare::for_update(kind, old, new);
}

/// The status strategy's `PrepareForUpdate`: keeps the old spec (Pods also
/// keep ownerReferences; Deployments keep labels; ReplicaSets only the spec).
pub fn prepare_for_status_update(kind: Kind, old: &Value, new: &mut Value) {
    prepare::for_status_update(kind, old, new);
}

/// Validation of a new object (after defaulting). Server-assigned fields
/// (clusterIP and nodePort allocation, uid, resourceVersion) are not
/// required: an empty/absent clusterIP or nodePort is valid. A namespaced
/// object must carry `metadata.namespace` (the server fills it from the
/// request path before calling this). An empty name is accepted when
/// `generateName` is set.
///
/// Events: [`Kind::Event`] gets upstream's legacy rules only (what a core/v1
/// request gets), [`Kind::EventsV1Event`] the strict events.k8s.io/v1 rules
/// on top; error paths use the internal field names in both cases
/// (`involvedObject`, `message`, ...), as upstream reports them.
pub fn validate_create(kind: Kind, obj: &Value) -> Vec<FieldError> {
    dedup(match kind {
        Kind::Namespace => namespace::validate_create(obj),
        Kind::Node => node::validate_create(obj),
        Kind::Pod => pod::validate_create(obj),
        Kind::Service => service::validate_create(obj),
        Kind::Endpoints => endpoints::validate_create(obj),
        Kind::EndpointSlice => endpointslice::validate_create(obj),
        Kind::Deployment => deployment::validate_create(obj),
        Kind::Lease => lease::validate_create(obj),
        Kind::ReplicaSet => replicaset::validate_create(obj),
        Kind::ConfigMap => configmap::validate_create(obj),
        Kind::Secret => secret::validate_create(obj),
        Kind::ServiceAccount => serviceaccount::validate_create(obj),
        Kind::Event => event::validate_create(obj, event::Version::CoreV1),
        Kind::EventsV1Event => event::validate_create(obj, event::Version::EventsV1),
    })
}

/// Validation of an update (after defaulting): what [`validate_create`]
/// checks plus immutability — Service clusterIPs/ipFamilies (except around
/// ExternalName and headless) and loadBalancerClass; Deployment
/// and ReplicaSet `spec.selector`; Pod spec (only container images,
/// activeDeadlineSeconds decreases and toleration additions may change);
/// EndpointSlice `addressType`; Node podCIDRs/providerID once set; Secret
/// `type`; ConfigMap/Secret data once `immutable: true`; events.k8s.io/v1
/// Event fields; uid; no new finalizers on an object being deleted. Name/namespace immutability is the caller's.
pub fn validate_update(kind: Kind, old: &Value, new: &Value) -> Vec<FieldError> {
    dedup(match kind {
        Kind::Namespace => namespace::validate_update(old, new),
        Kind::Node => node::validate_update(old, new),
        Kind::Pod => pod::validate_update(old, new),
        Kind::Service => service::validate_update(old, new),
        Kind::Endpoints => endpoints::validate_update(old, new),
        Kind::EndpointSlice => endpointslice::validate_update(old, new),
        Kind::Deployment => deployment::validate_update(old, new),
        Kind::Lease => lease::validate_update(old, new),
        Kind::ReplicaSet => replicaset::validate_update(old, new),
        Kind::ConfigMap => configmap::validate_update(old, new),
        Kind::Secret => secret::validate_update(old, new),
        Kind::ServiceAccount => serviceaccount::validate_update(old, new),
        Kind::Event => event::validate_update(old, new, event::Version::CoreV1),
        Kind::EventsV1Event => event::validate_update(old, new, event::Version::EventsV1),
    })
}

/// Validation of a `status` subresource update: metadata update rules plus
/// the status — Pod podIPs/hostIPs (valid, one per family), condition types
/// and statuses, nodeName unchanged; Node conditions, addresses, resources;
/// Service load balancer ingress; Deployment and ReplicaSet replica counts;
/// Namespace phase. Kinds without a status subresource get
/// [`validate_update`].
pub fn validate_status_update(kind: Kind, old: &Value, new: &Value) -> Vec<FieldError> {
    dedup(match kind {
        Kind::Namespace => namespace::validate_status_update(old, new),
        Kind::Node => node::validate_update(old, new),
        Kind::Pod => pod::validate_status_update(old, new),
        Kind::Service => service::validate_status_update(old, new),
        Kind::Deployment => deployment::validate_status_update(old, new),
        Kind::ReplicaSet => replicaset::validate_status_update(old, new),
        Kind::Endpoints
        | Kind::EndpointSlice
        | Kind::Lease
        | Kind::ConfigMap
        | Kind::Secret
        | Kind::ServiceAccount
        | Kind::Event
        | Kind::EventsV1Event => validate_update(kind, old, new),
    })
}

/// Drops exact repeats (update validators re-run the metadata checks that the
/// metadata-update checks already ran), keeping the first occurrence.
fn dedup(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut out: Vec<FieldError> = Vec::with_capacity(errors.len());
    for e in errors {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

/// `resource.Quantity.MilliValue` of a quantity string (rounded up), or the decoder's error
/// message when the string is not a quantity. The scheduler sums requests with it.
pub fn quantity_milli_value(s: &str) -> Result<i64, &'static str> {
    quantity::Quantity::parse(s).map(|q| q.milli_value())
}

/// DNS-1123 label check (at most 63 characters of `[a-z0-9-]`, starting and
/// ending alphanumeric); returns apimachinery's error strings.
pub fn is_dns1123_label(s: &str) -> Vec<String> {
    names::is_dns1123_label(s)
}

/// DNS-1123 subdomain check (at most 253 characters, dot-separated labels);
/// returns apimachinery's error strings.
pub fn is_dns1123_subdomain(s: &str) -> Vec<String> {
    names::is_dns1123_subdomain(s)
}

/// DNS-1035 label check (a DNS-1123 label starting with a letter; Service
/// names); returns apimachinery's error strings.
pub fn is_dns1035_label(s: &str) -> Vec<String> {
    names::is_dns1035_label(s)
}

/// Qualified-name check (label and annotation keys: optional DNS subdomain
/// prefix and `/`, then at most 63 characters); apimachinery's strings.
pub fn is_qualified_name(s: &str) -> Vec<String> {
    names::is_qualified_name(s)
}

/// ConfigMap/Secret key check (`IsConfigMapKey`: `[-._a-zA-Z0-9]+`, at
/// most 253 characters, not `.`/`..` nor starting with `..`); apimachinery's
/// strings. Useful wherever a key becomes a file name (volume items).
pub fn is_config_map_key(s: &str) -> Vec<String> {
    names::is_config_map_key(s)
}

/// Label-value check (empty, or at most 63 characters of `[A-Za-z0-9-_.]`
/// starting and ending alphanumeric); apimachinery's strings.
pub fn is_valid_label_value(s: &str) -> Vec<String> {
    names::is_valid_label_value(s)
}
