//! The datapath bench: pod-to-pod traffic between the two nodes of one
//! location (over the private LAN "NIC", no WireGuard, so that only the
//! forwarding path differs), for five variants measured in the same
//! invocation, interleaved round by round (A B C D E, A B C D E, ...), and
//! printed as medians with min–max and as ratios to the Kilo-like baseline.
//!
//! Every variant has its own test bed, all built up front: one location
//! `lan`, nodes `n1` and `n2`, one pod each (MTU 1500). The client runs in
//! n1's pod, the servers (iperf3 and [`super::rr`]) in n2's, every one of
//! them pinned to CPU 0 (see BENCHMARKING.md: cross-CPU wake-ups would
//! dominate). The variants:
//!
//! - (a) Kilo-like: kernel routing (`ip_forward=1`, a route to the other
//!   node's pod CIDR via its private IP) and the iptables rules Kilo
//!   installs (FORWARD accepts for the cluster pod CIDR, a NAT chain with
//!   RETURNs then MASQUERADE); the nat table switches conntrack on.
//! - (b) plain kernel routing, no rules (conntrack off).
//! - (c) weft's eBPF datapath: an agent per node, `encapsulate: never`,
//!   default flags (XDP filter on the NIC).
//! - (d) the same with `--xdp false` ((c) runs with `--xdp true`; the default
//!   `auto` leaves XDP off on veth NICs because of what (c) costs).
//! - (e) the ceiling: the two pods joined by one direct veth pair.
//!
//! Figures: single-stream TCP throughput (iperf3 `-J`), request/response
//! rate on one connection, connection rate (connect, 1 byte each way, the
//! server closes). Alongside, `IpForwDatagrams` of both nodes (from
//! `/proc/net/snmp` in their namespaces) over the whole measurement: it
//! must grow in (a)/(b), where the kernel forwards, and stay ~0 in (c)/(d),
//! where packets never enter the nodes' IP stack.

use anyhow::{Context, Result, bail, ensure};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::rr::{self, Mode};
use crate::mesh::{Mesh, MeshOptions};
use crate::testbed::{Cluster, ClusterSpec, LocationSpec, Node, PRIVATE_NIC, Pod, cluster_cidr};
use crate::util::{output, step};

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
}

/// iperf3's port in the server pod.
const IPERF_PORT: u16 = 5201;
/// The service CIDR exempted from masquerading in the Kilo-like rules.
const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The location's WireGuard IP (`--subnet` 10.4.0.0/16, one segment),
/// exempted from masquerading in the Kilo-like rules.
const WIREGUARD_IP: &str = "10.4.0.1/32";
/// The direct veth of the ceiling variant: client and server ends (/30).
const CEILING_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CEILING_SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// At most this many datagrams may be forwarded by a node's IP stack over
/// all the eBPF runs (millions of packets) for "never entered the stack".
const EBPF_FORWARD_TOLERANCE: u64 = 100;
/// The baselines forward at least this many (a quick run forwards ~10⁵).
const STACK_FORWARD_MINIMUM: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    KiloLike,
    Plain,
    Weft,
    WeftNoXdp,
    Ceiling,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::KiloLike,
        Variant::Plain,
        Variant::Weft,
        Variant::WeftNoXdp,
        Variant::Ceiling,
    ];

    fn letter(self) -> char {
        match self {
            Variant::KiloLike => 'a',
            Variant::Plain => 'b',
            Variant::Weft => 'c',
            Variant::WeftNoXdp => 'd',
            Variant::Ceiling => 'e',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::KiloLike => "Kilo-like: routing + iptables, conntrack",
            Variant::Plain => "plain kernel routing, no rules",
            Variant::Weft => "weft eBPF, --xdp true",
            Variant::WeftNoXdp => "weft eBPF, --xdp false",
            Variant::Ceiling => "ceiling: direct veth",
        }
    }

    fn label(self) -> String {
        format!("({}) {}", self.letter(), self.name())
    }

    /// Whether the kernel's IP stack forwards on the nodes (`None`: the
    /// nodes are not on the path).
    fn stack_forwards(self) -> Option<bool> {
        match self {
            Variant::KiloLike | Variant::Plain => Some(true),
            Variant::Weft | Variant::WeftNoXdp => Some(false),
            Variant::Ceiling => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Figure {
    Tcp,
    Rr,
    Crr,
}

impl Figure {
    const ALL: [Figure; 3] = [Figure::Tcp, Figure::Rr, Figure::Crr];

    fn name(self) -> &'static str {
        match self {
            Figure::Tcp => "TCP",
            Figure::Rr => "RR",
            Figure::Crr => "CRR",
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Figure::Tcp => format!("{v:.2} Gbit/s"),
            Figure::Rr | Figure::Crr => format!("{} /s", thousands(v)),
        }
    }
}

/// One variant's test bed, ready to measure.
struct Bed<'a> {
    variant: Variant,
    cluster: &'a Cluster,
    client: &'a Pod,
    server: &'a Pod,
    /// The server pod's address as the client reaches it.
    target: Ipv4Addr,
    /// The agents of the weft variants (kept alive while measuring).
    _mesh: Option<Mesh<'a>>,
    /// IpForwDatagrams summed over the nodes before the first round.
    forwarded_before: u64,
    /// Samples per figure, in `Figure::ALL` order.
    samples: [Vec<f64>; 3],
}

fn spec() -> ClusterSpec {
    let mut spec = ClusterSpec::new(vec![LocationSpec::new("lan", ["n1", "n2"])]);
    spec.pods_per_node = 1;
    spec.pod_mtu = Some(1500);
    spec
}

/// Builds the test beds, measures, prints the table. `bin_dir` holds the
/// `weft` binaries.
pub fn run(opts: Options, bin_dir: &Path) -> Result<()> {
    ensure!(
        opts.rounds > 0 && opts.seconds > 0,
        "rounds and seconds must be positive"
    );
    for tool in ["iperf3", "taskset", "iptables", "ss"] {
        ensure!(
            crate::util::have(tool),
            "`{tool}` is missing: run `cargo xtask setup`"
        );
    }
    crate::testbed::sweep_stale()?;
    step(format!(
        "datapath: {} test beds (one location, nodes n1 n2, one pod each), one per variant",
        Variant::ALL.len()
    ));
    let clusters = Variant::ALL
        .iter()
        .map(|_| Cluster::create(&spec()))
        .collect::<Result<Vec<_>>>()?;
    let mut beds = Vec::new();
    for (&variant, cluster) in Variant::ALL.iter().zip(&clusters) {
        step(format!(
            "setting up {} on test bed {}",
            variant.label(),
            cluster.prefix
        ));
        beds.push(Bed::prepare(variant, cluster, bin_dir)?);
    }
    for bed in &mut beds {
        bed.start_servers()?;
        bed.forwarded_before = bed.forwarded()?.unwrap_or(0);
    }

    let total = opts.rounds * Figure::ALL.len() * beds.len();
    step(format!(
        "measuring: {} rounds x {} figures x {} variants x {} s, interleaved (~{:.0} min)",
        opts.rounds,
        Figure::ALL.len(),
        beds.len(),
        opts.seconds,
        (total as f64 * (opts.seconds as f64 + 0.7)) / 60.0
    ));
    let started = Instant::now();
    for round in 1..=opts.rounds {
        for (fi, &figure) in Figure::ALL.iter().enumerate() {
            for bed in &mut beds {
                let v = bed.measure(figure, opts.seconds)?;
                eprintln!(
                    "    round {round}/{} {:<3} {}: {}",
                    opts.rounds,
                    figure.name(),
                    bed.variant.label(),
                    figure.show(v)
                );
                bed.samples[fi].push(v);
            }
        }
    }
    step(format!(
        "measured in {:.0} s",
        started.elapsed().as_secs_f64()
    ));

    let mut forwarded = Vec::new();
    for bed in &beds {
        let after = bed.forwarded()?;
        let conntrack = bed.conntrack_entries()?;
        forwarded.push((
            after.map(|a| a.saturating_sub(bed.forwarded_before)),
            conntrack,
        ));
    }
    print_table(&beds, &forwarded, opts);
    check_forwarding(&beds, &forwarded)
}

impl<'a> Bed<'a> {
    fn prepare(variant: Variant, cluster: &'a Cluster, bin_dir: &Path) -> Result<Bed<'a>> {
        let client = &cluster.nodes[0].pods[0];
        let server = &cluster.nodes[1].pods[0];
        let mut target = server.ip;
        let mut mesh = None;
        match variant {
            Variant::KiloLike => {
                pod_routes(cluster)?;
                kilo_rules(cluster)?;
            }
            Variant::Plain => pod_routes(cluster)?,
            Variant::Weft | Variant::WeftNoXdp => {
                let xdp = variant == Variant::Weft;
                let opts = MeshOptions {
                    settings: vec!["encapsulate: never".into()],
                    agent_flags: if xdp {
                        vec!["--xdp".into(), "true".into()]
                    } else {
                        vec!["--xdp".into(), "false".into()]
                    },
                    // Nothing changes while measuring: rare resyncs, less noise.
                    resync: "30s".into(),
                    ..Default::default()
                };
                let mut m = Mesh::new(cluster, bin_dir, opts)?;
                m.start_all()?;
                m.wait_full_connectivity(Duration::from_secs(90))?;
                for node in &cluster.nodes {
                    wait_xdp(node, xdp)?;
                }
                mesh = Some(m);
            }
            Variant::Ceiling => {
                direct_veth(client, server)?;
                target = CEILING_SERVER;
            }
        }
        Ok(Bed {
            variant,
            cluster,
            client,
            server,
            target,
            _mesh: mesh,
            forwarded_before: 0,
            samples: Default::default(),
        })
    }

    /// iperf3 and the request/response server in the server pod, on CPU 0;
    /// then a ping from the client.
    fn start_servers(&self) -> Result<()> {
        start_servers_in(self.server.namespace())?;
        self.client.ping(self.target, 3).with_context(|| {
            format!(
                "{}: the client pod cannot reach the server",
                self.variant.label()
            )
        })
    }

    /// One figure, retried once (a run can trip over the previous one's
    /// leftovers, e.g. iperf3's "the server is busy").
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
        match figure {
            Figure::Tcp => iperf3(self.client, self.target, seconds),
            Figure::Rr => request_response(self.client, self.target, Mode::Rr, seconds),
            Figure::Crr => request_response(self.client, self.target, Mode::Crr, seconds),
        }
    }

    /// IpForwDatagrams summed over the nodes; `None` for the ceiling, whose
    /// traffic does not cross them.
    fn forwarded(&self) -> Result<Option<u64>> {
        if self.variant.stack_forwards().is_none() {
            return Ok(None);
        }
        let mut sum = 0;
        for node in &self.cluster.nodes {
            let snmp = output(node.cmd("cat").arg("/proc/net/snmp"))?;
            sum += snmp_field(&snmp, "Ip", "ForwDatagrams")
                .with_context(|| format!("IpForwDatagrams in {}'s /proc/net/snmp", node.name))?;
        }
        Ok(Some(sum))
    }

    /// Conntrack entries summed over the nodes (0 where conntrack is off).
    fn conntrack_entries(&self) -> Result<Option<u64>> {
        if self.variant.stack_forwards().is_none() {
            return Ok(None);
        }
        let mut sum = 0;
        for node in &self.cluster.nodes {
            let n =
                node.sh("cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0")?;
            sum += n.trim().parse::<u64>().unwrap_or(0);
        }
        Ok(Some(sum))
    }
}

/// The path of this very executable, valid even if cargo rebuilds it
/// meanwhile, and from inside the test bed's namespaces (same /proc).
pub(super) fn own_exe() -> String {
    format!("/proc/{}/exe", std::process::id())
}

/// Every node routes the other nodes' pod CIDRs via their private IPs.
fn pod_routes(cluster: &Cluster) -> Result<()> {
    for node in &cluster.nodes {
        for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
            node.sh(&format!(
                "ip route add {} via {} dev {PRIVATE_NIC}",
                other.pod_cidr, other.private_ip
            ))?;
        }
    }
    Ok(())
}

/// What Kilo installs on a node (see BENCHMARKING.md): FORWARD accepts for
/// the cluster's pod CIDR, and a NAT chain jumped to from POSTROUTING for
/// the node's pod CIDR that RETURNs for every pod CIDR, the WireGuard IP
/// and the service CIDR, then masquerades. The nat table turns conntrack on.
fn kilo_rules(cluster: &Cluster) -> Result<()> {
    let all = cluster_cidr();
    let mut exempt: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.pod_cidr.to_string())
        .collect();
    exempt.push(WIREGUARD_IP.into());
    exempt.push(SERVICE_CIDR.into());
    for node in &cluster.nodes {
        let mut script = vec![
            format!(
                "iptables -w -A FORWARD -s {all} -m comment --comment 'Kilo: forward packets from the pod subnet' -j ACCEPT"
            ),
            format!(
                "iptables -w -A FORWARD -d {all} -m comment --comment 'Kilo: forward packets to the pod subnet' -j ACCEPT"
            ),
            "iptables -w -t nat -N KILO-NAT".into(),
            format!(
                "iptables -w -t nat -A POSTROUTING -s {} -m comment --comment 'Kilo: jump to KILO-NAT chain' -j KILO-NAT",
                node.pod_cidr
            ),
        ];
        for e in &exempt {
            script.push(format!("iptables -w -t nat -A KILO-NAT -d {e} -m comment --comment 'Kilo: do not NAT packets destined for known IPs' -j RETURN"));
        }
        script.push("iptables -w -t nat -A KILO-NAT -m comment --comment 'Kilo: NAT remaining packets' -j MASQUERADE".into());
        node.sh(&script.join(" && "))
            .with_context(|| format!("installing the Kilo-like rules on {}", node.name))?;
    }
    Ok(())
}

/// The ceiling: a veth pair straight from the client pod to the server pod.
fn direct_veth(client: &Pod, server: &Pod) -> Result<()> {
    let ip = |args: &[&str]| output(std::process::Command::new("ip").args(args)).map(drop);
    ip(&[
        "-n",
        &client.netns,
        "link",
        "add",
        "wd0",
        "type",
        "veth",
        "peer",
        "name",
        "wd0",
        "netns",
        &server.netns,
    ])?;
    for (pod, addr) in [(client, CEILING_CLIENT), (server, CEILING_SERVER)] {
        ip(&[
            "-n",
            &pod.netns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "wd0",
        ])?;
        ip(&["-n", &pod.netns, "link", "set", "wd0", "up"])?;
    }
    Ok(())
}

/// Waits until the node's NIC has an XDP program (or, with `want` false,
/// checks that it has none).
fn wait_xdp(node: &Node, want: bool) -> Result<()> {
    let attached = || {
        node.sh(&format!("ip -d link show dev {PRIVATE_NIC}"))
            .is_ok_and(|o| o.contains("prog/xdp"))
    };
    if want {
        crate::mesh::wait(
            Duration::from_secs(30),
            &format!("the XDP program on {}'s {PRIVATE_NIC}", node.name),
            attached,
        )
    } else {
        ensure!(
            !attached(),
            "{}: an XDP program is attached to {PRIVATE_NIC} despite --xdp false",
            node.name
        );
        Ok(())
    }
}

/// Single-stream TCP throughput in Gbit/s, client and server on CPU 0.
pub(super) fn iperf3(client: &Pod, target: Ipv4Addr, seconds: u64) -> Result<f64> {
    let out = client
        .cmd("taskset")
        .args(["-c", "0", "iperf3", "-J", "-c"])
        .arg(target.to_string())
        .args(["-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running iperf3")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = json.get("error") {
        bail!("iperf3: {e}");
    }
    ensure!(out.status.success(), "iperf3 failed ({})", out.status);
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// Transactions per second of [`rr`]'s client, client and server on CPU 0.
pub(super) fn request_response(
    client: &Pod,
    target: Ipv4Addr,
    mode: Mode,
    seconds: u64,
) -> Result<f64> {
    let out = output(
        client
            .cmd("taskset")
            .args(["-c", "0"])
            .arg(own_exe())
            .args(["bench-client", "--mode", mode.name(), "--addr"])
            .arg(format!("{target}:{}", rr::DEFAULT_PORT))
            .args(["--seconds", &seconds.to_string()])
            .stdin(Stdio::null()),
    )?;
    let json: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("bench-client printed {out:?}"))?;
    json["per_second"]
        .as_f64()
        .with_context(|| format!("bench-client printed {out:?}"))
}

/// A counter of `/proc/net/snmp` (a header line `Ip: Forwarding ...`
/// followed by a value line `Ip: 1 ...`).
pub(super) fn snmp_field(snmp: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Median, min, max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Summary {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

pub(super) fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// `47962.4` → `47,962`.
pub(super) fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cell(figure: Figure, s: &Summary) -> String {
    match figure {
        Figure::Tcp => format!("{:.2} [{:.2}–{:.2}]", s.median, s.min, s.max),
        Figure::Rr | Figure::Crr => format!(
            "{} [{}–{}]",
            thousands(s.median),
            thousands(s.min),
            thousands(s.max)
        ),
    }
}

type Forwarding = (Option<u64>, Option<u64>);

fn print_table(beds: &[Bed], forwarded: &[Forwarding], opts: Options) {
    let baseline: Vec<Option<Summary>> = beds[0].samples.iter().map(|s| summarize(s)).collect();
    let mut rows = vec![vec![
        "variant".to_string(),
        "Gbit/s".into(),
        "×".into(),
        "RR/s".into(),
        "×".into(),
        "CRR/s".into(),
        "×".into(),
        "IpForwDatagrams".into(),
        "conntrack".into(),
    ]];
    for (bed, (fwd, ct)) in beds.iter().zip(forwarded) {
        let mut row = vec![bed.variant.label()];
        for (fi, &figure) in Figure::ALL.iter().enumerate() {
            match summarize(&bed.samples[fi]) {
                Some(s) => {
                    row.push(cell(figure, &s));
                    row.push(match baseline[fi] {
                        Some(b) if b.median > 0.0 => format!("{:.2}", s.median / b.median),
                        _ => "-".into(),
                    });
                }
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        row.push(fwd.map_or("n/a".into(), thousands_u));
        row.push(ct.map_or("n/a".into(), thousands_u));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    println!();
    println!(
        "Datapath, pod to pod between the two nodes of one location (LAN veth, no WireGuard):"
    );
    println!(
        "median [min–max] of {} round(s) x {} s, variants interleaved; × = median / median of (a);",
        opts.rounds, opts.seconds
    );
    println!(
        "client and server pinned to CPU 0; IpForwDatagrams: packets the nodes' IP stacks forwarded \
         during all runs; conntrack: entries on the nodes at the end."
    );
    println!();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                let pad = w - s.chars().count();
                if c == 0 {
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
                    if c == 0 {
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

fn thousands_u(v: u64) -> String {
    thousands(v as f64)
}

/// (a)/(b) must have forwarded through the nodes' IP stacks, (c)/(d) not.
fn check_forwarding(beds: &[Bed], forwarded: &[Forwarding]) -> Result<()> {
    let mut problems = Vec::new();
    for (bed, (fwd, _)) in beds.iter().zip(forwarded) {
        let (Some(expect), Some(n)) = (bed.variant.stack_forwards(), *fwd) else {
            continue;
        };
        if expect && n < STACK_FORWARD_MINIMUM {
            problems.push(format!(
                "{}: the nodes' IP stacks forwarded only {n} datagrams; the baseline is not measuring kernel forwarding",
                bed.variant.label()
            ));
        }
        if !expect && n > EBPF_FORWARD_TOLERANCE {
            problems.push(format!(
                "{}: the nodes' IP stacks forwarded {n} datagrams; pod traffic should never enter them",
                bed.variant.label()
            ));
        }
    }
    if problems.is_empty() {
        println!(
            "check: in the eBPF variants the nodes' IP stacks forwarded ≤ {EBPF_FORWARD_TOLERANCE} datagrams \
             (pod traffic bypassed them); the kernel baselines forwarded through them: OK"
        );
        Ok(())
    } else {
        bail!("datapath check failed:\n  {}", problems.join("\n  "))
    }
}

/// iperf3 and the request/response server in `s`, on CPU 0, once both listen.
pub(super) fn start_servers_in(s: &crate::testbed::Namespace) -> Result<()> {
    s.spawn_logged(
        s.cmd("taskset")
            .args(["-c", "0", "iperf3", "-s", "-p", &IPERF_PORT.to_string()]),
        "iperf3-server",
    )?;
    s.spawn_logged(
        s.cmd("taskset").args(["-c", "0"]).arg(own_exe()).args([
            "bench-server",
            "--port",
            &rr::DEFAULT_PORT.to_string(),
        ]),
        "bench-server",
    )?;
    crate::mesh::wait(
        Duration::from_secs(10),
        "the benchmark servers to listen",
        || {
            s.sh("ss -Htln").is_ok_and(|o| {
                o.contains(&format!(":{IPERF_PORT} "))
                    && o.contains(&format!(":{} ", rr::DEFAULT_PORT))
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp() {
        let s = "Ip: Forwarding DefaultTTL InReceives ForwDatagrams\nIp: 1 64 17 42\nIcmp: InMsgs\nIcmp: 3\n";
        assert_eq!(snmp_field(s, "Ip", "ForwDatagrams"), Some(42));
        assert_eq!(snmp_field(s, "Ip", "InReceives"), Some(17));
        assert_eq!(snmp_field(s, "Icmp", "InMsgs"), Some(3));
        assert_eq!(snmp_field(s, "Ip", "Nope"), None);
    }

    #[test]
    fn summaries() {
        let s = summarize(&[3.0, 1.0, 2.0, 10.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
        assert_eq!(summarize(&[1.0, 2.0]).unwrap().median, 1.5);
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(47962.4), "47,962");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(0.0), "0");
    }
}
