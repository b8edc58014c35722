//! `sluice-bench deployments`: the in-process Deployment and ReplicaSet controllers and the
//! scheduler, end to end (issue #11).
//!
//! Starts the real `sluice-control` (release build when the benchmark is one), then, before the
//! clock starts:
//!
//! 1. registers N Nodes (`node-<i>`, status Ready=True with a heartbeat, capacity and allocatable
//!    cpu 32, memory 128Gi, pods 110) and a Lease for each in `kube-node-lease`; the Leases are
//!    renewed every 10 s for the whole run (as a kubelet does) so the node lifecycle controller
//!    keeps the nodes Ready;
//! 2. creates the namespaces `bench-0` … `bench-<K-1>` and waits for each one's `default`
//!    ServiceAccount (the ServiceAccount controller's, so the pod creates do not race it);
//! 3. opens a watch on pods in all namespaces (its own client and connection).
//!
//! Then D Deployments × R replicas (`d<i>` in namespace `bench-<i mod K>`, pod template with
//! one container requesting cpu 100m / memory 64Mi) are created with C requests in flight. The
//! watch records, per pod, when it was first seen (its ADDED event reached the benchmark) and
//! when it was first seen with `spec.nodeName` set (bound). Measures:
//!
//! - `all_bound_s`: from sending the first Deployment create to the watch seeing the last of
//!   the D × R pods bound;
//! - `scheduler_pods_per_s`: bound pods ÷ (last pod bound − first pod seen created), both as
//!   seen by the watch. The window starts when the ReplicaSet controller's first pod exists, so
//!   it is the rate of the whole pipeline behind the Deployment creates (ReplicaSet controller
//!   creating pods + scheduler binding them), which is what the scheduler can bind no faster than;
//!   `bind_window_pods_per_s` is bound pods ÷ (last bound − first bound);
//! - per-pod scheduling latency (seen created → seen bound), p50/p99/max;
//! - pods per node (min/max/mean over all N nodes, from a final list of the pods);
//! - the server's CPU seconds (user + system, `/proc/<pid>/stat`) from the first create to all
//!   bound, and until the control plane is idle again (Deployment/ReplicaSet status updates,
//!   events); its peak RSS (`VmHWM` of `/proc/<pid>/status`, the process's high-water mark,
//!   which includes the setup) and its RSS before the creates;
//! - nodes still Ready at the end.
//!
//! Phase 2 (`--bare-pods N`, default 1,000; 0 skips), once phase 1 is idle: N pods without an
//! owner (same template) created by the benchmark client with C in flight in namespace
//! `bare-pods`, with the same measures. In phase 1 the scheduler binds each pod within
//! milliseconds of its creation, so the rate there is the ReplicaSet controller's; phase 2
//! feeds the scheduler faster than it binds and so shows its own rate.
//!
//! `--perf FILE` records the server with `perf record -g` over the timed phase (for finding
//! where the time goes; `perf report -i FILE`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use sluice_tests::ControlPlane;

use crate::{cores, cpu_s, create_all, emit, kernel, loadavg, percentile, r3, rss_mb, sorted};

/// Options of `sluice-bench deployments`.
pub struct Opts {
    pub nodes: usize,
    pub deployments: usize,
    pub replicas: usize,
    pub namespaces: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub perf: Option<PathBuf>,
    pub bare_pods: usize,
    pub out: Option<PathBuf>,
}

/// Namespace of the bare pods of phase 2.
const BARE_NS: &str = "bare-pods";

/// A `kB` field of `/proc/<pid>/status` in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What the pod watch saw, in seconds since the first Deployment create was sent.
#[derive(Default)]
struct Seen {
    /// Pod (namespace/name) → first seen.
    created: HashMap<String, f64>,
    /// Pod → first seen bound, and the node.
    bound: HashMap<String, (f64, String)>,
}

fn node(i: usize) -> anyhow::Result<Node> {
    let now = Time(Timestamp::now());
    let res = json!({"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i}"), "labels": {
            "kubernetes.io/hostname": format!("node-{i}"),
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64"}},
        "spec": {},
        "status": {
            "capacity": res, "allocatable": res,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, 1 + i % 250)}]
        }
    }))?)
}

fn lease(i: usize) -> anyhow::Result<Lease> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i}"), "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": format!("node-{i}"), "leaseDurationSeconds": 40,
                 "renewTime": MicroTime(Timestamp::now())}
    }))?)
}

fn deployment(name: &str, replicas: usize) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "deployments"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
                }]}
            }
        }
    }))?)
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// Follows pods in all namespaces from `rv`, recording into `seen` (times relative to `t0`,
/// which is set when the creates start; events before that are recorded at 0).
async fn watch_pods(
    api: Api<Pod>,
    mut rv: String,
    seen: Arc<Mutex<Seen>>,
    t0: Arc<Mutex<Option<Instant>>>,
) -> anyhow::Result<()> {
    loop {
        let mut stream = api
            .watch(&WatchParams::default().timeout(290), &rv)
            .await?
            .boxed();
        while let Some(ev) = stream.try_next().await? {
            let pod = match ev {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                WatchEvent::Deleted(p) => {
                    rv = p.metadata.resource_version.unwrap_or(rv);
                    continue;
                }
                WatchEvent::Bookmark(b) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(e) => bail!("pod watch: {e:?}"),
            };
            let now = t0
                .lock()
                .expect("t0")
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            let key = pod_key(&pod);
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty());
            let mut s = seen.lock().expect("seen");
            s.created.entry(key.clone()).or_insert(now);
            if let Some(n) = node {
                s.bound.entry(key).or_insert((now, n));
            }
            drop(s);
            rv = pod.metadata.resource_version.unwrap_or(rv);
        }
    }
}

/// Renews every node's Lease each 10 s until aborted; counts renewals and failures.
async fn renew_leases(api: Api<Lease>, nodes: usize, ok: Arc<Mutex<(usize, usize)>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        for i in 0..nodes {
            let patch = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
            let r = api
                .patch(
                    &format!("node-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
            let mut c = ok.lock().expect("lease counts");
            if r.is_ok() {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
}

async fn create_ignore_conflict<K>(api: &Api<K>, obj: &K) -> anyhow::Result<()>
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the server used less than 0.05 CPU-s in a 1 s window (at most `max`).
async fn wait_idle(pid: &str, max: Duration) -> f64 {
    let start = Instant::now();
    let mut last = cpu_s(pid);
    while start.elapsed() < max {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_s(pid);
        if now - last < 0.05 {
            break;
        }
        last = now;
    }
    start.elapsed().as_secs_f64()
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let profile = sluice_tests::target_dir();
    let cp = ControlPlane::start(dir.path(), &[])?;
    let pid_n = cp.pid().context("server pid")?;
    let pid = pid_n.to_string();
    eprintln!(
        "sluice-control pid {pid}, data dir {}",
        dir.path().display()
    );
    let client = cp.client().await?;
    let total = o.deployments * o.replicas;

    // Nodes (status written again through nodes/status in case create drops it) and Leases.
    let nodes: Api<Node> = Api::all(client.clone());
    create_all(o.nodes, 16, |i| {
        let nodes = nodes.clone();
        async move {
            let n = node(i)?;
            nodes.create(&PostParams::default(), &n).await?;
            let status = json!({"status": n.status});
            nodes
                .patch_status(
                    &format!("node-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_obj = |name: &str| -> anyhow::Result<Namespace> {
        Ok(serde_json::from_value(json!({"metadata": {"name": name}}))?)
    };
    create_ignore_conflict(&namespaces, &ns_obj("kube-node-lease")?).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    create_all(o.nodes, 16, |i| {
        let leases = leases.clone();
        async move { create_ignore_conflict(&leases, &lease(i)?).await }
    })
    .await?;
    let lease_counts = Arc::new(Mutex::new((0usize, 0usize)));
    let renewer = tokio::spawn(renew_leases(leases, o.nodes, lease_counts.clone()));

    let ns_names: Vec<String> = (0..o.namespaces.max(1))
        .map(|k| format!("bench-{k}"))
        .collect();
    let mut all_ns = ns_names.clone();
    if o.bare_pods > 0 {
        all_ns.push(BARE_NS.to_string());
    }
    for ns in &all_ns {
        create_ignore_conflict(&namespaces, &ns_obj(ns)?).await?;
    }
    let sa_wait = Instant::now();
    for ns in &all_ns {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        while sas.get_opt("default").await?.is_none() {
            if sa_wait.elapsed() > Duration::from_secs(30) {
                bail!("no default ServiceAccount in {ns} after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let the node lifecycle controller and friends see the nodes before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready_before = count_ready(&nodes).await?;
    eprintln!(
        "{} nodes registered ({ready_before} Ready), {} namespaces; creating {} deployments × {} replicas…",
        o.nodes,
        ns_names.len(),
        o.deployments,
        o.replicas
    );

    // The pod watch, on its own connection.
    let watch_client = cp.client().await?;
    let all_pods: Api<Pod> = Api::all(watch_client);
    let rv = all_pods
        .list_metadata(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t0_cell: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let watcher = tokio::spawn(watch_pods(
        all_pods.clone(),
        rv,
        seen.clone(),
        t0_cell.clone(),
    ));

    let mut perf = match &o.perf {
        Some(path) => Some(
            std::process::Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "299",
                    "--call-graph",
                    "dwarf,32768",
                    "-p",
                    &pid,
                    "-o",
                ])
                .arg(path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("spawning perf record")?,
        ),
        None => None,
    };
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let rss_before = rss_mb(pid_n)?;
    let cpu0 = cpu_s(&pid);
    let self_cpu0 = cpu_s("self");
    let t0 = Instant::now();
    *t0_cell.lock().expect("t0") = Some(t0);
    let ns_count = ns_names.len();
    let create_took = create_all(o.deployments, o.concurrency, |i| {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns_names[i % ns_count]);
        let replicas = o.replicas;
        async move {
            api.create(
                &PostParams::default(),
                &deployment(&format!("d{i}"), replicas)?,
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "{} deployments created in {:.2} s",
        o.deployments,
        create_took.as_secs_f64()
    );

    // Wait for every pod bound, printing progress.
    let mut last_print = Instant::now();
    loop {
        let (c, b) = {
            let s = seen.lock().expect("seen");
            (s.created.len(), s.bound.len())
        };
        if b >= total {
            break;
        }
        if watcher.is_finished() {
            watcher.await??;
            bail!("the pod watch ended");
        }
        if t0.elapsed() > o.timeout {
            bail!(
                "after {:.0} s: {c} pods seen, {b} bound of {total}",
                o.timeout.as_secs_f64()
            );
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("  {:.1} s: {c} pods, {b} bound", t0.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_bound = t0.elapsed().as_secs_f64();
    let cpu_bound = cpu_s(&pid) - cpu0;
    let self_cpu_bound = cpu_s("self") - self_cpu0;
    let hwm_bound = status_mb(pid_n, "VmHWM:");
    eprintln!("all {total} pods bound {all_bound:.2} s after the first create (server CPU {cpu_bound:.2} s); waiting for the control plane to go idle…");
    let idle_after = wait_idle(&pid, Duration::from_secs(60)).await;
    let cpu_idle = cpu_s(&pid) - cpu0;
    let settled = t0.elapsed().as_secs_f64();
    if let Some(mut p) = perf.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = p.wait();
    }
    let hwm = status_mb(pid_n, "VmHWM:");
    let rss_end = rss_mb(pid_n)?;

    // Phase 2: the scheduler alone — bare pods created by the client.
    let bare = if o.bare_pods > 0 {
        bare_pods(&o, &client, &pid, &seen, &t0, &watcher).await?
    } else {
        serde_json::Value::Null
    };
    watcher.abort();
    renewer.abort();

    // The final state, from lists.
    let listed = all_pods.list(&ListParams::default()).await?;
    let mut per_node: BTreeMap<String, usize> =
        (0..o.nodes).map(|i| (format!("node-{i}"), 0)).collect();
    let mut unbound = 0;
    for p in &listed.items {
        if p.metadata.namespace.as_deref() == Some(BARE_NS) {
            continue;
        }
        match p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() => *per_node.entry(n.to_string()).or_default() += 1,
            _ => unbound += 1,
        }
    }
    let counts: Vec<usize> = per_node.values().copied().collect();
    let (pmin, pmax) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    let ready_after = count_ready(&nodes).await?;
    let deploys: Api<Deployment> = Api::all(client.clone());
    let dl = deploys.list(&ListParams::default()).await?;
    let deploys_complete = dl
        .items
        .iter()
        .filter(|d| {
            d.status
                .as_ref()
                .is_some_and(|s| s.replicas.unwrap_or(0) as usize == o.replicas)
        })
        .count();
    let (renewed, renew_failed) = *lease_counts.lock().expect("lease counts");

    let mut s = seen.lock().expect("seen");
    let bare_prefix = format!("{BARE_NS}/");
    s.created.retain(|k, _| !k.starts_with(&bare_prefix));
    s.bound.retain(|k, _| !k.starts_with(&bare_prefix));
    let first_created = s.created.values().copied().fold(f64::INFINITY, f64::min);
    let first_bound = s.bound.values().map(|b| b.0).fold(f64::INFINITY, f64::min);
    let last_bound = s.bound.values().map(|b| b.0).fold(0.0, f64::max);
    let last_created = s.created.values().copied().fold(0.0, f64::max);
    let lat = sorted(
        &s.bound
            .iter()
            .filter_map(|(k, (t, _))| s.created.get(k).map(|c| (t - c) * 1000.0))
            .collect::<Vec<_>>(),
    );
    let bound_n = s.bound.len();
    // Pods created and bound per second of the run (as seen by the watch).
    let secs = last_bound.ceil() as usize;
    let mut timeline = Vec::new();
    for sec in 0..secs.max(1) {
        let (a, b) = (sec as f64, sec as f64 + 1.0);
        let c = s.created.values().filter(|&&t| t >= a && t < b).count();
        let bd = s.bound.values().filter(|(t, _)| *t >= a && *t < b).count();
        timeline.push(json!({"s": sec, "created": c, "bound": bd}));
    }
    drop(s);
    let rate = bound_n as f64 / (last_bound - first_created);
    let bind_rate = bound_n as f64 / (last_bound - first_bound);
    eprintln!(
        "{bound_n} bound: {rate:.0} pods/s (first pod created → last bound, {:.2} s); pods per node {pmin}..{pmax}; CPU {cpu_bound:.2} s to all bound, {cpu_idle:.2} s to idle; peak RSS {hwm:.1} MB",
        last_bound - first_created
    );

    let result = json!({
        "benchmark": "deployments",
        "method": "real sluice-control (one process: API server, Deployment/ReplicaSet controllers, scheduler, garbage collector, node lifecycle); N Ready nodes with Leases renewed every 10 s; D deployments × R replicas created with C requests in flight, deployment i in namespace bench-<i mod K>; a watch on pods in all namespaces (own connection) timestamps each pod when first seen and when first seen with spec.nodeName; times are seconds from sending the first deployment create",
        "server_binary_profile": profile.file_name().map(|p| p.to_string_lossy().to_string()),
        "kernel": kernel(),
        "cores": cores(),
        "nodes": o.nodes,
        "deployments": o.deployments,
        "replicas": o.replicas,
        "namespaces": ns_count,
        "concurrency": o.concurrency,
        "pods": total,
        "deployments_created_s": r3(create_took.as_secs_f64()),
        "first_pod_seen_s": r3(first_created),
        "last_pod_seen_s": r3(last_created),
        "first_pod_bound_s": r3(first_bound),
        "all_bound_s": r3(all_bound),
        "scheduler_pods_per_s": rate.round(),
        "scheduler_pods_per_s_definition": "bound pods / (last pod seen bound - first pod seen created), both by the watch; includes the ReplicaSet controller's pod creation, since pods are bound as they are created",
        "bind_window_pods_per_s": bind_rate.round(),
        "bind_window_pods_per_s_definition": "bound pods / (last pod seen bound - first pod seen bound)",
        "scheduling_latency_ms": {
            "definition": "per pod: seen bound - seen created",
            "p50": r3(percentile(&lat, 0.5)),
            "p99": r3(percentile(&lat, 0.99)),
            "max": r3(lat.last().copied().unwrap_or(f64::NAN)),
        },
        "pods_per_node": {
            "min": pmin,
            "max": pmax,
            "mean": r3(counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64),
            "unbound_in_final_list": unbound,
        },
        "server_cpu_s": {
            "to_all_bound": r3(cpu_bound),
            "to_idle": r3(cpu_idle),
            "bench_client_to_all_bound": r3(self_cpu_bound),
            "idle_at_s": r3(settled),
            "idle_wait_s": r3(idle_after),
        },
        "server_rss_mb": {
            "before_creates": r3(rss_before),
            "peak_vmhwm_at_all_bound": r3(hwm_bound),
            "peak_vmhwm": r3(hwm),
            "at_end": r3(rss_end),
        },
        "nodes_ready": {"before": ready_before, "after": ready_after},
        "lease_renewals": {"ok": renewed, "failed": renew_failed},
        "deployments_with_status_replicas": deploys_complete,
        "targets": {
            "pods_per_s_min": 300,
            "rss_mb_max": 300,
            "pods_per_s_met": rate >= 300.0,
            "rss_met": hwm <= 300.0,
        },
        "timeline_per_s": timeline,
        "scheduler_only_bare_pods": bare,
        "loadavg": loadavg(),
    });
    emit(&result, o.out.as_deref())?;
    drop(cp);
    dir.close()?;
    Ok(())
}

/// Phase 2: `o.bare_pods` pods without an owner created by the client at `o.concurrency`;
/// the same measures as phase 1, so the scheduler's own rate shows apart from the ReplicaSet
/// controller's.
async fn bare_pods(
    o: &Opts,
    client: &kube::Client,
    pid: &str,
    seen: &Mutex<Seen>,
    t0: &Instant,
    watcher: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<serde_json::Value> {
    let n = o.bare_pods;
    let prefix = format!("{BARE_NS}/");
    let pods: Api<Pod> = Api::namespaced(client.clone(), BARE_NS);
    eprintln!(
        "phase 2: {n} bare pods created by the client ({} in flight)…",
        o.concurrency
    );
    let cpu0 = cpu_s(pid);
    let start = t0.elapsed().as_secs_f64();
    let took = create_all(n, o.concurrency, |i| {
        let pods = pods.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("bare-{i}"), "labels": {"app": "bare"}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
                }]}
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    loop {
        let b = seen
            .lock()
            .expect("seen")
            .bound
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .count();
        if b >= n {
            break;
        }
        if watcher.is_finished() {
            bail!("the pod watch ended");
        }
        if t0.elapsed().as_secs_f64() - start > o.timeout.as_secs_f64() {
            bail!("phase 2: {b} of {n} bare pods bound after the timeout");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_bound = t0.elapsed().as_secs_f64() - start;
    let cpu = cpu_s(pid) - cpu0;
    let s = seen.lock().expect("seen");
    let created: Vec<f64> = s
        .created
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, t)| *t)
        .collect();
    let bound: Vec<(&String, f64)> = s
        .bound
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, b)| (k, b.0))
        .collect();
    let first_created = created.iter().copied().fold(f64::INFINITY, f64::min);
    let last_created = created.iter().copied().fold(0.0, f64::max);
    let first_bound = bound.iter().map(|b| b.1).fold(f64::INFINITY, f64::min);
    let last_bound = bound.iter().map(|b| b.1).fold(0.0, f64::max);
    let lat = sorted(
        &bound
            .iter()
            .filter_map(|(k, t)| s.created.get(*k).map(|c| (t - c) * 1000.0))
            .collect::<Vec<_>>(),
    );
    let rate = bound.len() as f64 / (last_bound - first_created);
    eprintln!(
        "phase 2: {n} bare pods created in {:.2} s, all bound {all_bound:.2} s after the first create: {rate:.0} pods/s; server CPU {cpu:.2} s",
        took.as_secs_f64()
    );
    Ok(json!({
        "definition": "after phase 1 went idle: N pods without an owner (same template) created by the benchmark client, C in flight, in namespace bare-pods; same measures as phase 1, times from sending the first pod create",
        "pods": n,
        "created_s": r3(took.as_secs_f64()),
        "last_pod_seen_s": r3(last_created - start),
        "all_bound_s": r3(all_bound),
        "scheduler_pods_per_s": rate.round(),
        "bind_window_pods_per_s": (bound.len() as f64 / (last_bound - first_bound)).round(),
        "scheduling_latency_ms": {
            "p50": r3(percentile(&lat, 0.5)),
            "p99": r3(percentile(&lat, 0.99)),
            "max": r3(lat.last().copied().unwrap_or(f64::NAN)),
        },
        "server_cpu_s": r3(cpu),
        "server_rss_mb_vmhwm": r3(status_mb(pid.parse().unwrap_or(0), "VmHWM:")),
    }))
}

/// How many nodes report Ready=True.
pub(crate) async fn count_ready(nodes: &Api<Node>) -> anyhow::Result<usize> {
    Ok(nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count())
}
