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
    let commands: [&[&str]; 8] = [
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
