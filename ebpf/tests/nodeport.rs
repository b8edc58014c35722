//! Privileged functional test of the tc NodePort programs against the real kernel.
//!
//! Two fresh network namespaces joined by a veth pair: "node" (`ext0`, 192.168.77.1/24, a
//! local backend 10.250.1.1 on `lo`) and "outside" (`out0`, the client 192.168.77.2 and two
//! remote backends 192.168.77.3 and .4). The programs are attached to `ext0`; everything runs
//! on threads that joined one of the namespaces. A load-balancer IP with
//! `loadBalancerSourceRanges` is modelled by an EXT front end on the node address (any
//! address the node receives will do) flagged `SVC_SRC_RANGES`.
//!
//! The scenario runs once per way of attaching the programs this kernel has: tcx links (Linux
//! 6.6+) and netlink cls_bpf filters on a clsact qdisc (every kernel; what kernels before 6.6
//! get), each in fresh namespaces.
//!
//! Not root / no `ip`: prints `SKIP: <reason>` and passes, unless `SLUICE_REQUIRE_ALL=1`.

mod common;

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    thread,
    time::Duration,
};

use common::{enter_netns, put_frontend, run, Bpffs};
use sluice_ebpf::{
    abi::{self, Backend},
    LoadOptions, Loader, Maps, TcAttachMethod, TcConfig, TcHook,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const REMOTE1: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 3);
const REMOTE2: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 4);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 1);
const SNAT: (u16, u16) = (61000, 61999);

fn main() {
    if common::answered_listing("nodeport") {
        return;
    }
    if let Some(reason) = common::cannot_run() {
        return common::skip(&reason);
    }
    let mut methods = vec![TcAttachMethod::for_this_kernel()];
    if methods[0] != TcAttachMethod::Netlink {
        methods.push(TcAttachMethod::Netlink);
    }
    for method in methods {
        let env = Env::new(method);
        // The loader resolves `ext0` and attaches in the calling thread's netns.
        let node = env.node.clone();
        let outside = env.outside.clone();
        let pin_dir = env.pin_dir.clone();
        let result = thread::spawn(move || {
            enter_netns(&node);
            nodeport(&pin_dir, &node, &outside, method)
        })
        .join();
        drop(env);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        println!("nodeport ({method:?}): ok");
    }
}

struct Env {
    node: String,
    outside: String,
    pin_dir: PathBuf,
    _bpffs: Bpffs,
}

impl Env {
    fn new(method: TcAttachMethod) -> Self {
        let pid = std::process::id();
        let m = match method {
            TcAttachMethod::Tcx => "tcx",
            TcAttachMethod::Netlink => "nl",
        };
        let bpffs = Bpffs::new(&format!("ebpf-nodeport-test-{m}"));
        let env = Self {
            node: format!("sluice-np-node-{m}-{pid}"),
            outside: format!("sluice-np-out-{m}-{pid}"),
            pin_dir: bpffs.root.join(format!("sluice-np-test-{m}-{pid}")),
            _bpffs: bpffs,
        };
        let (n, o) = (env.node.as_str(), env.outside.as_str());
        run("ip", &["netns", "add", n]);
        run("ip", &["netns", "add", o]);
        run(
            "ip",
            &[
                "-n", n, "link", "add", "ext0", "type", "veth", "peer", "name", "out0", "netns", o,
            ],
        );
        run("ip", &["-n", n, "link", "set", "lo", "up"]);
        run("ip", &["-n", n, "link", "set", "ext0", "up"]);
        run(
            "ip",
            &["-n", n, "addr", "add", "192.168.77.1/24", "dev", "ext0"],
        );
        run(
            "ip",
            &["-n", n, "addr", "add", "10.250.1.1/32", "dev", "lo"],
        );
        run("ip", &["-n", o, "link", "set", "lo", "up"]);
        run("ip", &["-n", o, "link", "set", "out0", "up"]);
        // The first address is the client's source for 192.168.77.1.
        for a in ["192.168.77.2/24", "192.168.77.3/24", "192.168.77.4/24"] {
            run("ip", &["-n", o, "addr", "add", a, "dev", "out0"]);
        }
        env
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Err(e) = sluice_ebpf::detach_all(&self.pin_dir, None, None) {
            eprintln!("cleanup: detach_all: {e}");
        }
        // Deleting the namespaces removes the veth pair and with it the tcx links or filters.
        for ns in [&self.node, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// TCP servers answering `<own address> saw <peer>`, UDP servers echoing the same, each on a
/// thread in netns `ns`.
fn serve(ns: &str, tcp: &[SocketAddrV4], udp: &[SocketAddrV4]) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ns, tcp, udp) = (ns.to_string(), tcp.to_vec(), udp.to_vec());
    thread::spawn(move || {
        enter_netns(&ns);
        for addr in udp {
            let s = UdpSocket::bind(addr).unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{} saw {from}", addr.ip()).as_bytes(), from);
                }
            });
        }
        let listeners: Vec<TcpListener> =
            tcp.iter().map(|a| TcpListener::bind(a).unwrap()).collect();
        tx.send(()).unwrap();
        for l in listeners {
            thread::spawn(move || {
                let me = l.local_addr().unwrap().ip();
                for conn in l.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let peer = conn.peer_addr().unwrap();
                    let _ = conn.write_all(format!("{me} saw {peer}").as_bytes());
                }
            });
        }
    });
    rx.recv().unwrap();
}

/// From netns `ns`: connect `n` times; each answer, or `err <kind>`.
fn tcp_client(ns: &str, target: SocketAddrV4, n: usize) -> Vec<String> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter_netns(&ns);
        (0..n)
            .map(|_| {
                match TcpStream::connect_timeout(&target.into(), Duration::from_millis(1500)) {
                    Ok(mut s) => {
                        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        let mut out = String::new();
                        match s.read_to_string(&mut out) {
                            Ok(_) => out,
                            Err(e) => format!("err read {:?}", e.kind()),
                        }
                    }
                    Err(e) => format!("err {:?}", e.kind()),
                }
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// From netns `ns`: one unconnected UDP socket, `n` datagrams; `<payload> from <source>`.
fn udp_client(ns: &str, target: SocketAddrV4, n: usize) -> Vec<String> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (0..n)
            .map(|_| {
                s.send_to(b"ping", target).unwrap();
                let mut buf = [0u8; 128];
                match s.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        format!("{} from {from}", String::from_utf8_lossy(&buf[..len]))
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => "timeout".into(),
                    Err(e) => format!("err {:?}", e.kind()),
                }
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// A UDP socket created in netns `ns` (it stays there whichever thread uses it).
fn udp_socket_in(ns: &str) -> UdpSocket {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
    .join()
    .unwrap()
}

/// One datagram to `target` and its answer (`<payload>`), or `timeout`.
fn udp_ask(s: &UdpSocket, target: SocketAddrV4) -> String {
    s.send_to(b"ping", target).unwrap();
    let mut buf = [0u8; 128];
    match s.recv_from(&mut buf) {
        Ok((len, _)) => String::from_utf8_lossy(&buf[..len]).into_owned(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            "timeout".into()
        }
        Err(e) => format!("err {:?}", e.kind()),
    }
}

fn dropped(answers: &[String]) -> bool {
    answers
        .iter()
        .all(|a| a == "err TimedOut" || a == "err WouldBlock")
}

/// Write a NodePort front end on the node's address, as traffic from outside sees it.
fn put_ext_service(
    maps: &mut Maps,
    port: u16,
    proto: u8,
    svc_id: u32,
    flags: u8,
    backend_ids: &[u32],
) {
    let flags = flags | abi::SVC_NODEPORT;
    put_frontend(
        maps,
        NODE_IP,
        port,
        proto,
        abi::SCOPE_EXT,
        svc_id,
        flags,
        backend_ids,
    );
}

/// `192.168.77.3 saw 192.168.77.1:61234` -> ("192.168.77.3", "192.168.77.1", 61234).
fn parse_saw(line: &str) -> (String, Ipv4Addr, u16) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert!(w.len() >= 3 && w[1] == "saw", "unexpected answer {line:?}");
    let peer: SocketAddrV4 = w[2].parse().unwrap();
    (w[0].to_string(), *peer.ip(), peer.port())
}

/// `tc <args>` in netns `ns`: its stdout.
fn tc(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "tc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attachments on `ext0` are the method's: two tcx links, or Sluice's two cls_bpf filters
/// at the documented priority and handle (and nothing else on the clsact qdisc).
fn check_attachments(links: &[sluice_ebpf::AttachedLink], node_ns: &str, method: TcAttachMethod) {
    assert_eq!(links.len(), 2, "{links:?}");
    match method {
        TcAttachMethod::Tcx => assert!(
            links
                .iter()
                .all(|l| l.link_id != 0 && l.tc_filter.is_none()),
            "{links:?}"
        ),
        TcAttachMethod::Netlink => {
            let mut hooks = Vec::new();
            for l in links {
                let f = l.tc_filter.expect("a cls_bpf filter");
                assert_eq!(
                    (l.link_id, f.priority, f.handle),
                    (
                        0,
                        sluice_ebpf::TC_FILTER_PRIORITY,
                        sluice_ebpf::TC_FILTER_HANDLE
                    ),
                    "{links:?}"
                );
                hooks.push(f.hook);
            }
            hooks.sort();
            assert_eq!(hooks, vec![TcHook::Ingress, TcHook::Egress]);
            for (hook, name) in [
                ("ingress", "sluice_nodeport_ingress"),
                ("egress", "sluice_nodeport_egress"),
            ] {
                let shown = tc(node_ns, &["filter", "show", "dev", "ext0", hook]);
                let filters: Vec<&str> = shown.lines().filter(|l| l.contains(" handle ")).collect();
                assert_eq!(filters.len(), 1, "{shown}");
                assert!(
                    filters[0].contains("pref 50000 bpf")
                        && filters[0].contains("handle 0x1 ")
                        && filters[0].contains(name)
                        && filters[0].contains("direct-action"),
                    "{shown}"
                );
            }
        }
    }
}

fn nodeport(pin_dir: &std::path::Path, node_ns: &str, outside: &str, method: TcAttachMethod) {
    serve(
        outside,
        &[
            SocketAddrV4::new(REMOTE1, 8080),
            SocketAddrV4::new(REMOTE2, 8080),
        ],
        &[SocketAddrV4::new(REMOTE1, 5353)],
    );
    // This thread is already in the node netns: serve the node-side servers from here.
    let local = TcpListener::bind(SocketAddrV4::new(LOCAL, 8080)).unwrap();
    let plain = TcpListener::bind(SocketAddrV4::new(NODE_IP, 22222)).unwrap();
    for l in [local, plain] {
        thread::spawn(move || {
            let me = l.local_addr().unwrap().ip();
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let peer = conn.peer_addr().unwrap();
                let _ = conn.write_all(format!("{me} saw {peer}").as_bytes());
            }
        });
    }

    let opts = LoadOptions::new(pin_dir);
    let config = TcConfig {
        node_ip: NODE_IP,
        snat_ports: SNAT,
    };
    let mut loader = Loader::load(opts.clone()).expect("load");
    loader
        .attach_tc_with("ext0", &config, method)
        .expect("attach_tc");
    let links = sluice_ebpf::attached_links(None, Some("ext0")).unwrap();
    check_attachments(&links, node_ns, method);

    let mut maps = loader.maps().unwrap();
    let tcp = abi::IPPROTO_TCP;
    maps.put_backend(1, &Backend::new(REMOTE1, 8080, tcp, 0))
        .unwrap();
    maps.put_backend(2, &Backend::new(REMOTE2, 8080, tcp, 0))
        .unwrap();
    maps.put_backend(3, &Backend::new(LOCAL, 8080, tcp, abi::BACKEND_LOCAL))
        .unwrap();
    // Deliberately not flagged local: ETP Local alone must keep the client address.
    maps.put_backend(4, &Backend::new(LOCAL, 8080, tcp, 0))
        .unwrap();
    maps.put_backend(5, &Backend::new(REMOTE1, 5353, abi::IPPROTO_UDP, 0))
        .unwrap();
    put_ext_service(&mut maps, 30080, tcp, 1, 0, &[1, 2]);
    put_ext_service(&mut maps, 30081, tcp, 2, 0, &[3]);
    put_ext_service(&mut maps, 30082, tcp, 3, abi::SVC_EXT_LOCAL, &[4]);
    put_ext_service(&mut maps, 30083, tcp, 4, 0, &[]);
    put_ext_service(&mut maps, 30084, tcp, 5, abi::SVC_AFFINITY, &[1, 2]);
    put_ext_service(&mut maps, 30053, abi::IPPROTO_UDP, 6, 0, &[5]);

    // Cluster policy, remote backends: SNAT to the node IP with a port from the range, both
    // backends used, and the reply reaches the client.
    let answers = tcp_client(outside, SocketAddrV4::new(NODE_IP, 30080), 30);
    let mut per_backend = BTreeMap::new();
    for a in &answers {
        let (backend, peer, port) = parse_saw(a);
        assert_eq!(peer, NODE_IP, "remote backend must see the node IP: {a}");
        assert!((SNAT.0..=SNAT.1).contains(&port), "SNAT port {port}: {a}");
        *per_backend.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(per_backend.len(), 2, "{answers:?}");

    // The same with IPv4 forwarding on (as on a real node): bpf_fib_lookup then succeeds and
    // the program rewrites the MACs itself (above, it fell back to bpf_redirect_neigh).
    run(
        "ip",
        &[
            "netns",
            "exec",
            node_ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.forwarding=1",
        ],
    );
    for a in tcp_client(outside, SocketAddrV4::new(NODE_IP, 30080), 6) {
        let (_, peer, port) = parse_saw(&a);
        assert!(peer == NODE_IP && (SNAT.0..=SNAT.1).contains(&port), "{a}");
    }

    // Local backend: DNAT only, the pod sees the client; the reply is rewritten on egress.
    for a in tcp_client(outside, SocketAddrV4::new(NODE_IP, 30081), 5) {
        let (backend, peer, _) = parse_saw(&a);
        assert_eq!((backend.as_str(), peer), ("10.250.1.1", CLIENT), "{a}");
    }

    // externalTrafficPolicy Local: the client address is kept.
    for a in tcp_client(outside, SocketAddrV4::new(NODE_IP, 30082), 5) {
        let (backend, peer, _) = parse_saw(&a);
        assert_eq!((backend.as_str(), peer), ("10.250.1.1", CLIENT), "{a}");
    }

    // No backends: dropped (a timeout; without the program the node would refuse, nothing
    // listens on 30083).
    let answers = tcp_client(outside, SocketAddrV4::new(NODE_IP, 30083), 1);
    assert!(
        answers[0] == "err TimedOut" || answers[0] == "err WouldBlock",
        "{answers:?}"
    );

    // Affinity by client IP: one backend.
    let answers = tcp_client(outside, SocketAddrV4::new(NODE_IP, 30084), 12);
    let used: std::collections::BTreeSet<String> = answers.iter().map(|a| parse_saw(a).0).collect();
    assert_eq!(used.len(), 1, "{answers:?}");

    // UDP NodePort to a remote backend: replies come from the frontend.
    for a in udp_client(outside, SocketAddrV4::new(NODE_IP, 30053), 5) {
        assert!(
            a.starts_with("192.168.77.3 saw 192.168.77.1:")
                && a.ends_with("from 192.168.77.1:30053"),
            "{a}"
        );
    }

    // Not a frontend: untouched.
    let answers = tcp_client(outside, SocketAddrV4::new(NODE_IP, 22222), 1);
    assert_eq!(parse_saw(&answers[0]).1, CLIENT, "{answers:?}");

    source_ranges(&mut maps, outside);
    planned_source_ranges(&mut maps, outside);

    let dump = maps.dump_text().unwrap();
    assert!(dump.contains("config node=192.168.77.1 ifindex="), "{dump}");
    assert!(
        dump.contains("svc 192.168.77.1:30090/tcp ext slot=0 count=1 id=7 flags=src-ranges\n"),
        "{dump}"
    );
    assert!(dump.contains("srcrange id=7 192.168.77.0/30\n"), "{dump}");

    // Restart: same links or filters (programs replaced in place), maps and conntrack kept. A
    // flow established before the restart keeps going through it (UDP: the same backend and
    // SNAT port, from the programs' connection table).
    let flow = udp_socket_in(outside);
    let before = udp_ask(&flow, SocketAddrV4::new(NODE_IP, 30053));
    assert!(
        before.starts_with("192.168.77.3 saw 192.168.77.1:"),
        "{before}"
    );
    drop(maps);
    drop(loader);
    // The agent is gone: what it attached still translates.
    assert_eq!(udp_ask(&flow, SocketAddrV4::new(NODE_IP, 30053)), before);
    // As if the pins came from a build without the source range map: it is created.
    std::fs::remove_file(pin_dir.join(abi::SRCRANGE_MAP)).unwrap();
    let mut loader = Loader::load(opts.clone()).expect("reload");
    loader
        .attach_tc_with("ext0", &config, method)
        .expect("re-attach");
    let again = sluice_ebpf::attached_links(None, Some("ext0")).unwrap();
    check_attachments(&again, node_ns, method);
    for (a, b) in links.iter().zip(&again) {
        assert_eq!((a.link_id, a.tc_filter), (b.link_id, b.tc_filter));
        assert_ne!(a.prog_id, b.prog_id);
    }
    assert_eq!(udp_ask(&flow, SocketAddrV4::new(NODE_IP, 30053)), before);
    let answers = tcp_client(outside, SocketAddrV4::new(NODE_IP, 30080), 4);
    assert!(
        answers.iter().all(|a| parse_saw(a).1 == NODE_IP),
        "{answers:?}"
    );
    // The new (empty) source range map is the one the programs use: the flagged front end
    // drops until its range is written again.
    assert!(pin_dir.join(abi::SRCRANGE_MAP).exists());
    let mut maps = loader.maps().unwrap();
    assert!(maps.iter_srcranges().unwrap().is_empty());
    let lb = SocketAddrV4::new(NODE_IP, 30090);
    assert!(dropped(&tcp_client(outside, lb, 1)));
    maps.put_srcrange(7, CLIENT, 30).unwrap();
    let answers = tcp_client(outside, lb, 2);
    assert!(
        answers.iter().all(|a| parse_saw(a).1 == CLIENT),
        "{answers:?}"
    );
    drop(maps);

    // detach_all: nothing translated any more (nothing listens on 30080: refused).
    sluice_ebpf::detach_all(pin_dir, None, Some("ext0")).unwrap();
    assert!(sluice_ebpf::attached_links(None, Some("ext0"))
        .unwrap()
        .is_empty());
    let answers = tcp_client(outside, SocketAddrV4::new(NODE_IP, 30080), 1);
    assert_eq!(answers, vec!["err ConnectionRefused".to_string()]);
    assert!(!pin_dir.exists(), "{} is left", pin_dir.display());

    if method == TcAttachMethod::Netlink {
        // The clsact qdisc the attach added went with the filters.
        let qdiscs = tc(node_ns, &["qdisc", "show", "dev", "ext0"]);
        assert!(!qdiscs.contains("clsact"), "{qdiscs}");
        // One that was there before stays (someone else's), without Sluice's filters.
        tc(node_ns, &["qdisc", "add", "dev", "ext0", "clsact"]);
        let mut loader = Loader::load(opts).expect("load again");
        loader
            .attach_tc_with("ext0", &config, method)
            .expect("attach to an existing clsact");
        check_attachments(
            &sluice_ebpf::attached_links(None, Some("ext0")).unwrap(),
            node_ns,
            method,
        );
        drop(loader);
        sluice_ebpf::detach_all(pin_dir, None, Some("ext0")).unwrap();
        assert!(sluice_ebpf::attached_links(None, Some("ext0"))
            .unwrap()
            .is_empty());
        let qdiscs = tc(node_ns, &["qdisc", "show", "dev", "ext0"]);
        assert!(qdiscs.contains("clsact"), "{qdiscs}");
        for hook in ["ingress", "egress"] {
            let shown = tc(node_ns, &["filter", "show", "dev", "ext0", hook]);
            assert!(shown.trim().is_empty(), "{shown}");
        }
        assert!(!pin_dir.exists(), "{} is left", pin_dir.display());
    }
}

/// `loadBalancerSourceRanges`: a flagged EXT front end answers new flows only from its ranges;
/// established flows are not checked again; unflagged front ends ignore the ranges.
fn source_ranges(maps: &mut Maps, outside: &str) {
    let tcp = abi::IPPROTO_TCP;
    let udp = abi::IPPROTO_UDP;
    // svc 7: TCP to the local backend (DNAT only, the backend sees the client); svc 8: UDP to
    // the remote echo server. Both flagged, not NodePorts.
    put_frontend(
        maps,
        NODE_IP,
        30090,
        tcp,
        abi::SCOPE_EXT,
        7,
        abi::SVC_SRC_RANGES,
        &[3],
    );
    put_frontend(
        maps,
        NODE_IP,
        30091,
        udp,
        abi::SCOPE_EXT,
        8,
        abi::SVC_SRC_RANGES,
        &[5],
    );
    let lb = SocketAddrV4::new(NODE_IP, 30090);
    let lb_udp = SocketAddrV4::new(NODE_IP, 30091);

    // Flagged without any range: nothing is allowed. Dropped, not refused.
    assert!(dropped(&tcp_client(outside, lb, 1)));

    // Ranges that leave the client (192.168.77.2) out, including a neighbour /31 and a range of
    // another front end that would allow it.
    maps.put_srcrange(7, Ipv4Addr::new(10, 0, 0, 0), 8).unwrap();
    maps.put_srcrange(7, Ipv4Addr::new(192, 168, 77, 128), 25)
        .unwrap();
    maps.put_srcrange(7, Ipv4Addr::new(192, 168, 77, 4), 31)
        .unwrap();
    maps.put_srcrange(9, CLIENT, 32).unwrap();
    let answers = tcp_client(outside, lb, 2);
    assert!(dropped(&answers), "{answers:?}");
    // The NodePort to the same backend, not flagged, is unaffected.
    for a in tcp_client(outside, SocketAddrV4::new(NODE_IP, 30081), 2) {
        let (backend, peer, _) = parse_saw(&a);
        assert_eq!((backend.as_str(), peer), ("10.250.1.1", CLIENT), "{a}");
    }

    // A range that holds the client (host bits in the address are cleared): answered.
    maps.put_srcrange(7, Ipv4Addr::new(192, 168, 77, 3), 30)
        .unwrap();
    let answers = tcp_client(outside, lb, 3);
    for a in &answers {
        assert_eq!(parse_saw(a).1, CLIENT, "{answers:?}");
    }
    // The other ranges go; the client's stays.
    maps.delete_srcrange(7, Ipv4Addr::new(10, 0, 0, 0), 8)
        .unwrap();
    maps.delete_srcrange(7, Ipv4Addr::new(192, 168, 77, 128), 25)
        .unwrap();
    maps.delete_srcrange(7, Ipv4Addr::new(192, 168, 77, 4), 31)
        .unwrap();
    maps.delete_srcrange(9, CLIENT, 32).unwrap();
    maps.delete_srcrange(9, CLIENT, 32).unwrap(); // absent: no error
    assert_eq!(
        maps.iter_srcranges()
            .unwrap()
            .iter()
            .map(|k| (k.svc_id, k.addr(), k.prefix()))
            .collect::<Vec<_>>(),
        vec![(7, Ipv4Addr::new(192, 168, 77, 0), 30)]
    );
    assert_eq!(parse_saw(&tcp_client(outside, lb, 1)[0]).1, CLIENT);

    // UDP: a flow that started while allowed keeps going after its range is removed (its
    // conntrack entry is not checked again); a new flow (another source port) is dropped.
    maps.put_srcrange(8, CLIENT, 32).unwrap();
    let flow = udp_socket_in(outside);
    let first = udp_ask(&flow, lb_udp);
    assert!(
        first.starts_with("192.168.77.3 saw 192.168.77.1:"),
        "{first}"
    );
    maps.delete_srcrange(8, CLIENT, 32).unwrap();
    let again = udp_ask(&flow, lb_udp);
    assert_eq!(
        again, first,
        "the established flow keeps its SNAT port and backend"
    );
    let other = udp_socket_in(outside);
    assert_eq!(udp_ask(&other, lb_udp), "timeout");
}

/// The planner and the mode's map writer/reader on the real maps: a LoadBalancer service whose
/// LB IP is the node address, with source ranges that change. Only partial plans, so the front
/// ends written by hand above stay.
fn planned_source_ranges(maps: &mut Maps, outside: &str) {
    use sluice_ebpf::mode::{read_current, write};
    use sluice_ebpf::plan::{self, Model};
    use sluice_proxy::model::{
        Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
    };
    use std::sync::Arc;

    // A backend of its own (10.250.1.1:8081), so no backend of the hand-written services is
    // touched.
    let l = TcpListener::bind(SocketAddrV4::new(LOCAL, 8081)).unwrap();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn.peer_addr().unwrap();
            let _ = conn.write_all(format!("10.250.1.1 saw {peer}").as_bytes());
        }
    });
    let cfg = plan::Config {
        node_name: "node".into(),
        node_ips: vec![NODE_IP],
    };
    let name = ServicePortName::new("default", "lb", "http", Protocol::Tcp);
    let model_of = |ranges: &[&str]| {
        let mut svc =
            ServicePort::cluster_ip(Ipv4Addr::new(10, 96, 5, 5).into(), 30095, Protocol::Tcp);
        svc.load_balancer_ips = vec![NODE_IP.into()];
        svc.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
        let mut ep = Endpoint::ready(LOCAL.into(), 8081);
        ep.is_local = true;
        ep.node_name = Some("node".into());
        let mut s = ServicePortMap::new();
        let mut e = EndpointsMap::new();
        s.insert(name.clone(), Arc::new(svc));
        e.insert(name.clone(), vec![Arc::new(ep)]);
        (s, e)
    };
    let mut model = Model::default();
    let mut sync = |ranges: Option<&[&str]>, maps: &mut Maps| -> String {
        let (s, e) = match ranges {
            Some(r) => model_of(r),
            None => (ServicePortMap::new(), EndpointsMap::new()),
        };
        let mut current = read_current(maps).unwrap();
        let touched = model.update([&name], &s, &e, &cfg, &BTreeMap::new());
        let ops = plan::plan_some(
            model.desired(),
            &current,
            &touched.frontends,
            &touched.backends,
        );
        for op in &ops {
            write(maps, op).unwrap();
            current.apply(op);
        }
        // What the maps hold now is what the planner believes, and nothing is left to do.
        let reread = read_current(maps).unwrap();
        assert_eq!(reread, current);
        assert!(plan::plan_some(
            model.desired(),
            &reread,
            &touched.frontends,
            &touched.backends
        )
        .is_empty());
        ops.iter().map(|o| format!("{o}\n")).collect()
    };
    let lb = SocketAddrV4::new(NODE_IP, 30095);

    let ops = sync(Some(&["10.0.0.0/8"]), maps);
    let range = ops.find("put srcrange id=").expect(&ops);
    let flag = ops
        .find("192.168.77.1:30095/tcp ext slot 0 count=1")
        .expect(&ops);
    assert!(
        range < flag && ops[flag..].lines().next().unwrap().ends_with(" src-ranges"),
        "{ops}"
    );
    let answers = tcp_client(outside, lb, 2);
    assert!(dropped(&answers), "{answers:?}");

    // The client's network added and the other range removed: answered, client address kept
    // (local backend).
    let ops = sync(Some(&["192.168.77.0/24"]), maps);
    assert!(
        ops.contains("delete srcrange") && !ops.contains("put svc"),
        "{ops}"
    );
    for a in tcp_client(outside, lb, 3) {
        let (backend, peer, _) = parse_saw(&a);
        assert_eq!((backend.as_str(), peer), ("10.250.1.1", CLIENT), "{a}");
    }

    // No ranges: the flag goes, everyone is answered.
    let ops = sync(Some(&[]), maps);
    let flag = ops
        .find("192.168.77.1:30095/tcp ext slot 0 count=1")
        .expect(&ops);
    let range = ops.find("delete srcrange id=").expect(&ops);
    assert!(
        flag < range && !ops[flag..].lines().next().unwrap().ends_with(" src-ranges"),
        "{ops}"
    );
    assert_eq!(parse_saw(&tcp_client(outside, lb, 1)[0]).1, CLIENT);

    // The service goes, with its front ends; nothing of it is left in the range map.
    sync(Some(&["10.0.0.0/8"]), maps);
    let ops = sync(None, maps);
    assert!(ops.contains("delete srcrange"), "{ops}");
    assert!(maps
        .iter_srcranges()
        .unwrap()
        .iter()
        .all(|k| k.addr() != Ipv4Addr::new(10, 0, 0, 0)));
    assert_eq!(
        tcp_client(outside, lb, 1),
        vec!["err ConnectionRefused".to_string()]
    );
}
