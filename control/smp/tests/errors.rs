//! Malformed patches: every error names the offending path and directive.

use serde_json::{json, Value};
use sluice_smp::{schema_for, strategic_merge_patch, SmpError};

fn apply(group: &str, kind: &str, original: &Value, body: &Value) -> Result<Value, SmpError> {
    match schema_for(group, kind) {
        Some(schema) => strategic_merge_patch(original, body, schema),
        None => panic!("no schema for {group}/{kind}"),
    }
}

fn deployment() -> Value {
    json!({
        "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["x"]},
        "spec": {
            "strategy": {"type": "RollingUpdate"},
            "template": {"spec": {"containers": [
                {"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]}
            ]}}
        }
    })
}

/// The error of a patch that must fail, as text.
fn failure(body: Value) -> (SmpError, String) {
    match apply("apps", "Deployment", &deployment(), &body) {
        Ok(result) => panic!("patch {body} should fail, got {result}"),
        Err(error) => {
            let text = error.to_string();
            (error, text)
        }
    }
}

#[test]
fn patch_must_be_an_object() {
    for body in [json!([{"op": "add"}]), json!("text"), json!(null), json!(3)] {
        let (error, _) = failure(body);
        assert!(
            matches!(error, SmpError::PatchNotObject { .. }),
            "{error:?}"
        );
    }
    let (_, text) = failure(json!([]));
    assert_eq!(
        text,
        "strategic merge patch must be a JSON object, got a list"
    );

    let stored = apply("", "Pod", &json!(["not", "an", "object"]), &json!({}));
    assert!(
        matches!(stored, Err(SmpError::OriginalNotObject { found: "a list" })),
        "{stored:?}"
    );
}

#[test]
fn unknown_patch_directive() {
    let (error, text) = failure(json!({"metadata": {"labels": {"$patch": "frobnicate"}}}));
    assert!(
        matches!(error, SmpError::UnknownPatchDirective { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        r#"metadata.labels: unknown $patch directive "frobnicate""#
    );

    let (_, text) = failure(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "$patch": 7}
    ]}}}}));
    assert_eq!(
        text,
        "spec.template.spec.containers: unknown $patch directive 7"
    );

    let (error, text) = failure(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "$patch": "merge"}
    ]}}}}));
    assert!(
        matches!(error, SmpError::MergeDirectiveInList { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        "spec.template.spec.containers: $patch: merge cannot be used as a list element"
    );
}

#[test]
fn merge_key_missing() {
    let (error, text) = failure(json!({"spec": {"template": {"spec": {"containers": [
        {"image": "busybox:2"}
    ]}}}}));
    assert!(
        matches!(&error, SmpError::MissingMergeKey { key: "name", .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        r#"spec.template.spec.containers: list element {"image":"busybox:2"} does not contain declared merge key "name""#
    );

    // A delete directive needs the key too.
    let (error, _) = failure(json!({"spec": {"template": {"spec": {"containers": [
        {"$patch": "delete"}
    ]}}}}));
    assert!(
        matches!(error, SmpError::MissingMergeKey { .. }),
        "{error:?}"
    );

    // So do $setElementOrder entries of a keyed list.
    let (error, _) = failure(json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"image": "busybox"}]
    }}}}));
    assert!(
        matches!(error, SmpError::MissingMergeKey { .. }),
        "{error:?}"
    );
}

#[test]
fn nested_error_paths_name_list_elements() {
    // The stored container has an env list, so the patch's is merged by key.
    let (_, text) = failure(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "env": [{"value": "1"}]}
    ]}}}}));
    assert_eq!(
        text,
        r#"spec.template.spec.containers[name=c].env: list element {"value":"1"} does not contain declared merge key "name""#
    );
}

#[test]
fn set_element_order_must_be_a_list_and_match() {
    let (error, text) = failure(json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": {"name": "c"}
    }}}}));
    assert!(
        matches!(error, SmpError::DirectiveNotList { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        "spec.template.spec: $setElementOrder/containers must be a list, got an object"
    );

    let (error, text) = failure(json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}],
        "containers": [{"name": "c", "image": "x"}, {"name": "a", "image": "y"}]
    }}}}));
    assert!(
        matches!(error, SmpError::SetElementOrderMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        "spec.template.spec: the order of the patch list does not match its $setElementOrder/containers list"
    );

    let (error, text) = failure(json!({"spec": {"template": {"spec": {"$setElementOrder": []}}}}));
    assert!(
        matches!(error, SmpError::MalformedDirectiveKey { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        r#"spec.template.spec: directive key "$setElementOrder" must have the form $setElementOrder/<field>"#
    );

    let (error, text) = failure(json!({"metadata": {
        "$setElementOrder/labels": ["app"]
    }}));
    assert!(matches!(error, SmpError::FieldNotList { .. }), "{error:?}");
    assert_eq!(
        text,
        "metadata.labels: field used with $setElementOrder/labels must be a list, got an object"
    );
}

#[test]
fn retain_keys_errors() {
    let (error, text) =
        failure(json!({"spec": {"strategy": {"$retainKeys": "type", "type": "Recreate"}}}));
    assert!(
        matches!(error, SmpError::DirectiveNotList { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        "spec.strategy: $retainKeys must be a list, got a string"
    );

    let (error, text) = failure(json!({"spec": {"strategy": {
        "$retainKeys": ["rollingUpdate"],
        "type": "Recreate"
    }}}));
    assert!(
        matches!(error, SmpError::NotInRetainKeys { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        r#"spec.strategy: field "type" is set by the patch but not listed in $retainKeys"#
    );
}

#[test]
fn delete_from_primitive_list_errors() {
    let (error, text) = failure(json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "x"}}));
    assert!(
        matches!(error, SmpError::DirectiveNotList { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        "metadata: $deleteFromPrimitiveList/finalizers must be a list, got a string"
    );

    let (error, _) = failure(json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["x"]}}));
    assert!(
        matches!(error, SmpError::MalformedDirectiveKey { .. }),
        "{error:?}"
    );
}

#[test]
fn unmergeable_list_elements() {
    let (error, text) = failure(json!({"metadata": {"finalizers": [{"name": "x"}]}}));
    assert!(
        matches!(error, SmpError::BadListElements { .. }),
        "{error:?}"
    );
    assert_eq!(
        text,
        "metadata.finalizers: cannot merge list: elements mix objects and scalars"
    );

    let (error, _) = failure(json!({"metadata": {"finalizers": [["x"]]}}));
    assert!(
        matches!(error, SmpError::BadListElements { .. }),
        "{error:?}"
    );

    let pod = json!({"metadata": {"finalizers": [{"name": "x"}]}});
    let result = apply(
        "",
        "Pod",
        &pod,
        &json!({"metadata": {"finalizers": [{"name": "y"}]}}),
    );
    assert!(
        matches!(result, Err(SmpError::NoMergeKey { .. })),
        "{result:?}"
    );
}

#[test]
fn inputs_are_not_modified_on_error() {
    let original = deployment();
    let body = json!({"metadata": {"labels": {"new": "1"}}, "spec": {"template": {"spec": {"containers": [{}]}}}});
    let before = (original.clone(), body.clone());
    assert!(apply("apps", "Deployment", &original, &body).is_err());
    assert_eq!((original, body), before);
}
