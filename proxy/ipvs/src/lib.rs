//! Sluice's IPVS proxy mode (`--proxy-mode ipvs`), kube-proxy's ipvs proxier rebuilt on the
//! shared proxy core.
//!
//! The kernel's IP Virtual Server does the load balancing: one virtual server per Service
//! front end (cluster IP, external IP, load-balancer IP × port; node IP × NodePort), NAT
//! (`Masq`) destinations for the usable endpoints, the node's scheduler (`--ipvs-scheduler`,
//! default `rr`; per Service: [`scheduler::ANNOTATION`], once the proxy model carries it),
//! persistence for `sessionAffinity: ClientIP`. The service addresses are bound to a dummy link,
//! [`DUMMY_LINK`], so the kernel delivers their packets locally, where IPVS sees them. What
//! IPVS does not do — masquerade, hairpin, no-endpoint REJECT, `externalTrafficPolicy: Local`
//! DROP, `loadBalancerSourceRanges`, closing the other ports of service addresses — lives in
//! a companion nftables table of the mode's own ([`render`]).
//!
//! Data flow:
//!
//! ```text
//! ServicePortMap + EndpointsMap ──► plan::Model (wanted virtual servers per front end;
//!                                    partial syncs recompute changed services only)
//!                                         │
//! kernel listing ──► plan::Current ──► plan::plan ──► ordered plan::Op list
//!   (ours only)                                          │
//!                      render::{full, delta} ──► nft -f  │  (companion table first)
//!                                                        ▼
//!                                apply::IpvsDataplane ──► backend::Kernel
//!                                     (IPVS genetlink: client + netlink; dummy link: rtnl)
//! ```
//!
//! * [`netlink`] — the IPVS generic netlink messages, written by hand from uapi
//!   `linux/ip_vs.h` on `netlink-packet-generic` framing (byte-exact tests); [`client`] —
//!   [`client::IpvsClient`], the blocking socket API (create/list/update/delete services and
//!   destinations, `ipvsadm -Ln` text, [`client::selftest`] for the VM tests).
//! * [`plan`] — the pure planner (golden files in `testdata/`).
//! * [`render`] — the companion nftables table, pure.
//! * [`rtnl`] — the dummy link and its addresses; [`sysctl`] — kube-proxy's IPVS sysctls.
//! * [`backend`], [`apply`] — the thin kernel backend and the [`apply::IpvsDataplane`].
//! * [`mode`] — [`mode::IpvsMode`], the capability probe, cleanup and dump.
//!
//! Only Sluice's virtual servers are touched (see [`plan`]): other IPVS users may share the
//! machine. Nothing is ever flushed: a restarted agent lists what is there and changes only
//! what differs, so established connections survive it.

#![warn(missing_docs)]

pub mod apply;
pub mod backend;
pub mod client;
pub mod error;
pub mod mode;
pub mod netlink;
mod nl;
pub mod plan;
pub mod render;
pub mod rtnl;
pub mod scheduler;
pub mod sysctl;

pub use apply::IpvsDataplane;
pub use client::IpvsClient;
pub use error::Error;
pub use mode::IpvsMode;
pub use scheduler::Scheduler;

/// The dummy link holding the service addresses (kube-proxy's is `kube-ipvs0`).
pub const DUMMY_LINK: &str = "sluice-ipvs0";
