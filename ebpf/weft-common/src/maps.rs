//! Names, sizes, keys and values of the datapath maps.
//!
//! All maps are pinned by name under the loader's pin directory
//! (`/sys/fs/bpf/weft/<NAME>`). Addresses are IPv4 in network byte order as
//! `[u8; 4]` (`Ipv4Addr::octets()`).
//!
//! | map | type | key | value | written by |
//! |---|---|---|---|---|
//! | `WEFT_ROUTES` | LPM trie | `Key<[u8; 4]>` (prefix length, destination) | [`Route`] | agent (topology) |
//! | `WEFT_PODS` | hash | `[u8; 4]` pod IP | [`PodEndpoint`] | `weft-cni` (CNI ADD/DEL) and agent (from the pod records) |
//! | `WEFT_IPIP_SENDERS` | hash | `[u8; 4]` node private IP (outer source) | [`IpipSender`] | agent (topology) |
//! | `WEFT_SENDER_SOURCES` | LPM trie | `Key<[u8; 8]>` ([`sender_source_key`]: sender ++ inner source prefix) | `u32` ([`ALLOWED`]) | agent (topology) |
//! | `WEFT_NIC_SOURCES` | LPM trie | `Key<[u8; 4]>` source prefix | `u32` NIC ifindex it may arrive on, 0 = nowhere | agent (topology) |
//! | `WEFT_COUNTERS` | per-CPU array | `u32` ([`crate::counters::Counter`]) | [`crate::counters::CounterValue`] | programs |
//!
//! Masquerade's maps are in [`crate::nat`], the Services' in [`crate::svc`].

/// Map name of the route LPM trie.
pub const ROUTES: &str = "WEFT_ROUTES";
/// Map name of the local pods (IP → host veth, MAC), as the CNI assigned them.
pub const PODS: &str = "WEFT_PODS";
/// Map name of the nodes IPIP is accepted from (node private IPs of this location).
pub const IPIP_SENDERS: &str = "WEFT_IPIP_SENDERS";
/// Map name of the inner sources each IPIP sender may send.
pub const SENDER_SOURCES: &str = "WEFT_SENDER_SOURCES";
/// Map name of the cluster sources plain IPv4 may arrive with, and where from.
pub const NIC_SOURCES: &str = "WEFT_NIC_SOURCES";
/// Map name of the per-CPU counters.
pub const COUNTERS: &str = "WEFT_COUNTERS";

/// Capacity of `WEFT_ROUTES`.
pub const ROUTES_MAX_ENTRIES: u32 = 16384;
/// Capacity of `WEFT_PODS` (a plain hash: a full map refuses new pods, it never evicts one).
pub const PODS_MAX_ENTRIES: u32 = 16384;
/// Capacity of `WEFT_IPIP_SENDERS`.
pub const IPIP_SENDERS_MAX_ENTRIES: u32 = 4096;
/// Capacity of `WEFT_SENDER_SOURCES` (a leader's relayed ranges, plus two per node).
pub const SENDER_SOURCES_MAX_ENTRIES: u32 = 16384;
/// Capacity of `WEFT_NIC_SOURCES`.
pub const NIC_SOURCES_MAX_ENTRIES: u32 = 16384;

/// The value stored for every key of `WEFT_SENDER_SOURCES`.
pub const ALLOWED: u32 = 1;

/// Value of `WEFT_IPIP_SENDERS` (key: the sender's private IP, the outer
/// source): what an IPIP packet from that node must look like.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpipSender {
    /// The NIC the route to the sender points to: IPIP from it arrives there.
    pub ifindex: u32,
    /// The outer destination it must carry: this node's private IP.
    pub local: [u8; 4],
}

/// Length of a `WEFT_SENDER_SOURCES` key's data: sender IP, then source prefix.
pub const SENDER_SOURCE_KEY_LEN: usize = 8;

/// The data of a `WEFT_SENDER_SOURCES` key: `sender` then `src`. The LPM
/// prefix length is `32 + len` for a source prefix `src/len`, so that the
/// sender always matches exactly and the source by longest prefix.
#[inline(always)]
pub const fn sender_source_data(sender: [u8; 4], src: [u8; 4]) -> [u8; SENDER_SOURCE_KEY_LEN] {
    [
        sender[0], sender[1], sender[2], sender[3], src[0], src[1], src[2], src[3],
    ]
}

/// What to do with a packet whose destination matches a route.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// This node's pod CIDR: `ifindex` is the pod bridge.
    Local = 1,
    /// Another segment: `ifindex` is the WireGuard device.
    WireGuard = 2,
    /// A node of this location, routed directly: `ifindex` is the NIC, `nexthop` the node's private IP.
    Node = 3,
    /// A node of this location, IPIP-encapsulated: as `Node`, plus `src` = this node's private IP.
    NodeIpip = 4,
}

impl RouteAction {
    /// The action stored in [`Route::action`], if valid.
    pub const fn from_u32(v: u32) -> Option<RouteAction> {
        match v {
            1 => Some(RouteAction::Local),
            2 => Some(RouteAction::WireGuard),
            3 => Some(RouteAction::Node),
            4 => Some(RouteAction::NodeIpip),
            _ => None,
        }
    }
}

/// Value of `WEFT_ROUTES`. Key: `Key<[u8; 4]>` = `{ prefix_len: u32, data: dst }`
/// (`aya::maps::lpm_trie::Key::new(prefix_len, cidr.octets())`, see [`route_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// [`RouteAction`] as `u32`; an unknown value is treated as no route.
    pub action: u32,
    /// Local: the pod bridge; WireGuard: the WireGuard device; Node*: the NIC.
    pub ifindex: u32,
    /// Node*: the node's private IP (next hop and IPIP outer destination).
    pub nexthop: [u8; 4],
    /// NodeIpip: the IPIP outer source, this node's private IP.
    pub src: [u8; 4],
}

impl Route {
    /// Route to this node's pod CIDR, delivered through the bridge `bridge_ifindex`.
    pub const fn local(bridge_ifindex: u32) -> Route {
        Route {
            action: RouteAction::Local as u32,
            ifindex: bridge_ifindex,
            nexthop: [0; 4],
            src: [0; 4],
        }
    }

    /// Route into the WireGuard device `wg_ifindex`.
    pub const fn wireguard(wg_ifindex: u32) -> Route {
        Route {
            action: RouteAction::WireGuard as u32,
            ifindex: wg_ifindex,
            nexthop: [0; 4],
            src: [0; 4],
        }
    }

    /// Route out of the NIC `nic_ifindex` to the node `nexthop`, unencapsulated.
    pub const fn node(nic_ifindex: u32, nexthop: [u8; 4]) -> Route {
        Route {
            action: RouteAction::Node as u32,
            ifindex: nic_ifindex,
            nexthop,
            src: [0; 4],
        }
    }

    /// Route out of the NIC `nic_ifindex` to the node `nexthop`, IPIP from `src`.
    pub const fn node_ipip(nic_ifindex: u32, nexthop: [u8; 4], src: [u8; 4]) -> Route {
        Route {
            action: RouteAction::NodeIpip as u32,
            ifindex: nic_ifindex,
            nexthop,
            src,
        }
    }

    /// The decoded action, `None` for an unknown value.
    pub const fn kind(&self) -> Option<RouteAction> {
        RouteAction::from_u32(self.action)
    }
}

/// Value of `WEFT_PODS` (key: the pod's IPv4 address): where a local pod lives,
/// and what it alone may send from (its veth and MAC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The host-side veth of the pod (target of `bpf_redirect_peer`).
    pub ifindex: u32,
    /// The pod's MAC address (its eth0, the other end of the veth).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl PodEndpoint {
    pub const fn new(ifindex: u32, mac: [u8; 6]) -> PodEndpoint {
        PodEndpoint {
            ifindex,
            mac,
            _pad: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), u32 and byte arrays only, no implicit padding (16 bytes).
unsafe impl aya::Pod for Route {}

#[cfg(feature = "user")]
// SAFETY: repr(C), u32 and byte arrays only, explicit padding (12 bytes).
unsafe impl aya::Pod for PodEndpoint {}

#[cfg(feature = "user")]
// SAFETY: repr(C), a u32 and a byte array, no implicit padding (8 bytes).
unsafe impl aya::Pod for IpipSender {}

/// The `WEFT_SENDER_SOURCES` key for inner sources `prefix/prefix_len` from `sender`.
#[cfg(feature = "user")]
pub fn sender_source_key(
    sender: [u8; 4],
    prefix: [u8; 4],
    prefix_len: u32,
) -> aya::maps::lpm_trie::Key<[u8; SENDER_SOURCE_KEY_LEN]> {
    aya::maps::lpm_trie::Key::new(32 + prefix_len, sender_source_data(sender, prefix))
}

/// The `WEFT_ROUTES` key for `prefix/prefix_len` (userspace side).
#[cfg(feature = "user")]
pub fn route_key(prefix: [u8; 4], prefix_len: u32) -> aya::maps::lpm_trie::Key<[u8; 4]> {
    aya::maps::lpm_trie::Key::new(prefix_len, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Route>(), 16);
        assert_eq!(align_of::<Route>(), 4);
        assert_eq!(size_of::<PodEndpoint>(), 12);
        assert_eq!(align_of::<PodEndpoint>(), 4);
        assert_eq!(size_of::<IpipSender>(), 8);
        assert_eq!(align_of::<IpipSender>(), 4);
    }

    #[test]
    fn sender_source_data_is_sender_then_source() {
        assert_eq!(
            sender_source_data([192, 168, 1, 11], [10, 42, 1, 0]),
            [192, 168, 1, 11, 10, 42, 1, 0]
        );
    }

    #[test]
    fn route_constructors_round_trip() {
        assert_eq!(Route::local(3).kind(), Some(RouteAction::Local));
        assert_eq!(Route::wireguard(4).kind(), Some(RouteAction::WireGuard));
        assert_eq!(
            Route::node(5, [10, 0, 0, 2]).kind(),
            Some(RouteAction::Node)
        );
        let r = Route::node_ipip(5, [10, 0, 0, 2], [10, 0, 0, 1]);
        assert_eq!(r.kind(), Some(RouteAction::NodeIpip));
        assert_eq!(
            (r.ifindex, r.nexthop, r.src),
            (5, [10, 0, 0, 2], [10, 0, 0, 1])
        );
        assert_eq!(Route::default().kind(), None);
        assert_eq!(RouteAction::from_u32(5), None);
        for a in [
            RouteAction::Local,
            RouteAction::WireGuard,
            RouteAction::Node,
            RouteAction::NodeIpip,
        ] {
            assert_eq!(RouteAction::from_u32(a as u32), Some(a));
        }
    }
}
