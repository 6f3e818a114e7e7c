//! The topology: a pure, deterministic function from the model (nodes, peers,
//! settings, the time, the demoted leaders) to the mesh, and from the mesh to
//! what one node must configure. Every node computes the same [`Mesh`] from
//! the same inputs, whatever their order.
//!
//! Semantics are Kilo's (`pkg/mesh/topology.go`, `routes.go`), with these
//! differences: before anything is computed, every range is given to one
//! owner and claims on others' ranges are refused ([`ownership`]: a peer
//! cannot take a node's pod CIDR, nor a node another's); WireGuard addresses
//! are stable ([`alloc`]); a set of demoted nodes is passed over in leader
//! elections; an allowed IP claimed by two WireGuard peers of one
//! configuration, or a public key used twice, is kept once (first wins) so
//! that WireGuard never flaps between them; routes are unique per
//! destination.

pub mod alloc;
pub mod diff;
pub mod ownership;
#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::model::{
    Encapsulate, Endpoint, Granularity, Keepalive, Key, Node, NotReady, Peer, PublicKey,
    ResolveError, Resolver, Settings,
};

pub use diff::{PeerChange, RouteChange, SetDiff, TopologyDiff, diff};
pub use ownership::Claim;

/// A segment's stable identity. Ordered as Kilo orders its segments
/// (`location:...` before `node:...`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SegmentId {
    /// Nodes grouped by location.
    Location(String),
    /// A node alone: full granularity, or a node without a private IP.
    Node(String),
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentId::Location(l) => write!(f, "location:{l}"),
            SegmentId::Node(n) => write!(f, "node:{n}"),
        }
    }
}

/// A node as a member of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentNode {
    pub name: String,
    pub pod_cidr: IpNet,
    /// With its prefix (the private subnet), as published.
    pub private_ip: Option<IpNet>,
    pub endpoint: Endpoint,
}

/// One segment: the nodes behind one WireGuard leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: SegmentId,
    /// Sorted by name.
    pub nodes: Vec<SegmentNode>,
    /// Index of the leader in `nodes`.
    pub leader: usize,
    /// The leader's key, endpoint and persistent keepalive.
    pub key: PublicKey,
    pub endpoint: Endpoint,
    pub persistent_keepalive: Option<Keepalive>,
    pub wireguard_ip: IpAddr,
    /// Pod CIDRs and private IPs of the nodes, then the WireGuard IP (Kilo's order).
    pub allowed_ips: Vec<IpNet>,
    /// Routed to this segment but not part of the cluster (a printer...),
    /// sorted, less those refused by [`ownership`].
    pub allowed_location_ips: Vec<IpNet>,
}

impl Segment {
    pub fn leader_node(&self) -> &SegmentNode {
        &self.nodes[self.leader]
    }

    pub fn private_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.nodes
            .iter()
            .filter_map(|n| n.private_ip.map(|p| p.addr()))
    }
}

/// A desired WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: PublicKey,
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<Keepalive>,
    pub preshared_key: Option<Key>,
    /// What the peer stands for (not part of the WireGuard configuration).
    pub origin: PeerOrigin,
}

impl WgPeer {
    /// The endpoint as a socket address, resolving a DNS name (the one
    /// impure step, kept out of the topology).
    pub fn resolve_endpoint(
        &self,
        resolver: &dyn Resolver,
    ) -> Result<Option<SocketAddr>, ResolveError> {
        self.endpoint
            .as_ref()
            .map(|e| e.resolve(resolver))
            .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerOrigin {
    /// Another segment's leader.
    Segment(SegmentId),
    /// An external peer, by name.
    External(String),
}

/// A WireGuard configuration, for `weftctl showconf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConf {
    pub listen_port: Option<u16>,
    pub peers: Vec<WgPeer>,
}

/// The WireGuard interface's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    pub listen_port: u16,
}

/// A desired route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub kind: RouteKind,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    /// This node's own pod CIDR, delivered here by the CNI bridge: no kernel
    /// route to install; the datapath delivers it locally.
    Local,
    /// Into the WireGuard device, on-link through `gateway` (another
    /// segment's WireGuard IP) when there is one; none for external peers.
    WireGuard { gateway: Option<IpAddr> },
    /// Out of the private interface through a node of this segment (a
    /// member, or the leader for non-leaders), IPIP-encapsulated when
    /// `encapsulate`.
    Node { gateway: IpAddr, encapsulate: bool },
}

/// Which pod traffic is masqueraded (SNAT to the node's address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masquerade {
    /// Traffic from these sources is masqueraded unless its destination is
    /// exempt: this node's pod CIDR and the external peers' allowed IPs.
    pub sources: Vec<IpNet>,
    /// Never masqueraded: every segment's allowed IPs and WireGuard IP, the
    /// peers' allowed IPs, the service CIDRs.
    pub exempt: Vec<IpNet>,
    /// Masqueraded whatever the source: this segment's allowed location IPs
    /// (hosts outside the cluster that know no route back).
    pub always: Vec<IpNet>,
}

/// Something odd in the input that the topology worked around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("several nodes are named {0:?}: all left out")]
    DuplicateNode(String),
    #[error("several peers are named {0:?}: all left out")]
    DuplicatePeer(String),
    /// A claim on a range another owns ([`ownership`]), e.g. `allowed IP
    /// 10.2.1.7/32 of peer "laptop" is inside pod CIDR 10.2.1.0/24 of node
    /// "a1": left out (the peer keeps its other allowed IPs)`.
    #[error(
        "{refused} {} {owner}: {}",
        ownership::relation(.refused, .owner),
        .refused.consequence()
    )]
    RangeTaken { refused: Claim, owner: Claim },
    /// A pod CIDR or allowed location IP of `/0` (`0.0.0.0/0`, `::/0`).
    #[error("{refused} covers every address: {}", .refused.consequence())]
    CoversEverything { refused: Claim },
    /// A peer's `/0` while the settings allow no exit peer.
    #[error(
        "allowed IP {cidr} of peer {peer:?} covers every address (an exit peer), \
         which the settings do not allow (allowExitPeers: false): left out \
         (the peer keeps its other allowed IPs)"
    )]
    ExitPeerRefused { peer: String, cidr: IpNet },
    #[error("public key {key} of {dropped:?} is already {kept:?}'s: left out")]
    DuplicateKey {
        key: PublicKey,
        kept: PeerOrigin,
        dropped: PeerOrigin,
    },
    #[error("allowed IP {cidr} of {dropped:?} is already {kept:?}'s: left out")]
    AllowedIpTaken {
        cidr: IpNet,
        kept: PeerOrigin,
        dropped: PeerOrigin,
    },
}

/// Why a topology or a configuration cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("no node named {0:?}")]
    UnknownNode(String),
    #[error("node {name:?} is not ready: {reason}")]
    NodeNotReady { name: String, reason: NotReady },
    #[error("node {name:?} is not the leader of {segment} (its leader is {leader:?})")]
    NotLeader {
        name: String,
        segment: SegmentId,
        leader: String,
    },
    #[error("node {name:?} is left out of the mesh: {reason}")]
    NodeRefused { name: String, reason: String },
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    #[error("peer {0:?} is not ready: it has no allowed IPs")]
    PeerNotReady(String),
    #[error("peer {0:?} is left out of the mesh: every allowed IP it claims is refused")]
    PeerRefused(String),
    #[error(transparent)]
    SubnetExhausted(#[from] alloc::Exhausted),
}

/// What one node must configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub hostname: String,
    /// This node's segment.
    pub segment: SegmentId,
    pub segments: Vec<Segment>,
    pub leader: bool,
    /// The leader of this node's segment.
    pub leader_name: String,
    pub pod_cidr: IpNet,
    pub private_ip: Option<IpNet>,
    /// For leaders: the WireGuard device's address, with the subnet's prefix
    /// (so the whole subnet is on-link). `None` for non-leaders, whose
    /// WireGuard device stays down.
    pub wireguard_ip: Option<IpNet>,
    pub interface: Interface,
    /// Empty for non-leaders.
    pub peers: Vec<WgPeer>,
    /// Sorted by destination, one per destination.
    pub routes: Vec<Route>,
    pub masquerade: Masquerade,
    /// The service CIDRs (settings and `--service-cidr`): pod traffic to
    /// them is left to the kernel (kube-proxy), and so are its replies.
    pub service_cidrs: Vec<IpNet>,
    /// IPIP is accepted only from these: the private IPs of this segment's nodes.
    pub ipip_sources: Vec<IpAddr>,
    /// Who may send what into this node without WireGuard (IPIP, or plain
    /// on the LAN): this segment's other nodes with a private IP, sorted by
    /// IP. See `weft_common::sources` for the rule the datapath applies.
    pub senders: Vec<Sender>,
    /// Every cluster range a packet's source can be in (sorted): every
    /// segment's pod CIDRs, private IPs and WireGuard IP, the other segments'
    /// allowed location IPs, the peers' allowed IPs (less `/0`: an exit
    /// peer's range would make every address a cluster one). A source in
    /// one of these arriving at the NIC unencapsulated is accepted only if
    /// some sender may send it.
    pub cluster_sources: Vec<IpNet>,
    pub encapsulate: Encapsulate,
    pub warnings: Vec<Warning>,
}

/// A node of this segment that may send to this node over the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub name: String,
    /// Its private IP: the outer source of its IPIP, the next hop of its route.
    pub ip: IpAddr,
    /// The sources it may send (sorted): its pod CIDR and private IP (host
    /// traffic) and, for the segment's leader, everything it relays into
    /// the segment ([`Mesh::relayed_into`]).
    pub sources: Vec<IpNet>,
}

/// The whole mesh: the same for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub settings: Settings,
    /// Sorted by id.
    pub segments: Vec<Segment>,
    /// Ready peers, sorted by name, with the allowed IPs they own ([`ownership`]).
    pub peers: Vec<Peer>,
    /// Nodes left out for not being ready, by name.
    pub not_ready: BTreeMap<String, NotReady>,
    /// Ready nodes left out because their pod CIDR is refused
    /// ([`ownership`]), with the warning that says why.
    pub nodes_refused: BTreeMap<String, Warning>,
    /// Peers left out for having no allowed IPs.
    pub peers_not_ready: BTreeSet<String>,
    /// Peers left out because every allowed IP they claim is refused ([`ownership`]).
    pub peers_refused: BTreeSet<String>,
    pub warnings: Vec<Warning>,
    /// Per ready node: its segment's index, its index there, its own
    /// keepalive and discovered endpoints.
    members: BTreeMap<String, Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    segment: usize,
    index: usize,
    persistent_keepalive: Option<Keepalive>,
    discovered: BTreeMap<PublicKey, SocketAddr>,
}

/// Kilo's idea of a public address, made a little stricter: not RFC 1918,
/// shared (CGNAT), loopback, link-local, unspecified, unique-local IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// A ready node, with what readiness guarantees made non-optional, and the
/// ranges [`ownership`] leaves it.
struct Ready<'a> {
    node: &'a Node,
    key: PublicKey,
    endpoint: &'a Endpoint,
    pod_cidr: IpNet,
    private_ip: Option<IpNet>,
    allowed_location_ips: Vec<IpNet>,
}

/// Picks a segment's leader among its ready nodes (sorted by name): an
/// annotated leader with a public endpoint, then an annotated leader, then a
/// node with a public endpoint, then the first. Demoted nodes are passed
/// over unless all are demoted.
fn elect(nodes: &[Ready<'_>], demoted: &BTreeSet<String>) -> usize {
    let eligible: Vec<usize> = (0..nodes.len())
        .filter(|&i| !demoted.contains(&nodes[i].node.name))
        .collect();
    let pool = if eligible.is_empty() {
        (0..nodes.len()).collect()
    } else {
        eligible
    };
    let public = |i: usize| nodes[i].endpoint.ip().is_some_and(is_public);
    let leader = |i: usize| nodes[i].node.leader;
    pool.iter()
        .copied()
        .find(|&i| leader(i) && public(i))
        .or_else(|| pool.iter().copied().find(|&i| leader(i)))
        .or_else(|| pool.iter().copied().find(|&i| public(i)))
        .unwrap_or(pool[0])
}

impl Mesh {
    /// Builds the mesh from ready nodes and peers. `now` is unix seconds;
    /// nodes in `demoted` are passed over as leaders.
    pub fn build(
        nodes: &[Node],
        peers: &[Peer],
        settings: &Settings,
        now: i64,
        demoted: &BTreeSet<String>,
    ) -> Result<Mesh, TopologyError> {
        let mut warnings = Vec::new();

        // Duplicate names cannot be told apart: all are left out, so that
        // the answer does not depend on input order.
        let mut by_name: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
        for n in nodes {
            by_name.entry(&n.name).or_default().push(n);
        }
        let mut not_ready = BTreeMap::new();
        // Sorted by name: BTreeMap iteration.
        let mut ready = Vec::with_capacity(by_name.len());
        for (name, same) in by_name {
            if same.len() > 1 {
                warnings.push(Warning::DuplicateNode(name.to_owned()));
                continue;
            }
            let node = same[0];
            if let Err(reason) = node.readiness(now) {
                not_ready.insert(node.name.clone(), reason);
                continue;
            }
            let (Some(key), Some(endpoint), Some(pod_cidr)) =
                (node.key, node.endpoint.as_ref(), node.pod_cidr)
            else {
                continue; // readiness checked these
            };
            ready.push(Ready {
                node,
                key,
                endpoint,
                pod_cidr,
                private_ip: node.internal_ip,
                allowed_location_ips: node.allowed_location_ips.clone(),
            });
        }

        // Who owns which range: nodes, then peers, then allowed location IPs.
        // Room for every node's pod CIDR and private IP.
        let mut owned = ownership::Owned::new(settings, 2 * ready.len());
        let mut nodes_refused = BTreeMap::new();
        let ready = ownership::nodes(ready, &mut owned, &mut nodes_refused, &mut warnings);
        let (peers, peers_not_ready) = ready_peers(peers, &mut warnings);
        let mut peers_refused = BTreeSet::new();
        let peers = ownership::peers(
            peers,
            settings.allow_exit_peers,
            &mut owned,
            &mut peers_refused,
            &mut warnings,
        );
        let mut groups: BTreeMap<SegmentId, Vec<Ready<'_>>> = BTreeMap::new();
        for r in ready {
            let id = match (settings.granularity, r.private_ip) {
                (Granularity::Location, Some(_)) => SegmentId::Location(r.node.location.clone()),
                _ => SegmentId::Node(r.node.name.clone()),
            };
            // In name order, so members are sorted by name.
            groups.entry(id).or_default().push(r);
        }
        ownership::allowed_location_ips(&mut groups, &mut owned, &mut warnings);

        let mut segments = Vec::with_capacity(groups.len());
        let mut requests = Vec::with_capacity(groups.len());
        let mut members = BTreeMap::new();
        for (si, (id, ready)) in groups.into_iter().enumerate() {
            let leader = elect(&ready, demoted);
            let l = &ready[leader];
            let mut claims: Vec<IpAddr> =
                l.node.wireguard_ip.map(|w| w.addr()).into_iter().collect();
            claims.extend(
                ready
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != leader)
                    .filter_map(|(_, r)| r.node.wireguard_ip.map(|w| w.addr())),
            );
            requests.push(alloc::Request {
                identity: id.to_string(),
                claims,
            });
            let mut allowed_ips = Vec::new();
            let mut location_ips = BTreeSet::new();
            for r in &ready {
                allowed_ips.push(r.pod_cidr);
                if let Some(p) = r.private_ip {
                    allowed_ips.push(host_net(p.addr()));
                }
                location_ips.extend(r.allowed_location_ips.iter().copied());
            }
            for (i, r) in ready.iter().enumerate() {
                members.insert(
                    r.node.name.clone(),
                    Member {
                        segment: si,
                        index: i,
                        persistent_keepalive: r.node.persistent_keepalive,
                        discovered: r.node.discovered_endpoints.clone(),
                    },
                );
            }
            segments.push(Segment {
                id,
                nodes: ready
                    .iter()
                    .map(|r| SegmentNode {
                        name: r.node.name.clone(),
                        pod_cidr: r.pod_cidr,
                        private_ip: r.private_ip,
                        endpoint: r.endpoint.clone(),
                    })
                    .collect(),
                leader,
                key: l.key,
                endpoint: l.endpoint.clone(),
                persistent_keepalive: l.node.persistent_keepalive,
                wireguard_ip: IpAddr::from([0, 0, 0, 0]),
                allowed_ips,
                allowed_location_ips: location_ips.into_iter().collect(),
            });
        }
        let addresses = alloc::allocate(settings.subnet, &requests)?;
        for (s, ip) in segments.iter_mut().zip(addresses) {
            s.wireguard_ip = ip;
            s.allowed_ips.push(host_net(ip));
        }

        Ok(Mesh {
            settings: settings.clone(),
            segments,
            peers,
            not_ready,
            nodes_refused,
            peers_not_ready,
            peers_refused,
            warnings,
            members,
        })
    }

    /// The segment of a ready node.
    pub fn segment_of(&self, node: &str) -> Option<&Segment> {
        self.members.get(node).map(|m| &self.segments[m.segment])
    }

    /// A ready peer by name.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    fn member(&self, name: &str) -> Result<&Member, TopologyError> {
        self.members.get(name).ok_or_else(|| {
            if let Some(reason) = self.not_ready.get(name) {
                TopologyError::NodeNotReady {
                    name: name.to_owned(),
                    reason: *reason,
                }
            } else if let Some(why) = self.nodes_refused.get(name) {
                TopologyError::NodeRefused {
                    name: name.to_owned(),
                    reason: why.to_string(),
                }
            } else {
                TopologyError::UnknownNode(name.to_owned())
            }
        })
    }

    /// Endpoints learned by WireGuard, by public key: `local`'s own first,
    /// then every node's in segment order (Kilo's precedence).
    fn discovered(&self, local: Option<&str>) -> BTreeMap<PublicKey, SocketAddr> {
        let mut out = BTreeMap::new();
        if let Some(m) = local.and_then(|l| self.members.get(l)) {
            out.extend(m.discovered.iter().map(|(k, v)| (*k, *v)));
        }
        for s in &self.segments {
            for n in &s.nodes {
                if let Some(m) = self.members.get(&n.name) {
                    for (k, v) in &m.discovered {
                        out.entry(*k).or_insert(*v);
                    }
                }
            }
        }
        out
    }

    /// Computes what `hostname` must configure.
    pub fn topology(&self, hostname: &str) -> Result<Topology, TopologyError> {
        let me = self.member(hostname)?;
        let discovered = self.discovered(Some(hostname));
        let mine = &self.segments[me.segment];
        let my = &mine.nodes[me.index];
        let leader = me.index == mine.leader;
        let mut warnings = Vec::new();

        let peers =
            if leader {
                let mut raw: Vec<WgPeer> = self
                    .segments
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != me.segment)
                    .map(|(_, s)| segment_peer(s, &discovered, me.persistent_keepalive, None))
                    .collect();
                raw.extend(self.peers.iter().map(|p| {
                    external_peer(p, &discovered, me.persistent_keepalive, p.preshared_key)
                }));
                unique_peers(raw, Some(mine.key), &mut warnings)
            } else {
                Vec::new()
            };

        let routes = self.routes(me, &discovered);
        let masquerade = self.masquerade(me);
        let mut ipip_sources: Vec<IpAddr> = mine.private_ips().collect();
        ipip_sources.sort();
        ipip_sources.dedup();
        let senders = self.senders(me);
        let cluster_sources = self.cluster_sources(me.segment);

        let wireguard_ip = leader.then(|| {
            IpNet::new(mine.wireguard_ip, self.settings.subnet.prefix_len())
                .unwrap_or(host_net(mine.wireguard_ip))
        });
        Ok(Topology {
            hostname: hostname.to_owned(),
            segment: mine.id.clone(),
            segments: self.segments.clone(),
            leader,
            leader_name: mine.leader_node().name.clone(),
            pod_cidr: my.pod_cidr,
            private_ip: my.private_ip,
            wireguard_ip,
            interface: Interface {
                listen_port: self.settings.port.get(),
            },
            peers,
            routes,
            masquerade,
            service_cidrs: self.settings.service_cidrs.clone(),
            ipip_sources,
            senders,
            cluster_sources,
            encapsulate: self.settings.encapsulate,
            warnings,
        })
    }

    /// What the leader of segment `seg` forwards from WireGuard into it (and
    /// so sends on its LAN with sources not its own): every other segment's
    /// pod CIDRs, private IPs, WireGuard IP and allowed location IPs, the
    /// peers' allowed IPs, and its own WireGuard IP.
    pub fn relayed_into(&self, seg: usize) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        for (i, s) in self.segments.iter().enumerate() {
            out.insert(host_net(s.wireguard_ip));
            if i != seg {
                out.extend(s.allowed_ips.iter().copied());
                out.extend(s.allowed_location_ips.iter().copied());
            }
        }
        for p in &self.peers {
            out.extend(p.allowed_ips.iter().copied());
        }
        out
    }

    /// The other nodes of `me`'s segment that reach it over the LAN, with
    /// what each may send. None for a node without a private IP.
    fn senders(&self, me: &Member) -> Vec<Sender> {
        let mine = &self.segments[me.segment];
        let Some(my_ip) = mine.nodes[me.index].private_ip.map(|p| p.addr()) else {
            return Vec::new();
        };
        let mut out: Vec<Sender> = mine
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != me.index)
            .filter_map(|(i, n)| {
                let ip = n.private_ip?.addr();
                if ip == my_ip {
                    return None;
                }
                let mut sources = BTreeSet::from([n.pod_cidr, host_net(ip)]);
                if i == mine.leader {
                    sources.extend(self.relayed_into(me.segment));
                }
                Some(Sender {
                    name: n.name.clone(),
                    ip,
                    sources: sources.into_iter().collect(),
                })
            })
            .collect();
        out.sort_by_key(|s| s.ip);
        out.dedup_by_key(|s| s.ip);
        out
    }

    /// Every cluster range (see [`Topology::cluster_sources`]) seen from segment `seg`.
    fn cluster_sources(&self, seg: usize) -> Vec<IpNet> {
        let mut out = BTreeSet::new();
        for (i, s) in self.segments.iter().enumerate() {
            out.extend(s.allowed_ips.iter().copied());
            out.insert(host_net(s.wireguard_ip));
            if i != seg {
                out.extend(s.allowed_location_ips.iter().copied());
            }
        }
        for p in &self.peers {
            out.extend(
                p.allowed_ips
                    .iter()
                    .filter(|c| c.prefix_len() != 0)
                    .copied(),
            );
        }
        out.into_iter().collect()
    }

    fn routes(&self, me: &Member, discovered: &BTreeMap<PublicKey, SocketAddr>) -> Vec<Route> {
        let mine = &self.segments[me.segment];
        let my = &mine.nodes[me.index];
        let my_ip = my.private_ip;
        let encapsulate = |gw: IpAddr| match self.settings.encapsulate {
            Encapsulate::Never => false,
            Encapsulate::Always => true,
            Encapsulate::CrossSubnet => !my_ip.is_some_and(|p| p.contains(&gw)),
        };
        // The first route to a destination wins; this node's own pod CIDR first.
        let mut out: BTreeMap<IpNet, RouteKind> = BTreeMap::new();
        let mut add = |dst: IpNet, kind: RouteKind| {
            out.entry(dst).or_insert(kind);
        };
        add(my.pod_cidr, RouteKind::Local);

        // Members of this segment are reached directly, by private IP.
        let local_routes = |add: &mut dyn FnMut(IpNet, RouteKind)| {
            if my_ip.is_none() {
                return;
            }
            for n in &mine.nodes {
                let Some(p) = n.private_ip else { continue };
                if n.name == my.name || my_ip.is_some_and(|m| m.addr() == p.addr()) {
                    continue;
                }
                add(
                    n.pod_cidr,
                    RouteKind::Node {
                        gateway: p.addr(),
                        encapsulate: encapsulate(p.addr()),
                    },
                );
            }
        };

        if me.index != mine.leader {
            // Everything outside the segment goes through the leader's private IP.
            let Some(gw) = mine.leader_node().private_ip.map(|p| p.addr()) else {
                return out
                    .into_iter()
                    .map(|(dst, kind)| Route { dst, kind })
                    .collect();
            };
            let via_leader = RouteKind::Node {
                gateway: gw,
                encapsulate: encapsulate(gw),
            };
            for (i, s) in self.segments.iter().enumerate() {
                add(host_net(s.wireguard_ip), via_leader.clone());
                if i == me.segment {
                    local_routes(&mut add);
                    continue;
                }
                for n in &s.nodes {
                    add(n.pod_cidr, via_leader.clone());
                }
                for p in s.private_ips() {
                    add(host_net(p), via_leader.clone());
                }
                for c in &s.allowed_location_ips {
                    add(*c, via_leader.clone());
                }
            }
            for p in &self.peers {
                for c in &p.allowed_ips {
                    add(*c, via_leader.clone());
                }
            }
        } else {
            for (i, s) in self.segments.iter().enumerate() {
                if i == me.segment {
                    local_routes(&mut add);
                    continue;
                }
                let via = RouteKind::WireGuard {
                    gateway: Some(s.wireguard_ip),
                };
                // A node reachable only at its endpoint address cannot be
                // reached through a tunnel to that same address.
                let endpoint_ip =
                    updated_endpoint(&s.endpoint, s.key, s.persistent_keepalive, discovered)
                        .and_then(|e| e.ip());
                for n in &s.nodes {
                    add(n.pod_cidr, via.clone());
                    if let Some(p) = n.private_ip
                        && Some(p.addr()) != endpoint_ip
                    {
                        add(host_net(p.addr()), via.clone());
                    }
                }
                for c in &s.allowed_location_ips {
                    add(*c, via.clone());
                }
            }
            for p in &self.peers {
                for c in &p.allowed_ips {
                    add(*c, RouteKind::WireGuard { gateway: None });
                }
            }
        }
        out.into_iter()
            .map(|(dst, kind)| Route { dst, kind })
            .collect()
    }

    fn masquerade(&self, me: &Member) -> Masquerade {
        let mine = &self.segments[me.segment];
        let my = &mine.nodes[me.index];
        let mut sources = BTreeSet::from([my.pod_cidr]);
        let mut exempt = BTreeSet::new();
        for s in &self.segments {
            exempt.insert(host_net(s.wireguard_ip));
            exempt.extend(s.allowed_ips.iter().copied());
        }
        for p in &self.peers {
            sources.extend(p.allowed_ips.iter().copied());
            exempt.extend(p.allowed_ips.iter().copied());
        }
        exempt.extend(self.settings.service_cidrs.iter().copied());
        Masquerade {
            sources: sources.into_iter().collect(),
            exempt: exempt.into_iter().collect(),
            always: mine.allowed_location_ips.clone(),
        }
    }

    /// `hostname`'s WireGuard configuration, as `weftctl showconf node`
    /// shows it: only leaders have one.
    pub fn node_conf(&self, hostname: &str) -> Result<WgConf, TopologyError> {
        let t = self.topology(hostname)?;
        if !t.leader {
            return Err(TopologyError::NotLeader {
                name: t.hostname,
                segment: t.segment,
                leader: t.leader_name,
            });
        }
        Ok(WgConf {
            listen_port: Some(t.interface.listen_port),
            peers: t.peers,
        })
    }

    /// `hostname`'s segment as a peer of some other WireGuard interface
    /// (`showconf node --as-peer`): its leader's key and endpoint, and the
    /// segment's allowed IPs. Only a leader can be shown so.
    pub fn node_as_peer(&self, hostname: &str) -> Result<WgPeer, TopologyError> {
        let me = self.member(hostname)?;
        let s = &self.segments[me.segment];
        if me.index != s.leader {
            return Err(TopologyError::NotLeader {
                name: hostname.to_owned(),
                segment: s.id.clone(),
                leader: s.leader_node().name.clone(),
            });
        }
        Ok(WgPeer {
            public_key: s.key,
            endpoint: Some(s.endpoint.clone()),
            allowed_ips: s.allowed_ips.clone(),
            persistent_keepalive: None,
            preshared_key: None,
            origin: PeerOrigin::Segment(s.id.clone()),
        })
    }

    fn ready_peer(&self, name: &str) -> Result<&Peer, TopologyError> {
        self.peer(name).ok_or_else(|| {
            if self.peers_not_ready.contains(name) {
                TopologyError::PeerNotReady(name.to_owned())
            } else if self.peers_refused.contains(name) {
                TopologyError::PeerRefused(name.to_owned())
            } else {
                TopologyError::UnknownPeer(name.to_owned())
            }
        })
    }

    /// The configuration an external peer needs (`showconf peer`): every
    /// segment's leader and the other peers, with the peer's own keepalive,
    /// and its preshared key towards the segments.
    pub fn peer_conf(&self, name: &str) -> Result<WgConf, TopologyError> {
        let me = self.ready_peer(name)?;
        let discovered = self.discovered(None);
        let mut raw: Vec<WgPeer> = self
            .segments
            .iter()
            .map(|s| segment_peer(s, &discovered, me.persistent_keepalive, me.preshared_key))
            .collect();
        raw.extend(
            self.peers
                .iter()
                .filter(|p| p.name != name)
                .map(|p| external_peer(p, &discovered, me.persistent_keepalive, None)),
        );
        let peers = unique_peers(raw, Some(me.public_key), &mut Vec::new());
        Ok(WgConf {
            listen_port: None,
            peers,
        })
    }

    /// An external peer as a peer (`showconf peer --as-peer`).
    pub fn peer_as_peer(&self, name: &str) -> Result<WgPeer, TopologyError> {
        let p = self.ready_peer(name)?;
        Ok(WgPeer {
            public_key: p.public_key,
            endpoint: p.endpoint.clone(),
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive,
            preshared_key: p.preshared_key,
            origin: PeerOrigin::External(p.name.clone()),
        })
    }
}

/// Builds the mesh and `hostname`'s topology in one call.
pub fn compute(
    nodes: &[Node],
    peers: &[Peer],
    settings: &Settings,
    hostname: &str,
    now: i64,
    demoted: &BTreeSet<String>,
) -> Result<Topology, TopologyError> {
    Mesh::build(nodes, peers, settings, now, demoted)?.topology(hostname)
}

/// NAT traversal as Kilo does it: for a peer that keeps its NAT mapping
/// alive (a keepalive), the endpoint WireGuard saw its packets come from
/// beats the published one.
fn updated_endpoint(
    endpoint: &Endpoint,
    key: PublicKey,
    keepalive: Option<Keepalive>,
    discovered: &BTreeMap<PublicKey, SocketAddr>,
) -> Option<Endpoint> {
    updated_optional(Some(endpoint), key, keepalive, discovered)
}

fn updated_optional(
    endpoint: Option<&Endpoint>,
    key: PublicKey,
    keepalive: Option<Keepalive>,
    discovered: &BTreeMap<PublicKey, SocketAddr>,
) -> Option<Endpoint> {
    if keepalive.is_some()
        && let Some(found) = discovered
            .get(&key)
            .and_then(|a| Endpoint::from_socket_addr(*a))
    {
        return Some(found);
    }
    endpoint.cloned()
}

fn segment_peer(
    s: &Segment,
    discovered: &BTreeMap<PublicKey, SocketAddr>,
    keepalive: Option<Keepalive>,
    psk: Option<Key>,
) -> WgPeer {
    let mut allowed_ips = s.allowed_ips.clone();
    allowed_ips.extend(s.allowed_location_ips.iter().copied());
    WgPeer {
        public_key: s.key,
        endpoint: updated_endpoint(&s.endpoint, s.key, s.persistent_keepalive, discovered),
        allowed_ips,
        persistent_keepalive: keepalive,
        preshared_key: psk,
        origin: PeerOrigin::Segment(s.id.clone()),
    }
}

fn external_peer(
    p: &Peer,
    discovered: &BTreeMap<PublicKey, SocketAddr>,
    keepalive: Option<Keepalive>,
    psk: Option<Key>,
) -> WgPeer {
    WgPeer {
        public_key: p.public_key,
        endpoint: updated_optional(
            p.endpoint.as_ref(),
            p.public_key,
            p.persistent_keepalive,
            discovered,
        ),
        allowed_ips: p.allowed_ips.clone(),
        persistent_keepalive: keepalive,
        preshared_key: psk,
        origin: PeerOrigin::External(p.name.clone()),
    }
}

/// One WireGuard peer per key and one peer per allowed IP, first wins: a
/// duplicate would make WireGuard move it between peers on every update.
/// `own` (the configured interface's key) is never a peer.
fn unique_peers(
    raw: Vec<WgPeer>,
    own: Option<PublicKey>,
    warnings: &mut Vec<Warning>,
) -> Vec<WgPeer> {
    let mut keys: BTreeMap<PublicKey, PeerOrigin> = BTreeMap::new();
    let mut ips: BTreeMap<IpNet, PeerOrigin> = BTreeMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for mut p in raw {
        if Some(p.public_key) == own {
            continue;
        }
        if let Some(kept) = keys.get(&p.public_key) {
            warnings.push(Warning::DuplicateKey {
                key: p.public_key,
                kept: kept.clone(),
                dropped: p.origin.clone(),
            });
            continue;
        }
        keys.insert(p.public_key, p.origin.clone());
        let mut allowed = Vec::with_capacity(p.allowed_ips.len());
        for c in std::mem::take(&mut p.allowed_ips) {
            match ips.get(&c) {
                Some(kept) if *kept == p.origin => {} // repeated within one peer
                Some(kept) => warnings.push(Warning::AllowedIpTaken {
                    cidr: c,
                    kept: kept.clone(),
                    dropped: p.origin.clone(),
                }),
                None => {
                    ips.insert(c, p.origin.clone());
                    allowed.push(c);
                }
            }
        }
        p.allowed_ips = allowed;
        out.push(p);
    }
    out
}

/// Peers with allowed IPs, sorted by name (duplicated names left out); their
/// allowed IPs are then given to their owners ([`ownership::peers`]).
fn ready_peers<'a>(
    peers: &'a [Peer],
    warnings: &mut Vec<Warning>,
) -> (Vec<&'a Peer>, BTreeSet<String>) {
    let mut by_name: BTreeMap<&str, Vec<&Peer>> = BTreeMap::new();
    for p in peers {
        by_name.entry(&p.name).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut not_ready = BTreeSet::new();
    for (name, same) in by_name {
        if same.len() > 1 {
            warnings.push(Warning::DuplicatePeer(name.to_owned()));
            continue;
        }
        let p = same[0];
        if p.is_ready() {
            out.push(p);
        } else {
            not_ready.insert(p.name.clone());
        }
    }
    (out, not_ready)
}
