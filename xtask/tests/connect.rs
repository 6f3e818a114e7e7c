//! `weftctl connect`: a machine outside the cluster (the test bed's laptop,
//! a namespace on the internet segment) joins the mesh with nothing but
//! `weftctl connect`, follows the mesh while it runs, and leaves nothing
//! behind on SIGTERM.

mod common;

use common::{bin_dir, wait_for};
use nix::sys::signal::Signal;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use xtask::k8s::ControlPlane;
use xtask::mesh::{Mesh, MeshOptions, host_reaches, node_yaml, ping_once, tail};
use xtask::testbed::{Cluster, Daemon, Host, Pod};

/// The laptop's address in the mesh (its `--allowed-ip`).
const LAPTOP_MESH_IP: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);

/// `weftctl --dir DIR connect laptop ...` on the laptop, or with
/// Kubernetes `weftctl --kubeconfig ADMIN connect laptop ...`.
fn start_connect(mesh: &Mesh, laptop: &Host, extra: &[&str]) -> Daemon {
    let mut cmd = laptop.cmd(bin_dir().join("weftctl"));
    match mesh.kube {
        Some(cp) => cmd.arg("--kubeconfig").arg(cp.admin_kubeconfig()),
        None => cmd.arg("--dir").arg(&mesh.dir),
    };
    cmd.args(["--leader-health-timeout", &mesh.opts.leader_health_timeout])
        .args([
            "connect",
            "laptop",
            "--allowed-ip",
            &format!("{LAPTOP_MESH_IP}/32"),
            "--wireguard",
            "userspace",
            "--resync-period",
            "2s",
        ])
        .args(extra);
    laptop.spawn_logged(&mut cmd, "weftctl-connect").unwrap()
}

/// The laptop's registered peer as the backend holds it (`peers/laptop.yaml`,
/// or the weft.dev `Peer` as YAML), `None` when there is none.
fn registered_peer(mesh: &Mesh) -> Option<String> {
    match mesh.kube {
        Some(cp) => cp
            .kubectl(&["get", "peers.weft.dev", "laptop", "-o", "yaml"])
            .ok(),
        None => std::fs::read_to_string(mesh.dir.join("peers/laptop.yaml")).ok(),
    }
}

/// What of "the laptop reaches each pod and each pod reaches the laptop"
/// fails, all pinged at once.
fn missing(laptop: &Host, pods: &[&Pod]) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .flat_map(|p| {
                [
                    s.spawn(move || {
                        (!(0..2).any(|_| host_reaches(laptop, p.ip)))
                            .then(|| format!("laptop -> {}", p.name))
                    }),
                    s.spawn(move || {
                        (!ping_once(p, LAPTOP_MESH_IP)).then(|| format!("{} -> laptop", p.name))
                    }),
                ]
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("ping thread"))
            .collect()
    })
}

/// Waits until the laptop and every one of `pods` reach each other; returns
/// how long it took.
fn wait_laptop_connected(
    mesh: &Mesh,
    connect: &Daemon,
    pods: &[&Pod],
    timeout: Duration,
) -> Duration {
    let laptop = mesh.cluster.laptop.as_ref().unwrap();
    let start = Instant::now();
    let mut last = usize::MAX;
    loop {
        mesh.check_running().unwrap();
        assert!(
            connect.is_running(),
            "weftctl connect exited ({:?}):\n{}",
            connect.exit_status(),
            tail(&connect.read_log(), 40)
        );
        let m = missing(laptop, pods);
        if m.is_empty() {
            return start.elapsed();
        }
        if m.len() != last {
            eprintln!(
                "    {} of {} still fail ({:.1} s), e.g. {}",
                m.len(),
                2 * pods.len(),
                start.elapsed().as_secs_f64(),
                m[..m.len().min(4)].join(", ")
            );
            last = m.len();
        }
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}: {} fail, e.g. {}\nweftctl connect:\n{}\nlaptop:\n{}",
            m.len(),
            m[..m.len().min(8)].join(", "),
            tail(&connect.read_log(), 30),
            laptop
                .sh("wg show weft0; ip route show proto 88")
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The demo's test bed with onprem-1 held back: the laptop runs `weftctl
/// connect` and, within a minute, reaches a pod on every node (leaders and
/// the non-leaders of aws and gcp) and is reached from them; onprem-1 joins
/// while connect runs (a new location: a new leader to peer with) and its
/// pods become reachable both ways without restarting connect; on SIGTERM
/// the peer file, the interface, its routes and wireguard-go are gone, and
/// the leaders drop the peer.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn connect_joins_follows_topology_changes_and_leaves_nothing() {
    let cluster = Cluster::create(&xtask::mesh::demo_spec()).expect("test bed");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.remove_node_file("onprem-1").unwrap();
    join_follow_leave(&mut mesh);
}

/// The same with the Kubernetes backend: connect creates a weft.dev `Peer`
/// through the API (as admin), follows a Node created while it runs, and
/// deletes its `Peer` on SIGTERM.
#[test]
#[ignore = "needs root and the API server; run by cargo xtask test"]
fn connect_over_the_api_server() {
    xtask::testbed::sweep_stale().expect("sweeping stale test beds");
    let mut spec = xtask::mesh::demo_spec();
    spec.api_server = true;
    let cluster = Cluster::create(&spec).expect("test bed");
    let cp = ControlPlane::start(&cluster).unwrap();
    let mut mesh = Mesh::new_kubernetes(
        &cluster,
        &bin_dir(),
        MeshOptions::default(),
        &cp,
        &["onprem-1"],
    )
    .unwrap();
    join_follow_leave(&mut mesh);
}

/// The scenario of both tests: onprem-1 is not part of the mesh yet.
fn join_follow_leave(mesh: &mut Mesh) {
    let cluster = mesh.cluster;
    let laptop = cluster.laptop.as_ref().unwrap();
    let first = ["aws-1", "aws-2", "gcp-1", "gcp-2"];
    for n in first {
        mesh.start(n).unwrap();
    }
    let pods: Vec<&Pod> = cluster
        .pods()
        .filter(|p| first.contains(&p.node.as_str()))
        .collect();
    mesh.wait_connectivity(&pods, Duration::from_secs(60))
        .unwrap();
    assert!(
        !laptop.sh("ip -o link show").unwrap().contains("weft0"),
        "the laptop has a weft0 before connect"
    );
    assert_eq!(registered_peer(mesh), None);

    // Join.
    let connect = start_connect(mesh, laptop, &[]);
    let took = wait_laptop_connected(mesh, &connect, &pods, Duration::from_secs(60));
    eprintln!(
        "    connect: the laptop and the pods of aws-1, aws-2 (behind aws-1), gcp-1, gcp-2 (behind gcp-1) reach each other after {:.1} s",
        took.as_secs_f64()
    );
    let peer = registered_peer(mesh).expect("the laptop's peer");
    let public = laptop
        .sh("wg show weft0 public-key")
        .unwrap()
        .trim()
        .to_string();
    assert!(
        peer.contains(&public) && peer.contains("10.5.0.1/32"),
        "{peer}"
    );
    // Only the leaders, at their public endpoints.
    let endpoints = laptop.sh("wg show weft0 endpoints").unwrap();
    assert_eq!(endpoints.lines().count(), 2, "{endpoints}");
    for leader in ["aws-1", "gcp-1"] {
        let ip = cluster.node(leader).public_ip.to_string();
        assert!(endpoints.contains(&format!("{ip}:51820")), "{endpoints}");
    }

    // A new node, in a new location, while connect runs.
    let t = Instant::now();
    let onprem1 = cluster.node("onprem-1");
    match mesh.kube {
        Some(_) => mesh.register(onprem1, &[]).unwrap(),
        None => mesh
            .write_node_file("onprem-1", &node_yaml(onprem1, &[]))
            .unwrap(),
    }
    mesh.start("onprem-1").unwrap();
    let onprem: Vec<&Pod> = onprem1.pods.iter().collect();
    wait_laptop_connected(mesh, &connect, &onprem, Duration::from_secs(45));
    eprintln!(
        "    onprem-1 added: the laptop and its pods reach each other after {:.1} s, connect not restarted",
        t.elapsed().as_secs_f64()
    );
    let endpoints = laptop.sh("wg show weft0 endpoints").unwrap();
    assert!(
        endpoints.contains(&format!("{}:51820", onprem1.public_ip)),
        "{endpoints}"
    );
    let log = connect.read_log();
    assert_eq!(log.matches("weftctl connect starting").count(), 1, "{log}");
    let routes = laptop.sh("ip route show proto 88").unwrap();
    assert!(routes.contains(&onprem1.pod_cidr.to_string()), "{routes}");

    // Leave.
    connect.signal(Signal::SIGTERM).unwrap();
    let status = connect.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = connect.read_log();
    assert!(status.success(), "{status:?}:\n{}", tail(&log, 20));
    assert_eq!(registered_peer(mesh), None, "the peer is left");
    let links = laptop.sh("ip -o link show").unwrap();
    assert!(!links.contains("weft0"), "{links}");
    assert_eq!(laptop.sh("ip route show proto 88").unwrap().trim(), "");
    assert_eq!(
        xtask::mesh::processes_in(&laptop.netns).unwrap(),
        "",
        "processes left on the laptop (wireguard-go?)"
    );
    let wg_dir = laptop.run_wireguard_dir.as_ref().unwrap();
    assert!(!wg_dir.join("weft0.sock").exists(), "WireGuard socket left");
    // The leaders drop the peer.
    for leader in ["aws-1", "gcp-1", "onprem-1"] {
        let node = cluster.node(leader);
        wait_for(
            &format!("{leader} dropping the laptop's peer"),
            Duration::from_secs(20),
            || {
                let peers = node.sh("wg show weft0 peers").ok()?;
                (!peers.contains(&public)).then_some(())
            },
        );
    }
    eprintln!(
        "    SIGTERM: peer, interface, routes and wireguard-go gone; the leaders dropped the peer"
    );
}
