//! Deployment (apps/v1) validation (`ValidateDeployment`,
//! `ValidateDeploymentUpdate` plus the apps/v1 selector immutability,
//! `ValidateDeploymentStatusUpdate`).

use serde_json::Value;

use crate::field::{FieldError, Path};
use crate::json::{self, get, int};
use crate::meta;
use crate::names::{self, NameRule};
use crate::pod;

fn spec_of(obj: &Value) -> &Value {
    static NULL: Value = Value::Null;
    get(obj, "spec").unwrap_or(&NULL)
}

/// Validation of a new Deployment.
pub(crate) fn validate_create(obj: &Value) -> Vec<FieldError> {
    validate_create_with(obj, validate_spec)
}

/// A new apps/v1 workload: its metadata (a DNS subdomain name) and its spec
/// (`validate_spec`), for Deployments and ReplicaSets alike.
pub(crate) fn validate_create_with(
    obj: &Value,
    validate_spec: fn(&Value, &Path) -> Vec<FieldError>,
) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta(get(obj, "metadata"), true, NameRule::Subdomain);
    errs.extend(validate_spec(spec_of(obj), &Path::new("spec")));
    errs
}

fn validate_spec(spec: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    errs.extend(meta::validate_nonnegative(
        int(spec, "replicas").unwrap_or(0),
        &path.child("replicas"),
    ));

    let selector = get(spec, "selector");
    errs.extend(validate_replica_selector(selector, &path.child("selector")));

    errs.extend(validate_pod_template_for_replica_set(
        get(spec, "template"),
        selector,
        &path.child("template"),
    ));

    errs.extend(validate_strategy(
        get(spec, "strategy"),
        &path.child("strategy"),
    ));
    let min_ready = int(spec, "minReadySeconds").unwrap_or(0);
    errs.extend(meta::validate_nonnegative(
        min_ready,
        &path.child("minReadySeconds"),
    ));
    if let Some(r) = int(spec, "revisionHistoryLimit") {
        errs.extend(meta::validate_nonnegative(
            r,
            &path.child("revisionHistoryLimit"),
        ));
    }
    if let Some(p) = int(spec, "progressDeadlineSeconds") {
        let pp = path.child("progressDeadlineSeconds");
        errs.extend(meta::validate_nonnegative(p, &pp));
        if p <= min_ready {
            errs.push(FieldError::invalid(
                &pp,
                Value::from(p),
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

/// The selector rules Deployments and ReplicaSets share: required, valid,
/// and not empty (ReplicaSets keep upstream's "for deployment" wording).
pub(crate) fn validate_replica_selector(
    selector: Option<&Value>,
    sel_path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match selector {
        None => errs.push(FieldError::required(sel_path, "")),
        Some(sel) => {
            errs.extend(meta::validate_label_selector(sel, sel_path));
            if json::string_map(sel, "matchLabels").is_empty()
                && json::list(sel, "matchExpressions").is_empty()
            {
                errs.push(FieldError::invalid(
                    sel_path,
                    serde_json::json!({"matchLabels": null}),
                    "empty selector is invalid for deployment",
                ));
            }
        }
    }
    errs
}

/// `ValidatePodTemplateSpecForReplicaSet`, shared by Deployments and
/// ReplicaSets: the template must exist, match the selector, pass pod
/// template validation and restart its containers `Always`.
pub(crate) fn validate_pod_template_for_replica_set(
    template: Option<&Value>,
    selector: Option<&Value>,
    tpath: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match template {
        None => errs.push(FieldError::required(tpath, "")),
        Some(template) => {
            let null = Value::Null;
            let tmeta = get(template, "metadata").unwrap_or(&null);
            let labels = json::string_map(tmeta, "labels");
            // A missing selector matches nothing; an empty one everything.
            let matches = match selector {
                None => false,
                Some(sel) => meta::selector_matches(sel, &labels),
            };
            if !matches {
                let value = json::object(tmeta, "labels")
                    .cloned()
                    .map(Value::Object)
                    .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
                errs.push(FieldError::invalid(
                    tpath.child("metadata").child("labels"),
                    value,
                    "`selector` does not match template `labels`",
                ));
            }
            errs.extend(pod::validate_pod_template(template, tpath));
            let tspec = get(template, "spec").unwrap_or(&null);
            let rp = json::string(tspec, "restartPolicy");
            if rp != "Always" {
                errs.push(FieldError::not_supported(
                    tpath.child("spec").child("restartPolicy"),
                    Value::from(rp),
                    &["Always"],
                ));
            }
            if get(tspec, "activeDeadlineSeconds").is_some() {
                errs.push(FieldError::forbidden(
                    tpath.child("spec").child("activeDeadlineSeconds"),
                    "activeDeadlineSeconds in ReplicaSet is not Supported",
                ));
            }
        }
    }
    errs
}

fn validate_strategy(strategy: Option<&Value>, path: &Path) -> Vec<FieldError> {
    let null = Value::Null;
    let strategy = strategy.unwrap_or(&null);
    let mut errs = Vec::new();
    match json::string(strategy, "type") {
        "Recreate" => {
            if get(strategy, "rollingUpdate").is_some() {
                errs.push(FieldError::forbidden(
                    path.child("rollingUpdate"),
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => match get(strategy, "rollingUpdate") {
            None => errs.push(FieldError::required(
                path.child("rollingUpdate"),
                "this should be defaulted and never be nil",
            )),
            Some(ru) => errs.extend(validate_rolling_update(ru, &path.child("rollingUpdate"))),
        },
        _ => errs.push(FieldError::not_supported(
            path,
            strategy.clone(),
            &["Recreate", "RollingUpdate"],
        )),
    }
    errs
}

/// The integer value of an int-or-percent (`getIntOrPercentValue`) and
/// whether it was a percent.
fn int_or_percent(v: Option<&Value>) -> (i64, bool) {
    match v {
        Some(Value::String(s)) => (
            s.strip_suffix('%')
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
            true,
        ),
        Some(v) => (v.as_i64().unwrap_or(0), false),
        None => (0, false),
    }
}

fn validate_positive_int_or_percent(v: Option<&Value>, path: &Path) -> Vec<FieldError> {
    match v {
        Some(Value::String(s)) => names::is_valid_percent(s)
            .into_iter()
            .map(|m| FieldError::invalid(path, Value::from(s.as_str()), m))
            .collect(),
        Some(v) => meta::validate_nonnegative(v.as_i64().unwrap_or(0), path),
        None => Vec::new(),
    }
}

fn validate_rolling_update(ru: &Value, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let (mu, ms) = (get(ru, "maxUnavailable"), get(ru, "maxSurge"));
    let mu_path = path.child("maxUnavailable");
    errs.extend(validate_positive_int_or_percent(mu, &mu_path));
    errs.extend(validate_positive_int_or_percent(
        ms,
        &path.child("maxSurge"),
    ));
    if int_or_percent(mu).0 == 0 && int_or_percent(ms).0 == 0 {
        errs.push(FieldError::invalid(
            &mu_path,
            mu.cloned().unwrap_or(Value::from(0)),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    let (value, is_percent) = int_or_percent(mu);
    if is_percent && value > 100 {
        errs.push(FieldError::invalid(
            &mu_path,
            mu.cloned().unwrap_or(Value::Null),
            "must not be greater than 100%",
        ));
    }
    errs
}

/// Validation of a Deployment update (apps/v1: the selector is immutable).
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    validate_update_with(old, new, validate_spec)
}

/// An apps/v1 workload's update: metadata update rules, its spec (`validate_spec`), and the
/// selector immutable (Deployments and ReplicaSets alike).
pub(crate) fn validate_update_with(
    old: &Value,
    new: &Value,
    validate_spec: fn(&Value, &Path) -> Vec<FieldError>,
) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    errs.extend(validate_spec(spec_of(new), &Path::new("spec")));
    errs.extend(meta::validate_immutable(
        get(spec_of(new), "selector"),
        get(spec_of(old), "selector"),
        &Path::new("spec").child("selector"),
    ));
    errs
}

/// Validation of a `deployments/status` update.
pub(crate) fn validate_status_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = meta::validate_object_meta_update(get(new, "metadata"), get(old, "metadata"));
    let null = Value::Null;
    let status = get(new, "status").unwrap_or(&null);
    let path = Path::new("status");
    let field = |k: &str| int(status, k).unwrap_or(0);
    for k in [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ] {
        errs.extend(meta::validate_nonnegative(field(k), &path.child(k)));
    }
    for k in ["terminatingReplicas", "collisionCount"] {
        if let Some(v) = int(status, k) {
            errs.extend(meta::validate_nonnegative(v, &path.child(k)));
        }
    }
    let replicas = field("replicas");
    for k in ["updatedReplicas", "readyReplicas", "availableReplicas"] {
        if field(k) > replicas {
            errs.push(FieldError::invalid(
                path.child(k),
                Value::from(field(k)),
                "cannot be greater than status.replicas",
            ));
        }
    }
    if field("availableReplicas") > field("readyReplicas") {
        errs.push(FieldError::invalid(
            path.child("availableReplicas"),
            Value::from(field("availableReplicas")),
            "cannot be greater than readyReplicas",
        ));
    }
    let old_status = get(old, "status").unwrap_or(&null);
    if let (Some(o), n) = (
        int(old_status, "collisionCount"),
        int(status, "collisionCount"),
    ) {
        if n.is_none_or(|n| n < o) {
            errs.push(FieldError::invalid(
                path.child("collisionCount"),
                Value::from(n.unwrap_or(0)),
                "cannot be decremented",
            ));
        }
    }
    errs
}
