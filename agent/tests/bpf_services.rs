//! Services with BPF_PROG_TEST_RUN: a pod's packet to a service CIDR goes
//! to the stack (kube-proxy's DNAT) and records the pod's socket; a reply
//! to that socket is left to the stack (conntrack undoes the DNAT) on every
//! hook that would deliver it into a pod; anything else is forwarded as
//! before. See `ebpf/weft-common/src/svc.rs`.
//!
//! Needs root: `cargo test -p weft --test bpf_services -- --ignored`.

mod bpf_common;

use aya::maps::{HashMap, LpmTrie};
use bpf_common::*;
use weft_common::counters::Counter;
use weft_common::nat::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_SYN};
use weft_common::svc::{
    CLIENT_CLOSING, ClientEntry, ClientKey, SERVICE_CIDRS, SERVICE_CLIENTS, UDP_FRESH_NS,
};

/// The service CIDR, 10.96.0.0/12, and a ClusterIP in it.
const SERVICE: [u8; 4] = [10, 96, 0, 10];
/// The client pods' port, and the backend's.
const CLIENT_PORT: u16 = 40000;
const BACKEND_PORT: u16 = 8080;

fn services(mut dp: Datapath) -> Datapath {
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    dp.add_pod(POD_B, endpoint(VETH_B, MAC_B));
    let mut m: LpmTrie<_, [u8; 4], u32> =
        LpmTrie::try_from(dp.ebpf.map_mut(SERVICE_CIDRS).unwrap()).unwrap();
    m.insert(&maps_key([10, 96, 0, 0], 12), 1, 0).unwrap();
    dp
}

fn maps_key(prefix: [u8; 4], len: u32) -> aya::maps::lpm_trie::Key<[u8; 4]> {
    aya::maps::lpm_trie::Key::new(len, prefix)
}

fn client(dp: &Datapath, proto: u8, ip: [u8; 4], port: u16) -> Option<ClientEntry> {
    let m: HashMap<_, ClientKey, ClientEntry> =
        HashMap::try_from(dp.ebpf.map(SERVICE_CLIENTS).unwrap()).unwrap();
    m.get(&ClientKey::new(proto, ip, port), 0).ok()
}

fn set_client(dp: &mut Datapath, proto: u8, ip: [u8; 4], port: u16, last_ns: u64) {
    let mut m: HashMap<_, ClientKey, ClientEntry> =
        HashMap::try_from(dp.ebpf.map_mut(SERVICE_CLIENTS).unwrap()).unwrap();
    let e = ClientEntry {
        last_ns,
        flags: 0,
        _pad: 0,
    };
    m.insert(ClientKey::new(proto, ip, port), e, 0).unwrap();
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` outlives the call.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) },
        0
    );
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// An IPv4 packet carrying a TCP header with `flags` (checksums are not
/// looked at on these paths) or a UDP datagram.
fn l4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    ttl: u8,
) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    if proto == IPPROTO_TCP {
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    } else {
        h.extend_from_slice(&[0, 12, 0, 0]);
    }
    h.extend_from_slice(b"data");
    ipv4_with(src, dst, proto, ttl, &h)
}

/// A pod's packet to the ClusterIP, from `VETH_A`.
fn to_service(src: [u8; 4], proto: u8, sport: u16, flags: u8) -> Vec<u8> {
    eth(
        GW_MAC,
        MAC_A,
        ETH_P_IP,
        &l4(src, SERVICE, proto, sport, 80, flags, 64),
    )
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_packet_to_a_service_cidr_is_passed_and_records_the_socket() {
    let dp = services(Datapath::load().with_topology(true));
    // (what, packet, the socket recorded: (proto, port, flags))
    type Socket = (u8, u16, u32);
    let table: &[(&str, Vec<u8>, Option<Socket>)] = &[
        (
            "tcp syn",
            to_service(POD_A, IPPROTO_TCP, 40000, TCP_SYN),
            Some((IPPROTO_TCP, 40000, 0)),
        ),
        (
            "tcp ack",
            to_service(POD_A, IPPROTO_TCP, 40001, TCP_ACK),
            Some((IPPROTO_TCP, 40001, 0)),
        ),
        (
            "tcp fin",
            to_service(POD_A, IPPROTO_TCP, 40002, TCP_ACK | TCP_FIN),
            Some((IPPROTO_TCP, 40002, CLIENT_CLOSING)),
        ),
        (
            "udp",
            to_service(POD_A, IPPROTO_UDP, 40003, 0),
            Some((IPPROTO_UDP, 40003, 0)),
        ),
        (
            "icmp: passed, no socket",
            eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, SERVICE, 1, 64)),
            None,
        ),
    ];
    let start = monotonic_ns();
    for (what, frame, recorded) in table {
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, frame, VETH_A);
        assert_eq!(r.ret, TC_ACT_UNSPEC, "{what}: to the stack");
        assert_eq!(&r.out, frame, "{what}: unchanged");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::ServiceToStack, 1)],
        );
        if let Some((proto, port, flags)) = recorded {
            let e = client(&dp, *proto, POD_A, *port).unwrap_or_else(|| panic!("{what}: recorded"));
            assert_eq!(e.flags, *flags, "{what}");
            assert!(
                e.last_ns >= start && e.last_ns <= monotonic_ns(),
                "{what}: timestamp"
            );
            // The other protocol's socket of that port is another one.
            let other = if *proto == IPPROTO_TCP {
                IPPROTO_UDP
            } else {
                IPPROTO_TCP
            };
            assert_eq!(client(&dp, other, POD_A, *port), None, "{what}");
        }
    }
    // Elsewhere without a route: not a Service, nothing recorded.
    let c0 = dp.counts();
    let frame = eth(
        GW_MAC,
        MAC_A,
        ETH_P_IP,
        &l4(POD_A, OUTSIDE, IPPROTO_TCP, 41000, 80, TCP_SYN, 64),
    );
    assert_eq!(dp.tc(POD_PROG, &frame, VETH_A).ret, TC_ACT_UNSPEC);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::PassNoRoute, 1)],
    );
    assert_eq!(client(&dp, IPPROTO_TCP, POD_A, 41000), None);
}

/// A reply into a local pod on each delivery hook: (what, program, ingress
/// device, the frame for a reply of `proto` to `dport`, its fast-path
/// counter, whether the frame is IPIP that the NIC decapsulates first).
type Delivery = (
    &'static str,
    &'static str,
    u32,
    fn(u8, u16) -> Vec<u8>,
    Counter,
    bool,
);

fn deliveries() -> Vec<Delivery> {
    vec![
        (
            "pod, same node, switched",
            POD_PROG,
            VETH_B,
            |p, d| {
                eth(
                    MAC_A,
                    MAC_B,
                    ETH_P_IP,
                    &l4(POD_B, POD_A, p, BACKEND_PORT, d, TCP_SYN | TCP_ACK, 64),
                )
            },
            Counter::LocalSameNode,
            false,
        ),
        (
            "pod, same node, routed",
            POD_PROG,
            VETH_B,
            |p, d| {
                eth(
                    GW_MAC,
                    MAC_B,
                    ETH_P_IP,
                    &l4(POD_B, POD_A, p, BACKEND_PORT, d, TCP_ACK, 64),
                )
            },
            Counter::DeliverLocalPeer,
            false,
        ),
        (
            "nic, learned pod",
            NIC_PROG,
            NIC,
            |p, d| {
                eth(
                    HOST_MAC,
                    PEER_MAC,
                    ETH_P_IP,
                    &l4(POD_REMOTE, POD_A, p, BACKEND_PORT, d, TCP_ACK, 63),
                )
            },
            Counter::DeliverLocalPeer,
            false,
        ),
        (
            "nic, via the bridge",
            NIC_PROG,
            NIC,
            |p, d| {
                eth(
                    HOST_MAC,
                    PEER_MAC,
                    ETH_P_IP,
                    &l4(POD_REMOTE, POD_NEW, p, BACKEND_PORT, d, TCP_ACK, 63),
                )
            },
            Counter::DeliverLocalBridge,
            false,
        ),
        (
            "nic, IPIP",
            NIC_PROG,
            NIC,
            |p, d| {
                let inner = l4(POD_REMOTE, POD_A, p, BACKEND_PORT, d, TCP_ACK, 63);
                eth(
                    HOST_MAC,
                    PEER_MAC,
                    ETH_P_IP,
                    &ipv4_with(PEER, ME, 4, 64, &inner),
                )
            },
            Counter::DeliverLocalPeer,
            true,
        ),
        (
            "wireguard, learned pod",
            WG_PROG,
            WG,
            |p, d| l4(POD_FAR, POD_A, p, BACKEND_PORT, d, TCP_ACK, 60),
            Counter::DeliverLocalPeer,
            false,
        ),
        (
            "wireguard, via the bridge",
            WG_PROG,
            WG,
            |p, d| l4(POD_FAR, POD_NEW, p, BACKEND_PORT, d, TCP_ACK, 60),
            Counter::DeliverLocalBridge,
            false,
        ),
    ]
}

fn seen(prog: &str) -> Counter {
    match prog {
        POD_PROG => Counter::PodIngressSeen,
        NIC_PROG => Counter::NicIngressSeen,
        _ => Counter::WgIngressSeen,
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn a_reply_to_a_recorded_socket_is_passed_on_each_delivery_hook() {
    let mut dp = services(Datapath::load().with_topology(true));
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        // POD_A's sockets are recorded by the program; POD_NEW (not learned,
        // so delivered through the bridge) gets its record from the test.
        dp.tc(
            POD_PROG,
            &to_service(POD_A, proto, CLIENT_PORT, TCP_SYN),
            VETH_A,
        );
        assert!(client(&dp, proto, POD_A, CLIENT_PORT).is_some());
        set_client(&mut dp, proto, POD_NEW, CLIENT_PORT, monotonic_ns());
    }
    for (what, prog, ingress, frame, _, ipip) in deliveries() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let f = frame(proto, CLIENT_PORT);
            let c0 = dp.counts();
            let r = dp.tc(prog, &f, ingress);
            assert_eq!(r.ret, TC_ACT_UNSPEC, "{what} {proto}: to the stack");
            let mut want = vec![(seen(prog), 1), (Counter::ServiceReplyToStack, 1)];
            if ipip {
                want.push((Counter::IpipDecap, 1));
                let inner = [&f[..14], &f[34..]].concat();
                assert_eq!(r.out, inner, "{what} {proto}: decapsulated, else unchanged");
            } else {
                assert_eq!(r.out, f, "{what} {proto}: unchanged (TTL too)");
            }
            assert_counted(&c0, &dp.counts(), &want);
        }
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn unrelated_replies_are_still_fast_pathed() {
    let mut dp = services(Datapath::load().with_topology(true));
    dp.tc(
        POD_PROG,
        &to_service(POD_A, IPPROTO_TCP, CLIENT_PORT, TCP_SYN),
        VETH_A,
    );
    set_client(&mut dp, IPPROTO_TCP, POD_NEW, CLIENT_PORT, monotonic_ns());
    // A UDP socket whose last packet to a service is older than UDP's freshness.
    let stale = monotonic_ns().saturating_sub(UDP_FRESH_NS + 1_000_000_000);
    assert!(
        stale > 0,
        "the machine is up for longer than UDP's freshness"
    );
    set_client(&mut dp, IPPROTO_UDP, POD_A, CLIENT_PORT + 2, stale);
    set_client(&mut dp, IPPROTO_UDP, POD_NEW, CLIENT_PORT + 2, stale);
    // (why, protocol, destination port)
    let cases: &[(&str, u8, u16)] = &[
        ("another port", IPPROTO_TCP, CLIENT_PORT + 1),
        (
            "the recorded port, other protocol",
            IPPROTO_UDP,
            CLIENT_PORT,
        ),
        ("a stale record", IPPROTO_UDP, CLIENT_PORT + 2),
    ];
    for (what, prog, ingress, frame, counter, ipip) in deliveries() {
        for (why, proto, dport) in cases {
            let c0 = dp.counts();
            let r = dp.tc(prog, &frame(*proto, *dport), ingress);
            assert_eq!(r.ret, TC_ACT_REDIRECT, "{what}, {why}: forwarded by eBPF");
            let mut want = vec![(seen(prog), 1), (counter, 1)];
            if ipip {
                want.push((Counter::IpipDecap, 1));
            }
            assert_counted(&c0, &dp.counts(), &want);
        }
    }
}
