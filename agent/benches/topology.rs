//! How long the topology takes: computing one node's topology (the mesh,
//! then that node's view) and diffing two of them, for clusters of 10 to
//! 5000 nodes spread over 50 locations, generated in memory.
//! Run by `cargo xtask bench` (or `cargo bench -p weft --bench topology`).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft::model::{Node, PublicKey, Settings};
use weft::topology::{Mesh, diff};

const LOCATIONS: usize = 50;
const NOW: i64 = 1_700_000_000;

/// `n` ready nodes, round-robin over the locations, with distinct keys,
/// public endpoints, private IPs and pod CIDRs.
fn cluster(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            Node {
                pod_cidr: Some(
                    format!("10.{}.{}.0/24", 64 + i / 256, i % 256)
                        .parse()
                        .expect("valid CIDR"),
                ),
                location: format!("loc-{:02}", i % LOCATIONS),
                key: Some(PublicKey::from_bytes(key)),
                endpoint: Some(
                    format!("198.18.{hi}.{lo}:51820")
                        .parse()
                        .expect("valid endpoint"),
                ),
                internal_ip: Some(format!("172.16.{hi}.{lo}/16").parse().expect("valid CIDR")),
                last_seen: Some(NOW),
                ..Node::named(format!("node-{i:05}"))
            }
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Prints the median time to compute a node's topology and to diff two
/// topologies, for 10, 100, 1000 and 5000 nodes.
fn main() -> Result<()> {
    let settings = Settings::default();
    let demoted = BTreeSet::new();
    println!("topology: {LOCATIONS} locations, median of several runs");
    println!(
        "{:>7}  {:>10}  {:>16}  {:>10}  {:>7}",
        "nodes", "segments", "mesh+topology", "diff", "routes"
    );
    for n in [10, 100, 1000, 5000] {
        let nodes = cluster(n);
        // The view of the first node, a leader; the change: the leader of
        // another location (the second node, first by name there) moves.
        let me = nodes[0].name.clone();
        let mut moved = nodes.clone();
        moved[1].endpoint = Some("198.19.0.1:51820".parse().expect("valid endpoint"));
        let runs = if n >= 1000 { 5 } else { 21 };

        let mut compute = Vec::with_capacity(runs);
        let mut before = None;
        for _ in 0..runs {
            let start = Instant::now();
            let t = Mesh::build(black_box(&nodes), &[], &settings, NOW, &demoted)
                .and_then(|m| m.topology(&me))
                .context("computing the topology")?;
            compute.push(start.elapsed());
            before = Some(t);
        }
        let before = before.context("no run")?;
        let after = Mesh::build(&moved, &[], &settings, NOW, &demoted)
            .and_then(|m| m.topology(&me))
            .context("computing the changed topology")?;

        let mut diffs = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            let d = diff(black_box(&before), black_box(&after));
            diffs.push(start.elapsed());
            black_box(d);
        }
        let d = diff(&before, &after);
        anyhow::ensure!(
            d.peers_changed.len() == 1 && d.routes_added.is_empty() && d.routes_removed.is_empty(),
            "unexpected diff for {n} nodes: {d:?}"
        );
        println!(
            "{n:>7}  {:>10}  {:>16}  {:>10}  {:>7}",
            before.segments.len(),
            ms(median(compute)),
            ms(median(diffs)),
            before.routes.len()
        );
    }
    Ok(())
}
