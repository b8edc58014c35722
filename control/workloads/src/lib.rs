//! Sluice workload controllers: the reconcile logic of kube-controller-manager's
//! ReplicaSet and Deployment controllers, as pure functions over typed objects.
//!
//! # Role and data flow
//!
//! This crate performs no I/O. A runner inside the API server lists the inputs from
//! the store (one object plus the ReplicaSets / Pods of its namespace), calls
//! [`replicaset::reconcile`] or [`deployment::reconcile`] with the current time, and
//! gets back a [`Plan`]: an ordered list of [`Action`]s (creates, full-object updates,
//! deletes, owner-reference patches, events) plus an optional "requeue after" delay.
//! The runner applies the actions through the registry and re-runs reconcile whenever
//! an input object changes (and after `requeue_after`).
//!
//! ```text
//!   store ──list──▶ reconcile(obj, siblings, now) ──Plan──▶ runner ──writes──▶ store
//!     ▲                                                                         │
//!     └──────────────────────────── watch / requeue ◀───────────────────────────┘
//! ```
//!
//! Because the runner reads its own writes back from the authoritative store before
//! the next reconcile, upstream's "expectations" bookkeeping (which guards against a
//! stale informer cache) is not needed: every reconcile sees the effect of the
//! previous plan. Updates are full objects derived from the inputs, so the runner can
//! write them with the input's `resourceVersion` and retry (re-reconcile) on conflict.
//! Unchanged objects produce no action, so reconciling the result of a plan converges
//! to an empty plan.
//!
//! Facts (annotation names, reasons, messages, ordering rules, rounding) follow
//! upstream `pkg/controller/{replicaset,deployment}`; the code is our own.

#![warn(missing_docs)]

pub mod action;
pub mod deployment;
mod hash;
pub mod replicaset;
mod util;

pub use action::{Action, Event, EventTemplate, EventType, ObjectRef, Plan};
pub use hash::{compute_hash, equal_ignore_hash};

/// Everything that can make a reconcile refuse its input.
///
/// These are all problems with the input objects (which the API server's validation
/// normally rules out); the runner should log them and not retry until the object
/// changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A required field is absent (e.g. `metadata.uid`, `spec.template`).
    #[error("{kind} {name:?}: missing required field {field}")]
    MissingField {
        /// Kind of the object lacking the field.
        kind: &'static str,
        /// Name of the object (may be empty if the name itself is missing).
        name: String,
        /// JSON path of the missing field.
        field: &'static str,
    },
    /// A label selector that cannot be evaluated (bad operator or values).
    #[error("invalid label selector: {0}")]
    InvalidSelector(String),
    /// A maxSurge / maxUnavailable value that is neither an integer nor a percentage.
    #[error("invalid value for IntOrString: {0}")]
    InvalidIntOrString(String),
    /// A Deployment strategy type other than `RollingUpdate` or `Recreate`.
    #[error("unexpected deployment strategy type: {0}")]
    UnknownStrategy(String),
    /// The pod template could not be rendered to JSON for hashing.
    #[error("cannot serialize pod template: {0}")]
    Serialize(String),
}
