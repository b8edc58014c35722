//! One nftables set element, looked up by netlink (`NFT_MSG_GETSETELEM` without a dump).
//!
//! The scale benchmark's probe in the nftables mode. `nft get element` would do, but nft 1.0.6
//! first loads every element of the table into its cache: 1.3 s per probe with 50,000
//! endpoint slots, which would bury the ~20 ms being measured. The kernel answers a get of one
//! key in microseconds. Written by hand (a few netlink attributes over a raw socket): the
//! netlink crates in the workspace speak rtnetlink, not nf_tables.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_IPV4: u8 = 2;
// Attribute numbers (linux/netfilter/nf_tables.h).
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;

/// A netlink socket for nf_tables queries in the calling thread's network namespace.
pub struct NfSocket {
    fd: OwnedFd,
    seq: u32,
}

/// What a looked-up element holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    /// A map's data value (raw bytes, registers padded to 4 bytes).
    Value(Vec<u8>),
    /// A verdict map's verdict (not decoded).
    Verdict,
    /// A set element (no data).
    None,
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    attr(&mut b, kind | NLA_F_NESTED, inner);
    b
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The attributes in `buf`: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| p)
}

impl NfSocket {
    /// Opens the socket (in the current thread's network namespace).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 1 })
    }

    /// Element `key` (raw bytes, registers padded to 4 bytes) of set `set` in table `ip
    /// <table>`: `Ok(None)` when it does not exist (or the set or table does not).
    pub fn get(&mut self, table: &str, set: &str, key: &[u8]) -> io::Result<Option<ElemData>> {
        self.seq += 1;
        let mut payload = vec![NFPROTO_IPV4, 0, 0, 0];
        attr(&mut payload, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        let k = nested(NFTA_SET_ELEM_KEY, &{
            let mut b = Vec::new();
            attr(&mut b, NFTA_DATA_VALUE, key);
            b
        });
        let elem = nested(NFTA_LIST_ELEM, &k);
        let list = nested(NFTA_SET_ELEM_LIST_ELEMENTS, &elem);
        payload.extend_from_slice(&list);
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM).to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&payload);
        // SAFETY: the buffer is valid for its length; the kernel is the destination (zeroed
        // sockaddr_nl).
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let data = &buf[..n as usize];
            if data.len() < 16 {
                return Err(io::Error::other("short netlink reply"));
            }
            let len = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
            if seq != self.seq {
                continue;
            }
            let body = &data[16..len.min(data.len())];
            if kind == NLMSG_ERROR {
                let errno = i32::from_ne_bytes(body[0..4].try_into().unwrap_or_default());
                return match -errno {
                    0 => Ok(None),
                    libc::ENOENT => Ok(None),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            if kind != ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM) {
                return Err(io::Error::other(format!(
                    "unexpected netlink reply type {kind:#x}"
                )));
            }
            let attrs_buf = &body[4..];
            let elem = find(attrs_buf, NFTA_SET_ELEM_LIST_ELEMENTS)
                .and_then(|l| find(l, NFTA_LIST_ELEM))
                .ok_or_else(|| io::Error::other("reply without an element"))?;
            return Ok(Some(match find(elem, NFTA_SET_ELEM_DATA) {
                Some(d) => match find(d, NFTA_DATA_VALUE) {
                    Some(v) => ElemData::Value(v.to_vec()),
                    None if find(d, NFTA_DATA_VERDICT).is_some() => ElemData::Verdict,
                    None => ElemData::None,
                },
                None => ElemData::None,
            }));
        }
    }
}

/// Key of an IPv4 front-end slot in `endpoints-<proto>`: `address . port . slot`.
pub fn slot_key(ip: std::net::Ipv4Addr, port: u16, slot: u32) -> Vec<u8> {
    let mut k = ip.octets().to_vec();
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    // numgen writes its result in host byte order.
    k.extend_from_slice(&slot.to_ne_bytes());
    k
}

/// Key of an IPv4 front end in `service-ips`: `address . protocol . port`.
pub fn front_end_key(ip: std::net::Ipv4Addr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = ip.octets().to_vec();
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// Decodes an endpoint slot's data (`address . port`).
pub fn endpoint(data: &[u8]) -> Option<std::net::SocketAddrV4> {
    if data.len() < 6 {
        return None;
    }
    let ip = std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    Some(std::net::SocketAddrV4::new(
        ip,
        u16::from_be_bytes([data[4], data[5]]),
    ))
}
