//! Services: keeping the replies of flows the kernel NATed in the kernel.
//!
//! kube-proxy (iptables or nftables mode) DNATs a ClusterIP to a backend in
//! PREROUTING on the client's node; the backend's reply must go back
//! through that node's conntrack to get the ClusterIP back as its source.
//! The client's packets to a service CIDR have no route in the cluster, so
//! `weft_pod_ingress` passes them to the stack (where the DNAT happens) and
//! records the client's socket (protocol, pod address, pod port) here; every
//! program that would deliver a packet into a local pod first looks its
//! destination socket up, and while the record is fresh hands the packet to
//! the stack instead ([`crate::counters::Counter::ServiceReplyToStack`]).
//!
//! | map | type | key | value | written by |
//! |---|---|---|---|---|
//! | `WEFT_SERVICE_CIDRS` | LPM trie | `Key<[u8; 4]>` service prefix | `u32` (1) | agent (`--service-cidr`, `serviceCIDRs`) |
//! | `WEFT_SERVICE_CLIENTS` | LRU hash | [`ClientKey`] | [`ClientEntry`] | `weft_pod_ingress`; nobody deletes (LRU, and stale entries are ignored) |
//!
//! Why not the kernel's conntrack itself (`bpf_skb_ct_lookup`): it is a
//! kfunc, and aya 0.14 cannot relocate kfunc calls; the record costs one hash
//! lookup per delivered packet and needs no kernel state. Its limit: the key
//! is the client's socket alone (the backend is not known before the DNAT),
//! so a direct pod connection that shares a client port with a live Service
//! connection has its replies routed by the stack too.

use crate::nat::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::packet::Ipv4Facts;

/// Map names.
pub const SERVICE_CIDRS: &str = "WEFT_SERVICE_CIDRS";
pub const SERVICE_CLIENTS: &str = "WEFT_SERVICE_CLIENTS";

/// Capacity of `WEFT_SERVICE_CIDRS`.
pub const SERVICE_CIDRS_MAX_ENTRIES: u32 = 256;
/// Capacity of `WEFT_SERVICE_CLIENTS` (client sockets of this node's pods).
pub const SERVICE_CLIENTS_MAX_ENTRIES: u32 = 65536;

const SECOND_NS: u64 = 1_000_000_000;
/// A UDP client is fresh this long after its last datagram (conntrack
/// keeps an answered UDP flow 120 s).
pub const UDP_FRESH_NS: u64 = 180 * SECOND_NS;
/// A TCP client that has not closed is fresh this long after its last
/// segment (it ACKs whatever it receives, so only a connection idle both
/// ways for so long can outlive its record).
pub const TCP_FRESH_NS: u64 = 2 * 3600 * SECOND_NS;
/// A TCP client that sent a FIN or RST: the last segments of the backend
/// come within this (conntrack's TIME_WAIT is 120 s).
pub const TCP_CLOSING_FRESH_NS: u64 = 120 * SECOND_NS;
/// A record is rewritten at most this often by the same client's packets.
pub const REFRESH_NS: u64 = SECOND_NS;

/// Bit of [`ClientEntry::flags`]: the client sent a FIN or RST.
pub const CLIENT_CLOSING: u32 = 1;

/// Key of `WEFT_SERVICE_CLIENTS`: a local pod's socket that talked to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientKey {
    pub ip: [u8; 4],
    /// Host order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ClientKey {
    pub const fn new(proto: u8, ip: [u8; 4], port: u16) -> ClientKey {
        ClientKey {
            ip,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Value of `WEFT_SERVICE_CLIENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientEntry {
    /// `bpf_ktime_get_ns` of the client's last packet to the service (as
    /// recorded: at most [`REFRESH_NS`] old).
    pub last_ns: u64,
    /// [`CLIENT_CLOSING`].
    pub flags: u32,
    pub _pad: u32,
}

/// Whether the L4 protocol is one whose Services are recorded.
#[inline(always)]
pub const fn is_tracked(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP)
}

/// Whether a packet of `ip` is looked at: TCP or UDP, and carrying the L4
/// header (not a fragment other than the first).
#[inline(always)]
pub const fn has_ports(ip: &Ipv4Facts) -> bool {
    is_tracked(ip.protocol) && ip.frag_off & 0x1fff == 0
}

/// The entry a client's packet with `tcp_flags` (0 for UDP) at `now`
/// leaves, given the current one (`None`: none yet). `None` back: the
/// current one is recent and unchanged enough to keep (no write).
#[inline(always)]
pub const fn update(cur: Option<ClientEntry>, tcp_flags: u8, now: u64) -> Option<ClientEntry> {
    let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0;
    // A SYN without ACK starts a new connection on this socket.
    let opening = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let flags = if closing { CLIENT_CLOSING } else { 0 };
    let next = ClientEntry {
        last_ns: now,
        flags,
        _pad: 0,
    };
    match cur {
        None => Some(next),
        Some(c) => {
            let keep_flags = if opening { flags } else { c.flags | flags };
            if keep_flags == c.flags && now.saturating_sub(c.last_ns) < REFRESH_NS {
                None
            } else {
                Some(ClientEntry {
                    flags: keep_flags,
                    ..next
                })
            }
        }
    }
}

/// Whether replies to the client of `e` still go through the kernel at `now`.
#[inline(always)]
pub const fn is_fresh(e: &ClientEntry, proto: u8, now: u64) -> bool {
    let ttl = match proto {
        IPPROTO_TCP if e.flags & CLIENT_CLOSING != 0 => TCP_CLOSING_FRESH_NS,
        IPPROTO_TCP => TCP_FRESH_NS,
        _ => UDP_FRESH_NS,
    };
    now.saturating_sub(e.last_ns) < ttl
}

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays and integers, explicit padding (8 bytes).
unsafe impl aya::Pod for ClientKey {}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, explicit padding (16 bytes).
unsafe impl aya::Pod for ClientEntry {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    const T: u64 = 1_000 * SECOND_NS;
    const SYN: u8 = TCP_SYN;
    const ACK: u8 = TCP_ACK;

    fn entry(last_ns: u64, flags: u32) -> ClientEntry {
        ClientEntry {
            last_ns,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ClientKey>(), 8);
        assert_eq!(size_of::<ClientEntry>(), 16);
    }

    #[test]
    fn only_tcp_and_udp_are_tracked() {
        assert!(is_tracked(IPPROTO_TCP) && is_tracked(IPPROTO_UDP));
        assert!(!is_tracked(1) && !is_tracked(4) && !is_tracked(132));
    }

    #[test]
    fn fragments_after_the_first_have_no_ports() {
        let mut ip = Ipv4Facts::parse(&crate::testutil::ipv4_header(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            6,
            64,
            40,
        ))
        .unwrap();
        for (proto, frag_off, want) in [
            (IPPROTO_TCP, 0x4000, true),  // DF
            (IPPROTO_UDP, 0x2000, true),  // first fragment (MF)
            (IPPROTO_UDP, 0x2001, false), // a later one
            (IPPROTO_UDP, 0x0001, false), // the last one
            (1, 0, false),                // ICMP
        ] {
            ip.protocol = proto;
            ip.frag_off = frag_off;
            assert_eq!(has_ports(&ip), want, "{proto} {frag_off:#x}");
        }
    }

    #[test]
    fn updates_are_written_when_new_changed_or_a_second_old() {
        // (current, flags, now, want)
        let table: &[(Option<ClientEntry>, u8, u64, Option<ClientEntry>)] = &[
            (None, SYN, T, Some(entry(T, 0))),
            (None, 0, T, Some(entry(T, 0))),
            (None, ACK | TCP_FIN, T, Some(entry(T, CLIENT_CLOSING))),
            // Recent and unchanged: no write.
            (Some(entry(T, 0)), ACK, T + REFRESH_NS - 1, None),
            (
                Some(entry(T, 0)),
                ACK,
                T + REFRESH_NS,
                Some(entry(T + REFRESH_NS, 0)),
            ),
            // Closing is written at once and sticks...
            (
                Some(entry(T, 0)),
                ACK | TCP_FIN,
                T + 1,
                Some(entry(T + 1, CLIENT_CLOSING)),
            ),
            (Some(entry(T, CLIENT_CLOSING)), ACK, T + 1, None),
            (
                Some(entry(T, CLIENT_CLOSING)),
                ACK,
                T + 2 * REFRESH_NS,
                Some(entry(T + 2 * REFRESH_NS, CLIENT_CLOSING)),
            ),
            (Some(entry(T, CLIENT_CLOSING)), TCP_RST, T + 1, None),
            // ... until a new connection reuses the socket.
            (
                Some(entry(T, CLIENT_CLOSING)),
                SYN,
                T + 1,
                Some(entry(T + 1, 0)),
            ),
        ];
        for (i, (cur, flags, now, want)) in table.iter().enumerate() {
            assert_eq!(update(*cur, *flags, *now), *want, "row {i}");
        }
    }

    #[test]
    fn freshness_depends_on_protocol_and_closing() {
        let table: &[(u8, u32, u64, bool)] = &[
            (IPPROTO_UDP, 0, UDP_FRESH_NS - 1, true),
            (IPPROTO_UDP, 0, UDP_FRESH_NS, false),
            (IPPROTO_TCP, 0, TCP_FRESH_NS - 1, true),
            (IPPROTO_TCP, 0, TCP_FRESH_NS, false),
            (IPPROTO_TCP, CLIENT_CLOSING, TCP_CLOSING_FRESH_NS - 1, true),
            (IPPROTO_TCP, CLIENT_CLOSING, TCP_CLOSING_FRESH_NS, false),
        ];
        for (proto, flags, age, want) in table {
            let e = entry(T, *flags);
            assert_eq!(
                is_fresh(&e, *proto, T + age),
                *want,
                "{proto} {flags} {age}"
            );
        }
        // A record from "the future" (another CPU's clock read a little
        // later, then a racing write) is fresh, not wrapped around.
        assert!(is_fresh(&entry(T + 5, 0), IPPROTO_UDP, T));
    }
}
