//! Sluice eBPF programs and loader.
//!
//! Role (to be built by the eBPF issue): connect-time Service load balancing on cgroup hooks,
//! programs in C compiled by clang, loaded with aya. This crate is empty until then; nothing
//! here is claimed to work yet.
