//! Sluice scheduler: pod placement as kube-scheduler's default profile does
//! it, as a pure library over typed `k8s-openapi` objects.
//!
//! Data flow: the API server's scheduler runner keeps a [`Snapshot`] up to
//! date from the store's node and pod events ([`Snapshot::upsert_node`],
//! [`Snapshot::upsert_pod`] and the `remove_*` methods). For each pending
//! pod it calls [`schedule`], which filters every node, scores the feasible
//! ones and returns a node name; the runner writes `pods/binding` and calls
//! [`Snapshot::assume`] so the next decision already counts the pod. When
//! no node fits, [`Unschedulable::message`] is the text for the
//! `FailedScheduling` event and the PodScheduled condition, formatted like
//! upstream's `FitError`.
//!
//! The [`taints`] module is shared with the node lifecycle controller
//! (NoExecute eviction deadlines) and pod admission (DefaultTolerationSeconds).
//!
//! Nothing here does I/O, spawns, or keeps time: callers pass `now`.
//!
//! Not modelled (the runner must not rely on them): preemption, volumes
//! (VolumeBinding, VolumeZone, NodeVolumeLimits, VolumeRestrictions),
//! inter-pod affinity, a pod's own `topologySpreadConstraints` (only the
//! system-default spreading by controlling owner is scored), ImageLocality,
//! DRA, and in-place resize (requests come from the spec only). Pods with
//! `schedulingGates` should not be passed in: upstream keeps them queued.

#![warn(missing_docs)]

mod affinity;
pub mod resources;
mod schedule;
mod snapshot;
pub mod taints;

#[cfg(test)]
mod tests;

pub use resources::Resources;
pub use schedule::{schedule, Reason, Unschedulable, NO_NODES_MESSAGE};
pub use snapshot::{NodeUsage, Snapshot};
pub use taints::{add_default_tolerations, eviction_time, tolerates, Eviction};

/// Errors updating a [`Snapshot`] from an object it cannot account for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The object has no metadata.name.
    #[error("{kind} has no name")]
    MissingName {
        /// Object kind.
        kind: &'static str,
    },
    /// A resource quantity (node allocatable, container request, overhead)
    /// is not a valid `resource.Quantity`.
    #[error("{kind} {name}: invalid quantity {value:?} for {resource}: {reason}")]
    InvalidQuantity {
        /// Object kind.
        kind: &'static str,
        /// Object name (namespace/name for pods).
        name: String,
        /// Resource name.
        resource: String,
        /// The quantity as written.
        value: String,
        /// The parser's message.
        reason: &'static str,
    },
}

impl Error {
    fn from_bad_quantity(kind: &'static str, name: &str, b: resources::BadQuantity) -> Error {
        Error::InvalidQuantity {
            kind,
            name: name.to_string(),
            resource: b.resource,
            value: b.value,
            reason: b.reason,
        }
    }
}
