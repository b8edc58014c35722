//! NoExecute taint eviction (upstream's taint manager): a pod bound to a node with a NoExecute
//! taint it does not tolerate is deleted now; one that tolerates it for `tolerationSeconds` is
//! deleted when that runs out (from the taint's `timeAdded`). With the node lifecycle
//! controller's not-ready/unreachable taints and the 300 s default tolerations every pod gets
//! at admission, pods of a node that stops reporting are evicted after five minutes, and their
//! ReplicaSet makes replacements elsewhere.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use sluice_scheduler::{eviction_time, Eviction};

use super::events::{Recorder, Regarding};
use crate::registry::{DeleteOptions, Registry};
use crate::resources::by_kind;

/// The NoExecute taints of a node.
fn no_execute(n: &Node) -> Vec<Taint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter(|t| t.effect == "NoExecute")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Pods to evict now: (namespace, name, uid) of every pod bound to a node with NoExecute
/// taints whose eviction time has come, among `pods`.
pub fn due(nodes: &[Node], pods: &[Pod], now: jiff::Timestamp) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for n in nodes {
        let taints = no_execute(n);
        if taints.is_empty() {
            continue;
        }
        let name = n.metadata.name.as_deref().unwrap_or("");
        for p in pods {
            let spec = p.spec.as_ref();
            if spec.and_then(|s| s.node_name.as_deref()) != Some(name)
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
            if eviction_time(&tolerations, &taints, now) == Eviction::Now {
                out.push((
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.uid.clone().unwrap_or_default(),
                ));
            }
        }
    }
    out
}

/// One pass over the store.
pub async fn pass(reg: &Arc<Registry>, events: &Recorder) {
    let nodes: Vec<Node> = reg
        .store()
        .list(&by_kind("Node").prefix())
        .0
        .iter()
        .filter(|s| s.json.windows(9).any(|w| w == b"NoExecute"))
        .filter_map(|s| serde_json::from_slice(&s.json).ok())
        .collect();
    if nodes.is_empty() {
        return;
    }
    let pods: Vec<Pod> = reg
        .store()
        .list(&by_kind("Pod").prefix())
        .0
        .iter()
        .filter_map(|s| serde_json::from_slice(&s.json).ok())
        .collect();
    for (ns, name, uid) in due(&nodes, &pods, jiff::Timestamp::now()) {
        let opts = DeleteOptions {
            precondition_uid: Some(uid.clone()),
            ..Default::default()
        };
        match reg.delete(by_kind("Pod"), Some(&ns), &name, &opts).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), "evicted: NoExecute taint not tolerated");
                let about = Regarding {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid,
                };
                events.emit(
                    reg,
                    about,
                    "Normal",
                    "TaintManagerEviction".into(),
                    format!("Marking for deletion Pod {ns}/{name}"),
                );
            }
            Err(e) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "eviction failed"),
        }
    }
}

/// Runs a pass every second.
pub async fn run(reg: Arc<Registry>) {
    let events = Recorder::new("taint-eviction-controller");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        pass(&reg, &events).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"taints": taints}}))
            .unwrap()
    }

    fn pod(name: &str, tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d", "uid": name},
            "spec": {"nodeName": "n1", "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "i"}]},
        }))
        .unwrap()
    }

    #[test]
    fn pods_go_when_their_toleration_runs_out() {
        let added = "2026-01-01T00:00:00Z";
        let t0: jiff::Timestamp = added.parse().unwrap();
        let n = node(
            json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                             "timeAdded": added}]),
        );
        let pods = vec![
            pod("none", json!([])),
            pod(
                "default",
                json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                   "effect": "NoExecute", "tolerationSeconds": 300}]),
            ),
            pod("forever", json!([{"operator": "Exists"}])),
        ];
        let names = |at: jiff::Timestamp| -> Vec<String> {
            due(std::slice::from_ref(&n), &pods, at)
                .into_iter()
                .map(|(_, name, _)| name)
                .collect()
        };
        assert_eq!(names(t0), vec!["none"]);
        assert_eq!(
            names(t0 + jiff::SignedDuration::from_secs(299)),
            vec!["none"]
        );
        assert_eq!(
            names(t0 + jiff::SignedDuration::from_secs(300)),
            vec!["none", "default"]
        );
        let clean = node(json!([{"key": "x", "effect": "NoSchedule"}]));
        assert!(due(&[clean], &pods, t0).is_empty());
    }
}
