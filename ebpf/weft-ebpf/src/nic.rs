//! `weft_nic_ingress`: tc ingress of the node's NIC (the one with its private IP).
//!
//! - Not IPv4, or not addressed to this host's MAC: [`PASS`](crate::fwd::PASS).
//! - IPIP that passes [`weft_common::sources::ipip_verdict`] (a node of this
//!   location, to this node's private IP, on the NIC its route points to,
//!   with an inner source that node may send): the outer header is removed
//!   and the inner packet handled as below. A fragment of such IPIP goes to
//!   the stack unparsed; any other IPIP is dropped (the rule of
//!   `weft_xdp_ipip`, which drops it earlier where attached).
//! - A reply to a masqueraded flow (or an ICMP error about one) is
//!   translated back first ([`crate::nat::reverse`]), then routed as below.
//! - A reply to a pod's Service connection (not one of Weft's NAT flows):
//!   to the stack, whose conntrack undoes kube-proxy's DNAT ([`crate::svc`]).
//! - IPv4: [`weft_common::route::decide`] with [`Hook::Nic`] (known pod →
//!   `bpf_redirect_peer`, Local → the bridge, WireGuard → the WireGuard
//!   device, node routes and the rest → the stack). Plain IPv4 (not
//!   decapsulated) that would be forwarded must have a source
//!   [`weft_common::sources::plain_source_allowed`] on this device, or it is
//!   dropped.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    packet::{ETH_HLEN, ETH_P_IP, EthFacts, IPV4_HLEN, Ipv4Facts},
    route::{Action, Hook, PacketFacts, decide},
    sources::{IpipVerdict, ipip_verdict, plain_source_allowed},
};

use crate::{
    fwd::{EthIpv4, PACKET_HOST, PASS, execute, ingress_ifindex, pkt_type, tc_ptr},
    maps::{count, lookup_ipip_sender, lookup_pod, lookup_route, nic_source_rule, sender_may_send},
    nat, svc,
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
    let ingress = ingress_ifindex(&ctx);
    let decapsulated = ip.is_ipip();
    if decapsulated {
        let mut inner = Ipv4Facts::default();
        let v = ipip_verdict(&ip, ingress, &lookup_ipip_sender(ip.src), || {
            // A malformed inner header is no source the sender may send.
            match load_inner(&ctx, &ip) {
                Some(i) => {
                    inner = i;
                    sender_may_send(ip.src, i.src)
                }
                None => false,
            }
        });
        match v {
            IpipVerdict::Decap => {}
            IpipVerdict::PassFragment => {
                count(v.tc_counter(), len);
                return PASS;
            }
            _ => {
                count(v.tc_counter(), len);
                debug!(&ctx, "weft: dropped IPIP from {:i} to {:i}", ip.src, ip.dst);
                return TC_ACT_SHOT;
            }
        }
        if let Err(verdict) = decap(&ctx, &ip) {
            return verdict;
        }
        ip = inner;
    }
    let ours = match nat::reverse(&ctx, &ip) {
        Ok(Some(translated)) => {
            ip = translated;
            true
        }
        Ok(None) => false,
        Err(()) => return TC_ACT_SHOT,
    };
    let facts = PacketFacts {
        ingress_ifindex: ingress,
        dst_mac: eth.dst,
        ttl: ip.ttl,
        dst: ip.dst,
    };
    let d = decide(Hook::Nic, &facts, lookup_pod(ip.dst), lookup_route);
    // Decapsulated IPIP had its inner source checked against its sender.
    if !decapsulated
        && d.action != Action::Pass
        && !plain_source_allowed(nic_source_rule(ip.src), ingress)
    {
        count(Counter::DropPlainSource, len);
        debug!(
            &ctx,
            "weft: dropped {:i} → {:i}: source not from here", ip.src, ip.dst
        );
        return TC_ACT_SHOT;
    }
    if !ours && d.delivers_to_pod() && svc::is_client_reply(&ctx, &ip, ETH_HLEN) {
        // A backend answering a client whose Service the kernel DNATed here.
        count(Counter::ServiceReplyToStack, len);
        return PASS;
    }
    // Routed into a pod: the new source is this NIC's MAC (the frame's destination).
    execute(&ctx, &d, &ip, eth.dst)
}

/// The fixed part of the inner header of IPIP packet `outer`, parsed; `None`
/// if it is missing or not IPv4.
#[inline(always)]
fn load_inner(ctx: &TcContext, outer: &Ipv4Facts) -> Option<Ipv4Facts> {
    // Outer header length is 20..=60 (checked by the parser); the inner header follows.
    let off = ETH_HLEN + (outer.header_len as usize & 0x3c);
    let inner = ctx.load::<[u8; IPV4_HLEN]>(off).ok()?;
    Ipv4Facts::parse(&inner).ok()
}

/// Removes the outer header of a checked IPIP packet. Keeps a GSO packet's
/// segment size (`FIXED_GSO`: the segments were sized for the wire, the inner
/// ones are exactly 20 bytes shorter) and clears its tunnel GSO type
/// (`DECAP_L3_IPV4`, kernel ≥ 6.3; retried without on older kernels).
#[inline(always)]
fn decap(ctx: &TcContext, outer: &Ipv4Facts) -> Result<(), i32> {
    let len = ctx.len();
    let shrink = -((outer.header_len as usize & 0x3c) as i32);
    let fixed = BPF_F_ADJ_ROOM_FIXED_GSO as u64;
    let done = ctx
        .adjust_room(
            shrink,
            BPF_ADJ_ROOM_MAC,
            fixed | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64,
        )
        .is_ok()
        || ctx.adjust_room(shrink, BPF_ADJ_ROOM_MAC, fixed).is_ok();
    if !done {
        count(Counter::DecapFailed, len);
        debug!(ctx, "weft: IPIP decapsulation from {:i} failed", outer.src);
        return Err(TC_ACT_SHOT);
    }
    count(Counter::IpipDecap, len);
    Ok(())
}
