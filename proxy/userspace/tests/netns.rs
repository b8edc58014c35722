//! Privileged: the real dataplane with real `iptables-restore` inside a fresh network namespace
//! (never the root namespace's firewall: every iptables command goes through
//! `ip netns exec <test netns>`, and the sockets live on threads that joined that namespace).
//! Prints `SKIP: <reason>` and returns when not root or when `ip`/iptables are missing; fails
//! instead under `SLUICE_REQUIRE_ALL=1` (CI), like the `sluice-tests` suites.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::{Changes, Dataplane};
use sluice_proxy_userspace::{Commands, UserspaceConfig, UserspaceDataplane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

/// Twin of `sluice_tests::skip` (tests/src/lib.rs; a dev-dependency on `sluice-tests` would
/// pull kube, tonic and containerd's CRI into this crate and loop back, since `sluice-tests`
/// depends on the proxy crates). Prints `SKIP: <why>` on stdout and stderr and, when
/// `SLUICE_REQUIRE_ALL` is `1` or `true`, panics so the test fails. Keep both in step.
#[track_caller]
fn skip(why: &str) {
    println!("SKIP: {why}");
    eprintln!("SKIP: {why}");
    let flag = std::env::var("SLUICE_REQUIRE_ALL").unwrap_or_default();
    if flag.trim() == "1" || flag.trim().eq_ignore_ascii_case("true") {
        panic!(
            "this test could not run: {why} (SLUICE_REQUIRE_ALL is set, so every test must \
             really run here; install what is missing, see .ci/run)"
        );
    }
}

/// Why this machine cannot run the test (not root, a tool missing), if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables-restore", "iptables-save", "iptables"] {
        if !sh(&["sh", "-c", &format!("command -v {tool} >/dev/null")]) {
            return Some(format!("{tool} not found"));
        }
    }
    None
}

fn wrapper(dir: &Path, ns: &str, tool: &str) -> std::path::PathBuf {
    let p = dir.join(tool);
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec ip netns exec {ns} {tool} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn svc(
    s: &mut ServicePortMap,
    e: &mut EndpointsMap,
    name: &str,
    vip: &str,
    port: u16,
    eps: &[SocketAddr],
) {
    let n = ServicePortName::new("default", name, "", Protocol::Tcp);
    s.insert(
        n.clone(),
        Arc::new(ServicePort::cluster_ip(
            vip.parse().unwrap(),
            port,
            Protocol::Tcp,
        )),
    );
    e.insert(
        n,
        eps.iter()
            .map(|a| Arc::new(Endpoint::ready(a.ip(), a.port())))
            .collect(),
    );
}

/// Sends `msg` over a new TCP connection to `addr`, half-closes, returns the whole answer.
async fn ask(addr: &str, msg: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(msg.as_bytes()).await.unwrap();
    c.shutdown().await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

#[test]
fn real_iptables_in_a_netns_redirects_rejects_and_cleans_up() {
    if let Some(r) = skip_reason() {
        return skip(&r);
    }
    let ns = Netns(format!("sluiceus-t-{}", std::process::id()));
    assert!(sh(&["ip", "netns", "add", &ns.0]));
    let node_ip = Ipv4Addr::new(10, 99, 0, 1);
    for cmd in [
        "ip link set lo up",
        "ip addr add 10.99.0.1/32 dev lo",
        "ip route add 10.96.0.0/16 dev lo src 10.99.0.1",
        "ip route add 203.0.113.0/24 dev lo src 10.99.0.1",
    ] {
        let mut args = vec!["ip", "netns", "exec", &ns.0];
        args.extend(cmd.split(' '));
        assert!(sh(&args), "{cmd}");
    }
    let dir = tempfile::tempdir().unwrap();
    let commands = Commands {
        restore: wrapper(dir.path(), &ns.0, "iptables-restore"),
        save: wrapper(dir.path(), &ns.0, "iptables-save"),
        iptables: wrapper(dir.path(), &ns.0, "iptables"),
        ..Commands::default()
    };
    let save = commands.save.clone();
    let ns_path = format!("/run/netns/{}", ns.0);

    // Everything with sockets runs on a thread inside the namespace; the runtime's workers are
    // spawned from it and inherit the namespace.
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let backend = tokio::net::TcpListener::bind((node_ip, 18080)).await.unwrap();
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = backend.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut req = Vec::new();
                        s.read_to_end(&mut req).await.unwrap();
                        s.write_all(b"pong:").await.unwrap();
                        s.write_all(&req).await.unwrap();
                    });
                }
            });
            let mut cfg = UserspaceConfig::new("node-a", node_ip);
            cfg.commands = commands;
            let mut dp = UserspaceDataplane::new(cfg, tokio::runtime::Handle::current());
            let (mut s, mut e) = (ServicePortMap::new(), EndpointsMap::new());
            svc(&mut s, &mut e, "web", "10.96.0.10", 80, &[(node_ip, 18080).into()]);
            svc(&mut s, &mut e, "empty", "10.96.0.11", 81, &[]);
            // LB IPs with loadBalancerSourceRanges: host traffic leaves from 10.99.0.1.
            for (name, lb, port, range) in [
                ("lb-ok", "203.0.113.10", 82, "10.99.0.0/24"),
                ("lb-deny", "203.0.113.11", 83, "192.0.2.0/24"),
            ] {
                svc(&mut s, &mut e, name, "10.96.0.12", port, &[(node_ip, 18080).into()]);
                let n = ServicePortName::new("default", name, "", Protocol::Tcp);
                let mut sp = (*s[&n]).clone();
                sp.load_balancer_ips = vec![lb.parse().unwrap()];
                sp.load_balancer_source_ranges = vec![range.parse().unwrap()];
                s.insert(n, Arc::new(sp));
            }
            let full = Changes {
                full: true,
                ..Changes::default()
            };
            dp.sync(&s, &e, &full).unwrap();

            // Host-originated traffic to the ClusterIP: nat OUTPUT DNAT → listener → backend.
            assert_eq!(ask("10.96.0.10:80", "ping").await, "pong:ping");

            // No endpoints: refused at once by SLUICEUS-REJECT.
            let t = Instant::now();
            let err = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect("10.96.0.11:81"),
            )
            .await
            .expect("REJECT must answer, not drop")
            .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
            assert!(t.elapsed() < Duration::from_secs(1));

            // An allowed source reaches the backend through the LB IP; another is dropped.
            assert_eq!(ask("203.0.113.10:82", "lb").await, "pong:lb");
            let denied = tokio::time::timeout(
                Duration::from_millis(1500),
                tokio::net::TcpStream::connect("203.0.113.11:83"),
            )
            .await;
            assert!(denied.is_err(), "not in loadBalancerSourceRanges: dropped, got {denied:?}");

            // The dump reads back exactly what was rendered (canonical iptables-save forms).
            let dump = dp.dump();
            let port = dp
                .listeners()
                .iter()
                .find(|l| &*l.key.service.name == "web")
                .expect("web's listener")
                .port;
            assert!(dump.contains(&format!(
                "-A SLUICEUS-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web cluster IP\" -m tcp --dport 80 -j DNAT --to-destination 10.99.0.1:{port}\n"
            )), "{dump}");
            assert!(dump.contains(
                "-A SLUICEUS-REJECT -d 10.96.0.11/32 -p tcp -m comment --comment \"default/empty has no endpoints\" -m tcp --dport 81 -j REJECT --reject-with tcp-reset\n"
            ), "{dump}");
            assert!(dump.contains(
                "-A SLUICEUS-REJECT -d 203.0.113.11/32 -p tcp -m comment --comment \"default/lb-deny traffic not accepted by loadBalancerSourceRanges\" -m tcp --dport 83 -j DROP\n"
            ), "{dump}");
            // Idempotent jumps: a second full sync adds none.
            dp.sync(&s, &e, &full).unwrap();
            assert_eq!(dp.dump(), dump);

            dp.cleanup().unwrap();
        });
    })
    .join()
    .unwrap();

    let saved = Command::new(&save).output().unwrap();
    let saved = String::from_utf8_lossy(&saved.stdout);
    assert!(!saved.contains("SLUICEUS"), "{saved}");
}
