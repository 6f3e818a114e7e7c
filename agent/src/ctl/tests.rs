//! weftctl's output formats and directory loading.

use std::collections::BTreeSet;
use std::fs;

use super::showconf::{Format, Options, Shown};
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
    let node = |name: &str, opts: &Options| match showconf::node(&m, name, opts).unwrap() {
        Shown::Conf(text) => text,
        Shown::NotLeader(note) => panic!("{name}: {note}"),
    };
    let out = node("a1", &Options::default());
    assert!(out.starts_with("[Interface]\nListenPort = 51820\n"));
    assert_eq!(out.matches("[Peer]").count(), 3); // us, asia, laptop
    // A non-leader: no configuration, a note (kgctl's wording in it).
    for opts in [
        Options::default(),
        Options {
            as_peer: true,
            format: Format::Yaml,
            ..Options::default()
        },
    ] {
        let Shown::NotLeader(note) = showconf::node(&m, "a2", &opts).unwrap() else {
            panic!("a2 does not lead")
        };
        assert!(
            note.starts_with("node \"a2\" is not a leader node") && note.contains("\"a1\""),
            "{note}"
        );
    }
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
    let out = node("a1", &opts);
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
    // As kgctl: a Peer manifest.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": "laptop"},
            "spec": {
                "allowedIPs": ["10.5.0.1/32"],
                "publicKey": PublicKey::from_bytes([9; 32]).to_string(),
                "persistentKeepalive": 10,
            }
        })
    );
}

/// `showconf node N --as-peer -o yaml` of every leader, written to another
/// directory's `peers/<N>.yaml`, is that directory's peers: Kilo's
/// multi-cluster recipe, with the directory backend as the second cluster.
#[test]
fn as_peer_yaml_is_a_peer_file_of_another_directory() {
    let m = mesh();
    let tmp = tempfile::tempdir().unwrap();
    let peers = tmp.path().join("peers");
    fs::create_dir_all(&peers).unwrap();
    let opts = Options {
        as_peer: true,
        format: Format::Yaml,
        allowed_ips: vec!["10.96.0.0/12".parse().unwrap()],
    };
    let mut leaders = Vec::new();
    for name in ["a1", "a2", "b1", "c1"] {
        match showconf::node(&m, name, &opts).unwrap() {
            Shown::Conf(yaml) => {
                assert!(
                    yaml.starts_with("apiVersion: weft.dev/v1alpha1\nkind: Peer\n"),
                    "{yaml}"
                );
                fs::write(peers.join(format!("{name}.yaml")), yaml).unwrap();
                leaders.push(name);
            }
            Shown::NotLeader(_) => assert_eq!(name, "a2"),
        }
    }
    let contents = DirBackend::new(tmp.path()).load().unwrap();
    assert!(contents.errors.is_empty(), "{:?}", contents.errors);
    let (parsed, errors) = parse_peers(&contents.peers);
    assert!(errors.is_empty(), "{errors:?}");
    let names: Vec<&str> = parsed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, leaders);
    for p in &parsed {
        let seg = m.node_as_peer(&p.name).unwrap();
        assert_eq!(p.public_key, seg.public_key);
        assert_eq!(p.endpoint, seg.endpoint);
        let mut want = seg.allowed_ips.clone();
        want.push("10.96.0.0/12".parse().unwrap());
        assert_eq!(p.allowed_ips, want, "{}", p.name);
    }
    // The same with JSON, and kgctl's own rendering of a Peer (group
    // kilo.squat.ai, empty dns, zero keepalive, creationTimestamp).
    let json = match showconf::node(
        &m,
        "b1",
        &Options {
            format: Format::Json,
            ..opts.clone()
        },
    )
    .unwrap()
    {
        Shown::Conf(j) => j,
        Shown::NotLeader(n) => panic!("{n}"),
    };
    fs::write(peers.join("b1.yaml"), json).unwrap();
    fs::write(
        peers.join("kilo.yaml"),
        format!(
            "apiVersion: kilo.squat.ai/v1alpha1\nkind: Peer\nmetadata:\n  creationTimestamp: null\n  name: kilo\n\
             spec:\n  allowedIPs:\n  - 10.8.0.0/24\n  endpoint:\n    dnsOrIP:\n      dns: \"\"\n      ip: 192.0.2.7\n    port: 51820\n  \
             persistentKeepalive: 0\n  publicKey: {K1}\n"
        ),
    )
    .unwrap();
    let contents = DirBackend::new(tmp.path()).load().unwrap();
    assert!(contents.errors.is_empty(), "{:?}", contents.errors);
    let (parsed, errors) = parse_peers(&contents.peers);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(parsed.len(), 4);
    let kilo = parsed.iter().find(|p| p.name == "kilo").unwrap();
    assert_eq!(
        kilo.endpoint.as_ref().unwrap().to_string(),
        "192.0.2.7:51820"
    );
    // What a peer file must not be.
    for (bad, why) in [
        (
            "apiVersion: v1\nkind: Peer\nmetadata: {name: x}\nspec: {}\n",
            "apiVersion",
        ),
        (
            "apiVersion: weft.dev/v1alpha1\nkind: Node\nmetadata: {name: x}\nspec: {}\n",
            "kind",
        ),
        (
            "apiVersion: weft.dev/v1alpha1\nkind: Peer\nspec: {}\n",
            "metadata.name",
        ),
        (
            "name: x\napiVersion: weft.dev/v1alpha1\nkind: Peer\nmetadata: {name: x}\n",
            "`name`",
        ),
        ("spec: {}\n", "name"),
        ("name: x\nextra: 1\n", "extra"),
    ] {
        let e = serde_norway::from_str::<crate::model::PeerObject>(bad).unwrap_err();
        assert!(e.to_string().contains(why), "{bad:?}: {e}");
    }
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

/// A directory of nodes `(name, zone, granularity annotation, last seen)`
/// (`kilo:` before a granularity: Kilo's annotation), node i with pod CIDR
/// 10.2.i.0/24 and key `[i; 32]`.
fn node_dir(root: &std::path::Path, nodes: &[(&str, &str, Option<&str>, i64)]) {
    fs::create_dir_all(root.join("nodes")).unwrap();
    for (i, (name, zone, granularity, seen)) in nodes.iter().enumerate() {
        let i = i + 1;
        let key = PublicKey::from_bytes([i as u8; 32]);
        let g = match granularity {
            Some(g) => match g.strip_prefix("kilo:") {
                Some(g) => format!("  kilo.squat.ai/granularity: {g}\n"),
                None => format!("  weft.dev/granularity: {g}\n"),
            },
            None => String::new(),
        };
        fs::write(
            root.join(format!("nodes/{name}.yaml")),
            format!(
                "name: {name}\npodCIDR: 10.2.{i}.0/24\nlabels:\n  topology.kubernetes.io/region: {zone}\nannotations:\n  \
                 weft.dev/key: {key}\n  weft.dev/endpoint: 198.51.100.{i}:51820\n  weft.dev/internal-ip: 192.168.0.{i}/24\n  \
                 weft.dev/last-seen: \"{seen}\"\n{g}"
            ),
        )
        .unwrap();
    }
}

/// `weftctl ARGS` as of NOW.
fn weftctl(args: &[&str]) -> cli::Output {
    let cli = <cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("weftctl").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    cli::run(cli, NOW)
}

fn granularity_of(root: &std::path::Path, o: &Overrides) -> anyhow::Result<Granularity> {
    load(root, o, NOW, HEALTH).map(|l| l.mesh.settings.granularity)
}

#[test]
fn granularity_is_what_the_ready_nodes_publish() {
    let stale = NOW - 3600;
    // Agreeing (weft's and Kilo's annotations alike; a node that publishes
    // nothing, or is not ready, does not count): theirs, over settings.yaml's.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    node_dir(
        root,
        &[
            ("a", "eu", Some("full"), NOW),
            ("b", "eu", Some("kilo:full"), NOW),
            ("c", "us", None, NOW),
            ("d", "us", Some("location"), stale),
        ],
    );
    fs::write(root.join("settings.yaml"), "granularity: location\n").unwrap();
    let none = Overrides::default();
    assert_eq!(granularity_of(root, &none).unwrap(), Granularity::Full);
    assert_eq!(
        load(root, &none, NOW, HEALTH).unwrap().mesh.segments.len(),
        3
    );
    // `weftctl graph` is `weftctl graph --mesh-granularity <that>`.
    let d = root.to_str().unwrap();
    let auto = weftctl(&["--dir", d, "graph"]);
    assert!(auto.success(), "{auto:?}");
    assert_eq!(
        auto,
        weftctl(&["--dir", d, "graph", "--mesh-granularity", "full"])
    );
    assert_ne!(
        auto,
        weftctl(&["--dir", d, "graph", "--mesh-granularity", "location"])
    );
    // The command line wins.
    let location = Overrides {
        granularity: Some(Granularity::Location),
        ..Overrides::default()
    };
    assert_eq!(
        granularity_of(root, &location).unwrap(),
        Granularity::Location
    );

    // Conflicting: an error naming the nodes, unless the command line decides.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    node_dir(
        root,
        &[
            ("a", "eu", Some("full"), NOW),
            ("b", "eu", Some("location"), NOW),
            ("c", "us", Some("kilo:full"), NOW),
            ("d", "us", None, NOW),
        ],
    );
    let e = format!("{:#}", granularity_of(root, &none).unwrap_err());
    assert!(
        e.contains("different mesh granularities: location (b) vs full (a, c)")
            && e.contains("--mesh-granularity")
            && e.contains(&root.display().to_string()),
        "{e}"
    );
    assert_eq!(
        granularity_of(root, &location).unwrap(),
        Granularity::Location
    );
    let out = weftctl(&["--dir", root.to_str().unwrap(), "showconf", "node", "a"]);
    assert!(out.stdout.is_empty() && !out.success(), "{out:?}");
    assert!(out.error.unwrap().contains("full (a, c)"));

    // None published: settings.yaml's, else the default.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    node_dir(
        root,
        &[
            ("a", "eu", None, NOW),
            ("b", "eu", None, NOW),
            ("c", "us", Some("full"), stale),
        ],
    );
    assert_eq!(granularity_of(root, &none).unwrap(), Granularity::Location);
    fs::write(root.join("settings.yaml"), "granularity: full\n").unwrap();
    assert_eq!(granularity_of(root, &none).unwrap(), Granularity::Full);
    // And no node at all.
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        granularity_of(tmp.path(), &none).unwrap(),
        Granularity::Location
    );
}

#[test]
fn global_flags_go_before_or_after_the_subcommand() {
    use clap::{CommandFactory as _, Parser as _};
    cli::Cli::command().debug_assert();
    let parse = |args: &[&str]| {
        cli::Cli::try_parse_from(std::iter::once("weftctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let flags = [
        "--dir",
        "/d",
        "--mesh-granularity",
        "full",
        "--port",
        "51999",
        "--subnet",
        "10.9.0.0/16",
        "--topology-label",
        "zone",
        "--encapsulate",
        "always",
        "--leader-health-timeout",
        "30s",
    ];
    let check = |c: &cli::Cli| {
        assert_eq!(c.dir.as_deref(), Some(std::path::Path::new("/d")));
        assert_eq!(c.mesh_granularity, Some(Granularity::Full));
        assert_eq!(c.port.map(|p| p.get()), Some(51999));
        assert_eq!(c.subnet, Some("10.9.0.0/16".parse().unwrap()));
        assert_eq!(c.topology_label.as_deref(), Some("zone"));
        assert_eq!(c.encapsulate, Some(crate::model::Encapsulate::Always));
        assert_eq!(c.leader_health_timeout, std::time::Duration::from_secs(30));
    };
    for sub in [
        &["graph"][..],
        &["showconf", "node", "a"],
        &["showconf", "peer", "p", "--as-peer", "-o", "yaml"],
    ] {
        // Before, after, and in between (`showconf --port 1 node a`).
        let before: Vec<&str> = flags.iter().chain(sub).copied().collect();
        let after: Vec<&str> = sub.iter().chain(&flags).copied().collect();
        let mut between: Vec<&str> = sub[..1].to_vec();
        between.extend(flags);
        between.extend(&sub[1..]);
        for args in [before, after, between] {
            check(&parse(&args));
        }
    }
    let c = parse(&[
        "showconf",
        "node",
        "a",
        "--as-peer",
        "--dir",
        "/d",
        "-o",
        "yaml",
    ]);
    let cli::Command::Showconf(s) = &c.command else {
        panic!("{c:?}")
    };
    assert!(s.as_peer && s.output == Format::Yaml);
    assert!(
        matches!(&s.target, cli::Target::Node { name } if name == "a"),
        "{c:?}"
    );
    // Still refused: unknown values and --dir with --kubeconfig.
    assert!(cli::Cli::try_parse_from(["weftctl", "graph", "--mesh-granularity", "auto"]).is_err());
    assert!(
        cli::Cli::try_parse_from(["weftctl", "graph", "--dir", "/d", "--kubeconfig", "/k"])
            .is_err()
    );
}

/// As kgctl: a non-leader prints nothing and succeeds (with a note); an
/// unknown or unready node, or no ready node at all, fails.
#[test]
fn showconf_node_exit_status_is_kgctls() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    node_dir(
        root,
        &[
            ("a1", "eu", None, NOW),
            ("a2", "eu", None, NOW),
            ("b1", "us", None, NOW),
            ("old", "asia", None, NOW - 3600),
        ],
    );
    let d = root.to_str().unwrap();
    for extra in [
        &[][..],
        &["--as-peer", "-o", "yaml"],
        &["--as-peer", "--allowed-ips", "10.96.0.0/12"],
    ] {
        let mut args = vec!["--dir", d, "showconf", "node", "a2"];
        args.extend(extra);
        let out = weftctl(&args);
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.len(), 1, "{out:?}");
        assert!(
            out.stderr[0].starts_with("weftctl: node \"a2\" is not a leader node"),
            "{out:?}"
        );
        args[4] = "a1";
        let out = weftctl(&args);
        assert!(
            out.success() && out.stderr.is_empty() && !out.stdout.is_empty(),
            "{out:?}"
        );
    }
    for (node, want) in [
        ("zz", "no node named \"zz\""),
        ("old", "node \"old\" is not ready: last seen 3600 s ago"),
    ] {
        let out = weftctl(&["--dir", d, "showconf", "node", node]);
        assert_eq!(out.stdout, "");
        assert!(out.error.as_ref().unwrap().contains(want), "{out:?}");
    }
    // No ready node: an error, for nodes and peers alike.
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().to_str().unwrap();
    node_dir(tmp.path(), &[("old", "eu", None, NOW - 3600)]);
    for args in [
        &["--dir", empty, "showconf", "node", "old"][..],
        &["--dir", empty, "showconf", "peer", "laptop"],
    ] {
        let out = weftctl(args);
        let e = out.error.unwrap_or_default();
        assert!(
            e.starts_with("weftctl: error: no ready node in ")
                && e.contains("old: last seen 3600 s ago")
                && !e.contains('\n'),
            "{e}"
        );
    }
}
