//! Defaulting: `pkg/apis/core/v1/defaults.go`, `pkg/apis/apps/v1/defaults.go`,
//! `pkg/apis/discovery/v1/defaults.go`, the `+default` markers, plus the
//! request-time fills Kubernetes does outside defaulting but before
//! validation on every write (IP field pairing done by conversion, the
//! Priority admission plugin's `priority`/`preemptionPolicy`, ipFamilies /
//! ipFamilyPolicy set by the Service IP allocator).

use serde_json::{json, Value};

use crate::json::{
    self, default_absent, default_zero, ensure, get, get_mut, list, list_mut, string,
};
use crate::service::externally_accessible;
use crate::Kind;

/// Fills defaults for `kind` in place.
pub(crate) fn apply(kind: Kind, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    default_zero(obj, "apiVersion", Value::from(kind.api_version()));
    default_zero(obj, "kind", Value::from(kind.name()));
    if !kind.namespaced() {
        // rest.BeforeCreate clears the namespace of cluster-scoped objects.
        if let Some(meta) = get_mut(obj, "metadata") {
            json::remove(meta, "namespace");
        }
    }
    match kind {
        Kind::Namespace => namespace(obj),
        Kind::Node => node(obj),
        Kind::Pod => pod(obj),
        Kind::Service => service(obj),
        Kind::Endpoints => endpoints(obj),
        Kind::EndpointSlice => endpoint_slice(obj),
        Kind::Deployment => deployment(obj),
        Kind::ReplicaSet => replica_set(obj),
        Kind::Secret => secret(obj),
        Kind::Lease
        | Kind::ConfigMap
        | Kind::ServiceAccount
        | Kind::Event
        | Kind::EventsV1Event => {}
    }
}

fn namespace(obj: &mut Value) {
    let name = get(obj, "metadata")
        .map(|m| string(m, "name").to_string())
        .unwrap_or_default();
    if !name.is_empty() {
        if let Some(labels) = ensure(obj, "metadata").and_then(|m| ensure(m, "labels")) {
            json::set(labels, "kubernetes.io/metadata.name", Value::from(name));
        }
    }
    if let Some(status) = ensure(obj, "status") {
        default_zero(status, "phase", Value::from("Active"));
    }
}

fn node(obj: &mut Value) {
    if let Some(spec) = get_mut(obj, "spec") {
        pair_primary(
            spec,
            "podCIDR",
            "podCIDRs",
            |v| v.as_str().map(str::to_string),
            Value::from,
        );
    }
    if let Some(status) = get_mut(obj, "status") {
        if get(status, "allocatable").is_none() {
            if let Some(cap) = get(status, "capacity").cloned() {
                json::set(status, "allocatable", cap);
            }
        }
    }
}

/// Keeps a singular field equal to the first element of its plural twin, the
/// way v1 <-> internal conversion does: a singular value that disagrees with
/// (or has no) plural list wins and becomes the whole list; otherwise the
/// singular is filled from the list.
fn pair_primary(
    v: &mut Value,
    single: &str,
    plural: &str,
    read: impl Fn(&Value) -> Option<String>,
    make: impl Fn(String) -> Value,
) {
    let s = string(v, single).to_string();
    let first = list(v, plural).first().and_then(&read);
    if !s.is_empty() {
        if first.as_deref() != Some(s.as_str()) {
            json::set(v, plural, Value::Array(vec![make(s)]));
        }
    } else if let Some(first) = first {
        json::set(v, single, Value::from(first));
    }
}

fn pod(obj: &mut Value) {
    if let Some(spec) = ensure(obj, "spec") {
        pod_spec(spec, true);
    }
    if let Some(status) = get_mut(obj, "status") {
        for (single, plural) in [("podIP", "podIPs"), ("hostIP", "hostIPs")] {
            pair_primary(
                status,
                single,
                plural,
                |e| get(e, "ip").and_then(Value::as_str).map(str::to_string),
                |ip| json!({ "ip": ip }),
            );
        }
    }
}

/// `SetDefaults_PodSpec` and the defaults of everything inside a pod spec;
/// with `is_pod`, also `SetDefaults_Pod` and the Priority admission fills.
pub(crate) fn pod_spec(spec: &mut Value, is_pod: bool) {
    default_zero(spec, "dnsPolicy", Value::from("ClusterFirst"));
    default_zero(spec, "restartPolicy", Value::from("Always"));
    default_absent(spec, "securityContext", json!({}));
    default_absent(spec, "terminationGracePeriodSeconds", Value::from(30));
    default_zero(spec, "schedulerName", Value::from("default-scheduler"));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(items) = list_mut(spec, key) {
            items.iter_mut().for_each(container);
        }
    }
    if let Some(vols) = list_mut(spec, "volumes") {
        vols.iter_mut().for_each(volume);
    }
    if !is_pod {
        return;
    }
    default_absent(spec, "enableServiceLinks", Value::from(true));
    let host_network = json::flag(spec, "hostNetwork");
    for key in ["containers", "initContainers"] {
        let Some(items) = list_mut(spec, key) else {
            continue;
        };
        for c in items.iter_mut() {
            requests_from_limits(c);
            if host_network {
                for port in list_mut(c, "ports").into_iter().flatten() {
                    if json::int(port, "hostPort").unwrap_or(0) == 0 {
                        if let Some(cp) = get(port, "containerPort").cloned() {
                            json::set(port, "hostPort", cp);
                        }
                    }
                }
            }
        }
    }
    if get(spec, "priority").is_none() {
        let priority = match string(spec, "priorityClassName") {
            "" => Some(0),
            "system-node-critical" => Some(2_000_001_000),
            "system-cluster-critical" => Some(2_000_000_000),
            _ => None,
        };
        if let Some(p) = priority {
            json::set(spec, "priority", Value::from(p));
            default_absent(
                spec,
                "preemptionPolicy",
                Value::from("PreemptLowerPriority"),
            );
        }
    }
}

fn requests_from_limits(c: &mut Value) {
    let Some(res) = get_mut(c, "resources") else {
        return;
    };
    let Some(limits) = json::object(res, "limits").cloned() else {
        return;
    };
    if let Some(requests) = ensure(res, "requests").and_then(Value::as_object_mut) {
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

/// `SetDefaults_Container` and the defaults of its ports, probes, handlers
/// and env sources.
fn container(c: &mut Value) {
    if string(c, "imagePullPolicy").is_empty() {
        let policy = default_pull_policy(string(c, "image"));
        json::set(c, "imagePullPolicy", Value::from(policy));
    }
    default_zero(
        c,
        "terminationMessagePath",
        Value::from("/dev/termination-log"),
    );
    default_zero(c, "terminationMessagePolicy", Value::from("File"));
    default_absent(c, "resources", json!({}));
    for port in list_mut(c, "ports").into_iter().flatten() {
        default_zero(port, "protocol", Value::from("TCP"));
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = get_mut(c, key) {
            handler(p);
            default_zero(p, "timeoutSeconds", Value::from(1));
            default_zero(p, "periodSeconds", Value::from(10));
            default_zero(p, "successThreshold", Value::from(1));
            default_zero(p, "failureThreshold", Value::from(3));
        }
    }
    if let Some(lc) = get_mut(c, "lifecycle") {
        for key in ["postStart", "preStop"] {
            if let Some(h) = get_mut(lc, key) {
                handler(h);
            }
        }
    }
    for ev in list_mut(c, "env").into_iter().flatten() {
        if let Some(fr) = get_mut(ev, "valueFrom").and_then(|vf| get_mut(vf, "fieldRef")) {
            default_zero(fr, "apiVersion", Value::from("v1"));
        }
    }
}

/// `SetDefaults_HTTPGetAction` and the gRPC `service` default.
fn handler(h: &mut Value) {
    if let Some(http) = get_mut(h, "httpGet") {
        default_zero(http, "path", Value::from("/"));
        default_zero(http, "scheme", Value::from("HTTP"));
    }
    if let Some(grpc) = get_mut(h, "grpc") {
        default_absent(grpc, "service", Value::from(""));
    }
}

/// The pull policy Kubernetes picks for an image reference: `Always` for a
/// `latest` tag or no tag (and no digest), else `IfNotPresent`.
pub(crate) fn default_pull_policy(image: &str) -> &'static str {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return "IfNotPresent";
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = match last.split_once(':') {
        Some((_, t)) => t,
        None if digest.is_some() => "",
        None => "latest",
    };
    // References that fail to parse (upper case repository) keep IfNotPresent.
    let repo = name.strip_suffix(&format!(":{tag}")).unwrap_or(name);
    let path = repo.split_once('/').map_or(repo, |(host, rest)| {
        if host.contains('.') || host.contains(':') || host == "localhost" {
            rest
        } else {
            repo
        }
    });
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return "IfNotPresent";
    }
    if tag == "latest" {
        "Always"
    } else {
        "IfNotPresent"
    }
}

fn volume(v: &mut Value) {
    let has_source = v
        .as_object()
        .is_some_and(|m| m.iter().any(|(k, val)| k != "name" && !val.is_null()));
    if !has_source {
        json::set(v, "emptyDir", json!({}));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = get_mut(v, key) {
            default_absent(src, "defaultMode", Value::from(420));
        }
    }
    if let Some(hp) = get_mut(v, "hostPath") {
        default_absent(hp, "type", Value::from(""));
    }
    if let Some(d) = get_mut(v, "downwardAPI") {
        downward_items(d);
    }
    if let Some(sources) = get_mut(v, "projected").and_then(|p| list_mut(p, "sources")) {
        for s in sources.iter_mut() {
            if let Some(tok) = get_mut(s, "serviceAccountToken") {
                default_absent(tok, "expirationSeconds", Value::from(3600));
            }
            if let Some(d) = get_mut(s, "downwardAPI") {
                downward_items(d);
            }
        }
    }
}

fn downward_items(d: &mut Value) {
    for item in list_mut(d, "items").into_iter().flatten() {
        if let Some(fr) = get_mut(item, "fieldRef") {
            default_zero(fr, "apiVersion", Value::from("v1"));
        }
    }
}

fn service(obj: &mut Value) {
    let Some(spec) = ensure(obj, "spec") else {
        return;
    };
    default_zero(spec, "sessionAffinity", Value::from("None"));
    if string(spec, "sessionAffinity") == "None" {
        json::remove(spec, "sessionAffinityConfig");
    }
    default_zero(spec, "type", Value::from("ClusterIP"));
    for port in list_mut(spec, "ports").into_iter().flatten() {
        default_zero(port, "protocol", Value::from("TCP"));
        let unset = get(port, "targetPort").is_none_or(json::is_zero);
        if unset {
            let p = get(port, "port").cloned().unwrap_or(Value::from(0));
            json::set(port, "targetPort", p);
        }
    }
    if string(spec, "sessionAffinity") == "ClientIP"
        && json::get_in(
            spec,
            &["sessionAffinityConfig", "clientIP", "timeoutSeconds"],
        )
        .is_none()
    {
        json::set(
            spec,
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    if externally_accessible(spec) {
        default_zero(spec, "externalTrafficPolicy", Value::from("Cluster"));
    }
    let typ = string(spec, "type").to_string();
    if matches!(typ.as_str(), "NodePort" | "LoadBalancer" | "ClusterIP") {
        default_absent(spec, "internalTrafficPolicy", Value::from("Cluster"));
    }
    if typ == "LoadBalancer" {
        default_absent(spec, "allocateLoadBalancerNodePorts", Value::from(true));
    }

    // PrepareForCreate: a lone clusterIP initializes clusterIPs.
    let cluster_ip = string(spec, "clusterIP").to_string();
    if !cluster_ip.is_empty() && list(spec, "clusterIPs").is_empty() {
        json::set(spec, "clusterIPs", json!([cluster_ip]));
    }
    if typ != "ExternalName" {
        ip_families(spec);
    }

    if typ == "LoadBalancer" {
        let ingress = get_mut(obj, "status")
            .and_then(|s| get_mut(s, "loadBalancer"))
            .and_then(|lb| list_mut(lb, "ingress"));
        for ing in ingress.into_iter().flatten() {
            if !string(ing, "ip").is_empty() {
                default_absent(ing, "ipMode", Value::from("VIP"));
            }
        }
    }
}

/// The Service IP allocator's family fields, without cluster knowledge: the
/// cluster is assumed single-stack IPv4 unless the object says otherwise.
fn ip_families(spec: &mut Value) {
    let cluster_ips: Vec<String> = json::strings(spec, "clusterIPs")
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut families: Vec<String> = json::strings(spec, "ipFamilies")
        .into_iter()
        .map(str::to_string)
        .collect();
    for (i, ip) in cluster_ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        if i >= families.len() {
            if let Some(f) = crate::net::family_of(ip) {
                families.push(f.to_string());
            }
        }
    }
    let has_policy = get(spec, "ipFamilyPolicy").is_some();
    if !has_policy && families.len() == 2 {
        json::set(spec, "ipFamilyPolicy", Value::from("RequireDualStack"));
    }
    let headless_selectorless =
        string(spec, "clusterIP") == "None" && json::string_map(spec, "selector").is_empty();
    if headless_selectorless {
        default_absent(spec, "ipFamilyPolicy", Value::from("RequireDualStack"));
        if families.is_empty() {
            families.push("IPv4".to_string());
        }
        if families.len() < 2 && string(spec, "ipFamilyPolicy") != "SingleStack" {
            let alt = if families[0] == "IPv4" {
                "IPv6"
            } else {
                "IPv4"
            };
            families.push(alt.to_string());
        }
    }
    if families.is_empty() {
        families.push("IPv4".to_string());
    }
    default_absent(spec, "ipFamilyPolicy", Value::from("SingleStack"));
    json::set(spec, "ipFamilies", Value::from(families));
}

fn endpoints(obj: &mut Value) {
    for ss in list_mut(obj, "subsets").into_iter().flatten() {
        for port in list_mut(ss, "ports").into_iter().flatten() {
            default_zero(port, "protocol", Value::from("TCP"));
        }
    }
}

fn endpoint_slice(obj: &mut Value) {
    for port in list_mut(obj, "ports").into_iter().flatten() {
        default_absent(port, "name", Value::from(""));
        default_absent(port, "protocol", Value::from("TCP"));
    }
}

fn deployment(obj: &mut Value) {
    let Some(spec) = ensure(obj, "spec") else {
        return;
    };
    default_absent(spec, "replicas", Value::from(1));
    if let Some(strategy) = ensure(spec, "strategy") {
        default_zero(strategy, "type", Value::from("RollingUpdate"));
        if string(strategy, "type") == "RollingUpdate" {
            if let Some(ru) = ensure(strategy, "rollingUpdate") {
                default_absent(ru, "maxUnavailable", Value::from("25%"));
                default_absent(ru, "maxSurge", Value::from("25%"));
            }
        }
    }
    default_absent(spec, "revisionHistoryLimit", Value::from(10));
    default_absent(spec, "progressDeadlineSeconds", Value::from(600));
    if let Some(tspec) = ensure(spec, "template").and_then(|t| ensure(t, "spec")) {
        pod_spec(tspec, false);
    }
}

fn replica_set(obj: &mut Value) {
    let Some(spec) = ensure(obj, "spec") else {
        return;
    };
    default_absent(spec, "replicas", Value::from(1));
    if let Some(tspec) = ensure(spec, "template").and_then(|t| ensure(t, "spec")) {
        pod_spec(tspec, false);
    }
}

/// `SetDefaults_Secret` (type `Opaque`), and what v1 → internal conversion
/// does with `stringData`: each entry overwrites the `data` entry of the same
/// key (base64-encoded here, since `data` holds base64 in JSON), and
/// `stringData` itself is never stored. Done here rather than in prepare so
/// that every write path (create, update, patch results, status) sees only
/// `data`, as the apiserver's decoder guarantees.
fn secret(obj: &mut Value) {
    default_zero(obj, "type", Value::from("Opaque"));
    let Some(Value::Object(string_data)) = json::take(obj, "stringData") else {
        return;
    };
    if string_data.is_empty() {
        return;
    }
    let Some(data) = ensure(obj, "data") else {
        return;
    };
    for (k, v) in string_data {
        let bytes = match v {
            Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        if let Ok(encoded) = serde_json::to_value(k8s_openapi::ByteString(bytes)) {
            json::set(data, &k, encoded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.25"), "IfNotPresent");
        assert_eq!(default_pull_policy("registry:5000/team/app"), "Always");
        assert_eq!(
            default_pull_policy("registry:5000/team/app:v1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("nginx@sha256:abcd"), "IfNotPresent");
        assert_eq!(default_pull_policy("nginx:latest@sha256:abcd"), "Always");
        assert_eq!(default_pull_policy(""), "IfNotPresent");
    }
}
