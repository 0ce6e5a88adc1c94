//! Shared harness: backends built with hyper, the dataplane started in-process or as the
//! real binary, raw and hyper clients.
#![allow(dead_code, missing_docs)]

pub use portcullis_crds::v1alpha1::*;
pub use portcullis_testkit::{
    ArrayBuilder, FarmBuilder, address_server, defaults, duration, manifests,
};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as a backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
}

/// A backend on 127.0.0.1 that answers every request, counts accepted connections and
/// records what it saw.
///
/// Paths: `/slow/<ms>` waits, `/status/<code>` answers that code, `/ws` echoes a
/// WebSocket-style upgrade as a raw byte echo; anything else answers 200 `name`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, every request answers 500 (to fail verifiers).
    pub failing: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let stop = tokio_util::sync::CancellationToken::new();
        let b = Backend {
            addr,
            name: name.to_owned(),
            accepted: accepted.clone(),
            seen: seen.clone(),
            failing: failing.clone(),
            stop: stop.clone(),
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            let conns = tokio_util::task::TaskTracker::new();
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                let failing = failing.clone();
                let name = name.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let seen = seen.clone();
                        let failing = failing.clone();
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(answer(req, &name, &seen, &failing).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        b
    }

    /// Stops accepting and drops every open connection (like a killed process).
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Out = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    mut req: http::Request<Incoming>,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    failing: &AtomicBool,
) -> http::Response<Out> {
    seen.lock().push(Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let text = |code: u16, body: String| {
        http::Response::builder()
            .status(code)
            .header("x-backend", name)
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap()
    };
    if failing.load(Ordering::SeqCst) {
        return text(500, "failing".into());
    }
    if path == "/ws" {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let mut io = TokioIo::new(u);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        return http::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Empty::new().boxed())
            .unwrap();
    }
    if path == "/echo" {
        // Streams the request body back as it arrives.
        let body = req
            .into_body()
            .map_err(|_| -> Infallible { unreachable!("test body") });
        return http::Response::builder()
            .header("x-backend", name)
            .body(body.boxed())
            .unwrap();
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return text(code.parse().unwrap_or(500), format!("{name}\n"));
    }
    // Drain the request body so keep-alive works.
    let _ = req.into_body().collect().await;
    text(200, name.to_owned())
}

/// A port that was free a moment ago (manifests cannot say port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The GatewayArray `edge` the tests run on, before its listeners: a 10 s drain and a
/// 1 s header-read timeout (so slow-client tests finish quickly).
pub fn edge_array() -> ArrayBuilder {
    ArrayBuilder::new("edge")
        .with(|spec| spec.drain_timeout = Some(duration("10s")))
        .limits(ClientLimits {
            header_read_timeout: Some(duration("1s")),
            ..defaults()
        })
}

/// [`edge_array`] with one HTTP listener `web` on `port`.
pub fn web_array(port: u16) -> ArrayBuilder {
    edge_array().http("web", port)
}

/// The ServerFarm `name` publishing `hosts` at `/` (add paths with `.paths`, which then
/// come after `/`; use [`FarmBuilder::new`] for a farm without `/`).
pub fn site(name: &str, hosts: &[&str]) -> FarmBuilder {
    FarmBuilder::new(name)
        .hosts(hosts.iter().copied())
        .paths(["/"])
}

/// The ServerFarm named after `backend` that publishes `<name>.test/` to it alone.
pub fn plain_farm(backend: &Backend) -> FarmBuilder {
    let name = &backend.name;
    site(name, &[&format!("{name}.test")]).server(address_server(backend.addr))
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-dp-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Writes atomically (rename), as an operator's tooling or a kubelet would; returns
    /// the file's path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        let path = self.0.join(name);
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Writes `array.yaml`, built by `array` for a free port, and `farm.yaml` holding
    /// `farms`; returns the port.
    pub fn write_manifests(
        &self,
        array: impl FnOnce(u16) -> ArrayBuilder,
        farms: &[FarmBuilder],
    ) -> u16 {
        let port = free_port();
        self.write("array.yaml", &array(port).yaml());
        self.write("farm.yaml", &manifests(farms));
        port
    }
}

/// Writes a self-signed certificate for `host` as the TLS Secret `secret` under `dir`'s
/// `certs/` (where local mode looks); returns it.
pub fn write_cert(
    dir: &TempDir,
    secret: &str,
    host: &str,
) -> rustls::pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    let base = dir.path().join("certs").join(secret);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(base.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn options(manifests: &Path) -> portcullis_dataplane::Options {
    portcullis_dataplane::Options {
        manifests: Some(manifests.to_owned()),
        config: None,
        bind: "127.0.0.1".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        keyring: None,
        certs: None,
        dns_refresh: Duration::from_secs(30),
        poll_interval: Duration::from_millis(100),
        tracing: None,
    }
}

/// Starts the dataplane in-process on `dir` and waits until it is ready.
pub async fn start(dir: &Path) -> portcullis_dataplane::Handle {
    let h = portcullis_dataplane::start(options(dir)).await.unwrap();
    wait_until(Duration::from_secs(10), || h.is_ready()).await;
    h
}

/// The dataplane running in-process on a temp dir of manifests with one listener.
pub struct Proxy {
    pub handle: portcullis_dataplane::Handle,
    /// The manifests; rewrite `farm.yaml` here to reload.
    pub dir: TempDir,
    /// The listener's bound address.
    pub addr: SocketAddr,
}

impl Proxy {
    /// One HTTP listener ([`web_array`]) and `farms`.
    pub async fn start(tag: &str, farms: &[FarmBuilder]) -> Proxy {
        Proxy::start_in(TempDir::new(tag), web_array, farms).await
    }

    /// One HTTP listener with `limits` in place of [`web_array`]'s, and `farms`.
    pub async fn with_limits(tag: &str, limits: ClientLimits, farms: &[FarmBuilder]) -> Proxy {
        let array = |port| web_array(port).limits(limits);
        Proxy::start_in(TempDir::new(tag), array, farms).await
    }

    /// `dir` (which may hold certificates already) with the GatewayArray `array`
    /// builds for a free port, and `farms`; waits until the dataplane is ready.
    pub async fn start_in(
        dir: TempDir,
        array: impl FnOnce(u16) -> ArrayBuilder,
        farms: &[FarmBuilder],
    ) -> Proxy {
        let port = dir.write_manifests(array, farms);
        let handle = start(dir.path()).await;
        let addr = handle.listener_addr(port).unwrap();
        Proxy { handle, dir, addr }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.handle.admin_addr()
    }

    pub fn config_hash(&self) -> Option<String> {
        self.handle.config_hash()
    }

    /// Replaces `farm.yaml` with `farms` and waits until the dataplane serves a config
    /// with another hash (5 s at most).
    pub async fn reload(&self, farms: &[FarmBuilder]) {
        self.reload_text(&manifests(farms)).await;
    }

    /// [`Proxy::reload`] with `farm.yaml` written as `text` (for farms that no builder
    /// should make).
    pub async fn reload_text(&self, text: &str) {
        let before = self.config_hash();
        self.dir.write("farm.yaml", text);
        wait_until(Duration::from_secs(5), || self.config_hash() != before).await;
    }

    /// Drains and stops the dataplane, then removes its manifests.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends raw bytes and reads until the peer closes or 3 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_pieces(addr, &[bytes]).await
}

/// [`raw`] with the bytes in `pieces`, written 30 ms apart so that the proxy reads each
/// on its own. Writing stops when the proxy has closed.
pub async fn raw_pieces(addr: SocketAddr, pieces: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        if s.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// An answer: status, headers, body.
pub type Reply = (u16, http::HeaderMap, String);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).await.unwrap()
    }

    /// Connects, or says why not (for peers that may not be up yet).
    pub async fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    /// GET `path` with `host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, String> {
        self.get_with(host, path, &[]).await
    }

    /// GET `path` with `host` and `headers`.
    pub async fn get_with(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let mut req = http::Request::get(path).header("host", host);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    Client::connect(addr).await.get(host, path).await.unwrap()
}

/// Every `Cookie` header of a request, joined with `; ` (empty when there is none).
pub fn cookie_header(headers: &http::HeaderMap) -> String {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads the admin server's metrics text.
pub async fn metrics(admin: SocketAddr) -> String {
    get(admin, "admin", "/metrics").await.2
}

/// Sums a metric's samples whose line contains every `parts`.
pub fn metric_sum(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
