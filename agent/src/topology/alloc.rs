//! Stable WireGuard addresses for segments.
//!
//! Kilo numbers segments 1, 2, 3... in sort order, so adding a location that
//! sorts between two others renumbers every later one (and every WireGuard
//! peer's allowed IPs change). Here each segment gets an address from its
//! stable identity instead, computed alike by every node without
//! coordination:
//!
//! 1. A segment keeps the address its leader published (`wireguard-ip`) when
//!    that address is a usable host of the subnet; failing that, the first
//!    (by name) of its other nodes' published addresses that is still free.
//!    This makes numbering survive hash collisions and leader changes.
//! 2. The others get their *home* slot, a hash of the identity into the
//!    subnet, or the next free slot after it (linear probing), in identity
//!    order.
//!
//! Two segments claiming one address: the one whose home it is wins, else the
//! first in identity order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// What the allocator knows of one segment.
#[derive(Debug, Clone)]
pub struct Request {
    /// The segment's stable identity (`location:NAME` or `node:NAME`).
    pub identity: String,
    /// Addresses published by its nodes: the leader's first, then the others' by name.
    pub claims: Vec<IpAddr>,
}

/// The subnet has fewer usable addresses than there are segments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WireGuard subnet {subnet} has {capacity} usable addresses for {segments} segments")]
pub struct Exhausted {
    pub subnet: IpNet,
    pub capacity: u128,
    pub segments: usize,
}

/// FNV-1a, 64 bits: fixed for ever, so that every version of every node
/// agrees (std's hashers promise no such thing).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Usable host offsets are 1..=capacity: never the network address, nor the
/// IPv4 broadcast address.
fn capacity(subnet: IpNet) -> u128 {
    let host_bits = u32::from(subnet.max_prefix_len() - subnet.prefix_len());
    let total_minus_one = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    match subnet {
        IpNet::V4(_) if host_bits >= 2 => total_minus_one - 1,
        _ => total_minus_one,
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn address(subnet: IpNet, offset: u128) -> IpAddr {
    let base = to_u128(subnet.network());
    match subnet {
        // The offset is within the subnet, so this stays within 32 bits.
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(
            u32::try_from(base + offset).unwrap_or(u32::MAX),
        )),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(base.wrapping_add(offset))),
    }
}

/// The offset of `ip` in the subnet when it is a usable host there.
fn offset(subnet: IpNet, ip: IpAddr, cap: u128) -> Option<u128> {
    if !subnet.contains(&ip) {
        return None;
    }
    let off = to_u128(ip) - to_u128(subnet.network());
    (1..=cap).contains(&off).then_some(off)
}

/// The home slot of an identity.
pub fn home(subnet: IpNet, identity: &str) -> IpAddr {
    let cap = capacity(subnet);
    address(subnet, 1 + u128::from(fnv1a(identity.as_bytes())) % cap)
}

/// Allocates one address per request, in request order. Requests must be
/// sorted by identity and identities unique.
pub fn allocate(subnet: IpNet, requests: &[Request]) -> Result<Vec<IpAddr>, Exhausted> {
    let subnet = subnet.trunc();
    let cap = capacity(subnet);
    if requests.len() as u128 > cap {
        return Err(Exhausted {
            subnet,
            capacity: cap,
            segments: requests.len(),
        });
    }
    let homes: Vec<u128> = requests
        .iter()
        .map(|r| 1 + u128::from(fnv1a(r.identity.as_bytes())) % cap)
        .collect();
    let mut assigned: Vec<Option<u128>> = vec![None; requests.len()];
    let mut taken: BTreeSet<u128> = BTreeSet::new();

    // Claims, rank by rank: every segment's first claim, then its second...
    let max_claims = requests.iter().map(|r| r.claims.len()).max().unwrap_or(0);
    for rank in 0..max_claims {
        let mut wanted: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            if assigned[i].is_some() {
                continue;
            }
            if let Some(off) = r.claims.get(rank).and_then(|ip| offset(subnet, *ip, cap))
                && !taken.contains(&off)
            {
                wanted.entry(off).or_default().push(i);
            }
        }
        for (off, claimants) in wanted {
            let winner = claimants
                .iter()
                .copied()
                .find(|&i| homes[i] == off)
                .unwrap_or(claimants[0]);
            assigned[winner] = Some(off);
            taken.insert(off);
        }
    }
    // Everyone else: home slot, or the next free one.
    for i in 0..requests.len() {
        if assigned[i].is_some() {
            continue;
        }
        let mut off = homes[i];
        while taken.contains(&off) {
            off = if off >= cap { 1 } else { off + 1 };
        }
        assigned[i] = Some(off);
        taken.insert(off);
    }
    Ok(assigned
        .into_iter()
        .map(|o| address(subnet, o.unwrap_or(1)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, claims: &[&str]) -> Request {
        Request {
            identity: id.into(),
            claims: claims.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn capacity_excludes_network_and_broadcast() {
        assert_eq!(capacity("10.4.0.0/16".parse().unwrap()), 65534);
        assert_eq!(capacity("10.4.0.0/30".parse().unwrap()), 2);
        assert_eq!(capacity("10.4.0.0/31".parse().unwrap()), 1);
        assert_eq!(capacity("fd00::/120".parse().unwrap()), 255);
        assert_eq!(capacity("::/0".parse().unwrap()), u128::MAX);
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn every_address_is_a_usable_host_and_unique() {
        let subnet: IpNet = "10.4.0.0/29".parse().unwrap();
        let reqs: Vec<Request> = (0..6).map(|i| req(&format!("location:{i}"), &[])).collect();
        let got = allocate(subnet, &reqs).unwrap();
        let set: BTreeSet<_> = got.iter().collect();
        assert_eq!(set.len(), 6);
        for ip in &got {
            assert!(subnet.contains(ip) && *ip != subnet.network() && *ip != subnet.broadcast());
        }
        let seven: Vec<Request> = (0..7).map(|i| req(&format!("location:{i}"), &[])).collect();
        assert_eq!(allocate(subnet, &seven).unwrap_err().capacity, 6);
    }

    #[test]
    fn claims_are_honoured_and_conflicts_go_to_the_home_owner() {
        let subnet: IpNet = "10.4.0.0/24".parse().unwrap();
        let home_b = home(subnet, "location:b");
        let a = req("location:a", &[&home_b.to_string()]);
        let b = req("location:b", &[&home_b.to_string()]);
        let got = allocate(subnet, &[a.clone(), b]).unwrap();
        assert_eq!(got[1], home_b);
        assert_ne!(got[0], home_b);
        // Alone, a keeps its claim even though it is not its home.
        assert_eq!(allocate(subnet, &[a]).unwrap()[0], home_b);
        // Claims outside the subnet, or the network address, are ignored.
        let c = req("location:c", &["10.9.0.1", "10.4.0.0"]);
        assert_eq!(
            allocate(subnet, &[c]).unwrap()[0],
            home(subnet, "location:c")
        );
    }

    #[test]
    fn ipv6_subnets_work() {
        let subnet: IpNet = "fd00:4::/64".parse().unwrap();
        let got = allocate(subnet, &[req("location:a", &[]), req("node:x", &[])]).unwrap();
        assert!(got.iter().all(|ip| subnet.contains(ip)));
        assert_ne!(got[0], got[1]);
    }
}
