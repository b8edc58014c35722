//! ReplicaSet controller on synthetic input.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_workloads::replicaset::{pods_to_delete, reconcile};
use sluice_workloads::{Action, EventType};

fn owned_by(rs_name: &str) -> Vec<OwnerReference> {
    vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs_name.into(),
        uid: format!("uid-rs-{rs_name}"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]
}

fn pod(name: &str, app: &str, owner: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(labels(&[("app", app)])),
            owner_references: owner.map(owned_by),
            creation_timestamp: Some(Time(t0())),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

fn running(mut p: Pod, node: &str, ready_since: Option<Timestamp>) -> Pod {
    p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
    let st = p.status.get_or_insert_with(Default::default);
    st.phase = Some("Running".into());
    if let Some(t) = ready_since {
        st.conditions = Some(vec![ready_condition(t)]);
    }
    p
}

fn count(plan: &sluice_workloads::Plan, f: fn(&Action) -> bool) -> usize {
    plan.actions.iter().filter(|a| f(a)).count()
}

#[test]
fn creates_missing_pods_from_the_template() {
    let rs = new_replicaset("web-abc", 3, "web");
    let plan = reconcile(&rs, &[], t0()).expect("reconcile");
    let creates: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreatePod { pod, on_success } => Some((pod, on_success)),
            _ => None,
        })
        .collect();
    assert_eq!(creates.len(), 3);
    let (p, ev) = creates[0];
    assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
    assert_eq!(p.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(p.metadata.labels, Some(labels(&[("app", "web")])));
    let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("ReplicaSet", "uid-rs-web-abc")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(ev.render("web-abc-x1").message, "Created pod: web-abc-x1");
    assert_eq!(ev.reason, "SuccessfulCreate");
    // Status before the creates land: 0 replicas, generation observed.
    let st = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::UpdateReplicaSetStatus(rs) => rs.status.clone(),
            _ => None,
        })
        .expect("status update");
    assert_eq!((st.replicas, st.observed_generation), (0, Some(1)));

    // Through the simulator: 3 ready pods, status all 3, then nothing more to do.
    let mut w = World::new();
    w.rss.push(rs);
    w.converge(20, |_| {});
    assert_eq!(w.pods.len(), 3);
    let st = w.rss[0].status.clone().expect("status");
    assert_eq!(
        (
            st.replicas,
            st.fully_labeled_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (3, Some(3), Some(3), Some(3))
    );
    let again = reconcile(&w.rss[0], &w.pods, w.now).expect("reconcile");
    assert!(again.is_empty(), "not idempotent: {:?}", again.actions);
}

#[test]
fn deletes_excess_pods_with_events() {
    let rs = new_replicaset("web-abc", 2, "web");
    let pods: Vec<Pod> = (0..5)
        .map(|i| {
            running(
                pod(&format!("p{i}"), "web", Some("web-abc")),
                "n1",
                Some(t0()),
            )
        })
        .collect();
    let plan = reconcile(&rs, &pods, t0() + SignedDuration::from_secs(60)).expect("reconcile");
    assert_eq!(count(&plan, |a| matches!(a, Action::DeletePod { .. })), 3);
    let msgs: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some((e.reason.clone(), e.message.clone(), e.event_type)),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 3);
    assert!(msgs.iter().all(|(r, m, t)| r == "SuccessfulDelete"
        && m.starts_with("Deleted pod: p")
        && *t == EventType::Normal));
}

#[test]
fn terminal_and_deleting_pods_do_not_count() {
    let rs = new_replicaset("web-abc", 2, "web");
    let mut failed = running(pod("failed", "web", Some("web-abc")), "n1", None);
    failed.status.as_mut().expect("status").phase = Some("Failed".into());
    let mut going = running(pod("going", "web", Some("web-abc")), "n1", Some(t0()));
    going.metadata.deletion_timestamp = Some(Time(t0()));
    let ok = running(pod("ok", "web", Some("web-abc")), "n1", Some(t0()));
    let plan = reconcile(&rs, &[failed, going, ok], t0()).expect("reconcile");
    assert_eq!(count(&plan, |a| matches!(a, Action::CreatePod { .. })), 1);
}

#[test]
fn victims_follow_upstream_ranking() {
    let now = t0() + SignedDuration::from_secs(100_000);
    let old = t0();
    let recent = now - SignedDuration::from_secs(10);
    let unassigned = pod("unassigned", "web", Some("rs"));
    let pending = {
        let mut p = pod("pending", "web", Some("rs"));
        p.spec.get_or_insert_with(Default::default).node_name = Some("n1".into());
        p
    };
    let not_ready = running(pod("not-ready", "web", Some("rs")), "n2", None);
    let ready_recent = running(pod("ready-recent", "web", Some("rs")), "n3", Some(recent));
    let ready_old = running(pod("ready-old", "web", Some("rs")), "n4", Some(old));
    let mut restarts = running(pod("restarts", "web", Some("rs")), "n5", Some(old));
    restarts.status.as_mut().expect("status").container_statuses = Some(vec![ContainerStatus {
        name: "c".into(),
        restart_count: 7,
        ..Default::default()
    }]);
    let all = [
        &ready_old,
        &restarts,
        &ready_recent,
        &not_ready,
        &pending,
        &unassigned,
    ];
    let order: Vec<_> = pods_to_delete(&all, 5, now)
        .into_iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        [
            "unassigned",
            "pending",
            "not-ready",
            "ready-recent",
            "restarts"
        ],
        "ranking: unassigned < pending < not ready < recently ready < more restarts"
    );

    // Doubled-up pods (more siblings on the node) go before lone ones.
    let a = running(pod("alone", "web", Some("rs")), "n1", Some(old));
    let b = running(pod("pair-1", "web", Some("rs")), "n2", Some(old));
    let c = running(pod("pair-2", "web", Some("rs")), "n2", Some(old));
    let v = pods_to_delete(&[&a, &b, &c], 1, now);
    assert!(v[0]
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("pair")));

    // Deletion cost beats everything after readiness.
    let mut cheap = running(pod("cheap", "web", Some("rs")), "n1", Some(old));
    cheap.metadata.annotations = Some(labels(&[(
        "controller.kubernetes.io/pod-deletion-cost",
        "-5",
    )]));
    let v = pods_to_delete(&[&ready_recent, &cheap], 1, now);
    assert_eq!(v[0].metadata.name.as_deref(), Some("cheap"));
}

#[test]
fn adopts_orphans_and_releases_mismatches() {
    let rs = new_replicaset("web-abc", 2, "web");
    let orphan = running(pod("orphan", "web", None), "n1", Some(t0()));
    let mut strayed = running(pod("strayed", "other", Some("web-abc")), "n1", Some(t0()));
    strayed
        .metadata
        .owner_references
        .as_mut()
        .expect("refs")
        .push(OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "keep-me".into(),
            uid: "uid-cm".into(),
            controller: None,
            block_owner_deletion: None,
        });
    let foreign = running(
        pod("foreign", "web", Some("someone-else")),
        "n1",
        Some(t0()),
    );
    let mut dying_orphan = running(pod("dying", "web", None), "n1", Some(t0()));
    dying_orphan.metadata.deletion_timestamp = Some(Time(t0()));
    let mine = running(pod("mine", "web", Some("web-abc")), "n1", Some(t0()));
    let pods = [orphan, strayed, foreign, dying_orphan, mine];
    let plan = reconcile(&rs, &pods, t0()).expect("reconcile");
    let patches: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::PatchOwnerRefs {
                target,
                owner_references,
            } => Some((target.name.clone(), owner_references.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert_eq!(patches[0].0, "orphan");
    assert_eq!(patches[0].1, owned_by("web-abc"));
    assert_eq!(patches[1].0, "strayed");
    assert_eq!(patches[1].1.len(), 1);
    assert_eq!(patches[1].1[0].name, "keep-me");
    // orphan + mine = 2 = replicas: nothing to create or delete.
    assert_eq!(
        count(&plan, |a| matches!(
            a,
            Action::CreatePod { .. } | Action::DeletePod { .. }
        )),
        0
    );

    // A ReplicaSet being deleted adopts nothing and creates nothing.
    let mut dying = new_replicaset("web-abc", 5, "web");
    dying.metadata.deletion_timestamp = Some(Time(t0()));
    let plan = reconcile(&dying, &pods, t0()).expect("reconcile");
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::UpdateReplicaSetStatus(_))),
        "{:?}",
        plan.actions
    );
}

#[test]
fn min_ready_seconds_delays_availability_and_requeues() {
    let mut rs = new_replicaset("web-abc", 1, "web");
    rs.spec.as_mut().expect("spec").min_ready_seconds = Some(10);
    let since = t0();
    let p = running(pod("p", "web", Some("web-abc")), "n1", Some(since));
    let now = since + SignedDuration::from_secs(4);
    let plan = reconcile(&rs, std::slice::from_ref(&p), now).expect("reconcile");
    let st = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::UpdateReplicaSetStatus(rs) => rs.status.clone(),
            _ => None,
        })
        .expect("status");
    assert_eq!((st.ready_replicas, st.available_replicas), (Some(1), None));
    assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(7)));
    rs.status = Some(st);
    let later = since + SignedDuration::from_secs(11);
    let plan = reconcile(&rs, std::slice::from_ref(&p), later).expect("reconcile");
    let Some(Action::UpdateReplicaSetStatus(done)) = plan.actions.first() else {
        panic!("expected a status update, got {:?}", plan.actions)
    };
    assert_eq!(
        done.status.as_ref().and_then(|s| s.available_replicas),
        Some(1)
    );
    assert_eq!(plan.requeue_after, None);

    // Through the simulator as well.
    let mut w = World::new();
    w.rss.push(rs);
    w.rss[0].status = None;
    let steps = w.converge(60, |_| {});
    assert!(
        steps >= 10,
        "availability cannot come before minReadySeconds ({steps})"
    );
    assert_eq!(
        w.rss[0].status.as_ref().and_then(|s| s.available_replicas),
        Some(1)
    );
}

#[test]
fn invalid_input_is_an_error() {
    let mut rs = new_replicaset("web-abc", 1, "web");
    rs.metadata.uid = None;
    assert!(reconcile(&rs, &[], t0()).is_err());
    let mut rs = new_replicaset("web-abc", 1, "web");
    rs.spec.as_mut().expect("spec").template = None;
    assert!(reconcile(&rs, &[], t0()).is_err());
}
