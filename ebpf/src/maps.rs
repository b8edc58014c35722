//! Typed access to the pinned maps, for the planner and for `debug dump`.
//!
//! [`Maps::open`] needs only the pin directory: it works without loading any program (after an
//! agent restart, before attaching; from a debugging CLI).
//!
//! # Update order
//!
//! The programs read slot 0 of a frontend first and then one slot in `1..=count`, then the
//! backend. A reader racing a writer must never find a slot or backend missing, so a writer:
//! - adds: backends first, then the new slots, then slot 0 with the new count;
//! - removes: slot 0 with the smaller count first, then the now unused slots, then backends no
//!   slot refers to any more.
//!
//! A program that still hits a missing slot or backend leaves the connection untouched.
//!
//! Source ranges (`sluice_srcrange_v1`) of a front end flagged [`abi::SVC_SRC_RANGES`] are
//! written before the slot 0 that sets the flag, and removed only after it no longer needs
//! them (rewritten without them, or deleted).

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::maps::{
    lpm_trie::{Key as LpmKey, LpmTrie},
    Array, HashMap, Map, MapData, MapError,
};

use crate::{
    abi::{self, Backend, Config, SrcRangeData, SrcRangeKey, SvcKey, SvcVal},
    error::{Error, Result},
};

/// The pinned maps the planner writes.
pub struct Maps {
    pin_dir: PathBuf,
    svc: HashMap<MapData, SvcKey, SvcVal>,
    backend: HashMap<MapData, u32, Backend>,
    config: Array<MapData, Config>,
    srcrange: LpmTrie<MapData, SrcRangeData, u32>,
}

fn open_map(pin_dir: &Path, name: &'static str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path)
        .map_err(|e| Error::map(name, format!("open pinned {}", path.display()), e))?;
    Map::from_map_data(data).map_err(|e| Error::map(name, "type", e))
}

/// A missing key is not an error for deletes (idempotent removal).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Collect a map's entries, skipping keys deleted while iterating.
fn collect<K: Ord, V>(
    iter: impl Iterator<Item = Result<(K, V), MapError>>,
    map: &'static str,
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for item in iter {
        match item {
            Ok(kv) => out.push(kv),
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(Error::map(map, "iterate", e)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn flag_names(flags: u8) -> String {
    let names: Vec<&str> = [
        (abi::SVC_AFFINITY, "affinity"),
        (abi::SVC_NODEPORT, "nodeport"),
        (abi::SVC_EXT_LOCAL, "ext-local"),
        (abi::SVC_SRC_RANGES, "src-ranges"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    let unknown =
        flags & !(abi::SVC_AFFINITY | abi::SVC_NODEPORT | abi::SVC_EXT_LOCAL | abi::SVC_SRC_RANGES);
    match (names.is_empty(), unknown) {
        (true, 0) => "none".into(),
        (_, 0) => names.join(","),
        _ => format!("{},0x{unknown:x}", names.join(",")),
    }
}

impl Maps {
    /// Open the maps pinned under `pin_dir` (no programs are loaded). Fails if they are not
    /// pinned there or their key/value sizes are not this build's.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let svc = HashMap::try_from(open_map(pin_dir, abi::SVC_MAP)?)
            .map_err(|e| Error::map(abi::SVC_MAP, "layout", e))?;
        let backend = HashMap::try_from(open_map(pin_dir, abi::BACKEND_MAP)?)
            .map_err(|e| Error::map(abi::BACKEND_MAP, "layout", e))?;
        let config = Array::try_from(open_map(pin_dir, abi::CONFIG_MAP)?)
            .map_err(|e| Error::map(abi::CONFIG_MAP, "layout", e))?;
        let srcrange = LpmTrie::try_from(open_map(pin_dir, abi::SRCRANGE_MAP)?)
            .map_err(|e| Error::map(abi::SRCRANGE_MAP, "layout", e))?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            svc,
            backend,
            config,
            srcrange,
        })
    }

    /// The pin directory these maps were opened from.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Insert or replace backend `id`.
    pub fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backend
            .insert(id, backend, 0)
            .map_err(|e| Error::map(abi::BACKEND_MAP, format!("put {id}"), e))
    }

    /// Remove backend `id` (no error if absent).
    pub fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backend.remove(&id))
            .map_err(|e| Error::map(abi::BACKEND_MAP, format!("delete {id}"), e))
    }

    /// Insert or replace one service slot.
    pub fn put_svc(&mut self, key: &SvcKey, val: &SvcVal) -> Result<()> {
        self.svc
            .insert(key, val, 0)
            .map_err(|e| Error::map(abi::SVC_MAP, format!("put {}", svc_key_text(key)), e))
    }

    /// Remove one service slot (no error if absent).
    pub fn delete_svc(&mut self, key: &SvcKey) -> Result<()> {
        ignore_missing(self.svc.remove(key))
            .map_err(|e| Error::map(abi::SVC_MAP, format!("delete {}", svc_key_text(key)), e))
    }

    /// Every service slot, sorted by key (frontend address, port, protocol, scope, slot).
    pub fn iter_svc(&self) -> Result<Vec<(SvcKey, SvcVal)>> {
        collect(self.svc.iter(), abi::SVC_MAP)
    }

    /// Every backend, sorted by id.
    pub fn iter_backends(&self) -> Result<Vec<(u32, Backend)>> {
        collect(self.backend.iter(), abi::BACKEND_MAP)
    }

    /// Allow source range `addr/prefix` for front end `svc_id` (host bits of `addr` are
    /// cleared).
    pub fn put_srcrange(&mut self, svc_id: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let key = SrcRangeKey::new(svc_id, addr, prefix);
        self.srcrange
            .insert(&LpmKey::new(key.prefixlen, key.data()), 1, 0)
            .map_err(|e| Error::map(abi::SRCRANGE_MAP, format!("put {}", srcrange_text(&key)), e))
    }

    /// Remove source range `addr/prefix` of front end `svc_id` (exact entry; no error if
    /// absent).
    pub fn delete_srcrange(&mut self, svc_id: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let key = SrcRangeKey::new(svc_id, addr, prefix);
        ignore_missing(
            self.srcrange
                .remove(&LpmKey::new(key.prefixlen, key.data())),
        )
        .map_err(|e| {
            Error::map(
                abi::SRCRANGE_MAP,
                format!("delete {}", srcrange_text(&key)),
                e,
            )
        })
    }

    /// Every source range, sorted by service id, address and prefix length.
    pub fn iter_srcranges(&self) -> Result<Vec<SrcRangeKey>> {
        let mut out = Vec::new();
        for item in self.srcrange.iter() {
            match item {
                Ok((k, _)) => out.push(SrcRangeKey::from_parts(k.prefix_len(), k.data())),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(Error::map(abi::SRCRANGE_MAP, "iterate", e)),
            }
        }
        out.sort_by_key(|k| (k.svc_id, k.addr(), k.prefixlen));
        Ok(out)
    }

    /// The tc NodePort configuration (all zero when tc was never attached).
    pub fn config(&self) -> Result<Config> {
        self.config
            .get(&0, 0)
            .map_err(|e| Error::map(abi::CONFIG_MAP, "get", e))
    }

    /// Write the tc NodePort configuration.
    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(|e| Error::map(abi::CONFIG_MAP, "set", e))
    }

    /// All service and backend entries (and the tc configuration, when set) as stable, sorted
    /// text, one entry per line:
    ///
    /// ```text
    /// svc 10.96.0.10:80/tcp sock slot=0 count=2 id=7 flags=affinity timeout=10800
    /// svc 10.96.0.10:80/tcp sock slot=1 backend=12
    /// backend 12 10.244.1.5:8080/tcp local
    /// srcrange id=9 192.0.2.0/24
    /// config node=192.168.1.5 ifindex=2 snat=40000-49999
    /// ```
    pub fn dump_text(&self) -> Result<String> {
        let mut out = String::new();
        for (key, val) in self.iter_svc()? {
            let _ = write!(out, "svc {}", svc_key_text(&key));
            if key.slot == 0 {
                let _ = write!(
                    out,
                    " count={} id={} flags={}",
                    val.count,
                    val.svc_id,
                    flag_names(val.flags)
                );
                if val.flags & abi::SVC_AFFINITY != 0 {
                    let _ = write!(out, " timeout={}", val.affinity_timeout);
                }
            } else {
                let _ = write!(out, " backend={}", val.backend_id);
            }
            out.push('\n');
        }
        for (id, b) in self.iter_backends()? {
            let _ = writeln!(
                out,
                "backend {id} {}:{}/{} {}",
                b.addr(),
                b.port(),
                abi::proto_name(b.proto),
                if b.flags & abi::BACKEND_LOCAL != 0 {
                    "local"
                } else {
                    "remote"
                }
            );
        }
        for key in self.iter_srcranges()? {
            let _ = writeln!(out, "srcrange {}", srcrange_text(&key));
        }
        let config = self.config()?;
        if config.node_ip4_be != [0; 4] {
            let _ = writeln!(
                out,
                "config node={} ifindex={} snat={}-{}",
                Ipv4Addr::from(config.node_ip4_be),
                config.ext_ifindex,
                config.snat_port_min,
                config.snat_port_max
            );
        }
        Ok(out)
    }
}

/// `10.96.0.10:80/tcp sock slot=0`.
fn svc_key_text(key: &SvcKey) -> String {
    let scope = match key.scope {
        abi::SCOPE_SOCK => "sock".to_string(),
        abi::SCOPE_EXT => "ext".to_string(),
        other => format!("scope{other}"),
    };
    format!(
        "{}:{}/{} {scope} slot={}",
        key.addr(),
        key.port(),
        abi::proto_name(key.proto),
        key.slot
    )
}

/// `id=9 192.0.2.0/24`.
fn srcrange_text(key: &SrcRangeKey) -> String {
    format!("id={} {}/{}", key.svc_id, key.addr(), key.prefix())
}
