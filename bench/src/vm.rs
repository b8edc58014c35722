//! `vm`: the proxy modes side by side inside a VM with Debian's 6.1 kernel (the host's 6.18 has
//! no IPVS), in one command.
//!
//! On the host: boots a VM through [`sluice_tests::vm`] (qemu TCG, `-smp 1`, no network device;
//! docs/vm-tests.md) carrying the **release** binaries from `target/release` (`sluice-bench`
//! itself, `sluice-lab`, `sluice-control`, `sluice-agent`, `sluice-cni`) to `/vmtest/bin/`, the
//! preinstalled kubectl at its own versioned path, and `netperf`, `netserver`, `ss` and
//! `nsenter` at theirs. In the guest, one after the other:
//!
//! 1. `sluice-bench service --modes ipvs,iptables,nftables --tests TCP_CRR,TCP_RR --no-haproxy
//!    --rounds R --seconds S` (a fresh 2-node lab per mode, interleaved rounds; `service.rs`);
//! 2. `sluice-bench scale --mode M --services N --changes C --no-breakdown` for M in ipvs,
//!    iptables, nftables (a fresh 1-node lab each; `scale.rs`).
//!
//! Each step writes its JSON to a file in the guest; the guest script prints it as one line
//! (`SLUICE-BENCH-JSON <step> {…}`, newlines removed: JSON needs none) with the step's exit code
//! and duration (`SLUICE-BENCH-STEP`), on the serial port that the harness returns as the run's
//! output. The host parses those lines and writes one JSON file (default
//! `bench/results/vm-<date>.json`): the guest kernel, the VM settings and timings, per mode the
//! TCP_CRR and TCP_RR ClusterIP ÷ direct ratios (of the medians, and the per-round range), the
//! first full sync, the endpoint change latency and the agent's RSS, and every step's full JSON
//! under `raw`.
//!
//! Software emulation makes the absolute numbers meaningless (TCG runs 10–30× slower than the
//! host); the ratios and the relative programming times still compare the modes on one kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sluice_tests::vm::{self, Vm};

use crate::r3;

/// The workspace binaries the guest runs, all from `target/release`.
const BINARIES: [&str; 5] = [
    "sluice-bench",
    "sluice-lab",
    "sluice-control",
    "sluice-agent",
    "sluice-cni",
];
/// The cargo command that builds them.
const BUILD: &str =
    "cargo build --release -p sluice-bench -p sluice-lab -p sluice-agent -p sluice-control -p sluice-cni";
/// Host tools carried at the same path (netperf and netserver are in the base image too when
/// installed; carrying them makes the payload say what the run needs).
const TOOLS: [&str; 4] = [
    "/usr/bin/netperf",
    "/usr/bin/netserver",
    "/usr/bin/ss",
    "/usr/bin/nsenter",
];
/// Marker of a step's result line in the guest's output.
const STEP: &str = "SLUICE-BENCH-STEP";
/// Marker of a step's JSON line in the guest's output.
const JSON_LINE: &str = "SLUICE-BENCH-JSON";
/// Name of the run (and of its workdir, target/tmp/sluice-vm/<name>).
const RUN_NAME: &str = "sluice-bench-vm";

/// Options of `sluice-bench vm`.
pub struct Opts {
    pub modes: Vec<String>,
    pub rounds: usize,
    pub seconds: u64,
    pub services: usize,
    pub changes: usize,
    pub spacing_ms: u64,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub out: Option<PathBuf>,
}

/// `target/release`, whichever profile this binary was built with.
fn release_dir() -> PathBuf {
    let t = sluice_tests::target_dir();
    if t.ends_with("release") {
        t
    } else {
        t.parent().map(|p| p.join("release")).unwrap_or(t)
    }
}

fn first_line(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The guest's script: the steps, each followed by its result and JSON lines.
fn guest_script(o: &Opts) -> (String, Vec<(String, String)>) {
    let bench = "/vmtest/bin/sluice-bench";
    let mut steps = vec![(
        "service".to_string(),
        format!(
            "{bench} service --modes {} --tests TCP_CRR,TCP_RR --no-haproxy --rounds {} --seconds {}",
            o.modes.join(","),
            o.rounds,
            o.seconds
        ),
    )];
    for m in &o.modes {
        steps.push((
            format!("scale-{m}"),
            format!(
                "{bench} scale --mode {m} --services {} --changes {} --spacing-ms {} --no-breakdown",
                o.services, o.changes, o.spacing_ms
            ),
        ));
    }
    let mut s = String::from(
        "# sluice-bench vm: the guest's steps (bench/src/vm.rs).\n\
         cd /tmp\n\
         # Panics keep their backtrace; anyhow errors skip capturing one.\n\
         export RUST_LIB_BACKTRACE=0\n\
         echo \"SLUICE-BENCH-UNAME $(uname -r)\"\n\
         echo \"SLUICE-BENCH-NPROC $(nproc)\"\n\
         echo \"SLUICE-BENCH-MEMINFO $(grep MemTotal /proc/meminfo)\"\n\
         failed=0\n\
         step() {\n\
         \tname=$1; shift\n\
         \trm -f /tmp/$name.json\n\
         \tread -r t0 _ </proc/uptime\n\
         \techo \"SLUICE-BENCH-START $name: $*\"\n\
         \t# stdout (the JSON again) is dropped: the --out file has it; progress is on stderr.\n\
         \t\"$@\" --out /tmp/$name.json >/dev/null\n\
         \trc=$?\n\
         \tread -r t1 _ </proc/uptime\n\
         \t[ $rc -eq 0 ] || failed=1\n",
    );
    s.push_str(&format!(
        "\techo \"{STEP} $name rc=$rc start=$t0 end=$t1 $(grep MemAvailable /proc/meminfo | tr -s ' ')\"\n\
         \tif [ -s /tmp/$name.json ]; then printf '{JSON_LINE} %s ' \"$name\"; tr -d '\\n' </tmp/$name.json; echo; fi\n\
         }}\n"
    ));
    for (name, cmd) in &steps {
        s.push_str(&format!("step {name} {cmd}\n"));
    }
    s.push_str("exit $failed\n");
    (s, steps)
}

/// A `key=value` word of a marker line.
fn word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// What the guest's output says: its kernel, the steps' results and JSON.
#[derive(Default)]
struct GuestOutput {
    uname: Option<String>,
    nproc: Option<String>,
    meminfo: Option<String>,
    steps: Vec<Value>,
    json: BTreeMap<String, Value>,
}

fn parse_output(output: &str) -> GuestOutput {
    let mut g = GuestOutput::default();
    for line in output.lines() {
        if let Some(r) = line.strip_prefix("SLUICE-BENCH-UNAME ") {
            g.uname = Some(r.trim().to_string());
        } else if let Some(r) = line.strip_prefix("SLUICE-BENCH-NPROC ") {
            g.nproc = Some(r.trim().to_string());
        } else if let Some(r) = line.strip_prefix("SLUICE-BENCH-MEMINFO ") {
            g.meminfo = Some(r.trim().to_string());
        } else if let Some(r) = line.strip_prefix(&format!("{STEP} ")) {
            let name = r.split_whitespace().next().unwrap_or("").to_string();
            let num = |k: &str| word(r, k).and_then(|v| v.parse::<f64>().ok());
            let mem_avail_kb = r
                .split_once("MemAvailable:")
                .and_then(|(_, v)| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok());
            g.steps.push(json!({
                "step": name,
                "exit_code": word(r, "rc").and_then(|v| v.parse::<i64>().ok()),
                "seconds": num("end").zip(num("start")).map(|(e, s)| r3(e - s)),
                "guest_mem_available_mb_after": mem_avail_kb.map(|k| r3(k / 1024.0)),
            }));
        } else if let Some(r) = line.strip_prefix(&format!("{JSON_LINE} ")) {
            if let Some((name, text)) = r.split_once(' ') {
                match serde_json::from_str::<Value>(text) {
                    Ok(v) => {
                        g.json.insert(name.to_string(), v);
                    }
                    Err(e) => eprintln!("vm: the JSON of step {name} does not parse: {e}"),
                }
            }
        }
    }
    g
}

/// The headline numbers of one mode: the service ratios and the scale figures.
fn mode_summary(mode: &str, service: Option<&Value>, scale: Option<&Value>) -> Value {
    let mut out = json!({});
    if let Some(sv) = service {
        // One mode: the result itself; several: by_mode.<mode>.
        let r = if sv["by_mode"].is_object() {
            &sv["by_mode"][mode]
        } else if sv["proxy_mode"] == mode {
            sv
        } else {
            &Value::Null
        };
        if r.is_object() {
            for t in ["TCP_CRR", "TCP_RR"] {
                let ratio = &r["ratios"][t]["service_over_direct"];
                if ratio.is_null() {
                    continue;
                }
                out["service"][t] = json!({
                    "clusterip_over_direct_of_medians": ratio["of_medians"],
                    "per_round_median": ratio["per_round_median"],
                    "per_round_min": ratio["per_round_min"],
                    "per_round_max": ratio["per_round_max"],
                    "direct_median": r["results"][t]["direct"]["throughput"]["median"],
                    "clusterip_median": r["results"][t]["service"]["throughput"]["median"],
                    "unit": r["results"][t]["direct"]["unit"],
                    "pods_cpu_added_pct": r["cpu_added"][t]["service_vs_direct"]["pods"]["added_pct_of_medians"],
                });
            }
            out["service"]["lab_up_s"] = r["lab"]["up_s"].clone();
            out["service"]["netperf_runs_retried"] = json!(r["netperf_runs_retried"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0));
        } else {
            out["service"] = json!({"error": "no result for this mode (see the step's exit code)"});
        }
    }
    if let Some(sc) = scale {
        let run = &sc["runs"][0];
        if run.is_object() {
            let c = &run["endpoint_change"];
            out["scale"] = json!({
                "services": run["services"],
                "endpoints": run["endpoints"],
                "full_sync_s": run["first_full_sync"]["agent_start_to_programmed_s"],
                "agent_reported_full_sync_s": run["first_full_sync"]["agent_reported_sync_took_s"],
                "ipvs_first_sync": run["first_full_sync"]["ipvs"],
                "endpoint_change_ms": {
                    "p50": c["ms"]["p50"],
                    "p99": c["ms"]["p99"],
                    "max": c["ms"]["max"],
                    "min": c["ms"]["min"],
                    "rounds": c["rounds_completed"],
                    "dnat_verified": c["dnat_verified"],
                },
                "endpoint_change_ipvs": c["ipvs"],
                "agent_rss_mb": run["agent_rss_mb"]["after_first_sync_settled"],
                "agent_rss_mb_after_changes": run["agent_rss_mb"]["after_changes"],
                "agent_partial_sync_took_ms": run["agent_syncs_from_log"]["partial_took_ms"],
                "objects_create_s": run["objects"]["create_s"],
                "lab_up_s": run["lab_up_s"],
            });
        } else {
            out["scale"] = json!({"error": "no result (see the step's exit code)"});
        }
    }
    out
}

/// Kernel log lines of the run that say the guest ran out of memory.
fn oom_lines(workdir: &Path) -> Vec<String> {
    std::fs::read_to_string(workdir.join("console.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("Out of memory")
                || l.contains("oom-kill")
                || l.contains("invoked oom-killer")
        })
        .map(str::to_string)
        .collect()
}

fn print_table(modes: &[String], per_mode: &Value) {
    eprintln!();
    eprintln!(
        "{:>9} | {:>24} | {:>24} | {:>12} | {:>30} | {:>9}",
        "mode",
        "TCP_CRR svc÷direct (rng)",
        "TCP_RR svc÷direct (rng)",
        "full sync s",
        "endpoint change ms p50/p99/max",
        "agent RSS"
    );
    for m in modes {
        let v = &per_mode[m.as_str()];
        let ratio = |t: &str| {
            let r = &v["service"][t];
            format!(
                "{} ({}–{})",
                r["clusterip_over_direct_of_medians"], r["per_round_min"], r["per_round_max"]
            )
        };
        let c = &v["scale"]["endpoint_change_ms"];
        eprintln!(
            "{:>9} | {:>24} | {:>24} | {:>12} | {:>30} | {:>9}",
            m,
            ratio("TCP_CRR"),
            ratio("TCP_RR"),
            v["scale"]["full_sync_s"].to_string(),
            format!("{}/{}/{}", c["p50"], c["p99"], c["max"]),
            v["scale"]["agent_rss_mb"].to_string(),
        );
    }
}

pub fn run(o: Opts) -> anyhow::Result<()> {
    let wall = Instant::now();
    if vm::in_vm() {
        bail!("`sluice-bench vm` boots the VM: run it on the host");
    }
    if o.modes.is_empty() || o.rounds == 0 || o.seconds == 0 || o.services == 0 {
        bail!("--modes, --rounds, --seconds and --services must not be empty or 0");
    }
    if let Some(why) = vm::vm_unavailable() {
        bail!("the VM cannot run here: {why}");
    }
    let release = release_dir();
    for b in BINARIES {
        if !release.join(b).is_file() {
            bail!(
                "{} is missing: the VM runs the release binaries; build them with `{BUILD}`",
                release.join(b).display()
            );
        }
    }
    for t in TOOLS {
        if !Path::new(t).is_file() {
            let hint = if t.contains("net") && !t.ends_with("nsenter") {
                "netperf is in Debian's non-free component: add `non-free` to the apt sources' Components, then `apt-get update && apt-get install -y netperf`"
            } else if t.ends_with("ss") {
                "apt-get install -y iproute2"
            } else {
                "apt-get install -y util-linux"
            };
            bail!("{t} is missing ({hint})");
        }
    }
    let kubectl = sluice_tests::Kubectl::preinstalled()
        .filter(|k| k.path.is_absolute())
        .context("no preinstalled versioned kubectl (/usr/lib/google-cloud-sdk/bin/kubectl.1.*) to carry into the VM")?;

    let (script, steps) = guest_script(&o);
    let mut b = Vm::builder();
    for name in BINARIES {
        b = b.file(release.join(name), format!("/vmtest/bin/{name}"));
    }
    for t in TOOLS {
        b = b.file(t, t);
    }
    b = b
        .file(&kubectl.path, &kubectl.path)
        .memory_mb(o.memory_mb)
        .timeout(o.timeout);
    eprintln!(
        "vm: booting Debian's 6.1 cloud kernel (qemu TCG, -smp 1, {} MiB, guest watchdog {} s) with the release binaries of {}; steps:",
        o.memory_mb,
        o.timeout.as_secs(),
        release.display()
    );
    for (name, cmd) in &steps {
        eprintln!("vm:   {name}: {cmd}");
    }
    let loadavg_before = crate::loadavg();
    let run = b.run_shell(RUN_NAME, &script)?;
    let loadavg_after = crate::loadavg();
    let g = parse_output(&run.output);
    let ooms = oom_lines(&run.workdir);

    let mut per_mode = json!({});
    for m in &o.modes {
        per_mode[m.as_str()] =
            mode_summary(m, g.json.get("service"), g.json.get(&format!("scale-{m}")));
    }
    let date = k8s_openapi::jiff::Timestamp::now().to_string();
    let date = date.get(..10).unwrap_or("unknown").to_string();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let result = json!({
        "benchmark": "vm",
        "date": date,
        "command": command,
        "wall_s": r3(wall.elapsed().as_secs_f64()),
        "host": {
            "kernel": crate::kernel(),
            "cores": crate::cores(),
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg_after,
            "qemu": first_line("qemu-system-x86_64", "--version"),
        },
        "vm": {
            "guest_kernel": g.uname.clone().unwrap_or_else(|| run.kernel.clone()),
            "harness_kernel": run.kernel,
            "accel": "tcg",
            "cpu": "max",
            "smp": 1,
            "guest_nproc": g.nproc,
            "memory_mb": o.memory_mb,
            "guest_meminfo": g.meminfo,
            "network_device": "none (-nic none: every packet stays in namespaces inside the guest)",
            "payload_route": format!("{:?}", run.payload),
            "guest_watchdog_s": o.timeout.as_secs(),
            "prepare_s": r3(run.prepare.as_secs_f64()),
            "boot_s": r3(run.boot.as_secs_f64()),
            "guest_steps_s": r3(run.test.as_secs_f64()),
            "qemu_total_s": r3(run.total.as_secs_f64()),
            "exit_code": run.exit_code,
            "oom_kernel_lines": ooms,
            // Relative to the checkout: a recorded result names no machine's paths.
            "workdir": repo_relative(&run.workdir),
            "harness": "sluice_tests::vm (tests/src/vm.rs, docs/vm-tests.md)",
        },
        "binaries": {
            "profile": "release",
            "from": repo_relative(&release),
            "guest_dir": "/vmtest/bin",
            "kubectl": kubectl.path,
            "tools": TOOLS,
        },
        "parameters": {
            "modes": o.modes,
            "service": {"rounds": o.rounds, "seconds_per_run": o.seconds, "tests": ["TCP_CRR", "TCP_RR"], "haproxy": false},
            "scale": {"services": o.services, "endpoints_per_service": 5, "changes": o.changes, "spacing_ms": o.spacing_ms, "breakdown": false},
        },
        "guest_commands": steps.iter().map(|(n, c)| json!({"step": n, "command": c})).collect::<Vec<_>>(),
        "steps": g.steps,
        "method": "one VM boot; in the guest the service benchmark runs every mode on a fresh 2-node lab one after the other (netperf TCP_CRR and TCP_RR from a client pod on n1 to the only backend on n2, directly and through the ClusterIP, interleaved rounds, conntrack flushed before every run; ratios of the medians and per round), then the scale benchmark per mode on a fresh 1-node lab (N selector-less services × 5 endpoints created first, agent restarted in the mode, the kernel polled from the node's netns: full sync time and per-change latency from the EndpointSlice PUT's acknowledgement to the new endpoint in the kernel; agent VmRSS 3 s after the sync). Under TCG absolute numbers are meaningless; compare the modes.",
        "per_mode": per_mode,
        "raw": g.json,
    });
    let out = o.out.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"))
            .join(format!("vm-{date}.json"))
    });
    std::fs::write(&out, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    print_table(&o.modes, &result["per_mode"]);
    eprintln!(
        "vm: guest kernel {}, {} MiB; qemu {:.0} s (boot {:.1} s), whole command {:.0} s; results in {}",
        result["vm"]["guest_kernel"].as_str().unwrap_or("?"),
        o.memory_mb,
        run.total.as_secs_f64(),
        run.boot.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        out.display()
    );
    if !result["vm"]["oom_kernel_lines"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        eprintln!("vm: the guest ran out of memory (see vm.oom_kernel_lines)");
    }
    if run.exit_code != 0 {
        bail!(
            "a step failed in the guest (exit {}; steps: {}); its output is in {}/result.log",
            run.exit_code,
            serde_json::to_string(&result["steps"])?,
            run.workdir.display()
        );
    }
    Ok(())
}

/// `path` relative to the current directory (the checkout the command runs in), so a recorded
/// result does not carry this machine's absolute paths; unchanged if it lies elsewhere.
fn repo_relative(path: &std::path::Path) -> String {
    let rel = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.to_path_buf()));
    rel.as_deref().unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_lines() {
        let out = "noise\nSLUICE-BENCH-UNAME 6.1.0-57-cloud-amd64\n\
                   SLUICE-BENCH-STEP scale-ipvs rc=0 start=10.50 end=70.75 MemAvailable: 2048000 kB\n\
                   SLUICE-BENCH-JSON scale-ipvs {  \"runs\": [    {\"services\": 1000}  ]}\n";
        let g = parse_output(out);
        assert_eq!(g.uname.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(g.steps[0]["exit_code"], 0);
        assert_eq!(g.steps[0]["seconds"], 60.25);
        assert_eq!(g.steps[0]["guest_mem_available_mb_after"], 2000.0);
        assert_eq!(g.json["scale-ipvs"]["runs"][0]["services"], 1000);
    }

    #[test]
    fn script_runs_every_step() {
        let o = Opts {
            modes: vec!["ipvs".into(), "iptables".into()],
            rounds: 3,
            seconds: 2,
            services: 1000,
            changes: 10,
            spacing_ms: 1000,
            memory_mb: 2048,
            timeout: Duration::from_secs(60),
            out: None,
        };
        let (s, steps) = guest_script(&o);
        assert_eq!(steps.len(), 3);
        assert!(s.contains("step service /vmtest/bin/sluice-bench service --modes ipvs,iptables "));
        assert!(s.contains("step scale-iptables /vmtest/bin/sluice-bench scale --mode iptables --services 1000 --changes 10"));
        assert!(s.contains("tr -d '\\n' </tmp/$name.json"));
    }
}
