//! The datapath programs run on crafted packets with BPF_PROG_TEST_RUN.
//!
//! Each test loads the embedded object (`weft::datapath::EBPF_OBJECT`) with
//! its maps pinned in a private bpffs mounted for the test (and unmounted
//! after), fills the maps, runs one program and checks the verdict, the
//! packet that comes out and the counters. In a test run the redirect helpers
//! only record their target, so a redirect shows as `TC_ACT_REDIRECT` (7).
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the mount):
//! `cargo test -p weft --test bpf_programs -- --ignored` (run by `cargo xtask test`).
//!
//! Checksums here are computed by the test's own RFC 1071 code, not by
//! `weft_common`, so the two check each other.

mod bpf_common;

use bpf_common::*;
use std::path::Path;
use weft_common::counters::Counter;
use weft_common::maps::{self, Route};

// ---------------------------------------------------------------------------
// Loading.

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn every_program_passes_the_verifier_and_maps_are_pinned_by_name() {
    let dp = Datapath::load();
    for name in [
        maps::ROUTES,
        maps::PODS,
        maps::IPIP_SENDERS,
        maps::SENDER_SOURCES,
        maps::NIC_SOURCES,
        maps::COUNTERS,
    ] {
        assert!(Path::new(&dp.fs.path).join(name).exists(), "{name} pinned");
    }
    assert_eq!(dp.counts().iter().map(|c| c.packets).sum::<u64>(), 0);
}

// ---------------------------------------------------------------------------
// weft_pod_ingress

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_passes_a_pods_own_source_and_writes_no_map() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, OUTSIDE, 17, 64));
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_UNSPEC);
    assert_eq!(r.out, frame, "passed unchanged");
    let c1 = dp.counts();
    assert_counted(
        &c0,
        &c1,
        &[(Counter::PodIngressSeen, 1), (Counter::PassNoRoute, 1)],
    );
    let seen = Counter::PodIngressSeen as usize;
    assert_eq!(
        c1[seen].bytes - c0[seen].bytes,
        frame.len() as u64,
        "bytes counted"
    );
    // Packets never write WEFT_PODS: a source nobody registered stays unknown.
    dp.tc(
        POD_PROG,
        &eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_NEW, OUTSIDE, 17, 64)),
        VETH_A,
    );
    dp.tc(POD_PROG, &arp(MAC_A, POD_NEW, POD_A), VETH_A);
    assert_eq!(dp.pod(POD_NEW), None);
    assert_eq!(dp.pod(POD_A), Some(endpoint(VETH_A, MAC_A)));
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_drops_and_counts_ipv4_from_an_address_not_the_veths_own() {
    let mut dp = Datapath::load().with_topology(true).with_pods();
    let gateway = [10, 244, 1, 1];
    // (source, Ethernet source, ingress veth, what it is)
    let forgeries = [
        (POD_B, MAC_A, VETH_A, "a neighbour's address"),
        (POD_B, MAC_B, VETH_A, "a neighbour's address and MAC"),
        (
            POD_A,
            MAC_B,
            VETH_A,
            "its own address with a neighbour's MAC",
        ),
        (gateway, MAC_A, VETH_A, "the gateway's address"),
        (POD_NEW, MAC_A, VETH_A, "an address the CNI never gave out"),
        (POD_REMOTE, MAC_A, VETH_A, "another node's pod"),
        (OUTSIDE, MAC_A, VETH_A, "an outside address"),
        (
            [0, 0, 0, 0],
            MAC_A,
            VETH_A,
            "0.0.0.0 (DHCP: not how CNI pods get addresses)",
        ),
    ];
    for (src, mac, veth, what) in forgeries {
        for dst in [POD_B, POD_FAR, POD_REMOTE, OUTSIDE, [255, 255, 255, 255]] {
            let frame = eth(GW_MAC, mac, ETH_P_IP, &ipv4(src, dst, 17, 64));
            let c0 = dp.counts();
            let r = dp.tc(POD_PROG, &frame, veth);
            assert_eq!(r.ret, TC_ACT_SHOT, "{what} to {dst:?}: dropped");
            assert_counted(
                &c0,
                &dp.counts(),
                &[
                    (Counter::PodIngressSeen, 1),
                    (Counter::DropSpoofedSource, 1),
                ],
            );
        }
    }
    assert_eq!(
        dp.pod(POD_B),
        Some(endpoint(VETH_B, MAC_B)),
        "victim's entry kept"
    );

    // The victim itself still sends; once deleted (CNI DEL), its address is nobody's.
    let own = eth(GW_MAC, MAC_B, ETH_P_IP, &ipv4(POD_B, POD_FAR, 17, 64));
    assert_eq!(dp.tc(POD_PROG, &own, VETH_B).ret, TC_ACT_REDIRECT);
    dp.remove_pod(POD_B);
    assert_eq!(dp.tc(POD_PROG, &own, VETH_B).ret, TC_ACT_SHOT);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_drops_and_counts_arp_claiming_what_is_not_the_veths_own() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let gateway = [10, 244, 1, 1];
    // Gratuitous ARP (sender = target) and replies naming a neighbour or the gateway.
    for (frame, what) in [
        (arp(MAC_A, POD_B, POD_B), "gratuitous ARP for a neighbour"),
        (
            arp(MAC_A, gateway, gateway),
            "gratuitous ARP for the gateway",
        ),
        (
            arp(MAC_A, POD_B, gateway),
            "request claiming a neighbour's address",
        ),
        (
            arp(MAC_B, POD_A, gateway),
            "own address, neighbour's MAC in the body",
        ),
        (
            arp(MAC_A, POD_NEW, POD_NEW),
            "an address the CNI never gave out",
        ),
    ] {
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!(r.ret, TC_ACT_SHOT, "{what}: dropped");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::DropSpoofedArp, 1)],
        );
    }
    // The pod's own ARP and a probe (sender 0.0.0.0) pass.
    for (frame, what) in [
        (arp(MAC_A, POD_A, gateway), "own request"),
        (arp(MAC_A, POD_A, POD_A), "own gratuitous ARP"),
        (arp(MAC_A, [0, 0, 0, 0], POD_A), "probe"),
    ] {
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &frame), "{what}: passed");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::PassNotIpv4, 1)],
        );
    }
    assert_eq!(dp.pod(POD_A), Some(endpoint(VETH_A, MAC_A)));
    assert_eq!(dp.pod(POD_B), Some(endpoint(VETH_B, MAC_B)));
    assert_eq!(dp.pod(gateway), None);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_switches_same_node_pods_at_l2() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    dp.add_pod(POD_B, endpoint(VETH_B, MAC_B));
    // TTL 1 too: switching is not a router hop.
    for ttl in [64, 1] {
        let frame = eth(MAC_B, MAC_A, ETH_P_IP, &ipv4(POD_A, POD_B, 6, ttl));
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
        assert_eq!(r.out, frame, "frame unchanged (L2)");
        assert_counted(
            &c0,
            &dp.counts(),
            &[(Counter::PodIngressSeen, 1), (Counter::LocalSameNode, 1)],
        );
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_routes_into_a_known_pod_when_sent_to_the_gateway() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    dp.add_pod(POD_B, endpoint(VETH_B, MAC_B));
    let ip = ipv4(POD_A, POD_B, 6, 64);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &eth(GW_MAC, MAC_A, ETH_P_IP, &ip), VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &MAC_B, "dst = the pod's MAC");
    assert_eq!(&r.out[6..12], &GW_MAC, "src = the gateway the pod sent to");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::DeliverLocalPeer, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_redirects_other_segments_into_wireguard() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let ip = ipv4(POD_A, POD_FAR, 17, 64);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect into WireGuard");
    assert_eq!(
        &r.out[..14],
        &frame[..14],
        "Ethernet header left for the kernel to strip"
    );
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::PodIngressSeen, 1),
            (Counter::RedirectWireguard, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_redirects_to_a_node_directly() {
    let dp = Datapath::load().with_topology(false).with_pods();
    let ip = ipv4(POD_A, POD_REMOTE, 6, 64);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh");
    assert_eq!(&r.out[..14], &frame[..14]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::RedirectNode, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_encapsulates_ipip_to_a_node() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let ip = ipv4(POD_A, POD_REMOTE, 6, 64);
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh");
    assert_eq!(r.out.len(), frame.len() + 20, "20 bytes of outer header");
    assert_eq!(&r.out[..14], &frame[..14], "Ethernet header kept in front");
    assert_outer(&r.out[14..34], &ip, ME, PEER);
    assert_one_hop(&r.out[34..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::RedirectNodeIpip, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_encapsulation_copies_no_df_and_tos() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let mut ip = ipv4(POD_A, POD_REMOTE, 17, 30);
    ip[1] = 0xb9; // DSCP EF + ECN CE
    ip[6] = 0; // DF clear
    ip[10] = 0;
    ip[11] = 0;
    let c = inet_csum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let r = dp.tc(POD_PROG, &eth(GW_MAC, MAC_A, ETH_P_IP, &ip), VETH_A);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_outer(&r.out[14..34], &ip, ME, PEER);
    assert_eq!(
        r.out[14 + 6],
        0,
        "DF not set when the inner packet has none"
    );
    assert_one_hop(&r.out[34..], &ip);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_leaves_unknown_local_pods_to_the_bridge() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, POD_NEW, 6, 64));
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!(r.ret, TC_ACT_UNSPEC);
    assert_eq!(r.out, frame);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::PassLocalBridge, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_passes_ttl_1_to_the_stack() {
    let dp = Datapath::load().with_topology(true).with_pods();
    for dst in [POD_FAR, POD_REMOTE] {
        let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &ipv4(POD_A, dst, 1, 1));
        let c0 = dp.counts();
        let r = dp.tc(POD_PROG, &frame, VETH_A);
        assert_eq!(r.ret, TC_ACT_UNSPEC, "the stack sends ICMP time exceeded");
        assert_eq!(r.out, frame, "TTL untouched");
        assert_eq!(
            dp.counts()[Counter::PassTtlExpired as usize].packets
                - c0[Counter::PassTtlExpired as usize].packets,
            1
        );
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_passes_non_ipv4_and_malformed() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let v6 = eth(GW_MAC, MAC_A, ETH_P_IPV6, &[0x60; 60]);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &v6, VETH_A);
    assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &v6));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::PassNotIpv4, 1)],
    );

    let mut bad = ipv4(POD_A, POD_FAR, 6, 64);
    bad[0] = 0x43; // IHL 3
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &bad);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &frame));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::Malformed, 1)],
    );

    // Total length shorter than the header. (A frame cut inside the IPv4 header
    // cannot be tested: BPF_PROG_TEST_RUN itself refuses it with EINVAL.)
    let mut bad = ipv4(POD_A, POD_FAR, 6, 64);
    bad[2..4].copy_from_slice(&12u16.to_be_bytes());
    let frame = eth(GW_MAC, MAC_A, ETH_P_IP, &bad);
    let c0 = dp.counts();
    let r = dp.tc(POD_PROG, &frame, VETH_A);
    assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &frame));
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::PodIngressSeen, 1), (Counter::Malformed, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_ingress_ttl_and_checksum_are_right_for_many_headers() {
    let dp = Datapath::load().with_topology(true).with_pods();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let mut ip = ipv4(POD_A, [10, 244, 9, b[0]], b[1], 2 + b[2] % 254);
        ip[1] = b[3]; // TOS
        ip[4] = b[4]; // ID
        ip[5] = b[5];
        ip[6] = b[6] & 0x40; // DF or not
        ip[10] = 0;
        ip[11] = 0;
        let c = inet_csum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let r = dp.tc(POD_PROG, &eth(GW_MAC, MAC_A, ETH_P_IP, &ip), VETH_A);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert_one_hop(&r.out[14..], &ip);
    }
}

// ---------------------------------------------------------------------------
// weft_nic_ingress

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_delivers_to_a_known_pod() {
    let mut dp = Datapath::load().with_topology(false);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let ip = ipv4(POD_REMOTE, POD_A, 6, 63);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ip), NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(&r.out[0..6], &MAC_A, "dst = the pod's MAC");
    assert_eq!(&r.out[6..12], &HOST_MAC, "src = this NIC");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::NicIngressSeen, 1), (Counter::DeliverLocalPeer, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_sends_unknown_local_pods_through_the_bridge() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_REMOTE, POD_NEW, 17, 64);
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh to the bridge");
    assert_eq!(&r.out[..14], &frame[..14]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::DeliverLocalBridge, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_forwards_other_segments_into_wireguard() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_REMOTE, POD_FAR, 17, 64);
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ip);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::RedirectWireguard, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_passes_node_routes_no_route_ttl_1_and_other_hosts_frames() {
    let dp = Datapath::load().with_topology(false);
    let cases = [
        (
            eth(
                HOST_MAC,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(POD_A, POD_REMOTE, 6, 64),
            ),
            Counter::PassNotOurs,
        ),
        (
            eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ipv4(PEER, ME, 6, 64)),
            Counter::PassNoRoute,
        ),
        (
            eth(
                HOST_MAC,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(POD_REMOTE, POD_NEW, 6, 1),
            ),
            Counter::PassTtlExpired,
        ),
        (
            eth(MAC_B, PEER_MAC, ETH_P_IP, &ipv4(POD_REMOTE, POD_NEW, 6, 64)),
            Counter::PassNotForHost,
        ),
        (arp(PEER_MAC, PEER, ME), Counter::PassNotIpv4),
    ];
    for (frame, why) in cases {
        let c0 = dp.counts();
        let r = dp.tc(NIC_PROG, &frame, NIC);
        assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &frame), "{why:?}");
        assert_counted(&c0, &dp.counts(), &[(Counter::NicIngressSeen, 1), (why, 1)]);
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_decapsulates_ipip_from_a_peer_and_delivers() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let inner = ipv4(POD_REMOTE, POD_A, 6, 63);
    let outer = ipv4_with(PEER, ME, 4, 64, &inner);
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &outer);
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(r.out.len(), frame.len() - 20, "outer header removed");
    assert_eq!(&r.out[0..6], &MAC_A);
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &inner);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::IpipDecap, 1),
            (Counter::DeliverLocalPeer, 1),
        ],
    );

    // An outer header with options (IHL 6) is removed whole.
    let inner = ipv4(POD_REMOTE, POD_A, 17, 40);
    let mut outer = ipv4_with(
        PEER,
        ME,
        4,
        64,
        &[[1u8, 1, 1, 0].as_slice(), &inner].concat(),
    );
    outer[0] = 0x46;
    outer[10] = 0;
    outer[11] = 0;
    let c = inet_csum(&outer[..24]);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    let frame = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &outer);
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(
        r.out.len(),
        frame.len() - 24,
        "outer header and its options removed"
    );
    assert_one_hop(&r.out[14..], &inner);

    // Unknown destination: decapsulated, then through the bridge.
    let inner = ipv4(POD_REMOTE, POD_NEW, 17, 64);
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &inner),
    );
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(&r.out[..14], &frame[..14]);
    assert_one_hop(&r.out[14..], &inner);

    // For the host itself: decapsulated and passed up.
    let inner = ipv4(PEER, ME, 17, 64);
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &inner),
    );
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_UNSPEC);
    assert_eq!(&r.out[14..], &inner[..], "inner packet untouched");
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::IpipDecap, 1),
            (Counter::PassNoRoute, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_drops_ipip_from_strangers() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let inner = ipv4(POD_REMOTE, POD_A, 6, 63);
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(STRANGER, ME, 4, 64, &inner),
    );
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_SHOT);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::DropIpipUnknownSource, 1),
        ],
    );

    // From a peer but not IPv4 inside: no source it may send, dropped.
    let frame = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &[0x60; 40]),
    );
    let c0 = dp.counts();
    let r = dp.tc(NIC_PROG, &frame, NIC);
    assert_eq!(r.ret, TC_ACT_SHOT);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::NicIngressSeen, 1),
            (Counter::DropIpipInnerSource, 1),
        ],
    );
}

// ---------------------------------------------------------------------------
// weft_wg_ingress (packets start at the IP header)

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_delivers_to_a_known_pod_with_an_ethernet_header() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let ip = ipv4(POD_FAR, POD_A, 6, 60);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_peer");
    assert_eq!(r.out.len(), ip.len() + 14, "Ethernet header pushed");
    assert_eq!(&r.out[0..6], &MAC_A);
    assert_eq!(&r.out[6..12], &PSEUDO_MAC);
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::WgIngressSeen, 1), (Counter::DeliverLocalPeer, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_sends_unknown_local_pods_through_the_bridge() {
    let dp = Datapath::load().with_topology(true);
    let ip = ipv4(POD_FAR, POD_NEW, 17, 64);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh to the bridge");
    assert_eq!(r.out.len(), ip.len() + 14);
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_eq!(
        r.out[0] & 1,
        0,
        "unicast destination (redirect_neigh refuses multicast)"
    );
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[
            (Counter::WgIngressSeen, 1),
            (Counter::DeliverLocalBridge, 1),
        ],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_forwards_to_a_node_of_this_location() {
    let dp = Datapath::load().with_topology(false);
    let ip = ipv4(POD_FAR, POD_REMOTE, 6, 64);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh out of the NIC");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_one_hop(&r.out[14..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::WgIngressSeen, 1), (Counter::RedirectNode, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_encapsulates_ipip_to_a_node_of_this_location() {
    let dp = Datapath::load().with_topology(true);
    let ip = ipv4(POD_FAR, POD_REMOTE, 6, 64);
    let c0 = dp.counts();
    let r = dp.tc(WG_PROG, &ip, WG);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "bpf_redirect_neigh out of the NIC");
    assert_eq!(r.out.len(), ip.len() + 14 + 20, "Ethernet and outer header");
    assert_eq!(&r.out[12..14], &[8, 0]);
    assert_outer(&r.out[14..34], &ip, ME, PEER);
    assert_one_hop(&r.out[34..], &ip);
    assert_counted(
        &c0,
        &dp.counts(),
        &[(Counter::WgIngressSeen, 1), (Counter::RedirectNodeIpip, 1)],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn wg_ingress_passes_wireguard_routes_no_route_ttl_1_and_non_ipv4() {
    let dp = Datapath::load().with_topology(true);
    let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 17, 64];
    v6.extend_from_slice(&[0xfd; 32]);
    v6.extend_from_slice(&[0; 20]);
    let cases = [
        (ipv4(POD_FAR, [10, 244, 9, 10], 6, 64), Counter::PassNotOurs),
        (ipv4(POD_FAR, OUTSIDE, 6, 64), Counter::PassNoRoute),
        (ipv4(POD_FAR, POD_NEW, 6, 1), Counter::PassTtlExpired),
        (v6, Counter::PassNotIpv4),
    ];
    for (pkt, why) in cases {
        let c0 = dp.counts();
        let r = dp.tc(WG_PROG, &pkt, WG);
        assert_eq!((r.ret, &r.out), (TC_ACT_UNSPEC, &pkt), "{why:?}");
        assert_counted(&c0, &dp.counts(), &[(Counter::WgIngressSeen, 1), (why, 1)]);
    }
}

// ---------------------------------------------------------------------------
// weft_xdp_ipip

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn xdp_drops_ipip_from_unknown_sources_and_passes_the_rest() {
    let mut dp = Datapath::load().with_topology(true);
    // XDP test runs arrive on the loopback device.
    dp.add_ipip_sender(PEER, LO, ME);
    let inner = ipv4(POD_REMOTE, POD_A, 6, 63);
    let from_stranger = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(STRANGER, ME, 4, 64, &inner),
    );
    let from_peer = eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_with(PEER, ME, 4, 64, &inner),
    );
    let tcp_from_stranger = eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ipv4(STRANGER, ME, 6, 64));
    let arp_frame = arp(PEER_MAC, PEER, ME);

    let c0 = dp.counts();
    let r = dp.xdp(&from_stranger);
    assert_eq!(r.ret, XDP_DROP);
    let c1 = dp.counts();
    assert_counted(&c0, &c1, &[(Counter::XdpDropIpipUnknownSource, 1)]);
    let drop = Counter::XdpDropIpipUnknownSource as usize;
    assert_eq!(c1[drop].bytes - c0[drop].bytes, from_stranger.len() as u64);

    for frame in [&from_peer, &tcp_from_stranger, &arp_frame] {
        let c0 = dp.counts();
        let r = dp.xdp(frame);
        assert_eq!((r.ret, &r.out), (XDP_PASS, frame));
        assert_counted(&c0, &dp.counts(), &[(Counter::XdpPass, 1)]);
    }
}

// ---------------------------------------------------------------------------
// Who may send what (weft_common::sources): IPIP senders, plain sources, MTU

/// An IPIP frame from `outer_src` to `outer_dst` around `inner`, with the
/// outer flags/fragment-offset field `frag_off`.
fn ipip_frame(outer_src: [u8; 4], outer_dst: [u8; 4], frag_off: u16, inner: &[u8]) -> Vec<u8> {
    let mut outer = ipv4_with(outer_src, outer_dst, 4, 64, inner);
    outer[6..8].copy_from_slice(&frag_off.to_be_bytes());
    outer[10] = 0;
    outer[11] = 0;
    let c = inet_csum(&outer[..20]);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    eth(HOST_MAC, PEER_MAC, ETH_P_IP, &outer)
}

/// How one crafted packet must be handled: the verdict and the outcome counter.
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    ingress: u32,
    ret: u32,
    counted: &'static [Counter],
}

#[track_caller]
fn run_cases(dp: &Datapath, prog: &str, seen: Counter, cases: &[Case]) {
    for c in cases {
        let c0 = dp.counts();
        let r = dp.tc(prog, &c.frame, c.ingress);
        assert_eq!(r.ret, c.ret, "{}: verdict", c.what);
        if c.ret == TC_ACT_UNSPEC || c.ret == TC_ACT_SHOT {
            assert_eq!(r.out, c.frame, "{}: unchanged", c.what);
        }
        let mut want: Vec<(Counter, u64)> = c.counted.iter().map(|k| (*k, 1)).collect();
        want.push((seen, 1));
        let after = dp.counts();
        let got: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .zip(c0.iter().zip(&after))
            .filter(|(_, (b, a))| a.packets != b.packets)
            .map(|(k, (b, a))| (*k, a.packets - b.packets))
            .collect();
        want.sort_by_key(|(k, _)| *k as u32);
        assert_eq!(got, want, "{}: counters", c.what);
    }
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_accepts_ipip_only_as_the_topology_says() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let to_pod = |src: [u8; 4]| ipv4(src, POD_A, 6, 63);
    let drop = |what, frame, ingress, why: &'static [Counter]| Case {
        what,
        frame,
        ingress,
        ret: TC_ACT_SHOT,
        counted: why,
    };
    let delivered: &[Counter] = &[Counter::IpipDecap, Counter::DeliverLocalPeer];
    let cases = vec![
        Case {
            what: "a node of this location, its pod",
            frame: ipip_frame(PEER, ME, 0x4000, &to_pod(POD_REMOTE)),
            ingress: NIC,
            ret: TC_ACT_REDIRECT,
            counted: delivered,
        },
        Case {
            what: "a node of this location, its host",
            frame: ipip_frame(PEER, ME, 0, &to_pod(PEER)),
            ingress: NIC,
            ret: TC_ACT_REDIRECT,
            counted: delivered,
        },
        drop(
            "forged outer source",
            ipip_frame(STRANGER, ME, 0, &to_pod(POD_REMOTE)),
            NIC,
            &[Counter::DropIpipUnknownSource],
        ),
        drop(
            "forged outer source of this LAN",
            ipip_frame([192, 168, 50, 77], ME, 0, &to_pod(POD_REMOTE)),
            NIC,
            &[Counter::DropIpipUnknownSource],
        ),
        drop(
            "wrong outer destination",
            ipip_frame(PEER, [192, 168, 50, 99], 0, &to_pod(POD_REMOTE)),
            NIC,
            &[Counter::DropIpipWrongDestination],
        ),
        drop(
            "wrong arrival device (the internet side)",
            ipip_frame(PEER, ME, 0, &to_pod(POD_REMOTE)),
            OTHER_DEV,
            &[Counter::DropIpipWrongDevice],
        ),
        drop(
            "inner source: another segment's pod, from a plain node",
            ipip_frame(PEER, ME, 0, &to_pod(POD_FAR)),
            NIC,
            &[Counter::DropIpipInnerSource],
        ),
        drop(
            "inner source: this node's own pod",
            ipip_frame(PEER, ME, 0, &to_pod(POD_B)),
            NIC,
            &[Counter::DropIpipInnerSource],
        ),
        drop(
            "inner source: outside the cluster",
            ipip_frame(PEER, ME, 0, &to_pod(OUTSIDE)),
            NIC,
            &[Counter::DropIpipInnerSource],
        ),
    ];
    run_cases(&dp, NIC_PROG, Counter::NicIngressSeen, &cases);

    // The leader relays the far segment: its pods, and only through the leader.
    dp.add_sender_source(PEER, [10, 244, 9, 0], 24);
    run_cases(
        &dp,
        NIC_PROG,
        Counter::NicIngressSeen,
        &[Case {
            what: "the leader relaying another segment",
            frame: ipip_frame(PEER, ME, 0, &to_pod(POD_FAR)),
            ingress: NIC,
            ret: TC_ACT_REDIRECT,
            counted: delivered,
        }],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_passes_ipip_fragments_unparsed() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    // A non-first fragment's payload is no inner header: it must not be parsed as one.
    let looks_like_ipv4 = ipv4(POD_REMOTE, POD_A, 6, 63);
    let pass = |what, frag_off| Case {
        what,
        frame: ipip_frame(PEER, ME, frag_off, &looks_like_ipv4),
        ingress: NIC,
        ret: TC_ACT_UNSPEC,
        counted: &[Counter::PassIpipFragment],
    };
    let cases = vec![
        pass("first fragment", 0x2000),
        pass("middle fragment", 0x2000 | 185),
        pass("last fragment", 185),
        Case {
            what: "a fragment from a stranger",
            frame: ipip_frame(STRANGER, ME, 0x2000, &looks_like_ipv4),
            ingress: NIC,
            ret: TC_ACT_SHOT,
            counted: &[Counter::DropIpipUnknownSource],
        },
        Case {
            what: "a fragment on the wrong device",
            frame: ipip_frame(PEER, ME, 185, &looks_like_ipv4),
            ingress: OTHER_DEV,
            ret: TC_ACT_SHOT,
            counted: &[Counter::DropIpipWrongDevice],
        },
    ];
    run_cases(&dp, NIC_PROG, Counter::NicIngressSeen, &cases);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_ingress_forwards_plain_ipv4_only_from_sources_allowed_there() {
    // --encapsulate never: pods of this location arrive unencapsulated.
    let mut dp = Datapath::load().with_topology(false);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let frame = |src, dst| eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ipv4(src, dst, 17, 63));
    let ok = |what, src, dst, counted| Case {
        what,
        frame: frame(src, dst),
        ingress: NIC,
        ret: TC_ACT_REDIRECT,
        counted,
    };
    let forged = |what, src, dst, ingress| Case {
        what,
        frame: frame(src, dst),
        ingress,
        ret: TC_ACT_SHOT,
        counted: &[Counter::DropPlainSource],
    };
    let cases = vec![
        ok(
            "a pod of this location",
            POD_REMOTE,
            POD_A,
            &[Counter::DeliverLocalPeer],
        ),
        ok("a node's host", PEER, POD_A, &[Counter::DeliverLocalPeer]),
        ok(
            "an external source (a NodePort client, a masqueraded reply)",
            OUTSIDE,
            POD_A,
            &[Counter::DeliverLocalPeer],
        ),
        ok(
            "a pod of this location, through the leader into WireGuard",
            POD_REMOTE,
            POD_FAR,
            &[Counter::RedirectWireguard],
        ),
        forged("another segment's pod on the LAN", POD_FAR, POD_A, NIC),
        forged("this node's own pod", POD_B, POD_A, NIC),
        forged("this node's own address", ME, POD_A, NIC),
        forged(
            "a pod of this location on another device",
            POD_REMOTE,
            POD_A,
            OTHER_DEV,
        ),
        forged("this node's own pod into WireGuard", POD_B, POD_FAR, NIC),
        Case {
            what: "to the host itself: not forwarded, not judged",
            frame: frame(POD_FAR, ME),
            ingress: NIC,
            ret: TC_ACT_UNSPEC,
            counted: &[Counter::PassNoRoute],
        },
    ];
    run_cases(&dp, NIC_PROG, Counter::NicIngressSeen, &cases);

    // On a node behind the leader PEER, the far segment arrives from the LAN.
    dp.add_nic_source([10, 244, 9, 0], 24, NIC);
    run_cases(
        &dp,
        NIC_PROG,
        Counter::NicIngressSeen,
        &[ok(
            "the leader relaying another segment",
            POD_FAR,
            POD_A,
            &[Counter::DeliverLocalPeer],
        )],
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn uplink_ingress_drops_cluster_sources_for_the_cluster() {
    let mut dp = Datapath::load().with_topology(false);
    dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
    let frame = |src, dst| eth(HOST_MAC, PEER_MAC, ETH_P_IP, &ipv4(src, dst, 17, 63));
    let case = |what, src, dst, ret, counted| Case {
        what,
        frame: frame(src, dst),
        ingress: OTHER_DEV,
        ret,
        counted,
    };
    let shot = TC_ACT_SHOT;
    let pass = TC_ACT_UNSPEC;
    let dropped: &[Counter] = &[Counter::DropPlainSource];
    let cases = vec![
        case(
            "a pod of this location, from the internet",
            POD_REMOTE,
            POD_A,
            shot,
            dropped,
        ),
        case(
            "another segment's pod, from the internet",
            POD_FAR,
            POD_NEW,
            shot,
            dropped,
        ),
        case("to a remote pod", POD_B, POD_REMOTE, shot, dropped),
        case(
            "an external source: the stack's business",
            OUTSIDE,
            POD_A,
            pass,
            &[Counter::PassNotOurs],
        ),
        case(
            "a cluster source to the host",
            POD_REMOTE,
            ME,
            pass,
            &[Counter::PassNotOurs],
        ),
    ];
    run_cases(&dp, UPLINK_PROG, Counter::UplinkIngressSeen, &cases);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn xdp_checks_ipip_as_the_nic_does() {
    let mut dp = Datapath::load().with_topology(true);
    dp.add_ipip_sender(PEER, LO, ME);
    let to_pod = |src: [u8; 4]| ipv4(src, POD_A, 6, 63);
    let cases: Vec<(&str, Vec<u8>, u32, Counter)> = vec![
        (
            "a node of this location",
            ipip_frame(PEER, ME, 0, &to_pod(POD_REMOTE)),
            XDP_PASS,
            Counter::XdpPass,
        ),
        (
            "a fragment from it",
            ipip_frame(PEER, ME, 185, &to_pod(POD_FAR)),
            XDP_PASS,
            Counter::XdpPass,
        ),
        (
            "forged outer source",
            ipip_frame(STRANGER, ME, 0, &to_pod(POD_REMOTE)),
            XDP_DROP,
            Counter::XdpDropIpipUnknownSource,
        ),
        (
            "wrong outer destination",
            ipip_frame(PEER, [192, 168, 50, 99], 0, &to_pod(POD_REMOTE)),
            XDP_DROP,
            Counter::XdpDropIpipForged,
        ),
        (
            "inner source outside the sender's ranges",
            ipip_frame(PEER, ME, 0, &to_pod(POD_FAR)),
            XDP_DROP,
            Counter::XdpDropIpipForged,
        ),
    ];
    for (what, frame, ret, counter) in &cases {
        let c0 = dp.counts();
        let r = dp.xdp(frame);
        assert_eq!((r.ret, &r.out), (*ret, frame), "{what}");
        assert_counted(&c0, &dp.counts(), &[(*counter, 1)]);
    }
    // Registered on the NIC, but XDP test runs arrive on the loopback device.
    dp.add_ipip_sender(PEER, NIC, ME);
    let frame = ipip_frame(PEER, ME, 0, &to_pod(POD_REMOTE));
    let c0 = dp.counts();
    assert_eq!(dp.xdp(&frame).ret, XDP_DROP, "wrong arrival device");
    assert_counted(&c0, &dp.counts(), &[(Counter::XdpDropIpipForged, 1)]);
}

/// Runs `f` on a thread of its own in a new network namespace holding a veth
/// pair `mtu0`/`mtu1` of MTU `mtu`: `bpf_check_mtu` finds devices by index in
/// the test run's namespace. Returns `mtu0`'s index to `f`.
fn in_netns_with_veth<T: Send + 'static>(mtu: u32, f: impl FnOnce(u32) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let st = std::process::Command::new("ip")
            .args(["link", "add", "mtu0", "mtu"])
            .arg(mtu.to_string())
            .args(["type", "veth", "peer", "name", "mtu1"])
            .status()
            .expect("running ip");
        assert!(st.success(), "ip link add");
        let name = std::ffi::CString::new("mtu0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(idx, 0, "mtu0 in the test's namespace");
        f(idx)
    })
    .join()
    .expect("the test thread")
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn forwarding_redirects_that_exceed_the_egress_mtu_go_to_the_stack() {
    in_netns_with_veth(1500, |dev| {
        let mut dp = Datapath::load().with_topology(true);
        dp.add_pod(POD_A, endpoint(VETH_A, MAC_A));
        dp.add_route([10, 244, 2, 0], 24, Route::node_ipip(dev, PEER, ME));
        dp.add_route([10, 244, 3, 0], 24, Route::node(dev, PEER));
        dp.add_route([10, 244, 9, 0], 24, Route::wireguard(dev));
        let to = |dst: [u8; 4], total: usize, df: bool| {
            let mut ip = ipv4_with(POD_A, dst, 17, 64, &vec![0u8; total - 20]);
            if !df {
                ip[6] = 0;
                ip[10] = 0;
                ip[11] = 0;
                let c = inet_csum(&ip[..20]);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
            }
            eth(GW_MAC, MAC_A, ETH_P_IP, &ip)
        };
        let node3 = [10, 244, 3, 7];
        // (what, frame, forwarded)
        let cases = [
            (
                "IPIP, fits after encapsulation",
                to(POD_REMOTE, 1480, true),
                true,
            ),
            (
                "IPIP, DF, 1 byte over once encapsulated",
                to(POD_REMOTE, 1481, true),
                false,
            ),
            (
                "IPIP, no DF, over once encapsulated",
                to(POD_REMOTE, 1500, false),
                false,
            ),
            ("direct, fits", to(node3, 1500, true), true),
            ("direct, over", to(node3, 1501, true), false),
            ("WireGuard, fits", to(POD_FAR, 1500, true), true),
            ("WireGuard, over", to(POD_FAR, 1600, false), false),
        ];
        for (what, frame, forwarded) in &cases {
            let c0 = dp.counts();
            let r = dp.tc(POD_PROG, frame, VETH_A);
            let c1 = dp.counts();
            if *forwarded {
                assert_eq!(r.ret, TC_ACT_REDIRECT, "{what}");
                assert_eq!(
                    c1[Counter::PassMtu as usize].packets,
                    c0[Counter::PassMtu as usize].packets,
                    "{what}"
                );
            } else {
                assert_eq!(
                    (r.ret, &r.out),
                    (TC_ACT_UNSPEC, frame),
                    "{what}: to the stack, unchanged"
                );
                assert_eq!(
                    c1[Counter::PassMtu as usize].packets - c0[Counter::PassMtu as usize].packets,
                    1,
                    "{what}"
                );
            }
        }

        // The outer header gets a fresh ID, not the inner one (0x1234).
        let ids: std::collections::BTreeSet<[u8; 2]> = (0..8)
            .map(|_| {
                let r = dp.tc(POD_PROG, &to(POD_REMOTE, 100, true), VETH_A);
                assert_eq!(r.ret, TC_ACT_REDIRECT);
                [r.out[14 + 4], r.out[14 + 5]]
            })
            .collect();
        assert!(ids.len() > 1, "outer IDs vary: {ids:?}");
        // Inner header untouched but for the TTL.
        let r = dp.tc(POD_PROG, &to(POD_REMOTE, 100, true), VETH_A);
        assert_eq!(&r.out[34 + 4..34 + 6], &[0x12, 0x34], "inner ID kept");
    });
}
