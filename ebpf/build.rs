//! Compiles the BPF programs in `bpf/` with clang into `OUT_DIR`; `src/programs.rs` embeds them.
//!
//! The programs are C because Rust BPF (aya-ebpf) needs bpf-linker, which needs a newer LLVM
//! than Debian 12 ships. Objects keep their BTF (`-g`, nothing stripped): aya needs it for the
//! BTF-defined maps, and the ABI test reads the struct layouts from it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The BPF objects this crate builds, by C source name (without `.c`).
const PROGRAMS: &[&str] = &["sock", "nodeport"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("SLUICE_BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=SLUICE_BPF_CLANG");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=include");

    let multiarch = multiarch_include();
    for name in PROGRAMS {
        let src = manifest.join("bpf").join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        compile(&clang, &manifest, &multiarch, &src, &obj);
    }
}

/// `/usr/include/<multiarch>`: `linux/types.h` pulls `asm/types.h` from there.
fn multiarch_include() -> Option<PathBuf> {
    let out = Command::new("gcc").arg("-print-multiarch").output().ok()?;
    let triple = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new("/usr/include").join(triple.trim());
    dir.is_dir().then_some(dir)
}

fn compile(clang: &str, manifest: &Path, multiarch: &Option<PathBuf>, src: &Path, obj: &Path) {
    let mut cmd = Command::new(clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg("-I")
        .arg(manifest.join("include"));
    if let Some(dir) = multiarch {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c").arg(src).arg("-o").arg(obj);
    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "sluice-ebpf: `{clang}` not found: the BPF programs are C compiled by clang. \
             Install it (Debian: `apt-get install clang-19 libbpf-dev`) or point \
             SLUICE_BPF_CLANG at a clang that has the BPF target"
        ),
        Err(e) => panic!("sluice-ebpf: running `{clang}`: {e}"),
    };
    if !status.success() {
        panic!(
            "sluice-ebpf: `{clang}` failed to compile {} ({status}); the BPF headers come from \
             libbpf-dev (Debian: `apt-get install clang-19 libbpf-dev`)",
            src.display()
        );
    }
}
