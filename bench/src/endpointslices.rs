//! `sluice-bench endpointslices`: the EndpointSlice controller with many Pods and selector
//! Services in one namespace.
//!
//! Starts the real `sluice-control`, creates P Pods (`app=s<i mod S>`, a container with an env
//! var, then a status with a pod IP and Ready), then S Services selecting `app=s<i>`, and times
//! from the first Service create to every Service having its EndpointSlice with its
//! endpoints (the slices are listed every 100 ms). Also reports the server's CPU seconds over
//! that span. Every Service reconcile needs its Pods; before the controller kept an index, each
//! listed and parsed every Pod of the namespace (S × P parses).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice_tests::ControlPlane;

use crate::{cpu_s, create_all, emit};

/// Options of `sluice-bench endpointslices`.
pub struct Opts {
    pub pods: usize,
    pub services: usize,
    pub concurrency: usize,
    pub out: Option<PathBuf>,
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path(), &[])?;
    let pid = cp.pid().context("server pid")?.to_string();
    let client = cp.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let n_svc = o.services;
    let pods_took = create_all(o.pods, o.concurrency, |i| {
        let pods = pods.clone();
        async move {
            let name = format!("p{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": format!("s{}", i % n_svc)}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                          "env": [{"name": "PAD", "value": "x".repeat(200)}]}]}
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            let status = json!({"status": {
                "phase": "Running",
                "podIP": format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
                "conditions": [{"type": "Ready", "status": "True"}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "{} pods created and running in {:.1} s",
        o.pods,
        pods_took.as_secs_f64()
    );

    let cpu0 = cpu_s(&pid);
    let t0 = Instant::now();
    let svc_took = create_all(n_svc, o.concurrency, |i| {
        let services = services.clone();
        async move {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("s{i}")},
                "spec": {"selector": {"app": format!("s{i}")}, "ports": [{"port": 80}]}
            }))?;
            services.create(&PostParams::default(), &svc).await?;
            Ok(())
        }
    })
    .await?;
    let (done, endpoints) = loop {
        let list = slices.list(&ListParams::default()).await?;
        let endpoints: usize = list.items.iter().map(|s| s.endpoints.len()).sum();
        if list.items.len() >= n_svc && endpoints >= o.pods {
            break (t0.elapsed(), endpoints);
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "after 600 s: {} slices with {endpoints} endpoints",
                list.items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = cpu_s(&pid) - cpu0;
    eprintln!(
        "{n_svc} services: all slices with all {endpoints} endpoints {:.2} s after the first create; server CPU {cpu:.2} s",
        done.as_secs_f64()
    );
    emit(
        &json!({
            "benchmark": "endpointslices",
            "method": "real sluice-control (release build), one namespace: P pods (created, then status Running/Ready with a pod IP), then S services selecting P/S pods each; time from the first service create until the slices list (polled every 100 ms) holds S slices with all P endpoints; server CPU from /proc over that span",
            "pods": o.pods,
            "services": n_svc,
            "concurrency": o.concurrency,
            "pods_ready_s": pods_took.as_secs_f64(),
            "services_created_s": svc_took.as_secs_f64(),
            "all_slices_s": done.as_secs_f64(),
            "server_cpu_s": cpu,
            "endpoints": endpoints,
        }),
        o.out.as_deref(),
    )
}
