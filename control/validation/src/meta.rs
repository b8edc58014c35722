//! `ObjectMeta` validation (apimachinery's `ValidateObjectMeta` /
//! `ValidateObjectMetaUpdate`), labels, annotations and label selectors.

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json;
use crate::names::{self, NameRule};

/// Total size limit of all annotation keys and values.
pub(crate) const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// `ValidateLabels`: every key a qualified name, every value a label value.
/// Errors point at the map, not the key, as in Kubernetes.
pub(crate) fn validate_labels(labels: &[(&str, &str)], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        errs.extend(validate_label_name(k, path));
        for m in names::is_valid_label_value(v) {
            errs.push(FieldError::invalid(path, Value::from(*v), m));
        }
    }
    errs
}

/// `ValidateLabelName`.
pub(crate) fn validate_label_name(name: &str, path: &Path) -> Vec<FieldError> {
    names::is_qualified_name(name)
        .into_iter()
        .map(|m| FieldError::invalid(path, Value::from(name), m))
        .collect()
}

/// `ValidateQualifiedName`.
pub(crate) fn validate_qualified_name(name: &str, path: &Path) -> Vec<FieldError> {
    validate_label_name(name, path)
}

/// `ValidateAnnotations`: keys are qualified names (case-insensitively) and the
/// total size is at most 256 KiB.
pub(crate) fn validate_annotations(annotations: &[(&str, &str)], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations {
        for m in names::is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid(path, Value::from(*k), m));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

/// `ValidateDNS1123Label` on a field.
pub(crate) fn validate_dns1123_label(value: &str, path: &Path) -> Vec<FieldError> {
    names::is_dns1123_label(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, Value::from(value), m))
        .collect()
}

/// `ValidateDNS1123Subdomain` on a field.
pub(crate) fn validate_dns1123_subdomain(value: &str, path: &Path) -> Vec<FieldError> {
    names::is_dns1123_subdomain(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, Value::from(value), m))
        .collect()
}

/// `ValidateNonnegativeField`.
pub(crate) fn validate_nonnegative(value: i64, path: &Path) -> Vec<FieldError> {
    if value < 0 {
        vec![FieldError::invalid(
            path,
            Value::from(value),
            "must be greater than or equal to 0",
        )]
    } else {
        Vec::new()
    }
}

/// `ValidateObjectMeta` for a new object. `meta` is the `metadata` value.
///
/// A name may be empty when `generateName` is set: the server generates the
/// name (and may validate the result) after this call.
pub(crate) fn validate_object_meta(
    meta: Option<&Value>,
    namespaced: bool,
    rule: NameRule,
) -> Vec<FieldError> {
    let null = Value::Null;
    let meta = meta.unwrap_or(&null);
    let path = Path::new("metadata");
    let mut errs = Vec::new();

    let generate_name = json::string(meta, "generateName");
    if !generate_name.is_empty() {
        for m in names::name_errors(rule, generate_name, true) {
            errs.push(FieldError::invalid(
                path.child("generateName"),
                Value::from(generate_name),
                m,
            ));
        }
    }
    let name = json::string(meta, "name");
    if name.is_empty() {
        if generate_name.is_empty() {
            errs.push(FieldError::required(
                path.child("name"),
                "name or generateName is required",
            ));
        }
    } else {
        for m in names::name_errors(rule, name, false) {
            errs.push(FieldError::invalid(
                path.child("name"),
                Value::from(name),
                m,
            ));
        }
    }

    let namespace = json::string(meta, "namespace");
    if namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required(path.child("namespace"), ""));
        } else {
            for m in names::is_dns1123_label(namespace) {
                errs.push(FieldError::invalid(
                    path.child("namespace"),
                    Value::from(namespace),
                    m,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            path.child("namespace"),
            "not allowed on this type",
        ));
    }

    if let Some(g) = json::int(meta, "generation") {
        errs.extend(validate_nonnegative(g, &path.child("generation")));
    }
    errs.extend(validate_common_meta(meta, &path));
    errs
}

/// The part of meta validation shared by create and update: labels,
/// annotations, owner references, finalizers.
fn validate_common_meta(meta: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    errs.extend(validate_labels(
        &json::string_map(meta, "labels"),
        &path.child("labels"),
    ));
    errs.extend(validate_annotations(
        &json::string_map(meta, "annotations"),
        &path.child("annotations"),
    ));
    errs.extend(validate_owner_references(
        json::list(meta, "ownerReferences"),
        &path.child("ownerReferences"),
    ));
    errs.extend(validate_finalizers(
        &json::strings(meta, "finalizers"),
        &path.child("finalizers"),
    ));
    errs
}

/// `ValidateOwnerReferences` (paths are not indexed, as in Kubernetes).
fn validate_owner_references(refs: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut first_controller: Option<String> = None;
    for r in refs {
        let api_version = json::string(r, "apiVersion");
        let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
        if version.is_empty() {
            errs.push(FieldError::invalid(
                path.child("apiVersion"),
                Value::from(api_version),
                "version must not be empty",
            ));
        }
        let kind = json::string(r, "kind");
        if kind.is_empty() {
            errs.push(FieldError::invalid(
                path.child("kind"),
                Value::from(kind),
                "must not be empty",
            ));
        }
        let name = json::string(r, "name");
        if name.is_empty() {
            errs.push(FieldError::invalid(
                path.child("name"),
                Value::from(name),
                "must not be empty",
            ));
        }
        let uid = json::string(r, "uid");
        if uid.is_empty() {
            errs.push(FieldError::invalid(
                path.child("uid"),
                Value::from(uid),
                "must not be empty",
            ));
        }
        if json::get(r, "controller").and_then(Value::as_bool) == Some(true) {
            let current = format!("{kind}/{name}");
            match &first_controller {
                Some(first) => errs.push(FieldError::invalid(
                    path,
                    Value::Array(refs.to_vec()),
                    format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                )),
                None => first_controller = Some(current),
            }
        }
    }
    errs
}

/// `ValidateFinalizers`.
fn validate_finalizers(finalizers: &[&str], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for f in finalizers {
        errs.extend(validate_qualified_name(f, path));
    }
    if finalizers.contains(&"orphan") && finalizers.contains(&"foregroundDeletion") {
        errs.push(FieldError::invalid(
            path,
            Value::from(finalizers.to_vec()),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    errs
}

/// `ValidateObjectMetaUpdate`, minus what the server owns: name and namespace
/// immutability, resourceVersion presence and generation are checked by the
/// caller. Checks uid/creationTimestamp immutability (when both sides carry
/// one), no new finalizers once deletion started, and the new labels,
/// annotations, owner references and finalizers.
pub(crate) fn validate_object_meta_update(
    new: Option<&Value>,
    old: Option<&Value>,
) -> Vec<FieldError> {
    let null = Value::Null;
    let new = new.unwrap_or(&null);
    let old = old.unwrap_or(&null);
    let path = Path::new("metadata");
    let mut errs = Vec::new();

    if json::get(old, "deletionTimestamp").is_some() {
        let old_f = json::strings(old, "finalizers");
        let mut extra: Vec<&str> = json::strings(new, "finalizers")
            .into_iter()
            .filter(|f| !old_f.contains(f))
            .collect();
        extra.sort();
        extra.dedup();
        if !extra.is_empty() {
            let quoted: Vec<String> = extra.iter().map(|f| crate::field::go_quote(f)).collect();
            errs.push(FieldError::forbidden(
                path.child("finalizers"),
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    quoted.join(", ")
                ),
            ));
        }
    }

    for key in ["uid", "creationTimestamp"] {
        let (n, o) = (json::string(new, key), json::string(old, key));
        if !n.is_empty() && !o.is_empty() && n != o {
            errs.push(FieldError::invalid(
                path.child(key),
                Value::from(n),
                "field is immutable",
            ));
        }
    }
    errs.extend(validate_common_meta(new, &path));
    errs
}

/// `ValidateImmutableField`: `field is immutable` when the values differ.
pub(crate) fn validate_immutable(
    new: Option<&Value>,
    old: Option<&Value>,
    path: &Path,
) -> Vec<FieldError> {
    if json::semantic_eq(new, old) {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            path,
            new.cloned().unwrap_or(Value::Null),
            "field is immutable",
        )]
    }
}

/// `ValidateLabelSelector` (strict label values).
pub(crate) fn validate_label_selector(selector: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = validate_labels(
        &json::string_map(selector, "matchLabels"),
        &path.child("matchLabels"),
    );
    for (i, expr) in json::list(selector, "matchExpressions").iter().enumerate() {
        let p = path.child("matchExpressions").index(i);
        let op = json::string(expr, "operator");
        let values = json::list(expr, "values");
        match op {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(FieldError::required(
                        p.child("values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(FieldError::forbidden(
                        p.child("values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            _ => errs.push(FieldError::invalid(
                p.child("operator"),
                Value::from(op),
                "not a valid selector operator",
            )),
        }
        errs.extend(validate_label_name(
            json::string(expr, "key"),
            &p.child("key"),
        ));
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or("");
            for m in names::is_valid_label_value(v) {
                errs.push(FieldError::invalid(
                    p.child("values").index(j),
                    Value::from(v),
                    m,
                ));
            }
        }
    }
    errs
}

/// Whether a label selector matches a label set (`LabelSelectorAsSelector` +
/// `Matches`). An empty selector matches everything.
pub(crate) fn selector_matches(selector: &Value, labels: &[(&str, &str)]) -> bool {
    let lookup = |k: &str| labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v);
    let labels_ok = json::string_map(selector, "matchLabels")
        .iter()
        .all(|(k, v)| lookup(k) == Some(*v));
    let exprs_ok = json::list(selector, "matchExpressions").iter().all(|e| {
        let key = json::string(e, "key");
        let values = json::strings(e, "values");
        match json::string(e, "operator") {
            "In" => lookup(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => lookup(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => lookup(key).is_some(),
            "DoesNotExist" => lookup(key).is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selector_matching() {
        let labels = [("app", "web"), ("tier", "fe")];
        assert!(selector_matches(&json!({}), &labels));
        assert!(selector_matches(
            &json!({"matchLabels": {"app": "web"}}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"app": "db"}}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}),
            &labels
        ));
    }

    #[test]
    fn annotation_size() {
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let errs = validate_annotations(&[("a", big.as_str())], &Path::new("metadata.annotations"));
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].message(),
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
    }
}
