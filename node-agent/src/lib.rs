//! Sluice node agent (`sluice-agent`).
//!
//! What works: node registration (addresses, nodeInfo, Ready), heartbeats (Lease renewals in
//! `kube-node-lease` and the Ready condition), the node's CNI conflist once it has a podCIDR,
//! one route per other node (`podCIDR via InternalIP`, marked with route protocol 92) kept in
//! sync by a Node watcher, and masquerade of pod traffic leaving the cluster CIDR (on the
//! `--iptables-backend` the proxy uses too). Service proxying ([`proxy`]): watchers on Services,
//! EndpointSlices and this Node feed a `sluice_proxy::proxier::Proxier` whose dataplane is the
//! `--proxy-mode`, picked from the table of modes in [`modes`] (`userspace`, `iptables`,
//! `nftables`, `ebpf`: each crate's `sluice_proxy::mode::Mode`); once the chosen mode's first
//! full sync is in, whatever other modes left on the node is removed.
//! With `--container-runtime-endpoint` the agent also runs the pods bound to its node through
//! containerd's CRI, as kubelet does ([`pods`]).
//!
//! Observability: `/healthz` + `/livez` and `/metrics` servers ([`health`]), HealthCheckNodePort
//! listeners ([`healthcheck`]), and `sluice-agent debug dump` ([`debug`]).
//!
//! Layout: pure logic ([`routes`], [`conflist`], [`status`], [`masq::render`], [`cache`]) with
//! unit tests; thin backends ([`netlink`], [`masq::apply`]); the loop in [`agent`].

pub mod agent;
pub mod cache;
pub mod cli;
pub mod conflist;
pub mod debug;
pub mod health;
pub mod healthcheck;
pub mod masq;
pub mod modes;
pub mod netlink;
pub mod pods;
pub mod proxy;
pub mod routes;
pub mod status;
