//! The garbage collector: objects whose owners are gone are deleted, and owners deleted with
//! the `orphan` or `foregroundDeletion` finalizer are finished, as kube-controller-manager's
//! garbage collector does.
//!
//! A [`Graph`] of every stored object's identity, owner references and deletion state is kept
//! from the store's watch (rebuilt from a full list at start and after a lagged watch, so a
//! cascade interrupted by a restart resumes: its whole state is in the stored objects'
//! finalizers and deletion timestamps). [`decide`] is the reconcile function: for one object
//! (by uid) it says what to do from the graph alone; the runner checks an owner believed
//! absent against the store before deleting a dependent for it, and writes through the
//! registry.
//!
//! - A dependent all of whose owners are absent (or being deleted in the foreground) is
//!   deleted; one with some absent and some present owners loses the references to the absent
//!   ones.
//! - An owner marked deleted with `orphan` has the references to it removed from every
//!   dependent, then the finalizer; with `foregroundDeletion` its dependents are deleted, and
//!   the finalizer goes once no dependent that blocks it (`blockOwnerDeletion: true`) is left.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_store::{EventType, Stored};

use crate::registry::{
    DeleteOptions, Part, PatchType, Propagation, Registry, FINALIZER_FOREGROUND, FINALIZER_ORPHAN,
};
use crate::resources::{Resource, RESOURCES};

/// An owner reference, as far as the collector reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRef {
    /// `apiVersion` of the owner.
    #[serde(default)]
    pub api_version: String,
    /// `kind` of the owner.
    #[serde(default)]
    pub kind: String,
    /// `name` of the owner.
    #[serde(default)]
    pub name: String,
    /// `uid` of the owner.
    #[serde(default)]
    pub uid: String,
    /// `blockOwnerDeletion`.
    #[serde(default)]
    pub block_owner_deletion: Option<bool>,
}

/// One object in the graph.
#[derive(Debug, Clone)]
pub struct Item {
    /// Its resource.
    pub res: &'static Resource,
    /// Namespace (None for cluster-scoped objects).
    pub ns: Option<String>,
    /// Name.
    pub name: String,
    /// Owner references.
    pub owners: Vec<OwnerRef>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    finalizers: Vec<String>,
}

#[derive(Deserialize)]
struct MetaOnly {
    #[serde(default)]
    metadata: Meta,
}

/// Every object's identity and ownership, by uid, with the reverse (owner → dependents) index.
#[derive(Debug, Default)]
pub struct Graph {
    items: HashMap<String, Item>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Records an object's current state; returns its uid.
    pub fn upsert(&mut self, uid: &str, item: Item) {
        self.remove(uid);
        for o in &item.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        self.items.insert(uid.to_string(), item);
    }

    /// Forgets an object; returns what it was.
    pub fn remove(&mut self, uid: &str) -> Option<Item> {
        let old = self.items.remove(uid)?;
        for o in &old.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some(old)
    }

    /// The object with this uid.
    pub fn get(&self, uid: &str) -> Option<&Item> {
        self.items.get(uid)
    }

    /// The uids of the objects that name `uid` as an owner.
    pub fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every uid in the graph.
    pub fn uids(&self) -> Vec<String> {
        self.items.keys().cloned().collect()
    }

    /// What an owner reference of an object in `ns` points at: present, being deleted in the
    /// foreground, absent, or of a kind not served (left alone).
    fn owner_state(&self, dep_ns: Option<&str>, o: &OwnerRef) -> OwnerState {
        let Some(res) = resource_of(&o.api_version, &o.kind) else {
            return OwnerState::Unknown;
        };
        match self.items.get(&o.uid) {
            // A namespaced owner must be in the dependent's namespace, as upstream resolves it.
            Some(it)
                if it.res == res
                    && it.name == o.name
                    && (!res.namespaced || it.ns.as_deref() == dep_ns) =>
            {
                if it.deleting && it.finalizers.iter().any(|f| f == FINALIZER_FOREGROUND) {
                    OwnerState::WaitingForDependents
                } else {
                    OwnerState::Present
                }
            }
            _ => OwnerState::Absent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    Present,
    WaitingForDependents,
    Absent,
    Unknown,
}

/// The served resource an owner reference names.
pub fn resource_of(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Parses what the graph keeps of a stored object; None when it has no uid.
pub fn item_of(res: &'static Resource, s: &Stored) -> Option<(String, Item)> {
    let m: MetaOnly = serde_json::from_slice(&s.json).ok()?;
    let m = m.metadata;
    if m.uid.is_empty() {
        return None;
    }
    Some((
        m.uid,
        Item {
            res,
            ns: m.namespace.filter(|n| !n.is_empty() && res.namespaced),
            name: m.name,
            owners: m.owner_references,
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers,
        },
    ))
}

/// What the collector does to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcAction {
    /// Delete the object (its owners are gone): `absent` are the owner uids believed gone,
    /// which the runner confirms against the store first.
    Delete {
        /// The object's uid.
        uid: String,
        /// How its own dependents go.
        propagation: Propagation,
        /// Owners believed absent.
        absent: Vec<OwnerRef>,
    },
    /// Remove the owner references with these uids from the object.
    RemoveOwnerRefs {
        /// The object's uid.
        uid: String,
        /// Owner uids to drop.
        owners: Vec<String>,
    },
    /// Remove a finalizer from the object.
    RemoveFinalizer {
        /// The object's uid.
        uid: String,
        /// The finalizer.
        finalizer: &'static str,
    },
}

/// The reconcile function: what to do about the object `uid`, from the graph alone.
pub fn decide(g: &Graph, uid: &str) -> Vec<GcAction> {
    let Some(it) = g.get(uid) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if it.deleting {
        let has = |f: &str| it.finalizers.iter().any(|x| x == f);
        let deps = g.dependents_of(uid);
        if has(FINALIZER_ORPHAN) {
            for d in &deps {
                out.push(GcAction::RemoveOwnerRefs {
                    uid: d.clone(),
                    owners: vec![uid.to_string()],
                });
            }
            if deps.is_empty() {
                out.push(GcAction::RemoveFinalizer {
                    uid: uid.to_string(),
                    finalizer: FINALIZER_ORPHAN,
                });
            }
        } else if has(FINALIZER_FOREGROUND) {
            let blocking = deps.iter().any(|d| {
                g.get(d).is_some_and(|dep| {
                    dep.owners
                        .iter()
                        .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
                })
            });
            if !blocking {
                out.push(GcAction::RemoveFinalizer {
                    uid: uid.to_string(),
                    finalizer: FINALIZER_FOREGROUND,
                });
            }
            // Dependents are deleted when each is reconciled (their owner is waiting for them).
        }
        return out;
    }
    if it.owners.is_empty() {
        return out;
    }
    let ns = it.ns.as_deref();
    let states: Vec<(OwnerState, &OwnerRef)> = it
        .owners
        .iter()
        .map(|o| (g.owner_state(ns, o), o))
        .collect();
    let solid = states
        .iter()
        .any(|(s, _)| matches!(s, OwnerState::Present | OwnerState::Unknown));
    let absent: Vec<OwnerRef> = states
        .iter()
        .filter(|(s, _)| *s == OwnerState::Absent)
        .map(|(_, o)| (*o).clone())
        .collect();
    let waiting = states
        .iter()
        .any(|(s, _)| *s == OwnerState::WaitingForDependents);
    if solid {
        if !absent.is_empty() {
            out.push(GcAction::RemoveOwnerRefs {
                uid: uid.to_string(),
                owners: absent.iter().map(|o| o.uid.clone()).collect(),
            });
        }
    } else if waiting || !absent.is_empty() {
        // An owner waiting for its dependents makes this one go in the foreground too when it
        // has dependents of its own, so the wait covers the whole tree (upstream does so).
        let propagation = if waiting && !g.dependents_of(uid).is_empty() {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        out.push(GcAction::Delete {
            uid: uid.to_string(),
            propagation,
            absent,
        });
    }
    out
}

/// Whether an owner reference's target exists in the store with that uid (the runner's
/// check before acting on the graph's belief that it is gone).
fn owner_exists(reg: &Registry, dep: &Item, o: &OwnerRef) -> bool {
    let Some(res) = resource_of(&o.api_version, &o.kind) else {
        return true;
    };
    reg.store()
        .get(&res.key(dep.ns.as_deref(), &o.name))
        .and_then(|s| s.value().ok())
        .is_some_and(|v| v.pointer("/metadata/uid").and_then(|u| u.as_str()) == Some(&o.uid))
}

/// Removes the entries `drop` picks from a list in the object's metadata, over the stored
/// object's revision (a concurrent write wins; its event brings the object back here). An
/// emptied list is removed, as Go omits empty lists on the wire.
async fn drop_from_list(
    reg: &Registry,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    field: &str,
    drop: impl Fn(&Value) -> bool,
) -> Result<(), crate::status::ApiError> {
    let current = reg.get_value(res, ns, name)?;
    let keep: Vec<Value> = current["metadata"][field]
        .as_array()
        .map(|xs| xs.iter().filter(|x| !drop(x)).cloned().collect())
        .unwrap_or_default();
    let keep = if keep.is_empty() {
        Value::Null
    } else {
        json!(keep)
    };
    let rv = current["metadata"]["resourceVersion"].clone();
    let patch = json!({"metadata": {field: keep, "resourceVersion": rv}});
    reg.patch(res, ns, name, PatchType::Merge, patch, Part::Main)
        .await
        .map(|_| ())
}

/// Carries out one action through the registry.
async fn apply(reg: &Registry, g: &Mutex<Graph>, a: GcAction) -> Result<(), String> {
    let uid = match &a {
        GcAction::Delete { uid, .. }
        | GcAction::RemoveOwnerRefs { uid, .. }
        | GcAction::RemoveFinalizer { uid, .. } => uid.clone(),
    };
    let Some(it) = g
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .cloned()
    else {
        return Ok(());
    };
    let (res, ns, name) = (it.res, it.ns.as_deref(), it.name.as_str());
    let result = match a {
        GcAction::Delete {
            propagation,
            absent,
            ..
        } => {
            if absent.iter().any(|o| owner_exists(reg, &it, o)) {
                // The graph is behind the store; the owner's event will come.
                return Ok(());
            }
            tracing::info!(
                kind = res.kind,
                ?ns,
                name,
                "deleting object whose owners are gone"
            );
            let opts = DeleteOptions {
                propagation: Some(propagation),
                precondition_uid: Some(uid.clone()),
                ..Default::default()
            };
            reg.delete(res, ns, name, &opts).await.map(|_| ())
        }
        GcAction::RemoveOwnerRefs { owners, .. } => {
            drop_from_list(reg, res, ns, name, "ownerReferences", |o| {
                owners
                    .iter()
                    .any(|u| o.get("uid").and_then(|x| x.as_str()) == Some(u))
            })
            .await
        }
        GcAction::RemoveFinalizer { finalizer, .. } => {
            drop_from_list(reg, res, ns, name, "finalizers", |f| {
                f.as_str() == Some(finalizer)
            })
            .await
        }
    };
    match result {
        Ok(()) => Ok(()),
        // Gone already, or replaced by a new object of the same name.
        Err(e) if e.code == 404 || (e.code == 409 && e.reason == "Conflict") => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the collector.
pub async fn run(reg: Arc<Registry>) {
    let graph = Arc::new(Mutex::new(Graph::default()));
    let (for_events, for_resync, for_reconcile) = (graph.clone(), graph.clone(), graph);
    super::run_dirty_loop(
        reg,
        "garbagecollector",
        move |_reg, ev| {
            let Some(res) = RESOURCES
                .iter()
                .find(|r| ev.object.key.starts_with(&r.prefix()))
            else {
                return Vec::new();
            };
            let Some((uid, item)) = item_of(res, &ev.object) else {
                return Vec::new();
            };
            let mut g = for_events.lock().unwrap_or_else(|e| e.into_inner());
            let mut dirty: Vec<String> = item.owners.iter().map(|o| o.uid.clone()).collect();
            if let Some(prev) = g.get(&uid) {
                dirty.extend(prev.owners.iter().map(|o| o.uid.clone()));
            }
            if ev.event_type == EventType::Deleted {
                g.remove(&uid);
                dirty.extend(g.dependents_of(&uid));
            } else {
                // An owner just marked deleted: its dependents have something to do.
                if item.deleting {
                    dirty.extend(g.dependents_of(&uid));
                }
                g.upsert(&uid, item);
                dirty.push(uid);
            }
            dirty
        },
        move |reg| {
            let mut g = for_resync.lock().unwrap_or_else(|e| e.into_inner());
            *g = Graph::default();
            for res in RESOURCES {
                for s in reg.store().list(&res.prefix()).0 {
                    if let Some((uid, item)) = item_of(res, &s) {
                        g.upsert(&uid, item);
                    }
                }
            }
            g.uids()
        },
        move |reg, uid: String| {
            let graph = for_reconcile.clone();
            async move {
                let actions = decide(&graph.lock().unwrap_or_else(|e| e.into_inner()), &uid);
                for a in actions {
                    apply(&reg, &graph, a).await?;
                }
                Ok(())
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests;
