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

mod defaults;
mod deployment;
mod endpoints;
mod endpointslice;
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
mod service;

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
}

impl Kind {
    /// All served kinds.
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::Deployment,
        Kind::Lease,
    ];

    /// The kind for a `kind` string such as `"Pod"` (exact, case-sensitive).
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
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
        }
    }

    /// The API group (`""` for core).
    pub fn group(&self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Deployment => "apps",
            Kind::Lease => "coordination.k8s.io",
            _ => "",
        }
    }

    /// The `apiVersion` string, e.g. `"apps/v1"`.
    pub fn api_version(&self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Deployment => "apps/v1",
            Kind::Lease => "coordination.k8s.io/v1",
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
/// headless selector-less Services).
pub fn apply_defaults(kind: Kind, obj: &mut Value) {
    defaults::apply(kind, obj);
}

/// The registry's `PrepareForCreate`, to run after [`apply_defaults`] on a
/// create: resets status (Pod: `phase: Pending` and its `qosClass`;
/// Namespace: `phase: Active`; Service: empty load balancer status;
/// Deployment: empty), sets `metadata.generation: 1` for Pods, Deployments
/// and EndpointSlices, and adds the `kubernetes` finalizer to Namespaces.
pub fn prepare_for_create(kind: Kind, obj: &mut Value) {
    prepare::for_create(kind, obj);
}

/// The registry's `PrepareForUpdate`, to run after [`apply_defaults`] on an
/// update of the main resource: keeps the old status (and a Namespace's
/// `spec.finalizers`), bumps `metadata.generation` when the spec changed
/// (Deployment: or annotations), and for Services pairs
/// `clusterIP`/`clusterIPs` for old clients and wipes fields the new type no
/// longer uses when the client left them unchanged.
pub fn prepare_for_update(kind: Kind, old: &Value, new: &mut Value) {
    prepare::for_update(kind, old, new);
}

/// The status strategy's `PrepareForUpdate`: keeps the old spec (Pods also
/// keep ownerReferences; Deployments keep labels).
pub fn prepare_for_status_update(kind: Kind, old: &Value, new: &mut Value) {
    prepare::for_status_update(kind, old, new);
}

/// Validation of a new object (after defaulting). Server-assigned fields
/// (clusterIP and nodePort allocation, uid, resourceVersion) are not
/// required: an empty/absent clusterIP or nodePort is valid. A namespaced
/// object must carry `metadata.namespace` (the server fills it from the
/// request path before calling this). An empty name is accepted when
/// `generateName` is set.
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
    })
}

/// Validation of an update (after defaulting): what [`validate_create`]
/// checks plus immutability — Service clusterIPs/ipFamilies (except around
/// ExternalName and headless) and loadBalancerClass; Deployment
/// `spec.selector`; Pod spec (only container images, activeDeadlineSeconds
/// decreases and toleration additions may change); EndpointSlice
/// `addressType`; Node podCIDRs/providerID once set; uid; no new finalizers
/// on an object being deleted. Name/namespace immutability is the caller's.
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
    })
}

/// Validation of a `status` subresource update: metadata update rules plus
/// the status — Pod podIPs/hostIPs (valid, one per family), condition types
/// and statuses, nodeName unchanged; Node conditions, addresses, resources;
/// Service load balancer ingress; Deployment replica counts;
/// Namespace phase. Kinds without a status subresource get
/// [`validate_update`].
pub fn validate_status_update(kind: Kind, old: &Value, new: &Value) -> Vec<FieldError> {
    dedup(match kind {
        Kind::Namespace => namespace::validate_status_update(old, new),
        Kind::Node => node::validate_update(old, new),
        Kind::Pod => pod::validate_status_update(old, new),
        Kind::Service => service::validate_status_update(old, new),
        Kind::Deployment => deployment::validate_status_update(old, new),
        Kind::Endpoints | Kind::EndpointSlice | Kind::Lease => validate_update(kind, old, new),
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

/// Label-value check (empty, or at most 63 characters of `[A-Za-z0-9-_.]`
/// starting and ending alphanumeric); apimachinery's strings.
pub fn is_valid_label_value(s: &str) -> Vec<String> {
    names::is_valid_label_value(s)
}
