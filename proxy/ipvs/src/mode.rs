//! The ipvs mode as the agent plugs it in ([`sluice_proxy::mode::Mode`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use sluice_proxy::mode::{self, BoxDataplane, Mode, ModeContext};
use sluice_proxy::model::IpFamily;
use sluice_proxy::proxier::Error;

use crate::apply::IpvsDataplane;
use crate::backend::{self, Kernel, SystemKernel};
use crate::client::IpvsClient;
use crate::error::Error as IpvsError;
use crate::plan::{state_text, Config, Current, Listing, Model};
use crate::rtnl::Rtnl;
use crate::scheduler::Scheduler;
use crate::{sysctl, DUMMY_LINK};

/// `--proxy-mode ipvs`.
pub struct IpvsMode;

const NAME: &str = "ipvs";

/// What [`probe_with`] checks, so that it can be tested without the kernel it asks about.
pub trait ProbeEnv {
    /// Reaches the kernel's IPVS ([`IpvsError::NoIpvs`] without it).
    fn ipvs(&mut self) -> Result<(), IpvsError>;
    /// `modprobe <module>`; whether it succeeded.
    fn modprobe(&mut self, module: &str) -> Result<(), String>;
    /// Whether `nft` runs.
    fn nft_available(&mut self) -> bool;
    /// Makes sure the dummy link exists (creating it: the mode needs it anyway).
    fn dummy_link(&mut self) -> Result<(), IpvsError>;
}

/// The real checks, in the caller's network namespace.
pub struct SystemProbe;

impl ProbeEnv for SystemProbe {
    fn ipvs(&mut self) -> Result<(), IpvsError> {
        IpvsClient::connect().map(drop)
    }

    fn modprobe(&mut self, module: &str) -> Result<(), String> {
        match Command::new("modprobe").arg(module).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(format!("running modprobe: {e}")),
        }
    }

    fn nft_available(&mut self) -> bool {
        backend::nft().available()
    }

    fn dummy_link(&mut self) -> Result<(), IpvsError> {
        Rtnl::open()?.ensure_dummy(DUMMY_LINK).map(drop)
    }
}

/// Whether the mode can run where `env` looks: IPVS (loading `ip_vs` when it is missing),
/// `nft`, dummy links. `Err` says what is missing in words an operator can act on.
pub fn probe_with(env: &mut dyn ProbeEnv) -> Result<(), String> {
    match env.ipvs() {
        Ok(()) => {}
        Err(IpvsError::NoIpvs) => {
            let loaded = env.modprobe("ip_vs");
            match (loaded, env.ipvs()) {
                (Ok(()), Ok(())) => {}
                (Ok(()), Err(e)) => return Err(e.to_string()),
                (Err(why), _) => {
                    return Err(format!("{} (modprobe ip_vs: {why})", IpvsError::NoIpvs))
                }
            }
        }
        Err(e) => return Err(format!("cannot talk to the kernel's IPVS: {e}")),
    }
    if !env.nft_available() {
        return Err(
            "the `nft` command does not run (Debian package nftables); the ipvs mode keeps its \
             masquerade and filter rules in an nftables table"
                .into(),
        );
    }
    env.dummy_link().map_err(|e| {
        format!(
            "cannot create the dummy link {DUMMY_LINK} that holds the service addresses \
             (CONFIG_DUMMY; modprobe dummy): {e}"
        )
    })
}

/// The planner configuration for `ctx`: its node, IPv4 node IPs, cluster CIDR and
/// `--ipvs-scheduler` (round robin when unset).
pub fn config(ctx: &ModeContext) -> Result<Config, String> {
    let scheduler = match &ctx.ipvs_scheduler {
        Some(s) => Scheduler::parse(s)?,
        None => Scheduler::rr(),
    };
    let mut cfg = Config::new(ctx.node_name.clone());
    cfg.node.node_ips = ctx
        .node_ips
        .iter()
        .filter(|ip| IpFamily::V4.matches(ip))
        .copied()
        .collect();
    cfg.node.cluster_cidr = ctx.cluster_cidr;
    cfg.scheduler = scheduler;
    Ok(cfg)
}

/// Sluice's virtual servers with their destinations, and the dummy link's addresses, as the
/// kernel has them. Without IPVS: none.
fn kernel_state(cfg: &Config) -> Result<(Listing, BTreeSet<IpAddr>), IpvsError> {
    let mut rt = Rtnl::open()?;
    let addresses: BTreeSet<IpAddr> = match rt.link_index(DUMMY_LINK)? {
        Some(i) => rt.addresses(i)?.into_iter().collect(),
        None => BTreeSet::new(),
    };
    let mut ipvs = match IpvsClient::connect() {
        Ok(c) => c,
        Err(IpvsError::NoIpvs) => return Ok((Vec::new(), addresses)),
        Err(e) => return Err(e),
    };
    let none = Model::default();
    let mut listed = Vec::new();
    for s in ipvs.services()? {
        if Current::is_ours(&s, &addresses, cfg, &none) {
            let d = ipvs.destinations(&s)?;
            listed.push((s, d));
        }
    }
    Ok((listed, addresses))
}

fn fallback_config(ctx: &ModeContext) -> Config {
    config(ctx).unwrap_or_else(|_| {
        let mut c = Config::new(ctx.node_name.clone());
        c.node.node_ips = ctx.node_ips.clone();
        c
    })
}

impl Mode for IpvsMode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, ctx: &ModeContext) -> Result<(), String> {
        config(ctx)?;
        probe_with(&mut SystemProbe)
    }

    fn has_leftovers(&self, ctx: &ModeContext) -> bool {
        let tools = backend::nft();
        if tools.available()
            && [IpFamily::V4, IpFamily::V6]
                .into_iter()
                .any(|f| tools.has_table(f))
        {
            return true;
        }
        if Rtnl::open()
            .and_then(|mut r| r.link_index(DUMMY_LINK))
            .is_ok_and(|i| i.is_some())
        {
            return true;
        }
        kernel_state(&fallback_config(ctx)).is_ok_and(|(listed, _)| !listed.is_empty())
    }

    /// Sluice's virtual servers (addresses on the dummy link, and node IPs in the NodePort
    /// range), the dummy link, the nftables tables. Other IPVS users' services stay.
    fn remove_all(&self, ctx: &ModeContext) -> Result<(), Error> {
        let cleanup = |message: String, e: IpvsError| Error::Cleanup {
            dataplane: NAME,
            message,
            source: Some(Box::new(e)),
        };
        let cfg = fallback_config(ctx);
        let (listed, _) =
            kernel_state(&cfg).map_err(|e| cleanup("listing Sluice's IPVS services".into(), e))?;
        if !listed.is_empty() {
            let mut ipvs =
                IpvsClient::connect().map_err(|e| cleanup("connecting to IPVS".into(), e))?;
            for (s, _) in &listed {
                match ipvs.delete_service(s) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(cleanup(format!("deleting IPVS service {s}"), e)),
                }
            }
        }
        Rtnl::open()
            .and_then(|mut r| r.delete_link(DUMMY_LINK))
            .map_err(|e| cleanup(format!("deleting link {DUMMY_LINK}"), e))?;
        let tools = backend::nft();
        if tools.available() {
            tools.delete_tables().map_err(|e| Error::Cleanup {
                dataplane: NAME,
                message: format!("deleting table {}", crate::render::TABLE),
                source: Some(Box::new(e)),
            })?;
        }
        Ok(())
    }

    /// Sluice's virtual servers and the dummy link's addresses in the golden files' state
    /// text ([`state_text`]), then nft's listing of the companion table. Without node IPs in
    /// `ctx` (`sluice-agent debug dump`), NodePort virtual servers on any address of the node
    /// are shown.
    fn dump(&self, ctx: &ModeContext) -> Result<String, Error> {
        let mut cfg = fallback_config(ctx);
        if cfg.node.node_ips.is_empty() {
            // `debug dump` knows no node IP: NodePorts may be on any address of the node
            // (but not the dummy link's: those are shown by being on it).
            let mut rt = Rtnl::open().map_err(|e| mode::error(NAME, e.to_string()))?;
            let dummy = rt
                .link_index(DUMMY_LINK)
                .map_err(|e| mode::error(NAME, e.to_string()))?;
            cfg.node.node_ips = rt
                .all_addresses()
                .map_err(|e| mode::error(NAME, e.to_string()))?
                .into_iter()
                .filter(|(i, ip)| Some(*i) != dummy && IpFamily::V4.matches(ip))
                .map(|(_, ip)| ip)
                .collect();
        }
        let (listed, addresses) =
            kernel_state(&cfg).map_err(|e| mode::error(NAME, e.to_string()))?;
        let current = Current::from_kernel(
            &listed,
            addresses,
            &Model::default(),
            &Default::default(),
            Default::default(),
        );
        let mut out = state_text(&current);
        out.push_str("# nftables\n");
        let tools = backend::nft();
        for f in [IpFamily::V4, IpFamily::V6] {
            if let Some(t) = tools.dump(f) {
                out.push_str(&t);
            }
        }
        Ok(out)
    }

    fn build(&self, ctx: &ModeContext) -> Result<BoxDataplane, Error> {
        let cfg = config(ctx).map_err(|e| mode::error(NAME, e))?;
        let changed = sysctl::apply(std::path::Path::new(sysctl::PROC_SYS))
            .map_err(|e| mode::error(NAME, e.to_string()))?;
        if !changed.is_empty() {
            tracing::info!(?changed, "ipvs mode: kernel settings");
        }
        let kernel: Box<dyn Kernel> = Box::new(
            SystemKernel::open(backend::nft()).map_err(|e| mode::error(NAME, e.to_string()))?,
        );
        tracing::info!(scheduler = %cfg.scheduler, node_ips = ?cfg.node.node_ips, "ipvs mode");
        Ok(Box::new(IpvsDataplane::new(cfg, kernel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripted answers.
    struct Fake {
        ipvs: Vec<Result<(), IpvsError>>,
        modprobe: Result<(), String>,
        nft: bool,
        dummy: Option<IpvsError>,
        calls: Vec<String>,
    }

    impl ProbeEnv for Fake {
        fn ipvs(&mut self) -> Result<(), IpvsError> {
            self.calls.push("ipvs".into());
            self.ipvs.remove(0)
        }
        fn modprobe(&mut self, module: &str) -> Result<(), String> {
            self.calls.push(format!("modprobe {module}"));
            self.modprobe.clone()
        }
        fn nft_available(&mut self) -> bool {
            self.calls.push("nft".into());
            self.nft
        }
        fn dummy_link(&mut self) -> Result<(), IpvsError> {
            self.calls.push("dummy".into());
            self.dummy.take().map_or(Ok(()), Err)
        }
    }

    fn fake(ipvs: Vec<Result<(), IpvsError>>) -> Fake {
        Fake {
            ipvs,
            modprobe: Ok(()),
            nft: true,
            dummy: None,
            calls: Vec::new(),
        }
    }

    #[test]
    fn probe_says_why() {
        let mut f = fake(vec![Ok(())]);
        assert_eq!(probe_with(&mut f), Ok(()));
        assert_eq!(f.calls, ["ipvs", "nft", "dummy"]);

        // Not loaded, and loading helps.
        let mut f = fake(vec![Err(IpvsError::NoIpvs), Ok(())]);
        assert_eq!(probe_with(&mut f), Ok(()));
        assert_eq!(f.calls, ["ipvs", "modprobe ip_vs", "ipvs", "nft", "dummy"]);

        // No IPVS at all.
        let mut f = fake(vec![Err(IpvsError::NoIpvs), Err(IpvsError::NoIpvs)]);
        f.modprobe =
            Err("modprobe: FATAL: Module ip_vs not found in directory /lib/modules/6.18".into());
        assert_eq!(
            probe_with(&mut f).unwrap_err(),
            "the kernel has no IPVS (generic netlink family IPVS not found; load ip_vs or build \
             CONFIG_IP_VS) (modprobe ip_vs: modprobe: FATAL: Module ip_vs not found in \
             directory /lib/modules/6.18)"
        );

        let mut f = fake(vec![Ok(())]);
        f.nft = false;
        assert!(probe_with(&mut f)
            .unwrap_err()
            .starts_with("the `nft` command does not run"));

        let mut f = fake(vec![Ok(())]);
        f.dummy = Some(IpvsError::Kernel {
            op: "creating dummy link sluice-ipvs0".into(),
            errno: libc::EOPNOTSUPP,
        });
        let e = probe_with(&mut f).unwrap_err();
        assert!(
            e.starts_with("cannot create the dummy link sluice-ipvs0"),
            "{e}"
        );
    }

    /// The real checks, except that nothing is loaded into the kernel running the tests.
    struct NoModprobe;

    impl ProbeEnv for NoModprobe {
        fn ipvs(&mut self) -> Result<(), IpvsError> {
            SystemProbe.ipvs()
        }
        fn modprobe(&mut self, _: &str) -> Result<(), String> {
            Err("not tried by unit tests".into())
        }
        fn nft_available(&mut self) -> bool {
            SystemProbe.nft_available()
        }
        fn dummy_link(&mut self) -> Result<(), IpvsError> {
            Err(IpvsError::Kernel {
                op: "not tried by unit tests".into(),
                errno: libc::EPERM,
            })
        }
    }

    #[test]
    fn probe_on_this_machine() {
        // The development machine's kernel has no IPVS; a VM kernel with ip_vs gets past it.
        match IpvsClient::connect() {
            Err(IpvsError::NoIpvs) => {
                let e = probe_with(&mut NoModprobe).unwrap_err();
                assert_eq!(
                    e,
                    "the kernel has no IPVS (generic netlink family IPVS not found; load ip_vs \
                     or build CONFIG_IP_VS) (modprobe ip_vs: not tried by unit tests)"
                );
                // Nothing of the mode here: no leftovers.
                assert!(!IpvsMode.has_leftovers(&ModeContext::new("n")));
            }
            _ => eprintln!("SKIP: this kernel has IPVS; the VM tests cover the probe"),
        }
    }

    #[test]
    fn config_from_context() {
        let mut ctx = ModeContext::new("n1");
        ctx.node_ips = vec!["192.168.1.10".parse().unwrap(), "fd00::1".parse().unwrap()];
        let c = config(&ctx).unwrap();
        assert_eq!(c.scheduler.as_str(), "rr");
        assert_eq!(
            c.node.node_ips,
            vec!["192.168.1.10".parse::<IpAddr>().unwrap()]
        );
        ctx.ipvs_scheduler = Some("mh".into());
        assert_eq!(config(&ctx).unwrap().scheduler.as_str(), "mh");
        ctx.ipvs_scheduler = Some("fastest".into());
        assert!(config(&ctx)
            .unwrap_err()
            .starts_with("unknown IPVS scheduler"));
    }
}
