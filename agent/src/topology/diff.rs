//! Differences between two topologies of one node, for reconcilers that
//! change only what changed (an unchanged WireGuard peer is never touched).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Interface, Route, Topology, WgPeer};
use crate::model::PublicKey;

/// Elements added and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDiff<T> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
}

impl<T> Default for SetDiff<T> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<T: Ord + Clone> SetDiff<T> {
    pub fn of(old: &[T], new: &[T]) -> Self {
        let o: BTreeSet<&T> = old.iter().collect();
        let n: BTreeSet<&T> = new.iter().collect();
        Self {
            added: n.difference(&o).map(|t| (*t).clone()).collect(),
            removed: o.difference(&n).map(|t| (*t).clone()).collect(),
        }
    }
}

impl<T> SetDiff<T> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A peer (same public key) whose configuration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    pub old: WgPeer,
    pub new: WgPeer,
}

/// A route (same destination) whose kind changed: replace it in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub old: Route,
    pub new: Route,
}

/// What changed from one topology to the next. Lists are sorted (peers by
/// public key, routes by destination).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyDiff {
    /// (old, new) when leadership changed.
    pub leader: Option<(bool, bool)>,
    pub wireguard_ip: Option<(Option<IpNet>, Option<IpNet>)>,
    pub interface: Option<(Interface, Interface)>,
    pub peers_added: Vec<WgPeer>,
    pub peers_removed: Vec<WgPeer>,
    pub peers_changed: Vec<PeerChange>,
    pub routes_added: Vec<Route>,
    pub routes_removed: Vec<Route>,
    pub routes_changed: Vec<RouteChange>,
    pub masquerade_sources: SetDiff<IpNet>,
    pub masquerade_exempt: SetDiff<IpNet>,
    pub masquerade_always: SetDiff<IpNet>,
    pub ipip_sources: SetDiff<IpAddr>,
}

impl TopologyDiff {
    pub fn is_empty(&self) -> bool {
        self.leader.is_none()
            && self.wireguard_ip.is_none()
            && self.interface.is_none()
            && self.peers_added.is_empty()
            && self.peers_removed.is_empty()
            && self.peers_changed.is_empty()
            && self.routes_added.is_empty()
            && self.routes_removed.is_empty()
            && self.routes_changed.is_empty()
            && self.masquerade_sources.is_empty()
            && self.masquerade_exempt.is_empty()
            && self.masquerade_always.is_empty()
            && self.ipip_sources.is_empty()
    }
}

/// Do two peers configure WireGuard alike? Allowed IPs compare as sets, the
/// origin (not part of WireGuard's configuration) not at all.
pub fn same_config(a: &WgPeer, b: &WgPeer) -> bool {
    let set = |p: &WgPeer| p.allowed_ips.iter().copied().collect::<BTreeSet<IpNet>>();
    a.public_key == b.public_key
        && a.endpoint == b.endpoint
        && a.persistent_keepalive == b.persistent_keepalive
        && a.preshared_key == b.preshared_key
        && set(a) == set(b)
}

/// What changed from `old` to `new`.
pub fn diff(old: &Topology, new: &Topology) -> TopologyDiff {
    let mut d = TopologyDiff::default();
    if old.leader != new.leader {
        d.leader = Some((old.leader, new.leader));
    }
    if old.wireguard_ip != new.wireguard_ip {
        d.wireguard_ip = Some((old.wireguard_ip, new.wireguard_ip));
    }
    if old.interface != new.interface {
        d.interface = Some((old.interface, new.interface));
    }

    let op: BTreeMap<PublicKey, &WgPeer> = old.peers.iter().map(|p| (p.public_key, p)).collect();
    let np: BTreeMap<PublicKey, &WgPeer> = new.peers.iter().map(|p| (p.public_key, p)).collect();
    for (k, n) in &np {
        match op.get(k) {
            None => d.peers_added.push((*n).clone()),
            Some(o) if !same_config(o, n) => d.peers_changed.push(PeerChange {
                old: (*o).clone(),
                new: (*n).clone(),
            }),
            Some(_) => {}
        }
    }
    d.peers_removed = op
        .iter()
        .filter(|(k, _)| !np.contains_key(k))
        .map(|(_, p)| (*p).clone())
        .collect();

    let or: BTreeMap<IpNet, &Route> = old.routes.iter().map(|r| (r.dst, r)).collect();
    let nr: BTreeMap<IpNet, &Route> = new.routes.iter().map(|r| (r.dst, r)).collect();
    for (dst, n) in &nr {
        match or.get(dst) {
            None => d.routes_added.push((*n).clone()),
            Some(o) if o.kind != n.kind => d.routes_changed.push(RouteChange {
                old: (*o).clone(),
                new: (*n).clone(),
            }),
            Some(_) => {}
        }
    }
    d.routes_removed = or
        .iter()
        .filter(|(dst, _)| !nr.contains_key(dst))
        .map(|(_, r)| (*r).clone())
        .collect();

    d.masquerade_sources = SetDiff::of(&old.masquerade.sources, &new.masquerade.sources);
    d.masquerade_exempt = SetDiff::of(&old.masquerade.exempt, &new.masquerade.exempt);
    d.masquerade_always = SetDiff::of(&old.masquerade.always, &new.masquerade.always);
    d.ipip_sources = SetDiff::of(&old.ipip_sources, &new.ipip_sources);
    d
}
