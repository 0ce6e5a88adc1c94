//! A WebSocket-style upgrade is tunnelled and survives reloads.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn upgraded_connection_echoes_through_five_reloads() {
    let b = Backend::start("b").await;
    let farm = |n: usize| {
        farm_yaml(
            "b",
            &["ws.test"],
            &["/"],
            &[addr_server(b.addr)],
            &format!("  backendHost: v{n}.internal\n"),
        )
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
