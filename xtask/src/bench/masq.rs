//! The masquerade bench: a pod talks to the external host (198.18.0.200)
//! through its node, which hides the pod's address behind its own
//! (198.18.0.10), for each way of doing it measured in the same invocation,
//! interleaved round by round, printed as medians with min–max and as
//! ratios to the iptables baseline (Kilo's chain) of the same run.
//!
//! Every variant has its own test bed, all built up front: one location
//! `site`, one node `n1` with one pod (MTU 1500) and the test bed's external
//! host, reached through the node's public NIC `eth1`. The client (iperf3,
//! [`super::rr`] in CRR mode: connect, 1 byte each way, the server closes)
//! runs in the pod, the servers on the external host, all pinned to CPU 0
//! (BENCHMARKING.md). The masquerade exemptions stand for a mesh of N nodes,
//! N ∈ [`SIZES`], every node alone in its location (its own segment, the
//! shape of Kilo's `--mesh-granularity=full`): the test bed's node and N−1
//! nodes without a process, each with a pod CIDR (10.64.0.0/24, 10.64.1.0/24,
//! ...), a private IP (172.16.0.1, ...) and a WireGuard IP (10.4.0.2, ...);
//! plus the service CIDR. The variants:
//!
//! - (a) iptables, Kilo's chain (per N): kernel forwarding (`ip_forward=1`),
//!   Kilo's FORWARD accepts, `POSTROUTING -s <pod CIDR> -j KILO-NAT`, and in
//!   `KILO-NAT` what Kilo writes for that mesh: per segment a RETURN for its
//!   WireGuard IP and one per allowed IP (pod CIDR, private IP, WireGuard
//!   IP), the service CIDR, then MASQUERADE: 4N+1 RETURNs (20,001 at 5,000
//!   nodes), loaded with `iptables-restore`. A device `kilo0` (one end of a
//!   veth: the test machines' kernels may have no dummy driver) carries the
//!   routes to the other nodes' pod CIDRs and private IPs, as Kilo's
//!   WireGuard device would. The nat table switches conntrack on.
//! - (b) nftables (per N): the same forwarding and routes, the 3N+1 distinct
//!   exemptions in one interval set, `ip saddr <pod CIDR> ip daddr !=
//!   @exempt masquerade`.
//! - (c) weft's eBPF masquerade (per N): the agent on the node (`--xdp
//!   false`, what `auto` does on a veth; `--service-cidr`) with the N−1
//!   other nodes as node files, `ip_forward=0` and `iptables -P FORWARD
//!   DROP`: only eBPF can take the packets out. The other nodes' last-seen
//!   lies a day ahead, so that they stay ready without rewriting 5,000 files
//!   (and the agent reconciling them) in the middle of a measurement; the
//!   agent resyncs hourly, and its node's `persistent-keepalive` is 18 h,
//!   so that wireguard-go gives up on the peers that never answer after one
//!   round of handshakes instead of retrying for ever. Measuring starts once
//!   the agents and wireguard-go are quiet (see [`settle`]), and their CPU
//!   time while measuring is printed.
//! - (d) no NAT: kernel forwarding, no rules (conntrack off); the external
//!   host routes the pod CIDR back via the node.
//! - (e) weft without masquerade (`--masquerade false`, `ip_forward=1`, the
//!   same route back): the pod's packets leave through the kernel's
//!   forwarding (weft passes them), the replies come back through eBPF.
//!   Only with an agent that has the flag.
//!
//! Figures: single-stream TCP throughput (iperf3 `-J`; at the smallest and
//! largest N only, see [`Variant::measures`]) and connection rate.
//! Alongside: the source address the external host saw (from its TIME_WAIT
//! sockets: the server closes first), the nodes' conntrack entries for the
//! flows right after each connection run (which then flushes them, so that
//! every run starts from an empty table rather than from the other beds'
//! leftovers in the shared one) and `IpForwDatagrams`. The targets are
//! printed, not asserted; the checks (who masquerades, what conntrack and
//! the IP stack see) fail the bench.

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::datapath::{
    Options, Summary, iperf3, own_exe, request_response, snmp_field, start_servers_in, summarize,
    thousands,
};
use super::rr::{self, Mode};
use crate::mesh::{Mesh, MeshOptions, fake_key, unix_now};
use crate::testbed::{
    Cluster, ClusterSpec, EXTERNAL_HOST_IP, Host, Ipv4Net, LocationSpec, Node, POD_NIC, Pod,
    cluster_cidr,
};
use crate::util::{output, step};

/// Mesh sizes the exemptions stand for.
pub const SIZES: [usize; 3] = [10, 1000, 5000];
/// The service CIDR, exempted everywhere.
const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The test bed node's WireGuard IP in the baselines (weft allocates the
/// first free address of 10.4.0.0/16 too).
const WIREGUARD_NET: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 0);
/// Where the other nodes' pod CIDRs (/24 each) and private IPs start.
const FAKE_PODS: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
const FAKE_PRIVATE: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 0);
/// The nftables table of (b).
const NFT_TABLE: &str = "masq_bench";
/// At most this many datagrams may the IP stack of an eBPF node forward.
const EBPF_FORWARD_TOLERANCE: u64 = 100;
/// How long an agent may take to be ready with the largest mesh.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Background CPU (agents, wireguard-go; fraction of one CPU) below which
/// measuring starts, and how long to wait for it.
const SETTLE_CPU: f64 = 0.03;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Iptables,
    Nftables,
    Weft,
    NoNat,
    WeftNoMasq,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Iptables => 'a',
            Kind::Nftables => 'b',
            Kind::Weft => 'c',
            Kind::NoNat => 'd',
            Kind::WeftNoMasq => 'e',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Iptables => "iptables MASQUERADE, Kilo's chain",
            Kind::Nftables => "nftables masquerade, exemption set",
            Kind::Weft => "weft eBPF masquerade",
            Kind::NoNat => "no NAT, kernel forwarding",
            Kind::WeftNoMasq => "weft, --masquerade false",
        }
    }

    fn masquerades(self) -> bool {
        matches!(self, Kind::Iptables | Kind::Nftables | Kind::Weft)
    }

    fn weft(self) -> bool {
        matches!(self, Kind::Weft | Kind::WeftNoMasq)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant {
    kind: Kind,
    /// Nodes in the mesh the exemptions stand for (`None`: no exemptions).
    size: Option<usize>,
}

impl Variant {
    /// Throughput does not depend on the number of exemptions (netfilter
    /// looks them up once per connection): measured at the smallest and the
    /// largest N only, which shows it; connections everywhere.
    fn measures(self, figure: Figure) -> bool {
        figure == Figure::Crr
            || self
                .size
                .is_none_or(|n| n == SIZES[0] || n == SIZES[SIZES.len() - 1])
    }

    fn label(self) -> String {
        match self.size {
            Some(n) => format!("({}) {} @{n}", self.kind.letter(), self.kind.name()),
            None => format!("({}) {}", self.kind.letter(), self.kind.name()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Figure {
    Tcp,
    Crr,
}

impl Figure {
    const ALL: [Figure; 2] = [Figure::Tcp, Figure::Crr];

    fn name(self) -> &'static str {
        match self {
            Figure::Tcp => "TCP",
            Figure::Crr => "CRR",
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Figure::Tcp => format!("{v:.2} Gbit/s"),
            Figure::Crr => format!("{} /s", thousands(v)),
        }
    }
}

/// One node of the mesh the exemptions stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MeshNode {
    pod_cidr: Ipv4Net,
    private_ip: Ipv4Addr,
    wireguard_ip: Ipv4Addr,
}

fn offset(base: Ipv4Addr, by: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + by as u32)
}

/// The `n` nodes of the mesh: first the test bed's own (its pod CIDR and
/// private IP), then the others.
fn mesh_nodes(own_pod_cidr: Ipv4Net, own_private_ip: Ipv4Addr, n: usize) -> Vec<MeshNode> {
    (0..n)
        .map(|i| MeshNode {
            pod_cidr: if i == 0 {
                own_pod_cidr
            } else {
                Ipv4Net::new(offset(FAKE_PODS, (i - 1) << 8), 24).expect("valid")
            },
            private_ip: if i == 0 {
                own_private_ip
            } else {
                offset(FAKE_PRIVATE, i)
            },
            wireguard_ip: offset(WIREGUARD_NET, i + 1),
        })
        .collect()
}

/// The distinct exemptions of a mesh: every node's pod CIDR, private IP and
/// WireGuard IP, and the service CIDR (what weft computes, and the set of (b)).
fn exemptions(nodes: &[MeshNode]) -> Vec<String> {
    let mut v: Vec<String> = nodes
        .iter()
        .flat_map(|m| {
            [
                m.pod_cidr.to_string(),
                format!("{}/32", m.private_ip),
                format!("{}/32", m.wireguard_ip),
            ]
        })
        .collect();
    v.push(SERVICE_CIDR.into());
    v
}

/// Kilo's rules for `nodes` as an `iptables-restore` file, and the number
/// of RETURNs in KILO-NAT.
fn kilo_restore(pod_cidr: Ipv4Net, nodes: &[MeshNode]) -> (String, usize) {
    let all = cluster_cidr();
    let mut s = format!(
        "*filter\n\
         -A FORWARD -s {all} -m comment --comment \"Kilo: forward packets from the pod subnet\" -j ACCEPT\n\
         -A FORWARD -d {all} -m comment --comment \"Kilo: forward packets to the pod subnet\" -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :KILO-NAT - [0:0]\n\
         -A POSTROUTING -s {pod_cidr} -m comment --comment \"Kilo: jump to KILO-NAT chain\" -j KILO-NAT\n"
    );
    let mut returns = 0;
    let mut ret = |s: &mut String, dst: String, why: &str| {
        s.push_str(&format!(
            "-A KILO-NAT -d {dst} -m comment --comment \"Kilo: {why}\" -j RETURN\n"
        ));
        returns += 1;
    };
    for m in nodes {
        ret(
            &mut s,
            format!("{}/32", m.wireguard_ip),
            "do not NAT packets destined for WireGuared IPs",
        );
        for aip in [
            m.pod_cidr.to_string(),
            format!("{}/32", m.private_ip),
            format!("{}/32", m.wireguard_ip),
        ] {
            ret(
                &mut s,
                aip,
                "do not NAT packets destined for the local Pod subnet",
            );
        }
    }
    ret(
        &mut s,
        SERVICE_CIDR.into(),
        "do not NAT packets destined for service CIDRs",
    );
    s.push_str(
        "-A KILO-NAT -m comment --comment \"Kilo: NAT remaining packets\" -j MASQUERADE\nCOMMIT\n",
    );
    (s, returns)
}

/// The nftables equivalent: the exemptions in one interval set.
fn nft_ruleset(pod_cidr: Ipv4Net, nodes: &[MeshNode]) -> (String, usize) {
    let all = cluster_cidr();
    let set = exemptions(nodes);
    let elements: Vec<String> = set
        .iter()
        .map(|e| e.strip_suffix("/32").unwrap_or(e).to_string())
        .collect();
    let s = format!(
        "table ip {NFT_TABLE} {{\n\
         \tset exempt {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {all} accept\n\t\tip daddr {all} accept\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != @exempt masquerade\n\t}}\n}}\n",
        elements.join(", "),
    );
    (s, set.len())
}

/// The routes Kilo's WireGuard device would carry: the other nodes' pod
/// CIDRs and private IPs via their WireGuard IPs, on `kilo0` (a veth whose
/// other end stays unused).
fn kilo_routes(node: &Node, nodes: &[MeshNode], dir: &Path) -> Result<()> {
    let mut batch = format!(
        "link add kilo0 type veth peer name kilo0-peer\nlink set kilo0-peer up\n\
         addr add {}/16 dev kilo0\nlink set kilo0 up\n",
        nodes[0].wireguard_ip
    );
    for m in &nodes[1..] {
        batch.push_str(&format!(
            "route add {} via {} dev kilo0\nroute add {}/32 via {} dev kilo0\n",
            m.pod_cidr, m.wireguard_ip, m.private_ip, m.wireguard_ip
        ));
    }
    let file = dir.join("kilo-routes.batch");
    std::fs::write(&file, batch)?;
    output(node.cmd("ip").arg("-batch").arg(&file))
        .with_context(|| format!("adding the routes of kilo0 on {}", node.name))?;
    Ok(())
}

/// The node file of mesh node `i` ≥ 1: alone in its location, ready for a
/// day, its WireGuard IP claimed so that weft's exemptions are the
/// baselines' ones.
fn fake_node_yaml(i: usize, m: &MeshNode, last_seen: i64) -> (String, String) {
    let name = format!("fake-{i:04}");
    let yaml = format!(
        "name: {name}\npodCIDR: {}\nlabels:\n  topology.kubernetes.io/region: {name}\n\
         annotations:\n  weft.dev/key: \"{}\"\n  weft.dev/endpoint: \"203.0.113.{}:{}\"\n  \
         weft.dev/internal-ip: \"{}/32\"\n  weft.dev/wireguard-ip: \"{}/16\"\n  \
         weft.dev/last-seen: \"{last_seen}\"\n",
        m.pod_cidr,
        fake_key(i as u32),
        1 + i % 250,
        51820 + i / 250,
        m.private_ip,
        m.wireguard_ip,
    );
    (name, yaml)
}

/// One variant's test bed.
struct Bed<'a> {
    variant: Variant,
    cluster: &'a Cluster,
    node: &'a Node,
    client: &'a Pod,
    ext: &'a Host,
    mesh: Option<Mesh<'a>>,
    /// What was installed: "20,001 RETURNs", "15,001 elements", ...
    installed: String,
    /// What the setup took, and for weft what the agent reported.
    notes: Vec<String>,
    samples: [Vec<f64>; 2],
    /// Source addresses the external host saw (TIME_WAIT sockets of the rr
    /// server), counted after each connection run.
    sources: BTreeMap<String, u64>,
    /// The largest count of the node's conntrack entries towards the
    /// external host right after a connection run.
    conntrack: Option<u64>,
    forwarded_before: u64,
    forwarded: u64,
    /// CPU seconds of the agent and wireguard-go at the start of measuring.
    cpu_before: Option<(f64, f64)>,
    cpu: Option<(f64, f64)>,
}

fn spec(kind: Kind) -> ClusterSpec {
    let mut spec = ClusterSpec::new(vec![LocationSpec::new("site", ["n1"])]);
    spec.pods_per_node = 1;
    spec.pod_mtu = Some(1500);
    if kind == Kind::Weft {
        spec.forwarding = false;
        spec.forward_drop = true;
    }
    spec
}

/// Whether this `weft` knows `flag` (from its `--help`).
fn weft_has_flag(bin_dir: &Path, flag: &str) -> Result<bool> {
    let help = output(std::process::Command::new(bin_dir.join("weft")).arg("--help"))?;
    Ok(help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|w| w == flag))
}

/// Builds the test beds, measures, prints the table. `bin_dir` holds the
/// `weft` binaries.
pub fn run(opts: Options, bin_dir: &Path) -> Result<()> {
    ensure!(
        opts.rounds > 0 && opts.seconds > 0,
        "rounds and seconds must be positive"
    );
    for tool in [
        "iperf3",
        "taskset",
        "timeout",
        "iptables-restore",
        "nft",
        "ss",
    ] {
        ensure!(
            crate::util::have(tool),
            "`{tool}` is missing: run `cargo xtask setup` (nftables: `apt-get install nftables`)"
        );
    }
    let conntrack_tool = crate::util::have("conntrack");
    if !conntrack_tool {
        eprintln!(
            "    `conntrack` (package conntrack) is missing: counting entries from \
             nf_conntrack_count, and not flushing them between runs"
        );
    }
    let masquerade_flag = weft_has_flag(bin_dir, "--masquerade")?;
    let iptables_version = output(std::process::Command::new("iptables").arg("-V"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("iptables -V failed: {e:#}"));

    let mut variants = Vec::new();
    for n in SIZES {
        for kind in [Kind::Iptables, Kind::Nftables, Kind::Weft] {
            variants.push(Variant {
                kind,
                size: Some(n),
            });
        }
    }
    variants.push(Variant {
        kind: Kind::NoNat,
        size: None,
    });
    if masquerade_flag {
        variants.push(Variant {
            kind: Kind::WeftNoMasq,
            size: None,
        });
    } else {
        eprintln!(
            "    this weft has no --masquerade flag: (e) weft without masquerade is left out, \
             and (c) will only work if the agent masquerades anyway"
        );
    }

    crate::testbed::sweep_stale()?;
    step(format!(
        "masquerade: {} test beds (one node n1 with one pod, the external host), one per variant; \
         exemptions for {SIZES:?} nodes",
        variants.len()
    ));
    let clusters = variants
        .iter()
        .map(|v| Cluster::create(&spec(v.kind)))
        .collect::<Result<Vec<_>>>()?;
    let mut beds = Vec::new();
    let mut skipped = Vec::new();
    for (&variant, cluster) in variants.iter().zip(&clusters) {
        step(format!(
            "setting up {} on test bed {}",
            variant.label(),
            cluster.prefix
        ));
        let mut bed = Bed::prepare(variant, cluster, bin_dir, masquerade_flag)?;
        bed.start_servers()?;
        let wait = if variant.kind.weft() && masquerade_flag {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(5)
        };
        let started = Instant::now();
        if let Err(e) = bed.wait_reachable(wait) {
            if variant.kind == Kind::Weft && !masquerade_flag {
                eprintln!(
                    "    {}: {e:#}; as expected from a weft without --masquerade: not measured",
                    variant.label()
                );
                skipped.push((variant, bed.notes.clone()));
                drop(bed);
                cluster.teardown()?;
                continue;
            }
            return Err(e.context(bed.diagnose()));
        }
        if variant.kind.weft() {
            bed.notes.push(format!(
                "first connection to the external host {:.1} s after the topology was in",
                started.elapsed().as_secs_f64()
            ));
        }
        beds.push(bed);
    }
    settle(&beds);
    for bed in &mut beds {
        bed.forwarded_before = bed.forwarded()?;
        bed.cpu_before = bed.agent_cpu();
    }

    let runs: usize = Figure::ALL
        .iter()
        .map(|&f| beds.iter().filter(|b| b.variant.measures(f)).count())
        .sum();
    step(format!(
        "measuring: {} rounds x {runs} runs (variants x figures) x {} s, interleaved (~{:.0} min)",
        opts.rounds,
        opts.seconds,
        (opts.rounds * runs) as f64 * (opts.seconds as f64 + 0.5) / 60.0
    ));
    let started = Instant::now();
    for round in 1..=opts.rounds {
        for (fi, &figure) in Figure::ALL.iter().enumerate() {
            for bed in beds.iter_mut().filter(|b| b.variant.measures(figure)) {
                let v = bed.measure(figure, opts.seconds)?;
                eprintln!(
                    "    round {round}/{} {:<3} {}: {}",
                    opts.rounds,
                    figure.name(),
                    bed.variant.label(),
                    figure.show(v)
                );
                bed.samples[fi].push(v);
                if figure == Figure::Crr {
                    bed.after_connections(conntrack_tool)?;
                }
            }
        }
    }
    let measured = started.elapsed();
    step(format!("measured in {:.0} s", measured.as_secs_f64()));
    for bed in &mut beds {
        bed.forwarded = bed.forwarded()?.saturating_sub(bed.forwarded_before);
        if let (Some((a0, w0)), Some((a1, w1))) = (bed.cpu_before, bed.agent_cpu()) {
            bed.cpu = Some((a1 - a0, w1 - w0));
        }
    }

    print_table(&beds, opts, &iptables_version, measured);
    print_targets(&beds);
    print_notes(&beds, &skipped, measured);
    if let Some(bed) = beds
        .iter()
        .rev()
        .find(|b| b.variant.kind == Kind::Weft && b.mesh.is_some())
    {
        bed.print_counters(bin_dir);
    }
    check(&beds)
}

impl<'a> Bed<'a> {
    fn prepare(
        variant: Variant,
        cluster: &'a Cluster,
        bin_dir: &Path,
        masquerade_flag: bool,
    ) -> Result<Bed<'a>> {
        let node = &cluster.nodes[0];
        let client = &node.pods[0];
        let ext = &cluster.external_host;
        let nodes = mesh_nodes(node.pod_cidr, node.private_ip, variant.size.unwrap_or(1));
        let started = Instant::now();
        let mut notes = Vec::new();
        let mut mesh = None;
        let installed = match variant.kind {
            Kind::Iptables => {
                kilo_routes(node, &nodes, &cluster.dir)?;
                let (rules, returns) = kilo_restore(node.pod_cidr, &nodes);
                let file = cluster.dir.join("kilo.rules");
                std::fs::write(&file, rules)?;
                output(node.cmd("iptables-restore").arg("--noflush").arg(&file))
                    .with_context(|| format!("loading Kilo's rules on {}", node.name))?;
                let listed = node.sh("iptables -t nat -S KILO-NAT | grep -c -- '-j RETURN'")?;
                ensure!(
                    listed.trim() == returns.to_string(),
                    "KILO-NAT has {} RETURNs, expected {returns}",
                    listed.trim()
                );
                format!("{} RETURNs", thousands(returns as f64))
            }
            Kind::Nftables => {
                kilo_routes(node, &nodes, &cluster.dir)?;
                let (ruleset, elements) = nft_ruleset(node.pod_cidr, &nodes);
                let file = cluster.dir.join("masq.nft");
                std::fs::write(&file, ruleset)?;
                output(node.cmd("nft").arg("-f").arg(&file))
                    .with_context(|| format!("loading the nftables ruleset on {}", node.name))?;
                format!("{} set elements", thousands(elements as f64))
            }
            Kind::NoNat => {
                route_back(ext, node)?;
                "none".into()
            }
            Kind::Weft | Kind::WeftNoMasq => {
                if variant.kind == Kind::WeftNoMasq {
                    route_back(ext, node)?;
                }
                let mut flags = vec![
                    "--xdp".to_string(),
                    "false".into(),
                    "--service-cidr".into(),
                    SERVICE_CIDR.into(),
                ];
                if masquerade_flag {
                    flags.push("--masquerade".into());
                    flags.push((variant.kind == Kind::Weft).to_string());
                }
                let m = start_agent(cluster, bin_dir, flags, &nodes, &mut notes)?;
                mesh = Some(m);
                if variant.kind == Kind::Weft {
                    format!("{} exemptions", thousands(exemptions(&nodes).len() as f64))
                } else {
                    "none".into()
                }
            }
        };
        if !variant.kind.weft() {
            notes.push(format!(
                "set up in {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(Bed {
            variant,
            cluster,
            node,
            client,
            ext,
            mesh,
            installed,
            notes,
            samples: Default::default(),
            sources: BTreeMap::new(),
            conntrack: None,
            forwarded_before: 0,
            forwarded: 0,
            cpu_before: None,
            cpu: None,
        })
    }

    /// iperf3 and the rr server on the external host, on CPU 0.
    fn start_servers(&self) -> Result<()> {
        start_servers_in(self.ext.namespace())
    }

    /// Waits until a short connection run from the pod to the external host
    /// succeeds (TCP: masquerade need not translate ICMP for this).
    fn wait_reachable(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(m) = &self.mesh {
                m.check_running()?;
            }
            let out = self
                .client
                .cmd("timeout")
                .arg("3")
                .arg(own_exe())
                .args(["bench-client", "--mode", "crr", "--addr"])
                .arg(format!("{EXTERNAL_HOST_IP}:{}", rr::DEFAULT_PORT))
                .args(["--seconds", "0.2"])
                .stdin(Stdio::null())
                .output()
                .context("running bench-client")?;
            if out.status.success() {
                return Ok(());
            }
            let last = format!(
                "{} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if start.elapsed() > timeout {
                bail!(
                    "{}: the pod does not reach the external host {EXTERNAL_HOST_IP}:{} within {timeout:?} ({last})",
                    self.variant.label(),
                    rr::DEFAULT_PORT
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// What to look at when a bed does not work: the agent's log tail.
    fn diagnose(&self) -> String {
        match &self.mesh {
            Some(m) => format!(
                "weft's log on {}:\n{}",
                self.node.name,
                crate::mesh::tail(&m.agent(&self.node.name).read_log(), 30)
            ),
            None => format!("test bed {}", self.cluster.prefix),
        }
    }

    /// One figure, retried once.
    fn measure(&self, figure: Figure, seconds: u64) -> Result<f64> {
        match self.measure_once(figure, seconds) {
            Ok(v) => Ok(v),
            Err(e) => {
                eprintln!(
                    "    {} {}: {e:#}; retrying once",
                    self.variant.label(),
                    figure.name()
                );
                std::thread::sleep(Duration::from_secs(1));
                self.measure_once(figure, seconds)
                    .with_context(|| format!("{} {}", self.variant.label(), figure.name()))
            }
        }
    }

    fn measure_once(&self, figure: Figure, seconds: u64) -> Result<f64> {
        if let Some(m) = &self.mesh {
            m.check_running()?;
        }
        match figure {
            Figure::Tcp => iperf3(self.client, EXTERNAL_HOST_IP, seconds),
            Figure::Crr => request_response(self.client, EXTERNAL_HOST_IP, Mode::Crr, seconds),
        }
    }

    /// After a connection run: who the external host saw, the node's
    /// conntrack entries (then flushed).
    fn after_connections(&mut self, conntrack_tool: bool) -> Result<()> {
        let tw = self.ext.sh(&format!(
            "ss -Htn state time-wait '( sport = :{} )'",
            rr::DEFAULT_PORT
        ))?;
        for line in tw.lines() {
            let Some(peer) = line.split_whitespace().filter(|f| f.contains(':')).nth(1) else {
                continue;
            };
            let addr = peer.rsplit_once(':').map_or(peer, |(a, _)| a);
            *self.sources.entry(addr.to_string()).or_default() += 1;
        }
        let n = if conntrack_tool {
            let out = self.node.sh(&format!(
                "conntrack -L -p tcp --orig-dst {EXTERNAL_HOST_IP} 2>/dev/null | wc -l"
            ))?;
            let n = out.trim().parse::<u64>().unwrap_or(0);
            if n > 0 {
                self.node.sh("conntrack -F >/dev/null 2>&1 || true")?;
            }
            n
        } else {
            let out = self
                .node
                .sh("cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0")?;
            out.trim().parse::<u64>().unwrap_or(0)
        };
        self.conntrack = Some(self.conntrack.unwrap_or(0).max(n));
        Ok(())
    }

    /// IpForwDatagrams of the node.
    fn forwarded(&self) -> Result<u64> {
        let snmp = output(self.node.cmd("cat").arg("/proc/net/snmp"))?;
        snmp_field(&snmp, "Ip", "ForwDatagrams")
            .with_context(|| format!("IpForwDatagrams in {}'s /proc/net/snmp", self.node.name))
    }

    /// CPU seconds used so far by the agent and by wireguard-go.
    fn agent_cpu(&self) -> Option<(f64, f64)> {
        let m = self.mesh.as_ref()?;
        let name = &self.node.name;
        let agent = cpu_seconds(m.agent(name).pid)?;
        let wg = m
            .pids_named(name, "wireguard-go")
            .ok()?
            .into_iter()
            .filter_map(cpu_seconds)
            .sum();
        Some((agent, wg))
    }

    /// `weftctl bpf counters` on the node, for the record.
    fn print_counters(&self, bin_dir: &Path) {
        match output(
            self.node
                .cmd(bin_dir.join("weftctl"))
                .args(["bpf", "counters"]),
        ) {
            Ok(c) => {
                println!(
                    "weftctl bpf counters on {} ({}):",
                    self.node.name,
                    self.variant.label()
                );
                println!("{c}");
            }
            Err(e) => eprintln!("    weftctl bpf counters: {e:#}"),
        }
    }
}

/// Waits (at most [`SETTLE_TIMEOUT`]) until the agents and wireguard-go of
/// all beds together use less than [`SETTLE_CPU`] of a CPU for three 2 s
/// windows in a row: after a start
/// with thousands of peers, wireguard-go tries to reach each of them for
/// 90 s, and the agents finish their first reconcile.
fn settle(beds: &[Bed]) {
    let total = || -> f64 {
        beds.iter()
            .filter_map(|b| b.agent_cpu())
            .map(|(a, w)| a + w)
            .sum()
    };
    if !beds.iter().any(|b| b.mesh.is_some()) {
        return;
    }
    let start = Instant::now();
    let window = Duration::from_secs(2);
    let mut quiet = 0;
    loop {
        let before = total();
        std::thread::sleep(window);
        let rate = (total() - before) / window.as_secs_f64();
        quiet = if rate < SETTLE_CPU { quiet + 1 } else { 0 };
        if quiet == 3 {
            step(format!(
                "agents and wireguard-go settled after {:.0} s ({:.1}% of a CPU)",
                start.elapsed().as_secs_f64(),
                rate * 100.0
            ));
            return;
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            eprintln!(
                "    the agents and wireguard-go still use {:.0}% of a CPU after {SETTLE_TIMEOUT:?}: measuring anyway",
                rate * 100.0
            );
            return;
        }
        eprintln!(
            "    waiting for the agents and wireguard-go to settle: {:.0}% of a CPU",
            rate * 100.0
        );
    }
}

/// The external host routes the pod CIDR back via the node's public address.
fn route_back(ext: &Host, node: &Node) -> Result<()> {
    ext.sh(&format!(
        "ip route add {} via {} dev {POD_NIC}",
        node.pod_cidr, node.public_ip
    ))
    .map(drop)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        output(std::process::Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Writes the mesh (the test bed's node and `nodes[1..]` as node files),
/// starts the agent and waits until it has the whole mesh in: every node
/// ready, a WireGuard peer per other node.
fn start_agent<'a>(
    cluster: &'a Cluster,
    bin_dir: &Path,
    flags: Vec<String>,
    nodes: &[MeshNode],
    notes: &mut Vec<String>,
) -> Result<Mesh<'a>> {
    let node = &cluster.nodes[0];
    let opts = MeshOptions {
        settings: Vec::new(),
        agent_flags: flags,
        // Nothing changes while measuring: a full resync of a large mesh
        // costs the agent seconds of CPU, which would land in the other
        // variants' figures.
        resync: "60m".into(),
        leader_health_timeout: "100s".into(),
    };
    let mut m = Mesh::new(cluster, bin_dir, opts)?;
    // The other nodes never answer WireGuard: with the health keepalive
    // (25 s) wireguard-go would retry a handshake with each of them every
    // 5 s, for ever (a quarter of a CPU at 5,000 nodes); a keepalive of 18 h
    // leaves one round of attempts after the start (90 s, see `settle`).
    m.write_node_file(
        &node.name,
        &crate::mesh::node_yaml(node, &[("weft.dev/persistent-keepalive", "65535")]),
    )?;
    let last_seen = unix_now() + 86_400;
    for (i, mn) in nodes.iter().enumerate().skip(1) {
        let (name, yaml) = fake_node_yaml(i, mn, last_seen);
        std::fs::write(m.node_file(&name), yaml)?;
    }
    let n = nodes.len();
    let started = Instant::now();
    m.start_all()?;
    let name = node.name.clone();
    let mut shown = Instant::now();
    loop {
        m.check_running()?;
        let ready = m.metric(&name, "weft_ready_nodes ");
        let peers = m.metric(&name, "weft_wireguard_peers ");
        if ready == Some(n as f64) && peers == Some((n - 1) as f64) {
            break;
        }
        ensure!(
            started.elapsed() < AGENT_READY_TIMEOUT,
            "weft on {name} did not take in {n} nodes within {AGENT_READY_TIMEOUT:?} \
             (ready nodes {ready:?}, WireGuard peers {peers:?}):\n{}",
            crate::mesh::tail(&m.agent(&name).read_log(), 30)
        );
        if shown.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "    {:.0} s: ready nodes {ready:?}, WireGuard peers {peers:?} of {n}",
                started.elapsed().as_secs_f64()
            );
            shown = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = started.elapsed().as_secs_f64();
    let what = if n == 1 {
        "the agent was ready".to_string()
    } else {
        format!(
            "the agent had {n} nodes ready and {} WireGuard peers",
            n - 1
        )
    };
    eprintln!("    {what} {took:.1} s after its start");
    notes.push(format!("{what} {took:.1} s after its start"));
    if let Some(e) = m.metric(&name, "weft_errors_total") {
        notes.push(format!("weft_errors_total at start: {e}"));
    }
    if let Ok(dump) = output(node.cmd("bpftool").args([
        "-j",
        "map",
        "dump",
        "pinned",
        "/sys/fs/bpf/weft/WEFT_MASQ_EXEMPT",
    ])) && let Ok(serde_json::Value::Array(entries)) = serde_json::from_str(&dump)
    {
        notes.push(format!(
            "WEFT_MASQ_EXEMPT holds {} prefixes (the baselines' set: {})",
            thousands(entries.len() as f64),
            thousands(exemptions(nodes).len() as f64)
        ));
    }
    Ok(m)
}

fn cell(figure: Figure, s: &Summary) -> String {
    match figure {
        Figure::Tcp => format!("{:.2} [{:.2}–{:.2}]", s.median, s.min, s.max),
        Figure::Crr => format!(
            "{} [{}–{}]",
            thousands(s.median),
            thousands(s.min),
            thousands(s.max)
        ),
    }
}

/// The median of `figure` for `kind` at `size`.
fn median(beds: &[Bed], kind: Kind, size: Option<usize>, figure: Figure) -> Option<f64> {
    let fi = Figure::ALL.iter().position(|&f| f == figure)?;
    let bed = beds
        .iter()
        .find(|b| b.variant.kind == kind && b.variant.size == size)?;
    summarize(&bed.samples[fi]).map(|s| s.median)
}

/// The baseline of a bed: (a) at its size, (a) at the smallest size for the
/// variants without exemptions.
fn baseline(beds: &[Bed], bed: &Bed, figure: Figure) -> Option<f64> {
    let size = bed.variant.size.or(Some(SIZES[0]));
    median(beds, Kind::Iptables, size, figure).filter(|&b| b > 0.0)
}

fn print_table(beds: &[Bed], opts: Options, iptables: &str, measured: Duration) {
    let mut rows = vec![vec![
        "variant".to_string(),
        "installed".into(),
        "Gbit/s".into(),
        "×".into(),
        "CRR/s".into(),
        "×".into(),
        "source at ext".into(),
        "conntrack".into(),
        "IpForwDatagrams".into(),
    ]];
    for bed in beds {
        let mut row = vec![bed.variant.label(), bed.installed.clone()];
        for (fi, &figure) in Figure::ALL.iter().enumerate() {
            match summarize(&bed.samples[fi]) {
                Some(s) => {
                    row.push(cell(figure, &s));
                    row.push(match baseline(beds, bed, figure) {
                        Some(b) => format!("{:.2}", s.median / b),
                        None => "-".into(),
                    });
                }
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        row.push(if bed.sources.is_empty() {
            "-".into()
        } else {
            bed.sources.keys().cloned().collect::<Vec<_>>().join(" ")
        });
        row.push(bed.conntrack.map_or("-".into(), |c| thousands(c as f64)));
        row.push(thousands(bed.forwarded as f64));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    println!();
    println!(
        "Masquerade, pod → external host {EXTERNAL_HOST_IP} through the node (one node, one pod; \
         @N: exemptions for a mesh of N nodes, each its own segment):"
    );
    println!(
        "median [min–max] of {} round(s) x {} s, variants interleaved, measured in {:.0} s; \
         × = median / median of (a) at the same N ((d), (e): of (a) @{});",
        opts.rounds,
        opts.seconds,
        measured.as_secs_f64(),
        SIZES[0]
    );
    println!(
        "client and server pinned to CPU 0; Gbit/s: one TCP stream, at the smallest and largest N \
         only (netfilter looks the exemptions up once per connection); CRR = connect, 1 byte each \
         way, the server closes; source at ext: the addresses the external host's server saw;"
    );
    println!(
        "conntrack: the node's entries towards the external host right after a connection run \
         (the most of any run); IpForwDatagrams: forwarded by the node's IP stack over all runs; {iptables}."
    );
    println!();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                let pad = w - s.chars().count();
                if c <= 1 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let seps: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c <= 1 {
                        "-".repeat(w + 2)
                    } else {
                        format!("{}:", "-".repeat(w + 1))
                    }
                })
                .collect();
            println!("|{}|", seps.join("|"));
        }
    }
    println!();
}

/// The targets for the connection rate, one line each.
fn print_targets(beds: &[Bed]) {
    let crr = |kind, size| median(beds, kind, size, Figure::Crr);
    let tcp = |kind, size| median(beds, kind, size, Figure::Tcp);
    let line = |what: String, ratio: Option<f64>, min: f64, target: &str, extra: String| {
        let (r, verdict) = match ratio {
            Some(r) => (format!("{r:.2}×"), if r >= min { "met" } else { "NOT met" }),
            None => ("n/a".to_string(), "not measured"),
        };
        println!("{what}: {r} (target {target}): {verdict}{extra}");
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    println!("Targets (connections per second, eBPF masquerade (c) against the others):");
    let (small, large) = (SIZES[0], SIZES[SIZES.len() - 1]);
    let r = ratio(
        crr(Kind::Weft, Some(small)),
        crr(Kind::Iptables, Some(small)),
    );
    line(
        format!("  eBPF vs iptables MASQUERADE @{small}"),
        r,
        1.25,
        "≥ 1.25×",
        String::new(),
    );
    let r = ratio(
        crr(Kind::Weft, Some(large)),
        crr(Kind::Iptables, Some(large)),
    );
    line(
        format!("  eBPF vs Kilo's chain @{large}"),
        r,
        5.0,
        "≥ 5×",
        String::new(),
    );
    for n in SIZES {
        let r = ratio(crr(Kind::Weft, Some(n)), crr(Kind::Nftables, Some(n)));
        line(
            format!("  eBPF vs nftables set @{n}"),
            r,
            1.35,
            "≥ 1.35×",
            String::new(),
        );
    }
    for (kind, what) in [
        (Kind::NoNat, "no NAT (d)"),
        (Kind::WeftNoMasq, "weft without masquerade (e)"),
    ] {
        if !beds.iter().any(|b| b.variant.kind == kind) {
            continue;
        }
        for n in SIZES {
            let r = ratio(crr(Kind::Weft, Some(n)), crr(kind, None));
            let t = ratio(tcp(Kind::Weft, Some(n)), tcp(kind, None));
            let t = t.map_or(String::new(), |t| format!("; throughput {t:.2}×"));
            line(
                format!("  eBPF vs {what} @{n}"),
                r,
                0.95,
                "≥ 0.95×, within 5%",
                t,
            );
        }
    }
    println!();
}

fn print_notes(beds: &[Bed], skipped: &[(Variant, Vec<String>)], measured: Duration) {
    println!("Set-up:");
    for bed in beds {
        let mut notes = bed.notes.clone();
        if let Some((a, w)) = bed.cpu {
            notes.push(format!(
                "CPU while measuring ({:.0} s): agent {a:.1} s, wireguard-go {w:.1} s",
                measured.as_secs_f64()
            ));
        }
        println!("  {}: {}", bed.variant.label(), notes.join("; "));
    }
    for (v, notes) in skipped {
        let mut notes = notes.clone();
        notes.push("not measured: the pod does not reach the external host".into());
        println!("  {}: {}", v.label(), notes.join("; "));
    }
    println!();
}

/// Who masquerades: the NAT variants show the external host the node's
/// address, the others the pod's; conntrack sees the flows in the kernel
/// baselines and never with weft; weft's node forwards nothing in its IP stack.
fn check(beds: &[Bed]) -> Result<()> {
    let mut problems = Vec::new();
    for bed in beds {
        let label = bed.variant.label();
        let want = if bed.variant.kind.masquerades() {
            bed.node.public_ip
        } else {
            bed.client.ip
        };
        let seen: Vec<&String> = bed.sources.keys().collect();
        if seen.len() != 1 || seen[0] != &want.to_string() {
            problems.push(format!(
                "{label}: the external host saw connections from {seen:?}, expected only {want}"
            ));
        }
        let ct = bed.conntrack.unwrap_or(0);
        match bed.variant.kind {
            Kind::Iptables | Kind::Nftables if ct == 0 => problems.push(format!(
                "{label}: no conntrack entry on the node: the kernel did not track the flows"
            )),
            Kind::Weft | Kind::WeftNoMasq if ct > 0 => problems.push(format!(
                "{label}: {ct} conntrack entries on the node: the flows went through netfilter"
            )),
            _ => {}
        }
        if bed.variant.kind == Kind::Weft && bed.forwarded > EBPF_FORWARD_TOLERANCE {
            problems.push(format!(
                "{label}: the node's IP stack forwarded {} datagrams (ip_forward is 0)",
                bed.forwarded
            ));
        }
    }
    if problems.is_empty() {
        println!(
            "check: the external host saw the node's address from the NAT variants and the pod's \
             from the others; conntrack tracked the kernel baselines' flows and none of weft's; \
             weft's node forwarded ≤ {EBPF_FORWARD_TOLERANCE} datagrams in its IP stack: OK"
        );
        Ok(())
    } else {
        bail!("masquerade check failed:\n  {}", problems.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kilo_chain_has_four_returns_per_node() {
        let cidr = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let nodes = mesh_nodes(cidr("10.42.0.0/24"), Ipv4Addr::new(192, 168, 1, 10), 5000);
        assert_eq!(nodes[0].wireguard_ip, Ipv4Addr::new(10, 4, 0, 1));
        assert_eq!(nodes[4999].pod_cidr, cidr("10.83.134.0/24"));
        assert_eq!(nodes[4999].private_ip, Ipv4Addr::new(172, 16, 19, 135));
        assert_eq!(nodes[4999].wireguard_ip, Ipv4Addr::new(10, 4, 19, 136));
        let (rules, returns) = kilo_restore(nodes[0].pod_cidr, &nodes);
        assert_eq!(returns, 20_001);
        assert_eq!(rules.matches("-j RETURN").count(), returns);
        assert!(rules.contains("-A POSTROUTING -s 10.42.0.0/24 "));
        let (ruleset, elements) = nft_ruleset(nodes[0].pod_cidr, &nodes);
        assert_eq!(elements, 15_001);
        assert!(ruleset.contains("ip saddr 10.42.0.0/24 ip daddr != @exempt masquerade"));
        assert!(ruleset.contains("{ 10.42.0.0/24, 192.168.1.10, 10.4.0.1, 10.64.0.0/24, "));
        let set = exemptions(&nodes);
        assert_eq!(set.len(), 15_001);
        let unique: std::collections::BTreeSet<&String> = set.iter().collect();
        assert_eq!(unique.len(), set.len());
        // None of them covers the external host or the test bed's public net.
        for e in &set {
            let net = cidr(e);
            assert!(!net.contains(&EXTERNAL_HOST_IP), "{e}");
        }
    }
}
