//! Node lifecycle: a node whose heartbeats stop for `--node-monitor-grace-period` gets its
//! Ready condition set to Unknown (`NodeStatusUnknown`, "Kubelet stopped posting node
//! status."), which takes its pods' endpoints out of service; when heartbeats resume, the
//! condition this controller set is restored to True.
//!
//! A heartbeat is a change of the node's Lease `spec.renewTime` (in `kube-node-lease`) or of
//! its Ready condition's `lastHeartbeatTime`. As in the upstream controller, staleness is
//! measured on this process's clock from when a heartbeat value was first observed, so a
//! control-plane restart or clock skew does not mark every node Unknown at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{name_of, str_at};
use crate::registry::{now_rfc3339, Part, Registry};
use crate::resources::by_kind;

/// Reason set on the Ready condition when heartbeats stop.
pub const UNKNOWN_REASON: &str = "NodeStatusUnknown";

fn heartbeat_of(reg: &Registry, node: &Value) -> (String, String) {
    let lease = reg
        .get_value(by_kind("Lease"), Some("kube-node-lease"), name_of(node))
        .ok()
        .and_then(|l| str_at(&l, "/spec/renewTime").map(str::to_string))
        .unwrap_or_default();
    let hb = ready_condition(node)
        .and_then(|c| {
            c.get("lastHeartbeatTime")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    (lease, hb)
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
}

fn set_ready(node: &mut Value, status: &str, reason: &str, message: &str) {
    let now = now_rfc3339();
    if !node["status"].is_object() {
        node["status"] = json!({});
    }
    if !node["status"]["conditions"].is_array() {
        node["status"]["conditions"] = json!([]);
    }
    let conds = node["status"]["conditions"]
        .as_array_mut()
        .expect("just set");
    let hb = conds
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c.get("lastHeartbeatTime").cloned())
        .unwrap_or_else(|| json!(now));
    conds.retain(|c| c["type"] != "Ready");
    conds.push(json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": hb,
        "lastTransitionTime": now,
    }));
}

/// Per-node observation: the last heartbeat value and when this process first saw it.
#[derive(Default)]
pub struct Monitor {
    seen: HashMap<String, ((String, String), Instant)>,
}

impl Monitor {
    /// One monitoring pass.
    pub async fn pass(&mut self, reg: &Registry, grace: Duration) {
        let res = by_kind("Node");
        let nodes: Vec<Value> = reg
            .store()
            .list(&res.prefix())
            .0
            .iter()
            .filter_map(|s| s.value().ok())
            .collect();
        let now = Instant::now();
        self.seen
            .retain(|n, _| nodes.iter().any(|v| name_of(v) == n));
        for node in nodes {
            let name = name_of(&node).to_string();
            let hb = heartbeat_of(reg, &node);
            let entry = self
                .seen
                .entry(name.clone())
                .or_insert_with(|| (hb.clone(), now));
            let fresh_change = entry.0 != hb;
            if fresh_change {
                *entry = (hb, now);
            }
            let stale = now.duration_since(entry.1) > grace;
            let ready = ready_condition(&node);
            let status = ready.and_then(|c| c["status"].as_str()).unwrap_or("");
            let ours = ready.and_then(|c| c["reason"].as_str()) == Some(UNKNOWN_REASON);
            let mut next = node.clone();
            if stale && status != "Unknown" {
                set_ready(
                    &mut next,
                    "Unknown",
                    UNKNOWN_REASON,
                    "Kubelet stopped posting node status.",
                );
                tracing::warn!(node = %name, "no heartbeat within the grace period: Ready=Unknown");
            } else if !stale && fresh_change && status == "Unknown" && ours {
                set_ready(&mut next, "True", "KubeletReady", "node heartbeats resumed");
                tracing::info!(node = %name, "heartbeats resumed: Ready=True");
            } else {
                continue;
            }
            if let Err(e) = reg.update(res, None, &name, next, Part::Status).await {
                tracing::warn!(node = %name, error = %e, "updating node condition failed");
            }
        }
    }
}

/// Runs the monitor every `period`.
pub async fn run(reg: Arc<Registry>, grace: Duration, period: Duration) {
    let mut m = Monitor::default();
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        m.pass(&reg, grace).await;
    }
}
