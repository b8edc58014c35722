//! Deployment validation.

mod common;

use common::{assert_valid, create_errors, decode, one};
use serde_json::{json, Value};
use sluice_validation::{
    invalid_status_message, prepare_for_update, validate_create, validate_status_update,
    validate_update, ErrorType, Kind,
};

fn deployment(spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
}

fn basic() -> Value {
    deployment(json!({
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                     "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}
    }))
}

#[test]
fn valid_deployment() {
    assert_valid(&create_errors(Kind::Deployment, basic()));
    let mut d = basic();
    d["spec"]["selector"] =
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]});
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    assert_valid(&create_errors(Kind::Deployment, d));
}

#[test]
fn selector_template_mismatch() {
    let mut d = basic();
    d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let obj = decode(Kind::Deployment, d);
    let errs = validate_create(Kind::Deployment, &obj);
    let e = one(&errs, "spec.template.metadata.labels");
    assert_eq!(e.error_type, ErrorType::Invalid);
    assert_eq!(
        e.message(),
        r#"spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not match template `labels`"#
    );
    assert_eq!(
        invalid_status_message(Kind::Deployment, "web", &errs),
        r#"Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not match template `labels`"#
    );
}

#[test]
fn selector_required_and_non_empty() {
    let mut d = basic();
    d["spec"]["selector"] = json!({});
    let errs = create_errors(Kind::Deployment, d);
    assert_eq!(
        one(&errs, "spec.selector").message(),
        "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"
    );
    let mut raw = basic();
    if let Some(spec) = raw["spec"].as_object_mut() {
        spec.remove("selector");
    }
    let errs = validate_create(Kind::Deployment, &raw);
    assert_eq!(
        one(&errs, "spec.selector").message(),
        "spec.selector: Required value"
    );
}

#[test]
fn replicas_restart_policy_strategy() {
    let mut d = basic();
    d["spec"]["replicas"] = json!(-1);
    d["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    d["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}});
    let errs = create_errors(Kind::Deployment, d);
    assert_eq!(
        one(&errs, "spec.replicas").message(),
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    assert_eq!(
        one(&errs, "spec.template.spec.restartPolicy").message(),
        r#"spec.template.spec.restartPolicy: Unsupported value: "OnFailure": supported values: "Always""#
    );
    assert_eq!(
        one(&errs, "spec.strategy.rollingUpdate.maxUnavailable").message(),
        "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
    );

    let mut d = basic();
    d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "150%", "maxSurge": "x"}});
    let errs = create_errors(Kind::Deployment, d);
    assert_eq!(
        one(&errs, "spec.strategy.rollingUpdate.maxUnavailable").message(),
        r#"spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "150%": must not be greater than 100%"#
    );
    assert_eq!(
        one(&errs, "spec.strategy.rollingUpdate.maxSurge").error_type,
        ErrorType::Invalid
    );

    let mut d = basic();
    d["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
    let errs = create_errors(Kind::Deployment, d);
    assert_eq!(
        one(&errs, "spec.strategy.rollingUpdate").message(),
        "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
    );
}

#[test]
fn template_pod_spec_is_validated() {
    let mut d = basic();
    d["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 0}]);
    d["spec"]["template"]["metadata"]["labels"]["bad key"] = json!("x");
    let errs = create_errors(Kind::Deployment, d);
    assert_eq!(
        one(
            &errs,
            "spec.template.spec.containers[0].ports[0].containerPort"
        )
        .message(),
        "spec.template.spec.containers[0].ports[0].containerPort: Required value"
    );
    assert_eq!(
        one(&errs, "spec.template.labels").error_type,
        ErrorType::Invalid
    );
}

#[test]
fn selector_immutable() {
    let old = decode(Kind::Deployment, basic());
    let mut new = old.clone();
    new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "fe"}});
    let errs = validate_update(Kind::Deployment, &old, &new);
    assert_eq!(
        one(&errs, "spec.selector").message(),
        r#"spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"web", "tier":"fe"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"#
    );

    let mut scaled = old.clone();
    scaled["spec"]["replicas"] = json!(5);
    assert_valid(&validate_update(Kind::Deployment, &old, &scaled));

    let mut retemplated = old.clone();
    retemplated["metadata"]["generation"] = json!(1);
    let mut old_g = old.clone();
    old_g["metadata"]["generation"] = json!(1);
    retemplated["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26");
    prepare_for_update(Kind::Deployment, &old_g, &mut retemplated);
    assert_eq!(retemplated["metadata"]["generation"], 2);
}

#[test]
fn status_update() {
    let old = decode(Kind::Deployment, basic());
    let mut new = old.clone();
    new["status"] = json!({"replicas": 1, "readyReplicas": 2, "availableReplicas": 1});
    let errs = validate_status_update(Kind::Deployment, &old, &new);
    assert_eq!(
        one(&errs, "status.readyReplicas").message(),
        "status.readyReplicas: Invalid value: 2: cannot be greater than status.replicas"
    );
}
