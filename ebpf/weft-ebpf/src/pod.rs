//! `weft_pod_ingress`: tc ingress of every host-side pod veth (the ports of the
//! pod bridge), so every packet a local pod sends enters here.
//!
//! Catching pod traffic on the veths rather than on the bridge lets
//! same-node pod-to-pod frames skip the bridge and br_netfilter (iptables
//! FORWARD), and is where a pod's identity is enforced: `WEFT_PODS` (written
//! by user space from what the CNI assigned, never by packets) says which
//! veth and MAC each pod IP belongs to.
//!
//! - ARP: dropped ([`Counter::DropSpoofedArp`]) unless the sender is the
//!   veth's own address and MAC, or a probe (sender 0.0.0.0); then passed.
//! - Other non-IPv4 (IPv6, ...): [`PASS`](crate::fwd::PASS).
//! - IPv4: dropped ([`Counter::DropSpoofedSource`]) unless the source is the
//!   veth's own address and MAC — one hash lookup. Then
//!   [`weft_common::route::decide`] with [`Hook::Pod`], carried out by
//!   [`crate::fwd::execute`]; without a route (leaving the cluster),
//!   masqueraded by [`crate::nat`] unless exempt.
//! - To a service CIDR: to the stack, the client's socket recorded; into a
//!   local pod but a reply to such a socket: to the stack ([`crate::svc`]).

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use weft_common::{
    counters::Counter,
    packet::{ARP_IPV4_LEN, ArpFacts, ETH_HLEN, ETH_P_ARP, ETH_P_IP, EthFacts, Ipv4Facts},
    route::{Action, Hook, PacketFacts, arp_sender_allowed, decide},
};

use crate::{
    fwd::{EthIpv4, PASS, execute, ingress_ifindex, tc_ptr},
    maps::{count, lookup_pod, lookup_route, pod_owns},
    nat::{self, Outcome},
    svc,
};

/// An Ethernet header followed by an Ethernet/IPv4 ARP body.
#[repr(C)]
struct EthArp {
    eth: [u8; ETH_HLEN],
    arp: [u8; ARP_IPV4_LEN],
}

#[classifier]
pub fn weft_pod_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    count(Counter::PodIngressSeen, len);
    let Some(eth) = tc_ptr::<[u8; ETH_HLEN]>(&ctx, 0) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let Ok(eth) = EthFacts::parse(unsafe { &*eth }) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    match eth.ethertype {
        ETH_P_IP => ipv4(&ctx, &eth, len),
        ETH_P_ARP => arp(&ctx, &eth, len),
        _ => {
            count(Counter::PassNotIpv4, len);
            PASS
        }
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, eth: &EthFacts, len: u32) -> i32 {
    let Some(p) = tc_ptr::<EthIpv4>(ctx, 0) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let Ok(ip) = Ipv4Facts::parse(unsafe { &(*p).ip }) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    let ifindex = ingress_ifindex(ctx);
    if !pod_owns(ip.src, ifindex, &eth.src) {
        count(Counter::DropSpoofedSource, len);
        return TC_ACT_SHOT;
    }
    let facts = PacketFacts {
        ingress_ifindex: ifindex,
        dst_mac: eth.dst,
        ttl: ip.ttl,
        dst: ip.dst,
    };
    let d = decide(Hook::Pod, &facts, lookup_pod(ip.dst), lookup_route);
    if d.action == Action::Pass && d.counter == Counter::PassNoRoute && svc::is_service(ip.dst) {
        // To a Service: kube-proxy's DNAT is in the stack, and so must its replies be.
        svc::record_client(ctx, &ip, ETH_HLEN);
        count(Counter::ServiceToStack, len);
        return PASS;
    }
    if d.delivers_to_pod() && svc::is_client_reply(ctx, &ip, ETH_HLEN) {
        // A same-node backend answering: the bridge's conntrack undoes the DNAT.
        count(Counter::ServiceReplyToStack, len);
        return PASS;
    }
    if d.action == Action::Pass && d.counter == Counter::PassNoRoute {
        // Leaving the cluster: masqueraded unless exempt.
        let p = nat::plan(ctx, &ip, ETH_HLEN, ifindex);
        match p.outcome {
            Outcome::NotOurs => {}
            Outcome::Pass => {
                count(p.counter, len);
                return PASS;
            }
            Outcome::Translate => return nat::snat(ctx, &p),
        }
    }
    // Routed into a pod: the new source is the gateway MAC the pod sent to.
    execute(ctx, &d, &ip, eth.dst)
}

/// ARP claims addresses: a forged sender would make the bridge's
/// neighbours (the node, other pods) send the victim's traffic here.
#[inline(always)]
fn arp(ctx: &TcContext, eth: &EthFacts, len: u32) -> i32 {
    let body = tc_ptr::<EthArp>(ctx, 0)
        // SAFETY: bounds checked by tc_ptr; read-only copy of the ARP fields.
        .and_then(|p| ArpFacts::parse(unsafe { &(*p).arp }).ok());
    let Some(a) = body else {
        // Not Ethernet/IPv4 ARP (or truncated): no IPv4 neighbour learns from it.
        count(Counter::PassNotIpv4, len);
        return PASS;
    };
    let ifindex = ingress_ifindex(ctx);
    if !arp_sender_allowed(&a, &lookup_pod(a.sender_ip), ifindex, &eth.src) {
        count(Counter::DropSpoofedArp, len);
        return TC_ACT_SHOT;
    }
    count(Counter::PassNotIpv4, len);
    PASS
}
