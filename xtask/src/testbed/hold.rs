//! `cargo xtask testbed-hold` (hidden): the test bed's interrupt self-test.
//! Builds a small cluster with processes in it — and, when `WEFT_BIN_DIR`
//! holds the built agent, weft agents with their WireGuard devices,
//! wireguard-go and pinned eBPF programs — prints `READY <prefix>` and waits
//! until a signal tears everything down.

use anyhow::Result;
use std::io::Write;

use super::{Cluster, ClusterSpec, LocationSpec};

/// Builds one location with two nodes, one pod each, and the laptop; starts
/// a tracked `sleep 1000` in the first node and in the laptop and an untracked
/// one in a pod (found through its namespace at teardown); prints
/// `READY <prefix>` on stdout and waits forever (or panics, if
/// `WEFT_TESTBED_HOLD_PANIC` is set).
pub fn hold() -> Result<()> {
    let spec = ClusterSpec {
        locations: vec![LocationSpec::new("hold", ["h1", "h2"])],
        pods_per_node: 1,
        external_peer: true,
        ..Default::default()
    };
    let cluster = Cluster::create(&spec)?;
    let node = &cluster.nodes[0];
    node.spawn(node.cmd("sleep").arg("1000"))?;
    if let Some(laptop) = &cluster.laptop {
        laptop.spawn(laptop.cmd("sleep").arg("1000"))?;
    }
    let _untracked = node.pods[0].cmd("sleep").arg("1000").spawn()?;
    let bin = std::env::var_os("WEFT_BIN_DIR").map(std::path::PathBuf::from);
    let _mesh = match bin.filter(|b| b.join("weft").is_file()) {
        Some(bin) => {
            let mut mesh = crate::mesh::Mesh::new(&cluster, &bin, Default::default())?;
            mesh.start_all()?;
            // READY only once the datapath is pinned, so the interrupt hits a live mesh.
            let links = node.bpffs_dir.join("weft/links");
            crate::mesh::wait(
                std::time::Duration::from_secs(120),
                "weft's pinned links",
                || {
                    std::fs::read_dir(&links)
                        .map(|d| d.count() >= 3)
                        .unwrap_or(false)
                },
            )?;
            Some(mesh)
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", cluster.prefix)?;
    out.flush()?;
    drop(out);
    if std::env::var_os("WEFT_TESTBED_HOLD_PANIC").is_some() {
        // The test of the panic path: with `panic = "abort"` no Drop runs,
        // the panic hook tears down.
        panic!("testbed-hold: panicking as asked by WEFT_TESTBED_HOLD_PANIC");
    }
    loop {
        std::thread::park();
    }
}
