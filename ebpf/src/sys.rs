//! The few `bpf(2)` link commands aya 0.14 does not expose: open a pinned object, read a link's
//! target, replace a link's program in place, force-detach a link, walk all links.
//!
//! The attribute structs are prefixes of `union bpf_attr` (the kernel zero-extends a shorter
//! attr), the info struct a prefix of `struct bpf_link_info`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_link_type`.
pub(crate) const BPF_LINK_TYPE_CGROUP: u32 = 3;
/// `enum bpf_link_type`.
pub(crate) const BPF_LINK_TYPE_TCX: u32 = 11;

/// `enum bpf_attach_type` values of the hooks Sluice uses.
pub(crate) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub(crate) const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
pub(crate) const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
pub(crate) const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
pub(crate) const BPF_TCX_INGRESS: u32 = 46;
pub(crate) const BPF_TCX_EGRESS: u32 = 47;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out prefix of `union bpf_attr` for `cmd`, and
    // its size is passed along, so the kernel reads/writes only within it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_result(ret: libc::c_long) -> OwnedFd {
    // SAFETY: the commands this is used for return a new file descriptor we now own.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// `BPF_OBJ_GET`: open a pinned object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    bpf(BPF_OBJ_GET, &mut attr).map(fd_result)
}

/// The parts of `struct bpf_link_info` the loader looks at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkInfo {
    /// `enum bpf_link_type`.
    pub link_type: u32,
    pub link_id: u32,
    pub prog_id: u32,
    /// Cgroup links: the cgroup id (the cgroup directory's inode number on cgroup2).
    pub cgroup_id: u64,
    /// Cgroup and tcx links. (A tcx link's ifindex is left out on purpose: it is
    /// per-namespace, see `tcx_link_ids`.)
    pub attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    // The union: cgroup {u64 cgroup_id; u32 attach_type} or tcx {u32 ifindex; u32 attach_type}.
    u0: u64,
    u1: u64,
    rest: [u64; 6],
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub(crate) fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut raw = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<RawLinkInfo>() as u32,
        info: &mut raw as *mut RawLinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let (cgroup_id, attach_type) = match raw.link_type {
        BPF_LINK_TYPE_CGROUP => (raw.u0, raw.u1 as u32),
        // tcx: {u32 ifindex; u32 attach_type}.
        BPF_LINK_TYPE_TCX => (0, (raw.u0 >> 32) as u32),
        _ => (0, 0),
    };
    Ok(LinkInfo {
        link_type: raw.link_type,
        link_id: raw.id,
        prog_id: raw.prog_id,
        cgroup_id,
        attach_type,
    })
}

/// The name (truncated to 15 bytes by the kernel) of program `prog_id`.
pub(crate) fn prog_name(prog_id: u32) -> io::Result<String> {
    let mut attr = IdAttr {
        id: prog_id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = fd_result(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?);
    // struct bpf_prog_info up to and including name[16] (offset 64).
    let mut info = [0u8; 80];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// `BPF_LINK_UPDATE`: atomically make the link run `prog` instead of its current program.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `BPF_LINK_DETACH`: detach now, whoever else still holds the link (pins, other fds).
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

#[repr(C)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `BPF_LINK_GET_FD_BY_ID`.
pub(crate) fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = IdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).map(fd_result)
}

/// The ids of the links attached to tcx hook `attach_type` of device `ifindex` in the calling
/// thread's network namespace (`BPF_PROG_QUERY`). Link info only carries the ifindex, which is
/// per-namespace; the query resolves it where the caller is.
pub(crate) fn tcx_link_ids(ifindex: u32, attach_type: u32) -> io::Result<Vec<u32>> {
    #[repr(C)]
    struct Attr {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        count: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut prog_ids = [0u32; 64];
    let mut link_ids = [0u32; 64];
    let mut attr = Attr {
        target_ifindex: ifindex,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: prog_ids.as_mut_ptr() as u64,
        count: prog_ids.len() as u32,
        _pad: 0,
        prog_attach_flags: 0,
        link_ids: link_ids.as_mut_ptr() as u64,
        link_attach_flags: 0,
        revision: 0,
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = (attr.count as usize).min(link_ids.len());
    Ok(link_ids[..n]
        .iter()
        .copied()
        .filter(|&id| id != 0)
        .collect())
}

/// Every link in the system, as open fds with their info (links that vanish while walking
/// are skipped).
pub(crate) fn all_links() -> io::Result<Vec<(OwnedFd, LinkInfo)>> {
    let mut out = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        let fd = match link_fd_by_id(id) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if let Ok(info) = link_info(fd.as_fd()) {
            out.push((fd, info));
        }
    }
}

/// statfs(2) `f_type` of `path`.
pub(crate) fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// `BPF_FS_MAGIC`.
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC`.
pub(crate) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
