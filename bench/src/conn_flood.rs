//! `sluice-bench conn-flood`: authenticated request latency while thousands of connections
//! without a token are held and churned, and the memory the server holds per idle connection.
//!
//! Starts the real `sluice-control`, then:
//! 1. **idle**: for `--phase-secs`, one authenticated GET every 20 ms on a kept-alive kube-rs
//!    client, and one every 200 ms on a fresh client (new TCP + TLS each), latencies recorded;
//! 2. **flood**: an attacker *process* (this binary, `conn-flood-attacker`) runs
//!    `--connections` slots, each keeping one TLS connection open without ever sending a
//!    request: when the server closes it (idle deadline, or eviction to make room for a newer
//!    one) the slot reconnects after a second, and each slot also drops and reopens its
//!    connection every 5–25 s of its own accord. New connections are paced at `--churn-rate`
//!    per second in all (a token bucket), so the attacker's CPU — which a real attacker spends
//!    on its own machines, not on the server's 2 cores — stays bounded and the same from run
//!    to run. The same GETs are timed meanwhile.
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
    /// New attacker connections per second, in all.
    pub churn_rate: u64,
    /// Idle/flood window pairs.
    pub rounds: usize,
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
    fn absorb(&mut self, other: Lat) {
        self.kept.extend(other.kept);
        self.fresh.extend(other.fresh);
        self.errors += other.errors;
    }

    fn summary(&mut self) -> serde_json::Value {
        self.kept.sort_by(f64::total_cmp);
        self.fresh.sort_by(f64::total_cmp);
        json!({
            "kept_alive_ms": {"n": self.kept.len(), "p50": percentile(&self.kept, 0.5), "p99": percentile(&self.kept, 0.99), "max": self.kept.last()},
            "new_connection_ms": {"n": self.fresh.len(), "p50": percentile(&self.fresh, 0.5), "p99": percentile(&self.fresh, 0.99), "max": self.fresh.last()},
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

/// Paces new connections across all slots: one every `1 / rate` seconds.
struct Pacer {
    next: std::sync::Mutex<tokio::time::Instant>,
    step: Duration,
}

impl Pacer {
    async fn wait(&self) {
        let at = {
            let mut n = self.next.lock().expect("pacer");
            let at = (*n).max(tokio::time::Instant::now());
            *n = at + self.step;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// One attacker slot: keep a silent TLS connection open, reconnect when it goes away.
async fn slot(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    pacer: Arc<Pacer>,
    stats: Arc<Flood>,
    seed: u64,
) {
    let mut rng = seed;
    loop {
        // xorshift: hold times of 5–25 s.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let hold = Duration::from_millis(5_000 + rng % 20_000);
        pacer.wait().await;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tls.connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(mut s)) => {
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 64];
                tokio::select! {
                    _ = tokio::time::sleep(hold) => {}
                    _ = s.read(&mut b) => {
                        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            _ => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Options of the attacker process.
pub struct AttackerOpts {
    pub addr: std::net::SocketAddr,
    pub ca: PathBuf,
    pub connections: usize,
    pub churn_rate: u64,
    pub secs: u64,
}

/// The attacker process: runs the slots for `secs`, then prints its counters as JSON.
pub async fn attacker(o: AttackerOpts) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&o.ca)? {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let pacer = Arc::new(Pacer {
        next: std::sync::Mutex::new(tokio::time::Instant::now()),
        step: Duration::from_secs(1) / o.churn_rate.max(1) as u32,
    });
    let stats = Arc::new(Flood::default());
    let mut slots = tokio::task::JoinSet::new();
    for i in 0..o.connections {
        slots.spawn(slot(
            o.addr,
            tls.clone(),
            pacer.clone(),
            stats.clone(),
            0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        ));
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(o.secs)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    slots.abort_all();
    println!(
        "{}",
        json!({
            "handshakes": stats.handshakes.load(Ordering::Relaxed),
            "failed": stats.failed.load(Ordering::Relaxed),
            "closed_by_server": stats.closed_by_server.load(Ordering::Relaxed),
        })
    );
    Ok(())
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

    // Warm up; then rounds of an idle window and a flood window, side by side, so that a
    // noisy moment of the machine does not land on one phase only.
    measure(&client, &cfg, 2).await;
    let sockets_idle = sockets(pid);
    let rss_idle = rss_mb(pid)?;
    let mut idle = Lat::default();
    let mut flood = Lat::default();
    let mut rounds = Vec::new();
    let (mut sockets_held, mut rss_held, mut cpu_flooded, mut t_flooded) = (0, 0.0f64, 0.0, 0.0);
    let mut attack = json!({});
    for round in 0..o.rounds {
        let mut i = measure(&client, &cfg, o.phase_secs).await;
        let (ramp, held, rss, cpu, mut f, counters) =
            flood_window(&cp, pid, &client, &cfg, &o).await?;
        sockets_held = sockets_held.max(held);
        rss_held = rss_held.max(rss);
        cpu_flooded += cpu;
        t_flooded += o.phase_secs as f64;
        let r = json!({"idle": i.summary(), "flood": f.summary(), "ramp_s": ramp.as_secs_f64(),
                       "server_sockets_held": held, "server_rss_mb_held": rss, "attacker": counters});
        eprintln!("round {round}: {r}");
        rounds.push(r);
        attack = counters;
        idle.absorb(i);
        flood.absorb(f);
        // The attacker's connections close with its process; wait for the server to let go.
        let t = Instant::now();
        while sockets(pid) > sockets_idle + 10 && t.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // And let the kernel finish tearing thousands of sockets down before the next idle
        // window (without this pause its new-connection times carried the teardown).
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let server_cpu = cpu_flooded / t_flooded;
    let sockets_end = sockets(pid);
    let per_conn_kb = if sockets_held > sockets_idle {
        (rss_held - rss_idle) * 1024.0 / (sockets_held - sockets_idle) as f64
    } else {
        f64::NAN
    };
    let idle_s = idle.summary();
    let flood_s = flood.summary();
    let p99 = |s: &serde_json::Value, k: &str| s[k]["p99"].as_f64().unwrap_or(f64::NAN);
    let ratio = p99(&flood_s, "kept_alive_ms") / p99(&idle_s, "kept_alive_ms");
    let ratio_fresh = p99(&flood_s, "new_connection_ms") / p99(&idle_s, "new_connection_ms");
    eprintln!(
        "p99 flood/idle: kept-alive {ratio:.2}, new connection {ratio_fresh:.2}; {per_conn_kb:.1} KB per held connection; server CPU {server_cpu:.2} cores while flooded; last attacker {attack}"
    );
    emit(
        &json!({
            "benchmark": "conn-flood",
            "method": "real sluice-control (release build); authenticated GET /api/v1/namespaces/default every 20 ms on a kept-alive kube-rs client and every 200 ms on a new client, in `round_count` interleaved pairs of a phase_secs idle window and a phase_secs window while an attacker process (same 2 cores) runs `connections` slots that each hold a silent TLS connection: reconnect 1 s after the server closes it, drop and reopen every 5-25 s, new connections paced at churn_rate/s in all; server sockets from /proc/PID/fd; memory per connection = delta RSS / delta sockets once the server's sockets stop growing",
            "connections": o.connections,
            "churn_rate": o.churn_rate,
            "phase_secs": o.phase_secs,
            "round_count": o.rounds,
            "max_unauthenticated_connections": o.max_unauthenticated,
            "idle": idle_s,
            "flood": flood_s,
            "p99_ratio_kept_alive": ratio,
            "p99_ratio_new_connection": ratio_fresh,
            "rounds": rounds,
            "last_attacker": attack,
            "server_cpu_cores_while_flooded": server_cpu,
            "server_sockets": {"idle": sockets_idle, "held": sockets_held, "end": sockets_end},
            "server_rss_mb": {"idle": rss_idle, "held": rss_held},
            "server_kb_per_idle_connection": per_conn_kb,
        }),
        o.out.as_deref(),
    )
}

/// One flood window: starts the attacker process, waits until the server's sockets stop
/// growing, times the GETs for `phase_secs`, and collects the attacker's counters. Returns the
/// ramp time, the server's sockets and RSS once ramped, its CPU seconds over the window, the
/// latencies and the counters.
async fn flood_window(
    cp: &ControlPlane,
    pid: u32,
    client: &kube::Client,
    cfg: &kube::Config,
    o: &Opts,
) -> anyhow::Result<(Duration, usize, f64, f64, Lat, serde_json::Value)> {
    let ramp_budget = 60;
    let base = sockets(pid);
    let attacker = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "conn-flood-attacker",
            "--addr",
            &cp.addr.to_string(),
            "--ca",
            &cp.dir.join("ca.crt").display().to_string(),
            "--connections",
            &o.connections.to_string(),
            "--churn-rate",
            &o.churn_rate.to_string(),
            "--secs",
            &(ramp_budget + o.phase_secs + 5).to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the attacker")?;
    let t0 = Instant::now();
    // Ramp: until the server's sockets stop growing (it holds what its cap allows).
    let (mut last, mut still) = (0, 0);
    while t0.elapsed() < Duration::from_secs(ramp_budget) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = sockets(pid);
        if n <= last + 10 {
            still += 1;
            if still >= 4 && n > base + 10 {
                break;
            }
        } else {
            still = 0;
        }
        last = last.max(n);
    }
    let ramp = t0.elapsed();
    let held = sockets(pid);
    let rss = rss_mb(pid)?;
    let cpu0 = crate::cpu_s(&pid.to_string());
    let lat = measure(client, cfg, o.phase_secs).await;
    let cpu = crate::cpu_s(&pid.to_string()) - cpu0;
    // The attacker runs a fixed time; stop it now that the window is over.
    let id = attacker.id().context("attacker pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(id as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = attacker.wait_with_output().await?;
    let counters = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| json!({}));
    Ok((ramp, held, rss, cpu, lat, counters))
}
