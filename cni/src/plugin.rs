//! Command dispatch: ADD, DEL, CHECK, VERSION, STATUS, GC, with an undo guard for ADD.

use std::fs::File;
use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::config::{NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, Code};
use crate::ipam::{self, DiskStore, Store};
use crate::net::{self, with_netlink, NetError};
use crate::netns::{self, NetnsError};
use crate::types::{CniResult, Interface, IpConfig, Route};

/// The newest version we speak (used for VERSION and errors before a config is parsed).
pub const LATEST: &str = "1.1.0";

/// The plugin's invocation environment (`CNI_*`).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
    /// IPAM lock timeout (`SLUICE_CNI_LOCK_TIMEOUT_MS`, default 30 s).
    pub lock_timeout: Duration,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Env {
        let get = |k: &str| std::env::var(k).ok();
        Env {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
            lock_timeout: get("SLUICE_CNI_LOCK_TIMEOUT_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(30)),
        }
    }

    fn require(&self, names: &[&str]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                let v = match *n {
                    "CNI_CONTAINERID" => &self.container_id,
                    "CNI_NETNS" => &self.netns,
                    "CNI_IFNAME" => &self.ifname,
                    "CNI_PATH" => &self.path,
                    _ => &None,
                };
                v.as_deref().is_none_or(str::is_empty)
            })
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if let Some(id) = &self.container_id {
            if !valid_container_id(id) {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("invalid characters in containerID {id:?}"),
                ));
            }
        }
        if let Some(n) = &self.ifname {
            if !valid_ifname(n) {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("invalid interface name {n:?}"),
                ));
            }
        }
        Ok(())
    }

    fn id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }
    fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
    fn netns_path(&self) -> Option<&Path> {
        self.netns
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(Path::new)
    }
}

fn valid_container_id(id: &str) -> bool {
    let mut c = id.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// The "about" line printed on stderr without `CNI_COMMAND`.
pub fn about() -> String {
    format!(
        "Sluice CNI plugin (bridge + veth + host-local IPAM) version {}\nCNI protocol versions supported: {}",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED_VERSIONS.join(", ")
    )
}

/// Best-effort `cniVersion` of raw stdin, for error objects.
pub fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string())
}

/// Runs one command. `Ok(Some(text))` is printed on stdout; `Err` becomes error JSON.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(version(stdin))),
        "ADD" => {
            env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
            let conf = NetConf::parse(stdin)?;
            check_not_own_netns(env)?;
            cmd_add(env, &conf).map(Some)
        }
        "DEL" => {
            env.require(&["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"])?;
            // An invalid IPAM range does not stop DEL: releasing (id, ifname)'s leases and
            // deleting the veth need no range, and a DEL that always fails blocks the sandbox's
            // removal forever (host-local fails here; the spec asks DEL to clean up what it can).
            let (conf, bad_ranges) = NetConf::parse_for_del(stdin)?;
            if let Some(e) = bad_ranges {
                eprintln!(
                    "sluice-cni: DEL: invalid IPAM configuration ({e}); releasing the attachment's leases anyway"
                );
            }
            check_not_own_netns(env)?;
            cmd_del(env, &conf).map(|_| None)
        }
        "CHECK" => {
            env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
            let conf = NetConf::parse(stdin)?;
            if !conf.version_at_least(0, 4) {
                return Err(CniError::new(
                    Code::IncompatibleVersion,
                    "config version does not allow CHECK",
                ));
            }
            cmd_check(env, &conf).map(|_| None)
        }
        "STATUS" => {
            let conf = NetConf::parse(stdin)?;
            cmd_status(&conf).map(|_| None)
        }
        "GC" => {
            env.require(&["CNI_PATH"])?;
            let conf = NetConf::parse(stdin)?;
            cmd_gc(&conf).map(|_| None)
        }
        "" => Err(CniError::new(
            Code::InvalidEnv,
            "required env variables [CNI_COMMAND] missing",
        )),
        other => Err(CniError::new(
            Code::InvalidEnv,
            format!("unknown CNI_COMMAND: {other}"),
        )),
    }
}

fn version(stdin: &[u8]) -> String {
    serde_json::json!({
        "cniVersion": version_hint(stdin),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn check_not_own_netns(env: &Env) -> Result<(), CniError> {
    if let Some(p) = env.netns_path() {
        if netns::is_current(p) {
            return Err(CniError::new(
                Code::InvalidNetns,
                "netns must not be the plugin's own network namespace",
            ));
        }
    }
    Ok(())
}

fn net_err(e: NetError) -> CniError {
    CniError::new(Code::Internal, e.to_string())
}

fn netns_err(e: NetnsError) -> CniError {
    match e {
        NetnsError::Missing(p) => CniError::new(
            Code::UnknownContainer,
            format!("failed to open netns {:?}: no such namespace", p),
        ),
        e => CniError::new(Code::Internal, e.to_string()),
    }
}

/// One undo action: what it undoes, and the closure.
type UndoAction = (String, Box<dyn FnOnce() -> Result<(), String>>);

/// Undo actions, run in reverse order on drop unless disarmed.
#[derive(Default)]
pub struct Undo {
    actions: Vec<UndoAction>,
}

impl Undo {
    /// Registers an undo action.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> Result<(), String> + 'static,
    ) {
        self.actions.push((what.into(), Box::new(f)));
    }
    /// Success: keep everything.
    pub fn disarm(&mut self) {
        self.actions.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, f)) = self.actions.pop() {
            if let Err(e) = f() {
                eprintln!("sluice-cni: rollback of {what} failed: {e}");
            }
        }
    }
}

fn random_veth_name() -> String {
    let mut b = [0u8; 4];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        b = t.to_le_bytes();
    }
    format!("veth{:08x}", u32::from_le_bytes(b))
}

fn open_store(conf: &NetConf, timeout: Duration) -> Result<DiskStore, CniError> {
    let ipam = conf.ipam()?;
    Ok(DiskStore::open(
        Path::new(ipam.data_dir()),
        &conf.name,
        timeout,
    )?)
}

fn cmd_add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let ipam_conf = conf.ipam()?;
    let sets = ipam_conf.range_sets()?;
    let netns_path = env.netns_path().expect("required").to_path_buf();
    let (id, ifname) = (env.id().to_string(), env.ifname().to_string());
    // Fail early (code 3) if the container namespace is gone.
    netns::open(&netns_path).map_err(netns_err)?;
    let mut undo = Undo::default();

    // 1. Bridge in the host namespace (this thread's namespace).
    let bridge = with_netlink(|h| {
        let (name, mtu, promisc) = (conf.bridge.clone(), conf.mtu, conf.promisc_mode);
        async move { net::ensure_bridge(&h, &name, mtu, promisc).await }
    })
    .map_err(net_err)?;

    // 2. Veth pair, created from inside the container namespace.
    let host_ns = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::new(Code::Io, format!("opening host netns: {e}")))?;
    let host_name = random_veth_name();
    let host_fd = host_ns.as_raw_fd();
    let cont = netns::run_in(&netns_path, || {
        with_netlink(|h| {
            let (ifname, host_name, mtu) = (ifname.clone(), host_name.clone(), conf.mtu);
            async move { net::create_veth(&h, &ifname, &host_name, host_fd, mtu).await }
        })
    })
    .map_err(netns_err)?
    .map_err(net_err)?;
    drop(host_ns);
    {
        let (p, n) = (netns_path.clone(), ifname.clone());
        undo.push(format!("veth {n}"), move || {
            match netns::run_in(&p, || {
                with_netlink(|h| async move { net::del_link(&h, &n).await })
            }) {
                Ok(Ok(_)) | Err(NetnsError::Missing(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    // 3. Host end onto the bridge.
    let host = with_netlink(|h| {
        let (n, hp) = (host_name.clone(), conf.hairpin_mode);
        async move { net::attach_host_veth(&h, &n, bridge.index, hp).await }
    })
    .map_err(net_err)?;

    // 4. Addresses.
    let allocs = {
        let mut store = open_store(conf, env.lock_timeout)?;
        ipam::allocate(&mut store, &sets, &id, &ifname)?
    };
    {
        let (c, i, n) = (conf.clone(), id.clone(), ifname.clone());
        let timeout = env.lock_timeout;
        undo.push("IPAM lease", move || {
            let mut s = open_store(&c, timeout).map_err(|e| e.msg)?;
            s.release_by_id(&i, &n)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }

    // 5. The result.
    let mut result = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: host.name.clone(),
                mac: host.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: ifname.clone(),
                mac: cont.mac.clone(),
                sandbox: netns_path.display().to_string(),
                mtu: None,
            },
        ],
        ips: allocs
            .iter()
            .map(|a| IpConfig {
                version: None,
                address: a.cidr(),
                gateway: Some(a.range.gateway()),
                interface: Some(2),
            })
            .collect(),
        routes: ipam_conf.routes.clone(),
        dns: conf.dns.clone().unwrap_or_default(),
    };
    if conf.is_default_gateway {
        for a in &allocs {
            let dst = if a.ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            if !result.routes.iter().any(|r| r.dst == dst) {
                result.routes.push(Route::new(dst, Some(a.range.gateway())));
            }
        }
    }

    // 6. Container side: addresses and routes.
    let mut plan: Vec<(IpNet, Option<IpAddr>)> = Vec::new();
    for r in &result.routes {
        let dst: IpNet = r.dst.parse().map_err(|e| {
            CniError::new(
                Code::InvalidConfig,
                format!("invalid route dst {:?}: {e}", r.dst),
            )
        })?;
        let gw = r.gw.or_else(|| {
            allocs
                .iter()
                .find(|a| a.ip.is_ipv4() == dst.addr().is_ipv4())
                .map(|a| a.range.gateway())
        });
        plan.push((dst, gw));
    }
    let addrs: Vec<IpNet> = allocs
        .iter()
        .map(|a| prefixed(a.ip, &a.range))
        .collect::<Result<_, _>>()?;
    let cont_index = cont.index;
    netns::run_in(&netns_path, || {
        with_netlink(|h| {
            let (addrs, plan) = (addrs.clone(), plan.clone());
            async move {
                for a in addrs {
                    net::add_addr(&h, cont_index, a).await?;
                }
                for (dst, gw) in plan {
                    net::add_route(&h, cont_index, dst, gw).await?;
                }
                Ok(())
            }
        })
    })
    .map_err(netns_err)?
    .map_err(net_err)?;

    // 7. Gateway address on the bridge.
    if conf.gateway_on_bridge() {
        let gws: Vec<IpNet> = allocs
            .iter()
            .map(|a| prefixed(a.range.gateway(), &a.range))
            .collect::<Result<_, _>>()?;
        with_netlink(|h| async move {
            for g in gws {
                net::add_addr(&h, bridge.index, g).await?;
            }
            Ok(())
        })
        .map_err(net_err)?;
        if allocs.iter().any(|a| a.ip.is_ipv4()) {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        }
        if allocs.iter().any(|a| a.ip.is_ipv6()) {
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1");
        }
    }

    // 8. Masquerading.
    if conf.ip_masq {
        for a in &allocs {
            let (n, i, ip) = (conf.name.clone(), id.clone(), a.ip);
            undo.push("ipMasq rule", move || {
                crate::masq::teardown(&n, &i, ip).map_err(|e| e.to_string())
            });
            crate::masq::setup(&conf.name, &id, a.ip, a.range.subnet())
                .map_err(|e| CniError::new(Code::Internal, e.to_string()))?;
        }
    }

    undo.disarm();
    let result = result.for_version(&conf.cni_version);
    serde_json::to_string(&result).map_err(|e| CniError::new(Code::Internal, e.to_string()))
}

/// `ip/prefix` with the range's prefix length (same family by [`ipam::Range`]'s invariants).
fn prefixed(ip: IpAddr, range: &ipam::Range) -> Result<IpNet, CniError> {
    IpNet::new(ip, range.subnet().prefix_len()).map_err(|e| {
        CniError::new(
            Code::Internal,
            format!("address {ip} with the prefix of {}: {e}", range.subnet()),
        )
    })
}

fn cmd_del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (id, ifname) = (env.id(), env.ifname());
    // Release the lease(s) first: this works without the netns and without prevResult.
    let mut released = Vec::new();
    if conf.ipam.is_some() {
        let mut store = open_store(conf, env.lock_timeout)?;
        released = store.release_by_id(id, ifname)?;
    }
    if conf.ip_masq {
        let mut ips = released.clone();
        if let Ok(Some(prev)) = conf.prev_result() {
            ips.extend(
                prev.ips
                    .iter()
                    .filter_map(|i| i.address.parse::<IpNet>().ok())
                    .map(|n| n.addr()),
            );
        }
        ips.sort();
        ips.dedup();
        for ip in ips {
            crate::masq::teardown(&conf.name, id, ip)
                .map_err(|e| CniError::new(Code::Internal, e.to_string()))?;
        }
    }
    if let Some(p) = env.netns_path() {
        let name = ifname.to_string();
        match netns::run_in(p, || {
            with_netlink(|h| async move { net::del_link(&h, &name).await })
        }) {
            Ok(r) => {
                r.map_err(net_err)?;
            }
            Err(NetnsError::Missing(_)) => {}
            Err(e) => return Err(CniError::new(Code::Internal, e.to_string())),
        }
    }
    Ok(())
}

fn cmd_check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result()?
        .ok_or_else(|| CniError::new(Code::Internal, "Required prevResult missing"))?;
    let ifname = env.ifname().to_string();
    let netns_path: PathBuf = env.netns_path().expect("required").to_path_buf();
    let ci = prev.container_iface(&ifname).ok_or_else(|| {
        CniError::new(
            Code::Internal,
            format!("interface {ifname} with sandbox not found in prevResult"),
        )
    })?;
    let want_mac = prev.interfaces[ci].mac.clone();
    let mut want_addrs = Vec::new();
    for ip in prev.ips.iter().filter(|i| i.interface == Some(ci)) {
        let n: IpNet = ip.address.parse().map_err(|e| {
            CniError::new(
                Code::Decode,
                format!("prevResult address {:?}: {e}", ip.address),
            )
        })?;
        want_addrs.push((n, ip.gateway));
    }
    let mut want_routes = Vec::new();
    for r in &prev.routes {
        let dst: IpNet = r.dst.parse().map_err(|e| {
            CniError::new(Code::Decode, format!("prevResult route {:?}: {e}", r.dst))
        })?;
        let gw = r.gw.or_else(|| {
            want_addrs
                .iter()
                .find(|(a, _)| a.addr().is_ipv4() == dst.addr().is_ipv4())
                .and_then(|(_, g)| *g)
        });
        want_routes.push((dst, gw));
    }
    netns::run_in(&netns_path, || {
        with_netlink(|h| {
            let (ifname, want_mac) = (ifname.clone(), want_mac.clone());
            let (want_addrs, want_routes) = (want_addrs.clone(), want_routes.clone());
            async move {
                let link = net::link_by_name(&h, &ifname).await?.ok_or_else(|| {
                    NetError::Mismatch(format!("Failed to find interface {ifname}"))
                })?;
                if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&link.mac) {
                    return Err(NetError::Mismatch(format!(
                        "interface {ifname} MAC {} does not match prevResult {want_mac}",
                        link.mac
                    )));
                }
                let have = net::addrs(&h, link.index).await?;
                for (a, _) in &want_addrs {
                    if !have.contains(a) {
                        return Err(NetError::Mismatch(format!(
                            "Failed to match addr {a} on interface {ifname}"
                        )));
                    }
                }
                let routes = net::routes(&h).await?;
                for (dst, gw) in &want_routes {
                    if !routes
                        .iter()
                        .any(|r| r.dst == *dst && (gw.is_none() || r.gw == *gw))
                    {
                        return Err(NetError::Mismatch(format!(
                            "Failed to match route {dst} via {gw:?} on interface {ifname}"
                        )));
                    }
                }
                Ok(())
            }
        })
    })
    .map_err(netns_err)?
    .map_err(net_err)?;
    // Host side: the bridge exists and is a bridge.
    let bridge = conf.bridge.clone();
    let br =
        with_netlink(|h| async move { net::link_by_name(&h, &bridge).await }).map_err(net_err)?;
    if br.is_none() {
        return Err(CniError::new(
            Code::Internal,
            format!("bridge {} not found", conf.bridge),
        ));
    }
    // IPAM: the leases are still held by this attachment.
    if conf.ipam.is_some() {
        let store = open_store(conf, env.lock_timeout)?;
        let leases = store.leases()?;
        for (a, _) in &want_addrs {
            if !leases
                .iter()
                .any(|l| l.ip == a.addr() && l.container_id == env.id() && l.ifname == ifname)
            {
                return Err(CniError::new(
                    Code::Internal,
                    format!(
                        "IPAM: no lease for {} held by {}/{ifname}",
                        a.addr(),
                        env.id()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn cmd_status(conf: &NetConf) -> Result<(), CniError> {
    let Some(ipam) = &conf.ipam else {
        return Ok(());
    };
    let dir = Path::new(ipam.data_dir()).join(&conf.name);
    let usable = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map(|_| ())
    });
    usable.map_err(|e| {
        CniError::new(
            Code::NotAvailable,
            format!("IPAM data dir {} is not usable: {e}", dir.display()),
        )
    })
}

fn cmd_gc(conf: &NetConf) -> Result<(), CniError> {
    if conf.ipam.is_none() {
        return Ok(());
    }
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let mut store = open_store(conf, Duration::from_secs(30))?;
    let mut errors = Vec::new();
    for l in store.leases()? {
        if valid
            .iter()
            .any(|a| a.container_id == l.container_id && a.ifname == l.ifname)
        {
            continue;
        }
        if let Err(e) = store.release(l.ip) {
            errors.push(e.to_string());
        }
        if conf.ip_masq {
            if let Err(e) = crate::masq::teardown(&conf.name, &l.container_id, l.ip) {
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(Code::Internal, "GC failed for some attachments")
                .details(errors.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_validation_codes() {
        let env = Env {
            command: "ADD".into(),
            ..Default::default()
        };
        let e = run(&env, b"{}").unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        let env = Env {
            command: "DEL".into(),
            container_id: Some("-bad".into()),
            ifname: Some("eth0".into()),
            path: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(run(&env, b"{}").unwrap_err().code, 4);
        let env = Env {
            command: "FROB".into(),
            ..Default::default()
        };
        assert_eq!(run(&env, b"{}").unwrap_err().code, 4);
    }

    #[test]
    fn version_output() {
        let env = Env {
            command: "VERSION".into(),
            ..Default::default()
        };
        let out = run(&env, br#"{"cniVersion":"0.4.0"}"#).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
    }

    #[test]
    fn check_needs_040_and_prev_result() {
        let env = Env {
            command: "CHECK".into(),
            container_id: Some("c1".into()),
            netns: Some("/nonexistent".into()),
            ifname: Some("eth0".into()),
            path: Some("/x".into()),
            ..Default::default()
        };
        let e = run(&env, br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, 1);
        let e = run(&env, br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (999, "Required prevResult missing")
        );
    }

    #[test]
    fn undo_runs_in_reverse_unless_disarmed() {
        use std::sync::{Arc, Mutex};
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut u = Undo::default();
            for i in 0..3 {
                let l = log.clone();
                u.push(format!("{i}"), move || {
                    l.lock().unwrap().push(i);
                    Ok(())
                });
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
        let mut u = Undo::default();
        let l = log.clone();
        u.push("x", move || {
            l.lock().unwrap().push(9);
            Ok(())
        });
        u.disarm();
        drop(u);
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-cni-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn env_for(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: Some("c1".into()),
            netns: Some("/nonexistent/sluice-cni-test-netns".into()),
            ifname: Some("eth0".into()),
            path: Some("/nonexistent".into()),
            lock_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    /// The review's bug: rangeStart after rangeEnd wrapped and handed out 10.80.1.0 on
    /// 10.80.0.0/24. Now every command that uses the ranges refuses the config with code 7
    /// before touching the store; DEL still releases what the attachment holds.
    #[test]
    fn inverted_range_is_refused_on_every_entry_point() {
        let data = temp_dir("inverted");
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "n", "type": "sluice-cni",
            "ipam": {"type": "host-local", "dataDir": data,
                     "ranges": [[{"subnet": "10.80.0.0/24",
                                  "rangeStart": "10.80.0.200", "rangeEnd": "10.80.0.100"}]]}
        })
        .to_string();
        for cmd in ["ADD", "CHECK", "STATUS", "GC"] {
            let e = run(&env_for(cmd), conf.as_bytes()).unwrap_err();
            assert_eq!(
                (e.code, e.msg.as_str()),
                (
                    7,
                    "ipam.ranges[0][0]: rangeStart 10.80.0.200 is after rangeEnd 10.80.0.100"
                ),
                "{cmd}"
            );
            // Nothing allocated, no file written: not even the network's directory.
            assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "{cmd}");
        }
        // A lease the buggy version handed out (outside the subnet) is released by DEL.
        {
            let mut st = DiskStore::open(&data, "n", Duration::from_secs(1)).unwrap();
            let lease = ipam::Lease {
                ip: "10.80.1.0".parse().unwrap(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
            };
            assert!(st.reserve(&lease, 0).unwrap());
        }
        assert_eq!(run(&env_for("DEL"), conf.as_bytes()).unwrap(), None);
        assert!(!data.join("n/10.80.1.0").exists());
        // DEL again, nothing held: still fine.
        assert_eq!(run(&env_for("DEL"), conf.as_bytes()).unwrap(), None);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn status_reports_unusable_data_dir() {
        let env = Env {
            command: "STATUS".into(),
            ..Default::default()
        };
        let e = run(
            &env,
            br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","dataDir":"/proc/sluice-cannot-exist"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 50);
    }
}
