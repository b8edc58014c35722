//! `sluice-lab`: a whole Sluice cluster on one machine, each node a network namespace.
//!
//! Layout (all namespaces created here, none with an interface to the outside world):
//! ```text
//!  host netns: sluice-lab forward on 127.0.0.1:<port> ──(dispatcher thread in <lab>)─┐
//!                                                                                    ▼
//!  <lab> netns: bridge br0 172.31.0.1/24, sluice-control on 172.31.0.1:6443
//!     ├── veth ── <lab>-n1 netns: eth0 172.31.0.11, sluice-agent n1, pods' bridge,
//!     │                           containerd n1 (own mount ns) ─ shims ─ CRI pods
//!     └── veth ── <lab>-n2 netns: eth0 172.31.0.12, sluice-agent n2, containerd n2, …
//!  pods: one netns each, wired by `sluice-cni` run inside their node's netns, either by the
//!  agent through its node's containerd (CRI, like kubelet), or by `sluice-lab pod create`
//!  (a plain process, no image).
//! ```
//! With `--etcd M` an etcd cluster of M members runs in `<lab>` too ([`etcd`]) and the API
//! servers store the cluster there; with `--control-planes N` (N > 1, needs etcd) N API
//! servers listen on 172.31.0.2… and 172.31.0.1:6443 is a TCP balancer over the live ones
//! (`sluice-lab forward --listen-in-netns`), see [`apiservers`]. `control kill|start` and
//! `etcd kill|start` stop one of them with SIGKILL and start it again, for fault tests.
//!
//! State lives in `DIR/lab.json`; `DIR/cluster.json` is the contract for tests and benchmarks:
//! `kubeconfig` (for the host: server `https://127.0.0.1:<forwarder port>`), `labKubeconfig`
//! (server `https://172.31.0.1:6443`, for processes inside the lab's namespaces), `apiServer`,
//! `hostApiServer`, `labNetns`, `nodes: [{name, netns, ip, podCIDR, containerdSocket}]`,
//! `apiServers: [{name, address, pid, dataDir}]`, `etcd: [{name, clientURL, pid}]` (pid 0:
//! killed).
//! Processes are started detached (own session, logs in `DIR/logs/`), so `up` returns while
//! the cluster keeps running; `up` prints `export KUBECONFIG=DIR/kubeconfig`.
//!
//! Each node runs a private containerd ([`containerd`]: its files under
//! `DIR/nodes/<n>/containerd/`, CNI plugins from `DIR/cni-bin`, the node's `net.d`, the lab's
//! images imported) and its agent gets `--container-runtime-endpoint`, `--pod-logs-dir`,
//! `--cgroup-root /<lab>/<node>` and `--cni-ipam-data-dir` (the same leases the lab's own pods
//! use, one allocator per node). `down` kills containerd, its shims and the containers, and
//! removes the lab's cgroups in every hierarchy, its namespaces, mounts and files (logs stay).
//! Namespaces and links are made with iproute2 (`ip`), the same commands an operator would
//! type; the kernel state is the point of the lab, not the tool.

mod api;
mod apiservers;
mod containerd;
mod etcd;
mod forward;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

const LAB_NET: &str = "172.31.0";
const API_PORT: u16 = 6443;
/// The CRI sandbox image (one of the images the lab imports into every node's containerd).
const PAUSE_IMAGE: &str = sluice_images::PAUSE;

#[derive(Parser)]
#[command(
    name = "sluice-lab",
    version,
    about = "A local Sluice cluster: control plane + N nodes, each a network namespace"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster and write DIR/cluster.json.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Service proxy mode for the agents.
        #[arg(long, default_value = "none")]
        proxy_mode: String,
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Run no containerd on the nodes (the agents then only network their node and proxy;
        /// `pod create` still works): a faster `up` for suites that use process pods only.
        #[arg(long)]
        no_containerd: bool,
        /// Extra flag for sluice-control (repeatable, e.g.
        /// `--control-arg=--node-monitor-grace-period=5s`).
        #[arg(long = "control-arg", allow_hyphen_values = true)]
        control_args: Vec<String>,
        /// Extra flag for every agent (repeatable, e.g. `--agent-arg=--heartbeat-interval=1s`);
        /// kept for `agent restart`.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Number of API servers (1 to 9). More than one needs `--etcd`: they listen on
        /// 172.31.0.2, .3, … and a balancer on 172.31.0.1:6443 spreads connections over them.
        #[arg(long, default_value_t = 1)]
        control_planes: usize,
        /// Members of an etcd cluster in the lab namespace that the API servers store the
        /// cluster in (0: each API server's embedded store, in its data dir).
        #[arg(long, default_value_t = 0)]
        etcd: usize,
    },
    /// Stop everything the lab started and remove every namespace and link it made.
    Down {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Pods made the way a runtime would (netns, CNI ADD, command, Pod object and status).
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Node agents.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
    },
    /// API servers: kill one or start it again (fault tests).
    Control {
        #[command(subcommand)]
        cmd: ControlCmd,
    },
    /// etcd members: kill one or start it again (fault tests).
    Etcd {
        #[command(subcommand)]
        cmd: EtcdCmd,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Relays 127.0.0.1:<port> on the host (or an address inside the namespace) to addresses
    /// inside a namespace (started by `up`).
    #[command(hide = true)]
    Forward {
        /// Network namespace (under /run/netns) to connect from.
        #[arg(long)]
        netns: String,
        /// Address to connect to there (repeatable: round-robin per connection, skipping
        /// targets that refuse or time out).
        #[arg(long, required = true)]
        to: Vec<std::net::SocketAddr>,
        /// Listen on this address inside the namespace instead of 127.0.0.1:0 on the host.
        #[arg(long)]
        listen_in_netns: Option<std::net::SocketAddr>,
        /// File the listening port is written to.
        #[arg(long)]
        port_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ControlCmd {
    /// SIGKILL API server INDEX (1-based).
    Kill {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// API server, 1-based.
        #[arg(long)]
        index: usize,
    },
    /// Start API server INDEX (1-based) again with its command line; waits until it serves.
    Start {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// API server, 1-based.
        #[arg(long)]
        index: usize,
    },
}

#[derive(Subcommand)]
enum EtcdCmd {
    /// SIGKILL etcd member MEMBER (0-based).
    Kill {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Member, 0-based.
        #[arg(long)]
        member: usize,
    },
    /// Start etcd member MEMBER (0-based) again on its data; waits until it is healthy
    /// (which needs a quorum).
    Start {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Member, 0-based.
        #[arg(long)]
        member: usize,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Restart the agents (established connections must survive), optionally switching the
    /// proxy mode.
    Restart {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Only this node (default: all).
        #[arg(long)]
        node: Option<String>,
        /// New `--proxy-mode`.
        #[arg(long)]
        proxy_mode: Option<String>,
        /// Extra agent flag (repeatable, e.g. `--agent-arg=--iptables-backend=legacy`); given
        /// at all, the list replaces the one kept from the previous restart.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PodCmd {
    /// Create a pod on a node running CMD.
    Create {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Node name (n1, n2, …).
        #[arg(long)]
        node: String,
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Kubernetes namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Labels, `k=v,k2=v2`.
        #[arg(long, default_value = "")]
        labels: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a pod, release its network (CNI DEL) and delete the Pod object.
    Delete {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// NAMESPACE/NAME.
        #[arg(long)]
        pod: String,
    },
}

/// One node of the lab.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct NodeRec {
    name: String,
    netns: String,
    ip: String,
    #[serde(rename = "podCIDR")]
    pod_cidr: String,
    kubeconfig: PathBuf,
    agent_pid: i32,
    cni_conf_dir: PathBuf,
    /// The node's containerd (none with `up --no-containerd`).
    #[serde(default)]
    containerd: Option<containerd::ContainerdRec>,
}

/// One pod of the lab.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct PodRec {
    namespace: String,
    name: String,
    node: String,
    netns: String,
    container_id: String,
    ip: String,
    pid: i32,
    /// The pod's cgroup v2 directory.
    #[serde(default)]
    cgroup: PathBuf,
}

/// Everything `down` needs.
#[derive(Serialize, Deserialize, Debug)]
struct LabState {
    lab_netns: String,
    /// API server 1's pid (kept beside `api_servers` for older readers of lab.json).
    control_pid: i32,
    /// Every API server (one entry in a lab from before multi-server labs: none).
    #[serde(default)]
    api_servers: Vec<apiservers::ApiServerRec>,
    /// The front balancer on 172.31.0.1:6443 of a multi-server lab (0: none).
    #[serde(default)]
    front_pid: i32,
    /// The etcd members (none: the API server's embedded store).
    #[serde(default)]
    etcd: Vec<etcd::EtcdRec>,
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    /// The agents' current `--proxy-mode`.
    #[serde(default)]
    proxy_mode: String,
    /// Extra agent flags (`agent restart --agent-arg`).
    #[serde(default)]
    agent_args: Vec<String>,
    /// The host-side API forwarder (`sluice-lab forward`).
    #[serde(default)]
    forward_pid: i32,
    #[serde(default)]
    forward_port: u16,
    /// `DIR/kubeconfig`: the admin kubeconfig with the forwarder as server.
    #[serde(default)]
    host_kubeconfig: PathBuf,
    /// `DIR/cni-bin` (our plugin and the reference ones containerd runs).
    #[serde(default)]
    cni_bin_dir: Option<PathBuf>,
    nodes: Vec<NodeRec>,
    pods: Vec<PodRec>,
}

impl LabState {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let p = dir.join("lab.json");
        let b = std::fs::read(&p)
            .with_context(|| format!("reading {} (is the lab up?)", p.display()))?;
        Ok(serde_json::from_slice(&b)?)
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, dir.join("lab.json"))?;
        Ok(())
    }

    fn node(&self, name: &str) -> anyhow::Result<&NodeRec> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name} in this lab"))
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Our binaries sit beside this one (target/<profile>/).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("binary has a directory")?
        .to_path_buf())
}

/// Where cgroup v2 is mounted on this machine kind (cgroup v1 host with a unified hierarchy).
const CGROUP2: &str = "/sys/fs/cgroup/unified";

/// The lab's cgroup v2 root: `<cgroup2 mount>/<lab>`.
fn cgroup_root(lab: &str) -> PathBuf {
    cgroup2_mount().join(lab)
}

/// Where cgroup v2 is mounted, from the mount table (`/sys/fs/cgroup` on a unified host such as
/// the VM, [`CGROUP2`] on a hybrid one).
fn cgroup2_mount() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                if right.split_whitespace().next()? != "cgroup2" {
                    return None;
                }
                left.split_whitespace().nth(4).map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| PathBuf::from(CGROUP2))
}

/// Starts a detached process (own session, stdio to a log file), optionally inside a cgroup
/// v2 group, and returns its pid.
fn spawn_detached(args: &[String], log: &Path, cgroup: Option<&Path>) -> anyhow::Result<i32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut c = Command::new(&args[0]);
    c.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(cg) = cgroup {
        join_cgroup_on_exec(&mut c, cg)?;
    }
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = c
        .spawn()
        .with_context(|| format!("starting {}", args.join(" ")))?;
    Ok(child.id() as i32)
}

/// Makes `c`'s child join the cgroup v2 group `cg` (created if missing) between fork and exec,
/// so the command and everything it starts run there. This happens *before* a command such as
/// `ip netns exec` runs, because that command remounts /sys and hides the cgroup tree.
fn join_cgroup_on_exec(c: &mut Command, cg: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cg.display()))?;
    // SAFETY: only async-signal-safe calls between fork and exec: getpid, and write on an fd
    // opened before the fork, with the pid formatted into a stack buffer.
    unsafe {
        c.pre_exec(move || {
            let mut buf = [0u8; 12];
            let mut n = nix::unistd::getpid().as_raw() as u32;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            nix::unistd::write(&procs, &buf[i..]).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    Ok(())
}

/// Whether a process still runs. Detached processes outlive the `sluice-lab` that started
/// them and may linger as zombies until an init reaps them; a zombie counts as gone.
fn alive(pid: i32) -> bool {
    if pid <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    !matches!(state, Some("Z") | None)
}

/// SIGTERM, then SIGKILL after a grace period.
fn stop(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    if !alive(pid) {
        return;
    }
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) && Instant::now() < deadline {
        // Reap if it is our child (it is not, after setsid from an earlier `up`, but be safe).
        let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
    }
}

/// [`stop`] for several processes at once: SIGTERM to all, one grace period, SIGKILL to the
/// rest (three API servers shutting down in turn would take three grace periods).
fn stop_all(pids: &[i32]) {
    use nix::sys::signal::{kill, Signal};
    let live: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &live {
        let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while live.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in &live {
        if alive(p) {
            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// SIGKILL, then waits (briefly) until the process is gone.
fn kill_now(pid: i32) -> anyhow::Result<()> {
    if !alive(pid) {
        return Ok(());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    wait_for(
        &format!("pid {pid} to exit"),
        Duration::from_secs(5),
        || !alive(pid),
    )
}

/// `control kill`: SIGKILL one API server (its connections break; the front skips it).
fn control_kill(dir: &Path, index: usize) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    let i = apiservers::index(&state, index)?;
    kill_now(state.api_servers[i].pid)?;
    println!(
        "API server {} ({}) killed (pid {})",
        state.api_servers[i].name, state.api_servers[i].address, state.api_servers[i].pid
    );
    state.api_servers[i].pid = 0;
    if i == 0 {
        state.control_pid = 0;
    }
    state.save(&dir)?;
    write_cluster_json(&state, &dir)
}

/// `control start`: one API server again, with its command line, until it serves.
fn control_start(dir: &Path, index: usize) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    let i = apiservers::index(&state, index)?;
    if alive(state.api_servers[i].pid) {
        bail!(
            "API server {} still runs (pid {}): `control kill` it first",
            state.api_servers[i].name,
            state.api_servers[i].pid
        );
    }
    let t = Instant::now();
    let offset = apiservers::spawn(&mut state, i)?;
    state.save(&dir)?;
    write_cluster_json(&state, &dir)?;
    apiservers::wait_serving(&state, i, offset, Duration::from_secs(30))?;
    println!(
        "API server {} ({}) serving again (pid {}, {:.1} s)",
        state.api_servers[i].name,
        state.api_servers[i].address,
        state.api_servers[i].pid,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `etcd kill`: SIGKILL one member.
fn etcd_kill(dir: &Path, member: usize) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    let m = etcd::member(&state, member)?;
    kill_now(m.pid)?;
    println!("etcd member {} killed (pid {})", m.name, m.pid);
    state.etcd[member].pid = 0;
    state.save(&dir)?;
    write_cluster_json(&state, &dir)
}

/// `etcd start`: one member again on its data, until it is healthy.
fn etcd_start(dir: &Path, member: usize) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    let m = etcd::member(&state, member)?;
    if alive(m.pid) {
        bail!(
            "etcd member {} still runs (pid {}): `etcd kill` it first",
            m.name,
            m.pid
        );
    }
    let t = Instant::now();
    etcd::spawn(&mut state, member)?;
    state.save(&dir)?;
    write_cluster_json(&state, &dir)?;
    etcd::wait_healthy(&state, member, Duration::from_secs(30))?;
    println!(
        "etcd member {} healthy again (pid {}, {:.1} s)",
        state.etcd[member].name,
        state.etcd[member].pid,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn lab_name(dir: &Path) -> String {
    // Short and stable per directory, unique enough for concurrent labs.
    let mut h: u32 = 2166136261;
    for b in dir.to_string_lossy().bytes() {
        h = (h ^ b as u32).wrapping_mul(16777619);
    }
    format!("slab{:05x}", h & 0xfffff)
}

/// Extra flags `up` hands to the control plane and the agents.
struct Extra {
    control_args: Vec<String>,
    agent_args: Vec<String>,
}

/// The control plane's shape: API servers and etcd members.
struct Topology {
    control_planes: usize,
    etcd: usize,
}

/// The most API servers: their addresses 172.31.0.2… end below the nodes' (172.31.0.11…).
const MAX_CONTROL_PLANES: usize = 9;

fn up(
    nodes: usize,
    proxy_mode: &str,
    dir: &Path,
    no_containerd: bool,
    extra: Extra,
    topo: Topology,
) -> anyhow::Result<()> {
    let started = Instant::now();
    if topo.control_planes == 0 || topo.control_planes > MAX_CONTROL_PLANES {
        bail!("--control-planes must be 1 to {MAX_CONTROL_PLANES}");
    }
    if topo.control_planes > 1 && topo.etcd == 0 {
        bail!(
            "--control-planes {} needs --etcd 1 or more: API servers share a cluster only \
             through etcd (the embedded store belongs to one API server)",
            topo.control_planes
        );
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let dir = dir.canonicalize()?;
    if dir.join("lab.json").exists() {
        bail!(
            "{} already holds a lab: run `sluice-lab down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    if !no_containerd {
        containerd::check_prerequisites()?;
    }
    let lab = lab_name(&dir);
    let bins = bin_dir()?;
    let gw = format!("{LAB_NET}.1");
    let mut state = LabState {
        lab_netns: lab.clone(),
        control_pid: 0,
        api_servers: Vec::new(),
        front_pid: 0,
        etcd: Vec::new(),
        kubeconfig: dir.join("control/admin.kubeconfig"),
        bin_dir: bins.clone(),
        proxy_mode: proxy_mode.to_string(),
        agent_args: extra.agent_args.clone(),
        forward_pid: 0,
        forward_port: 0,
        host_kubeconfig: dir.join("kubeconfig"),
        cni_bin_dir: None,
        nodes: Vec::new(),
        pods: Vec::new(),
    };
    // Save early so `down` can clean up a half-made lab.
    state.save(&dir)?;

    sh(&["ip", "netns", "add", &lab])?;
    sh(&["ip", "-n", &lab, "link", "set", "lo", "up"])?;
    sh(&["ip", "-n", &lab, "link", "add", "br0", "type", "bridge"])?;
    sh(&[
        "ip",
        "-n",
        &lab,
        "addr",
        "add",
        &format!("{gw}/24"),
        "dev",
        "br0",
    ])?;
    sh(&["ip", "-n", &lab, "link", "set", "br0", "up"])?;

    // etcd first: an API server on etcd needs it to start.
    if topo.etcd > 0 {
        // A lab.json-less leftover would make the members rejoin an old cluster's data.
        let _ = std::fs::remove_dir_all(dir.join("etcd"));
        state.etcd = etcd::plan(&dir, &lab, topo.etcd)?;
        state.save(&dir)?;
        for i in 0..state.etcd.len() {
            etcd::spawn(&mut state, i)?;
            state.save(&dir)?;
        }
        for i in 0..state.etcd.len() {
            etcd::wait_healthy(&state, i, Duration::from_secs(30))?;
        }
    }

    let control = bins.join("sluice-control");
    let endpoints = (topo.etcd > 0).then(|| etcd::endpoints(&state));
    state.api_servers = apiservers::plan(
        &dir,
        &lab,
        &control,
        topo.control_planes,
        endpoints.as_deref(),
        &extra.control_args,
    );
    let front_port_file = dir.join("front.port");
    if topo.control_planes > 1 {
        for a in &state.api_servers {
            let ip = a.address.split(':').next().context("host:port")?;
            sh(&[
                "ip",
                "-n",
                &lab,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "br0",
            ])?;
        }
        // The front: what the kubeconfigs name (every API server advertises it).
        let _ = std::fs::remove_file(&front_port_file);
        let mut argv: Vec<String> = vec![
            bins.join("sluice-lab").to_string_lossy().into(),
            "forward".into(),
            "--netns".into(),
            lab.clone(),
            "--listen-in-netns".into(),
            format!("{gw}:{API_PORT}"),
            "--port-file".into(),
            front_port_file.to_string_lossy().into(),
        ];
        for a in &state.api_servers {
            argv.extend(["--to".into(), a.address.clone()]);
        }
        state.front_pid = spawn_detached(&argv, &dir.join("logs/front.log"), None)?;
        state.save(&dir)?;
    }
    let first_log_offset = apiservers::spawn(&mut state, 0)?;
    state.save(&dir)?;
    let port_file = dir.join("forward.port");
    let _ = std::fs::remove_file(&port_file);
    state.forward_pid = spawn_detached(
        &[
            bins.join("sluice-lab").to_string_lossy().into(),
            "forward".into(),
            "--netns".into(),
            lab.clone(),
            "--to".into(),
            format!("{gw}:{API_PORT}"),
            "--port-file".into(),
            port_file.to_string_lossy().into(),
        ],
        &dir.join("logs/forward.log"),
        None,
    )?;
    state.save(&dir)?;
    if !no_containerd {
        state.cni_bin_dir = Some(containerd::cni_bin_dir(&dir, &bins)?);
        state.save(&dir)?;
    }

    // Nodes' namespaces, and their containerds (which come up while the control plane does).
    for i in 1..=nodes {
        let name = format!("n{i}");
        let ns = format!("{lab}-{name}");
        let ip = format!("{LAB_NET}.{}", 10 + i);
        let host_if = format!("{}v{i}", &lab[..lab.len().min(10)]);
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "-n", &lab, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        sh(&[
            "ip", "-n", &lab, "link", "set", &host_if, "master", "br0", "up",
        ])?;
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        // Like a real node, a default route (into the lab namespace, which has no way out): a
        // packet to an unprogrammed or endpoint-less ClusterIP is then forwarded and meets the
        // proxy's filter rules, instead of failing routing on the node.
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{LAB_NET}.1"),
        ])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ])?;
        let ndir = dir.join("nodes").join(&name);
        for d in ["net.d", "ipam", "pods-logs"] {
            std::fs::create_dir_all(ndir.join(d))?;
        }
        state.nodes.push(NodeRec {
            name: name.clone(),
            netns: ns.clone(),
            ip,
            pod_cidr: String::new(),
            kubeconfig: ndir.join("kubeconfig"),
            agent_pid: 0,
            cni_conf_dir: ndir.join("net.d"),
            containerd: None,
        });
        state.save(&dir)?;
        if let Some(cni_bin) = &state.cni_bin_dir {
            let rec =
                containerd::start(&dir, &name, &ns, cni_bin, &ndir.join("net.d"), PAUSE_IMAGE)?;
            state.nodes.last_mut().expect("just pushed").containerd = Some(rec);
            state.save(&dir)?;
        }
    }

    apiservers::wait_serving(&state, 0, first_log_offset, Duration::from_secs(30))?;
    if state.api_servers.len() > 1 {
        // The others sign with server 1's CA and know its tokens; they come up while the
        // images are imported.
        apiservers::share_pki(&state)?;
        let mut offsets = vec![first_log_offset];
        for i in 1..state.api_servers.len() {
            offsets.push(apiservers::spawn(&mut state, i)?);
            state.save(&dir)?;
        }
        for (i, off) in offsets.into_iter().enumerate().skip(1) {
            apiservers::wait_serving(&state, i, off, Duration::from_secs(30))?;
        }
        let front_alive = || alive(state.front_pid);
        wait_for("the API front", Duration::from_secs(10), || {
            front_port_file.exists() || !front_alive()
        })?;
        if !front_port_file.exists() {
            bail!(
                "the API front did not start: {}",
                std::fs::read_to_string(dir.join("logs/front.log")).unwrap_or_default()
            );
        }
    }
    let fwd_alive = || alive(state.forward_pid);
    wait_for("the API forwarder's port", Duration::from_secs(10), || {
        port_file.exists() || !fwd_alive()
    })?;
    state.forward_port = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| {
            format!(
                "the API forwarder did not publish its port: {}",
                std::fs::read_to_string(dir.join("logs/forward.log")).unwrap_or_default()
            )
        })?;
    write_private(
        &state.host_kubeconfig,
        &forward::host_kubeconfig(
            &std::fs::read_to_string(&state.kubeconfig).context("reading admin.kubeconfig")?,
            state.forward_port,
        ),
    )?;
    state.save(&dir)?;

    // Images into every containerd before any agent could ask for a sandbox.
    if state.cni_bin_dir.is_some() {
        let images = write_images(&dir.join("images"))?;
        std::thread::scope(|s| -> anyhow::Result<()> {
            let jobs: Vec<_> = state
                .nodes
                .iter()
                .filter_map(|n| Some((n, n.containerd.as_ref()?)))
                .map(|(n, c)| {
                    let (bins, images, dir) = (&bins, &images, &dir);
                    s.spawn(move || -> anyhow::Result<()> {
                        containerd::wait_ready(
                            c,
                            &n.name,
                            &dir.join(format!("logs/containerd-{}.log", n.name)),
                        )?;
                        containerd::import_images(bins, c, images)
                    })
                })
                .collect();
            for j in jobs {
                j.join()
                    .map_err(|_| anyhow::anyhow!("image import panicked"))??;
            }
            Ok(())
        })?;
    }

    for i in 0..state.nodes.len() {
        let n = &state.nodes[i];
        sh(&[
            &control.to_string_lossy(),
            "token",
            "create",
            "--node",
            &n.name,
            "--data-dir",
            &dir.join("control").to_string_lossy(),
            "--kubeconfig-out",
            &n.kubeconfig.to_string_lossy(),
        ])?;
        // Minted in API server 1's tokens.json: the others re-read theirs on its mtime.
        apiservers::share_tokens(&state)?;
        let pid = start_agent(&state, &dir, n, proxy_mode, &extra.agent_args)?;
        state.nodes[i].agent_pid = pid;
        state.save(&dir)?;
    }
    // Each agent writes its conflist once its Node has a podCIDR.
    for n in &mut state.nodes {
        let conf = n.cni_conf_dir.join("10-sluice.conflist");
        wait_for(
            &format!("{}'s CNI config", n.name),
            Duration::from_secs(60),
            || conf.exists(),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf)?)?;
        n.pod_cidr = v
            .pointer("/plugins/0/ipam/ranges/0/0/subnet")
            .and_then(|s| s.as_str())
            .context("conflist without a subnet")?
            .to_string();
    }
    state.save(&dir)?;
    write_cluster_json(&state, &dir)?;
    eprintln!(
        "lab {lab} is up with {nodes} node(s){}{} in {:.1} s; state in {}",
        if no_containerd {
            " (no containerd)"
        } else {
            ""
        },
        if topo.etcd > 0 {
            format!(
                ", {} API server(s) on {} etcd member(s)",
                state.api_servers.len(),
                state.etcd.len()
            )
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64(),
        dir.display(),
    );
    println!("export KUBECONFIG={}", state.host_kubeconfig.display());
    Ok(())
}

/// Writes `DIR/cluster.json` (the contract for tests and benchmarks; see the module doc) from
/// the state: again whenever a pid in it changes.
fn write_cluster_json(state: &LabState, dir: &Path) -> anyhow::Result<()> {
    let cluster = serde_json::json!({
        "kubeconfig": state.host_kubeconfig,
        "labKubeconfig": state.kubeconfig,
        "apiServer": format!("https://{LAB_NET}.1:{API_PORT}"),
        "hostApiServer": format!("https://127.0.0.1:{}", state.forward_port),
        "labNetns": state.lab_netns,
        "nodes": state.nodes.iter().map(|n| {
            let mut v = serde_json::json!({
                "name": n.name, "netns": n.netns, "ip": n.ip, "podCIDR": n.pod_cidr,
            });
            if let Some(c) = &n.containerd {
                v["containerdSocket"] = serde_json::json!(c.socket);
            }
            v
        }).collect::<Vec<_>>(),
        "apiServers": state.api_servers.iter().map(|a| serde_json::json!({
            "name": a.name, "address": a.address, "pid": a.pid, "dataDir": a.data_dir,
        })).collect::<Vec<_>>(),
        "etcd": state.etcd.iter().map(|m| serde_json::json!({
            "name": m.name, "clientURL": m.client_url, "pid": m.pid,
        })).collect::<Vec<_>>(),
    });
    let tmp = dir.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cluster)?)?;
    std::fs::rename(tmp, dir.join("cluster.json"))?;
    Ok(())
}

/// Writes a file only its owner may read (kubeconfigs carry tokens).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_private_bytes(path, contents.as_bytes())
}

/// [`write_private`] for bytes: a 0600 temp file beside `path`, renamed over it.
fn write_private_bytes(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes the lab's images (OCI tarballs) for import into the nodes' containerds.
fn write_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(sluice_images::write_all(dir)
        .with_context(|| format!("writing the images to {}", dir.display()))?
        .into_iter()
        .map(|(_, path)| path)
        .collect())
}

/// Starts a node's agent inside its namespace.
fn start_agent(
    state: &LabState,
    dir: &Path,
    n: &NodeRec,
    proxy_mode: &str,
    extra: &[String],
) -> anyhow::Result<i32> {
    let ndir = dir.join("nodes").join(&n.name);
    let cni_bin = state
        .cni_bin_dir
        .clone()
        .unwrap_or_else(|| state.bin_dir.clone());
    // `nsenter --net`, not `ip netns exec`: the latter remounts /sys for the namespace, which
    // hides the cgroup v2 tree and bpffs the ebpf proxy mode attaches and pins in.
    let mut argv: Vec<String> = vec![
        "nsenter".into(),
        format!("--net=/run/netns/{}", n.netns),
        state.bin_dir.join("sluice-agent").to_string_lossy().into(),
        "--kubeconfig".into(),
        n.kubeconfig.to_string_lossy().into(),
        "--node-name".into(),
        n.name.clone(),
        "--node-ip".into(),
        n.ip.clone(),
        "--proxy-mode".into(),
        proxy_mode.to_string(),
        "--min-sync-period".into(),
        "200ms".into(),
        "--cni-conf-dir".into(),
        n.cni_conf_dir.to_string_lossy().into(),
        "--cni-bin-dir".into(),
        cni_bin.to_string_lossy().into(),
        // The leases `pod create` uses too (see `cni_config`): one allocator per node.
        "--cni-ipam-data-dir".into(),
        ndir.join("ipam").to_string_lossy().into(),
    ];
    // The node's cgroup: its pods' cgroups go below it (process pods and CRI pods alike), and
    // the ebpf mode's socket hooks attach to it.
    argv.extend([
        "--cgroup-root".into(),
        format!("/{}/{}", state.lab_netns, n.name),
        // The ebpf mode pins under DIR/bpf/<node> (a bpffs the agent mounts; `down` removes it).
        "--bpf-dir".into(),
        dir.join("bpf").to_string_lossy().into(),
    ]);
    if let Some(c) = &n.containerd {
        argv.extend([
            "--container-runtime-endpoint".into(),
            format!("unix://{}", c.socket.display()),
            "--pod-logs-dir".into(),
            ndir.join("pods-logs").to_string_lossy().into(),
            "--root-dir".into(),
            ndir.join("kubelet").to_string_lossy().into(),
        ]);
    }
    argv.extend(extra.iter().cloned());
    spawn_detached(
        &argv,
        // Appended, so a restart keeps the earlier log.
        &dir.join(format!("logs/agent-{}.log", n.name)),
        None,
    )
}

/// Restarts agents (all, or one node's), optionally in another proxy mode.
fn agent_restart(
    dir: &Path,
    node: Option<&str>,
    proxy_mode: Option<&str>,
    agent_args: &[String],
) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    if !agent_args.is_empty() {
        state.agent_args = agent_args.to_vec();
    }
    if let Some(m) = proxy_mode {
        state.proxy_mode = m.to_string();
    }
    let mode = if state.proxy_mode.is_empty() {
        "none".to_string()
    } else {
        state.proxy_mode.clone()
    };
    let which: Vec<usize> = (0..state.nodes.len())
        .filter(|&i| node.is_none_or(|w| w == state.nodes[i].name))
        .collect();
    if which.is_empty() {
        bail!("no node {} in this lab", node.unwrap_or("?"));
    }
    for i in which {
        // containerd (and the pods it runs) keeps running; only the agent restarts.
        stop(state.nodes[i].agent_pid);
        let pid = start_agent(&state, &dir, &state.nodes[i], &mode, &state.agent_args)?;
        let n = &mut state.nodes[i];
        n.agent_pid = pid;
        println!(
            "agent on {} restarted (pid {}, --proxy-mode {mode})",
            n.name, n.agent_pid
        );
    }
    state.save(&dir)
}

fn cni_config(dir: &Path, node: &NodeRec) -> anyhow::Result<serde_json::Value> {
    let conf: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.cni_conf_dir.join("10-sluice.conflist"))
            .context("reading the node's conflist")?,
    )?;
    let mut plugin = conf
        .pointer("/plugins/0")
        .cloned()
        .context("conflist has no plugins")?;
    plugin["cniVersion"] = conf["cniVersion"].clone();
    plugin["name"] = conf["name"].clone();
    // Leases per lab node, never in the machine's /var/lib/cni.
    plugin["ipam"]["dataDir"] = serde_json::json!(dir.join("nodes").join(&node.name).join("ipam"));
    Ok(plugin)
}

fn run_cni(
    state: &LabState,
    node: &NodeRec,
    command: &str,
    pod: &PodRec,
    conf: &serde_json::Value,
) -> anyhow::Result<String> {
    let netns_path =
        if command == "DEL" && !Path::new(&format!("/run/netns/{}", pod.netns)).exists() {
            String::new()
        } else {
            format!("/run/netns/{}", pod.netns)
        };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(state.bin_dir.join("sluice-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            format!("{}:/usr/lib/cni", state.bin_dir.display()),
        )
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running sluice-cni")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "CNI {command} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn split_pod(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => ("default".to_string(), s.to_string()),
    }
}

fn pod_create(
    dir: &Path,
    node: &str,
    name: &str,
    namespace: &str,
    labels: &str,
    cmd: &[String],
) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    if state
        .pods
        .iter()
        .any(|p| p.name == name && p.namespace == namespace)
    {
        bail!("pod {namespace}/{name} already exists in the lab");
    }
    let n = state.node(node)?.clone();
    let idx = state.pods.len() + 1;
    let netns = format!("{}-p{idx}-{}", state.lab_netns, std::process::id() % 10000);
    let mut pod = PodRec {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        netns: netns.clone(),
        container_id: format!("lab{}{idx}{}", std::process::id(), name.len()),
        ip: String::new(),
        pid: 0,
        cgroup: cgroup_root(&state.lab_netns).join(node).join(&netns),
    };
    sh(&["ip", "netns", "add", &netns])?;
    sh(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
    let conf = cni_config(&dir, &n)?;
    let result = match run_cni(&state, &n, "ADD", &pod, &conf) {
        Ok(r) => r,
        Err(e) => {
            let _ = sh(&["ip", "netns", "del", &netns]);
            return Err(e);
        }
    };
    let r: serde_json::Value = serde_json::from_str(&result).context("CNI result")?;
    pod.ip = r
        .pointer("/ips/0/address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.split('/').next())
        .context("CNI result without an IP")?
        .to_string();
    let mut args = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        netns.clone(),
    ];
    args.extend(cmd.iter().cloned());
    // Pods run in their node's cgroup (`<lab>/<node>/<pod netns>`), where cgroup hooks such as
    // the eBPF proxy mode's attach.
    pod.pid = spawn_detached(
        &args,
        &dir.join(format!("logs/pod-{namespace}-{name}.log")),
        Some(&pod.cgroup),
    )?;
    state.pods.push(pod.clone());
    state.save(&dir)?;

    let labels: serde_json::Map<String, serde_json::Value> = labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), serde_json::json!(v.trim())))
        .collect();
    api::create_running_pod(&state, &n, &pod, &labels, cmd)?;
    println!("{namespace}/{name} on {node}: {}", pod.ip);
    Ok(())
}

fn pod_delete_rec(state: &LabState, dir: &Path, pod: &PodRec) -> anyhow::Result<()> {
    stop(pod.pid);
    let _ = std::fs::remove_dir(&pod.cgroup);
    if let Ok(n) = state.node(&pod.node) {
        let conf = cni_config(dir, n)?;
        run_cni(state, n, "DEL", pod, &conf)?;
    }
    let _ = sh(&["ip", "netns", "del", &pod.netns]);
    Ok(())
}

fn pod_delete(dir: &Path, pod: &str) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let mut state = LabState::load(&dir)?;
    let (ns, name) = split_pod(pod);
    let i = state
        .pods
        .iter()
        .position(|p| p.namespace == ns && p.name == name)
        .with_context(|| format!("no pod {ns}/{name} in this lab"))?;
    let rec = state.pods.remove(i);
    pod_delete_rec(&state, &dir, &rec)?;
    state.save(&dir)?;
    api::delete_pod(&state, &rec)?;
    println!("{ns}/{name} deleted");
    Ok(())
}

fn exec(dir: &Path, pod: &str, cmd: &[String]) -> anyhow::Result<i32> {
    let state = LabState::load(&dir.canonicalize()?)?;
    let (ns, name) = split_pod(pod);
    let p = state
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .with_context(|| format!("no pod {ns}/{name} in this lab"))?;
    // In the pod's cgroup too, so cgroup hooks (the ebpf proxy mode) see its sockets.
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &p.netns]).args(cmd);
    join_cgroup_on_exec(&mut c, &p.cgroup)?;
    let status = c.status()?;
    Ok(status.code().unwrap_or(1))
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = dir.canonicalize()?;
    let state = LabState::load(&dir)?;
    let lab = state.lab_netns.clone();
    for p in &state.pods {
        if let Err(e) = pod_delete_rec(&state, &dir, p) {
            eprintln!("pod {}/{}: {e:#}", p.namespace, p.name);
            let _ = sh(&["ip", "netns", "del", &p.netns]);
        }
    }
    stop_all(&[state.forward_pid, state.front_pid]);
    for n in &state.nodes {
        stop(n.agent_pid);
    }
    // containerd and its shims (its mount namespace), the containers (the lab's cgroups; they
    // have mount namespaces of their own) and anything else left in those cgroups.
    containerd::kill_all(&dir, &lab);
    // The API servers before etcd, so they can hand the controller Lease back on the way out.
    let mut api_pids: Vec<i32> = state.api_servers.iter().map(|a| a.pid).collect();
    api_pids.push(state.control_pid);
    stop_all(&api_pids);
    // etcd's data goes next, so SIGKILL: SIGTERM to all members at once makes the leader try
    // to hand its leadership to members that are stopping too, which takes seconds.
    for m in &state.etcd {
        if let Err(e) = kill_now(m.pid) {
            eprintln!("etcd member {}: {e:#}", m.name);
        }
    }
    for n in &state.nodes {
        let _ = sh(&["ip", "netns", "del", &n.netns]);
    }
    let _ = sh(&["ip", "netns", "del", &lab]);
    // Anything else carrying the lab's prefix (a half-made pod, say).
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&lab) {
                let _ = sh(&["ip", "netns", "del", ns]);
            }
        }
    }
    // The ebpf mode's pins (maps and program links): unpinned, the links go and their programs
    // leave the node cgroups; then the bpffs the agents mounted there.
    let bpf = dir.join("bpf");
    if bpf.exists() {
        if let Ok(entries) = std::fs::read_dir(&bpf) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let _ = nix::mount::umount2(&bpf, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&bpf);
    }
    remove_lab_cgroups(&lab);
    let sandboxes: Vec<String> = state
        .nodes
        .iter()
        .filter_map(|n| n.containerd.as_ref())
        .flat_map(containerd::sandbox_ids)
        .collect();
    containerd::remove_cni_result_caches(&sandboxes);
    for n in &state.nodes {
        if let Some(c) = &n.containerd {
            containerd::remove_shim_sockets(c);
            containerd::remove_dir(c);
        }
    }
    // etcd's data is the cluster itself (API server data dirs keep only PKI and tokens).
    for d in ["images", "cni-bin", "etcd"] {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
    // The agents' volume directories (emptyDirs, ConfigMap and Secret files).
    for n in &state.nodes {
        let _ = std::fs::remove_dir_all(dir.join("nodes").join(&n.name).join("kubelet"));
    }
    for f in ["kubeconfig", "forward.port", "front.port", "cluster.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::remove_file(dir.join("lab.json"))?;
    println!(
        "lab {lab} is down ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Removes `/<lab>` in every cgroup hierarchy: the unified one (the lab's process pods, and
/// CRI pods' cgroups if runc made them there) and each cgroup v1 controller's (CRI pods'
/// cgroup parent `/<lab>/<node>/kubepods/…`). runc removes its containers' cgroups, not the
/// parents it was given. Retried briefly: a cgroup stays busy while its last tasks exit.
fn remove_lab_cgroups(lab: &str) {
    let roots = || -> Vec<PathBuf> {
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(lab))
            .filter(|p| p.is_dir())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for r in roots() {
            remove_cgroups(&r);
        }
        let left = roots();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("cgroups left: {left:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a cgroup tree bottom-up (cgroup directories are removed with rmdir once empty).
fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Up {
            nodes,
            proxy_mode,
            dir,
            no_containerd,
            control_args,
            agent_args,
            control_planes,
            etcd,
        } => up(
            nodes,
            &proxy_mode,
            &dir,
            no_containerd,
            Extra {
                control_args,
                agent_args,
            },
            Topology {
                control_planes,
                etcd,
            },
        ),
        Cmd::Down { dir } => down(&dir),
        Cmd::Pod {
            cmd:
                PodCmd::Create {
                    dir,
                    node,
                    name,
                    namespace,
                    labels,
                    cmd,
                },
        } => pod_create(&dir, &node, &name, &namespace, &labels, &cmd),
        Cmd::Pod {
            cmd: PodCmd::Delete { dir, pod },
        } => pod_delete(&dir, &pod),
        Cmd::Agent {
            cmd:
                AgentCmd::Restart {
                    dir,
                    node,
                    proxy_mode,
                    agent_args,
                },
        } => agent_restart(&dir, node.as_deref(), proxy_mode.as_deref(), &agent_args),
        Cmd::Exec { dir, pod, cmd } => std::process::exit(exec(&dir, &pod, &cmd)?),
        Cmd::Forward {
            netns,
            to,
            listen_in_netns,
            port_file,
        } => forward::run(&netns, to, listen_in_netns, &port_file),
        Cmd::Control {
            cmd: ControlCmd::Kill { dir, index },
        } => control_kill(&dir, index),
        Cmd::Control {
            cmd: ControlCmd::Start { dir, index },
        } => control_start(&dir, index),
        Cmd::Etcd {
            cmd: EtcdCmd::Kill { dir, member },
        } => etcd_kill(&dir, member),
        Cmd::Etcd {
            cmd: EtcdCmd::Start { dir, member },
        } => etcd_start(&dir, member),
    }
}
