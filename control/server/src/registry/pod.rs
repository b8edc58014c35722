//! Pods: created Pending, deleted gracefully once bound to a node (the node confirms, as
//! kubelet does, or the pod GC removes the pod when the grace period ends).

use serde_json::{json, Value};

use super::strategy::{DeleteMode, NodeRequest, Strategy};
use super::DeleteOptions;

/// The Pod strategy.
#[derive(Debug)]
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
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
