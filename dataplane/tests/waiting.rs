//! Between requests an HTTP/1 keep-alive connection waits without an HTTP server (and
//! its 16 KiB of buffers): the server stops once every request it took is answered and
//! the connection has been quiet for half a second, and the next one starts at the next
//! request's first byte. These tests hold the hand-over
//! to what one server per connection did: nothing is lost or re-framed across it, a body
//! left unread ends the connection, and a connection that asked to close closes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET /one HTTP/1.1\r\nHost: b.test\r\n\r\n";

async fn waiting(admin: SocketAddr) -> f64 {
    metric_sum(
        &metrics(admin).await,
        "portcullis_client_connections_waiting",
        &[],
    )
}

/// Reads from `s` until `n` complete answers (status line to the end of the body the
/// backend's answers carry) arrived; returns their status codes.
async fn answers(s: &mut TcpStream, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        let statuses: Vec<u16> = text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
            .collect();
        // Each of the backend's answers ends with its name, `b`.
        if statuses.len() >= n && text.ends_with('b') {
            return statuses;
        }
        let read = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{n} answers not in 5 s: {text:?}"))
            .unwrap();
        assert!(read > 0, "closed after {text:?}");
        out.extend_from_slice(&buf[..read]);
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_waits_without_a_server_and_is_served_again() {
    let b = Backend::start("b").await;
    // A header timeout longer than the pause in the head below.
    let limits = ClientLimits {
        header_read_timeout: Some(duration("5s")),
        ..defaults()
    };
    let proxy = Proxy::with_limits("waiting", limits, &[plain_farm(&b)]).await;
    let admin = proxy.admin_addr();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    assert_eq!(answers(&mut s, 1).await, [200]);
    // The answered connection is counted as waiting, not held by a server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while waiting(admin).await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A head that arrives in pieces across the wait, then three pipelined requests in
    // one write, then one byte at a time: all served, in order, on the same connection.
    s.write_all(b"GET /two HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: b.test\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut s, 1).await, [200]);
    let three = [GET, GET, GET].concat();
    s.write_all(&three).await.unwrap();
    assert_eq!(answers(&mut s, 3).await, [200, 200, 200]);
    for byte in b"GET /last HTTP/1.1\r\nHost: b.test\r\n\r\n" {
        s.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(answers(&mut s, 1).await, [200]);
    // A head begun while the server still holds the connection and finished after it
    // stopped: the new server starts from what the old one had read.
    s.write_all(b"GET /held HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"st: b.test\r\n\r\n").await.unwrap();
    assert_eq!(answers(&mut s, 1).await, [200]);
    let paths: Vec<String> = b.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/one", "/two", "/one", "/one", "/one", "/last", "/held"]
    );
    assert_eq!(
        b.accepted(),
        1,
        "the proxy's upstream connection was reused"
    );
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while waiting(admin).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still counted after close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

/// A request answered before its body arrived (no farm serves its host): the rest of
/// the body, when it comes, is never read as requests, although it is made of them.
#[tokio::test]
async fn a_body_left_unread_ends_the_connection() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("unread-body", &[plain_farm(&b)]).await;
    let hidden = b"GET /hidden HTTP/1.1\r\nHost: b.test\r\n\r\n";
    let mut req = b"POST /up HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 400\r\n\r\n".to_vec();
    req.extend_from_slice(&hidden.repeat(2));
    let rest = hidden.repeat(12);
    let text = raw_pieces(proxy.addr, &[&req, &rest]).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(b.seen().is_empty(), "{:?}", b.seen());
    proxy.shutdown().await;
}

/// A client that asks to close, or speaks HTTP/1.0 without keep-alive, has its
/// connection closed after the answer, not kept waiting.
#[tokio::test]
async fn a_connection_that_asked_to_close_is_closed() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("asked-close", &[plain_farm(&b)]).await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: keep-alive, Close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: b.test\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
            .await
            .expect("the connection closes after the answer")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1."), "{text}");
        assert!(text.contains(" 200 "), "{text}");
    }
    // HTTP/1.0 with keep-alive stays open for a second request.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let keep = b"GET / HTTP/1.0\r\nHost: b.test\r\nConnection: keep-alive\r\n\r\n";
    s.write_all(keep).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.0 200"), "{:?}", &buf[..n]);
    proxy.shutdown().await;
}
