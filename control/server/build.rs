//! Compiles the vendored Kubernetes `.proto` files (`proto/`, from kubernetes/api and
//! kubernetes/apimachinery) into a descriptor set, which `api::protobuf` loads to decode
//! protobuf request bodies of the served kinds. Needs `protoc` (Debian: protobuf-compiler,
//! which the CRI crate's build needs too), or `PROTOC` naming one.

use std::path::PathBuf;
use std::process::Command;

const FILES: &[&str] = &[
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/discovery/v1/generated.proto",
    "k8s.io/api/coordination/v1/generated.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("k8s.desc");
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    let status = Command::new(&protoc)
        .args(["-I", "proto", "--include_imports"])
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(FILES)
        .status()
        .unwrap_or_else(|e| panic!("running {protoc:?} (apt-get install protobuf-compiler): {e}"));
    assert!(status.success(), "protoc failed on the vendored .proto files");
}
