//! The structured-merge-diff view of a kind: which lists are atomic, sets or
//! maps (and by which keys), which maps are atomic, and which struct fields a
//! Go object always has.
//!
//! The source is sluice-smp's patch schema: a `MergeByKey(k)` list is
//! `listType=map` keyed by `k`, `MergePrimitives` is `listType=set`, anything
//! else is atomic; objects are granular. Where upstream's OpenAPI says more
//! than the strategic-merge tags can, a small table here adds it.

use serde_json::Value;
use sluice_smp::{Field, ListStrategy, Schema};

use crate::fieldset::FieldSet;
use crate::path::PathElement;

/// One key field of a `listType=map` list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyField {
    pub name: &'static str,
    /// Upstream OpenAPI default of the key field, used when an element omits it
    /// (so `{containerPort: 80}` and `{containerPort: 80, protocol: TCP}` are
    /// the same element).
    pub default: Option<&'static str>,
}

/// How a list is identified element by element.
#[derive(Debug, Clone)]
pub(crate) enum ListKind {
    /// `listType=atomic`: the whole list is one field.
    Atomic,
    /// `listType=set`: elements identified by value (`v:`).
    Set,
    /// `listType=map`: elements identified by key fields (`k:`).
    Map(Vec<KeyField>),
}

const fn key(name: &'static str) -> KeyField {
    KeyField {
        name,
        default: None,
    }
}

/// Lists whose upstream `x-kubernetes-list-map-keys` have more fields than the
/// strategic merge key, looked up by that merge key:
/// - container ports: `containerPort`, `protocol` (default `TCP`);
/// - Service ports: `port`, `protocol` (default `TCP`);
/// - topology spread constraints: `topologyKey`, `whenUnsatisfiable`.
const MULTI_KEY_OVERRIDES: &[(&str, &[KeyField])] = &[
    (
        "containerPort",
        &[
            key("containerPort"),
            KeyField {
                name: "protocol",
                default: Some("TCP"),
            },
        ],
    ),
    (
        "port",
        &[
            key("port"),
            KeyField {
                name: "protocol",
                default: Some("TCP"),
            },
        ],
    ),
    (
        "topologyKey",
        &[key("topologyKey"), key("whenUnsatisfiable")],
    ),
];

/// The list kind of the list at `path` (field names only).
pub(crate) fn list_kind(schema: &Schema, path: &[&str]) -> ListKind {
    match schema.list_strategy(path) {
        ListStrategy::Replace => ListKind::Atomic,
        ListStrategy::MergePrimitives => ListKind::Set,
        ListStrategy::MergeByKey(merge_key) => {
            match MULTI_KEY_OVERRIDES.iter().find(|(k, _)| *k == merge_key) {
                Some((_, keys)) => ListKind::Map(keys.to_vec()),
                None => ListKind::Map(vec![key(merge_key)]),
            }
        }
    }
}

/// Whether the map at `path` is `structType=atomic` upstream (owned and
/// replaced as a whole). The patch schema cannot say so; this covers the
/// atomic structs of the served kinds:
/// - `LabelSelector` (Deployment `spec.selector`, `labelSelector`,
///   `namespaceSelector`), recognised by its field names because a Service's
///   `spec.selector` is a plain string map of the same name;
/// - `NodeSelector` (`nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`).
pub(crate) fn is_atomic_map(path: &[&str], value: &Value) -> bool {
    let Value::Object(map) = value else {
        return false;
    };
    match path {
        [.., "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution"] => true,
        [.., "selector" | "labelSelector" | "namespaceSelector"] => {
            !map.is_empty()
                && map
                    .iter()
                    .all(|(k, v)| (k == "matchLabels" || k == "matchExpressions") && !v.is_string())
        }
        _ => false,
    }
}

/// The path element identifying `element` of a list of kind `kind`, or `None`
/// when it has none (a map-list element without any key field).
pub(crate) fn element_key(kind: &ListKind, element: &Value) -> Option<PathElement> {
    match kind {
        ListKind::Atomic => None,
        ListKind::Set => Some(PathElement::Value(element.clone())),
        ListKind::Map(keys) => {
            let Value::Object(map) = element else {
                return None;
            };
            let mut fields = Vec::new();
            for key in keys {
                if let Some(v) = map.get(key.name) {
                    fields.push((key.name.to_string(), v.clone()));
                } else if let Some(default) = key.default {
                    fields.push((key.name.to_string(), Value::String(default.to_string())));
                }
            }
            // Upstream accepts a partial key but not an element with none of them.
            if fields.iter().any(|(name, _)| map.contains_key(name)) {
                Some(PathElement::key(fields))
            } else {
                None
            }
        }
    }
}

/// Whether `field` is a struct field a Go object always carries (a non-pointer
/// struct: `spec`, `status`, `metadata`, `spec.template`, `spec.strategy`).
/// In the patch tables those are exactly the non-list fields with children or
/// with `retainKeys`.
fn is_value_struct(field: &Field) -> bool {
    field.list == ListStrategy::Replace && (!field.children.is_empty() || field.retain_keys)
}

/// Add, where missing, what the Go zero value of the kind has: an empty object
/// for each always-present struct, and `containers: null` (PodSpec's
/// containers are not `omitempty`).
///
/// Comparisons run on objects padded like this so that fields created by a
/// write are recorded exactly as the apiserver records them: a map that
/// appears where Go had nothing gets a `.` entry, a struct Go always has does not.
pub(crate) fn pad_with_zero_structs(schema: &Schema, value: &mut Value) {
    // `Schema` answers lookups by path only, so the root is reached through
    // the top-level names the served kinds use.
    const TOP: &[&str] = &["metadata", "spec", "status"];
    for name in TOP {
        if let Some(field) = schema.field(&[name]) {
            pad_field(field, value);
        }
    }
}

fn pad_field(field: &Field, value: &mut Value) {
    let Value::Object(map) = value else {
        return;
    };
    if is_value_struct(field) {
        let child = map
            .entry(field.name.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
        for grandchild in field.children {
            pad_field(grandchild, child);
        }
    } else if field.name == "containers" && matches!(field.list, ListStrategy::MergeByKey(_)) {
        map.entry(field.name.to_string()).or_insert(Value::Null);
    }
}

/// Fields the apiserver resets on this write, so nobody owns them: `status`
/// on the main resource of a kind with a status subresource (those whose
/// schema has a top-level `status`), `spec` on the status subresource.
pub(crate) fn reset_fields(schema: &Schema, subresource: Option<&str>) -> FieldSet {
    let mut set = FieldSet::new();
    match subresource {
        Some("status") => set.insert(&[PathElement::Field("spec".to_string())]),
        None if schema.field(&["status"]).is_some() => {
            set.insert(&[PathElement::Field("status".to_string())])
        }
        _ => {}
    }
    set
}

/// Fields the apiserver never records as owned (its `stripMetaManager`):
/// removed path by path, so `metadata.labels` stays.
pub(crate) fn stripped_fields() -> FieldSet {
    let f = |s: &str| PathElement::Field(s.to_string());
    let mut set = FieldSet::new();
    set.insert(&[f("apiVersion")]);
    set.insert(&[f("kind")]);
    set.insert(&[f("metadata")]);
    for name in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        set.insert(&[f("metadata"), f(name)]);
    }
    set
}
