//! `podstart`: pod startup latency (create → Ready) and network programming latency (Ready →
//! the pod's endpoint in the *other* node's dataplane) on a 2-node containerd lab.
//!
//! Per proxy mode, a fresh `sluice-lab up --nodes 2 --proxy-mode MODE` (each node a containerd
//! with the test images imported) and a ClusterIP Service `podstart` (port 80 → 8080) selecting
//! `app=podstart`. Then pods of image `sluice-echo:0.1` (no probes: Ready as soon as the
//! container runs, the case of the Kubernetes pod-startup SLO):
//!
//! 1. **sequential**: create one, wait until the watch shows it Ready and its endpoint is in
//!    both nodes' dataplanes, next;
//! 2. **burst**: N concurrent POSTs, then wait for all;
//! 3. optionally (`--probe-pods`, first mode only), sequential pods with a readinessProbe
//!    (`httpGet /healthz:8080`, periodSeconds 1), to show the probe's first-period step.
//!
//! Clocks: the API's timestamps have second precision, so the timings are taken on the
//! client: the create call's send time, and the receive time of the watch event (kube-rs
//! `watcher` on `app=podstart`) first showing `spec.nodeName` (bound) and `Ready=True`. The
//! agents' logs (`DIR/logs/agent-<node>.log`, tracing fmt lines with µs UTC timestamps on the
//! same host clock) add `sandbox running … took=` (CRI RunPodSandbox, CNI ADD included) and
//! `container started` (image check, CreateContainer, StartContainer), which split
//! bound → Ready into: agent pick-up (the agent's watch, its worker, ListPodSandbox), sandbox,
//! container, and the rest (ContainerStatus, status PATCH, watch delivery to us). The API's
//! second-precision timestamps are kept per pod as a cross-check.
//!
//! Network programming: one thread per node inside the node's netns polls the dataplane every
//! `--poll-ms` (iptables: `iptables-nft-save -t nat`, a `--to-destination IP:8080` rule;
//! nftables: the Service's slots in the `endpoints-tcp` map, looked up by netlink, see
//! [`crate::nftget`]) and stamps each endpoint IP the first time a probe shows it (the end of
//! that probe). It polls only while a pod seen Ready on another node is not yet in its
//! dataplane (an `iptables-save` costs a few ms of CPU; polling all the time slowed the pods'
//! start measurably). Latency = that stamp − the pod's Ready watch event; resolution is the
//! interval plus one probe. A watch on the Service's EndpointSlices splits it into Ready →
//! endpoint `ready` in a slice (EndpointSlice controller and watch) and slice → dataplane (the
//! agent). The agents' own `sluice_proxy_network_programming_duration_seconds` histograms
//! (`GET 127.0.0.1:10249/metrics` in the node netns) are read before and after each phase.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{json, Value};

use crate::pod_network::Lab;
use crate::{percentile, r3, sorted};

const NS: &str = "default";
const APP: &str = "podstart";
const IMAGE: &str = "sluice-echo:0.1";
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// The agents' metrics endpoint inside each node netns (the default `--metrics-bind-address`).
const METRICS: &str = "127.0.0.1:10249";
const NP_METRIC: &str = "sluice_proxy_network_programming_duration_seconds";

/// Options of `sluice-bench podstart`.
pub struct Opts {
    pub pods: usize,
    pub modes: Vec<String>,
    pub poll_ms: u64,
    pub probe_pods: usize,
    pub timeout: Duration,
    pub out: Option<PathBuf>,
}

/// Unix time in ms (f64: sub-µs resolution at today's epoch).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

fn ts_ms(t: &Timestamp) -> f64 {
    t.as_nanosecond() as f64 / 1e6
}

/// What the client's watch saw of one pod (unix ms).
#[derive(Clone, Debug, Default)]
struct Seen {
    added: f64,
    bound: Option<f64>,
    node: Option<String>,
    ready: Option<f64>,
    ip: Option<String>,
    last: Option<Pod>,
}

type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;
/// Endpoint IPs a node's poller is to look for (Ready, not yet seen in its dataplane).
type Pending = Arc<Mutex<HashSet<String>>>;
/// Endpoint IP → unix ms.
type Stamps = Arc<Mutex<HashMap<String, f64>>>;

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Follows the pods with kube-rs's `watcher`, stamping each event when it arrives; a pod seen
/// Ready for the first time puts its IP in the pending set of every *other* node's poller.
async fn watch_pods(
    api: Api<Pod>,
    seen: SeenMap,
    pending: BTreeMap<String, Pending>,
    synced: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let cfg = watcher::Config::default().labels(&format!("app={APP}"));
    let mut stream = watcher::watcher(api, cfg).boxed();
    let mut synced = Some(synced);
    while let Some(ev) = stream.next().await {
        let now = now_ms();
        let pod = match ev {
            Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => p,
            Ok(Event::InitDone) => {
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                eprintln!("pod watch: {e}");
                continue;
            }
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let ready = is_ready(&pod);
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty());
        let mut m = seen.lock().expect("seen");
        let s = m.entry(name).or_insert_with(|| Seen {
            added: now,
            ..Default::default()
        });
        if node.is_some() && s.bound.is_none() {
            s.bound = Some(now);
            s.node = node;
        }
        if ip.is_some() {
            s.ip = ip;
        }
        if ready && s.ready.is_none() {
            s.ready = Some(now);
            if let (Some(ip), Some(node)) = (&s.ip, &s.node) {
                for (n, p) in &pending {
                    if n != node {
                        p.lock().expect("pending").insert(ip.clone());
                    }
                }
            }
        }
        s.last = Some(pod);
    }
    bail!("the pod watch ended")
}

/// Follows the Service's EndpointSlices: endpoint IP → first time seen with `ready: true`.
async fn watch_slices(api: Api<EndpointSlice>, seen: Stamps) -> anyhow::Result<()> {
    let cfg = watcher::Config::default().labels(&format!("kubernetes.io/service-name={APP}"));
    let mut stream = watcher::watcher(api, cfg).boxed();
    while let Some(ev) = stream.next().await {
        let now = now_ms();
        let slice = match ev {
            Ok(Event::Apply(s)) | Ok(Event::InitApply(s)) => s,
            Ok(_) => continue,
            Err(e) => {
                eprintln!("slice watch: {e}");
                continue;
            }
        };
        let mut m = seen.lock().expect("slices");
        for e in &slice.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                for a in &e.addresses {
                    m.entry(a.clone()).or_insert(now);
                }
            }
        }
    }
    bail!("the slice watch ended")
}

/// Per node: endpoint IP → first time a dataplane probe showed it (unix ms, end of the probe).
/// It probes only while an IP is pending, so it does not load the machine while pods start.
struct Poller {
    stop: Arc<AtomicBool>,
    pending: Pending,
    first_seen: Stamps,
    probe_ms: Arc<Mutex<Vec<f64>>>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Poller {
    fn start(netns: &str, mode: &str, vip: Ipv4Addr, max_slots: usize, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let first_seen: Stamps = Arc::new(Mutex::new(HashMap::new()));
        let pending: Pending = Arc::new(Mutex::new(HashSet::new()));
        let probe_ms = Arc::new(Mutex::new(Vec::new()));
        let (st, fs, pm, pd) = (
            stop.clone(),
            first_seen.clone(),
            probe_ms.clone(),
            pending.clone(),
        );
        let path = format!("/run/netns/{netns}");
        let mode = mode.to_string();
        let handle = std::thread::spawn(move || -> anyhow::Result<()> {
            let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {path}"))?;
            let mut nf = if mode == "nftables" {
                Some(crate::nftget::NfSocket::open().context("nf_tables netlink socket")?)
            } else {
                None
            };
            let save = format!("iptables-{}-save", crate::scale::backend());
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                if pd.lock().expect("pending").is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                    next = Instant::now();
                    continue;
                }
                let t0 = Instant::now();
                let ips: Vec<String> = match &mut nf {
                    Some(sock) => (0..max_slots as u32)
                        .map_while(|k| {
                            let key = crate::nftget::slot_key(vip, SERVICE_PORT, k);
                            match sock.get("sluice", "endpoints-tcp", &key) {
                                Ok(Some(crate::nftget::ElemData::Value(v))) => {
                                    crate::nftget::endpoint(&v).map(|a| a.ip().to_string())
                                }
                                _ => None,
                            }
                        })
                        .collect(),
                    None => {
                        let o = Command::new(&save).args(["-t", "nat"]).output()?;
                        iptables_endpoints(&String::from_utf8_lossy(&o.stdout))
                    }
                };
                let end = now_ms();
                pm.lock()
                    .expect("probe_ms")
                    .push(t0.elapsed().as_secs_f64() * 1e3);
                {
                    let mut m = fs.lock().expect("first_seen");
                    let mut p = pd.lock().expect("pending");
                    for ip in ips {
                        p.remove(&ip);
                        m.entry(ip).or_insert(end);
                    }
                }
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(())
        });
        Poller {
            stop,
            pending,
            first_seen,
            probe_ms,
            handle: Some(handle),
        }
    }

    fn seen(&self, ip: &str) -> Option<f64> {
        self.first_seen.lock().expect("first_seen").get(ip).copied()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().map_err(|_| anyhow!("poller panicked"))??;
        }
        Ok(())
    }

    fn alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Endpoint IPs of `--to-destination IP:8080` DNAT rules in `iptables-save` output.
fn iptables_endpoints(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| {
            let rest = &l[l.find("--to-destination ")? + 17..];
            let dest = rest.split_whitespace().next()?;
            let (ip, port) = dest.rsplit_once(':')?;
            (port == TARGET_PORT.to_string()).then(|| ip.to_string())
        })
        .collect()
}

/// GET http://127.0.0.1:10249/metrics inside `netns` (a thread that entered it).
fn agent_metrics(netns: &str) -> anyhow::Result<String> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> anyhow::Result<String> {
        let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = std::net::TcpStream::connect(METRICS).context("connecting to metrics")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(body))
    })
    .join()
    .map_err(|_| anyhow!("metrics thread panicked"))?
}

/// One reading of a histogram: cumulative bucket counts by upper bound, sum, count.
#[derive(Clone, Debug, Default)]
struct Hist {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

fn parse_hist(text: &str, name: &str) -> Hist {
    let mut h = Hist::default();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let val = |s: &str| {
            s.split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let Some(b) = rest.strip_prefix("_bucket{") {
            let le = b
                .find("le=\"")
                .map(|p| &b[p + 4..])
                .and_then(|s| s.split('"').next())
                .map(|s| {
                    if s == "+Inf" {
                        f64::INFINITY
                    } else {
                        s.parse().unwrap_or(f64::NAN)
                    }
                });
            if let (Some(le), Some(v)) = (le, val(b)) {
                h.buckets.push((le, v));
            }
        } else if rest.starts_with("_sum") {
            h.sum = val(rest).unwrap_or(0.0);
        } else if rest.starts_with("_count") {
            h.count = val(rest).unwrap_or(0.0);
        }
    }
    h
}

impl Hist {
    fn minus(&self, before: &Hist) -> Hist {
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|(le, v)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |x| x.1);
                    (*le, v - b)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// Upper bound of the bucket holding quantile `q` (s).
    fn quantile_le(&self, q: f64) -> f64 {
        let want = (q * self.count).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, v)| *v >= want)
            .map_or(f64::NAN, |x| x.0)
    }

    fn json(&self) -> Value {
        if self.count == 0.0 {
            return json!({"count": 0});
        }
        let nonzero: Vec<Value> = self
            .buckets
            .iter()
            .scan(0.0, |prev, (le, v)| {
                let d = v - *prev;
                *prev = *v;
                Some((*le, d))
            })
            .filter(|(_, d)| *d > 0.0)
            .map(|(le, d)| json!({"le": if le.is_finite() { json!(le) } else { json!("+Inf") }, "n": d}))
            .collect();
        json!({
            "count": self.count,
            "mean_s": r3(self.sum / self.count),
            "p50_le_s": self.quantile_le(0.5),
            "p99_le_s": self.quantile_le(0.99),
            "buckets": nonzero,
        })
    }
}

/// Parses a `Debug`-formatted `Duration` (`1.5s`, `12.3ms`, `4µs`, `7ns`) into ms.
fn debug_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "s" => n * 1e3,
        "ms" => n,
        "µs" | "us" => n / 1e3,
        "ns" => n / 1e6,
        _ => return None,
    })
}

/// Removes ANSI escape sequences (a log written with colours on).
fn strip_ansi(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut it = l.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for c in it.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What an agent's log (and its containerd's) says of one pod (unix ms).
#[derive(Clone, Debug, Default)]
struct AgentTimes {
    sandbox_done: Option<f64>,
    sandbox_took: Option<f64>,
    sandbox_id: Option<String>,
    container_started: Option<f64>,
    /// containerd's CreateContainer and StartContainer, begin and end.
    ctr: CtrTimes,
}

#[derive(Clone, Debug, Default)]
struct CtrTimes {
    create_begin: Option<f64>,
    create_end: Option<f64>,
    start_begin: Option<f64>,
    start_end: Option<f64>,
}

/// The id after `marker` in a containerd log line (`\"<64 hex>\"` inside the quoted msg).
fn ctr_id<'a>(l: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &l[l.find(marker)? + marker.len()..];
    let rest = rest.trim_start_matches(['\\', '"']);
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// containerd's (logrus) CreateContainer/StartContainer lines: sandbox id → times.
fn containerd_times(logs: &[PathBuf]) -> HashMap<String, CtrTimes> {
    let mut by_sandbox: HashMap<String, CtrTimes> = HashMap::new();
    let mut sandbox_of: HashMap<String, String> = HashMap::new();
    for log in logs {
        let text = std::fs::read(log).unwrap_or_default();
        for l in String::from_utf8_lossy(&text).lines() {
            if !l.contains("CreateContainer within sandbox") && !l.contains("StartContainer for") {
                continue;
            }
            let Some(ts) = l
                .find("time=\"")
                .map(|p| &l[p + 6..])
                .and_then(|r| r.split('"').next())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| ts_ms(&t))
            else {
                continue;
            };
            if l.contains("CreateContainer within sandbox") {
                let Some(sb) = ctr_id(l, "within sandbox ") else {
                    continue;
                };
                let e = by_sandbox.entry(sb.to_string()).or_default();
                if let Some(cid) = ctr_id(l, "returns container id ") {
                    e.create_end.get_or_insert(ts);
                    sandbox_of.insert(cid.to_string(), sb.to_string());
                } else {
                    e.create_begin.get_or_insert(ts);
                }
            } else if let Some(cid) = ctr_id(l, "StartContainer for ") {
                let Some(e) = sandbox_of.get(cid).and_then(|sb| by_sandbox.get_mut(sb)) else {
                    continue;
                };
                if l.contains("returns successfully") {
                    e.start_end.get_or_insert(ts);
                } else {
                    e.start_begin.get_or_insert(ts);
                }
            }
        }
    }
    by_sandbox
}

/// `key=value` in a tracing fmt line (value up to the next space; quotes removed).
fn field<'a>(l: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(p) = l[from..].find(key) {
        let at = from + p;
        if at == 0 || l.as_bytes()[at - 1] == b' ' {
            let v = l[at + key.len()..].split_whitespace().next()?;
            return Some(v.trim_matches('"'));
        }
        from = at + key.len();
    }
    None
}

/// The `sandbox running` and `container started` lines of the agents' logs, by pod name (first
/// of each per pod), with containerd's container lines (`ctr_logs`) joined by sandbox id.
fn agent_times(logs: &[PathBuf], ctr_logs: &[PathBuf]) -> HashMap<String, AgentTimes> {
    let mut out: HashMap<String, AgentTimes> = HashMap::new();
    for log in logs {
        let text = std::fs::read(log).unwrap_or_default();
        for raw in String::from_utf8_lossy(&text).lines() {
            let l = strip_ansi(raw);
            let sandbox = l.contains("sandbox running");
            let container = l.contains("container started");
            if !sandbox && !container {
                continue;
            }
            let Some(ts) = l
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<Timestamp>().ok())
            else {
                continue;
            };
            let Some(pod) = field(&l, "pod=") else {
                continue;
            };
            let Some(name) = pod.strip_prefix(&format!("{NS}/")) else {
                continue;
            };
            let e = out.entry(name.to_string()).or_default();
            if sandbox && e.sandbox_done.is_none() {
                e.sandbox_done = Some(ts_ms(&ts));
                e.sandbox_took = field(&l, "took=").and_then(debug_duration_ms);
                e.sandbox_id = field(&l, "sandbox=").map(str::to_string);
            } else if container && e.container_started.is_none() {
                e.container_started = Some(ts_ms(&ts));
            }
        }
    }
    let ctr = containerd_times(ctr_logs);
    for a in out.values_mut() {
        if let Some(c) = a.sandbox_id.as_ref().and_then(|id| ctr.get(id)) {
            a.ctr = c.clone();
        }
    }
    out
}

fn pod_object(name: &str, phase: &str, probe: bool) -> anyhow::Result<Pod> {
    let mut container = json!({
        "name": "echo",
        "image": IMAGE,
        "ports": [{"containerPort": TARGET_PORT}],
    });
    if probe {
        container["readinessProbe"] = json!({
            "httpGet": {"path": "/healthz", "port": TARGET_PORT},
            "periodSeconds": 1,
        });
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": APP, "phase": phase}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        }
    }))?)
}

/// One pod's client-side record.
#[derive(Clone, Debug)]
struct Created {
    name: String,
    phase: &'static str,
    sent: f64,
    acked: f64,
}

struct Ctx {
    api: Api<Pod>,
    seen: SeenMap,
    pollers: BTreeMap<String, Poller>,
    timeout: Duration,
    /// Wait for the endpoint on the other nodes before the next sequential pod.
    np_wait: Duration,
}

impl Ctx {
    fn ready(&self, name: &str) -> Option<Seen> {
        self.seen
            .lock()
            .expect("seen")
            .get(name)
            .filter(|s| s.ready.is_some())
            .cloned()
    }

    /// Waits until every pod in `names` is Ready and (up to `np_wait` more) its IP is in every
    /// other node's dataplane.
    async fn wait(&self, names: &[String]) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let ready: Vec<Seen> = names.iter().filter_map(|n| self.ready(n)).collect();
            if ready.len() == names.len() {
                break;
            }
            if t.elapsed() > self.timeout {
                bail!(
                    "{}/{} pods Ready after {:?}",
                    ready.len(),
                    names.len(),
                    self.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let t = Instant::now();
        loop {
            let all = names.iter().all(|n| {
                let s = self.ready(n).unwrap_or_default();
                let ip = s.ip.unwrap_or_default();
                self.pollers
                    .iter()
                    .filter(|(node, _)| s.node.as_ref() != Some(*node))
                    .all(|(_, p)| p.seen(&ip).is_some())
            });
            if all || t.elapsed() > self.np_wait {
                if !all {
                    eprintln!("some endpoints not programmed after {:?}", self.np_wait);
                }
                return Ok(());
            }
            if self.pollers.values().any(|p| !p.alive()) {
                bail!("a dataplane poller stopped");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn create(
        &self,
        name: &str,
        phase: &'static str,
        probe: bool,
    ) -> anyhow::Result<Created> {
        let pod = pod_object(name, phase, probe)?;
        let sent = now_ms();
        self.api
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        Ok(Created {
            name: name.to_string(),
            phase,
            sent,
            acked: now_ms(),
        })
    }
}

fn stats(v: &[f64]) -> Value {
    let s = sorted(v);
    if s.is_empty() {
        return json!({"n": 0});
    }
    json!({
        "n": s.len(),
        "p50": r3(percentile(&s, 0.5)),
        "p90": r3(percentile(&s, 0.9)),
        "p99": r3(percentile(&s, 0.99)),
        "max": r3(*s.last().expect("non-empty")),
        "min": r3(s[0]),
        "mean": r3(s.iter().sum::<f64>() / s.len() as f64),
    })
}

/// The per-pod row: client times, agent-log times, API timestamps, network programming.
fn pod_row(
    c: &Created,
    seen: &Seen,
    agent: Option<&AgentTimes>,
    pollers: &BTreeMap<String, Poller>,
    slices: &HashMap<String, f64>,
) -> Value {
    let rel = |t: Option<f64>| t.map(|t| r3(t - c.sent));
    let node = seen.node.clone().unwrap_or_default();
    let ip = seen.ip.clone().unwrap_or_default();
    let ready = seen.ready;
    // The other node (two-node lab: exactly one).
    let programmed = pollers
        .iter()
        .filter(|(n, _)| **n != node)
        .filter_map(|(_, p)| p.seen(&ip))
        .reduce(f64::max);
    let in_slice = slices.get(&ip).copied();
    let d = |a: Option<f64>, b: Option<f64>| Some(r3(b? - a?));
    let np = json!({
        "other_node": d(ready, programmed),
        "ready_to_slice": d(ready, in_slice),
        "slice_to_other_node": d(in_slice, programmed),
    });
    let sandbox_start = agent.and_then(|a| Some(a.sandbox_done? - a.sandbox_took?));
    // API timestamps (second precision), relative to the client's send time.
    let api = seen.last.as_ref().map(|p| {
        let cond = |t: &str| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == t))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| r3(ts_ms(&t.0) - c.sent))
        };
        let started = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|cs| cs.state.as_ref()?.running.as_ref()?.started_at.as_ref())
            .map(|t| r3(ts_ms(&t.0) - c.sent));
        json!({
            "creationTimestamp": p.metadata.creation_timestamp.as_ref().map(|t| r3(ts_ms(&t.0) - c.sent)),
            "PodScheduled": cond("PodScheduled"),
            "PodReadyToStartContainers": cond("PodReadyToStartContainers"),
            "startedAt": started,
            "Ready": cond("Ready"),
        })
    });
    json!({
        "name": c.name,
        "phase": c.phase,
        "node": node,
        "ip": ip,
        "ms_since_create_sent": {
            "create_acked": r3(c.acked - c.sent),
            "seen_added": r3(seen.added - c.sent),
            "seen_bound": rel(seen.bound),
            "sandbox_start": rel(sandbox_start),
            "sandbox_done": rel(agent.and_then(|a| a.sandbox_done)),
            "ctr_create_begin": rel(agent.and_then(|a| a.ctr.create_begin)),
            "ctr_create_end": rel(agent.and_then(|a| a.ctr.create_end)),
            "ctr_start_begin": rel(agent.and_then(|a| a.ctr.start_begin)),
            "ctr_start_end": rel(agent.and_then(|a| a.ctr.start_end)),
            "container_started": rel(agent.and_then(|a| a.container_started)),
            "seen_ready": rel(ready),
        },
        "sandbox_took_ms": agent.and_then(|a| a.sandbox_took).map(r3),
        "network_programming_ms": np,
        "api_timestamps_s_precision_ms_since_create_sent": api,
    })
}

/// Summary of a set of pod rows: create → Ready and its phases; network programming.
fn summarize(rows: &[&Value]) -> Value {
    let get = |r: &Value, k: &str| r["ms_since_create_sent"][k].as_f64();
    let col =
        |f: &dyn Fn(&Value) -> Option<f64>| rows.iter().filter_map(|r| f(r)).collect::<Vec<f64>>();
    let total = col(&|r| get(r, "seen_ready"));
    let phases: [(&str, &str, &str); 5] = [
        ("control_plane", "", "seen_bound"),
        ("agent_pickup", "seen_bound", "sandbox_start"),
        ("sandbox", "sandbox_start", "sandbox_done"),
        ("container", "sandbox_done", "container_started"),
        ("status_and_delivery", "container_started", "seen_ready"),
    ];
    let mut ph = json!({});
    // Phase shares over the pods where every stamp is there (so they add up to 1).
    let complete: Vec<&&Value> = rows
        .iter()
        .filter(|r| phases.iter().all(|(_, _, b)| get(r, b).is_some()))
        .collect();
    let total_complete: f64 = complete.iter().filter_map(|r| get(r, "seen_ready")).sum();
    for (name, a, b) in phases {
        let d = |r: &Value| {
            let start = if a.is_empty() { Some(0.0) } else { get(r, a) };
            Some(get(r, b)? - start?)
        };
        let v = col(&d);
        let sum: f64 = complete.iter().filter_map(|r| d(r)).sum();
        let mut s = stats(&v);
        s["share_of_total"] = json!(r3(sum / total_complete));
        ph[name] = s;
    }
    // The container phase in containerd's terms (its log lines, same clock).
    let mut split = json!({});
    for (name, a, b) in [
        ("agent_before_create", "sandbox_done", "ctr_create_begin"),
        ("create_container", "ctr_create_begin", "ctr_create_end"),
        ("between", "ctr_create_end", "ctr_start_begin"),
        ("start_container", "ctr_start_begin", "ctr_start_end"),
        ("agent_after_start", "ctr_start_end", "container_started"),
    ] {
        split[name] = stats(&col(&|r| Some(get(r, b)? - get(r, a)?)));
    }
    ph["container"]["split"] = split;
    let np = |k: &str| stats(&col(&|r| r["network_programming_ms"][k].as_f64()));
    // Cross-check with the API's own (whole-second) stamps: Ready.lastTransitionTime −
    // creationTimestamp must be within a second of the client's create → Ready.
    let api = |r: &Value, k: &str| r["api_timestamps_s_precision_ms_since_create_sent"][k].as_f64();
    let checked: Vec<bool> = rows
        .iter()
        .filter_map(|r| {
            let api_s = (api(r, "Ready")? - api(r, "creationTimestamp")?) / 1e3;
            let client_s = get(r, "seen_ready")? / 1e3;
            Some((api_s - client_s).abs() <= 1.0 + 1e-3)
        })
        .collect();
    json!({
        "api_cross_check": {
            "pods": checked.len(),
            "within_1s": checked.iter().filter(|ok| **ok).count(),
            "what": "Ready.lastTransitionTime − creationTimestamp (whole seconds) vs the client's create → Ready",
        },
        "create_to_ready_ms": stats(&total),
        "create_ack_ms": stats(&col(&|r| get(r, "create_acked"))),
        "phases_ms": ph,
        "pods_with_all_phase_stamps": complete.len(),
        "network_programming_ms": {
            "other_node": np("other_node"),
            "ready_to_slice": np("ready_to_slice"),
            "slice_to_other_node": np("slice_to_other_node"),
        },
    })
}

async fn measure(
    mode: &str,
    o: &Opts,
    probe_pods: usize,
    cluster: &Value,
    dir: &Path,
) -> anyhow::Result<Value> {
    let kubeconfig = PathBuf::from(cluster["kubeconfig"].as_str().context("kubeconfig")?);
    let client = sluice_tests::client_from(&kubeconfig).await?;
    let nodes: Vec<(String, String)> = cluster["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| {
            Ok((
                n["name"].as_str().context("node name")?.to_string(),
                n["netns"].as_str().context("node netns")?.to_string(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    // Both nodes Ready (the scheduler binds to Ready nodes only).
    let napi: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    loop {
        let ready = crate::deployments::count_ready(&napi).await?;
        if ready >= nodes.len() {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("{ready}/{} nodes Ready after 60 s", nodes.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let sapi: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT}]}
    }))?;
    let svc = sapi.create(&PostParams::default(), &svc).await?;
    let vip: Ipv4Addr = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .context("clusterIP")?
        .parse()?;
    eprintln!("[{mode}] service {APP}: ClusterIP {vip}");

    let total = 2 * o.pods + probe_pods;
    let every = Duration::from_millis(o.poll_ms.max(1));
    let pollers: BTreeMap<String, Poller> = nodes
        .iter()
        .map(|(n, ns)| (n.clone(), Poller::start(ns, mode, vip, total + 4, every)))
        .collect();

    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let seen: SeenMap = Arc::new(Mutex::new(HashMap::new()));
    let slices: Stamps = Arc::new(Mutex::new(HashMap::new()));
    let slice_watch = tokio::spawn(watch_slices(
        Api::namespaced(client.clone(), NS),
        slices.clone(),
    ));
    let pending = pollers
        .iter()
        .map(|(n, p)| (n.clone(), p.pending.clone()))
        .collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(watch_pods(api.clone(), seen.clone(), pending, tx));
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .context("pod watch not synced in 30 s")??;
    // Let the Service settle in both dataplanes before the first pod.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ctx = Ctx {
        api,
        seen: seen.clone(),
        pollers,
        timeout: o.timeout,
        np_wait: Duration::from_secs(10),
    };
    let read_hists = || -> BTreeMap<String, Hist> {
        nodes
            .iter()
            .map(|(n, ns)| {
                let h = agent_metrics(ns)
                    .map(|t| parse_hist(&t, NP_METRIC))
                    .unwrap_or_else(|e| {
                        eprintln!("[{mode}] metrics of {n}: {e:#}");
                        Hist::default()
                    });
                (n.clone(), h)
            })
            .collect()
    };
    let mut hists = vec![("start", read_hists())];

    let mut created: Vec<Created> = Vec::new();
    // 1. Sequential.
    let t = Instant::now();
    for i in 0..o.pods {
        let c = ctx.create(&format!("seq-{i}"), "sequential", false).await?;
        ctx.wait(std::slice::from_ref(&c.name)).await?;
        created.push(c);
    }
    let seq_s = t.elapsed().as_secs_f64();
    eprintln!("[{mode}] {} sequential pods in {seq_s:.1} s", o.pods);
    hists.push(("sequential", read_hists()));

    // 2. Burst: all POSTs at once.
    let t = Instant::now();
    let names: Vec<String> = (0..o.pods).map(|i| format!("burst-{i}")).collect();
    let results =
        futures::future::join_all(names.iter().map(|n| ctx.create(n, "burst", false))).await;
    for r in results {
        created.push(r?);
    }
    let burst_created_s = t.elapsed().as_secs_f64();
    ctx.wait(&names).await?;
    let burst_s = t.elapsed().as_secs_f64();
    eprintln!(
        "[{mode}] {} burst pods created in {burst_created_s:.2} s, all Ready and programmed in {burst_s:.1} s",
        o.pods
    );
    hists.push(("burst", read_hists()));

    // 3. With a readiness probe (sequential).
    for i in 0..probe_pods {
        let c = ctx.create(&format!("probe-{i}"), "probe", true).await?;
        ctx.wait(std::slice::from_ref(&c.name)).await?;
        created.push(c);
    }
    if probe_pods > 0 {
        hists.push(("probe", read_hists()));
    }
    // Let the watch deliver anything late (final objects) before reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    watch.abort();
    slice_watch.abort();
    let mut pollers = ctx.pollers;
    let mut probe_cost = json!({});
    for (n, p) in pollers.iter_mut() {
        p.finish()?;
        probe_cost[n] = stats(&p.probe_ms.lock().expect("probe_ms"));
    }

    let logs: Vec<PathBuf> = nodes
        .iter()
        .map(|(n, _)| dir.join(format!("logs/agent-{n}.log")))
        .collect();
    let ctr_logs: Vec<PathBuf> = nodes
        .iter()
        .map(|(n, _)| dir.join(format!("logs/containerd-{n}.log")))
        .collect();
    let agent = agent_times(&logs, &ctr_logs);
    let seen = seen.lock().expect("seen").clone();
    let slices = slices.lock().expect("slices").clone();
    let rows: Vec<Value> = created
        .iter()
        .map(|c| {
            let s = seen.get(&c.name).cloned().unwrap_or_default();
            pod_row(c, &s, agent.get(&c.name), &pollers, &slices)
        })
        .collect();
    let mut summary = json!({});
    for phase in ["sequential", "burst", "probe"] {
        let r: Vec<&Value> = rows.iter().filter(|r| r["phase"] == phase).collect();
        if !r.is_empty() {
            summary[phase] = summarize(&r);
        }
    }
    let per_node: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["node"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
        m
    });
    let mut agent_hist = json!({});
    for w in hists.windows(2) {
        let (phase, after) = &w[1];
        let before = &w[0].1;
        let mut by_node = json!({});
        for (n, h) in after {
            let b = before.get(n).cloned().unwrap_or_default();
            by_node[n] = h.minus(&b).json();
        }
        agent_hist[*phase] = by_node;
    }
    Ok(json!({
        "proxy_mode": mode,
        "service": {"name": APP, "cluster_ip": vip.to_string(), "port": SERVICE_PORT, "target_port": TARGET_PORT},
        "sequential_wall_s": r3(seq_s),
        "burst": {"all_created_s": r3(burst_created_s), "all_ready_and_programmed_s": r3(burst_s)},
        "pods_per_node": per_node,
        "summary": summary,
        "dataplane_probe_ms": probe_cost,
        "agent_network_programming_histogram": agent_hist,
        "pods": rows,
    }))
}

fn run_mode(target: &Path, mode: &str, o: &Opts, probe_pods: usize) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let lab = Lab {
        bin: target.join("sluice-lab"),
        dir: tmp.path().join("lab"),
    };
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
    let up_s = t.elapsed().as_secs_f64();
    eprintln!("[{mode}] lab up in {up_s:.1} s");
    let cluster: Value = serde_json::from_slice(
        &std::fs::read(lab.dir.join("cluster.json")).context("reading cluster.json")?,
    )?;
    // Its own runtime on its own thread (`main` already runs one).
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(measure(mode, o, probe_pods, &cluster, &lab.dir))
        })
        .join()
        .map_err(|_| anyhow!("the measuring thread panicked"))?
    });
    if res.is_err() {
        for n in ["n1", "n2"] {
            let log = lab.dir.join(format!("logs/agent-{n}.log"));
            let keep =
                std::env::temp_dir().join(format!("sluice-bench-podstart-{mode}-agent-{n}.log"));
            if std::fs::copy(&log, &keep).is_ok() {
                eprintln!("[{mode}] agent log kept at {}", keep.display());
            }
        }
    }
    let t = Instant::now();
    lab.down()?;
    eprintln!("[{mode}] lab down in {:.1} s", t.elapsed().as_secs_f64());
    let mut v = res?;
    v["lab_up_s"] = json!(r3(up_s));
    Ok(v)
}

fn f(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{x:.0}"))
}

fn table(runs: &[Value]) {
    eprintln!();
    eprintln!(
        "{:<9} {:<10} {:>4} {:>7} {:>7} {:>7} {:>7} | {:>6} {:>6} {:>7} {:>9} {:>7} | {:>7} {:>7} {:>7}",
        "mode", "phase", "n", "p50", "p90", "p99", "max", "cp%", "pick%", "sandbx%", "container%", "rest%", "np p50", "np p99", "np max"
    );
    for r in runs {
        for phase in ["sequential", "burst", "probe"] {
            let s = &r["summary"][phase];
            if s.is_null() {
                continue;
            }
            let c = &s["create_to_ready_ms"];
            let share = |k: &str| {
                s["phases_ms"][k]["share_of_total"]
                    .as_f64()
                    .map_or("—".into(), |x| format!("{:.0}", x * 100.0))
            };
            let np = &s["network_programming_ms"]["other_node"];
            eprintln!(
                "{:<9} {:<10} {:>4} {:>7} {:>7} {:>7} {:>7} | {:>6} {:>6} {:>7} {:>9} {:>7} | {:>7} {:>7} {:>7}",
                r["proxy_mode"].as_str().unwrap_or(""),
                phase,
                c["n"],
                f(&c["p50"]),
                f(&c["p90"]),
                f(&c["p99"]),
                f(&c["max"]),
                share("control_plane"),
                share("agent_pickup"),
                share("sandbox"),
                share("container"),
                share("status_and_delivery"),
                f(&np["p50"]),
                f(&np["p99"]),
                f(&np["max"]),
            );
        }
    }
    eprintln!("(ms; create → Ready seen on the client's watch; np = Ready seen → endpoint in the other node's dataplane)");
}

pub fn run(o: Opts) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("podstart needs root (the lab makes network namespaces and runs containerd)");
    }
    if o.pods == 0 || o.modes.is_empty() {
        bail!("--pods must be at least 1 and --modes not empty");
    }
    for m in &o.modes {
        if !matches!(m.as_str(), "iptables" | "nftables") {
            bail!("--modes: iptables or nftables (the userspace mode keeps endpoints in the agent, with nothing in the kernel to poll), not {m:?}");
        }
    }
    let target = sluice_tests::target_dir();
    for b in ["sluice-lab", "sluice-control", "sluice-agent", "sluice-cni"] {
        if !target.join(b).exists() {
            bail!(
                "{} is missing: cargo build --release -p sluice-lab -p sluice-agent -p sluice-control -p sluice-cni",
                target.join(b).display()
            );
        }
    }
    let load_before = crate::loadavg();
    let t = Instant::now();
    let mut runs = Vec::new();
    for (i, mode) in o.modes.iter().enumerate() {
        let probe = if i == 0 { o.probe_pods } else { 0 };
        runs.push(run_mode(&target, mode, &o, probe)?);
    }
    let wall = t.elapsed().as_secs_f64();
    table(&runs);
    // Pod start over every mode together (it does not depend on the proxy mode).
    let mut all = json!({});
    for phase in ["sequential", "burst"] {
        let rows: Vec<&Value> = runs
            .iter()
            .flat_map(|r| r["pods"].as_array().into_iter().flatten())
            .filter(|r| r["phase"] == phase)
            .collect();
        all[phase] = summarize(&rows);
    }
    let result = json!({
        "benchmark": "podstart",
        "kernel": crate::kernel(),
        "cores": crate::cores(),
        "loadavg_before": load_before,
        "loadavg_after": crate::loadavg(),
        "binaries_profile": target.file_name().map(|p| p.to_string_lossy().to_string()),
        "wall_s": r3(wall),
        "pods_per_phase": o.pods,
        "poll_interval_ms": o.poll_ms,
        "image": IMAGE,
        "method": "per mode a fresh 2-node containerd lab; ClusterIP Service selecting the pods; sequential (create, wait Ready + endpoint programmed on both nodes, next), then a burst of concurrent POSTs; times in ms since the client sent the create: bound and Ready = receive time of the kube-rs watcher event (client clock), sandbox/container = the agents' log lines (same host clock), network programming = first probe of the other node's dataplane showing the pod IP minus the Ready event (probing only while such an IP is pending), split at the first EndpointSlice event showing it ready",
        "phases": {
            "control_plane": "create sent → watch event with spec.nodeName",
            "agent_pickup": "bound seen → RunPodSandbox called (agent log: sandbox running time − took): the agent's pod watch, its worker, ListPodSandbox",
            "sandbox": "CRI RunPodSandbox incl. CNI ADD (took=)",
            "container": "sandbox running → container started (image status, env, CreateContainer, StartContainer)",
            "status_and_delivery": "container started → Ready event at the client (ContainerStatus, status PATCH, watch delivery)",
            "cni_alone": "not measured here (containerd runs the plugin; nothing logs its time at info level): see cni-latency",
        },
        "targets": {"create_to_ready_p99_ms": 1000, "network_programming_p99_ms": 100},
        "anchors": {
            "kubernetes_pod_startup_slo_p99_s": 5,
            "kube_proxy_nftables_100_nodes_network_programming_s": {"p50": 1.5, "p99": 6.8},
        },
        "all_modes": all,
        "runs": runs,
    });
    crate::emit(&result, o.out.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent-n1.log");
        std::fs::write(
            &log,
            "2025-12-03T13:00:00.100000Z  INFO sluice_agent::pods::worker: sandbox running pod=default/seq-0 sandbox=abc ip=10.244.1.2 took=151.5ms\n\
             \x1b[2m2025-12-03T13:00:00.300000Z\x1b[0m \x1b[32m INFO\x1b[0m sluice_agent::pods::worker: container started \x1b[3mpod\x1b[0m\x1b[2m=\x1b[0mdefault/seq-0 container=echo id=def restarts=0\n\
             2025-12-03T13:00:01Z  INFO x: sandbox running pod=other/seq-0 took=1s\n",
        )
        .unwrap();
        let ctr = dir.path().join("containerd-n1.log");
        std::fs::write(
            &ctr,
            "time=\"2025-12-03T13:00:00.110000000Z\" level=info msg=\"CreateContainer within sandbox \\\"abc\\\" for container &ContainerMetadata{Name:echo,Attempt:0,}\"\n\
             time=\"2025-12-03T13:00:00.150000000Z\" level=info msg=\"CreateContainer within sandbox \\\"abc\\\" for &ContainerMetadata{Name:echo,Attempt:0,} returns container id \\\"def\\\"\"\n\
             time=\"2025-12-03T13:00:00.160000000Z\" level=info msg=\"StartContainer for \\\"def\\\"\"\n\
             time=\"2025-12-03T13:00:00.290000000Z\" level=info msg=\"StartContainer for \\\"def\\\" returns successfully\"\n",
        )
        .unwrap();
        let t = agent_times(&[log], &[ctr]);
        let a = &t["seq-0"];
        assert_eq!(a.sandbox_took, Some(151.5));
        let base: Timestamp = "2025-12-03T13:00:00Z".parse().unwrap();
        assert!((a.sandbox_done.unwrap() - ts_ms(&base) - 100.0).abs() < 1e-3);
        assert!((a.container_started.unwrap() - ts_ms(&base) - 300.0).abs() < 1e-3);
        let at = |ms: f64| ts_ms(&base) + ms;
        assert!((a.ctr.create_begin.unwrap() - at(110.0)).abs() < 1e-3);
        assert!((a.ctr.create_end.unwrap() - at(150.0)).abs() < 1e-3);
        assert!((a.ctr.start_begin.unwrap() - at(160.0)).abs() < 1e-3);
        assert!((a.ctr.start_end.unwrap() - at(290.0)).abs() < 1e-3);
    }

    #[test]
    fn durations_and_rules() {
        assert_eq!(debug_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(debug_duration_ms("250µs"), Some(0.25));
        let save = "-A SLUICE-SVC-X -m comment --comment \"default/podstart:http\" -j DNAT --to-destination 10.244.1.7:8080\n\
                    -A SLUICE-SVC-Y -j DNAT --to-destination 172.31.0.1:6443\n";
        assert_eq!(iptables_endpoints(save), vec!["10.244.1.7".to_string()]);
    }

    #[test]
    fn histogram_quantiles() {
        let t = "# TYPE x histogram\n\
                 sluice_proxy_network_programming_duration_seconds_sum 1.5\n\
                 sluice_proxy_network_programming_duration_seconds_count 3\n\
                 sluice_proxy_network_programming_duration_seconds_bucket{le=\"0.25\"} 1\n\
                 sluice_proxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 2\n\
                 sluice_proxy_network_programming_duration_seconds_bucket{le=\"1.0\"} 3\n\
                 sluice_proxy_network_programming_duration_seconds_bucket{le=\"+Inf\"} 3\n";
        let h = parse_hist(t, NP_METRIC);
        assert_eq!(h.count, 3.0);
        assert_eq!(h.quantile_le(0.5), 0.5);
        assert_eq!(h.quantile_le(0.99), 1.0);
        let d = h.minus(&Hist::default());
        assert_eq!(d.count, 3.0);
    }
}
