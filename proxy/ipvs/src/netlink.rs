//! The kernel's IPVS generic netlink interface: its messages, written by hand.
//!
//! No crate on this workspace's netlink stack speaks IPVS, so this module is the mirror of
//! uapi `linux/ip_vs.h` (generic netlink family `"IPVS"`, version 1): the command and
//! attribute numbers, and the encoding of every attribute the mode sends or reads. The
//! framing (`nlmsghdr`, `genlmsghdr`) comes from `netlink-packet-core` and
//! `netlink-packet-generic`; attributes implement their `Nla` trait. Everything here is pure:
//! [`crate::client`] does the socket I/O.
//!
//! Encoding facts the kernel relies on (`net/netfilter/ipvs/ip_vs_ctl.c`):
//!
//! * the family is looked up by name (`CTRL_CMD_GETFAMILY`, [`FAMILY_NAME`]); its id is
//!   dynamic;
//! * a service or destination travels as one nested attribute ([`IPVS_CMD_ATTR_SERVICE`],
//!   [`IPVS_CMD_ATTR_DEST`]) holding its own attributes; we set `NLA_F_NESTED` on it (the
//!   IPVS operations validate liberally, so the kernel accepts it with or without; its own
//!   dumps leave it off);
//! * addresses are 16 bytes (`union nf_inet_addr`): an IPv4 address fills the first 4, the
//!   rest is zero;
//! * ports are in network byte order; every other integer in host order;
//! * the service flags are `struct ip_vs_flags { u32 flags; u32 mask; }`: the kernel applies
//!   `flags` under `mask` to the existing service's flags, so we always send mask `!0`;
//! * the persistence netmask is the raw 32-bit attribute: IPv4 sends the mask itself
//!   (`255.255.255.255`, all ones in either byte order), IPv6 a prefix length in host order;
//! * creating or changing a service needs the scheduler, flags, timeout and netmask
//!   attributes besides the identifying ones (AF + protocol + address + port, or AF +
//!   firewall mark); creating or changing a destination needs address, port, forwarding
//!   method, weight and both thresholds. Deleting either needs only the identifying ones.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkMessage, Nla, NlaBuffer, NlasIterator,
    ParseableParametrized, NLA_F_NESTED,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// Name of the generic netlink family (`IPVS_GENL_NAME`).
pub const FAMILY_NAME: &str = "IPVS";
/// Version sent in the generic netlink header (`IPVS_GENL_VERSION`).
pub const FAMILY_VERSION: u8 = 1;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u16 = 17;
/// `IPPROTO_SCTP`.
pub const IPPROTO_SCTP: u16 = 132;

/// `IP_VS_SVC_F_PERSISTENT`: persistence (client affinity) with the service's timeout.
pub const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every listed service.
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_SVC_F_ONEPACKET`.
pub const IP_VS_SVC_F_ONEPACKET: u32 = 0x0004;
/// `IP_VS_CONN_F_FWD_MASK`: the forwarding-method bits of a destination's connection flags.
pub const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding, the only method the mode uses.
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;
/// `IP_VS_CONN_F_LOCALNODE`.
pub const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
/// `IP_VS_CONN_F_TUNNEL`.
pub const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
/// `IP_VS_CONN_F_DROUTE`.
pub const IP_VS_CONN_F_DROUTE: u32 = 0x0003;
/// `IP_VS_SCHEDNAME_MAXLEN` (including the terminating NUL).
pub const IP_VS_SCHEDNAME_MAXLEN: usize = 16;

/// Generic netlink commands (`IPVS_CMD_*`).
#[allow(missing_docs)]
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const NEW_DAEMON: u8 = 9;
    pub const DEL_DAEMON: u8 = 10;
    pub const GET_DAEMON: u8 = 11;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_CONFIG: u8 = 13;
    pub const SET_INFO: u8 = 14;
    pub const GET_INFO: u8 = 15;
    pub const ZERO: u8 = 16;
    pub const FLUSH: u8 = 17;
}

/// Top-level attribute: the nested service (`IPVS_CMD_ATTR_SERVICE`).
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
/// Top-level attribute: the nested destination (`IPVS_CMD_ATTR_DEST`).
pub const IPVS_CMD_ATTR_DEST: u16 = 2;

/// Attributes inside [`IPVS_CMD_ATTR_SERVICE`] (`IPVS_SVC_ATTR_*`).
#[allow(missing_docs)]
pub mod svc_attr {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
    pub const STATS: u16 = 10;
    pub const PE_NAME: u16 = 11;
    pub const STATS64: u16 = 12;
}

/// Attributes inside [`IPVS_CMD_ATTR_DEST`] (`IPVS_DEST_ATTR_*`).
#[allow(missing_docs)]
pub mod dest_attr {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const STATS: u16 = 10;
    pub const ADDR_FAMILY: u16 = 11;
    pub const STATS64: u16 = 12;
    pub const TUN_TYPE: u16 = 13;
    pub const TUN_PORT: u16 = 14;
    pub const TUN_FLAGS: u16 = 15;
}

/// Top-level attributes of the `IPVS_CMD_SET_INFO` reply to `IPVS_CMD_GET_INFO`
/// (`IPVS_INFO_ATTR_*`).
#[allow(missing_docs)]
pub mod info_attr {
    pub const VERSION: u16 = 1;
    pub const CONN_TAB_SIZE: u16 = 2;
}

/// The persistence netmask the mode sends for a family: a full mask (one client address is
/// one persistence entry).
pub fn full_netmask(af: u16) -> u32 {
    if af == AF_INET6 {
        128
    } else {
        u32::MAX
    }
}

/// The address family of `ip` (`AF_INET` / `AF_INET6`).
pub fn af_of(ip: &IpAddr) -> u16 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The 16-byte `union nf_inet_addr` of `ip`.
pub fn inet_addr(ip: &IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

/// `ip` from a `union nf_inet_addr` of family `af` (`None` for an unknown family).
fn addr_from(af: u16, raw: &[u8; 16]) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

/// The protocol's name as `ipvsadm` prints it.
pub fn protocol_name(protocol: u16) -> String {
    match protocol {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        IPPROTO_SCTP => "SCTP".into(),
        p => format!("proto-{p}"),
    }
}

/// A virtual server as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `AF_INET` or `AF_INET6`.
    pub af: u16,
    /// `IPPROTO_*` (the kernel reports TCP for firewall-mark services).
    pub protocol: u16,
    /// Virtual address (unspecified for a firewall-mark service).
    pub addr: IpAddr,
    /// Virtual port (0 for a firewall-mark service).
    pub port: u16,
    /// Firewall mark; 0 = a service addressed by protocol, address and port.
    pub fwmark: u32,
    /// Scheduler name (`rr`, `lc`, …).
    pub scheduler: String,
    /// `IP_VS_SVC_F_*`.
    pub flags: u32,
    /// Persistence timeout in seconds.
    pub timeout: u32,
    /// Persistence netmask, the attribute's raw value (see the module doc).
    pub netmask: u32,
    /// Persistence engine, if any (`sip`).
    pub pe_name: Option<String>,
}

impl Service {
    /// A service on `addr:port` with `protocol` (an `IPPROTO_*`) and `scheduler`, no
    /// persistence.
    pub fn new(addr: IpAddr, protocol: u16, port: u16, scheduler: impl Into<String>) -> Self {
        let af = af_of(&addr);
        Self {
            af,
            protocol,
            addr,
            port,
            fwmark: 0,
            scheduler: scheduler.into(),
            flags: 0,
            timeout: 0,
            netmask: full_netmask(af),
            pe_name: None,
        }
    }

    /// This service with persistence (`IP_VS_SVC_F_PERSISTENT`) for `timeout` seconds.
    pub fn persistent(mut self, timeout: u32) -> Self {
        self.flags |= IP_VS_SVC_F_PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// Whether the service is addressed by a firewall mark.
    pub fn is_fwmark(&self) -> bool {
        self.fwmark != 0
    }

    /// The attributes that name the service.
    pub fn id_attrs(&self) -> Vec<SvcAttr> {
        let mut v = vec![SvcAttr::Af(self.af)];
        if self.is_fwmark() {
            v.push(SvcAttr::Fwmark(self.fwmark));
        } else {
            v.push(SvcAttr::Protocol(self.protocol));
            v.push(SvcAttr::Addr(inet_addr(&self.addr)));
            v.push(SvcAttr::Port(self.port));
        }
        v
    }

    /// The attributes that create or change the service.
    pub fn full_attrs(&self) -> Vec<SvcAttr> {
        let mut v = self.id_attrs();
        v.push(SvcAttr::SchedName(self.scheduler.clone()));
        if let Some(pe) = &self.pe_name {
            v.push(SvcAttr::PeName(pe.clone()));
        }
        v.extend([
            SvcAttr::Flags {
                flags: self.flags,
                mask: u32::MAX,
            },
            SvcAttr::Timeout(self.timeout),
            SvcAttr::Netmask(self.netmask),
        ]);
        v
    }

    /// The service the attributes of a kernel reply describe.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<Self, DecodeError> {
        let mut af = None;
        let mut s = Service::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0, "");
        let mut raw_addr = None;
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(*v),
                SvcAttr::Protocol(v) => s.protocol = *v,
                SvcAttr::Addr(v) => raw_addr = Some(*v),
                SvcAttr::Port(v) => s.port = *v,
                SvcAttr::Fwmark(v) => s.fwmark = *v,
                SvcAttr::SchedName(v) => s.scheduler = v.clone(),
                SvcAttr::Flags { flags, .. } => s.flags = *flags,
                SvcAttr::Timeout(v) => s.timeout = *v,
                SvcAttr::Netmask(v) => s.netmask = *v,
                SvcAttr::PeName(v) => s.pe_name = Some(v.clone()),
                SvcAttr::Other(_) => {}
            }
        }
        let af = af.ok_or_else(|| DecodeError::from("IPVS service without an address family"))?;
        s.af = af;
        s.addr = match raw_addr {
            Some(raw) => addr_from(af, &raw)
                .ok_or_else(|| DecodeError::from(format!("IPVS service of family {af}")))?,
            None if af == AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        Ok(s)
    }
}

impl fmt::Display for Service {
    /// `TCP 10.96.0.10:80`, `UDP [fd00::1]:53`, `FWM 7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_fwmark() {
            return write!(f, "FWM {}", self.fwmark);
        }
        let addr = std::net::SocketAddr::new(self.addr, self.port);
        write!(f, "{} {addr}", protocol_name(self.protocol))
    }
}

/// A real server (destination) of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Connection flags; the low bits are the forwarding method ([`IP_VS_CONN_F_MASQ`], …).
    pub fwd_method: u32,
    /// Weight; 0 = quiescent (no new connections).
    pub weight: u32,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
    /// Active connections (read only).
    pub active_conns: u32,
    /// Inactive connections (read only).
    pub inactive_conns: u32,
    /// Persistence templates pointing at it (read only).
    pub persist_conns: u32,
}

impl Destination {
    /// A NAT-forwarded destination `addr:port` with `weight` and no thresholds.
    pub fn masq(addr: IpAddr, port: u16, weight: u32) -> Self {
        Self {
            addr,
            port,
            fwd_method: IP_VS_CONN_F_MASQ,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persist_conns: 0,
        }
    }

    /// `addr:port`.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }

    /// The attributes that name the destination.
    pub fn id_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(af_of(&self.addr)),
            DestAttr::Addr(inet_addr(&self.addr)),
            DestAttr::Port(self.port),
        ]
    }

    /// The attributes that create or change the destination.
    pub fn full_attrs(&self) -> Vec<DestAttr> {
        let mut v = self.id_attrs();
        v.extend([
            DestAttr::FwdMethod(self.fwd_method & IP_VS_CONN_F_FWD_MASK),
            DestAttr::Weight(self.weight),
            DestAttr::UpperThreshold(self.upper_threshold),
            DestAttr::LowerThreshold(self.lower_threshold),
        ]);
        v
    }

    /// The destination the attributes of a kernel reply describe; `service_af` is the family
    /// of its service (used when the reply has no `IPVS_DEST_ATTR_ADDR_FAMILY`: kernels
    /// before 3.18).
    pub fn from_attrs(attrs: &[DestAttr], service_af: u16) -> Result<Self, DecodeError> {
        let mut d = Destination::masq(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0);
        let mut af = service_af;
        let mut raw_addr = None;
        for a in attrs {
            match a {
                DestAttr::Addr(v) => raw_addr = Some(*v),
                DestAttr::Port(v) => d.port = *v,
                DestAttr::FwdMethod(v) => d.fwd_method = *v,
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::UpperThreshold(v) => d.upper_threshold = *v,
                DestAttr::LowerThreshold(v) => d.lower_threshold = *v,
                DestAttr::ActiveConns(v) => d.active_conns = *v,
                DestAttr::InactiveConns(v) => d.inactive_conns = *v,
                DestAttr::PersistConns(v) => d.persist_conns = *v,
                DestAttr::AddrFamily(v) => af = *v,
                DestAttr::Other(_) => {}
            }
        }
        let raw = raw_addr.ok_or_else(|| DecodeError::from("IPVS destination without address"))?;
        d.addr = addr_from(af, &raw)
            .ok_or_else(|| DecodeError::from(format!("IPVS destination of family {af}")))?;
        Ok(d)
    }
}

/// `IPVS_CMD_GET_INFO`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// `IP_VS_VERSION_CODE` of the kernel (`0x010201` = 1.2.1).
    pub version: u32,
    /// Size of the connection hash table.
    pub conn_tab_size: u32,
}

impl Info {
    /// `1.2.1`.
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}.{}",
            (self.version >> 16) & 0xff,
            (self.version >> 8) & 0xff,
            self.version & 0xff
        )
    }
}

/// An attribute inside [`IPVS_CMD_ATTR_SERVICE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    /// `IPVS_SVC_ATTR_AF`, u16.
    Af(u16),
    /// `IPVS_SVC_ATTR_PROTOCOL`, u16.
    Protocol(u16),
    /// `IPVS_SVC_ATTR_ADDR`, 16 bytes.
    Addr([u8; 16]),
    /// `IPVS_SVC_ATTR_PORT`, u16 in network order (held here in host order).
    Port(u16),
    /// `IPVS_SVC_ATTR_FWMARK`, u32.
    Fwmark(u32),
    /// `IPVS_SVC_ATTR_SCHED_NAME`, NUL-terminated string.
    SchedName(String),
    /// `IPVS_SVC_ATTR_FLAGS`, `struct ip_vs_flags`.
    Flags {
        /// Flag values.
        flags: u32,
        /// Which flags to set.
        mask: u32,
    },
    /// `IPVS_SVC_ATTR_TIMEOUT`, u32 seconds.
    Timeout(u32),
    /// `IPVS_SVC_ATTR_NETMASK`, raw u32.
    Netmask(u32),
    /// `IPVS_SVC_ATTR_PE_NAME`, NUL-terminated string.
    PeName(String),
    /// Anything else (statistics), kept raw.
    Other(DefaultNla),
}

/// An attribute inside [`IPVS_CMD_ATTR_DEST`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    /// `IPVS_DEST_ATTR_ADDR`, 16 bytes.
    Addr([u8; 16]),
    /// `IPVS_DEST_ATTR_PORT`, u16 in network order (held here in host order).
    Port(u16),
    /// `IPVS_DEST_ATTR_FWD_METHOD`, u32.
    FwdMethod(u32),
    /// `IPVS_DEST_ATTR_WEIGHT`, u32.
    Weight(u32),
    /// `IPVS_DEST_ATTR_U_THRESH`, u32.
    UpperThreshold(u32),
    /// `IPVS_DEST_ATTR_L_THRESH`, u32.
    LowerThreshold(u32),
    /// `IPVS_DEST_ATTR_ACTIVE_CONNS`, u32 (read only).
    ActiveConns(u32),
    /// `IPVS_DEST_ATTR_INACT_CONNS`, u32 (read only).
    InactiveConns(u32),
    /// `IPVS_DEST_ATTR_PERSIST_CONNS`, u32 (read only).
    PersistConns(u32),
    /// `IPVS_DEST_ATTR_ADDR_FAMILY`, u16.
    AddrFamily(u16),
    /// Anything else (statistics, tunnel settings), kept raw.
    Other(DefaultNla),
}

/// A top-level attribute of an IPVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// [`IPVS_CMD_ATTR_SERVICE`].
    Service(Vec<SvcAttr>),
    /// [`IPVS_CMD_ATTR_DEST`].
    Dest(Vec<DestAttr>),
    /// Anything else (the `GET_INFO` reply's attributes, timeouts, daemons), kept raw.
    Other(DefaultNla),
}

fn u16_of(v: &[u8]) -> Result<u16, DecodeError> {
    v.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| DecodeError::from(format!("{}-byte u16 attribute", v.len())))
}

fn u16_be_of(v: &[u8]) -> Result<u16, DecodeError> {
    u16_of(v).map(u16::from_be)
}

fn u32_of(v: &[u8]) -> Result<u32, DecodeError> {
    v.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DecodeError::from(format!("{}-byte u32 attribute", v.len())))
}

fn addr_of(v: &[u8]) -> Result<[u8; 16], DecodeError> {
    // The kernel always sends 16 bytes; a shorter one is zero-filled (nla_memcpy does the same).
    if v.len() > 16 {
        return Err(DecodeError::from(format!("{}-byte address", v.len())));
    }
    let mut b = [0u8; 16];
    b[..v.len()].copy_from_slice(v);
    Ok(b)
}

fn string_of(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A NUL-terminated string attribute's value length.
fn cstr_len(s: &str) -> usize {
    s.len() + 1
}

fn emit_cstr(s: &str, buf: &mut [u8]) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => cstr_len(s),
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => svc_attr::AF,
            SvcAttr::Protocol(_) => svc_attr::PROTOCOL,
            SvcAttr::Addr(_) => svc_attr::ADDR,
            SvcAttr::Port(_) => svc_attr::PORT,
            SvcAttr::Fwmark(_) => svc_attr::FWMARK,
            SvcAttr::SchedName(_) => svc_attr::SCHED_NAME,
            SvcAttr::Flags { .. } => svc_attr::FLAGS,
            SvcAttr::Timeout(_) => svc_attr::TIMEOUT,
            SvcAttr::Netmask(_) => svc_attr::NETMASK,
            SvcAttr::PeName(_) => svc_attr::PE_NAME,
            SvcAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            SvcAttr::Port(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            SvcAttr::Addr(a) => buf[..16].copy_from_slice(a),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                buf[..4].copy_from_slice(&v.to_ne_bytes())
            }
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => emit_cstr(s, buf),
            SvcAttr::Flags { flags, mask } => {
                buf[..4].copy_from_slice(&flags.to_ne_bytes());
                buf[4..8].copy_from_slice(&mask.to_ne_bytes());
            }
            SvcAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl SvcAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            svc_attr::AF => SvcAttr::Af(u16_of(v)?),
            svc_attr::PROTOCOL => SvcAttr::Protocol(u16_of(v)?),
            svc_attr::ADDR => SvcAttr::Addr(addr_of(v)?),
            svc_attr::PORT => SvcAttr::Port(u16_be_of(v)?),
            svc_attr::FWMARK => SvcAttr::Fwmark(u32_of(v)?),
            svc_attr::SCHED_NAME => SvcAttr::SchedName(string_of(v)),
            svc_attr::FLAGS => SvcAttr::Flags {
                flags: u32_of(v)?,
                mask: u32_of(v.get(4..).unwrap_or(&[]))?,
            },
            svc_attr::TIMEOUT => SvcAttr::Timeout(u32_of(v)?),
            svc_attr::NETMASK => SvcAttr::Netmask(u32_of(v)?),
            svc_attr::PE_NAME => SvcAttr::PeName(string_of(v)),
            kind => SvcAttr::Other(DefaultNla::new(kind, v.to_vec())),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UpperThreshold(_)
            | DestAttr::LowerThreshold(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactiveConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => dest_attr::ADDR,
            DestAttr::Port(_) => dest_attr::PORT,
            DestAttr::FwdMethod(_) => dest_attr::FWD_METHOD,
            DestAttr::Weight(_) => dest_attr::WEIGHT,
            DestAttr::UpperThreshold(_) => dest_attr::U_THRESH,
            DestAttr::LowerThreshold(_) => dest_attr::L_THRESH,
            DestAttr::ActiveConns(_) => dest_attr::ACTIVE_CONNS,
            DestAttr::InactiveConns(_) => dest_attr::INACT_CONNS,
            DestAttr::PersistConns(_) => dest_attr::PERSIST_CONNS,
            DestAttr::AddrFamily(_) => dest_attr::ADDR_FAMILY,
            DestAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buf[..16].copy_from_slice(a),
            DestAttr::Port(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            DestAttr::AddrFamily(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v)
            | DestAttr::PersistConns(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            DestAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl DestAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            dest_attr::ADDR => DestAttr::Addr(addr_of(v)?),
            dest_attr::PORT => DestAttr::Port(u16_be_of(v)?),
            dest_attr::FWD_METHOD => DestAttr::FwdMethod(u32_of(v)?),
            dest_attr::WEIGHT => DestAttr::Weight(u32_of(v)?),
            dest_attr::U_THRESH => DestAttr::UpperThreshold(u32_of(v)?),
            dest_attr::L_THRESH => DestAttr::LowerThreshold(u32_of(v)?),
            dest_attr::ACTIVE_CONNS => DestAttr::ActiveConns(u32_of(v)?),
            dest_attr::INACT_CONNS => DestAttr::InactiveConns(u32_of(v)?),
            dest_attr::PERSIST_CONNS => DestAttr::PersistConns(u32_of(v)?),
            dest_attr::ADDR_FAMILY => DestAttr::AddrFamily(u16_of(v)?),
            kind => DestAttr::Other(DefaultNla::new(kind, v.to_vec())),
        })
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Service(a) => a.as_slice().buffer_len(),
            Attr::Dest(a) => a.as_slice().buffer_len(),
            Attr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Service(_) => IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED,
            Attr::Dest(_) => IPVS_CMD_ATTR_DEST | NLA_F_NESTED,
            Attr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Attr::Service(a) => a.as_slice().emit(buf),
            Attr::Dest(a) => a.as_slice().emit(buf),
            Attr::Other(n) => n.emit_value(buf),
        }
    }
}

fn parse_nested<T>(
    buf: &[u8],
    one: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| one(&nla?))
        .collect::<Result<Vec<T>, DecodeError>>()
}

/// One IPVS generic netlink message (request or reply): the command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// `IPVS_CMD_*` ([`cmd`]).
    pub cmd: u8,
    /// Top-level attributes.
    pub attrs: Vec<Attr>,
}

impl IpvsMessage {
    fn with(cmd: u8, attrs: Vec<Attr>) -> Self {
        Self { cmd, attrs }
    }

    /// `IPVS_CMD_NEW_SERVICE`: create `svc`.
    pub fn new_service(svc: &Service) -> Self {
        Self::with(cmd::NEW_SERVICE, vec![Attr::Service(svc.full_attrs())])
    }

    /// `IPVS_CMD_SET_SERVICE`: change `svc`'s scheduler, flags, timeout, netmask.
    pub fn set_service(svc: &Service) -> Self {
        Self::with(cmd::SET_SERVICE, vec![Attr::Service(svc.full_attrs())])
    }

    /// `IPVS_CMD_DEL_SERVICE`: delete `svc` (and its destinations).
    pub fn del_service(svc: &Service) -> Self {
        Self::with(cmd::DEL_SERVICE, vec![Attr::Service(svc.id_attrs())])
    }

    /// `IPVS_CMD_GET_SERVICE` without attributes: with `NLM_F_DUMP`, every service.
    pub fn get_services() -> Self {
        Self::with(cmd::GET_SERVICE, Vec::new())
    }

    /// `IPVS_CMD_GET_SERVICE` for one service (no dump): the service, or `ESRCH`.
    pub fn get_service(svc: &Service) -> Self {
        Self::with(cmd::GET_SERVICE, vec![Attr::Service(svc.id_attrs())])
    }

    /// `IPVS_CMD_NEW_DEST`: add `dest` to `svc`.
    pub fn new_dest(svc: &Service, dest: &Destination) -> Self {
        Self::with(
            cmd::NEW_DEST,
            vec![Attr::Service(svc.id_attrs()), Attr::Dest(dest.full_attrs())],
        )
    }

    /// `IPVS_CMD_SET_DEST`: change `dest` of `svc` (weight, forwarding, thresholds).
    pub fn set_dest(svc: &Service, dest: &Destination) -> Self {
        Self::with(
            cmd::SET_DEST,
            vec![Attr::Service(svc.id_attrs()), Attr::Dest(dest.full_attrs())],
        )
    }

    /// `IPVS_CMD_DEL_DEST`: remove `dest` from `svc`.
    pub fn del_dest(svc: &Service, dest: &Destination) -> Self {
        Self::with(
            cmd::DEL_DEST,
            vec![Attr::Service(svc.id_attrs()), Attr::Dest(dest.id_attrs())],
        )
    }

    /// `IPVS_CMD_GET_DEST` (with `NLM_F_DUMP`): every destination of `svc`.
    pub fn get_dests(svc: &Service) -> Self {
        Self::with(cmd::GET_DEST, vec![Attr::Service(svc.id_attrs())])
    }

    /// `IPVS_CMD_GET_INFO`.
    pub fn get_info() -> Self {
        Self::with(cmd::GET_INFO, Vec::new())
    }

    /// `IPVS_CMD_FLUSH`: delete every service of the network namespace.
    pub fn flush() -> Self {
        Self::with(cmd::FLUSH, Vec::new())
    }

    /// The service of a reply (`IPVS_CMD_NEW_SERVICE` in a dump), if it has one.
    pub fn service(&self) -> Option<Result<Service, DecodeError>> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Service(s) => Some(Service::from_attrs(s)),
            _ => None,
        })
    }

    /// The destination of a reply (`IPVS_CMD_NEW_DEST` in a dump), if it has one; `service_af`
    /// as in [`Destination::from_attrs`].
    pub fn destination(&self, service_af: u16) -> Option<Result<Destination, DecodeError>> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Dest(d) => Some(Destination::from_attrs(d, service_af)),
            _ => None,
        })
    }

    /// The `IPVS_CMD_SET_INFO` reply's content.
    pub fn info(&self) -> Option<Info> {
        let get = |kind: u16| {
            self.attrs.iter().find_map(|a| match a {
                Attr::Other(n) if n.kind() == kind => {
                    let mut v = vec![0u8; n.value_len()];
                    n.emit_value(&mut v);
                    u32_of(&v).ok()
                }
                _ => None,
            })
        };
        (self.cmd == cmd::SET_INFO).then_some(())?;
        Some(Info {
            version: get(info_attr::VERSION)?,
            conn_tab_size: get(info_attr::CONN_TAB_SIZE).unwrap_or(0),
        })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            // The info reply numbers its (flat) attributes from 1 as well.
            let attr = match (header.cmd, nla.kind()) {
                (cmd::SET_INFO, kind) => Attr::Other(DefaultNla::new(kind, nla.value().to_vec())),
                (_, IPVS_CMD_ATTR_SERVICE) => {
                    Attr::Service(parse_nested(nla.value(), SvcAttr::parse)?)
                }
                (_, IPVS_CMD_ATTR_DEST) => Attr::Dest(parse_nested(nla.value(), DestAttr::parse)?),
                (_, kind) => Attr::Other(DefaultNla::new(kind, nla.value().to_vec())),
            };
            attrs.push(attr);
        }
        Ok(Self {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// The bytes of `msg` as a request to family `family_id` with netlink `flags` (`NLM_F_*`)
/// and sequence number `seq`.
pub fn encode_request(family_id: u16, flags: u16, seq: u32, msg: IpvsMessage) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(family_id);
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut out = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut out);
    out
}

/// One received netlink message of the IPVS family.
pub type Reply = NetlinkMessage<GenlMessage<IpvsMessage>>;

/// Splits a received datagram into its netlink messages and parses each.
pub fn decode_replies(buf: &[u8]) -> Result<Vec<Reply>, DecodeError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32_of(&buf[off..])? as usize;
        if len < 16 || off + len > buf.len() {
            return Err(DecodeError::from(format!(
                "netlink message of length {len} at offset {off} in a {}-byte datagram",
                buf.len()
            )));
        }
        out.push(Reply::deserialize(&buf[off..off + len])?);
        // Messages are 4-byte aligned.
        off += (len + 3) & !3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
