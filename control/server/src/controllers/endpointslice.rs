//! EndpointSlice controller (and the legacy Endpoints mirror).
//!
//! Level-triggered: events on Services, Pods and Nodes mark Services dirty; each dirty Service
//! is reconciled from the current state: selector → pods with an IP → endpoints with
//! `ready`/`serving`/`terminating`, `nodeName`, zone and `targetRef`; ports with named
//! `targetPort`s resolved per pod (pods resolving to different numbers land in different
//! slices); at most `max_per_slice` endpoints per slice; slices labelled
//! `kubernetes.io/service-name` and owned by the Service. Existing slices are updated in place
//! and written only when they change.
//!
//! Reads: the Service and the Nodes come from the store; the Service's Pods from an [`Index`]
//! the controller loop keeps per namespace (the fields a reconcile reads of each Pod, a
//! `key=value` label index, and every Service's selector to map a Pod event to its Services),
//! rebuilt at each resync and fed by the loop's own event stream. [`reconcile`] and
//! [`reconcile_tracked`] (tests, one-off callers) list the Pods from the store instead.
//!
//! Readiness: an endpoint is `serving` when its pod is Ready, `ready` when serving and not
//! terminating (or always with `publishNotReadyAddresses`). A pod on a node whose Ready
//! condition is Unknown or False is neither — the apiserver's node lifecycle controller gets
//! the same effect by marking such pods NotReady; Sluice derives it, so endpoints recover as
//! soon as the node's heartbeats do.
//!
//! Trigger time: every slice and Endpoints object the controller writes carries
//! `endpoints.kubernetes.io/last-change-trigger-time` (RFC 3339, fractional seconds as Go's
//! `RFC3339Nano`), computed like upstream's `TriggerTimeTracker`: the earliest trigger time among
//! the changes seen since the Service's last successful reconcile — a pod's Ready condition
//! `lastTransitionTime` that moved, or the Service's `creationTimestamp` the first time the Service
//! is seen. The earliest, not the newest, because proxies measure network-programming latency from
//! it and the oldest unprogrammed change is what the latency is about. When a write happens with no
//! such change (e.g. a node's readiness flipped: Sluice derives that instead of rewriting pods)
//! the time the controller observed it is used. The annotation never causes a write by itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{name_of, ns_of, str_at};
use crate::registry::{DeleteOptions, Part, Registry};
use crate::resources::by_kind;
use crate::selectors::{labels_of as object_labels, LabelReq, LabelSelector};

/// Label naming the Service of a slice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our manager value (the upstream controller's, so consumers treat the slices as usual).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Annotation holding the time of the change that caused the write (upstream's
/// `EndpointsLastChangeTriggerTime`); kube-proxy-style proxies compute network-programming
/// latency from it.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What [`TriggerTimeTracker`] last saw of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TriggerState {
    /// Pod name → Ready condition's `lastTransitionTime`.
    pods: HashMap<String, Timestamp>,
    /// The Service's `creationTimestamp`.
    service: Option<Timestamp>,
}

/// Per-Service memory of the trigger times already reflected in written objects (upstream's
/// `TriggerTimeTracker`). In memory only: after a restart every Service counts as new.
#[derive(Debug, Default)]
pub struct TriggerTimeTracker {
    states: Mutex<HashMap<(String, String), TriggerState>>,
}

/// A computed trigger time plus the state to remember once the reconcile succeeded (committing
/// only then means a failed write does not lose the trigger for the retry).
#[derive(Debug)]
pub struct PendingTrigger {
    key: (String, String),
    state: TriggerState,
    /// The earliest changed trigger time, if any change carried one.
    pub time: Option<Timestamp>,
}

fn ts_at(v: &Value, ptr: &str) -> Option<Timestamp> {
    str_at(v, ptr)?.parse().ok()
}

/// A pod's trigger time: its Ready condition's last transition (as upstream).
fn pod_trigger_time(p: &Value) -> Option<Timestamp> {
    p.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c.get("lastTransitionTime")?.as_str()?.parse().ok())
}

impl TriggerTimeTracker {
    /// Computes the trigger time for a reconcile of `ns/name` with these selected pods.
    pub fn compute(&self, ns: &str, name: &str, svc: &Value, pods: &[Value]) -> PendingTrigger {
        let key = (ns.to_string(), name.to_string());
        let known = self
            .states
            .lock()
            .map(|s| s.get(&key).cloned())
            .unwrap_or_default();
        let mut next = TriggerState {
            service: ts_at(svc, "/metadata/creationTimestamp"),
            ..Default::default()
        };
        let mut min: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| min = Some(min.map_or(t, |m| m.min(t)));
        for p in pods {
            if let Some(t) = pod_trigger_time(p) {
                let before = known.as_ref().and_then(|k| k.pods.get(name_of(p)));
                if before.is_none_or(|b| t > *b) {
                    consider(t);
                }
                next.pods.insert(name_of(p).to_string(), t);
            }
        }
        let time = match &known {
            // A Service seen for the first time: its creation is the trigger.
            None => next.service,
            Some(k) => {
                if let Some(t) = next.service.filter(|t| k.service.is_none_or(|b| *t > b)) {
                    consider(t);
                }
                min
            }
        };
        PendingTrigger {
            key,
            state: next,
            time,
        }
    }

    /// Remembers `p`'s state: its changes are now reflected in the written objects.
    pub fn commit(&self, p: PendingTrigger) {
        if let Ok(mut s) = self.states.lock() {
            s.insert(p.key, p.state);
        }
    }

    /// Forgets a Service (deleted, or no longer managed).
    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut s) = self.states.lock() {
            s.remove(&(ns.to_string(), name.to_string()));
        }
    }
}

/// Sets the trigger-time annotation on an object about to be written.
fn set_trigger_time(obj: &mut Value, t: Timestamp) {
    let meta = &mut obj["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][LAST_CHANGE_TRIGGER_TIME] = json!(t.to_string());
}

fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Node readiness as the controller sees it: false only for an explicit Unknown/False.
fn node_ok(nodes: &HashMap<String, Value>, name: &str) -> bool {
    let Some(n) = nodes.get(name) else {
        return true;
    };
    !n.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] != "True")
        })
}

/// Resolves a service port's targetPort against a pod; None when a named port is missing.
fn resolve_target(sp: &Value, pod: &Value) -> Option<i64> {
    match sp.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => {
            let proto = sp.get("protocol").and_then(|p| p.as_str()).unwrap_or("TCP");
            pod.pointer("/spec/containers")?
                .as_array()?
                .iter()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(|p| p.as_array())
                        .into_iter()
                        .flatten()
                })
                .find(|cp| {
                    cp.get("name").and_then(|n| n.as_str()) == Some(name.as_str())
                        && cp.get("protocol").and_then(|p| p.as_str()).unwrap_or("TCP") == proto
                })
                .and_then(|cp| cp.get("containerPort")?.as_i64())
        }
        _ => sp.get("port").and_then(|p| p.as_i64()),
    }
}

/// The desired slices' contents for one Service: (ports, endpoints) chunks.
pub fn desired(
    svc: &Value,
    pods: &[Value],
    nodes: &HashMap<String, Value>,
    max_per_slice: usize,
) -> Vec<(Vec<Value>, Vec<Value>)> {
    let publish_not_ready = svc
        .pointer("/spec/publishNotReadyAddresses")
        .and_then(|b| b.as_bool())
        .unwrap_or(false);
    let svc_ports: Vec<Value> = svc
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut sorted: Vec<&Value> = pods.iter().collect();
    sorted.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    for pod in sorted {
        let Some(ip) = str_at(pod, "/status/podIP").filter(|i| !i.is_empty()) else {
            continue;
        };
        if matches!(str_at(pod, "/status/phase"), Some("Succeeded" | "Failed")) {
            continue;
        }
        let mut ports = Vec::new();
        let mut complete = true;
        for sp in &svc_ports {
            match resolve_target(sp, pod) {
                Some(port) => ports.push(json!({
                    "name": sp.get("name").and_then(|n| n.as_str()).unwrap_or(""),
                    "port": port,
                    "protocol": sp.get("protocol").and_then(|p| p.as_str()).unwrap_or("TCP"),
                })),
                None => complete = false,
            }
        }
        if !complete {
            continue;
        }
        let node = str_at(pod, "/spec/nodeName").unwrap_or("");
        let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
        let serving = (pod_ready(pod) && node_ok(nodes, node)) || publish_not_ready;
        let ready = publish_not_ready || (serving && !terminating);
        let mut ep = json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": {
                "kind": "Pod",
                "namespace": ns_of(pod),
                "name": name_of(pod),
                "uid": str_at(pod, "/metadata/uid").unwrap_or(""),
            },
        });
        if !node.is_empty() {
            ep["nodeName"] = json!(node);
            if let Some(zone) = nodes
                .get(node)
                .and_then(|n| str_at(n, "/metadata/labels/topology.kubernetes.io~1zone"))
            {
                ep["zone"] = json!(zone);
            }
        }
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(ep);
    }
    let mut out = Vec::new();
    for (_, (ports, eps)) in groups {
        for chunk in eps.chunks(max_per_slice.max(1)) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // A placeholder slice, as the upstream controller keeps for a Service with no endpoints.
        out.push((Vec::new(), Vec::new()));
    }
    out
}

/// One legacy Endpoints subset being assembled.
#[derive(Default)]
struct Subset {
    ports: Vec<Value>,
    seen_ready: BTreeSet<String>,
    seen_not_ready: BTreeSet<String>,
    ready: Vec<Value>,
    not_ready: Vec<Value>,
}

/// The legacy Endpoints subsets for the same inputs: ready endpoints → `addresses`, not ready
/// and not terminating → `notReadyAddresses`, terminating ones left out.
fn endpoints_subsets(chunks: &[(Vec<Value>, Vec<Value>)]) -> Vec<Value> {
    let mut by_ports: BTreeMap<String, Subset> = BTreeMap::new();
    for (ports, eps) in chunks {
        if ports.is_empty() {
            continue;
        }
        let key = serde_json::to_string(ports).unwrap_or_default();
        let e = by_ports.entry(key).or_insert_with(|| Subset {
            ports: ports.clone(),
            ..Default::default()
        });
        for ep in eps {
            let ip = ep
                .pointer("/addresses/0")
                .and_then(|a| a.as_str())
                .unwrap_or("")
                .to_string();
            let mut addr = json!({"ip": ip, "targetRef": ep["targetRef"]});
            if let Some(n) = ep.get("nodeName") {
                addr["nodeName"] = n.clone();
            }
            let cond = |c: &str| {
                ep.pointer(&format!("/conditions/{c}"))
                    .and_then(|r| r.as_bool())
                    .unwrap_or(false)
            };
            if cond("ready") {
                if e.seen_ready.insert(ip) {
                    e.ready.push(addr);
                }
            } else if !cond("terminating") && e.seen_not_ready.insert(ip) {
                e.not_ready.push(addr);
            }
        }
    }
    by_ports
        .into_values()
        .filter(|s| !s.ready.is_empty() || !s.not_ready.is_empty())
        .map(|s| {
            let ports: Vec<Value> = s
                .ports
                .into_iter()
                .map(|mut p| {
                    if p["name"] == "" {
                        if let Some(m) = p.as_object_mut() {
                            m.remove("name");
                        }
                    }
                    p
                })
                .collect();
            let mut out = json!({"ports": ports});
            if !s.ready.is_empty() {
                out["addresses"] = json!(s.ready);
            }
            if !s.not_ready.is_empty() {
                out["notReadyAddresses"] = json!(s.not_ready);
            }
            out
        })
        .collect()
}

/// Reconciles one Service's slices and Endpoints with a throwaway trigger-time tracker (every
/// Service counts as new: written objects carry its creation time).
pub async fn reconcile(
    reg: &Registry,
    ns: &str,
    name: &str,
    max_per_slice: usize,
) -> Result<(), String> {
    reconcile_tracked(reg, ns, name, max_per_slice, &TriggerTimeTracker::default()).await
}

/// Reconciles one Service's slices and Endpoints, stamping written objects with the trigger
/// time `triggers` computes.
pub async fn reconcile_tracked(
    reg: &Registry,
    ns: &str,
    name: &str,
    max_per_slice: usize,
    triggers: &TriggerTimeTracker,
) -> Result<(), String> {
    let pods = |sel: &LabelSelector| -> Vec<Value> {
        reg.store()
            .list(&by_kind("Pod").ns_prefix(Some(ns)))
            .0
            .iter()
            .filter_map(|s| s.value().ok())
            .filter(|p| sel.matches(&object_labels(p)))
            .collect()
    };
    reconcile_with(reg, ns, name, max_per_slice, triggers, pods).await
}

/// [`reconcile_tracked`] with the Service's pods from `pods` (given its selector).
async fn reconcile_with(
    reg: &Registry,
    ns: &str,
    name: &str,
    max_per_slice: usize,
    triggers: &TriggerTimeTracker,
    pods: impl Fn(&LabelSelector) -> Vec<Value>,
) -> Result<(), String> {
    let slices_res = by_kind("EndpointSlice");
    let ep_res = by_kind("Endpoints");
    // Managed slices are named `<service>-<suffix>` (generateName), so a key-range scan finds
    // them without parsing every slice of the namespace — per reconcile that scan would make a
    // resync of N services cost N × N parses.
    let existing: Vec<Value> = reg
        .store()
        .list(&format!("{}{name}-", slices_res.ns_prefix(Some(ns))))
        .0
        .iter()
        .filter_map(|s| s.value().ok())
        .filter(|v| {
            str_at(v, "/metadata/labels/kubernetes.io~1service-name") == Some(name)
                && str_at(
                    v,
                    "/metadata/labels/endpointslice.kubernetes.io~1managed-by",
                ) == Some(MANAGED_BY)
        })
        .collect();
    let svc = reg.get_value(by_kind("Service"), Some(ns), name).ok();
    // Selector-less and ExternalName Services have no managed slices.
    let managed = svc.and_then(|s| {
        let sel = service_selector(&s)?;
        (str_at(&s, "/spec/type") != Some("ExternalName")).then_some((s, sel))
    });
    let Some((svc, selector)) = managed else {
        triggers.forget(ns, name);
        for s in existing {
            let _ = reg
                .delete(slices_res, Some(ns), name_of(&s), &DeleteOptions::default())
                .await;
        }
        // The Endpoints object of a Service that no longer exists (or lost its selector).
        if let Ok(e) = reg.get_value(ep_res, Some(ns), name) {
            if str_at(&e, "/metadata/labels/endpoints.kubernetes.io~1managed-by")
                == Some(MANAGED_BY_EP)
            {
                let _ = reg
                    .delete(ep_res, Some(ns), name, &DeleteOptions::default())
                    .await;
            }
        }
        return Ok(());
    };

    let pods: Vec<Value> = pods(&selector);
    let nodes: HashMap<String, Value> = reg
        .store()
        .list(&by_kind("Node").prefix())
        .0
        .iter()
        .filter_map(|s| s.value().ok())
        .map(|n| (name_of(&n).to_string(), n))
        .collect();
    let want = desired(&svc, &pods, &nodes, max_per_slice);
    let trigger = triggers.compute(ns, name, &svc, &pods);
    // Computed once so every object of this reconcile carries the same time.
    let trigger_time = trigger.time.unwrap_or_else(Timestamp::now);

    let mut labels = svc
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels[SERVICE_NAME_LABEL] = json!(name);
    labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
    let owner = json!([{
        "apiVersion": "v1",
        "kind": "Service",
        "name": name,
        "uid": str_at(&svc, "/metadata/uid").unwrap_or(""),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);

    // Match desired contents to existing slices so that a resync rewrites nothing: first
    // slices that already hold exactly a desired chunk, then slices with the same ports, then
    // any other slice; create what is left over and delete surplus slices.
    let mut pool: Vec<Value> = existing;
    pool.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    let render = |cur: &Value, ports: &[Value], eps: &[Value]| {
        let mut next = cur.clone();
        next["endpoints"] = json!(eps);
        next["ports"] = json!(ports);
        next["addressType"] = json!("IPv4");
        next["metadata"]["labels"] = labels.clone();
        next["metadata"]["ownerReferences"] = owner.clone();
        next
    };
    let mut pending: Vec<&(Vec<Value>, Vec<Value>)> = Vec::new();
    for chunk in &want {
        let (ports, eps) = chunk;
        match pool
            .iter()
            .position(|s| normalized(&render(s, ports, eps)) == normalized(s))
        {
            Some(i) => {
                pool.remove(i);
            }
            None => pending.push(chunk),
        }
    }
    for (ports, eps) in pending {
        let pos = pool
            .iter()
            .position(|s| s.get("ports").cloned().unwrap_or(json!([])) == json!(ports))
            .or(if pool.is_empty() { None } else { Some(0) });
        match pos {
            Some(i) => {
                let cur = pool.remove(i);
                let mut next = render(&cur, ports, eps);
                set_trigger_time(&mut next, trigger_time);
                reg.update(slices_res, Some(ns), name_of(&cur), next, Part::Main)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            None => {
                let mut obj = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{name}-"),
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": owner,
                    },
                    "addressType": "IPv4",
                    "endpoints": eps,
                    "ports": ports,
                });
                set_trigger_time(&mut obj, trigger_time);
                reg.create(slices_res, Some(ns), obj)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    for s in pool {
        let _ = reg
            .delete(slices_res, Some(ns), name_of(&s), &DeleteOptions::default())
            .await;
    }

    // Legacy Endpoints.
    let subsets = endpoints_subsets(&want);
    let mut ep_labels = svc
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    ep_labels["endpoints.kubernetes.io/managed-by"] = json!(MANAGED_BY_EP);
    match reg.get_value(ep_res, Some(ns), name) {
        Ok(cur) => {
            let mut next = cur.clone();
            next["subsets"] = json!(subsets);
            next["metadata"]["labels"] = ep_labels;
            if normalized(&next) != normalized(&cur) {
                set_trigger_time(&mut next, trigger_time);
                reg.update(ep_res, Some(ns), name, next, Part::Main)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Err(_) => {
            let mut obj = json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": name, "namespace": ns, "labels": ep_labels},
                "subsets": subsets,
            });
            set_trigger_time(&mut obj, trigger_time);
            match reg.create(ep_res, Some(ns), obj).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    triggers.commit(trigger);
    Ok(())
}

/// Manager label value on Endpoints objects we own.
pub const MANAGED_BY_EP: &str = "endpoint-controller";

/// Drops server-filled noise so a comparison only sees what the controller controls.
fn normalized(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        // The trigger time rides along with real changes; it never causes a write.
        if let Some(a) = m.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            a.remove(LAST_CHANGE_TRIGGER_TIME);
            if a.is_empty() {
                m.remove("annotations");
            }
        }
    }
    for key in ["endpoints", "subsets", "ports"] {
        if v.get(key)
            .is_some_and(|x| x.is_null() || x.as_array().is_some_and(|a| a.is_empty()))
        {
            if let Some(m) = v.as_object_mut() {
                m.remove(key);
            }
        }
    }
    v
}

/// The selector of a Service, when it has a non-empty one.
fn service_selector(svc: &Value) -> Option<LabelSelector> {
    let sel = svc.pointer("/spec/selector")?.as_object()?;
    if sel.is_empty() {
        return None;
    }
    let m: BTreeMap<String, String> = sel
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    Some(LabelSelector::from_map(&m))
}

/// Every Service (namespace, name), for full resyncs and node changes.
pub fn all_services(reg: &Registry) -> Vec<(String, String)> {
    let res = by_kind("Service");
    reg.store()
        .list(&res.prefix())
        .0
        .iter()
        .map(|s| {
            let (ns, n) = res.split_key(&s.key);
            (ns.unwrap_or("").to_string(), n.to_string())
        })
        .collect()
}

/// What the controller keeps of Pods and Services between events, per namespace, so that a
/// reconcile does not list and parse every Pod of its namespace and a Pod event does not parse
/// every Service of it (each quadratic in a big namespace). Rebuilt from a store list at every
/// (re)sync of the controller loop, then kept current from the loop's own event stream, which
/// the loop drains before it reconciles.
#[derive(Debug, Default)]
pub struct Index {
    /// namespace → its Pods.
    pods: HashMap<String, NsPods>,
    /// namespace → service name → selector (Services with a non-empty selector).
    selectors: HashMap<String, BTreeMap<String, LabelSelector>>,
}

/// The Pods of one namespace, and which carry each `key=value` label.
#[derive(Debug, Default)]
struct NsPods {
    /// name → (labels, what reconciles read of the Pod: [`project_pod`]).
    pods: BTreeMap<String, (BTreeMap<String, String>, Value)>,
    by_label: HashMap<(String, String), BTreeSet<String>>,
}

impl NsPods {
    fn remove(&mut self, name: &str) {
        if let Some((labels, _)) = self.pods.remove(name) {
            for kv in labels {
                if let Some(set) = self.by_label.get_mut(&kv) {
                    set.remove(name);
                    if set.is_empty() {
                        self.by_label.remove(&kv);
                    }
                }
            }
        }
    }

    fn insert(&mut self, name: String, pod: &Value) {
        self.remove(&name);
        let labels = object_labels(pod);
        for kv in &labels {
            self.by_label
                .entry((kv.0.clone(), kv.1.clone()))
                .or_default()
                .insert(name.clone());
        }
        self.pods.insert(name, (labels, project_pod(pod)));
    }

    /// The pods `sel` selects: candidates from the narrowest `key=value` or `key in (values)`
    /// requirement (a Service selector is all `key=value`), then every requirement checked.
    fn select(&self, sel: &LabelSelector) -> Vec<Value> {
        let candidates = sel
            .0
            .iter()
            .filter_map(|r| match r {
                LabelReq::In(k, vals) => Some(
                    vals.iter()
                        .filter_map(|v| self.by_label.get(&(k.clone(), v.clone())))
                        .flatten()
                        .collect::<BTreeSet<&String>>(),
                ),
                LabelReq::Equals(k, v) | LabelReq::DoubleEquals(k, v) => Some(
                    self.by_label
                        .get(&(k.clone(), v.clone()))
                        .into_iter()
                        .flatten()
                        .collect(),
                ),
                _ => None,
            })
            .min_by_key(BTreeSet::len);
        let check = |(labels, pod): &(BTreeMap<String, String>, Value)| {
            sel.matches(labels).then(|| pod.clone())
        };
        match candidates {
            Some(names) => names
                .into_iter()
                .filter_map(|n| self.pods.get(n).and_then(check))
                .collect(),
            None => self.pods.values().filter_map(check).collect(),
        }
    }
}

impl Index {
    /// The index of everything in the store now.
    pub fn build(reg: &Registry) -> Self {
        let mut index = Index::default();
        for (kind, res) in [("Pod", by_kind("Pod")), ("Service", by_kind("Service"))] {
            for s in reg.store().list(&res.prefix()).0.iter() {
                if let Ok(v) = s.value() {
                    index.upsert(kind, &v);
                }
            }
        }
        index
    }

    /// Follows one store event, `v` being its object parsed (other kinds are ignored).
    pub fn apply(&mut self, kind: &str, ev: &sluice_store::Event, v: &Value) {
        if ev.event_type == sluice_store::EventType::Deleted {
            let (ns, name) = (ns_of(v), name_of(v));
            match kind {
                "Pod" => {
                    if let Some(p) = self.pods.get_mut(ns) {
                        p.remove(name);
                        if p.pods.is_empty() {
                            self.pods.remove(ns);
                        }
                    }
                }
                "Service" => remove_from(&mut self.selectors, ns, name),
                _ => {}
            }
        } else {
            self.upsert(kind, v);
        }
    }

    fn upsert(&mut self, kind: &str, v: &Value) {
        let (ns, name) = (ns_of(v).to_string(), name_of(v).to_string());
        match kind {
            "Pod" => self.pods.entry(ns).or_default().insert(name, v),
            "Service" => match service_selector(v) {
                Some(sel) => {
                    self.selectors.entry(ns).or_default().insert(name, sel);
                }
                None => remove_from(&mut self.selectors, &ns, &name),
            },
            _ => {}
        }
    }

    /// The pods of `ns` that `sel` selects.
    pub fn pods(&self, ns: &str, sel: &LabelSelector) -> Vec<Value> {
        self.pods.get(ns).map(|p| p.select(sel)).unwrap_or_default()
    }

    /// The Services of `ns` whose selector matches any of `label_sets`.
    pub fn services(&self, ns: &str, label_sets: &[BTreeMap<String, String>]) -> Vec<String> {
        self.selectors
            .get(ns)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(_, sel)| label_sets.iter().any(|l| sel.matches(l)))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn remove_from<V>(m: &mut HashMap<String, BTreeMap<String, V>>, ns: &str, name: &str) {
    if let Some(inner) = m.get_mut(ns) {
        inner.remove(name);
        if inner.is_empty() {
            m.remove(ns);
        }
    }
}

/// The fields of a Pod a reconcile reads (identity, labels, deletion, node, container ports,
/// IP, phase, conditions): a few hundred bytes instead of the whole parsed Pod.
fn project_pod(p: &Value) -> Value {
    let mut out = json!({"metadata": {}, "spec": {}, "status": {}});
    for (section, keys) in [
        (
            "metadata",
            &["name", "namespace", "uid", "labels", "deletionTimestamp"][..],
        ),
        ("spec", &["nodeName"][..]),
        ("status", &["podIP", "phase", "conditions"][..]),
    ] {
        for k in keys {
            if let Some(v) = p.get(section).and_then(|s| s.get(*k)) {
                out[section][*k] = v.clone();
            }
        }
    }
    if let Some(cs) = p.pointer("/spec/containers").and_then(|c| c.as_array()) {
        out["spec"]["containers"] = cs
            .iter()
            .map(|c| json!({"ports": c.get("ports").cloned().unwrap_or_else(|| json!([]))}))
            .collect();
    }
    out
}

/// Runs the controller: a dirty set fed from the store's events, drained continuously.
pub async fn run(reg: Arc<Registry>, max_per_slice: usize) {
    let triggers = Arc::new(TriggerTimeTracker::default());
    let index = Arc::new(Mutex::new(Index::default()));
    let (for_events, for_resync, for_reconcile) = (index.clone(), index.clone(), index);
    super::run_dirty_loop(
        reg,
        "endpointslice",
        move |reg, ev| {
            let kind = super::kind_of_key(&ev.object.key);
            match kind {
                Some(k @ ("Service" | "Pod")) => {
                    let Ok(obj) = ev.object.value() else {
                        return Vec::new();
                    };
                    let mut index = for_events.lock().unwrap_or_else(|e| e.into_inner());
                    index.apply(k, ev, &obj);
                    if k == "Service" {
                        return vec![(ns_of(&obj).to_string(), name_of(&obj).to_string())];
                    }
                    let mut label_sets = vec![object_labels(&obj)];
                    if let Some(p) = ev.prev.as_ref().and_then(|p| p.value().ok()) {
                        label_sets.push(object_labels(&p));
                    }
                    let ns = ns_of(&obj).to_string();
                    index
                        .services(&ns, &label_sets)
                        .into_iter()
                        .map(|n| (ns.clone(), n))
                        .collect()
                }
                Some("Node") => {
                    // Only readiness and zone matter; a heartbeat-only change does not.
                    let now = ev.object.value().ok();
                    let before = ev.prev.as_ref().and_then(|p| p.value().ok());
                    let sig = |v: &Option<Value>| {
                        v.as_ref().map(|v| {
                            let ready = v
                                .pointer("/status/conditions")
                                .and_then(|c| c.as_array())
                                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                                .map(|c| c["status"].clone());
                            (
                                ready,
                                v.pointer("/metadata/labels/topology.kubernetes.io~1zone")
                                    .cloned(),
                            )
                        })
                    };
                    if sig(&now) != sig(&before)
                        || ev.event_type == sluice_store::EventType::Deleted
                    {
                        all_services(reg)
                    } else {
                        Vec::new()
                    }
                }
                _ => Vec::new(),
            }
        },
        move |reg| {
            *for_resync.lock().unwrap_or_else(|e| e.into_inner()) = Index::build(reg);
            all_services(reg)
        },
        move |reg, (ns, name)| {
            let triggers = triggers.clone();
            let index = for_reconcile.clone();
            async move {
                let pods = |sel: &LabelSelector| {
                    index
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pods(&ns, sel)
                };
                reconcile_with(&reg, &ns, &name, max_per_slice, &triggers, pods).await
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, node: &str, ports: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        })
    }

    /// A bootstrapped registry over an in-memory store.
    async fn registry() -> Registry {
        use sluice_store::{RedbStore, Store, StoreOptions};
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        let reg = Registry::new(store, crate::registry::RegistryConfig::default());
        reg.bootstrap().await.unwrap();
        reg
    }

    fn svc(target: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": target}]}})
    }

    #[test]
    fn conditions_ports_and_nodes() {
        let mut terminating = pod("c", "10.0.0.3", true, "n1", json!([]));
        terminating["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
        let pods = vec![
            pod("a", "10.0.0.1", true, "n1", json!([])),
            pod("b", "10.0.0.2", false, "n2", json!([])),
            terminating,
            pod("d", "", true, "n1", json!([])),
        ];
        let mut nodes = HashMap::new();
        nodes.insert(
            "n1".to_string(),
            json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}}),
        );
        let got = desired(&svc(json!(8080)), &pods, &nodes, 100);
        assert_eq!(got.len(), 1);
        let (ports, eps) = &got[0];
        assert_eq!(
            ports,
            &vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})]
        );
        let conds: Vec<(String, Value)> = eps
            .iter()
            .map(|e| {
                (
                    e["targetRef"]["name"].as_str().unwrap().to_string(),
                    e["conditions"].clone(),
                )
            })
            .collect();
        assert_eq!(
            conds,
            vec![
                (
                    "a".into(),
                    json!({"ready": true, "serving": true, "terminating": false})
                ),
                (
                    "b".into(),
                    json!({"ready": false, "serving": false, "terminating": false})
                ),
                (
                    "c".into(),
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
            ]
        );
        assert_eq!(eps[0]["zone"], "z1");
        assert_eq!(eps[0]["nodeName"], "n1");

        // A node whose Ready condition went Unknown takes its pods' endpoints out of service.
        nodes.insert(
            "n1".to_string(),
            json!({"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        );
        let got = desired(&svc(json!(8080)), &pods[..1], &nodes, 100);
        assert_eq!(got[0].1[0]["conditions"]["ready"], false);

        // Legacy Endpoints: ready → addresses, not ready (not terminating) → notReadyAddresses.
        let got = desired(&svc(json!(8080)), &pods, &HashMap::new(), 100);
        let subsets = endpoints_subsets(&got);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(subsets[0]["notReadyAddresses"].as_array().unwrap().len(), 1);
    }

    /// Reconciling from projected pods gives exactly what whole pods give: slices, Endpoints
    /// and trigger times.
    #[test]
    fn projected_pods_reconcile_like_whole_pods() {
        let mut pods = Vec::new();
        for (i, ready, ports) in [
            (
                0,
                true,
                json!([{"name": "web", "containerPort": 8080, "protocol": "TCP"}]),
            ),
            (1, false, json!([{"name": "web", "containerPort": 8080}])),
            (2, true, json!([{"name": "web", "containerPort": 9090}])),
            (3, true, json!([{"name": "other", "containerPort": 1}])),
        ] {
            let mut p = pod(&format!("p{i}"), &format!("10.0.0.{i}"), ready, "n1", ports);
            p["metadata"]["annotations"] = json!({"big": "x".repeat(1000)});
            p["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
            p["spec"]["containers"][0]["image"] = json!("busybox");
            p["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "b"}]);
            p["status"]["conditions"][0]["lastTransitionTime"] =
                json!(format!("2030-01-01T00:00:0{i}Z"));
            pods.push(p);
        }
        pods[2]["metadata"]["deletionTimestamp"] = json!("2030-01-02T00:00:00Z");
        let projected: Vec<Value> = pods.iter().map(project_pod).collect();
        assert!(projected[0].pointer("/metadata/annotations").is_none());
        assert!(projected[0].pointer("/spec/containers/0/image").is_none());
        let nodes = HashMap::from([(
            "n1".to_string(),
            json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z"}}}),
        )]);
        for target in [json!("web"), json!(8080)] {
            let service = svc(target);
            let whole = desired(&service, &pods, &nodes, 100);
            assert!(!whole.is_empty());
            assert_eq!(desired(&service, &projected, &nodes, 100), whole);
            assert_eq!(
                endpoints_subsets(&whole),
                endpoints_subsets(&desired(&service, &projected, &nodes, 100))
            );
            let (a, b) = (TriggerTimeTracker::default(), TriggerTimeTracker::default());
            assert_eq!(
                a.compute("default", "web", &service, &pods).time,
                b.compute("default", "web", &service, &projected).time
            );
        }
    }

    #[test]
    fn label_index_selects_like_a_scan() {
        let mut ns = NsPods::default();
        let labelled = |name: &str, labels: Value| {
            let mut p = pod(name, "10.0.0.1", true, "n1", json!([]));
            p["metadata"]["labels"] = labels;
            p
        };
        ns.insert(
            "a".into(),
            &labelled("a", json!({"app": "web", "tier": "db"})),
        );
        ns.insert("b".into(), &labelled("b", json!({"app": "web"})));
        ns.insert(
            "c".into(),
            &labelled("c", json!({"app": "api", "tier": "db"})),
        );
        ns.insert("d".into(), &labelled("d", json!({})));
        let names = |ns: &NsPods, sel: &str| -> Vec<String> {
            let sel = LabelSelector::parse(sel).unwrap();
            let mut got: Vec<String> = ns
                .select(&sel)
                .iter()
                .map(|p| name_of(p).to_string())
                .collect();
            got.sort();
            let mut scan: Vec<String> = ns
                .pods
                .iter()
                .filter(|(_, (l, _))| sel.matches(l))
                .map(|(n, _)| n.clone())
                .collect();
            scan.sort();
            assert_eq!(got, scan, "{sel:?}");
            got
        };
        assert_eq!(names(&ns, "app=web"), ["a", "b"]);
        assert_eq!(names(&ns, "app=web,tier=db"), ["a"]);
        assert_eq!(names(&ns, "app in (web,api),tier!=db"), ["b"]);
        assert_eq!(names(&ns, "tier"), ["a", "c"]);
        assert_eq!(names(&ns, "!tier"), ["b", "d"]);
        assert!(names(&ns, "app=none").is_empty());
        // Relabel and remove keep the label index exact.
        ns.insert("a".into(), &labelled("a", json!({"app": "api"})));
        ns.remove("c");
        assert_eq!(names(&ns, "app=api"), ["a"]);
        assert_eq!(names(&ns, "tier=db"), Vec::<String>::new());
        assert!(!ns
            .by_label
            .contains_key(&("tier".to_string(), "db".to_string())));
    }

    /// The index follows Pod and Service events: selection by labels, relabelling, deletion,
    /// a Service losing its selector.
    #[tokio::test]
    async fn index_follows_pod_and_service_events() {
        use futures::StreamExt as _;
        let reg = registry().await;
        let create = |kind: &'static str, mut v: Value| {
            v["metadata"].as_object_mut().unwrap().remove("namespace");
            if kind == "Pod" {
                v["spec"]["containers"][0]["image"] = json!("busybox");
            }
            let reg = &reg;
            async move {
                reg.create(by_kind(kind), Some("default"), v).await.unwrap();
            }
        };
        create("Service", svc(json!(8080))).await;
        create("Pod", pod("a", "10.0.0.1", true, "n1", json!([]))).await;
        let index = Index::build(&reg);
        let web = service_selector(&svc(json!(8080))).unwrap();
        let names = |i: &Index| -> Vec<String> {
            i.pods("default", &web)
                .iter()
                .map(|p| name_of(p).to_string())
                .collect()
        };
        assert_eq!(names(&index), ["a"]);
        let app_web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert_eq!(
            index.services("default", std::slice::from_ref(&app_web)),
            ["web"]
        );
        assert!(index
            .services("other", std::slice::from_ref(&app_web))
            .is_empty());

        // Follow the changes from here, as the controller loop does.
        let mut index = index;
        let mut events = reg
            .store()
            .watch("/registry/", reg.store().revision())
            .unwrap();
        create("Pod", pod("b", "10.0.0.2", true, "n1", json!([]))).await;
        let mut a = reg.get_value(by_kind("Pod"), Some("default"), "a").unwrap();
        a["metadata"]["labels"] = json!({"app": "other"});
        reg.update(by_kind("Pod"), Some("default"), "a", a, Part::Main)
            .await
            .unwrap();
        let mut s = reg
            .get_value(by_kind("Service"), Some("default"), "web")
            .unwrap();
        s["spec"].as_object_mut().unwrap().remove("selector");
        reg.update(by_kind("Service"), Some("default"), "web", s, Part::Main)
            .await
            .unwrap();
        for _ in 0..3 {
            let ev = events.next().await.unwrap().unwrap();
            let kind = super::super::kind_of_key(&ev.object.key).unwrap();
            index.apply(kind, &ev, &ev.object.value().unwrap());
        }
        assert_eq!(names(&index), ["b"], "a relabelled out of the selection");
        assert!(
            index.services("default", &[app_web]).is_empty(),
            "selector removed"
        );
        // Bound pods are deleted gracefully unless the grace period is zero.
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        reg.delete(by_kind("Pod"), Some("default"), "b", &now)
            .await
            .unwrap();
        loop {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
                .await
                .expect("the delete's event")
                .unwrap()
                .unwrap();
            let kind = super::super::kind_of_key(&ev.object.key).unwrap();
            index.apply(kind, &ev, &ev.object.value().unwrap());
            if ev.event_type == sluice_store::EventType::Deleted {
                break;
            }
        }
        assert!(names(&index).is_empty(), "deleted");
        assert!(index
            .pods
            .get("default")
            .is_some_and(|m| m.pods.contains_key("a") && m.by_label.len() == 1));
    }

    #[test]
    fn named_target_ports_split_slices_and_chunks_cap_at_max() {
        let mut pods = Vec::new();
        for i in 0..5 {
            pods.push(pod(
                &format!("p{i}"),
                &format!("10.0.0.{i}"),
                true,
                "",
                json!([{"name": "web", "containerPort": 8080}]),
            ));
        }
        pods.push(pod(
            "q",
            "10.0.1.1",
            true,
            "",
            json!([{"name": "web", "containerPort": 9090}]),
        ));
        pods.push(pod(
            "nope",
            "10.0.1.2",
            true,
            "",
            json!([{"name": "other", "containerPort": 1}]),
        ));
        let got = desired(&svc(json!("web")), &pods, &HashMap::new(), 2);
        let summary: Vec<(i64, usize)> = got
            .iter()
            .map(|(p, e)| (p[0]["port"].as_i64().unwrap(), e.len()))
            .collect();
        assert_eq!(summary, vec![(8080, 2), (8080, 2), (8080, 1), (9090, 1)]);
    }

    #[test]
    fn no_pods_gives_a_placeholder() {
        let got = desired(&svc(json!(80)), &[], &HashMap::new(), 100);
        assert_eq!(got, vec![(vec![], vec![])]);
        assert!(endpoints_subsets(&got).is_empty());
    }

    #[test]
    fn trigger_time_tracker_follows_upstream() {
        let t = TriggerTimeTracker::default();
        let mut s = svc(json!(8080));
        s["metadata"]["creationTimestamp"] = json!("2030-01-01T00:00:00Z");
        let ready_at = |name: &str, at: &str| {
            let mut p = pod(name, "10.0.0.1", true, "n1", json!([]));
            p["status"]["conditions"][0]["lastTransitionTime"] = json!(at);
            p
        };
        // First sight: the Service's creation.
        let pods = vec![ready_at("a", "2030-01-01T00:00:05Z")];
        let p = t.compute("default", "web", &s, &pods);
        assert_eq!(
            p.time.map(|t| t.to_string()).as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        t.commit(p);
        // Nothing changed: no trigger (a write would use the observation time).
        let p = t.compute("default", "web", &s, &pods);
        assert_eq!(p.time, None);
        // Not committed (failed write): the retry still sees the change.
        let pods = vec![
            ready_at("a", "2030-01-01T00:00:09.25Z"),
            ready_at("b", "2030-01-01T00:00:07.5Z"),
        ];
        let _failed_write = t.compute("default", "web", &s, &pods);
        let p = t.compute("default", "web", &s, &pods);
        // The earliest of the changes not yet written.
        assert_eq!(
            p.time.map(|t| t.to_string()).as_deref(),
            Some("2030-01-01T00:00:07.5Z")
        );
        t.commit(p);
        assert_eq!(t.compute("default", "web", &s, &pods).time, None);
        t.forget("default", "web");
        assert!(t.compute("default", "web", &s, &pods).time.is_some());
    }

    #[tokio::test]
    async fn reconcile_writes_only_changes_and_cleans_up() {
        let reg = registry().await;
        let mut s = svc(json!(8080));
        s["metadata"].as_object_mut().unwrap().remove("namespace");
        reg.create(by_kind("Service"), Some("default"), s)
            .await
            .unwrap();
        for i in 0..3 {
            let mut p = pod(
                &format!("p{i}"),
                &format!("10.0.0.{i}"),
                true,
                "",
                json!([]),
            );
            let status = p["status"].take();
            p["spec"].as_object_mut().unwrap().remove("nodeName");
            p["spec"]["containers"][0]["image"] = json!("busybox");
            reg.create(by_kind("Pod"), Some("default"), p)
                .await
                .unwrap();
            let mut cur = reg
                .get_value(by_kind("Pod"), Some("default"), &format!("p{i}"))
                .unwrap();
            for (k, v) in status.as_object().unwrap() {
                cur["status"][k] = v.clone();
            }
            reg.update(
                by_kind("Pod"),
                Some("default"),
                &format!("p{i}"),
                cur,
                Part::Status,
            )
            .await
            .unwrap();
        }
        reconcile(&reg, "default", "web", 2).await.unwrap();
        let slices = |reg: &Registry| -> Vec<Value> {
            reg.store()
                .list(&by_kind("EndpointSlice").ns_prefix(Some("default")))
                .0
                .iter()
                .map(|s| s.value().unwrap())
                .collect()
        };
        let got = slices(&reg);
        assert_eq!(got.len(), 2, "3 endpoints at 2 per slice");
        for s in &got {
            let t = s["metadata"]["annotations"][LAST_CHANGE_TRIGGER_TIME]
                .as_str()
                .expect("trigger time on a written slice");
            assert!(t.parse::<Timestamp>().is_ok(), "{t}");
            assert_eq!(s["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
            assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Service");
            assert!(s["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        }
        let ep = reg
            .get_value(by_kind("Endpoints"), Some("default"), "web")
            .unwrap();
        assert!(ep["metadata"]["annotations"][LAST_CHANGE_TRIGGER_TIME].is_string());
        // Nothing changed: nothing written (with a fresh and with a remembering tracker).
        let rev = reg.store().revision();
        let mut w = reg.store().watch("/registry/", rev).unwrap();
        reconcile(&reg, "default", "web", 2).await.unwrap();
        let tracker = TriggerTimeTracker::default();
        reconcile_tracked(&reg, "default", "web", 2, &tracker)
            .await
            .unwrap();
        reconcile_tracked(&reg, "default", "web", 2, &tracker)
            .await
            .unwrap();
        if reg.store().revision() != rev {
            use futures::StreamExt;
            let ev = w.next().await.unwrap().unwrap();
            panic!(
                "rewrote {}:\nbefore {}\nafter  {}",
                ev.object.key,
                String::from_utf8_lossy(&ev.prev.as_ref().unwrap().json),
                String::from_utf8_lossy(&ev.object.json)
            );
        }
        // A Service whose name extends "web-" shares the key prefix of web's slices: its own
        // slices must survive web's reconciles.
        let mut api = svc(json!(8080));
        api["metadata"].as_object_mut().unwrap().remove("namespace");
        api["metadata"]["name"] = json!("web-api");
        reg.create(by_kind("Service"), Some("default"), api)
            .await
            .unwrap();
        reconcile(&reg, "default", "web-api", 2).await.unwrap();
        assert_eq!(slices(&reg).len(), 4);
        // Service gone: slices and Endpoints go too.
        reg.delete(
            by_kind("Service"),
            Some("default"),
            "web",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
        reconcile(&reg, "default", "web", 2).await.unwrap();
        let left = slices(&reg);
        assert_eq!(left.len(), 2, "web-api's slices stay");
        assert!(left
            .iter()
            .all(|s| s["metadata"]["labels"][SERVICE_NAME_LABEL] == "web-api"));
        assert!(reg
            .get(by_kind("Endpoints"), Some("default"), "web")
            .is_err());
    }
}
