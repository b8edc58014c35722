//! Sluice's integration, privileged and end-to-end suites.
//!
//! This crate is outside the workspace's `default-members`, so a plain `cargo test` stays
//! unprivileged. Its `tests/*.rs` drive real binaries: the control plane over TLS with
//! kubectl (Debian's 1.20 and the preinstalled one) and kube-rs.
