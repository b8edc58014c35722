//! `metadata.managedFields`: decoding, encoding, ordering and capping entries.
//!
//! Entries are identified as upstream identifies them: by manager, operation
//! and subresource, plus apiVersion for `Update` entries (an applier keeps
//! one entry across versions).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::ApplyError;
use crate::fieldset::FieldSet;

/// How a manager wrote its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Server-side apply (`application/apply-patch+yaml`).
    Apply,
    /// Create, update or a non-apply patch.
    Update,
}

impl Operation {
    /// The wire name, `Apply` or `Update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedFieldsEntry {
    /// The field manager (`kubectl`, `kube-controller-manager`).
    pub manager: String,
    /// Apply or Update.
    pub operation: Operation,
    /// The apiVersion the fields are expressed in (`apps/v1`).
    pub api_version: String,
    /// When the entry last changed, RFC 3339 in whole seconds.
    pub time: Option<String>,
    /// The subresource written through (`status`), if any.
    pub subresource: Option<String>,
    /// The owned fields (`fieldsV1`).
    pub fields: FieldSet,
}

/// Upstream's manager identifier: the entry without time, fields and fields
/// type (and without apiVersion for appliers), as Go marshals it.
pub(crate) fn identifier(
    manager: &str,
    operation: Operation,
    api_version: &str,
    subresource: Option<&str>,
) -> String {
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    let mut parts = Vec::new();
    if !manager.is_empty() {
        parts.push(format!("\"manager\":{}", quote(manager)));
    }
    parts.push(format!("\"operation\":\"{}\"", operation.as_str()));
    if operation == Operation::Update && !api_version.is_empty() {
        parts.push(format!("\"apiVersion\":{}", quote(api_version)));
    }
    if let Some(sub) = subresource.filter(|s| !s.is_empty()) {
        parts.push(format!("\"subresource\":{}", quote(sub)));
    }
    format!("{{{}}}", parts.join(","))
}

impl ManagedFieldsEntry {
    pub(crate) fn identifier(&self) -> String {
        identifier(
            &self.manager,
            self.operation,
            &self.api_version,
            self.subresource.as_deref(),
        )
    }

    /// The entry as the API serves it, fields in Go's order.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if !self.manager.is_empty() {
            map.insert("manager".into(), Value::String(self.manager.clone()));
        }
        map.insert(
            "operation".into(),
            Value::String(self.operation.as_str().into()),
        );
        map.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(time) = &self.time {
            map.insert("time".into(), Value::String(time.clone()));
        }
        map.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        map.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if let Some(sub) = self.subresource.as_ref().filter(|s| !s.is_empty()) {
            map.insert("subresource".into(), Value::String(sub.clone()));
        }
        Value::Object(map)
    }

    /// Parse and validate one entry as upstream's `DecodeManagedFields` does.
    pub fn from_json(value: &Value, index: usize) -> Result<ManagedFieldsEntry, String> {
        let Value::Object(map) = value else {
            return Err(format!("managed fields entry {index} must be an object"));
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or("");
        let operation = match text("operation") {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return Err("operation must be `Apply` or `Update`".to_string()),
        };
        if text("apiVersion").is_empty() {
            return Err("apiVersion must not be empty".to_string());
        }
        match text("fieldsType") {
            "FieldsV1" => {}
            "" => {
                return Err(format!(
                    "missing fieldsType in managed fields entry {index}"
                ))
            }
            other => {
                return Err(format!(
                    "invalid fieldsType {other:?} in managed fields entry {index}"
                ))
            }
        }
        let fields = match map.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::new(),
            Some(v) => FieldSet::from_fields_v1(v).map_err(|e| e.to_string())?,
        };
        Ok(ManagedFieldsEntry {
            manager: text("manager").to_string(),
            operation,
            api_version: text("apiVersion").to_string(),
            time: map.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: Some(text("subresource"))
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            fields,
        })
    }

    fn seconds(&self) -> i64 {
        self.time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second())
    }
}

/// The entries of an object by identifier (a later duplicate wins, as in
/// upstream's map).
pub(crate) type Managers = BTreeMap<String, ManagedFieldsEntry>;

/// The `metadata.managedFields` of `obj` (empty when absent or null), validated.
pub fn managed_fields(obj: &Value) -> Result<Vec<ManagedFieldsEntry>, ApplyError> {
    Ok(decode(obj)?.into_values().collect())
}

pub(crate) fn raw_managed_fields(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?
        .get("managedFields")
        .filter(|v| !v.is_null())
}

pub(crate) fn decode(obj: &Value) -> Result<Managers, ApplyError> {
    let mut out = Managers::new();
    let Some(raw) = raw_managed_fields(obj) else {
        return Ok(out);
    };
    let Value::Array(list) = raw else {
        return Err(ApplyError::InvalidManagedFields(
            "metadata.managedFields must be a list".to_string(),
        ));
    };
    for (i, item) in list.iter().enumerate() {
        let entry =
            ManagedFieldsEntry::from_json(item, i).map_err(ApplyError::InvalidManagedFields)?;
        out.insert(entry.identifier(), entry);
    }
    Ok(out)
}

/// Remove `metadata.managedFields` from `obj`.
pub(crate) fn strip(obj: &mut Value) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("managedFields");
    }
}

/// Write `entries` into `obj.metadata.managedFields` in the apiserver's order
/// (operation, time, manager, apiVersion, subresource); none removes the field.
pub fn set_managed_fields(obj: &mut Value, mut entries: Vec<ManagedFieldsEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|p, q| {
        p.operation
            .cmp(&q.operation)
            .then_with(|| p.seconds().cmp(&q.seconds()))
            .then_with(|| p.manager.cmp(&q.manager))
            .then_with(|| p.api_version.cmp(&q.api_version))
            .then_with(|| p.subresource.cmp(&q.subresource))
    });
    let Value::Object(root) = obj else { return };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else { return };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(ManagedFieldsEntry::to_json).collect()),
        );
    }
}

/// Upstream `DefaultMaxUpdateManagers`: at most this many Update entries are kept.
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// Upstream's bucket for the oldest Update entries beyond the cap.
pub const ANCIENT_CHANGES_MANAGER: &str = "ancient-changes";

/// Merge the oldest Update entries into `ancient-changes` (one per apiVersion)
/// until at most [`MAX_UPDATE_MANAGERS`] Update entries remain.
pub(crate) fn cap_update_managers(managers: &mut Managers) {
    let mut updaters: Vec<(i64, String)> = managers
        .iter()
        .filter(|(_, e)| e.operation == Operation::Update)
        .map(|(id, e)| (e.seconds(), id.clone()))
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort();
    let mut length = updaters.len();
    let mut first_by_version: BTreeMap<String, String> = BTreeMap::new();
    for (_, id) in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(entry) = managers.get(&id).cloned() else {
            continue;
        };
        let version = entry.api_version.clone();
        let bucket = identifier(ANCIENT_CHANGES_MANAGER, Operation::Update, &version, None);
        match first_by_version.get(&version) {
            Some(first) => {
                if !managers.contains_key(&bucket) {
                    if let Some(mut oldest) = managers.remove(first) {
                        oldest.manager = ANCIENT_CHANGES_MANAGER.to_string();
                        oldest.subresource = None;
                        managers.insert(bucket.clone(), oldest);
                    }
                }
                if let Some(b) = managers.get_mut(&bucket) {
                    b.fields = entry.fields.union(&b.fields);
                    b.time = entry.time.clone();
                }
                managers.remove(&id);
                length -= 1;
            }
            None => {
                first_by_version.insert(version, id);
            }
        }
    }
}
