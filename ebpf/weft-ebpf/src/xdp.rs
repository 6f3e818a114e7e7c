//! `weft_xdp_ipip`: XDP on the NIC. IPIP (IPv4 protocol 4) whose outer source
//! is not in `WEFT_IPIP_PEERS` is dropped before the stack sees it; everything
//! else passes. The rule is [`weft_common::ipip::xdp_verdict`].
//!
//! Declared `frags` (multi-buffer aware): it reads only the headers in the
//! first buffer, and a non-frags program would make the driver refuse or drop
//! frames larger than a page (veth with GRO/TSO, jumbo MTUs).

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_get_buff_len,
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    ipip::{XdpVerdict, xdp_verdict},
    packet::{ETH_P_IP, EthFacts, Ipv4Facts},
};

use crate::{
    fwd::EthIpv4,
    maps::{count, is_ipip_peer},
};

#[xdp(frags)]
pub fn weft_xdp_ipip(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // SAFETY: the context pointer is valid for the whole program.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as u32;
    if start + size_of::<EthIpv4>() > end {
        count(Counter::XdpPass, len);
        return XDP_PASS;
    }
    // SAFETY: bounds checked just above; read-only.
    let h = unsafe { &*(start as *const EthIpv4) };
    if !matches!(EthFacts::parse(&h.eth), Ok(e) if e.ethertype == ETH_P_IP) {
        count(Counter::XdpPass, len);
        return XDP_PASS;
    }
    let Ok(ip) = Ipv4Facts::parse(&h.ip) else {
        count(Counter::XdpPass, len);
        return XDP_PASS;
    };
    if xdp_verdict(&ip, is_ipip_peer) == XdpVerdict::DropUnknownIpipSource {
        count(Counter::XdpDropIpipUnknownSource, len);
        debug!(&ctx, "weft: dropped IPIP from {:i}", ip.src);
        return XDP_DROP;
    }
    count(Counter::XdpPass, len);
    XDP_PASS
}
