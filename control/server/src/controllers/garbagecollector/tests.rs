use serde_json::json;
use sluice_store::{RedbStore, Store, StoreOptions};

use super::*;
use crate::controllers::testing::until;
use crate::registry::RegistryConfig;
use crate::resources::by_kind;

fn owner_ref(kind: &str, name: &str, uid: &str, block: bool) -> OwnerRef {
    OwnerRef {
        api_version: by_kind(kind).api_version(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        block_owner_deletion: block.then_some(true),
    }
}

fn item(kind: &str, name: &str, owners: Vec<OwnerRef>) -> Item {
    Item {
        res: by_kind(kind),
        ns: Some("default".into()),
        name: name.into(),
        owners,
        deleting: false,
        finalizers: Vec::new(),
    }
}

fn deleting(mut it: Item, finalizer: &str) -> Item {
    it.deleting = true;
    it.finalizers = vec![finalizer.to_string()];
    it
}

#[test]
fn dependents_of_a_gone_owner_are_deleted_in_the_background() {
    let mut g = Graph::default();
    let owner = owner_ref("Service", "web", "u-svc", true);
    g.upsert("u-p1", item("Pod", "p1", vec![owner.clone()]));
    assert_eq!(
        decide(&g, "u-p1"),
        vec![GcAction::Delete {
            uid: "u-p1".into(),
            propagation: Propagation::Background,
            absent: vec![owner.clone()],
        }]
    );
    g.upsert("u-svc", item("Service", "web", vec![]));
    assert!(decide(&g, "u-p1").is_empty(), "owner present");
}

#[test]
fn an_owner_is_matched_by_uid_kind_name_and_namespace() {
    let mut g = Graph::default();
    g.upsert("u-svc", item("Service", "web", vec![]));
    for wrong in [
        owner_ref("Service", "other", "u-svc", false),
        owner_ref("Pod", "web", "u-svc", false),
    ] {
        g.upsert("u-p", item("Pod", "p", vec![wrong]));
        assert!(matches!(decide(&g, "u-p")[..], [GcAction::Delete { .. }]));
    }
    let mut elsewhere = item(
        "Pod",
        "p",
        vec![owner_ref("Service", "web", "u-svc", false)],
    );
    elsewhere.ns = Some("other".into());
    g.upsert("u-p", elsewhere);
    assert!(
        matches!(decide(&g, "u-p")[..], [GcAction::Delete { .. }]),
        "a namespaced owner is looked for in the dependent's namespace"
    );
}

#[test]
fn owners_of_kinds_not_served_are_left_alone() {
    let mut g = Graph::default();
    let foreign = OwnerRef {
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        name: "w".into(),
        uid: "u-w".into(),
        block_owner_deletion: None,
    };
    g.upsert("u-p", item("Pod", "p", vec![foreign]));
    assert!(decide(&g, "u-p").is_empty());
}

#[test]
fn only_the_absent_owners_are_dropped_while_another_remains() {
    let mut g = Graph::default();
    g.upsert("u-a", item("Service", "a", vec![]));
    g.upsert(
        "u-p",
        item(
            "Pod",
            "p",
            vec![
                owner_ref("Service", "a", "u-a", false),
                owner_ref("Service", "b", "u-b", false),
            ],
        ),
    );
    assert_eq!(
        decide(&g, "u-p"),
        vec![GcAction::RemoveOwnerRefs {
            uid: "u-p".into(),
            owners: vec!["u-b".into()],
        }]
    );
}

#[test]
fn orphan_releases_every_dependent_then_the_finalizer() {
    let mut g = Graph::default();
    g.upsert(
        "u-svc",
        deleting(item("Service", "web", vec![]), FINALIZER_ORPHAN),
    );
    let r = owner_ref("Service", "web", "u-svc", true);
    g.upsert("u-p1", item("Pod", "p1", vec![r.clone()]));
    g.upsert("u-p2", item("Pod", "p2", vec![r]));
    assert_eq!(
        decide(&g, "u-svc"),
        vec![
            GcAction::RemoveOwnerRefs {
                uid: "u-p1".into(),
                owners: vec!["u-svc".into()]
            },
            GcAction::RemoveOwnerRefs {
                uid: "u-p2".into(),
                owners: vec!["u-svc".into()]
            },
        ]
    );
    assert!(
        decide(&g, "u-p1").is_empty(),
        "an orphaning owner is present to its dependents"
    );
    g.upsert("u-p1", item("Pod", "p1", vec![]));
    g.upsert("u-p2", item("Pod", "p2", vec![]));
    assert_eq!(
        decide(&g, "u-svc"),
        vec![GcAction::RemoveFinalizer {
            uid: "u-svc".into(),
            finalizer: FINALIZER_ORPHAN
        }]
    );
}

#[test]
fn foreground_waits_for_blocking_dependents_and_propagates_down_the_tree() {
    let mut g = Graph::default();
    g.upsert(
        "u-d",
        deleting(item("Deployment", "web", vec![]), FINALIZER_FOREGROUND),
    );
    g.upsert(
        "u-rs",
        item(
            "Service",
            "rs",
            vec![owner_ref("Deployment", "web", "u-d", true)],
        ),
    );
    g.upsert(
        "u-p",
        item("Pod", "p", vec![owner_ref("Service", "rs", "u-rs", true)]),
    );
    assert!(decide(&g, "u-d").is_empty(), "a blocking dependent remains");
    assert_eq!(
        decide(&g, "u-rs"),
        vec![GcAction::Delete {
            uid: "u-rs".into(),
            propagation: Propagation::Foreground,
            absent: vec![],
        }],
        "a middle object with dependents of its own goes in the foreground"
    );
    assert!(decide(&g, "u-p").is_empty(), "its own owner is still there");
    // A dependent that does not block does not hold the owner.
    g.upsert(
        "u-rs",
        item(
            "Service",
            "rs",
            vec![owner_ref("Deployment", "web", "u-d", false)],
        ),
    );
    assert_eq!(
        decide(&g, "u-d"),
        vec![GcAction::RemoveFinalizer {
            uid: "u-d".into(),
            finalizer: FINALIZER_FOREGROUND
        }]
    );
}

// ---- against a registry and the running collector ----------------------------------------

fn registry(store: Arc<dyn Store>) -> Arc<Registry> {
    Arc::new(Registry::new(store, RegistryConfig::default()))
}

async fn owner_and_pods(reg: &Registry, n: usize) -> String {
    let svc = reg
        .create(
            by_kind("Service"),
            Some("default"),
            json!({"metadata": {"name": "owner"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .await
        .unwrap();
    let uid = svc.value().unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..n {
        reg.create(
            by_kind("Pod"),
            Some("default"),
            json!({
                "metadata": {"name": format!("p{i}"), "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Service", "name": "owner", "uid": uid,
                    "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }),
        )
        .await
        .unwrap();
    }
    uid
}

fn pods(reg: &Registry) -> Vec<Value> {
    reg.store()
        .list(&by_kind("Pod").prefix())
        .0
        .iter()
        .map(|s| s.value().unwrap())
        .collect()
}

async fn delete_owner(reg: &Registry, p: Propagation) {
    reg.delete(
        by_kind("Service"),
        Some("default"),
        "owner",
        &DeleteOptions {
            propagation: Some(p),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn background_orphan_and_foreground_cascades_through_the_registry() {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
    let reg = registry(store);
    reg.bootstrap().await.unwrap();
    let gc = tokio::spawn(run(reg.clone()));
    let svc = |reg: &Registry| reg.get_value(by_kind("Service"), Some("default"), "owner");

    owner_and_pods(&reg, 3).await;
    delete_owner(&reg, Propagation::Background).await;
    assert!(svc(&reg).is_err(), "background: the owner goes at once");
    until("background cascade", || pods(&reg).is_empty()).await;

    owner_and_pods(&reg, 3).await;
    delete_owner(&reg, Propagation::Orphan).await;
    until("orphaning", || svc(&reg).is_err()).await;
    let left = pods(&reg);
    assert_eq!(left.len(), 3, "orphan keeps the dependents");
    for p in &left {
        assert_eq!(p["metadata"]["ownerReferences"], json!(null), "{p}");
    }
    for i in 0..3 {
        reg.delete(
            by_kind("Pod"),
            Some("default"),
            &format!("p{i}"),
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    }

    owner_and_pods(&reg, 3).await;
    delete_owner(&reg, Propagation::Foreground).await;
    let held = svc(&reg);
    // The owner is held by its finalizer until its pods are gone (or already gone, if the
    // collector was quick): never gone while a pod remains.
    if let Ok(v) = &held {
        assert_eq!(v["metadata"]["finalizers"], json!([FINALIZER_FOREGROUND]));
        assert!(v["metadata"]["deletionTimestamp"].is_string());
    }
    until("foreground cascade", || svc(&reg).is_err()).await;
    assert!(pods(&reg).is_empty(), "the owner went after its dependents");
    gc.abort();
}

#[tokio::test]
async fn a_foreground_cascade_interrupted_by_a_restart_completes() {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
    let reg = registry(store.clone());
    reg.bootstrap().await.unwrap();
    owner_and_pods(&reg, 4).await;
    // No collector runs while the owner is deleted: the cascade's state is only in the store.
    delete_owner(&reg, Propagation::Foreground).await;
    assert_eq!(pods(&reg).len(), 4);
    drop(reg);
    let reg = registry(store);
    let gc = tokio::spawn(run(reg.clone()));
    until("cascade after restart", || {
        pods(&reg).is_empty()
            && reg
                .get_value(by_kind("Service"), Some("default"), "owner")
                .is_err()
    })
    .await;
    gc.abort();
}
