//! Writing the agent-owned maps by difference: the current contents are read
//! back from the kernel (they survive agent restarts in their pins), compared
//! with the desired contents, and only the entries that differ are written.

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::IpAddr;
use weft_common::maps::{
    ALLOWED, IpipSender, PodEndpoint, Route, SENDER_SOURCE_KEY_LEN, sender_source_data,
};
use weft_common::sources::FROM_NOWHERE;

use crate::topology::Sender;

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
    sync_lpm(map, weft_common::maps::ROUTES, desired)
}

/// Key of `WEFT_SENDER_SOURCES`: (prefix length 32 + source prefix length,
/// sender ++ source network).
pub type SenderSourceKey = (u32, [u8; SENDER_SOURCE_KEY_LEN]);

/// The contents of the three maps that say who may send what into this
/// node without WireGuard (see `weft_common::sources`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMaps {
    /// `WEFT_IPIP_SENDERS`.
    pub senders: BTreeMap<[u8; 4], IpipSender>,
    /// `WEFT_SENDER_SOURCES`.
    pub sender_sources: BTreeMap<SenderSourceKey, u32>,
    /// `WEFT_NIC_SOURCES`.
    pub nic_sources: BTreeMap<RouteKey, u32>,
}

/// Translates the topology's senders and cluster ranges into [`SourceMaps`]:
/// every sender on `nic_ifindex` with this node's private IP `local` as the
/// outer destination; every cluster range from nowhere, then what some
/// sender may send from the NIC (a `/0` stays out of `WEFT_NIC_SOURCES`).
/// Without a NIC or a private IPv4 address nobody sends over the LAN.
/// IPv6 entries are left out (the datapath is IPv4).
pub fn source_maps(
    senders: &[Sender],
    cluster_sources: &[ipnet::IpNet],
    nic_ifindex: Option<u32>,
    local: Option<std::net::Ipv4Addr>,
) -> SourceMaps {
    let v4 = |n: &ipnet::IpNet| match n {
        ipnet::IpNet::V4(n) => Some(n.trunc()),
        ipnet::IpNet::V6(_) => None,
    };
    let mut m = SourceMaps::default();
    for c in cluster_sources.iter().filter_map(v4) {
        if c.prefix_len() != 0 {
            m.nic_sources.insert(route_key(&c), FROM_NOWHERE);
        }
    }
    let (Some(nic), Some(local)) = (nic_ifindex, local) else {
        return m;
    };
    for s in senders {
        let IpAddr::V4(ip) = s.ip else { continue };
        m.senders.insert(
            ip.octets(),
            IpipSender {
                ifindex: nic,
                local: local.octets(),
            },
        );
        for c in s.sources.iter().filter_map(v4) {
            let (len, net) = route_key(&c);
            m.sender_sources
                .insert((32 + len, sender_source_data(ip.octets(), net)), ALLOWED);
            if len != 0 {
                m.nic_sources.insert((len, net), nic);
            }
        }
    }
    m
}

/// A map that cannot hold what this node needs. Nothing is written to it:
/// a partial sync would send some destinations the new way and others the
/// old way (or nowhere), with no sign of which.
#[derive(Debug, thiserror::Error)]
#[error(
    "{map} holds at most {capacity} entries but this node's topology needs {needed}: \
     left as it was (the cluster has outgrown the datapath's maps)"
)]
pub struct MapFull {
    pub map: String,
    pub capacity: u32,
    pub needed: usize,
}

/// How many entries `map` can hold (the kernel's `max_entries`).
pub fn capacity(map: &Map) -> Result<u32> {
    let data = match map {
        Map::HashMap(d) | Map::LpmTrie(d) | Map::LruHashMap(d) => d,
        _ => anyhow::bail!("not a hash map or an LPM trie"),
    };
    Ok(data.info().context("reading the map's info")?.max_entries())
}

/// An agent-owned map seen as a set of entries: the one place that reads
/// it back, removes what is no longer wanted and writes what differs.
trait Table {
    type K: Ord + Clone;
    type V: PartialEq + Clone;
    /// The key as errors name it.
    fn show(k: &Self::K) -> String;
    fn entries(&self) -> Result<BTreeMap<Self::K, Self::V>, aya::maps::MapError>;
    fn put(&mut self, k: &Self::K, v: &Self::V) -> Result<(), aya::maps::MapError>;
    fn delete(&mut self, k: &Self::K) -> Result<(), aya::maps::MapError>;
}

/// How a map key reads in an error: the addresses it holds.
pub trait ShowKey {
    fn show(&self) -> String;
    /// As an LPM key of prefix length `len`.
    fn show_prefix(&self, len: u32) -> String {
        format!("{}/{len}", self.show())
    }
}

impl ShowKey for [u8; 4] {
    fn show(&self) -> String {
        std::net::Ipv4Addr::from(*self).to_string()
    }
}

/// Sender, then source network (`WEFT_SENDER_SOURCES`).
impl ShowKey for [u8; SENDER_SOURCE_KEY_LEN] {
    fn show(&self) -> String {
        self.show_prefix(64)
    }
    fn show_prefix(&self, len: u32) -> String {
        let ip = |s: &[u8]| std::net::Ipv4Addr::new(s[0], s[1], s[2], s[3]);
        let source_len = len.saturating_sub(32);
        format!("{}/{source_len} from {}", ip(&self[4..]), ip(&self[..4]))
    }
}

impl<K: aya::Pod + Ord + ShowKey, V: aya::Pod + PartialEq> Table for HashMap<&mut MapData, K, V> {
    type K = K;
    type V = V;
    fn show(k: &K) -> String {
        k.show()
    }
    fn entries(&self) -> Result<BTreeMap<K, V>, aya::maps::MapError> {
        self.iter().collect()
    }
    fn put(&mut self, k: &K, v: &V) -> Result<(), aya::maps::MapError> {
        self.insert(k, v, 0)
    }
    fn delete(&mut self, k: &K) -> Result<(), aya::maps::MapError> {
        self.remove(k)
    }
}

impl<K: aya::Pod + Ord + ShowKey, V: aya::Pod + PartialEq> Table for LpmTrie<&mut MapData, K, V> {
    type K = (u32, K);
    type V = V;
    fn show((len, data): &(u32, K)) -> String {
        data.show_prefix(*len)
    }
    fn entries(&self) -> Result<BTreeMap<(u32, K), V>, aya::maps::MapError> {
        self.iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect()
    }
    fn put(&mut self, (len, data): &(u32, K), v: &V) -> Result<(), aya::maps::MapError> {
        self.insert(&Key::new(*len, *data), v, 0)
    }
    fn delete(&mut self, (len, data): &(u32, K)) -> Result<(), aya::maps::MapError> {
        self.remove(&Key::new(*len, *data))
    }
}

/// Makes `table` (the map `name` of `capacity` entries) hold exactly
/// `desired`, writing only what differs. Removals go first, so that a map
/// near its capacity has room for the new entries; what does not fit at
/// all is refused before anything is written ([`MapFull`]).
fn sync<T: Table>(
    table: &mut T,
    name: &str,
    capacity: u32,
    desired: &BTreeMap<T::K, T::V>,
) -> Result<Writes> {
    if desired.len() > capacity as usize {
        return Err(MapFull {
            map: name.to_owned(),
            capacity,
            needed: desired.len(),
        }
        .into());
    }
    let current = table.entries().with_context(|| format!("reading {name}"))?;
    let (upserts, removals) = diff(&current, desired);
    let mut w = Writes::default();
    for k in removals {
        match table.delete(&k) {
            // Gone meanwhile (a pod's entry its CNI DEL removed): as wanted.
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => w.removed += 1,
            Err(e) => {
                return Err(e).with_context(|| format!("removing {name} entry {}", T::show(&k)));
            }
        }
    }
    for (k, v, existed) in upserts {
        table
            .put(&k, &v)
            .with_context(|| format!("writing {name} entry {}", T::show(&k)))?;
        if existed {
            w.updated += 1
        } else {
            w.inserted += 1
        }
    }
    Ok(w)
}

/// Makes the hash map `map` (named `name`, for errors) hold exactly `desired`.
pub fn sync_hash<K, V>(map: &mut Map, name: &str, desired: &BTreeMap<K, V>) -> Result<Writes>
where
    K: aya::Pod + Ord + ShowKey,
    V: aya::Pod + PartialEq,
{
    let cap = capacity(map).with_context(|| name.to_owned())?;
    let mut hash: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    sync(&mut hash, name, cap, desired)
}

/// Makes the LPM trie `map` (named `name`) hold exactly `desired`, keyed by
/// (prefix length, data).
pub fn sync_lpm<K, V>(map: &mut Map, name: &str, desired: &BTreeMap<(u32, K), V>) -> Result<Writes>
where
    K: aya::Pod + Ord + ShowKey,
    V: aya::Pod + PartialEq,
{
    let cap = capacity(map).with_context(|| name.to_owned())?;
    let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map)?;
    sync(&mut trie, name, cap, desired)
}

/// Makes `WEFT_PODS` hold exactly `desired` (the pods' addresses from their
/// CNI records). Entries the plugin wrote meanwhile are in `desired` too
/// once their record is read; the next sync settles any race.
pub fn sync_pods(map: &mut Map, desired: &BTreeMap<[u8; 4], PodEndpoint>) -> Result<Writes> {
    sync_hash(map, weft_common::maps::PODS, desired)
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
    fn source_maps_from_the_topology() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let leader = Sender {
            name: "b".into(),
            ip: "192.168.1.1".parse().unwrap(),
            sources: vec![net("0.0.0.0/0"), net("10.2.1.0/24"), net("10.2.2.0/24")],
        };
        let node = Sender {
            name: "e".into(),
            ip: "192.168.1.3".parse().unwrap(),
            sources: vec![net("10.2.5.0/24"), net("192.168.1.3/32")],
        };
        let v6 = Sender {
            name: "six".into(),
            ip: "fd00::1".parse().unwrap(),
            sources: vec![net("fd00:42::/64")],
        };
        let cluster = [
            net("10.2.1.0/24"),
            net("10.2.2.0/24"),
            net("10.2.3.0/24"),
            net("10.2.5.7/24"), // not truncated by the caller: keyed by its network
            net("192.168.1.3/32"),
            net("fd00:42::/64"),
        ];
        let me = std::net::Ipv4Addr::new(192, 168, 1, 2);
        let m = source_maps(&[leader, node, v6], &cluster, Some(2), Some(me));
        let local = me.octets();
        assert_eq!(
            m.senders,
            [
                ([192, 168, 1, 1], IpipSender { ifindex: 2, local }),
                ([192, 168, 1, 3], IpipSender { ifindex: 2, local }),
            ]
            .into()
        );
        let keys: Vec<SenderSourceKey> = m.sender_sources.keys().copied().collect();
        assert_eq!(
            keys,
            vec![
                (32, [192, 168, 1, 1, 0, 0, 0, 0]),
                (56, [192, 168, 1, 1, 10, 2, 1, 0]),
                (56, [192, 168, 1, 1, 10, 2, 2, 0]),
                (56, [192, 168, 1, 3, 10, 2, 5, 0]),
                (64, [192, 168, 1, 3, 192, 168, 1, 3]),
            ]
        );
        assert!(m.sender_sources.values().all(|v| *v == ALLOWED));
        // Sendable from the NIC, or from nowhere (this node's own 10.2.3.0/24); no /0.
        assert_eq!(
            m.nic_sources,
            [
                ((24, [10, 2, 1, 0]), 2),
                ((24, [10, 2, 2, 0]), 2),
                ((24, [10, 2, 3, 0]), FROM_NOWHERE),
                ((24, [10, 2, 5, 0]), 2),
                ((32, [192, 168, 1, 3]), 2),
            ]
            .into()
        );
        // No NIC or no private IP: nobody sends over the LAN; cluster ranges from nowhere.
        for (nic, local) in [(None, Some(me)), (Some(2), None)] {
            let m = source_maps(&[], &cluster, nic, local);
            assert!(m.senders.is_empty() && m.sender_sources.is_empty());
            assert!(m.nic_sources.values().all(|v| *v == FROM_NOWHERE));
            assert_eq!(m.nic_sources.len(), 5);
        }
    }

    #[test]
    fn route_keys_are_network_addresses() {
        assert_eq!(
            route_key(&"10.42.1.7/24".parse().unwrap()),
            (24, [10, 42, 1, 0])
        );
    }
}
