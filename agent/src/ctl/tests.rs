//! weftctl's output formats and directory loading.

use std::collections::BTreeSet;
use std::fs;

use super::showconf::{Format, Options};
use super::*;
use crate::model::{Endpoint, Granularity, Keepalive, Key, Node, Peer, PublicKey, Settings};
use crate::topology::{PeerOrigin, SegmentId, WgConf, WgPeer};

const K1: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const NOW: i64 = 1_700_000_000;
const HEALTH: std::time::Duration = std::time::Duration::from_secs(180);

fn conf() -> WgConf {
    WgConf {
        listen_port: Some(51820),
        peers: vec![
            WgPeer {
                public_key: K1.parse().unwrap(),
                endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
                allowed_ips: vec![
                    "10.2.1.0/24".parse().unwrap(),
                    "10.4.0.1/32".parse().unwrap(),
                ],
                persistent_keepalive: Keepalive::from_secs(25),
                preshared_key: Some(K2.parse::<Key>().unwrap()),
                origin: PeerOrigin::Segment(SegmentId::Location("eu".into())),
            },
            WgPeer {
                public_key: K2.parse().unwrap(),
                endpoint: None,
                allowed_ips: vec![],
                persistent_keepalive: None,
                preshared_key: None,
                origin: PeerOrigin::External("laptop".into()),
            },
        ],
    }
}

#[test]
fn wireguard_format_is_what_wg_setconf_reads() {
    let want = format!(
        "[Interface]\nListenPort = 51820\n\n\
         [Peer]\nPublicKey = {K1}\nPresharedKey = {K2}\nEndpoint = [2001:db8::1]:51820\nAllowedIPs = 10.2.1.0/24, 10.4.0.1/32\nPersistentKeepalive = 25\n\n\
         [Peer]\nPublicKey = {K2}\n\n"
    );
    assert_eq!(showconf::render(&conf(), Format::Wireguard), want);
    let no_interface = WgConf {
        listen_port: None,
        ..conf()
    };
    assert!(showconf::render(&no_interface, Format::Wireguard).starts_with("[Peer]\n"));
}

#[test]
fn json_and_yaml_have_the_documented_shape() {
    let want = serde_json::json!({
        "interface": {"listenPort": 51820},
        "peers": [
            {"publicKey": K1, "endpoint": "[2001:db8::1]:51820", "allowedIPs": ["10.2.1.0/24", "10.4.0.1/32"],
             "persistentKeepalive": 25, "presharedKey": K2},
            {"publicKey": K2, "endpoint": null, "allowedIPs": [], "persistentKeepalive": null, "presharedKey": null},
        ]
    });
    let json: serde_json::Value =
        serde_json::from_str(&showconf::render(&conf(), Format::Json)).unwrap();
    assert_eq!(json, want);
    let yaml: serde_json::Value =
        serde_norway::from_str(&showconf::render(&conf(), Format::Yaml)).unwrap();
    assert_eq!(yaml, want);
    assert_eq!("yaml".parse::<Format>(), Ok(Format::Yaml));
    assert!("toml".parse::<Format>().is_err());
}

fn node(name: &str, location: &str, endpoint: &str, private: &str, pod: &str, k: u8) -> Node {
    Node {
        pod_cidr: Some(pod.parse().unwrap()),
        location: location.into(),
        key: Some(PublicKey::from_bytes([k; 32])),
        endpoint: Some(endpoint.parse::<Endpoint>().unwrap()),
        internal_ip: Some(private.parse().unwrap()),
        last_seen: Some(NOW),
        ..Node::named(name)
    }
}

fn mesh() -> crate::topology::Mesh {
    let nodes = vec![
        node(
            "a1",
            "eu \"west\"",
            "198.51.100.1:51820",
            "192.168.0.1/24",
            "10.2.1.0/24",
            1,
        ),
        node(
            "a2",
            "eu \"west\"",
            "10.0.0.2:51820",
            "192.168.0.2/24",
            "10.2.2.0/24",
            2,
        ),
        node(
            "b1",
            "us",
            "198.51.100.3:51820",
            "192.168.1.1/24",
            "10.2.3.0/24",
            3,
        ),
        node(
            "c1",
            "asia",
            "198.51.100.4:51820",
            "192.168.2.1/24",
            "10.2.4.0/24",
            4,
        ),
    ];
    let peers = vec![Peer {
        name: "laptop".into(),
        allowed_ips: vec!["10.5.0.1/32".parse().unwrap()],
        public_key: PublicKey::from_bytes([9; 32]),
        endpoint: None,
        persistent_keepalive: Keepalive::from_secs(10),
        preshared_key: None,
    }];
    crate::topology::Mesh::build(&nodes, &peers, &Settings::default(), NOW, &BTreeSet::new())
        .unwrap()
}

#[test]
fn showconf_node_and_peer_follow_kgctl() {
    let m = mesh();
    let out = showconf::node(&m, "a1", &Options::default()).unwrap();
    assert!(out.starts_with("[Interface]\nListenPort = 51820\n"));
    assert_eq!(out.matches("[Peer]").count(), 3); // us, asia, laptop
    assert!(
        showconf::node(&m, "a2", &Options::default())
            .unwrap_err()
            .to_string()
            .contains("not the leader")
    );
    assert_eq!(
        showconf::node(&m, "zz", &Options::default())
            .unwrap_err()
            .to_string(),
        "no node named \"zz\""
    );
    let opts = Options {
        as_peer: true,
        allowed_ips: vec![
            "10.9.0.0/16".parse().unwrap(),
            "10.2.1.0/24".parse().unwrap(),
        ],
        ..Options::default()
    };
    let out = showconf::node(&m, "a1", &opts).unwrap();
    assert!(!out.contains("[Interface]"));
    let aips = out.lines().find(|l| l.starts_with("AllowedIPs")).unwrap();
    assert!(aips.ends_with(", 10.9.0.0/16"), "{aips}");
    assert_eq!(aips.matches("10.2.1.0/24").count(), 1);
    let out = showconf::peer(&m, "laptop", &Options::default()).unwrap();
    assert!(!out.contains("[Interface]"));
    assert_eq!(out.matches("[Peer]").count(), 3);
    assert_eq!(out.matches("PersistentKeepalive = 10").count(), 3);
    let out = showconf::peer(
        &m,
        "laptop",
        &Options {
            as_peer: true,
            format: Format::Json,
            ..Options::default()
        },
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["peers"][0]["allowedIPs"],
        serde_json::json!(["10.5.0.1/32"])
    );
}

#[test]
fn graph_shows_segments_leaders_tunnels_and_peers() {
    let dot = graph::dot(&mesh());
    assert!(dot.starts_with("digraph \"weft\" {\n\tlabel=\"10.4.0.0/16\";"));
    assert!(
        dot.contains("subgraph \"cluster_location_eu \\\"west\\\"\" {"),
        "{dot}"
    );
    assert!(dot.contains("subgraph \"cluster_location_us\" {"));
    assert_eq!(
        dot.matches("peripheries=2").count(),
        3,
        "three leaders marked"
    );
    assert!(dot.contains("\"node/a1\" -> \"node/a2\" [dir=both, style=dotted];"));
    assert_eq!(
        dot.matches("style=bold];").count(),
        3,
        "a tunnel between each pair of leaders"
    );
    assert!(dot.contains("\"node/c1\" -> \"node/a1\" [dir=both, style=bold];"));
    assert!(dot.contains("subgraph \"cluster_peers\""));
    assert_eq!(
        dot.matches("-> \"peer/laptop\" [dir=both, style=dashed];")
            .count(),
        3
    );
    assert!(dot.trim_end().ends_with('}'));
    // Balanced braces: a syntactically whole graph.
    assert_eq!(dot.matches('{').count(), dot.matches('}').count());
}

#[test]
fn load_applies_settings_then_overrides_and_reports_what_it_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("nodes")).unwrap();
    let now = NOW.to_string();
    for (name, zone, i, k) in [("a", "z1", 1, K1), ("b", "z2", 2, K2)] {
        fs::write(
            root.join(format!("nodes/{name}.yaml")),
            format!(
                "name: {name}\npodCIDR: 10.2.{i}.0/24\nlabels:\n  zone: {zone}\nannotations:\n  weft.dev/key: {k}\n  \
                 weft.dev/endpoint: 198.51.100.{i}:51820\n  weft.dev/internal-ip: 192.168.0.{i}/24\n  weft.dev/last-seen: \"{now}\"\n"
            ),
        )
        .unwrap();
    }
    fs::write(
        root.join("nodes/bad.yaml"),
        "name: bad\nannotations:\n  weft.dev/key: xyz\n",
    )
    .unwrap();
    fs::write(
        root.join("settings.yaml"),
        "topologyLabel: zone\nport: 51999\n",
    )
    .unwrap();
    let loaded = load(root, &Overrides::default(), NOW, HEALTH).unwrap();
    assert_eq!(loaded.mesh.settings.port.get(), 51999);
    assert_eq!(
        loaded.mesh.segments.len(),
        2,
        "zones from the configured label"
    );
    assert_eq!(loaded.skipped.len(), 1);
    assert!(
        loaded.skipped[0]
            .starts_with("node \"bad\": annotation weft.dev/key: invalid WireGuard key \"xyz\""),
        "{:?}",
        loaded.skipped
    );
    let o = Overrides {
        topology_label: Some("none".into()),
        port: std::num::NonZeroU16::new(1),
        ..Overrides::default()
    };
    let loaded = load(root, &o, NOW, HEALTH).unwrap();
    assert_eq!(loaded.mesh.settings.port.get(), 1);
    assert_eq!(loaded.mesh.segments.len(), 1, "both in location \"\"");
    // The agents' published granularity is used when none is configured...
    for name in ["a", "b"] {
        let path = root.join(format!("nodes/{name}.yaml"));
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{text}  weft.dev/granularity: full\n")).unwrap();
    }
    fs::write(root.join("settings.yaml"), "topologyLabel: none\n").unwrap();
    let m = load(root, &Overrides::default(), NOW, HEALTH).unwrap().mesh;
    assert_eq!(
        (m.settings.granularity, m.segments.len()),
        (Granularity::Full, 2)
    );
    // ...but not over the command line.
    let o = Overrides {
        granularity: Some(Granularity::Location),
        ..Overrides::default()
    };
    assert_eq!(load(root, &o, NOW, HEALTH).unwrap().mesh.segments.len(), 1);
    // Stale by now.
    assert!(
        load(root, &Overrides::default(), NOW + 3600, HEALTH)
            .unwrap()
            .mesh
            .segments
            .is_empty()
    );
    assert!(load(&root.join("missing"), &Overrides::default(), NOW, HEALTH).is_err());
    fs::write(root.join("settings.yaml"), "port: 0\n").unwrap();
    let e = load(root, &Overrides::default(), NOW, HEALTH)
        .unwrap_err()
        .to_string();
    assert!(e.contains("settings.yaml") && e.contains("port"), "{e}");
}
