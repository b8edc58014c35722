//! Server-side table printing for Sluice.
//!
//! When kubectl lists or gets objects it asks for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, and expects the
//! server to answer with a `meta.k8s.io/v1` `Table`: column definitions plus
//! one row of already-formatted cells per object. This crate renders those
//! tables the way kube-apiserver's printers (`pkg/printers/internalversion`)
//! do, so `kubectl get` output looks like it does against Kubernetes.
//!
//! Data flow: the API server passes the stored objects (full JSON with
//! `apiVersion`/`kind`/`metadata`) and the current time to [`table`] (or
//! [`row`] for a single object, e.g. on watch events). Per kind, a printer
//! reads the JSON tolerantly (missing `spec`/`status` fields are treated as
//! Go zero values, never a panic), computes the cells, including the wide
//! (`priority: 1`) ones, which kubectl hides unless `-o wide`, and the row's
//! `object` is filled according to [`IncludeObject`]. Age cells are
//! formatted with [`human_duration`] semantics relative to `now`.
//!
//! Kinds with a dedicated printer: Pod, Service, Node, Namespace, Endpoints,
//! EndpointSlice, Deployment, ReplicaSet, Lease, ConfigMap, Secret,
//! ServiceAccount and Event. Every other kind gets the generic Name +
//! Created At columns of the apiserver's default table convertor.
//!
//! Printers are chosen by kind string. The one name two served groups share,
//! `Event` (core/v1 and events.k8s.io/v1), has one set of columns upstream
//! too; its printer reads each object by its own `apiVersion`.

mod columns;
mod duration;
mod json;
mod kinds;
mod labels;
mod pod;
#[cfg(test)]
mod tests;

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Map, Value};

/// What each row's `object` holds (query parameter `includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `includeObject=None`: the row's object is `null`.
    None,
    /// `includeObject=Metadata` (the default): a `PartialObjectMetadata`
    /// carrying only the object's metadata.
    #[default]
    Metadata,
    /// `includeObject=Object`: the full object as stored.
    Object,
}

/// The cells of one row, plus the row conditions some printers set.
pub(crate) struct Printed {
    pub(crate) cells: Vec<Value>,
    pub(crate) conditions: Vec<Value>,
}

impl Printed {
    /// A row without conditions.
    pub(crate) fn cells(cells: Vec<Value>) -> Self {
        Printed {
            cells,
            conditions: Vec::new(),
        }
    }
}

/// Column definitions for `kind` (by kind name: "Pod", "Service", "Node",
/// "Namespace", "Endpoints", "EndpointSlice", "Deployment", "ReplicaSet",
/// "Lease", "ConfigMap", "Secret", "ServiceAccount", "Event" (either
/// group); any other kind gets the default Name + Created At columns). Each definition
/// has `name`, `type`, `format`, `description` and `priority`.
pub fn column_definitions(kind: &str) -> Vec<Value> {
    columns::for_kind(kind)
        .iter()
        .map(columns::Column::to_json)
        .collect()
}

/// One table row `{"cells":[...],"object":...}` for `obj`, the full object
/// JSON as stored. Pods in phase Succeeded or Failed also carry the
/// `conditions` the apiserver sets (`Completed`). Cells always include the
/// wide (priority 1) columns.
pub fn row(kind: &str, obj: &Value, now: Timestamp, include: IncludeObject) -> Value {
    let printed = match kind {
        "Pod" => pod::print(obj, now),
        "Service" => kinds::service(obj, now),
        "Node" => kinds::node(obj, now),
        "Namespace" => kinds::namespace(obj, now),
        "Endpoints" => kinds::endpoints(obj, now),
        "EndpointSlice" => kinds::endpoint_slice(obj, now),
        "Deployment" => kinds::deployment(obj, now),
        "Lease" => kinds::lease(obj, now),
        "ReplicaSet" => kinds::replica_set(obj, now),
        "ConfigMap" => kinds::config_map(obj, now),
        "Secret" => kinds::secret(obj, now),
        "ServiceAccount" => kinds::service_account(obj, now),
        "Event" => kinds::event(obj, now),
        _ => kinds::default(obj),
    };
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
        IncludeObject::Object => obj.clone(),
    };
    let mut out = Map::new();
    out.insert("cells".to_string(), Value::Array(printed.cells));
    if !printed.conditions.is_empty() {
        out.insert("conditions".to_string(), Value::Array(printed.conditions));
    }
    out.insert("object".to_string(), object);
    Value::Object(out)
}

/// A whole `meta.k8s.io/v1` `Table` for `objs` of `kind`. The list metadata
/// carries `resourceVersion` and, when given, `continue` (both omitted when
/// empty, as Go's `omitempty` does).
pub fn table(
    kind: &str,
    objs: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    now: Timestamp,
    include: IncludeObject,
) -> Value {
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".to_string(), json!(resource_version));
    }
    if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
        metadata.insert("continue".to_string(), json!(token));
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": objs.iter().map(|o| row(kind, o, now, include)).collect::<Vec<_>>(),
    })
}

/// kubectl-style short human duration (apimachinery `duration.HumanDuration`):
/// seconds below 2m ("0s", "119s"), minutes and seconds below 10m ("2m5s"),
/// minutes below 3h ("15m", "179m"), hours and minutes below 8h ("3h20m"),
/// hours below 2d ("47h"), days and hours below 8d ("2d3h"), days below 2y
/// ("400d"), years and days below 8y ("3y45d"), then years ("9y"). Age cells
/// show `"<unknown>"` instead when the timestamp is missing.
pub fn human_duration(d: Duration) -> String {
    duration::format_seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
