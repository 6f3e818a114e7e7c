//! `weft_xdp_ipip`: XDP on the NIC. IPIP (IPv4 protocol 4) is dropped before
//! the stack sees it unless it passes [`weft_common::sources::ipip_verdict`]:
//! the outer source is a node of this location (`WEFT_IPIP_SENDERS`), the
//! outer destination this node's private IP, it arrived on the NIC the route
//! to that node points to, and the inner source is one that node may send
//! (`WEFT_SENDER_SOURCES`). Everything else passes; `weft_nic_ingress`
//! applies the same rule again (it sees what XDP cannot: outer headers with
//! options, and it runs where XDP is not attached).
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
    packet::{ETH_P_IP, EthFacts, IPV4_HLEN, Ipv4Facts},
    sources::ipip_verdict,
};

use crate::{
    fwd::EthIpv4,
    maps::{count, lookup_ipip_sender, sender_may_send},
};

/// Ethernet, an outer IPv4 header without options, and the inner one's fixed part.
#[repr(C)]
struct EthIpip {
    outer: EthIpv4,
    inner: [u8; IPV4_HLEN],
}

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
    if !ip.is_ipip() {
        count(Counter::XdpPass, len);
        return XDP_PASS;
    }
    // SAFETY: the context pointer is valid for the whole program; a plain field.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let inner_ok = || {
        // With outer options, or an inner header beyond the first buffer,
        // leave the inner check to tc.
        if ip.header_len as usize != IPV4_HLEN || start + size_of::<EthIpip>() > end {
            return true;
        }
        // SAFETY: bounds checked just above; read-only.
        let inner = unsafe { &(*(start as *const EthIpip)).inner };
        match Ipv4Facts::parse(inner) {
            Ok(i) => sender_may_send(ip.src, i.src),
            Err(_) => true, // malformed: tc counts it and leaves it to the stack
        }
    };
    let v = ipip_verdict(&ip, ingress, &lookup_ipip_sender(ip.src), inner_ok);
    count(v.xdp_counter(), len);
    if v.is_drop() {
        debug!(&ctx, "weft: dropped IPIP from {:i} to {:i}", ip.src, ip.dst);
        return XDP_DROP;
    }
    XDP_PASS
}
