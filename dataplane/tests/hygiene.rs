//! Requests two parsers could read differently are refused with 400 and never reach a
//! backend; slow headers get 408; oversized headers get 431.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn ambiguous_requests_are_refused_and_never_forwarded() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("hygiene", &[plain_farm(&b)]).await;
    let addr = proxy.addr;
    let cases: &[(&str, &[u8])] = &[
        ("CL+TE", b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("dup CL", b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
        ("conflicting CL", b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"),
        ("CL list", b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 1, 1\r\n\r\nx"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: b.test\r\nX-A: one\r\n two\r\n\r\n"),
        ("NUL", b"GET / HTTP/1.1\r\nHost: b.test\r\nX-A: a\x00b\r\n\r\n"),
        ("control", b"GET / HTTP/1.1\r\nHost: b.test\r\nX-A: a\x01b\r\n\r\n"),
        // The absolute form is served (issue 12, section 4): tests/conformance.rs.
        ("absolute-form, not http", b"GET ftp://b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("absolute-form with userinfo", b"GET http://evil@b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        // `OPTIONS *` is served (conformance.rs); the asterisk form is for OPTIONS only.
        ("asterisk", b"GET * HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("CONNECT", b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n"),
        ("%2F", b"GET /a%2Fb HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("%2f", b"GET /a%2fb HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("%5C", b"GET /a%5Cb HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("%2e", b"GET /%2e%2e/etc HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("dot", b"GET /a/./b HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("dotdot", b"GET /a/../b HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("double slash", b"GET /a//b HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("backslash", b"GET /a\\b HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("bad percent", b"GET /a%zz HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("short percent", b"GET /a%2 HTTP/1.1\r\nHost: b.test\r\n\r\n"),
    ];
    for (name, req) in cases {
        let resp = raw(addr, req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{name}: {resp:?}");
    }
    assert!(b.seen().is_empty(), "the backend saw {:?}", b.seen());
    assert_eq!(b.accepted(), 0);
    // A clean request on the same listener still passes.
    let resp = raw(
        addr,
        b"GET /a/b HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_headers_get_408_and_big_headers_431() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("1s")),
        max_headers: Some(20),
        max_header_bytes: Some(8192),
        ..defaults()
    };
    let proxy = Proxy::with_limits("slow", limits, &[plain_farm(&b)]).await;
    let addr = proxy.addr;

    // One byte every 300 ms: cut off after the 1 s header-read timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    for byte in b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n" {
        if s.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(4));

    let mut many = String::from("GET / HTTP/1.1\r\nHost: b.test\r\n");
    for i in 0..40 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(addr, many.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: b.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = raw(addr, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert!(b.seen().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let b = Backend::start("b").await;
    let limits = ClientLimits {
        header_read_timeout: Some(duration("5s")),
        max_connections: Some(2),
        ..defaults()
    };
    let proxy = Proxy::with_limits("cap", limits, &[plain_farm(&b)]).await;
    let addr = proxy.addr;
    let mut first = Client::connect(addr).await;
    let mut second = Client::connect(addr).await;
    assert_eq!(first.get("b.test", "/").await.unwrap().0, 200);
    assert_eq!(second.get("b.test", "/").await.unwrap().0, 200);
    // The third connection is accepted and closed without an answer.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?} {buf:?}");
    // Closing one frees a slot.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(addr, "b.test", "/").await.0, 200);
    assert_eq!(second.get("b.test", "/").await.unwrap().0, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn smuggling_after_a_chunked_request_on_the_same_connection_is_refused() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("pipeline", &[plain_farm(&b)]).await;
    let addr = proxy.addr;
    let resp = raw(
        addr,
        b"POST /one HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
POST /two HTTP/1.1\r\nHost: b.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("HTTP/1.1 400"), "{resp}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/one");
    proxy.shutdown().await;
}

/// Sends `bytes` in one write and reads every answer until the proxy closes.
async fn statuses(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u16> {
    let text = raw(addr, bytes).await;
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// Issue 17, finding 1: a head that ends in a bare `\n\n` (or `\n\r\n`) is a message
/// boundary for the serving parser, so the checks must see the request after it.
#[tokio::test]
async fn a_refused_request_after_a_bare_lf_head_is_refused() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("lf-boundary", &[plain_farm(&b)]).await;
    let mut first = b"POST / HTTP/1.1\nHost: b.test\nContent-Length: 100\n\n".to_vec();
    first.extend_from_slice(&[b'x'; 96]);
    first.extend_from_slice(b"\r\n\r\n");
    let seconds: [&[u8]; 2] = [
        b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ];
    let lf_cr_lf = b"GET / HTTP/1.1\nHost: b.test\n\r\n".to_vec();
    let mut seen = 0;
    for head in [first, lf_cr_lf] {
        for second in seconds {
            let mut stream = head.clone();
            stream.extend_from_slice(second);
            let got = statuses(proxy.addr, &stream).await;
            assert_eq!(got, [200, 400], "{:?}", String::from_utf8_lossy(&stream));
            seen += 1;
            assert_eq!(
                b.seen().len(),
                seen,
                "only the first request may reach the backend"
            );
        }
    }
    proxy.shutdown().await;
}

/// Issue 17, finding 1: the verdicts do not depend on how TCP splits the bytes.
#[tokio::test]
async fn verdicts_do_not_depend_on_segmentation() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("segments", &[plain_farm(&b)]).await;
    let stream: &[u8] = b"GET / HTTP/1.1\nHost: b.test\n\nGET / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
    let whole = statuses(proxy.addr, stream).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for byte in stream {
        s.write_all(&[*byte]).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let split: Vec<u16> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect();
    assert_eq!(whole, [200, 400]);
    assert_eq!(split, whole);
    assert_eq!(b.seen().len(), 2);
    proxy.shutdown().await;
}

/// Issue 17, finding 2: an `Upgrade` header without a relayed 101 leaves the checks on.
#[tokio::test]
async fn checks_stay_on_after_an_upgrade_that_did_not_happen() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("no-upgrade", &[plain_farm(&b)]).await;
    let firsts: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nHost: b.test\r\nUpgrade: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
    ];
    for (n, first) in firsts.into_iter().enumerate() {
        let mut stream = first.to_vec();
        stream.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(statuses(proxy.addr, &stream).await, [200, 400]);
        assert_eq!(b.seen().len(), n + 1);
    }
    proxy.shutdown().await;
}
