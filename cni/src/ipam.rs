//! In-process IPAM compatible with `host-local`: the same configuration, the same round-robin
//! order (`last_reserved_ip.<set>`), the same lease files (`<dataDir>/<network>/<ip>` holding
//! `<containerID>\r\n<ifname>`) and the same `lock` file (flock), so the two can share a store.
//!
//! Allocation logic is written once against the [`Store`] trait; [`DiskStore`] is the real
//! backend, [`MemStore`] the in-memory fake used by unit tests.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{CniError, Code};

/// Errors of the IPAM module.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of a range set is taken.
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    /// This (container, ifname) already holds an address in the range set.
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate {
        /// The address held.
        ip: IpAddr,
        /// The container id.
        id: String,
    },
    /// The store lock was not obtained in time.
    #[error("timed out after {0:?} waiting for the IPAM lock {1}")]
    LockTimeout(Duration, PathBuf),
    /// A file-system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = match &e {
            IpamError::LockTimeout(..) => Code::TryAgainLater,
            IpamError::Io { .. } => Code::Io,
            IpamError::Exhausted(_) | IpamError::Duplicate { .. } => Code::Internal,
        };
        CniError::new(code, e.to_string())
    }
}

/// A canonical allocation range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet (truncated).
    pub subnet: IpNet,
    /// First allocatable address.
    pub start: IpAddr,
    /// Last allocatable address.
    pub end: IpAddr,
    /// Gateway (never allocated).
    pub gateway: IpAddr,
}

impl Range {
    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// One allocated address and the range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// Its range (subnet, gateway).
    pub range: Range,
}

impl Allocation {
    /// `ip/prefix`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.range.subnet.prefix_len())
    }
}

/// One lease in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: IpAddr,
    /// Owner container id.
    pub container_id: String,
    /// Owner interface name.
    pub ifname: String,
}

/// A locked lease store. Holding a value means holding the store's lock.
pub trait Store {
    /// Records a lease unless the address is taken; returns whether it was recorded. Also
    /// remembers `ip` as the last reserved address of range set `set`.
    fn reserve(&mut self, lease: &Lease, set: usize) -> Result<bool, IpamError>;
    /// The last reserved address of range set `set`.
    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError>;
    /// All leases.
    fn leases(&self) -> Result<Vec<Lease>, IpamError>;
    /// Removes one address's lease (no error if absent).
    fn release(&mut self, ip: IpAddr) -> Result<(), IpamError>;

    /// Removes every lease of (id, ifname); returns the released addresses.
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mine: Vec<IpAddr> = self
            .leases()?
            .into_iter()
            .filter(|l| l.container_id == id && l.ifname == ifname)
            .map(|l| l.ip)
            .collect();
        for ip in &mine {
            self.release(*ip)?;
        }
        Ok(mine)
    }
}

/// Allocates one address from each range set for (id, ifname), round robin from the last
/// reserved address, never the network, broadcast or gateway address. On failure nothing
/// stays allocated.
pub fn allocate(
    store: &mut dyn Store,
    sets: &[Vec<Range>],
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, IpamError> {
    let existing = store.leases()?;
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        match allocate_one(store, set, i, id, ifname, &existing) {
            Ok(a) => out.push(a),
            Err(e) => {
                for a in &out {
                    let _ = store.release(a.ip);
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn allocate_one(
    store: &mut dyn Store,
    set: &[Range],
    set_id: usize,
    id: &str,
    ifname: &str,
    existing: &[Lease],
) -> Result<Allocation, IpamError> {
    if let Some(l) = existing.iter().find(|l| {
        l.container_id == id && l.ifname == ifname && set.iter().any(|r| r.contains(l.ip))
    }) {
        return Err(IpamError::Duplicate {
            ip: l.ip,
            id: id.to_string(),
        });
    }
    // Round robin: start right after the last reserved address if it is in this set.
    let advance = |ri: usize, ip: IpAddr| -> (usize, IpAddr) {
        if ip == set[ri].end {
            let n = (ri + 1) % set.len();
            (n, set[n].start)
        } else {
            (ri, next_ip(ip))
        }
    };
    let (mut ri, mut cur) = match store.last_reserved(set_id)? {
        Some(last) => match set.iter().position(|r| r.contains(last)) {
            Some(ri) => advance(ri, last),
            None => (0, set[0].start),
        },
        None => (0, set[0].start),
    };
    let total: u128 = set
        .iter()
        .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
        .sum();
    for _ in 0..total {
        let r = &set[ri];
        let candidate = cur;
        (ri, cur) = advance(ri, cur);
        if candidate == r.gateway
            || candidate == r.subnet.network()
            || candidate == r.subnet.broadcast()
        {
            continue;
        }
        let lease = Lease {
            ip: candidate,
            container_id: id.to_string(),
            ifname: ifname.to_string(),
        };
        if store.reserve(&lease, set_id)? {
            return Ok(Allocation {
                ip: candidate,
                range: r.clone(),
            });
        }
    }
    Err(IpamError::Exhausted(
        set.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// The numeric value of an address.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The next address (wrapping).
pub fn next_ip(ip: IpAddr) -> IpAddr {
    let max = if ip.is_ipv4() {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    let v = to_u128(ip);
    from_u128(if v == max { 0 } else { v + 1 }, ip)
}

/// The previous address (wrapping).
pub fn prev_ip(ip: IpAddr) -> IpAddr {
    let max = if ip.is_ipv4() {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    let v = to_u128(ip);
    from_u128(if v == 0 { max } else { v - 1 }, ip)
}

/// host-local's on-disk store: `<dataDir>/<network>/`, locked with flock on `lock`.
pub struct DiskStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl DiskStore {
    /// Opens (creating) the network's directory and takes its lock, polling until `timeout`.
    pub fn open(data_dir: &Path, network: &str, timeout: Duration) -> Result<DiskStore, IpamError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let lock_path = dir.join("lock");
        let deadline = Instant::now() + timeout;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| IpamError::Io {
                what: "opening",
                path: lock_path.clone(),
                source,
            })?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(DiskStore { dir, _lock: lock });
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                    if Instant::now() >= deadline {
                        return Err(IpamError::LockTimeout(timeout, lock_path));
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => {
                    return Err(IpamError::Io {
                        what: "locking",
                        path: lock_path,
                        source: e.into(),
                    })
                }
            }
        }
    }

    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
        move |source| IpamError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, lease: &Lease, set: usize) -> Result<bool, IpamError> {
        let path = self.dir.join(lease.ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Self::io("creating", &path)(e)),
        };
        if let Err(e) =
            f.write_all(format!("{}\r\n{}", lease.container_id, lease.ifname).as_bytes())
        {
            let _ = fs::remove_file(&path);
            return Err(Self::io("writing", &path)(e));
        }
        let last = self.dir.join(format!("last_reserved_ip.{set}"));
        fs::write(&last, lease.ip.to_string()).map_err(Self::io("writing", &last))?;
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        let path = self.dir.join(format!("last_reserved_ip.{set}"));
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("reading", &path)(e)),
        }
    }

    fn leases(&self) -> Result<Vec<Lease>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Self::io("listing", &self.dir))? {
            let entry = entry.map_err(Self::io("listing", &self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("reading", &path)(e)),
            };
            let mut lines = text.lines().map(str::trim);
            out.push(Lease {
                ip,
                container_id: lines.next().unwrap_or_default().to_string(),
                ifname: lines.next().unwrap_or_default().to_string(),
            });
        }
        Ok(out)
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("removing", &path)(e)),
        }
    }
}

/// In-memory fake store; [`MemStore::lock`] gives the locked view (shareable across threads).
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

/// The fake's state.
#[derive(Debug, Default)]
pub struct MemInner {
    leases: BTreeMap<u128, Lease>,
    last: BTreeMap<usize, IpAddr>,
}

/// A locked [`MemStore`].
pub struct MemLocked<'a>(MutexGuard<'a, MemInner>);

impl MemStore {
    /// Takes the lock.
    pub fn lock(&self) -> MemLocked<'_> {
        MemLocked(self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Store for MemLocked<'_> {
    fn reserve(&mut self, lease: &Lease, set: usize) -> Result<bool, IpamError> {
        let k = to_u128(lease.ip);
        if self.0.leases.contains_key(&k) {
            return Ok(false);
        }
        self.0.leases.insert(k, lease.clone());
        self.0.last.insert(set, lease.ip);
        Ok(true)
    }
    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.0.last.get(&set).copied())
    }
    fn leases(&self) -> Result<Vec<Lease>, IpamError> {
        Ok(self.0.leases.values().cloned().collect())
    }
    fn release(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        self.0.leases.remove(&to_u128(ip));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpamConf;

    fn sets(json: &str) -> Vec<Vec<Range>> {
        let c: IpamConf = serde_json::from_str(json).unwrap();
        c.range_sets().unwrap()
    }

    fn alloc(s: &MemStore, sets: &[Vec<Range>], id: &str) -> Result<Vec<Allocation>, IpamError> {
        allocate(&mut s.lock(), sets, id, "eth0")
    }

    #[test]
    fn round_robin_skips_gateway_and_continues_after_release() {
        let sets = sets(r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/29"}]]}"#);
        let s = MemStore::default();
        let a = alloc(&s, &sets, "c1").unwrap();
        assert_eq!(a[0].cidr(), "10.0.0.2/29");
        assert_eq!(a[0].range.gateway.to_string(), "10.0.0.1");
        assert_eq!(
            alloc(&s, &sets, "c2").unwrap()[0].ip.to_string(),
            "10.0.0.3"
        );
        assert_eq!(s.lock().release_by_id("c1", "eth0").unwrap().len(), 1);
        // Round robin: .4 next, not the freed .2.
        assert_eq!(
            alloc(&s, &sets, "c3").unwrap()[0].ip.to_string(),
            "10.0.0.4"
        );
    }

    #[test]
    fn never_network_broadcast_or_gateway_and_exhaustion() {
        let sets = sets(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/29","gateway":"10.0.0.4"}]]}"#,
        );
        let s = MemStore::default();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                alloc(&s, &sets, &format!("c{i}")).unwrap()[0]
                    .ip
                    .to_string(),
            );
        }
        got.sort();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"]
        );
        let e = alloc(&s, &sets, "c9").unwrap_err();
        assert!(matches!(e, IpamError::Exhausted(_)), "{e}");
        assert!(e
            .to_string()
            .contains("no IP addresses available in range set: 10.0.0.1-10.0.0.6"));
        // After a release the freed address is found again by wrapping around.
        s.lock().release("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            alloc(&s, &sets, "c9").unwrap()[0].ip.to_string(),
            "10.0.0.2"
        );
    }

    #[test]
    fn slash_30_has_one_address_and_range_bounds_hold() {
        let sets1 = sets(r#"{"type":"host-local","subnet":"10.0.0.0/30"}"#);
        let s = MemStore::default();
        assert_eq!(
            alloc(&s, &sets1, "a").unwrap()[0].ip.to_string(),
            "10.0.0.2"
        );
        assert!(alloc(&s, &sets1, "b").is_err());
        let sets2 = sets(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.100","rangeEnd":"10.1.0.101"},{"subnet":"10.2.0.0/24","rangeStart":"10.2.0.7","rangeEnd":"10.2.0.7"}]]}"#,
        );
        let s = MemStore::default();
        let got: Vec<String> = (0..3)
            .map(|i| alloc(&s, &sets2, &format!("c{i}")).unwrap()[0].cidr())
            .collect();
        assert_eq!(got, ["10.1.0.100/24", "10.1.0.101/24", "10.2.0.7/24"]);
        assert!(alloc(&s, &sets2, "c4").is_err());
    }

    #[test]
    fn duplicate_and_multi_set_rollback() {
        let sets = sets(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.5.0.0/30"}]]}"#,
        );
        let s = MemStore::default();
        let a = alloc(&s, &sets, "c1").unwrap();
        assert_eq!(a.len(), 2);
        assert!(matches!(
            alloc(&s, &sets, "c1"),
            Err(IpamError::Duplicate { .. })
        ));
        // Second set is full: the first set's address must not leak.
        let before = s.lock().leases().unwrap().len();
        assert!(alloc(&s, &sets, "c2").is_err());
        assert_eq!(s.lock().leases().unwrap().len(), before);
    }

    #[test]
    fn ipv6_range() {
        let sets = sets(r#"{"type":"host-local","ranges":[[{"subnet":"2001:db8::/64"}]]}"#);
        let s = MemStore::default();
        assert_eq!(alloc(&s, &sets, "c").unwrap()[0].cidr(), "2001:db8::2/64");
    }

    #[test]
    fn concurrent_allocations_are_unique() {
        let sets = Arc::new(sets(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]]}"#,
        ));
        let s = MemStore::default();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (s, sets) = (s.clone(), sets.clone());
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| alloc(&s, &sets, &format!("t{t}-{i}")).unwrap()[0].ip)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 200);
    }

    #[test]
    fn disk_store_matches_host_local_layout() {
        let dir = tempfile_dir();
        let sets = sets(r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]]}"#);
        {
            let mut st = DiskStore::open(&dir, "net1", Duration::from_secs(1)).unwrap();
            let a = allocate(&mut st, &sets, "ctr1", "eth0").unwrap();
            assert_eq!(a[0].ip.to_string(), "10.0.0.2");
            // A second opener times out while the lock is held.
            let e = DiskStore::open(&dir, "net1", Duration::from_millis(50))
                .err()
                .unwrap();
            assert_eq!(CniError::from(e).code, 11);
        }
        let lease = fs::read_to_string(dir.join("net1/10.0.0.2")).unwrap();
        assert_eq!(lease, "ctr1\r\neth0");
        assert_eq!(
            fs::read_to_string(dir.join("net1/last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        assert!(dir.join("net1/lock").exists());
        let mut st = DiskStore::open(&dir, "net1", Duration::from_secs(1)).unwrap();
        assert_eq!(st.release_by_id("ctr1", "eth0").unwrap().len(), 1);
        assert!(!dir.join("net1/10.0.0.2").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluice-cni-ipam-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
