//! The test images as OCI image-layout tarballs, built from this repository at compile time
//! (`build.rs`) and embedded: no registry, no docker. Tests write them out with [`write_all`]
//! and load them with `ctr -n k8s.io images import <tar>`; each tarball's index names its image
//! (`io.containerd.image.name` and `org.opencontainers.image.ref.name`), so the import tags it.
//!
//! - [`PAUSE`]: the pod sandbox image, `pause.c` compiled static (entrypoint `/pause`).
//! - [`ECHO`]: `sluice-echo` (crate `images/echo`) linked static: HTTP identity, health and
//!   readiness switches on 8080, TCP and UDP echo on 9000 (entrypoint `/sluice-echo`).
//! - [`BUSYBOX`]: Debian's static busybox with a `/bin/<applet>` symlink per applet
//!   (command `sh`, no entrypoint, as docker's busybox).
//!
//! Building needs the Debian packages `gcc libc6-dev` and `busybox-static`.

use std::path::{Path, PathBuf};

pub mod oci;

/// The pause (sandbox) image.
pub const PAUSE: &str = "registry.k8s.io/pause:3.10";
/// The `sluice-echo` server image.
pub const ECHO: &str = "docker.io/library/sluice-echo:0.1";
/// The busybox image.
pub const BUSYBOX: &str = "docker.io/library/sluice-busybox:0.1";

/// One embedded image.
#[derive(Clone, Copy)]
pub struct Image {
    /// Full image reference, as containerd lists it after import.
    pub name: &'static str,
    /// File name [`write_all`] gives its tarball (`pause.tar`, …).
    pub file_name: &'static str,
    /// The OCI image-layout tarball.
    pub tar: &'static [u8],
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("file_name", &self.file_name)
            .field("tar_len", &self.tar.len())
            .finish()
    }
}

/// All three, pause first.
pub fn all() -> [Image; 3] {
    [
        Image {
            name: PAUSE,
            file_name: "pause.tar",
            tar: include_bytes!(concat!(env!("OUT_DIR"), "/pause.tar")),
        },
        Image {
            name: ECHO,
            file_name: "sluice-echo.tar",
            tar: include_bytes!(concat!(env!("OUT_DIR"), "/sluice-echo.tar")),
        },
        Image {
            name: BUSYBOX,
            file_name: "sluice-busybox.tar",
            tar: include_bytes!(concat!(env!("OUT_DIR"), "/sluice-busybox.tar")),
        },
    ]
}

/// Writes every tarball into `dir` (created if missing); returns (image name, path) pairs.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    all()
        .iter()
        .map(|img| {
            let path = dir.join(img.file_name);
            std::fs::write(&path, img.tar)?;
            Ok((img.name.to_string(), path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::{Entry, Member};
    use serde_json::Value;
    use std::collections::BTreeMap;

    fn blob<'a>(files: &BTreeMap<String, &'a [u8]>, desc: &Value) -> &'a [u8] {
        let digest = desc["digest"].as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let data = files
            .get(&format!("blobs/sha256/{hex}"))
            .unwrap_or_else(|| panic!("blob {digest} missing"));
        assert_eq!(oci::digest(data), digest, "blob content matches its name");
        assert_eq!(desc["size"].as_u64(), Some(data.len() as u64));
        data
    }

    /// Walks index → manifest → config → layer; returns (config, layer members).
    fn check_layout(img: &Image) -> (Value, Vec<Member<'static>>) {
        let members = oci::read_tar(img.tar).expect("layout tar");
        let files: BTreeMap<String, &[u8]> = members
            .iter()
            .filter(|m| m.kind == b'0')
            .map(|m| (m.path.clone(), m.data))
            .collect();
        let layout: Value = serde_json::from_slice(files["oci-layout"]).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value = serde_json::from_slice(files["index.json"]).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let m = &manifests[0];
        assert_eq!(m["mediaType"], oci::MANIFEST_MEDIA_TYPE);
        assert_eq!(m["platform"]["architecture"], "amd64");
        assert_eq!(m["platform"]["os"], "linux");
        assert_eq!(m["annotations"]["io.containerd.image.name"], img.name);
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            img.name
        );

        let manifest: Value = serde_json::from_slice(blob(&files, m)).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], oci::MANIFEST_MEDIA_TYPE);
        assert_eq!(manifest["config"]["mediaType"], oci::CONFIG_MEDIA_TYPE);
        let config: Value = serde_json::from_slice(blob(&files, &manifest["config"])).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], oci::LAYER_MEDIA_TYPE);
        let layer = blob(&files, &layers[0]);
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["rootfs"]["diff_ids"][0], oci::digest(layer));
        assert_eq!(config["config"]["Env"][0], oci::PATH_ENV);
        assert_eq!(files.len(), 5, "oci-layout, index.json and three blobs");
        (config, oci::read_tar(layer).expect("layer tar"))
    }

    /// The file at `path` in `layer`, which must be a static executable.
    fn static_exe(layer: &[Member<'_>], path: &str) {
        let m = layer
            .iter()
            .find(|m| m.path == path)
            .unwrap_or_else(|| panic!("{path} not in the layer"));
        assert_eq!((m.kind, m.mode), (b'0', 0o755), "{path}");
        assert!(oci::elf_is_static(m.data), "{path} is statically linked");
    }

    fn layer_is_deterministic(layer: &[Member<'_>]) {
        let paths: Vec<&str> = layer.iter().map(|m| m.path.trim_end_matches('/')).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted, "layer entries sorted");
    }

    #[test]
    fn pause_image() {
        let img = all()[0];
        assert_eq!((img.name, img.file_name), (PAUSE, "pause.tar"));
        let (config, layer) = check_layout(&img);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/pause"])
        );
        static_exe(&layer, "pause");
        layer_is_deterministic(&layer);
    }

    #[test]
    fn echo_image() {
        let img = all()[1];
        assert_eq!((img.name, img.file_name), (ECHO, "sluice-echo.tar"));
        let (config, layer) = check_layout(&img);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/sluice-echo"])
        );
        static_exe(&layer, "sluice-echo");
        layer_is_deterministic(&layer);
    }

    #[test]
    fn busybox_image() {
        let img = all()[2];
        assert_eq!((img.name, img.file_name), (BUSYBOX, "sluice-busybox.tar"));
        let (config, layer) = check_layout(&img);
        assert!(config["config"]["Entrypoint"].is_null());
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        static_exe(&layer, "bin/busybox");
        for applet in ["bin/sh", "bin/sleep", "bin/ping", "bin/wget", "bin/nc"] {
            let m = layer.iter().find(|m| m.path == applet);
            assert!(
                m.is_some_and(|m| m.kind == b'2' && m.link == "busybox"),
                "{applet} → busybox"
            );
        }
        assert!(layer.iter().any(|m| m.path == "tmp/" && m.mode == 0o1777));
        layer_is_deterministic(&layer);
    }

    #[test]
    fn write_all_writes_every_tarball() {
        let dir = std::env::temp_dir().join(format!("sluice-images-test-{}", std::process::id()));
        let written = write_all(&dir.join("sub")).unwrap();
        let names: Vec<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [PAUSE, ECHO, BUSYBOX]);
        for ((_, path), img) in written.iter().zip(all()) {
            assert_eq!(std::fs::read(path).unwrap(), img.tar);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_vectors() {
        let hex = |d: &[u8]| oci::digest(d)[7..].to_string();
        assert_eq!(
            hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(&vec![b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        // Every padding case around the 55/56/64-byte boundaries.
        let lengths: Vec<String> = (50..=130).map(|n| hex(&vec![0x5a; n])).collect();
        let mut unique = lengths.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), lengths.len());
    }

    #[test]
    fn tar_round_trip_and_determinism() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let entries = vec![
            Entry::symlink("b/link", "target"),
            Entry::file("b/file", 0o644, b"hello".to_vec()),
            Entry::dir("b", 0o755),
            Entry::file(&long, 0o600, vec![7; 513]),
        ];
        let a = oci::tar(&entries).unwrap();
        let mut rev = entries.clone();
        rev.reverse();
        assert_eq!(a, oci::tar(&rev).unwrap(), "order of input does not matter");
        assert_eq!(a.len() % 512, 0);
        let m = oci::read_tar(&a).unwrap();
        let paths: Vec<&str> = m.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["b/", "b/file", "b/link", long.as_str()]);
        assert_eq!((m[1].data, m[1].mode), (&b"hello"[..], 0o644));
        assert_eq!((m[2].kind, m[2].link.as_str()), (b'2', "target"));
        assert_eq!(m[3].data, &[7; 513][..]);
        assert!(oci::tar(&[Entry::dir(&"x".repeat(300), 0o755)]).is_err());
    }
}
