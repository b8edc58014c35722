//! Single-layer OCI image-layout tarballs built with `tar` and `sha256sum` (no registry, no
//! docker), for `ctr images import`: the pause image from `pause.c` and a busybox image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::json;

fn run(c: &mut Command) -> anyhow::Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Moves `file` into `blobs/sha256/<digest>`; returns (`sha256:<hex>`, size).
fn add_blob(layout: &Path, file: &Path) -> anyhow::Result<(String, u64)> {
    let out = run(Command::new("sha256sum").arg(file))?;
    let hex = out
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_string();
    let size = std::fs::metadata(file)?.len();
    std::fs::rename(file, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

/// Writes `out` (an OCI image-layout tar) holding `root` as its single layer, named `name`.
pub fn build(
    root: &Path,
    work: &Path,
    name: &str,
    entrypoint: &[&str],
    out: &Path,
) -> anyhow::Result<()> {
    let layout = work.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = add_blob(&layout, &layer)?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let f = work.join("config.json");
    std::fs::write(&f, serde_json::to_vec(&config)?)?;
    let (config_digest, config_size) = add_blob(&layout, &f)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let f = work.join("manifest.json");
    std::fs::write(&f, serde_json::to_vec(&manifest)?)?;
    let (manifest_digest, manifest_size) = add_blob(&layout, &f)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(out)
        .arg("."))?;
    Ok(())
}

/// The pause image: `pause.c` compiled static with gcc, at `/pause`.
pub fn pause(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let root = work.join("pause-root");
    std::fs::create_dir_all(&root)?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("cri/pause.c");
    run(Command::new("gcc")
        .args(["-Os", "-static", "-o"])
        .arg(root.join("pause"))
        .arg(src))?;
    run(Command::new("strip").arg(root.join("pause")))?;
    let w = work.join("pause-build");
    std::fs::create_dir_all(&w)?;
    let out = work.join("pause.tar");
    build(&root, &w, name, &["/pause"], &out)?;
    Ok(out)
}

/// A busybox image: `/bin/busybox` (static) plus a symlink per applet.
pub fn busybox(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let root = work.join("bb-root");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))?;
    for applet in run(Command::new("/bin/busybox").arg("--list"))?.lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    let w = work.join("bb-build");
    std::fs::create_dir_all(&w)?;
    let out = work.join("busybox.tar");
    build(&root, &w, name, &["/bin/sh"], &out)?;
    Ok(out)
}
