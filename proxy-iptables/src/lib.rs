//! Sluice's iptables proxy mode.
//!
//! * [`render`] — pure function from the proxy model to one `iptables-restore --noflush`
//!   transaction over Sluice-owned chains (`SLUICE-*`), golden-file tested.
//! * [`fake`] — a validating in-memory iptables (parses restore text, rejects jumps to missing
//!   chains, duplicate declarations, deleting referenced chains) with a packet tracer.
//! * [`apply`] — [`apply::IptablesDataplane`], the thin backend that pipes the render to
//!   `iptables-restore` and installs the jumps from the built-in chains.
//! * [`chains`] — chain names and their stable hashes.

pub mod apply;
pub mod chains;
pub mod dump;
pub mod fake;
pub mod render;

pub use apply::IptablesDataplane;
pub use fake::{Action, Fake, Packet, Verdict};
pub use render::{render, ExistingChains, RenderConfig, Rendered};
