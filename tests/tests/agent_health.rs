//! The agent's observability in iptables mode, with real binaries in a network namespace this
//! test creates (sluice-control and sluice-agent both run inside it; nothing touches the root
//! namespace):
//!
//! * `/healthz` answers 503 until the first sync, then 200 with kube-proxy's body;
//! * `/metrics` carries the proxy's sync metrics and, once a Service and an EndpointSlice exist,
//!   a network-programming latency sample;
//! * a LoadBalancer Service with `externalTrafficPolicy: Local` gets a HealthCheckNodePort that
//!   answers 503 without a local endpoint and 200 once a slice lists one on the agent's node;
//! * `sluice-agent debug dump` inside the namespace prints the Service's `SLUICE-SVC-` chain.
//!
//! Needs root, `ip`, `iptables-save` and a kubectl; otherwise prints SKIP (a failure under
//! `SLUICE_REQUIRE_ALL=1`). Build the binaries first: `cargo build -p sluice-agent -p sluice-control`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::{bin, ip_ok, is_root, kubectl_path, run, skip, text};

const NODE: &str = "health-node";
const NODE_IP: &str = "10.99.0.1";

fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 `ip` not found".into());
    }
    if Command::new("iptables-save")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("iptables-save not found".into());
    }
    if kubectl_path().is_none() {
        return Some("no kubectl found".into());
    }
    if !bin("sluice-agent").exists() || !bin("sluice-control").exists() {
        return Some("build sluice-agent and sluice-control first".into());
    }
    None
}

/// One namespace with the control plane and one agent; removed in `Drop`.
struct Env {
    ns: String,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
    control: Option<Child>,
    agent: Option<Child>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in [&mut self.agent, &mut self.control] {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

impl Env {
    fn new() -> Env {
        let env = Env {
            ns: format!("sl-health-{}", std::process::id()),
            dir: tempfile::tempdir().expect("tempdir"),
            kubectl: kubectl_path().expect("checked"),
            control: None,
            agent: None,
        };
        ip_ok(&["netns", "add", &env.ns]);
        let ns = env.ns.as_str();
        ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
        // A link for the node IP (both veth ends stay in this namespace).
        ip_ok(&[
            "-n", ns, "link", "add", "hc0", "type", "veth", "peer", "name", "hc1",
        ]);
        ip_ok(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "hc0",
        ]);
        ip_ok(&["-n", ns, "link", "set", "hc0", "up"]);
        ip_ok(&["-n", ns, "link", "set", "hc1", "up"]);
        env
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["control", "agent"] {
            let body = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(30).collect();
            s.push_str(&format!("--- {name}.log (last 30 lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    fn start_control(&mut self) {
        let log = std::fs::File::create(self.log("control")).expect("log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin("sluice-control"))
            .arg("--data-dir")
            .arg(self.data())
            .args([
                "--listen",
                "127.0.0.1:6443",
                "--advertise-address",
                "127.0.0.1",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning sluice-control");
        let mut out = child.stdout.take().expect("stdout");
        self.control = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("sluice-control serving on") {
            assert!(
                Instant::now() < deadline,
                "sluice-control did not start\n{}",
                self.logs()
            );
            match out.read(&mut buf) {
                Ok(0) => panic!("sluice-control exited\n{}", self.logs()),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => panic!("reading sluice-control: {e}"),
            }
        }
        // Keep draining so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
    }

    fn start_agent(&mut self) {
        let kc = self.dir.path().join("node.kubeconfig");
        let o = run(Command::new(bin("sluice-control"))
            .args(["token", "create", "--node", NODE])
            .arg("--data-dir")
            .arg(self.data())
            .arg("--kubeconfig-out")
            .arg(&kc));
        assert!(o.status.success(), "token create: {}", text(&o));
        let log = std::fs::File::create(self.log("agent")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin("sluice-agent"))
            .arg("--kubeconfig")
            .arg(kc)
            .args(["--node-name", NODE, "--node-ip", NODE_IP])
            .args(["--proxy-mode", "iptables"])
            .arg("--cni-conf-dir")
            .arg(self.dir.path().join("net.d"))
            .args(["--min-sync-period", "100ms", "--sync-period", "5s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning sluice-agent");
        self.agent = Some(child);
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let home = self.dir.path().join("home");
        let _ = std::fs::create_dir_all(&home);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.data().join("admin.kubeconfig"))
            .arg("--request-timeout=10s")
            .args(args)
            .env("HOME", home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawning kubectl");
        if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl")
    }

    fn apply(&self, obj: Value) {
        let o = self.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
        assert!(o.status.success(), "kubectl apply: {}", text(&o));
    }

    /// `GET path` on `127.0.0.1:port` inside the namespace: (status, body).
    fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let ns = self.ns.clone();
        let path = path.to_string();
        // setns on a fresh thread: the socket it opens lives in the test's namespace.
        std::thread::spawn(move || -> Option<(u16, String)> {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).ok()?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).ok()?;
            let (head, body) = buf.split_once("\r\n\r\n")?;
            let code = head.split_whitespace().nth(1)?.parse().ok()?;
            Some((code, body.to_string()))
        })
        .join()
        .ok()
        .flatten()
    }

    fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The value of the first sample line starting with `name` (labels included in `name`).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn slice(name: &str, svc: &str, ip: &str, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

#[test]
fn healthz_metrics_health_check_node_port_and_dump() {
    if let Some(why) = missing_prerequisite() {
        skip(&why);
        return;
    }
    let mut env = Env::new();
    env.start_control();
    env.start_agent();

    // /healthz: 200 once the first sync happened (503 or refused before).
    let started = Instant::now();
    let body = env.wait_for("/healthz 200", Duration::from_secs(30), || {
        env.get(10256, "/healthz")
            .and_then(|(code, body)| (code == 200).then_some(body))
    });
    eprintln!("healthz 200 after {:?}", started.elapsed());
    let v: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert!(v["lastUpdated"].is_string(), "{v}");
    assert!(v["currentTime"].is_string(), "{v}");
    assert_eq!(v["nodeEligible"], true, "{v}");
    let (code, _) = env.get(10256, "/livez").expect("livez");
    assert_eq!(code, 200);

    // A Service and its EndpointSlice: programmed, and the latency is measured.
    env.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }));
    env.apply(slice("web-1", "web", "10.200.0.5", "elsewhere"));
    let metrics = env.wait_for(
        "a network programming sample",
        Duration::from_secs(30),
        || {
            let (code, m) = env.get(10249, "/metrics")?;
            assert_eq!(code, 200);
            (sample(
                &m,
                "sluice_proxy_network_programming_duration_seconds_count",
            )? >= 1.0)
                .then_some(m)
        },
    );
    let syncs = sample(
        &metrics,
        "sluice_proxy_sync_proxy_rules_duration_seconds_count",
    )
    .expect("sync duration histogram");
    assert!(syncs >= 1.0, "{metrics}");
    let latency_sum = sample(
        &metrics,
        "sluice_proxy_network_programming_duration_seconds_sum",
    )
    .expect("latency sum");
    let sync_sum = sample(
        &metrics,
        "sluice_proxy_sync_proxy_rules_duration_seconds_sum",
    )
    .expect("sync sum");
    eprintln!(
        "syncs={syncs} sync_sum={sync_sum:.4}s network_programming_sum={latency_sum:.4}s \
         rss={:?}",
        sample(&metrics, "process_resident_memory_bytes")
    );
    assert_eq!(
        sample(
            &metrics,
            "sluice_proxy_sync_proxy_rules_failures_total{mode=\"iptables\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(sample(
        &metrics,
        "sluice_proxy_sync_proxy_rules_last_timestamp_seconds"
    )
    .is_some_and(|t| t > 0.0));

    // LoadBalancer + externalTrafficPolicy Local: the health check node port.
    env.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }));
    let o = env.kubectl(&["get", "service", "lb", "-o", "json"], None);
    assert!(o.status.success(), "{}", text(&o));
    let svc: Value = serde_json::from_slice(&o.stdout).expect("service JSON");
    let hcnp = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no healthCheckNodePort allocated: {svc}"));
    let (code, body) = env.wait_for(
        "the health check port to open",
        Duration::from_secs(30),
        || env.get(hcnp, "/"),
    );
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("health check JSON");
    assert_eq!(
        v,
        json!({"service": {"namespace": "default", "name": "lb"},
               "localEndpoints": 0, "serviceProxyHealthy": true})
    );
    // An endpoint elsewhere does not count; one on this node does.
    env.apply(slice("lb-1", "lb", "10.200.0.6", "elsewhere"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.get(hcnp, "/").map(|r| r.0), Some(503));
    env.apply(slice("lb-2", "lb", "10.200.0.7", NODE));
    let body = env.wait_for("health check 200", Duration::from_secs(30), || {
        env.get(hcnp, "/")
            .and_then(|(code, body)| (code == 200).then_some(body))
    });
    assert!(body.contains("\"localEndpoints\":1"), "{body}");

    // debug dump inside the namespace shows the web Service's chain.
    let o = run(Command::new("ip")
        .args(["netns", "exec", &env.ns])
        .arg(bin("sluice-agent"))
        .args(["debug", "dump", "--proxy-mode", "iptables"]));
    assert!(o.status.success(), "debug dump: {}", text(&o));
    let dump = String::from_utf8_lossy(&o.stdout);
    let svc_rule = dump
        .lines()
        .find(|l| {
            l.starts_with("-A SLUICE-SVC-") && l.contains("default/web:http -> 10.200.0.5:8080")
        })
        .unwrap_or_else(|| panic!("no SLUICE-SVC- rule for web in:\n{dump}"));
    let chain = svc_rule.split_whitespace().nth(1).expect("chain");
    assert!(dump.contains(&format!(":{chain} - [0:0]\n")), "{dump}");
    assert!(
        dump.starts_with("*filter\n") && dump.contains("*nat\n"),
        "{dump}"
    );
    assert!(!dump.contains("-A PREROUTING"), "{dump}");

    // Deleting the Service closes its health check port.
    let o = env.kubectl(&["delete", "service", "lb"], None);
    assert!(o.status.success(), "{}", text(&o));
    env.wait_for(
        "the health check port to close",
        Duration::from_secs(30),
        || env.get(hcnp, "/").is_none().then_some(()),
    );
}
