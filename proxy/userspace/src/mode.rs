//! The userspace mode as the agent plugs it in ([`sluice_proxy::mode::Mode`]).

use std::net::IpAddr;

use sluice_proxy::mode::{self, BoxDataplane, Mode, ModeContext};
use sluice_proxy::proxier::Error;

use crate::{chains, cleanup_rules_with, render, UserspaceConfig, UserspaceDataplane, NAME};

/// Chains whose presence marks this mode's rules. (Its listeners die with its agent; only the
/// redirect and reject rules can be left behind.)
pub const MARKERS: &[(&str, &str)] = &[
    ("nat", chains::PORTALS_CONTAINER),
    ("nat", chains::PORTALS_HOST),
    ("filter", chains::REJECT),
];

/// `--proxy-mode userspace`.
pub struct UserspaceMode;

impl Mode for UserspaceMode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, ctx: &ModeContext) -> Result<(), String> {
        if !ctx.node_ips.iter().any(IpAddr::is_ipv4) {
            return Err("the userspace mode needs an IPv4 node address".into());
        }
        if ctx.runtime.is_none() {
            return Err("the userspace mode needs the agent's async runtime".into());
        }
        if !ctx.iptables.available() {
            return Err(format!(
                "{} does not run (Debian package iptables)",
                ctx.iptables.restore.display()
            ));
        }
        Ok(())
    }

    fn iptables_markers(&self) -> &'static [(&'static str, &'static str)] {
        MARKERS
    }

    fn has_leftovers(&self, ctx: &ModeContext) -> bool {
        ctx.iptables.available() && ctx.iptables.holds_any(MARKERS)
    }

    fn remove_all(&self, ctx: &ModeContext) -> Result<(), Error> {
        cleanup_rules_with(&ctx.iptables).map_err(|e| Error::Cleanup {
            dataplane: NAME,
            message: "removing the SLUICEUS- chains".into(),
            source: Some(e.into()),
        })
    }

    fn dump(&self, ctx: &ModeContext) -> Result<String, Error> {
        // The kernel half of the mode: its redirect/reject chains. (Which listener serves which
        // port lives in the running agent only.)
        let save = |table: &str| {
            ctx.iptables
                .save_table(table)
                .map_err(|e| mode::error(NAME, format!("iptables-save -t {table}: {e}")))
        };
        Ok(render::dump_saved(&format!(
            "{}{}",
            save("filter")?,
            save("nat")?
        )))
    }

    fn build(&self, ctx: &ModeContext) -> Result<BoxDataplane, Error> {
        let ip4 = ctx
            .node_ips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| mode::error(NAME, "no IPv4 node address"))?;
        let runtime = ctx
            .runtime
            .clone()
            .ok_or_else(|| mode::error(NAME, "no async runtime"))?;
        let mut cfg = UserspaceConfig::new(ctx.node_name.clone(), ip4);
        cfg.cluster_cidr = match ctx.cluster_cidr {
            Some(ipnet::IpNet::V4(c)) => Some(c),
            _ => None,
        };
        cfg.commands = ctx.iptables.clone();
        Ok(Box::new(UserspaceDataplane::new(cfg, runtime)))
    }
}
