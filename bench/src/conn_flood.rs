//! `sluice-bench conn-flood`: authenticated request latency while thousands of connections
//! without a token are held and churned, and the memory the server holds per idle connection.
//!
//! Starts the real `sluice-control`, then:
//! 1. **idle**: for `--phase-secs`, one authenticated GET every 20 ms on a kept-alive kube-rs
//!    client, and one every 200 ms on a fresh client (new TCP + TLS each), latencies recorded;
//! 2. **flood**: `--connections` attacker slots each keep one TLS connection open without ever
//!    sending a request; when the server closes one (idle deadline or eviction to make room)
//!    the slot reconnects after 100 ms, and each slot also drops and reopens its connection
//!    every 5–25 s of its own accord (churn). New handshakes are capped at 64 in progress. The
//!    same GETs are timed meanwhile.
//!
//! The server's connections are counted from its open socket descriptors, and its memory per
//! idle connection is (RSS with the flood held − RSS before) ÷ (sockets held − before).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use sluice_tests::ControlPlane;
use tokio::io::AsyncReadExt;

use crate::{emit, percentile, rss_mb};

/// Options of `sluice-bench conn-flood`.
pub struct Opts {
    /// Attacker connection slots.
    pub connections: usize,
    /// Seconds of each phase.
    pub phase_secs: u64,
    /// `--max-unauthenticated-connections` of the server (None: its default).
    pub max_unauthenticated: Option<usize>,
    pub out: Option<PathBuf>,
}

/// Latencies in milliseconds, sorted.
#[derive(Default)]
struct Lat {
    kept: Vec<f64>,
    fresh: Vec<f64>,
    errors: u64,
}

impl Lat {
    fn summary(&mut self) -> serde_json::Value {
        self.kept.sort_by(f64::total_cmp);
        self.fresh.sort_by(f64::total_cmp);
        json!({
            "kept_alive_ms": {"n": self.kept.len(), "p50": percentile(&self.kept, 50.0), "p99": percentile(&self.kept, 99.0), "max": self.kept.last()},
            "new_connection_ms": {"n": self.fresh.len(), "p50": percentile(&self.fresh, 50.0), "p99": percentile(&self.fresh, 99.0), "max": self.fresh.last()},
            "errors": self.errors,
        })
    }
}

/// Open socket descriptors of a process.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Times authenticated GETs for `secs`: every 20 ms on `kept`, every 200 ms on a new client.
async fn measure(kept: &kube::Client, cfg: &kube::Config, secs: u64) -> Lat {
    let mut lat = Lat::default();
    let end = Instant::now() + Duration::from_secs(secs);
    let ns: Api<Namespace> = Api::all(kept.clone());
    let mut i = 0u64;
    while Instant::now() < end {
        let t0 = Instant::now();
        match ns.get("default").await {
            Ok(_) => lat.kept.push(t0.elapsed().as_secs_f64() * 1e3),
            Err(_) => lat.errors += 1,
        }
        if i.is_multiple_of(10) {
            let t0 = Instant::now();
            let ok = match kube::Client::try_from(cfg.clone()) {
                Ok(c) => Api::<Namespace>::all(c).get("default").await.is_ok(),
                Err(_) => false,
            };
            if ok {
                lat.fresh.push(t0.elapsed().as_secs_f64() * 1e3);
            } else {
                lat.errors += 1;
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20).saturating_sub(t0.elapsed())).await;
    }
    lat
}

/// Counters of the attacker.
#[derive(Default)]
struct Flood {
    handshakes: AtomicU64,
    failed: AtomicU64,
    closed_by_server: AtomicU64,
}

/// One attacker slot: keep a silent TLS connection open, reconnect when it goes away.
async fn slot(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    gate: Arc<tokio::sync::Semaphore>,
    stats: Arc<Flood>,
    stop: Arc<tokio::sync::Notify>,
    seed: u64,
) {
    let mut rng = seed;
    loop {
        // xorshift: hold times of 5–25 s.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let hold = Duration::from_millis(5_000 + rng % 20_000);
        let conn = {
            let _permit = gate.acquire().await.expect("gate");
            let connect = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tls.connect(ServerName::try_from("localhost").expect("name"), tcp)
                    .await
            };
            tokio::time::timeout(Duration::from_secs(10), connect).await
        };
        match conn {
            Ok(Ok(mut s)) => {
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 64];
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep(hold) => {}
                    _ = s.read(&mut b) => { stats.closed_by_server.fetch_add(1, Ordering::Relaxed); }
                }
            }
            _ => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cap = o.max_unauthenticated.map(|n| n.to_string());
    let mut args = Vec::new();
    if let Some(c) = &cap {
        args.extend(["--max-unauthenticated-connections", c.as_str()]);
    }
    let cp = ControlPlane::start(dir.path(), &args)?;
    let pid = cp.pid().context("server pid")?;
    let client = cp.client().await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;

    // Warm up, then the idle baseline.
    measure(&client, &cfg, 2).await;
    let sockets_idle = sockets(pid);
    let rss_idle = rss_mb(pid)?;
    let mut idle = measure(&client, &cfg, o.phase_secs).await;
    eprintln!("idle: {}", idle.summary());

    // The flood.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cp.dir.join("ca.crt"))? {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let stats = Arc::new(Flood::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut slots = tokio::task::JoinSet::new();
    let t_flood = Instant::now();
    for i in 0..o.connections {
        slots.spawn(slot(
            cp.addr,
            tls.clone(),
            gate.clone(),
            stats.clone(),
            stop.clone(),
            0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        ));
    }
    // Let the slots open their connections before measuring.
    while stats.handshakes.load(Ordering::Relaxed) < o.connections as u64
        && t_flood.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ramp = t_flood.elapsed();
    let sockets_held = sockets(pid);
    let rss_held = rss_mb(pid)?;
    eprintln!(
        "flood: {} handshakes in {:.1} s; server holds {} sockets (idle {}), RSS {:.1} MB (idle {:.1})",
        stats.handshakes.load(Ordering::Relaxed),
        ramp.as_secs_f64(),
        sockets_held,
        sockets_idle,
        rss_held,
        rss_idle
    );
    let h0 = stats.handshakes.load(Ordering::Relaxed);
    let t_measure = Instant::now();
    let mut flood = measure(&client, &cfg, o.phase_secs).await;
    let churn =
        (stats.handshakes.load(Ordering::Relaxed) - h0) as f64 / t_measure.elapsed().as_secs_f64();
    let sockets_end = sockets(pid);
    eprintln!("flood: {}", flood.summary());
    for _ in 0..o.connections {
        stop.notify_one();
    }
    stop.notify_waiters();
    slots.abort_all();
    while slots.join_next().await.is_some() {}

    let per_conn_kb = if sockets_held > sockets_idle {
        (rss_held - rss_idle) * 1024.0 / (sockets_held - sockets_idle) as f64
    } else {
        f64::NAN
    };
    let idle_s = idle.summary();
    let flood_s = flood.summary();
    let ratio = flood_s["kept_alive_ms"]["p99"].as_f64().unwrap_or(f64::NAN)
        / idle_s["kept_alive_ms"]["p99"].as_f64().unwrap_or(f64::NAN);
    let ratio_fresh = flood_s["new_connection_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / idle_s["new_connection_ms"]["p99"]
            .as_f64()
            .unwrap_or(f64::NAN);
    eprintln!(
        "p99 flood/idle: kept-alive {ratio:.2}, new connection {ratio_fresh:.2}; {per_conn_kb:.1} KB per held connection"
    );
    emit(
        &json!({
            "benchmark": "conn-flood",
            "method": "real sluice-control (release build) and the attacker in one process on the same 2 cores; authenticated GET /api/v1/namespaces/default every 20 ms on a kept-alive kube-rs client and every 200 ms on a new client, for phase_secs idle and phase_secs while `connections` attacker slots each hold a silent TLS connection (reconnect 100 ms after the server closes it, drop and reopen every 5-25 s, at most 64 handshakes in progress); server sockets from /proc/PID/fd; memory per connection = delta RSS / delta sockets after the flood ramp",
            "connections": o.connections,
            "phase_secs": o.phase_secs,
            "max_unauthenticated_connections": o.max_unauthenticated,
            "idle": idle_s,
            "flood": flood_s,
            "p99_ratio_kept_alive": ratio,
            "p99_ratio_new_connection": ratio_fresh,
            "ramp_s": ramp.as_secs_f64(),
            "attacker_handshakes_per_s_while_measuring": churn,
            "attacker_handshakes": stats.handshakes.load(Ordering::Relaxed),
            "attacker_failed_connects": stats.failed.load(Ordering::Relaxed),
            "attacker_closed_by_server": stats.closed_by_server.load(Ordering::Relaxed),
            "server_sockets": {"idle": sockets_idle, "after_ramp": sockets_held, "end": sockets_end},
            "server_rss_mb": {"idle": rss_idle, "after_ramp": rss_held},
            "server_kb_per_idle_connection": per_conn_kb,
        }),
        o.out.as_deref(),
    )
}
