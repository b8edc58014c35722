//! The thin kernel backend: the few primitive operations the dataplane needs ([`Kernel`]),
//! implemented on the real kernel by [`SystemKernel`] (IPVS over generic netlink, the dummy
//! link over rtnetlink, the companion table through `nft -f`). Tests drive the dataplane
//! through an in-memory implementation instead.

use std::net::IpAddr;

use sluice_proxy_nftables::nft::Nft;

use crate::client::IpvsClient;
use crate::error::{Error, Result};
use crate::netlink::{Destination, Service};
use crate::render::TABLE;
use crate::rtnl::Rtnl;
use crate::DUMMY_LINK;

/// What the dataplane asks of the kernel.
pub trait Kernel: Send {
    /// Every IPVS virtual server of the network namespace.
    fn services(&mut self) -> Result<Vec<Service>>;
    /// The destinations of `svc`.
    fn destinations(&mut self, svc: &Service) -> Result<Vec<Destination>>;
    /// Creates `svc`.
    fn add_service(&mut self, svc: &Service) -> Result<()>;
    /// Changes `svc`'s settings.
    fn update_service(&mut self, svc: &Service) -> Result<()>;
    /// Deletes `svc`.
    fn delete_service(&mut self, svc: &Service) -> Result<()>;
    /// Adds `dest` to `svc`.
    fn add_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()>;
    /// Changes `dest` of `svc`.
    fn update_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()>;
    /// Removes `dest` from `svc`.
    fn delete_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()>;
    /// The dummy link's index, if it exists.
    fn link(&mut self) -> Result<Option<u32>>;
    /// The dummy link's index, created if missing.
    fn ensure_link(&mut self) -> Result<u32>;
    /// Deletes the dummy link (and so its addresses); nothing to delete is fine.
    fn delete_link(&mut self) -> Result<()>;
    /// The addresses of link `index`.
    fn link_addresses(&mut self, index: u32) -> Result<Vec<IpAddr>>;
    /// Adds host address `ip` to link `index`.
    fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()>;
    /// Removes host address `ip` from link `index`.
    fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()>;
    /// Runs an `nft -f` script (one transaction).
    fn nft(&mut self, script: &str) -> Result<()>;
}

/// `nft` for the companion table.
pub fn nft() -> Nft {
    Nft::new(TABLE)
}

/// [`Kernel`] on the real kernel of the caller's network namespace.
pub struct SystemKernel {
    ipvs: IpvsClient,
    rtnl: Rtnl,
    tools: Nft,
}

impl SystemKernel {
    /// Connects to IPVS ([`Error::NoIpvs`] without it) and rtnetlink.
    pub fn open(tools: Nft) -> Result<Self> {
        Ok(Self {
            ipvs: IpvsClient::connect()?,
            rtnl: Rtnl::open()?,
            tools,
        })
    }

    /// The IPVS client.
    pub fn ipvs(&mut self) -> &mut IpvsClient {
        &mut self.ipvs
    }
}

impl Kernel for SystemKernel {
    fn services(&mut self) -> Result<Vec<Service>> {
        self.ipvs.services()
    }

    fn destinations(&mut self, svc: &Service) -> Result<Vec<Destination>> {
        self.ipvs.destinations(svc)
    }

    fn add_service(&mut self, svc: &Service) -> Result<()> {
        self.ipvs.add_service(svc)
    }

    fn update_service(&mut self, svc: &Service) -> Result<()> {
        self.ipvs.update_service(svc)
    }

    fn delete_service(&mut self, svc: &Service) -> Result<()> {
        self.ipvs.delete_service(svc)
    }

    fn add_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()> {
        self.ipvs.add_destination(svc, dest)
    }

    fn update_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()> {
        self.ipvs.update_destination(svc, dest)
    }

    fn delete_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()> {
        self.ipvs.delete_destination(svc, dest)
    }

    fn link(&mut self) -> Result<Option<u32>> {
        self.rtnl.link_index(DUMMY_LINK)
    }

    fn ensure_link(&mut self) -> Result<u32> {
        self.rtnl.ensure_dummy(DUMMY_LINK)
    }

    fn delete_link(&mut self) -> Result<()> {
        self.rtnl.delete_link(DUMMY_LINK).map(drop)
    }

    fn link_addresses(&mut self, index: u32) -> Result<Vec<IpAddr>> {
        self.rtnl.addresses(index)
    }

    fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.rtnl.add_address(index, ip)
    }

    fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.rtnl.delete_address(index, ip)
    }

    fn nft(&mut self, script: &str) -> Result<()> {
        self.tools.run_script(script).map_err(|source| Error::Nft {
            context: format!("nft -f ({} bytes)", script.len()),
            source,
        })
    }
}
