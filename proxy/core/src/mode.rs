//! One plug-in shape for every proxy mode.
//!
//! The agent holds a table of [`Mode`]s and knows nothing else of them: it picks the one
//! `--proxy-mode` names, asks it whether it can run here ([`Mode::probe`]), removes what every
//! *other* mode left on the node ([`Mode::has_leftovers`], [`Mode::remove_all`]) and runs the
//! chosen one's [`Dataplane`] under the shared [`crate::proxier::Proxier`]. `debug dump` asks
//! the mode for its kernel state in its render's text ([`Mode::dump`]). Each mode crate owns
//! the names of its kernel objects (chains, tables, pinned maps); no mode names another's.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::proxier::{Dataplane, Error};

/// A dataplane chosen at run time.
pub type BoxDataplane = Box<dyn Dataplane + Send>;

/// What the agent knows that a mode may need: the node, its addresses, and where its kernel
/// state lives. One context serves every mode; each reads the fields it needs.
#[derive(Debug, Clone)]
pub struct ModeContext {
    /// This node's name.
    pub node_name: String,
    /// The node's addresses (NodePorts are served on them).
    pub node_ips: Vec<IpAddr>,
    /// The cluster's pod CIDR (traffic from outside it to a Service is masqueraded).
    pub cluster_cidr: Option<IpNet>,
    /// The iptables tools of the backend the node uses (`--iptables-backend`).
    pub iptables: sluice_iptables_tools::Commands,
    /// The async runtime, for modes that serve connections themselves (userspace).
    pub runtime: Option<tokio::runtime::Handle>,
    /// The cgroup v2 directory that holds this node's pods (the ebpf mode's socket hooks attach
    /// there, never to the root cgroup).
    pub cgroup: Option<PathBuf>,
    /// This agent's directory on bpffs (pinned maps and links survive an agent restart).
    pub bpf_dir: PathBuf,
    /// The interface traffic from outside the node arrives on (the ebpf mode's NodePort
    /// programs attach there); `None` = the interface holding the first node IP.
    pub external_interface: Option<String>,
    /// The node's IPVS scheduler (`--ipvs-scheduler`: `rr`, `lc`, `sh`, `mh`, …) for the ipvs
    /// mode; `None` = that mode's default (round robin).
    pub ipvs_scheduler: Option<String>,
}

impl ModeContext {
    /// A context for `node` with nothing else known (enough for leftovers, cleanup and dump).
    pub fn new(node: impl Into<String>) -> Self {
        let node_name = node.into();
        Self {
            bpf_dir: PathBuf::from(DEFAULT_BPF_ROOT).join(&node_name),
            node_name,
            node_ips: Vec::new(),
            cluster_cidr: None,
            iptables: sluice_iptables_tools::Commands::default(),
            runtime: None,
            cgroup: None,
            external_interface: None,
            ipvs_scheduler: None,
        }
    }
}

/// Where agents keep their bpffs state by default, one directory per node name.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/sluice";

/// A proxy mode as the agent sees it.
pub trait Mode: Send + Sync {
    /// The `--proxy-mode` spelling (`"iptables"`, `"ebpf"`, …).
    fn name(&self) -> &'static str;

    /// Whether the mode can run on this machine; `Err` says why not in words an operator can
    /// act on (the missing tool and its package, the missing kernel feature).
    fn probe(&self, ctx: &ModeContext) -> Result<(), String>;

    /// iptables chains (table, chain) whose presence marks this mode's rules, so the agent can
    /// tell which iptables backend holds Sluice's state. Modes without iptables rules: none.
    fn iptables_markers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// A cheap check for anything of this mode on the node (another mode runs now, so it must go).
    fn has_leftovers(&self, ctx: &ModeContext) -> bool;

    /// Removes everything this mode ever programmed on the node; nothing there is success.
    fn remove_all(&self, ctx: &ModeContext) -> Result<(), Error>;

    /// The mode's kernel state on this node, in the text of its render's golden files.
    fn dump(&self, ctx: &ModeContext) -> Result<String, Error>;

    /// The dataplane the proxier drives. Called after a successful [`Mode::probe`].
    fn build(&self, ctx: &ModeContext) -> Result<BoxDataplane, Error>;
}

/// Finds the mode named `name` in `table`.
pub fn find<'a>(table: &'a [Box<dyn Mode>], name: &str) -> Option<&'a dyn Mode> {
    table.iter().find(|m| m.name() == name).map(|m| m.as_ref())
}

/// Every iptables marker chain of the modes in `table`.
pub fn iptables_markers(table: &[Box<dyn Mode>]) -> Vec<(&'static str, &'static str)> {
    table
        .iter()
        .flat_map(|m| m.iptables_markers().iter().copied())
        .collect()
}

impl<D: Dataplane + ?Sized> Dataplane for Box<D> {
    fn sync(
        &mut self,
        services: &crate::model::ServicePortMap,
        endpoints: &crate::model::EndpointsMap,
        changes: &crate::proxier::Changes,
    ) -> Result<(), Error> {
        (**self).sync(services, endpoints, changes)
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        (**self).cleanup()
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// An error of a mode operation outside a sync (dump, build), in the dataplane error type.
pub fn error(mode: &'static str, message: impl Into<String>) -> Error {
    Error::Mode {
        dataplane: mode,
        message: message.into(),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str, &'static [(&'static str, &'static str)]);

    impl Mode for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn probe(&self, _: &ModeContext) -> Result<(), String> {
            Ok(())
        }
        fn iptables_markers(&self) -> &'static [(&'static str, &'static str)] {
            self.1
        }
        fn has_leftovers(&self, _: &ModeContext) -> bool {
            false
        }
        fn remove_all(&self, _: &ModeContext) -> Result<(), Error> {
            Ok(())
        }
        fn dump(&self, _: &ModeContext) -> Result<String, Error> {
            Ok(String::new())
        }
        fn build(&self, _: &ModeContext) -> Result<BoxDataplane, Error> {
            Err(error(self.0, "no dataplane"))
        }
    }

    #[test]
    fn table_lookup_and_markers() {
        let table: Vec<Box<dyn Mode>> = vec![
            Box::new(Named("a", &[("nat", "A")])),
            Box::new(Named("b", &[])),
            Box::new(Named("c", &[("filter", "C1"), ("nat", "C2")])),
        ];
        assert_eq!(find(&table, "b").map(|m| m.name()), Some("b"));
        assert!(find(&table, "ipvs").is_none());
        assert_eq!(
            iptables_markers(&table),
            vec![("nat", "A"), ("filter", "C1"), ("nat", "C2")]
        );
        let ctx = ModeContext::new("node-1");
        assert_eq!(ctx.bpf_dir, PathBuf::from("/sys/fs/bpf/sluice/node-1"));
        let e = find(&table, "a").unwrap().build(&ctx).err().unwrap();
        assert_eq!(e.to_string(), "a mode: no dataplane");
    }
}
