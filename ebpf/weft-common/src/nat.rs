//! Masquerade: source NAT of pod (and external peer) traffic leaving the
//! cluster, with connection tracking in two LRU hash maps.
//!
//! | map | type | key | value | written by |
//! |---|---|---|---|---|
//! | `WEFT_MASQ_SOURCES` | LPM trie | `Key<[u8; 4]>` source prefix | `u32` (1) | agent (topology: this node's pod CIDR, external peers' allowed IPs) |
//! | `WEFT_MASQ_EXEMPT` | LPM trie | `Key<[u8; 4]>` destination prefix | `u32` (1) | agent (topology: every segment's CIDRs, WireGuard IPs, peers, service CIDRs) |
//! | `WEFT_NAT_EGRESS` | LRU hash | [`FlowKey`] as the pod sent it | [`NatEgress`] | programs (new flows), agent (GC deletes) |
//! | `WEFT_NAT_INGRESS` | LRU hash | [`FlowKey`] of the replies, as they arrive | [`NatIngress`] | programs (new flows), agent (GC deletes) |
//! | `WEFT_NAT_CONFIG` | array, 1 slot | `u32` 0 | [`NatConfig`] | agent (settings, flow count), programs (flow count +1) |
//!
//! A flow pod `P:p` → remote `R:r` translated to node `N:n` has the egress
//! entry `(P, R, p, r)` → `(N, n)` and the ingress entry `(R, N, r, n)` →
//! `(P, p)`. ICMP echo uses the identifier as the port on both sides and 0
//! for the remote's. Everything here is plain data and pure functions, shared
//! by the programs, the agent's garbage collector and `weftctl bpf nat`.

/// Map names.
pub const MASQ_SOURCES: &str = "WEFT_MASQ_SOURCES";
pub const MASQ_EXEMPT: &str = "WEFT_MASQ_EXEMPT";
pub const NAT_EGRESS: &str = "WEFT_NAT_EGRESS";
pub const NAT_INGRESS: &str = "WEFT_NAT_INGRESS";
pub const NAT_CONFIG: &str = "WEFT_NAT_CONFIG";

/// Capacity of each masquerade LPM trie (exemptions grow with the cluster).
pub const MASQ_PREFIXES_MAX_ENTRIES: u32 = 65536;
/// Capacity of each NAT map (one entry per flow and direction).
pub const NAT_MAX_ENTRIES: u32 = 131072;
/// New flows are refused above this many (the LRU never has to evict a live
/// flow to make room: the rest is headroom for what the GC has not removed).
pub const NAT_DEFAULT_MAX_FLOWS: u32 = NAT_MAX_ENTRIES / 8 * 7;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Bits of [`NatEgress::flags`] and [`NatIngress::flags`]: what that
/// direction has seen.
pub const SEEN_SYN: u8 = 0x01;
pub const SEEN_FIN: u8 = 0x02;
pub const SEEN_RST: u8 = 0x04;
/// Any packet (the ingress side: the remote answered).
pub const SEEN_ANY: u8 = 0x08;

/// One direction of a flow: addresses in network order, ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    /// The key the replies to this (egress, already translated) direction
    /// arrive with: addresses and ports swapped.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey::new(self.proto, self.dst, self.src, self.dport, self.sport)
    }
}

/// Value of `WEFT_NAT_EGRESS`: how a flow leaves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEgress {
    /// The node address the source is rewritten to.
    pub nat_ip: [u8; 4],
    pub nat_port: u16,
    /// `SEEN_*` bits of the pod's side.
    pub flags: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the flow was created.
    pub created_ns: u64,
    /// ... and of the last packet out.
    pub last_ns: u64,
}

/// Value of `WEFT_NAT_INGRESS`: whom the replies go back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatIngress {
    pub pod_ip: [u8; 4],
    pub pod_port: u16,
    /// `SEEN_*` bits of the remote's side.
    pub flags: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns` of the last reply.
    pub last_ns: u64,
}

/// Value of `WEFT_NAT_CONFIG`. All zero (the map's initial state, or
/// `--masquerade false`): nothing is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// 1: masquerade.
    pub enabled: u32,
    /// Ports allocated when a flow cannot keep its own (inclusive).
    pub port_min: u16,
    pub port_max: u16,
    /// New flows are refused while `flows` ≥ this.
    pub max_flows: u32,
    /// The device `bpf_fib_lookup` looks up from (it must have forwarding
    /// enabled, see the agent's datapath); 0: the packet's ingress device.
    pub fib_ifindex: u32,
    /// Live flows: recounted by the agent's GC, +1 by the programs per new
    /// flow (approximate in between: the increment is not atomic).
    pub flows: u64,
}

/// The tuple a packet's L4 header gives, for translation: `sport`/`dport`
/// as [`FlowKey`] has them. `None` for what is not translated (other
/// protocols, ICMP other than echo request and reply).
#[inline(always)]
pub fn l4_ports(proto: u8, l4: &[u8; 8]) -> Option<(u16, u16)> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        // The identifier is "our" port; the remote's is 0.
        IPPROTO_ICMP if l4[0] == ICMP_ECHO_REQUEST => Some((u16::from_be_bytes([l4[4], l4[5]]), 0)),
        IPPROTO_ICMP if l4[0] == ICMP_ECHO_REPLY => Some((0, u16::from_be_bytes([l4[4], l4[5]]))),
        _ => None,
    }
}

/// Byte offset of the port this side owns (source on egress, destination
/// on ingress) inside the L4 header.
#[inline(always)]
pub const fn port_offset(proto: u8, egress: bool) -> usize {
    match (proto, egress) {
        (IPPROTO_ICMP, _) => 4,
        (_, true) => 0,
        (_, false) => 2,
    }
}

/// Byte offset of the L4 checksum, and whether it covers the IP pseudo header.
#[inline(always)]
pub const fn l4_csum(proto: u8) -> (usize, bool) {
    match proto {
        IPPROTO_TCP => (16, true),
        IPPROTO_UDP => (6, true),
        _ => (2, false),
    }
}

/// Whether an ICMP message of `icmp_type` carries the header of the packet
/// it is about (and is translated back with it).
#[inline(always)]
pub const fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

/// A fragment (offset or more-fragments set): only the first has the ports,
/// so none is translated.
#[inline(always)]
pub const fn is_fragment(frag_off: u16) -> bool {
    frag_off & 0x3fff != 0
}

/// The `SEEN_*` bits a TCP segment with `tcp_flags` adds to its side.
#[inline(always)]
pub const fn tcp_seen(tcp_flags: u8) -> u8 {
    let mut s = SEEN_ANY;
    if tcp_flags & TCP_SYN != 0 {
        s |= SEEN_SYN;
    }
    if tcp_flags & TCP_FIN != 0 {
        s |= SEEN_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        s |= SEEN_RST;
    }
    s
}

/// Whether a TCP segment with `tcp_flags` opens a connection (SYN without
/// ACK): the only kind that creates a masquerade flow.
#[inline(always)]
pub const fn opens_connection(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A SYN without ACK on a flow whose previous connection closed: a new
/// connection reuses the tuple, and both sides' history starts again.
#[inline(always)]
pub const fn tcp_restarts(tcp_flags: u8, egress_flags: u8, ingress_flags: u8) -> bool {
    opens_connection(tcp_flags) && (egress_flags | ingress_flags) & (SEEN_FIN | SEEN_RST) != 0
}

/// The `attempt`-th port tried for a new flow whose own port is `own`:
/// first `own` itself, then pseudo-random ports of `[min, max]` (spread by
/// `seed`, so that flows to one remote do not all probe the same sequence).
#[inline(always)]
pub const fn candidate_port(own: u16, attempt: u32, seed: u32, min: u16, max: u16) -> u16 {
    if attempt == 0 || max < min {
        return own;
    }
    let span = (max - min) as u32 + 1;
    let h = hash32(seed ^ attempt.wrapping_mul(0x9e37_79b9));
    min + (h % span) as u16
}

/// A 32-bit integer mix (murmur3's finaliser).
#[inline(always)]
pub const fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// The seed of a flow's port sequence.
#[inline(always)]
pub const fn flow_seed(k: &FlowKey) -> u32 {
    u32::from_ne_bytes(k.src)
        ^ u32::from_ne_bytes(k.dst).rotate_left(7)
        ^ ((k.sport as u32) << 16 | k.dport as u32).rotate_left(13)
        ^ k.proto as u32
}

/// How long an idle flow lives, by what it has seen (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, answered, not closing.
    pub tcp_established: u64,
    /// TCP, not answered yet (SYN sent).
    pub tcp_syn: u64,
    /// TCP after FIN both ways or an RST: a moment for the last ACK. Not
    /// longer: a closed flow's port is free for the next, and what still
    /// comes late (a retransmitted FIN) starts a flow that keeps its port.
    pub tcp_closed: u64,
    /// UDP, one way only.
    pub udp: u64,
    /// UDP, answered.
    pub udp_stream: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        // Conntrack's defaults, except TCP established (5 days there) and
        // closed (10 s there, plus 120 s of TIME_WAIT).
        Timeouts {
            tcp_established: 86_400,
            tcp_syn: 60,
            tcp_closed: 1,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        }
    }
}

/// The state of a flow as `weftctl bpf nat` shows it and the GC judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP SYN sent, no answer yet; UDP/ICMP not answered.
    New,
    /// Answered.
    Established,
    /// TCP: FIN from one side.
    Closing,
    /// TCP: FIN both ways, or an RST.
    Closed,
}

impl FlowState {
    pub const fn of(proto: u8, egress_flags: u8, ingress_flags: u8) -> FlowState {
        let both = egress_flags | ingress_flags;
        if proto == IPPROTO_TCP {
            if both & SEEN_RST != 0
                || (egress_flags & SEEN_FIN != 0 && ingress_flags & SEEN_FIN != 0)
            {
                return FlowState::Closed;
            }
            if both & SEEN_FIN != 0 {
                return FlowState::Closing;
            }
        }
        if ingress_flags & SEEN_ANY != 0 {
            FlowState::Established
        } else {
            FlowState::New
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            FlowState::New => "new",
            FlowState::Established => "established",
            FlowState::Closing => "closing",
            FlowState::Closed => "closed",
        }
    }
}

impl Timeouts {
    /// How long a flow in `state` may stay idle.
    pub const fn idle_limit(&self, proto: u8, state: FlowState) -> u64 {
        match (proto, state) {
            (IPPROTO_TCP, FlowState::Closed) => self.tcp_closed,
            (IPPROTO_TCP, FlowState::New) => self.tcp_syn,
            (IPPROTO_TCP, _) => self.tcp_established,
            (IPPROTO_UDP, FlowState::New) => self.udp,
            (IPPROTO_UDP, _) => self.udp_stream,
            _ => self.icmp,
        }
    }

    /// Whether a flow idle since `last_ns` has expired at `now_ns`.
    pub const fn expired(&self, proto: u8, state: FlowState, last_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(last_ns) > self.idle_limit(proto, state) * 1_000_000_000
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays and integers, explicit padding (16 bytes).
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, 8-byte aligned u64s at 8 and 16 (24 bytes).
unsafe impl aya::Pod for NatEgress {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, u64 at 8 (16 bytes).
unsafe impl aya::Pod for NatIngress {}
#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, explicit padding (24 bytes).
unsafe impl aya::Pod for NatConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<NatEgress>(), 24);
        assert_eq!(size_of::<NatIngress>(), 16);
        assert_eq!(size_of::<NatConfig>(), 24);
    }

    #[test]
    fn ports_by_protocol() {
        let tcp = [0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0];
        // Table: (protocol, L4 bytes) → ports.
        for (proto, l4, want) in [
            (IPPROTO_TCP, tcp, Some((40000, 80))),
            (IPPROTO_UDP, tcp, Some((40000, 80))),
            (
                IPPROTO_ICMP,
                [8, 0, 0xaa, 0xbb, 0x12, 0x34, 0, 1],
                Some((0x1234, 0)),
            ),
            (
                IPPROTO_ICMP,
                [0, 0, 0xaa, 0xbb, 0x12, 0x34, 0, 1],
                Some((0, 0x1234)),
            ),
            (IPPROTO_ICMP, [3, 3, 0, 0, 0, 0, 0, 0], None),
            (47, tcp, None),
        ] {
            assert_eq!(l4_ports(proto, &l4), want, "proto {proto} {l4:?}");
        }
    }

    #[test]
    fn reversed_key_is_the_reply() {
        let k = FlowKey::new(IPPROTO_TCP, [198, 18, 0, 10], [198, 18, 0, 200], 40000, 80);
        let r = k.reversed();
        assert_eq!(
            r,
            FlowKey::new(IPPROTO_TCP, [198, 18, 0, 200], [198, 18, 0, 10], 80, 40000)
        );
        assert_eq!(r.reversed(), k);
        // ICMP echo: the request (id, 0) is answered by (0, id).
        let e = FlowKey::new(IPPROTO_ICMP, [1, 1, 1, 1], [2, 2, 2, 2], 7, 0);
        assert_eq!((e.reversed().sport, e.reversed().dport), (0, 7));
    }

    #[test]
    fn candidates_keep_the_port_first_then_stay_in_range() {
        assert_eq!(candidate_port(40000, 0, 99, 1024, 65535), 40000);
        let mut seen = [false; 64];
        for attempt in 1..2000 {
            let p = candidate_port(40000, attempt, 12345, 61000, 61063);
            assert!((61000..=61063).contains(&p));
            seen[(p - 61000) as usize] = true;
        }
        // Spread over the whole range.
        assert!(seen.iter().all(|s| *s));
        // Different seeds probe different sequences.
        let a: [u16; 4] = core::array::from_fn(|i| candidate_port(1, i as u32 + 1, 1, 1024, 65535));
        let b: [u16; 4] = core::array::from_fn(|i| candidate_port(1, i as u32 + 1, 2, 1024, 65535));
        assert_ne!(a, b);
        // A full range: every port is possible, no overflow.
        for attempt in 1..100 {
            let _ = candidate_port(5, attempt, attempt * 7, 0, 65535);
        }
        assert_eq!(
            candidate_port(5, 3, 3, 10, 9),
            5,
            "empty range: own port only"
        );
    }

    #[test]
    fn tcp_state_machine() {
        let syn = tcp_seen(TCP_SYN);
        let synack = tcp_seen(TCP_SYN | TCP_ACK);
        let fin = tcp_seen(TCP_FIN | TCP_ACK);
        let rst = tcp_seen(TCP_RST);
        // Table: (egress bits, ingress bits) → state.
        for (e, i, want) in [
            (syn, 0, FlowState::New),
            (syn, synack, FlowState::Established),
            (syn | fin, synack, FlowState::Closing),
            (syn, synack | fin, FlowState::Closing),
            (syn | fin, synack | fin, FlowState::Closed),
            (syn, synack | rst, FlowState::Closed),
            (syn | rst, 0, FlowState::Closed),
        ] {
            assert_eq!(FlowState::of(IPPROTO_TCP, e, i), want, "{e:#x} {i:#x}");
        }
        assert_eq!(FlowState::of(IPPROTO_UDP, SEEN_ANY, 0), FlowState::New);
        assert_eq!(
            FlowState::of(IPPROTO_UDP, SEEN_ANY, SEEN_ANY),
            FlowState::Established
        );
        assert!(tcp_restarts(TCP_SYN, syn | fin, synack | fin));
        assert!(!tcp_restarts(TCP_SYN | TCP_ACK, syn | fin, fin));
        assert!(!tcp_restarts(TCP_SYN, syn, 0), "a retransmitted SYN");
    }

    #[test]
    fn only_a_syn_without_ack_opens_a_connection() {
        assert!(opens_connection(TCP_SYN));
        assert!(opens_connection(TCP_SYN | 0x40 | 0x80), "ECN bits");
        for f in [TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_FIN, TCP_RST, 0] {
            assert!(!opens_connection(f), "{f:#x}");
        }
    }

    #[test]
    fn expiry_by_state() {
        let t = Timeouts::default();
        let s = 1_000_000_000u64;
        // Table: (protocol, state, idle seconds) → expired.
        for (proto, state, idle, want) in [
            (IPPROTO_TCP, FlowState::Closed, 0, false),
            (IPPROTO_TCP, FlowState::Closed, 2, true),
            (IPPROTO_TCP, FlowState::New, 59, false),
            (IPPROTO_TCP, FlowState::New, 61, true),
            (IPPROTO_TCP, FlowState::Established, 3600, false),
            (IPPROTO_TCP, FlowState::Closing, 3600, false),
            (IPPROTO_UDP, FlowState::New, 31, true),
            (IPPROTO_UDP, FlowState::Established, 31, false),
            (IPPROTO_ICMP, FlowState::Established, 31, true),
        ] {
            let now = 10_000 * s;
            assert_eq!(
                t.expired(proto, state, now - idle * s, now),
                want,
                "{proto} {state:?} idle {idle}"
            );
        }
        // A timestamp from the future (another CPU just wrote it) is not expired.
        assert!(!t.expired(IPPROTO_TCP, FlowState::Closed, 20 * s, 10 * s));
    }

    #[test]
    fn classification() {
        assert!(is_icmp_error(ICMP_DEST_UNREACH));
        assert!(is_icmp_error(ICMP_TIME_EXCEEDED));
        assert!(!is_icmp_error(ICMP_ECHO_REPLY));
        assert!(is_fragment(0x2000), "more fragments");
        assert!(is_fragment(0x0001), "offset");
        assert!(!is_fragment(0x4000), "DF only");
        assert_eq!(port_offset(IPPROTO_TCP, true), 0);
        assert_eq!(port_offset(IPPROTO_UDP, false), 2);
        assert_eq!(port_offset(IPPROTO_ICMP, false), 4);
        assert_eq!(l4_csum(IPPROTO_UDP), (6, true));
        assert_eq!(l4_csum(IPPROTO_ICMP), (2, false));
    }
}
