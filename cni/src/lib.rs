//! Sluice CNI plugin (`sluice-cni`): a CNI 1.1 bridge + veth plugin with in-process,
//! host-local-compatible IPAM.
//!
//! Role: containerd (or any CNI runtime) execs the `sluice-cni` binary in the host network
//! namespace with `CNI_*` environment variables and the network configuration on stdin. The
//! plugin answers on stdout with a result or an error object.
//!
//! Data flow for ADD: [`config::NetConf::parse`] decodes and validates stdin →
//! [`plugin::run`] dispatches on `CNI_COMMAND` → the bridge is ensured in the host namespace
//! ([`net::ensure_bridge`]) → the veth pair is created from a thread inside the container
//! namespace ([`netns::run_in`], [`net::create_veth`]) → an address is allocated from the
//! lease store under its flock ([`ipam::allocate`] over [`ipam::DiskStore`]) → the container
//! gets its address and routes, the bridge the gateway address → the [`types::CniResult`] is
//! printed. Every step after the first side effect registers an undo action, so a failed ADD
//! leaves no lease, veth or rule behind. DEL releases the lease and deletes the veth, and is
//! idempotent (missing netns, empty `CNI_NETNS`, no `prevResult`, repeated calls).
//!
//! IPAM ranges are validated as host-local validates them ([`ipam::Range::new`],
//! [`config::IpamConf::range_sets`]) when stdin is parsed: ADD, CHECK, STATUS and GC refuse an
//! impossible range (inverted, outside its subnet, overlapping, …) with code 7 before touching
//! anything. DEL does not: it needs no range to release an attachment's leases, and warns.
//!
//! With `ipMasq`, [`masq`] adds iptables NAT rules in the namespace the plugin runs in. GC
//! releases leases of attachments missing from `cni.dev/valid-attachments`; STATUS checks that
//! the lease store is usable (code 50 otherwise).
//!
//! Netlink work uses rtnetlink on a current-thread runtime created on the thread that is in
//! the right namespace; nothing here runs on a shared tokio worker.

pub mod config;
pub mod error;
pub mod ipam;
pub mod masq;
pub mod net;
pub mod netns;
pub mod plugin;
pub mod types;
