//! `weftctl`: inspect a weft mesh, like Kilo's `kgctl`.

use std::num::NonZeroU16;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use weft::ctl::{self, Overrides, showconf};
use weft::model::{Encapsulate, Granularity, parse_subnet};

#[derive(Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect a weft mesh: its graph, WireGuard configurations and eBPF maps"
)]
struct Cli {
    /// The directory backend's root (holding nodes/, peers/, settings.yaml). Without it,
    /// graph and showconf read the Kubernetes cluster.
    #[arg(long, env = "WEFT_DIR")]
    dir: Option<PathBuf>,
    /// The cluster's kubeconfig. Default: as kubectl resolves it ($KUBECONFIG,
    /// ~/.kube/config), else the in-cluster service account.
    #[arg(long, env = "KUBECONFIG", conflicts_with = "dir")]
    kubeconfig: Option<PathBuf>,
    /// Leaders whose WireGuard is unhealthy this long are passed over, as the agents do
    /// (use the agents' --leader-health-timeout).
    #[arg(long, default_value = "3m", value_parser = weft::agent::parse_duration)]
    leader_health_timeout: std::time::Duration,
    /// Overrides settings.yaml: location or full.
    #[arg(long)]
    mesh_granularity: Option<Granularity>,
    /// Overrides settings.yaml: the WireGuard subnet.
    #[arg(long, value_parser = parse_subnet)]
    subnet: Option<IpNet>,
    /// Overrides settings.yaml: the WireGuard listen port.
    #[arg(long)]
    port: Option<NonZeroU16>,
    /// Overrides settings.yaml: the label giving a node's location.
    #[arg(long)]
    topology_label: Option<String>,
    /// Overrides settings.yaml: never, crosssubnet or always.
    #[arg(long)]
    encapsulate: Option<Encapsulate>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the mesh as a GraphViz DOT graph.
    Graph,
    /// Print the WireGuard configuration of a node or peer.
    Showconf(ShowconfArgs),
    /// Print this node's pinned eBPF maps readably (run on the node, as root).
    Bpf(BpfArgs),
    /// Print the CustomResourceDefinition of `Peer` (manifests/crds.yaml).
    Crds,
}

#[derive(Args)]
struct BpfArgs {
    /// What to print.
    #[arg(value_enum)]
    what: BpfWhat,
    /// The agent's --bpf-pin-dir.
    #[arg(long, default_value = weft::datapath::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BpfWhat {
    /// The route LPM trie: destination → local, wireguard, node, node-ipip.
    Routes,
    /// Per-action and per-reason packet and byte counters.
    Counters,
    /// The local pods the datapath learned (IP → host veth, MAC).
    Pods,
    /// The sources IPIP is accepted from (this location's nodes).
    IpipPeers,
    /// The pinned program attachments.
    Links,
    /// The live masquerade translations: pod ip:port -> node ip:port -> remote, state, age.
    Nat,
}

#[derive(Args)]
struct ShowconfArgs {
    #[command(subcommand)]
    target: Target,
    /// Output format: wireguard (for `wg setconf`), json or yaml.
    #[arg(short, long, global = true, default_value = "wireguard")]
    output: showconf::Format,
    /// Show the node's segment or the peer as a [Peer] for another WireGuard interface.
    #[arg(long, global = true)]
    as_peer: bool,
    /// With --as-peer: more allowed IPs (comma-separated CIDRs).
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_cidr)]
    allowed_ips: Vec<IpNet>,
}

#[derive(Subcommand)]
enum Target {
    /// A node (it must be its segment's leader).
    Node { name: String },
    /// An external peer.
    Peer { name: String },
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    weft::model::parse_cidr(s).map(|n| n.trunc())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn run(cli: Cli) -> anyhow::Result<String> {
    use weft::ctl::bpf;
    if let Command::Bpf(b) = &cli.command {
        return match b.what {
            BpfWhat::Routes => bpf::routes(&b.pin_dir),
            BpfWhat::Counters => bpf::counters(&b.pin_dir),
            BpfWhat::Pods => bpf::pods(&b.pin_dir),
            BpfWhat::IpipPeers => bpf::ipip_peers(&b.pin_dir),
            BpfWhat::Links => bpf::links(&b.pin_dir),
            BpfWhat::Nat => bpf::nat(&b.pin_dir),
        };
    }
    if let Command::Crds = &cli.command {
        return Ok(weft::backend::kubernetes::crds_yaml());
    }
    let overrides = Overrides {
        granularity: cli.mesh_granularity,
        subnet: cli.subnet,
        port: cli.port,
        topology_label: cli.topology_label,
        encapsulate: cli.encapsulate,
    };
    let loaded = match &cli.dir {
        Some(dir) => ctl::load(dir, &overrides, now(), cli.leader_health_timeout)?,
        None => {
            let snap = kubernetes_snapshot(cli.kubeconfig.as_deref())?;
            ctl::build(
                snap.0,
                &snap.1,
                &overrides,
                now(),
                cli.leader_health_timeout,
            )?
        }
    };
    for s in &loaded.skipped {
        eprintln!("weftctl: warning: {s}");
    }
    Ok(match cli.command {
        Command::Graph => ctl::graph::dot(&loaded.mesh),
        Command::Bpf(_) | Command::Crds => unreachable!("handled above"),
        Command::Showconf(args) => {
            if !args.allowed_ips.is_empty() && !args.as_peer {
                anyhow::bail!("--allowed-ips is only valid with --as-peer");
            }
            let opts = showconf::Options {
                format: args.output,
                as_peer: args.as_peer,
                allowed_ips: args.allowed_ips,
            };
            match args.target {
                Target::Node { name } => showconf::node(&loaded.mesh, &name, &opts)?,
                Target::Peer { name } => showconf::peer(&loaded.mesh, &name, &opts)?,
            }
        }
    })
}

/// One list of the cluster's Nodes and Peers, and the server's URL.
fn kubernetes_snapshot(
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<(weft::backend::Snapshot, String)> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let (client, server) = weft::backend::kubernetes::client(kubeconfig)
            .await
            .context("no --dir given, so reading the Kubernetes cluster")?;
        let snap = weft::backend::kubernetes::list(&client)
            .await
            .with_context(|| format!("reading {server}"))?;
        Ok((snap, server))
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(out) => {
            use std::io::Write as _;
            match std::io::stdout().lock().write_all(out.as_bytes()) {
                // A reader that stopped early (`| head`) is no failure.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("weftctl: error: writing the output: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            // One line: the error and its causes.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("weftctl: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
