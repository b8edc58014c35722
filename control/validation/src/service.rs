//! Service validation (`ValidateService`, `ValidateServiceUpdate`,
//! `ValidateServiceStatusUpdate`) plus the allocator's ipFamilyPolicy sanity
//! checks that do not depend on cluster configuration.

use std::collections::HashSet;

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, int, list, string, strings};
use crate::meta;
use crate::names::{is_valid_port_num, NameRule};
use crate::net;
use crate::pod::{validate_port_num_or_name, validate_protocol};

/// Supported `spec.type` values (sorted, as Kubernetes lists them).
const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
/// Longest ClientIP affinity timeout.
const MAX_AFFINITY_SECONDS: i64 = 86400;

fn spec_of(obj: &Value) -> &Value {
    static NULL: Value = Value::Null;
    get(obj, "spec").unwrap_or(&NULL)
}

fn is_headless(spec: &Value) -> bool {
    let ips = strings(spec, "clusterIPs");
    ips.len() == 1 && ips[0] == "None"
}

/// `ExternallyAccessible`: NodePort, LoadBalancer, or ClusterIP with externalIPs.
pub(crate) fn externally_accessible(spec: &Value) -> bool {
    match string(spec, "type") {
        "NodePort" | "LoadBalancer" => true,
        "ClusterIP" => !list(spec, "externalIPs").is_empty(),
        _ => false,
    }
}

/// Validation of a new Service.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    validate_service(obj)
}

fn validate_service(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Dns1035);
    let spec = spec_of(obj);
    let sp = Path::new("spec");
    let typ = string(spec, "type");
    let headless = is_headless(spec);
    let ports = list(spec, "ports");
    let cluster_ips = strings(spec, "clusterIPs");

    if ports.is_empty() && !headless && typ != "ExternalName" {
        errs.push(FieldError::required(sp.child("ports"), ""));
    }
    match typ {
        "LoadBalancer" if headless => {
            errs.push(FieldError::invalid(
                sp.child("clusterIPs").index(0),
                Value::from("None"),
                "may not be set to 'None' for LoadBalancer services",
            ));
        }
        "NodePort" if headless => {
            errs.push(FieldError::invalid(
                sp.child("clusterIPs").index(0),
                Value::from("None"),
                "may not be set to 'None' for NodePort services",
            ));
        }
        "ExternalName" => {
            if !cluster_ips.is_empty() {
                errs.push(FieldError::forbidden(
                    sp.child("clusterIPs"),
                    "may not be set for ExternalName services",
                ));
            }
            if !list(spec, "ipFamilies").is_empty() {
                errs.push(FieldError::forbidden(
                    sp.child("ipFamilies"),
                    "may not be set for ExternalName services",
                ));
            }
            if get(spec, "ipFamilyPolicy").is_some() {
                errs.push(FieldError::forbidden(
                    sp.child("ipFamilyPolicy"),
                    "may not be set for ExternalName services",
                ));
            }
            let ext = string(spec, "externalName");
            let cname = ext.strip_suffix('.').unwrap_or(ext);
            if cname.is_empty() {
                errs.push(FieldError::required(sp.child("externalName"), ""));
            } else {
                errs.extend(meta::validate_dns1123_subdomain(
                    cname,
                    &sp.child("externalName"),
                ));
            }
        }
        _ => {}
    }

    let mut port_names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        errs.extend(validate_service_port(
            p,
            ports.len() > 1,
            &mut port_names,
            &sp.child("ports").index(i),
        ));
    }

    if get(spec, "selector").is_some() {
        errs.extend(meta::validate_labels(
            &json::string_map(spec, "selector"),
            &sp.child("selector"),
        ));
    }

    let affinity = string(spec, "sessionAffinity");
    match affinity {
        "" => errs.push(FieldError::required(sp.child("sessionAffinity"), "")),
        "ClientIP" | "None" => {}
        other => errs.push(FieldError::not_supported(
            sp.child("sessionAffinity"),
            Value::from(other),
            &["ClientIP", "None"],
        )),
    }
    let cfg_path = sp.child("sessionAffinityConfig");
    if affinity == "ClientIP" {
        errs.extend(validate_client_ip_affinity(
            get(spec, "sessionAffinityConfig"),
            &cfg_path,
        ));
    } else if affinity == "None" && get(spec, "sessionAffinityConfig").is_some() {
        errs.push(FieldError::forbidden(
            &cfg_path,
            "must not be set when session affinity is None",
        ));
    }

    errs.extend(validate_cluster_ips_related(spec));

    for (i, ip) in strings(spec, "externalIPs").iter().enumerate() {
        let p = sp.child("externalIPs").index(i);
        let e = net::validate_ip(&p, ip);
        if e.is_empty() {
            errs.extend(net::validate_non_special_ip(&p, ip));
        } else {
            errs.extend(e);
        }
    }

    if typ.is_empty() {
        errs.push(FieldError::required(sp.child("type"), ""));
    } else if !TYPES.contains(&typ) {
        errs.push(FieldError::not_supported(
            sp.child("type"),
            Value::from(typ),
            &TYPES,
        ));
    }

    if typ == "ClusterIP" {
        for (i, p) in ports.iter().enumerate() {
            if int(p, "nodePort").unwrap_or(0) != 0 {
                errs.push(FieldError::forbidden(
                    sp.child("ports").index(i).child("nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }

    let mut node_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let np = int(p, "nodePort").unwrap_or(0);
        if np == 0 {
            continue;
        }
        if !node_ports.insert((string(p, "protocol"), np)) {
            errs.push(FieldError::duplicate(
                sp.child("ports").index(i).child("nodePort"),
                Value::from(np),
            ));
        }
    }
    let mut keys = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let protocol = string(p, "protocol");
        let port = int(p, "port").unwrap_or(0);
        if !keys.insert((protocol, port)) {
            errs.push(FieldError::duplicate(
                sp.child("ports").index(i),
                serde_json::json!({"port": port, "protocol": protocol}),
            ));
        }
    }

    let ranges = strings(spec, "loadBalancerSourceRanges");
    if !ranges.is_empty() {
        // Kubernetes spells this path with a capital L.
        let fp = sp.child("LoadBalancerSourceRanges");
        if typ != "LoadBalancer" {
            errs.push(FieldError::forbidden(
                &fp,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for (i, r) in ranges.iter().enumerate() {
            errs.extend(net::validate_cidr(&fp.index(i), r.trim()));
        }
    } else if let Some(val) =
        json::object(get(obj, "metadata").unwrap_or(&Value::Null), "annotations")
            .and_then(|a| a.get("service.beta.kubernetes.io/load-balancer-source-ranges"))
            .and_then(Value::as_str)
    {
        let fp = Path::new("metadata")
            .child("annotations")
            .key("service.beta.kubernetes.io/load-balancer-source-ranges");
        if typ != "LoadBalancer" {
            errs.push(FieldError::forbidden(
                &fp,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        let val = val.trim();
        if !val.is_empty() {
            for r in val.split(',') {
                errs.extend(net::validate_cidr(&fp, r.trim()));
            }
        }
    }

    let alloc = get(spec, "allocateLoadBalancerNodePorts");
    if alloc.is_some() && typ != "LoadBalancer" {
        errs.push(FieldError::forbidden(
            sp.child("allocateLoadBalancerNodePorts"),
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    if typ == "LoadBalancer" && alloc.is_none() {
        // Kubernetes reports this one without the `spec.` prefix.
        errs.push(FieldError::required("allocateLoadBalancerNodePorts", ""));
    }

    if let Some(class) = json::opt_string(spec, "loadBalancerClass") {
        if typ == "LoadBalancer" {
            errs.extend(meta::validate_qualified_name(
                class,
                &sp.child("loadBalancerClass"),
            ));
        } else {
            errs.push(FieldError::forbidden(
                sp.child("loadBalancerClass"),
                "may only be used when service type is 'LoadBalancer'",
            ));
        }
    }

    errs.extend(validate_external_traffic_policy(spec));

    match json::opt_string(spec, "internalTrafficPolicy") {
        None => {
            if matches!(typ, "NodePort" | "LoadBalancer" | "ClusterIP") {
                errs.push(FieldError::required(sp.child("internalTrafficPolicy"), ""));
            }
        }
        Some("Cluster" | "Local") => {}
        Some(other) => errs.push(FieldError::not_supported(
            sp.child("internalTrafficPolicy"),
            Value::from(other),
            &["Cluster", "Local"],
        )),
    }

    if let Some(td) = json::opt_string(spec, "trafficDistribution") {
        let valid = ["PreferClose", "PreferSameZone", "PreferSameNode"];
        if !valid.contains(&td) {
            errs.push(FieldError::not_supported(
                sp.child("trafficDistribution"),
                Value::from(td),
                &valid,
            ));
        }
    }
    errs
}

fn validate_service_port(
    p: &Value,
    require_name: bool,
    all_names: &mut HashSet<String>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = string(p, "name");
    if require_name && name.is_empty() {
        errs.push(FieldError::required(path.child("name"), ""));
    } else if !name.is_empty() {
        errs.extend(meta::validate_dns1123_label(name, &path.child("name")));
        if !all_names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(path.child("name"), Value::from(name)));
        }
    }
    let port = int(p, "port").unwrap_or(0);
    for m in is_valid_port_num(port) {
        errs.push(FieldError::invalid(
            path.child("port"),
            Value::from(port),
            m,
        ));
    }
    errs.extend(validate_protocol(
        string(p, "protocol"),
        &path.child("protocol"),
    ));
    errs.extend(validate_port_num_or_name(
        get(p, "targetPort"),
        &path.child("targetPort"),
    ));
    if let Some(ap) = json::opt_string(p, "appProtocol") {
        errs.extend(meta::validate_qualified_name(
            ap,
            &path.child("appProtocol"),
        ));
    }
    let node_port = int(p, "nodePort").unwrap_or(0);
    if node_port != 0 {
        for m in is_valid_port_num(node_port) {
            errs.push(FieldError::invalid(
                path.child("nodePort"),
                Value::from(node_port),
                m,
            ));
        }
    }
    errs
}

fn validate_client_ip_affinity(cfg: Option<&Value>, path: &Path) -> Vec<FieldError> {
    const DETAIL: &str = "when session affinity type is ClientIP";
    let Some(cfg) = cfg else {
        return vec![FieldError::required(path, DETAIL)];
    };
    let Some(client_ip) = get(cfg, "clientIP") else {
        return vec![FieldError::required(path.child("clientIP"), DETAIL)];
    };
    let tp = path.child("clientIP").child("timeoutSeconds");
    match int(client_ip, "timeoutSeconds") {
        None => vec![FieldError::required(tp, DETAIL)],
        Some(t) if t <= 0 || t > MAX_AFFINITY_SECONDS => vec![FieldError::invalid(
            tp,
            Value::from(t),
            format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
        )],
        Some(_) => Vec::new(),
    }
}

/// `ValidateServiceClusterIPsRelatedFields` plus the policy/family sanity
/// checks the allocator performs before allocating.
fn validate_cluster_ips_related(spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if string(spec, "type") == "ExternalName" {
        return errs;
    }
    let sp = Path::new("spec");
    let ips_path = sp.child("clusterIPs");
    let cluster_ip = string(spec, "clusterIP");
    let cluster_ips = strings(spec, "clusterIPs");
    let ips_value = || Value::from(cluster_ips.clone());

    if !cluster_ip.is_empty() {
        if cluster_ips.is_empty() {
            errs.push(FieldError::required(&ips_path, ""));
        } else if cluster_ips[0] != cluster_ip {
            errs.push(FieldError::invalid(
                &ips_path,
                ips_value(),
                "first value must match `clusterIP`",
            ));
        }
    } else if !cluster_ips.is_empty() {
        errs.push(FieldError::invalid(
            &ips_path,
            ips_value(),
            "must be empty when `clusterIP` is not specified",
        ));
    }

    let families = strings(spec, "ipFamilies");
    let mut seen = HashSet::new();
    for (i, f) in families.iter().enumerate() {
        if *f != "IPv4" && *f != "IPv6" {
            errs.push(FieldError::not_supported(
                sp.child("ipFamilies").index(i),
                Value::from(*f),
                &["IPv4", "IPv6"],
            ));
        }
        if !seen.insert(*f) {
            errs.push(FieldError::duplicate(
                sp.child("ipFamilies").index(i),
                Value::from(*f),
            ));
        }
    }

    let policy = json::opt_string(spec, "ipFamilyPolicy");
    if let Some(p) = policy {
        let valid = ["PreferDualStack", "RequireDualStack", "SingleStack"];
        if !valid.contains(&p) {
            errs.push(FieldError::not_supported(
                sp.child("ipFamilyPolicy"),
                Value::from(p),
                &valid,
            ));
        }
    }

    let mut invalid_ips = false;
    for (i, ip) in cluster_ips.iter().enumerate() {
        if i == 0 && *ip == "None" {
            if cluster_ips.len() > 1 {
                invalid_ips = true;
                errs.push(FieldError::invalid(
                    &ips_path,
                    ips_value(),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        let e = net::validate_ip(&ips_path.index(i), ip);
        invalid_ips |= !e.is_empty();
        errs.extend(e);
    }
    if cluster_ips.len() > 2 {
        errs.push(FieldError::invalid(
            &ips_path,
            ips_value(),
            "may only hold up to 2 values",
        ));
    }
    if invalid_ips {
        return errs;
    }
    if cluster_ips.len() > 1 {
        let fams: Vec<Option<&'static str>> =
            cluster_ips.iter().map(|ip| net::family_of(ip)).collect();
        if !net::is_dual_stack(&fams) {
            errs.push(FieldError::invalid(
                &ips_path,
                ips_value(),
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !is_headless(spec) && !cluster_ips.is_empty() && !families.is_empty() {
        for (i, ip) in cluster_ips.iter().enumerate().take(families.len()) {
            if families[i] == "IPv4" && net::is_ipv6_string(ip) {
                errs.push(FieldError::invalid(
                    ips_path.index(i),
                    Value::from(*ip),
                    format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
            if families[i] == "IPv6" && !net::is_ipv6_string(ip) {
                errs.push(FieldError::invalid(
                    ips_path.index(i),
                    Value::from(*ip),
                    format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }

    // Allocator pre-checks that do not depend on the cluster's configuration.
    if policy == Some("SingleStack") {
        let pp = sp.child("ipFamilyPolicy");
        if cluster_ips.len() == 2 {
            errs.push(FieldError::invalid(
                &pp,
                Value::from("SingleStack"),
                "must be RequireDualStack or PreferDualStack when multiple IPs are specified",
            ));
        }
        if families.len() == 2 {
            errs.push(FieldError::invalid(
                &pp,
                Value::from("SingleStack"),
                "must be RequireDualStack or PreferDualStack when multiple IP families are specified",
            ));
        }
    }
    errs
}

fn validate_external_traffic_policy(spec: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let sp = Path::new("spec");
    let etp = string(spec, "externalTrafficPolicy");
    if !externally_accessible(spec) {
        if !etp.is_empty() {
            errs.push(FieldError::invalid(
                sp.child("externalTrafficPolicy"),
                Value::from(etp),
                "may only be set for externally-accessible services",
            ));
        }
    } else if etp.is_empty() {
        errs.push(FieldError::required(sp.child("externalTrafficPolicy"), ""));
    } else if etp != "Cluster" && etp != "Local" {
        errs.push(FieldError::not_supported(
            sp.child("externalTrafficPolicy"),
            Value::from(etp),
            &["Cluster", "Local"],
        ));
    }
    let needs_hc = string(spec, "type") == "LoadBalancer" && etp == "Local";
    let hc = int(spec, "healthCheckNodePort").unwrap_or(0);
    if !needs_hc {
        if hc != 0 {
            errs.push(FieldError::invalid(
                sp.child("healthCheckNodePort"),
                Value::from(hc),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
    } else if hc != 0 {
        // 0 means "to be allocated by the server".
        for m in is_valid_port_num(hc) {
            errs.push(FieldError::invalid(
                sp.child("healthCheckNodePort"),
                Value::from(hc),
                m,
            ));
        }
    }
    errs
}

/// Validation of a Service update.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let (os, ns) = (spec_of(old), spec_of(new));
    errs.extend(validate_upgrade_downgrade_cluster_ips(os, ns));
    errs.extend(validate_upgrade_downgrade_families(os, ns));
    if string(os, "type") == "LoadBalancer"
        && string(ns, "type") == "LoadBalancer"
        && get(os, "loadBalancerClass") != get(ns, "loadBalancerClass")
    {
        errs.push(FieldError::invalid(
            Path::new("spec").child("loadBalancerClass"),
            get(ns, "loadBalancerClass").cloned().unwrap_or(Value::Null),
            "may not change once set",
        ));
    }
    let needs_hc = |spec: &Value| {
        string(spec, "type") == "LoadBalancer" && string(spec, "externalTrafficPolicy") == "Local"
    };
    let new_hc = int(ns, "healthCheckNodePort").unwrap_or(0);
    // 0 on the new object means "to be (re)allocated by the server".
    if needs_hc(os)
        && needs_hc(ns)
        && new_hc != 0
        && new_hc != int(os, "healthCheckNodePort").unwrap_or(0)
    {
        errs.push(FieldError::forbidden(
            Path::new("spec").child("healthCheckNodePort"),
            "field is immutable",
        ));
    }
    errs.extend(validate_service(new));
    errs
}

fn validate_upgrade_downgrade_cluster_ips(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if string(new, "type") == "ExternalName" || string(old, "type") == "ExternalName" {
        return errs;
    }
    if is_headless(old) && is_headless(new) {
        return errs;
    }
    let p0 = Path::new("spec").child("clusterIPs").index(0);
    let (o, n) = (strings(old, "clusterIPs"), strings(new, "clusterIPs"));
    let nv = || Value::from(n.clone());
    if o.len() == n.len() {
        for (i, ip) in o.iter().enumerate() {
            if *ip != n[i] {
                errs.push(FieldError::invalid(
                    Path::new("spec").child("clusterIPs").index(i),
                    nv(),
                    "may not change once set",
                ));
            }
        }
    } else if o.len() > n.len() {
        if n.is_empty() {
            errs.push(FieldError::invalid(
                &p0,
                nv(),
                "primary clusterIP can not be unset",
            ));
        }
        if !o.is_empty() && !n.is_empty() && n[0] != o[0] {
            errs.push(FieldError::invalid(&p0, nv(), "may not change once set"));
        }
        if n.len() == 1 && json::opt_string(new, "ipFamilyPolicy") != Some("SingleStack") {
            errs.push(FieldError::invalid(
                &p0,
                nv(),
                "`ipFamilyPolicy` must be set to 'SingleStack' when releasing the secondary clusterIP",
            ));
        }
    } else if !o.is_empty() && n[0] != o[0] {
        errs.push(FieldError::invalid(&p0, nv(), "may not change once set"));
    }
    errs
}

fn validate_upgrade_downgrade_families(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if string(new, "type") == "ExternalName" || string(old, "type") == "ExternalName" {
        return errs;
    }
    if is_headless(old) || is_headless(new) {
        return errs;
    }
    let p0 = Path::new("spec").child("ipFamilies").index(0);
    let (o, n) = (strings(old, "ipFamilies"), strings(new, "ipFamilies"));
    let ips = Value::from(strings(new, "clusterIPs"));
    if o.len() == n.len() {
        if o.iter().zip(&n).any(|(a, b)| a != b) {
            errs.push(FieldError::invalid(
                &p0,
                Value::from(n.clone()),
                "may not change once set",
            ));
        }
    } else if o.len() > n.len() {
        if strings(new, "clusterIPs").is_empty() {
            errs.push(FieldError::invalid(
                &p0,
                Value::from(n.clone()),
                "primary ipFamily can not be unset",
            ));
        }
        if !n.is_empty() && n[0] != o[0] {
            errs.push(FieldError::invalid(
                &p0,
                ips.clone(),
                "may not change once set",
            ));
        }
        if n.len() == 1 && json::opt_string(new, "ipFamilyPolicy") != Some("SingleStack") {
            errs.push(FieldError::invalid(
                Path::new("spec").child("clusterIPs").index(0),
                ips,
                "`ipFamilyPolicy` must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if !o.is_empty() && !n.is_empty() && n[0] != o[0] {
        errs.push(FieldError::invalid(&p0, ips, "may not change once set"));
    }
    errs
}

/// Validation of a `services/status` update.
pub(crate) fn validate_status_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let spec = spec_of(new);
    let null = Value::Null;
    let status = get(new, "status").unwrap_or(&null);
    let lb = get(status, "loadBalancer").unwrap_or(&null);
    let ingress_path = Path::new("status").child("loadBalancer").child("ingress");
    let ingress = list(lb, "ingress");
    if string(spec, "type") != "LoadBalancer" && !ingress.is_empty() {
        errs.push(FieldError::forbidden(
            &ingress_path,
            "may only be used when `spec.type` is 'LoadBalancer'",
        ));
    } else {
        for (i, ing) in ingress.iter().enumerate() {
            let p = ingress_path.index(i);
            let ip = string(ing, "ip");
            if !ip.is_empty() {
                errs.extend(net::validate_ip(&p.child("ip"), ip));
            }
            match (json::opt_string(ing, "ipMode"), ip.is_empty()) {
                (Some(_), true) => {
                    errs.push(FieldError::forbidden(
                        p.child("ipMode"),
                        "may not be set when `ip` is not set",
                    ));
                }
                (Some(mode), false) => {
                    if mode != "VIP" && mode != "Proxy" {
                        errs.push(FieldError::not_supported(
                            p.child("ipMode"),
                            Value::from(mode),
                            &["Proxy", "VIP"],
                        ));
                    }
                }
                (None, false) => {
                    errs.push(FieldError::required(
                        p.child("ipMode"),
                        "must be specified when `ip` is set",
                    ));
                }
                (None, true) => {}
            }
            let host = string(ing, "hostname");
            if !host.is_empty() {
                errs.extend(meta::validate_dns1123_subdomain(host, &p.child("hostname")));
                if net::parse_ip_sloppy(host).is_some() {
                    errs.push(FieldError::invalid(
                        p.child("hostname"),
                        Value::from(host),
                        "must be a DNS name, not an IP address",
                    ));
                }
            }
            for (j, port) in list(ing, "ports").iter().enumerate() {
                let pp = p.child("ports").index(j);
                let n = int(port, "port").unwrap_or(0);
                for m in is_valid_port_num(n) {
                    errs.push(FieldError::invalid(pp.child("port"), Value::from(n), m));
                }
                errs.extend(validate_protocol(
                    string(port, "protocol"),
                    &pp.child("protocol"),
                ));
            }
        }
    }
    errs
}
