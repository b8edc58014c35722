//! Thin netlink backend: reads and changes this agent's routes (main table, IPv4, marked with
//! [`ROUTE_PROTOCOL`]) in the network namespace the agent runs in, and finds a default node IP.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use crate::routes::{Op, RouteBackend, RouteTable, ROUTE_PROTOCOL};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the netlink socket failed.
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    /// A request failed.
    #[error("{what}")]
    Request {
        /// The request.
        what: String,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
}

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A netlink connection in the current network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

fn route_message(dst: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .build()
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// Our route in a dumped message: main table, unicast, our protocol, IPv4 destination + gateway.
fn ours(m: &RouteMessage) -> Option<(Ipv4Net, Ipv4Addr)> {
    if u8::from(m.header.protocol) != ROUTE_PROTOCOL
        || table_of(m) != u32::from(RouteHeader::RT_TABLE_MAIN)
        || m.header.kind != RouteType::Unicast
    {
        return None;
    }
    let mut dst = None;
    let mut via = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            _ => {}
        }
    }
    let net = Ipv4Net::new(dst?, m.header.destination_prefix_length).ok()?;
    Some((net, via?))
}

impl Netlink {
    /// Opens a connection; its driver runs on the current tokio runtime.
    pub fn connect() -> Result<Netlink, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Our routes currently in the kernel.
    pub async fn our_routes(&self) -> Result<RouteTable, Error> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let dump: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Request {
                what: "dumping routes".into(),
                source,
            })?;
        Ok(dump.iter().filter_map(ours).collect())
    }

    /// Applies one operation. Deleting a route that is already gone succeeds.
    pub async fn apply(&self, op: &Op) -> Result<(), Error> {
        match *op {
            Op::Replace { dst, via } => self
                .handle
                .route()
                .add(route_message(dst, via))
                .replace()
                .execute()
                .await
                .map_err(|source| Error::Request {
                    what: format!("ip route replace {dst} via {via} proto {ROUTE_PROTOCOL}"),
                    source,
                }),
            Op::Delete { dst, via } => {
                match self
                    .handle
                    .route()
                    .del(route_message(dst, via))
                    .execute()
                    .await
                {
                    Err(e) if matches!(errno(&e), Some(ENOENT | ESRCH)) => Ok(()),
                    r => r.map_err(|source| Error::Request {
                        what: format!("ip route del {dst} via {via} proto {ROUTE_PROTOCOL}"),
                        source,
                    }),
                }
            }
        }
    }

    /// The first global IPv4 address of the namespace (the default `--node-ip`).
    pub async fn first_global_ipv4(&self) -> Result<Option<Ipv4Addr>, Error> {
        Ok(self
            .addresses()
            .await?
            .iter()
            .filter(|a| a.header.scope == netlink_packet_route::address::AddressScope::Universe)
            .flat_map(|a| a.attributes.iter())
            .find_map(|at| match at {
                AddressAttribute::Address(IpAddr::V4(v4)) if !v4.is_loopback() => Some(*v4),
                _ => None,
            }))
    }

    /// Every address in this network namespace.
    async fn addresses(&self) -> Result<Vec<netlink_packet_route::address::AddressMessage>, Error> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Request {
                what: "dumping addresses".into(),
                source,
            })
    }
}

impl Netlink {
    /// The name of the interface holding `ip`, if any.
    pub async fn interface_of(&self, ip: IpAddr) -> Result<Option<String>, Error> {
        let Some(index) = self
            .addresses()
            .await?
            .iter()
            .find(|a| {
                a.attributes
                    .iter()
                    .any(|at| matches!(at, AddressAttribute::Address(a) if *a == ip))
            })
            .map(|a| a.header.index)
        else {
            return Ok(None);
        };
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Request {
                what: format!("getting link {index}"),
                source,
            })?;
        Ok(links
            .iter()
            .flat_map(|l| l.attributes.iter())
            .find_map(|a| match a {
                netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }))
    }
}

impl RouteBackend for Netlink {
    type Error = Error;
    async fn our_routes(&self) -> Result<RouteTable, Error> {
        Netlink::our_routes(self).await
    }
    async fn apply(&self, op: &Op) -> Result<(), Error> {
        Netlink::apply(self, op).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteScope;

    #[test]
    fn recognises_only_our_routes() {
        let m = route_message(
            "10.244.1.0/24".parse().unwrap(),
            "172.30.0.12".parse().unwrap(),
        );
        assert_eq!(
            ours(&m),
            Some((
                "10.244.1.0/24".parse().unwrap(),
                "172.30.0.12".parse().unwrap()
            ))
        );
        let mut other = m.clone();
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(ours(&other), None);
        let mut local = m;
        local.header.kind = RouteType::Local;
        local.header.scope = RouteScope::Host;
        assert_eq!(ours(&local), None);
    }
}
