//! `sluice-control`: the Sluice control plane binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sluice_control::{auth, tls, Server, ServerConfig, StoreBackend};

/// Sluice control plane: a Kubernetes-compatible API server (namespaces, nodes, pods,
/// services, endpoints, endpointslices, deployments, leases) on an embedded durable store or etcd
/// and the networking controllers. Writes DATA_DIR/admin.kubeconfig for kubectl.
#[derive(Parser, Debug)]
#[command(name = "sluice-control", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage credentials.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Copy a stopped control plane's objects from its redb store into etcd, then verify the
    /// copy. Serve on `--store etcd` with the same --data-dir afterwards (PKI and tokens live
    /// there). Refuses a target that already holds objects unless --overwrite-existing.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
struct MigrateArgs {
    /// Source store: `redb:<data dir>` or `redb:<path to store.redb>`. The server using it
    /// must be stopped (its lock is held while it runs).
    #[arg(long, value_name = "redb:PATH")]
    from: String,
    /// Target store: `etcd:<URL>[,<URL>...]`, the etcd client URLs.
    #[arg(long, value_name = "etcd:URL[,URL...]")]
    to: String,
    #[command(flatten)]
    etcd: EtcdConn,
    /// Copy even if the target already holds objects under the prefix: keys in both are
    /// replaced by the source's objects, the others added; no target key is deleted.
    #[arg(long)]
    overwrite_existing: bool,
    /// Open both stores and count what would be copied; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Mint (or reuse) the bearer token of a node and print it; with --kubeconfig-out, also
    /// write a kubeconfig for that node. Works while the server runs.
    Create {
        /// Node name: the token acts as `system:node:<NODE>`.
        #[arg(long)]
        node: String,
        /// Data directory of the control plane.
        #[arg(long, default_value = "/var/lib/sluice/control")]
        data_dir: PathBuf,
        /// Write a kubeconfig for the node here (server URL taken from admin.kubeconfig).
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Directory for the store, PKI, tokens and admin.kubeconfig.
    #[arg(long, default_value = "/var/lib/sluice/control")]
    data_dir: PathBuf,
    /// Address and port to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address clients should use (written into kubeconfigs and the serving certificate).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// CIDR Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::IpNet,
    /// Inclusive NodePort range, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// CIDR node podCIDRs are carved from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Seconds without a heartbeat before a node's Ready condition becomes Unknown.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Seconds between node health checks.
    #[arg(long, default_value_t = 5)]
    node_monitor_period: u64,
    /// Most endpoints in one EndpointSlice.
    #[arg(long, default_value_t = 100)]
    max_endpoints_per_slice: usize,
    /// Object store: `redb` (embedded in DATA_DIR, one API server) or `etcd` (an etcd v3
    /// cluster that any number of API servers share; see --etcd-*).
    #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
    store: StoreKind,
    /// etcd client URLs, comma-separated (`--store etcd`).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    #[command(flatten)]
    etcd: EtcdConn,
    /// Interval between compactions of etcd's history, e.g. `5m`, `30s`; `0` never compacts
    /// (several API servers compact in turn, one per interval).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: Duration,
    /// Run the controllers only while holding the controller Lease
    /// (`kube-system/sluice-controller-manager`), so that of several API servers on one store
    /// exactly one runs them. `--leader-elect=false` runs them unconditionally.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This instance's name in the controller Lease (default `<hostname>_<listen address>`;
    /// it must differ between instances and stay the same across restarts).
    #[arg(long)]
    leader_elect_identity: Option<String>,
    /// How long other instances wait after the last renewal they saw before taking over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader retries renewing before it stops its controllers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// Pause between attempts to acquire or renew the Lease.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// How the `kubernetes` Service's endpoints are kept: `lease` (each API server renews a
    /// lease in the store and the endpoints list every live one, as kube-apiserver's default)
    /// or `none` (only the Service is written).
    #[arg(long, value_enum, default_value_t = EndpointReconcilerType::Lease)]
    endpoint_reconciler_type: EndpointReconcilerType,
    /// How often an API server renews its endpoint lease (kube-apiserver: a fixed 10 s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    endpoint_reconciler_interval: Duration,
    /// How long an endpoint lease may go unrenewed before its address is taken out
    /// (kube-apiserver: a fixed 15 s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    endpoint_reconciler_lease_ttl: Duration,
    /// Events kept for watches that resume from an older resourceVersion.
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Events a watcher may fall behind before it is closed (it must then relist).
    #[arg(long, default_value_t = 4_096)]
    watch_buffer: usize,
    /// Non-mutating requests in flight at once (watches excluded); more are answered 429.
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Mutating requests in flight at once; more are answered 429.
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
    /// Seconds a request body may take to arrive (504 after).
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Connections that have not sent an authenticated request, at most; when full, the
    /// oldest of them is closed to make room.
    #[arg(long, default_value_t = 4_096)]
    max_unauthenticated_connections: usize,
}

/// How to reach etcd (`serve --store etcd` and `migrate`).
#[derive(Args, Debug)]
struct EtcdConn {
    /// Key prefix of this cluster's objects in etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// CA bundle to verify etcd's serving certificates (https endpoints).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// Longest wait for one etcd request (writes fail with 504 after it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    etcd_request_timeout: Duration,
}

impl EtcdConn {
    /// Store options for `endpoints` (no compaction: the caller sets it).
    fn options(&self, endpoints: Vec<String>) -> sluice_store::EtcdOptions {
        let any_tls = self.etcd_cafile.is_some()
            || self.etcd_certfile.is_some()
            || self.etcd_keyfile.is_some();
        sluice_store::EtcdOptions {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            tls: any_tls.then(|| sluice_store::EtcdTls {
                ca_file: self.etcd_cafile.clone(),
                cert_file: self.etcd_certfile.clone(),
                key_file: self.etcd_keyfile.clone(),
            }),
            compaction_interval: None,
            request_timeout: self.etcd_request_timeout,
            ..sluice_store::EtcdOptions::default()
        }
    }
}

/// `--endpoint-reconciler-type`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointReconcilerType {
    /// Leases in the store, one per API server.
    Lease,
    /// Do not write endpoints.
    None,
}

/// `--store`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Redb,
    Etcd,
}

/// `90`, `90s`, `5m`, `1h`, `250ms`.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected a duration like 30s or 5m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => bail!("{s:?}: unknown unit {other:?} (ms, s, m, h)"),
    })
}

fn parse_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s.split_once('-').context("expected LOW-HIGH")?;
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    if a > b {
        bail!("range {s}: LOW is above HIGH");
    }
    Ok((a, b))
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    match sluice_control::conn::raise_file_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let mut cfg = ServerConfig::new(a.data_dir);
    cfg.listen = a.listen;
    cfg.advertise_address = a.advertise_address;
    cfg.tls_sans = a.tls_san;
    cfg.registry.service_cidr = a.service_cidr;
    cfg.registry.node_port_range =
        parse_range(&a.service_node_port_range).context("--service-node-port-range")?;
    cfg.registry.cluster_cidr = a.cluster_cidr;
    cfg.registry.node_cidr_mask = a.node_cidr_mask_size;
    cfg.controllers.node_monitor_grace_period = Duration::from_secs(a.node_monitor_grace_period);
    cfg.controllers.node_monitor_period = Duration::from_secs(a.node_monitor_period.max(1));
    cfg.controllers.max_endpoints_per_slice = a.max_endpoints_per_slice.max(1);
    if a.store == StoreKind::Etcd {
        cfg.backend = StoreBackend::Etcd(sluice_store::EtcdOptions {
            compaction_interval: (!a.etcd_compaction_interval.is_zero())
                .then_some(a.etcd_compaction_interval),
            ..a.etcd.options(a.etcd_endpoints.clone())
        });
    }
    if a.leader_elect_renew_deadline >= a.leader_elect_lease_duration {
        bail!("--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration");
    }
    if a.leader_elect_retry_period.is_zero() {
        bail!("--leader-elect-retry-period must be positive");
    }
    cfg.leader.enabled = a.leader_elect;
    cfg.leader.identity = a.leader_elect_identity.clone().unwrap_or_default();
    cfg.leader.lease_duration = a.leader_elect_lease_duration;
    cfg.leader.renew_deadline = a.leader_elect_renew_deadline;
    cfg.leader.retry_period = a.leader_elect_retry_period;
    if a.endpoint_reconciler_interval.is_zero()
        || a.endpoint_reconciler_lease_ttl <= a.endpoint_reconciler_interval
    {
        bail!("--endpoint-reconciler-lease-ttl must exceed --endpoint-reconciler-interval (> 0)");
    }
    cfg.endpoint_reconciler.enabled = a.endpoint_reconciler_type == EndpointReconcilerType::Lease;
    cfg.endpoint_reconciler.interval = a.endpoint_reconciler_interval;
    cfg.endpoint_reconciler.lease_ttl = a.endpoint_reconciler_lease_ttl;
    cfg.store.history = a.watch_history;
    cfg.store.watch_buffer = a.watch_buffer;
    cfg.limits.max_requests_inflight = a.max_requests_inflight.max(1);
    cfg.limits.max_mutating_requests_inflight = a.max_mutating_requests_inflight.max(1);
    cfg.limits.request_timeout = Duration::from_secs(a.request_timeout.max(1));
    cfg.limits.max_request_body_bytes = a.max_request_bytes;
    cfg.limits.max_unauthenticated_connections = a.max_unauthenticated_connections.max(1);
    let server = Server::start(cfg).await?;
    println!(
        "sluice-control serving on https://{}\nkubectl --kubeconfig {} get nodes",
        server.addr,
        server.kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!(signal = why, "shutting down");
    server.shutdown().await;
    Ok(())
}

fn token_create(node: &str, data_dir: PathBuf, out: Option<PathBuf>) -> anyhow::Result<()> {
    let token = auth::mint_token(
        &sluice_control::tokens_path(&data_dir),
        &auth::User::node(node),
    )?;
    if let Some(out) = out {
        let admin = std::fs::read_to_string(data_dir.join("admin.kubeconfig"))
            .context("reading admin.kubeconfig (start the server once first)")?;
        let field = |k: &str| {
            admin
                .lines()
                .find_map(|l| l.trim().strip_prefix(k).map(|v| v.trim().to_string()))
                .with_context(|| format!("admin.kubeconfig has no {k}"))
        };
        let server = field("server:")?;
        let ca = std::fs::read_to_string(data_dir.join("ca.crt")).context("reading ca.crt")?;
        tls::write_kubeconfig(
            &out,
            &tls::kubeconfig(&server, &ca, &format!("system:node:{node}"), &token),
        )?;
    }
    println!("{token}");
    Ok(())
}

async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    use sluice_control::migrate;
    let from = migrate::parse_from(&a.from)?;
    let endpoints = migrate::parse_to(&a.to)?;
    // The source first: a running server (the usual mistake) is reported before etcd is
    // contacted at all.
    let source = migrate::open_redb_source(&from)?;
    let target = migrate::open_etcd_target(a.etcd.options(endpoints.clone())).await?;
    println!(
        "migrating {} -> etcd {} (prefix {})",
        migrate::redb_file(&from).display(),
        endpoints.join(","),
        a.etcd.etcd_prefix
    );
    let opts = migrate::MigrateOptions {
        overwrite_existing: a.overwrite_existing,
        dry_run: a.dry_run,
    };
    let report = migrate::migrate(&source, &target, &opts).await?;
    print!("{report}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            command:
                TokenCommand::Create {
                    node,
                    data_dir,
                    kubeconfig_out,
                },
        }) => token_create(&node, data_dir, kubeconfig_out),
        Some(Command::Migrate(args)) => migrate(args).await,
        None => serve(cli.serve).await,
    }
}
