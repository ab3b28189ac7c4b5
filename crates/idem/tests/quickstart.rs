//! The README's quickstart runs as written (`examples/quickstart/quickstart.sh`) against the
//! binary under test.
#![allow(clippy::unwrap_used)]

#[test]
fn readme_quickstart_works() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart/quickstart.sh"
    );
    let output = std::process::Command::new("bash")
        .arg(script)
        .env("IDEM_BIN", env!("CARGO_BIN_EXE_idem"))
        .env("UPSTREAM_PORT", free_port().to_string())
        .env("PROXY_PORT", free_port().to_string())
        .env("SERVE_PORT", free_port().to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("quickstart: ok"),
        "quickstart failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
