//! `weftctl`'s command line, parsed and run here (the binary only prints),
//! so that the flags and exit behaviour are unit-tested.
//!
//! As kgctl's persistent flags, the global flags (`--dir`, `--kubeconfig`,
//! `--mesh-granularity`, `--port`, `--subnet`, ...) are accepted before or
//! after the subcommand: `weftctl graph --mesh-granularity full`.

use std::num::NonZeroU16;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use super::{Overrides, showconf};
use crate::model::{Encapsulate, Granularity, parse_subnet};

#[derive(Parser, Debug)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect a weft mesh: its graph, WireGuard configurations and eBPF maps"
)]
pub struct Cli {
    /// The directory backend's root (holding nodes/, peers/, settings.yaml). Without it,
    /// graph and showconf read the Kubernetes cluster.
    #[arg(long, env = "WEFT_DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// The cluster's kubeconfig. Default: as kubectl resolves it ($KUBECONFIG,
    /// ~/.kube/config), else the in-cluster service account.
    #[arg(long, env = "KUBECONFIG", conflicts_with = "dir", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Leaders whose WireGuard is unhealthy this long are passed over, as the agents do
    /// (use the agents' --leader-health-timeout).
    #[arg(long, default_value = "3m", value_parser = crate::args::parse_duration, global = true)]
    pub leader_health_timeout: std::time::Duration,
    /// location or full. Default: what the nodes publish (their granularity
    /// annotation, as kgctl reads it), else settings.yaml's, else location.
    #[arg(long, global = true)]
    pub mesh_granularity: Option<Granularity>,
    /// Overrides settings.yaml: the WireGuard subnet.
    #[arg(long, value_parser = parse_subnet, global = true)]
    pub subnet: Option<IpNet>,
    /// Overrides settings.yaml: the WireGuard listen port.
    #[arg(long, global = true)]
    pub port: Option<NonZeroU16>,
    /// Overrides settings.yaml: the label giving a node's location.
    #[arg(long, global = true)]
    pub topology_label: Option<String>,
    /// Overrides settings.yaml: never, crosssubnet or always.
    #[arg(long, global = true)]
    pub encapsulate: Option<Encapsulate>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the mesh as a GraphViz DOT graph.
    Graph,
    /// Print the WireGuard configuration of a node or peer.
    Showconf(ShowconfArgs),
    /// Print this node's pinned eBPF maps readably (run on the node, as root).
    Bpf(BpfArgs),
    /// Print the CustomResourceDefinition of `Peer` (manifests/crds.yaml).
    Crds,
    /// Join this machine to the mesh as the peer NAME, as kgctl connect, until SIGTERM/SIGINT.
    Connect(super::connect::Args),
}

#[derive(Args, Debug)]
pub struct BpfArgs {
    /// What to print.
    #[arg(value_enum)]
    pub what: BpfWhat,
    /// The agent's --bpf-pin-dir.
    #[arg(long, default_value = crate::datapath::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BpfWhat {
    /// The route LPM trie: destination → local, wireguard, node, node-ipip.
    Routes,
    /// Per-action and per-reason packet and byte counters.
    Counters,
    /// The local pods as the CNI registered them (IP → host veth, MAC).
    Pods,
    /// Who may send what into this node without WireGuard: the IPIP senders (this
    /// location's nodes) with their device, outer destination and inner sources, then
    /// the plain-IPv4 rule (cluster range → the device it may arrive on).
    IpipPeers,
    /// The pinned program attachments.
    Links,
    /// The live masquerade translations: pod ip:port -> node ip:port -> remote, state, age.
    Nat,
}

#[derive(Args, Debug)]
pub struct ShowconfArgs {
    #[command(subcommand)]
    pub target: Target,
    /// Output format: wireguard (for `wg setconf`), json or yaml (with --as-peer: a Peer
    /// manifest, for `kubectl apply -f -` or a directory's peers/<name>.yaml).
    #[arg(short, long, global = true, default_value = "wireguard")]
    pub output: showconf::Format,
    /// Show the node's segment or the peer as a [Peer] for another WireGuard interface.
    #[arg(long, global = true)]
    pub as_peer: bool,
    /// With --as-peer: more allowed IPs (comma-separated CIDRs).
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_cidr)]
    pub allowed_ips: Vec<IpNet>,
}

#[derive(Subcommand, Debug)]
pub enum Target {
    /// A node. A node that does not lead its segment has no configuration: a note on
    /// stderr, nothing on stdout, success (as kgctl).
    Node { name: String },
    /// An external peer.
    Peer { name: String },
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    crate::model::parse_cidr(s).map(|n| n.trunc())
}

/// What a run prints, and whether it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Empty when the run failed.
    pub stdout: String,
    /// Whole lines for stderr (warnings, notes), each starting `weftctl: `.
    pub stderr: Vec<String>,
    /// The failure (exit status 1), on one line (`weftctl: error: ...`),
    /// printed after `stderr`.
    pub error: Option<String>,
}

impl Output {
    /// The exit status, as kgctl's: 0 unless an error.
    pub fn success(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs `cli` as of `now` (unix seconds).
pub fn run(cli: Cli, now: i64) -> Output {
    let mut out = Output::default();
    match run_into(cli, now, &mut out) {
        Ok(stdout) => out.stdout = stdout,
        // One line: the error and its causes.
        Err(e) => out.error = Some(format!("weftctl: error: {e:#}").replace('\n', " ")),
    }
    out
}

/// The stdout of `cli`; warnings and notes go to `out.stderr`.
fn run_into(cli: Cli, now: i64, out: &mut Output) -> anyhow::Result<String> {
    use super::bpf;
    match &cli.command {
        Command::Bpf(b) => {
            return match b.what {
                BpfWhat::Routes => bpf::routes(&b.pin_dir),
                BpfWhat::Counters => bpf::counters(&b.pin_dir),
                BpfWhat::Pods => bpf::pods(&b.pin_dir),
                BpfWhat::IpipPeers => bpf::ipip_peers(&b.pin_dir),
                BpfWhat::Links => bpf::links(&b.pin_dir),
                BpfWhat::Nat => bpf::nat(&b.pin_dir),
            };
        }
        Command::Crds => return Ok(crate::backend::kubernetes::crds_yaml()),
        Command::Connect(args) => {
            let overrides = Overrides {
                granularity: cli.mesh_granularity,
                subnet: cli.subnet,
                port: cli.port,
                topology_label: cli.topology_label.clone(),
                encapsulate: cli.encapsulate,
            };
            let (dir, kubeconfig) = (cli.dir.as_deref(), cli.kubeconfig.as_deref());
            super::connect::run(args, dir, kubeconfig, &overrides, cli.leader_health_timeout)?;
            return Ok(String::new());
        }
        Command::Graph | Command::Showconf(_) => {}
    }
    if let Command::Showconf(args) = &cli.command
        && !args.allowed_ips.is_empty()
        && !args.as_peer
    {
        anyhow::bail!("--allowed-ips is only valid with --as-peer");
    }
    let overrides = Overrides {
        granularity: cli.mesh_granularity,
        subnet: cli.subnet,
        port: cli.port,
        topology_label: cli.topology_label,
        encapsulate: cli.encapsulate,
    };
    let (loaded, source) = match &cli.dir {
        Some(dir) => (
            super::load(dir, &overrides, now, cli.leader_health_timeout)?,
            dir.display().to_string(),
        ),
        None => {
            let (snap, server) = kubernetes_snapshot(cli.kubeconfig.as_deref())?;
            let loaded = super::build(snap, &server, &overrides, now, cli.leader_health_timeout)?;
            (loaded, server)
        }
    };
    out.stderr.extend(
        loaded
            .skipped
            .iter()
            .map(|s| format!("weftctl: warning: {s}")),
    );
    let mesh = &loaded.mesh;
    Ok(match cli.command {
        Command::Graph => super::graph::dot(mesh),
        Command::Bpf(_) | Command::Crds | Command::Connect(_) => unreachable!("handled above"),
        Command::Showconf(args) => {
            // As kgctl: no configuration without a single ready node.
            if mesh.segments.is_empty() {
                let not_ready: Vec<String> = mesh
                    .not_ready
                    .iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect();
                if not_ready.is_empty() {
                    anyhow::bail!("no ready node in {source}");
                }
                anyhow::bail!(
                    "no ready node in {source} (not ready: {})",
                    not_ready.join("; ")
                );
            }
            let opts = showconf::Options {
                format: args.output,
                as_peer: args.as_peer,
                allowed_ips: args.allowed_ips,
            };
            match args.target {
                Target::Node { name } => match showconf::node(mesh, &name, &opts)? {
                    showconf::Shown::Conf(text) => text,
                    showconf::Shown::NotLeader(note) => {
                        out.stderr.push(format!("weftctl: {note}"));
                        String::new()
                    }
                },
                Target::Peer { name } => showconf::peer(mesh, &name, &opts)?,
            }
        }
    })
}

/// One list of the cluster's Nodes and Peers, and the server's URL.
fn kubernetes_snapshot(
    kubeconfig: Option<&Path>,
) -> anyhow::Result<(crate::backend::Snapshot, String)> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let (client, server) = crate::backend::kubernetes::client(kubeconfig)
            .await
            .context("no --dir given, so reading the Kubernetes cluster")?;
        let snap = crate::backend::kubernetes::list(&client)
            .await
            .with_context(|| format!("reading {server}"))?;
        Ok((snap, server))
    })
}
