//! The kernel settings kube-proxy's ipvs mode makes in the node's network namespace, and why:
//!
//! * `net.ipv4.vs.conntrack=1`: IPVS keeps the connections it forwards in conntrack, so the
//!   companion table can masquerade them (and hairpin) in `postrouting`;
//! * `net.ipv4.vs.expire_nodest_conn=1`: a connection whose destination was deleted is
//!   dropped on its next packet instead of hanging (UDP flows move to a live endpoint);
//! * `net.ipv4.vs.expire_quiescent_template=1`: persistence (affinity) entries pointing at a
//!   drained (weight 0) destination expire, so affinity stops sending new connections there;
//! * `net.ipv4.vs.conn_reuse_mode=0` only on kernels before 5.9: the connection-reuse mode
//!   made a new connection from a reused source port wait a second there (kube-proxy issue
//!   81775); 5.9 fixed it, so the default is left alone from then on (as kube-proxy does);
//! * `net.ipv4.ip_forward=1`: forwarded traffic (from pods, to pods) is routed.
//!
//! The `net.ipv4.vs` ones exist once `ip_vs` is loaded in the kernel. Each is read first and
//! written only when different.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where sysctls live.
pub const PROC_SYS: &str = "/proc/sys";

/// The first kernel whose connection-reuse mode needs no workaround.
const CONN_REUSE_FIXED: (u32, u32) = (5, 9);

/// `major.minor` of a kernel release string (`6.1.0-31-cloud-amd64` → `(6, 1)`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The settings for a kernel of `release`: `(path under /proc/sys, value)`.
pub fn wanted(release: &str) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
        ("net/ipv4/ip_forward", "1"),
    ];
    if kernel_version(release).is_some_and(|v| v < CONN_REUSE_FIXED) {
        v.push(("net/ipv4/vs/conn_reuse_mode", "0"));
    }
    v
}

/// Applies [`wanted`] under `root` (normally [`PROC_SYS`]) for the kernel `root` reports
/// (`kernel/osrelease`); returns what was changed.
pub fn apply(root: &Path) -> Result<Vec<String>> {
    let release = std::fs::read_to_string(root.join("kernel/osrelease")).unwrap_or_default();
    let mut changed = Vec::new();
    for (key, value) in wanted(&release) {
        let path: PathBuf = root.join(key);
        let now = std::fs::read_to_string(&path).map_err(|source| Error::Sysctl {
            path: path.clone(),
            source,
        })?;
        if now.trim() == value {
            continue;
        }
        std::fs::write(&path, value).map_err(|source| Error::Sysctl {
            path: path.clone(),
            source,
        })?;
        changed.push(format!("{}={value}", key.replace('/', ".")));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(kernel_version("6.1.0-31-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("6.18.3+deb13"), Some((6, 18)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(wanted("5.8.0").contains(&("net/ipv4/vs/conn_reuse_mode", "0")));
        assert!(!wanted("6.1.0")
            .iter()
            .any(|(k, _)| k.contains("conn_reuse")));
    }

    #[test]
    fn writes_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("kernel")).unwrap();
        std::fs::create_dir_all(root.join("net/ipv4/vs")).unwrap();
        std::fs::write(root.join("kernel/osrelease"), "5.4.0-1\n").unwrap();
        for (k, v) in [
            ("net/ipv4/vs/conntrack", "0\n"),
            ("net/ipv4/vs/expire_nodest_conn", "1\n"),
            ("net/ipv4/vs/expire_quiescent_template", "0\n"),
            ("net/ipv4/vs/conn_reuse_mode", "1\n"),
            ("net/ipv4/ip_forward", "1\n"),
        ] {
            std::fs::write(root.join(k), v).unwrap();
        }
        let changed = apply(root).unwrap();
        assert_eq!(
            changed,
            [
                "net.ipv4.vs.conntrack=1",
                "net.ipv4.vs.expire_quiescent_template=1",
                "net.ipv4.vs.conn_reuse_mode=0"
            ]
        );
        assert!(apply(root).unwrap().is_empty());
        // Without ip_vs loaded the vs directory is missing: a clear error.
        std::fs::remove_dir_all(root.join("net/ipv4/vs")).unwrap();
        let e = apply(root).unwrap_err().to_string();
        assert!(
            e.starts_with("setting ") && e.contains("net/ipv4/vs/conntrack"),
            "{e}"
        );
    }
}
