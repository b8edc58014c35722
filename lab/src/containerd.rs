//! One private containerd 1.6 per lab node, and everything needed to get rid of it again.
//!
//! Each runs as `unshare --mount --propagation private nsenter --net=/run/netns/<node>
//! containerd --config DIR/nodes/<n>/containerd/config.toml`:
//! - in the node's network namespace, so sandboxes are wired by `sluice-cni` on the node;
//! - not through `ip netns exec`, which remounts /sys and so hides the cgroup tree runc needs;
//! - in a private mount namespace of its own, so every mount containerd makes (overlay root
//!   filesystems, sandboxes' /dev/shm, the pods' netns pins, which live under its state dir
//!   with `netns_mounts_under_state_dir`) stays out of the host's and vanishes with it.
//!
//! Getting rid of it (`down`): SIGKILL for every process in the lab's cgroups (containers have
//! mount namespaces of their own but sit under the pods' cgroup parent `/<lab>/<node>/…`),
//! then for containerd and every process in its mount namespace (its shims); then the
//! cgroup directories in every hierarchy, the shims' sockets containerd 1.6 leaves in the
//! machine's `/run/containerd/s`, and libcni's result caches of the lab's sandboxes. No
//! graceful stop: containerd's root and state are deleted right after. The mount namespace is
//! *pinned*: `up` bind-mounts `/proc/<pid>/ns/mnt` onto `DIR/mntns/<node>`, so the namespace,
//! and with it its inode number, lives until `down` unmounts the pin. Without the pin, once
//! its last process died the kernel could hand the same number to a new namespace (every `ip
//! netns exec` makes one) and a later `down` would
//! kill unrelated processes that merely share the number.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{alive, spawn_detached, wait_for};

/// containerd and runc as Debian ships them.
pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const RUNC: &str = "/usr/sbin/runc";
/// Reference plugins containerd runs besides ours: `loopback` for every sandbox, `portmap`
/// for the conflist's hostPort chain.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A node's containerd, as `lab.json` records it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ContainerdRec {
    /// `DIR/nodes/<n>/containerd`: config, root, state, runc root, socket.
    pub dir: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    pub pid: i32,
    /// The bind mount pinning its mount namespace (`DIR/mntns/<node>`).
    pub mntns_pin: PathBuf,
    /// That namespace's inode number (`mnt:[N]`), for messages and a check against the pin.
    pub mntns_inode: u64,
}

/// Where the pins live: one directory per lab, a private mount if the kernel asks for one.
pub fn pin_dir(dir: &Path) -> PathBuf {
    dir.join("mntns")
}

/// The CNI bin dir containerd (and the agent) use: our plugin and the two reference ones.
pub fn cni_bin_dir(dir: &Path, bins: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.join("cni-bin");
    std::fs::create_dir_all(&d)?;
    for (name, target) in [
        ("sluice-cni", bins.join("sluice-cni")),
        ("loopback", Path::new(REFERENCE_PLUGINS).join("loopback")),
        ("portmap", Path::new(REFERENCE_PLUGINS).join("portmap")),
    ] {
        if !target.exists() {
            bail!(
                "{} is missing{}",
                target.display(),
                if name == "sluice-cni" {
                    " (cargo build --workspace --bins)"
                } else {
                    " (Debian: containernetworking-plugins)"
                }
            );
        }
        let link = d.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(d)
}

/// Whether this machine can run the lab's containerds; `Err` says what is missing.
pub fn check_prerequisites() -> anyhow::Result<()> {
    for p in [CONTAINERD, RUNC, "/usr/bin/ctr"] {
        if !Path::new(p).exists() {
            bail!("{p} is missing (Debian: containerd, runc); or run `up --no-containerd`");
        }
    }
    for tool in ["unshare", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing (util-linux)");
        }
    }
    Ok(())
}

/// containerd's configuration for one node.
pub fn config_toml(ctd: &Path, cni_bin: &Path, cni_conf: &Path, sandbox_image: &str) -> String {
    let d = ctd.display();
    format!(
        r#"# Written by sluice-lab: containerd for one lab node; everything under {d}.
version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # No CAP_SYS_RESOURCE here: never lower a container's oom_score_adj below containerd's.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{d}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{}"
    conf_dir = "{}"
    max_conf_num = 1
    conf_template = ""
"#,
        cni_bin.display(),
        cni_conf.display()
    )
}

/// Starts a node's containerd (detached), pins its mount namespace and returns at once; the
/// socket is waited for by [`wait_ready`], so several nodes start in parallel.
pub fn start(
    dir: &Path,
    node: &str,
    netns: &str,
    cni_bin: &Path,
    cni_conf: &Path,
    sandbox_image: &str,
) -> anyhow::Result<ContainerdRec> {
    let ctd = dir.join("nodes").join(node).join("containerd");
    std::fs::create_dir_all(&ctd)?;
    let config = ctd.join("config.toml");
    std::fs::write(&config, config_toml(&ctd, cni_bin, cni_conf, sandbox_image))?;
    let socket = ctd.join("containerd.sock");
    let _ = std::fs::remove_file(&socket);
    let pid = spawn_detached(
        &[
            "unshare".into(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "nsenter".into(),
            format!("--net=/run/netns/{netns}"),
            CONTAINERD.into(),
            "--config".into(),
            config.to_string_lossy().into(),
        ],
        &dir.join(format!("logs/containerd-{node}.log")),
        None,
    )?;
    let mut rec = ContainerdRec {
        dir: ctd,
        socket,
        pid,
        mntns_pin: pin_dir(dir).join(node),
        mntns_inode: 0,
    };
    // `unshare` (same pid, then exec'd into nsenter and containerd) has its own mount
    // namespace once it differs from ours.
    let host = ns_inode(Path::new("/proc/self/ns/mnt"))?;
    let proc_ns = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
    let log = dir.join(format!("logs/containerd-{node}.log"));
    wait_for(
        &format!("{node}'s containerd to enter its mount namespace"),
        Duration::from_secs(10),
        || !alive(pid) || ns_inode(&proc_ns).is_ok_and(|i| i != host),
    )?;
    if !alive(pid) {
        bail!(
            "{node}'s containerd exited at once:\n{}",
            log_tail(&log, 20)
        );
    }
    pin(&proc_ns, &rec.mntns_pin)?;
    rec.mntns_inode = ns_inode(&rec.mntns_pin)?;
    Ok(rec)
}

/// Waits for a started containerd's socket (and that it answers).
pub fn wait_ready(rec: &ContainerdRec, node: &str, log: &Path) -> anyhow::Result<()> {
    let r = wait_for(
        &format!("{node}'s containerd socket"),
        Duration::from_secs(30),
        || !alive(rec.pid) || rec.socket.exists(),
    );
    if r.is_err() || !alive(rec.pid) {
        bail!(
            "{node}'s containerd did not come up (pid {}):\n{}",
            rec.pid,
            log_tail(log, 30)
        );
    }
    Ok(())
}

/// Imports image tarballs into a node's containerd (namespace `k8s.io`, where the CRI looks)
/// with the agent's `image import`, which runs containerd's own client.
pub fn import_images(bins: &Path, rec: &ContainerdRec, files: &[PathBuf]) -> anyhow::Result<()> {
    let o = Command::new(bins.join("sluice-agent"))
        .args(["image", "import", "--container-runtime-endpoint"])
        .arg(format!("unix://{}", rec.socket.display()))
        .args(files)
        .output()
        .context("running sluice-agent image import")?;
    if !o.status.success() {
        bail!(
            "sluice-agent image import into {}: {}{}",
            rec.socket.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

fn log_tail(log: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The inode number of a namespace file (`/proc/<pid>/ns/mnt` or a bind mount of one).
fn ns_inode(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .ino())
}

/// Bind-mounts a namespace file onto `target`. The kernel refuses (EINVAL) a namespace bind
/// mount that would propagate to peer mounts, so on a shared mount the pin directory first
/// becomes a private bind mount of itself (as `unshare --mount=<file>` asks of its users).
fn pin(ns_file: &Path, target: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    let d = target.parent().context("pin has a directory")?;
    std::fs::create_dir_all(d)?;
    std::fs::write(target, b"")?;
    let bind = || {
        mount(
            Some(ns_file),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    match bind() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some(d), d, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("bind-mounting {} on itself", d.display()))?;
            mount(
                None::<&str>,
                d,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .with_context(|| format!("making {} private", d.display()))?;
            bind().with_context(|| format!("pinning {} at {}", ns_file.display(), target.display()))
        }
        Err(e) => {
            Err(e).with_context(|| format!("pinning {} at {}", ns_file.display(), target.display()))
        }
    }
}

/// Whether `p` is a bind mount of a namespace file (nsfs), i.e. a live pin.
fn is_pin(p: &Path) -> bool {
    // nsfs files are reported with st_dev of the nsfs superblock and never as regular files
    // of the directory's filesystem.
    let (Ok(m), Ok(parent)) = (
        std::fs::metadata(p),
        std::fs::metadata(p.parent().unwrap_or(Path::new("/"))),
    ) else {
        return false;
    };
    m.dev() != parent.dev()
}

/// Pids whose mount namespace is the one with inode `ino` on nsfs device `dev`.
fn pids_in_mntns(dev: u64, ino: u64) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .is_ok_and(|m| m.ino() == ino && m.dev() == dev)
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .collect()
}

/// Pids in a cgroup at or below `/<lab>` in any hierarchy (as `/proc/<pid>/cgroup` names it).
fn pids_in_lab_cgroups(lab: &str) -> Vec<i32> {
    let top = format!("/{lab}");
    let below = format!("/{lab}/");
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|s| {
                s.lines().any(|l| {
                    let path = l.splitn(3, ':').nth(2).unwrap_or("");
                    path == top || path.starts_with(&below)
                })
            })
        })
        .collect()
}

fn sigkill(pids: &[i32]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// SIGKILLs whatever `find` returns until it returns nothing (or `timeout` passes); `true`
/// when nothing is left.
fn kill_until_gone(timeout: Duration, mut find: impl FnMut() -> Vec<i32>) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = find().into_iter().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("processes still alive after {timeout:?}: {left:?}");
            return false;
        }
        sigkill(&left);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills every process in the lab's cgroups (containers: they have mount namespaces of their
/// own but sit under the pods' cgroup parent `/<lab>/<node>/…`), then every node's containerd
/// and every process in its mount namespace (its shims), all with SIGKILL: a graceful stop
/// would buy nothing, since containerd's root and state are deleted next. Then releases the
/// pins.
///
/// Works after a crashed `up` or a killed containerd: the pins alone name the namespaces
/// (every pin in `DIR/mntns`, recorded in `lab.json` or not). A containerd without a pin (a
/// crash between spawning it and pinning) is recognised by its command line, which names its
/// config under `DIR/nodes/`, and its namespace is held open while we work.
pub fn kill_all(dir: &Path, lab: &str) {
    let host = std::fs::metadata("/proc/self/ns/mnt")
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let mut namespaces: Vec<(u64, u64)> = Vec::new();
    let pins: Vec<PathBuf> = std::fs::read_dir(pin_dir(dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_pin(p))
        .collect();
    for p in &pins {
        if let Ok(m) = std::fs::metadata(p) {
            namespaces.push((m.dev(), m.ino()));
        }
    }
    let config = |pid: i32| {
        let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let c = String::from_utf8_lossy(&c);
        c.contains(CONTAINERD) && c.contains(&format!("{}/nodes/", dir.display()))
    };
    let mut _held = Vec::new();
    for pid in all_pids().into_iter().filter(|&p| config(p)) {
        if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/ns/mnt")) {
            if let Ok(m) = f.metadata() {
                let id = (m.dev(), m.ino());
                if Some(id) != host && !namespaces.contains(&id) {
                    namespaces.push(id);
                    _held.push(f);
                }
            }
        }
    }
    // Containers first, while their shims live to reap them: a pod's pause is the init of
    // its PID namespace and exits only once every member is reaped, and a member whose shim
    // died with it waits for the machine's init (seconds here) instead.
    kill_until_gone(Duration::from_secs(10), || pids_in_lab_cgroups(lab));
    kill_until_gone(Duration::from_secs(10), || {
        let mut v: Vec<i32> = namespaces
            .iter()
            .flat_map(|&(dev, ino)| pids_in_mntns(dev, ino))
            .collect();
        v.extend(pids_in_lab_cgroups(lab));
        v
    });
    for p in pins {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&p);
    }
    remove_pin_dir(dir);
}

/// Releases the pin directory (a private bind mount of itself, if [`pin`] made one).
fn remove_pin_dir(dir: &Path) {
    let d = pin_dir(dir);
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(e.path());
        }
    }
    if mounts_under(&d).iter().any(|m| m == &d) {
        let _ = nix::mount::umount2(&d, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&d);
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The CRI sandbox ids a node's containerd knows on disk (one directory each under its root;
/// a sandbox that was never removed keeps its directory).
pub fn sandbox_ids(rec: &ContainerdRec) -> Vec<String> {
    std::fs::read_dir(rec.dir.join("root/io.containerd.grpc.v1.cri/sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|id| id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

/// containerd 1.6's libcni caches each ADD's result machine-wide in
/// `/var/lib/cni/results/<network>-<containerID>-<ifname>` (no setting moves it) and removes
/// it on DEL; sandboxes killed with the lab never get their DEL. Removes the files of these
/// sandbox ids, each checked to name the id as its `containerId`.
pub fn remove_cni_result_caches(ids: &[String]) {
    let dir = Path::new("/var/lib/cni/results");
    if ids.is_empty() {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(id) = ids.iter().find(|id| name.contains(&format!("-{id}-"))) else {
            continue;
        };
        let belongs = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["containerId"].as_str() == Some(id.as_str()));
        if belongs {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// containerd 1.6 puts every shim's socket in the machine's `/run/containerd/s/` whatever its
/// configuration says, and a shim killed with SIGKILL leaves it there. Each task bundle under
/// the node's state directory names its shim's socket in an `address` file: removes those
/// sockets (and nothing else).
pub fn remove_shim_sockets(rec: &ContainerdRec) {
    let tasks = rec.dir.join("state/io.containerd.runtime.v2.task");
    for ns in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        for bundle in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let Ok(addr) = std::fs::read_to_string(bundle.path().join("address")) else {
                continue;
            };
            let Some(path) = addr.trim().strip_prefix("unix://") else {
                continue;
            };
            let path = Path::new(path);
            let is_socket = std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
            if path.starts_with("/run/containerd/s") && is_socket {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Removes a node's containerd directory: unmounts anything left below it (nothing should
/// be: containerd's mounts lived in its namespace), then the files.
pub fn remove_dir(rec: &ContainerdRec) {
    for m in mounts_under(&rec.dir) {
        eprintln!("unmounting leftover {}", m.display());
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if rec.dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&rec.dir) {
            eprintln!("removing {}: {e}", rec.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_lab_paths() {
        let c = config_toml(
            Path::new("/l/nodes/n1/containerd"),
            Path::new("/l/cni-bin"),
            Path::new("/l/nodes/n1/net.d"),
            "registry.k8s.io/pause:3.10",
        );
        for want in [
            "root = \"/l/nodes/n1/containerd/root\"",
            "state = \"/l/nodes/n1/containerd/state\"",
            "address = \"/l/nodes/n1/containerd/containerd.sock\"",
            "sandbox_image = \"registry.k8s.io/pause:3.10\"",
            "restrict_oom_score_adj = true",
            "netns_mounts_under_state_dir = true",
            "BinaryName = \"/usr/sbin/runc\"",
            "Root = \"/l/nodes/n1/containerd/runc\"",
            "SystemdCgroup = false",
            "bin_dir = \"/l/cni-bin\"",
            "conf_dir = \"/l/nodes/n1/net.d\"",
            "max_conf_num = 1",
        ] {
            assert!(c.contains(want), "{want} in\n{c}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), "/end\\");
    }
}
