//! The lab end to end: `sluice-lab up` → nodes Ready with podCIDRs → a pod on node 1 reaches
//! a pod on node 2 by pod IP (ICMP and TCP, no NAT) → pod delete releases its address →
//! `sluice-lab down` leaves no namespace or process behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{is_root, lab, ok, skip, text, Kubectl};

fn netns_list() -> Vec<String> {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Brings the lab down even when an assertion fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.0.to_string_lossy()]);
        }
    }
}

fn kubectl_json(k: &Kubectl, lab_ns: &str, kubeconfig: &str, home: &Path, args: &[&str]) -> Value {
    let o = Command::new("ip")
        .args(["netns", "exec", lab_ns])
        .arg(&k.path)
        .env("HOME", home)
        .args(["--kubeconfig", kubeconfig, "--request-timeout=10s"])
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn lab_up_cross_node_pod_traffic_and_down() {
    if !is_root() {
        return skip("the lab needs root (network namespaces)");
    }
    if Command::new("ip").args(["netns", "list"]).output().is_err() {
        return skip("iproute2 is missing");
    }
    let Some(k) = Kubectl::preinstalled().or_else(Kubectl::debian_120) else {
        return skip("no kubectl to inspect the lab with");
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(&dir);
    let start = Instant::now();
    ok(lab(&["up", "--nodes", "2", "--dir", &d]));
    println!("lab up in {:?}", start.elapsed());
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let lab_ns = cluster["labNetns"].as_str().unwrap().to_string();
    let kubeconfig = cluster["kubeconfig"].as_str().unwrap().to_string();
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let cidrs: Vec<&str> = nodes
        .iter()
        .map(|n| n["podCIDR"].as_str().unwrap())
        .collect();
    assert!(
        cidrs[0].starts_with("10.244.") && cidrs[1].starts_with("10.244."),
        "{cidrs:?}"
    );
    assert_ne!(cidrs[0], cidrs[1]);

    // Both nodes Ready, seen through kubectl.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = kubectl_json(&k, &lab_ns, &kubeconfig, &home, &["get", "nodes"]);
        let ready = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n.pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count();
        if ready == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "nodes not Ready: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A server pod on n2 and a client pod on n1.
    let bb = "/bin/busybox";
    ok(lab(&[
        "pod",
        "create",
        "--dir",
        &d,
        "--node",
        "n2",
        "--name",
        "server",
        "--labels",
        "app=server",
        "--",
        bb,
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        bb,
        "echo",
        "hello-from-n2",
    ]));
    ok(lab(&[
        "pod", "create", "--dir", &d, "--node", "n1", "--name", "client", "--", bb, "sleep", "600",
    ]));
    let pods = kubectl_json(&k, &lab_ns, &kubeconfig, &home, &["get", "pods"]);
    let ip_of = |name: &str| -> String {
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .and_then(|p| p.pointer("/status/podIP"))
            .and_then(|i| i.as_str())
            .unwrap_or_else(|| panic!("no podIP for {name}: {pods}"))
            .to_string()
    };
    // Pod processes run in their node's cgroup (joined before `ip netns exec` hides /sys).
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    for p in state["pods"].as_array().unwrap() {
        let pid = p["pid"].as_i64().unwrap();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("0::/{lab_ns}/{}/", p["node"].as_str().unwrap());
        assert!(
            cg.lines().any(|l| l.starts_with(&want)),
            "pod {p} cgroup: {cg}"
        );
    }
    let server_ip = ip_of("server");
    let client_ip = ip_of("client");
    let in_cidr = |ip: &str, cidr: &str| ip.starts_with(cidr.trim_end_matches("0/24"));
    assert!(in_cidr(&server_ip, cidrs[1]), "{server_ip} in {}", cidrs[1]);
    assert!(in_cidr(&client_ip, cidrs[0]), "{client_ip} in {}", cidrs[0]);

    // ICMP and TCP from n1's pod to n2's pod by pod IP.
    ok(lab(&[
        "exec",
        "--dir",
        &d,
        "--pod",
        "default/client",
        "--",
        bb,
        "ping",
        "-c",
        "2",
        "-W",
        "3",
        &server_ip,
    ]));
    let mut got = String::new();
    for _ in 0..20 {
        let o = lab(&[
            "exec",
            "--dir",
            &d,
            "--pod",
            "default/client",
            "--",
            bb,
            "nc",
            "-w",
            "3",
            &server_ip,
            "8080",
        ]);
        got = String::from_utf8_lossy(&o.stdout).to_string();
        if got.contains("hello-from-n2") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(got.contains("hello-from-n2"), "TCP across nodes: {got:?}");

    // Deleting a pod releases its address (the lease file goes away) and its Pod object.
    let lease = dir.join("nodes/n1/ipam/sluice").join(&client_ip);
    assert!(
        lease.exists(),
        "lease {} exists while the pod runs",
        lease.display()
    );
    ok(lab(&[
        "pod",
        "delete",
        "--dir",
        &d,
        "--pod",
        "default/client",
    ]));
    assert!(!lease.exists(), "lease released");
    let pods = kubectl_json(&k, &lab_ns, &kubeconfig, &home, &["get", "pods"]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 1, "{pods}");

    // Down leaves nothing behind.
    ok(lab(&["down", "--dir", &d]));
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&lab_ns))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let procs = Command::new("pgrep").args(["-f", &d]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&procs.stdout).trim().is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}
