//! Link, address and MTU handling over rtnetlink, each by difference.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// WireGuard's overhead over the underlying link: 20 (IPv4; 40 for IPv6)
/// + 8 (UDP) + 32 (WireGuard header and tag), rounded up as wg-quick does.
pub const WIREGUARD_OVERHEAD: u32 = 80;

pub use crate::netlink::{errno, link_by_index, link_by_name};

/// The `kind` of a link (`wireguard`, `tun`, `veth`…), if it reports one.
pub fn link_kind(m: &LinkMessage) -> Option<&InfoKind> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub fn link_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(x) => Some(*x),
        _ => None,
    })
}

pub fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Sets the MTU if it differs. Returns whether it changed.
pub async fn set_mtu(h: &Handle, index: u32, mtu: u32) -> Result<bool, rtnetlink::Error> {
    let cur = link_by_index(h, index).await?.as_ref().and_then(link_mtu);
    if cur == Some(mtu) {
        return Ok(false);
    }
    h.link()
        .change(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await?;
    Ok(true)
}

/// Sets the link up if it is not. Returns whether it changed.
pub async fn set_up(h: &Handle, index: u32) -> Result<bool, rtnetlink::Error> {
    let up = link_by_index(h, index)
        .await?
        .is_some_and(|m| m.header.flags.contains(LinkFlags::Up));
    if up {
        return Ok(false);
    }
    h.link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    Ok(true)
}

pub async fn delete_link(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

/// What [`set_addresses`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSummary {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    pub unchanged: usize,
}

fn address_of(m: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and equal to it otherwise.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNet::new(local.or(addr)?, m.header.prefix_len).ok()
}

fn is_ipv6_link_local(n: &IpNet) -> bool {
    matches!(n.addr(), IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// The pure address diff: (to add, to remove, unchanged count). IPv6
/// link-local addresses the kernel assigns are left alone unless desired.
pub fn diff_addresses(current: &[IpNet], desired: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>, usize) {
    let want: BTreeSet<IpNet> = desired.iter().copied().collect();
    let have: BTreeSet<IpNet> = current.iter().copied().collect();
    let add = want.difference(&have).copied().collect();
    let remove = have
        .difference(&want)
        .filter(|n| !is_ipv6_link_local(n))
        .copied()
        .collect();
    (add, remove, want.intersection(&have).count())
}

/// Makes the link's addresses exactly `desired` (each with its prefix
/// length), touching only the differences.
pub async fn set_addresses(
    h: &Handle,
    index: u32,
    desired: &[IpNet],
) -> Result<AddressSummary, rtnetlink::Error> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    let msgs: Vec<_> = msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .collect();
    let current: Vec<IpNet> = msgs.iter().filter_map(address_of).collect();
    let (add, remove, unchanged) = diff_addresses(&current, desired);
    for net in &remove {
        if let Some(m) = msgs.iter().find(|m| address_of(m).as_ref() == Some(net)) {
            match h.address().del(m.clone()).execute().await {
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                r => r?,
            }
        }
    }
    for net in &add {
        match h
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
        {
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            r => r?,
        }
    }
    Ok(AddressSummary {
        added: add,
        removed: remove,
        unchanged,
    })
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_priority(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// The MTU WireGuard should use: that of the interface holding the default
/// route (IPv4, else IPv6; the lowest metric wins) minus
/// [`WIREGUARD_OVERHEAD`]. Errors when there is no default route.
pub async fn auto_mtu(h: &Handle) -> Result<u32, AutoMtuError> {
    let mut best: Option<(u32, u32)> = None; // (priority, oif)
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let routes: Vec<RouteMessage> = h.route().get(msg).execute().try_collect().await?;
        for r in &routes {
            if r.header.destination_prefix_length != 0
                || crate::routes::table_of(r) != crate::routes::MAIN_TABLE
            {
                continue;
            }
            if let Some(oif) = route_oif(r) {
                let p = route_priority(r);
                if best.is_none_or(|(bp, _)| p < bp) {
                    best = Some((p, oif));
                }
            }
        }
        if best.is_some() {
            break;
        }
    }
    let (_, oif) = best.ok_or(AutoMtuError::NoDefaultRoute)?;
    let link = link_by_index(h, oif)
        .await?
        .ok_or(AutoMtuError::NoDefaultRoute)?;
    let mtu = link_mtu(&link).ok_or(AutoMtuError::NoDefaultRoute)?;
    let name = link_name(&link).unwrap_or("?").to_owned();
    let wg = mtu
        .checked_sub(WIREGUARD_OVERHEAD)
        .filter(|&m| m >= 1280)
        .ok_or(AutoMtuError::TooSmall { link: name, mtu })?;
    Ok(wg)
}

#[derive(Debug, thiserror::Error)]
pub enum AutoMtuError {
    #[error("no default route to take the MTU from: pass --mtu explicitly")]
    NoDefaultRoute,
    #[error(
        "the default route's interface {link} has MTU {mtu}, too small for WireGuard (needs >= 1360)"
    )]
    TooSmall { link: String, mtu: u32 },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("reading routes and links: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn address_diff_keeps_link_local_and_touches_only_differences() {
        let cur = [n("10.4.0.1/16"), n("10.4.9.9/16"), n("fe80::1/64")];
        let want = [n("10.4.0.1/16"), n("fd00::1/64")];
        let (add, remove, unchanged) = diff_addresses(&cur, &want);
        assert_eq!(add, vec![n("fd00::1/64")]);
        assert_eq!(remove, vec![n("10.4.9.9/16")]);
        assert_eq!(unchanged, 1);
        // The same address with another prefix length is a different address.
        let (add, remove, _) = diff_addresses(&[n("10.4.0.1/24")], &[n("10.4.0.1/16")]);
        assert_eq!(
            (add, remove),
            (vec![n("10.4.0.1/16")], vec![n("10.4.0.1/24")])
        );
    }
}
