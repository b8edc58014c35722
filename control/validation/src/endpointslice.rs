//! EndpointSlice (discovery.k8s.io/v1) validation.

use std::collections::HashSet;

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, list, string};
use crate::meta;
use crate::names::{self, NameRule};
use crate::net;
use crate::pod::validate_protocol;

const ADDRESS_TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 20000;
const MAX_TOPOLOGY_LABELS: usize = 16;
const MAX_HINTS: usize = 8;

/// Validation of a new EndpointSlice.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    let addr_type = string(obj, "addressType");
    let tp = Path::new("addressType");
    if addr_type.is_empty() {
        errs.push(FieldError::required(&tp, ""));
    } else if !ADDRESS_TYPES.contains(&addr_type) {
        errs.push(FieldError::not_supported(
            &tp,
            Value::from(addr_type),
            &ADDRESS_TYPES,
        ));
    }
    errs.extend(validate_endpoints(list(obj, "endpoints"), addr_type));
    errs.extend(validate_ports(list(obj, "ports")));
    errs
}

fn validate_endpoints(endpoints: &[Value], addr_type: &str) -> Vec<FieldError> {
    let path = Path::new("endpoints");
    if endpoints.len() > MAX_ENDPOINTS {
        return vec![FieldError::too_many(&path, endpoints.len(), MAX_ENDPOINTS)];
    }
    let mut errs = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let p = path.index(i);
        let ap = p.child("addresses");
        let addrs = list(ep, "addresses");
        if addrs.is_empty() {
            errs.push(FieldError::required(&ap, "must contain at least 1 address"));
        } else if addrs.len() > MAX_ADDRESSES {
            errs.push(FieldError::too_many(&ap, addrs.len(), MAX_ADDRESSES));
        }
        for (j, a) in addrs.iter().enumerate() {
            let a = a.as_str().unwrap_or("");
            let aj = ap.index(j);
            match addr_type {
                "IPv4" | "IPv6" => {
                    let ip_errs = net::validate_ip(&aj, a);
                    if !ip_errs.is_empty() {
                        errs.extend(ip_errs);
                        continue;
                    }
                    if addr_type == "IPv4" && !net::is_ipv4_string(a) {
                        errs.push(FieldError::invalid(
                            &aj,
                            Value::from(a),
                            "must be an IPv4 address",
                        ));
                    }
                    if addr_type == "IPv6" && !net::is_ipv6_string(a) {
                        errs.push(FieldError::invalid(
                            &aj,
                            Value::from(a),
                            "must be an IPv6 address",
                        ));
                    }
                    errs.extend(net::validate_non_special_ip(&aj, a));
                }
                "FQDN" => errs.extend(validate_fqdn(a, &aj)),
                _ => {}
            }
        }
        if let Some(cond) = get(ep, "conditions") {
            for key in ["ready", "serving", "terminating"] {
                if let Some(v) = get(cond, key) {
                    if !v.is_boolean() {
                        errs.push(FieldError::invalid(
                            p.child("conditions").child(key),
                            v.clone(),
                            "must be a boolean",
                        ));
                    }
                }
            }
        }
        if let Some(node) = json::opt_string(ep, "nodeName") {
            for m in names::is_dns1123_subdomain(node) {
                errs.push(FieldError::invalid(
                    p.child("nodeName"),
                    Value::from(node),
                    m,
                ));
            }
        }
        let topo_path = p.child("deprecatedTopology");
        let topo = json::string_map(ep, "deprecatedTopology");
        if topo.len() > MAX_TOPOLOGY_LABELS {
            errs.push(FieldError::too_many(
                &topo_path,
                topo.len(),
                MAX_TOPOLOGY_LABELS,
            ));
        }
        errs.extend(meta::validate_labels(&topo, &topo_path));
        if let Some(h) = json::opt_string(ep, "hostname") {
            errs.extend(meta::validate_dns1123_label(h, &p.child("hostname")));
        }
        if let Some(hints) = get(ep, "hints") {
            let hp = p.child("hints");
            for key in ["forZones", "forNodes"] {
                let items = list(hints, key);
                let kp = hp.child(key);
                if items.len() > MAX_HINTS {
                    errs.push(FieldError::too_many(&kp, items.len(), MAX_HINTS));
                    continue;
                }
                let mut seen = HashSet::new();
                for (j, item) in items.iter().enumerate() {
                    let name = string(item, "name");
                    let np = kp.index(j).child("name");
                    if !seen.insert(name) {
                        errs.push(FieldError::duplicate(&np, Value::from(name)));
                    }
                    let msgs = if key == "forNodes" {
                        names::is_dns1123_subdomain(name)
                    } else {
                        names::is_valid_label_value(name)
                    };
                    for m in msgs {
                        errs.push(FieldError::invalid(&np, Value::from(name), m));
                    }
                }
            }
        }
    }
    errs
}

/// `IsFullyQualifiedDomainName`.
fn validate_fqdn(name: &str, path: &Path) -> Vec<FieldError> {
    if name.is_empty() {
        return vec![FieldError::required(path, "")];
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let errs = names::is_dns1123_subdomain(name);
    if !errs.is_empty() {
        return vec![FieldError::invalid(path, Value::from(name), errs.join(","))];
    }
    if name.split('.').count() < 2 {
        return vec![FieldError::invalid(
            path,
            Value::from(name),
            "should be a domain with at least two segments separated by dots",
        )];
    }
    for label in name.split('.') {
        let errs = names::is_dns1123_label(label);
        if !errs.is_empty() {
            return vec![FieldError::invalid(
                path,
                Value::from(label),
                errs.join(","),
            )];
        }
    }
    Vec::new()
}

fn validate_ports(ports: &[Value]) -> Vec<FieldError> {
    let path = Path::new("ports");
    if ports.len() > MAX_PORTS {
        return vec![FieldError::too_many(&path, ports.len(), MAX_PORTS)];
    }
    let mut errs = Vec::new();
    let mut seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        let name = string(port, "name");
        if !name.is_empty() {
            errs.extend(meta::validate_dns1123_label(name, &p.child("name")));
        }
        if !seen.insert(name) {
            errs.push(FieldError::duplicate(p.child("name"), Value::from(name)));
        }
        match get(port, "protocol") {
            None => errs.push(FieldError::required(p.child("protocol"), "")),
            Some(proto) => {
                let proto = proto.as_str().unwrap_or("");
                if !proto.is_empty() {
                    errs.extend(validate_protocol(proto, &p.child("protocol")));
                } else {
                    errs.push(FieldError::not_supported(
                        p.child("protocol"),
                        Value::from(proto),
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
        }
        if let Some(ap) = json::opt_string(port, "appProtocol") {
            errs.extend(meta::validate_qualified_name(ap, &p.child("appProtocol")));
        }
    }
    errs
}

/// Validation of an EndpointSlice update: everything on create, plus the
/// address type is immutable.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_create(new));
    errs.extend(meta::validate_immutable(
        get(new, "addressType"),
        get(old, "addressType"),
        &Path::new("addressType"),
    ));
    errs
}
