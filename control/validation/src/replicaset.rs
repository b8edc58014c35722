//! ReplicaSet (apps/v1) validation (`ValidateReplicaSet`,
//! `ValidateReplicaSetUpdate` plus the apps/v1 selector immutability of the
//! registry strategy, `ValidateReplicaSetStatusUpdate`).

use serde_json::Value;

use crate::deployment::{validate_pod_template_for_replica_set, validate_replica_selector};
use crate::field::{FieldError, Path};
use crate::json::{get, int};
use crate::meta;

/// Validation of a new ReplicaSet.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    crate::deployment::validate_create_with(obj, validate_spec)
}

/// `ValidateReplicaSetSpec`, in upstream's order: replicas, minReadySeconds,
/// selector, template.
fn validate_spec(spec: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs =
        meta::validate_nonnegative(int(spec, "replicas").unwrap_or(0), &path.child("replicas"));
    errs.extend(meta::validate_nonnegative(
        int(spec, "minReadySeconds").unwrap_or(0),
        &path.child("minReadySeconds"),
    ));
    let selector = get(spec, "selector");
    errs.extend(validate_replica_selector(selector, &path.child("selector")));
    errs.extend(validate_pod_template_for_replica_set(
        get(spec, "template"),
        selector,
        &path.child("template"),
    ));
    errs
}

/// Validation of a ReplicaSet update (apps/v1: the selector is immutable).
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    crate::deployment::validate_update_with(old, new, validate_spec)
}

/// Validation of a `replicasets/status` update (`ValidateReplicaSetStatus`).
pub(crate) fn validate_status_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let null = Value::Null;
    let status = get(new, "status").unwrap_or(&null);
    let path = Path::new("status");
    let field = |k: &str| int(status, k).unwrap_or(0);
    for k in [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
    ] {
        errs.extend(meta::validate_nonnegative(field(k), &path.child(k)));
    }
    // Optional (a pointer upstream): only checked when reported.
    if let Some(v) = int(status, "terminatingReplicas") {
        errs.extend(meta::validate_nonnegative(
            v,
            &path.child("terminatingReplicas"),
        ));
    }
    errs.extend(meta::validate_nonnegative(
        field("observedGeneration"),
        &path.child("observedGeneration"),
    ));
    let replicas = field("replicas");
    for k in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
        if field(k) > replicas {
            errs.push(FieldError::invalid(
                path.child(k),
                Value::from(field(k)),
                "cannot be greater than status.replicas",
            ));
        }
    }
    if field("availableReplicas") > field("readyReplicas") {
        errs.push(FieldError::invalid(
            path.child("availableReplicas"),
            Value::from(field("availableReplicas")),
            "cannot be greater than readyReplicas",
        ));
    }
    errs
}
