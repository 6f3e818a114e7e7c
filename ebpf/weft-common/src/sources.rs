//! Who may send what into this node without WireGuard: the checks on IPIP
//! and plain IPv4 arriving at the NIC (and on the uplinks), and the MTU
//! check of the redirects.
//!
//! Nothing on a wire that WireGuard did not authenticate can be trusted on
//! its addresses alone, so the topology (a pure function of the model) says
//! who may send what, the agent writes it into three maps, and the programs
//! hold every packet they would forward against them:
//!
//! - **IPIP** (`weft_xdp_ipip`, `weft_nic_ingress`) is decapsulated only when
//!   the outer source is a node of this location (`WEFT_IPIP_SENDERS`), the
//!   outer destination is this node's private IP, it arrived on the NIC the
//!   route to that node points to, and the inner source is one that node may
//!   send (`WEFT_SENDER_SOURCES`): its pod CIDR and its private IP (what its
//!   host sends), and, for the location's leader, everything it relays into
//!   the location (the other segments' pod CIDRs, private IPs, WireGuard IPs
//!   and allowed location IPs, and the external peers' allowed IPs). IPIP
//!   fragments from such a node go to the stack: their inner headers are
//!   not all there to check (the kernel, without an ipip module, drops them).
//! - **Plain IPv4** that the NIC program would forward (into a pod, or into
//!   WireGuard on a leader) is looked up by source in `WEFT_NIC_SOURCES`,
//!   which holds every cluster range (every segment's pod CIDRs, private IPs
//!   and WireGuard IP, the other segments' allowed location IPs, the peers'
//!   allowed IPs) with the NIC it may arrive on: the union of what this
//!   location's nodes may send, as above, gets the NIC; every other cluster
//!   range gets 0 ("from nowhere": this node's own pods, other locations'
//!   pods, which come through WireGuard). A source that is no cluster range
//!   at all is external (replies to masqueraded traffic, NodePort clients,
//!   this location's allowed location IPs, the LAN) and passes, as it would
//!   without Weft; so does a `/0` peer range (an exit peer), which would
//!   otherwise make every address a cluster one. The uplinks (the other
//!   devices, e.g. the public one) apply the same lookup to what the stack
//!   would forward into a local pod: no cluster source arrives there.
//!   Traffic the host receives itself is not touched.
//!
//! Limits: on a LAN shared with strangers, a plain packet (`--encapsulate
//! never`, or a node's host traffic, which the kernel routes unencapsulated)
//! can still claim a source some node of the location may send, and IPIP can
//! claim a node's private IP: only WireGuard authenticates. What no forged
//! packet can do any more is claim a source outside its claimed sender's
//! ranges, or reach a pod with a cluster source from outside the location.
//!
//! **MTU**: the redirects skip the forwarding path's MTU check, so each
//! forwarding redirect is checked with `bpf_check_mtu` against the egress
//! device ([`fits_mtu`]); a packet that does not fit goes to the stack,
//! which fragments it or, for DF, answers "fragmentation needed" (path MTU
//! discovery).

use crate::counters::Counter;
use crate::maps::IpipSender;
use crate::packet::Ipv4Facts;

/// What to do with an IPIP packet arriving at the NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpipVerdict {
    /// Every check passed: remove the outer header.
    Decap,
    /// A fragment from a node of this location: to the stack, unparsed.
    PassFragment,
    /// The outer source is not a node of this location.
    DropUnknownSender,
    /// The outer destination is not this node's private IP.
    DropWrongDestination,
    /// Arrived on another device than the NIC the route to the sender uses.
    DropWrongDevice,
    /// The inner source is not one the sender may send.
    DropInnerSource,
}

impl IpipVerdict {
    /// Whether the packet is dropped.
    pub const fn is_drop(self) -> bool {
        !matches!(self, IpipVerdict::Decap | IpipVerdict::PassFragment)
    }

    /// The counter of tc on the NIC for this verdict (`Decap` counts `IpipDecap`).
    pub const fn tc_counter(self) -> Counter {
        match self {
            IpipVerdict::Decap => Counter::IpipDecap,
            IpipVerdict::PassFragment => Counter::PassIpipFragment,
            IpipVerdict::DropUnknownSender => Counter::DropIpipUnknownSource,
            IpipVerdict::DropWrongDestination => Counter::DropIpipWrongDestination,
            IpipVerdict::DropWrongDevice => Counter::DropIpipWrongDevice,
            IpipVerdict::DropInnerSource => Counter::DropIpipInnerSource,
        }
    }

    /// The counter of XDP for this verdict.
    pub const fn xdp_counter(self) -> Counter {
        match self {
            IpipVerdict::Decap | IpipVerdict::PassFragment => Counter::XdpPass,
            IpipVerdict::DropUnknownSender => Counter::XdpDropIpipUnknownSource,
            _ => Counter::XdpDropIpipForged,
        }
    }
}

/// The IPIP rule. `sender` is the `WEFT_IPIP_SENDERS` entry of the outer
/// source (`ifindex` 0: none); `inner_source_allowed` looks the inner source
/// up in `WEFT_SENDER_SOURCES` and is called only for a non-fragment that
/// passed every outer check.
#[inline(always)]
pub fn ipip_verdict(
    outer: &Ipv4Facts,
    ingress_ifindex: u32,
    sender: &IpipSender,
    inner_source_allowed: impl FnOnce() -> bool,
) -> IpipVerdict {
    if sender.ifindex == 0 {
        IpipVerdict::DropUnknownSender
    } else if outer.dst != sender.local {
        IpipVerdict::DropWrongDestination
    } else if ingress_ifindex != sender.ifindex {
        IpipVerdict::DropWrongDevice
    } else if outer.is_fragment() {
        IpipVerdict::PassFragment
    } else if !inner_source_allowed() {
        IpipVerdict::DropInnerSource
    } else {
        IpipVerdict::Decap
    }
}

/// What a `WEFT_NIC_SOURCES` lookup returns for a source in no cluster range.
pub const NOT_CLUSTER: u32 = u32::MAX;
/// The `WEFT_NIC_SOURCES` value of a cluster range no device may bring in.
pub const FROM_NOWHERE: u32 = 0;

/// The plain-IPv4 rule: `rule` is the `WEFT_NIC_SOURCES` value of the
/// packet's source ([`NOT_CLUSTER`] on a miss), `ingress_ifindex` the device
/// it arrived on. External sources pass; a cluster source only on its device.
#[inline(always)]
pub const fn plain_source_allowed(rule: u32, ingress_ifindex: u32) -> bool {
    rule == NOT_CLUSTER || (rule != FROM_NOWHERE && rule == ingress_ifindex)
}

/// Whether a packet fits an egress MTU once `encap` bytes are added:
/// `l3_len` is its IPv4 total length, or, for a GSO packet, the length of
/// one segment (its IPv4 and transport headers plus `gso_size`), which is
/// what goes on the wire.
#[inline(always)]
pub const fn fits_mtu(l3_len: u32, encap: u32, mtu: u32) -> bool {
    l3_len + encap <= mtu
}

/// The IPv4 length of each segment of a GSO packet: IPv4 header
/// (`ip_header_len`), transport header (`l4_header_len`) and `gso_size`
/// bytes of payload.
#[inline(always)]
pub const fn gso_segment_len(ip_header_len: u32, l4_header_len: u32, gso_size: u32) -> u32 {
    ip_header_len + l4_header_len + gso_size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{IP_DF, IP_MF, ipv4};
    use crate::testutil::ipv4_header;

    const NIC: u32 = 2;
    const OTHER_NIC: u32 = 5;
    const ME: [u8; 4] = [192, 168, 1, 10];
    const PEER: [u8; 4] = [192, 168, 1, 11];

    fn ipip(src: [u8; 4], dst: [u8; 4], frag_off: u16) -> Ipv4Facts {
        let mut h = ipv4_header(src, dst, 4, 64, 80);
        h[ipv4::FRAG_OFF..ipv4::FRAG_OFF + 2].copy_from_slice(&frag_off.to_be_bytes());
        Ipv4Facts::parse(&h).unwrap()
    }

    #[test]
    fn ipip_rule_table() {
        let known = IpipSender {
            ifindex: NIC,
            local: ME,
        };
        let unknown = IpipSender::default();
        // (outer, ingress, sender entry, inner source allowed, verdict)
        let table: &[(Ipv4Facts, u32, IpipSender, bool, IpipVerdict)] = &[
            (ipip(PEER, ME, IP_DF), NIC, known, true, IpipVerdict::Decap),
            (ipip(PEER, ME, 0), NIC, known, true, IpipVerdict::Decap),
            (
                ipip([6, 6, 6, 6], ME, 0),
                NIC,
                unknown,
                true,
                IpipVerdict::DropUnknownSender,
            ),
            (
                ipip(PEER, [192, 168, 1, 99], 0),
                NIC,
                known,
                true,
                IpipVerdict::DropWrongDestination,
            ),
            (
                ipip(PEER, [198, 18, 0, 10], 0),
                OTHER_NIC,
                known,
                true,
                IpipVerdict::DropWrongDestination,
            ),
            (
                ipip(PEER, ME, 0),
                OTHER_NIC,
                known,
                true,
                IpipVerdict::DropWrongDevice,
            ),
            (
                ipip(PEER, ME, 0),
                NIC,
                known,
                false,
                IpipVerdict::DropInnerSource,
            ),
            // Fragments: first (MF), middle (MF + offset), last (offset).
            (
                ipip(PEER, ME, IP_MF),
                NIC,
                known,
                false,
                IpipVerdict::PassFragment,
            ),
            (
                ipip(PEER, ME, IP_MF | 185),
                NIC,
                known,
                false,
                IpipVerdict::PassFragment,
            ),
            (
                ipip(PEER, ME, 185),
                NIC,
                known,
                false,
                IpipVerdict::PassFragment,
            ),
            // A forged fragment is still dropped on its outer header.
            (
                ipip(PEER, ME, IP_MF),
                OTHER_NIC,
                known,
                true,
                IpipVerdict::DropWrongDevice,
            ),
        ];
        for (outer, ingress, sender, allowed, want) in table {
            let mut looked_up = false;
            let got = ipip_verdict(outer, *ingress, sender, || {
                looked_up = true;
                *allowed
            });
            assert_eq!(got, *want, "{outer:?} on {ingress} from {sender:?}");
            let needs_lookup = matches!(want, IpipVerdict::Decap | IpipVerdict::DropInnerSource);
            assert_eq!(looked_up, needs_lookup, "inner lookup only when it decides");
        }
    }

    #[test]
    fn ipip_counters() {
        use IpipVerdict::*;
        let all = [
            Decap,
            PassFragment,
            DropUnknownSender,
            DropWrongDestination,
            DropWrongDevice,
            DropInnerSource,
        ];
        for v in all {
            let xdp_drop = !matches!(v.xdp_counter(), Counter::XdpPass);
            assert_eq!(v.is_drop(), xdp_drop, "{v:?}");
        }
        assert_eq!(DropInnerSource.tc_counter(), Counter::DropIpipInnerSource);
        assert_eq!(DropWrongDevice.xdp_counter(), Counter::XdpDropIpipForged);
        assert_eq!(
            DropUnknownSender.xdp_counter(),
            Counter::XdpDropIpipUnknownSource
        );
        assert_eq!(PassFragment.tc_counter(), Counter::PassIpipFragment);
    }

    #[test]
    fn plain_rule_table() {
        let table: &[(u32, u32, bool)] = &[
            (NOT_CLUSTER, NIC, true),
            (NOT_CLUSTER, OTHER_NIC, true),
            (NIC, NIC, true),
            (NIC, OTHER_NIC, false),
            (FROM_NOWHERE, NIC, false),
            (FROM_NOWHERE, FROM_NOWHERE, false),
        ];
        for (rule, ingress, want) in table {
            assert_eq!(
                plain_source_allowed(*rule, *ingress),
                *want,
                "rule {rule} ingress {ingress}"
            );
        }
    }

    #[test]
    fn mtu_table() {
        // (IPv4 length or segment length, encapsulation, MTU, fits)
        let table: &[(u32, u32, u32, bool)] = &[
            (1500, 0, 1500, true),
            (1501, 0, 1500, false),
            (1480, 20, 1500, true),
            (1481, 20, 1500, false),
            (1420, 0, 1420, true),
            (1440, 0, 1420, false),
        ];
        for (len, encap, mtu, want) in table {
            assert_eq!(
                fits_mtu(*len, *encap, *mtu),
                *want,
                "{len}+{encap} in {mtu}"
            );
        }
        // A 64 KiB TCP super-packet of 1448-byte segments fits 1500 after IPIP.
        assert!(fits_mtu(gso_segment_len(20, 32, 1448), 20, 1520));
        assert!(!fits_mtu(gso_segment_len(20, 32, 1448), 20, 1500));
        assert_eq!(gso_segment_len(20, 20, 1460), 1500);
    }
}
