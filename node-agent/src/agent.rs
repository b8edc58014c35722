//! The agent's loops: registration and heartbeats against the API, and one Node watcher
//! that drives the routes, the CNI conflist and the masquerade rules.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use sluice_proxy::mode::ModeContext;

use crate::cache::NodeCache;
use crate::cli::{Cli, ProxyMode};
use crate::health::{self, ProxyHealth};
use crate::healthcheck::ServiceHealthServer;
use crate::netlink::Netlink;
use crate::status::{self, Identity};
use crate::{conflist, masq, routes};

/// The Ready condition's lastHeartbeatTime is refreshed every this many Lease renewals.
pub const STATUS_EVERY: u64 = 4;
/// Full resync of routes and the conflist (also the retry delay after a failed apply).
pub const RESYNC: Duration = Duration::from_secs(5);

/// Builds a client from a kubeconfig file.
pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    Client::try_from(cfg).context("building the API client")
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let modes = crate::modes::table();
    let chosen = crate::modes::lookup(&modes, cli.proxy_mode).map_err(anyhow::Error::msg)?;
    // Health and metrics first, so probes see 503 (not a refused connection) while starting.
    let proxying = cli.proxy_mode != ProxyMode::None;
    let proxy_health = Arc::new(if proxying {
        // kube-proxy's healthz timeout: twice the sync period.
        ProxyHealth::new(cli.sync_period.saturating_mul(2))
    } else {
        ProxyHealth::always_healthy()
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let proxy_metrics = proxying.then(|| {
        let m = sluice_proxy::metrics::ProxyMetrics::new();
        m.register(&mut registry);
        m
    });
    let mut servers = Vec::new();
    if let Some(addr) = cli.healthz_bind_address.0 {
        servers.push(tokio::spawn(health::serve(
            "healthz",
            addr,
            health::healthz_router(proxy_health.clone()),
        )));
    }
    if let Some(addr) = cli.metrics_bind_address.0 {
        servers.push(tokio::spawn(health::serve(
            "metrics",
            addr,
            health::metrics_router(registry),
        )));
    }
    let client = client(&cli.kubeconfig).await?;
    let nl = Netlink::connect()?;
    let node_ip: IpAddr = match cli.node_ip {
        Some(ip) => ip,
        None => nl
            .first_global_ipv4()
            .await?
            .map(IpAddr::V4)
            .context("no global IPv4 address in this network namespace: pass --node-ip")?,
    };
    // The kubelet API (`kubectl logs`/`exec`) is served when the agent runs pods.
    let kubelet_port = (cli.container_runtime_endpoint.is_some() && cli.kubelet_port != 0)
        .then_some(cli.kubelet_port);
    let id = Identity {
        kubelet_port: kubelet_port.map(i32::from),
        ..Identity::probe(&cli.node_name, node_ip)
    };
    tracing::info!(node = %id.name, %node_ip, "starting sluice-agent");
    enable_forwarding();
    let mut ctx = ModeContext::new(id.name.clone());
    ctx.node_ips = vec![node_ip];
    ctx.cluster_cidr = Some(cli.cluster_cidr.into());
    ctx.ipvs_scheduler = Some(cli.ipvs_scheduler.clone());
    ctx.runtime = Some(tokio::runtime::Handle::current());
    ctx.cgroup = crate::modes::cgroup2_dir(&cli.cgroup_root);
    ctx.bpf_dir = cli.bpf_dir.join(&id.name);
    ctx.external_interface = match &cli.external_interface {
        Some(i) => Some(i.clone()),
        None => nl.interface_of(node_ip).await?,
    };
    ctx.iptables = crate::modes::iptables_commands(cli.iptables_backend, &modes, &ctx);
    let ipt = ctx.iptables.clone();
    if let Some(m) = chosen {
        m.probe(&ctx)
            .map_err(|why| anyhow::anyhow!("--proxy-mode {} cannot run here: {why}", m.name()))?;
    }
    if chosen.is_none() {
        crate::modes::remove_others(&modes, None, &ctx);
    }

    // Register before anything else, retrying while the API server is unreachable.
    let mut delay = Duration::from_millis(200);
    loop {
        match sync_status(&client, &id, true).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "registering the node failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::info!(node = %id.name, "node registered");

    let cri = match &cli.container_runtime_endpoint {
        Some(ep) => Some(
            crate::pods::cri::Cri::connect(ep)
                .await
                .with_context(|| format!("container runtime {ep}"))?,
        ),
        None => None,
    };
    let hb = tokio::spawn(heartbeat(
        client.clone(),
        id.clone(),
        cli.heartbeat_interval,
        cri.clone(),
    ));
    let pods = cri.clone().map(|cri| {
        let settings = crate::pods::spec::Settings {
            pod_logs_dir: cli.pod_logs_dir.clone(),
            cgroup_root: cli.cgroup_root.clone(),
            root_dir: cli.root_dir.clone(),
            node_ip: node_ip.to_string(),
        };
        tracing::info!(endpoint = ?cli.container_runtime_endpoint, "running this node's pods through the CRI");
        tokio::spawn(crate::pods::run(
            client.clone(),
            cri,
            settings,
            id.name.clone(),
        ))
    });
    let kubelet_api = match (kubelet_port, &cri) {
        (Some(port), Some(cri)) => Some(
            crate::pods::server::start(
                std::net::SocketAddr::new(node_ip, port),
                &cli.kubeconfig,
                &id.name,
                cri.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    let opts = crate::proxy::ProxyOptions {
        node_name: id.name.clone(),
        proxy_name: cli.proxy_name.clone(),
        min_sync_period: cli.min_sync_period,
        sync_period: cli.sync_period,
    };
    let extras = crate::proxy::ProxyExtras {
        metrics: proxy_metrics.clone(),
        health: Some(proxy_health.clone()),
        service_health: Some(Arc::new(ServiceHealthServer::new(
            Ipv4Addr::UNSPECIFIED.into(),
            proxy_health.clone(),
        ))),
        full_sync_period: Some(cli.full_sync_period),
        after_first_sync: None,
    };
    let proxy = match chosen {
        Some(m) => {
            let dataplane = m
                .build(&ctx)
                .with_context(|| format!("starting the {} proxy mode", m.name()))?;
            // A live mode switch: the old mode's rules stay until the new one has programmed
            // every Service, so no new connection meets a node with neither in place. (Both at
            // once is harmless: whichever translates first wins, and either sends the
            // connection to a usable endpoint.)
            let keep = m.name();
            let cleanup_ctx = ctx.clone();
            let extras = crate::proxy::ProxyExtras {
                after_first_sync: Some(Box::new(move || {
                    crate::modes::remove_others(&crate::modes::table(), Some(keep), &cleanup_ctx)
                })),
                ..extras
            };
            Some(tokio::spawn(crate::proxy::run_with(
                client.clone(),
                opts,
                dataplane,
                extras,
            )))
        }
        None => None,
    };

    let mut sync = Syncer::new(nl, cli.clone(), ipt);
    let mut stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut cache = NodeCache::default();
    let mut tick = tokio::time::interval(RESYNC);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let dirty = tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(ev)) => cache.apply(ev),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch failed; retrying with backoff");
                    false
                }
                None => bail!("node watch ended"),
            },
            _ = tick.tick() => cache.synced(),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        if dirty {
            sync.sync(&cache).await;
        }
    }
    hb.abort();
    // Pods keep running: a restarted agent adopts them.
    if let Some(p) = pods {
        p.abort();
    }
    if let Some(p) = proxy {
        p.abort();
    }
    if let Some(k) = kubelet_api {
        k.abort();
    }
    for s in servers {
        s.abort();
    }
    tracing::info!("shutting down (routes, CNI configuration and proxy rules are left in place)");
    Ok(())
}

fn enable_forwarding() {
    const P: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(P).is_ok_and(|s| s.trim() == "1") {
        return;
    }
    match std::fs::write(P, "1") {
        Ok(()) => tracing::info!("enabled IPv4 forwarding"),
        Err(e) => tracing::warn!(error = %e, "could not enable IPv4 forwarding"),
    }
}

/// Creates the Node if missing and writes its status when it differs from what `id` says
/// (always when `heartbeat`). Returns whether status was written. A write that loses an
/// optimistic-concurrency race (409, e.g. against the podCIDR allocator) is retried on a
/// fresh read.
pub async fn sync_status(client: &Client, id: &Identity, heartbeat: bool) -> anyhow::Result<bool> {
    let mut attempt = 0;
    loop {
        match sync_status_once(client, id, heartbeat).await {
            Err(SyncError::Conflict) if attempt < 5 => attempt += 1,
            Err(SyncError::Conflict) => bail!("updating node status: repeated 409 conflicts"),
            Err(SyncError::Other(e)) => return Err(e),
            Ok(written) => return Ok(written),
        }
    }
}

enum SyncError {
    Conflict,
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SyncError {
    fn from(e: E) -> Self {
        SyncError::Other(e.into())
    }
}

async fn sync_status_once(
    client: &Client,
    id: &Identity,
    heartbeat: bool,
) -> Result<bool, SyncError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node = match nodes.get_opt(&id.name).await.context("getting the node")? {
        Some(n) => n,
        None => {
            tracing::info!(node = %id.name, "creating the node");
            match nodes.create(&PostParams::default(), &id.new_node()).await {
                Ok(n) => n,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    nodes.get(&id.name).await.context("getting the node")?
                }
                Err(e) => return Err(anyhow::Error::from(e).context("creating the node").into()),
            }
        }
    };
    let st = node.status.get_or_insert_with(Default::default);
    if !status::apply_status(st, id, Timestamp::now(), heartbeat) {
        return Ok(false);
    }
    match nodes
        .replace_status(&id.name, &PostParams::default(), &node)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(SyncError::Conflict),
        Err(e) => Err(anyhow::Error::from(e)
            .context("updating node status")
            .into()),
    }
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(client: &Client, name: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), status::LEASE_NAMESPACE);
    let existing = leases.get_opt(name).await.context("getting the lease")?;
    let create = existing.is_none();
    let lease = status::renew_lease(existing, name, Timestamp::now());
    if create {
        leases
            .create(&PostParams::default(), &lease)
            .await
            .context("creating the lease")?;
    } else {
        leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .context("renewing the lease")?;
    }
    Ok(())
}

async fn heartbeat(
    client: Client,
    mut id: Identity,
    every: Duration,
    cri: Option<crate::pods::cri::Cri>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        if let Some(cri) = &cri {
            // The runtime's version and images, as kubelet reports them.
            match cri.version().await {
                Ok(v) => id.info.container_runtime_version = v,
                Err(e) => tracing::warn!(error = %e, "container runtime version"),
            }
            match crate::pods::node_images(cri).await {
                Ok(images) => id.images = Some(images),
                Err(e) => tracing::warn!(error = %e, "listing images"),
            }
        }
        if let Err(e) = renew_lease(&client, &id.name).await {
            tracing::warn!(error = %format!("{e:#}"), "lease renewal failed");
        }
        // Every tick: restores Ready=True at once if the lifecycle controller changed it
        // (and re-registers a deleted node); every STATUS_EVERY ticks: heartbeat time too.
        match sync_status(&client, &id, n.is_multiple_of(STATUS_EVERY)).await {
            Ok(true) => tracing::debug!("node status written"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "node status update failed"),
        }
        n += 1;
    }
}

/// Applies the cache's view to the kernel and the CNI directory.
struct Syncer {
    nl: Netlink,
    cli: Cli,
    /// The iptables backend's tools (`--iptables-backend`), shared with the proxy.
    ipt: sluice_proxy_iptables::apply::Commands,
    masq_done: Option<Ipv4Net>,
    waiting_logged: bool,
}

impl Syncer {
    fn new(nl: Netlink, cli: Cli, ipt: sluice_proxy_iptables::apply::Commands) -> Syncer {
        Syncer {
            nl,
            cli,
            ipt,
            masq_done: None,
            waiting_logged: false,
        }
    }

    async fn sync(&mut self, cache: &NodeCache) {
        let me = self.cli.node_name.clone();
        if let Err(e) = self.sync_routes(cache, &me).await {
            tracing::warn!(error = %format!("{e:#}"), "route sync failed; retrying");
        }
        match cache.get(&me).and_then(routes::pod_cidr) {
            Some(cidr) => self.sync_local(cidr),
            None if !self.waiting_logged => {
                tracing::info!(node = %me, "waiting for the node's spec.podCIDR");
                self.waiting_logged = true;
            }
            None => {}
        }
    }

    async fn sync_routes(&self, cache: &NodeCache, me: &str) -> anyhow::Result<()> {
        let want = routes::desired(cache.nodes(), me);
        routes::reconcile(&self.nl, &want).await?;
        Ok(())
    }

    fn sync_local(&mut self, cidr: Ipv4Net) {
        match conflist::render(
            cidr,
            &self.cli.bridge,
            self.cli.cni_ipam_data_dir.as_deref(),
        )
        .and_then(|c| conflist::write_if_changed(&self.cli.cni_conf_dir, &c))
        {
            Ok(true) => tracing::info!(
                pod_cidr = %cidr,
                path = %self.cli.cni_conf_dir.join(conflist::FILE_NAME).display(),
                "CNI configuration written"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "writing the CNI configuration failed")
            }
        }
        if self.masq_done != Some(cidr) {
            match masq::apply(&self.ipt, cidr, self.cli.cluster_cidr) {
                Ok(true) => {
                    tracing::info!(pod_cidr = %cidr, "masquerade rules installed");
                    self.masq_done = Some(cidr);
                }
                Ok(false) => {
                    tracing::info!("iptables not found: no masquerade rules");
                    self.masq_done = Some(cidr);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "installing masquerade rules failed")
                }
            }
        }
    }
}
