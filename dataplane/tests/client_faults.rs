//! Issue 12, finding 3: one client must not hurt the others. A client's malformed,
//! abandoned or slow request body is the client's fault: it gets a 4xx and never counts
//! against the server's passive health, so it cannot eject healthy servers for every
//! farm that shares them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` and then `body` pieces with `pause` between them; returns the status of
/// the answer (0 when the connection closed without one).
async fn raw_exchange(addr: SocketAddr, head: &str, body: &[&[u8]], pause: Duration) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body {
        tokio::time::sleep(pause).await;
        if s.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Two backends behind one farm; after the abuse, both must still take requests.
async fn both_still_serve(proxy: &Proxy, b1: &Backend, b2: &Backend) {
    let (before1, before2) = (b1.seen().len(), b2.seen().len());
    let mut c = Client::connect(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(c.get("c.test", "/").await.unwrap().0, 200);
    }
    assert!(
        b1.seen().len() > before1 && b2.seen().len() > before2,
        "a client's fault ejected a healthy server: b1 got {}, b2 got {} of 10",
        b1.seen().len() - before1,
        b2.seen().len() - before2
    );
}

/// An `upstream` block: the defaults changed by `edit`.
fn upstream(edit: impl FnOnce(&mut Upstream)) -> Option<Upstream> {
    let mut upstream = defaults();
    edit(&mut upstream);
    Some(upstream)
}

async fn two_backend_farm(tag: &str, upstream: Option<Upstream>) -> (Proxy, Backend, Backend) {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let farm = site("c", &["c.test"])
        .servers([address_server(b1.addr), address_server(b2.addr)])
        .with(|spec| spec.upstream = upstream);
    let proxy = Proxy::start(tag, &[farm]).await;
    (proxy, b1, b2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_eject_no_server() {
    let (proxy, b1, b2) = two_backend_farm("badchunks", None).await;
    let head = "POST / HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    for _ in 0..10 {
        let code = raw_exchange(
            proxy.addr,
            head,
            &[b"4\r\nwiki\r\n", b"zz\r\nnot a chunk\r\n"],
            Duration::from_millis(20),
        )
        .await;
        assert_eq!(code, 400, "a malformed request body is the client's error");
    }
    both_still_serve(&proxy, &b1, &b2).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_eject_no_server() {
    let (proxy, b1, b2) = two_backend_farm("abandoned", None).await;
    for _ in 0..10 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    both_still_serve(&proxy, &b1, &b2).await;
    proxy.shutdown().await;
}

/// A slow upload outlasting the first-byte timeout is answered by the server: the timer
/// measures the server, so it starts once the body is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_a_slow_server() {
    let timeout = upstream(|u| u.first_byte_timeout = Some(duration("1s")));
    let (proxy, b1, b2) = two_backend_farm("slowupload", timeout).await;
    let head = "POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 6\r\nConnection: close\r\n\r\n";
    let pieces: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b"f"];
    let slow = (0..5).map(|_| raw_exchange(proxy.addr, head, &pieces, Duration::from_millis(400)));
    for code in futures::future::join_all(slow).await {
        assert_eq!(
            code, 200,
            "a 2.4 s upload was cut by the 1 s first-byte timeout"
        );
    }
    both_still_serve(&proxy, &b1, &b2).await;
    proxy.shutdown().await;
}

/// A body that stalls longer than the farm's idle timeout is cut with 408, and that is
/// not the server's fault either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_and_ejects_no_server() {
    let timeout = upstream(|u| u.idle_timeout = Some(duration("1s")));
    let (proxy, b1, b2) = two_backend_farm("stalled", timeout).await;
    let head = "POST / HTTP/1.1\r\nHost: c.test\r\nContent-Length: 6\r\n\r\nab";
    let stalled = (0..6).map(|_| raw_exchange(proxy.addr, head, &[], Duration::ZERO));
    for code in futures::future::join_all(stalled).await {
        assert_eq!(code, 408);
    }
    both_still_serve(&proxy, &b1, &b2).await;
    proxy.shutdown().await;
}
