//! `weft_nic_ingress`: tc ingress of the node's NIC (the one with its private IP).
//!
//! - Not IPv4, or not addressed to this host's MAC: [`PASS`](crate::fwd::PASS).
//! - IPIP from a node in `WEFT_IPIP_PEERS`: the outer header is removed and the
//!   inner packet handled as below; IPIP from anyone else is dropped (the
//!   rule of `weft_xdp_ipip`, which drops it earlier where attached).
//! - A reply to a masqueraded flow (or an ICMP error about one) is
//!   translated back first ([`crate::nat::reverse`]), then routed as below.
//! - IPv4: [`weft_common::route::decide`] with [`Hook::Nic`] (known pod →
//!   `bpf_redirect_peer`, Local → the bridge, WireGuard → the WireGuard
//!   device, node routes and the rest → the stack).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    packet::{ETH_HLEN, ETH_P_IP, EthFacts, IPV4_HLEN, Ipv4Facts},
    route::{Hook, PacketFacts, decide},
};

use crate::{
    fwd::{EthIpv4, PACKET_HOST, PASS, execute, ingress_ifindex, pkt_type, tc_ptr},
    maps::{count, is_ipip_peer, lookup_pod, lookup_route},
    nat,
};

#[classifier]
pub fn weft_nic_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    count(Counter::NicIngressSeen, len);
    let Some(p) = tc_ptr::<EthIpv4>(&ctx, 0) else {
        count(Counter::PassNotIpv4, len);
        return PASS;
    };
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let Ok(eth) = EthFacts::parse(unsafe { &(*p).eth }) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    if eth.ethertype != ETH_P_IP {
        count(Counter::PassNotIpv4, len);
        return PASS;
    }
    if pkt_type(&ctx) != PACKET_HOST {
        // Flooded or promiscuous frames for other hosts are not ours to route.
        count(Counter::PassNotForHost, len);
        return PASS;
    }
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let Ok(mut ip) = Ipv4Facts::parse(unsafe { &(*p).ip }) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    if ip.is_ipip() {
        if !is_ipip_peer(ip.src) {
            count(Counter::DropIpipUnknownSource, len);
            return TC_ACT_SHOT;
        }
        match decap(&ctx, &ip) {
            Ok(inner) => ip = inner,
            Err(verdict) => return verdict,
        }
    }
    match nat::reverse(&ctx, &ip) {
        Ok(Some(translated)) => ip = translated,
        Ok(None) => {}
        Err(()) => return TC_ACT_SHOT,
    }
    let facts = PacketFacts {
        ingress_ifindex: ingress_ifindex(&ctx),
        dst_mac: eth.dst,
        ttl: ip.ttl,
        dst: ip.dst,
    };
    let d = decide(Hook::Nic, &facts, lookup_pod(ip.dst), lookup_route);
    // Routed into a pod: the new source is this NIC's MAC (the frame's destination).
    execute(&ctx, &d, &ip, eth.dst)
}

/// Removes the outer header of an IPIP packet from a peer, after checking that
/// the inner packet is IPv4. Returns the inner header's facts, or the verdict
/// for a packet that cannot be decapsulated.
#[inline(always)]
fn decap(ctx: &TcContext, outer: &Ipv4Facts) -> Result<Ipv4Facts, i32> {
    let len = ctx.len();
    let outer_len = outer.header_len as usize;
    // Outer header length is 20..=60 (checked by the parser); the inner header follows.
    let Ok(inner) = ctx.load::<[u8; IPV4_HLEN]>(ETH_HLEN + (outer_len & 0x3c)) else {
        count(Counter::Malformed, len);
        return Err(PASS);
    };
    let Ok(facts) = Ipv4Facts::parse(&inner) else {
        count(Counter::Malformed, len);
        return Err(PASS);
    };
    if ctx
        .adjust_room(-((outer_len & 0x3c) as i32), BPF_ADJ_ROOM_MAC, 0)
        .is_err()
    {
        count(Counter::DecapFailed, len);
        debug!(ctx, "weft: IPIP decapsulation from {:i} failed", outer.src);
        return Err(TC_ACT_SHOT);
    }
    count(Counter::IpipDecap, len);
    Ok(facts)
}
