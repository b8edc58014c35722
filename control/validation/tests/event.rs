//! core/v1 and events.k8s.io/v1 Event validation.

mod common;

use common::{assert_valid, create_errors, decode, one};
use serde_json::{json, Value};
use sluice_validation::{invalid_status_message, validate_update, Kind};

fn core_event() -> Value {
    json!({"apiVersion": "v1", "kind": "Event",
           "metadata": {"name": "web-1.17a", "namespace": "default"},
           "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-1"},
           "reason": "Pulled", "message": "Pulled image", "type": "Normal",
           "source": {"component": "kubelet", "host": "node-1"},
           "firstTimestamp": "2024-06-01T11:00:00Z", "lastTimestamp": "2024-06-01T11:59:00Z",
           "count": 3})
}

fn v1_event() -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
           "metadata": {"name": "web-1.17b", "namespace": "default"},
           "eventTime": "2024-06-01T11:00:00.000000Z",
           "regarding": {"kind": "Pod", "namespace": "default", "name": "web-1"},
           "reason": "Scheduled", "note": "Successfully assigned", "type": "Normal",
           "action": "Binding", "reportingController": "default-scheduler",
           "reportingInstance": "default-scheduler-node-1"})
}

#[test]
fn core_event_legacy_rules() {
    assert_valid(&create_errors(Kind::Event, core_event()));
    // core/v1 accepts what events.k8s.io/v1 would not (no type, counts,
    // deprecated timestamps), for old clients.
    let mut loose = core_event();
    loose["type"] = json!("Custom");
    loose["metadata"]["name"] = json!("Web_1:x");
    assert_valid(&create_errors(Kind::Event, loose));

    let mut other_ns = core_event();
    other_ns["involvedObject"]["namespace"] = json!("kube-system");
    let errs = create_errors(Kind::Event, other_ns);
    assert_eq!(
        one(&errs, "involvedObject.namespace").message(),
        r#"involvedObject.namespace: Invalid value: "kube-system": does not match event.namespace"#
    );
    assert_eq!(
        invalid_status_message(Kind::Event, "web-1.17a", &errs),
        r#"Event "web-1.17a" is invalid: involvedObject.namespace: Invalid value: "kube-system": does not match event.namespace"#
    );

    // A cluster-scoped object's events live in "default" (or "").
    let mut node = core_event();
    node["involvedObject"] = json!({"kind": "Node", "name": "node-1"});
    assert_valid(&create_errors(Kind::Event, node.clone()));
    node["metadata"]["namespace"] = json!("team-a");
    let errs = create_errors(Kind::Event, node);
    assert_eq!(
        one(&errs, "involvedObject.namespace").message(),
        r#"involvedObject.namespace: Invalid value: "": does not match event.namespace"#
    );

    let mut slash = core_event();
    slash["metadata"]["name"] = json!("a/b");
    let errs = create_errors(Kind::Event, slash);
    assert_eq!(
        one(&errs, "metadata.name").message(),
        r#"metadata.name: Invalid value: "a/b": may not contain '/'"#
    );
}

#[test]
fn core_event_with_event_time_needs_reporting_fields() {
    let mut ev = core_event();
    ev["eventTime"] = json!("2024-06-01T11:00:00.000000Z");
    ev["reason"] = json!("r".repeat(129));
    ev["message"] = json!("m".repeat(1025));
    let errs = create_errors(Kind::Event, ev);
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            "reportingController: Required value",
            r#"reportingController: Invalid value: "": name part must be non-empty"#,
            r#"reportingController: Invalid value: "": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
            "reportingInstance: Required value",
            "action: Required value",
            r#"reason: Invalid value: "": can have at most 128 characters"#,
            r#"message: Invalid value: "": can have at most 1024 characters"#,
        ]
    );
}

#[test]
fn events_v1_strict_rules() {
    assert_valid(&create_errors(Kind::EventsV1Event, v1_event()));

    let mut ev = v1_event();
    for k in ["eventTime", "reportingController", "action"] {
        ev.as_object_mut().map(|o| o.remove(k));
    }
    ev["type"] = json!("Info");
    ev["note"] = json!("n".repeat(1025));
    ev["deprecatedCount"] = json!(2);
    ev["deprecatedSource"] = json!({"component": "kubelet"});
    ev["series"] = json!({"count": 1, "lastObservedTime": "2024-06-01T11:00:00.000000Z"});
    let errs = create_errors(Kind::EventsV1Event, ev);
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            r#"series.count: Invalid value: "": should be at least 2"#,
            "eventTime: Required value",
            r#"type: Invalid value: "": has invalid value: Info"#,
            r#"count: Invalid value: "": needs to be unset"#,
            r#"source: Invalid value: "": needs to be unset"#,
        ]
    );

    // With an eventTime the legacy reporting checks apply too; the note is
    // reported as `message`, upstream's internal name.
    let mut ev = v1_event();
    ev["note"] = json!("n".repeat(1025));
    ev["reportingInstance"] = json!("");
    ev["deprecatedFirstTimestamp"] = json!("2024-06-01T11:00:00Z");
    ev["metadata"]["name"] = json!("Bad");
    let errs = create_errors(Kind::EventsV1Event, ev);
    assert_eq!(
        one(&errs, "message").message(),
        r#"message: Invalid value: "": can have at most 1024 characters"#
    );
    assert_eq!(
        one(&errs, "reportingInstance").message(),
        "reportingInstance: Required value"
    );
    assert_eq!(
        one(&errs, "firstTimestamp").message(),
        r#"firstTimestamp: Invalid value: "": needs to be unset"#
    );
    assert!(one(&errs, "metadata.name")
        .message()
        .contains("a lowercase RFC 1123 subdomain"));
    assert_eq!(
        invalid_status_message(Kind::EventsV1Event, "x", &errs[..1]),
        r#"Event.events.k8s.io "x" is invalid: reportingInstance: Required value"#
    );

    // A cluster-scoped regarding object: events in default or kube-system.
    let mut node = v1_event();
    node["regarding"] = json!({"kind": "Node", "name": "node-1"});
    node["metadata"]["namespace"] = json!("kube-system");
    assert_valid(&create_errors(Kind::EventsV1Event, node.clone()));
    node["metadata"]["namespace"] = json!("team-a");
    let errs = create_errors(Kind::EventsV1Event, node);
    assert_eq!(
        one(&errs, "involvedObject.namespace").message(),
        r#"involvedObject.namespace: Invalid value: "": does not match event.namespace"#
    );
}

#[test]
fn events_v1_update_immutability() {
    let old = decode(Kind::EventsV1Event, v1_event());
    let mut new = old.clone();
    new["note"] = json!("changed");
    new["reason"] = json!("Other");
    new["series"] = json!({"count": 2, "lastObservedTime": "2024-06-01T11:30:00.000000Z"});
    let errs = validate_update(Kind::EventsV1Event, &old, &new);
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            r#"reason: Invalid value: "Other": field is immutable"#,
            r#"message: Invalid value: "changed": field is immutable"#,
        ]
    );
    let mut series_only = old.clone();
    series_only["series"] = json!({"count": 5, "lastObservedTime": "2024-06-01T11:30:00.000000Z"});
    assert_valid(&validate_update(Kind::EventsV1Event, &old, &series_only));

    // core/v1 updates only get the legacy checks.
    let old = decode(Kind::Event, core_event());
    let mut new = old.clone();
    new["count"] = json!(4);
    new["message"] = json!("again");
    assert_valid(&validate_update(Kind::Event, &old, &new));
}
