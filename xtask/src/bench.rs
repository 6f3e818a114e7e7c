//! `cargo xtask bench`: speed figures, each printed against a baseline run
//! in the same invocation: the topology computation, then the datapath
//! (pod to pod between two nodes: Kilo-like iptables baseline, plain
//! routing, weft's eBPF path with and without XDP, a direct veth; see
//! [`datapath`]), then masquerade (pod to an external host: iptables with
//! Kilo's chain, an nftables set, weft's eBPF masquerade, no NAT, for
//! exemptions of 10 to 5,000 nodes; see [`masq`]). `--only` picks parts.
//! Not part of `cargo xtask test`.

pub mod datapath;
pub mod masq;
pub mod rr;

use anyhow::{Result, ensure};
use std::process::Command;

use crate::util::{run, step, workspace_root};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Smoke run: 1 round of 2 s per datapath figure (unless --rounds/--seconds say otherwise).
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the interleaved datapath variants [default: 5, 1 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds per datapath figure [default: 5, 2 with --quick].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Run only these parts (comma-separated or repeated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
}

/// The parts of `cargo xtask bench`, in the order they run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Time to compute one node's topology and a diff.
    Topology,
    /// Pod to pod between two nodes of one location.
    Datapath,
    /// Pod to an external host through masquerade.
    Masq,
}

impl BenchArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

pub fn run_all(args: &BenchArgs) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the datapath bench needs root (network namespaces, eBPF)"
    );
    crate::setup::ensure()?;
    crate::ebpf::build()?;
    if args.runs(Part::Topology) {
        step("topology: time to compute one node's topology and a diff (release build)");
        run(Command::new("cargo")
            .current_dir(workspace_root())
            .args(["bench", "-p", "weft", "--bench", "topology"]))?;
    }
    if !(args.runs(Part::Datapath) || args.runs(Part::Masq)) {
        return Ok(());
    }

    step("building the weft binaries for the datapath benches");
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args(["build", "-p", "weft", "--bins"]))?;
    let opts = datapath::Options {
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }),
        seconds: args.seconds.unwrap_or(if args.quick { 2 } else { 5 }),
    };
    if args.runs(Part::Datapath) {
        datapath::run(opts, &crate::check::bin_dir())?;
    }
    if args.runs(Part::Masq) {
        masq::run(opts, &crate::check::bin_dir())?;
    }
    Ok(())
}

/// `cargo xtask bench-server` (hidden): see [`rr`].
pub fn server(args: &rr::ServerArgs) -> Result<()> {
    rr::server(args)
}

/// `cargo xtask bench-client` (hidden): see [`rr`].
pub fn client(args: &rr::ClientArgs) -> Result<()> {
    rr::client(args)
}
