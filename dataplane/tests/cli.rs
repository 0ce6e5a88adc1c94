//! The binary's path flags: a path that does not exist, or is of the wrong kind, exits 64
//! with a message naming the flag, before anything binds or starts.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"));
    // An admin port nobody else uses: a run that wrongly starts fails on its own, not
    // on a port another test holds.
    cmd.args(["--admin", "127.0.0.1:0"]).args(args);
    for var in [
        "PORTCULLIS_MANIFESTS",
        "PORTCULLIS_CONFIG",
        "PORTCULLIS_KEYRING",
        "PORTCULLIS_CERTS",
        "PORTCULLIS_ARRAY",
        "PORTCULLIS_ADMIN",
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_paths_exit_64_naming_the_flag() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.json");
    std::fs::write(&file, "{}").unwrap();
    let missing = dir.join("does-not-exist");

    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["--manifests", s(&missing)],
            "--manifests",
            "does not exist",
        ),
        (
            vec!["--manifests", s(&file)],
            "--manifests",
            "is not a directory",
        ),
        (vec!["--config", s(&missing)], "--config", "does not exist"),
        (vec!["--config", s(&dir)], "--config", "is a directory"),
        (
            vec!["--manifests", s(&dir), "--keyring", s(&missing)],
            "--keyring",
            "does not exist",
        ),
        (
            vec!["--config", s(&file), "--certs", s(&missing)],
            "--certs",
            "does not exist",
        ),
    ];
    for (args, flag, problem) in cases {
        let (code, err) = run(&args, &[]);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(err.contains(problem), "{args:?}: {err}");
        assert!(err.contains(s(&dir)), "the message names the path: {err}");
    }

    // The env fallbacks are checked the same way.
    let (code, err) = run(&[], &[("PORTCULLIS_MANIFESTS", s(&missing))]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("PORTCULLIS_MANIFESTS"), "{err}");
    let (code, err) = run(
        &["--manifests", s(&dir)],
        &[("PORTCULLIS_KEYRING", s(&missing))],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--keyring"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}
