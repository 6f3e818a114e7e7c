//! Multi-cluster, as Kilo's guide does it: two meshes with their own
//! WireGuard subnets and pod CIDRs on one internet, each cluster's leaders
//! registered in the other as peers with `weftctl showconf node N --as-peer
//! -o yaml --allowed-ips <its service CIDR>` (the README's recipe, with
//! directories for the clusters' API servers); pods of both reach each
//! other both ways, non-leaders included.

mod common;

use common::bin_dir;
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec, Pod};

const SERVICE_CIDR_1: &str = "10.43.0.0/16";
const SERVICE_CIDR_2: &str = "10.45.0.0/16";

/// The README's recipe for directories: every node of cluster `$DIR1` that
/// leads its segment becomes `peers/<node>.yaml` of cluster `$DIR2` (for
/// Kubernetes the output goes to `kubectl --kubeconfig $KUBECONFIG2 apply -f -`).
const RECIPE: &str = r#"set -eu
for n in $(ls "$DIR1/nodes" | sed 's/\.yaml$//'); do
    out=$("$WEFTCTL" --dir "$DIR1" showconf node "$n" --as-peer -o yaml --allowed-ips "$SERVICECIDR1")
    [ -z "$out" ] || printf '%s\n' "$out" > "$DIR2/peers/$n.yaml"
done
"#;

/// Registers the leaders of `from` (service CIDR `service`) in `to`.
fn register(from: &Mesh, service: &str, to: &Mesh) -> Vec<String> {
    let out = Command::new("bash")
        .args(["-c", RECIPE])
        .env("WEFTCTL", bin_dir().join("weftctl"))
        .env("DIR1", &from.dir)
        .env("DIR2", &to.dir)
        .env("SERVICECIDR1", service)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the recipe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut peers: Vec<String> = std::fs::read_dir(to.dir.join("peers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    peers.sort();
    peers
}

/// Cluster 1: aws (aws-1, aws-2) and gcp (gcp-1), subnet 10.4.0.0/16;
/// cluster 2: az (az-1, az-2), subnet 10.6.0.0/16. Pod CIDRs 10.42.0-4.0/24.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn two_clusters_ping_both_ways() {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1"]),
        LocationSpec::new("az", ["az-1", "az-2"]),
    ]);
    spec.pod_mtu = Some(1400);
    let cluster = Cluster::create(&spec).expect("test bed");
    let one = ["aws-1", "aws-2", "gcp-1"];
    let two = ["az-1", "az-2"];
    let opts = |subnet: &str, service: &str| MeshOptions {
        settings: vec![
            format!("subnet: {subnet}"),
            format!("serviceCIDRs: [{service}]"),
        ],
        ..Default::default()
    };
    let mut c1 = Mesh::new_of(
        &cluster,
        &bin_dir(),
        opts("10.4.0.0/16", SERVICE_CIDR_1),
        "cluster1",
        &one,
    )
    .unwrap();
    let mut c2 = Mesh::new_of(
        &cluster,
        &bin_dir(),
        opts("10.6.0.0/16", SERVICE_CIDR_2),
        "cluster2",
        &two,
    )
    .unwrap();
    c1.start_all().unwrap();
    c2.start_all().unwrap();
    let pods_of = |names: &[&str]| -> Vec<&Pod> {
        cluster
            .pods()
            .filter(|p| names.contains(&p.node.as_str()))
            .collect()
    };
    let (pods1, pods2) = (pods_of(&one), pods_of(&two));
    c1.wait_connectivity(&pods1, Duration::from_secs(60))
        .unwrap();
    c2.wait_connectivity(&pods2, Duration::from_secs(60))
        .unwrap();
    let all: Vec<&Pod> = cluster.pods().collect();
    assert!(
        xtask::mesh::unreachable_pairs(&all).len() == 2 * pods1.len() * pods2.len(),
        "the clusters reach each other before they are joined"
    );

    let t = Instant::now();
    let in2 = register(&c1, SERVICE_CIDR_1, &c2);
    let in1 = register(&c2, SERVICE_CIDR_2, &c1);
    assert_eq!(in2, ["aws-1.yaml", "gcp-1.yaml"], "cluster 1's leaders");
    assert_eq!(in1, ["az-1.yaml"], "cluster 2's leader");
    let peer = std::fs::read_to_string(c2.dir.join("peers/aws-1.yaml")).unwrap();
    assert!(
        peer.contains(SERVICE_CIDR_1) && peer.contains(&cluster.node("aws-2").pod_cidr.to_string()),
        "{peer}"
    );
    // Every pod of each cluster reaches every pod of the other (and its own).
    c1.wait_connectivity(&all, Duration::from_secs(60)).unwrap();
    c2.check_running().unwrap();
    eprintln!(
        "    two clusters: all {} pod pairs ping both ways {:.1} s after the peers were registered",
        all.len() * (all.len() - 1),
        t.elapsed().as_secs_f64()
    );
    // Each cluster's leaders peer with the other's leaders, as peers.
    let conf = c2.weftctl(&["showconf", "node", "az-1"]).unwrap();
    assert_eq!(conf.matches("[Peer]").count(), 2, "{conf}");
    assert!(conf.contains(SERVICE_CIDR_1), "{conf}");
}
