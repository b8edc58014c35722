//! Deployment controller on synthetic input, mostly through the simulator.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStrategy, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use sluice_workloads::deployment::{
    reconcile, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
};
use sluice_workloads::{compute_hash, Action};

fn cond<'a>(d: &'a Deployment, t: &str) -> Option<&'a DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
}

fn owned_rss<'a>(w: &'a World, d: &Deployment) -> Vec<&'a ReplicaSet> {
    w.rss
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == d.metadata.uid.as_ref())
        })
        .collect()
}

fn new_rs<'a>(w: &'a World, name: &str) -> &'a ReplicaSet {
    let d = w.deployment(name);
    let hash = compute_hash(
        &d.spec.as_ref().expect("spec").template,
        d.status.as_ref().and_then(|s| s.collision_count),
    )
    .expect("hash");
    w.rs_named(&format!("{name}-{hash}"))
        .expect("new replica set")
}

/// What `kubectl rollout status` needs to call a rollout finished.
fn assert_rollout_complete(w: &World, name: &str) {
    let d = w.deployment(name);
    let spec = d.spec.as_ref().expect("spec");
    let st = d.status.as_ref().expect("status");
    let replicas = spec.replicas.unwrap_or(1);
    assert!(st.observed_generation >= d.metadata.generation, "{st:?}");
    assert_eq!(st.updated_replicas.unwrap_or(0), replicas, "{st:?}");
    assert_eq!(st.replicas.unwrap_or(0), replicas, "{st:?}");
    assert_eq!(st.available_replicas.unwrap_or(0), replicas, "{st:?}");
    assert_eq!(st.unavailable_replicas, None, "{st:?}");
    let p = cond(d, "Progressing").expect("Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("True", Some("NewReplicaSetAvailable"))
    );
    let rs_name = new_rs(w, name).metadata.name.clone().expect("name");
    assert_eq!(
        p.message.as_deref(),
        Some(format!("ReplicaSet \"{rs_name}\" has successfully progressed.").as_str())
    );
    let a = cond(d, "Available").expect("Available");
    assert_eq!(
        (a.status.as_str(), a.reason.as_deref()),
        ("True", Some("MinimumReplicasAvailable"))
    );
    assert_eq!(
        a.message.as_deref(),
        Some("Deployment has minimum availability.")
    );
    // And nothing more to do.
    let plan = reconcile(d, &w.rss, &w.pods, w.now).expect("reconcile");
    assert!(plan.is_empty(), "not idempotent: {:?}", plan.actions);
    assert_eq!(plan.requeue_after, None);
}

fn world_with(d: Deployment) -> World {
    let mut w = World::new();
    w.deployments.push(d);
    w
}

fn set_strategy(w: &mut World, name: &str, surge: &str, unavail: &str) {
    let d = w
        .deployments
        .iter_mut()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .expect("d");
    let ru = d
        .spec
        .as_mut()
        .expect("spec")
        .strategy
        .as_mut()
        .expect("strategy")
        .rolling_update
        .as_mut()
        .expect("ru");
    ru.max_surge = Some(ios(surge));
    ru.max_unavailable = Some(ios(unavail));
}

#[test]
fn create_makes_hashed_replica_set_with_revision_1() {
    let d = new_deployment("web", 3, "nginx:1");
    let plan = reconcile(&d, &[], &[], t0()).expect("reconcile");
    let rs = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::CreateReplicaSet(rs) => Some(rs.clone()),
            _ => None,
        })
        .expect("create");
    let hash = compute_hash(&d.spec.as_ref().expect("spec").template, None).expect("hash");
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    let hashed = labels(&[("app", "web"), ("pod-template-hash", &hash)]);
    assert_eq!(rs.metadata.labels.as_ref(), Some(&hashed));
    let spec = rs.spec.as_ref().expect("spec");
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&hashed));
    assert_eq!(
        spec.template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref()),
        Some(&hashed)
    );
    // maxSurge 25% of 3 rounds up to 1: the first step may go to 3 (no old pods).
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(annotation(&rs.metadata, REVISION_ANNOTATION), Some("1"));
    assert_eq!(
        annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION),
        Some("3")
    );
    assert_eq!(annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION), Some("4"));
    let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Deployment", "web", Some(true))
    );

    let updated = plan.actions.iter().find_map(|a| match a {
        Action::UpdateDeployment(d) => Some(d.clone()),
        _ => None,
    });
    assert_eq!(
        updated
            .as_ref()
            .and_then(|d| annotation(&d.metadata, REVISION_ANNOTATION)),
        Some("1")
    );
    let status = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::UpdateDeploymentStatus(d) => Some(d.clone()),
            _ => None,
        })
        .expect("status");
    let p = cond(&status, "Progressing").expect("progressing");
    assert_eq!(p.reason.as_deref(), Some("NewReplicaSetCreated"));
    assert_eq!(
        p.message.as_deref(),
        Some(format!("Created new replica set \"web-{hash}\"").as_str())
    );
    let events: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [format!("Scaled up replica set web-{hash} from 0 to 3")]
    );

    let mut w = world_with(d);
    w.converge(30, |_| {});
    assert_eq!(w.pods.len(), 3);
    assert_eq!(
        annotation(&w.deployment("web").metadata, REVISION_ANNOTATION),
        Some("1")
    );
    assert_rollout_complete(&w, "web");
}

/// Rolls "web" from nginx:1 to nginx:2 and checks the surge/unavailability bounds
/// at every step.
fn rolling_update(replicas: i32, surge: &str, unavail: &str, ready_after: u32) {
    let mut w = world_with(new_deployment("web", replicas, "nginx:1"));
    set_strategy(&mut w, "web", surge, unavail);
    w.ready_after = Some(ready_after);
    w.converge(100, |_| {});
    let first = new_rs(&w, "web").metadata.name.clone().expect("name");

    // Expected fenceposts, as upstream resolves them.
    let scaled = |s: &str, up: bool| -> i32 {
        match s.strip_suffix('%') {
            Some(p) => {
                let v = p.parse::<i32>().expect("pct") * replicas;
                if up {
                    (v + 99) / 100
                } else {
                    v / 100
                }
            }
            None => s.parse().expect("int"),
        }
    };
    let max_surge = scaled(surge, true);
    let mut max_unavail = scaled(unavail, false);
    if max_surge == 0 && max_unavail == 0 {
        max_unavail = 1;
    }
    let max_unavail = max_unavail.min(replicas);

    w.edit("web", |s| s.template = template("web", "nginx:2"));
    let ctx =
        format!("replicas={replicas} surge={surge} unavail={unavail} ready_after={ready_after}");
    w.converge(300, |w| {
        let total = w.pods.len() as i32;
        assert!(
            total <= replicas + max_surge,
            "{ctx}: {total} pods > {replicas}+{max_surge}"
        );
        let ready = w.ready_pods() as i32;
        assert!(
            ready >= replicas - max_unavail,
            "{ctx}: {ready} available < {replicas}-{max_unavail}"
        );
    });
    let old = w.rs_named(&first).expect("old rs kept in history");
    assert_eq!(spec_replicas(old), 0, "{ctx}");
    assert_eq!(w.pods_of(old).len(), 0, "{ctx}");
    let new = new_rs(&w, "web");
    assert_eq!(
        annotation(&new.metadata, REVISION_ANNOTATION),
        Some("2"),
        "{ctx}"
    );
    assert_eq!(
        annotation(&w.deployment("web").metadata, REVISION_ANNOTATION),
        Some("2")
    );
    assert_eq!(w.pods_of(new).len() as i32, replicas, "{ctx}");
    assert_rollout_complete(&w, "web");
    let scaling: Vec<_> = w
        .events
        .iter()
        .filter(|e| e.reason == "ScalingReplicaSet")
        .map(|e| e.message.clone())
        .collect();
    assert!(
        scaling
            .iter()
            .any(|m| m.starts_with(&format!("Scaled down replica set {first} from "))),
        "{scaling:?}"
    );
}

#[test]
fn rolling_update_respects_surge_and_unavailability() {
    for (replicas, surge, unavail) in [
        (3, "25%", "25%"),
        (4, "1", "0"),
        (4, "0", "1"),
        (5, "2", "2"),
        (10, "50%", "0%"),
        (10, "0%", "30%"),
        (3, "0", "0"),
        (1, "25%", "25%"),
    ] {
        rolling_update(replicas, surge, unavail, 2);
    }
}

#[test]
fn recreate_never_runs_old_and_new_together() {
    let mut d = new_deployment("db", 3, "pg:15");
    d.spec.as_mut().expect("spec").strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    let mut w = world_with(d);
    w.converge(30, |_| {});
    let first = new_rs(&w, "db").metadata.uid.clone();
    w.edit("db", |s| s.template = template("db", "pg:16"));
    let mut saw_zero = false;
    w.converge(60, |w| {
        let owners: std::collections::BTreeSet<_> = w
            .pods
            .iter()
            .filter_map(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .map(|o| o[0].uid.clone())
            })
            .collect();
        assert!(owners.len() <= 1, "old and new pods at once: {owners:?}");
        saw_zero |= w.pods.is_empty();
    });
    assert!(saw_zero);
    assert_ne!(new_rs(&w, "db").metadata.uid, first);
    assert_rollout_complete(&w, "db");
}

#[test]
fn rollback_reuses_the_old_replica_set_with_a_new_revision() {
    let mut w = world_with(new_deployment("web", 2, "nginx:1"));
    w.converge(30, |_| {});
    let v1 = new_rs(&w, "web").metadata.clone();
    w.edit("web", |s| s.template = template("web", "nginx:2"));
    w.converge(60, |_| {});
    // kubectl rollout undo: the old template (hash label dropped) goes back in.
    w.edit("web", |s| s.template = template("web", "nginx:1"));
    w.converge(60, |_| {});
    let back = new_rs(&w, "web");
    assert_eq!(back.metadata.uid, v1.uid, "same ReplicaSet as revision 1");
    assert_eq!(annotation(&back.metadata, REVISION_ANNOTATION), Some("3"));
    assert_eq!(
        annotation(&back.metadata, REVISION_HISTORY_ANNOTATION),
        Some("1")
    );
    assert_eq!(
        annotation(&w.deployment("web").metadata, REVISION_ANNOTATION),
        Some("3")
    );
    assert_eq!(owned_rss(&w, w.deployment("web")).len(), 2);
    assert_rollout_complete(&w, "web");
}

#[test]
fn revision_history_limit_deletes_oldest_revisions() {
    let mut d = new_deployment("web", 2, "nginx:0");
    d.spec.as_mut().expect("spec").revision_history_limit = Some(2);
    let mut w = world_with(d);
    w.converge(30, |_| {});
    for v in 1..=5 {
        w.edit("web", |s| {
            s.template = template("web", &format!("nginx:{v}"))
        });
        w.converge(60, |_| {});
    }
    let d = w.deployment("web").clone();
    let mut revs: Vec<i64> = owned_rss(&w, &d)
        .iter()
        .filter_map(|r| annotation(&r.metadata, REVISION_ANNOTATION)?.parse().ok())
        .collect();
    revs.sort();
    assert_eq!(revs, [4, 5, 6], "two old revisions plus the current one");
    assert_rollout_complete(&w, "web");

    // Limit 0 keeps no old ReplicaSets at all.
    w.edit("web", |s| s.revision_history_limit = Some(0));
    w.converge(10, |_| {});
    assert_eq!(owned_rss(&w, &d).len(), 1);
}

#[test]
fn paused_deployment_scales_but_does_not_roll_out() {
    let mut w = world_with(new_deployment("web", 3, "nginx:1"));
    w.converge(30, |_| {});
    let first = new_rs(&w, "web").metadata.name.clone().expect("name");
    w.edit("web", |s| {
        s.paused = Some(true);
        s.template = template("web", "nginx:2");
    });
    w.converge(30, |_| {});
    assert_eq!(w.rss.len(), 1, "no new ReplicaSet while paused");
    let p = cond(w.deployment("web"), "Progressing")
        .expect("progressing")
        .clone();
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("Unknown", Some("DeploymentPaused"))
    );
    assert_eq!(p.message.as_deref(), Some("Deployment is paused"));
    let st = w.deployment("web").status.clone().expect("status");
    assert_eq!(
        st.observed_generation,
        w.deployment("web").metadata.generation
    );
    // The old ReplicaSet is not the new one any more.
    assert_eq!(st.updated_replicas, None);

    w.edit("web", |s| s.replicas = Some(5));
    w.converge(30, |_| {});
    assert_eq!(spec_replicas(w.rs_named(&first).expect("rs")), 5);
    assert_eq!(w.pods.len(), 5);
    assert_eq!(w.rss.len(), 1);

    w.edit("web", |s| s.paused = Some(false));
    w.reconcile_deployments();
    let p = cond(w.deployment("web"), "Progressing")
        .expect("progressing")
        .clone();
    assert_ne!(p.reason.as_deref(), Some("DeploymentPaused"));
    assert!(w
        .events
        .iter()
        .any(|e| e.message.contains("Scaled up replica set web-")));
    w.converge(100, |_| {});
    assert_eq!(w.pods.len(), 5);
    assert_eq!(spec_replicas(w.rs_named(&first).expect("rs")), 0);
    assert_rollout_complete(&w, "web");
}

#[test]
fn resume_records_deployment_resumed_and_restarts_the_deadline() {
    let mut w = world_with(new_deployment("web", 2, "nginx:1"));
    w.converge(30, |_| {});
    // A stuck rollout: the new pods never become ready.
    w.ready_after = None;
    w.edit("web", |s| s.template = template("web", "nginx:2"));
    for _ in 0..5 {
        w.step();
        w.tick();
    }
    w.edit("web", |s| s.paused = Some(true));
    w.step();
    let p = cond(w.deployment("web"), "Progressing")
        .expect("progressing")
        .clone();
    assert_eq!(p.reason.as_deref(), Some("DeploymentPaused"));
    for _ in 0..700 {
        w.tick();
    }
    w.edit("web", |s| s.paused = Some(false));
    w.step();
    let p = cond(w.deployment("web"), "Progressing")
        .expect("progressing")
        .clone();
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref(), p.message.as_deref()),
        (
            "Unknown",
            Some("DeploymentResumed"),
            Some("Deployment is resumed")
        )
    );
    // Paused time does not count against progressDeadlineSeconds.
    assert_eq!(p.last_update_time.map(|t| t.0), Some(w.now));
    let d = w.deployment("web").clone();
    let plan = reconcile(&d, &w.rss, &w.pods, w.now).expect("reconcile");
    assert!(plan.is_empty(), "{:?}", plan.actions);
    assert_eq!(
        plan.requeue_after,
        Some(std::time::Duration::from_secs(601))
    );
    // Once pods get ready the rollout finishes.
    w.ready_after = Some(1);
    w.converge(60, |_| {});
    assert_rollout_complete(&w, "web");
}

#[test]
fn scaling_mid_rollout_is_proportional() {
    let mut w = world_with(new_deployment("web", 3, "nginx:1"));
    set_strategy(&mut w, "web", "1", "0");
    w.converge(30, |_| {});
    w.ready_after = Some(4);
    w.edit("web", |s| s.template = template("web", "nginx:2"));
    // A couple of steps into the rollout: both ReplicaSets active.
    for _ in 0..2 {
        w.step();
        w.tick();
    }
    let sizes = |w: &World| w.rss.iter().map(spec_replicas).collect::<Vec<_>>();
    assert_eq!(sizes(&w), [3, 1], "mid-rollout: old 3, new 1 (surge 1)");
    w.edit("web", |s| s.replicas = Some(5));
    w.step();
    // 5 + 1 surge = 6 allowed, 2 to add, largest first: old 3*6/4 = 4.5 rounds to 5
    // (+2), which uses up the addition; the new one keeps 1.
    assert_eq!(sizes(&w), [5, 1]);
    assert!(w
        .rss
        .iter()
        .all(|r| annotation(&r.metadata, DESIRED_REPLICAS_ANNOTATION) == Some("5")));
    w.converge(200, |w| assert!(w.pods.len() <= 6));
    assert_eq!(w.pods.len(), 5);
    assert_rollout_complete(&w, "web");
}

#[test]
fn progress_deadline_times_out() {
    let mut d = new_deployment("web", 2, "nginx:1");
    d.spec.as_mut().expect("spec").progress_deadline_seconds = Some(30);
    let mut w = world_with(d);
    w.ready_after = None; // pods never become ready
    let d0 = w.deployment("web").clone();
    let first = reconcile(&d0, &w.rss, &w.pods, w.now).expect("reconcile");
    assert_eq!(
        first.requeue_after,
        Some(std::time::Duration::from_secs(31))
    );
    for _ in 0..40 {
        w.step();
        w.tick();
    }
    w.step();
    let d = w.deployment("web");
    let p = cond(d, "Progressing").expect("progressing");
    let rs = new_rs(&w, "web").metadata.name.clone().expect("name");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    assert_eq!(
        p.message.as_deref(),
        Some(format!("ReplicaSet \"{rs}\" has timed out progressing.").as_str())
    );
    let a = cond(d, "Available").expect("available");
    assert_eq!(
        (a.status.as_str(), a.reason.as_deref()),
        ("False", Some("MinimumReplicasUnavailable"))
    );
    assert_eq!(
        a.message.as_deref(),
        Some("Deployment does not have minimum availability.")
    );
    let plan = reconcile(d, &w.rss, &w.pods, w.now).expect("reconcile");
    assert!(plan.is_empty() && plan.requeue_after.is_none(), "{plan:?}");
}

#[test]
fn adopts_orphan_replica_sets_and_releases_strays() {
    let d = new_deployment("web", 2, "nginx:1");
    let mut orphan = new_replicaset("web-orphan", 0, "web");
    orphan.spec.as_mut().expect("spec").template = Some(template("web", "nginx:0"));
    let mut stray = new_replicaset("stray", 0, "other");
    stray.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "web".into(),
        uid: "uid-deploy-web".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let plan = reconcile(&d, &[orphan, stray], &[], t0()).expect("reconcile");
    let patches: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::PatchOwnerRefs {
                target,
                owner_references,
            } => Some((target.name.clone(), owner_references.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        patches,
        [("web-orphan".to_string(), 1), ("stray".to_string(), 0)]
    );
    // The adopted ReplicaSet is old history (revision 0): the new one gets revision 1.
    let created = plan.actions.iter().find_map(|a| match a {
        Action::CreateReplicaSet(rs) => Some(rs.clone()),
        _ => None,
    });
    assert_eq!(
        created
            .as_ref()
            .and_then(|r| annotation(&r.metadata, REVISION_ANNOTATION)),
        Some("1")
    );
}

#[test]
fn hash_collision_bumps_collision_count() {
    let d = new_deployment("web", 1, "nginx:1");
    let hash = compute_hash(&d.spec.as_ref().expect("spec").template, None).expect("hash");
    // Someone else's ReplicaSet squats on our name.
    let mut squatter = new_replicaset(&format!("web-{hash}"), 0, "unrelated");
    squatter.spec.as_mut().expect("spec").template = Some(template("unrelated", "x"));
    let mut w = world_with(d);
    w.rss.push(squatter);
    let plan = reconcile(w.deployment("web"), &w.rss, &w.pods, w.now).expect("reconcile");
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateReplicaSet(_))));
    w.apply(&plan);
    assert_eq!(
        w.deployment("web")
            .status
            .as_ref()
            .and_then(|s| s.collision_count),
        Some(1)
    );
    w.converge(30, |_| {});
    let rs = new_rs(&w, "web");
    assert_ne!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_rollout_complete(&w, "web");
}

#[test]
fn annotations_are_copied_except_per_object_ones() {
    let mut d = new_deployment("web", 1, "nginx:1");
    d.metadata.annotations = Some(labels(&[
        ("kubernetes.io/change-cause", "kubectl set image"),
        ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ("team", "blue"),
    ]));
    let mut w = world_with(d);
    w.converge(30, |_| {});
    let rs = new_rs(&w, "web");
    assert_eq!(
        annotation(&rs.metadata, "kubernetes.io/change-cause"),
        Some("kubectl set image")
    );
    assert_eq!(annotation(&rs.metadata, "team"), Some("blue"));
    assert_eq!(
        annotation(
            &rs.metadata,
            "kubectl.kubernetes.io/last-applied-configuration"
        ),
        None
    );
    assert_rollout_complete(&w, "web");
}

#[test]
fn selecting_all_warns_once() {
    let mut d = new_deployment("web", 1, "nginx:1");
    d.spec.as_mut().expect("spec").selector = Default::default();
    let mut w = world_with(d);
    w.converge(5, |_| {});
    assert!(w.rss.is_empty());
    let warnings: Vec<_> = w
        .events
        .iter()
        .filter(|e| e.reason == "SelectingAll")
        .collect();
    assert_eq!(warnings.len(), 1);
}

#[test]
fn deleting_deployment_only_updates_status() {
    let mut w = world_with(new_deployment("web", 2, "nginx:1"));
    w.converge(30, |_| {});
    w.edit("web", |s| s.template = template("web", "nginx:2"));
    w.deployments[0].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(w.now));
    let plan = reconcile(w.deployment("web"), &w.rss, &w.pods, w.now).expect("reconcile");
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::UpdateDeploymentStatus(_))),
        "{:?}",
        plan.actions
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn amount() -> impl Strategy<Value = String> {
        prop_oneof![
            (0i32..4).prop_map(|n| n.to_string()),
            proptest::sample::select(vec![0, 10, 25, 33, 50, 100]).prop_map(|p| format!("{p}%")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn rolling_update_bounds_hold(replicas in 1i32..9, surge in amount(), unavail in amount(), ready_after in 1u32..4) {
            rolling_update(replicas, &surge, &unavail, ready_after);
        }
    }
}

/// A ReplicaSet of "web" as the controller would have left it at `replicas` for a
/// Deployment of `was` replicas (maxSurge 0), created `age` seconds before t0.
fn sized_rs(name: &str, image: &str, replicas: i32, was: i32, age: i64) -> ReplicaSet {
    let mut rs = new_replicaset(name, replicas, "web");
    rs.spec.as_mut().expect("spec").template = Some(template("web", image));
    rs.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "web".into(),
        uid: "uid-deploy-web".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    rs.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        t0() - k8s_openapi::jiff::SignedDuration::from_secs(age),
    ));
    rs.metadata.annotations = Some(labels(&[
        (DESIRED_REPLICAS_ANNOTATION, &was.to_string()),
        (MAX_REPLICAS_ANNOTATION, &was.to_string()),
    ]));
    rs
}

/// Upstream's TestScale proportional cases (maxSurge 0, maxUnavailable 0).
#[test]
fn proportional_scaling_matches_upstream_cases() {
    // (old deployment size, new size, [(rs, replicas)] newest first, expected)
    let cases: [(i32, i32, &[i32], &[i32]); 4] = [
        (5, 10, &[2, 3], &[4, 6]),
        (5, 3, &[2, 3], &[1, 2]),
        (9, 4, &[8, 1], &[4, 0]),
        (7, 10, &[2, 3, 2], &[3, 4, 3]),
    ];
    for (was, now, sizes, want) in cases {
        let mut d = new_deployment("web", now, "nginx:new");
        let ru = d
            .spec
            .as_mut()
            .expect("spec")
            .strategy
            .as_mut()
            .expect("s")
            .rolling_update
            .as_mut()
            .expect("ru");
        ru.max_surge = Some(ios("0"));
        ru.max_unavailable = Some(ios("0"));
        let rss: Vec<ReplicaSet> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let image = if i == 0 {
                    "nginx:new".to_string()
                } else {
                    format!("nginx:{i}")
                };
                sized_rs(&format!("web-v{i}"), &image, *n, was, i as i64 * 100)
            })
            .collect();
        let plan = reconcile(&d, &rss, &[], t0()).expect("reconcile");
        let mut got: Vec<i32> = sizes.to_vec();
        for a in &plan.actions {
            if let Action::UpdateReplicaSet(rs) = a {
                let i: usize = rs
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix("web-v"))
                    .and_then(|n| n.parse().ok())
                    .expect("name");
                got[i] = spec_replicas(rs);
                assert_eq!(
                    annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION),
                    Some(now.to_string().as_str())
                );
            }
        }
        assert_eq!(got, want, "{was} -> {now}");
    }
}

#[test]
fn replica_failure_is_mirrored_into_the_deployment() {
    use k8s_openapi::api::apps::v1::{ReplicaSetCondition, ReplicaSetStatus};
    let mut w = world_with(new_deployment("web", 1, "nginx:1"));
    w.converge(20, |_| {});
    let i = w
        .rss
        .iter()
        .position(|r| spec_replicas(r) == 1)
        .expect("rs");
    let st = w.rss[i]
        .status
        .get_or_insert_with(ReplicaSetStatus::default);
    st.conditions = Some(vec![ReplicaSetCondition {
        type_: "ReplicaFailure".into(),
        status: "True".into(),
        reason: Some("FailedCreate".into()),
        message: Some("pods \"x\" is forbidden: exceeded quota".into()),
        last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(w.now)),
    }]);
    w.reconcile_deployments();
    let c = cond(w.deployment("web"), "ReplicaFailure").expect("mirrored");
    assert_eq!(c.reason.as_deref(), Some("FailedCreate"));
}

#[test]
fn min_ready_seconds_is_passed_down_and_gates_availability() {
    let mut d = new_deployment("web", 2, "nginx:1");
    d.spec.as_mut().expect("spec").min_ready_seconds = Some(5);
    let mut w = world_with(d);
    let mut saw_ready_not_available = false;
    let steps = w.converge(60, |w| {
        let d = w.deployment("web");
        let st = d.status.clone().unwrap_or_default();
        saw_ready_not_available |=
            st.ready_replicas.unwrap_or(0) > st.available_replicas.unwrap_or(0);
    });
    assert!(saw_ready_not_available);
    assert!(steps >= 5, "{steps}");
    assert_eq!(
        new_rs(&w, "web")
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds),
        Some(5)
    );
    assert_rollout_complete(&w, "web");
    // Changing only minReadySeconds updates the ReplicaSet in place (same template).
    let before = new_rs(&w, "web").metadata.uid.clone();
    w.edit("web", |s| s.min_ready_seconds = Some(1));
    w.converge(20, |_| {});
    assert_eq!(new_rs(&w, "web").metadata.uid, before);
    assert_eq!(
        new_rs(&w, "web")
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds),
        Some(1)
    );
}
