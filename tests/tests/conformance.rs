//! The Service conformance suite, written once and run for every proxy mode in the lab:
//! from real pods, through real kernel state, over real TCP connections.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{is_root, lab, ok, skip, text, Kubectl};

const BB: &str = "/bin/busybox";

struct Lab {
    dir: std::path::PathBuf,
    d: String,
    ns: String,
    kubeconfig: String,
    kubectl: Kubectl,
    home: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.dir.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.d]);
        }
    }
}

impl Lab {
    fn up(mode: &str) -> Option<Lab> {
        if !is_root() {
            skip("the lab needs root");
            return None;
        }
        let kubectl = Kubectl::preinstalled().or_else(Kubectl::debian_120)?;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let d = dir.to_string_lossy().to_string();
        ok(lab(&[
            "up",
            "--nodes",
            "2",
            "--proxy-mode",
            mode,
            "--dir",
            &d,
        ]));
        let cluster: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Some(Lab {
            ns: cluster["labNetns"].as_str().unwrap().to_string(),
            kubeconfig: cluster["kubeconfig"].as_str().unwrap().to_string(),
            dir,
            d,
            kubectl,
            home,
            _tmp: tmp,
        })
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(&self.kubectl.path)
            .env("HOME", &self.home)
            .args(["--kubeconfig", &self.kubeconfig, "--request-timeout=10s"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// A pod answering every TCP connection on 8080 with its own name.
    fn echo_pod(&self, node: &str, name: &str, app: &str) {
        ok(lab(&[
            "pod",
            "create",
            "--dir",
            &self.d,
            "--node",
            node,
            "--name",
            name,
            "--labels",
            &format!("app={app}"),
            "--",
            BB,
            "nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            BB,
            "echo",
            name,
        ]));
    }

    fn service(&self, name: &str, app: &str, extra_spec: &str) -> String {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {app}\n  ports:\n  - name: tcp\n    port: 80\n    targetPort: 8080\n{extra_spec}"
        );
        self.kubectl(&["apply", "-f", "-"], Some(&yaml));
        self.kubectl(
            &["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"],
            None,
        )
    }

    /// Runs `n` connections from `pod` to `ip:port` in one shell loop; returns each reply.
    fn connect_many(&self, pod: &str, ip: &str, port: u16, n: usize) -> Vec<String> {
        let script = format!("i=0; while [ $i -lt {n} ]; do {BB} nc -w 2 {ip} {port} </dev/null; echo \"|$?\"; i=$((i+1)); done");
        let o = lab(&[
            "exec", "--dir", &self.d, "--pod", pod, "--", BB, "sh", "-c", &script,
        ]);
        String::from_utf8_lossy(&o.stdout)
            .split('|')
            .map(|s| s.trim().to_string())
            .collect()
    }
}

fn count(replies: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        for line in r.lines() {
            let l = line.trim();
            if !l.is_empty() && !l.chars().all(|c| c.is_ascii_digit()) {
                *m.entry(l.to_string()).or_insert(0) += 1;
            }
        }
    }
    m
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The suite, for one mode.
fn conformance(mode: &str) {
    let Some(l) = Lab::up(mode) else { return };
    for (node, name) in [("n1", "web-1"), ("n2", "web-2"), ("n2", "web-3")] {
        l.echo_pod(node, name, "web");
    }
    ok(lab(&[
        "pod", "create", "--dir", &l.d, "--node", "n1", "--name", "client", "--", BB, "sleep",
        "3600",
    ]));
    let ip = l.service("web", "web", "");

    // 3 backends over 2 nodes: all answer, none under 15% of 300 new connections.
    let mut seen = BTreeMap::new();
    wait_until("all backends programmed", Duration::from_secs(20), || {
        seen = count(&l.connect_many("default/client", &ip, 80, 30));
        seen.len() == 3
    });
    let got = count(&l.connect_many("default/client", &ip, 80, 300));
    let total: usize = got.values().sum();
    assert!(total >= 290, "{total} of 300 connections answered: {got:?}");
    for (name, n) in &got {
        assert!(*n * 100 >= total * 15, "{name} got {n} of {total}: {got:?}");
    }

    // Zero endpoints: refused at once (REJECT), not a timeout.
    let empty = l.service("empty", "nothing", "");
    let start = Instant::now();
    let replies = l.connect_many("default/client", &empty, 80, 1);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "not refused immediately: {:?}",
        start.elapsed()
    );
    assert!(count(&replies).is_empty(), "{replies:?}");

    // Removing a backend stops new connections to it within the sync period.
    ok(lab(&[
        "pod",
        "delete",
        "--dir",
        &l.d,
        "--pod",
        "default/web-3",
    ]));
    wait_until("web-3 withdrawn", Duration::from_secs(20), || {
        !count(&l.connect_many("default/client", &ip, 80, 20)).contains_key("web-3")
    });
    let got = count(&l.connect_many("default/client", &ip, 80, 60));
    assert!(!got.contains_key("web-3"), "{got:?}");
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), ["web-1", "web-2"]);

    // ClientIP affinity pins the client to one backend.
    let sticky = l.service("sticky", "web", "  sessionAffinity: ClientIP\n");
    wait_until("sticky programmed", Duration::from_secs(20), || {
        !count(&l.connect_many("default/client", &sticky, 80, 1)).is_empty()
    });
    let got = count(&l.connect_many("default/client", &sticky, 80, 40));
    assert_eq!(got.len(), 1, "affinity: {got:?}");

    // Hairpin: a backend reaching itself through its own service.
    let solo = l.service("solo", "solo", "");
    l.echo_pod("n1", "solo-1", "solo");
    wait_until("hairpin", Duration::from_secs(20), || {
        count(&l.connect_many("default/solo-1", &solo, 80, 3)).contains_key("solo-1")
    });

    // Restarting the agents keeps an established connection through the ClusterIP open.
    ok(lab(&[
        "pod", "create", "--dir", &l.d, "--node", "n2", "--name", "cat-1", "--labels", "app=cat",
        "--", BB, "nc", "-ll", "-p", "8080", "-e", BB, "cat",
    ]));
    let cat = l.service("cat", "cat", "");
    wait_until("cat programmed", Duration::from_secs(20), || {
        let o = lab(&[
            "exec",
            "--dir",
            &l.d,
            "--pod",
            "default/client",
            "--",
            BB,
            "sh",
            "-c",
            &format!("echo hi | {BB} nc -w 2 {cat} 80"),
        ]);
        String::from_utf8_lossy(&o.stdout).contains("hi")
    });
    let out = l.dir.join("long.out");
    let script = format!(
        "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done | {BB} nc {cat} 80 > {}",
        out.display()
    );
    ok(lab(&[
        "pod", "create", "--dir", &l.d, "--node", "n1", "--name", "long", "--", BB, "sh", "-c",
        &script,
    ]));
    let lines = || {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_until("long connection flowing", Duration::from_secs(10), || {
        lines() >= 3
    });
    ok(lab(&["agent", "restart", "--dir", &l.d]));
    std::thread::sleep(Duration::from_secs(2));
    let before = lines();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        lines() > before + 3,
        "the established connection stalled after the restart ({before} → {})",
        lines()
    );
    // The programmed state is the same after the restart: the same chains in each node.
    let chains = |ns: &str| -> Vec<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "iptables-save"])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with(":SLUICE-"))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    let nodes: Vec<String> = {
        let c: Value =
            serde_json::from_slice(&std::fs::read(l.dir.join("cluster.json")).unwrap()).unwrap();
        c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["netns"].as_str().unwrap().to_string())
            .collect()
    };
    for ns in &nodes {
        assert!(!chains(ns).is_empty(), "{ns} has the mode's chains");
    }

    // Switching modes leaves nothing of the old one (node masquerade stays: it is not the proxy's).
    ok(lab(&[
        "agent",
        "restart",
        "--dir",
        &l.d,
        "--proxy-mode",
        "none",
    ]));
    for ns in &nodes {
        wait_until("iptables mode removed", Duration::from_secs(10), || {
            chains(ns).is_empty()
        });
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "iptables-save"])
            .output()
            .unwrap();
        let saved = String::from_utf8_lossy(&o.stdout);
        assert!(!saved.contains("SLUICE-"), "{ns}: {saved}");
        assert!(
            saved.contains("SLUICENODE-MASQ"),
            "{ns} lost node masquerade: {saved}"
        );
    }
}

#[test]
fn iptables_mode() {
    conformance("iptables");
}
