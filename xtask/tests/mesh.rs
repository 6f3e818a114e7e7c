//! The agent's WireGuard mesh between test-bed nodes: connectivity in every
//! granularity, the external peer, changes without restarts, no packet lost
//! across resyncs and restarts, leader failover, bad input, clean-up.

mod common;

use common::{bin_dir, wait_for};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use xtask::mesh::{LAPTOP_MESH_IP, Mesh, MeshOptions, host_reaches, node_yaml, ping_once};
use xtask::testbed::{Cluster, Pod};

/// The demo's shape: two locations of two nodes, one node alone, two pods
/// each, a laptop.
fn demo_cluster() -> Cluster {
    Cluster::create(&xtask::mesh::demo_spec()).expect("test bed")
}

fn full_connectivity(settings: &[&str]) {
    full_connectivity_with(settings, &[]);
}

fn full_connectivity_with(settings: &[&str], flags: &[&str]) {
    let cluster = demo_cluster();
    let mut opts = MeshOptions {
        settings: settings.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    opts.agent_flags.extend(flags.iter().map(|f| f.to_string()));
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

/// The pods of every node but those named.
fn pods_except<'c>(cluster: &'c Cluster, nodes: &[&str]) -> Vec<&'c Pod> {
    cluster
        .pods()
        .filter(|p| !nodes.contains(&p.node.as_str()))
        .collect()
}

/// Waits until `name`'s agent reports `series` with value `want`.
fn wait_metric(mesh: &Mesh, name: &str, series: &str, want: f64, timeout: Duration) {
    let start = Instant::now();
    loop {
        mesh.check_running().unwrap();
        let got = mesh.metric(name, series);
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{name}: {series} is {got:?}, not {want}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Asserts which nodes lead their segment, from each agent's `weft_is_leader`.
fn assert_leaders(mesh: &Mesh, leaders: &[&str], timeout: Duration) {
    for n in &mesh.cluster.nodes {
        if !mesh.is_running(&n.name) {
            continue;
        }
        let want = if leaders.contains(&n.name.as_str()) {
            1.0
        } else {
            0.0
        };
        wait_metric(mesh, &n.name, "weft_is_leader ", want, timeout);
    }
}

/// Waits until the agents of `nodes` agree that `leaders` (and only they)
/// lead, each leader with `wg_peers` WireGuard peers, and then until `pods`
/// all reach each other; fails after `deadline`. Returns the time taken.
fn wait_converged(
    mesh: &Mesh,
    nodes: &[&str],
    leaders: &[&str],
    wg_peers: usize,
    pods: &[&Pod],
    deadline: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        mesh.check_running().unwrap();
        let wrong: Vec<String> = nodes
            .iter()
            .filter_map(|n| {
                let leads = mesh.metric(n, "weft_is_leader ");
                let peers = mesh.metric(n, "weft_wireguard_peers ");
                let ok = if leaders.contains(n) {
                    leads == Some(1.0) && peers == Some(wg_peers as f64)
                } else {
                    leads == Some(0.0)
                };
                (!ok).then(|| format!("{n}: leader {leads:?}, WireGuard peers {peers:?}"))
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < deadline,
            "the agents do not agree on the leaders {leaders:?} after {deadline:?}: {}",
            wrong.join("; ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = deadline.saturating_sub(start.elapsed());
    mesh.wait_connectivity(pods, left).unwrap();
    start.elapsed()
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_connectivity_location_granularity() {
    full_connectivity(&[]);
}

/// The clsact fallback (kernels without TCX) forwards the whole mesh too.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_connectivity_with_clsact_filters() {
    full_connectivity_with(&[], &["--tc-attach", "netlink"]);
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_connectivity_full_granularity() {
    full_connectivity(&["granularity: full"]);
}

/// Location granularity with some nodes in locations of their own: gcp-2
/// leaves gcp for `gcp-edge` (weft's annotation beats Kilo's), onprem-1 is
/// moved to `dc1` the Kilo way; aws stays a two-node location.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn full_connectivity_mixed_granularity_and_kilo_annotations() {
    let cluster = demo_cluster();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.write_node_file(
        "gcp-2",
        &node_yaml(
            cluster.node("gcp-2"),
            &[
                ("weft.dev/location", "gcp-edge"),
                ("kilo.squat.ai/location", "gcp"),
            ],
        ),
    )
    .unwrap();
    mesh.write_node_file(
        "onprem-1",
        &node_yaml(
            cluster.node("onprem-1"),
            &[("kilo.squat.ai/location", "dc1")],
        ),
    )
    .unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();

    // Four segments: aws (aws-1 leads aws-2), gcp, gcp-edge, dc1.
    assert_leaders(
        &mesh,
        &["aws-1", "gcp-1", "gcp-2", "onprem-1"],
        Duration::from_secs(30),
    );
    for leader in ["aws-1", "gcp-1", "gcp-2", "onprem-1"] {
        wait_metric(
            &mesh,
            leader,
            "weft_wireguard_peers ",
            3.0,
            Duration::from_secs(30),
        );
    }
    let graph = mesh.weftctl(&["graph"]).unwrap();
    for seg in [
        "location:aws",
        "location:gcp",
        "location:gcp-edge",
        "location:dc1",
    ] {
        assert!(
            graph.contains(&format!("label=\"{seg}\"")),
            "no segment {seg} in:\n{graph}"
        );
    }
    assert!(!graph.contains("location:onprem"), "{graph}");
}

/// The laptop, configured only from `weftctl showconf peer laptop -o
/// wireguard` applied with `wg`, reaches a pod on every node (leaders and
/// not) and is reached from them; an allowed location IP of aws (a dummy
/// interface on its leader) is reached from gcp and onprem pods and from
/// the laptop.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn external_peer_and_allowed_location_ips() {
    let cluster = demo_cluster();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    let aws1 = cluster.node("aws-1");
    // A host-only address on aws-1 (no dummy module here: one end of a veth pair).
    aws1.sh("ip link add printer0 type veth peer name printer1 && ip addr add 172.30.0.1/32 dev printer0 && ip link set printer1 up && ip link set printer0 up")
        .unwrap();
    mesh.write_node_file(
        "aws-1",
        &node_yaml(aws1, &[("weft.dev/allowed-location-ips", "172.30.0.0/24")]),
    )
    .unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let file = std::fs::read_to_string(mesh.node_file("aws-1")).unwrap();
    assert_eq!(
        xtask::mesh::annotation_value(&file, "weft.dev/internal-ip").as_deref(),
        Some("192.168.1.10/24"),
        "the dummy interface's address must not become aws-1's private IP:\n{file}"
    );

    // The allowed location IP, from the other locations' pods (leaders and not).
    let printer: std::net::Ipv4Addr = "172.30.0.1".parse().unwrap();
    for node in ["gcp-1", "gcp-2", "onprem-1"] {
        for pod in &cluster.node(node).pods {
            wait_for(
                &format!("{} reaching {printer}", pod.name),
                Duration::from_secs(30),
                || ping_once(pod, printer).then_some(()),
            );
        }
        eprintln!("    {node}'s pods reach {printer} (allowed location IP of aws)");
    }

    // The laptop.
    let _wg = mesh.add_laptop().unwrap();
    let laptop = cluster.laptop.as_ref().unwrap();
    let conf = wait_for(
        "showconf peer laptop listing the three leaders",
        Duration::from_secs(60),
        || {
            let c = mesh
                .weftctl(&["showconf", "peer", "laptop", "-o", "wireguard"])
                .ok()?;
            (c.matches("[Peer]").count() == 3).then_some(c)
        },
    );
    eprintln!("{conf}");
    let mut targets: Vec<(String, std::net::Ipv4Addr)> =
        cluster.pods().map(|p| (p.name.clone(), p.ip)).collect();
    targets.push(("aws's allowed location IP".into(), printer));
    let start = Instant::now();
    for (name, ip) in &targets {
        loop {
            mesh.check_running().unwrap();
            if host_reaches(laptop, *ip) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the laptop cannot reach {name} ({ip}); its configuration:\n{}\nwg show:\n{}",
                mesh.configure_laptop().unwrap_or_default(),
                laptop.sh("wg show wg0").unwrap_or_default()
            );
            mesh.configure_laptop().unwrap();
        }
    }
    eprintln!(
        "    the laptop reaches all {} targets after {:.1} s",
        targets.len(),
        start.elapsed().as_secs_f64()
    );
    // The configuration is the only thing the laptop got: no endpoint but
    // the leaders' public addresses, nothing configured by hand.
    let dump = laptop.sh("wg show wg0 endpoints").unwrap();
    for leader in ["aws-1", "gcp-1", "onprem-1"] {
        let ip = cluster.node(leader).public_ip.to_string();
        assert!(dump.contains(&format!("{ip}:51820")), "{dump}");
    }
    for node in &cluster.nodes {
        let pod = &node.pods[1];
        wait_for(
            &format!("{} reaching the laptop", pod.name),
            Duration::from_secs(30),
            || ping_once(pod, LAPTOP_MESH_IP).then_some(()),
        );
    }
    eprintln!("    every node's pods reach the laptop at {LAPTOP_MESH_IP}");

    // A range added to the running aws-1's file, as a user edits it: it
    // becomes reachable from another location, the agent's own rewrites
    // (every resync) keep it, and once removed it is unreachable again.
    let key = "weft.dev/allowed-location-ips";
    let added: std::net::Ipv4Addr = "172.31.0.1".parse().unwrap();
    aws1.sh(&format!("ip addr add {added}/32 dev printer0"))
        .unwrap();
    mesh.set_annotations("aws-1", &[(key, Some("172.30.0.0/24,172.31.0.0/24"))])
        .unwrap();
    let far = &cluster.node("gcp-2").pods[0];
    wait_for(
        &format!("{} reaching the added range ({added})", far.name),
        Duration::from_secs(30),
        || ping_once(far, added).then_some(()),
    );
    // MeshOptions::default()'s --resync-period.
    assert_eq!(mesh.opts.resync, "2s");
    let resync = Duration::from_secs(2);
    std::thread::sleep(10 * resync);
    let file = std::fs::read_to_string(mesh.node_file("aws-1")).unwrap();
    assert_eq!(
        xtask::mesh::annotation_value(&file, key).as_deref(),
        Some("172.30.0.0/24,172.31.0.0/24"),
        "after ten resyncs:\n{file}"
    );
    assert!(ping_once(far, added), "{added} after ten resyncs");
    mesh.set_annotations("aws-1", &[(key, Some("172.30.0.0/24"))])
        .unwrap();
    wait_for(
        &format!("{added} unreachable from {} once removed", far.name),
        Duration::from_secs(30),
        || (!ping_once(far, added)).then_some(()),
    );
    assert!(
        ping_once(far, printer),
        "the range left in place still works"
    );
    eprintln!("    a range added to a running node is reachable, kept, and gone once removed");
}

/// 2 × resync + room for the connectivity check itself (a round of pings
/// with a one-second deadline, retried once, on a loaded machine).
fn convergence_deadline(resync: Duration) -> Duration {
    2 * resync + Duration::from_secs(10)
}

/// Adding a node, changing a node's location (out to a location of its own
/// and back) and removing a node (the leader of gcp, its agent left
/// running) each converge to full connectivity within two resync periods,
/// no agent restarted.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn node_changes_converge_without_restarts() {
    let cluster = demo_cluster();
    let resync = Duration::from_secs(5);
    let opts = MeshOptions {
        resync: "5s".into(),
        ..Default::default()
    };
    let deadline = convergence_deadline(resync);
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();
    // aws-2 is not part of the cluster yet.
    mesh.remove_node_file("aws-2").unwrap();
    for n in ["aws-1", "gcp-1", "gcp-2", "onprem-1"] {
        mesh.start(n).unwrap();
    }
    mesh.wait_connectivity(&pods_except(&cluster, &["aws-2"]), Duration::from_secs(90))
        .unwrap();
    let all: Vec<&Pod> = cluster.pods().collect();
    let mut report = Vec::new();

    // Add aws-2: its file appears, its agent starts.
    let t = Instant::now();
    mesh.write_node_file("aws-2", &node_yaml(cluster.node("aws-2"), &[]))
        .unwrap();
    mesh.start("aws-2").unwrap();
    let everyone = ["aws-1", "aws-2", "gcp-1", "gcp-2", "onprem-1"];
    wait_converged(
        &mesh,
        &everyone,
        &["aws-1", "gcp-1", "onprem-1"],
        2,
        &all,
        deadline,
    );
    wait_metric(
        &mesh,
        "gcp-1",
        "weft_ready_nodes ",
        5.0,
        Duration::from_secs(1),
    );
    report.push(("add aws-2", t.elapsed()));

    // gcp-2 moves to a location of its own, and becomes its leader.
    let t = Instant::now();
    mesh.set_annotations("gcp-2", &[("weft.dev/location", Some("gcp-edge"))])
        .unwrap();
    wait_converged(
        &mesh,
        &everyone,
        &["aws-1", "gcp-1", "gcp-2", "onprem-1"],
        3,
        &all,
        deadline,
    );
    report.push(("move gcp-2 to its own location", t.elapsed()));

    // And back into gcp, behind gcp-1.
    let t = Instant::now();
    mesh.set_annotations("gcp-2", &[("weft.dev/location", None)])
        .unwrap();
    wait_converged(
        &mesh,
        &everyone,
        &["aws-1", "gcp-1", "onprem-1"],
        2,
        &all,
        deadline,
    );
    report.push(("move gcp-2 back to gcp", t.elapsed()));

    // Remove gcp-1, gcp's leader. Its agent keeps running (as a DaemonSet
    // pod outlives the deletion of its Node for a while): it must not bring
    // its file back nor disturb the others; gcp-2 takes over gcp.
    let t = Instant::now();
    mesh.remove_node_file("gcp-1").unwrap();
    let rest = pods_except(&cluster, &["gcp-1"]);
    wait_converged(
        &mesh,
        &["aws-1", "aws-2", "gcp-2", "onprem-1"],
        &["aws-1", "gcp-2", "onprem-1"],
        2,
        &rest,
        deadline,
    );
    report.push(("remove gcp-1 (gcp's leader)", t.elapsed()));
    common::dump(&mesh);
    std::thread::sleep(2 * resync);
    assert!(
        !mesh.node_file("gcp-1").exists(),
        "gcp-1's agent wrote back the file of its removed node"
    );
    // Nothing goes through gcp-1 any more: stopping it (its WireGuard
    // device goes) changes nothing.
    mesh.agent("gcp-1").stop(Duration::from_secs(30)).unwrap();
    mesh.forget("gcp-1");
    assert!(!mesh.node_file("gcp-1").exists());
    assert!(
        xtask::mesh::unreachable_pairs(&rest).is_empty(),
        "the mesh still depended on the removed gcp-1"
    );

    for (what, took) in &report {
        eprintln!(
            "    {what}: converged in {:.1} s (deadline {:.0} s)",
            took.as_secs_f64(),
            deadline.as_secs_f64()
        );
    }
    for n in ["aws-1", "aws-2", "gcp-2", "onprem-1"] {
        let log = mesh.agent(n).read_log();
        assert_eq!(
            log.matches("weft started").count(),
            1,
            "{n}'s agent was restarted"
        );
    }
}

/// Log lines of `name`'s agent after byte `from`.
fn log_since(mesh: &Mesh, name: &str, from: usize) -> String {
    let log = mesh.agent(name).read_log();
    log.get(from..).unwrap_or_default().to_string()
}

/// A ping every 50 ms from a pod of aws-2 to a pod of gcp-2 (both behind
/// their leaders) loses nothing across 10 forced resyncs of every agent
/// and a kill -9 and restart of the agents on its path.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn no_packet_lost_across_resyncs_and_agent_restarts() {
    let cluster = demo_cluster();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let src = &cluster.node("aws-2").pods[0];
    let dst = cluster.node("gcp-2").pods[0].ip;
    let ping = common::Pinger::start(src, dst);

    // 10 forced full resyncs of every agent, each waited for: they find
    // nothing to change.
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let changes = |mesh: &Mesh| -> Vec<usize> {
        names
            .iter()
            .map(|n| {
                let log = mesh.agent(n).read_log();
                [
                    "WireGuard peers updated",
                    "routes updated",
                    "eBPF maps updated",
                ]
                .iter()
                .map(|m| log.matches(m).count())
                .sum()
            })
            .collect()
    };
    let changes_before = changes(&mesh);
    for i in 1..=10 {
        let marks: Vec<usize> = names
            .iter()
            .map(|n| mesh.agent(n).read_log().len())
            .collect();
        for n in &names {
            mesh.agent(n).signal(Signal::SIGHUP).unwrap();
        }
        for (n, mark) in names.iter().zip(&marks) {
            wait_for(
                &format!("{n} to resync on SIGHUP"),
                Duration::from_secs(30),
                || log_since(&mesh, n, *mark).contains("SIGHUP").then_some(()),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        eprintln!("    forced resync {i}/10 done");
    }
    assert_eq!(
        changes(&mesh),
        changes_before,
        "forced resyncs of an unchanged mesh changed WireGuard peers, routes or eBPF maps"
    );

    // kill -9 and restart the agents on the path: the leaders of both
    // locations, then the source's own node.
    for n in ["aws-1", "gcp-1", "aws-2"] {
        let wg_before = mesh.pids_named(n, "wireguard-go").unwrap();
        assert_eq!(wg_before.len(), 1, "{n}: wireguard-go {wg_before:?}");
        mesh.kill(n).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let mark = mesh.agent(n).read_log().len();
        mesh.start(n).unwrap();
        wait_for(
            &format!("{n}'s new agent to reconcile twice"),
            Duration::from_secs(60),
            || {
                mesh.check_running().unwrap();
                let log = log_since(&mesh, n, mark);
                (log.contains("topology computed")
                    && mesh.metric(n, "weft_reconciles_total ") >= Some(2.0))
                .then_some(())
            },
        );
        let log = log_since(&mesh, n, mark);
        assert!(
            log.contains("adopting running wireguard-go"),
            "{n} did not adopt wireguard-go:\n{log}"
        );
        assert_eq!(
            mesh.pids_named(n, "wireguard-go").unwrap(),
            wg_before,
            "{n}: wireguard-go was replaced"
        );
        eprintln!("    {n}: agent killed with -9 and restarted");
    }
    std::thread::sleep(Duration::from_secs(3));

    ping.assert_no_loss();
}

/// Kills the agent of `name` (kill -9) and then its wireguard-go: the node
/// is gone as far as the mesh can tell, but its file stays.
fn kill_node(mesh: &mut Mesh, name: &str) {
    let wg = mesh.pids_named(name, "wireguard-go").unwrap();
    assert_eq!(wg.len(), 1, "{name}: wireguard-go {wg:?}");
    mesh.kill(name).unwrap();
    mesh.forget(name);
    for pid in wg {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
    wait_for(
        &format!("{name}'s wireguard-go to exit"),
        Duration::from_secs(10),
        || {
            mesh.pids_named(name, "wireguard-go")
                .unwrap()
                .is_empty()
                .then_some(())
        },
    );
}

/// Checks that `name`'s agent logged a failover of `demoted` and counted it.
fn assert_failover_reported(mesh: &Mesh, name: &str, demoted: &str) {
    let log = mesh.agent(name).read_log();
    assert!(
        log.contains(&format!(
            "leader failover: {demoted} hears no other segment"
        )),
        "{name} did not log the failover of {demoted}:\n{}",
        xtask::mesh::tail(&log, 30)
    );
    let n = mesh.metric(name, "weft_leader_failovers_total ");
    assert!(n >= Some(1.0), "{name}: weft_leader_failovers_total {n:?}");
}

/// aws's leader dies (its agent and its wireguard-go): aws-2 takes over and
/// the other locations reach aws-2's pods again.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn leader_failover_when_the_leader_dies() {
    let cluster = demo_cluster();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    assert_leaders(
        &mesh,
        &["aws-1", "gcp-1", "onprem-1"],
        Duration::from_secs(10),
    );

    let t = Instant::now();
    kill_node(&mut mesh, "aws-1");
    // Passed over once its wireguard-alive is stale (15 s), or dropped once
    // its last-seen is (60 s), whichever comes first.
    mesh.wait_connectivity(&pods_except(&cluster, &["aws-1"]), Duration::from_secs(150))
        .unwrap();
    eprintln!(
        "    aws-2 took over from the dead aws-1 after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    common::dump(&mesh);
    assert_leaders(
        &mesh,
        &["aws-2", "gcp-1", "onprem-1"],
        Duration::from_secs(10),
    );
    for n in ["aws-2", "gcp-1", "onprem-1"] {
        assert_failover_reported(&mesh, n, "aws-1");
    }
}

/// aws's leader keeps its agent (and so its last-seen) but its WireGuard
/// traffic is dropped: it is passed over for aws-2 once its wireguard-alive
/// is older than --leader-health-timeout, and every pod reaches every pod
/// again (aws-1's through aws-2).
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn leader_failover_when_the_leaders_wireguard_is_broken() {
    let cluster = demo_cluster();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    assert_leaders(
        &mesh,
        &["aws-1", "gcp-1", "onprem-1"],
        Duration::from_secs(10),
    );

    let t = Instant::now();
    cluster
        .node("aws-1")
        .sh("iptables -A INPUT -p udp --dport 51820 -j DROP && iptables -A OUTPUT -p udp --dport 51820 -j DROP")
        .unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(120))
        .unwrap();
    eprintln!(
        "    aws-2 took over from the deaf aws-1 after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_leaders(
        &mesh,
        &["aws-2", "gcp-1", "onprem-1"],
        Duration::from_secs(10),
    );
    for n in ["aws-1", "aws-2", "gcp-1", "gcp-2", "onprem-1"] {
        assert_failover_reported(&mesh, n, "aws-1");
    }
    for n in ["aws-1", "aws-2"] {
        wait_metric(
            &mesh,
            n,
            "weft_failed_over_leaders ",
            1.0,
            Duration::from_secs(10),
        );
    }
    // aws-1 is still ready: it was passed over for its WireGuard, not its last-seen.
    wait_metric(
        &mesh,
        "gcp-1",
        "weft_ready_nodes ",
        5.0,
        Duration::from_secs(10),
    );
    // The demotion sticks: still aws-2 a few resyncs later, and across a
    // restart of aws-1's agent (watched for longer than the health timeout:
    // aws-1 must not be taken back, even for a while).
    std::thread::sleep(Duration::from_secs(6));
    assert_leaders(
        &mesh,
        &["aws-2", "gcp-1", "onprem-1"],
        Duration::from_secs(1),
    );
    mesh.agent("aws-1").stop(Duration::from_secs(30)).unwrap();
    mesh.start("aws-1").unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        mesh.check_running().unwrap();
        for (n, want) in [("aws-1", 0.0), ("aws-2", 1.0)] {
            let got = mesh.metric(n, "weft_is_leader ");
            assert!(
                got.is_none() || got == Some(want),
                "{n}: weft_is_leader {got:?} after aws-1's agent restarted"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_leaders(
        &mesh,
        &["aws-2", "gcp-1", "onprem-1"],
        Duration::from_secs(1),
    );
    mesh.wait_full_connectivity(Duration::from_secs(30))
        .unwrap();
}

/// Three bad node files (a malformed key, pod CIDR and endpoint) are
/// reported, each naming the node and the field, and counted; the real
/// nodes keep full connectivity.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn bad_node_input_is_reported_and_the_mesh_keeps_working() {
    let cluster = demo_cluster();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();

    let bad = [
        (
            "bogus-key",
            "podCIDR: 10.42.100.0/24",
            "weft.dev/key",
            "not-a-wireguard-key",
        ),
        ("bogus-cidr", "podCIDR: 10.42.300.0/24", "podCIDR", ""),
        (
            "bogus-endpoint",
            "podCIDR: 10.42.102.0/24",
            "weft.dev/force-endpoint",
            "198.18.0.99:notaport",
        ),
    ];
    for (name, cidr, key, value) in bad {
        let annotations = if key.starts_with("weft.dev/") {
            format!("annotations:\n  {key}: {value:?}\n")
        } else {
            "annotations: {}\n".to_string()
        };
        mesh.write_node_file(
            name,
            &format!(
                "name: {name}\n{cidr}\nlabels:\n  topology.kubernetes.io/region: aws\n{annotations}"
            ),
        )
        .unwrap();
    }
    for n in &cluster.nodes {
        wait_for(
            &format!("{} to report the three bad nodes", n.name),
            Duration::from_secs(30),
            || {
                let log = mesh.agent(&n.name).read_log();
                bad.iter()
                    .all(|(name, _, field, _)| {
                        log.lines().any(|l| {
                            l.contains(&format!("node \\\"{name}\\\"")) || l.contains(&format!("node \"{name}\""))
                        } && l.contains(field))
                    })
                    .then_some(())
            },
        );
        let errors = mesh.metric(&n.name, "weft_errors_total{kind=\"node\"} ");
        assert!(errors >= Some(3.0), "{}: node errors {errors:?}", n.name);
    }
    let log = mesh.agent("aws-1").read_log();
    for l in log.lines().filter(|l| l.contains("bogus-")) {
        eprintln!("    {l}");
    }
    // Reported once, not on every resync.
    std::thread::sleep(Duration::from_secs(5));
    let log = mesh.agent("aws-1").read_log();
    assert_eq!(log.matches("bogus-key").count(), 1, "{log}");
    mesh.wait_full_connectivity(Duration::from_secs(30))
        .unwrap();
    // Leaders and peers as before: the bad nodes took no part.
    assert_leaders(
        &mesh,
        &["aws-1", "gcp-1", "onprem-1"],
        Duration::from_secs(10),
    );
    wait_metric(
        &mesh,
        "aws-1",
        "weft_wireguard_peers ",
        2.0,
        Duration::from_secs(10),
    );

    // A bad value on a real node (one its agent does not write): that node
    // drops out, the others keep meshing; fixed, it comes back.
    mesh.set_annotations(
        "gcp-2",
        &[("weft.dev/force-endpoint", Some("gcp-2.invalid:0"))],
    )
    .unwrap();
    wait_for(
        "aws-1 to report gcp-2's endpoint",
        Duration::from_secs(30),
        || {
            mesh.agent("aws-1")
                .read_log()
                .lines()
                .any(|l| l.contains("node \"gcp-2\"") && l.contains("weft.dev/force-endpoint"))
                .then_some(())
        },
    );
    mesh.wait_connectivity(&pods_except(&cluster, &["gcp-2"]), Duration::from_secs(30))
        .unwrap();
    let gcp2 = &cluster.node("gcp-2").pods[0];
    wait_for(
        "gcp-2 to be out of the mesh",
        Duration::from_secs(30),
        || (!ping_once(&cluster.node("aws-2").pods[0], gcp2.ip)).then_some(()),
    );
    mesh.set_annotations("gcp-2", &[("weft.dev/force-endpoint", None)])
        .unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(60))
        .unwrap();
}

/// SIGTERM with the default --clean-up: no WireGuard device, weft route,
/// ip rule, pin or process is left in any node.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn clean_up_on_exit_leaves_nothing() {
    let cluster = demo_cluster();
    let rules = common::ip_rules(&cluster);
    let mut mesh = Mesh::new(&cluster, &bin_dir(), MeshOptions::default()).unwrap();
    mesh.start_all().unwrap();
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    for n in &cluster.nodes {
        assert!(n.bpffs_dir.join("weft").exists(), "{}: no pins", n.name);
        let attached = n.sh("bpftool net show").unwrap();
        assert!(
            attached
                .lines()
                .any(|l| l.starts_with("eth0") && l.contains(" id ")),
            "{}: no XDP program on eth0:\n{attached}",
            n.name
        );
        let routes = n.sh("ip route show proto 87").unwrap();
        assert!(!routes.trim().is_empty(), "{}: no weft routes", n.name);
    }
    for (n, rules_before) in cluster.nodes.iter().zip(&rules) {
        mesh.agent(&n.name).stop(Duration::from_secs(30)).unwrap();
        let log = mesh.agent(&n.name).read_log();
        assert!(
            log.contains("clean-up complete"),
            "{}:\n{}",
            n.name,
            xtask::mesh::tail(&log, 20)
        );
        common::assert_nothing_left(n, rules_before);
    }
}
