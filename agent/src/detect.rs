//! What the node is: its addresses, which is private, which is public, and
//! the interface of its default route. Read from the kernel with
//! `getifaddrs(3)` and `/proc/net/route`; the choice is a pure function.

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net};
use std::net::Ipv4Addr;

/// One IPv4 address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub ifname: String,
    pub net: Ipv4Net,
}

/// Every IPv4 address of every interface that is up, in kernel order.
pub fn addresses() -> Result<Vec<IfAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list and writes its head; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || ifa.ifa_netmask.is_null()
            || ifa.ifa_flags & libc::IFF_UP as u32 == 0
        {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        // SAFETY: family is AF_INET, so both are sockaddr_in.
        let (addr, mask) = unsafe {
            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            (
                u32::from_be(a.sin_addr.s_addr),
                u32::from_be(m.sin_addr.s_addr),
            )
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let prefix = mask.leading_ones() as u8;
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(addr), prefix) {
            out.push(IfAddr { ifname, net });
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The MTU of interface `ifname` (`/sys/class/net/<ifname>/mtu`), if it exists.
pub fn link_mtu(ifname: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The interface of the IPv4 default route, if any (`/proc/net/route`).
pub fn default_route_interface() -> Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    Ok(parse_default_route(&table))
}

fn parse_default_route(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// RFC 1918 and RFC 6598 (carrier-grade NAT) space: addresses that are not
/// reachable from other networks.
pub fn is_private(ip: Ipv4Addr) -> bool {
    ip.is_private() || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
}

/// What the agent found on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// The private address (and its subnet) the location's nodes reach this node on.
    pub internal: Option<Ipv4Net>,
    /// A public address, if the node has one.
    pub public: Option<Ipv4Addr>,
}

/// Chooses the internal and public addresses.
///
/// `exclude` names interfaces that never count (the pod bridge and its
/// ports, the WireGuard device): a node's pod gateway address is private but
/// is not how other nodes reach it. The internal address is the first
/// private one inside `internal_cidrs` (when given), preferring the default
/// route's interface; the public one is the first global non-private one.
pub fn choose(
    addrs: &[IfAddr],
    default_if: Option<&str>,
    exclude: &[String],
    internal_cidrs: &[IpNet],
) -> Detected {
    let usable: Vec<&IfAddr> = addrs
        .iter()
        .filter(|a| !exclude.iter().any(|e| e == &a.ifname))
        .filter(|a| !a.net.addr().is_loopback() && !a.net.addr().is_link_local())
        .collect();
    let allowed = |a: &IfAddr| {
        if internal_cidrs.is_empty() {
            is_private(a.net.addr())
        } else {
            internal_cidrs
                .iter()
                .any(|c| c.contains(&std::net::IpAddr::V4(a.net.addr())))
        }
    };
    let on_default = |a: &&&IfAddr| Some(a.ifname.as_str()) == default_if;
    let internal = usable
        .iter()
        .filter(on_default)
        .chain(usable.iter())
        .find(|a| allowed(a))
        .map(|a| a.net);
    let public = usable
        .iter()
        .filter(on_default)
        .chain(usable.iter())
        .find(|a| !is_private(a.net.addr()))
        .map(|a| a.net.addr());
    Detected { internal, public }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ifname: &str, net: &str) -> IfAddr {
        IfAddr {
            ifname: ifname.into(),
            net: net.parse().unwrap(),
        }
    }

    #[test]
    fn default_route_parsed() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth1\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_route(t).as_deref(), Some("eth1"));
        assert_eq!(parse_default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn choices() {
        let lan = a("eth0", "192.168.1.10/24");
        let inet = a("eth1", "198.18.0.10/24");
        let pods = a("cni0", "10.42.0.1/24");
        let lo = a("lo", "127.0.0.1/8");
        let br = vec!["cni0".to_string()];
        struct Case {
            name: &'static str,
            addrs: Vec<IfAddr>,
            default_if: Option<&'static str>,
            cidrs: Vec<&'static str>,
            internal: Option<&'static str>,
            public: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "private NIC and public NIC with the default route: pod bridge ignored",
                addrs: vec![lo.clone(), pods.clone(), lan.clone(), inet.clone()],
                default_if: Some("eth1"),
                cidrs: vec![],
                internal: Some("192.168.1.10/24"),
                public: Some("198.18.0.10"),
            },
            Case {
                name: "default route on the private NIC wins",
                addrs: vec![a("eth1", "172.16.0.5/16"), lan.clone()],
                default_if: Some("eth0"),
                cidrs: vec![],
                internal: Some("192.168.1.10/24"),
                public: None,
            },
            Case {
                name: "internal CIDR restricts the choice",
                addrs: vec![a("eth1", "172.16.0.5/16"), lan.clone()],
                default_if: Some("eth0"),
                cidrs: vec!["172.16.0.0/12"],
                internal: Some("172.16.0.5/16"),
                public: None,
            },
            Case {
                name: "only a public address: no private IP",
                addrs: vec![inet.clone(), pods.clone()],
                default_if: Some("eth1"),
                cidrs: vec![],
                internal: None,
                public: Some("198.18.0.10"),
            },
        ];
        for c in cases {
            let cidrs: Vec<IpNet> = c.cidrs.iter().map(|s| s.parse().unwrap()).collect();
            let d = choose(&c.addrs, c.default_if, &br, &cidrs);
            assert_eq!(
                d.internal.map(|n| n.to_string()).as_deref(),
                c.internal,
                "{}",
                c.name
            );
            assert_eq!(
                d.public.map(|n| n.to_string()).as_deref(),
                c.public,
                "{}",
                c.name
            );
        }
    }
}
