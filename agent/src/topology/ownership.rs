//! Who owns which range: the validation step between the model and the
//! topology. A node or peer object can claim any range; before the mesh is
//! computed, every range it routes is given to one owner, and a claim on a
//! range that is someone else's is refused with a [`Warning`] naming both
//! sides and the range. The rest of the mesh is computed normally: a
//! refusal never fails [`Mesh::build`](super::Mesh::build).
//!
//! # The rule
//!
//! Owners, strongest first; "overlaps" means inside, containing or equal.
//!
//! 1. **The settings**: the WireGuard subnet and the service CIDRs. They are
//!    the cluster's configuration, the same on every node, and never refused.
//! 2. **Nodes' pod CIDRs**, oldest node first. A pod CIDR that covers
//!    every address (`/0`), or overlaps the WireGuard subnet, a service CIDR
//!    or the pod CIDR of an older node, is refused, and its node is left out
//!    of the mesh as a node without a pod CIDR would be
//!    ([`Mesh::nodes_refused`](super::Mesh::nodes_refused)). Age is the
//!    object's creation time, which the Kubernetes API server sets and no
//!    client chooses: a Node created to claim a running node's range loses,
//!    whatever its name. Nodes without one (directory files without
//!    `creationTimestamp`) come after those with one; name order breaks
//!    ties. Kubernetes' IPAM never hands out overlapping pod CIDRs, so an
//!    overlap is a hand-written mistake or an attack.
//! 3. **Nodes' private IPs**: the address of `internal-ip`, not its LAN
//!    prefix. One inside the WireGuard subnet, a service CIDR or any pod
//!    CIDR (its own included: a bridge address taken for the internal IP) is
//!    refused, and its node is meshed as a node without a private IP (its
//!    own segment, reached over WireGuard). Two nodes may share an address
//!    (overlapping VPCs behind different NATs): both keep it, and a
//!    WireGuard configuration holds it once ([`Warning::AllowedIpTaken`]).
//!    LAN prefixes are owned by no one: a flat `10.0.0.0/8` LAN commonly
//!    holds the pod CIDRs and a VPN range, which are routed more
//!    specifically than the LAN.
//! 4. **External peers' allowed IPs**, peers in name order. An allowed IP
//!    that covers every address (`/0`, an exit peer) is refused unless the
//!    settings allow exit peers (`allowExitPeers`); then the first peer by
//!    name keeps it (one per address family), and it takes nothing from
//!    anyone, every owned range being more specific. Any other allowed IP
//!    that overlaps a range of 1–3 or an allowed IP of a peer earlier by
//!    name is refused. The peer keeps its other allowed IPs, and is left
//!    out when none is left
//!    ([`Mesh::peers_refused`](super::Mesh::peers_refused)).
//! 5. **Allowed location IPs**, per segment. One that covers every address,
//!    or overlaps a range of 1–4 or another segment's allowed location IP,
//!    is refused. Between two segments, the later in segment order keeps it
//!    (Kilo's `filterAllowedLocationIPs`). Nodes of one segment may list the
//!    same or overlapping ones.
//!
//! # Cost
//!
//! Nothing is compared pairwise. Pod CIDRs are sorted: in that order a
//! prefix is followed by those inside it, so overlaps show in one sweep,
//! and only the groups that have one are settled in name order. Owned
//! ranges are kept per address family and prefix length, the bulk
//! (settings, pod CIDRs, private IPs) in sorted vectors, the claims checked
//! one by one (peers' allowed IPs, allowed location IPs) in an ordered map:
//! whether a range overlaps an owned one is one binary search per prefix
//! length in use, so validating `n` claims costs O(n · L · log n) for L
//! lengths in use (a handful). Owners are held as borrowed names; a
//! [`Claim`] is made only for a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::Bound;

use ipnet::IpNet;

use super::{Ready, SegmentId, Warning, host_net};
use crate::model::{Peer, Settings};

/// A range and who claims it, as warnings name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// `pod CIDR 10.2.1.0/24 of node "a1"`
    PodCidr { node: String, cidr: IpNet },
    /// `private IP 192.168.0.1 of node "a1"`
    PrivateIp { node: String, ip: IpAddr },
    /// `allowed IP 10.5.0.1/32 of peer "laptop"`
    PeerAllowedIp { peer: String, cidr: IpNet },
    /// `allowed location IP 172.30.0.0/24 of node "a1" (location:aws)`
    AllowedLocationIp {
        node: String,
        segment: SegmentId,
        cidr: IpNet,
    },
    /// `the WireGuard subnet 10.4.0.0/16`
    WireGuardSubnet(IpNet),
    /// `service CIDR 10.96.0.0/12`
    ServiceCidr(IpNet),
}

impl Claim {
    /// The range claimed (network form).
    pub fn range(&self) -> IpNet {
        match self {
            Claim::PodCidr { cidr, .. }
            | Claim::PeerAllowedIp { cidr, .. }
            | Claim::AllowedLocationIp { cidr, .. }
            | Claim::WireGuardSubnet(cidr)
            | Claim::ServiceCidr(cidr) => cidr.trunc(),
            Claim::PrivateIp { ip, .. } => host_net(*ip),
        }
    }

    /// What becomes of this claim when it is refused.
    pub fn consequence(&self) -> &'static str {
        match self {
            Claim::PodCidr { .. } => "node left out of the mesh",
            Claim::PrivateIp { .. } => {
                "node meshed without a private IP (its own segment, over WireGuard)"
            }
            Claim::PeerAllowedIp { .. } => "left out (the peer keeps its other allowed IPs)",
            Claim::AllowedLocationIp { .. } => "left out",
            // Never refused.
            Claim::WireGuardSubnet(_) | Claim::ServiceCidr(_) => "kept",
        }
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::PodCidr { node, cidr } => write!(f, "pod CIDR {cidr} of node {node:?}"),
            Claim::PrivateIp { node, ip } => write!(f, "private IP {ip} of node {node:?}"),
            Claim::PeerAllowedIp { peer, cidr } => {
                write!(f, "allowed IP {cidr} of peer {peer:?}")
            }
            Claim::AllowedLocationIp {
                node,
                segment,
                cidr,
            } => write!(f, "allowed location IP {cidr} of node {node:?} ({segment})"),
            Claim::WireGuardSubnet(cidr) => write!(f, "the WireGuard subnet {cidr}"),
            Claim::ServiceCidr(cidr) => write!(f, "service CIDR {cidr}"),
        }
    }
}

/// How `refused` overlaps `owner`, for messages: `is inside`, `contains`,
/// `duplicates`.
pub(super) fn relation(refused: &Claim, owner: &Claim) -> &'static str {
    let (a, b) = (refused.range(), owner.range());
    if a == b {
        "duplicates"
    } else if b.contains(&a) {
        "is inside"
    } else {
        "contains"
    }
}

/// An owner as the map holds it: borrowed, made a [`Claim`] for warnings.
#[derive(Debug, Clone)]
enum Owner<'a> {
    WireGuardSubnet,
    ServiceCidr,
    Pod(&'a str),
    Private(&'a str),
    Peer(&'a str),
    /// Rare enough to own its segment id (boxed, to keep the others small).
    Location(&'a str, Box<SegmentId>),
}

impl Owner<'_> {
    fn claim(&self, range: IpNet) -> Claim {
        match self {
            Owner::WireGuardSubnet => Claim::WireGuardSubnet(range),
            Owner::ServiceCidr => Claim::ServiceCidr(range),
            Owner::Pod(node) => Claim::PodCidr {
                node: (*node).to_owned(),
                cidr: range,
            },
            Owner::Private(node) => Claim::PrivateIp {
                node: (*node).to_owned(),
                ip: range.addr(),
            },
            Owner::Peer(peer) => Claim::PeerAllowedIp {
                peer: (*peer).to_owned(),
                cidr: range,
            },
            Owner::Location(node, segment) => Claim::AllowedLocationIp {
                node: (*node).to_owned(),
                segment: (**segment).clone(),
                cidr: range,
            },
        }
    }
}

/// What the prefix maps need of an address: the bits of an integer.
trait Bits: Copy + Ord {
    const WIDTH: u8;
    /// The network address of `self`'s prefix of `len` bits.
    fn network(self, len: u8) -> Self;
    /// The last address of `self`'s prefix of `len` bits.
    fn last(self, len: u8) -> Self;
}

macro_rules! bits {
    ($t:ty) => {
        impl Bits for $t {
            const WIDTH: u8 = <$t>::BITS as u8;
            fn network(self, len: u8) -> Self {
                self & (<$t>::MAX
                    .checked_shl(u32::from(Self::WIDTH - len))
                    .unwrap_or(0))
            }
            fn last(self, len: u8) -> Self {
                self | (<$t>::MAX.checked_shr(u32::from(len)).unwrap_or(0))
            }
        }
    };
}
bits!(u32);
bits!(u128);

/// The owned prefixes of one address family (`u32` or `u128` addresses),
/// each with the index of its first owner: sorted vectors filled in bulk,
/// one per prefix length (the settings, the nodes' pod CIDRs and private
/// IPs: cheap to search), and a map for the claims validated one by one
/// (peers' allowed IPs, allowed location IPs).
#[derive(Debug, Default)]
struct Family<A> {
    /// By prefix length; each by network address, stable (the first owner
    /// first).
    sorted: Vec<(u8, Vec<(A, usize)>)>,
    /// By (network address, prefix length).
    map: BTreeMap<(A, u8), usize>,
    /// The prefix lengths in the map, sorted.
    map_lengths: Vec<u8>,
}

impl<A: Bits> Family<A> {
    fn extend(&mut self, items: impl IntoIterator<Item = (A, u8, usize)>) {
        for (addr, len, owner) in items {
            let i = match self.sorted.binary_search_by_key(&len, |(l, _)| *l) {
                Ok(i) => i,
                Err(i) => {
                    self.sorted.insert(i, (len, Vec::new()));
                    i
                }
            };
            self.sorted[i].1.push((addr.network(len), owner));
        }
        // Runs already sorted (the old entries, the new ones mostly) make
        // this a merge.
        for (_, v) in &mut self.sorted {
            v.sort_by_key(|&(a, _)| a);
        }
    }

    fn insert(&mut self, addr: A, len: u8, owner: usize) {
        if let Err(i) = self.map_lengths.binary_search(&len) {
            self.map_lengths.insert(i, len);
        }
        self.map.entry((addr.network(len), len)).or_insert(owner);
    }

    /// The owner of a prefix overlapping `addr/len`: the widest that
    /// contains it, else the narrowest inside it (or equal), the first in
    /// address order; the sorted ones before the mapped ones.
    fn overlapping(&self, addr: A, len: u8) -> Option<usize> {
        let start = addr.network(len);
        let last = start.last(len);
        for (l, v) in &self.sorted {
            // Wider: the one holding `start`, if any; no wider: any whose
            // network address lies in `addr/len` (a wider aligned block
            // cannot start inside a narrower one but at its network address).
            let from = if *l < len { start.network(*l) } else { start };
            let i = v.partition_point(|&(a, _)| a < from);
            match v.get(i) {
                Some(&(a, o)) if (*l < len && a == from) || (*l >= len && a <= last) => {
                    return Some(o);
                }
                _ => {}
            }
        }
        for &l in self.map_lengths.iter().take_while(|&&l| l < len) {
            if let Some(&o) = self.map.get(&(start.network(l), l)) {
                return Some(o);
            }
        }
        self.map
            .range((Bound::Included((start, len)), Bound::Unbounded))
            .next()
            .filter(|((a, _), _)| *a <= last)
            .map(|(_, &o)| o)
    }
}

/// The ranges owned so far.
#[derive(Debug, Default)]
pub(super) struct Owned<'a> {
    v4: Family<u32>,
    v6: Family<u128>,
    /// Every range inserted, with its owner.
    owners: Vec<(IpNet, Owner<'a>)>,
}

impl<'a> Owned<'a> {
    /// Starts with what the settings own; room for `claims` more.
    pub(super) fn new(settings: &Settings, claims: usize) -> Self {
        let mut owned = Owned {
            owners: Vec::with_capacity(1 + settings.service_cidrs.len() + claims),
            ..Owned::default()
        };
        let mut all = vec![(settings.subnet.trunc(), Owner::WireGuardSubnet)];
        all.extend(
            settings
                .service_cidrs
                .iter()
                .map(|c| (c.trunc(), Owner::ServiceCidr)),
        );
        owned.extend(all);
        owned
    }

    /// Adds many ranges at once (sorted storage), in network form.
    fn extend(&mut self, items: impl IntoIterator<Item = (IpNet, Owner<'a>)>) {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (net, owner) in items {
            let i = self.owners.len();
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), n.prefix_len(), i)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), n.prefix_len(), i)),
            }
            self.owners.push((net, owner));
        }
        if !v4.is_empty() {
            self.v4.extend(v4);
        }
        if !v6.is_empty() {
            self.v6.extend(v6);
        }
    }

    /// Adds one range (mapped storage).
    fn insert(&mut self, net: IpNet, owner: Owner<'a>) {
        let i = self.owners.len();
        match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.network()), n.prefix_len(), i),
            IpNet::V6(n) => self.v6.insert(u128::from(n.network()), n.prefix_len(), i),
        }
        self.owners.push((net.trunc(), owner));
    }

    /// For tests: ranges with some owner (queries only look at ranges),
    /// in bulk or one by one.
    #[cfg(test)]
    pub(super) fn insert_ranges(&mut self, nets: &[IpNet], bulk: bool) {
        if bulk {
            self.extend(nets.iter().map(|n| (*n, Owner::ServiceCidr)));
        } else {
            for n in nets {
                self.insert(*n, Owner::ServiceCidr);
            }
        }
    }

    /// The claim on a range overlapping `net`, if any.
    pub(super) fn overlapping(&self, net: IpNet) -> Option<Claim> {
        let i = match net {
            IpNet::V4(n) => self.v4.overlapping(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.overlapping(u128::from(n.addr()), n.prefix_len()),
        }?;
        let (range, owner) = &self.owners[i];
        Some(owner.claim(*range))
    }

    /// Why a claim on `net` is refused, if it is; `claim` makes the
    /// claim, only for a refusal.
    fn refusal(&self, net: IpNet, claim: impl FnOnce() -> Claim) -> Option<Warning> {
        if net.prefix_len() == 0 {
            return Some(Warning::CoversEverything { refused: claim() });
        }
        self.overlapping(net).map(|owner| Warning::RangeTaken {
            refused: claim(),
            owner,
        })
    }
}

/// Orders prefixes by family, network address, length.
fn sort_key(net: &IpNet) -> (bool, u128, u8) {
    match net {
        IpNet::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix_len()),
        IpNet::V6(n) => (true, u128::from(n.network()), n.prefix_len()),
    }
}

/// Rules 2 and 3: pod CIDRs, then private IPs, of the ready nodes (sorted
/// by name). Nodes whose pod CIDR is refused go to `refused`, with the
/// warning; the others are returned, in order, their private IP cleared
/// where refused.
///
/// Pod CIDRs are checked against one another by sorting them: in that
/// order, a prefix and those that follow it inside its range form a group
/// where overlaps are (prefixes never partly overlap), and only groups of
/// more than one are settled one by one, in name order.
pub(super) fn nodes<'a>(
    ready: Vec<Ready<'a>>,
    owned: &mut Owned<'a>,
    refused: &mut BTreeMap<String, Warning>,
    warnings: &mut Vec<Warning>,
) -> Vec<Ready<'a>> {
    let pod_claim = |r: &Ready<'_>| Claim::PodCidr {
        node: r.node.name.clone(),
        cidr: r.pod_cidr,
    };
    // Refusals by node index, to be told in name order.
    let mut refusals: Vec<(usize, Warning)> = Vec::new();
    let mut left_out = vec![false; ready.len()];
    for (i, r) in ready.iter().enumerate() {
        if let Some(w) = owned.refusal(r.pod_cidr, || pod_claim(r)) {
            refusals.push((i, w));
            left_out[i] = true;
        }
    }
    let mut order: Vec<((bool, u128, u8), usize)> = (0..ready.len())
        .filter(|&i| !left_out[i])
        .map(|i| (sort_key(&ready[i].pod_cidr), i))
        .collect();
    order.sort_unstable();
    let mut g = 0;
    while g < order.len() {
        let ((family, start, len), _) = order[g];
        let last = if family {
            start.last(len)
        } else {
            u128::from((start as u32).last(len))
        };
        let mut end = g + 1;
        while end < order.len() && order[end].0.0 == family && order[end].0.1 <= last {
            end += 1;
        }
        if end - g > 1 {
            let mut group: Vec<usize> = order[g..end].iter().map(|&(_, i)| i).collect();
            // The older object keeps the range; name order among equals.
            group.sort_unstable_by_key(|&i| (ready[i].node.created.unwrap_or(i64::MAX), i));
            let mut kept = Owned::default();
            for i in group {
                let r = &ready[i];
                match kept.overlapping(r.pod_cidr) {
                    Some(owner) => {
                        let refused = pod_claim(r);
                        refusals.push((i, Warning::RangeTaken { refused, owner }));
                        left_out[i] = true;
                    }
                    None => kept.insert(r.pod_cidr, Owner::Pod(&r.node.name)),
                }
            }
        }
        g = end;
    }

    refusals.sort_by_key(|(i, _)| *i);
    for (i, w) in refusals {
        refused.insert(ready[i].node.name.clone(), w.clone());
        warnings.push(w);
    }
    let mut kept = ready;
    let mut i = 0;
    kept.retain(|_| {
        i += 1;
        !left_out[i - 1]
    });
    owned.extend(kept.iter().map(|r| (r.pod_cidr, Owner::Pod(&r.node.name))));

    // Against the settings and every pod CIDR, not against one another.
    let mut private = Vec::new();
    for r in &mut kept {
        let Some(p) = r.private_ip else { continue };
        let name = r.node.name.as_str();
        let claim = || Claim::PrivateIp {
            node: name.to_owned(),
            ip: p.addr(),
        };
        match owned.refusal(host_net(p.addr()), claim) {
            Some(w) => {
                warnings.push(w);
                r.private_ip = None;
            }
            None => private.push((host_net(p.addr()), name)),
        }
    }
    owned.extend(
        private
            .into_iter()
            .map(|(ip, name)| (ip, Owner::Private(name))),
    );
    kept
}

/// Rule 4: the allowed IPs of ready peers (sorted by name, names unique).
/// Peers left with none go to `refused`.
pub(super) fn peers<'a>(
    peers: Vec<&'a Peer>,
    allow_exit_peers: bool,
    owned: &mut Owned<'a>,
    refused: &mut BTreeSet<String>,
    warnings: &mut Vec<Warning>,
) -> Vec<Peer> {
    // The exit peer of each family (IPv4, IPv6).
    let mut exits: [Option<&str>; 2] = [None, None];
    let mut out = Vec::with_capacity(peers.len());
    for p in peers {
        let name = p.name.as_str();
        let mut kept: Vec<IpNet> = Vec::with_capacity(p.allowed_ips.len());
        for &c in &p.allowed_ips {
            if kept.contains(&c) {
                continue; // repeated within one peer
            }
            let claim = |cidr| Claim::PeerAllowedIp {
                peer: name.to_owned(),
                cidr,
            };
            if c.prefix_len() == 0 {
                let exit = &mut exits[usize::from(matches!(c, IpNet::V6(_)))];
                if !allow_exit_peers {
                    warnings.push(Warning::ExitPeerRefused {
                        peer: name.to_owned(),
                        cidr: c,
                    });
                } else if let Some(first) = exit {
                    warnings.push(Warning::RangeTaken {
                        refused: claim(c),
                        owner: Claim::PeerAllowedIp {
                            peer: (*first).to_owned(),
                            cidr: c,
                        },
                    });
                } else {
                    *exit = Some(name);
                    kept.push(c);
                }
                continue;
            }
            match owned.refusal(c, || claim(c)) {
                Some(w) => warnings.push(w),
                None => kept.push(c),
            }
        }
        // A peer's own allowed IPs may overlap one another.
        for &c in kept.iter().filter(|c| c.prefix_len() > 0) {
            owned.insert(c, Owner::Peer(name));
        }
        if kept.is_empty() {
            refused.insert(name.to_owned());
        } else {
            out.push(Peer {
                allowed_ips: kept,
                ..p.clone()
            });
        }
    }
    out
}

/// Rule 5: the allowed location IPs of the segments' members, the last
/// segment first (the later keeps a range two segments claim).
pub(super) fn allowed_location_ips<'a>(
    groups: &mut BTreeMap<SegmentId, Vec<Ready<'a>>>,
    owned: &mut Owned<'a>,
    warnings: &mut Vec<Warning>,
) {
    for (id, members) in groups.iter_mut().rev() {
        let mut segment = Vec::new();
        for r in members.iter_mut() {
            let name = r.node.name.as_str();
            for c in std::mem::take(&mut r.allowed_location_ips) {
                let claim = || Claim::AllowedLocationIp {
                    node: name.to_owned(),
                    segment: id.clone(),
                    cidr: c,
                };
                match owned.refusal(c, claim) {
                    Some(w) => warnings.push(w),
                    None => {
                        r.allowed_location_ips.push(c);
                        segment.push((c, name));
                    }
                }
            }
        }
        for (c, name) in segment {
            owned.insert(c, Owner::Location(name, Box::new(id.clone())));
        }
    }
}
