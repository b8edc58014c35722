//! Sluice's mode-agnostic Service proxy core.
//!
//! Every proxy mode (nftables, iptables, IPVS, eBPF, …) shares this crate and implements only
//! the [`proxier::Dataplane`] trait. Data flow:
//!
//! ```text
//! informer events ──► tracker::{ServiceChangeTracker, EndpointsChangeTracker}   (net prev → cur per object)
//!                          │ apply() at sync time
//!                          ▼
//!          model::{ServicePortMap, EndpointsMap}  (merged, deterministic BTreeMaps)
//!                          │
//! runner::BoundedFrequencyRunner ──► proxier::Proxier::sync()  (partial, or full after failure / periodically)
//!                          │
//!                          ▼
//!                 D: proxier::Dataplane::sync()  ──► categorize::categorize_endpoints() per service port
//! ```
//!
//! * [`model`] — the proxy's view of services and endpoints.
//! * [`tracker`] — converts Kubernetes `Service` / `EndpointSlice` objects into the model and
//!   accumulates pending changes between syncs.
//! * [`categorize`] — kube-proxy's endpoint categorisation (ready → serving-terminating fallback,
//!   Cluster vs Local sets, topology hints).
//! * [`conntrack`] — UDP conntrack cleanup after a sync (removed endpoints, removed IPs,
//!   services that just got endpoints), for the NAT-based modes.
//! * `golden` — golden-file checks shared by the modes' render tests; `scenarios` — the
//!   service/endpoint maps those tests render (feature `testing`: test support only).
//! * [`heap`] — giving freed heap back after large syncs.
//! * [`runner`] — bounded-frequency sync runner (min interval, max interval, coalescing, retry).
//! * [`mode`] — the one interface every proxy mode plugs into the agent through ([`mode::Mode`]).
//! * [`proxier`] — `Proxier<D: Dataplane>`: the one place that owns trackers, maps and sync policy.

pub mod categorize;
pub mod conntrack;
#[cfg(any(test, feature = "testing"))]
pub mod golden;
pub mod heap;
pub mod metrics;
pub mod mode;
pub mod model;
pub mod proxier;
pub mod runner;
#[cfg(any(test, feature = "testing"))]
pub mod scenarios;
pub mod tracker;

#[cfg(test)]
pub(crate) mod testutil;
