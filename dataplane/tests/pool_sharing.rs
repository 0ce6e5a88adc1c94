//! Two farms naming one backend differently share one pool and its limit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farms_naming_one_backend_share_one_pool() {
    let b = Backend::start("b").await;
    let limits = "  upstream: {keepAlive: {maxConnections: 8, maxIdle: 8}}\n";
    let proxy = Proxy::start(
        "pool",
        &[
            farm_yaml(
                "by-address",
                &["one.test"],
                &["/"],
                &[addr_server(b.addr)],
                limits,
            ),
            farm_yaml(
                "by-name",
                &["two.test"],
                &["/"],
                &[host_server("localhost", b.addr.port())],
                limits,
            ),
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
