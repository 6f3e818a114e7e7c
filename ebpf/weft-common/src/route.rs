//! The forwarding decision: (where the packet entered, what it looks like,
//! what the maps say) → what to do with it. The eBPF programs do the map
//! lookups and carry out the [`Decision`]; everything in between is here.

use crate::counters::Counter;
use crate::maps::{PodEndpoint, Route, RouteAction};

/// Which program is deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `weft_pod_ingress`: tc ingress of a host-side pod veth (the pod is sending).
    Pod,
    /// `weft_nic_ingress`: tc ingress of the node's NIC (after IPIP decapsulation).
    Nic,
    /// `weft_wg_ingress`: tc ingress of the WireGuard device.
    WireGuard,
}

/// What the decision needs to know about the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketFacts {
    /// The device the packet entered (`skb->ingress_ifindex`).
    pub ingress_ifindex: u32,
    /// The frame's destination MAC (only [`Hook::Pod`] looks at it).
    pub dst_mac: [u8; 6],
    /// IPv4 TTL.
    pub ttl: u8,
    /// IPv4 destination.
    pub dst: [u8; 4],
}

/// What to do with an IPv4 packet (the kind of [`Decision`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Hand it to the stack (`TC_ACT_OK`), counted under [`Decision::counter`].
    Pass,
    /// Same-node pod to pod at L2: `bpf_redirect_peer(ifindex)`, frame and TTL unchanged.
    SwitchToPod,
    /// Route into a local pod (in `WEFT_PODS`): Ethernet dst = `mac`, TTL − 1, `bpf_redirect_peer(ifindex)`.
    DeliverToPod,
    /// Route into this node's pod CIDR, pod not in `WEFT_PODS`: TTL − 1,
    /// `bpf_redirect_neigh(ifindex = bridge, no next hop)` (the kernel resolves the pod's MAC).
    DeliverViaBridge,
    /// TTL − 1, `bpf_redirect(ifindex = WireGuard device, 0)`.
    WireGuard,
    /// TTL − 1, `bpf_redirect_neigh(ifindex = NIC, nexthop)`.
    Node,
    /// TTL − 1, IPIP from `src` to `nexthop`, `bpf_redirect_neigh(ifindex = NIC, nexthop)`.
    NodeIpip,
}

/// The outcome of [`decide`]: an [`Action`] and its operands.
///
/// A plain struct whose fields are always initialised (unused ones are zero)
/// rather than an enum with payloads: LLVM merges the payloads of enum
/// variants (and of `Option`s) through registers left undefined on some
/// paths, and the verifier rejects any read of an uninitialised register
/// ("R2 !read_ok").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The counter this outcome adds to (the reason, for [`Action::Pass`]).
    pub counter: Counter,
    /// Target device (every action but `Pass`).
    pub ifindex: u32,
    /// `DeliverToPod`: the pod's MAC.
    pub mac: [u8; 6],
    /// `Node`, `NodeIpip`: the node's private IP.
    pub nexthop: [u8; 4],
    /// `NodeIpip`: the outer source.
    pub src: [u8; 4],
}

impl Decision {
    const fn new(action: Action, counter: Counter, ifindex: u32) -> Decision {
        Decision {
            action,
            counter,
            ifindex,
            mac: [0; 6],
            nexthop: [0; 4],
            src: [0; 4],
        }
    }

    /// Hand it to the stack, counted under `reason`.
    pub const fn pass(reason: Counter) -> Decision {
        Decision::new(Action::Pass, reason, 0)
    }

    pub const fn switch_to_pod(ifindex: u32) -> Decision {
        Decision::new(Action::SwitchToPod, Counter::LocalSameNode, ifindex)
    }

    pub const fn deliver_to_pod(ifindex: u32, mac: [u8; 6]) -> Decision {
        let mut d = Decision::new(Action::DeliverToPod, Counter::DeliverLocalPeer, ifindex);
        d.mac = mac;
        d
    }

    pub const fn deliver_via_bridge(ifindex: u32) -> Decision {
        Decision::new(
            Action::DeliverViaBridge,
            Counter::DeliverLocalBridge,
            ifindex,
        )
    }

    pub const fn wireguard(ifindex: u32) -> Decision {
        Decision::new(Action::WireGuard, Counter::RedirectWireguard, ifindex)
    }

    pub const fn node(ifindex: u32, nexthop: [u8; 4]) -> Decision {
        let mut d = Decision::new(Action::Node, Counter::RedirectNode, ifindex);
        d.nexthop = nexthop;
        d
    }

    pub const fn node_ipip(ifindex: u32, nexthop: [u8; 4], src: [u8; 4]) -> Decision {
        let mut d = Decision::new(Action::NodeIpip, Counter::RedirectNodeIpip, ifindex);
        d.nexthop = nexthop;
        d.src = src;
        d
    }

    /// Whether the packet goes into a local pod (switched, routed into it, or
    /// through the bridge): where a reply to a Service client is caught.
    pub const fn delivers_to_pod(&self) -> bool {
        matches!(
            self.action,
            Action::SwitchToPod | Action::DeliverToPod | Action::DeliverViaBridge
        )
    }

    /// Whether the packet is routed (an IP hop: TTL − 1), not switched or passed.
    pub const fn is_routed(&self) -> bool {
        !matches!(self.action, Action::Pass | Action::SwitchToPod)
    }
}

/// Decides what `hook` does with an IPv4 packet.
///
/// `pod` is the `WEFT_PODS` entry of the destination (`ifindex` 0: not a
/// local pod the agent knows); `route` does the `WEFT_ROUTES` longest-prefix lookup of the
/// destination (`action` 0: no route) and is called only when the pod entry
/// did not settle it. Plain values rather than `Option`s, for the verifier
/// (see [`Decision`]).
///
/// - Pod side: a known pod on another veth is switched at L2 when the frame
///   is addressed to its MAC, routed into it otherwise (the pod sent it to its
///   gateway). Then the route: WireGuard/Node/NodeIpip are forwarded; Local
///   (pod unknown) and no route go on to the bridge and the stack.
/// - NIC: a known pod gets it; Local → the bridge; WireGuard → the
///   WireGuard device (a leader forwarding for its location); node routes and
///   no route go to the stack (not ours to bounce back out of the NIC).
/// - WireGuard: a known pod gets it; Local → the bridge; Node/NodeIpip →
///   out of the NIC (leader → node of its location); WireGuard and no route
///   go to the stack.
///
/// Any routed outcome with TTL ≤ 1 becomes a pass counted as
/// `PassTtlExpired`: the stack sends the ICMP time exceeded.
#[inline(always)]
pub fn decide(
    hook: Hook,
    facts: &PacketFacts,
    pod: PodEndpoint,
    route: impl FnOnce([u8; 4]) -> Route,
) -> Decision {
    let d = decide_ignoring_ttl(hook, facts, pod, route);
    if d.is_routed() && facts.ttl <= 1 {
        Decision::pass(Counter::PassTtlExpired)
    } else {
        d
    }
}

#[inline(always)]
fn decide_ignoring_ttl(
    hook: Hook,
    facts: &PacketFacts,
    pod: PodEndpoint,
    route: impl FnOnce([u8; 4]) -> Route,
) -> Decision {
    if pod.ifindex != 0 {
        match hook {
            // Hairpin (the pod's own veth): leave it to the bridge.
            Hook::Pod if pod.ifindex == facts.ingress_ifindex => {}
            Hook::Pod if pod.mac == facts.dst_mac => return Decision::switch_to_pod(pod.ifindex),
            _ => return Decision::deliver_to_pod(pod.ifindex, pod.mac),
        }
    }
    let r = route(facts.dst);
    let Some(action) = r.kind() else {
        return Decision::pass(Counter::PassNoRoute);
    };
    match (hook, action) {
        (Hook::Pod, RouteAction::Local) => Decision::pass(Counter::PassLocalBridge),
        (Hook::Nic | Hook::WireGuard, RouteAction::Local) => {
            Decision::deliver_via_bridge(r.ifindex)
        }
        (Hook::Pod | Hook::Nic, RouteAction::WireGuard) => Decision::wireguard(r.ifindex),
        (Hook::Pod | Hook::WireGuard, RouteAction::Node) => Decision::node(r.ifindex, r.nexthop),
        (Hook::Pod | Hook::WireGuard, RouteAction::NodeIpip) => {
            Decision::node_ipip(r.ifindex, r.nexthop, r.src)
        }
        (Hook::WireGuard, RouteAction::WireGuard)
        | (Hook::Nic, RouteAction::Node | RouteAction::NodeIpip) => {
            Decision::pass(Counter::PassNotOurs)
        }
    }
}

/// Whether a frame from a pod veth may carry source address `src`:
/// `owner` is the `WEFT_PODS` entry of `src` (`ifindex` 0: nobody's), which
/// only user space writes, from what the CNI assigned. The address must
/// belong to the veth the frame entered by, and the frame's source MAC (for
/// ARP, the sender MAC as well) to the pod behind it. Everything else —
/// a neighbour's address, the gateway's, 0.0.0.0, an address the CNI never
/// gave out — is a forgery: one packet of it would otherwise redirect the
/// victim's traffic or poison neighbour caches.
///
/// Branch-free (one test at the end): a chain of byte comparisons would
/// multiply the verifier's states on the hot path of every pod packet.
#[inline(always)]
pub fn owns_source(owner: &PodEndpoint, ingress_ifindex: u32, src_mac: &[u8; 6]) -> bool {
    let o = &owner.mac;
    let m = src_mac;
    let mac_diff = (u32::from_ne_bytes([o[0], o[1], o[2], o[3]])
        ^ u32::from_ne_bytes([m[0], m[1], m[2], m[3]]))
        | u32::from(u16::from_ne_bytes([o[4], o[5]]) ^ u16::from_ne_bytes([m[4], m[5]]));
    // ifindex 0 (no entry) never matches: no packet has ingress ifindex 0 here,
    // and the `| (ifindex == 0)` term makes sure of it.
    ((owner.ifindex ^ ingress_ifindex) | mac_diff | u32::from(owner.ifindex == 0)) == 0
}

/// The verdict on an ARP frame from a pod veth, as [`owns_source`] decides
/// for IPv4: `sender` is the ARP body's, `owner` the `WEFT_PODS` entry of its
/// sender IP, `eth_src` the Ethernet source. A probe (sender 0.0.0.0,
/// RFC 5227) claims no address and poisons no cache, so it passes; any
/// other sender must be the veth's own address, with the pod's MAC in both
/// the Ethernet header and the ARP body.
#[inline(always)]
pub fn arp_sender_allowed(
    sender: &crate::packet::ArpFacts,
    owner: &PodEndpoint,
    ingress_ifindex: u32,
    eth_src: &[u8; 6],
) -> bool {
    if sender.sender_ip == [0; 4] {
        return true;
    }
    owns_source(owner, ingress_ifindex, eth_src) && sender.sender_mac == *eth_src
}

#[cfg(test)]
mod tests {
    use super::*;

    const VETH_A: u32 = 10;
    const VETH_B: u32 = 11;
    const BRIDGE: u32 = 3;
    const WG: u32 = 4;
    const NIC: u32 = 2;
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x1];
    const PEER: [u8; 4] = [192, 168, 0, 2];
    const ME: [u8; 4] = [192, 168, 0, 1];
    const NOT_LEARNED: PodEndpoint = PodEndpoint::new(0, [0; 6]);

    fn facts(ingress: u32, dst_mac: [u8; 6], ttl: u8) -> PacketFacts {
        PacketFacts {
            ingress_ifindex: ingress,
            dst_mac,
            ttl,
            dst: [10, 244, 0, 9],
        }
    }

    fn no_lookup(_: [u8; 4]) -> Route {
        panic!("the pod entry settles it");
    }

    #[test]
    fn pod_side_known_destination() {
        let b = PodEndpoint::new(VETH_B, MAC_B);
        let f = facts(VETH_A, MAC_B, 64);
        assert_eq!(
            decide(Hook::Pod, &f, b, no_lookup),
            Decision::switch_to_pod(VETH_B)
        );
        // Switching does not touch the TTL, so TTL 1 is switched too.
        let f = facts(VETH_A, MAC_B, 1);
        assert_eq!(
            decide(Hook::Pod, &f, b, no_lookup),
            Decision::switch_to_pod(VETH_B)
        );
        // Sent to the gateway's MAC: routed into the pod.
        let f = facts(VETH_A, GW_MAC, 64);
        assert_eq!(
            decide(Hook::Pod, &f, b, no_lookup),
            Decision::deliver_to_pod(VETH_B, MAC_B)
        );
        let f = facts(VETH_A, GW_MAC, 1);
        assert_eq!(
            decide(Hook::Pod, &f, b, no_lookup),
            Decision::pass(Counter::PassTtlExpired)
        );
        // Entry on the ingress veth itself: the route decides.
        let f = facts(VETH_B, MAC_B, 64);
        let local = |_| Route::local(BRIDGE);
        assert_eq!(
            decide(Hook::Pod, &f, b, local),
            Decision::pass(Counter::PassLocalBridge)
        );
    }

    #[test]
    fn decision_table() {
        let node = Route::node(NIC, PEER);
        let ipip = Route::node_ipip(NIC, PEER, ME);
        let none = Route::default();
        let table: &[(Hook, Route, Decision)] = &[
            (Hook::Pod, none, Decision::pass(Counter::PassNoRoute)),
            (
                Hook::Pod,
                Route { action: 9, ..node },
                Decision::pass(Counter::PassNoRoute),
            ),
            (
                Hook::Pod,
                Route::local(BRIDGE),
                Decision::pass(Counter::PassLocalBridge),
            ),
            (Hook::Pod, Route::wireguard(WG), Decision::wireguard(WG)),
            (Hook::Pod, node, Decision::node(NIC, PEER)),
            (Hook::Pod, ipip, Decision::node_ipip(NIC, PEER, ME)),
            (Hook::Nic, none, Decision::pass(Counter::PassNoRoute)),
            (
                Hook::Nic,
                Route::local(BRIDGE),
                Decision::deliver_via_bridge(BRIDGE),
            ),
            (Hook::Nic, Route::wireguard(WG), Decision::wireguard(WG)),
            (Hook::Nic, node, Decision::pass(Counter::PassNotOurs)),
            (Hook::Nic, ipip, Decision::pass(Counter::PassNotOurs)),
            (Hook::WireGuard, none, Decision::pass(Counter::PassNoRoute)),
            (
                Hook::WireGuard,
                Route::local(BRIDGE),
                Decision::deliver_via_bridge(BRIDGE),
            ),
            (
                Hook::WireGuard,
                Route::wireguard(WG),
                Decision::pass(Counter::PassNotOurs),
            ),
            (Hook::WireGuard, node, Decision::node(NIC, PEER)),
            (Hook::WireGuard, ipip, Decision::node_ipip(NIC, PEER, ME)),
        ];
        for (hook, route, want) in table {
            let got = decide(*hook, &facts(VETH_A, GW_MAC, 64), NOT_LEARNED, |dst| {
                assert_eq!(dst, [10, 244, 0, 9]);
                *route
            });
            assert_eq!(got, *want, "{hook:?} {route:?}");
            // TTL 1 and 0: every routed outcome becomes "let the stack answer"; passes stay.
            let want_expired = if want.is_routed() {
                Decision::pass(Counter::PassTtlExpired)
            } else {
                *want
            };
            for ttl in [0, 1] {
                let got = decide(*hook, &facts(VETH_A, GW_MAC, ttl), NOT_LEARNED, |_| *route);
                assert_eq!(got, want_expired, "{hook:?} {route:?} ttl {ttl}");
            }
            let got = decide(*hook, &facts(VETH_A, GW_MAC, 2), NOT_LEARNED, |_| *route);
            assert_eq!(got, *want);
        }
    }

    #[test]
    fn nic_and_wireguard_deliver_known_pods() {
        let b = PodEndpoint::new(VETH_B, MAC_B);
        for hook in [Hook::Nic, Hook::WireGuard] {
            // dst_mac is irrelevant off the pod side.
            for dst_mac in [MAC_B, GW_MAC, [0; 6]] {
                let got = decide(hook, &facts(NIC, dst_mac, 64), b, no_lookup);
                assert_eq!(got, Decision::deliver_to_pod(VETH_B, MAC_B));
            }
            let got = decide(hook, &facts(NIC, MAC_B, 1), b, no_lookup);
            assert_eq!(got, Decision::pass(Counter::PassTtlExpired));
        }
    }

    #[test]
    fn constructors_fill_only_their_operands() {
        let d = Decision::deliver_to_pod(1, MAC_B);
        assert_eq!(
            (d.action, d.counter, d.ifindex, d.mac),
            (Action::DeliverToPod, Counter::DeliverLocalPeer, 1, MAC_B)
        );
        assert_eq!((d.nexthop, d.src), ([0; 4], [0; 4]));
        let d = Decision::node_ipip(2, PEER, ME);
        assert_eq!(
            (d.action, d.counter, d.ifindex),
            (Action::NodeIpip, Counter::RedirectNodeIpip, 2)
        );
        assert_eq!((d.mac, d.nexthop, d.src), ([0; 6], PEER, ME));
        assert_eq!(Decision::switch_to_pod(1).counter, Counter::LocalSameNode);
        assert_eq!(
            Decision::deliver_via_bridge(1).counter,
            Counter::DeliverLocalBridge
        );
        assert_eq!(Decision::wireguard(1).counter, Counter::RedirectWireguard);
        assert_eq!(Decision::node(1, PEER).counter, Counter::RedirectNode);
        assert_eq!(
            Decision::pass(Counter::PassNoRoute).counter,
            Counter::PassNoRoute
        );
        assert!(Decision::switch_to_pod(1).delivers_to_pod());
        assert!(Decision::deliver_to_pod(1, MAC_B).delivers_to_pod());
        assert!(Decision::deliver_via_bridge(1).delivers_to_pod());
        for d in [
            Decision::pass(Counter::PassNoRoute),
            Decision::wireguard(1),
            Decision::node(1, PEER),
            Decision::node_ipip(1, PEER, ME),
        ] {
            assert!(!d.delivers_to_pod(), "{d:?}");
        }
        assert!(!Decision::switch_to_pod(1).is_routed());
        assert!(!Decision::pass(Counter::PassNoRoute).is_routed());
        assert!(Decision::deliver_to_pod(1, MAC_B).is_routed());
    }

    #[test]
    fn only_the_owner_may_send_from_an_address() {
        let mac_a = [2, 0, 0, 0, 0, 5];
        let owner = PodEndpoint::new(VETH_A, mac_a);
        // (owner entry, ingress veth, source MAC, allowed)
        let cases = [
            (owner, VETH_A, mac_a, true),
            // A neighbour's address, sent from another veth.
            (owner, VETH_B, mac_a, false),
            // The right veth, someone else's MAC.
            (owner, VETH_A, MAC_B, false),
            // Nobody's address (the gateway's, 0.0.0.0, never assigned).
            (NOT_LEARNED, VETH_A, mac_a, false),
            (NOT_LEARNED, 0, [0; 6], false),
        ];
        for (i, (o, ingress, mac, want)) in cases.into_iter().enumerate() {
            assert_eq!(owns_source(&o, ingress, &mac), want, "case {i}");
        }
    }

    #[test]
    fn arp_senders() {
        use crate::packet::ArpFacts;
        let mac_a = [2, 0, 0, 0, 0, 5];
        let owner = PodEndpoint::new(VETH_A, mac_a);
        let arp = |sender_ip, sender_mac| ArpFacts {
            op: 1,
            sender_mac,
            sender_ip,
            target_ip: [10, 244, 0, 1],
        };
        let own = [10, 244, 0, 5];
        // (ARP body, owner of its sender IP, ingress veth, Ethernet source, allowed)
        let cases = [
            (arp(own, mac_a), owner, VETH_A, mac_a, true),
            // Probe: claims nothing.
            (arp([0; 4], mac_a), NOT_LEARNED, VETH_A, mac_a, true),
            // Gratuitous ARP for a neighbour's address.
            (arp(own, mac_a), owner, VETH_B, mac_a, false),
            // For the gateway's (nobody's) address.
            (
                arp([10, 244, 0, 1], mac_a),
                NOT_LEARNED,
                VETH_A,
                mac_a,
                false,
            ),
            // Own address, another MAC in the body (what neighbours would cache).
            (arp(own, MAC_B), owner, VETH_A, mac_a, false),
            // Own address, another MAC in the Ethernet header.
            (arp(own, mac_a), owner, VETH_A, MAC_B, false),
        ];
        for (i, (a, o, ingress, eth_src, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                arp_sender_allowed(&a, &o, ingress, &eth_src),
                want,
                "case {i}"
            );
        }
    }
}
