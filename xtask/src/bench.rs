//! `cargo xtask bench`: speed figures, each printed against a baseline run
//! in the same invocation.

use anyhow::Result;
use std::process::Command;

use crate::util::{run, step, workspace_root};

pub fn run_all() -> Result<()> {
    crate::setup::ensure()?;
    crate::ebpf::build()?;
    step("topology: time to compute one node's topology and a diff (release build)");
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args(["bench", "-p", "weft", "--bench", "topology"]))?;
    Ok(())
}
