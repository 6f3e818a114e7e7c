//! Masquerade: where a packet leaving the cluster is source-NATed
//! ([`plan`] then [`snat`], from `weft_pod_ingress` and `weft_wg_ingress`)
//! and where replies and ICMP errors are translated back ([`reverse`], from
//! `weft_nic_ingress` and `weft_nat_ingress`). Flow keys, port choice, TCP
//! state and expiry are in [`weft_common::nat`].
//!
//! Checksums are updated with `bpf_l3_csum_replace`/`bpf_l4_csum_replace`,
//! which handle every `skb->ip_summed` state (a pod's TCP segments are
//! CHECKSUM_PARTIAL: only the pseudo-header part may change) and, with
//! `BPF_F_MARK_MANGLED_0`, leave a zero UDP checksum (none) at zero.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, BPF_NOEXIST, bpf_fib_lookup as FibParams,
        bpf_sock_tuple,
    },
    helpers::{
        bpf_fib_lookup, bpf_ktime_get_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    nat::{
        FlowKey, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NatConfig, NatEgress,
        NatIngress, SEEN_ANY, candidate_port, flow_seed, is_fragment, is_icmp_error, l4_csum,
        l4_ports, opens_connection, port_offset, tcp_restarts, tcp_seen,
    },
    packet::{ETH_HLEN, IPV4_HLEN, Ipv4Facts, ipv4},
};

use crate::{
    fwd::{gso_size, redirect_neigh, ttl_decrement},
    maps::{
        WEFT_MASQ_EXEMPT, WEFT_MASQ_SOURCES, WEFT_NAT_CONFIG, WEFT_NAT_EGRESS, WEFT_NAT_INGRESS,
        count, in_prefixes,
    },
};

/// `AF_INET` for `bpf_fib_lookup`.
const AF_INET: u8 = 2;
/// Ports tried for a new flow (its own, then pseudo-random ones of the range).
/// 16, not more: the verifier walks every attempt on every path into
/// masquerade, and with the pod program's other checks 32 went past its
/// 1M-instruction limit. All 16 taken means a range nearly full, which
/// `nat_alloc_failed` shows.
const PORT_ATTEMPTS: u32 = 16;
/// Offset of the L4 header behind Ethernet and an option-less IPv4 header.
const L4: usize = ETH_HLEN + IPV4_HLEN;

/// What [`plan`] decided.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not masqueraded traffic: the caller goes on as without NAT.
    NotOurs,
    /// Masqueraded traffic that cannot be translated here: to the stack,
    /// counted under [`Plan::counter`].
    Pass,
    /// Translate with [`snat`].
    Translate,
}

/// A packet to masquerade. Plain fields, always initialised (see
/// `weft_common::route::Decision` for why not an enum with payloads).
#[derive(Clone, Copy)]
pub struct Plan {
    pub outcome: Outcome,
    pub counter: Counter,
    /// The flow as the pod (or external peer) sent it.
    key: FlowKey,
    tcp_flags: u8,
    /// From the FIB: egress device, next hop and the source address it prefers.
    ifindex: u32,
    nexthop: [u8; 4],
    nat_ip: [u8; 4],
}

impl Plan {
    const fn outcome(outcome: Outcome, counter: Counter) -> Plan {
        Plan {
            outcome,
            counter,
            key: FlowKey::new(0, [0; 4], [0; 4], 0, 0),
            tcp_flags: 0,
            ifindex: 0,
            nexthop: [0; 4],
            nat_ip: [0; 4],
        }
    }
}

#[inline(always)]
fn config() -> NatConfig {
    match WEFT_NAT_CONFIG.get(0) {
        Some(c) => *c,
        None => NatConfig::default(),
    }
}

/// Whether the IPv4 packet whose header starts at `l3` (`ip` its facts),
/// which has no route in the cluster, is masqueraded, and how: its source
/// is a masquerade source, its destination not exempt, its protocol
/// translatable, TCP a SYN or a flow of ours, and the kernel's FIB has a
/// way out for it.
#[inline(always)]
pub fn plan(ctx: &TcContext, ip: &Ipv4Facts, l3: usize, ingress_ifindex: u32) -> Plan {
    let cfg = config();
    if cfg.enabled == 0
        || !in_prefixes(&WEFT_MASQ_SOURCES, ip.src)
        || in_prefixes(&WEFT_MASQ_EXEMPT, ip.dst)
    {
        return Plan::outcome(Outcome::NotOurs, Counter::PassNoRoute);
    }
    let unsupported = Plan::outcome(Outcome::Pass, Counter::NatPassUnsupported);
    if ip.header_len as usize != IPV4_HLEN || is_fragment(ip.frag_off) {
        return unsupported;
    }
    let Ok(l4) = ctx.load::<[u8; 8]>(l3 + IPV4_HLEN) else {
        return unsupported;
    };
    if ip.protocol == IPPROTO_ICMP && l4[0] != ICMP_ECHO_REQUEST {
        return unsupported;
    }
    let Some((sport, dport)) = l4_ports(ip.protocol, &l4) else {
        return unsupported;
    };
    let tcp_flags = if ip.protocol == IPPROTO_TCP {
        match ctx.load::<u8>(l3 + IPV4_HLEN + 13) {
            Ok(f) => f,
            Err(_) => return unsupported,
        }
    } else {
        0
    };
    let key = FlowKey::new(ip.protocol, ip.src, ip.dst, sport, dport);
    if ip.protocol == IPPROTO_TCP
        && !opens_connection(tcp_flags)
        && WEFT_NAT_EGRESS.get_ptr(key).is_none()
    {
        // Not a flow of ours and not a new one: the pod answers a
        // connection the kernel NATed towards it (hostPort, NodePort),
        // whose conntrack must translate the answer.
        return Plan::outcome(Outcome::Pass, Counter::NatPassNotNew);
    }
    if ip.ttl <= 1 {
        return Plan::outcome(Outcome::Pass, Counter::PassTtlExpired);
    }

    // SAFETY: plain data; all-zero is a valid value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.protocol;
    fib.sport = sport.to_be();
    fib.dport = dport.to_be();
    // A GSO super-packet is segmented to the device's MTU later: no MTU check.
    fib.__bindgen_anon_1.tot_len = if gso_size(ctx) != 0 { 0 } else { ip.total_len };
    fib.ifindex = if cfg.fib_ifindex != 0 {
        cfg.fib_ifindex
    } else {
        ingress_ifindex
    };
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    // SKIP_NEIGH: bpf_redirect_neigh resolves the neighbour itself (and
    // queues the packet meanwhile), so an unknown neighbour costs no packet.
    // SRC: the address the kernel would give a packet it sends this way.
    // SAFETY: params is a stack struct of the size passed; the context is valid.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || fib.ifindex == ingress_ifindex {
        // No route, a local destination, blackhole/unreachable/prohibit,
        // forwarding disabled on the lookup device, or over the egress MTU
        // (non-GSO with DF: the kernel would send "fragmentation needed").
        // The stack gets it as it is: with forwarding on it routes it
        // (iptables NAT applies if the host has it) and sends the ICMP
        // errors; with forwarding off it drops it (IpInAddrErrors).
        debug!(
            ctx,
            "weft: masquerade of {:i} -> {:i}: FIB says {}", ip.src, ip.dst, rc
        );
        return Plan::outcome(Outcome::Pass, Counter::NatPassFib);
    }
    Plan {
        outcome: Outcome::Translate,
        counter: Counter::NatSnat,
        key,
        tcp_flags,
        ifindex: fib.ifindex,
        // SAFETY: unions of plain integers, written by the helper.
        nexthop: unsafe { fib.__bindgen_anon_4.ipv4_dst }.to_ne_bytes(),
        // SAFETY: as above.
        nat_ip: unsafe { fib.__bindgen_anon_3.ipv4_src }.to_ne_bytes(),
    }
}

/// Whether the host itself has a socket on `nat_ip:port` talking to
/// `remote:rport` (or listening on that port): such a port is not handed to
/// a pod, or the host's replies would be translated away from it.
#[inline(always)]
fn host_has_socket(ctx: &TcContext, proto: u8, reply: &FlowKey) -> bool {
    // SAFETY: plain data; all-zero is a valid value.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    {
        t.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes(reply.src);
        t.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(reply.dst);
        t.__bindgen_anon_1.ipv4.sport = reply.sport.to_be();
        t.__bindgen_anon_1.ipv4.dport = reply.dport.to_be();
    }
    let size = 12u32; // sizeof(tuple.ipv4)
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the tuple is a stack struct at least `size` long; the context is valid.
    let sk = unsafe {
        match proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(ctx.skb.skb as *mut _, &mut t, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(ctx.skb.skb as *mut _, &mut t, size, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, released exactly once.
    unsafe { bpf_sk_release(sk as *mut _) };
    true
}

/// The egress entry of `p`'s flow, created (with its ingress twin and a
/// port) if new. `None`: no entry and none can be made (counted).
#[inline(always)]
fn flow(ctx: &TcContext, p: &Plan, now: u64) -> Option<*mut NatEgress> {
    if let Some(e) = WEFT_NAT_EGRESS.get_ptr_mut(p.key) {
        return Some(e);
    }
    let cfg = config();
    if cfg.flows >= cfg.max_flows as u64 {
        count(Counter::NatTableFull, ctx.len());
        return None;
    }
    let own = p.key.sport;
    let seed = flow_seed(&p.key);
    let back = NatIngress {
        pod_ip: p.key.src,
        pod_port: own,
        flags: 0,
        _pad: 0,
        last_ns: now,
    };
    let mut port = 0u16;
    let mut attempt = 0;
    while attempt < PORT_ATTEMPTS {
        let c = candidate_port(own, attempt, seed, cfg.port_min, cfg.port_max);
        attempt += 1;
        if c == 0 && p.key.proto != IPPROTO_ICMP {
            continue;
        }
        let reply = FlowKey::new(p.key.proto, p.key.dst, p.nat_ip, p.key.dport, c);
        if host_has_socket(ctx, p.key.proto, &reply) {
            continue;
        }
        // NOEXIST: taken atomically, so two CPUs never get one port.
        if WEFT_NAT_INGRESS
            .insert(reply, back, BPF_NOEXIST as u64)
            .is_ok()
        {
            port = c;
            attempt = PORT_ATTEMPTS + 1;
        }
    }
    if attempt != PORT_ATTEMPTS + 1 {
        count(Counter::NatAllocFailed, ctx.len());
        debug!(
            ctx,
            "weft: no free port to masquerade {:i}:{} -> {:i}:{}",
            p.key.src,
            own,
            p.key.dst,
            p.key.dport
        );
        return None;
    }
    let out = NatEgress {
        nat_ip: p.nat_ip,
        nat_port: port,
        flags: 0,
        _pad: 0,
        created_ns: now,
        last_ns: now,
    };
    let reply = FlowKey::new(p.key.proto, p.key.dst, p.nat_ip, p.key.dport, port);
    if WEFT_NAT_EGRESS
        .insert(p.key, out, BPF_NOEXIST as u64)
        .is_err()
    {
        // Another CPU created the flow meanwhile: use its entry.
        let _ = WEFT_NAT_INGRESS.remove(reply);
        return WEFT_NAT_EGRESS.get_ptr_mut(p.key);
    }
    if let Some(c) = WEFT_NAT_CONFIG.get_ptr_mut(0) {
        // SAFETY: the array slot lives as long as the program. Not atomic
        // (the BPF target has no atomic RMW in Rust): a lost increment on
        // a CPU race makes the limit approximate until the next GC recount.
        unsafe { (*c).flows += 1 };
    }
    count(Counter::NatNewFlow, ctx.len());
    WEFT_NAT_EGRESS.get_ptr_mut(p.key)
}

/// `bpf_l4_csum_replace` of a `size`-byte field, `BPF_F_MARK_MANGLED_0` for UDP.
#[inline(always)]
fn l4_fix(ctx: &TcContext, proto: u8, off: usize, from: u32, to: u32, flags: u64) -> bool {
    let mangled = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    ctx.l4_csum_replace(off, from as u64, to as u64, flags | mangled)
        .is_ok()
}

/// Rewrites the address at `ip_off + addr` (source or destination) from
/// `old` to `new` and the port at `port_off` from `old_port` to `new_port`,
/// with the IP checksum and the L4 checksum at `csum_off` (pseudo header
/// included when `pseudo`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    proto: u8,
    addr_off: usize,
    old: [u8; 4],
    new: [u8; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> bool {
    let (csum, pseudo) = l4_csum(proto);
    let csum_off = L4 + csum;
    let (o, n) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    if pseudo && !l4_fix(ctx, proto, csum_off, o, n, BPF_F_PSEUDO_HDR as u64 | 4) {
        return false;
    }
    if old_port != new_port {
        let (op, np) = (old_port.to_be() as u32, new_port.to_be() as u32);
        if !l4_fix(ctx, proto, csum_off, op, np, 2)
            || ctx.store(port_off, &new_port.to_be_bytes(), 0).is_err()
        {
            return false;
        }
    }
    ctx.l3_csum_replace(ETH_HLEN + ipv4::CSUM, o as u64, n as u64, 4)
        .is_ok()
        && ctx.store(ETH_HLEN + addr_off, &new, 0).is_ok()
}

/// Source-NATs the packet `p` describes (Ethernet + option-less IPv4 by
/// now) and sends it out of the FIB's device. Returns the tc verdict.
#[inline(always)]
pub fn snat(ctx: &TcContext, p: &Plan) -> i32 {
    use aya_ebpf::bindings::TC_ACT_SHOT;
    let len = ctx.len();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(e) = flow(ctx, p, now) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: a map value pointer from a successful lookup; plain data, racy
    // updates of the timestamp and flag bits are harmless.
    let (nat_ip, nat_port) = unsafe {
        (*e).last_ns = now;
        if p.key.proto == IPPROTO_TCP {
            let reply = FlowKey::new(
                p.key.proto,
                p.key.dst,
                (*e).nat_ip,
                p.key.dport,
                (*e).nat_port,
            );
            if p.tcp_flags & 0x02 != 0
                && let Some(i) = WEFT_NAT_INGRESS.get_ptr_mut(reply)
                && tcp_restarts(p.tcp_flags, (*e).flags, (*i).flags)
            {
                (*e).flags = 0;
                (*i).flags = 0;
            }
            (*e).flags |= tcp_seen(p.tcp_flags);
        } else {
            (*e).flags |= SEEN_ANY;
        }
        ((*e).nat_ip, (*e).nat_port)
    };
    let port_off = L4 + port_offset(p.key.proto, true);
    if !rewrite(
        ctx,
        p.key.proto,
        ipv4::SRC,
        p.key.src,
        nat_ip,
        port_off,
        p.key.sport,
        nat_port,
    ) || ttl_decrement(ctx).is_err()
    {
        count(Counter::NatRewriteFailed, len);
        return TC_ACT_SHOT;
    }
    count(Counter::NatSnat, len);
    redirect_neigh(p.ifindex, Some(p.nexthop))
}

/// Translates back, in place, a reply to a masqueraded flow or an ICMP
/// error about one, on a packet that starts with Ethernet + IPv4 (`ip` its
/// facts). Returns the facts with the new destination (the pod, or the
/// external peer) when it did; `None` for anything else (nothing changed).
/// Counted under `NatReverse`/`NatIcmpError`; the caller forwards it.
#[inline(always)]
pub fn reverse(ctx: &TcContext, ip: &Ipv4Facts) -> Result<Option<Ipv4Facts>, ()> {
    if config().enabled == 0 || ip.header_len as usize != IPV4_HLEN || is_fragment(ip.frag_off) {
        return Ok(None);
    }
    if !matches!(ip.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return Ok(None);
    }
    let Ok(l4) = ctx.load::<[u8; 8]>(L4) else {
        return Ok(None);
    };
    if ip.protocol == IPPROTO_ICMP && is_icmp_error(l4[0]) {
        return icmp_error(ctx, ip);
    }
    let Some((sport, dport)) = l4_ports(ip.protocol, &l4) else {
        return Ok(None);
    };
    if ip.protocol == IPPROTO_ICMP && l4[0] == ICMP_ECHO_REQUEST {
        // Only replies come back through a translation.
        return Ok(None);
    }
    let key = FlowKey::new(ip.protocol, ip.src, ip.dst, sport, dport);
    let Some(i) = WEFT_NAT_INGRESS.get_ptr_mut(key) else {
        return Ok(None);
    };
    // SAFETY: a map value pointer from a successful lookup; plain data.
    let (pod_ip, pod_port) = unsafe {
        (*i).last_ns = bpf_ktime_get_ns();
        (*i).flags |= if ip.protocol == IPPROTO_TCP {
            match ctx.load::<u8>(L4 + 13) {
                Ok(f) => tcp_seen(f),
                Err(_) => SEEN_ANY,
            }
        } else {
            SEEN_ANY
        };
        ((*i).pod_ip, (*i).pod_port)
    };
    let port_off = L4 + port_offset(ip.protocol, false);
    if !rewrite(
        ctx,
        ip.protocol,
        ipv4::DST,
        ip.dst,
        pod_ip,
        port_off,
        dport,
        pod_port,
    ) {
        count(Counter::NatRewriteFailed, ctx.len());
        return Err(());
    }
    count(Counter::NatReverse, ctx.len());
    let mut out = *ip;
    out.dst = pod_ip;
    Ok(Some(out))
}

/// ICMP destination unreachable / time exceeded / parameter problem about a
/// packet we translated: the quoted header (node → remote) goes back to
/// pod → remote and the message to the pod, so that PMTU discovery and
/// "connection refused" work through the NAT. The quoted L4 checksum is left
/// as it is: receivers do not check it (and TCP's is often cut off).
#[inline(always)]
fn icmp_error(ctx: &TcContext, ip: &Ipv4Facts) -> Result<Option<Ipv4Facts>, ()> {
    const INNER: usize = L4 + 8;
    const INNER_L4: usize = INNER + IPV4_HLEN;
    let Ok(hdr) = ctx.load::<[u8; IPV4_HLEN]>(INNER) else {
        return Ok(None);
    };
    let Ok(inner) = Ipv4Facts::parse(&hdr) else {
        return Ok(None);
    };
    if inner.header_len as usize != IPV4_HLEN || inner.src != ip.dst {
        return Ok(None);
    }
    let Ok(inner_l4) = ctx.load::<[u8; 8]>(INNER_L4) else {
        return Ok(None);
    };
    let Some((sport, dport)) = l4_ports(inner.protocol, &inner_l4) else {
        return Ok(None);
    };
    if inner.protocol == IPPROTO_ICMP && inner_l4[0] != ICMP_ECHO_REQUEST {
        return Ok(None);
    }
    let key = FlowKey::new(inner.protocol, inner.src, inner.dst, sport, dport).reversed();
    let Some(i) = WEFT_NAT_INGRESS.get_ptr(key) else {
        return Ok(None);
    };
    // SAFETY: a map value pointer from a successful lookup; plain data.
    let (pod_ip, pod_port) = unsafe { ((*i).pod_ip, (*i).pod_port) };
    let (nat, pod) = (u32::from_ne_bytes(ip.dst), u32::from_ne_bytes(pod_ip));
    let icmp_csum = L4 + 2;
    let port_off = INNER_L4 + port_offset(inner.protocol, true);
    let old_inner_csum = u16::from_be_bytes([hdr[ipv4::CSUM], hdr[ipv4::CSUM + 1]]);
    let ok = ctx
        .l3_csum_replace(INNER + ipv4::CSUM, nat as u64, pod as u64, 4)
        .is_ok()
        && ctx.store(INNER + ipv4::SRC, &pod_ip, 0).is_ok()
        && ctx.store(port_off, &pod_port.to_be_bytes(), 0).is_ok();
    let new_inner_csum = match ctx.load::<[u8; 2]>(INNER + ipv4::CSUM) {
        Ok(c) if ok => u16::from_be_bytes(c),
        _ => {
            count(Counter::NatRewriteFailed, ctx.len());
            return Err(());
        }
    };
    // The ICMP checksum covers the quoted header: the address, its checksum
    // and the port all changed.
    let ok = ctx
        .l4_csum_replace(icmp_csum, nat as u64, pod as u64, 4)
        .is_ok()
        && ctx
            .l4_csum_replace(
                icmp_csum,
                old_inner_csum.to_be() as u64,
                new_inner_csum.to_be() as u64,
                2,
            )
            .is_ok()
        && ctx
            .l4_csum_replace(
                icmp_csum,
                key.dport.to_be() as u64,
                pod_port.to_be() as u64,
                2,
            )
            .is_ok()
        && ctx
            .l3_csum_replace(ETH_HLEN + ipv4::CSUM, nat as u64, pod as u64, 4)
            .is_ok()
        && ctx.store(ETH_HLEN + ipv4::DST, &pod_ip, 0).is_ok();
    if !ok {
        count(Counter::NatRewriteFailed, ctx.len());
        return Err(());
    }
    count(Counter::NatIcmpError, ctx.len());
    let mut out = *ip;
    out.dst = pod_ip;
    Ok(Some(out))
}
