//! `weft_nic_egress` on crafted packets with BPF_PROG_TEST_RUN: what the
//! kernel sends out of the NIC towards a pod CIDR reached through IPIP gets
//! the outer header of its route; everything else leaves untouched.
//!
//! BPF_PROG_TEST_RUN runs a tc program on the loopback device (ifindex 1):
//! here the "NIC" of the routes is ifindex 1, and a route out of another
//! device (the [`NIC`] of the other tests, 2) is one that must not apply.

mod bpf_common;

use bpf_common::*;
use weft_common::counters::Counter;
use weft_common::maps::Route;

/// The device BPF_PROG_TEST_RUN's skb leaves by.
const TEST_DEV: u32 = 1;

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn nic_egress_encapsulates_only_what_an_ipip_route_out_of_this_nic_covers() {
    struct Case {
        name: &'static str,
        frame: Vec<u8>,
        /// Some((outer src, outer dst)): encapsulated; None: untouched.
        encapsulated: Option<([u8; 4], [u8; 4])>,
        counted: &'static [(Counter, u64)],
    }
    let host_to_pod = ipv4(ME, POD_REMOTE, 6, 64);
    let plain = eth(PEER_MAC, HOST_MAC, ETH_P_IP, &host_to_pod);
    let ipip = ipv4_with(ME, PEER, 4, 64, &host_to_pod);
    const SEEN: (Counter, u64) = (Counter::NicEgressSeen, 1);
    let cases = [
        Case {
            name: "host traffic to a pod behind an IPIP route",
            frame: plain.clone(),
            encapsulated: Some((ME, PEER)),
            counted: &[SEEN, (Counter::HostIpipEncap, 1)],
        },
        Case {
            name: "a forwarded pod's packet to the same pod CIDR",
            frame: eth(
                PEER_MAC,
                HOST_MAC,
                ETH_P_IP,
                &ipv4(POD_A, POD_REMOTE, 17, 63),
            ),
            encapsulated: Some((ME, PEER)),
            counted: &[SEEN, (Counter::HostIpipEncap, 1)],
        },
        Case {
            name: "already IPIP (the programs' own)",
            frame: eth(PEER_MAC, HOST_MAC, ETH_P_IP, &ipip),
            encapsulated: None,
            counted: &[SEEN],
        },
        Case {
            name: "a pod CIDR reached without encapsulation",
            frame: eth(
                PEER_MAC,
                HOST_MAC,
                ETH_P_IP,
                &ipv4(ME, [10, 244, 3, 7], 6, 64),
            ),
            encapsulated: None,
            counted: &[SEEN],
        },
        Case {
            name: "an IPIP route out of another device",
            frame: eth(
                PEER_MAC,
                HOST_MAC,
                ETH_P_IP,
                &ipv4(ME, [10, 244, 4, 7], 6, 64),
            ),
            encapsulated: None,
            counted: &[SEEN],
        },
        Case {
            name: "no route (the internet)",
            frame: eth(PEER_MAC, HOST_MAC, ETH_P_IP, &ipv4(ME, OUTSIDE, 6, 64)),
            encapsulated: None,
            counted: &[SEEN],
        },
        Case {
            name: "ARP",
            frame: eth(PEER_MAC, HOST_MAC, ETH_P_ARP, &arp(HOST_MAC, ME, PEER)),
            encapsulated: None,
            counted: &[SEEN],
        },
    ];
    let mut dp = Datapath::load();
    dp.add_route([10, 244, 2, 0], 24, Route::node_ipip(TEST_DEV, PEER, ME));
    dp.add_route([10, 244, 3, 0], 24, Route::node(TEST_DEV, PEER));
    dp.add_route([10, 244, 4, 0], 24, Route::node_ipip(NIC, PEER, ME));
    for c in cases {
        let before = dp.counts();
        let r = dp.tc(NIC_EGRESS_PROG, &c.frame, 0);
        assert_eq!(r.ret, TC_ACT_UNSPEC, "{}: goes on", c.name);
        match c.encapsulated {
            Some((src, dst)) => {
                assert_eq!(r.out.len(), c.frame.len() + 20, "{}", c.name);
                assert_eq!(&r.out[..14], &c.frame[..14], "{}: Ethernet kept", c.name);
                assert_outer(&r.out[14..34], &c.frame[14..], src, dst);
                assert_eq!(&r.out[34..], &c.frame[14..], "{}: inner untouched", c.name);
            }
            None => assert_eq!(r.out, c.frame, "{}: untouched", c.name),
        }
        assert_counted(&before, &dp.counts(), c.counted);
    }
}
