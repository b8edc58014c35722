//! Command-line flags of `sluice-agent`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

/// Sluice node agent: registers this node with the control plane (sluice-control or any
/// Kubernetes API server), heartbeats it (Lease + Ready condition), writes the node's CNI
/// network configuration once the node has a podCIDR, routes every other node's podCIDR via that
/// node's InternalIP, and proxies Services (`--proxy-mode`). Without a subcommand the agent runs
/// with the flags below; `sluice-agent debug dump` prints what a proxy mode programmed.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-agent",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Invocation {
    /// A subcommand; without one the agent runs with the flags below.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The agent's flags.
    #[command(flatten)]
    pub run: Option<Cli>,
}

/// `sluice-agent` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Troubleshooting helpers that read this node's state; they change nothing.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Container images in the node's containerd.
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `sluice-agent image …`.
#[derive(Subcommand, Debug, Clone)]
pub enum ImageCommand {
    /// Imports OCI image tarballs (image layouts, as `docker save`/`ctr export` write) into the
    /// runtime's `k8s.io` namespace, where the CRI finds them. CRI has no import call, so this
    /// runs containerd's own client, `ctr images import`, against the endpoint's socket.
    Import(ImportArgs),
}

/// Flags of `sluice-agent image import`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// containerd's socket (`unix:///run/containerd/containerd.sock` or a plain path).
    #[arg(long, default_value = DEFAULT_RUNTIME_ENDPOINT)]
    pub container_runtime_endpoint: String,
    /// Tarballs to import.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// containerd's default socket, as kubelet's `--container-runtime-endpoint` names it.
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// `sluice-agent debug …`.
#[derive(Subcommand, Debug, Clone)]
pub enum DebugCommand {
    /// Prints what a proxy mode programmed into the kernel of the current network namespace,
    /// in the same text as that mode's golden render files (iptables: the `SLUICE-` chains of
    /// the nat and filter tables as iptables-restore input, fixed chains first, then the rest
    /// by name; the jumps from the built-in chains are left out).
    Dump(DumpArgs),
}

/// Flags of `sluice-agent debug dump`.
#[derive(Args, Debug, Clone)]
pub struct DumpArgs {
    /// Proxy mode whose kernel state to print.
    #[arg(long, value_enum, default_value_t = ProxyMode::Iptables)]
    pub proxy_mode: ProxyMode,
    /// The node whose state to print (modes with per-node state on bpffs: ebpf).
    #[arg(long, default_value = "")]
    pub node_name: String,
    /// The agents' bpffs directory (`--bpf-dir` of the agent).
    #[arg(long, default_value = sluice_proxy::mode::DEFAULT_BPF_ROOT)]
    pub bpf_dir: PathBuf,
}

/// Sluice node agent: registers this node with the control plane (sluice-control or any
/// Kubernetes API server), heartbeats it (Lease + Ready condition), writes the node's CNI
/// network configuration once the node has a podCIDR, and routes every other node's podCIDR
/// via that node's InternalIP (no overlay, no NAT inside the cluster CIDR; traffic from pods to
/// outside the cluster CIDR is masqueraded).
#[derive(Parser, Debug, Clone)]
#[command(name = "sluice-agent", version)]
pub struct Cli {
    /// Kubeconfig with this node's credentials (e.g. from `sluice-control token create`).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Name of this node (the Node object and its Lease in kube-node-lease).
    #[arg(long)]
    pub node_name: String,
    /// InternalIP to report; other nodes route this node's podCIDR via it. Default: the first
    /// global IPv4 address in the agent's network namespace.
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Service proxy mode: `none` (no Service proxying), `userspace`, `iptables`, `ipvs` (kernel
    /// IPVS virtual servers; needs `ip_vs`), `nftables` or `ebpf` (connect-time load balancing
    /// in cgroup socket hooks below `--cgroup-root`, NodePorts in tc programs).
    #[arg(long, value_enum, default_value_t = ProxyMode::None)]
    pub proxy_mode: ProxyMode,
    /// IPVS scheduler of the `ipvs` proxy mode's virtual servers: `rr` (round robin), `wrr`,
    /// `lc` (least connection), `wlc`, `lblc`, `lblcr`, `dh`, `sh` (source hashing), `sed`,
    /// `nq`, `fo`, `ovf`, `mh` (Maglev hashing) or `twos`.
    #[arg(long, default_value = "rr", value_parser = parse_ipvs_scheduler)]
    pub ipvs_scheduler: String,
    /// Directory the CNI network configuration (10-sluice.conflist) is written to.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Directory holding the CNI plugin binaries (sluice-cni, portmap). Recorded for the pod
    /// runtime; the agent itself does not run plugins yet.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Directory of the host-local IPAM leases, written into the CNI configuration as
    /// `ipam.dataDir` (default: the plugin's, `/var/lib/cni/networks`).
    #[arg(long)]
    pub cni_ipam_data_dir: Option<PathBuf>,
    /// containerd's CRI socket (`unix:///run/containerd/containerd.sock`). Given, the agent runs
    /// the pods bound to this node as kubelet does: sandboxes and containers through the CRI,
    /// status, restarts, probes. Without it the agent only networks the node and proxies.
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// Port of the kubelet API (`/containerLogs`, `/exec` over HTTPS, for the API server's
    /// `kubectl logs` and `kubectl exec`), on the node IP; served only when the agent runs pods
    /// (`--container-runtime-endpoint`) and reported in the Node's
    /// `status.daemonEndpoints.kubeletEndpoint`. `0` disables it.
    #[arg(long, default_value_t = crate::pods::server::DEFAULT_PORT)]
    pub kubelet_port: u16,
    /// Where containers' logs go: `<dir>/<namespace>_<pod>_<uid>/<container>/<restarts>.log`,
    /// kubelet's layout under `/var/log/pods`.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// Directory for pods' volumes (`<dir>/pods/<uid>/volumes/…`), kubelet's `--root-dir`.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,
    /// cgroup under which pods' cgroups are made (`<root>/kubepods/pod<uid>`), in every
    /// hierarchy the runtime uses.
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// bpffs directory of the ebpf proxy mode: its maps and program links are pinned under
    /// `<dir>/<node name>`, so they outlive the agent (a restart keeps every connection and
    /// every Service working) and several agents on one machine keep apart.
    #[arg(long, default_value = sluice_proxy::mode::DEFAULT_BPF_ROOT)]
    pub bpf_dir: PathBuf,
    /// Interface traffic from outside the node arrives on (the ebpf mode's NodePort programs
    /// attach there). Default: the interface holding the node IP.
    #[arg(long)]
    pub external_interface: Option<String>,
    /// Name of the pod bridge written into the CNI configuration.
    #[arg(long, default_value = "sluice0")]
    pub bridge: String,
    /// Interval between Lease renewals (e.g. `10s`, `500ms`, `1m`); the Ready condition's
    /// lastHeartbeatTime is refreshed every 4 intervals.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// The cluster's pod CIDR: traffic from this node's pods to destinations outside it is
    /// masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// Least time between the end of one proxy sync and the start of the next (changes arriving
    /// meanwhile coalesce into one sync).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// Longest time between proxy syncs. The periodic sync is partial (only what changed is
    /// rewritten); see `--full-sync-period` for the forced full resync.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// Period of the forced full proxy resync (every rule rewritten from the model), counted from
    /// the end of the last successful full sync; kube-proxy's `FullSyncPeriod` is one hour. The
    /// first sync and the sync after a failed one are always full.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub full_sync_period: Duration,
    /// iptables backend for the iptables proxy mode and the node masquerade (one node never
    /// mixes them): `nft` (iptables-nft), `legacy` (iptables-legacy: x_tables in the kernel,
    /// much faster restores at tens of thousands of chains) or `auto`: the backend that already
    /// holds Sluice's chains (`SLUICE-*`, `SLUICENODE-MASQ`) in this network namespace, else
    /// nft (the idea of kube-proxy's iptables-wrapper). Sluice chains found in the other backend
    /// are removed.
    #[arg(long, value_enum, default_value_t = IptablesBackend::Auto)]
    pub iptables_backend: IptablesBackend,
    /// Handle only Services labelled `service.kubernetes.io/service-proxy-name=<this>` (by
    /// default only Services without that label).
    #[arg(long)]
    pub proxy_name: Option<String>,
    /// Address of the proxy health server (`/healthz`, `/livez`, as kube-proxy's): 200 while
    /// the proxy is healthy — it has synced, and no change has waited more than twice
    /// `--sync-period` for a sync — else 503. `IP:PORT`, or `IP` for port 10256; empty or `0`
    /// disables it.
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = parse_healthz_bind)]
    pub healthz_bind_address: BindAddress,
    /// Address of the metrics server (`/metrics`, OpenMetrics text: the proxy's sync metrics and
    /// process memory). `IP:PORT`, or `IP` for port 10249; empty or `0` disables it.
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = parse_metrics_bind)]
    pub metrics_bind_address: BindAddress,
}

/// Default port of `--healthz-bind-address` (kube-proxy's).
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;
/// Default port of `--metrics-bind-address` (kube-proxy's).
pub const DEFAULT_METRICS_PORT: u16 = 10249;

/// A listen address that may be switched off (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

/// Parses `IP:PORT`, `IP` (with `default_port`), or empty / `0` (disabled).
pub fn parse_bind_address(s: &str, default_port: u16) -> Result<BindAddress, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(BindAddress(None));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(BindAddress(Some(addr)));
    }
    let ip: IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("invalid bind address {s:?}: expected IP:PORT, IP, or empty/0"))?;
    Ok(BindAddress(Some(SocketAddr::new(ip, default_port))))
}

fn parse_healthz_bind(s: &str) -> Result<BindAddress, String> {
    parse_bind_address(s, DEFAULT_HEALTHZ_PORT)
}

fn parse_metrics_bind(s: &str) -> Result<BindAddress, String> {
    parse_bind_address(s, DEFAULT_METRICS_PORT)
}

/// `--iptables-backend`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    /// The backend already holding Sluice's chains, else nft.
    Auto,
    /// iptables-nft (`iptables-nft`, `iptables-nft-save`, `iptables-nft-restore`).
    Nft,
    /// iptables-legacy (`iptables-legacy`, `iptables-legacy-save`, `iptables-legacy-restore`).
    Legacy,
}

/// Service proxy modes (`--proxy-mode`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// No Service proxying.
    None,
    /// Userspace proxy: the agent accepts Service connections itself (a listener per service port,
    /// iptables redirects the Service addresses to it) and relays them to endpoints.
    Userspace,
    /// iptables rules: one iptables-restore transaction per sync, Sluice-owned chains only.
    Iptables,
    /// IPVS: a kernel virtual server per Service address and port (`--ipvs-scheduler`), the
    /// addresses on the dummy link `sluice-ipvs0`, masquerade and filtering in the nftables
    /// table `ip sluice-ipvs`.
    Ipvs,
    /// nftables: Sluice's own tables (`ip sluice`, `ip6 sluice`), front ends dispatched through
    /// verdict maps, endpoints picked from map slots; an endpoint change is element updates.
    Nftables,
    /// eBPF connect-time load balancing: cgroup socket hooks choose the backend when a socket
    /// connects (or sends UDP), so no packet is translated; tc programs serve NodePorts.
    Ebpf,
}

/// Checks an `--ipvs-scheduler` name.
fn parse_ipvs_scheduler(s: &str) -> Result<String, String> {
    sluice_proxy_ipvs::Scheduler::parse(s).map(|sched| sched.as_str().to_string())
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 1m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    let d = Duration::from_secs_f64(secs);
    if d < Duration::from_millis(100) {
        return Err(format!("duration {s:?} is too short (minimum 100ms)"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_and_defaults() {
        Cli::command().debug_assert();
        let c =
            Cli::try_parse_from(["sluice-agent", "--kubeconfig", "k", "--node-name", "n"]).unwrap();
        assert_eq!(c.proxy_mode, ProxyMode::None);
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.bridge, "sluice0");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.min_sync_period, Duration::from_secs(1));
        assert_eq!(c.sync_period, Duration::from_secs(30));
        assert_eq!(c.full_sync_period, Duration::from_secs(3600));
        assert_eq!(c.iptables_backend, IptablesBackend::Auto);
        assert_eq!(c.ipvs_scheduler, "rr");
        assert_eq!(c.proxy_name, None);
        assert_eq!(c.kubelet_port, 10250);
        assert_eq!(
            c.healthz_bind_address.0,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            c.metrics_bind_address.0,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        let c = Cli::try_parse_from([
            "sluice-agent",
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--proxy-mode",
            "iptables",
            "--node-ip",
            "172.30.0.11",
            "--heartbeat-interval",
            "1s",
        ])
        .unwrap();
        assert_eq!(c.proxy_mode, ProxyMode::Iptables);
        assert!(Cli::try_parse_from(["sluice-agent", "--node-name", "n"]).is_err());
        let base = ["sluice-agent", "--kubeconfig", "k", "--node-name", "n"];
        let c = Cli::try_parse_from(base.iter().chain(&["--ipvs-scheduler", "mh"])).unwrap();
        assert_eq!(c.ipvs_scheduler, "mh");
        assert!(Cli::try_parse_from(base.iter().chain(&["--ipvs-scheduler", "fastest"])).is_err());
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--kubeconfig",
            "--node-name",
            "--node-ip",
            "--proxy-mode",
            "--cni-conf-dir",
            "--cni-bin-dir",
            "--bridge",
            "--heartbeat-interval",
            "--cluster-cidr",
            "--full-sync-period",
            "--iptables-backend",
            "--ipvs-scheduler",
            "--healthz-bind-address",
            "--metrics-bind-address",
            "--kubelet-port",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind_address("", 1), Ok(BindAddress(None)));
        assert_eq!(parse_bind_address("0", 1), Ok(BindAddress(None)));
        assert_eq!(
            parse_bind_address("10.0.0.1", 7).unwrap().0,
            Some("10.0.0.1:7".parse().unwrap())
        );
        assert_eq!(
            parse_bind_address("[::1]:9", 7).unwrap().0,
            Some("[::1]:9".parse().unwrap())
        );
        assert!(parse_bind_address("nope:1", 7).is_err());
        let c = Cli::try_parse_from([
            "sluice-agent",
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--healthz-bind-address",
            "",
            "--metrics-bind-address",
            "0",
        ])
        .unwrap();
        assert_eq!(c.healthz_bind_address.0, None);
        assert_eq!(c.metrics_bind_address.0, None);
    }

    #[test]
    fn run_is_the_default_and_debug_dump_needs_no_agent_flags() {
        Invocation::command().debug_assert();
        let i =
            Invocation::try_parse_from(["sluice-agent", "--kubeconfig", "k", "--node-name", "n"])
                .unwrap();
        assert!(i.command.is_none());
        let run = i.run.expect("agent flags");
        assert_eq!(run.node_name, "n");
        assert_eq!(run.proxy_mode, ProxyMode::None);
        assert!(Invocation::try_parse_from(["sluice-agent", "--node-name", "n"]).is_err());
        assert!(Invocation::try_parse_from(["sluice-agent"]).is_err());

        let i = Invocation::try_parse_from(["sluice-agent", "debug", "dump"]).unwrap();
        assert!(i.run.is_none());
        let Some(Command::Debug(DebugCommand::Dump(d))) = i.command else {
            panic!("{i:?}")
        };
        assert_eq!(d.proxy_mode, ProxyMode::Iptables);
        let i = Invocation::try_parse_from([
            "sluice-agent",
            "debug",
            "dump",
            "--proxy-mode",
            "userspace",
        ])
        .unwrap();
        let Some(Command::Debug(DebugCommand::Dump(d))) = i.command else {
            panic!("{i:?}")
        };
        assert_eq!(d.proxy_mode, ProxyMode::Userspace);
        // Agent flags and a subcommand do not mix.
        assert!(
            Invocation::try_parse_from(["sluice-agent", "--kubeconfig", "k", "debug", "dump"])
                .is_err()
        );
        let help = Invocation::command().render_long_help().to_string();
        assert!(
            help.contains("debug") && help.contains("--kubeconfig"),
            "{help}"
        );
    }
}
