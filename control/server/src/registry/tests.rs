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
            res,
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

// ---- Nodes: podCIDR reservation ---------------------------------------------------------

fn node_obj(name: &str, cidr: Option<&str>) -> Value {
    let mut v = json!({"metadata": {"name": name}});
    if let Some(c) = cidr {
        v["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    v
}

fn pod_cidr_cfg(cluster: &str) -> RegistryConfig {
    RegistryConfig {
        cluster_cidr: cluster.parse().unwrap(),
        ..RegistryConfig::default()
    }
}

/// Every stored Node's blocks: (name, uid, blocks).
fn stored_node_cidrs(r: &Registry) -> Vec<(String, String, Vec<IpNet>)> {
    r.store()
        .list(&by_kind("Node").prefix())
        .0
        .iter()
        .map(|s| {
            let v = val(s);
            let cidrs = v["spec"]["podCIDRs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| crate::alloc::parse_cidr_sloppy(c.as_str()?))
                        .collect()
                })
                .unwrap_or_default();
            (
                v["metadata"]["name"].as_str().unwrap().to_string(),
                v["metadata"]["uid"].as_str().unwrap().to_string(),
                cidrs,
            )
        })
        .collect()
}

/// The invariants: no two stored Nodes overlap; each stored block is held by its Node (so
/// every one inside the cluster CIDR is marked used); nothing else is held (no leak); the
/// next free slot overlaps no stored block.
fn check_pod_cidr_invariants(r: &Registry) {
    let nodes = stored_node_cidrs(r);
    for (i, (a, _, ca)) in nodes.iter().enumerate() {
        for (b, _, cb) in &nodes[i + 1..] {
            for x in ca {
                for y in cb {
                    assert!(
                        !crate::alloc::overlaps(x, y),
                        "nodes {a} ({x}) and {b} ({y}) overlap"
                    );
                }
            }
        }
    }
    let alloc = r.allocators();
    let cidrs = &alloc.pod_cidrs;
    let mut held = std::collections::BTreeSet::new();
    for (k, hs) in cidrs.held() {
        for h in hs {
            held.insert((h.name.clone(), h.uid.clone(), *k));
        }
    }
    let mut stored = std::collections::BTreeSet::new();
    for (name, uid, cs) in &nodes {
        for c in cs {
            stored.insert((name.clone(), uid.clone(), *c));
            if let IpNet::V4(v4) = c {
                if crate::alloc::overlaps(&IpNet::V4(cidrs.cluster()), c) {
                    assert!(cidrs.is_used(IpNet::V4(*v4)), "{name}'s {c} is not used");
                }
            }
        }
    }
    assert_eq!(
        held, stored,
        "reservations must be exactly the stored blocks"
    );
    if let Some(next) = cidrs.next_free() {
        for (name, _, cs) in &nodes {
            for c in cs {
                assert!(
                    !crate::alloc::overlaps(c, &IpNet::V4(next)),
                    "next free {next} overlaps {name}'s {c}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_node_registering_with_a_pod_cidr_reserves_it_and_overlaps_are_refused() {
    let r = reg_with(pod_cidr_cfg("10.244.0.0/22"));
    let nodes = by_kind("Node");
    r.create(nodes, None, node_obj("own", Some("10.244.0.0/24")))
        .await
        .unwrap();
    r.create(nodes, None, node_obj("plain", None))
        .await
        .unwrap();
    // The IPAM controller's pick skips the block "own" brought.
    crate::controllers::nodeipam::reconcile(&r, "plain")
        .await
        .unwrap();
    let plain = val(&r.get(nodes, None, "plain").unwrap());
    assert_eq!(plain["spec"]["podCIDR"], "10.244.1.0/24");
    check_pod_cidr_invariants(&r);

    // A block overlapping another node's: 422 naming the field and the other node.
    for (name, cidr, other) in [
        ("squat", "10.244.0.0/24", "own"),
        ("small", "10.244.1.128/25", "plain"),
        ("big", "10.244.0.0/23", "own"),
        ("sloppy", "010.244.001.000/24", "plain"),
        ("mapped", "::ffff:10.244.0.0/120", "own"),
    ] {
        let e = r
            .create(nodes, None, node_obj(name, Some(cidr)))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"), "{name}");
        let c = &e.causes()[0];
        assert_eq!(c.field, "spec.podCIDRs", "{name}");
        assert_eq!(c.reason, "FieldValueInvalid");
        assert!(
            e.message
                .starts_with(&format!("Node \"{name}\" is invalid: spec.podCIDRs: Invalid value: []string{{\"{cidr}\"}}: ")),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with(&format!("of node \"{other}\"")),
            "{}",
            e.message
        );
        assert!(r.get(nodes, None, name).is_err());
    }
    check_pod_cidr_invariants(&r);

    // Outside --cluster-cidr: allowed, reserved nowhere, but still exclusive.
    r.create(nodes, None, node_obj("out", Some("192.168.7.0/24")))
        .await
        .unwrap();
    let e = r
        .create(nodes, None, node_obj("out2", Some("192.168.0.0/16")))
        .await
        .unwrap_err();
    assert!(e.message.contains("of node \"out\""), "{}", e.message);
    // Dual-stack: the IPv6 block is exclusive too.
    let ds =
        json!({"metadata": {"name": "ds"}, "spec": {"podCIDRs": ["10.244.2.0/24", "fd00:1::/64"]}});
    r.create(nodes, None, ds).await.unwrap();
    let ds2 = json!({"metadata": {"name": "ds2"}, "spec": {"podCIDRs": ["10.244.3.0/24", "fd00:1::/48"]}});
    let e = r.create(nodes, None, ds2).await.unwrap_err();
    assert!(e.message.contains("of node \"ds\""), "{}", e.message);
    assert!(
        !r.allocators()
            .pod_cidrs
            .is_used("10.244.3.0/24".parse().unwrap()),
        "a refused create keeps none of its blocks"
    );
    check_pod_cidr_invariants(&r);

    // Deleting a node releases its own block only.
    r.delete(nodes, None, "own", &DeleteOptions::default())
        .await
        .unwrap();
    assert!(r
        .allocators()
        .pod_cidrs
        .is_used("10.244.1.0/24".parse().unwrap()));
    r.create(nodes, None, node_obj("again", Some("10.244.0.0/24")))
        .await
        .unwrap();
    check_pod_cidr_invariants(&r);
}

#[tokio::test]
async fn pod_cidr_is_set_once_and_never_changed() {
    let r = reg_with(pod_cidr_cfg("10.244.0.0/22"));
    let nodes = by_kind("Node");
    r.create(nodes, None, node_obj("a", Some("10.244.0.0/24")))
        .await
        .unwrap();
    r.create(nodes, None, node_obj("b", None)).await.unwrap();
    // "" → a block another node has: refused.
    let mut b = val(&r.get(nodes, None, "b").unwrap());
    b["spec"] = json!({"podCIDR": "10.244.0.0/25"});
    let e = r
        .update(nodes, None, "b", b.clone(), Part::Main)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.causes()[0].field.as_str()),
        (422, "spec.podCIDRs")
    );
    // "" → a free block: allowed and reserved (also through a patch).
    r.patch(
        nodes,
        None,
        "b",
        PatchType::Merge,
        json!({"spec": {"podCIDR": "10.244.2.0/24"}}),
        Part::Main,
    )
    .await
    .unwrap();
    assert!(r
        .allocators()
        .pod_cidrs
        .is_used("10.244.2.0/24".parse().unwrap()));
    check_pod_cidr_invariants(&r);
    // Once set, it may not change (upstream ValidateNodeUpdate), nor be removed.
    for spec in [
        json!({"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}),
        json!({"podCIDRs": []}),
        json!({"podCIDRs": ["10.244.2.0/24", "fd00::/64"]}),
    ] {
        let mut b = val(&r.get(nodes, None, "b").unwrap());
        b["spec"] = spec.clone();
        let e = r.update(nodes, None, "b", b, Part::Main).await.unwrap_err();
        assert_eq!(e.code, 422, "{spec}");
        assert_eq!(
            e.causes()[0].message,
            "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
            "{spec}"
        );
    }
    // Status writes and label changes keep the block.
    let mut b = val(&r.get(nodes, None, "b").unwrap());
    b["metadata"]["labels"] = json!({"x": "y"});
    r.update(nodes, None, "b", b, Part::Main).await.unwrap();
    check_pod_cidr_invariants(&r);
}

#[tokio::test]
async fn restart_rebuilds_pod_cidrs_and_keeps_clashes_from_older_versions_reserved() {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
    let cfg = pod_cidr_cfg("10.244.0.0/22");
    let nodes = by_kind("Node");
    // What an older version could store: "b" squatting on "a"'s block, a node bringing a /25
    // and one with a sloppy spelling.
    for (name, uid, cidr) in [
        ("a", "u-a", "10.244.0.0/24"),
        ("b", "u-b", "10.244.0.0/24"),
        ("c", "u-c", "10.244.1.128/25"),
        ("d", "u-d", "010.244.002.0/24"),
    ] {
        let v = json!({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "uid": uid},
                       "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        store.create(nodes.key(None, name), v).await.unwrap();
    }
    let r = Registry::new(store.clone(), cfg.clone());
    r.create(nodes, None, node_obj("new", None)).await.unwrap();
    crate::controllers::nodeipam::reconcile(&r, "new")
        .await
        .unwrap();
    assert_eq!(
        val(&r.get(nodes, None, "new").unwrap())["spec"]["podCIDR"],
        "10.244.3.0/24",
        "only the last /24 is free"
    );
    // Deleting the first holder does not free the block while the squatter remains.
    r.delete(nodes, None, "a", &DeleteOptions::default())
        .await
        .unwrap();
    let r = Registry::new(store.clone(), cfg.clone());
    assert!(r
        .allocators()
        .pod_cidrs
        .is_used("10.244.0.0/24".parse().unwrap()));
    let e = r
        .create(nodes, None, node_obj("x", Some("10.244.0.0/24")))
        .await
        .unwrap_err();
    assert!(e.message.contains("of node \"b\""), "{}", e.message);
    r.delete(nodes, None, "b", &DeleteOptions::default())
        .await
        .unwrap();
    r.create(nodes, None, node_obj("x", Some("10.244.0.0/24")))
        .await
        .unwrap();
    check_pod_cidr_invariants(&r);
    let r = Registry::new(store, cfg);
    check_pod_cidr_invariants(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_give_two_nodes_overlapping_blocks() {
    let r = Arc::new(reg_with(pod_cidr_cfg("10.244.0.0/20")));
    let nodes = by_kind("Node");
    // 64 creates at once, in groups of 8 asking for the same or nested blocks, plus 32 nodes
    // without one whose CIDRs the IPAM step allocates at the same time.
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let r = r.clone();
        let group = i / 8;
        let cidr = match i % 4 {
            0 => format!("10.244.{}.0/24", group),
            1 => format!("10.244.{}.0/25", group),
            2 => format!("10.244.{}.128/26", group),
            _ => format!("10.244.{}.0/23", group & !1),
        };
        tasks.push(tokio::spawn(async move {
            let name = format!("c{i}");
            r.create(nodes, None, node_obj(&name, Some(&cidr)))
                .await
                .map(|_| ())
                .map_err(|e| e.code)
        }));
    }
    for i in 0..32u32 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("p{i}");
            r.create(nodes, None, node_obj(&name, None))
                .await
                .map_err(|e| e.code)?;
            crate::controllers::nodeipam::reconcile(&r, &name)
                .await
                .map_err(|_| 500)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => {}
            Err(422) => refused += 1,
            Err(500) => {} // range full for a late IPAM pick
            Err(c) => panic!("unexpected {c}"),
        }
    }
    assert!(refused > 0, "the groups collide");
    check_pod_cidr_invariants(&r);
    // Same block, many at once: exactly one wins.
    let r = Arc::new(reg_with(pod_cidr_cfg("10.244.0.0/20")));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                r.create(
                    nodes,
                    None,
                    node_obj(&format!("s{i}"), Some("10.244.5.0/24")),
                )
                .await
                .is_ok()
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    check_pod_cidr_invariants(&r);
}

mod pod_cidr_prop {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Create node `n`, maybe with a block.
        Create(u8, Option<String>),
        /// Delete node `n`.
        Delete(u8),
        /// The IPAM controller's step for node `n`.
        Ipam(u8),
        /// A client sets node `n`'s block ("" → value).
        Set(u8, String),
        /// Restart: a new registry over the same store.
        Restart,
    }

    /// Blocks inside 10.244.0.0/21 (split into /24) of sizes /21 to /27, blocks around and
    /// outside it, and IPv6 ones.
    fn block() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (0u32..32, 21u8..=27).prop_map(|(off, p)| {
                let a = u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + (off << 6);
                ipnet::Ipv4Net::new(a.into(), p).unwrap().trunc().to_string()
            }),
            2 => (0u32..4, 16u8..=24).prop_map(|(i, p)| {
                let a = u32::from(std::net::Ipv4Addr::new(10, 240, 0, 0)) + (i << 18);
                ipnet::Ipv4Net::new(a.into(), p).unwrap().trunc().to_string()
            }),
            1 => (0u16..4, 60u8..=64).prop_map(|(i, p)| format!("fd00:0:0:{i}::/{p}")),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..10, proptest::option::of(block())).prop_map(|(n, c)| Op::Create(n, c)),
            2 => (0u8..10).prop_map(Op::Delete),
            3 => (0u8..10).prop_map(Op::Ipam),
            2 => (0u8..10, block()).prop_map(|(n, c)| Op::Set(n, c)),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random interleavings of creates, deletes, IPAM picks, client-set blocks and
        /// restarts keep the invariants after every step, and every outcome is what the
        /// stored state says it must be.
        #[test]
        fn pod_cidrs_stay_exclusive_and_reserved(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let store: Arc<dyn Store> =
                    Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
                let cfg = pod_cidr_cfg("10.244.0.0/21");
                let mut r = Registry::new(store.clone(), cfg.clone());
                let nodes = by_kind("Node");
                for o in ops {
                    let before = stored_node_cidrs(&r);
                    let clashes = |name: &str, c: &str| {
                        let net = crate::alloc::parse_cidr_sloppy(c).unwrap();
                        before.iter().any(|(n, _, cs)| {
                            n != name && cs.iter().any(|x| crate::alloc::overlaps(x, &net))
                        })
                    };
                    let exists = |name: &str| before.iter().any(|(n, _, _)| n == name);
                    match &o {
                        Op::Create(n, c) => {
                            let name = format!("n{n}");
                            let got = r
                                .create(nodes, None, node_obj(&name, c.as_deref()))
                                .await
                                .map(|_| ())
                                .map_err(|e| e.code);
                            let want = if exists(&name) {
                                Err(409)
                            } else if c.as_deref().is_some_and(|c| clashes(&name, c)) {
                                Err(422)
                            } else {
                                Ok(())
                            };
                            assert_eq!(got, want, "{o:?}");
                        }
                        Op::Delete(n) => {
                            let name = format!("n{n}");
                            let got = r.delete(nodes, None, &name, &DeleteOptions::default()).await;
                            assert_eq!(got.is_ok(), exists(&name), "{o:?}");
                        }
                        Op::Ipam(n) => {
                            let name = format!("n{n}");
                            let had = before.iter().find(|(x, _, _)| *x == name).map(|(_, _, c)| c.clone());
                            let free = r.allocators().pod_cidrs.next_free();
                            let got = crate::controllers::nodeipam::reconcile(&r, &name).await;
                            let after = stored_node_cidrs(&r);
                            let now = after.iter().find(|(x, _, _)| *x == name).map(|(_, _, c)| c.clone());
                            match had {
                                None => assert!(got.is_ok() && now.is_none(), "{o:?}"),
                                Some(c) if !c.is_empty() => assert_eq!(now, Some(c), "{o:?}"),
                                Some(_) => match free {
                                    Some(f) => assert_eq!(now, Some(vec![IpNet::V4(f)]), "{o:?}"),
                                    None => assert!(got.is_err(), "{o:?}: full"),
                                },
                            }
                        }
                        Op::Set(n, c) => {
                            let name = format!("n{n}");
                            let got = r
                                .patch(nodes, None, &name, PatchType::Merge,
                                       json!({"spec": {"podCIDR": c, "podCIDRs": [c]}}), Part::Main)
                                .await
                                .map(|_| ())
                                .map_err(|e| e.code);
                            let had = before.iter().find(|(x, _, _)| *x == name).map(|(_, _, c)| c.clone());
                            // Validation compares the strings, as upstream does: the same block
                            // spelled differently (host bits set) is a change, and refused.
                            let stored = r.get_value(nodes, None, &name).ok()
                                .and_then(|v| v.pointer("/spec/podCIDRs/0").and_then(|c| c.as_str()).map(str::to_string));
                            let same = |cs: &Vec<IpNet>| cs.len() == 1 && stored.as_deref() == Some(c.as_str());
                            let want = match had {
                                None => Err(404),
                                Some(cs) if same(&cs) => Ok(()),
                                Some(cs) if !cs.is_empty() => Err(422),
                                Some(_) if clashes(&name, c) => Err(422),
                                Some(_) => Ok(()),
                            };
                            assert_eq!(got, want, "{o:?}");
                        }
                        Op::Restart => r = Registry::new(store.clone(), cfg.clone()),
                    }
                    check_pod_cidr_invariants(&r);
                }
            });
        }
    }
}

// ---- Nodes: NodeRestriction ---------------------------------------------------------------

include!("../../testdata/node_restriction_table.rs");

fn user_of(w: Who) -> Option<crate::auth::User> {
    use crate::auth::User;
    match w {
        Who::Admin => Some(User::admin()),
        Who::N1 => Some(User::node("n1")),
        Who::N2 => Some(User::node("n2")),
        Who::Nobody => Some(User {
            name: "bob".into(),
            groups: vec!["system:authenticated".into()],
        }),
        Who::NoToken => None,
    }
}

/// The fixture: Nodes n1 (with a label the admin set that nodes may not touch) and n2, both
/// with podCIDRs; pods bound to n1, to n2, and unbound.
async fn restriction_fixture() -> Registry {
    let r = reg().await;
    let nodes = by_kind("Node");
    let n1 = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "node-role.kubernetes.io/control-plane": ""}},
                    "spec": {"podCIDR": "10.244.1.0/24"}});
    let n2 = json!({"metadata": {"name": "n2", "labels": {"kubernetes.io/hostname": "n2"}},
                    "spec": {"podCIDR": "10.244.2.0/24"}});
    r.create(nodes, None, n1).await.unwrap();
    r.create(nodes, None, n2).await.unwrap();
    let pods = by_kind("Pod");
    for (name, node) in [
        ("p-n1", Some("n1")),
        ("p-n2", Some("n2")),
        ("p-unbound", None),
    ] {
        let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        r.create(pods, Some("default"), p).await.unwrap();
    }
    r
}

/// Serves one request as the API handler does: authenticate, authorize (with the stored
/// pod's node for pods), then the registry call. The HTTP code.
async fn serve(r: &Registry, who: Who, req: &Req) -> (u16, String) {
    use crate::auth::{authorize, Attributes};
    let nodes = by_kind("Node");
    let pods = by_kind("Pod");
    if let Req::CreateNode(name, _) = req {
        // The Node to create must not exist yet.
        let _ = r.delete(nodes, None, name, &DeleteOptions::default()).await;
    }
    let Some(user) = user_of(who) else {
        return (401, "Unauthorized".into());
    };
    let (verb, res, sub, ns, name) = match req {
        Req::CreateNode(n, _) => ("create", nodes, None, None, *n),
        Req::UpdateLabels(n, _) => ("update", nodes, None, None, *n),
        Req::PatchNode(n, _, _) => ("patch", nodes, None, None, *n),
        Req::UpdateNodeStatus(n) => ("update", nodes, Some("status"), None, *n),
        Req::DeleteNode(n) => ("delete", nodes, None, None, *n),
        Req::DeletePod(n) => ("delete", pods, None, Some("default"), *n),
        Req::UpdatePodStatus(n) => ("update", pods, Some("status"), Some("default"), *n),
        Req::PatchPodStatus(n) => ("patch", pods, Some("status"), Some("default"), *n),
    };
    let pod_node = (res.kind == "Pod")
        .then(|| r.get_value(res, ns, name).ok())
        .flatten()
        .and_then(|v| v["spec"]["nodeName"].as_str().map(str::to_string));
    let attrs = Attributes {
        verb,
        res,
        sub,
        ns,
        name: Some(name),
        pod_node: pod_node.as_deref(),
        referenced_by_node: false,
    };
    if let Err(e) = authorize(&user, &attrs) {
        return (e.code, e.message);
    }
    let part = if sub == Some("status") {
        Part::Status
    } else {
        Part::Main
    };
    // As the API handler does: the registry learns who is asking from this scope.
    let out = crate::auth::as_requester(&user, async {
        match req {
            Req::CreateNode(n, labels) => {
                r.create(
                    nodes,
                    None,
                    json!({"metadata": {"name": n, "labels": labels}}),
                )
                .await
            }
            Req::UpdateLabels(n, edits) => {
                let mut v = r.get_value(nodes, None, n).unwrap();
                for (k, x) in edits {
                    match x {
                        Some(x) => v["metadata"]["labels"][*k] = json!(x),
                        None => {
                            v["metadata"]["labels"].as_object_mut().unwrap().remove(*k);
                        }
                    }
                }
                r.update(nodes, None, n, v, part).await
            }
            Req::PatchNode(n, pt, p) => {
                r.patch(nodes, None, n, patch_type(*pt), p.clone(), part)
                    .await
            }
            Req::UpdateNodeStatus(n) => {
                let mut v = r.get_value(nodes, None, n).unwrap();
                v["metadata"]["labels"]["node-role.kubernetes.io/worker"] = json!("");
                v["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
                r.update(nodes, None, n, v, part).await
            }
            Req::DeleteNode(n) => r.delete(nodes, None, n, &DeleteOptions::default()).await,
            Req::DeletePod(n) => {
                r.delete(pods, Some("default"), n, &DeleteOptions::default())
                    .await
            }
            Req::UpdatePodStatus(n) => {
                let mut v = r.get_value(pods, Some("default"), n).unwrap();
                v["status"]["phase"] = json!("Running");
                r.update(pods, Some("default"), n, v, part).await
            }
            Req::PatchPodStatus(n) => {
                r.patch(
                    pods,
                    Some("default"),
                    n,
                    PatchType::Merge,
                    json!({"status": {"phase": "Running"}}),
                    part,
                )
                .await
            }
        }
    })
    .await;
    match out {
        Ok(_) if verb == "create" => (201, String::new()),
        Ok(_) => (200, String::new()),
        Err(e) => (e.code, e.message),
    }
}

/// The registry's patch type of a table row's.
fn patch_type(pt: Pt) -> PatchType {
    match pt {
        Pt::Json => PatchType::Json,
        Pt::Merge => PatchType::Merge,
        Pt::Strategic => PatchType::Strategic,
    }
}

#[tokio::test]
async fn node_table() {
    let mut failures = Vec::new();
    let mut n = 0;
    for (req, codes) in table() {
        for (who, want) in WHO.into_iter().zip(codes) {
            let r = restriction_fixture().await;
            let (got, msg) = serve(&r, who, &req).await;
            n += 1;
            if got != want {
                failures.push(format!("{who:?} {req:?}: want {want}, got {got} {msg}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(n, 28 * 5);
}

#[tokio::test]
async fn node_restriction_messages_are_upstreams() {
    let cases = [
        (
            Req::CreateNode("n1", json!({"node-role.kubernetes.io/worker": "", "node-restriction.kubernetes.io/a": "1", "example.com/x": "1"})),
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-restriction.kubernetes.io/a, node-role.kubernetes.io/worker",
        ),
        (
            Req::UpdateLabels("n1", vec![("node-role.kubernetes.io/control-plane", None), ("kubernetes.io/role", Some("x"))]),
            "nodes \"n1\" is forbidden: is not allowed to modify labels: kubernetes.io/role, node-role.kubernetes.io/control-plane",
        ),
        (
            Req::PatchNode("n1", Pt::Merge, json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})),
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints",
        ),
        (
            Req::DeletePod("p-n2"),
            "pods \"p-n2\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself",
        ),
        (
            Req::PatchPodStatus("p-n2"),
            "pods \"p-n2\" is forbidden: node \"n1\" can only update pod status for pods with spec.nodeName set to itself",
        ),
    ];
    for (req, want) in cases {
        let r = restriction_fixture().await;
        let (code, msg) = serve(&r, Who::N1, &req).await;
        assert_eq!((code, msg.as_str()), (403, want), "{req:?}");
    }
    // A forbidden label already there and left alone does not stop a node's other changes.
    let r = restriction_fixture().await;
    let (code, _) = serve(
        &r,
        Who::N1,
        &Req::PatchNode(
            "n1",
            Pt::Merge,
            json!({"metadata": {"labels": {"kubernetes.io/os": "linux"}}}),
        ),
    )
    .await;
    assert_eq!(code, 200);
    let v = r.get_value(by_kind("Node"), None, "n1").unwrap();
    assert_eq!(
        v["metadata"]["labels"]["node-role.kubernetes.io/control-plane"],
        ""
    );
    // The restriction follows the request's scope: an admin or controller write outside a
    // node's request is not restricted, even right after one on the same task.
    let nodes = by_kind("Node");
    assert_eq!(crate::auth::requesting_node(), None);
    crate::auth::as_requester(&crate::auth::User::node("n1"), async {
        assert_eq!(crate::auth::requesting_node().as_deref(), Some("n1"));
        tokio::task::yield_now().await;
        assert_eq!(crate::auth::requesting_node().as_deref(), Some("n1"));
    })
    .await;
    r.patch(
        nodes,
        None,
        "n1",
        PatchType::Merge,
        json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}}),
        Part::Main,
    )
    .await
    .unwrap();
}

// ---- Server-side apply and field managers -------------------------------------------------

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    })
}

async fn apply_as(
    r: &Registry,
    manager: &str,
    body: Value,
    force: bool,
) -> ApiResult<(Arc<Stored>, bool)> {
    let res = by_kind("Deployment");
    with_field_manager(
        manager.to_string(),
        r.apply(res, Some("default"), "web", body, force, Part::Main),
    )
    .await
}

fn managers(v: &Value) -> Vec<(String, String)> {
    v["metadata"]["managedFields"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn apply_creates_then_merges_and_conflicts_name_the_other_manager() {
    let r = reg().await;
    let res = by_kind("Deployment");
    let (s, created) = apply_as(&r, "alice", deployment(2, "nginx:1"), false)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(managers(&val(&s)), vec![("alice".into(), "Apply".into())]);
    // Applying the same intent again changes nothing.
    let (again, created) = apply_as(&r, "alice", deployment(2, "nginx:1"), false)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.mod_revision, s.mod_revision);

    // An update by another manager takes the field it changed.
    with_field_manager(
        "kubectl-scale".into(),
        r.patch(
            res,
            Some("default"),
            "web",
            PatchType::Merge,
            json!({"spec": {"replicas": 5}}),
            Part::Main,
        ),
    )
    .await
    .unwrap();
    let e = apply_as(&r, "alice", deployment(3, "nginx:1"), false)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"kubectl-scale\"")
            && e.message.contains(".spec.replicas"),
        "{}",
        e.message
    );
    let causes = &e.details.as_ref().unwrap().causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(
        (causes[0].reason.as_str(), causes[0].field.as_str()),
        ("FieldManagerConflict", ".spec.replicas")
    );
    // Agreeing on the value is no conflict; forcing takes the field.
    apply_as(&r, "alice", deployment(5, "nginx:2"), false)
        .await
        .unwrap();
    let (forced, _) = apply_as(&r, "alice", deployment(7, "nginx:2"), true)
        .await
        .unwrap();
    let v = val(&forced);
    assert_eq!(v["spec"]["replicas"], 7);
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:2"
    );

    // A second applier owning another field: both keep theirs; env merges by name.
    let mut bob = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"team": "b"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "web", "env": [{"name": "MODE", "value": "fast"}]}]}}},
    });
    apply_as(&r, "bob", bob.clone(), false).await.unwrap();
    let v = val(&r.get(res, Some("default"), "web").unwrap());
    assert_eq!(v["metadata"]["labels"]["team"], "b");
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (c["image"].as_str(), c["env"][0]["value"].as_str()),
        (Some("nginx:2"), Some("fast"))
    );
    // Bob stops applying the label: it goes (nobody else owns it); alice's fields stay.
    bob["metadata"].as_object_mut().unwrap().remove("labels");
    apply_as(&r, "bob", bob, false).await.unwrap();
    let v = val(&r.get(res, Some("default"), "web").unwrap());
    assert_eq!(v["metadata"].get("labels"), None, "{v}");
    assert_eq!(v["spec"]["replicas"], 7);
}

#[tokio::test]
async fn objects_created_by_a_plain_create_can_be_applied_and_vice_versa() {
    let r = reg().await;
    let res = by_kind("Deployment");
    let s = with_field_manager(
        "kubectl-create".into(),
        r.create(res, Some("default"), deployment(3, "nginx:1")),
    )
    .await
    .unwrap();
    assert_eq!(
        managers(&val(&s)),
        vec![("kubectl-create".into(), "Update".into())]
    );
    let e = apply_as(&r, "kubectl", deployment(4, "nginx:1"), false)
        .await
        .unwrap_err();
    assert_eq!(e.code, 409);
    apply_as(&r, "kubectl", deployment(3, "nginx:1"), false)
        .await
        .expect("the same value is shared, not a conflict");
    // And a client-side update after the apply is recorded beside it.
    let mut v = val(&r.get(res, Some("default"), "web").unwrap());
    v["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:3");
    let s = with_field_manager(
        "kubectl-client-side-apply".into(),
        r.update(res, Some("default"), "web", v, Part::Main),
    )
    .await
    .unwrap();
    let m = managers(&val(&s));
    assert!(m.contains(&("kubectl".into(), "Apply".into())), "{m:?}");
    assert!(
        m.contains(&("kubectl-client-side-apply".into(), "Update".into())),
        "{m:?}"
    );
}
