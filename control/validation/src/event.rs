//! Event validation for both APIs that serve events: core/v1 Event and
//! events.k8s.io/v1 Event (`ValidateEventCreate` / `ValidateEventUpdate`).
//!
//! Upstream both are one internal type, and the request's group/version
//! picks the rules: core/v1 only gets the legacy checks (for backwards
//! compatibility), events.k8s.io/v1 adds the strict ones. Field paths are
//! the internal type's names in both APIs, as upstream reports them
//! (`involvedObject`, `message`, `source`, `count`, ... even for an
//! events.k8s.io object, whose JSON says `regarding`, `note`,
//! `deprecatedSource`, `deprecatedCount`).

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, int};
use crate::meta;
use crate::names::{self, NameRule};

const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

/// Which API the request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// core/v1: legacy validation only.
    CoreV1,
    /// events.k8s.io/v1: legacy plus strict validation.
    EventsV1,
}

/// An event read through the internal type's field names, whichever API
/// spelled the JSON.
struct View<'a> {
    namespace: &'a str,
    involved: Option<&'a Value>,
    reason: &'a str,
    message: &'a str,
    source: Option<&'a Value>,
    first_timestamp: &'a str,
    last_timestamp: &'a str,
    count: i64,
    event_time: &'a str,
    type_: &'a str,
    action: &'a str,
    related: Option<&'a Value>,
    reporting_controller: &'a str,
    reporting_instance: &'a str,
    series: Option<&'a Value>,
}

impl<'a> View<'a> {
    fn new(obj: &'a Value, version: Version) -> View<'a> {
        // The events.k8s.io/v1 names of the internal fields that differ.
        let name = |core: &'static str, events: &'static str| match version {
            Version::CoreV1 => core,
            Version::EventsV1 => events,
        };
        View {
            namespace: get(obj, "metadata").map_or("", |m| json::string(m, "namespace")),
            involved: get(obj, name("involvedObject", "regarding")),
            reason: json::string(obj, "reason"),
            message: json::string(obj, name("message", "note")),
            source: get(obj, name("source", "deprecatedSource")),
            first_timestamp: json::string(obj, name("firstTimestamp", "deprecatedFirstTimestamp")),
            last_timestamp: json::string(obj, name("lastTimestamp", "deprecatedLastTimestamp")),
            count: int(obj, name("count", "deprecatedCount")).unwrap_or(0),
            event_time: json::string(obj, "eventTime"),
            type_: json::string(obj, "type"),
            action: json::string(obj, "action"),
            related: get(obj, "related"),
            reporting_controller: json::string(
                obj,
                name("reportingComponent", "reportingController"),
            ),
            reporting_instance: json::string(obj, "reportingInstance"),
            series: get(obj, "series"),
        }
    }

    fn involved_namespace(&self) -> &'a str {
        self.involved.map_or("", |o| json::string(o, "namespace"))
    }
}

fn too_long(path: &str, limit: usize) -> FieldError {
    FieldError::invalid(
        path,
        Value::from(""),
        format!("can have at most {limit} characters"),
    )
}

/// `legacyValidateEvent`, which every event passes whatever its API.
fn legacy(ev: &View<'_>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let involved_ns = ev.involved_namespace();
    let mismatch = || {
        FieldError::invalid(
            "involvedObject.namespace",
            Value::from(involved_ns),
            "does not match event.namespace",
        )
    };
    if ev.event_time.is_empty() {
        // Old-style events: the namespaces agree, or the object is
        // cluster-scoped and the event lives in "" or "default".
        let ok = if involved_ns.is_empty() {
            ev.namespace.is_empty() || ev.namespace == "default"
        } else {
            ev.namespace == involved_ns
        };
        if !ok {
            errs.push(mismatch());
        }
    } else {
        if involved_ns.is_empty() && ev.namespace != "default" && ev.namespace != "kube-system" {
            errs.push(mismatch());
        }
        if ev.reporting_controller.is_empty() {
            errs.push(FieldError::required("reportingController", ""));
        }
        for m in names::is_qualified_name(ev.reporting_controller) {
            errs.push(FieldError::invalid(
                "reportingController",
                Value::from(ev.reporting_controller),
                m,
            ));
        }
        for (path, value, limit) in [
            (
                "reportingInstance",
                ev.reporting_instance,
                REPORTING_INSTANCE_LIMIT,
            ),
            ("action", ev.action, ACTION_LIMIT),
            ("reason", ev.reason, REASON_LIMIT),
        ] {
            if value.is_empty() {
                errs.push(FieldError::required(path, ""));
            }
            if value.len() > limit {
                errs.push(too_long(path, limit));
            }
        }
        if ev.message.len() > NOTE_LIMIT {
            errs.push(too_long("message", NOTE_LIMIT));
        }
    }
    for m in names::is_dns1123_subdomain(ev.namespace) {
        errs.push(FieldError::invalid(
            "namespace",
            Value::from(ev.namespace),
            m,
        ));
    }
    errs
}

/// `validateV1EventSeries`.
fn series(ev: &View<'_>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(s) = ev.series {
        if int(s, "count").unwrap_or(0) < 2 {
            errs.push(FieldError::invalid(
                "series.count",
                Value::from(""),
                "should be at least 2",
            ));
        }
        if json::string(s, "lastObservedTime").is_empty() {
            errs.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
    errs
}

/// Validation of a new event.
pub(crate) fn validate_create(obj: &Value, version: Version) -> Vec<FieldError> {
    let ev = View::new(obj, version);
    let metadata = get(obj, "metadata");
    let mut errs = legacy(&ev);
    if version == Version::CoreV1 {
        // The generic store's metadata check: core/v1 events have no name
        // format beyond being a path segment.
        errs.extend(meta::validate_object_meta(
            metadata,
            true,
            NameRule::PathSegment,
        ));
        return errs;
    }
    errs.extend(meta::validate_object_meta(
        metadata,
        true,
        NameRule::Subdomain,
    ));
    errs.extend(series(&ev));
    if ev.event_time.is_empty() {
        errs.push(FieldError::required("eventTime", ""));
    }
    if ev.type_ != "Normal" && ev.type_ != "Warning" {
        errs.push(FieldError::invalid(
            "type",
            Value::from(""),
            format!("has invalid value: {}", ev.type_),
        ));
    }
    let needs_unset = |path: &str| FieldError::invalid(path, Value::from(""), "needs to be unset");
    if !ev.first_timestamp.is_empty() {
        errs.push(needs_unset("firstTimestamp"));
    }
    if !ev.last_timestamp.is_empty() {
        errs.push(needs_unset("lastTimestamp"));
    }
    if ev.count != 0 {
        errs.push(needs_unset("count"));
    }
    let source_set = ev.source.is_some_and(|s| {
        !json::string(s, "component").is_empty() || !json::string(s, "host").is_empty()
    });
    if source_set {
        errs.push(needs_unset("source"));
    }
    errs
}

/// Validation of an event update. Through events.k8s.io/v1 almost every
/// field is immutable; through core/v1 only the legacy checks apply.
pub(crate) fn validate_update(old: &Value, new: &Value, version: Version) -> Vec<FieldError> {
    let ev = View::new(new, version);
    let mut errs = legacy(&ev);
    errs.extend(meta::validate_object_meta_update(
        get(new, "metadata"),
        get(old, "metadata"),
    ));
    if version == Version::CoreV1 {
        return errs;
    }
    let prev = View::new(old, version);
    if !json::semantic_eq(ev.series, prev.series) {
        errs.extend(series(&ev));
    }
    let str_field = |s: &str| (!s.is_empty()).then(|| Value::from(s));
    let count = |c: i64| (c != 0).then(|| Value::from(c));
    let pairs: [(&str, Option<Value>, Option<Value>); 13] = [
        (
            "involvedObject",
            ev.involved.cloned(),
            prev.involved.cloned(),
        ),
        ("reason", str_field(ev.reason), str_field(prev.reason)),
        ("message", str_field(ev.message), str_field(prev.message)),
        ("source", ev.source.cloned(), prev.source.cloned()),
        (
            "firstTimestamp",
            str_field(ev.first_timestamp),
            str_field(prev.first_timestamp),
        ),
        (
            "lastTimestamp",
            str_field(ev.last_timestamp),
            str_field(prev.last_timestamp),
        ),
        ("count", count(ev.count), count(prev.count)),
        ("type", str_field(ev.type_), str_field(prev.type_)),
        (
            "eventTime",
            str_field(ev.event_time),
            str_field(prev.event_time),
        ),
        ("action", str_field(ev.action), str_field(prev.action)),
        ("related", ev.related.cloned(), prev.related.cloned()),
        (
            "reportingController",
            str_field(ev.reporting_controller),
            str_field(prev.reporting_controller),
        ),
        (
            "reportingInstance",
            str_field(ev.reporting_instance),
            str_field(prev.reporting_instance),
        ),
    ];
    for (path, n, o) in pairs {
        // An unset new value is reported as its Go zero value.
        let n = n.or_else(|| o.as_ref().map(zero_like));
        errs.extend(meta::validate_immutable(
            n.as_ref(),
            o.as_ref(),
            &Path::new(path),
        ));
    }
    errs
}

/// The Go zero value of a field of the same type as `v`.
fn zero_like(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::from(""),
        Value::Number(_) => Value::from(0),
        Value::Object(_) => Value::Object(serde_json::Map::new()),
        _ => Value::Null,
    }
}
