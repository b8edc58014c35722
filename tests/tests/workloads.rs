//! Workloads end to end, as an operator sees them through kubectl: Deployments with their
//! ReplicaSets and Pods, the scheduler binding pods to nodes, rollouts and undo, server-side
//! apply with its conflicts, Events, cascading deletion, authorization, and a node that stops
//! reporting (its unreachable taints, eviction and replacement elsewhere).
//!
//! Two fake kubelets stand in for real nodes, each with its own node credentials
//! (`system:node:<name>` in `system:nodes`, minted by `sluice-control token create`): each
//! registers its Node (Ready, with allocatable cpu/memory/pods), renews its Lease in
//! `kube-node-lease`, reports every pod bound to it as Running and Ready (a pod status write)
//! and confirms graceful deletions with a zero-grace delete, as kubelet does. No container
//! ever runs.
//!
//! Each kubectl version gets its own control plane, data directory and HOME (kubectl caches
//! discovery there). The preinstalled kubectl (the newest of the image, 1.32 or later) and
//! Debian's kubectl 1.20 both run the whole transcript: every command used exists in 1.20
//! (`create deployment --replicas` since 1.19, `apply --server-side` and `--force-conflicts`
//! since 1.18, `rollout status|history|undo`, `set image`, `expose`, `auth can-i`, `get
//! events --field-selector`), so 1.20 skips no step. What differs is wording the assertions do
//! not depend on: the field manager a conflict names (from the User-Agent: `kubectl` for 1.20,
//! the binary's name such as `kubectl.1.33` for the preinstalled one), the documentation link
//! under a conflict, and `describe`'s extra pod-template lines in newer versions.
//!
//! Steps: (1) nodes n1 and n2 register and turn Ready; (2) `create namespace`, `create
//! deployment --replicas=3`, `expose`, `get all` (3/3, the ReplicaSet, 3 pods Running, the
//! Service) and `get pods -o wide` (NODE and IP set); (3) `scale` to 5, pods spread ≥ 2 per
//! node; (4) `set image`, `rollout status`, `rollout history` (1, 2), `rollout undo`, back on
//! the old image; (5) `apply --server-side` create and change, `scale`, a conflict naming
//! `.spec.replicas`, `--force-conflicts`; (6) `describe` and `get events` (ScalingReplicaSet,
//! Scheduled, SuccessfulCreate; every ReplicaSet scaling has its event); (7) `delete
//! deployment` removes its ReplicaSets and Pods; (8) `auth can-i` as admin and as a node;
//! (9) n2 goes silent: Ready=Unknown (NotReady), unreachable NoSchedule+NoExecute taints, the
//! pod tolerating that for 2 s is evicted and replaced on n1, pods with the default 300 s
//! toleration stay, new pods land on n1 only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{json, Value};
use sluice_tests::{bin, client_from, eventually, skip, text, Backend, ControlPlane, Kubectl};

/// Seconds without a heartbeat before a node's Ready condition becomes Unknown: short, so the
/// node-failure step does not wait 40 s; the fake kubelets renew their Leases every 500 ms.
const GRACE: &str = "5";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Polls `f` until it answers Ok or `timeout` passes; then panics with its last complaint.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// RFC 3339 with microseconds, as Lease `renewTime` (a MicroTime) is written.
fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// RFC 3339 in seconds, as a Time field (condition times, `startTime`) is written.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A fake kubelet: registers its Node and Lease with the node's own client, then heartbeats and
/// reports pods until `alive` is cleared.
struct FakeKubelet {
    alive: Arc<AtomicBool>,
}

impl FakeKubelet {
    async fn start(client: kube::Client, name: &str, index: u8) -> FakeKubelet {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"
            }}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let resources = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        let status = json!({"status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": format!("192.0.2.{index}")},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "kubeProxyVersion": "v1.32.0",
                         "containerRuntimeVersion": "fake://0", "osImage": "fake", "kernelVersion": "0",
                         "operatingSystem": "linux", "architecture": "amd64", "machineID": "",
                         "systemUUID": "", "bootID": ""}
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
        }))
        .unwrap();
        leases.create(&PostParams::default(), &lease).await.unwrap();
        // Pod IPs come from the podCIDR the control plane gives the node (`10.244.N.0/24`).
        let cidr = eventually(Duration::from_secs(10), "the node's podCIDR", || async {
            nodes.get(name).await.ok()?.spec?.pod_cidr
        })
        .await;
        let pod_net = cidr
            .strip_suffix(".0/24")
            .unwrap_or_else(|| panic!("podCIDR {cidr}"))
            .to_string();

        let alive = Arc::new(AtomicBool::new(true));
        // Heartbeats.
        {
            let alive = alive.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                while alive.load(Ordering::SeqCst) {
                    let renew = Patch::Merge(json!({"spec": {"renewTime": micro_now()}}));
                    let _ = leases.patch(&name, &PatchParams::default(), &renew).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        // Pod status and graceful-deletion confirmations.
        {
            let alive = alive.clone();
            let name = name.to_string();
            let ips = AtomicU32::new(1);
            tokio::spawn(async move {
                let all: Api<Pod> = Api::all(client.clone());
                let on_node = ListParams::default().fields(&format!("spec.nodeName={name}"));
                while alive.load(Ordering::SeqCst) {
                    if let Ok(list) = all.list(&on_node).await {
                        for p in list.items {
                            if !alive.load(Ordering::SeqCst) {
                                break;
                            }
                            let ns = p.metadata.namespace.clone().unwrap_or_default();
                            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                            let pod = p.metadata.name.clone().unwrap_or_default();
                            if p.metadata.deletion_timestamp.is_some() {
                                let dp = DeleteParams {
                                    grace_period_seconds: Some(0),
                                    preconditions: Some(Preconditions {
                                        uid: p.metadata.uid.clone(),
                                        resource_version: None,
                                    }),
                                    ..Default::default()
                                };
                                let _ = pods.delete(&pod, &dp).await;
                            } else if !running_and_ready(&p) {
                                let n = ips.fetch_add(1, Ordering::SeqCst);
                                let status = running_status(&p, index, &pod_net, n);
                                let _ = pods
                                    .patch_status(
                                        &pod,
                                        &PatchParams::default(),
                                        &Patch::Merge(status),
                                    )
                                    .await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
        }
        FakeKubelet { alive }
    }

    /// The node goes silent: no more heartbeats, pod status or deletion confirmations.
    fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn running_and_ready(p: &Pod) -> bool {
    let Some(s) = &p.status else { return false };
    s.phase.as_deref() == Some("Running")
        && s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The status kubelet would report for a pod whose containers all started: phase Running,
/// Initialized/ContainersReady/Ready True (PodScheduled kept), container statuses ready.
fn running_status(p: &Pod, node_index: u8, pod_net: &str, n: u32) -> Value {
    let now = now();
    let mut conditions: Vec<Value> = p
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| !["Initialized", "ContainersReady", "Ready"].contains(&c.type_.as_str()))
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    for t in ["Initialized", "ContainersReady", "Ready"] {
        conditions.push(json!({"type": t, "status": "True", "lastTransitionTime": now}));
    }
    let containers: Vec<Value> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}}
            })
        })
        .collect();
    let ip = format!("{pod_net}.{}", n % 250 + 2);
    json!({"status": {
        "phase": "Running",
        "hostIP": format!("192.0.2.{node_index}"),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": containers,
    }})
}

/// Mints node `name`'s credentials and writes its kubeconfig.
fn node_kubeconfig(cp: &ControlPlane, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let o = std::process::Command::new(bin("sluice-control"))
        .args(["token", "create", "--node", name, "--data-dir"])
        .arg(&cp.dir)
        .arg("--kubeconfig-out")
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    path
}

fn api_deployment(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: api
  template:
    metadata:
      labels:
        app: api
    spec:
      containers:
      - name: api
        image: {image}
"#
    )
}

/// A Deployment whose pods tolerate an unreachable node for 2 s only.
const TOLERANT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: tolerant
spec:
  replicas: 2
  selector:
    matchLabels:
      app: tolerant
  template:
    metadata:
      labels:
        app: tolerant
    spec:
      tolerations:
      - key: node.kubernetes.io/unreachable
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 2
      containers:
      - name: c
        image: nginx:1.27
"#;

/// One pod as `get pods -o custom-columns` shows it.
#[derive(Debug, Clone)]
struct PodRow {
    name: String,
    node: String,
    phase: String,
    image: String,
    terminating: bool,
}

const POD_COLUMNS: &str = "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,\
PHASE:.status.phase,IMAGE:.spec.containers[0].image,DELETING:.metadata.deletionTimestamp";

fn parse_pods(s: &str) -> Vec<PodRow> {
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.len() == 5).then(|| PodRow {
                name: c[0].into(),
                node: c[1].into(),
                phase: c[2].into(),
                image: c[3].into(),
                terminating: c[4] != "<none>",
            })
        })
        .collect()
}

fn per_node(pods: &[PodRow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods {
        *m.entry(p.node.clone()).or_insert(0) += 1;
    }
    m
}

/// Checks that the ScalingReplicaSet events in `events` (`get events -o custom-columns=
/// REASON,COUNT,MESSAGE`) about ReplicaSet `rs` describe a walk of its size from 0 to `size`:
/// in the multigraph of sizes with one edge per scaling (times its count), every size is
/// entered as often as it is left, except 0 (left once more) and `size` (entered once more).
fn scaling_walk(events: &str, rs: &str, size: i64) -> Result<(), String> {
    let mut balance: BTreeMap<i64, i64> = BTreeMap::new();
    for l in events.lines().skip(1) {
        let mut cells = l.split_whitespace();
        if cells.next() != Some("ScalingReplicaSet") {
            continue;
        }
        let count: i64 = cells.next().and_then(|c| c.parse().ok()).unwrap_or(1);
        let message = cells.collect::<Vec<_>>().join(" ");
        let Some(step) = ["up", "down"]
            .iter()
            .find_map(|d| message.strip_prefix(&format!("Scaled {d} replica set {rs} from ")))
        else {
            continue;
        };
        let (from, to) = step
            .split_once(" to ")
            .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
            .ok_or_else(|| format!("unparsable: {message}"))?;
        *balance.entry(from).or_default() -= count;
        *balance.entry(to).or_default() += count;
    }
    *balance.entry(0).or_default() += 1;
    *balance.entry(size).or_default() -= 1;
    balance.retain(|_, b| *b != 0);
    if balance.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not a walk from 0 to {size}: sizes entered minus left (less the ends): {balance:?}"
        ))
    }
}

/// The whole transcript against its own control plane.
fn transcript(backend: Backend, k: &Kubectl) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(
        backend,
        &dir.path().join("data"),
        &[
            "--node-monitor-grace-period",
            GRACE,
            "--node-monitor-period",
            "1",
        ],
    )
    .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kc = cp.kubeconfig.clone();
    let label = k.label.clone();
    let run = |args: &[&str]| k.run(&kc, &home, args);
    let run_in = |args: &[&str], input: &str| k.run_stdin(&kc, &home, args, input);
    let ok = |o: Output| -> String {
        assert!(o.status.success(), "{label}: {}", text(&o));
        stdout(&o)
    };
    let lines_of = |o: Output| -> Result<String, String> {
        if o.status.success() {
            Ok(stdout(&o))
        } else {
            Err(text(&o))
        }
    };
    let pods = |selector: &str| -> Result<Vec<PodRow>, String> {
        lines_of(run(&[
            "-n",
            "shop",
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            POD_COLUMNS,
        ]))
        .map(|s| parse_pods(&s))
    };
    println!(
        "{label}: {}",
        ok(run(&["version", "--client"]))
            .lines()
            .next()
            .unwrap_or("")
    );

    // 1. Two fake kubelets with their own node credentials.
    let n1_kc = node_kubeconfig(&cp, dir.path(), "n1");
    let n2_kc = node_kubeconfig(&cp, dir.path(), "n2");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_n1, n2) = rt.block_on(async {
        let c1 = client_from(&n1_kc).await.unwrap();
        let c2 = client_from(&n2_kc).await.unwrap();
        (
            FakeKubelet::start(c1, "n1", 1).await,
            FakeKubelet::start(c2, "n2", 2).await,
        )
    });
    poll(Duration::from_secs(15), "both nodes Ready", || {
        let s = lines_of(run(&["get", "nodes"]))?;
        let ready = s
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
            .count();
        (ready == 2).then_some(()).ok_or(s)
    });

    // 2. A namespace, a Deployment of 3 and its Service.
    let s = ok(run(&["create", "namespace", "shop"]));
    assert!(s.contains("namespace/shop created"), "{s}");
    let s = ok(run(&[
        "-n",
        "shop",
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=3",
    ]));
    assert!(s.contains("deployment.apps/web created"), "{s}");
    let s = ok(run(&[
        "-n",
        "shop",
        "expose",
        "deployment",
        "web",
        "--port=80",
    ]));
    assert!(s.contains("service/web exposed"), "{s}");
    let all = poll(
        Duration::from_secs(30),
        "get all: deployment 3/3, 3 pods Running",
        || {
            let s = lines_of(run(&["-n", "shop", "get", "all"]))?;
            let deploy_ready = s.lines().any(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.first() == Some(&"deployment.apps/web") && c.get(1) == Some(&"3/3")
            });
            let running = s
                .lines()
                .filter(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    c.first().is_some_and(|n| n.starts_with("pod/web-"))
                        && c.get(1) == Some(&"1/1")
                        && c.get(2) == Some(&"Running")
                })
                .count();
            (deploy_ready && running == 3).then_some(s.clone()).ok_or(s)
        },
    );
    let rs_row = all
        .lines()
        .find(|l| l.starts_with("replicaset.apps/web-"))
        .unwrap_or_else(|| panic!("{label}: get all lacks the replicaset: {all}"));
    assert_eq!(
        rs_row.split_whitespace().collect::<Vec<_>>()[1..4],
        ["3", "3", "3"],
        "{label}: replicaset DESIRED/CURRENT/READY: {all}"
    );
    let svc_row = all
        .lines()
        .find(|l| l.starts_with("service/web "))
        .unwrap_or_else(|| panic!("{label}: get all lacks the service: {all}"));
    assert!(
        svc_row.contains("ClusterIP") && svc_row.contains("80/TCP"),
        "{svc_row}"
    );
    let wide = ok(run(&["-n", "shop", "get", "pods", "-o", "wide"]));
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    let node_col = header
        .iter()
        .position(|h| *h == "NODE")
        .unwrap_or_else(|| panic!("{wide}"));
    let ip_col = header.iter().position(|h| *h == "IP").unwrap();
    for l in wide.lines().skip(1) {
        let c: Vec<&str> = l.split_whitespace().collect();
        assert!(
            ["n1", "n2"].contains(&c[node_col]),
            "{label}: pod without a node: {wide}"
        );
        assert!(c[ip_col].starts_with("10.244."), "{wide}");
    }

    // 3. Scale to 5: bound and spread over both nodes.
    let s = ok(run(&[
        "-n",
        "shop",
        "scale",
        "deployment",
        "web",
        "--replicas=5",
    ]));
    assert!(s.contains("deployment.apps/web scaled"), "{s}");
    let web = poll(Duration::from_secs(30), "5 web pods Running", || {
        let p = pods("app=web")?;
        (p.len() == 5 && p.iter().all(|p| p.phase == "Running"))
            .then_some(p.clone())
            .ok_or(format!("{p:?}"))
    });
    let spread = per_node(&web);
    assert!(
        spread.get("n1") >= Some(&2) && spread.get("n2") >= Some(&2),
        "{label}: pods of one owner not spread: {spread:?}"
    );

    // 4. Rollout to a new image, history, undo.
    let s = ok(run(&[
        "-n",
        "shop",
        "set",
        "image",
        "deployment/web",
        "nginx=nginx:1.28",
    ]));
    assert!(s.contains("deployment.apps/web image updated"), "{s}");
    let s = ok(run(&[
        "-n",
        "shop",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=60s",
    ]));
    assert!(s.contains("successfully rolled out"), "{label}: {s}");
    let s = ok(run(&["-n", "shop", "rollout", "history", "deployment/web"]));
    let revisions: Vec<&str> = s
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| r.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "2"], "{label}: rollout history: {s}");
    let s = ok(run(&["-n", "shop", "rollout", "undo", "deployment/web"]));
    assert!(s.contains("deployment.apps/web rolled back"), "{s}");
    let s = ok(run(&[
        "-n",
        "shop",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=60s",
    ]));
    assert!(s.contains("successfully rolled out"), "{label}: {s}");
    poll(
        Duration::from_secs(30),
        "5 web pods on nginx:1.27 after undo",
        || {
            let p = pods("app=web")?;
            (p.len() == 5
                && p.iter()
                    .all(|p| p.image == "nginx:1.27" && p.phase == "Running" && !p.terminating))
            .then_some(())
            .ok_or(format!("{p:?}"))
        },
    );
    let s = ok(run(&["-n", "shop", "rollout", "history", "deployment/web"]));
    assert!(
        s.lines().any(|l| l.split_whitespace().next() == Some("3")),
        "{label}: undo makes revision 3: {s}"
    );

    // 5. Server-side apply: create, change, a conflict over .spec.replicas, forced.
    let s = ok(run_in(
        &["-n", "shop", "apply", "--server-side", "-f", "-"],
        &api_deployment("nginx:1.27", 2),
    ));
    assert!(s.contains("deployment.apps/api serverside-applied"), "{s}");
    let s = ok(run_in(
        &["-n", "shop", "apply", "--server-side", "-f", "-"],
        &api_deployment("nginx:1.28", 2),
    ));
    assert!(s.contains("deployment.apps/api serverside-applied"), "{s}");
    let image = ok(run(&[
        "-n",
        "shop",
        "get",
        "deployment",
        "api",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]));
    assert_eq!(image.trim(), "nginx:1.28");
    ok(run(&[
        "-n",
        "shop",
        "scale",
        "deployment",
        "api",
        "--replicas=4",
    ]));
    let o = run_in(
        &["-n", "shop", "apply", "--server-side", "-f", "-"],
        &api_deployment("nginx:1.28", 2),
    );
    assert!(
        !o.status.success(),
        "{label}: expected a conflict: {}",
        text(&o)
    );
    let e = String::from_utf8_lossy(&o.stderr);
    println!("{label}: server-side apply conflict: {}", e.trim());
    assert!(
        e.contains("conflict") && e.contains(".spec.replicas"),
        "{label}: {}",
        text(&o)
    );
    let s = ok(run_in(
        &[
            "-n",
            "shop",
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &api_deployment("nginx:1.28", 2),
    ));
    assert!(s.contains("deployment.apps/api serverside-applied"), "{s}");
    let replicas = ok(run(&[
        "-n",
        "shop",
        "get",
        "deployment",
        "api",
        "-o",
        "jsonpath={.spec.replicas}",
    ]));
    assert_eq!(replicas.trim(), "2");

    // 6. Events: the Deployment's scaling, the scheduler's and the ReplicaSet's.
    let s = ok(run(&["-n", "shop", "describe", "deployment", "web"]));
    assert!(s.contains("ScalingReplicaSet"), "{label}: describe: {s}");
    let s = ok(run(&["-n", "shop", "get", "events"]));
    for reason in ["Scheduled", "SuccessfulCreate", "ScalingReplicaSet"] {
        assert!(
            s.contains(reason),
            "{label}: get events lacks {reason}: {s}"
        );
    }
    // Every scaling of a ReplicaSet is reported, also when the Deployment changed meanwhile:
    // the Deployment's "Scaled up|down replica set R from A to B" events, each with its count
    // (a repeat is one Event with a higher count), must add up to a walk from 0 to R's present
    // size — every size entered as often as left, apart from those two ends. The rollout may
    // still be scaling (the last apply changed the replicas), and an Event is written just
    // after the scale it reports, so events and sizes are read again until they agree: a
    // scaling that is never reported still fails, after the timeout.
    for deploy in ["web", "api"] {
        poll(
            Duration::from_secs(20),
            &format!("{label}: ScalingReplicaSet events of {deploy} adding up"),
            || {
                let selector =
                    format!("involvedObject.kind=Deployment,involvedObject.name={deploy}");
                let events = lines_of(run(&[
                    "-n",
                    "shop",
                    "get",
                    "events",
                    "--field-selector",
                    &selector,
                    "-o",
                    "custom-columns=REASON:.reason,COUNT:.count,MESSAGE:.message",
                ]))?;
                let sizes = lines_of(run(&[
                    "-n",
                    "shop",
                    "get",
                    "rs",
                    "-l",
                    &format!("app={deploy}"),
                    "-o",
                    "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas",
                ]))?;
                for rs in sizes.lines().skip(1) {
                    let [name, size] = rs.split_whitespace().collect::<Vec<_>>()[..] else {
                        return Err(format!("unexpected rs listing: {sizes}"));
                    };
                    let size: i64 = size.parse().map_err(|e| format!("{size}: {e}"))?;
                    scaling_walk(&events, name, size)
                        .map_err(|e| format!("{name} at {size}: {e}\n{events}"))?;
                }
                Ok(())
            },
        );
    }

    // 7. Deleting the Deployment takes its ReplicaSets and Pods with it.
    let s = ok(run(&["-n", "shop", "delete", "deployment", "web"]));
    assert!(s.contains("\"web\" deleted"), "{s}");
    poll(Duration::from_secs(30), "no rs or pods of web", || {
        let o = run(&["-n", "shop", "get", "rs,pods", "-l", "app=web"]);
        let s = lines_of(o)?;
        s.trim().is_empty().then_some(()).ok_or(s)
    });

    // 8. Authorization: the administrator may create deployments, a node may not.
    let can_i = |kubeconfig: &Path, args: &[&str]| -> String {
        let mut a = vec!["auth", "can-i"];
        a.extend(args);
        // can-i exits 1 for "no"; its answer is the first word on stdout.
        let o = k.run(kubeconfig, &home, &a);
        stdout(&o)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(can_i(&kc, &["create", "deployments", "-n", "shop"]), "yes");
    assert_eq!(
        can_i(&n1_kc, &["create", "deployments", "-n", "shop"]),
        "no"
    );
    assert_eq!(can_i(&n1_kc, &["get", "pods", "-n", "shop"]), "yes");

    // 9. n2 stops reporting: Unknown, unreachable taints, its tolerant pod evicted and replaced
    // on n1; new pods go to n1 only.
    let s = ok(run_in(&["-n", "shop", "apply", "-f", "-"], TOLERANT));
    assert!(s.contains("deployment.apps/tolerant created"), "{s}");
    let before = poll(Duration::from_secs(30), "2 tolerant pods Running", || {
        let p = pods("app=tolerant")?;
        (p.len() == 2 && p.iter().all(|p| p.phase == "Running"))
            .then_some(p.clone())
            .ok_or(format!("{p:?}"))
    });
    let on_n2: Vec<String> = before
        .iter()
        .filter(|p| p.node == "n2")
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        on_n2.len(),
        1,
        "{label}: one tolerant pod per node: {before:?}"
    );
    let api_on_n2: Vec<String> = pods("app=api")
        .unwrap()
        .into_iter()
        .filter(|p| p.node == "n2")
        .map(|p| p.name)
        .collect();
    n2.stop();
    poll(
        Duration::from_secs(30),
        "n2 NotReady (Ready=Unknown) with unreachable taints",
        || {
            let s = lines_of(run(&[
                "get",
                "node",
                "n2",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints[*].key}:{.spec.taints[*].effect}",
            ]))?;
            (s.starts_with("Unknown ")
                && s.matches("node.kubernetes.io/unreachable").count() == 2
                && s.contains("NoSchedule")
                && s.contains("NoExecute"))
            .then_some(())
            .ok_or(s)
        },
    );
    let s = ok(run(&["get", "nodes"]));
    assert!(
        s.lines()
            .any(|l| l.split_whitespace().take(2).eq(["n2", "NotReady"])),
        "{label}: {s}"
    );
    let after = poll(
        Duration::from_secs(30),
        "tolerant pod evicted from n2 and replaced on n1",
        || {
            let p = pods("app=tolerant")?;
            let evicted = p
                .iter()
                .find(|p| p.name == on_n2[0])
                .is_none_or(|p| p.terminating);
            let live: Vec<&PodRow> = p.iter().filter(|p| !p.terminating).collect();
            (evicted
                && live.len() == 2
                && live.iter().all(|p| p.node == "n1" && p.phase == "Running"))
            .then_some(p.clone())
            .ok_or(format!("{p:?}"))
        },
    );
    println!("{label}: after n2 failed: {after:?}");
    // Pods with the default 300 s toleration stay put meanwhile.
    let api_now = pods("app=api").unwrap();
    for name in &api_on_n2 {
        assert!(
            api_now.iter().any(|p| &p.name == name && !p.terminating),
            "{label}: {name} evicted before its 300 s toleration: {api_now:?}"
        );
    }
    // New pods are not scheduled on the unreachable node.
    ok(run(&[
        "-n",
        "shop",
        "scale",
        "deployment",
        "tolerant",
        "--replicas=4",
    ]));
    let scaled = poll(Duration::from_secs(30), "4 tolerant pods on n1", || {
        let p: Vec<PodRow> = pods("app=tolerant")?
            .into_iter()
            .filter(|p| !p.terminating)
            .collect();
        (p.len() == 4 && p.iter().all(|p| p.phase == "Running"))
            .then_some(p.clone())
            .ok_or(format!("{p:?}"))
    });
    assert!(
        scaled.iter().all(|p| p.node == "n1"),
        "{label}: a pod was scheduled on the unreachable node: {scaled:?}"
    );
    let s = ok(run(&["-n", "shop", "get", "events"]));
    assert!(s.contains("TaintManagerEviction"), "{label}: {s}");

    drop(rt);
    println!("{label}: transcript took {:?}", started.elapsed());
}

fn kubectl_preinstalled_workloads(backend: Backend) {
    match Kubectl::preinstalled() {
        Some(k) => transcript(backend, &k),
        None => skip("no preinstalled kubectl on this machine"),
    }
}

fn kubectl_debian_120_workloads(backend: Backend) {
    match Kubectl::debian_120() {
        Some(k) => transcript(backend, &k),
        None => skip(
            "Debian kubectl 1.20 not found ($SLUICE_KUBECTL_120, else /opt/kc/usr/bin/kubectl, \
             which .ci/run unpacks)",
        ),
    }
}

sluice_tests::on_both_stores!(kubectl_preinstalled_workloads, kubectl_debian_120_workloads; async: );
