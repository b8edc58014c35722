//! `sluice-control migrate`: a control plane's objects move from its redb store into a real
//! etcd, and a server started on that etcd with the same data directory (PKI, tokens) serves
//! them with their uids and allocations intact, and keeps allocating around them.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice_store::testing::{etcd_binary, EtcdCluster};
use sluice_tests::{bin, skip, text, ControlPlane};

/// Runs `sluice-control migrate ARGS`.
fn migrate(args: &[&str]) -> Output {
    Command::new(bin("sluice-control"))
        .arg("migrate")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running sluice-control migrate")
}

/// The `<resource> <count>` lines of the summary.
fn counts(stdout: &str) -> BTreeMap<String, usize> {
    stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let (name, n) = l.trim().rsplit_once(' ')?;
            Some((name.trim().to_string(), n.parse().ok()?))
        })
        .collect()
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

/// uid and creationTimestamp of an object, as served.
fn identity<K: kube::Resource>(o: &K) -> (String, String) {
    let m = o.meta();
    (
        m.uid.clone().expect("uid"),
        format!(
            "{:?}",
            m.creation_timestamp.as_ref().expect("creationTimestamp")
        ),
    )
}

fn ip_and_port(s: &Service) -> (String, i32) {
    let spec = s.spec.as_ref().unwrap();
    (
        spec.cluster_ip.clone().unwrap(),
        spec.ports.as_ref().unwrap()[0].node_port.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_to_etcd_keeps_objects_uids_and_allocations() {
    if let Err(why) = etcd_binary() {
        skip(&why);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    let mut cp = ControlPlane::start(&data, &[]).unwrap();
    let client = cp.client().await.unwrap();
    let pp = PostParams::default();

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "mig"}})).unwrap();
    let ns = Api::<Namespace>::all(client.clone())
        .create(&pp, &ns)
        .await
        .unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), "mig")
        .create(&pp, &service("web"))
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}
    }))
    .unwrap();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "mig")
        .create(&pp, &cm)
        .await
        .unwrap();
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    let dep = Api::<Deployment>::namespaced(client.clone(), "mig")
        .create(&pp, &dep)
        .await
        .unwrap();
    let (svc_ip, svc_port) = ip_and_port(&svc);

    let etcd = EtcdCluster::start(&tmp.path().join("etcd"), 1).unwrap();
    let endpoints = etcd.endpoints_arg();
    let from = format!("redb:{}", data.display());
    let to = format!("etcd:{endpoints}");

    // While the server runs, its store is locked: refused, and nothing reaches etcd (the
    // migrations below would refuse a non-empty target).
    let o = migrate(&["--from", &from, "--to", &to]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stop the server first"),
        "{}",
        text(&o)
    );

    cp.crash();

    let o = migrate(&["--from", &from, "--to", &to, "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let dry = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(dry.contains("dry run: nothing was written"), "{dry}");

    let o = migrate(&["--from", &from, "--to", &to]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    println!("{out}");
    let per = counts(&out);
    assert_eq!(per, counts(&dry), "the dry run counted the same objects");
    assert_eq!(per.get("deployments.apps"), Some(&1), "{out}");
    assert!(per.get("services") >= Some(&2), "kubernetes and web: {out}");
    assert!(per.get("configmaps") >= Some(&1), "{out}");
    assert!(
        per.get("namespaces") >= Some(&5),
        "4 built in and mig: {out}"
    );
    let total: usize = per.values().sum();
    assert!(
        out.contains(&format!("total {total} objects copied")),
        "{out}"
    );
    for want in ["resourceVersions are new", "verified:", "target revision "] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }

    // Once is enough: the target now holds objects.
    let o = migrate(&["--from", &from, "--to", &to]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("target is not empty") && err.contains("--overwrite-existing"),
        "{}",
        text(&o)
    );

    // The same data directory on etcd: same PKI and tokens, the objects from etcd.
    let cp =
        ControlPlane::start(&data, &["--store", "etcd", "--etcd-endpoints", &endpoints]).unwrap();
    let client = cp.client().await.unwrap();
    let got = Api::<Namespace>::all(client.clone())
        .get("mig")
        .await
        .unwrap();
    assert_eq!(identity(&got), identity(&ns));
    let svcs = Api::<Service>::namespaced(client.clone(), "mig");
    let got = svcs.get("web").await.unwrap();
    assert_eq!(identity(&got), identity(&svc));
    assert_eq!(ip_and_port(&got), (svc_ip.clone(), svc_port));
    let got = Api::<ConfigMap>::namespaced(client.clone(), "mig")
        .get("cfg")
        .await
        .unwrap();
    assert_eq!(identity(&got), identity(&cm));
    assert_eq!(got.data, cm.data);
    let got = Api::<Deployment>::namespaced(client.clone(), "mig")
        .get("web")
        .await
        .unwrap();
    assert_eq!(identity(&got), identity(&dep));
    assert_eq!(got.spec, dep.spec);

    // The allocators rebuilt from the migrated objects: new values go around them.
    let fresh = svcs.create(&pp, &service("web2")).await.unwrap();
    let (ip2, port2) = ip_and_port(&fresh);
    assert_ne!(ip2, svc_ip);
    assert_ne!(port2, svc_port);

    // Migrate never deletes the source: going back to redb stays possible.
    assert!(data.join("store.redb").is_file());
    drop(cp);
    drop(etcd);
}
