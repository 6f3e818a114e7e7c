//! `cargo xtask test`: formatting, lints, the manifests' validation, unit
//! tests, then the privileged end-to-end tests in network namespaces (every
//! `#[ignore]`d test of the workspace: they need root and are run one at a
//! time).

use anyhow::{Result, bail};
use std::process::Command;
use std::time::Instant;

use crate::util::{run, step, workspace_root};

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root()).args(args);
    c
}

/// Runs everything CI runs.
pub fn test(filter: Option<&str>) -> Result<()> {
    let start = Instant::now();
    crate::setup::ensure()?;
    step("cargo fmt --check");
    run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
    crate::ebpf::build()?;
    step("clippy (host crates, -D warnings)");
    run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "weft-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("clippy (eBPF crate, -D warnings)");
    run(crate::ebpf::nightly_cargo("clippy").args(["--", "-D", "warnings"]))?;
    step("Kubernetes manifests (strict, Kubernetes 1.20 and current)");
    crate::manifests::validate()?;
    step("unit tests");
    let mut unit = cargo(&["test", "--workspace", "--exclude", "weft-ebpf"]);
    if let Some(f) = filter {
        unit.args(["--", f]);
    }
    run(&mut unit)?;
    end_to_end(filter)?;
    step(format!("all tests passed in {:.0?}", start.elapsed()));
    Ok(())
}

/// The privileged tests: real namespaces, WireGuard, eBPF. Root only.
pub fn end_to_end(filter: Option<&str>) -> Result<()> {
    if !crate::util::output(Command::new("id").arg("-u"))?
        .trim()
        .eq("0")
    {
        bail!("the end-to-end tests need root (network namespaces, eBPF)");
    }
    step("building the agent binaries for the end-to-end tests");
    run(&mut cargo(&["build", "--package", "weft", "--bins"]))?;
    crate::testbed::sweep_stale()?;
    step("end-to-end tests (root, network namespaces, one at a time)");
    let mut e2e = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "weft-ebpf",
        "--",
        "--ignored",
        "--test-threads=1",
    ]);
    if let Some(f) = filter {
        e2e.arg(f);
    }
    e2e.env("WEFT_BIN_DIR", bin_dir());
    run(&mut e2e)
}

/// Where `cargo build` put the weft binaries.
pub fn bin_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}
