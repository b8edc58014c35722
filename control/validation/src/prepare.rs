//! The registry strategies' `PrepareForCreate` / `PrepareForUpdate` hooks:
//! what the apiserver resets or carries over before validating a write
//! (status reset on create, status kept on spec updates, spec kept on status
//! updates, generation bookkeeping, Service clusterIP normalization).

use serde_json::{json, Value};

use crate::json::{self, get, get_mut, int, list, string};
use crate::pod::compute_qos;
use crate::Kind;

fn copy_field(from: &Value, to: &mut Value, key: &str) {
    match get(from, key) {
        Some(v) => json::set(to, key, v.clone()),
        None => json::remove(to, key),
    }
}

fn set_generation(obj: &mut Value, generation: i64) {
    if let Some(meta) = json::ensure(obj, "metadata") {
        json::set(meta, "generation", Value::from(generation));
    }
}

fn generation(obj: &Value) -> i64 {
    get(obj, "metadata")
        .and_then(|m| int(m, "generation"))
        .unwrap_or(0)
}

/// `PrepareForCreate`.
pub(crate) fn for_create(kind: Kind, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match kind {
        Kind::Pod => {
            let qos = compute_qos(get(obj, "spec").unwrap_or(&Value::Null));
            json::set(obj, "status", json!({"phase": "Pending", "qosClass": qos}));
            set_generation(obj, 1);
        }
        Kind::Service => {
            json::set(obj, "status", json!({"loadBalancer": {}}));
        }
        Kind::Deployment => {
            json::set(obj, "status", json!({}));
            set_generation(obj, 1);
        }
        Kind::ReplicaSet => {
            json::set(obj, "status", json!({}));
            set_generation(obj, 1);
        }
        Kind::EndpointSlice => set_generation(obj, 1),
        Kind::ServiceAccount => clean_secret_references(obj),
        Kind::Namespace => {
            json::set(obj, "status", json!({"phase": "Active"}));
            if let Some(spec) = json::ensure(obj, "spec") {
                let mut finalizers: Vec<Value> = list(spec, "finalizers").to_vec();
                if !finalizers.iter().any(|f| f.as_str() == Some("kubernetes")) {
                    finalizers.push(Value::from("kubernetes"));
                }
                json::set(spec, "finalizers", Value::Array(finalizers));
            }
        }
        Kind::Node
        | Kind::Endpoints
        | Kind::Lease
        | Kind::ConfigMap
        | Kind::Secret
        | Kind::Event
        | Kind::EventsV1Event => {}
    }
}

/// `cleanSecretReferences`: a ServiceAccount's `secrets` entries keep only
/// their `name` (the other ObjectReference fields mean nothing there).
fn clean_secret_references(obj: &mut Value) {
    for secret in json::list_mut(obj, "secrets").into_iter().flatten() {
        let name = get(secret, "name").cloned();
        *secret = match name {
            Some(n) => json!({ "name": n }),
            None => json!({}),
        };
    }
}

/// `PrepareForUpdate` of the main resource.
pub(crate) fn for_update(kind: Kind, old: &Value, new: &mut Value) {
    if !new.is_object() {
        return;
    }
    let old_generation = generation(old);
    match kind {
        Kind::Pod => {
            copy_field(old, new, "status");
            let changed = !json::semantic_eq(get(old, "spec"), get(new, "spec"));
            set_generation(new, old_generation + i64::from(changed));
        }
        Kind::Deployment => {
            copy_field(old, new, "status");
            let annotations = |o: &Value| {
                get(o, "metadata")
                    .and_then(|m| get(m, "annotations"))
                    .cloned()
            };
            let changed = !json::semantic_eq(get(old, "spec"), get(new, "spec"))
                || !json::semantic_eq(annotations(old).as_ref(), annotations(new).as_ref());
            set_generation(new, old_generation + i64::from(changed));
        }
        Kind::ReplicaSet => {
            // Unlike Deployments, annotations do not count as a change.
            copy_field(old, new, "status");
            let changed = !json::semantic_eq(get(old, "spec"), get(new, "spec"));
            set_generation(new, old_generation + i64::from(changed));
        }
        Kind::ServiceAccount => clean_secret_references(new),
        Kind::EndpointSlice => {
            let changed = ["addressType", "endpoints", "ports"]
                .iter()
                .any(|k| !json::semantic_eq(get(old, k), get(new, k)));
            set_generation(new, old_generation + i64::from(changed));
        }
        Kind::Service => {
            copy_field(old, new, "status");
            let null = Value::Null;
            let old_spec = get(old, "spec").unwrap_or(&null);
            if let Some(new_spec) = get_mut(new, "spec") {
                normalize_cluster_ips(old_spec, new_spec);
                drop_type_dependent_fields(old_spec, new_spec);
            }
        }
        Kind::Namespace => {
            copy_field(old, new, "status");
            let null = Value::Null;
            let old_spec = get(old, "spec").unwrap_or(&null);
            if let Some(new_spec) = json::ensure(new, "spec") {
                copy_field(old_spec, new_spec, "finalizers");
            }
        }
        Kind::Node => copy_field(old, new, "status"),
        Kind::Endpoints
        | Kind::Lease
        | Kind::ConfigMap
        | Kind::Secret
        | Kind::Event
        | Kind::EventsV1Event => {}
    }
}

/// `PrepareForUpdate` of the `status` subresource: the spec is kept.
pub(crate) fn for_status_update(kind: Kind, old: &Value, new: &mut Value) {
    if !new.is_object() {
        return;
    }
    match kind {
        Kind::Pod => {
            copy_field(old, new, "spec");
            let null = Value::Null;
            let old_meta = get(old, "metadata").unwrap_or(&null).clone();
            if let Some(meta) = json::ensure(new, "metadata") {
                copy_field(&old_meta, meta, "ownerReferences");
            }
        }
        Kind::Deployment => {
            copy_field(old, new, "spec");
            let null = Value::Null;
            let old_meta = get(old, "metadata").unwrap_or(&null).clone();
            if let Some(meta) = json::ensure(new, "metadata") {
                copy_field(&old_meta, meta, "labels");
            }
        }
        Kind::Service | Kind::Node | Kind::Namespace | Kind::ReplicaSet => {
            copy_field(old, new, "spec")
        }
        Kind::Endpoints
        | Kind::EndpointSlice
        | Kind::Lease
        | Kind::ConfigMap
        | Kind::Secret
        | Kind::ServiceAccount
        | Kind::Event
        | Kind::EventsV1Event => {}
    }
}

fn same(old: &Value, new: &Value, key: &str) -> bool {
    json::semantic_eq(get(old, key), get(new, key))
}

/// `NormalizeClusterIPs` for updates: old clients that only send `clusterIP`.
fn normalize_cluster_ips(old: &Value, new: &mut Value) {
    let (old_ip, new_ip) = (
        string(old, "clusterIP").to_string(),
        string(new, "clusterIP").to_string(),
    );
    if !list(old, "clusterIPs").is_empty() && list(new, "clusterIPs").is_empty() && old_ip == new_ip
    {
        copy_field(old, new, "clusterIPs");
    }
    if old_ip != new_ip {
        if !old_ip.is_empty() && new_ip.is_empty() && same(old, new, "clusterIPs") {
            json::remove(new, "clusterIPs");
        }
        if same(old, new, "clusterIPs") {
            json::set(new, "clusterIPs", json!([new_ip]));
        }
    }
}

fn needs_node_port(spec: &Value) -> bool {
    matches!(string(spec, "type"), "NodePort" | "LoadBalancer")
}

fn needs_hc_node_port(spec: &Value) -> bool {
    string(spec, "type") == "LoadBalancer" && string(spec, "externalTrafficPolicy") == "Local"
}

/// `dropTypeDependentFields`: wipe fields the new type no longer uses when
/// the client left them as they were.
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let (old_type, new_type) = (
        string(old, "type").to_string(),
        string(new, "type").to_string(),
    );
    if old_type != "ExternalName" && new_type == "ExternalName" {
        if same(old, new, "clusterIPs") && same(old, new, "clusterIP") {
            json::remove(new, "clusterIP");
            json::remove(new, "clusterIPs");
        }
        if same(old, new, "ipFamilies") {
            json::remove(new, "ipFamilies");
        }
        if same(old, new, "ipFamilyPolicy") {
            json::remove(new, "ipFamilyPolicy");
        }
    }
    if needs_node_port(old) && !needs_node_port(new) {
        let old_ports: Vec<i64> = list(old, "ports")
            .iter()
            .map(|p| int(p, "nodePort").unwrap_or(0))
            .collect();
        let new_ports: Vec<i64> = list(new, "ports")
            .iter()
            .map(|p| int(p, "nodePort").unwrap_or(0))
            .collect();
        let unchanged = new_ports
            .iter()
            .all(|np| *np == 0 || old_ports.contains(np));
        if unchanged {
            for p in json::list_mut(new, "ports").into_iter().flatten() {
                json::remove(p, "nodePort");
            }
        }
    }
    if needs_hc_node_port(old) && !needs_hc_node_port(new) && same(old, new, "healthCheckNodePort")
    {
        json::remove(new, "healthCheckNodePort");
    }
    if old_type == "LoadBalancer" && new_type != "LoadBalancer" {
        let (o, n) = (
            get(old, "allocateLoadBalancerNodePorts"),
            get(new, "allocateLoadBalancerNodePorts"),
        );
        if o.is_some() && o == n {
            json::remove(new, "allocateLoadBalancerNodePorts");
        }
        if same(old, new, "loadBalancerClass") {
            json::remove(new, "loadBalancerClass");
        }
    }
    if crate::service::externally_accessible(old)
        && !crate::service::externally_accessible(new)
        && same(old, new, "externalTrafficPolicy")
    {
        json::remove(new, "externalTrafficPolicy");
    }
}
