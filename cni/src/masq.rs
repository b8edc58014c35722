//! `ipMasq`: iptables (nf_tables backend) NAT rules in the host namespace the plugin runs in.
//!
//! One chain per network, `SLUICE-MASQ-<hash of the network name>`, holding
//! `-d <subnet> -j ACCEPT` and `! -d 224.0.0.0/4 -j MASQUERADE`; one `POSTROUTING` jump per
//! container address, commented with the network and container id so DEL and GC find it.

use std::net::IpAddr;
use std::process::Command;

use ipnet::IpNet;

/// Errors running iptables.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The binary could not run.
    #[error("running {bin} {args}: {source}")]
    Spawn {
        /// Binary.
        bin: &'static str,
        /// Arguments.
        args: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{bin} {args} failed: {stderr}")]
    Failed {
        /// Binary.
        bin: &'static str,
        /// Arguments.
        args: String,
        /// Its stderr.
        stderr: String,
    },
}

/// The per-network chain name (at most 28 characters, as iptables requires).
pub fn chain_name(network: &str) -> String {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in network.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("SLUICE-MASQ-{:016x}", h)
}

fn comment(network: &str, id: &str) -> String {
    format!("sluice: name {network} id {id}")
}

fn iptables(v6: bool, args: &[&str]) -> Result<bool, MasqError> {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let mut full = vec!["-w", "5", "-t", "nat"];
    full.extend_from_slice(args);
    let out = Command::new(bin)
        .args(&full)
        .output()
        .map_err(|source| MasqError::Spawn {
            bin,
            args: full.join(" "),
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    // Exit 1 is "rule/chain does not exist" (or already exists for -N).
    if out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(MasqError::Failed {
        bin,
        args: full.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn ensure_rule(v6: bool, chain: &str, rule: &[&str]) -> Result<(), MasqError> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if iptables(v6, &check)? {
        return Ok(());
    }
    let mut add = vec!["-A", chain];
    add.extend_from_slice(rule);
    if iptables(v6, &add)? {
        Ok(())
    } else {
        Err(MasqError::Failed {
            bin: if v6 { "ip6tables" } else { "iptables" },
            args: add.join(" "),
            stderr: "exit status 1".into(),
        })
    }
}

/// Installs masquerading for `ip` (in `subnet`) of container `id`.
pub fn setup(network: &str, id: &str, ip: IpAddr, subnet: IpNet) -> Result<(), MasqError> {
    let v6 = ip.is_ipv6();
    let chain = chain_name(network);
    iptables(v6, &["-N", &chain])?;
    let subnet_s = subnet.to_string();
    ensure_rule(v6, &chain, &["-d", &subnet_s, "-j", "ACCEPT"])?;
    let mcast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    ensure_rule(v6, &chain, &["!", "-d", mcast, "-j", "MASQUERADE"])?;
    let src = IpNet::from(ip).to_string();
    let c = comment(network, id);
    ensure_rule(
        v6,
        "POSTROUTING",
        &["-s", &src, "-m", "comment", "--comment", &c, "-j", &chain],
    )
}

/// Removes the `POSTROUTING` jump for `ip` of container `id` (absent is fine).
pub fn teardown(network: &str, id: &str, ip: IpAddr) -> Result<(), MasqError> {
    let v6 = ip.is_ipv6();
    let chain = chain_name(network);
    let src = IpNet::from(ip).to_string();
    let c = comment(network, id);
    while iptables(
        v6,
        &[
            "-D",
            "POSTROUTING",
            "-s",
            &src,
            "-m",
            "comment",
            "--comment",
            &c,
            "-j",
            &chain,
        ],
    )? {}
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_name_is_stable_and_short() {
        let a = super::chain_name("mynet");
        assert_eq!(a, super::chain_name("mynet"));
        assert_ne!(a, super::chain_name("othernet"));
        assert!(a.len() <= 28, "{a}");
    }
}
