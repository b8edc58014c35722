//! Registry tests on an in-memory store: allocation, concurrency, patches, deletes.

use std::sync::Arc;

use serde_json::{json, Value};
use sluice_store::{RedbStore, StoreOptions};

use super::*;
use crate::resources::by_kind;

fn reg_with(cfg: RegistryConfig) -> Registry {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
    Registry::new(store, cfg)
}

async fn reg() -> Registry {
    let r = reg_with(RegistryConfig::default());
    r.bootstrap().await.unwrap();
    r
}

fn svc(name: &str, extra: Value) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            spec.insert(k.clone(), x.clone());
        }
    }
    v
}

fn val(s: &Stored) -> Value {
    s.value().unwrap()
}

#[tokio::test]
async fn service_defaults_and_cluster_ip_allocation() {
    let r = reg().await;
    let res = by_kind("Service");
    let s = val(&r
        .create(res, Some("default"), svc("web", json!({})))
        .await
        .unwrap());
    let ip: IpAddr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(r.in_service_cidr(ip));
    assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(s["spec"]["type"], "ClusterIP");
    assert_eq!(s["spec"]["sessionAffinity"], "None");
    assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    assert!(s["metadata"]["uid"].as_str().is_some());
    assert_eq!(
        s["metadata"]["resourceVersion"].as_str().unwrap(),
        r.store().revision().to_string()
    );
}

#[tokio::test]
async fn requested_cluster_ip_is_honoured_or_rejected() {
    let r = reg().await;
    let res = by_kind("Service");
    let s = val(&r
        .create(
            res,
            Some("default"),
            svc("a", json!({"clusterIP": "10.96.0.10"})),
        )
        .await
        .unwrap());
    assert_eq!(s["spec"]["clusterIP"], "10.96.0.10");
    let e = r
        .create(
            res,
            Some("default"),
            svc("b", json!({"clusterIP": "10.96.0.10"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 422);
    assert_eq!(e.causes()[0].field, "spec.clusterIPs");
    assert!(e.message.contains("already allocated"), "{}", e.message);
    let e = r
        .create(
            res,
            Some("default"),
            svc("c", json!({"clusterIP": "192.168.0.1"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("not in the valid range"),
        "{}",
        e.message
    );
    // Nothing leaked by the failures: deleting "a" frees .10 for reuse.
    r.delete(res, Some("default"), "a", &DeleteOptions::default())
        .await
        .unwrap();
    let s = val(&r
        .create(
            res,
            Some("default"),
            svc("d", json!({"clusterIP": "10.96.0.10"})),
        )
        .await
        .unwrap());
    assert_eq!(s["spec"]["clusterIP"], "10.96.0.10");
}

#[tokio::test]
async fn headless_and_external_name_get_no_ip() {
    let r = reg().await;
    let res = by_kind("Service");
    let h = val(&r
        .create(res, Some("default"), svc("h", json!({"clusterIP": "None"})))
        .await
        .unwrap());
    assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    let x = json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "example.org"}});
    let x = val(&r.create(res, Some("default"), x).await.unwrap());
    assert!(x["spec"].get("clusterIP").is_none());
    assert_eq!(r.allocators().cluster_ips.used(), 0);
}

#[tokio::test]
async fn cluster_ip_exhaustion_and_uniqueness() {
    let r = reg_with(RegistryConfig {
        service_cidr: "10.0.0.0/29".parse().unwrap(),
        ..RegistryConfig::default()
    });
    r.bootstrap().await.unwrap();
    let res = by_kind("Service");
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..6 {
        let s = val(&r
            .create(res, Some("default"), svc(&format!("s{i}"), json!({})))
            .await
            .unwrap());
        assert!(ips.insert(s["spec"]["clusterIP"].as_str().unwrap().to_string()));
    }
    let e = r
        .create(res, Some("default"), svc("full", json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.code, 500);
    assert!(e.message.contains("range is full"), "{}", e.message);
    assert!(r.get(res, Some("default"), "full").is_err());
}

#[tokio::test]
async fn node_ports_allocate_keep_and_release() {
    let r = reg_with(RegistryConfig {
        node_port_range: (30000, 30003),
        ..RegistryConfig::default()
    });
    r.bootstrap().await.unwrap();
    let res = by_kind("Service");
    let np = svc(
        "np",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30003}]}),
    );
    let s = val(&r.create(res, Some("default"), np).await.unwrap());
    let p0 = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=30002).contains(&p0));
    assert_eq!(s["spec"]["ports"][1]["nodePort"], 30003);
    assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    // The same node port twice for one protocol → 422.
    let twice = svc(
        "twice",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30001}, {"name": "b", "port": 81, "nodePort": 30001}]}),
    );
    let e = r.create(res, Some("default"), twice).await.unwrap_err();
    assert_eq!(
        (e.code, e.causes()[0].field.as_str()),
        (422, "spec.ports[1].nodePort")
    );
    // Taken port → 422 naming the field.
    let dup = svc(
        "dup",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30003}]}),
    );
    let e = r.create(res, Some("default"), dup).await.unwrap_err();
    assert_eq!(
        (e.code, e.causes()[0].field.as_str()),
        (422, "spec.ports[0].nodePort")
    );
    // An update without nodePorts keeps them (as kubectl apply sends).
    let mut upd = val(&r.get(res, Some("default"), "np").unwrap());
    for p in upd["spec"]["ports"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("nodePort");
    }
    upd["metadata"]["labels"] = json!({"x": "y"});
    let s2 = val(&r
        .update(res, Some("default"), "np", upd, Part::Main)
        .await
        .unwrap());
    assert_eq!(s2["spec"]["ports"][0]["nodePort"].as_u64().unwrap(), p0);
    assert_eq!(s2["spec"]["ports"][1]["nodePort"], 30003);
    assert_eq!(s2["spec"]["clusterIP"], s["spec"]["clusterIP"]);
    // Switching to ClusterIP releases the node ports.
    let mut cip = s2.clone();
    cip["spec"]["type"] = json!("ClusterIP");
    cip["spec"]
        .as_object_mut()
        .unwrap()
        .remove("externalTrafficPolicy");
    let s3 = val(&r
        .update(res, Some("default"), "np", cip, Part::Main)
        .await
        .unwrap());
    assert!(s3["spec"]["ports"][0].get("nodePort").is_none());
    assert_eq!(r.allocators().node_ports.used(), 0);
}

#[tokio::test]
async fn allocations_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let cfg = RegistryConfig {
        service_cidr: "10.0.0.0/30".parse().unwrap(),
        ..RegistryConfig::default()
    };
    let first;
    {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&path, StoreOptions::default()).unwrap());
        let r = Registry::new(store, cfg.clone());
        r.bootstrap().await.unwrap();
        first = val(&r
            .create(
                by_kind("Service"),
                Some("default"),
                svc("a", json!({"type": "NodePort"})),
            )
            .await
            .unwrap());
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path, StoreOptions::default()).unwrap());
    let r = Registry::new(store, cfg);
    // /30 has two usable addresses: one is held by "a", so exactly one more fits.
    let b = val(&r
        .create(by_kind("Service"), Some("default"), svc("b", json!({})))
        .await
        .unwrap());
    assert_ne!(b["spec"]["clusterIP"], first["spec"]["clusterIP"]);
    assert!(r
        .create(by_kind("Service"), Some("default"), svc("c", json!({})))
        .await
        .is_err());
    assert_eq!(r.allocators().node_ports.used(), 1);
}

#[tokio::test]
async fn stale_update_conflicts_and_noop_update_keeps_version() {
    let r = reg().await;
    let res = by_kind("Service");
    let s = val(&r
        .create(res, Some("default"), svc("web", json!({})))
        .await
        .unwrap());
    let mut a = s.clone();
    a["metadata"]["labels"] = json!({"v": "1"});
    r.update(res, Some("default"), "web", a, Part::Main)
        .await
        .unwrap();
    let mut stale = s.clone();
    stale["metadata"]["labels"] = json!({"v": "2"});
    let e = r
        .update(res, Some("default"), "web", stale, Part::Main)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    let cur = r.get(res, Some("default"), "web").unwrap();
    let again = r
        .update(res, Some("default"), "web", val(&cur), Part::Main)
        .await
        .unwrap();
    assert_eq!(again.mod_revision, cur.mod_revision);
}

#[tokio::test]
async fn status_and_main_are_written_separately() {
    let r = reg().await;
    let res = by_kind("Pod");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let p = val(&r.create(res, Some("default"), pod).await.unwrap());
    assert_eq!(p["status"]["phase"], "Pending");
    let mut st = p.clone();
    st["status"]["phase"] = json!("Running");
    st["status"]["podIP"] = json!("10.244.0.5");
    st["spec"]["containers"][0]["image"] = json!("ignored:1");
    let p2 = val(&r
        .update(res, Some("default"), "p", st, Part::Status)
        .await
        .unwrap());
    assert_eq!(p2["status"]["podIP"], "10.244.0.5");
    assert_eq!(p2["spec"]["containers"][0]["image"], "busybox");
    let mut main = p2.clone();
    main["status"]["phase"] = json!("Failed");
    main["metadata"]["labels"] = json!({"a": "b"});
    let p3 = val(&r
        .update(res, Some("default"), "p", main, Part::Main)
        .await
        .unwrap());
    assert_eq!(p3["status"]["phase"], "Running");
    assert_eq!(p3["metadata"]["labels"]["a"], "b");
}

#[tokio::test]
async fn strategic_merge_patch_keeps_container_fields() {
    let r = reg().await;
    let res = by_kind("Deployment");
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1.35", "command": ["sleep", "3600"]}]}}}
    });
    r.create(res, Some("default"), d).await.unwrap();
    let patch = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"image": "busybox:1.36", "name": "c"}]}}}});
    let out = val(&r
        .patch(
            res,
            Some("default"),
            "web",
            PatchType::Strategic,
            patch,
            Part::Main,
        )
        .await
        .unwrap());
    let c = &out["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox:1.36");
    assert_eq!(c["command"], json!(["sleep", "3600"]));
    assert_eq!(out["metadata"]["generation"], 2);
    let scale = r
        .patch_scale(
            "default",
            "web",
            PatchType::Merge,
            json!({"spec": {"replicas": 5}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(5))
    );
    assert_eq!(scale["status"]["selector"], "app=web");
    assert_eq!(
        val(&r.get(res, Some("default"), "web").unwrap())["spec"]["replicas"],
        5
    );
}

#[tokio::test]
async fn namespaces_gate_creation_and_cascade_on_delete() {
    let r = reg().await;
    let e = r
        .create(by_kind("Service"), Some("nope"), svc("a", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );
    r.create(
        by_kind("Namespace"),
        None,
        json!({"metadata": {"name": "team"}}),
    )
    .await
    .unwrap();
    r.create(by_kind("Service"), Some("team"), svc("a", json!({})))
        .await
        .unwrap();
    assert_eq!(r.allocators().cluster_ips.used(), 1);
    r.delete(
        by_kind("Namespace"),
        None,
        "team",
        &DeleteOptions::default(),
    )
    .await
    .unwrap();
    assert!(r.get(by_kind("Service"), Some("team"), "a").is_err());
    assert_eq!(r.allocators().cluster_ips.used(), 0);
}

#[tokio::test]
async fn bound_pods_delete_gracefully_and_binding_is_once() {
    let r = reg().await;
    let res = by_kind("Pod");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    r.create(res, Some("default"), pod.clone()).await.unwrap();
    r.bind_pod("default", "p", &json!({"target": {"name": "n1"}}))
        .await
        .unwrap();
    let e = r
        .bind_pod("default", "p", &json!({"target": {"name": "n2"}}))
        .await
        .unwrap_err();
    assert_eq!(e.code, 409);
    let d = val(&r
        .delete(res, Some("default"), "p", &DeleteOptions::default())
        .await
        .unwrap());
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(
        r.get(res, Some("default"), "p").is_ok(),
        "still there while terminating"
    );
    let zero = DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    r.delete(res, Some("default"), "p", &zero).await.unwrap();
    assert!(r.get(res, Some("default"), "p").is_err());
    // An unbound pod goes at once.
    r.create(res, Some("default"), pod).await.unwrap();
    r.delete(res, Some("default"), "p", &DeleteOptions::default())
        .await
        .unwrap();
    assert!(r.get(res, Some("default"), "p").is_err());
}

#[tokio::test]
async fn invalid_service_names_the_field() {
    let r = reg().await;
    let bad = svc("web", json!({"ports": [{"port": 0}]}));
    let e = r
        .create(by_kind("Service"), Some("default"), bad)
        .await
        .unwrap_err();
    assert_eq!(e.code, 422);
    assert_eq!(e.causes()[0].field, "spec.ports[0].port");
    assert!(
        e.message
            .starts_with("Service \"web\" is invalid: [spec.ports[0].port: Invalid value: 0"),
        "{}",
        e.message
    );
    assert_eq!(
        r.allocators().cluster_ips.used(),
        0,
        "nothing allocated for a rejected object"
    );
}
