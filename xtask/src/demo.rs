//! `cargo xtask demo`: a cluster of namespace nodes on this machine running
//! the weft agent, shown working.

use anyhow::{Context, Result, ensure};
use std::time::{Duration, Instant};

use crate::testbed::{Cluster, ClusterSpec, LocationSpec};
use crate::util::{step, workspace_root};

pub fn run(keep: bool) -> Result<()> {
    crate::setup::ensure()?;
    crate::ebpf::build()?;
    step("building the weft binaries");
    crate::util::run(
        std::process::Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "-p", "weft", "--bins"]),
    )?;
    let bin = crate::check::bin_dir();
    crate::testbed::sweep_stale()?;

    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1", "gcp-2"]),
        LocationSpec::new("onprem", ["onprem-1"]),
    ]);
    spec.pods_per_node = 2;
    spec.external_peer = true;
    let cluster = Cluster::create(&spec)?;

    step("starting the weft agent on every node");
    let mut agents = Vec::new();
    for node in &cluster.nodes {
        let mut cmd = node.cmd(bin.join("weft"));
        cmd.args([
            "--hostname",
            &node.name,
            "--pod-bridge",
            "cni0",
            "--resync-period",
            "2s",
        ]);
        agents.push((node, node.spawn_logged(&mut cmd, "weft")?));
    }
    let start = Instant::now();
    for (node, agent) in &agents {
        let links = node.bpffs_dir.join("weft/links");
        loop {
            ensure!(
                agent.is_running(),
                "weft on {} exited:\n{}",
                node.name,
                agent.read_log()
            );
            let n = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
            if n >= node.pods.len() {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "weft on {} did not attach its datapath",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "    {}: datapath attached to {} pod veths",
            node.name,
            node.pods.len()
        );
    }
    step("pods talk on each node through the eBPF-attached veths");
    for node in &cluster.nodes {
        node.pods[0]
            .ping(node.pods[1].ip, 3)
            .with_context(|| format!("pods of {}", node.name))?;
    }
    let n = &cluster.nodes[0];
    step(format!(
        "bpftool map dump pinned /sys/fs/bpf/weft/WEFT_COUNTERS on {}",
        n.name
    ));
    let dump = n.sh("bpftool map dump pinned /sys/fs/bpf/weft/WEFT_COUNTERS | head -40")?;
    println!("{dump}");
    println!(
        "no mesh yet: the agent so far runs the eBPF datapath on each node; the WireGuard mesh comes next"
    );
    if keep {
        step(format!("keeping test bed {} until Ctrl-C", cluster.prefix));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    for (_, agent) in &agents {
        agent.stop(Duration::from_secs(20))?;
    }
    cluster.teardown()
}
