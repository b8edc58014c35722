//! The lab end to end: `sluice-lab up` → kubectl on the host (through the lab's forwarder)
//! sees the nodes Ready with podCIDRs → each node's containerd answers with the lab's images →
//! a CRI pod runs → a pod on node 1 reaches a pod on node 2 by pod IP (ICMP and TCP, no NAT) →
//! pod delete releases its address → `sluice-lab down` leaves no namespace, process (agents,
//! containerd, shims, containers, forwarder), cgroup, mount or listener behind; and the same
//! after a crash (containerd and the agents killed with SIGKILL, a container left running).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{is_root, lab, ok, skip, text, Kubectl};

/// The images `up` imports into every node's containerd.
const IMAGES: [&str; 3] = [
    sluice_images::PAUSE,
    sluice_images::ECHO,
    sluice_images::BUSYBOX,
];

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

/// kubectl on the host, with cluster.json's kubeconfig (the lab's forwarder on 127.0.0.1).
fn kubectl_json(k: &Kubectl, kubeconfig: &Path, home: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let o = k.run(kubeconfig, home, &all);
    assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Whether this machine can run the lab (root, iproute2, containerd, runc, ctr); `None` after
/// a [`skip`] when not.
fn can_run_lab() -> Option<()> {
    if !is_root() {
        skip("the lab needs root (network namespaces)");
        return None;
    }
    if Command::new("ip").args(["netns", "list"]).output().is_err() {
        skip("iproute2 is missing");
        return None;
    }
    for p in ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc"] {
        if !Path::new(p).exists() {
            skip(&format!("{p} is missing (Debian: containerd, runc)"));
            return None;
        }
    }
    for p in ["loopback", "portmap"] {
        if !Path::new("/usr/lib/cni").join(p).exists() {
            skip(&format!(
                "/usr/lib/cni/{p} is missing (containernetworking-plugins)"
            ));
            return None;
        }
    }
    Some(())
}

/// A live (non-zombie) process.
fn alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    !matches!(state, Some("Z") | None)
}

/// Live pids whose command line mentions `what`.
fn pids_mentioning(what: &str) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|&pid| pid != std::process::id() as i64)
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// Live pids in a cgroup at or below `/<lab>` in any hierarchy.
fn pids_in_lab_cgroups(lab: &str) -> Vec<(i64, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter_map(|pid| {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            cg.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .any(|p| p == format!("/{lab}") || p.starts_with(&format!("/{lab}/")))
                .then_some((pid, cg))
        })
        .filter(|(pid, _)| alive(*pid))
        .collect()
}

/// The pids `lab.json` names (control plane, forwarder, agents, containerds, process pods).
fn recorded_pids(dir: &Path) -> Vec<i64> {
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let mut pids = vec![
        state["control_pid"].as_i64().unwrap(),
        state["forward_pid"].as_i64().unwrap(),
    ];
    for n in state["nodes"].as_array().unwrap() {
        pids.push(n["agent_pid"].as_i64().unwrap());
        pids.push(n["containerd"]["pid"].as_i64().unwrap());
    }
    for p in state["pods"].as_array().unwrap() {
        pids.push(p["pid"].as_i64().unwrap());
    }
    pids
}

/// CRI sandbox ids under the lab's containerd roots.
fn sandbox_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for n in std::fs::read_dir(dir.join("nodes")).unwrap().flatten() {
        let d = n
            .path()
            .join("containerd/root/io.containerd.grpc.v1.cri/sandboxes");
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            ids.push(e.file_name().to_string_lossy().to_string());
        }
    }
    ids
}

/// The shims' sockets (containerd 1.6 keeps them in the machine's /run/containerd/s), as the
/// task bundles under the lab's containerd state dirs name them.
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for n in std::fs::read_dir(dir.join("nodes")).unwrap().flatten() {
        let tasks = n
            .path()
            .join("containerd/state/io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(a) = std::fs::read_to_string(b.path().join("address")) {
                    if let Some(p) = a.trim().strip_prefix("unix://") {
                        v.push(PathBuf::from(p));
                    }
                }
            }
        }
    }
    v
}

/// Runs `down` and checks that nothing of the lab is left: its namespaces, every process it
/// started (`before`: pids seen while it ran) or that mentions its directory, every process
/// in its cgroups, its cgroup directories in every hierarchy, mounts under its directory,
/// libcni result caches of its sandboxes, the forwarder's listener.
fn down_and_check_clean(d: &str, lab_ns: &str, port: u16, before: &[i64]) {
    let dir = Path::new(d);
    let sandboxes = sandbox_ids(dir);
    let sockets = shim_sockets(dir);
    let t = Instant::now();
    ok(lab(&["down", "--dir", d]));
    println!("lab down in {:?}", t.elapsed());
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(lab_ns))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let live: Vec<i64> = before.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        live.is_empty(),
        "processes of the lab still alive: {live:?}"
    );
    let procs = pids_mentioning(d);
    assert!(procs.is_empty(), "processes naming {d} left: {procs:?}");
    let in_cg = pids_in_lab_cgroups(lab_ns);
    assert!(
        in_cg.is_empty(),
        "processes left in the lab's cgroups: {in_cg:?}"
    );
    let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(lab_ns))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(d))
        .map(str::to_string)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let caches: Vec<String> = std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|f| sandboxes.iter().any(|id| f.contains(id.as_str())))
        .collect();
    assert!(caches.is_empty(), "libcni result caches left: {caches:?}");
    let sockets: Vec<&PathBuf> = sockets.iter().filter(|p| p.exists()).collect();
    assert!(sockets.is_empty(), "shim sockets left: {sockets:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on the forwarder's port {port}"
    );
    assert!(!dir.join("lab.json").exists());
    assert!(!dir.join("kubeconfig").exists());
    assert!(!dir.join("nodes/n1/containerd").exists());
}

/// Waits until the nodes are Ready, seen by kubectl on the host.
fn wait_nodes_ready(k: &Kubectl, kubeconfig: &Path, home: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = kubectl_json(k, kubeconfig, home, &["get", "nodes"]);
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
        if ready == n {
            return;
        }
        assert!(Instant::now() < deadline, "nodes not Ready: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `ctr -a <sock> -n k8s.io images ls -q` lists the lab's images.
fn assert_images(sock: &str) {
    let o = Command::new("ctr")
        .args(["-a", sock, "-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ctr images ls: {}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    for want in IMAGES {
        assert!(
            listed.lines().any(|l| l == want),
            "{sock} lacks {want}: {listed}"
        );
    }
}

#[test]
fn lab_up_cross_node_pod_traffic_and_down() {
    if can_run_lab().is_none() {
        return;
    }
    let Some(k) = Kubectl::preinstalled().or_else(Kubectl::debian_120) else {
        return skip("no kubectl to inspect the lab with");
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(&dir);
    let start = Instant::now();
    let out = ok(lab(&["up", "--nodes", "2", "--dir", &d]));
    println!("lab up in {:?}", start.elapsed());
    assert_eq!(
        out.trim(),
        format!("export KUBECONFIG={d}/kubeconfig"),
        "up's output"
    );
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let lab_ns = cluster["labNetns"].as_str().unwrap().to_string();
    let kubeconfig = PathBuf::from(cluster["kubeconfig"].as_str().unwrap());
    assert_eq!(kubeconfig, dir.join("kubeconfig"));
    let lab_kubeconfig = cluster["labKubeconfig"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(lab_kubeconfig)
            .unwrap()
            .contains("server: https://172.31.0.1:6443"),
        "{lab_kubeconfig}"
    );
    let host_api = cluster["hostApiServer"].as_str().unwrap();
    let port: u16 = host_api
        .strip_prefix("https://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("hostApiServer {host_api}"));
    assert!(
        std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .contains(&format!("server: {host_api}")),
        "the host kubeconfig names the forwarder"
    );
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().mode() & 0o077,
        0,
        "the kubeconfig (a token) is private"
    );
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

    // Both nodes Ready, seen through kubectl on the host (no address added to the host).
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    wait_nodes_ready(&k, &kubeconfig, &home, 2);

    // Each node's containerd answers and holds the lab's images.
    for n in nodes {
        assert_images(n["containerdSocket"].as_str().unwrap());
    }

    // A CRI pod: the agent runs it through n1's containerd, in n1's podCIDR, its cgroups
    // under the lab's.
    let o = k.run(
        &kubeconfig,
        &home,
        &[
            "run",
            "cri-sleeper",
            "--image",
            sluice_images::BUSYBOX,
            "--restart=Never",
            "--overrides",
            r#"{"spec":{"nodeName":"n1"}}"#,
            "--command",
            "--",
            "/bin/sleep",
            "3600",
        ],
    );
    assert!(o.status.success(), "kubectl run: {}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(60);
    let cri_ip = loop {
        let p = kubectl_json(&k, &kubeconfig, &home, &["get", "pod", "cri-sleeper"]);
        if p.pointer("/status/phase") == Some(&Value::from("Running")) {
            break p["status"]["podIP"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "CRI pod not Running: {p}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        cri_ip.starts_with(cidrs[0].trim_end_matches("0/24")),
        "{cri_ip} in {}",
        cidrs[0]
    );
    let sleeper: Vec<(i64, String)> = pids_in_lab_cgroups(&lab_ns)
        .into_iter()
        .filter(|(_, cg)| cg.contains(&format!("/{lab_ns}/n1/kubepods/")))
        .collect();
    assert!(
        !sleeper.is_empty(),
        "no process in /{lab_ns}/n1/kubepods/… cgroups"
    );

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
    let pods = kubectl_json(&k, &kubeconfig, &home, &["get", "pods"]);
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

    // The lab's process pods are mirror pods (`kubernetes.io/config.mirror`): the agent, which
    // runs every other pod bound to its node through containerd, leaves them to the lab. It
    // makes a sandbox within ~100 ms of seeing a pod (the CRI pod above shows it can), so a
    // second later n2's containerd would hold one for `server`; and the status is the lab's.
    let n2_sock = nodes[1]["containerdSocket"].as_str().unwrap();
    let o = Command::new("ctr")
        .args(["-a", n2_sock, "-n", "k8s.io", "containers", "ls", "-q"])
        .arg(r#"labels."io.kubernetes.pod.name"==server"#)
        .output()
        .unwrap();
    assert!(o.status.success(), "ctr containers ls: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "the agent made a sandbox for the lab's mirror pod `server`: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let server = kubectl_json(&k, &kubeconfig, &home, &["get", "pod", "server"]);
    assert_eq!(
        server["metadata"]["annotations"]["kubernetes.io/config.mirror"], "sluice-lab",
        "{server}"
    );
    assert_eq!(
        server.pointer("/status/podIP").and_then(|i| i.as_str()),
        Some(server_ip.as_str()),
        "the agent rewrote a lab pod's status: {server}"
    );
    assert_eq!(
        server.pointer("/status/phase").and_then(|i| i.as_str()),
        Some("Running"),
        "{server}"
    );

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
    let pods = kubectl_json(&k, &kubeconfig, &home, &["get", "pods"]);
    let names: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cri-sleeper", "server"], "{pods}");

    // Down leaves nothing behind: processes seen now include containerd's shims and the
    // CRI pod's processes.
    let mut before = recorded_pids(&dir);
    before.extend(pids_mentioning(&format!("{d}/nodes")));
    before.extend(pids_in_lab_cgroups(&lab_ns).into_iter().map(|(p, _)| p));
    down_and_check_clean(&d, &lab_ns, port, &before);
}

/// `down` after a crash: n1's containerd and every agent killed with SIGKILL while a
/// container (made with `ctr`, its shim left orphaned) runs on n1. Runs beside the other test:
/// two labs at once, each with its own forwarder port.
#[test]
fn lab_down_cleans_up_after_a_crash() {
    if can_run_lab().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(&dir);
    let t = Instant::now();
    ok(lab(&["up", "--nodes", "2", "--dir", &d]));
    println!("lab up in {:?}", t.elapsed());
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let lab_ns = cluster["labNetns"].as_str().unwrap().to_string();
    let port: u16 = cluster["hostApiServer"]
        .as_str()
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .unwrap();
    let sock = cluster["nodes"][0]["containerdSocket"]
        .as_str()
        .unwrap()
        .to_string();
    assert_images(&sock);
    // A container in the lab's cgroup tree, as a CRI pod's would be. Its runc state goes
    // under the node's containerd directory (ctr's default is the machine's /run/containerd)
    // and it has no stdio fifos (ctr would leave them in /run/containerd/fifo).
    let o = Command::new("ctr")
        .args(["-a", &sock, "-n", "k8s.io", "run", "-d", "--null-io"])
        .arg("--runc-root")
        .arg(dir.join("nodes/n1/containerd/runc"))
        .arg("--cgroup")
        .arg(format!("/{lab_ns}/n1/crash-test"))
        .args([sluice_images::BUSYBOX, "crash-test", "/bin/sleep", "3600"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ctr run: {}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_in_lab_cgroups(&lab_ns).is_empty() {
        assert!(Instant::now() < deadline, "the ctr container did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut before = recorded_pids(&dir);
    let shims = pids_mentioning(&format!("{d}/nodes/n1"))
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("containerd-shim"))
        })
        .collect::<Vec<_>>();
    assert!(!shims.is_empty(), "no shim for the ctr container");
    assert!(
        !shim_sockets(&dir).is_empty(),
        "the ctr container's bundle names its shim's socket"
    );
    before.extend(&shims);
    before.extend(pids_in_lab_cgroups(&lab_ns).into_iter().map(|(p, _)| p));

    // The crash.
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let mut victims = vec![state["nodes"][0]["containerd"]["pid"].as_i64().unwrap()];
    for n in state["nodes"].as_array().unwrap() {
        victims.push(n["agent_pid"].as_i64().unwrap());
    }
    for p in &victims {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while victims.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "{victims:?} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        shims.iter().all(|&p| alive(p)),
        "the shim outlives containerd (so down must find it)"
    );
    down_and_check_clean(&d, &lab_ns, port, &before);
}
