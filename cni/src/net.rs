//! Netlink operations (rtnetlink): the bridge, the veth pair, addresses and routes.
//!
//! Every function takes a [`Handle`] bound to the namespace it should act in; [`with_netlink`]
//! makes one on the current thread with a current-thread runtime (call it on the namespace's
//! thread, see [`crate::netns`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

/// Errors of netlink operations, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// The runtime or socket could not be set up.
    #[error("netlink setup: {0}")]
    Setup(#[source] std::io::Error),
    /// The container interface exists already (ADD must fail).
    #[error("container veth name provided ({0}) already exists")]
    IfaceExists(String),
    /// A link that should exist does not.
    #[error("failed to find link {0:?}")]
    NoLink(String),
    /// A link exists with an unexpected kind.
    #[error("{0}")]
    WrongKind(String),
    /// CHECK found a mismatch.
    #[error("{0}")]
    Mismatch(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, NetError>;

fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// The errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Runs `f` with a netlink handle opened in the current thread's namespace.
pub fn with_netlink<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetError::Setup)?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Setup)?;
        tokio::spawn(conn);
        f(handle).await
    })
}

/// Formats a MAC address.
pub fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A link's name, MAC, index and kind.
#[derive(Debug, Clone)]
pub struct LinkInfoSummary {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// MAC address bytes.
    pub mac_bytes: Vec<u8>,
    /// Kind (`bridge`, `veth`…), if any.
    pub kind: Option<InfoKind>,
    /// Administratively up.
    pub up: bool,
}

fn summary(m: &LinkMessage) -> LinkInfoSummary {
    let mut s = LinkInfoSummary {
        index: m.header.index,
        name: String::new(),
        mac: String::new(),
        mac_bytes: Vec::new(),
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Address(b) => {
                s.mac = mac_string(b);
                s.mac_bytes = b.clone();
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Looks a link up by name; `None` if it does not exist.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkInfoSummary>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(summary(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc_enodev()) => Ok(None),
        Err(e) => Err(ctx(format!("looking up link {name}"))(e)),
    }
}

const fn libc_enodev() -> i32 {
    19
}
const EEXIST: i32 = 17;

/// Creates the bridge if needed (tolerating a concurrent creator), sets MTU/promisc, brings it up.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    mtu: Option<u32>,
    promisc: bool,
) -> Result<LinkInfoSummary> {
    let mut created = false;
    if link_by_name(h, name).await?.is_none() {
        created = true;
        let mut b = LinkBridge::new(name);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        match h.link().add(b.build()).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(ctx(format!("creating bridge {name}"))(e)),
        }
    }
    let br = link_by_name(h, name)
        .await?
        .ok_or_else(|| NetError::NoLink(name.to_string()))?;
    if br.kind != Some(InfoKind::Bridge) {
        return Err(NetError::WrongKind(format!(
            "{name:?} already exists but is not a bridge"
        )));
    }
    let mut set = LinkUnspec::new_with_index(br.index).up();
    if created {
        // Pin the MAC: otherwise the bridge takes the lowest port MAC and changes with ports.
        set = set.address(br.mac_bytes.clone());
    }
    if promisc {
        set = set.promiscuous(true);
    }
    h.link()
        .set(set.build())
        .execute()
        .await
        .map_err(ctx(format!("setting bridge {name} up")))?;
    Ok(br)
}

/// Creates the veth pair from inside the container namespace: `ifname` stays here, the peer
/// `host_name` is created directly in the namespace `host_ns_fd`. Errors if `ifname` exists.
pub async fn create_veth(
    h: &Handle,
    ifname: &str,
    host_name: &str,
    host_ns_fd: RawFd,
    mtu: Option<u32>,
) -> Result<LinkInfoSummary> {
    if link_by_name(h, ifname).await?.is_some() {
        return Err(NetError::IfaceExists(ifname.to_string()));
    }
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(host_name.to_string())
        .setns_by_fd(host_ns_fd);
    let mut me = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(ifname.to_string());
    if let Some(m) = mtu {
        peer = peer.mtu(m);
        me = me.mtu(m);
    }
    let msg = me
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    match h.link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EEXIST) => {
            return Err(NetError::IfaceExists(ifname.to_string()))
        }
        Err(e) => return Err(ctx(format!("creating veth {ifname}/{host_name}"))(e)),
    }
    let link = link_by_name(h, ifname)
        .await?
        .ok_or_else(|| NetError::NoLink(ifname.to_string()))?;
    h.link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(ctx(format!("setting {ifname} up")))?;
    Ok(link)
}

/// Attaches the host end to the bridge, sets hairpin mode and brings it up.
pub async fn attach_host_veth(
    h: &Handle,
    host_name: &str,
    bridge_index: u32,
    hairpin: bool,
) -> Result<LinkInfoSummary> {
    let link = link_by_name(h, host_name)
        .await?
        .ok_or_else(|| NetError::NoLink(host_name.to_string()))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(format!("attaching {host_name} to the bridge")))?;
    if hairpin {
        let msg = LinkUnspec::new_with_index(link.index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )]))
            .build();
        h.link()
            .set_port(msg)
            .execute()
            .await
            .map_err(ctx(format!("setting hairpin mode on {host_name}")))?;
    }
    Ok(link)
}

/// Adds an address (idempotent: an existing identical address is fine).
pub async fn add_addr(h: &Handle, index: u32, net: IpNet) -> Result<()> {
    match h
        .address()
        .add(index, net.addr(), net.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(ctx(format!("adding address {net}"))(e)),
    }
}

/// The addresses of a link.
pub async fn addrs(h: &Handle, index: u32) -> Result<Vec<IpNet>> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await.map_err(ctx("listing addresses"))? {
        if m.header.index != index {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                if let Ok(n) = IpNet::new(*ip, m.header.prefix_len) {
                    out.push(n);
                }
            }
        }
    }
    Ok(out)
}

/// Adds a route via `gw` (or on-link if none) out of `index`.
pub async fn add_route(h: &Handle, index: u32, dst: IpNet, gw: Option<IpAddr>) -> Result<()> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| NetError::Mismatch(e.to_string()))?
        .output_interface(index);
    if let Some(g) = gw {
        b = b
            .gateway(g)
            .map_err(|e| NetError::Mismatch(e.to_string()))?;
    }
    match h.route().add(b.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(ctx(format!("adding route {dst} via {gw:?}"))(e)),
    }
}

/// One route of the main table: destination, gateway, output interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Gateway.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
}

fn route_entry(m: &RouteMessage) -> Option<RouteEntry> {
    let v4 = m.header.address_family == netlink_packet_route::AddressFamily::Inet;
    let mut dst: IpAddr = if v4 {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let (mut gw, mut oif) = (None, None);
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(a) => dst = ip(a)?,
            RouteAttribute::Gateway(a) => gw = ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(RouteEntry {
        dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        oif,
    })
}

/// The main table's routes (both families).
pub async fn routes(h: &Handle) -> Result<Vec<RouteEntry>> {
    let mut out = Vec::new();
    for msg in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut s = h.route().get(msg).execute();
        while let Some(m) = s.try_next().await.map_err(ctx("listing routes"))? {
            if m.header.table == 254 {
                out.extend(route_entry(&m));
            }
        }
    }
    Ok(out)
}

/// Deletes a link by name; a missing link is success. Returns whether one was deleted.
pub async fn del_link(h: &Handle, name: &str) -> Result<bool> {
    let Some(l) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc_enodev()) => Ok(false),
        Err(e) => Err(ctx(format!("deleting link {name}"))(e)),
    }
}
