//! Sluice's control plane: the API server, registry and networking controllers of the
//! Kubernetes architecture, narrowed to what node networking needs.
//!
//! Data flow:
//! ```text
//! kubectl / kube-rs / python ──HTTPS (bearer token)──► conn: accept, TLS and idle deadlines,
//!                                                        │ unauthenticated-connection cap
//!                                                        ▼
//!                          api (axum): paths, limits (body, in-flight), Table/JSON, watch
//!                                                        │
//!                                                        ▼
//!                          registry: decode → defaults → validate → allocate (IP, ports)
//!                                                        │
//!                                                        ▼
//!                          sluice-store (redb, group commit, watch fan-out)
//!                                                        │ events
//!                                                        ▼
//!                          controllers: endpointslices, node IPAM, node lifecycle, pod GC
//! ```
//!
//! [`Server::start`] wires it together; the `sluice-control` binary is a thin CLI over it.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod conn;
pub mod controllers;
pub mod fsutil;
pub mod leader;
pub mod migrate;
pub mod registry;
pub mod resources;
pub mod selectors;
pub mod status;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{EtcdOptions, EtcdStore, RedbStore, Store, StoreOptions};

use crate::controllers::kubernetes_service;
use crate::registry::{Registry, RegistryConfig};

/// Everything `sluice-control` needs to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--data-dir`: store, PKI, tokens, admin kubeconfig.
    pub data_dir: PathBuf,
    /// `--listen`.
    pub listen: SocketAddr,
    /// Address written into kubeconfigs (defaults to the listen address, or 127.0.0.1 when
    /// listening on all addresses).
    pub advertise_address: Option<IpAddr>,
    /// Extra names for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Allocation ranges.
    pub registry: RegistryConfig,
    /// Controller settings.
    pub controllers: controllers::ControllerConfig,
    /// Leader election of the controllers between API servers.
    pub leader: leader::LeaderConfig,
    /// The `kubernetes` Service's endpoint reconciler.
    pub endpoint_reconciler: EndpointReconcilerConfig,
    /// Where objects are stored.
    pub backend: StoreBackend,
    /// Store tuning (watch history and buffers; both backends).
    pub store: StoreOptions,
    /// Bounds of the random lifetime of watches without `timeoutSeconds` (seconds).
    pub watch_timeout: (u64, u64),
    /// Interval between BOOKMARK events.
    pub bookmark_interval: Duration,
    /// Connection deadlines, body and in-flight limits.
    pub limits: conn::Limits,
}

impl ServerConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        ServerConfig {
            data_dir,
            listen: "127.0.0.1:6443".parse().expect("literal"),
            advertise_address: None,
            tls_sans: Vec::new(),
            registry: RegistryConfig::default(),
            controllers: controllers::ControllerConfig::default(),
            leader: leader::LeaderConfig::default(),
            endpoint_reconciler: EndpointReconcilerConfig::default(),
            backend: StoreBackend::Redb,
            store: StoreOptions::default(),
            watch_timeout: (1800, 3600),
            bookmark_interval: Duration::from_secs(60),
            limits: conn::Limits::default(),
        }
    }
}

/// How API servers keep the `kubernetes` Service's endpoints (`--endpoint-reconciler-type`).
#[derive(Debug, Clone)]
pub struct EndpointReconcilerConfig {
    /// `lease` (true, the default) or `none`.
    pub enabled: bool,
    /// Renewal and rewrite interval.
    pub interval: Duration,
    /// A lease unrenewed this long is deleted with its endpoint.
    pub lease_ttl: Duration,
}

impl Default for EndpointReconcilerConfig {
    fn default() -> Self {
        EndpointReconcilerConfig {
            enabled: true,
            interval: kubernetes_service::RECONCILE_INTERVAL,
            lease_ttl: kubernetes_service::LEASE_TTL,
        }
    }
}

/// The store backend (`--store`).
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// Embedded redb in the data directory: one API server.
    Redb,
    /// An etcd cluster any number of API servers share.
    Etcd(EtcdOptions),
}

/// Start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Data directory or listener I/O.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] sluice_store::StoreError),
    /// PKI.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Tokens.
    #[error(transparent)]
    Tokens(#[from] auth::TokenError),
    /// Bootstrap objects.
    #[error("bootstrapping: {0}")]
    Bootstrap(status::ApiError),
}

/// A running control plane.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// Path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The registry (for in-process use and tests).
    pub registry: Arc<Registry>,
    /// Connection counters of the API listener.
    pub connections: Arc<conn::Tracker>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The endpoint reconciler's task, and a reconciler to take this server out on shutdown.
    endpoints: Option<(
        tokio::task::JoinHandle<()>,
        kubernetes_service::EndpointReconciler,
    )>,
    leader: leader::LeaderConfig,
}

/// Path of the token file in a data directory.
pub fn tokens_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("tokens.json")
}

/// `https://<advertise or listen>:<port>`.
fn server_url(cfg: &ServerConfig, addr: SocketAddr) -> String {
    let ip = cfg
        .advertise_address
        .unwrap_or(if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        });
    SocketAddr::new(ip, addr.port()).to_string()
}

impl Server {
    /// Opens the store, prepares PKI and tokens, binds, and starts serving and the controllers.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let io = |what: String| move |source| ServerError::Io { what, source };
        // The data dir holds the store, the CA key and the tokens: owner only.
        fsutil::private_dir(&cfg.data_dir)
            .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
        let store: Arc<dyn Store> = match &cfg.backend {
            StoreBackend::Redb => {
                let store_path = cfg.data_dir.join("store.redb");
                fsutil::private_file(&store_path)
                    .map_err(io(format!("creating {}", store_path.display())))?;
                Arc::new(RedbStore::open(&store_path, cfg.store.clone())?)
            }
            StoreBackend::Etcd(o) => Arc::new(
                EtcdStore::open(EtcdOptions {
                    history: cfg.store.history,
                    watch_buffer: cfg.store.watch_buffer,
                    ..o.clone()
                })
                .await?,
            ),
        };
        let registry = Arc::new(Registry::new(store, cfg.registry.clone()));
        registry.bootstrap().await.map_err(ServerError::Bootstrap)?;

        let listener = conn::listen(cfg.listen).map_err(io(format!("binding {}", cfg.listen)))?;
        let addr = listener.local_addr().map_err(io("listener".to_string()))?;
        let advertised = server_url(&cfg, addr);
        let mut leader_cfg = cfg.leader.clone();
        if leader_cfg.identity.is_empty() {
            leader_cfg.identity = leader::default_identity(addr);
        }
        let advertised_addr: SocketAddr = advertised.parse().unwrap_or(addr);
        let mut endpoints = kubernetes_service::EndpointReconciler::new(
            &leader_cfg.identity,
            advertised_addr,
            cfg.endpoint_reconciler.lease_ttl,
        );
        if cfg.endpoint_reconciler.enabled {
            if let Err(e) = endpoints.reconcile(&registry).await {
                // Not fatal: a user may hold the first ClusterIP; the API still serves.
                tracing::warn!(error = %e, "the kubernetes Service could not be written");
            }
        }

        let mut sans = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ];
        if !addr.ip().is_unspecified() {
            sans.push(addr.ip().to_string());
        }
        if let Some(a) = cfg.advertise_address {
            sans.push(a.to_string());
        }
        sans.extend(cfg.tls_sans.iter().cloned());
        let pki = tls::ensure_pki(&cfg.data_dir, &sans)?;

        let tokens_file = tokens_path(&cfg.data_dir);
        let admin_token = auth::mint_token(&tokens_file, &auth::User::admin())?;
        let kubeconfig = cfg.data_dir.join("admin.kubeconfig");
        tls::write_kubeconfig(
            &kubeconfig,
            &tls::kubeconfig(
                &format!("https://{advertised}"),
                &pki.ca_pem,
                "admin",
                &admin_token,
            ),
        )?;

        let state = Arc::new(
            api::AppState::new(
                registry.clone(),
                Arc::new(auth::Tokens::new(tokens_file)),
                advertised,
                cfg.watch_timeout,
                cfg.bookmark_interval,
                cfg.limits.clone(),
            )
            .with_kubelet_client(pki.kubelet_client.clone()),
        );
        let app = api::router(state);
        let connections = conn::Tracker::new(cfg.limits.max_unauthenticated_connections);
        // Dropping the serve future (abort on shutdown) closes every connection it holds.
        let mut tasks = vec![tokio::spawn(conn::serve(
            listener,
            pki.server_config,
            app,
            cfg.limits.clone(),
            connections.clone(),
        ))];
        let mut controller_cfg = cfg.controllers.clone();
        controller_cfg.root_ca_pem = Some(pki.ca_pem.clone());
        // The controllers run in one API server at a time: the holder of the controller Lease.
        let reg = registry.clone();
        tasks.push(tokio::spawn(leader::run(
            registry.clone(),
            leader_cfg.clone(),
            move || controllers::spawn_all(reg.clone(), controller_cfg.clone()),
        )));
        // Every API server keeps its lease and the `kubernetes` Service's endpoints.
        let endpoints = cfg.endpoint_reconciler.enabled.then(|| {
            let handle = tokio::spawn(kubernetes_service::run(
                registry.clone(),
                endpoints,
                cfg.endpoint_reconciler.interval,
            ));
            (
                handle,
                kubernetes_service::EndpointReconciler::new(
                    &leader_cfg.identity,
                    advertised_addr,
                    cfg.endpoint_reconciler.lease_ttl,
                ),
            )
        });
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "sluice-control serving");
        Ok(Server {
            addr,
            kubeconfig,
            registry,
            connections,
            tasks,
            endpoints,
            leader: leader_cfg,
        })
    }

    /// Stops serving and the controllers; waits until the store is closed.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // Take this server out of the `kubernetes` Service at once (others would only drop
        // it after the lease TTL).
        if let Some((task, mut reconciler)) = self.endpoints {
            task.abort();
            let _ = task.await;
            if let Err(e) = reconciler.remove(&self.registry).await {
                tracing::warn!(error = %e, "taking this API server out of the kubernetes Service");
            }
        }
        // Controllers are stopped: hand the Lease over instead of letting it expire.
        leader::release(&self.registry, &self.leader).await;
        // The last registry reference closes the store (its writer thread is joined on drop).
        drop(self.registry);
        tokio::task::yield_now().await;
    }
}
