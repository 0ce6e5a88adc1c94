//! Hot reload under load keeps pools; an invalid config is refused whole.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// Farm `b` publishing `b.test/` on `backend`; version `n` sends `Host: v<n>.internal`,
/// so the backend tells which version served a request.
fn version(backend: &Backend, n: usize) -> FarmBuilder {
    site("b", &["b.test"])
        .server(address_server(backend.addr))
        .with(|spec| spec.backend_host = Some(format!("v{n}.internal")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing_and_keep_pools() {
    let b = Backend::start("b").await;
    let farm = |n: usize| version(&b, n);
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
    // An invalid change is refused and the last good config keeps serving. Raw text on
    // purpose: no typed ServerFarm can have a list for a spec.
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

/// Reads the admin server's `/status` document.
async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(&get(admin, "admin", "/status").await.2).unwrap()
}

/// Issue 12, finding 2: a farm edit that fails validation (a server with both `host`
/// and `address`) left the farm out, so its site answered 404 while the reload counted
/// as a success. The farm's last good version keeps serving; the reload is a failure in
/// the metric and in `/status`, and the other farm's edit still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_farm_edit_keeps_its_last_good_version_serving() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let farm_a = |server: Server| site("a", &["a.test"]).server(server);
    let farm_b = |vhost: &str| {
        site("b", &["b.test"])
            .server(address_server(b.addr))
            .with(|spec| spec.backend_host = Some(vhost.to_owned()))
    };
    let proxy = Proxy::start(
        "keep",
        &[farm_a(address_server(a.addr)), farm_b("v1.internal")],
    )
    .await;
    assert_eq!(get(proxy.addr, "a.test", "/").await.0, 200);

    // Raw text on purpose: the refused edit is a server with both host and address,
    // written as a person would write it.
    let both = format!(
        "apiVersion: portcullis.io/v1alpha1\nkind: ServerFarm\nmetadata: {{name: a, namespace: default}}\nspec:\n  arrayRef: {{name: edge}}\n  publish: {{hosts: [\"a.test\"], paths: [\"/\"]}}\n  servers:\n  - {{host: localhost, address: \"{}\", port: {}}}\n",
        a.addr.ip(),
        a.addr.port()
    );
    proxy
        .reload_text(&format!("{both}---\n{}", farm_b("v2.internal").yaml()))
        .await;
    // The good farm's edit applied...
    get(proxy.addr, "b.test", "/").await;
    assert_eq!(b.seen().last().unwrap().headers["host"], "v2.internal");
    // ...and the refused farm still serves its last good version.
    let (code, _, body) = get(proxy.addr, "a.test", "/").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(a.seen().len(), 2);

    let m = metrics(proxy.admin_addr()).await;
    assert!(
        metric_sum(
            &m,
            "portcullis_config_reloads_total",
            &["outcome=\"failure\""]
        ) >= 1.0
    );
    let s = status(proxy.admin_addr()).await;
    assert_eq!(s["lastReload"]["outcome"], "failure", "{s}");
    assert_eq!(
        s["lastReload"]["keptFarms"],
        serde_json::json!(["default/a"]),
        "{s}"
    );
    let errors = s["lastReload"]["errors"].to_string();
    assert!(
        errors.contains("ServerFarm default/a: spec.servers[0]"),
        "{errors}"
    );

    // Fixing the farm clears the failure.
    proxy
        .reload(&[farm_a(address_server(b.addr)), farm_b("v2.internal")])
        .await;
    let s = status(proxy.admin_addr()).await;
    assert_eq!(s["lastReload"]["outcome"], "success", "{s}");
    assert_eq!(get(proxy.addr, "a.test", "/").await.0, 200);
    assert_eq!(b.seen().len(), 2);
    proxy.shutdown().await;
}

/// Issue 12, finding 2: a farm file rewritten with a plain `>` redirect is read while
/// empty or half written; that parsed as "no farm" and the site answered 404 until the
/// next poll (12 of 20 writes). Each write here holds the truncated and the half-written
/// state for longer than a poll; a client asking all the while never gets a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farm_file_caught_half_written_never_takes_the_site_down() {
    use std::io::Write as _;
    let b = Backend::start("b").await;
    let farm = |n: usize| version(&b, n);
    let proxy = Proxy::start("halfwritten", &[farm(0)]).await;
    let addr = proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let codes = Arc::new(parking_lot::Mutex::new(std::collections::BTreeMap::new()));
    let client = {
        let (stop, codes) = (stop.clone(), codes.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let code = c.get("b.test", "/").await.map_or(0, |r| r.0);
                *codes.lock().entry(code).or_insert(0usize) += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let path = proxy.dir.path().join("farm.yaml");
    for n in 1..=10 {
        // The text is cut in two on purpose: the first part is no whole manifest.
        let text = farm(n).yaml();
        let cut = text.len() * n / 11;
        // `>` truncates first, then the writer fills the file in pieces.
        let mut f = std::fs::File::create(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        f.write_all(&text.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        f.write_all(&text.as_bytes()[cut..]).unwrap();
        drop(f);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_until(Duration::from_secs(5), || {
        b.seen()
            .last()
            .is_some_and(|s| s.headers["host"] == "v10.internal")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let codes = codes.lock().clone();
    eprintln!("status codes seen: {codes:?}");
    assert_eq!(
        codes.keys().copied().collect::<Vec<u16>>(),
        [200],
        "{codes:?}"
    );
    proxy.shutdown().await;
}

/// A reload's parsing and snapshot build (hash rings included) run off the runtime's
/// workers: on a one-thread runtime, requests keep being answered while a large config
/// loads (issue 12).
#[tokio::test]
#[allow(
    clippy::disallowed_methods,
    reason = "the client paces itself on a thread of its own, outside the runtime"
)]
async fn a_large_reload_does_not_stall_serving() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("reload-large", &[plain_farm(&b)]).await;
    let addr = proxy.addr;
    // A client on a thread of its own, timing every round trip.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut slowest = Duration::ZERO;
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                let sent = std::time::Instant::now();
                tcp.write_all(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
                    .unwrap();
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\nb") {
                    let n = tcp.read(&mut buf).unwrap();
                    assert!(n > 0, "the proxy closed the connection");
                    got.extend_from_slice(&buf[..n]);
                }
                slowest = slowest.max(sent.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            slowest
        })
    };
    // Many farms, each a hash ring of 16 000 points (weight 1000).
    let mut farms = vec![plain_farm(&b)];
    for i in 0..FARMS {
        let name = format!("f{i}");
        farms.push(site(&name, &[&format!("{name}.test")]).server(Server {
            weight: 1000,
            ..address_server(b.addr)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let before = proxy.config_hash();
    proxy.dir.write("farm.yaml", &manifests(&farms));
    wait_until(Duration::from_secs(60), || proxy.config_hash() != before).await;
    let reload = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    // Joined off the runtime: the client may be waiting for an answer it serves.
    let slowest = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    assert_eq!(get(addr, "f7.test", "/").await.0, 200);
    assert!(
        reload >= Duration::from_millis(500),
        "the reload was not large: {reload:?}"
    );
    assert!(
        slowest < Duration::from_millis(250),
        "a request waited {slowest:?} while a {reload:?} reload ran"
    );
    proxy.shutdown().await;
}

const FARMS: usize = 200;
