//! `sluice-bench`: Sluice's benchmarks, one command each, results as JSON.
//!
//! `watch-fanout` starts the real `sluice-control` (build it with `--release` first, or the
//! numbers describe a debug build), opens N concurrent watches on services — each with its own
//! client and TLS connection, like N node agents — then creates services at a fixed
//! concurrency and measures, per write, the time from the write's acknowledgement (the create
//! response reaching the writer) to its delivery at the *last* watcher. Then it loads 10,000
//! services and 100,000 endpoints (EndpointSlices) and reads the server's RSS. With `--store
//! etcd` (a throwaway etcd cluster of `--etcd-members`) and `--api-servers N`, the same phases
//! run against N API servers sharing it, watchers spread evenly over them and writes round
//! robin; `--compare-stores` runs redb, etcd with 1 and etcd with 3 API servers side by side
//! (see `store_compare.rs`).
//!
//! `cni-latency` times CNI ADD/DEL of `sluice-cni` against the reference `bridge` plugin
//! (see `cni_latency.rs`); `pod-network` runs netperf between pods of a 2-node `sluice-lab`
//! (see `pod_network.rs`); `service` compares pod → pod direct, through a Service's
//! ClusterIP and through HAProxy on the node, with the CPU per connection, for one or several
//! proxy modes (see `service.rs`); `scale` times a proxy mode's (iptables, nftables, ebpf,
//! ipvs) first full sync and one endpoint change at 1,000 and 10,000 services, measured on the
//! kernel's rules, maps or virtual servers, and reads the agent's RSS (see `scale.rs`); `endpointslices` times the
//! EndpointSlice controller with many Pods and selector Services in one namespace (see
//! `endpointslices.rs`); `deployments` times the Deployment/ReplicaSet controllers and the
//! scheduler from Deployment creates to every pod bound on registered nodes (see
//! `deployments.rs`); `vm` runs `service` and `scale` for the ipvs, iptables and nftables modes
//! inside a VM with Debian's 6.1 kernel (qemu TCG) and writes one combined result (see
//! `vm.rs`).

mod bpfget;
mod cni_latency;
mod conn_flood;
mod deployments;
mod endpointslices;
mod nftget;
mod pod_network;
mod podstart;
mod scale;
mod service;
mod store_compare;
mod vm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::json;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Sluice benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch fan-out latency, durable create throughput, and RSS with a large store; with
    /// `--compare-stores`, redb and etcd (1 and 3 API servers) side by side instead.
    WatchFanout {
        /// Concurrent watchers on services (spread evenly over the API servers).
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Services created while the watchers follow (default 2,000); with --compare-stores,
        /// creates per kind and round in the throughput phase (default 4,000).
        #[arg(long)]
        writes: Option<usize>,
        /// Concurrent create requests in the throughput phase.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Writes in the latency phase, paced at --rate.
        #[arg(long, default_value_t = 1000)]
        paced_writes: usize,
        /// Writes per second in the latency phase.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Services stored for the RSS reading.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints per service (one EndpointSlice each) for the RSS reading.
        #[arg(long, default_value_t = 10)]
        endpoints_per_service: usize,
        /// Object store of the control plane: embedded redb, or a throwaway etcd cluster of
        /// --etcd-members members started for the run.
        #[arg(long, value_enum, default_value = "redb")]
        store: store_compare::Store,
        /// API servers (`sluice-control` processes) sharing the store; above 1 needs etcd.
        /// Writes go to them round robin.
        #[arg(long, default_value_t = 1)]
        api_servers: usize,
        /// Members of the etcd cluster (`--store etcd`, `--compare-stores`).
        #[arg(long, default_value_t = 3)]
        etcd_members: usize,
        /// Instead of the phases above: (a) redb with 1 API server, (b) etcd with 1 and (c)
        /// with 3 API servers, one after the other: durable creates/s without watchers, then
        /// delivery latency to the watchers at --rate (default result file
        /// bench/results/store-compare-<date>.json).
        #[arg(long, conflicts_with_all = ["store", "api_servers"])]
        compare_stores: bool,
        /// Rounds over the three set-ups with --compare-stores.
        #[arg(long, default_value_t = 3)]
        compare_rounds: usize,
        /// With --compare-stores: attempts per set-up and round; an attempt during which
        /// builds or other control planes ran on the box is measured again.
        #[arg(long, default_value_t = 3)]
        compare_attempts: usize,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// CNI ADD/DEL latency: sluice-cni against the reference bridge + host-local plugins.
    CniLatency {
        /// Sandboxes (container namespaces) per implementation and round.
        #[arg(long, default_value_t = 200)]
        sandboxes: usize,
        /// Rounds (ADD all, then DEL all), the implementations interleaved in each.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pod-to-pod netperf TCP_RR / TCP_STREAM in a 2-node lab, same node vs across nodes.
    PodNetwork {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per netperf run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// netperf TCP_CRR / TCP_RR / TCP_STREAM pod → pod directly, through a Service (the lab's
    /// proxy mode) and through HAProxy on the node, interleaved; ratios of direct and CPU per
    /// connection; one fresh lab per proxy mode.
    Service {
        /// One proxy mode (`sluice-lab up --proxy-mode`); the same as `--modes MODE`.
        #[arg(long, conflicts_with = "modes")]
        mode: Option<String>,
        /// Proxy modes, each on a fresh lab, one after the other (default: iptables).
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Interleaved rounds (per mode and step).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Seconds per netperf run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// netperf tests.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "TCP_CRR,TCP_RR,TCP_STREAM"
        )]
        tests: Vec<String>,
        /// Steps of other Services present (selector-less, 5 made-up endpoints each), created
        /// between the steps; the measurements are repeated at each.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        extra_services: Vec<usize>,
        /// Leave out the HAProxy path.
        #[arg(long)]
        no_haproxy: bool,
        /// Write the JSON result here too (after every mode).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Authenticated GET latency while thousands of connections without a token are held and
    /// churned, and the server's memory per idle connection.
    ConnFlood {
        /// Attacker connection slots (each holds one silent TLS connection).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds of each idle and each flood window.
        #[arg(long, default_value_t = 10)]
        phase_secs: u64,
        /// The server's --max-unauthenticated-connections (default: the server's own).
        #[arg(long)]
        max_unauthenticated: Option<usize>,
        /// New attacker connections per second, in all slots together.
        #[arg(long, default_value_t = 1000)]
        churn_rate: u64,
        /// Idle/flood window pairs (phase-secs each), interleaved.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The attacker process of `conn-flood` (started by it).
    #[command(hide = true)]
    ConnFloodAttacker {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        churn_rate: u64,
        #[arg(long)]
        secs: u64,
    },
    /// EndpointSlice controller: P Pods and S selector Services in one namespace → time until
    /// every Service's slice holds its endpoints, and the server's CPU.
    Endpointslices {
        /// Pods (Running and Ready, with an IP).
        #[arg(long, default_value_t = 3000)]
        pods: usize,
        /// Services, each selecting pods/services of the pods.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Concurrent create requests.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Deployment/ReplicaSet controllers and scheduler: D Deployments × R replicas on N Ready
    /// nodes → time until every pod is bound, pods bound per second, pods per node, and the
    /// server's CPU and peak RSS.
    Deployments {
        /// Nodes registered (Ready, cpu 32, memory 128Gi, pods 110; Leases renewed).
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Deployments created.
        #[arg(long, default_value_t = 100)]
        deployments: usize,
        /// Replicas per Deployment.
        #[arg(long, default_value_t = 10)]
        replicas: usize,
        /// Namespaces the Deployments are spread over (round robin).
        #[arg(long, default_value_t = 4)]
        namespaces: usize,
        /// Concurrent Deployment create requests.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Give up when not every pod is bound after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Record the server with `perf record -g` over the timed phase into this file.
        #[arg(long)]
        perf: Option<PathBuf>,
        /// Then, pods without an owner created by the client (the scheduler alone); 0 skips.
        #[arg(long, default_value_t = 1000)]
        bare_pods: usize,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rule programming at scale (iptables, nftables, ebpf or ipvs mode): agent start → all
    /// services in the kernel, EndpointSlice update → new endpoint's rules (map entries, IPVS
    /// destinations) in the kernel, and the agent's RSS; a fresh 1-node lab per service count.
    Scale {
        /// Proxy mode under test.
        #[arg(long, value_enum, default_value = "iptables")]
        mode: scale::Mode,
        /// Service counts, each on a fresh lab.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<usize>,
        /// Ready endpoints per service (one EndpointSlice each).
        #[arg(long, default_value_t = 5)]
        endpoints: usize,
        /// Endpoint changes timed per service count.
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// Least time between one change showing up in the kernel and the next update (ms).
        #[arg(long, default_value_t = 1500)]
        spacing_ms: u64,
        /// Concurrent create requests while loading the services.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Give up on the first full sync after this many seconds.
        #[arg(long, default_value_t = 900)]
        sync_timeout: u64,
        /// Give up on one endpoint change after this many seconds.
        #[arg(long, default_value_t = 300)]
        change_timeout: u64,
        /// Start no new endpoint change after this many seconds of changes (per service count).
        #[arg(long, default_value_t = 600)]
        change_budget: u64,
        /// Skip the breakdown (iptables-save timing and a replay of the rules).
        #[arg(long)]
        no_breakdown: bool,
        /// Write the JSON result here too (after every service count).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Inside a VM (Debian's 6.1 kernel, qemu TCG, -smp 1): `service` (TCP_CRR/TCP_RR through a
    /// ClusterIP ÷ direct) and `scale` (full sync, endpoint change, RSS) for the ipvs, iptables
    /// and nftables modes side by side, from the release binaries; one combined JSON.
    Vm {
        /// Proxy modes, in this order in both benchmarks.
        #[arg(long, value_delimiter = ',', default_value = "ipvs,iptables,nftables")]
        modes: Vec<String>,
        /// Interleaved netperf rounds per mode.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per netperf run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Services (× 5 endpoints) in the scale runs.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Endpoint changes timed per mode.
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// Least time between one change showing up in the kernel and the next update (ms).
        #[arg(long, default_value_t = 1000)]
        spacing_ms: u64,
        /// Guest memory (MiB).
        #[arg(long, default_value_t = 3072)]
        memory_mb: u32,
        /// Guest watchdog (s): the run is stopped after this.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// The combined JSON (default bench/results/vm-<date>.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pod startup latency (create → Ready, sequential and burst, with its phases) and network
    /// programming latency (Ready → endpoint in the other node's dataplane) on a 2-node
    /// containerd lab, per proxy mode.
    Podstart {
        /// Pods per phase (sequential, then burst).
        #[arg(long, default_value_t = 30)]
        pods: usize,
        /// Proxy modes, each on a fresh lab (iptables, nftables).
        #[arg(long, value_delimiter = ',', default_value = "iptables,nftables")]
        modes: Vec<String>,
        /// Dataplane polling interval (ms): bounds the network programming resolution.
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        /// Then, in the first mode, this many sequential pods with a readinessProbe
        /// (httpGet /healthz, periodSeconds 1); 0 skips.
        #[arg(long, default_value_t = 10)]
        probe_pods: usize,
        /// Give up when the pods are not Ready after this many seconds (per wait).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// A sorted copy (NaNs last).
fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// Rounded to 3 decimals (µs when the unit is ms), for readable JSON.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Prints the result and writes it to `out` if given.
fn emit(result: &serde_json::Value, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(result)?;
    println!("{text}");
    if let Some(p) = out {
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // /proc reports in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    let ticks = 100.0;
    let t = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (t(11) + t(12)) / ticks
}

fn svc(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "1"}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("static service")
}

async fn create_all<F, Fut>(n: usize, concurrency: usize, f: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(start.elapsed())
}

struct Params {
    watchers: usize,
    writes: usize,
    concurrency: usize,
    paced_writes: usize,
    rate: u64,
    services: usize,
    eps: usize,
    store: store_compare::Store,
    api_servers: usize,
    etcd_members: usize,
    out: Option<PathBuf>,
}

/// Per-write timestamps (ns since the start) shared by the writer and the watchers.
struct Tracker {
    t0: Instant,
    acked: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
    counts: Vec<AtomicU32>,
}

impl Tracker {
    fn new(writes: usize) -> Tracker {
        Tracker {
            t0: Instant::now(),
            acked: (0..writes).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..writes).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..writes).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Delivery latencies (ms) of writes `range` that every watcher saw, sorted, and how many
    /// of them that is.
    fn latencies(&self, range: std::ops::Range<usize>, watchers: usize) -> (Vec<f64>, usize) {
        let mut lat: Vec<f64> = range
            .filter(|&i| self.counts[i].load(Ordering::SeqCst) as usize >= watchers)
            .map(|i| {
                let d = self.delivered[i].load(Ordering::SeqCst) as f64;
                let a = self.acked[i].load(Ordering::SeqCst) as f64;
                ((d - a) / 1e6).max(0.0)
            })
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let n = lat.len();
        (lat, n)
    }

    async fn wait_all_seen(&self, range: std::ops::Range<usize>, watchers: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while range
            .clone()
            .any(|i| (self.counts[i].load(Ordering::SeqCst) as usize) < watchers)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn lat_json(lat: &[f64], complete: usize) -> serde_json::Value {
    json!({
        "p50": percentile(lat, 0.5),
        "p99": percentile(lat, 0.99),
        "max": lat.last().copied().unwrap_or(f64::NAN),
        "writes_seen_by_all_watchers": complete,
    })
}

/// Watch streams on services opened by [`open_watchers`], each recording into a [`Tracker`].
struct Watchers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Watch streams that ended before they were aborted (the server closed them: a watcher
    /// that fell behind, or a server error), so whose later events are missing.
    ended: Arc<AtomicU32>,
}

impl Watchers {
    fn ended(&self) -> u32 {
        self.ended.load(Ordering::SeqCst)
    }

    fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Opens `n` watches on services in `default` from resourceVersion `rv`, watcher `j` on API
/// server `j mod N` with its own client and TLS connection (like `n` node agents spread over
/// the API servers behind a load balancer), and waits until every one is established. Each
/// event named `bench-<i>` stamps `tr` (latest delivery, delivery count) for write `i`.
async fn open_watchers(
    plane: &store_compare::Plane,
    n: usize,
    rv: &str,
    tr: &Arc<Tracker>,
) -> anyhow::Result<Watchers> {
    let ready = Arc::new(AtomicU32::new(0));
    let ended = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::with_capacity(n);
    for j in 0..n {
        let client = plane.client(j).await?;
        let tr = tr.clone();
        let ready = ready.clone();
        let ended = ended.clone();
        let rv = rv.to_string();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!(
                "/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}&timeoutSeconds=3600"
            ))
            .body(Vec::new())
            .expect("request");
            let stream = match client.request_stream(req).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("watch failed: {e}");
                    ended.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            ready.fetch_add(1, Ordering::SeqCst);
            let mut lines = stream.lines();
            while let Some(Ok(line)) = lines.next().await {
                // Cheap extraction of "bench-<i>" without decoding the whole event.
                if let Some(pos) = line.find("\"name\":\"bench-") {
                    let rest = &line[pos + 14..];
                    let end = rest.find('"').unwrap_or(rest.len());
                    if let Ok(i) = rest[..end].parse::<usize>() {
                        if i < tr.delivered.len() {
                            let now = tr.t0.elapsed().as_nanos() as u64;
                            tr.delivered[i].fetch_max(now, Ordering::SeqCst);
                            tr.counts[i].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
            ended.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while (ready.load(Ordering::SeqCst) as usize) < n {
        if ended.load(Ordering::SeqCst) > 0 || Instant::now() > deadline {
            anyhow::bail!(
                "only {} of {n} watches opened",
                ready.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Watchers { tasks, ended })
}

async fn watch_fanout(p: Params) -> anyhow::Result<()> {
    let Params {
        watchers,
        writes,
        concurrency,
        paced_writes,
        rate,
        services,
        eps,
        store,
        api_servers,
        etcd_members,
        out,
    } = p;
    // 2 fds per watcher on each side, plus slack.
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 65536, 65536);
    let profile = sluice_tests::target_dir();
    let plane = store_compare::Plane::start(
        store,
        api_servers,
        etcd_members,
        &["--watch-buffer", "8192"],
    )?;
    let writers = plane.writers().await?;
    let n_api = writers.len();
    let services_api =
        |i: usize| -> Api<Service> { Api::namespaced(writers[i % n_api].clone(), "default") };
    let rv = services_api(0)
        .list(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();

    let total = writes + paced_writes;
    let tr = Arc::new(Tracker::new(total));
    eprintln!("opening {watchers} watchers…");
    let open = open_watchers(&plane, watchers, &rv, &tr).await?;
    eprintln!(
        "{watchers} watchers open ({:.1} MB server RSS); writing {writes} services…",
        plane.rss_mb()?
    );

    // Phase 1: throughput — creates as fast as `concurrency` writers go.
    let mark = plane.cpu_mark();
    let write_time = create_all(writes, concurrency, |i| {
        let api = services_api(i);
        let tr = tr.clone();
        async move {
            api.create(&PostParams::default(), &svc(&format!("bench-{i}")))
                .await?;
            tr.acked[i].store(tr.t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
            Ok(())
        }
    })
    .await?;
    tr.wait_all_seen(0..writes, watchers).await;
    let (sat_lat, sat_complete) = tr.latencies(0..writes, watchers);
    let throughput = writes as f64 / write_time.as_secs_f64();
    let cpu_split = plane.cpu_since(&mark);
    eprintln!("phase 1 CPU: {cpu_split}");
    eprintln!(
        "saturated: {throughput:.0} creates/s; last-watcher delivery p50 {:.1} ms p99 {:.1} ms ({sat_complete}/{writes} seen by all)",
        percentile(&sat_lat, 0.5),
        percentile(&sat_lat, 0.99)
    );

    // Phase 2: latency at a steady rate.
    paced_creates(writes..total, rate, &tr, services_api).await?;
    tr.wait_all_seen(writes..total, watchers).await;
    let (lat, complete) = tr.latencies(writes..total, watchers);
    let fanout_rss = plane.rss_mb()?;
    eprintln!(
        "at {rate} writes/s: last-watcher delivery p50 {:.1} ms p99 {:.1} ms ({complete}/{paced_writes} seen by all)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // RSS with a large store: services plus one EndpointSlice each (watchers closed first).
    let ended = open.ended();
    open.abort();
    eprintln!(
        "loading {services} services and {} endpoints…",
        services * eps
    );
    let load_time = create_all(services, concurrency, |i| {
        let api = services_api(i);
        let slices: Api<EndpointSlice> = Api::namespaced(writers[i % n_api].clone(), "default");
        async move {
            let name = format!("load-{i}");
            api.create(&PostParams::default(), &svc(&name)).await?;
            let endpoints: Vec<_> = (0..eps)
                .map(|e| {
                    json!({
                        "addresses": [format!("10.{}.{}.{}", 100 + (i / 65536) % 100, (i / 256) % 256, (i % 256 + e) % 256)],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "nodeName": format!("node-{}", e % 20),
                        "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{name}-{e}")}
                    })
                })
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-abcde"), "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            }))?;
            slices.create(&PostParams::default(), &slice).await?;
            Ok(())
        }
    })
    .await?;
    let objects = services * 2 + total;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let big_rss = plane.rss_mb()?;
    let store_size = plane.store_file_mb();

    let mut result = json!({
        "benchmark": "watch-fanout",
        "server_binary_profile": profile.file_name().map(|p| p.to_string_lossy().to_string()),
        "kernel": kernel(),
        "cores": cores(),
        "watchers": watchers,
        "saturated": {
            "writes": writes,
            "write_concurrency": concurrency,
            "durable_creates_per_s_with_watchers": throughput.round(),
            "last_watcher_delivery_ms": lat_json(&sat_lat, sat_complete),
            "cpu": cpu_split,
        },
        "paced": {
            "writes": paced_writes,
            "rate_per_s": rate,
            "last_watcher_delivery_ms": lat_json(&lat, complete),
        },
        "rss_mb_with_watchers": fanout_rss,
        "large_store": {
            "services": services + total,
            "endpoints": services * eps,
            "objects": objects,
            "load_creates_per_s": ((services * 2) as f64 / load_time.as_secs_f64()).round(),
            "rss_mb": big_rss,
            "store_file_mb": store_size,
        },
        "loadavg": loadavg(),
    });
    // Only off the default (one API server on redb), so that its result reads as before.
    if store != store_compare::Store::Redb || n_api > 1 {
        result["store"] = json!(plane.describe());
        result["watch_streams_ended_early"] = json!(ended);
        result["rss_mb_per_api_server"] = json!(plane.rss_mb_each());
    }
    emit(&result, out.as_deref())
}

/// Creates services `bench-<i>` for `range` at `rate` per second, write `k` of the range
/// through `api(k)`, each its own task so a slow write does not hold back the next one;
/// stamps each acknowledgement in `tr`.
async fn paced_creates(
    range: std::ops::Range<usize>,
    rate: u64,
    tr: &Arc<Tracker>,
    api: impl Fn(usize) -> Api<Service>,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(range.len());
    for (k, i) in range.enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate.max(1) as f64))
            .await;
        let api = api(k);
        let tr = tr.clone();
        handles.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &svc(&format!("bench-{i}")))
                .await?;
            tr.acked[i].store(tr.t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::WatchFanout {
            watchers,
            writes,
            concurrency,
            paced_writes,
            rate,
            etcd_members,
            compare_stores,
            compare_rounds,
            compare_attempts,
            out,
            ..
        } if compare_stores => {
            store_compare::run(store_compare::Opts {
                watchers,
                creates: writes.unwrap_or(4000),
                concurrency,
                paced_writes,
                rate,
                etcd_members,
                rounds: compare_rounds,
                attempts: compare_attempts,
                out,
            })
            .await
        }
        Cmd::WatchFanout {
            watchers,
            writes,
            concurrency,
            paced_writes,
            rate,
            services,
            endpoints_per_service,
            store,
            api_servers,
            etcd_members,
            out,
            ..
        } => {
            watch_fanout(Params {
                watchers,
                writes: writes.unwrap_or(2000),
                concurrency,
                paced_writes,
                rate,
                services,
                eps: endpoints_per_service,
                store,
                api_servers,
                etcd_members,
                out,
            })
            .await
        }
        Cmd::ConnFlood {
            connections,
            phase_secs,
            max_unauthenticated,
            churn_rate,
            rounds,
            out,
        } => {
            conn_flood::run(conn_flood::Opts {
                connections,
                phase_secs,
                max_unauthenticated,
                churn_rate,
                rounds: rounds.max(1),
                out,
            })
            .await
        }
        Cmd::ConnFloodAttacker {
            addr,
            ca,
            connections,
            churn_rate,
            secs,
        } => {
            conn_flood::attacker(conn_flood::AttackerOpts {
                addr,
                ca,
                connections,
                churn_rate,
                secs,
            })
            .await
        }
        Cmd::Endpointslices {
            pods,
            services,
            concurrency,
            out,
        } => {
            endpointslices::run(endpointslices::Opts {
                pods,
                services,
                concurrency,
                out,
            })
            .await
        }
        Cmd::Deployments {
            nodes,
            deployments,
            replicas,
            namespaces,
            concurrency,
            timeout,
            perf,
            bare_pods,
            out,
        } => {
            deployments::run(deployments::Opts {
                nodes,
                deployments,
                replicas,
                namespaces,
                concurrency,
                timeout: Duration::from_secs(timeout),
                perf,
                bare_pods,
                out,
            })
            .await
        }
        Cmd::CniLatency {
            sandboxes,
            rounds,
            out,
        } => cni_latency::run(sandboxes, rounds, out),
        Cmd::PodNetwork {
            rounds,
            seconds,
            out,
        } => pod_network::run(rounds, seconds, out),
        Cmd::Service {
            mode,
            modes,
            rounds,
            seconds,
            tests,
            extra_services,
            no_haproxy,
            out,
        } => service::run(service::Opts {
            modes: match (mode, modes.is_empty()) {
                (Some(m), _) => vec![m],
                (None, true) => vec!["iptables".to_string()],
                (None, false) => modes,
            },
            rounds,
            seconds,
            tests,
            extra_services,
            haproxy: !no_haproxy,
            out,
        }),
        Cmd::Scale {
            mode,
            services,
            endpoints,
            changes,
            spacing_ms,
            concurrency,
            sync_timeout,
            change_timeout,
            change_budget,
            no_breakdown,
            out,
        } => scale::run(scale::Opts {
            mode,
            services,
            endpoints,
            changes,
            spacing: Duration::from_millis(spacing_ms),
            concurrency,
            sync_timeout: Duration::from_secs(sync_timeout),
            change_timeout: Duration::from_secs(change_timeout),
            change_budget: Duration::from_secs(change_budget),
            breakdown: !no_breakdown,
            out,
        }),
        Cmd::Vm {
            modes,
            rounds,
            seconds,
            services,
            changes,
            spacing_ms,
            memory_mb,
            timeout,
            out,
        } => vm::run(vm::Opts {
            modes,
            rounds,
            seconds,
            services,
            changes,
            spacing_ms,
            memory_mb,
            timeout: Duration::from_secs(timeout),
            out,
        }),
        Cmd::Podstart {
            pods,
            modes,
            poll_ms,
            probe_pods,
            timeout,
            out,
        } => podstart::run(podstart::Opts {
            pods,
            modes,
            poll_ms,
            probe_pods,
            timeout: Duration::from_secs(timeout),
            out,
        }),
    }
}
