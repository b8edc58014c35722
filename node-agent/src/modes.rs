//! The agent's table of proxy modes, and what it does with them at start: pick the iptables
//! backend, check that the chosen mode can run, remove every other mode's leftovers.
//!
//! The agent knows modes only through [`sluice_proxy::mode::Mode`]; adding a mode is one line
//! in [`table`].

use std::path::PathBuf;

use sluice_iptables_tools::{detect_backend, Backend, Commands};
use sluice_proxy::mode::{self, Mode, ModeContext};

use crate::cli::{IptablesBackend, ProxyMode};
use crate::masq;

/// Every proxy mode the agent can run.
pub fn table() -> Vec<Box<dyn Mode>> {
    vec![
        Box::new(sluice_proxy_userspace::mode::UserspaceMode),
        Box::new(sluice_proxy_iptables::mode::IptablesMode),
        Box::new(sluice_proxy_ipvs::mode::IpvsMode),
        Box::new(sluice_proxy_nftables::mode::NftablesMode),
        Box::new(sluice_ebpf::mode::EbpfMode),
    ]
}

impl ProxyMode {
    /// The `--proxy-mode` spelling, which is also the [`Mode::name`] of the mode.
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::None => "none",
            ProxyMode::Userspace => "userspace",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ebpf => "ebpf",
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified`
/// on a hybrid one), from this process's mount table.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_in(&table)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    // `id parent major:minor root mount-point options [optional…] - fstype source options`
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 directory of `--cgroup-root` (which names a cgroup path such as
/// `/lab/node-1`), if cgroup v2 is mounted.
pub fn cgroup2_dir(cgroup_root: &str) -> Option<PathBuf> {
    Some(cgroup2_mount()?.join(cgroup_root.trim_start_matches('/')))
}

/// The mode `--proxy-mode` names, `Ok(None)` for `none`, or an error naming the modes there are.
pub fn lookup(table: &[Box<dyn Mode>], wanted: ProxyMode) -> Result<Option<&dyn Mode>, String> {
    if wanted == ProxyMode::None {
        return Ok(None);
    }
    let name = wanted.name();
    match mode::find(table, name) {
        Some(m) => Ok(Some(m)),
        None => {
            let have: Vec<&str> = table.iter().map(|m| m.name()).collect();
            Err(format!(
                "--proxy-mode {name} is not implemented yet (`none`, `{}` are)",
                have.join("`, `")
            ))
        }
    }
}

/// Switching modes leaves nothing of the old one: every mode but `keep` that holds something
/// on this node has it removed.
pub fn remove_others(table: &[Box<dyn Mode>], keep: Option<&str>, ctx: &ModeContext) {
    for m in table {
        if Some(m.name()) == keep || !m.has_leftovers(ctx) {
            continue;
        }
        match m.remove_all(ctx) {
            Ok(()) => tracing::info!(mode = m.name(), "removed the proxy mode's leftovers"),
            Err(e) => {
                tracing::warn!(mode = m.name(), error = %e, "removing the proxy mode's leftovers failed")
            }
        }
    }
}

/// iptables chains of everything in the agent that writes iptables rules: the modes' and the
/// node masquerade's.
pub fn iptables_markers(table: &[Box<dyn Mode>]) -> Vec<(&'static str, &'static str)> {
    let mut v = mode::iptables_markers(table);
    v.push(("nat", masq::CHAIN));
    v
}

/// `--iptables-backend`: the backend's commands (auto: the one holding Sluice's chains, else
/// nft). Sluice chains in the other backend (a previous run with the other choice) are removed,
/// so one node never mixes backends.
pub fn iptables_commands(
    choice: IptablesBackend,
    table: &[Box<dyn Mode>],
    ctx: &ModeContext,
) -> Commands {
    let markers = iptables_markers(table);
    let backend = match choice {
        IptablesBackend::Nft => Backend::Nft,
        IptablesBackend::Legacy => Backend::Legacy,
        IptablesBackend::Auto => {
            let b = detect_backend(&markers);
            // Only one backend installed: that one.
            if !Commands::for_backend(b).available() && Commands::for_backend(b.other()).available()
            {
                b.other()
            } else {
                b
            }
        }
    };
    let commands = Commands::for_backend(backend);
    if !commands.available() {
        tracing::warn!(
            backend = backend.name(),
            "iptables-{} not found; using plain iptables",
            backend.name()
        );
        return Commands::default();
    }
    let other = Commands::for_backend(backend.other());
    if other.available() && other.holds_any(&markers) {
        tracing::info!(
            from = backend.other().name(),
            to = backend.name(),
            "removing Sluice chains from the other iptables backend"
        );
        let in_other = ModeContext {
            iptables: other.clone(),
            ..ctx.clone()
        };
        for m in table.iter().filter(|m| !m.iptables_markers().is_empty()) {
            if m.has_leftovers(&in_other) {
                if let Err(e) = m.remove_all(&in_other) {
                    tracing::warn!(mode = m.name(), error = %e, "removing rules from the other backend failed");
                }
            }
        }
        if let Err(e) = masq::remove(&other) {
            tracing::warn!(error = %e, "removing the masquerade rules from the other backend failed");
        }
    }
    tracing::info!(backend = backend.name(), "iptables backend");
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_in_the_table_has_its_cli_name() {
        let table = table();
        for m in &table {
            let cli = <ProxyMode as clap::ValueEnum>::from_str(m.name(), false).unwrap();
            assert_eq!(cli.name(), m.name());
        }
    }

    #[test]
    fn unimplemented_and_none() {
        let table = table();
        assert!(lookup(&table, ProxyMode::None).unwrap().is_none());
        assert_eq!(
            lookup(&table, ProxyMode::Ipvs).unwrap().map(|m| m.name()),
            Some("ipvs")
        );
        // A mode missing from the table is named as such.
        let partial: Vec<Box<dyn Mode>> = vec![Box::new(sluice_proxy_iptables::mode::IptablesMode)];
        let e = lookup(&partial, ProxyMode::Ipvs).err().unwrap();
        assert!(
            e.starts_with("--proxy-mode ipvs is not implemented yet"),
            "{e}"
        );
        assert!(e.contains("`iptables`"), "{e}");
    }

    #[test]
    fn cgroup2_mount_from_mountinfo() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn markers_include_every_iptables_writer() {
        let m = iptables_markers(&table());
        for want in [
            ("nat", "SLUICE-SERVICES"),
            ("nat", "SLUICEUS-PORTALS-CONTAINER"),
            ("nat", masq::CHAIN),
        ] {
            assert!(m.contains(&want), "{want:?} in {m:?}");
        }
    }
}
