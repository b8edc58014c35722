//! `service`: netperf TCP_CRR / TCP_RR / TCP_STREAM from a pod to one backend pod, directly,
//! through a Service's ClusterIP (the lab's proxy mode), and through HAProxy on the node (the
//! userspace peer), interleaved, as ratios of direct, with the CPU each path costs per
//! connection (transaction, megabyte) (method and results: docs/benchmarks.md).
//!
//! Per proxy mode (`--modes iptables,nftables,ebpf`, each on a fresh lab, one after the other;
//! `--mode M` is `--modes M`): `sluice-lab up --nodes 2 --proxy-mode MODE`; a `netserver` pod
//! on n2 labelled `app=netperf` (the Service's only backend, so netperf's control and data
//! connections reach the same server); a Service `netperf` with ports 12865 (control) and 15000
//! (data); a client pod on n1 with `tcp_tw_reuse=1` and a wide `ip_local_port_range`. Each path
//! has its own server data port (direct 15001, service 15000, HAProxy 16001) so a NATed or
//! proxied SYN never lands on a TIME_WAIT tuple left by another path. `conntrack -F` in both
//! node namespaces before every run. The lab (and HAProxy) are brought down at the end, also on
//! error.
//!
//! CPU: before and after every netperf run, `usage_usec` of `cpu.stat` in the cgroup v2
//! directories of the client pod (netperf runs there: `sluice-lab exec` joins it), the server
//! pod, both node cgroups (which contain the pods), HAProxy's own cgroup, the agents' utime +
//! stime (`/proc/PID/stat`; the userspace mode proxies in the agent) and the system-wide busy
//! and softirq time of `/proc/stat`; each delta divided by the run's transactions (TCP_CRR: one
//! connection each; throughput × netperf's elapsed time) or megabytes (TCP_STREAM). Softirq
//! work (the veth hops, NAT, conntrack) is charged to whatever task the CPU was running, which
//! on this lab is mostly the sender's, so it lands in the pods' cgroups but not always.
//!
//! `--extra-services 0,1000,10000`: the same runs (usually `--tests TCP_CRR`) with that many
//! other selector-less Services present, each with an EndpointSlice of 5 made-up ready
//! endpoints (10.250.0.0/16), created between the steps (API client inside n1's namespace) and
//! waited for in both nodes' dataplanes (iptables: `iptables-save -t nat` dispatch rules;
//! nftables: `service-ips` elements by netlink; ebpf: each service's slot 0 in the pinned
//! `sluice_svc_v1` with count 5; ipvs: each virtual server's 5 weighted destinations over
//! generic netlink), then until the agents are idle.
//!
//! The ipvs mode needs a kernel with IPVS: `sluice-bench vm` runs `service --modes
//! ipvs,iptables,nftables` inside a VM with Debian's 6.1 kernel (where `--no-haproxy`: the VM
//! carries no HAProxy).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};

use crate::pod_network::{median, spread, Lab};
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

/// Where cgroup v2 is mounted on this machine kind (as `sluice-lab` assumes).
const CGROUP2: &str = "/sys/fs/cgroup/unified";
/// Name prefix of the `--extra-services` Services.
const EXTRA_PREFIX: &str = "extra-";
/// Ready endpoints per extra Service.
const EXTRA_EPS: usize = 5;

/// Options of `sluice-bench service`.
pub struct Opts {
    pub modes: Vec<String>,
    pub rounds: usize,
    pub seconds: u64,
    pub tests: Vec<String>,
    pub extra_services: Vec<usize>,
    pub haproxy: bool,
    pub out: Option<PathBuf>,
}

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

/// CPU time (µs) of the parts a run is charged to, read before and after it.
#[derive(Clone, Copy, Debug, Default)]
struct CpuSnap {
    client: f64,
    server: f64,
    n1: f64,
    n2: f64,
    haproxy: f64,
    agents: f64,
    system_busy: f64,
    system_softirq: f64,
}

impl CpuSnap {
    fn minus(&self, b: &CpuSnap) -> CpuSnap {
        CpuSnap {
            client: self.client - b.client,
            server: self.server - b.server,
            n1: self.n1 - b.n1,
            n2: self.n2 - b.n2,
            haproxy: self.haproxy - b.haproxy,
            agents: self.agents - b.agents,
            system_busy: self.system_busy - b.system_busy,
            system_softirq: self.system_softirq - b.system_softirq,
        }
    }
}

/// The cgroups and processes [`CpuSnap`] reads.
struct CpuProbe {
    client: PathBuf,
    server: PathBuf,
    n1: PathBuf,
    n2: PathBuf,
    haproxy: Option<PathBuf>,
    agents: Vec<i32>,
    hz: f64,
}

/// `usage_usec` of a cgroup v2 directory's `cpu.stat` (0 if unreadable).
fn cgroup_usage_us(dir: &Path) -> f64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// utime + stime of a process, in µs (0 if gone).
fn proc_cpu_us(pid: i32, hz: f64) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = s.rfind(')').map(|p| &s[p + 1..]) else {
        return 0.0;
    };
    // Fields after the command: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 1e6 / hz
}

/// System-wide busy (all but idle and iowait) and softirq time of `/proc/stat`, in µs.
fn system_us(hz: f64) -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy * 1e6 / hz, get(6) * 1e6 / hz)
}

impl CpuProbe {
    fn snap(&self) -> CpuSnap {
        let (system_busy, system_softirq) = system_us(self.hz);
        CpuSnap {
            client: cgroup_usage_us(&self.client),
            server: cgroup_usage_us(&self.server),
            n1: cgroup_usage_us(&self.n1),
            n2: cgroup_usage_us(&self.n2),
            haproxy: self.haproxy.as_deref().map_or(0.0, cgroup_usage_us),
            agents: self.agents.iter().map(|&p| proc_cpu_us(p, self.hz)).sum(),
            system_busy,
            system_softirq,
        }
    }
}

/// One netperf run: throughput (trans/s or 10^6 bit/s), netperf's elapsed time, RR latency
/// (µs) and the CPU charged during it.
#[derive(Clone, Debug, Default)]
struct Run {
    throughput: f64,
    elapsed_s: f64,
    mean_latency_us: Option<f64>,
    p99_latency_us: Option<f64>,
    cpu: CpuSnap,
}

impl Run {
    /// Transactions (CRR: connections) or megabytes (STREAM) in the run.
    fn units(&self, test: &str) -> f64 {
        if test == "TCP_STREAM" {
            self.throughput * self.elapsed_s / 8.0
        } else {
            self.throughput * self.elapsed_s
        }
    }
}

/// Reads the last CSV line of `-o THROUGHPUT,THROUGHPUT_UNITS,ELAPSED_TIME[,MEAN_LATENCY,
/// P99_LATENCY]`.
fn parse_run(stdout: &str) -> anyhow::Result<Run> {
    let (line, f) = crate::pod_network::netperf_csv(stdout)?;
    let num = |i: usize| f.get(i).copied().flatten();
    Ok(Run {
        throughput: num(0).with_context(|| format!("netperf output: {line:?}"))?,
        elapsed_s: num(2).with_context(|| format!("netperf elapsed time: {line:?}"))?,
        mean_latency_us: num(3),
        p99_latency_us: num(4),
        cpu: CpuSnap::default(),
    })
}

fn netperf(lab: &Lab, to: &Target, test: &str, seconds: u64) -> anyhow::Result<Run> {
    let secs = seconds.to_string();
    let ctl = to.control.to_string();
    let data = format!(",{}", to.data);
    let mut args = vec![
        "netperf", "-H", &to.host, "-p", &ctl, "-t", test, "-l", &secs, "-P", "0",
    ];
    let sel = if test == "TCP_RR" {
        args.push("-j");
        "THROUGHPUT,THROUGHPUT_UNITS,ELAPSED_TIME,MEAN_LATENCY,P99_LATENCY"
    } else {
        "THROUGHPUT,THROUGHPUT_UNITS,ELAPSED_TIME"
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
    parse_run(&stdout)
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

/// Moves process `pid` (all its threads) into cgroup v2 group `cg`, created if missing.
fn move_to_cgroup(pid: u32, cg: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
    std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving {pid} into {}", cg.display()))
}

/// Made-up endpoint `e` of extra service `i` (10.250.0.1 … 10.250.199.250): outside the pod
/// CIDRs, so no extra endpoint is local to a node.
fn extra_ip(i: usize, e: usize) -> String {
    let idx = i * EXTRA_EPS + e;
    format!("10.250.{}.{}", idx / 250, idx % 250 + 1)
}

/// Creates extra services `from..to` (one EndpointSlice of [`EXTRA_EPS`] each) from a thread
/// in `node_ns` (the in-lab API address) and returns every extra's cluster IP, by index.
fn create_extras(
    node_ns: &str,
    kubeconfig: PathBuf,
    from: usize,
    to: usize,
) -> anyhow::Result<(Vec<Ipv4Addr>, f64)> {
    crate::scale::in_netns(node_ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let client = sluice_tests::client_from(&kubeconfig).await?;
                let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
                let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
                let took = crate::create_all(to - from, 32, |k| {
                    let svcs = svcs.clone();
                    let slices = slices.clone();
                    async move {
                        let i = from + k;
                        let name = format!("{EXTRA_PREFIX}{i}");
                        let svc: Service = serde_json::from_value(json!({
                            "metadata": {"name": name, "labels": {"bench": "service-extra"}},
                            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
                        }))?;
                        svcs.create(&PostParams::default(), &svc)
                            .await
                            .with_context(|| format!("creating service {name}"))?;
                        let endpoints: Vec<Value> = (0..EXTRA_EPS)
                            .map(|e| json!({
                                "addresses": [extra_ip(i, e)],
                                "conditions": {"ready": true, "serving": true, "terminating": false},
                            }))
                            .collect();
                        let slice: EndpointSlice = serde_json::from_value(json!({
                            "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name, "bench": "service-extra"}},
                            "addressType": "IPv4",
                            "endpoints": endpoints,
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                        }))?;
                        slices
                            .create(&PostParams::default(), &slice)
                            .await
                            .with_context(|| format!("creating endpointslice {name}-1"))?;
                        Ok(())
                    }
                })
                .await?;
                let mut vips = vec![Ipv4Addr::UNSPECIFIED; to];
                let lp = ListParams::default().labels("bench=service-extra");
                for svc in svcs.list(&lp).await?.items {
                    let name = svc.metadata.name.unwrap_or_default();
                    let Some(i) = name
                        .strip_prefix(EXTRA_PREFIX)
                        .and_then(|r| r.parse::<usize>().ok())
                        .filter(|&i| i < to)
                    else {
                        continue;
                    };
                    vips[i] = svc
                        .spec
                        .and_then(|s| s.cluster_ip)
                        .with_context(|| format!("{name} has no cluster IP"))?
                        .parse()
                        .with_context(|| format!("{name}'s cluster IP"))?;
                }
                if let Some(i) = vips.iter().position(|v| v.is_unspecified()) {
                    bail!("{EXTRA_PREFIX}{i} not listed");
                }
                Ok((vips, took.as_secs_f64()))
            })
    })
}

/// How many of `vips` (port 80/tcp) node `node` (netns `ns`) has in its dataplane.
fn extras_in_dataplane(
    mode: &str,
    lab_dir: &Path,
    node: &str,
    ns: &str,
    vips: &[Ipv4Addr],
) -> anyhow::Result<usize> {
    match mode {
        "iptables" => {
            let text = netns(ns, &["iptables-save", "-t", "nat"])?;
            let present: std::collections::HashSet<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("-A SLUICE-SERVICES -d "))
                .filter_map(|r| r.split('/').next())
                .collect();
            Ok(vips
                .iter()
                .filter(|v| present.contains(v.to_string().as_str()))
                .count())
        }
        "nftables" => {
            let vips = vips.to_vec();
            crate::scale::in_netns(ns, move || {
                let mut sock = crate::nftget::NfSocket::open().context("netlink socket")?;
                let mut n = 0;
                for v in vips {
                    let key = crate::nftget::front_end_key(v, 6, 80);
                    if matches!(sock.get("sluice", "service-ips", &key), Ok(Some(_))) {
                        n += 1;
                    }
                }
                Ok(n)
            })
        }
        "ebpf" => {
            let Ok(maps) = crate::bpfget::BpfMaps::open(&crate::bpfget::pin_dir(lab_dir, node))
            else {
                return Ok(0);
            };
            let mut n = 0;
            for &v in vips {
                if maps.count(v, 80)? == Some(EXTRA_EPS as u32) {
                    n += 1;
                }
            }
            Ok(n)
        }
        "ipvs" => {
            let vips = vips.to_vec();
            crate::scale::in_netns(ns, move || {
                let mut ipvs = sluice_proxy_ipvs::IpvsClient::connect().context("IPVS client")?;
                let mut n = 0;
                for v in vips {
                    let svc = sluice_proxy_ipvs::netlink::Service::new(
                        v.into(),
                        sluice_proxy_ipvs::netlink::IPPROTO_TCP,
                        80,
                        "rr",
                    );
                    let dests = ipvs.destinations(&svc).unwrap_or_default();
                    if dests.iter().filter(|d| d.weight > 0).count() == EXTRA_EPS {
                        n += 1;
                    }
                }
                Ok(n)
            })
        }
        // No kernel state to read (userspace: the agent's memory).
        _ => Ok(vips.len()),
    }
}

/// Waits until both nodes' dataplanes hold every extra service, then until the agents are
/// idle (< 5% of a core over a second, at most 60 s). Returns (programmed after s, idle after s).
fn wait_extras(
    mode: &str,
    lab_dir: &Path,
    nodes: &[(String, String)],
    vips: &[Ipv4Addr],
    agents: &[i32],
) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    for (node, ns) in nodes {
        let mut last = Instant::now();
        loop {
            let n = extras_in_dataplane(mode, lab_dir, node, ns, vips)?;
            if n >= vips.len() {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!(
                    "{node}: {n} of {} extra services in the dataplane after 600 s",
                    vips.len()
                );
            }
            if last.elapsed() > Duration::from_secs(15) {
                eprintln!("  {node}: {n} of {} extra services programmed", vips.len());
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let programmed = t.elapsed().as_secs_f64();
    let hz = clock_ticks();
    let agents_cpu = || agents.iter().map(|&p| proc_cpu_us(p, hz)).sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = agents_cpu();
        std::thread::sleep(Duration::from_secs(1));
        if agents_cpu() - a < 50_000.0 || Instant::now() > deadline {
            break;
        }
    }
    Ok((programmed, t.elapsed().as_secs_f64()))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Everything one step (a number of extra services) measures.
struct StepData {
    runs: Vec<Vec<Vec<Run>>>,
    orders: Vec<Vec<String>>,
}

/// Per-run µs per unit of one CPU view.
fn per_unit(runs: &[Run], test: &str, f: impl Fn(&CpuSnap) -> f64) -> Vec<f64> {
    runs.iter()
        .map(|r| f(&r.cpu) / r.units(test).max(1e-9))
        .collect()
}

/// The CPU views reported, by name: what is summed from a run's deltas.
/// Sums one view's µs out of a run's deltas.
type CpuView = fn(&CpuSnap) -> f64;

fn cpu_views() -> Vec<(&'static str, CpuView)> {
    vec![
        ("pods", |c| c.client + c.server),
        ("pods_and_proxy_processes", |c| {
            c.client + c.server + c.haproxy + c.agents
        }),
        ("node_cgroups", |c| c.n1 + c.n2),
        ("system_busy", |c| c.system_busy),
    ]
}

/// results / ratios / CPU of one step, as JSON.
fn summarize(d: &StepData, tests: &[usize], paths: &[usize], targets: &[Target]) -> Value {
    let tp =
        |t: usize, p: usize| -> Vec<f64> { d.runs[t][p].iter().map(|s| s.throughput).collect() };
    let mut results = json!({});
    let mut ratios = json!({});
    let mut cpu_ratios = json!({});
    for &t in tests {
        let test = TESTS[t];
        let unit = match test {
            "TCP_CRR" => "connection",
            "TCP_RR" => "transaction",
            _ => "MB (10^6 bytes)",
        };
        for &p in paths {
            let runs = &d.runs[t][p];
            let mut entry = json!({
                "target": format!("{}:{} data {}", targets[p].host, targets[p].control, targets[p].data),
                "throughput": spread(&tp(t, p)),
                "unit": match test {
                    "TCP_CRR" => "connections/s",
                    "TCP_RR" => "transactions/s",
                    _ => "10^6 bit/s",
                },
                "elapsed_s": spread(&runs.iter().map(|r| r.elapsed_s).collect::<Vec<_>>()),
            });
            if test == "TCP_RR" {
                let mean: Vec<f64> = runs.iter().filter_map(|s| s.mean_latency_us).collect();
                let p99: Vec<f64> = runs.iter().filter_map(|s| s.p99_latency_us).collect();
                entry["mean_latency_us"] = spread(&mean);
                entry["p99_latency_us"] = spread(&p99);
            }
            let mut cpu = json!({
                "per": unit,
                "client_cgroup_us": spread(&runs.iter().map(|r| r.cpu.client).collect::<Vec<_>>()),
                "server_cgroup_us": spread(&runs.iter().map(|r| r.cpu.server).collect::<Vec<_>>()),
                "haproxy_cgroup_us": spread(&runs.iter().map(|r| r.cpu.haproxy).collect::<Vec<_>>()),
                "agents_us": spread(&runs.iter().map(|r| r.cpu.agents).collect::<Vec<_>>()),
                "system_softirq_us_per_unit": spread(&per_unit(runs, test, |c| c.system_softirq)),
            });
            for (name, f) in cpu_views() {
                cpu[format!("{name}_us_per_unit")] = spread(&per_unit(runs, test, f));
            }
            entry["cpu"] = cpu;
            results[test][PATHS[p]] = entry;
        }
        let direct = tp(t, 0);
        for &p in paths.iter().filter(|&&p| p != 0) {
            let other = tp(t, p);
            let per_round: Vec<f64> = other.iter().zip(&direct).map(|(o, d)| o / d).collect();
            let s = sorted(&per_round);
            ratios[test][format!("{}_over_direct", PATHS[p])] = json!({
                "of_medians": r3(median(&other) / median(&direct)),
                "per_round_median": r3(percentile(&s, 0.5)),
                "per_round_min": r3(s.first().copied().unwrap_or(f64::NAN)),
                "per_round_max": r3(s.last().copied().unwrap_or(f64::NAN)),
            });
            let mut c = json!({});
            for (name, f) in cpu_views() {
                let dv = per_unit(&d.runs[t][0], test, f);
                let ov = per_unit(&d.runs[t][p], test, f);
                let added: Vec<f64> = ov
                    .iter()
                    .zip(&dv)
                    .map(|(o, d)| (o / d - 1.0) * 100.0)
                    .collect();
                let s = sorted(&added);
                c[name] = json!({
                    "direct_us_per_unit": r3(median(&dv)),
                    "path_us_per_unit": r3(median(&ov)),
                    "added_pct_of_medians": r3((median(&ov) / median(&dv) - 1.0) * 100.0),
                    "added_pct_per_round_median": r3(percentile(&s, 0.5)),
                    "added_pct_per_round_min": r3(s.first().copied().unwrap_or(f64::NAN)),
                    "added_pct_per_round_max": r3(s.last().copied().unwrap_or(f64::NAN)),
                });
            }
            cpu_ratios[test][format!("{}_vs_direct", PATHS[p])] = c;
        }
    }
    json!({
        "results": results,
        "ratios": ratios,
        "cpu_added": cpu_ratios,
        "round_orders": d.orders,
    })
}

pub fn run(o: Opts) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("service needs root (the lab makes network namespaces)");
    }
    if o.rounds == 0 || o.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    if o.modes.is_empty() {
        bail!("no proxy mode given (--modes)");
    }
    let mut tests = Vec::new();
    for t in &o.tests {
        let t = t.to_uppercase();
        match TESTS.iter().position(|x| *x == t) {
            Some(i) if !tests.contains(&i) => tests.push(i),
            Some(_) => {}
            None => bail!("unknown test {t} (TCP_CRR, TCP_RR, TCP_STREAM)"),
        }
    }
    if tests.is_empty() {
        bail!("no test given (--tests)");
    }
    let mut steps = o.extra_services.clone();
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() {
        steps.push(0);
    }
    if steps.last().is_some_and(|&n| n * EXTRA_EPS > 200 * 250) {
        bail!("at most 10,000 extra services (made-up endpoints in 10.250.0.0/16)");
    }
    let target = sluice_tests::target_dir();
    for b in ["sluice-lab", "sluice-control", "sluice-agent", "sluice-cni"] {
        if !target.join(b).exists() {
            bail!(
                "{} is missing: cargo build --release -p sluice-lab -p sluice-agent -p sluice-control -p sluice-cni -p sluice-bench",
                target.join(b).display()
            );
        }
    }
    let single = o.modes.len() == 1;
    let mut by_mode = json!({});
    let mut combined = Value::Null;
    for mode in &o.modes {
        let r = run_mode(mode, &o, &tests, &steps, &target)
            .with_context(|| format!("proxy mode {mode}"))?;
        if single {
            combined = r;
        } else {
            by_mode[mode.as_str()] = r;
            combined = json!({
                "benchmark": "service",
                "modes": o.modes,
                "kernel": crate::kernel(),
                "cores": crate::cores(),
                "rounds": o.rounds,
                "seconds_per_run": o.seconds,
                "tests": tests.iter().map(|&t| TESTS[t]).collect::<Vec<_>>(),
                "extra_services": steps,
                "method": "each mode on a fresh 2-node lab, one after the other; see by_mode.<mode>.method and bench/src/service.rs",
                "summary": summary_json(&by_mode, &o.modes),
                "by_mode": by_mode,
            });
        }
        if let Some(p) = &o.out {
            std::fs::write(p, serde_json::to_string_pretty(&combined)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
        }
    }
    print_summary(&combined, &o.modes, single);
    crate::emit(&combined, o.out.as_deref())
}

/// The step objects of a mode's result (one step: the result itself).
fn steps_of(r: &Value) -> Vec<&Value> {
    match r["steps"].as_array() {
        Some(s) => s.iter().collect(),
        None => vec![r],
    }
}

/// Per mode and step: the headline ratios and CPU added.
fn summary_json(by_mode: &Value, modes: &[String]) -> Value {
    let mut out = json!({});
    for m in modes {
        let r = &by_mode[m.as_str()];
        if r.is_null() {
            continue;
        }
        let mut rows = Vec::new();
        for s in steps_of(r) {
            let mut row = json!({"extra_services": s["extra_services"].as_u64().unwrap_or(0)});
            for t in TESTS {
                if s["ratios"][t].is_null() {
                    continue;
                }
                row[t] = json!({
                    "direct": s["results"][t]["direct"]["throughput"]["median"],
                    "service": s["results"][t]["service"]["throughput"]["median"],
                    "service_over_direct": s["ratios"][t]["service_over_direct"]["of_medians"],
                    "per_round_min": s["ratios"][t]["service_over_direct"]["per_round_min"],
                    "per_round_max": s["ratios"][t]["service_over_direct"]["per_round_max"],
                    "haproxy_over_direct": s["ratios"][t]["haproxy_over_direct"]["of_medians"],
                    "pods_cpu_us_per_unit_direct": s["cpu_added"][t]["service_vs_direct"]["pods"]["direct_us_per_unit"],
                    "pods_cpu_us_per_unit_service": s["cpu_added"][t]["service_vs_direct"]["pods"]["path_us_per_unit"],
                    "pods_cpu_added_pct": s["cpu_added"][t]["service_vs_direct"]["pods"]["added_pct_of_medians"],
                    "system_cpu_added_pct": s["cpu_added"][t]["service_vs_direct"]["system_busy"]["added_pct_of_medians"],
                });
            }
            rows.push(row);
        }
        out[m.as_str()] = json!(rows);
    }
    out
}

fn print_summary(combined: &Value, modes: &[String], single: bool) {
    eprintln!();
    eprintln!(
        "{:>10} {:>6} {:>10} | {:>10} {:>10} {:>7} {:>15} | {:>9} {:>9} {:>8} | {:>8}",
        "mode",
        "extra",
        "test",
        "direct",
        "service",
        "ratio",
        "rounds min-max",
        "cpu dir",
        "cpu svc",
        "added %",
        "haproxy"
    );
    for m in modes {
        let r = if single {
            combined
        } else {
            &combined["by_mode"][m.as_str()]
        };
        for s in steps_of(r) {
            for t in TESTS {
                let Some(ratio) = s["ratios"][t].get("service_over_direct") else {
                    continue;
                };
                let c = &s["cpu_added"][t]["service_vs_direct"]["pods"];
                eprintln!(
                    "{:>10} {:>6} {:>10} | {:>10.0} {:>10.0} {:>7} {:>15} | {:>9} {:>9} {:>8} | {:>8}",
                    m,
                    s["extra_services"].as_u64().unwrap_or(0),
                    t,
                    s["results"][t]["direct"]["throughput"]["median"].as_f64().unwrap_or(f64::NAN),
                    s["results"][t]["service"]["throughput"]["median"].as_f64().unwrap_or(f64::NAN),
                    ratio["of_medians"],
                    format!("{}-{}", ratio["per_round_min"], ratio["per_round_max"]),
                    c["direct_us_per_unit"],
                    c["path_us_per_unit"],
                    c["added_pct_of_medians"],
                    s["ratios"][t]["haproxy_over_direct"]["of_medians"],
                );
            }
        }
    }
    eprintln!("cpu: client + server pod cgroups, µs per connection (CRR), transaction (RR) or MB (STREAM); ratio: service ÷ direct of medians");
}

fn run_mode(
    mode: &str,
    o: &Opts,
    tests: &[usize],
    steps: &[usize],
    target: &Path,
) -> anyhow::Result<Value> {
    let (rounds, seconds) = (o.rounds, o.seconds);
    let netserver = find_bin("netserver").context("netserver not found (Debian: netperf)")?;
    let netperf_bin = find_bin("netperf").context("netperf not found (Debian: netperf)")?;
    let kubectl = sluice_tests::Kubectl::preinstalled()
        .or_else(sluice_tests::Kubectl::debian_120)
        .context("no kubectl")?;
    let conntrack = find_bin("conntrack");
    let haproxy_bin = if o.haproxy { find_bin("haproxy") } else { None };

    let tmp = tempfile::tempdir()?;
    let lab = Lab {
        bin: target.join("sluice-lab"),
        dir: tmp.path().join("lab"),
    };
    let load_before = crate::loadavg();
    let t = Instant::now();
    let d = lab.d();
    let mut up = vec!["up", "--nodes", "2", "--proxy-mode", mode, "--dir", &d];
    up.extend(crate::pod_network::no_containerd_if_missing());
    lab.ok(&up)?;
    let lab_up_s = t.elapsed().as_secs_f64();
    let lab_dir = lab.dir.canonicalize()?;
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
    let lab_netns = cluster["labNetns"]
        .as_str()
        .context("labNetns")?
        .to_string();
    let lab_kubeconfig = PathBuf::from(cluster["labKubeconfig"].as_str().context("labKubeconfig")?);
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
    let pod_field = |name: &str, field: &str| -> anyhow::Result<String> {
        lab_state["pods"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .and_then(|p| p[field].as_str())
            .map(str::to_string)
            .with_context(|| format!("pod {name}'s {field} in lab.json"))
    };
    let client_ns = pod_field("client", "netns")?;
    let agents: Vec<i32> = lab_state["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| n["agent_pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default();
    let lab_cgroup = Path::new(CGROUP2).join(&lab_netns);
    let haproxy_cgroup = lab_cgroup.join("bench-haproxy");
    let probe = CpuProbe {
        client: PathBuf::from(pod_field("client", "cgroup")?),
        server: PathBuf::from(pod_field("netserver", "cgroup")?),
        n1: lab_cgroup.join("n1"),
        n2: lab_cgroup.join("n2"),
        haproxy: haproxy_bin.as_ref().map(|_| haproxy_cgroup.clone()),
        agents: agents.clone(),
        hz: clock_ticks(),
    };
    for cg in [&probe.client, &probe.server, &probe.n1, &probe.n2] {
        if !cg.join("cpu.stat").exists() {
            bail!(
                "{}/cpu.stat missing: is cgroup v2 at {CGROUP2}?",
                cg.display()
            );
        }
    }
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

    // HAProxy in n1's namespace (TCP mode), the userspace peer, in a cgroup of its own.
    let haproxy_note;
    let mut haproxy_version = Value::Null;
    let haproxy = match &haproxy_bin {
        None if !o.haproxy => {
            haproxy_note = json!("not measured (--no-haproxy)");
            Proc(None)
        }
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
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &n1_ns])
                .arg(bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let child = cmd.spawn().context("starting haproxy")?;
            // `ip netns exec` execs HAProxy in place, so the pid is HAProxy's; it is moved
            // before any traffic flows (its own CPU is read from this cgroup).
            let pid = child.id();
            let mut child = Proc(Some(child));
            move_to_cgroup(pid, &haproxy_cgroup)?;
            std::thread::sleep(Duration::from_millis(300));
            if let Some(Ok(Some(status))) = child.0.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(tmp.path().join("haproxy.log")).unwrap_or_default();
                bail!("haproxy exited ({status}): {}", log.trim());
            }
            haproxy_note = json!(format!(
                "haproxy in n1's netns, TCP mode, default threads, cgroup {}; {n1_ip}:{HAPROXY_CONTROL_PORT} → {backend_ip}:{CONTROL_PORT}, {n1_ip}:{HAPROXY_DATA_PORT} → {backend_ip}:{HAPROXY_DATA_PORT} (the data port keeps its number: netperf connects to the port netserver reports)",
                haproxy_cgroup.display()
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
        wait_path(&lab, &targets[p], Duration::from_secs(60))
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
    let cases: Vec<(usize, usize)> = tests
        .iter()
        .flat_map(|&t| paths.iter().map(move |&p| (t, p)))
        .collect();
    let node_list = [
        ("n1".to_string(), n1_ns.clone()),
        ("n2".to_string(), n2_ns.clone()),
    ];
    let mut step_values = Vec::new();
    let mut retries: Vec<Value> = Vec::new();
    let mut extra_vips: Vec<Ipv4Addr> = Vec::new();
    for &extra in steps {
        let mut step_info = json!({"extra_services": extra});
        if extra > extra_vips.len() {
            eprintln!(
                "[{mode}] creating extra services {}..{extra}…",
                extra_vips.len()
            );
            let (vips, create_s) =
                create_extras(&n1_ns, lab_kubeconfig.clone(), extra_vips.len(), extra)?;
            extra_vips = vips;
            let (programmed_s, idle_s) =
                wait_extras(mode, &lab_dir, &node_list, &extra_vips, &agents)?;
            eprintln!(
                "[{mode}] {extra} extra services: created in {create_s:.1} s, in both dataplanes {programmed_s:.1} s later, agents idle after {idle_s:.1} s"
            );
            step_info["create_s"] = json!(r3(create_s));
            step_info["in_both_dataplanes_after_s"] = json!(r3(programmed_s));
            step_info["agents_idle_after_s"] = json!(r3(idle_s));
        } else if extra < extra_vips.len() {
            bail!("--extra-services steps must grow");
        }
        let load_step = crate::loadavg();
        let mut d = StepData {
            runs: vec![vec![Vec::new(); PATHS.len()]; TESTS.len()],
            orders: Vec::new(),
        };
        for r in 0..rounds {
            let order: Vec<(usize, usize)> = (0..cases.len())
                .map(|k| cases[(k + r) % cases.len()])
                .collect();
            d.orders.push(
                order
                    .iter()
                    .map(|&(t, p)| format!("{}/{}", TESTS[t], PATHS[p]))
                    .collect::<Vec<_>>(),
            );
            for &(t, p) in &order {
                flush(&mut conntrack_failures);
                let mut before = probe.snap();
                let mut s = match netperf(&lab, &targets[p], TESTS[t], seconds) {
                    Ok(s) => s,
                    Err(e) => {
                        // One retry (recorded): a reset now and then on the HAProxy path.
                        eprintln!(
                            "[{mode}] {} {} failed, retrying once: {e:#}",
                            TESTS[t], PATHS[p]
                        );
                        retries.push(json!({
                            "extra_services": extra, "round": r + 1, "test": TESTS[t],
                            "path": PATHS[p], "error": format!("{e:#}"),
                        }));
                        std::thread::sleep(Duration::from_secs(1));
                        flush(&mut conntrack_failures);
                        before = probe.snap();
                        netperf(&lab, &targets[p], TESTS[t], seconds)?
                    }
                };
                s.cpu = probe.snap().minus(&before);
                let units = s.units(TESTS[t]);
                eprintln!(
                    "[{mode}] extra {extra} round {}/{rounds} {} {}: {:.1} (pods {:.1} µs, system {:.1} µs per {})",
                    r + 1,
                    TESTS[t],
                    PATHS[p],
                    s.throughput,
                    (s.cpu.client + s.cpu.server) / units.max(1e-9),
                    s.cpu.system_busy / units.max(1e-9),
                    if TESTS[t] == "TCP_STREAM" { "MB" } else { "transaction" },
                );
                d.runs[t][p].push(s);
            }
        }
        let services = kube
            .run(&["get", "services", "-A", "-o", "name"], None)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        let mut v = summarize(&d, tests, &paths, &targets);
        v["extra_services"] = json!(extra);
        v["services_present"] = json!(services);
        v["loadavg_before_step"] = json!(load_step);
        v["extras"] = step_info;
        step_values.push(v);
    }
    let load_after = crate::loadavg();

    let nat_rules_mentioning_cluster_ip = netns(&n1_ns, &["iptables-save", "-t", "nat"])
        .map(|s| s.lines().filter(|l| l.contains(&cluster_ip)).count())
        .ok();
    let ebpf_service = (mode == "ebpf")
        .then(|| -> anyhow::Result<Value> {
            let maps = crate::bpfget::BpfMaps::open(&crate::bpfget::pin_dir(&lab_dir, "n1"))?;
            let vip: Ipv4Addr = cluster_ip.parse()?;
            Ok(json!({
                "n1_maps": crate::bpfget::pin_dir(&lab_dir, "n1"),
                "control_port_backends": maps.endpoints(vip, CONTROL_PORT)?,
                "data_port_backends": maps.endpoints(vip, SERVICE_DATA_PORT)?,
            }))
        })
        .map(|r| r.unwrap_or_else(|e| json!({"error": format!("{e:#}")})));
    let ipvs_service = (mode == "ipvs").then(|| {
        let vip: Option<std::net::IpAddr> = cluster_ip.parse().ok();
        crate::scale::in_netns(&n1_ns, move || {
            let mut ipvs = sluice_proxy_ipvs::IpvsClient::connect().context("IPVS client")?;
            let mut out = Vec::new();
            for s in ipvs.services()? {
                if Some(s.addr) != vip {
                    continue;
                }
                let dests: Vec<String> = ipvs
                    .destinations(&s)?
                    .iter()
                    .map(|d| format!("{} weight {}", d.socket_addr(), d.weight))
                    .collect();
                out.push(json!({"virtual_server": s.to_string(), "scheduler": s.scheduler, "destinations": dests}));
            }
            Ok(json!(out))
        })
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
    });

    let netperf_version = Command::new(&netperf_bin)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut result = json!({
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
            "n1_nat_rules_mentioning_cluster_ip": nat_rules_mentioning_cluster_ip,
            "n1_ebpf_maps_for_cluster_ip": ebpf_service,
            "n1_ipvs_for_cluster_ip": ipvs_service,
        },
        "pods": {
            "client": {"node": "n1", "ip": client_ip, "sysctls": client_sysctls, "cgroup": probe.client},
            "backend": {"node": "n2", "ip": backend_ip, "labels": "app=netperf", "only_backend": true, "cgroup": probe.server},
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
        "cpu_method": {
            "how": "before and after each netperf run: usage_usec of cpu.stat in the client pod's, the server pod's and both node cgroups (cgroup v2; the node cgroups contain the pods), HAProxy's cgroup, utime+stime of both agents (/proc/PID/stat), and /proc/stat's system-wide busy (user+nice+system+irq+softirq+steal) and softirq time; each delta ÷ the run's units",
            "units": "TCP_CRR: connections (= transactions, throughput × netperf's ELAPSED_TIME); TCP_RR: transactions; TCP_STREAM: 10^6 bytes",
            "views": {
                "pods": "client + server pod cgroups: netperf and netserver, and whatever softirq work ran while they were on the CPU",
                "pods_and_proxy_processes": "pods + HAProxy's cgroup + both agents (the userspace mode proxies in the agent)",
                "node_cgroups": "n1 + n2 node cgroups (contain the pods; nothing else runs there in this benchmark)",
                "system_busy": "all CPUs, all tasks (agents, control plane, the bench, anything else on the machine): a second view, noisier",
            },
            "caveat": "softirq work (veth hops, NAT, conntrack) is charged to the task that was running when it ran — mostly the sending task on this lab, but also unrelated tasks or ksoftirqd",
            "added_pct": "(path ÷ direct − 1) × 100 of the µs per unit: of the medians, and per round",
        },
        "rounds": rounds,
        "seconds_per_run": seconds,
        "netperf_runs_retried": retries,
        "tests": tests.iter().map(|&t| TESTS[t]).collect::<Vec<_>>(),
        "anchors_measured_earlier_on_this_machine_kind": {
            "iptables_dnat_over_direct": {"TCP_CRR": 0.92, "TCP_RR": "0.88–0.97"},
            "haproxy_over_direct": {"TCP_CRR": "0.46–0.48", "TCP_RR": "0.46–0.50"},
        },
    });
    if step_values.len() == 1 {
        let step = step_values.pop().expect("one step");
        if let (Some(r), Some(s)) = (result.as_object_mut(), step.as_object()) {
            for (k, v) in s {
                r.insert(k.clone(), v.clone());
            }
        }
    } else {
        // TCP_CRR (first-connection cost) against the number of services present.
        let crr = |s: &Value, p: &str| s["results"]["TCP_CRR"][p]["throughput"]["median"].as_f64();
        let base = step_values.first().cloned().unwrap_or(Value::Null);
        let flat: Vec<Value> = step_values
            .iter()
            .map(|s| {
                let ratio = |p: &str| match (crr(s, p), crr(&base, p)) {
                    (Some(a), Some(b)) => json!(r3(a / b)),
                    _ => Value::Null,
                };
                json!({
                    "extra_services": s["extra_services"],
                    "services_present": s["services_present"],
                    "service_crr": crr(s, "service"),
                    "direct_crr": crr(s, "direct"),
                    "service_crr_over_first_step": ratio("service"),
                    "direct_crr_over_first_step": ratio("direct"),
                    "service_over_direct": s["ratios"]["TCP_CRR"]["service_over_direct"]["of_medians"],
                    "pods_cpu_us_per_connection_service": s["cpu_added"]["TCP_CRR"]["service_vs_direct"]["pods"]["path_us_per_unit"],
                    "pods_cpu_us_per_connection_direct": s["cpu_added"]["TCP_CRR"]["service_vs_direct"]["pods"]["direct_us_per_unit"],
                })
            })
            .collect();
        result["crr_against_services"] = json!({
            "note": "medians of each step's rounds; steps run one after the other on the same lab (not interleaved), so machine drift between steps shows in direct_crr_over_first_step too; in the iptables mode a direct connection also walks the SLUICE-SERVICES chain",
            "steps": flat,
        });
        result["steps"] = json!(step_values);
    }
    drop(haproxy);
    let _ = std::fs::remove_dir(&haproxy_cgroup);
    lab.down()?;
    drop(lab);
    Ok(result)
}
