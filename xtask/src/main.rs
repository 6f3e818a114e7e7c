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
    /// Run everything CI runs: fmt, clippy, unit tests, then the privileged end-to-end tests.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Write manifests/crds.yaml from the Rust type of `Peer` (CI fails when the committed file differs).
    Codegen,
    /// Validate manifests/*.yaml strictly against the Kubernetes schemas (1.20 and current), offline.
    ValidateManifests,
    /// Run the demo: a mesh of namespace nodes on this machine (no Kubernetes needed).
    Demo {
        /// Keep the cluster running until Ctrl-C instead of tearing it down at once.
        #[arg(long)]
        keep: bool,
        /// Use a real kube-apiserver (Node and Peer objects) as the backend instead of the directory.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Benchmarks: topology computation, the datapath and masquerade, against Kilo's iptables baseline.
    Bench(xtask::bench::BenchArgs),
    /// Datapath bench: the request/response server (run inside a pod).
    #[command(hide = true)]
    BenchServer(xtask::bench::rr::ServerArgs),
    /// Datapath bench: the request/response client (run inside a pod).
    #[command(hide = true)]
    BenchClient(xtask::bench::rr::ClientArgs),
    /// Masquerade tests: servers and clients run inside the test bed (see xtask/src/probe.rs).
    #[command(hide = true)]
    NatProbe(xtask::probe::ProbeArgs),
    /// Test-bed self-test: build a small cluster, print `READY <prefix>`, wait for a signal.
    #[command(hide = true)]
    TestbedHold,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => xtask::setup::ensure(),
        Cmd::BuildEbpf => {
            xtask::setup::ensure_toolchain()?;
            xtask::ebpf::build().map(|_| ())
        }
        Cmd::Test { filter } => xtask::check::test(filter.as_deref()),
        Cmd::Codegen => xtask::manifests::codegen(),
        Cmd::ValidateManifests => xtask::manifests::validate(),
        Cmd::Demo { keep, kubernetes } => xtask::demo::run(keep, kubernetes),
        Cmd::Bench(args) => xtask::bench::run_all(&args),
        Cmd::BenchServer(args) => xtask::bench::server(&args),
        Cmd::BenchClient(args) => xtask::bench::client(&args),
        Cmd::NatProbe(args) => xtask::probe::run(&args),
        Cmd::TestbedHold => xtask::testbed::hold(),
    }
}
