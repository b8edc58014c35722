//! Sluice's iptables proxy mode.
//!
//! * [`render`] — pure function from the proxy model to one `iptables-restore --noflush`
//!   transaction over Sluice-owned chains (`SLUICE-*`), golden-file tested; [`render_parts`] is
//!   the same in pieces and, given the previous render's [`RenderState`], incremental (only the
//!   changed services' chains, and a shared chain only if their rules in it changed —
//!   `testdata/partial/`).
//! * `fake` (feature `testing`, test support only) — a validating in-memory iptables (parses restore text, rejects jumps to missing
//!   chains, duplicate declarations, deleting referenced chains) with a packet tracer.
//! * [`apply`] — [`apply::IptablesDataplane`], the thin backend that streams the render into
//!   `iptables-restore` and installs the jumps from the built-in chains. It reads the kernel's
//!   chains (`iptables-save`) only on its first sync and after a failed one; otherwise the last
//!   render's state describes them. [`apply::Backend`] / [`apply::Commands::for_backend`] (from `sluice-iptables-tools`) pick
//!   iptables-nft or iptables-legacy.
//! * [`chains`] — chain names and their stable hashes.
//! * [`mode`] — [`mode::IptablesMode`], how the agent plugs the mode in (probe, leftovers,
//!   cleanup, dump, build).

pub mod apply;
pub mod chains;
pub mod dump;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod mode;
pub mod render;

pub use apply::IptablesDataplane;
#[cfg(any(test, feature = "testing"))]
pub use fake::{Action, Fake, Packet, Verdict};
pub use render::{
    render, render_parts, ExistingChains, RenderConfig, RenderState, Rendered, RenderedParts,
};
