//! Pods: created Pending, deleted gracefully once bound to a node (the node confirms, as
//! kubelet does, or the pod GC removes the pod when the grace period ends).

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::strategy::{DeleteMode, NodeRequest, Strategy};
use super::DeleteOptions;

/// The Pod strategy.
#[derive(Debug)]
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        // The DefaultTolerationSeconds admission plugin: tolerate not-ready and unreachable
        // nodes for 300 s, so pods are evicted (and replaced) five minutes after their node
        // stops reporting.
        if let Ok(mut pod) = serde_json::from_value::<Pod>(obj.clone()) {
            let before = pod.spec.as_ref().and_then(|s| s.tolerations.clone());
            sluice_scheduler::add_default_tolerations(&mut pod);
            let after = pod.spec.as_ref().and_then(|s| s.tolerations.clone());
            if before != after {
                if let Ok(t) = serde_json::to_value(after) {
                    obj["spec"]["tolerations"] = t;
                }
            }
        }
    }

    fn delete_mode(&self, v: &Value, opts: &DeleteOptions) -> DeleteMode {
        let grace = opts.grace_period_seconds.unwrap_or_else(|| {
            v.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(|g| g.as_i64())
                .unwrap_or(30)
        });
        let bound = v
            .pointer("/spec/nodeName")
            .and_then(|n| n.as_str())
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            v.pointer("/status/phase").and_then(|p| p.as_str()),
            Some("Succeeded" | "Failed")
        );
        if bound && grace > 0 && !finished {
            DeleteMode::Graceful(grace)
        } else {
            DeleteMode::Immediate
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn node_allowed(&self, r: &NodeRequest<'_>) -> bool {
        match r.sub {
            // Deleting a pod (eviction by the node, mirror pods): NodeRestriction checks whose.
            None => r.is_read() || r.verb == "delete",
            Some("status") => r.is_read() || matches!(r.verb, "update" | "patch"),
            _ => false,
        }
    }
}

/// Whether a pod spec references the object `kind`/`name` in its own namespace: volumes
/// (including projected sources), `env` and `envFrom` of every container, image pull
/// secrets, and the service account — what a kubelet must read to run it.
pub fn references(pod: &Value, kind: &str, name: &str) -> bool {
    let Some(spec) = pod.get("spec") else {
        return false;
    };
    let is = |v: &Value| v.as_str() == Some(name);
    let list = |v: &Value, k: &str| -> Vec<Value> {
        v.get(k)
            .and_then(|x| x.as_array())
            .cloned()
            .unwrap_or_default()
    };
    match kind {
        "ServiceAccount" => {
            return spec.get("serviceAccountName").map_or(name == "default", is);
        }
        "Secret"
            if list(spec, "imagePullSecrets")
                .iter()
                .any(|s| is(&s["name"])) =>
        {
            return true
        }
        _ => {}
    }
    // (field of a volume source, its name key) and the same for env/envFrom references.
    let (volume, volume_key, key_ref, from_ref) = match kind {
        "ConfigMap" => ("configMap", "name", "configMapKeyRef", "configMapRef"),
        "Secret" => ("secret", "secretName", "secretKeyRef", "secretRef"),
        _ => return false,
    };
    for v in list(spec, "volumes") {
        if is(&v[volume][volume_key]) {
            return true;
        }
        for src in list(&v["projected"], "sources") {
            if is(&src[volume]["name"]) {
                return true;
            }
        }
    }
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| list(spec, k))
        .any(|c| {
            list(&c, "env")
                .iter()
                .any(|e| is(&e["valueFrom"][key_ref]["name"]))
                || list(&c, "envFrom").iter().any(|e| is(&e[from_ref]["name"]))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::references;

    #[test]
    fn a_pod_references_what_its_kubelet_must_read() {
        let pod = json!({"spec": {
            "serviceAccountName": "robot",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "configMap": {"name": "cfg-vol"}},
                {"name": "b", "secret": {"secretName": "sec-vol"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "cfg-proj"}},
                                                        {"secret": {"name": "sec-proj"}}]}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "sec-from"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg-env", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "k"}}},
            ], "envFrom": [{"configMapRef": {"name": "cfg-from"}}]}],
        }});
        for n in ["cfg-vol", "cfg-proj", "cfg-env", "cfg-from"] {
            assert!(references(&pod, "ConfigMap", n), "{n}");
            assert!(!references(&pod, "Secret", n), "{n}");
        }
        for n in ["sec-vol", "sec-proj", "sec-env", "sec-from", "pull"] {
            assert!(references(&pod, "Secret", n), "{n}");
        }
        assert!(!references(&pod, "Secret", "other"));
        assert!(references(&pod, "ServiceAccount", "robot"));
        assert!(!references(&pod, "ServiceAccount", "default"));
        assert!(references(
            &json!({"spec": {}}),
            "ServiceAccount",
            "default"
        ));
    }
}
