//! The shell examples of the guides (`docs/guides/*.md`, every ```sh block) run against the
//! real binary: each file's blocks in order, in one `bash -euo pipefail`, with `idem proxy`
//! (memory store) in front of the quickstart's small upstream at `$IDEM_URL` and `idem` on
//! the `PATH`. A block that fails fails the test with its file and output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::{Idem, free_port};

fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence == "```sh" || fence == "```bash" => {
                current = Some(String::new())
            }
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shell_examples_in_the_guides_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let port = free_port();
    let _upstream = Upstream(
        Command::new("python3")
            .arg(root.join("examples/quickstart/upstream.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the example upstream"),
    );
    // Wait until the upstream accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let upstream = format!("http://127.0.0.1:{port}");
    let idem = Idem::proxy_on_memory(&upstream, &[]);
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_idem"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut ran = 0;
    let mut guides: Vec<_> = std::fs::read_dir(root.join("docs/guides"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    guides.sort();
    for guide in guides
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
    {
        let blocks = sh_blocks(&std::fs::read_to_string(guide).unwrap());
        if blocks.is_empty() {
            continue;
        }
        let script = blocks.join("\n");
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("IDEM_URL", &idem.url)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "a shell example in {} failed\n--- script ---\n{script}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            guide.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ran += blocks.len();
    }
    assert!(
        ran >= 5,
        "the guides' shell examples were found and run ({ran})"
    );
}

/// The help of every command and subcommand, together.
fn every_help() -> String {
    let commands: [&[&str]; 10] = [
        &["config", "check", "--help"],
        &["config", "--help"],
        &["--help"],
        &["proxy", "--help"],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["openapi", "--help"],
        &["records", "show", "--help"],
        &["records", "release", "--help"],
        &["records", "complete", "--help"],
    ];
    commands
        .iter()
        .map(|arguments| {
            let output = Command::new(env!("CARGO_BIN_EXE_idem"))
                .args(*arguments)
                .output()
                .expect("idem runs");
            assert!(output.status.success(), "idem {arguments:?} fails");
            String::from_utf8(output.stdout).unwrap()
        })
        .collect()
}

/// Every flag the README and the guides name (written as code, `` `--flag` ``) is one that
/// `idem` has: a renamed or removed flag fails here instead of in a reader's terminal.
#[test]
fn every_flag_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs/guides")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "md") {
            documents.push(path);
        }
    }
    let help = every_help();
    let mut checked = 0;
    for document in documents {
        let text = std::fs::read_to_string(&document).unwrap();
        for quoted in text.split('`').skip(1).step_by(2) {
            let Some(flag) = quoted.strip_prefix("--") else {
                continue;
            };
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            if name.is_empty() {
                continue;
            }
            checked += 1;
            assert!(
                help.contains(&format!("--{name}")),
                "{} names --{name}, which idem does not have",
                document.display()
            );
        }
    }
    assert!(checked > 30, "only {checked} flags found in the docs");
}

fn idem(arguments: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(arguments)
        // The checks read the file alone, not whatever this shell exports.
        .env_clear()
        .output()
        .expect("idem runs")
}

/// `docs/reference/configuration.md` is what `idem config reference` writes from the
/// settings' declarations. Refresh it with
/// `cargo run -p idem-gateway -- config reference > docs/reference/configuration.md`.
#[test]
fn the_configuration_reference_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = idem(&["config", "reference"]);
    assert!(output.status.success());
    let written = std::fs::read_to_string(root.join("docs/reference/configuration.md")).unwrap();
    assert!(
        written == String::from_utf8(output.stdout).unwrap(),
        "docs/reference/configuration.md is stale: run `cargo run -p idem-gateway -- config reference > docs/reference/configuration.md`"
    );
}

/// `idem.example.toml` is valid, and names every setting of the reference (set or in a
/// comment), so that it stays the complete sample the docs promise.
#[test]
fn the_example_config_is_valid_and_complete() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = root.join("idem.example.toml");
    let output = idem(&["config", "check", example.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "idem config check idem.example.toml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let effective = String::from_utf8(output.stdout).unwrap();
    assert!(!effective.contains("not checked as"), "{effective}");
    let text = std::fs::read_to_string(&example).unwrap();
    let reference = std::fs::read_to_string(root.join("docs/reference/configuration.md")).unwrap();
    let mut keys = 0;
    for row in reference.lines().filter(|line| line.starts_with("| `")) {
        let key = row.split('`').nth(1).unwrap();
        keys += 1;
        let named = text.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{key} ="))
                || line.starts_with(&format!("[{key}]"))
                || line.contains(&format!("[serve.{key}]"))
        });
        assert!(named, "idem.example.toml does not name `{key}`");
    }
    assert!(keys > 40, "only {keys} settings in the reference");
}

/// A value the servers would refuse is refused by `idem config check`, naming the key, and
/// changes nothing; a boolean environment variable reads as the servers read it.
#[test]
fn config_check_refuses_what_the_servers_refuse() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("idem.toml");
    std::fs::write(
        &file,
        "[proxy]\nupstream = \"http://x\"\nmax_request_body = \"lots\"\n",
    )
    .unwrap();
    let output = idem(&["config", "check", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("proxy.max_request_body"), "{error}");

    std::fs::write(&file, "[proxy]\nupstream = \"http://x\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["config", "check", file.to_str().unwrap()])
        .env_clear()
        .env("IDEM_REQUIRE_KEY", "yes")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let effective: toml::Table =
        toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(effective["proxy"]["require_key"].as_bool(), Some(true));
}
