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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sluice_store::{RedbStore, Store, StoreOptions};

    use super::*;
    use crate::registry::{Registry, RegistryConfig};

    fn ready_of(reg: &Registry, n: &str) -> (String, String) {
        let v = reg.get_value(by_kind("Node"), None, n).unwrap();
        let c = ready_condition(&v).cloned().unwrap_or(json!({}));
        (
            c["status"].as_str().unwrap_or("").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
        )
    }

    async fn renew(reg: &Registry, n: &str, t: &str) {
        let leases = by_kind("Lease");
        let lease = json!({"metadata": {"name": n, "namespace": "kube-node-lease"}, "spec": {"holderIdentity": n, "renewTime": t}});
        match reg.get(leases, Some("kube-node-lease"), n) {
            Ok(_) => reg
                .update(leases, Some("kube-node-lease"), n, lease, Part::Main)
                .await
                .map(|_| ()),
            Err(_) => reg
                .create(leases, Some("kube-node-lease"), lease)
                .await
                .map(|_| ()),
        }
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stale_heartbeats_make_ready_unknown_and_renewals_restore_it() {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        let reg = Registry::new(store, RegistryConfig::default());
        reg.bootstrap().await.unwrap();
        let nodes = by_kind("Node");
        for n in ["n1", "n2"] {
            reg.create(nodes, None, json!({"metadata": {"name": n}}))
                .await
                .unwrap();
            let mut v = reg.get_value(nodes, None, n).unwrap();
            set_ready(&mut v, "True", "KubeletReady", "ready");
            reg.update(nodes, None, n, v, Part::Status).await.unwrap();
        }
        renew(&reg, "n1", "2026-01-01T00:00:00.000000Z").await;
        // n2 says NotReady itself: heartbeats must not turn that into True.
        let mut v = reg.get_value(nodes, None, "n2").unwrap();
        set_ready(&mut v, "False", "KubeletNotReady", "runtime down");
        reg.update(nodes, None, "n2", v, Part::Status)
            .await
            .unwrap();

        let grace = Duration::from_secs(40);
        let mut m = Monitor::default();
        m.pass(&reg, grace).await;
        tokio::time::advance(Duration::from_secs(30)).await;
        renew(&reg, "n1", "2026-01-01T00:00:30.000000Z").await;
        m.pass(&reg, grace).await;
        assert_eq!(
            ready_of(&reg, "n1").0,
            "True",
            "renewed within the grace period"
        );

        tokio::time::advance(Duration::from_secs(41)).await;
        m.pass(&reg, grace).await;
        assert_eq!(
            ready_of(&reg, "n1"),
            ("Unknown".into(), UNKNOWN_REASON.into())
        );
        assert_eq!(
            ready_of(&reg, "n2"),
            ("Unknown".into(), UNKNOWN_REASON.into())
        );
        // Another pass changes nothing.
        let rev = reg.store().revision();
        m.pass(&reg, grace).await;
        assert_eq!(reg.store().revision(), rev);

        renew(&reg, "n1", "2026-01-01T00:01:30.000000Z").await;
        m.pass(&reg, grace).await;
        assert_eq!(ready_of(&reg, "n1").0, "True");
        assert_eq!(
            ready_of(&reg, "n2").0,
            "Unknown",
            "no heartbeat, stays Unknown"
        );
    }
}
