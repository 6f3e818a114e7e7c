//! `cargo xtask demo`: a weft mesh of namespace nodes on this machine, shown
//! working: two locations of two nodes, one node alone in a third, two pods
//! per node, and a laptop joining as an external WireGuard peer. With
//! `--kubernetes` the backend is the test bed's real kube-apiserver: Node
//! and Peer objects instead of the directory.

use anyhow::{Context, Result, ensure};
use std::time::Duration;

use crate::k8s::ControlPlane;
use crate::mesh::{Mesh, MeshOptions, host_reaches};
use crate::testbed::Cluster;
use crate::util::{output, step, workspace_root};

pub fn run(keep: bool, kubernetes: bool) -> Result<()> {
    if kubernetes {
        crate::setup::ensure()?;
    } else {
        // The directory demo needs no API server: skip its one-time build.
        crate::setup::ensure_toolchain()?;
    }
    crate::ebpf::build()?;
    step("building the weft binaries");
    crate::util::run(
        std::process::Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "-p", "weft", "--bins"]),
    )?;
    crate::testbed::sweep_stale()?;

    let mut spec = crate::mesh::demo_spec();
    spec.api_server = kubernetes;
    let cluster = Cluster::create(&spec)?;
    let cp = match kubernetes {
        true => Some(ControlPlane::start(&cluster)?),
        false => None,
    };
    let bin = crate::check::bin_dir();
    let mut mesh = match &cp {
        Some(cp) => {
            let m = Mesh::new_kubernetes(&cluster, &bin, MeshOptions::default(), cp, &[])?;
            step(format!(
                "Kubernetes backend: {} (admin kubeconfig {}); the Nodes, created through the API:",
                cp.url,
                cp.admin_kubeconfig().display()
            ));
            println!("{}", cp.kubectl(&["get", "nodes", "--show-labels"])?);
            m
        }
        None => {
            let m = Mesh::new(&cluster, &bin, MeshOptions::default())?;
            step(format!("directory backend: {}", m.dir.display()));
            m
        }
    };

    step("starting the weft agent on every node");
    mesh.start_all()?;
    step("waiting for every pod to reach every other pod");
    mesh.wait_full_connectivity(Duration::from_secs(120))?;

    step("the laptop joins with the configuration `weftctl showconf peer laptop` prints");
    let _wg = mesh.add_laptop()?;
    // The agents pick up peers/laptop.yaml; the laptop then takes the leaders' config.
    let conf = wait_conf(&mesh)?;
    println!("{conf}");
    for node in &cluster.nodes {
        let pod = &node.pods[0];
        let laptop = cluster.laptop.as_ref().context("laptop")?;
        let start = std::time::Instant::now();
        while !host_reaches(laptop, pod.ip) {
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the laptop cannot reach {} on {}",
                pod.ip,
                node.name
            );
            mesh.configure_laptop()?;
        }
        eprintln!(
            "    laptop reaches {} ({}, {})",
            pod.ip, node.name, node.location
        );
    }

    if let Some(cp) = &cp {
        step("what the agents published on their Nodes (kubectl get nodes)");
        println!(
            "{}",
            cp.kubectl(&[
                "get",
                "nodes",
                "-o",
                "custom-columns=NAME:.metadata.name,LOCATION:.metadata.labels.topology\\.kubernetes\\.io/region,ENDPOINT:.metadata.annotations.weft\\.dev/endpoint,INTERNAL-IP:.metadata.annotations.weft\\.dev/internal-ip,WIREGUARD-IP:.metadata.annotations.weft\\.dev/wireguard-ip,KEY:.metadata.annotations.weft\\.dev/key,LAST-SEEN:.metadata.annotations.weft\\.dev/last-seen",
            ])?
        );
        step("the laptop's Peer (kubectl get peers.weft.dev)");
        println!("{}", cp.kubectl(&["get", "peers.weft.dev", "-o", "wide"])?);
    }

    let svg = workspace_root().join("target/demo-mesh.svg");
    let dot = mesh.weftctl(&["graph"])?;
    let mut child = std::process::Command::new("dot")
        .args(["-Tsvg", "-o"])
        .arg(&svg)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running graphviz `dot`")?;
    std::io::Write::write_all(child.stdin.as_mut().context("dot stdin")?, dot.as_bytes())?;
    ensure!(child.wait()?.success(), "dot failed on:\n{dot}");
    step(format!(
        "mesh graph (weftctl graph | dot -Tsvg): {}",
        svg.display()
    ));

    let leader = cluster.node("aws-1");
    step(format!("wg show on {} (a leader)", leader.name));
    println!("{}", output(leader.cmd("wg").args(["show", "weft0"]))?);
    step(format!("weftctl bpf routes on {}", leader.name));
    println!(
        "{}",
        output(
            leader
                .cmd(crate::check::bin_dir().join("weftctl"))
                .args(["bpf", "routes"])
        )?
    );
    step(format!("weftctl bpf counters on {}", leader.name));
    println!(
        "{}",
        output(
            leader
                .cmd(crate::check::bin_dir().join("weftctl"))
                .args(["bpf", "counters"])
        )?
    );

    if keep {
        step(format!(
            "keeping test bed {} until Ctrl-C (enter a node: nsenter --net=/run/netns/{})",
            cluster.prefix, leader.netns
        ));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step("stopping the agents (they clean up after themselves)");
    for node in &cluster.nodes {
        mesh.agent(&node.name).stop(Duration::from_secs(20))?;
    }
    cluster.teardown()?;
    step("demo done");
    Ok(())
}

/// Waits until showconf lists the leaders of all three locations for the laptop.
fn wait_conf(mesh: &Mesh) -> Result<String> {
    let start = std::time::Instant::now();
    loop {
        let conf = mesh.configure_laptop()?;
        if conf.matches("[Peer]").count() >= 3 {
            return Ok(conf);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "showconf peer laptop lists fewer than 3 leaders:\n{conf}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
