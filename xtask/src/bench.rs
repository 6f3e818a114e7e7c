//! `cargo xtask bench`: speed figures, each printed against a baseline run
//! in the same invocation: the topology computation, then the datapath
//! (pod to pod between two nodes: Kilo-like iptables baseline, plain
//! routing, weft's eBPF path with and without XDP, a direct veth; see
//! [`datapath`]). Not part of `cargo xtask test`.

pub mod datapath;
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
}

pub fn run_all(args: &BenchArgs) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the datapath bench needs root (network namespaces, eBPF)"
    );
    crate::setup::ensure()?;
    crate::ebpf::build()?;
    step("topology: time to compute one node's topology and a diff (release build)");
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args(["bench", "-p", "weft", "--bench", "topology"]))?;

    step("building the weft binaries for the datapath bench");
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args(["build", "-p", "weft", "--bins"]))?;
    let opts = datapath::Options {
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }),
        seconds: args.seconds.unwrap_or(if args.quick { 2 } else { 5 }),
    };
    datapath::run(opts, &crate::check::bin_dir())
}

/// `cargo xtask bench-server` (hidden): see [`rr`].
pub fn server(args: &rr::ServerArgs) -> Result<()> {
    rr::server(args)
}

/// `cargo xtask bench-client` (hidden): see [`rr`].
pub fn client(args: &rr::ClientArgs) -> Result<()> {
    rr::client(args)
}
