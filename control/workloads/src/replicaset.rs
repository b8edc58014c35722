//! The ReplicaSet controller: keep `spec.replicas` active pods matching the selector.
//!
//! One reconcile (upstream `syncReplicaSet`):
//! 1. claim pods: adopt matching orphans, release owned pods that stopped matching
//!    (only active pods are considered, as upstream filters before claiming);
//! 2. unless the ReplicaSet is being deleted, create or delete pods (at most
//!    [`BURST_REPLICAS`] per reconcile), choosing victims in upstream's order;
//! 3. write the status computed from the claimed pods (before this round's
//!    creates/deletes, which the next reconcile observes).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use crate::action::{Action, Event, EventTemplate, EventType, ObjectRef, Plan};
use crate::util::{self, Claim, Selector};
use crate::Error;

/// Upstream's `BurstReplicas`: the most pods created or deleted in one reconcile.
pub const BURST_REPLICAS: usize = 500;

/// Annotation lowering (negative) or raising a pod's priority as a scale-down victim.
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The plan of one ReplicaSet reconcile.
pub type RsPlan = Plan;

/// Reconciles one ReplicaSet against the pods of its namespace at time `now`.
///
/// Pods in other namespaces are ignored. The returned plan is empty when the
/// ReplicaSet already has the right pods and an up-to-date status.
pub fn reconcile(
    rs: &ReplicaSet,
    pods_in_namespace: &[Pod],
    now: Timestamp,
) -> Result<RsPlan, Error> {
    let meta = &rs.metadata;
    let (name, ns, uid) = util::identity("ReplicaSet", meta)?;
    let spec = rs.spec.as_ref().ok_or_else(|| Error::MissingField {
        kind: "ReplicaSet",
        name: name.to_string(),
        field: "spec",
    })?;
    let selector = Selector::new(Some(&spec.selector))?;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let me = ObjectRef::from_meta("apps/v1", "ReplicaSet", meta);
    let mut plan = Plan::default();

    // 1. Claim.
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in pods_in_namespace {
        if pod.metadata.namespace.as_deref() != Some(ns) || !util::is_pod_active(pod) {
            continue;
        }
        let matches = selector.matches(pod.metadata.labels.as_ref());
        match util::claim(meta, "ReplicaSet", uid, &pod.metadata, matches) {
            Claim::Owned => owned.push(pod),
            Claim::Adopt(refs) => {
                plan.actions.push(patch_refs(&pod.metadata, refs));
                owned.push(pod);
            }
            Claim::Release(refs) => plan.actions.push(patch_refs(&pod.metadata, refs)),
            Claim::Ignore => {}
        }
    }

    // 2. Manage replicas (not while the ReplicaSet itself is going away).
    if meta.deletion_timestamp.is_none() {
        let have = owned.len();
        let want = usize::try_from(replicas).unwrap_or(0);
        if have < want {
            let template = spec.template.as_ref().ok_or_else(|| Error::MissingField {
                kind: "ReplicaSet",
                name: name.to_string(),
                field: "spec.template",
            })?;
            let t_meta = template.metadata.clone().unwrap_or_default();
            let pod_spec = template.spec.clone().ok_or_else(|| Error::MissingField {
                kind: "ReplicaSet",
                name: name.to_string(),
                field: "spec.template.spec",
            })?;
            for _ in 0..(want - have).min(BURST_REPLICAS) {
                let pod = Pod {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(ns.to_string()),
                        labels: t_meta.labels.clone(),
                        annotations: t_meta.annotations.clone(),
                        finalizers: t_meta.finalizers.clone(),
                        owner_references: Some(vec![util::new_controller_ref(
                            "ReplicaSet",
                            name,
                            uid,
                        )]),
                        ..Default::default()
                    },
                    spec: Some(pod_spec.clone()),
                    status: None,
                };
                plan.actions.push(Action::CreatePod {
                    pod,
                    on_success: EventTemplate {
                        regarding: me.clone(),
                        event_type: EventType::Normal,
                        reason: "SuccessfulCreate".into(),
                        message_prefix: "Created pod: ".into(),
                    },
                });
            }
        } else if have > want {
            let victims = pods_to_delete(&owned, (have - want).min(BURST_REPLICAS), now);
            let mut events = Vec::new();
            for p in victims {
                let pname = p.metadata.name.clone().unwrap_or_default();
                plan.actions.push(Action::DeletePod {
                    namespace: ns.to_string(),
                    name: pname.clone(),
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                });
                events.push(Action::Event(Event {
                    regarding: me.clone(),
                    event_type: EventType::Normal,
                    reason: "SuccessfulDelete".into(),
                    message: format!("Deleted pod: {pname}"),
                }));
            }
            plan.actions.extend(events);
        }
    }

    // 3. Status.
    let status = calculate_status(rs, &owned, min_ready, now);
    let current = normalize(rs.status.clone().unwrap_or_default());
    if status != current {
        let mut updated = rs.clone();
        updated.status = Some(status);
        plan.actions.push(Action::UpdateReplicaSetStatus(updated));
    }

    // Pods that are ready but not yet available flip without any object changing.
    plan.requeue_after = owned
        .iter()
        .filter_map(|p| util::becomes_available_in(p, min_ready, now))
        .min();
    Ok(plan)
}

fn patch_refs(
    meta: &ObjectMeta,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Action {
    Action::PatchOwnerRefs {
        target: ObjectRef::from_meta("v1", "Pod", meta),
        owner_references: refs,
    }
}

/// Zero counters are omitted on the wire (`omitempty`); compare in that form so a
/// stored `0` and an absent field are the same status.
fn normalize(mut s: ReplicaSetStatus) -> ReplicaSetStatus {
    let z = |o: &mut Option<i32>| {
        if *o == Some(0) {
            *o = None
        }
    };
    z(&mut s.fully_labeled_replicas);
    z(&mut s.ready_replicas);
    z(&mut s.available_replicas);
    z(&mut s.terminating_replicas);
    if s.observed_generation == Some(0) {
        s.observed_generation = None;
    }
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

fn nonzero(n: usize) -> Option<i32> {
    (n != 0).then(|| i32::try_from(n).unwrap_or(i32::MAX))
}

/// Upstream `calculateStatus` over the claimed active pods. Conditions are kept as
/// they are: the ReplicaFailure condition reports create/delete errors, which only
/// the runner sees.
fn calculate_status(
    rs: &ReplicaSet,
    pods: &[&Pod],
    min_ready: i32,
    now: Timestamp,
) -> ReplicaSetStatus {
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully = pods
        .iter()
        .filter(|p| {
            let l = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| l.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = pods.iter().filter(|p| util::is_pod_ready(p)).count();
    let available = pods
        .iter()
        .filter(|p| util::is_pod_available(p, min_ready, now))
        .count();
    let mut s = normalize(rs.status.clone().unwrap_or_default());
    s.replicas = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    s.fully_labeled_replicas = nonzero(fully);
    s.ready_replicas = nonzero(ready);
    s.available_replicas = nonzero(available);
    s.observed_generation = rs.metadata.generation.filter(|g| *g != 0);
    // terminatingReplicas is behind the DeploymentReplicaSetTerminatingReplicas gate
    // upstream; we do not report it.
    s.terminating_replicas = None;
    s
}

/// `getPodsToDelete`: the first `n` pods in upstream's `ActivePodsWithRanks`
/// order. The rank is the number of this ReplicaSet's active pods on the same node
/// (upstream counts the pods of all ReplicaSets with the same controller; we only
/// see our own).
pub fn pods_to_delete<'a>(pods: &[&'a Pod], n: usize, now: Timestamp) -> Vec<&'a Pod> {
    if n >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pods {
        *on_node.entry(node(p)).or_default() += 1;
    }
    let mut ranked: Vec<(&Pod, usize)> = pods.iter().map(|p| (*p, on_node[node(p)])).collect();
    ranked.sort_by(|a, b| compare_victims(a, b, now));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

fn node(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn phase_ordinal(p: &Pod) -> u8 {
    match util::phase(p) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (max regular container restarts, max restartable-init "sidecar" restarts).
fn restarts(p: &Pod) -> (i32, i32) {
    let Some(st) = p.status.as_ref() else {
        return (0, 0);
    };
    let regular = st
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: Vec<&str> = p
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = st
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

/// Go's `afterOrZero` as an ordering: zero times first, then later before earlier.
fn newer_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    now: Timestamp,
    uids: (&str, &str),
) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(x), Some(y)) if x == y => Ordering::Equal,
        (Some(x), Some(y)) => {
            // LogarithmicScaleDown (GA): times in the same power-of-two age bucket tie,
            // then the uid decides, so victims are spread rather than always the newest.
            let bucket = |t: Timestamp| {
                let d = now.duration_since(t).as_nanos();
                if d > 0 {
                    (d as f64).log2() as i64
                } else {
                    -1
                }
            };
            match bucket(x).cmp(&bucket(y)) {
                Ordering::Equal => uids.0.cmp(uids.1),
                o => o,
            }
        }
    }
}

/// `ActivePodsWithRanks.Less`: smaller sorts first, i.e. is deleted first.
fn compare_victims(a: &(&Pod, usize), b: &(&Pod, usize), now: Timestamp) -> Ordering {
    let (pa, ra) = (a.0, a.1);
    let (pb, rb) = (b.0, b.1);
    let uids = (
        pa.metadata.uid.as_deref().unwrap_or_default(),
        pb.metadata.uid.as_deref().unwrap_or_default(),
    );
    // 1. Unassigned < assigned.
    let (na, nb) = (node(pa), node(pb));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 2. Pending < Unknown < Running.
    let o = phase_ordinal(pa).cmp(&phase_ordinal(pb));
    if o != Ordering::Equal {
        return o;
    }
    // 3. Not ready < ready.
    let (ya, yb) = (util::ready_since(pa), util::ready_since(pb));
    if ya.is_some() != yb.is_some() {
        return if ya.is_none() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 4. Lower deletion cost < higher.
    let o = deletion_cost(pa).cmp(&deletion_cost(pb));
    if o != Ordering::Equal {
        return o;
    }
    // 5. Doubled up (more co-located pods) < not doubled up.
    if ra != rb {
        return rb.cmp(&ra);
    }
    // 6. Ready for less time < more time.
    if let (Some(ta), Some(tb)) = (ya, yb) {
        let o = newer_first(ta, tb, now, uids);
        if o != Ordering::Equal {
            return o;
        }
    }
    // 7. More restarts < fewer (regular containers, then sidecars).
    let o = restarts(pb).cmp(&restarts(pa));
    if o != Ordering::Equal {
        return o;
    }
    // 8. Newer (or unset) creation time < older.
    newer_first(
        pa.metadata.creation_timestamp.as_ref().map(|t| t.0),
        pb.metadata.creation_timestamp.as_ref().map(|t| t.0),
        now,
        uids,
    )
}
