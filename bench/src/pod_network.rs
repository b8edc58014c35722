//! `pod-network`: pod-to-pod TCP_RR and TCP_STREAM (netperf) in a 2-node `sluice-lab`, same
//! node against across nodes.
//!
//! `sluice-lab up --nodes 2` in a temporary directory; `netserver` pods on n1 and n2 and a
//! client pod on n1; then, for each round, the four runs (RR/STREAM × same-node/cross-node)
//! in an order that rotates from round to round, each `netperf -l SECONDS` from the client
//! pod. Reports the median and the spread (min/max) of each, and cross ÷ same. The lab is
//! brought down at the end, also on error (drop guard).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{percentile, r3, sorted};

/// Brings the lab down on drop if it is (still) up.
pub(crate) struct Lab {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
}

/// `--no-containerd` for `sluice-lab up` when this machine has no containerd (the VM of
/// `sluice-bench vm`): `service` and `scale` use process pods only, and with containerd
/// installed they keep the lab's default (a containerd per node) that their recorded runs had.
pub(crate) fn no_containerd_if_missing() -> Option<&'static str> {
    (!std::path::Path::new("/usr/bin/containerd").exists()).then_some("--no-containerd")
}

impl Lab {
    pub(crate) fn cmd(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.bin)
            .args(args)
            .output()
            .with_context(|| format!("running sluice-lab {}", args.join(" ")))
    }

    pub(crate) fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cmd(args)?;
        if !o.status.success() {
            bail!(
                "sluice-lab {} failed: {} {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }

    pub(crate) fn d(&self) -> String {
        self.dir.to_string_lossy().to_string()
    }

    /// Creates a pod and returns its IP (parsed from `ns/name on node: IP`).
    pub(crate) fn pod(&self, node: &str, name: &str, cmd: &[&str]) -> anyhow::Result<String> {
        self.pod_labelled(node, name, "", cmd)
    }

    /// Like [`Lab::pod`] with labels (`k=v,k2=v2`).
    pub(crate) fn pod_labelled(
        &self,
        node: &str,
        name: &str,
        labels: &str,
        cmd: &[&str],
    ) -> anyhow::Result<String> {
        let d = self.d();
        let mut args = vec![
            "pod", "create", "--dir", &d, "--node", node, "--name", name, "--labels", labels, "--",
        ];
        args.extend_from_slice(cmd);
        let out = self.ok(&args)?;
        let ip = out
            .lines()
            .find_map(|l| l.rsplit_once(": ").map(|(_, ip)| ip.trim().to_string()))
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .with_context(|| format!("no pod IP in {out:?}"))?;
        Ok(ip)
    }

    pub(crate) fn exec(&self, pod: &str, cmd: &[&str]) -> anyhow::Result<Output> {
        let d = self.d();
        let pod = format!("default/{pod}");
        let mut args = vec!["exec", "--dir", &d, "--pod", &pod, "--"];
        args.extend_from_slice(cmd);
        self.cmd(&args)
    }

    pub(crate) fn down(&self) -> anyhow::Result<()> {
        if self.dir.join("lab.json").exists() {
            self.ok(&["down", "--dir", &self.d()])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("lab down: {e:#}");
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    test: &'static str,
    path: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        test: "TCP_RR",
        path: "same_node",
    },
    Case {
        test: "TCP_RR",
        path: "cross_node",
    },
    Case {
        test: "TCP_STREAM",
        path: "same_node",
    },
    Case {
        test: "TCP_STREAM",
        path: "cross_node",
    },
];

/// One netperf run's numbers: throughput (trans/s or 10^6 bit/s) and, for RR, latency (µs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) throughput: f64,
    pub(crate) mean_latency_us: Option<f64>,
    pub(crate) p99_latency_us: Option<f64>,
}

/// The fields of the last CSV line of netperf's `-o …` output as numbers (`None` where a field
/// is missing or not a number), and that line.
pub(crate) fn netperf_csv(stdout: &str) -> anyhow::Result<(&str, Vec<Option<f64>>)> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(','))
        .with_context(|| format!("netperf output: {stdout:?}"))?;
    let fields = line.split(',').map(|v| v.trim().parse().ok()).collect();
    Ok((line, fields))
}

/// Reads netperf's `-o THROUGHPUT,THROUGHPUT_UNITS[,MEAN_LATENCY,P99_LATENCY]` output.
pub(crate) fn parse_netperf(stdout: &str) -> anyhow::Result<Sample> {
    let (line, f) = netperf_csv(stdout)?;
    let num = |i: usize| f.get(i).copied().flatten();
    Ok(Sample {
        throughput: num(0).with_context(|| format!("netperf output: {line:?}"))?,
        mean_latency_us: num(2),
        p99_latency_us: num(3),
    })
}

fn netperf(lab: &Lab, server: &str, test: &str, seconds: u64) -> anyhow::Result<Sample> {
    let secs = seconds.to_string();
    let mut args = vec!["netperf", "-H", server, "-t", test, "-l", &secs, "-P", "0"];
    let sel = if test == "TCP_RR" {
        args.push("-j");
        "THROUGHPUT,THROUGHPUT_UNITS,MEAN_LATENCY,P99_LATENCY"
    } else {
        "THROUGHPUT,THROUGHPUT_UNITS"
    };
    args.extend_from_slice(&["--", "-o", sel]);
    let o = lab.exec("client", &args)?;
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    if !o.status.success() {
        bail!(
            "netperf {test} to {server}: {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    parse_netperf(&stdout)
}

pub(crate) fn spread(v: &[f64]) -> Value {
    let s = sorted(v);
    json!({
        "median": percentile(&s, 0.5),
        "min": s.first().copied().unwrap_or(f64::NAN),
        "max": s.last().copied().unwrap_or(f64::NAN),
        "samples": v,
    })
}

pub(crate) fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v), 0.5)
}

pub fn run(rounds: usize, seconds: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("pod-network needs root (the lab makes network namespaces)");
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
    let netserver = which("netserver")?;
    let netperf_bin = which("netperf")?;
    let tmp = tempfile::tempdir()?;
    let lab = Lab {
        bin: target.join("sluice-lab"),
        dir: tmp.path().join("lab"),
    };
    let load_before = crate::loadavg();
    let t = Instant::now();
    lab.ok(&["up", "--nodes", "2", "--dir", &lab.d()])?;
    let lab_up_s = t.elapsed().as_secs_f64();
    let cluster: Value = serde_json::from_slice(
        &std::fs::read(lab.dir.join("cluster.json")).context("reading cluster.json")?,
    )?;
    eprintln!("lab up in {lab_up_s:.1} s");

    // `-D`: stay in the foreground (the lab supervises the pod's process); `-4`: IPv4 only.
    let ns = netserver.to_string_lossy().to_string();
    let srv = ["-D", "-4", "-p", "12865"];
    let mut cmd = vec![ns.as_str()];
    cmd.extend_from_slice(&srv);
    let same_ip = lab.pod("n1", "netserver-n1", &cmd)?;
    let cross_ip = lab.pod("n2", "netserver-n2", &cmd)?;
    let client_ip = lab.pod("n1", "client", &["/bin/busybox", "sleep", "86400"])?;
    eprintln!("client {client_ip} (n1) → same-node server {same_ip}, cross-node server {cross_ip}");
    let server = |path: &str| {
        if path == "same_node" {
            &same_ip
        } else {
            &cross_ip
        }
    };

    // Wait for both servers, warming both paths (1 s runs, not recorded).
    for ip in [&same_ip, &cross_ip] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match netperf(&lab, ip, "TCP_RR", 1) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e.context("netserver not up")),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); CASES.len()];
    let mut orders = Vec::new();
    for r in 0..rounds {
        // Rotate the order so no case always runs first or after the same neighbour.
        let order: Vec<usize> = (0..CASES.len()).map(|k| (k + r) % CASES.len()).collect();
        orders.push(
            order
                .iter()
                .map(|&k| format!("{}/{}", CASES[k].test, CASES[k].path))
                .collect::<Vec<_>>(),
        );
        for &k in &order {
            let c = CASES[k];
            let s = netperf(&lab, server(c.path), c.test, seconds)?;
            eprintln!(
                "round {}/{rounds} {} {}: {:.1}",
                r + 1,
                c.test,
                c.path,
                s.throughput
            );
            samples[k].push(s);
        }
    }
    let load_after = crate::loadavg();

    let mut results = json!({});
    for (k, c) in CASES.iter().enumerate() {
        let tp: Vec<f64> = samples[k].iter().map(|s| s.throughput).collect();
        let mut entry = json!({
            "server": server(c.path),
            "throughput": spread(&tp),
            "unit": if c.test == "TCP_RR" { "transactions/s" } else { "10^6 bit/s" },
        });
        if c.test == "TCP_RR" {
            let mean: Vec<f64> = samples[k]
                .iter()
                .filter_map(|s| s.mean_latency_us)
                .collect();
            let p99: Vec<f64> = samples[k].iter().filter_map(|s| s.p99_latency_us).collect();
            entry["mean_latency_us"] = spread(&mean);
            entry["p99_latency_us"] = spread(&p99);
        }
        results[c.test][c.path] = entry;
    }
    // cross ÷ same: of the medians, and the spread of the per-round ratios.
    let ratio = |test: &str| {
        let same: Vec<f64> = samples[CASES
            .iter()
            .position(|c| c.test == test && c.path == "same_node")
            .expect("case")]
        .iter()
        .map(|s| s.throughput)
        .collect();
        let cross: Vec<f64> = samples[CASES
            .iter()
            .position(|c| c.test == test && c.path == "cross_node")
            .expect("case")]
        .iter()
        .map(|s| s.throughput)
        .collect();
        let per_round: Vec<f64> = cross.iter().zip(&same).map(|(c, s)| c / s).collect();
        let s = sorted(&per_round);
        json!({
            "of_medians": r3(median(&cross) / median(&same)),
            "per_round_median": r3(percentile(&s, 0.5)),
            "per_round_min": r3(s.first().copied().unwrap_or(f64::NAN)),
            "per_round_max": r3(s.last().copied().unwrap_or(f64::NAN)),
        })
    };
    let netperf_version = Command::new(&netperf_bin)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let result = json!({
        "benchmark": "pod-network",
        "kernel": crate::kernel(),
        "cores": crate::cores(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "netperf": netperf_version,
        "lab": {
            "nodes": cluster["nodes"].as_array().map(|n| n.iter().map(|n| json!({"name": n["name"], "podCIDR": n["podCIDR"]})).collect::<Vec<_>>()),
            "up_s": r3(lab_up_s),
            "binaries_profile": target.file_name().map(|p| p.to_string_lossy().to_string()),
        },
        "pods": {"client": {"node": "n1", "ip": client_ip}, "server_same_node": {"node": "n1", "ip": same_ip}, "server_cross_node": {"node": "n2", "ip": cross_ip}},
        "method": "netperf from the client pod (sluice-lab exec) to netserver pods; per round the 4 runs in a rotating order; one stream each; RR with -j for latency; pod-to-pod paths have no NAT, conntrack not flushed; each server has its own IP so same- and cross-node tuples never collide",
        "rounds": rounds,
        "seconds_per_run": seconds,
        "round_orders": orders,
        "results": results,
        "ratio_cross_over_same": {
            "TCP_RR_trans_per_s": ratio("TCP_RR"),
            "TCP_STREAM_throughput": ratio("TCP_STREAM"),
        },
    });
    lab.down()?;
    drop(lab);
    crate::emit(&result, out.as_deref())?;
    Ok(())
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .or_else(|| {
            let p = Path::new("/usr/bin").join(name);
            p.exists().then_some(p)
        })
        .with_context(|| format!("{name} not found (Debian: netperf)"))
}
