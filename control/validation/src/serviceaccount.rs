//! ServiceAccount (core/v1) validation: only the metadata
//! (`ValidateServiceAccount`: a DNS-1123 subdomain name).

use serde_json::Value;

use crate::field::FieldError;
use crate::json::get;
use crate::meta;
use crate::names::NameRule;

/// Validation of a new ServiceAccount.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain)
}

/// Validation of a ServiceAccount update.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_create(new));
    errs
}
