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
    about = "Inspect a weft mesh: its graph and WireGuard configurations"
)]
struct Cli {
    /// The directory backend's root (holding nodes/, peers/, settings.yaml).
    #[arg(long, env = "WEFT_DIR")]
    dir: PathBuf,
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
    let overrides = Overrides {
        granularity: cli.mesh_granularity,
        subnet: cli.subnet,
        port: cli.port,
        topology_label: cli.topology_label,
        encapsulate: cli.encapsulate,
    };
    let loaded = ctl::load(&cli.dir, &overrides, now())?;
    for s in &loaded.skipped {
        eprintln!("weftctl: warning: {s}");
    }
    Ok(match cli.command {
        Command::Graph => ctl::graph::dot(&loaded.mesh),
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
