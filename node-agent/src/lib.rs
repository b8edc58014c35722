//! Sluice node agent (`sluice-agent`).
//!
//! What works: node registration (addresses, nodeInfo, Ready), heartbeats (Lease renewals in
//! `kube-node-lease` and the Ready condition), the node's CNI conflist once it has a podCIDR,
//! one route per other node (`podCIDR via InternalIP`, marked with route protocol 92) kept in
//! sync by a Node watcher, and masquerade of pod traffic leaving the cluster CIDR. Service
//! proxying (`--proxy-mode` other than `none`) and running pods come with later issues.
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
pub mod netlink;
pub mod proxy;
pub mod routes;
pub mod status;
