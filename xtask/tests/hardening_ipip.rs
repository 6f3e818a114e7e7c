//! What arrives without WireGuard's authentication, and packets too large
//! for their path, end to end (`weft_common::sources`):
//!
//! - IPIP and plain IPv4 with forged sources, sent from a host on a
//!   location's LAN and from the internet segment, reach no pod, and the
//!   XDP/tc drop counters say why, with `encapsulate: always`, `crosssubnet`
//!   and `never`; legitimate UDP from a pod of the location and from another
//!   location still arrives;
//! - pods whose MTU (1500, set by hand as a misconfigured CNI would) is
//!   larger than their path get "fragmentation needed" for DF packets that
//!   do not fit the IPIP or WireGuard path (`ping -M do` stepping up: an
//!   error, not silence), and a TCP upload of 4 MiB from them completes in
//!   every encapsulation mode.
//!
//! The test beds keep `ip_forward=1` (the default): whatever the datapath
//! lets through, the kernel would forward into the pod too.

mod common;

use common::{DumpOnPanic, bin_dir, send_raw, wait_for, xtask_bin};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_common::counters::Counter;
use xtask::mesh::{Mesh, MeshOptions};
use xtask::testbed::{Cluster, ClusterSpec, Daemon, LocationSpec, Namespace, Node, Pod};

const MODES: [&str; 3] = ["always", "crosssubnet", "never"];
/// The UDP port the target pods listen on.
const PORT: u16 = 9999;
/// Forged packets per case.
const N: u64 = 10;

fn spec(pod_mtu: u32) -> ClusterSpec {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["aws-1", "aws-2"]),
        LocationSpec::new("gcp", ["gcp-1"]),
    ]);
    spec.pod_mtu = Some(pod_mtu);
    spec
}

fn mesh_opts(mode: &str) -> MeshOptions {
    MeshOptions {
        settings: vec![format!("encapsulate: {mode}")],
        ..Default::default()
    }
}

/// Switches the running mesh to `mode` (the agents watch settings.yaml)
/// and waits until aws-1 routes aws-2's pods accordingly and every pod
/// reaches every other.
fn switch_mode(mesh: &Mesh, mode: &str) {
    let tmp = mesh.dir.join(".settings.yaml.tmp");
    std::fs::write(&tmp, format!("encapsulate: {mode}\n")).unwrap();
    std::fs::rename(&tmp, mesh.dir.join("settings.yaml")).unwrap();
    let (aws1, aws2) = (mesh.cluster.node("aws-1"), mesh.cluster.node("aws-2"));
    let want = if mode == "always" {
        "node-ipip via"
    } else {
        "node via"
    };
    wait_for(
        &format!("aws-1 routing aws-2's pods as {want} ({mode})"),
        Duration::from_secs(30),
        || {
            let out = Command::new(bin_dir().join("weftctl"))
                .args(["bpf", "routes", "--pin-dir"])
                .arg(aws1.bpffs_dir.join("weft"))
                .output()
                .unwrap();
            let routes = String::from_utf8_lossy(&out.stdout);
            routes
                .lines()
                .any(|l| l.starts_with(&format!("{} {want}", aws2.pod_cidr)))
                .then_some(())
        },
    );
    mesh.wait_full_connectivity(Duration::from_secs(60))
        .unwrap();
}

// ---------------------------------------------------------------- counters

fn le(bytes: &[serde_json::Value]) -> u64 {
    bytes.iter().rev().fold(0, |acc, b| {
        let h = b.as_str().expect("hex byte").trim_start_matches("0x");
        (acc << 8) | u64::from_str_radix(h, 16).expect("hex")
    })
}

/// Every counter's packets (summed over CPUs) of `node`, by bpftool.
fn counters(node: &Node) -> BTreeMap<u32, u64> {
    let pin = node.bpffs_dir.join("weft/WEFT_COUNTERS");
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool on {}", node.name);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            let key = le(e["key"].as_array().expect("key bytes")) as u32;
            let packets = e["values"]
                .as_array()
                .expect("per-CPU values")
                .iter()
                .map(|cpu| le(&cpu["value"].as_array().expect("value bytes")[..8]))
                .sum();
            (key, packets)
        })
        .collect()
}

// ---------------------------------------------------------------- packets

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = weft_common::csum::ipv4_header_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A UDP datagram (no checksum) from `src` to `dst`:[`PORT`] saying `token`.
fn udp(src: Ipv4Addr, dst: Ipv4Addr, token: &str) -> Vec<u8> {
    let mut u = vec![0x11, 0x5c];
    u.extend_from_slice(&PORT.to_be_bytes());
    u.extend_from_slice(&((8 + token.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(token.as_bytes());
    let mut p = ipv4_header(src, dst, 17, u.len());
    p.extend(u);
    p
}

fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: Vec<u8>) -> Vec<u8> {
    let mut p = ipv4_header(outer_src, outer_dst, 4, inner.len());
    p.extend(inner);
    p
}

// ---------------------------------------------------------------- probes

fn probe_cmd(ns: &Namespace, args: &[&str]) -> Command {
    let mut c = ns.cmd(xtask_bin());
    c.env("RUST_LIB_BACKTRACE", "0").arg("nat-probe").args(args);
    c
}

/// A UDP listener on [`PORT`] in a pod, logging what it hears.
struct Listener {
    daemon: Daemon,
}

impl Listener {
    fn start(pod: &Pod) -> Listener {
        let port = PORT.to_string();
        let daemon = pod
            .spawn_logged(
                &mut probe_cmd(pod.namespace(), &["serve", "--udp", &port]),
                "udp-listener",
            )
            .unwrap();
        wait_for("the UDP listener", Duration::from_secs(10), || {
            daemon.read_log().contains("listening").then_some(())
        });
        Listener { daemon }
    }

    /// Datagrams heard whose data starts with `token`.
    fn heard(&self, token: &str) -> usize {
        self.daemon
            .read_log()
            .lines()
            .filter(|l| l.contains(&format!("data={token}")))
            .count()
    }
}

/// Legitimate UDP from `from` to `to`:[`PORT`], answered.
fn legit_udp(from: &Pod, to: &Pod, token: &str) {
    let dst = format!("{}:{PORT}", to.ip);
    let out = xtask::util::output(
        probe_cmd(from.namespace(), &["udp", "--to", &dst, "--token", token]).stdin(Stdio::null()),
    )
    .unwrap_or_else(|e| panic!("UDP {} -> {}: {e:#}", from.name, to.name));
    assert!(out.contains("udp-reply"), "{out}");
}

// ---------------------------------------------------------------- attacks

/// One batch of forged packets and what must stop it.
struct Attack {
    what: String,
    /// The namespace they are sent from.
    netns: String,
    packets: Vec<Vec<u8>>,
    /// The counter of the target that must grow by [`N`] (`None`: the
    /// kernel drops them, no program of ours sees them as forwardable).
    counter: Option<Counter>,
}

/// Sends `a` at `target`, then checks the listener heard none of it and the
/// counter grew.
fn run_attack(a: &Attack, target: &Node, listener: &Listener, token: &str) {
    let before = counters(target);
    send_raw(&a.netns, &a.packets);
    if let Some(c) = a.counter {
        wait_for(
            &format!("{} dropped by {:?} on {}", a.what, c, target.name),
            Duration::from_secs(10),
            || (counters(target)[&(c as u32)] >= before[&(c as u32)] + N).then_some(()),
        );
    } else {
        std::thread::sleep(Duration::from_millis(500));
    }
    // Stragglers would show now.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        listener.heard(token),
        0,
        "{}: the pod on {} received forged datagrams",
        a.what,
        target.name
    );
    eprintln!("    {}: stopped", a.what);
}

/// Whether `node` leads its location (only leaders' WireGuard device has an address).
fn is_leader(node: &Node) -> bool {
    node.sh("ip -4 -o addr show dev weft0 2>/dev/null || true")
        .unwrap()
        .contains("inet ")
}

fn attacks(cluster: &Cluster, target: &Node, intruder: Ipv4Addr, token: &str) -> Vec<Attack> {
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.location == target.location && n.name != target.name)
        .expect("another node in the location");
    let far = cluster
        .nodes
        .iter()
        .find(|n| n.location != target.location)
        .expect("a node of another location");
    let pod = target.pods[0].ip;
    let own_range = Ipv4Addr::from(u32::from(target.pod_cidr.network()) + 77);
    let lan = cluster.location(&target.location).netns.clone();
    let ext = cluster.external_host.netns.clone();
    let batch = |p: Vec<u8>| vec![p; N as usize];
    let mut out = vec![
        Attack {
            what: format!("IPIP from the LAN host {intruder}"),
            netns: lan.clone(),
            packets: batch(ipip(
                intruder,
                target.private_ip,
                udp(other.pods[0].ip, pod, token),
            )),
            counter: Some(Counter::XdpDropIpipUnknownSource),
        },
        Attack {
            what: format!("IPIP claiming {} with an outside inner source", other.name),
            netns: lan.clone(),
            packets: batch(ipip(
                other.private_ip,
                target.private_ip,
                udp(Ipv4Addr::new(192, 0, 2, 99), pod, token),
            )),
            counter: Some(Counter::XdpDropIpipForged),
        },
        Attack {
            what: format!(
                "IPIP claiming {} with an inner source of {}'s own pods",
                other.name, target.name
            ),
            netns: lan.clone(),
            packets: batch(ipip(
                other.private_ip,
                target.private_ip,
                udp(own_range, pod, token),
            )),
            counter: Some(Counter::XdpDropIpipForged),
        },
        Attack {
            what: format!(
                "IPIP claiming {} to {}'s public address",
                other.name, target.name
            ),
            netns: lan.clone(),
            packets: batch(ipip(
                other.private_ip,
                target.public_ip,
                udp(other.pods[0].ip, pod, token),
            )),
            counter: Some(Counter::XdpDropIpipForged),
        },
        Attack {
            what: format!(
                "plain IPv4 from {}'s own pod range, on the LAN",
                target.name
            ),
            netns: lan.clone(),
            packets: batch(udp(own_range, pod, token)),
            counter: Some(Counter::DropPlainSource),
        },
        Attack {
            what: "IPIP claiming a node of the location, from the internet".into(),
            netns: ext.clone(),
            packets: batch(ipip(
                other.private_ip,
                target.private_ip,
                udp(other.pods[0].ip, pod, token),
            )),
            counter: None,
        },
        Attack {
            what: format!("plain IPv4 from {}'s pod, from the internet", other.name),
            netns: ext.clone(),
            packets: batch(udp(other.pods[0].ip, pod, token)),
            counter: Some(Counter::DropPlainSource),
        },
        Attack {
            what: format!("plain IPv4 from {}'s pod, from the internet", far.name),
            netns: ext.clone(),
            packets: batch(udp(far.pods[0].ip, pod, token)),
            counter: Some(Counter::DropPlainSource),
        },
    ];
    // Another location's pods come to a leader through WireGuard only (a
    // non-leader gets them from its leader on the LAN, as it may).
    if is_leader(target) {
        out.push(Attack {
            what: format!("plain IPv4 from {}'s pod on the LAN", far.name),
            netns: lan,
            packets: batch(udp(far.pods[0].ip, pod, token)),
            counter: Some(Counter::DropPlainSource),
        });
    }
    out
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn forged_sources_reach_no_pod_in_every_encapsulation_mode() {
    let cluster = Cluster::create(&spec(1400)).expect("test bed");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), mesh_opts(MODES[0])).unwrap();
    mesh.start_all().unwrap();
    let _dump = DumpOnPanic(&mesh);
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    // What each aws node accepts, as weftctl shows it: the other aws node,
    // on eth0, to its own private IP, from its pod CIDR and address (and,
    // from the leader, gcp's pods too); gcp's pods are a cluster range.
    for (name, other) in [("aws-1", "aws-2"), ("aws-2", "aws-1")] {
        let (n, o) = (cluster.node(name), cluster.node(other));
        // Inside the node: interface names are its namespace's.
        let out = n
            .cmd(bin_dir().join("weftctl"))
            .args(["bpf", "ipip-peers", "--pin-dir"])
            .arg(n.bpffs_dir.join("weft"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "{} dev eth0 to {} sources ",
                    o.private_ip, n.private_ip
                ))
            })
            .unwrap_or_else(|| panic!("{name}: no sender line for {other}:\n{text}"));
        assert!(line.contains(&o.pod_cidr.to_string()), "{name}: {line}");
        assert!(
            line.contains(&format!("{}/32", o.private_ip)),
            "{name}: {line}"
        );
        let gcp = cluster.node("gcp-1").pod_cidr;
        assert_eq!(
            line.contains(&gcp.to_string()),
            is_leader(o),
            "{name}: {line}"
        );
        assert!(
            text.contains(&format!("plain {gcp} from ")),
            "{name}:\n{text}"
        );
    }
    // A host on aws's LAN that is not a node, routing the pods (and the
    // nodes' public addresses) through the nodes as an attacker would.
    let lan = cluster.location("aws");
    let intruder = Ipv4Addr::new(192, 168, 1, 99);
    lan.sh(&format!("ip addr add {intruder}/24 dev br0"))
        .unwrap();
    let ext = &cluster.external_host;
    let gcp1 = cluster.node("gcp-1");
    let listeners: BTreeMap<String, Listener> = ["aws-1", "aws-2"]
        .iter()
        .map(|n| (n.to_string(), Listener::start(&cluster.node(n).pods[0])))
        .collect();
    for (i, mode) in MODES.iter().enumerate() {
        if i > 0 {
            switch_mode(&mesh, mode);
        }
        eprintln!("  encapsulate: {mode}");
        for name in ["aws-1", "aws-2"] {
            let target = cluster.node(name);
            let other = cluster
                .nodes
                .iter()
                .find(|n| n.location == "aws" && n.name != name)
                .unwrap();
            let listener = &listeners[name];
            // The attackers route the target's pods through it.
            lan.sh(&format!(
                "ip route replace {} via {t}; ip route replace {}/32 via {t}",
                target.pod_cidr,
                target.public_ip,
                t = target.private_ip
            ))
            .unwrap();
            ext.sh(&format!(
                "ip route replace {} via {t}; ip route replace {} via {t}",
                target.pod_cidr,
                target.private_net,
                t = target.public_ip
            ))
            .unwrap();
            let token = format!("forged-{mode}-{name}");
            for a in attacks(&cluster, target, intruder, &token) {
                run_attack(&a, target, listener, &token);
            }
            // Legitimate traffic flows: from the location and from afar.
            let legit = format!("legit-{mode}-{name}");
            legit_udp(&other.pods[0], &target.pods[0], &legit);
            legit_udp(&gcp1.pods[0], &target.pods[0], &legit);
            assert_eq!(listener.heard(&legit), 2, "{name}: legitimate datagrams");
        }
    }
    mesh.check_running().unwrap();
}

// ---------------------------------------------------------------- MTU

/// `ping -M do` from `from` to `to` with `size` bytes of payload: Ok if
/// answered, Err(output) if not.
fn ping_df(from: &Pod, to: Ipv4Addr, size: u32) -> Result<(), String> {
    let out = from
        .sh(&format!(
            "ping -n -M do -c 1 -W 2 -s {size} {to} 2>&1; echo rc=$?"
        ))
        .unwrap();
    if out.contains("rc=0") {
        Ok(())
    } else {
        Err(out)
    }
}

/// Steps `ping -M do` up from a size that fits: every size up to `fits`
/// (payload bytes) is answered, the next ones fail with an error saying the
/// message is too long for the path, not with silence.
fn assert_pmtu(from: &Pod, to: &Pod, fits: u32, what: &str) {
    for size in [fits - 100, fits - 1, fits] {
        ping_df(from, to.ip, size)
            .unwrap_or_else(|out| panic!("{what}: {size} bytes should fit:\n{out}"));
    }
    for size in [fits + 1, fits + 8, 1472] {
        // The first answer is the router's ICMP; afterwards the pod knows the
        // path MTU and refuses locally. Either way: an error with the MTU.
        let mut seen = String::new();
        for _ in 0..2 {
            match ping_df(from, to.ip, size) {
                Ok(()) => panic!("{what}: {size} bytes answered, but cannot fit"),
                Err(out) => seen.push_str(&out),
            }
        }
        let mtu = fits + 28;
        assert!(
            (seen.contains("Frag needed") || seen.contains("message too long"))
                && (seen.contains(&format!("mtu = {mtu}")) || seen.contains(&format!("mtu={mtu}"))),
            "{what}: {size} bytes: no fragmentation-needed error for MTU {mtu}:\n{seen}"
        );
    }
    eprintln!("    {what}: up to {fits} bytes answered, then errors");
}

/// Uploads 4 MiB over TCP from `from` to `to` (a server there) and checks
/// every byte arrived.
fn assert_tcp_upload(from: &Pod, to: &Pod, file: &Path, dir: &Path, what: &str) {
    let server = to
        .spawn_logged(
            &mut probe_cmd(
                to.namespace(),
                &[
                    "serve",
                    "--tcp",
                    "5001",
                    "--upload-dir",
                    &dir.display().to_string(),
                ],
            ),
            "tcp-upload-server",
        )
        .unwrap();
    wait_for("the TCP server", Duration::from_secs(10), || {
        server.read_log().contains("listening").then_some(())
    });
    let dst = format!("{}:5001", to.ip);
    let out = xtask::util::output(
        probe_cmd(
            from.namespace(),
            &[
                "tcp",
                "--to",
                &dst,
                "--mode",
                "upload",
                "--file",
                &file.display().to_string(),
            ],
        )
        .stdin(Stdio::null()),
    )
    .unwrap_or_else(|e| panic!("{what}: TCP upload: {e:#}"));
    let size = std::fs::metadata(file).unwrap().len();
    assert!(
        out.contains(&format!("upload bytes={size}")),
        "{what}: {out}"
    );
    let _ = server.stop(Duration::from_secs(2));
    eprintln!("    {what}: {size} bytes uploaded over TCP");
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn oversized_pods_get_fragmentation_needed_and_tcp_completes() {
    // Pods at 1500 on a 1500 path: no room for IPIP (20) or WireGuard (80).
    let cluster = Cluster::create(&spec(1500)).expect("test bed");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), mesh_opts(MODES[0])).unwrap();
    mesh.start_all().unwrap();
    let _dump = DumpOnPanic(&mesh);
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let file = cluster.dir.join("upload.bin");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let (a1, a2, g1) = (
        &cluster.node("aws-1").pods[0],
        &cluster.node("aws-2").pods[0],
        &cluster.node("gcp-1").pods[0],
    );
    // The WireGuard device's MTU: the path's (1500) less WireGuard's 80.
    let wg_mtu = 1420;
    for (i, mode) in MODES.iter().enumerate() {
        if i > 0 {
            switch_mode(&mesh, mode);
        }
        eprintln!("  encapsulate: {mode}");
        // Pods keep what they learned of a path: start each mode afresh.
        for p in [a1, a2, g1] {
            p.sh("ip route flush cache").unwrap();
        }
        let ipip_fits = if *mode == "always" { 1480 } else { 1500 };
        if ipip_fits < 1500 {
            assert_pmtu(
                a1,
                a2,
                ipip_fits - 28,
                &format!("{mode}: aws-1 -> aws-2 (IPIP)"),
            );
        } else {
            ping_df(a1, a2.ip, 1472)
                .unwrap_or_else(|out| panic!("{mode}: 1500 bytes unencapsulated:\n{out}"));
        }
        assert_pmtu(
            a1,
            g1,
            wg_mtu - 28,
            &format!("{mode}: aws-1 -> gcp-1 (WireGuard)"),
        );
        let dir = cluster.dir.join(format!("uploads-{mode}"));
        std::fs::create_dir_all(&dir).unwrap();
        assert_tcp_upload(a1, a2, &file, &dir, &format!("{mode}: aws-1 -> aws-2"));
        assert_tcp_upload(g1, a2, &file, &dir, &format!("{mode}: gcp-1 -> aws-2"));
    }
    let passed: u64 = cluster
        .nodes
        .iter()
        .map(|n| counters(n)[&(Counter::PassMtu as u32)])
        .sum();
    assert!(passed > 0, "no packet was handed to the stack for its MTU");
    mesh.check_running().unwrap();
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn mtu_auto_fits_the_wireguard_path_not_the_default_route() {
    let cluster = Cluster::create(&spec(1400)).expect("test bed");
    // gcp-1's default route leaves by a 9000-byte eth1, but the path to the
    // other leaders (the internet segment) carries 1500, as a jumbo VPC
    // whose internet route does not.
    let g1 = cluster.node("gcp-1");
    g1.sh(&format!(
        "ip link set eth1 mtu 9000; \
         ip route replace {} dev eth1 proto kernel scope link src {} mtu 1500",
        xtask::testbed::public_net(),
        g1.public_ip
    ))
    .unwrap();
    let default_dev = g1.sh("ip -o route show default").unwrap();
    assert!(default_dev.contains("dev eth1"), "{default_dev}");
    let mut mesh = Mesh::new(&cluster, &bin_dir(), mesh_opts("always")).unwrap();
    mesh.start_all().unwrap();
    let _dump = DumpOnPanic(&mesh);
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let link = |n: &Node| n.sh("ip -o link show dev weft0").unwrap();
    let l = link(g1);
    assert!(
        l.contains("mtu 1420 "),
        "gcp-1's WireGuard MTU fits the 1500-byte path, not eth1's 9000: {l}"
    );
    // The others have 1500 everywhere: the same answer.
    let l = link(cluster.node("aws-1"));
    assert!(l.contains("mtu 1420 "), "aws-1: {l}");
    // Full-size packets of the tunnel MTU cross it.
    let (from, to) = (&cluster.node("aws-1").pods[0], &g1.pods[0]);
    ping_df(from, to.ip, 1400 - 28).unwrap_or_else(|out| panic!("1400 bytes:\n{out}"));
    mesh.check_running().unwrap();
}
