//! Masquerade for traffic from this node's pods to destinations outside the cluster CIDR:
//! a `SLUICENODE-MASQ` chain in the nat table, written in one `iptables-restore --noflush`
//! transaction (pure render + a thin apply that shells out).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use sluice_iptables_tools::{run, Commands, RunError};

/// Our chain in the nat table. Deliberately outside the `SLUICE-` prefix the iptables proxy
/// mode owns: proxy syncs rewrite, and mode switches delete, every `SLUICE-` chain, and node
/// networking must survive both.
pub const CHAIN: &str = "SLUICENODE-MASQ";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool could not be run, or failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// True if `iptables-save -t nat` output already jumps from POSTROUTING to our chain.
pub fn has_jump(save: &str) -> bool {
    save.lines().any(|l| {
        l.starts_with("-A POSTROUTING ")
            && l.split_whitespace()
                .collect::<Vec<_>>()
                .ends_with(&["-j", CHAIN])
    })
}

/// The comment of the jump from POSTROUTING.
const JUMP_COMMENT: &str = "sluice: masquerade pod traffic leaving the cluster";

/// The `iptables-restore --noflush` input. Declaring the chain flushes it (and only it), so
/// the transaction replaces our rules atomically and leaves every other chain alone; the jump
/// from POSTROUTING is added only when `jump_present` is false.
pub fn render(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net, jump_present: bool) -> String {
    let mut s = String::from("*nat\n");
    s.push_str(&format!(":{CHAIN} - [0:0]\n"));
    if !jump_present {
        s.push_str(&format!(
            "-A POSTROUTING -m comment --comment \"{JUMP_COMMENT}\" -j {CHAIN}\n"
        ));
    }
    s.push_str(&format!(
        "-A {CHAIN} -s {} ! -d {} -m comment --comment \"sluice: pods to outside the cluster\" -j MASQUERADE\n",
        pod_cidr.trunc(),
        cluster_cidr.trunc()
    ));
    s.push_str("COMMIT\n");
    s
}

/// Finds an executable on PATH (plus the sbin directories, which PATH often lacks).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `restore --noflush --wait` with `input`.
fn restore(restore: &Path, input: &str) -> Result<(), Error> {
    run(
        Command::new(restore).args(["--noflush", "--wait"]),
        Some(|w: &mut dyn Write| w.write_all(input.as_bytes())),
    )?;
    Ok(())
}

/// Resolves a command name on PATH (plus the sbin directories); `None` if not installed.
fn resolve(cmd: &Path) -> Option<PathBuf> {
    if cmd.components().count() > 1 {
        return is_executable(cmd).then(|| cmd.to_path_buf());
    }
    which(&cmd.to_string_lossy())
}

/// Whether POSTROUTING jumps to our chain (`iptables -C`: no `iptables-save` of the whole nat
/// table, which holds every proxy chain).
fn jump_present(iptables: &Path) -> bool {
    Command::new(iptables)
        .args([
            "-w",
            "-t",
            "nat",
            "-C",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
        ])
        .arg(JUMP_COMMENT)
        .args(["-j", CHAIN])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the rules in the current network namespace with the iptables backend of
/// `commands` (the proxy's: one node never mixes backends). Returns Ok(false) when iptables is
/// not installed (nothing to do).
pub fn apply(commands: &Commands, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<bool, Error> {
    let (Some(iptables), Some(restore)) = (resolve(&commands.iptables), resolve(&commands.restore))
    else {
        return Ok(false);
    };
    let input = render(pod_cidr, cluster_cidr, jump_present(&iptables));
    self::restore(&restore, &input)?;
    Ok(true)
}

/// Removes the chain and the jump to it from the backend of `commands` (switching backends).
/// Returns whether anything was there.
pub fn remove(commands: &Commands) -> Result<bool, Error> {
    let (Some(iptables), Some(restore)) = (resolve(&commands.iptables), resolve(&commands.restore))
    else {
        return Ok(false);
    };
    let jump = jump_present(&iptables);
    let chain = Command::new(&iptables)
        .args(["-w", "-t", "nat", "-S", CHAIN])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !jump && !chain {
        return Ok(false);
    }
    let mut s = String::from("*nat\n");
    if jump {
        s.push_str(&format!(
            "-D POSTROUTING -m comment --comment \"{JUMP_COMMENT}\" -j {CHAIN}\n"
        ));
    }
    if chain {
        s.push_str(&format!(":{CHAIN} - [0:0]\n-X {CHAIN}\n"));
    }
    s.push_str("COMMIT\n");
    self::restore(&restore, &s)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_transaction() {
        let got = render(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            false,
        );
        assert_eq!(
            got,
            "*nat\n\
             :SLUICENODE-MASQ - [0:0]\n\
             -A POSTROUTING -m comment --comment \"sluice: masquerade pod traffic leaving the cluster\" -j SLUICENODE-MASQ\n\
             -A SLUICENODE-MASQ -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment \"sluice: pods to outside the cluster\" -j MASQUERADE\n\
             COMMIT\n"
        );
        let again = render(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            true,
        );
        assert!(!again.contains("-A POSTROUTING"));
    }

    #[test]
    fn detects_the_jump_in_iptables_save_output() {
        let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n:SLUICENODE-MASQ - [0:0]\n\
                    -A POSTROUTING -m comment --comment \"sluice: masquerade pod traffic leaving the cluster\" -j SLUICENODE-MASQ\nCOMMIT\n";
        assert!(has_jump(save));
        assert!(!has_jump(
            "*nat\n:SLUICENODE-MASQ - [0:0]\n-A SLUICENODE-MASQ -j RETURN\nCOMMIT\n"
        ));
        assert!(!has_jump("-A POSTROUTING -j SLUICENODE-MASQ-OLD\n"));
    }
}
