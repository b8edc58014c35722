//! Builds the three test images into `OUT_DIR` as OCI image-layout tarballs:
//! - `pause.tar`: `pause.c` compiled with `gcc -Os -static`, stripped, at `/pause`;
//! - `sluice-echo.tar`: the `sluice-echo` binary linked statically (a nested
//!   `cargo build --release --target x86_64-unknown-linux-gnu` with `+crt-static`, into
//!   `OUT_DIR/echo-target`), at `/sluice-echo`;
//! - `sluice-busybox.tar`: Debian's static `/bin/busybox` plus a `/bin/<applet>` symlink per
//!   applet.
//!
//! Needs the Debian packages `gcc libc6-dev` (gcc, binutils' strip, glibc's `libc.a`) and
//! `busybox-static`; a missing one fails the build with a message naming it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[allow(dead_code)]
#[path = "src/oci.rs"]
mod oci;

use oci::Entry;

/// The target the static echo binary is built for (there is no musl target here).
const ECHO_TARGET: &str = "x86_64-unknown-linux-gnu";

fn fail(msg: &str) -> ! {
    eprintln!("\nsluice-images build failed: {msg}\n");
    std::process::exit(1);
}

/// Runs `cmd`, returning stdout; fails the build (with stderr) otherwise.
fn run(cmd: &mut Command, what: &str) -> Vec<u8> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| fail(&format!("{what}: running {cmd:?}: {e}")));
    if !o.status.success() {
        fail(&format!(
            "{what}: {cmd:?} exited with {}:\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    o.stdout
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| fail(&format!("reading {}: {e}", path.display())))
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data)
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", path.display())));
}

/// `/pause`: `pause.c` with `gcc -Os -static`, stripped.
fn pause(src: &Path, out: &Path) -> Vec<u8> {
    let gcc_missing = "gcc not found: install the Debian packages `gcc libc6-dev`";
    match Command::new("gcc").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(gcc_missing),
    }
    // `-print-file-name` echoes the bare name back when the file is not installed.
    let libc_a = run(
        Command::new("gcc").arg("-print-file-name=libc.a"),
        "locating libc.a",
    );
    if !Path::new(String::from_utf8_lossy(&libc_a).trim()).is_absolute() {
        fail(
            "glibc's static libc.a not found: install the Debian package `libc6-dev` (with `gcc`)",
        );
    }
    let bin = out.join("pause");
    run(
        Command::new("gcc")
            .args(["-Os", "-static", "-o"])
            .arg(&bin)
            .arg(src),
        "compiling pause.c (Debian packages `gcc libc6-dev`)",
    );
    run(
        Command::new("strip").arg(&bin),
        "stripping pause (binutils, with `gcc`)",
    );
    let data = read(&bin);
    if !oci::elf_is_static(&data) {
        fail("pause is not statically linked (is libc6-dev's libc.a installed?)");
    }
    data
}

/// `sluice-echo` linked statically by a nested cargo, stripped.
fn echo(workspace: &Path, out: &Path) -> Vec<u8> {
    let target_dir = out.join("echo-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args([
            "--release",
            "--offline",
            "-p",
            "sluice-echo",
            "--target",
            ECHO_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // What the outer cargo (or the user, for it) set must not steer this build: wrappers
    // (clippy-driver under `cargo clippy`), flags, target and directories, and the
    // per-build-script variables. CARGO_HOME, network and registry settings stay.
    let keep = |k: &str| {
        k == "CARGO_HOME"
            || k.starts_with("CARGO_NET_")
            || k.starts_with("CARGO_HTTP_")
            || k.starts_with("CARGO_REGISTRIES_")
            || k.starts_with("CARGO_REGISTRY_")
    };
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let drop = (k.starts_with("CARGO_") && !keep(k))
            || k.starts_with("__CARGO")
            || matches!(
                k,
                "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_LINKER"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "NUM_JOBS"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "PROFILE"
            );
        if drop {
            cmd.env_remove(k);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_TERM_COLOR", "never");
    // Share the outer build's job slots instead of starting another full set.
    if let Some(flags) = std::env::var_os("CARGO_MAKEFLAGS") {
        cmd.env("MAKEFLAGS", flags);
    }
    run(
        &mut cmd,
        "building sluice-echo statically (needs glibc's libc.a: Debian package `libc6-dev`)",
    );
    let bin = target_dir.join(ECHO_TARGET).join("release/sluice-echo");
    let data = read(&bin);
    if !oci::elf_is_static(&data) {
        fail(&format!(
            "{} is not statically linked (is libc6-dev's libc.a installed?)",
            bin.display()
        ));
    }
    data
}

/// Debian's static busybox and one symlink per applet.
fn busybox() -> Vec<Entry> {
    let bb = Path::new("/bin/busybox");
    if !bb.exists() {
        fail("/bin/busybox not found: install the Debian package `busybox-static`");
    }
    let data = read(bb);
    if !oci::elf_is_static(&data) {
        fail("/bin/busybox is dynamically linked: install the Debian package `busybox-static` (not `busybox`)");
    }
    let list = run(
        Command::new(bb).arg("--list"),
        "listing busybox applets (Debian package `busybox-static`)",
    );
    let mut entries = vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, data),
        Entry::dir("dev", 0o755),
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
        Entry::file(
            "etc/group",
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        ),
        Entry::dir("proc", 0o755),
        Entry::dir("root", 0o700),
        Entry::dir("sys", 0o755),
        Entry::dir("tmp", 0o1777),
    ];
    let list = String::from_utf8_lossy(&list);
    let mut applets: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .collect();
    applets.sort_unstable();
    applets.dedup();
    if !applets.contains(&"sh") {
        fail("/bin/busybox has no `sh` applet (Debian package `busybox-static`)");
    }
    for a in applets {
        entries.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    entries
}

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let workspace = manifest
        .parent()
        .expect("images/ sits in the workspace root");
    let pause_c = manifest.join("pause.c");
    for p in [
        Path::new("build.rs"),
        Path::new("src/oci.rs"),
        Path::new("pause.c"),
        Path::new("echo/Cargo.toml"),
        Path::new("echo/src"),
        Path::new("/bin/busybox"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    #[allow(clippy::type_complexity)]
    let images: [(&str, &str, &[&str], &[&str], Vec<Entry>); 3] = [
        (
            "pause.tar",
            "registry.k8s.io/pause:3.10",
            &["/pause"],
            &[],
            vec![Entry::file("pause", 0o755, pause(&pause_c, &out))],
        ),
        (
            "sluice-echo.tar",
            "docker.io/library/sluice-echo:0.1",
            &["/sluice-echo"],
            &[],
            vec![
                Entry::dir("etc", 0o755),
                Entry::file("sluice-echo", 0o755, echo(workspace, &out)),
                Entry::dir("tmp", 0o1777),
            ],
        ),
        (
            "sluice-busybox.tar",
            "docker.io/library/sluice-busybox:0.1",
            // Like docker's busybox: no entrypoint, `sh` as the command, so `kubectl run
            // … -- sh -c '…'` runs the shell as written.
            &[],
            &["sh"],
            busybox(),
        ),
    ];
    for (file, name, entrypoint, cmd, layer) in images {
        let tar = oci::layout(name, entrypoint, cmd, &layer)
            .unwrap_or_else(|e| fail(&format!("writing the {name} layout: {e}")));
        write(&out.join(file), &tar);
    }
}
