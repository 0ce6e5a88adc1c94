//! A pooled upstream connection the server closed while it sat idle: a request that
//! never reached the server is sent again on a fresh connection, even with retries off
//! (issue 12).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n";

/// A keep-alive backend on plain sockets and threads of its own (outside the test's
/// runtime). Its first connection answers one request, then closes when told to and
/// says so; later connections answer every request. It records, per request, the index
/// of the connection it came on.
struct ClosingBackend {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<usize>>>,
    close: mpsc::Sender<()>,
    closed: mpsc::Receiver<()>,
}

impl ClosingBackend {
    fn start() -> ClosingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (close, close_rx) = mpsc::channel();
        let (closed_tx, closed) = mpsc::channel();
        let seen = requests.clone();
        std::thread::spawn(move || {
            let mut close_rx = Some(close_rx);
            for (index, tcp) in listener.incoming().enumerate() {
                let Ok(mut tcp) = tcp else { return };
                let seen = seen.clone();
                if let Some(close_rx) = close_rx.take() {
                    answer(&mut tcp, || seen.lock().push(index));
                    let _ = close_rx.recv();
                    drop(tcp);
                    let _ = closed_tx.send(());
                    continue;
                }
                std::thread::spawn(move || while answer(&mut tcp, || seen.lock().push(index)) {});
            }
        });
        ClosingBackend {
            addr,
            requests,
            close,
            closed,
        }
    }

    /// Closes the first connection; returns once it is closed, so its FIN is already in
    /// the proxy's receive queue.
    fn close_first_connection(&self) {
        self.close.send(()).unwrap();
        self.closed.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}

/// Reads one bodiless request, records it, and answers it, keeping the connection
/// open; false at the end of the stream.
fn answer(tcp: &mut std::net::TcpStream, record: impl FnOnce()) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    record();
    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .is_ok()
}

/// Reads one response of the proxy (its body is `ok` or an error text, never chunked
/// here) and returns the status line.
async fn status_line(client: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.lines().next().unwrap().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no full response: {text}");
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the proxy closed: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The race this reproduces: the server closes an idle keep-alive connection just as
/// the proxy takes it from the pool for the next request. Deterministic on a
/// current-thread runtime (this test's, which the in-process proxy shares): the
/// client's request is written, then the server's FIN is made to arrive, both before
/// the runtime polls for I/O again. The one poll then wakes the proxy's client
/// connection first (its event came first), which takes the pooled connection (still
/// looking alive: its task has not run yet) and hands it the request; then that
/// connection's task runs, reads the EOF, and gives the request back unsent.
#[tokio::test]
async fn a_request_on_a_pooled_connection_the_server_closed_is_sent_again_on_a_fresh_one() {
    let backend = ClosingBackend::start();
    let farm = site("b", &["b.test"])
        .server(address_server(backend.addr))
        .with(|spec| {
            spec.upstream = Some(Upstream {
                retries: Some(Retries { attempts: 0 }),
                ..defaults()
            })
        });
    let proxy = Proxy::start("stale-connection", &[farm]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(REQUEST).await.unwrap();
    assert_eq!(status_line(&mut client).await, "HTTP/1.1 200 OK");
    // The upstream connection is back in the pool.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(
        &metrics(proxy.admin_addr()).await,
        "portcullis_pool_connections_idle",
        &[],
    ) != 1.0
    {
        assert!(Instant::now() < deadline, "the connection never went idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // From here to the read, nothing yields to the runtime.
    assert_eq!(client.try_write(REQUEST).unwrap(), REQUEST.len());
    backend.close_first_connection();

    assert_eq!(status_line(&mut client).await, "HTTP/1.1 200 OK");
    // Once on the first connection, once (the replay) on a new one: the request that
    // was given back unsent never reached the server twice.
    assert_eq!(*backend.requests.lock(), [0, 1]);
    proxy.shutdown().await;
}
