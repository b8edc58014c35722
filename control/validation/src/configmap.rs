//! ConfigMap (core/v1) validation (`ValidateConfigMap`,
//! `ValidateConfigMapUpdate`), plus the key and size rules Secrets share.

use serde_json::{Map, Value};

use crate::field::{FieldError, Path};
use crate::json::{self, get};
use crate::meta;
use crate::names::{self, NameRule};

/// `MaxSecretSize`: the limit on the summed value sizes of a ConfigMap or
/// a Secret (1 MiB), so that the object fits etcd's request limit.
pub(crate) const MAX_SIZE: usize = 1024 * 1024;

/// `field is immutable when `immutable` is set`, the message of every
/// change to an immutable ConfigMap or Secret.
pub(crate) const IMMUTABLE_SET: &str = "field is immutable when `immutable` is set";

/// The byte length of a base64 `[]byte` value as the decoder sees it (the
/// value was already checked by `normalize`; undecodable counts as empty).
pub(crate) fn decoded_len(v: &Value) -> usize {
    serde_json::from_value::<k8s_openapi::ByteString>(v.clone()).map_or(0, |b| b.0.len())
}

/// The map under `key`, sorted by key (Go's map order is random; sorted
/// keeps our error lists stable).
pub(crate) fn sorted_entries<'a>(obj: &'a Value, key: &str) -> Vec<(&'a String, &'a Value)> {
    let mut entries: Vec<(&String, &Value)> = json::object(obj, key)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// `IsConfigMapKey` on one key of the map at `path`.
pub(crate) fn validate_key(key: &str, path: &Path) -> Vec<FieldError> {
    names::is_config_map_key(key)
        .into_iter()
        .map(|m| FieldError::invalid(path.key(key), Value::from(key), m))
        .collect()
}

/// Whether the object has `immutable: true`.
pub(crate) fn is_immutable(obj: &Value) -> bool {
    json::flag(obj, "immutable")
}

/// Map equality for the immutability checks: absent and `{}` are the same
/// (the stored JSON drops empty maps), but an added key with an empty value
/// is a change, which `json::semantic_eq` would not see.
pub(crate) fn same_map(old: &Value, new: &Value, key: &str) -> bool {
    let empty = Map::new();
    json::object(old, key).unwrap_or(&empty) == json::object(new, key).unwrap_or(&empty)
}

/// Validation of a new ConfigMap.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    let binary = json::object(obj, "binaryData");
    let data_path = Path::new("data");
    let mut total = 0usize;
    for (key, value) in sorted_entries(obj, "data") {
        errs.extend(validate_key(key, &data_path));
        if binary.is_some_and(|b| b.contains_key(key)) {
            errs.push(FieldError::invalid(
                data_path.key(key),
                Value::from(key.as_str()),
                "duplicate of key present in binaryData",
            ));
        }
        total += value.as_str().map_or(0, str::len);
    }
    let binary_path = Path::new("binaryData");
    for (key, value) in sorted_entries(obj, "binaryData") {
        errs.extend(validate_key(key, &binary_path));
        total += decoded_len(value);
    }
    if total > MAX_SIZE {
        // Upstream's empty path: the error is about the whole object.
        errs.push(FieldError::too_long(Path::new(""), MAX_SIZE));
    }
    errs
}

/// Validation of a ConfigMap update: once `immutable: true`, the flag and
/// the data stay as they are.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    if is_immutable(old) {
        if !is_immutable(new) {
            errs.push(FieldError::forbidden(Path::new("immutable"), IMMUTABLE_SET));
        }
        for key in ["data", "binaryData"] {
            if !same_map(old, new, key) {
                errs.push(FieldError::forbidden(Path::new(key), IMMUTABLE_SET));
            }
        }
    }
    errs.extend(validate_create(new));
    errs
}
