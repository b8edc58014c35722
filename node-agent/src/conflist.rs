//! The node's CNI network configuration (`10-sluice.conflist`): a pure renderer from the
//! node's podCIDR and an atomic, change-only writer.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::json;

/// File name of the conflist inside the CNI configuration directory.
pub const FILE_NAME: &str = "10-sluice.conflist";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The podCIDR has no room for a gateway and pods.
    #[error("podCIDR {0} is too small for a gateway and pods (need a prefix of /30 or shorter)")]
    TooSmall(Ipv4Net),
    /// Writing the file failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The gateway (first host address) of a podCIDR: the bridge's address on the node.
pub fn gateway(pod_cidr: Ipv4Net) -> Result<std::net::Ipv4Addr, Error> {
    let cidr = pod_cidr.trunc();
    if cidr.prefix_len() > 30 {
        return Err(Error::TooSmall(pod_cidr));
    }
    Ok(std::net::Ipv4Addr::from(u32::from(cidr.network()) + 1))
}

/// Where host-local keeps its leases unless `--cni-ipam-data-dir` says otherwise.
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/networks";

/// Renders the conflist for a podCIDR (pretty JSON with a trailing newline); leases go to
/// `ipam_data_dir` (default [`DEFAULT_IPAM_DATA_DIR`]).
pub fn render(
    pod_cidr: Ipv4Net,
    bridge: &str,
    ipam_data_dir: Option<&Path>,
) -> Result<String, Error> {
    let data_dir = ipam_data_dir
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_IPAM_DATA_DIR.to_string());
    let cidr = pod_cidr.trunc();
    let gw = gateway(cidr)?;
    // 1.0.0, not 1.1.0: containerd 1.6 cannot read a 1.1.0 result ("unsupported CNI result
    // version") and Debian's portmap refuses 1.1.0 configs. sluice-cni serves both.
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "sluice",
        "plugins": [
            {
                "type": "sluice-cni",
                "bridge": bridge,
                "isGateway": true,
                // A pod reaching itself through its own Service (DNAT back to the same bridge
                // port) needs the port to reflect frames: hairpin mode.
                "hairpinMode": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr.to_string(), "gateway": gw.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON value always serializes");
    s.push('\n');
    Ok(s)
}

/// Writes `content` to `dir/10-sluice.conflist` atomically (temporary file, fsync, rename)
/// unless the file already holds exactly that. Returns whether the file was (re)written.
pub fn write_if_changed(dir: &Path, content: &str) -> Result<bool, Error> {
    let path = dir.join(FILE_NAME);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    let err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // A dot-file, so a CNI runtime scanning the directory never loads a half-written file.
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_conflist() {
        let s = render("10.244.3.0/24".parse().unwrap(), "sluice0", None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let want = json!({"cniVersion":"1.0.0","name":"sluice","plugins":[{"type":"sluice-cni","bridge":"sluice0","isGateway":true,"hairpinMode":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.3.0/24","gateway":"10.244.3.1"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/var/lib/cni/networks"}},{"type":"portmap","capabilities":{"portMappings":true}}]});
        assert_eq!(v, want);
        assert!(s.ends_with("}\n"));
    }

    #[test]
    fn normalises_host_bits_and_rejects_tiny_cidrs() {
        let s = render(
            "10.244.3.7/24".parse().unwrap(),
            "br",
            Some(Path::new("/x/ipam")),
        )
        .unwrap();
        assert!(s.contains("\"10.244.3.0/24\""), "{s}");
        assert!(s.contains("\"dataDir\": \"/x/ipam\""), "{s}");
        assert_eq!(
            gateway("10.1.0.0/30".parse().unwrap()).unwrap().to_string(),
            "10.1.0.1"
        );
        assert!(matches!(
            render("10.1.0.0/31".parse().unwrap(), "br", None),
            Err(Error::TooSmall(_))
        ));
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("net.d");
        let a = render("10.244.1.0/24".parse().unwrap(), "sluice0", None).unwrap();
        let b = render("10.244.2.0/24".parse().unwrap(), "sluice0", None).unwrap();
        assert!(write_if_changed(&dir, &a).unwrap());
        assert!(!write_if_changed(&dir, &a).unwrap());
        assert!(write_if_changed(&dir, &b).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join(FILE_NAME)).unwrap(), b);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }
}
