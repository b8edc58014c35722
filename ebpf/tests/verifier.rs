//! The kernel's verifier accepts every program this crate embeds.
//!
//! Needs root. Without it the test prints `SKIP: <reason>` and passes, unless
//! `SLUICE_REQUIRE_ALL=1`, where a skip is a failure.

fn skip(reason: &str) {
    if std::env::var("SLUICE_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("SLUICE_REQUIRE_ALL=1 but cannot run: {reason}");
    }
    println!("SKIP: {reason}");
}

#[test]
fn verifier_accepts_every_program() {
    if !nix::unistd::geteuid().is_root() {
        return skip("not root: loading BPF programs needs CAP_BPF/CAP_NET_ADMIN");
    }
    if let Err(e) = sluice_ebpf::verify_programs() {
        panic!("{e}");
    }
}

#[test]
fn probe_names_a_missing_bpffs() {
    if !nix::unistd::geteuid().is_root() {
        return skip("not root");
    }
    // /proc is certainly not a bpffs.
    let reason = sluice_ebpf::probe(
        std::path::Path::new("/proc/sluice"),
        std::path::Path::new("/sys/fs/cgroup/unified"),
    )
    .expect_err("/proc is not a bpffs");
    assert!(reason.contains("bpffs"), "{reason}");
}
