//! The iptables mode as the agent plugs it in ([`sluice_proxy::mode::Mode`]).

use sluice_proxy::mode::{self, BoxDataplane, Mode, ModeContext};
use sluice_proxy::proxier::{Dataplane, Error};

use crate::{chains, dump, IptablesDataplane, RenderConfig};

/// Chains whose presence marks this mode's rules (its fixed chains in both tables).
pub const MARKERS: &[(&str, &str)] = &[
    ("nat", chains::SERVICES),
    ("nat", chains::MARK_MASQ),
    ("filter", chains::FORWARD),
];

/// `--proxy-mode iptables`.
pub struct IptablesMode;

const NAME: &str = "iptables";

fn config(ctx: &ModeContext) -> RenderConfig {
    let mut cfg = RenderConfig::new(ctx.node_name.clone());
    cfg.node_ips = ctx.node_ips.clone();
    cfg.cluster_cidr = ctx.cluster_cidr;
    cfg
}

impl Mode for IptablesMode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, ctx: &ModeContext) -> Result<(), String> {
        if ctx.iptables.available() {
            Ok(())
        } else {
            Err(format!(
                "{} does not run (Debian package iptables)",
                ctx.iptables.restore.display()
            ))
        }
    }

    fn iptables_markers(&self) -> &'static [(&'static str, &'static str)] {
        MARKERS
    }

    fn has_leftovers(&self, ctx: &ModeContext) -> bool {
        // `iptables -S CHAIN` per marker: an iptables-save of a large nf_tables table takes
        // seconds.
        ctx.iptables.available() && MARKERS.iter().any(|(t, c)| ctx.iptables.has_chain(t, c))
    }

    fn remove_all(&self, ctx: &ModeContext) -> Result<(), Error> {
        IptablesDataplane::new(config(ctx), ctx.iptables.clone()).cleanup()
    }

    fn dump(&self, ctx: &ModeContext) -> Result<String, Error> {
        let save = |table: &str| {
            ctx.iptables
                .save_table(table)
                .map_err(|e| mode::error(NAME, format!("iptables-save -t {table}: {e}")))
        };
        Ok(dump::dump(&save("nat")?, &save("filter")?))
    }

    fn build(&self, ctx: &ModeContext) -> Result<BoxDataplane, Error> {
        Ok(Box::new(IptablesDataplane::new(
            config(ctx),
            ctx.iptables.clone(),
        )))
    }
}
