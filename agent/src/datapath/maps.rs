//! Writing the agent-owned maps by difference: the current contents are read
//! back from the kernel (they survive agent restarts in their pins), compared
//! with the desired contents, and only the entries that differ are written.

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use weft_common::maps::{IPIP_PEER, PodEndpoint, Route};

/// What one map sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub inserted: u64,
    pub updated: u64,
    pub removed: u64,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.inserted + self.updated + self.removed
    }
}

/// The entries to insert or overwrite, and the keys to remove, to turn
/// `current` into `desired`. Unchanged entries appear in neither.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V, bool)>, Vec<K>) {
    let upserts = desired
        .iter()
        .filter_map(|(k, v)| match current.get(k) {
            Some(cur) if cur == v => None,
            Some(_) => Some((k.clone(), v.clone(), true)),
            None => Some((k.clone(), v.clone(), false)),
        })
        .collect();
    let removals = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .cloned()
        .collect();
    (upserts, removals)
}

/// Key of `WEFT_ROUTES`: (prefix length, network address).
pub type RouteKey = (u32, [u8; 4]);

pub fn route_key(net: &Ipv4Net) -> RouteKey {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// Adds the host (/32) entries that pods' answers to traffic the nodes
/// themselves originate need, where the kernel has only a connected route
/// (which the datapath cannot see, and following which would take kernel
/// forwarding):
///
/// - every node this one routes pods to directly (the next hop of a node
///   route: a node of this location) is reached the way its pods are, so a
///   pod answers that node's private IP, and a leader hands it the answers
///   from other locations;
/// - on a leader, `wireguard_ips` (the other segments' WireGuard IPs, the
///   source of what their leaders originate) go into WireGuard (`wg_ifindex`).
///
/// Entries the topology already has win.
pub fn add_host_routes(
    want: &mut BTreeMap<RouteKey, Route>,
    wireguard_ips: &[std::net::Ipv4Addr],
    wg_ifindex: u32,
) {
    use weft_common::maps::RouteAction;
    let via_nodes: Vec<Route> = want
        .values()
        .filter(|r| matches!(r.kind(), Some(RouteAction::Node | RouteAction::NodeIpip)))
        .copied()
        .collect();
    for r in via_nodes {
        want.entry((32, r.nexthop)).or_insert(r);
    }
    for ip in wireguard_ips {
        want.entry((32, ip.octets()))
            .or_insert(Route::wireguard(wg_ifindex));
    }
}

/// Makes `WEFT_ROUTES` hold exactly `desired`.
pub fn sync_routes(map: &mut Map, desired: &BTreeMap<RouteKey, Route>) -> Result<Writes> {
    let mut trie: LpmTrie<&mut MapData, [u8; 4], Route> = LpmTrie::try_from(map)?;
    let mut current = BTreeMap::new();
    for item in trie.iter() {
        let (k, v) = item.context("reading WEFT_ROUTES")?;
        current.insert((k.prefix_len(), k.data()), v);
    }
    let (upserts, removals) = diff(&current, desired);
    let mut w = Writes::default();
    for ((len, addr), route, existed) in upserts {
        trie.insert(&Key::new(len, addr), route, 0)
            .with_context(|| format!("writing route {}/{len}", std::net::Ipv4Addr::from(addr)))?;
        if existed {
            w.updated += 1
        } else {
            w.inserted += 1
        }
    }
    for (len, addr) in removals {
        trie.remove(&Key::new(len, addr))
            .with_context(|| format!("removing route {}/{len}", std::net::Ipv4Addr::from(addr)))?;
        w.removed += 1;
    }
    Ok(w)
}

/// Makes `WEFT_IPIP_PEERS` hold exactly `desired` (the private IPs of this location's nodes).
pub fn sync_ipip_peers(map: &mut Map, desired: &[std::net::Ipv4Addr]) -> Result<Writes> {
    let mut hash: HashMap<&mut MapData, [u8; 4], u32> = HashMap::try_from(map)?;
    let mut current = BTreeMap::new();
    for item in hash.iter() {
        let (k, v) = item.context("reading WEFT_IPIP_PEERS")?;
        current.insert(k, v);
    }
    let desired: BTreeMap<[u8; 4], u32> =
        desired.iter().map(|ip| (ip.octets(), IPIP_PEER)).collect();
    let (upserts, removals) = diff(&current, &desired);
    let mut w = Writes::default();
    for (k, v, existed) in upserts {
        hash.insert(k, v, 0)
            .with_context(|| format!("writing IPIP peer {}", std::net::Ipv4Addr::from(k)))?;
        if existed {
            w.updated += 1
        } else {
            w.inserted += 1
        }
    }
    for k in removals {
        hash.remove(&k)
            .with_context(|| format!("removing IPIP peer {}", std::net::Ipv4Addr::from(k)))?;
        w.removed += 1;
    }
    Ok(w)
}

/// Makes `WEFT_PODS` hold exactly `desired` (the pods' addresses from their
/// CNI records). Entries the plugin wrote meanwhile are in `desired` too
/// once their record is read; the next sync settles any race.
pub fn sync_pods(map: &mut Map, desired: &BTreeMap<[u8; 4], PodEndpoint>) -> Result<Writes> {
    let mut hash: HashMap<&mut MapData, [u8; 4], PodEndpoint> = HashMap::try_from(map)?;
    let mut current = BTreeMap::new();
    for item in hash.iter() {
        let (k, v) = item.context("reading WEFT_PODS")?;
        current.insert(k, v);
    }
    let (upserts, removals) = diff(&current, desired);
    let mut w = Writes::default();
    for (k, v, existed) in upserts {
        hash.insert(k, v, 0)
            .with_context(|| format!("writing pod {} (map full?)", std::net::Ipv4Addr::from(k)))?;
        if existed {
            w.updated += 1
        } else {
            w.inserted += 1
        }
    }
    for k in removals {
        match hash.remove(&k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => w.removed += 1,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing pod {}", std::net::Ipv4Addr::from(k)));
            }
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_writes_only_differences() {
        let cur: BTreeMap<u8, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let want: BTreeMap<u8, &str> = [(1, "a"), (2, "B"), (4, "d")].into();
        let (up, rm) = diff(&cur, &want);
        assert_eq!(up, vec![(2, "B", true), (4, "d", false)]);
        assert_eq!(rm, vec![3]);
        let (up, rm) = diff(&want, &want);
        assert!(up.is_empty() && rm.is_empty());
    }

    #[test]
    fn host_routes_for_answers_to_nodes() {
        let (nic, wg) = (2, 7);
        let mut want: BTreeMap<RouteKey, Route> = [
            ((24, [10, 42, 0, 0]), Route::local(3)),
            (
                (24, [10, 42, 1, 0]),
                Route::node_ipip(nic, [192, 168, 1, 11], [192, 168, 1, 10]),
            ),
            ((24, [10, 42, 5, 0]), Route::node(nic, [192, 168, 1, 12])),
            ((24, [10, 42, 2, 0]), Route::wireguard(wg)),
            // The topology's own entry for a next hop wins.
            ((32, [192, 168, 1, 12]), Route::wireguard(wg)),
        ]
        .into();
        let before = want.clone();
        add_host_routes(&mut want, &[[10, 4, 0, 9].into()], wg);
        let added: Vec<_> = want
            .iter()
            .filter(|(k, _)| !before.contains_key(*k))
            .collect();
        assert_eq!(
            added,
            vec![
                (&(32, [10, 4, 0, 9]), &Route::wireguard(wg)),
                (
                    &(32, [192, 168, 1, 11]),
                    &Route::node_ipip(nic, [192, 168, 1, 11], [192, 168, 1, 10])
                ),
            ]
        );
        assert_eq!(want[&(32, [192, 168, 1, 12])], Route::wireguard(wg));
    }

    #[test]
    fn route_keys_are_network_addresses() {
        assert_eq!(
            route_key(&"10.42.1.7/24".parse().unwrap()),
            (24, [10, 42, 1, 0])
        );
    }
}
