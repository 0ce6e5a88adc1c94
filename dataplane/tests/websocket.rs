//! A WebSocket-style upgrade is tunnelled and survives reloads.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn upgraded_connection_echoes_through_five_reloads() {
    let b = Backend::start("b").await;
    let farm = |n: usize| {
        site("b", &["ws.test"])
            .server(address_server(b.addr))
            .with(|spec| spec.backend_host = Some(format!("v{n}.internal")))
    };
    let proxy = Proxy::start("ws", &[farm(0)]).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for n in 1..=5 {
        proxy.reload(&[farm(n)]).await;
        let msg = format!("message {n}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    assert_eq!(b.seen().len(), 1);
    // Closing the client ends the tunnel, so the drain has nothing to wait for.
    drop(s);
    proxy.shutdown().await;
}

const WS_HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn ws_farm(backend: &Backend, edit: impl FnOnce(&mut ServerFarmSpec)) -> FarmBuilder {
    site("b", &["ws.test"])
        .server(address_server(backend.addr))
        .with(edit)
}

/// Issue 12, finding 3: `Upgrade: h2c` opened a raw tunnel in which requests the proxy
/// refuses reached the backend. It is never tunnelled: the request is served plainly.
#[tokio::test]
async fn an_h2c_upgrade_is_served_as_a_plain_request() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("h2c", &[ws_farm(&b, |_| {})]).await;
    let resp = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: ws.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("HTTP/1.1 400"),
        "the request after it is checked: {resp}"
    );
    let seen = b.seen();
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    assert!(!seen[0].headers.contains_key("upgrade"));
    assert!(!seen[0].headers.contains_key("http2-settings"));
    proxy.shutdown().await;
}

/// A farm that allows no upgrade does not tunnel WebSocket either, and a backend's 101
/// to a request that did not (or may not) switch is refused.
#[tokio::test]
async fn a_101_the_client_did_not_ask_for_is_refused() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(
        "no-upgrades",
        &[ws_farm(&b, |spec| spec.allowed_upgrades = Some(vec![]))],
    )
    .await;
    let resp = raw(proxy.addr, WS_HEAD).await;
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    assert!(resp.contains("unexpected-101"), "{resp}");
    assert!(!b.seen()[0].headers.contains_key("upgrade"));
    // And with the default (WebSocket allowed), a plain GET answered with 101.
    let b2 = Backend::start("b2").await;
    let proxy2 = Proxy::start("plain-101", &[ws_farm(&b2, |_| {})]).await;
    let resp = raw(proxy2.addr, b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    // Each refused 101 is one request, answered 502: never also counted as a 101.
    for p in [&proxy, &proxy2] {
        let m = metrics(p.admin_addr()).await;
        let farm = "farm=\"default/b\"";
        assert_eq!(
            metric_sum(&m, "portcullis_requests_total", &[farm, "status=\"502\""]),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric_sum(&m, "portcullis_requests_total", &[farm, "status=\"101\""]),
            0.0,
            "{m}"
        );
    }
    proxy.shutdown().await;
    proxy2.shutdown().await;
}

/// A tunnel with no traffic for the farm's idle timeout is closed.
#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(
        "ws-idle",
        &[ws_farm(&b, |spec| {
            spec.upstream = Some(Upstream {
                idle_timeout: Some(duration("1s")),
                ..defaults()
            })
        })],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(WS_HEAD).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "an idle tunnel stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}
