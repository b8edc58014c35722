//! Pods run by the agents through containerd, end to end, driven by kubectl on the host as a
//! newcomer would: `sluice-lab up` (a containerd per node) → `kubectl create deployment
//! sluice-echo --replicas=3` → `kubectl expose` → the pods Running on both nodes (and
//! containerd says so: sandboxes ready, containers running with the IDs the pods report) → a
//! client pod's 300 requests to the Service's ClusterIP reach every replica → scale to 5 and
//! back → the agents restarted into each other proxy mode keep the same containers (adoption)
//! and the Service still balances → delete → no pod, sandbox or container left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::Value;
use sluice_tests::{lab, ok, skip, text, Kubectl};
use tonic::transport::{Endpoint, Uri};

/// A lab with a containerd per node, brought down on drop (also when an assertion fails).
struct Cluster {
    k: Kubectl,
    kubeconfig: PathBuf,
    home: PathBuf,
    dir: PathBuf,
    /// node name → containerd socket.
    sockets: BTreeMap<String, PathBuf>,
    /// node name → network namespace.
    netns: BTreeMap<String, String>,
    _tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.dir.to_string_lossy()]);
        }
    }
}

impl Cluster {
    /// `sluice-lab up --nodes 2 --proxy-mode <mode>`, or `None` after printing why it cannot
    /// run here.
    fn up(mode: &str) -> Option<Cluster> {
        Cluster::up_with(mode, &[])
    }

    /// Like [`Cluster::up`] with extra `sluice-lab up` flags.
    fn up_with(mode: &str, extra: &[&str]) -> Option<Cluster> {
        if let Some(why) = sluice_tests::containerd_lab_unavailable() {
            skip(&why);
            return None;
        }
        let k = Kubectl::preinstalled().expect("checked above");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let d = dir.to_string_lossy().to_string();
        let t = Instant::now();
        let mut args = vec!["up", "--nodes", "2", "--proxy-mode", mode, "--dir", &d];
        args.extend(extra);
        let out = lab(&args);
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut c = Cluster {
            k,
            kubeconfig: dir.join("kubeconfig"),
            home,
            dir: dir.clone(),
            sockets: BTreeMap::new(),
            netns: BTreeMap::new(),
            _tmp: tmp,
        };
        ok(out);
        println!("lab up ({mode}) in {:?}", t.elapsed());
        let cluster: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
        c.kubeconfig = PathBuf::from(cluster["kubeconfig"].as_str().unwrap());
        for n in cluster["nodes"].as_array().unwrap() {
            let name = n["name"].as_str().unwrap().to_string();
            c.sockets.insert(
                name.clone(),
                PathBuf::from(n["containerdSocket"].as_str().expect("containerdSocket")),
            );
            c.netns
                .insert(name, n["netns"].as_str().unwrap().to_string());
        }
        Some(c)
    }

    /// `kubectl apply -f -`.
    fn apply(&self, yaml: &str) {
        let o = self
            .k
            .run_stdin(&self.kubeconfig, &self.home, &["apply", "-f", "-"], yaml);
        assert!(o.status.success(), "kubectl apply: {}", text(&o));
    }

    /// An HTTP GET from inside a node's network namespace (busybox wget); the body.
    fn node_get(&self, node: &str, url: &str) -> Option<String> {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns[node],
                "timeout",
                "3",
                "/bin/busybox",
            ])
            .args(["wget", "-q", "-O-", url])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    }

    /// Polls `f` until it is true.
    fn until(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n{}\n{}",
                self.kubectl(&["get", "pods", "-o", "wide"]),
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn kubectl(&self, args: &[&str]) -> String {
        let o = self.k.run(&self.kubeconfig, &self.home, args);
        assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).expect("kubectl JSON")
    }

    fn pods(&self, selector: &str) -> Vec<Value> {
        self.json(&["get", "pods", "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until exactly `n` pods match and all are Running and Ready; returns them.
    fn wait_ready(&self, selector: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let pods = self.pods(selector);
            let ready = pods
                .iter()
                .filter(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["phase"] == "Running"
                        && p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count();
            if pods.len() == n && ready == n {
                return pods;
            }
            if t.elapsed() > timeout {
                panic!(
                    "{ready}/{n} pods ready ({} exist) after {timeout:?}:\n{}\n--- agent logs\n{}",
                    pods.len(),
                    self.kubectl(&["get", "pods", "-o", "wide"]),
                    self.agent_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn agent_logs(&self) -> String {
        let mut out = String::new();
        for n in self.sockets.keys() {
            let s = std::fs::read_to_string(self.dir.join(format!("logs/agent-{n}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            out += &format!(
                "== {n}\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        out
    }

    /// Runs a busybox client pod making `count` requests to `url` and returns its output
    /// (read from the container's log file, CRI format) once it succeeded.
    fn client(&self, name: &str, url: &str, count: usize) -> String {
        let script = format!(
            // Not `wget -T`: Debian's busybox 1.35 wget crashes with it.
            "echo HOST=$SLUICE_ECHO_SERVICE_HOST; i=0; while [ $i -lt {count} ]; do timeout 3 wget -q -O- {url} || echo FAIL; i=$((i+1)); done"
        );
        self.kubectl(&[
            "run",
            name,
            "--image=docker.io/library/sluice-busybox:0.1",
            "--restart=Never",
            "--command",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        let t = Instant::now();
        let pod = loop {
            let p = self.json(&["get", "pod", name]);
            match p["status"]["phase"].as_str() {
                Some("Succeeded") => break p,
                Some("Failed") => panic!("client pod failed: {p:#}"),
                _ => {}
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "client pod did not finish: {p:#}\n{}",
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        let out = self
            .container_log(&pod, name)
            .unwrap_or_else(|e| panic!("reading {name}'s log: {e}"));
        self.kubectl(&["delete", "pod", name, "--wait=true"]);
        out
    }

    /// The text a container (attempt 0) wrote, from its CRI log file under the node's
    /// `--pod-logs-dir` (lines `<time> <stream> <P|F> <text>`), given the Pod object.
    fn container_log(&self, pod: &Value, container: &str) -> std::io::Result<String> {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let log = self
            .dir
            .join("nodes")
            .join(node)
            .join("pods-logs")
            .join(format!("default_{name}_{uid}"))
            .join(container)
            .join("0.log");
        Ok(std::fs::read_to_string(log)?
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// Counts answers per pod name in sluice-echo's `pod=<name> ip=… client=…` lines.
fn tally(out: &str) -> (BTreeMap<String, usize>, usize) {
    let mut per = BTreeMap::new();
    let mut fails = 0;
    for l in out.lines() {
        if let Some(name) = l
            .strip_prefix("pod=")
            .and_then(|r| r.split_whitespace().next())
        {
            *per.entry(name.to_string()).or_insert(0) += 1;
        } else if l.contains("FAIL") {
            fails += 1;
        }
    }
    (per, fails)
}

/// A CRI RuntimeService client on a node's containerd socket.
async fn runtime(sock: &Path) -> RuntimeServiceClient<tonic::transport::Channel> {
    let sock = sock.to_path_buf();
    let ch = Endpoint::try_from("http://[::]")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .expect("containerd socket");
    RuntimeServiceClient::new(ch)
}

async fn cri_containers(sock: &Path) -> Vec<cri::Container> {
    runtime(sock)
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

async fn cri_sandboxes(sock: &Path) -> Vec<cri::PodSandbox> {
    runtime(sock)
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// What containerd says of the pods: every pod's container is RUNNING in a READY sandbox
/// under the ID the pod's status reports. Returns pod name → container ID.
fn assert_containerd_runs(
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    pods: &[Value],
) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for p in pods {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let uid = p["metadata"]["uid"].as_str().unwrap();
        let reported = p["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("containerd://")
            .to_string();
        let sock = &c.sockets[node];
        let containers = rt.block_on(cri_containers(sock));
        let mine: Vec<&cri::Container> = containers
            .iter()
            .filter(|x| x.labels.get("io.kubernetes.pod.uid").map(String::as_str) == Some(uid))
            .collect();
        let running: Vec<&&cri::Container> = mine
            .iter()
            .filter(|x| x.state == cri::ContainerState::ContainerRunning as i32)
            .collect();
        assert_eq!(
            running.len(),
            1,
            "{name}: containerd on {node} runs {mine:?}"
        );
        assert_eq!(running[0].id, reported, "{name}: the reported containerID");
        let sandboxes = rt.block_on(cri_sandboxes(sock));
        let sb = sandboxes
            .iter()
            .find(|s| s.id == running[0].pod_sandbox_id)
            .expect("the container's sandbox");
        assert_eq!(
            sb.state,
            cri::PodSandboxState::SandboxReady as i32,
            "{name}'s sandbox"
        );
        ids.insert(name, reported);
    }
    ids
}

#[test]
fn getting_started_deployment_service_scale_restart_delete() {
    let Some(c) = Cluster::up("iptables") else {
        return;
    };
    let d = c.dir.to_string_lossy().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The nodes list the test images.
    let nodes = c.json(&["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        let names: Vec<String> = n["status"]["images"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        for want in ["sluice-echo", "sluice-busybox", "pause"] {
            assert!(
                names.iter().any(|s| s.contains(want)),
                "{} lists no {want} image: {names:?}",
                n["metadata"]["name"]
            );
        }
    }

    let t = Instant::now();
    c.kubectl(&[
        "create",
        "deployment",
        "sluice-echo",
        "--image=sluice-echo:0.1",
        "--replicas=3",
        "--port=8080",
    ]);
    c.kubectl(&[
        "expose",
        "deployment",
        "sluice-echo",
        "--port=80",
        "--target-port=8080",
    ]);
    let pods = c.wait_ready("app=sluice-echo", 3, Duration::from_secs(90));
    println!("3 replicas Ready in {:?}", t.elapsed());
    let on: std::collections::BTreeSet<&str> = pods
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(on.len(), 2, "the replicas spread over both nodes: {on:?}");
    assert_containerd_runs(&c, &rt, &pods);
    let ip = c.json(&["get", "service", "sluice-echo"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    // The client finds the Service as a pod without DNS does: kubelet's Service variables.
    let url = "http://$SLUICE_ECHO_SERVICE_HOST:$SLUICE_ECHO_SERVICE_PORT/".to_string();

    let check = |label: &str| {
        let out = c.client(&format!("client-{label}"), &url, 300);
        assert!(
            out.starts_with(&format!("HOST={ip}\n")),
            "{label}: the Service's variables: {}",
            out.lines().next().unwrap_or_default()
        );
        let (per, fails) = tally(&out);
        println!("{label}: {per:?}, {fails} failed");
        assert_eq!(fails, 0, "{label}: failed requests:\n{out}");
        assert_eq!(per.len(), 3, "{label}: answers from {per:?}");
        for (pod, n) in &per {
            assert!(*n >= 45, "{label}: {pod} answered {n} of 300 (< 15%)");
        }
    };
    check("iptables");

    // Scale out and back in.
    c.kubectl(&["scale", "deployment", "sluice-echo", "--replicas=5"]);
    c.wait_ready("app=sluice-echo", 5, Duration::from_secs(90));
    c.kubectl(&["scale", "deployment", "sluice-echo", "--replicas=3"]);
    let t = Instant::now();
    loop {
        let n = c.pods("app=sluice-echo").len();
        if n == 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{n} pods after scaling to 3"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let pods = c.wait_ready("app=sluice-echo", 3, Duration::from_secs(30));
    let ids_after_scale = assert_containerd_runs(&c, &rt, &pods);
    let live: usize = c
        .sockets
        .values()
        .map(|s| {
            rt.block_on(cri_sandboxes(s))
                .iter()
                .filter(|x| x.state == cri::PodSandboxState::SandboxReady as i32)
                .count()
        })
        .sum();
    assert_eq!(live, 3, "scaled-in pods' sandboxes are gone");

    // Restart the agents into the other modes: the same containers keep running.
    for mode in ["nftables", "ebpf", "userspace"] {
        ok(lab(&[
            "agent",
            "restart",
            "--dir",
            &d,
            "--proxy-mode",
            mode,
        ]));
        let pods = c.wait_ready("app=sluice-echo", 3, Duration::from_secs(60));
        let now = assert_containerd_runs(&c, &rt, &pods);
        assert_eq!(
            now, ids_after_scale,
            "{mode}: containers adopted, not restarted"
        );
        check(mode);
    }

    // Delete: nothing left.
    c.kubectl(&["delete", "service", "sluice-echo"]);
    c.kubectl(&["delete", "deployment", "sluice-echo"]);
    let t = Instant::now();
    loop {
        let pods = c.pods("app=sluice-echo").len();
        let sandboxes: usize = c
            .sockets
            .values()
            .map(|s| rt.block_on(cri_sandboxes(s)).len())
            .sum();
        let containers: usize = c
            .sockets
            .values()
            .map(|s| rt.block_on(cri_containers(s)).len())
            .sum();
        if pods == 0 && sandboxes == 0 && containers == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "left after delete: {pods} pods, {sandboxes} sandboxes, {containers} containers\n{}",
            c.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("total {:?}", t.elapsed());
}

/// The pod's Ready condition status ("True"/"False") and its first container's restart count
/// and waiting reason.
fn pod_state(c: &Cluster, name: &str) -> (String, i64, String) {
    let p = c.json(&["get", "pod", name]);
    let ready = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["type"] == "Ready")
        .and_then(|x| x["status"].as_str())
        .unwrap_or("")
        .to_string();
    let cs = &p["status"]["containerStatuses"][0];
    (
        ready,
        cs["restartCount"].as_i64().unwrap_or(0),
        cs["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

/// Whether the Service's EndpointSlices list `ip` as ready.
fn endpoint_ready(c: &Cluster, service: &str, ip: &str) -> Option<bool> {
    let slices = c.json(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={service}"),
    ]);
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["addresses"][0] == ip)
        .map(|e| e["conditions"]["ready"] == true)
}

#[test]
fn probes_readiness_withdraws_endpoints_liveness_restarts_crash_loop_backs_off() {
    let Some(c) = Cluster::up("iptables") else {
        return;
    };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed, labels: {app: probed}}
spec:
  containers:
  - name: echo
    image: sluice-echo:0.1
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /ready, port: http}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Service
metadata: {name: probed}
spec:
  selector: {app: probed}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: never-pulled}
spec:
  containers: [{name: main, image: "not-here:1", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: always-pulled}
spec:
  containers: [{name: main, image: "sluice-echo:latest"}]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: main
    image: docker.io/library/sluice-busybox:0.1
    command: [sh, -c, "echo boom; exit 3"]
"#,
    );
    c.wait_ready("app=probed", 1, Duration::from_secs(60));
    let p = c.json(&["get", "pod", "probed"]);
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    let node = p["spec"]["nodeName"].as_str().unwrap().to_string();
    let base = format!("http://{ip}:8080");
    c.until("the endpoint to be ready", Duration::from_secs(10), || {
        endpoint_ready(&c, "probed", &ip) == Some(true)
    });

    // Readiness: failing → not Ready and the endpoint withdrawn; passing again → back.
    let t = Instant::now();
    c.node_get(&node, &format!("{base}/unready"))
        .expect("GET /unready");
    c.until(
        "Ready=False after /unready",
        Duration::from_secs(10),
        || pod_state(&c, "probed").0 == "False",
    );
    c.until(
        "the endpoint to be not ready",
        Duration::from_secs(10),
        || endpoint_ready(&c, "probed", &ip) == Some(false),
    );
    println!(
        "readiness failure → endpoint withdrawn in {:?}",
        t.elapsed()
    );
    assert_eq!(pod_state(&c, "probed").1, 0, "readiness never restarts");
    let t = Instant::now();
    c.node_get(&node, &format!("{base}/ready-again"))
        .expect("GET /ready-again");
    c.until(
        "the endpoint to be ready again",
        Duration::from_secs(10),
        || endpoint_ready(&c, "probed", &ip) == Some(true),
    );
    println!("readiness back → endpoint ready in {:?}", t.elapsed());

    // Liveness: failing → the container is restarted (a fresh process is healthy again).
    let before =
        c.json(&["get", "pod", "probed"])["status"]["containerStatuses"][0]["containerID"].clone();
    let t = Instant::now();
    c.node_get(&node, &format!("{base}/sick"))
        .expect("GET /sick");
    c.until("a liveness restart", Duration::from_secs(30), || {
        pod_state(&c, "probed").1 == 1
    });
    c.wait_ready("app=probed", 1, Duration::from_secs(30));
    println!(
        "liveness failure → restarted and Ready in {:?}",
        t.elapsed()
    );
    let p = c.json(&["get", "pod", "probed"]);
    let cs = &p["status"]["containerStatuses"][0];
    assert_ne!(cs["containerID"], before, "a new container");
    assert_eq!(
        cs["lastState"]["terminated"]["containerID"], before,
        "lastState is the killed container: {cs:#}"
    );
    assert_eq!(p["status"]["podIP"], ip.as_str(), "same sandbox, same IP");

    // A crashing container: restarted with growing back-off, CrashLoopBackOff in `get pods`.
    c.until("CrashLoopBackOff", Duration::from_secs(30), || {
        let (_, restarts, reason) = pod_state(&c, "crasher");
        restarts >= 1 && reason == "CrashLoopBackOff"
    });
    let table = c.kubectl(&["get", "pod", "crasher"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let p = c.json(&["get", "pod", "crasher"]);
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs:#}");
    assert_eq!(
        p["status"]["phase"], "Running",
        "restartPolicy Always keeps it Running"
    );
    // 0 s, then 10 s, then 20 s: in 12 s at most two restarts.
    std::thread::sleep(Duration::from_secs(12));
    let restarts = pod_state(&c, "crasher").1;
    assert!(
        (1..=2).contains(&restarts),
        "back-off: {restarts} restarts in ~15 s"
    );

    // Images: Never without the image waits with ErrImageNeverPull at once; `:latest` means
    // Always, and with no registry reachable the pull fails (bounded), never hangs.
    c.until("ErrImageNeverPull", Duration::from_secs(10), || {
        pod_state(&c, "never-pulled").2 == "ErrImageNeverPull"
    });
    c.until("a failed pull", Duration::from_secs(60), || {
        matches!(
            pod_state(&c, "always-pulled").2.as_str(),
            "ErrImagePull" | "ImagePullBackOff"
        )
    });
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=always-pulled",
    ]);
    assert!(events.contains("Pulling"), "{events}");
    c.kubectl(&[
        "delete",
        "pod",
        "probed",
        "crasher",
        "never-pulled",
        "always-pulled",
        "--wait=true",
    ]);
}

#[test]
fn rolling_update_under_load_loses_no_connection() {
    for mode in ["iptables", "nftables", "ebpf", "userspace"] {
        let Some(c) = Cluster::up(mode) else {
            return;
        };
        rolling_update(&c, mode);
    }
}

fn rolling_update(c: &Cluster, mode: &str) {
    // Readiness gates new pods; preStop keeps an old pod serving while the proxies drop it.
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: echo
        image: sluice-echo:0.1
        readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
        lifecycle: {preStop: {sleep: {seconds: 2}}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let old = c.wait_ready("app=web", 3, Duration::from_secs(60));
    let old_names: Vec<String> = old
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let ip = c.json(&["get", "service", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    // The client: requests back to back for ~20 s, each one a new connection.
    let script = format!(
        "s=$(date +%s); n=0; f=0; while [ $(( $(date +%s) - s )) -lt 20 ]; do \
         timeout 3 wget -q -O- http://{ip}/ >/dev/null || {{ f=$((f+1)); echo FAIL $(date +%s); }}; n=$((n+1)); done; \
         echo DONE $n $f $(( $(date +%s) - s ))"
    );
    c.kubectl(&[
        "run",
        "load",
        "--image=docker.io/library/sluice-busybox:0.1",
        "--restart=Never",
        "--command",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    c.until("the client to run", Duration::from_secs(30), || {
        c.json(&["get", "pod", "load"])["status"]["phase"] == "Running"
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    c.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "echo=docker.io/library/sluice-echo:0.1",
    ]);
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    println!("{mode}: rollout done in {:?}", t.elapsed());
    c.until("the old pods to be gone", Duration::from_secs(60), || {
        let names: Vec<String> = c
            .pods("app=web")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        !names.iter().any(|n| old_names.contains(n))
    });
    c.until("the client to finish", Duration::from_secs(60), || {
        c.json(&["get", "pod", "load"])["status"]["phase"] == "Succeeded"
    });
    let p = c.json(&["get", "pod", "load"]);
    let out = c.container_log(&p, "load").unwrap();
    let done = out
        .lines()
        .find_map(|l| l.strip_prefix("DONE ").map(str::to_string))
        .unwrap_or_else(|| panic!("no DONE line in {out}"));
    let nums: Vec<u64> = done
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (n, failed, secs) = (nums[0], nums[1], nums[2].max(1));
    println!(
        "{mode}: {n} connections in {secs} s ({} /s) across the rolling update, {failed} failed",
        n / secs
    );
    assert_eq!(
        failed, 0,
        "{mode}: failed connections during the rollout:\n{out}"
    );
    assert!(n / secs >= 50, "{mode}: only {} connections/s", n / secs);
    c.kubectl(&["delete", "pod", "load", "--wait=true"]);
}

/// The agent's pid on a node, from the lab's state.
fn agent_pid(c: &Cluster, node: &str) -> i32 {
    let state: Value =
        serde_json::from_slice(&std::fs::read(c.dir.join("lab.json")).unwrap()).unwrap();
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["agent_pid"].as_i64())
        .expect("agent pid") as i32
}

#[test]
fn agent_restart_keeps_connections_and_a_dead_node_loses_its_pods() {
    use std::io::{BufRead, BufReader, Write};
    let Some(c) = Cluster::up_with(
        "iptables",
        &[
            "--control-arg=--node-monitor-grace-period=4",
            "--control-arg=--node-monitor-period=1",
            "--agent-arg=--heartbeat-interval=1s",
        ],
    ) else {
        return;
    };
    let d = c.dir.to_string_lossy().to_string();
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: echo
        image: sluice-echo:0.1
"#,
    );
    let pods = c.wait_ready("app=web", 2, Duration::from_secs(60));
    let on_n2: Vec<&Value> = pods
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "n2")
        .collect();
    assert_eq!(on_n2.len(), 1, "one replica per node");
    let victim = on_n2[0]["metadata"]["name"].as_str().unwrap().to_string();
    let victim_ip = on_n2[0]["status"]["podIP"].as_str().unwrap().to_string();
    let victim_cid = on_n2[0]["status"]["containerStatuses"][0]["containerID"].clone();

    // An established TCP connection (n1 → the pod on n2, echo port) across an agent restart.
    let mut nc = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.netns["n1"],
            "/bin/busybox",
            "nc",
            &victim_ip,
            "9000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = nc.stdin.take().unwrap();
    let mut from = BufReader::new(nc.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(to, "before").unwrap();
    from.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");
    ok(lab(&["agent", "restart", "--dir", &d, "--node", "n2"]));
    let pods = c.wait_ready("app=web", 2, Duration::from_secs(30));
    let again = pods
        .iter()
        .find(|p| p["metadata"]["name"] == victim.as_str())
        .expect("the pod survived the agent restart");
    assert_eq!(
        again["status"]["containerStatuses"][0]["containerID"], victim_cid,
        "same container after the agent restart"
    );
    line.clear();
    writeln!(to, "after").unwrap();
    from.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n", "the connection survived the agent restart");
    drop(to);
    let _ = nc.kill();
    let _ = nc.wait();

    // n2's agent dies for good: n2 goes NotReady, its pod is evicted after its 2 s
    // toleration and the ReplicaSet replaces it on n1.
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-KILL", &agent_pid(&c, "n2").to_string()])
        .status();
    c.until("n2 to be marked not ready", Duration::from_secs(30), || {
        let n = c.json(&["get", "node", "n2"]);
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["type"] == "Ready" && x["status"] != "True")
    });
    println!("n2 not ready after {:?}", t.elapsed());
    c.until("a replacement Ready on n1", Duration::from_secs(60), || {
        let pods = c.pods("app=web");
        let live: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        live.len() == 2
            && live.iter().all(|p| p["spec"]["nodeName"] == "n1")
            && live.iter().all(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["type"] == "Ready" && x["status"] == "True")
            })
    });
    println!(
        "replacement Ready on n1 {:?} after the agent died",
        t.elapsed()
    );
    let p = c.json(&["get", "pods", "-l", "app=web"]);
    let evicted = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["metadata"]["name"] == victim.as_str());
    if let Some(v) = evicted {
        assert!(
            !v["metadata"]["deletionTimestamp"].is_null(),
            "the dead node's pod is being deleted: {v:#}"
        );
    }
}

/// A container's output so far (empty while it has none).
fn container_output(c: &Cluster, pod: &str, container: &str) -> String {
    c.container_log(&c.json(&["get", "pod", pod]), container)
        .unwrap_or_default()
}

#[test]
fn init_containers_environment_and_volumes_from_configmaps_secrets_downward_api_and_empty_dirs() {
    let Some(c) = Cluster::up("none") else {
        return;
    };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {app: vols}}
spec:
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cfg, configMap: {name: cfg, items: [{key: greeting, path: dir/greeting.txt}]}}
  - name: all
    projected:
      sources:
      - secret: {name: creds}
      - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
  initContainers:
  - name: init
    image: docker.io/library/sluice-busybox:0.1
    command: [sh, -c, 'sleep 1; echo from-init > /scratch/init']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  containers:
  - name: writer
    image: docker.io/library/sluice-busybox:0.1
    env:
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: cfg, key: color}}}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NODE_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    envFrom: [{secretRef: {name: creds}, prefix: S_}]
    command: [sh, -c, 'cat /scratch/init; echo "color=$COLOR pod=$POD pw=$S_pw node=$NODE_IP"; cat /etc/cfg/dir/greeting.txt; echo; cat /all/pw; echo; cat /all/labels; echo; echo shared > /scratch/x; sleep 3600']
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: cfg, mountPath: /etc/cfg, readOnly: true}
    - {name: all, mountPath: /all}
  - name: reader
    image: docker.io/library/sluice-busybox:0.1
    command: [sh, -c, 'while [ ! -f /data/x ]; do sleep 0.1; done; cat /data/x; sleep 3600']
    volumeMounts: [{name: scratch, mountPath: /data}]
"#,
    );
    // The ConfigMap is missing at first: the pod waits with the kubelet's reason.
    c.until(
        "CreateContainerConfigError",
        Duration::from_secs(30),
        || {
            let p = c.json(&["get", "pod", "vols"]);
            ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|k| p["status"][k].as_array().cloned().unwrap_or_default())
                .any(|s| s["state"]["waiting"]["reason"] == "CreateContainerConfigError")
        },
    );
    c.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {color: blue, greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {pw: hunter2}
"#,
    );
    // The init container runs first (about a second): `get pods` says so.
    c.until(
        "Init:0/1 in kubectl get pods",
        Duration::from_secs(20),
        || c.kubectl(&["get", "pod", "vols"]).contains("Init:0/1"),
    );
    c.wait_ready("app=vols", 1, Duration::from_secs(60));
    let p = c.json(&["get", "pod", "vols"]);
    let init = &p["status"]["initContainerStatuses"][0];
    assert_eq!(
        init["state"]["terminated"]["reason"], "Completed",
        "{init:#}"
    );
    let node = c.json(&["get", "pod", "vols"])["status"]["hostIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.until("the writer's output", Duration::from_secs(20), || {
        container_output(&c, "vols", "writer").contains("app=")
    });
    let w = container_output(&c, "vols", "writer");
    assert_eq!(
        w,
        format!(
            "from-init\ncolor=blue pod=vols pw=hunter2 node={node}\nhello\nhunter2\napp=\"vols\""
        ),
        "writer"
    );
    c.until(
        "the reader to see the shared file",
        Duration::from_secs(20),
        || container_output(&c, "vols", "reader") == "shared",
    );
    c.kubectl(&["delete", "pod", "vols", "--wait=true"]);
}
