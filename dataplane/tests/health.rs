//! Verifiers and failover.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Probes `GET /healthz` with `Host: probe.internal` every 100 ms; two results in a row
/// change a server's state.
fn probe_healthz() -> ConnectivityVerifier {
    ConnectivityVerifier {
        path: "/healthz".into(),
        host: Some("probe.internal".into()),
        interval: Some(duration("100ms")),
        timeout: Some(duration("100ms")),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        ..defaults()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_takes_a_failing_endpoint_out_and_brings_it_back() {
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    let proxy = Proxy::start(
        "verifier",
        &[site("v", &["v.test"])
            .servers([address_server(good.addr), address_server(bad.addr)])
            .with(|spec| spec.connectivity_verifier = Some(probe_healthz()))],
    )
    .await;
    let addr = proxy.addr;
    // The probe carries the configured Host and path.
    wait_until(Duration::from_secs(3), || {
        bad.seen().iter().any(|s| s.path == "/healthz")
    })
    .await;
    let probe = bad
        .seen()
        .into_iter()
        .find(|s| s.path == "/healthz")
        .unwrap();
    assert_eq!(probe.headers["host"], "probe.internal");

    bad.failing.store(true, Ordering::SeqCst);
    // Two failed probes (~200-300 ms) take it out.
    let key = format!("http1://{}", bad.addr);
    let admin = proxy.admin_addr();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = metrics(admin).await;
        if metric_sum(&m, "portcullis_verifier_healthy", &[&key]) == 0.0 && m.contains(&key) {
            break;
        }
        assert!(Instant::now() < deadline, "endpoint never marked unhealthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reload that keeps both identities keeps the verdict: no traffic to `bad`.
    proxy
        .reload(&[site("v", &["v.test"])
            .servers([address_server(good.addr), address_server(bad.addr)])
            .with(|spec| {
                spec.backend_host = Some("reloaded.internal".into());
                spec.connectivity_verifier = Some(probe_healthz());
            })])
        .await;
    let before = bad.seen().iter().filter(|s| s.path != "/healthz").count();
    let mut c = Client::connect(addr).await;
    for _ in 0..30 {
        let (s, _, body) = c.get("v.test", "/x").await.unwrap();
        assert_eq!((s, body.as_str()), (200, "good"));
    }
    let after = bad.seen().iter().filter(|s| s.path != "/healthz").count();
    assert_eq!(before, after, "traffic reached an endpoint that was out");

    bad.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, _, body) = c.get("v.test", "/x").await.unwrap();
        if body == "bad" {
            break;
        }
        assert!(Instant::now() < deadline, "endpoint never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_loses_only_in_flight_requests() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let servers = [address_server(one.addr), address_server(two.addr)];
    let farm = site("f", &["f.test"]).servers(servers);
    let proxy = Proxy::start("failover", &[farm]).await;
    let addr = proxy.addr;
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let failed_before = Arc::new(AtomicUsize::new(0));
    let failed_after = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients = 8;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (killed, stop, fb, fa, ok) = (
            killed.clone(),
            stop.clone(),
            failed_before.clone(),
            failed_after.clone(),
            ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                // Requests started after the kill settled must all succeed.
                let after = killed.load(Ordering::SeqCst);
                match c.get("f.test", "/slow/10").await {
                    Ok((200, _, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    r => {
                        if after {
                            fa.fetch_add(1, Ordering::Relaxed);
                        } else {
                            fb.fetch_add(1, Ordering::Relaxed);
                        }
                        eprintln!("failed (after kill: {after}): {r:?}");
                        c = Client::connect(addr).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    one.kill();
    // Requests in flight on `one` at this moment may fail.
    tokio::time::sleep(Duration::from_millis(50)).await;
    killed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        failed_before.load(Ordering::Relaxed) <= clients,
        "lost more than in flight"
    );
    assert_eq!(failed_after.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    proxy.shutdown().await;
}

/// Issue 12, section 5: `portcullis_verifier_healthy` ignored passive ejection and kept
/// the series of endpoints a reload removed. It says whether each endpoint is in service
/// for its farm now, whatever took it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_service_gauge_follows_passive_ejection_and_forgets_removed_endpoints() {
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    bad.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let farm = |servers: &[Server]| site("f", &["f.test"]).servers(servers.iter().cloned());
    let proxy = Proxy::start(
        "inservice",
        &[farm(&[address_server(good.addr), address_server(bad.addr)])],
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    for _ in 0..20 {
        let _ = c.get("f.test", "/").await;
    }
    let series = |m: &str, b: &Backend| {
        let key = format!("endpoint=\"http1://{}\"", b.addr);
        m.lines()
            .find(|l| l.starts_with("portcullis_verifier_healthy{") && l.contains(&key))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(series(&m, &good).as_deref(), Some("1"), "{m}");
    assert_eq!(
        series(&m, &bad).as_deref(),
        Some("0"),
        "passive ejection not shown:\n{m}"
    );
    proxy.reload(&[farm(&[address_server(good.addr)])]).await;
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(series(&m, &good).as_deref(), Some("1"), "{m}");
    assert_eq!(
        series(&m, &bad),
        None,
        "a removed endpoint kept its series:\n{m}"
    );
    proxy.shutdown().await;
}
