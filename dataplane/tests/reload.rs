//! Hot reload under load keeps pools; an invalid config is refused whole.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing_and_keep_pools() {
    let b = Backend::start("b").await;
    let farm = |n: usize| {
        farm_yaml(
            "b",
            &["b.test"],
            &["/"],
            &[addr_server(b.addr)],
            &format!("  backendHost: v{n}.internal\n"),
        )
    };
    let proxy = Proxy::start("reload", &[farm(0)]).await;
    let addr = proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                match c.get("b.test", "/").await {
                    Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for n in 1..=20 {
        proxy.reload(&[farm(n)]).await;
    }
    let last = proxy.config_hash();
    // An invalid change is refused and the last good config keeps serving.
    proxy
        .dir
        .write("farm.yaml", "kind: ServerFarm\nspec: [not, a, farm]\n");
    let admin = proxy.admin_addr();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(admin).await;
        if metric_sum(
            &m,
            "portcullis_config_reloads_total",
            &["outcome=\"failure\""],
        ) >= 1.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed reload counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.config_hash(), last);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    // Four sequential clients need at most four upstream connections, reloads or not.
    assert!(
        b.accepted() <= 4,
        "backend accepted {} connections",
        b.accepted()
    );
    let seen = b.seen();
    assert_eq!(seen.last().unwrap().headers["host"], "v20.internal");
    proxy.shutdown().await;
}
