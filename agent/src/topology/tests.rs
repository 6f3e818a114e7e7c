//! Kilo's topology behaviours, table-driven, for leaders and non-leaders in
//! every granularity, with external peers and allowed location IPs; then
//! what weft does better (stable WireGuard IPs, diffs, demotion).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::*;
use crate::model::{
    Encapsulate, Endpoint, Granularity, Keepalive, Key, Node, NotReady, Peer, PublicKey, Settings,
};

pub(super) const NOW: i64 = 1_700_000_000;

pub(super) fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}
pub(super) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
pub(super) fn ep(s: &str) -> Endpoint {
    s.parse().unwrap()
}
pub(super) fn ka(s: u16) -> Option<Keepalive> {
    Keepalive::from_secs(s)
}
pub(super) fn psk(n: u8) -> Key {
    Key::from_bytes([n; 32])
}

pub(super) fn node(
    name: &str,
    location: &str,
    endpoint: &str,
    internal: Option<&str>,
    pod: &str,
    k: u8,
) -> Node {
    Node {
        pod_cidr: Some(net(pod)),
        location: location.into(),
        key: Some(key(k)),
        endpoint: Some(ep(endpoint)),
        internal_ip: internal.map(net),
        last_seen: Some(NOW),
        ..Node::named(name)
    }
}

pub(super) fn peer(name: &str, allowed: &[&str], k: u8) -> Peer {
    Peer {
        name: name.into(),
        allowed_ips: allowed.iter().map(|a| net(a)).collect(),
        public_key: key(k),
        endpoint: None,
        persistent_keepalive: None,
        preshared_key: None,
    }
}

/// Kilo's test cluster, made unambiguous: location 1 holds a, and d which
/// has no private IP (so is alone); location 2 holds b, c (another private
/// subnet) and e (b's private subnet); b has an allowed location IP.
pub(super) fn fixture() -> (Vec<Node>, Vec<Peer>) {
    let mut a = node(
        "a",
        "1",
        "10.1.0.1:51820",
        Some("192.168.0.1/24"),
        "10.2.1.0/24",
        1,
    );
    a.persistent_keepalive = ka(25);
    let mut b = node(
        "b",
        "2",
        "10.1.0.2:51820",
        Some("192.168.1.1/24"),
        "10.2.2.0/24",
        2,
    );
    b.allowed_location_ips = vec![net("192.168.178.3/32")];
    let c = node(
        "c",
        "2",
        "10.1.0.3:51820",
        Some("192.168.2.2/24"),
        "10.2.3.0/24",
        3,
    );
    let d = node("d", "1", "10.1.0.4:51820", None, "10.2.4.0/24", 4);
    let e = node(
        "e",
        "2",
        "10.1.0.5:51820",
        Some("192.168.1.3/24"),
        "10.2.5.0/24",
        5,
    );
    let mut p1 = peer("p1", &["10.5.0.1/32", "10.5.0.2/32"], 11);
    p1.preshared_key = Some(psk(7));
    p1.persistent_keepalive = ka(10);
    let mut p2 = peer("p2", &["10.5.0.3/32"], 12);
    p2.endpoint = Some(ep("192.0.2.50:51820"));
    (vec![a, b, c, d, e], vec![p1, p2])
}

pub(super) fn settings(g: Granularity, enc: Encapsulate) -> Settings {
    Settings {
        granularity: g,
        encapsulate: enc,
        ..Settings::default()
    }
}

pub(super) fn build(nodes: &[Node], peers: &[Peer], s: &Settings) -> Mesh {
    Mesh::build(nodes, peers, s, NOW, &BTreeSet::new()).unwrap()
}

pub(super) fn loc(l: &str) -> SegmentId {
    SegmentId::Location(l.into())
}
pub(super) fn alone(n: &str) -> SegmentId {
    SegmentId::Node(n.into())
}

pub(super) fn wg(mesh: &Mesh, id: &SegmentId) -> IpAddr {
    mesh.segments
        .iter()
        .find(|s| &s.id == id)
        .unwrap()
        .wireguard_ip
}
pub(super) fn wg32(mesh: &Mesh, id: &SegmentId) -> IpNet {
    IpNet::from(wg(mesh, id))
}

pub(super) fn sorted(mut r: Vec<Route>) -> Vec<Route> {
    r.sort();
    r
}
pub(super) fn route(dst: &str, kind: RouteKind) -> Route {
    Route {
        dst: net(dst),
        kind,
    }
}
pub(super) fn via_wg(gw: IpAddr) -> RouteKind {
    RouteKind::WireGuard { gateway: Some(gw) }
}
pub(super) fn via_node(gw: &str, encapsulate: bool) -> RouteKind {
    RouteKind::Node {
        gateway: ip(gw),
        encapsulate,
    }
}

#[test]
fn segments_in_location_granularity() {
    let (nodes, peers) = fixture();
    let m = build(&nodes, &peers, &Settings::default());
    let ids: Vec<_> = m.segments.iter().map(|s| s.id.clone()).collect();
    // d has no private IP: alone, though in location 1.
    assert_eq!(ids, vec![loc("1"), loc("2"), alone("d")]);
    let names = |s: &Segment| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&m.segments[0]), ["a"]);
    assert_eq!(names(&m.segments[1]), ["b", "c", "e"]);
    assert_eq!(names(&m.segments[2]), ["d"]);
    let s2 = &m.segments[1];
    assert_eq!(s2.leader_node().name, "b");
    assert_eq!(
        (s2.key, s2.endpoint.clone()),
        (key(2), ep("10.1.0.2:51820"))
    );
    assert_eq!(
        s2.allowed_ips,
        vec![
            net("10.2.2.0/24"),
            net("192.168.1.1/32"),
            net("10.2.3.0/24"),
            net("192.168.2.2/32"),
            net("10.2.5.0/24"),
            net("192.168.1.3/32"),
            wg32(&m, &loc("2")),
        ]
    );
    assert_eq!(s2.allowed_location_ips, vec![net("192.168.178.3/32")]);
    assert_eq!(
        m.segments[2].allowed_ips,
        vec![net("10.2.4.0/24"), wg32(&m, &alone("d"))]
    );
    // The leader's keepalive is the segment's.
    assert_eq!(m.segments[0].persistent_keepalive, ka(25));
    // Every WireGuard IP is a distinct host of the subnet.
    let wgs: BTreeSet<IpAddr> = m.segments.iter().map(|s| s.wireguard_ip).collect();
    assert_eq!(wgs.len(), 3);
    assert!(
        wgs.iter()
            .all(|w| m.settings.subnet.contains(w) && *w != m.settings.subnet.network())
    );
}

#[test]
fn segments_in_full_granularity() {
    let (nodes, peers) = fixture();
    let m = build(
        &nodes,
        &peers,
        &settings(Granularity::Full, Encapsulate::Always),
    );
    let ids: Vec<_> = m.segments.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        ids,
        vec![alone("a"), alone("b"), alone("c"), alone("d"), alone("e")]
    );
    for s in &m.segments {
        assert_eq!((s.nodes.len(), s.leader), (1, 0));
    }
    let b = &m.segments[1];
    assert_eq!(
        b.allowed_ips,
        vec![
            net("10.2.2.0/24"),
            net("192.168.1.1/32"),
            wg32(&m, &alone("b"))
        ]
    );
    assert_eq!(b.allowed_location_ips, vec![net("192.168.178.3/32")]);
}

#[test]
fn mixed_granularity_by_unique_locations() {
    let (mut nodes, peers) = fixture();
    // c alone in its own location: a segment of its own, still a location.
    nodes[2].location = "c-only".into();
    let m = build(&nodes, &peers, &Settings::default());
    let ids: Vec<_> = m.segments.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, vec![loc("1"), loc("2"), loc("c-only"), alone("d")]);
    assert!(m.topology("c").unwrap().leader);
}

/// Leader election: annotated leader with a public endpoint, annotated
/// leader, public endpoint, first by name; demoted nodes passed over.
#[test]
fn leader_election() {
    struct Case {
        name: &'static str,
        // (node, endpoint, leader annotation)
        nodes: &'static [(&'static str, &'static str, bool)],
        demoted: &'static [&'static str],
        leader: &'static str,
    }
    let cases = [
        Case {
            name: "first by name",
            nodes: &[("n2", "10.0.0.2:1", false), ("n1", "10.0.0.1:1", false)],
            demoted: &[],
            leader: "n1",
        },
        Case {
            name: "public beats first",
            nodes: &[
                ("n1", "10.0.0.1:1", false),
                ("n2", "198.51.100.2:1", false),
                ("n3", "198.51.100.3:1", false),
            ],
            demoted: &[],
            leader: "n2",
        },
        Case {
            name: "annotated beats public",
            nodes: &[("n1", "198.51.100.1:1", false), ("n2", "10.0.0.2:1", true)],
            demoted: &[],
            leader: "n2",
        },
        Case {
            name: "annotated and public beats annotated",
            nodes: &[
                ("n1", "10.0.0.1:1", true),
                ("n2", "198.51.100.2:1", true),
                ("n3", "198.51.100.3:1", false),
            ],
            demoted: &[],
            leader: "n2",
        },
        Case {
            name: "names and private or shared addresses are not public",
            nodes: &[
                ("n1", "172.16.0.1:1", false),
                ("n2", "vpn.example.com:1", false),
                ("n3", "100.64.0.1:1", false),
                ("n4", "[fd00::1]:1", false),
                ("n5", "[2001:db8::1]:1", false),
            ],
            demoted: &[],
            leader: "n5",
        },
        Case {
            name: "demoted passed over",
            nodes: &[
                ("n1", "198.51.100.1:1", true),
                ("n2", "10.0.0.2:1", false),
                ("n3", "198.51.100.3:1", false),
            ],
            demoted: &["n1"],
            leader: "n3",
        },
        Case {
            name: "all demoted: elected as usual",
            nodes: &[("n1", "10.0.0.1:1", false), ("n2", "198.51.100.2:1", false)],
            demoted: &["n1", "n2"],
            leader: "n2",
        },
    ];
    for c in cases {
        let nodes: Vec<Node> = c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (n, e, l))| {
                let mut node = node(
                    n,
                    "x",
                    e,
                    Some(&format!("192.168.9.{}/24", i + 1)),
                    &format!("10.2.{i}.0/24"),
                    i as u8 + 1,
                );
                node.leader = *l;
                node
            })
            .collect();
        let demoted: BTreeSet<String> = c.demoted.iter().map(|d| d.to_string()).collect();
        let m = Mesh::build(&nodes, &[], &Settings::default(), NOW, &demoted).unwrap();
        assert_eq!(m.segments.len(), 1, "{}", c.name);
        assert_eq!(m.segments[0].leader_node().name, c.leader, "{}", c.name);
    }
}

#[test]
fn stale_nodes_are_not_in_the_mesh_and_cannot_lead() {
    let (mut nodes, peers) = fixture();
    nodes[1].leader = true; // b, leader of location 2...
    nodes[1].last_seen = Some(NOW - 60); // ...but stale
    nodes[2].last_seen = Some(NOW - 59); // c: still ready
    let m = build(&nodes, &peers, &Settings::default());
    assert_eq!(m.segment_of("c").unwrap().leader_node().name, "c");
    assert_eq!(m.segment_of("b"), None);
    assert_eq!(m.not_ready.get("b"), Some(&NotReady::Stale(60)));
    assert_eq!(
        m.topology("b"),
        Err(TopologyError::NodeNotReady {
            name: "b".into(),
            reason: NotReady::Stale(60)
        })
    );
    assert_eq!(
        m.topology("zz"),
        Err(TopologyError::UnknownNode("zz".into()))
    );
}

#[test]
fn wireguard_peers_of_a_leader() {
    let (nodes, peers) = fixture();
    let m = build(&nodes, &peers, &Settings::default());
    let t = m.topology("a").unwrap();
    assert!(t.leader);
    assert_eq!(
        t.wireguard_ip,
        Some(IpNet::new(wg(&m, &loc("1")), 16).unwrap())
    );
    assert_eq!(t.interface, Interface { listen_port: 51820 });
    // Every peer gets a's own keepalive (Kilo); only external peers a preshared key.
    let want = vec![
        WgPeer {
            public_key: key(2),
            endpoint: Some(ep("10.1.0.2:51820")),
            allowed_ips: vec![
                net("10.2.2.0/24"),
                net("192.168.1.1/32"),
                net("10.2.3.0/24"),
                net("192.168.2.2/32"),
                net("10.2.5.0/24"),
                net("192.168.1.3/32"),
                wg32(&m, &loc("2")),
                net("192.168.178.3/32"),
            ],
            persistent_keepalive: ka(25),
            preshared_key: None,
            origin: PeerOrigin::Segment(loc("2")),
        },
        WgPeer {
            public_key: key(4),
            endpoint: Some(ep("10.1.0.4:51820")),
            allowed_ips: vec![net("10.2.4.0/24"), wg32(&m, &alone("d"))],
            persistent_keepalive: ka(25),
            preshared_key: None,
            origin: PeerOrigin::Segment(alone("d")),
        },
        WgPeer {
            public_key: key(11),
            endpoint: None,
            allowed_ips: vec![net("10.5.0.1/32"), net("10.5.0.2/32")],
            persistent_keepalive: ka(25),
            preshared_key: Some(psk(7)),
            origin: PeerOrigin::External("p1".into()),
        },
        WgPeer {
            public_key: key(12),
            endpoint: Some(ep("192.0.2.50:51820")),
            allowed_ips: vec![net("10.5.0.3/32")],
            persistent_keepalive: ka(25),
            preshared_key: None,
            origin: PeerOrigin::External("p2".into()),
        },
    ];
    assert_eq!(t.peers, want);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn non_leaders_have_no_wireguard_peers_nor_address() {
    let (nodes, peers) = fixture();
    for g in [Granularity::Location] {
        let m = build(&nodes, &peers, &settings(g, Encapsulate::Always));
        for name in ["c", "e"] {
            let t = m.topology(name).unwrap();
            assert!(!t.leader);
            assert_eq!(t.leader_name, "b");
            assert_eq!(t.segment, loc("2"));
            assert!(t.peers.is_empty());
            assert_eq!(t.wireguard_ip, None);
            assert_eq!(
                m.node_conf(name),
                Err(TopologyError::NotLeader {
                    name: name.into(),
                    segment: loc("2"),
                    leader: "b".into()
                })
            );
        }
    }
    // In full granularity everyone leads.
    let m = build(
        &nodes,
        &peers,
        &settings(Granularity::Full, Encapsulate::Always),
    );
    for n in &nodes {
        let t = m.topology(&n.name).unwrap();
        assert!(t.leader && t.wireguard_ip.is_some());
        assert_eq!(t.peers.len(), 4 + 2);
    }
}

/// Routes, per node and encapsulation, as Kilo's `Routes` computes them
/// (with "local" routes always on).
#[test]
fn routes() {
    let (nodes, peers) = fixture();
    let peer_routes = |kind: RouteKind| {
        ["10.5.0.1/32", "10.5.0.2/32", "10.5.0.3/32"]
            .map(|d| route(d, kind.clone()))
            .to_vec()
    };
    for enc in [
        Encapsulate::Never,
        Encapsulate::CrossSubnet,
        Encapsulate::Always,
    ] {
        let m = build(&nodes, &peers, &settings(Granularity::Location, enc));
        let (w1, w2, wd) = (wg(&m, &loc("1")), wg(&m, &loc("2")), wg(&m, &alone("d")));
        let on = |cross: bool| match enc {
            Encapsulate::Never => false,
            Encapsulate::Always => true,
            Encapsulate::CrossSubnet => cross,
        };

        // a: leader, alone in location 1.
        let mut want = vec![
            route("10.2.1.0/24", RouteKind::Local),
            route("10.2.2.0/24", via_wg(w2)),
            route("10.2.3.0/24", via_wg(w2)),
            route("10.2.5.0/24", via_wg(w2)),
            route("192.168.1.1/32", via_wg(w2)),
            route("192.168.2.2/32", via_wg(w2)),
            route("192.168.1.3/32", via_wg(w2)),
            route("192.168.178.3/32", via_wg(w2)),
            route("10.2.4.0/24", via_wg(wd)),
        ];
        want.extend(peer_routes(RouteKind::WireGuard { gateway: None }));
        assert_eq!(m.topology("a").unwrap().routes, sorted(want), "a {enc}");

        // b: leader of location 2; c is in another private subnet, e in b's.
        let mut want = vec![
            route("10.2.2.0/24", RouteKind::Local),
            route("10.2.3.0/24", via_node("192.168.2.2", on(true))),
            route("10.2.5.0/24", via_node("192.168.1.3", on(false))),
            route("10.2.1.0/24", via_wg(w1)),
            route("192.168.0.1/32", via_wg(w1)),
            route("10.2.4.0/24", via_wg(wd)),
        ];
        want.extend(peer_routes(RouteKind::WireGuard { gateway: None }));
        assert_eq!(m.topology("b").unwrap().routes, sorted(want), "b {enc}");

        // c and e: through their leader b's private IP, except to members.
        for (me, cross_to_leader) in [("c", true), ("e", false)] {
            let leader = via_node("192.168.1.1", on(cross_to_leader));
            let mut want = vec![
                route(&IpNet::from(w1).to_string(), leader.clone()),
                route(&IpNet::from(w2).to_string(), leader.clone()),
                route(&IpNet::from(wd).to_string(), leader.clone()),
                route("10.2.2.0/24", via_node("192.168.1.1", on(cross_to_leader))),
                route("10.2.1.0/24", leader.clone()),
                route("192.168.0.1/32", leader.clone()),
                route("10.2.4.0/24", leader.clone()),
            ];
            if me == "c" {
                want.push(route("10.2.3.0/24", RouteKind::Local));
                want.push(route("10.2.5.0/24", via_node("192.168.1.3", on(true))));
            } else {
                want.push(route("10.2.5.0/24", RouteKind::Local));
                want.push(route("10.2.3.0/24", via_node("192.168.2.2", on(true))));
            }
            want.extend(peer_routes(leader.clone()));
            assert_eq!(m.topology(me).unwrap().routes, sorted(want), "{me} {enc}");
        }

        // d: leader without a private IP.
        let mut want = vec![
            route("10.2.4.0/24", RouteKind::Local),
            route("10.2.1.0/24", via_wg(w1)),
            route("192.168.0.1/32", via_wg(w1)),
            route("10.2.2.0/24", via_wg(w2)),
            route("10.2.3.0/24", via_wg(w2)),
            route("10.2.5.0/24", via_wg(w2)),
            route("192.168.1.1/32", via_wg(w2)),
            route("192.168.2.2/32", via_wg(w2)),
            route("192.168.1.3/32", via_wg(w2)),
            route("192.168.178.3/32", via_wg(w2)),
        ];
        want.extend(peer_routes(RouteKind::WireGuard { gateway: None }));
        assert_eq!(m.topology("d").unwrap().routes, sorted(want), "d {enc}");
    }
}

#[test]
fn routes_in_full_granularity_all_go_through_wireguard() {
    let (nodes, peers) = fixture();
    let m = build(
        &nodes,
        &peers,
        &settings(Granularity::Full, Encapsulate::Always),
    );
    let w = |n: &str| wg(&m, &alone(n));
    let mut want = vec![
        route("10.2.3.0/24", RouteKind::Local),
        route("10.2.1.0/24", via_wg(w("a"))),
        route("192.168.0.1/32", via_wg(w("a"))),
        route("10.2.2.0/24", via_wg(w("b"))),
        route("192.168.1.1/32", via_wg(w("b"))),
        route("192.168.178.3/32", via_wg(w("b"))),
        route("10.2.4.0/24", via_wg(w("d"))),
        route("10.2.5.0/24", via_wg(w("e"))),
        route("192.168.1.3/32", via_wg(w("e"))),
    ];
    want.extend(
        ["10.5.0.1/32", "10.5.0.2/32", "10.5.0.3/32"]
            .map(|d| route(d, RouteKind::WireGuard { gateway: None })),
    );
    assert_eq!(m.topology("c").unwrap().routes, sorted(want));
}

#[test]
fn no_tunnel_route_to_a_private_ip_that_is_the_endpoint() {
    let (mut nodes, peers) = fixture();
    // b is reachable only at its private address.
    nodes[1].endpoint = Some(ep("192.168.1.1:51820"));
    let m = build(&nodes, &peers, &Settings::default());
    let t = m.topology("a").unwrap();
    assert!(!t.routes.iter().any(|r| r.dst == net("192.168.1.1/32")));
    assert!(t.routes.iter().any(|r| r.dst == net("192.168.2.2/32")));
}

#[test]
fn masquerade_and_ipip_sources() {
    let (nodes, peers) = fixture();
    let s = Settings {
        service_cidrs: vec![net("10.96.0.0/12")],
        ..Settings::default()
    };
    let m = build(&nodes, &peers, &s);
    let t = m.topology("c").unwrap();
    assert_eq!(
        t.masquerade.sources,
        vec![
            net("10.2.3.0/24"),
            net("10.5.0.1/32"),
            net("10.5.0.2/32"),
            net("10.5.0.3/32")
        ]
    );
    let mut exempt: Vec<IpNet> = [
        "10.2.1.0/24",
        "10.2.2.0/24",
        "10.2.3.0/24",
        "10.2.4.0/24",
        "10.2.5.0/24",
        "192.168.0.1/32",
        "192.168.1.1/32",
        "192.168.2.2/32",
        "192.168.1.3/32",
        "10.5.0.1/32",
        "10.5.0.2/32",
        "10.5.0.3/32",
        "10.96.0.0/12",
    ]
    .map(net)
    .to_vec();
    exempt.extend(m.segments.iter().map(|s| IpNet::from(s.wireguard_ip)));
    exempt.sort();
    assert_eq!(t.masquerade.exempt, exempt);
    // Left to kube-proxy, with their replies (the datapath's WEFT_SERVICE_CIDRS).
    assert_eq!(t.service_cidrs, vec![net("10.96.0.0/12")]);
    let none = build(&nodes, &peers, &Settings::default());
    assert!(none.topology("c").unwrap().service_cidrs.is_empty());
    // Hosts at an allowed location IP do not know the pods: always masqueraded in their location.
    assert_eq!(t.masquerade.always, vec![net("192.168.178.3/32")]);
    assert!(m.topology("a").unwrap().masquerade.always.is_empty());
    assert_eq!(
        t.ipip_sources,
        vec![ip("192.168.1.1"), ip("192.168.1.3"), ip("192.168.2.2")]
    );
    assert!(m.topology("d").unwrap().ipip_sources.is_empty());
}

#[test]
fn allowed_location_ips_that_overlap_are_dropped() {
    struct Case {
        name: &'static str,
        ips: &'static [&'static str],
        kept: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "distinct",
            ips: &["172.30.0.0/24"],
            kept: &["172.30.0.0/24"],
        },
        Case {
            name: "overlaps a pod CIDR",
            ips: &["10.2.0.0/16", "172.20.0.0/16"],
            kept: &["172.20.0.0/16"],
        },
        Case {
            name: "contains a private IP",
            ips: &["192.168.0.0/16"],
            kept: &[],
        },
        Case {
            name: "overlaps a peer",
            ips: &["10.5.0.0/24"],
            kept: &[],
        },
        Case {
            name: "overlaps its own segment's IPs",
            ips: &["10.2.3.0/25"],
            kept: &[],
        },
        // Kilo keeps these unless they hit an assigned WireGuard IP.
        Case {
            name: "inside the WireGuard subnet",
            ips: &["10.4.0.0/24", "10.4.200.200/32"],
            kept: &[],
        },
        Case {
            name: "contains the WireGuard subnet",
            ips: &["10.0.0.0/8"],
            kept: &[],
        },
        Case {
            name: "inside a service CIDR",
            ips: &["10.96.0.10/32"],
            kept: &[],
        },
        Case {
            name: "covers every address",
            ips: &["0.0.0.0/0", "::/0"],
            kept: &[],
        },
        Case {
            name: "a node's address",
            ips: &["192.168.1.3/32"],
            kept: &[],
        },
        Case {
            name: "on a node's LAN, not on its address",
            ips: &["192.168.0.77/32", "192.168.1.0/25"],
            kept: &["192.168.0.77/32"],
        },
    ];
    let s = Settings {
        service_cidrs: vec![net("10.96.0.0/12")],
        ..Settings::default()
    };
    for c in cases {
        let (mut nodes, peers) = fixture();
        nodes[0].allowed_location_ips = c.ips.iter().map(|i| net(i)).collect();
        let m = build(&nodes, &peers, &s);
        let kept: Vec<IpNet> = c.kept.iter().map(|i| net(i)).collect();
        assert_eq!(
            m.segment_of("a").unwrap().allowed_location_ips,
            kept,
            "{}",
            c.name
        );
        assert_eq!(
            m.warnings.len(),
            c.ips.len() - c.kept.len(),
            "{}: {:?}",
            c.name,
            m.warnings
        );
    }
    // Claimed by two segments: as in Kilo, the first in order yields to the later one.
    let (mut nodes, peers) = fixture();
    nodes[0].allowed_location_ips = vec![net("192.168.178.0/24")];
    let m = build(&nodes, &peers, &Settings::default());
    assert!(m.segment_of("a").unwrap().allowed_location_ips.is_empty());
    assert_eq!(
        m.segment_of("b").unwrap().allowed_location_ips,
        vec![net("192.168.178.3/32")]
    );
}

#[test]
fn nat_traversal_prefers_discovered_endpoints_for_keepalive_peers() {
    let (mut nodes, mut peers) = fixture();
    let seen_b: SocketAddr = "203.0.113.2:40000".parse().unwrap();
    let seen_d: SocketAddr = "203.0.113.4:40000".parse().unwrap();
    let seen_p1: SocketAddr = "203.0.113.11:40000".parse().unwrap();
    let seen_p2: SocketAddr = "203.0.113.12:40000".parse().unwrap();
    // d learned them all; a (the local node) learned another address for b.
    nodes[3].discovered_endpoints = BTreeMap::from([
        (key(2), seen_b),
        (key(4), seen_d),
        (key(11), seen_p1),
        (key(12), seen_p2),
    ]);
    nodes[0].discovered_endpoints = BTreeMap::from([(key(2), "203.0.113.99:1".parse().unwrap())]);
    // b keeps its NAT mapping alive; d does not.
    nodes[1].persistent_keepalive = ka(5);
    peers[1].persistent_keepalive = None;
    let m = build(&nodes, &peers, &Settings::default());
    let t = m.topology("a").unwrap();
    let endpoint = |k: u8| {
        t.peers
            .iter()
            .find(|p| p.public_key == key(k))
            .unwrap()
            .endpoint
            .clone()
    };
    // The local node's own discovery wins.
    assert_eq!(endpoint(2), Some(ep("203.0.113.99:1")));
    // No keepalive: the published endpoint.
    assert_eq!(endpoint(4), Some(ep("10.1.0.4:51820")));
    // A peer behind NAT with keepalive gets the discovered address; without, keeps its own.
    assert_eq!(endpoint(11), Endpoint::from_socket_addr(seen_p1));
    assert_eq!(endpoint(12), Some(ep("192.0.2.50:51820")));
    // From d's view, b is where d saw it.
    let t = m.topology("d").unwrap();
    assert_eq!(
        t.peers
            .iter()
            .find(|p| p.public_key == key(2))
            .unwrap()
            .endpoint,
        Endpoint::from_socket_addr(seen_b)
    );
}

#[test]
fn peers_need_allowed_ips_and_do_not_share_them() {
    let (nodes, mut peers) = fixture();
    peers.push(peer("p0", &["10.5.0.3/32", "10.5.0.9/32"], 13)); // sorts first: keeps 10.5.0.3
    peers.push(peer("p9", &[], 14)); // not ready
    let m = build(&nodes, &peers, &Settings::default());
    let names: Vec<_> = m.peers.iter().map(|p| p.name.as_str()).collect();
    // p2 owns nothing any more: left out.
    assert_eq!(names, ["p0", "p1"]);
    assert_eq!(m.peers_refused, BTreeSet::from(["p2".into()]));
    assert_eq!(
        m.peer_conf("p2"),
        Err(TopologyError::PeerRefused("p2".into()))
    );
    assert!(m.peers_not_ready.contains("p9"));
    assert_eq!(
        m.peer_conf("p9"),
        Err(TopologyError::PeerNotReady("p9".into()))
    );
    assert_eq!(
        m.peer_conf("nope"),
        Err(TopologyError::UnknownPeer("nope".into()))
    );
}

#[test]
fn one_wireguard_peer_per_key_and_per_allowed_ip() {
    let (mut nodes, mut peers) = fixture();
    // b and d publish the same private IP; peer p2 reuses d's key.
    nodes[3].internal_ip = None;
    nodes[2].internal_ip = Some(net("192.168.0.1/24")); // c: same as a's
    peers[1].public_key = key(4);
    let m = build(&nodes, &peers, &Settings::default());
    let t = m.topology("d").unwrap();
    let keys: Vec<PublicKey> = t.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys, vec![key(1), key(2), key(11)]); // p2 (key 4 = d's own) left out
    let all: Vec<IpNet> = t.peers.iter().flat_map(|p| p.allowed_ips.clone()).collect();
    let unique: BTreeSet<IpNet> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len());
    assert!(
        t.warnings
            .iter()
            .any(|w| matches!(w, Warning::AllowedIpTaken { .. })),
        "{:?}",
        t.warnings
    );
    let t = m.topology("a").unwrap();
    assert!(
        t.warnings
            .iter()
            .any(|w| matches!(w, Warning::DuplicateKey { .. })),
        "{:?}",
        t.warnings
    );
}

#[test]
fn duplicate_node_names_are_left_out() {
    let (mut nodes, peers) = fixture();
    nodes.push(node(
        "c",
        "2",
        "10.1.0.9:51820",
        Some("192.168.1.9/24"),
        "10.2.9.0/24",
        9,
    ));
    let m = build(&nodes, &peers, &Settings::default());
    assert_eq!(m.segment_of("c"), None);
    assert_eq!(m.warnings, vec![Warning::DuplicateNode("c".into())]);
}

#[test]
fn showconf_node_and_peer() {
    let (nodes, peers) = fixture();
    let m = build(&nodes, &peers, &Settings::default());
    let conf = m.node_conf("b").unwrap();
    assert_eq!(conf.listen_port, Some(51820));
    assert_eq!(conf.peers, m.topology("b").unwrap().peers);
    // As a peer: the segment's allowed IPs, without allowed location IPs (Kilo's AsPeer).
    let p = m.node_as_peer("b").unwrap();
    assert_eq!(p.allowed_ips, m.segment_of("b").unwrap().allowed_ips);
    assert_eq!(
        (p.public_key, p.endpoint.clone(), p.persistent_keepalive),
        (key(2), Some(ep("10.1.0.2:51820")), None)
    );
    assert!(matches!(
        m.node_as_peer("c"),
        Err(TopologyError::NotLeader { .. })
    ));

    // p1 sees every segment with its own keepalive and preshared key, and the
    // other peers with its keepalive but no preshared key.
    let conf = m.peer_conf("p1").unwrap();
    assert_eq!(conf.listen_port, None);
    let summary: Vec<_> = conf
        .peers
        .iter()
        .map(|p| (p.public_key, p.persistent_keepalive, p.preshared_key))
        .collect();
    assert_eq!(
        summary,
        vec![
            (key(1), ka(10), Some(psk(7))),
            (key(2), ka(10), Some(psk(7))),
            (key(4), ka(10), Some(psk(7))),
            (key(12), ka(10), None),
        ]
    );
    assert!(conf.peers[1].allowed_ips.contains(&net("192.168.178.3/32")));
    let p = m.peer_as_peer("p1").unwrap();
    assert_eq!(
        (p.public_key, p.preshared_key, p.persistent_keepalive),
        (key(11), Some(psk(7)), ka(10))
    );
}

// ---- Better than Kilo ----

fn location_cluster(locations: &[&str]) -> Vec<Node> {
    locations
        .iter()
        .enumerate()
        .map(|(i, l)| {
            node(
                &format!("{l}-1"),
                l,
                &format!("198.51.100.{}:51820", i + 1),
                Some(&format!("192.168.{i}.1/24")),
                &format!("10.2.{i}.0/24"),
                i as u8 + 1,
            )
        })
        .collect()
}

fn addresses(m: &Mesh) -> BTreeMap<SegmentId, IpAddr> {
    m.segments
        .iter()
        .map(|s| (s.id.clone(), s.wireguard_ip))
        .collect()
}

/// Publishes every leader's address, as agents do once they run.
fn publish(nodes: &mut [Node], m: &Mesh) {
    for n in nodes.iter_mut() {
        if let Some(s) = m.segment_of(&n.name) {
            n.wireguard_ip =
                Some(IpNet::new(s.wireguard_ip, m.settings.subnet.prefix_len()).unwrap());
        }
    }
}

#[test]
fn adding_or_removing_a_location_moves_no_other_address() {
    let before = location_cluster(&["asia", "eu", "us"]);
    let m0 = build(&before, &[], &Settings::default());
    // "brazil" sorts between "asia" and "eu": Kilo would renumber eu and us.
    let after = location_cluster(&["asia", "eu", "us", "brazil"]);
    let m1 = build(&after, &[], &Settings::default());
    let (a0, a1) = (addresses(&m0), addresses(&m1));
    for (id, addr) in &a0 {
        assert_eq!(a1[id], *addr, "{id} moved");
    }
    assert_eq!(a1.len(), 4);
    // Removing it again restores the same numbering; removing eu moves no one else.
    assert_eq!(addresses(&build(&before, &[], &Settings::default())), a0);
    let fewer = location_cluster(&["asia", "us"]);
    let a2 = addresses(&build(&fewer, &[], &Settings::default()));
    assert_eq!(a2[&loc("asia")], a0[&loc("asia")]);
    assert_eq!(a2[&loc("us")], a0[&loc("us")]);
    // Same in full granularity.
    let s = settings(Granularity::Full, Encapsulate::Always);
    let f0 = addresses(&build(&before, &[], &s));
    let f1 = addresses(&build(&after, &[], &s));
    assert!(f0.iter().all(|(id, a)| f1[id] == *a));
}

#[test]
fn published_addresses_keep_numbering_through_hash_collisions() {
    // A tiny subnet, so that homes collide.
    let s = Settings {
        subnet: net("10.4.0.0/29"),
        ..Settings::default()
    }; // 6 addresses
    let mut nodes = location_cluster(&["a", "z"]);
    let m0 = build(&nodes, &[], &s);
    publish(&mut nodes, &m0);
    let a0 = addresses(&m0);
    // A new location that sorts between them and whose home is z's address.
    let z = a0[&loc("z")];
    let newcomer = (0..1000)
        .map(|i| format!("m{i}"))
        .find(|l| alloc::home(s.subnet, &format!("location:{l}")) == z)
        .expect("some name hashes onto z's address");
    let mut more = nodes.clone();
    more.extend(
        location_cluster(&["a", "z", &newcomer])
            .into_iter()
            .skip(2)
            .map(|mut n| {
                n.key = Some(key(99));
                n.pod_cidr = Some(net("10.3.0.0/24"));
                n.internal_ip = Some(net("192.168.50.1/24"));
                n
            }),
    );
    let a1 = addresses(&build(&more, &[], &s));
    assert_eq!(a1[&loc("a")], a0[&loc("a")]);
    assert_eq!(a1[&loc("z")], z, "z keeps its published address");
    assert_ne!(a1[&loc(&newcomer)], z);
    // Without published addresses, the newcomer would have taken it.
    let fresh: Vec<Node> = more
        .iter()
        .cloned()
        .map(|mut n| {
            n.wireguard_ip = None;
            n
        })
        .collect();
    assert_eq!(addresses(&build(&fresh, &[], &s))[&loc(&newcomer)], z);
}

#[test]
fn a_new_leader_keeps_the_segment_address() {
    let mut nodes = location_cluster(&["eu", "us"]);
    let mut second = node(
        "eu-2",
        "eu",
        "198.51.100.9:51820",
        Some("192.168.0.2/24"),
        "10.2.9.0/24",
        9,
    );
    second.last_seen = Some(NOW);
    nodes.push(second);
    // Make eu's address not its home: claim another one, published by both members.
    let other = ip("10.4.200.200");
    for n in nodes.iter_mut().filter(|n| n.location == "eu") {
        n.wireguard_ip = Some(IpNet::new(other, 16).unwrap());
    }
    let m0 = build(&nodes, &[], &Settings::default());
    assert_eq!(m0.segment_of("eu-1").unwrap().leader_node().name, "eu-1");
    assert_eq!(wg(&m0, &loc("eu")), other);
    // eu-1 is demoted (its tunnels are stale): eu-2 leads, same address.
    let demoted = BTreeSet::from(["eu-1".to_owned()]);
    let m1 = Mesh::build(&nodes, &[], &Settings::default(), NOW, &demoted).unwrap();
    assert_eq!(m1.segment_of("eu-1").unwrap().leader_node().name, "eu-2");
    assert_eq!(wg(&m1, &loc("eu")), other);
    // eu-1 gone altogether: same.
    let m2 = build(
        &nodes
            .iter()
            .filter(|n| n.name != "eu-1")
            .cloned()
            .collect::<Vec<_>>(),
        &[],
        &Settings::default(),
    );
    assert_eq!(wg(&m2, &loc("eu")), other);
}

#[test]
fn diff_of_an_endpoint_change_is_one_changed_peer() {
    let (nodes, peers) = fixture();
    let before = build(&nodes, &peers, &Settings::default())
        .topology("a")
        .unwrap();
    assert!(diff(&before, &before).is_empty());
    let mut moved = nodes.clone();
    moved[1].endpoint = Some(ep("10.1.0.200:51820")); // b, leader of location 2
    let after = build(&moved, &peers, &Settings::default())
        .topology("a")
        .unwrap();
    let d = diff(&before, &after);
    assert_eq!(d.peers_changed.len(), 1);
    assert_eq!(
        d.peers_changed[0].new.endpoint,
        Some(ep("10.1.0.200:51820"))
    );
    assert_eq!(d.peers_changed[0].old.endpoint, Some(ep("10.1.0.2:51820")));
    let rest = TopologyDiff {
        peers_changed: Vec::new(),
        ..d
    };
    assert!(rest.is_empty(), "{rest:?}");
    // A non-leader's endpoint is nobody's business.
    let mut moved = nodes.clone();
    moved[2].endpoint = Some(ep("10.1.0.201:51820"));
    let after = build(&moved, &peers, &Settings::default())
        .topology("a")
        .unwrap();
    assert!(diff(&before, &after).is_empty());
}

#[test]
fn diff_of_added_and_removed_things() {
    let (nodes, peers) = fixture();
    let before = build(&nodes, &peers, &Settings::default())
        .topology("a")
        .unwrap();
    let mut more = peers.clone();
    more.push(peer("p3", &["10.7.0.0/24"], 13));
    let after = build(&nodes, &more, &Settings::default())
        .topology("a")
        .unwrap();
    let d = diff(&before, &after);
    assert_eq!(
        d.peers_added
            .iter()
            .map(|p| p.public_key)
            .collect::<Vec<_>>(),
        vec![key(13)]
    );
    assert_eq!(
        d.routes_added,
        vec![route("10.7.0.0/24", RouteKind::WireGuard { gateway: None })]
    );
    assert_eq!(d.masquerade_exempt.added, vec![net("10.7.0.0/24")]);
    assert_eq!(d.masquerade_sources.added, vec![net("10.7.0.0/24")]);
    assert!(
        d.peers_removed.is_empty() && d.peers_changed.is_empty() && d.routes_removed.is_empty()
    );
    // And back.
    let back = diff(&after, &before);
    assert_eq!(
        back.peers_removed
            .iter()
            .map(|p| p.public_key)
            .collect::<Vec<_>>(),
        vec![key(13)]
    );
    assert_eq!(
        back.routes_removed,
        vec![route("10.7.0.0/24", RouteKind::WireGuard { gateway: None })]
    );
    // A leadership change shows as such, with changed routes rather than removed ones.
    let c_before = build(&nodes, &peers, &Settings::default())
        .topology("c")
        .unwrap();
    let demoted = BTreeSet::from(["b".to_owned()]);
    let c_after = Mesh::build(&nodes, &peers, &Settings::default(), NOW, &demoted)
        .unwrap()
        .topology("c")
        .unwrap();
    let d = diff(&c_before, &c_after);
    assert_eq!(d.leader, Some((false, true)));
    assert!(d.wireguard_ip.is_some());
    assert!(!d.routes_changed.is_empty());
    assert!(d.routes_changed.iter().all(|c| c.old.dst == c.new.dst));
}

#[test]
fn dns_endpoints_are_resolved_outside_the_topology() {
    struct Fixed;
    impl crate::model::Resolver for Fixed {
        fn resolve(
            &self,
            _: &crate::model::DnsName,
            port: u16,
        ) -> std::io::Result<Vec<SocketAddr>> {
            Ok(vec![SocketAddr::new(ip("192.0.2.77"), port)])
        }
    }
    let (mut nodes, peers) = fixture();
    nodes[1].endpoint = Some(ep("b.example.com:51820"));
    let t = build(&nodes, &peers, &Settings::default())
        .topology("a")
        .unwrap();
    let b = t.peers.iter().find(|p| p.public_key == key(2)).unwrap();
    assert_eq!(
        b.endpoint,
        Some(ep("b.example.com:51820")),
        "the topology keeps the name"
    );
    assert_eq!(
        b.resolve_endpoint(&Fixed).unwrap(),
        Some("192.0.2.77:51820".parse().unwrap())
    );
    let p1 = t.peers.iter().find(|p| p.public_key == key(11)).unwrap();
    assert_eq!(p1.resolve_endpoint(&Fixed).unwrap(), None);
}

#[test]
fn senders_and_what_they_may_send() {
    let (nodes, peers) = fixture();
    let m = build(&nodes, &peers, &Settings::default());
    // Location 2: b (leader), c, e. Location 1: a; d is alone (no private IP).
    let t = m.topology("c").unwrap();
    assert_eq!(t.leader_name, "b");
    let names: Vec<&str> = t.senders.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b", "e"], "sorted by IP, not c itself");
    let b = &t.senders[0];
    assert_eq!(b.ip, ip("192.168.1.1"));
    // The leader relays the other segments, the peers and the WireGuard IPs.
    let mut relayed: Vec<IpNet> = [
        "10.2.1.0/24",
        "10.2.2.0/24",
        "10.2.4.0/24",
        "192.168.0.1/32",
        "192.168.1.1/32",
        "10.5.0.1/32",
        "10.5.0.2/32",
        "10.5.0.3/32",
    ]
    .map(net)
    .to_vec();
    relayed.extend(m.segments.iter().map(|s| IpNet::from(s.wireguard_ip)));
    relayed.sort();
    assert_eq!(b.sources, relayed);
    // This segment's own other nodes and allowed location IPs are not relayed by it.
    for own in ["10.2.3.0/24", "10.2.5.0/24", "192.168.178.3/32"] {
        assert!(!b.sources.contains(&net(own)), "{own}");
    }
    // A plain node sends from its pod CIDR and its own address only.
    let e = &t.senders[1];
    assert_eq!(
        (e.ip, e.sources.clone()),
        (
            ip("192.168.1.3"),
            vec![net("10.2.5.0/24"), net("192.168.1.3/32")]
        )
    );
    // The leader accepts its nodes' own ranges only.
    let tb = m.topology("b").unwrap();
    let from: Vec<(IpAddr, Vec<IpNet>)> = tb
        .senders
        .iter()
        .map(|s| (s.ip, s.sources.clone()))
        .collect();
    assert_eq!(
        from,
        vec![
            (
                ip("192.168.1.3"),
                vec![net("10.2.5.0/24"), net("192.168.1.3/32")]
            ),
            (
                ip("192.168.2.2"),
                vec![net("10.2.3.0/24"), net("192.168.2.2/32")]
            ),
        ]
    );
    // Alone in its segment, or without a private IP: nobody.
    assert!(m.topology("a").unwrap().senders.is_empty());
    assert!(m.topology("d").unwrap().senders.is_empty());
}

#[test]
fn cluster_sources_cover_the_mesh_but_not_exit_peers_nor_own_location_hosts() {
    let (nodes, mut peers) = fixture();
    peers.push(peer("exit", &["0.0.0.0/0"], 13));
    let s = Settings {
        allow_exit_peers: true,
        ..Settings::default()
    };
    let m = build(&nodes, &peers, &s);
    let t = m.topology("c").unwrap();
    for want in [
        "10.2.1.0/24",
        "10.2.3.0/24",
        "10.2.4.0/24",
        "192.168.1.1/32",
        "10.5.0.3/32",
    ] {
        assert!(t.cluster_sources.contains(&net(want)), "{want}");
    }
    for s in &m.segments {
        assert!(t.cluster_sources.contains(&IpNet::from(s.wireguard_ip)));
    }
    assert!(!t.cluster_sources.contains(&net("0.0.0.0/0")), "exit peer");
    assert!(
        !t.cluster_sources.contains(&net("192.168.178.3/32")),
        "this location's own allowed location IPs are its LAN's hosts"
    );
    // Seen from location 1 they are location 2's, and so a cluster range.
    let ta = m.topology("a").unwrap();
    assert!(ta.cluster_sources.contains(&net("192.168.178.3/32")));
    // The leader relays the exit peer's range.
    let b = &t.senders[0];
    assert!(b.sources.contains(&net("0.0.0.0/0")));
}
