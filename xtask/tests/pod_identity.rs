//! Pod identity is the CNI's, not the packets': a pod (root, so
//! `CAP_NET_RAW`) that sends gratuitous ARP and IPv4 claiming a neighbour's
//! address and the gateway's steals nothing — the victim keeps all its
//! traffic from pods on another node and in another location, and the
//! forgeries are dropped and counted. A CNI DEL removes the pod's
//! `WEFT_PODS` entry at once; a pod added by CNI ADD to a running node is
//! reachable at once, without waiting for a resync.

mod common;

use common::{bin_dir, ping_replies, wait_for};
use std::time::{Duration, Instant};
use weft_common::counters::Counter;
use xtask::mesh::{Mesh, MeshOptions, ping_once};
use xtask::testbed::{Cluster, ClusterSpec, LocationSpec, Node, Pod};

/// Sends, for `secs` seconds from `eth0` of the pod it runs in, with the
/// pod's own MAC: gratuitous ARP requests and replies for each claimed
/// address, and UDP from each claimed address to each target (to the
/// gateway's MAC, as routed traffic goes).
const SPOOFER: &str = r#"
import socket, struct, sys, time
secs, gw_mac, claimed, targets = float(sys.argv[1]), sys.argv[2], sys.argv[3].split(','), sys.argv[4].split(',')
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
mac = bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':', ''))
gw = bytes.fromhex(gw_mac.replace(':', ''))
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def arp(ip, op):
    a = socket.inet_aton(ip)
    tha = b'\x00' * 6 if op == 1 else b'\xff' * 6
    return b'\xff' * 6 + mac + b'\x08\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, op) + mac + a + tha + a
def udp(src, dst):
    data = b'stolen?'
    u = struct.pack('!HHHH', 40000, 9, 8 + len(data), 0) + data
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(u), 0, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return gw + mac + b'\x08\x00' + h + u
end = time.time() + secs
n = 0
while time.time() < end:
    for c in claimed:
        s.send(arp(c, 1)); s.send(arp(c, 2))
        for t in targets:
            s.send(udp(c, t))
        n += 1
    time.sleep(0.05)
print('sent', n, 'rounds', flush=True)
"#;

/// Little-endian integer from bpftool's hex bytes.
fn le(bytes: &[serde_json::Value]) -> u64 {
    bytes.iter().rev().fold(0, |acc, b| {
        let h = b.as_str().expect("hex byte").trim_start_matches("0x");
        (acc << 8) | u64::from_str_radix(h, 16).expect("hex")
    })
}

/// Counter `c`'s packets on `node`, summed over CPUs (bpftool on the pin).
fn counter(node: &Node, c: Counter) -> u64 {
    let out = node
        .sh("bpftool -j map dump pinned /sys/fs/bpf/weft/WEFT_COUNTERS")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    let entry = v
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["key"].as_array().is_some_and(|k| le(k) == c as u64))
        .unwrap_or_else(|| panic!("no counter {} in {v}", c.name()));
    entry["values"]
        .as_array()
        .expect("per-CPU values")
        .iter()
        .map(|cpu| le(&cpu["value"].as_array().expect("value bytes")[..8]))
        .sum()
}

/// `weftctl bpf pods` inside `node`: `IP dev VETH lladdr MAC` lines.
fn pods_map(node: &Node) -> String {
    node.sh(&format!("{} bpf pods", bin_dir().join("weftctl").display()))
        .unwrap()
}

fn entry_of(node: &Node, pod: &Pod) -> Option<String> {
    pods_map(node)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pod.ip.to_string().as_str()))
        .map(str::to_owned)
}

/// `count` pings at 5 per second with `ping` (a command in the sender's
/// namespace) to `to`; the replies' sequence numbers.
fn ping_run(
    mut ping: std::process::Command,
    to: std::net::Ipv4Addr,
    count: u32,
) -> (Vec<u32>, String) {
    let out = ping
        .args(["-n", "-i", "0.2", "-W", "1", "-c", &count.to_string()])
        .arg(to.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (ping_replies(&text).0.into_iter().collect(), text)
}

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn forged_arp_and_sources_steal_nothing_and_cni_add_del_take_effect_at_once() {
    let mut spec = ClusterSpec::new(vec![
        LocationSpec::new("aws", ["a1", "a2"]),
        LocationSpec::new("gcp", ["g1"]),
    ]);
    spec.pods_per_node = 2;
    spec.pod_mtu = Some(1400);
    let cluster = Cluster::create(&spec).expect("test bed");
    let (a1, a2, g1) = (cluster.node("a1"), cluster.node("a2"), cluster.node("g1"));
    let opts = MeshOptions {
        // Nothing below may wait for a resync: make them rare (not rarer, or
        // `last-seen` goes stale and nodes drop out of each other's topology).
        resync: "30s".into(),
        ..Default::default()
    };
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();
    mesh.start_all().unwrap();
    let all: Vec<&Pod> = cluster.pods().collect();
    mesh.wait_connectivity(&all, Duration::from_secs(90))
        .unwrap();

    let (victim, attacker) = (&a1.pods[0], &a1.pods[1]);
    let (near, far) = (&a2.pods[0], &g1.pods[0]);
    let victim_entry = entry_of(a1, victim).expect("the victim is registered");
    assert!(victim_entry.contains(&victim.host_veth), "{victim_entry}");
    let gw_mac = a1.sh("cat /sys/class/net/cni0/address").unwrap();
    let (ip0, arp0) = (
        counter(a1, Counter::DropSpoofedSource),
        counter(a1, Counter::DropSpoofedArp),
    );

    // The attack runs while the victim is pinged from the other node, the
    // other location and its own node, and pings the other location and its
    // gateway itself. Routed pod traffic goes by WEFT_PODS, not neighbour
    // caches; what the node sends and what pods send to the gateway go by
    // ARP: a forged ARP that got through would take those.
    let claimed = format!("{},{}", victim.ip, a1.gateway);
    let targets = format!("{},{},{}", near.ip, far.ip, a1.gateway);
    let spoofer = attacker
        .cmd("python3")
        .args(["-c", SPOOFER, "8", gw_mac.trim(), &claimed, &targets])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let results = std::thread::scope(|s| {
        let runs = [
            s.spawn(|| ping_run(near.cmd("ping"), victim.ip, 30)),
            s.spawn(|| ping_run(far.cmd("ping"), victim.ip, 30)),
            s.spawn(|| ping_run(a1.cmd("ping"), victim.ip, 30)),
            s.spawn(|| ping_run(victim.cmd("ping"), far.ip, 30)),
            s.spawn(|| ping_run(victim.cmd("ping"), a1.gateway, 30)),
        ];
        runs.map(|h| h.join().unwrap())
    });
    let out = spoofer.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sent"),
        "the spoofer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all_seqs: Vec<u32> = (1..=30).collect();
    for ((seqs, text), what) in results.iter().zip([
        "a2's pod -> victim",
        "g1's pod -> victim",
        "node a1 -> victim",
        "victim -> g1's pod",
        "victim -> its gateway",
    ]) {
        assert_eq!(
            seqs, &all_seqs,
            "{what}: every ping answered during the attack\n{text}"
        );
    }
    // And after it.
    for from in [near, far] {
        assert!(
            ping_once(from, victim.ip),
            "{} -> victim after the attack",
            from.name
        );
    }
    assert_eq!(
        entry_of(a1, victim),
        Some(victim_entry),
        "victim's entry unchanged"
    );
    assert_eq!(
        pods_map(a1).lines().count(),
        2,
        "no entry for the gateway or anything else:\n{}",
        pods_map(a1)
    );
    // 8 s at 20 rounds/s, 2 claimed addresses: hundreds of each.
    let (ip1, arp1) = (
        counter(a1, Counter::DropSpoofedSource),
        counter(a1, Counter::DropSpoofedArp),
    );
    assert!(
        ip1 - ip0 >= 100,
        "spoofed IPv4 dropped and counted: {ip0} -> {ip1}"
    );
    assert!(
        arp1 - arp0 >= 100,
        "spoofed ARP dropped and counted: {arp0} -> {arp1}"
    );

    // CNI DEL of the attacker: its entry is gone within a second.
    let t = Instant::now();
    a1.delete_pod(attacker).unwrap();
    wait_for(
        "the deleted pod's entry gone",
        Duration::from_secs(1),
        || entry_of(a1, attacker).is_none().then_some(()),
    );
    eprintln!("    entry gone {:?} after DEL began", t.elapsed());
    assert!(
        !a1.state_dir
            .join("pods")
            .join(format!("{}-eth0.json", attacker.container_id))
            .exists(),
        "the pod record is removed"
    );

    // CNI ADD on the running node: reachable from both other nodes at once.
    let new = a1.add_pod(7).unwrap();
    let t = Instant::now();
    assert!(entry_of(a1, &new).is_some_and(|e| e.contains(&new.host_veth)));
    wait_for(
        "the new pod's veth to get the pod program",
        Duration::from_secs(2),
        || {
            a1.bpffs_dir
                .join(format!("weft/links/pod_ingress@{}", new.host_veth))
                .exists()
                .then_some(())
        },
    );
    for from in [near, far] {
        assert!(
            ping_once(from, new.ip),
            "{} -> new pod {}",
            from.name,
            new.ip
        );
    }
    assert!(ping_once(&new, far.ip), "new pod -> g1's pod");
    eprintln!(
        "    new pod registered, hooked and reachable {:?} after ADD",
        t.elapsed()
    );
    // Its sends are its own: no drop counted for them.
    let ip2 = counter(a1, Counter::DropSpoofedSource);
    assert!(ping_once(&new, near.ip));
    assert_eq!(counter(a1, Counter::DropSpoofedSource), ip2);
    mesh.check_running().unwrap();
}
