//! `weft_uplink_ingress`: tc ingress of the node's uplinks other than the NIC
//! (the devices masqueraded traffic may leave by, e.g. a public interface).
//!
//! - A reply to a masqueraded flow, or an ICMP error about one: translated
//!   back ([`crate::nat::reverse`]) and routed to the pod or external peer
//!   with [`weft_common::route::decide`] as on the NIC (no Service check:
//!   what is translated back here is a flow of Weft's own masquerade).
//! - A packet for the cluster (a destination in `WEFT_ROUTES`) whose source
//!   is a cluster range that may not arrive here (no cluster source arrives
//!   on an uplink, see [`weft_common::sources`]): dropped, so that the
//!   kernel does not forward a forged packet into a pod.
//! - Anything else: [`PASS`](crate::fwd::PASS) (`TC_ACT_UNSPEC`), untouched: this device is not ours,
//!   other programs on the hook and the stack see it as if we were not here.
//!   No other traffic is routed from here, so nothing from outside reaches
//!   a pod that it could not reach without Weft.

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use weft_common::{
    counters::Counter,
    packet::{ETH_P_IP, EthFacts, Ipv4Facts},
    route::{Hook, PacketFacts, decide},
    sources::plain_source_allowed,
};

use crate::{
    fwd::{EthIpv4, PACKET_HOST, PASS, execute, ingress_ifindex, pkt_type, tc_ptr},
    maps::{count, lookup_pod, lookup_route, nic_source_rule},
    nat,
};

#[classifier]
pub fn weft_uplink_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    count(Counter::UplinkIngressSeen, len);
    let Some(p) = tc_ptr::<EthIpv4>(&ctx, 0) else {
        count(Counter::PassNotIpv4, len);
        return PASS;
    };
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let (Ok(eth), Ok(ip)) = (
        EthFacts::parse(unsafe { &(*p).eth }),
        Ipv4Facts::parse(unsafe { &(*p).ip }),
    ) else {
        count(Counter::PassNotIpv4, len);
        return PASS;
    };
    if eth.ethertype != ETH_P_IP || pkt_type(&ctx) != PACKET_HOST {
        count(Counter::PassNotOurs, len);
        return PASS;
    }
    let ip = match nat::reverse(&ctx, &ip) {
        Ok(Some(translated)) => translated,
        Ok(None) => {
            // The source first: almost everything here has an external one.
            if !plain_source_allowed(nic_source_rule(ip.src), ingress_ifindex(&ctx))
                && (lookup_route(ip.dst).kind().is_some() || lookup_pod(ip.dst).ifindex != 0)
            {
                count(Counter::DropPlainSource, len);
                return TC_ACT_SHOT;
            }
            count(Counter::PassNotOurs, len);
            return PASS;
        }
        Err(()) => return TC_ACT_SHOT,
    };
    let facts = PacketFacts {
        ingress_ifindex: ingress_ifindex(&ctx),
        dst_mac: eth.dst,
        ttl: ip.ttl,
        dst: ip.dst,
    };
    let d = decide(Hook::Nic, &facts, lookup_pod(ip.dst), lookup_route);
    execute(&ctx, &d, &ip, eth.dst)
}
