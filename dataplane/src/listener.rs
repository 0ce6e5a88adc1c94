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
use portcullis_crds::config::{ListenerConfig, ListenerProtocol};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
        let max = shared
            .snapshot
            .load()
            .as_ref()
            .map_or(20_000, |s| s.config.limits.max_connections as usize);
        if shared.connections.load(Ordering::Relaxed) >= max {
            // Over the cap: close at once rather than queue.
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let shared2 = shared.clone();
        let tls = tls.clone();
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.tracker.spawn(async move {
            serve_connection(shared2.clone(), tcp, client, tls).await;
            shared2.connections.fetch_sub(1, Ordering::Relaxed);
        });
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
            Duration::from_secs(10),
            100,
            32 * 1024,
            Duration::from_secs(60),
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout + Duration::from_secs(1))
        .max_headers(max_headers)
        .max_buf_size(max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32);
    let mut h2 = false;
    let io: Pin<Box<dyn crate::pool::Io>> = match tls {
        None => Box::pin(tcp),
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => {
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    builder = builder.http2_only();
                    h2 = true;
                }
                Box::pin(s)
            }
            _ => return,
        },
    };
    let sniffer = Sniffer::new(max_header_bytes.max(8192), !h2);
    let verdicts = sniffer.verdicts.clone();
    let shared_c = shared.clone();
    let armed3 = armed.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        armed3.store(false, Ordering::Relaxed);
        let verdict = if req.version() <= http::Version::HTTP_11 {
            verdicts.lock().pop_front().flatten()
        } else {
            None
        };
        let shared = shared_c.clone();
        async move {
            match verdict {
                Some(reason) => Ok(proxy::error_response(http::StatusCode::BAD_REQUEST, reason)),
                None => proxy::handle(shared, info, req).await,
            }
        }
    });
    let io = HeadTimeout {
        inner: io,
        sleep: Box::pin(tokio::time::sleep(header_timeout)),
        armed,
        fired: false,
        sniffer,
        born,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Keep-alive connections with no traffic for the client idle timeout are closed
    // (gracefully: a request still running finishes first).
    let check = (idle_timeout / 4).max(Duration::from_millis(50));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = shared.shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(check), if !closing && !idle_timeout.is_zero() => {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if born.elapsed().saturating_sub(last) >= idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
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
    /// Milliseconds after `born` of the last byte read or written.
    activity: Arc<std::sync::atomic::AtomicU64>,
    sniffer: Sniffer,
}

/// Reads HTTP/1 request heads as they arrive, before hyper normalizes them, to spot
/// framing that two parsers could read differently (hyper quietly drops a second
/// `Content-Length`, and `Content-Length` beside `Transfer-Encoding`). Each head's verdict
/// is queued; the service takes them in order, since HTTP/1 requests are served in order.
pub(crate) struct Sniffer {
    state: SniffState,
    buf: Vec<u8>,
    max: usize,
    pub(crate) verdicts: Arc<parking_lot::Mutex<std::collections::VecDeque<Option<&'static str>>>>,
}

enum SniffState {
    Head,
    Body(u64),
    /// A chunk-size line (or the CRLF ending the previous chunk).
    ChunkLine,
    ChunkData(u64),
    /// Trailer lines up to the empty line.
    Trailers,
    /// HTTP/2, an upgrade, or a connection about to close: no more sniffing.
    Off,
}

impl Sniffer {
    fn new(max: usize, on: bool) -> Self {
        Sniffer {
            state: if on {
                SniffState::Head
            } else {
                SniffState::Off
            },
            buf: Vec::new(),
            max,
            verdicts: Arc::default(),
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                SniffState::Off => return,
                SniffState::Body(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        SniffState::Head
                    } else {
                        SniffState::Body(left)
                    };
                }
                SniffState::ChunkData(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        SniffState::ChunkLine
                    } else {
                        SniffState::ChunkData(left)
                    };
                }
                SniffState::ChunkLine | SniffState::Trailers => {
                    let Some(nl) = data.iter().position(|c| *c == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > 4096 {
                            self.state = SniffState::Off;
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        SniffState::Trailers if line.is_empty() => SniffState::Head,
                        SniffState::Trailers => SniffState::Trailers,
                        _ if line.is_empty() => SniffState::ChunkLine,
                        _ => {
                            let size = line.split(|c| *c == b';').next().unwrap_or_default();
                            match std::str::from_utf8(size)
                                .ok()
                                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                            {
                                Some(0) => SniffState::Trailers,
                                Some(n) => SniffState::ChunkData(n),
                                // hyper refuses this too and closes the connection.
                                None => SniffState::Off,
                            }
                        }
                    };
                }
                SniffState::Head => {
                    if self.buf.is_empty() && data.starts_with(b"PRI * HTTP/2.0") {
                        self.state = SniffState::Off;
                        return;
                    }
                    let before = self.buf.len();
                    self.buf.extend_from_slice(data);
                    let Some(end) = find_head_end(&self.buf) else {
                        if self.buf.len() > self.max {
                            self.state = SniffState::Off;
                        }
                        return;
                    };
                    let consumed = end - before;
                    data = &data[consumed.min(data.len())..];
                    let head = std::mem::take(&mut self.buf);
                    let (verdict, next) = judge(&head[..end]);
                    self.verdicts.lock().push_back(verdict);
                    self.state = next;
                }
            }
        }
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    // Leading empty lines before a request line are allowed.
    let start = b.iter().position(|c| *c != b'\r' && *c != b'\n')?;
    let rest = &b[start..];
    rest.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
        .or_else(|| {
            rest.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| start + p + 2)
        })
}

fn judge(head: &[u8]) -> (Option<&'static str>, SniffState) {
    let mut cl = 0usize;
    let mut cl_value: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    let mut upgrade = false;
    for line in head.split(|c| *c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl += 1;
            cl_value = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            chunked = value
                .rsplit(|c| *c == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let verdict = if cl > 1 {
        Some("duplicate-content-length")
    } else if cl > 0 && te {
        Some("content-length-and-transfer-encoding")
    } else {
        None
    };
    let next = if upgrade || verdict.is_some() || (te && !chunked) {
        SniffState::Off
    } else if chunked {
        SniffState::ChunkLine
    } else {
        match cl_value {
            Some(n) if n > 0 => SniffState::Body(n),
            _ => SniffState::Head,
        }
    };
    (verdict, next)
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
        if self.armed.load(Ordering::Relaxed)
            && !self.fired
            && self.sleep.as_mut().poll(cx).is_ready()
        {
            self.fired = true;
            // Best effort: a client this slow has an empty send buffer towards it.
            let _ = self.inner.as_mut().poll_write(cx, TIMEOUT_408);
            let _ = self.inner.as_mut().poll_flush(cx);
            let _ = self.inner.as_mut().poll_shutdown(cx);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "header read timeout",
            )));
        }
        if self.fired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "header read timeout",
            )));
        }
        let before = buf.filled().len();
        let r = self.inner.as_mut().poll_read(cx, buf);
        if r.is_ready() {
            self.touch();
        }
        if r.is_ready() && !matches!(self.sniffer.state, SniffState::Off) {
            let new = buf.filled()[before..].to_vec();
            self.sniffer.feed(&new);
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

#[cfg(test)]
mod tests {
    use super::Sniffer;

    fn verdicts(input: &[u8], step: usize) -> Vec<Option<&'static str>> {
        let mut s = Sniffer::new(8192, true);
        for piece in input.chunks(step) {
            s.feed(piece);
        }
        s.verdicts.lock().iter().copied().collect()
    }

    #[test]
    fn sniffer_follows_lengths_and_chunks_across_requests() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        for step in [1, 3, 7, stream.len()] {
            assert_eq!(
                verdicts(stream, step),
                vec![None, None, Some("duplicate-content-length")],
                "step {step}"
            );
        }
        let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            verdicts(smuggle, 5),
            vec![Some("content-length-and-transfer-encoding")]
        );
    }
}
