//! Unit tests: field sets against upstream's `fieldsV1`, and the apply and
//! update paths against upstream's behaviour.

use jiff::Timestamp;
use serde_json::{json, Value};
use sluice_smp::{schema_for, Schema};

use crate::*;

fn deployments() -> &'static Schema {
    schema_for("apps", "Deployment").expect("Deployment schema")
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).expect("valid timestamp")
}

/// The nginx Deployment of the Kubernetes docs.
fn nginx(replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{
                    "name": "nginx",
                    "image": "nginx:1.14.2",
                    "ports": [{"containerPort": 80}]
                }]}
            }
        }
    })
}

fn entries(obj: &Value) -> Vec<ManagedFieldsEntry> {
    managed_fields(obj).expect("valid managedFields")
}

fn entry<'a>(list: &'a [ManagedFieldsEntry], manager: &str) -> &'a ManagedFieldsEntry {
    list.iter()
        .find(|e| e.manager == manager)
        .unwrap_or_else(|| panic!("no entry for {manager}"))
}

fn fields_json(obj: &Value, manager: &str) -> String {
    entry(&entries(obj), manager).fields.to_json_string()
}

#[test]
fn apply_field_set_of_a_deployment_is_upstreams() {
    // What a real apiserver records for `kubectl apply --server-side` of this
    // Deployment: selector is an atomic struct, ports are keyed by
    // containerPort and protocol (defaulted), list elements carry `.`.
    let obj = apply(None, &nginx(3), "kubectl", false, deployments(), t(0)).expect("apply");
    let expected = r#"{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#;
    assert_eq!(fields_json(&obj, "kubectl"), expected);
    let list = entries(&obj);
    let e = entry(&list, "kubectl");
    assert_eq!(e.operation, Operation::Apply);
    assert_eq!(e.api_version, "apps/v1");
    assert_eq!(e.time.as_deref(), Some("2023-11-14T22:13:20Z"));
    let raw = &obj["metadata"]["managedFields"][0];
    assert_eq!(raw["fieldsType"], "FieldsV1");
    assert_eq!(raw["operation"], "Apply");
    assert!(raw.get("subresource").is_none());
}

#[test]
fn field_set_of_includes_metadata_and_type_fields() {
    let set = FieldSet::of(&nginx(1), deployments());
    let f = |s: &str| PathElement::Field(s.to_string());
    assert!(set.has(&[f("apiVersion")]));
    assert!(set.has(&[f("metadata"), f("name")]));
    assert!(set.has(&[f("spec"), f("selector")]));
    assert!(!set.has(&[f("spec")]));
}

#[test]
fn fields_v1_round_trips_upstream_examples() {
    // From apimachinery's TestRoundTripManagedFields, in its key order.
    for text in [
        r#"{"v:3":{"f:alsoPi":{}},"v:3.1415":{"f:pi":{}},"v:false":{"f:notTrue":{}}}"#,
        r#"{"i:5":{"f:i":{}}}"#,
        r#"{"f:spec":{"f:containers":{"k:{\"name\":\"c\"}":{"f:image":{},"f:name":{}}}}}"#,
        r#"{"f:apiVersion":{},"f:kind":{},"f:metadata":{"f:labels":{"f:app":{}},"f:name":{}},"f:spec":{"f:replicas":{},"f:selector":{"f:matchLabels":{"f:app":{}}},"f:template":{"f:medatada":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"i:0":{"f:containerPort":{}}}}}}}}}"#,
    ] {
        let set = FieldSet::from_json_str(text).expect("parse");
        assert_eq!(set.to_json_string(), text);
        assert_eq!(
            FieldSet::from_fields_v1(&set.to_fields_v1()).expect("reparse"),
            set
        );
    }
}

#[test]
fn fields_v1_rejects_garbage_and_skips_unknown_types() {
    assert!(FieldSet::from_json_str(r#"{"k:notjson":{}}"#).is_err());
    assert!(FieldSet::from_json_str(r#"{"f:a":1}"#).is_err());
    assert!(FieldSet::from_json_str(r#"{"x":{}}"#).is_err());
    let set = FieldSet::from_json_str(r#"{"f:a":{},"z:b":{}}"#).expect("parse");
    assert_eq!(set.to_json_string(), r#"{"f:a":{}}"#);
}

#[test]
fn conflict_paths_print_as_upstream() {
    let key = PathElement::key(vec![
        ("protocol".into(), json!("TCP")),
        ("containerPort".into(), json!(80)),
    ]);
    let path = vec![
        PathElement::Field("spec".into()),
        PathElement::Field("ports".into()),
        key,
        PathElement::Field("name".into()),
    ];
    assert_eq!(
        path_to_string(&path),
        r#".spec.ports[containerPort=80,protocol="TCP"].name"#
    );
    assert_eq!(
        path_to_string(&[PathElement::Value(json!("a"))]),
        r#"[="a"]"#
    );
    assert_eq!(path_to_string(&[PathElement::Index(2)]), "[2]");
}

#[test]
fn create_records_update_fields_like_the_apiserver() {
    let mut obj = nginx(3);
    update_managed_fields(None, &mut obj, "kubectl-create", None, deployments(), t(0));
    // Maps and elements that appear get `.`; structs a Go Deployment always
    // has (spec, template, its metadata and spec) do not, nor do containers.
    let expected = r#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#;
    assert_eq!(fields_json(&obj, "kubectl-create"), expected);
    let list = entries(&obj);
    let e = entry(&list, "kubectl-create");
    assert_eq!(e.operation, Operation::Update);
}

#[test]
fn two_managers_with_different_fields_both_survive() {
    let a = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                   "spec": {"replicas": 2}});
    let b = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                   "spec": {"minReadySeconds": 5}});
    let obj = apply(None, &a, "alice", false, deployments(), t(0)).expect("alice");
    let obj = apply(Some(&obj), &b, "bob", false, deployments(), t(1)).expect("bob");
    assert_eq!(obj["spec"]["replicas"], 2);
    assert_eq!(obj["spec"]["minReadySeconds"], 5);
    assert_eq!(
        fields_json(&obj, "alice"),
        r#"{"f:spec":{"f:replicas":{}}}"#
    );
    assert_eq!(
        fields_json(&obj, "bob"),
        r#"{"f:spec":{"f:minReadySeconds":{}}}"#
    );
}

#[test]
fn conflicting_value_is_a_conflict_and_same_value_is_shared() {
    let mine = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                      "spec": {"replicas": 2}});
    let obj = apply(None, &mine, "alice", false, deployments(), t(0)).expect("alice");

    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"replicas": 5}});
    let err = apply(Some(&obj), &other, "bob", false, deployments(), t(1)).expect_err("conflict");
    let ApplyError::Conflicts(conflicts) = &err else {
        panic!("{err}")
    };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].manager, "alice");
    assert_eq!(conflicts[0].field, ".spec.replicas");
    assert_eq!(conflicts[0].cause_message(), r#"conflict with "alice""#);
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "alice": .spec.replicas"#
    );

    let same = apply(Some(&obj), &mine, "bob", false, deployments(), t(1)).expect("shared");
    assert_eq!(
        fields_json(&same, "alice"),
        r#"{"f:spec":{"f:replicas":{}}}"#
    );
    assert_eq!(fields_json(&same, "bob"), r#"{"f:spec":{"f:replicas":{}}}"#);
}

#[test]
fn force_moves_ownership() {
    let mine = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                      "spec": {"replicas": 2, "paused": true}});
    let obj = apply(None, &mine, "alice", false, deployments(), t(0)).expect("alice");
    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"replicas": 5}});
    let obj = apply(Some(&obj), &other, "bob", true, deployments(), t(1)).expect("forced");
    assert_eq!(obj["spec"]["replicas"], 5);
    assert_eq!(fields_json(&obj, "alice"), r#"{"f:spec":{"f:paused":{}}}"#);
    assert_eq!(fields_json(&obj, "bob"), r#"{"f:spec":{"f:replicas":{}}}"#);

    // Alice re-applying her old config now conflicts with bob.
    let err = apply(Some(&obj), &mine, "alice", false, deployments(), t(2)).expect_err("conflict");
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "bob": .spec.replicas"#
    );
}

#[test]
fn keyed_lists_merge_by_key() {
    let first = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
    "spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "nginx", "env": [{"name": "A", "value": "1"}]}
    ]}}}});
    let obj = apply(None, &first, "alice", false, deployments(), t(0)).expect("alice");
    let second = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
    "spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "envoy"},
        {"name": "web", "env": [{"name": "B", "value": "2"}]}
    ]}}}});
    let obj = apply(Some(&obj), &second, "bob", false, deployments(), t(1)).expect("bob");
    let containers = &obj["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers,
        &json!([
            {"name": "sidecar", "image": "envoy"},
            {"name": "web", "image": "nginx",
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
        ])
    );
    // Set lists union; atomic lists are replaced.
    let sets = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "finalizers": ["a"]},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "args": ["x", "y"]}]}}}});
    let obj = apply(Some(&obj), &sets, "carol", false, deployments(), t(2)).expect("carol");
    let more = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "finalizers": ["b"]}});
    let obj = apply(Some(&obj), &more, "dave", false, deployments(), t(3)).expect("dave");
    assert_eq!(obj["metadata"]["finalizers"], json!(["a", "b"]));
    assert_eq!(
        fields_json(&obj, "dave"),
        r#"{"f:metadata":{"f:finalizers":{"v:\"b\"":{}}}}"#
    );
    let web = &obj["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(web["args"], json!(["x", "y"]));
}

#[test]
fn dropped_fields_are_removed_unless_someone_else_owns_them() {
    let full = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"a": "1", "b": "2"}},
        "spec": {"replicas": 2, "paused": true}});
    let obj = apply(None, &full, "alice", false, deployments(), t(0)).expect("alice");
    // Bob shares label b (same value: no conflict).
    let bob = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"b": "2"}}});
    let obj = apply(Some(&obj), &bob, "bob", false, deployments(), t(1)).expect("bob");
    let less = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "labels": {}}, "spec": {"replicas": 2}});
    let obj = apply(Some(&obj), &less, "alice", false, deployments(), t(2)).expect("alice again");
    assert_eq!(obj["metadata"]["labels"], json!({"b": "2"}));
    assert!(obj["spec"].get("paused").is_none());
    assert_eq!(obj["spec"]["replicas"], 2);

    // Fields owned by an Update manager survive too.
    let mut updated = obj.clone();
    updated["spec"]["minReadySeconds"] = json!(3);
    update_managed_fields(
        Some(&obj),
        &mut updated,
        "kubectl-edit",
        None,
        deployments(),
        t(3),
    );
    let with_mrs = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 2, "minReadySeconds": 3}});
    let obj = apply(
        Some(&updated),
        &with_mrs,
        "alice",
        false,
        deployments(),
        t(4),
    )
    .expect("share");
    let without = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 2}});
    let obj = apply(Some(&obj), &without, "alice", false, deployments(), t(5)).expect("drop");
    assert_eq!(obj["spec"]["minReadySeconds"], 3);
}

#[test]
fn dropped_list_elements_are_removed() {
    let two = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
    "spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}
    ]}}}});
    let obj = apply(None, &two, "alice", false, deployments(), t(0)).expect("alice");
    let one = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
    let obj = apply(Some(&obj), &one, "alice", false, deployments(), t(1)).expect("alice");
    assert_eq!(
        obj["spec"]["template"]["spec"]["containers"],
        json!([{"name": "web", "image": "nginx"}])
    );
}

#[test]
fn apply_creates_from_nothing() {
    let obj = apply(None, &nginx(3), "kubectl", false, deployments(), t(0)).expect("apply");
    let mut without = obj.clone();
    without["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("managedFields");
    assert_eq!(without, nginx(3));
    assert_eq!(entries(&obj).len(), 1);
}

#[test]
fn created_object_then_applied_conflicts_on_changed_replicas_only() {
    let mut created = nginx(3);
    update_managed_fields(
        None,
        &mut created,
        "kubectl-create",
        None,
        deployments(),
        t(0),
    );

    let err = apply(
        Some(&created),
        &nginx(5),
        "kubectl",
        false,
        deployments(),
        t(1),
    )
    .expect_err("conflict");
    let ApplyError::Conflicts(conflicts) = &err else {
        panic!("{err}")
    };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].field, ".spec.replicas");
    assert_eq!(
        conflicts[0].cause_message(),
        r#"conflict with "kubectl-create" using apps/v1"#
    );
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "kubectl-create" using apps/v1: .spec.replicas"#
    );

    let obj = apply(
        Some(&created),
        &nginx(3),
        "kubectl",
        false,
        deployments(),
        t(1),
    )
    .expect("same");
    let list = entries(&obj);
    assert!(entry(&list, "kubectl-create").fields.has(&[
        PathElement::Field("spec".into()),
        PathElement::Field("replicas".into())
    ]));
    assert!(entry(&list, "kubectl").fields.has(&[
        PathElement::Field("spec".into()),
        PathElement::Field("replicas".into())
    ]));
    // Apply entries sort before Update entries.
    assert_eq!(obj["metadata"]["managedFields"][0]["manager"], "kubectl");
}

#[test]
fn several_conflicts_use_the_plural_message() {
    let a = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 1, "paused": false}});
    let obj = apply(None, &a, "m", false, deployments(), t(0)).expect("m");
    let mut obj2 = obj.clone();
    obj2["spec"]["minReadySeconds"] = json!(1);
    update_managed_fields(Some(&obj), &mut obj2, "n", None, deployments(), t(1));
    let b = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 2, "paused": true, "minReadySeconds": 2}});
    let err = apply(Some(&obj2), &b, "o", false, deployments(), t(2)).expect_err("conflicts");
    assert_eq!(
        err.to_string(),
        "Apply failed with 3 conflicts: conflicts with \"m\":\n- .spec.paused\n- .spec.replicas\nconflicts with \"n\" using apps/v1:\n- .spec.minReadySeconds"
    );
}

#[test]
fn reapplying_the_same_config_changes_nothing() {
    let once = apply(None, &nginx(3), "kubectl", false, deployments(), t(0)).expect("once");
    let twice = apply(
        Some(&once),
        &nginx(3),
        "kubectl",
        false,
        deployments(),
        t(60),
    )
    .expect("twice");
    assert_eq!(once, twice);
}

#[test]
fn status_is_not_owned_or_applied_on_the_main_resource() {
    let mut live = nginx(1);
    live["status"] = json!({"replicas": 1});
    let obj = apply(None, &live, "kubectl", false, deployments(), t(0)).expect("apply");
    assert!(obj.get("status").is_none());
    assert!(!fields_json(&obj, "kubectl").contains("status"));

    // A status write through the subresource is owned, with subresource set
    // (no `.`: a Go Deployment always has a status struct).
    let mut with_status = obj.clone();
    with_status["status"] = json!({"replicas": 1});
    update_managed_fields(
        Some(&obj),
        &mut with_status,
        "kube-controller-manager",
        Some("status"),
        deployments(),
        t(1),
    );
    let list = entries(&with_status);
    let e = entry(&list, "kube-controller-manager");
    assert_eq!(e.subresource.as_deref(), Some("status"));
    assert_eq!(
        e.fields.to_json_string(),
        r#"{"f:status":{"f:replicas":{}}}"#
    );
    assert_eq!(
        with_status["metadata"]["managedFields"][1]["subresource"],
        "status"
    );
}

#[test]
fn client_sent_managed_fields() {
    let created = {
        let mut o = nginx(3);
        update_managed_fields(None, &mut o, "kubectl-create", None, deployments(), t(0));
        o
    };
    // `[]` clears; only this write's own change is recorded.
    let mut cleared = created.clone();
    cleared["metadata"]["managedFields"] = json!([]);
    cleared["spec"]["replicas"] = json!(4);
    update_managed_fields(
        Some(&created),
        &mut cleared,
        "kubectl-edit",
        None,
        deployments(),
        t(1),
    );
    let list = entries(&cleared);
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].fields.to_json_string(),
        r#"{"f:spec":{"f:replicas":{}}}"#
    );

    // Invalid entries fall back to the stored ones.
    let mut invalid = created.clone();
    invalid["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Bogus"}]);
    update_managed_fields(
        Some(&created),
        &mut invalid,
        "kubectl-edit",
        None,
        deployments(),
        t(1),
    );
    assert_eq!(entries(&invalid), entries(&created));

    let mut broken = json!({"metadata": {"managedFields": 3}});
    assert!(reset_managed_fields_if_invalid(&mut broken));
    assert!(broken["metadata"].get("managedFields").is_none());
}

#[test]
fn objects_without_managed_fields_get_a_before_first_apply_owner() {
    let live = nginx(3);
    let err = apply(
        Some(&live),
        &nginx(4),
        "kubectl",
        false,
        deployments(),
        t(0),
    )
    .expect_err("c");
    let ApplyError::Conflicts(conflicts) = &err else {
        panic!("{err}")
    };
    assert_eq!(conflicts[0].manager, BEFORE_FIRST_APPLY_MANAGER);
}

#[test]
fn apply_rejects_bad_configs() {
    let mut with_mf = nginx(1);
    with_mf["metadata"]["managedFields"] = json!([]);
    assert!(matches!(
        apply(None, &with_mf, "m", false, deployments(), t(0)),
        Err(ApplyError::BadRequest(_))
    ));
    let no_key = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
    assert!(matches!(
        apply(None, &no_key, "m", false, deployments(), t(0)),
        Err(ApplyError::BadRequest(_))
    ));
    let dup = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
    assert!(matches!(
        apply(None, &dup, "m", false, deployments(), t(0)),
        Err(ApplyError::BadRequest(_))
    ));
    let live = apply(None, &nginx(1), "m", false, deployments(), t(0)).expect("apply");
    let mut other_version = nginx(1);
    other_version["apiVersion"] = json!("apps/v1beta2");
    let err = apply(Some(&live), &other_version, "m", false, deployments(), t(0)).expect_err("v");
    assert_eq!(
        err.to_string(),
        "Incorrect version specified in apply patch. Specified patch version: apps/v1beta2, expected: apps/v1"
    );
}

#[test]
fn update_managers_are_capped() {
    let mut obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let pods = schema_for("", "Pod").expect("Pod schema");
    for i in 0..12 {
        let mut next = obj.clone();
        next["metadata"]["labels"] = json!({ format!("l{i}"): "x" });
        update_managed_fields(Some(&obj), &mut next, &format!("m{i}"), None, pods, t(i));
        obj = next;
    }
    let list = entries(&obj);
    assert!(
        list.iter()
            .filter(|e| e.operation == Operation::Update)
            .count()
            <= MAX_UPDATE_MANAGERS
    );
}

#[test]
fn service_ports_are_keyed_by_port_and_protocol() {
    let services = schema_for("", "Service").expect("Service schema");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}});
    let obj = apply(None, &svc, "m", false, services, t(0)).expect("apply");
    assert_eq!(
        fields_json(&obj, "m"),
        r#"{"f:spec":{"f:ports":{"k:{\"port\":53,\"protocol\":\"TCP\"}":{".":{},"f:port":{},"f:protocol":{}},"k:{\"port\":53,\"protocol\":\"UDP\"}":{".":{},"f:port":{},"f:protocol":{}}}}}"#
    );
}

#[test]
fn defaulted_key_fields_identify_the_same_element() {
    let mut live = nginx(1);
    live["spec"]["template"]["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}]);
    update_managed_fields(None, &mut live, "kubectl-create", None, deployments(), t(0));
    let obj = apply(
        Some(&live),
        &nginx(1),
        "kubectl",
        false,
        deployments(),
        t(1),
    )
    .expect("apply");
    assert_eq!(
        obj["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}])
    );
}

#[test]
fn updates_that_change_nothing_leave_entries_alone() {
    let mut created = nginx(1);
    update_managed_fields(
        None,
        &mut created,
        "kubectl-create",
        None,
        deployments(),
        t(0),
    );
    let mut same = created.clone();
    same["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("managedFields");
    update_managed_fields(
        Some(&created),
        &mut same,
        "kubectl-edit",
        None,
        deployments(),
        t(5),
    );
    assert_eq!(same, created);

    // A changed field moves to the writer; the creator keeps the rest.
    let mut scaled = created.clone();
    scaled["spec"]["replicas"] = json!(2);
    update_managed_fields(
        Some(&created),
        &mut scaled,
        "kubectl-scale",
        None,
        deployments(),
        t(6),
    );
    let list = entries(&scaled);
    let replicas = [
        PathElement::Field("spec".into()),
        PathElement::Field("replicas".into()),
    ];
    assert!(entry(&list, "kubectl-scale").fields.has(&replicas));
    assert!(!entry(&list, "kubectl-create").fields.has(&replicas));
    assert_eq!(
        entry(&list, "kubectl-scale").time.as_deref(),
        Some("2023-11-14T22:13:26Z")
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn field_sets() -> impl Strategy<Value = FieldSet> {
        let element = prop_oneof![
            "[a-c]".prop_map(PathElement::Field),
            (0i64..3).prop_map(|v| PathElement::Value(json!(v))),
            "[xy]".prop_map(|k| PathElement::key(vec![("name".into(), json!(k))])),
        ];
        proptest::collection::vec(proptest::collection::vec(element, 1..4), 0..8).prop_map(
            |paths| {
                let mut set = FieldSet::new();
                for p in paths {
                    set.insert(&p);
                }
                set
            },
        )
    }

    proptest! {
        #[test]
        fn set_algebra(a in field_sets(), b in field_sets()) {
            let u = a.union(&b);
            for p in a.paths().iter().chain(b.paths().iter()) {
                prop_assert!(u.has(p));
            }
            let i = a.intersection(&b);
            for p in i.paths() {
                prop_assert!(a.has(&p) && b.has(&p));
            }
            let d = a.difference(&b);
            for p in d.paths() {
                prop_assert!(a.has(&p) && !b.has(&p));
            }
            prop_assert_eq!(d.union(&i), a.clone());
        }

        #[test]
        fn fields_v1_round_trip(a in field_sets()) {
            prop_assert_eq!(FieldSet::from_json_str(&a.to_json_string()).expect("parse"), a.clone());
            prop_assert_eq!(FieldSet::from_fields_v1(&a.to_fields_v1()).expect("parse"), a);
        }

        #[test]
        fn apply_is_idempotent(replicas in 0i64..5, labels in proptest::collection::btree_map("[a-c]", "[xy]", 0..3)) {
            let config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "labels": labels}, "spec": {"replicas": replicas}});
            let once = apply(None, &config, "m", false, deployments(), t(0)).expect("once");
            let twice = apply(Some(&once), &config, "m", false, deployments(), t(9)).expect("twice");
            prop_assert_eq!(once, twice);
        }
    }
}
