//! The scheduler's runner: pending pods are placed by `sluice-scheduler` and bound through the
//! registry's `pods/binding`, as kube-scheduler binds them.
//!
//! A [`Snapshot`] of nodes and assigned pods is kept from the store's watch. A pending pod
//! (no `spec.nodeName`, `schedulerName` ours, not being deleted, no scheduling gates) is a key;
//! reconciling it reads the pod from the store, asks [`sluice_scheduler::schedule`], assumes
//! the placement in the snapshot (so the next pod sees it before the watch does) and binds.
//! One reconcile places a batch of pending pods this way and writes their bindings together,
//! so they share the store's commits.
//! A pod that fits nowhere gets `PodScheduled=False` with reason `Unschedulable` and upstream's
//! message, and a FailedScheduling event; it waits until a node changes or an assigned pod
//! goes, which re-queues every pending pod (upstream moves unschedulable pods back to the
//! active queue on such cluster events).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};
use sluice_scheduler::Snapshot;
use sluice_store::{Event, EventType};

use super::events::{Recorder, Regarding};
use crate::registry::{now_rfc3339, Part, Registry};
use crate::resources::by_kind;

/// The scheduler name pods get by default, and the only one served.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// A pending pod: (namespace, name).
pub type Key = (String, String);

/// What the runner keeps between reconciles.
pub struct State {
    snapshot: Snapshot,
    pending: BTreeSet<Key>,
    /// Pending pods not tried since they arrived or the cluster last changed (upstream's
    /// active queue); a reconcile takes a batch of them along with its own key.
    fresh: BTreeSet<Key>,
    events: Recorder,
}

fn key_of(p: &Pod) -> Key {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether this scheduler should place the pod.
pub fn wants_scheduling(p: &Pod) -> bool {
    let Some(spec) = &p.spec else { return false };
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
        && p.metadata.deletion_timestamp.is_none()
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn assigned(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

impl State {
    fn new() -> Self {
        State {
            snapshot: Snapshot::new(),
            pending: BTreeSet::new(),
            fresh: BTreeSet::new(),
            events: Recorder::new(SCHEDULER_NAME),
        }
    }

    /// Takes one pod's new state; returns whether capacity was freed on a node.
    fn pod(&mut self, p: &Pod, deleted: bool) -> bool {
        let key = key_of(p);
        if deleted {
            let had = self.snapshot.pod_node(&key.0, &key.1).is_some();
            self.snapshot.remove_pod(&key.0, &key.1);
            self.pending.remove(&key);
            return had;
        }
        if assigned(p) {
            self.pending.remove(&key);
            let freeing = p.metadata.deletion_timestamp.is_some()
                || matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
            if let Err(e) = self.snapshot.upsert_pod(p) {
                tracing::warn!(pod = ?key, error = %e, "pod not taken into the scheduler's view");
            }
            return freeing;
        }
        self.snapshot.remove_pod(&key.0, &key.1);
        if wants_scheduling(p) {
            if self.pending.insert(key.clone()) {
                self.fresh.insert(key);
            }
        } else {
            self.pending.remove(&key);
        }
        false
    }

    /// The cluster changed: every pending pod is worth another try.
    fn retry_all(&mut self) -> Vec<Key> {
        self.fresh.extend(self.pending.iter().cloned());
        self.pending.iter().cloned().collect()
    }

    fn node(&mut self, n: &Node, deleted: bool) {
        if deleted {
            self.snapshot
                .remove_node(n.metadata.name.as_deref().unwrap_or(""));
        } else if let Err(e) = self.snapshot.upsert_node(&with_readiness_taint(n)) {
            tracing::warn!(error = %e, "node not taken into the scheduler's view");
        }
    }
}

/// The node as the scheduler judges it: one whose Ready condition is not True carries the
/// NoSchedule taint the node lifecycle controller gives it (not-ready, or unreachable for
/// Unknown) even before that controller's next pass has written it, and a node that has not
/// reported Ready yet counts as not ready, as a kubelet registers it. So pods land only on
/// Ready nodes unless they tolerate the taint, and the Unschedulable message names it.
pub fn with_readiness_taint(n: &Node) -> Node {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let key = match ready {
        Some("True") => return n.clone(),
        Some("Unknown") => super::nodelifecycle::TAINT_UNREACHABLE,
        _ => super::nodelifecycle::TAINT_NOT_READY,
    };
    let mut out = n.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    let taints = spec.taints.get_or_insert_with(Vec::new);
    if !taints
        .iter()
        .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(k8s_openapi::api::core::v1::Taint {
            key: key.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        });
    }
    out
}

fn map_event(state: &Mutex<State>, ev: &Event) -> Vec<Key> {
    let key = &ev.object.key;
    let deleted = ev.event_type == EventType::Deleted;
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    if key.starts_with(&by_kind("Node").prefix()) {
        let Ok(n) = serde_json::from_slice::<Node>(&ev.object.json) else {
            return Vec::new();
        };
        st.node(&n, deleted);
        return st.retry_all();
    }
    if key.starts_with(&by_kind("Pod").prefix()) {
        let Ok(p) = serde_json::from_slice::<Pod>(&ev.object.json) else {
            return Vec::new();
        };
        if st.pod(&p, deleted) {
            return st.retry_all();
        }
        let k = key_of(&p);
        if st.pending.contains(&k) {
            return vec![k];
        }
    }
    Vec::new()
}

fn resync(state: &Mutex<State>, reg: &Registry) -> Vec<Key> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let events = st.events.clone();
    *st = State::new();
    st.events = events;
    for s in reg.store().list(&by_kind("Node").prefix()).0 {
        if let Ok(n) = serde_json::from_slice::<Node>(&s.json) {
            st.node(&n, false);
        }
    }
    for s in reg.store().list(&by_kind("Pod").prefix()).0 {
        if let Ok(p) = serde_json::from_slice::<Pod>(&s.json) {
            st.pod(&p, false);
        }
    }
    st.fresh = st.pending.clone();
    st.pending.iter().cloned().collect()
}

fn regarding(p: &Pod) -> Regarding {
    Regarding {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

/// The pod's status with `PodScheduled=False`/`Unschedulable` and `message`; None when it
/// already says so.
pub fn unschedulable_status(pod: &Value, message: &str) -> Option<Value> {
    let mut v = pod.clone();
    if !v["status"].is_object() {
        v["status"] = json!({});
    }
    let conds = v["status"]
        .as_object_mut()
        .expect("just made an object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    let list = conds.as_array_mut()?;
    if let Some(c) = list.iter().find(|c| c["type"] == "PodScheduled") {
        if c["status"] == "False" && c["reason"] == "Unschedulable" && c["message"] == message {
            return None;
        }
    }
    list.retain(|c| c["type"] != "PodScheduled");
    list.push(json!({
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": now_rfc3339(),
    }));
    Some(v)
}

/// How many pending pods one reconcile places before binding them together.
const BATCH: usize = 16;

/// What placing one pod came to.
enum Placed {
    /// Assumed on a node; the binding is still to be written.
    Bind(Key, Box<Pod>, String),
    /// Nothing (more) to do for it now.
    Done,
}

/// Reads a pending pod and places it in the snapshot, or records why it fits nowhere.
async fn place(reg: &Arc<Registry>, state: &Mutex<State>, key: &Key) -> Result<Placed, String> {
    let pods = by_kind("Pod");
    let Ok(stored) = reg.get(pods, Some(&key.0), &key.1) else {
        state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .remove(key);
        return Ok(Placed::Done);
    };
    let pod: Pod = serde_json::from_slice(&stored.json).map_err(|e| e.to_string())?;
    let (decision, events) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if !wants_scheduling(&pod) {
            st.pending.remove(key);
            return Ok(Placed::Done);
        }
        let d = sluice_scheduler::schedule(&st.snapshot, &pod);
        if let Ok(node) = &d {
            // Later pods see this one on its node before the binding is even written.
            st.snapshot.assume(&pod, node).map_err(|e| e.to_string())?;
            st.pending.remove(key);
        }
        (d, st.events.clone())
    };
    let unsched = match decision {
        Ok(node) => return Ok(Placed::Bind(key.clone(), Box::new(pod), node)),
        Err(u) => u,
    };
    let message = unsched.message();
    let v = stored.value().map_err(|e| e.to_string())?;
    if let Some(next) = unschedulable_status(&v, &message) {
        match reg
            .update(pods, Some(&key.0), &key.1, next, Part::Status)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Placed::Done),
            Err(e) => return Err(e.to_string()),
        }
        events.emit(
            reg,
            regarding(&pod),
            "Warning",
            "FailedScheduling".into(),
            message,
        );
    }
    Ok(Placed::Done)
}

/// Writes one binding; on failure the assumption is dropped and the pod is pending again.
async fn bind(
    reg: &Arc<Registry>,
    state: &Mutex<State>,
    key: Key,
    pod: Box<Pod>,
    node: String,
) -> Result<(), String> {
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": key.1, "namespace": key.0},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    if let Err(e) = reg.bind_pod(&key.0, &key.1, &binding).await {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.snapshot.forget(&key.0, &key.1);
        if e.code == 404 {
            return Ok(());
        }
        st.pending.insert(key.clone());
        st.fresh.insert(key);
        return Err(e.to_string());
    }
    let events = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .events
        .clone();
    events.emit(
        reg,
        regarding(&pod),
        "Normal",
        "Scheduled".into(),
        format!("Successfully assigned {}/{} to {node}", key.0, key.1),
    );
    Ok(())
}

/// Places the pod `key` and up to [`BATCH`] − 1 other fresh pending pods one after another
/// (each sees the ones before it in the snapshot), then writes their bindings concurrently so
/// they share the store's commits. A failed binding fails the reconcile, which is retried; its
/// pod is pending and fresh again, so the retry's batch takes it.
async fn reconcile(reg: Arc<Registry>, state: Arc<Mutex<State>>, key: Key) -> Result<(), String> {
    let keys: Vec<Key> = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.fresh.remove(&key);
        let others: Vec<Key> = st.fresh.iter().take(BATCH - 1).cloned().collect();
        for k in &others {
            st.fresh.remove(k);
        }
        std::iter::once(key).chain(others).collect()
    };
    let mut binds = Vec::new();
    let mut failed = Ok(());
    for k in &keys {
        match place(&reg, &state, k).await {
            Ok(Placed::Bind(k, pod, node)) => binds.push(bind(&reg, &state, k, pod, node)),
            Ok(Placed::Done) => {}
            // The pods placed before it are still bound; this one is tried again.
            Err(e) => {
                state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fresh
                    .insert(k.clone());
                failed = Err(e);
            }
        }
    }
    let bound: Result<Vec<()>, String> =
        futures::future::join_all(binds).await.into_iter().collect();
    failed.and(bound.map(|_| ()))
}

/// Runs the scheduler.
pub async fn run(reg: Arc<Registry>) {
    let state = Arc::new(Mutex::new(State::new()));
    let (for_events, for_resync, for_reconcile) = (state.clone(), state.clone(), state);
    super::run_dirty_loop(
        reg,
        "scheduler",
        move |_reg, ev| map_event(&for_events, ev),
        move |reg| resync(&for_resync, reg),
        move |reg, key: Key| reconcile(reg, for_reconcile.clone(), key),
    )
    .await
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::controllers::testing::{registry, until};

    async fn node(reg: &Registry, name: &str, ready: &str, cpu: &str) {
        reg.create(by_kind("Node"), None, json!({"metadata": {"name": name}}))
            .await
            .unwrap();
        let mut v = reg.get_value(by_kind("Node"), None, name).unwrap();
        v["status"] = json!({
            "conditions": [{"type": "Ready", "status": ready}],
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        });
        reg.update(by_kind("Node"), None, name, v, Part::Status)
            .await
            .unwrap();
    }

    async fn pod(reg: &Registry, name: &str, cpu: &str) {
        reg.create(
            by_kind("Pod"),
            Some("default"),
            json!({"metadata": {"name": name}, "spec": {"containers": [
                {"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
        .await
        .unwrap();
    }

    fn pod_value(reg: &Registry, name: &str) -> Value {
        reg.get_value(by_kind("Pod"), Some("default"), name)
            .unwrap()
    }

    #[test]
    fn nodes_not_ready_are_tainted_for_scheduling() {
        let n = |status: Option<&str>| -> Node {
            let conds = status.map(|s| json!([{"type": "Ready", "status": s}]));
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "status": {"conditions": conds.unwrap_or(json!([]))}}))
            .unwrap()
        };
        let keys = |n: &Node| -> Vec<String> {
            with_readiness_taint(n)
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .into_iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        };
        assert!(keys(&n(Some("True"))).is_empty());
        assert_eq!(
            keys(&n(Some("False"))),
            ["node.kubernetes.io/not-ready:NoSchedule"]
        );
        assert_eq!(keys(&n(None)), ["node.kubernetes.io/not-ready:NoSchedule"]);
        assert_eq!(
            keys(&n(Some("Unknown"))),
            ["node.kubernetes.io/unreachable:NoSchedule"]
        );
    }

    #[tokio::test]
    async fn pending_pods_are_bound_and_unschedulable_ones_wait_for_a_node() {
        let reg = registry().await;
        node(&reg, "n1", "True", "1").await;
        node(&reg, "n2", "False", "4").await;
        let task = tokio::spawn(run(reg.clone()));
        pod(&reg, "a", "500m").await;
        until("a bound", || {
            pod_value(&reg, "a")["spec"]["nodeName"] == "n1"
        })
        .await;
        let a = pod_value(&reg, "a");
        let cond = a["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PodScheduled")
            .cloned()
            .unwrap();
        assert_eq!(cond["status"], "True");
        // Too big for n1, and n2 is not ready.
        pod(&reg, "b", "800m").await;
        until("b unschedulable", || {
            pod_value(&reg, "b")["status"]["conditions"][0]["reason"] == "Unschedulable"
        })
        .await;
        let b = pod_value(&reg, "b");
        assert_eq!(
            b["status"]["conditions"][0]["message"],
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint(s). \
             preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, \
             1 Preemption is not helpful for scheduling."
        );
        // n2 becomes ready: b is retried and lands there.
        let mut n2 = reg.get_value(by_kind("Node"), None, "n2").unwrap();
        n2["status"]["conditions"][0]["status"] = json!("True");
        reg.update(by_kind("Node"), None, "n2", n2, Part::Status)
            .await
            .unwrap();
        until("b bound", || {
            pod_value(&reg, "b")["spec"]["nodeName"] == "n2"
        })
        .await;
        // Events are written in the background, named by the time they happened.
        let reasons = || -> Vec<String> {
            reg.store()
                .list(&by_kind("Event").prefix())
                .0
                .iter()
                .map(|s| s.value().unwrap())
                .filter(|e| e["involvedObject"]["name"] == "b")
                .map(|e| e["reason"].as_str().unwrap().to_string())
                .collect()
        };
        until("b's events", || reasons().len() == 2).await;
        assert_eq!(reasons(), ["FailedScheduling", "Scheduled"]);
        task.abort();
    }
}
