//! Services: pod traffic to a service CIDR goes to the stack, where
//! kube-proxy DNATs it, and the replies go back through the stack, where
//! conntrack translates them back ([`weft_common::svc`] has the why and the
//! rules; this is the map access).
//!
//! [`record_client`] runs on `weft_pod_ingress` for a packet to a service
//! CIDR; [`is_client_reply`] runs wherever a packet would be delivered into
//! a local pod without the stack (pod veth, NIC, WireGuard device), except
//! after Weft's own masquerade translated it back (those flows are ours).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use weft_common::{
    nat::IPPROTO_TCP,
    packet::Ipv4Facts,
    svc::{ClientKey, has_ports, is_fresh, update},
};

use crate::maps::{WEFT_SERVICE_CIDRS, WEFT_SERVICE_CLIENTS, in_prefixes};

/// Whether `dst` is in a service CIDR.
#[inline(always)]
pub fn is_service(dst: [u8; 4]) -> bool {
    in_prefixes(&WEFT_SERVICE_CIDRS, dst)
}

/// The (source, destination) ports of the TCP/UDP header behind the IPv4
/// header at `l3`, host order; `None` without one.
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4Facts, l3: usize) -> Option<(u16, u16)> {
    if !has_ports(ip) {
        return None;
    }
    // IHL is 20..=60 (checked by the parser); the mask keeps the verifier's bound.
    let p = ctx
        .load::<[u8; 4]>(l3 + (ip.header_len as usize & 0x3c))
        .ok()?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// Records (or refreshes) the sender of a packet to a service: its replies
/// will be left to the kernel. `ip` are the facts of the IPv4 header at `l3`.
#[inline(always)]
pub fn record_client(ctx: &TcContext, ip: &Ipv4Facts, l3: usize) {
    let Some((sport, _)) = ports(ctx, ip, l3) else {
        return;
    };
    let flags = if ip.protocol == IPPROTO_TCP {
        let off = l3 + (ip.header_len as usize & 0x3c) + 13;
        ctx.load::<u8>(off).unwrap_or(0)
    } else {
        0
    };
    let key = ClientKey::new(ip.protocol, ip.src, sport);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value pointer from a successful lookup, read once (a
    // racing write can at worst make this write redundant).
    let cur = WEFT_SERVICE_CLIENTS
        .get_ptr(key)
        .map(|e| unsafe { e.read() });
    if let Some(e) = update(cur, flags, now) {
        // A full LRU evicts its oldest record; an error is no worse than no record.
        let _ = WEFT_SERVICE_CLIENTS.insert(key, e, 0);
    }
}

/// Whether the packet (IPv4 header at `l3`) is addressed to a socket that
/// recently talked to a service: the kernel must see it to undo the DNAT.
#[inline(always)]
pub fn is_client_reply(ctx: &TcContext, ip: &Ipv4Facts, l3: usize) -> bool {
    let Some((_, dport)) = ports(ctx, ip, l3) else {
        return false;
    };
    let key = ClientKey::new(ip.protocol, ip.dst, dport);
    let Some(e) = WEFT_SERVICE_CLIENTS.get_ptr(key) else {
        return false;
    };
    // SAFETY: a map value pointer from a successful lookup, read once.
    let e = unsafe { e.read() };
    // SAFETY: helper without arguments.
    is_fresh(&e, ip.protocol, unsafe { bpf_ktime_get_ns() })
}
