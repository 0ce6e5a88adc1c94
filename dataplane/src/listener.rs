//! Client-facing listeners: accept, TLS, HTTP/1.1 and HTTP/2, limits, drain.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_crds::config::{
    DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS,
    ListenerConfig, ListenerProtocol,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::ProxyError;
use crate::framing::{Framer, Gate, MAX_TARGET};
use crate::proxy::{self, ConnInfo};
use crate::runtime::Shared;
use crate::tls::{ListenerCerts, server_config};

/// A bound listener.
pub(crate) struct Bound {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: ListenerProtocol,
    pub(crate) certs: Arc<ArcSwap<ListenerCerts>>,
    pub(crate) stop: CancellationToken,
}

/// Binds a listener and starts accepting.
pub(crate) async fn bind(
    shared: Arc<Shared>,
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
    shared: Arc<Shared>,
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
        let (max, per_client) = shared.snapshot.load().as_ref().map_or(
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
        shared.tracker.spawn(async move {
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
fn refuse(shared: &Shared, tcp: TcpStream, client: SocketAddr, reason: &'static str) {
    drop(tcp);
    shared
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

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    client: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let limits = shared
        .snapshot
        .load()
        .as_ref()
        .map(|s| s.config.limits.clone());
    let (header_timeout, max_headers, max_header_bytes, idle_timeout) = limits.map_or(
        (
            DEFAULT_HEADER_READ_TIMEOUT.get(),
            DEFAULT_MAX_HEADERS as usize,
            DEFAULT_MAX_HEADER_BYTES as usize,
            DEFAULT_CLIENT_IDLE_TIMEOUT.get(),
        ),
        |l| {
            (
                l.header_read_timeout.get(),
                l.max_headers as usize,
                l.max_header_bytes as usize,
                l.client_idle_timeout.get(),
            )
        },
    );
    let born = tokio::time::Instant::now();
    let activity = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let armed = Arc::new(AtomicBool::new(true));
    let info = ConnInfo {
        client,
        tls: tls.is_some(),
    };
    let mut builder = http_builder(max_headers, max_header_bytes);
    let mut h2 = false;
    let mut h1_only = false;
    let io: Pin<Box<dyn crate::pool::Io>> = match tls {
        None => Box::pin(tcp),
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => {
                match s.get_ref().1.alpn_protocol() {
                    Some(b"h2") => {
                        builder = builder.http2_only();
                        h2 = true;
                    }
                    // ALPN chose HTTP/1.1: an HTTP/2 preface is then a bad HTTP/1
                    // request, not a switch (RFC 9113 section 3.3).
                    Some(b"http/1.1") => {
                        builder = builder.http1_only();
                        h1_only = true;
                    }
                    _ => {}
                }
                Box::pin(s)
            }
            _ => return,
        },
    };
    let target_limit = max_target(max_buf_size(max_header_bytes));
    let framer = if h2 {
        Framer::h2_only()
    } else {
        Framer::new(
            max_buf_size(max_header_bytes),
            max_headers,
            target_limit,
            !h1_only,
        )
    };
    let framing = framer.framing();
    let head_framing = framing.clone();
    let shared_c = shared.clone();
    let armed3 = armed.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        armed3.store(false, Ordering::Relaxed);
        let admitted = framing.admit(req.method(), req.version());
        // hyper's HTTP/2 server limits the header list's size, not its length.
        let too_many = req.version() == http::Version::HTTP_2 && req.headers().len() > max_headers;
        // HTTP/2 has no request line for the framer: its target is held to the same
        // limit here.
        let too_long = req.version() == http::Version::HTTP_2
            && req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > target_limit;
        let shared = shared_c.clone();
        async move {
            let admitted = match admitted {
                Ok(admitted) => admitted,
                Err(error) => return Ok(error.response()),
            };
            if too_many {
                return Ok(ProxyError::TooManyHeaders.response());
            }
            if too_long {
                return Ok(ProxyError::UriTooLong.response());
            }
            let resp = proxy::handle(shared, info, req).await;
            if let Ok(r) = &resp {
                admitted.answered(r.status());
            }
            resp
        }
    });
    let io = HeadTimeout {
        inner: Box::pin(Gate::new(io, framer)),
        sleep: Box::pin(tokio::time::sleep(header_timeout)),
        armed,
        fired: false,
        born,
        header_timeout,
        framing: head_framing,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Keep-alive connections with no traffic for the client idle timeout are closed
    // (gracefully: a request still running finishes first). A peer that does not finish
    // the close (an HTTP/2 client that never answers the GOAWAY's PING) is cut after a
    // grace period: idle connections must not pile up against the connection cap.
    let check = (idle_timeout / 4).max(Duration::from_millis(50));
    let idle_for = || {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        born.elapsed().saturating_sub(last)
    };
    let mut closing = false;
    let mut cut_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = shared.shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(check), if !closing && !idle_timeout.is_zero() => {
                if idle_for() >= idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    cut_at = Some(tokio::time::Instant::now() + header_timeout);
                }
            }
            _ = shared.reclaim.notified(), if !closing => {
                // The connection cap is reached: connections quiet for a second give
                // way to new clients (a running exchange still finishes).
                if idle_for() >= RECLAIM_AFTER {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    cut_at = Some(tokio::time::Instant::now() + header_timeout);
                }
            }
            _ = sleep_until_or_never(cut_at) => {
                if idle_for() >= header_timeout {
                    break;
                }
                cut_at = Some(tokio::time::Instant::now() + header_timeout);
            }
        }
    }
}

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

const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nx-portcullis-error: header-read-timeout\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";

/// Answers 408 and closes when the first request head does not arrive in time.
struct HeadTimeout {
    inner: Pin<Box<dyn crate::pool::Io>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Arc<AtomicBool>,
    fired: bool,
    born: tokio::time::Instant,
    header_timeout: Duration,
    /// Where a later request's head began, for its own header timeout.
    framing: crate::framing::Framing,
    /// Milliseconds after `born` of the last byte read or written.
    activity: Arc<std::sync::atomic::AtomicU64>,
}

impl HeadTimeout {
    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for HeadTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let first = self.armed.load(Ordering::Relaxed);
        // The first request's head is timed from the connection's start; a later one's
        // from its first byte.
        let deadline = if first {
            Some(self.born + self.header_timeout)
        } else {
            self.framing
                .partial_head_since()
                .map(|t| t + self.header_timeout)
        };
        if let Some(deadline) = deadline
            && !self.fired
        {
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_ready() {
                self.fired = true;
                if first {
                    // Best effort: a client this slow has an empty send buffer towards it.
                    // Only before the first answer: later, hyper may still be writing one.
                    let _ = self.inner.as_mut().poll_write(cx, TIMEOUT_408);
                    let _ = self.inner.as_mut().poll_flush(cx);
                }
                let _ = self.inner.as_mut().poll_shutdown(cx);
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
        let r = self.inner.as_mut().poll_read(cx, buf);
        if r.is_ready() {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for HeadTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.inner.as_mut().poll_write(cx, buf);
        if r.is_ready() {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
