//! `cni-latency`: CNI ADD and DEL latency of `sluice-cni` against the reference `bridge` +
//! `host-local` plugins (Debian's `/usr/lib/cni`, cniVersion 1.0.0).
//!
//! Everything happens in namespaces made here: one "host" netns per implementation (the
//! plugin runs in it and makes its bridge there) and one container netns per sandbox and
//! implementation, all named `sb-cni-<pid>-…` and deleted on drop; the root namespace is
//! never touched. The plugin is exec'd from a thread that has `setns()`'d into the host
//! netns, so no `ip netns exec` is inside the measured interval (its cost is measured apart
//! and reported). The two implementations are interleaved sandbox by sandbox (the order
//! alternates) inside each round — ADD for all sandboxes, then DEL (with `prevResult`, as
//! containerd sends it) for all — so both see the same machine state and the same noise.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{percentile, r3, sorted};

const REF_DIR: &str = "/usr/lib/cni";
const BRIDGE: &str = "cnibench0";

/// A network namespace made by the benchmark, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Netns> {
        let o = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !o.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let ns = Netns { name };
        let o = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .output()?;
        if !o.status.success() {
            bail!(
                "lo up in {}: {}",
                ns.name,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in a network namespace; jobs sent to it run (and exec children) there.
struct NsThread {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl NsThread {
    fn spawn(ns_path: &str) -> anyhow::Result<NsThread> {
        let f = File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            // Only this thread moves; children it spawns inherit its namespace.
            let r = nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = r.is_ok();
            let _ = ready_tx.send(r.map_err(|e| e.to_string()));
            drop(f);
            if ok {
                for job in rx {
                    job();
                }
            }
        });
        ready_rx
            .recv()
            .context("namespace thread died")?
            .map_err(|e| anyhow::anyhow!("setns({ns_path}): {e}"))?;
        Ok(NsThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .context("namespace thread stopped")?
            .send(Box::new(move || {
                let _ = rtx.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("namespace thread stopped"))?;
        rrx.recv().context("namespace thread dropped a job")
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Ours,
    Reference,
}

impl Impl {
    fn key(self) -> &'static str {
        match self {
            Impl::Ours => "sluice-cni",
            Impl::Reference => "reference-bridge",
        }
    }
}

/// Runs a plugin (from the calling thread's namespace) and times spawn → exit.
fn invoke(binary: &Path, cmd: &str, stdin: &[u8], env: &[(String, String)]) -> (Duration, Output) {
    let mut c = Command::new(binary);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_PATH", REF_DIR)
        .env("CNI_COMMAND", cmd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = (|| {
        let mut child = c.spawn()?;
        child.stdin.take().expect("stdin").write_all(stdin)?;
        child.wait_with_output()
    })();
    let elapsed = t.elapsed();
    let out = out.unwrap_or_else(|e| Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: e.to_string().into_bytes(),
    });
    (elapsed, out)
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}, stdout {}, stderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// One implementation: its host netns (and a thread in it), lease dir, sandboxes and samples.
/// Field order is drop order: the thread leaves the namespace before it is deleted.
struct Side {
    imp: Impl,
    thread: NsThread,
    binary: PathBuf,
    conf: Value,
    host: Netns,
    ctrs: Vec<Netns>,
    results: Vec<Value>,
    _data: tempfile::TempDir,
    adds: Vec<f64>,
    dels: Vec<f64>,
    round_adds: Vec<Vec<f64>>,
    round_dels: Vec<Vec<f64>>,
}

impl Side {
    fn new(imp: Impl, tag: &str, sandboxes: usize, subnet: &str) -> anyhow::Result<Side> {
        let binary = match imp {
            Impl::Ours => sluice_tests::target_dir().join("sluice-cni"),
            Impl::Reference => Path::new(REF_DIR).join("bridge"),
        };
        if !binary.exists() {
            bail!(
                "{} is missing (cargo build --release --workspace --bins; Debian: containernetworking-plugins)",
                binary.display()
            );
        }
        let short = match imp {
            Impl::Ours => "o",
            Impl::Reference => "r",
        };
        let host = Netns::create(format!("{tag}-{short}-host"))?;
        let ctrs = (0..sandboxes)
            .map(|i| Netns::create(format!("{tag}-{short}-{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data = tempfile::tempdir()?;
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": match imp { Impl::Ours => "sluice-cni", Impl::Reference => "bridge" },
            "bridge": BRIDGE,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": data.path(),
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        });
        let thread = NsThread::spawn(&host.path())?;
        Ok(Side {
            imp,
            thread,
            binary,
            conf,
            host,
            ctrs,
            results: vec![Value::Null; sandboxes],
            _data: data,
            adds: Vec::new(),
            dels: Vec::new(),
            round_adds: Vec::new(),
            round_dels: Vec::new(),
        })
    }

    /// Runs one plugin command in the host netns; returns (ms, parsed stdout).
    fn call(&self, cmd: &str, conf: &Value, netns: &str, id: &str) -> anyhow::Result<(f64, Value)> {
        let binary = self.binary.clone();
        let stdin = conf.to_string().into_bytes();
        let env = vec![
            ("CNI_CONTAINERID".to_string(), id.to_string()),
            ("CNI_NETNS".to_string(), netns.to_string()),
            ("CNI_IFNAME".to_string(), "eth0".to_string()),
        ];
        let cmd_s = cmd.to_string();
        let (d, out) = self
            .thread
            .run(move || invoke(&binary, &cmd_s, &stdin, &env))?;
        if !out.status.success() {
            bail!("{:?} {cmd} {id}: {}", self.imp, show(&out));
        }
        let v = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!("{:?} {cmd}: stdout is not JSON: {}", self.imp, show(&out))
            })?
        };
        Ok((d.as_secs_f64() * 1e3, v))
    }

    fn add(&mut self, i: usize, id: &str) -> anyhow::Result<f64> {
        let p = self.ctrs[i].path();
        let (ms, res) = self.call("ADD", &self.conf, &p, id)?;
        if res
            .pointer("/ips/0/address")
            .and_then(Value::as_str)
            .is_none()
        {
            bail!("{:?} ADD {id}: result without an address: {res}", self.imp);
        }
        self.results[i] = res;
        Ok(ms)
    }

    fn del(&mut self, i: usize, id: &str) -> anyhow::Result<f64> {
        let mut conf = self.conf.clone();
        conf["prevResult"] = std::mem::take(&mut self.results[i]);
        let p = self.ctrs[i].path();
        let (ms, _) = self.call("DEL", &conf, &p, id)?;
        Ok(ms)
    }
}

fn stats(v: &[f64]) -> Value {
    let s = sorted(v);
    json!({
        "n": s.len(),
        "p50": r3(percentile(&s, 0.5)),
        "p99": r3(percentile(&s, 0.99)),
        "min": r3(s.first().copied().unwrap_or(f64::NAN)),
        "max": r3(s.last().copied().unwrap_or(f64::NAN)),
        "mean": r3(s.iter().sum::<f64>() / s.len().max(1) as f64),
    })
}

fn p50(v: &[f64]) -> f64 {
    percentile(&sorted(v), 0.5)
}

fn p99(v: &[f64]) -> f64 {
    percentile(&sorted(v), 0.99)
}

/// Times `ip netns exec HOST true`, a bare fork/exec of `true` from the in-netns thread, and
/// each plugin's `VERSION` (process start-up, no networking), interleaved.
fn overheads(sides: &[Side], iterations: usize) -> anyhow::Result<Value> {
    let true_bin = PathBuf::from(
        ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("no `true` binary")?,
    );
    let mut ipexec = Vec::new();
    let mut bare = Vec::new();
    let mut version: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for _ in 0..iterations {
        let t = Instant::now();
        let st = Command::new("ip")
            .args(["netns", "exec", &sides[0].host.name, "true"])
            .status()?;
        ipexec.push(t.elapsed().as_secs_f64() * 1e3);
        if !st.success() {
            bail!("ip netns exec true failed");
        }
        let tb = true_bin.clone();
        let (d, _) = sides[0].thread.run(move || invoke(&tb, "", b"", &[]))?;
        bare.push(d.as_secs_f64() * 1e3);
        for (k, s) in sides.iter().enumerate() {
            let b = s.binary.clone();
            let stdin = br#"{"cniVersion":"1.0.0"}"#.to_vec();
            let (d, out) = s.thread.run(move || invoke(&b, "VERSION", &stdin, &[]))?;
            if !out.status.success() {
                bail!("{:?} VERSION: {}", s.imp, show(&out));
            }
            version[k].push(d.as_secs_f64() * 1e3);
        }
    }
    let mut v = json!({
        "iterations": iterations,
        "ip_netns_exec_true_ms": stats(&ipexec),
        "exec_true_from_setns_thread_ms": stats(&bare),
        "ip_netns_exec_added_cost_p50_ms": r3(p50(&ipexec) - p50(&bare)),
    });
    for (k, s) in sides.iter().enumerate() {
        v[format!("{}_VERSION_ms", s.imp.key())] = stats(&version[k]);
    }
    Ok(v)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn run(sandboxes: usize, rounds: usize, out: Option<PathBuf>) -> anyhow::Result<()> {
    if !is_root() {
        bail!("cni-latency needs root (network namespaces, CAP_NET_ADMIN)");
    }
    if sandboxes == 0 || rounds == 0 {
        bail!("--sandboxes and --rounds must be at least 1");
    }
    let root_had_bridge = Command::new("ip")
        .args(["link", "show", BRIDGE])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()?
        .success();
    let load_before = crate::loadavg();
    let tag = format!("sb-cni-{}", std::process::id());
    eprintln!(
        "creating 2 host + {} container namespaces ({tag}-*)…",
        2 * sandboxes
    );
    let mut sides = vec![
        Side::new(Impl::Ours, &tag, sandboxes, "10.91.0.0/16")?,
        Side::new(Impl::Reference, &tag, sandboxes, "10.92.0.0/16")?,
    ];

    // Cold start: the first ADD makes the bridge (and pulls the binary into the page cache).
    let mut cold = json!({});
    for s in sides.iter_mut() {
        let add = s.add(0, "warmup")?;
        let del = s.del(0, "warmup")?;
        cold[s.imp.key()] = json!({"first_add_ms": r3(add), "first_del_ms": r3(del)});
        // The plugin really ran in the benchmark's host netns.
        let o = Command::new("ip")
            .args(["-n", &s.host.name, "link", "show", BRIDGE])
            .output()?;
        if !o.status.success() {
            bail!("{:?}: no {BRIDGE} in {} after ADD", s.imp, s.host.name);
        }
    }
    if !root_had_bridge
        && Command::new("ip")
            .args(["link", "show", BRIDGE])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()?
            .success()
    {
        bail!("{BRIDGE} appeared in the root namespace: the plugin did not run in the host netns");
    }

    let t0 = Instant::now();
    for r in 0..rounds {
        for s in sides.iter_mut() {
            s.round_adds.push(Vec::new());
            s.round_dels.push(Vec::new());
        }
        for phase in ["ADD", "DEL"] {
            for i in 0..sandboxes {
                // Alternate which implementation goes first.
                let order = if (i + r) % 2 == 0 { [0, 1] } else { [1, 0] };
                for k in order {
                    let s = &mut sides[k];
                    let id = format!("r{r}s{i}");
                    if phase == "ADD" {
                        let ms = s.add(i, &id)?;
                        s.adds.push(ms);
                        s.round_adds[r].push(ms);
                    } else {
                        let ms = s.del(i, &id)?;
                        s.dels.push(ms);
                        s.round_dels[r].push(ms);
                    }
                }
            }
        }
        eprintln!(
            "round {}/{rounds}: ADD p50 ours {:.2} ms ref {:.2} ms; DEL p50 ours {:.2} ms ref {:.2} ms",
            r + 1,
            p50(&sides[0].round_adds[r]),
            p50(&sides[1].round_adds[r]),
            p50(&sides[0].round_dels[r]),
            p50(&sides[1].round_dels[r]),
        );
    }
    let wall = t0.elapsed().as_secs_f64();
    let over = overheads(&sides, 50)?;

    let (o, rf) = (&sides[0], &sides[1]);
    let per_round: Vec<Value> = (0..rounds)
        .map(|r| {
            json!({
                "add_p50_ms": {"ours": r3(p50(&o.round_adds[r])), "reference": r3(p50(&rf.round_adds[r]))},
                "del_p50_ms": {"ours": r3(p50(&o.round_dels[r])), "reference": r3(p50(&rf.round_dels[r]))},
                "add_p50_ratio": r3(p50(&o.round_adds[r]) / p50(&rf.round_adds[r])),
                "del_p50_ratio": r3(p50(&o.round_dels[r]) / p50(&rf.round_dels[r])),
            })
        })
        .collect();
    let round_ratios: Vec<f64> = per_round
        .iter()
        .filter_map(|r| r["add_p50_ratio"].as_f64())
        .collect();
    let add_ratio = p50(&o.adds) / p50(&rf.adds);
    let result = json!({
        "benchmark": "cni-latency",
        "kernel": crate::kernel(),
        "cores": crate::cores(),
        "loadavg_before": load_before,
        "loadavg_after": crate::loadavg(),
        "binaries": {
            "ours": o.binary,
            "reference": rf.binary,
            "ours_profile": sluice_tests::target_dir().file_name().map(|p| p.to_string_lossy().to_string()),
        },
        "config": {
            "cniVersion": "1.0.0",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipam": "host-local (reference: /usr/lib/cni/host-local exec'd by bridge; ours: built in)",
            "del_has_prevResult": true,
        },
        "method": "one host netns per implementation, one container netns per sandbox; plugin exec'd from a thread setns()'d into the host netns (no `ip netns exec` in the timing); per round: ADD for every sandbox, then DEL for every sandbox, implementations interleaved sandbox by sandbox with alternating order; time = spawn → exit, stdin config included",
        "sandboxes": sandboxes,
        "rounds": rounds,
        "invocations_per_impl": 2 * sandboxes * rounds,
        "wall_s": r3(wall),
        "cold": cold,
        "add_ms": {"ours": stats(&o.adds), "reference": stats(&rf.adds)},
        "del_ms": {"ours": stats(&o.dels), "reference": stats(&rf.dels)},
        "ratio_ours_over_reference": {
            "add_p50": r3(add_ratio),
            "add_p99": r3(p99(&o.adds) / p99(&rf.adds)),
            "del_p50": r3(p50(&o.dels) / p50(&rf.dels)),
            "del_p99": r3(p99(&o.dels) / p99(&rf.dels)),
            "add_p50_per_round_min": round_ratios.iter().copied().fold(f64::INFINITY, f64::min),
            "add_p50_per_round_max": round_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        },
        "target_add_p50_ratio_le_0_5": add_ratio <= 0.5,
        "per_round": per_round,
        "overheads": over,
    });
    crate::emit(&result, out.as_deref())?;
    drop(sides);
    Ok(())
}
