//! Node lifecycle: a node whose heartbeats stop for `--node-monitor-grace-period` gets its
//! Ready condition set to Unknown (`NodeStatusUnknown`, "Kubelet stopped posting node
//! status."), and every pod bound to it is marked not ready, as upstream's `MarkPodsNotReady`
//! does: the pod's existing `Ready` condition becomes `False` (new `lastTransitionTime`, its
//! reason and message kept; `ContainersReady` and container statuses are the kubelet's and
//! stay), through a status write, so the EndpointSlice controller withdraws the pod. Pods in a
//! terminal phase and pods without a Ready condition are left alone. A marking that fails is
//! retried on the next pass while the node is still not Ready, and a controller that starts
//! with a node already Unknown by its hand marks that node's pods again (a restart between the
//! two writes must not leave them ready). When heartbeats resume, the condition this controller
//! set is restored to True.
//!
//! Pods after recovery: upstream leaves them to the kubelet, whose status manager reconciles
//! the pod's status with the API and so writes Ready=True again. Sluice's node agent writes no
//! pod status, so a pod marked here would stay not ready forever. When the node is Ready again,
//! a pod this process marked is therefore given its Ready status back, but only if nothing has
//! written the pod since the marking (same resourceVersion): whatever reports pod status (a
//! kubelet, a runtime, the lab) is left the last word. Markings made by an earlier process are
//! not remembered across a restart; those pods wait for their reporter.
//!
//! A heartbeat is a change of the node's Lease `spec.renewTime` (in `kube-node-lease`) or of
//! its Ready condition's `lastHeartbeatTime`. As in the upstream controller, staleness is
//! measured on this process's clock from when a heartbeat value was first observed, so a
//! control-plane restart or clock skew does not mark every node Unknown at once.

use std::collections::{BTreeSet, HashMap};
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

/// A pod this controller marked not ready.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkedPod {
    /// Namespace.
    pub ns: String,
    /// Name.
    pub name: String,
    /// The pod's resourceVersion after the marking.
    pub revision: u64,
    /// Its Ready status before (`True`, `Unknown`).
    pub ready_before: String,
}

/// What [`mark_pods_not_ready`] did.
#[derive(Debug, Default)]
pub struct Marking {
    /// Pods written.
    pub marked: Vec<MarkedPod>,
    /// Pods whose write failed (`ns/name: error`); the marking is to be retried.
    pub errors: Vec<String>,
}

/// Marks every pod bound to `node` not ready (upstream `MarkPodsNotReady`): a pod's `Ready`
/// condition, if it has one that is not already `False`, becomes `False` with a new
/// `lastTransitionTime`, through a status write. Pods in a terminal phase are left alone.
/// Every pod is tried; failures are collected.
pub async fn mark_pods_not_ready(reg: &Registry, node: &str) -> Marking {
    let res = by_kind("Pod");
    let pods: Vec<Value> = reg
        .store()
        .list(&res.prefix())
        .0
        .iter()
        .filter_map(|s| s.value().ok())
        .filter(|p| str_at(p, "/spec/nodeName") == Some(node))
        .collect();
    let mut out = Marking::default();
    for mut pod in pods {
        if matches!(str_at(&pod, "/status/phase"), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(cond) = pod
            .pointer_mut("/status/conditions")
            .and_then(|c| c.as_array_mut())
            .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
        else {
            continue;
        };
        if cond["status"] == "False" {
            continue;
        }
        let ready_before = cond["status"].as_str().unwrap_or("").to_string();
        cond["status"] = json!("False");
        cond["lastTransitionTime"] = json!(now_rfc3339());
        let (ns, name) = (super::ns_of(&pod).to_string(), name_of(&pod).to_string());
        match reg.update(res, Some(&ns), &name, pod, Part::Status).await {
            Ok(s) => {
                tracing::info!(node, pod = %format!("{ns}/{name}"), "node is not ready: pod Ready=False");
                out.marked.push(MarkedPod {
                    ns,
                    name,
                    revision: s.mod_revision,
                    ready_before,
                });
            }
            // Deleted meanwhile: nothing left to mark.
            Err(e) if e.code == 404 => {}
            Err(e) => out.errors.push(format!("{ns}/{name}: {e}")),
        }
    }
    out
}

/// Gives pods marked by [`mark_pods_not_ready`] their Ready status back, each only if nothing
/// has written it since (its resourceVersion is still the marking's). Returns how many.
pub async fn restore_marked_pods(reg: &Registry, node: &str, marked: &[MarkedPod]) -> usize {
    let res = by_kind("Pod");
    let mut restored = 0;
    for m in marked {
        let Ok(s) = reg.get(res, Some(&m.ns), &m.name) else {
            continue;
        };
        if s.mod_revision != m.revision {
            continue;
        }
        let Ok(mut pod) = s.value() else { continue };
        let Some(cond) = pod
            .pointer_mut("/status/conditions")
            .and_then(|c| c.as_array_mut())
            .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
        else {
            continue;
        };
        cond["status"] = json!(m.ready_before);
        cond["lastTransitionTime"] = json!(now_rfc3339());
        // The body carries the marking's resourceVersion: a write in between wins.
        match reg
            .update(res, Some(&m.ns), &m.name, pod, Part::Status)
            .await
        {
            Ok(_) => {
                restored += 1;
                tracing::info!(node, pod = %format!("{}/{}", m.ns, m.name), "node is ready again: pod Ready restored");
            }
            Err(e) => {
                tracing::debug!(node, pod = %format!("{}/{}", m.ns, m.name), error = %e, "pod not restored");
            }
        }
    }
    restored
}

/// Per-node observation: the last heartbeat value and when this process first saw it.
#[derive(Default)]
pub struct Monitor {
    seen: HashMap<String, ((String, String), Instant)>,
    /// Nodes this controller made Unknown whose pods are still to be marked not ready.
    mark_pods: BTreeSet<String>,
    /// Pods this process marked, by node, to give back when the node is Ready again.
    marked: HashMap<String, Vec<MarkedPod>>,
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
        self.mark_pods
            .retain(|n| nodes.iter().any(|v| name_of(v) == n));
        self.marked
            .retain(|n, _| nodes.iter().any(|v| name_of(v) == n));
        let mut not_ready = BTreeSet::new();
        let mut ready_again = Vec::new();
        for node in nodes {
            let name = name_of(&node).to_string();
            let hb = heartbeat_of(reg, &node);
            let ready = ready_condition(&node);
            let status = ready.and_then(|c| c["status"].as_str()).unwrap_or("");
            let ours = ready.and_then(|c| c["reason"].as_str()) == Some(UNKNOWN_REASON);
            if !self.seen.contains_key(&name) && status == "Unknown" && ours {
                // Made Unknown before this process started: its pods may not have been marked.
                self.mark_pods.insert(name.clone());
            }
            let entry = self
                .seen
                .entry(name.clone())
                .or_insert_with(|| (hb.clone(), now));
            let fresh_change = entry.0 != hb;
            if fresh_change {
                *entry = (hb, now);
            }
            let stale = now.duration_since(entry.1) > grace;
            let mut next = node.clone();
            let becomes_unknown = stale && status != "Unknown";
            if becomes_unknown {
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
                if status != "True" {
                    not_ready.insert(name);
                } else if self.marked.contains_key(&name) {
                    // Ready again by the agent's own write.
                    ready_again.push(name);
                }
                continue;
            }
            match reg.update(res, None, &name, next, Part::Status).await {
                Ok(_) if becomes_unknown => {
                    self.mark_pods.insert(name.clone());
                    not_ready.insert(name);
                }
                Ok(_) => ready_again.push(name),
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "updating node condition failed");
                }
            }
        }
        // Pods of nodes made Unknown (now, before a restart, or on a pass whose marking
        // failed), while the node is still not Ready.
        self.mark_pods.retain(|n| not_ready.contains(n));
        let pending: Vec<String> = self.mark_pods.iter().cloned().collect();
        for name in pending {
            let m = mark_pods_not_ready(reg, &name).await;
            self.marked
                .entry(name.clone())
                .or_default()
                .extend(m.marked);
            if m.errors.is_empty() {
                self.mark_pods.remove(&name);
            } else {
                tracing::warn!(node = %name, errors = %m.errors.join("; "), "marking pods not ready failed; will retry");
            }
        }
        for name in ready_again {
            if let Some(marked) = self.marked.remove(&name) {
                restore_marked_pods(reg, &name, &marked).await;
            }
        }
        sync_condition_taints(reg).await;
    }
}

/// Taint key of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint key of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The condition taints a node should carry for its Ready status, as upstream's lifecycle
/// controller sets them (`TaintNodesByCondition` for NoSchedule, the taint-based eviction
/// for NoExecute): not-ready for False, unreachable for Unknown, none for True or while the
/// node has not reported a Ready condition yet.
pub fn condition_taint_key(node: &Value) -> Option<&'static str> {
    match ready_condition(node).and_then(|c| c["status"].as_str()) {
        Some("False") => Some(TAINT_NOT_READY),
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => None,
    }
}

/// `spec.taints` with the condition taints made to match the node's Ready status; None when
/// nothing changes. Other taints, and a condition taint already present (with its
/// `timeAdded`), are kept.
pub fn with_condition_taints(node: &Value, now: &str) -> Option<Vec<Value>> {
    let want = condition_taint_key(node);
    let taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    let ours = |t: &Value| {
        matches!(t["key"].as_str(), Some(TAINT_NOT_READY | TAINT_UNREACHABLE))
            && matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
    };
    let mut next: Vec<Value> = taints
        .iter()
        .filter(|t| !ours(t) || t["key"].as_str() == want)
        .cloned()
        .collect();
    if let Some(key) = want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next
                .iter()
                .any(|t| t["key"] == key && t["effect"] == effect)
            {
                let mut t = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    t["timeAdded"] = json!(now);
                }
                next.push(t);
            }
        }
    }
    (next != taints).then_some(next)
}

/// Brings every node's condition taints in line with its Ready status.
pub async fn sync_condition_taints(reg: &Registry) {
    let res = by_kind("Node");
    let now = now_rfc3339();
    for s in reg.store().list(&res.prefix()).0 {
        let Ok(mut node) = s.value() else { continue };
        let Some(taints) = with_condition_taints(&node, &now) else {
            continue;
        };
        let name = name_of(&node).to_string();
        node["spec"]["taints"] = if taints.is_empty() {
            Value::Null
        } else {
            json!(taints)
        };
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.retain(|_, v| !v.is_null());
        }
        // The body carries the listed resourceVersion: a concurrent write wins, the next pass
        // retries.
        match reg.update(res, None, &name, node, Part::Main).await {
            Ok(_) => tracing::info!(node = %name, "condition taints updated"),
            Err(e) => tracing::debug!(node = %name, error = %e, "condition taints not updated"),
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

    #[test]
    fn condition_taints_follow_the_ready_status() {
        let node = |status: &str, taints: Value| {
            json!({"spec": {"taints": taints},
                   "status": {"conditions": [{"type": "Ready", "status": status}]}})
        };
        let other = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
        assert_eq!(
            with_condition_taints(&node("True", json!([other])), "t0"),
            None
        );
        let t = with_condition_taints(&node("False", json!([other])), "t0").unwrap();
        assert_eq!(
            t,
            vec![
                other.clone(),
                json!({"key": TAINT_NOT_READY, "effect": "NoSchedule"}),
                json!({"key": TAINT_NOT_READY, "effect": "NoExecute", "timeAdded": "t0"}),
            ]
        );
        // Kept as they are while the status stays; swapped when it changes; gone when Ready.
        assert_eq!(with_condition_taints(&node("False", json!(t)), "t1"), None);
        let u = with_condition_taints(&node("Unknown", json!(t)), "t1").unwrap();
        assert_eq!(u.len(), 3);
        assert!(u.iter().all(|x| x["key"] != TAINT_NOT_READY));
        assert_eq!(u[2]["timeAdded"], "t1");
        assert_eq!(
            with_condition_taints(&node("True", json!(u)), "t2"),
            Some(vec![other])
        );
        assert_eq!(with_condition_taints(&json!({"metadata": {}}), "t"), None);
    }

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
        let reg = registry().await;
        let nodes = by_kind("Node");
        for n in ["n1", "n2"] {
            ready_node(&reg, n).await;
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

    fn pod(name: &str, node: Option<&str>, phase: &str, conditions: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec,
               "status": {"phase": phase, "conditions": conditions,
                          "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0,
                                                 "image": "busybox", "imageID": "",
                                                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
    }

    fn ready_conds(status: &str) -> Value {
        json!([
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ])
    }

    /// Creates a pod and writes its status (creation resets status to Pending).
    async fn put_pod(reg: &Registry, p: Value) {
        let pods = by_kind("Pod");
        let name = name_of(&p).to_string();
        reg.create(pods, Some("default"), p.clone()).await.unwrap();
        let mut cur = reg.get_value(pods, Some("default"), &name).unwrap();
        for (k, v) in p["status"].as_object().unwrap() {
            cur["status"][k] = v.clone();
        }
        reg.update(pods, Some("default"), &name, cur, Part::Status)
            .await
            .unwrap();
    }

    fn pod_of(reg: &Registry, n: &str) -> Value {
        reg.get_value(by_kind("Pod"), Some("default"), n).unwrap()
    }

    fn cond<'a>(p: &'a Value, ty: &str) -> &'a Value {
        p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
            .unwrap()
    }

    /// A bootstrapped registry on an in-memory store.
    async fn registry() -> Registry {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        let reg = Registry::new(store, RegistryConfig::default());
        reg.bootstrap().await.unwrap();
        reg
    }

    async fn ready_node(reg: &Registry, n: &str) {
        let nodes = by_kind("Node");
        reg.create(nodes, None, json!({"metadata": {"name": n}}))
            .await
            .unwrap();
        let mut v = reg.get_value(nodes, None, n).unwrap();
        set_ready(&mut v, "True", "KubeletReady", "ready");
        reg.update(nodes, None, n, v, Part::Status).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pods_on_a_lost_node_become_not_ready_and_nothing_else_is_touched() {
        let reg = registry().await;
        for n in ["lost", "healthy"] {
            ready_node(&reg, n).await;
        }
        let mut running = ready_conds("True");
        running[1]["reason"] = json!("SomeReason");
        running[1]["message"] = json!("kept");
        put_pod(&reg, pod("web-1", Some("lost"), "Running", running)).await;
        for (name, node, phase, conds) in [
            ("web-2", Some("lost"), "Running", ready_conds("True")),
            ("done", Some("lost"), "Succeeded", ready_conds("True")),
            ("failed", Some("lost"), "Failed", ready_conds("True")),
            ("unready", Some("lost"), "Running", ready_conds("False")),
            ("no-conds", Some("lost"), "Pending", json!([])),
            ("other", Some("healthy"), "Running", ready_conds("True")),
            ("unbound", None, "Pending", ready_conds("True")),
        ] {
            put_pod(&reg, pod(name, node, phase, conds)).await;
        }
        let untouched: Vec<(String, Value)> =
            ["done", "failed", "unready", "no-conds", "other", "unbound"]
                .iter()
                .map(|n| (n.to_string(), pod_of(&reg, n)))
                .collect();

        let grace = Duration::from_secs(40);
        let mut m = Monitor::default();
        m.pass(&reg, grace).await;
        for t in [20, 40, 60] {
            tokio::time::advance(Duration::from_secs(20)).await;
            renew(&reg, "healthy", &format!("2026-01-01T00:00:{t}.000000Z")).await;
            m.pass(&reg, grace).await;
        }
        assert_eq!(ready_of(&reg, "lost").0, "Unknown");
        assert_eq!(ready_of(&reg, "healthy").0, "True");

        let w1 = pod_of(&reg, "web-1");
        let r = cond(&w1, "Ready");
        assert_eq!(r["status"], "False");
        assert_ne!(r["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(
            (r["reason"].as_str(), r["message"].as_str()),
            (Some("SomeReason"), Some("kept")),
            "upstream keeps the condition's reason and message"
        );
        assert_eq!(cond(&w1, "ContainersReady")["status"], "True");
        assert_eq!(w1["status"]["containerStatuses"][0]["ready"], true);
        assert_eq!(w1["status"]["phase"], "Running");
        assert_eq!(cond(&pod_of(&reg, "web-2"), "Ready")["status"], "False");
        for (n, before) in &untouched {
            assert_eq!(&pod_of(&reg, n), before, "{n} must be untouched");
        }

        // Nothing more to do on the next passes.
        let rev = reg.store().revision();
        m.pass(&reg, grace).await;
        assert_eq!(reg.store().revision(), rev);

        // Something reports web-2's status while the node is lost: that is its last word.
        let mut w2 = pod_of(&reg, "web-2");
        w2["status"]["podIP"] = json!("10.244.0.9");
        reg.update(by_kind("Pod"), Some("default"), "web-2", w2, Part::Status)
            .await
            .unwrap();
        let w2 = pod_of(&reg, "web-2");

        // Heartbeats resume: the node is Ready again, and so is the pod nothing else wrote
        // (Sluice's agent reports no pod status); the other is left as its reporter put it.
        renew(&reg, "lost", "2026-01-01T00:02:00.000000Z").await;
        m.pass(&reg, grace).await;
        assert_eq!(ready_of(&reg, "lost").0, "True");
        let w1 = pod_of(&reg, "web-1");
        let r = cond(&w1, "Ready");
        assert_eq!(
            (r["status"].as_str(), r["reason"].as_str()),
            (Some("True"), Some("SomeReason"))
        );
        assert_eq!(pod_of(&reg, "web-2"), w2);
        for (n, before) in &untouched {
            assert_eq!(&pod_of(&reg, n), before, "{n} must be untouched");
        }
        let rev = reg.store().revision();
        m.pass(&reg, grace).await;
        assert_eq!(reg.store().revision(), rev, "restored once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_controller_marks_the_pods_of_nodes_already_unknown() {
        let reg = registry().await;
        let nodes = by_kind("Node");
        for n in ["n1", "n2"] {
            ready_node(&reg, n).await;
        }
        // n1 was made Unknown by a previous process that stopped before marking its pods;
        // n2 says NotReady itself (not this controller's doing).
        let mut v = reg.get_value(nodes, None, "n1").unwrap();
        set_ready(
            &mut v,
            "Unknown",
            UNKNOWN_REASON,
            "Kubelet stopped posting node status.",
        );
        reg.update(nodes, None, "n1", v, Part::Status)
            .await
            .unwrap();
        let mut v = reg.get_value(nodes, None, "n2").unwrap();
        set_ready(&mut v, "False", "KubeletNotReady", "runtime down");
        reg.update(nodes, None, "n2", v, Part::Status)
            .await
            .unwrap();
        put_pod(&reg, pod("a", Some("n1"), "Running", ready_conds("True"))).await;
        put_pod(&reg, pod("b", Some("n2"), "Running", ready_conds("True"))).await;

        let mut m = Monitor::default();
        m.pass(&reg, Duration::from_secs(40)).await;
        assert_eq!(cond(&pod_of(&reg, "a"), "Ready")["status"], "False");
        assert_eq!(cond(&pod_of(&reg, "b"), "Ready")["status"], "True");
        // Marked once: a pod the agent reports ready again is not flipped back while the
        // node stays Unknown.
        let mut a = pod_of(&reg, "a");
        a["status"]["conditions"] = ready_conds("True");
        reg.update(by_kind("Pod"), Some("default"), "a", a, Part::Status)
            .await
            .unwrap();
        m.pass(&reg, Duration::from_secs(40)).await;
        assert_eq!(cond(&pod_of(&reg, "a"), "Ready")["status"], "True");
    }
}
