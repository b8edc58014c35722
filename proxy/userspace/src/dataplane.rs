//! [`UserspaceDataplane`]: owns the listeners and applies the rendered rules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::model::{EndpointsMap, Protocol, ServicePortMap, ServicePortName};
use sluice_proxy::proxier::{Changes, Dataplane, Error as ProxyError};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::listener::{Listener, Portal, Settings};
use crate::render::{
    dump_saved, listener_comment, plan, render, EndpointSet, ListenerKey, RenderConfig,
};
use crate::{cleanup_rules_with, UserspaceConfig, NAME};

/// A listener as seen from outside (tests, `debug dump`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Service port and endpoint set.
    pub key: ListenerKey,
    /// Protocol.
    pub protocol: Protocol,
    /// Bound port (on [`UserspaceConfig::listen_address`]).
    pub port: u16,
    /// Current endpoints, sorted.
    pub endpoints: Vec<SocketAddr>,
}

/// The userspace proxy mode. See the crate documentation.
pub struct UserspaceDataplane {
    config: UserspaceConfig,
    runtime: Handle,
    settings: Arc<Settings>,
    listeners: BTreeMap<ListenerKey, Listener>,
    /// Rules of the last successful restore (`None` after a failure or cleanup).
    applied: Option<String>,
    jumps_installed: bool,
}

impl UserspaceDataplane {
    /// A dataplane with `config`, spawning listener tasks on `runtime` (a multi-thread runtime
    /// is expected; [`Dataplane::sync`] never blocks on it).
    pub fn new(config: UserspaceConfig, runtime: Handle) -> Self {
        let settings = Arc::new(Settings {
            connect_timeout: config.connect_timeout,
            udp_idle_timeout: config.udp_idle_timeout,
            tcp_buffer_size: config.tcp_buffer_size.max(1024),
        });
        Self {
            config,
            runtime,
            settings,
            listeners: BTreeMap::new(),
            applied: None,
            jumps_installed: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &UserspaceConfig {
        &self.config
    }

    /// The listeners, ordered by service port and set.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners
            .iter()
            .map(|(k, l)| ListenerInfo {
                key: k.clone(),
                protocol: l.protocol,
                port: l.port,
                endpoints: l.portal.balancer.endpoints().to_vec(),
            })
            .collect()
    }

    /// The port of the listener of `service` for `set`, if it exists.
    pub fn proxy_port(&self, service: &ServicePortName, set: EndpointSet) -> Option<u16> {
        self.listeners
            .get(&ListenerKey::new(service.clone(), set))
            .map(|l| l.port)
    }

    /// What is programmed, for `sluice-agent debug dump`: one `# listener …` line per listener
    /// (live endpoints), then the `SLUICEUS-*` chains as read back with `iptables-save`, in the
    /// format of the golden render. If `iptables-save` fails, the rules of the last successful
    /// sync follow a `#` line saying so.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (k, l) in &self.listeners {
            out.push_str(&listener_comment(
                k,
                l.protocol,
                Some(l.port),
                &l.portal.balancer.endpoints(),
            ));
        }
        match crate::commands::save(&self.config.commands) {
            Ok(saved) => out.push_str(&dump_saved(&saved)),
            Err(e) => {
                out.push_str(&format!(
                    "# iptables-save failed: {e}\n# rules of the last successful sync:\n"
                ));
                out.push_str(self.applied.as_deref().unwrap_or("# (none)\n"));
            }
        }
        out
    }

    fn render_config(&self) -> RenderConfig {
        RenderConfig {
            node_ip: self.config.node_ip,
            cluster_cidr: self.config.cluster_cidr,
        }
    }
}

impl Dataplane for UserspaceDataplane {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), ProxyError> {
        let plans = plan(
            services,
            endpoints,
            &self.config.node_name,
            &changes.node_labels,
        );

        // Listeners wanted, with their endpoints and affinity.
        let mut wanted: BTreeMap<ListenerKey, (Protocol, Vec<SocketAddr>, Option<Duration>)> =
            BTreeMap::new();
        for p in &plans {
            let affinity = p
                .service
                .session_affinity_timeout
                .map(|s| Duration::from_secs(u64::from(s)));
            for key in p.listener_keys() {
                let eps = p.endpoints(key.set).to_vec();
                wanted.insert(key, (p.service.protocol, eps, affinity));
            }
        }

        // Stale listeners are closed only after the rules stop pointing at them.
        let stale_keys: Vec<ListenerKey> = self
            .listeners
            .iter()
            .filter(|(k, l)| wanted.get(*k).is_none_or(|w| w.0 != l.protocol))
            .map(|(k, _)| k.clone())
            .collect();
        let stale: Vec<(ListenerKey, Listener)> = stale_keys
            .into_iter()
            .filter_map(|k| self.listeners.remove_entry(&k))
            .collect();

        let mut bind_error = None;
        for (key, (protocol, eps, affinity)) in wanted {
            if let Some(l) = self.listeners.get(&key) {
                if l.portal.balancer.update(eps, affinity) {
                    debug!(listener = %l.portal.name, "endpoints updated");
                }
                continue;
            }
            let name = format!("{}/{} {}", key.service.namespace, key.service.name, key.set);
            let name = format!("{name} {}:{protocol}", key.service.port_name);
            let portal = Arc::new(Portal {
                name: name.clone(),
                balancer: crate::balancer::Balancer::new(eps, affinity),
                settings: self.settings.clone(),
            });
            match Listener::bind(&self.runtime, self.config.listen_address, protocol, portal) {
                Ok(l) => {
                    info!(listener = %name, port = l.port, "listener opened");
                    self.listeners.insert(key, l);
                }
                Err(source) => {
                    warn!(listener = %name, error = %source, "cannot bind listener");
                    bind_error.get_or_insert(Error::Bind {
                        listener: name,
                        protocol,
                        source,
                    });
                }
            }
        }

        let ports: BTreeMap<ListenerKey, u16> = self
            .listeners
            .iter()
            .map(|(k, l)| (k.clone(), l.port))
            .collect();
        let rendered = render(&plans, &ports, &self.render_config());
        if changes.full || self.applied.as_deref() != Some(rendered.rules.as_str()) {
            debug!(
                bytes = rendered.rules.len(),
                full = changes.full,
                "iptables-restore"
            );
            self.applied = None;
            if let Err(e) = crate::commands::restore(&self.config.commands, &rendered.rules) {
                // The old rules are still in place (the transaction is atomic): keep serving
                // them with the old listeners until a sync succeeds.
                self.listeners.extend(stale);
                return Err(e.into_sync("applying SLUICEUS rules"));
            }
            self.applied = Some(rendered.rules);
        }
        if changes.full || !self.jumps_installed {
            self.jumps_installed = false;
            crate::commands::ensure_jumps(&self.config.commands)
                .map_err(|e| e.into_sync("installing jumps into SLUICEUS chains"))?;
            self.jumps_installed = true;
        }
        for (k, l) in stale {
            info!(listener = %l.portal.name, port = l.port, service = %k.service, "listener closed");
        }
        // A UDP flow conntrack already tracks keeps its old fate (a flow seen while its
        // service had no endpoints stays un-redirected) until its entry goes: flows to
        // services that just got endpoints and to removed service IPs are deleted, as the NAT
        // modes do. (The conformance suite's UDP 0 → 1 step failed about one run in three
        // without this.)
        sluice_proxy::conntrack::Conntrack::with_binary(&self.config.commands.conntrack)
            .clear(services, changes);
        match bind_error {
            Some(e) => Err(e.into_sync("opening listeners")),
            None => Ok(()),
        }
    }

    fn cleanup(&mut self) -> Result<(), ProxyError> {
        self.listeners.clear();
        self.applied = None;
        self.jumps_installed = false;
        cleanup_rules_with(&self.config.commands).map_err(|e| e.into_cleanup("removing rules"))
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
