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
