//! Node, Namespace, Endpoints, EndpointSlice and Lease validation, plus the
//! public helpers.

mod common;

use common::{assert_valid, at, create_errors, decode, one};
use serde_json::json;
use sluice_validation::{
    is_dns1123_label, is_dns1123_subdomain, validate_status_update, validate_update, ErrorType,
    Kind,
};

#[test]
fn kind_names() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_group_kind(k.group(), k.name()), Some(k));
        if k != Kind::EventsV1Event {
            assert_eq!(Kind::from_kind(k.name()), Some(k));
        }
    }
    // Two kinds are called "Event"; the kind string alone means core/v1.
    assert_eq!(Kind::from_kind("Event"), Some(Kind::Event));
    assert_eq!(
        Kind::from_group_kind("events.k8s.io", "Event"),
        Some(Kind::EventsV1Event)
    );
    assert_eq!(Kind::from_group_kind("", "Event"), Some(Kind::Event));
    assert_eq!(Kind::from_group_kind("apps", "Event"), None);
    assert_eq!(Kind::from_kind("DaemonSet"), None);
    assert_eq!(Kind::ReplicaSet.api_version(), "apps/v1");
    assert_eq!(Kind::EventsV1Event.api_version(), "events.k8s.io/v1");
    assert!(Kind::EventsV1Event.namespaced());
    assert_eq!(Kind::Deployment.api_version(), "apps/v1");
    assert!(!Kind::Node.namespaced());
}

#[test]
fn name_helpers() {
    assert!(is_dns1123_label("abc-1").is_empty());
    assert_eq!(
        is_dns1123_label("a.b"),
        vec!["must not contain dots".to_string()]
    );
    assert!(is_dns1123_subdomain("a.b").is_empty());
    assert_eq!(
        is_dns1123_subdomain(&"a".repeat(254)),
        vec!["must be no more than 253 characters".to_string()]
    );
}

#[test]
fn namespace_rules() {
    assert_valid(&create_errors(
        Kind::Namespace,
        json!({"metadata": {"name": "team-a"}}),
    ));
    let errs = create_errors(Kind::Namespace, json!({"metadata": {"name": "team.a"}}));
    assert_eq!(
        one(&errs, "metadata.name").message(),
        r#"metadata.name: Invalid value: "team.a": must not contain dots"#
    );
    let errs = create_errors(
        Kind::Namespace,
        json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["custom"]}}),
    );
    assert_eq!(
        one(&errs, "spec.finalizers").message(),
        r#"spec.finalizers: Invalid value: "custom": name is neither a standard finalizer name nor is it fully qualified"#
    );
    let old = decode(Kind::Namespace, json!({"metadata": {"name": "a"}}));
    let mut new = old.clone();
    new["status"]["phase"] = json!("Terminating");
    let errs = validate_status_update(Kind::Namespace, &old, &new);
    assert_eq!(
        one(&errs, "status.Phase").message(),
        r#"status.Phase: Invalid value: "Terminating": may only be 'Active' if `deletionTimestamp` is empty"#
    );
}

#[test]
fn namespaced_kinds_need_a_namespace() {
    let errs = create_errors(Kind::Lease, json!({"metadata": {"name": "l"}}));
    assert_eq!(
        one(&errs, "metadata.namespace").message(),
        "metadata.namespace: Required value"
    );
}

#[test]
fn node_rules() {
    assert_valid(&create_errors(
        Kind::Node,
        json!({"metadata": {"name": "node-1.example"},
               "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:1::/64"],
                        "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
               "status": {"capacity": {"cpu": "4", "memory": "8Gi"},
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    ));
    let errs = create_errors(
        Kind::Node,
        json!({"metadata": {"name": "n"},
               "spec": {"podCIDRs": ["10.244.1.0/33"],
                        "taints": [{"key": "a", "effect": "Sometimes"}, {"key": "b"},
                                   {"key": "c", "effect": "NoSchedule"}, {"key": "c", "value": "x", "effect": "NoSchedule"}]},
               "status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}),
    );
    assert_eq!(
        one(&errs, "spec.podCIDRs[0]").message(),
        r#"spec.podCIDRs[0]: Invalid value: "10.244.1.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#
    );
    assert_eq!(
        one(&errs, "metadata.taints[0].effect").message(),
        r#"metadata.taints[0].effect: Unsupported value: "Sometimes": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute""#
    );
    assert_eq!(
        one(&errs, "metadata.taints[1].effect").message(),
        "metadata.taints[1].effect: Required value"
    );
    assert_eq!(
        one(&errs, "metadata.taints[3]").message(),
        r#"metadata.taints[3]: Duplicate value: core.Taint{Key:"c", Value:"x", Effect:"NoSchedule", TimeAdded:(*v1.Time)(nil)}: taints must be unique by key and effect pair"#
    );
    assert_eq!(
        one(&errs, "status.conditions[0].status").error_type,
        ErrorType::NotSupported
    );

    let errs = create_errors(
        Kind::Node,
        json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.0.0.0/24", "10.1.0.0/24"]}}),
    );
    assert_eq!(
        one(&errs, "spec.podCIDRs").detail,
        "may specify no more than one CIDR for each IP family"
    );

    let old = decode(
        Kind::Node,
        json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.1.0/24"}}),
    );
    let mut new = old.clone();
    new["spec"]["podCIDR"] = json!("10.244.2.0/24");
    new["spec"]["podCIDRs"] = json!(["10.244.2.0/24"]);
    let errs = validate_update(Kind::Node, &old, &new);
    assert_eq!(
        one(&errs, "spec.podCIDRs").message(),
        r#"spec.podCIDRs: Forbidden: node updates may not change podCIDR except from "" to valid"#
    );
}

#[test]
fn endpoints_rules() {
    assert_valid(&create_errors(
        Kind::Endpoints,
        json!({"metadata": {"name": "web", "namespace": "d"},
               "subsets": [{"addresses": [{"ip": "10.244.0.5", "nodeName": "n1"}], "ports": [{"port": 80}]}]}),
    ));
    let errs = create_errors(
        Kind::Endpoints,
        json!({"metadata": {"name": "web", "namespace": "d"},
               "subsets": [{"addresses": [{"ip": "x"}, {"ip": "127.0.0.1"}],
                            "ports": [{"port": 0, "name": "a"}, {"port": 80, "protocol": "ICMP"}]},
                           {"ports": [{"port": 1}]}]}),
    );
    assert_eq!(
        one(&errs, "subsets[0].addresses[0].ip").error_type,
        ErrorType::Invalid
    );
    assert_eq!(
        one(&errs, "subsets[0].addresses[1].ip").detail,
        "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    );
    assert_eq!(
        one(&errs, "subsets[0].ports[0].port").detail,
        "must be between 1 and 65535, inclusive"
    );
    assert_eq!(
        one(&errs, "subsets[0].ports[1].name").message(),
        "subsets[0].ports[1].name: Required value"
    );
    assert_eq!(
        one(&errs, "subsets[0].ports[1].protocol").error_type,
        ErrorType::NotSupported
    );
    assert_eq!(
        one(&errs, "subsets[1]").message(),
        "subsets[1]: Required value: must specify `addresses` or `notReadyAddresses`"
    );
}

#[test]
fn endpoint_slice_rules() {
    let ok = json!({"metadata": {"name": "web-abc", "namespace": "d"}, "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "n1"}],
                    "ports": [{"name": "http", "port": 80}]});
    assert_valid(&create_errors(Kind::EndpointSlice, ok.clone()));

    let errs = create_errors(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
               "endpoints": [{"addresses": []}, {"addresses": ["fd00::1"]}],
               "ports": [{"name": "a", "protocol": "ICMP"}, {"name": "a"}]}),
    );
    assert_eq!(
        one(&errs, "endpoints[0].addresses").message(),
        "endpoints[0].addresses: Required value: must contain at least 1 address"
    );
    assert_eq!(
        one(&errs, "endpoints[1].addresses[0]").message(),
        r#"endpoints[1].addresses[0]: Invalid value: "fd00::1": must be an IPv4 address"#
    );
    assert_eq!(
        one(&errs, "ports[0].protocol").error_type,
        ErrorType::NotSupported
    );
    assert_eq!(
        one(&errs, "ports[1].name").message(),
        r#"ports[1].name: Duplicate value: "a""#
    );

    let errs = create_errors(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "s", "namespace": "d"}, "addressType": "IP"}),
    );
    assert_eq!(
        one(&errs, "addressType").message(),
        r#"addressType: Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6""#
    );
    let errs = create_errors(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "s", "namespace": "d"}}),
    );
    assert_eq!(
        one(&errs, "addressType").message(),
        "addressType: Required value"
    );

    let many: Vec<_> = (0..1001)
        .map(|_| json!({"addresses": ["10.0.0.1"]}))
        .collect();
    let errs = create_errors(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4", "endpoints": many}),
    );
    let e = one(&errs, "endpoints");
    assert_eq!(e.reason(), "FieldValueTooMany");
    assert_eq!(
        e.message(),
        "endpoints: Too many: 1001: must have at most 1000 items"
    );

    let errs = create_errors(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "s", "namespace": "d"}, "addressType": "FQDN",
               "endpoints": [{"addresses": ["example.com", "localhost"]}]}),
    );
    assert_eq!(
        one(&errs, "endpoints[0].addresses[1]").detail,
        "should be a domain with at least two segments separated by dots"
    );

    let old = decode(Kind::EndpointSlice, ok);
    let mut new = old.clone();
    new["addressType"] = json!("IPv6");
    new["endpoints"] = json!([{"addresses": ["fd00::5"]}]);
    let errs = validate_update(Kind::EndpointSlice, &old, &new);
    assert_eq!(
        one(&errs, "addressType").message(),
        r#"addressType: Invalid value: "IPv6": field is immutable"#
    );
}

#[test]
fn endpoint_slice_conditions_must_be_booleans() {
    // A string condition is a decode error...
    assert!(sluice_validation::normalize(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]}),
    )
    .is_err());
    // ...and validation catches it on raw input too.
    let errs = sluice_validation::validate_create(
        Kind::EndpointSlice,
        &json!({"metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]}),
    );
    assert_eq!(
        one(&errs, "endpoints[0].conditions.ready").error_type,
        ErrorType::Invalid
    );
}

#[test]
fn lease_rules() {
    assert_valid(&create_errors(
        Kind::Lease,
        json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system"},
               "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2024-01-01T00:00:00.000000Z"}}),
    ));
    let errs = create_errors(
        Kind::Lease,
        json!({"metadata": {"name": "l", "namespace": "d"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}),
    );
    assert_eq!(
        one(&errs, "spec.leaseDurationSeconds").message(),
        "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    );
    assert_eq!(at(&errs, "spec.leaseTransitions").len(), 1);
}

#[test]
fn metadata_update_rules() {
    let mut base = json!({"metadata": {"name": "l", "namespace": "d", "uid": "u1", "finalizers": ["a.io/x"],
                                       "deletionTimestamp": "2024-01-01T00:00:00Z"}});
    base = decode(Kind::Lease, base);
    let mut new = base.clone();
    new["metadata"]["uid"] = json!("u2");
    new["metadata"]["finalizers"] = json!(["a.io/x", "b.io/y"]);
    let errs = validate_update(Kind::Lease, &base, &new);
    assert_eq!(
        one(&errs, "metadata.uid").message(),
        r#"metadata.uid: Invalid value: "u2": field is immutable"#
    );
    assert_eq!(
        one(&errs, "metadata.finalizers").message(),
        r#"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{"b.io/y"}"#
    );
}
