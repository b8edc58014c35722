//! Sluice's `userspace` proxy mode: the node agent itself accepts Service connections and
//! relays them to endpoints; iptables only steers Service traffic to the agent's listeners.
//!
//! Like kube-proxy's retired userspace mode, adapted to Sluice's shared core
//! ([`sluice_proxy::proxier::Proxier`] drives [`UserspaceDataplane`] through the
//! [`Dataplane`](sluice_proxy::proxier::Dataplane) trait). Data flow per sync:
//!
//! ```text
//! ServicePortMap + EndpointsMap
//!    │ render::plan()      categorize_endpoints → Cluster / Local sets per TCP/UDP service port
//!    ▼
//! listeners: one per (service port, endpoint set in use), bound on listen_address:0
//!    │   kept across syncs (same port); endpoints swapped in place (Arc<Balancer>);
//!    │   closed when the service port (or the set) goes away
//!    ▼
//! render::render()         SLUICEUS-* chains → one `iptables-restore --noflush` (skipped when
//!    │                     unchanged), jumps from the built-ins installed idempotently
//!    ▼
//! kernel: PREROUTING REDIRECT / OUTPUT DNAT node_ip:port ──► listener task
//!           ──► balancer (round robin, ClientIP affinity) ──► endpoint (retry next on failure)
//! ```
//!
//! * [`render`] — pure: plan + rules, golden-file tested (`testdata/`, `UPDATE_GOLDEN=1`).
//! * [`balancer`] — round robin with ClientIP affinity.
//! * TCP: a task per connection, `TCP_NODELAY` both sides, `copy_bidirectional` with half-close
//!   propagation; a refused / timed-out connect moves on to the next endpoint.
//! * UDP: a flow (own connected socket) per client address; replies leave from the listener
//!   socket; flows end after [`UserspaceConfig::udp_idle_timeout`] without traffic.
//! * Service ports without usable endpoints: `REJECT` (TCP reset / ICMP port unreachable);
//!   `Local` traffic policies without local endpoints: `DROP`.
//!
//! Chains are prefixed `SLUICEUS-` (never `SLUICE-`, which the iptables mode owns);
//! [`cleanup_rules`] removes them from any mode.

pub mod balancer;
pub mod chains;
mod commands;
mod dataplane;
mod error;
mod listener;
pub mod mode;
pub mod render;
mod tcp;
mod udp;

use std::net::Ipv4Addr;
use std::time::Duration;

pub use dataplane::{ListenerInfo, UserspaceDataplane};
pub use error::Error;
pub use render::{EndpointSet, ListenerKey};
pub use sluice_iptables_tools::Commands;

/// [`Dataplane::name`](sluice_proxy::proxier::Dataplane::name) of this mode.
pub const NAME: &str = "userspace";

/// Default [`UserspaceConfig::udp_idle_timeout`] (kube-proxy's `--udp-timeout` default).
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_millis(250);
/// Default [`UserspaceConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`UserspaceConfig::tcp_buffer_size`].
pub const DEFAULT_TCP_BUFFER_SIZE: usize = 64 * 1024;

/// Configuration of the userspace mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserspaceConfig {
    /// This node's name (decides which endpoints are local).
    pub node_name: String,
    /// This node's IPv4 address: host-originated Service traffic is DNATed to
    /// `node_ip:listener port`, so listeners must be reachable on it.
    pub node_ip: Ipv4Addr,
    /// A UDP flow (client address → endpoint) ends after this long without a datagram in
    /// either direction; the client's next datagram picks an endpoint again.
    pub udp_idle_timeout: Duration,
    /// Timeout of one TCP connect to an endpoint before the next endpoint is tried.
    pub connect_timeout: Duration,
    /// Size of each of the two relay buffers of a TCP connection (bytes, at least 1024).
    pub tcp_buffer_size: usize,
    /// Pod CIDR. When set, pod traffic to an `externalTrafficPolicy: Local` service's NodePort /
    /// external / LB IPs is short-circuited to the Cluster listener (as host traffic always is),
    /// so it works even when this node has no local endpoint.
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// Address the listeners bind (`0.0.0.0`: REDIRECT delivers to the incoming interface's
    /// address, DNAT to `node_ip`).
    pub listen_address: Ipv4Addr,
    /// iptables tools.
    pub commands: Commands,
}

impl UserspaceConfig {
    /// Defaults: 250 ms UDP idle timeout, 1 s connect timeout, 64 KiB relay buffers, no cluster
    /// CIDR, listeners on `0.0.0.0`, the system's `iptables*` tools.
    pub fn new(node_name: impl Into<String>, node_ip: Ipv4Addr) -> Self {
        Self {
            node_name: node_name.into(),
            node_ip,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tcp_buffer_size: DEFAULT_TCP_BUFFER_SIZE,
            cluster_cidr: None,
            listen_address: Ipv4Addr::UNSPECIFIED,
            commands: Commands::default(),
        }
    }
}

/// Removes every `SLUICEUS-*` chain and every jump into one (filter and nat), using the
/// system's iptables tools. For the agent in another mode; no dataplane needed. A no-op when
/// nothing of ours is installed.
pub fn cleanup_rules() -> Result<(), Error> {
    cleanup_rules_with(&Commands::default())
}

/// [`cleanup_rules`] with explicit tool paths.
pub fn cleanup_rules_with(commands: &Commands) -> Result<(), Error> {
    let saved = commands::save(commands)?;
    match render::cleanup_text(&saved) {
        Some(text) => commands::restore(commands, &text),
        None => Ok(()),
    }
}
