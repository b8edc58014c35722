//! Lease (coordination.k8s.io/v1) validation.

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, int};
use crate::meta;
use crate::names::NameRule;

/// Validation of a new Lease.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    let spec = get(obj, "spec").unwrap_or(&Value::Null);
    let path = Path::new("spec");
    if let Some(d) = int(spec, "leaseDurationSeconds") {
        if d <= 0 {
            errs.push(FieldError::invalid(
                path.child("leaseDurationSeconds"),
                Value::from(d),
                "must be greater than 0",
            ));
        }
    }
    if let Some(t) = int(spec, "leaseTransitions") {
        if t < 0 {
            errs.push(FieldError::invalid(
                path.child("leaseTransitions"),
                Value::from(t),
                "must be greater than or equal to 0",
            ));
        }
    }
    let strategy = json::opt_string(spec, "strategy").unwrap_or("");
    if !strategy.is_empty() {
        let sp = path.child("strategy");
        if strategy.contains('/') {
            errs.extend(meta::validate_qualified_name(strategy, &sp));
        } else if strategy != "OldestEmulationVersion" {
            errs.push(FieldError::not_supported(
                &sp,
                Value::from(strategy),
                &["OldestEmulationVersion"],
            ));
        }
    }
    if json::opt_string(spec, "preferredHolder").is_some_and(|h| !h.is_empty())
        && strategy.is_empty()
    {
        errs.push(FieldError::forbidden(
            path.child("preferredHolder"),
            "may only be specified if `strategy` is defined",
        ));
    }
    errs
}

/// Validation of a Lease update.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_create(new));
    errs
}
