//! Printers for the non-Pod kinds, each following its kube-apiserver
//! counterpart (`printService`, `printNode`, ...). Wide cells are always
//! produced, as the server does; kubectl hides priority-1 columns itself.

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::duration::since;
use crate::json::{arr_at, bool_at, int_at, obj, opt_str, str_at, str_map, time_at};
use crate::labels::{format_labels, selector_string};
use crate::Printed;

fn name(o: &Value) -> Value {
    json!(str_at(o, &["metadata", "name"]))
}

fn age(o: &Value, now: Timestamp) -> Value {
    json!(since(time_at(o, &["metadata", "creationTimestamp"]), now))
}

fn or_placeholder<'a>(s: &'a str, placeholder: &'a str) -> &'a str {
    if s.is_empty() {
        placeholder
    } else {
        s
    }
}

/// `net.JoinHostPort`: brackets hosts that contain a colon (IPv6).
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first three items joined by `,`, then ` + N more...`; `<unset>` when
/// empty (`listWithMoreString`).
fn list_with_more(items: &[String]) -> String {
    const MAX: usize = 3;
    if items.len() > MAX {
        return format!("{} + {} more...", items[..MAX].join(","), items.len() - MAX);
    }
    let joined = items.join(",");
    if joined.is_empty() {
        "<unset>".to_string()
    } else {
        joined
    }
}

// ---------------------------------------------------------------- Service

/// Load-balancer ingress addresses (IP, else hostname), de-duplicated and
/// sorted, as `loadBalancerStatusStringer` (wide, so never truncated).
fn load_balancer_ingress(svc: &Value) -> Vec<String> {
    let mut out: Vec<String> = arr_at(svc, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|ing| {
            let ip = str_at(ing, &["ip"]);
            let host = str_at(ing, &["hostname"]);
            if !ip.is_empty() {
                Some(ip.to_string())
            } else if !host.is_empty() {
                Some(host.to_string())
            } else {
                None
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn service_external_ip(svc: &Value, ty: &str) -> String {
    let external_ips: Vec<&str> = arr_at(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let mut all = load_balancer_ingress(svc);
            all.extend(external_ips.iter().map(|s| s.to_string()));
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => str_at(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `makePortString`: `port/PROTO` or `port:nodePort/PROTO`, joined by `,`.
fn service_ports(svc: &Value) -> String {
    arr_at(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]).unwrap_or(0);
            let proto = or_placeholder(str_at(p, &["protocol"]), "TCP");
            match int_at(p, &["nodePort"]).filter(|n| *n > 0) {
                Some(node_port) => format!("{port}:{node_port}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Service: Name, Type, Cluster-IP, External-IP, Port(s), Age, Selector.
/// A missing `spec.type` is read as its default, `ClusterIP`.
pub(crate) fn service(svc: &Value, now: Timestamp) -> Printed {
    let ty = or_placeholder(str_at(svc, &["spec", "type"]), "ClusterIP");
    let cluster_ip = arr_at(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .or_else(|| opt_str(svc, &["spec", "clusterIP"]).filter(|s| !s.is_empty()))
        .unwrap_or("<none>");
    let ports = service_ports(svc);
    Printed::cells(vec![
        name(svc),
        json!(ty),
        json!(cluster_ip),
        json!(service_external_ip(svc, ty)),
        json!(or_placeholder(&ports, "<none>")),
        age(svc, now),
        json!(format_labels(svc, &["spec", "selector"])),
    ])
}

// ---------------------------------------------------------------- Node

/// Roles from `node-role.kubernetes.io/<role>` label keys and the legacy
/// `kubernetes.io/role=<role>` label, de-duplicated and sorted.
fn node_roles(node: &Value) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in str_map(node, &["metadata", "labels"]) {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.push(v.to_string());
        }
    }
    roles.sort_unstable();
    roles.dedup();
    roles
}

fn node_address(node: &Value, ty: &str) -> String {
    arr_at(node, &["status", "addresses"])
        .iter()
        .find(|a| str_at(a, &["type"]) == ty)
        .map(|a| str_at(a, &["address"]).to_string())
        .unwrap_or_else(|| "<none>".to_string())
}

/// Node: Name, Status, Roles, Age, Version, Internal-IP, External-IP,
/// OS-Image, Kernel-Version, Container-Runtime.
pub(crate) fn node(node: &Value, now: Timestamp) -> Printed {
    // The last Ready condition wins, like the printer's condition map.
    let ready = arr_at(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| str_at(c, &["type"]) == "Ready");
    let mut status: Vec<&str> = vec![match ready {
        Some(c) if str_at(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(node, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }
    let roles = node_roles(node).join(",");
    let info = |field: &str| -> Value {
        json!(or_placeholder(
            str_at(node, &["status", "nodeInfo", field]),
            "<unknown>"
        ))
    };
    Printed::cells(vec![
        name(node),
        json!(status.join(",")),
        json!(or_placeholder(&roles, "<none>")),
        age(node, now),
        json!(str_at(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(node_address(node, "InternalIP")),
        json!(node_address(node, "ExternalIP")),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion"),
    ])
}

// ---------------------------------------------------------------- Namespace

/// Namespace: Name, Status (phase), Age.
pub(crate) fn namespace(ns: &Value, now: Timestamp) -> Printed {
    Printed::cells(vec![
        name(ns),
        json!(str_at(ns, &["status", "phase"])),
        age(ns, now),
    ])
}

// ---------------------------------------------------------------- Endpoints

/// `formatEndpoints` with all ports: `ip:port` for every port of every
/// subset (bare IPs for port-less subsets), first three then ` + N more...`;
/// `<none>` without subsets.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = arr_at(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut count = 0usize;
    let mut more = false;
    for ss in subsets {
        let addresses = arr_at(ss, &["addresses"]);
        let ports = arr_at(ss, &["ports"]);
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            let port = int_at(p, &["port"]).unwrap_or(0);
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(str_at(a, &["ip"]), port));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count.saturating_sub(MAX))
    } else {
        joined
    }
}

/// Endpoints: Name, Endpoints, Age.
pub(crate) fn endpoints(ep: &Value, now: Timestamp) -> Printed {
    Printed::cells(vec![name(ep), json!(format_endpoints(ep)), age(ep, now)])
}

// ---------------------------------------------------------------- EndpointSlice

/// EndpointSlice: Name, AddressType, Ports, Endpoints, Age. A port without a
/// number shows its name, or `*` without either; empty lists show `<unset>`.
pub(crate) fn endpoint_slice(slice: &Value, now: Timestamp) -> Printed {
    let ports: Vec<String> = arr_at(slice, &["ports"])
        .iter()
        .map(|p| match (int_at(p, &["port"]), opt_str(p, &["name"])) {
            (Some(n), _) => n.to_string(),
            (None, Some(port_name)) => port_name.to_string(),
            (None, None) => "*".to_string(),
        })
        .collect();
    let addresses: Vec<String> = arr_at(slice, &["endpoints"])
        .iter()
        .flat_map(|e| arr_at(e, &["addresses"]))
        .map(|a| a.as_str().unwrap_or("").to_string())
        .collect();
    Printed::cells(vec![
        name(slice),
        json!(str_at(slice, &["addressType"])),
        json!(list_with_more(&ports)),
        json!(list_with_more(&addresses)),
        age(slice, now),
    ])
}

// ---------------------------------------------------------------- Deployment

/// Deployment: Name, Ready, Up-to-date, Available, Age, Containers, Images,
/// Selector. Up-to-date and Available are integer cells. A missing
/// `spec.replicas` is read as its default, 1.
pub(crate) fn deployment(d: &Value, now: Timestamp) -> Printed {
    let desired = int_at(d, &["spec", "replicas"]).unwrap_or(1);
    let ready = int_at(d, &["status", "readyReplicas"]).unwrap_or(0);
    let updated = int_at(d, &["status", "updatedReplicas"]).unwrap_or(0);
    let available = int_at(d, &["status", "availableReplicas"]).unwrap_or(0);
    let containers = arr_at(d, &["spec", "template", "spec", "containers"]);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, &["image"])).collect();
    Printed::cells(vec![
        name(d),
        json!(format!("{ready}/{desired}")),
        json!(updated),
        json!(available),
        age(d, now),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(selector_string(obj(d, &["spec", "selector"]))),
    ])
}

// ---------------------------------------------------------------- Lease

/// Lease: Name, Holder (`spec.holderIdentity`, empty when unset), Age.
pub(crate) fn lease(l: &Value, now: Timestamp) -> Printed {
    Printed::cells(vec![
        name(l),
        json!(str_at(l, &["spec", "holderIdentity"])),
        age(l, now),
    ])
}

// ---------------------------------------------------------------- ReplicaSet

/// `metav1.FormatLabelSelector`: the selector string, `<none>` when it
/// selects by nothing (missing or empty), `<error>` when it is invalid.
fn format_label_selector(selector: Option<&Value>) -> String {
    match selector_string(selector).as_str() {
        "" => "<none>".to_string(),
        "<invalid>" => "<error>".to_string(),
        s => s.to_string(),
    }
}

/// ReplicaSet: Name, Desired, Current, Ready (integers), Age, Containers,
/// Images, Selector. A missing `spec.replicas` is read as its default, 1.
/// Unlike the Deployment printer, the selector goes through
/// `FormatLabelSelector` (`<none>` / `<error>`).
pub(crate) fn replica_set(rs: &Value, now: Timestamp) -> Printed {
    let containers = arr_at(rs, &["spec", "template", "spec", "containers"]);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, &["image"])).collect();
    Printed::cells(vec![
        name(rs),
        json!(int_at(rs, &["spec", "replicas"]).unwrap_or(1)),
        json!(int_at(rs, &["status", "replicas"]).unwrap_or(0)),
        json!(int_at(rs, &["status", "readyReplicas"]).unwrap_or(0)),
        age(rs, now),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(format_label_selector(obj(rs, &["spec", "selector"]))),
    ])
}

// ---------------------------------------------------------------- ConfigMap, Secret, ServiceAccount

fn map_len(o: &Value, key: &str) -> usize {
    obj(o, &[key])
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

/// ConfigMap: Name, Data (entries of `data` plus `binaryData`), Age.
pub(crate) fn config_map(cm: &Value, now: Timestamp) -> Printed {
    Printed::cells(vec![
        name(cm),
        json!(map_len(cm, "data") + map_len(cm, "binaryData")),
        age(cm, now),
    ])
}

/// Secret: Name, Type, Data (entries of `data`), Age.
pub(crate) fn secret(s: &Value, now: Timestamp) -> Printed {
    Printed::cells(vec![
        name(s),
        json!(str_at(s, &["type"])),
        json!(map_len(s, "data")),
        age(s, now),
    ])
}

/// ServiceAccount: Name, Secrets (entries of `secrets`), Age.
pub(crate) fn service_account(sa: &Value, now: Timestamp) -> Printed {
    Printed::cells(vec![
        name(sa),
        json!(arr_at(sa, &["secrets"]).len()),
        age(sa, now),
    ])
}

// ---------------------------------------------------------------- Event

/// Where an event's fields live: core/v1 names, or the events.k8s.io/v1
/// names of the same internal fields.
struct EventFields {
    involved: &'static str,
    message: &'static str,
    source: &'static str,
    first: &'static str,
    last: &'static str,
    count: &'static str,
    controller: &'static str,
}

const CORE_EVENT: EventFields = EventFields {
    involved: "involvedObject",
    message: "message",
    source: "source",
    first: "firstTimestamp",
    last: "lastTimestamp",
    count: "count",
    controller: "reportingComponent",
};

const EVENTS_V1_EVENT: EventFields = EventFields {
    involved: "regarding",
    message: "note",
    source: "deprecatedSource",
    first: "deprecatedFirstTimestamp",
    last: "deprecatedLastTimestamp",
    count: "deprecatedCount",
    controller: "reportingController",
};

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

/// Event (core/v1 or events.k8s.io/v1, told apart by `apiVersion`): Last
/// Seen, Type, Reason, Object, Subobject, Source, Message, First Seen,
/// Count, Name — `printEvent`. First Seen is `firstTimestamp`, else
/// `eventTime`; Last Seen is `series.lastObservedTime`, else
/// `lastTimestamp`, else First Seen (`<unknown>` when none is set). Count
/// is `series.count`, else `count`, else 1 (singleton events of the new API
/// carry none). Object is `kind/name` with the kind lower-cased.
pub(crate) fn event(ev: &Value, now: Timestamp) -> Printed {
    let f = if str_at(ev, &["apiVersion"]).starts_with("events.k8s.io/") {
        &EVENTS_V1_EVENT
    } else {
        &CORE_EVENT
    };
    let first = match time_at(ev, &[f.first]) {
        Some(t) => since(Some(t), now),
        None => since(time_at(ev, &["eventTime"]), now),
    };
    let mut last = match time_at(ev, &[f.last]) {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = int_at(ev, &[f.count]).unwrap_or(0);
    if obj(ev, &["series"]).is_some() {
        last = since(time_at(ev, &["series", "lastObservedTime"]), now);
        count = int_at(ev, &["series", "count"]).unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let kind = str_at(ev, &[f.involved, "kind"]).to_lowercase();
    let involved_name = str_at(ev, &[f.involved, "name"]);
    let target = if involved_name.is_empty() {
        kind
    } else {
        format!("{kind}/{involved_name}")
    };
    // `formatEventSource`: the source, else the reporting fields.
    let component = first_non_empty(
        str_at(ev, &[f.source, "component"]),
        str_at(ev, &[f.controller]),
    );
    let host = first_non_empty(
        str_at(ev, &[f.source, "host"]),
        str_at(ev, &["reportingInstance"]),
    );
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    Printed::cells(vec![
        json!(last),
        json!(str_at(ev, &["type"])),
        json!(str_at(ev, &["reason"])),
        json!(target),
        json!(str_at(ev, &[f.involved, "fieldPath"])),
        json!(source),
        json!(str_at(ev, &[f.message]).trim()),
        json!(first),
        json!(count),
        name(ev),
    ])
}

// ---------------------------------------------------------------- default

/// The default table convertor: Name and the creation time in RFC 3339 UTC
/// (Go's zero time when unset).
pub(crate) fn default(o: &Value) -> Printed {
    let created = time_at(o, &["metadata", "creationTimestamp"])
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    Printed::cells(vec![name(o), json!(created)])
}
