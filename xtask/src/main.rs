use anyhow::Result;
use clap::{Parser, Subcommand};

/// Weft's developer tasks. Every task first runs `setup`, which installs what
/// is missing and takes a second or two when everything is there.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every tool the project needs (apt packages, rust-src, bpf-linker); idempotent.
    Setup,
    /// Build the eBPF programs into target/bpf/weft.bpf.o (with BTF).
    BuildEbpf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => xtask::setup::ensure(),
        Cmd::BuildEbpf => {
            xtask::setup::ensure()?;
            xtask::ebpf::build().map(|_| ())
        }
    }
}
