//! Byte-exact fixtures, written out by hand from uapi `linux/ip_vs.h` (attribute numbers,
//! `struct ip_vs_flags`, 16-byte `nf_inet_addr`, network-order ports) and the netlink framing
//! (`nlmsghdr` 16 bytes, `genlmsghdr` 4 bytes, attributes 4-byte aligned). x86-64 and every
//! other target the workspace builds for is little-endian, so host-order integers are written
//! least significant byte first.

use netlink_packet_core::{
    NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART as NLM_F_MULTI, NLM_F_REQUEST,
};

use super::*;

const FAMILY: u16 = 0x1a;

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn web() -> Service {
    Service::new(v4("10.96.0.10"), IPPROTO_TCP, 80, "rr")
}

#[test]
fn new_service_bytes() {
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        IpvsMessage::new_service(&web()),
    );
    let want = hex("68000000 1a00 0500 01000000 00000000 \
         01010000 \
         54000180 \
           06000100 0200 0000 \
           06000200 0600 0000 \
           14000300 0a60000a 00000000 00000000 00000000 \
           06000400 0050 0000 \
           07000600 727200 00 \
           0c000700 00000000 ffffffff \
           08000800 00000000 \
           08000900 ffffffff");
    assert_eq!(got, want);
}

#[test]
fn persistent_service_and_delete_bytes() {
    let svc = Service::new(v4("10.96.0.10"), IPPROTO_UDP, 53, "sh").persistent(10800);
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        7,
        IpvsMessage::set_service(&svc),
    );
    let want = hex("68000000 1a00 0500 07000000 00000000 \
         02010000 \
         54000180 \
           06000100 0200 0000 \
           06000200 1100 0000 \
           14000300 0a60000a 00000000 00000000 00000000 \
           06000400 0035 0000 \
           07000600 736800 00 \
           0c000700 01000000 ffffffff \
           08000800 302a0000 \
           08000900 ffffffff");
    assert_eq!(got, want);

    // Deleting names the service only.
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        8,
        IpvsMessage::del_service(&svc),
    );
    let want = hex("44000000 1a00 0500 08000000 00000000 \
         03010000 \
         30000180 \
           06000100 0200 0000 \
           06000200 1100 0000 \
           14000300 0a60000a 00000000 00000000 00000000 \
           06000400 0035 0000");
    assert_eq!(got, want);
}

#[test]
fn ipv6_service_bytes() {
    let svc = Service::new("fd00::10".parse().unwrap(), IPPROTO_SCTP, 3868, "mh");
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        2,
        IpvsMessage::new_service(&svc),
    );
    let want = hex("68000000 1a00 0500 02000000 00000000 \
         01010000 \
         54000180 \
           06000100 0a00 0000 \
           06000200 8400 0000 \
           14000300 fd000000 00000000 00000000 00000010 \
           06000400 0f1c 0000 \
           07000600 6d6800 00 \
           0c000700 00000000 ffffffff \
           08000800 00000000 \
           08000900 80000000");
    assert_eq!(got, want);
}

#[test]
fn new_set_and_delete_dest_bytes() {
    let dest = Destination::masq(v4("10.244.1.1"), 8080, 1);
    let svc_id = "30000180 \
           06000100 0200 0000 \
           06000200 0600 0000 \
           14000300 0a60000a 00000000 00000000 00000000 \
           06000400 0050 0000";
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        3,
        IpvsMessage::new_dest(&web(), &dest),
    );
    let want = hex(&format!(
        "8c000000 1a00 0500 03000000 00000000 \
         05010000 \
         {svc_id} \
         48000280 \
           06000b00 0200 0000 \
           14000100 0af40101 00000000 00000000 00000000 \
           06000200 1f90 0000 \
           08000300 00000000 \
           08000400 01000000 \
           08000500 00000000 \
           08000600 00000000"
    ));
    assert_eq!(got, want);

    // Draining: the same attributes with weight 0 and SET_DEST.
    let drained = Destination {
        weight: 0,
        ..dest.clone()
    };
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        4,
        IpvsMessage::set_dest(&web(), &drained),
    );
    assert_eq!(&got[16..18], &[cmd::SET_DEST, 1]);
    // Weight is the third attribute from the end (then the two thresholds).
    assert_eq!(
        &got[got.len() - 24..got.len() - 20],
        hex("08000400").as_slice()
    );
    assert_eq!(&got[got.len() - 20..got.len() - 16], &[0, 0, 0, 0]);

    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        5,
        IpvsMessage::del_dest(&web(), &dest),
    );
    let want = hex(&format!(
        "6c000000 1a00 0500 05000000 00000000 \
         07010000 \
         {svc_id} \
         28000280 \
           06000b00 0200 0000 \
           14000100 0af40101 00000000 00000000 00000000 \
           06000200 1f90 0000"
    ));
    assert_eq!(got, want);
}

#[test]
fn dump_info_and_flush_requests_bytes() {
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        9,
        IpvsMessage::get_services(),
    );
    assert_eq!(got, hex("14000000 1a00 0103 09000000 00000000 04010000"));
    let got = encode_request(FAMILY, NLM_F_REQUEST, 10, IpvsMessage::get_info());
    assert_eq!(got, hex("14000000 1a00 0100 0a000000 00000000 0f010000"));
    let got = encode_request(FAMILY, NLM_F_REQUEST | NLM_F_ACK, 11, IpvsMessage::flush());
    assert_eq!(got, hex("14000000 1a00 0500 0b000000 00000000 11010000"));
    let got = encode_request(
        FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        12,
        IpvsMessage::get_dests(&web()),
    );
    assert_eq!(got.len(), 16 + 4 + 48);
    assert_eq!(&got[16..20], &[cmd::GET_DEST, 1, 0, 0]);
}

/// A netlink attribute, padded: what the kernel's `nla_put` writes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((value.len() + 4) as u16).to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// A generic netlink message of the IPVS family as the kernel sends it in a dump.
fn genl(cmd: u8, flags: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_le_bytes());
    v.extend_from_slice(&FAMILY.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&4242u32.to_le_bytes());
    v.extend_from_slice(&[cmd, FAMILY_VERSION, 0, 0]);
    v.extend_from_slice(attrs);
    v
}

fn done(seq: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&3u16.to_le_bytes()); // NLMSG_DONE
    v.extend_from_slice(&NLM_F_MULTI.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&4242u32.to_le_bytes());
    v.extend_from_slice(&0i32.to_le_bytes());
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// `ip_vs_genl_fill_service`'s layout: nested without `NLA_F_NESTED`, statistics included.
fn kernel_service(body: &[Vec<u8>]) -> Vec<u8> {
    let stats = cat(&[nla(1, &5u32.to_le_bytes()), nla(2, &9u32.to_le_bytes())]);
    let stats64 = nla(1, &5u64.to_le_bytes());
    let mut inner = cat(body);
    inner.extend(nla(svc_attr::STATS, &stats));
    inner.extend(nla(svc_attr::STATS64, &stats64));
    nla(IPVS_CMD_ATTR_SERVICE, &inner)
}

#[test]
fn parses_a_synthetic_service_dump() {
    // The first message written out in full, so the helpers above are checked too.
    let first = hex("8c000000 1a00 0200 09000000 92100000 \
         01010000 \
         78000100 \
           06000100 0200 0000 \
           06000200 0600 0000 \
           14000300 0a60000a 00000000 00000000 00000000 \
           06000400 0050 0000 \
           07000600 727200 00 \
           0c000700 02000000 ffffffff \
           08000800 00000000 \
           08000900 ffffffff \
           14000a00 08000100 05000000 08000200 09000000 \
           10000c00 0c000100 05000000 00000000");
    assert_eq!(
        first,
        genl(
            cmd::NEW_SERVICE,
            NLM_F_MULTI,
            9,
            &kernel_service(&[
                nla(svc_attr::AF, &AF_INET.to_le_bytes()),
                nla(svc_attr::PROTOCOL, &IPPROTO_TCP.to_le_bytes()),
                nla(svc_attr::ADDR, &inet_addr(&v4("10.96.0.10"))),
                nla(svc_attr::PORT, &80u16.to_be_bytes()),
                nla(svc_attr::SCHED_NAME, b"rr\0"),
                nla(svc_attr::FLAGS, &hex("02000000 ffffffff")),
                nla(svc_attr::TIMEOUT, &0u32.to_le_bytes()),
                nla(svc_attr::NETMASK, &u32::MAX.to_le_bytes()),
            ])
        )
    );
    let v6 = genl(
        cmd::NEW_SERVICE,
        NLM_F_MULTI,
        9,
        &kernel_service(&[
            nla(svc_attr::AF, &AF_INET6.to_le_bytes()),
            nla(svc_attr::PROTOCOL, &IPPROTO_SCTP.to_le_bytes()),
            nla(svc_attr::ADDR, &hex("fd000000 00000000 00000000 00000010")),
            nla(svc_attr::PORT, &3868u16.to_be_bytes()),
            nla(svc_attr::SCHED_NAME, b"mh\0"),
            nla(svc_attr::FLAGS, &hex("03000000 ffffffff")),
            nla(svc_attr::TIMEOUT, &10800u32.to_le_bytes()),
            nla(svc_attr::NETMASK, &128u32.to_le_bytes()),
        ]),
    );
    let fwmark = genl(
        cmd::NEW_SERVICE,
        NLM_F_MULTI,
        9,
        &kernel_service(&[
            nla(svc_attr::AF, &AF_INET.to_le_bytes()),
            nla(svc_attr::FWMARK, &7u32.to_le_bytes()),
            nla(svc_attr::SCHED_NAME, b"wlc\0"),
            nla(svc_attr::PE_NAME, b"sip\0"),
            nla(svc_attr::FLAGS, &hex("02000000 ffffffff")),
            nla(svc_attr::TIMEOUT, &0u32.to_le_bytes()),
            nla(svc_attr::NETMASK, &u32::MAX.to_le_bytes()),
        ]),
    );
    let datagram = cat(&[first, v6, fwmark, done(9)]);
    let replies = decode_replies(&datagram).unwrap();
    assert_eq!(replies.len(), 4);
    let services: Vec<Service> = replies[..3]
        .iter()
        .map(|r| match &r.payload {
            NetlinkPayload::InnerMessage(m) => {
                assert_eq!(m.payload.cmd, cmd::NEW_SERVICE);
                assert_eq!(r.header.sequence_number, 9);
                m.payload.service().unwrap().unwrap()
            }
            p => panic!("{p:?}"),
        })
        .collect();
    assert!(matches!(replies[3].payload, NetlinkPayload::Done(_)));
    assert_eq!(
        services[0],
        Service {
            flags: IP_VS_SVC_F_HASHED,
            ..web()
        }
    );
    assert_eq!(
        services[1],
        Service {
            flags: IP_VS_SVC_F_HASHED | IP_VS_SVC_F_PERSISTENT,
            ..Service::new("fd00::10".parse().unwrap(), IPPROTO_SCTP, 3868, "mh").persistent(10800)
        }
    );
    assert_eq!(services[1].to_string(), "SCTP [fd00::10]:3868");
    assert!(services[2].is_fwmark());
    assert_eq!(services[2].fwmark, 7);
    assert_eq!(services[2].pe_name.as_deref(), Some("sip"));
    assert_eq!(services[2].to_string(), "FWM 7");
}

#[test]
fn parses_a_synthetic_dest_dump() {
    let dest = |addr: &str, port: u16, weight: u32, active: u32, inactive: u32| {
        let stats = nla(1, &1u32.to_le_bytes());
        let inner = cat(&[
            nla(dest_attr::ADDR, &inet_addr(&v4(addr))),
            nla(dest_attr::PORT, &port.to_be_bytes()),
            nla(dest_attr::FWD_METHOD, &0u32.to_le_bytes()),
            nla(dest_attr::WEIGHT, &weight.to_le_bytes()),
            nla(dest_attr::TUN_TYPE, &[0u8]),
            nla(dest_attr::TUN_PORT, &0u16.to_be_bytes()),
            nla(dest_attr::TUN_FLAGS, &0u16.to_le_bytes()),
            nla(dest_attr::U_THRESH, &0u32.to_le_bytes()),
            nla(dest_attr::L_THRESH, &0u32.to_le_bytes()),
            nla(dest_attr::ACTIVE_CONNS, &active.to_le_bytes()),
            nla(dest_attr::INACT_CONNS, &inactive.to_le_bytes()),
            nla(dest_attr::PERSIST_CONNS, &0u32.to_le_bytes()),
            nla(dest_attr::ADDR_FAMILY, &AF_INET.to_le_bytes()),
            nla(dest_attr::STATS, &stats),
        ]);
        genl(
            cmd::NEW_DEST,
            NLM_F_MULTI,
            4,
            &nla(IPVS_CMD_ATTR_DEST, &inner),
        )
    };
    let datagram = cat(&[
        dest("10.244.1.1", 8080, 1, 0, 0),
        dest("10.244.2.1", 8080, 0, 3, 7),
        done(4),
    ]);
    let replies = decode_replies(&datagram).unwrap();
    let dests: Vec<Destination> = replies
        .iter()
        .filter_map(|r| match &r.payload {
            NetlinkPayload::InnerMessage(m) => {
                Some(m.payload.destination(AF_INET).unwrap().unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(dests[0], Destination::masq(v4("10.244.1.1"), 8080, 1));
    assert_eq!(
        dests[1],
        Destination {
            active_conns: 3,
            inactive_conns: 7,
            ..Destination::masq(v4("10.244.2.1"), 8080, 0)
        }
    );
}

#[test]
fn parses_info_and_errors() {
    let info = genl(
        cmd::SET_INFO,
        0,
        1,
        &cat(&[
            nla(info_attr::VERSION, &0x010201u32.to_le_bytes()),
            nla(info_attr::CONN_TAB_SIZE, &4096u32.to_le_bytes()),
        ]),
    );
    let r = decode_replies(&info).unwrap();
    let NetlinkPayload::InnerMessage(m) = &r[0].payload else {
        panic!("{r:?}")
    };
    let i = m.payload.info().unwrap();
    assert_eq!(i.version_string(), "1.2.1");
    assert_eq!(i.conn_tab_size, 4096);

    // NLMSG_ERROR: -EEXIST and the request's header.
    let mut err = hex("24000000 0200 0001 03000000 92100000");
    err.extend_from_slice(&(-17i32).to_le_bytes());
    err.extend_from_slice(&hex("8c000000 1a00 0500 03000000 00000000"));
    let r = decode_replies(&err).unwrap();
    let NetlinkPayload::Error(e) = &r[0].payload else {
        panic!("{r:?}")
    };
    assert_eq!(e.raw_code(), -17);
    assert_eq!(r[0].header.sequence_number, 3);
}

#[test]
fn round_trips_through_the_parser() {
    let svc = web().persistent(60);
    let dest = Destination::masq(v4("10.244.9.9"), 9000, 3);
    for msg in [
        IpvsMessage::new_service(&svc),
        IpvsMessage::del_service(&svc),
        IpvsMessage::new_dest(&svc, &dest),
        IpvsMessage::del_dest(&svc, &dest),
    ] {
        let bytes = encode_request(FAMILY, NLM_F_REQUEST, 1, msg.clone());
        let r = decode_replies(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(m) = &r[0].payload else {
            panic!("{r:?}")
        };
        assert_eq!(m.payload, msg);
    }
    let msg = IpvsMessage::new_dest(&svc, &dest);
    assert_eq!(msg.service().unwrap().unwrap().addr, svc.addr);
    assert_eq!(msg.destination(AF_INET).unwrap().unwrap(), dest);
}

#[test]
fn rejects_truncated_datagrams() {
    let bytes = encode_request(FAMILY, NLM_F_REQUEST, 1, IpvsMessage::new_service(&web()));
    assert!(decode_replies(&bytes[..bytes.len() - 4]).is_err());
    let mut bad = bytes.clone();
    bad[20] = 0xff; // the nested attribute's length runs past the message
    assert!(decode_replies(&bad).is_err());
}
