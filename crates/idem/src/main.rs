//! The `idem` command: everything it does lives in the library (`lib.rs`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    idem::run(idem::cli::Cli::parse()).await
}
