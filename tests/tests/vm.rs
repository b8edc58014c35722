//! Tests that boot a VM with Debian's 6.1 cloud kernel (the harness: `sluice_tests::vm`,
//! docs/vm-tests.md), for what the host kernel lacks: IPVS, dummy links, loadable modules.
//!
//! * `vm_kernel_smoke`: the self-exec pattern end to end. In the guest (kernel 6.1, root, no
//!   network device) it prints `vm kernel: <release>`, checks that IPVS answers (`ipvsadm
//!   -Ln`), builds a director with a dummy link `sluice-ipvs0` holding a virtual IP, two
//!   backend namespaces behind a bridge and a client namespace, and checks that an IPVS
//!   round-robin service spreads TCP connections evenly over both backends; then that nft
//!   and iptables-restore load kube-proxy-like rules, and that the iptables DNAT rules carry
//!   traffic too. Servers and clients are threads of the test process in the namespaces
//!   (an exec costs ~80 ms under TCG).
//! * `vm_harness_disk_payload_exit_code`: the disk payload route, and a failing guest command
//!   whose exit code comes back.
//! * `vm_harness_reports_crash`: a guest kernel panic is reported as a crash, with the
//!   console's tail, not as a pass.
//!
//! Without qemu (or, before the kernel cache exists, root and apt-get) the tests print
//! `SKIP: <reason>` and return; under `SLUICE_REQUIRE_ALL=1` they fail instead.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use sluice_tests::vm::{self, cmd, enter, netns_add, serve, Payload, Vm};

#[test]
fn vm_kernel_smoke() {
    if vm::in_vm() {
        smoke_in_guest();
        return;
    }
    if !vm::available_or_skip() {
        return;
    }
    let run = Vm::builder()
        .timeout(Duration::from_secs(180))
        .run_self("vm_kernel_smoke");
    run.assert_debian_kernel();
}

#[test]
fn vm_harness_disk_payload_exit_code() {
    if vm::in_vm() {
        return;
    }
    if !vm::available_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, "hello from the payload disk\n").unwrap();
    let run = Vm::builder()
        .file(&file, "/opt/sluice/hello.txt")
        .payload(Payload::Disk)
        .timeout(Duration::from_secs(120))
        .run_shell(
            "vm_harness_disk_payload_exit_code",
            "cat /opt/sluice/hello.txt\n\
             echo \"link: $(readlink /opt/sluice/hello.txt)\"\n\
             grep ' /vmtest/disk ' /proc/mounts\n\
             echo 'to stderr' >&2\n\
             exit 3",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(run.payload, Payload::Disk);
    assert_eq!(run.exit_code, 3, "output:\n{}", run.output);
    for want in [
        "hello from the payload disk",
        "link: /vmtest/disk/opt/sluice/hello.txt",
        "/dev/vda /vmtest/disk ext4 ro",
        "to stderr",
    ] {
        assert!(
            run.output.contains(want),
            "{want:?} missing:\n{}",
            run.output
        );
    }
}

#[test]
fn vm_harness_reports_crash() {
    if vm::in_vm() {
        return;
    }
    if !vm::available_or_skip() {
        return;
    }
    let err = Vm::builder()
        .timeout(Duration::from_secs(120))
        .run_shell(
            "vm_harness_reports_crash",
            "echo about to crash\necho c >/proc/sysrq-trigger\nsleep 100",
        )
        .expect_err("a guest kernel panic must not count as a run");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("without a VMTEST-EXIT marker") && msg.contains("sysrq"),
        "unexpected error: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// The guest side.

const VIP: &str = "10.96.0.10";
const IPT_VIP: &str = "10.96.0.20";
const BACKENDS: [(&str, &str); 2] = [("sluice-b1", "10.10.0.2"), ("sluice-b2", "10.10.0.3")];
const CLIENT: &str = "sluice-cl";

fn smoke_in_guest() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!("vm kernel: {}", kernel.trim());
    assert!(
        Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "cgroup2 is not mounted"
    );

    // IPVS: ipvsadm talks to the generic netlink family "IPVS", which ip_vs registers.
    let list = cmd("ipvsadm", &["-Ln"], "");
    assert!(
        list.contains("IP Virtual Server version"),
        "ipvsadm -Ln: {list}"
    );

    // Topology. The director is the VM's root namespace: the VIP sits on a dummy link, the
    // backends behind a bridge, the client on its own link (sharing the backends' segment
    // would let them answer it directly, past IPVS's NAT).
    for ns in BACKENDS.iter().map(|b| b.0).chain([CLIENT]) {
        netns_add(ns);
    }
    let mut root = format!(
        "link add sluice-ipvs0 type dummy\n\
         addr add {VIP}/32 dev sluice-ipvs0\n\
         link set sluice-ipvs0 up\n\
         link add sluice-br0 type bridge\n\
         addr add 10.10.0.1/24 dev sluice-br0\n\
         link set sluice-br0 up\n\
         link add vcl type veth peer name eth0 netns {CLIENT}\n\
         addr add 10.20.0.1/24 dev vcl\n\
         link set vcl up\n"
    );
    for (i, (ns, _)) in BACKENDS.iter().enumerate() {
        root.push_str(&format!(
            "link add vb{i} type veth peer name eth0 netns {ns}\n\
             link set vb{i} master sluice-br0\n\
             link set vb{i} up\n"
        ));
    }
    cmd("ip", &["-batch", "-"], &root);
    for (ns, addr) in BACKENDS {
        cmd(
            "ip",
            &["-n", ns, "-batch", "-"],
            &format!(
                "link set lo up\naddr add {addr}/24 dev eth0\nlink set eth0 up\n\
                 route add default via 10.10.0.1\n"
            ),
        );
    }
    cmd(
        "ip",
        &["-n", CLIENT, "-batch", "-"],
        "link set lo up\naddr add 10.20.0.2/24 dev eth0\nlink set eth0 up\n\
         route add default via 10.20.0.1\n",
    );
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    let link = cmd("ip", &["-br", "addr", "show", "dev", "sluice-ipvs0"], "");
    assert!(link.contains(VIP), "sluice-ipvs0: {link}");

    for (i, (ns, addr)) in BACKENDS.iter().enumerate() {
        serve(ns, format!("{addr}:8080"), format!("backend-{}", i + 1));
    }

    // IPVS round robin, masquerading (NAT) forwarding to both backends.
    let mut rules = format!("-A -t {VIP}:80 -s rr\n");
    for (_, addr) in BACKENDS {
        rules.push_str(&format!("-a -t {VIP}:80 -r {addr}:8080 -m\n"));
    }
    cmd("ipvsadm", &["-R"], &rules);
    println!("{}", cmd("ipvsadm", &["-Ln"], "").trim_end());
    let counts = probe(CLIENT, format!("{VIP}:80").parse().unwrap(), 10);
    println!("ipvs rr {VIP}:80: {counts:?}");
    let want: BTreeMap<String, usize> = [("backend-1".into(), 5), ("backend-2".into(), 5)].into();
    assert_eq!(
        counts, want,
        "round robin over two backends, 10 connections"
    );

    // nftables: a table with a verdict map and numgen, as the nftables mode writes them
    // (nft 1.0.6: chain bodies on their own lines).
    cmd(
        "nft",
        &["-f", "-"],
        "table inet sluice-vmtest {\n\
         \tchain ep-1 {\n\t\tcounter\n\t}\n\
         \tchain ep-2 {\n\t\tcounter\n\t}\n\
         \tchain svc {\n\t\tnumgen random mod 2 vmap { 0 : jump ep-1, 1 : jump ep-2 }\n\t}\n\
         \tmap services {\n\t\ttype ipv4_addr . inet_service : verdict\n\
         \t\telements = { 10.96.0.30 . 80 : goto svc }\n\t}\n\
         \tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr . tcp dport vmap @services\n\t}\n\
         }\n",
    );
    let table = cmd("nft", &["list", "table", "inet", "sluice-vmtest"], "");
    assert!(
        table.contains("numgen random mod 2") && table.contains("10.96.0.30 . 80 : goto svc"),
        "nft list table:\n{table}"
    );
    println!("nft: table inet sluice-vmtest loaded");

    // iptables-restore (the nf_tables backend, through nft_compat): kube-proxy-like rules
    // with the matches and targets the iptables mode uses, then traffic through their DNAT.
    let mut ipt = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-TEST - [0:0]\n:KUBE-SEP-A - [0:0]\n\
         :KUBE-SEP-B - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    ipt.push_str(&format!(
        "-A KUBE-SERVICES -d {IPT_VIP}/32 -p tcp -m comment --comment \"default/test:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-TEST\n\
         -A KUBE-SERVICES -m addrtype --dst-type LOCAL -p tcp -m multiport --dports 30080,30081 -j KUBE-SVC-TEST\n\
         -A KUBE-SVC-TEST -m comment --comment \"default/test:http -> {a}:8080\" -m statistic --mode random --probability 0.5 -j KUBE-SEP-A\n\
         -A KUBE-SVC-TEST -j KUBE-SEP-B\n\
         -A KUBE-SEP-A -s {a}/32 -j KUBE-MARK-MASQ\n\
         -A KUBE-SEP-A -p tcp -m recent --name sep-a --set --rsource -m tcp -j DNAT --to-destination {a}:8080\n\
         -A KUBE-SEP-B -s {b}/32 -j KUBE-MARK-MASQ\n\
         -A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination {b}:8080\n\
         COMMIT\n\
         *filter\n:KUBE-FIREWALL - [0:0]\n\
         -A INPUT -j KUBE-FIREWALL\n\
         -A KUBE-FIREWALL -m conntrack --ctstate INVALID -j DROP\n\
         COMMIT\n",
        a = BACKENDS[0].1,
        b = BACKENDS[1].1,
    ));
    cmd("iptables-restore", &[], &ipt);
    let saved = cmd("iptables-save", &["-t", "nat"], "");
    assert!(
        saved.contains("-j KUBE-SVC-TEST") && saved.contains("--mode random --probability 0.5"),
        "iptables-save:\n{saved}"
    );
    let counts = probe(CLIENT, format!("{IPT_VIP}:80").parse().unwrap(), 6);
    println!("iptables {IPT_VIP}:80: {counts:?}");
    assert_eq!(
        counts
            .iter()
            .filter(|(k, _)| k.starts_with("backend-"))
            .map(|(_, n)| n)
            .sum::<usize>(),
        6,
        "every connection through the iptables DNAT reaches a backend: {counts:?}"
    );
}

/// `n` connections from `ns` to `target`, one after the other: the replies counted (and
/// errors by message, so a failure shows what happened).
fn probe(ns: &'static str, target: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    thread::spawn(move || {
        enter(ns);
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let reply = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut buf = String::new();
                    s.read_to_string(&mut buf)?;
                    Ok(buf)
                })
                .unwrap_or_else(|e| format!("error: {e}"));
            *counts.entry(reply).or_insert(0) += 1;
        }
        counts
    })
    .join()
    .unwrap()
}
