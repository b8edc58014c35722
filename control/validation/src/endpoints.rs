//! Endpoints (core/v1) validation (`ValidateEndpoints`, `ValidateEndpointsUpdate`).

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, int, list, string};
use crate::meta;
use crate::names::{self, is_valid_port_num, NameRule};
use crate::net;
use crate::pod::validate_protocol;

/// Validation of new Endpoints.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    let path = Path::new("subsets");
    for (i, ss) in list(obj, "subsets").iter().enumerate() {
        let p = path.index(i);
        let (addrs, not_ready) = (list(ss, "addresses"), list(ss, "notReadyAddresses"));
        if addrs.is_empty() && not_ready.is_empty() {
            errs.push(FieldError::required(
                &p,
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            errs.extend(validate_address(a, &p.child("addresses").index(j)));
        }
        for (j, a) in not_ready.iter().enumerate() {
            errs.extend(validate_address(a, &p.child("notReadyAddresses").index(j)));
        }
        let ports = list(ss, "ports");
        for (j, port) in ports.iter().enumerate() {
            errs.extend(validate_port(
                port,
                ports.len() > 1,
                &p.child("ports").index(j),
            ));
        }
    }
    errs
}

fn validate_address(a: &Value, path: &Path) -> Vec<FieldError> {
    let ip = string(a, "ip");
    let ip_path = path.child("ip");
    let mut errs = net::validate_ip(&ip_path, ip);
    let host = string(a, "hostname");
    if !host.is_empty() {
        errs.extend(meta::validate_dns1123_label(host, &path.child("hostname")));
    }
    if let Some(node) = json::opt_string(a, "nodeName") {
        for m in names::is_dns1123_subdomain(node) {
            errs.push(FieldError::invalid(
                path.child("nodeName"),
                Value::from(node),
                m,
            ));
        }
    }
    errs.extend(net::validate_non_special_ip(&ip_path, ip));
    errs
}

fn validate_port(port: &Value, require_name: bool, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = string(port, "name");
    if require_name && name.is_empty() {
        errs.push(FieldError::required(path.child("name"), ""));
    } else if !name.is_empty() {
        errs.extend(meta::validate_dns1123_label(name, &path.child("name")));
    }
    let n = int(port, "port").unwrap_or(0);
    for m in is_valid_port_num(n) {
        errs.push(FieldError::invalid(path.child("port"), Value::from(n), m));
    }
    errs.extend(validate_protocol(
        string(port, "protocol"),
        &path.child("protocol"),
    ));
    if let Some(ap) = json::opt_string(port, "appProtocol") {
        errs.extend(meta::validate_qualified_name(
            ap,
            &path.child("appProtocol"),
        ));
    }
    errs
}

/// Validation of an Endpoints update.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_create(new));
    errs
}
