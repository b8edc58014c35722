//! The output of a reconcile: actions the runner applies generically.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Identifies one object (the target of a patch, or what an event is about).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// `apiVersion` of the object, e.g. `apps/v1` or `v1`.
    pub api_version: String,
    /// `kind` of the object, e.g. `Pod`.
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// UID of the object; the runner should use it as a precondition so that a
    /// same-named replacement is never touched.
    pub uid: String,
}

impl ObjectRef {
    /// Builds a reference from an object's metadata.
    pub fn from_meta(api_version: &str, kind: &str, meta: &ObjectMeta) -> Self {
        ObjectRef {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }
}

/// Event type, as in core/v1 Event `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

impl EventType {
    /// The wire string (`Normal` / `Warning`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An event to record (the runner fills in source component, counts and times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The object the event is about.
    pub regarding: ObjectRef,
    /// Normal or Warning.
    pub event_type: EventType,
    /// Machine-readable reason, e.g. `ScalingReplicaSet`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// An event whose message ends with the name of an object that does not exist yet
/// (pods are created with `generateName`, so only the server knows the final name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTemplate {
    /// The object the event is about.
    pub regarding: ObjectRef,
    /// Normal or Warning.
    pub event_type: EventType,
    /// Machine-readable reason, e.g. `SuccessfulCreate`.
    pub reason: String,
    /// Message prefix; the created object's name is appended.
    pub message_prefix: String,
}

impl EventTemplate {
    /// The event to record once the object was created under `created_name`.
    pub fn render(&self, created_name: &str) -> Event {
        Event {
            regarding: self.regarding.clone(),
            event_type: self.event_type,
            reason: self.reason.clone(),
            message: format!("{}{}", self.message_prefix, created_name),
        }
    }
}

/// One write the runner performs. Actions are ordered; when several touch the same
/// object, each later one already contains the earlier changes, so the runner may
/// write it with the `resourceVersion` returned by the earlier write (or treat the
/// conflict as "reconcile again").
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // plans are short; boxing would only add noise
pub enum Action {
    /// Create a pod (it carries `generateName`); on success record
    /// `on_success.render(<name>)`.
    CreatePod {
        /// The pod to create.
        pod: Pod,
        /// `SuccessfulCreate` / `Created pod: <name>`.
        on_success: EventTemplate,
    },
    /// Delete a pod (precondition: uid).
    DeletePod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// UID precondition.
        uid: String,
    },
    /// Create a ReplicaSet (deterministic name; `AlreadyExists` means a concurrent
    /// create, and the next reconcile sorts it out).
    CreateReplicaSet(ReplicaSet),
    /// Replace a ReplicaSet's metadata/spec (replicas, annotations, minReadySeconds).
    UpdateReplicaSet(ReplicaSet),
    /// Write a ReplicaSet's `status` subresource.
    UpdateReplicaSetStatus(ReplicaSet),
    /// Delete a ReplicaSet (revision history cleanup; precondition: uid).
    DeleteReplicaSet {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// UID precondition.
        uid: String,
    },
    /// Replace a Deployment's metadata (the revision annotation).
    UpdateDeployment(Deployment),
    /// Write a Deployment's `status` subresource.
    UpdateDeploymentStatus(Deployment),
    /// Set `metadata.ownerReferences` of `target` to exactly `owner_references`
    /// (adoption adds a controller reference, release removes one). The runner
    /// should apply it as a patch guarded by the target's uid.
    PatchOwnerRefs {
        /// The object to patch.
        target: ObjectRef,
        /// Its complete new owner reference list.
        owner_references: Vec<OwnerReference>,
    },
    /// Record an event.
    Event(Event),
}

/// The result of one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Writes to perform, in order.
    pub actions: Vec<Action>,
    /// Reconcile again after this long even if nothing changes (a pod becomes
    /// available after minReadySeconds, a progress deadline expires).
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// True when the plan changes nothing (events alone are not expected without
    /// a write, so this just checks for an empty action list).
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}
