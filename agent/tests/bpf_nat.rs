//! Masquerade on crafted packets with BPF_PROG_TEST_RUN: source NAT on pod
//! and WireGuard ingress, the way back on the NIC and the other uplinks,
//! ICMP errors, port collisions, the flow limit, and what is left alone.
//!
//! `bpf_fib_lookup` needs a routing table: each test runs on a thread of its
//! own in a fresh network namespace (`unshare(CLONE_NEWNET)`) with a veth
//! uplink `up0` holding [`NODE`] and a default route through it, and
//! `net.ipv4.conf.lo.forwarding=1` as the agent sets it (`ip_forward` 0).
//! Checksums are recomputed from scratch here (`bpf_common::inet_csum`).

mod bpf_common;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap};
use bpf_common::*;
use std::process::Command;
use weft_common::counters::Counter;
use weft_common::maps::{PodEndpoint, Route};
use weft_common::nat::{
    self, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NatConfig, NatEgress, NatIngress,
};

/// The node's address on its uplink, what masqueraded packets leave with.
const NODE: [u8; 4] = [198, 18, 7, 1];
/// The uplink's gateway (and the "router" that sends ICMP errors).
const GATEWAY: [u8; 4] = [198, 18, 7, 254];
/// An external peer's allowed IP (a laptop), a masquerade source.
const LAPTOP: [u8; 4] = [10, 5, 0, 1];
const SERVICE: [u8; 4] = [10, 96, 0, 10];
const PORTS: (u16, u16) = (20000, 20099);

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a new thread in a new network namespace set up as the
/// module doc says; the namespace goes away with the thread.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: affects only this thread, which owns nothing shared.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        sh(&["ip", "addr", "add", "198.18.7.1/24", "dev", "up0"]);
        sh(&["ip", "link", "set", "up0", "up"]);
        sh(&["ip", "link", "set", "up1", "up"]);
        sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "198.18.7.254",
            "dev",
            "up0",
        ]);
        sh(&["sysctl", "-qw", "net.ipv4.conf.lo.forwarding=1"]);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// The datapath with masquerade on: this node's pods (10.244.1.0/24) and
/// the laptop are sources; the cluster and the service CIDR are exempt.
fn nat_datapath(max_flows: u32) -> Datapath {
    let mut dp = Datapath::load().with_topology(false);
    for (map, prefix, len) in [
        (nat::MASQ_SOURCES, [10, 244, 1, 0], 24),
        (nat::MASQ_SOURCES, LAPTOP, 32),
        (nat::MASQ_EXEMPT, [10, 244, 0, 0], 16),
        (nat::MASQ_EXEMPT, [10, 96, 0, 0], 12),
        (nat::MASQ_EXEMPT, LAPTOP, 32),
    ] {
        let mut t: LpmTrie<_, [u8; 4], u32> =
            LpmTrie::try_from(dp.ebpf.map_mut(map).unwrap()).unwrap();
        t.insert(&Key::new(len, prefix), 1, 0).unwrap();
    }
    set_config(&mut dp, 1, max_flows);
    dp.add_pod(POD_A, PodEndpoint::new(VETH_A, MAC_A));
    dp.add_pod(POD_B, PodEndpoint::new(VETH_B, MAC_B));
    dp
}

fn set_config(dp: &mut Datapath, enabled: u32, max_flows: u32) {
    let mut a: Array<_, NatConfig> =
        Array::try_from(dp.ebpf.map_mut(nat::NAT_CONFIG).unwrap()).unwrap();
    a.set(
        0,
        NatConfig {
            enabled,
            port_min: PORTS.0,
            port_max: PORTS.1,
            max_flows,
            fib_ifindex: 1,
            flows: 0,
        },
        0,
    )
    .unwrap();
}

fn egress(dp: &Datapath) -> Vec<(FlowKey, NatEgress)> {
    let m: HashMap<_, FlowKey, NatEgress> =
        HashMap::try_from(dp.ebpf.map(nat::NAT_EGRESS).unwrap()).unwrap();
    m.iter().map(|r| r.unwrap()).collect()
}

fn ingress(dp: &Datapath) -> Vec<(FlowKey, NatIngress)> {
    let m: HashMap<_, FlowKey, NatIngress> =
        HashMap::try_from(dp.ebpf.map(nat::NAT_INGRESS).unwrap()).unwrap();
    m.iter().map(|r| r.unwrap()).collect()
}

// ---------------------------------------------------------------- packets

/// A TCP segment (20-byte header, `flags`) with a right checksum.
fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    l4[12] = 0x50;
    l4[13] = flags;
    l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
    l4.extend_from_slice(b"hello, world");
    with_l4_csum(src, dst, IPPROTO_TCP, l4)
}

/// A UDP datagram, with a checksum or with none (zero).
fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, checksum: bool) -> Vec<u8> {
    let payload = b"0123456789abcdef-";
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(payload);
    if checksum {
        with_l4_csum(src, dst, IPPROTO_UDP, l4)
    } else {
        ipv4_with(src, dst, IPPROTO_UDP, 64, &l4)
    }
}

/// An ICMP message of `ty`/`code` with `rest` (identifier and sequence, or
/// the unused word) and `body`, checksummed.
fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut l4 = vec![ty, code, 0, 0];
    l4.extend_from_slice(&rest);
    l4.extend_from_slice(body);
    let c = inet_csum(&l4);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_with(src, dst, IPPROTO_ICMP, 64, &l4)
}

fn echo(src: [u8; 4], dst: [u8; 4], ty: u8, id: u16) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    icmp(src, dst, ty, 0, [a, b, 0, 1], b"ping payload")
}

fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(l4);
    inet_csum(&p)
}

fn with_l4_csum(src: [u8; 4], dst: [u8; 4], proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
    let off = if proto == IPPROTO_TCP { 16 } else { 6 };
    let c = pseudo_sum(&src, &dst, proto, &l4);
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    ipv4_with(src, dst, proto, 64, &l4)
}

/// Every checksum of an IPv4 packet is right (a zero UDP checksum is "none").
#[track_caller]
fn assert_checksums(ip: &[u8]) {
    assert_eq!(inet_csum(&ip[..20]), 0, "IPv4 header checksum");
    let l4 = &ip[20..];
    match ip[9] {
        IPPROTO_TCP => assert_eq!(pseudo_sum(&ip[12..16], &ip[16..20], 6, l4), 0, "TCP"),
        IPPROTO_UDP if l4[6..8] == [0, 0] => {}
        IPPROTO_UDP => assert_eq!(pseudo_sum(&ip[12..16], &ip[16..20], 17, l4), 0, "UDP"),
        _ => assert_eq!(inet_csum(l4), 0, "ICMP"),
    }
}

fn port(ip: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([ip[20 + off], ip[21 + off]])
}

fn from_pod(ip: &[u8], pod_mac: [u8; 6]) -> Vec<u8> {
    eth(GW_MAC, pod_mac, ETH_P_IP, ip)
}

fn to_host(ip: &[u8]) -> Vec<u8> {
    eth(HOST_MAC, PEER_MAC, ETH_P_IP, ip)
}

// ---------------------------------------------------------------- tests

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn snat_keeps_free_ports_and_fixes_every_checksum() {
    in_netns(|| {
        let dp = nat_datapath(1000);
        // Table: (what, packet, offset of the translated port in L4).
        for (what, pkt, port_off) in [
            ("tcp syn", tcp(POD_A, OUTSIDE, 40000, 80, 0x02), 0),
            ("udp", udp(POD_A, OUTSIDE, 40001, 53, true), 0),
            (
                "udp without checksum",
                udp(POD_A, OUTSIDE, 40002, 53, false),
                0,
            ),
            ("icmp echo", echo(POD_A, OUTSIDE, 8, 0x4242), 4),
        ] {
            let c0 = dp.counts();
            let r = dp.tc(POD_PROG, &from_pod(&pkt, MAC_A), VETH_A);
            assert_eq!(r.ret, TC_ACT_REDIRECT, "{what}: redirected out");
            let out = &r.out[14..];
            assert_eq!(out.len(), pkt.len(), "{what}");
            assert_eq!(&out[12..16], &NODE, "{what}: source is the node");
            assert_eq!(&out[16..20], &OUTSIDE, "{what}: destination kept");
            assert_eq!(out[8], 63, "{what}: TTL − 1");
            assert_eq!(
                port(out, port_off),
                port(&pkt, port_off),
                "{what}: port kept"
            );
            assert_checksums(out);
            if what == "udp without checksum" {
                assert_eq!(&out[26..28], &[0, 0], "no checksum stays none");
            }
            let body = if pkt[9] == IPPROTO_TCP { 40 } else { 28 };
            assert_eq!(&out[body..], &pkt[body..], "{what}: payload untouched");
            assert_counted(
                &c0,
                &dp.counts(),
                &[
                    (Counter::PodIngressSeen, 1),
                    (Counter::NatNewFlow, 1),
                    (Counter::NatSnat, 1),
                ],
            );
        }
        let flows = egress(&dp);
        assert_eq!(flows.len(), 4);
        assert!(
            flows
                .iter()
                .all(|(k, e)| k.src == POD_A && e.nat_ip == NODE)
        );
        let back = ingress(&dp);
        assert_eq!(back.len(), 4);
        assert!(back.iter().any(|(k, v)| *k
            == FlowKey::new(IPPROTO_TCP, OUTSIDE, NODE, 80, 40000)
            && v.pod_ip == POD_A
            && v.pod_port == 40000));
        // The same flow again: no new entry, the same translation.
        let c0 = dp.counts();
        let pkt = tcp(POD_A, OUTSIDE, 40000, 80, 0x10);
        let r = dp.tc(POD_PROG, &from_pod(&pkt, MAC_A), VETH_A);
        assert_eq!((r.ret, port(&r.out[14..], 0)), (TC_ACT_REDIRECT, 40000));
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::NatSnat, 1)],
        );
        assert_eq!(egress(&dp).len(), 4);
    });
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn colliding_ports_get_distinct_translations_from_the_range() {
    in_netns(|| {
        let mut dp = nat_datapath(1000);
        // A third pod; each pod sends from its own veth (anything else is dropped as spoofed).
        let (veth_new, mac_new) = (102, [0x02, 0, 0, 0, 0x01, 0x77]);
        dp.add_pod(POD_NEW, PodEndpoint::new(veth_new, mac_new));
        let mut seen = Vec::new();
        for (pod, mac, veth) in [
            (POD_A, MAC_A, VETH_A),
            (POD_B, MAC_B, VETH_B),
            (POD_NEW, mac_new, veth_new),
        ] {
            let pkt = tcp(pod, OUTSIDE, 40000, 443, 0x02);
            let r = dp.tc(POD_PROG, &from_pod(&pkt, mac), veth);
            assert_eq!(r.ret, TC_ACT_REDIRECT);
            assert_checksums(&r.out[14..]);
            seen.push(port(&r.out[14..], 0));
        }
        assert_eq!(seen[0], 40000, "the first keeps its port");
        for p in &seen[1..] {
            assert!((PORTS.0..=PORTS.1).contains(p), "{p} from the range");
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "distinct translations");
        assert_eq!(ingress(&dp).len(), 3);

        // A port the host itself listens on is not handed to a pod.
        let _host = std::net::TcpListener::bind("198.18.7.1:40123").unwrap();
        let pkt = tcp(POD_A, OUTSIDE, 40123, 443, 0x02);
        let r = dp.tc(POD_PROG, &from_pod(&pkt, MAC_A), VETH_A);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        let p = port(&r.out[14..], 0);
        assert!(
            (PORTS.0..=PORTS.1).contains(&p),
            "{p}: not the host's 40123"
        );
    });
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn replies_and_icmp_errors_go_back_to_the_pod() {
    in_netns(|| {
        let dp = nat_datapath(1000);
        for pkt in [
            tcp(POD_A, OUTSIDE, 40000, 80, 0x02),
            udp(POD_A, OUTSIDE, 40001, 53, true),
            echo(POD_A, OUTSIDE, 8, 0x4242),
        ] {
            assert_eq!(
                dp.tc(POD_PROG, &from_pod(&pkt, MAC_A), VETH_A).ret,
                TC_ACT_REDIRECT
            );
        }
        // Replies, on the NIC and on another uplink: (what, reply, port offset).
        for prog in [NIC_PROG, UPLINK_PROG] {
            for (what, reply, off) in [
                ("tcp", tcp(OUTSIDE, NODE, 80, 40000, 0x12), 2),
                ("udp", udp(OUTSIDE, NODE, 53, 40001, true), 2),
                ("echo reply", echo(OUTSIDE, NODE, 0, 0x4242), 4),
            ] {
                let c0 = dp.counts();
                let r = dp.tc(prog, &to_host(&reply), NIC);
                assert_eq!(r.ret, TC_ACT_REDIRECT, "{prog} {what}");
                assert_eq!(&r.out[0..6], &MAC_A, "{what}: to the pod's MAC");
                let out = &r.out[14..];
                assert_eq!(&out[16..20], &POD_A, "{what}: destination is the pod");
                assert_eq!(&out[12..16], &OUTSIDE, "{what}: source kept");
                assert_eq!(port(out, off), port(&reply, off), "{what}: port kept");
                assert_checksums(out);
                let seen = if prog == NIC_PROG {
                    Counter::NicIngressSeen
                } else {
                    Counter::UplinkIngressSeen
                };
                assert_counted(
                    &c0,
                    &dp.counts(),
                    &[
                        (seen, 1),
                        (Counter::NatReverse, 1),
                        (Counter::DeliverLocalPeer, 1),
                    ],
                );
            }
        }

        // "Fragmentation needed" from a router, about the TCP flow as it left.
        let sent = tcp(NODE, OUTSIDE, 40000, 80, 0x10);
        let quoted = &sent[..28];
        let err = icmp(GATEWAY, NODE, 3, 4, [0, 0, 0x04, 0xb0], quoted);
        let c0 = dp.counts();
        let r = dp.tc(UPLINK_PROG, &to_host(&err), NIC);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "ICMP error delivered");
        let out = &r.out[14..];
        assert_eq!(&out[16..20], &POD_A, "to the pod");
        assert_eq!(&out[12..16], &GATEWAY, "from the router");
        assert_checksums(out);
        let inner = &out[28..];
        assert_eq!(inet_csum(&inner[..20]), 0, "quoted header checksum");
        assert_eq!(&inner[12..16], &POD_A, "quoted source is the pod");
        assert_eq!(&inner[16..20], &OUTSIDE);
        assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 40000);
        assert_eq!(&out[26..28], &[0x04, 0xb0], "next-hop MTU kept");
        assert_counted(
            &c0,
            &dp.counts(),
            &[
                (Counter::UplinkIngressSeen, 1),
                (Counter::NatIcmpError, 1),
                (Counter::DeliverLocalPeer, 1),
            ],
        );

        // Port unreachable about the UDP flow, on the NIC.
        let sent = udp(NODE, OUTSIDE, 40001, 53, true);
        let err = icmp(OUTSIDE, NODE, 3, 3, [0; 4], &sent[..28]);
        let r = dp.tc(NIC_PROG, &to_host(&err), NIC);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_checksums(&r.out[14..]);
        assert_eq!(&r.out[14 + 28 + 12..14 + 28 + 16], &POD_A);

        // Nothing of ours: untouched, and on the uplink left to whoever is next.
        for pkt in [
            tcp(OUTSIDE, NODE, 80, 40999, 0x12),
            tcp(STRANGER, NODE, 80, 40000, 0x12),
            icmp(
                GATEWAY,
                NODE,
                3,
                4,
                [0, 0, 5, 0],
                &tcp(NODE, OUTSIDE, 41000, 80, 0x10)[..28],
            ),
        ] {
            let r = dp.tc(UPLINK_PROG, &to_host(&pkt), NIC);
            assert_eq!(r.ret, TC_ACT_UNSPEC);
            assert_eq!(r.out, to_host(&pkt), "unchanged");
            let r = dp.tc(NIC_PROG, &to_host(&pkt), NIC);
            assert_eq!(r.ret, TC_ACT_UNSPEC, "the NIC leaves it to the stack");
        }
    });
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_full_table_refuses_new_flows_and_keeps_the_old() {
    in_netns(|| {
        let dp = nat_datapath(1);
        let first = tcp(POD_A, OUTSIDE, 40000, 80, 0x02);
        assert_eq!(
            dp.tc(POD_PROG, &from_pod(&first, MAC_A), VETH_A).ret,
            TC_ACT_REDIRECT
        );
        let c0 = dp.counts();
        let second = tcp(POD_A, OUTSIDE, 40000, 81, 0x02);
        let r = dp.tc(POD_PROG, &from_pod(&second, MAC_A), VETH_A);
        assert_eq!(r.ret, TC_ACT_SHOT, "the new flow is dropped");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::NatTableFull, 1)],
        );
        assert_eq!(egress(&dp).len(), 1);
        let r = dp.tc(POD_PROG, &from_pod(&first, MAC_A), VETH_A);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "the old flow goes on");
        assert_eq!(&r.out[14 + 12..14 + 16], &NODE);
    });
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn exempt_unsupported_and_unroutable_traffic_is_left_alone() {
    in_netns(|| {
        let mut dp = nat_datapath(1000);
        // A pod address the CNI gave out that is not a masquerade source.
        dp.add_pod(STRANGER, PodEndpoint::new(VETH_A, MAC_A));
        let mut frag = udp(POD_A, OUTSIDE, 40000, 53, true);
        frag[6] = 0x20; // more fragments
        frag[10] = 0;
        frag[11] = 0;
        let c = inet_csum(&frag[..20]);
        frag[10..12].copy_from_slice(&c.to_be_bytes());
        // Table: (what, packet, the pass counter).
        for (what, pkt, counter) in [
            (
                "service CIDR",
                tcp(POD_A, SERVICE, 40000, 80, 2),
                Counter::PassNoRoute,
            ),
            ("fragment", frag, Counter::NatPassUnsupported),
            (
                "gre",
                ipv4(POD_A, OUTSIDE, 47, 64),
                Counter::NatPassUnsupported,
            ),
            (
                "icmp error",
                icmp(POD_A, OUTSIDE, 3, 3, [0; 4], &[0; 28]),
                Counter::NatPassUnsupported,
            ),
            (
                "ttl 1",
                ipv4_with(POD_A, OUTSIDE, 17, 1, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]),
                Counter::PassTtlExpired,
            ),
            (
                "the node itself",
                tcp(POD_A, NODE, 40000, 22, 2),
                Counter::NatPassFib,
            ),
            // A pod answering a connection the kernel NATed towards it
            // (hostPort, NodePort): no flow of ours, conntrack translates.
            (
                "tcp syn-ack, no flow",
                tcp(POD_A, OUTSIDE, 8080, 50000, 0x12),
                Counter::NatPassNotNew,
            ),
            (
                "tcp ack, no flow",
                tcp(POD_A, OUTSIDE, 8080, 50000, 0x10),
                Counter::NatPassNotNew,
            ),
            (
                "tcp rst, no flow",
                tcp(POD_A, OUTSIDE, 8080, 50000, 0x04),
                Counter::NatPassNotNew,
            ),
            (
                "not a source",
                tcp(STRANGER, OUTSIDE, 40000, 80, 2),
                Counter::PassNoRoute,
            ),
        ] {
            let frame = from_pod(&pkt, MAC_A);
            let c0 = dp.counts();
            let r = dp.tc(POD_PROG, &frame, VETH_A);
            assert_eq!(
                (r.ret, &r.out),
                (TC_ACT_UNSPEC, &frame),
                "{what}: passed unchanged"
            );
            assert_counted(
                &c0,
                &dp.counts(),
                &[(Counter::PodIngressSeen, 1), (counter, 1)],
            );
        }
        assert!(egress(&dp).is_empty());
        // No route out: the stack gets it.
        sh(&["ip", "route", "del", "default"]);
        let frame = from_pod(&tcp(POD_A, OUTSIDE, 40000, 80, 2), MAC_A);
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &frame), "no route");
        // Masquerade off: as before it existed.
        sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "198.18.7.254",
            "dev",
            "up0",
        ]);
        set_config(&mut dp, 0, 1000);
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &frame), "masquerade off");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::PassNoRoute, 1)],
        );
    });
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn an_external_peer_going_out_through_the_node_is_masqueraded() {
    in_netns(|| {
        let dp = nat_datapath(1000);
        // From WireGuard: an L3 packet, no Ethernet header.
        let pkt = tcp(LAPTOP, OUTSIDE, 50000, 443, 0x02);
        let c0 = dp.counts();
        let r = dp.tc(WG_PROG, &pkt, WG);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_eq!(
            &r.out[12..14],
            &ETH_P_IP.to_be_bytes(),
            "Ethernet header pushed"
        );
        let out = &r.out[14..];
        assert_eq!(&out[12..16], &NODE);
        assert_checksums(out);
        assert_counted(
            &c0,
            &dp.counts(),
            &[
                (Counter::WgIngressSeen, 1),
                (Counter::NatNewFlow, 1),
                (Counter::NatSnat, 1),
            ],
        );
        // Its reply is translated back and routed into WireGuard.
        let mut dp = dp;
        dp.add_route(LAPTOP, 32, Route::wireguard(WG));
        let r = dp.tc(
            UPLINK_PROG,
            &to_host(&tcp(OUTSIDE, NODE, 443, 50000, 0x12)),
            NIC,
        );
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_eq!(&r.out[14 + 16..14 + 20], &LAPTOP);
        assert_checksums(&r.out[14..]);
    });
}
