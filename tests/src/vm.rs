//! Runs a test body inside a VM that boots Debian's 6.1 cloud kernel, for what the host's
//! kernel lacks (IPVS, dummy links, loadable modules) and for a second kernel version.
//!
//! How it works (docs/vm-tests.md has the measurements and the pitfalls):
//!
//! * **Kernel and base initramfs, cached.** The versioned package behind
//!   `linux-image-cloud-amd64` is resolved with `apt-cache depends` (its ABI number changes
//!   with security updates, and superseded versions leave the mirror), fetched with
//!   `apt-get download` and unpacked with `dpkg-deb -x`. The base initramfs holds the closure
//!   of [`MODULES`] (with its own `modules.dep`), iproute2, ipvsadm, iptables (nft and
//!   legacy) with every xtables extension, nft, ipset, conntrack, kmod, dash, busybox and the
//!   shared libraries all of these load, the `debugexit` helper (tests/vm/debugexit.c) and
//!   `/init` (tests/vm/init). It is written by the newc writer below (no `cpio` tool) and
//!   cached in `$XDG_CACHE_HOME/sluice/vmtest/<package>_<version>-<hash>/`, where the hash
//!   covers this file, the init script, the helper and the host tools' package versions: a
//!   change to any of them builds a new cache. A lock file keeps concurrent tests from
//!   building it twice.
//! * **Payload.** Small files go into a second newc archive appended to the base (the kernel
//!   unpacks both). Large ones (the workspace's debug binaries are 75–131 MB) go onto a
//!   read-only ext4 virtio disk that the guest mounts, so they are paged in on demand instead
//!   of being copied into the guest's RAM; the archive then holds symlinks to them.
//! * **Boot.** `qemu-system-x86_64 -accel tcg -smp 1`, no network device, the kernel log on
//!   ttyS0 (`console.log`) and only the test's output on ttyS1 (`result.log`), between the
//!   init script's `VMTEST-*` markers. The guest stops through `isa-debug-exit`. Three
//!   timeouts: the guest's watchdog (`vmtest.timeout=`), the kernel panicking on an oops or a
//!   soft lockup (with `-no-reboot`, qemu then exits), and on the host `timeout -k 5` around
//!   qemu plus a kill after a deadline.
//! * **Self-exec.** [`VmBuilder::run_self`] packs the running test binary and boots a VM whose
//!   init runs `IN_VM=1 <binary> --exact <test> --nocapture --test-threads=1`. In the guest the
//!   same test function sees [`in_vm`] and runs its privileged body there.
//!
//! A test that uses it:
//!
//! ```no_run
//! use sluice_tests::vm::{self, Vm};
//!
//! // A #[test] function in tests/tests/*.rs:
//! fn vm_example() {
//!     if vm::in_vm() {
//!         // The privileged body: runs as root in the guest, kernel 6.1.
//!         return;
//!     }
//!     if let Some(why) = vm::vm_unavailable() {
//!         sluice_tests::skip(&why);
//!         return;
//!     }
//!     let run = Vm::builder().run_self("vm_example");
//!     assert!(run.kernel.starts_with("6.1."));
//! }
//! ```

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::{is_root, target_dir};

/// The environment variable the guest's init sets for the test binary (`IN_VM=1`).
pub const IN_VM: &str = "IN_VM";

/// Kernel command-line word that only the harness's VMs carry. [`in_vm`] wants it as well as
/// [`IN_VM`], so `IN_VM=1` set by mistake on a host never runs a privileged body there.
const CMDLINE_MARK: &str = "sluice.vmtest=1";

/// The metapackage whose current dependency is the kernel to boot.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

const INIT_SCRIPT: &str = include_str!("../vm/init");
const DEBUGEXIT_C: &str = include_str!("../vm/debugexit.c");
/// This file: part of the cache key, so a change to the module or tool lists (or to how the
/// base is built) builds a new base.
const HARNESS_SOURCE: &str = include_str!("vm.rs");

/// Bumped by hand when the cache layout changes in a way the hash would not see.
const CACHE_FORMAT: &str = "sluice-vmtest-cache-1";

/// Modules the guest loads at boot, with their dependencies (resolved on the host with
/// `modprobe --show-depends` against the unpacked package). Built-ins of this kernel
/// (`nft_counter`, `nft_meta`, ext4) are left out: modprobe calls them missing. The MARK
/// target lives in `xt_mark`, REJECT for IPv4 in `ipt_REJECT`.
pub const MODULES: &[&str] = &[
    // tc: the clsact qdisc and cls_bpf (the ebpf mode's tc programs on kernels without tcx).
    "sch_ingress",
    "cls_bpf",
    // sock_diag for UDP: the ebpf mode destroys UDP sockets connected to a removed backend.
    "inet_diag",
    "udp_diag",
    // IPVS and its schedulers.
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_mh",
    "ip_vs_lc",
    "ip_vs_wlc",
    // Conntrack and NAT.
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    // Links.
    "veth",
    "bridge",
    "br_netfilter",
    "dummy",
    "tun",
    "macvlan",
    "ipvlan",
    "vxlan",
    // nf_tables and the expressions the nftables mode and kube-proxy-like rules use.
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_redir",
    "nft_reject",
    // `reject` in an `ip` / `ip6` table (the ipvs mode's) is family-specific.
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_reject_inet",
    "nft_fib",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_limit",
    "nft_numgen",
    "nft_hash",
    "nft_objref",
    "nft_quota",
    "nft_log",
    "nft_socket",
    "nft_tproxy",
    "nft_connlimit",
    "nfnetlink_log",
    "nfnetlink_queue",
    // xtables matches and targets (iptables rules of the iptables mode and kube-proxy).
    "xt_comment",
    "xt_mark",
    "xt_statistic",
    "xt_recent",
    "xt_conntrack",
    "xt_addrtype",
    "xt_multiport",
    "xt_set",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_tcpudp",
    "xt_physdev",
    "xt_ipvs",
    "xt_connmark",
    "xt_CT",
    "xt_LOG",
    "xt_NFLOG",
    "xt_limit",
    "xt_state",
    "xt_owner",
    // The iptables mode's hairpin rule matches source == destination with a classic BPF program.
    "xt_bpf",
    "xt_REDIRECT",
    "xt_pkttype",
    "xt_length",
    "xt_hashlimit",
    "xt_socket",
    "xt_TPROXY",
    "xt_NFQUEUE",
    "xt_iprange",
    "xt_mac",
    "xt_tcpmss",
    "xt_TCPMSS",
    "xt_CHECKSUM",
    "ipt_REJECT",
    "ip6t_REJECT",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "iptable_security",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "ip6table_raw",
    "ip6table_security",
    // ipset and its set types.
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_hash_netport",
    "ip_set_hash_netnet",
    "ip_set_hash_netiface",
    "ip_set_hash_ipmark",
    "ip_set_hash_mac",
    "ip_set_hash_ipmac",
    "ip_set_hash_netportnet",
    "ip_set_bitmap_port",
    "ip_set_bitmap_ip",
    "ip_set_bitmap_ipmac",
    "ip_set_list_set",
    // The payload disk (ext4 is built in).
    "virtio_pci",
    "virtio_blk",
];

/// Tools the base must carry, with the Debian package that provides each (for the message
/// when one is missing on the host).
const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("dash", "dash"),
    ("busybox", "busybox-static"),
    ("kmod", "kmod"),
    ("modprobe", "kmod"),
    ("ip", "iproute2"),
    ("ipvsadm", "ipvsadm"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
    ("ip6tables", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("ip6tables-save", "iptables"),
    ("nft", "nftables"),
    ("ipset", "ipset"),
    ("conntrack", "conntrack"),
];

/// Tools copied when the host has them.
const OPTIONAL_TOOLS: &[&str] = &[
    "insmod",
    "rmmod",
    "lsmod",
    "ss",
    "bridge",
    "tc",
    "ipvsadm-save",
    "ipvsadm-restore",
    "iptables-nft",
    "iptables-nft-restore",
    "iptables-nft-save",
    "ip6tables-nft",
    "ip6tables-nft-restore",
    "ip6tables-nft-save",
    "iptables-legacy",
    "iptables-legacy-restore",
    "iptables-legacy-save",
    "ip6tables-legacy",
    "ip6tables-legacy-restore",
    "ip6tables-legacy-save",
    "iptables-translate",
    "xtables-monitor",
    "ebtables",
    "arptables",
    "netperf",
    "netserver",
];

/// Libraries every payload binary may need (a Rust binary: libc, libm, libgcc_s, the loader),
/// copied when the host has them.
const ALWAYS_LIBS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/lib/x86_64-linux-gnu/libpthread.so.0",
    "/lib/x86_64-linux-gnu/libdl.so.2",
    "/lib/x86_64-linux-gnu/librt.so.1",
    "/lib/x86_64-linux-gnu/libresolv.so.2",
];

/// The xtables extensions (`libxt_*.so`, loaded by iptables at run time, so ldd misses them).
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Small host files copied into the guest's /etc when present.
const ETC_FILES: &[&str] = &["/etc/protocols", "/etc/services", "/etc/ethertypes"];

/// Host packages whose versions are part of the cache key (the tools and libraries above).
const KEYED_PACKAGES: &[&str] = &[
    "busybox-static",
    "conntrack",
    "dash",
    "gcc",
    "ipset",
    "iproute2",
    "iptables",
    "ipvsadm",
    "kmod",
    "libc6",
    "libgcc-s1",
    "netperf",
    "nftables",
];

/// Host tools the cache build runs, with their packages.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
    ("ldd", "libc-bin"),
    ("gcc", "gcc and libc6-dev"),
    ("mke2fs", "e2fsprogs"),
    ("timeout", "coreutils"),
];

/// Payloads larger than this go onto the virtio disk when the route is [`Payload::Auto`].
const DISK_THRESHOLD: u64 = 64 << 20;
const DEFAULT_MEMORY_MB: u32 = 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Time the host allows on top of the guest watchdog: firmware, kernel, module loading.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(60);
/// Cache directories (one per kernel version and harness hash) kept besides the current one.
const OLD_CACHES_KEPT: usize = 2;
/// Payload disk images kept besides the one just used (see [`disk_image`]).
const DISKS_KEPT: usize = 3;

/// Whether this process is the test binary started by the guest's init (`IN_VM=1`, and the
/// kernel command line carries the harness's mark): the test then runs its privileged body.
pub fn in_vm() -> bool {
    std::env::var(IN_VM).is_ok_and(|v| v == "1")
        && fs::read_to_string("/proc/cmdline")
            .is_ok_and(|c| c.split_whitespace().any(|w| w == CMDLINE_MARK))
}

/// Whether VM tests can run on this machine; if not, [`crate::skip`]s with the reason
/// ([`vm_unavailable`]: prints SKIP, or fails under `SLUICE_REQUIRE_ALL=1`) and returns false.
#[track_caller]
pub fn available_or_skip() -> bool {
    match vm_unavailable() {
        Some(why) => {
            crate::skip(&why);
            false
        }
        None => true,
    }
}

/// Why VM tests cannot run on this machine (`None`: they can). The caller passes the reason
/// to [`crate::skip`], which fails under `SLUICE_REQUIRE_ALL=1`.
///
/// Needs qemu; and unless the kernel cache for the current package version and harness is
/// already built, root (for `apt-get download`) and the build tools.
pub fn vm_unavailable() -> Option<String> {
    if find_tool("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 is missing (Debian: qemu-system-x86)".into());
    }
    if find_tool("timeout").is_none() {
        return Some("timeout is missing (Debian: coreutils)".into());
    }
    if find_tool("apt-cache").is_none() {
        return Some(format!(
            "apt-cache is missing: the VM boots Debian's {KERNEL_METAPACKAGE}, which only apt can resolve"
        ));
    }
    let pkg = match KernelPackage::resolve() {
        Ok(p) => p,
        Err(e) => return Some(format!("cannot resolve the VM's kernel package: {e:#}")),
    };
    let key = match cache_key(&pkg) {
        Ok(k) => k,
        Err(e) => return Some(format!("cannot compute the VM cache key: {e:#}")),
    };
    if cache_root().join(&key).join("ready").exists() {
        return None;
    }
    if !is_root() {
        return Some(format!(
            "not root: the VM's kernel {} {} is not cached yet ({}), and fetching it needs apt-get",
            pkg.name,
            pkg.version,
            cache_root().display()
        ));
    }
    let missing: Vec<String> = BUILD_TOOLS
        .iter()
        .chain(REQUIRED_TOOLS)
        .filter(|(tool, _)| find_tool(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (Debian: {pkg})"))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "building the VM's initramfs needs: {} (scripts/setup installs them)",
            missing.join(", ")
        ));
    }
    None
}

/// Entry point: `Vm::builder()`.
pub struct Vm;

impl Vm {
    /// A VM with the defaults: 1024 MiB of memory, a 300 s guest watchdog, payload route
    /// [`Payload::Auto`], the workdir `target/tmp/sluice-vm/<test>`.
    pub fn builder() -> VmBuilder {
        VmBuilder {
            files: Vec::new(),
            env: Vec::new(),
            memory_mb: DEFAULT_MEMORY_MB,
            timeout: DEFAULT_TIMEOUT,
            payload: Payload::Auto,
            workdir: None,
        }
    }
}

/// How the payload's files reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The initramfs route up to 64 MiB of files, the disk route above.
    Auto,
    /// An archive appended to the base initramfs: unpacked into the guest's RAM at boot.
    /// Fastest for small payloads; every byte costs guest memory.
    Initramfs,
    /// A read-only ext4 virtio disk mounted at `/vmtest/disk`, with symlinks from the files'
    /// guest paths: large binaries are paged in on demand.
    Disk,
}

/// A VM to boot: files to carry, environment, limits.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    files: Vec<(PathBuf, PathBuf)>,
    env: Vec<(String, String)>,
    memory_mb: u32,
    timeout: Duration,
    payload: Payload,
    workdir: Option<PathBuf>,
}

/// What a VM run gave back.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// The guest command's exit status (from the `VMTEST-EXIT=` marker).
    pub exit_code: i32,
    /// The guest command's stdout and stderr (result.log without the markers).
    pub output: String,
    /// The guest kernel's release (`uname -r`).
    pub kernel: String,
    /// The route the payload took ([`Payload::Auto`] resolved).
    pub payload: Payload,
    /// Host: building the payload (archive, disk image, initrd).
    pub prepare: Duration,
    /// Host: from starting qemu to the guest's `VMTEST-READY` (firmware, kernel, init,
    /// modules, payload disk).
    pub boot: Duration,
    /// Host: from `VMTEST-READY` to `VMTEST-EXIT` (the guest command).
    pub test: Duration,
    /// Host: from starting qemu to its exit.
    pub total: Duration,
    /// The guest's uptime at `VMTEST-READY` (kernel and init, without firmware).
    pub guest_ready_uptime: Duration,
    /// Where console.log, result.log and the run script are kept.
    pub workdir: PathBuf,
}

impl VmRun {
    /// Asserts that the guest ran Debian's 6.1 cloud kernel and that the guest test printed
    /// it as `vm kernel: <release>` (so the test body really ran in the guest).
    #[track_caller]
    pub fn assert_debian_kernel(&self) {
        assert!(
            self.kernel.starts_with("6.1.") && self.kernel.ends_with("-cloud-amd64"),
            "the guest ran kernel {:?}, not Debian's 6.1 cloud kernel",
            self.kernel
        );
        assert!(
            self.output.contains(&format!("vm kernel: {}", self.kernel)),
            "the guest test did not print its kernel:\n{}",
            self.output
        );
    }
}

impl VmBuilder {
    /// Carries the host file `host` into the guest at the absolute path `guest` (mode kept).
    /// Its shared libraries (ldd) come along when the base lacks them.
    pub fn file(mut self, host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        self.files.push((host.into(), guest.into()));
        self
    }

    /// Carries the workspace binary `name` (`target/debug/<name>`, see [`crate::bin`]) to
    /// `/vmtest/bin/<name>`, beside the test binary that [`VmBuilder::run_self`] carries: in
    /// the guest, [`crate::bin`] (which looks beside the running test binary) then finds it,
    /// on either payload route.
    pub fn workspace_bin(self, name: &str) -> Self {
        self.file(crate::bin(name), format!("/vmtest/bin/{name}"))
    }

    /// Sets an environment variable for the guest command.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The guest's memory (default 1024 MiB). The initramfs and everything on the
    /// [`Payload::Initramfs`] route live in it.
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// The guest watchdog (default 300 s), counted from init's start: the guest command is
    /// stopped and the run ends with `VMTEST-TIMEOUT`. The host allows 60 s more for booting
    /// before it kills qemu.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The payload route (default [`Payload::Auto`]).
    pub fn payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    /// The host directory for this run's files (emptied first; default
    /// `target/tmp/sluice-vm/<name>`).
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// The self-exec pattern: boots a VM that runs this test binary's test `test_name`
    /// (its full libtest name, e.g. `vm_kernel_smoke`) with `IN_VM=1`, where [`in_vm`] is
    /// true. Echoes the guest's output as `vm| ` lines.
    ///
    /// Panics when the guest test fails, when the name matched no test (libtest would exit 0
    /// having run nothing), or when the VM crashes or hangs (with the tail of console.log).
    pub fn run_self(self, test_name: &str) -> VmRun {
        assert!(
            !in_vm(),
            "run_self inside the VM: the test would boot itself forever"
        );
        let exe = std::env::current_exe().expect("current_exe");
        let exe_name = exe
            .file_name()
            .expect("the test binary has a name")
            .to_string_lossy()
            .to_string();
        let guest_exe = format!("/vmtest/bin/{exe_name}");
        let command = format!(
            "exec {} --exact {} --nocapture --test-threads=1 --color never",
            sh_quote(&guest_exe),
            sh_quote(test_name)
        );
        let run = self
            .file(exe, &guest_exe)
            .launch(test_name, &command)
            .unwrap_or_else(|e| panic!("VM run of {test_name} failed: {e:#}"));
        println!("{}", run.summary(test_name));
        if run.exit_code != 0 {
            panic!(
                "{test_name} failed inside the VM (exit {}); its output (also echoed above as \
                 `vm| ` lines):\n{}",
                run.exit_code,
                tail_lines(&run.output, 80)
            );
        }
        // libtest exits 0 when `--exact` matched nothing: make sure the body really ran.
        if !run
            .output
            .lines()
            .any(|l| l.starts_with("test result: ok. 1 passed"))
        {
            panic!(
                "{test_name} did not run inside the VM (no `test result: ok. 1 passed` line): \
                 is the name the test's full libtest name?\n{}",
                tail_lines(&run.output, 40)
            );
        }
        run
    }

    /// Boots a VM that runs `script` with the guest's `/bin/sh` (dash) and returns its exit
    /// code and output, echoed as `vm| ` lines. `name` names the workdir. An error means the
    /// harness failed or the guest crashed or hung (no `VMTEST-EXIT` marker; the message holds
    /// the tail of console.log); a failing script is a normal return with a nonzero code.
    pub fn run_shell(self, name: &str, script: &str) -> Result<VmRun> {
        assert!(!in_vm(), "run_shell inside the VM");
        let run = self.launch(name, script)?;
        println!("{}", run.summary(name));
        Ok(run)
    }

    /// Builds the payload, boots, waits, parses.
    fn launch(self, name: &str, command: &str) -> Result<VmRun> {
        let base = Base::ensure()?;
        let workdir = match &self.workdir {
            Some(d) => d.clone(),
            None => default_workdir(name),
        };
        if workdir.exists() {
            fs::remove_dir_all(&workdir)
                .with_context(|| format!("emptying {}", workdir.display()))?;
        }
        fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;

        let prepare_start = Instant::now();
        let prepared = self.prepare(&base, &workdir, command)?;
        let prepare = prepare_start.elapsed();

        let outcome = boot(
            &base,
            &workdir,
            &prepared,
            self.memory_mb,
            self.timeout,
            &mut |line| println!("vm| {line}"),
        )?;
        let run = outcome.into_run(prepared.route, prepare, &workdir)?;
        // Keep the logs; the initrd is large and only worth keeping after a failure.
        if run.exit_code == 0 {
            let _ = fs::remove_file(workdir.join("run.img"));
        }
        Ok(run)
    }

    /// Writes run.img (base + payload archive) and, on the disk route, disk.img.
    fn prepare(&self, base: &Base, workdir: &Path, command: &str) -> Result<Prepared> {
        let mut total = 0u64;
        for (host, guest) in &self.files {
            let meta = fs::metadata(host).with_context(|| {
                format!("payload file {} (for {})", host.display(), guest.display())
            })?;
            if !meta.is_file() {
                bail!("payload {} is not a regular file", host.display());
            }
            if !guest.is_absolute() {
                bail!("guest path {} must be absolute", guest.display());
            }
            total += meta.len();
        }
        let route = match self.payload {
            Payload::Auto if total > DISK_THRESHOLD => Payload::Disk,
            Payload::Auto => Payload::Initramfs,
            other => other,
        };

        let mut script =
            String::from("#!/bin/sh\n# Written by tests/src/vm.rs: the guest command.\n");
        script.push_str(&format!("export {IN_VM}=1\nexport RUST_BACKTRACE=1\n"));
        for (k, v) in &self.env {
            if k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
            {
                bail!("invalid environment variable name {k:?}");
            }
            script.push_str(&format!("export {k}={}\n", sh_quote(v)));
        }
        script.push_str(command);
        script.push('\n');
        fs::write(workdir.join("run.sh"), &script)?;

        let mut archive = PayloadArchive::default();
        archive.bytes("vmtest/run", 0o755, script.into_bytes());
        let mut disk_files = Vec::new();
        for (host, guest) in &self.files {
            let rel = guest_rel(guest);
            match route {
                Payload::Disk => {
                    archive.symlink(&rel, format!("/vmtest/disk/{rel}"));
                    disk_files.push((rel, host.clone()));
                }
                _ => archive.host_file(&rel, host),
            }
        }
        // Shared libraries the payload's binaries need and the base lacks.
        let elves: Vec<PathBuf> = self
            .files
            .iter()
            .map(|(h, _)| h.clone())
            .filter(|h| is_elf(h))
            .collect();
        for lib in ldd_closure(&elves)? {
            let real = fs::canonicalize(&lib)?;
            let real_rel = guest_rel(&real);
            let loc = guest_rel(&canonical_parent(&lib)?);
            if !base.manifest.contains(&real_rel) {
                archive.host_file(&real_rel, &real);
            }
            if loc != real_rel && !base.manifest.contains(&loc) {
                archive.symlink(&loc, relative_target(&loc, &real_rel));
            }
        }

        if route == Payload::Initramfs {
            // While the kernel unpacks the initramfs, the packed image and the unpacked files
            // are both in RAM, and a failed unpack only leaves a line in the kernel log:
            // refuse up front what cannot fit. Measured: 404 MiB of files unpack with 1300 MiB
            // of memory, not with 1100 MiB; hence twice the archive plus 384 MiB.
            let base_size = fs::metadata(base.initrd())?.len();
            let memory = u64::from(self.memory_mb) << 20;
            if 2 * (base_size + total) + (384 << 20) > memory {
                bail!(
                    "the payload ({} MiB) and the base ({} MiB) do not fit the initramfs of a \
                     guest with {} MiB (both are in memory twice while the kernel unpacks): use \
                     Payload::Disk or more memory",
                    total >> 20,
                    base_size >> 20,
                    self.memory_mb
                );
            }
        }
        // Last entry: init checks for it, so a payload the kernel could not unpack in full
        // is an error and not a test that misses files.
        archive.bytes("vmtest/payload-complete", 0o644, b"ok\n".to_vec());

        let initrd = workdir.join("run.img");
        fs::copy(base.initrd(), &initrd)
            .with_context(|| format!("copying the base initramfs to {}", initrd.display()))?;
        let out = fs::OpenOptions::new().append(true).open(&initrd)?;
        archive
            .write(BufWriter::new(out))
            .with_context(|| format!("appending the payload to {}", initrd.display()))?;

        let disk = if route == Payload::Disk {
            Some(disk_image(&disk_files, total)?)
        } else {
            None
        };
        Ok(Prepared {
            initrd,
            disk,
            route,
        })
    }
}

impl VmRun {
    /// One line with the timings, for the test's output.
    pub fn summary(&self, name: &str) -> String {
        format!(
            "vm: {name}: exit {}, kernel {}, payload {:?}: prepare {:.2} s, boot {:.2} s (guest \
             uptime {:.2} s), test {:.2} s, total {:.2} s; logs in {}",
            self.exit_code,
            self.kernel,
            self.payload,
            self.prepare.as_secs_f64(),
            self.boot.as_secs_f64(),
            self.guest_ready_uptime.as_secs_f64(),
            self.test.as_secs_f64(),
            self.total.as_secs_f64(),
            self.workdir.display()
        )
    }
}

/// The per-run images.
struct Prepared {
    initrd: PathBuf,
    disk: Option<PathBuf>,
    route: Payload,
}

/// `target/tmp/sluice-vm` (`CARGO_TARGET_TMPDIR` is `target/tmp`).
fn vm_tmp() -> PathBuf {
    std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| target_dir().parent().map(|t| t.join("tmp")))
        .unwrap_or_else(std::env::temp_dir)
        .join("sluice-vm")
}

/// `target/tmp/sluice-vm/<name>`.
fn default_workdir(name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    vm_tmp().join(safe)
}

/// The read-only ext4 image holding `files` (guest path, host file), reused while the same
/// host files (path, size, mtime, inode) go to the same guest paths: writing the workspace's
/// debug binaries into an image takes seconds, and successive VM tests carry the same ones.
/// Kept in `target/tmp/sluice-vm/disks/`, the newest [`DISKS_KEPT`].
fn disk_image(files: &[(String, PathBuf)], total: u64) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = vm_tmp().join("disks");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut h = Fnv64::new();
    h.write(CACHE_FORMAT.as_bytes());
    for (rel, host) in files {
        let m = fs::metadata(host)?;
        let real = fs::canonicalize(host)?;
        h.write(
            format!(
                "{rel}\0{}\0{} {} {} {}\0",
                real.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            )
            .as_bytes(),
        );
    }
    let key = format!("{:016x}", h.finish());
    let img = dir.join(format!("{key}.img"));
    let _lock = lock(&dir.join(format!("{key}.lock")))?;
    if img.exists() {
        // Marks it recently used for the pruning below.
        let _ = File::options()
            .append(true)
            .open(&img)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(img);
    }
    let stage = dir.join(format!("{key}.stage"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for (rel, host) in files {
        let dst = stage.join(rel);
        fs::create_dir_all(dst.parent().expect("a file path has a parent"))?;
        // A hard link costs nothing; mke2fs reads the data either way.
        if fs::hard_link(host, &dst).is_err() {
            fs::copy(host, &dst)
                .with_context(|| format!("copying {} to {}", host.display(), dst.display()))?;
        }
    }
    let tmp = dir.join(format!("{key}.img.tmp"));
    // ext4 overhead (inode tables, directories) plus room for rounding.
    let kib = (total + total / 10) / 1024 + 32 * 1024;
    let made = run_checked(
        Command::new(tool("mke2fs")?)
            .args(["-q", "-t", "ext4", "-O", "^has_journal", "-m", "0"])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(&stage)
            .arg(&tmp)
            .arg(format!("{kib}k")),
        "mke2fs (the payload disk)",
    );
    let _ = fs::remove_dir_all(&stage);
    made?;
    fs::rename(&tmp, &img)?;
    prune_disks(&dir, &img);
    Ok(img)
}

/// Keeps the newest [`DISKS_KEPT`] disk images besides `keep`.
fn prune_disks(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut imgs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "img") && p != keep)
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    imgs.sort();
    imgs.reverse();
    for (_, p) in imgs.into_iter().skip(DISKS_KEPT) {
        let _ = fs::remove_file(&p);
        let _ = fs::remove_file(p.with_extension("lock"));
    }
}

// ---------------------------------------------------------------------------------------------
// Booting and watching the VM.

/// What the host saw of one boot.
struct Outcome {
    status: Option<ExitStatus>,
    killed_after: Option<Duration>,
    host_timeout: Duration,
    start: Instant,
    end: Instant,
    booted: Option<(Instant, String)>,
    ready: Option<(Instant, Duration)>,
    exit: Option<(Instant, i32)>,
    watchdog: Option<String>,
    errors: Vec<String>,
    output: Vec<String>,
    result_log: PathBuf,
    console_log: PathBuf,
    qemu_stderr: PathBuf,
}

fn boot(
    base: &Base,
    workdir: &Path,
    prepared: &Prepared,
    memory_mb: u32,
    timeout: Duration,
    echo: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let console_log = workdir.join("console.log");
    let result_log = workdir.join("result.log");
    let qemu_stderr = workdir.join("qemu.stderr");
    let guest_timeout = timeout.as_secs().max(1);
    let host_timeout = timeout + BOOT_ALLOWANCE;
    let append = format!(
        // panic=-1 with -no-reboot: a panic (and oops=panic, softlockup_panic=1: an oops or a
        // wedged CPU) stops qemu at once instead of waiting for a timeout. loglevel=7 keeps
        // soft-lockup stack traces in console.log; printing them costs nothing measurable.
        "console=ttyS0 panic=-1 oops=panic softlockup_panic=1 loglevel=7 mitigations=off \
         {CMDLINE_MARK} vmtest.timeout={guest_timeout} vmtest.disk={}",
        u8::from(prepared.disk.is_some())
    );
    let mut args: Vec<String> = vec![
        "-k".into(),
        "5".into(),
        host_timeout.as_secs().to_string(),
        tool("qemu-system-x86_64")?.display().to_string(),
        // No KVM on these machines; -smp 1 because MTTCG with 2 vCPUs wedged a guest once.
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        format!("{memory_mb}M"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-nic".into(),
        "none".into(),
        "-no-reboot".into(),
        "-chardev".into(),
        format!("file,id=con,path={}", qemu_path(&console_log)),
        "-serial".into(),
        "chardev:con".into(),
        "-chardev".into(),
        format!("file,id=res,path={}", qemu_path(&result_log)),
        "-serial".into(),
        "chardev:res".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        "-kernel".into(),
        base.vmlinuz().display().to_string(),
        "-initrd".into(),
        prepared.initrd.display().to_string(),
    ];
    if let Some(disk) = &prepared.disk {
        args.push("-drive".into());
        args.push(format!(
            "file={},if=virtio,format=raw,readonly=on",
            qemu_path(disk)
        ));
    }
    args.push("-append".into());
    args.push(append);
    // For reproducing a failure by hand (the images are kept when the run fails).
    let script = format!(
        "#!/bin/sh\ntimeout {}\n",
        args.iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    fs::write(workdir.join("qemu.sh"), script)?;

    let stderr = File::create(&qemu_stderr)?;
    let mut cmd = Command::new(tool("timeout")?);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: prctl is async-signal-safe. `timeout` runs qemu in its own process group, so a
    // signal to the test's group (nextest's slow-timeout) would miss it: if this process dies,
    // `timeout` gets SIGTERM and passes it on to qemu, leaving no orphan.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(io::Error::from)
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu through timeout")?;

    let mut outcome = Outcome {
        status: None,
        killed_after: None,
        host_timeout,
        start,
        end: start,
        booted: None,
        ready: None,
        exit: None,
        watchdog: None,
        errors: Vec::new(),
        output: Vec::new(),
        result_log: result_log.clone(),
        console_log,
        qemu_stderr,
    };
    let mut tail = Tail::new(result_log);
    let deadline = start + host_timeout + Duration::from_secs(10);
    loop {
        for line in tail.poll(false)? {
            outcome.line(&line, echo);
        }
        if let Some(status) = child.try_wait()? {
            outcome.status = Some(status);
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            outcome.killed_after = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    outcome.end = Instant::now();
    for line in tail.poll(true)? {
        outcome.line(&line, echo);
    }
    Ok(outcome)
}

impl Outcome {
    fn line(&mut self, line: &str, echo: &mut dyn FnMut(&str)) {
        echo(line);
        let now = Instant::now();
        let Some(marker) = line.strip_prefix("VMTEST-") else {
            self.output.push(line.to_string());
            return;
        };
        if let Some(rest) = marker.strip_prefix("BOOTED ") {
            let kernel = field(rest, "kernel").unwrap_or_default();
            self.booted = Some((now, kernel));
        } else if let Some(rest) = marker.strip_prefix("READY ") {
            let up = field(rest, "uptime")
                .and_then(|u| u.parse::<f64>().ok())
                .map(Duration::from_secs_f64)
                .unwrap_or_default();
            self.ready = Some((now, up));
        } else if let Some(rc) = marker.strip_prefix("EXIT=") {
            self.exit = Some((now, rc.trim().parse().unwrap_or(-1)));
        } else if let Some(rest) = marker.strip_prefix("TIMEOUT") {
            self.watchdog = Some(field(rest, "after").unwrap_or_default());
        } else if let Some(rest) = marker.strip_prefix("ERROR") {
            self.errors.push(rest.trim().to_string());
        } else if !marker.starts_with("END") {
            // Not ours: keep it as output.
            self.output.push(line.to_string());
        }
    }

    fn into_run(self, route: Payload, prepare: Duration, workdir: &Path) -> Result<VmRun> {
        let problem = if let Some(after) = &self.watchdog {
            Some(format!(
                "the guest watchdog stopped the test after {after} s (the process list is in \
                 console.log)"
            ))
        } else if !self.errors.is_empty() {
            Some(format!(
                "the guest's init failed: {}",
                self.errors.join("; ")
            ))
        } else if self.exit.is_none() {
            Some(format!(
                "the VM ended without a VMTEST-EXIT marker: the guest crashed or hung ({})",
                self.how_qemu_ended()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            let console = read_lossy(&self.console_log);
            bail!(
                "{problem}\nworkdir: {}\n--- result.log (last 40 lines)\n{}\n--- console.log, \
                 notable lines\n{}\n--- console.log (last 60 lines)\n{}\n--- qemu stderr\n{}",
                workdir.display(),
                tail_lines(&read_lossy(&self.result_log), 40),
                notable_console_lines(&console),
                tail_lines(&console, 60),
                tail_lines(&read_lossy(&self.qemu_stderr), 20)
            );
        }
        let (exit_at, exit_code) = self.exit.expect("checked above");
        let (ready_at, guest_ready_uptime) = self.ready.unwrap_or((self.start, Duration::ZERO));
        Ok(VmRun {
            exit_code,
            output: self.output.join("\n"),
            kernel: self.booted.map(|(_, k)| k).unwrap_or_default(),
            payload: route,
            prepare,
            boot: ready_at - self.start,
            test: exit_at.saturating_duration_since(ready_at),
            total: self.end - self.start,
            guest_ready_uptime,
            workdir: workdir.to_path_buf(),
        })
    }

    fn how_qemu_ended(&self) -> String {
        if let Some(after) = self.killed_after {
            return format!("the harness killed qemu after {:.0} s", after.as_secs_f64());
        }
        match self.status.and_then(|s| s.code()) {
            Some(124) | Some(137) => format!(
                "the host timeout of {} s stopped qemu",
                self.host_timeout.as_secs()
            ),
            Some(0) => "qemu exited 0: a kernel panic (panic=-1 with -no-reboot), an oops, a \
                        soft lockup or a poweroff"
                .to_string(),
            Some(c) if c % 2 == 1 => format!(
                "qemu exited {c}: isa-debug-exit with guest status {}",
                c >> 1
            ),
            Some(c) => format!("qemu exited {c} (see qemu stderr)"),
            None => format!("qemu was killed by a signal ({:?})", self.status),
        }
    }
}

/// `value` of `key=value` among space-separated words.
fn field(words: &str, key: &str) -> Option<String> {
    words
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Follows a file that another process appends to, line by line.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            file: None,
            pos: 0,
            partial: Vec::new(),
        }
    }

    /// New complete lines; with `last`, also an unterminated final line.
    fn poll(&mut self, last: bool) -> Result<Vec<String>> {
        if self.file.is_none() {
            // qemu creates the file when it starts.
            self.file = File::open(&self.path).ok();
        }
        if let Some(f) = &mut self.file {
            f.seek(SeekFrom::Start(self.pos))?;
            let n = f.read_to_end(&mut self.partial)?;
            self.pos += n as u64;
        }
        let mut lines = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            lines.push(clean_line(&line[..i]));
        }
        if last && !self.partial.is_empty() {
            lines.push(clean_line(&std::mem::take(&mut self.partial)));
        }
        Ok(lines)
    }
}

fn clean_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

/// Kernel log lines that explain most failed runs, wherever they are in the log (the last
/// 60 lines may be all stack trace, or the boot's end).
fn notable_console_lines(console: &str) -> String {
    const NOTABLE: &[&str] = &[
        "Initramfs unpacking failed",
        "Kernel panic",
        "Out of memory",
        "invoked oom-killer",
        "BUG:",
        "Oops",
        "WARNING:",
        "soft lockup",
        "hard LOCKUP",
        "rcu_sched self-detected stall",
        "blocked for more than",
        "segfault at",
        "ps: ",
    ];
    let hits: Vec<&str> = console
        .lines()
        .filter(|l| NOTABLE.iter().any(|n| l.contains(n)))
        .take(20)
        .collect();
    if hits.is_empty() {
        "(none)".to_string()
    } else {
        hits.join("\n")
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_else(|e| format!("({}: {e})", p.display()))
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A path in a qemu option value: commas are doubled.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

// ---------------------------------------------------------------------------------------------
// The cached kernel and base initramfs.

/// The versioned kernel package.
struct KernelPackage {
    name: String,
    version: String,
}

impl KernelPackage {
    /// [`KernelPackage::query`], remembered in the cache root for as long as apt's lists and
    /// package cache are unchanged: two apt-cache runs take ~1 s, for every test process.
    fn resolve() -> Result<KernelPackage> {
        let stamp = apt_state_stamp();
        let memo = cache_root().join("kernel-package");
        if let Some(stamp) = &stamp {
            if let Ok(text) = fs::read_to_string(&memo) {
                let words: Vec<&str> = text.split_whitespace().collect();
                if let [s, name, version] = words[..] {
                    if s == stamp {
                        return Ok(KernelPackage {
                            name: name.to_string(),
                            version: version.to_string(),
                        });
                    }
                }
            }
        }
        let pkg = KernelPackage::query()?;
        if let Some(stamp) = stamp {
            // Written aside and renamed: another test process may be reading it.
            let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
            if fs::create_dir_all(cache_root()).is_ok()
                && fs::write(&tmp, format!("{stamp} {} {}\n", pkg.name, pkg.version)).is_ok()
            {
                let _ = fs::rename(&tmp, &memo);
            }
        }
        Ok(pkg)
    }

    /// `linux-image-6.1.0-<abi>-cloud-amd64` and its candidate version, from apt's lists.
    fn query() -> Result<KernelPackage> {
        let deps = run_checked(
            Command::new("apt-cache")
                .arg("depends")
                .arg(KERNEL_METAPACKAGE),
            "apt-cache depends",
        )?;
        let name = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|d| {
                d.strip_prefix("linux-image-")
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            })
            .map(str::to_string)
            .with_context(|| {
                format!("apt-cache depends {KERNEL_METAPACKAGE} names no linux-image-<version>")
            })?;
        let show = run_checked(
            Command::new("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(&name),
            "apt-cache show",
        )?;
        let version = show
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("apt-cache show {name} gives no Version"))?;
        Ok(KernelPackage { name, version })
    }

    /// `6.1.0-57-cloud-amd64`.
    fn kernel_release(&self) -> &str {
        self.name.strip_prefix("linux-image-").unwrap_or(&self.name)
    }
}

/// The modification times of apt's lists directory (`apt-get update` replaces files in it)
/// and of its sources, as one word; `None` without the lists. (Container images often turn
/// off apt's binary cache, `Dir::Cache::pkgcache ""`, which is why apt-cache is slow here.)
fn apt_state_stamp() -> Option<String> {
    let mtime = |p: &str| -> Option<String> {
        let t = fs::metadata(p).ok()?.modified().ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
    };
    let mut stamp = mtime("/var/lib/apt/lists")?;
    for p in ["/etc/apt/sources.list", "/etc/apt/sources.list.d"] {
        stamp.push('/');
        stamp.push_str(&mtime(p).unwrap_or_default());
    }
    Some(stamp)
}

/// `$SLUICE_VMTEST_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/sluice/vmtest`.
fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_VMTEST_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("sluice")
        .join("vmtest")
}

/// `<package>_<version>-<hash>`: the hash covers everything the base is built from besides
/// the kernel package.
fn cache_key(pkg: &KernelPackage) -> Result<String> {
    let versions = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}=${Version}\\n"])
        .args(KEYED_PACKAGES)
        .stderr(Stdio::null())
        .output()
        .context("dpkg-query")?;
    let mut h = Fnv64::new();
    for part in [
        CACHE_FORMAT.as_bytes(),
        HARNESS_SOURCE.as_bytes(),
        INIT_SCRIPT.as_bytes(),
        DEBUGEXIT_C.as_bytes(),
        &versions.stdout,
    ] {
        h.write(part);
        h.write(&[0]);
    }
    let version: String = pkg
        .version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+-~".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(format!("{}_{version}-{:016x}", pkg.name, h.finish()))
}

/// FNV-1a: a hash that stays the same across Rust versions (std's hashers promise no such
/// thing), for cache keys.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A ready cache directory.
struct Base {
    dir: PathBuf,
    /// Guest paths (relative, normalized) of every entry in the base archive.
    manifest: BTreeSet<String>,
}

impl Base {
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    fn initrd(&self) -> PathBuf {
        self.dir.join("base.cpio")
    }

    fn open(dir: PathBuf) -> Result<Base> {
        let manifest = fs::read_to_string(dir.join("manifest"))
            .with_context(|| format!("reading {}/manifest", dir.display()))?
            .lines()
            .map(str::to_string)
            .collect();
        Ok(Base { dir, manifest })
    }

    /// The cache directory for the current kernel package and harness, built if missing.
    fn ensure() -> Result<Base> {
        let root = cache_root();
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut pkg = KernelPackage::resolve()?;
        let mut apt_updated = false;
        loop {
            let key = cache_key(&pkg)?;
            let dir = root.join(&key);
            if dir.join("ready").exists() {
                return Base::open(dir);
            }
            let lock = lock(&root.join(format!("{key}.lock")))?;
            if dir.join("ready").exists() {
                return Base::open(dir);
            }
            let tmp = root.join(format!("{key}.tmp"));
            if tmp.exists() {
                fs::remove_dir_all(&tmp)?;
            }
            fs::create_dir_all(&tmp)?;
            let started = Instant::now();
            let deb = match download(&pkg, &tmp) {
                Ok(deb) => deb,
                // Stale lists name a version the mirror no longer has: refresh them once.
                Err(e) if !apt_updated && is_root() => {
                    eprintln!("vm: {e:#}; running apt-get update and trying again");
                    run_checked(
                        Command::new("apt-get").args(["update", "-q"]),
                        "apt-get update",
                    )?;
                    apt_updated = true;
                    pkg = KernelPackage::resolve()?;
                    drop(lock);
                    let _ = fs::remove_dir_all(&tmp);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = build_base(&pkg, &deb, &tmp) {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e.context(format!("building the VM base in {}", tmp.display())));
            }
            fs::write(tmp.join("ready"), "")?;
            fs::rename(&tmp, &dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
            println!(
                "vm: built the kernel cache {} in {:.1} s",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            drop(lock);
            prune_old_caches(&root, &key);
            return Base::open(dir);
        }
    }
}

/// An exclusive flock on `path`, held until dropped.
fn lock(path: &Path) -> Result<nix::fcntl::Flock<File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// Removes all but the newest [`OLD_CACHES_KEPT`] other ready cache directories, and the
/// leftovers of builds that were killed (a `.tmp` directory whose lock nobody holds).
fn prune_old_caches(root: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let entries: Vec<fs::DirEntry> = entries.flatten().collect();
    for e in &entries {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(key) = name.strip_suffix(".tmp") else {
            continue;
        };
        let Ok(f) = File::open(root.join(format!("{key}.lock"))) else {
            continue;
        };
        if let Ok(held) = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            let _ = fs::remove_dir_all(e.path());
            drop(held);
        }
    }
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
        .iter()
        .filter(|e| e.file_name().to_string_lossy() != keep)
        .filter_map(|e| {
            let ready = e.path().join("ready");
            let modified = fs::metadata(&ready).ok()?.modified().ok()?;
            Some((modified, e.path()))
        })
        .collect();
    old.sort();
    old.reverse();
    for (_, dir) in old.into_iter().skip(OLD_CACHES_KEPT) {
        let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
        let _ = fs::remove_dir_all(&dir);
        if let Some(name) = name {
            let _ = fs::remove_file(root.join(format!("{name}.lock")));
        }
    }
}

/// `apt-get download <name>=<version>` into `dir/download`; returns the .deb.
fn download(pkg: &KernelPackage, dir: &Path) -> Result<PathBuf> {
    let dl = dir.join("download");
    fs::create_dir_all(&dl)?;
    run_checked(
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!("{}={}", pkg.name, pkg.version))
            .current_dir(&dl),
        "apt-get download (the VM's kernel)",
    )?;
    for e in fs::read_dir(&dl)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            return Ok(p);
        }
    }
    bail!("apt-get download left no .deb in {}", dl.display())
}

/// Unpacks the kernel, stages the initramfs tree and writes `vmlinuz`, `base.cpio`,
/// `manifest` and `info` into `out`.
fn build_base(pkg: &KernelPackage, deb: &Path, out: &Path) -> Result<()> {
    let kver = pkg.kernel_release();
    let kpkg = out.join("kpkg");
    run_checked(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&kpkg),
        "dpkg-deb -x (the kernel package)",
    )?;
    // The package ships modules.order and modules.builtin but no modules.dep.
    run_checked(
        Command::new(tool("depmod")?).arg("-b").arg(&kpkg).arg(kver),
        "depmod on the unpacked kernel",
    )?;
    let vmlinuz = kpkg.join("boot").join(format!("vmlinuz-{kver}"));
    fs::copy(&vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;

    let stage = out.join("stage");
    stage_layout(&stage)?;

    // The module closure, with its own modules.dep so the guest's modprobe resolves it.
    let show = run_checked(
        Command::new(tool("modprobe")?)
            .arg("-d")
            .arg(&kpkg)
            .args(["-S", kver, "--show-depends", "-a"])
            .args(MODULES),
        "modprobe --show-depends (is a module in MODULES missing from this kernel?)",
    )?;
    let pkg_modules = kpkg.join("lib/modules").join(kver);
    let stage_modules = stage.join("usr/lib/modules").join(kver);
    let mut module_files = BTreeSet::new();
    for line in show.lines() {
        // `insmod <path> [options from the host's modprobe.d]`.
        if let Some(path) = line
            .strip_prefix("insmod ")
            .and_then(|rest| rest.split_whitespace().next())
        {
            module_files.insert(PathBuf::from(path));
        }
    }
    for m in &module_files {
        let rel = m
            .strip_prefix(&pkg_modules)
            .with_context(|| format!("module {} outside {}", m.display(), pkg_modules.display()))?;
        let dst = stage_modules.join(rel);
        fs::create_dir_all(dst.parent().expect("module has a directory"))?;
        fs::copy(m, &dst).with_context(|| format!("copying {}", m.display()))?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        fs::copy(pkg_modules.join(f), stage_modules.join(f))
            .with_context(|| format!("copying {f}"))?;
    }
    run_checked(
        Command::new(tool("depmod")?)
            .arg("-b")
            .arg(&stage)
            .arg(kver),
        "depmod on the staged modules",
    )?;
    fs::write(stage.join("etc/vmtest/modules"), MODULES.join(" ") + "\n")?;

    // Tools and their libraries.
    let mut binaries = Vec::new();
    for (name, package) in REQUIRED_TOOLS {
        let p =
            find_tool(name).with_context(|| format!("{name} is missing (Debian: {package})"))?;
        stage_host_path(&stage, &p)?;
        binaries.push(p);
    }
    for name in OPTIONAL_TOOLS {
        if let Some(p) = find_tool(name) {
            stage_host_path(&stage, &p)?;
            binaries.push(p);
        }
    }
    for e in fs::read_dir(XTABLES_DIR).with_context(|| format!("reading {XTABLES_DIR}"))? {
        let p = e?.path();
        stage_host_path(&stage, &p)?;
        binaries.push(p);
    }
    for lib in ALWAYS_LIBS.iter().map(Path::new).filter(|l| l.exists()) {
        stage_host_path(&stage, lib)?;
    }
    for lib in ldd_closure(&binaries)? {
        stage_host_path(&stage, &lib)?;
    }
    // /bin/sh is dash: Debian's static busybox ash runs its own applets before PATH, so
    // `ip` in a script would be busybox's, not iproute2's.
    symlink("dash", stage.join("usr/bin/sh"))?;
    // Busybox applets fill the gaps (mount, stty, sleep, nc, …), never over a real tool.
    let busybox = fs::canonicalize(find_tool("busybox").context("busybox")?)?;
    let busybox_rel = guest_rel(&busybox);
    let list = run_checked(
        Command::new(&busybox).arg("--list-full"),
        "busybox --list-full",
    )?;
    for applet in list.lines().map(str::trim).filter(|l| l.contains('/')) {
        let rel = guest_rel(Path::new(applet));
        let at = stage.join(&rel);
        if fs::symlink_metadata(&at).is_err() {
            fs::create_dir_all(at.parent().expect("applet has a directory"))?;
            symlink(relative_target(&rel, &busybox_rel), &at)?;
        }
    }

    // The exit helper (see tests/vm/debugexit.c for why it is C).
    let src = out.join("debugexit.c");
    fs::write(&src, DEBUGEXIT_C)?;
    run_checked(
        Command::new(tool("gcc")?)
            .args(["-static", "-O2", "-o"])
            .arg(stage.join("usr/sbin/debugexit"))
            .arg(&src),
        "gcc -static debugexit.c (Debian: gcc, libc6-dev)",
    )?;

    let init = stage.join("init");
    fs::write(&init, INIT_SCRIPT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    fs::write(stage.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(
        stage.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    fs::write(
        stage.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n",
    )?;
    for f in ETC_FILES {
        if Path::new(f).exists() {
            fs::copy(f, stage.join(guest_rel(Path::new(f))))?;
        }
    }

    let manifest = write_tree_cpio(&stage, &out.join("base.cpio"))?;
    fs::write(
        out.join("manifest"),
        manifest
            .iter()
            .map(|m| format!("{m}\n"))
            .collect::<String>(),
    )?;
    fs::write(
        out.join("info"),
        format!(
            "package {} {}\nkernel {kver}\nmodules {} files ({} requested)\nentries {}\n",
            pkg.name,
            pkg.version,
            module_files.len(),
            MODULES.len(),
            manifest.len()
        ),
    )?;
    // Only the products stay cached: the unpacked package holds ~90 MB of modules.
    fs::remove_dir_all(&kpkg)?;
    fs::remove_dir_all(&stage)?;
    fs::remove_dir_all(out.join("download"))?;
    fs::remove_file(&src)?;
    Ok(())
}

/// The skeleton of the guest's root: a merged /usr like the host's, so the library paths
/// that ldd prints work unchanged.
fn stage_layout(stage: &Path) -> Result<()> {
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "etc/vmtest",
        "vmtest/bin",
        "vmtest/disk",
        "var/tmp",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
    ] {
        symlink(target, stage.join(link))?;
    }
    Ok(())
}

/// Copies the host file `host` into the stage at its real (symlink-free) path, and adds a
/// symlink where `host` itself is a symlink (iptables → xtables-nft-multi, libfoo.so.1 →
/// libfoo.so.1.2.3), so multi-call binaries still see the name they were called by.
fn stage_host_path(stage: &Path, host: &Path) -> Result<()> {
    let real = fs::canonicalize(host).with_context(|| format!("resolving {}", host.display()))?;
    let real_rel = guest_rel(&real);
    let dst = stage.join(&real_rel);
    if fs::symlink_metadata(&dst).is_err() {
        fs::create_dir_all(dst.parent().expect("file has a directory"))?;
        fs::copy(&real, &dst).with_context(|| format!("copying {}", real.display()))?;
    }
    let loc = guest_rel(&canonical_parent(host)?);
    let at = stage.join(&loc);
    if loc != real_rel && fs::symlink_metadata(&at).is_err() {
        fs::create_dir_all(at.parent().expect("file has a directory"))?;
        symlink(relative_target(&loc, &real_rel), &at)?;
    }
    Ok(())
}

/// `p` with its directory resolved but its last component kept (a symlink stays a symlink).
fn canonical_parent(p: &Path) -> Result<PathBuf> {
    let parent = p.parent().context("a path with no directory")?;
    let name = p.file_name().context("a path with no name")?;
    Ok(fs::canonicalize(parent)
        .with_context(|| format!("resolving {}", parent.display()))?
        .join(name))
}

/// A guest path, relative to the root, through the guest's top-level symlinks (bin, sbin,
/// lib, lib64 into usr; var/run into run). A payload must never create `bin/` as a
/// directory: the kernel's unpacker would replace the `bin -> usr/bin` symlink.
fn guest_rel(p: &Path) -> String {
    let parts: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().to_string()),
            _ => None,
        })
        .collect();
    let mut rel = parts.join("/");
    for top in ["bin", "sbin", "lib", "lib64"] {
        if parts.first().is_some_and(|f| f == top) {
            rel = format!("usr/{rel}");
        }
    }
    if parts.len() >= 2 && parts[0] == "var" && parts[1] == "run" {
        rel = std::iter::once("run".to_string())
            .chain(parts[2..].iter().cloned())
            .collect::<Vec<_>>()
            .join("/");
    }
    rel
}

/// A relative symlink target from the link at `link` to `target` (both root-relative).
fn relative_target(link: &str, target: &str) -> String {
    let depth = link.matches('/').count();
    format!("{}{target}", "../".repeat(depth))
}

/// The shared libraries `files` load (ldd's transitive list), as host paths.
fn ldd_closure(files: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    if files.is_empty() {
        return Ok(libs);
    }
    // One ldd for all: its exit status is 1 when any argument is static or a script.
    let out = Command::new(tool("ldd")?)
        .args(files)
        .stderr(Stdio::null())
        .output()
        .context("running ldd")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Headers (`/usr/sbin/ip:`) start the line; libraries are indented.
        if !line.starts_with(char::is_whitespace) {
            continue;
        }
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn is_elf(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

// ---------------------------------------------------------------------------------------------
// newc archives.

/// Writes the staged tree as a newc archive (directories before their contents, uid/gid 0,
/// mtime 0), padded to 512 bytes so an appended archive starts aligned: the kernel only
/// finds a second archive at a 4-byte boundary. Returns the entries' paths.
fn write_tree_cpio(stage: &Path, out: &Path) -> Result<BTreeSet<String>> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file), 1);
    let mut manifest = BTreeSet::new();
    add_tree(&mut cpio, stage, stage, &mut manifest)?;
    cpio.finish(512)?;
    Ok(manifest)
}

fn add_tree(
    cpio: &mut Cpio<impl Write>,
    root: &Path,
    dir: &Path,
    manifest: &mut BTreeSet<String>,
) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .to_string();
        let meta = fs::symlink_metadata(&p)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&p)?;
            cpio.symlink(&rel, &target.to_string_lossy())?;
        } else if ft.is_dir() {
            cpio.dir(&rel)?;
            add_tree(cpio, root, &p, manifest)?;
        } else {
            cpio.file_from(&rel, meta.permissions().mode(), &p)?;
        }
        manifest.insert(rel);
    }
    Ok(())
}

/// The payload's entries, written after the base.
#[derive(Default)]
struct PayloadArchive {
    entries: Vec<(String, PayloadEntry)>,
}

enum PayloadEntry {
    Bytes(u32, Vec<u8>),
    Host(PathBuf),
    Symlink(String),
}

impl PayloadArchive {
    fn bytes(&mut self, rel: &str, mode: u32, data: Vec<u8>) {
        self.entries
            .push((rel.to_string(), PayloadEntry::Bytes(mode, data)));
    }
    fn host_file(&mut self, rel: &str, host: &Path) {
        self.entries
            .push((rel.to_string(), PayloadEntry::Host(host.to_path_buf())));
    }
    fn symlink(&mut self, rel: &str, target: String) {
        self.entries
            .push((rel.to_string(), PayloadEntry::Symlink(target)));
    }

    /// Each entry's missing parent directories first: the kernel's unpacker does not create
    /// them.
    fn write(self, out: impl Write) -> Result<()> {
        let mut cpio = Cpio::new(out, 1 << 24);
        let mut dirs = BTreeSet::new();
        for (rel, entry) in &self.entries {
            let parts: Vec<&str> = rel.split('/').collect();
            for i in 1..parts.len() {
                let dir = parts[..i].join("/");
                if dirs.insert(dir.clone()) {
                    cpio.dir(&dir)?;
                }
            }
            match entry {
                PayloadEntry::Bytes(mode, data) => cpio.file(rel, *mode, data)?,
                PayloadEntry::Host(p) => {
                    let mode = fs::metadata(p)?.permissions().mode();
                    cpio.file_from(rel, mode, p)?
                }
                PayloadEntry::Symlink(t) => cpio.symlink(rel, t)?,
            }
        }
        cpio.finish(4)?;
        Ok(())
    }
}

/// A newc ("070701") archive writer: the format the kernel's initramfs unpacker reads.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    len: u64,
}

impl<W: Write> Cpio<W> {
    fn new(out: W, first_ino: u32) -> Self {
        Cpio {
            out,
            ino: first_ino,
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, align: u64) -> io::Result<()> {
        let n = (align - self.len % align) % align;
        self.put(&vec![0u8; n as usize])
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: u64) -> Result<()> {
        let size = u32::try_from(size).with_context(|| format!("{name}: newc holds < 4 GiB"))?;
        let ino = self.ino;
        self.ino += 1;
        let namesize = name.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check.
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
            0, 0, 0, 0, 0, 0, 0, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad(4)?;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.header(name, 0o040755, 2, 0)
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.header(name, 0o120777, 1, target.len() as u64)?;
        self.put(target.as_bytes())?;
        self.pad(4)?;
        Ok(())
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(name, 0o100000 | (mode & 0o7777), 1, data.len() as u64)?;
        self.put(data)?;
        self.pad(4)?;
        Ok(())
    }

    fn file_from(&mut self, name: &str, mode: u32, path: &Path) -> Result<()> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = f.metadata()?.len();
        self.header(name, 0o100000 | (mode & 0o7777), 1, size)?;
        let copied = io::copy(&mut (&mut f).take(size), &mut self.out)?;
        if copied != size {
            bail!("{} shrank while being archived", path.display());
        }
        self.len += copied;
        self.pad(4)?;
        Ok(())
    }

    fn finish(mut self, align: u64) -> Result<W> {
        self.header("TRAILER!!!", 0, 1, 0)?;
        self.pad(align)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// A tool on PATH or in the sbin directories (a non-root PATH often lacks them).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn tool(name: &str) -> Result<PathBuf> {
    find_tool(name).with_context(|| format!("{name} is not installed"))
}

/// Runs `cmd`, returns its stdout; an error carries stderr.
fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

// ---------------------------------------------------------------------------------------------
// Helpers for test bodies in the guest: network namespaces, servers and clients as threads (an
// exec costs ~80–100 ms under TCG), commands.

/// Creates the named network namespace `/run/netns/<name>` in-process (what `ip netns add`
/// does, without its exec): a thread unshares its network namespace and bind-mounts it. Only
/// that thread switches; it ends right after. Panics on failure.
pub fn netns_add(name: &str) {
    let path = format!("/run/netns/{name}");
    fs::create_dir_all("/run/netns").unwrap();
    File::create(&path).unwrap();
    join(std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        mount(
            Some("/proc/thread-self/ns/net"),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind-mounting the new network namespace");
    }))
}

/// Moves the calling thread into the named network namespace (made by [`netns_add`] or
/// `ip netns add`). Panics on failure.
pub fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a thread in the named network namespace; its result, or its panic.
pub fn in_ns<T: Send + 'static>(ns: &'static str, f: impl FnOnce() -> T + Send + 'static) -> T {
    join(std::thread::spawn(move || {
        enter(ns);
        f()
    }))
}

/// Runs `f` on a thread in a new, unnamed network namespace (only that thread moves); child
/// processes it starts inherit the namespace. Its result, or its panic.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    join(std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    }))
}

/// Joins `h`: its result, or its panic resumed in the caller.
pub fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A TCP server thread in `ns` that answers every connection on `addr` with `reply` and
/// closes it; returns once it listens (panics if it does not within 10 s). It runs until the
/// process ends.
pub fn serve<A>(ns: &'static str, addr: A, reply: String)
where
    A: std::net::ToSocketAddrs + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(ns);
        let listener = std::net::TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(reply.as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the backend server did not start");
}

/// Runs `prog args…` with `stdin`, asserts success (the message has stderr and the input),
/// returns stdout.
pub fn cmd(prog: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {prog}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {}: {}\n{}\n--- stdin\n{stdin}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_go_through_the_usr_symlinks() {
        assert_eq!(guest_rel(Path::new("/bin/busybox")), "usr/bin/busybox");
        assert_eq!(guest_rel(Path::new("/lib64/ld.so")), "usr/lib64/ld.so");
        assert_eq!(guest_rel(Path::new("/usr/bin/x")), "usr/bin/x");
        assert_eq!(guest_rel(Path::new("/var/run/netns")), "run/netns");
        assert_eq!(
            guest_rel(Path::new("/opt/kc/usr/bin/kubectl")),
            "opt/kc/usr/bin/kubectl"
        );
        assert_eq!(
            relative_target("usr/sbin/iptables", "usr/sbin/xtables-nft-multi"),
            "../../usr/sbin/xtables-nft-multi"
        );
        assert_eq!(relative_target("bin", "usr/bin"), "usr/bin");
    }

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new(Vec::new(), 1);
        c.file("a", 0o644, b"xyz").unwrap();
        let out = c.finish(512).unwrap();
        assert_eq!(out.len() % 512, 0);
        assert!(out.starts_with(b"070701"));
        // Header (110) + "a\0" = 112, aligned; data 3 bytes padded to 4.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(&out[116..122], b"070701");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn markers_parse() {
        assert_eq!(
            field("uptime=3.21 kernel=6.1.0-57-cloud-amd64", "kernel").as_deref(),
            Some("6.1.0-57-cloud-amd64")
        );
        assert_eq!(field("uptime=3.21", "kernel"), None);
        let mut t = Tail::new(PathBuf::from("/nonexistent"));
        t.partial = b"one\r\ntwo\nthr".to_vec();
        assert_eq!(t.poll(false).unwrap(), vec!["one", "two"]);
        assert_eq!(t.poll(true).unwrap(), vec!["thr"]);
    }

    #[test]
    fn fnv_is_stable() {
        let mut h = Fnv64::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63dc4c8601ec8c);
    }
}
