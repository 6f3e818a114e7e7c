//! The agent's WireGuard mesh between test-bed nodes: connectivity in every
//! granularity, the external peer, changes without restarts, no packet lost
//! across resyncs and restarts, leader failover, bad input, clean-up.

mod common;

use common::bin_dir;
use std::time::Duration;
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec};

/// The demo's shape: two locations of two nodes, one node alone, two pods
/// each, a laptop.
fn demo_cluster() -> Cluster {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1", "gcp-2"]),
        LocationSpec::new("onprem", ["onprem-1"]),
    ]);
    spec.pods_per_node = 2;
    spec.external_peer = true;
    spec.pod_mtu = Some(1400);
    Cluster::create(&spec).expect("test bed")
}

fn full_connectivity(settings: &[&str]) {
    let cluster = demo_cluster();
    let opts = MeshOptions {
        settings: settings.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();
    let pods: Vec<_> = cluster.pods().collect();
    let before = xtask::mesh::unreachable_pairs(&pods);
    assert_eq!(
        before.len(),
        10 * 9 - 5 * 2,
        "without agents only pods of one node reach each other: {before:?}"
    );
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_connectivity_location_granularity() {
    full_connectivity(&[]);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_connectivity_full_granularity() {
    full_connectivity(&["granularity: full"]);
}
