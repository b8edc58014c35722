//! `service`: netperf TCP_CRR / TCP_RR / TCP_STREAM from a pod to one backend pod, directly,
//! through a Service's ClusterIP (the lab's proxy mode), and through HAProxy on the node (the
//! userspace peer), interleaved, as ratios of direct (method and results: docs/benchmarks.md).
//!
//! `sluice-lab up --nodes 2 --proxy-mode MODE`; a `netserver` pod on n2 labelled `app=netperf`
//! (the Service's only backend, so netperf's control and data connections reach the same
//! server); a Service `netperf` with ports 12865 (control) and 15000 (data); a client pod on
//! n1 with `tcp_tw_reuse=1` and a wide `ip_local_port_range`. Each path has its own server
//! data port (direct 15001, service 15000, HAProxy 16001) so a NATed or proxied SYN never
//! lands on a TIME_WAIT tuple left by another path. `conntrack -F` in both node namespaces
//! before every run. The lab (and HAProxy) are brought down at the end, also on error.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::pod_network::{median, parse_netperf, spread, Lab, Sample};
use crate::{percentile, r3, sorted};

const CONTROL_PORT: u16 = 12865;
/// Server data port of the service path (Service port 15000 → targetPort 15000).
const SERVICE_DATA_PORT: u16 = 15000;
/// Server data port of the direct path.
const DIRECT_DATA_PORT: u16 = 15001;
/// HAProxy's listening ports on n1's node IP.
const HAPROXY_CONTROL_PORT: u16 = 16000;
/// HAProxy's data port; netserver binds the data port the client asks for and the client
/// connects to the port netserver reports, so HAProxy forwards it to the same port number.
const HAPROXY_DATA_PORT: u16 = 16001;

const TESTS: [&str; 3] = ["TCP_CRR", "TCP_RR", "TCP_STREAM"];
const PATHS: [&str; 3] = ["direct", "service", "haproxy"];

/// Where one path's netperf goes: host, control port, server data port.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    control: u16,
    data: u16,
}

/// Kills HAProxy on drop (declared after the lab so it goes first).
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find_bin(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn netns(ns: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .with_context(|| format!("ip netns exec {ns} {}", cmd.join(" ")))?;
    if !o.status.success() {
        bail!(
            "ip netns exec {ns} {}: {} {}",
            cmd.join(" "),
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

fn netperf(lab: &Lab, to: &Target, test: &str, seconds: u64) -> anyhow::Result<Sample> {
    let secs = seconds.to_string();
    let ctl = to.control.to_string();
    let data = format!(",{}", to.data);
    let mut args = vec![
        "netperf", "-H", &to.host, "-p", &ctl, "-t", test, "-l", &secs, "-P", "0",
    ];
    let sel = if test == "TCP_RR" {
        args.push("-j");
        "THROUGHPUT,THROUGHPUT_UNITS,MEAN_LATENCY,P99_LATENCY"
    } else {
        "THROUGHPUT,THROUGHPUT_UNITS"
    };
    // `-P ,PORT` after `--`: the remote data port only (a local one would break CRR).
    args.extend_from_slice(&["--", "-P", &data, "-o", sel]);
    let o = lab.exec("client", &args)?;
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    if !o.status.success() {
        bail!(
            "netperf {test} to {}:{}/{}: {} {}",
            to.host,
            to.control,
            to.data,
            stdout.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    parse_netperf(&stdout)
}

/// Runs netperf (1 s TCP_RR) until it answers, for up to `timeout`.
fn wait_path(lab: &Lab, to: &Target, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match netperf(lab, to, "TCP_RR", 1) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

struct Kube {
    kubectl: sluice_tests::Kubectl,
    kubeconfig: String,
    home: PathBuf,
}

impl Kube {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        // From the host: cluster.json's kubeconfig names the lab's forwarder on 127.0.0.1.
        let mut child = Command::new(&self.kubectl.path)
            .env("HOME", &self.home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(["--kubeconfig", &self.kubeconfig, "--request-timeout=10s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning kubectl")?;
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(s.as_bytes())?;
        }
        drop(child.stdin.take());
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }
}

pub fn run(mode: &str, rounds: usize, seconds: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("service needs root (the lab makes network namespaces)");
    }
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    let target = sluice_tests::target_dir();
    for b in ["sluice-lab", "sluice-control", "sluice-agent", "sluice-cni"] {
        if !target.join(b).exists() {
            bail!(
                "{} is missing: cargo build --release --workspace --bins",
                target.join(b).display()
            );
        }
    }
    let netserver = find_bin("netserver").context("netserver not found (Debian: netperf)")?;
    let netperf_bin = find_bin("netperf").context("netperf not found (Debian: netperf)")?;
    let kubectl = sluice_tests::Kubectl::preinstalled()
        .or_else(sluice_tests::Kubectl::debian_120)
        .context("no kubectl")?;
    let conntrack = find_bin("conntrack");
    let haproxy_bin = find_bin("haproxy");

    let tmp = tempfile::tempdir()?;
    let lab = Lab {
        bin: target.join("sluice-lab"),
        dir: tmp.path().join("lab"),
    };
    let load_before = crate::loadavg();
    let t = Instant::now();
    lab.ok(&[
        "up",
        "--nodes",
        "2",
        "--proxy-mode",
        mode,
        "--dir",
        &lab.d(),
    ])?;
    let lab_up_s = t.elapsed().as_secs_f64();
    let cluster: Value = serde_json::from_slice(
        &std::fs::read(lab.dir.join("cluster.json")).context("reading cluster.json")?,
    )?;
    eprintln!("lab up ({mode}) in {lab_up_s:.1} s");
    let node = |name: &str| -> anyhow::Result<(String, String)> {
        let n = cluster["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == name))
            .with_context(|| format!("node {name} not in cluster.json"))?;
        Ok((
            n["netns"].as_str().context("node netns")?.to_string(),
            n["ip"].as_str().context("node ip")?.to_string(),
        ))
    };
    let (n1_ns, n1_ip) = node("n1")?;
    let (n2_ns, _) = node("n2")?;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home)?;
    let kube = Kube {
        kubeconfig: cluster["kubeconfig"]
            .as_str()
            .context("kubeconfig")?
            .to_string(),
        kubectl,
        home,
    };

    // Pods: the only backend on n2, the client on n1.
    let ns_bin = netserver.to_string_lossy().to_string();
    let ctl = CONTROL_PORT.to_string();
    let backend_ip = lab.pod_labelled(
        "n2",
        "netserver",
        "app=netperf",
        &[&ns_bin, "-D", "-4", "-p", &ctl],
    )?;
    let client_ip = lab.pod("n1", "client", &["/bin/busybox", "sleep", "86400"])?;
    let lab_state: Value = serde_json::from_slice(
        &std::fs::read(lab.dir.join("lab.json")).context("reading lab.json")?,
    )?;
    let client_ns = lab_state["pods"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "client"))
        .and_then(|p| p["netns"].as_str())
        .context("client pod netns in lab.json")?
        .to_string();
    let client_sysctls = [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ];
    let mut sysctl = vec!["sysctl", "-w"];
    sysctl.extend_from_slice(&client_sysctls);
    netns(&client_ns, &sysctl)?;
    // HAProxy is the TCP client of the backend in n1's namespace: same settings there.
    netns(&n1_ns, &sysctl)?;
    eprintln!("client {client_ip} (n1, netns {client_ns}) → backend {backend_ip} (n2)");

    // The Service: control and data ports, one backend.
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: netperf\nspec:\n  selector:\n    app: netperf\n  ports:\n  - name: control\n    port: {CONTROL_PORT}\n    targetPort: {CONTROL_PORT}\n  - name: data\n    port: {SERVICE_DATA_PORT}\n    targetPort: {SERVICE_DATA_PORT}\n"
    );
    kube.run(&["apply", "-f", "-"], Some(&yaml))?;
    let cluster_ip = kube
        .run(
            &[
                "get",
                "service",
                "netperf",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
            None,
        )?
        .trim()
        .to_string();
    eprintln!("service netperf: ClusterIP {cluster_ip}");

    // HAProxy in n1's namespace (TCP mode), the userspace peer.
    let haproxy_note;
    let mut haproxy_version = Value::Null;
    let haproxy = match &haproxy_bin {
        None => {
            let note = "SKIP: haproxy not found (Debian: apt-get install -y haproxy); haproxy path not measured";
            eprintln!("{note}");
            haproxy_note = json!(note);
            Proc(None)
        }
        Some(bin) => {
            haproxy_version = json!(Command::new(bin)
                .arg("-v")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string())
                .unwrap_or_default());
            let cfg = format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
                 listen netperf-control\n  bind {n1_ip}:{HAPROXY_CONTROL_PORT}\n  server backend {backend_ip}:{CONTROL_PORT}\n\n\
                 listen netperf-data\n  bind {n1_ip}:{HAPROXY_DATA_PORT}\n  server backend {backend_ip}:{HAPROXY_DATA_PORT}\n"
            );
            let cfg_path = tmp.path().join("haproxy.cfg");
            std::fs::write(&cfg_path, &cfg)?;
            let log = std::fs::File::create(tmp.path().join("haproxy.log"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &n1_ns])
                .arg(bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting haproxy")?;
            let mut child = Proc(Some(child));
            std::thread::sleep(Duration::from_millis(300));
            if let Some(Ok(Some(status))) = child.0.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(tmp.path().join("haproxy.log")).unwrap_or_default();
                bail!("haproxy exited ({status}): {}", log.trim());
            }
            haproxy_note = json!(format!(
                "haproxy in n1's netns, TCP mode, default threads; {n1_ip}:{HAPROXY_CONTROL_PORT} → {backend_ip}:{CONTROL_PORT}, {n1_ip}:{HAPROXY_DATA_PORT} → {backend_ip}:{HAPROXY_DATA_PORT} (the data port keeps its number: netperf connects to the port netserver reports)"
            ));
            child
        }
    };

    let targets = [
        Target {
            host: backend_ip.clone(),
            control: CONTROL_PORT,
            data: DIRECT_DATA_PORT,
        },
        Target {
            host: cluster_ip.clone(),
            control: CONTROL_PORT,
            data: SERVICE_DATA_PORT,
        },
        Target {
            host: n1_ip.clone(),
            control: HAPROXY_CONTROL_PORT,
            data: HAPROXY_DATA_PORT,
        },
    ];
    let paths: Vec<usize> = if haproxy_bin.is_some() {
        vec![0, 1, 2]
    } else {
        vec![0, 1]
    };

    // Wait for every path (the service is programmed asynchronously), warming each.
    for &p in &paths {
        wait_path(&lab, &targets[p], Duration::from_secs(30))
            .with_context(|| format!("{} path not answering", PATHS[p]))?;
    }

    let nat_nodes = [n1_ns.clone(), n2_ns.clone()];
    let mut conntrack_failures = 0usize;
    let flush = |failures: &mut usize| {
        if let Some(ct) = &conntrack {
            let ct = ct.to_string_lossy().to_string();
            for ns in &nat_nodes {
                if let Err(e) = netns(ns, &[&ct, "-F"]) {
                    *failures += 1;
                    eprintln!("conntrack -F in {ns}: {e:#}");
                }
            }
        }
    };

    // Cases test-major, so a test's paths run next to each other; the order rotates per round.
    let cases: Vec<(usize, usize)> = TESTS
        .iter()
        .enumerate()
        .flat_map(|(t, _)| paths.iter().map(move |&p| (t, p)))
        .collect();
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); PATHS.len()]; TESTS.len()];
    let mut orders = Vec::new();
    for r in 0..rounds {
        let order: Vec<(usize, usize)> = (0..cases.len())
            .map(|k| cases[(k + r) % cases.len()])
            .collect();
        orders.push(
            order
                .iter()
                .map(|&(t, p)| format!("{}/{}", TESTS[t], PATHS[p]))
                .collect::<Vec<_>>(),
        );
        for &(t, p) in &order {
            flush(&mut conntrack_failures);
            let s = netperf(&lab, &targets[p], TESTS[t], seconds)?;
            eprintln!(
                "round {}/{rounds} {} {}: {:.1}",
                r + 1,
                TESTS[t],
                PATHS[p],
                s.throughput
            );
            samples[t][p].push(s);
        }
    }
    let load_after = crate::loadavg();

    let services = kube
        .run(&["get", "services", "-A", "-o", "name"], None)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let nat_rules_mentioning_cluster_ip = netns(&n1_ns, &["iptables-save", "-t", "nat"])
        .map(|s| s.lines().filter(|l| l.contains(&cluster_ip)).count())
        .ok();

    let tp =
        |t: usize, p: usize| -> Vec<f64> { samples[t][p].iter().map(|s| s.throughput).collect() };
    let mut results = json!({});
    let mut ratios = json!({});
    for (t, test) in TESTS.iter().enumerate() {
        for &p in &paths {
            let mut entry = json!({
                "target": format!("{}:{} data {}", targets[p].host, targets[p].control, targets[p].data),
                "throughput": spread(&tp(t, p)),
                "unit": match *test {
                    "TCP_CRR" => "connections/s",
                    "TCP_RR" => "transactions/s",
                    _ => "10^6 bit/s",
                },
            });
            if *test == "TCP_RR" {
                let mean: Vec<f64> = samples[t][p]
                    .iter()
                    .filter_map(|s| s.mean_latency_us)
                    .collect();
                let p99: Vec<f64> = samples[t][p]
                    .iter()
                    .filter_map(|s| s.p99_latency_us)
                    .collect();
                entry["mean_latency_us"] = spread(&mean);
                entry["p99_latency_us"] = spread(&p99);
            }
            results[*test][PATHS[p]] = entry;
        }
        let direct = tp(t, 0);
        for &p in paths.iter().filter(|&&p| p != 0) {
            let other = tp(t, p);
            let per_round: Vec<f64> = other.iter().zip(&direct).map(|(o, d)| o / d).collect();
            let s = sorted(&per_round);
            ratios[*test][format!("{}_over_direct", PATHS[p])] = json!({
                "of_medians": r3(median(&other) / median(&direct)),
                "per_round_median": r3(percentile(&s, 0.5)),
                "per_round_min": r3(s.first().copied().unwrap_or(f64::NAN)),
                "per_round_max": r3(s.last().copied().unwrap_or(f64::NAN)),
            });
        }
    }

    let netperf_version = Command::new(&netperf_bin)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let result = json!({
        "benchmark": "service",
        "proxy_mode": mode,
        "kernel": crate::kernel(),
        "cores": crate::cores(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "netperf": netperf_version,
        "haproxy": haproxy_version,
        "lab": {
            "nodes": cluster["nodes"].as_array().map(|n| n.iter().map(|n| json!({"name": n["name"], "ip": n["ip"], "podCIDR": n["podCIDR"]})).collect::<Vec<_>>()),
            "up_s": r3(lab_up_s),
            "binaries_profile": target.file_name().map(|p| p.to_string_lossy().to_string()),
            "services_present": services,
            "n1_nat_rules_mentioning_cluster_ip": nat_rules_mentioning_cluster_ip,
        },
        "pods": {
            "client": {"node": "n1", "ip": client_ip, "sysctls": client_sysctls},
            "backend": {"node": "n2", "ip": backend_ip, "labels": "app=netperf", "only_backend": true},
        },
        "service": {
            "name": "netperf",
            "cluster_ip": cluster_ip,
            "ports": [{"name": "control", "port": CONTROL_PORT, "targetPort": CONTROL_PORT}, {"name": "data", "port": SERVICE_DATA_PORT, "targetPort": SERVICE_DATA_PORT}],
        },
        "paths": {
            "direct": format!("backend pod IP, control {CONTROL_PORT}, data port {DIRECT_DATA_PORT}"),
            "service": format!("ClusterIP, control {CONTROL_PORT}, data port {SERVICE_DATA_PORT}"),
            "haproxy": haproxy_note,
        },
        "conntrack": match &conntrack {
            Some(_) => json!({"flushed": true, "how": "conntrack -F in n1's and n2's netns before every run", "failures": conntrack_failures}),
            None => json!({"flushed": false, "how": "conntrack not installed; not flushed"}),
        },
        "n1_node_sysctls": {"set": client_sysctls, "why": "HAProxy opens the backend connections from n1's netns"},
        "method": "netperf from the client pod (sluice-lab exec); per round every test × path once, test-major, the order rotating by one each round; one stream each; TCP_RR with -j for latency; each path has its own server data port (netperf -- -P ,PORT, the remote data port only); ratios are of the medians and per round",
        "rounds": rounds,
        "seconds_per_run": seconds,
        "round_orders": orders,
        "results": results,
        "ratios": ratios,
        "anchors_from_benchmarking_md": {
            "iptables_dnat_over_direct": {"TCP_CRR": 0.92, "TCP_RR": "0.88–0.97"},
            "haproxy_over_direct": {"TCP_CRR": "0.46–0.48", "TCP_RR": "0.46–0.50"},
        },
    });
    drop(haproxy);
    lab.down()?;
    drop(lab);
    crate::emit(&result, out.as_deref())?;
    Ok(())
}
