//! `weft_nic_egress`: tc egress of the node's NIC.
//!
//! Pod traffic to the location's other nodes is encapsulated where it is
//! forwarded ([`crate::fwd::execute`], `NodeIpip`). What the kernel sends out
//! of the NIC itself does not pass there: the host's own traffic to a
//! remote pod (its kernel route points at the NIC), and pod traffic the
//! programs handed to the stack. Without this program that traffic would
//! leave unencapsulated, so `--encapsulate always|crosssubnet` would not
//! hold for it, and a router between two subnets, which knows no pod CIDR,
//! would drop it.
//!
//! - Not IPv4, or already IPIP (the programs' own, or the kernel's):
//!   [`PASS`].
//! - A destination whose route is `NodeIpip` out of this NIC: the outer
//!   header of that route is inserted ([`crate::fwd::encap_ipip`]) and the
//!   packet goes on. Its Ethernet header stays: the kernel resolved it for
//!   the route's next hop, the node itself on one subnet or the router that
//!   leads to it, which is where the outer destination is reached too.
//! - Anything else: [`PASS`].

use aya_ebpf::{
    bindings::TC_ACT_SHOT, helpers::bpf_get_prandom_u32, macros::classifier, programs::TcContext,
};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    ipip::build_outer_header,
    maps::RouteAction,
    packet::{ETH_P_IP, EthFacts, Ipv4Facts},
};

use crate::{
    fwd::{EthIpv4, PASS, encap_ipip, tc_ptr},
    maps::{count, lookup_route},
};

#[classifier]
pub fn weft_nic_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    count(Counter::NicEgressSeen, len);
    let Some(p) = tc_ptr::<EthIpv4>(&ctx, 0) else {
        return PASS;
    };
    // SAFETY: bounds checked by tc_ptr; read-only copy of the header fields.
    let (eth, ip) = unsafe { (EthFacts::parse(&(*p).eth), Ipv4Facts::parse(&(*p).ip)) };
    if !matches!(eth, Ok(e) if e.ethertype == ETH_P_IP) {
        return PASS;
    }
    let Ok(ip) = ip else {
        return PASS;
    };
    if ip.is_ipip() {
        return PASS;
    }
    let r = lookup_route(ip.dst);
    // SAFETY: the context pointer is valid for the whole program; reading a plain field.
    let egress = unsafe { (*ctx.skb.skb).ifindex };
    if r.kind() != Some(RouteAction::NodeIpip) || r.ifindex != egress {
        return PASS;
    }
    // SAFETY: helper without arguments.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    let outer = build_outer_header(&ip, r.src, r.nexthop, id);
    if encap_ipip(&ctx, &outer).is_err() {
        // Sent bare it would reach no pod behind a router, or bypass the
        // location's encapsulation policy: dropped, counted.
        count(Counter::EncapFailed, len);
        debug!(
            &ctx,
            "weft: IPIP encapsulation on egress to {:i} failed", r.nexthop
        );
        return TC_ACT_SHOT;
    }
    count(Counter::HostIpipEncap, len);
    PASS
}
