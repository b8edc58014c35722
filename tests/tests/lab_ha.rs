//! A highly available lab: `sluice-lab up --control-planes 3 --etcd 3` runs three API servers
//! on one three-member etcd cluster behind the lab's front balancer (172.31.0.1:6443). Checks:
//! kubectl on the host works through the front; an object written through the front is read
//! back from each API server directly (its own address, its certificate verified against the
//! lab's CA); exactly one API server runs the controllers and the controller Lease names it;
//! a Service's EndpointSlice follows its pods; SIGKILL of the leader hands the Lease to
//! another API server within the lease duration plus a few seconds, whose controllers then
//! keep the EndpointSlice current, while kubectl through the front keeps working; with one
//! etcd member of three killed, writes still succeed; `down` leaves no process or namespace.
//!
//! The leader election timings are shortened (4 s lease, 3 s renew deadline, 500 ms retry)
//! so the takeover is measured in seconds; it prints the timings it sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{is_root, lab, ok, skip, text, Kubectl};

/// Lease duration given to the API servers (`--leader-elect-lease-duration`).
const LEASE: Duration = Duration::from_secs(4);

/// Brings the lab down even when an assertion fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.0.to_string_lossy()]);
        }
    }
}

/// The lab as `cluster.json` describes it, and a kubectl to drive it.
struct Lab {
    dir: PathBuf,
    netns: String,
    /// The host kubeconfig (the forwarder, then the front).
    kubeconfig: PathBuf,
    /// The admin kubeconfig for use inside the lab namespace.
    lab_kubeconfig: PathBuf,
    kubectl: Kubectl,
    home: PathBuf,
}

impl Lab {
    fn d(&self) -> String {
        self.dir.to_string_lossy().to_string()
    }

    fn cluster(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("cluster.json")).unwrap()).unwrap()
    }

    /// kubectl on the host through the front.
    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl.run(&self.kubeconfig, &self.home, args)
    }

    /// kubectl's JSON output, or the failure as text.
    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let o = self.kubectl(&all);
        if !o.status.success() {
            return Err(text(&o));
        }
        serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())
    }

    /// kubectl inside the lab namespace against one API server directly (`--server`), with
    /// the admin kubeconfig: its CA must verify that server's own certificate.
    fn kubectl_direct(&self, address: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&self.kubectl.path)
            .env("HOME", &self.home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--kubeconfig")
            .arg(&self.lab_kubeconfig)
            .arg(format!("--server=https://{address}"))
            .arg("--request-timeout=10s")
            .args(args)
            .output()
            .expect("running kubectl in the lab namespace")
    }

    /// The controller Lease's holder, read through the front.
    fn lease_holder(&self) -> Result<String, String> {
        let v = self.json(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "sluice-controller-manager",
        ])?;
        Ok(v.pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// The pod IPs in the Service's EndpointSlices.
    fn slice_ips(&self, service: &str) -> Result<Vec<String>, String> {
        let v = self.json(&[
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
        ])?;
        let mut ips: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        ips.sort();
        Ok(ips)
    }

    /// Waits until the Service's EndpointSlices hold exactly `want`; returns how long it took.
    fn wait_slice(&self, service: &str, want: &[&str], limit: Duration) -> Duration {
        let t = Instant::now();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut last = Ok(Vec::new());
        while t.elapsed() < limit {
            last = self.slice_ips(service);
            if last.as_ref().is_ok_and(|ips| *ips == want) {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("EndpointSlice of {service} is not {want:?} after {limit:?}: {last:?}");
    }

    /// Starts a process pod on n1 with `app=<app>` and returns its IP.
    fn pod(&self, name: &str, app: &str) -> String {
        ok(lab(&[
            "pod",
            "create",
            "--dir",
            &self.d(),
            "--node",
            "n1",
            "--name",
            name,
            "--labels",
            &format!("app={app}"),
            "--",
            "/bin/sleep",
            "600",
        ]));
        let p = self
            .json(&["get", "pod", name])
            .unwrap_or_else(|e| panic!("pod {name}: {e}"));
        p.pointer("/status/podIP")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no podIP: {p}"))
            .to_string()
    }
}

/// The API servers whose log says they became the controller leader (by index, 0-based).
fn leaders_in_logs(logs: &[PathBuf]) -> Vec<usize> {
    (0..logs.len())
        .filter(|&i| {
            std::fs::read_to_string(&logs[i])
                .is_ok_and(|l| l.contains("became the controller leader"))
        })
        .collect()
}

/// Whether API server log `log` has a leader line naming `identity` (the field values are
/// printed as they are; only the names and `=` are coloured).
fn log_names_leader(log: &Path, identity: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| {
        l.lines()
            .any(|line| line.contains("became the controller leader") && line.contains(identity))
    })
}

/// The etcd member (index into `client_urls`) that is the raft leader, asked through etcd's
/// JSON gateway (`/v3/maintenance/status`) from a thread inside the lab namespace.
fn etcd_leader(netns: &str, client_urls: &[String]) -> Option<usize> {
    use std::io::{Read, Write};
    let path = format!("/run/netns/{netns}");
    let urls = client_urls.to_vec();
    let statuses: Vec<Value> = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).ok()?;
        // Only this thread moves into the lab's namespace.
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut out = Vec::new();
        for u in &urls {
            let addr: std::net::SocketAddr = u.trim_start_matches("http://").parse().ok()?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            let req = format!(
                "POST /v3/maintenance/status HTTP/1.0\r\nHost: {addr}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            );
            s.write_all(req.as_bytes()).ok()?;
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            let body = resp.split_once("\r\n\r\n")?.1;
            out.push(serde_json::from_str(body).ok()?);
        }
        Some(out)
    })
    .join()
    .ok()??;
    let id = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    let leader = id(&statuses[0], "/leader")?;
    statuses
        .iter()
        .position(|s| id(s, "/header/member_id").as_deref() == Some(leader.as_str()))
}

/// A live (non-zombie) process.
fn alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    !matches!(state, Some("Z") | None)
}

/// Every pid lab.json records (API servers, front, forwarder, etcd members, agent, pods).
fn recorded_pids(dir: &Path) -> Vec<i64> {
    let s: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let mut pids = vec![
        s["control_pid"].as_i64().unwrap_or(0),
        s["forward_pid"].as_i64().unwrap_or(0),
        s["front_pid"].as_i64().unwrap_or(0),
    ];
    for list in ["api_servers", "etcd", "pods"] {
        for r in s[list].as_array().unwrap() {
            pids.push(r["pid"].as_i64().unwrap());
        }
    }
    for n in s["nodes"].as_array().unwrap() {
        pids.push(n["agent_pid"].as_i64().unwrap());
    }
    pids.retain(|&p| p > 0);
    pids
}

#[test]
fn lab_three_api_servers_on_three_etcd_members() {
    if !is_root() {
        return skip("the lab needs root (network namespaces)");
    }
    if Command::new("ip").args(["netns", "list"]).output().is_err() {
        return skip("iproute2 is missing");
    }
    if let Err(why) = sluice_store::testing::etcd_binary() {
        return skip(&why);
    }
    let Some(kubectl) = Kubectl::preinstalled().or_else(Kubectl::debian_120) else {
        return skip("no kubectl to drive the lab with");
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(&dir);
    let t = Instant::now();
    ok(lab(&[
        "up",
        "--nodes",
        "1",
        "--no-containerd",
        "--control-planes",
        "3",
        "--etcd",
        "3",
        "--dir",
        &d,
        "--control-arg=--leader-elect-lease-duration=4s",
        "--control-arg=--leader-elect-renew-deadline=3s",
        "--control-arg=--leader-elect-retry-period=500ms",
    ]));
    println!(
        "lab up (3 API servers, 3 etcd members) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let l = Lab {
        dir: dir.clone(),
        netns: cluster["labNetns"].as_str().unwrap().to_string(),
        kubeconfig: PathBuf::from(cluster["kubeconfig"].as_str().unwrap()),
        lab_kubeconfig: PathBuf::from(cluster["labKubeconfig"].as_str().unwrap()),
        kubectl,
        home,
    };
    let servers = cluster["apiServers"].as_array().unwrap().clone();
    assert_eq!(servers.len(), 3, "{cluster}");
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        addresses,
        ["172.31.0.2:6443", "172.31.0.3:6443", "172.31.0.4:6443"]
    );
    assert_eq!(cluster["etcd"].as_array().unwrap().len(), 3, "{cluster}");
    assert_eq!(cluster["apiServer"], "https://172.31.0.1:6443");
    let logs: Vec<PathBuf> = (1..=3)
        .map(|i| match i {
            1 => dir.join("logs/control.log"),
            _ => dir.join(format!("logs/control-{i}.log")),
        })
        .collect();

    // kubectl on the host, through the forwarder and the front.
    let nodes = l.json(&["get", "nodes"]).unwrap();
    assert_eq!(nodes["items"].as_array().unwrap().len(), 1, "{nodes}");

    // Written through the front, read from each API server directly (certificate verified).
    ok(l.kubectl(&[
        "create",
        "service",
        "clusterip",
        "ha-probe",
        "--tcp=80:8080",
    ]));
    for a in &addresses {
        let o = l.kubectl_direct(a, &["get", "service", "ha-probe", "-o", "json"]);
        assert!(o.status.success(), "reading from {a}: {}", text(&o));
        let svc: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(svc["metadata"]["name"], "ha-probe", "{svc}");
    }

    // Exactly one API server runs the controllers, and the Lease names it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let holder = loop {
        match l.lease_holder() {
            Ok(h) if !h.is_empty() => break h,
            other => assert!(Instant::now() < deadline, "no controller Lease: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let leaders = leaders_in_logs(&logs);
    assert_eq!(
        leaders.len(),
        1,
        "API servers that became leader: {leaders:?}"
    );
    let leader = leaders[0];
    assert!(
        log_names_leader(&logs[leader], &holder),
        "the Lease holder {holder} is not the one whose log says it leads ({})",
        logs[leader].display()
    );
    println!("controller leader: api{} ({holder})", leader + 1);

    // A Service's EndpointSlice follows its pod (the leader's controllers).
    ok(l.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]));
    let ip1 = l.pod("web-1", "web");
    let took = l.wait_slice("web", &[&ip1], Duration::from_secs(20));
    println!("EndpointSlice with web-1 after {:.1} s", took.as_secs_f64());

    // SIGKILL the leader: another API server takes over after the lease runs out, and
    // kubectl through the front keeps working meanwhile.
    let index = (leader + 1).to_string();
    ok(lab(&["control", "kill", "--dir", &d, "--index", &index]));
    let killed = Instant::now();
    let mut longest_outage = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    let mut last_err = String::new();
    let new_holder = loop {
        let r = l.lease_holder();
        match &r {
            Ok(_) => {
                if let Some(s) = failing_since.take() {
                    longest_outage = longest_outage.max(s.elapsed());
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                last_err = e.clone();
                assert!(
                    since.elapsed() < Duration::from_secs(5),
                    "kubectl through the front failing for 5 s after the kill: {e}"
                );
            }
        }
        if let Ok(h) = r {
            if !h.is_empty() && h != holder {
                break h;
            }
        }
        assert!(
            killed.elapsed() < LEASE + Duration::from_secs(10),
            "no new controller leader {:?} after the kill (last error: {last_err})",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let takeover = killed.elapsed();
    println!(
        "takeover: {new_holder} holds the Lease {:.1} s after SIGKILL of the leader \
         (lease {} s); longest kubectl failure streak through the front {:.1} s",
        takeover.as_secs_f64(),
        LEASE.as_secs(),
        longest_outage.as_secs_f64()
    );
    let new_leader = (0..3)
        .find(|&i| i != leader && log_names_leader(&logs[i], &new_holder))
        .unwrap_or_else(|| panic!("no API server log names the new leader {new_holder}"));
    println!("new controller leader: api{}", new_leader + 1);

    // The new leader's controllers keep the EndpointSlice current.
    let t = Instant::now();
    let ip2 = l.pod("web-2", "web");
    let took = l.wait_slice("web", &[&ip1, &ip2], Duration::from_secs(20));
    println!(
        "EndpointSlice with web-2 after {:.1} s ({:.1} s including the pod's creation)",
        took.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // One etcd member of three down, a follower: every write through the front succeeds at
    // once. Then it rejoins, and the raft leader goes down instead.
    let urls: Vec<String> = cluster["etcd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["clientURL"].as_str().unwrap().to_string())
        .collect();
    let etcd_leader_at_start =
        etcd_leader(&l.netns, &urls).expect("the etcd members name their leader");
    let follower = (etcd_leader_at_start + 1) % urls.len();
    let member = follower.to_string();
    ok(lab(&["etcd", "kill", "--dir", &d, "--member", &member]));
    let t = Instant::now();
    for i in 0..5 {
        let name = format!("follower-down-{i}");
        let o = l.kubectl(&["create", "configmap", &name, "--from-literal=k=v"]);
        assert!(
            o.status.success(),
            "create {name} with etcd follower m{follower} down: {}",
            text(&o)
        );
    }
    println!(
        "5 writes with etcd follower m{follower} down in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(l.cluster()["etcd"][follower]["pid"], 0);
    ok(lab(&["etcd", "start", "--dir", &d, "--member", &member]));
    assert!(l.cluster()["etcd"][follower]["pid"].as_i64().unwrap() > 0);

    // The raft leader killed: the remaining two elect a new one. A write a follower had
    // passed to the dead leader is lost with it, and etcd answers it only after its own
    // request timeout (5 s + 2 election timeouts: "etcdserver: request timed out…"); so the
    // first write may fail once and is retried. Every later one succeeds at once.
    let victim = etcd_leader(&l.netns, &urls).expect("the etcd members name their leader");
    let member = victim.to_string();
    ok(lab(&["etcd", "kill", "--dir", &d, "--member", &member]));
    let t = Instant::now();
    for i in 0..5 {
        let name = format!("leader-down-{i}");
        let o = loop {
            let o = l.kubectl(&["create", "configmap", &name, "--from-literal=k=v"]);
            if o.status.success() || i > 0 || t.elapsed() > Duration::from_secs(20) {
                break o;
            }
            println!(
                "write {:.1} s after killing the etcd leader failed: {}",
                t.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            o.status.success(),
            "create {name} with etcd leader m{victim} down: {}",
            text(&o)
        );
        if i == 0 {
            println!(
                "first successful write {:.1} s after killing the etcd leader m{victim}",
                t.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "5 writes with etcd leader m{victim} down in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cms = l.json(&["get", "configmaps"]).unwrap();
    let made = cms["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("follower-down-") || n.starts_with("leader-down-"))
        })
        .count();
    assert_eq!(made, 10, "{cms}");

    // The recorded pids follow the kills (0: killed) and restarts.
    let c = l.cluster();
    assert_eq!(c["etcd"][victim]["pid"], 0, "{c}");
    assert_eq!(c["apiServers"][leader]["pid"], 0, "{c}");

    // Both come back with their command lines: the member rejoins on its data, the API
    // server serves the cluster again (and leaves the Lease to its holder).
    let t = Instant::now();
    ok(lab(&["etcd", "start", "--dir", &d, "--member", &member]));
    ok(lab(&["control", "start", "--dir", &d, "--index", &index]));
    println!(
        "etcd m{victim} and api{} restarted in {:.1} s",
        leader + 1,
        t.elapsed().as_secs_f64()
    );
    let o = l.kubectl_direct(
        &addresses[leader],
        &["get", "configmap", "leader-down-4", "-o", "name"],
    );
    assert!(
        o.status.success(),
        "restarted api{}: {}",
        leader + 1,
        text(&o)
    );
    let c = l.cluster();
    assert!(c["etcd"][victim]["pid"].as_i64().unwrap() > 0, "{c}");
    assert!(c["apiServers"][leader]["pid"].as_i64().unwrap() > 0, "{c}");
    assert_eq!(l.lease_holder().unwrap(), new_holder);
    // The `kubernetes` Service: every API server advertises the front, so that is its one
    // endpoint, kept across the SIGKILL and the restart (the endpoint leases are per server,
    // so a dead server's expiring lease does not take the shared address out).
    assert_eq!(l.slice_ips("kubernetes").unwrap(), ["172.31.0.1"]);

    // Down leaves no process or namespace behind.
    let before = recorded_pids(&dir);
    assert!(before.len() >= 8, "{before:?}");
    let t = Instant::now();
    ok(lab(&["down", "--dir", &d]));
    println!("lab down in {:.1} s", t.elapsed().as_secs_f64());
    let live: Vec<i64> = before.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        live.is_empty(),
        "processes of the lab still alive: {live:?}"
    );
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|n| n.starts_with(&l.netns))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let naming: Vec<i64> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|&p| p != std::process::id() as i64 && alive(p))
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&d))
        })
        .collect();
    assert!(naming.is_empty(), "processes naming {d} left: {naming:?}");
    assert!(!dir.join("etcd").exists(), "etcd data left");
    assert!(!dir.join("lab.json").exists());
}
