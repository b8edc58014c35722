//! Sluice's nftables proxy mode.
//!
//! Everything lives in Sluice's own tables (`ip sluice`, `ip6 sluice`), which nothing else
//! touches; switching away from the mode deletes them. Data flow:
//!
//! ```text
//! ServicePortMap + EndpointsMap ──► render::render (pure; full, or incremental from the last
//!                                   render's RenderState) ──► nft script text
//!                                                              │
//!                          apply::NftablesDataplane ──► `nft -f -` (one atomic transaction)
//! ```
//!
//! The layout is built so that the common change — an endpoint replaced, added or removed —
//! is a handful of *set element* updates and never a rule change: nf_tables re-validates every
//! rule reachable from the base chains on any commit that adds a rule or a jump (about 60 ms
//! per base chain at 10,000 services with a chain per service, measured on this kernel), but
//! element updates of data maps need no validation. So there are no per-service chains at all
//! (except for `sessionAffinity: ClientIP`): traffic is dispatched by its *front end* — the
//! `address . protocol . port` it was sent to, or `protocol . port` for a NodePort — through
//! verdict maps into a few shared chains, and the endpoint is picked by
//! `numgen random mod N` from a map keyed by `front end . slot`. See [`render`].
//!
//! * [`render`] — the pure render, golden-file tested (`testdata/`), and its
//!   [`render::RenderState`] for incremental renders.
//! * [`model`] — an in-memory model of the table that applies rendered scripts, so unit tests
//!   can check that incremental renders land where full renders do.
//! * [`apply`] — [`apply::NftablesDataplane`], the thin backend running `nft` ([`nft::Nft`]).
//! * [`text`] — the nft script text every Sluice table writes alike (also used by the ipvs
//!   mode's companion table), and [`nft`] — the `nft` binary for one table.

pub mod apply;
pub mod mode;
pub mod model;
pub mod nft;
pub mod render;
pub mod text;

pub use apply::NftablesDataplane;
pub use render::{render, Existing, RenderConfig, RenderState, Rendered, TABLE};
