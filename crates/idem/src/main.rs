//! The `idem` command: everything it does lives in the library (`lib.rs`).

use clap::FromArgMatches;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The command line with each setting's default in its help, from the settings' one
    // declaration (see `idem::config::command`).
    let matches = idem::config::command().get_matches();
    let cli = idem::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    idem::run(cli).await
}
