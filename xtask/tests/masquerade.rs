//! Issue 8, masquerade in eBPF, end to end on the demo topology (aws: 2
//! nodes, gcp: 2, onprem: 1; 2 pods each, pod MTU 1400, the laptop) with
//! `net.ipv4.ip_forward=0` and `iptables -P FORWARD DROP` in every node: what
//! leaves for the internet was translated and forwarded by the tc programs,
//! never by the kernel. One test bed for every check (CI time); the
//! programs inside the namespaces are `xtask nat-probe` (`xtask/src/probe.rs`).
//!
//! 1. From every pod of every node, ping, TCP and UDP reach the external
//!    host (198.18.0.200, no route to any pod CIDR), which sees the node's
//!    public address; a 2 MiB file crosses both ways with the same SHA-256.
//!    The laptop (external peer) going to the external host through aws's
//!    leader is masqueraded to the leader's address and gets its answers.
//! 2. Exempt destinations see the pod's own address: pods of other nodes
//!    and locations, the laptop (external WireGuard peer) and an allowed
//!    location IP of aws.
//! 3. 5,000 concurrent TCP connections from three pods on two nodes, every
//!    pod using the same source ports (two of them on one node: the NAT
//!    must pick other ports), all held open at once, one byte each way, then
//!    closed: the external host saw 5,000 distinct (address, port) pairs, and
//!    the NAT table loses them within the GC interval (`--nat-gc-interval`).
//! 4. UDP answers and ICMP errors about translated flows reach the right pod:
//!    two pods of one node, same source port, same destination, each get
//!    their own answer and their own ECONNREFUSED (and nothing for the
//!    other); an ICMP fragmentation-needed sent to the node about a UDP and
//!    a TCP flow lowers the pod's path MTU.
//! 5. No iptables (nft or legacy) NAT rule in any node namespace, no
//!    conntrack entry for the masqueraded flows, kernel forwarding still off.
//! 6. Clean-up leaves nothing behind (lo forwarding off again).

mod common;

use common::{DumpOnPanic, bin_dir, sha256, wait_for, xtask_bin};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::mesh::{LAPTOP_MESH_IP, Mesh, MeshOptions, node_yaml};
use xtask::testbed::{Cluster, Daemon, EXTERNAL_HOST_IP as EXT, Namespace, Node, Pod};

/// TCP and UDP: echo, upload, download, sequence numbers.
const PORT: u16 = 5201;
/// TCP: the 5,000 connections.
const MANY_PORT: u16 = 5202;
/// Nothing listens here: ICMP port unreachable.
const CLOSED_PORT: u16 = 5299;
/// An allowed location IP of aws, on aws-1 (as in tests/mesh.rs).
const PRINTER: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// The first source port of the 5,000 connections: below the pods'
/// ephemeral range (32768–60999), so that no earlier connection of the test
/// (or its TIME_WAIT) holds one.
const FIRST_PORT: u16 = 20000;
/// What the agents get as `--nat-gc-interval` (seconds).
const NAT_GC_INTERVAL: u64 = 2;
/// The files exchanged: 2 MiB.
const FILE_SIZE: usize = 2 << 20;
/// The next-hop MTU of the crafted ICMP errors (the pods' MTU is 1400).
const ICMP_MTU: u16 = 1200;

// ---------------------------------------------------------------- test bed

/// The demo's shape with kernel forwarding off and FORWARD DROP on every node.
fn demo_cluster() -> Cluster {
    let mut spec = xtask::mesh::demo_spec();
    spec.forward_drop = true;
    spec.forwarding = false;
    Cluster::create(&spec).expect("test bed")
}

fn pod<'a>(cluster: &'a Cluster, name: &str) -> &'a Pod {
    cluster
        .pods()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// The mesh's options: the defaults and a short NAT GC interval; the GC
/// interval in force.
fn mesh_opts() -> (MeshOptions, u64) {
    let mut opts = MeshOptions::default();
    opts.agent_flags
        .extend(["--nat-gc-interval".into(), NAT_GC_INTERVAL.to_string()]);
    (opts, NAT_GC_INTERVAL)
}

/// Gives aws-1 the allowed location IP [`PRINTER`] (one end of a veth pair,
/// host-only) and writes the annotation into its node file.
fn add_allowed_location_ip(cluster: &Cluster, mesh: &Mesh) {
    let aws1 = cluster.node("aws-1");
    aws1.sh(&format!(
        "ip link add printer0 type veth peer name printer1 && ip addr add {PRINTER}/32 dev printer0 \
         && ip link set printer1 up && ip link set printer0 up"
    ))
    .unwrap();
    mesh.write_node_file(
        "aws-1",
        &node_yaml(aws1, &[("weft.dev/allowed-location-ips", "172.30.0.0/24")]),
    )
    .unwrap();
}

/// Starts the laptop's WireGuard from `weftctl showconf peer laptop` and
/// waits until it reaches `pods` and they reach it.
fn join_laptop(mesh: &Mesh, pods: &[&Pod]) -> Daemon {
    let laptop = mesh.cluster.laptop.as_ref().expect("laptop");
    let wg = mesh.add_laptop().unwrap();
    let start = Instant::now();
    loop {
        mesh.check_running().unwrap();
        mesh.configure_laptop().unwrap();
        let missing: Vec<&str> = pods
            .iter()
            .filter(|p| !xtask::mesh::host_reaches(laptop, p.ip))
            .map(|p| p.name.as_str())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the laptop does not reach {missing:?}; wg show:\n{}",
            laptop.sh("wg show wg0").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for p in pods {
        wait_for(
            &format!("{} reaching the laptop", p.name),
            Duration::from_secs(30),
            || xtask::mesh::ping_once(p, LAPTOP_MESH_IP).then_some(()),
        );
    }
    eprintln!(
        "    the laptop and {} pods reach each other after {:.1} s",
        pods.len(),
        start.elapsed().as_secs_f64()
    );
    wg
}

// ------------------------------------------------------------------ probes

/// One line of `nat-probe` output: `<event> key=value ...`.
#[derive(Clone, Debug)]
struct Event {
    name: String,
    fields: BTreeMap<String, String>,
}

impl Event {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {self:?}"))
    }

    fn addr(&self, key: &str) -> SocketAddrV4 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key}= is no IPv4 address:port in {self:?}"))
    }

    fn port(&self) -> u16 {
        self.get("port").parse().expect("port=")
    }
}

fn events(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let fields = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Event { name, fields })
        })
        .collect()
}

/// The first `name` event of a probe's output.
fn event(out: &str, name: &str) -> Event {
    events(out)
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

fn probe_cmd(ns: &Namespace, args: &[&str]) -> Command {
    let mut c = ns.cmd(xtask_bin());
    // Errors without anyhow's backtraces (the test harness sets RUST_BACKTRACE).
    c.env("RUST_LIB_BACKTRACE", "0").arg("nat-probe").args(args);
    c
}

/// Runs `xtask nat-probe ARGS` in `ns` to completion: its output.
fn probe(ns: &Namespace, args: &[&str]) -> anyhow::Result<String> {
    xtask::util::output(probe_cmd(ns, args).stdin(Stdio::null()))
        .map_err(|e| e.context(format!("in {}", ns.label())))
}

/// Starts `xtask nat-probe ARGS` in `ns` as a daemon logging to `<name>.log`.
fn probe_daemon(ns: &Namespace, name: &str, args: &[&str]) -> Daemon {
    ns.spawn_logged(&mut probe_cmd(ns, args), name)
        .unwrap_or_else(|e| panic!("starting {name} in {}: {e:#}", ns.label()))
}

/// Waits until `d`'s output has an event `name`; returns it.
fn wait_event(d: &Daemon, what: &str, name: &str, timeout: Duration) -> Event {
    let start = Instant::now();
    loop {
        let log = d.read_log();
        if let Some(e) = events(&log).into_iter().find(|e| e.name == name) {
            return e;
        }
        assert!(
            d.is_running() && start.elapsed() < timeout,
            "{what}: no `{name}` after {:.1} s ({:?}):\n{}",
            start.elapsed().as_secs_f64(),
            d.exit_status(),
            xtask::mesh::tail(&log, 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `nat-probe serve` daemon and what it logged.
struct Server {
    daemon: Daemon,
    label: String,
}

impl Server {
    fn start(ns: &Namespace, args: &[&str]) -> Server {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let daemon = probe_daemon(ns, "nat-probe-serve", &all);
        let label = format!("the server in {}", ns.label());
        wait_event(&daemon, &label, "listening", Duration::from_secs(10));
        Server { daemon, label }
    }

    fn events(&self) -> Vec<Event> {
        let evs = events(&self.daemon.read_log());
        if let Some(e) = evs.iter().find(|e| e.name == "error") {
            panic!("{} logged an error: {e:?}", self.label);
        }
        evs
    }

    /// How many events it has logged so far, to look at what comes next.
    fn mark(&self) -> usize {
        self.events().len()
    }

    /// Waits until the events after `mark` include `n` events `name` on
    /// `port`; returns them.
    fn wait_new(&self, mark: usize, name: &str, port: u16, n: usize) -> Vec<Event> {
        let start = Instant::now();
        loop {
            let found: Vec<Event> = self
                .events()
                .into_iter()
                .skip(mark)
                .filter(|e| e.name == name && e.port() == port)
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20) && self.daemon.is_running(),
                "{}: {} of {n} `{name}` events on port {port} after {:.1} s ({:?}):\n{}",
                self.label,
                found.len(),
                start.elapsed().as_secs_f64(),
                self.daemon.exit_status(),
                xtask::mesh::tail(&self.daemon.read_log(), 20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One TCP echo from `from` to `to`: the address the server saw.
fn tcp_echo_seen(from: &Pod, server: &Server, to: SocketAddrV4) -> SocketAddrV4 {
    let mark = server.mark();
    let to_s = to.to_string();
    probe(from.namespace(), &["tcp", "--to", &to_s, "--mode", "echo"])
        .unwrap_or_else(|e| panic!("TCP from {} to {to}: {e:#}", from.name));
    let accepted = server.wait_new(mark, "tcp-accept", to.port(), 1);
    assert_eq!(accepted.len(), 1, "{}: {accepted:?}", server.label);
    accepted[0].addr("peer")
}

/// One UDP datagram from `from` to `to` and its answer: the address the
/// server saw (which it also wrote into the answer).
fn udp_seen(from: &Pod, server: &Server, to: SocketAddrV4, bind_port: Option<u16>) -> SocketAddrV4 {
    let mark = server.mark();
    let token = format!("{}-{}", from.name, bind_port.unwrap_or(0));
    let (to_s, port_s) = (to.to_string(), bind_port.unwrap_or(0).to_string());
    let mut args = vec!["udp", "--to", &to_s, "--token", &token];
    if bind_port.is_some() {
        args.extend(["--bind-port", &port_s]);
    }
    let out = probe(from.namespace(), &args)
        .unwrap_or_else(|e| panic!("UDP from {} to {to}: {e:#}", from.name));
    let reply = event(&out, "udp-reply");
    assert_eq!(
        reply.get("token"),
        token,
        "{} got someone else's answer",
        from.name
    );
    let heard: Vec<Event> = server
        .wait_new(mark, "udp", to.port(), 1)
        .into_iter()
        .filter(|e| e.get("data") == token)
        .collect();
    assert!(!heard.is_empty(), "{} never heard {token}", server.label);
    let seen = heard[0].addr("peer");
    assert_eq!(reply.addr("seen"), seen);
    seen
}

// --------------------------------------------------------------- NAT table

/// One translation as `weftctl bpf nat` prints it:
/// `tcp 10.42.0.2:40000 -> 198.18.0.10:40000 -> 198.18.0.200:5201 established 3s`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NatEntry {
    proto: String,
    pod: SocketAddrV4,
    node: SocketAddrV4,
    remote: SocketAddrV4,
    state: String,
}

/// Every TCP and UDP translation of `weftctl bpf nat` output (the header
/// line `proto pod node remote state age`, blank lines and other protocols,
/// e.g. ICMP's `ip#id` endpoints, skipped).
fn parse_nat(text: &str) -> Vec<NatEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tcp ") || l.starts_with("udp "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().filter(|w| *w != "->").collect();
            let addr = |i: usize| -> SocketAddrV4 {
                w.get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("weftctl bpf nat: cannot read {l:?}"))
            };
            NatEntry {
                proto: w[0].to_string(),
                pod: addr(1),
                node: addr(2),
                remote: addr(3),
                state: w.get(4).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

fn pin_dir(node: &Node) -> PathBuf {
    node.bpffs_dir.join("weft")
}

/// `node`'s NAT table (`weftctl bpf nat --pin-dir <its bpffs>/weft`).
fn nat_table(node: &Node) -> Vec<NatEntry> {
    let out = xtask::util::output(
        Command::new(bin_dir().join("weftctl"))
            .args(["bpf", "nat", "--pin-dir"])
            .arg(pin_dir(node)),
    )
    .unwrap_or_else(|e| panic!("weftctl bpf nat on {}: {e:#}", node.name));
    parse_nat(&out)
}

/// How many entries a pinned map holds (`bpftool map dump`), if it is there.
fn map_entries(node: &Node, map: &str) -> Option<usize> {
    let pin = pin_dir(node).join(map);
    if !pin.exists() {
        return None;
    }
    let out = xtask::util::output(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.as_array().map(Vec::len)
}

// ------------------------------------------------------------- netfilter

/// Every NAT rule in `node`'s namespace: `-A` lines of `iptables-save -t
/// nat` (nft backend), of the legacy nat table if one exists there (it is
/// only read when `/proc/net/ip_tables_names` lists it: reading would
/// create it), and the nat chains of `nft list ruleset` when nft is
/// installed. Also what was looked at, for the report.
fn netfilter_nat_rules(node: &Node) -> (Vec<String>, Vec<String>) {
    let mut rules = Vec::new();
    let mut looked = Vec::new();
    let rule_lines = |out: &str, what: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("-A") || l.starts_with("-I"))
            .map(|l| format!("{what}: {l}"))
            .collect()
    };
    for (save, names) in [
        ("iptables-save", None),
        ("ip6tables-save", None),
        ("iptables-legacy-save", Some("/proc/net/ip_tables_names")),
        ("ip6tables-legacy-save", Some("/proc/net/ip6_tables_names")),
    ] {
        if !xtask::util::have(save) {
            continue;
        }
        if let Some(names) = names {
            let tables = node
                .sh(&format!("cat {names} 2>/dev/null || true"))
                .unwrap();
            if !tables.lines().any(|t| t.trim() == "nat") {
                looked.push(format!("{save}: no legacy nat table"));
                continue;
            }
        }
        let out = node.sh(&format!("{save} -t nat 2>&1 || true")).unwrap();
        rules.extend(rule_lines(&out, save));
        looked.push(save.to_string());
    }
    assert!(
        xtask::util::have("nft"),
        "nft missing: cargo xtask setup installs nftables"
    );
    {
        let out = node.sh("nft list ruleset").unwrap();
        rules.extend(
            out.lines()
                .filter(|l| l.contains("type nat"))
                .map(|l| format!("nft: {}", l.trim())),
        );
        looked.push("nft list ruleset".into());
    }
    (rules, looked)
}

/// `node`'s conntrack entries that contain `needle` (e.g. `dport=5202`),
/// from `conntrack -L` (installed by `cargo xtask setup`).
fn conntrack_entries(node: &Node, needle: &str) -> Option<(Vec<String>, &'static str)> {
    assert!(
        xtask::util::have("conntrack"),
        "conntrack missing: cargo xtask setup installs it"
    );
    let (out, source) = (node.sh("conntrack -L 2>/dev/null").unwrap(), "conntrack -L");
    Some((
        out.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect(),
        source,
    ))
}

/// No conntrack entry on `nodes` mentions `needle`.
fn assert_no_conntrack(nodes: &[&Node], needle: &str) {
    for n in nodes {
        match conntrack_entries(n, needle) {
            Some((entries, source)) => {
                assert!(
                    entries.is_empty(),
                    "{}: {} conntrack entries ({source}) for {needle}, e.g. {:?}",
                    n.name,
                    entries.len(),
                    &entries[..entries.len().min(3)]
                );
                eprintln!("    {}: no conntrack entry for {needle} ({source})", n.name);
            }
            None => eprintln!(
                "    {}: neither conntrack nor /proc/net/nf_conntrack: nothing to check",
                n.name
            ),
        }
    }
}

/// Kernel forwarding is still off on every node, FORWARD still DROP.
fn assert_no_kernel_forwarding(cluster: &Cluster) {
    for n in &cluster.nodes {
        let fwd = n.sh("sysctl -n net.ipv4.ip_forward").unwrap();
        assert_eq!(fwd.trim(), "0", "ip_forward on {}", n.name);
        let policy = n.sh("iptables -S FORWARD").unwrap();
        assert!(policy.contains("-P FORWARD DROP"), "{}: {policy}", n.name);
    }
}

// ---------------------------------------------------------------- the bed

/// The test bed's servers and files.
struct Bed<'a> {
    cluster: &'a Cluster,
    /// On the external host: TCP [`PORT`] and [`MANY_PORT`], UDP [`PORT`],
    /// ICMP echo requests.
    ext: Server,
    /// `<test bed>/masquerade`: files exchanged with the pods.
    files: PathBuf,
    /// 2 MiB the pods upload.
    upload: PathBuf,
    /// 2 MiB the external host serves.
    download: PathBuf,
}

fn random_file(path: &Path, len: usize) {
    use std::io::Read;
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .unwrap();
    std::fs::write(path, data).unwrap();
}

impl<'a> Bed<'a> {
    fn new(cluster: &'a Cluster) -> Bed<'a> {
        let files = cluster.dir.join("masquerade");
        std::fs::create_dir_all(files.join("uploads")).unwrap();
        let (upload, download) = (files.join("upload.bin"), files.join("download.bin"));
        random_file(&upload, FILE_SIZE);
        random_file(&download, FILE_SIZE);
        let ext = &cluster.external_host;
        // Every ICMP error the tests ask for, however fast they come.
        ext.sh("sysctl -q -w net.ipv4.icmp_ratelimit=0").unwrap();
        let (p, m, dl, up) = (
            PORT.to_string(),
            MANY_PORT.to_string(),
            download.display().to_string(),
            files.join("uploads").display().to_string(),
        );
        let ext = Server::start(
            ext.namespace(),
            &[
                "--tcp",
                &p,
                "--tcp",
                &m,
                "--udp",
                &p,
                "--icmp",
                "--download",
                &dl,
                "--upload-dir",
                &up,
            ],
        );
        Bed {
            cluster,
            ext,
            files,
            upload,
            download,
        }
    }

    fn ext_addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(EXT, port)
    }
}

// ---------------------------------------------------------------- sections

/// Check 1: from every pod: ping, TCP and UDP to the external host, which
/// sees the node's public address; from one pod of every node a 2 MiB file
/// each way.
fn egress_to_the_external_host(bed: &Bed) {
    let cluster = bed.cluster;
    let ext = &cluster.external_host;
    // The premise: the external host cannot route to any pod.
    let routes = ext.sh("ip -4 route show").unwrap();
    assert!(!routes.contains("10.42."), "external host routes: {routes}");
    assert!(
        ext.sh(&format!("ip route get {}", cluster.nodes[0].pods[0].ip))
            .is_err(),
        "the external host has a route to a pod"
    );
    let to = bed.ext_addr(PORT);
    let want_upload = sha256(&bed.upload);
    let want_download = sha256(&bed.download);
    for node in &cluster.nodes {
        let public = node.public_ip;
        for pod in &node.pods {
            pod.ping(EXT, 3).unwrap_or_else(|e| {
                panic!(
                    "{} cannot ping the external host {EXT}, which has no route back to pods: \
                     nothing masqueraded its traffic to {} ({e:#})",
                    pod.name, node.public_ip
                )
            });
            let seen = tcp_echo_seen(pod, &bed.ext, to);
            assert_eq!(
                seen.ip(),
                &public,
                "TCP from {} arrived from {seen}",
                pod.name
            );
            let seen_udp = udp_seen(pod, &bed.ext, to, None);
            assert_eq!(
                seen_udp.ip(),
                &public,
                "UDP from {} arrived from {seen_udp}",
                pod.name
            );
            eprintln!(
                "    {}: ping, TCP and UDP reach {EXT}, seen as {} (TCP {seen}, UDP {seen_udp})",
                pod.name, node.public_ip
            );
        }
        let pod = &node.pods[0];

        // Upload: what arrived is what was sent.
        let mark = bed.ext.mark();
        let up = bed.upload.display().to_string();
        let to_s = to.to_string();
        let out = probe(
            pod.namespace(),
            &["tcp", "--to", &to_s, "--mode", "upload", "--file", &up],
        )
        .unwrap_or_else(|e| panic!("upload from {}: {e:#}", pod.name));
        assert_eq!(event(&out, "upload").get("bytes"), FILE_SIZE.to_string());
        let got = &bed.ext.wait_new(mark, "tcp-upload", PORT, 1)[0];
        assert_eq!(
            got.addr("peer").ip(),
            &public,
            "upload from {}: {got:?}",
            pod.name
        );
        assert_eq!(got.get("bytes"), FILE_SIZE.to_string());
        assert_eq!(
            sha256(Path::new(got.get("file"))),
            want_upload,
            "the upload from {} arrived damaged",
            pod.name
        );

        // Download.
        let mark = bed.ext.mark();
        let file = bed.files.join(format!("download-{}.bin", pod.name));
        let file_s = file.display().to_string();
        let out = probe(
            pod.namespace(),
            &[
                "tcp", "--to", &to_s, "--mode", "download", "--file", &file_s,
            ],
        )
        .unwrap_or_else(|e| panic!("download to {}: {e:#}", pod.name));
        assert_eq!(event(&out, "download").get("bytes"), FILE_SIZE.to_string());
        let sent = &bed.ext.wait_new(mark, "tcp-download", PORT, 1)[0];
        assert_eq!(
            sent.addr("peer").ip(),
            &public,
            "download to {}: {sent:?}",
            pod.name
        );
        assert_eq!(
            sha256(&file),
            want_download,
            "the download to {} arrived damaged",
            pod.name
        );
        eprintln!(
            "    {}: 2 MiB both ways, SHA-256 intact, seen as {}",
            pod.name, node.public_ip
        );
    }
    // Every echo request the external host saw came from a node.
    let publics: BTreeSet<Ipv4Addr> = cluster.nodes.iter().map(|n| n.public_ip).collect();
    let pings: BTreeSet<Ipv4Addr> = bed
        .ext
        .events()
        .iter()
        .filter(|e| e.name == "icmp-echo")
        .map(|e| e.get("src").parse().unwrap())
        .collect();
    assert_eq!(pings, publics, "sources of the echo requests at {EXT}");
}

/// Check 2: exempt destinations see the pod's own address.
fn exempt_destinations_keep_the_pod_address(bed: &Bed) {
    let cluster = bed.cluster;
    let p = PORT.to_string();
    let serve = ["--tcp", p.as_str(), "--udp", p.as_str()];

    // Pods of other locations, and of another node of the same location.
    for (from, to) in [
        ("gcp-2-pod0", "aws-2-pod1"),
        ("onprem-1-pod1", "gcp-1-pod0"),
        ("aws-1-pod0", "aws-2-pod0"),
    ] {
        let (from, to) = (pod(cluster, from), pod(cluster, to));
        let server = Server::start(to.namespace(), &serve);
        let addr = SocketAddrV4::new(to.ip, PORT);
        let tcp = tcp_echo_seen(from, &server, addr);
        let udp = udp_seen(from, &server, addr, None);
        assert_eq!(
            tcp.ip(),
            &from.ip,
            "TCP {} -> {}: seen as {tcp}",
            from.name,
            to.name
        );
        assert_eq!(
            udp.ip(),
            &from.ip,
            "UDP {} -> {}: seen as {udp}",
            from.name,
            to.name
        );
        server.daemon.stop(Duration::from_secs(5)).unwrap();
        eprintln!(
            "    {} -> {}: seen as {} (TCP and UDP)",
            from.name, to.name, from.ip
        );
    }

    // The laptop (external WireGuard peer), from a leader's pod and another.
    let laptop = cluster.laptop.as_ref().expect("laptop");
    let server = Server::start(laptop.namespace(), &serve);
    let addr = SocketAddrV4::new(LAPTOP_MESH_IP, PORT);
    for from in ["aws-1-pod1", "gcp-2-pod1"] {
        let from = pod(cluster, from);
        let tcp = tcp_echo_seen(from, &server, addr);
        let udp = udp_seen(from, &server, addr, None);
        assert_eq!(
            tcp.ip(),
            &from.ip,
            "TCP {} -> laptop: seen as {tcp}",
            from.name
        );
        assert_eq!(
            udp.ip(),
            &from.ip,
            "UDP {} -> laptop: seen as {udp}",
            from.name
        );
        eprintln!(
            "    {} -> laptop {LAPTOP_MESH_IP}: seen as {}",
            from.name, from.ip
        );
    }
    server.daemon.stop(Duration::from_secs(5)).unwrap();

    // aws's allowed location IP, from the other locations (bound to it:
    // aws-1 has other addresses a UDP answer could leave from).
    let printer = PRINTER.to_string();
    let mut serve_printer = serve.to_vec();
    serve_printer.extend(["--bind", printer.as_str()]);
    let server = Server::start(cluster.node("aws-1").namespace(), &serve_printer);
    let addr = SocketAddrV4::new(PRINTER, PORT);
    for from in ["gcp-2-pod0", "onprem-1-pod0"] {
        let from = pod(cluster, from);
        let tcp = tcp_echo_seen(from, &server, addr);
        let udp = udp_seen(from, &server, addr, None);
        assert_eq!(
            tcp.ip(),
            &from.ip,
            "TCP {} -> {PRINTER}: seen as {tcp}",
            from.name
        );
        assert_eq!(
            udp.ip(),
            &from.ip,
            "UDP {} -> {PRINTER}: seen as {udp}",
            from.name
        );
        eprintln!(
            "    {} -> allowed location IP {PRINTER}: seen as {}",
            from.name, from.ip
        );
    }
    server.daemon.stop(Duration::from_secs(5)).unwrap();
}

/// The clients of [`many_connections`], holding their connections open.
struct Held<'a> {
    /// (pod, its number of connections).
    clients: Vec<(&'a Pod, usize, Daemon)>,
    /// Where the external host saw them from.
    peers: Vec<SocketAddrV4>,
}

/// Check 3: 5,000 TCP connections to the external host from three pods (two on
/// aws-1, one on gcp-2), every pod from the same source ports
/// [`FIRST_PORT`]..., all open at once with a byte exchanged on each: the
/// external host sees 5,000 distinct (address, port) pairs, from the nodes'
/// public addresses. `while_held` looks at the nodes meanwhile; then they
/// all close, and the server sees every one closed.
fn many_connections<'a>(bed: &'a Bed, while_held: impl FnOnce(&Held<'a>)) {
    let cluster = bed.cluster;
    let plan: [(&str, u16); 3] = [
        ("aws-1-pod0", 1667),
        ("aws-1-pod1", 1667),
        ("gcp-2-pod0", 1666),
    ];
    let total: usize = plan.iter().map(|(_, n)| usize::from(*n)).sum();
    assert_eq!(total, 5000);
    let release = bed.files.join("release-many");
    let release_s = release.display().to_string();
    let to_s = bed.ext_addr(MANY_PORT).to_string();
    let mark = bed.ext.mark();
    let started = Instant::now();
    let clients: Vec<(&Pod, usize, Daemon)> = plan
        .iter()
        .map(|(name, n)| {
            let p = pod(cluster, name);
            let ports = format!("{FIRST_PORT}-{}", FIRST_PORT + n - 1);
            let d = probe_daemon(
                p.namespace(),
                "nat-probe-many",
                &[
                    "tcp-many",
                    "--to",
                    &to_s,
                    "--ports",
                    &ports,
                    "--release",
                    &release_s,
                    "--timeout",
                    "120",
                ],
            );
            (p, usize::from(*n), d)
        })
        .collect();
    for (p, n, d) in &clients {
        let e = wait_event(d, &p.name, "exchanged", Duration::from_secs(90));
        assert_eq!(e.get("n"), n.to_string(), "{}", p.name);
    }
    eprintln!(
        "    {total} connections open, a byte exchanged on each, after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let accepted = bed.ext.wait_new(mark, "tcp-accept", MANY_PORT, total);
    assert_eq!(accepted.len(), total, "connections accepted");
    let peers: Vec<SocketAddrV4> = accepted.iter().map(|e| e.addr("peer")).collect();
    let distinct: BTreeSet<SocketAddrV4> = peers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        total,
        "the external host saw {} distinct (address, port) pairs for {total} connections",
        distinct.len()
    );
    let mut per_ip: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for p in &peers {
        *per_ip.entry(*p.ip()).or_default() += 1;
    }
    let want: BTreeMap<Ipv4Addr, usize> = [
        (cluster.node("aws-1").public_ip, 3334),
        (cluster.node("gcp-2").public_ip, 1666),
    ]
    .into();
    assert_eq!(per_ip, want, "connections per source address at {EXT}");
    eprintln!("    {EXT} saw {total} distinct sources: {per_ip:?}");

    let held = Held { clients, peers };
    while_held(&held);

    std::fs::write(&release, "").unwrap();
    for (p, n, d) in &held.clients {
        let e = wait_event(d, &p.name, "closed", Duration::from_secs(30));
        assert_eq!(e.get("n"), n.to_string());
        let status = d.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{}: {status}:\n{}", p.name, d.read_log());
    }
    let closed = bed.ext.wait_new(mark, "tcp-close", MANY_PORT, total);
    assert_eq!(closed.len(), total);
    eprintln!(
        "    all {total} closed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Check 3, the NAT table, while the 5,000 are held: on each node one entry
/// per connection, from the pod's own address and port to the node address
/// and port the external host saw.
fn nat_table_while_held(bed: &Bed, held: &Held) {
    let cluster = bed.cluster;
    for node in [cluster.node("aws-1"), cluster.node("gcp-2")] {
        let table: Vec<NatEntry> = nat_table(node)
            .into_iter()
            .filter(|e| e.remote == bed.ext_addr(MANY_PORT))
            .collect();
        assert!(
            table.iter().all(|e| e.proto == "tcp"),
            "{}: {table:?}",
            node.name
        );
        let seen: BTreeSet<SocketAddrV4> = held
            .peers
            .iter()
            .filter(|p| *p.ip() == node.public_ip)
            .copied()
            .collect();
        let node_side: BTreeSet<SocketAddrV4> = table.iter().map(|e| e.node).collect();
        assert_eq!(
            node_side, seen,
            "{}: the NAT table's node addresses to {EXT}:{MANY_PORT} are not what {EXT} saw",
            node.name
        );
        let sent: BTreeSet<SocketAddrV4> = held
            .clients
            .iter()
            .filter(|(p, _, _)| p.node == node.name)
            .flat_map(|(p, n, _)| {
                (FIRST_PORT..FIRST_PORT + *n as u16).map(|port| SocketAddrV4::new(p.ip, port))
            })
            .collect();
        let pod_side: BTreeSet<SocketAddrV4> = table.iter().map(|e| e.pod).collect();
        assert_eq!(
            pod_side, sent,
            "{}: the NAT table's pod addresses to {EXT}:{MANY_PORT} are not what the pods sent from",
            node.name
        );
        assert_eq!(table.len(), seen.len(), "{}: entries", node.name);
        eprintln!(
            "    {}: {} NAT entries to {EXT}:{MANY_PORT}, each pod address and port to what {EXT} saw",
            node.name,
            table.len()
        );
    }
}

/// Check 3, the GC: after the close the nodes' NAT tables lose the 5,000 within the
/// GC interval: the deadline is two intervals (a sweep comes at most one
/// interval after the close; one more for a sweep that started just before)
/// and 3 s to read 5,000 entries on a loaded machine.
fn nat_table_empties(bed: &Bed, gc_interval: u64) {
    let cluster = bed.cluster;
    let nodes = [cluster.node("aws-1"), cluster.node("gcp-2")];
    let deadline = Duration::from_secs(2 * gc_interval + 3);
    let start = Instant::now();
    loop {
        // Per node: how many are left, by state.
        let left: BTreeMap<String, BTreeMap<String, usize>> = nodes
            .iter()
            .map(|n| {
                let mut states = BTreeMap::new();
                for e in nat_table(n)
                    .into_iter()
                    .filter(|e| e.remote == bed.ext_addr(MANY_PORT))
                {
                    *states.entry(e.state).or_default() += 1;
                }
                (n.name.clone(), states)
            })
            .collect();
        if left.values().all(BTreeMap::is_empty) {
            let raw: Vec<String> = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}: WEFT_NAT_EGRESS {:?}, WEFT_NAT_INGRESS {:?}",
                        n.name,
                        map_entries(n, "WEFT_NAT_EGRESS"),
                        map_entries(n, "WEFT_NAT_INGRESS")
                    )
                })
                .collect();
            eprintln!(
                "    the NAT tables lost the {EXT}:{MANY_PORT} entries {:.1} s after the close \
                 (GC interval {gc_interval} s); entries left (other flows): {}",
                start.elapsed().as_secs_f64(),
                raw.join("; ")
            );
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "NAT entries to {EXT}:{MANY_PORT} still there {:.1} s after the close, \
             GC interval {gc_interval} s (closed flows must go at the next sweep); \
             left by state: {left:?}",
            start.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Check 4: UDP answers and ICMP errors about translated flows reach the right pod.
fn icmp_errors_reach_the_right_pod(bed: &Bed) {
    let cluster = bed.cluster;
    let aws2 = cluster.node("aws-2");
    let (a, b) = (&aws2.pods[0], &aws2.pods[1]);
    let to = bed.ext_addr(PORT);

    // Two pods of one node, the same source port, the same destination:
    // two translations, each answer to its own pod (udp_seen checks the
    // token).
    let seen_a = udp_seen(a, &bed.ext, to, Some(6000));
    let seen_b = udp_seen(b, &bed.ext, to, Some(6000));
    assert_eq!(seen_a.ip(), &aws2.public_ip);
    assert_eq!(seen_b.ip(), &aws2.public_ip);
    assert_ne!(seen_a, seen_b, "two flows, one translation");
    eprintln!(
        "    {} and {} from port 6000: seen as {seen_a} and {seen_b}, each answered",
        a.name, b.name
    );

    // ICMP port unreachable: `a`'s error goes to `a` only, `b`'s to `b`.
    let closed = bed.ext_addr(CLOSED_PORT).to_string();
    let args = |wait: &'static str| -> Vec<String> {
        [
            "udp-refused",
            "--to",
            &closed,
            "--bind-port",
            "6001",
            "--wait",
            wait,
        ]
        .map(String::from)
        .to_vec()
    };
    let a_args = args("2");
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let da = probe_daemon(a.namespace(), "nat-probe-refused", &a_args);
    wait_event(&da, &a.name, "refused", Duration::from_secs(10));
    let b_args = args("0");
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let out = probe(b.namespace(), &b_args).unwrap();
    assert_eq!(
        event(&out, "result").get("refused"),
        "1",
        "{}: no ECONNREFUSED for its flow to {closed}:\n{out}",
        b.name
    );
    da.wait_timeout(Duration::from_secs(15)).unwrap();
    let log = da.read_log();
    assert_eq!(
        event(&log, "result").get("refused"),
        "1",
        "{} got {}'s ICMP error too:\n{log}",
        a.name,
        b.name
    );
    eprintln!(
        "    {} and {} (same source port) each got their own ECONNREFUSED",
        a.name, b.name
    );

    // Fragmentation needed about a UDP flow, then a TCP flow.
    pmtu_lowered(bed, pod(cluster, "gcp-2-pod1"), false);
    pmtu_lowered(bed, pod(cluster, "onprem-1-pod1"), true);
}

/// The path MTU `pod` has to the external host, from `ip route get`.
fn route_mtu(pod: &Pod) -> String {
    pod.sh(&format!("ip route get {EXT}")).unwrap()
}

/// A flow from `pod` to the external host (TCP or UDP), then an ICMP
/// fragmentation-needed (next-hop MTU [`ICMP_MTU`]) from the external host
/// to the node, quoting the translated packet as the external host saw it:
/// the pod's path MTU to the external host drops to [`ICMP_MTU`].
fn pmtu_lowered(bed: &Bed, pod: &Pod, tcp: bool) {
    let node = bed.cluster.node(&pod.node);
    let want = format!("mtu {ICMP_MTU}");
    let before = route_mtu(pod);
    assert!(!before.contains(&want), "{}: already {before}", pod.name);
    let to = bed.ext_addr(PORT);
    let to_s = to.to_string();
    let mark = bed.ext.mark();
    let (d, inner_src, seq) = if tcp {
        let d = probe_daemon(
            pod.namespace(),
            "nat-probe-pmtu-tcp",
            &["tcp", "--to", &to_s, "--mode", "seq", "--hold", "30"],
        );
        wait_event(&d, &pod.name, "echo", Duration::from_secs(10));
        let e = bed.ext.wait_new(mark, "tcp-seq", PORT, 1).remove(0);
        (d, e.addr("peer"), e.get("rcv_nxt").to_string())
    } else {
        let token = format!("pmtu-{}", pod.name);
        let d = probe_daemon(
            pod.namespace(),
            "nat-probe-pmtu-udp",
            &[
                "udp",
                "--to",
                &to_s,
                "--bind-port",
                "6002",
                "--token",
                &token,
                "--hold",
                "30",
            ],
        );
        let reply = wait_event(&d, &pod.name, "udp-reply", Duration::from_secs(10));
        (d, reply.addr("seen"), "0".to_string())
    };
    assert_eq!(
        inner_src.ip(),
        &node.public_ip,
        "{}: seen as {inner_src}",
        pod.name
    );
    let proto = if tcp { "tcp" } else { "udp" };
    let (node_ip, mtu, src) = (
        node.public_ip.to_string(),
        ICMP_MTU.to_string(),
        inner_src.to_string(),
    );
    let sent = probe(
        bed.cluster.external_host.namespace(),
        &[
            "frag-needed",
            "--to",
            &node_ip,
            "--mtu",
            &mtu,
            "--proto",
            proto,
            "--inner-src",
            &src,
            "--inner-dst",
            &to_s,
            "--seq",
            &seq,
        ],
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let route = route_mtu(pod);
        let sock = if tcp {
            pod.sh(&format!("ss -tin dst {EXT}")).unwrap()
        } else {
            String::new()
        };
        let socket_ok = !tcp || sock.contains(&format!("pmtu:{ICMP_MTU}"));
        if route.contains(&want) && socket_ok {
            eprintln!(
                "    {}: ICMP fragmentation-needed about its {proto} flow (seen as {inner_src}) \
                 lowered its path MTU to {ICMP_MTU} after {:.1} s: {}",
                pod.name,
                start.elapsed().as_secs_f64(),
                route.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}: the ICMP error about its {proto} flow ({sent}) did not lower its path MTU:\n\
             ip route get: {route}\nss: {sock}\nprobe: {}",
            pod.name,
            d.read_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The socket itself saw it too (IP_MTU).
    wait_for(
        &format!("{}'s socket reporting {want}", pod.name),
        Duration::from_secs(5),
        || {
            let l = d.read_log();
            l.lines().any(|x| x.trim() == want).then_some(())
        },
    );
    d.stop(Duration::from_secs(5)).unwrap();
}

/// The laptop (an external WireGuard peer) sends its traffic for the
/// external host through aws's leader, as a road warrior with a default
/// route into the mesh would: the leader masquerades it, the external host
/// sees the leader's public address, and the answers come back to the
/// laptop through WireGuard.
fn laptop_goes_out_through_a_leader(bed: &Bed) {
    let cluster = bed.cluster;
    let laptop = cluster.laptop.as_ref().expect("laptop");
    // The peer that carries aws's pod CIDR is aws's leader.
    let aws_cidr = cluster.node("aws-1").pod_cidr.to_string();
    let dump = laptop.sh("wg show wg0 allowed-ips").unwrap();
    let (key, ips) = dump
        .lines()
        .find_map(|l| {
            let (k, ips) = l.split_once('\t')?;
            ips.contains(&aws_cidr)
                .then(|| (k.to_string(), ips.replace(' ', ",")))
        })
        .unwrap_or_else(|| panic!("no laptop peer for {aws_cidr}:\n{dump}"));
    laptop
        .sh(&format!(
            "wg set wg0 peer {key} allowed-ips {ips},{EXT}/32 && ip route add {EXT}/32 dev wg0 src {LAPTOP_MESH_IP}"
        ))
        .unwrap();
    let aws: Vec<Ipv4Addr> = ["aws-1", "aws-2"]
        .iter()
        .map(|n| cluster.node(n).public_ip)
        .collect();
    let to = bed.ext_addr(PORT);
    wait_for(
        "the laptop's ping through the mesh",
        Duration::from_secs(20),
        || laptop.ping(EXT, 1).ok(),
    );
    let mark = bed.ext.mark();
    probe(
        laptop.namespace(),
        &["tcp", "--to", &to.to_string(), "--mode", "echo"],
    )
    .unwrap_or_else(|e| panic!("TCP from the laptop to {to} through the mesh: {e:#}"));
    let seen = bed.ext.wait_new(mark, "tcp-accept", to.port(), 1)[0].addr("peer");
    assert!(
        aws.contains(seen.ip()),
        "the laptop's TCP through aws's leader arrived from {seen}, not from an aws node {aws:?}"
    );
    laptop
        .sh(&format!(
            "ip route del {EXT}/32 dev wg0 && wg set wg0 peer {key} allowed-ips {ips}"
        ))
        .unwrap();
    eprintln!("    the laptop through aws's leader: seen as {}", seen.ip());
}

/// Check 5: no netfilter NAT anywhere on the nodes.
fn no_netfilter_nat(cluster: &Cluster) {
    let mut looked = BTreeSet::new();
    for n in &cluster.nodes {
        let (rules, what) = netfilter_nat_rules(n);
        assert!(rules.is_empty(), "{}: NAT rules: {rules:#?}", n.name);
        looked.extend(what);
    }
    eprintln!(
        "    no NAT rule in any node namespace ({})",
        looked.into_iter().collect::<Vec<_>>().join(", ")
    );
}

// -------------------------------------------------------------------- test

#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn masquerade_to_the_internet() {
    let started = Instant::now();
    let cluster = demo_cluster();
    let (opts, gc_interval) = mesh_opts();
    let mut mesh = Mesh::new(&cluster, &bin_dir(), opts).unwrap();
    add_allowed_location_ip(&cluster, &mesh);
    let rules = common::ip_rules(&cluster);
    mesh.start_all().unwrap();
    let _dump = DumpOnPanic(&mesh);
    mesh.wait_full_connectivity(Duration::from_secs(90))
        .unwrap();
    let _wg = join_laptop(
        &mesh,
        &[pod(&cluster, "aws-1-pod1"), pod(&cluster, "gcp-2-pod1")],
    );
    let bed = Bed::new(&cluster);
    eprintln!(
        "    mesh ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    eprintln!("==> 1. every node's pods reach the external host as their node");
    egress_to_the_external_host(&bed);
    laptop_goes_out_through_a_leader(&bed);
    eprintln!("==> 2. exempt destinations see the pod's address");
    exempt_destinations_keep_the_pod_address(&bed);
    eprintln!("==> 3. 5,000 concurrent connections, the same source ports in three pods");
    many_connections(&bed, |held| {
        nat_table_while_held(&bed, held);
        assert_no_conntrack(
            &[cluster.node("aws-1"), cluster.node("gcp-2")],
            &format!("dport={MANY_PORT}"),
        );
    });
    nat_table_empties(&bed, gc_interval);
    eprintln!("==> 4. UDP answers and ICMP errors reach the right pod");
    icmp_errors_reach_the_right_pod(&bed);
    eprintln!("==> 5. no netfilter NAT, no conntrack, no kernel forwarding");
    no_netfilter_nat(&cluster);
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    assert_no_conntrack(&nodes, &format!("dst={EXT}"));
    assert_no_kernel_forwarding(&cluster);
    mesh.check_running().unwrap();
    eprintln!("==> 6. clean-up leaves nothing (lo forwarding off again)");
    for (n, rules_before) in cluster.nodes.iter().zip(&rules) {
        mesh.agent(&n.name).stop(Duration::from_secs(30)).unwrap();
        common::assert_nothing_left(n, rules_before);
    }
    eprintln!("    took {:.1} s", started.elapsed().as_secs_f64());
}

/// `weftctl bpf nat` output as the agent prints it.
#[test]
fn weftctl_bpf_nat_output_is_understood() {
    let text = "proto pod node remote state age\n\
                tcp 10.42.0.2:40000 -> 198.18.0.10:40000 -> 198.18.0.200:5201 established 3s\n\
                udp 10.42.0.3:6000 -> 198.18.0.10:1024 -> 198.18.0.200:5201 - 0s\n\n\
                icmp 10.42.0.3#7 -> 198.18.0.10#7 -> 198.18.0.200 - 0s idle 0s\n\
                tcp 10.42.0.4:1 -> 198.18.0.10:2 -> 198.18.0.200:3 half (reply entry evicted) 1s idle 1s\n";
    let e = parse_nat(text);
    assert_eq!(e.len(), 3);
    assert_eq!(
        e[0],
        NatEntry {
            proto: "tcp".into(),
            pod: "10.42.0.2:40000".parse().unwrap(),
            node: "198.18.0.10:40000".parse().unwrap(),
            remote: "198.18.0.200:5201".parse().unwrap(),
            state: "established".into(),
        }
    );
    assert_eq!(e[1].node.port(), 1024);
    assert_eq!(e[2].state, "half");
    assert!(parse_nat("proto pod node remote state age\n").is_empty());
}

/// `nat-probe` output lines.
#[test]
fn probe_events_are_understood() {
    let e = events(
        "tcp-accept port=5202 local=198.18.0.200:5202 peer=198.18.0.10:40000\nlistening tcp=[5201] udp=[] icmp=true\n",
    );
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].name, "tcp-accept");
    assert_eq!(e[0].port(), 5202);
    assert_eq!(e[0].addr("peer"), "198.18.0.10:40000".parse().unwrap());
    assert_eq!(e[1].name, "listening");
}
