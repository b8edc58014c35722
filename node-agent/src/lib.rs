//! Sluice node agent (`sluice-agent`).
//!
//! Role (to be built by the node-networking and service-proxy issues): register and heartbeat
//! its Node against the control plane, run the pods bound to it through containerd's CRI, and
//! implement Services in the chosen proxy mode. This crate is empty until then; nothing here is
//! claimed to work yet.
