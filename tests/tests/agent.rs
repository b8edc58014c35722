//! `sluice-agent` end to end, with real binaries in network namespaces this test creates:
//!
//! ```text
//!  lab netns: bridge br0 172.30.K.1/24 ── sluice-control (listens on 172.30.K.1:6443)
//!     │ veth                    │ veth
//!  node-1 netns: eth0 .11      node-2 netns: eth0 .12
//!     sluice-agent                sluice-agent
//! ```
//!
//! The lab namespace has no interface to the outside world. Assertions go through kubectl run
//! inside the lab namespace (`ip netns exec`) and `ip -n <ns> route`. Everything (processes,
//! namespaces) is removed in `Drop`. Needs root, `ip`, and a kubectl; otherwise prints SKIP
//! (a failure under `SLUICE_REQUIRE_ALL=1`). Build the binaries first:
//! `cargo build -p sluice-agent -p sluice-control`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{bin, ip_ok, is_root, kubectl_path, run, skip, text};

/// Polls `f` every 100 ms until it returns Some; panics with `what` (and `ctx()`) after `timeout`.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    ctx: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", ctx());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Why the privileged test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 `ip` not found".into());
    }
    if kubectl_path().is_none() {
        return Some("no kubectl found".into());
    }
    let probe = format!("sl-probe-{}", std::process::id());
    let ok = ip(&["netns", "add", &probe]).status.success();
    let _ = ip(&["netns", "del", &probe]);
    if !ok {
        return Some("cannot create network namespaces".into());
    }
    None
}

/// The lab: namespaces, processes, files. Torn down in `Drop`.
struct Lab {
    lab: String,
    nodes: [String; 2],
    /// Third octet of 172.30.K.0/24.
    k: u8,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
    control: Option<Child>,
    agents: [Option<Child>; 2],
}

const NODE_NAMES: [&str; 2] = ["node-1", "node-2"];

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let k = (pid % 200) as u8 + 20;
        let lab = Lab {
            lab: format!("sl-lab-{pid}"),
            nodes: [format!("sl-n1-{pid}"), format!("sl-n2-{pid}")],
            k,
            dir: tempfile::tempdir().expect("tempdir"),
            kubectl: kubectl_path().expect("checked"),
            control: None,
            agents: [None, None],
        };
        // Created before anything can fail, so Drop cleans up whatever exists.
        for ns in std::iter::once(&lab.lab).chain(lab.nodes.iter()) {
            ip_ok(&["netns", "add", ns]);
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let l = &lab.lab;
        ip_ok(&["-n", l, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&[
            "-n",
            l,
            "addr",
            "add",
            &format!("{}/24", lab.gw()),
            "dev",
            "br0",
        ]);
        ip_ok(&["-n", l, "link", "set", "br0", "up"]);
        for (i, ns) in lab.nodes.iter().enumerate() {
            let v = format!("v{}", i + 1);
            ip_ok(&[
                "-n", l, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip_ok(&["-n", l, "link", "set", &v, "master", "br0", "up"]);
            ip_ok(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", lab.node_ip(i)),
                "dev",
                "eth0",
            ]);
            ip_ok(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    fn gw(&self) -> String {
        format!("172.30.{}.1", self.k)
    }

    fn node_ip(&self, i: usize) -> String {
        format!("172.30.{}.{}", self.k, 11 + i)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    fn admin(&self) -> PathBuf {
        self.data().join("admin.kubeconfig")
    }

    fn cni_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1)).join("net.d")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["control", "agent-1", "agent-2"] {
            let body = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(40).collect();
            s.push_str(&format!("--- {name}.log (last 40 lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn start_control(&mut self) {
        let log = std::fs::File::create(self.log("control")).expect("log");
        let listen = format!("{}:6443", self.gw());
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.lab])
            .arg(bin("sluice-control"))
            .arg("--data-dir")
            .arg(self.data())
            .args(["--listen", &listen, "--advertise-address", &self.gw()])
            .args([
                "--node-monitor-grace-period",
                "5",
                "--node-monitor-period",
                "1",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning sluice-control");
        let out = child.stdout.take().expect("stdout");
        self.control = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("sluice-control serving on") => break,
                Ok(_) => {}
                Err(_) => panic!("sluice-control did not start\n{}", self.logs()),
            }
        }
    }

    fn node_kubeconfig(&self, i: usize) -> PathBuf {
        let p = self.dir.path().join(format!("node{}.kubeconfig", i + 1));
        if !p.exists() {
            let o = run(Command::new(bin("sluice-control"))
                .args(["token", "create", "--node", NODE_NAMES[i]])
                .arg("--data-dir")
                .arg(self.data())
                .arg("--kubeconfig-out")
                .arg(&p));
            assert!(o.status.success(), "token create: {}", text(&o));
        }
        p
    }

    fn start_agent(&mut self, i: usize) {
        let kc = self.node_kubeconfig(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(&format!("agent-{}", i + 1)))
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i]])
            .arg(bin("sluice-agent"))
            .arg("--kubeconfig")
            .arg(kc)
            .args(["--node-name", NODE_NAMES[i], "--node-ip", &self.node_ip(i)])
            .arg("--cni-conf-dir")
            .arg(self.cni_dir(i))
            .args(["--heartbeat-interval", "1s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning sluice-agent");
        self.agents[i] = Some(child);
    }

    fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        let home = self.dir.path().join("home");
        let _ = std::fs::create_dir_all(&home);
        run(Command::new("ip")
            .args(["netns", "exec", &self.lab])
            .arg(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.admin())
            .arg("--request-timeout=10s")
            .args(args)
            .env("HOME", home)
            .env_remove("KUBERNETES_SERVICE_HOST"))
    }

    /// All nodes as JSON (None when kubectl fails).
    fn nodes_json(&self) -> Option<Vec<Value>> {
        let o = self.kubectl(&["get", "nodes", "-o", "json"]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v["items"].as_array().cloned()
    }

    fn node(&self, name: &str) -> Option<Value> {
        self.nodes_json()?
            .into_iter()
            .find(|n| n["metadata"]["name"] == name)
    }

    fn routes(&self, i: usize) -> String {
        stdout(&ip(&["-n", &self.nodes[i], "-4", "route", "show"]))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.control))
        {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for ns in std::iter::once(&self.lab).chain(self.nodes.iter()) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn ready_status(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

/// `ping`, or busybox's.
fn ping_command() -> Option<Vec<String>> {
    let found = |name: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.exists())
    };
    if let Some(p) = found("ping") {
        return Some(vec![p.display().to_string()]);
    }
    found("busybox").map(|b| vec![b.display().to_string(), "ping".into()])
}

fn first_host(cidr: &str) -> String {
    let (net, _) = cidr.split_once('/').expect("CIDR");
    let mut o: Vec<u8> = net.split('.').map(|x| x.parse().expect("octet")).collect();
    o[3] += 1;
    format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
}

/// Registration, heartbeats, conflists, routes (and their cleanup), pod-CIDR traffic across
/// nodes without NAT, Ready=Unknown when an agent dies and Ready again when it returns.
#[test]
fn agents_register_route_pod_cidrs_and_heartbeat() {
    if let Some(why) = missing_prerequisite() {
        skip(&format!("agent e2e: {why}"));
        return;
    }
    let t0 = Instant::now();
    let mut lab = Lab::new();
    let k = lab.k;
    // Before any agent runs: a stale Sluice route (proto 92) that must go, and someone else's
    // route that must stay.
    ip_ok(&[
        "-n",
        &lab.nodes[0],
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        &format!("172.30.{k}.13"),
        "proto",
        "92",
    ]);
    ip_ok(&[
        "-n",
        &lab.nodes[0],
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        &format!("172.30.{k}.13"),
    ]);

    lab.start_control();
    lab.start_agent(0);
    lab.start_agent(1);

    // Both nodes register, get a podCIDR and are Ready with our nodeInfo and addresses.
    let cidrs: Vec<String> = wait_for(
        Duration::from_secs(30),
        "both nodes Ready with podCIDRs",
        || lab.logs(),
        || {
            let nodes = lab.nodes_json()?;
            NODE_NAMES
                .iter()
                .map(|name| {
                    let n = nodes.iter().find(|n| n["metadata"]["name"] == *name)?;
                    (ready_status(n)?.as_str() == "True").then_some(())?;
                    n["spec"]["podCIDR"].as_str().map(str::to_string)
                })
                .collect()
        },
    );
    println!(
        "nodes Ready with podCIDRs {cidrs:?} after {:?}",
        t0.elapsed()
    );
    assert_ne!(cidrs[0], cidrs[1]);
    for (i, name) in NODE_NAMES.iter().enumerate() {
        let n = lab.node(name).expect("node");
        let st = &n["status"];
        assert_eq!(st["nodeInfo"]["kubeletVersion"], "v1.35.0-sluice", "{n}");
        assert_eq!(st["nodeInfo"]["operatingSystem"], "linux", "{n}");
        assert!(
            st["nodeInfo"]["kernelVersion"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{n}"
        );
        let addrs = st["addresses"].as_array().expect("addresses");
        assert!(
            addrs
                .iter()
                .any(|a| a["type"] == "InternalIP" && a["address"] == lab.node_ip(i).as_str()),
            "{n}"
        );
        assert!(addrs.iter().any(|a| a["type"] == "Hostname"), "{n}");
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["reason"], "KubeletReady", "{n}");
        assert!(ready["lastHeartbeatTime"].is_string(), "{n}");
        let o = lab.kubectl(&["get", "lease", "-n", "kube-node-lease", name, "-o", "json"]);
        assert!(o.status.success(), "lease: {}", text(&o));
        let lease: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], *name);
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
        assert!(lease["spec"]["renewTime"].is_string());
    }

    // Each node routes the other's podCIDR via the other's IP; the stale route is gone, the
    // foreign one untouched.
    for i in 0..2 {
        let other = 1 - i;
        let want = format!(
            "{} via {} dev eth0 proto 92",
            cidrs[other],
            lab.node_ip(other)
        );
        wait_for(
            Duration::from_secs(15),
            &format!("route `{want}` on node {}", i + 1),
            || format!("{}\n{}", lab.routes(i), lab.logs()),
            || lab.routes(i).contains(&want).then_some(()),
        );
    }
    wait_for(
        Duration::from_secs(10),
        "stale proto-92 route removed",
        || lab.routes(0),
        || (!lab.routes(0).contains("10.244.250.0/24")).then_some(()),
    );
    assert!(
        lab.routes(0).contains("10.99.0.0/24"),
        "foreign route kept:\n{}",
        lab.routes(0)
    );
    println!("routes in place after {:?}", t0.elapsed());

    // The CNI conflist carries the node's podCIDR.
    for (i, cidr) in cidrs.iter().enumerate() {
        let path = lab.cni_dir(i).join("10-sluice.conflist");
        let body = wait_for(
            Duration::from_secs(10),
            "conflist",
            || lab.logs(),
            || std::fs::read_to_string(&path).ok(),
        );
        let v: Value = serde_json::from_str(&body).expect("conflist JSON");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "sluice");
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "sluice-cni");
        assert_eq!(p["bridge"], "sluice0");
        assert_eq!(p["ipam"]["ranges"][0][0]["subnet"], cidr.as_str());
        assert_eq!(
            p["ipam"]["ranges"][0][0]["gateway"],
            first_host(cidr).as_str()
        );
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    // Masquerade chain in the node's own namespace (written just after the conflist). Without
    // a working iptables in the namespace the agent logs and carries on: skip the check then.
    let nat_rules = |chain: Option<&str>| {
        let mut args = vec![
            "netns",
            "exec",
            &lab.nodes[0],
            "iptables",
            "-t",
            "nat",
            "-S",
        ];
        args.extend(chain);
        ip(&args)
    };
    let nat = nat_rules(None);
    if nat.status.success() {
        let s = wait_for(
            Duration::from_secs(10),
            "SLUICENODE-MASQ chain in node 1",
            || lab.logs(),
            || {
                let o = nat_rules(Some("SLUICENODE-MASQ"));
                o.status.success().then(|| stdout(&o))
            },
        );
        let want = format!("-s {} ! -d 10.244.0.0/16", cidrs[0]);
        assert!(s.contains(&want) && s.contains("MASQUERADE"), "{s}");
    } else {
        skip(&format!(
            "agent e2e: node masquerade (no working iptables nat table in a namespace; Debian: \
             iptables): {}",
            text(&nat)
        ));
    }

    // "Pods": the first address of each podCIDR on the node's lo. Node 1's "pod" pings node 2's
    // across the routes: the reply must come back to a pod address, so both routes work and
    // nothing is NATed.
    let pod = [first_host(&cidrs[0]), first_host(&cidrs[1])];
    for (ns, addr) in lab.nodes.iter().zip(&pod) {
        ip_ok(&["-n", ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
    }
    match ping_command() {
        Some(ping) => {
            let o = run(Command::new("ip")
                .args(["netns", "exec", &lab.nodes[0]])
                .args(&ping)
                .args(["-c", "2", "-W", "2", "-I", &pod[0], &pod[1]]));
            assert!(
                o.status.success(),
                "ping {} -> {}: {}\n{}",
                pod[0],
                pod[1],
                text(&o),
                lab.routes(0)
            );
            println!("pod-to-pod ping across nodes OK");
        }
        None => skip("agent e2e: pod-to-pod ping (no ping or busybox; install iputils-ping)"),
    }

    // Agent 2 dies: node 2 turns Ready=Unknown within the grace period (5 s + monitor period).
    lab.kill_agent(1);
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "node-2 Ready=Unknown",
        || lab.logs(),
        || {
            (lab.node("node-2").and_then(|n| ready_status(&n)).as_deref() == Some("Unknown"))
                .then_some(())
        },
    );
    let to_unknown = killed.elapsed();
    println!("node-2 Ready=Unknown {to_unknown:?} after its agent was killed");
    assert!(to_unknown < Duration::from_secs(10), "took {to_unknown:?}");
    assert_eq!(
        lab.node("node-1").and_then(|n| ready_status(&n)).as_deref(),
        Some("True")
    );

    // It comes back.
    lab.start_agent(1);
    let restarted = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "node-2 Ready=True again",
        || lab.logs(),
        || {
            (lab.node("node-2").and_then(|n| ready_status(&n)).as_deref() == Some("True"))
                .then_some(())
        },
    );
    println!(
        "node-2 Ready again {:?} after its agent restarted",
        restarted.elapsed()
    );

    // The restarted agent re-applied its masquerade rules without duplicating the jump.
    let o = run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.nodes[1],
        "iptables",
        "-t",
        "nat",
        "-S",
        "POSTROUTING",
    ]));
    if o.status.success() {
        let s = stdout(&o);
        assert_eq!(s.matches("-j SLUICENODE-MASQ").count(), 1, "{s}");
    }

    // Node 2 goes away for good: node 1's route to it goes too (the stray foreign route stays).
    lab.kill_agent(1);
    assert!(lab.routes(0).contains(&cidrs[1]), "{}", lab.routes(0));
    let o = lab.kubectl(&["delete", "node", "node-2"]);
    assert!(o.status.success(), "delete node: {}", text(&o));
    let deleted = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "node-1's route to node-2 removed",
        || format!("{}\n{}", lab.routes(0), lab.logs()),
        || (!lab.routes(0).contains(&cidrs[1])).then_some(()),
    );
    println!(
        "route withdrawn {:?} after the node was deleted",
        deleted.elapsed()
    );
    assert!(lab.routes(0).contains("10.99.0.0/24"), "{}", lab.routes(0));
    println!("total {:?}\n{}", t0.elapsed(), lab.logs());
}

/// `--proxy-mode` other than `none` fails clearly; `--help` documents every flag.
#[test]
fn agent_cli_help_and_unimplemented_proxy_modes() {
    let o = run(Command::new(bin("sluice-agent")).arg("--help"));
    assert!(o.status.success(), "{}", text(&o));
    let help = stdout(&o);
    for flag in [
        "--kubeconfig",
        "--node-name",
        "--node-ip",
        "--proxy-mode",
        "--cni-conf-dir",
        "--cni-bin-dir",
        "--bridge",
        "--heartbeat-interval",
        "--cluster-cidr",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    // Every mode is implemented: each gets as far as reading the kubeconfig.
    for mode in ["ipvs", "ebpf"] {
        let o = run(Command::new(bin("sluice-agent")).args([
            "--kubeconfig",
            "/nonexistent",
            "--node-name",
            "n",
            "--proxy-mode",
            mode,
        ]));
        assert!(!o.status.success(), "{mode}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("reading kubeconfig /nonexistent"),
            "{mode}: {}",
            text(&o)
        );
    }
    let o = run(Command::new(bin("sluice-agent")).args([
        "--kubeconfig",
        "k",
        "--node-name",
        "n",
        "--proxy-mode",
        "bogus",
    ]));
    assert!(!o.status.success());
}
