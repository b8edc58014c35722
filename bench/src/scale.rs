//! `scale`: rule programming at scale in the iptables, nftables, ebpf or ipvs proxy mode
//! (`--mode`) — time of the first full sync, time to program one endpoint change, and the
//! agent's RSS, measured on the kernel's state.
//!
//! In the nftables mode the probes read the mode's maps instead of chains (`nft get element`
//! in the node's namespace): the first full sync is one transaction, so it is done when the last
//! service's cluster IP is in `service-ips` (then every service is checked to be there); an
//! endpoint change is seen when the service's slots in `endpoints-tcp` hold the new endpoint
//! (and its `service-ips` verdict is checked to pick among that many slots). There is no
//! breakdown for it.
//!
//! In the ebpf mode the probes are point lookups in the pinned maps (`<lab dir>/bpf/n1`, see
//! [`crate::bpfget`]), µs each: the first full sync is done when every service's slot 0 in
//! `sluice_svc_v1` holds `count` = E (the agent writes a service's slots before its slot 0, so
//! then its backends are there too; the probe walks the services in order and stops at the
//! first one still missing, so a probe costs one lookup until the writes arrive), after which
//! every service's E backends are checked once; the sync is timed from the restart and, from
//! the agent's log (µs timestamps on the host clock), from the start of its first sync and from
//! its process start. An endpoint change is seen when the service's slots `1..=count` name the
//! new endpoint in `sluice_backend_v1`.
//!
//! In the ipvs mode (a kernel with IPVS: the host's 6.18 has none, `sluice-bench vm` runs it in
//! the VM) the probes read IPVS over generic netlink from the node thread ([`IpvsClient`], no
//! `ipvsadm` exec: one costs ~80 ms in the VM). A full sync adds each virtual server with its
//! destinations in front-end order (ascending address), then binds the cluster IPs to the dummy
//! link `sluice-ipvs0`: the probe walks the services in address order, one destination dump
//! each, stopping at the first one without E weighted destinations (so a probe costs one dump
//! until the writes arrive); when all N are there it waits for all N addresses on the dummy
//! link (rtnetlink), and then checks every service's destinations once. An endpoint change is
//! seen when the service's destinations include the new endpoint with weight > 0; the agent adds
//! the new destination before it retires the old one, so the old one is then reported as
//! removed, drained (weight 0: it still has connections; the made-up endpoints here never do) or
//! still weighted, and in the last case polled until it is retired (`old_retired_ms`). The
//! rest of this text describes the iptables mode.
//!
//! Per service count N, on a fresh 1-node `sluice-lab` started with `--proxy-mode none`:
//!
//! 1. As admin, create N selector-less ClusterIP Services (port 80 → 8080) and one EndpointSlice
//!    each (`kubernetes.io/service-name`, IPv4, `--endpoints` ready endpoints with made-up pod
//!    IPs in 10.244.0.0/16), at bounded concurrency — before any proxy programs anything.
//! 2. `sluice-lab agent restart --proxy-mode iptables` (the lab's agent flags: `--min-sync-period
//!    200ms`, default `--sync-period 30s`). The first full sync is timed from the moment the
//!    restart returns (the new agent has just been spawned) until `iptables -t nat -S
//!    SLUICE-SERVICES` in the node's namespace jumps to a `SLUICE-SVC-` chain for all N services
//!    (one iptables-restore transaction writes the dispatch chain with the per-service chains, so
//!    a complete dispatch chain means everything is in the kernel).
//! 3. The agent's VmRSS (and VmHWM) once the sync settled, and again after the endpoint changes.
//! 4. Endpoint changes, one at a time and at least `--spacing-ms` apart: replace one endpoint IP
//!    of one service's EndpointSlice (PUT); t0 is when the API acknowledged it; then `iptables -t
//!    nat -S <that service's SVC chain>` runs in a tight loop until a rule names the new
//!    endpoint; that rule is checked to DNAT to it.
//! 5. Breakdown (unless `--no-breakdown`): with the agent paused (SIGSTOP, resumed afterwards),
//!    time `iptables-save` of nat and filter (what a full sync reads first), and replay the
//!    Sluice part of the nat table into an empty scratch namespace with `iptables-restore
//!    --noflush` (the kernel-side cost of a full sync's transaction), then a rewrite of the
//!    dispatch chain alone into it (what a partial sync pays when a service's reachability
//!    changes; an endpoint-only change no longer rewrites it).
//!
//! The iptables backend is nft unless `SLUICE_BENCH_IPTABLES_BACKEND=legacy`; the agent gets
//! `--iptables-backend` accordingly and every probe uses that backend's tools.
//!
//! Probes run from a thread that entered the node's network namespace (setns), so each poll is a
//! plain `iptables` process without `ip netns exec`'s remounts; the API client runs there too
//! (the node reaches the API server as its agent does). Times are upper bounds: a state is seen
//! when the probe that read it returns; the probe's own duration is reported as the resolution.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};

use sluice_proxy_ipvs::netlink::{Destination, Service as IpvsService, IPPROTO_TCP};
use sluice_proxy_ipvs::IpvsClient;

use crate::bpfget::BpfMaps;
use crate::pod_network::Lab;
use crate::{percentile, r3, sorted};

const NS: &str = "default";
const PREFIX: &str = "scale-";
const TARGET_PORT: u16 = 8080;
/// Agent log filter: the proxy's "proxy sync" (took, outcome) and the restore's size.
const AGENT_LOG: &str = "info,sluice_agent::proxy=debug,sluice_proxy_iptables=debug,sluice_proxy_nftables=debug,sluice_proxy_ipvs=debug,sluice_ebpf=debug";

/// The proxy mode under test (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// iptables (backend from `SLUICE_BENCH_IPTABLES_BACKEND`).
    Iptables,
    /// nftables.
    Nftables,
    /// ebpf (cgroup socket programs; probes read the pinned maps).
    Ebpf,
    /// ipvs (IPVS virtual servers; probes read IPVS over generic netlink). Needs a kernel with
    /// IPVS (`sluice-bench vm`).
    Ipvs,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Ebpf => "ebpf",
            Mode::Ipvs => "ipvs",
        }
    }

    /// Targets: first full sync at 10,000 services (s), endpoint change (ms), agent RSS (MB).
    fn targets(self) -> (f64, f64, f64) {
        match self {
            Mode::Ebpf => (1.0, 10.0, 64.0),
            _ => (3.0, 50.0, 64.0),
        }
    }
}

/// The iptables backend the agent runs and the probes read: `SLUICE_BENCH_IPTABLES_BACKEND`
/// (`nft`, the default, or `legacy`), passed to the agent as `--iptables-backend` (through
/// `sluice-lab agent restart --agent-arg`).
pub fn backend() -> &'static str {
    static B: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    B.get_or_init(
        || match std::env::var("SLUICE_BENCH_IPTABLES_BACKEND").as_deref() {
            Ok("legacy") => "legacy",
            _ => "nft",
        },
    )
}

/// `iptables-<backend>[-suffix]` (`suffix` = "", "-save" or "-restore").
fn tool(suffix: &str) -> String {
    format!("iptables-{}{suffix}", backend())
}

/// Options of `sluice-bench scale`.
pub struct Opts {
    pub mode: Mode,
    pub services: Vec<usize>,
    pub endpoints: usize,
    pub changes: usize,
    pub spacing: Duration,
    pub concurrency: usize,
    pub sync_timeout: Duration,
    pub change_timeout: Duration,
    pub change_budget: Duration,
    pub breakdown: bool,
    pub out: Option<PathBuf>,
}

/// Everything the node thread needs.
#[derive(Clone)]
struct Ctx {
    mode: Mode,
    n: usize,
    eps: usize,
    changes: usize,
    spacing: Duration,
    concurrency: usize,
    sync_timeout: Duration,
    change_timeout: Duration,
    change_budget: Duration,
    breakdown: bool,
    lab_bin: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    lab_netns: String,
}

/// Made-up pod IP of endpoint `e` of service `i` (10.244.0.1 … 10.244.209.250).
fn base_ip(i: usize, e: usize, eps: usize) -> String {
    let idx = i * eps + e;
    format!("10.244.{}.{}", idx / 250, idx % 250 + 1)
}

/// The replacement IP of change `k`, outside every base IP (10.244.210.1 onwards).
fn change_ip(k: usize) -> String {
    format!("10.244.{}.{}", 210 + k / 250, k % 250 + 1)
}

fn service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "scale"}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": TARGET_PORT, "protocol": "TCP"}]}
    }))?)
}

fn slice(name: &str, ips: &[String]) -> anyhow::Result<EndpointSlice> {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}-1"),
            "labels": {"kubernetes.io/service-name": name, "bench": "scale"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
    }))?)
}

/// `program args…`'s stdout (empty on failure) and how long it took.
fn timed_output(program: &str, args: &[&str]) -> (String, Duration) {
    let t = Instant::now();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    (text, t.elapsed())
}

/// `iptables -w -t TABLE -S CHAIN` (empty if the chain does not exist) and how long it took.
fn ipt_list(table: &str, chain: &str) -> (String, Duration) {
    timed_output(&tool(""), &["-w", "-t", table, "-S", chain])
}

/// `nft ARGS` (empty output on failure) and how long it took.
fn nft(args: &[&str]) -> (String, Duration) {
    timed_output("nft", args)
}

/// The endpoints in slots `0..eps` of front end `vip:80` (netlink; see [`crate::nftget`]) and
/// how long the lookups took.
fn nft_slots(
    sock: &mut crate::nftget::NfSocket,
    vip: std::net::Ipv4Addr,
    eps: usize,
) -> (Vec<String>, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    for k in 0..eps {
        let key = crate::nftget::slot_key(vip, 80, k as u32);
        if let Ok(Some(crate::nftget::ElemData::Value(v))) =
            sock.get("sluice", "endpoints-tcp", &key)
        {
            if let Some(a) = crate::nftget::endpoint(&v) {
                out.push(a.to_string());
            }
        }
    }
    (out, t.elapsed())
}

/// The IPVS virtual server of front end `vip:80/tcp`, as the key of a destination dump.
fn ipvs_service(vip: std::net::Ipv4Addr) -> IpvsService {
    IpvsService::new(vip.into(), IPPROTO_TCP, 80, "rr")
}

/// The destinations of virtual server `vip:80/tcp` (generic netlink, in the caller's netns;
/// empty when it does not exist) and how long the dump took.
fn ipvs_dests(ipvs: &mut IpvsClient, vip: std::net::Ipv4Addr) -> (Vec<Destination>, Duration) {
    let t = Instant::now();
    let d = ipvs.destinations(&ipvs_service(vip)).unwrap_or_default();
    (d, t.elapsed())
}

/// `ip:port` of the destinations with weight > 0 (those that get new connections), one a line.
fn weighted(dests: &[Destination]) -> String {
    dests
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| format!("{}\n", d.socket_addr()))
        .collect()
}

/// What a dump says of the endpoint `ip:TARGET_PORT` an endpoint change replaced.
fn ipvs_old_state(dests: &[Destination], ip: &str) -> &'static str {
    match dests
        .iter()
        .find(|d| d.socket_addr().to_string() == format!("{ip}:{TARGET_PORT}"))
    {
        None => "removed",
        Some(d) if d.weight == 0 => "drained",
        Some(_) => "still weighted",
    }
}

/// How many of `vips` are bound to the ipvs mode's dummy link (rtnetlink, caller's netns).
fn ipvs_bound(rtnl: &mut sluice_proxy_ipvs::rtnl::Rtnl, vips: &[std::net::Ipv4Addr]) -> usize {
    let Ok(Some(idx)) = rtnl.link_index(sluice_proxy_ipvs::DUMMY_LINK) else {
        return 0;
    };
    let bound: std::collections::HashSet<std::net::IpAddr> = rtnl
        .addresses(idx)
        .unwrap_or_default()
        .into_iter()
        .collect();
    vips.iter()
        .filter(|v| bound.contains(&std::net::IpAddr::V4(**v)))
        .count()
}

/// The value of `-j` in an `iptables -S` rule line.
fn jump_of(line: &str) -> Option<&str> {
    let mut w = line.split_whitespace();
    while let Some(x) = w.next() {
        if x == "-j" || x == "-g" {
            return w.next();
        }
    }
    None
}

/// (service index, SVC chain) of every dispatch rule into a `SLUICE-SVC-` chain for our services.
fn dispatch(text: &str) -> Vec<(usize, String)> {
    let pat = format!("\"{NS}/{PREFIX}");
    text.lines()
        .filter(|l| l.starts_with("-A SLUICE-SERVICES"))
        .filter_map(|l| {
            let j = jump_of(l)?;
            if !j.starts_with("SLUICE-SVC-") {
                return None;
            }
            let rest = &l[l.find(&pat)? + pat.len()..];
            let i: usize = rest[..rest.find(':')?].parse().ok()?;
            Some((i, j.to_string()))
        })
        .collect()
}

fn status_kb(pid: i32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn mb(kb: Option<f64>) -> Value {
    kb.map(|k| json!(r3(k / 1024.0))).unwrap_or(Value::Null)
}

/// Pids of `pid`'s children (all threads).
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Largest VmRSS (kB) among the agent's running `iptables-restore`/`iptables-save` children.
fn child_rss_kb(agent: i32) -> Option<f64> {
    children(agent)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.starts_with("iptables") || n.starts_with("xtables"))
        })
        .filter_map(|c| status_kb(c, "VmRSS:"))
        .reduce(f64::max)
}

/// Parses a `Debug`-formatted `Duration` (`1.5s`, `12.3ms`, `4µs`, `7ns`) into seconds.
fn parse_debug_duration(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    })
}

/// One "proxy sync" line of the agent's log.
#[derive(Debug, Clone)]
struct SyncLine {
    took_s: f64,
    full: Option<bool>,
    ok: bool,
}

/// "proxy sync" lines and "iptables-restore" byte counts of the log after `offset`.
fn agent_syncs(log: &Path, offset: u64) -> (Vec<SyncLine>, Vec<(u64, bool)>) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
    let mut syncs = Vec::new();
    let mut restores = Vec::new();
    // ebpf: the "ebpf maps updated writes=N" line comes before its "proxy sync" line.
    let mut ebpf_writes: Option<u64> = None;
    for l in text.lines() {
        let field = |k: &str| {
            l.find(k)
                .map(|p| &l[p + k.len()..])
                .map(|r| r.split_whitespace().next().unwrap_or(""))
        };
        if l.contains("proxy sync") {
            let Some(took_s) = field("took=").and_then(parse_debug_duration) else {
                continue;
            };
            let full = if l.contains("full: true") {
                Some(true)
            } else if l.contains("full: false") {
                Some(false)
            } else {
                None
            };
            if let Some(w) = ebpf_writes.take() {
                restores.push((w, full == Some(true)));
            }
            syncs.push(SyncLine {
                took_s,
                full,
                ok: l.contains("outcome=Ok"),
            });
        } else if l.contains("iptables-restore") {
            if let Some(bytes) = field("bytes=").and_then(|b| b.parse().ok()) {
                restores.push((bytes, field("full=") == Some("true")));
            }
        } else if l.contains("ebpf maps updated") {
            ebpf_writes = field("writes=").and_then(|w| w.parse().ok());
        } else if l.contains("nftables full sync") || l.contains("nftables partial sync") {
            if let Some(bytes) = field("bytes=").and_then(|b| b.parse().ok()) {
                restores.push((bytes, l.contains("nftables full sync")));
            }
        } else if l.contains("ipvs full sync") || l.contains("ipvs partial sync") {
            if let Some(ops) = field("ops=").and_then(|b| b.parse().ok()) {
                restores.push((ops, l.contains("ipvs full sync")));
            }
        }
    }
    (syncs, restores)
}

/// Host-clock times (s since the epoch) from an ebpf agent's log after `offset`.
#[derive(Debug, Default)]
struct EbpfMarks {
    /// "starting sluice-agent".
    start: Option<f64>,
    /// "ebpf mode: socket programs attached".
    attached: Option<f64>,
    /// The first full "proxy sync" line's time minus its took=.
    sync_start: Option<f64>,
    sync_took: Option<f64>,
    /// The "ebpf maps updated writes=" of that sync.
    sync_writes: Option<u64>,
}

fn ebpf_log_marks(log: &Path, offset: u64) -> EbpfMarks {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
    let mut m = EbpfMarks::default();
    let mut writes = None;
    for raw in text.lines() {
        // Strip ANSI colour codes (ESC [ … m).
        let mut l = String::with_capacity(raw.len());
        let mut esc = false;
        for c in raw.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => l.push(c),
            }
        }
        let Some(ts) = l
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_microsecond() as f64 / 1e6)
        else {
            continue;
        };
        let field = |k: &str| {
            l.find(k)
                .map(|p| &l[p + k.len()..])
                .map(|r| r.split_whitespace().next().unwrap_or(""))
        };
        if l.contains("starting sluice-agent") {
            m.start.get_or_insert(ts);
        } else if l.contains("socket programs attached") {
            m.attached.get_or_insert(ts);
        } else if l.contains("ebpf maps updated") {
            writes = field("writes=").and_then(|w| w.parse().ok());
        } else if l.contains("proxy sync") && l.contains("full: true") && m.sync_start.is_none() {
            if let Some(took) = field("took=").and_then(parse_debug_duration) {
                m.sync_start = Some(ts - took);
                m.sync_took = Some(took);
                m.sync_writes = writes;
            }
        }
    }
    m
}

fn stats_ms(v: &[f64]) -> Value {
    let s = sorted(v);
    json!({
        "n": s.len(),
        "p50": r3(percentile(&s, 0.5)),
        "p90": r3(percentile(&s, 0.9)),
        "p99": r3(percentile(&s, 0.99)),
        "max": r3(s.last().copied().unwrap_or(f64::NAN)),
        "min": r3(s.first().copied().unwrap_or(f64::NAN)),
    })
}

fn agent_pid(dir: &Path) -> anyhow::Result<i32> {
    let state: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json"))?)?;
    let pid = state["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == "n1"))
        .and_then(|n| n["agent_pid"].as_i64())
        .context("n1's agent_pid in lab.json")? as i32;
    // `ip netns exec` execs the agent in the same process; it may not have done so yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sluice-agent" {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("pid {pid} is {:?}, not sluice-agent", comm.trim());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Resumes a SIGSTOPped agent when dropped.
struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (commands it spawns start there too).
pub(crate) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the node thread panicked"))?
}

fn restore_timed(netns: &str, text: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, &tool("-restore"), "-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "iptables-restore in {netns}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(t.elapsed().as_secs_f64())
}

fn save_timed(table: &str) -> anyhow::Result<(String, f64)> {
    let t = Instant::now();
    let o = Command::new(tool("-save"))
        .args(["-t", table])
        .stderr(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!("iptables-save -t {table} failed");
    }
    Ok((
        String::from_utf8_lossy(&o.stdout).into_owned(),
        t.elapsed().as_secs_f64(),
    ))
}

/// Times save and replays the Sluice nat chains into a scratch namespace (agent paused).
fn breakdown(ctx: &Ctx, agent: i32) -> anyhow::Result<Value> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    let _resume = Paused(agent);
    // Let a running restore/save of the agent finish first.
    let deadline = Instant::now() + Duration::from_secs(600);
    while child_rss_kb(agent).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (nat, save_nat_s) = save_timed("nat")?;
    let (_, save_filter_s) = save_timed("filter")?;
    let mut full = String::from("*nat\n");
    let mut dispatch = String::from("*nat\n:SLUICE-SERVICES - [0:0]\n");
    let (mut chains, mut rules) = (0usize, 0usize);
    for l in nat.lines() {
        if l.starts_with(":SLUICE-") {
            chains += 1;
            full.push_str(l);
            full.push('\n');
        }
    }
    for l in nat.lines() {
        if l.starts_with("-A SLUICE-") {
            rules += 1;
            full.push_str(l);
            full.push('\n');
            if l.starts_with("-A SLUICE-SERVICES ") {
                dispatch.push_str(l);
                dispatch.push('\n');
            }
        }
    }
    full.push_str("COMMIT\n");
    dispatch.push_str("COMMIT\n");
    let scratch = format!("{}-rp", ctx.lab_netns);
    let o = Command::new("ip")
        .args(["netns", "add", &scratch])
        .output()?;
    if !o.status.success() {
        bail!(
            "ip netns add {scratch}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let replay = restore_timed(&scratch, &full);
    let dispatch_s = replay
        .as_ref()
        .ok()
        .map(|_| restore_timed(&scratch, &dispatch));
    let _ = Command::new("ip").args(["netns", "del", &scratch]).output();
    let replay = replay?;
    let dispatch_s = dispatch_s.transpose()?;
    Ok(json!({
        "how": "agent paused (SIGSTOP) after its running iptables child finished; iptables-save timed in the node netns; the Sluice nat chains (declarations, then rules) replayed with iptables-restore --noflush into an empty scratch netns, then the SLUICE-SERVICES rules alone rewritten there",
        "iptables_save_nat_s": r3(save_nat_s),
        "iptables_save_filter_s": r3(save_filter_s),
        "nat_sluice_chains": chains,
        "nat_sluice_rules": rules,
        "restore_text_bytes": full.len(),
        "replay_full_restore_s": r3(replay),
        "replay_dispatch_chain_only_restore_s": dispatch_s.map(r3),
        "dispatch_text_bytes": dispatch.len(),
    }))
}

async fn create_objects(ctx: &Ctx, client: &kube::Client) -> anyhow::Result<Duration> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let eps = ctx.eps;
    crate::create_all(ctx.n, ctx.concurrency, |i| {
        let svcs = svcs.clone();
        let slices = slices.clone();
        async move {
            let name = format!("{PREFIX}{i}");
            svcs.create(&PostParams::default(), &service(&name)?)
                .await
                .with_context(|| format!("creating service {name}"))?;
            let ips: Vec<String> = (0..eps).map(|e| base_ip(i, e, eps)).collect();
            slices
                .create(&PostParams::default(), &slice(&name, &ips)?)
                .await
                .with_context(|| format!("creating endpointslice {name}-1"))?;
            Ok(())
        }
    })
    .await
}

/// The measurement, on a thread inside n1's network namespace.
async fn measure(ctx: Ctx, node_netns: String) -> anyhow::Result<Value> {
    let n = ctx.n;
    let client = sluice_tests::client_from(&ctx.kubeconfig).await?;
    let load_before = crate::loadavg();

    eprintln!(
        "[{n}] creating {n} services and {n} endpointslices × {} endpoints…",
        ctx.eps
    );
    let create = create_objects(&ctx, &client).await?;
    eprintln!("[{n}] created in {:.1} s", create.as_secs_f64());
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let t = Instant::now();
    let listed_svcs = svcs.list(&ListParams::default()).await?.items.len();
    let list_svcs_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let listed_slices = slices.list(&ListParams::default()).await?.items.len();
    let list_slices_s = t.elapsed().as_secs_f64();
    if listed_svcs < n || listed_slices < n {
        bail!("listed {listed_svcs} services and {listed_slices} slices, expected {n}");
    }
    // Cluster IPs by service index (the nftables probes key on them).
    let mut vip = vec![String::new(); n];
    for svc in svcs.list(&ListParams::default()).await?.items {
        let name = svc.metadata.name.unwrap_or_default();
        if let Some(i) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.parse::<usize>().ok())
        {
            if i < n {
                vip[i] = svc
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .with_context(|| format!("{name} has no cluster IP"))?;
            }
        }
    }
    let mode = ctx.mode;
    let vip4: Vec<std::net::Ipv4Addr> = vip
        .iter()
        .map(|v| v.parse().with_context(|| format!("cluster IP {v}")))
        .collect::<anyhow::Result<_>>()?;
    let mut sock = crate::nftget::NfSocket::open().context("netlink socket")?;
    let pin_dir = crate::bpfget::pin_dir(&ctx.dir, "n1");
    let programmed_now = |sock: &mut crate::nftget::NfSocket, i: usize| -> (bool, Duration) {
        let t = Instant::now();
        let key = crate::nftget::front_end_key(vip4[i], 6, 80);
        let r = sock.get("sluice", "service-ips", &key);
        (matches!(r, Ok(Some(_))), t.elapsed())
    };
    // ipvs: generic netlink (IPVS) and rtnetlink sockets in this, the node's, netns; the
    // services in the order a full sync writes them (front ends by ascending address).
    let mut ipvs = match mode {
        Mode::Ipvs => Some(IpvsClient::connect().context(
            "IPVS over generic netlink in the node netns (the kernel needs IPVS: the host's 6.18 has none; `sluice-bench vm` runs this mode in a VM)",
        )?),
        _ => None,
    };
    let mut rtnl = match mode {
        Mode::Ipvs => Some(sluice_proxy_ipvs::rtnl::Rtnl::open().context("rtnetlink socket")?),
        _ => None,
    };
    let mut ipvs_order: Vec<usize> = (0..n).collect();
    ipvs_order.sort_by_key(|&i| vip4[i]);
    match mode {
        Mode::Iptables => {
            let (pre, _) = ipt_list("nat", "SLUICE-SERVICES");
            if !dispatch(&pre).is_empty() {
                bail!("SLUICE-SERVICES already programmed before the iptables agent started");
            }
        }
        Mode::Nftables => {
            if programmed_now(&mut sock, n - 1).0 {
                bail!("service-ips already programmed before the nftables agent started");
            }
        }
        Mode::Ebpf => {
            if let Ok(m) = BpfMaps::open(&pin_dir) {
                if m.count(vip4[n - 1], 80)?.is_some() {
                    bail!("sluice_svc_v1 already programmed before the ebpf agent started");
                }
            }
        }
        Mode::Ipvs => {
            let c = ipvs.as_mut().context("ipvs client")?;
            if !ipvs_dests(c, vip4[n - 1]).0.is_empty() {
                bail!("IPVS already programmed before the ipvs agent started");
            }
        }
    }

    // First full sync: agent start → all N services in the kernel.
    let log = ctx.dir.join("logs/agent-n1.log");
    let log_offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let d = ctx.dir.to_string_lossy().to_string();
    let wall_restart = std::time::SystemTime::now();
    let t_restart = Instant::now();
    let mut args = vec![
        "agent".to_string(),
        "restart".into(),
        "--dir".into(),
        d.clone(),
        "--node".into(),
        "n1".into(),
        "--proxy-mode".into(),
        mode.name().into(),
    ];
    if mode == Mode::Iptables {
        args.push(format!("--agent-arg=--iptables-backend={}", backend()));
    }
    let o = Command::new(&ctx.lab_bin)
        .args(&args)
        .env("RUST_LOG", AGENT_LOG)
        .output()?;
    let t_start = Instant::now();
    if !o.status.success() {
        bail!(
            "sluice-lab agent restart: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let restart_cmd_s = (t_start - t_restart).as_secs_f64();
    let agent = agent_pid(&ctx.dir)?;
    eprintln!(
        "[{n}] agent restarted in {} mode (pid {agent}); waiting for {n} services in the kernel…",
        mode.name()
    );
    let mut probes = Vec::new();
    let mut child_peak: Option<f64> = None;
    let mut last_report = Instant::now();
    // ebpf: the maps once pinned, and how many services (in index order) are in them.
    let mut maps: Option<BpfMaps> = None;
    let mut ebpf_seen = 0usize;
    // ipvs: how many services (in `ipvs_order`) have their E weighted destinations, and when all
    // N first had them (before the addresses were bound).
    let mut ipvs_seen = 0usize;
    let mut ipvs_all_virtual_servers: Option<Duration> = None;
    let (svc_chains, programmed) = loop {
        if let Some(kb) = child_rss_kb(agent) {
            child_peak = Some(child_peak.map_or(kb, |p: f64| p.max(kb)));
        }
        let (d, seen) = if mode == Mode::Iptables {
            let (text, took) = ipt_list("nat", "SLUICE-SERVICES");
            probes.push(took.as_secs_f64() * 1e3);
            let d = dispatch(&text);
            let mut seen: Vec<usize> = d.iter().map(|(i, _)| *i).filter(|&i| i < n).collect();
            seen.sort_unstable();
            seen.dedup();
            (d, seen.len())
        } else if mode == Mode::Ebpf {
            let t = Instant::now();
            if maps.is_none() {
                maps = BpfMaps::open(&pin_dir).ok();
            }
            if let Some(m) = &maps {
                while ebpf_seen < n && m.count(vip4[ebpf_seen], 80)? == Some(ctx.eps as u32) {
                    ebpf_seen += 1;
                }
            }
            probes.push(t.elapsed().as_secs_f64() * 1e3);
            (Vec::new(), ebpf_seen)
        } else if mode == Mode::Ipvs {
            let t = Instant::now();
            let c = ipvs.as_mut().context("ipvs client")?;
            while ipvs_seen < n {
                let (d, _) = ipvs_dests(c, vip4[ipvs_order[ipvs_seen]]);
                if d.iter().filter(|d| d.weight > 0).count() != ctx.eps {
                    break;
                }
                ipvs_seen += 1;
            }
            let mut seen = ipvs_seen.min(n - 1);
            if ipvs_seen == n {
                ipvs_all_virtual_servers.get_or_insert_with(|| t_start.elapsed());
                let r = rtnl.as_mut().context("rtnetlink socket")?;
                if ipvs_bound(r, &vip4) == n {
                    seen = n;
                }
            }
            probes.push(t.elapsed().as_secs_f64() * 1e3);
            (Vec::new(), seen)
        } else {
            let (done, took) = programmed_now(&mut sock, n - 1);
            probes.push(took.as_secs_f64() * 1e3);
            (Vec::new(), if done { n } else { 0 })
        };
        if seen >= n {
            break (d, t_start.elapsed());
        }
        if t_start.elapsed() > ctx.sync_timeout {
            bail!(
                "timed out after {:?}: {seen} of {n} services in the kernel",
                ctx.sync_timeout,
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "[{n}]   {:.0} s: {seen} of {n} services programmed",
                t_start.elapsed().as_secs_f64(),
            );
            last_report = Instant::now();
        }
        let every = match mode {
            Mode::Ebpf => 1,
            Mode::Ipvs => 10,
            _ => 20,
        };
        tokio::time::sleep(Duration::from_millis(every)).await;
    };
    let wall_programmed = std::time::SystemTime::now();
    let programmed_s = programmed.as_secs_f64();
    let mut ebpf_first_sync = Value::Null;
    if mode == Mode::Ebpf {
        // Every service's slots name its E backends.
        let m = maps.as_ref().context("maps")?;
        let t = Instant::now();
        let mut wrong = 0usize;
        for (i, v) in vip4.iter().enumerate() {
            let mut got = m.endpoints(*v, 80)?;
            got.sort();
            let mut want: Vec<String> = (0..ctx.eps)
                .map(|e| format!("{}:{TARGET_PORT}", base_ip(i, e, ctx.eps)))
                .collect();
            want.sort();
            wrong += usize::from(got != want);
        }
        if wrong > 0 {
            bail!("{wrong} of {n} services without their {} backends in the maps after the first sync", ctx.eps);
        }
        let marks = ebpf_log_marks(&log, log_offset);
        let secs = |to: std::time::SystemTime, from: Option<f64>| {
            let to = to
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(f64::NAN);
            from.map(|f| r3(to - f))
        };
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .ok()
        };
        ebpf_first_sync = json!({
            "verify_all_backends_s": r3(t.elapsed().as_secs_f64()),
            "from_restart_command_s": secs(wall_programmed, epoch(wall_restart)),
            "from_agent_process_start_s": secs(wall_programmed, marks.start),
            "from_programs_attached_s": secs(wall_programmed, marks.attached),
            "from_first_sync_start_s": secs(wall_programmed, marks.sync_start),
            "agent_first_sync_took_s": marks.sync_took.map(r3),
            "agent_start_after_restart_command_s": marks.start.zip(epoch(wall_restart)).map(|(a, b)| r3(a - b)),
            "programs_attached_after_agent_start_s": marks.attached.zip(marks.start).map(|(a, b)| r3(a - b)),
            "first_sync_start_after_agent_start_s": marks.sync_start.zip(marks.start).map(|(a, b)| r3(a - b)),
            "first_sync_writes": marks.sync_writes,
            "how": "host clock: the bench's SystemTime when the probe saw the last service, against the restart command's start and the agent log's µs UTC timestamps: \"starting sluice-agent\", \"ebpf mode: socket programs attached\", and the first full \"proxy sync\" line minus its took= (its start; the timer starts before the proxier lock, which the informers hold while the initial lists are applied)",
        });
        eprintln!("[{n}] ebpf first sync: {ebpf_first_sync}");
    }
    if mode == Mode::Nftables {
        // One transaction wrote them all; check that it did.
        let (text, _) = nft(&["list", "map", "ip", "sluice", "service-ips"]);
        let missing = vip
            .iter()
            .filter(|v| !text.contains(&format!("{v} . tcp . 80 : goto pick-tcp-")))
            .count();
        if missing > 0 {
            bail!("{missing} of {n} services missing from service-ips after the first sync");
        }
    }
    let mut ipvs_first_sync = Value::Null;
    if mode == Mode::Ipvs {
        // Every service's destinations are its E endpoints, NAT-forwarded, weighted.
        let c = ipvs.as_mut().context("ipvs client")?;
        let t = Instant::now();
        let mut wrong = 0usize;
        for (i, v) in vip4.iter().enumerate() {
            let (d, _) = ipvs_dests(c, *v);
            let mut got: Vec<String> = d
                .iter()
                .filter(|d| {
                    d.weight > 0
                        && d.fwd_method & sluice_proxy_ipvs::netlink::IP_VS_CONN_F_FWD_MASK
                            == sluice_proxy_ipvs::netlink::IP_VS_CONN_F_MASQ
                })
                .map(|d| d.socket_addr().to_string())
                .collect();
            got.sort();
            let mut want: Vec<String> = (0..ctx.eps)
                .map(|e| format!("{}:{TARGET_PORT}", base_ip(i, e, ctx.eps)))
                .collect();
            want.sort();
            wrong += usize::from(got != want);
        }
        if wrong > 0 {
            bail!(
                "{wrong} of {n} IPVS virtual servers without their {} NAT destinations after the first sync",
                ctx.eps
            );
        }
        let ours: std::collections::HashSet<std::net::Ipv4Addr> = vip4.iter().copied().collect();
        let listed = c.services().context("listing IPVS services")?;
        let virtual_servers = listed
            .iter()
            .filter(|s| {
                s.port == 80 && matches!(s.addr, std::net::IpAddr::V4(a) if ours.contains(&a))
            })
            .count();
        let scheduler = listed
            .iter()
            .find(|s| s.port == 80 && s.addr == std::net::IpAddr::V4(vip4[0]))
            .map(|s| s.scheduler.clone());
        ipvs_first_sync = json!({
            "all_virtual_servers_with_destinations_s": ipvs_all_virtual_servers.map(|d| r3(d.as_secs_f64())),
            "all_addresses_bound_s": r3(programmed_s),
            "virtual_servers_listed": virtual_servers,
            "ipvs_virtual_servers_in_netns": listed.len(),
            "scheduler": scheduler,
            "verify_all_destinations_s": r3(t.elapsed().as_secs_f64()),
            "how": "IPVS_CMD_GET_DEST dumps (generic netlink) of the services in ascending address order (the order a full sync writes them), stopping at the first without E weighted destinations, every ~10 ms; once all N had them, RTM_GETADDR on sluice-ipvs0 until all N cluster IPs are bound (a full sync binds them after every virtual server); then every service's destinations checked once",
        });
        eprintln!("[{n}] ipvs first sync: {ipvs_first_sync}");
    }
    eprintln!("[{n}] first full sync: all {n} services in the kernel {programmed_s:.3} s after agent start");
    let mut chain_of = vec![String::new(); n];
    for (i, c) in svc_chains {
        if i < n {
            chain_of[i] = c;
        }
    }

    // Settle, then RSS.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_settled = status_kb(agent, "VmRSS:");
    let hwm_settled = status_kb(agent, "VmHWM:");
    let (syncs_first, _) = agent_syncs(&log, log_offset);
    let first_took = syncs_first
        .iter()
        .find(|s| s.ok && s.full == Some(true))
        .map(|s| r3(s.took_s));
    eprintln!(
        "[{n}] agent RSS {:.1} MB (HWM {:.1} MB); agent-reported first full sync {:?} s",
        rss_settled.unwrap_or(f64::NAN) / 1024.0,
        hwm_settled.unwrap_or(f64::NAN) / 1024.0,
        first_took
    );

    // Endpoint changes.
    let budget_start = Instant::now();
    let mut lat_ms = Vec::new();
    let mut rounds = Vec::new();
    let mut change_probe_ms = Vec::new();
    let mut verified = 0usize;
    let mut old_gone_same_read = 0usize;
    // ipvs: the old endpoint's state when the new one was first seen, and once retired.
    let mut ipvs_old_first: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut ipvs_old_final: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut ipvs_retired_ms = Vec::new();
    let mut last_done = Instant::now();
    for k in 0..ctx.changes {
        if budget_start.elapsed() > ctx.change_budget {
            eprintln!(
                "[{n}] change budget of {:?} used up after {k} rounds",
                ctx.change_budget
            );
            break;
        }
        let i = (k * 7919 + 17) % n;
        let name = format!("{PREFIX}{i}");
        let chain = chain_of[i].clone();
        let e = k % ctx.eps;
        let new_ip = change_ip(k);
        let mut s = slices.get(&format!("{name}-1")).await?;
        let old_ip = s.endpoints[e].addresses[0].clone();
        s.endpoints[e].addresses = vec![new_ip.clone()];
        let wait = ctx.spacing.saturating_sub(last_done.elapsed());
        tokio::time::sleep(wait).await;
        slices
            .replace(&format!("{name}-1"), &PostParams::default(), &s)
            .await
            .with_context(|| format!("updating {name}-1"))?;
        let t0 = Instant::now();
        let (needle, old_needle) = match mode {
            Mode::Iptables => (
                format!("-> {new_ip}:{TARGET_PORT}\""),
                format!("-> {old_ip}:{TARGET_PORT}\""),
            ),
            Mode::Nftables | Mode::Ebpf | Mode::Ipvs => (
                format!("{new_ip}:{TARGET_PORT}\n"),
                format!("{old_ip}:{TARGET_PORT}\n"),
            ),
        };
        // ipvs: the last dump (every destination, weighted or not).
        let mut ipvs_last: Vec<Destination> = Vec::new();
        let (text, seen) = loop {
            let (text, took) = match mode {
                Mode::Iptables => ipt_list("nat", &chain),
                Mode::Nftables => {
                    let (eps, took) = nft_slots(&mut sock, vip4[i], ctx.eps);
                    let text: String = eps.iter().map(|a| format!("{a}\n")).collect();
                    (text, took)
                }
                Mode::Ebpf => {
                    let t = Instant::now();
                    let eps = maps.as_ref().context("maps")?.endpoints(vip4[i], 80)?;
                    let text: String = eps.iter().map(|a| format!("{a}\n")).collect();
                    (text, t.elapsed())
                }
                Mode::Ipvs => {
                    let (d, took) = ipvs_dests(ipvs.as_mut().context("ipvs client")?, vip4[i]);
                    let text = weighted(&d);
                    ipvs_last = d;
                    (text, took)
                }
            };
            change_probe_ms.push(took.as_secs_f64() * 1e3);
            if text.contains(&needle) {
                break (text, t0.elapsed());
            }
            if t0.elapsed() > ctx.change_timeout {
                bail!(
                    "change {k}: {new_ip} not programmed for {name} after {:?}",
                    ctx.change_timeout
                );
            }
            // Back-to-back probes for the first 200 ms; then leave the cores to the agent.
            if t0.elapsed() > Duration::from_millis(200) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        last_done = Instant::now();
        let ms = seen.as_secs_f64() * 1e3;
        lat_ms.push(ms);
        let old_gone = !text.contains(&old_needle);
        old_gone_same_read += usize::from(old_gone);
        // ipvs: removed, drained or (the new destination is added before the old one is
        // retired) still weighted; in that last case, until it is retired.
        let mut ipvs_round = Value::Null;
        if mode == Mode::Ipvs {
            let first = ipvs_old_state(&ipvs_last, &old_ip);
            let mut state = first;
            let mut retired_ms = (first != "still weighted").then_some(ms);
            while state == "still weighted" && t0.elapsed() < ctx.change_timeout {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let (d, _) = ipvs_dests(ipvs.as_mut().context("ipvs client")?, vip4[i]);
                state = ipvs_old_state(&d, &old_ip);
                if state != "still weighted" {
                    retired_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            *ipvs_old_first.entry(first).or_default() += 1;
            *ipvs_old_final.entry(state).or_default() += 1;
            ipvs_retired_ms.extend(retired_ms);
            ipvs_round = json!({
                "old_endpoint_when_new_seen": first,
                "old_endpoint_final": state,
                "old_retired_ms": retired_ms.map(r3),
                "destinations_when_new_seen": ipvs_last.iter().map(|d| format!("{} weight {}", d.socket_addr(), d.weight)).collect::<Vec<_>>(),
            });
        }
        // The rule naming the new endpoint DNATs to it (nftables: the service's verdict picks
        // among its slots).
        let dnat = match mode {
            Mode::Iptables => text
                .lines()
                .find(|l| l.contains(&needle))
                .is_some_and(|l| l.contains(&format!("--to-destination {new_ip}:{TARGET_PORT}"))),
            // Every slot holds an endpoint and the front end dispatches (its chain is checked
            // once below).
            Mode::Nftables => text.lines().count() == ctx.eps && programmed_now(&mut sock, i).0,
            // slot 0's count is E and every slot names a backend.
            Mode::Ebpf => text.lines().count() == ctx.eps,
            // E weighted destinations, the new one NAT-forwarded.
            Mode::Ipvs => {
                text.lines().count() == ctx.eps
                    && ipvs_last.iter().any(|d| {
                        d.socket_addr().to_string() == format!("{new_ip}:{TARGET_PORT}")
                            && d.fwd_method & sluice_proxy_ipvs::netlink::IP_VS_CONN_F_FWD_MASK
                                == sluice_proxy_ipvs::netlink::IP_VS_CONN_F_MASQ
                    })
            }
        };
        verified += usize::from(dnat);
        eprintln!(
            "[{n}] change {}/{}: {name} endpoint {old_ip} → {new_ip}: {ms:.1} ms (DNAT: {dnat})",
            k + 1,
            ctx.changes
        );
        rounds.push(json!({
            "service": name, "svc_chain": chain, "old_ip": old_ip, "new_ip": new_ip,
            "ms": r3(ms), "dnat_verified": dnat, "old_endpoint_gone_in_same_read": old_gone,
            "ipvs": ipvs_round,
        }));
    }
    let pick_chain = (mode == Mode::Nftables).then(|| {
        nft(&[
            "list",
            "chain",
            "ip",
            "sluice",
            &format!("pick-tcp-{}", ctx.eps),
        ])
        .0
        .lines()
        .map(str::trim)
        .find(|l| l.contains("dnat"))
        .unwrap_or_default()
        .to_string()
    });
    let rss_after = status_kb(agent, "VmRSS:");
    let hwm_after = status_kb(agent, "VmHWM:");
    let load_after = crate::loadavg();

    let (syncs, restores) = agent_syncs(&log, log_offset);
    let took = |full: bool| -> Vec<f64> {
        syncs
            .iter()
            .filter(|s| s.ok && s.full == Some(full))
            .map(|s| s.took_s * 1e3)
            .collect()
    };
    let (full_ms, partial_ms) = (took(true), took(false));
    let restore_bytes = |full: bool| -> Vec<f64> {
        restores
            .iter()
            .filter(|r| r.1 == full)
            .map(|r| r.0 as f64)
            .collect()
    };

    let bd = if ctx.breakdown && mode == Mode::Iptables {
        eprintln!("[{n}] breakdown: pausing the agent, timing iptables-save and a replay of the nat chains…");
        match breakdown(&ctx, agent) {
            Ok(v) => {
                eprintln!("[{n}] breakdown: {v}");
                v
            }
            Err(e) => json!({"error": format!("{e:#}")}),
        }
    } else {
        Value::Null
    };

    let (sync_target_s, change_target_ms, rss_target_mb) = mode.targets();
    let full_sync_ok = programmed_s <= sync_target_s;
    let s = sorted(&lat_ms);
    let p90 = percentile(&s, 0.9);
    let p99 = percentile(&s, 0.99);
    let max = s.last().copied().unwrap_or(f64::NAN);
    let rss_mb = rss_settled.map(|k| k / 1024.0);
    Ok(json!({
        "services": n,
        "endpoints_per_service": ctx.eps,
        "endpoints": n * ctx.eps,
        "node_netns": node_netns,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "objects": {
            "created": 2 * n,
            "create_s": r3(create.as_secs_f64()),
            "creates_per_s": (2.0 * n as f64 / create.as_secs_f64()).round(),
            "concurrency": ctx.concurrency,
            "api_list_services_s": r3(list_svcs_s),
            "api_list_endpointslices_s": r3(list_slices_s),
        },
        "first_full_sync": {
            "agent_start_to_programmed_s": r3(programmed_s),
            "target_s": sync_target_s,
            "met": full_sync_ok,
            "ebpf": ebpf_first_sync,
            "ipvs": ipvs_first_sync,
            "agent_reported_sync_took_s": first_took,
            "agent_reported_note": "the agent's own \"proxy sync\" took= of its first full sync; its timer starts before it takes the proxier lock, which the informers hold while the initial lists are applied",
            "lab_agent_restart_command_s": r3(restart_cmd_s),
            "probe": match mode {
                Mode::Iptables => "iptables -w -t nat -S SLUICE-SERVICES in the node netns every ~20 ms until it jumps to a SLUICE-SVC- chain for every service",
                Mode::Nftables => "netlink NFT_MSG_GETSETELEM of <last service's cluster IP> . tcp . 80 in service-ips in the node netns every ~20 ms until it exists (one transaction writes every service; all are then checked with nft list map service-ips)",
                Mode::Ebpf => "bpf(BPF_MAP_LOOKUP_ELEM) of slot 0 of <cluster IP>:80/tcp (socket scope) in the pinned sluice_svc_v1, services in index order, stopping at the first one missing or without count = E, every ~1 ms, until all N are there; then every service's E backends are checked once",
                Mode::Ipvs => "IPVS_CMD_GET_DEST dumps over generic netlink in the node netns (sluice-proxy-ipvs's IpvsClient), services in ascending address order, stopping at the first without E weighted destinations, every ~10 ms; then until all N cluster IPs are on sluice-ipvs0 (RTM_GETADDR); see first_full_sync.ipvs",
            },
            "probe_ms": stats_ms(&probes),
            "iptables_child_peak_rss_mb_sampled": mb(child_peak),
        },
        "agent_rss_mb": {
            "after_first_sync_settled": rss_mb.map(r3),
            "hwm_after_first_sync": mb(hwm_settled),
            "after_changes": mb(rss_after),
            "hwm_after_changes": mb(hwm_after),
            "target_mb": rss_target_mb,
            "met": rss_mb.map(|r| r <= rss_target_mb),
            "note": "VmRSS of the sluice-agent process; its iptables-restore/iptables-save children are separate processes (see first_full_sync.iptables_child_peak_rss_mb_sampled)",
        },
        "endpoint_change": {
            "rounds_requested": ctx.changes,
            "rounds_completed": lat_ms.len(),
            "spacing_s": ctx.spacing.as_secs_f64(),
            "budget_s": ctx.change_budget.as_secs_f64(),
            "t0": "the EndpointSlice PUT's response reaching the bench",
            "probe": match mode {
                Mode::Iptables => "iptables -w -t nat -S <the service's SLUICE-SVC- chain> back to back (after 200 ms: every ~10 ms) until a rule names the new endpoint, which is checked to DNAT to it",
                Mode::Nftables => "netlink NFT_MSG_GETSETELEM of <cluster IP> . 80 . 0 … E-1 in endpoints-tcp back to back (after 200 ms: every ~10 ms) until a slot holds the new endpoint (nft get element loads the whole table first: ~1.3 s at 50,000 slots); dnat_verified: all E slots filled and the front end in service-ips; pick_chain: the rule of pick-tcp-E",
                Mode::Ebpf => "bpf(BPF_MAP_LOOKUP_ELEM) of slot 0 of <cluster IP>:80/tcp, its slots 1..=count and their backends in the pinned maps, back to back (after 200 ms: every ~10 ms), until a backend is the new endpoint; dnat_verified: count = E and every slot names a backend",
                Mode::Ipvs => "IPVS_CMD_GET_DEST dump of <cluster IP>:80/tcp over generic netlink in the node netns, back to back (after 200 ms: every ~10 ms), until a destination with weight > 0 is the new endpoint; dnat_verified: E weighted destinations, the new one NAT (masq); ipvs: what the old endpoint was in that dump (removed, drained = weight 0, or still weighted, then polled every ~1 ms until retired)",
            },
            "ms": stats_ms(&lat_ms),
            "target_ms": change_target_ms,
            "p90_met": p90 <= change_target_ms,
            "p99_met": p99 <= change_target_ms,
            "max_met": max <= change_target_ms,
            "probe_ms": stats_ms(&change_probe_ms),
            "dnat_verified": verified,
            "pick_chain": pick_chain,
            "old_endpoint_gone_in_same_read": old_gone_same_read,
            "ipvs": (mode == Mode::Ipvs).then(|| json!({
                "old_endpoint_when_new_seen": ipvs_old_first,
                "old_endpoint_final": ipvs_old_final,
                "old_retired_ms": stats_ms(&ipvs_retired_ms),
                "note": "the agent adds a new destination before it retires the old one; an old TCP destination without connections is deleted, one with connections drained (weight 0) until they end; the made-up endpoints here never have connections",
            })),
            "rounds": rounds,
        },
        "agent_syncs_from_log": {
            "source": format!("\"proxy sync\" debug lines (RUST_LOG={AGENT_LOG}) from the restart to the end of the change rounds"),
            "lines": syncs.len(),
            "full_ok": full_ms.len(),
            "partial_ok": partial_ms.len(),
            "failed": syncs.iter().filter(|s| !s.ok).count(),
            "full_took_ms": stats_ms(&full_ms),
            "partial_took_ms": stats_ms(&partial_ms),
            "restore_bytes_full": stats_ms(&restore_bytes(true)),
            "restore_bytes_partial": stats_ms(&restore_bytes(false)),
            "restore_bytes_note": match mode {
                Mode::Ebpf => "ebpf: map writes (\"ebpf maps updated writes=\") per sync, not bytes",
                Mode::Ipvs => "ipvs: IPVS and address operations (\"ipvs full/partial sync ops=\") per sync, not bytes (the companion table's nft -f input is not logged)",
                _ => "bytes of iptables-restore / nft -f input",
            },
        },
        "breakdown": bd,
    }))
}

fn run_one(target: &Path, n: usize, o: &Opts) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let lab = Lab {
        bin: target.join("sluice-lab"),
        dir: tmp.path().join("lab"),
    };
    let t = Instant::now();
    let d = lab.d();
    let mut up = vec!["up", "--nodes", "1", "--proxy-mode", "none", "--dir", &d];
    up.extend(crate::pod_network::no_containerd_if_missing());
    lab.ok(&up)?;
    let up_s = t.elapsed().as_secs_f64();
    let cluster: Value = serde_json::from_slice(
        &std::fs::read(lab.dir.join("cluster.json")).context("reading cluster.json")?,
    )?;
    let node_netns = cluster["nodes"][0]["netns"]
        .as_str()
        .context("n1 netns")?
        .to_string();
    let ctx = Ctx {
        mode: o.mode,
        n,
        eps: o.endpoints,
        changes: o.changes,
        spacing: o.spacing,
        concurrency: o.concurrency,
        sync_timeout: o.sync_timeout,
        change_timeout: o.change_timeout,
        change_budget: o.change_budget,
        breakdown: o.breakdown,
        lab_bin: lab.bin.clone(),
        dir: lab.dir.canonicalize()?,
        // The API client runs inside n1's namespace: the in-lab kubeconfig (172.31.0.1:6443).
        kubeconfig: PathBuf::from(cluster["labKubeconfig"].as_str().context("labKubeconfig")?),
        lab_netns: cluster["labNetns"]
            .as_str()
            .context("labNetns")?
            .to_string(),
    };
    eprintln!("[{n}] lab up in {up_s:.1} s (node netns {node_netns})");
    let ns = node_netns.clone();
    let res = in_netns(&node_netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure(ctx, ns))
    });
    if res.is_err() {
        // Keep the agent's log for the post-mortem.
        let log = lab.dir.join("logs/agent-n1.log");
        let keep = std::env::temp_dir().join(format!("sluice-bench-scale-{n}-agent.log"));
        if std::fs::copy(&log, &keep).is_ok() {
            eprintln!("[{n}] agent log kept at {}", keep.display());
        }
    }
    lab.down()?;
    let mut v = res?;
    v["lab_up_s"] = json!(r3(up_s));
    Ok(v)
}

pub fn run(o: Opts) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("scale needs root (the lab makes network namespaces)");
    }
    if o.services.is_empty() || o.services.contains(&0) || o.endpoints == 0 {
        bail!("--services needs positive counts and --endpoints at least 1");
    }
    if o.services.iter().any(|&n| n * o.endpoints > 210 * 250) {
        bail!("at most 52,500 endpoints (10.244.0.1 … 10.244.209.250)");
    }
    let target = sluice_tests::target_dir();
    for b in ["sluice-lab", "sluice-control", "sluice-agent", "sluice-cni"] {
        if !target.join(b).exists() {
            bail!(
                "{} is missing: cargo build --release -p sluice-bench -p sluice-agent -p sluice-control -p sluice-lab -p sluice-cni",
                target.join(b).display()
            );
        }
    }
    let (tool_name, tool_bin) = match o.mode {
        Mode::Iptables => ("iptables", tool("")),
        Mode::Nftables => ("nft", "nft".to_string()),
        Mode::Ebpf => ("bpf", String::new()),
        Mode::Ipvs => ("ipvs", String::new()),
    };
    let tool_version = if o.mode == Mode::Ebpf {
        "bpf(2) map lookups on the pins (no tool)".to_string()
    } else if o.mode == Mode::Ipvs {
        // In this (the host's) netns: the kernel's IPVS, read as the probes read it.
        let info = IpvsClient::connect()
            .and_then(|mut c| c.info())
            .context("--mode ipvs needs a kernel with IPVS (this one has none: `sluice-bench vm` runs the ipvs mode in a VM with Debian's 6.1 kernel)")?;
        format!(
            "IPVS {} (connection table {}), read over generic netlink (sluice-proxy-ipvs IpvsClient, no ipvsadm)",
            info.version_string(),
            info.conn_tab_size
        )
    } else {
        Command::new(&tool_bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .with_context(|| format!("{tool_bin} not found"))?
    };
    let mode = o.mode.name();
    let flags = match o.mode {
        Mode::Iptables => format!("as sluice-lab runs it: --proxy-mode iptables --min-sync-period 200ms (lab), --sync-period 30s and --full-sync-period 1h (defaults), --iptables-backend {} (SLUICE_BENCH_IPTABLES_BACKEND)", backend()),
        Mode::Nftables => "as sluice-lab runs it: --proxy-mode nftables --min-sync-period 200ms (lab), --sync-period 30s and --full-sync-period 1h (defaults)".to_string(),
        Mode::Ebpf => "as sluice-lab runs it: --proxy-mode ebpf --cgroup-root /<lab>/n1 --bpf-dir <lab dir>/bpf --min-sync-period 200ms (lab), --sync-period 30s and --full-sync-period 1h (defaults)".to_string(),
        Mode::Ipvs => "as sluice-lab runs it: --proxy-mode ipvs --min-sync-period 200ms (lab), --sync-period 30s and --full-sync-period 1h (defaults), --ipvs-scheduler rr (default)".to_string(),
    };
    let (sync_target_s, change_target_ms, rss_target_mb) = o.mode.targets();
    let mut runs = Vec::new();
    let mut result = json!({});
    for &n in &o.services {
        runs.push(run_one(&target, n, &o)?);
        result = json!({
            "benchmark": "scale",
            "proxy_mode": mode,
            "iptables_backend": (o.mode == Mode::Iptables).then(backend),
            "kernel": crate::kernel(),
            "cores": crate::cores(),
            tool_name: tool_version,
            "binaries_profile": target.file_name().map(|p| p.to_string_lossy().to_string()),
            "agent_flags": flags,
            "method": format!("per N a fresh 1-node sluice-lab (proxy mode none); N selector-less ClusterIP services + one EndpointSlice each created first; then the agent is restarted in {mode} mode and the kernel ({tool_name} in the node netns) is polled; see bench/src/scale.rs"),
            "targets": {"full_sync_10000_s": sync_target_s, "endpoint_change_ms": change_target_ms, "agent_rss_10000_mb": rss_target_mb},
            "runs": runs,
        });
        if let Some(p) = &o.out {
            std::fs::write(p, serde_json::to_string_pretty(&result)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
        }
    }
    summary(&runs, o.mode);
    crate::emit(&result, o.out.as_deref())
}

fn summary(runs: &[Value], mode: Mode) {
    eprintln!();
    eprintln!(
        "{:>8} | {:>16} | {:>14} | {:>26} | {:>12} | {:>10}",
        "services",
        "first sync (s)",
        "agent says (s)",
        "endpoint change ms p50/p99/max",
        "rounds",
        "agent RSS MB"
    );
    for r in runs {
        let c = &r["endpoint_change"]["ms"];
        eprintln!(
            "{:>8} | {:>16} | {:>14} | {:>26} | {:>12} | {:>10}",
            r["services"],
            r["first_full_sync"]["agent_start_to_programmed_s"],
            r["first_full_sync"]["agent_reported_sync_took_s"],
            format!("{}/{}/{}", c["p50"], c["p99"], c["max"]),
            format!(
                "{}/{}",
                r["endpoint_change"]["rounds_completed"], r["endpoint_change"]["rounds_requested"]
            ),
            r["agent_rss_mb"]["after_first_sync_settled"],
        );
    }
    let (sync_s, change_ms, rss_mb) = mode.targets();
    eprintln!("targets ({}): first full sync at 10,000 ≤ {sync_s} s; endpoint change ≤ {change_ms} ms; agent RSS at 10,000 ≤ {rss_mb} MB", mode.name());
}
