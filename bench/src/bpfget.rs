//! Point lookups in the ebpf proxy mode's pinned maps (`sluice_svc_v1`, `sluice_backend_v1`),
//! for the benchmarks' kernel probes: one `BPF_MAP_LOOKUP_ELEM` per key, a few µs, whatever
//! the maps hold (`sluice_ebpf::Maps::iter_svc` walks every entry: tens of ms at 60,000).
//!
//! The key and value layouts are `sluice_ebpf::abi`'s (checked there against the programs'
//! BTF). A frontend's slot 0 holds `count`; slots `1..=count` hold a backend id each.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, MapError};
use sluice_ebpf::abi::{self, Backend, SvcKey, SvcVal};

/// The pinned service and backend maps of one node (`<lab dir>/bpf/<node>`).
pub(crate) struct BpfMaps {
    svc: HashMap<MapData, SvcKey, SvcVal>,
    backend: HashMap<MapData, u32, Backend>,
}

fn open_map(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening pinned {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map type of {}", path.display()))
}

/// `Ok(None)` for a missing key.
fn found<V>(r: Result<V, MapError>) -> anyhow::Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl BpfMaps {
    /// Opens the maps pinned in `dir`.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Self> {
        let svc = HashMap::try_from(open_map(dir, abi::SVC_MAP)?)
            .with_context(|| format!("layout of {}", abi::SVC_MAP))?;
        let backend = HashMap::try_from(open_map(dir, abi::BACKEND_MAP)?)
            .with_context(|| format!("layout of {}", abi::BACKEND_MAP))?;
        Ok(Self { svc, backend })
    }

    /// Slot `slot` of frontend `addr:port/tcp` as seen by in-node sockets.
    pub(crate) fn svc(
        &self,
        addr: Ipv4Addr,
        port: u16,
        slot: u32,
    ) -> anyhow::Result<Option<SvcVal>> {
        let key = SvcKey::new(addr, port, abi::IPPROTO_TCP, abi::SCOPE_SOCK, slot);
        found(self.svc.get(&key, 0))
    }

    /// The backend count of frontend `addr:port/tcp` (socket scope), if it is in the map.
    pub(crate) fn count(&self, addr: Ipv4Addr, port: u16) -> anyhow::Result<Option<u32>> {
        Ok(self.svc(addr, port, 0)?.map(|v| v.count))
    }

    /// The backends (`ip:port`) in slots `1..=count` of frontend `addr:port/tcp` (socket
    /// scope), in slot order; a slot or backend missing mid-update is left out.
    pub(crate) fn endpoints(&self, addr: Ipv4Addr, port: u16) -> anyhow::Result<Vec<String>> {
        let Some(count) = self.count(addr, port)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(count as usize);
        for slot in 1..=count {
            let Some(v) = self.svc(addr, port, slot)? else {
                continue;
            };
            if let Some(b) = found(self.backend.get(&v.backend_id, 0))? {
                out.push(format!("{}:{}", b.addr(), b.port()));
            }
        }
        Ok(out)
    }
}

/// A node's pin directory in a lab: `<lab dir>/bpf/<node>`.
pub(crate) fn pin_dir(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join("bpf").join(node)
}
