//! `kubectl logs` and `kubectl exec` end to end: `sluice-lab up --nodes 2` (a containerd per
//! node) → pods run by the agents → kubectl on the host → the API server's `pods/log` and
//! `pods/exec` → the agent's kubelet API on the pod's node (TLS, the API server's client
//! certificate) → the container's CRI log file / containerd's streaming server.
//!
//! Logs: whole, `--tail`, `--timestamps`, `--limit-bytes`, `--since`, `-f` (lines arrive
//! while the container writes them), `--previous` after a restart, the errors (no previous
//! container, no container chosen in a two-container pod, no such pod). Exec with the
//! preinstalled kubectl and 1.32 (WebSocket, v5; the agent speaks SPDY to containerd) and
//! with Debian's 1.20 (SPDY, passed through the API server and the agent): output, the pod's
//! hostname, stderr and exit codes, stdin to a command that ends by itself and to `cat` (the
//! end of stdin reaches it), a chosen container. A node's credentials may do neither (Node
//! authorizer: 403). The kubelet API refuses a client without a certificate (handshake) and
//! one whose CA-signed certificate is not the API server's (403). kubectl 1.20 reads logs too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{lab, ok, skip, text, Kubectl};

/// A lab with a containerd per node, brought down on drop (also when an assertion fails).
struct Cluster {
    k: Kubectl,
    kubeconfig: PathBuf,
    home: PathBuf,
    dir: PathBuf,
    nodes: Vec<String>,
    /// The lab's network namespace (the API server's), from which nodes are reachable.
    lab_netns: String,
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
    fn up() -> Option<Cluster> {
        if let Some(why) = sluice_tests::containerd_lab_unavailable() {
            skip(&why);
            return None;
        }
        let k = Kubectl::preinstalled().expect("checked above");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let t = Instant::now();
        let out = lab(&["up", "--nodes", "2", "--dir", &dir.to_string_lossy()]);
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut c = Cluster {
            k,
            kubeconfig: dir.join("kubeconfig"),
            home,
            dir: dir.clone(),
            nodes: Vec::new(),
            lab_netns: String::new(),
            _tmp: tmp,
        };
        ok(out);
        println!("lab up in {:?} ({})", t.elapsed(), c.k.label);
        let cluster: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
        c.kubeconfig = PathBuf::from(cluster["kubeconfig"].as_str().unwrap());
        c.nodes = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        c.lab_netns = cluster["labNetns"].as_str().unwrap().to_string();
        Some(c)
    }

    fn run_with(&self, k: &Kubectl, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
        k.run(kubeconfig, &self.home, args)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_with(&self.k, &self.kubeconfig, args)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// kubectl that must fail; its stderr.
    fn kubectl_err(&self, k: &Kubectl, kubeconfig: &Path, args: &[&str]) -> String {
        let o = self.run_with(k, kubeconfig, args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} should fail: {}",
            text(&o)
        );
        String::from_utf8_lossy(&o.stderr).to_string()
    }

    fn apply(&self, yaml: &str) {
        let o = self
            .k
            .run_stdin(&self.kubeconfig, &self.home, &["apply", "-f", "-"], yaml);
        assert!(o.status.success(), "kubectl apply: {}", text(&o));
    }

    fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "pod", name, "-o", "json"])).unwrap()
    }

    fn agent_logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
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

    /// Waits until `f(pod)` holds.
    fn wait_pod(&self, name: &str, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) {
        let t = Instant::now();
        loop {
            let p = self.pod(name);
            if f(&p) {
                return;
            }
            assert!(
                t.elapsed() < timeout,
                "{name}: timed out after {timeout:?} waiting for {what}: {:#}\n{}",
                p["status"],
                self.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_ready(&self, name: &str) {
        self.wait_pod(name, "Ready", Duration::from_secs(120), |p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    }

    /// A kubeconfig with node `n`'s credentials, usable from the host (the forwarder's server).
    fn node_kubeconfig(&self, n: &str) -> PathBuf {
        let host = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let server = host
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("server: "))
            .unwrap()
            .to_string();
        let node = std::fs::read_to_string(self.dir.join("nodes").join(n).join("kubeconfig"))
            .expect("the node's kubeconfig");
        let out: Vec<String> = node
            .lines()
            .map(|l| match l.trim_start().strip_prefix("server: ") {
                Some(_) => {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    format!("{indent}server: {server}")
                }
                None => l.to_string(),
            })
            .collect();
        let p = self.dir.join(format!("{n}-host.kubeconfig"));
        std::fs::write(&p, out.join("\n") + "\n").unwrap();
        p
    }
}

/// The numbers of `line N` lines.
fn numbers(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn consecutive(n: &[u64]) -> bool {
    n.windows(2).all(|w| w[1] == w[0] + 1)
}

const TICKER: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: ticker
spec:
  containers:
  - name: ticker
    image: docker.io/library/sluice-busybox:0.1
    command: ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]
---
apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  restartPolicy: Always
  containers:
  - name: crasher
    image: docker.io/library/sluice-busybox:0.1
    command: ["sh", "-c", "echo started $(date +%s); echo to stderr >&2; sleep 1; echo bye; exit 1"]
---
apiVersion: v1
kind: Pod
metadata:
  name: two
spec:
  containers:
  - name: a
    image: docker.io/library/sluice-busybox:0.1
    command: ["sh", "-c", "echo i am a; sleep 3600"]
  - name: b
    image: docker.io/library/sluice-busybox:0.1
    command: ["sh", "-c", "echo i am b; sleep 3600"]
    env:
    - name: WHO
      value: container-b
"#;

#[test]
fn kubectl_logs_and_exec() {
    let Some(c) = Cluster::up() else {
        return;
    };
    let t = Instant::now();
    c.kubectl(&["run", "echo", "--image=sluice-echo:0.1", "--port=8080"]);
    c.apply(TICKER);
    for p in ["echo", "ticker", "two"] {
        c.wait_ready(p);
    }
    println!("pods Ready in {:?}", t.elapsed());

    // The nodes report their kubelet API.
    let nodes: Value = serde_json::from_str(&c.kubectl(&["get", "nodes", "-o", "json"])).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        assert_eq!(
            n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250,
            "{}",
            n["metadata"]["name"]
        );
    }
    // Discovery lists the subresources.
    let v1 = c.kubectl(&["get", "--raw", "/api/v1"]);
    let v1: Value = serde_json::from_str(&v1).unwrap();
    let sub = |n: &str| {
        v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} not in discovery"))
    };
    assert_eq!(sub("pods/log")["verbs"], serde_json::json!(["get"]));
    assert_eq!(sub("pods/exec")["kind"], "PodExecOptions");

    // --- logs ---
    let t = Instant::now();
    let echo = c.kubectl(&["logs", "echo"]);
    println!("kubectl logs echo in {:?}", t.elapsed());
    assert!(echo.contains("sluice-echo"), "{echo}");

    std::thread::sleep(Duration::from_secs(1));
    let all = c.kubectl(&["logs", "ticker"]);
    let n = numbers(&all);
    assert!(n.len() >= 3 && n[0] == 0 && consecutive(&n), "{all}");
    let tail = c.kubectl(&["logs", "ticker", "--tail", "2"]);
    let n = numbers(&tail);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(consecutive(&n) && n[0] >= 1, "{tail}");
    let ts = c.kubectl(&["logs", "ticker", "--timestamps", "--tail", "3"]);
    for l in ts.lines() {
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(rest.starts_with("line "), "{l}");
        // RFC3339 with nine fraction digits, as kubelet prints them.
        let frac = time.split_once('.').unwrap().1;
        assert_eq!(
            frac.trim_end_matches(|ch: char| !ch.is_ascii_digit()).len(),
            9,
            "{l}"
        );
        time.parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    assert_eq!(
        c.kubectl(&["logs", "ticker", "--limit-bytes", "6"]),
        "line 0"
    );
    let since = c.kubectl(&["logs", "ticker", "--since", "1s"]);
    assert!(
        (1..=8).contains(&since.lines().count()),
        "the last second has about 5 lines: {since}"
    );

    // -f: new lines arrive as the container writes them.
    let t = Instant::now();
    let mut f =
        c.k.command(
            &c.kubeconfig,
            &c.home,
            &["logs", "-f", "ticker", "--tail", "1"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = f.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < 6 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => got.push(l),
            Err(e) => {
                let _ = f.kill();
                panic!("logs -f stalled after {got:?}: {e}");
            }
        }
    }
    let followed = t.elapsed();
    f.kill().unwrap();
    let _ = f.wait();
    let n = numbers(&got.join("\n"));
    assert!(consecutive(&n), "{got:?}");
    println!("logs -f: 6 lines in {followed:?}");
    assert!(followed < Duration::from_secs(5), "{followed:?}");

    // --previous: after a restart, the attempt before.
    let err = c.kubectl_err(&c.k, &c.kubeconfig, &["logs", "ticker", "--previous"]);
    assert!(
        err.contains(r#"previous terminated container "ticker" in pod "ticker" not found"#),
        "{err}"
    );
    c.wait_pod("crasher", "a restart", Duration::from_secs(90), |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let prev = c.kubectl(&["logs", "crasher", "--previous"]);
    assert!(
        // stdout and stderr reach the file through separate pipes: their order may differ.
        prev.contains("started ") && prev.contains("to stderr\n") && prev.ends_with("bye\n"),
        "{prev}"
    );

    // Choosing a container.
    let err = c.kubectl_err(
        &c.k,
        &c.kubeconfig,
        &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
    );
    assert!(
        err.contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{err}"
    );
    assert_eq!(c.kubectl(&["logs", "two", "-c", "b"]), "i am b\n");
    let err = c.kubectl_err(&c.k, &c.kubeconfig, &["logs", "two", "-c", "zz"]);
    assert!(
        err.contains("container zz is not valid for pod two"),
        "{err}"
    );
    let err = c.kubectl_err(&c.k, &c.kubeconfig, &["logs", "nope"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    // --- exec ---
    for k in exec_kubectls(&c.k) {
        let t = Instant::now();
        let out = c.kubectl_with(
            &k,
            &["exec", "ticker", "--", "sh", "-c", "echo hi; hostname"],
        );
        println!("{}: exec in {:?}", k.label, t.elapsed());
        assert_eq!(out, "hi\nticker\n", "{}", k.label);
        let o = c.run_with(
            &k,
            &c.kubeconfig,
            &[
                "exec",
                "ticker",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        );
        assert_eq!(o.status.code(), Some(3), "{}: {}", k.label, text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("err\n"),
            "{}",
            text(&o)
        );
        // stdin: a command that ends by itself.
        let o = k.run_stdin(
            &c.kubeconfig,
            &c.home,
            &["exec", "-i", "ticker", "--", "head", "-c", "3"],
            "abc",
        );
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "abc");
        assert_eq!(
            c.kubectl_with(
                &k,
                &["exec", "two", "-c", "b", "--", "sh", "-c", "echo $WHO"]
            ),
            "container-b\n"
        );
        // `cat` ends when its input does: v5 closes stdin and the agent passes the close on to
        // containerd as the SPDY stdin stream's FIN; a SPDY client closes the stream itself.
        let t = Instant::now();
        let o = k.run_stdin(
            &c.kubeconfig,
            &c.home,
            &["exec", "-i", "ticker", "--", "cat"],
            "abc\ndef",
        );
        assert!(o.status.success(), "{}: {}", k.label, text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "abc\ndef");
        println!("{}: exec -i cat in {:?}", k.label, t.elapsed());
    }

    // A node's credentials: neither logs nor exec (the Node authorizer).
    let n1 = c.node_kubeconfig(&c.nodes[0]);
    let err = c.kubectl_err(&c.k, &n1, &["logs", "ticker"]);
    assert!(
        err.contains("Forbidden") && err.contains(r#"cannot get resource "pods/log""#),
        "{err}"
    );
    let err = c.kubectl_err(&c.k, &n1, &["exec", "ticker", "--", "true"]);
    assert!(
        err.contains(r#"cannot create resource "pods/exec""#),
        "{err}"
    );

    // The kubelet API itself: a client certificate signed by the cluster CA is required, and
    // only the API server's is served.
    let pod: Value =
        serde_json::from_str(&c.kubectl(&["get", "pod", "ticker", "-o", "json"])).unwrap();
    let ip = pod["status"]["hostIP"].as_str().unwrap().to_string();
    let ctl = c.dir.join("control");
    let curl = |extra: &[&str], path: &str| {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.lab_netns,
                "curl",
                "-sk",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(format!("https://{ip}:10250{path}"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    if Command::new("curl").arg("--version").output().is_ok() {
        let (code, out) = curl(&[], "/healthz");
        assert_ne!(
            code,
            Some(0),
            "no client certificate: the handshake fails ({out})"
        );
        let cert = ctl.join("kubelet-client.crt").to_string_lossy().to_string();
        let key = ctl.join("kubelet-client.key").to_string_lossy().to_string();
        let api = ["--cert", cert.as_str(), "--key", key.as_str()];
        assert_eq!(curl(&api, "/healthz"), (Some(0), "ok".to_string()));
        let (code, out) = curl(&api, "/containerLogs/default/ticker/ticker?tailLines=1");
        assert_eq!(code, Some(0));
        assert!(out.starts_with("line "), "{out}");
        // Another name signed by the same CA: 403.
        let other = c.dir.join("other");
        let (okey, ocrt) = (other.with_extension("key"), other.with_extension("crt"));
        let signed = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'extendedKeyUsage=clientAuth\\n' > {ext} && \
                 openssl req -new -newkey rsa:2048 -nodes -keyout {k} -subj /CN=someone/O=devs 2>/dev/null \
                 | openssl x509 -req -CA {ca} -CAkey {cakey} -set_serial 4242 -days 1 -extfile {ext} -out {crt} 2>/dev/null",
                ext = other.with_extension("ext").display(),
                k = okey.display(),
                ca = ctl.join("ca.crt").display(),
                cakey = ctl.join("ca.key").display(),
                crt = ocrt.display(),
            ))
            .status()
            .is_ok_and(|s| s.success());
        if signed {
            let (ocrt, okey) = (ocrt.to_string_lossy(), okey.to_string_lossy());
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &c.lab_netns,
                    "curl",
                    "-sk",
                    "-o",
                    "/dev/null",
                ])
                .args(["-w", "%{http_code}", "--cert", &ocrt, "--key", &okey])
                .arg(format!("https://{ip}:10250/healthz"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), "403");
        }
    }

    // kubectl 1.20 reads logs the same way.
    if let Some(old) = Kubectl::debian_120() {
        let out = c.kubectl_with(&old, &["logs", "ticker", "--tail", "2"]);
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    c.kubectl(&[
        "delete",
        "pod",
        "echo",
        "ticker",
        "crasher",
        "two",
        "--wait=false",
    ]);
}

impl Cluster {
    fn kubectl_with(&self, k: &Kubectl, args: &[&str]) -> String {
        let o = self.run_with(k, &self.kubeconfig, args);
        assert!(o.status.success(), "{} {args:?}: {}", k.label, text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

/// The preinstalled kubectl and, when there, 1.32 (both speak WebSocket) and Debian's 1.20
/// (SPDY only).
fn exec_kubectls(pre: &Kubectl) -> Vec<Kubectl> {
    let mut v = vec![pre.clone()];
    let p = PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    if p.exists() && p != pre.path {
        v.push(Kubectl {
            path: p,
            label: "kubectl 1.32".into(),
        });
    }
    v.extend(Kubectl::debian_120());
    v
}
