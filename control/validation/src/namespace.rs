//! Namespace validation (`ValidateNamespace`, `ValidateNamespaceUpdate`,
//! `ValidateNamespaceStatusUpdate`).

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{get, string, strings};
use crate::meta;
use crate::names::NameRule;

/// Finalizer names that need no domain prefix.
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

/// Validation of a new Namespace.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), false, NameRule::Label);
    errs.extend(validate_spec_finalizers(obj));
    errs
}

fn validate_spec_finalizers(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = get(obj, "spec").unwrap_or(&Value::Null);
    let path = Path::new("spec").child("finalizers");
    for f in strings(spec, "finalizers") {
        errs.extend(meta::validate_qualified_name(f, &path));
        if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f) {
            errs.push(FieldError::invalid(
                &path,
                Value::from(f),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    errs
}

/// Validation of a Namespace update (metadata only; the spec is owned by
/// the `finalize` subresource).
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_spec_finalizers(new));
    errs
}

/// Validation of a `namespaces/status` update: the phase must agree with the
/// deletion timestamp.
pub(crate) fn validate_status_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let deleting = get(new, "metadata")
        .and_then(|m| get(m, "deletionTimestamp"))
        .is_some();
    let phase = get(new, "status").map(|s| string(s, "phase")).unwrap_or("");
    let path = Path::new("status").child("Phase");
    if !deleting && phase != "Active" {
        errs.push(FieldError::invalid(
            &path,
            Value::from(phase),
            "may only be 'Active' if `deletionTimestamp` is empty",
        ));
    } else if deleting && phase != "Terminating" {
        errs.push(FieldError::invalid(
            &path,
            Value::from(phase),
            "may only be 'Terminating' if `deletionTimestamp` is not empty",
        ));
    }
    errs
}
