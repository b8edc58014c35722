//! The Service conformance suite, written once and run for every proxy mode in the lab:
//! from real pods, through real kernel state, over real TCP connections.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::vm::{self, Vm};
use sluice_tests::{bin, is_root, lab, not_applicable, ok, skip, text, Kubectl, REQUIRE_ALL};

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

/// The agents' last log lines: they say why a check failed (in a VM, the lab's directory is
/// gone once the run ends).
fn print_agent_logs(dir: &Path) {
    for node in ["n1", "n2"] {
        let log = dir.join(format!("logs/agent-{node}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- last lines of {}:", log.display());
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SLUICE_LAB_LOGS").is_some() {
            print_agent_logs(&self.dir);
        }
        if self.dir.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.d]);
        }
    }
}

impl Lab {
    /// A two-node lab running `mode`; `None` after [`skip`] when this machine cannot host one
    /// (not root, no kubectl).
    fn up(mode: &str) -> Option<Lab> {
        if !is_root() {
            skip("the lab needs root");
            return None;
        }
        let Some(kubectl) = Kubectl::preinstalled().or_else(Kubectl::debian_120) else {
            skip("no kubectl to drive the lab with (preinstalled or Debian 1.20 at /opt/kc)");
            return None;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let d = dir.to_string_lossy().to_string();
        // Process pods only (`sluice-lab pod create`): no containerd on the nodes.
        let up = lab(&[
            "up",
            "--nodes",
            "2",
            "--proxy-mode",
            mode,
            "--no-containerd",
            "--dir",
            &d,
        ]);
        if !up.status.success() {
            print_agent_logs(&dir);
            let _ = lab(&["down", "--dir", &d]);
        }
        ok(up);
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
        // From the host: cluster.json's kubeconfig names the lab's forwarder on 127.0.0.1.
        let mut c = Command::new(&self.kubectl.path);
        c.env("HOME", &self.home)
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

    /// A pod `cat-1` on n2 echoing every TCP connection back, behind the Service `cat`; its
    /// ClusterIP, once the pod `client` reaches it.
    fn cat_service(&self) -> String {
        ok(lab(&[
            "pod", "create", "--dir", &self.d, "--node", "n2", "--name", "cat-1", "--labels",
            "app=cat", "--", BB, "nc", "-ll", "-p", "8080", "-e", BB, "cat",
        ]));
        let cat = self.service("cat", "cat", "");
        wait_until("cat programmed", Duration::from_secs(20), || {
            let o = lab(&[
                "exec",
                "--dir",
                &self.d,
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
        cat
    }

    /// Ends every connection of pod `name` with a TCP reset: its processes are stopped until
    /// unread data queues on their sockets, then killed (closing a socket with unread data
    /// resets the connection).
    fn reset_connections_of(&self, name: &str) {
        let state: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("lab.json")).unwrap()).unwrap();
        let pod = state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {name} in the lab"));
        let netns = pod["netns"].as_str().unwrap();
        let o = Command::new("ip")
            .args(["netns", "pids", netns])
            .output()
            .unwrap();
        let pids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert!(!pids.is_empty(), "pod {name} has no processes");
        let kill = |sig: &str| {
            let mut args = vec!["kill".to_string(), sig.to_string()];
            args.extend(pids.iter().cloned());
            Command::new(BB).args(&args).status().unwrap();
        };
        kill("-STOP");
        std::thread::sleep(Duration::from_secs(1));
        kill("-KILL");
    }

    /// A pod `long` on n1 holding one connection to `ip:80` that carries a tick every 200 ms;
    /// what comes back is written to `out`, a line per tick.
    fn long_connection(&self, ip: &str, out: &Path) {
        self.long_connection_from("long", ip, out)
    }

    /// [`Self::long_connection`] from a pod of another name.
    fn long_connection_from(&self, pod: &str, ip: &str, out: &Path) {
        let script = format!(
            "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done | {BB} nc {ip} 80 > {}",
            out.display()
        );
        ok(lab(&[
            "pod", "create", "--dir", &self.d, "--node", "n1", "--name", pod, "--", BB, "sh", "-c",
            &script,
        ]));
    }

    fn service(&self, name: &str, app: &str, extra_spec: &str) -> String {
        self.service_with_ports(
            name,
            app,
            "  - name: tcp\n    port: 80\n    targetPort: 8080\n",
            extra_spec,
        )
    }

    /// Applies a Service selecting `app=<app>` with the given `ports:` items; returns its ClusterIP.
    fn service_with_ports(&self, name: &str, app: &str, ports: &str, extra_spec: &str) -> String {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {app}\n  ports:\n{ports}{extra_spec}"
        );
        self.kubectl(&["apply", "-f", "-"], Some(&yaml));
        self.kubectl(
            &["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"],
            None,
        )
    }

    fn node_port(&self, name: &str) -> u16 {
        self.kubectl(
            &[
                "get",
                "service",
                name,
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ],
            None,
        )
        .trim()
        .parse()
        .unwrap()
    }

    /// `(name, netns, ip)` of each node.
    fn nodes(&self) -> Vec<(String, String, String)> {
        let c: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("cluster.json")).unwrap()).unwrap();
        c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let f = |k: &str| n[k].as_str().unwrap().to_string();
                (f("name"), f("netns"), f("ip"))
            })
            .collect()
    }

    /// Runs `n` connections to `ip:port` from the lab namespace — a client outside every node.
    fn connect_many_outside(&self, ip: &str, port: u16, n: usize) -> Vec<String> {
        let script = format!("i=0; while [ $i -lt {n} ]; do {BB} nc -w 2 {ip} {port} </dev/null; echo \"|$?\"; i=$((i+1)); done");
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns, BB, "sh", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split('|')
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// One UDP request from `pod` to `addr` from source port `src`; the reply, `timeout` or
    /// `error: …`.
    fn udp_ask(&self, pod: &str, addr: &str, src: u16) -> String {
        let udp = bin("sluice-udp");
        let o = lab(&[
            "exec",
            "--dir",
            &self.d,
            "--pod",
            pod,
            "--",
            &udp.to_string_lossy(),
            "ask",
            addr,
            &src.to_string(),
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
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

/// What a proxy mode can promise beyond the common contract.
/// A mode's kernel state for a node: (lab dir, node name, node netns) → sorted lines.
type StateFn = fn(&Path, &str, &str) -> Vec<String>;

struct Mode {
    /// `--proxy-mode` value.
    name: &'static str,
    /// The kernel state the mode programmed for a node (name, namespace), normalised and sorted
    /// (what must survive an agent restart unchanged and vanish on a mode switch).
    programmed: StateFn,
    /// How the mode's `debug dump` spells a cluster IP it serves.
    dump_names: fn(&str) -> String,
    /// The mode's state lives in the kernel: an agent restart keeps established connections and
    /// reprograms exactly the same rules. (A userspace proxy's connections live in the agent.)
    kernel_datapath: bool,
}

/// The client address a `peer` pod saw, from `ss -tnH state connected` output
/// (`… [::ffff:172.31.0.1]:4242`; the connection may already be in CLOSE-WAIT, since the
/// client sends nothing and closes at once).
fn peer_ip(ss: &str) -> Option<String> {
    let line = ss.lines().find(|l| !l.trim().is_empty())?;
    let peer = line.split_whitespace().last()?;
    let (host, _port) = peer.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(host.trim_start_matches("::ffff:").to_string())
}

/// The Sluice rules of a node namespace (`iptables-save` lines naming `prefix`, counters cut).
fn iptables_lines(ns: &str, prefix: &str) -> Vec<String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-save"])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(prefix))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect();
    v.sort();
    v
}

fn iptables_state(_lab: &Path, _node: &str, ns: &str) -> Vec<String> {
    iptables_lines(ns, "SLUICE-")
}

fn userspace_state(_lab: &Path, _node: &str, ns: &str) -> Vec<String> {
    iptables_lines(ns, "SLUICEUS-")
}

/// `sluice-agent debug dump` run in a node's network namespace (through `nsenter`, which
/// unlike `ip netns exec` keeps the host's /sys, so bpffs and the cgroup tree stay visible).
fn debug_dump(lab: &Path, node: &str, ns: &str, mode: &str) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(bin("sluice-agent"))
        .args(["debug", "dump", "--proxy-mode", mode, "--node-name", node])
        .arg("--bpf-dir")
        .arg(lab.join("bpf"))
        .output()
        .unwrap()
}

/// The ebpf mode's maps for a node (its `debug dump`), and its pin directory if one is left.
fn ebpf_state(lab: &Path, node: &str, ns: &str) -> Vec<String> {
    let o = debug_dump(lab, node, ns, "ebpf");
    let mut v: Vec<String> = if o.status.success() {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let pins = lab.join("bpf").join(node);
    if pins.exists() {
        v.push(format!("pins: {}", pins.display()));
    }
    v
}

/// Sluice's nftables tables in a node namespace, one chain header, rule, set declaration line
/// or element per entry (nft groups several elements per line in its own order), sorted;
/// affinity entries' countdowns dropped.
fn nftables_state(_lab: &Path, _node: &str, ns: &str) -> Vec<String> {
    let mut v = Vec::new();
    for family in ["ip", "ip6"] {
        let o = Command::new("ip")
            .args([
                "netns", "exec", ns, "nft", "list", "table", family, "sluice",
            ])
            .output()
            .unwrap();
        if !o.status.success() {
            continue;
        }
        v.extend(
            String::from_utf8_lossy(&o.stdout)
                .split(['\n', '{', '}', ','])
                .map(|l| l.split(" expires ").next().unwrap_or(l).trim().to_string())
                .filter(|l| !l.is_empty())
                .map(|l| format!("{family}: {l}")),
        );
    }
    v.sort();
    v
}

/// The ipvs mode's kernel state in a node namespace: its virtual servers and real servers
/// (`ipvsadm -Sn`), the addresses on its dummy link and its nftables table, sorted.
fn ipvs_state(_lab: &Path, _node: &str, ns: &str) -> Vec<String> {
    let run = |args: &[&str]| {
        let o = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let mut v: Vec<String> = run(&["ipvsadm", "-Sn"])
        .lines()
        .map(|l| format!("ipvs: {l}"))
        .collect();
    v.extend(
        run(&["ip", "-o", "-4", "addr", "show", "dev", "sluice-ipvs0"])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(|a| format!("addr: {a}"))),
    );
    v.extend(
        run(&["nft", "list", "table", "ip", "sluice-ipvs"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| format!("nft: {l}")),
    );
    v.sort();
    v
}

/// The suite, for one mode.
fn conformance(mode: Mode) {
    let Some(l) = Lab::up(mode.name) else { return };
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
    let nodes = l.nodes();

    // `sluice-agent debug dump` shows what the mode programmed for the service, on every node.
    for (node, ns, _) in &nodes {
        let dump = ok(debug_dump(&l.dir, node, ns, mode.name));
        assert!(
            dump.contains(&(mode.dump_names)(&ip)),
            "{node}: dump lacks the web service ({ip}):\n{dump}"
        );
    }

    // A mode that is not iptables' or nftables' writes no rules there.
    for (node, ns, _) in &nodes {
        for (other, state) in [
            (
                "iptables",
                iptables_state as fn(&Path, &str, &str) -> Vec<String>,
            ),
            ("userspace", userspace_state),
            ("nftables", nftables_state),
            ("ipvs", ipvs_state),
        ] {
            if other != mode.name {
                let left = state(&l.dir, node, ns);
                assert!(
                    left.is_empty(),
                    "{node} has {other} rules in {} mode: {left:?}",
                    mode.name
                );
            }
        }
    }

    // NodePort from a client outside the nodes reaches backends on both nodes, via either node.
    l.service("web-np", "web", "  type: NodePort\n");
    let np = l.node_port("web-np");
    for (node, _, node_ip) in &nodes {
        let mut seen = BTreeMap::new();
        wait_until(
            &format!("NodePort {np} on {node} reaches every backend"),
            Duration::from_secs(20),
            || {
                for (k, v) in count(&l.connect_many_outside(node_ip, np, 20)) {
                    *seen.entry(k).or_insert(0) += v;
                }
                seen.len() == 3
            },
        );
    }

    // externalTrafficPolicy: Local — served by the node with an endpoint (client address kept),
    // dropped (not refused) by the node without one.
    let (n1, _, n1_ip) = &nodes[0];
    let (n2, _, n2_ip) = &nodes[1];
    ok(lab(&[
        "pod",
        "create",
        "--dir",
        &l.d,
        "--node",
        n2,
        "--name",
        "local-1",
        "--labels",
        "app=local",
        "--",
        BB,
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "/usr/bin/ss",
        "-tnH",
        "state",
        "connected",
    ]));
    l.service(
        "local",
        "local",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
    );
    let lnp = l.node_port("local");
    let mut reply = Vec::new();
    wait_until(
        &format!("ETP Local NodePort served by {n2}"),
        Duration::from_secs(20),
        || {
            reply = l.connect_many_outside(n2_ip, lnp, 1);
            count(&reply).len() == 1
        },
    );
    let seen_ip = peer_ip(&reply[0]);
    if mode.kernel_datapath {
        assert_eq!(
            seen_ip.as_deref(),
            Some("172.31.0.1"),
            "client address not preserved: {reply:?}"
        );
    } else {
        not_applicable(&format!(
            "client address preservation for ETP Local: the {} mode proxies in the agent, the backend sees {seen_ip:?}",
            mode.name
        ));
    }
    let start = Instant::now();
    let dropped = l.connect_many_outside(n1_ip, lnp, 1);
    assert!(
        count(&dropped).is_empty(),
        "{n1} has no local endpoint but answered: {dropped:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1800),
        "{n1} refused instead of dropping (after {:?}): {dropped:?}",
        start.elapsed()
    );

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

    // UDP: answered through the ClusterIP; a flow (same client port) whose backend goes away
    // moves to the remaining backend; a UDP service without endpoints refuses, and once it gets
    // an endpoint the same flow is answered.
    let udp = bin("sluice-udp");
    let udp = udp.to_string_lossy();
    for (node, name) in [(n1, "dns-1"), (n2, "dns-2")] {
        ok(lab(&[
            "pod", "create", "--dir", &l.d, "--node", node, "--name", name, "--labels", "app=dns",
            "--", &udp, "serve", "5353", name,
        ]));
    }
    // A long-lived connected UDP socket on the service's address, opened before the Service
    // exists (an application that resolved the name early, or raced the proxy): unanswered at
    // first, it must be answered once the Service is programmed, with nothing but the
    // dataplane's help — NAT modes flush the flow's conntrack entry (0 → N endpoints), the
    // ebpf mode, whose hook let the socket connect to the bare address, destroys it. Then it
    // stays on one backend.
    let dns_ip = "10.111.255.53";
    let dns_addr = format!("{dns_ip}:53");
    let stream_out = l.dir.join("udp-stream.out");
    ok(lab(&[
        "pod",
        "create",
        "--dir",
        &l.d,
        "--node",
        n1,
        "--name",
        "udp-stream",
        "--",
        BB,
        "sh",
        "-c",
        &format!("{udp} stream {dns_addr} > {}", stream_out.display()),
    ]));
    wait_until(
        "the UDP stream to a Service not created yet runs (unanswered)",
        Duration::from_secs(20),
        || !lines_of(&stream_out).is_empty(),
    );
    let dns = l.service_with_ports(
        "dns",
        "dns",
        "  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n",
        &format!("  clusterIP: {dns_ip}\n"),
    );
    assert_eq!(dns, dns_ip);
    let mut first = String::new();
    wait_until(
        "the connected UDP stream answers",
        Duration::from_secs(20),
        || {
            first = lines_of(&stream_out).last().cloned().unwrap_or_default();
            first.starts_with("dns-")
        },
    );
    // And a flow of separate sockets from one source port (one conntrack entry in NAT modes).
    wait_until("UDP service answers", Duration::from_secs(20), || {
        l.udp_ask("default/client", &dns_addr, 40000)
            .starts_with("dns-")
    });
    // The backend the stream is stuck on goes.
    let streamed_at_delete = lines_of(&stream_out).len();
    ok(lab(&[
        "pod",
        "delete",
        "--dir",
        &l.d,
        "--pod",
        &format!("default/{first}"),
    ]));
    let other = if first == "dns-1" { "dns-2" } else { "dns-1" };
    let mut last = String::new();
    wait_until(
        &format!("the UDP flow moves from {first} to {other}"),
        Duration::from_secs(20),
        || {
            last = l.udp_ask("default/client", &dns_addr, 40000);
            last == other
        },
    );
    // The connected socket moves too: NAT modes re-translate its next datagram once the
    // flow's conntrack entry is flushed; the ebpf mode, whose socket is really connected to
    // the removed backend, destroys it (the application sees an error and reconnects).
    let streamed_before = lines_of(&stream_out).len();
    wait_until(
        &format!("the connected UDP stream moves to {other}"),
        Duration::from_secs(20),
        || lines_of(&stream_out).last().is_some_and(|r| r == other),
    );
    let streamed = lines_of(&stream_out);
    println!(
        "connected UDP stream across the removal: {:?}",
        &streamed[streamed_before.saturating_sub(3)..]
    );
    if mode.name == "ebpf" {
        assert!(
            streamed[streamed_at_delete.min(streamed_before.saturating_sub(5))..]
                .iter()
                .any(|r| r.starts_with("error")),
            "the ebpf mode did not destroy the socket connected to {first}: {streamed:?}"
        );
    }
    let late = l.service_with_ports(
        "late",
        "late",
        "  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n",
        "",
    );
    let late_addr = format!("{late}:53");
    wait_until(
        "UDP service without endpoints refuses",
        Duration::from_secs(20),
        || {
            l.udp_ask("default/client", &late_addr, 40001)
                .contains("refused")
        },
    );
    ok(lab(&[
        "pod", "create", "--dir", &l.d, "--node", n2, "--name", "late-1", "--labels", "app=late",
        "--", &udp, "serve", "5353", "late-1",
    ]));
    wait_until(
        "UDP service answers on the same flow after 0 → 1 endpoints",
        Duration::from_secs(20),
        || l.udp_ask("default/client", &late_addr, 40001) == "late-1",
    );

    // ClientIP affinity pins the client to one backend.
    let sticky = l.service("sticky", "web", "  sessionAffinity: ClientIP\n");
    wait_until("sticky programmed", Duration::from_secs(20), || {
        !count(&l.connect_many("default/client", &sticky, 80, 1)).is_empty()
    });
    let got = count(&l.connect_many("default/client", &sticky, 80, 40));
    assert_eq!(got.len(), 1, "affinity: {got:?}");

    // ipvs: a Service picks its own scheduler by annotation; source hashing keeps one client on
    // one backend without any affinity setting (the node's default, round robin, spreads).
    if mode.name == "ipvs" {
        let hashed = l.service("hashed", "web", "");
        l.kubectl(
            &[
                "annotate",
                "service",
                "hashed",
                "ipvs.sluice.dev/scheduler=sh",
            ],
            None,
        );
        let want = format!("-A -t {hashed}:80 -s sh");
        for (node, ns, _) in &nodes {
            wait_until(
                &format!("{node}: the sh virtual server"),
                Duration::from_secs(20),
                || {
                    ipvs_state(&l.dir, node, ns)
                        .iter()
                        .any(|l| l.contains(&want))
                },
            );
        }
        let got = count(&l.connect_many("default/client", &hashed, 80, 30));
        assert_eq!(got.len(), 1, "sh spread one client: {got:?}");
        assert_eq!(got.values().sum::<usize>(), 30, "sh: {got:?}");
    }

    // Hairpin: a backend reaching itself through its own service.
    let solo = l.service("solo", "solo", "");
    l.echo_pod("n1", "solo-1", "solo");
    wait_until("hairpin", Duration::from_secs(20), || {
        count(&l.connect_many("default/solo-1", &solo, 80, 3)).contains_key("solo-1")
    });

    // Restarting the agents keeps an established connection through the ClusterIP open.
    let cat = l.cat_service();
    let out = l.dir.join("long.out");
    l.long_connection(&cat, &out);
    let lines = || {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_until("long connection flowing", Duration::from_secs(10), || {
        lines() >= 3
    });
    let before_restart: Vec<Vec<String>> = nodes
        .iter()
        .map(|(node, ns, _)| (mode.programmed)(&l.dir, node, ns))
        .collect();
    ok(lab(&["agent", "restart", "--dir", &l.d]));
    std::thread::sleep(Duration::from_secs(2));
    let before = lines();
    std::thread::sleep(Duration::from_secs(2));
    if mode.kernel_datapath {
        assert!(
            lines() > before + 3,
            "the established connection stalled after the restart ({before} → {})",
            lines()
        );
    } else {
        not_applicable(&format!(
            "established connections across an agent restart: the {} mode's connections live in the agent process",
            mode.name
        ));
    }
    for ((node, ns, _), was) in nodes.iter().zip(&before_restart) {
        assert!(!was.is_empty(), "{ns} has the mode's rules");
        if mode.kernel_datapath {
            // The restarted agent's full sync reprograms exactly the same rules.
            wait_until("same rules after restart", Duration::from_secs(10), || {
                &(mode.programmed)(&l.dir, node, ns) == was
            });
        } else {
            wait_until("rules back after restart", Duration::from_secs(10), || {
                (mode.programmed)(&l.dir, node, ns).len() == was.len()
            });
        }
    }

    // ipvs: a removed endpoint that still carries a connection is drained, not cut: its
    // destination drops to weight 0 on the node the connection goes through and the connection
    // keeps flowing, while on the other node (no connections) it goes at once; when the
    // connection ends, a later drain check deletes it. A Service of its own carries only that
    // one connection (no probes: IPVS keeps a closed connection in TIME_WAIT for 2 minutes and
    // counts it as inactive, which rightly holds a drained destination), and the connection is
    // ended with a reset, which IPVS forgets after 10 s. The 15-minute drain limit is covered
    // by the unit tests.
    if mode.name == "ipvs" {
        ok(lab(&[
            "pod",
            "create",
            "--dir",
            &l.d,
            "--node",
            "n2",
            "--name",
            "drain-1",
            "--labels",
            "app=drain",
            "--",
            BB,
            "nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            BB,
            "cat",
        ]));
        let ip = l.service("drain", "drain", "");
        let dest = format!("ipvs: -a -t {ip}:80 -r ");
        let (_, ns1, _) = &nodes[0];
        let (_, ns2, _) = &nodes[1];
        let has_dest = |ns: &str, node: &str, weight0: bool| {
            ipvs_state(&l.dir, node, ns)
                .iter()
                .any(|x| x.starts_with(&dest) && (!weight0 || x.ends_with(" -w 0")))
        };
        wait_until("drain-1 programmed", Duration::from_secs(20), || {
            has_dest(ns1, n1, false) && has_dest(ns2, n2, false)
        });
        let out = l.dir.join("drain.out");
        l.long_connection_from("long-drain", &ip, &out);
        let lines = || {
            std::fs::read_to_string(&out)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        wait_until("drain connection flowing", Duration::from_secs(10), || {
            lines() >= 3
        });
        l.kubectl(
            &["label", "pod", "drain-1", "app=gone", "--overwrite"],
            None,
        );
        wait_until(
            "n1 drains drain-1 to weight 0",
            Duration::from_secs(20),
            || has_dest(ns1, n1, true),
        );
        wait_until(
            "n2 deletes idle drain-1 at once",
            Duration::from_secs(20),
            || !has_dest(ns2, n2, false),
        );
        let before = lines();
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            lines() > before + 3,
            "the drained backend's connection stalled ({before} → {})",
            lines()
        );
        l.reset_connections_of("drain-1");
        // CLOSE lasts 10 s in IPVS, drain checks run every 15 s.
        let reset = Instant::now();
        let deadline = reset + Duration::from_secs(60);
        while has_dest(ns1, n1, false) {
            if Instant::now() > deadline {
                let show = |args: &[&str]| {
                    let o = Command::new("ip")
                        .args(["netns", "exec", ns1])
                        .args(args)
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&o.stdout).to_string()
                };
                panic!(
                    "n1 kept drained drain-1 after its connection was reset:\n{}\n{}",
                    show(&["ipvsadm", "-Ln"]),
                    show(&["ipvsadm", "-Lnc"]),
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        println!(
            "ipvs: drained destination deleted {:.1} s after its last connection was reset",
            reset.elapsed().as_secs_f64()
        );
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
    for (node, ns, _) in &nodes {
        wait_until("old mode removed", Duration::from_secs(10), || {
            (mode.programmed)(&l.dir, node, ns).is_empty()
        });
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "iptables-save"])
            .output()
            .unwrap();
        let saved = String::from_utf8_lossy(&o.stdout);
        assert!(!saved.contains("SLUICE-"), "{ns}: {saved}");
        assert!(!saved.contains("SLUICEUS-"), "{ns}: {saved}");
        assert!(
            nftables_state(&l.dir, node, ns).is_empty(),
            "{ns} kept nftables state"
        );
        assert!(
            ebpf_state(&l.dir, node, ns).is_empty(),
            "{ns} kept ebpf state"
        );
        assert!(
            ipvs_state(&l.dir, node, ns).is_empty(),
            "{ns} kept ipvs state"
        );
        assert!(
            saved.contains("SLUICENODE-MASQ"),
            "{ns} lost node masquerade: {saved}"
        );
    }
}

#[test]
fn iptables_mode() {
    conformance(Mode {
        name: "iptables",
        programmed: iptables_state,
        dump_names: |ip| format!("-d {ip}/32"),
        kernel_datapath: true,
    });
}

#[test]
fn userspace_mode() {
    conformance(Mode {
        name: "userspace",
        programmed: userspace_state,
        dump_names: |ip| format!("-d {ip}/32"),
        kernel_datapath: false,
    });
}

#[test]
fn nftables_mode() {
    conformance(Mode {
        name: "nftables",
        programmed: nftables_state,
        dump_names: |ip| format!("{ip} . tcp . 80"),
        kernel_datapath: true,
    });
}

#[test]
fn ebpf_mode() {
    conformance(Mode {
        name: "ebpf",
        programmed: ebpf_state,
        dump_names: |ip| format!("svc {ip}:80/tcp sock slot=0"),
        kernel_datapath: true,
    });
}

/// The kernel has IPVS (this machine's does not; the VM's does: `vm_conformance_ipvs`).
fn has_ipvs() -> bool {
    Path::new("/proc/net/ip_vs").exists()
        || Command::new("modprobe")
            .arg("ip_vs")
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn ipvs_mode() {
    if !has_ipvs() {
        // Not a silent pass: the suite runs in ipvs mode in the VM (`vm_conformance_ipvs`), which
        // CI requires.
        println!(
            "SKIP: this kernel has no IPVS (no /proc/net/ip_vs, modprobe ip_vs fails); \
             vm_conformance_ipvs runs this test on a kernel that has it"
        );
        return;
    }
    conformance(Mode {
        name: "ipvs",
        programmed: ipvs_state,
        dump_names: |ip| format!("TCP {ip}:80 "),
        kernel_datapath: true,
    });
}

/// Runs the test `test` (one mode's suite) inside a VM with Debian's 6.1 cloud kernel: the
/// second kernel every mode is proven on, and the only one here with IPVS.
fn in_vm(test: &str) {
    if let Some(why) = vm::vm_unavailable() {
        skip(&why);
        return;
    }
    let Some(kubectl) = Kubectl::preinstalled() else {
        skip("no preinstalled kubectl to carry into the VM");
        return;
    };
    let mut b = Vm::builder();
    for name in [
        "sluice-lab",
        "sluice-control",
        "sluice-agent",
        "sluice-cni",
        "sluice-udp",
    ] {
        b = b.workspace_bin(name);
    }
    // Tools the suite and the lab use that the VM's base image does not carry.
    for tool in ["/usr/bin/ss", "/usr/bin/nsenter"] {
        b = b.file(tool, tool);
    }
    if let Ok(v) = std::env::var(REQUIRE_ALL) {
        b = b.env(REQUIRE_ALL, &v);
    }
    let run = b
        .file(&kubectl.path, &kubectl.path)
        .memory_mb(2048)
        .timeout(Duration::from_secs(540))
        .run_self(test);
    println!("vm kernel: {}", run.kernel);
    println!("{}", run.summary(test));
}

#[test]
fn vm_conformance_ipvs() {
    in_vm("ipvs_mode");
}

#[test]
fn vm_conformance_iptables() {
    in_vm("iptables_mode");
}

#[test]
fn vm_conformance_nftables() {
    in_vm("nftables_mode");
}

#[test]
fn vm_conformance_ebpf() {
    in_vm("ebpf_mode");
}

#[test]
fn vm_conformance_userspace() {
    in_vm("userspace_mode");
}

#[test]
fn peer_ip_parses_ss_lines() {
    assert_eq!(
        peer_ip("0      0      [::ffff:10.244.1.3]:8080 [::ffff:172.31.0.1]:43012\n").as_deref(),
        Some("172.31.0.1")
    );
    assert_eq!(
        peer_ip("0 0 10.244.1.3:8080 172.31.0.12:5000").as_deref(),
        Some("172.31.0.12")
    );
    assert_eq!(peer_ip(""), None);
}

/// A shell loop opening a new connection to `ip:port` every 50 ms and writing one line per
/// connection to `out`: what the server said, or FAIL.
fn new_connection_loop(ip: &str, port: u16, out: &Path) -> String {
    format!(
        "while true; do r=$({BB} nc -w 2 {ip} {port} </dev/null); [ -n \"$r\" ] || r=FAIL; echo $r; {BB} usleep 50000; done > {}",
        out.display()
    )
}

/// A child process killed when the test ends, also on a panic.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a file a pod writes (0 if it does not exist yet).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Live proxy-mode switches and agent restarts under load: iptables → ebpf → ebpf (restart) →
/// iptables, then nftables → ebpf → nftables. Throughout, a pod on n1 opens a new connection
/// through a ClusterIP every 50 ms, a client outside the nodes opens new connections to a
/// NodePort on n1 (its backends on both nodes), and a long-lived connection through a ClusterIP
/// carries a tick every 200 ms. Every new connection must be answered, the long-lived one must
/// keep flowing after every switch, and each switch must leave only the new mode's state.
#[test]
fn live_mode_switch_keeps_connections() {
    let Some(l) = Lab::up("iptables") else { return };
    let nodes = l.nodes();
    let (_, _, n1_ip) = nodes[0].clone();
    for (node, name) in [("n1", "web-1"), ("n2", "web-2")] {
        l.echo_pod(node, name, "web");
    }
    let ip = l.service("web", "web", "  type: NodePort\n");
    let np = l.node_port("web");
    ok(lab(&[
        "pod", "create", "--dir", &l.d, "--node", "n1", "--name", "client", "--", BB, "sleep",
        "3600",
    ]));
    wait_until("both backends programmed", Duration::from_secs(20), || {
        count(&l.connect_many("default/client", &ip, 80, 20)).len() == 2
    });
    let cat = l.cat_service();

    // The loops: each writes one line per connection (the backend's name, or FAIL).
    let inside = l.dir.join("inside.out");
    let script = new_connection_loop(&ip, 80, &inside);
    ok(lab(&[
        "pod", "create", "--dir", &l.d, "--node", "n1", "--name", "loop", "--", BB, "sh", "-c",
        &script,
    ]));
    let outside = l.dir.join("outside.out");
    let script = new_connection_loop(&n1_ip, np, &outside);
    let mut outside_loop = Killed(
        Command::new("ip")
            .args(["netns", "exec", &l.ns, BB, "sh", "-c", &script])
            .spawn()
            .unwrap(),
    );
    let long = l.dir.join("long.out");
    l.long_connection(&cat, &long);
    wait_until("loops running", Duration::from_secs(10), || {
        lines_of(&inside).len() >= 5 && lines_of(&outside).len() >= 5 && lines_of(&long).len() >= 3
    });

    let states: [(&str, StateFn); 3] = [
        ("iptables", iptables_state),
        ("nftables", nftables_state),
        ("ebpf", ebpf_state),
    ];
    let switch = |to: &str| {
        let before = lines_of(&long).len();
        ok(lab(&[
            "agent",
            "restart",
            "--dir",
            &l.d,
            "--proxy-mode",
            to,
        ]));
        // The new mode programs everything, then the old one's state goes.
        for (node, ns, _) in &nodes {
            wait_until(
                &format!("{node}: only {to} state left"),
                Duration::from_secs(20),
                || {
                    states
                        .iter()
                        .all(|(mode, state)| state(&l.dir, node, ns).is_empty() == (*mode != to))
                },
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let after = lines_of(&long).len();
        assert!(
            after >= before + 5,
            "the long-lived connection stalled across the switch to {to} ({before} → {after} lines)"
        );
    };
    for to in ["ebpf", "ebpf", "iptables", "nftables", "ebpf", "nftables"] {
        switch(to);
    }
    let _ = outside_loop.0.kill();
    let _ = outside_loop.0.wait();
    for (what, path) in [
        ("in-node ClusterIP", &inside),
        ("outside NodePort", &outside),
    ] {
        let got = lines_of(path);
        let total = got.len();
        let failed = got.iter().filter(|r| !r.starts_with("web-")).count();
        let c = count(&got);
        println!("{what}: {total} connections across 6 switches: {c:?}");
        assert!(total >= 100, "{what}: only {total} connections");
        assert_eq!(
            failed, 0,
            "{what}: {failed} of {total} connections failed: {c:?}"
        );
    }
}
