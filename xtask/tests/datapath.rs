//! The whole eBPF chain on a test-bed node: the agent loads the embedded
//! object, attaches the pod-side program to the pod veths, pins maps and
//! links under /sys/fs/bpf/weft; pings are counted; bpftool reads the pin;
//! SIGTERM with clean-up leaves nothing; kill -9 leaves the datapath working
//! and a new agent re-adopts it.

mod common;

use common::{bin_dir, wait_for};
use std::time::Duration;
use weft_common::counters::Counter;
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec, Node};

fn one_node_cluster() -> Cluster {
    let mut spec = ClusterSpec::new(vec![LocationSpec::new("lab", ["n1"])]);
    spec.pods_per_node = 2;
    Cluster::create(&spec).expect("test bed")
}

/// Little-endian integer from bpftool's hex bytes (`["0x01", "0x00", ...]`).
fn le(bytes: &[serde_json::Value]) -> u64 {
    bytes.iter().rev().fold(0, |acc, b| {
        let h = b.as_str().expect("hex byte").trim_start_matches("0x");
        (acc << 8) | u64::from_str_radix(h, 16).expect("hex")
    })
}

/// A counter's packets summed over CPUs, read with bpftool from the pinned
/// map inside the node (the map has no BTF, so bpftool prints hex bytes:
/// key u32, value {packets: u64, bytes: u64}).
fn counter(node: &Node, c: Counter) -> u64 {
    let out = node
        .cmd("bpftool")
        .args([
            "-j",
            "map",
            "dump",
            "pinned",
            "/sys/fs/bpf/weft/WEFT_COUNTERS",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let idx = c as u64;
    let entry = v
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["key"].as_array().is_some_and(|k| le(k) == idx))
        .unwrap_or_else(|| panic!("no counter {idx} in {v}"));
    entry["values"]
        .as_array()
        .expect("per-CPU values")
        .iter()
        .map(|cpu| le(&cpu["value"].as_array().expect("value bytes")[..8]))
        .sum()
}

fn links_pinned(node: &Node) -> Vec<String> {
    let dir = node.bpffs_dir.join("weft/links");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pod_links(node: &Node) -> usize {
    links_pinned(node)
        .iter()
        .filter(|l| l.starts_with("pod_ingress@"))
        .count()
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pod_counter_counts_pings_and_clean_up_leaves_nothing() {
    let cluster = one_node_cluster();
    let node = &cluster.nodes[0];
    let conflist = node.cni_dir.join("10-weft.conflist");
    let mut opts = MeshOptions::default();
    opts.agent_flags.extend([
        "--cni".into(),
        "true".into(),
        "--cni-path".into(),
        conflist.display().to_string(),
    ]);
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();
    mesh.start("n1").unwrap();
    wait_for(
        "the programs attached to the pod veths, the NIC, the uplink and WireGuard",
        Duration::from_secs(60),
        || {
            mesh.check_running().unwrap();
            (links_pinned(node).len() == 7).then_some(())
        },
    );
    // The pods' veths, named by the bridge plugin.
    // The NIC's egress: IPIP for what the host itself sends (the
    // default, crosssubnet, may encapsulate).
    let mut want: Vec<String> = ["nic_egress@eth0", "nic_ingress@eth0", "nic_xdp@eth0"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            node.pods
                .iter()
                .map(|p| format!("pod_ingress@{}", p.host_veth)),
        )
        // eth1, the public interface: masqueraded flows' replies.
        .chain(["uplink_ingress@eth1".into(), "wg_ingress@weft0".into()])
        .collect();
    want.sort();
    assert_eq!(links_pinned(node), want);

    let before = counter(node, Counter::PodIngressSeen);
    let (p0, p1) = (&node.pods[0], &node.pods[1]);
    p0.ping(p1.ip, 10).unwrap();
    p0.ping(node.gateway, 5).unwrap();
    let after = counter(node, Counter::PodIngressSeen);
    // 10 requests enter pod 0's veth, 10 replies pod 1's, 5 requests to the gateway pod 0's.
    assert!(
        after - before >= 25,
        "pod_ingress_seen grew by {} (from {before} to {after})",
        after - before
    );

    // bpftool shows the pinned map by name.
    let show = node
        .sh("bpftool map show pinned /sys/fs/bpf/weft/WEFT_COUNTERS")
        .unwrap();
    assert!(
        show.contains("WEFT_COUNTERS") && show.contains("percpu_array"),
        "{show}"
    );
    // The agent exports the same counters.
    let metrics = mesh.metrics("n1").unwrap();
    assert!(
        metrics.contains("weft_datapath_packets{counter=\"pod_ingress_seen\"}"),
        "{metrics}"
    );

    // /health once reconciled, /graph?format=dot the mesh in DOT.
    let health = mesh.http_get("n1", "/health").unwrap();
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let graph = mesh.http_get("n1", "/graph?format=dot").unwrap();
    assert!(graph.contains("digraph") && graph.contains("n1"), "{graph}");
    // --cni: the bridge plugin's conflist on the node's pod CIDR.
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["bridge"], "cni0");
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        node.pod_cidr.to_string()
    );

    // SIGTERM: the default --clean-up removes programs, links, pins, the device, routes, CNI config.
    mesh.agent("n1")
        .stop(Duration::from_secs(20))
        .expect("weft stops");
    assert!(
        !node.bpffs_dir.join("weft").exists(),
        "pins left behind: {:?}",
        links_pinned(node)
    );
    let log = mesh.agent("n1").read_log();
    assert!(log.contains("clean-up complete"), "{log}");
    assert!(!conflist.exists(), "CNI configuration left behind");
    // bpftool lists the programs of every namespace, and the kernel frees
    // those of an earlier test's namespaces asynchronously: wait for none.
    wait_for("no weft program loaded", Duration::from_secs(30), || {
        let progs = node
            .sh("bpftool prog show | grep -c weft_ || true")
            .unwrap();
        (progs.trim() == "0").then_some(())
    });
    let links = node.sh("ip -o link show").unwrap();
    assert!(!links.contains("weft0"), "{links}");
    let routes = node.sh("ip route show proto 87").unwrap();
    assert!(routes.trim().is_empty(), "{routes}");
    // No process (wireguard-go included) is left in the node's namespace.
    assert_eq!(
        xtask::mesh::processes_in(&node.netns).unwrap(),
        "",
        "processes left in the node namespace"
    );
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pinned_datapath_survives_kill_9_and_is_readopted() {
    let cluster = one_node_cluster();
    let node = &cluster.nodes[0];
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start("n1").unwrap();
    wait_for("links pinned", Duration::from_secs(60), || {
        (pod_links(node) == 2).then_some(())
    });
    mesh.kill("n1").unwrap();

    // Nobody runs the agent now: the pinned links keep counting.
    let before = counter(node, Counter::PodIngressSeen);
    node.pods[0].ping(node.pods[1].ip, 5).unwrap();
    assert!(
        counter(node, Counter::PodIngressSeen) - before >= 10,
        "datapath stopped counting after kill -9"
    );

    // A new agent re-adopts the pinned links and maps (the counters carry on).
    mesh.start("n1").unwrap();
    wait_for("re-adoption logged", Duration::from_secs(60), || {
        let log = mesh.agent("n1").read_log();
        (log.matches("re-adopted pinned eBPF link").count() >= 2).then_some(())
    });
    let kept = counter(node, Counter::PodIngressSeen);
    assert!(
        kept >= before + 10,
        "counters were reset by the restart: {kept} < {}",
        before + 10
    );
    node.pods[1].ping(node.pods[0].ip, 5).unwrap();
    assert!(counter(node, Counter::PodIngressSeen) >= kept + 10);
    mesh.agent("n1").stop(Duration::from_secs(20)).unwrap();
    assert!(!node.bpffs_dir.join("weft").exists());
}

/// Kernels without TCX links: `--tc-attach netlink` attaches clsact filters
/// (what `tc filter show` lists), which keep forwarding after `kill -9`, are
/// replaced by the next agent, and are removed on clean-up.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn clsact_fallback_counts_survives_kill_9_and_cleans_up() {
    let cluster = one_node_cluster();
    let node = &cluster.nodes[0];
    let mut opts = MeshOptions::default();
    opts.agent_flags
        .extend(["--tc-attach".into(), "netlink".into()]);
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();
    mesh.start("n1").unwrap();
    let filters = |dev: &str| {
        node.sh(&format!("tc filter show dev {dev} ingress"))
            .unwrap()
    };
    wait_for(
        "clsact filters on the pod veths, the NIC, the uplink and WireGuard",
        Duration::from_secs(60),
        || {
            mesh.check_running().unwrap();
            (links_pinned(node).len() == 7 && filters("weft0").contains("weft_wg_ingress"))
                .then_some(())
        },
    );
    let vp0 = node.pods[0].host_veth.as_str();
    assert!(
        filters(vp0).contains("weft_pod_ingress"),
        "{}",
        filters(vp0)
    );
    assert!(
        filters("eth0").contains("weft_nic_ingress"),
        "{}",
        filters("eth0")
    );
    let egress = || node.sh("tc filter show dev eth0 egress").unwrap();
    assert!(egress().contains("weft_nic_egress"), "{}", egress());
    // No TCX link: the markers are directories, not pinned links.
    assert!(
        node.bpffs_dir
            .join(format!("weft/links/pod_ingress@{vp0}"))
            .is_dir()
    );

    mesh.kill("n1").unwrap();
    let before = counter(node, Counter::PodIngressSeen);
    node.pods[0].ping(node.pods[1].ip, 5).unwrap();
    let after = counter(node, Counter::PodIngressSeen);
    assert!(
        after - before >= 10,
        "the filters stopped counting after kill -9"
    );

    mesh.start("n1").unwrap();
    wait_for(
        "the filters replaced by the new agent",
        Duration::from_secs(60),
        || {
            let log = mesh.agent("n1").read_log();
            (log.matches("re-adopted eBPF filter (clsact, replaced)")
                .count()
                >= 4)
                .then_some(())
        },
    );
    // One filter per hook, not two, and the maps kept their counts.
    assert_eq!(
        filters(vp0).matches("weft_pod_ingress").count(),
        1,
        "{}",
        filters(vp0)
    );
    node.pods[1].ping(node.pods[0].ip, 5).unwrap();
    assert!(counter(node, Counter::PodIngressSeen) >= after + 10);

    mesh.agent("n1").stop(Duration::from_secs(20)).unwrap();
    assert!(
        !node.bpffs_dir.join("weft").exists(),
        "pins or markers left"
    );
    for dev in [vp0, node.pods[1].host_veth.as_str(), "eth0"] {
        assert!(!filters(dev).contains("weft_"), "{dev}: {}", filters(dev));
    }
    assert!(!egress().contains("weft_"), "eth0 egress: {}", egress());
}
