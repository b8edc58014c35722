//! Helpers shared by the privileged tests.

#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Print `SKIP: <reason>`, or panic when `SLUICE_REQUIRE_ALL=1` (a skip is then a failure).
pub fn skip(reason: &str) {
    if std::env::var("SLUICE_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("SLUICE_REQUIRE_ALL=1 but cannot run: {reason}");
    }
    println!("SKIP: {reason}");
}

/// Why the privileged tests cannot run here, if they cannot.
pub fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command (iproute2)".into());
    }
    None
}

/// Run a command, panicking with its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// A bpffs to pin under: /sys/fs/bpf when it is one; otherwise a private instance mounted for
/// this test (so the test does not change the machine's mounts), unmounted on drop.
pub struct Bpffs {
    pub root: PathBuf,
    private: bool,
}

impl Bpffs {
    pub fn new(tag: &str) -> Self {
        if is_bpffs(Path::new("/sys/fs/bpf")) {
            return Self {
                root: PathBuf::from("/sys/fs/bpf"),
                private: false,
            };
        }
        let dir = PathBuf::from(format!("/run/sluice-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        run("mount", &["-t", "bpf", "bpf", dir.to_str().unwrap()]);
        Self {
            root: dir,
            private: true,
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if self.private {
            let _ = Command::new("umount").arg(&self.root).status();
            let _ = fs::remove_dir(&self.root);
        }
    }
}

/// Move the calling thread into the network namespace `name` (`ip netns` name).
pub fn enter_netns(name: &str) {
    let f = fs::File::open(Path::new("/run/netns").join(name)).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// These tests have their own `main` (they re-execute themselves as the client that joins the
/// test's cgroup and netns). nextest lists a test binary with `--list --format terse` (and again
/// with `--ignored`), then runs each listed test by name: answer the listing with one test named
/// `name`, and tell the caller to return. Any other invocation runs the test.
pub fn answered_listing(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--list") {
        return false;
    }
    if !args.iter().any(|a| a == "--ignored") {
        println!("{name}: test");
    }
    true
}

/// Where cgroup v2 is mounted on this machine kind (cgroup v1 host with a unified hierarchy).
pub const CGROUP2: &str = "/sys/fs/cgroup/unified";

/// [`cannot_run`], and also when there is no cgroup2 to make a test cgroup in.
pub fn cannot_run_with_cgroup2() -> Option<String> {
    if let Some(reason) = cannot_run() {
        return Some(reason);
    }
    if !Path::new(CGROUP2).join("cgroup.procs").exists() {
        return Some(format!("no cgroup2 mounted at {CGROUP2}"));
    }
    None
}

/// Writes one front end (slots, then slot 0, the order the maps module documents) with a
/// 600 s affinity timeout (used only when `flags` asks for affinity).
#[allow(clippy::too_many_arguments)]
pub fn put_frontend(
    maps: &mut sluice_ebpf::Maps,
    frontend: std::net::Ipv4Addr,
    port: u16,
    proto: u8,
    scope: u8,
    svc_id: u32,
    flags: u8,
    backend_ids: &[u32],
) {
    use sluice_ebpf::abi::{SvcKey, SvcVal};
    for (i, id) in backend_ids.iter().enumerate() {
        let key = SvcKey::new(frontend, port, proto, scope, i as u32 + 1);
        let val = SvcVal {
            backend_id: *id,
            svc_id,
            ..Default::default()
        };
        maps.put_svc(&key, &val).unwrap();
    }
    let key = SvcKey::new(frontend, port, proto, scope, 0);
    let val = SvcVal {
        count: backend_ids.len() as u32,
        svc_id,
        affinity_timeout: 600,
        flags,
        ..Default::default()
    };
    maps.put_svc(&key, &val).unwrap();
}

/// Makes `command`'s child join cgroup v2 group `cgroup` and then network namespace `netns`
/// between fork and exec. Keep the returned files open until the child is spawned.
pub fn join_on_exec(command: &mut Command, cgroup: &Path, netns: &Path) -> (fs::File, fs::File) {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap();
    let ns = fs::File::open(netns).unwrap();
    let (procs_fd, netns_fd) = (procs.as_raw_fd(), ns.as_raw_fd());
    // SAFETY: only async-signal-safe syscalls between fork and exec. The cgroup first: its
    // cgroup.procs is reached through the fd opened above.
    unsafe {
        command.pre_exec(move || {
            // "0" moves the writing process.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (procs, ns)
}
