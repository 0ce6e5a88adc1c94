//! Routing precedence, header rewriting and the error paths.

mod common;

use common::*;

#[tokio::test]
async fn routes_by_exact_host_wildcard_and_longest_prefix() {
    let a = Backend::start("a").await;
    let api = Backend::start("api").await;
    let wild = Backend::start("wild").await;
    let proxy = Proxy::start(
        "routing",
        &[
            site("a", &["a.example.com"])
                .server(address_server(a.addr))
                .with(|spec| spec.backend_host = Some("internal.a".into())),
            FarmBuilder::new("api")
                .hosts(["a.example.com"])
                .paths(["/api"])
                .server(address_server(api.addr)),
            site("wild", &["*.example.com"]).server(address_server(wild.addr)),
        ],
    )
    .await;
    let addr = proxy.addr;
    let body = |r: (u16, http::HeaderMap, String)| r.2;
    assert_eq!(body(get(addr, "a.example.com", "/x").await), "a");
    assert_eq!(body(get(addr, "a.example.com", "/api/v1?q=1").await), "api");
    assert_eq!(body(get(addr, "a.example.com", "/api").await), "api");
    assert_eq!(body(get(addr, "a.example.com", "/apix").await), "a");
    assert_eq!(body(get(addr, "A.Example.COM:80", "/").await), "a");
    assert_eq!(body(get(addr, "b.example.com", "/api").await), "wild");
    let (status, headers, body) = get(addr, "nothing.org", "/").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-portcullis-error"], "no-route");
    assert!(body.len() < 64);
    // Issue 12, finding 2: the proxy's own 404s are counted too, under no farm.
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_requests_total",
            &["farm=\"\"", "status=\"404\""]
        ),
        1.0,
        "{m}"
    );

    // Header rewriting as the backend saw it.
    let seen = a.seen();
    let first = &seen[0];
    assert_eq!(first.headers["host"], "internal.a");
    assert_eq!(first.headers["x-forwarded-host"], "a.example.com");
    assert_eq!(first.headers["x-forwarded-proto"], "http");
    assert_eq!(first.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(api.seen()[0].path, "/api/v1?q=1");
    assert_eq!(api.seen()[0].headers["host"], "a.example.com");
    proxy.shutdown().await;
}

const FORWARDED_BY_CLIENT: &[u8] = b"GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close, x-secret-hop\r\nx-secret-hop: 1\r\nKeep-Alive: 5\r\nTE: gzip, trailers;q=0.5\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nForwarded: for=10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Proto: https\r\nVia: 1.0 corp-proxy\r\n\r\n";

/// Issue 12, finding 3: forwarding headers from an ordinary client are the edge's to
/// write; the client's own are replaced or removed.
#[tokio::test]
async fn hop_by_hop_removed_and_forwarding_headers_written_by_the_edge() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start("hop", &[plain_farm(&a)]).await;
    let resp = raw(proxy.addr, FORWARDED_BY_CLIENT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = a.seen();
    let hd = &seen[0].headers;
    for name in ["x-secret-hop", "keep-alive", "proxy-connection"] {
        assert!(!hd.contains_key(name), "{name} was forwarded");
    }
    // TE is hop-by-hop: the client's list is not forwarded; the proxy, which relays
    // trailers, says only that it takes them.
    assert_eq!(hd.get_all("te").iter().count(), 1);
    assert_eq!(hd["te"], "trailers");
    assert_eq!(hd.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(hd["x-forwarded-for"], "127.0.0.1");
    assert_eq!(hd["x-forwarded-proto"], "http");
    for name in ["forwarded", "x-real-ip", "x-forwarded-port"] {
        assert!(!hd.contains_key(name), "{name} from a client was forwarded");
    }
    assert_eq!(hd["via"], "1.0 corp-proxy, 1.1 portcullis");
    proxy.shutdown().await;
}

/// From a proxy in `trustedProxies`, the chain is kept and extended.
#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let a = Backend::start("a").await;
    let array =
        |port| web_array(port).with(|spec| spec.trusted_proxies = vec!["127.0.0.0/8".into()]);
    let proxy = Proxy::start_in(TempDir::new("trusted"), array, &[plain_farm(&a)]).await;
    let resp = raw(proxy.addr, FORWARDED_BY_CLIENT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let hd = &a.seen()[0].headers;
    assert_eq!(hd["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
    assert_eq!(hd["x-forwarded-proto"], "https");
    assert_eq!(hd["forwarded"], "for=10.9.9.9");
    assert_eq!(hd["x-real-ip"], "10.9.9.9");
    proxy.shutdown().await;
}

#[tokio::test]
async fn errors_are_distinguished_and_name_no_address() {
    let slow = Backend::start("slow").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(
        "errors",
        &[
            site("refused", &["refused.test"])
                .server(address_server(dead))
                .with(|spec| {
                    spec.upstream = Some(Upstream {
                        retries: Some(Retries { attempts: 0 }),
                        ..defaults()
                    })
                }),
            site("slow", &["slow.test"])
                .server(address_server(slow.addr))
                .with(|spec| {
                    spec.upstream = Some(Upstream {
                        first_byte_timeout: Some(duration("200ms")),
                        ..defaults()
                    })
                }),
            site("empty", &["empty.test"])
                .server(address_server(slow.addr))
                .with(|spec| {
                    spec.connectivity_verifier = Some(ConnectivityVerifier {
                        path: "/status/500".into(),
                        interval: Some(duration("100ms")),
                        timeout: Some(duration("100ms")),
                        unhealthy_threshold: 1,
                        ..defaults()
                    })
                }),
        ],
    )
    .await;
    let addr = proxy.addr;
    let (s, hd, body) = get(addr, "refused.test", "/").await;
    assert_eq!(s, 502);
    assert_eq!(hd["x-portcullis-error"], "connect-refused");
    assert!(
        !body.contains("127.0.0.1") && !hd["x-portcullis-error"].to_str().unwrap().contains("127")
    );
    let (s, hd, _) = get(addr, "slow.test", "/slow/1000").await;
    assert_eq!(s, 504);
    assert_eq!(hd["x-portcullis-error"], "first-byte-timeout");
    // The verifier takes the only endpoint out: 503 at once.
    let mut status = 0;
    for _ in 0..100 {
        let (s, hd, _) = get(addr, "empty.test", "/").await;
        status = s;
        if s == 503 {
            assert_eq!(hd["x-portcullis-error"], "no-healthy-endpoint");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 503);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    let b = Backend::start("b").await;
    let proxy = Proxy::start("stream", &[plain_farm(&b)]).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A chunked upload the client feeds piece by piece; the echo must start coming back
    // before the upload ends (nothing buffers the whole body).
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post("/echo")
        .header("host", "b.test")
        .body(body)
        .unwrap();
    let send = tokio::spawn(async move { sender.send_request(req).await.unwrap() });
    tx.send(Ok(http_body::Frame::data(Bytes::from(vec![
        b'x';
        64 * 1024
    ]))))
    .await
    .unwrap();
    let resp = send.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(
        !first.is_empty(),
        "the echo started while the upload was still open"
    );
    let mut total = first.len();
    for _ in 0..15 {
        tx.send(Ok(http_body::Frame::data(Bytes::from(vec![
            b'y';
            64 * 1024
        ]))))
        .await
        .unwrap();
    }
    drop(tx);
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            total += d.len();
        }
    }
    assert_eq!(total, 16 * 64 * 1024);
    proxy.shutdown().await;
}

/// A stream over an mpsc receiver (no tokio-stream dependency).
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
