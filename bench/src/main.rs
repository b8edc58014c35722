//! `sluice-bench`: Sluice's benchmarks, one command each, results as JSON.
//!
//! `watch-fanout` starts the real `sluice-control` (build it with `--release` first, or the
//! numbers describe a debug build), opens N concurrent watches on services — each with its own
//! client and TLS connection, like N node agents — then creates services at a fixed
//! concurrency and measures, per write, the time from the write's acknowledgement (the create
//! response reaching the writer) to its delivery at the *last* watcher. Then it loads 10,000
//! services and 100,000 endpoints (EndpointSlices) and reads the server's RSS.

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
use sluice_tests::ControlPlane;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Sluice benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch fan-out latency, durable create throughput, and RSS with a large store.
    WatchFanout {
        /// Concurrent watchers on services.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Services created while the watchers follow.
        #[arg(long, default_value_t = 2000)]
        writes: usize,
        /// Concurrent create requests.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Services stored for the RSS reading.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints per service (one EndpointSlice each) for the RSS reading.
        #[arg(long, default_value_t = 10)]
        endpoints_per_service: usize,
        /// Write the JSON result here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
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

async fn watch_fanout(
    watchers: usize,
    writes: usize,
    concurrency: usize,
    services: usize,
    eps: usize,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    // 2 fds per watcher on each side, plus slack.
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 65536, 65536);
    let dir = tempfile::tempdir()?;
    let profile = sluice_tests::target_dir();
    let cp = ControlPlane::start(dir.path(), &["--watch-buffer", "8192"])?;
    let pid = cp.pid().context("server pid")?;
    let writer = cp.client().await?;
    let api: Api<Service> = Api::namespaced(writer.clone(), "default");
    let rv = api
        .list(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();

    let t0 = Instant::now();
    let delivered: Arc<Vec<AtomicU64>> = Arc::new((0..writes).map(|_| AtomicU64::new(0)).collect());
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..writes).map(|_| AtomicU32::new(0)).collect());
    let ready = Arc::new(AtomicU32::new(0));
    eprintln!("opening {watchers} watchers…");
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let client = cp.client().await?;
        let delivered = delivered.clone();
        let counts = counts.clone();
        let ready = ready.clone();
        let rv = rv.clone();
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
                        if i < delivered.len() {
                            let now = t0.elapsed().as_nanos() as u64;
                            delivered[i].fetch_max(now, Ordering::SeqCst);
                            counts[i].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }));
    }
    while (ready.load(Ordering::SeqCst) as usize) < watchers {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{watchers} watchers open ({:.1} MB server RSS); writing {writes} services…",
        rss_mb(pid)?
    );

    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..writes).map(|_| AtomicU64::new(0)).collect());
    let write_time = create_all(writes, concurrency, |i| {
        let api = api.clone();
        let acked = acked.clone();
        async move {
            api.create(&PostParams::default(), &svc(&format!("bench-{i}")))
                .await?;
            acked[i].store(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while counts
        .iter()
        .any(|c| (c.load(Ordering::SeqCst) as usize) < watchers)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let complete = counts
        .iter()
        .filter(|c| c.load(Ordering::SeqCst) as usize >= watchers)
        .count();
    let mut lat: Vec<f64> = (0..writes)
        .filter(|&i| counts[i].load(Ordering::SeqCst) as usize >= watchers)
        .map(|i| {
            let d = delivered[i].load(Ordering::SeqCst) as f64;
            let a = acked[i].load(Ordering::SeqCst) as f64;
            ((d - a) / 1e6).max(0.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let fanout_rss = rss_mb(pid)?;

    // Throughput without watchers' CPU in the way is not measured: the number below is with
    // all watchers attached, on the same 2 cores.
    let throughput = writes as f64 / write_time.as_secs_f64();
    eprintln!(
        "writes: {throughput:.0}/s; last-watcher delivery p50 {:.1} ms p99 {:.1} ms ({complete}/{writes} writes seen by all)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // RSS with a large store: services plus one EndpointSlice each (watchers closed first).
    for t in tasks {
        t.abort();
    }
    eprintln!(
        "loading {services} services and {} endpoints…",
        services * eps
    );
    let slices: Api<EndpointSlice> = Api::namespaced(writer.clone(), "default");
    let load_time = create_all(services, concurrency, |i| {
        let api = api.clone();
        let slices = slices.clone();
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
    let objects = services * 2 + writes;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let big_rss = rss_mb(pid)?;
    let store_size = std::fs::metadata(dir.path().join("store.redb"))?.len() as f64 / 1e6;

    let result = json!({
        "benchmark": "watch-fanout",
        "server_binary_profile": profile.file_name().map(|p| p.to_string_lossy().to_string()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "watchers": watchers,
        "writes": writes,
        "write_concurrency": concurrency,
        "durable_creates_per_s_with_watchers": throughput.round(),
        "last_watcher_delivery_ms": {
            "p50": percentile(&lat, 0.5),
            "p99": percentile(&lat, 0.99),
            "max": lat.last().copied().unwrap_or(f64::NAN),
            "writes_seen_by_all_watchers": complete,
        },
        "rss_mb_with_watchers": fanout_rss,
        "large_store": {
            "services": services + writes,
            "endpoints": services * eps,
            "objects": objects,
            "load_creates_per_s": ((services * 2) as f64 / load_time.as_secs_f64()).round(),
            "rss_mb": big_rss,
            "store_file_mb": store_size,
        },
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(p) = out {
        std::fs::write(p, text)?;
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
            services,
            endpoints_per_service,
            out,
        } => {
            watch_fanout(
                watchers,
                writes,
                concurrency,
                services,
                endpoints_per_service,
                out,
            )
            .await
        }
    }
}
