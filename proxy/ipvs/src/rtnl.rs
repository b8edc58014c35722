//! The dummy interface that holds the service addresses, over `NETLINK_ROUTE`.
//!
//! IPVS only sees packets the kernel delivers locally (its hooks sit on `LOCAL_IN` and
//! `LOCAL_OUT`), so every cluster IP, external IP and load-balancer IP must be an address of
//! the node: the mode binds them, as `/32` (`/128`), to a dummy link of its own
//! ([`crate::DUMMY_LINK`]), left down as kube-proxy leaves `kube-ipvs0` (an IPv4 address on a
//! down link still gets its local route). The messages are built with rtnetlink's builders
//! ([`rtnetlink::LinkDummy`], [`rtnetlink::AddressMessageBuilder`]) and sent over a blocking
//! socket (the sync runs on a blocking thread, and rtnetlink's own handle needs a runtime).

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use rtnetlink::{AddressMessageBuilder, LinkDummy};

use crate::error::{Error, Result};
use crate::nl::Conn;

/// A `NETLINK_ROUTE` socket of the caller's network namespace.
pub struct Rtnl {
    conn: Conn,
}

impl Rtnl {
    /// Opens the socket.
    pub fn open() -> Result<Self> {
        Ok(Self {
            conn: Conn::open(NETLINK_ROUTE, "rtnetlink")?,
        })
    }

    fn send(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.conn.next_seq();
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        self.conn.transact(&nl, op)
    }

    /// The index of link `name`, if it exists.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let op = || format!("looking up link {name}");
        match self.send(
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            &op,
        ) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(Error::Kernel { errno, .. }) if errno == libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of dummy link `name`, created (down) if missing.
    pub fn ensure_dummy(&mut self, name: &str) -> Result<u32> {
        if let Some(i) = self.link_index(name)? {
            return Ok(i);
        }
        let op = || format!("creating dummy link {name}");
        match self.send(
            RouteNetlinkMessage::NewLink(LinkDummy::new(name).build()),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &op,
        ) {
            Ok(_) => {}
            Err(Error::Kernel { errno, .. }) if errno == libc::EEXIST => {}
            Err(e) => return Err(e),
        }
        self.link_index(name)?.ok_or_else(|| Error::Kernel {
            op: op(),
            errno: libc::ENODEV,
        })
    }

    /// Deletes link `name`; `false` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let op = || format!("deleting link {name}");
        match self.send(
            RouteNetlinkMessage::DelLink(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            &op,
        ) {
            Ok(_) => Ok(true),
            Err(Error::Kernel { errno, .. }) if errno == libc::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every address of every link, with its link's index.
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, IpAddr)>> {
        let op = || "listing addresses".to_string();
        let replies = self.send(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            &op,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => a
                    .attributes
                    .iter()
                    .find_map(|at| match at {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        a.attributes.iter().find_map(|at| match at {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })
                    .map(|ip| (a.header.index, ip)),
                _ => None,
            })
            .collect())
    }

    /// The addresses of link `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = self
            .all_addresses()?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, ip)| ip)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Adds `ip` as a host address (`/32`, `/128`) to link `index`; present already is fine.
    pub fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let op = || format!("adding address {ip} to link {index}");
        match self.send(
            RouteNetlinkMessage::NewAddress(address_message(index, ip)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &op,
        ) {
            Ok(_) => Ok(()),
            Err(Error::Kernel { errno, .. }) if errno == libc::EEXIST => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes host address `ip` from link `index`; absent already is fine.
    pub fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let op = || format!("deleting address {ip} from link {index}");
        match self.send(
            RouteNetlinkMessage::DelAddress(address_message(index, ip)),
            NLM_F_REQUEST | NLM_F_ACK,
            &op,
        ) {
            Ok(_) => Ok(()),
            Err(Error::Kernel { errno, .. }) if errno == libc::EADDRNOTAVAIL => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The `RTM_NEWADDR` / `RTM_DELADDR` body for host address `ip` on link `index`.
pub fn address_message(index: u32, ip: IpAddr) -> AddressMessage {
    match ip {
        IpAddr::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, 32)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, 128)
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn host_address_message() {
        let m = address_message(7, "10.96.0.10".parse().unwrap());
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.prefix_len, 32);
        // ifaddrmsg (8 bytes) + IFA_ADDRESS and IFA_LOCAL (8 bytes each); no broadcast for /32.
        assert_eq!(m.buffer_len(), 8 + 8 + 8);
        let m6 = address_message(7, "fd00::10".parse().unwrap());
        assert_eq!(m6.header.prefix_len, 128);
    }

    #[test]
    fn lookups_in_this_namespace() {
        let Ok(mut rt) = Rtnl::open() else {
            eprintln!("SKIP: no rtnetlink socket");
            return;
        };
        assert_eq!(rt.link_index("lo").unwrap(), Some(1));
        assert_eq!(rt.link_index("sluice-no-such").unwrap(), None);
        let lo = rt.addresses(1).unwrap();
        assert!(lo.contains(&"127.0.0.1".parse().unwrap()), "{lo:?}");
        assert!(rt
            .all_addresses()
            .unwrap()
            .contains(&(1, "127.0.0.1".parse().unwrap())));
        assert!(!rt.delete_link("sluice-no-such").unwrap());
    }
}
