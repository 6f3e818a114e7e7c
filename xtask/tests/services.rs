//! Services through kube-proxy: every node has the rules kube-proxy
//! (iptables mode) would install for a ClusterIP with a TCP and a UDP port
//! and three endpoints, one pod on each node (so a client has one on its
//! own node, one in its location, one in another location, or two in
//! another location for gcp's). kube-proxy DNATs in the client node's
//! PREROUTING; Weft must leave the backends' replies to that node's
//! conntrack, or the client sees the backend's address and resets.
//!
//! From a pod on every node, 30 TCP connections and 30 UDP sockets to the
//! ClusterIP each get an answer naming a backend, every backend answers
//! some; the same again after one agent was killed (SIGKILL, pinned
//! datapath left) and started again. Every node counted replies it left to
//! the kernel (`service_reply_to_stack`), the path without which the
//! answers would not come back.

mod common;

use common::{DumpOnPanic, bin_dir, wait_for, xtask_bin};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec, Namespace, Pod, Service, cluster_cidr};

const SERVICE_CIDR: &str = "10.43.0.0/16";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Connections (TCP) and sockets (UDP) per client and protocol: enough to
/// reach each of three equally likely backends (all but certainly).
const TRIES: u32 = 30;

fn probe_cmd(ns: &Namespace, args: &[&str]) -> Command {
    let mut c = ns.cmd(xtask_bin());
    c.env("RUST_LIB_BACKTRACE", "0").arg("nat-probe").args(args);
    c
}

/// The backends' names the client `pod` got over `proto`, in order.
fn ask_names(pod: &Pod, proto: &str) -> Vec<String> {
    let to = format!("{CLUSTER_IP}:{SERVICE_PORT}");
    let count = TRIES.to_string();
    let out = xtask::util::output(
        probe_cmd(
            pod.namespace(),
            &["names", "--to", &to, "--proto", proto, "--count", &count],
        )
        .stdin(Stdio::null()),
    )
    .unwrap_or_else(|e| panic!("{} → {to} over {proto}: {e:#}", pod.name));
    out.lines()
        .filter_map(|l| l.strip_prefix("answer "))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("name=")))
        .map(str::to_string)
        .collect()
}

/// One round: every client, both protocols, every answer from a backend
/// and every backend heard.
fn round(clients: &[&Pod], backends: &BTreeSet<String>, what: &str) {
    for c in clients {
        for proto in ["tcp", "udp"] {
            let names = ask_names(c, proto);
            assert_eq!(
                names.len(),
                TRIES as usize,
                "{what}: {} over {proto}",
                c.name
            );
            let mut hits: BTreeMap<&str, usize> = BTreeMap::new();
            for n in &names {
                assert!(
                    backends.contains(n),
                    "{what}: {} over {proto} got {n:?}",
                    c.name
                );
                *hits.entry(n).or_default() += 1;
            }
            assert_eq!(
                hits.len(),
                backends.len(),
                "{what}: {} over {proto} reached only {hits:?}",
                c.name
            );
            eprintln!("    {what}: {} over {proto}: {hits:?}", c.name);
        }
    }
}

/// `counter` of `node`'s datapath, from its agent's metrics.
fn datapath_count(mesh: &Mesh, node: &str, counter: &str) -> f64 {
    let series = format!("weft_datapath_packets{{counter=\"{counter}\"}}");
    mesh.metric(node, &series)
        .unwrap_or_else(|| panic!("{node}: no {series} in the metrics"))
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn pods_reach_a_cluster_ip_through_kube_proxys_rules() {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1"]),
    ]);
    spec.pods_per_node = 2;
    spec.pod_mtu = Some(1400);
    // kube-proxy's DNATed traffic is forwarded by the kernel (the default).
    assert!(spec.forwarding);
    let cluster = Cluster::create(&spec).expect("test bed");
    let mut opts = MeshOptions::default();
    opts.agent_flags
        .extend(["--service-cidr".into(), SERVICE_CIDR.into()]);
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();

    // Pod 1 of every node serves, pod 0 is a client.
    let backends: Vec<&Pod> = cluster.nodes.iter().map(|n| &n.pods[1]).collect();
    let clients: Vec<&Pod> = cluster.nodes.iter().map(|n| &n.pods[0]).collect();
    let names: BTreeSet<String> = backends.iter().map(|p| p.name.clone()).collect();
    let _servers: Vec<_> = backends
        .iter()
        .map(|b| {
            let port = TARGET_PORT.to_string();
            b.spawn_logged(
                &mut probe_cmd(
                    b.namespace(),
                    &["serve", "--tcp", &port, "--udp", &port, "--name", &b.name],
                ),
                "serve",
            )
            .unwrap()
        })
        .collect();
    let services: Vec<Service> = ["tcp", "udp"]
        .into_iter()
        .map(|protocol| Service {
            name: "default/whoami".into(),
            cluster_ip: CLUSTER_IP,
            protocol,
            port: SERVICE_PORT,
            endpoints: backends.iter().map(|b| b.ip).collect(),
            target_port: TARGET_PORT,
        })
        .collect();
    for n in &cluster.nodes {
        n.install_kube_proxy_rules(&services, cluster_cidr())
            .unwrap();
    }

    mesh.start_all().unwrap();
    {
        // The agents' logs on failure (the guard borrows the mesh).
        let _dump = DumpOnPanic(&mesh);
        mesh.wait_full_connectivity(Duration::from_secs(90))
            .unwrap();
        round(&clients, &names, "first round");
        // The agents export the datapath's counters on every resync (2 s).
        for n in &cluster.nodes {
            let (to, back) = wait_for(
                &format!("{}'s Service counters", n.name),
                Duration::from_secs(15),
                || {
                    let to = datapath_count(&mesh, &n.name, "service_to_stack");
                    let back = datapath_count(&mesh, &n.name, "service_reply_to_stack");
                    (to >= (2 * TRIES) as f64 && back > 0.0).then_some((to, back))
                },
            );
            eprintln!(
                "    {}: service_to_stack {to}, service_reply_to_stack {back}",
                n.name
            );
        }
        // aws-1's agent is killed (its datapath stays pinned) ...
        mesh.kill("aws-1").unwrap();
    }
    mesh.forget("aws-1");
    {
        let _dump = DumpOnPanic(&mesh);
        round(&clients, &names, "agent of aws-1 down");
    }
    // ... and started again.
    mesh.start("aws-1").unwrap();
    let _dump = DumpOnPanic(&mesh);
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    round(&clients, &names, "after aws-1's restart");
    mesh.check_running().unwrap();
}
