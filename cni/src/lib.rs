//! Sluice CNI plugin (`sluice-cni`).
//!
//! Role (to be built by the CNI issue): a CNI 1.1 bridge + veth + host-local-style IPAM plugin
//! invoked by containerd. This crate is empty until then; nothing here is claimed to work yet.
