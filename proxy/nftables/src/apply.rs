//! The thin backend: runs [`crate::render`]'s script through `nft -f -`.
//!
//! The kernel's table is read (`nft -t list table`, names only) on the first sync and after a
//! failed one, so that a full render can delete objects it no longer wants; otherwise the last
//! render's [`RenderState`] describes the table and a partial sync sends only its changes. A
//! full sync that nft refuses (a table of another layout) replaces the table in one
//! transaction.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use sluice_iptables_tools::{run, RunError, NO_INPUT};
use sluice_proxy::conntrack::Conntrack;
use sluice_proxy::model::{EndpointsMap, IpFamily, ServicePortMap};
use sluice_proxy::proxier::{Changes, Dataplane, Error};
use tracing::{debug, info, warn};

use crate::render::{render, Existing, RenderConfig, RenderState, TABLE};

/// The `nft` and `conntrack` binaries.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `nft`.
    pub nft: PathBuf,
    /// `conntrack` (UDP flow cleanup).
    pub conntrack: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            nft: "nft".into(),
            conntrack: "conntrack".into(),
        }
    }
}

impl Tools {
    /// Whether `nft` runs.
    pub fn available(&self) -> bool {
        Command::new(&self.nft)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `nft -f -` with `script` on stdin.
    pub fn run_script(&self, script: &str) -> Result<(), RunError> {
        run(
            Command::new(&self.nft).args(["-f", "-"]),
            Some(|w: &mut dyn Write| w.write_all(script.as_bytes())),
        )
        .map(drop)
    }

    /// `nft args…`.
    pub fn nft(&self, args: &[&str]) -> Result<String, RunError> {
        run(Command::new(&self.nft).args(args), NO_INPUT)
    }

    /// Whether Sluice's table of `family` exists (`nft list tables`: names only; listing the
    /// table itself would load every element first, seconds at 10,000 services).
    pub fn has_table(&self, family: IpFamily) -> bool {
        let want = format!("table {} {TABLE}", family_word(family));
        self.nft(&["list", "tables"])
            .is_ok_and(|out| out.lines().any(|l| l.trim() == want))
    }

    /// `nft list table <family> sluice`, or `None` when there is no such table.
    pub fn dump(&self, family: IpFamily) -> Option<String> {
        self.nft(&["list", "table", family_word(family), TABLE])
            .ok()
    }

    /// Deletes Sluice's tables of both families (whatever exists); returns how many.
    pub fn delete_tables(&self) -> Result<usize, RunError> {
        let mut n = 0;
        for f in [IpFamily::V4, IpFamily::V6] {
            if self.has_table(f) {
                self.nft(&["delete", "table", family_word(f), TABLE])?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn family_word(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
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
        match self.tools.nft(&[
            "-t",
            "list",
            "table",
            family_word(self.config.family),
            TABLE,
        ]) {
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
            if let Err(e) = self.tools.run_script(&rendered.text) {
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
                    family_word(self.config.family),
                    rendered.text
                );
                self.tools
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
