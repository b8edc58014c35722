//! Secret (core/v1) validation (`ValidateSecret`, `ValidateSecretUpdate`):
//! ConfigMap-style keys and size, the per-type required keys, and type and
//! `immutable` rules on update. `stringData` has been merged into `data` by
//! defaulting before this runs, as conversion does upstream.

use serde_json::Value;

use crate::configmap::{
    decoded_len, is_immutable, same_map, sorted_entries, validate_key, IMMUTABLE_SET, MAX_SIZE,
};
use crate::field::{FieldError, Path};
use crate::json::{self, get};
use crate::meta;
use crate::names::NameRule;

/// The annotation a service-account token Secret names its account with.
pub(crate) const SERVICE_ACCOUNT_NAME_KEY: &str = "kubernetes.io/service-account.name";

/// The value upstream reports instead of a malformed docker config.
const REDACTED: &str = "<secret contents redacted>";

/// Validation of a new Secret.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    let data_path = Path::new("data");
    let data = sorted_entries(obj, "data");
    let mut total = 0usize;
    for (key, value) in &data {
        errs.extend(validate_key(key, &data_path));
        total += decoded_len(value);
    }
    if total > MAX_SIZE {
        errs.push(FieldError::too_long(&data_path, MAX_SIZE));
    }
    let value_of = |k: &str| data.iter().find(|(key, _)| key.as_str() == k).map(|e| e.1);
    let required = |k: &str| FieldError::required(data_path.key(k), "");
    match json::string(obj, "type") {
        "kubernetes.io/service-account-token" => {
            let annotations = get(obj, "metadata")
                .map(|m| json::string_map(m, "annotations"))
                .unwrap_or_default();
            let named = annotations
                .iter()
                .any(|(k, v)| *k == SERVICE_ACCOUNT_NAME_KEY && !v.is_empty());
            if !named {
                errs.push(FieldError::required(
                    Path::new("metadata")
                        .child("annotations")
                        .key(SERVICE_ACCOUNT_NAME_KEY),
                    "",
                ));
            }
        }
        ty @ ("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson") => {
            let key = if ty == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            match value_of(key) {
                None => errs.push(required(key)),
                Some(v) => {
                    let bytes = serde_json::from_value::<k8s_openapi::ByteString>(v.clone())
                        .map(|b| b.0)
                        .unwrap_or_default();
                    if let Some(msg) = json_object_error(&bytes) {
                        errs.push(FieldError::invalid(
                            data_path.key(key),
                            Value::from(REDACTED),
                            msg,
                        ));
                    }
                }
            }
        }
        // Either may be empty, but one of the keys must be there.
        "kubernetes.io/basic-auth"
            if value_of("username").is_none() && value_of("password").is_none() =>
        {
            errs.push(required("username"));
            errs.push(required("password"));
        }
        "kubernetes.io/ssh-auth"
            if value_of("ssh-privatekey").is_none_or(|v| decoded_len(v) == 0) =>
        {
            errs.push(required("ssh-privatekey"));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if value_of(key).is_none() {
                    errs.push(required(key));
                }
            }
        }
        _ => {}
    }
    errs
}

/// Why `json.Unmarshal` into a `map[string]interface{}` would fail, in Go's
/// words for the common cases (empty input, a non-object document, a bad
/// first character); other syntax errors carry serde_json's description.
fn json_object_error(bytes: &[u8]) -> Option<String> {
    let go_type = "Go value of type map[string]interface {}";
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(_) | Value::Null) => None,
        Ok(v) => {
            let what = match v {
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                _ => "bool",
            };
            Some(format!("json: cannot unmarshal {what} into {go_type}"))
        }
        Err(e) => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            Some(match first {
                None => "unexpected end of JSON input".to_string(),
                Some(&b) if !b"{[\"-0123456789tfn".contains(&b) => format!(
                    "invalid character {} looking for beginning of value",
                    go_quote_char(b)
                ),
                Some(_) if e.is_eof() => "unexpected end of JSON input".to_string(),
                Some(_) => e.to_string(),
            })
        }
    }
}

/// `encoding/json`'s `quoteChar`.
fn go_quote_char(b: u8) -> String {
    match b {
        b'\'' => r"'\''".to_string(),
        b'"' => r#"'"'"#.to_string(),
        b if b.is_ascii_graphic() || b == b' ' => format!("'{}'", b as char),
        b => format!("'\\x{b:02x}'"),
    }
}

/// Validation of a Secret update: the type never changes; once
/// `immutable: true`, the flag and the data stay as they are.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(meta::validate_immutable(
        get(new, "type"),
        get(old, "type"),
        &Path::new("type"),
    ));
    if is_immutable(old) {
        if !is_immutable(new) {
            errs.push(FieldError::forbidden(Path::new("immutable"), IMMUTABLE_SET));
        }
        if !same_map(old, new, "data") {
            errs.push(FieldError::forbidden(Path::new("data"), IMMUTABLE_SET));
        }
    }
    errs.extend(validate_create(new));
    errs
}
