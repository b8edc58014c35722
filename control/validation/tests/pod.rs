//! Pod validation: spec rules, update immutability, status updates.

mod common;

use common::{assert_valid, at, create_errors, decode, messages, one};
use serde_json::{json, Value};
use sluice_validation::{validate_status_update, validate_update, ErrorType, Kind};

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "default"}, "spec": spec})
}

fn basic() -> Value {
    pod(
        json!({"containers": [{"name": "app", "image": "nginx:1.25", "ports": [{"name": "http", "containerPort": 80}]}]}),
    )
}

#[test]
fn valid_pod() {
    assert_valid(&create_errors(Kind::Pod, basic()));
    assert_valid(&create_errors(
        Kind::Pod,
        pod(json!({
            "initContainers": [{"name": "init", "image": "busybox", "command": ["true"]},
                               {"name": "sidecar", "image": "envoy", "restartPolicy": "Always",
                                "readinessProbe": {"tcpSocket": {"port": 9901}}}],
            "containers": [{"name": "app", "image": "nginx", "env": [{"name": "A", "value": "1"},
                              {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                            "readinessProbe": {"exec": {"command": ["true"]}},
                            "livenessProbe": {"grpc": {"port": 9000}}}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.96.0.10"], "searches": ["svc.cluster.local"]}
        })),
    ));
}

#[test]
fn containers_required_and_names() {
    let errs = create_errors(Kind::Pod, pod(json!({})));
    let e = one(&errs, "spec.containers");
    assert_eq!(e.error_type, ErrorType::Required);
    assert_eq!(e.message(), "spec.containers: Required value");

    let errs = create_errors(
        Kind::Pod,
        pod(
            json!({"containers": [{"name": "App", "image": "x"}, {"name": "b"}, {"name": "b", "image": "y"}]}),
        ),
    );
    assert_eq!(
        one(&errs, "spec.containers[0].name").message(),
        r#"spec.containers[0].name: Invalid value: "App": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
    );
    assert_eq!(
        one(&errs, "spec.containers[1].image").message(),
        "spec.containers[1].image: Required value"
    );
    assert_eq!(
        one(&errs, "spec.containers[2].name").message(),
        r#"spec.containers[2].name: Duplicate value: "b""#
    );
}

#[test]
fn bad_pod_name() {
    let mut p = basic();
    p["metadata"]["name"] = json!("Web_0");
    let errs = create_errors(Kind::Pod, p);
    assert_eq!(
        one(&errs, "metadata.name").message(),
        r#"metadata.name: Invalid value: "Web_0": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#
    );
}

#[test]
fn container_ports() {
    let errs = create_errors(
        Kind::Pod,
        pod(json!({"containers": [{"name": "a", "image": "x", "ports": [
            {"containerPort": 0},
            {"containerPort": 70000, "protocol": "ICMP"},
            {"name": "HTTP", "containerPort": 80},
            {"name": "web", "containerPort": 81},
            {"name": "web", "containerPort": 82}]}]})),
    );
    assert_eq!(
        one(&errs, "spec.containers[0].ports[0].containerPort").message(),
        "spec.containers[0].ports[0].containerPort: Required value"
    );
    assert_eq!(
        one(&errs, "spec.containers[0].ports[1].containerPort").message(),
        "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    assert_eq!(
        one(&errs, "spec.containers[0].ports[1].protocol").message(),
        r#"spec.containers[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#
    );
    assert_eq!(at(&errs, "spec.containers[0].ports[2].name").len(), 2);
    assert_eq!(
        one(&errs, "spec.containers[0].ports[4].name").message(),
        r#"spec.containers[0].ports[4].name: Duplicate value: "web""#
    );
}

#[test]
fn restart_and_dns_policy() {
    let mut p = basic();
    p["spec"]["restartPolicy"] = json!("Sometimes");
    p["spec"]["dnsPolicy"] = json!("Magic");
    let errs = create_errors(Kind::Pod, p);
    assert_eq!(
        one(&errs, "spec.restartPolicy").message(),
        r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#
    );
    assert_eq!(
        one(&errs, "spec.dnsPolicy").error_type,
        ErrorType::NotSupported
    );

    let mut p = basic();
    p["spec"]["dnsPolicy"] = json!("None");
    let errs = create_errors(Kind::Pod, p);
    assert_eq!(
        one(&errs, "spec.dnsConfig").message(),
        "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
    );
}

#[test]
fn probes() {
    let errs = create_errors(
        Kind::Pod,
        pod(json!({"containers": [{"name": "a", "image": "x",
            "livenessProbe": {"periodSeconds": 5},
            "readinessProbe": {"exec": {"command": ["x"]}, "tcpSocket": {"port": 80}},
            "startupProbe": {"httpGet": {"port": "http"}, "successThreshold": 2}}]})),
    );
    assert_eq!(
        one(&errs, "spec.containers[0].livenessProbe").message(),
        "spec.containers[0].livenessProbe: Required value: must specify a handler type"
    );
    assert_eq!(
        one(&errs, "spec.containers[0].readinessProbe.tcpSocket").message(),
        "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"
    );
    assert_eq!(
        one(&errs, "spec.containers[0].startupProbe.successThreshold").message(),
        "spec.containers[0].startupProbe.successThreshold: Invalid value: 2: must be 1"
    );
}

#[test]
fn init_containers_and_volumes() {
    let errs = create_errors(
        Kind::Pod,
        pod(json!({
            "initContainers": [{"name": "app", "image": "x", "livenessProbe": {"exec": {"command": ["x"]}}}],
            "containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "missing", "mountPath": "/m"},
                                                                          {"name": "v", "mountPath": "/m"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "hostPath": {"path": "/x"}, "emptyDir": {}}]
        })),
    );
    assert_eq!(
        one(&errs, "spec.initContainers[0].name").message(),
        r#"spec.initContainers[0].name: Duplicate value: "app""#
    );
    assert_eq!(
        one(&errs, "spec.initContainers[0].livenessProbe").message(),
        "spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always"
    );
    let nf = one(&errs, "spec.containers[0].volumeMounts[0].name");
    assert_eq!(nf.error_type, ErrorType::NotFound);
    assert_eq!(nf.reason(), "FieldValueNotFound");
    assert_eq!(
        nf.message(),
        r#"spec.containers[0].volumeMounts[0].name: Not found: "missing""#
    );
    assert_eq!(
        one(&errs, "spec.containers[0].volumeMounts[1].mountPath").message(),
        r#"spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/m": must be unique"#
    );
    assert_eq!(
        one(&errs, "spec.volumes[1].name").error_type,
        ErrorType::Duplicate
    );
    assert_eq!(
        one(&errs, "spec.volumes[1].emptyDir").message(),
        "spec.volumes[1].emptyDir: Forbidden: may not specify more than 1 volume type"
    );
}

#[test]
fn env_resources_tolerations() {
    let errs = create_errors(
        Kind::Pod,
        pod(json!({"containers": [{"name": "a", "image": "x",
            "env": [{"name": "A=B"}, {"name": "X", "valueFrom": {}}],
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}],
            "tolerations": [{"operator": "Equal", "value": "x"}, {"key": "k", "effect": "Sometimes"}]})),
    );
    assert_eq!(
        one(&errs, "spec.containers[0].env[0].name").message(),
        r#"spec.containers[0].env[0].name: Invalid value: "A=B": a valid environment variable name must consist only of printable ASCII characters other than '='"#
    );
    assert_eq!(
        one(&errs, "spec.containers[0].env[1].valueFrom").message(),
        r#"spec.containers[0].env[1].valueFrom: Invalid value: "": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"#
    );
    assert_eq!(
        one(&errs, "spec.containers[0].resources.requests").message(),
        r#"spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1"#
    );
    assert_eq!(
        one(&errs, "spec.tolerations[0].operator").message(),
        "spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\""
    );
    assert_eq!(
        one(&errs, "spec.tolerations[1].effect").message(),
        r#"spec.tolerations[1].effect: Unsupported value: "Sometimes": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute""#
    );
}

#[test]
fn labels_and_annotations() {
    let mut p = basic();
    p["metadata"]["labels"] = json!({"app": "x".repeat(64), "bad key": "v"});
    p["metadata"]["annotations"] = json!({"big": "y".repeat(256 * 1024)});
    let errs = create_errors(Kind::Pod, p);
    let labels = at(&errs, "metadata.labels");
    assert_eq!(labels.len(), 2);
    assert!(messages(&errs)
        .iter()
        .any(|m| m.contains("must be no more than 63 characters")));
    assert_eq!(
        one(&errs, "metadata.annotations").message(),
        "metadata.annotations: Too long: may not be more than 262144 bytes"
    );
    assert_eq!(
        one(&errs, "metadata.annotations").reason(),
        "FieldValueTooLong"
    );
}

#[test]
fn ephemeral_containers_forbidden_on_create() {
    let mut p = basic();
    p["spec"]["ephemeralContainers"] = json!([{"name": "dbg", "image": "busybox"}]);
    let errs = create_errors(Kind::Pod, p);
    assert_eq!(
        one(&errs, "spec.ephemeralContainers").message(),
        "spec.ephemeralContainers: Forbidden: cannot be set on create"
    );
}

#[test]
fn update_image_allowed_other_fields_forbidden() {
    let old = decode(Kind::Pod, basic());
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("nginx:1.26");
    new["spec"]["activeDeadlineSeconds"] = json!(100);
    new["spec"]["tolerations"] = json!([{"key": "a", "operator": "Exists"}]);
    assert_valid(&validate_update(Kind::Pod, &old, &new));

    let mut changed = old.clone();
    changed["spec"]["restartPolicy"] = json!("Never");
    let errs = validate_update(Kind::Pod, &old, &changed);
    let e = one(&errs, "spec");
    assert_eq!(e.error_type, ErrorType::Forbidden);
    assert!(e.message().starts_with(
        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
    ));
    assert!(e.message().contains("spec.restartPolicy"));

    let mut added = old.clone();
    added["spec"]["containers"] =
        json!([old["spec"]["containers"][0].clone(), {"name": "b", "image": "x"}]);
    let errs = validate_update(Kind::Pod, &old, &added);
    assert_eq!(
        one(&errs, "spec.containers").message(),
        "spec.containers: Forbidden: pod updates may not add or remove containers"
    );
}

#[test]
fn update_tolerations_and_deadline() {
    let mut base = basic();
    base["spec"]["tolerations"] =
        json!([{"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]);
    base["spec"]["activeDeadlineSeconds"] = json!(100);
    let old = decode(Kind::Pod, base);

    let mut lowered = old.clone();
    lowered["spec"]["tolerations"][0]["tolerationSeconds"] = json!(30);
    lowered["spec"]["activeDeadlineSeconds"] = json!(50);
    assert_valid(&validate_update(Kind::Pod, &old, &lowered));

    let mut removed = old.clone();
    removed["spec"]["tolerations"] = json!([]);
    removed["spec"]["activeDeadlineSeconds"] = json!(200);
    let errs = validate_update(Kind::Pod, &old, &removed);
    assert_eq!(
        one(&errs, "spec.activeDeadlineSeconds").message(),
        "spec.activeDeadlineSeconds: Invalid value: 200: must be less than or equal to previous value"
    );

    let mut removed = old.clone();
    removed["spec"]["tolerations"] = json!([]);
    let errs = validate_update(Kind::Pod, &old, &removed);
    assert_eq!(
        one(&errs, "spec.tolerations").message(),
        "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"
    );
}

#[test]
fn status_update() {
    let old = decode(Kind::Pod, basic());
    let mut new = old.clone();
    new["status"] = json!({"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}],
                           "conditions": [{"type": "Ready", "status": "True"}]});
    assert_valid(&validate_status_update(Kind::Pod, &old, &new));

    new["status"] = json!({"podIPs": [{"ip": "10.244.0.300"}],
                           "conditions": [{"type": "Ready", "status": "Yes"}, {"type": "bad type!", "status": "True"}]});
    let errs = validate_status_update(Kind::Pod, &old, &new);
    assert_eq!(
        one(&errs, "status.podIPs[0]").message(),
        r#"status.podIPs[0]: Invalid value: "10.244.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#
    );
    assert_eq!(
        one(&errs, "status.conditions[0].status").message(),
        r#"status.conditions[0].status: Unsupported value: "Yes": supported values: "False", "True", "Unknown""#
    );
    assert_eq!(
        one(&errs, "metadata.conditions[1].Type").error_type,
        ErrorType::Invalid
    );

    new["status"] = json!({"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]});
    let errs = validate_status_update(Kind::Pod, &old, &new);
    assert_eq!(
        one(&errs, "status.podIPs").detail,
        "may specify no more than one IP for each IP family"
    );

    let mut moved = old.clone();
    moved["spec"]["nodeName"] = json!("node-1");
    let errs = validate_status_update(Kind::Pod, &old, &moved);
    assert_eq!(
        one(&errs, "status.nodeName").message(),
        "status.nodeName: Forbidden: may not be changed directly"
    );
}

#[test]
fn status_update_transitions_and_qos() {
    let mut base = basic();
    base["spec"]["restartPolicy"] = json!("Never");
    let mut old = decode(Kind::Pod, base);
    old["status"] = json!({"qosClass": "BestEffort", "containerStatuses": [
        {"name": "app", "state": {"terminated": {"exitCode": 0}}}]});
    let mut new = old.clone();
    new["status"]["containerStatuses"][0]["state"] = json!({"running": {}});
    new["status"]["qosClass"] = json!("Burstable");
    let errs = validate_status_update(Kind::Pod, &old, &new);
    assert_eq!(
        one(&errs, "status.containerStatuses[0].state").message(),
        "status.containerStatuses[0].state: Forbidden: may not be transitioned to non-terminated state"
    );
    assert_eq!(
        one(&errs, "status.qosClass").message(),
        r#"status.qosClass: Invalid value: "Burstable": field is immutable"#
    );
}

#[test]
fn status_update_keeps_spec() {
    let old = decode(Kind::Pod, basic());
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("evil");
    new["status"] = json!({"phase": "Running"});
    sluice_validation::prepare_for_status_update(Kind::Pod, &old, &mut new);
    assert_eq!(new["spec"], old["spec"]);
    assert_eq!(new["status"]["phase"], "Running");
}
