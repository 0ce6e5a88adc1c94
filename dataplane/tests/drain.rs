//! SIGTERM to the real binary during slow requests: every one completes, exit 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let b = Backend::start("b").await;
    let dir = TempDir::new("drain");
    let port = dir.write_manifests(web_array, &[plain_farm(&b)]);
    let admin_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
        .args([
            "--manifests",
            dir.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1",
            "--admin",
        ])
        .arg(format!("127.0.0.1:{admin_port}"))
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log.json")).unwrap())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = tokio::net::TcpStream::connect(admin).await {
            drop(c);
            if get(admin, "admin", "/readyz").await.0 == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "dataplane never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A request the proxy answers itself gets an access line too.
    assert_eq!(get(addr, "nowhere.test", "/missing?secret=q").await.0, 404);
    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(tokio::spawn(async move {
            get(addr, "b.test", "/slow/1500?secret=q").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(admin, "admin", "/readyz").await.0,
        503,
        "not ready while draining"
    );
    for t in slow {
        let (s, hd, body) = t.await.unwrap();
        assert_eq!((s, body.as_str()), (200, "b"));
        assert_eq!(
            hd.get("connection").map(|v| v.to_str().unwrap()),
            Some("close")
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "dataplane did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit status {code:?}");

    // One JSON access line per request: farm, endpoint identity, status, durations,
    // bytes, method, path without the query, client.
    let log = std::fs::read_to_string(dir.path().join("log.json")).unwrap();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 6, "{log}");
    let refused = &access[0];
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["error"], "no-route");
    assert_eq!(refused["path"], "/missing");
    assert_eq!(refused["method"], "GET");
    let line = &access[1];
    assert_eq!(line["farm"], "default/b");
    assert_eq!(line["endpoint"], format!("http1://{}", b.addr));
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/slow/1500");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["bytes_out"], 1);
    assert!(line["total_ms"].as_f64().unwrap() >= 1400.0);
    assert!(line["upstream_first_byte_ms"].as_f64().is_some());
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!log.contains("secret=q"));
}

#[test]
fn bad_flags_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
        .args(["--bind", "not-an-ip", "--config", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--manifests"));
}

/// The real binary serving the manifests in `dir`; its admin address.
fn spawn_member(dir: &TempDir) -> (std::process::Child, std::net::SocketAddr) {
    let admin_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
        .args([
            "--manifests",
            dir.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, format!("127.0.0.1:{admin_port}").parse().unwrap())
}

async fn wait_ready(admin: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = Client::try_connect(admin).await
            && c.get("admin", "/readyz").await.is_ok_and(|r| r.0 == 200)
        {
            return;
        }
        assert!(Instant::now() < deadline, "dataplane never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM; returns how long the member took to exit, once it exited zero.
async fn terminate(child: &mut std::process::Child) -> Duration {
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "dataplane did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(code.success(), "exit status {code:?}");
    sent.elapsed()
}

/// Once nothing is in flight, SIGTERM exits at once, with pooled upstream connections
/// and idle client and scraper keep-alives open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_member_exits_promptly_on_sigterm() {
    let b = Backend::start("b").await;
    let dir = TempDir::new("drain-idle");
    let port = dir.write_manifests(web_array, &[plain_farm(&b)]);
    let (mut child, admin) = spawn_member(&dir);
    wait_ready(admin).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = Client::connect(addr).await;
    assert_eq!(client.get("b.test", "/").await.unwrap().0, 200);
    let mut scraper = Client::connect(admin).await;
    assert_eq!(scraper.get("admin", "/metrics").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = terminate(&mut child).await;
    assert!(
        took < Duration::from_millis(800),
        "exit took {took:?} after SIGTERM"
    );
}

/// SIGTERM while a large config is being loaded: once the drain is done the member exits
/// without waiting for the reload, whose result could only be thrown away (issue 12:
/// exit came seconds after the drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_reload_exits_without_waiting_for_it() {
    let b = Backend::start("b").await;
    let dir = TempDir::new("drain-reload");
    dir.write_manifests(web_array, &[plain_farm(&b)]);
    let (mut child, admin) = spawn_member(&dir);
    wait_ready(admin).await;
    let status = || async { get(admin, "admin", "/status").await.2 };
    let before = status().await;
    let server = Server {
        weight: 1000,
        ..address_server(b.addr)
    };
    let farms: Vec<FarmBuilder> = (0..400)
        .map(|i| site(&format!("f{i}"), &[&format!("f{i}.test")]).server(server.clone()))
        .collect();
    dir.write("farm.yaml", &manifests(&farms));
    // The member polls every 500 ms and lets a change settle for 100 ms.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        status().await,
        before,
        "the reload is over already: make it larger"
    );
    let took = terminate(&mut child).await;
    assert!(
        took < Duration::from_millis(800),
        "exit took {took:?} after SIGTERM"
    );
}
