//! `weft_wg_ingress`: tc ingress of the WireGuard device (an L3 TUN: packets
//! start at the IP header, no Ethernet header).
//!
//! - Not IPv4: [`PASS`](crate::fwd::PASS).
//! - IPv4: [`weft_common::route::decide`] with [`Hook::WireGuard`]. Anything
//!   forwarded first gets an Ethernet header (`bpf_skb_change_head`), which
//!   `bpf_redirect_neigh` requires and the pod's eth0 expects; then known
//!   pod → `bpf_redirect_peer`, Local → the bridge, Node/NodeIpip → out of the
//!   NIC (to the stack if it does not fit the NIC's MTU), WireGuard and no
//!   route → the stack, except what an external peer
//!   sends out of the cluster: masqueraded by [`crate::nat`] (Ethernet header
//!   pushed once the translation is certain).
//! - Into a local pod but a reply to its Service connection: to the stack,
//!   as it came ([`crate::svc`]).

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    packet::{IPV4_HLEN, Ipv4Facts, ParseError},
    route::{Action, Hook, PacketFacts, decide},
};

use crate::{
    fwd::{PASS, PSEUDO_MAC, exceeds_mtu, execute_checked, ingress_ifindex, push_eth, tc_ptr},
    maps::{count, lookup_pod, lookup_route},
    nat::{self, Outcome},
    svc,
};

#[classifier]
pub fn weft_wg_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    count(Counter::WgIngressSeen, len);
    let Some(p) = tc_ptr::<[u8; IPV4_HLEN]>(&ctx, 0) else {
        count(Counter::Malformed, len);
        return PASS;
    };
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let ip = match Ipv4Facts::parse(unsafe { &*p }) {
        Ok(ip) => ip,
        Err(ParseError::NotIpv4) => {
            count(Counter::PassNotIpv4, len);
            return PASS;
        }
        Err(_) => {
            count(Counter::Malformed, len);
            return PASS;
        }
    };
    let facts = PacketFacts {
        ingress_ifindex: ingress_ifindex(&ctx),
        dst_mac: [0; 6],
        ttl: ip.ttl,
        dst: ip.dst,
    };
    let d = decide(Hook::WireGuard, &facts, lookup_pod(ip.dst), lookup_route);
    if d.action == Action::Pass {
        if d.counter == Counter::PassNoRoute {
            // An external peer (a laptop) going to the internet through this node.
            let p = nat::plan(&ctx, &ip, 0, facts.ingress_ifindex);
            if p.outcome == Outcome::Translate {
                if push_eth(&ctx).is_err() {
                    count(Counter::HeaderPushFailed, len);
                    return TC_ACT_SHOT;
                }
                return nat::snat(&ctx, &p);
            }
            if p.outcome == Outcome::Pass {
                count(p.counter, len);
                return PASS;
            }
        }
        count(d.counter, len);
        return PASS;
    }
    if d.delivers_to_pod() && svc::is_client_reply(&ctx, &ip, 0) {
        // A backend in another segment answering a client whose Service the kernel DNATed here.
        count(Counter::ServiceReplyToStack, len);
        return PASS;
    }
    // Checked before the Ethernet header is pushed: the stack must get the
    // packet as the device delivered it.
    if exceeds_mtu(&ctx, &d, &ip, 0) {
        count(Counter::PassMtu, len);
        return PASS;
    }
    if push_eth(&ctx).is_err() {
        count(Counter::HeaderPushFailed, len);
        debug!(
            &ctx,
            "weft: no room for an Ethernet header on a WireGuard packet to {:i}", ip.dst
        );
        return TC_ACT_SHOT;
    }
    execute_checked(&ctx, &d, &ip, PSEUDO_MAC)
}
