//! `weftctl`: inspect a weft mesh, like Kilo's `kgctl`. The command line
//! and what it does are [`weft::ctl::cli`]; this prints the result.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use weft::ctl::cli::{Cli, run};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let out = run(Cli::parse(), now());
    for line in out.stderr.iter().chain(&out.error) {
        eprintln!("{line}");
    }
    if !out.success() {
        return ExitCode::FAILURE;
    }
    match std::io::stdout().lock().write_all(out.stdout.as_bytes()) {
        // A reader that stopped early (`| head`) is no failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("weftctl: error: writing the output: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}
