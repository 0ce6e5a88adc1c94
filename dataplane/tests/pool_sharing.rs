//! Two farms naming one backend differently share one pool and its limit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use portcullis_testkit::host_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farms_naming_one_backend_share_one_pool() {
    let b = Backend::start("b").await;
    let limits = Upstream {
        keep_alive: Some(KeepAlive {
            max_connections: Some(8),
            max_idle: Some(8),
            idle_timeout: None,
        }),
        ..defaults()
    };
    let proxy = Proxy::start(
        "pool",
        &[
            site("by-address", &["one.test"])
                .server(address_server(b.addr))
                .with(|spec| spec.upstream = Some(limits.clone())),
            site("by-name", &["two.test"])
                .server(host_server("localhost", b.addr.port()))
                .with(|spec| spec.upstream = Some(limits.clone())),
        ],
    )
    .await;
    let addr = proxy.addr;
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (ok, failed) = (ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let host = if i % 2 == 0 { "one.test" } else { "two.test" };
            while Instant::now() < until {
                match c.get(host, "/").await {
                    Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = metrics(proxy.admin_addr()).await;
    let key = format!("http1://{}", b.addr);
    let reused = metric_sum(&m, "portcullis_pool_connections_reused_total", &[&key]);
    let opened = metric_sum(&m, "portcullis_pool_connections_opened_total", &[&key]);
    eprintln!(
        "ok={} failed={} accepted={} opened={opened} reused={reused}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        b.accepted()
    );
    assert!(ok.load(Ordering::Relaxed) > 500);
    assert!(
        b.accepted() <= 8,
        "backend accepted {} connections",
        b.accepted()
    );
    assert!(reused > 0.0);
    // Both farms reached the backend through the one identity.
    let seen = b.seen();
    assert!(seen.iter().any(|s| s.headers["host"] == "one.test"));
    assert!(seen.iter().any(|s| s.headers["host"] == "two.test"));
    proxy.shutdown().await;
}

/// Sends `per_client` keep-alive GETs from each of `clients` connections, spreading them
/// over `hosts`; returns how many got a 200. The backend takes 5 ms per answer, so the
/// clients' requests are really in flight at once, as wrk's are against a real origin.
async fn steady_load(
    addr: std::net::SocketAddr,
    hosts: &[&'static str],
    clients: usize,
    per_client: usize,
) -> usize {
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let ok = ok.clone();
        let host = hosts[i % hosts.len()];
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for _ in 0..per_client {
                if let Ok((200, _, _)) = c.get(host, "/slow/5").await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ok.load(Ordering::Relaxed)
}

/// Issue 12, finding 1 (the seeds' churn): three farms naming one backend three ways,
/// default keep-alive settings, 64 keep-alive clients. The pool must grow to the
/// concurrency the load needs and then stop opening connections. With an idle cap of 32
/// below the demand of 64, every connection returned above the cap was closed and
/// reopened a moment later (29,852 opened in 15 s in the field report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_on_a_shared_identity_does_not_churn() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(
        "churn",
        &[
            site("by-address", &["one.test"]).server(address_server(b.addr)),
            site("by-name", &["two.test"]).server(host_server("localhost", b.addr.port())),
            site("by-literal-name", &["three.test"])
                .server(host_server("127.0.0.1", b.addr.port())),
        ],
    )
    .await;
    let ok = steady_load(proxy.addr, &["one.test", "two.test", "three.test"], 64, 150).await;
    let m = metrics(proxy.admin_addr()).await;
    let key = format!("http1://{}", b.addr);
    let opened = metric_sum(&m, "portcullis_pool_connections_opened_total", &[&key]);
    eprintln!("ok={ok} accepted={} opened={opened}", b.accepted());
    assert_eq!(ok, 64 * 150);
    // At most one connection per concurrent client, and a little slack for a
    // connection the backend had not finished with when it was wanted again.
    assert!(
        b.accepted() <= 72,
        "backend accepted {} connections for 64 clients: the pool churns",
        b.accepted()
    );
    proxy.shutdown().await;
}

/// Issue 12, finding 1: one farm with two backends and 64 clients opened 40,890
/// connections. Here 96 clients, about 48 at once on each backend, above the default
/// `maxIdle` of 32. A guard, not a reproduction: in one process this steady load keeps
/// fewer than 32 connections idle at any moment, so the old idle cap did not churn here
/// either (96 opened before the change, 96-101 after). The bench's churn run
/// (`BENCH_SCENARIOS=churn bench/run.sh`) measures the field report's case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_over_two_backends_does_not_churn() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let proxy = Proxy::start(
        "churn2",
        &[site("two", &["two.test"]).servers([address_server(b1.addr), address_server(b2.addr)])],
    )
    .await;
    let ok = steady_load(proxy.addr, &["two.test"], 96, 100).await;
    let accepted = b1.accepted() + b2.accepted();
    eprintln!("ok={ok} accepted={} + {}", b1.accepted(), b2.accepted());
    assert_eq!(ok, 96 * 100);
    // Each backend gets at most as many connections as requests were in flight on it
    // at once: about half the clients each, a little more when round robin bunches.
    assert!(
        accepted <= 130,
        "the backends accepted {accepted} connections for 96 clients: the pool churns"
    );
    proxy.shutdown().await;
}
