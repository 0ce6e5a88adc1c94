//! Issue 12, finding 3: one client must not hurt the others. Keep-alive connections live
//! for the client idle timeout (not the header timeout), every head is timed from its
//! first byte, HTTP/2 connections that do not finish closing are cut, connections over
//! the caps are counted, one client address cannot take every slot, and idle
//! connections make room for new clients at the cap.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads until the peer closes; returns how long that took (None: still open at `limit`).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|_| started.elapsed())
}

async fn get_on(s: &mut TcpStream, host: &str) -> String {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The backend's answer is small: the head and body come in one read or two.
    while !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn keep_alive_connections_live_for_the_client_idle_timeout() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("1s")),
        client_idle_timeout: Some(duration("4s")),
        ..defaults()
    };
    let proxy = Proxy::with_limits("idle", limits, &[plain_farm(&b)]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut s, "b.test").await.starts_with("HTTP/1.1 200"));
    // Longer than the header timeout (plus hyper's old extra second), shorter than the
    // idle timeout: the connection is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = get_on(&mut s, "b.test").await;
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "closed before the idle timeout: {again:?}"
    );
    let closed = closed_within(&mut s, Duration::from_secs(8)).await;
    let closed = closed.expect("an idle connection outlived the client idle timeout");
    assert!(closed >= Duration::from_secs(3), "closed after {closed:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_later_head_is_timed_from_its_first_byte() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("1s")),
        client_idle_timeout: Some(duration("30s")),
        ..defaults()
    };
    let proxy = Proxy::with_limits("slowsecond", limits, &[plain_farm(&b)]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut s, "b.test").await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A second head, one byte every 300 ms: cut about a second after it began.
    let started = Instant::now();
    for byte in b"GET / HTTP/1.1\r\nHost: b.test\r\nX-Slow: yes\r\n\r\n" {
        if s.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5) && closed.is_some(),
        "a slow second head was not cut by the header timeout"
    );
    assert_eq!(b.seen().len(), 1);
    proxy.shutdown().await;
}

/// An HTTP/2 client that asked one request and then never answers anything: the
/// proxy's graceful close of the idle connection (GOAWAY, then a PING) waited for a PING
/// answer forever, and 1,000 such connections locked everyone out. It is cut after the
/// grace period.
#[tokio::test]
async fn an_http2_connection_that_never_finishes_closing_is_cut() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("1s")),
        client_idle_timeout: Some(duration("1s")),
        ..defaults()
    };
    let proxy = Proxy::with_limits("h2idle", limits, &[plain_farm(&b)]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // HEADERS on stream 1, END_STREAM | END_HEADERS: GET http://b.test/ in HPACK
    // (indexed :method GET, :scheme http, :path /; literal :authority b.test).
    let block = [
        0x82, 0x86, 0x84, 0x41, 0x06, b'b', b'.', b't', b'e', b's', b't',
    ];
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    s.write_all(&frame).await.unwrap();
    // Read the answer for a moment, then say nothing more: no ACK of anything.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(
        b.seen().len(),
        1,
        "the request was not served ({} bytes back)",
        got.len()
    );
    let closed = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(
        closed.is_some(),
        "a silent HTTP/2 connection was never closed"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_requests_with_too_many_headers_get_431() {
    let b = Backend::start("b").await;
    let proxy = Proxy::with_limits(
        "h2headers",
        ClientLimits {
            max_headers: Some(20),
            ..defaults()
        },
        &[plain_farm(&b)],
    )
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = |n: usize| {
        let mut r = http::Request::get("http://b.test/");
        for i in 0..n {
            r = r.header(format!("x-h{i}"), "v");
        }
        r.body(http_body_util::Empty::new()).unwrap()
    };
    let many = send.send_request(request(40)).await.unwrap();
    assert_eq!(many.status(), 431);
    let few = send.send_request(request(5)).await.unwrap();
    assert_eq!(few.status(), 200);
    assert_eq!(b.seen().len(), 1);
    proxy.shutdown().await;
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn one_client_address_cannot_take_every_connection() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("5s")),
        max_connections_per_client: Some(3),
        ..defaults()
    };
    let proxy = Proxy::with_limits("perclient", limits, &[plain_farm(&b)]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", proxy.addr).await;
        assert!(get_on(&mut s, "b.test").await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut fourth = connect_from("127.0.0.1", proxy.addr).await;
    let _ = fourth
        .write_all(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2))
            .await
            .is_some()
    );
    // Another address still gets in.
    let mut other = connect_from("127.0.0.2", proxy.addr).await;
    assert!(
        get_on(&mut other, "b.test")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_client_connections_refused_total",
            &["reason=\"per-client\""]
        ),
        1.0,
        "{m}"
    );
    // A slot freed is a slot again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect_from("127.0.0.1", proxy.addr).await;
    assert!(
        get_on(&mut again, "b.test")
            .await
            .starts_with("HTTP/1.1 200")
    );
    proxy.shutdown().await;
}

/// Issue 12: 1,000 idle sockets at the cap refused 97% of normal requests. At the cap,
/// connections quiet for a second are closed to make room, and refusals are counted.
#[tokio::test]
async fn at_the_cap_idle_connections_make_room_for_new_clients() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("5s")),
        max_connections: Some(3),
        ..defaults()
    };
    let proxy = Proxy::with_limits("reclaim", limits, &[plain_farm(&b)]).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(get_on(&mut s, "b.test").await.starts_with("HTTP/1.1 200"));
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The first newcomer is refused but makes the idle ones go; the next gets in.
    let mut served = false;
    for _ in 0..10 {
        if let Ok(mut c) = Client::try_connect(proxy.addr).await
            && let Ok((200, _, _)) = c.get("b.test", "/").await
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "no new client got in while idle connections held the cap"
    );
    let m = metrics(proxy.admin_addr()).await;
    assert!(
        metric_sum(
            &m,
            "portcullis_client_connections_refused_total",
            &["reason=\"max-connections\""]
        ) >= 1.0,
        "{m}"
    );
    proxy.shutdown().await;
}
