//! `sluice-agent debug …`: read-only troubleshooting helpers.
//!
//! `debug dump` reads the kernel state of a proxy mode in the current network namespace and
//! prints it in the same text as that mode's golden render files, so it can be diffed against
//! them (or against the render of the same maps). Each mode owns its pure transform
//! ([`sluice_proxy_iptables::dump`] for iptables); this module only runs the tools. The
//! nftables mode's dump is nft's own listing of Sluice's tables (`nft list table ip sluice`,
//! and `ip6 sluice` if present): the kernel's canonical text, which `nft -f` reads back.

use std::process::Command;

use crate::cli::ProxyMode;

/// Errors of `sluice-agent debug`.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// The mode has no dump (yet).
    #[error("not supported for mode {0}")]
    Unsupported(&'static str),
    /// A tool could not be run, or failed.
    #[error(transparent)]
    Run(#[from] sluice_iptables_tools::RunError),
}

/// The `--proxy-mode` spelling of a mode.
pub fn mode_name(mode: ProxyMode) -> &'static str {
    match mode {
        ProxyMode::None => "none",
        ProxyMode::Userspace => "userspace",
        ProxyMode::Iptables => "iptables",
        ProxyMode::Ipvs => "ipvs",
        ProxyMode::Nftables => "nftables",
        ProxyMode::Ebpf => "ebpf",
    }
}

fn output(program: &str, args: &[&str]) -> Result<String, DebugError> {
    Ok(sluice_iptables_tools::run(
        Command::new(program).args(args),
        sluice_iptables_tools::NO_INPUT,
    )?)
}

/// The kernel state `mode` programmed in this network namespace, in its render's text. Read
/// from the iptables backend that holds Sluice's rules (what `--iptables-backend auto` picks),
/// so a node programmed through `iptables-legacy` is dumped from there.
pub fn dump(mode: ProxyMode) -> Result<String, DebugError> {
    if mode == ProxyMode::Nftables {
        let tools = sluice_proxy_nftables::apply::Tools::default();
        let tables: Vec<String> = [
            sluice_proxy::model::IpFamily::V4,
            sluice_proxy::model::IpFamily::V6,
        ]
        .into_iter()
        .filter_map(|f| tools.dump(f))
        .collect();
        return Ok(tables.concat());
    }
    if !matches!(mode, ProxyMode::Iptables | ProxyMode::Userspace) {
        // IPVS and eBPF have no dump yet.
        return Err(DebugError::Unsupported(mode_name(mode)));
    }
    use sluice_proxy_iptables::apply::{detect_backend, Commands};
    let mut commands = Commands::for_backend(detect_backend());
    if !commands.available() {
        commands = Commands::default();
    }
    let save = commands.save.to_string_lossy().into_owned();
    let nat = output(&save, &["-t", "nat"])?;
    let filter = output(&save, &["-t", "filter"])?;
    Ok(if mode == ProxyMode::Iptables {
        sluice_proxy_iptables::dump::dump(&nat, &filter)
    } else {
        // The kernel half of the userspace mode: its redirect/reject chains. (Which listener
        // serves which port lives in the running agent only.)
        sluice_proxy_userspace::render::dump_saved(&format!("{filter}{nat}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_without_a_dump_say_so() {
        for m in [ProxyMode::Ipvs, ProxyMode::None] {
            let e = dump(m).unwrap_err().to_string();
            assert_eq!(e, format!("not supported for mode {}", mode_name(m)));
        }
    }
}
