//! Pod validation (`ValidatePodCreate`, `ValidatePodUpdate`,
//! `ValidatePodStatusUpdate`) and the pod spec / pod template validation that
//! Deployments reuse.

use std::collections::HashSet;

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, flag, get, int, list, string};
use crate::meta;
use crate::names::{self, inclusive_range_error, is_valid_port_name, is_valid_port_num, NameRule};
use crate::net;
use crate::quantity::Quantity;

const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
const MAX_INT32: i64 = i32::MAX as i64;
const FILE_MODE_ERROR: &str = "must be a number between 0 and 0777 (octal), both inclusive";
/// Volume source fields in the order `validateVolumeSource` counts them.
const VOLUME_TYPES: [&str; 29] = [
    "hostPath",
    "emptyDir",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "flocker",
    "persistentVolumeClaim",
    "rbd",
    "quobyte",
    "cinder",
    "cephfs",
    "downwardAPI",
    "fc",
    "azureFile",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "azureDisk",
    "storageos",
    "csi",
    "configMap",
    "projected",
    "scaleIO",
    "ephemeral",
    "image",
];
const UPDATABLE_POD_SPEC_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Validation of a new Pod.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = validate_metadata_and_spec(obj);
    let spec = get(obj, "spec").unwrap_or(&Value::Null);
    let spec_path = Path::new("spec");
    if !list(spec, "ephemeralContainers").is_empty() {
        errs.push(FieldError::forbidden(
            spec_path.child("ephemeralContainers"),
            "cannot be set on create",
        ));
    }
    if !string(spec, "nodeName").is_empty() && !list(spec, "schedulingGates").is_empty() {
        errs.push(FieldError::forbidden(
            spec_path.child("nodeName"),
            "cannot be set until all schedulingGates have been cleared",
        ));
    }
    errs.extend(validate_pod_ips(obj));
    errs
}

fn validate_metadata_and_spec(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    let spec = get(obj, "spec").unwrap_or(&Value::Null);
    errs.extend(validate_pod_spec(spec, &Path::new("spec")));
    errs
}

/// Validation of a Pod update: everything [`validate_create`] checks on the
/// spec, plus the pod-spec immutability rules.
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_metadata_and_spec(new));
    let null = Value::Null;
    let old_spec = get(old, "spec").unwrap_or(&null);
    let new_spec = get(new, "spec").unwrap_or(&null);
    errs.extend(validate_spec_update(old_spec, new_spec));
    errs
}

fn validate_spec_update(old_spec: &Value, new_spec: &Value) -> Vec<FieldError> {
    let spec_path = Path::new("spec");
    let mut errs = Vec::new();

    for key in ["containers", "initContainers"] {
        let (new_c, old_c) = (list(new_spec, key), list(old_spec, key));
        if new_c.len() != old_c.len() {
            errs.push(FieldError::forbidden(
                spec_path.child(key),
                "pod updates may not add or remove containers",
            ));
            return errs;
        }
        for (i, c) in new_c.iter().enumerate() {
            let image = string(c, "image");
            let p = spec_path.child(key).index(i).child("image");
            if image.is_empty() {
                errs.push(FieldError::required(&p, ""));
            }
            if image.trim() != image {
                errs.push(FieldError::invalid(
                    &p,
                    Value::from(image),
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }

    let ads_path = spec_path.child("activeDeadlineSeconds");
    match (
        int(new_spec, "activeDeadlineSeconds"),
        int(old_spec, "activeDeadlineSeconds"),
    ) {
        (Some(n), old) => {
            if !(0..=MAX_INT32).contains(&n) {
                errs.push(FieldError::invalid(
                    &ads_path,
                    Value::from(n),
                    inclusive_range_error(0, MAX_INT32),
                ));
                return errs;
            }
            if let Some(o) = old {
                if o < n {
                    errs.push(FieldError::invalid(
                        &ads_path,
                        Value::from(n),
                        "must be less than or equal to previous value",
                    ));
                    return errs;
                }
            }
        }
        (None, Some(_)) => {
            errs.push(FieldError::invalid(
                &ads_path,
                Value::Null,
                "must not update from a positive integer to nil value",
            ));
        }
        (None, None) => {}
    }

    errs.extend(validate_only_added_tolerations(
        list(new_spec, "tolerations"),
        list(old_spec, "tolerations"),
        &spec_path.child("tolerations"),
    ));

    // Munge the fields that may change, then require equality.
    let mut munged = new_spec.clone();
    for key in ["containers", "initContainers"] {
        if let Some(items) = json::list_mut(&mut munged, key) {
            for (c, old_c) in items.iter_mut().zip(list(old_spec, key)) {
                match get(old_c, "image") {
                    Some(img) => json::set(c, "image", img.clone()),
                    None => json::remove(c, "image"),
                }
            }
        }
    }
    for key in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match get(old_spec, key) {
            Some(v) => json::set(&mut munged, key, v.clone()),
            None => json::remove(&mut munged, key),
        }
    }
    if int(old_spec, "terminationGracePeriodSeconds").is_some_and(|t| t < 0)
        && int(&munged, "terminationGracePeriodSeconds") == Some(1)
    {
        if let Some(v) = get(old_spec, "terminationGracePeriodSeconds") {
            json::set(&mut munged, "terminationGracePeriodSeconds", v.clone());
        }
    }
    if !json::semantic_eq(Some(&munged), Some(old_spec)) {
        let mut paths = Vec::new();
        json::diff_paths("spec", Some(old_spec), Some(&munged), &mut paths);
        let diff: String = paths.iter().map(|p| format!("\n  changed: {p}")).collect();
        errs.push(FieldError::forbidden(
            &spec_path,
            format!(
                "pod updates may not change fields other than {UPDATABLE_POD_SPEC_FIELDS}{diff}"
            ),
        ));
    }
    errs
}

fn validate_only_added_tolerations(new: &[Value], old: &[Value], path: &Path) -> Vec<FieldError> {
    for o in old {
        let found = new.iter().any(|n| {
            let mut clone = o.clone();
            match get(n, "tolerationSeconds") {
                Some(s) => json::set(&mut clone, "tolerationSeconds", s.clone()),
                None => json::remove(&mut clone, "tolerationSeconds"),
            }
            json::semantic_eq(Some(&clone), Some(n))
        });
        if !found {
            return vec![FieldError::forbidden(
                path,
                "existing toleration can not be modified except its tolerationSeconds",
            )];
        }
    }
    Vec::new()
}

/// Validation of a `pods/status` update.
pub(crate) fn validate_status_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let status = get(new, "status").unwrap_or(&Value::Null);
    // Kubernetes reports condition types under `metadata.conditions[i].Type`.
    let cond_path = Path::new("metadata").child("conditions");
    for (i, c) in list(status, "conditions").iter().enumerate() {
        let t = string(c, "type");
        if !matches!(t, "PodScheduled" | "Ready" | "Initialized") {
            errs.extend(meta::validate_qualified_name(
                t,
                &cond_path.index(i).child("Type"),
            ));
        }
        errs.extend(validate_condition_status(
            c,
            &Path::new("status").child("conditions").index(i),
        ));
    }
    let null = Value::Null;
    let new_spec = get(new, "spec").unwrap_or(&null);
    let old_spec = get(old, "spec").unwrap_or(&null);
    let status_path = Path::new("status");
    if string(new_spec, "nodeName") != string(old_spec, "nodeName") {
        errs.push(FieldError::forbidden(
            status_path.child("nodeName"),
            "may not be changed directly",
        ));
    }
    let nominated = string(status, "nominatedNodeName");
    let old_status = get(old, "status").unwrap_or(&null);
    if !nominated.is_empty() && nominated != string(old_status, "nominatedNodeName") {
        for m in names::is_dns1123_subdomain(nominated) {
            errs.push(FieldError::invalid(
                status_path.child("nominatedNodeName"),
                Value::from(nominated),
                m,
            ));
        }
    }
    errs.extend(meta::validate_immutable(
        get(status, "qosClass"),
        get(old_status, "qosClass"),
        &status_path.child("qosClass"),
    ));
    let restart_policy = string(old_spec, "restartPolicy");
    for (key, policy) in [
        ("containerStatuses", restart_policy),
        ("ephemeralContainerStatuses", "Never"),
    ] {
        errs.extend(validate_container_state_transition(
            list(status, key),
            list(old_status, key),
            &status_path.child(key),
            policy,
        ));
    }
    errs.extend(validate_pod_ips(new));
    errs
}

/// `ValidateContainerStateTransition`: containers that should not restart
/// may not leave the terminated state.
fn validate_container_state_transition(
    new: &[Value],
    old: &[Value],
    path: &Path,
    restart_policy: &str,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if restart_policy == "Always" {
        return errs;
    }
    for (i, o) in old.iter().enumerate() {
        let Some(terminated) = json::get_in(o, &["state", "terminated"]) else {
            continue;
        };
        if int(terminated, "exitCode").unwrap_or(0) != 0 && restart_policy == "OnFailure" {
            continue;
        }
        let name = string(o, "name");
        for n in new {
            if string(n, "name") == name && json::get_in(n, &["state", "terminated"]).is_none() {
                errs.push(FieldError::forbidden(
                    path.index(i).child("state"),
                    "may not be transitioned to non-terminated state",
                ));
            }
        }
    }
    errs
}

/// A condition's `status` must be "True", "False" or "Unknown".
pub(crate) fn validate_condition_status(cond: &Value, path: &Path) -> Vec<FieldError> {
    let status = string(cond, "status");
    match status {
        "True" | "False" | "Unknown" => Vec::new(),
        "" => vec![FieldError::required(path.child("status"), "")],
        other => vec![FieldError::not_supported(
            path.child("status"),
            Value::from(other),
            &["False", "True", "Unknown"],
        )],
    }
}

/// `validatePodIPs` and `validateHostIPs`.
fn validate_pod_ips(pod: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let status = get(pod, "status").unwrap_or(&Value::Null);
    for key in ["podIPs", "hostIPs"] {
        let path = Path::new("status").child(key);
        let entries = list(status, key);
        let ips: Vec<&str> = entries.iter().map(|e| string(e, "ip")).collect();
        let mut bad = false;
        for (i, ip) in ips.iter().enumerate() {
            let e = net::validate_ip(&path.index(i), ip);
            bad |= !e.is_empty();
            errs.extend(e);
        }
        if ips.len() > 1 && !bad {
            let fams: Vec<Option<&'static str>> = ips.iter().map(|ip| net::family_of(ip)).collect();
            if !net::is_dual_stack(&fams) {
                errs.push(FieldError::invalid(
                    &path,
                    Value::from(entries.to_vec()),
                    "may specify no more than one IP for each IP family",
                ));
            }
            let mut seen = HashSet::new();
            for (i, ip) in ips.iter().enumerate() {
                if !seen.insert(*ip) {
                    errs.push(FieldError::duplicate(path.index(i), entries[i].clone()));
                }
            }
        }
    }
    errs
}

/// `ValidatePodTemplateSpec` for a template at `path` (e.g. `spec.template`).
pub(crate) fn validate_pod_template(template: &Value, path: &Path) -> Vec<FieldError> {
    let null = Value::Null;
    let tmeta = get(template, "metadata").unwrap_or(&null);
    let mut errs = meta::validate_labels(&json::string_map(tmeta, "labels"), &path.child("labels"));
    errs.extend(meta::validate_annotations(
        &json::string_map(tmeta, "annotations"),
        &path.child("annotations"),
    ));
    let spec = get(template, "spec").unwrap_or(&null);
    errs.extend(validate_pod_spec(spec, &path.child("spec")));
    if !list(spec, "ephemeralContainers").is_empty() {
        errs.push(FieldError::forbidden(
            path.child("spec").child("ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
    errs
}

/// `ValidatePodSpec`.
pub(crate) fn validate_pod_spec(spec: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let volumes = validate_volumes(list(spec, "volumes"), &path.child("volumes"), &mut errs);

    // Regular containers.
    let containers = list(spec, "containers");
    let cpath = path.child("containers");
    if containers.is_empty() {
        errs.push(FieldError::required(&cpath, ""));
    }
    let mut all_names: HashSet<&str> = HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let p = cpath.index(i);
        errs.extend(validate_container_common(c, &volumes, &p));
        let name = string(c, "name");
        if !all_names.insert(name) {
            errs.push(FieldError::duplicate(p.child("name"), Value::from(name)));
        }
        errs.extend(validate_lifecycle(c, &p));
        errs.extend(validate_probe_kind(c, "livenessProbe", &p));
        errs.extend(validate_probe_kind(c, "readinessProbe", &p));
        errs.extend(validate_probe_kind(c, "startupProbe", &p));
        if get(c, "restartPolicy").is_some() {
            errs.push(FieldError::forbidden(
                p.child("restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    errs.extend(validate_unique_host_ports(containers, &cpath));

    // Init containers.
    let ipath = path.child("initContainers");
    for (i, c) in list(spec, "initContainers").iter().enumerate() {
        let p = ipath.index(i);
        errs.extend(validate_container_common(c, &volumes, &p));
        let mut restart_always = false;
        if let Some(rp) = get(c, "restartPolicy") {
            let rp = rp.as_str().unwrap_or("");
            restart_always = rp == "Always";
            if !restart_always {
                errs.push(FieldError::not_supported(
                    p.child("restartPolicy"),
                    Value::from(rp),
                    &["Always"],
                ));
            }
        }
        let name = string(c, "name");
        if all_names.contains(name) {
            errs.push(FieldError::duplicate(p.child("name"), Value::from(name)));
        } else if !name.is_empty() {
            all_names.insert(name);
        }
        errs.extend(validate_unique_host_ports(std::slice::from_ref(c), &ipath));
        if restart_always {
            errs.extend(validate_lifecycle(c, &p));
            errs.extend(validate_probe_kind(c, "livenessProbe", &p));
            errs.extend(validate_probe_kind(c, "readinessProbe", &p));
            errs.extend(validate_probe_kind(c, "startupProbe", &p));
        } else {
            for key in [
                "lifecycle",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            ] {
                if get(c, key).is_some() {
                    errs.push(FieldError::forbidden(
                        p.child(key),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
        }
    }

    // Ephemeral containers (only reachable on update paths).
    let epath = path.child("ephemeralContainers");
    for (i, c) in list(spec, "ephemeralContainers").iter().enumerate() {
        let p = epath.index(i);
        errs.extend(validate_container_common(c, &volumes, &p));
        let name = string(c, "name");
        if all_names.contains(name) {
            errs.push(FieldError::duplicate(p.child("name"), Value::from(name)));
        } else {
            all_names.insert(name);
        }
    }

    // hostNetwork: container ports must equal host ports.
    if flag(spec, "hostNetwork") {
        for (i, c) in containers.iter().enumerate() {
            for (j, port) in list(c, "ports").iter().enumerate() {
                let cp = int(port, "containerPort").unwrap_or(0);
                let hp = int(port, "hostPort").unwrap_or(0);
                if hp != 0 && hp != cp {
                    errs.push(FieldError::invalid(
                        cpath
                            .index(i)
                            .child("ports")
                            .index(j)
                            .child("containerPort"),
                        Value::from(cp),
                        "must match `hostPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }

    errs.extend(validate_enum(
        string(spec, "restartPolicy"),
        &path.child("restartPolicy"),
        &["Always", "OnFailure", "Never"],
    ));
    let dns_policy = string(spec, "dnsPolicy");
    errs.extend(validate_enum(
        dns_policy,
        &path.child("dnsPolicy"),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    ));
    errs.extend(meta::validate_labels(
        &json::string_map(spec, "nodeSelector"),
        &path.child("nodeSelector"),
    ));
    if let Some(sc) = get(spec, "securityContext") {
        errs.extend(validate_pod_security_context(
            sc,
            &path.child("securityContext"),
        ));
    }
    for (i, s) in list(spec, "imagePullSecrets").iter().enumerate() {
        if string(s, "name").is_empty() {
            errs.push(FieldError::required(
                path.child("imagePullSecrets").index(i).child("name"),
                "",
            ));
        }
    }
    errs.extend(validate_dns_config(
        get(spec, "dnsConfig"),
        dns_policy,
        &path.child("dnsConfig"),
    ));
    for (i, g) in list(spec, "readinessGates").iter().enumerate() {
        errs.extend(meta::validate_qualified_name(
            string(g, "conditionType"),
            &path.child("readinessGates").index(i).child("conditionType"),
        ));
    }
    let mut gates = HashSet::new();
    for (i, g) in list(spec, "schedulingGates").iter().enumerate() {
        let p = path.child("schedulingGates").index(i);
        let name = string(g, "name");
        errs.extend(meta::validate_qualified_name(name, &p));
        if !gates.insert(name) {
            errs.push(FieldError::duplicate(&p, Value::from(name)));
        }
    }
    errs.extend(validate_topology_spread(
        list(spec, "topologySpreadConstraints"),
        &path.child("topologySpreadConstraints"),
    ));

    for (key, rule) in [
        ("serviceAccountName", NameRule::Subdomain),
        ("nodeName", NameRule::Subdomain),
        ("priorityClassName", NameRule::Subdomain),
    ] {
        let v = string(spec, key);
        if !v.is_empty() {
            for m in names::name_errors(rule, v, false) {
                errs.push(FieldError::invalid(path.child(key), Value::from(v), m));
            }
        }
    }
    if let Some(ads) = int(spec, "activeDeadlineSeconds") {
        if !(1..=MAX_INT32).contains(&ads) {
            errs.push(FieldError::invalid(
                path.child("activeDeadlineSeconds"),
                Value::from(ads),
                inclusive_range_error(1, MAX_INT32),
            ));
        }
    }
    for key in ["hostname", "subdomain"] {
        let v = string(spec, key);
        if !v.is_empty() {
            errs.extend(meta::validate_dns1123_label(v, &path.child(key)));
        }
    }
    errs.extend(validate_tolerations(
        list(spec, "tolerations"),
        &path.child("tolerations"),
    ));
    for (i, alias) in list(spec, "hostAliases").iter().enumerate() {
        let p = path.child("hostAliases").index(i);
        errs.extend(net::validate_ip(&p.child("ip"), string(alias, "ip")));
        for h in json::strings(alias, "hostnames") {
            errs.extend(meta::validate_dns1123_subdomain(h, &p.child("hostnames")));
        }
    }
    if let Some(pp) = get(spec, "preemptionPolicy") {
        let pp = pp.as_str().unwrap_or("");
        if pp.is_empty() {
            errs.push(FieldError::required(path.child("preemptionPolicy"), ""));
        } else if pp != "PreemptLowerPriority" && pp != "Never" {
            errs.push(FieldError::not_supported(
                path.child("preemptionPolicy"),
                Value::from(pp),
                &["PreemptLowerPriority", "Never"],
            ));
        }
    }
    errs
}

/// Enumerated string: Required when empty, NotSupported when unknown.
fn validate_enum(value: &str, path: &Path, valid: &[&str]) -> Vec<FieldError> {
    if value.is_empty() {
        vec![FieldError::required(path, "")]
    } else if !valid.contains(&value) {
        vec![FieldError::not_supported(path, Value::from(value), valid)]
    } else {
        Vec::new()
    }
}

/// `ValidateVolumes`; returns the declared volume names.
fn validate_volumes<'a>(
    volumes: &'a [Value],
    path: &Path,
    errs: &mut Vec<FieldError>,
) -> HashSet<&'a str> {
    let mut names_seen = HashSet::new();
    for (i, vol) in volumes.iter().enumerate() {
        let p = path.index(i);
        errs.extend(validate_volume_source(vol, &p));
        let name = string(vol, "name");
        let np = p.child("name");
        if name.is_empty() {
            errs.push(FieldError::required(&np, ""));
        } else {
            errs.extend(meta::validate_dns1123_label(name, &np));
        }
        if !names_seen.insert(name) {
            errs.push(FieldError::duplicate(&np, Value::from(name)));
        }
    }
    names_seen
}

fn validate_file_mode(v: &Value, key: &str, path: &Path) -> Vec<FieldError> {
    match int(v, key) {
        Some(m) if !(0..=0o777).contains(&m) => {
            vec![FieldError::invalid(
                path.child(key),
                Value::from(m),
                FILE_MODE_ERROR,
            )]
        }
        _ => Vec::new(),
    }
}

fn validate_volume_source(vol: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(map) = vol.as_object() else {
        return vec![FieldError::required(path, "must specify a volume type")];
    };
    // Kubernetes counts volume types in this order; the first is the volume's
    // type, later ones are reported as extra.
    let mut sources: Vec<&str> = VOLUME_TYPES
        .iter()
        .copied()
        .filter(|k| map.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    sources.extend(
        map.iter()
            .filter(|(k, v)| *k != "name" && !v.is_null() && !VOLUME_TYPES.contains(&k.as_str()))
            .map(|(k, _)| k.as_str()),
    );
    if sources.is_empty() {
        errs.push(FieldError::required(path, "must specify a volume type"));
        return errs;
    }
    for extra in sources.iter().skip(1) {
        errs.push(FieldError::forbidden(
            path.child(extra),
            "may not specify more than 1 volume type",
        ));
    }
    let kind = sources[0];
    let Some(src) = map.get(kind) else {
        return errs;
    };
    let p = path.child(kind);
    match kind {
        "hostPath" => {
            if string(src, "path").is_empty() {
                errs.push(FieldError::required(p.child("path"), ""));
            }
            errs.extend(validate_no_backsteps(string(src, "path"), &p.child("path")));
            if let Some(t) = get(src, "type") {
                let t = t.as_str().unwrap_or("");
                let valid = [
                    "",
                    "BlockDevice",
                    "CharDevice",
                    "Directory",
                    "DirectoryOrCreate",
                    "File",
                    "FileOrCreate",
                    "Socket",
                ];
                if !valid.contains(&t) {
                    errs.push(FieldError::not_supported(
                        p.child("type"),
                        Value::from(t),
                        &valid,
                    ));
                }
            }
        }
        "emptyDir" => {
            if let Some(limit) = json::opt_string(src, "sizeLimit") {
                if Quantity::parse(limit).is_ok_and(|q| q.is_negative()) {
                    errs.push(FieldError::forbidden(
                        p.child("sizeLimit"),
                        "SizeLimit field must be a valid resource quantity",
                    ));
                }
            }
        }
        "secret" => {
            if string(src, "secretName").is_empty() {
                errs.push(FieldError::required(p.child("secretName"), ""));
            }
            errs.extend(validate_file_mode(src, "defaultMode", &p));
            errs.extend(validate_key_to_paths(src, &p));
        }
        "configMap" => {
            if string(src, "name").is_empty() {
                errs.push(FieldError::required(p.child("name"), ""));
            }
            errs.extend(validate_file_mode(src, "defaultMode", &p));
            errs.extend(validate_key_to_paths(src, &p));
        }
        "persistentVolumeClaim" if string(src, "claimName").is_empty() => {
            errs.push(FieldError::required(p.child("claimName"), ""));
        }
        "nfs" => {
            if string(src, "server").is_empty() {
                errs.push(FieldError::required(p.child("server"), ""));
            }
            let path_v = string(src, "path");
            if path_v.is_empty() {
                errs.push(FieldError::required(p.child("path"), ""));
            } else if !path_v.starts_with('/') {
                errs.push(FieldError::invalid(
                    p.child("path"),
                    Value::from(path_v),
                    "must be an absolute path",
                ));
            }
        }
        "downwardAPI" | "projected" => {
            errs.extend(validate_file_mode(src, "defaultMode", &p));
        }
        _ => {}
    }
    errs
}

fn validate_key_to_paths(src: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, item) in list(src, "items").iter().enumerate() {
        let p = path.child("items").index(i);
        if string(item, "key").is_empty() {
            errs.push(FieldError::required(p.child("key"), ""));
        }
        let target = string(item, "path");
        if target.is_empty() {
            errs.push(FieldError::required(p.child("path"), ""));
        }
        errs.extend(validate_local_descending_path(target, &p.child("path")));
        errs.extend(validate_file_mode(item, "mode", &p));
    }
    errs
}

fn validate_local_descending_path(target: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if target.starts_with('/') {
        errs.push(FieldError::invalid(
            path,
            Value::from(target),
            "must be a relative path",
        ));
    }
    errs.extend(validate_no_backsteps(target, path));
    errs
}

/// `validatePathNoBacksteps`.
fn validate_no_backsteps(target: &str, path: &Path) -> Vec<FieldError> {
    if target.split(['/', '\\']).any(|part| part == "..") {
        vec![FieldError::invalid(
            path,
            Value::from(target),
            "must not contain '..'",
        )]
    } else {
        Vec::new()
    }
}

/// `validateContainerCommon`: what every kind of container shares.
fn validate_container_common(c: &Value, volumes: &HashSet<&str>, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = string(c, "name");
    let np = path.child("name");
    if name.is_empty() {
        errs.push(FieldError::required(&np, ""));
    } else {
        errs.extend(meta::validate_dns1123_label(name, &np));
    }
    if string(c, "image").is_empty() {
        errs.push(FieldError::required(path.child("image"), ""));
    }
    errs.extend(validate_enum(
        string(c, "terminationMessagePolicy"),
        &path.child("terminationMessagePolicy"),
        &["File", "FallbackToLogsOnError"],
    ));
    errs.extend(validate_container_ports(
        list(c, "ports"),
        &path.child("ports"),
    ));
    errs.extend(validate_env(list(c, "env"), &path.child("env")));
    errs.extend(validate_env_from(
        list(c, "envFrom"),
        &path.child("envFrom"),
    ));
    errs.extend(validate_volume_mounts(
        list(c, "volumeMounts"),
        volumes,
        &path.child("volumeMounts"),
    ));
    errs.extend(validate_enum(
        string(c, "imagePullPolicy"),
        &path.child("imagePullPolicy"),
        &["Always", "IfNotPresent", "Never"],
    ));
    if let Some(r) = get(c, "resources") {
        errs.extend(validate_resources(r, &path.child("resources")));
    }
    if let Some(sc) = get(c, "securityContext") {
        errs.extend(validate_container_security_context(
            sc,
            &path.child("securityContext"),
        ));
    }
    errs
}

/// `validateContainerPorts`.
fn validate_container_ports(ports: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names_seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        let name = string(port, "name");
        if !name.is_empty() {
            let msgs = is_valid_port_name(name);
            if !msgs.is_empty() {
                for m in msgs {
                    errs.push(FieldError::invalid(p.child("name"), Value::from(name), m));
                }
            } else if !names_seen.insert(name) {
                errs.push(FieldError::duplicate(p.child("name"), Value::from(name)));
            }
        }
        let cp = int(port, "containerPort").unwrap_or(0);
        if cp == 0 {
            errs.push(FieldError::required(p.child("containerPort"), ""));
        } else {
            for m in is_valid_port_num(cp) {
                errs.push(FieldError::invalid(
                    p.child("containerPort"),
                    Value::from(cp),
                    m,
                ));
            }
        }
        let hp = int(port, "hostPort").unwrap_or(0);
        if hp != 0 {
            for m in is_valid_port_num(hp) {
                errs.push(FieldError::invalid(p.child("hostPort"), Value::from(hp), m));
            }
        }
        errs.extend(validate_protocol(
            string(port, "protocol"),
            &p.child("protocol"),
        ));
    }
    errs
}

/// Port protocol: Required when empty, else one of SCTP/TCP/UDP.
pub(crate) fn validate_protocol(protocol: &str, path: &Path) -> Vec<FieldError> {
    validate_enum(protocol, path, &PROTOCOLS)
}

/// `AccumulateUniqueHostPorts` over a set of containers.
fn validate_unique_host_ports(containers: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen = HashSet::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, port) in list(c, "ports").iter().enumerate() {
            let hp = int(port, "hostPort").unwrap_or(0);
            if hp == 0 {
                continue;
            }
            let key = format!(
                "{}/{}/{}",
                string(port, "hostIP"),
                string(port, "protocol"),
                hp
            );
            if !seen.insert(key.clone()) {
                errs.push(FieldError::duplicate(
                    path.index(ci).child("ports").index(pi).child("hostPort"),
                    Value::from(key),
                ));
            }
        }
    }
    errs
}

/// `ValidatePortNumOrName` on an IntOrString value.
pub(crate) fn validate_port_num_or_name(v: Option<&Value>, path: &Path) -> Vec<FieldError> {
    match v {
        Some(Value::String(s)) => is_valid_port_name(s)
            .into_iter()
            .map(|m| FieldError::invalid(path, Value::from(s.as_str()), m))
            .collect(),
        other => {
            let n = other.and_then(Value::as_i64).unwrap_or(0);
            is_valid_port_num(n)
                .into_iter()
                .map(|m| FieldError::invalid(path, Value::from(n), m))
                .collect()
        }
    }
}

const ENV_FIELD_PATHS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// `ValidateEnv`.
fn validate_env(vars: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ev) in vars.iter().enumerate() {
        let p = path.index(i);
        let name = string(ev, "name");
        if name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        }
        for m in names::is_env_var_name(name) {
            errs.push(FieldError::invalid(p.child("name"), Value::from(name), m));
        }
        let Some(from) = get(ev, "valueFrom") else {
            continue;
        };
        let fp = p.child("valueFrom");
        let mut sources = 0;
        if let Some(fr) = get(from, "fieldRef") {
            sources += 1;
            errs.extend(validate_field_ref(fr, &fp.child("fieldRef")));
        }
        if let Some(rr) = get(from, "resourceFieldRef") {
            sources += 1;
            let resource = string(rr, "resource");
            let rp = fp.child("resourceFieldRef");
            if resource.is_empty() {
                errs.push(FieldError::required(rp.child("resource"), ""));
            } else {
                let valid = [
                    "limits.cpu",
                    "limits.ephemeral-storage",
                    "limits.memory",
                    "requests.cpu",
                    "requests.ephemeral-storage",
                    "requests.memory",
                ];
                let hugepages = resource.starts_with("limits.hugepages-")
                    || resource.starts_with("requests.hugepages-");
                if !valid.contains(&resource) && !hugepages {
                    errs.push(FieldError::not_supported(
                        rp.child("resource"),
                        Value::from(resource),
                        &valid,
                    ));
                }
            }
        }
        for key in ["configMapKeyRef", "secretKeyRef"] {
            if let Some(r) = get(from, key) {
                sources += 1;
                let rp = fp.child(key);
                let name = string(r, "name");
                for m in names::is_dns1123_subdomain(name) {
                    errs.push(FieldError::invalid(rp.child("name"), Value::from(name), m));
                }
                let k = string(r, "key");
                if k.is_empty() {
                    errs.push(FieldError::required(rp.child("key"), ""));
                } else {
                    for m in config_map_key_errors(k) {
                        errs.push(FieldError::invalid(rp.child("key"), Value::from(k), m));
                    }
                }
            }
        }
        if get(from, "fileKeyRef").is_some() {
            sources += 1;
        }
        if sources == 0 {
            errs.push(FieldError::invalid(
                &fp,
                Value::from(""),
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ));
        } else if !string(ev, "value").is_empty() {
            errs.push(FieldError::invalid(
                &fp,
                Value::from(""),
                "may not be specified when `value` is not empty",
            ));
        } else if sources > 1 {
            errs.push(FieldError::invalid(
                &fp,
                Value::from(""),
                "may not have more than one field specified at a time",
            ));
        }
    }
    errs
}

/// `IsConfigMapKey`.
fn config_map_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > names::DNS1123_SUBDOMAIN_MAX {
        errs.push(names::max_len_error(names::DNS1123_SUBDOMAIN_MAX));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        errs.push(names::regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if key == "." {
        errs.push("must not be '.'".to_string());
    } else if key == ".." {
        errs.push("must not be '..'".to_string());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

fn validate_field_ref(fr: &Value, path: &Path) -> Vec<FieldError> {
    if string(fr, "apiVersion").is_empty() {
        return vec![FieldError::required(path.child("apiVersion"), "")];
    }
    let fp = string(fr, "fieldPath");
    if fp.is_empty() {
        return vec![FieldError::required(path.child("fieldPath"), "")];
    }
    if let Some((base, rest)) = fp.split_once("['") {
        let sub = rest.strip_suffix("']").unwrap_or(rest);
        return match base {
            "metadata.annotations" => meta::validate_qualified_name(&sub.to_lowercase(), path),
            "metadata.labels" => meta::validate_qualified_name(sub, path),
            other => vec![FieldError::invalid(
                path,
                Value::from(other),
                "does not support subscript",
            )],
        };
    }
    if ENV_FIELD_PATHS.contains(&fp) {
        Vec::new()
    } else {
        vec![FieldError::not_supported(
            path.child("fieldPath"),
            Value::from(fp),
            &ENV_FIELD_PATHS,
        )]
    }
}

/// `ValidateEnvFrom`.
fn validate_env_from(sources: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let p = path.index(i);
        let prefix = string(src, "prefix");
        if !prefix.is_empty() {
            for m in names::is_env_var_name(prefix) {
                errs.push(FieldError::invalid(
                    p.child("prefix"),
                    Value::from(prefix),
                    m,
                ));
            }
        }
        let mut count = 0;
        for key in ["configMapRef", "secretRef"] {
            if let Some(r) = get(src, key) {
                count += 1;
                let name = string(r, "name");
                let rp = p.child(key).child("name");
                if name.is_empty() {
                    errs.push(FieldError::required(&rp, ""));
                } else {
                    errs.extend(meta::validate_dns1123_subdomain(name, &rp));
                }
            }
        }
        if count == 0 {
            errs.push(FieldError::invalid(
                path,
                Value::from(""),
                "must specify one of: `configMapRef` or `secretRef`",
            ));
        } else if count > 1 {
            errs.push(FieldError::invalid(
                path,
                Value::from(""),
                "may not have more than one field specified at a time",
            ));
        }
    }
    errs
}

/// `ValidateVolumeMounts`.
fn validate_volume_mounts(
    mounts: &[Value],
    volumes: &HashSet<&str>,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut points = HashSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let p = path.index(i);
        let name = string(m, "name");
        if name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        }
        if !volumes.contains(name) {
            errs.push(FieldError::not_found(p.child("name"), Value::from(name)));
        }
        let mp = string(m, "mountPath");
        if mp.is_empty() {
            errs.push(FieldError::required(p.child("mountPath"), ""));
        }
        if !points.insert(mp) {
            errs.push(FieldError::invalid(
                p.child("mountPath"),
                Value::from(mp),
                "must be unique",
            ));
        }
        let sub = string(m, "subPath");
        if !sub.is_empty() {
            errs.extend(validate_local_descending_path(sub, &path.child("subPath")));
        }
        let sub_expr = string(m, "subPathExpr");
        if !sub_expr.is_empty() {
            if !sub.is_empty() {
                errs.push(FieldError::invalid(
                    p.child("subPathExpr"),
                    Value::from(sub_expr),
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            errs.extend(validate_local_descending_path(
                sub_expr,
                &path.child("subPathExpr"),
            ));
        }
        if let Some(mode) = json::opt_string(m, "mountPropagation") {
            let valid = ["Bidirectional", "HostToContainer", "None"];
            if !valid.contains(&mode) {
                errs.push(FieldError::not_supported(
                    path.child("mountPropagation"),
                    Value::from(mode),
                    &valid,
                ));
            }
        }
    }
    errs
}

fn is_standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

fn is_extended_resource(name: &str) -> bool {
    !is_native_resource(name) && !name.starts_with("requests.")
}

/// `ValidateContainerResourceRequirements` (names, quantities, requests ≤ limits).
fn validate_resources(res: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let lim_path = path.child("limits");
    let req_path = path.child("requests");
    let limits = json::string_map(res, "limits");
    let requests = json::string_map(res, "requests");
    let check =
        |name: &str, value: &str, p: &Path, errs: &mut Vec<FieldError>| -> Option<Quantity> {
            errs.extend(meta::validate_qualified_name(name, p));
            if !name.contains('/') {
                if !is_standard_container_resource(name) {
                    errs.push(FieldError::invalid(
                        p,
                        Value::from(name),
                        "must be a standard resource for containers",
                    ));
                }
            } else if !is_native_resource(name) && !is_extended_resource(name) {
                errs.push(FieldError::invalid(
                    p,
                    Value::from(name),
                    "doesn't follow extended resource name standard",
                ));
            }
            match Quantity::parse(value) {
                Ok(q) => {
                    if q.is_negative() {
                        errs.push(FieldError::invalid(
                            p,
                            Value::from(value),
                            "must be greater than or equal to 0",
                        ));
                    }
                    if is_extended_resource(name) && !q.is_integer() {
                        errs.push(FieldError::invalid(
                            p,
                            Value::from(value),
                            "must be an integer",
                        ));
                    }
                    Some(q)
                }
                Err(e) => {
                    errs.push(FieldError::invalid(p, Value::from(value), e));
                    None
                }
            }
        };
    let mut parsed_limits = Vec::new();
    for (name, value) in &limits {
        let q = check(name, value, &lim_path.key(name), &mut errs);
        parsed_limits.push((*name, *value, q));
    }
    for (name, value) in &requests {
        let Some(q) = check(name, value, &req_path.key(name), &mut errs) else {
            continue;
        };
        let overcommit = !name.starts_with("hugepages-") && !is_extended_resource(name);
        match parsed_limits.iter().find(|(n, _, _)| n == name) {
            Some((_, lim_str, Some(lim))) => {
                let ord = q.cmp(lim);
                if ord != std::cmp::Ordering::Equal && !overcommit {
                    errs.push(FieldError::invalid(
                        &req_path,
                        Value::from(*value),
                        format!("must be equal to {name} limit of {lim_str}"),
                    ));
                } else if ord == std::cmp::Ordering::Greater {
                    errs.push(FieldError::invalid(
                        &req_path,
                        Value::from(*value),
                        format!("must be less than or equal to {name} limit of {lim_str}"),
                    ));
                }
            }
            Some(_) => {}
            None => {
                if !overcommit {
                    errs.push(FieldError::required(
                        &lim_path,
                        "Limit must be set for non overcommitable resources",
                    ));
                }
            }
        }
    }
    errs
}

fn validate_id(sc: &Value, key: &str, path: &Path) -> Vec<FieldError> {
    match int(sc, key) {
        Some(id) if !(0..=MAX_INT32).contains(&id) => {
            vec![FieldError::invalid(
                path.child(key),
                Value::from(id),
                inclusive_range_error(0, MAX_INT32),
            )]
        }
        _ => Vec::new(),
    }
}

fn validate_pod_security_context(sc: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        errs.extend(validate_id(sc, key, path));
    }
    for (i, g) in list(sc, "supplementalGroups").iter().enumerate() {
        if let Some(g) = g.as_i64() {
            if !(0..=MAX_INT32).contains(&g) {
                errs.push(FieldError::invalid(
                    path.child("supplementalGroups").index(i),
                    Value::from(g),
                    inclusive_range_error(0, MAX_INT32),
                ));
            }
        }
    }
    errs
}

fn validate_container_security_context(sc: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for key in ["runAsUser", "runAsGroup"] {
        errs.extend(validate_id(sc, key, path));
    }
    if get(sc, "allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false)
        && flag(sc, "privileged")
    {
        errs.push(FieldError::invalid(
            path,
            sc.clone(),
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        ));
    }
    errs
}

fn validate_lifecycle(c: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(lc) = get(c, "lifecycle") {
        let lp = path.child("lifecycle");
        for key in ["postStart", "preStop"] {
            if let Some(h) = get(lc, key) {
                errs.extend(validate_handler(h, &lp.child(key)));
            }
        }
    }
    errs
}

/// `validateHandler`: exactly one handler type.
fn validate_handler(h: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut count = 0;
    for key in ["exec", "httpGet", "tcpSocket", "grpc", "sleep"] {
        let Some(action) = get(h, key) else {
            continue;
        };
        let p = path.child(key);
        if count > 0 {
            errs.push(FieldError::forbidden(
                &p,
                "may not specify more than 1 handler type",
            ));
            continue;
        }
        count += 1;
        match key {
            "exec" => {
                if list(action, "command").is_empty() {
                    errs.push(FieldError::required(p.child("command"), ""));
                }
            }
            "httpGet" => {
                if string(action, "path").is_empty() {
                    errs.push(FieldError::required(p.child("path"), ""));
                }
                errs.extend(validate_port_num_or_name(
                    get(action, "port"),
                    &p.child("port"),
                ));
                let scheme = string(action, "scheme");
                if scheme != "HTTP" && scheme != "HTTPS" {
                    errs.push(FieldError::not_supported(
                        p.child("scheme"),
                        Value::from(scheme),
                        &["HTTP", "HTTPS"],
                    ));
                }
                for header in list(action, "httpHeaders") {
                    let n = string(header, "name");
                    for m in names::is_http_header_name(n) {
                        errs.push(FieldError::invalid(
                            p.child("httpHeaders"),
                            Value::from(n),
                            m,
                        ));
                    }
                }
            }
            "tcpSocket" => errs.extend(validate_port_num_or_name(
                get(action, "port"),
                &p.child("port"),
            )),
            "grpc" => {
                let port = int(action, "port").unwrap_or(0);
                for m in is_valid_port_num(port) {
                    errs.push(FieldError::invalid(p.child("port"), Value::from(port), m));
                }
            }
            _ => {
                if let Some(s) = int(action, "seconds") {
                    errs.extend(meta::validate_nonnegative(s, &p.child("seconds")));
                }
            }
        }
    }
    if count == 0 {
        errs.push(FieldError::required(path, "must specify a handler type"));
    }
    errs
}

fn validate_probe_kind(c: &Value, key: &str, path: &Path) -> Vec<FieldError> {
    let Some(probe) = get(c, key) else {
        return Vec::new();
    };
    let p = path.child(key);
    let mut errs = validate_handler(probe, &p);
    for k in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        errs.extend(meta::validate_nonnegative(
            int(probe, k).unwrap_or(0),
            &p.child(k),
        ));
    }
    if let Some(t) = int(probe, "terminationGracePeriodSeconds") {
        if t <= 0 {
            errs.push(FieldError::invalid(
                p.child("terminationGracePeriodSeconds"),
                Value::from(t),
                "must be greater than 0",
            ));
        }
    }
    match key {
        "livenessProbe" | "startupProbe" => {
            let s = int(probe, "successThreshold").unwrap_or(0);
            if s != 1 {
                errs.push(FieldError::invalid(
                    p.child("successThreshold"),
                    Value::from(s),
                    "must be 1",
                ));
            }
        }
        _ => {
            if let Some(t) = get(probe, "terminationGracePeriodSeconds") {
                errs.push(FieldError::invalid(
                    p.child("terminationGracePeriodSeconds"),
                    t.clone(),
                    "must not be set for readinessProbes",
                ));
            }
        }
    }
    errs
}

/// `ValidateTolerations`.
pub(crate) fn validate_tolerations(tolerations: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let p = path.index(i);
        let key = string(t, "key");
        if !key.is_empty() {
            errs.extend(meta::validate_label_name(key, &p.child("key")));
        }
        let op = string(t, "operator");
        if key.is_empty() && op != "Exists" {
            errs.push(FieldError::invalid(
                p.child("operator"),
                Value::from(op),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        let effect = string(t, "effect");
        if get(t, "tolerationSeconds").is_some() && effect != "NoExecute" {
            errs.push(FieldError::invalid(
                p.child("effect"),
                Value::from(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        let value = string(t, "value");
        match op {
            "Equal" | "" => {
                let msgs = names::is_valid_label_value(value);
                if !msgs.is_empty() {
                    errs.push(FieldError::invalid(
                        p.child("operator"),
                        Value::from(value),
                        msgs.join(";"),
                    ));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    errs.push(FieldError::invalid(
                        p.child("operator"),
                        t.clone(),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                p.child("operator"),
                Value::from(other),
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() {
            errs.extend(validate_taint_effect(effect, &p.child("effect")));
        }
    }
    errs
}

/// `validateTaintEffect` for a non-empty effect.
pub(crate) fn validate_taint_effect(effect: &str, path: &Path) -> Vec<FieldError> {
    let valid = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
    if valid.contains(&effect) {
        Vec::new()
    } else {
        vec![FieldError::not_supported(path, Value::from(effect), &valid)]
    }
}

fn validate_dns_config(cfg: Option<&Value>, policy: &str, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if policy == "None" {
        match cfg {
            None => {
                return vec![FieldError::required(
                    path,
                    "must provide `dnsConfig` when `dnsPolicy` is None",
                )];
            }
            Some(c) if list(c, "nameservers").is_empty() => {
                return vec![FieldError::required(
                    path.child("nameservers"),
                    "must provide at least one DNS nameserver when `dnsPolicy` is None",
                )];
            }
            _ => {}
        }
    }
    let Some(cfg) = cfg else {
        return errs;
    };
    let ns = json::strings(cfg, "nameservers");
    if ns.len() > 3 {
        errs.push(FieldError::invalid(
            path.child("nameservers"),
            Value::from(ns.clone()),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, n) in ns.iter().enumerate() {
        errs.extend(net::validate_ip(&path.child("nameservers").index(i), n));
    }
    let searches = json::strings(cfg, "searches");
    if searches.len() > 32 {
        errs.push(FieldError::invalid(
            path.child("searches"),
            Value::from(searches.clone()),
            "must not have more than 32 search paths",
        ));
    }
    if searches.join(" ").len() > 2048 {
        errs.push(FieldError::invalid(
            path.child("searches"),
            Value::from(searches.clone()),
            "must not have more than 2048 characters (including spaces) in the search list",
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        if *s == "." {
            continue;
        }
        let s = s.strip_suffix('.').unwrap_or(s);
        errs.extend(meta::validate_dns1123_subdomain(
            s,
            &path.child("searches").index(i),
        ));
    }
    for (i, o) in list(cfg, "options").iter().enumerate() {
        if string(o, "name").is_empty() {
            errs.push(FieldError::required(
                path.child("options").index(i),
                "must not be empty",
            ));
        }
    }
    errs
}

fn validate_topology_spread(constraints: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in constraints.iter().enumerate() {
        let p = path.index(i);
        let skew = int(c, "maxSkew").unwrap_or(0);
        if skew <= 0 {
            errs.push(FieldError::invalid(
                p.child("maxSkew"),
                Value::from(skew),
                "must be greater than zero",
            ));
        }
        let key = string(c, "topologyKey");
        if key.is_empty() {
            errs.push(FieldError::required(
                p.child("topologyKey"),
                "can not be empty",
            ));
        } else {
            errs.extend(meta::validate_qualified_name(key, &p.child("topologyKey")));
        }
        let action = string(c, "whenUnsatisfiable");
        if action != "DoNotSchedule" && action != "ScheduleAnyway" {
            errs.push(FieldError::not_supported(
                p.child("whenUnsatisfiable"),
                Value::from(action),
                &["DoNotSchedule", "ScheduleAnyway"],
            ));
        }
        let pair = format!("{{{key}, {action}}}");
        if !seen.insert(pair.clone()) {
            errs.push(FieldError::duplicate(&p, Value::from(pair)));
        }
    }
    errs
}

/// QoS class of a pod (`ComputePodQOS`): "Guaranteed", "Burstable" or "BestEffort".
pub(crate) fn compute_qos(spec: &Value) -> &'static str {
    let sum = |items: Vec<(&str, &str)>,
               acc: &mut Vec<(String, Quantity)>,
               found: &mut HashSet<String>| {
        for (name, v) in items {
            if name != "cpu" && name != "memory" {
                continue;
            }
            let Ok(q) = Quantity::parse(v) else {
                continue;
            };
            if !q.is_positive() {
                continue;
            }
            found.insert(name.to_string());
            match acc.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total = total.add(&q),
                None => acc.push((name.to_string(), q)),
            }
        }
    };
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    let mut guaranteed = true;
    if let Some(pod_res) = get(spec, "resources").filter(|r| !json::is_zero(r)) {
        let mut unused = HashSet::new();
        sum(
            json::string_map(pod_res, "requests"),
            &mut requests,
            &mut unused,
        );
        let mut found = HashSet::new();
        sum(json::string_map(pod_res, "limits"), &mut limits, &mut found);
        if !(found.contains("cpu") && found.contains("memory")) {
            guaranteed = false;
        }
    } else {
        for c in list(spec, "containers")
            .iter()
            .chain(list(spec, "initContainers"))
        {
            let res = get(c, "resources").unwrap_or(&Value::Null);
            let mut unused = HashSet::new();
            sum(
                json::string_map(res, "requests"),
                &mut requests,
                &mut unused,
            );
            let mut found = HashSet::new();
            sum(json::string_map(res, "limits"), &mut limits, &mut found);
            if !(found.contains("cpu") && found.contains("memory")) {
                guaranteed = false;
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed {
        for (name, req) in &requests {
            match limits.iter().find(|(n, _)| n == name) {
                Some((_, lim)) if lim.cmp(req) == std::cmp::Ordering::Equal => {}
                _ => {
                    guaranteed = false;
                    break;
                }
            }
        }
    }
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
