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

/// Why a range, a range set or the list of range sets is refused (host-local's
/// `Range.Canonicalize`, `RangeSet.Canonicalize` and `LoadIPAMConfig` checks, with messages that
/// name the field and the values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The subnet is not `address/prefix`.
    #[error("invalid subnet {subnet:?}: {reason}")]
    BadSubnet {
        /// The text as given.
        subnet: String,
        /// The parser's complaint.
        reason: String,
    },
    /// An IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d/n`): host-local refuses it too (its IP and
    /// mask lengths disagree once the address is canonicalised to IPv4).
    #[error("subnet {0} is an IPv4-mapped IPv6 prefix: write the IPv4 subnet instead")]
    MappedSubnet(IpNet),
    /// Fewer than two host bits: no address is left once network (and broadcast) are excluded.
    #[error("subnet {0} too small to allocate from")]
    TooSmall(IpNet),
    /// The subnet's address is not its network address.
    #[error("subnet {subnet} has host bits set: for a prefix length of {} the network address is {network}", subnet.prefix_len())]
    HostBits {
        /// The subnet as given.
        subnet: IpNet,
        /// Its network address.
        network: IpAddr,
    },
    /// `rangeStart`, `rangeEnd` or `gateway` is outside the subnet (or of the other family).
    #[error("{field} {ip} not in network {subnet}")]
    NotInSubnet {
        /// The JSON key.
        field: &'static str,
        /// The address given.
        ip: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },
    /// `rangeStart`, `rangeEnd` or `gateway` is the subnet's network or IPv4 broadcast address.
    #[error("{field} {ip} is the {which} address of {subnet}")]
    Reserved {
        /// The JSON key.
        field: &'static str,
        /// The address given.
        ip: IpAddr,
        /// `network` or `broadcast`.
        which: &'static str,
        /// The subnet.
        subnet: IpNet,
    },
    /// `rangeStart` after `rangeEnd`.
    #[error("rangeStart {start} is after rangeEnd {end}")]
    Inverted {
        /// The first address.
        start: IpAddr,
        /// The last address.
        end: IpAddr,
    },
    /// A top-level `rangeStart`/`rangeEnd`/`gateway` without the top-level `subnet` it belongs to.
    #[error("{field} {ip} given without subnet")]
    WithoutSubnet {
        /// The JSON key.
        field: &'static str,
        /// The address given.
        ip: IpAddr,
    },
    /// Neither `subnet` nor `ranges`.
    #[error("no IP ranges specified")]
    NoRanges,
    /// A range set with no range.
    #[error("empty range set")]
    EmptySet,
    /// IPv4 and IPv6 ranges in one range set (one address is allocated per set); the two
    /// ranges as `start-end`.
    #[error("mixed address families in one range set: {0} and {1}")]
    MixedFamilies(String, String),
    /// Two ranges of one set share addresses (as `start-end`).
    #[error("ranges {0} and {1} overlap")]
    Overlap(String, String),
    /// Two range sets share addresses (one attachment could get the same address twice).
    #[error("range sets {set_a} and {set_b} overlap: {a} and {b}")]
    SetsOverlap {
        /// Where the first set is in the config.
        set_a: String,
        /// Where the second set is in the config.
        set_b: String,
        /// The first set's overlapping range (`start-end`).
        a: String,
        /// The second set's overlapping range (`start-end`).
        b: String,
    },
}

/// A canonical allocation range. Only [`Range::new`] builds one, so every value holds the
/// invariants the allocator relies on: `subnet` is a network with at least two host bits,
/// `start` and `end` are of its family, inside it, neither its network nor (IPv4) broadcast
/// address, and `start <= end`; `gateway` is inside the subnet too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    subnet: IpNet,
    start: IpAddr,
    end: IpAddr,
    gateway: IpAddr,
}

impl Range {
    /// Parses `subnet` and canonicalises the range as host-local does (see [`Range::new`]).
    pub fn parse(
        subnet: &str,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        let net: IpNet =
            subnet
                .trim()
                .parse()
                .map_err(|e: ipnet::AddrParseError| RangeError::BadSubnet {
                    subnet: subnet.to_string(),
                    reason: e.to_string(),
                })?;
        Range::new(net, start, end, gateway)
    }

    /// Validates a range and fills in host-local's defaults: `rangeStart` the first address
    /// after the network address, `rangeEnd` the last address before the IPv4 broadcast
    /// address (the subnet's last address for IPv6, which has no broadcast), `gateway` the
    /// first address after the network address. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn new(
        subnet: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        if let IpNet::V6(n) = subnet {
            if n.addr().to_ipv4_mapped().is_some() {
                return Err(RangeError::MappedSubnet(subnet));
            }
        }
        // Two host bits at least: a /31 or /32 (/127, /128) has no address left once the
        // network address (and the IPv4 broadcast address) is excluded. Checking the host-bit
        // count up front also keeps `network + 1` and `broadcast - 1` below from leaving it.
        if subnet.max_prefix_len() - subnet.prefix_len() < 2 {
            return Err(RangeError::TooSmall(subnet));
        }
        // host-local refuses `10.0.0.5/24` rather than guessing whether 10.0.0.0/24 was meant.
        if subnet.addr() != subnet.network() {
            return Err(RangeError::HostBits {
                subnet,
                network: subnet.network(),
            });
        }
        let network = subnet.network();
        let top = subnet.broadcast();
        let first = checked_next(network).ok_or(RangeError::TooSmall(subnet))?;
        let last = if subnet.addr().is_ipv4() {
            checked_prev(top).ok_or(RangeError::TooSmall(subnet))?
        } else {
            top
        };
        // A given address must be a usable host address of this subnet: outside it the
        // allocator would hand out addresses of another network, and the network and IPv4
        // broadcast addresses cannot be given to a container (or serve as its gateway).
        let check = |field: &'static str, ip: IpAddr| -> Result<IpAddr, RangeError> {
            let ip = ip.to_canonical();
            if !subnet.contains(&ip) {
                return Err(RangeError::NotInSubnet { field, ip, subnet });
            }
            let which = if ip == network {
                "network"
            } else if ip.is_ipv4() && ip == top {
                "broadcast"
            } else {
                return Ok(ip);
            };
            Err(RangeError::Reserved {
                field,
                ip,
                which,
                subnet,
            })
        };
        let start = start.map(|ip| check("rangeStart", ip)).transpose()?;
        let end = end.map(|ip| check("rangeEnd", ip)).transpose()?;
        let gateway = gateway.map(|ip| check("gateway", ip)).transpose()?;
        let (start, end) = (start.unwrap_or(first), end.unwrap_or(last));
        // The bug this guards against: an inverted range made the old size computation
        // (`end - start + 1`) wrap and the cursor walk past the broadcast address into the
        // next network. Same family here, so comparing the integers is exact.
        if to_u128(start) > to_u128(end) {
            return Err(RangeError::Inverted { start, end });
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway: gateway.unwrap_or(first),
        })
    }

    /// The subnet (a network address with its prefix).
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// First allocatable address (inclusive).
    pub fn start(&self) -> IpAddr {
        self.start
    }

    /// Last allocatable address (inclusive).
    pub fn end(&self) -> IpAddr {
        self.end
    }

    /// The gateway (never allocated).
    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// Whether `ip` is in `[start, end]` (same family; IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Whether two ranges share an address (ranges of different families never do).
    pub fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// The number of addresses in `[start, end]`, saturating at `u128::MAX` (only an IPv6
    /// `::/0`-sized range comes close).
    pub fn size(&self) -> u128 {
        to_u128(self.end)
            .saturating_sub(to_u128(self.start))
            .saturating_add(1)
    }

    /// Whether this is an IPv4 range.
    pub fn is_ipv4(&self) -> bool {
        self.start.is_ipv4()
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Checks one range set as host-local's `RangeSet.Canonicalize`: not empty, one address
/// family (one address is allocated per set), no two ranges sharing an address.
pub fn check_set(set: &[Range]) -> Result<(), RangeError> {
    let first = set.first().ok_or(RangeError::EmptySet)?;
    if let Some(r) = set.iter().find(|r| r.is_ipv4() != first.is_ipv4()) {
        return Err(RangeError::MixedFamilies(first.to_string(), r.to_string()));
    }
    for (i, a) in set.iter().enumerate() {
        if let Some(b) = set[i + 1..].iter().find(|b| a.overlaps(b)) {
            return Err(RangeError::Overlap(a.to_string(), b.to_string()));
        }
    }
    Ok(())
}

/// The first pair of ranges, one from each set, that share an address.
pub fn sets_overlap<'a>(a: &'a [Range], b: &'a [Range]) -> Option<(&'a Range, &'a Range)> {
    a.iter()
        .flat_map(|x| b.iter().map(move |y| (x, y)))
        .find(|(x, y)| x.overlaps(y))
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
/// reserved address, never the network, broadcast or any range's gateway address. On failure
/// nothing stays allocated.
pub fn allocate(
    store: &mut dyn Store,
    sets: &[Vec<Range>],
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, IpamError> {
    let existing = store.leases()?;
    // A gateway of one range may lie inside another range (same subnet split in two, say):
    // it is skipped everywhere, not only in its own range.
    let gateways: Vec<IpAddr> = sets.iter().flatten().map(Range::gateway).collect();
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        match allocate_one(store, set, i, id, ifname, &existing, &gateways) {
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

/// A position in a range set: the range's index and an address inside that range.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    range: usize,
    ip: IpAddr,
}

impl Cursor {
    /// The next position: the next address of the same range, or the next range's start
    /// after its end. Never leaves `[start, end]` of some range of `set`: the successor is
    /// only taken below `end` (so it exists and is at most `end`, even for a range ending at
    /// 255.255.255.254 or ffff:…:ffff).
    fn advance(self, set: &[Range]) -> Cursor {
        let r = &set[self.range];
        let within = r.contains(self.ip) && to_u128(self.ip) < to_u128(r.end);
        match within.then(|| checked_next(self.ip)).flatten() {
            Some(ip) => Cursor { ip, ..self },
            None => {
                let range = (self.range + 1) % set.len();
                Cursor {
                    range,
                    ip: set[range].start,
                }
            }
        }
    }
}

fn allocate_one(
    store: &mut dyn Store,
    set: &[Range],
    set_id: usize,
    id: &str,
    ifname: &str,
    existing: &[Lease],
    gateways: &[IpAddr],
) -> Result<Allocation, IpamError> {
    if set.is_empty() {
        // Refused by the config check; an empty set built in code has nothing to give.
        return Err(IpamError::Exhausted(String::new()));
    }
    if let Some(l) = existing.iter().find(|l| {
        l.container_id == id && l.ifname == ifname && set.iter().any(|r| r.contains(l.ip))
    }) {
        return Err(IpamError::Duplicate {
            ip: l.ip,
            id: id.to_string(),
        });
    }
    // Round robin: start right after the last reserved address if it is in this set.
    let mut cur = match store.last_reserved(set_id)? {
        Some(last) => match set.iter().position(|r| r.contains(last)) {
            Some(range) => Cursor { range, ip: last }.advance(set),
            None => Cursor {
                range: 0,
                ip: set[0].start,
            },
        },
        None => Cursor {
            range: 0,
            ip: set[0].start,
        },
    };
    // Every address of the set is visited at most once: the loop is bounded by the set's
    // size, not by reaching some address again.
    let mut left: u128 = set.iter().fold(0, |n, r| n.saturating_add(r.size()));
    while left > 0 {
        left -= 1;
        let candidate = cur;
        cur = cur.advance(set);
        let r = &set[candidate.range];
        let ip = candidate.ip;
        if gateways.contains(&ip)
            || ip == r.subnet.network()
            || (ip.is_ipv4() && ip == r.subnet.broadcast())
        {
            continue;
        }
        let lease = Lease {
            ip,
            container_id: id.to_string(),
            ifname: ifname.to_string(),
        };
        if store.reserve(&lease, set_id)? {
            return Ok(Allocation {
                ip,
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

/// The numeric value of an address (an IPv4 address is its `u32` value).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address after `ip`, or `None` after 255.255.255.255 / ffff:…:ffff (no wrap to 0).
pub fn checked_next(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    }
}

/// The address before `ip`, or `None` before 0.0.0.0 / `::` (no wrap to the top).
pub fn checked_prev(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a)
            .checked_sub(1)
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        IpAddr::V6(a) => u128::from(a)
            .checked_sub(1)
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    }
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
        assert_eq!(a[0].range.gateway().to_string(), "10.0.0.1");
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(
        subnet: &str,
        start: Option<&str>,
        end: Option<&str>,
        gw: Option<&str>,
    ) -> Result<Range, RangeError> {
        Range::parse(subnet, start.map(ip), end.map(ip), gw.map(ip))
    }

    /// host-local's range_test.go cases (plus ours at the edges), with our messages.
    #[test]
    fn host_local_range_canonicalize_cases() {
        type Want = Result<(&'static str, &'static str, &'static str), &'static str>;
        type Case = (
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Want,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // host-local: sane defaults.
            ("192.0.2.0/24", None, None, None, Ok(("192.0.2.1", "192.0.2.254", "192.0.2.1"))),
            ("192.0.2.0/25", None, None, None, Ok(("192.0.2.1", "192.0.2.126", "192.0.2.1"))),
            ("2001:DB8:1::/64", None, None, None,
                Ok(("2001:db8:1::1", "2001:db8:1::ffff:ffff:ffff:ffff", "2001:db8:1::1"))),
            // host-local: host bits set.
            ("192.0.2.12/24", None, None, None, Err("subnet 192.0.2.12/24 has host bits set: for a prefix length of 24 the network address is 192.0.2.0")),
            ("2001:DB8:1::24:19ff:fee1:c44a/64", None, None, None, Err("subnet 2001:db8:1:0:24:19ff:fee1:c44a/64 has host bits set: for a prefix length of 64 the network address is 2001:db8:1::")),
            ("2001:DB8:24:19ff::/63", None, None, None, Err("subnet 2001:db8:24:19ff::/63 has host bits set: for a prefix length of 63 the network address is 2001:db8:24:19fe::")),
            ("192.168.127.0/23", None, None, None, Err("subnet 192.168.127.0/23 has host bits set: for a prefix length of 23 the network address is 192.168.126.0")),
            // host-local: too small.
            ("192.0.2.0/31", None, None, None, Err("subnet 192.0.2.0/31 too small to allocate from")),
            // host-local: start/end outside the subnet, start after end. host-local reports the
            // inverted case as "RangeStart 192.0.2.50 not in network"; we name the cause.
            ("192.0.2.0/24", Some("192.0.3.0"), None, None, Err("rangeStart 192.0.3.0 not in network 192.0.2.0/24")),
            ("192.0.2.0/24", None, Some("192.0.4.0"), None, Err("rangeEnd 192.0.4.0 not in network 192.0.2.0/24")),
            ("192.0.2.0/24", Some("192.0.2.50"), Some("192.0.2.40"), None, Err("rangeStart 192.0.2.50 is after rangeEnd 192.0.2.40")),
            // host-local: all fields (gateway outside [start, end] is fine).
            ("192.0.2.0/24", Some("192.0.2.40"), Some("192.0.2.50"), Some("192.0.2.254"), Ok(("192.0.2.40", "192.0.2.50", "192.0.2.254"))),
            // host-local config_test.go: the old-style single range.
            ("10.1.2.0/24", Some("10.1.2.9"), Some("10.1.2.20"), Some("10.1.2.30"), Ok(("10.1.2.9", "10.1.2.20", "10.1.2.30"))),
            // Ours: the review's regression.
            ("10.80.0.0/24", Some("10.80.0.200"), Some("10.80.0.100"), None, Err("rangeStart 10.80.0.200 is after rangeEnd 10.80.0.100")),
            // Ours: /32, /127, /128 too; /30 and /126 are the smallest usable.
            ("10.0.0.1/32", None, None, None, Err("subnet 10.0.0.1/32 too small to allocate from")),
            ("2001:db8::/127", None, None, None, Err("subnet 2001:db8::/127 too small to allocate from")),
            ("2001:db8::1/128", None, None, None, Err("subnet 2001:db8::1/128 too small to allocate from")),
            ("10.0.0.0/30", None, None, None, Ok(("10.0.0.1", "10.0.0.2", "10.0.0.1"))),
            ("2001:db8::/126", None, None, None, Ok(("2001:db8::1", "2001:db8::3", "2001:db8::1"))),
            // Ours: the top of the address space.
            ("255.255.255.252/30", None, None, None, Ok(("255.255.255.253", "255.255.255.254", "255.255.255.253"))),
            ("255.255.255.0/24", None, Some("255.255.255.255"), None, Err("rangeEnd 255.255.255.255 is the broadcast address of 255.255.255.0/24")),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126", None, None, None,
                Ok(("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd"))),
            ("0.0.0.0/0", None, None, None, Ok(("0.0.0.1", "255.255.255.254", "0.0.0.1"))),
            ("::/0", None, None, None, Ok(("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1"))),
            // Ours: network / broadcast as start, end or gateway; gateway outside; families.
            ("10.0.0.0/24", Some("10.0.0.0"), None, None, Err("rangeStart 10.0.0.0 is the network address of 10.0.0.0/24")),
            ("10.0.0.0/24", None, Some("10.0.0.255"), None, Err("rangeEnd 10.0.0.255 is the broadcast address of 10.0.0.0/24")),
            ("10.0.0.0/24", None, None, Some("10.0.0.255"), Err("gateway 10.0.0.255 is the broadcast address of 10.0.0.0/24")),
            ("10.0.0.0/24", None, None, Some("10.0.1.1"), Err("gateway 10.0.1.1 not in network 10.0.0.0/24")),
            ("10.0.0.0/24", Some("2001:db8::5"), None, None, Err("rangeStart 2001:db8::5 not in network 10.0.0.0/24")),
            ("2001:db8::/64", None, None, Some("10.0.0.1"), Err("gateway 10.0.0.1 not in network 2001:db8::/64")),
            ("2001:db8::/64", Some("2001:db8::"), None, None, Err("rangeStart 2001:db8:: is the network address of 2001:db8::/64")),
            // IPv4-mapped addresses are IPv4 (host-local's canonicalizeIP); mapped subnets are not.
            ("10.0.0.0/24", Some("::ffff:10.0.0.5"), None, None, Ok(("10.0.0.5", "10.0.0.254", "10.0.0.1"))),
            ("::ffff:10.0.0.0/120", None, None, None, Err("subnet ::ffff:10.0.0.0/120 is an IPv4-mapped IPv6 prefix: write the IPv4 subnet instead")),
            ("10.0.0.0", None, None, None, Err("invalid subnet \"10.0.0.0\": invalid IP address syntax")),
            ("10.0.0.0/33", None, None, None, Err("invalid subnet \"10.0.0.0/33\": invalid IP address syntax")),
            // A one-address range is fine, even if it is the gateway (it is then exhausted).
            ("10.0.0.0/24", Some("10.0.0.1"), Some("10.0.0.1"), None, Ok(("10.0.0.1", "10.0.0.1", "10.0.0.1"))),
        ];
        for (subnet, start, end, gw, want) in cases {
            let got = range(subnet, *start, *end, *gw);
            match (want, &got) {
                (Ok((s, e, g)), Ok(r)) => {
                    assert_eq!(
                        (r.start(), r.end(), r.gateway()),
                        (ip(s), ip(e), ip(g)),
                        "{subnet} {start:?} {end:?} {gw:?}"
                    );
                    assert!(r.subnet().contains(&r.start()) && r.subnet().contains(&r.end()));
                }
                (Err(msg), Err(e)) => {
                    assert_eq!(&e.to_string(), msg, "{subnet} {start:?} {end:?} {gw:?}")
                }
                _ => panic!("{subnet} {start:?} {end:?} {gw:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// host-local: "should accept v4/v6 IPs in range and reject IPs out of range".
    #[test]
    fn host_local_contains_cases() {
        let r4 = range(
            "192.0.2.0/24",
            Some("192.0.2.40"),
            Some("192.0.2.50"),
            Some("192.0.2.254"),
        )
        .unwrap();
        let r6 = range(
            "2001:DB8:1::/64",
            Some("2001:db8:1::40"),
            Some("2001:db8:1::50"),
            None,
        )
        .unwrap();
        for (r, x, want) in [
            (&r4, "192.0.3.0", false),
            (&r4, "192.0.2.39", false),
            (&r4, "192.0.2.40", true),
            (&r4, "192.0.2.50", true),
            (&r4, "192.0.2.51", false),
            (&r4, "::ffff:192.0.2.45", true),
            (&r4, "2001:db8:1::45", false),
            (&r6, "2001:db8:2::", false),
            (&r6, "2001:db8:1::39", false),
            (&r6, "2001:db8:1::40", true),
            (&r6, "2001:db8:1::50", true),
            (&r6, "2001:db8:1::51", false),
            (&r6, "192.0.2.45", false),
        ] {
            assert_eq!(r.contains(ip(x)), want, "{r} contains {x}");
        }
    }

    /// host-local: the "Detecting overlap" table (commutative).
    #[test]
    fn host_local_overlap_cases() {
        let cases = [
            (
                ("10.0.0.0/24", None, None),
                ("10.0.1.0/24", None, None),
                false,
            ),
            // Different families never overlap, even with the same bits.
            (("0.0.0.0/24", None, None), ("::/24", None, None), false),
            (
                ("10.0.0.0/24", None, None),
                ("10.0.0.0/24", None, None),
                true,
            ),
            (
                ("10.0.0.0/20", None, None),
                ("10.0.1.0/24", None, None),
                true,
            ),
            (
                ("10.0.0.0/24", None, Some("10.0.0.127")),
                ("10.0.0.0/24", Some("10.0.0.128"), None),
                false,
            ),
            (
                ("10.0.0.0/24", None, Some("10.0.0.127")),
                ("10.0.0.0/24", Some("10.0.0.127"), None),
                true,
            ),
        ];
        for ((s1, a1, b1), (s2, a2, b2), want) in cases {
            let r1 = range(s1, a1, b1, None).unwrap();
            let r2 = range(s2, a2, b2, None).unwrap();
            assert_eq!(r1.overlaps(&r2), want, "{r1} / {r2}");
            assert_eq!(r2.overlaps(&r1), want, "{r2} / {r1}");
        }
    }

    /// host-local's range_set_test.go.
    #[test]
    fn host_local_range_set_cases() {
        let set = vec![
            range("192.168.0.0/24", None, None, None).unwrap(),
            range("172.16.1.0/24", None, None, None).unwrap(),
        ];
        check_set(&set).unwrap();
        assert_eq!(
            set.iter().position(|r| r.contains(ip("192.168.0.55"))),
            Some(0)
        );
        assert!(!set.iter().any(|r| r.contains(ip("192.168.99.99"))));

        let inside = vec![
            range("192.168.0.0/20", None, None, None).unwrap(),
            range("192.168.2.0/24", None, None, None).unwrap(),
        ];
        assert_eq!(
            check_set(&inside).unwrap_err().to_string(),
            "ranges 192.168.0.1-192.168.15.254 and 192.168.2.1-192.168.2.254 overlap"
        );
        let (p1, p2) = (inside[..1].to_vec(), inside[1..].to_vec());
        assert!(sets_overlap(&p1, &p2).is_some());
        assert!(sets_overlap(&p2, &p1).is_some());

        let mixed = vec![
            range("10.1.0.0/22", None, None, None).unwrap(),
            range("2001:db8:5::/64", None, None, None).unwrap(),
        ];
        assert!(matches!(
            check_set(&mixed),
            Err(RangeError::MixedFamilies(..))
        ));
        assert_eq!(check_set(&[]), Err(RangeError::EmptySet));
    }

    #[test]
    fn address_arithmetic_stops_at_the_edges() {
        assert_eq!(checked_next(ip("255.255.255.255")), None);
        assert_eq!(checked_prev(ip("0.0.0.0")), None);
        assert_eq!(
            checked_next(ip("255.255.255.254")),
            Some(ip("255.255.255.255"))
        );
        assert_eq!(
            checked_next(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            None
        );
        assert_eq!(checked_prev(ip("::")), None);
        assert_eq!(checked_next(ip("::ffff:ffff")), Some(ip("::1:0:0")));
        assert_eq!(to_u128(ip("255.255.255.255")), u128::from(u32::MAX));
        assert_eq!(
            range("0.0.0.0/0", None, None, None).unwrap().size(),
            u128::from(u32::MAX) - 1
        );
        assert_eq!(range("::/0", None, None, None).unwrap().size(), u128::MAX);
    }

    /// Every address of a range at the top of the space, then exhaustion: no wrap to 0.
    #[test]
    fn allocation_at_the_top_of_the_address_space() {
        for (subnet, want) in [
            ("255.255.255.248/29", 5),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124", 14),
        ] {
            let sets = vec![vec![range(subnet, None, None, None).unwrap()]];
            let r = sets[0][0].clone();
            let s = MemStore::default();
            let mut got = Vec::new();
            loop {
                match alloc(&s, &sets, &format!("c{}", got.len())) {
                    Ok(a) => got.push(a[0].ip),
                    Err(e) => {
                        assert!(matches!(e, IpamError::Exhausted(_)), "{e}");
                        break;
                    }
                }
                assert!(got.len() <= want, "{subnet}: {got:?}");
            }
            assert_eq!(got.len(), want, "{subnet}: {got:?}");
            assert!(got.iter().all(|a| r.contains(*a) && *a != r.gateway()));
            let mut dedup = got.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), got.len());
            assert_eq!(
                got.last(),
                Some(&r.end()),
                "{subnet}: in order up to the end"
            );
            // Round robin from the last address (the very top for IPv6) wraps to rangeStart.
            s.lock().release(got[0]).unwrap();
            assert_eq!(alloc(&s, &sets, "again").unwrap()[0].ip, got[0]);
        }
    }

    /// Gateways of every range are skipped, not only the one of the range being walked.
    #[test]
    fn gateway_of_another_range_is_never_allocated() {
        let sets = vec![vec![
            range(
                "10.0.0.0/24",
                Some("10.0.0.1"),
                Some("10.0.0.3"),
                Some("10.0.0.200"),
            )
            .unwrap(),
            range(
                "10.0.0.0/24",
                Some("10.0.0.200"),
                Some("10.0.0.201"),
                Some("10.0.0.2"),
            )
            .unwrap(),
        ]];
        let s = MemStore::default();
        let got: Vec<String> = (0..2)
            .map(|i| {
                alloc(&s, &sets, &format!("c{i}")).unwrap()[0]
                    .ip
                    .to_string()
            })
            .collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.3"]);
        assert_eq!(
            alloc(&s, &sets, "c2").unwrap()[0].ip.to_string(),
            "10.0.0.201"
        );
        assert!(alloc(&s, &sets, "c3").is_err());
        // An empty set built in code is exhausted, not a panic.
        assert!(matches!(
            allocate(&mut s.lock(), &[vec![]], "c4", "eth0"),
            Err(IpamError::Exhausted(_))
        ));
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
