//! The nftables mode as the agent plugs it in ([`sluice_proxy::mode::Mode`]).

use sluice_proxy::mode::{BoxDataplane, Mode, ModeContext};
use sluice_proxy::model::IpFamily;
use sluice_proxy::proxier::Error;

use crate::apply::Tools;
use crate::{NftablesDataplane, RenderConfig};

/// `--proxy-mode nftables`.
pub struct NftablesMode;

const NAME: &str = "nftables";

impl Mode for NftablesMode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, _: &ModeContext) -> Result<(), String> {
        if Tools::default().nft.available() {
            Ok(())
        } else {
            Err("the `nft` command does not run (Debian package nftables)".into())
        }
    }

    fn has_leftovers(&self, _: &ModeContext) -> bool {
        let nft = Tools::default().nft;
        nft.available()
            && [IpFamily::V4, IpFamily::V6]
                .into_iter()
                .any(|f| nft.has_table(f))
    }

    fn remove_all(&self, _: &ModeContext) -> Result<(), Error> {
        let nft = Tools::default().nft;
        if !nft.available() {
            return Ok(());
        }
        nft.delete_tables().map(drop).map_err(|e| Error::Cleanup {
            dataplane: NAME,
            message: "deleting Sluice's tables".into(),
            source: Some(e.into()),
        })
    }

    /// nft's own listing of Sluice's tables (`ip sluice`, and `ip6 sluice` if present): the
    /// kernel's canonical text, which `nft -f` reads back.
    fn dump(&self, _: &ModeContext) -> Result<String, Error> {
        let nft = Tools::default().nft;
        Ok([IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter_map(|f| nft.dump(f))
            .collect())
    }

    fn build(&self, ctx: &ModeContext) -> Result<BoxDataplane, Error> {
        let mut cfg = RenderConfig::new(ctx.node_name.clone());
        cfg.node_ips = ctx.node_ips.clone();
        cfg.cluster_cidr = ctx.cluster_cidr;
        Ok(Box::new(NftablesDataplane::new(cfg, Tools::default())))
    }
}
