//! `weft`: the node agent. See `weft --help`.

use anyhow::{Context, Result};
use clap::Parser;
use weft::agent::Config;

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = Config::parse();
    weft::backend::kubernetes::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log_level).context("--log-level")?,
        )
        .with_writer(std::io::stderr)
        .init();
    weft::agent::run(cfg).await
}
