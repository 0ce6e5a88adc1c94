//! The agent's command line: a bad flag exits 64 with a message, before touching the
//! machine (no namespace, bridge or API call).

use std::process::Command;

#[test]
fn bad_flags_exit_64_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-node-agent"))
        .args(["--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn a_missing_kubeconfig_exits_64_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-node-agent"))
        .args([
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--images",
            "/nonexistent/images.json",
            "--state-dir",
            "/nonexistent/state",
            "--log-dir",
            "/nonexistent/logs",
            "--api-host",
            "127.0.0.1",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubeconfig"));
}
