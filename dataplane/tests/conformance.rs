//! Issue 12, section 4: protocol conformance (RFC 9110, 9112, 9113) observed from
//! outside, each with real sockets.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every connection's first request with `answer`, verbatim,
/// then closes.
async fn raw_backend(answer: &'static [u8]) -> SocketAddr {
    raw_backend_seen(answer).await.0
}

/// [`raw_backend`], also keeping every request head it read.
async fn raw_backend_seen(
    answer: &'static [u8],
) -> (SocketAddr, std::sync::Arc<parking_lot::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().push(String::from_utf8_lossy(&got).into_owned());
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, heads)
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn host_must_be_one_and_a_host() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("hosts", &[plain_farm(&b)]).await;
    let cases: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: b.test\r\nHost: b.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil@b.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: b.test/x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: b.test:99999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: b.test:8o\r\n\r\n",
    ];
    for case in cases {
        let resp = raw(proxy.addr, case).await;
        assert_eq!(
            status_of(&resp),
            "400",
            "{}\n{resp}",
            String::from_utf8_lossy(case)
        );
    }
    assert!(b.seen().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_absolute_form_target_is_served_and_its_authority_is_the_host() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("absolute", &[plain_farm(&b)]).await;
    let resp = raw(
        proxy.addr,
        b"GET http://b.test/x?q=1 HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = b.seen();
    assert_eq!(seen[0].path, "/x?q=1");
    assert_eq!(seen[0].headers["x-forwarded-host"], "b.test");
    let resp = raw(
        proxy.addr,
        b"GET ftp://b.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), "400", "{resp}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_answer_is_http_1_1_whatever_the_backend_speaks_and_a_204_has_no_length() {
    let old = raw_backend(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold").await;
    let empty = raw_backend(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
    let farms = [
        site("old", &["old.test"]).server(address_server(old)),
        site("empty", &["empty.test"]).server(address_server(empty)),
    ];
    let proxy = Proxy::start("versions", &farms).await;
    let resp = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: old.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("old"), "{resp}");
    let resp = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: empty.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("content-length"),
        "{resp}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn expect_from_an_http_1_0_client_is_not_forwarded() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("expect10", &[plain_farm(&b)]).await;
    let resp = raw(
        proxy.addr,
        b"GET / HTTP/1.0\r\nHost: b.test\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
        "{resp}"
    );
    assert!(!b.seen()[0].headers.contains_key("expect"));
    proxy.shutdown().await;
}

async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn http2_authority_and_host_must_agree_and_cookies_are_joined() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("h2conf", &[plain_farm(&b)]).await;
    let mut send = h2(proxy.addr).await;
    let req = http::Request::get("http://b.test/")
        .header("host", "other.test")
        .body(Empty::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 400);
    let req = http::Request::get("http://b.test/")
        .header("x-padded", http::HeaderValue::from_static(" leading"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 400);
    let req = http::Request::get("http://b.test/c")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers.get_all("cookie").iter().count(), 1);
    assert_eq!(seen[0].headers["cookie"], "a=1; b=2");
    proxy.shutdown().await;
}

/// Issue 12, section 4: trailers (gRPC's status travels in them) reach the client when
/// it said it takes them (`TE: trailers`), and the backend hears that it may send them.
#[tokio::test]
async fn trailers_pass_when_the_client_takes_them() {
    let (backend, heads) = raw_backend_seen(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(
        "trailers",
        &[site("t", &["t.test"]).server(address_server(backend))],
    )
    .await;
    let resp = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: t.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("trailer: grpc-status"),
        "the Trailer field is the backend's to declare: {resp}"
    );
    assert!(
        resp.contains("0\r\ngrpc-status: 0\r\n\r\n"),
        "the trailer section is forwarded: {resp}"
    );
    let head = heads.lock()[0].to_ascii_lowercase();
    assert!(head.contains("\r\nte: trailers\r\n"), "{head}");
    // RFC 9110 section 10.1.4: whoever sends TE lists it in Connection.
    assert!(head.contains("\r\nconnection: te\r\n"), "{head}");

    // A client that did not say it takes trailers gets none (RFC 9110 section 6.5.1),
    // and the backend is not told it may send them.
    let resp = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: t.test\r\nTE: gzip\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!resp.contains("grpc-status: 0"), "{resp}");
    let head = heads.lock()[1].to_ascii_lowercase();
    assert!(!head.contains("\r\nte:"), "{head}");
    proxy.shutdown().await;
}

/// Issue 12, section 4: `OPTIONS *` (the asterisk form, RFC 9112 section 3.2.4) is served:
/// routed by Host to the farm at `/` and forwarded as `OPTIONS *`. The asterisk form is
/// refused for any other method.
#[tokio::test]
async fn options_asterisk_is_forwarded_to_the_hosts_root_farm() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("options-star", &[plain_farm(&b)]).await;
    let resp = raw(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("OPTIONS", "*")
    );
    let resp = raw(
        proxy.addr,
        b"GET * HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), "400", "{resp}");
    assert_eq!(b.seen().len(), 1);
    proxy.shutdown().await;
}

/// Issue 12, section 4: `Max-Forwards` (RFC 9110 section 7.6.2). On OPTIONS and TRACE, 0
/// means the proxy is the final recipient: OPTIONS is answered here, TRACE refused (405:
/// the proxy does not reflect requests, which would echo cookies back, XST). Any other
/// value is decremented on the way; other methods pass it untouched.
#[tokio::test]
async fn max_forwards_zero_stops_at_the_proxy() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("max-forwards", &[plain_farm(&b)]).await;
    let resp = raw(
        proxy.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: b.test\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("\r\nallow: "), "{resp}");
    let resp = raw(
        proxy.addr,
        b"TRACE /x HTTP/1.1\r\nHost: b.test\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), "405", "{resp}");
    assert!(resp.to_ascii_lowercase().contains("\r\nallow: "), "{resp}");
    assert!(b.seen().is_empty(), "nothing is forwarded");

    let resp = raw(
        proxy.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: b.test\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.seen()[0].headers["max-forwards"], "2");
    let resp = raw(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: b.test\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.seen()[1].headers["max-forwards"], "0");
    // Not `1*DIGIT`: the next hop judges it, untouched.
    let resp = raw(
        proxy.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: b.test\r\nMax-Forwards: +3\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.seen()[2].headers["max-forwards"], "+3");
    proxy.shutdown().await;
}

/// `OPTIONS *` to an HTTP/2 backend keeps its authority: the asterisk is the path.
#[tokio::test]
async fn options_asterisk_reaches_an_http2_backend_intact() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(
        "options-star-h2",
        &[site("b", &["b.test"])
            .server(address_server(b.addr))
            .with(|spec| {
                spec.upstream = Some(Upstream {
                    protocol: UpstreamProtocol::Http2,
                    ..defaults()
                })
            })],
    )
    .await;
    let resp = raw(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = b.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("OPTIONS", "*")
    );
    proxy.shutdown().await;
}

/// RFC 9112 section 2.3: a request with a higher HTTP/1 minor version is served as the
/// highest minor version supported, HTTP/1.1, however the version arrives; a request of
/// another major version on an HTTP/1 connection gets 505 (RFC 9110 section 15.6.6).
#[tokio::test]
async fn a_higher_http1_minor_is_served_as_1_1_and_another_major_gets_505() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("versions-1x", &[plain_farm(&b)]).await;
    let resp = raw(
        proxy.addr,
        b"GET /one-two HTTP/1.2\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The minor digit in a read of its own.
    let resp = raw_pieces(
        proxy.addr,
        &[
            b"GET /one-nine HTTP/1.",
            b"9\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        ],
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let paths: Vec<String> = b.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/one-two", "/one-nine"]);

    for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"] {
        let req = format!("GET /x {version}\r\nHost: b.test\r\n\r\n");
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), "505", "{version}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{resp}"
        );
    }
    let resp = raw_pieces(
        proxy.addr,
        &[b"GET /x HTTP/", b"2", b".0\r\nHost: b.test\r\n\r\n"],
    )
    .await;
    assert_eq!(status_of(&resp), "505", "{resp}");
    // Not an HTTP-version at all (RFC 9112: one digit each side): still a 400.
    let resp = raw(proxy.addr, b"GET /x HTTP/1.10\r\nHost: b.test\r\n\r\n").await;
    assert_eq!(status_of(&resp), "400", "{resp}");
    assert_eq!(b.seen().len(), 2, "nothing refused reached the backend");
    proxy.shutdown().await;
}

/// RFC 9110 section 15.5.15: a request target longer than the proxy serves (8 KiB, as
/// ingress-nginx's default `large_client_header_buffers`) gets 414, whether or not the
/// whole head would fit the head limit; an oversized header section still gets 431.
#[tokio::test]
async fn an_over_long_target_gets_414_and_an_over_long_head_431() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start("uri-too-long", &[plain_farm(&b)]).await;
    let at_limit = format!("/{}", "a".repeat(8191));
    let req = format!("GET {at_limit} HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n");
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    for len in [8193, 40_000, 100_000] {
        let target = format!("/{}", "a".repeat(len - 1));
        let req = format!("GET {target} HTTP/1.1\r\nHost: b.test\r\n\r\n");
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(
            status_of(&resp),
            "414",
            "{len}: {}",
            &resp[..resp.len().min(200)]
        );
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{resp}"
        );
        // The target trickling in.
        let mut pieces: Vec<&[u8]> = vec![b"GET "];
        pieces.extend(target.as_bytes().chunks(3000));
        pieces.push(b" HTTP/1.1\r\nHost: b.test\r\n\r\n");
        let resp = raw_pieces(proxy.addr, &pieces).await;
        assert_eq!(
            status_of(&resp),
            "414",
            "{len}: {}",
            &resp[..resp.len().min(200)]
        );
    }
    let big = format!(
        "GET / HTTP/1.1\r\nHost: b.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let resp = raw(proxy.addr, big.as_bytes()).await;
    assert_eq!(status_of(&resp), "431", "{resp}");
    assert_eq!(b.seen().len(), 1);
    // HTTP/2 has the same limit.
    let mut send = h2(proxy.addr).await;
    for (len, status) in [(8192, 200), (8193, 414)] {
        let req = http::Request::get(format!("http://b.test/{}", "a".repeat(len - 1)))
            .body(Empty::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), status, "HTTP/2, {len}");
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(b.seen().len(), 2);
    proxy.shutdown().await;
}
