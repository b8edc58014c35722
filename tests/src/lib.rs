//! Sluice's integration, privileged and end-to-end suites.
//!
//! This crate is outside the workspace's `default-members`, so a plain `cargo test` stays
//! unprivileged. Its `tests/*.rs` drive real binaries: the control plane over TLS with
//! kubectl (Debian's 1.20 and the preinstalled one) and kube-rs. This library holds the
//! shared harness: locating binaries and clients, and a control-plane process that is killed
//! and cleaned up on drop. [`vm`] runs a test body inside a qemu VM with Debian's 6.1 cloud
//! kernel, for what the host's kernel lacks (IPVS, dummy links, loadable modules).
//!
//! A test that cannot run here (no root, a tool or kernel feature missing) calls [`skip`]: it
//! prints `SKIP: <why>` and returns, or fails when `SLUICE_REQUIRE_ALL=1` (CI). A check that
//! does not apply by design calls [`not_applicable`] (`N/A: <why>`), which never fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod vm;

/// The workspace's target directory for the running profile (`target/debug`).
pub fn target_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; the test command builds them first (`cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before these tests (scripts/test does)",
        p.display()
    );
    p
}

/// The environment variable that turns every [`skip`] into a failure: `1` or `true` (any case)
/// means every tier must really run here. CI's `.ci/run` sets it; a developer's machine without
/// root or a tool leaves it unset and sees `SKIP:` lines instead.
pub const REQUIRE_ALL: &str = "SLUICE_REQUIRE_ALL";

/// Whether [`REQUIRE_ALL`] is set to `1` or `true` in this process's environment.
pub fn require_all() -> bool {
    require_all_value(std::env::var(REQUIRE_ALL).ok().as_deref())
}

/// Whether a value of [`REQUIRE_ALL`] (`None` when unset) asks for every test to run.
fn require_all_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim() == "1" || v.trim().eq_ignore_ascii_case("true"))
}

/// Reports that this test cannot run on this machine because something it needs is missing:
/// root, a tool or package (kubectl, `nft`, containerd, the reference CNI plugins…), a kernel
/// feature. Prints `SKIP: <why>` on stdout and stderr; the caller then returns (or leaves out
/// the part that needs the missing thing), and the test counts as passed.
///
/// With `SLUICE_REQUIRE_ALL=1` (or `true`; see [`REQUIRE_ALL`]) it panics instead, so the test
/// fails: CI's machine is set up to run every tier, and a test that silently did nothing there
/// would hide a broken setup or a missing package.
///
/// Not for checks a component cannot meet *by design* (a userspace proxy cannot preserve the
/// client address, say): those use [`not_applicable`], which never fails. `skip` means "this
/// machine lacks something", `not_applicable` means "this case does not apply, anywhere".
#[track_caller]
pub fn skip(why: &str) {
    skip_or_fail(why, require_all());
}

/// [`skip`] with the flag's value passed in (so the unit tests need not touch the environment).
#[track_caller]
fn skip_or_fail(why: &str, require_all: bool) {
    println!("SKIP: {why}");
    eprintln!("SKIP: {why}");
    if require_all {
        panic!(
            "this test could not run: {why} ({REQUIRE_ALL} is set, so every test must really run \
             here; install what is missing, see .ci/run)"
        );
    }
}

/// Reports a check that does not apply to what is under test, by design, on any machine: e.g.
/// the conformance suite's userspace mode cannot keep the client address under
/// `externalTrafficPolicy: Local` (the agent itself connects to the backend) nor keep
/// connections across an agent restart (they live in the agent process). Prints
/// `N/A: <why>` on stdout and stderr and never fails, whatever [`REQUIRE_ALL`] says: nothing
/// installed could make the check run. For something missing on this machine use [`skip`].
pub fn not_applicable(why: &str) {
    println!("N/A: {why}");
    eprintln!("N/A: {why}");
}

/// A kubectl binary to drive the API with.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The binary.
    pub path: PathBuf,
    /// Its `gitVersion`, for messages.
    pub label: String,
}

impl Kubectl {
    /// Debian's kubectl 1.20 (package `kubernetes-client`, unpacked with `dpkg-deb -x` because
    /// it clashes with the preinstalled kubectl), from `SLUICE_KUBECTL_120` or `/opt/kc`.
    pub fn debian_120() -> Option<Kubectl> {
        let p = std::env::var_os("SLUICE_KUBECTL_120")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/kc/usr/bin/kubectl"));
        p.exists().then(|| Kubectl {
            path: p,
            label: "kubectl 1.20 (Debian)".into(),
        })
    }

    /// The preinstalled (newest versioned) kubectl of the image, or `kubectl` on PATH.
    pub fn preinstalled() -> Option<Kubectl> {
        let dir = Path::new("/usr/lib/google-cloud-sdk/bin");
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let minor = name.strip_prefix("kubectl.1.")?.parse().ok()?;
                Some((minor, e.path()))
            })
            .collect();
        versioned.sort();
        if let Some((minor, p)) = versioned.pop() {
            return Some(Kubectl {
                path: p,
                label: format!("kubectl 1.{minor} (preinstalled)"),
            });
        }
        let out = Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .ok()?;
        out.status.success().then(|| Kubectl {
            path: PathBuf::from("kubectl"),
            label: "kubectl (PATH)".into(),
        })
    }

    /// Runs kubectl with a kubeconfig and a fresh HOME (so the discovery cache starts empty).
    pub fn run(&self, kubeconfig: &Path, home: &Path, args: &[&str]) -> Output {
        self.command(kubeconfig, home, args)
            .output()
            .expect("running kubectl")
    }

    /// Like [`Kubectl::run`] with stdin.
    pub fn run_stdin(&self, kubeconfig: &Path, home: &Path, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(kubeconfig, home, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// The command, for callers that stream output (`get -w`).
    pub fn command(&self, kubeconfig: &Path, home: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        c.env("HOME", home)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--request-timeout=20s")
            .args(args);
        c
    }
}

/// Why a lab with a containerd per node cannot run here (`None`: it can): root, containerd
/// and ctr (Debian package containerd), runc, and the preinstalled kubectl to drive it.
pub fn containerd_lab_unavailable() -> Option<String> {
    if !is_root() {
        return Some("the lab needs root (namespaces, containerd)".into());
    }
    for tool in ["containerd", "ctr"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is missing (Debian package containerd)"));
        }
    }
    if !Path::new("/usr/sbin/runc").exists() {
        return Some("runc is missing".into());
    }
    if Kubectl::preinstalled().is_none() {
        return Some("no kubectl on this machine".into());
    }
    None
}

/// Whether this process runs as root (the privileged tiers need it).
pub fn is_root() -> bool {
    status_says_root(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

fn status_says_root(status: &str) -> bool {
    status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Runs `sluice-lab` with `args`.
pub fn lab(args: &[&str]) -> Output {
    Command::new(bin("sluice-lab"))
        .args(args)
        .output()
        .expect("running sluice-lab")
}

/// Runs `cmd` to completion (panics if it cannot be started).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `ip args…` and asserts it succeeded.
pub fn ip_ok(args: &[&str]) {
    let o = run(Command::new("ip").args(args));
    assert!(o.status.success(), "ip {}: {}", args.join(" "), text(&o));
}

/// A kubectl for suites that need any one: 1.33, else Debian's 1.20, else the newest
/// preinstalled.
pub fn kubectl_path() -> Option<PathBuf> {
    [
        PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.33"),
        PathBuf::from("/opt/kc/usr/bin/kubectl"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .or_else(|| Kubectl::preinstalled().map(|k| k.path))
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Output as text (stdout + stderr), for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The store a [`ControlPlane`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded redb in the data directory (the default).
    Redb,
    /// A one-member etcd cluster started for the control plane, in `<data dir>/etcd`.
    Etcd,
}

/// Defines each listed test once per store backend, in modules `redb` and `etcd`:
/// `redb::<name>` and `etcd::<name>` call `<name>(Backend::…)` (a sync fn, or an async fn
/// after `async:`). Without etcd installed, the etcd variants [`skip`].
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)? ; async: $($aname:ident),* $(,)?) => {
        $crate::on_both_stores!(@mod redb, Redb; $($name),*; $($aname),*);
        $crate::on_both_stores!(@mod etcd, Etcd; $($name),*; $($aname),*);
    };
    (@mod $m:ident, $backend:ident; $($name:ident),*; $($aname:ident),*) => {
        mod $m {
            $(
                #[test]
                fn $name() {
                    if $crate::backend_missing($crate::Backend::$backend) {
                        return;
                    }
                    super::$name($crate::Backend::$backend)
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $aname() {
                    if $crate::backend_missing($crate::Backend::$backend) {
                        return;
                    }
                    super::$aname($crate::Backend::$backend).await
                }
            )*
        }
    };
}

/// Whether `backend` cannot run here (after reporting it with [`skip`]).
pub fn backend_missing(backend: Backend) -> bool {
    match backend {
        Backend::Redb => false,
        Backend::Etcd => match sluice_store::testing::etcd_binary() {
            Ok(_) => false,
            Err(why) => {
                skip(&why);
                true
            }
        },
    }
}

/// A `sluice-control` process.
pub struct ControlPlane {
    /// Data directory.
    pub dir: PathBuf,
    /// Bound address.
    pub addr: SocketAddr,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// The etcd cluster of a [`Backend::Etcd`] control plane (outlives restarts).
    etcd: Option<sluice_store::testing::EtcdCluster>,
}

impl ControlPlane {
    /// Starts the binary on an ephemeral port with `dir` as its data directory.
    pub fn start(dir: &Path, extra_args: &[&str]) -> anyhow::Result<ControlPlane> {
        Self::start_on(dir, "127.0.0.1:0".parse()?, extra_args)
    }

    /// [`ControlPlane::start`] on `backend`; for etcd, a one-member cluster is started first,
    /// in `dir/etcd`.
    pub fn start_with(
        backend: Backend,
        dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<ControlPlane> {
        match backend {
            Backend::Redb => Self::start(dir, extra_args),
            Backend::Etcd => {
                let etcd = sluice_store::testing::EtcdCluster::start(&dir.join("etcd"), 1)
                    .map_err(anyhow::Error::msg)?;
                let endpoints = etcd.endpoints_arg();
                let mut args = vec!["--store", "etcd", "--etcd-endpoints", &endpoints];
                args.extend_from_slice(extra_args);
                let mut cp = Self::start(dir, &args)?;
                cp.etcd = Some(etcd);
                Ok(cp)
            }
        }
    }

    fn start_on(
        dir: &Path,
        listen: SocketAddr,
        extra_args: &[&str],
    ) -> anyhow::Result<ControlPlane> {
        let mut child = Command::new(bin("sluice-control"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning sluice-control")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("sluice-control serving on https://") {
                        break a.trim().parse::<SocketAddr>()?;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    bail!("sluice-control did not report its address within 30 s");
                }
            }
        };
        Ok(ControlPlane {
            dir: dir.to_path_buf(),
            addr,
            kubeconfig: dir.join("admin.kubeconfig"),
            child: Some(child),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            etcd: None,
        })
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed on the way out).
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Crashes and starts again on the same address and data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.crash();
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::start_on(&self.dir, self.addr, &args) {
                Ok(mut n) => {
                    self.child = n.child.take();
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart retry: {e:#}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The process id (for RSS readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Polls `f` until it returns Some or the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_all_values() {
        for on in ["1", "true", "TRUE", "True", " 1\n"] {
            assert!(require_all_value(Some(on)), "{on:?}");
        }
        for off in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("no"),
            Some("yes"),
        ] {
            assert!(!require_all_value(off), "{off:?}");
        }
    }

    #[test]
    fn skip_only_prints_without_the_flag() {
        skip_or_fail("a tool is missing", false);
        not_applicable("by design");
    }

    #[test]
    #[should_panic(
        expected = "this test could not run: a tool is missing (SLUICE_REQUIRE_ALL is set"
    )]
    fn skip_fails_with_the_flag() {
        skip_or_fail("a tool is missing", true);
    }

    #[test]
    fn status_uid_field() {
        assert!(status_says_root("Name:\tx\nUid:\t1000\t0\t0\t0\n"));
        assert!(!status_says_root("Uid:\t0\t1000\t1000\t1000\n"));
        assert!(!status_says_root(""));
    }
}
