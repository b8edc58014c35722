//! `sluice-agent debug …`: read-only troubleshooting helpers.
//!
//! `debug dump` reads the kernel state of a proxy mode in the current network namespace and
//! prints it in the same text as that mode's golden render files, so it can be diffed against
//! them (or against the render of the same maps). Each mode owns its dump
//! ([`sluice_proxy::mode::Mode::dump`]); this module only builds the context: the iptables
//! backend that holds Sluice's rules (what `--iptables-backend auto` picks), so a node
//! programmed through `iptables-legacy` is dumped from there.

use sluice_iptables_tools::{detect_backend, Commands};
use sluice_proxy::mode::ModeContext;

use crate::cli::DumpArgs;
use crate::modes;

/// Errors of `sluice-agent debug`.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// The mode has no dump (it is not implemented, or `none`).
    #[error("not supported for mode {0}")]
    Unsupported(&'static str),
    /// Reading the mode's kernel state failed.
    #[error(transparent)]
    Mode(#[from] sluice_proxy::proxier::Error),
}

/// The kernel state the mode in `args` programmed in this network namespace, in its render's
/// text.
pub fn dump(args: &DumpArgs) -> Result<String, DebugError> {
    let table = modes::table();
    let Some(mode) = modes::lookup(&table, args.proxy_mode).ok().flatten() else {
        return Err(DebugError::Unsupported(args.proxy_mode.name()));
    };
    let mut ctx = ModeContext::new(args.node_name.clone());
    let mut commands = Commands::for_backend(detect_backend(&modes::iptables_markers(&table)));
    if !commands.available() {
        commands = Commands::default();
    }
    ctx.iptables = commands;
    ctx.bpf_dir = args.bpf_dir.join(&args.node_name);
    Ok(mode.dump(&ctx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProxyMode;

    #[test]
    fn none_has_no_dump() {
        // Every implemented mode has a dump; `none` has nothing to print.
        let args = DumpArgs {
            proxy_mode: ProxyMode::None,
            node_name: "n".into(),
            bpf_dir: sluice_proxy::mode::DEFAULT_BPF_ROOT.into(),
        };
        let e = dump(&args).unwrap_err().to_string();
        assert_eq!(e, "not supported for mode none");
    }
}
