//! A GatewayArray is an array: real `portcullis-dataplane` processes on three loopback
//! addresses (same port), one keyring file, backends that count sessions.
//!
//! - failover: a session started on member A continues on B and C, and after A is
//!   killed, with no new session;
//! - rotation under load: the keyring file goes through add-as-accept, promote, retire
//!   while clients keep sending: no cookie rejected, no session moves;
//! - foreign array: a member with another keyring drops the cookies (counted), the
//!   backend sees none of them, the client gets a new session and no error.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Client, TempDir};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use portcullis_crds::keyring::KeyState;
use portcullis_crds::v1alpha1::{Affinity, AffinityMode, CookieProtection, LoadBalancing};
use portcullis_testkit::session::keyring;
use portcullis_testkit::{ArrayBuilder, FarmBuilder, address_server, defaults, duration};
use tokio::net::TcpListener;

const HOST: &str = "shop.test";
const FARM: &str = "default/shop";
const AFFINITY: &str = "shop-affinity";
/// The backend's own session cookie.
const APP: &str = "app";
/// The keyring file in the array's directory.
const KEYRING: &str = "keyring.yaml";

// ---------------------------------------------------------------------------------------
// Backends that count sessions
// ---------------------------------------------------------------------------------------

/// A backend that keeps its own sessions in an `app` cookie: a request without an
/// `app` cookie it issued starts a new session (counted). Every response sets the cookie
/// again (a sliding session, as many frameworks do). It records every Cookie header.
struct Backend {
    addr: SocketAddr,
    sessions: Arc<AtomicUsize>,
    cookies_seen: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let cookies_seen = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let b = Backend {
            addr,
            sessions: sessions.clone(),
            cookies_seen: cookies_seen.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let sessions = sessions.clone();
                let seen = cookies_seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let sessions = sessions.clone();
                        let seen = seen.clone();
                        async move {
                            let cookie = common::cookie_header(req.headers());
                            seen.lock().push(cookie.clone());
                            let prefix = format!("{APP}={name}-");
                            let own = cookie
                                .split(';')
                                .map(str::trim)
                                .find(|c| c.starts_with(&prefix))
                                .map(|c| c[APP.len() + 1..].to_owned());
                            let id = own.unwrap_or_else(|| {
                                let n = sessions.fetch_add(1, Ordering::SeqCst);
                                format!("{name}-{n}")
                            });
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("x-backend", name)
                                    .header("set-cookie", format!("{APP}={id}; Path=/; HttpOnly"))
                                    .body(Full::new(Bytes::from(name)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        b
    }

    fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Every Cookie header received must be free of session-layer cookies.
    fn assert_never_saw_sealed_cookies(&self) {
        for c in self.cookies_seen.lock().iter() {
            assert!(
                !c.contains("__pc_") && !c.contains(AFFINITY) && !c.contains("v1."),
                "a backend received a session-layer cookie: {c}"
            );
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------
// Members: the real binary
// ---------------------------------------------------------------------------------------

/// The manifests: one HTTP listener on `port`, the shop farm on both backends with
/// cookie affinity and cookie protection.
fn write_manifests(dir: &Path, port: u16, backends: &[&Backend]) {
    std::fs::create_dir_all(dir).unwrap();
    let array = ArrayBuilder::new("edge").http("http", port).with(|spec| {
        spec.drain_timeout = Some(duration("2s"));
        spec.max_session_time = Some(duration("1h"));
    });
    let farm = FarmBuilder::new("shop")
        .hosts([HOST])
        .paths(["/"])
        .servers(backends.iter().map(|b| address_server(b.addr)))
        .with(|spec| {
            spec.load_balancing = LoadBalancing::RoundRobin;
            spec.affinity = Some(Affinity {
                mode: AffinityMode::Cookie,
                cookie_name: Some(AFFINITY.into()),
                max_session_time: Some(duration("1h")),
                idle_timeout: Some(duration("30m")),
                ..defaults()
            });
            spec.cookie_protection = CookieProtection::Encrypt;
        });
    std::fs::write(dir.join("array.yaml"), array.yaml()).unwrap();
    std::fs::write(dir.join("farm.yaml"), farm.yaml()).unwrap();
}

/// A port free on 127.0.0.1 a moment ago (manifests cannot say port 0), and on the other
/// member addresses too.
fn free_port(ips: &[IpAddr]) -> u16 {
    for _ in 0..50 {
        let port = common::free_port();
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on every member address");
}

struct Member {
    name: &'static str,
    listen: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    fn spawn(
        name: &'static str,
        ip: &str,
        port: u16,
        manifests: &Path,
        keyring: &Path,
        logs: &Path,
    ) -> Member {
        let ip: IpAddr = ip.parse().unwrap();
        let admin = SocketAddr::new(ip, free_port(&[ip]));
        let log = logs.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-dataplane"))
            .arg("--manifests")
            .arg(manifests)
            .arg("--keyring")
            .arg(keyring)
            .arg("--bind")
            .arg(ip.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info,portcullis_dataplane::session=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("failed to start portcullis-dataplane");
        Member {
            name,
            listen: SocketAddr::new(ip, port),
            admin,
            child: Some(child),
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                send(self.admin, "admin", "/readyz", ""),
            )
            .await;
            if matches!(probe, Ok(Ok(Reply { status: 200, .. }))) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "member {} exited with {status}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {} not ready in 30s:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admin_get(&self, path: &str) -> String {
        send(self.admin, "admin", path, "").await.unwrap().body
    }

    /// `portcullis_session_cookie_rejected_total` summed over every reason, and the
    /// samples themselves.
    async fn rejected(&self) -> (f64, Vec<String>) {
        let text = self.admin_get("/metrics").await;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("portcullis_session_cookie_rejected_total{"))
            .map(str::to_owned)
            .collect();
        let sum = lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (sum, lines)
    }

    async fn key_ids(&self) -> Vec<String> {
        let status: serde_json::Value =
            serde_json::from_str(&self.admin_get("/status").await).unwrap();
        status["keyIds"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// A browser-like client
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

/// One GET on a fresh connection, with `cookie` unless it is empty.
async fn send(addr: SocketAddr, host: &str, path: &str, cookie: &str) -> Result<Reply, String> {
    let cookie = [("cookie", cookie)];
    let extra: &[_] = if cookie[0].1.is_empty() { &[] } else { &cookie };
    let (status, headers, body) = Client::try_connect(addr)
        .await?
        .get_with(host, path, extra)
        .await?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A cookie jar for one host (names only: every cookie here has Path=/).
#[derive(Default, Clone)]
struct Browser {
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// GET / through `member`; stores Set-Cookies; returns the backend that answered.
    async fn get(&mut self, member: SocketAddr) -> Result<String, String> {
        let reply = send(member, HOST, "/", &self.cookie_header()).await?;
        if reply.status != 200 {
            return Err(format!(
                "status {} from {member}: {}",
                reply.status, reply.body
            ));
        }
        for set in reply.headers.get_all(http::header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap().trim();
            let (name, value) = pair.split_once('=').unwrap();
            if set.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        Ok(reply.headers["x-backend"].to_str().unwrap().to_owned())
    }

    fn affinity(&self) -> Option<&str> {
        self.jar.get(AFFINITY).map(String::as_str)
    }

    /// Whether every cookie in the jar was sealed with `key`.
    fn all_sealed_with(&self, key: &str) -> bool {
        let tag = format!("v1.{key}.");
        self.jar.iter().all(|(n, v)| {
            if n == AFFINITY {
                v.starts_with(&tag)
            } else {
                n.starts_with(&format!("__pc_{tag}"))
            }
        })
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Array {
    /// Holds the manifests, the keyring file and the members' logs.
    dir: TempDir,
    members: Vec<Member>,
    backends: [Backend; 2],
}

impl Array {
    async fn start(ips: &[&'static str], keys: &[(&str, u8, KeyState)]) -> Array {
        let backends = [Backend::start("one").await, Backend::start("two").await];
        let dir = TempDir::new("array");
        let manifests = dir.0.join("manifests");
        let addrs: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        let port = free_port(&addrs);
        write_manifests(&manifests, port, &[&backends[0], &backends[1]]);
        let keyring = dir.write(KEYRING, &keyring(keys));
        let names = ["a", "b", "c", "d"];
        let mut members: Vec<Member> = ips
            .iter()
            .zip(names)
            .map(|(ip, name)| Member::spawn(name, ip, port, &manifests, &keyring, &dir.0))
            .collect();
        for m in &mut members {
            m.wait_ready().await;
        }
        Array {
            dir,
            members,
            backends,
        }
    }

    /// Replaces the keyring file every member watches.
    fn set_keyring(&self, keys: &[(&str, u8, KeyState)]) {
        self.dir.write(KEYRING, &keyring(keys));
    }

    fn sessions(&self) -> usize {
        self.backends.iter().map(Backend::sessions).sum()
    }

    async fn total_rejected(&self) -> (f64, Vec<String>) {
        let mut sum = 0.0;
        let mut lines = Vec::new();
        for m in &self.members {
            if m.child.is_some() {
                let (s, l) = m.rejected().await;
                sum += s;
                lines.extend(l.into_iter().map(|l| format!("{}: {l}", m.name)));
            }
        }
        (sum, lines)
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_the_session_on_its_backend() {
    let mut array = Array::start(
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        &[("k1", 1, KeyState::Active)],
    )
    .await;
    let (a, b, c) = (
        array.members[0].listen,
        array.members[1].listen,
        array.members[2].listen,
    );
    let mut browser = Browser::default();
    let home = browser.get(a).await.unwrap();
    assert!(
        browser.affinity().is_some(),
        "member A issued no affinity cookie"
    );
    assert!(
        browser.jar.keys().any(|n| n.starts_with("__pc_")),
        "the backend's cookie name is sealed: {:?}",
        browser.jar.keys()
    );
    assert_eq!(array.sessions(), 1);

    for member in [b, c, b, c, a, b, c] {
        assert_eq!(
            browser.get(member).await.unwrap(),
            home,
            "session moved via {member}"
        );
    }
    assert_eq!(array.sessions(), 1, "a member started a new session");

    array.members[0].kill();
    for i in 0..20 {
        let member = if i % 2 == 0 { b } else { c };
        assert_eq!(
            browser.get(member).await.unwrap(),
            home,
            "after A died, via {member}"
        );
    }
    assert_eq!(array.sessions(), 1, "no new session after failover");
    let (rejected, lines) = array.total_rejected().await;
    assert_eq!(rejected, 0.0, "{lines:?}");
    for backend in &array.backends {
        backend.assert_never_saw_sealed_cookies();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_rejects_nothing_and_moves_no_session() {
    let array = Array::start(
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        &[("old", 1, KeyState::Active)],
    )
    .await;
    let members: Vec<SocketAddr> = array.members.iter().map(|m| m.listen).collect();

    // Clients with live sessions, spread over both backends.
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut browser = Browser::default();
        let home = browser.get(members[i % 3]).await.unwrap();
        clients.push((browser, home));
    }
    let sessions_before = array.sessions();
    assert_eq!(sessions_before, 4);

    // They keep sending through every member while the keyring changes.
    let stop = Arc::new(AtomicBool::new(false));
    let jars: Arc<Mutex<Vec<Browser>>> =
        Arc::new(Mutex::new(clients.iter().map(|(b, _)| b.clone()).collect()));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for (i, (mut browser, home)) in clients.into_iter().enumerate() {
        let (stop, jars, sent, members) =
            (stop.clone(), jars.clone(), sent.clone(), members.clone());
        load.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(Ordering::SeqCst) {
                let member = members[n % members.len()];
                n += 1;
                let got = browser.get(member).await.unwrap();
                assert_eq!(got, home, "client {i}: session moved via {member}");
                jars.lock()[i] = browser.clone();
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let all_have = |key: &'static str| {
        let array = &array;
        move || async move {
            for m in &array.members {
                if !m.key_ids().await.iter().any(|k| k == key) {
                    return false;
                }
            }
            true
        }
    };

    // 1. Add the new key as accept; wait until every member's /status shows it.
    array.set_keyring(&[("old", 1, KeyState::Active), ("new", 2, KeyState::Accept)]);
    wait_for(
        "every member has the new key",
        Duration::from_secs(15),
        all_have("new"),
    )
    .await;

    // 2. Promote it. Live sessions migrate as their cookies are reissued under it.
    array.set_keyring(&[("old", 1, KeyState::Accept), ("new", 2, KeyState::Active)]);
    // Every member seals with the new key now (a probe per member; each is a session).
    let probes = AtomicUsize::new(0);
    for &member in &members {
        let probes = &probes;
        wait_for(
            "the member seals with the new key",
            Duration::from_secs(15),
            || async move {
                let mut probe = Browser::default();
                probe.get(member).await.unwrap();
                probes.fetch_add(1, Ordering::SeqCst);
                probe.affinity().is_some_and(|v| v.starts_with("v1.new."))
            },
        )
        .await;
    }
    wait_for(
        "every live cookie resealed with the new key",
        Duration::from_secs(20),
        || {
            let jars = jars.clone();
            async move { jars.lock().iter().all(|b| b.all_sealed_with("new")) }
        },
    )
    .await;

    // 3. The window has passed for every live session: retire the old key.
    array.set_keyring(&[("new", 2, KeyState::Active)]);
    wait_for(
        "every member dropped the old key",
        Duration::from_secs(15),
        || {
            let array = &array;
            async move {
                for m in &array.members {
                    if m.key_ids().await != ["new"] {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let after_retire = sent.load(Ordering::SeqCst);
    wait_for(
        "more requests after the retirement",
        Duration::from_secs(10),
        || {
            let sent = sent.clone();
            async move { sent.load(Ordering::SeqCst) >= after_retire + 24 }
        },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await
            .expect("a client saw its session move or an error");
    }
    let (rejected, lines) = array.total_rejected().await;
    assert_eq!(rejected, 0.0, "cookies rejected during rotation: {lines:?}");
    assert_eq!(
        array.sessions(),
        sessions_before + probes.load(Ordering::SeqCst),
        "a session was restarted"
    );
    for backend in &array.backends {
        backend.assert_never_saw_sealed_cookies();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_array_drops_the_cookies_and_starts_a_new_session() {
    let ours = Array::start(&["127.0.0.1"], &[("ours", 1, KeyState::Active)]).await;
    // Another array publishing the same farm with its own keyring.
    let foreign = Array::start(&["127.0.0.2"], &[("theirs", 2, KeyState::Active)]).await;

    let mut browser = Browser::default();
    browser.get(ours.members[0].listen).await.unwrap();
    browser.jar.insert("theme".into(), "dark".into());
    let carried = browser.jar.len();
    assert!(
        carried >= 3,
        "affinity, sealed app cookie and a plain one: {:?}",
        browser.jar.keys()
    );

    let reply = send(
        foreign.members[0].listen,
        HOST,
        "/",
        &browser.cookie_header(),
    )
    .await
    .unwrap();
    assert_eq!(
        reply.status, 200,
        "the client sees no error: {}",
        reply.body
    );
    let seen = foreign
        .backends
        .iter()
        .flat_map(|b| b.cookies_seen.lock().clone())
        .collect::<Vec<_>>();
    // Nothing sealed reaches the backend, and on a protected farm neither does the
    // plain cookie the browser made up: its servers never set it.
    assert_eq!(seen, [""], "no cookie reaches the backend");
    assert_eq!(foreign.sessions(), 1, "a new session started");
    let set: Vec<&str> = reply
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        set.iter()
            .any(|s| s.starts_with(&format!("{AFFINITY}=v1.theirs."))),
        "a new affinity cookie: {set:?}"
    );

    let (rejected, lines) = foreign.members[0].rejected().await;
    assert_eq!(rejected, carried as f64, "{lines:?}");
    let reason = |r: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("farm=\"{FARM}\"")) && l.contains(r))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        reason("reason=\"unknown_key\""),
        Some((carried - 1) as f64),
        "{lines:?}"
    );
    assert_eq!(reason("reason=\"unsealed\""), Some(1.0), "{lines:?}");
    let log = foreign.members[0].logs();
    assert!(
        log.contains("unknown_key"),
        "the debug log says why:\n{log}"
    );
    assert_eq!(ours.total_rejected().await.0, 0.0);
}
