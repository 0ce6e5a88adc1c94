//! The binary's flag handling: bad flags exit 64 with a message, before any cluster access.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-controller"));
    cmd.args(args);
    for var in [
        "PORTCULLIS_ADMIN",
        "PORTCULLIS_DATAPLANE_IMAGE",
        "PORTCULLIS_WATCH_NAMESPACE",
        "PORTCULLIS_LEADER_ELECTION",
        "PORTCULLIS_LEASE_NAME",
        "POD_NAMESPACE",
        "PORTCULLIS_WATCH_SECRETS",
        "PORTCULLIS_ALLOW_PRIVATE_TARGETS",
        "PORTCULLIS_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_64_with_a_message() {
    let (code, err) = run(&[], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--dataplane-image"), "{err}");

    let (code, err) = run(&["--dataplane-image", "img", "--admin", "nope"], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--admin"), "{err}");

    let (code, err) = run(&["--dataplane-image", "img", "--log-format", "xml"], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("xml"), "{err}");

    // Leader election is on by default and needs the lease namespace.
    let (code, err) = run(&["--dataplane-image", "img"], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--lease-namespace"), "{err}");

    // Env fallbacks are parsed the same way.
    let (code, err) = run(
        &[],
        &[
            ("PORTCULLIS_DATAPLANE_IMAGE", "img"),
            ("PORTCULLIS_WATCH_SECRETS", "maybe"),
        ],
    );
    assert_eq!(code, Some(64));
    assert!(err.contains("maybe"), "{err}");
}

#[test]
fn help_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-controller"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--admin",
        "--dataplane-image",
        "--watch-namespace",
        "--leader-election",
        "--lease-name",
        "--lease-namespace",
        "--watch-secrets",
        "--allow-private-targets",
        "--log-format",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bad_ingress_flags_exit_64() {
    let (code, err) = run(
        &[
            "--dataplane-image",
            "img",
            "--nginx-migration-array",
            "no-slash",
        ],
        &[],
    );
    assert_eq!(code, Some(64));
    assert!(err.contains("namespace/name"), "{err}");
    let (code, err) = run(&["ingress-audit", "--array", "Edge/x"], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("namespace/name"), "{err}");
}

#[test]
fn ingress_audit_reads_yaml_files_offline() {
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shop.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: shop\n  namespace: web\n  annotations:\n    nginx.ingress.kubernetes.io/configuration-snippet: 'deny all;'\nspec:\n  ingressClassName: nginx\n  rules:\n  - host: shop.example.com\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-controller"))
        .args(["ingress-audit", "-f"])
        .arg(&dir)
        .args(["--array", "edge/public"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Ingress web/shop: class nginx, published by GatewayArray edge/public"),
        "{report}"
    );
    assert!(
        report.contains("host shop.example.com paths / (prefix) -> Service web:80"),
        "{report}"
    );
    assert!(
        report.contains("not served: nginx.ingress.kubernetes.io/configuration-snippet: carries raw nginx configuration"),
        "{report}"
    );
}
