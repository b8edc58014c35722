//! Sluice eBPF Service load balancing: the BPF programs, their map ABI, and their loader.
//!
//! # Role
//!
//! The eBPF proxy mode translates Service frontends to backends in the kernel:
//!
//! - **In-node clients** (`bpf/sock.c`, cgroup v2 sock_addr hooks): `connect()` and UDP
//!   `sendmsg()` to a frontend are rewritten to a backend before the kernel routes anything
//!   (connect-time load balancing: no per-packet NAT, no conntrack); `getpeername()` and UDP
//!   `recvmsg()` report the frontend again. A frontend without backends fails `connect()` with
//!   `ECONNREFUSED`.
//! - **Traffic from outside the node** (`bpf/nodeport.c`, tc on the external interface):
//!   NodePort, LoadBalancer and external IPs, with SNAT to the node IP for remote backends
//!   (externalTrafficPolicy Cluster) or client address preservation (Local).
//!
//! The programs are C compiled by clang in `build.rs` and embedded ([`programs`]); aya loads
//! them ([`loader`]).
//!
//! # Data flow
//!
//! ```text
//! planner (plan.rs) --Maps::put_svc/put_backend--> pinned maps (abi.rs layouts)
//!                                                       ^ read by
//! client socket --connect/sendmsg--> cgroup hooks ------+--> rewritten to a backend
//! external packet --tc ingress/egress--> nodeport ------+--> DNAT (+SNAT), conntrack
//! ```
//!
//! Maps and links are pinned under one bpffs directory, so the datapath keeps working while
//! the agent is down and a restarted agent picks up the same maps ([`Loader::load`]) and
//! links ([`Loader::attach_cgroup`]). [`detach_all`] removes everything.

pub mod abi;
mod error;
pub mod loader;
pub mod maps;
pub mod mode;
pub mod plan;
pub mod programs;
pub mod sockdestroy;
mod sys;
mod tc_netlink;

pub use error::{Error, Result};
pub use loader::{
    attached_links, detach_all, is_present, probe, verify_programs, AttachedLink, LoadOptions,
    Loader, MapSizes, TcAttachMethod, TcConfig, TcFilter, TC_FILTER_HANDLE, TC_FILTER_PRIORITY,
};
pub use maps::Maps;
pub use tc_netlink::Hook as TcHook;
