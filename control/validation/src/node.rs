//! Node validation (`ValidateNode`, `ValidateNodeUpdate`; the status
//! subresource uses the update rules too).

use std::collections::HashSet;

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, list, string, strings};
use crate::meta;
use crate::names::{self, NameRule};
use crate::net;
use crate::pod::{validate_condition_status, validate_taint_effect};
use crate::quantity::Quantity;

const POD_CIDR_CHANGE: &str = "node updates may not change podCIDR except from \"\" to valid";

fn spec_of(obj: &Value) -> &Value {
    static NULL: Value = Value::Null;
    get(obj, "spec").unwrap_or(&NULL)
}

/// Validation of a new Node.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), false, NameRule::Subdomain);
    errs.extend(validate_body(obj));
    errs
}

/// Spec and status checks shared by create and update.
fn validate_body(obj: &Value) -> Vec<FieldError> {
    let spec = spec_of(obj);
    // Kubernetes reports taint errors under `metadata.taints`.
    let mut errs = validate_taints(list(spec, "taints"), &Path::new("metadata").child("taints"));
    errs.extend(validate_resources(obj));

    let cidrs = strings(spec, "podCIDRs");
    let path = Path::new("spec").child("podCIDRs");
    for (i, c) in cidrs.iter().enumerate() {
        errs.extend(net::validate_cidr(&path.index(i), c));
    }
    if cidrs.len() > 1 {
        let fams: Vec<Option<&'static str>> = cidrs.iter().map(|c| net::cidr_family(c)).collect();
        if !net::is_dual_stack(&fams) || cidrs.len() > 2 {
            errs.push(FieldError::invalid(
                &path,
                Value::from(cidrs.clone()),
                "may specify no more than one CIDR for each IP family",
            ));
        }
        let mut seen = HashSet::new();
        for (i, c) in cidrs.iter().enumerate() {
            if !seen.insert(*c) {
                errs.push(FieldError::duplicate(path.index(i), Value::from(*c)));
            }
        }
    }
    let pod_cidr = string(spec, "podCIDR");
    if !pod_cidr.is_empty() && cidrs.is_empty() {
        errs.extend(net::validate_cidr(
            &Path::new("spec").child("podCIDR"),
            pod_cidr,
        ));
    }

    let status = get(obj, "status").unwrap_or(&Value::Null);
    let cond_path = Path::new("status").child("conditions");
    for (i, c) in list(status, "conditions").iter().enumerate() {
        let p = cond_path.index(i);
        if string(c, "type").is_empty() {
            errs.push(FieldError::required(p.child("type"), ""));
        }
        errs.extend(validate_condition_status(c, &p));
    }
    errs
}

/// `validateNodeTaints`.
fn validate_taints(taints: &[Value], path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut unique = HashSet::new();
    for (i, t) in taints.iter().enumerate() {
        let p = path.index(i);
        let key = string(t, "key");
        errs.extend(meta::validate_label_name(key, &p.child("key")));
        let value = string(t, "value");
        let msgs = names::is_valid_label_value(value);
        if !msgs.is_empty() {
            errs.push(FieldError::invalid(
                p.child("value"),
                Value::from(value),
                msgs.join(";"),
            ));
        }
        let effect = string(t, "effect");
        if effect.is_empty() {
            errs.push(FieldError::required(p.child("effect"), ""));
        } else {
            errs.extend(validate_taint_effect(effect, &p.child("effect")));
        }
        if !unique.insert((effect, key)) {
            let mut e = FieldError::duplicate(&p, t.clone());
            e.detail = "taints must be unique by key and effect pair".to_string();
            errs.push(e);
        }
    }
    errs
}

/// `ValidateNodeResources`: capacity and allocatable quantities are valid and
/// non-negative.
fn validate_resources(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let status = get(obj, "status").unwrap_or(&Value::Null);
    for key in ["capacity", "allocatable"] {
        for (name, v) in json::string_map(status, key) {
            let p = Path::new("status").child(key).child(name);
            match Quantity::parse(v) {
                Ok(q) if q.is_negative() => {
                    errs.push(FieldError::invalid(
                        &p,
                        Value::from(v),
                        "must be greater than or equal to 0",
                    ));
                }
                Ok(_) => {}
                Err(e) => errs.push(FieldError::invalid(&p, Value::from(v), e)),
            }
        }
    }
    errs
}

/// Validation of a Node update (also used for `nodes/status`).
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let (os, ns) = (spec_of(old), spec_of(new));

    let status = get(new, "status").unwrap_or(&Value::Null);
    let mut addrs = HashSet::new();
    for (i, a) in list(status, "addresses").iter().enumerate() {
        if !addrs.insert((string(a, "type"), string(a, "address"))) {
            errs.push(FieldError::duplicate(
                Path::new("status").child("addresses").index(i),
                a.clone(),
            ));
        }
    }

    let (old_cidrs, new_cidrs) = (strings(os, "podCIDRs"), strings(ns, "podCIDRs"));
    if !old_cidrs.is_empty() {
        let p = Path::new("spec").child("podCIDRs");
        if old_cidrs.len() != new_cidrs.len() {
            errs.push(FieldError::forbidden(&p, POD_CIDR_CHANGE));
        } else {
            for (o, n) in old_cidrs.iter().zip(&new_cidrs) {
                if o != n {
                    errs.push(FieldError::forbidden(&p, POD_CIDR_CHANGE));
                }
            }
        }
    }
    let old_provider = string(os, "providerID");
    if !old_provider.is_empty() && old_provider != string(ns, "providerID") {
        errs.push(FieldError::forbidden(
            Path::new("spec").child("providerID"),
            "node updates may not change providerID except from \"\" to valid",
        ));
    }
    errs.extend(validate_body(new));
    errs
}
