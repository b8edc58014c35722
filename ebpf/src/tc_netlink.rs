//! Classic tc over rtnetlink, for kernels without tcx (< 6.6): the `clsact` qdisc and `cls_bpf`
//! filters in direct-action mode on its ingress and egress hooks. Only what the loader needs:
//! add and delete the qdisc, create-or-replace one filter at a given priority and handle, list
//! a hook's filters, delete one.
//!
//! Everything acts in the calling thread's network namespace (the netlink socket is created
//! there), so an ifindex is unambiguous.
//!
//! aya 0.14 can attach over netlink too, but it keeps the attachment in the program's link set
//! and deletes the filter when the program is dropped (a clean agent exit), it cannot create
//! and replace in one request, and it has no public way to list filters with their program ids.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR` reply: the original request is not echoed past its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR` reply: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_EXT_ACK: libc::c_int = 11;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the clsact qdisc's parent, and with minor 0 its handle.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;
const ETH_P_ALL: u16 = 0x0003;

const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;

/// A clsact hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `ffff:fff2`.
    Ingress,
    /// `ffff:fff3`.
    Egress,
}

impl Hook {
    /// Both hooks.
    pub const ALL: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    fn parent(self) -> u32 {
        match self {
            Hook::Ingress => 0xffff_fff2,
            Hook::Egress => 0xffff_fff3,
        }
    }
}

/// One tc filter on a clsact hook, as a filter dump reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    pub priority: u16,
    /// The protocol, host order (`ETH_P_ALL` for ours).
    pub protocol: u16,
    pub handle: u32,
    /// `TCA_KIND` (`bpf` for cls_bpf).
    pub kind: String,
    /// cls_bpf: `TCA_BPF_NAME`, the name the loader gave (Sluice: the program's full name).
    pub name: Option<String>,
    /// cls_bpf: `TCA_BPF_ID`, the kernel id of the program the filter runs.
    pub prog_id: Option<u32>,
}

/// An open `NETLINK_ROUTE` socket in the calling thread's network namespace.
struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the returned fd is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // Best effort: the kernel's own words on a refusal ("Filter already exists", ...).
        // SAFETY: `one` outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_EXT_ACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Self { fd, seq: 0 })
    }

    /// Sends `msg` (its header's length, sequence and flags are filled in here) and collects
    /// the replies: for a dump every message up to `NLMSG_DONE`, otherwise up to the ack.
    fn request(&mut self, mut msg: Vec<u8>, flags: u16, dump: bool) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        // SAFETY: an all-zero sockaddr_nl is valid; the kernel is pid 0.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `kernel` are live for the call, their lengths are passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is live and its length is passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                if mlen < NLMSG_HDR || mlen > rest.len() {
                    return Err(io::Error::other("truncated netlink reply"));
                }
                let mtype = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
                let mflags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                let body = &rest[NLMSG_HDR..mlen];
                rest = &rest[align4(mlen).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match mtype {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(-libc::EIO);
                        if errno == 0 {
                            if !dump {
                                return Ok(out);
                            }
                            continue;
                        }
                        return Err(nl_error(-errno, body, mflags));
                    }
                    _ => out.push(body.to_vec()),
                }
            }
        }
    }
}

/// The error of an `NLMSG_ERROR` reply, with the kernel's extended-ack message if it sent one.
fn nl_error(errno: i32, body: &[u8], flags: u16) -> io::Error {
    let os = io::Error::from_raw_os_error(errno);
    let msg = (|| {
        if flags & NLM_F_ACK_TLVS == 0 {
            return None;
        }
        // int error; struct nlmsghdr msg (+ its payload unless capped); then the attributes.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDR
        } else {
            u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?) as usize
        };
        let attrs = body.get(4 + align4(echoed)..)?;
        attrs_of(attrs)
            .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
            .map(|(_, v)| cstr(v))
    })();
    match msg {
        Some(m) if !m.is_empty() => io::Error::new(os.kind(), format!("{m} ({os})")),
        _ => os,
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// The (type, payload) attributes in `buf`.
fn attrs_of(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(buf[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, value))
    })
}

/// A message: an empty header (filled in by `request`) of `mtype` and a tcmsg.
fn tc_message(mtype: u16, ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDR + TCMSG];
    m[4..6].copy_from_slice(&mtype.to_ne_bytes());
    let t = &mut m[NLMSG_HDR..];
    t[0] = libc::AF_UNSPEC as u8;
    t[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    t[8..12].copy_from_slice(&handle.to_ne_bytes());
    t[12..16].copy_from_slice(&parent.to_ne_bytes());
    t[16..20].copy_from_slice(&info.to_ne_bytes());
    m
}

fn push_attr(m: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    m.extend_from_slice(&(len as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(align4(m.len()), 0);
}

/// `tcm_info` of a filter: priority in the upper half, protocol (network order) in the lower.
fn filter_info(priority: u16, protocol: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(protocol.to_be())
}

/// Adds a clsact qdisc to `ifindex`: `Ok(true)` if this call created it, `Ok(false)` if the
/// device already had one.
pub(crate) fn add_clsact(ifindex: u32) -> io::Result<bool> {
    let mut m = tc_message(RTM_NEWQDISC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0);
    push_attr(&mut m, TCA_KIND, b"clsact\0");
    match Socket::open()?.request(m, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, false) {
        Ok(_) => Ok(true),
        Err(e)
            if e.raw_os_error() == Some(libc::EEXIST)
                || e.kind() == io::ErrorKind::AlreadyExists =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the clsact qdisc of `ifindex` (and with it every filter on its hooks).
pub(crate) fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut m = tc_message(RTM_DELQDISC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0);
    push_attr(&mut m, TCA_KIND, b"clsact\0");
    Socket::open()?.request(m, NLM_F_ACK, false).map(drop)
}

/// Creates, or replaces in place, the cls_bpf filter at (`priority`, `handle`) on `hook` of
/// `ifindex`: direct-action, running `prog`, named `name`. The same request as
/// `tc filter replace ... bpf da`: with `NLM_F_CREATE | NLM_F_REPLACE` and no `NLM_F_EXCL`,
/// an existing filter at that priority and handle gets the new program (cls_bpf swaps it in
/// with one RCU list replacement, so packets meet either program, never none).
pub(crate) fn replace_bpf_filter(
    ifindex: u32,
    hook: Hook,
    priority: u16,
    handle: u32,
    prog: BorrowedFd<'_>,
    name: &str,
) -> io::Result<()> {
    let mut m = tc_message(
        RTM_NEWTFILTER,
        ifindex,
        handle,
        hook.parent(),
        filter_info(priority, ETH_P_ALL),
    );
    push_attr(&mut m, TCA_KIND, b"bpf\0");
    let mut opts = Vec::new();
    push_attr(
        &mut opts,
        TCA_BPF_FD,
        &(prog.as_raw_fd() as u32).to_ne_bytes(),
    );
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    push_attr(&mut opts, TCA_BPF_NAME, &cname);
    push_attr(
        &mut opts,
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    );
    push_attr(&mut m, TCA_OPTIONS, &opts);
    Socket::open()?
        .request(m, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, false)
        .map(drop)
}

/// Deletes the filter at (`priority`, `protocol`, `handle`) on `hook` of `ifindex`.
pub(crate) fn delete_filter(
    ifindex: u32,
    hook: Hook,
    priority: u16,
    protocol: u16,
    handle: u32,
) -> io::Result<()> {
    let m = tc_message(
        RTM_DELTFILTER,
        ifindex,
        handle,
        hook.parent(),
        filter_info(priority, protocol),
    );
    Socket::open()?.request(m, NLM_F_ACK, false).map(drop)
}

/// The filters on `hook` of `ifindex` (none when the device has no clsact qdisc).
pub(crate) fn filters(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let m = tc_message(RTM_GETTFILTER, ifindex, 0, hook.parent(), 0);
    let replies = match Socket::open()?.request(m, NLM_F_DUMP, true) {
        Ok(r) => r,
        // No qdisc (some kernels answer the dump with an error instead of nothing).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for body in replies {
        let Some(tcm) = body.get(..TCMSG) else {
            continue;
        };
        if i32::from_ne_bytes(tcm[4..8].try_into().unwrap()) as u32 != ifindex
            || u32::from_ne_bytes(tcm[12..16].try_into().unwrap()) != hook.parent()
        {
            continue;
        }
        let handle = u32::from_ne_bytes(tcm[8..12].try_into().unwrap());
        let info = u32::from_ne_bytes(tcm[16..20].try_into().unwrap());
        let mut f = Filter {
            priority: (info >> 16) as u16,
            protocol: u16::from_be(info as u16),
            handle,
            kind: String::new(),
            name: None,
            prog_id: None,
        };
        let mut has_options = false;
        for (ty, value) in attrs_of(&body[TCMSG..]) {
            match ty {
                TCA_KIND => f.kind = cstr(value),
                TCA_OPTIONS => {
                    has_options = true;
                    for (ty, value) in attrs_of(value) {
                        match ty {
                            TCA_BPF_NAME => f.name = Some(cstr(value)),
                            TCA_BPF_ID if value.len() >= 4 => {
                                f.prog_id = Some(u32::from_ne_bytes(value[..4].try_into().unwrap()))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // A dump also reports each priority's classifier itself (handle 0, no options).
        if has_options || handle != 0 {
            out.push(f);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_expects() {
        let mut m = tc_message(
            RTM_NEWTFILTER,
            7,
            0x51,
            Hook::Egress.parent(),
            filter_info(50000, ETH_P_ALL),
        );
        push_attr(&mut m, TCA_KIND, b"bpf\0");
        assert_eq!(m.len(), NLMSG_HDR + TCMSG + 8);
        assert_eq!(&m[4..6], &RTM_NEWTFILTER.to_ne_bytes());
        // tcm_info: priority 50000 = 0xc350, ETH_P_ALL in network order.
        assert_eq!(
            u32::from_ne_bytes(m[NLMSG_HDR + 16..NLMSG_HDR + 20].try_into().unwrap()),
            0xc350_0000 | u32::from(0x0003u16.to_be())
        );
        let attrs: Vec<_> = attrs_of(&m[NLMSG_HDR + TCMSG..]).collect();
        assert_eq!(attrs, vec![(TCA_KIND, &b"bpf\0"[..])]);
        // Odd lengths are padded to 4.
        let mut a = Vec::new();
        push_attr(&mut a, TCA_BPF_NAME, b"abcde\0");
        push_attr(&mut a, TCA_BPF_ID, &9u32.to_ne_bytes());
        let attrs: Vec<_> = attrs_of(&a).collect();
        assert_eq!(attrs[0], (TCA_BPF_NAME, &b"abcde\0"[..]));
        assert_eq!(attrs[1], (TCA_BPF_ID, &9u32.to_ne_bytes()[..]));
    }
}
