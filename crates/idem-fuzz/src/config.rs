//! `config`: the TOML config file, parsed and resolved into the settings `idem` runs with.

use clap::Parser;
use idem::cli::{Cli, Command};
use idem::config::FileConfig;

/// Parses `data` (when it is UTF-8) as a config file, then resolves it the way `idem proxy`
/// and `idem serve` do: from a file named by `--config`, with no other flag. Never panics; a
/// file the parser refuses is refused by the resolution too.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = FileConfig::parse(text, "fuzzed config");
    // The real resolution reads a file: give it one.
    let file = tempfile::NamedTempFile::new().expect("a temporary file for the config");
    std::fs::write(file.path(), text).expect("the config written to its temporary file");
    let path = file.path().to_str().expect("a UTF-8 temporary path");
    for command in ["proxy", "serve"] {
        let cli = Cli::try_parse_from(["idem", command, "--config", path])
            .expect("the target's own flags parse (is an IDEM_ variable set?)");
        let resolved = match cli.command {
            Command::Proxy(args) => idem::config::proxy(*args).map(drop),
            Command::Serve(args) => idem::config::serve(*args).map(drop),
            _ => unreachable!("parsed {command}"),
        };
        if let Err(error) = &parsed {
            assert!(
                resolved.is_err(),
                "`idem {command}` accepted a file the parser refuses: {error}"
            );
        }
    }
}
