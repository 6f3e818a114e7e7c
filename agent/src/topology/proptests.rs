//! Properties: the mesh does not depend on input order, its invariants hold
//! for any input, and no input (arbitrary annotation strings included) panics.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest::strategy::ValueTree as _;

use super::*;
use crate::ctl;
use crate::model::{
    Encapsulate, Endpoint, Granularity, Keepalive, Key, Node, NodeObject, Peer, PeerObject,
    PublicKey, Settings, parse_nodes, parse_peers,
};

const NOW: i64 = 1_700_000_000;

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        (1u8..4, 1u8..4).prop_map(|(a, b)| format!("10.1.{a}.{b}:51820")),
        (1u8..4).prop_map(|a| format!("198.51.100.{a}:51820")),
        (1u8..3).prop_map(|a| format!("[2001:db8::{a}]:51820")),
        Just("vpn.example.com:443".to_owned()),
    ]
    .prop_map(|s| s.parse().unwrap())
}

fn arb_node() -> impl Strategy<Value = Node> {
    let names = prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "h"]);
    (
        (
            names,
            prop::sample::select(vec!["", "x", "y", "z"]),
            prop::option::weighted(0.9, 0u8..10),
        ),
        (
            prop::option::weighted(0.9, arb_endpoint()),
            prop::option::weighted(0.8, (0u8..3, 1u8..4)),
            prop::option::weighted(0.95, 0u8..16),
        ),
        (
            prop::option::weighted(0.9, 0i64..70),
            any::<bool>(),
            prop::option::of(1u16..30),
        ),
        prop::collection::vec((0u8..4, 8u8..32), 0..2),
        prop::collection::btree_map(0u8..10, 1u8..5, 0..3),
        prop::option::of(0u32..20),
    )
        .prop_map(
            |(
                (name, location, k),
                (endpoint, internal, pod),
                (age, leader, keepalive),
                alips,
                disc,
                wg,
            )| Node {
                pod_cidr: pod.map(|p| format!("10.2.{p}.0/24").parse().unwrap()),
                location: location.into(),
                key: k.map(key),
                endpoint,
                internal_ip: internal.map(|(s, h)| format!("192.168.{s}.{h}/24").parse().unwrap()),
                wireguard_ip: wg.map(|w| format!("10.4.0.{w}/16").parse().unwrap()),
                last_seen: age.map(|a| NOW - a),
                leader,
                persistent_keepalive: keepalive.and_then(Keepalive::from_secs),
                allowed_location_ips: alips
                    .into_iter()
                    .map(|(o, p)| {
                        IpNet::new(format!("172.16.{o}.0").parse().unwrap(), p)
                            .unwrap()
                            .trunc()
                    })
                    .collect(),
                discovered_endpoints: disc
                    .into_iter()
                    .map(|(k, h)| (key(k), format!("203.0.113.{h}:4000").parse().unwrap()))
                    .collect(),
                ..Node::named(name)
            },
        )
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    (
        prop::sample::select(vec!["p", "q", "r", "s"]),
        prop::collection::vec(0u8..6, 0..3),
        0u8..14,
        prop::option::of(arb_endpoint()),
        prop::option::of(1u16..30),
        prop::option::of(0u8..3),
    )
        .prop_map(|(name, ips, k, endpoint, keepalive, psk)| Peer {
            name: name.into(),
            allowed_ips: ips
                .into_iter()
                .map(|i| format!("10.5.0.{i}/32").parse().unwrap())
                .collect(),
            public_key: key(k),
            endpoint,
            persistent_keepalive: keepalive.and_then(Keepalive::from_secs),
            preshared_key: psk.map(|p| Key::from_bytes([p; 32])),
        })
}

fn arb_settings() -> impl Strategy<Value = Settings> {
    (
        prop::sample::select(vec![Granularity::Location, Granularity::Full]),
        prop::sample::select(vec![
            Encapsulate::Never,
            Encapsulate::CrossSubnet,
            Encapsulate::Always,
        ]),
        prop::sample::select(vec!["10.4.0.0/16", "10.4.0.0/29", "fd00:4::/120"]),
    )
        .prop_map(|(granularity, encapsulate, subnet)| Settings {
            granularity,
            encapsulate,
            subnet: subnet.parse().unwrap(),
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..Settings::default()
        })
}

type Input = (Vec<Node>, Vec<Peer>, Settings, BTreeSet<String>);

/// A cluster, and the same cluster listed in another order.
fn arb_shuffled() -> impl Strategy<Value = (Input, Vec<Node>, Vec<Peer>)> {
    (
        prop::collection::vec(arb_node(), 0..12),
        prop::collection::vec(arb_peer(), 0..5),
        arb_settings(),
        subsequence(vec!["a", "b", "c", "d"], 0..3),
    )
        .prop_flat_map(|(nodes, peers, settings, demoted)| {
            let demoted: BTreeSet<String> = demoted.into_iter().map(String::from).collect();
            (
                Just((nodes.clone(), peers.clone(), settings, demoted)),
                Just(nodes).prop_shuffle(),
                Just(peers).prop_shuffle(),
            )
        })
}

/// Invariants of one node's topology.
fn check(m: &Mesh, t: &Topology) {
    let dsts: BTreeSet<IpNet> = t.routes.iter().map(|r| r.dst).collect();
    assert_eq!(dsts.len(), t.routes.len(), "one route per destination");
    assert!(
        t.routes.windows(2).all(|w| w[0].dst < w[1].dst),
        "routes sorted"
    );
    assert!(
        t.routes
            .iter()
            .any(|r| r.dst == t.pod_cidr && r.kind == RouteKind::Local)
    );
    let keys: BTreeSet<PublicKey> = t.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys.len(), t.peers.len(), "one WireGuard peer per key");
    let mine = m.segment_of(&t.hostname).unwrap();
    assert!(!keys.contains(&mine.key), "never a peer of itself");
    let ips: Vec<IpNet> = t
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        ips.len(),
        "allowed IPs disjoint"
    );
    if t.leader {
        assert!(m.settings.subnet.contains(&t.wireguard_ip.unwrap().addr()));
    } else {
        assert!(t.peers.is_empty() && t.wireguard_ip.is_none());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn same_answer_for_any_input_order(((nodes, peers, settings, demoted), shuffled_nodes, shuffled_peers) in arb_shuffled()) {
        let a = Mesh::build(&nodes, &peers, &settings, NOW, &demoted);
        let b = Mesh::build(&shuffled_nodes, &shuffled_peers, &settings, NOW, &demoted);
        prop_assert_eq!(&a, &b);
        if let Ok(m) = a {
            let addrs: BTreeSet<_> = m.segments.iter().map(|s| s.wireguard_ip).collect();
            prop_assert_eq!(addrs.len(), m.segments.len(), "WireGuard IPs unique");
            for s in &m.segments {
                for n in &s.nodes {
                    let t = m.topology(&n.name).unwrap();
                    check(&m, &t);
                    prop_assert!(diff(&t, &t).is_empty());
                }
            }
        }
    }
}

/// Annotation values: mostly arbitrary text, some near-valid.
fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "\\PC{0,60}",
        Just(String::new()),
        Just("-".to_owned()),
        Just(NOW.to_string()),
        (0u8..6).prop_map(|k| key(k).to_string()),
        arb_endpoint().prop_map(|e| e.to_string()),
        "(10|192)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,3})?(,[ 0-9./]{0,20})?",
        "-?[0-9]{1,25}",
        "\\{\"[A-Za-z0-9+/=]{0,46}\": ?(\"[0-9.:\\[\\]]{0,25}\"|\\{\"IP\": ?\"[0-9.]{0,15}\", ?\"Port\": ?-?[0-9]{1,6}\\}|null)\\}",
    ]
}

const ANNOTATIONS: [&str; 13] = [
    "key",
    "endpoint",
    "internal-ip",
    "wireguard-ip",
    "last-seen",
    "discovered-endpoints",
    "granularity",
    "location",
    "force-endpoint",
    "force-internal-ip",
    "leader",
    "persistent-keepalive",
    "allowed-location-ips",
];

fn arb_raw_node() -> impl Strategy<Value = NodeObject> {
    (
        prop_oneof!["[a-d]", "\\PC{0,8}"],
        prop::option::weighted(0.9, prop_oneof![4 => "10\\.2\\.[0-9]\\.0/24", 1 => ".*"]),
        prop::collection::btree_map(
            (
                prop::sample::select(vec!["weft.dev/", "kilo.squat.ai/"]),
                prop::sample::select(ANNOTATIONS.to_vec()),
            )
                .prop_map(|(p, n)| format!("{p}{n}")),
            arb_value(),
            0..4,
        ),
        prop::option::weighted(0.7, (0u8..6, arb_endpoint(), 0i64..70)),
    )
        .prop_map(|(name, pod_cidr, random, base)| {
            // Mostly a ready node underneath, so that meshes get built; the
            // random annotations override parts of it.
            let mut annotations: BTreeMap<String, String> = match base {
                Some((k, e, age)) => BTreeMap::from([
                    ("weft.dev/key".to_owned(), key(k).to_string()),
                    ("weft.dev/endpoint".to_owned(), e.to_string()),
                    ("weft.dev/last-seen".to_owned(), (NOW - age).to_string()),
                ]),
                None => BTreeMap::new(),
            };
            annotations.extend(random);
            NodeObject {
                name,
                pod_cidr,
                labels: BTreeMap::new(),
                annotations,
                creation_timestamp: None,
            }
        })
}

fn arb_raw_peer() -> impl Strategy<Value = PeerObject> {
    (
        "[p-r]",
        prop::collection::vec(prop_oneof!["10\\.5\\.0\\.[0-9]/32", ".*"], 0..3),
        arb_value(),
        prop::option::of((
            prop::option::of(arb_value()),
            prop::option::of(arb_value()),
            any::<u32>(),
        )),
        prop::option::of(any::<i64>()),
        prop::option::of(arb_value()),
    )
        .prop_map(
            |(name, allowed_ips, public_key, endpoint, persistent_keepalive, preshared_key)| {
                PeerObject {
                    name,
                    spec: crate::model::PeerSpec {
                        allowed_ips,
                        public_key,
                        endpoint: endpoint.map(|(dns, ip, port)| crate::model::PeerEndpoint {
                            dns_or_ip: crate::model::DnsOrIp { dns, ip },
                            port,
                        }),
                        persistent_keepalive,
                        preshared_key,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_input_panics(
        raw_nodes in prop::collection::vec(arb_raw_node(), 0..8),
        raw_peers in prop::collection::vec(arb_raw_peer(), 0..4),
        settings in arb_settings(),
    ) {
        let (nodes, _) = parse_nodes(&raw_nodes, &settings.topology_label);
        let (peers, _) = parse_peers(&raw_peers);
        let Ok(m) = Mesh::build(&nodes, &peers, &settings, NOW, &BTreeSet::new()) else { return Ok(()) };
        let _ = ctl::graph::dot(&m);
        let mut last: Option<Topology> = None;
        for s in &m.segments {
            for n in &s.nodes {
                let t = m.topology(&n.name).unwrap();
                check(&m, &t);
                if let Some(l) = &last {
                    let _ = diff(l, &t);
                }
                for format in [ctl::showconf::Format::Wireguard, ctl::showconf::Format::Json, ctl::showconf::Format::Yaml] {
                    let opts = ctl::showconf::Options { format, ..Default::default() };
                    let _ = ctl::showconf::node(&m, &n.name, &opts);
                }
                last = Some(t);
            }
        }
        for p in &m.peers {
            let _ = ctl::showconf::peer(&m, &p.name, &ctl::showconf::Options::default());
        }
    }
}

/// The property above is not vacuous: most cases build a mesh with segments.
#[test]
fn arbitrary_inputs_do_build_meshes() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (prop::collection::vec(arb_raw_node(), 1..8), arb_settings());
    let mut built = 0;
    for _ in 0..100 {
        let (raw, settings) = strategy.new_tree(&mut runner).unwrap().current();
        let (nodes, _) = parse_nodes(&raw, &settings.topology_label);
        if Mesh::build(&nodes, &[], &settings, NOW, &BTreeSet::new())
            .is_ok_and(|m| !m.segments.is_empty())
        {
            built += 1;
        }
    }
    assert!(
        built >= 30,
        "only {built} of 100 arbitrary clusters had a ready node"
    );
}

/// Ranges that collide with one another: pod CIDRs and ranges in and
/// around them, the WireGuard subnets, the service CIDR, nodes' addresses
/// and LANs, peers' usual ranges, `/0`.
const RANGES: [&str; 22] = [
    "10.2.1.0/24",
    "10.2.1.7/32",
    "10.2.1.128/25",
    "10.2.0.0/16",
    "10.2.2.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "::/0",
    "10.4.0.9/32",
    "10.4.0.0/24",
    "fd00:4::9/128",
    "fd00::/16",
    "10.96.0.10/32",
    "10.64.0.0/10",
    "192.168.0.1/32",
    "192.168.0.0/24",
    "192.168.0.77/32",
    "10.5.0.1/32",
    "10.5.0.0/24",
    "172.16.0.0/16",
    "172.16.1.0/24",
    "fd00:2::/64",
];
const POD_CIDRS: [&str; 9] = [
    "10.2.1.0/24",
    "10.2.1.128/25",
    "10.2.2.0/24",
    "10.2.3.0/24",
    "10.2.0.0/16",
    "10.4.1.0/24",
    "10.96.1.0/24",
    "fd00:2::/64",
    "0.0.0.0/0",
];
const PRIVATE_IPS: [&str; 6] = [
    "192.168.0.1/24",
    "192.168.0.2/24",
    "192.168.1.1/24",
    "10.2.1.1/24",
    "10.4.0.5/16",
    "10.5.0.1/8",
];

fn arb_claiming_node() -> impl Strategy<Value = Node> {
    (
        prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "h"]),
        prop::sample::select(vec!["x", "y"]),
        prop::sample::select(POD_CIDRS.to_vec()),
        prop::option::weighted(0.8, prop::sample::select(PRIVATE_IPS.to_vec())),
        prop::collection::vec(prop::sample::select(RANGES.to_vec()), 0..3),
        0u8..200,
    )
        .prop_map(|(name, location, pod, private, alips, k)| Node {
            pod_cidr: Some(pod.parse().unwrap()),
            location: location.into(),
            key: Some(key(k)),
            endpoint: Some(format!("198.51.100.{}:51820", k % 4 + 1).parse().unwrap()),
            internal_ip: private.map(|p| p.parse().unwrap()),
            last_seen: Some(NOW),
            allowed_location_ips: alips.into_iter().map(|a| a.parse().unwrap()).collect(),
            ..Node::named(name)
        })
}

fn arb_claiming_peer() -> impl Strategy<Value = Peer> {
    (
        prop::sample::select(vec!["p", "q", "r", "s"]),
        prop::collection::vec(prop::sample::select(RANGES.to_vec()), 0..4),
        200u8..255,
    )
        .prop_map(|(name, ips, k)| Peer {
            name: name.into(),
            allowed_ips: ips.into_iter().map(|i| i.parse().unwrap()).collect(),
            public_key: key(k),
            endpoint: None,
            persistent_keepalive: None,
            preshared_key: None,
        })
}

/// Who a range of the mesh belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Settings,
    Pod(String),
    Private(String),
    Peer(String),
    Location(SegmentId),
}

/// Every range the mesh gives someone: the settings', pod CIDRs, private
/// IPs, peers' allowed IPs (less an exit peer's `/0`, which takes nothing),
/// allowed location IPs.
fn owned_ranges(m: &Mesh) -> Vec<(Owner, IpNet)> {
    let mut out = vec![(Owner::Settings, m.settings.subnet)];
    out.extend(
        m.settings
            .service_cidrs
            .iter()
            .map(|c| (Owner::Settings, *c)),
    );
    for s in &m.segments {
        for n in &s.nodes {
            out.push((Owner::Pod(n.name.clone()), n.pod_cidr));
            if let Some(p) = n.private_ip {
                out.push((Owner::Private(n.name.clone()), IpNet::from(p.addr())));
            }
        }
        for c in &s.allowed_location_ips {
            out.push((Owner::Location(s.id.clone()), *c));
        }
    }
    for p in &m.peers {
        for c in p.allowed_ips.iter().filter(|c| c.prefix_len() > 0) {
            out.push((Owner::Peer(p.name.clone()), *c));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// After validation no two owners' ranges overlap (nodes may share a
    /// private address; the settings' own ranges are not checked against
    /// one another), a refused range is in no route, and a validated mesh
    /// validates to itself.
    #[test]
    fn no_two_owners_overlap_after_validation(
        nodes in prop::collection::vec(arb_claiming_node(), 0..10),
        peers in prop::collection::vec(arb_claiming_peer(), 0..5),
        allow_exit_peers in any::<bool>(),
        granularity in prop::sample::select(vec![Granularity::Location, Granularity::Full]),
        subnet in prop::sample::select(vec!["10.4.0.0/16", "fd00:4::/120"]),
    ) {
        let settings = Settings {
            granularity,
            subnet: subnet.parse().unwrap(),
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            allow_exit_peers,
            ..Settings::default()
        };
        let m = Mesh::build(&nodes, &peers, &settings, NOW, &BTreeSet::new()).unwrap();
        let ranges = owned_ranges(&m);
        for (i, (a, x)) in ranges.iter().enumerate() {
            for (b, y) in &ranges[i + 1..] {
                let exempt = a == b
                    || matches!((a, b), (Owner::Settings, Owner::Settings) | (Owner::Private(_), Owner::Private(_)));
                prop_assert!(
                    exempt || !(x.contains(y) || y.contains(x)),
                    "{x} of {a:?} overlaps {y} of {b:?}"
                );
            }
        }
        let owned: BTreeSet<IpNet> = ranges.iter().map(|(_, r)| *r).collect();
        for s in &m.segments {
            for n in &s.nodes {
                let t = m.topology(&n.name).unwrap();
                check(&m, &t);
                for r in &t.routes {
                    prop_assert!(
                        owned.contains(&r.dst)
                            || (r.dst.prefix_len() == 0 && allow_exit_peers)
                            || m.segments.iter().any(|s| IpNet::from(s.wireguard_ip) == r.dst),
                        "route to {} of no owner", r.dst
                    );
                }
            }
        }
        // Validating the outcome again refuses nothing more.
        let again_nodes: Vec<Node> = nodes
            .iter()
            .filter(|n| m.segment_of(&n.name).is_some())
            .map(|n| {
                let s = m.segment_of(&n.name).unwrap();
                let sn = s.nodes.iter().find(|x| x.name == n.name).unwrap();
                Node {
                    internal_ip: sn.private_ip,
                    allowed_location_ips: if s.nodes[0].name == n.name {
                        s.allowed_location_ips.clone()
                    } else {
                        Vec::new()
                    },
                    ..n.clone()
                }
            })
            .collect();
        let again = Mesh::build(&again_nodes, &m.peers, &settings, NOW, &BTreeSet::new()).unwrap();
        prop_assert!(again.warnings.iter().all(|w| matches!(w, Warning::DuplicateNode(_) | Warning::DuplicatePeer(_))), "{:?}", again.warnings);
        prop_assert_eq!(&again.segments, &m.segments);
        prop_assert_eq!(&again.peers, &m.peers);
    }
}

fn arb_prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u16>(), 0u8..=32).prop_map(|(a, len)| {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 | (u32::from(a) << 8));
            IpNet::new(addr.into(), len).unwrap().trunc()
        }),
        (any::<u8>(), 0u8..=128).prop_map(|(a, len)| {
            let addr = std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(a) << 64);
            IpNet::new(addr.into(), len).unwrap().trunc()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The owned-range maps find an overlapping range exactly when a scan of
    /// all of them does, however the ranges were added.
    #[test]
    fn overlap_queries_match_a_scan(
        owned_nets in prop::collection::vec(arb_prefix(), 0..24),
        split in 0usize..24,
        queries in prop::collection::vec(arb_prefix(), 1..24),
    ) {
        let (bulk, one_by_one) = owned_nets.split_at(split.min(owned_nets.len()));
        let mut owned = ownership::Owned::default();
        owned.insert_ranges(bulk, true);
        owned.insert_ranges(one_by_one, false);
        for q in queries {
            let scan = owned_nets.iter().any(|o| o.contains(&q) || q.contains(o));
            let found = owned.overlapping(q);
            prop_assert_eq!(found.is_some(), scan, "{} in {:?}: {:?}", q, owned_nets, found);
            if let Some(c) = found {
                let r = c.range();
                prop_assert!(r.contains(&q) || q.contains(&r), "{} {}", q, r);
            }
        }
    }
}
