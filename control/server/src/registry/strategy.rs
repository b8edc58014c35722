//! One strategy per served kind: what the registry does differently for it.
//!
//! The apiserver gives every resource a `RESTCreateStrategy`/`RESTUpdateStrategy`/
//! `RESTDeleteStrategy`; here each row of [`crate::resources::RESOURCES`] points at one
//! [`Strategy`] value, and the registry, the field-selector parser and the authorizer ask it
//! instead of matching kind strings. Defaulting and validation stay in `sluice-validation`,
//! table columns in `sluice-printers` and merge keys in `sluice-smp` (each keyed by the kind);
//! a new kind is a file here (when it behaves specially), a row in the table and an entry in
//! each of those crates.

use serde_json::Value;

use super::{DeleteOptions, Registry};
use crate::resources::Resource;
use crate::status::ApiResult;

/// How a delete proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Remove the object now (after finalizers).
    Immediate,
    /// Mark it with `deletionTimestamp` and this grace period; something else confirms
    /// (a pod's node) or the pod GC removes it when the period ends.
    Graceful(i64),
    /// Delete everything in the namespace first (a Namespace).
    NamespaceContents,
}

/// What the node authorizer (`system:node` role) lets a node do with a kind, before
/// NodeRestriction narrows it to the node's own objects.
#[derive(Debug, Clone, Copy)]
pub struct NodeRequest<'a> {
    /// The verb.
    pub verb: &'a str,
    /// The subresource.
    pub sub: Option<&'a str>,
    /// The namespace of the request.
    pub ns: Option<&'a str>,
    /// The object's name.
    pub name: Option<&'a str>,
    /// The requesting node's name.
    pub node: &'a str,
    /// A pod bound to the node references the object (ConfigMaps, Secrets, ServiceAccounts).
    pub referenced: bool,
}

impl NodeRequest<'_> {
    /// A read verb.
    pub fn is_read(&self) -> bool {
        matches!(self.verb, "get" | "list" | "watch")
    }
}

/// Allocations one write took (ClusterIPs, NodePorts, podCIDRs): kept when the write is
/// stored, given back when it fails or turns out to be a no-op.
pub trait Held: Send {
    /// The write is stored: release what the object gave up.
    fn commit(&self, reg: &Registry);
    /// The write failed: give back what it took.
    fn rollback(&self, reg: &Registry);
}

/// Nothing held.
pub struct NothingHeld;

impl Held for NothingHeld {
    fn commit(&self, _: &Registry) {}
    fn rollback(&self, _: &Registry) {}
}

/// Kind-specific registry behaviour. Every method has the plain behaviour as its default.
pub trait Strategy: Sync + Send + std::fmt::Debug {
    /// `PrepareForCreate`: status reset and server-set fields on a new object.
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Reserves what the object needs from the allocators (may fill the object, e.g. a
    /// ClusterIP), before validation; `old` is the stored object on update.
    fn reserve(
        &self,
        _reg: &Registry,
        _res: &Resource,
        _name: &str,
        _old: Option<&Value>,
        _new: &mut Value,
    ) -> ApiResult<Box<dyn Held>> {
        Ok(Box::new(NothingHeld))
    }

    /// Gives back what a deleted object held.
    fn release_deleted(&self, _reg: &Registry, _v: &Value) {}

    /// How a delete of `v` proceeds.
    fn delete_mode(&self, _v: &Value, _opts: &DeleteOptions) -> DeleteMode {
        DeleteMode::Immediate
    }

    /// Fields a field selector may name besides `metadata.name` and `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether the `system:node` role allows the request (before NodeRestriction).
    fn node_allowed(&self, _r: &NodeRequest<'_>) -> bool {
        false
    }

    /// Whether a node may read objects of this kind that its pods reference (and only
    /// those); the API handler then works out [`NodeRequest::referenced`].
    fn node_reads_when_referenced(&self) -> bool {
        false
    }

    /// Whether writes by a node to this kind pass NodeRestriction's object checks.
    fn node_restricted_writes(&self) -> bool {
        false
    }
}

/// A kind with no special behaviour.
#[derive(Debug)]
pub struct Plain;

impl Strategy for Plain {}

/// Kinds every node may read (the proxy and the agent watch them).
#[derive(Debug)]
pub struct NodeReadable;

impl Strategy for NodeReadable {
    fn node_allowed(&self, r: &NodeRequest<'_>) -> bool {
        r.sub.is_none() && r.is_read()
    }
}

/// Objects with `spec.replicas` and a `scale` subresource (Deployment, ReplicaSet).
#[derive(Debug)]
pub struct Scalable {
    /// Fields selectable besides name and namespace.
    pub selectable: &'static [&'static str],
}

impl Strategy for Scalable {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = serde_json::json!({});
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        self.selectable
    }
}

/// Deployments.
pub static DEPLOYMENT: Scalable = Scalable { selectable: &[] };
/// ReplicaSets (`status.replicas` is selectable, as upstream).
pub static REPLICA_SET: Scalable = Scalable {
    selectable: &["status.replicas"],
};

/// Secrets: `type` is selectable.
pub static SECRET: ReferencedByPods = ReferencedByPods { fields: &["type"] };

/// core/v1 Events: selectable as upstream (`kubectl describe` lists an object's events by
/// `involvedObject.*`); nodes write them.
pub static CORE_EVENT: Selectable = Selectable {
    fields: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "type",
    ],
    node_writes: true,
};

/// events.k8s.io/v1 Events.
pub static EVENTS_V1_EVENT: Selectable = Selectable {
    fields: &[
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "reason",
        "reportingController",
        "type",
    ],
    node_writes: true,
};

/// A kind with extra selectable fields; `node_writes` lets every node create and update
/// objects of it (Events, which kubelets record).
#[derive(Debug)]
pub struct Selectable {
    /// Fields selectable besides name and namespace.
    pub fields: &'static [&'static str],
    /// Nodes may create, update and patch these.
    pub node_writes: bool,
}

impl Strategy for Selectable {
    fn selectable_fields(&self) -> &'static [&'static str] {
        self.fields
    }

    fn node_allowed(&self, r: &NodeRequest<'_>) -> bool {
        self.node_writes && r.sub.is_none() && matches!(r.verb, "create" | "update" | "patch")
    }
}

/// ConfigMaps, Secrets and ServiceAccounts: a node may get (or list/watch by
/// `metadata.name`) the ones its pods reference, as upstream's Node authorizer allows kubelets
/// to, and nothing else.
#[derive(Debug)]
pub struct ReferencedByPods {
    /// Fields selectable besides name and namespace.
    pub fields: &'static [&'static str],
}

impl Strategy for ReferencedByPods {
    fn selectable_fields(&self) -> &'static [&'static str] {
        self.fields
    }

    fn node_reads_when_referenced(&self) -> bool {
        true
    }

    fn node_allowed(&self, r: &NodeRequest<'_>) -> bool {
        r.referenced && r.sub.is_none() && r.is_read()
    }
}

/// ConfigMaps and ServiceAccounts.
pub static REFERENCED: ReferencedByPods = ReferencedByPods { fields: &[] };
