//! Who owns which range ([`super::ownership`]), table-driven on the fixture
//! of `tests.rs`: location 1 holds a (192.168.0.1/24, pods 10.2.1.0/24) and
//! d (no private IP, 10.2.4.0/24); location 2 holds b (192.168.1.1/24,
//! 10.2.2.0/24, allowed location IP 192.168.178.3/32), c (192.168.2.2/24,
//! 10.2.3.0/24) and e (192.168.1.3/24, 10.2.5.0/24); peers p1 (10.5.0.1/32,
//! 10.5.0.2/32) and p2 (10.5.0.3/32). The WireGuard subnet is 10.4.0.0/16,
//! the service CIDR 10.96.0.0/12.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::tests::{NOW, alone, build, fixture, loc, net, node, peer, wg};
use super::*;
use crate::model::Settings;

fn settings() -> Settings {
    Settings {
        service_cidrs: vec![net("10.96.0.0/12")],
        ..Settings::default()
    }
}

fn nets(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|s| net(s)).collect()
}

fn pod(node: &str, cidr: &str) -> Claim {
    Claim::PodCidr {
        node: node.into(),
        cidr: net(cidr),
    }
}
fn private(node: &str, ip: &str) -> Claim {
    Claim::PrivateIp {
        node: node.into(),
        ip: ip.parse().unwrap(),
    }
}
fn peer_ip(peer: &str, cidr: &str) -> Claim {
    Claim::PeerAllowedIp {
        peer: peer.into(),
        cidr: net(cidr),
    }
}
fn taken(refused: Claim, owner: Claim) -> Warning {
    Warning::RangeTaken { refused, owner }
}

/// Every ready node's topology, by name.
fn topologies(m: &Mesh) -> BTreeMap<String, Topology> {
    m.segments
        .iter()
        .flat_map(|s| &s.nodes)
        .map(|n| (n.name.clone(), m.topology(&n.name).unwrap()))
        .collect()
}

/// A peer "x" (sorting after p1 and p2) with the given allowed IPs.
#[test]
fn a_peer_keeps_only_the_allowed_ips_it_owns() {
    struct Case {
        name: &'static str,
        ips: &'static [&'static str],
        allow_exit_peers: bool,
        kept: &'static [&'static str],
        warnings: Vec<Warning>,
    }
    let x = |cidr: &str| peer_ip("x", cidr);
    let cases = [
        Case {
            name: "its own range",
            ips: &["10.5.1.0/24"],
            allow_exit_peers: false,
            kept: &["10.5.1.0/24"],
            warnings: vec![],
        },
        Case {
            name: "a /32 inside a node's pod CIDR",
            ips: &["10.2.1.7/32", "10.5.1.0/24"],
            allow_exit_peers: false,
            kept: &["10.5.1.0/24"],
            warnings: vec![taken(x("10.2.1.7/32"), pod("a", "10.2.1.0/24"))],
        },
        Case {
            name: "a node's pod CIDR",
            ips: &["10.2.2.0/24"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(x("10.2.2.0/24"), pod("b", "10.2.2.0/24"))],
        },
        Case {
            name: "a range containing pod CIDRs",
            ips: &["10.2.0.0/16"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(x("10.2.0.0/16"), pod("a", "10.2.1.0/24"))],
        },
        Case {
            name: "0.0.0.0/0, no exit peers allowed",
            ips: &["0.0.0.0/0", "::/0", "10.5.1.0/24"],
            allow_exit_peers: false,
            kept: &["10.5.1.0/24"],
            warnings: vec![
                Warning::ExitPeerRefused {
                    peer: "x".into(),
                    cidr: net("0.0.0.0/0"),
                },
                Warning::ExitPeerRefused {
                    peer: "x".into(),
                    cidr: net("::/0"),
                },
            ],
        },
        Case {
            name: "0.0.0.0/0, exit peers allowed",
            ips: &["0.0.0.0/0"],
            allow_exit_peers: true,
            kept: &["0.0.0.0/0"],
            warnings: vec![],
        },
        Case {
            name: "inside the WireGuard subnet",
            ips: &["10.4.0.9/32"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(
                x("10.4.0.9/32"),
                Claim::WireGuardSubnet(net("10.4.0.0/16")),
            )],
        },
        Case {
            name: "inside a service CIDR",
            ips: &["10.100.0.0/16"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(
                x("10.100.0.0/16"),
                Claim::ServiceCidr(net("10.96.0.0/12")),
            )],
        },
        Case {
            name: "a node's private IP",
            ips: &["192.168.2.2/32"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(x("192.168.2.2/32"), private("c", "192.168.2.2"))],
        },
        Case {
            name: "a range containing a node's private IP",
            ips: &["192.168.0.0/24"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(x("192.168.0.0/24"), private("a", "192.168.0.1"))],
        },
        Case {
            name: "on a node's LAN, off its address: LAN prefixes are no one's",
            ips: &["192.168.0.77/32"],
            allow_exit_peers: false,
            kept: &["192.168.0.77/32"],
            warnings: vec![],
        },
        Case {
            name: "a range containing an earlier peer's",
            ips: &["10.5.0.0/24"],
            allow_exit_peers: false,
            kept: &[],
            warnings: vec![taken(x("10.5.0.0/24"), peer_ip("p1", "10.5.0.1/32"))],
        },
        Case {
            name: "the same allowed IP twice, and nested ones of its own",
            ips: &["10.5.1.0/24", "10.5.1.0/24", "10.5.1.7/32"],
            allow_exit_peers: false,
            kept: &["10.5.1.0/24", "10.5.1.7/32"],
            warnings: vec![],
        },
        Case {
            name: "a node's allowed location IP: the peer wins (Kilo)",
            ips: &["192.168.178.3/32"],
            allow_exit_peers: false,
            kept: &["192.168.178.3/32"],
            warnings: vec![Warning::RangeTaken {
                refused: Claim::AllowedLocationIp {
                    node: "b".into(),
                    segment: loc("2"),
                    cidr: net("192.168.178.3/32"),
                },
                owner: x("192.168.178.3/32"),
            }],
        },
    ];
    for c in cases {
        let (nodes, mut peers) = fixture();
        peers.push(peer("x", c.ips, 20));
        let s = Settings {
            allow_exit_peers: c.allow_exit_peers,
            ..settings()
        };
        let m = Mesh::build(&nodes, &peers, &s, NOW, &BTreeSet::new()).unwrap();
        assert_eq!(m.warnings, c.warnings, "{}", c.name);
        match m.peer("x") {
            Some(p) => assert_eq!(p.allowed_ips, nets(c.kept), "{}", c.name),
            None => {
                assert!(c.kept.is_empty(), "{}: x left out", c.name);
                assert!(m.peers_refused.contains("x"), "{}", c.name);
                assert_eq!(
                    m.peer_conf("x"),
                    Err(TopologyError::PeerRefused("x".into()))
                );
            }
        }
        // The others keep what they had.
        assert_eq!(
            m.peer("p1").unwrap().allowed_ips,
            nets(&["10.5.0.1/32", "10.5.0.2/32"])
        );
        assert_eq!(m.peer("p2").unwrap().allowed_ips, nets(&["10.5.0.3/32"]));
        assert_eq!(m.segments.len(), 3, "{}", c.name);
    }
}

#[test]
fn one_exit_peer_per_address_family() {
    let (nodes, mut peers) = fixture();
    peers.push(peer("x", &["0.0.0.0/0", "::/0"], 20));
    peers.push(peer("y", &["0.0.0.0/0", "10.5.1.0/24"], 21));
    let s = Settings {
        allow_exit_peers: true,
        ..settings()
    };
    let m = Mesh::build(&nodes, &peers, &s, NOW, &BTreeSet::new()).unwrap();
    assert_eq!(
        m.peer("x").unwrap().allowed_ips,
        nets(&["0.0.0.0/0", "::/0"])
    );
    assert_eq!(m.peer("y").unwrap().allowed_ips, nets(&["10.5.1.0/24"]));
    assert_eq!(
        m.warnings,
        vec![taken(peer_ip("y", "0.0.0.0/0"), peer_ip("x", "0.0.0.0/0"))]
    );
    // Everything more specific stays with its owner.
    assert_eq!(
        m.segment_of("b").unwrap().allowed_location_ips,
        nets(&["192.168.178.3/32"])
    );
    let t = m.topology("b").unwrap();
    let to_a = RouteKind::WireGuard {
        gateway: Some(wg(&m, &loc("1"))),
    };
    assert!(t.routes.contains(&Route {
        dst: net("10.2.1.0/24"),
        kind: to_a
    }));
}

/// A node "f" of location 2 (192.168.1.9/24, pods 10.2.9.0/24 unless the
/// case says otherwise).
#[test]
fn a_node_keeps_only_the_ranges_it_owns() {
    struct Case {
        name: &'static str,
        node: &'static str,
        pod: &'static str,
        private: Option<&'static str>,
        /// `Some`: in the mesh, with this private IP; `None`: left out.
        meshed: Option<Option<&'static str>>,
        warnings: Vec<Warning>,
    }
    let cases = [
        Case {
            name: "its own ranges",
            node: "f",
            pod: "10.2.9.0/24",
            private: Some("192.168.1.9/24"),
            meshed: Some(Some("192.168.1.9/24")),
            warnings: vec![],
        },
        Case {
            name: "a duplicate of another's pod CIDR",
            node: "f",
            pod: "10.2.1.0/24",
            private: Some("192.168.1.9/24"),
            meshed: None,
            warnings: vec![taken(pod("f", "10.2.1.0/24"), pod("a", "10.2.1.0/24"))],
        },
        Case {
            name: "inside another's pod CIDR",
            node: "f",
            pod: "10.2.2.128/25",
            private: Some("192.168.1.9/24"),
            meshed: None,
            warnings: vec![taken(pod("f", "10.2.2.128/25"), pod("b", "10.2.2.0/24"))],
        },
        Case {
            name: "containing others' pod CIDRs",
            node: "f",
            pod: "10.2.0.0/16",
            private: Some("192.168.1.9/24"),
            meshed: None,
            warnings: vec![taken(pod("f", "10.2.0.0/16"), pod("a", "10.2.1.0/24"))],
        },
        Case {
            name: "inside the WireGuard subnet",
            node: "f",
            pod: "10.4.9.0/24",
            private: Some("192.168.1.9/24"),
            meshed: None,
            warnings: vec![taken(
                pod("f", "10.4.9.0/24"),
                Claim::WireGuardSubnet(net("10.4.0.0/16")),
            )],
        },
        Case {
            name: "inside a service CIDR",
            node: "f",
            pod: "10.96.9.0/24",
            private: Some("192.168.1.9/24"),
            meshed: None,
            warnings: vec![taken(
                pod("f", "10.96.9.0/24"),
                Claim::ServiceCidr(net("10.96.0.0/12")),
            )],
        },
        Case {
            name: "covering every address",
            node: "f",
            pod: "0.0.0.0/0",
            private: Some("192.168.1.9/24"),
            meshed: None,
            warnings: vec![Warning::CoversEverything {
                refused: pod("f", "0.0.0.0/0"),
            }],
        },
        Case {
            name: "first by name keeps a pod CIDR: \"0\" sorts before \"a\"",
            node: "0",
            pod: "10.2.1.0/24",
            private: Some("192.168.1.9/24"),
            meshed: Some(Some("192.168.1.9/24")),
            warnings: vec![taken(pod("a", "10.2.1.0/24"), pod("0", "10.2.1.0/24"))],
        },
        Case {
            name: "first by name keeps a pod CIDR, a wide one too",
            node: "0",
            pod: "10.2.0.0/16",
            private: Some("192.168.1.9/24"),
            meshed: Some(Some("192.168.1.9/24")),
            warnings: ["a", "b", "c", "d", "e"]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    taken(
                        pod(n, &format!("10.2.{}.0/24", i + 1)),
                        pod("0", "10.2.0.0/16"),
                    )
                })
                .collect(),
        },
        Case {
            name: "a private IP inside its own pod CIDR (a bridge address)",
            node: "f",
            pod: "10.2.9.0/24",
            private: Some("10.2.9.1/24"),
            meshed: Some(None),
            warnings: vec![taken(private("f", "10.2.9.1"), pod("f", "10.2.9.0/24"))],
        },
        Case {
            name: "a private IP inside another's pod CIDR",
            node: "f",
            pod: "10.2.9.0/24",
            private: Some("10.2.3.5/24"),
            meshed: Some(None),
            warnings: vec![taken(private("f", "10.2.3.5"), pod("c", "10.2.3.0/24"))],
        },
        Case {
            name: "a private IP inside the WireGuard subnet",
            node: "f",
            pod: "10.2.9.0/24",
            private: Some("10.4.0.1/16"),
            meshed: Some(None),
            warnings: vec![taken(
                private("f", "10.4.0.1"),
                Claim::WireGuardSubnet(net("10.4.0.0/16")),
            )],
        },
        Case {
            name: "another node's private IP (NATed VPCs): both keep it",
            node: "f",
            pod: "10.2.9.0/24",
            private: Some("192.168.0.1/24"),
            meshed: Some(Some("192.168.0.1/24")),
            warnings: vec![],
        },
        Case {
            name: "a LAN holding pod CIDRs (a flat network)",
            node: "f",
            pod: "10.2.9.0/24",
            private: Some("10.1.0.9/8"),
            meshed: Some(Some("10.1.0.9/8")),
            warnings: vec![],
        },
    ];
    for c in cases {
        let (mut nodes, peers) = fixture();
        let mut f = node(c.node, "2", "10.1.0.9:51820", c.private, c.pod, 9);
        f.last_seen = Some(NOW);
        nodes.push(f);
        let m = build(&nodes, &peers, &settings());
        assert_eq!(m.warnings, c.warnings, "{}", c.name);
        match c.meshed {
            None => {
                assert_eq!(m.segment_of(c.node), None, "{}", c.name);
                let why = m.nodes_refused.get(c.node);
                assert_eq!(why, c.warnings.first(), "{}", c.name);
                assert_eq!(
                    m.topology(c.node),
                    Err(TopologyError::NodeRefused {
                        name: c.node.into(),
                        reason: why.unwrap().to_string()
                    }),
                    "{}",
                    c.name
                );
            }
            Some(private) => {
                let t = m.topology(c.node).unwrap();
                assert_eq!(t.private_ip, private.map(net), "{}", c.name);
                assert_eq!(t.pod_cidr, net(c.pod), "{}", c.name);
                if private.is_none() {
                    // Without a private IP, a node is its own segment.
                    assert_eq!(t.segment, alone(c.node), "{}", c.name);
                }
            }
        }
    }
}

/// Age, not name, decides a pod CIDR two nodes claim: an intruder named
/// to sort first loses to the older node; without creation times, names.
#[test]
fn the_older_node_keeps_a_pod_cidr() {
    struct Case {
        name: &'static str,
        owner_created: Option<i64>,
        intruder_created: Option<i64>,
        kept_by: &'static str,
    }
    let cases = [
        Case {
            name: "older owner",
            owner_created: Some(100),
            intruder_created: Some(200),
            kept_by: "a",
        },
        Case {
            name: "intruder without a creation time",
            owner_created: Some(100),
            intruder_created: None,
            kept_by: "a",
        },
        Case {
            name: "older intruder",
            owner_created: Some(200),
            intruder_created: Some(100),
            kept_by: "0-intruder",
        },
        Case {
            name: "no creation times: name order",
            owner_created: None,
            intruder_created: None,
            kept_by: "0-intruder",
        },
    ];
    for c in cases {
        let (mut nodes, peers) = fixture();
        nodes[0].created = c.owner_created;
        let mut x = node(
            "0-intruder",
            "3",
            "10.1.0.9:51820",
            Some("192.168.3.9/24"),
            "10.2.1.0/24",
            9,
        );
        x.last_seen = Some(NOW);
        x.created = c.intruder_created;
        nodes.push(x);
        let m = build(&nodes, &peers, &settings());
        let loser = if c.kept_by == "a" { "0-intruder" } else { "a" };
        assert!(m.segment_of(c.kept_by).is_some(), "{}", c.name);
        assert!(m.nodes_refused.contains_key(loser), "{}", c.name);
        assert_eq!(
            m.warnings,
            vec![taken(
                pod(loser, "10.2.1.0/24"),
                pod(c.kept_by, "10.2.1.0/24")
            )],
            "{}",
            c.name
        );
    }
}

#[test]
fn warnings_name_both_sides_and_the_range() {
    let (mut nodes, mut peers) = fixture();
    let mut a2 = node(
        "a2",
        "1",
        "10.1.0.9:51820",
        Some("192.168.0.9/24"),
        "10.2.1.0/24",
        9,
    );
    a2.last_seen = Some(NOW);
    nodes.push(a2);
    nodes[0].allowed_location_ips = nets(&["10.4.7.0/24"]);
    peers.push(peer(
        "laptop",
        &["10.2.1.7/32", "0.0.0.0/0", "10.5.9.1/32"],
        20,
    ));
    let m = build(&nodes, &peers, &settings());
    let text: Vec<String> = m.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "pod CIDR 10.2.1.0/24 of node \"a2\" duplicates pod CIDR 10.2.1.0/24 of node \"a\": \
             node left out of the mesh",
            "allowed IP 10.2.1.7/32 of peer \"laptop\" is inside pod CIDR 10.2.1.0/24 of node \
             \"a\": left out (the peer keeps its other allowed IPs)",
            "allowed IP 0.0.0.0/0 of peer \"laptop\" covers every address (an exit peer), which \
             the settings do not allow (allowExitPeers: false): left out (the peer keeps its \
             other allowed IPs)",
            "allowed location IP 10.4.7.0/24 of node \"a\" (location:1) is inside the WireGuard \
             subnet 10.4.0.0/16: left out",
        ]
    );
    assert_eq!(
        m.topology("a2").unwrap_err().to_string(),
        format!("node \"a2\" is left out of the mesh: {}", text[0])
    );
    let private = taken(private("f", "10.2.9.1"), pod("f", "10.2.9.0/24"));
    assert_eq!(
        private.to_string(),
        "private IP 10.2.9.1 of node \"f\" is inside pod CIDR 10.2.9.0/24 of node \"f\": \
         node meshed without a private IP (its own segment, over WireGuard)"
    );
    let contains = taken(peer_ip("x", "10.2.0.0/16"), pod("a", "10.2.1.0/24"));
    assert!(
        contains.to_string().contains(" contains pod CIDR"),
        "{contains}"
    );
}

/// The cases all at once — a peer claiming a /32 of a node's pod
/// CIDR, a peer claiming 0.0.0.0/0, a node duplicating another's pod CIDR,
/// an allowed location IP inside the WireGuard subnet: every rightful
/// owner's node computes exactly the topology it had before (so its
/// traffic keeps flowing), and again once they are gone.
#[test]
fn intruders_change_nothing_for_the_rightful_owners() {
    let (nodes, peers) = fixture();
    let s = settings();
    let before = build(&nodes, &peers, &s);

    let mut bad_nodes = nodes.clone();
    let mut dup = node(
        "z",
        "2",
        "10.1.0.9:51820",
        Some("192.168.1.9/24"),
        "10.2.1.0/24",
        9,
    );
    dup.last_seen = Some(NOW);
    bad_nodes.push(dup);
    bad_nodes[3].allowed_location_ips = nets(&["10.4.0.0/24"]); // d
    let mut bad_peers = peers.clone();
    bad_peers.push(peer("hijack", &["10.2.1.7/32"], 20));
    bad_peers.push(peer("exit", &["0.0.0.0/0"], 21));
    let during = build(&bad_nodes, &bad_peers, &s);

    assert_eq!(during.warnings.len(), 4, "{:?}", during.warnings);
    assert_eq!(during.segments, before.segments);
    assert_eq!(during.peers, before.peers);
    let (t0, t1) = (topologies(&before), topologies(&during));
    assert_eq!(t0.len(), t1.len());
    for (name, t) in &t0 {
        let d = diff(t, &t1[name]);
        assert!(d.is_empty(), "{name}: {d:?}");
        assert!(
            t1[name]
                .routes
                .iter()
                .all(|r| !r.dst.contains(&net("10.2.1.7/32")) || r.dst == net("10.2.1.0/24"))
        );
    }
    assert_eq!(topologies(&build(&nodes, &peers, &s)), t0);
}

/// Members of one segment may list the same or nested allowed location
/// IPs; another segment may not, and the later segment keeps them (Kilo).
#[test]
fn allowed_location_ips_are_a_segments() {
    let (mut nodes, peers) = fixture();
    nodes[1].allowed_location_ips = nets(&["172.30.0.0/16"]); // b, location 2
    nodes[4].allowed_location_ips = nets(&["172.30.1.0/24", "172.30.0.0/16"]); // e, location 2
    nodes[0].allowed_location_ips = nets(&["172.30.2.0/24", "172.31.0.0/16"]); // a, location 1
    let m = build(&nodes, &peers, &settings());
    assert_eq!(
        m.segment_of("b").unwrap().allowed_location_ips,
        nets(&["172.30.0.0/16", "172.30.1.0/24"])
    );
    assert_eq!(
        m.segment_of("a").unwrap().allowed_location_ips,
        nets(&["172.31.0.0/16"])
    );
    assert_eq!(
        m.warnings,
        vec![taken(
            Claim::AllowedLocationIp {
                node: "a".into(),
                segment: loc("1"),
                cidr: net("172.30.2.0/24"),
            },
            Claim::AllowedLocationIp {
                node: "b".into(),
                segment: loc("2"),
                cidr: net("172.30.0.0/16"),
            },
        )]
    );
}

/// A node or peer whose every claim is refused is one warning more, never
/// an error.
#[test]
fn one_bad_object_never_fails_the_build() {
    let (mut nodes, mut peers) = fixture();
    let mut n = node("zz", "9", "10.1.0.9:51820", None, "0.0.0.0/0", 9);
    n.last_seen = Some(NOW);
    n.allowed_location_ips = nets(&["0.0.0.0/0"]);
    nodes.push(n);
    peers.push(peer(
        "all",
        &["0.0.0.0/0", "::/0", "10.0.0.0/8", "192.168.0.0/16"],
        20,
    ));
    let m = Mesh::build(&nodes, &peers, &settings(), NOW, &BTreeSet::new()).unwrap();
    assert_eq!(m.segments.len(), 3);
    assert!(m.peers_refused.contains("all"));
    assert!(m.nodes_refused.contains_key("zz"));
    assert_eq!(m.warnings.len(), 5, "{:?}", m.warnings);
}

/// The prefix maps answer as a scan of every pair would, whether the
/// ranges were added in bulk (sorted) or one by one (mapped), or half and
/// half.
#[test]
fn overlap_queries_match_a_scan() {
    let owned_nets = nets(&[
        "10.0.0.0/8",
        "10.2.1.0/24",
        "10.2.1.128/25",
        "192.168.0.1/32",
        "172.16.0.0/12",
        "fd00::/64",
        "fd00::1/128",
        "10.2.1.0/24",
    ]);
    let queries = nets(&[
        "0.0.0.0/0",
        "10.2.1.7/32",
        "10.2.0.0/16",
        "11.0.0.0/8",
        "192.168.0.0/24",
        "192.168.0.2/32",
        "172.31.255.255/32",
        "172.32.0.0/16",
        "::/0",
        "fd00::/16",
        "fd00:0:0:1::/64",
        "fd00::2/128",
        "9.255.255.255/32",
        "11.0.0.0/32",
        "255.255.255.255/32",
    ]);
    for split in 0..=owned_nets.len() {
        let (bulk, one_by_one) = owned_nets.split_at(split);
        let mut owned = ownership::Owned::default();
        owned.insert_ranges(bulk, true);
        owned.insert_ranges(one_by_one, false);
        for &q in &queries {
            let scan = owned_nets.iter().any(|o| o.contains(&q) || q.contains(o));
            let found = owned.overlapping(q);
            assert_eq!(found.is_some(), scan, "{q} (split {split}): {found:?}");
            if let Some(c) = found {
                let r = c.range();
                assert!(r.contains(&q) || q.contains(&r), "{q}: {r}");
            }
        }
    }
}
