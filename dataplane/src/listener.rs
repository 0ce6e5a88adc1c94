//! Client-facing listeners: accept, TLS, HTTP/1.1 and HTTP/2, limits, drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use portcullis_crds::config::{
    DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS,
    ListenerConfig, ListenerProtocol,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::bind::ConnInfo;
use crate::body::RespBody;
use crate::error::ProxyError;
use crate::framing::{Framer, Framing, Gate, MAX_TARGET};
use crate::proxy;
use crate::tls::{ListenerCerts, server_config};

/// What every listener and client connection shares: the proxy's context, and the
/// member's connection counts and limits. The runtime builds it.
pub(crate) struct State {
    pub(crate) proxy: Arc<proxy::Context>,
    /// Open client connections.
    pub(crate) connections: AtomicUsize,
    /// Cancelled when the member stops: listeners stop accepting, idle connections close.
    pub(crate) shutdown: CancellationToken,
    /// Open client connections by client address.
    pub(crate) per_client: Mutex<HashMap<IpAddr, u32>>,
    /// Asks idle keep-alive connections to close: the connection cap was reached.
    pub(crate) reclaim: tokio::sync::Notify,
    /// Milliseconds since `started` of the last "connection refused" log line.
    pub(crate) last_refusal_log: AtomicU64,
    pub(crate) started: std::time::Instant,
}

/// A bound listener.
pub(crate) struct Bound {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: ListenerProtocol,
    pub(crate) certs: Arc<ArcSwap<ListenerCerts>>,
    pub(crate) stop: CancellationToken,
}

/// Binds a listener and starts accepting.
pub(crate) async fn bind(
    shared: Arc<State>,
    cfg: &ListenerConfig,
    ip: IpAddr,
) -> io::Result<Bound> {
    let listener = crate::bind::listen(SocketAddr::new(ip, cfg.port), 1024)?;
    let addr = listener.local_addr()?;
    let certs = Arc::new(ArcSwap::from_pointee(ListenerCerts::default()));
    let stop = shared.shutdown.child_token();
    let tls = (cfg.protocol == ListenerProtocol::Https)
        .then(|| tokio_rustls::TlsAcceptor::from(server_config(certs.clone())));
    tokio::spawn(accept_loop(shared, listener, tls, stop.clone()));
    Ok(Bound {
        addr,
        protocol: cfg.protocol,
        certs,
        stop,
    })
}

async fn accept_loop(
    shared: Arc<State>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, client) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // On `[::]`, IPv4 clients arrive IPv4-mapped (`::ffff:a.b.c.d`): every later use
        // (X-Forwarded-For, source-address affinity, source ranges, logs) wants `a.b.c.d`.
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        let (max, per_client) = shared.proxy.snapshot.load().as_ref().map_or(
            (
                DEFAULT_MAX_CONNECTIONS as usize,
                DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            ),
            |s| {
                (
                    s.config.limits.max_connections as usize,
                    s.config.limits.max_connections_per_client,
                )
            },
        );
        if shared.connections.load(Ordering::Relaxed) >= max {
            // Over the cap: close at once rather than queue, and ask idle keep-alive
            // connections to make room for the next ones.
            shared.reclaim.notify_waiters();
            refuse(&shared, tcp, client, "max-connections");
            continue;
        }
        {
            let mut counts = shared.per_client.lock();
            let n = counts.entry(client.ip()).or_insert(0);
            if *n >= per_client {
                drop(counts);
                refuse(&shared, tcp, client, "per-client");
                continue;
            }
            *n += 1;
        }
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let tls = tls.clone();
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.proxy.tracker.spawn(async move {
            serve_connection(shared2.clone(), tcp, client, tls).await;
            shared2.connections.fetch_sub(1, Ordering::Relaxed);
            let mut counts = shared2.per_client.lock();
            if let Some(n) = counts.get_mut(&client.ip()) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&client.ip());
                }
            }
        });
    }
}

/// Closes a connection refused on accept: counted, and logged at most once a second.
fn refuse(shared: &State, tcp: TcpStream, client: SocketAddr, reason: &'static str) {
    drop(tcp);
    shared
        .proxy
        .metrics
        .connections_refused
        .get_or_create(&crate::metrics::ReasonLabel { reason })
        .inc();
    let now = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let last = shared.last_refusal_log.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && shared
            .last_refusal_log
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(client = %client.ip(), reason, "client connection refused (logged at most once a second; see portcullis_client_connections_refused_total)");
    }
}

/// A client connection's limits, read from the snapshot when it is accepted.
struct ConnLimits {
    header_timeout: Duration,
    max_headers: usize,
    max_header_bytes: usize,
    idle_timeout: Duration,
}

impl ConnLimits {
    fn of(shared: &State) -> Self {
        match shared.proxy.snapshot.load().as_ref() {
            Some(s) => {
                let l = &s.config.limits;
                ConnLimits {
                    header_timeout: l.header_read_timeout.get(),
                    max_headers: l.max_headers as usize,
                    max_header_bytes: l.max_header_bytes as usize,
                    idle_timeout: l.client_idle_timeout.get(),
                }
            }
            None => ConnLimits {
                header_timeout: DEFAULT_HEADER_READ_TIMEOUT.get(),
                max_headers: DEFAULT_MAX_HEADERS as usize,
                max_header_bytes: DEFAULT_MAX_HEADER_BYTES as usize,
                idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT.get(),
            },
        }
    }
}

/// What a connection's service, its socket wrapper and its driver share.
struct Exchanges {
    born: tokio::time::Instant,
    /// Milliseconds after `born` of the last byte read or written.
    activity: AtomicU64,
    /// Requests the server handed the service, and answers the service gave back.
    requests: AtomicU64,
    answers: AtomicU64,
    /// Requests that hyper readied an upgrade for (`CONNECT`, or an `Upgrade` header on
    /// HTTP/1.1): a server that took one keeps the connection to its end, because hyper
    /// hands the socket to the upgrade, switched or not, once it stops.
    upgrades: AtomicU64,
    /// The last answer leaves the connection open for another request (HTTP/1.1, no
    /// `Connection: close` either way, no switch of protocols).
    reusable: AtomicBool,
    /// While set, the server's close of the socket leaves it open: the driver asked it
    /// to stop after the exchange in flight and takes the socket back.
    keep_open: AtomicBool,
}

impl Exchanges {
    fn new() -> Self {
        Exchanges {
            born: tokio::time::Instant::now(),
            activity: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            upgrades: AtomicU64::new(0),
            reusable: AtomicBool::new(false),
            keep_open: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.activity.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// Every request taken since the count was `answers` answers is answered (at least
    /// one), the last one leaves the connection open, and none readied an upgrade since
    /// the count was `upgrades`.
    fn settled_since(&self, (answers, upgrades): (u64, u64)) -> bool {
        let now = self.answers.load(Ordering::Relaxed);
        now > answers
            && self.requests.load(Ordering::Relaxed) == now
            && self.reusable.load(Ordering::Relaxed)
            && self.upgrades.load(Ordering::Relaxed) == upgrades
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.answers.load(Ordering::Relaxed),
            self.upgrades.load(Ordering::Relaxed),
        )
    }
}

async fn serve_connection(
    shared: Arc<State>,
    tcp: TcpStream,
    client: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let limits = ConnLimits::of(&shared);
    let info = ConnInfo {
        client,
        tls: tls.is_some(),
    };
    let Some((io, alpn)) = open(tcp, tls, limits.header_timeout).await else {
        return;
    };
    let target_limit = max_target(max_buf_size(limits.max_header_bytes));
    let framer = match alpn {
        Some(http::Version::HTTP_2) => Framer::h2_only(),
        // ALPN chose HTTP/1.1: an HTTP/2 preface is then a bad HTTP/1 request, not a
        // switch (RFC 9113 section 3.3).
        _ => Framer::new(
            max_buf_size(limits.max_header_bytes),
            limits.max_headers,
            target_limit,
            alpn.is_none(),
        ),
    };
    let exchanges = Arc::new(Exchanges::new());
    let service = service(ServiceContext {
        shared: shared.clone(),
        info,
        framing: framer.framing(),
        exchanges: exchanges.clone(),
        max_headers: limits.max_headers,
        target_limit,
    });
    let mut io = HeadTimeout::new(
        Gate::new(io, framer),
        limits.header_timeout,
        exchanges.clone(),
    );
    let driver = Driver {
        shared,
        limits,
        exchanges,
    };
    if alpn != Some(http::Version::HTTP_2) {
        // HTTP/1 is served one exchange at a time and holds no server (nor its
        // buffers) while the connection idles; only a connection that opens with (the
        // start of) the HTTP/2 preface goes to the server that tells the two apart.
        if !driver.wait_for_request(&mut io).await {
            return;
        }
        if !io.inner.framer().may_be_h2() {
            driver.serve_http1(io, service).await;
            return;
        }
    }
    let mut builder = http_builder(driver.limits.max_headers, driver.limits.max_header_bytes);
    match alpn {
        Some(http::Version::HTTP_2) => builder = builder.http2_only(),
        Some(_) => builder = builder.http1_only(),
        None => {}
    }
    // Boxed, as the driving below: the connection's task then holds neither while an
    // HTTP/1 connection waits for a request.
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    Box::pin(driver.drive(conn.as_mut(), false, |c| c.graceful_shutdown())).await;
}

/// The connection's byte stream, after the TLS handshake on an HTTPS listener, and the
/// protocol ALPN chose; `None` when the handshake failed or did not finish in time.
async fn open(
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> Option<(Pin<Box<dyn crate::pool::Io>>, Option<http::Version>)> {
    let Some(acceptor) = tls else {
        return Some((Box::pin(tcp), None));
    };
    let s = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .ok()?
        .ok()?;
    let alpn = match s.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(http::Version::HTTP_2),
        Some(b"http/1.1") => Some(http::Version::HTTP_11),
        _ => None,
    };
    Some((Box::pin(s), alpn))
}

/// What a connection's service needs.
struct ServiceContext {
    shared: Arc<State>,
    info: ConnInfo,
    framing: Framing,
    exchanges: Arc<Exchanges>,
    max_headers: usize,
    target_limit: usize,
}

/// The service of one client connection: the framer's checks, then the proxy.
fn service(
    cx: ServiceContext,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<RespBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let cx = Arc::new(cx);
    hyper::service::service_fn(move |req: http::Request<Incoming>| {
        cx.exchanges.requests.fetch_add(1, Ordering::Relaxed);
        if req.method() == http::Method::CONNECT
            || (req.version() == http::Version::HTTP_11
                && req.headers().contains_key(http::header::UPGRADE))
        {
            cx.exchanges.upgrades.fetch_add(1, Ordering::Relaxed);
        }
        let admitted = cx.framing.admit(req.method(), req.version());
        // hyper's HTTP/2 server limits the header list's size, not its length.
        let too_many =
            req.version() == http::Version::HTTP_2 && req.headers().len() > cx.max_headers;
        // HTTP/2 has no request line for the framer: its target is held to the same
        // limit here.
        let too_long = req.version() == http::Version::HTTP_2
            && req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > cx.target_limit;
        let keep = req.version() == http::Version::HTTP_11
            && !proxy::connection_has(req.headers(), "close");
        let cx = cx.clone();
        async move {
            let resp = match admitted {
                Err(error) => Ok(error.response()),
                Ok(_) if too_many => Ok(ProxyError::TooManyHeaders.response()),
                Ok(_) if too_long => Ok(ProxyError::UriTooLong.response()),
                Ok(admitted) => {
                    let resp = proxy::handle(cx.shared.proxy.clone(), cx.info, req).await;
                    if let Ok(r) = &resp {
                        admitted.answered(r.status());
                    }
                    resp
                }
            };
            let reusable = keep
                && resp.as_ref().is_ok_and(|r| {
                    r.status() != http::StatusCode::SWITCHING_PROTOCOLS
                        && !proxy::connection_has(r.headers(), "close")
                });
            cx.exchanges.reusable.store(reusable, Ordering::Relaxed);
            cx.exchanges.answers.fetch_add(1, Ordering::Relaxed);
            resp
        }
    })
}

/// Runs the servers of one connection and closes it when it idles too long, when
/// the dataplane drains, or when the connection cap needs room.
struct Driver {
    shared: Arc<State>,
    limits: ConnLimits,
    exchanges: Arc<Exchanges>,
}

impl Driver {
    fn idle_check(&self) -> Duration {
        (self.limits.idle_timeout / 4).max(Duration::from_millis(50))
    }

    /// Waits, holding no buffer, for the next request's first bytes (then kept in
    /// `io` for the server); false when the connection is to close instead.
    async fn wait_for_request(&self, io: &mut HeadTimeout) -> bool {
        let idle_timeout = self.limits.idle_timeout;
        let waiting = &self.shared.proxy.metrics.connections_waiting;
        waiting.inc();
        let _counted = Defer(|| {
            waiting.dec();
        });
        let arrived = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| io.poll_arrival(cx)) => break r.unwrap_or(false),
                _ = self.shared.shutdown.cancelled() => break false,
                _ = tokio::time::sleep(self.idle_check()), if !idle_timeout.is_zero() => {
                    if self.exchanges.idle_for() >= idle_timeout {
                        break false;
                    }
                }
                _ = self.shared.reclaim.notified() => {
                    // The connection cap is reached: connections quiet for a second
                    // give way to new clients.
                    if self.exchanges.idle_for() >= RECLAIM_AFTER {
                        break false;
                    }
                }
            }
        };
        if !arrived {
            let _ = tokio::time::timeout(self.limits.header_timeout, io.shutdown()).await;
        }
        arrived
    }

    /// Serves HTTP/1 exchanges: a server per busy spell, asked to stop once every
    /// request it took is answered and the connection stays open; then the socket (and
    /// whatever the client sent after the last request) comes back and waits for the
    /// next request without a server.
    async fn serve_http1<S>(&self, mut io: HeadTimeout, mut service: S)
    where
        S: hyper::service::HttpService<Incoming, ResBody = RespBody> + Unpin,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let builder = http1_builder(self.limits.max_headers, self.limits.max_header_bytes);
        loop {
            let mut conn = Box::new(
                builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            );
            if !Box::pin(self.drive(Pin::new(&mut *conn), true, |c| c.graceful_shutdown())).await {
                return;
            }
            // An upgraded connection belongs to its tunnel.
            let Some(parts) = conn.into_parts() else {
                return;
            };
            io = parts.io.into_inner();
            service = parts.service;
            self.exchanges.keep_open.store(false, Ordering::Relaxed);
            if !io.take_back(parts.read_buf) {
                let _ = tokio::time::timeout(self.limits.header_timeout, io.shutdown()).await;
                return;
            }
            if !io.has_prefix() && !self.wait_for_request(&mut io).await {
                return;
            }
        }
    }

    /// Drives `conn` to its end. With `park`, asks it to stop once every request it
    /// took is answered and the last answer leaves the connection open; true when it
    /// stopped so and left the socket open.
    async fn drive<C, E>(
        &self,
        mut conn: Pin<&mut C>,
        park: bool,
        graceful: impl Fn(Pin<&mut C>),
    ) -> bool
    where
        C: Future<Output = Result<(), E>>,
    {
        let idle_timeout = self.limits.idle_timeout;
        let header_timeout = self.limits.header_timeout;
        let since = self.exchanges.counts();
        // Set when the connection has been quiet for PARK_AFTER with every request
        // answered; then the server is asked to stop (and is polled again at once, for
        // nothing else would wake it to notice).
        let mut park_now = false;
        let mut parking = false;
        // Keep-alive connections with no traffic for the client idle timeout are closed
        // (gracefully: a request still running finishes first). A peer that does not
        // finish the close (an HTTP/2 client that never answers the GOAWAY's PING) is
        // cut after a grace period: idle connections must not pile up against the
        // connection cap.
        let mut closing = false;
        let mut cut_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| loop {
                    let r = conn.as_mut().poll(cx);
                    if r.is_pending()
                        && park_now
                        && !parking
                        && !closing
                        && self.exchanges.settled_since(since)
                    {
                        self.exchanges.keep_open.store(true, Ordering::Relaxed);
                        graceful(conn.as_mut());
                        parking = true;
                        continue;
                    }
                    return r;
                }) => return r.is_ok() && parking && !closing,
                _ = tokio::time::sleep(PARK_AFTER), if park && !parking && !closing => {
                    park_now = self.exchanges.settled_since(since)
                        && self.exchanges.idle_for() >= PARK_AFTER;
                }
                _ = self.shared.shutdown.cancelled(), if !closing => {
                    self.close(conn.as_mut(), &graceful, &mut closing);
                }
                _ = tokio::time::sleep(self.idle_check()), if !closing && !idle_timeout.is_zero() => {
                    if self.exchanges.idle_for() >= idle_timeout {
                        self.close(conn.as_mut(), &graceful, &mut closing);
                        cut_at = Some(tokio::time::Instant::now() + header_timeout);
                    }
                }
                _ = self.shared.reclaim.notified(), if !closing => {
                    // The connection cap is reached: connections quiet for a second give
                    // way to new clients (a running exchange still finishes).
                    if self.exchanges.idle_for() >= RECLAIM_AFTER {
                        self.close(conn.as_mut(), &graceful, &mut closing);
                        cut_at = Some(tokio::time::Instant::now() + header_timeout);
                    }
                }
                _ = sleep_until_or_never(cut_at) => {
                    if self.exchanges.idle_for() >= header_timeout {
                        return false;
                    }
                    cut_at = Some(tokio::time::Instant::now() + header_timeout);
                }
            }
        }
    }

    /// Asks the server to finish what is in flight and close the connection.
    fn close<C>(&self, conn: Pin<&mut C>, graceful: &impl Fn(Pin<&mut C>), closing: &mut bool) {
        self.exchanges.keep_open.store(false, Ordering::Relaxed);
        graceful(conn);
        *closing = true;
    }
}

/// Runs a closure when dropped.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// How long an HTTP/1 connection is quiet, every request answered, before its server
/// stops and its buffers are freed: long enough that a client sending request after
/// request keeps one server (a server per request costs ~25 % more CPU per request),
/// short enough that idle connections hold no buffers within a second or so.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// How long a keep-alive connection must have been quiet to be closed for a new client
/// when the connection cap is reached.
const RECLAIM_AFTER: Duration = Duration::from_secs(1);

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// hyper's read buffer limit for request heads.
pub(crate) fn max_buf_size(max_header_bytes: usize) -> usize {
    max_header_bytes.max(8192)
}

/// The longest request target served with a head limit of `max_head`: [`MAX_TARGET`],
/// less where the head limit leaves no room beside it for a method and a version (a
/// target over it is refused 414 before hyper sees the whole head).
pub(crate) fn max_target(max_head: usize) -> usize {
    MAX_TARGET.min(max_head.saturating_sub(1024))
}

/// The HTTP server of one connection, as every listener configures it.
pub(crate) fn http_builder(
    max_headers: usize,
    max_header_bytes: usize,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timeout starts when it waits for the next head, so it closed
    // idle keep-alive connections after the header timeout instead of the idle timeout.
    // The listener times heads itself (HeadTimeout), from their first byte.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(max_headers)
        .max_buf_size(max_buf_size(max_header_bytes));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32);
    builder
}

/// The HTTP/1 server of one connection's busy spell (see [`Driver::serve_http1`]),
/// configured as [`http_builder`]'s.
fn http1_builder(max_headers: usize, max_header_bytes: usize) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(max_headers)
        .max_buf_size(max_buf_size(max_header_bytes));
    builder
}

const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nx-portcullis-error: header-read-timeout\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";

/// Answers 408 and closes when the first request head does not arrive in time; hands
/// the server first what the connection read while no server held it.
struct HeadTimeout {
    inner: Gate<Pin<Box<dyn crate::pool::Io>>>,
    /// The header timer, while a head is being waited for.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    fired: bool,
    header_timeout: Duration,
    /// Where a later request's head began, for its own header timeout.
    framing: Framing,
    exchanges: Arc<Exchanges>,
    /// Bytes read for the server that it has not had yet.
    prefix: Bytes,
    /// Bytes read from `inner`, all told.
    read: u64,
}

impl HeadTimeout {
    fn new(
        inner: Gate<Pin<Box<dyn crate::pool::Io>>>,
        header_timeout: Duration,
        exchanges: Arc<Exchanges>,
    ) -> Self {
        HeadTimeout {
            framing: inner.framer().framing(),
            inner,
            sleep: None,
            fired: false,
            header_timeout,
            exchanges,
            prefix: Bytes::new(),
            read: 0,
        }
    }

    fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Reads what the client sent into a buffer that lives only for this call and
    /// keeps it for the server; `false` at the end of the stream.
    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut buf = ReadBuf::uninit(&mut space);
        std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.prefix = Bytes::copy_from_slice(buf.filled());
        Poll::Ready(Ok(true))
    }

    /// Takes the socket back from a server that stopped, with the bytes it read and
    /// did not consume; false when those do not start where a request head does (a
    /// body it left unread, framing that stopped): the connection must close.
    fn take_back(&mut self, unread: Bytes) -> bool {
        let consumed = self.read - (self.prefix.len() + unread.len()) as u64;
        if !self.inner.framer_mut().resumable_at(consumed) {
            return false;
        }
        if !unread.is_empty() {
            self.prefix = if self.prefix.is_empty() {
                unread
            } else {
                [unread, std::mem::take(&mut self.prefix)].concat().into()
            };
        }
        true
    }
}

impl AsyncRead for HeadTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() && buf.remaining() > 0 {
            let n = buf.remaining().min(self.prefix.len());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // An empty slice of the buffer would keep all of it.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let first = self.exchanges.requests.load(Ordering::Relaxed) == 0;
        // The first request's head is timed from the connection's start; a later one's
        // from its first byte.
        let deadline = if first {
            Some(self.exchanges.born + self.header_timeout)
        } else {
            self.framing
                .partial_head_since()
                .map(|t| t + self.header_timeout)
        };
        if deadline.is_none() {
            self.sleep = None;
        }
        if let Some(deadline) = deadline
            && !self.fired
        {
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                self.fired = true;
                let inner = Pin::new(&mut self.inner);
                timed_out(inner, cx, first);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "header read timeout",
                )));
            }
        }
        if self.fired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "header read timeout",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.read += (buf.filled().len() - before) as u64;
            self.exchanges.touch();
        }
        r
    }
}

/// Best effort: a client this slow has an empty send buffer towards it. Only before
/// the first answer: later, the server may still be writing one.
fn timed_out<T: AsyncWrite + Unpin>(mut io: Pin<&mut T>, cx: &mut Context<'_>, first: bool) {
    if first {
        let _ = io.as_mut().poll_write(cx, TIMEOUT_408);
        let _ = io.as_mut().poll_flush(cx);
    }
    let _ = io.poll_shutdown(cx);
}

impl AsyncWrite for HeadTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.exchanges.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.exchanges.keep_open.load(Ordering::Relaxed) {
            // The driver takes the socket back for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
