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
        .ok_or(AutoMtuError::TooSmall {
            link: format!("the default route's interface {name}"),
            mtu,
        })?;
    Ok(wg)
}

/// The MTU the kernel uses towards `dst`: that of the route a packet to it
/// takes (its device's MTU, the route's own `mtu`, or a path MTU learned for
/// it), read from a UDP socket connected to it (`IP_MTU`, `IPV6_MTU`).
/// Nothing is sent.
pub fn path_mtu(dst: std::net::SocketAddr) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let any: std::net::SocketAddr = match dst {
        std::net::SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.connect(dst)?;
    let (level, name) = match dst {
        std::net::SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        std::net::SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a socket we own; mtu and len are live and of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(mtu as u32)
}

/// The WireGuard MTU that fits every path in `paths` (`(endpoint, path MTU)`
/// of the endpoints WireGuard sends to): the smallest less
/// [`WIREGUARD_OVERHEAD`]. `None` without paths.
pub fn mtu_for_paths(paths: &[(std::net::SocketAddr, u32)]) -> Option<Result<u32, AutoMtuError>> {
    let (to, mtu) = paths.iter().min_by_key(|(_, m)| *m)?;
    Some(
        mtu.checked_sub(WIREGUARD_OVERHEAD)
            .filter(|&m| m >= 1280)
            .ok_or(AutoMtuError::TooSmall {
                link: format!("the path to {to}"),
                mtu: *mtu,
            }),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AutoMtuError {
    #[error("no default route to take the MTU from: pass --mtu explicitly")]
    NoDefaultRoute,
    #[error("{link} has MTU {mtu}, too small for WireGuard (needs >= 1360)")]
    TooSmall { link: String, mtu: u32 },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("reading routes and links: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mtu_fits_the_narrowest_path() {
        let a: std::net::SocketAddr = "198.18.0.11:51820".parse().unwrap();
        let b: std::net::SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        assert!(mtu_for_paths(&[]).is_none(), "no path: fall back");
        // A 9001-byte VPC link whose internet path is 1500: the tunnel fits 1500.
        assert_eq!(mtu_for_paths(&[(a, 1500)]).unwrap().unwrap(), 1420);
        assert_eq!(
            mtu_for_paths(&[(a, 9001), (b, 1500)]).unwrap().unwrap(),
            1420
        );
        assert_eq!(mtu_for_paths(&[(a, 9001)]).unwrap().unwrap(), 8921);
        let e = mtu_for_paths(&[(a, 9001), (b, 1300)]).unwrap().unwrap_err();
        assert!(e.to_string().contains("[2001:db8::1]:51820"), "{e}");
    }

    #[test]
    fn path_mtu_of_loopback_is_los() {
        // Loopback exists in every namespace; IPv4 caps what it reports at 65535.
        let lo = path_mtu("127.0.0.1:9".parse().unwrap()).unwrap();
        let dev: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(lo, dev.min(65535));
    }

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
