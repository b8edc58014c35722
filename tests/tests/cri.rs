//! containerd's CRI end to end with sluice-cni: a private containerd 1.6 runs in lab node n1's
//! network namespace with n1's conflist; RunPodSandbox gets an address in n1's podCIDR; a
//! busybox container pings a lab pod on n1 and one on n2; Stop + Remove release the lease
//! (containerd calls DEL twice, the second time with no netns and no prevResult).
//!
//! Deviations from a plain `ip netns exec`: containerd is started as
//! `unshare --mount --propagation private nsenter --net=/run/netns/<n1> containerd`, because
//! `ip netns exec` remounts /sys and hides the cgroup tree runc needs (ARCHITECTURE §5); the
//! private mount namespace still keeps every containerd mount (overlay rootfs, netns pins)
//! out of the host's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::Value;
use sluice_tests::{bin, is_root, lab, ok, skip, target_dir, text};
use tonic::transport::{Channel, Endpoint, Uri};

const PAUSE: &str = sluice_images::PAUSE;
const BUSYBOX: &str = sluice_images::BUSYBOX;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Brings the lab down even when an assertion fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = lab(&["down", "--dir", &self.0.to_string_lossy()]);
        }
    }
}

/// Our containerd: SIGTERM then SIGKILL, then every process left in its private mount
/// namespace (shims, containers) by pid, then its cgroup parent directories.
struct Containerd {
    child: Child,
    /// Its mount namespace (`mnt:[inode]`), once known.
    mnt_ns: Option<PathBuf>,
    /// An open handle on that namespace, closed only after the cleanup in `Drop`: it keeps the
    /// namespace, and so its inode number, alive. Without it the kernel hands the number of a
    /// namespace whose last process just died to the next new one (every `ip netns exec` makes
    /// one), and the cleanup loop would SIGKILL an unrelated process, such as another test's
    /// kubectl.
    _mnt_ns_handle: Option<std::fs::File>,
    cgroup_parent: String,
    log: PathBuf,
}

impl Containerd {
    fn pids_in_ns(&self) -> Vec<u32> {
        let Some(want) = &self.mnt_ns else {
            return vec![];
        };
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .ok()
                    .as_ref()
                    == Some(want)
            })
            .collect()
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id();
        kill("-TERM", pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The private mount namespace (and with it every mount containerd made) goes away
        // with its last process.
        for _ in 0..50 {
            let left = self.pids_in_ns();
            if left.is_empty() {
                break;
            }
            for p in left {
                kill("-KILL", p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // cgroup v1: runc removes the containers' cgroups, not the parent we asked for.
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                let d = c.path().join(self.cgroup_parent.trim_start_matches('/'));
                if d.is_dir() {
                    let _ = std::fs::remove_dir(&d);
                }
            }
        }
    }
}

async fn channel(sock: PathBuf) -> anyhow::Result<Channel> {
    Ok(Endpoint::try_from("http://[::]")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await?)
}

fn config_toml(ctd: &Path, cni_bin: &Path, cni_conf: &Path) -> String {
    let d = ctd.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{d}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{}"
    conf_dir = "{}"
    max_conf_num = 1
    conf_template = ""
"#,
        cni_bin.display(),
        cni_conf.display()
    )
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').expect("CIDR");
    let p = |s: &str| -> u32 {
        s.parse::<std::net::Ipv4Addr>()
            .map(u32::from)
            .unwrap_or_else(|_| panic!("bad IPv4 {s}"))
    };
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    p(ip) & mask == p(net) & mask
}

#[test]
fn containerd_cri_pod_on_sluice_cni() {
    if !is_root() {
        return skip("containerd CRI needs root (namespaces, mounts, cgroups)");
    }
    for tool in [
        "containerd",
        "ctr",
        "gcc",
        "strip",
        "tar",
        "sha256sum",
        "unshare",
        "nsenter",
    ] {
        if !have(tool) {
            return skip(&format!("{tool} is missing"));
        }
    }
    if !Path::new("/usr/sbin/runc").exists() {
        return skip("runc (/usr/sbin/runc) is missing");
    }
    if !Path::new("/bin/busybox").exists() {
        return skip("busybox-static (/bin/busybox) is missing");
    }
    for p in ["loopback", "portmap"] {
        if !Path::new("/usr/lib/cni").join(p).exists() {
            return skip(&format!(
                "/usr/lib/cni/{p} is missing (containernetworking-plugins)"
            ));
        }
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(&dir);
    ok(lab(&["up", "--nodes", "2", "--dir", &d]));
    println!("lab up in {:?}", started.elapsed());
    let cluster: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let node = |name: &str| -> Value {
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no node {name} in {cluster}"))
    };
    let n1 = node("n1");
    let n1_ns = n1["netns"].as_str().unwrap().to_string();
    let n1_cidr = n1["podCIDR"].as_str().unwrap().to_string();
    let n2_cidr = node("n2")["podCIDR"].as_str().unwrap().to_string();

    // Lab pods to ping: one on each node (made through sluice-lab's own CNI calls).
    let bb = "/bin/busybox";
    ok(lab(&[
        "pod", "create", "--dir", &d, "--node", "n1", "--name", "peer1", "--", bb, "sleep", "600",
    ]));
    ok(lab(&[
        "pod", "create", "--dir", &d, "--node", "n2", "--name", "peer2", "--", bb, "sleep", "600",
    ]));
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let pod_ip = |name: &str| -> String {
        state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["ip"].as_str())
            .unwrap_or_else(|| panic!("no ip for {name}: {state}"))
            .to_string()
    };
    let peer1 = pod_ip("peer1");
    let peer2 = pod_ip("peer2");
    assert!(in_cidr(&peer1, &n1_cidr), "{peer1} in {n1_cidr}");
    assert!(in_cidr(&peer2, &n2_cidr), "{peer2} in {n2_cidr}");

    // Images.
    let work = tmp.path().join("images");
    std::fs::create_dir_all(&work).unwrap();
    // All three are imported (the echo image too, so a broken tarball shows here); the
    // sandbox uses PAUSE and the container BUSYBOX.
    let tarballs = sluice_images::write_all(&work).expect("writing the image tarballs");

    // CNI: bin_dir holds a logging wrapper around sluice-cni plus loopback and portmap;
    // conf_dir holds n1's conflist. The IPAM store is the one the lab uses for n1, so the
    // sandbox and the lab's pods on n1 share one allocator (as on a real node), never the
    // machine's /var/lib/cni.
    let cni_bin = tmp.path().join("cni-bin");
    let cni_conf = tmp.path().join("cni-conf");
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::fs::create_dir_all(&cni_conf).unwrap();
    let cni_log = tmp.path().join("cni-calls.log");
    let wrapper = cni_bin.join("sluice-cni");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND netns=$CNI_NETNS\" >> {}\nexec {} \"$@\"\n",
            cni_log.display(),
            target_dir().join("sluice-cni").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(bin("sluice-cni").exists());
    for p in ["loopback", "portmap"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), cni_bin.join(p)).unwrap();
    }
    let ipam_dir = dir.join("nodes/n1/ipam");
    let mut conflist: Value = serde_json::from_slice(
        &std::fs::read(dir.join("nodes/n1/net.d/10-sluice.conflist")).expect("n1's conflist"),
    )
    .unwrap();
    // containerd 1.6's libcni (CNI 1.0) and Debian's portmap 1.1.1 reject cniVersion 1.1.0
    // (seen on this machine kind): hand them the 1.0.0 form of the same network.
    let agent_version = conflist["cniVersion"].clone();
    conflist["cniVersion"] = "1.0.0".into();
    conflist["plugins"][0]["ipam"]["dataDir"] = ipam_dir.to_string_lossy().into();
    println!("conflist: agent wrote cniVersion {agent_version}, handing containerd 1.0.0");
    std::fs::write(
        cni_conf.join("10-sluice.conflist"),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    let net_name = conflist["name"].as_str().unwrap().to_string();

    // containerd in n1's netns, private mount namespace, everything under tmp.
    let ctd = tmp.path().join("ctd");
    std::fs::create_dir_all(&ctd).unwrap();
    let config = ctd.join("config.toml");
    std::fs::write(&config, config_toml(&ctd, &cni_bin, &cni_conf)).unwrap();
    let sock = ctd.join("containerd.sock");
    let log = ctd.join("containerd.log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "nsenter"])
        .arg(format!("--net=/run/netns/{n1_ns}"))
        .arg("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("spawning containerd");
    let mut ctd_proc = Containerd {
        child,
        mnt_ns: None,
        _mnt_ns_handle: None,
        cgroup_parent: format!("/sluice-cri-{}", std::process::id()),
        log: log.clone(),
    };
    let t = Instant::now();
    while !sock.exists() {
        if let Ok(Some(st)) = ctd_proc.child.try_wait() {
            panic!("containerd exited {st}:\n{}", ctd_proc.log_tail());
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "containerd socket did not appear:\n{}",
            ctd_proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    // Hold the namespace first, then name what is held (see `Containerd::_mnt_ns_handle`).
    let handle = std::fs::File::open(format!("/proc/{}/ns/mnt", ctd_proc.child.id())).unwrap();
    let ns = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&handle)
    ))
    .unwrap();
    assert_ne!(
        ns, host_mnt,
        "containerd must run in its own mount namespace"
    );
    ctd_proc.mnt_ns = Some(ns);
    ctd_proc._mnt_ns_handle = Some(handle);
    println!("containerd up in {:?}", t.elapsed());

    for (_, tarball) in &tarballs {
        let o = Command::new("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tarball)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ctr import {}: {}",
            tarball.display(),
            text(&o)
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt.block_on(scenario(Scenario {
        sock: sock.clone(),
        cgroup_parent: ctd_proc.cgroup_parent.clone(),
        logs: tmp.path().join("pod-logs"),
        n1_cidr,
        peer1,
        peer2,
        lease_dir: ipam_dir.join(&net_name),
        cni_log: cni_log.clone(),
    }));
    if let Err(e) = res {
        panic!(
            "{e:#}\n--- containerd log (tail)\n{}\n--- CNI calls\n{}",
            ctd_proc.log_tail(),
            std::fs::read_to_string(&cni_log).unwrap_or_default()
        );
    }
    let t = Instant::now();
    drop(ctd_proc);
    println!("containerd stopped in {:?}", t.elapsed());
    let t = Instant::now();
    ok(lab(&["down", "--dir", &d]));
    println!(
        "lab down in {:?}; total {:?}",
        t.elapsed(),
        started.elapsed()
    );
}

struct Scenario {
    sock: PathBuf,
    cgroup_parent: String,
    logs: PathBuf,
    n1_cidr: String,
    peer1: String,
    peer2: String,
    lease_dir: PathBuf,
    cni_log: PathBuf,
}

async fn scenario(s: Scenario) -> anyhow::Result<()> {
    let ch = channel(s.sock.clone()).await?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch);

    let v = rt
        .version(cri::VersionRequest::default())
        .await?
        .into_inner();
    println!(
        "CRI: {} {} api {}",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    // NetworkReady needs containerd to have loaded the conflist.
    let t = Instant::now();
    loop {
        let st = rt.status(cri::StatusRequest::default()).await?.into_inner();
        let conds = st.status.map(|s| s.conditions).unwrap_or_default();
        if conds.iter().filter(|c| c.status).count() >= 2 {
            break;
        }
        if t.elapsed() > Duration::from_secs(15) {
            bail!("runtime not ready: {conds:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let images = img
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner();
    let tags: Vec<String> = images
        .images
        .iter()
        .flat_map(|i| i.repo_tags.clone())
        .collect();
    for want in [PAUSE, sluice_images::ECHO, BUSYBOX] {
        if !tags.iter().any(|t| t == want) {
            bail!("image {want} not listed by CRI: {tags:?}");
        }
    }

    std::fs::create_dir_all(&s.logs)?;
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "cri-probe".into(),
            uid: format!("uid-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "cri-probe".into(),
        log_directory: s.logs.to_string_lossy().into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: s.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let run_took = t.elapsed();
    println!("RunPodSandbox took {run_took:?} ({id})");

    let res = pod_checks(&mut rt, &s, &id, sandbox_config).await;

    // Always tear the sandbox down, even when a check failed.
    let stop = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await;
    let remove = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await;
    let ip = res?;
    stop.context("StopPodSandbox")?;
    remove.context("RemovePodSandbox (includes the second CNI DEL)")?;

    let lease = s.lease_dir.join(&ip);
    if lease.exists() {
        bail!(
            "lease {} still exists after RemovePodSandbox",
            lease.display()
        );
    }
    let calls = std::fs::read_to_string(&s.cni_log)?;
    let lines: Vec<&str> = calls.lines().collect();
    println!("sluice-cni calls: {lines:?}");
    let adds = lines.iter().filter(|l| l.starts_with("ADD ")).count();
    let dels_with_ns = lines
        .iter()
        .filter(|l| l.starts_with("DEL ") && *l != &"DEL netns=")
        .count();
    let dels_without_ns = lines.iter().filter(|l| **l == "DEL netns=").count();
    if adds != 1 || dels_with_ns != 1 || dels_without_ns != 1 {
        bail!("expected ADD, DEL with netns and DEL with empty CNI_NETNS, got {lines:?}");
    }
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    if !left.is_empty() {
        bail!("sandboxes left: {left:?}");
    }
    if run_took > Duration::from_secs(10) {
        bail!("RunPodSandbox took {run_took:?}");
    }
    Ok(())
}

/// Status, container, pings. Returns the sandbox IP.
async fn pod_checks(
    rt: &mut RuntimeServiceClient<Channel>,
    s: &Scenario,
    id: &str,
    sandbox_config: cri::PodSandboxConfig,
) -> anyhow::Result<String> {
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?;
    let ip = st.network.map(|n| n.ip).unwrap_or_default();
    println!("sandbox state={} ip={ip}", st.state);
    if st.state != cri::PodSandboxState::SandboxReady as i32 {
        bail!("sandbox not ready: state {}", st.state);
    }
    if ip.is_empty() || !in_cidr(&ip, &s.n1_cidr) {
        bail!("sandbox IP {ip:?} is not in n1's podCIDR {}", s.n1_cidr);
    }
    if !s.lease_dir.join(&ip).exists() {
        bail!(
            "no lease file {} for the sandbox",
            s.lease_dir.join(&ip).display()
        );
    }

    let cid = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sleep".into(), "3600".into()],
                log_path: "main/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await
    .context("StartContainer")?;

    let exec = |cmd: Vec<String>| {
        let mut rt = rt.clone();
        let cid = cid.clone();
        async move {
            rt.exec_sync(cri::ExecSyncRequest {
                container_id: cid,
                cmd,
                timeout: 10,
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let addr = exec(vec![
        "ip".into(),
        "-4".into(),
        "addr".into(),
        "show".into(),
        "eth0".into(),
    ])
    .await
    .context("ExecSync ip addr")?;
    let addr_out = String::from_utf8_lossy(&addr.stdout);
    if !addr_out.contains(&format!("inet {ip}/")) {
        bail!("eth0 in the container lacks {ip}: {addr_out}");
    }
    for (what, target) in [("n1 pod", &s.peer1), ("n2 pod", &s.peer2)] {
        let t = Instant::now();
        let r = exec(
            ["ping", "-c1", "-W3", target.as_str()]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
        .await
        .with_context(|| format!("ExecSync ping {target}"))?;
        if r.exit_code != 0 {
            bail!(
                "ping {what} {target} from the CRI pod failed (exit {}): {} {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        println!("ping {what} {target}: ok in {:?}", t.elapsed());
    }
    rt.stop_container(cri::StopContainerRequest {
        container_id: cid.clone(),
        timeout: 2,
    })
    .await
    .context("StopContainer")?;
    rt.remove_container(cri::RemoveContainerRequest { container_id: cid })
        .await
        .context("RemoveContainer")?;
    Ok(ip)
}
