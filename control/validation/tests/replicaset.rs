//! ReplicaSet defaults, prepare hooks and validation.

mod common;

use common::{assert_valid, create_errors, decode, one};
use serde_json::{json, Value};
use sluice_validation::{
    invalid_status_message, prepare_for_create, prepare_for_status_update, prepare_for_update,
    validate_create, validate_status_update, validate_update, Kind,
};

fn replica_set(spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
           "metadata": {"name": "web-5d4f", "namespace": "default"}, "spec": spec})
}

fn basic() -> Value {
    replica_set(json!({
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "5d4f"}},
                     "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}
    }))
}

#[test]
fn defaults_and_valid() {
    let rs = decode(Kind::ReplicaSet, basic());
    assert_eq!(rs["spec"]["replicas"], 1);
    let tspec = &rs["spec"]["template"]["spec"];
    assert_eq!(tspec["restartPolicy"], "Always");
    assert_eq!(tspec["dnsPolicy"], "ClusterFirst");
    assert_eq!(tspec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_valid(&validate_create(Kind::ReplicaSet, &rs));

    let mut zero = basic();
    zero["spec"]["replicas"] = json!(0);
    assert_eq!(decode(Kind::ReplicaSet, zero)["spec"]["replicas"], 0);
}

#[test]
fn spec_errors() {
    let mut rs = basic();
    rs["spec"]["replicas"] = json!(-2);
    rs["spec"]["minReadySeconds"] = json!(-1);
    rs["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    rs["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    rs["spec"]["template"]["spec"]["activeDeadlineSeconds"] = json!(10);
    let errs = create_errors(Kind::ReplicaSet, rs);
    assert_eq!(
        one(&errs, "spec.replicas").message(),
        "spec.replicas: Invalid value: -2: must be greater than or equal to 0"
    );
    assert_eq!(
        one(&errs, "spec.minReadySeconds").message(),
        "spec.minReadySeconds: Invalid value: -1: must be greater than or equal to 0"
    );
    assert_eq!(
        one(&errs, "spec.template.metadata.labels").message(),
        r#"spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not match template `labels`"#
    );
    assert_eq!(
        one(&errs, "spec.template.spec.restartPolicy").message(),
        r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#
    );
    assert_eq!(
        one(&errs, "spec.template.spec.activeDeadlineSeconds").message(),
        "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported"
    );
    // Upstream's order: replicas, minReadySeconds, then the template.
    assert_eq!(errs[0].field, "spec.replicas");
    assert_eq!(errs[1].field, "spec.minReadySeconds");
}

#[test]
fn selector_rules() {
    let mut rs = basic();
    rs["spec"]["selector"] = json!({});
    let errs = create_errors(Kind::ReplicaSet, rs);
    // Upstream's ReplicaSet text says "deployment" too.
    assert_eq!(
        one(&errs, "spec.selector").message(),
        "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"
    );

    let mut raw = basic();
    raw["spec"].as_object_mut().map(|s| s.remove("selector"));
    let errs = validate_create(Kind::ReplicaSet, &raw);
    assert_eq!(
        one(&errs, "spec.selector").message(),
        "spec.selector: Required value"
    );
    // Without a selector nothing matches the template either.
    assert_eq!(
        one(&errs, "spec.template.metadata.labels").error_type,
        sluice_validation::ErrorType::Invalid
    );
    assert_eq!(
        invalid_status_message(Kind::ReplicaSet, "web-5d4f", &errs[..1]),
        r#"ReplicaSet.apps "web-5d4f" is invalid: spec.selector: Required value"#
    );

    let mut no_template = basic();
    no_template["spec"]
        .as_object_mut()
        .map(|s| s.remove("template"));
    let errs = validate_create(Kind::ReplicaSet, &no_template);
    assert_eq!(
        one(&errs, "spec.template").message(),
        "spec.template: Required value"
    );
}

#[test]
fn selector_immutable_and_generation() {
    let mut old = decode(Kind::ReplicaSet, basic());
    prepare_for_create(Kind::ReplicaSet, &mut old);
    assert_eq!(old["metadata"]["generation"], 1);
    assert_eq!(old["status"], json!({}));
    old["status"] = json!({"replicas": 1, "readyReplicas": 1});

    let mut new = old.clone();
    new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "pod-template-hash": "5d4f"}});
    let errs = validate_update(Kind::ReplicaSet, &old, &new);
    assert_eq!(
        one(&errs, "spec.selector").message(),
        r#"spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"web", "pod-template-hash":"5d4f"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"#
    );

    // A spec change bumps the generation and keeps the stored status.
    let mut scaled = old.clone();
    scaled["spec"]["replicas"] = json!(3);
    scaled["status"] = json!({"replicas": 99});
    prepare_for_update(Kind::ReplicaSet, &old, &mut scaled);
    assert_eq!(scaled["metadata"]["generation"], 2);
    assert_eq!(scaled["status"], old["status"]);
    assert_valid(&validate_update(Kind::ReplicaSet, &old, &scaled));

    // Annotations alone do not (unlike Deployments).
    let mut annotated = old.clone();
    annotated["metadata"]["annotations"] = json!({"note": "x"});
    prepare_for_update(Kind::ReplicaSet, &old, &mut annotated);
    assert_eq!(annotated["metadata"]["generation"], 1);

    // The status subresource keeps the spec.
    let mut status = old.clone();
    status["spec"]["replicas"] = json!(7);
    status["status"] = json!({"replicas": 2});
    prepare_for_status_update(Kind::ReplicaSet, &old, &mut status);
    assert_eq!(status["spec"], old["spec"]);
    assert_eq!(status["status"], json!({"replicas": 2}));
}

#[test]
fn status_rules() {
    let old = decode(Kind::ReplicaSet, basic());
    let mut new = old.clone();
    new["status"] = json!({"replicas": 2, "fullyLabeledReplicas": 3, "readyReplicas": 3,
                           "availableReplicas": 4, "observedGeneration": -1});
    let errs = validate_status_update(Kind::ReplicaSet, &old, &new);
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            "status.observedGeneration: Invalid value: -1: must be greater than or equal to 0",
            "status.fullyLabeledReplicas: Invalid value: 3: cannot be greater than status.replicas",
            "status.readyReplicas: Invalid value: 3: cannot be greater than status.replicas",
            "status.availableReplicas: Invalid value: 4: cannot be greater than status.replicas",
            "status.availableReplicas: Invalid value: 4: cannot be greater than readyReplicas",
        ]
    );
    new["status"] = json!({"replicas": -1});
    let errs = validate_status_update(Kind::ReplicaSet, &old, &new);
    assert_eq!(
        one(&errs, "status.replicas").message(),
        "status.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    new["status"] = json!({"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 2,
                           "availableReplicas": 2, "observedGeneration": 1});
    assert_valid(&validate_status_update(Kind::ReplicaSet, &old, &new));
}
