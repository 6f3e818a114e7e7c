//! Forwarding helpers shared by the tc programs: bounds-checked header access,
//! the redirects, and carrying out a [`Decision`] on a packet that starts with
//! an Ethernet header followed by IPv4.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh,
    },
    helpers::{
        bpf_check_mtu, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
        bpf_skb_change_head,
    },
    programs::TcContext,
};
use aya_log_ebpf::debug;
use weft_common::{
    counters::Counter,
    ipip::{ENCAP_LEN, build_outer_header},
    packet::{ETH_HLEN, ETH_P_IP, IPV4_HLEN, Ipv4Facts, set_eth_addrs, write_eth},
    route::{Action, Decision},
    sources::{fits_mtu, gso_segment_len},
};

use crate::maps::count;

/// The verdict for a packet Weft leaves alone (`TC_ACT_UNSPEC`, which TCX
/// calls `TCX_NEXT`): the next program on the hook sees it, then the stack.
/// `TC_ACT_OK` would end the chain there, hiding the packet from whatever
/// else is attached after Weft (another CNI, a monitoring tool).
pub const PASS: i32 = TC_ACT_UNSPEC;

/// `AF_INET`, the family of an IPv4 next hop for `bpf_redirect_neigh`.
const AF_INET: u32 = 2;

/// `skb->pkt_type` of frames addressed to this host.
pub const PACKET_HOST: u32 = 0;

/// Source MAC of the Ethernet header pushed on WireGuard packets (locally
/// administered, "WEFT"); the kernel rewrites it when a neighbour is resolved.
pub const PSEUDO_MAC: [u8; 6] = [0x02, 0x57, 0x45, 0x46, 0x54, 0x00];

/// An Ethernet header followed by the fixed part of an IPv4 header.
#[repr(C)]
pub struct EthIpv4 {
    pub eth: [u8; ETH_HLEN],
    pub ip: [u8; IPV4_HLEN],
}

/// A pointer to a `T` at `off` if `[off, off + size_of::<T>())` lies in `[start, end)`.
#[inline(always)]
fn checked<T>(start: usize, end: usize, off: usize) -> Option<*mut T> {
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// A pointer to a `T` at `off` in the packet's linear data, checked against
/// `data_end`; the headers are pulled into the linear part first if needed.
/// Any helper that changes the packet invalidates it.
#[inline(always)]
pub fn tc_ptr<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    if let Some(p) = checked(ctx.data(), ctx.data_end(), off) {
        return Some(p);
    }
    ctx.pull_data((off + size_of::<T>()) as u32).ok()?;
    checked(ctx.data(), ctx.data_end(), off)
}

/// `skb->ingress_ifindex`: the device the packet entered.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program; reading a plain field.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

/// `skb->pkt_type` (`PACKET_HOST` = addressed to this host's MAC).
#[inline(always)]
pub fn pkt_type(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).pkt_type }
}

/// `skb->gso_size`: non-zero for a GSO/GRO super-packet.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).gso_size }
}

#[inline(always)]
fn redirect_peer(ifindex: u32) -> i32 {
    // SAFETY: helper without pointer arguments.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

#[inline(always)]
fn redirect(ifindex: u32) -> i32 {
    // SAFETY: helper without pointer arguments.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// `bpf_redirect_neigh` to `ifindex`, through `nexthop` or, without one, the
/// kernel's route lookup for the destination.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32, nexthop: Option<[u8; 4]>) -> i32 {
    match nexthop {
        Some(nh) => {
            // SAFETY: bpf_redir_neigh is plain data; all-zero is a valid value.
            let mut params: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            params.nh_family = AF_INET;
            params.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(nh);
            // SAFETY: params is a fully initialised stack struct of the size passed.
            unsafe {
                bpf_redirect_neigh(ifindex, &mut params, size_of::<bpf_redir_neigh>() as i32, 0)
                    as i32
            }
        }
        // SAFETY: a null params pointer with length 0 is the documented "no next hop" call.
        None => unsafe { bpf_redirect_neigh(ifindex, ptr::null_mut(), 0, 0) as i32 },
    }
}

/// Prepends an Ethernet header (zero destination, [`PSEUDO_MAC`] source,
/// IPv4) to a packet from an L3 device, which starts at the IP header.
#[inline(always)]
pub fn push_eth(ctx: &TcContext) -> Result<(), ()> {
    // SAFETY: the context pointer is valid; the helper checks lengths itself.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN as u32, 0) } != 0 {
        return Err(());
    }
    let eth = tc_ptr::<[u8; ETH_HLEN]>(ctx, 0).ok_or(())?;
    // SAFETY: bounds checked by tc_ptr; no other reference to these bytes exists.
    write_eth(unsafe { &mut *eth }, [0; 6], PSEUDO_MAC, ETH_P_IP);
    Ok(())
}

/// Decrements the TTL of the IPv4 header at `ETH_HLEN` (checksum updated incrementally).
#[inline(always)]
pub fn ttl_decrement(ctx: &TcContext) -> Result<(), ()> {
    let p = tc_ptr::<EthIpv4>(ctx, 0).ok_or(())?;
    // SAFETY: bounds checked by tc_ptr; no other reference to these bytes exists.
    weft_common::csum::decrement_ttl(unsafe { &mut (*p).ip });
    Ok(())
}

/// Inserts `outer` between the Ethernet header and the IPv4 header.
///
/// `bpf_skb_adjust_room(BPF_ADJ_ROOM_MAC, ENCAP_L3_IPV4)` marks the skb as
/// encapsulated, so GSO packets are segmented right. It needs the skb's
/// protocol to be IPv4 behind a MAC header; when the kernel refuses, a
/// non-GSO packet gets the room with `bpf_skb_change_head` instead (the header
/// is all a single packet needs). The second path is also what
/// BPF_PROG_TEST_RUN exercises for the WireGuard program, whose synthetic skb
/// cannot look like an L3 device's.
#[inline(always)]
pub fn encap_ipip(ctx: &TcContext, outer: &[u8; IPV4_HLEN]) -> Result<(), ()> {
    let grown = ctx
        .adjust_room(
            ENCAP_LEN as i32,
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64,
        )
        .is_ok();
    if !grown {
        if gso_size(ctx) != 0 {
            return Err(());
        }
        let eth = tc_ptr::<[u8; ETH_HLEN]>(ctx, 0).ok_or(())?;
        // SAFETY: bounds checked by tc_ptr; copied before the packet changes.
        let eth = unsafe { *eth };
        // SAFETY: the context pointer is valid; the helper checks lengths itself.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, ENCAP_LEN as u32, 0) } != 0 {
            return Err(());
        }
        let p = tc_ptr::<[u8; ETH_HLEN]>(ctx, 0).ok_or(())?;
        // SAFETY: bounds checked by tc_ptr (pointers re-derived after the change).
        unsafe { *p = eth };
    }
    let p = tc_ptr::<EthIpv4>(ctx, 0).ok_or(())?;
    // SAFETY: bounds checked by tc_ptr (pointers re-derived after the change).
    unsafe { (*p).ip = *outer };
    Ok(())
}

/// IP protocol numbers whose transport header length a GSO check needs.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The IPv4 length of what `ip` puts on the wire: its total length, or for
/// a GSO packet one segment's (IPv4 + transport header + `gso_size`).
/// `l3_off` is where the IPv4 header starts.
#[inline(always)]
fn wire_len(ctx: &TcContext, ip: &Ipv4Facts, l3_off: usize) -> u32 {
    let gso = gso_size(ctx);
    if gso == 0 {
        return ip.total_len as u32;
    }
    let ihl = ip.header_len as usize & 0x3c;
    let l4 = match ip.protocol {
        // TCP data offset, in 32-bit words, is the high nibble of byte 12.
        IPPROTO_TCP => match ctx.load::<u8>(l3_off + ihl + 12) {
            Ok(b) => ((b >> 4) as u32) * 4,
            Err(_) => 60, // cannot read it: assume the longest header
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    gso_segment_len(ihl as u32, l4, gso)
}

/// Whether forwarding `ip` as `d` would exceed the egress device's MTU
/// (`bpf_check_mtu`, with IPIP's 20 bytes for `NodeIpip`). Only the
/// forwarding redirects are checked (into WireGuard, out of the NIC), which
/// skip the kernel's own check; a device the helper cannot find is not
/// second-guessed (the redirect fails on its own).
#[inline(always)]
pub fn exceeds_mtu(ctx: &TcContext, d: &Decision, ip: &Ipv4Facts, l3_off: usize) -> bool {
    let encap = match d.action {
        Action::WireGuard | Action::Node => 0,
        Action::NodeIpip => ENCAP_LEN as u32,
        _ => return false,
    };
    let wire = wire_len(ctx, ip, l3_off);
    // The IPv4 length as input (`mtu_len`), so the device's header length
    // cancels out; the helper writes the device's MTU back.
    let mut mtu_len = wire;
    // SAFETY: the context pointer is valid; mtu_len is a live stack variable.
    let ret = unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut _,
            d.ifindex,
            &mut mtu_len,
            encap as i32,
            0,
        )
    };
    if ret < 0 {
        return false;
    }
    // A GSO packet always "fits" the helper (it is segmented later): its
    // segments are held against the MTU it reported.
    ret > 0 || !fits_mtu(wire, encap, mtu_len)
}

/// Carries out `d` on a packet that starts with Ethernet + IPv4 (`ip` are the
/// facts of that IPv4 header). `src_mac` is the source MAC written when
/// routing into a pod. A forwarding redirect the egress MTU does not allow
/// goes to the stack instead ([`exceeds_mtu`]). Returns the tc verdict.
#[inline(always)]
pub fn execute(ctx: &TcContext, d: &Decision, ip: &Ipv4Facts, src_mac: [u8; 6]) -> i32 {
    if exceeds_mtu(ctx, d, ip, ETH_HLEN) {
        count(Counter::PassMtu, ctx.len());
        return PASS;
    }
    execute_checked(ctx, d, ip, src_mac)
}

/// [`execute`] for a caller that has already checked [`exceeds_mtu`].
#[inline(always)]
pub fn execute_checked(ctx: &TcContext, d: &Decision, ip: &Ipv4Facts, src_mac: [u8; 6]) -> i32 {
    let len = ctx.len();
    match d.action {
        Action::Pass => {
            count(d.counter, len);
            PASS
        }
        Action::SwitchToPod => {
            count(d.counter, len);
            redirect_peer(d.ifindex)
        }
        Action::DeliverToPod => {
            let Some(p) = tc_ptr::<EthIpv4>(ctx, 0) else {
                count(Counter::Malformed, len);
                return PASS;
            };
            // SAFETY: bounds checked by tc_ptr; no other reference to these bytes exists.
            let h = unsafe { &mut *p };
            set_eth_addrs(&mut h.eth, d.mac, src_mac);
            weft_common::csum::decrement_ttl(&mut h.ip);
            count(d.counter, len);
            redirect_peer(d.ifindex)
        }
        Action::DeliverViaBridge => routed(ctx, d, len, |_| redirect_neigh(d.ifindex, None)),
        Action::WireGuard => routed(ctx, d, len, |_| redirect(d.ifindex)),
        Action::Node => routed(ctx, d, len, |_| redirect_neigh(d.ifindex, Some(d.nexthop))),
        Action::NodeIpip => {
            // SAFETY: helper without arguments.
            let id = unsafe { bpf_get_prandom_u32() } as u16;
            let outer = build_outer_header(ip, d.src, d.nexthop, id);
            routed(ctx, d, len, |ctx| {
                if encap_ipip(ctx, &outer).is_err() {
                    count(Counter::EncapFailed, len);
                    debug!(ctx, "weft: IPIP encapsulation to {:i} failed", d.nexthop);
                    return TC_ACT_SHOT;
                }
                // The kernel's route to the outer destination picks the
                // neighbour: the node itself, or the router between subnets.
                redirect_neigh(d.ifindex, None)
            })
        }
    }
}

/// TTL − 1, then `then` (which redirects), then count unless it dropped.
#[inline(always)]
fn routed(ctx: &TcContext, d: &Decision, len: u32, then: impl FnOnce(&TcContext) -> i32) -> i32 {
    if ttl_decrement(ctx).is_err() {
        count(Counter::Malformed, len);
        return PASS;
    }
    let verdict = then(ctx);
    if verdict != TC_ACT_SHOT {
        count(d.counter, len);
    }
    verdict
}
