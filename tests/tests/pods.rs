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
use sluice_tests::{is_root, lab, ok, skip, text, Kubectl};
use tonic::transport::{Endpoint, Uri};

/// Brings the lab down even when an assertion fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.0.to_string_lossy()]);
        }
    }
}

struct Cluster {
    k: Kubectl,
    kubeconfig: PathBuf,
    home: PathBuf,
    dir: PathBuf,
    /// node name → containerd socket.
    sockets: BTreeMap<String, PathBuf>,
}

impl Cluster {
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
            "i=0; while [ $i -lt {count} ]; do timeout 3 wget -q -O- {url} || echo FAIL; i=$((i+1)); done"
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
        let node = pod["spec"]["nodeName"].as_str().unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let log = self
            .dir
            .join("nodes")
            .join(node)
            .join("pods-logs")
            .join(format!("default_{name}_{uid}"))
            .join(name)
            .join("0.log");
        let raw = std::fs::read_to_string(&log)
            .unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
        self.kubectl(&["delete", "pod", name, "--wait=true"]);
        // CRI log lines: `<time> stdout F <text>`.
        raw.lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n")
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

async fn cri_containers(sock: &Path) -> Vec<cri::Container> {
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
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

async fn cri_sandboxes(sock: &Path) -> Vec<cri::PodSandbox> {
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
    if !is_root() {
        return skip("the lab needs root (namespaces, containerd)");
    }
    for tool in ["containerd", "ctr"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return skip(&format!("{tool} is missing (Debian package containerd)"));
        }
    }
    if !Path::new("/usr/sbin/runc").exists() {
        return skip("runc is missing");
    }
    let Some(k) = Kubectl::preinstalled() else {
        return skip("no kubectl on this machine");
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(&dir);
    let t = Instant::now();
    ok(lab(&[
        "up",
        "--nodes",
        "2",
        "--proxy-mode",
        "iptables",
        "--dir",
        &d,
    ]));
    println!("lab up in {:?}", t.elapsed());
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let sockets = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                PathBuf::from(n["containerdSocket"].as_str().expect("containerdSocket")),
            )
        })
        .collect();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let c = Cluster {
        k,
        kubeconfig: PathBuf::from(cluster["kubeconfig"].as_str().unwrap()),
        home,
        dir: dir.clone(),
        sockets,
    };
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
    let ids = assert_containerd_runs(&c, &rt, &pods);
    let ip = c.json(&["get", "service", "sluice-echo"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{ip}/");

    let check = |label: &str| {
        let out = c.client(&format!("client-{label}"), &url, 300);
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
    for mode in ["nftables", "userspace"] {
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
    let _ = ids;

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
