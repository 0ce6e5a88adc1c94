//! HTTPS with SNI for two hosts, TLS 1.2 and 1.3, and HTTP/2 through TLS.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certificate(secret: &str) -> TlsCertificateRef {
    TlsCertificateRef {
        secret_name: secret.to_owned(),
    }
}

struct Pki {
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
}

fn client(
    pki: &Pki,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.a.clone()).unwrap();
    roots.add(pki.b.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_hosts_certificate_and_h2_works() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = TempDir::new("tls");
    let pki = Pki {
        a: write_cert(&dir, "cert-a", "a.test"),
        b: write_cert(&dir, "cert-b", "b.test"),
    };
    let https = |port| edge_array().https("tls", port, "cert-a");
    let proxy = Proxy::start_in(
        dir,
        https,
        &[
            site("a", &["a.test"])
                .server(address_server(a.addr))
                .with(|spec| {
                    spec.backend_host = Some("a.test".into());
                    spec.publish.tls = Some(certificate("cert-a"));
                }),
            plain_farm(&b).with(|spec| spec.publish.tls = Some(certificate("cert-b"))),
        ],
    )
    .await;
    let addr = proxy.addr;

    for (versions, label) in [
        (&[&rustls::version::TLS13][..], "1.3"),
        (&[&rustls::version::TLS12][..], "1.2"),
    ] {
        for (host, want_cert, want_body) in [("a.test", &pki.a, "a"), ("b.test", &pki.b, "b")] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = client(&pki, &[b"http/1.1"], versions)
                .connect(ServerName::try_from(host.to_owned()).unwrap(), tcp)
                .await
                .unwrap();
            let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            assert_eq!(
                &presented, want_cert,
                "TLS {label}: wrong certificate for {host}"
            );
            tls.write_all(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with(want_body), "{text}");
        }
    }
    let seen = b.seen();
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");

    // HTTP/2 through TLS with ALPN h2, several streams on one connection.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = client(&pki, &[b"h2"], &[&rustls::version::TLS13])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut s = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://a.test/h2/{i}"))
                .body(Empty::new())
                .unwrap();
            let resp = s.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for s in streams {
        let (status, body) = s.await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"a"[..]));
    }
    assert!(
        a.seen()
            .iter()
            .any(|s| s.path == "/h2/9" && s.headers["host"] == "a.test")
    );
    proxy.shutdown().await;
}

/// A proxy with one HTTPS listener (`a.test`'s certificate) in front of the backend `a`.
async fn https_proxy(tag: &str) -> (Backend, Pki, Proxy) {
    let a = Backend::start("a").await;
    let dir = TempDir::new(tag);
    let pki = Pki {
        a: write_cert(&dir, "cert-a", "a.test"),
        b: write_cert(&dir, "cert-b", "b.test"),
    };
    let https = |port| edge_array().https("tls", port, "cert-a");
    let proxy = Proxy::start_in(dir, https, &[plain_farm(&a)]).await;
    (a, pki, proxy)
}

/// A TLS 1.3 connection to `proxy` for `a.test` that negotiated `alpn`.
async fn connect_alpn(
    proxy: &Proxy,
    pki: &Pki,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let tls = client(pki, &[alpn], &[&rustls::version::TLS13])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// Issue 12, section 4: a client that negotiated `http/1.1` by ALPN and then sends the
/// HTTP/2 preface is not served HTTP/2 (RFC 9113 section 3.3: the protocol is the one
/// ALPN chose). It gets an HTTP/1.1 error and no backend sees anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_preface_after_alpn_http11_is_not_served_as_h2() {
    let (a, pki, proxy) = https_proxy("tls-alpn").await;
    let mut tls = connect_alpn(&proxy, &pki, b"http/1.1").await;
    // The preface, then an empty SETTINGS frame, as an h2 client would send them.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(3), tls.read_to_end(&mut out)).await;
    // An h2 server would answer with its SETTINGS frame (type 4 at byte 3).
    assert!(
        out.starts_with(b"HTTP/1.1 4") || out.starts_with(b"HTTP/1.1 5") || out.is_empty(),
        "answered as HTTP/2: {out:?}"
    );
    assert!(a.seen().is_empty());
    proxy.shutdown().await;
}

/// RFC 9113 section 3.4: a client that negotiated `h2` by ALPN must open with the
/// connection preface; anything else is a connection error, and the connection is
/// closed. It is not served as HTTP/1.1 (h2spec, section 3.5 case 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_the_preface_after_alpn_h2_closes_the_connection() {
    let (a, pki, proxy) = https_proxy("tls-alpn-h2").await;
    for opening in [
        &b"INVALID CONNECTION PREFACE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        let mut tls = connect_alpn(&proxy, &pki, b"h2").await;
        tls.write_all(opening).await.unwrap();
        let mut out = Vec::new();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(3), tls.read_to_end(&mut out))
                .await;
        assert!(closed.is_ok(), "the connection stayed open");
        assert!(
            out.is_empty(),
            "answered: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    assert!(a.seen().is_empty());
    proxy.shutdown().await;
}
