//! Parsing at the boundary: annotations under both prefixes, every field's
//! errors, readiness.

use std::collections::BTreeMap;

use super::*;

const K1: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const NOW: i64 = 1_700_000_000;

fn obj(name: &str, ann: &[(&str, &str)]) -> NodeObject {
    NodeObject {
        name: name.into(),
        pod_cidr: Some("10.2.1.0/24".into()),
        labels: BTreeMap::new(),
        annotations: ann
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        creation_timestamp: None,
    }
}

fn parse(ann: &[(&str, &str)]) -> Result<Node, ModelError> {
    Node::parse(&obj("b1", ann), DEFAULT_TOPOLOGY_LABEL)
}

#[test]
fn a_complete_node_parses_and_is_ready() {
    let now = NOW.to_string();
    let n = parse(&[
        ("weft.dev/key", K1),
        ("weft.dev/endpoint", "192.0.2.1:51820"),
        ("weft.dev/internal-ip", "10.1.0.1/24"),
        ("weft.dev/wireguard-ip", "10.4.0.1/16"),
        ("weft.dev/last-seen", &now),
        ("weft.dev/leader", ""),
        ("weft.dev/location", "gcp"),
        ("weft.dev/persistent-keepalive", "25"),
        (
            "weft.dev/allowed-location-ips",
            "192.168.178.3/32, 10.9.0.1/16",
        ),
        (
            "weft.dev/discovered-endpoints",
            &format!(r#"{{"{K2}": "198.51.100.7:4242"}}"#),
        ),
        ("weft.dev/granularity", "full"),
    ])
    .unwrap();
    assert_eq!(n.key, Some(K1.parse().unwrap()));
    assert_eq!(n.endpoint.as_ref().unwrap().to_string(), "192.0.2.1:51820");
    assert_eq!(n.internal_ip, Some("10.1.0.1/24".parse().unwrap()));
    assert_eq!(n.wireguard_ip, Some("10.4.0.1/16".parse().unwrap()));
    assert_eq!(n.last_seen, Some(NOW));
    assert!(n.leader);
    assert_eq!(n.location, "gcp");
    assert_eq!(n.persistent_keepalive.map(Keepalive::secs), Some(25));
    assert_eq!(
        n.allowed_location_ips,
        vec![
            "192.168.178.3/32".parse().unwrap(),
            "10.9.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(
        n.discovered_endpoints[&K2.parse().unwrap()],
        "198.51.100.7:4242".parse().unwrap()
    );
    assert_eq!(n.granularity, Some(Granularity::Full));
    assert_eq!(n.readiness(NOW + 59), Ok(()));
    assert_eq!(n.readiness(NOW + 60), Err(NotReady::Stale(60)));
}

#[test]
fn weft_annotations_win_over_kilo_ones() {
    let n = parse(&[
        ("kilo.squat.ai/location", "kilo"),
        ("weft.dev/location", "weft"),
        ("kilo.squat.ai/key", K2),
    ])
    .unwrap();
    assert_eq!(n.location, "weft");
    // Kilo's alone is read.
    assert_eq!(n.key, Some(K2.parse().unwrap()));
    // Even a bad Kilo value is shadowed by a good weft one.
    let n = parse(&[("kilo.squat.ai/key", "xyz"), ("weft.dev/key", K1)]).unwrap();
    assert_eq!(n.key, Some(K1.parse().unwrap()));
}

#[test]
fn location_comes_from_the_annotation_then_the_topology_label() {
    let mut o = obj("n", &[]);
    o.labels
        .insert(DEFAULT_TOPOLOGY_LABEL.into(), "eu-west".into());
    o.labels.insert("my/zone".into(), "zone-a".into());
    assert_eq!(
        Node::parse(&o, DEFAULT_TOPOLOGY_LABEL).unwrap().location,
        "eu-west"
    );
    assert_eq!(Node::parse(&o, "my/zone").unwrap().location, "zone-a");
    assert_eq!(Node::parse(&o, "absent").unwrap().location, "");
    o.annotations
        .insert("kilo.squat.ai/location".into(), "home".into());
    assert_eq!(
        Node::parse(&o, DEFAULT_TOPOLOGY_LABEL).unwrap().location,
        "home"
    );
}

#[test]
fn forced_values_override_published_ones() {
    let n = parse(&[
        ("weft.dev/endpoint", "192.0.2.1:51820"),
        ("weft.dev/force-endpoint", "vpn.example.com:443"),
    ])
    .unwrap();
    assert_eq!(n.endpoint.unwrap().to_string(), "vpn.example.com:443");
    let n = parse(&[
        ("weft.dev/internal-ip", "10.1.0.1/24"),
        ("weft.dev/force-internal-ip", "10.1.0.2/24"),
    ])
    .unwrap();
    assert_eq!(n.internal_ip, Some("10.1.0.2/24".parse().unwrap()));
    for off in ["", "-"] {
        let n = parse(&[
            ("weft.dev/internal-ip", "10.1.0.1/24"),
            ("kilo.squat.ai/force-internal-ip", off),
        ])
        .unwrap();
        assert_eq!(n.internal_ip, None, "{off:?}");
    }
    // A bare address is a host prefix.
    let n = parse(&[("weft.dev/internal-ip", "10.1.0.1")]).unwrap();
    assert_eq!(n.internal_ip, Some("10.1.0.1/32".parse().unwrap()));
}

#[test]
fn empty_agent_annotations_mean_absent_and_leader_false_is_no_leader() {
    let n = parse(&[
        ("weft.dev/wireguard-ip", ""),
        ("weft.dev/discovered-endpoints", ""),
        ("weft.dev/internal-ip", ""),
        ("weft.dev/leader", "false"),
    ])
    .unwrap();
    assert_eq!(
        (n.wireguard_ip, n.internal_ip, n.leader),
        (None, None, false)
    );
    assert!(n.discovered_endpoints.is_empty());
    assert_eq!(n.persistent_keepalive, None);
    let n = parse(&[("weft.dev/persistent-keepalive", "0")]).unwrap();
    assert_eq!(n.persistent_keepalive, None);
}

#[test]
fn kilo_discovered_endpoints_are_read() {
    let v =
        format!(r#"{{"{K1}": {{"IP": "198.51.100.7", "Port": 51820, "Zone": ""}}, "{K2}": null}}"#);
    let n = parse(&[("kilo.squat.ai/discovered-endpoints", &v)]).unwrap();
    assert_eq!(n.discovered_endpoints.len(), 1);
    assert_eq!(
        n.discovered_endpoints[&K1.parse().unwrap()],
        "198.51.100.7:51820".parse().unwrap()
    );
}

#[test]
fn readiness_needs_key_endpoint_pod_cidr_and_a_recent_check_in() {
    let now = NOW.to_string();
    let full = [
        ("weft.dev/key", K1),
        ("weft.dev/endpoint", "192.0.2.1:51820"),
        ("weft.dev/last-seen", now.as_str()),
    ];
    assert_eq!(parse(&full).unwrap().readiness(NOW), Ok(()));
    for (missing, why) in [
        (0, NotReady::NoKey),
        (1, NotReady::NoEndpoint),
        (2, NotReady::NeverSeen),
    ] {
        let ann: Vec<_> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, a)| *a)
            .collect();
        assert_eq!(parse(&ann).unwrap().readiness(NOW), Err(why));
    }
    let mut o = obj("b1", &full);
    o.pod_cidr = None;
    assert_eq!(
        Node::parse(&o, "").unwrap().readiness(NOW),
        Err(NotReady::NoPodCidr)
    );
    // A last-seen far in the past or the future never overflows.
    let n = parse(&[
        ("weft.dev/key", K1),
        ("weft.dev/endpoint", "192.0.2.1:1"),
        ("weft.dev/last-seen", "-9223372036854775808"),
    ])
    .unwrap();
    assert!(matches!(n.readiness(i64::MAX), Err(NotReady::Stale(_))));
}

#[test]
fn a_bad_value_is_an_error_naming_node_field_and_value() {
    let e = parse(&[("weft.dev/key", "xyz")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"node "b1": annotation weft.dev/key: invalid WireGuard key "xyz": 3 characters long, a key has 44"#
    );
    assert_eq!(e.object, Object::Node("b1".into()));
    let cases: &[(&str, &str, &str)] = &[
        (
            "kilo.squat.ai/endpoint",
            "10.0.0.1",
            "annotation kilo.squat.ai/endpoint: invalid endpoint",
        ),
        (
            "weft.dev/force-endpoint",
            "host:0",
            "annotation weft.dev/force-endpoint: invalid endpoint",
        ),
        (
            "weft.dev/internal-ip",
            "10.1.0.300/24",
            "annotation weft.dev/internal-ip: invalid CIDR",
        ),
        (
            "weft.dev/force-internal-ip",
            "-10.1.0.2/24",
            "annotation weft.dev/force-internal-ip: invalid CIDR",
        ),
        (
            "weft.dev/wireguard-ip",
            "x",
            "annotation weft.dev/wireguard-ip: invalid CIDR",
        ),
        (
            "weft.dev/last-seen",
            "yesterday",
            "annotation weft.dev/last-seen: invalid unix time",
        ),
        (
            "weft.dev/persistent-keepalive",
            "-1",
            "annotation weft.dev/persistent-keepalive: invalid persistent keepalive",
        ),
        (
            "weft.dev/persistent-keepalive",
            "70000",
            "invalid persistent keepalive",
        ),
        (
            "weft.dev/allowed-location-ips",
            "10.0.0.0/8,nope",
            "annotation weft.dev/allowed-location-ips: invalid CIDR list",
        ),
        (
            "weft.dev/discovered-endpoints",
            "{",
            "annotation weft.dev/discovered-endpoints: invalid discovered endpoints",
        ),
        (
            "weft.dev/discovered-endpoints",
            r#"{"k": "1.2.3.4:5"}"#,
            "invalid discovered endpoints",
        ),
        (
            "weft.dev/granularity",
            "rack",
            "annotation weft.dev/granularity: invalid granularity",
        ),
    ];
    for (k, v, want) in cases {
        let e = parse(&[(k, v)]).unwrap_err().to_string();
        assert!(e.starts_with("node \"b1\": "), "{e}");
        assert!(e.contains(want), "{k}={v}: {e}");
    }
    let mut o = obj("b1", &[]);
    o.pod_cidr = Some("10.2.1.0/33".into());
    let e = Node::parse(&o, "").unwrap_err().to_string();
    assert!(
        e.starts_with(r#"node "b1": podCIDR: invalid CIDR "10.2.1.0/33""#),
        "{e}"
    );
    // Long values are cut in messages.
    let long = "x".repeat(1000);
    assert!(
        parse(&[("weft.dev/key", &long)])
            .unwrap_err()
            .to_string()
            .len()
            < 250
    );
}

#[test]
fn pod_cidrs_are_normalised_and_internal_ips_keep_their_host() {
    let mut o = obj("n", &[("weft.dev/internal-ip", "10.1.0.7/24")]);
    o.pod_cidr = Some("10.2.1.9/24".into());
    let n = Node::parse(&o, "").unwrap();
    assert_eq!(n.pod_cidr, Some("10.2.1.0/24".parse().unwrap()));
    assert_eq!(n.internal_ip.unwrap().addr().to_string(), "10.1.0.7");
}

fn peer_obj(spec: PeerSpec) -> PeerObject {
    PeerObject {
        name: "laptop".into(),
        spec,
    }
}

#[test]
fn peers_parse_with_kilo_semantics() {
    let p = Peer::parse(&peer_obj(PeerSpec {
        allowed_ips: vec!["10.5.0.1/32".into(), "10.6.0.9/24".into()],
        public_key: K1.into(),
        endpoint: Some(PeerEndpoint {
            dns_or_ip: DnsOrIp {
                dns: Some("vpn.example.com".into()),
                ip: Some("192.0.2.9".into()),
            },
            port: 51820,
        }),
        persistent_keepalive: Some(10),
        preshared_key: Some(K2.into()),
    }))
    .unwrap();
    assert_eq!(
        p.allowed_ips,
        vec![
            "10.5.0.1/32".parse().unwrap(),
            "10.6.0.0/24".parse().unwrap()
        ]
    );
    // The name wins over the address, as in Kilo.
    assert_eq!(
        p.endpoint.as_ref().unwrap().to_string(),
        "vpn.example.com:51820"
    );
    assert_eq!(p.persistent_keepalive.map(Keepalive::secs), Some(10));
    assert_eq!(p.preshared_key, Some(K2.parse().unwrap()));
    assert!(p.is_ready());
    // Back to the raw object and again.
    assert_eq!(Peer::parse(&p.to_object()).unwrap(), p);
    // No allowed IPs: parsed, but not ready.
    let p = Peer::parse(&peer_obj(PeerSpec {
        public_key: K1.into(),
        ..PeerSpec::default()
    }))
    .unwrap();
    assert!(!p.is_ready());
    assert_eq!(p.endpoint, None);
}

#[test]
fn bad_peers_are_errors_and_secrets_are_never_echoed() {
    let base = PeerSpec {
        allowed_ips: vec!["10.5.0.1/32".into()],
        public_key: K1.into(),
        ..PeerSpec::default()
    };
    let ep = |dns: Option<&str>, ip: Option<&str>, port| {
        Some(PeerEndpoint {
            dns_or_ip: DnsOrIp {
                dns: dns.map(Into::into),
                ip: ip.map(Into::into),
            },
            port,
        })
    };
    let cases: Vec<(PeerSpec, &str)> = vec![
        (
            PeerSpec {
                public_key: String::new(),
                ..base.clone()
            },
            "spec.publicKey: invalid WireGuard key \"\"",
        ),
        (
            PeerSpec {
                allowed_ips: vec!["10.5.0.1/40".into()],
                ..base.clone()
            },
            "spec.allowedIPs: invalid CIDR",
        ),
        (
            PeerSpec {
                endpoint: ep(None, Some("192.0.2.1"), 0),
                ..base.clone()
            },
            "spec.endpoint.port",
        ),
        (
            PeerSpec {
                endpoint: ep(None, Some("192.0.2.1"), 70000),
                ..base.clone()
            },
            "spec.endpoint.port",
        ),
        (
            PeerSpec {
                endpoint: ep(None, None, 1),
                ..base.clone()
            },
            "needs dns or ip",
        ),
        (
            PeerSpec {
                endpoint: ep(None, Some("not-an-ip"), 1),
                ..base.clone()
            },
            "spec.endpoint.dnsOrIP.ip",
        ),
        (
            PeerSpec {
                endpoint: ep(Some("bad_name"), None, 1),
                ..base.clone()
            },
            "spec.endpoint.dnsOrIP.dns",
        ),
        (
            PeerSpec {
                persistent_keepalive: Some(-5),
                ..base.clone()
            },
            "spec.persistentKeepalive",
        ),
        (
            PeerSpec {
                preshared_key: Some("secret-but-wrong".into()),
                ..base.clone()
            },
            "spec.presharedKey",
        ),
    ];
    for (spec, want) in cases {
        let e = Peer::parse(&peer_obj(spec)).unwrap_err().to_string();
        assert!(
            e.starts_with("peer \"laptop\": ") && e.contains(want),
            "{e}"
        );
        assert!(!e.contains("secret-but-wrong"), "{e}");
    }
}

#[test]
fn settings_parse_with_defaults_and_errors() {
    let s = SettingsFile::default().parse().unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.subnet.to_string(), "10.4.0.0/16");
    assert_eq!(
        (s.port.get(), s.encapsulate, s.granularity),
        (51820, Encapsulate::Always, Granularity::Location)
    );
    let f = SettingsFile {
        granularity: Some("full".into()),
        subnet: Some("10.40.1.9/24".into()),
        port: Some(51821),
        topology_label: Some("zone".into()),
        encapsulate: Some("crosssubnet".into()),
        service_cidrs: vec!["10.96.0.1/12".into()],
        allow_exit_peers: Some(true),
    };
    let s = f.parse().unwrap();
    assert_eq!(s.subnet.to_string(), "10.40.1.0/24");
    assert_eq!(s.service_cidrs[0].to_string(), "10.96.0.0/12");
    assert!(s.allow_exit_peers);
    assert!(!Settings::default().allow_exit_peers);
    // As settings.yaml writes it.
    let f: SettingsFile = serde_norway::from_str("allowExitPeers: true\n").unwrap();
    assert!(f.parse().unwrap().allow_exit_peers);
    for (bad, want) in [
        (
            SettingsFile {
                port: Some(0),
                ..SettingsFile::default()
            },
            "settings: port: invalid value \"0\"",
        ),
        (
            SettingsFile {
                subnet: Some("10.4.0.1/32".into()),
                ..SettingsFile::default()
            },
            "settings: subnet",
        ),
        (
            SettingsFile {
                encapsulate: Some("sometimes".into()),
                ..SettingsFile::default()
            },
            "encapsulate",
        ),
        (
            SettingsFile {
                granularity: Some("auto".into()),
                ..SettingsFile::default()
            },
            "granularity",
        ),
        (
            SettingsFile {
                service_cidrs: vec!["x".into()],
                ..SettingsFile::default()
            },
            "serviceCIDRs",
        ),
    ] {
        let e = bad.parse().unwrap_err().to_string();
        assert!(e.starts_with("settings: ") && e.contains(want), "{e}");
    }
}

#[test]
fn parse_nodes_keeps_the_good_and_reports_the_bad() {
    let objs = vec![
        obj("a", &[]),
        obj("b", &[("weft.dev/key", "xyz")]),
        obj("c", &[]),
    ];
    let (nodes, errors) = parse_nodes(&objs, DEFAULT_TOPOLOGY_LABEL);
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].object, Object::Node("b".into()));
}

#[test]
fn discovered_endpoints_round_trip_through_the_annotation() {
    let map = BTreeMap::from([
        (K1.parse().unwrap(), "198.51.100.7:4242".parse().unwrap()),
        (K2.parse().unwrap(), "[2001:db8::1]:51820".parse().unwrap()),
    ]);
    let text = format_discovered_endpoints(&map);
    assert_eq!(
        annotations::weft(annotations::DISCOVERED_ENDPOINTS),
        "weft.dev/discovered-endpoints"
    );
    let n = parse(&[("weft.dev/discovered-endpoints", &text)]).unwrap();
    assert_eq!(n.discovered_endpoints, map);
}

#[test]
fn creation_timestamp_is_parsed_or_named_in_the_error() {
    let mut o = obj("a", &[]);
    o.creation_timestamp = Some("2026-12-02T04:00:00Z".into());
    assert_eq!(Node::parse(&o, "").unwrap().created, Some(1_796_184_000));
    assert_eq!(Node::parse(&obj("a", &[]), "").unwrap().created, None);
    o.creation_timestamp = Some("yesterday".into());
    let e = Node::parse(&o, "").unwrap_err();
    assert_eq!(e.field, "creationTimestamp");
    assert!(e.to_string().contains("yesterday"), "{e}");
}
