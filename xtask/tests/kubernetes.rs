//! The mesh with the `kubernetes` backend, against the test bed's real
//! kube-apiserver (xtask::k8s): Nodes and Peers created through the API,
//! changes without restarts, the CRD's validation, Kilo's Peer group, an API
//! server outage and an etcd compaction, a rolling restart of every agent,
//! `weft clean-up`, and the same topology from a directory and a cluster.

mod common;

use common::{bin_dir, wait_for};
use nix::sys::signal::Signal;
use std::time::Duration;
use xtask::k8s::ControlPlane;
use xtask::mesh::{Mesh, MeshOptions, host_reaches, ping_once};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec, Pod};

const WAIT: Duration = Duration::from_secs(90);

fn cluster(mut spec: ClusterSpec) -> Cluster {
    xtask::testbed::sweep_stale().expect("sweeping stale test beds");
    spec.api_server = true;
    Cluster::create(&spec).expect("test bed")
}

/// Two locations of two nodes and one alone, one pod each.
fn small_spec() -> ClusterSpec {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1", "gcp-2"]),
    ]);
    spec.pod_mtu = Some(1400);
    spec
}

fn pods_of<'c>(cluster: &'c Cluster, nodes: &[&str]) -> Vec<&'c Pod> {
    cluster
        .pods()
        .filter(|p| nodes.contains(&p.node.as_str()))
        .collect()
}

/// The value of annotation `key` of Node `node`, `None` when absent.
fn annotation(cp: &ControlPlane, node: &str, key: &str) -> Option<String> {
    let json = cp.kubectl(&["get", "node", node, "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_owned)
}

/// `wg show weft0 <what>` on `node`.
fn wg_show(cluster: &Cluster, node: &str, what: &str) -> String {
    cluster
        .node(node)
        .sh(&format!("wg show weft0 {what}"))
        .unwrap_or_default()
}

/// Nodes and peers through the API: the mesh forms, the laptop joins from
/// `weftctl --kubeconfig showconf`, and adding, changing and deleting a
/// Node or a Peer changes the mesh with no agent restarted. The agents'
/// patches keep a user's annotation and carry the `weft` field manager; a
/// Peer of Kilo's group is used.
#[test]
#[ignore = "needs root and the API server; run by cargo xtask test"]
fn mesh_over_the_api_server_follows_nodes_and_peers() {
    let cluster = cluster(xtask::mesh::demo_spec());
    let cp = ControlPlane::start(&cluster).unwrap();
    let mut mesh = Mesh::new_kubernetes(
        &cluster,
        &bin_dir(),
        MeshOptions::default(),
        &cp,
        &["onprem-1"],
    )
    .unwrap();
    let registered = ["aws-1", "aws-2", "gcp-1", "gcp-2"];
    for n in registered {
        mesh.start(n).unwrap();
    }
    mesh.wait_connectivity(&pods_of(&cluster, &registered), WAIT)
        .unwrap();

    // Each agent published its own key on its own Node, under manager `weft`.
    for n in registered {
        let key = wg_show(&cluster, n, "public-key");
        assert_eq!(
            annotation(&cp, n, "weft.dev/key").as_deref(),
            Some(key.trim()),
            "{n}"
        );
    }
    let json = cp.kubectl(&["get", "node", "aws-2", "-o", "json"]).unwrap();
    let node: serde_json::Value = serde_json::from_str(&json).unwrap();
    let managers: Vec<&str> = node["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"weft"), "managedFields: {managers:?}");

    // A user's annotation, set while the agents patch every 2 s, stays.
    cp.kubectl(&["annotate", "node", "aws-2", "example.com/owner=alice"])
        .unwrap();
    let seen = annotation(&cp, "aws-2", "weft.dev/last-seen");
    wait_for("aws-2 to publish twice more", WAIT, || {
        let now = annotation(&cp, "aws-2", "weft.dev/last-seen");
        (now != seen && now.is_some()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        annotation(&cp, "aws-2", "example.com/owner").as_deref(),
        Some("alice")
    );

    // The laptop joins from a Peer object and `weftctl --kubeconfig showconf`.
    let _laptop_wg = mesh.add_laptop().unwrap();
    let laptop = cluster.laptop.as_ref().unwrap();
    let behind = [
        cluster.node("aws-2").pods[0].ip,
        cluster.node("gcp-2").pods[0].ip,
    ];
    wait_for("the laptop to reach pods behind non-leaders", WAIT, || {
        mesh.configure_laptop().ok()?;
        behind
            .iter()
            .all(|ip| host_reaches(laptop, *ip))
            .then_some(())
    });

    // A Peer of Kilo's group (its CRD installed, as a Kilo cluster has it) is used.
    cp.install_peer_crd("kilo.squat.ai").unwrap();
    let kilo_key = laptop
        .sh("wg genkey | wg pubkey")
        .unwrap()
        .trim()
        .to_string();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &xtask::mesh::peer_manifest(
            "kilo.squat.ai",
            "kilo-phone",
            &format!("  allowedIPs: [10.5.0.2/32]\n  publicKey: {kilo_key}\n"),
        ),
    )
    .unwrap();
    wait_for(
        "the leaders to configure the Kilo Peer",
        Duration::from_secs(120),
        || {
            ["aws-1", "gcp-1"]
                .iter()
                .all(|n| wg_show(&cluster, n, "peers").contains(&kilo_key))
                .then_some(())
        },
    );

    // A new Node joins: its agent starts, every pod reaches every other.
    mesh.register(cluster.node("onprem-1"), &[]).unwrap();
    mesh.start("onprem-1").unwrap();
    mesh.wait_full_connectivity(WAIT).unwrap();

    // A changed Node: Kilo's leader annotation moves gcp's leader to gcp-2.
    cp.kubectl(&["annotate", "node", "gcp-2", "kilo.squat.ai/leader=true"])
        .unwrap();
    wait_for("gcp-2 to lead", WAIT, || {
        (mesh.metric("gcp-2", "weft_is_leader ") == Some(1.0)
            && mesh.metric("gcp-1", "weft_is_leader ") == Some(0.0))
        .then_some(())
    });
    mesh.wait_full_connectivity(WAIT).unwrap();

    // A deleted Node leaves the mesh; a deleted Peer too.
    let onprem = cluster.node("onprem-1").pods[0].ip;
    let from = &cluster.node("aws-2").pods[0];
    assert!(ping_once(from, onprem));
    cp.kubectl(&["delete", "node", "onprem-1"]).unwrap();
    wait_for("onprem-1's pods to be cut off", WAIT, || {
        (!ping_once(from, onprem)).then_some(())
    });
    cp.kubectl(&["delete", "peer.weft.dev", "laptop"]).unwrap();
    wait_for("the laptop to be cut off", WAIT, || {
        behind
            .iter()
            .all(|ip| !host_reaches(laptop, *ip))
            .then_some(())
    });
    for n in registered {
        assert!(mesh.is_running(n), "{n}'s agent was restarted or exited");
    }
    let log = mesh.agent("aws-1").read_log();
    assert!(
        log.contains("watching Peer objects of kilo.squat.ai/v1alpha1"),
        "{}",
        xtask::mesh::tail(&log, 30)
    );
}

/// The CRD's schema refuses what Kilo's webhook refuses; the manifests pass
/// the API server's validation.
#[test]
#[ignore = "needs root and the API server; run by cargo xtask test"]
fn the_peer_crd_refuses_invalid_peers() {
    let cluster = cluster(ClusterSpec::new(vec![LocationSpec::new("aws", ["a1"])]));
    let cp = ControlPlane::start(&cluster).unwrap();
    cp.install_peer_crd("weft.dev").unwrap();
    let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    // `--validate=false`: the API server's own validation is under test (the
    // agent and every other client meet it); kubectl's client-side check
    // only runs once the CRD's OpenAPI is published, a race.
    let apply = |name: &str, spec: &str| {
        cp.kubectl_stdin(
            &["apply", "--validate=false", "-f", "-"],
            &xtask::mesh::peer_manifest("weft.dev", name, spec),
        )
    };
    apply(
        "good",
        &format!(
            "  allowedIPs: [10.5.0.1/32]\n  publicKey: {key}\n  endpoint: {{dnsOrIP: {{ip: 192.0.2.1}}, port: 51820}}\n  persistentKeepalive: 0\n"
        ),
    )
    .expect("a valid Peer is accepted");
    for (name, spec, field) in [
        (
            "bad-key",
            "  allowedIPs: [10.5.0.1/32]\n  publicKey: not-a-key\n".to_string(),
            "spec.publicKey",
        ),
        (
            "short-key",
            format!("  allowedIPs: [10.5.0.1/32]\n  publicKey: {}\n", &key[1..]),
            "spec.publicKey",
        ),
        (
            "no-key",
            "  allowedIPs: [10.5.0.1/32]\n".to_string(),
            "spec.publicKey",
        ),
        (
            "empty-ips",
            format!("  allowedIPs: []\n  publicKey: {key}\n"),
            "spec.allowedIPs",
        ),
        (
            "bad-cidr",
            format!("  allowedIPs: [nonsense]\n  publicKey: {key}\n"),
            "spec.allowedIPs",
        ),
        (
            "port-0",
            format!(
                "  allowedIPs: [10.5.0.1/32]\n  publicKey: {key}\n  endpoint: {{dnsOrIP: {{ip: 192.0.2.1}}, port: 0}}\n"
            ),
            "spec.endpoint.port",
        ),
        (
            "port-high",
            format!(
                "  allowedIPs: [10.5.0.1/32]\n  publicKey: {key}\n  endpoint: {{dnsOrIP: {{ip: 192.0.2.1}}, port: 65536}}\n"
            ),
            "spec.endpoint.port",
        ),
        (
            "negative-keepalive",
            format!("  allowedIPs: [10.5.0.1/32]\n  publicKey: {key}\n  persistentKeepalive: -1\n"),
            "spec.persistentKeepalive",
        ),
    ] {
        let e = apply(name, &spec).expect_err(name);
        let msg = format!("{e:#}");
        assert!(
            msg.contains("is invalid") && msg.contains(field),
            "{name}: expected a schema error on {field}, got: {msg}"
        );
    }
    let list = cp
        .kubectl(&["get", "peers.weft.dev", "-o", "name"])
        .unwrap();
    assert_eq!(list.trim(), "peer.weft.dev/good");
}

/// Stopping the API server for over a minute drops no packet, `/health`
/// says the agents run on stale data, and they catch up afterwards; an etcd
/// compaction's `410 Gone` is survived the same way.
#[test]
#[ignore = "needs root and the API server; run by cargo xtask test"]
fn api_server_outage_and_compaction_drop_no_traffic() {
    let cluster = cluster(small_spec());
    let cp = ControlPlane::start(&cluster).unwrap();
    let mut mesh =
        Mesh::new_kubernetes(&cluster, &bin_dir(), MeshOptions::default(), &cp, &[]).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(WAIT).unwrap();
    let _dump = common::DumpOnPanic(&mesh);
    let src = &cluster.node("aws-2").pods[0];
    let dst = cluster.node("gcp-2").pods[0].ip;
    let ping = common::Pinger::start(src, dst);

    ping.mark("stopping the API server");
    cp.stop_apiserver().unwrap();
    let down = std::time::Instant::now();
    wait_for("every agent to report stale data", WAIT, || {
        cluster
            .nodes
            .iter()
            .all(|n| {
                mesh.http_get(&n.name, "/health")
                    .is_ok_and(|r| r.contains("200 OK") && r.contains("stale"))
                    && mesh.metric(&n.name, "weft_backend_stale ") == Some(1.0)
            })
            .then_some(())
    });
    // Past the 60 s readiness window: the nodes' last-seen goes stale meanwhile.
    while down.elapsed() < Duration::from_secs(75) {
        mesh.check_running().unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        mesh.metric("aws-1", "weft_ready_nodes ") == Some(4.0),
        "nodes dropped out of the mesh during the outage"
    );
    ping.mark("starting the API server");
    cp.start_apiserver().unwrap();
    ping.mark("API server started");
    wait_for("every agent to be fresh again", WAIT, || {
        cluster
            .nodes
            .iter()
            .all(|n| mesh.metric(&n.name, "weft_backend_stale ") == Some(0.0))
            .then_some(())
    });
    ping.mark("every agent fresh again; annotating gcp-2");
    // They follow changes again: a new allowed-location range of gcp.
    let range = "10.99.0.0/24";
    cp.kubectl(&[
        "annotate",
        "node",
        "gcp-2",
        &format!("weft.dev/allowed-location-ips={range}"),
    ])
    .unwrap();
    // Twice the usual wait: right after the outage the agents' watches are
    // back, but a loaded machine's agents may still be relisting and
    // re-applying (timed out once in CI at 90 s, passed on a rerun).
    wait_for("aws-1 to route the new range to gcp", 2 * WAIT, || {
        wg_show(&cluster, "aws-1", "allowed-ips")
            .contains(range)
            .then_some(())
    });

    // Compaction: the watches resume from a compacted revision and get 410 Gone.
    ping.mark("aws-1 routes the range; compacting etcd");
    cp.compact_etcd().unwrap();
    ping.mark("compacted; removing the annotation");
    cp.kubectl(&[
        "annotate",
        "node",
        "gcp-2",
        "weft.dev/allowed-location-ips-",
    ])
    .unwrap();
    wait_for("aws-1 to drop the range after the compaction", WAIT, || {
        (!wg_show(&cluster, "aws-1", "allowed-ips").contains(range)).then_some(())
    });
    ping.mark("aws-1 dropped the range");
    let logs: String = cluster
        .nodes
        .iter()
        .map(|n| mesh.agent(&n.name).read_log())
        .collect();
    assert!(
        logs.contains("410") || logs.contains("too old resource version"),
        "no agent saw the 410 Gone of the compaction"
    );
    mesh.check_running().unwrap();
    ping.assert_no_loss();
}

/// A rolling update: every agent stopped with SIGTERM (`--clean-up=false`,
/// as the DaemonSet runs it) and started again, one after the other, loses
/// no packet; then `weft clean-up` leaves nothing behind on any node.
#[test]
#[ignore = "needs root and the API server; run by cargo xtask test"]
fn rolling_restart_loses_nothing_and_clean_up_removes_everything() {
    let cluster = cluster(small_spec());
    let rules = common::ip_rules(&cluster);
    let cp = ControlPlane::start(&cluster).unwrap();
    let mut opts = MeshOptions::default();
    opts.agent_flags.push("--clean-up=false".into());
    let mut mesh = Mesh::new_kubernetes(&cluster, &bin_dir(), opts, &cp, &[]).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(WAIT).unwrap();
    let src = &cluster.node("aws-2").pods[0];
    let dst = cluster.node("gcp-2").pods[0].ip;
    let ping = common::Pinger::start(src, dst);
    for n in &cluster.nodes {
        let agent = mesh.agent(&n.name);
        agent.signal(Signal::SIGTERM).unwrap();
        agent.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            agent.read_log().contains("exiting without clean-up"),
            "{}",
            n.name
        );
        mesh.start(&n.name).unwrap();
        wait_for(
            &format!("{}'s new agent to reconcile twice", n.name),
            WAIT,
            || (mesh.metric(&n.name, "weft_reconciles_total ") >= Some(2.0)).then_some(()),
        );
        eprintln!(
            "    {}: agent stopped with SIGTERM and started again",
            n.name
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    ping.assert_no_loss();

    for n in &cluster.nodes {
        mesh.agent(&n.name).stop(Duration::from_secs(30)).unwrap();
        assert!(n.sh("ip link show weft0").is_ok(), "{}: weft0 gone", n.name);
    }
    for (n, before) in cluster.nodes.iter().zip(&rules) {
        let cni = n.cni_dir.join("10-weft.conflist");
        let out = xtask::util::output(
            n.cmd(bin_dir().join("weft"))
                .args(["clean-up", "--interface", "weft0", "--cni-path"])
                .arg(&cni)
                .arg("--state-dir")
                .arg(&n.state_dir),
        )
        .unwrap();
        eprintln!("    {}: weft clean-up{out}", n.name);
        common::assert_nothing_left(n, before);
        assert!(!n.state_dir.exists(), "{}: state directory left", n.name);
    }
}

/// One cluster, written once as a directory and once as Kubernetes
/// objects, gives the same graph and the same WireGuard configurations.
#[test]
#[ignore = "needs root and the API server; run by cargo xtask test"]
fn directory_and_kubernetes_give_the_same_topology() {
    let cluster = cluster(ClusterSpec::new(vec![LocationSpec::new("aws", ["a1"])]));
    let cp = ControlPlane::start(&cluster).unwrap();
    let host = cluster.api_server.as_ref().unwrap();
    let dir = cluster.dir.join("same");
    std::fs::create_dir_all(dir.join("nodes")).unwrap();
    std::fs::create_dir_all(dir.join("peers")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let key = || host.sh("wg genkey | wg pubkey").unwrap().trim().to_string();
    let nodes = [
        (
            "eu-1",
            "eu",
            "10.42.0.0/24",
            "192.168.1.10/24",
            "198.18.0.10",
            true,
        ),
        (
            "eu-2",
            "eu",
            "10.42.1.0/24",
            "192.168.1.11/24",
            "198.18.0.11",
            false,
        ),
        (
            "us-1",
            "us",
            "10.42.2.0/24",
            "192.168.2.10/24",
            "198.18.0.12",
            false,
        ),
        ("solo", "", "10.42.3.0/24", "", "198.18.0.13", false),
    ];
    for (name, location, pod_cidr, internal, public, leader) in nodes {
        let k = key();
        let mut ann = vec![
            ("kilo.squat.ai/key", k.clone()),
            ("weft.dev/endpoint", format!("{public}:51820")),
            ("kilo.squat.ai/internal-ip", internal.to_string()),
            ("weft.dev/last-seen", now.clone()),
            ("kilo.squat.ai/persistent-keepalive", "25".to_string()),
        ];
        if !location.is_empty() {
            ann.push(("kilo.squat.ai/location", location.to_string()));
        }
        if leader {
            ann.push(("weft.dev/leader", String::new()));
            ann.push((
                "kilo.squat.ai/allowed-location-ips",
                "10.77.0.0/16".to_string(),
            ));
        }
        let mut yaml = format!("name: {name}\npodCIDR: {pod_cidr}\nlabels: {{}}\nannotations:\n");
        let mut node =
            format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n");
        for (k, v) in &ann {
            yaml.push_str(&format!("  {k}: {v:?}\n"));
            node.push_str(&format!("    {k}: {v:?}\n"));
        }
        node.push_str(&format!("spec:\n  podCIDR: {pod_cidr}\n"));
        std::fs::write(dir.join("nodes").join(format!("{name}.yaml")), yaml).unwrap();
        cp.kubectl_stdin(&["apply", "-f", "-"], &node).unwrap();
    }
    cp.install_peer_crd("weft.dev").unwrap();
    let spec = format!(
        "  allowedIPs: [10.5.0.1/32, 10.5.1.0/24]\n  publicKey: {}\n  endpoint: {{dnsOrIP: {{ip: 198.18.0.201}}, port: 51820}}\n  persistentKeepalive: 10\n",
        key()
    );
    std::fs::write(
        dir.join("peers/laptop.yaml"),
        format!("name: laptop\nspec:\n{spec}"),
    )
    .unwrap();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &xtask::mesh::peer_manifest("weft.dev", "laptop", &spec),
    )
    .unwrap();

    let weftctl = bin_dir().join("weftctl");
    let from_dir = |args: &[&str]| {
        xtask::util::output(
            std::process::Command::new(&weftctl)
                .arg("--dir")
                .arg(&dir)
                .args(args),
        )
        .unwrap()
    };
    let from_kube = |args: &[&str]| {
        xtask::util::output(
            host.cmd(&weftctl)
                .arg("--kubeconfig")
                .arg(cp.admin_kubeconfig())
                .args(args),
        )
        .unwrap()
    };
    for args in [
        vec!["graph"],
        vec!["showconf", "node", "eu-1"],
        vec!["showconf", "node", "us-1", "-o", "yaml"],
        vec!["showconf", "node", "solo", "--as-peer"],
        vec!["showconf", "peer", "laptop"],
    ] {
        let d = from_dir(&args);
        assert!(!d.trim().is_empty(), "{args:?} printed nothing");
        assert_eq!(d, from_kube(&args), "{args:?}");
    }
    // Not a comparison of two empty meshes: the annotations took effect.
    let us = from_kube(&["showconf", "node", "us-1"]);
    assert!(
        us.contains("10.77.0.0/16") && us.contains("10.5.1.0/24"),
        "{us}"
    );
}
