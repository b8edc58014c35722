//! The thin backend: runs [`crate::render`]'s script through `nft -f -`.
//!
//! The kernel's table is read (`nft -t list table`, names only) on the first sync and after a
//! failed one, so that a full render can delete objects it no longer wants; otherwise the last
//! render's [`RenderState`] describes the table and a partial sync sends only its changes. A
//! full sync that nft refuses (a table of another layout) replaces the table in one
//! transaction.

use std::path::PathBuf;
use std::time::Instant;

use sluice_iptables_tools::RunError;
use sluice_proxy::conntrack::Conntrack;
use sluice_proxy::model::{EndpointsMap, ServicePortMap};
use sluice_proxy::proxier::{Changes, Dataplane, Error};
use tracing::{debug, info, warn};

use crate::nft::Nft;
use crate::render::{render, Existing, RenderConfig, RenderState, TABLE};
use crate::text::family;

/// The `nft` and `conntrack` binaries.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `nft`, for Sluice's table.
    pub nft: Nft,
    /// `conntrack` (UDP flow cleanup).
    pub conntrack: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            nft: Nft::new(TABLE),
            conntrack: "conntrack".into(),
        }
    }
}

/// The nftables mode's [`Dataplane`].
pub struct NftablesDataplane {
    config: RenderConfig,
    tools: Tools,
    conntrack: Conntrack,
    /// State of the last applied render; `None` = kernel state unknown (first sync, or the last
    /// sync failed): the next sync reads the table and renders in full.
    state: Option<RenderState>,
}

impl NftablesDataplane {
    /// A dataplane programming `config.family`'s table with `tools`.
    pub fn new(config: RenderConfig, tools: Tools) -> Self {
        Self {
            conntrack: Conntrack::with_binary(&tools.conntrack),
            config,
            tools,
            state: None,
        }
    }

    /// Whether the last sync succeeded (the next partial sync sends only changes).
    pub fn knows_kernel_state(&self) -> bool {
        self.state.is_some()
    }

    fn err(&self, message: String, source: Option<RunError>) -> Error {
        Error::Sync {
            dataplane: "nftables",
            message,
            source: source.map(|e| Box::new(e) as _),
        }
    }

    /// Sluice's objects in the kernel's table (none when the table does not exist).
    fn read_existing(&self) -> Existing {
        match self
            .tools
            .nft
            .run(&["-t", "list", "table", family(self.config.family), TABLE])
        {
            Ok(text) => Existing::parse(&text),
            Err(_) => Existing::default(),
        }
    }
}

impl Dataplane for NftablesDataplane {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error> {
        let prev = self.state.take();
        let existing = if prev.is_none() || changes.full {
            self.read_existing()
        } else {
            Existing::default()
        };
        let t = Instant::now();
        let mut rendered = render(services, endpoints, &self.config, changes, prev, &existing);
        let render_time = t.elapsed();
        if !rendered.text.is_empty() {
            if let Err(e) = self.tools.nft.run_script(&rendered.text) {
                if rendered.incremental {
                    return Err(self.err(format!("partial sync, nft -f: {e}"), Some(e)));
                }
                // A table nft cannot re-read or extend (another Sluice version's layout, or
                // objects changed by hand) is replaced whole, in one transaction: traffic
                // sees the old table or the new one; only affinity pins are lost.
                warn!(error = %e, "nftables full sync failed; replacing the table");
                rendered = render(
                    services,
                    endpoints,
                    &self.config,
                    changes,
                    None,
                    &Existing::default(),
                );
                let script = format!(
                    "delete table {} {TABLE}\n{}",
                    family(self.config.family),
                    rendered.text
                );
                self.tools
                    .nft
                    .run_script(&script)
                    .map_err(|e| self.err(format!("full sync, nft -f: {e}"), Some(e)))?;
            }
        }
        let level_info = !rendered.incremental;
        if level_info {
            info!(
                services = rendered.state.len(),
                bytes = rendered.text.len(),
                ?render_time,
                apply_time = ?t.elapsed() - render_time,
                "nftables full sync"
            );
        } else {
            debug!(
                bytes = rendered.text.len(),
                ?render_time,
                apply_time = ?t.elapsed() - render_time,
                "nftables partial sync"
            );
        }
        let bytes = rendered.text.len();
        drop(rendered.text);
        self.state = Some(rendered.state);
        sluice_proxy::heap::trim_after(bytes);
        // Flows of UDP endpoints that went away (and rejects cached before a UDP service got
        // endpoints) stay NATed by conntrack until deleted.
        self.conntrack.clear(services, changes);
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.state = None;
        self.tools
            .nft
            .delete_tables()
            .map(drop)
            .map_err(|e| Error::Cleanup {
                dataplane: "nftables",
                message: format!("deleting table {TABLE}"),
                source: Some(Box::new(e)),
            })
    }

    fn name(&self) -> &'static str {
        "nftables"
    }
}
