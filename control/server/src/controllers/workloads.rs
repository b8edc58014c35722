//! The runner of the Deployment and ReplicaSet controllers (`sluice-workloads` decides; this
//! module feeds it and writes what it decides).
//!
//! Pods, ReplicaSets and Deployments are held in [`Cache`]s fed by the store's watch and by
//! this runner's own writes, so a reconcile never acts twice on the same state. An event maps
//! to the keys it concerns: a pod to its controlling ReplicaSet (or, for an orphan, every
//! ReplicaSet of its namespace, which may adopt it); a ReplicaSet to itself and its
//! Deployment (or every Deployment of the namespace for an orphan); a Deployment to itself.
//! A reconcile gets only the objects it may own or adopt: those it controls and the orphans
//! of its namespace.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;
use sluice_workloads::{Action, Plan};

use super::cache::Cache;
use super::events::{Recorder, Regarding};
use super::Requeue;
use crate::registry::{DeleteOptions, Part, Registry};
use crate::resources::{by_kind, Resource};

/// What a reconcile is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A ReplicaSet (namespace, name).
    ReplicaSet(String, String),
    /// A Deployment (namespace, name).
    Deployment(String, String),
}

/// The caches both controllers read.
pub struct State {
    pods: Cache<Pod>,
    rss: Cache<ReplicaSet>,
    deployments: Cache<Deployment>,
    rs_events: Recorder,
    deploy_events: Recorder,
}

impl State {
    fn new() -> Self {
        State {
            pods: Cache::new(by_kind("Pod")),
            rss: Cache::new(by_kind("ReplicaSet")),
            deployments: Cache::new(by_kind("Deployment")),
            rs_events: Recorder::new("replicaset-controller"),
            deploy_events: Recorder::new("deployment-controller"),
        }
    }
}

fn controller_of(meta: &ObjectMeta) -> Option<(&str, &str)> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn ns_name(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The keys an object's change concerns (for both its old and new state).
fn keys_for(state: &State, metas: &[&ObjectMeta], kind: &str) -> Vec<Key> {
    let mut out = Vec::new();
    for meta in metas {
        let (ns, name) = ns_name(meta);
        let (owner_kind, make): (&str, fn(String, String) -> Key) = match kind {
            "Pod" => ("ReplicaSet", Key::ReplicaSet),
            "ReplicaSet" => {
                out.push(Key::ReplicaSet(ns.clone(), name));
                ("Deployment", Key::Deployment)
            }
            _ => {
                out.push(Key::Deployment(ns, name));
                continue;
            }
        };
        match controller_of(meta) {
            Some((k, owner)) if k == owner_kind => out.push(make(ns, owner.to_string())),
            Some(_) => {}
            None => {
                // An orphan: any controller of the namespace may adopt it.
                let names: Vec<String> = if owner_kind == "ReplicaSet" {
                    state
                        .rss
                        .in_namespace(Some(&ns))
                        .map(|r| ns_name(&r.metadata).1)
                        .collect()
                } else {
                    state
                        .deployments
                        .in_namespace(Some(&ns))
                        .map(|d| ns_name(&d.metadata).1)
                        .collect()
                };
                out.extend(names.into_iter().map(|n| make(ns.clone(), n)));
            }
        }
    }
    out
}

fn map_event(state: &Mutex<State>, ev: &sluice_store::Event) -> Vec<Key> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let key = &ev.object.key;
    let kind = if st.pods.owns(key) {
        "Pod"
    } else if st.rss.owns(key) {
        "ReplicaSet"
    } else if st.deployments.owns(key) {
        "Deployment"
    } else {
        return Vec::new();
    };
    fn metas<T>(ev: &sluice_store::Event) -> Vec<ObjectMeta>
    where
        T: serde::de::DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        [Some(&ev.object), ev.prev.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_slice::<T>(&s.json).ok())
            .map(|o| o.metadata().clone())
            .collect()
    }
    let ms = match kind {
        "Pod" => {
            st.pods.observe(ev);
            metas::<Pod>(ev)
        }
        "ReplicaSet" => {
            st.rss.observe(ev);
            metas::<ReplicaSet>(ev)
        }
        _ => {
            st.deployments.observe(ev);
            metas::<Deployment>(ev)
        }
    };
    let refs: Vec<&ObjectMeta> = ms.iter().collect();
    keys_for(&st, &refs, kind)
}

fn resync(state: &Mutex<State>, reg: &Registry) -> Vec<Key> {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let list = |res: &Resource| reg.store().list(&res.prefix()).0;
    let (p, r, d) = (
        list(st.pods.resource()),
        list(st.rss.resource()),
        list(st.deployments.resource()),
    );
    st.pods.reset(&p);
    st.rss.reset(&r);
    st.deployments.reset(&d);
    let mut keys: Vec<Key> = st
        .rss
        .in_namespace(None)
        .map(|r| {
            let (ns, n) = ns_name(&r.metadata);
            Key::ReplicaSet(ns, n)
        })
        .collect();
    keys.extend(st.deployments.in_namespace(None).map(|d| {
        let (ns, n) = ns_name(&d.metadata);
        Key::Deployment(ns, n)
    }));
    keys
}

/// The inputs of one reconcile, cloned out of the caches so no lock is held across writes.
fn inputs(st: &State, key: &Key) -> Option<Inputs> {
    match key {
        Key::ReplicaSet(ns, name) => {
            let rs = st.rss.get(Some(ns), name)?;
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            let pods = st
                .pods
                .in_namespace(Some(ns))
                .filter(|p| controller_uid(&p.metadata).is_none_or(|u| u == uid))
                .map(|p| (**p).clone())
                .collect();
            Some(Inputs::ReplicaSet((*rs).clone(), pods))
        }
        Key::Deployment(ns, name) => {
            let d = st.deployments.get(Some(ns), name)?;
            let uid = d.metadata.uid.clone().unwrap_or_default();
            let rss: Vec<ReplicaSet> = st
                .rss
                .in_namespace(Some(ns))
                .filter(|r| controller_uid(&r.metadata).is_none_or(|u| u == uid))
                .map(|r| (**r).clone())
                .collect();
            let rs_uids: HashSet<&str> = rss
                .iter()
                .filter_map(|r| r.metadata.uid.as_deref())
                .collect();
            let pods = st
                .pods
                .in_namespace(Some(ns))
                .filter(|p| controller_uid(&p.metadata).is_some_and(|u| rs_uids.contains(u)))
                .map(|p| (**p).clone())
                .collect();
            Some(Inputs::Deployment((*d).clone(), rss, pods))
        }
    }
}

enum Inputs {
    ReplicaSet(ReplicaSet, Vec<Pod>),
    Deployment(Deployment, Vec<ReplicaSet>, Vec<Pod>),
}

fn to_value<T: Serialize>(o: &T) -> Result<Value, String> {
    serde_json::to_value(o).map_err(|e| e.to_string())
}

fn regarding(r: &sluice_workloads::ObjectRef) -> Regarding {
    Regarding {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
    }
}

fn emit(recorder: &Recorder, reg: &Arc<Registry>, ev: sluice_workloads::Event) {
    recorder.emit(
        reg,
        regarding(&ev.regarding),
        ev.event_type.as_str(),
        ev.reason,
        ev.message,
    );
}

/// Records a write's result in the cache of its resource.
fn remember(state: &Mutex<State>, res: &Resource, s: &sluice_store::Stored) {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    match res.kind {
        "Pod" => st.pods.record(s),
        "ReplicaSet" => st.rss.record(s),
        _ => st.deployments.record(s),
    };
}

/// After a delete: the object is either gone (tombstone at the delete's revision) or still
/// there, marked (graceful or finalizers).
fn remember_delete(state: &Mutex<State>, reg: &Registry, res: &Resource, key: &str, rev: u64) {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let cache_delete = |st: &mut State| match res.kind {
        "Pod" => st.pods.record_delete(key, rev),
        "ReplicaSet" => st.rss.record_delete(key, rev),
        _ => st.deployments.record_delete(key, rev),
    };
    match reg.store().get(key) {
        Some(s) => {
            match res.kind {
                "Pod" => st.pods.record(&s),
                "ReplicaSet" => st.rss.record(&s),
                _ => st.deployments.record(&s),
            };
        }
        None => {
            cache_delete(&mut st);
        }
    }
}

/// Writes one action. `written` holds the revision of each object this plan already wrote: a
/// later action on the same object carries the earlier change, so it is written over that
/// revision, not the one the plan was made from. A conflict or a vanished object is an error:
/// the key is retried, by which time the watch has brought the newer state.
async fn apply(
    reg: &Arc<Registry>,
    state: &Mutex<State>,
    recorder: &Recorder,
    written: &Mutex<HashMap<String, u64>>,
    a: Action,
) -> Result<(), String> {
    let pods = by_kind("Pod");
    let rss = by_kind("ReplicaSet");
    let deps = by_kind("Deployment");
    let update = |res: &'static Resource, mut v: Value, part: Part| async move {
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let name = v
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let key = res.key(Some(&ns), &name);
        let earlier = written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(rev) = earlier {
            v["metadata"]["resourceVersion"] = Value::from(rev.to_string());
        }
        let s = reg
            .update(res, Some(&ns), &name, v, part)
            .await
            .map_err(|e| e.to_string())?;
        written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, s.mod_revision);
        remember(state, res, &s);
        Ok::<(), String>(())
    };
    match a {
        Action::CreatePod { pod, on_success } => {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let s = reg
                .create(pods, Some(&ns), to_value(&pod)?)
                .await
                .map_err(|e| e.to_string())?;
            remember(state, pods, &s);
            let name = pods.split_key(&s.key).1.to_string();
            emit(recorder, reg, on_success.render(&name));
            Ok(())
        }
        Action::DeletePod {
            namespace,
            name,
            uid,
        } => delete(reg, state, pods, &namespace, &name, uid).await,
        Action::DeleteReplicaSet {
            namespace,
            name,
            uid,
        } => delete(reg, state, rss, &namespace, &name, uid).await,
        Action::CreateReplicaSet(rs) => {
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            match reg.create(rss, Some(&ns), to_value(&rs)?).await {
                Ok(s) => {
                    remember(state, rss, &s);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Action::UpdateReplicaSet(rs) => update(rss, to_value(&rs)?, Part::Main).await,
        Action::UpdateReplicaSetStatus(rs) => update(rss, to_value(&rs)?, Part::Status).await,
        Action::UpdateDeployment(d) => update(deps, to_value(&d)?, Part::Main).await,
        Action::UpdateDeploymentStatus(d) => update(deps, to_value(&d)?, Part::Status).await,
        Action::PatchOwnerRefs {
            target,
            owner_references,
        } => {
            let res = match target.kind.as_str() {
                "Pod" => pods,
                "ReplicaSet" => rss,
                other => return Err(format!("cannot patch owners of a {other}")),
            };
            let mut v = reg
                .get_value(res, Some(&target.namespace), &target.name)
                .map_err(|e| e.to_string())?;
            if v.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(&target.uid) {
                return Ok(());
            }
            v["metadata"]["ownerReferences"] = if owner_references.is_empty() {
                Value::Null
            } else {
                to_value(&owner_references)?
            };
            if let Some(m) = v["metadata"].as_object_mut() {
                m.retain(|_, x| !x.is_null());
            }
            update(res, v, Part::Main).await
        }
        Action::Event(ev) => {
            emit(recorder, reg, ev);
            Ok(())
        }
    }
}

async fn delete(
    reg: &Registry,
    state: &Mutex<State>,
    res: &'static Resource,
    ns: &str,
    name: &str,
    uid: String,
) -> Result<(), String> {
    let opts = DeleteOptions {
        precondition_uid: Some(uid),
        ..Default::default()
    };
    match reg.delete(res, Some(ns), name, &opts).await {
        Ok(s) => {
            remember_delete(state, reg, res, &s.key, s.mod_revision);
            Ok(())
        }
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

async fn reconcile(
    reg: Arc<Registry>,
    state: Arc<Mutex<State>>,
    key: Key,
) -> Result<Requeue, String> {
    let now = jiff::Timestamp::now();
    let (inputs, recorder) = {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        let rec = match key {
            Key::ReplicaSet(..) => st.rs_events.clone(),
            Key::Deployment(..) => st.deploy_events.clone(),
        };
        (inputs(&st, &key), rec)
    };
    let plan: Plan = match inputs {
        None => return Ok(Requeue(None)),
        Some(Inputs::ReplicaSet(rs, pods)) => {
            match sluice_workloads::replicaset::reconcile(&rs, &pods, now) {
                Ok(p) => p,
                Err(e) => {
                    // Bad input is not retried; the object's next change brings it back.
                    tracing::warn!(?key, error = %e, "replicaset not reconciled");
                    return Ok(Requeue(None));
                }
            }
        }
        Some(Inputs::Deployment(d, rss, pods)) => {
            match sluice_workloads::deployment::reconcile(&d, &rss, &pods, now) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(?key, error = %e, "deployment not reconciled");
                    return Ok(Requeue(None));
                }
            }
        }
    };
    let written = Mutex::new(HashMap::new());
    let mut actions = deployment_writes_last(plan.actions).into_iter().peekable();
    while let Some(a) = actions.next() {
        if !matches!(a, Action::CreatePod { .. }) {
            apply(&reg, &state, &recorder, &written, a).await?;
            continue;
        }
        // Pod creates go out in slow-start batches (1, 2, 4, … at once), as upstream's
        // ReplicaSet controller sends them: concurrent creates share the store's commits,
        // and a failing batch stops the rest (quota, a namespace going away).
        let mut creates = vec![a];
        while matches!(actions.peek(), Some(Action::CreatePod { .. })) {
            creates.extend(actions.next());
        }
        let mut batch = 1;
        let mut rest = creates.into_iter();
        loop {
            let group: Vec<Action> = rest.by_ref().take(batch).collect();
            if group.is_empty() {
                break;
            }
            let results = futures::future::join_all(
                group
                    .into_iter()
                    .map(|a| apply(&reg, &state, &recorder, &written, a)),
            )
            .await;
            results.into_iter().collect::<Result<Vec<()>, String>>()?;
            batch *= 2;
        }
    }
    Ok(Requeue(plan.requeue_after))
}

/// A Deployment's plan lists its events (`ScalingReplicaSet`: what the ReplicaSet writes
/// before them did) after the Deployment's own writes. Those are the ones that conflict when
/// a user changes the Deployment meanwhile (`kubectl scale`, an apply), and the retry finds
/// the ReplicaSets already scaled, so events recorded only after them would be lost. Upstream
/// records each event as soon as its ReplicaSet write succeeds; so the Deployment's writes go
/// last here (every other action keeps its order).
fn deployment_writes_last(actions: Vec<Action>) -> Vec<Action> {
    let (deployment, rest): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
        matches!(
            a,
            Action::UpdateDeployment(_) | Action::UpdateDeploymentStatus(_)
        )
    });
    rest.into_iter().chain(deployment).collect()
}

/// Runs both controllers in one loop over one set of caches.
pub async fn run(reg: Arc<Registry>) {
    let state = Arc::new(Mutex::new(State::new()));
    let (for_events, for_resync, for_reconcile) = (state.clone(), state.clone(), state);
    super::run_dirty_loop(
        reg,
        "workloads",
        move |_reg, ev| map_event(&for_events, ev),
        move |reg| resync(&for_resync, reg),
        move |reg, key: Key| reconcile(reg, for_reconcile.clone(), key),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_workloads::{Event, EventType, ObjectRef};

    #[test]
    fn deployment_writes_go_after_the_events_of_replicaset_writes() {
        let rs = |n: &str| {
            let mut r = ReplicaSet::default();
            r.metadata.name = Some(n.into());
            r
        };
        let event = |m: &str| {
            Action::Event(Event {
                regarding: ObjectRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    namespace: "ns".into(),
                    name: "d".into(),
                    uid: "u".into(),
                },
                event_type: EventType::Normal,
                reason: "ScalingReplicaSet".into(),
                message: m.into(),
            })
        };
        let plan = vec![
            Action::CreateReplicaSet(rs("new")),
            Action::UpdateReplicaSet(rs("old")),
            Action::UpdateDeployment(Deployment::default()),
            Action::UpdateDeploymentStatus(Deployment::default()),
            event("up"),
            event("down"),
        ];
        let kinds: Vec<String> = deployment_writes_last(plan)
            .iter()
            .map(|a| match a {
                Action::CreateReplicaSet(r) => {
                    format!("create {}", r.metadata.name.as_deref().unwrap())
                }
                Action::UpdateReplicaSet(r) => {
                    format!("update {}", r.metadata.name.as_deref().unwrap())
                }
                Action::UpdateDeployment(_) => "deployment".into(),
                Action::UpdateDeploymentStatus(_) => "deployment status".into(),
                Action::Event(e) => format!("event {}", e.message),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "create new",
                "update old",
                "event up",
                "event down",
                "deployment",
                "deployment status"
            ]
        );
    }
}
