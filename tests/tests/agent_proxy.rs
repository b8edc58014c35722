//! The agent's Service proxy loop against the real control plane: kube-rs watchers feed the
//! Proxier, the bounded-frequency runner syncs a recording dataplane, and what it is asked to
//! program follows Services and EndpointSlices (created, scaled, deleted) — with nothing
//! programmed before both kinds have synced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use sluice_agent::proxy::{self, ProxyOptions};
use sluice_proxy::model::{EndpointsMap, ServicePortMap};
use sluice_proxy::proxier::{Changes, Dataplane, Error};
use sluice_tests::{eventually, Backend, ControlPlane};

/// What the dataplane was last asked to program: "ns/name:port → [ip:port…]".
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<(usize, Vec<String>)>>);

impl Dataplane for Recorder {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        _changes: &Changes,
    ) -> Result<(), Error> {
        let mut out = Vec::new();
        for (name, sp) in services {
            let eps: Vec<String> = endpoints
                .get(name)
                .map(|v| {
                    v.iter()
                        .filter(|e| e.ready)
                        .map(|e| format!("{}:{}", e.ip, e.port))
                        .collect()
                })
                .unwrap_or_default();
            out.push(format!(
                "{}/{}:{} {:?} -> {}",
                name.namespace,
                name.name,
                sp.port,
                sp.cluster_ips,
                eps.join(",")
            ));
        }
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        g.1 = out;
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "recorder"
    }
}

fn slice(name: &str, svc: &str, ips: &[&str]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

async fn proxy_loop_follows_services_and_slices(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(backend, dir.path(), &[]).unwrap();
    let client = cp.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    // Selector-less, so the control plane's EndpointSlice controller leaves our slices alone.
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    slices
        .create(
            &PostParams::default(),
            &slice("web-a", "web", &["10.244.0.5"]),
        )
        .await
        .unwrap();

    let rec = Recorder::default();
    let opts = ProxyOptions {
        node_name: "n1".into(),
        proxy_name: None,
        min_sync_period: Duration::from_millis(100),
        sync_period: Duration::from_secs(30),
    };
    let task = tokio::spawn(proxy::run(client.clone(), opts, rec.clone()));
    // Every cluster has the `kubernetes` Service (the API server's own); the test follows its.
    let state = |rec: &Recorder| -> Vec<String> {
        rec.0
            .lock()
            .unwrap()
            .1
            .iter()
            .filter(|l| !l.starts_with("default/kubernetes:"))
            .cloned()
            .collect()
    };
    eventually(
        Duration::from_secs(10),
        "first sync with the service and its endpoint",
        || async {
            (state(&rec) == ["default/web:80 [10.96.0.50] -> 10.244.0.5:8080"]).then_some(())
        },
    )
    .await;

    // A second slice for the same service merges; a headless service is skipped.
    slices
        .create(
            &PostParams::default(),
            &slice("web-b", "web", &["10.244.1.7"]),
        )
        .await
        .unwrap();
    let headless: Service = serde_json::from_value(json!({
        "metadata": {"name": "hl"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &headless)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "both slices merged", || async {
        (state(&rec) == ["default/web:80 [10.96.0.50] -> 10.244.0.5:8080,10.244.1.7:8080"])
            .then_some(())
    })
    .await;

    // Deleting the service removes it.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(10), "service removed", || async {
        state(&rec).is_empty().then_some(())
    })
    .await;
    let syncs = rec.0.lock().unwrap().0;
    assert!(syncs >= 3, "{syncs} syncs");
    task.abort();
}

sluice_tests::on_both_stores!(; async: proxy_loop_follows_services_and_slices);
