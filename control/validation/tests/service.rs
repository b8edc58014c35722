//! Service validation, with Kubernetes' exact texts.

mod common;

use common::{assert_valid, at, create_errors, decode, messages, one};
use serde_json::{json, Value};
use sluice_validation::{
    prepare_for_update, validate_status_update, validate_update, ErrorType, Kind,
};

fn svc(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
}

#[test]
fn valid_services() {
    assert_valid(&create_errors(
        Kind::Service,
        svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]})),
    ));
    assert_valid(&create_errors(
        Kind::Service,
        svc(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                                                  {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        ),
    ));
    assert_valid(&create_errors(
        Kind::Service,
        svc(
            json!({"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": "https"}],
                                                            "loadBalancerSourceRanges": ["10.0.0.0/8"], "externalTrafficPolicy": "Local"}),
        ),
    ));
    assert_valid(&create_errors(
        Kind::Service,
        svc(json!({"clusterIP": "None"})),
    ));
    assert_valid(&create_errors(
        Kind::Service,
        svc(json!({"type": "ExternalName", "externalName": "db.example.com."})),
    ));
    assert_valid(&create_errors(
        Kind::Service,
        svc(json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]})),
    ));
}

#[test]
fn port_zero() {
    let errs = create_errors(
        Kind::Service,
        svc(json!({"ports": [{"port": 0, "targetPort": 80}]})),
    );
    let e = one(&errs, "spec.ports[0].port");
    assert_eq!(e.error_type, ErrorType::Invalid);
    assert_eq!(e.reason(), "FieldValueInvalid");
    assert_eq!(
        e.message(),
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    );
}

#[test]
fn unsupported_protocol_and_type() {
    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "Foo", "ports": [{"port": 80, "protocol": "HTTP"}]})),
    );
    let e = one(&errs, "spec.ports[0].protocol");
    assert_eq!(e.error_type, ErrorType::NotSupported);
    assert_eq!(e.reason(), "FieldValueNotSupported");
    assert_eq!(
        e.message(),
        r#"spec.ports[0].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP""#
    );
    assert_eq!(
        one(&errs, "spec.type").message(),
        r#"spec.type: Unsupported value: "Foo": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort""#
    );
}

#[test]
fn missing_and_bad_names() {
    let errs = create_errors(
        Kind::Service,
        json!({"metadata": {"namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
    );
    let e = one(&errs, "metadata.name");
    assert_eq!(e.error_type, ErrorType::Required);
    assert_eq!(e.reason(), "FieldValueRequired");
    assert_eq!(
        e.message(),
        "metadata.name: Required value: name or generateName is required"
    );

    let errs = create_errors(
        Kind::Service,
        json!({"metadata": {"name": "1web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
    );
    assert_eq!(
        one(&errs, "metadata.name").message(),
        r#"metadata.name: Invalid value: "1web": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"#
    );

    let errs = create_errors(
        Kind::Service,
        json!({"metadata": {"generateName": "web-", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
    );
    assert_valid(&errs);
}

#[test]
fn port_names() {
    let errs = create_errors(
        Kind::Service,
        svc(
            json!({"ports": [{"port": 80}, {"name": "Web", "port": 81}, {"name": "Web", "port": 82}]}),
        ),
    );
    assert_eq!(
        one(&errs, "spec.ports[0].name").message(),
        "spec.ports[0].name: Required value"
    );
    assert_eq!(
        at(&errs, "spec.ports[1].name")[0].error_type,
        ErrorType::Invalid
    );
    let dups: Vec<_> = at(&errs, "spec.ports[2].name")
        .into_iter()
        .filter(|e| e.error_type == ErrorType::Duplicate)
        .collect();
    assert_eq!(
        dups[0].message(),
        r#"spec.ports[2].name: Duplicate value: "Web""#
    );
}

#[test]
fn duplicate_port() {
    let errs = create_errors(
        Kind::Service,
        svc(json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]})),
    );
    let e = one(&errs, "spec.ports[1]");
    assert_eq!(e.error_type, ErrorType::Duplicate);
    assert_eq!(e.reason(), "FieldValueDuplicate");
    assert_eq!(
        e.message(),
        r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#
    );
    // Same port on another protocol is fine.
    assert_valid(&create_errors(
        Kind::Service,
        svc(
            json!({"ports": [{"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]}),
        ),
    ));
}

#[test]
fn target_port() {
    let errs = create_errors(
        Kind::Service,
        svc(
            json!({"ports": [{"port": 80, "targetPort": "my--port"}, {"name": "b", "port": 81, "targetPort": 70000}]}),
        ),
    );
    assert_eq!(
        one(&errs, "spec.ports[0].targetPort").message(),
        r#"spec.ports[0].targetPort: Invalid value: "my--port": must not contain consecutive hyphens"#
    );
    assert_eq!(
        one(&errs, "spec.ports[1].targetPort").message(),
        "spec.ports[1].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
}

#[test]
fn cluster_ip_none_with_node_port() {
    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]})),
    );
    let e = one(&errs, "spec.clusterIPs[0]");
    assert_eq!(e.error_type, ErrorType::Invalid);
    assert_eq!(
        e.message(),
        r#"spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services"#
    );

    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "LoadBalancer", "clusterIP": "None", "ports": [{"port": 80}]})),
    );
    assert_eq!(
        one(&errs, "spec.clusterIPs[0]").message(),
        r#"spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for LoadBalancer services"#
    );
}

#[test]
fn node_port_on_cluster_ip() {
    let errs = create_errors(
        Kind::Service,
        svc(json!({"ports": [{"port": 80, "nodePort": 30001}]})),
    );
    let e = one(&errs, "spec.ports[0].nodePort");
    assert_eq!(e.error_type, ErrorType::Forbidden);
    assert_eq!(
        e.message(),
        "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
    );
}

#[test]
fn ports_required_and_cluster_ip_format() {
    let errs = create_errors(Kind::Service, svc(json!({"selector": {"app": "x"}})));
    assert_eq!(
        one(&errs, "spec.ports").message(),
        "spec.ports: Required value"
    );

    let errs = create_errors(
        Kind::Service,
        svc(json!({"clusterIP": "10.0.0.300", "ports": [{"port": 80}]})),
    );
    assert_eq!(
        one(&errs, "spec.clusterIPs[0]").message(),
        r#"spec.clusterIPs[0]: Invalid value: "10.0.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#
    );
}

#[test]
fn external_name_rules() {
    let errs = create_errors(Kind::Service, svc(json!({"type": "ExternalName"})));
    assert_eq!(
        one(&errs, "spec.externalName").message(),
        "spec.externalName: Required value"
    );
    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "ExternalName", "externalName": "Bad_Name"})),
    );
    assert_eq!(
        one(&errs, "spec.externalName").error_type,
        ErrorType::Invalid
    );
    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "ExternalName", "externalName": "a.b", "clusterIP": "10.0.0.1"})),
    );
    assert_eq!(
        one(&errs, "spec.clusterIPs").message(),
        "spec.clusterIPs: Forbidden: may not be set for ExternalName services"
    );
}

#[test]
fn selector_affinity_policies() {
    let errs = create_errors(
        Kind::Service,
        svc(
            json!({"selector": {"app": "-bad"}, "ports": [{"port": 80}], "sessionAffinity": "Sticky"}),
        ),
    );
    assert_eq!(one(&errs, "spec.selector").error_type, ErrorType::Invalid);
    assert_eq!(
        one(&errs, "spec.sessionAffinity").message(),
        r#"spec.sessionAffinity: Unsupported value: "Sticky": supported values: "ClientIP", "None""#
    );

    let errs = create_errors(
        Kind::Service,
        svc(
            json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
        ),
    );
    assert_eq!(
        one(&errs, "spec.sessionAffinityConfig.clientIP.timeoutSeconds").message(),
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400"
    );

    let errs = create_errors(
        Kind::Service,
        svc(json!({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"})),
    );
    assert_eq!(
        one(&errs, "spec.externalTrafficPolicy").message(),
        r#"spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services"#
    );
    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "NodePort", "ports": [{"port": 80}], "externalTrafficPolicy": "Foo"})),
    );
    assert_eq!(
        one(&errs, "spec.externalTrafficPolicy").error_type,
        ErrorType::NotSupported
    );

    let errs = create_errors(
        Kind::Service,
        svc(json!({"ports": [{"port": 80}], "internalTrafficPolicy": "Nearby"})),
    );
    assert_eq!(
        one(&errs, "spec.internalTrafficPolicy").message(),
        r#"spec.internalTrafficPolicy: Unsupported value: "Nearby": supported values: "Cluster", "Local""#
    );

    let errs = create_errors(
        Kind::Service,
        svc(json!({"type": "NodePort", "ports": [{"port": 80}], "healthCheckNodePort": 30000})),
    );
    assert_eq!(
        one(&errs, "spec.healthCheckNodePort").message(),
        "spec.healthCheckNodePort: Invalid value: 30000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
    );
}

#[test]
fn external_ips_and_source_ranges() {
    let errs = create_errors(
        Kind::Service,
        svc(
            json!({"ports": [{"port": 80}], "externalIPs": ["1.2.3.4", "nope", "127.0.0.1"],
                   "loadBalancerSourceRanges": ["10.0.0.0/8", "bad"]}),
        ),
    );
    assert_eq!(
        one(&errs, "spec.externalIPs[1]").error_type,
        ErrorType::Invalid
    );
    assert_eq!(
        one(&errs, "spec.externalIPs[2]").message(),
        r#"spec.externalIPs[2]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#
    );
    assert_eq!(
        one(&errs, "spec.LoadBalancerSourceRanges").message(),
        "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"
    );
    assert_eq!(
        one(&errs, "spec.LoadBalancerSourceRanges[1]").message(),
        r#"spec.LoadBalancerSourceRanges[1]: Invalid value: "bad": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#
    );
    // externalIPs make a ClusterIP service externally accessible.
    let v = decode(
        Kind::Service,
        svc(json!({"ports": [{"port": 80}], "externalIPs": ["1.2.3.4"]})),
    );
    assert_eq!(v["spec"]["externalTrafficPolicy"], "Cluster");
}

#[test]
fn cluster_ip_immutable() {
    let old = decode(
        Kind::Service,
        svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
    );
    let mut new = old.clone();
    new["spec"]["clusterIP"] = json!("10.96.0.11");
    new["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
    let errs = validate_update(Kind::Service, &old, &new);
    let e = one(&errs, "spec.clusterIPs[0]");
    assert_eq!(
        e.message(),
        r#"spec.clusterIPs[0]: Invalid value: []string{"10.96.0.11"}: may not change once set"#
    );

    // An old client sending only clusterIP with the same value is fine.
    let mut partial = old.clone();
    if let Some(spec) = partial["spec"].as_object_mut() {
        spec.remove("clusterIPs");
    }
    prepare_for_update(Kind::Service, &old, &mut partial);
    assert_valid(&validate_update(Kind::Service, &old, &partial));

    // Dropping the clusterIP entirely is refused.
    let mut cleared = old.clone();
    if let Some(spec) = cleared["spec"].as_object_mut() {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    let errs = validate_update(Kind::Service, &old, &cleared);
    assert_eq!(
        at(&errs, "spec.clusterIPs[0]")[0].message(),
        "spec.clusterIPs[0]: Invalid value: []string(nil): primary clusterIP can not be unset"
    );
}

#[test]
fn switching_to_external_name_drops_cluster_ip() {
    let old = decode(
        Kind::Service,
        svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
    );
    let mut new = old.clone();
    new["spec"]["type"] = json!("ExternalName");
    new["spec"]["externalName"] = json!("example.com");
    let errs = validate_update(Kind::Service, &old, &new);
    assert_eq!(
        one(&errs, "spec.clusterIPs").error_type,
        ErrorType::Forbidden
    );
    prepare_for_update(Kind::Service, &old, &mut new);
    assert!(new["spec"].get("clusterIP").is_none());
    assert!(new["spec"].get("ipFamilies").is_none());
    assert_valid(&validate_update(Kind::Service, &old, &new));
}

#[test]
fn status_update() {
    let old = decode(
        Kind::Service,
        svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]})),
    );
    let mut new = old.clone();
    new["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ipMode": "VIP"}, {"hostname": "1.2.3.4"}]}});
    let errs = validate_status_update(Kind::Service, &old, &new);
    assert_eq!(
        one(&errs, "status.loadBalancer.ingress[1].hostname").message(),
        r#"status.loadBalancer.ingress[1].hostname: Invalid value: "1.2.3.4": must be a DNS name, not an IP address"#
    );
    new["status"] = json!({"loadBalancer": {"ingress": [{"ip": "bad"}]}});
    let errs = validate_status_update(Kind::Service, &old, &new);
    assert_eq!(messages(&errs).len(), 2);
}

#[test]
fn load_balancer_requires_allocate_flag_without_defaults() {
    // Without defaulting the flag is missing; Kubernetes reports it without `spec.`.
    let raw = json!({"metadata": {"name": "web", "namespace": "default"},
                     "spec": {"type": "LoadBalancer", "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
                              "internalTrafficPolicy": "Cluster",
                              "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}});
    let errs = sluice_validation::validate_create(Kind::Service, &raw);
    assert_eq!(
        one(&errs, "allocateLoadBalancerNodePorts").message(),
        "allocateLoadBalancerNodePorts: Required value"
    );
}

#[test]
fn health_check_node_port_immutable() {
    let old = decode(
        Kind::Service,
        svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                   "ports": [{"port": 80}]}),
        ),
    );
    let mut new = old.clone();
    new["spec"]["healthCheckNodePort"] = json!(31001);
    let errs = validate_update(Kind::Service, &old, &new);
    assert_eq!(
        one(&errs, "spec.healthCheckNodePort").message(),
        "spec.healthCheckNodePort: Forbidden: field is immutable"
    );
}

#[test]
fn status_message_and_causes() {
    let errs = create_errors(
        Kind::Service,
        svc(json!({"ports": [{"port": 0}, {"port": 1, "protocol": "X"}]})),
    );
    let msg = sluice_validation::invalid_status_message(Kind::Service, "web", &errs);
    assert!(
        msg.starts_with("Service \"web\" is invalid: [spec.ports[0].name: Required value, "),
        "{msg}"
    );
    assert!(msg.ends_with(']'));
    let e = one(&errs, "spec.ports[0].port");
    assert_eq!(
        e.body(),
        "Invalid value: 0: must be between 1 and 65535, inclusive"
    );
}
