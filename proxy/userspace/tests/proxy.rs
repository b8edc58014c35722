//! The dataplane driven directly over loopback, unprivileged: listeners bind 127.0.0.1 and the
//! iptables tools are fake scripts that log what they get. Clients connect straight to the
//! listener port (what the REDIRECT/DNAT rules would do in the kernel).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::{Changes, Dataplane, Error as ProxyError};
use sluice_proxy_userspace::{Commands, EndpointSet, UserspaceConfig, UserspaceDataplane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Fake iptables tools in `dir`: restore appends stdin to `restore.log` and exits with the
/// content of `restore_exit` (0 if missing); save prints the `-t` table of `saved`; iptables logs its arguments
/// and fails `-C` (so every jump is inserted).
fn fake_commands(dir: &Path) -> Commands {
    let d = dir.display();
    Commands {
        restore: script(
            dir,
            "restore",
            &format!("cat >> {d}/restore.log\nexit $(cat {d}/restore_exit 2>/dev/null || echo 0)"),
        ),
        save: script(
            dir,
            "save",
            &format!("awk -v t=\"*$2\" '/^\\*/{{p=($0==t)}} p' {d}/saved 2>/dev/null; true"),
        ),
        iptables: script(
            dir,
            "iptables",
            &format!("echo \"$@\" >> {d}/iptables.log\ncase \"$*\" in *' -C '*) exit 1;; esac"),
        ),
        ..Commands::default()
    }
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap_or_default()
}

struct Env {
    dir: tempfile::TempDir,
    dp: UserspaceDataplane,
}

fn env(tune: impl FnOnce(&mut UserspaceConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = UserspaceConfig::new("node-a", "192.168.1.10".parse().unwrap());
    cfg.listen_address = LOOPBACK;
    cfg.commands = fake_commands(dir.path());
    cfg.connect_timeout = Duration::from_millis(500);
    tune(&mut cfg);
    let dp = UserspaceDataplane::new(cfg, tokio::runtime::Handle::current());
    Env { dir, dp }
}

fn spn(name: &str, p: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, "p", p)
}

fn service(
    name: &str,
    p: Protocol,
    affinity: Option<u32>,
    eps: &[SocketAddr],
) -> (ServicePortMap, EndpointsMap) {
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    let mut port = ServicePort::cluster_ip("10.96.0.10".parse().unwrap(), 80, p);
    port.session_affinity_timeout = affinity;
    s.insert(spn(name, p), Arc::new(port));
    e.insert(
        spn(name, p),
        eps.iter()
            .map(|a| Arc::new(Endpoint::ready(a.ip(), a.port())))
            .collect(),
    );
    (s, e)
}

fn full() -> Changes {
    Changes {
        full: true,
        ..Changes::default()
    }
}

fn partial(name: &str) -> Changes {
    let mut c = Changes::default();
    c.services.insert(spn(name, Protocol::Tcp).service());
    c
}

/// A TCP backend answering each connection, after reading the request to EOF, with
/// `<id>:<request bytes>` and closing.
async fn tcp_backend(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut req = Vec::new();
                s.read_to_end(&mut req).await.unwrap();
                s.write_all(format!("{id}:{}", String::from_utf8_lossy(&req)).as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    addr
}

/// A port with nothing listening on it.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
    l.local_addr().unwrap()
}

/// Sends `req` through the proxy on `port`, half-closes, reads the whole answer.
async fn request(port: u16, req: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect((LOOPBACK, port)).await?;
    s.write_all(req.as_bytes()).await?;
    s.shutdown().await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

fn port_of(dp: &UserspaceDataplane, name: &str, p: Protocol) -> u16 {
    dp.proxy_port(&spn(name, p), EndpointSet::Cluster)
        .expect("listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_with_half_close() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a, b]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(request(port, &format!("req{i}")).await.unwrap());
    }
    // Endpoints are sorted by address; a and b are both 127.0.0.1, ordered by port.
    let (first, second) = if a < b { ("a", "b") } else { ("b", "a") };
    assert_eq!(
        got,
        [
            format!("{first}:req0"),
            format!("{second}:req1"),
            format!("{first}:req2"),
            format!("{second}:req3")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_ip_affinity_pins_connections() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, Some(60), &[a, b]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);
    let first = request(port, "x").await.unwrap();
    for _ in 0..4 {
        assert_eq!(request(port, "x").await.unwrap(), first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_refused_endpoint_is_skipped_and_all_refused_resets_client() {
    let live = tcp_backend("live").await;
    let dead = closed_port();
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[dead, live]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);
    // Round robin starts at the dead endpoint for one of every two connections: each must
    // still reach the live one.
    for i in 0..4 {
        assert_eq!(
            request(port, &format!("{i}")).await.unwrap(),
            format!("live:{i}")
        );
    }

    let (s, eps) = service("web", Protocol::Tcp, None, &[dead, closed_port()]);
    e.dp.sync(&s, &eps, &partial("web")).unwrap();
    let t = Instant::now();
    let r = request(port, "x").await;
    assert!(
        matches!(&r, Ok(s) if s.is_empty()) || r.is_err(),
        "client must get nothing: {r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_update_applies_to_next_connection_and_spares_established_ones() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);

    // Established before the update, to a.
    let mut held = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    held.write_all(b"old").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (s, eps) = service("web", Protocol::Tcp, None, &[b]);
    e.dp.sync(&s, &eps, &partial("web")).unwrap();
    assert_eq!(port_of(&e.dp, "web", Protocol::Tcp), port, "same listener");
    assert_eq!(request(port, "new").await.unwrap(), "b:new");
    assert_eq!(e.dp.listeners()[0].endpoints, vec![b]);

    held.shutdown().await.unwrap();
    let mut out = String::new();
    held.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "a:old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_kept_across_syncs_and_closed_when_service_goes() {
    let a = tcp_backend("a").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);

    // No endpoints: the listener stays (rules reject instead), same port when they return.
    let (s0, eps0) = service("web", Protocol::Tcp, None, &[]);
    e.dp.sync(&s0, &eps0, &partial("web")).unwrap();
    assert_eq!(port_of(&e.dp, "web", Protocol::Tcp), port);
    e.dp.sync(&s, &eps, &full()).unwrap();
    assert_eq!(port_of(&e.dp, "web", Protocol::Tcp), port);
    assert_eq!(request(port, "x").await.unwrap(), "a:x");

    e.dp.sync(
        &ServicePortMap::new(),
        &EndpointsMap::new(),
        &partial("web"),
    )
    .unwrap();
    assert!(e.dp.listeners().is_empty());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect((LOOPBACK, port)).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if Instant::now() > deadline => panic!("listener on {port} still open"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    // The last restore has no rules pointing at the port.
    let log = read(e.dir.path(), "restore.log");
    let last = log.rsplit("*filter").next().unwrap();
    assert!(!last.contains(&port.to_string()), "{last}");
}

/// A UDP backend answering each datagram with `<id>:<payload>` and recording the sources.
async fn udp_backend(
    id: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<SocketAddr>) {
    let s = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = s.recv_from(&mut buf).await.unwrap();
            let _ = tx.send(from);
            let reply = format!("{id}:{}", String::from_utf8_lossy(&buf[..n]));
            s.send_to(reply.as_bytes(), from).await.unwrap();
        }
    });
    (addr, rx)
}

async fn udp_ask(c: &UdpSocket, proxy: SocketAddr, msg: &str) -> String {
    c.send_to(msg.as_bytes(), proxy).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
        .await
        .expect("UDP reply")
        .unwrap();
    assert_eq!(from, proxy, "reply must come from the listener socket");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_relay_both_ways_and_expire_when_idle() {
    let (a, mut seen_a) = udp_backend("a").await;
    let mut e = env(|c| c.udp_idle_timeout = Duration::from_millis(150));
    let (s, eps) = service("dns", Protocol::Udp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let proxy = SocketAddr::from((LOOPBACK, port_of(&e.dp, "dns", Protocol::Udp)));

    let c = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    assert_eq!(udp_ask(&c, proxy, "1").await, "a:1");
    assert_eq!(udp_ask(&c, proxy, "2").await, "a:2");
    let f1 = seen_a.recv().await.unwrap();
    assert_eq!(seen_a.recv().await.unwrap(), f1, "same flow while active");

    // A second client gets its own flow.
    let c2 = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    assert_eq!(udp_ask(&c2, proxy, "x").await, "a:x");
    assert_ne!(seen_a.recv().await.unwrap(), f1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(udp_ask(&c, proxy, "3").await, "a:3");
    assert_ne!(
        seen_a.recv().await.unwrap(),
        f1,
        "idle flow expired: new socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_moves_when_its_endpoint_is_removed() {
    let (a, _sa) = udp_backend("a").await;
    let (b, _sb) = udp_backend("b").await;
    let mut e = env(|c| c.udp_idle_timeout = Duration::from_secs(30));
    let (s, eps) = service("dns", Protocol::Udp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let proxy = SocketAddr::from((LOOPBACK, port_of(&e.dp, "dns", Protocol::Udp)));
    let c = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    assert_eq!(udp_ask(&c, proxy, "1").await, "a:1");
    let (s, eps) = service("dns", Protocol::Udp, None, &[b]);
    let mut ch = Changes::default();
    ch.services.insert(spn("dns", Protocol::Udp).service());
    e.dp.sync(&s, &eps, &ch).unwrap();
    assert_eq!(udp_ask(&c, proxy, "2").await, "b:2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_restored_only_when_they_change_and_jumps_on_full_syncs() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);
    let log = read(e.dir.path(), "restore.log");
    assert!(
        log.contains(&format!("-j REDIRECT --to-ports {port}"))
            && log.contains(&format!("-j DNAT --to-destination 192.168.1.10:{port}")),
        "{log}"
    );
    let ipt = read(e.dir.path(), "iptables.log");
    assert_eq!(
        ipt.lines().filter(|l| l.contains(" -I ")).count(),
        sluice_proxy_userspace::chains::BASE_JUMPS.len()
    );

    // Endpoint change only: same rules, no restore, no jump checks.
    let (s2, eps2) = service("web", Protocol::Tcp, None, &[b]);
    e.dp.sync(&s2, &eps2, &partial("web")).unwrap();
    assert_eq!(read(e.dir.path(), "restore.log"), log);
    assert_eq!(read(e.dir.path(), "iptables.log"), ipt);

    // Endpoints gone: rules change (reject).
    let (s0, eps0) = service("web", Protocol::Tcp, None, &[]);
    e.dp.sync(&s0, &eps0, &partial("web")).unwrap();
    let log2 = read(e.dir.path(), "restore.log");
    assert!(log2[log.len()..].contains("-j REJECT --reject-with tcp-reset"));

    // A full sync always restores and re-checks the jumps.
    e.dp.sync(&s0, &eps0, &full()).unwrap();
    assert_eq!(read(e.dir.path(), "restore.log").matches("*nat").count(), 3);
    assert!(read(e.dir.path(), "iptables.log").len() > ipt.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restore_is_a_sync_error_and_keeps_the_old_listeners() {
    let a = tcp_backend("a").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);
    std::fs::write(e.dir.path().join("restore_exit"), "1").unwrap();
    let err =
        e.dp.sync(
            &ServicePortMap::new(),
            &EndpointsMap::new(),
            &partial("web"),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::Sync {
                dataplane: "userspace",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(port_of(&e.dp, "web", Protocol::Tcp), port);
    assert_eq!(request(port, "x").await.unwrap(), "a:x");
    std::fs::write(e.dir.path().join("restore_exit"), "0").unwrap();
    e.dp.sync(&ServicePortMap::new(), &EndpointsMap::new(), &full())
        .unwrap();
    assert!(e.dp.listeners().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_closes_listeners_and_deletes_only_our_chains() {
    let a = tcp_backend("a").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    assert_eq!(e.dp.name(), "userspace");
    std::fs::write(
        e.dir.path().join("saved"),
        "*nat\n:PREROUTING ACCEPT [0:0]\n:SLUICE-SERVICES - [0:0]\n:SLUICEUS-PORTALS-CONTAINER - [0:0]\n\
-A PREROUTING -m comment --comment \"sluice userspace portals\" -j SLUICEUS-PORTALS-CONTAINER\nCOMMIT\n",
    )
    .unwrap();
    let before = read(e.dir.path(), "restore.log");
    e.dp.cleanup().unwrap();
    assert!(e.dp.listeners().is_empty());
    let text = read(e.dir.path(), "restore.log")[before.len()..].to_string();
    assert!(text.contains("-X SLUICEUS-PORTALS-CONTAINER"), "{text}");
    assert!(text.contains(
        "-D PREROUTING -m comment --comment \"sluice userspace portals\" -j SLUICEUS-PORTALS-CONTAINER"
    ));
    assert!(!text.contains("SLUICE-SERVICES"));

    // Nothing of ours left: no restore at all.
    std::fs::write(
        e.dir.path().join("saved"),
        "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
    )
    .unwrap();
    let before = read(e.dir.path(), "restore.log");
    sluice_proxy_userspace::cleanup_rules_with(&fake_commands(e.dir.path())).unwrap();
    assert_eq!(read(e.dir.path(), "restore.log"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_lists_listeners_and_programmed_rules() {
    let a = tcp_backend("a").await;
    let mut e = env(|_| {});
    let (s, eps) = service("web", Protocol::Tcp, None, &[a]);
    e.dp.sync(&s, &eps, &full()).unwrap();
    let port = port_of(&e.dp, "web", Protocol::Tcp);
    // Pretend the kernel holds exactly what was restored.
    std::fs::copy(e.dir.path().join("restore.log"), e.dir.path().join("saved")).unwrap();
    let d = e.dp.dump();
    assert!(
        d.starts_with(&format!(
            "# listener default/web:p cluster tcp :{port} -> {a}\n"
        )),
        "{d}"
    );
    assert!(d.ends_with(&read(e.dir.path(), "restore.log")), "{d}");
}

#[test]
fn config_defaults() {
    let c = UserspaceConfig::new("n", "10.0.0.1".parse().unwrap());
    assert_eq!(c.udp_idle_timeout, Duration::from_millis(250));
    assert_eq!(c.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.listen_address, IpAddr::from([0, 0, 0, 0]));
    assert_eq!(c.commands, Commands::default());
}
