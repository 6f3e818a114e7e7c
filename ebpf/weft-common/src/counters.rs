//! Per-CPU datapath counters.
//!
//! Map `WEFT_COUNTERS` (PerCpuArray, pinned at `/sys/fs/bpf/weft/WEFT_COUNTERS`):
//! key = `u32` index from [`Counter`], value = [`CounterValue`] per CPU.
//! Written by the eBPF programs, read (summed over CPUs) by the agent and `weftctl bpf`.
//!
//! Every packet a tc program sees adds to its `*_seen` counter and to exactly
//! one outcome counter (an action, a pass reason or a drop reason). On top of
//! that, a packet decapsulated on the NIC adds `ipip_decap` before the outcome
//! of its inner packet. XDP adds
//! `xdp_pass`, `xdp_drop_ipip_unknown_source` or `xdp_drop_ipip_forged` per frame. Bytes are the
//! packet's length as the program found it (`skb->len`, the XDP frame
//! length); an outcome after decapsulation counts the inner frame.

/// Index of each counter in the `WEFT_COUNTERS` array. Indices are stable:
/// new counters get new numbers, old ones are never renumbered.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets seen by `weft_pod_ingress` (pod veth ingress).
    PodIngressSeen = 0,
    /// Packets seen by `weft_nic_ingress` (NIC ingress).
    NicIngressSeen = 1,
    /// Packets seen by `weft_wg_ingress` (WireGuard device ingress).
    WgIngressSeen = 2,
    /// Dropped (pod veth ingress): IPv4 whose source address is not the
    /// veth's own (its `WEFT_PODS` entry names another veth or MAC, or there
    /// is none: a neighbour's address, the gateway's, 0.0.0.0). Index 3 was
    /// `pod_learned`, gone since packets no longer write `WEFT_PODS`.
    DropSpoofedSource = 3,
    /// Same-node pod to pod, switched at L2 straight into the peer veth.
    LocalSameNode = 4,
    /// Routed into a local pod with `bpf_redirect_peer` (TTL decremented).
    DeliverLocalPeer = 5,
    /// Routed into the pod bridge with `bpf_redirect_neigh` (pod not in `WEFT_PODS`).
    DeliverLocalBridge = 6,
    /// Redirected into the WireGuard device.
    RedirectWireguard = 7,
    /// Redirected out of the NIC to a node of this location, unencapsulated.
    RedirectNode = 8,
    /// IPIP-encapsulated and redirected out of the NIC to a node of this location.
    RedirectNodeIpip = 9,
    /// IPIP from a known peer, outer header removed on NIC ingress.
    IpipDecap = 10,
    /// Passed to the stack: not IPv4 (ARP, IPv6, VLAN...).
    PassNotIpv4 = 11,
    /// Passed to the stack: NIC frame not addressed to this host's MAC.
    PassNotForHost = 12,
    /// Passed to the stack: no route (traffic for the host or outside the cluster).
    PassNoRoute = 13,
    /// Passed on (pod side): destination in this node's pod CIDR but not in `WEFT_PODS`: the bridge delivers.
    PassLocalBridge = 14,
    /// Passed to the stack: the route belongs to another hop (a node route seen on the NIC,
    /// a WireGuard route seen on the WireGuard device).
    PassNotOurs = 15,
    /// Passed to the stack: TTL would expire, the stack sends ICMP time exceeded.
    PassTtlExpired = 16,
    /// Dropped (tc on the NIC): IPIP from a source not in `WEFT_IPIP_SENDERS`. The same
    /// rule as XDP's, so the guard holds where XDP is not attached; the stack could
    /// not decapsulate it anyway (it would answer "protocol unreachable").
    DropIpipUnknownSource = 17,
    /// Passed to the stack: IPv4 header inconsistent (IHL < 5, total length < header...).
    Malformed = 18,
    /// Dropped: IPIP encapsulation failed (no headroom, GSO packet the kernel refuses).
    EncapFailed = 19,
    /// Dropped: IPIP decapsulation failed after the packet was checked.
    DecapFailed = 20,
    /// Dropped: pushing the Ethernet header on a WireGuard packet failed.
    HeaderPushFailed = 21,
    /// XDP on the NIC: passed.
    XdpPass = 22,
    /// XDP on the NIC: IPIP from a source not in `WEFT_IPIP_SENDERS`, dropped.
    XdpDropIpipUnknownSource = 23,
    /// Masquerade: a packet source-NATed to the node's address and sent out
    /// of the egress device the FIB chose.
    NatSnat = 24,
    /// Masquerade: new flows (both NAT entries written).
    NatNewFlow = 25,
    /// Masquerade: a reply translated back to the pod (or external peer).
    NatReverse = 26,
    /// Masquerade: an ICMP error about a translated flow, translated back
    /// with its inner header.
    NatIcmpError = 27,
    /// Dropped: a new flow found no free port.
    NatAllocFailed = 28,
    /// Dropped: a new flow while the NAT table is at its flow limit.
    NatTableFull = 29,
    /// Passed to the stack: masqueraded traffic the FIB cannot forward from
    /// here (no route, local, needs fragmentation, forwarding disabled).
    NatPassFib = 30,
    /// Passed to the stack: masqueraded traffic that cannot be translated
    /// (fragments, IP options, protocols other than TCP, UDP and ICMP echo).
    NatPassUnsupported = 31,
    /// Dropped: rewriting a packet for NAT failed halfway.
    NatRewriteFailed = 32,
    /// Packets seen by `weft_uplink_ingress` (ingress of the other devices
    /// masqueraded traffic leaves by).
    UplinkIngressSeen = 33,
    /// Packets seen by `weft_nic_egress` (NIC egress).
    NicEgressSeen = 34,
    /// IPIP-encapsulated on NIC egress: traffic the host sent (or the stack
    /// forwarded) to a pod CIDR the topology reaches through IPIP.
    HostIpipEncap = 35,
    /// Passed to the stack (pod side): TCP or UDP to a service CIDR, for
    /// kube-proxy's DNAT; the client's socket is recorded in `WEFT_SERVICE_CLIENTS`.
    ServiceToStack = 36,
    /// Passed to the stack instead of delivered into a pod: a reply to a
    /// recorded Service client, which the kernel's conntrack translates back.
    ServiceReplyToStack = 37,
    /// Passed to the stack: masqueraded TCP that is neither a SYN nor part
    /// of a flow of ours (a pod answering a connection the kernel NATed in,
    /// hostPort or NodePort: its conntrack translates it back).
    NatPassNotNew = 38,
    /// Dropped (tc on the NIC): IPIP from a node of this location whose outer
    /// destination is not this node's private IP.
    DropIpipWrongDestination = 39,
    /// Dropped (tc on the NIC): IPIP from a node of this location that arrived on
    /// another device than the NIC the route to that node points to.
    DropIpipWrongDevice = 40,
    /// Dropped (tc on the NIC): IPIP whose inner source is not one its sender may
    /// send (its pod CIDR and node IP; for the leader, what it relays).
    DropIpipInnerSource = 41,
    /// Dropped (tc on the NIC or an uplink): plain IPv4 to be forwarded (into a
    /// pod or WireGuard) whose source is a cluster range that may not arrive on
    /// that device (see `weft_common::sources`).
    DropPlainSource = 42,
    /// XDP on the NIC: IPIP from a node of this location with the wrong outer
    /// destination, arrival device or inner source, dropped.
    XdpDropIpipForged = 43,
    /// Passed to the stack: an IPIP fragment from a node of this location (the
    /// inner headers are not all in it; never parsed as if they were).
    PassIpipFragment = 44,
    /// Passed to the stack: the packet does not fit the egress device's MTU (after
    /// encapsulation): the stack fragments it or answers "fragmentation needed".
    PassMtu = 45,
    /// Dropped (pod veth ingress): ARP whose sender is not the veth's own
    /// address and pod MAC (gratuitous ARP or replies claiming a neighbour's
    /// or the gateway's address). Probes (sender 0.0.0.0) pass.
    DropSpoofedArp = 46,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: &'static [Counter] = &[
        Counter::PodIngressSeen,
        Counter::NicIngressSeen,
        Counter::WgIngressSeen,
        Counter::DropSpoofedSource,
        Counter::LocalSameNode,
        Counter::DeliverLocalPeer,
        Counter::DeliverLocalBridge,
        Counter::RedirectWireguard,
        Counter::RedirectNode,
        Counter::RedirectNodeIpip,
        Counter::IpipDecap,
        Counter::PassNotIpv4,
        Counter::PassNotForHost,
        Counter::PassNoRoute,
        Counter::PassLocalBridge,
        Counter::PassNotOurs,
        Counter::PassTtlExpired,
        Counter::DropIpipUnknownSource,
        Counter::Malformed,
        Counter::EncapFailed,
        Counter::DecapFailed,
        Counter::HeaderPushFailed,
        Counter::XdpPass,
        Counter::XdpDropIpipUnknownSource,
        Counter::NatSnat,
        Counter::NatNewFlow,
        Counter::NatReverse,
        Counter::NatIcmpError,
        Counter::NatAllocFailed,
        Counter::NatTableFull,
        Counter::NatPassFib,
        Counter::NatPassUnsupported,
        Counter::NatRewriteFailed,
        Counter::UplinkIngressSeen,
        Counter::NicEgressSeen,
        Counter::HostIpipEncap,
        Counter::ServiceToStack,
        Counter::ServiceReplyToStack,
        Counter::NatPassNotNew,
        Counter::DropIpipWrongDestination,
        Counter::DropIpipWrongDevice,
        Counter::DropIpipInnerSource,
        Counter::DropPlainSource,
        Counter::XdpDropIpipForged,
        Counter::PassIpipFragment,
        Counter::PassMtu,
        Counter::DropSpoofedArp,
    ];

    /// The metric-friendly name (snake_case, stable).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PodIngressSeen => "pod_ingress_seen",
            Counter::NicIngressSeen => "nic_ingress_seen",
            Counter::WgIngressSeen => "wg_ingress_seen",
            Counter::DropSpoofedSource => "drop_spoofed_source",
            Counter::LocalSameNode => "local_same_node",
            Counter::DeliverLocalPeer => "deliver_local_peer",
            Counter::DeliverLocalBridge => "deliver_local_bridge",
            Counter::RedirectWireguard => "redirect_wireguard",
            Counter::RedirectNode => "redirect_node",
            Counter::RedirectNodeIpip => "redirect_node_ipip",
            Counter::IpipDecap => "ipip_decap",
            Counter::PassNotIpv4 => "pass_not_ipv4",
            Counter::PassNotForHost => "pass_not_for_host",
            Counter::PassNoRoute => "pass_no_route",
            Counter::PassLocalBridge => "pass_local_bridge",
            Counter::PassNotOurs => "pass_not_ours",
            Counter::PassTtlExpired => "pass_ttl_expired",
            Counter::DropIpipUnknownSource => "drop_ipip_unknown_source",
            Counter::Malformed => "malformed",
            Counter::EncapFailed => "encap_failed",
            Counter::DecapFailed => "decap_failed",
            Counter::HeaderPushFailed => "header_push_failed",
            Counter::XdpPass => "xdp_pass",
            Counter::XdpDropIpipUnknownSource => "xdp_drop_ipip_unknown_source",
            Counter::NatSnat => "nat_snat",
            Counter::NatNewFlow => "nat_new_flow",
            Counter::NatReverse => "nat_reverse",
            Counter::NatIcmpError => "nat_icmp_error",
            Counter::NatAllocFailed => "nat_alloc_failed",
            Counter::NatTableFull => "nat_table_full",
            Counter::NatPassFib => "nat_pass_fib",
            Counter::NatPassUnsupported => "nat_pass_unsupported",
            Counter::NatRewriteFailed => "nat_rewrite_failed",
            Counter::UplinkIngressSeen => "uplink_ingress_seen",
            Counter::NicEgressSeen => "nic_egress_seen",
            Counter::HostIpipEncap => "host_ipip_encap",
            Counter::ServiceToStack => "service_to_stack",
            Counter::ServiceReplyToStack => "service_reply_to_stack",
            Counter::NatPassNotNew => "nat_pass_not_new",
            Counter::DropIpipWrongDestination => "drop_ipip_wrong_destination",
            Counter::DropIpipWrongDevice => "drop_ipip_wrong_device",
            Counter::DropIpipInnerSource => "drop_ipip_inner_source",
            Counter::DropPlainSource => "drop_plain_source",
            Counter::XdpDropIpipForged => "xdp_drop_ipip_forged",
            Counter::PassIpipFragment => "pass_ipip_fragment",
            Counter::PassMtu => "pass_mtu",
            Counter::DropSpoofedArp => "drop_spoofed_arp",
        }
    }
}

/// Number of slots in the counter array (room to grow without a map resize).
pub const COUNTER_SLOTS: u32 = 64;

/// One CPU's slot: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields, no padding.
unsafe impl aya::Pod for CounterValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_fit_the_array() {
        for c in Counter::ALL {
            assert!((*c as u32) < COUNTER_SLOTS, "{}", c.name());
        }
    }

    #[test]
    fn all_is_complete_ordered_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{} out of order", c.name());
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
            assert!(
                c.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
        assert_eq!(
            Counter::ALL.last().map(|c| *c as u32),
            Some(Counter::ALL.len() as u32 - 1)
        );
    }
}
