//! `cargo xtask build-ebpf`: builds the eBPF programs with the nightly and
//! bpf-linker into [`object_path`], which the agent embeds (agent/build.rs).

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

use crate::setup::tools_path;
use crate::util::{run, step, workspace_root};

/// The documented location of the built object: `target/bpf/weft.bpf.o`.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpf/weft.bpf.o")
}

/// A `cargo +nightly` command for the eBPF crate, clean of the outer cargo's
/// environment (which points at the stable toolchain), with bpf-linker on PATH.
pub fn nightly_cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args([
            "+nightly",
            subcommand,
            "--package",
            "weft-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("PATH", tools_path())
        // Its own target dir, so nightly and stable builds do not invalidate each other.
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/bpf-build"),
        )
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
        );
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Builds the object and returns its path.
pub fn build() -> Result<PathBuf> {
    step("building the eBPF programs (nightly, bpfel-unknown-none)");
    run(&mut nightly_cargo("build"))?;
    let built = workspace_root().join("target/bpf-build/bpfel-unknown-none/release/weft");
    let dest = object_path();
    std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
    // Copy only when changed, so that the agent's build script does not rebuild needlessly.
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&dest).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(&dest, &new).with_context(|| format!("writing {}", dest.display()))?;
    }
    step(format!(
        "eBPF object: {} ({} bytes)",
        dest.display(),
        new.len()
    ));
    Ok(dest)
}
