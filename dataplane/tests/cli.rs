//! The binary's path flags: a path that does not exist, or is of the wrong kind, exits 64
//! with a message naming the flag, before anything binds or starts.

use std::path::Path;
use std::process::Command;

use portcullis_testkit::ArrayBuilder;

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
        "PORTCULLIS_OTLP_ENDPOINT",
        "PORTCULLIS_TRACE_SAMPLE_RATIO",
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

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `request` to `port` until an answer `done` accepts comes back (the binary is
/// starting), for at most 10 s.
#[allow(
    clippy::disallowed_methods,
    reason = "a plain test thread waiting for a child process; no runtime to block"
)]
fn answer_when_up(port: u16, request: &[u8], done: impl Fn(&str) -> bool) -> String {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
            c.write_all(request)?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        });
        match attempt {
            Ok(out) if done(&out) => return out,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("port {port} never answered: {other:?}"),
        }
    }
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

/// Issue 15: a tracing flag that cannot work exits 64 with a message, before anything
/// starts; so does its environment variable.
#[test]
fn bad_tracing_flags_exit_64() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vec<&str>, Env, &str)> = vec![
        (
            vec!["--otlp-endpoint", "https://collector:4318"],
            vec![],
            "use http://",
        ),
        (
            vec!["--otlp-endpoint", "collector:4318"],
            vec![],
            "no scheme",
        ),
        (
            vec![
                "--otlp-endpoint",
                "http://c:4318",
                "--trace-sample-ratio",
                "2",
            ],
            vec![],
            "not a ratio",
        ),
        (
            vec![],
            vec![("PORTCULLIS_OTLP_ENDPOINT", "ftp://c")],
            "--otlp-endpoint",
        ),
        (
            vec![],
            vec![("PORTCULLIS_TRACE_SAMPLE_RATIO", "-0.5")],
            "not a ratio",
        ),
    ];
    for (args, env, problem) in cases {
        let mut all = vec!["--manifests", s(&dir)];
        all.extend(args.iter().copied());
        let (code, err) = run(&all, &env);
        assert_eq!(code, Some(64), "{args:?} {env:?}: {err}");
        assert!(err.contains(problem), "{args:?} {env:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 12, section 5: the access log has a switch. The binary serves a listener with
/// no farm; one request (a 404) is logged with the switch on and not with it off.
#[test]
fn the_access_log_can_be_switched_off() {
    use std::io::Read;

    for (switch, logged) in [("on", true), ("off", false)] {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-accesslog-{}-{switch}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, admin) = (free_port(), free_port());
        std::fs::write(
            dir.join("array.yaml"),
            ArrayBuilder::new("a")
                .namespace("n")
                .http("web", port)
                .yaml(),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
            .args(["--manifests", s(&dir), "--bind", "127.0.0.1"])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--access-log", switch])
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let answer = answer_when_up(
            port,
            b"GET /x HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
            |out| !out.is_empty(),
        );
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(child.wait().unwrap().success(), "{stderr}");
        let access = stderr
            .lines()
            .filter(|l| l.contains("\"target\":\"access\"") && l.contains("no-route"))
            .count();
        assert_eq!(
            access,
            usize::from(logged),
            "--access-log {switch}:\n{stderr}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Issue 14: `--worker-threads` (and its variable) sets the threads that serve
/// connections, as `/status` reports them; 0 or a word exits 64 naming the flag.
#[test]
fn worker_threads_are_set_by_the_flag() {
    for bad in ["0", "many"] {
        let (code, err) = run(&["--config", "/nonexistent", "--worker-threads", bad], &[]);
        assert_eq!(code, Some(64), "{err}");
        assert!(err.contains("--worker-threads"), "{err}");
    }

    let dir = std::env::temp_dir().join(format!("portcullis-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("array.yaml"),
        ArrayBuilder::new("a")
            .namespace("n")
            .http("web", free_port())
            .yaml(),
    )
    .unwrap();
    for (args, env, want) in [
        (vec!["--worker-threads", "3"], None, 3),
        (vec![], Some("1"), 1),
    ] {
        let admin = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"));
        cmd.args(["--manifests", s(&dir), "--bind", "127.0.0.1"])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(&args)
            .env_remove("PORTCULLIS_WORKER_THREADS")
            .stderr(std::process::Stdio::null());
        if let Some(n) = env {
            cmd.env("PORTCULLIS_WORKER_THREADS", n);
        }
        let mut child = cmd.spawn().unwrap();
        let status = answer_when_up(
            admin,
            b"GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            |out| out.starts_with("HTTP/1.1 200"),
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            status.contains(&format!("\"workerThreads\":{want}")),
            "{args:?} {env:?}: {status}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
